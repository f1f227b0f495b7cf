//! Real device paths under QEMU: NVMe CMB and PMR BARs, CXL type-3 memory as device DAX and as
//! a NUMA node, a `numa=` tier moved between two NUMA nodes (`tm_evacuate`), and one device file
//! shared by two VMs (two hosts). Each `#[test]` boots one or
//! two VMs (TCG, 10-40 s each; `TIERMALLOC_VM_ACCEL=kvm` where KVM really boots a stock
//! kernel; `TIERMALLOC_VM_QEMU=/path/to/qemu-system-x86_64` picks the binary) whose guest runs
//! a script of `tests/vm/guest/` with `tm_vm` (built here from `tests/vm/guest/tm_vm.c`) and
//! `touches` (`benches/device/touches.c`), linked statically against `libtiermalloc.a`.
//!
//! - `tests/vm/prepare.sh` downloads the Debian kernel package once (cached per user, in
//!   `~/.cache/tiermalloc/vm-kernel`) and builds the initramfs (busybox, modules, ndctl/daxctl/cxl,
//!   tm_vm, the guest scripts) on every run.
//! - The guest's `/init` (`tests/vm/init`) runs `/tm/NAME.sh` and prints `TM-RESULT PASS NAME`
//!   on the serial console; the test reads the console, and every `TM-` line the guest printed
//!   is echoed as the test's output (`cargo test --test vm -- --nocapture` shows it). The whole
//!   console log is kept in `<target>/tmp/vm/logs/`; a failure prints its tail.
//! - Every VM has a limit of CPU time (and a generous one of wall time); two VMs run at once on
//!   a machine of 2 cores or more (one per core under TCG: the suite takes about a minute on an
//!   idle machine, against 2 one VM at a time); `TIERMALLOC_VM_SLOTS=N` sets it.
//! - No QEMU (or busybox-static, cpio, a Debian kernel package): each test writes one line
//!   `vm: SKIPPED — ...` straight to stderr (visible without --nocapture) and returns; with
//!   `CI` set in the environment it fails instead. `.ci/run` installs what is needed.
//!
//! Timings inside these VMs measure the emulator, not hardware: the tests check behaviour and
//! byte counts only.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{run_with_limits, run_with_timeout};

/// Per VM: boot (3 s), a guest script, power-off. The slowest (the CMB under valgrind, the
/// 250 MiB device DAX filled through emulated CXL memory) take about 40 s of CPU under TCG. A VM
/// is stopped when QEMU has used `VM_CPU_LIMIT` of CPU (a guest that spins), which means the
/// same at any load, or after `VM_WALL_LIMIT` (a guest that hangs idle; on a machine loaded 20
/// times over, a VM that needs 40 s of CPU can take 15 minutes, so only that is caught by wall
/// time).
const VM_CPU_LIMIT: Duration = Duration::from_secs(150);
const VM_WALL_LIMIT: Duration = Duration::from_secs(900);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vm")
}

/// `TIERMALLOC_VM_QEMU`, else `qemu-system-x86_64` from PATH.
fn qemu_binary() -> String {
    std::env::var("TIERMALLOC_VM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// What every VM boots.
struct Boot {
    kernel: PathBuf,
    initrd: PathBuf,
    accel: String,
}

/// Builds the guest programs and the initramfs once per test process; `Err` = this machine cannot
/// run VMs, and why.
fn boot_files() -> Result<&'static Boot, String> {
    static BOOT: OnceLock<Result<Boot, String>> = OnceLock::new();
    BOOT.get_or_init(prepare).as_ref().map_err(Clone::clone)
}

/// Builds the guest's programs, statically linked against `libtiermalloc.a`, once per test
/// process: `tm_vm` (tests/vm/guest/tm_vm.c) and `touches` (benches/device/touches.c). `Err`:
/// no static C library here.
fn guest_programs() -> Result<&'static Path, String> {
    static PROGRAMS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROGRAMS
        .get_or_init(build_guest_programs)
        .as_deref()
        .map_err(Clone::clone)
}

