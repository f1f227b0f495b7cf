//! The shared library's layout and what it makes the loader map: the code every process runs
//! lies together at the front of `.text` (`link/hot_text.ld` says why: the kernel maps a
//! library's text a 64 KiB window at a time, and every mapped page counts in the process's
//! RSS), and libgcc_s is loaded only by a build that unwinds. Read from the built library with
//! `nm` and `readelf`, so it holds for whichever profile the tests link.

mod support;

use std::collections::HashMap;
use std::process::Command;
use support::library;

/// Every defined symbol of the library, demangled, with its address (`nm -C`); a name
/// defined more than once keeps its lowest address.
fn symbols(lib: &std::path::Path) -> HashMap<String, u64> {
    let out = Command::new("nm")
        .args(["-C", "--defined-only"])
        .arg(lib)
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm {} failed", lib.display());
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(addr), Some(_kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        // A Rust symbol demangles with its hash (`::h0123…`); the names below leave it off.
        let name = match name.rsplit_once("::h") {
            Some((head, hash)) if hash.len() == 16 => head,
            _ => name,
        };
        let e = map.entry(name.to_string()).or_insert(addr);
        *e = (*e).min(addr);
    }
    map
}

/// `(address, size)` of each section, from `readelf -SW`.
fn sections(lib: &std::path::Path) -> HashMap<String, (u64, u64)> {
    let out = Command::new("readelf")
        .arg("-SW")
        .arg(lib)
        .output()
        .expect("readelf (binutils) runs");
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `  [14] .text  PROGBITS  0000000000027030 026030 08d27c 00  AX  0   0 16`
        let Some((_, rest)) = line.split_once(']') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() >= 5 {
            if let (Ok(a), Ok(s)) = (u64::from_str_radix(f[2], 16), u64::from_str_radix(f[4], 16)) {
                map.insert(f[0].to_string(), (a, s));
            }
        }
    }
    map
}

#[test]
fn what_every_process_runs_lies_together_at_the_front_of_the_text() {
    let lib = library().path;
    let syms = symbols(&lib);
    let secs = sections(&lib);
    let (Some(&start), Some(&end)) = (
        syms.get("__tiermalloc_hot_text_start"),
        syms.get("__tiermalloc_hot_text_end"),
    ) else {
        panic!(
            "{} has no __tiermalloc_hot_text_start/end: it was linked without \
             link/hot_text.ld (build.rs passes it)",
            lib.display()
        );
    };
    let (text, text_len) = secs[".text"];
    assert_eq!(start, text, "the group opens .text");
    // Functions every process runs: the loader's and exit's, the start-up and exit hooks, the
    // malloc family and the DRAM tier's slow path, the settings, the thread-exit hooks.
    let every_process_runs = [
        "malloc",
        "free",
        "calloc",
        "realloc",
        "tiermalloc::front::runtime::at_start",
        "tiermalloc::front::runtime::at_exit",
        "tiermalloc::front::report::init",
        "tiermalloc::config::get",
        "tiermalloc::dram::fast::heap::Heap::alloc_slow",
        "tiermalloc::dram::fast::binding::pooled_or_new",
        "tiermalloc::thread_slot::ExitKey::call_at_exit",
        "std::sys::args::unix::imp::ARGV_INIT_ARRAY::init_wrapper",
    ];
    let outside: Vec<String> = every_process_runs
        .iter()
        .filter_map(|name| match syms.get(*name) {
            Some(&a) if (start..end).contains(&a) => None,
            Some(&a) => Some(format!("{name} at {a:#x}")),
            // Inlined into its caller in this build: it runs where the caller is.
            None => None,
        })
        .collect();
    assert!(
        outside.is_empty(),
        "outside the group [{start:#x}, {end:#x}) (add its module to link/hot_text.ld): {outside:?}"
    );
    assert!(
        syms.contains_key("malloc") && syms.contains_key("tiermalloc::front::runtime::at_start"),
        "malloc and at_start are never inlined away; the symbol table was not read"
    );
    // `.fini` (exit) and `.plt` (`__tls_get_addr` on the first touch of a thread-local) run in
    // every process: within the group's first window, before `.text`.
    for s in [".fini", ".plt"] {
        let (a, _) = secs[s];
        assert!(
            a < text && text - a < 4096,
            "{s} at {a:#x}, not just before .text at {text:#x}"
        );
    }
    // The group is a small part of the text: the rest is what a typical program never runs.
    let group = end - start;
    assert!(
        group * 3 < text_len,
        "the group is {group} of the text's {text_len} bytes: more than a third"
    );
}

