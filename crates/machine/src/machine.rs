//! The assembled platform: memory, the port and memory-mapped I/O buses with
//! their devices, the interrupt controllers as typed fields, the IRQ lines, the
//! system-control signals and the virtual clock.
//!
//! Time is virtual. The run loop calls [`Machine::set_time`] with the guest time
//! derived from retired instructions; devices are only advanced when the earliest
//! device deadline has passed, or when the guest touches one of them. That keeps
//! runs deterministic and the per-unit cost to one compare.
//!
//! Every device call gets a [`DevCtx`]: the time, DMA to guest memory (through
//! [`PhysMemory`]'s store path, so DMA onto cached code invalidates it), an MSI
//! sender and a queue of requests to move the device's own mappings, which the
//! machine applies when the call returns.

use crate::addr::GuestPhys;
use crate::bus::{size_mask, Bus, BusError, DeviceId, Mapping, Owner};
use crate::device::{DevCtx, Device, IrqLines, MapRequest, Msi, Nanos, SystemControl};
use crate::devices::ioapic::{self, IoApic};
use crate::devices::lapic::{self, Ipi, Lapic, Pending};
use crate::devices::pic::Pic;
use crate::error::MachineError;
use crate::memory::{MemoryLayout, PhysMemory};
use std::rc::Rc;

mod state;
pub use state::{MachineShape, MachineState};

/// How many guest errors the machine keeps for the run loop to report.
const GUEST_ERRORS_KEPT: usize = 64;

/// The whole machine below the CPU.
pub struct Machine {
    /// Guest-physical memory.
    pub mem: PhysMemory,
    /// The I/O port space.
    pub ports: Bus<u16>,
    /// The memory-mapped I/O space: what answers where guest-physical memory
    /// has neither RAM nor ROM.
    pub mmio: Bus<u64>,
    devices: Vec<Box<dyn Device>>,
    /// The 8259 pair, if the platform has one.
    pub pic: Option<Pic>,
    /// The local APICs, one per CPU (none on a machine without APICs).
    pub lapics: Vec<Lapic>,
    /// The keyboard controller, for a front end that types keys into it.
    pub keyboard: Option<crate::devices::i8042::SharedI8042>,
    /// The I/O APIC, at [`ioapic::DEFAULT_BASE`], fed by the ISA IRQ lines
    /// (IRQ0 on pin 2, the others on their own pins, as the MADT's source
    /// overrides say).
    pub ioapic: Option<IoApic>,
    /// The CPU whose accesses the machine serves now (its local APIC answers
    /// the APIC page and the APIC MSRs).
    pub cur_cpu: usize,
    /// Memory-mapped I/O accesses so far (devices and APIC pages): lockstep
    /// runs a unit that made one only once.
    pub mmio_accesses: u64,
    /// A20, reset, debug exit.
    pub ctl: Rc<SystemControl>,
    /// The 16 ISA IRQ lines.
    pub irq: Rc<IrqLines>,
    /// MSIs sent by devices, not yet delivered.
    msi: Vec<Msi>,
    /// Map requests of the device call in progress.
    requests: Vec<crate::device::OwnedRequest>,
    /// Guest errors devices recorded during a call.
    device_errors: Vec<String>,
    /// Guest errors (a BAR programmed onto another range, an MSI nobody
    /// takes), for the run loop to report; the oldest are dropped past
    /// [`GUEST_ERRORS_KEPT`].
    guest_errors: Vec<String>,
    now: Nanos,
    /// `(origin, ns per instruction)` of the running CPU's clock, set by the
    /// run loop (see [`Machine::sync_clock`]).
    clock_origin: Option<(Nanos, u64)>,
    deadline: Nanos,
    /// Each device's own next deadline, as last computed (`Nanos::MAX`: none).
    /// An access can only move the deadline of the device accessed.
    deadlines: Vec<Nanos>,
    intr: bool,
    /// Set by a port access after which the run loop must look before the
    /// CPU's next instruction; see [`Machine::port_attention`].
    port_attention: bool,
}

impl Machine {
    /// A machine with `mem` and no devices; [`Machine::add_device`], the
    /// `map_*` calls and [`Machine::pic`] complete it.
    pub fn with_memory(mem: PhysMemory) -> Self {
        Self {
            mem,
            ports: Bus::new(),
            mmio: Bus::new(),
            devices: Vec::new(),
            pic: None,
            lapics: Vec::new(),
            ioapic: None,
            cur_cpu: 0,
            mmio_accesses: 0,
            ctl: SystemControl::new(),
            irq: IrqLines::new(),
            msi: Vec::new(),
            requests: Vec::new(),
            device_errors: Vec::new(),
            guest_errors: Vec::new(),
            now: 0,
            clock_origin: None,
            keyboard: None,
            deadline: Nanos::MAX,
            deadlines: Vec::new(),
            intr: false,
            port_attention: false,
        }
    }

    /// A bare machine: flat RAM from address 0, no ROM, no devices. Every port reads
    /// as all ones. This is what single-instruction hardware tests expect.
    pub fn flat(ram_bytes: u64) -> Result<Self, MachineError> {
        Ok(Self::with_memory(PhysMemory::new(
            ram_bytes,
            MemoryLayout::Flat,
        )?))
    }

    /// Adds a device; map its ranges with [`Machine::map_ports`] and
    /// [`Machine::map_mmio`].
    pub fn add_device(&mut self, dev: Box<dyn Device>) -> DeviceId {
        self.devices.push(dev);
        self.devices.len() - 1
    }