fn build_guest_programs() -> Result<PathBuf, String> {
    let programs = work_dir().join("programs");
    fs::create_dir_all(&programs).unwrap();
    let lib = support::profile_dir().join("deps").join("libtiermalloc.a");
    assert!(
        lib.is_file(),
        "{} missing: crate-type must include staticlib",
        lib.display()
    );
    let repo = repo();
    let include = |cc: &mut Command| {
        cc.arg("-I")
            .arg(repo.join("include"))
            .arg("-I")
            .arg(repo.join("c-tests"));
    };
    // tm_vm (tests/vm/guest/tm_vm.c); the workload tests/device_touches.rs counts on the host,
    // counted here on a real BAR; the persistent tiers' write/verify cycle, run across a VM
    // power-off on the PMR. Compiled at once (each is a static link of a second or two).
    let sources = [
        ("tm_vm", "tests/vm/guest/tm_vm.c"),
        ("touches", "benches/device/touches.c"),
        ("persist", "c-tests/persist.c"),
    ];
    let compiling: Vec<_> = sources
        .iter()
        .map(|(name, source)| {
            let mut cc = Command::new("cc");
            cc.args(["-static", "-O1", "-g", "-Wall", "-Werror", "-pthread"]);
            include(&mut cc);
            cc.arg(repo.join(source))
                .arg(&lib)
                .args(["-lm", "-ldl", "-o"])
                .arg(programs.join(name))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cc.spawn().map_err(|e| format!("cannot run cc: {e}"))
        })
        .collect();
    for ((name, _), child) in sources.iter().zip(compiling) {
        let out = child?.wait_with_output().expect("cc");
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            if text.contains("cannot find -lc") || text.contains("cannot find -lpthread") {
                return Err("no static C library (apt-get install libc6-dev)".into());
            }
            panic!("building {name} failed:\n{text}");
        }
    }
    Ok(programs)
}

fn prepare() -> Result<Boot, String> {
    let qemu = qemu_binary();
    let version = Command::new(&qemu).arg("--version").output();
    if !version.is_ok_and(|o| o.status.success()) {
        return Err(format!(
            "{qemu} not found (apt-get install qemu-system-x86)"
        ));
    }
    let work = work_dir();
    let programs = guest_programs()?;
    let repo = repo();
    let out = Command::new("bash")
        .arg(repo.join("tests/vm/prepare.sh"))
        .arg(&work)
        .arg(programs)
        .output()
        .expect("bash");
    match out.status.code() {
        Some(0) => {}
        Some(3) => return Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        _ => panic!(
            "tests/vm/prepare.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    Ok(Boot {
        kernel: work.join("vmlinuz"),
        initrd: work.join("initramfs.cpio"),
        accel: std::env::var("TIERMALLOC_VM_ACCEL").unwrap_or_else(|_| "tcg".into()),
    })
}

