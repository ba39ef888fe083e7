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
use crate::devices::pic::Pic;
use crate::error::MachineError;
use crate::memory::{MemoryLayout, PhysMemory};
use std::rc::Rc;

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
    /// A20, reset, debug exit.
    pub ctl: Rc<SystemControl>,
    /// The 16 ISA IRQ lines.
    pub irq: Rc<IrqLines>,
    /// MSIs sent by devices, not yet delivered.
    msi: Vec<Msi>,
    /// Map requests of the device call in progress.
    requests: Vec<MapRequest>,
    /// Guest errors (a BAR programmed onto another range, an MSI nobody
    /// takes), for the run loop to report; the oldest are dropped past
    /// [`GUEST_ERRORS_KEPT`].
    guest_errors: Vec<String>,
    now: Nanos,
    deadline: Nanos,
    /// Each device's own next deadline, as last computed (`Nanos::MAX`: none).
    /// An access can only move the deadline of the device accessed.
    deadlines: Vec<Nanos>,
    intr: bool,
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
            ctl: SystemControl::new(),
            irq: IrqLines::new(),
            msi: Vec::new(),
            requests: Vec::new(),
            guest_errors: Vec::new(),
            now: 0,
            deadline: Nanos::MAX,
            deadlines: Vec::new(),
            intr: false,
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
        for id in 0..self.devices.len() {
            let mut ctx = DevCtx::new(self.now, &mut self.mem, &mut self.msi, &mut self.requests);
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
        self.deadline = self.deadlines.iter().copied().min().unwrap_or(Nanos::MAX);
        self.after_signals();
    }

    /// After an access to device `id` alone: its deadline, then the signals.
    fn after_access(&mut self, id: DeviceId) {
        let now = self.now;
        match (
            self.deadlines.len() == self.devices.len(),
            self.devices.get(id),
        ) {
            (true, Some(dev)) => {
                self.deadlines[id] = dev.next_deadline(now).unwrap_or(Nanos::MAX);
                self.deadline = self.deadlines.iter().copied().min().unwrap_or(Nanos::MAX);
                self.after_signals();
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
            // No local APIC takes messages on this platform yet: the write
            // goes nowhere, as a memory write nobody claims does.
            self.guest_error(format!(
                "MSI to {:#x} (data {:#x}) with no APIC to take it",
                m.addr, m.data
            ));
        }
        self.intr = self.pic.as_mut().is_some_and(Pic::intr);
    }

    /// The calling device's map requests, applied; a refused one is a guest
    /// error and leaves the region unmapped.
    fn apply_requests(&mut self, id: DeviceId) {
        if self.requests.is_empty() {
            return;
        }
        let owner = Owner::Device(id);
        for r in std::mem::take(&mut self.requests) {
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

    /// The INTA cycle: the vector of the interrupt being delivered.
    pub fn acknowledge_interrupt(&mut self) -> Option<u8> {
        let pic = self.pic.as_mut()?;
        let vector = pic.acknowledge();
        self.intr = pic.intr();
        Some(vector)
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
                self.intr = self.pic.as_mut().is_some_and(Pic::intr);
            }
            Owner::Device(id) => {
                let mut ctx =
                    DevCtx::new(self.now, &mut self.mem, &mut self.msi, &mut self.requests);
                self.devices[id].read(&mut ctx, m.region, off, &mut buf[..size]);
                self.apply_requests(id);
                self.after_access(id);
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
                self.intr = self.pic.as_mut().is_some_and(Pic::intr);
            }
            Owner::Device(id) => {
                let mut ctx =
                    DevCtx::new(self.now, &mut self.mem, &mut self.msi, &mut self.requests);
                self.devices[id].write(&mut ctx, m.region, off, &bytes[..size]);
                self.apply_requests(id);
                self.after_access(id);
            }
        }
    }

    /// An IN of `size` bytes (1, 2 or 4); a port nobody claims reads all ones.
    pub fn io_read(&mut self, port: u16, size: usize) -> u32 {
        let size = size.min(4);
        match self.ports.find(port) {
            Some(m) => self.bus_read(m, u64::from(port), size) as u32,
            None => size_mask(size) as u32,
        }
    }

    /// An OUT of `size` bytes; a port nobody claims drops it.
    pub fn io_write(&mut self, port: u16, size: usize, value: u32) {
        if let Some(m) = self.ports.find(port) {
            self.bus_write(m, u64::from(port), size.min(4), u64::from(value));
        }
    }

    /// A read of guest-physical memory by the CPU (1, 2, 4 or 8 bytes, within
    /// one page): RAM or ROM, else the device mapped there, else all ones.
    pub fn read_phys(&mut self, p: GuestPhys, size: usize) -> u64 {
        if self.mem.is_mapped(p) {
            return match size {
                1 => u64::from(self.mem.read_u8(p)),
                2 => u64::from(u16::from_le_bytes(self.mem.read::<2>(p))),
                4 => u64::from(u32::from_le_bytes(self.mem.read::<4>(p))),
                _ => u64::from_le_bytes(self.mem.read::<8>(p)),
            };
        }
        match self.mmio.find(p.0) {
            Some(m) => self.bus_read(m, p.0, size),
            None => size_mask(size),
        }
    }

    /// A write of guest-physical memory by the CPU: RAM (ROM drops it), else
    /// the device mapped there, else nowhere.
    pub fn write_phys(&mut self, p: GuestPhys, size: usize, value: u64) {
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
}
