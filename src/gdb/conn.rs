//! The GDB connection: a TCP stream whose incoming bytes a reader thread
//! moves into a channel, raising the VM's interrupt flag as each arrives.
//!
//! That is how Ctrl-C reaches a running guest without the run loop ever
//! touching the socket: GDB sends the byte 0x03, the reader raises the flag,
//! `Vm::run` returns at the top of its next pass (it checks the flag once
//! per pass, which costs one atomic load), and the server hands the byte to
//! gdbstub, which reports the interrupt. A halted guest idling in wall-clock
//! time is interrupted within one idle slice (at most 10 ms). The socket's
//! own blocking mode is never changed, so the reader and the writer (the
//! server's thread) share it safely.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

/// A GDB connection for gdbstub.
pub struct GdbConn {
    /// Where replies are written.
    stream: TcpStream,
    /// Replies gathered until gdbstub flushes them.
    out: Vec<u8>,
    /// Bytes from GDB, in order; disconnected once the socket closed.
    incoming: Receiver<u8>,
    /// A byte taken from `incoming` by `peek` and not yet read.
    peeked: Option<u8>,
}

impl GdbConn {
    /// Wraps `stream`, starting its reader thread, which raises `interrupt`
    /// after every byte (and when the socket closes).
    pub fn new(stream: TcpStream, interrupt: Arc<AtomicBool>) -> std::io::Result<Self> {
        let mut reader = stream.try_clone()?;
        stream.set_nodelay(true)?;
        let (tx, incoming) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    if tx.send(b).is_err() {
                        return;
                    }
                }
                interrupt.store(true, Ordering::SeqCst);
            }
            drop(tx);
            interrupt.store(true, Ordering::SeqCst);
        });
        Ok(Self {
            stream,
            out: Vec::new(),
            incoming,
            peeked: None,
        })
    }

    /// Whether GDB has sent something not yet read (or closed the
    /// connection, which the next read reports).
    pub fn pending(&mut self) -> bool {
        if self.peeked.is_some() {
            return true;
        }
        match self.incoming.try_recv() {
            Ok(b) => {
                self.peeked = Some(b);
                true
            }
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => true,
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "GDB closed the connection",
    )
}

impl gdbstub::conn::Connection for GdbConn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Write::write_all(&mut self.stream, &self.out)?;
        self.out.clear();
        Write::flush(&mut self.stream)
    }
}

impl gdbstub::conn::ConnectionExt for GdbConn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        if let Some(b) = self.peeked.take() {
            return Ok(b);
        }
        self.incoming.recv().map_err(|_| closed())
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        if self.pending() {
            return match self.peeked {
                Some(b) => Ok(Some(b)),
                None => Err(closed()),
            };
        }
        Ok(None)
    }
}
