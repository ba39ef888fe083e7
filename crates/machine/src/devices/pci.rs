//! The PCI host: configuration mechanism #1 at ports 0xCF8-0xCFF (PCI Local Bus
//! Specification 3.0, §3.2.2.3.2), the PIIX reset control register at 0xCF9, and the
//! configuration space of the three chipset functions on bus 0:
//!
//! - 00:00.0, the Intel 82441FX (i440FX) host bridge: PAM0-PAM6 (59h-5Fh) drive the
//!   shadow-RAM map through [`SystemControl::set_pam`]; SMRAM (72h) opens the RAM
//!   under 0xA0000-0xBFFFF when G_SMRAME and D_OPEN are set.
//! - 00:01.0, the Intel 82371SB (PIIX3) PCI-to-ISA bridge, multi-function; the
//!   PIRQ route control registers (60h-63h) are stored.
//! - 00:01.3, the Intel 82371AB (PIIX4) power-management function: PMBA (40h) and
//!   PMREGMISC (80h) place the ACPI PM I/O block, published through [`PmShared`] to
//!   [`crate::devices::acpi_pm::AcpiPm`]; DEVACTB (58h) and the SMBus base (90h) and
//!   host configuration (D2h) are stored.
//!
//! Mapped with base 0 over 0xCF8-0xCFF, so offsets are absolute ports.
//!
//! Invariants:
//! - CONFIG_ADDRESS is taken only by a dword write to 0xCF8 and read back only by a
//!   dword read; bits 30:24 and 1:0 read 0. Byte and word accesses to 0xCF8-0xCFB
//!   pass through as ordinary I/O cycles, which nothing here claims (reads 0xFF),
//!   except a byte access to 0xCF9, the PIIX reset control register (RC).
//! - CONFIG_DATA (0xCFC-0xCFF) reaches configuration space only while
//!   CONFIG_ADDRESS bit 31 is set; each byte lane `n` addresses register
//!   `(CONFIG_ADDRESS[7:2] << 2) + n`. A function that does not exist, or any bus
//!   but 0, reads all ones and drops writes (a master abort).
//! - Every function's configuration space is a 256-byte image with a per-byte mask of
//!   writable bits and a per-byte mask of write-1-to-clear bits; registers this
//!   model does not list read as their reset value (mostly 0) and ignore writes.
//!   Writes are applied byte by byte, so a dword write spanning several registers
//!   (SeaBIOS writes PAM as dwords at 58h and 5Ch) has each register's effect.
//! - All three functions have no BARs: 10h-27h and the expansion-ROM BAR (30h) read 0
//!   and ignore writes, which firmware sizing reads as "not implemented".
//! - RC bit 2 (RCPU) going from 0 to 1 while bit 1 (SRST) is set requests a hard
//!   reset. With SRST clear the PIIX would assert INIT (a soft reset); that is not
//!   modelled and the write is only stored.
//!
//! Deviation: DEVACTB (PIIX4 function 3, 58h) resets with APMC_EN (bit 25) set,
//! where the datasheet has 0. This machine has no SMM; SeaBIOS skips its SMM setup
//! when it finds APMC_EN already set, and would otherwise wait forever at port 0xB3
//! for an SMI handler that never runs.
//!
//! Not modelled: the i440FX DRAM row boundaries, error reporting and the rest of its
//! device-specific registers; PIIX3 functions 1 (IDE) and 2 (USB) and its other
//! device-specific registers (ISA clock, X-bus, top of memory, motherboard IRQ/DMA,
//! SMI control); PIIX4 function 3's device monitors, GPIO control and the SMBus I/O
//! block. SMRAM is stored but changes no memory map.
//!
//! Plugged-in functions (`-device edu`): an endpoint keeps its configuration
//! space in a [`PciEndpoint`] shared with its device. After each
//! configuration write the host compares the function's BAR placements with
//! what it mapped before and asks the machine to move the device's regions
//! (BAR i is region i); a placement onto another device's range is refused
//! by the bus (a guest error; the BAR stays unmapped). After a reset the old
//! placements are unmapped at the host's next access. The PIIX3's PIRQ route
//! control registers drive a [`PirqRouter`]: PIRQ n goes to the ISA IRQ its
//! register names (3-7, 9-12, 14, 15; bit 7 disables it); a function on
//! slot s with pin p (1 = INTA#) drives PIRQ (s - 1 + p - 1) mod 4, QEMU's
//! PIIX swizzle.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::device::{DevCtx, Device, IrqLines, MapRequest, Nanos, SystemControl};
use crate::devices::acpi_pm::{PmIo, PmShared};
use crate::devices::pci_endpoint::{BarKind, BarMapping, PciEndpoint};

/// The PIIX3's PCI interrupt router: four PIRQ lines, each routed to an ISA
/// IRQ by its PIRQRC register; several sources on one PIRQ are wired-OR.
pub struct PirqRouter {
    lines: Rc<IrqLines>,
    routes: Cell<[u8; 4]>,
    /// Asserting sources per PIRQ.
    asserted: Cell<[u8; 4]>,
    /// The ISA lines the router holds high.
    driven: Cell<u16>,
}

/// The ISA IRQs a PIRQ may be routed to (82371SB datasheet, PIRQRC).
const PIRQ_TARGETS: u16 = 0b1101_1110_1111_1000;

impl PirqRouter {
    /// A router over `lines`, every route disabled.
    pub fn new(lines: Rc<IrqLines>) -> Rc<Self> {
        Rc::new(Self {
            lines,
            routes: Cell::new([PIRQRC_RESET as u8; 4]),
            asserted: Cell::new([0; 4]),
            driven: Cell::new(0),
        })
    }

    fn set_routes(&self, routes: [u8; 4]) {
        self.routes.set(routes);
        self.update();
    }

    /// Sets the routes as PIRQRC A-D would (for tests of devices alone).
    #[doc(hidden)]
    pub fn route_for_test(&self, routes: [u8; 4]) {
        self.set_routes(routes);
    }

    fn update(&self) {
        let (routes, asserted) = (self.routes.get(), self.asserted.get());
        let mut want = 0u16;
        for i in 0..4 {
            let irq = routes[i] & 0xF;
            if asserted[i] > 0 && routes[i] & 0x80 == 0 && PIRQ_TARGETS & (1 << irq) != 0 {
                want |= 1 << irq;
            }
        }
        let driven = self.driven.get();
        for irq in 0..16u8 {
            let bit = 1u16 << irq;
            if (want ^ driven) & bit != 0 {
                self.lines.line(irq).set_level(want & bit != 0);
            }
        }
        self.driven.set(want);
    }

