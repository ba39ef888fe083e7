//! QEMU's `debugcon`: a one-byte port whose writes go straight to a host sink. Bochs
//! and QEMU guests use it at 0xE9; SeaBIOS and OVMF write their logs to 0x402. One
//! instance is mapped per port, each with its own base, so the register is at offset
//! 0.
//!
//! Invariants:
//! - Output is line buffered: bytes collect until a `'\n'`, a full buffer, a system
//!   reset, a short virtual delay after the first unflushed byte (so a prompt with no
//!   newline still appears), or drop. Nothing written is lost on drop.
//! - A failed write to the sink is counted and the line discarded; it never panics.
//! - Reads return 0xE9, the value guests read back to detect the port.

use std::io::Write;

use crate::device::{Device, Nanos};

/// The data register.
const DATA: u16 = 0;
/// What a read returns (QEMU's default `readback` property).
const READBACK: u8 = 0xE9;
/// A partial line is flushed after this many virtual nanoseconds (10 ms).
const FLUSH_DELAY_NS: Nanos = 10_000_000;
/// A line longer than this is flushed without waiting for its newline.
const LINE_LIMIT: usize = 4096;

/// A debug console port.
pub struct DebugCon {
    output: Box<dyn Write>,
    /// Bytes not yet handed to `output`.
    line: Vec<u8>,
    /// When the oldest byte in `line` must be flushed by.
    flush_deadline: Option<Nanos>,
    output_errors: u64,
}

/// The debug console's saved state (see [`crate::snapshot`]): when its
/// pending line is due. The bytes of that line are host output already
/// given by the guest: they go out from the run that saved (at its next
/// flush or at its end), not again from a restored one.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DebugConState {
    flush_deadline: Option<Nanos>,
}

impl DebugCon {
    /// A debug console writing to `output`.
    pub fn new(output: Box<dyn Write>) -> Self {
        Self {
            output,
            line: Vec::new(),
            flush_deadline: None,
            output_errors: 0,
        }
    }

    /// How many writes to the output sink have failed.
    pub fn output_errors(&self) -> u64 {
        self.output_errors
    }

    fn flush_line(&mut self) {
        self.flush_deadline = None;
        if self.line.is_empty() {
            return;
        }
        let result = self
            .output
            .write_all(&self.line)
            .and_then(|()| self.output.flush());
        if result.is_err() {
            self.output_errors += 1;
        }
        self.line.clear();
    }

    fn put(&mut self, byte: u8, now: Nanos) {
        if self.line.is_empty() {
            self.flush_deadline = Some(now.saturating_add(FLUSH_DELAY_NS));
        }
        self.line.push(byte);
        if byte == b'\n' || self.line.len() >= LINE_LIMIT {
            self.flush_line();
        }
    }
}

impl DebugCon {
    /// Only the byte at offset 0 is driven; any wider part reads 0xFF.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
        if let (DATA, Some(first)) = (offset, data.first_mut()) {
            *first = READBACK;
        }
    }

    /// Only the first byte is taken; the rest would belong to the next port up.
    pub fn port_write(&mut self, offset: u16, data: &[u8], now: Nanos) {
        if let (DATA, Some(&byte)) = (offset, data.first()) {
            self.put(byte, now);
        }
    }

    /// Brings timers up to `now` (the trait's `advance`).
    pub fn advance_to(&mut self, now: Nanos) {
        if self.flush_deadline.is_some_and(|deadline| now >= deadline) {
            self.flush_line();
        }
    }
}

impl Device for DebugCon {
    fn name(&self) -> &'static str {
        "debugcon"
    }

    crate::port_device_methods!(advance);

    fn next_deadline(&self, _now: Nanos) -> Option<Nanos> {
        self.flush_deadline
    }

    /// Flushes what the guest wrote before the reset; the port has no other state.
    fn reset(&mut self) {
        self.flush_line();
    }

    crate::state_methods!(DebugCon(DebugConState) {
        wiring: [output, line, output_errors],
        state: [flush_deadline],
    });
}

impl Drop for DebugCon {
    fn drop(&mut self) {
        self.flush_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::test_sinks::{BrokenSink, SharedBuf};

    fn rig() -> (DebugCon, SharedBuf) {
        let out = SharedBuf::default();
        (DebugCon::new(Box::new(out.clone())), out)
    }

    fn put_str(con: &mut DebugCon, text: &[u8]) {
        for &byte in text {
            con.port_write(DATA, &[byte], 0);
        }
    }

    #[test]
    fn debugcon_partial_line_stays_buffered() {
        let (mut con, out) = rig();

        put_str(&mut con, b"hi");

        assert!(out.0.borrow().is_empty());
    }

    #[test]
    fn debugcon_newline_flushes_line_to_sink() {
        let (mut con, out) = rig();

        put_str(&mut con, b"hi\n");

        assert_eq!(*out.0.borrow(), b"hi\n");
    }

    #[test]
    fn debugcon_partial_line_flushed_after_deadline() {
        let (mut con, out) = rig();
        put_str(&mut con, b"> ");
        let deadline = con.next_deadline(0);

        con.advance_to(FLUSH_DELAY_NS);

        assert_eq!(deadline, Some(FLUSH_DELAY_NS));
        assert_eq!(*out.0.borrow(), b"> ");
        assert_eq!(con.next_deadline(FLUSH_DELAY_NS), None);
    }

    #[test]
    fn debugcon_partial_line_flushed_on_drop() {
        let (mut con, out) = rig();
        put_str(&mut con, b"bye");

        drop(con);

        assert_eq!(*out.0.borrow(), b"bye");
    }

    #[test]
    fn debugcon_read_returns_e9() {
        let (mut con, _out) = rig();
        let mut data = [0u8];

        con.port_read(DATA, &mut data, 0);

        assert_eq!(data, [0xE9]);
    }

    #[test]
    fn debugcon_word_write_outputs_only_low_byte() {
        let (mut con, out) = rig();

        con.port_write(DATA, b"\nx", 0);

        assert_eq!(*out.0.borrow(), b"\n");
    }

    #[test]
    fn debugcon_failing_sink_counts_error_without_panic() {
        let mut con = DebugCon::new(Box::new(BrokenSink));

        put_str(&mut con, b"x\n");

        assert_eq!(con.output_errors(), 1);
    }
}
