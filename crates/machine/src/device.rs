//! The device model: one trait every device implements, whether it answers on
//! I/O ports, in memory-mapped I/O, or both; the context every device call
//! gets (virtual time, DMA to guest memory, an MSI sender, requests to move
//! its own mappings); the shared IRQ lines devices raise, and the platform
//! control signals (A20, reset, debug exit) that some devices drive.
//!
//! Everything runs on the emulation thread; shared state uses `Cell`, not locks.
//! Time is virtual: every call carries `now`, in nanoseconds of guest time.

use crate::addr::GuestPhys;
use crate::memory::{MemoryLayout, PhysMemory};
use crate::snapshot::{DeviceState, StateError};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::rc::Rc;

/// Virtual guest time in nanoseconds since power-on.
pub type Nanos = u64;

/// A device. `region` says which of the device's mapped ranges an access hit
/// (the index it was mapped with); `offset` is the address minus that
/// mapping's base; `data` is 1, 2, 4 or 8 bytes wide, little-endian.
pub trait Device {
    /// A short name for diagnostics.
    fn name(&self) -> &'static str;
    /// Reads a register. Bytes the device does not drive are left as `0xFF`.
    fn read(&mut self, ctx: &mut DevCtx, region: u8, offset: u64, data: &mut [u8]);
    /// Writes a register.
    fn write(&mut self, ctx: &mut DevCtx, region: u8, offset: u64, data: &[u8]);
    /// Brings the device's own state (timers, transfers) up to `ctx.now()`.
    fn advance(&mut self, _ctx: &mut DevCtx) {}
    /// The next time at which [`Device::advance`] must be called for the device to
    /// change an output by itself (a timer expiry), if any.
    fn next_deadline(&self, _now: Nanos) -> Option<Nanos> {
        None
    }
    /// Returns the device to its power-on state (a system reset).
    fn reset(&mut self) {}
    /// The device's state for a snapshot: everything that decides what it
    /// does next, none of what it is wired to (see [`crate::snapshot`]).
    /// Mutable because a disk controller reads its image to record which
    /// image it was (and fails if that read fails); nothing the guest can
    /// see changes.
    fn save(&mut self) -> Result<DeviceState, StateError>;
    /// Puts back a state [`Device::save`] returned, into a device built and
    /// wired the same way; refuses a state of another kind of device or of
    /// another configuration (a disk of another size, another image).
    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError>;
}

/// The [`Device`] methods of a device that answers on I/O ports only, by its
/// inherent `port_read(offset, data, now)` and `port_write(offset, data,
/// now)` (and `advance_to(now)` with `advance`): used inside the device's
/// `impl Device` block.
#[macro_export]
macro_rules! port_device_methods {
    () => {
        fn read(
            &mut self,
            ctx: &mut $crate::device::DevCtx,
            _region: u8,
            offset: u64,
            data: &mut [u8],
        ) {
            self.port_read(offset as u16, data, ctx.now());
        }

        fn write(
            &mut self,
            ctx: &mut $crate::device::DevCtx,
            _region: u8,
            offset: u64,
            data: &[u8],
        ) {
            self.port_write(offset as u16, data, ctx.now());
        }
    };
    (advance) => {
        $crate::port_device_methods!();

        fn advance(&mut self, ctx: &mut $crate::device::DevCtx) {
            self.advance_to(ctx.now());
        }
    };
}

/// A message-signalled interrupt: the address and data a device writes (PCI
/// MSI/MSI-X, HPET FSB delivery), delivered by the machine to the local APICs
/// its address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msi {
    /// The message address (0xFEEx_xxxx for an APIC).
    pub addr: u64,
    /// The message data.
    pub data: u32,
}

