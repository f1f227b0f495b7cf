//! NVMe controller memory as a tier: the CMB (controller memory buffer, volatile) and the PMR
//! (persistent memory region) are PCI BARs, mapped through their sysfs files
//! `/sys/bus/pci/devices/BDF/resourceN` (or `resourceN_wc`, the write-combining twin). Before
//! either can be used the controller must be told so through its registers (BAR 0,
//! `resource0`): this module owns that conversation and nothing else.
//!
//! - CMB: CMBLOC and CMBSZ read 0 until CMBMSC.CRE is set; once set, CMBLOC.BIR must name the
//!   BAR we were given, and the CMB occupies `[CMBLOC.OFST, + CMBSZ)` of it. A CMB the nvme
//!   driver uses for its own queues (Linux allocates submission queues there through p2pmem)
//!   is refused: our blocks would overwrite its commands.
//! - PMR: reads return 0 and writes vanish while PMRCTL.EN is 0, and Linux never sets it. We
//!   set it and wait until PMRSTS.NRDY clears (bounded by PMRCAP.PMRTO). The persistence
//!   barrier is what PMRCAP.PMRWBM names: a read of PMRSTS (bit 1, what QEMU offers) or a read
//!   of the PMR itself (bit 0).
//!
//! Nothing here runs on a malloc path: it runs once when a tier is opened. Register offsets
//! and bit numbers are those of the NVMe base specification 2.0 (section 3.1.4).

use super::{read_sysfs_number, Barrier, Fd, PathBuf, Problem};
use crate::kind::Kind;
use crate::os;
use core::ffi::CStr;

/// Controller capabilities (64-bit). Bit 57: CMB supported; bit 56: PMR supported.
const CAP: usize = 0x00;
const CAP_CMBS: u64 = 1 << 57;
const CAP_PMRS: u64 = 1 << 56;
/// CMB location: bits 2:0 BIR, bits 31:12 offset in units of CMBSZ.SZU.
const CMBLOC: usize = 0x38;
/// CMB size: bits 11:8 SZU (4 KiB * 16^SZU), bits 31:12 SZ (in units of SZU).
const CMBSZ: usize = 0x3c;
/// CMB memory space control (64-bit); bit 0 CRE: CMBLOC/CMBSZ report the CMB.
const CMBMSC: usize = 0x50;
/// PMR capabilities: bits 7:5 BIR, bits 9:8 PMRTU (timeout unit: 0 = 500 ms, 1 = minutes),
/// bits 13:10 PMRWBM (write barrier mechanisms), bits 23:16 PMRTO (timeout in PMRTU).
const PMRCAP: usize = 0xe00;
/// PMR control: bit 0 EN.
const PMRCTL: usize = 0xe04;
/// PMR status: bit 8 NRDY (not ready), bits 11:9 HSTS (health: 0 = normal).
const PMRSTS: usize = 0xe08;
/// The register page we map: every register above lies in it.
const REGISTERS_LEN: usize = 4096;

/// What a BAR file turned out to be.
pub(super) enum Bar {
    /// Not an NVMe controller's BAR (another device, or not a sysfs `resourceN` file):
    /// mapped like any file.
    NotNvme,
    /// The controller's CMB: usable bytes `[offset, offset + len)` of the BAR.
    Cmb { offset: u64, len: u64 },
    /// The controller's PMR, enabled; its registers stay mapped at `registers` for the
    /// barrier.
    Pmr { barrier: Barrier, registers: usize },
}

/// `/sys/.../BDF/resourceN[_wc]` → (`/sys/.../BDF`, N).
fn split_bar_path(path: &[u8]) -> Option<(&[u8], u32)> {
    let slash = path.iter().rposition(|&b| b == b'/')?;
    let name = &path[slash + 1..];
    let rest = name.strip_prefix(b"resource")?;
    let rest = rest.strip_suffix(b"_wc").unwrap_or(rest);
    if rest.is_empty() || rest.len() > 1 || !rest[0].is_ascii_digit() {
        return None;
    }
    Some((&path[..slash], (rest[0] - b'0') as u32))
}

/// Whether `path` names a PCI BAR file in sysfs (`.../resourceN` or `.../resourceN_wc`).
pub(super) fn is_bar_path(path: &CStr) -> bool {
    split_bar_path(path.to_bytes()).is_some()
}