    /// The INTx line of a function on `slot` with interrupt pin `pin`.
    pub fn line(self: &Rc<Self>, slot: u8, pin: u8) -> PirqLine {
        PirqLine {
            router: Rc::clone(self),
            pirq: (slot.wrapping_sub(1).wrapping_add(pin.saturating_sub(1)) & 3) as usize,
            high: Rc::new(Cell::new(false)),
        }
    }
}

/// A function's INTx pin, wired to one PIRQ line of the router.
#[derive(Clone)]
pub struct PirqLine {
    router: Rc<PirqRouter>,
    pirq: usize,
    high: Rc<Cell<bool>>,
}

impl PirqLine {
    /// Whether the pin is asserted, for its device's snapshot (the router's
    /// count of asserted pins is the PCI host's).
    pub fn save(&self) -> bool {
        self.high.get()
    }

    /// Puts back what [`PirqLine::save`] returned, without touching the
    /// router (the PCI host restores the router's counts).
    pub fn restore(&self, high: bool) {
        self.high.set(high);
    }

    /// Asserts or deasserts the pin.
    pub fn set_level(&self, high: bool) {
        if self.high.replace(high) == high {
            return;
        }
        let mut a = self.router.asserted.get();
        a[self.pirq] = if high {
            a[self.pirq].saturating_add(1)
        } else {
            a[self.pirq].saturating_sub(1)
        };
        self.router.asserted.set(a);
        self.router.update();
    }

    /// Whether the pin is asserted.
    pub fn is_high(&self) -> bool {
        self.high.get()
    }
}

/// A function plugged into bus 0 by a device of the machine.
struct Plugged {
    slot: u8,
    function: u8,
    device: usize,
    config: Rc<RefCell<PciEndpoint>>,
    /// Where each BAR is mapped now.
    placed: [Option<BarMapping>; 6],
}

/// CONFIG_ADDRESS (PCI 3.0 §3.2.2.3.2), dword access only.
const CONFIG_ADDRESS: u16 = 0xCF8;
/// RC, the PIIX3/PIIX4 reset control register: a byte at 0xCF9, inside the lanes of
/// CONFIG_ADDRESS, claimed only for byte accesses.
const RESET_CONTROL: u16 = 0xCF9;
/// CONFIG_DATA, lane 0; lanes 1-3 follow.
const CONFIG_DATA: u16 = 0xCFC;
/// CONFIG_DATA, lane 3.
const CONFIG_DATA_LAST: u16 = 0xCFF;

/// CONFIG_ADDRESS bit 31: CONFIG_DATA accesses become configuration cycles.
const ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits that hold a value: 30:24 are reserved and 1:0 are read-only
/// 0 (PCI 3.0 §3.2.2.3.2).
const ADDRESS_STORED: u32 = 0x80FF_FFFC;

/// RC bit 1, SRST: 1 selects a hard reset, 0 a soft reset (INIT).
const RC_SYSTEM_RESET: u8 = 0x02;
/// RC bit 2, RCPU: a 0-to-1 transition starts the reset SRST selects.
const RC_RESET_CPU: u8 = 0x04;

// Type 0 configuration header (PCI 3.0 §6.1).
/// Vendor ID, 16-bit, read-only.
const VENDOR_ID: usize = 0x00;
/// Device ID, 16-bit, read-only.
const DEVICE_ID: usize = 0x02;
/// Command, 16-bit.
const COMMAND: usize = 0x04;
/// Status, 16-bit; the error bits are write-1-to-clear.
const STATUS: usize = 0x06;
/// Revision ID, 8-bit, read-only.
const REVISION_ID: usize = 0x08;
/// Class code: programming interface, sub-class, base class (24-bit, read-only).
const CLASS_CODE: usize = 0x09;
/// Header type, 8-bit, read-only; bit 7 marks a multi-function device.
const HEADER_TYPE: usize = 0x0E;
/// Interrupt line, 8-bit, a scratch register for the IRQ firmware routed.
const INTERRUPT_LINE: usize = 0x3C;
/// Interrupt pin, 8-bit, read-only: 0 none, 1-4 INTA#-INTD#.
const INTERRUPT_PIN: usize = 0x3D;

/// Command bits kept: I/O space (0), memory space (1), bus master (2), parity error
/// response (6), SERR# enable (8). The rest read 0.
const COMMAND_WRITABLE: u32 = 0x0147;
/// Status after reset on all three functions: DEVSEL# medium timing (bits 10:9 =
/// 01) and fast back-to-back capable (bit 7).
const STATUS_RESET: u32 = 0x0280;
/// Status error bits, write-1-to-clear (PCI 3.0 §6.2.3): parity (15), SERR# (14),
/// master abort (13), target abort received (12) and signalled (11), data parity
/// (8). Nothing here ever sets them.
const STATUS_WRITE_ONE_CLEAR: u32 = 0xF900;

/// 82441FX PAM0 (59h): bits 5:4 control 0F0000h-0FFFFFh; 3:0 and 7:6 reserved.
const PAM0: u8 = 0x59;
/// 82441FX PAM6 (5Fh); PAM1-PAM6 each control two 16 KiB segments of 0C0000h-0EFFFFh.
const PAM6: u8 = 0x5F;
/// Writable PAM0 bits.
const PAM0_WRITABLE: u32 = 0x30;
/// Writable PAM1-PAM6 bits: 5:4 for the upper segment, 1:0 for the lower.
const PAM_WRITABLE: u32 = 0x33;
/// 82441FX SMRAM (72h), the SMM space control register.
const SMRAM: u8 = 0x72;
/// SMRAM bit 6, D_OPEN: SMM space visible outside SMM.
const SMRAM_D_OPEN: u8 = 0x40;
/// SMRAM bit 5, D_CLS: data accesses in SMM go to the PCI bus.
const SMRAM_D_CLS: u8 = 0x20;
/// SMRAM bit 4, D_LCK: locks D_OPEN (forced 0), G_SMRAME and D_LCK until reset.
const SMRAM_D_LCK: u8 = 0x10;
/// SMRAM bit 3, G_SMRAME: SMRAM enabled.
const SMRAM_G_SMRAME: u8 = 0x08;
/// SMRAM bits 2:0, C_BASE_SEG: hard-wired 010b, SMM space at 0A0000h-0BFFFFh.
const SMRAM_C_BASE_SEG: u8 = 0x02;

