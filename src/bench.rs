//! `x86bt bench`: the engines side by side on the same guest binaries.
//!
//! The default suite runs the Multiboot kernels of [`crate::bench_kernels`] under
//! x86bt's interpreter, its translator and `qemu-system-i386 -accel tcg`, and
//! prints one table: guest MIPS for the compute loops, nanoseconds per event for
//! the sensitive-event nanobenchmarks, and the speedups between engines.
//!
//! How each figure is taken. Every engine runs a kernel twice, with N and 2N
//! iterations, and N grows (from [`bk::Workload::default_iters`], or a sixteenth
//! of it for x86bt's compute runs) until t(2N) - t(N) is at least 0.3 s (0.05 s
//! under `--quick`). So engines may run different N; the image is the same but for
//! the patched iteration count.
//! - x86bt, compute: the kernel runs in-process and `Vm::run` alone is timed;
//!   MIPS = guest instructions retired (`cpu.icount`) / seconds, of the 2N run.
//!   The translator's translation time is inside that figure.
//! - x86bt, events: ns/event = (t(2N) - t(N)) / (N * 8), which cancels the setup
//!   and the result check.
//! - QEMU: a wall-clock time from spawn to exit includes QEMU's start-up and the
//!   SeaBIOS boot, so only differences are used: the fastest of `--qemu-repeats`
//!   runs at N and at 2N. QEMU does not report guest instruction counts, but the
//!   kernels are deterministic and every loop iteration retires the same
//!   instructions (`tests/bench_kernels.rs` checks it), so the guest retires under
//!   QEMU exactly what it retires under x86bt: QEMU MIPS = I × N / (t(2N) - t(N)),
//!   where I = (icount(2N) - icount(N)) / N from x86bt's runs of the same kernel.
//!   ns/event as for x86bt.
//!
//! A kernel checks its own answer before it exits, so a row is only filled when
//! the engine computed the right result; otherwise the cell says FAIL and a note
//! under the table says why.
//!
//! `--native` runs the C workloads of [`crate::bench_native`] instead, one table
//! per architecture (32-bit against `qemu-system-i386`, 64-bit against
//! `qemu-system-x86_64`, both `-cpu max`), with the host program as a fourth
//! column. There every column's MIPS is I × N / (t(2N) - t(N)), x86bt's too,
//! and the ratios add each engine's time over native time. `--runs K`
//! measures each column once per round for K rounds and keeps the medians.
//!
//! `--real-mode` runs the older CPU-bound real-mode loops (also used by
//! `benches/interp.rs` and the translator tests) for a fixed number of guest
//! instructions. A repeated string instruction retires one instruction per
//! iteration, as QEMU's icount counts them, so the REP MOVS loop is reported apart
//! from the compute loops' geometric mean: its "MIPS" are element moves per second.

use crate::bench_kernels::{self as bk, BenchKernel, Kind, UNROLL};
use crate::bench_native::{self as bn, Arch, Counters, Programs};
use crate::cli::{BenchArch, BenchArgs, Engine};
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
pub fn measure(w: &Workload, insns: u64, engine: Engine) -> Result<(u64, f64), Error> {
    let mut vm = prepare(w)?;
    vm.set_engine(engine)?;
    let start = Instant::now();
    vm.run(insns);
    Ok((vm.cpu.icount, start.elapsed().as_secs_f64()))
}

/// `x86bt bench --real-mode`.
fn real_mode_cmd(a: &BenchArgs) -> Result<u8, Error> {
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

/// `x86bt bench`.
pub fn bench_cmd(a: &BenchArgs) -> Result<u8, Error> {
    if a.real_mode {
        return real_mode_cmd(a);
    }
    if a.native {
        return native_cmd(a);
    }
    suite_cmd(a)
}

/// A column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Interp,
    Jit,
    Qemu,
    /// The host program of `--native`.
    Native,
}

impl Col {
    /// The engines `--engines` chooses from.
    const ALL: [Col; 3] = [Col::Interp, Col::Jit, Col::Qemu];

    fn name(self) -> &'static str {
        match self {
            Col::Interp => "interp",
            Col::Jit => "jit",
            Col::Qemu => "qemu",
            Col::Native => "native",
        }
    }
}

/// A ratio column: `num`'s figure over `den`'s as a speedup (> 1 = `num`
/// faster); put the slower column first for a time ratio.
struct Ratio {
    label: &'static str,
    num: Col,
    den: Col,
}

