//! A minimal GDB remote serial protocol client: enough to single-step QEMU's
//! gdbstub, read its registers and memory, and run monitor commands (`qRcmd`).
//! No-ack mode and TCP_NODELAY keep a step to one round trip.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A connection to a gdbstub.
pub struct Gdb {
    stream: TcpStream,
    buf: Vec<u8>,
    no_ack: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a hex string; bad digits decode as 0 (QEMU never sends them).
pub fn unhex(s: &[u8]) -> Vec<u8> {
    let d = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    s.chunks_exact(2)
        .map(|p| (d(p[0]) << 4) | d(p[1]))
        .collect()
}

impl Gdb {
    /// Connects to `addr`, retrying until `timeout` while QEMU starts.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Self> {
        let start = Instant::now();
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < timeout => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut g = Self {
            stream,
            buf: Vec::new(),
            no_ack: false,
        };
        g.stream.write_all(b"+")?;
        g.command("qSupported:xmlRegisters=i386")?;
        if g.command("QStartNoAckMode")? == b"OK" {
            g.no_ack = true;
        }
        Ok(g)
    }

    fn send(&mut self, data: &str) -> io::Result<()> {
        let sum = data.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        let pkt = format!("${data}#{sum:02x}");
        self.stream.write_all(pkt.as_bytes())
    }

    /// Receives one packet's payload.
    fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$') {
                if let Some(end) = self.buf[start..]
                    .iter()
                    .position(|&b| b == b'#')
                    .map(|e| e + start)
                {
                    if self.buf.len() >= end + 3 {
                        let payload = self.buf[start + 1..end].to_vec();
                        self.buf.drain(..end + 3);
                        if !self.no_ack {
                            self.stream.write_all(b"+")?;
                        }
                        return Ok(unescape(&payload));
                    }
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "gdbstub closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and returns the reply.
    pub fn command(&mut self, data: &str) -> io::Result<Vec<u8>> {
        self.send(data)?;
        self.recv()
    }

    /// Reads a target description file (qXfer), whole.
    pub fn features(&mut self, annex: &str) -> io::Result<String> {
        let mut out = Vec::new();
        loop {
            let r = self.command(&format!("qXfer:features:read:{annex}:{:x},800", out.len()))?;
            let (first, rest) = r.split_first().unwrap_or((&b'l', &[]));
            out.extend_from_slice(rest);
            if *first != b'm' {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// All registers (`g`), as raw bytes in the target's order.
    pub fn registers(&mut self) -> io::Result<Vec<u8>> {
        Ok(unhex(&self.command("g")?))
    }

    /// Single-steps one instruction; returns the stop reply.
    pub fn step(&mut self) -> io::Result<Vec<u8>> {
        self.command("s")
    }

    /// Reads `len` bytes of guest memory at linear address `addr`.
    pub fn memory(&mut self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let r = self.command(&format!("m{addr:x},{len:x}"))?;
        if r.first() == Some(&b'E') {
            return Err(io::Error::other(format!("gdbstub cannot read {addr:#x}")));
        }
        Ok(unhex(&r))
    }

    /// Runs a monitor command and returns its output.
    pub fn monitor(&mut self, cmd: &str) -> io::Result<String> {
        self.send(&format!("qRcmd,{}", hex(cmd.as_bytes())))?;
        let mut out = Vec::new();
        loop {
            let r = self.recv()?;
            match r.split_first() {
                Some((b'O', rest)) if r != b"OK" => out.extend(unhex(rest)),
                _ => break,
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Undoes the RSP `}` escape.
fn unescape(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut it = p.iter();
    while let Some(&b) = it.next() {
        if b == b'}' {
            if let Some(&n) = it.next() {
                out.push(n ^ 0x20);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhex_decodes_pairs() {
        assert_eq!(unhex(b"00ff10"), vec![0, 0xFF, 0x10]);
    }

    #[test]
    fn unescape_restores_escaped_bytes() {
        assert_eq!(unescape(b"a}\x03b"), b"a#b".to_vec());
    }
}