/// The kernel maps a library's text a 64 KiB window at a time (fault-around), and a large
/// page-cache folio whole; both are aligned, windows in memory and folios in the file. The
/// code every process runs (`.init`, `.fini`, `.plt`, crtbegin's `frame_dummy` and
/// `__do_global_dtors_aux`, and the group) lies in one window that starts at a 64 KiB
/// boundary both in memory and in the file, so a process maps 64 KiB of our text, not the
/// 92-156 KiB it did when the group was 92 KiB and started mid-window.
#[test]
fn what_every_process_runs_fits_one_aligned_window() {
    const WINDOW: u64 = 64 << 10;
    let lib = library().path;
    let syms = symbols(&lib);
    let (start, end) = (
        syms["__tiermalloc_hot_text_start"],
        syms["__tiermalloc_hot_text_end"],
    );
    let (init, _) = sections(&lib)[".init"];
    assert_eq!(
        init % WINDOW,
        0,
        ".init at {init:#x}: not at a 64 KiB boundary"
    );
    assert!(
        init <= start && end <= init + WINDOW,
        "the group [{start:#x}, {end:#x}) is {} bytes: past the window [{init:#x}, {:#x}); \
         move a rarely taken branch of the start-up or exit path out of line and cold",
        end - start,
        init + WINDOW
    );
    for f in ["frame_dummy", "__do_global_dtors_aux"] {
        if let Some(&a) = syms.get(f) {
            assert!(
                (start..end).contains(&a),
                "{f} at {a:#x}: outside the group"
            );
        }
    }
    // The executable segment's file offset is the address's, modulo the window.
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(&lib)
        .output()
        .expect("readelf runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let loads: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let exec = loads
        .iter()
        .position(|f| f.get(7) == Some(&"E"))
        .expect("an executable LOAD segment");
    let (offset, vaddr) = (hex(loads[exec][1]), hex(loads[exec][2]));
    // No hole in the file before the text: the segment before it runs up to it. `cp` and
    // `install` copy a file with a hole in 128 KiB writes, which leave a 128 KiB folio at the
    // file's start that the kernel then maps whole (64 KiB more of headers in every process).
    assert!(exec > 0, "the text is the first LOAD segment");
    let (before_offset, before_size) = (hex(loads[exec - 1][1]), hex(loads[exec - 1][4]));
    assert_eq!(
        before_offset + before_size,
        offset,
        "the file has a gap before the text at {offset:#x} (a hole `cp` writes around): \
         link/hot_text.ld's pad section should fill it"
    );
    assert_eq!(
        offset % WINDOW,
        vaddr % WINDOW,
        "the text is at file offset {offset:#x} for address {vaddr:#x}: its window spans two \
         64 KiB folios of the file (build.rs links with -z max-page-size=0x10000)"
    );
}

/// `(needed libraries, imported symbols)` of the library, from `readelf -dW` and
/// `nm -D --undefined-only`.
fn dynamic_imports(lib: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let d = Command::new("readelf")
        .arg("-dW")
        .arg(lib)
        .output()
        .expect("readelf runs");
    let needed = String::from_utf8_lossy(&d.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.trim_end_matches(']').to_string()))
        .collect();
    let u = Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(lib)
        .output()
        .expect("nm runs");
    let imported = String::from_utf8_lossy(&u.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s).to_string())
        .collect();
    (needed, imported)
}