const fn ratio(label: &'static str, num: Col, den: Col) -> Ratio {
    Ratio { label, num, den }
}

fn parse_engines(list: &[String]) -> Result<Vec<Col>, Error> {
    let mut cols = Vec::new();
    for e in list {
        let c = Col::ALL
            .into_iter()
            .find(|c| c.name() == e.trim())
            .ok_or_else(|| {
                Error::Usage(format!("--engines: {e:?} is not one of interp, jit, qemu"))
            })?;
        if !cols.contains(&c) {
            cols.push(c);
        }
    }
    Ok(cols)
}

fn parse_only(list: &[String]) -> Result<Vec<bk::Workload>, Error> {
    if list.is_empty() {
        return Ok(bk::Workload::ALL.to_vec());
    }
    list.iter()
        .map(|name| {
            bk::Workload::ALL
                .into_iter()
                .find(|w| w.name() == name.trim())
                .ok_or_else(|| {
                    let all: Vec<_> = bk::Workload::ALL.iter().map(|w| w.name()).collect();
                    Error::Usage(format!(
                        "--only: no workload {name:?} (have: {})",
                        all.join(", ")
                    ))
                })
        })
        .collect()
}

/// How long and how often to measure.
struct Plan {
    /// t(2N) - t(N) must reach this many seconds, or N grows.
    min_dt: f64,
    /// Timed QEMU runs per iteration count (the fastest counts).
    repeats: u32,
    /// Divides the default iteration counts (`--quick`).
    divisor: u32,
    verbose: bool,
    /// Rounds per row, medians taken (`--runs`, the native tables only).
    runs: u32,
}

/// The largest N tried (the event counters hold 8N in 32 bits).
const MAX_ITERS: u32 = 1 << 26;
/// x86bt's compute runs start from the default N over this (the interpreter is
/// tens of times slower than QEMU there); N then grows until the runs are long
/// enough.
const X86BT_COMPUTE_START: u32 = 16;

/// One engine's two timed runs of a kernel, with N and 2N iterations.
#[derive(Clone, Copy, Debug)]
struct Pair {
    n: u32,
    /// Guest instructions retired (x86bt only).
    icount: [u64; 2],
    secs: [f64; 2],
}

impl Pair {
    fn dt(&self) -> f64 {
        self.secs[1] - self.secs[0]
    }

    /// Guest instructions of one loop iteration, if every iteration retired the
    /// same number (the kernels are written so they do).
    fn per_iter(&self) -> Option<u64> {
        let d = self.icount[1].checked_sub(self.icount[0])?;
        let n = u64::from(self.n);
        (d % n == 0).then_some(d / n)
    }
}

/// Runs `once` with N and 2N iterations, from `n` up, multiplying N until
/// t(2N) - t(N) reaches `plan.min_dt`.
fn timed_pair(
    n: u32,
    plan: &Plan,
    mut once: impl FnMut(u32) -> Result<(u64, f64), String>,
) -> Result<Pair, String> {
    let mut n = n.clamp(1, MAX_ITERS / 2);
    loop {
        let (i0, t0) = once(n)?;
        let (i1, t1) = once(2 * n)?;
        let p = Pair {
            n,
            icount: [i0, i1],
            secs: [t0, t1],
        };
        if p.dt() >= plan.min_dt || n >= MAX_ITERS / 2 {
            return Ok(p);
        }
        let factor = if p.dt() <= 0.0 {
            16.0
        } else {
            (1.25 * plan.min_dt / p.dt()).ceil().clamp(2.0, 16.0)
        };
        n = (f64::from(n) * factor).min(f64::from(MAX_ITERS / 2)) as u32;
    }
}

/// One in-process run to the kernel's exit: (instructions, seconds).
fn x86bt_once(k: &BenchKernel, iters: u32, engine: Engine) -> Result<(u64, f64), String> {
    let run = bk::run_x86bt(&k.image(iters), engine).map_err(|e| e.to_string())?;
    if !run.passed() {
        let c = &run.vm.cpu;
        return Err(format!(
            "{:?} after {} instructions at {:04x}:{:08x}, N = {iters} (result {:#x}, expected {:#x})",
            run.outcome,
            run.vm.icount(),
            c.seg[x86bt_cpu::state::sreg::CS].selector,
            c.rip,
            run.read32(bk::layout::RESULT),
            k.workload.expected(iters)
        ));
    }
    Ok((run.vm.icount(), run.secs))
}

