//! Which heap a thread allocates from: binding a heap to a thread on its first allocation,
//! handing it on when the thread exits, and the registry of all heaps.
//!
//! The thread's word (an initial-exec TLS word, see `thread_slot`) holds the address of
//! `UNBOUND` before the first allocation, the heap's address while the thread owns one, and
//! the address of `EXITED` after the thread's exit destructor ran. The two sentinels are page
//! tables whose pages are all the empty page: the fast paths pop from whatever the word points
//! at, fail on a sentinel, and only the slow path asks which case it is. A heap whose
//! thread has exited goes to a lock-free pool, pages and all; the next new thread adopts it,
//! so 3000 short-lived threads reuse a handful of heaps instead of growing memory. Blocks freed
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

fn pooled_or_new() -> Option<*mut Heap> {
    if let Some(heap) = POOL.pop() {
        return Some(heap);
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

/// The pthread key's destructor: the exiting thread's heap is tidied and goes to the pool for
/// the next thread.
///
/// # Safety
/// Called once per thread, by pthread, with the value registered for it: its heap, which
/// nothing else uses.
unsafe extern "C" fn on_thread_exit(value: *mut c_void) {
    let heap = value.cast::<Heap>();
    tag_word::set(usize::from(crate::pagemap::NO_SEGMENT_TAG));
    word::set(core::ptr::addr_of!(EXITED) as usize);
    // SAFETY: the value registered for this thread is its heap, still owned by it.
    unsafe {
        (*heap).tidy_for_next_owner();
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
