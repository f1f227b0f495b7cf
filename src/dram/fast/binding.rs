//! Which heap a thread allocates from: binding a heap to a thread on its first allocation,
//! handing it on when the thread exits, and the registry of all heaps.
//!
//! The thread's word (an initial-exec TLS word, see `thread_slot`) holds the address of
//! `UNBOUND` before the first allocation, the heap's address while the thread owns one, and
//! the address of `EXITED` after the thread's exit destructor ran. The two sentinels are page
//! tables whose pages are all the empty page: the fast paths pop from whatever the word points
//! at, fail on a sentinel, and only the slow path asks which case it is. A heap whose
//! thread has exited goes to a lock-free pool, pages and all; a new thread adopts the one that
//! waited longest of the few on top (`adopt_longest_waiting`), so 3000 short-lived threads reuse a
//! handful of heaps instead of growing memory. Blocks freed
//! into a pooled heap's pages wait on their remote lists until it is adopted. Once the heaps
//! are made, binding and exiting add no system call and no page fault to a thread's lifetime
//! (`c-tests/thread_lifetime_kernel.c` counts both over 2000 lifetimes: the few calls it sees
//! open pages as the heaps grow).
//!
//! A dead thread (whose destructor ran, yet which still allocates from a later destructor)
//! borrows a pooled heap for one call and returns it at once. Nothing here takes a lock, so a
//! `fork` at any moment leaves the child able to allocate.

use crate::dram::fast::heap::{Heap, PageTables};
use crate::dram::fast::traffic::Traffic;
use crate::lockfree::remote_list::RemoteList;
use crate::lockfree::tagged_stack::TaggedStack;
use crate::meta;
use crate::thread_slot::{self, initial_exec_word};
use core::ffi::c_void;

/// What the word of a thread that never allocated points at.
pub static UNBOUND: Sentinel = Sentinel(PageTables::empty());
/// What the word of a thread whose exit destructor has run points at.
pub static EXITED: Sentinel = Sentinel(PageTables::empty());

/// Page tables that are never written: every entry stays the empty page.
#[repr(transparent)]
pub struct Sentinel(PageTables);
// SAFETY: a sentinel is never written, and the empty page it points to is never written.
unsafe impl Sync for Sentinel {}

initial_exec_word!(
    word,
    "__tiermalloc_thread_heap",
    crate::dram::fast::binding::UNBOUND
);

// The thread's segment tag (`pagemap::SEGMENT_TAG_MIN`): its heap's `segment_tag`, or
// `NO_SEGMENT_TAG` (no heap, or one without a tag of its own), which no page-map entry holds.
initial_exec_word!(
    tag_word,
    "__tiermalloc_thread_segment_tag",
    value = crate::pagemap::NO_SEGMENT_TAG as usize
);

static POOL: TaggedStack<Heap> = TaggedStack::new();
static REGISTRY: RemoteList = RemoteList::new();

/// The page tables the fast paths pop from: this thread's heap's, or a sentinel's.
#[inline(always)]
pub fn tables() -> *mut PageTables {
    word::get() as *mut PageTables
}

/// Whether `tables` (a value of `tables()`) is a sentinel rather than a heap.
#[inline]
pub fn is_sentinel(tables: *mut PageTables) -> bool {
    let tables = tables as *const PageTables;
    core::ptr::eq(tables, &UNBOUND.0) || core::ptr::eq(tables, &EXITED.0)
}

/// This thread's heap, or null (no heap yet, or exited).
#[inline]
pub fn current() -> *mut Heap {
    let tables = tables();
    if is_sentinel(tables) {
        core::ptr::null_mut()
    } else {
        tables.cast()
    }
}

/// The raw word, for `free` to compare with a segment's owner (a sentinel owns nothing).
#[inline(always)]
pub fn slot() -> usize {
    word::get()
}

/// The tag the page map holds for the segments of this thread's heap (`pagemap::SEGMENT_TAG_MIN`),
/// or `NO_SEGMENT_TAG`.
#[inline(always)]
pub fn thread_tag() -> u8 {
    tag_word::get() as u8
}

