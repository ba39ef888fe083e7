//! Lockstep: every unit runs on the translator (on a copy of the CPU state) and
//! on the interpreter (on the real state, so the run goes on from the
//! reference semantics), and the two results must agree.
//!
//! Memory is shared, so the translator's run logs every byte it overwrites
//! (`CpuState::log_undo`); its final bytes are recorded, the old bytes are put
//! back, and the code pages its stores unmarked are marked again, so the
//! interpreter starts from the same memory and the same code-page marks. Then
//! the interpreter runs. The two may end their units at different
//! instructions (the interpreter ends one after a store into code, for one):
//! the interpreter runs on, unit by unit and one instruction at a time near
//! the end, to the translator's boundary, so they are always compared at the
//! same instruction. The comparison covers the
//! unit exit, every field of `CpuState` (registers, flags, RIP, `icount`,
//! segment caches, control registers, the x87), the sequence of logged writes
//! (linear address, size) and the final value of every byte either engine
//! wrote.
//!
//! A unit with port I/O runs once, on the translator, and is not compared: a
//! device cannot be asked the same question twice. (The machine has no MMIO; a
//! store to ROM or to a hole is dropped by both engines alike.) Page-table
//! accessed/dirty bits set by the first run are not undone; the second run
//! finds them set and computes the same translation.

use crate::engine::Translator;
use crate::error::TranslatorError;
use crate::stats::JitStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use x86bt_cpu::engine::{code_address, fetch_unit, Engine, UnitExit};
use x86bt_cpu::interp::Insn;
use x86bt_cpu::state::{sreg, Segment};
use x86bt_cpu::{CpuState, Interpreter};
use x86bt_decoder::{DecodedUnit, MAX_UNIT_INSNS};
use x86bt_machine::{GuestPhys, Machine};

/// The first difference between the engines, as a report for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// What differed, where, and the unit that ran.
    pub report: String,
}

/// Counters of a lockstep run.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockstepStats {
    /// Units run.
    pub units: u64,
    /// Units compared.
    pub compared: u64,
    /// Units with port I/O, run once by the translator and not compared.
    pub io_units: u64,
    /// Units that reached memory-mapped I/O, run once by the translator and
    /// not compared.
    pub mmio_units: u64,
    /// Units the interpreter ran on to reach the translator's instruction
    /// boundary.
    pub caught_up: u64,
}

/// The lockstep engine.
pub struct Lockstep {
    reference: Interpreter,
    jit: Translator,
    stats: LockstepStats,
    /// Test hook: after this many units, flip bit 0 of the translator's EAX.
    inject_after: Option<u64>,
    /// Whether the unit at (physical address, mode key, RIP) does port I/O.
    io_units: std::collections::HashMap<(u64, x86bt_cpu::CpuMode, u64), bool>,
    /// The divergence the last unit found, until the run loop takes it.
    divergence: Option<Divergence>,
}

/// How many more units the interpreter may run to reach the translator's
/// instruction boundary.
const CATCH_UP_UNITS: u32 = 4096;

/// Moves what `c` wrote since its logs were last emptied into `wrote` (final
/// bytes) and `log` (linear address, size), and puts memory back as it was
/// before those writes, with the code marks the writes removed.
fn take_writes(
    c: &mut CpuState,
    m: &mut Machine,
    wrote: &mut BTreeMap<u64, u8>,
    log: &mut Vec<(u64, u32)>,
) {
    wrote.extend(final_bytes(m, &c.undo_log));
    log.append(&mut c.write_log);
    for &(p, old) in c.undo_log.iter().rev() {
        m.mem
            .write_u8(GuestPhys(p & !x86bt_cpu::mmu::UNDO_WALK), old);
    }
    c.undo_log.clear();
    // Memory is as before, so every cached unit is still right.
    m.mem.keep_code_marks();
}

