//! The shared library's layout: the code every process runs lies together at the front of
//! `.text` (`link/hot_text.ld` says why: the kernel maps a library's text a 64 KiB window at a
//! time, and every mapped page counts in the process's RSS). Read from the built library with
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