/// The fastest of `repeats` QEMU runs: (0, seconds).
fn qemu_once(
    qemu: &std::path::Path,
    k: &BenchKernel,
    iters: u32,
    repeats: u32,
) -> Result<(u64, f64), String> {
    let image = k.image(iters);
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let run = bk::run_qemu(qemu, &image).map_err(|e| e.to_string())?;
        if !run.passed() {
            return Err(format!(
                "exit status {:?}, expected {}, N = {iters}{}",
                run.status,
                bk::PASS_STATUS,
                run.stderr
                    .lines()
                    .next()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ));
        }
        best = best.min(run.secs);
    }
    Ok((0, best))
}

/// The figure of one engine on one kernel: MIPS or ns/event, or why there is none.
type Cell = Result<f64, String>;

/// ns/event from a pair; an error when t(2N) is not above t(N).
fn ns_per_event(p: &Pair) -> Cell {
    if p.dt() <= 0.0 {
        return Err(format!(
            "t(2N) = {:.3} s is not above t(N) = {:.3} s",
            p.secs[1], p.secs[0]
        ));
    }
    Ok(p.dt() / (f64::from(p.n) * f64::from(UNROLL)) * 1e9)
}

/// How many times faster `a` is than `b`.
fn speedup(kind: Kind, a: f64, b: f64) -> f64 {
    match kind {
        Kind::Compute => a / b,
        Kind::Event => b / a,
    }
}

/// One row of the table being measured.
struct Row {
    name: &'static str,
    kind: Kind,
    cells: Vec<(Col, Cell)>,
}

impl Row {
    fn get(&self, c: Col) -> Option<&Cell> {
        self.cells.iter().find(|(k, _)| *k == c).map(|(_, v)| v)
    }

    fn value(&self, c: Col) -> Option<f64> {
        self.get(c).and_then(|v| v.as_ref().ok().copied())
    }

    fn print(&self, cols: &[Col], ratios: &[Ratio]) {
        let kind = self.kind;
        let unit = match kind {
            Kind::Compute => "MIPS",
            Kind::Event => "ns/event",
        };
        let mut line = format!("{:<11} {unit:<8}", self.name);
        for &c in cols {
            let cell = match self.get(c) {
                None => "-".into(),
                Some(Ok(v)) if *v >= 100.0 => format!("{v:.0}"),
                Some(Ok(v)) => format!("{v:.1}"),
                Some(Err(_)) => "FAIL".into(),
            };
            line += &format!(" {cell:>9}");
        }
        for r in ratios {
            let v = match (self.value(r.num), self.value(r.den)) {
                (Some(x), Some(y)) => format!("{:.2}x", speedup(kind, x, y)),
                _ => "-".into(),
            };
            line += &format!(" {v:>11}");
        }
        println!("{line}");
    }
}

const RATIOS: [Ratio; 3] = [
    ratio("jit/interp", Col::Jit, Col::Interp),
    ratio("jit/qemu", Col::Jit, Col::Qemu),
    ratio("interp/qemu", Col::Interp, Col::Qemu),
];

/// Prints the header line of a table.
fn print_header(cols: &[Col], ratios: &[Ratio]) {
    let mut line = format!("{:<11} {:<8}", "workload", "unit");
    for c in cols {
        line += &format!(" {:>9}", c.name());
    }
    for r in ratios {
        line += &format!(" {:>11}", r.label);
    }
    println!("{line}");
}

