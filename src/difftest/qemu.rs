//! The QEMU side of the differ: a paused `qemu-system-i386 -accel tcg` with its
//! gdbstub, stepped one instruction at a time. Registers come from the `g`
//! packet (laid out by QEMU's target description); segment caches (base, limit,
//! attributes), which the gdbstub does not expose, come from the monitor's
//! `info registers` through `qRcmd`.
//!
//! QEMU's gdbstub single-steps with interrupts and timers masked (its default
//! `SSTEP_NOIRQ | SSTEP_NOTIMER`), so the compared window has no asynchronous
//! interrupts; x86bt's side delivers none either.

use super::gdb::Gdb;
use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A segment register as QEMU reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegCache {
    /// Selector.
    pub selector: u16,
    /// Base.
    pub base: u64,
    /// Limit (scaled).
    pub limit: u32,
    /// Attributes in x86bt's layout (descriptor bytes 5 and 6).
    pub attrs: u16,
}

/// QEMU's architectural state at a step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (x86bt's order); an i386
    /// target has the first 8, 32 bits each.
    pub gpr: [u64; 16],
    /// GPRs the target reports: 8 (i386) or 16 (x86_64).
    pub ngpr: usize,
    /// Whether the target's registers are 64 bits wide (x86_64).
    pub wide: bool,
    /// RIP/EIP (the offset in CS).
    pub rip: u64,
    /// EFLAGS.
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS selectors.
    pub sel: [u16; 6],
    /// CR0, CR2, CR3, CR4.
    pub cr: [u64; 4],
    /// IA32_EFER.
    pub efer: u64,
    /// FS and GS bases.
    pub fs_base: u64,
    /// See `fs_base`.
    pub gs_base: u64,
    /// XMM0..XMM15 (the target reports `nxmm` of them).
    pub xmm: [u128; 16],
    /// XMM registers the target reports: 8 (i386) or 16 (x86_64).
    pub nxmm: usize,
    /// MXCSR.
    pub mxcsr: u32,
}

/// GPR names in x86bt's order, as the x86_64 and i386 target descriptions name them.
const GPR64: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const GPR32: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];

/// A running QEMU under gdbstub control.
pub struct Qemu {
    child: Child,
    gdb: Gdb,
    offsets: Vec<(String, usize, usize)>,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Parses QEMU's target description into (name, byte offset, byte size) in `g`
/// order; XML comments are skipped (QEMU comments out some segment bases).
fn layout(xml: &str) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<!--") {
        text.push_str(&rest[..i]);
        rest = rest[i..].find("-->").map_or("", |j| &rest[i + j + 3..]);
    }
    text.push_str(rest);
    let mut off = 0;
    for tag in text.split("<reg ").skip(1) {
        let attr = |name: &str| {
            tag.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|t| t.split('"').next())
                .map(str::to_string)
        };
        let (Some(name), Some(bits)) = (
            attr("name"),
            attr("bitsize").and_then(|b| b.parse::<usize>().ok()),
        ) else {
            continue;
        };
        out.push((name, off, bits / 8));
        off += bits / 8;
    }
    out
}

