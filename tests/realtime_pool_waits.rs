//! Real-time processes are not starved by the shared pool's waits on device memory: a process
//! waiting for the pool lock, or for a directory entry another process is rewriting, sleeps
//! after a short spin (`src/device_wait.rs`), so a `SCHED_FIFO` waiter lets the process it
//! waits for run on its CPU, also when that process has a lower priority.
//!
//! Each test: a holder process (SCHED_FIFO 1, pinned to CPU 0) publishes a space and, with the
//! pool lock held and the space's entry BUSY, needs HOLDER_CPU of CPU time to finish
//! (`testing::stall_in_publish`). A waiter process (SCHED_FIFO 2, pinned to CPU 0 too) then
//! waits for the lock (creates a space) or for the entry (looks the space up). A waiter that
//! spins or calls `sched_yield` never lets the holder run on CPU 0: the lock never comes (the
//! waiter's alarm ends it) or the look-up gives up and says the space does not exist. Every
//! child has an alarm, so a broken build cannot hold CPU 0 for long. Skipped with a line where
//! SCHED_FIFO is refused (not root, no real-time budget).
//!
//! The children are this test executable run again with `TM_RT_CHILD=ROLE`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tiermalloc::pool::api::MapMode;
use tiermalloc::pool::{testing, Pool};

/// CPU time the holder needs inside its publish, with the lock held and the entry BUSY.
const HOLDER_CPU: Duration = Duration::from_millis(60);
/// The waiter's own limit (SIGALRM): far above HOLDER_CPU plus the scheduling noise of a
/// loaded machine, which real-time priority mostly escapes anyway.
const WAITER_ALARM_S: u32 = 4;

fn spec(path: &str) -> String {
    format!("path={path},size=64M,create,coherent")
}