    /// Routes ports `first..=last` to `owner`'s `region`, which sees
    /// `port - base`.
    pub fn map_ports(
        &mut self,
        first: u16,
        last: u16,
        base: u16,
        owner: Owner,
        region: u8,
    ) -> Result<(), BusError> {
        self.ports.map(first, last, base, owner, region)
    }

    /// Routes guest-physical `first..=last` (where there is no RAM or ROM) to
    /// `owner`'s `region`, which sees `addr - base`.
    pub fn map_mmio(
        &mut self,
        first: u64,
        last: u64,
        base: u64,
        owner: Owner,
        region: u8,
    ) -> Result<(), BusError> {
        self.mmio.map(first, last, base, owner, region)
    }

    /// The devices, in the order they were added.
    pub fn devices(&self) -> impl Iterator<Item = &dyn Device> {
        self.devices.iter().map(|d| d.as_ref())
    }

    /// Current virtual time.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// The earliest time a device wants to be advanced, if any.
    pub fn next_deadline(&self) -> Option<Nanos> {
        (self.deadline != Nanos::MAX).then_some(self.deadline)
    }

    /// Sets how the running CPU's instruction count maps to virtual time:
    /// `now = origin + icount * ns_per_insn` (the run loop's clock, for
    /// [`Machine::sync_clock`]).
    pub fn set_clock_origin(&mut self, origin: Nanos, ns_per_insn: u64) {
        self.clock_origin = Some((origin, ns_per_insn));
    }

    /// Brings virtual time to that of the running CPU's instruction
    /// `icount`, never backwards, before it touches a device: the run loop
    /// only sets the time between units, and a chain of translated units
    /// may run many without returning.
    #[inline]
    pub fn sync_clock(&mut self, icount: u64) {
        if let Some((origin, ns)) = self.clock_origin {
            let t = origin.saturating_add(icount.saturating_mul(ns));
            if t > self.now {
                self.set_time(t);
            }
        }
    }

    /// Moves virtual time to `now`; devices run if a deadline has passed.
    #[inline]
    pub fn set_time(&mut self, now: Nanos) {
        self.now = now;
        if now >= self.deadline {
            self.advance_devices();
        }
    }

    /// Advances every device to the current time and recomputes deadlines and the
    /// interrupt line.
    pub fn advance_devices(&mut self) {
        for l in &mut self.lapics {
            l.advance(self.now);
        }
        for id in 0..self.devices.len() {
            let mut ctx = DevCtx::new(
                self.now,
                &mut self.mem,
                &mut self.msi,
                &mut self.requests,
                &mut self.device_errors,
            );
            self.devices[id].advance(&mut ctx);
            self.apply_requests(id);
        }
        self.after_device_activity();
    }

    /// A system reset of the platform: every device and the interrupt
    /// controllers return to their power-on state.
    pub fn reset_devices(&mut self) {
        for d in &mut self.devices {
            d.reset();
        }
        if let Some(pic) = &mut self.pic {
            pic.reset();
        }
        for l in &mut self.lapics {
            l.reset();
        }
        if let Some(io) = &mut self.ioapic {
            io.reset();
        }
        self.msi.clear();
    }

    fn after_device_activity(&mut self) {
        let now = self.now;
        self.deadlines.clear();
        self.deadlines.extend(
            self.devices
                .iter()
                .map(|d| d.next_deadline(now).unwrap_or(Nanos::MAX)),
        );
        self.recompute_deadline();
        self.after_signals();
    }

    /// The earliest of the devices' and the APIC timers' deadlines.
    fn recompute_deadline(&mut self) {
        let devices = self.deadlines.iter().copied().min().unwrap_or(Nanos::MAX);
        let apics = self
            .lapics
            .iter()
            .filter_map(Lapic::next_deadline)
            .min()
            .unwrap_or(Nanos::MAX);
        self.deadline = devices.min(apics);
    }

    /// After an access to device `id` alone: its deadline, then the signals,
    /// unless the access left them as they were (`lines`: the IRQ lines'
    /// change count before it): no line changed, no MSI was sent, and
    /// neither A20 nor PAM moved. Then the interrupt controllers would
    /// compute what they computed before (an I/O APIC EOI and its own
    /// register writes update it themselves), and a POST-port write or a
    /// status read costs only the device's own work.
    fn after_access(&mut self, id: DeviceId, lines: u64) {
        let now = self.now;
        match (
            self.deadlines.len() == self.devices.len(),
            self.devices.get(id),
        ) {
            (true, Some(dev)) => {
                let d = dev.next_deadline(now).unwrap_or(Nanos::MAX);
                if d != self.deadlines[id] {
                    self.deadlines[id] = d;
                    self.recompute_deadline();
                }
                let a20_on = self.mem.a20_mask() == u64::MAX;
                let quiet = self.irq.changes() == lines
                    && self.msi.is_empty()
                    && self.ctl.a20() == a20_on
                    && !self.ctl.pam_changed();
                if !quiet {
                    self.after_signals();
                }
            }
            _ => self.after_device_activity(),
        }
    }

    /// A20, PAM and SMRAM, MSIs, and the interrupt line, after device activity.
    fn after_signals(&mut self) {
        self.mem.set_a20(self.ctl.a20());
        if self.ctl.take_pam_changed() {
            self.mem.set_pam(self.ctl.pam());
            self.mem.set_smram_open(self.ctl.smram_open());
        }
        for m in std::mem::take(&mut self.msi) {
            self.deliver_msi(m);
        }
        self.update_ioapic();
        self.update_intr();
    }