/// PIIX3 PIRQRC[A:D] (60h-63h): bit 7 disables routing, bits 3:0 pick the ISA IRQ.
const PIRQRC: usize = 0x60;
/// PIRQRC reset value: routing disabled.
const PIRQRC_RESET: u32 = 0x80;
/// PIRQRC bits that exist; 6:4 are reserved.
const PIRQRC_WRITABLE: u32 = 0x8F;

/// PIIX4 function 3 PMBA (40h): bits 15:6 are the PM I/O base; bit 0 reads 1
/// (I/O space indicator).
const PMBA: u8 = 0x40;
/// PMBA's upper byte of the base.
const PMBA_HIGH: u8 = 0x41;
/// PMBA bits that hold the base.
const PMBA_WRITABLE: u32 = 0x0000_FFC0;
/// PIIX4 function 3 DEVACTB (58h), device activity B; bit 25 is APMC_EN.
const DEVACTB: usize = 0x58;
/// DEVACTB bit 25, APMC_EN: writes to the APM control port 0xB2 raise SMI#.
const DEVACTB_APMC_EN: u32 = 1 << 25;
/// PIIX4 function 3 PMREGMISC (80h): bit 0, PMIOSE, enables the PM I/O block.
const PMREGMISC: u8 = 0x80;
/// PMREGMISC bit 0.
const PMIOSE: u8 = 0x01;
/// PIIX4 function 3 SMBBA (90h): bits 15:4 are the SMBus I/O base; bit 0 reads 1.
const SMBBA: usize = 0x90;
/// SMBBA bits that hold the base.
const SMBBA_WRITABLE: u32 = 0x0000_FFF0;
/// PIIX4 function 3 SMBHSTCFG (D2h): bit 0 host enable, bits 3:1 interrupt select.
const SMBHSTCFG: usize = 0xD2;
/// SMBHSTCFG bits that exist.
const SMBHSTCFG_WRITABLE: u32 = 0x0F;

/// The functions that answer on bus 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Function {
    /// 00:00.0, 82441FX.
    HostBridge,
    /// 00:01.0, 82371SB function 0.
    IsaBridge,
    /// 00:01.3, 82371AB function 3.
    PowerManagement,
    /// A plugged-in function (index into the host's list).
    Endpoint(usize),
}

/// The read-only identity of a function.
struct Identity {
    vendor: u16,
    device: u16,
    revision: u8,
    class: u32,
    header_type: u8,
    command: u16,
    interrupt_pin: u8,
}

/// One function's 256-byte configuration space.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct ConfigSpace {
    #[serde(with = "crate::snapshot::byte_array")]
    data: [u8; 256],
    #[serde(with = "crate::snapshot::byte_array")]
    writable: [u8; 256],
    #[serde(with = "crate::snapshot::byte_array")]
    write_one_clear: [u8; 256],
}

impl ConfigSpace {
    /// A type 0 header with `id`; everything else reads 0 and is read-only.
    fn new(id: &Identity) -> Self {
        let mut space = Self {
            data: [0; 256],
            writable: [0; 256],
            write_one_clear: [0; 256],
        };
        space.define(VENDOR_ID, 2, id.vendor.into(), 0);
        space.define(DEVICE_ID, 2, id.device.into(), 0);
        space.define(COMMAND, 2, id.command.into(), COMMAND_WRITABLE);
        space.define(STATUS, 2, STATUS_RESET, 0);
        space.clear_on_one(STATUS, 2, STATUS_WRITE_ONE_CLEAR);
        space.define(REVISION_ID, 1, id.revision.into(), 0);
        space.define(CLASS_CODE, 3, id.class, 0);
        space.define(HEADER_TYPE, 1, id.header_type.into(), 0);
        space.define(INTERRUPT_LINE, 1, 0, 0xFF);
        space.define(INTERRUPT_PIN, 1, id.interrupt_pin.into(), 0);
        space
    }

    /// Sets `width` bytes at `offset` (a constant inside the space) to `reset`, with
    /// `writable` bits. Little-endian, like all of configuration space.
    fn define(&mut self, offset: usize, width: usize, reset: u32, writable: u32) {
        let bytes = reset.to_le_bytes().into_iter().zip(writable.to_le_bytes());
        for (i, (value, mask)) in (offset..).zip(bytes).take(width) {
            if let (Some(d), Some(w)) = (self.data.get_mut(i), self.writable.get_mut(i)) {
                *d = value;
                *w = mask;
            }
        }
    }

    /// Marks `bits` of the `width` bytes at `offset` write-1-to-clear.
    fn clear_on_one(&mut self, offset: usize, width: usize, bits: u32) {
        for (i, mask) in (offset..).zip(bits.to_le_bytes()).take(width) {
            if let Some(c) = self.write_one_clear.get_mut(i) {
                *c = mask;
            }
        }
    }

    fn read(&self, reg: u8) -> u8 {
        self.data[usize::from(reg)]
    }

    /// A guest write: writable bits take `value`, write-1-to-clear bits clear where
    /// `value` has a 1, the rest keep their value.
    fn write(&mut self, reg: u8, value: u8) {
        let i = usize::from(reg);
        let writable = self.writable[i];
        let merged = (self.data[i] & !writable) | (value & writable);
        self.data[i] = merged & !(value & self.write_one_clear[i]);
    }

    /// Sets a register regardless of its masks (for registers with their own rules).
    fn set(&mut self, reg: u8, value: u8) {
        self.data[usize::from(reg)] = value;
    }
}

/// 00:00.0 after reset (82441FX datasheet, host bridge configuration registers).
fn host_bridge() -> ConfigSpace {
    let mut space = ConfigSpace::new(&Identity {
        vendor: 0x8086,
        device: 0x1237,
        revision: 0x02,
        class: 0x06_00_00,
        header_type: 0x00,
        command: 0x0006,
        interrupt_pin: 0,
    });
    space.define(PAM0.into(), 1, 0, PAM0_WRITABLE);
    for reg in PAM0 + 1..=PAM6 {
        space.define(reg.into(), 1, 0, PAM_WRITABLE);
    }
    space.define(SMRAM.into(), 1, SMRAM_C_BASE_SEG.into(), 0);
    // Subsystem vendor/device 1af4:1100: the identity of QEMU's `pc` platform,
    // which this machine models; firmware built for QEMU (SeaBIOS) checks it
    // before it uses fw_cfg.
    space.define(0x2C, 2, 0x1AF4, 0);
    space.define(0x2E, 2, 0x1100, 0);
    space
}