/// A change to the calling device's own mappings, asked for from inside a
/// device call (a PCI BAR or the PM base moved) and applied by the machine
/// when the call returns. A request that would overlap another owner's range
/// leaves the region unmapped and is logged as a guest error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapRequest {
    /// Map `region` at ports `first..=last` (offsets from `first`), in place
    /// of wherever it was.
    Ports {
        /// The region.
        region: u8,
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// Map `region` at memory `first..=last` (offsets from `first`).
    Mmio {
        /// The region.
        region: u8,
        /// First address.
        first: u64,
        /// Last address.
        last: u64,
    },
    /// Unmap `region` from the port space.
    UnmapPorts(u8),
    /// Unmap `region` from the memory space.
    UnmapMmio(u8),
}

/// A map request with the device whose mappings it moves (`None`: the
/// calling device's own).
pub type OwnedRequest = (Option<usize>, MapRequest);

/// What a device call may reach besides the device itself.
pub struct DevCtx<'a> {
    now: Nanos,
    mem: &'a mut PhysMemory,
    msi: &'a mut Vec<Msi>,
    requests: &'a mut Vec<OwnedRequest>,
    errors: &'a mut Vec<String>,
}

impl<'a> DevCtx<'a> {
    /// A context at time `now` over `mem`, collecting MSIs, map requests and
    /// guest errors.
    pub fn new(
        now: Nanos,
        mem: &'a mut PhysMemory,
        msi: &'a mut Vec<Msi>,
        requests: &'a mut Vec<OwnedRequest>,
        errors: &'a mut Vec<String>,
    ) -> Self {
        Self {
            now,
            mem,
            msi,
            requests,
            errors,
        }
    }

    /// Virtual time.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// DMA: reads guest-physical memory. Bytes outside RAM and ROM read as
    /// all ones (a master abort).
    pub fn dma_read(&self, addr: GuestPhys, buf: &mut [u8]) {
        self.mem.read_bytes(addr, buf);
    }

    /// DMA: writes guest-physical memory through the same path as CPU stores,
    /// so a write onto cached code invalidates it in both engines. Bytes
    /// outside RAM are dropped (a master abort).
    pub fn dma_write(&mut self, addr: GuestPhys, data: &[u8]) {
        self.mem.write_bytes(addr, data);
    }

    /// Sends a message-signalled interrupt.
    pub fn send_msi(&mut self, msi: Msi) {
        self.msi.push(msi);
    }

    /// Asks for a change of this device's mappings (applied after the call).
    pub fn request(&mut self, r: MapRequest) {
        self.requests.push((None, r));
    }

    /// Asks for a change of device `owner`'s mappings: the PCI host bridge
    /// places a function's BARs after a configuration write.
    pub fn request_for(&mut self, owner: usize, r: MapRequest) {
        self.requests.push((Some(owner), r));
    }

    /// Records something the guest did wrong (a device programmed in a way
    /// that does nothing, or that real hardware leaves undefined), for
    /// `X86BT_TRACE=guest_errors`.
    pub fn guest_error(&mut self, what: String) {
        self.errors.push(what);
    }
}

/// A stand-alone environment for device calls outside a machine (unit tests,
/// fuzzing): 64 KiB of flat RAM and the queues a [`DevCtx`] fills.
pub struct DevEnv {
    /// The RAM DMA reaches.
    pub mem: PhysMemory,
    /// MSIs sent.
    pub msi: Vec<Msi>,
    /// Map requests made.
    pub requests: Vec<OwnedRequest>,
    /// Guest errors recorded.
    pub errors: Vec<String>,
}

