//! The PC/AT coprocessor-error latch: the chipset logic between the CPU's FERR#
//! output, IRQ 13 and port 0xF0 (IBM PC/AT technical reference, "Math
//! coprocessor"; Intel SDM vol. 1 appendix D, "Guidelines for writing x87 FPU
//! exception handlers", D.2.1).
//!
//! With CR0.NE clear, the CPU asserts FERR# for a pending unmasked x87 exception
//! at the next waiting instruction. The chipset latches that as IRQ 13 (PIC 2,
//! input 5) and keeps it asserted until the handler writes any value to port 0xF0
//! (which on the AT also asserts IGNNE# for the x87).
//!
//! Invariants:
//! - [`crate::Machine::assert_ferr`] raises IRQ 13 (a rising edge if it was low).
//! - A write of any size and value to port 0xF0 lowers IRQ 13. Reads return 0xFF
//!   (the port is write-only).
//! - Limitation: the CPU model does not freeze at the waiting instruction until
//!   the interrupt is taken; it behaves as if IGNNE# were asserted and continues,
//!   so IRQ 13 is delivered after that instruction instead of before it (at the
//!   end of its translation unit, like every interrupt in x86bt).

use crate::device::{Device, IrqLine, Nanos};

/// The IRQ line FERR# drives.
pub const FERR_IRQ: u8 = 13;
/// The port whose write clears the latch.
pub const CLEAR_PORT: u16 = 0xF0;

/// The latch, as seen from port 0xF0.
pub struct FpuError {
    irq13: IrqLine,
}

impl FpuError {
    /// The latch, clearing `irq13` on a port write.
    pub fn new(irq13: IrqLine) -> Self {
        Self { irq13 }
    }
}

impl FpuError {
    /// Reads the register at port offset `offset` (the trait's `read`).
    pub fn port_read(&mut self, _offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
    }

    /// Writes the register at port offset `offset` (the trait's `write`).
    pub fn port_write(&mut self, _offset: u16, _data: &[u8], _now: Nanos) {
        self.irq13.set_level(false);
    }
}

impl Device for FpuError {
    fn name(&self) -> &'static str {
        "fpu-error"
    }

    crate::port_device_methods!();

    fn reset(&mut self) {
        self.irq13.set_level(false);
    }

    crate::state_methods!(stateless);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::IrqLines;

    #[test]
    fn port_f0_write_lowers_irq13() {
        let lines = IrqLines::new();
        let line = lines.line(FERR_IRQ);
        let mut dev = FpuError::new(line.clone());
        line.set_level(true);
        assert_eq!(lines.take_rising(), 1 << 13);
        let mut b = [0u8];
        dev.port_read(0, &mut b, 0);
        assert_eq!(b, [0xFF]);
        assert!(line.is_high(), "a read leaves the latch set");
        dev.port_write(0, &[0], 0);
        assert!(!line.is_high());
    }
}