/// Sets up the controller whose BAR `path` is, when it is an NVMe controller's, for a tier of
/// `kind`: a `pmr` tier must be the PMR (a CMB is volatile: what it holds is gone at power-off).
pub(super) fn prepare(path: &CStr, kind: Kind) -> Result<Bar, Problem> {
    let Some((device_dir, bar)) = split_bar_path(path.to_bytes()) else {
        return Ok(Bar::NotNvme);
    };
    let mut buf = PathBuf::new();
    let class = read_sysfs_number(buf.build(&[device_dir, b"/class"])).unwrap_or(0);
    // PCI class 01h (mass storage), subclass 08h (non-volatile memory controller).
    if class >> 8 != 0x0108 {
        return Ok(Bar::NotNvme);
    }
    if bar == 0 {
        return Err(Problem::new(
            "is the NVMe controller's register BAR (resource0), not memory: use its CMB or PMR BAR",
        ));
    }
    let registers = Registers::map(buf.build(&[device_dir, b"/resource0"]))?;
    let cap = registers.read64(CAP);
    let pmrcap = registers.read32(PMRCAP);
    if cap & CAP_PMRS != 0 && (pmrcap >> 5) & 7 == bar {
        return enable_pmr(registers, pmrcap);
    }
    if cap & CAP_CMBS != 0 {
        let (offset, len) = enable_cmb(&registers, bar)?;
        if kind == Kind::Pmr {
            return Err(Problem::new(
                "is the NVMe CMB, which is volatile, not a PMR: use cmb: for it, or the PMR's BAR \
                 (PMRCAP.BIR)",
            ));
        }
        let p2p_size = read_sysfs_number(buf.build(&[device_dir, b"/p2pmem/size"]));
        let p2p_free = read_sysfs_number(buf.build(&[device_dir, b"/p2pmem/available"]));
        if let (Some(size), Some(free)) = (p2p_size, p2p_free) {
            if free < size {
                return Err(Problem::new(
                    "is a CMB the nvme driver uses for its queues (p2pmem allocated): load nvme \
                     with use_cmb_sqs=0 or unbind the driver",
                ));
            }
        }
        return Ok(Bar::Cmb { offset, len });
    }
    Err(Problem::new(
        "is neither the CMB nor the PMR of its NVMe controller (CMBLOC.BIR, PMRCAP.BIR)",
    ))
}

/// Sets CMBMSC.CRE when clear and reads where the CMB lies; it must be in BAR `bar`.
fn enable_cmb(registers: &Registers, bar: u32) -> Result<(u64, u64), Problem> {
    let msc = registers.read32(CMBMSC);
    if msc & 1 == 0 {
        registers.write32(CMBMSC, msc | 1);
    }
    let (loc, size) = (registers.read32(CMBLOC), registers.read32(CMBSZ));
    if size == 0 {
        return Err(Problem::new(
            "is an NVMe BAR whose controller reports no CMB (CMBSZ = 0 after CMBMSC.CRE)",
        ));
    }
    if loc & 7 != bar {
        return Err(Problem::new(
            "is not the BAR holding the NVMe CMB (CMBLOC.BIR names another)",
        ));
    }
    let unit = 4096u64 << (4 * ((size >> 8) & 0xf));
    Ok(((loc >> 12) as u64 * unit, (size >> 12) as u64 * unit))
}

/// Enables the PMR (PMRCTL.EN = 1) when off and waits for PMRSTS.NRDY to clear.
fn enable_pmr(registers: Registers, pmrcap: u32) -> Result<Bar, Problem> {
    if registers.read32(PMRCTL) & 1 == 0 {
        registers.write32(PMRCTL, 1);
        if registers.read32(PMRCTL) & 1 == 0 {
            return Err(Problem::new(
                "is an NVMe PMR that cannot be enabled (PMRCTL.EN does not stay set)",
            ));
        }
    }
    // PMRTO in units of PMRTU (0: 500 ms, 1: minutes); 0 means no time given: allow 1 s.
    let unit_ms: u64 = if (pmrcap >> 8) & 3 == 1 { 60_000 } else { 500 };
    let timeout_ms = (((pmrcap >> 16) & 0xff) as u64 * unit_ms).max(1000);
    let start = os::coarse_now_ns();
    let mut status = registers.read32(PMRSTS);
    while status & (1 << 8) != 0 {
        if os::coarse_now_ns() - start > timeout_ms * 1_000_000 {
            return Err(Problem::new(
                "is an NVMe PMR that did not become ready after PMRCTL.EN = 1 (PMRSTS.NRDY stays \
                 set)",
            ));
        }
        // SAFETY: sleeping has no preconditions.
        unsafe { libc::usleep(1000) };
        status = registers.read32(PMRSTS);
    }
    if (status >> 9) & 7 != 0 {
        return Err(Problem::new(
            "is an NVMe PMR whose health status is not normal (PMRSTS.HSTS)",
        ));
    }
    let write_barrier = (pmrcap >> 10) & 0xf;
    let barrier = if write_barrier & 2 != 0 {
        Barrier::ReadRegister(registers.base + PMRSTS)
    } else {
        Barrier::ReadRegion
    };
    let base = registers.base;
    core::mem::forget(registers);
    Ok(Bar::Pmr {
        barrier,
        registers: base,
    })
}