    /// ISA IRQ `irq`'s I/O APIC pin: IRQ0 (the PIT) is wired to pin 2, the
    /// others to their own.
    /// Pins 16-23 are wired straight to their lines.
    fn ioapic_pins(lines: u32) -> u32 {
        let irq0 = lines & 1;
        (lines & !0b101) | (irq0 << 2)
    }

    /// The I/O APIC samples its pins; what it sends is delivered.
    fn update_ioapic(&mut self) {
        let Some(io) = &mut self.ioapic else {
            return;
        };
        let levels = Self::ioapic_pins(self.irq.all_levels());
        let rising = Self::ioapic_pins(self.irq.take_rising_apic());
        let msgs = io.update(levels, rising);
        self.deliver_ioapic(msgs);
    }

    fn deliver_ioapic(&mut self, msgs: Vec<ioapic::Message>) {
        for m in msgs {
            let ipi = Ipi {
                dest: m.dest,
                logical: m.logical,
                shorthand: 0,
                mode: m.mode,
                vector: m.vector,
                assert: true,
                level: m.level,
            };
            self.deliver_ipi(None, ipi);
        }
    }

    /// INTR as the current CPU sees it: its local APIC's deliverable
    /// interrupt or ExtINT from the 8259, or the 8259 alone without an APIC.
    fn update_intr(&mut self) {
        let pic = self.pic.as_mut().is_some_and(Pic::intr);
        self.intr = match self.lapics.get(self.cur_cpu) {
            Some(l) => l.pending(pic).is_some(),
            None => pic,
        };
    }

    /// An MSI (SDM vol. 3A §11.11): address 0xFEEx_xxxx with the destination
    /// in bits 19:12 and the destination mode in bit 2; data with the vector,
    /// delivery mode and trigger mode. Anything else, or no APIC, is a write
    /// nobody takes: a guest error.
    fn deliver_msi(&mut self, m: Msi) {
        if m.addr >> 20 != 0xFEE || self.lapics.is_empty() {
            self.guest_error(format!(
                "MSI to {:#x} (data {:#x}): no APIC takes it",
                m.addr, m.data
            ));
            return;
        }
        let ipi = Ipi {
            dest: ((m.addr >> 12) & 0xFF) as u32,
            logical: m.addr & 4 != 0,
            shorthand: 0,
            mode: ((m.data >> 8) & 7) as u8,
            vector: m.data as u8,
            assert: true,
            level: m.data & (1 << 15) != 0,
        };
        if self.deliver_ipi(None, ipi) == 0 {
            self.guest_error(format!(
                "MSI to {:#x} (data {:#x}): no CPU with that destination",
                m.addr, m.data
            ));
        }
    }

    /// Delivers an interrupt message to the local APICs it names (`from`:
    /// the sending CPU, for the shorthands). Returns how many took it.
    fn deliver_ipi(&mut self, from: Option<usize>, ipi: Ipi) -> usize {
        let n = self.lapics.len();

        let mut targets: Vec<usize> = match (ipi.shorthand, from) {
            (1, Some(f)) => vec![f],
            (2, _) => (0..n).collect(),
            (3, Some(f)) => (0..n).filter(|&i| i != f).collect(),
            _ => (0..n)
                .filter(|&i| self.lapics[i].is_destination(ipi.dest, ipi.logical))
                .collect(),
        };
        if ipi.mode == lapic::mode::LOWEST && targets.len() > 1 {
            // Lowest priority: the target with the lowest TPR, the lowest
            // index among equals (deterministic).
            let best = targets
                .iter()
                .copied()
                .min_by_key(|&i| (self.lapics[i].tpr(), i));
            targets = best.into_iter().collect();
        }
        for &i in &targets {
            let l = &mut self.lapics[i];
            match ipi.mode {
                lapic::mode::FIXED | lapic::mode::LOWEST => l.accept(ipi.vector, ipi.level),
                lapic::mode::NMI => l.accept_nmi(),
                // An INIT level de-assert does nothing on current CPUs.
                lapic::mode::INIT if ipi.level && !ipi.assert => {}
                lapic::mode::INIT => l.accept_init(),
                lapic::mode::STARTUP => l.accept_sipi(ipi.vector),
                other => {
                    let what = format!("interrupt message with delivery mode {other} dropped");
                    self.guest_error(what);
                }
            }
        }
        targets.len()
    }

    /// After the current CPU's APIC changed: its IPIs go out, its timer's
    /// deadline and INTR are recomputed.
    fn after_apic(&mut self) {
        let from = self.cur_cpu;
        if let Some(l) = self.lapics.get_mut(from) {
            for ipi in l.take_ipis() {
                self.deliver_ipi(Some(from), ipi);
            }
        }
        self.recompute_deadline();
        self.update_intr();
    }

    /// An EOI on the current CPU's APIC; a level-triggered vector's EOI goes
    /// on to the I/O APIC (the EOI broadcast).
    fn apic_eoi(&mut self) {
        let Some(v) = self.lapics.get_mut(self.cur_cpu).and_then(Lapic::eoi) else {
            return;
        };
        if let Some(io) = &mut self.ioapic {
            let msgs = io.eoi(v);
            self.deliver_ioapic(msgs);
        }
    }