impl DevEnv {
    /// A new environment.
    ///
    /// # Panics
    /// If the host cannot map 64 KiB.
    pub fn new() -> Self {
        Self {
            mem: PhysMemory::new(1 << 16, MemoryLayout::Flat).expect("64 KiB of RAM"),
            msi: Vec::new(),
            requests: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A context at time `now`.
    pub fn at(&mut self, now: Nanos) -> DevCtx<'_> {
        DevCtx::new(
            now,
            &mut self.mem,
            &mut self.msi,
            &mut self.requests,
            &mut self.errors,
        )
    }
}

impl Default for DevEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// The 16 ISA interrupt request lines, shared by the devices that drive them and the
/// PIC pair that samples them.
#[derive(Debug, Default)]
pub struct IrqLines {
    /// Bits 0-15: the ISA lines IRQ0-15 (the 8259s and the I/O APIC see
    /// them); bits 16-23: I/O APIC pins 16-23 (PCI and HPET lines no 8259
    /// sees).
    level: Cell<u32>,
    rising: Cell<u32>,
    /// The rising edges the I/O APIC has not taken yet (the PIC takes its
    /// own from `rising`: each controller sees every edge).
    rising_apic: Cell<u32>,
    /// Lines whose legacy source is cut off: the HPET's legacy replacement
    /// takes IRQ0 from the PIT and IRQ8 from the RTC.
    gate: Cell<u32>,
    /// Counts every change of a level, latched edge or gate, so the machine
    /// can tell that a device access left the lines alone.
    changes: Cell<u64>,
}

/// The saved state of [`IrqLines`]: every field, edges not yet taken
/// included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqLinesState {
    level: u32,
    rising: u32,
    rising_apic: u32,
    gate: u32,
    changes: u64,
}

impl IrqLines {
    /// The lines' state, for a snapshot.
    pub fn save(&self) -> IrqLinesState {
        let Self {
            level,
            rising,
            rising_apic,
            gate,
            changes,
        } = self;
        IrqLinesState {
            level: level.get(),
            rising: rising.get(),
            rising_apic: rising_apic.get(),
            gate: gate.get(),
            changes: changes.get(),
        }
    }

    /// Puts back a state [`IrqLines::save`] returned.
    pub fn restore(&self, s: &IrqLinesState) {
        let IrqLinesState {
            level,
            rising,
            rising_apic,
            gate,
            changes,
        } = s;
        self.level.set(*level);
        self.rising.set(*rising);
        self.rising_apic.set(*rising_apic);
        self.gate.set(*gate);
        self.changes.set(*changes);
    }

    /// A new set of lines, all low, in an `Rc` for sharing.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }
    /// How many times a level, an edge or the gate has changed (see
    /// `changes`).
    pub fn changes(&self) -> u64 {
        self.changes.get()
    }
    /// The current level of the 16 ISA lines (bit n = IRQn).
    pub fn levels(&self) -> u16 {
        self.level.get() as u16
    }
    /// Returns and clears the ISA lines that saw a rising edge since the
    /// last call.
    pub fn take_rising(&self) -> u16 {
        self.rising.replace(0) as u16
    }
    /// The levels of every line: the ISA lines in bits 0-15, I/O APIC pins
    /// 16-23 in bits 16-23.
    pub fn all_levels(&self) -> u32 {
        self.level.get()
    }
    /// As [`IrqLines::take_rising`], for the I/O APIC's own latch, over
    /// every line (as [`IrqLines::all_levels`]).
    pub fn take_rising_apic(&self) -> u32 {
        self.rising_apic.replace(0)
    }
    /// A handle that drives ISA line `irq`.
    pub fn line(self: &Rc<Self>, irq: u8) -> IrqLine {
        IrqLine {
            lines: Rc::clone(self),
            mask: 1 << (irq & 15),
            legacy: false,
        }
    }
    /// A handle for a legacy source of ISA line `irq` (the PIT's IRQ0, the
    /// RTC's IRQ8), which the HPET's legacy replacement can cut off.
    pub fn legacy_line(self: &Rc<Self>, irq: u8) -> IrqLine {
        IrqLine {
            legacy: true,
            ..self.line(irq)
        }
    }
    /// A handle that drives I/O APIC pin `pin` (16-23), which no 8259 sees.
    pub fn apic_pin(self: &Rc<Self>, pin: u8) -> IrqLine {
        IrqLine {
            lines: Rc::clone(self),
            mask: 1 << (16 + (pin.clamp(16, 23) - 16)),
            legacy: false,
        }
    }
    /// Cuts the legacy sources of the ISA lines in `mask` off (or connects
    /// them again); the lines cut off go low for their new source to drive.
    pub fn set_legacy_gate(&self, mask: u16) {
        let mask = u32::from(mask);
        let newly = mask & !self.gate.get();
        self.gate.set(mask);
        self.level.set(self.level.get() & !newly);
        self.changes.set(self.changes.get() + 1);
    }
}