/// Final value of every byte an instruction wrote, from an undo log (the page
/// walks' accessed/dirty entries, marked `UNDO_WALK`, left out).
fn final_bytes(m: &Machine, undo: &[(u64, u8)]) -> BTreeMap<u64, u8> {
    undo.iter()
        .filter(|&&(p, _)| p & x86bt_cpu::mmu::UNDO_WALK == 0)
        .map(|&(p, _)| (p, m.mem.read_u8(GuestPhys(p))))
        .collect()
}

impl Lockstep {
    /// Both engines, with empty caches.
    pub fn new() -> Result<Self, TranslatorError> {
        Ok(Self {
            reference: Interpreter::new(),
            jit: Translator::new()?,
            stats: LockstepStats::default(),
            inject_after: None,
            io_units: std::collections::HashMap::new(),
            divergence: None,
        })
    }

    /// The translator's counters.
    pub fn jit_stats(&self) -> JitStats {
        self.jit.stats()
    }

    /// The lockstep counters.
    pub fn stats(&self) -> LockstepStats {
        self.stats
    }

    /// For testing the checker: after `units` units, the translator's result is
    /// corrupted (bit 0 of EAX flipped), which the comparison must report.
    pub fn inject_fault_after(&mut self, units: u64) {
        self.inject_after = Some(units);
    }

    /// Test hook: the interpreter alone cuts its units to one instruction, so
    /// every unit of the translator ends later than the interpreter's, and the
    /// comparison must still find both at one boundary.
    #[doc(hidden)]
    pub fn set_reference_single_step(&mut self, on: bool) {
        self.reference.single_step = on;
    }

    /// Whether the unit at CS:IP does port I/O, remembered per (physical
    /// address, mode key) until code is written.
    fn unit_does_io(&mut self, cpu: &mut CpuState, m: &mut Machine) -> bool {
        let mode = x86bt_cpu::CpuMode::of(cpu);
        let phys = match code_address(cpu, m, mode) {
            Ok((_, p)) => p,
            Err(_) => return self.jit.unit_does_io(cpu, m),
        };
        let key = (phys, mode, cpu.rip);
        if let Some(&io) = self.io_units.get(&key) {
            return io;
        }
        let io = self.jit.unit_does_io(cpu, m);
        self.io_units.insert(key, io);
        io
    }