    /// Whether `p` is in the I/O APIC's window.
    #[inline]
    fn in_ioapic_window(&self, p: u64) -> bool {
        self.ioapic.is_some() && p & !0xFFF == ioapic::DEFAULT_BASE
    }

    fn ioapic_read(&mut self, p: u64, size: usize) -> u64 {
        self.mmio_accesses += 1;
        let mut buf = [0u8; 8];
        if let Some(io) = &self.ioapic {
            io.mmio_read(p & 0xFFF, &mut buf[..size.clamp(1, 8)]);
        }
        u64::from_le_bytes(buf)
    }

    fn ioapic_write(&mut self, p: u64, size: usize, value: u64) {
        self.mmio_accesses += 1;
        let bytes = value.to_le_bytes();
        let msgs = match &mut self.ioapic {
            Some(io) => io.mmio_write(p & 0xFFF, &bytes[..size.clamp(1, 8)]),
            None => Vec::new(),
        };
        self.deliver_ioapic(msgs);
        self.update_intr();
    }

    /// Whether `p` is in the current CPU's xAPIC page.
    #[inline]
    fn in_apic_page(&self, p: u64) -> bool {
        self.lapics
            .get(self.cur_cpu)
            .and_then(Lapic::mmio_base)
            .is_some_and(|base| p & !0xFFF == base)
    }

    fn apic_read(&mut self, p: u64, size: usize) -> u64 {
        self.mmio_accesses += 1;
        let mut buf = [0u8; 8];
        let now = self.now;
        let size = size.clamp(1, 8);
        self.lapics[self.cur_cpu].mmio_read(p & 0xFFF, &mut buf[..size], now);
        self.after_apic();
        u64::from_le_bytes(buf)
    }

    fn apic_write(&mut self, p: u64, size: usize, value: u64) {
        self.mmio_accesses += 1;
        let now = self.now;
        let bytes = value.to_le_bytes();
        let size = size.clamp(1, 8);
        if self.lapics[self.cur_cpu].mmio_write(p & 0xFFF, &bytes[..size], now) {
            self.apic_eoi();
        }
        self.after_apic();
    }

    /// RDMSR of an APIC MSR by the current CPU: IA32_APIC_BASE (0x1B),
    /// IA32_TSC_DEADLINE (0x6E0) and the x2APIC range (0x800-0x8FF).
    /// `None`: not an APIC MSR (or no APIC); `Some(None)`: #GP(0).
    pub fn apic_rdmsr(&mut self, msr: u32) -> Option<Option<u64>> {
        let now = self.now;
        let l = self.lapics.get(self.cur_cpu)?;
        match msr {
            0x1B => Some(Some(l.base_msr())),
            0x6E0 => Some(Some(l.tsc_deadline())),
            0x800..=0x8FF => Some(l.msr_read(msr, now)),
            _ => None,
        }
    }

    /// WRMSR of an APIC MSR; `tsc` is the CPU's time-stamp counter now (for
    /// IA32_TSC_DEADLINE). `None`: not an APIC MSR; `Some(false)`: #GP(0).
    pub fn apic_wrmsr(&mut self, msr: u32, value: u64, tsc: u64) -> Option<bool> {
        let now = self.now;
        let cur = self.cur_cpu;
        let l = self.lapics.get_mut(cur)?;
        let ok = match msr {
            0x1B => l.set_base_msr(value),
            0x6E0 => {
                l.set_tsc_deadline(value, tsc, now);
                true
            }
            0x80B => {
                let ok = l.msr_write(msr, value, now);
                if ok {
                    self.apic_eoi();
                }
                ok
            }
            0x800..=0x8FF => l.msr_write(msr, value, now),
            _ => return None,
        };
        self.mmio_accesses += 1;
        self.after_apic();
        Some(ok)
    }

    /// The current CPU's task priority, if it has an APIC (CR8 reads it).
    pub fn apic_tpr(&self) -> Option<u8> {
        self.lapics.get(self.cur_cpu).map(Lapic::tpr)
    }

    /// Sets the current CPU's task priority (MOV to CR8); false without an
    /// APIC.
    pub fn set_apic_tpr(&mut self, tpr: u8) -> bool {
        let Some(l) = self.lapics.get_mut(self.cur_cpu) else {
            return false;
        };
        l.set_tpr(tpr);
        self.update_intr();
        true
    }

    /// What CPUID reports of the current CPU's APIC, if it has one: its
    /// initial APIC ID, whether it is globally enabled, and how many CPUs
    /// the package has.
    pub fn apic_identity(&self) -> Option<(u32, bool, u32)> {
        let cpus = self.lapics.len() as u32;
        self.lapics
            .get(self.cur_cpu)
            .map(|l| (l.initial_id(), l.enabled(), cpus))
    }

    /// How many CPUs the machine has: one per local APIC (one without).
    pub fn cpu_count(&self) -> usize {
        self.lapics.len().max(1)
    }

    /// Makes CPU `k` the current one: APIC accesses, CPUID and INTR are its.
    pub fn select_cpu(&mut self, k: usize) {
        self.cur_cpu = k;
        self.update_intr();
    }

    /// Takes an INIT the current CPU's APIC received; its registers go to
    /// their INIT state (the ID kept).
    pub fn take_apic_init(&mut self) -> bool {
        let cur = self.cur_cpu;
        let Some(l) = self.lapics.get_mut(cur) else {
            return false;
        };
        if !l.take_init() {
            return false;
        }
        l.init();
        self.recompute_deadline();
        self.update_intr();
        true
    }

