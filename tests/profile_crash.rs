//! Profile records in the pool (`pool::profiles`, `lockfree::run_records`) survive `kill -9`:
//! two writer processes append records of one name in a loop, without a lock, and are killed
//! at random points, round after round. After every round each record a reader accepts is
//! one writer's whole record, at most the two records being written are lost, and a record
//! of another name is untouched. (The protocol's loom models are in `lockfree::run_records`.)

use std::process::{Command, Stdio};
use std::time::Duration;
use tiermalloc::pool::profile_records_for_test::ProfileRecordsForTest;

const PROFILE_FIELDS: usize = ProfileRecordsForTest::FIELDS;
const PROFILE_RUNS: usize = ProfileRecordsForTest::RUNS;

const WRITER_ENV: &str = "TM_LEND_PROFILE_WRITER";

/// Record `i` of writer `w`: word k is `w << 48 | i << 4 | k`, so a mix of two records (or a
/// partly written one) shows.
fn record(w: u64, i: u64) -> [u64; PROFILE_FIELDS] {
    core::array::from_fn(|k| w << 48 | i << 4 | k as u64)
}

fn is_whole(f: &[u64; PROFILE_FIELDS]) -> bool {
    f.iter()
        .enumerate()
        .all(|(k, &v)| v == (f[0] & !0xf) | k as u64)
}

/// The writer: run by the test below as a child process of this test binary.
#[test]
fn writer() {
    let Ok(spec) = std::env::var(WRITER_ENV) else {
        return;
    };
    let w: u64 = std::env::var("TM_LEND_WRITER_ID").unwrap().parse().unwrap();
    let records = ProfileRecordsForTest::open(&spec).unwrap();
    let ready = std::env::var("TM_LEND_READY").unwrap();
    std::fs::write(format!("{ready}.ready.{w}"), b"").unwrap();
    for i in 1.. {
        records.append("crash", record(w, i));
    }
}

#[test]
fn kill_9_while_writing_a_record_loses_at_most_that_record() {
    if std::env::var(WRITER_ENV).is_ok() {
        return;
    }
    let path = format!("/dev/shm/tm-lend-profile-crash-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    let spec = format!("path={path},size=4M,create");
    let records = ProfileRecordsForTest::open(&spec).unwrap();
    let other = record(9, 1);
    assert!(records.append("other", other));
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::process::id() as u64 | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rounds = 40;
    let mut lost_total = 0;
    for round in 0..rounds {
        let mut writers: Vec<_> = (1..=2u64)
            .map(|w| {
                Command::new(&exe)
                    .args(["--exact", "writer", "--nocapture", "--test-threads=1"])
                    .env(WRITER_ENV, &spec)
                    .env("TM_LEND_READY", &path)
                    .env("TM_LEND_WRITER_ID", (round * 2 + w).to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (w, child) in (1..=2u64).zip(&mut writers) {
            let ready = format!("{path}.ready.{}", round * 2 + w);
            while !std::path::Path::new(&ready).exists() {
                assert!(child.try_wait().unwrap().is_none(), "a writer ended");
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = std::fs::remove_file(&ready);
        }
        std::thread::sleep(Duration::from_micros(rand() % 3000));
        for child in &mut writers {
            child.kill().unwrap();
        }
        for mut child in writers {
            child.wait().unwrap();
        }
        let (whole, not_whole) = records.entries("crash");
        for f in &whole {
            assert!(
                is_whole(f),
                "round {round}: a torn record was accepted: {f:x?}"
            );
        }
        assert!(
            not_whole <= 2 && (round == 0 || whole.len() + not_whole == PROFILE_RUNS),
            "round {round}: {not_whole} records lost of {PROFILE_RUNS}, two writers killed"
        );
        lost_total += not_whole;
        assert_eq!(records.entries("other"), (vec![other], 0), "round {round}");
    }
    // The entries killed writers left are taken over by the next writer.
    for i in 0..PROFILE_RUNS as u64 {
        assert!(records.append("crash", record(1000, i)));
    }
    let (whole, not_whole) = records.entries("crash");
    assert_eq!((whole.len(), not_whole), (PROFILE_RUNS, 0));
    eprintln!("{rounds} rounds, {lost_total} records lost in all (each a killed writer's)");
    let _ = std::fs::remove_file(&path);
}