/// Runs `body` with the boot files, or reports the skip (fails under CI).
fn with_vms(test: &str, body: impl FnOnce(&Boot)) {
    match boot_files() {
        Ok(boot) => {
            body(boot);
            for file in DEVICE_FILES.with(|files| files.take()) {
                let _ = fs::remove_file(file);
            }
        }
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("vm: {test}: cannot run VMs in CI: {why}")
        }
        Err(why) => {
            // Straight to the stderr stream, not through the test harness's capture, so the
            // skip is seen in a plain `cargo test`.
            let line = format!("vm: SKIPPED — {test}: {why}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// One VM: its devices and the guest script it runs.
struct Vm<'a> {
    /// Names the log file and the guest script `tests/vm/guest/SCRIPT.sh`.
    script: &'a str,
    log_name: &'a str,
    modules: &'a str,
    /// Extra kernel command-line words (`iomem=relaxed`, `tm.role=a`).
    cmdline: &'a str,
    machine: &'a str,
    memory: &'a str,
    devices: Vec<String>,
}

impl Vm<'_> {
    fn command(&self, boot: &Boot) -> Command {
        let mut qemu = Command::new(qemu_binary());
        let accel = if boot.accel == "tcg" {
            "tcg,thread=multi".to_string()
        } else {
            boot.accel.clone()
        };
        qemu.args([
            "-accel",
            &accel,
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-nic", "none", "-M", self.machine, "-m", self.memory])
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .arg("-append")
        // no_timer_check: on a loaded host an emulated guest can miss the timer interrupt the
        // kernel's boot check waits for, and 6.1 then panics ("IO-APIC + timer doesn't work!",
        // seen here at load average 20); the check is about real chipsets, not our devices.
        .arg(format!(
            "console=ttyS0 quiet panic=-1 no_timer_check tm.test={} tm.modules={} {}",
            self.script, self.modules, self.cmdline
        ))
        .args(&self.devices);
        qemu
    }
}

/// What a VM printed: the console log, and its `TM-CHECK key=value` pairs.
struct Console {
    log: String,
}

impl Console {
    /// The value of `key` in the first `TM-CHECK` line that has it.
    fn value(&self, key: &str) -> Option<&str> {
        self.log
            .lines()
            .filter(|l| l.starts_with("TM-CHECK "))
            .flat_map(|l| l.split_whitespace())
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    fn number(&self, key: &str) -> u64 {
        let v = self.value(key);
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number TM-CHECK {key}= in the console (got {v:?})"))
    }

    fn has(&self, text: &str) -> bool {
        self.log.contains(text)
    }
}

/// How many VMs may run at once across the tests: `TIERMALLOC_VM_SLOTS` if set, else 2 on a
/// machine of 2 cores or more, else 1. Each VM takes about one core under TCG: two at once took
/// the suite from 105 s to 54 s on an idle 2-core machine. On a loaded machine two at once are
/// no slower in all than one after the other (the same CPU work, shared), and the VM limits are
/// counted in CPU time (`VM_CPU_LIMIT`), so a VM that gets a small share of the cores is not
/// stopped for it. (The 1-minute load average, which chose 1 here before, is above the core
/// count right after `cargo test` has compiled, so a fresh clone's suite always ran one VM at
/// a time.) A test that boots a pair takes two slots (or the one there is: its pair always
/// runs at once).
fn vm_slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| {
        if let Some(n) = std::env::var("TIERMALLOC_VM_SLOTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n >= 1)
        {
            return n;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.min(2)
    })
}

/// Waits until `n` VM slots are free and takes them; they are given back on drop.
struct VmSlots(usize);

/// Slots taken so far, and the signal that some were given back.
static TAKEN_SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl VmSlots {
    fn take(n: usize) -> VmSlots {
        let n = n.min(vm_slots());
        let (taken, given_back) = &TAKEN_SLOTS;
        let mut taken = taken.lock().unwrap_or_else(|e| e.into_inner());
        while *taken + n > vm_slots() {
            taken = given_back.wait(taken).unwrap_or_else(|e| e.into_inner());
        }
        *taken += n;
        VmSlots(n)
    }
}

impl Drop for VmSlots {
    fn drop(&mut self) {
        let (taken, given_back) = &TAKEN_SLOTS;
        *taken.lock().unwrap_or_else(|e| e.into_inner()) -= self.0;
        given_back.notify_all();
    }
}

/// Boots `vms` at once, waits for all, and checks that each guest script passed.
fn run_all(boot: &Boot, vms: &[Vm]) -> Vec<Console> {
    let logs = work_dir().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let slots = VmSlots::take(vms.len());
    let started = Instant::now();
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| {
                let cmd = vm.command(boot);
                s.spawn(move || run_with_limits(cmd, None, VM_WALL_LIMIT, Some(VM_CPU_LIMIT)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(slots);
    let mut consoles = Vec::new();
    let mut failures = Vec::new();
    for (vm, output) in vms.iter().zip(outputs) {
        let log = match output {
            Ok(out) => {
                String::from_utf8_lossy(&out.stdout).replace('\r', "")
                    + &String::from_utf8_lossy(&out.stderr)
            }
            Err(timeout) => format!("VM timed out or could not start:\n{timeout}"),
        };
        let path = logs.join(format!("{}.log", vm.log_name));
        fs::write(&path, &log).unwrap();
        println!("--- {} ({}):", vm.log_name, path.display());
        for line in log.lines().filter(|l| l.starts_with("TM-")) {
            println!("{line}");
        }
        if !log.contains(&format!("TM-RESULT PASS {}", vm.script)) {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            failures.push(format!(
                "VM {} failed; its console's last lines ({}):\n{tail}",
                vm.log_name,
                path.display()
            ));
        }
        consoles.push(Console { log });
    }
    println!("({} VM(s), {:.0?})", vms.len(), started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    consoles
}

/// The tier's capacity is the device's `bytes`, found without `size=`, less at most 64 KiB of
/// the tier's own (a persistent tier's superblock).
fn assert_whole_device(console: &Console, bytes: u64) {
    let capacity = console.number("capacity");
    assert_eq!(console.number("device"), bytes);
    assert!(
        capacity <= bytes && bytes - capacity <= 64 << 10,
        "tier capacity {capacity}, device {bytes}"
    );
}

fn run(boot: &Boot, vm: Vm) -> Console {
    run_all(boot, &[vm]).pop().unwrap()
}

std::thread_local! {
    /// The device files this test's VMs used, removed when it passes (kept for a look when
    /// it fails).
    static DEVICE_FILES: std::cell::RefCell<Vec<PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A scratch file (sparse, zeroes) for a VM's device memory, under this worktree's target/.
fn device_file(name: &str, len: u64) -> PathBuf {
    let path = work_dir().join("devices").join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
    DEVICE_FILES.with(|files| files.borrow_mut().push(path.clone()));
    path
}

/// QEMU arguments for an NVMe controller with a 64 MiB CMB and a 16 MiB PMR kept in `pmr`.
fn nvme_devices(name: &str, pmr: &Path) -> Vec<String> {
    let disk = device_file(&format!("{name}-disk.img"), 16 << 20);
    vec![
        "-drive".into(),
        format!("file={},if=none,id=nvm0,format=raw", disk.display()),
        "-object".into(),
        format!(
            "memory-backend-file,id=pmr0,share=on,mem-path={},size=16M",
            pmr.display()
        ),
        "-device".into(),
        "nvme,serial=tm01,drive=nvm0,cmb_size_mb=64,pmrdev=pmr0".into(),
    ]
}

fn nvme_vm<'a>(script: &'a str, log_name: &'a str, cmdline: &'a str, pmr: &Path) -> Vm<'a> {
    Vm {
        script,
        log_name,
        modules: "nvme",
        cmdline,
        machine: "q35",
        memory: "512M",
        devices: nvme_devices(log_name, pmr),
    }
}

#[test]
fn vm_nvme_cmb_serves_the_contract_and_bad_bars_are_refused() {
    with_vms("vm_nvme_cmb", |boot| {
        let pmr = device_file("cmb-pmr.img", 16 << 20);
        let c = run(boot, nvme_vm("nvme_cmb", "nvme_cmb", "iomem=relaxed", &pmr));
        // The tier's capacity is the whole 64 MiB BAR, found without size=.
        assert_eq!(c.number("cmb_bar_bytes"), 64 << 20);
        assert_whole_device(&c, 64 << 20);
        assert!(c.number("filled_bytes") > 32 << 20, "the fill used the CMB");
        assert!(c.has("TM-REFUSED register_bar") && c.has("TM-REFUSED pmr_on_cmb"));
        // tiermalloc set CMBMSC.CRE: CMBSZ went from 0 to the CMB's size, CMBLOC.BIR = 2.
        assert_eq!(c.number("cmbsz_before"), 0);
        assert_ne!(c.number("cmbsz_after"), 0);
        assert_eq!(c.number("cmbloc") & 7, 2);
        // malloc + free on the CMB under lackey, steady pattern: nothing read, headers only
        // written (one 16-byte store per malloc, at most one per free), as device_touches.rs
        // on a file.
        if c.value("touches") == Some("no-valgrind") {
            println!("vm: device touches not counted: no valgrind on the host to copy");
        } else {
            let pairs = c.number("pairs");
            assert_eq!(c.number("touch_loads"), 0, "malloc/free read the CMB");
            let stores = c.number("touch_stores");
            assert!(
                (16 * pairs..=32 * pairs).contains(&stores),
                "{stores} bytes written"
            );
            assert!(c.number("touch_store_ops") <= 2 * pairs);
        }
    });
}

#[test]
fn vm_nvme_bar_under_bound_driver_is_refused_until_unbound() {
    with_vms("vm_nvme_bound", |boot| {
        let pmr = device_file("bound-pmr.img", 16 << 20);
        let c = run(boot, nvme_vm("nvme_bound", "nvme_bound", "", &pmr));
        assert!(c.has("TM-REFUSED cmb_bound") && c.has("TM-REFUSED pmr_bound"));
        assert_whole_device(&c, 64 << 20);
    });
}

/// The proof pattern of `tm_vm write`, byte `i`.
fn proof_byte(i: usize) -> u8 {
    b"tiermalloc-proof:"[i % 17] ^ (i >> 12) as u8
}

/// The offset of the header of an allocated block (magic "TMHB", state 1) whose first `len`
/// bytes are the proof, in a host-side copy of device memory.
fn find_proof(device: &[u8], len: usize) -> Option<usize> {
    (0..=device.len().saturating_sub(16 + len))
        .step_by(16)
        .find(|&at| {
            let header = &device[at..at + 16];
            let size = u64::from_le_bytes(header[..8].try_into().unwrap());
            &header[8..12] == b"TMHB"
                && u16::from_le_bytes([header[14], header[15]]) == 1
                && size >= len as u64
                && (0..len).all(|i| device[at + 16 + i] == proof_byte(i))
        })
}

/// The blocks of c-tests/persist.c's write cycle in a host-side copy of device memory: each an
/// allocated block (header magic "TMHB", state 1) holding `{next, index, fill[200]}` with every
/// fill byte `index & 0xff`. Returns how many of the indices 0..200 were found.
fn persist_nodes(device: &[u8]) -> usize {
    let mut seen = [false; 200];
    for at in (0..=device.len().saturating_sub(16 + 216)).step_by(16) {
        let header = &device[at..at + 16];
        if &header[8..12] != b"TMHB" || u16::from_le_bytes([header[14], header[15]]) != 1 {
            continue;
        }
        let node = &device[at + 16..at + 16 + 216];
        let index = u64::from_le_bytes(node[8..16].try_into().unwrap());
        if index < 200 && node[16..].iter().all(|&b| b == index as u8) {
            seen[index as usize] = true;
        }
    }
    seen.iter().filter(|&&s| s).count()
}

#[test]
fn vm_nvme_pmr_is_enabled_and_keeps_its_bytes_across_power_off() {
    with_vms("vm_nvme_pmr", |boot| {
        let pmr = device_file("pmr.img", 16 << 20);
        let first = run(
            boot,
            nvme_vm("nvme_pmr_write", "nvme_pmr_write", "iomem=relaxed", &pmr),
        );
        assert_eq!(first.number("pmr_bar_bytes"), 16 << 20);
        assert_eq!(first.number("pmrctl_at_boot"), 0, "Linux left the PMR on?");
        assert_whole_device(&first, 16 << 20);
        assert_eq!(first.number("pmrctl_after"), 1, "tiermalloc set PMRCTL.EN");
        assert_eq!(
            first.number("pmrsts_after") & (1 << 8),
            0,
            "PMRSTS.NRDY clear"
        );
        assert_eq!(first.value("persist_write"), Some("ok"));

        // The VM is off: the blocks are in the host's PMR file.
        let nodes = persist_nodes(&fs::read(&pmr).unwrap());
        println!(
            "host: pmr.img holds {nodes} of the 200 blocks of the write cycle (TMHB headers, \
             contents)"
        );
        assert_eq!(nodes, 200);

        let second = run(
            boot,
            nvme_vm("nvme_pmr_read", "nvme_pmr_read", "iomem=relaxed", &pmr),
        );
        assert_eq!(second.number("pmrctl_at_boot"), 0);
        assert_eq!(
            second.number("headers_while_off"),
            0,
            "a disabled PMR reads 0, so no header is visible before the tier opens"
        );
        assert_eq!(second.value("persist_verify"), Some("ok"));
        assert!(second.number("headers_after_enable") >= 200);
    });
}

/// QEMU arguments for a CXL type-3 device of 256 MiB kept in `memory`, behind a host bridge
/// with two root ports (with one, Linux 6.1 programs a pass-through decoder that QEMU 7.2 does
/// not commit, and the memory reads 0).
fn cxl_devices(memory: &Path, labels: &Path) -> Vec<String> {
    [
        format!(
            "memory-backend-file,id=cxl-mem0,share=on,mem-path={},size=256M",
            memory.display()
        ),
        format!(
            "memory-backend-file,id=cxl-lsa0,share=on,mem-path={},size=1M",
            labels.display()
        ),
    ]
    .into_iter()
    .flat_map(|o| ["-object".to_string(), o])
    .chain(
        [
            "pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.1",
            "cxl-rp,port=0,bus=cxl.1,id=root_port13,chassis=0,slot=2",
            "cxl-type3,bus=root_port13,memdev=cxl-mem0,lsa=cxl-lsa0,id=cxl-pmem0",
            "cxl-rp,port=1,bus=cxl.1,id=root_port14,chassis=0,slot=3",
        ]
        .into_iter()
        .flat_map(|d| ["-device".to_string(), d.to_string()]),
    )
    .chain([
        "-M".into(),
        "cxl-fmw.0.targets.0=cxl.1,cxl-fmw.0.size=4G".into(),
    ])
    .collect()
}

fn cxl_vm<'a>(script: &'a str, memory: &Path, labels: &Path) -> Vm<'a> {
    Vm {
        script,
        log_name: script,
        modules: "cxl_acpi,cxl_pci,cxl_mem,cxl_pmem,nd_pmem,dax_pmem,device_dax,kmem",
        cmdline: "",
        machine: "q35,cxl=on",
        memory: "1G,maxmem=4G,slots=4",
        devices: cxl_devices(memory, labels),
    }
}

#[test]
fn vm_cxl_devdax_serves_the_contract_keeps_its_bytes_and_onlines_as_numa_node() {
    with_vms("vm_cxl", |boot| {
        let memory = device_file("cxl.img", 256 << 20);
        let labels = device_file("cxl-lsa.img", 1 << 20);
        let first = run(boot, cxl_vm("cxl_devdax", &memory, &labels));
        let dax = first.number("dax_bytes");
        assert_eq!(first.number("dax_align"), 2 << 20);
        assert!(
            dax > 200 << 20 && dax % (2 << 20) == 0,
            "dax0.0 is {dax} bytes"
        );
        assert_whole_device(&first, dax);
        assert!(first.number("filled_bytes") > dax / 2);
        assert!(first.has("TM-REFUSED dax_misaligned"));
        assert_eq!(first.number("root_wrote"), 1 << 20);
        let on_host = find_proof(&fs::read(&memory).unwrap(), 1 << 20);
        println!("host: cxl.img holds the proof's header (TMHB) at offset {on_host:?}");
        assert!(on_host.is_some(), "the proof is not in the host's cxl.img");

        let second = run(boot, cxl_vm("cxl_restart", &memory, &labels));
        assert_eq!(second.number("dax_bytes"), dax, "same geometry");
        let found = second.value("after_restart").unwrap_or("-1");
        assert_ne!(found, "-1", "the proof did not survive the restart");
        assert_eq!(
            second.number("root_found_bytes"),
            1 << 20,
            "the root did not lead to it"
        );
        assert_eq!(second.number("root_offset"), first.number("root_offset"));
        assert!(
            second.number("node1_mem_kb") > 100 << 10,
            "node 1 has the CXL memory"
        );
        let pages = second.number("pages");
        assert_eq!(second.number("on_node_1"), pages);
        assert!(pages >= 8000, "{pages} pages checked");
    });
}

/// A `numa=` tier moved between NUMA nodes in place (`tm_evacuate(TM_CXL, "numa=1")`, which
/// uses `move_pages`): a VM with two nodes of 256 MiB each (QEMU `-numa`, one memory backend
/// per node), a numa=0 tier of 2 000 blocks whose pages are all on node 0, two threads
/// counting in every block during the move; afterwards move_pages' status query finds every
/// page on node 1, and every count and pattern is exact.
#[test]
fn vm_numa_tier_moves_to_the_other_node_with_move_pages() {
    with_vms("vm_numa", |boot| {
        let mut devices = Vec::new();
        for node in 0..2 {
            devices.extend([
                "-object".to_string(),
                format!("memory-backend-ram,id=node{node},size=256M"),
                "-numa".to_string(),
                format!("node,nodeid={node},memdev=node{node}"),
            ]);
        }
        let console = run(
            boot,
            Vm {
                script: "numa_evacuate",
                log_name: "numa_evacuate",
                modules: "",
                cmdline: "",
                machine: "q35",
                memory: "512M",
                devices,
            },
        );
        assert_eq!(console.number("nodes"), 2);
        let pages = console.number("numa_pages");
        assert!(pages > 2000, "{pages} pages checked");
        assert_eq!(console.number("before_on_from"), pages);
        assert_eq!(console.number("after_on_to"), pages);
        assert_eq!(console.number("lost_counts"), 0);
        assert_eq!(console.number("broken_patterns"), 0);
        assert!(console.number("rounds") > 0);
    });
}

/// Two hosts on one device: two VMs, each given the same 16 MiB host file as an ivshmem-plain
/// BAR (two kernels, no shared lock, futex or pid space). A holds a cxl tier on the BAR's first
/// 8 MiB and writes a proof into a block; B sees A's bytes through its own mapping, then opens
/// the same tier while A holds it.
///
/// The device is shared (B finds A's proof at the offset A's tier put it), and the tier's
/// exclusive use is enforced across hosts: the host-local file lock (`F_OFD_SETLK`) lives in
/// each host's kernel and does not see the other, but the owner record in the region's
/// superblock does (`device::persist::owner`: claimed with a compare-and-swap in device memory,
/// kept alive by A's heartbeat). B's open is refused with one line naming A's pid and host, B
/// runs on without the tier, and A's proof stays intact. On real hardware the
/// compare-and-swap needs memory coherent between hosts (CXL 3 shared memory); QEMU gives it,
/// both VMs being one host's processes.
/// Two VMs (roles a and b of guest script `script`) given the same 16 MiB host file `shared` as
/// an ivshmem-plain BAR, booted at once.
fn two_hosts(boot: &Boot, script: &str, shared: &Path) -> Vec<Console> {
    let vm = |log_name, cmdline| Vm {
        script,
        log_name,
        modules: "",
        cmdline,
        machine: "q35",
        memory: "512M",
        devices: vec![
            "-object".to_string(),
            format!(
                "memory-backend-file,id=shm0,share=on,mem-path={},size=16M",
                shared.display()
            ),
            "-device".into(),
            "ivshmem-plain,memdev=shm0".into(),
        ],
    };
    let (a, b) = (format!("{script}_a"), format!("{script}_b"));
    run_all(boot, &[vm(&a, "tm.role=a"), vm(&b, "tm.role=b")])
}

#[test]
fn vm_two_hosts_share_one_device_and_the_second_host_is_refused_the_tier() {
    with_vms("vm_two_hosts", |boot| {
        let shared = device_file("shared.img", 16 << 20);
        let both = two_hosts(boot, "two_hosts", &shared);
        let (a, b) = (&both[0], &both[1]);
        assert_eq!(a.number("shared_bar_bytes"), 16 << 20);
        assert_eq!(b.number("b_saw_a_hold"), 1, "B saw A's mailbox word");
        assert_eq!(b.number("b_saw_a_beat"), 1, "B saw A's heartbeat change");
        let proof_at = b.value("b_sees_a_proof_at").unwrap();
        assert_ne!(
            proof_at, "-1",
            "B does not see A's proof: the device is not shared"
        );
        assert_eq!(a.number("a_saw_b"), 1);
        assert_eq!(
            b.number("b_tier_open"),
            0,
            "B's tier opened while A held it: exclusivity is not enforced across hosts"
        );
        assert!(
            b.has("owns it (its owner record"),
            "B's refusal does not name the owner"
        );
        assert_eq!(a.number("a_proof_intact"), 1, "B wrote into A's block");
        println!(
            "two hosts: device shared (B read A's 1 MiB proof at offset {proof_at}); B's open of \
             the tier A holds refused by the owner record in device memory; A's proof intact"
        );
    });
}

/// The guest's program, statically linked, on the host (no QEMU needed): a static link opens
/// the tiers (it did not, until the C entry points kept a reference to the start hook) and a
/// cxl tier on a file passes the contract the VMs run on real devices.
#[test]
fn static_link_opens_tiers_and_keeps_the_contract() {
    let programs = match guest_programs() {
        Ok(p) => p,
        Err(why) => {
            let _ = std::io::stderr()
                .write_all(format!("vm: SKIPPED — static link: {why}\n").as_bytes());
            return;
        }
    };
    let backing = format!("/dev/shm/tiermalloc-vm-static-{}", std::process::id());
    let mut cmd = Command::new(programs.join("tm_vm"));
    cmd.env_clear()
        .envs(support::scrubbed_env(&support::Scrub {
            prefixes: &[],
            keep: &[],
            exact: &[],
        }))
        .env(
            "TIERMALLOC_TIERS",
            format!("dram;cxl:path={backing},size=8M,create"),
        )
        .args(["contract", "cxl", &backing, &(8u64 << 20).to_string()]);
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
    let _ = fs::remove_file(&backing);
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("device=8388608"), "{stdout}");
}

/// Two hosts through the shared pool on one device (two VMs, one host file as their BAR): A
/// publishes a 1 MiB space, B opens it (PRIVATE), reads it, changes its first page and
/// republishes it under another name, and A reads B's space — B's change over A's bytes — while
/// A's own space is unchanged.
#[test]
fn vm_two_hosts_publish_open_and_republish_a_pool_space() {
    with_vms("vm_two_hosts_pool", |boot| {
        let shared = device_file("pool.img", 16 << 20);
        let both = two_hosts(boot, "two_hosts_pool", &shared);
        let (a, b) = (&both[0], &both[1]);
        assert_eq!(a.number("a_published"), 1 << 20);
        assert_eq!(b.number("b_read_a_space"), 1 << 20, "B read A's space");
        assert_eq!(b.number("b_republished"), 1);
        assert_eq!(
            a.number("a_reads_b_republished"),
            1 << 20,
            "A read B's space"
        );
        assert_eq!(
            a.number("a_space_unchanged"),
            1 << 20,
            "B's PRIVATE change reached A's space"
        );
    });
}