/// The controller's register page, mapped from `resource0`; unmapped when dropped.
struct Registers {
    base: usize,
}

impl Registers {
    fn map(path: &CStr) -> Result<Registers, Problem> {
        // SAFETY: `path` is NUL-terminated.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Problem::os(
                "is an NVMe BAR, but its controller's registers (resource0) cannot be opened",
            ));
        }
        let fd = Fd(fd);
        // SAFETY: a fresh shared mapping of our descriptor; no address is imposed.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                REGISTERS_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.0,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Problem::os(if os::errno() == libc::EINVAL {
                "is an NVMe BAR whose registers cannot be mapped while the nvme driver owns them: \
                 boot with iomem=relaxed or unbind the driver"
            } else {
                "is an NVMe BAR, but its controller's registers (resource0) cannot be mapped"
            }));
        }
        Ok(Registers { base: p as usize })
    }

    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is one of the register offsets above, 4-aligned, inside the page.
        unsafe { ((self.base + offset) as *const u32).read_volatile() }
    }

    fn read64(&self, offset: usize) -> u64 {
        self.read32(offset) as u64 | (self.read32(offset + 4) as u64) << 32
    }

    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`; the register page is mapped writable.
        unsafe { ((self.base + offset) as *mut u32).write_volatile(value) }
    }
}

impl Drop for Registers {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used.
        unsafe { os::unmap(self.base as *mut u8, REGISTERS_LEN) };
    }
}

/// Unmaps the register page a PMR region kept for its barrier.
pub(super) fn release_registers(base: usize) {
    drop(Registers { base });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_paths_split_into_device_and_number() {
        let dev = b"/sys/bus/pci/devices/0000:00:03.0";
        assert_eq!(
            split_bar_path(b"/sys/bus/pci/devices/0000:00:03.0/resource2"),
            Some((&dev[..], 2))
        );
        assert_eq!(
            split_bar_path(b"/sys/bus/pci/devices/0000:00:03.0/resource4_wc"),
            Some((&dev[..], 4))
        );
        assert_eq!(split_bar_path(b"/sys/bus/pci/devices/x/resource"), None);
        assert_eq!(split_bar_path(b"/sys/bus/pci/devices/x/resource12"), None);
        assert_eq!(split_bar_path(b"/dev/shm/resource2x"), None);
        assert_eq!(split_bar_path(b"/dev/dax0.0"), None);
    }

    /// A register page of ordinary memory holding `pmrcap` and `pmrsts`.
    fn fake_registers(pmrcap: u32, pmrsts: u32) -> Registers {
        let page = os::map_anonymous(REGISTERS_LEN).unwrap().as_ptr() as usize;
        let registers = Registers { base: page };
        registers.write32(PMRCAP, pmrcap);
        registers.write32(PMRSTS, pmrsts);
        registers
    }

    #[test]
    fn a_ready_pmr_is_enabled_with_the_barrier_its_pmrcap_names() {
        // BIR 4, PMRWBM bit 1: a read of PMRSTS is the barrier (what QEMU offers).
        let Ok(Bar::Pmr { barrier, registers }) =
            enable_pmr(fake_registers(4 << 5 | 2 << 10, 0), 4 << 5 | 2 << 10)
        else {
            panic!("not enabled")
        };
        assert_eq!(barrier, Barrier::ReadRegister(registers + PMRSTS));
        let kept = Registers { base: registers };
        assert_eq!(kept.read32(PMRCTL), 1, "PMRCTL.EN set");
        drop(kept);
        // PMRWBM bit 0 only: a read of the PMR itself.
        let Ok(Bar::Pmr { barrier, registers }) = enable_pmr(fake_registers(1 << 10, 0), 1 << 10)
        else {
            panic!("not enabled")
        };
        assert_eq!(barrier, Barrier::ReadRegion);
        release_registers(registers);
    }

    #[test]
    fn a_pmr_that_stays_not_ready_or_unhealthy_is_refused() {
        let stuck = enable_pmr(fake_registers(2 << 10, 1 << 8), 2 << 10);
        let problem = stuck
            .err()
            .expect("a PMR whose NRDY stays set was accepted");
        assert!(problem.what.contains("did not become ready"), "{problem:?}");
        let unhealthy = enable_pmr(fake_registers(2 << 10, 2 << 9), 2 << 10);
        let problem = unhealthy.err().expect("an unhealthy PMR was accepted");
        assert!(problem.what.contains("health"), "{problem:?}");
    }

    #[test]
    fn a_file_that_is_not_a_pci_bar_is_not_nvme() {
        let path = c"/dev/shm/tiermalloc-nvme-test-resource2";
        assert!(matches!(prepare(path, Kind::Pmr), Ok(Bar::NotNvme)));
    }
}
