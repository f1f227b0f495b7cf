//! Heap misuse found on a DRAM path (a double free, a pointer that is not the start of a live
//! block, a corrupted free list, a size that does not match the block): one line on stderr
//! naming the call, the pointer and the problem, then `abort()`, as glibc does. With
//! `TIERMALLOC_ON_ERROR=ignore` the line says "ignored", the count goes up, and the caller
//! leaves the heap as it was (the misused block is leaked, never handed out twice).
//!
//! Everything here is cold: the checks that call it sit on the fast paths, this does not.

use crate::os;
use crate::stats::SharedCounter;
use core::fmt::Write;

/// Misuses reported and ignored (`TIERMALLOC_ON_ERROR=ignore`).
pub static IGNORED: SharedCounter = SharedCounter::new();

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    /// The block is already free.
    DoubleFree,
    /// The pointer lies inside memory of ours but is not the start of a block.
    NotABlockStart,
    /// The pointer is not in memory tiermalloc manages (stack, static data, another mapping).
    NotOurs,
    /// A free block's link was overwritten (a use after free or an overflow).
    CorruptedFreeList,
    /// A block on a free list no longer carries its free mark when handed out: it was handed
    /// out already (freed twice at the same moment by its owner's thread and another), or its
    /// second word was written after its free.
    FreeMarkLost,
    /// A block waiting in the quarantine (`TIERMALLOC_SECURE=1`) was written to.
    WrittenAfterFree,
    /// A page counted more frees than blocks handed out: an invalid pointer into it was freed
    /// earlier, which the owner's fast path took without testing it (`dram::fast::guard`).
    MoreFreesThanBlocks,
    /// `free_sized`'s size cannot be the size this block was allocated with.
    #[cfg_attr(not(feature = "override"), allow(dead_code))]
    // `free_sized` is an override name
    SizeMismatch { given: usize, usable: usize },
}

impl Misuse {
    fn describe(self, call: &str, line: &mut os::LineBuf) {
        let _ = match self {
            Misuse::DoubleFree if call == "free" => write!(line, "double free"),
            Misuse::DoubleFree => write!(line, "the block was freed already"),
            Misuse::NotABlockStart => {
                write!(line, "invalid pointer (not the start of a live block)")
            }
            Misuse::NotOurs => write!(line, "invalid pointer (not allocated by tiermalloc)"),
            Misuse::CorruptedFreeList => {
                write!(line, "corrupted free list (a freed block was written to)")
            }
            Misuse::FreeMarkLost => write!(
                line,
                "corrupted free list (a free block is in use: freed twice at once, or written \
                 after free)"
            ),
            Misuse::MoreFreesThanBlocks => write!(
                line,
                "heap corrupted (more frees than blocks in use: an invalid pointer was freed \
                 before)"
            ),
            Misuse::WrittenAfterFree => {
                write!(
                    line,
                    "freed block written after free (use after free, found at its reuse)"
                )
            }
            Misuse::SizeMismatch { given, usable } => write!(
                line,
                "size mismatch ({given} bytes given for a block of {usable} usable bytes)"
            ),
        };
    }
}

/// Reports `what`, found in `call` (`"free"`, `"realloc"`, `"malloc"`, ...) on pointer `p`, and
/// aborts unless `TIERMALLOC_ON_ERROR=ignore`; then it returns and the caller skips the
/// operation.
#[cold]
#[inline(never)]
pub fn report(call: &str, p: *const u8, what: Misuse) {
    report_on(call, p, "dram", what)
}

/// `report` for a block of tier `tier` (its name).
#[cold]
#[inline(never)]
pub fn report_on(call: &str, p: *const u8, tier: &str, what: Misuse) {
    let ignore = crate::config::get().ignore_bad_free;
    let mut line = os::LineBuf::new();
    let _ = write!(line, "tiermalloc: {call}({p:p})");
    if tier != "dram" {
        let _ = write!(line, " on tier {tier}");
    }
    let _ = write!(line, ": ");
    what.describe(call, &mut line);
    let _ = writeln!(line, "; {}", if ignore { "ignored" } else { "aborting" });
    line.flush();
    if ignore {
        IGNORED.add(1);
    } else {
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() };
    }
}