/// libgcc_s is mapped only when unwinding needs it (src/unwind_lazy.rs): the unwinder entry
/// points std names for backtraces and landing pads are the library's own lazy stubs, never
/// imports, so a `panic = "abort"` build (the release library: run with
/// `TIERMALLOC_TEST_PRELOAD=target/release/libtiermalloc.so`) imports no `_Unwind_*` symbol and
/// does not list libgcc_s.so.1; a `panic = "unwind"` build (the tests') still imports
/// `_Unwind_RaiseException` for its panics.
#[test]
fn libgcc_s_is_needed_only_for_unwinding_itself() {
    let lib = library().path;
    let (needed, imported) = dynamic_imports(&lib);
    assert!(
        needed.iter().any(|n| n.starts_with("libc.so")),
        "the dynamic section was not read: {needed:?}"
    );
    let lazy = [
        "_Unwind_Resume",
        "_Unwind_Backtrace",
        "_Unwind_GetIP",
        "_Unwind_GetIPInfo",
        "_Unwind_GetDataRelBase",
        "_Unwind_GetTextRelBase",
        "_Unwind_GetRegionStart",
        "_Unwind_GetLanguageSpecificData",
        "_Unwind_SetGR",
        "_Unwind_SetIP",
    ];
    let imported_lazy: Vec<&String> = imported
        .iter()
        .filter(|s| lazy.contains(&s.as_str()))
        .collect();
    assert!(
        imported_lazy.is_empty(),
        "{} imports {imported_lazy:?}: they should bind to src/unwind_lazy.rs's stubs",
        lib.display()
    );
    let unwinds = imported.iter().any(|s| s.starts_with("_Unwind_"));
    let needs_gcc_s = needed.iter().any(|n| n.starts_with("libgcc_s"));
    assert!(
        needs_gcc_s == unwinds,
        "{} lists {needed:?} and imports {:?}: libgcc_s should be needed exactly when an \
         _Unwind_ symbol is imported",
        lib.display(),
        imported
            .iter()
            .filter(|s| s.starts_with("_Unwind_"))
            .collect::<Vec<_>>()
    );
}

/// No function every process runs has a frame of a page or more: such a frame is probed a page
/// at a time (`sub $0x1000,%rsp`), and the start-up path's deepest frame decides how many
/// stack pages every process keeps resident. `config::get` built the whole configuration on
/// the stack (13 KiB) until it filled the static in place (src/config.rs, `parse_into`).
#[test]
fn no_function_every_process_runs_probes_a_page_of_stack() {
    let lib = library().path;
    let syms = symbols(&lib);
    let (start, end) = (
        syms["__tiermalloc_hot_text_start"],
        syms["__tiermalloc_hot_text_end"],
    );
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={end:#x}"))
        .arg(&lib)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success(), "objdump {} failed", lib.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut function = "";
    let mut instructions = 0;
    let mut probing = Vec::new();
    for line in text.lines() {
        if line.ends_with(">:") {
            function = line;
        } else if line.contains(":\t") {
            instructions += 1;
            if line.contains("sub    $0x1000,%rsp") && !probing.contains(&function) {
                probing.push(function);
            }
        }
    }
    assert!(
        instructions > 1000,
        "the group was not disassembled: {instructions} instructions"
    );
    assert!(
        probing.is_empty(),
        "frames of a page or more in the start-up and malloc paths: {probing:?}"
    );
}

/// The small statics a process writes at start-up (the DRAM tier's, `profile::reserve`'s,
/// std's argument vector, the keys and limits of `.data`) lie together, the large tables
/// before and after them (`link/hot_text.ld`, `.tiermalloc_cold_data`, `.tiermalloc_big_bss`):
/// linked in the compiler's order, the page map (32 MiB), the device tiers' tables and the
/// settings (5.3 KiB) sat among them, and they dirtied five OS pages where two hold them
/// (BENCHMARKS.md "Session 12, branch rss2").
#[test]
fn the_statics_written_at_start_up_are_not_split_by_the_large_tables() {
    let lib = library().path;
    let syms = symbols(&lib);
    let secs = sections(&lib);
    let (bss, bss_len) = secs[".bss"];
    for table in ["tiermalloc::pagemap::MAP", "tiermalloc::device::OPENED"] {
        let at = syms[table];
        assert!(
            at >= bss + bss_len,
            "{table} at {at:#x} lies inside .bss ({bss:#x}, {bss_len:#x} bytes): the small \
             statics around it are split over pages of their own"
        );
    }
    let data = secs[".data"].0;
    let config = syms["tiermalloc::config::CONFIG"];
    assert!(
        config < data,
        "the settings at {config:#x} are not before .data ({data:#x}): the small statics around \
         them are split over pages of their own"
    );
    // The small statics of `.data` and `.bss` together within two OS pages' worth (5.2 KiB in
    // the release and the tests' builds; 10.3 KiB with the device tiers' tables among them).
    let small = bss + bss_len - data;
    assert!(
        small <= 8 * 1024,
        ".data and .bss hold {small} bytes: a large table among the small statics?"
    );
}
