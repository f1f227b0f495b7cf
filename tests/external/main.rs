//! One test binary for the integration tests that check the library, its header and the
//! `tiermalloc` command from outside: each file below stays where it was (`tests/NAME.rs`,
//! unchanged) and is a module here, so its tests are named `NAME::TEST`
//! (`cargo test --test external cli::` runs one file's; `cargo test --test NAME` still builds
//! and runs a file alone, as before).
//!
//! Why one binary: `cargo test` runs test binaries one after another, and the tests inside one
//! binary side by side (one thread per core). Apart, every file ended with its slowest test
//! running alone on one core while the other idled (the C programs, the real programs, the VM
//! suite), and every file was one more link of the library and the test harness. Together, the
//! slow tests of one file overlap the others' (README, "Build and test", has the figures).
//!
//! What may join: a file whose tests share nothing with the others' but the files and
//! processes they make themselves — no `#[global_allocator]`, no tiers or pools opened in this
//! process whose state another test could see, no re-running of the test executable with a
//! test name (`current_exe()` + a filter: the names change here), no `std::env::set_var`, no
//! signal dispositions changed, no timing that needs the machine to itself.
//!
//! To add `tests/NEW.rs` (the lead, merging a branch's new test file):
//! 1. here, in alphabetical order: `#[path = "../NEW.rs"] mod NEW;`
//! 2. in Cargo.toml, beside the others: `[[test]] name = "NEW" path = "tests/NEW.rs"
//!    test = false` (so that `cargo test` does not also build and run it alone).
//!
//! [`every_grouped_file_is_a_module_here_and_nothing_else_is`] checks the two lists against each
//! other, so a file in neither runs alone (as any `tests/*.rs` does), and a file in one only is
//! an error, never a test that silently stops running.

#[path = "../c_programs.rs"]
mod c_programs;
#[path = "../cli.rs"]
mod cli;
#[path = "../cxx_operators.rs"]
mod cxx_operators;
#[path = "../device_touches.rs"]
mod device_touches;
#[path = "../header.rs"]
mod header;
#[path = "../hot_text.rs"]
mod hot_text;
#[path = "../packaging.rs"]
mod packaging;
#[path = "../profile.rs"]
mod profile;
#[path = "../readme.rs"]
mod readme;
#[path = "../real_programs.rs"]
mod real_programs;
#[path = "../startup_footprint.rs"]
mod startup_footprint;
#[path = "../stats_report.rs"]
mod stats_report;
#[path = "../vm.rs"]
mod vm;

/// The `[[test]]` targets of Cargo.toml marked `test = false` are exactly the files this binary
/// holds as modules (`#[path = "../NAME.rs"] mod NAME;` above), name and path alike.
#[test]
fn every_grouped_file_is_a_module_here_and_nothing_else_is() {
    let manifest = include_str!("../../Cargo.toml");
    let mut in_cargo: Vec<String> = Vec::new();
    for stanza in manifest.split("[[test]]").skip(1) {
        // A stanza ends where the next table starts.
        let stanza = stanza.split("\n[").next().unwrap();
        let value = |key: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        if value("test").as_deref() != Some("false") {
            continue;
        }
        let name = value("name").expect("a [[test]] without a name");
        assert_eq!(
            value("path").as_deref(),
            Some(format!("tests/{name}.rs").as_str()),
            "Cargo.toml: [[test]] {name}: path"
        );
        in_cargo.push(name);
    }
    let mut here: Vec<String> = Vec::new();
    let mut lines = include_str!("main.rs").lines();
    while let Some(line) = lines.next() {
        if let Some(path) = line
            .strip_prefix("#[path = \"../")
            .and_then(|l| l.strip_suffix(".rs\"]"))
        {
            let module = lines.next().unwrap_or_default();
            assert_eq!(module, format!("mod {path};"), "tests/external/main.rs");
            here.push(path.to_string());
        }
    }
    in_cargo.sort();
    here.sort();
    assert!(
        !here.is_empty(),
        "no `#[path = \"../NAME.rs\"]` module found in main.rs"
    );
    assert_eq!(
        in_cargo, here,
        "Cargo.toml's [[test]] targets with `test = false` (left) must be the modules of \
         tests/external/main.rs (right): a file listed in only one is either run twice or never"
    );
}
