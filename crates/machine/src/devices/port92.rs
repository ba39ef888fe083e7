//! System control port A (port 0x92), from the IBM PS/2: the "fast A20" gate and the
//! fast CPU reset. Mapped with base 0x92, so its one register is at offset 0.
//!
//! Invariants:
//! - Bit 1 reads back the live A20 gate from [`SystemControl`], whichever device last
//!   set it. Real chipsets OR this bit with the keyboard controller's A20 output; this
//!   model shares one gate, so the last writer wins.
//! - Bit 0 reads back as last written. Only a 0-to-1 change requests a reset, so a
//!   guest that leaves it set does not reset again on every write.
//! - Bits 2-7 (the disk-activity LED, CMOS lock and watchdog status on real machines)
//!   are stored and read back but drive nothing.

use std::rc::Rc;

use crate::device::{Device, Nanos, SystemControl};

/// The only register, at port 0x92.
const PORT_A: u16 = 0;
/// Bit 0: fast reset; writing 1 after 0 pulses the CPU reset line.
const FAST_RESET: u8 = 0x01;
/// Bit 1: A20 gate; 1 passes address line 20.
const A20_ENABLE: u8 = 0x02;

/// PS/2 system control port A.
pub struct Port92 {
    ctl: Rc<SystemControl>,
    /// The byte last written; bit 1 is replaced by the live gate when read.
    value: u8,
}

impl Port92 {
    /// The port in its power-on state (all written bits zero), driving `ctl`.
    pub fn new(ctl: Rc<SystemControl>) -> Self {
        Self { ctl, value: 0 }
    }

    fn read_port_a(&self) -> u8 {
        let a20 = if self.ctl.a20() { A20_ENABLE } else { 0 };
        (self.value & !A20_ENABLE) | a20
    }

    fn write_port_a(&mut self, value: u8) {
        let rising = !self.value & value & FAST_RESET != 0;
        self.value = value;
        self.ctl.set_a20(value & A20_ENABLE != 0);
        if rising {
            self.ctl.request_reset("port 0x92 (fast reset)");
        }
    }
}

impl Port92 {
    /// Only the byte at offset 0 is driven; any wider part reads 0xFF.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
        if let (PORT_A, Some(first)) = (offset, data.first_mut()) {
            *first = self.read_port_a();
        }
    }

    /// Only the first byte is taken; the rest would belong to the next port up.
    pub fn port_write(&mut self, offset: u16, data: &[u8], _now: Nanos) {
        if let (PORT_A, Some(&value)) = (offset, data.first()) {
            self.write_port_a(value);
        }
    }
}

impl Device for Port92 {
    fn name(&self) -> &'static str {
        "port92"
    }

    crate::port_device_methods!();

    fn reset(&mut self) {
        self.value = 0;
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        let Self { ctl: _, value } = self;
        Ok(crate::snapshot::DeviceState::Port92(*value))
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        let crate::snapshot::DeviceState::Port92(v) = state else {
            return Err(crate::snapshot::wrong_kind(self.name(), state));
        };
        self.value = *v;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(port: &mut Port92) -> u8 {
        let mut data = [0u8];
        port.port_read(PORT_A, &mut data, 0);
        data[0]
    }

    fn write(port: &mut Port92, value: u8) {
        port.port_write(PORT_A, &[value], 0);
    }

    #[test]
    fn port92_read_bit1_reflects_a20_gate() {
        let ctl = SystemControl::new();
        let mut port = Port92::new(Rc::clone(&ctl));

        let open = read(&mut port);
        ctl.set_a20(false);
        let closed = read(&mut port);

        assert_eq!((open, closed), (0x02, 0x00));
    }

    #[test]
    fn port92_write_bit1_drives_a20_gate() {
        let ctl = SystemControl::new();
        let mut port = Port92::new(Rc::clone(&ctl));

        write(&mut port, 0x00);
        let after_clear = ctl.a20();
        write(&mut port, 0x02);

        assert!(!after_clear);
        assert!(ctl.a20());
        assert!(ctl.take_reset().is_none());
    }

    #[test]
    fn port92_bit0_rising_requests_reset() {
        let ctl = SystemControl::new();
        let mut port = Port92::new(Rc::clone(&ctl));

        write(&mut port, 0x03);

        assert!(ctl.take_reset().is_some());
    }

    #[test]
    fn port92_bit0_held_high_does_not_reset_again() {
        let ctl = SystemControl::new();
        let mut port = Port92::new(Rc::clone(&ctl));
        write(&mut port, 0x01);
        ctl.take_reset();

        write(&mut port, 0x03);

        assert!(ctl.take_reset().is_none());
    }

    #[test]
    fn port92_bit0_reads_back_as_written() {
        let ctl = SystemControl::new();
        let mut port = Port92::new(Rc::clone(&ctl));

        write(&mut port, 0x03);

        assert_eq!(read(&mut port), 0x03);
    }

    #[test]
    fn port92_reset_clears_bit0_so_next_set_resets_again() {
        let ctl = SystemControl::new();
        let mut port = Port92::new(Rc::clone(&ctl));
        write(&mut port, 0x03);
        ctl.take_reset();

        port.reset();
        write(&mut port, 0x03);

        assert!(ctl.take_reset().is_some());
    }

    #[test]
    fn port92_other_offsets_read_ff() {
        let ctl = SystemControl::new();
        let mut port = Port92::new(ctl);
        let mut data = [0u8; 2];

        port.port_read(PORT_A, &mut data, 0);

        assert_eq!(data, [0x02, 0xFF]);
    }
}