/// Heaps a new thread looks at on top of the pool, to adopt the one that waited longest.
const ADOPT_LOOK: usize = 4;
/// Counts the heaps entering the pool at their thread's exit (`Heap::pooled_at`).
static POOL_CLOCK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// `first`, just popped from the pool, or the heap that waited longest among it and the
/// next `ADOPT_LOOK - 1` of the pool (the others go back in their order).
///
/// Not the last one pooled: a thread that hands its blocks on and exits (mimalloc-bench's
/// larson starts its successor, which frees them one by one) pools a heap still full of live
/// blocks, and a thread adopting it fills its free room with a second set, growing it up to
/// twice the live set (larson: heaps of 6 MiB beside heaps of 3.4; BENCHMARKS.md, session 14,
/// branch `rss5`). The heap that waited longest has had the most of its blocks freed. While
/// the looked-at heaps are off the pool, a thread binding at that moment finds fewer there
/// (at worst none, and makes a heap): the pool is only a reuse, never a guarantee.
#[cold]
#[inline(never)]
// Run only where a thread binds after another exited: a section of its own keeps it out of
// the code every process runs (`link/hot_text.ld`, which takes every other `dram` function).
#[link_section = ".text.tiermalloc_threads"]
fn adopt_longest_waiting(first: *mut Heap) -> *mut Heap {
    let mut seen = [first; ADOPT_LOOK];
    let mut n = 1;
    while n < ADOPT_LOOK {
        let Some(heap) = POOL.pop() else { break };
        seen[n] = heap;
        n += 1;
    }
    let mut oldest = 0;
    for i in 1..n {
        // SAFETY: popped heaps are ours until pushed back.
        if unsafe { (*seen[i]).pooled_at < (*seen[oldest]).pooled_at } {
            oldest = i;
        }
    }
    for i in (0..n).rev() {
        if i != oldest {
            // SAFETY: popped above, not on the stack.
            unsafe { POOL.push(seen[i]) };
        }
    }
    seen[oldest]
}

fn pooled_or_new() -> Option<*mut Heap> {
    if let Some(heap) = POOL.pop() {
        return Some(adopt_longest_waiting(heap));
    }
    let heap = meta::alloc_zeroed(core::mem::size_of::<Heap>(), 64)?.cast::<Heap>();
    // SAFETY: zeroed, exclusively ours; registered after initialisation.
    unsafe {
        Heap::init(heap);
        REGISTRY.push(heap);
    }
    Some(heap)
}

/// Gives this thread a heap; null if none can be made. For a dead thread, returns null: it
/// must `with_borrowed_heap` instead.
#[cold]
#[inline(never)]
pub fn bind() -> *mut Heap {
    if core::ptr::eq(tables().cast_const(), &EXITED.0) {
        return core::ptr::null_mut();
    }
    let Some(heap) = pooled_or_new() else {
        return core::ptr::null_mut();
    };
    // SAFETY: popped or made for this thread alone.
    unsafe {
        (*heap).leave_pool();
        (*heap).follow_direct_switch();
    }
    // The heap is usable before the key is registered: registering may allocate.
    word::set(heap as usize);
    // SAFETY: ours, as above.
    tag_word::set(usize::from(unsafe { (*heap).thread_tag() }));
    thread_slot::call_at_exit(heap.cast(), on_thread_exit);
    heap
}

/// Runs `f` with a heap taken from the pool (or made) and returned right after, for threads
/// that have no heap of their own any more.
#[cold]
pub fn with_borrowed_heap<T>(f: impl FnOnce(&mut Heap) -> T) -> Option<T> {
    let heap = pooled_or_new()?;
    // SAFETY: a popped or fresh heap belongs to this thread alone until pushed back.
    let result = f(unsafe { &mut *heap });
    // SAFETY: the heap is valid forever and no longer used by us.
    unsafe { POOL.push(heap) };
    Some(result)
}

unsafe extern "C" fn on_thread_exit(value: *mut c_void) {
    let heap = value.cast::<Heap>();
    tag_word::set(usize::from(crate::pagemap::NO_SEGMENT_TAG));
    word::set(core::ptr::addr_of!(EXITED) as usize);
    // SAFETY: the value registered for this thread is its heap, still owned by it.
    unsafe {
        (*heap).tidy_for_next_owner();
        (*heap).pooled_at = POOL_CLOCK.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        POOL.push(heap);
    }
}

/// Calls `f` on the traffic counters of every heap ever made (the heaps may be in use: the
/// counters are atomics, and nothing else of a heap is touched).
pub fn for_each_traffic(mut f: impl FnMut(&Traffic)) {
    // SAFETY: `traffic` holds only atomics.
    for_each_heap(|heap| f(unsafe { &*core::ptr::addr_of!((*heap).traffic) }));
}

/// Whether `f` holds for some heap ever made, stopping at the first. The heaps may be in use
/// by their threads: `f` may read only what is safe to read racily.
pub fn any_heap(mut f: impl FnMut(*mut Heap) -> bool) -> bool {
    let mut heap: *mut Heap = REGISTRY.first();
    while !heap.is_null() {
        if f(heap) {
            return true;
        }
        // SAFETY: registered heaps live forever; `registry_next` is written once before a heap
        // is published.
        heap = unsafe { Heap::registry_next(heap) };
    }
    false
}

/// Calls `f` on every heap ever made. The heaps may be in use by their threads: `f` may read
/// only what is safe to read racily.
pub fn for_each_heap(mut f: impl FnMut(*mut Heap)) {
    any_heap(|heap| {
        f(heap);
        false
    });
}
