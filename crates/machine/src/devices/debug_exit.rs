//! QEMU's `isa-debug-exit` device as test guests expect it at `iobase=0xf4,iosize=4`:
//! a write ends the run with status `(value << 1) | 1`, so a guest can report success
//! or failure to the host and no guest value can produce status 0. Mapped with base
//! 0xF4, so offsets are 0-3.
//!
//! Invariants:
//! - The value is the bytes written, zero-extended little-endian. As in QEMU, the
//!   offset within the 4-byte window does not matter; any write in it exits.
//! - The status is computed in 64 bits and truncated to `i32`, so a 32-bit value with
//!   bit 31 set loses that bit (the host OS keeps only the low 8 bits anyway).
//! - The device only records the request in [`SystemControl`]; the run loop stops.

use std::rc::Rc;

use crate::device::{Device, Nanos, SystemControl};

/// Size of the port window (QEMU's `iosize`).
const IOSIZE: u16 = 4;

/// The debug-exit port.
pub struct DebugExit {
    ctl: Rc<SystemControl>,
}

impl DebugExit {
    /// A debug-exit port that asks `ctl` to end the run.
    pub fn new(ctl: Rc<SystemControl>) -> Self {
        Self { ctl }
    }
}

impl DebugExit {
    /// Nothing is driven: all bytes read 0xFF.
    pub fn port_read(&mut self, _offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
    }

    /// Writes the register at port offset `offset` (the trait's `write`).
    pub fn port_write(&mut self, offset: u16, data: &[u8], _now: Nanos) {
        if offset >= IOSIZE || data.is_empty() {
            return;
        }
        let value = data
            .iter()
            .take(8)
            .rev()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        // Truncation to i32 is the documented behaviour for wide values.
        let status = ((value << 1) | 1) as i32;
        self.ctl.request_exit(status);
    }
}

impl Device for DebugExit {
    fn name(&self) -> &'static str {
        "isa-debug-exit"
    }

    crate::port_device_methods!();

    crate::state_methods!(stateless);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rig() -> (DebugExit, Rc<SystemControl>) {
        let ctl = SystemControl::new();
        (DebugExit::new(Rc::clone(&ctl)), ctl)
    }

    #[test]
    fn debug_exit_byte_write_requests_twice_value_plus_one() {
        let (mut dev, ctl) = rig();

        dev.port_write(0, &[0x10], 0);

        assert_eq!(ctl.exit_status(), Some(0x21));
    }

    #[test]
    fn debug_exit_zero_write_requests_status_one() {
        let (mut dev, ctl) = rig();

        dev.port_write(0, &[0x00], 0);

        assert_eq!(ctl.exit_status(), Some(1));
    }

    #[test]
    fn debug_exit_word_write_uses_little_endian_value() {
        let (mut dev, ctl) = rig();

        dev.port_write(0, &[0x34, 0x12], 0);

        assert_eq!(ctl.exit_status(), Some(0x2469));
    }

    #[test]
    fn debug_exit_dword_write_uses_little_endian_value() {
        let (mut dev, ctl) = rig();

        dev.port_write(0, &[0x78, 0x56, 0x34, 0x12], 0);

        assert_eq!(ctl.exit_status(), Some(0x2468_ACF1));
    }

    #[test]
    fn debug_exit_dword_with_bit31_set_truncates_to_i32() {
        let (mut dev, ctl) = rig();

        dev.port_write(0, &[0x00, 0x00, 0x00, 0x80], 0);

        assert_eq!(ctl.exit_status(), Some(1));
    }

    #[test]
    fn debug_exit_no_write_leaves_no_exit_request() {
        let (mut dev, ctl) = rig();
        let mut data = [0u8; 4];

        dev.port_read(0, &mut data, 0);

        assert_eq!(data, [0xFF; 4]);
        assert_eq!(ctl.exit_status(), None);
    }
}