    /// Takes a start-up vector the current CPU's APIC received.
    pub fn take_apic_sipi(&mut self) -> Option<u8> {
        let cur = self.cur_cpu;
        self.lapics.get_mut(cur).and_then(Lapic::take_sipi)
    }

    /// Whether CPU `k` has an event that ends its wait: waiting for SIPI
    /// (`wait_for_sipi`), an INIT or a SIPI; halted, an INIT, an NMI, or (with
    /// `if_set`, its IF) an interrupt its APIC would deliver.
    pub fn cpu_wakes(&mut self, k: usize, if_set: bool, wait_for_sipi: bool) -> bool {
        let pic = k == 0 && self.pic.as_mut().is_some_and(Pic::intr);
        let Some(l) = self.lapics.get(k) else {
            return if_set && pic;
        };
        if wait_for_sipi {
            return l.init_pending() || l.sipi_pending();
        }
        l.init_pending() || l.nmi_pending() || (if_set && l.pending(pic).is_some())
    }

    /// Whether the current CPU's local APIC holds an NMI the run loop has
    /// not taken yet ([`Machine::take_apic_nmi`]; nothing is taken here).
    pub fn apic_nmi_pending(&self) -> bool {
        self.lapics
            .get(self.cur_cpu)
            .is_some_and(Lapic::nmi_pending)
    }

    /// Takes an NMI the current CPU's APIC received (an NMI IPI or message).
    pub fn take_apic_nmi(&mut self) -> bool {
        self.lapics
            .get_mut(self.cur_cpu)
            .is_some_and(Lapic::take_nmi)
    }

    /// The calling device's map requests, applied; a refused one is a guest
    /// error and leaves the region unmapped.
    fn apply_requests(&mut self, id: DeviceId) {
        for e in std::mem::take(&mut self.device_errors) {
            self.guest_error(e);
        }
        if self.requests.is_empty() {
            return;
        }
        for (target, r) in std::mem::take(&mut self.requests) {
            let id = target.unwrap_or(id);
            let owner = Owner::Device(id);
            let result = match r {
                MapRequest::Ports {
                    region,
                    first,
                    last,
                } => self.ports.remap(owner, region, first, last),
                MapRequest::Mmio {
                    region,
                    first,
                    last,
                } => self.mmio.remap(owner, region, first, last),
                MapRequest::UnmapPorts(region) => {
                    self.ports.unmap(owner, region);
                    Ok(())
                }
                MapRequest::UnmapMmio(region) => {
                    self.mmio.unmap(owner, region);
                    Ok(())
                }
            };
            if let Err(e) = result {
                let name = self.devices[id].name();
                self.guest_error(format!("{name}: mapping refused, left unmapped: {e}"));
            }
        }
    }

    /// Records a guest error (kept for [`Machine::take_guest_errors`]).
    pub fn guest_error(&mut self, what: String) {
        if self.guest_errors.len() >= GUEST_ERRORS_KEPT {
            self.guest_errors.remove(0);
        }
        self.guest_errors.push(what);
    }

