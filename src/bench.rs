//! Benchmark workloads and `x86bt bench`: CPU-bound real-mode guest loops, built
//! with iced's assembler, run for a fixed number of guest instructions. The same
//! workloads feed the criterion bench in `benches/interp.rs`.
//!
//! Each workload loops forever, so a run is `insns` retired instructions (checked
//! once per unit, so it may overshoot by a few). A repeated string instruction
//! retires one instruction per iteration, as QEMU's icount counts them, so the
//! REP MOVS workload is reported apart from the compute loops' geometric mean: its
//! "MIPS" are element moves per second.

use crate::cli::BenchArgs;
use crate::error::Error;
use crate::vm::Vm;
use iced_x86::code_asm::*;
use std::time::Instant;
use x86bt_cpu::state::{sreg, Segment};
use x86bt_machine::{GuestPhys, Machine};

/// A benchmark guest program.
pub struct Workload {
    /// Short name.
    pub name: &'static str,
    /// What it exercises.
    pub what: &'static str,
    /// 16-bit code, loaded at 1000:0000.
    pub code: Vec<u8>,
    /// Dominated by one repeated string instruction (excluded from the mean).
    pub rep_string: bool,
}

/// Code segment of every workload.
pub const CODE_SEG: u16 = 0x1000;

fn asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).expect("16-bit assembler");
    f(&mut a).expect("workload assembles");
    a.assemble(0).expect("workload assembles")
}

/// Sieve of Eratosthenes over 8191 flags (the classic BYTE benchmark).
fn sieve() -> Vec<u8> {
    asm(|a| {
        let mut outer = a.create_label();
        let mut fill = a.create_label();
        let mut loop_i = a.create_label();
        let mut mark = a.create_label();
        let mut counted = a.create_label();
        let mut next = a.create_label();
        a.set_label(&mut outer)?;
        a.xor(bx, bx)?;
        a.set_label(&mut fill)?;
        a.mov(byte_ptr(bx), 1)?;
        a.inc(bx)?;
        a.cmp(bx, 8191)?;
        a.jb(fill)?;
        a.xor(bx, bx)?;
        a.xor(dx, dx)?;
        a.set_label(&mut loop_i)?;
        a.cmp(byte_ptr(bx), 0)?;
        a.je(next)?;
        a.mov(ax, bx)?;
        a.add(ax, ax)?;
        a.add(ax, 3)?;
        a.mov(si, bx)?;
        a.add(si, ax)?;
        a.set_label(&mut mark)?;
        a.cmp(si, 8191)?;
        a.jae(counted)?;
        a.mov(byte_ptr(si), 0)?;
        a.add(si, ax)?;
        a.jmp(mark)?;
        a.set_label(&mut counted)?;
        a.inc(dx)?;
        a.set_label(&mut next)?;
        a.inc(bx)?;
        a.cmp(bx, 8191)?;
        a.jb(loop_i)?;
        a.jmp(outer)
    })
}

/// A rotate-and-add checksum over 32 KiB of memory.
fn checksum() -> Vec<u8> {
    asm(|a| {
        let mut outer = a.create_label();
        let mut l = a.create_label();
        a.set_label(&mut outer)?;
        a.xor(si, si)?;
        a.xor(dx, dx)?;
        a.mov(cx, 16384)?;
        a.set_label(&mut l)?;
        a.add(dx, word_ptr(si))?;
        a.adc(dx, 0)?;
        a.rol(dx, 1)?;
        a.add(si, 2)?;
        a.dec(cx)?;
        a.jnz(l)?;
        a.jmp(outer)
    })
}

/// REP MOVSW of 32 KiB between two segments.
fn rep_movs() -> Vec<u8> {
    asm(|a| {
        let mut outer = a.create_label();
        a.set_label(&mut outer)?;
        a.cld()?;
        a.xor(si, si)?;
        a.xor(di, di)?;
        a.mov(cx, 0x4000)?;
        a.rep().movsw()?;
        a.jmp(outer)
    })
}

/// A loop of near calls to a small leaf function.
fn call_ret() -> Vec<u8> {
    asm(|a| {
        let mut outer = a.create_label();
        let mut l = a.create_label();
        let mut f = a.create_label();
        a.set_label(&mut outer)?;
        a.mov(cx, 1000)?;
        a.set_label(&mut l)?;
        a.call(f)?;
        a.dec(cx)?;
        a.jnz(l)?;
        a.jmp(outer)?;
        a.set_label(&mut f)?;
        a.add(ax, bx)?;
        a.xor(bx, ax)?;
        a.ret()
    })
}

/// All workloads.
pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "sieve",
            what: "byte loads/stores, compares, branches",
            code: sieve(),
            rep_string: false,
        },
        Workload {
            name: "checksum",
            what: "word loads, ADC, ROL over 32 KiB",
            code: checksum(),
            rep_string: false,
        },
        Workload {
            name: "rep-movs",
            what: "REP MOVSW copy of 32 KiB",
            code: rep_movs(),
            rep_string: true,
        },
        Workload {
            name: "call-ret",
            what: "near CALL/RET and the stack",
            code: call_ret(),
            rep_string: false,
        },
    ]
}

/// A VM with `w` loaded and the CPU at its first instruction: CS=1000h, DS=2000h,
/// ES=3000h, SS:SP=9000:FFFE, on a bare 16 MiB machine.
pub fn prepare(w: &Workload) -> Result<Vm, Error> {
    let mut m = Machine::flat(16 << 20)?;
    m.mem.load(GuestPhys(u64::from(CODE_SEG) << 4), &w.code)?;
    let mut vm = Vm::new(m);
    vm.cpu.seg[sreg::CS] = Segment::real(CODE_SEG);
    vm.cpu.seg[sreg::DS] = Segment::real(0x2000);
    vm.cpu.seg[sreg::ES] = Segment::real(0x3000);
    vm.cpu.seg[sreg::SS] = Segment::real(0x9000);
    vm.cpu.gpr[4] = 0xFFFE;
    vm.cpu.rip = 0;
    Ok(vm)
}

/// Runs `w` for `insns` instructions on `engine`; returns (retired, seconds).
pub fn measure(w: &Workload, insns: u64, engine: crate::cli::Engine) -> Result<(u64, f64), Error> {
    let mut vm = prepare(w)?;
    vm.set_engine(engine)?;
    let start = Instant::now();
    vm.run(insns);
    Ok((vm.cpu.icount, start.elapsed().as_secs_f64()))
}

/// `x86bt bench`.
pub fn bench_cmd(a: &BenchArgs) -> Result<u8, Error> {
    println!(
        "engine: {:?}, {} guest instructions per workload",
        a.engine, a.insns
    );
    let mut logs = 0.0;
    let mut n_compute = 0;
    for w in &workloads() {
        let (n, secs) = measure(w, a.insns, a.engine)?;
        let mips = n as f64 / secs / 1e6;
        if w.rep_string {
            println!(
                "{:<10} {:>9.1} M element moves/s, {:.2} GB/s  ({n} iterations in {secs:.3} s; {})",
                w.name,
                mips,
                2.0 * n as f64 / secs / 1e9,
                w.what
            );
        } else {
            logs += mips.ln();
            n_compute += 1;
            println!(
                "{:<10} {:>9.1} MIPS  ({n} insns in {secs:.3} s; {})",
                w.name, mips, w.what
            );
        }
    }
    println!(
        "geometric mean of the compute loops: {:.1} MIPS",
        (logs / f64::from(n_compute.max(1))).exp()
    );
    Ok(0)
}