impl Qemu {
    /// Starts `qemu` paused at the reset vector with `bios` (QEMU's default when
    /// None) and `ram_mib` of RAM.
    pub fn spawn(
        qemu: &Path,
        bios: Option<&Path>,
        ram_mib: u64,
        extra: &[String],
    ) -> io::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(qemu);
        if let Some(b) = bios {
            // fw_cfg DMA writes guest memory behind the CPU's back; x86bt's fw_cfg
            // has no DMA, so QEMU's is turned off to keep memory comparable. (A
            // Multiboot kernel is loaded by QEMU's DMA option ROM before the
            // compared window starts, so it keeps DMA.)
            cmd.arg("-bios")
                .arg(b)
                .args(["-global", "fw_cfg_io.dma_enabled=off"]);
        }
        let child = cmd
            .args([
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-S",
            ])
            .args(["-gdb", &format!("tcp:127.0.0.1:{port}")])
            .args(["-m", &ram_mib.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", qemu.display()))
            })?;
        let mut gdb = Gdb::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(10))?;
        let target = gdb.features("target.xml")?;
        let annex = target
            .split("href=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .unwrap_or("i386-32bit.xml")
            .to_string();
        let offsets = layout(&gdb.features(&annex)?);
        Ok(Self {
            child,
            gdb,
            offsets,
        })
    }

    fn field(&self, raw: &[u8], name: &str) -> Option<u128> {
        self.offsets
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|&(_, off, size)| raw.get(off..off + size.min(16)))
            .map(|b| b.iter().rev().fold(0u128, |a, &x| (a << 8) | u128::from(x)))
    }

    fn reg(&self, raw: &[u8], name: &str) -> u64 {
        self.field(raw, name).map_or(0, |v| v as u64)
    }

    /// GPRs, RIP, EFLAGS, selectors, control registers, EFER, FS/GS bases, XMM
    /// registers and MXCSR.
    pub fn state(&mut self) -> io::Result<QState> {
        let raw = self.gdb.registers()?;
        let mut s = QState {
            wide: self.offsets.iter().any(|(n, _, _)| n == "rax"),
            ..QState::default()
        };
        if s.wide {
            s.ngpr = 16;
            for (i, n) in GPR64.iter().enumerate() {
                s.gpr[i] = self.reg(&raw, n);
            }
            s.rip = self.reg(&raw, "rip");
        } else {
            s.ngpr = 8;
            for (i, n) in GPR32.iter().enumerate() {
                s.gpr[i] = self.reg(&raw, n);
            }
            s.rip = self.reg(&raw, "eip");
        }
        s.eflags = self.reg(&raw, "eflags") as u32;
        for (i, n) in ["es", "cs", "ss", "ds", "fs", "gs"].iter().enumerate() {
            s.sel[i] = self.reg(&raw, n) as u16;
        }
        for (i, n) in ["cr0", "cr2", "cr3", "cr4"].iter().enumerate() {
            s.cr[i] = self.reg(&raw, n);
        }
        s.efer = self.reg(&raw, "efer");
        s.fs_base = self.reg(&raw, "fs_base");
        s.gs_base = self.reg(&raw, "gs_base");
        for i in 0..16 {
            match self.field(&raw, &format!("xmm{i}")) {
                Some(v) => {
                    s.xmm[i] = v;
                    s.nxmm = i + 1;
                }
                None => break,
            }
        }
        s.mxcsr = self.reg(&raw, "mxcsr") as u32;
        Ok(s)
    }

    /// The six segment caches (ES, CS, SS, DS, FS, GS) from `info registers`.
    pub fn segments(&mut self) -> io::Result<[SegCache; 6]> {
        let text = self.gdb.monitor("info registers")?;
        let mut out = [SegCache::default(); 6];
        for (i, name) in ["ES =", "CS =", "SS =", "DS =", "FS =", "GS ="]
            .iter()
            .enumerate()
        {
            let Some(line) = text.lines().find(|l| l.starts_with(name)) else {
                continue;
            };
            let f: Vec<u64> = line[4..]
                .split_whitespace()
                .take(4)
                .filter_map(|t| u64::from_str_radix(t, 16).ok())
                .collect();
            if let [sel, base, limit, flags] = f[..] {
                out[i] = SegCache {
                    selector: sel as u16,
                    base,
                    limit: limit as u32,
                    attrs: (((flags >> 8) & 0xFF) | (((flags >> 20) & 0xF) << 12)) as u16,
                };
            }
        }
        Ok(out)
    }

    /// Single-steps one instruction.
    pub fn step(&mut self) -> io::Result<()> {
        self.gdb.step().map(|_| ())
    }

    /// Reads guest memory at a linear address.
    pub fn memory(&mut self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        self.gdb.memory(addr, len)
    }

    /// Runs a monitor command.
    pub fn monitor(&mut self, cmd: &str) -> io::Result<String> {
        self.gdb.monitor(cmd)
    }

    /// Runs until execution reaches linear address `addr` (a hardware breakpoint).
    pub fn run_to(&mut self, addr: u64) -> io::Result<()> {
        let r = self.gdb.command(&format!("Z1,{addr:x},1"))?;
        if r != b"OK" {
            return Err(io::Error::other("gdbstub refused the breakpoint"));
        }
        self.gdb.command("c")?;
        self.gdb.command(&format!("z1,{addr:x},1"))?;
        Ok(())
    }

    /// GDTR and IDTR (base, limit) from `info registers`.
    pub fn tables(&mut self) -> io::Result<[(u64, u32); 2]> {
        let text = self.gdb.monitor("info registers")?;
        let mut out = [(0, 0); 2];
        for (i, name) in ["GDT=", "IDT="].iter().enumerate() {
            if let Some(line) = text.lines().find(|l| l.starts_with(name)) {
                let f: Vec<u64> = line[4..]
                    .split_whitespace()
                    .take(2)
                    .filter_map(|t| u64::from_str_radix(t, 16).ok())
                    .collect();
                if let [base, limit] = f[..] {
                    out[i] = (base, limit as u32);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_skips_commented_registers() {
        let xml = r#"<reg name="eax" bitsize="32"/><!--<reg name="cs_base" bitsize="32"/>--><reg name="st0" bitsize="80"/><reg name="x" bitsize="32"/>"#;
        let l = layout(xml);
        assert_eq!(
            l,
            vec![
                ("eax".into(), 0, 4),
                ("st0".into(), 4, 10),
                ("x".into(), 14, 4)
            ]
        );
    }
}