    /// The guest errors recorded since the last call.
    pub fn take_guest_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.guest_errors)
    }

    /// Whether the interrupt controller asserts INTR to the CPU.
    #[inline]
    pub fn intr(&self) -> bool {
        self.intr
    }

    /// The INTA cycle: the vector of the interrupt being delivered, from the
    /// current CPU's APIC or, through ExtINT (or without an APIC), the 8259.
    pub fn acknowledge_interrupt(&mut self) -> Option<u8> {
        let pic_intr = self.pic.as_mut().is_some_and(Pic::intr);
        let cur = self.cur_cpu;
        let vector = match self.lapics.get(cur).map(|l| l.pending(pic_intr)) {
            Some(Some(Pending::Vector(v))) => {
                self.lapics[cur].acknowledge(v);
                Some(v)
            }
            Some(None) => None,
            Some(Some(Pending::ExtInt)) | None => self.pic.as_mut().map(Pic::acknowledge),
        };
        self.update_intr();
        vector
    }

    /// A read of `size` bytes (1, 2, 4 or 8) through `m` at `addr`.
    fn bus_read(&mut self, m: Mapping, addr: u64, size: usize) -> u64 {
        let mut buf = [0xFFu8; 8];
        let size = size.clamp(1, 8);
        let off = addr.wrapping_sub(m.base);
        match m.owner {
            Owner::Pic => {
                if let Some(pic) = &mut self.pic {
                    pic.port_read(off as u16, &mut buf[..size]);
                }
                self.update_intr();
            }
            Owner::Device(id) => {
                let mut ctx = DevCtx::new(
                    self.now,
                    &mut self.mem,
                    &mut self.msi,
                    &mut self.requests,
                    &mut self.device_errors,
                );
                let lines = self.irq.changes();
                self.devices[id].read(&mut ctx, m.region, off, &mut buf[..size]);
                self.apply_requests(id);
                self.after_access(id, lines);
            }
        }
        u64::from_le_bytes(buf) & size_mask(size)
    }

    /// A write of the low `size` bytes of `value` through `m` at `addr`.
    fn bus_write(&mut self, m: Mapping, addr: u64, size: usize, value: u64) {
        let size = size.clamp(1, 8);
        let bytes = value.to_le_bytes();
        let off = addr.wrapping_sub(m.base);
        match m.owner {
            Owner::Pic => {
                if let Some(pic) = &mut self.pic {
                    pic.port_write(off as u16, &bytes[..size]);
                }
                self.update_intr();
            }
            Owner::Device(id) => {
                let mut ctx = DevCtx::new(
                    self.now,
                    &mut self.mem,
                    &mut self.msi,
                    &mut self.requests,
                    &mut self.device_errors,
                );
                let lines = self.irq.changes();
                self.devices[id].write(&mut ctx, m.region, off, &bytes[..size]);
                self.apply_requests(id);
                self.after_access(id, lines);
            }
        }
    }

    /// An IN of `size` bytes (1, 2 or 4); a port nobody claims reads all ones.
    pub fn io_read(&mut self, port: u16, size: usize) -> u32 {
        let size = size.min(4);
        match self.ports.find(port) {
            Some(m) => {
                let before = self.attention_marks();
                let v = self.bus_read(m, u64::from(port), size) as u32;
                self.note_attention(before);
                v
            }
            None => size_mask(size) as u32,
        }
    }

    /// An OUT of `size` bytes; a port nobody claims drops it.
    pub fn io_write(&mut self, port: u16, size: usize, value: u32) {
        if let Some(m) = self.ports.find(port) {
            let before = self.attention_marks();
            self.bus_write(m, u64::from(port), size.min(4), u64::from(value));
            self.note_attention(before);
        }
    }

    /// What a device access may change that the run loop reads: the device
    /// deadline and the memory map's epoch.
    fn attention_marks(&self) -> (Nanos, u64) {
        (self.deadline, self.mem.host_epoch())
    }

    /// After a port access: whether the run loop must look before the next
    /// instruction, because the access raised INTR, asked for a reset, an
    /// exit or power-off, brought a device deadline nearer (the run loop's
    /// horizon was worked out from the old one) or changed the memory map
    /// (A20, PAM).
    fn note_attention(&mut self, (deadline, epoch): (Nanos, u64)) {
        self.port_attention |= self.intr
            || self.deadline < deadline
            || self.mem.host_epoch() != epoch
            || self.ctl.requested();
    }

    /// Whether a port access since the last call wants the run loop to look
    /// before the CPU's next instruction (see [`Machine::io_read`]); clears
    /// the mark. An instruction that does port I/O need not end its unit when
    /// this is false: nothing the run loop checks has changed.
    #[inline]
    pub fn take_port_attention(&mut self) -> bool {
        std::mem::take(&mut self.port_attention)
    }

    /// Marks the run loop as wanted before the CPU's next instruction, as a
    /// port access that changed what it checks does: STI or POPF made an
    /// interrupt deliverable, or POPF set TF.
    #[inline]
    pub fn request_attention(&mut self) {
        self.port_attention = true;
    }

    /// Whether a port access marked the run loop as wanted, without clearing it.
    #[inline]
    pub fn port_attention(&self) -> bool {
        self.port_attention
    }

    /// A read of guest-physical memory by the CPU (1, 2, 4 or 8 bytes, within
    /// one page): RAM or ROM, else the device mapped there, else all ones.
    pub fn read_phys(&mut self, p: GuestPhys, size: usize) -> u64 {
        self.read_phys_at(p, size, None)
    }

    /// As [`Machine::read_phys`], by the instruction with `icount` (if
    /// given): a device that answers sees the clock brought to that
    /// instruction first ([`Machine::sync_clock`]).
    pub fn read_phys_at(&mut self, p: GuestPhys, size: usize, icount: Option<u64>) -> u64 {
        if self.in_apic_page(p.0) {
            self.sync_clock_at(icount);
            return self.apic_read(p.0, size);
        }
        if self.in_ioapic_window(p.0) {
            self.sync_clock_at(icount);
            return self.ioapic_read(p.0, size);
        }
        if self.mem.is_mapped(p) {
            return match size {
                1 => u64::from(self.mem.read_u8(p)),
                2 => u64::from(u16::from_le_bytes(self.mem.read::<2>(p))),
                4 => u64::from(u32::from_le_bytes(self.mem.read::<4>(p))),
                _ => u64::from_le_bytes(self.mem.read::<8>(p)),
            };
        }
        match self.mmio.find(p.0) {
            Some(m) => {
                self.mmio_accesses += 1;
                self.sync_clock_at(icount);
                self.bus_read(m, p.0, size)
            }
            None => size_mask(size),
        }
    }

    fn sync_clock_at(&mut self, icount: Option<u64>) {
        if let Some(i) = icount {
            self.sync_clock(i);
        }
    }

    /// Whether a device answers at `p` (the current CPU's APIC page, the I/O
    /// APIC's window, or a memory-mapped range on the bus), where neither RAM
    /// nor ROM does.
    pub fn is_mmio(&self, p: GuestPhys) -> bool {
        self.in_apic_page(p.0) || self.in_ioapic_window(p.0) || self.mmio.find(p.0).is_some()
    }

    /// A write of guest-physical memory by the CPU: RAM (ROM drops it), else
    /// the device mapped there, else nowhere.
    pub fn write_phys(&mut self, p: GuestPhys, size: usize, value: u64) {
        self.write_phys_at(p, size, value, None);
    }

    /// As [`Machine::write_phys`], by the instruction with `icount` (see
    /// [`Machine::read_phys_at`]).
    pub fn write_phys_at(&mut self, p: GuestPhys, size: usize, value: u64, icount: Option<u64>) {
        if self.in_apic_page(p.0) {
            self.sync_clock_at(icount);
            self.apic_write(p.0, size, value);
            return;
        }
        if self.in_ioapic_window(p.0) {
            self.sync_clock_at(icount);
            self.ioapic_write(p.0, size, value);
            return;
        }
        if self.mem.is_mapped(p) {
            match size {
                1 => self.mem.write_u8(p, value as u8),
                2 => self.mem.write::<2>(p, (value as u16).to_le_bytes()),
                4 => self.mem.write::<4>(p, (value as u32).to_le_bytes()),
                _ => self.mem.write::<8>(p, value.to_le_bytes()),
            }
            return;
        }
        if let Some(m) = self.mmio.find(p.0) {
            self.mmio_accesses += 1;
            self.sync_clock_at(icount);
            self.bus_write(m, p.0, size, value);
        }
    }

    /// Whether a read of `p` reaches anything: RAM, ROM or a device.
    pub fn is_assigned(&self, p: GuestPhys) -> bool {
        self.mem.is_mapped(p) || self.mmio.find(p.0).is_some()
    }

    /// The CPU asserts FERR# (an unmasked x87 exception with CR0.NE clear): the
    /// chipset latches IRQ 13 until port 0xF0 is written
    /// ([`crate::devices::fpu_error`]).
    pub fn assert_ferr(&mut self) {
        self.irq
            .line(crate::devices::fpu_error::FERR_IRQ)
            .set_level(true);
        self.after_device_activity();
    }

    /// Whether the guest has asked to end the run (debug exit) or reset.
    pub fn stop_requested(&self) -> bool {
        self.ctl.exit_status().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with one 16-byte register file, answering wherever it is
    /// mapped; a write to offset 0xF asks for its region 0 to move to the
    /// MMIO address in the written byte's page (0x1000 * value), and a write
    /// to offset 0xE DMAs the register file to guest address 0.
    struct Regs {
        r: [u8; 16],
    }

    impl Device for Regs {
        fn name(&self) -> &'static str {
            "regs"
        }
        crate::state_methods!(stateless);
        fn read(&mut self, _ctx: &mut DevCtx, region: u8, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.r[(offset as usize + i) % 16] ^ region;
            }
        }
        fn write(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &[u8]) {
            match offset {
                0xF => {
                    let first = 0x1000 * u64::from(data[0]);
                    ctx.request(MapRequest::Mmio {
                        region: 0,
                        first,
                        last: first + 0xFFF,
                    });
                }
                0xE => ctx.dma_write(GuestPhys(0), &self.r),
                _ => {
                    for (i, &b) in data.iter().enumerate() {
                        self.r[(offset as usize + i) % 16] = b;
                    }
                }
            }
        }
    }

    fn machine() -> (Machine, DeviceId) {
        // 64 KiB of RAM: MMIO above it.
        let mut m = Machine::flat(1 << 16).expect("machine");
        let id = m.add_device(Box::new(Regs { r: [0; 16] }));
        m.map_mmio(0x2_0000, 0x2_0FFF, 0x2_0000, Owner::Device(id), 0)
            .expect("mmio");
        m.map_ports(0x100, 0x10F, 0x100, Owner::Device(id), 1)
            .expect("ports");
        (m, id)
    }

    #[test]
    fn cpu_accesses_reach_mmio_where_there_is_no_ram() {
        let (mut m, _) = machine();
        m.write_phys(GuestPhys(0x2_0004), 4, 0xDEAD_BEEF);
        assert_eq!(m.read_phys(GuestPhys(0x2_0004), 4), 0xDEAD_BEEF);
        assert_eq!(m.read_phys(GuestPhys(0x2_0006), 2), 0xDEAD);
        // The same device through its port region (region 1 XORs each byte).
        assert_eq!(m.io_read(0x104, 2), 0xBEEF ^ 0x0101);
        // Nothing mapped: all ones, and the write is dropped.
        m.write_phys(GuestPhys(0x3_0000), 4, 0);
        assert_eq!(m.read_phys(GuestPhys(0x3_0000), 4), 0xFFFF_FFFF);
        assert_eq!(m.read_phys(GuestPhys(0x3_0000), 8), u64::MAX);
        // RAM is RAM.
        m.write_phys(GuestPhys(0x100), 2, 0x1234);
        assert_eq!(m.mem.read::<2>(GuestPhys(0x100)), [0x34, 0x12]);
    }

    #[test]
    fn a_device_moves_its_own_mmio_region_and_a_collision_is_a_guest_error() {
        let (mut m, id) = machine();
        m.write_phys(GuestPhys(0x2_0000), 1, 0x5A);
        m.write_phys(GuestPhys(0x2_000F), 1, 0x40); // to 0x40000
        assert_eq!(m.read_phys(GuestPhys(0x2_0000), 1), 0xFF, "old window gone");
        assert_eq!(m.read_phys(GuestPhys(0x4_0000), 1), 0x5A, "new window");
        assert!(m.take_guest_errors().is_empty());
        // A second device at 0x50000; moving onto it is refused, no panic.
        let other = m.add_device(Box::new(Regs { r: [7; 16] }));
        m.map_mmio(0x5_0000, 0x5_0FFF, 0x5_0000, Owner::Device(other), 0)
            .expect("other");
        m.write_phys(GuestPhys(0x4_000F), 1, 0x50);
        let errors = m.take_guest_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("overlaps"), "{errors:?}");
        assert_eq!(
            m.read_phys(GuestPhys(0x5_0000), 1),
            7,
            "the other keeps its range"
        );
        assert_eq!(
            m.read_phys(GuestPhys(0x4_0000), 1),
            0xFF,
            "the mover is unmapped"
        );
        let _ = id;
    }

    #[test]
    fn dma_onto_cached_code_queues_its_page_for_invalidation() {
        let (mut m, _) = machine();
        assert!(m.mem.mark_code(GuestPhys(4), 2));
        m.write_phys(GuestPhys(0x2_0004), 1, 0x90);
        // DMA of the register file to address 0 covers the code bytes.
        m.write_phys(GuestPhys(0x2_000E), 1, 0);
        assert!(m.mem.code_write_pending);
        assert_eq!(m.mem.take_dirty_code_pages(), vec![0]);
        assert_eq!(m.mem.read_u8(GuestPhys(4)), 0x90);
    }

    fn with_apic() -> Machine {
        let mut m = Machine::flat(1 << 16).expect("machine");
        m.lapics.push(Lapic::new(0, true));
        // Software-enable it (SVR bit 8, spurious vector 0xFF).
        m.write_phys(GuestPhys(0xFEE0_00F0), 4, 0x1FF);
        m
    }

    #[test]
    fn the_apic_page_answers_for_the_current_cpu_and_moves_with_its_msr() {
        let mut m = with_apic();
        assert_eq!(m.read_phys(GuestPhys(0xFEE0_0030), 4), 0x0005_0014);
        assert_eq!(
            m.apic_rdmsr(0x1B),
            Some(Some(0xFEE0_0000 | (1 << 11) | (1 << 8)))
        );
        assert_eq!(m.apic_wrmsr(0x1B, 0xFED0_0000 | (1 << 11), 0), Some(true));
        assert_eq!(m.read_phys(GuestPhys(0xFED0_0030), 4), 0x0005_0014);
        assert_eq!(
            m.read_phys(GuestPhys(0xFEE0_0030), 4),
            0xFFFF_FFFF,
            "old page"
        );
        assert_eq!(
            m.apic_wrmsr(0x1B, 1 << 63, 0),
            Some(false),
            "reserved bit: #GP"
        );
        assert_eq!(m.apic_rdmsr(0x10), None, "not an APIC MSR");
        let mut bare = Machine::flat(1 << 16).expect("machine");
        assert_eq!(bare.apic_rdmsr(0x1B), None, "no APIC: the CPU's own #GP");
    }

    #[test]
    fn the_apic_timer_interrupts_through_the_machine_and_eoi_retires_it() {
        let mut m = with_apic();
        m.write_phys(GuestPhys(0xFEE0_03E0), 4, 0xB); // divide by 1
        m.write_phys(GuestPhys(0xFEE0_0320), 4, 0x40); // one-shot, vector 0x40
        m.write_phys(GuestPhys(0xFEE0_0380), 4, 1000);
        assert_eq!(m.next_deadline(), Some(1000));
        m.set_time(999);
        assert!(!m.intr());
        m.set_time(1000);
        assert!(m.intr());
        assert_eq!(m.acknowledge_interrupt(), Some(0x40));
        assert!(!m.intr(), "in service now");
        assert_eq!(
            m.read_phys(GuestPhys(0xFEE0_0100 + 0x20), 4),
            1,
            "ISR bit 0x40"
        );
        m.write_phys(GuestPhys(0xFEE0_00B0), 4, 0);
        assert_eq!(m.read_phys(GuestPhys(0xFEE0_0120), 4), 0, "EOI retired it");
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn a_self_ipi_and_an_msi_reach_the_cpu_and_cr8_masks_by_class() {
        let mut m = with_apic();
        // ICR: fixed, vector 0x51, shorthand self.
        m.write_phys(GuestPhys(0xFEE0_0300), 4, (1 << 18) | 0x51);
        assert!(m.intr());
        assert!(m.set_apic_tpr(0x50), "CR8 = 5");
        assert!(!m.intr(), "class 5 is not above the TPR's class");
        assert!(m.set_apic_tpr(0));
        assert_eq!(m.acknowledge_interrupt(), Some(0x51));
        m.write_phys(GuestPhys(0xFEE0_00B0), 4, 0);
        // A device's MSI to APIC ID 0, vector 0x62; one to a missing APIC.
        let id = m.add_device(Box::new(MsiSender));
        m.map_ports(0x200, 0x200, 0x200, Owner::Device(id), 0)
            .expect("port");
        m.io_write(0x200, 1, 0x62);
        assert_eq!(m.acknowledge_interrupt(), Some(0x62));
        m.io_write(0x200, 1, 0x80 | 0x63);
        let errors = m.take_guest_errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("no CPU"), "{errors:?}");
        assert!(!m.intr());
    }

    /// Sends an MSI with the written byte's low 7 bits as vector, to APIC ID
    /// 0, or to APIC ID 5 (absent) when bit 7 is set.
    struct MsiSender;

    impl Device for MsiSender {
        fn name(&self) -> &'static str {
            "msi-sender"
        }
        crate::state_methods!(stateless);
        fn read(&mut self, _ctx: &mut DevCtx, _region: u8, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, ctx: &mut DevCtx, _region: u8, _offset: u64, data: &[u8]) {
            let dest = if data[0] & 0x80 != 0 { 5 } else { 0 };
            ctx.send_msi(Msi {
                addr: 0xFEE0_0000 | (dest << 12),
                data: u32::from(data[0] & 0x7F),
            });
        }
    }
}
