//! The assembled platform: memory, the port bus with its devices, the IRQ lines,
//! the system-control signals and the virtual clock.
//!
//! Time is virtual. The run loop calls [`Machine::set_time`] with the guest time
//! derived from retired instructions; devices are only advanced when the earliest
//! device deadline has passed, or when the guest touches a port. That keeps runs
//! deterministic and the per-unit cost to one compare.

use crate::bus::{DeviceId, PortBus};
use crate::device::{IrqLines, Nanos, SystemControl};
use crate::error::MachineError;
use crate::memory::{MemoryLayout, PhysMemory};
use std::rc::Rc;

/// The whole machine below the CPU.
pub struct Machine {
    /// Guest-physical memory.
    pub mem: PhysMemory,
    /// The I/O port space.
    pub ports: PortBus,
    /// A20, reset, debug exit.
    pub ctl: Rc<SystemControl>,
    /// The 16 ISA IRQ lines.
    pub irq: Rc<IrqLines>,
    pic: Option<DeviceId>,
    now: Nanos,
    deadline: Nanos,
    /// Each device's own next deadline, as last computed (`Nanos::MAX`: none).
    /// A port access can only move the deadline of the device accessed.
    deadlines: Vec<Nanos>,
    intr: bool,
}

impl Machine {
    /// A machine with `mem` and no devices; [`Machine::attach_pic`] and the bus
    /// complete it.
    pub fn with_memory(mem: PhysMemory) -> Self {
        Self {
            mem,
            ports: PortBus::new(),
            ctl: SystemControl::new(),
            irq: IrqLines::new(),
            pic: None,
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

    /// Declares which device is the interrupt controller the CPU acknowledges.
    pub fn attach_pic(&mut self, id: DeviceId) {
        self.pic = Some(id);
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
        let now = self.now;
        for d in self.ports.devices_mut() {
            d.advance(now);
        }
        self.after_device_activity();
    }

    fn after_device_activity(&mut self) {
        let now = self.now;
        self.deadlines.clear();
        self.deadlines.extend(
            self.ports
                .devices_mut()
                .iter()
                .map(|d| d.next_deadline(now).unwrap_or(Nanos::MAX)),
        );
        self.deadline = self.deadlines.iter().copied().min().unwrap_or(Nanos::MAX);
        self.after_signals();
    }

    /// After an access to device `id` alone: its deadline, then the signals.
    fn after_access(&mut self, id: DeviceId) {
        let now = self.now;
        let n = self.ports.devices_mut().len();
        match (self.deadlines.len() == n, self.ports.device_mut(id)) {
            (true, Some(dev)) => {
                self.deadlines[id] = dev.next_deadline(now).unwrap_or(Nanos::MAX);
                self.deadline = self.deadlines.iter().copied().min().unwrap_or(Nanos::MAX);
                self.after_signals();
            }
            _ => self.after_device_activity(),
        }
    }

    /// A20, PAM and SMRAM, and the interrupt line, after device activity.
    fn after_signals(&mut self) {
        self.mem.set_a20(self.ctl.a20());
        if self.ctl.take_pam_changed() {
            self.mem.set_pam(self.ctl.pam());
            self.mem.set_smram_open(self.ctl.smram_open());
        }
        self.intr = self.poll_pic();
    }

    fn poll_pic(&mut self) -> bool {
        let Some(id) = self.pic else { return false };
        let Some(dev) = self.ports.device_mut(id) else {
            return false;
        };
        dev.as_any_mut()
            .downcast_mut::<crate::devices::pic::Pic>()
            .is_some_and(|pic| pic.intr())
    }

    /// Whether the interrupt controller asserts INTR to the CPU.
    #[inline]
    pub fn intr(&self) -> bool {
        self.intr
    }

    /// The INTA cycle: the vector of the interrupt being delivered.
    pub fn acknowledge_interrupt(&mut self) -> Option<u8> {
        let id = self.pic?;
        let dev = self.ports.device_mut(id)?;
        let vector = dev
            .as_any_mut()
            .downcast_mut::<crate::devices::pic::Pic>()
            .map(|pic| pic.acknowledge());
        self.intr = self.poll_pic();
        vector
    }

    /// An IN of `size` bytes.
    pub fn io_read(&mut self, port: u16, size: usize) -> u32 {
        let (v, dev) = self.ports.read_from(port, size, self.now);
        if let Some(id) = dev {
            self.after_access(id);
        }
        v
    }

    /// An OUT of `size` bytes.
    pub fn io_write(&mut self, port: u16, size: usize, value: u32) {
        if let Some(id) = self.ports.write(port, size, value, self.now) {
            self.after_access(id);
        }
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