/// Measures one workload on `cols`; failures go to `notes`.
fn measure_row(
    w: bk::Workload,
    cols: &[Col],
    qemu: Option<&std::path::Path>,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Row {
    let k = BenchKernel::new(w);
    let kind = w.kind();
    let n0 = (w.default_iters() / plan.divisor).max(1);
    let mut row = Row {
        name: w.name(),
        kind,
        cells: Vec::new(),
    };
    let mut per_iter: Option<u64> = None;
    for (col, engine) in [(Col::Interp, Engine::Interp), (Col::Jit, Engine::Jit)] {
        if !cols.contains(&col) {
            continue;
        }
        let start = match kind {
            Kind::Compute => n0 / X86BT_COMPUTE_START,
            Kind::Event => n0,
        };
        let cell = timed_pair(start, plan, |n| x86bt_once(&k, n, engine)).and_then(|p| {
            if plan.verbose {
                eprintln!("{} {}: {p:?}", w.name(), col.name());
            }
            match (p.per_iter(), per_iter) {
                (Some(a), Some(b)) if a != b => notes.push(format!(
                    "{}: {} retired {a} instructions per iteration, interp {b}",
                    w.name(),
                    col.name()
                )),
                (Some(a), None) => per_iter = Some(a),
                _ => {}
            }
            match kind {
                Kind::Compute => Ok(p.icount[1] as f64 / p.secs[1] / 1e6),
                Kind::Event => ns_per_event(&p),
            }
        });
        row.cells.push((col, cell));
    }
    if let (true, Some(q)) = (cols.contains(&Col::Qemu), qemu) {
        if per_iter.is_none() && kind == Kind::Compute {
            // Only the instruction count is wanted: two short untimed runs.
            per_iter = timed_pair(
                1,
                &Plan {
                    min_dt: 0.0,
                    ..*plan
                },
                |n| x86bt_once(&k, n, Engine::Interp),
            )
            .ok()
            .and_then(|p| p.per_iter());
        }
        let cell = timed_pair(n0, plan, |n| qemu_once(q, &k, n, plan.repeats)).and_then(|p| {
            if plan.verbose {
                eprintln!("{} qemu: {p:?}", w.name());
            }
            match (kind, per_iter) {
                (Kind::Event, _) => ns_per_event(&p),
                (Kind::Compute, Some(i)) => {
                    // Same instructions per iteration as under x86bt.
                    ns_per_event(&p)?;
                    Ok((i * u64::from(p.n)) as f64 / p.dt() / 1e6)
                }
                (Kind::Compute, None) => {
                    Err("no instruction count per iteration from x86bt".into())
                }
            }
        });
        row.cells.push((Col::Qemu, cell));
    }
    for (col, cell) in &row.cells {
        if let Err(e) = cell {
            notes.push(format!("{} FAILED on {}: {e}", col.name(), w.name()));
        }
    }
    row
}

/// The kernel suite.
fn suite_cmd(a: &BenchArgs) -> Result<u8, Error> {
    use std::io::Write;
    let mut cols = parse_engines(&a.engines)?;
    let workloads = parse_only(&a.only)?;
    let qemu = bk::find_qemu(a.qemu.as_deref());
    if cols.contains(&Col::Qemu) && qemu.is_none() {
        let what = a.qemu.as_ref().map_or_else(
            || "qemu-system-i386 is not on PATH".to_string(),
            |p| format!("{} does not exist", p.display()),
        );
        println!("qemu: not installed ({what}), skipped");
        cols.retain(|c| *c != Col::Qemu);
    }
    let plan = Plan {
        min_dt: if a.quick { 0.05 } else { 0.3 },
        repeats: if a.quick { 1 } else { a.qemu_repeats },
        divisor: if a.quick { 8 } else { 1 },
        verbose: a.verbose,
        runs: 1,
    };
    println!(
        "x86bt bench: the same Multiboot kernels (32-bit protected mode, paging on) on every engine"
    );
    println!(
        "compute in guest MIPS, events in ns/event (8 per loop iteration); ratios are speedups, >1 = first engine faster"
    );
    print_header(&Col::ALL, &RATIOS);
    let _ = std::io::stdout().flush();
    let mut notes = Vec::new();
    let mut compute = Vec::new();
    for w in workloads {
        let row = measure_row(w, &cols, qemu.as_deref(), &plan, &mut notes);
        row.print(&Col::ALL, &RATIOS);
        let _ = std::io::stdout().flush();
        if w.kind() == Kind::Compute {
            compute.push(row);
        }
    }
    if !compute.is_empty() {
        print_geomean("geomean", &compute, &cols, &Col::ALL, &RATIOS);
    }
    for note in &notes {
        println!("note: {note}");
    }
    println!("method: x86bt MIPS = icount / t of an in-process 2N run (translation included); ns/event = (t(2N) - t(N)) / 8N");
    if let (true, Some(q)) = (cols.contains(&Col::Qemu), &qemu) {
        println!(
            "qemu: {} -accel tcg, wall time from spawn, fastest of {}; MIPS = x86bt's icount per iteration x N / (t(2N) - t(N))",
            q.display(),
            plan.repeats
        );
    }
    Ok(0)
}

/// The geometric mean over the compute rows: of each engine's MIPS where it
/// passed every row, and of each speedup over the rows where both engines passed.
fn print_geomean(label: &str, rows: &[Row], cols: &[Col], shown: &[Col], ratios: &[Ratio]) {
    let geo = |v: &[f64]| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp();
    let mut line = format!("{label:<11} {:<8}", "MIPS");
    for &c in shown {
        let v: Vec<f64> = rows.iter().filter_map(|r| r.value(c)).collect();
        let cell = if !cols.contains(&c) || v.is_empty() {
            "-".into()
        } else if v.len() == rows.len() {
            format!("{:.1}", geo(&v))
        } else {
            format!("({}/{})", v.len(), rows.len())
        };
        line += &format!(" {cell:>9}");
    }
    for r in ratios {
        let v: Vec<f64> = rows
            .iter()
            .filter_map(|row| Some(row.value(r.num)? / row.value(r.den)?))
            .collect();
        let cell = if v.is_empty() {
            "-".into()
        } else if v.len() < rows.len() {
            format!("{:.2}x({}/{})", geo(&v), v.len(), rows.len())
        } else {
            format!("{:.2}x", geo(&v))
        };
        line += &format!(" {cell:>11}");
    }
    println!("{line}");
}

// ---------------------------------------------------------------------------
// `--native`: the C workloads, with the host program as a fourth column.

/// The ratios of the native tables: speedups of the translator, then times
/// over native time (the slower column first, so 1.00x is native speed).
const NATIVE_RATIOS: [Ratio; 4] = [
    ratio("jit/interp", Col::Jit, Col::Interp),
    ratio("jit/qemu", Col::Jit, Col::Qemu),
    ratio("t jit/nat", Col::Native, Col::Jit),
    ratio("t qemu/nat", Col::Native, Col::Qemu),
];

/// The columns of the native tables.
const NATIVE_COLS: [Col; 4] = [Col::Interp, Col::Jit, Col::Qemu, Col::Native];

/// The native runs start from the default N times this (the host is several
/// times faster than QEMU).
const NATIVE_START: u32 = 8;

fn parse_native_only(list: &[String]) -> Result<Vec<bn::Workload>, Error> {
    if list.is_empty() {
        return Ok(bn::WORKLOADS.to_vec());
    }
    list.iter()
        .map(|name| {
            bn::workload(name.trim()).ok_or_else(|| {
                let all: Vec<_> = bn::WORKLOADS.iter().map(|w| w.name).collect();
                Error::Usage(format!(
                    "--only: no native workload {name:?} (have: {})",
                    all.join(", ")
                ))
            })
        })
        .collect()
}

/// What one architecture's table is measured with.
struct NativeSetup<'a> {
    arch: Arch,
    programs: &'a Programs,
    image: Vec<u8>,
    cols: Vec<Col>,
    qemu: Option<std::path::PathBuf>,
    plan: &'a Plan,
}