    /// Runs one unit on both engines and compares them: the exit, or the
    /// first difference.
    fn compare_unit(
        &mut self,
        cpu: &mut CpuState,
        m: &mut Machine,
    ) -> Result<UnitExit, Divergence> {
        if m.mem.code_write_pending {
            self.invalidate_written(m);
        }
        self.stats.units += 1;
        if self.unit_does_io(cpu, m) {
            self.stats.io_units += 1;
            return Ok(self.jit.run_unit(cpu, m));
        }
        // Where the unit starts, for a report (the whole state is not cloned
        // twice per unit: that was most of lockstep's time).
        let before = (cpu.seg[sreg::CS], cpu.rip, cpu.icount);
        let saved = (
            cpu.log_writes,
            cpu.log_undo,
            std::mem::take(&mut cpu.write_log),
            std::mem::take(&mut cpu.undo_log),
        );
        let start_rip = cpu.rip;
        // The translator first, on a copy; its writes are recorded and undone.
        let mut cj = cpu.clone();
        cj.log_writes = true;
        cj.log_undo = true;
        let mmio_before = m.mmio_accesses;
        let exit_t = self.jit.run_unit(&mut cj, m);
        if m.mmio_accesses != mmio_before {
            // The unit reached a device through memory-mapped I/O (the local
            // APIC, say): the access had its effect and cannot be made twice,
            // so the translator's run stands, writes and all, and is not
            // compared (as units with port I/O, which are known beforehand).
            self.stats.mmio_units += 1;
            let (lw, lu, mut wl, ul) = saved;
            if lw {
                wl.append(&mut cj.write_log);
            }
            cj.undo_log.clear();
            (cj.log_writes, cj.log_undo, cj.write_log, cj.undo_log) = (lw, lu, wl, ul);
            *cpu = cj;
            return Ok(exit_t);
        }
        if self.inject_after.is_some_and(|n| self.stats.units > n) {
            cj.gpr[0] ^= 1;
        }
        let (mut wrote_t, mut log_t) = (BTreeMap::new(), Vec::new());
        take_writes(&mut cj, m, &mut wrote_t, &mut log_t);
        // Then the interpreter, the reference, on the real state, to the
        // translator's instruction boundary: the translator may have run on
        // where the interpreter ends a unit (after a store into code, for one),
        // so the interpreter runs unit after unit, and one instruction at a
        // time when the boundary is closer than a whole unit, so that it never
        // runs past it (memory then holds exactly its writes up to there).
        cpu.log_writes = true;
        cpu.log_undo = true;
        let target = cj.icount;
        let keep_single = self.reference.single_step;
        let mut rounds = 0;
        // Whether the last round ran one instruction only because the
        // boundary was near (a cut unit ends with an event, whatever the
        // unit it was cut from).
        let mut cut;
        let exit_i = loop {
            let near = target.saturating_sub(cpu.icount) < MAX_UNIT_INSNS as u64;
            cut = near && !keep_single;
            self.reference.single_step = keep_single || near;
            let exit = self.reference.run_unit(cpu, m);
            self.reference.single_step = keep_single;
            rounds += 1;
            let goes_on = matches!(exit, UnitExit::Continue | UnitExit::Event);
            if cpu.icount >= target || !goes_on || rounds > CATCH_UP_UNITS {
                break exit;
            }
            if m.mem.code_write_pending {
                self.invalidate_written(m);
            }
            self.stats.caught_up += 1;
        };
        let wrote_i = final_bytes(m, &cpu.undo_log);
        let log_i = std::mem::take(&mut cpu.write_log);
        cpu.undo_log.clear();
        let (lw, lu, mut wl, ul) = saved;
        if lw {
            wl.extend_from_slice(&log_i);
        }
        (cpu.log_writes, cpu.log_undo, cpu.write_log, cpu.undo_log) = (lw, lu, wl, ul);
        (cj.log_writes, cj.log_undo) = (cpu.log_writes, cpu.log_undo);
        cj.write_log.clone_from(&cpu.write_log);
        cj.undo_log.clone_from(&cpu.undo_log);
        // Only meaningful while an instruction executes; inline code skips it.
        cj.next_rip = cpu.next_rip;
        let interp: &CpuState = cpu;

        let mut diffs = Vec::new();
        // Continue and Event say where a unit ended, not what the guest did:
        // once the interpreter ran more than one unit they may differ, and so
        // they may for a unit that ends by branching to its own start (the
        // interpreter takes an instruction whose next RIP is its own as a
        // restarting REP and ends with an event), and for an interpreter unit
        // cut to one instruction because the translator's boundary was near
        // (random ROM seed 1860: the translator's unit held one instruction,
        // the interpreter's two, so the cut one ended with an event); the run
        // loop then looks (Event). Any other exit must be the same.
        let plain = |e: &UnitExit| matches!(e, UnitExit::Continue | UnitExit::Event);
        let same_place = cpu.rip == start_rip && cj.rip == start_rip;
        let exit = if exit_i == exit_t {
            exit_i
        } else if (rounds > 1 || same_place || cut) && plain(&exit_i) && plain(&exit_t) {
            UnitExit::Event
        } else {
            diffs.push(format!("unit exit: interp {exit_i:?}, jit {exit_t:?}"));
            exit_i
        };
        state_diffs(interp, &cj, &mut diffs);
        if log_i != log_t {
            diffs.push(format!(
                "writes (linear address, size): interp {log_i:x?}, jit {log_t:x?}"
            ));
        }
        for (p, v) in &wrote_i {
            if wrote_t.get(p) != Some(v) {
                diffs.push(format!(
                    "memory {p:#x}: interp wrote {v:#04x}, jit {:?}",
                    wrote_t.get(p).map(|b| format!("{b:#04x}"))
                ));
            }
        }
        for (p, v) in &wrote_t {
            if !wrote_i.contains_key(p) {
                diffs.push(format!("memory {p:#x}: jit wrote {v:#04x}, interp did not"));
            }
        }
        if diffs.is_empty() {
            self.stats.compared += 1;
            return Ok(exit);
        }
        Err(Divergence {
            report: self.report(before, interp, m, &diffs),
        })
    }