/// 00:01.0 after reset (82371SB datasheet, PCI-to-ISA bridge configuration).
fn isa_bridge() -> ConfigSpace {
    let mut space = ConfigSpace::new(&Identity {
        vendor: 0x8086,
        device: 0x7000,
        revision: 0x00,
        class: 0x06_01_00,
        header_type: 0x80,
        command: 0x0007,
        interrupt_pin: 0,
    });
    for i in 0..4 {
        space.define(PIRQRC + i, 1, PIRQRC_RESET, PIRQRC_WRITABLE);
    }
    space
}

/// 00:01.3 after reset (82371AB datasheet, power management function
/// configuration), with the APMC_EN deviation described in the module docs.
fn power_management() -> ConfigSpace {
    let mut space = ConfigSpace::new(&Identity {
        vendor: 0x8086,
        device: 0x7113,
        revision: 0x03,
        class: 0x06_80_00,
        header_type: 0x00,
        command: 0x0000,
        interrupt_pin: 1,
    });
    space.define(PMBA.into(), 4, 0x0000_0001, PMBA_WRITABLE);
    space.define(DEVACTB, 4, DEVACTB_APMC_EN, u32::MAX);
    space.define(PMREGMISC.into(), 1, 0, PMIOSE.into());
    space.define(SMBBA, 4, 0x0000_0001, SMBBA_WRITABLE);
    space.define(SMBHSTCFG, 1, 0, SMBHSTCFG_WRITABLE);
    space
}

/// The PCI host bridge's configuration mechanism and the chipset functions behind
/// it.
pub struct PciHost {
    ctl: Rc<SystemControl>,
    pm: PmShared,
    /// CONFIG_ADDRESS, reserved bits already cleared.
    address: u32,
    /// RC at 0xCF9, SRST and RCPU as last written.
    reset_control: u8,
    host: ConfigSpace,
    isa: ConfigSpace,
    power: ConfigSpace,
    endpoints: Vec<Plugged>,
    pirq: Option<Rc<PirqRouter>>,
    /// Map requests for plugged-in devices, handed to the machine after the
    /// access that made them.
    pending: Vec<(usize, MapRequest)>,
    /// MSI-X messages a configuration write released (the function mask
    /// cleared over pending vectors).
    pending_msi: Vec<crate::device::Msi>,
}

/// The PCI host's saved state (see [`crate::snapshot`]): CONFIG_ADDRESS,
/// the reset control register, the chipset functions' configuration
/// spaces, where each plugged function's BARs are mapped, and the PIRQ
/// router. The plugged functions' configuration spaces are their devices'.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PciHostState {
    address: u32,
    reset_control: u8,
    host: ConfigSpace,
    isa: ConfigSpace,
    power: ConfigSpace,
    /// Per plugged function, in plug order: (slot, function, BAR mappings).
    placed: Vec<(u8, u8, [Option<BarMapping>; 6])>,
    /// The router's routes, asserted counts and driven lines.
    pirq: Option<([u8; 4], [u8; 4], u16)>,
    pending: Vec<(usize, MapRequest)>,
    pending_msi: Vec<crate::device::Msi>,
}

impl PciHost {
    /// The host in its power-on state. It drives the PAM registers of `ctl` and the
    /// PM I/O placement in `pm`, which it sets to their reset values.
    pub fn new(ctl: Rc<SystemControl>, pm: PmShared) -> Self {
        let host = Self {
            ctl,
            pm,
            address: 0,
            reset_control: 0,
            host: host_bridge(),
            isa: isa_bridge(),
            power: power_management(),
            endpoints: Vec::new(),
            pirq: None,
            pending: Vec::new(),
            pending_msi: Vec::new(),
        };
        host.publish_pam();
        host.publish_pm();
        host
    }

    /// Routes the PIIX3's PIRQ registers to `router`.
    pub fn with_pirq_router(mut self, router: Rc<PirqRouter>) -> Self {
        self.pirq = Some(router);
        self
    }

    /// Plugs a function into bus 0 at `slot` (function 0), whose
    /// configuration space `config` device `device` shares.
    pub fn plug(&mut self, slot: u8, device: usize, config: Rc<RefCell<PciEndpoint>>) {
        self.plug_function(slot, 0, device, config);
    }

    /// Plugs function `function` of `slot` (the PIIX3's IDE function is
    /// 1.1, beside the chipset's own 1.0 and 1.3).
    pub fn plug_function(
        &mut self,
        slot: u8,
        function: u8,
        device: usize,
        config: Rc<RefCell<PciEndpoint>>,
    ) {
        self.endpoints.push(Plugged {
            slot,
            function,
            device,
            config,
            placed: [None; 6],
        });
    }

    /// After a write to endpoint `i`: the BARs whose placement changed are
    /// moved (or unmapped).
    fn replace_bars(&mut self, i: usize) {
        let e = &mut self.endpoints[i];
        let cfg = e.config.borrow();
        for bar in cfg.bar_indices().collect::<Vec<_>>() {
            let now = cfg.bar_mapping(bar);
            if now == e.placed[bar] {
                continue;
            }
            let region = bar as u8;
            if let Some(old) = e.placed[bar] {
                let unmap = match old.kind {
                    BarKind::Io => MapRequest::UnmapPorts(region),
                    BarKind::Memory => MapRequest::UnmapMmio(region),
                };
                self.pending.push((e.device, unmap));
            }
            if let Some(m) = now {
                let last = m.base + m.size - 1;
                let map = match m.kind {
                    BarKind::Io => MapRequest::Ports {
                        region,
                        first: m.base as u16,
                        last: last as u16,
                    },
                    BarKind::Memory => MapRequest::Mmio {
                        region,
                        first: m.base,
                        last,
                    },
                };
                self.pending.push((e.device, map));
            }
            e.placed[bar] = now;
        }
    }

    fn publish_pirq(&self) {
        if let Some(r) = &self.pirq {
            let routes = std::array::from_fn(|i| self.isa.read(PIRQRC as u8 + i as u8));
            r.set_routes(routes);
        }
    }