/// The failure of a kernel run under x86bt, for a note.
fn describe_x86bt_failure(run: &bk::X86btRun, iters: u32) -> String {
    let c = &run.vm.cpu;
    let why = match run.outcome {
        crate::vm::RunOutcome::DebugExit(s) => bn::describe_exit(s >> 1),
        ref o => format!("{o:?}"),
    };
    format!(
        "{why} after {} instructions at {:04x}:{:x}, N = {iters}",
        run.vm.icount(),
        c.seg[x86bt_cpu::state::sreg::CS].selector,
        c.rip
    )
}

fn native_x86bt_once(
    s: &NativeSetup,
    w: bn::Workload,
    iters: u32,
    engine: Engine,
) -> Result<(u64, f64), String> {
    let run = bn::run_x86bt(&s.image, w, iters, engine).map_err(|e| e.to_string())?;
    if !run.passed() {
        return Err(describe_x86bt_failure(&run, iters));
    }
    Ok((run.vm.icount(), run.secs))
}

fn native_qemu_once(
    s: &NativeSetup,
    qemu: &std::path::Path,
    w: bn::Workload,
    iters: u32,
) -> Result<(u64, f64), String> {
    let mut best = f64::INFINITY;
    for _ in 0..s.plan.repeats.max(1) {
        let run = bn::run_qemu(qemu, s.programs, s.arch, w, iters).map_err(|e| e.to_string())?;
        if !run.passed() {
            let why = run
                .status
                .map_or_else(|| "killed".into(), |st| bn::describe_exit(st >> 1));
            let first = run.stderr.lines().next().unwrap_or_default();
            return Err(format!("{why}, N = {iters} {first}"));
        }
        best = best.min(run.secs);
    }
    Ok((0, best))
}

