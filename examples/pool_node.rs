//! One node of the shared pool, driven from the command line: the tool for trying the pool
//! by hand, and for the two-host proof (two VMs whose device memory is one host file, each
//! running this against its own view of the device, `TIERMALLOC_POOL=path=...` in both).
//!
//! ```text
//! pool_node publish NAME MIB SEED    create NAME, fill it from SEED, publish it
//! pool_node verify NAME SEED         open NAME READ and check every byte
//! pool_node republish NAME NEW SEED  open NAME PRIVATE, change its first byte of every page, republish as NEW
//! pool_node list                     print every space: name id size state refs
//! pool_node collect [MIN_AGE_MS]     apply the deletion rule, print how many were deleted
//! pool_node check                    run the consistency checker
//! ```
//! Exit status 0 on success; one line on stderr and status 1 otherwise.

use tiermalloc::pool::{self, MapMode};

fn pattern(seed: u64, i: usize) -> u8 {
    let x = (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("pool_node: {what}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pool = pool::global().unwrap_or_else(|| fail("TIERMALLOC_POOL names no usable pool"));
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .unwrap_or_else(|| fail("missing argument (see the source's top comment)"))
    };
    let num = |i: usize| {
        arg(i)
            .parse::<u64>()
            .unwrap_or_else(|_| fail("not a number"))
    };
    match args.first().map(String::as_str) {
        Some("publish") => {
            let (name, size, seed) = (arg(1), num(2) as usize * 1024 * 1024, num(3));
            let mut space = pool.create_space(&name, size).unwrap_or_else(|e| fail(e));
            for (i, b) in space.as_mut_slice().unwrap().iter_mut().enumerate() {
                *b = pattern(seed, i);
            }
            space.publish().unwrap_or_else(|e| fail(e));
            std::mem::forget(space); // stays mapped until exit: the exit gives the reference back
            println!("published {name}");
        }
        Some("verify") => {
            let (name, seed) = (arg(1), num(2));
            let space = pool
                .open_space(&name, MapMode::Read)
                .unwrap_or_else(|e| fail(e));
            if let Some(i) = (0..space.len()).find(|&i| space.as_slice()[i] != pattern(seed, i)) {
                fail(format!("{name}: byte {i} differs"));
            }
            println!("verified {name}: {} bytes", space.len());
        }
        Some("republish") => {
            let (name, new, seed) = (arg(1), arg(2), num(3));
            let mut private = pool
                .open_space(&name, MapMode::Private)
                .unwrap_or_else(|e| fail(e));
            for page in private.as_mut_slice().unwrap().chunks_mut(4096) {
                page[0] = !page[0];
            }
            let copy = private.republish(&new).unwrap_or_else(|e| fail(e));
            let wrong = (0..copy.len()).find(|&i| {
                let want = pattern(seed, i);
                copy.as_slice()[i] != if i % 4096 == 0 { !want } else { want }
            });
            if let Some(i) = wrong {
                fail(format!("{new}: byte {i} is not the modified copy"));
            }
            println!("republished {name} as {new}");
        }
        Some("list") => {
            for s in pool.spaces() {
                println!("{} {} {} {:?} {}", s.name, s.id, s.size, s.state, s.refs);
            }
        }
        Some("collect") => {
            let age = args.get(1).map(|_| num(1)).unwrap_or(0);
            let n = pool
                .collect_spaces(std::time::Duration::from_millis(age))
                .unwrap_or_else(|e| fail(e));
            println!("collected {n}");
        }
        Some("check") => {
            let problems = pool
                .check()
                .unwrap_or_else(|e| fail(std::io::Error::from_raw_os_error(e)));
            for p in &problems {
                println!("{p}");
            }
            if !problems.is_empty() {
                fail(format!("{} problems", problems.len()));
            }
            println!("consistent");
        }
        _ => fail("usage: pool_node publish|verify|republish|list|collect|check ..."),
    }
}