/// One interrupt request line, as driven by a device.
#[derive(Clone, Debug)]
pub struct IrqLine {
    lines: Rc<IrqLines>,
    mask: u32,
    /// A legacy source the HPET's legacy replacement can cut off.
    legacy: bool,
}

impl IrqLine {
    /// Drives the line high or low. A low-to-high change is latched as an edge.
    /// A legacy source that is cut off drives nothing.
    pub fn set_level(&self, high: bool) {
        if self.legacy && self.lines.gate.get() & self.mask != 0 {
            return;
        }
        let level = self.lines.level.get();
        let new = if high {
            if level & self.mask == 0 {
                self.lines.rising.set(self.lines.rising.get() | self.mask);
                self.lines
                    .rising_apic
                    .set(self.lines.rising_apic.get() | self.mask);
            }
            level | self.mask
        } else {
            level & !self.mask
        };
        if new != level {
            self.lines.changes.set(self.lines.changes.get() + 1);
        }
        self.lines.level.set(new);
    }
    /// A short high pulse: an edge is latched, and the line ends low.
    pub fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
    /// Whether the line is currently high.
    pub fn is_high(&self) -> bool {
        self.lines.level.get() & self.mask != 0
    }
}

/// Platform-wide control signals that some devices drive and the run loop obeys.
#[derive(Debug)]
pub struct SystemControl {
    a20: Cell<bool>,
    reset: Cell<Option<&'static str>>,
    exit: Cell<Option<i32>>,
    power_off: Cell<bool>,
    nmi_masked: Cell<bool>,
    pam: Cell<[u8; 7]>,
    pam_changed: Cell<bool>,
    smram_open: Cell<bool>,
}

impl Default for SystemControl {
    fn default() -> Self {
        Self {
            a20: Cell::new(true),
            reset: Cell::new(None),
            exit: Cell::new(None),
            power_off: Cell::new(false),
            nmi_masked: Cell::new(false),
            pam: Cell::new([0; 7]),
            pam_changed: Cell::new(false),
            smram_open: Cell::new(false),
        }
    }
}

/// The saved state of [`SystemControl`]: every signal, requests not yet
/// taken included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    a20: bool,
    /// A reset asked for and not yet taken, by the name of its path.
    reset: Option<String>,
    exit: Option<i32>,
    power_off: bool,
    nmi_masked: bool,
    pam: [u8; 7],
    pam_changed: bool,
    smram_open: bool,
}

/// The names a reset request can carry, so a restored request keeps its
/// `&'static str` (the devices' own spellings; anything else reads as a
/// reset through an unknown path).
const RESET_SOURCES: &[&str] = &[
    "keyboard controller (i8042 reset pulse)",
    "port 0x92 (fast reset)",
    "port 0xCF9 (hard reset)",
    "port 0xCF9 (soft reset)",
];

impl SystemControl {
    /// The signals' state, for a snapshot.
    pub fn save(&self) -> ControlState {
        let Self {
            a20,
            reset,
            exit,
            power_off,
            nmi_masked,
            pam,
            pam_changed,
            smram_open,
        } = self;
        ControlState {
            a20: a20.get(),
            reset: reset.get().map(str::to_string),
            exit: exit.get(),
            power_off: power_off.get(),
            nmi_masked: nmi_masked.get(),
            pam: pam.get(),
            pam_changed: pam_changed.get(),
            smram_open: smram_open.get(),
        }
    }