fn native_host_once(s: &NativeSetup, w: bn::Workload, iters: u32) -> Result<(u64, f64), String> {
    let mut best = f64::INFINITY;
    for _ in 0..s.plan.repeats.max(1) {
        let run = bn::run_host(s.programs, s.arch, w, iters).map_err(|e| e.to_string())?;
        let secs = match (run.passed(), run.secs) {
            (true, Some(t)) => t,
            _ => {
                let why = run
                    .status
                    .map_or_else(|| "killed".into(), bn::describe_exit);
                return Err(format!("{why}, N = {iters}: {}", run.stdout.trim()));
            }
        };
        best = best.min(secs);
    }
    Ok((0, best))
}

/// MIPS of a pair whose every iteration retires `per_iter` guest
/// instructions: per_iter x N / (t(2N) - t(N)).
fn pair_mips(p: &Pair, per_iter: u64) -> Cell {
    ns_per_event(p)?;
    Ok((per_iter * u64::from(p.n)) as f64 / p.dt() / 1e6)
}

/// Guest instructions per iteration of `w`: two short interpreter runs.
fn native_per_iter(s: &NativeSetup, w: bn::Workload) -> Option<u64> {
    let quick = Plan {
        min_dt: 0.0,
        ..*s.plan
    };
    timed_pair(1, &quick, |n| native_x86bt_once(s, w, n, Engine::Interp))
        .ok()?
        .per_iter()
}

/// One timed pair of `col` on `w`, from `n` iterations up.
fn native_pair(s: &NativeSetup, col: Col, w: bn::Workload, n: u32) -> Result<Pair, String> {
    match col {
        Col::Interp => timed_pair(n, s.plan, |n| native_x86bt_once(s, w, n, Engine::Interp)),
        Col::Jit => timed_pair(n, s.plan, |n| native_x86bt_once(s, w, n, Engine::Jit)),
        Col::Qemu => {
            let q = s.qemu.as_deref().ok_or("no QEMU")?;
            timed_pair(n, s.plan, |n| native_qemu_once(s, q, w, n))
        }
        Col::Native => timed_pair(n, s.plan, |n| native_host_once(s, w, n)),
    }
}

/// The median of `v` (not empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Measures one workload of one architecture: `plan.runs` rounds, each
/// column once per round (so a slow spell of the host hits every column
/// alike), and the median of each column's rounds. The guest instructions per
/// iteration come back too (for the perf table).
fn measure_native_row(
    s: &NativeSetup,
    w: bn::Workload,
    notes: &mut Vec<String>,
) -> (Row, Option<u64>) {
    let n0 = (w.default_iters / s.plan.divisor).max(1);
    let mut cols: Vec<(Col, u32, Result<Vec<Pair>, String>)> = Vec::new();
    for col in NATIVE_COLS {
        if s.cols.contains(&col) {
            let n = match col {
                Col::Interp | Col::Jit => n0 / X86BT_COMPUTE_START,
                Col::Qemu => n0,
                Col::Native => n0.saturating_mul(NATIVE_START),
            };
            cols.push((col, n.max(1), Ok(Vec::new())));
        }
    }
    for _ in 0..s.plan.runs.max(1) {
        for (col, n, pairs) in &mut cols {
            let Ok(list) = pairs else { continue };
            match native_pair(s, *col, w, *n) {
                Ok(p) => {
                    if s.plan.verbose {
                        eprintln!("{}-bit {} {}: {p:?}", s.arch.bits(), w.name, col.name());
                    }
                    *n = p.n;
                    list.push(p);
                }
                Err(e) => *pairs = Err(e),
            }
        }
    }
    let mut per_iter: Option<u64> = None;
    for (col, _, pairs) in &cols {
        let Ok(list) = pairs else { continue };
        for p in list.iter().filter(|p| p.icount[1] > 0) {
            match (p.per_iter(), per_iter) {
                (Some(a), Some(b)) if a != b => notes.push(format!(
                    "{}-bit {}: {} retired {a} instructions per iteration, before {b}",
                    s.arch.bits(),
                    w.name,
                    col.name()
                )),
                (Some(a), None) => per_iter = Some(a),
                (None, _) => notes.push(format!(
                    "{}-bit {}: {} retired a varying count per iteration: {p:?}",
                    s.arch.bits(),
                    w.name,
                    col.name()
                )),
                _ => {}
            }
        }
    }
    if per_iter.is_none() && !s.cols.contains(&Col::Interp) && !s.cols.contains(&Col::Jit) {
        per_iter = native_per_iter(s, w);
    }
    let mut row = Row {
        name: w.name,
        kind: Kind::Compute,
        cells: Vec::new(),
    };
    for (col, _, pairs) in cols {
        let cell = pairs.and_then(|list| {
            let i = per_iter.ok_or("no instruction count per iteration from x86bt")?;
            let mut mips = list
                .iter()
                .map(|p| pair_mips(p, i))
                .collect::<Result<Vec<f64>, String>>()?;
            Ok(median(&mut mips))
        });
        if let Err(e) = &cell {
            notes.push(format!(
                "{} FAILED on {}-bit {}: {e}",
                col.name(),
                s.arch.bits(),
                w.name
            ));
        }
        row.cells.push((col, cell));
    }
    (row, per_iter)
}