    fn report(
        &self,
        before: (Segment, u64, u64),
        after: &CpuState,
        m: &mut Machine,
        diffs: &[String],
    ) -> String {
        let mut out = String::new();
        let (cs, rip, icount) = before;
        let _ = writeln!(
            out,
            "lockstep divergence in unit {} at {:04x}:{:08x} (icount {}):",
            self.stats.units, cs.selector, rip, icount
        );
        for d in diffs {
            let _ = writeln!(out, "  {d}");
        }
        // The translation of CS:IP as it starts the unit (with the paging state
        // after it: a unit that changes paging ends there).
        let mut cpu = after.clone();
        cpu.seg[sreg::CS] = cs;
        cpu.rip = rip;
        let mode = x86bt_cpu::CpuMode::of(&cpu);
        let phys = code_address(&mut cpu, m, mode);
        let mut unit = DecodedUnit::default();
        match phys {
            Ok((_, p)) if fetch_unit(&mut cpu, m, p, mode, &mut unit).is_ok() => {
                let bits = mode.bits();
                let insns: Vec<Insn> = unit
                    .instructions()
                    .iter()
                    .map(|i| Insn::prepare(i, bits))
                    .collect();
                out.push_str("the unit (as memory holds it now) and its translation:\n");
                out.push_str(&crate::listing::render(bits, &insns));
            }
            _ => out.push_str("(the unit cannot be fetched again)\n"),
        }
        out
    }
}

impl Engine for Lockstep {
    /// Runs one unit on both engines and compares them. A divergence is kept
    /// for [`Engine::take_divergence`], and the unit returns
    /// [`UnitExit::Event`], so the run loop looks and stops.
    fn run_unit(&mut self, cpu: &mut CpuState, m: &mut Machine) -> UnitExit {
        match self.compare_unit(cpu, m) {
            Ok(exit) => exit,
            Err(d) => {
                self.divergence = Some(d);
                UnitExit::Event
            }
        }
    }

    /// Invalidation for both engines (and what is known of which units do
    /// port I/O).
    fn invalidate_pages(&mut self, pages: &[u64]) {
        if !pages.is_empty() {
            self.io_units.clear();
        }
        self.jit.invalidate_pages(pages);
        self.reference.invalidate_pages(pages);
    }

    /// Drops everything cached by both engines.
    fn flush(&mut self) {
        self.io_units.clear();
        self.jit.flush();
        self.reference.flush();
    }

    /// Runs one instruction per unit on both engines (see
    /// [`Translator::set_single_step`]).
    fn set_single_step(&mut self, on: bool) {
        self.reference.single_step = on;
        self.jit.set_single_step(on);
    }

    /// Makes vCPU `n` the one that runs next (see [`Translator::select_vcpu`]).
    fn select_vcpu(&mut self, n: usize) {
        self.jit.select_vcpu(n);
    }

    /// Forgets what was kept for vCPU `n` (see [`Translator::reset_vcpu`]).
    fn reset_vcpu(&mut self, n: usize) {
        self.jit.reset_vcpu(n);
    }

    /// The translator's counters, then lockstep's own.
    fn stats_text(&self) -> Option<String> {
        let s = self.stats();
        Some(format!(
            "{}\nlockstep: {} units, {} compared, {} with port I/O run once (not compared), {} with memory-mapped I/O run once (not compared), {} run on to the translator's boundary",
            self.jit_stats(),
            s.units,
            s.compared,
            s.io_units,
            s.mmio_units,
            s.caught_up
        ))
    }

