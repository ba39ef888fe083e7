//! The GDB remote server: `-gdb tcp::PORT` (or `tcp:HOST:PORT`), `-s`
//! (`-gdb tcp::1234`) and `-S` (the CPU waits for the debugger's first
//! continue), as in QEMU. The Remote Serial Protocol, the target
//! description and the register packets are the `gdbstub` crate's; this
//! module listens, accepts, and runs one session at a time
//! ([`session`]) over the VM's debugger support (`crate::debug`).
//!
//! How a run goes with a server:
//! - The listener is bound before the guest starts (a port in use is one
//!   error line and status 2). An acceptor thread takes connections and
//!   raises the VM's interrupt flag, so `Vm::run` returns
//!   `RunOutcome::Debug(Interrupted)` at its next pass and the session
//!   starts with the guest stopped, as QEMU stops it for a new debugger.
//! - During a session the guest runs only between a resume (continue,
//!   step) and the next stop; Ctrl-C arrives through the connection's
//!   reader thread and the same flag.
//! - When GDB detaches or disconnects, every breakpoint and watchpoint goes
//!   and the guest runs on at full speed; another debugger may connect
//!   later. GDB's `kill` ends the run. A guest that ends the run while
//!   attached (power-off, debug exit, halt with IF=0, the instruction
//!   limit) is reported to GDB as an exit with x86bt's exit status.
//!
//! The register layout ([`LayoutChoice`]) is fixed per run: GDB fixes its
//! architecture when it connects and cannot follow a guest across modes.

pub mod arch;
mod conn;
pub mod reverse;
mod target;

use crate::error::Error;
use crate::vm::{RunOutcome, Vm};
use gdbstub::stub::{DisconnectReason, GdbStub};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use x86bt_machine::devices::uart::SerialInput;

/// Where the server listens: a `-gdb` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GdbSpec {
    /// Host name or address; empty for every interface (QEMU's `tcp::PORT`).
    pub host: String,
    /// TCP port; 0 lets the system choose (the line on stderr names it).
    pub port: u16,
}

impl std::str::FromStr for GdbSpec {
    type Err = String;

    /// QEMU's `-gdb` device forms x86bt serves: `tcp::PORT` and
    /// `tcp:HOST:PORT` (an IPv6 host in brackets).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected tcp::PORT or tcp:HOST:PORT");
        let rest = s.strip_prefix("tcp:").ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for GdbSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp:[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp:{}:{}", self.host, self.port)
        }
    }
}

/// The register layout the server presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutChoice {
    /// x86-64, unless `--kernel` is a 32-bit kernel (a Multiboot ELF32 or
    /// a.out kernel, or a bzImage without XLF_KERNEL_64): then i386.
    Auto,
    /// The i386 layout (GDB architecture `i386`): EAX..EDI, EIP,
    /// XMM0-7.
    I386,
    /// The x86-64 layout (`i386:x86-64`): RAX..R15, RIP, XMM0-15.
    #[value(name = "x86-64")]
    X86_64,
}

/// The layout a run uses, once `--gdb-arch auto` is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// See [`LayoutChoice::I386`].
    I386,
    /// See [`LayoutChoice::X86_64`].
    X86_64,
}

impl LayoutChoice {
    /// The layout for a run of `kernel` (the `--kernel` image, if any): the
    /// CPU supports long mode, so the machine is an x86-64 one (as
    /// qemu-system-x86_64 always reports), except for a kernel whose
    /// headers show it is a 32-bit one, which GDB should see as i386 (its
    /// symbols are i386 symbols).
    pub fn decide(self, kernel: Option<&[u8]>) -> Layout {
        match self {
            Self::I386 => Layout::I386,
            Self::X86_64 => Layout::X86_64,
            Self::Auto => {
                use x86bt_machine::loader::{cpu_requirements, linux, multiboot, CpuFeature};
                let Some(image) = kernel else {
                    return Layout::X86_64;
                };
                let is_kernel = linux::is_bzimage(image) || multiboot::is_multiboot(image);
                let long = cpu_requirements(image)
                    .iter()
                    .any(|r| r.feature == CpuFeature::LongMode);
                if is_kernel && !long {
                    Layout::I386
                } else {
                    Layout::X86_64
                }
            }
        }
    }
}

/// A bound server: its listener runs in an acceptor thread.
pub struct Server {
    /// Connections accepted and not yet served.
    incoming: Receiver<TcpStream>,
    /// The address bound (the port is the real one when 0 was asked).
    pub local: SocketAddr,
    /// The register layout of the run.
    pub layout: Layout,
}

