//! `tiermalloc`, the command: runs programs under the library (`run`) and reads their
//! statistics (`stats`), through the library's public Rust API and the files it writes.
//!
//! Every failure is one line on stderr, `tiermalloc: ...`, and exit status 1 (2 for a usage
//! error); `run` exits with its program's status, or 127 (not found) or 126 (not executable)
//! when it cannot start it, as a shell does.

mod offline;
mod own_env;
mod run;
mod spaces;
mod stats;
mod svg_map;

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, Command};
use std::process::ExitCode;

/// A failure, said in one line.
pub type Failure = String;

fn cli() -> Command {
    Command::new("tiermalloc")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Run programs on tiermalloc and read their memory statistics")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("run")
                .about(
                    "Run CMD with tiermalloc preloaded (the library next to this command, or \
                     installed)",
                )
                .arg(
                    Arg::new("tiers")
                        .long("tiers")
                        .value_name("SPEC")
                        .help("TIERMALLOC_TIERS for CMD, e.g. 'dram;cxl:path=/dev/dax0.0'"),
                )
                .arg(
                    Arg::new("place")
                        .long("place")
                        .value_name("RULES")
                        .help("TIERMALLOC_PLACE for CMD, e.g. 'cxl:min=1M'"),
                )
                .arg(
                    Arg::new("stats")
                        .long("stats")
                        .action(ArgAction::SetTrue)
                        .help("print CMD's statistics on stderr when it exits"),
                )
                .arg(
                    Arg::new("json")
                        .long("json")
                        .action(ArgAction::SetTrue)
                        .requires("stats")
                        .help("with --stats: as JSON"),
                )
                .arg(
                    Arg::new("cmd")
                        .value_name("CMD")
                        .required(true)
                        .num_args(1..)
                        .last(true)
                        .help("the program and its arguments, after --"),
                ),
        )
        .subcommand(
            offline_command(
                "inspect",
                "Show what a persistent tier's file holds: its heap, blocks, free space and roots \
                 (read-only)",
            )
            .arg(Arg::new("map").long("map").value_name("FILE.svg").help(
                "also draw the region's extents (allocated, slabs, free, damaged) into an SVG \
                 file, with the largest free extent and the fragmentation",
            )),
        )
        .subcommand(
            offline_command(
                "check",
                "Verify a persistent tier's file offline (read-only); fails on the first \
                 inconsistency",
            )
            .arg(
                Arg::new("repair")
                    .long("repair")
                    .action(ArgAction::SetTrue)
                    .help(
                        "mend what recovery can mend offline (a file cut short, a broken header \
                         chain, roots naming no block, the dirty flag), one line per change; \
                         refuses a file that is not a heap or is in use",
                    ),
            ),
        )
        .subcommand(
            offline_command(
                "spaces",
                "List a shared pool's named spaces (name, size, refs, age, state); --collect \
                 applies its deletion rule",
            )
            .arg(
                Arg::new("collect")
                    .long("collect")
                    .action(ArgAction::SetTrue)
                    .help(
                        "delete the published spaces nobody maps (and older than --min-age), then \
                         list",
                    ),
            )
            .arg(
                Arg::new("min_age")
                    .long("min-age")
                    .value_name("AGE")
                    .requires("collect")
                    .value_parser(|text: &str| {
                        spaces::parse_age(text).ok_or("not an age (10s, 5m, 2h, 1d)")
                    })
                    .help(
                        "with --collect: only spaces at least this old (10s, 5m, 2h, 1d; \
                               default 0)",
                    ),
            ),
        )
        .subcommand(
            Command::new("stats")
                .about("Show the last run's statistics, a running process's, or a stats file's")
                .arg(
                    Arg::new("json")
                        .long("json")
                        .action(ArgAction::SetTrue)
                        .help("print JSON (raw numbers) instead of text"),
                )
                .arg(Arg::new("target").value_name("PID|FILE").help(
                    "a process running with live statistics (under `tiermalloc run`, or \
                     TIERMALLOC_STATS_LIVE=1), or a JSON file written through \
                     TIERMALLOC_STATS_FILE; none: the last `tiermalloc run`",
                )),
        )
}

/// `inspect`, `check` and `spaces`: a file, an offset into it, `--json`.
fn offline_command(name: &'static str, about: &'static str) -> Command {
    Command::new(name)
        .about(about)
        .arg(
            Arg::new("path")
                .value_name("PATH")
                .required(true)
                .help("the tier's file or device"),
        )
        .arg(
            Arg::new("offset")
                .long("offset")
                .value_name("BYTES")
                .value_parser(|text: &str| text.parse::<u64>().map_err(|_| "not a number of bytes"))
                .help("where the tier or pool starts in the file (its offset= key); default 0"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("print JSON"),
        )
}

fn main() -> ExitCode {
    let matches = match cli().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `tiermalloc` alone: the whole help (on stderr), not its first line as an error.
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // clap's message, up to its usage lines, as one line.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!(
                "tiermalloc: {}",
                message.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let result = match matches.subcommand() {
        Some(("run", m)) => run::run(m),
        Some(("stats", m)) => stats::stats(m),
        Some(("inspect", m)) => offline::inspect(m),
        Some(("check", m)) => offline::check(m),
        Some(("spaces", m)) => spaces::spaces(m),
        _ => Err("no such command".to_string()),
    };
    match result {
        Ok(code) => code,
        Err(why) => {
            eprintln!("tiermalloc: {why}");
            ExitCode::FAILURE
        }
    }
}