    fn take_divergence(&mut self) -> Option<String> {
        self.divergence.take().map(|d| d.report)
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Appends one line per field of `CpuState` that differs.
fn state_diffs(i: &CpuState, t: &CpuState, out: &mut Vec<String>) {
    const GPR: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
    for (n, (a, b)) in i.gpr.iter().zip(&t.gpr).enumerate() {
        if a != b {
            let name = GPR.get(n).copied().unwrap_or("r8+");
            out.push(format!("{name}: interp {a:#x}, jit {b:#x}"));
        }
    }
    macro_rules! field {
        ($($f:ident),*) => {$(
            if i.$f != t.$f {
                out.push(format!(
                    "{}: interp {:x?}, jit {:x?}",
                    stringify!($f), i.$f, t.$f
                ));
            }
        )*};
    }
    field!(
        rip,
        rflags,
        icount,
        cr0,
        cr2,
        cr3,
        cr4,
        efer,
        int_shadow,
        nmi_blocked,
        pending_db,
        ldtr,
        tr,
        gdtr,
        idtr,
        cr8,
        dr,
        tsc_offset,
        sysenter,
        nmi_pending
    );
    if i.run_state != t.run_state {
        out.push(format!(
            "run state: interp {:?}, jit {:?}",
            i.run_state, t.run_state
        ));
    }
    for (n, (a, b)) in i.seg.iter().zip(&t.seg).enumerate() {
        if a != b {
            out.push(format!("segment {n}: interp {a:x?}, jit {b:x?}"));
        }
    }
    if i.perf != t.perf {
        out.push("performance-counter state differs".into());
    }
    if i.fpu != t.fpu || i.fx != t.fx {
        out.push("x87/FXSAVE state differs".into());
    }
    if out.is_empty() && !same_but_tlb(i, t) {
        out.push("other CPU state".into());
    }
}

/// Whether `i` and `t` agree on every field but the TLB. Its contents are not
/// a function of the program: a decode that misses an engine's own unit cache
/// reads ahead into the next page and caches that page's translation, and the
/// two engines' caches miss at different times. What a program can observe of
/// the TLB (a stale translation used) shows in the other fields and in memory.
/// The destructuring names every field, so a new one must be added here.
fn same_but_tlb(i: &CpuState, t: &CpuState) -> bool {
    let CpuState {
        gpr,
        rip,
        rflags,
        seg,
        ldtr,
        tr,
        gdtr,
        idtr,
        cr0,
        cr2,
        cr3,
        cr4,
        cr8,
        efer,
        dr,
        tsc_offset,
        sysenter,
        perf,
        icount,
        next_rip,
        int_shadow,
        run_state,
        nmi_pending,
        nmi_blocked,
        fx,
        fpu,
        xcr0,
        msr,
        rep_single,
        log_writes,
        write_log,
        pending_db,
        log_undo,
        undo_log,
        pause_hint,
        log_accesses,
        // A debugger's log of data accesses, like the TLB, is not the
        // program's state.
        access_log: _,
        tlb: _,
    } = i;
    *gpr == t.gpr
        && *rip == t.rip
        && *rflags == t.rflags
        && *seg == t.seg
        && *ldtr == t.ldtr
        && *tr == t.tr
        && *gdtr == t.gdtr
        && *idtr == t.idtr
        && *cr0 == t.cr0
        && *cr2 == t.cr2
        && *cr3 == t.cr3
        && *cr4 == t.cr4
        && *cr8 == t.cr8
        && *efer == t.efer
        && *dr == t.dr
        && *tsc_offset == t.tsc_offset
        && *sysenter == t.sysenter
        && *perf == t.perf
        && *icount == t.icount
        && *next_rip == t.next_rip
        && *int_shadow == t.int_shadow
        && *run_state == t.run_state
        && *nmi_pending == t.nmi_pending
        && *nmi_blocked == t.nmi_blocked
        && *fx == t.fx
        && *fpu == t.fpu
        && *xcr0 == t.xcr0
        && *msr == t.msr
        && *rep_single == t.rep_single
        && *log_writes == t.log_writes
        && *write_log == t.write_log
        && *pending_db == t.pending_db
        && *pause_hint == t.pause_hint
        && *log_undo == t.log_undo
        && *undo_log == t.undo_log
        && *log_accesses == t.log_accesses
}
