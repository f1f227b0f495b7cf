//! Size classes: every multiple of 16 up to 128 bytes, then four per power of two, so that a
//! block above 128 bytes wastes less than a quarter of its size.
//!
//! Classes 0..8 are 16, 32, …, 128 bytes (every multiple of 16); above 128 each power-of-two
//! interval (2^e, 2^(e+1)] is cut into four classes of width 2^(e-2). The largest class is
//! `SMALL_MAX`; bigger requests are large blocks (`large.rs`).
//!
//! Alignment comes free: pages start 64 KiB-aligned and a class's blocks sit at multiples of its
//! size, so a block is aligned to every power of two dividing its size. `class_for_aligned`
//! picks a class whose size is a multiple of the requested alignment (see its comment).

/// Bytes of the largest small-object class.
pub(crate) const SMALL_MAX: usize = 512 * 1024;
/// Number of classes.
pub(crate) const CLASS_COUNT: usize = 56;
/// log2 of a slice: the unit in which segments hand out pages.
pub(crate) const SLICE_SHIFT: u32 = 16;
pub(crate) const SLICE_SIZE: usize = 1 << SLICE_SHIFT;
/// The largest alignment the small classes give naturally (a page start).
pub(crate) const MAX_NATURAL_ALIGN: usize = SLICE_SIZE;
/// Blocks over this size are a *big* class's: its pages hold as few blocks as their slices
/// allow (`page_slices`), a slice's page of smaller blocks at least 8. Big classes borrow from
/// larger ones without bounds (`lent_blocks`) and keep their freed blocks in front of their pages
/// (`block_cache`).
pub(crate) const BIG_MIN: usize = SLICE_SIZE / 8;
/// Requests up to this size use the table in `class_of`.
const TABLE_MAX: usize = 1024;

const fn compute_class(size: usize) -> usize {
    if size <= 128 {
        if size == 0 {
            0
        } else {
            size.div_ceil(16) - 1
        }
    } else {
        let s = size - 1;
        let e = (usize::BITS - 1 - s.leading_zeros()) as usize;
        let mantissa = (s >> (e - 2)) & 3;
        8 + (e - 7) * 4 + mantissa
    }
}

const fn compute_size(class: usize) -> usize {
    if class < 8 {
        (class + 1) * 16
    } else {
        let k = (class - 8) / 4;
        let m = (class - 8) % 4;
        (5 + m) << (5 + k)
    }
}

const SIZES: [u32; CLASS_COUNT] = {
    let mut t = [0u32; CLASS_COUNT];
    let mut c = 0;
    while c < CLASS_COUNT {
        t[c] = compute_size(c) as u32;
        c += 1;
    }
    t
};

const SMALL_TABLE: [u8; TABLE_MAX / 16 + 1] = {
    let mut t = [0u8; TABLE_MAX / 16 + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = compute_class(i * 16) as u8;
        i += 1;
    }
    t
};

/// Requests up to this many bytes find their page through a heap's `direct` table: one byte
/// per byte of request size, the request's class, so that `malloc` reads the class with the
/// size as the index and then the class's current page, two loads (`[tables + size]`,
/// `[tables + class * 8]`), where a table of pages by 16-byte step took an add, a shift and
/// a load (one instruction more on every `malloc`). A table of pages by byte would save one
/// more, but costs 8 KiB a heap and the sentinels, and rewriting up to 128 slots whenever a
/// class's page changes (measured: 1.3 instructions per pair on `sliding_window`, and +68 KiB
/// peak RSS for `/bin/echo`). The class table never changes, but for routing (`ROUTED_CLASS`).
pub(crate) const DIRECT_MAX: usize = TABLE_MAX;
pub(crate) const DIRECT_SLOTS: usize = DIRECT_MAX + 1;
/// The `current` slot past the classes, which always holds the empty page: every `direct`
/// byte says it while placement routes plain requests (`heap::DIRECT_OFF`).
pub(crate) const ROUTED_CLASS: usize = CLASS_COUNT;

/// The class of every request size up to `DIRECT_MAX`: a heap's `direct` table as it starts.
pub(crate) const DIRECT_CLASSES: [u8; DIRECT_SLOTS] = {
    let mut t = [0u8; DIRECT_SLOTS];
    let mut i = 0;
    while i < t.len() {
        t[i] = SMALL_TABLE[(i + 15) >> 4];
        i += 1;
    }
    t
};

/// The class serving `size` bytes (`size <= SMALL_MAX`).
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size <= SMALL_MAX);
    if size <= TABLE_MAX {
        SMALL_TABLE[(size + 15) >> 4] as usize
    } else {
        compute_class(size)
    }
}

/// The block size of `class`.
#[inline(always)]
pub const fn class_size(class: usize) -> usize {
    SIZES[class] as usize
}

