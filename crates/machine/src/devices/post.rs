//! The POST diagnostic ports: 0x80, where firmware writes its progress codes (and
//! which Linux also writes as an I/O delay), and 0x190, a second POST port some
//! firmware uses. Mapped with base 0, so offsets are the absolute ports.
//!
//! Invariants:
//! - Every byte written to either port is recorded: [`PostCodes::last`] and
//!   [`PostCodes::count`] cover both. With a sink, each write also prints one line,
//!   `post 0x80: 0x1f`.
//! - Port 0x80 reads back the last code written (as on many chipsets, which latch it);
//!   0xFF before any write. Port 0x190 reads 0xFF.
//! - Like a POST card's display, the record survives a system reset.
//! - A failed write to the sink is counted, never a panic.

use std::io::Write;

use crate::device::{Device, Nanos};

/// The classic POST code port.
const POST_PORT: u16 = 0x80;
/// The secondary POST port.
const POST_PORT_ALT: u16 = 0x190;

/// Recorder for POST codes.
pub struct PostCodes {
    output: Option<Box<dyn Write>>,
    last: Option<u8>,
    count: u64,
    output_errors: u64,
}

/// The POST ports' saved state (see [`crate::snapshot`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PostState {
    last: Option<u8>,
    count: u64,
}

impl PostCodes {
    /// A recorder that also prints each code to `output`, if given.
    pub fn new(output: Option<Box<dyn Write>>) -> Self {
        Self {
            output,
            last: None,
            count: 0,
            output_errors: 0,
        }
    }

    /// The last code written to either port, if any.
    pub fn last(&self) -> Option<u8> {
        self.last
    }

    /// How many codes have been written.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// How many writes to the output sink have failed.
    pub fn output_errors(&self) -> u64 {
        self.output_errors
    }

    fn record(&mut self, port: u16, code: u8) {
        self.last = Some(code);
        self.count += 1;
        if let Some(output) = self.output.as_mut() {
            let result =
                writeln!(output, "post {port:#x}: {code:#04x}").and_then(|()| output.flush());
            if result.is_err() {
                self.output_errors += 1;
            }
        }
    }
}

impl PostCodes {
    /// Only the byte at a POST port is driven; any wider part reads 0xFF.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
        if let (POST_PORT, Some(first)) = (offset, data.first_mut()) {
            *first = self.last.unwrap_or(0xFF);
        }
    }

    /// Only the first byte is taken; the rest would belong to the next port up.
    pub fn port_write(&mut self, offset: u16, data: &[u8], _now: Nanos) {
        let Some(&code) = data.first() else {
            return;
        };
        if matches!(offset, POST_PORT | POST_PORT_ALT) {
            self.record(offset, code);
        }
    }
}

impl Device for PostCodes {
    fn name(&self) -> &'static str {
        "post"
    }

    crate::port_device_methods!();

    crate::state_methods!(Post(PostState) {
        wiring: [output, output_errors],
        state: [last, count],
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::test_sinks::{BrokenSink, SharedBuf};

    fn read(post: &mut PostCodes, port: u16) -> u8 {
        let mut data = [0u8];
        post.port_read(port, &mut data, 0);
        data[0]
    }

    #[test]
    fn post_fresh_recorder_has_no_codes() {
        let post = PostCodes::new(None);

        assert_eq!((post.last(), post.count()), (None, 0));
    }

    #[test]
    fn post_writes_to_both_ports_record_last_and_count() {
        let mut post = PostCodes::new(None);

        post.port_write(POST_PORT, &[0x1F], 0);
        post.port_write(POST_PORT_ALT, &[0x02], 0);

        assert_eq!((post.last(), post.count()), (Some(0x02), 2));
    }

    #[test]
    fn post_write_with_output_prints_one_line_per_code() {
        let out = SharedBuf::default();
        let mut post = PostCodes::new(Some(Box::new(out.clone())));

        post.port_write(POST_PORT, &[0x1F], 0);
        post.port_write(POST_PORT_ALT, &[0x02], 0);

        assert_eq!(*out.0.borrow(), b"post 0x80: 0x1f\npost 0x190: 0x02\n");
    }

    #[test]
    fn post_read_0x80_returns_last_code() {
        let mut post = PostCodes::new(None);
        let before = read(&mut post, POST_PORT);

        post.port_write(POST_PORT, &[0x55], 0);

        assert_eq!(before, 0xFF);
        assert_eq!(read(&mut post, POST_PORT), 0x55);
    }

    #[test]
    fn post_read_0x190_returns_ff() {
        let mut post = PostCodes::new(None);
        post.port_write(POST_PORT_ALT, &[0x55], 0);

        assert_eq!(read(&mut post, POST_PORT_ALT), 0xFF);
    }

    #[test]
    fn post_word_write_records_only_low_byte() {
        let mut post = PostCodes::new(None);

        post.port_write(POST_PORT, &[0x12, 0x34], 0);

        assert_eq!((post.last(), post.count()), (Some(0x12), 1));
    }

    #[test]
    fn post_failing_sink_still_records_code() {
        let mut post = PostCodes::new(Some(Box::new(BrokenSink)));

        post.port_write(POST_PORT, &[0x01], 0);

        assert_eq!((post.last(), post.output_errors()), (Some(0x01), 1));
    }
}