    /// The function CONFIG_ADDRESS selects, if a configuration cycle reaches one.
    fn selected(&self) -> Option<Function> {
        if self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) & 0xFF;
        let device = (self.address >> 11) & 0x1F;
        let function = (self.address >> 8) & 0x7;
        match (bus, device, function) {
            (0, 0, 0) => Some(Function::HostBridge),
            (0, 1, 0) => Some(Function::IsaBridge),
            (0, 1, 3) => Some(Function::PowerManagement),
            (0, d, f) => self
                .endpoints
                .iter()
                .position(|e| u32::from(e.slot) == d && u32::from(e.function) == f)
                .map(Function::Endpoint),
            _ => None,
        }
    }

    /// A chipset function's space (endpoints keep their own).
    fn space_mut(&mut self, function: Function) -> Option<&mut ConfigSpace> {
        match function {
            Function::HostBridge => Some(&mut self.host),
            Function::IsaBridge => Some(&mut self.isa),
            Function::PowerManagement => Some(&mut self.power),
            Function::Endpoint(_) => None,
        }
    }

    fn read_register(&self, function: Function, reg: u8) -> u8 {
        match function {
            Function::HostBridge => self.host.read(reg),
            Function::IsaBridge => self.isa.read(reg),
            Function::PowerManagement => self.power.read(reg),
            Function::Endpoint(i) => self.endpoints[i].config.borrow().read(reg),
        }
    }

    /// The register byte lane `lane` (0-3) of CONFIG_DATA addresses.
    fn register(&self, lane: u16) -> u8 {
        (self.address.to_le_bytes()[0] & 0xFC) | (lane.to_le_bytes()[0] & 3)
    }

    fn read_data(&self, offset: u16, data: &mut [u8]) {
        let Some(function) = self.selected() else {
            return;
        };
        let first = offset.saturating_sub(CONFIG_DATA);
        for (lane, byte) in (first..4).zip(data.iter_mut()) {
            *byte = self.read_register(function, self.register(lane));
        }
    }

    fn write_data(&mut self, offset: u16, data: &[u8]) {
        let Some(function) = self.selected() else {
            return;
        };
        let first = offset.saturating_sub(CONFIG_DATA);
        for (lane, &value) in (first..4).zip(data) {
            self.write_register(function, self.register(lane), value);
        }
        if let Function::Endpoint(i) = function {
            self.replace_bars(i);
            let released = self.endpoints[i]
                .config
                .borrow_mut()
                .msix_take_unmasked_pending();
            self.pending_msi.extend(released);
        }
    }

    /// One byte of a configuration write, with the register's side effects.
    fn write_register(&mut self, function: Function, reg: u8, value: u8) {
        match (function, reg) {
            (Function::HostBridge, SMRAM) => self.write_smram(value),
            (Function::Endpoint(i), _) => self.endpoints[i].config.borrow_mut().write(reg, value),
            _ => {
                if let Some(space) = self.space_mut(function) {
                    space.write(reg, value);
                }
            }
        }
        match (function, reg) {
            (Function::HostBridge, PAM0..=PAM6) => {
                self.ctl
                    .set_pam(usize::from(reg - PAM0), self.host.read(reg));
            }
            (Function::PowerManagement, PMBA | PMBA_HIGH | PMREGMISC) => self.publish_pm(),
            (Function::IsaBridge, r) if (PIRQRC..PIRQRC + 4).contains(&usize::from(r)) => {
                self.publish_pirq()
            }
            _ => {}
        }
    }

    /// SMRAM's lock rules (82441FX datasheet, SMRAM register, 72h): once D_LCK is
    /// set, D_OPEN reads 0 and D_OPEN, G_SMRAME and D_LCK are read-only until reset.
    fn write_smram(&mut self, value: u8) {
        let old = self.host.read(SMRAM);
        let new = if old & SMRAM_D_LCK != 0 {
            (old & !SMRAM_D_CLS) | (value & SMRAM_D_CLS)
        } else {
            let kept = value & (SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME);
            let kept = if kept & SMRAM_D_LCK != 0 {
                kept & !SMRAM_D_OPEN
            } else {
                kept
            };
            kept | SMRAM_C_BASE_SEG
        };
        self.host.set(SMRAM, new);
        self.ctl
            .set_smram_open(new & (SMRAM_G_SMRAME | SMRAM_D_OPEN) == SMRAM_G_SMRAME | SMRAM_D_OPEN);
    }

    fn write_reset_control(&mut self, value: u8) {
        let rising = !self.reset_control & value & RC_RESET_CPU != 0;
        self.reset_control = value & (RC_SYSTEM_RESET | RC_RESET_CPU);
        // SYS_RST selects a hard reset, its absence a soft one (INIT to the CPU
        // only, PIIX3 datasheet §4.1.17). x86bt resets the whole machine either
        // way: a soft reset that leaves devices alone is not modelled.
        if rising {
            self.ctl.request_reset(if value & RC_SYSTEM_RESET != 0 {
                "port 0xCF9 (hard reset)"
            } else {
                "port 0xCF9 (soft reset)"
            });
        }
    }

    /// Hands all seven PAM registers to the memory map.
    fn publish_pam(&self) {
        for (index, reg) in (PAM0..=PAM6).enumerate() {
            self.ctl.set_pam(index, self.host.read(reg));
        }
    }

    /// Hands PMBA and PMIOSE to the PM I/O block.
    fn publish_pm(&self) {
        let base = u16::from_le_bytes([self.power.read(PMBA), self.power.read(PMBA_HIGH)]);
        self.pm.set(PmIo {
            base: base & 0xFFC0,
            enabled: self.power.read(PMREGMISC) & PMIOSE != 0,
        });
    }
}

impl PciHost {
    /// Hands the map requests for plugged-in devices to the machine.
    fn hand_over(&mut self, ctx: &mut DevCtx) {
        for (device, r) in self.pending.drain(..) {
            ctx.request_for(device, r);
        }
        for m in self.pending_msi.drain(..) {
            ctx.send_msi(m);
        }
    }

    /// Reads the register at port offset `offset` (the trait's `read`).
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
        match (offset, data) {
            (CONFIG_ADDRESS, data @ [_, _, _, _]) => {
                data.copy_from_slice(&(self.address & ADDRESS_STORED).to_le_bytes());
            }
            (RESET_CONTROL, [byte]) => *byte = self.reset_control,
            (CONFIG_DATA..=CONFIG_DATA_LAST, data) => self.read_data(offset, data),
            _ => {}
        }
    }

    /// Writes the register at port offset `offset` (the trait's `write`).
    pub fn port_write(&mut self, offset: u16, data: &[u8], _now: Nanos) {
        match (offset, data) {
            (CONFIG_ADDRESS, &[a, b, c, d]) => {
                self.address = u32::from_le_bytes([a, b, c, d]) & ADDRESS_STORED;
            }
            (RESET_CONTROL, &[value]) => self.write_reset_control(value),
            (CONFIG_DATA..=CONFIG_DATA_LAST, data) => self.write_data(offset, data),
            _ => {}
        }
    }
}