/// The class serving `size` bytes at `align` (a power of two ≤ `MAX_NATURAL_ALIGN`), or `None`
/// if it would exceed `SMALL_MAX`.
///
/// Rounding `size` up to a multiple `n·align` and taking its class gives a size that is a
/// multiple of `align`: for n ≥ 4 the class width 2^(e-2) is itself a multiple of `align`;
/// for n = 1, 2, 3 the sizes `align`, `2·align` and `3·align` are classes exactly.
#[inline]
pub fn class_for_aligned(size: usize, align: usize) -> Option<usize> {
    let rounded = size.checked_add(align - 1)? & !(align - 1);
    if rounded > SMALL_MAX {
        return None;
    }
    let class = class_of(rounded.max(align));
    debug_assert_eq!(class_size(class) % align, 0);
    Some(class)
}

/// How many slices a page of `class` spans: one for blocks up to 8 KiB (at least 8 blocks);
/// for bigger blocks, the fewest slices that hold at least one block and leave at most an
/// eighth of the page past its last block (`blocks_per_big_page`).
#[inline]
pub fn page_slices(class: usize) -> usize {
    PAGE_SLICES[class] as usize
}

/// The fewest blocks of `size` (over 8 KiB) whose page of whole slices leaves at most an
/// eighth of it unused: a page of a big class holds as few blocks as its slices allow, so
/// that a class's pages keep little more than its blocks in use, and the slices of a page
/// that empties are free for every other class (a page of 8 blocks of the largest class
/// spanned 2 MiB, of which a program holding one block kept up to the whole carved part).
const fn blocks_per_big_page(size: usize) -> usize {
    let mut k = 1;
    loop {
        let span = (k * size).div_ceil(SLICE_SIZE) * SLICE_SIZE;
        if (span - k * size) * 8 <= span {
            return k;
        }
        k += 1;
    }
}

const PAGE_SLICES: [u8; CLASS_COUNT] = {
    let mut t = [0u8; CLASS_COUNT];
    let mut c = 0;
    while c < CLASS_COUNT {
        let size = compute_size(c);
        t[c] = if size <= BIG_MIN {
            1
        } else {
            (blocks_per_big_page(size) * size).div_ceil(SLICE_SIZE) as u8
        };
        c += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_and_waste_under_a_quarter_above_128() {
        assert_eq!(class_size(CLASS_COUNT - 1), SMALL_MAX);
        assert_eq!(class_of(SMALL_MAX), CLASS_COUNT - 1);
        let mut previous = 0;
        for size in 0..=SMALL_MAX {
            let c = class_of(size);
            let s = class_size(c);
            assert!(s >= size, "size {size} class {c} holds {s}");
            assert!(
                c == 0 || class_size(c - 1) < size,
                "size {size} not in smallest class"
            );
            if size > 128 {
                assert!((s - size) * 4 < s, "size {size} wastes too much in {s}");
            }
            assert!(c >= previous);
            previous = c;
            assert_eq!(s % 16, 0);
        }
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        let mut align = 16;
        while align <= MAX_NATURAL_ALIGN {
            for size in (0..=SMALL_MAX).step_by(97) {
                if let Some(c) = class_for_aligned(size, align) {
                    assert_eq!(class_size(c) % align, 0, "size {size} align {align}");
                    assert!(class_size(c) >= size);
                } else {
                    assert!(size.next_multiple_of(align) > SMALL_MAX);
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn the_direct_table_gives_each_size_its_class() {
        for size in 0..=DIRECT_MAX {
            assert_eq!(DIRECT_CLASSES[size] as usize, class_of(size), "size {size}");
        }
        assert!(ROUTED_CLASS <= u8::MAX as usize);
    }

    #[test]
    fn pages_hold_enough_blocks_and_big_pages_few() {
        for c in 0..CLASS_COUNT {
            let (size, span) = (class_size(c), page_slices(c) * SLICE_SIZE);
            let blocks = span / size;
            assert!(blocks >= 1 && page_slices(c) <= 32, "class {c}");
            if size <= SLICE_SIZE / 8 {
                assert!(page_slices(c) == 1 && blocks >= 8, "class {c}");
            } else {
                // At most an eighth of the page past its last block, with the fewest blocks
                // that allow it (one slice less would hold fewer blocks or waste more).
                assert!(
                    (span - blocks * size) * 8 <= span,
                    "class {c}: {blocks} blocks in {span}"
                );
                let fewer = blocks - 1;
                if fewer > 0 {
                    let shorter = (fewer * size).div_ceil(SLICE_SIZE) * SLICE_SIZE;
                    assert!(
                        (shorter - fewer * size) * 8 > shorter,
                        "class {c}: {fewer} blocks would do"
                    );
                }
            }
        }
        // the classes a multiple of a slice hold one block a page
        assert_eq!(page_slices(class_of(SMALL_MAX)), SMALL_MAX / SLICE_SIZE);
        assert_eq!(page_slices(class_of(128 * 1024)), 2);
    }
}
