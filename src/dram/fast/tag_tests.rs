//! Tests of the segment tags (`pagemap::SEGMENT_TAG_MIN`): the page map's entry of a segment
//! holds its heap's tag, which the owner's `free` (`tier::free`) compares with its thread's
//! in place of an owner test.

use super::*;
use crate::pagemap;

/// The entry of `p`'s chunk in the page map.
fn entry_of(p: *mut u8) -> u8 {
    // SAFETY: a block of ours, below the address limit.
    unsafe { pagemap::entry_at_index(pagemap::block_chunk_index(p as usize)) }
}

/// The head of the own free list of `p`'s page.
fn head_of_page(p: *mut u8) -> usize {
    let page = Segment::page_of(Segment::of(p as usize), p as usize);
    // SAFETY: a page of a live segment; read after its owner stopped writing it, or by it.
    unsafe { (*page).free as usize }
}

/// Frees `p` as the program's `free` does, and says whether it went on its page's own list.
fn free_pushes_on_own_list(p: *mut u8) -> bool {
    // SAFETY: a live block of ours, not used after this.
    unsafe { crate::tier::free(p) };
    head_of_page(p) == p as usize
}

/// What a thread's heap tags, and what its `free` of its own block did.
fn tag_and_entry_and_own_push() -> (u8, u8, bool) {
    let p = alloc(48);
    let (tag, entry) = (thread_tag(), entry_of(p));
    (tag, entry, free_pushes_on_own_list(p))
}

#[test]
fn a_heap_tags_its_segments_and_another_heaps_free_is_not_taken_for_its_own() {
    let (tag, entry, own) = tag_and_entry_and_own_push();
    assert!(own, "the owner's free pushes on the page's own list");
    if tag == pagemap::NO_SEGMENT_TAG {
        assert_eq!(entry, pagemap::SHARED_SEGMENT_TAG);
    } else {
        assert_eq!(entry, tag, "the entry holds the owner's tag");
    }
    let (other_tag, other_block) = std::thread::spawn(|| (thread_tag(), alloc(48) as usize))
        .join()
        .unwrap();
    let other_block = other_block as *mut u8;
    assert!(
        other_tag != tag || tag == pagemap::NO_SEGMENT_TAG,
        "two live heaps have tags {tag} and {other_tag}"
    );
    assert_ne!(
        entry_of(other_block),
        tag,
        "another heap's segment is not tagged as ours"
    );
    // The other heap's block, freed here, goes the remote way, not on its page's own list.
    assert!(!free_pushes_on_own_list(other_block));
}

/// More threads alive at once than there are tags: heaps past the last tag share one, and
/// their owners' frees still push on their own lists (by comparing owners).
#[test]
fn heaps_beyond_the_tags_free_their_own_blocks_by_comparing_owners() {
    const THREADS: usize = 260;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Every heap is bound before any thread ends: none is reused from the pool.
                let first = alloc(48);
                barrier.wait();
                let seen = tag_and_entry_and_own_push();
                barrier.wait();
                // SAFETY: our own live block.
                unsafe { crate::tier::free(first) };
                seen
            })
        })
        .collect();
    let seen: Vec<(u8, u8, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let shared = seen
        .iter()
        .filter(|s| s.0 == pagemap::NO_SEGMENT_TAG)
        .count();
    assert!(shared > 0, "{THREADS} heaps at once exceed the tags");
    let mut own_tags: Vec<u8> = seen
        .iter()
        .map(|s| s.0)
        .filter(|&t| t != pagemap::NO_SEGMENT_TAG)
        .collect();
    let tagged = own_tags.len();
    own_tags.sort();
    own_tags.dedup();
    assert_eq!(
        own_tags.len(),
        tagged,
        "no two live heaps share a tag of their own"
    );
    for &(tag, entry, own) in &seen {
        let want = if tag == pagemap::NO_SEGMENT_TAG {
            pagemap::SHARED_SEGMENT_TAG
        } else {
            tag
        };
        assert_eq!(entry, want);
        assert!(
            own,
            "the owner's free (thread tag {tag}) pushes on its page's own list"
        );
    }
}