/// The QEMU of `arch`: the option's path, or the emulator on PATH.
fn native_qemu(a: &BenchArgs, arch: Arch) -> Result<std::path::PathBuf, String> {
    let given = match arch {
        Arch::I386 => a.qemu.as_deref(),
        Arch::X86_64 => a.qemu64.as_deref(),
    };
    match given {
        Some(q) if q.exists() => Ok(q.to_path_buf()),
        Some(q) => Err(format!("{} does not exist", q.display())),
        None => bk::find_on_path(arch.qemu_binary())
            .ok_or_else(|| format!("{} is not on PATH", arch.qemu_binary())),
    }
}

/// `x86bt bench --native`.
fn native_cmd(a: &BenchArgs) -> Result<u8, Error> {
    use std::io::Write;
    let engines = parse_engines(&a.engines)?;
    let workloads = parse_native_only(&a.only)?;
    let arches: &[Arch] = match a.arch {
        BenchArch::I386 => &[Arch::I386],
        BenchArch::X86_64 => &[Arch::X86_64],
        BenchArch::Both => &Arch::ALL,
    };
    let plan = Plan {
        min_dt: if a.quick { 0.05 } else { 0.3 },
        repeats: if a.quick { 1 } else { a.qemu_repeats },
        divisor: if a.quick { 8 } else { 1 },
        verbose: a.verbose,
        runs: a.runs,
    };
    let programs = bn::build()?;
    let counters = bn::probe_counters();
    println!("x86bt bench --native: the C workloads of bench/c/, one source built with gcc into a Multiboot kernel and a host program per architecture");
    println!("MIPS = guest instructions per iteration (x86bt's count) x N / (t(2N) - t(N)), every column; jit/interp, jit/qemu: speedups (>1 = first faster); t X/nat: X's time over native time (1.00x = native speed)");
    let mut notes = Vec::new();
    let mut perf_rows = Vec::new();
    for &arch in arches {
        let mut cols = engines.clone();
        let qemu = if cols.contains(&Col::Qemu) {
            match native_qemu(a, arch) {
                Ok(q) => Some(q),
                Err(why) => {
                    println!("qemu: not installed ({why}), skipped");
                    cols.retain(|c| *c != Col::Qemu);
                    None
                }
            }
        } else {
            None
        };
        cols.push(Col::Native);
        let setup = NativeSetup {
            arch,
            programs: &programs,
            image: programs.kernel_image(arch)?,
            cols: cols.clone(),
            qemu,
            plan: &plan,
        };
        println!();
        println!(
            "{}-bit kernels ({}; qemu: {})",
            arch.bits(),
            match arch {
                Arch::I386 => "protected mode, paging, i686 code + SSE loops",
                Arch::X86_64 => "long mode, 2 MiB pages",
            },
            setup.qemu.as_ref().map_or("-".into(), |q| format!(
                "{} -cpu {}",
                q.display(),
                bn::QEMU_CPU
            ))
        );
        print_header(&NATIVE_COLS, &NATIVE_RATIOS);
        let _ = std::io::stdout().flush();
        let mut rows = Vec::new();
        for &w in &workloads {
            let (row, per_iter) = measure_native_row(&setup, w, &mut notes);
            row.print(&NATIVE_COLS, &NATIVE_RATIOS);
            let _ = std::io::stdout().flush();
            if let (Counters::Available(perf), Some(i)) = (&counters, per_iter) {
                perf_rows.push(measure_host_insns(&setup, perf, w, i, &mut notes));
            }
            rows.push(row);
        }
        print_geomean("geomean", &rows, &cols, &NATIVE_COLS, &NATIVE_RATIOS);
        // The goals differ for the scalar and the SSE workloads.
        let (sse, scalar): (Vec<Row>, Vec<Row>) = rows
            .into_iter()
            .partition(|r| bn::workload(r.name).is_some_and(|w| w.sse));
        if !sse.is_empty() && !scalar.is_empty() {
            print_geomean("  scalar", &scalar, &cols, &NATIVE_COLS, &NATIVE_RATIOS);
            print_geomean("  sse", &sse, &cols, &NATIVE_COLS, &NATIVE_RATIOS);
        }
    }
    println!();
    match &counters {
        Counters::Available(_) => {
            println!("host instructions per guest instruction (perf stat -e instructions:u, (h(2N) - h(N)) / (guest instructions of N iterations)):");
            println!(
                "{:<5} {:<11} {:>9} {:>9} {:>9} {:>9}",
                "arch", "workload", "interp", "jit", "qemu", "native"
            );
            for line in &perf_rows {
                println!("{line}");
            }
        }
        Counters::Unavailable(why) => {
            println!("host instructions per guest instruction: not measured: {why}")
        }
    }
    for note in &notes {
        println!("note: {note}");
    }
    println!("method: x86bt in-process (Vm::run timed); qemu -accel tcg -cpu {} from spawn, fastest of {}; native: the host program's own clock around the iterations, fastest of {}; median of {} interleaved round(s) per cell", bn::QEMU_CPU, plan.repeats, plan.repeats, plan.runs.max(1));
    Ok(0)
}