/// Makes the calling thread SCHED_FIFO `priority` and then pins it to CPU 0 (in this order:
/// pinned first, a normal thread would wait behind a real-time one on CPU 0); false if
/// refused.
fn fifo_on_cpu0(priority: i32) -> bool {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls get valid pointers and act on the
    // calling thread (0).
    unsafe {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            return false;
        }
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn alarm(seconds: u32) {
    // SAFETY: no preconditions; SIGALRM's default action ends the process.
    unsafe { libc::alarm(seconds) };
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child side: plays the role named by TM_RT_CHILD, then exits. A no-op test otherwise.
#[test]
fn child() {
    let Ok(role) = std::env::var("TM_RT_CHILD") else {
        return;
    };
    let spec = std::env::var("TM_RT_SPEC").unwrap();
    match role.as_str() {
        "holder" => {
            alarm(WAITER_ALARM_S + 6);
            if !fifo_on_cpu0(1) {
                say("refused");
                std::process::exit(0);
            }
            let pool = Pool::open_str(&spec).expect("holder opens the pool");
            let mut space = pool.create_space("data", 4096).unwrap();
            space.as_mut_slice().unwrap().fill(7);
            testing::stall_in_publish(HOLDER_CPU.as_nanos() as u64, || {
                // The waiter, blocked on the FIFO at a higher priority on this CPU, runs now.
                let path = std::env::var("TM_RT_GO").unwrap();
                std::fs::write(path, b"go").unwrap();
            });
            let started = Instant::now();
            space.publish().expect("publish");
            std::mem::forget(space);
            let ms = started.elapsed().as_secs_f64() * 1e3;
            say(&format!("published after {ms:.1} ms"));
        }
        "lock-waiter" | "reader" => {
            let pool = Pool::open_str(&spec).expect("waiter opens the pool");
            // Join the pool's registry now, not while timed.
            drop(pool.create_space("warm-up", 4096).unwrap());
            alarm(WAITER_ALARM_S + 10);
            if !fifo_on_cpu0(2) {
                say("refused");
                std::process::exit(0);
            }
            say("ready");
            // Asleep until the holder, stalled with the lock held and the entry BUSY, says go.
            let go = std::fs::read(std::env::var("TM_RT_GO").unwrap()).unwrap();
            assert_eq!(go, b"go");
            alarm(WAITER_ALARM_S);
            let started = Instant::now();
            let cpu_before = thread_cpu();
            let answer = if role == "reader" {
                // Looks the entry up without the lock (then takes it to count a reference).
                pool.open_space("data", MapMode::Read).map(|m| {
                    std::mem::forget(m);
                    "opened".to_string()
                })
            } else {
                pool.create_space("other", 4096).map(|m| {
                    std::mem::forget(m);
                    "created".to_string()
                })
            };
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let cpu_ms = (thread_cpu() - cpu_before).as_secs_f64() * 1e3;
            match answer {
                Ok(what) => say(&format!("got {what} after {ms:.1} ms, cpu {cpu_ms:.2} ms")),
                Err(e) => say(&format!("error {e} after {ms:.1} ms")),
            }
        }
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

fn spawn(role: &str, spec: &str, go: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("TM_RT_CHILD", role)
        .env("TM_RT_SPEC", spec)
        .env("TM_RT_GO", go)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// From the next line of a child's stdout holding one of `words`, the part from that word on
/// (the test harness's own output is skipped, and may begin the line); "" at its end.
fn line_of(out: &mut impl BufRead, words: &[&str]) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            return String::new();
        }
        if let Some(at) = words.iter().filter_map(|w| line.find(w)).min() {
            return line[at..].trim_end().to_string();
        }
    }
}

/// Files removed on drop.
struct Files([String; 2]);
impl Drop for Files {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Runs a waiter of `role` and the holder; returns the waiter's answer line, or None if
/// SCHED_FIFO was refused.
fn holder_and(role: &str) -> Option<String> {
    // One pair on CPU 0 at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let id = std::process::id();
    let files = Files([
        format!("/dev/shm/tm-xlocks-rt-{role}-{id}"),
        format!("/tmp/tm-xlocks-rt-go-{role}-{id}"),
    ]);
    let [pool_file, go] = &files.0;
    let _ = std::fs::remove_file(pool_file);
    let _ = std::fs::remove_file(go);
    let c_go = std::ffi::CString::new(go.as_str()).unwrap();
    // SAFETY: a valid path; makes a FIFO the holder writes and the waiter reads.
    assert_eq!(unsafe { libc::mkfifo(c_go.as_ptr(), 0o600) }, 0);
    let spec = spec(pool_file);
    drop(Pool::open_str(&spec).expect("the pool is made"));
    let mut waiter = spawn(role, &spec, go);
    let mut waiter_out = BufReader::new(waiter.stdout.take().unwrap());
    if line_of(&mut waiter_out, &["ready", "refused"]) != "ready" {
        let _ = waiter.wait();
        eprintln!("skipped: SCHED_FIFO on CPU 0 refused (needs root and an RT budget)");
        return None;
    }
    let mut holder = spawn("holder", &spec, go);
    let mut holder_out = BufReader::new(holder.stdout.take().unwrap());
    let answer = line_of(&mut waiter_out, &["got", "error"]);
    let waited = waiter.wait().unwrap();
    let held = line_of(&mut holder_out, &["published"]);
    let _ = holder.wait();
    eprintln!("{role}: {answer}; holder {held}");
    assert!(
        !answer.is_empty(),
        "the SCHED_FIFO 2 waiter gave no answer ({waited}): it kept CPU 0 from the SCHED_FIFO 1 \
         holder it waited for until its {WAITER_ALARM_S} s alarm"
    );
    assert!(held.starts_with("published"), "the holder did not finish");
    Some(answer)
}

#[test]
fn a_fifo_process_waiting_for_the_pool_lock_lets_a_lower_priority_holder_run() {
    if let Some(answer) = holder_and("lock-waiter") {
        assert!(answer.starts_with("got created"), "{answer}");
        // A waiter that yields and naps in turns gets the lock too, but keeps taking the CPU
        // from the holder: about a fifth of its wait. A sleeping one takes a few percent.
        let number = |key: &str| -> f64 {
            let at = answer.find(key).unwrap() + key.len();
            answer[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let (waited, cpu) = (number("after "), number("cpu "));
        assert!(
            cpu < 0.05 * waited + 0.5,
            "the waiter used {cpu} ms of CPU 0 in its {waited} ms wait: {answer}"
        );
    }
}

#[test]
fn a_fifo_process_reading_an_entry_being_rewritten_lets_a_lower_priority_writer_run() {
    if let Some(answer) = holder_and("reader") {
        assert!(answer.starts_with("got opened"), "{answer}");
    }
}