    /// Puts back a state [`SystemControl::save`] returned.
    pub fn restore(&self, s: &ControlState) {
        let ControlState {
            a20,
            reset,
            exit,
            power_off,
            nmi_masked,
            pam,
            pam_changed,
            smram_open,
        } = s;
        self.a20.set(*a20);
        self.reset.set(reset.as_deref().map(|r| {
            RESET_SOURCES
                .iter()
                .copied()
                .find(|k| *k == r)
                .unwrap_or("reset path of a snapshot")
        }));
        self.exit.set(*exit);
        self.power_off.set(*power_off);
        self.nmi_masked.set(*nmi_masked);
        self.pam.set(*pam);
        self.pam_changed.set(*pam_changed);
        self.smram_open.set(*smram_open);
    }

    /// A new set of signals, A20 enabled (as firmware expects after QEMU-style reset).
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }
    /// Whether the A20 gate passes address line 20.
    pub fn a20(&self) -> bool {
        self.a20.get()
    }
    /// Opens or closes the A20 gate.
    pub fn set_a20(&self, on: bool) {
        self.a20.set(on);
    }
    /// Asks for a system reset; `source` names the path for the user
    /// ("keyboard controller", "port 0x92", ...).
    pub fn request_reset(&self, source: &'static str) {
        self.reset.set(Some(source));
    }
    /// Whether a reset, an exit or power-off is asked for and not yet taken.
    pub fn requested(&self) -> bool {
        self.reset.get().is_some() || self.exit.get().is_some() || self.power_off.get()
    }
    /// Returns and clears a pending reset request, with its source.
    pub fn take_reset(&self) -> Option<&'static str> {
        self.reset.replace(None)
    }
    /// Ends the run with `status` (the debug-exit device).
    pub fn request_exit(&self, status: i32) {
        self.exit.set(Some(status));
    }
    /// The exit status the guest asked for, if any.
    pub fn exit_status(&self) -> Option<i32> {
        self.exit.get()
    }
    /// Turns the machine off (ACPI soft-off, S5).
    pub fn request_power_off(&self) {
        self.power_off.set(true);
    }
    /// Whether the guest turned the machine off.
    pub fn powered_off(&self) -> bool {
        self.power_off.get()
    }
    /// Whether NMIs are masked (CMOS index port bit 7).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked.get()
    }
    /// Sets the NMI mask.
    pub fn set_nmi_masked(&self, masked: bool) {
        self.nmi_masked.set(masked);
    }
    /// The i440FX PAM0-PAM6 registers (config offsets 0x59-0x5F), which decide
    /// whether reads and writes in 0xC0000-0xFFFFF go to RAM or to ROM.
    pub fn pam(&self) -> [u8; 7] {
        self.pam.get()
    }
    /// Sets PAM register `index` (0-6); the memory map follows at the next sync.
    pub fn set_pam(&self, index: usize, value: u8) {
        let mut p = self.pam.get();
        if let Some(r) = p.get_mut(index) {
            if *r != value {
                *r = value;
                self.pam.set(p);
                self.pam_changed.set(true);
            }
        }
    }
    /// Whether SMRAM (0xA0000-0xBFFFF) is open to ordinary accesses: i440FX SMRAM
    /// register with G_SMRAME and D_OPEN set.
    pub fn smram_open(&self) -> bool {
        self.smram_open.get()
    }
    /// Opens or closes SMRAM; the memory map follows at the next sync.
    pub fn set_smram_open(&self, open: bool) {
        if self.smram_open.replace(open) != open {
            self.pam_changed.set(true);
        }
    }
    /// Returns and clears whether PAM or SMRAM changed since the last call.
    /// Whether the PAM registers changed since the machine last took them,
    /// without taking them.
    pub fn pam_changed(&self) -> bool {
        self.pam_changed.get()
    }
    /// Returns and clears whether the PAM registers changed.
    pub fn take_pam_changed(&self) -> bool {
        self.pam_changed.replace(false)
    }
}