impl Device for PciHost {
    fn name(&self) -> &'static str {
        "pci-host"
    }

    fn read(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &mut [u8]) {
        self.hand_over(ctx);
        self.port_read(offset as u16, data, ctx.now());
    }

    fn write(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &[u8]) {
        self.hand_over(ctx);
        self.port_write(offset as u16, data, ctx.now());
        self.hand_over(ctx);
    }

    fn reset(&mut self) {
        self.address = 0;
        self.reset_control = 0;
        self.host = host_bridge();
        self.isa = isa_bridge();
        self.power = power_management();
        self.publish_pam();
        self.publish_pm();
        self.publish_pirq();
        // The plugged-in devices reset their own spaces; what was mapped
        // goes at the next access.
        for e in &mut self.endpoints {
            for (bar, placed) in e.placed.iter_mut().enumerate() {
                if let Some(old) = placed.take() {
                    let region = bar as u8;
                    self.pending.push((
                        e.device,
                        match old.kind {
                            BarKind::Io => MapRequest::UnmapPorts(region),
                            BarKind::Memory => MapRequest::UnmapMmio(region),
                        },
                    ));
                }
            }
        }
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        let Self {
            ctl: _,
            pm: _,
            address,
            reset_control,
            host,
            isa,
            power,
            endpoints,
            pirq,
            pending,
            pending_msi,
        } = self;
        Ok(crate::snapshot::DeviceState::PciHost(Box::new(
            PciHostState {
                address: *address,
                reset_control: *reset_control,
                host: host.clone(),
                isa: isa.clone(),
                power: power.clone(),
                placed: endpoints
                    .iter()
                    .map(|p| (p.slot, p.function, p.placed))
                    .collect(),
                pirq: pirq
                    .as_ref()
                    .map(|r| (r.routes.get(), r.asserted.get(), r.driven.get())),
                pending: pending.clone(),
                pending_msi: pending_msi.clone(),
            },
        )))
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        let crate::snapshot::DeviceState::PciHost(s) = state else {
            return Err(crate::snapshot::wrong_kind(self.name(), state));
        };
        let PciHostState {
            address,
            reset_control,
            host,
            isa,
            power,
            placed,
            pirq,
            pending,
            pending_msi,
        } = (**s).clone();
        let functions = |v: &mut dyn Iterator<Item = (u8, u8)>| v.collect::<Vec<_>>();
        let here = functions(&mut self.endpoints.iter().map(|p| (p.slot, p.function)));
        let then = functions(&mut placed.iter().map(|&(s, f, _)| (s, f)));
        if here != then || self.pirq.is_some() != pirq.is_some() {
            return Err(crate::snapshot::StateError::Mismatch(format!(
                "PCI functions (slot, function): {then:?} in the snapshot, {here:?} here"
            )));
        }
        for (p, (_, _, bars)) in self.endpoints.iter_mut().zip(placed) {
            p.placed = bars;
        }
        if let (Some(r), Some((routes, asserted, driven))) = (&self.pirq, pirq) {
            r.routes.set(routes);
            r.asserted.set(asserted);
            r.driven.set(driven);
        }
        (self.address, self.reset_control) = (address, reset_control);
        (self.host, self.isa, self.power) = (host, isa, power);
        (self.pending, self.pending_msi) = (pending, pending_msi);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rig {
        ctl: Rc<SystemControl>,
        pm: PmShared,
        host: PciHost,
    }

    fn rig() -> Rig {
        let ctl = SystemControl::new();
        let pm = PmShared::new();
        let host = PciHost::new(Rc::clone(&ctl), pm.clone());
        Rig { ctl, pm, host }
    }

    fn address(device: u32, function: u32, reg: u8) -> u32 {
        ADDRESS_ENABLE | (device << 11) | (function << 8) | u32::from(reg)
    }

    fn out(host: &mut PciHost, port: u16, size: usize, value: u32) {
        host.port_write(port, &value.to_le_bytes()[..size], 0);
    }

    fn inp(host: &mut PciHost, port: u16, size: usize) -> u32 {
        let mut buf = [0u8; 4];
        host.port_read(port, &mut buf[..size], 0);
        u32::from_le_bytes(buf)
    }

    /// A configuration read the way firmware does it: select the dword, then read
    /// `size` bytes at the lane of `reg`.
    fn config_read(host: &mut PciHost, device: u32, function: u32, reg: u8, size: usize) -> u32 {
        out(
            host,
            CONFIG_ADDRESS,
            4,
            address(device, function, reg & 0xFC),
        );
        inp(host, CONFIG_DATA + u16::from(reg & 3), size)
    }

    fn config_write(
        host: &mut PciHost,
        (device, function, reg): (u32, u32, u8),
        size: usize,
        value: u32,
    ) {
        out(
            host,
            CONFIG_ADDRESS,
            4,
            address(device, function, reg & 0xFC),
        );
        out(host, CONFIG_DATA + u16::from(reg & 3), size, value);
    }

    #[test]
    fn pci_host_bridge_vendor_device_read_via_cf8_cfc_is_i440fx() {
        let mut r = rig();

        let id = config_read(&mut r.host, 0, 0, 0x00, 4);
        let class_rev = config_read(&mut r.host, 0, 0, 0x08, 4);

        assert_eq!(id, 0x1237_8086);
        assert_eq!(class_rev, 0x0600_0002);
    }

    #[test]
    fn pci_functions_report_datasheet_identity() {
        let mut r = rig();

        let isa = config_read(&mut r.host, 1, 0, 0x00, 4);
        let isa_header = config_read(&mut r.host, 1, 0, HEADER_TYPE as u8, 1);
        let pm = config_read(&mut r.host, 1, 3, 0x00, 4);
        let pm_class_rev = config_read(&mut r.host, 1, 3, 0x08, 4);
        let pm_pin = config_read(&mut r.host, 1, 3, INTERRUPT_PIN as u8, 1);

        assert_eq!((isa, isa_header), (0x7000_8086, 0x80));
        assert_eq!((pm, pm_class_rev, pm_pin), (0x7113_8086, 0x0680_0003, 1));
    }

    #[test]
    fn pci_absent_device_reads_all_ones() {
        let mut r = rig();

        let device2 = config_read(&mut r.host, 2, 0, 0x00, 4);
        let ide = config_read(&mut r.host, 1, 1, 0x00, 2);
        out(&mut r.host, CONFIG_ADDRESS, 4, ADDRESS_ENABLE | (1 << 16));
        let bus1 = inp(&mut r.host, CONFIG_DATA, 4);

        assert_eq!((device2, ide, bus1), (0xFFFF_FFFF, 0xFFFF, 0xFFFF_FFFF));
    }

    #[test]
    fn pci_config_data_with_enable_clear_reads_all_ones() {
        let mut r = rig();
        out(&mut r.host, CONFIG_ADDRESS, 4, 0x0000_0000);

        assert_eq!(inp(&mut r.host, CONFIG_DATA, 4), 0xFFFF_FFFF);
    }

    #[test]
    fn pci_config_address_reads_back_without_reserved_bits() {
        let mut r = rig();

        out(&mut r.host, CONFIG_ADDRESS, 4, 0xFFFF_FFFF);

        assert_eq!(inp(&mut r.host, CONFIG_ADDRESS, 4), 0x80FF_FFFC);
    }

    #[test]
    fn pci_config_address_byte_and_word_writes_leave_it_unchanged() {
        let mut r = rig();
        out(&mut r.host, CONFIG_ADDRESS, 4, 0x8000_0000);

        out(&mut r.host, CONFIG_ADDRESS, 2, 0x1234);
        out(&mut r.host, CONFIG_ADDRESS, 1, 0x56);
        out(&mut r.host, CONFIG_ADDRESS + 2, 2, 0x0012);

        assert_eq!(inp(&mut r.host, CONFIG_ADDRESS, 4), 0x8000_0000);
        assert_eq!(inp(&mut r.host, CONFIG_ADDRESS, 2), 0xFFFF);
    }

    #[test]
    fn pci_config_data_byte_lanes_select_register_bytes() {
        let mut r = rig();
        out(&mut r.host, CONFIG_ADDRESS, 4, address(0, 0, 0x00));

        let lane1 = inp(&mut r.host, CONFIG_DATA + 1, 1);
        let lanes23 = inp(&mut r.host, CONFIG_DATA + 2, 2);

        assert_eq!((lane1, lanes23), (0x80, 0x1237));
    }

    #[test]
    fn pci_pam_write_reaches_system_control() {
        let mut r = rig();
        r.ctl.take_pam_changed();

        config_write(&mut r.host, (0, 0, 0x5A), 1, 0x33);

        assert!(r.ctl.take_pam_changed());
        assert_eq!(r.ctl.pam(), [0, 0x33, 0, 0, 0, 0, 0]);
        assert_eq!(config_read(&mut r.host, 0, 0, 0x5A, 1), 0x33);
    }

    #[test]
    fn pci_pam_dword_writes_set_each_register_masked() {
        let mut r = rig();

        // SeaBIOS's make-writable: PAM0 = 30h, PAM1-6 = 33h, as two dwords.
        config_write(&mut r.host, (0, 0, 0x58), 4, 0x3333_30FF);
        config_write(&mut r.host, (0, 0, 0x5C), 4, 0x3333_3333);

        assert_eq!(r.ctl.pam(), [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
        // 58h (DRAM timing) is not modelled and stays 0.
        assert_eq!(config_read(&mut r.host, 0, 0, 0x58, 1), 0);
    }

    #[test]
    fn pci_pam_reserved_bits_read_zero() {
        let mut r = rig();

        config_write(&mut r.host, (0, 0, PAM0), 1, 0xFF);
        config_write(&mut r.host, (0, 0, 0x5B), 1, 0xFF);

        assert_eq!(r.ctl.pam()[..3], [0x30, 0x00, 0x33]);
    }

    #[test]
    fn pci_reset_returns_pam_to_rom() {
        let mut r = rig();
        config_write(&mut r.host, (0, 0, 0x5C), 4, 0x3333_3333);

        r.host.reset();

        assert_eq!(r.ctl.pam(), [0; 7]);
        assert_eq!(config_read(&mut r.host, 0, 0, 0x5C, 4), 0);
    }

    #[test]
    fn pci_cf9_hard_reset_requests_reset() {
        let mut r = rig();

        out(&mut r.host, RESET_CONTROL, 1, 0x02);
        let after_select = r.ctl.take_reset().is_some();
        out(&mut r.host, RESET_CONTROL, 1, 0x06);

        assert!(!after_select);
        assert!(r.ctl.take_reset().is_some());
        assert_eq!(inp(&mut r.host, RESET_CONTROL, 1), 0x06);
    }

    #[test]
    fn pci_cf9_soft_reset_requests_reset() {
        let mut r = rig();

        out(&mut r.host, RESET_CONTROL, 1, 0x04);

        assert_eq!(r.ctl.take_reset(), Some("port 0xCF9 (soft reset)"));
    }

    #[test]
    fn pci_cf9_rcpu_held_high_does_not_reset_again() {
        let mut r = rig();
        out(&mut r.host, RESET_CONTROL, 1, 0x06);
        r.ctl.take_reset();

        out(&mut r.host, RESET_CONTROL, 1, 0x06);

        assert!(r.ctl.take_reset().is_none());
    }

    #[test]
    fn pci_identity_and_bars_ignore_writes() {
        let mut r = rig();

        config_write(&mut r.host, (0, 0, 0x00), 4, 0xDEAD_BEEF);
        config_write(&mut r.host, (1, 3, 0x10), 4, 0xFFFF_FFFF);
        config_write(&mut r.host, (1, 3, 0x30), 4, 0xFFFF_FFFE);

        assert_eq!(config_read(&mut r.host, 0, 0, 0x00, 4), 0x1237_8086);
        assert_eq!(config_read(&mut r.host, 1, 3, 0x10, 4), 0);
        assert_eq!(config_read(&mut r.host, 1, 3, 0x30, 4), 0);
    }

    #[test]
    fn pci_command_keeps_enables_and_status_is_write_one_clear() {
        let mut r = rig();

        config_write(&mut r.host, (1, 3, 0x04), 4, 0xFFFF_FFFF);

        assert_eq!(config_read(&mut r.host, 1, 3, 0x04, 4), 0x0280_0147);
    }

    #[test]
    fn pci_interrupt_line_is_writable() {
        let mut r = rig();

        config_write(&mut r.host, (1, 3, INTERRUPT_LINE as u8), 1, 9);

        assert_eq!(
            config_read(&mut r.host, 1, 3, INTERRUPT_LINE as u8, 2),
            0x0109
        );
    }

    #[test]
    fn pci_pirq_route_resets_disabled_and_stores_writes() {
        let mut r = rig();
        let reset = config_read(&mut r.host, 1, 0, 0x60, 4);

        config_write(&mut r.host, (1, 0, 0x60), 4, 0x0B0B_0A0A);

        assert_eq!(reset, 0x8080_8080);
        assert_eq!(config_read(&mut r.host, 1, 0, 0x60, 4), 0x0B0B_0A0A);
    }

    #[test]
    fn pci_pmba_and_pmregmisc_publish_pm_io() {
        let mut r = rig();

        // What SeaBIOS writes: PMBA = 600h | 1, then PMREGMISC = 1.
        config_write(&mut r.host, (1, 3, PMBA), 4, 0x0000_0601);
        let before_enable = r.pm.get();
        config_write(&mut r.host, (1, 3, PMREGMISC), 1, 0x01);

        assert_eq!(
            before_enable,
            PmIo {
                base: 0x600,
                enabled: false
            }
        );
        assert_eq!(
            r.pm.get(),
            PmIo {
                base: 0x600,
                enabled: true
            }
        );
        assert_eq!(config_read(&mut r.host, 1, 3, PMBA, 4), 0x0000_0601);
    }

    #[test]
    fn pci_pmba_low_bits_read_as_io_indicator() {
        let mut r = rig();

        config_write(&mut r.host, (1, 3, PMBA), 4, 0xFFFF_FFFF);

        assert_eq!(config_read(&mut r.host, 1, 3, PMBA, 4), 0x0000_FFC1);
        assert_eq!(r.pm.get().base, 0xFFC0);
    }

    #[test]
    fn pci_smbus_base_stored_with_io_indicator() {
        let mut r = rig();

        config_write(&mut r.host, (1, 3, SMBBA as u8), 4, 0x0000_0701);

        assert_eq!(config_read(&mut r.host, 1, 3, SMBBA as u8, 4), 0x0000_0701);
    }

    #[test]
    fn pci_devactb_reports_apmc_enabled_so_firmware_skips_smm_setup() {
        let mut r = rig();

        let devactb = config_read(&mut r.host, 1, 3, DEVACTB as u8, 4);

        assert_eq!(devactb & DEVACTB_APMC_EN, DEVACTB_APMC_EN);
    }

    #[test]
    fn pci_smram_stores_and_keeps_base_segment() {
        let mut r = rig();
        let reset = config_read(&mut r.host, 0, 0, SMRAM, 1);

        config_write(&mut r.host, (0, 0, SMRAM), 1, 0x48);

        assert_eq!(reset, 0x02);
        assert_eq!(config_read(&mut r.host, 0, 0, SMRAM, 1), 0x4A);
    }

    #[test]
    fn pci_smram_lock_clears_open_and_freezes_until_reset() {
        let mut r = rig();
        config_write(&mut r.host, (0, 0, SMRAM), 1, 0x58);

        config_write(&mut r.host, (0, 0, SMRAM), 1, 0x40);
        let locked = config_read(&mut r.host, 0, 0, SMRAM, 1);
        r.host.reset();

        assert_eq!(locked, 0x1A);
        assert_eq!(config_read(&mut r.host, 0, 0, SMRAM, 1), 0x02);
    }

    #[test]
    fn pci_reset_disables_pm_io() {
        let mut r = rig();
        config_write(&mut r.host, (1, 3, PMBA), 4, 0x0000_0601);
        config_write(&mut r.host, (1, 3, PMREGMISC), 1, 0x01);

        r.host.reset();

        assert_eq!(r.pm.get(), PmIo::default());
    }

    /// A plugged-in function: BAR placement reaches the machine as a map
    /// request for the device (and its removal at a reset); PIRQ routing
    /// drives the ISA line the PIIX3 register names; clearing the MSI-X
    /// function mask over a pending vector sends it.
    #[test]
    fn pci_endpoint_bars_pirq_and_msix_through_the_host() {
        use crate::device::{DevEnv, IrqLines};
        use crate::devices::pci_endpoint::MsixLayout;
        let lines = IrqLines::new();
        let router = PirqRouter::new(Rc::clone(&lines));
        let mut host = PciHost::new(SystemControl::new(), PmShared::new())
            .with_pirq_router(Rc::clone(&router));
        let space = crate::devices::edu::config_space().with_msix(MsixLayout {
            vectors: 2,
            bar: 0,
            table: 0x1000,
            pba: 0x1800,
        });
        let cfg = Rc::new(RefCell::new(space));
        host.plug(3, 7, Rc::clone(&cfg));
        fn cw(host: &mut PciHost, env: &mut DevEnv, dev: u32, reg: u8, v: u32) {
            host.write(
                &mut env.at(0),
                0,
                0xCF8,
                &address(dev, 0, reg).to_le_bytes(),
            );
            host.write(&mut env.at(0), 0, 0xCFC, &v.to_le_bytes());
        }
        let mut env = DevEnv::new();
        cw(&mut host, &mut env, 3, 0x10, 0xFEB0_0000);
        cw(&mut host, &mut env, 3, 0x04, 0x0006);
        // PIRQ for slot 3, pin A: (3 - 1) mod 4 = C (0x62) -> IRQ 10.
        cw(&mut host, &mut env, 1, 0x60, 0x800A_8080);
        assert!(env.requests.contains(&(
            Some(7),
            MapRequest::Mmio {
                region: 0,
                first: 0xFEB0_0000,
                last: 0xFEBF_FFFF
            }
        )));
        let intx = router.line(3, 1);
        intx.set_level(true);
        assert_ne!(lines.levels() & (1 << 10), 0, "IRQ 10 asserted");
        intx.set_level(false);
        assert_eq!(lines.levels() & (1 << 10), 0);
        // MSI-X: enabled with the function masked, vector 0 programmed and
        // unmasked; its signal pends; clearing the function mask sends it.
        {
            let mut c = cfg.borrow_mut();
            c.msix_write(0, 0x1000, &0xFEE0_0000u32.to_le_bytes());
            c.msix_write(0, 0x1008, &0x33u32.to_le_bytes());
            c.msix_write(0, 0x100C, &0u32.to_le_bytes());
        }
        let mut env3 = DevEnv::new();
        cw(&mut host, &mut env3, 3, 0x50, 0xC000_0011 | (0x50 << 8));
        assert_eq!(cfg.borrow_mut().msix_signal(0), None, "function masked");
        cw(&mut host, &mut env3, 3, 0x50, 0x8000_0011 | (0x50 << 8));
        assert_eq!(env3.msi.len(), 1);
        assert_eq!(env3.msi[0].data, 0x33);
        // A reset unmaps the BAR at the next access.
        host.reset();
        let mut env4 = DevEnv::new();
        host.read(&mut env4.at(0), 0, 0xCF8, &mut [0u8; 4]);
        assert_eq!(env4.requests, vec![(Some(7), MapRequest::UnmapMmio(0))]);
    }
}