/// One line of the perf table: host instructions per guest instruction of
/// `w` under each column's program, from `perf stat` around whole runs of N
/// and 2N iterations (so start-up cancels).
fn measure_host_insns(
    s: &NativeSetup,
    perf: &std::path::Path,
    w: bn::Workload,
    per_iter: u64,
    notes: &mut Vec<String>,
) -> String {
    let n = (w.default_iters / s.plan.divisor).max(1);
    let kernel = s.programs.kernel_path(s.arch);
    let exe = std::env::current_exe().ok();
    let command = |col: Col, iters: u32| -> Option<std::process::Command> {
        let mut c;
        match col {
            Col::Interp | Col::Jit => {
                c = std::process::Command::new(exe.as_ref()?);
                c.args(["run", "--engine", col.name(), "--kernel"])
                    .arg(&kernel)
                    .args(["--append", &bn::cmdline(w, iters)])
                    .args(["-m", "64", "--serial", "null", "--no-reboot"]);
            }
            Col::Qemu => {
                c = std::process::Command::new(s.qemu.as_ref()?);
                c.args(["-accel", "tcg", "-cpu", bn::QEMU_CPU, "-nodefaults"])
                    .args(["-display", "none", "-no-reboot", "-m", "64", "-kernel"])
                    .arg(&kernel)
                    .args(["-append", &bn::cmdline(w, iters)])
                    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
            }
            Col::Native => {
                c = std::process::Command::new(s.programs.host_path(s.arch));
                c.arg(w.name).arg(iters.to_string());
            }
        }
        Some(c)
    };
    let mut line = format!("{:<5} {:<11}", s.arch.bits(), w.name);
    for col in NATIVE_COLS {
        let mut n = n;
        if col == Col::Native {
            n = n.saturating_mul(NATIVE_START);
        }
        let cell = if !s.cols.contains(&col) {
            "-".to_string()
        } else {
            let expect = match col {
                Col::Native => bn::HOST_PASS,
                _ => bk::PASS_STATUS,
            };
            let count = |iters| {
                command(col, iters)
                    .ok_or_else(|| "no command".to_string())
                    .and_then(|c| bn::count_instructions(perf, c, expect))
            };
            match (count(n), count(2 * n)) {
                (Ok(h1), Ok(h2)) if h2 > h1 => {
                    format!("{:.2}", (h2 - h1) as f64 / (per_iter * u64::from(n)) as f64)
                }
                (Ok(h1), Ok(h2)) => {
                    notes.push(format!(
                        "perf, {}-bit {} {}: {h2} host instructions at 2N, {h1} at N",
                        s.arch.bits(),
                        w.name,
                        col.name()
                    ));
                    "?".to_string()
                }
                (Err(e), _) | (_, Err(e)) => {
                    notes.push(format!(
                        "perf, {}-bit {} {}: {e}",
                        s.arch.bits(),
                        w.name,
                        col.name()
                    ));
                    "FAIL".to_string()
                }
            }
        };
        line += &format!(" {cell:>9}");
    }
    line
}