impl Server {
    /// Binds `spec` and starts accepting; each connection raises
    /// `interrupt` (the VM's debugger flag).
    pub fn bind(spec: &GdbSpec, layout: Layout, interrupt: Arc<AtomicBool>) -> Result<Self, Error> {
        let host = if spec.host.is_empty() {
            "0.0.0.0"
        } else {
            spec.host.as_str()
        };
        let fail = |e: std::io::Error| Error::Usage(format!("-gdb {spec}: cannot listen: {e}"));
        let addrs: Vec<SocketAddr> = (host, spec.port).to_socket_addrs().map_err(fail)?.collect();
        let listener = TcpListener::bind(&addrs[..]).map_err(fail)?;
        let local = listener.local_addr().map_err(fail)?;
        let (tx, incoming) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if tx.send(stream).is_err() {
                    return;
                }
                interrupt.store(true, Ordering::SeqCst);
            }
        });
        Ok(Self {
            incoming,
            local,
            layout,
        })
    }

    /// A connection waiting to be served, if any.
    pub fn take_connection(&self) -> Option<TcpStream> {
        self.incoming.try_recv().ok()
    }

    /// Waits for the first connection (`-S`).
    pub fn wait_for_connection(&self) -> Option<TcpStream> {
        self.incoming.recv().ok()
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// GDB detached or went away: the guest runs on.
    Detached,
    /// GDB's `kill`: the run ends.
    Killed,
    /// The guest ended the run while attached (reported to GDB as an exit).
    GuestEnded(RunOutcome),
}

/// Serves one GDB connection on `vm` (which must have a debugger), in the
/// run's layout, until GDB detaches, kills, disconnects, or the guest ends
/// the run. Afterwards no breakpoint, watchpoint or step is left.
/// `inputs` are the queues input from outside reaches the guest through
/// (reverse execution's history ends where they are read).
pub fn session(
    vm: &mut Vm,
    stream: TcpStream,
    layout: Layout,
    max_insns: u64,
    inputs: &[SerialInput],
) -> SessionEnd {
    let end = match layout {
        Layout::I386 => serve::<arch::I386>(vm, stream, max_insns, inputs),
        Layout::X86_64 => serve::<arch::X86_64>(vm, stream, max_insns, inputs),
    };
    if let Some(d) = vm.debugger.as_mut() {
        d.clear();
    }
    vm.debug_resume(None);
    end
}

fn serve<L: arch::Layout>(
    vm: &mut Vm,
    stream: TcpStream,
    max_insns: u64,
    inputs: &[SerialInput],
) -> SessionEnd {
    let Some(interrupt) = vm.debugger.as_ref().map(|d| d.interrupt_flag()) else {
        return SessionEnd::Detached;
    };
    let conn = match conn::GdbConn::new(stream, Arc::clone(&interrupt)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("x86bt: GDB connection failed: {e}");
            return SessionEnd::Detached;
        }
    };
    let mut target = target::GdbTarget::<L>::new(vm, max_insns, interrupt, inputs.to_vec());
    let result = GdbStub::new(conn).run_blocking::<target::EventLoop<'_, L>>(&mut target);
    if let Some(outcome) = target.ended.take() {
        return SessionEnd::GuestEnded(outcome);
    }
    match result {
        Ok(DisconnectReason::Kill) => SessionEnd::Killed,
        Ok(_) => SessionEnd::Detached,
        Err(e) if e.is_connection_error() => SessionEnd::Detached,
        Err(e) => {
            eprintln!("x86bt: GDB session ended: {e:?}");
            SessionEnd::Detached
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdb_spec_takes_qemu_tcp_forms_and_refuses_others() {
        assert_eq!(
            "tcp::1234".parse(),
            Ok(GdbSpec {
                host: String::new(),
                port: 1234
            })
        );
        assert_eq!(
            "tcp:127.0.0.1:0".parse(),
            Ok(GdbSpec {
                host: "127.0.0.1".into(),
                port: 0
            })
        );
        assert_eq!(
            "tcp:[::1]:9".parse::<GdbSpec>().map(|s| s.host),
            Ok("::1".to_string())
        );
        for bad in [
            "1234",
            "tcp:1234",
            "tcp::",
            "tcp::99999",
            "udp::1234",
            "tcp::12x",
        ] {
            assert!(bad.parse::<GdbSpec>().is_err(), "{bad}");
        }
    }
}
