//! The interpreter engine: the unit cache and the loop that runs one unit.
//!
//! Units are keyed by the guest-physical address of their first byte and the
//! [`CpuMode`] (code size and the mode bits that change decoding). The cache is a
//! direct-mapped table of prepared units plus a per-page index, so a write to a
//! page that holds code invalidates exactly the units decoded from it. A unit is
//! position-independent in CS:IP (relative branches are kept as displacements), so
//! any CS:IP alias of the same physical bytes shares it, as long as the unit fits
//! below the CS limit there. Fetching, the page index and the alias check are
//! every engine's ([`crate::engine`]).

use super::debug;
use super::interrupt;
use super::Insn;
use crate::engine::{
    code_address, code_linear, fetch_unit, index_code_pages, next_ip, unit_fits, Engine, UnitExit,
    NO_PAGE,
};
use crate::exception::Exception;
use crate::mode::CpuMode;
use crate::state::flags::{RF, TF};
use crate::state::{sreg, CpuState, RunState};
use std::collections::HashMap;
use x86bt_decoder::{DecodedUnit, MAX_UNIT_INSNS};
use x86bt_machine::Linear;
use x86bt_machine::Machine;

/// Number of slots in the direct-mapped unit cache (a power of two).
const SLOTS: usize = 1 << 14;

/// Counters for `--stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    /// Units found in the cache.
    pub hits: u64,
    /// Units decoded.
    pub misses: u64,
    /// Units dropped because their code was written.
    pub invalidations: u64,
    /// Instructions in all decoded units (for the mean unit length).
    pub decoded_insns: u64,
}

#[derive(Clone)]
struct Slot {
    valid: bool,
    phys: u64,
    next_phys: u64,
    key: CpuMode,
    byte_len: u32,
    count: u8,
    /// The unit ends on an ordinary instruction (not sensitive, not #UD).
    plain_end: bool,
}

/// The interpreter: the reference engine.
pub struct Interpreter {
    /// Slot headers, kept apart from the instructions so a lookup touches one
    /// small, dense array.
    slots: Vec<Slot>,
    /// The prepared instructions of each slot.
    units: Vec<[Insn; MAX_UNIT_INSNS]>,
    /// RAM page -> slots holding units decoded from it.
    page_index: HashMap<u64, Vec<u32>>,
    scratch: DecodedUnit,
    /// Cache counters.
    pub stats: CacheStats,
    /// Run one instruction per unit (differential testing, debugging).
    pub single_step: bool,
    /// The chain horizon ([`Engine::set_budget`]): units follow each other
    /// inside [`Engine::run_unit`] while `icount` is below it.
    budget: u64,
    /// The linear pages holding a debugger's breakpoints, sorted
    /// ([`Engine::set_break_pages`]): the chain stops before a unit that
    /// starts on one of them.
    break_pages: Vec<u64>,
    /// Lookups of units of the current chain, valid while `lookup_gen`
    /// stays: the units of a loop skip the lookup after its first iteration.
    lookups: [Remembered; LOOKUPS],
    /// Bumped whenever a remembered lookup may no longer hold: a new chain
    /// (between calls the run loop may invalidate units or run another
    /// vCPU), a change of [`LookupCtx`], a unit decoded or invalidated. It
    /// starts at 1, so the empty entries (generation 0) never hold.
    lookup_gen: u64,
    /// The context of the remembered lookups.
    lookup_ctx: Option<LookupCtx>,
}

/// What a unit's lookup answer depends on besides CS:IP: the mode, the CS
/// base and limit, the privilege, CR0 (paging), the TLB contents (the fetch
/// translation) and the A20 gate. While none of those changed, and no unit was
/// decoded or invalidated (so every slot still holds its unit), the lookup at
/// the same CS:IP gives the same slot again and has no effect of its own (the
/// fetch translation hits the TLB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LookupCtx {
    key: CpuMode,
    tlb_epoch: u64,
    cs_base: u64,
    cs_limit: u32,
    cpl: u8,
    cr0: u64,
    a20: u64,
}

impl LookupCtx {
    fn of(cpu: &CpuState, m: &Machine, key: CpuMode) -> Self {
        let cs = &cpu.seg[sreg::CS];
        Self {
            key,
            tlb_epoch: cpu.tlb.epoch(),
            cs_base: cs.base,
            cs_limit: cs.limit,
            cpl: cpu.cpl(),
            cr0: cpu.cr0,
            a20: m.mem.a20_mask(),
        }
    }

    /// Whether the current state has this context.
    #[inline(always)]
    fn holds(&self, cpu: &CpuState, m: &Machine, key: CpuMode) -> bool {
        let cs = &cpu.seg[sreg::CS];
        self.key == key
            && self.tlb_epoch == cpu.tlb.epoch()
            && self.cs_base == cs.base
            && self.cs_limit == cs.limit
            && self.cpl == cpu.cpl()
            && self.cr0 == cpu.cr0
            && self.a20 == m.mem.a20_mask()
    }
}

/// Number of entries of the lookup cache (a power of two).
const LOOKUPS: usize = 64;

/// One remembered lookup: the unit at `rip` is in slot `s`, at linear `lin`
/// and physical `phys`. It holds while [`Interpreter::lookup_gen`] is still
/// `gen` (see [`LookupCtx`] for what that covers). Only a unit that stays in
/// its page is remembered (the next page would need its own translation).
#[derive(Clone, Copy, Debug)]
struct Remembered {
    rip: u64,
    gen: u64,
    lin: Linear,
    phys: u64,
    s: u32,
}

impl Remembered {
    const EMPTY: Self = Self {
        rip: 0,
        gen: 0,
        lin: Linear(0),
        phys: 0,
        s: 0,
    };
}

#[inline(always)]
fn lookup_index(rip: u64) -> usize {
    ((rip ^ (rip >> 6)) as usize) & (LOOKUPS - 1)
}

impl Default for Interpreter {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`exec_one`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The instruction retired; the unit goes on.
    Next,
    /// The instruction retired and the unit ends here: it restarts itself (a
    /// repeated string instruction that yielded), it wrote to a code page, or
    /// it did port I/O that wants the run loop ([`Machine::port_attention`]).
    End,
    /// The instruction raised this exception. It counts in `icount`, and RIP is
    /// still at it, for delivery with `interrupt::raise`.
    Fault(Exception),
}

/// Runs one prepared instruction with the protocol of a unit's common path:
/// `next_rip` is set before, RIP and `icount` advance after. The translator's
/// helper path runs instructions through here; the interpreter's unit loop
/// ([`Interpreter`]'s `run_one`) has the same protocol written out.
#[inline(always)]
pub fn exec_one(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Step {
    cpu.next_rip = next_ip(cpu.rip, insn);
    match (insn.exec)(cpu, m, insn) {
        Ok(()) => {
            let restart = cpu.next_rip == cpu.rip;
            cpu.rip = cpu.next_rip;
            cpu.icount += 1;
            // Port I/O (IN, OUT) goes on inside its unit unless the access
            // changed something the run loop checks.
            if restart || m.mem.code_write_pending || m.port_attention() {
                m.take_port_attention();
                Step::End
            } else {
                Step::Next
            }
        }
        Err(e) => {
            cpu.icount += 1;
            Step::Fault(e)
        }
    }
}

#[inline]
fn slot_of(phys: u64, key: CpuMode) -> usize {
    let h = phys ^ (phys >> 14) ^ (u64::from(key.key()) << 7);
    (h as usize) & (SLOTS - 1)
}

impl Interpreter {
    /// An empty cache.
    pub fn new() -> Self {
        let dummy = Insn::prepare(&iced_x86::Instruction::default(), 16);
        let slot = Slot {
            valid: false,
            phys: 0,
            next_phys: NO_PAGE,
            key: CpuMode::Real,
            byte_len: 0,
            count: 0,
            plain_end: false,
        };
        Self {
            slots: vec![slot; SLOTS],
            units: vec![[dummy; MAX_UNIT_INSNS]; SLOTS],
            page_index: HashMap::new(),
            scratch: DecodedUnit::default(),
            stats: CacheStats::default(),
            single_step: false,
            budget: 0,
            break_pages: Vec::new(),
            lookups: [Remembered::EMPTY; LOOKUPS],
            lookup_gen: 1,
            lookup_ctx: None,
        }
    }

    /// Decodes the unit at CS:IP (physical `phys`) into slot `s`. Returns the
    /// fault the fetch raises if not even the first instruction can be fetched.
    fn fill(
        &mut self,
        cpu: &mut CpuState,
        m: &mut Machine,
        phys: u64,
        key: CpuMode,
        s: usize,
    ) -> Result<(), Exception> {
        let fetched = fetch_unit(cpu, m, phys, key, &mut self.scratch)?;
        let bits = key.bits();
        for (dst, ins) in self.units[s].iter_mut().zip(self.scratch.instructions()) {
            *dst = Insn::prepare(ins, bits);
        }
        let slot = &mut self.slots[s];
        slot.count = self.scratch.count as u8;
        slot.plain_end = fetched.plain_end;
        slot.byte_len = self.scratch.byte_len as u32;
        slot.phys = phys;
        slot.key = key;
        slot.valid = true;
        slot.next_phys = fetched.next_phys;
        self.stats.misses += 1;
        self.lookup_gen += 1;
        self.stats.decoded_insns += self.scratch.count as u64;
        // Track the pages the unit's bytes came from, so writes invalidate it.
        let unit = &self.scratch;
        index_code_pages(
            m,
            &mut self.page_index,
            (phys, fetched.next_phys),
            unit,
            s as u32,
        );
        Ok(())
    }

    /// The slot of the unit at CS:IP (linear `lin`, physical `phys`), decoded
    /// into it if it is not cached or does not fit at this alias.
    #[inline(always)]
    fn lookup(
        &mut self,
        cpu: &mut CpuState,
        m: &mut Machine,
        key: CpuMode,
        (lin, phys): (Linear, u64),
    ) -> Result<usize, Exception> {
        let s = slot_of(phys, key);
        let hit = {
            let slot = &self.slots[s];
            slot.valid && slot.phys == phys && slot.key == key
        };
        let mut refill = !hit;
        if hit {
            // A unit decoded where it fit below the CS limit may not fit at this
            // alias; a unit that runs onto the next page must see the same page.
            let (byte_len, next_phys) = (self.slots[s].byte_len, self.slots[s].next_phys);
            refill = !unit_fits(cpu, m, key, lin, byte_len, next_phys);
            if !refill {
                self.stats.hits += 1;
            }
        }
        if refill {
            self.fill(cpu, m, phys, key, s)?;
        }
        Ok(s)
    }

    /// Delivers a fault raised before the unit's first instruction ran (the
    /// fetch of CS:IP, an instruction breakpoint). It counts as one in
    /// `icount`, as a fault inside an instruction does: a guest whose fault
    /// handler faults on its own fetch (random real-mode code with IVT entry
    /// 13 at 0000:FFFF, where every fetch crosses the CS limit) loops forever
    /// on hardware too, and the clock must go on for it (timers fire, the
    /// instruction limit is reached) rather than the host hanging.
    fn fault_before_unit(&self, cpu: &mut CpuState, m: &mut Machine, e: Exception) -> UnitExit {
        cpu.icount += 1;
        interrupt::raise(cpu, m, e, cpu.rip);
        self.after_fault(cpu)
    }

    fn after_fault(&self, cpu: &CpuState) -> UnitExit {
        if cpu.run_state == RunState::Shutdown {
            UnitExit::Shutdown
        } else {
            UnitExit::Event
        }
    }

    /// Whether a unit for CS:IP is cached (for tests of the cache itself).
    pub fn is_cached(&self, cpu: &CpuState, m: &Machine) -> bool {
        // Real-mode aliasing only (tests): linear equals physical.
        let key = CpuMode::of(cpu);
        let phys = code_linear(cpu, key).0 & m.mem.a20_mask();
        let slot = &self.slots[slot_of(phys, key)];
        slot.valid && slot.phys == phys && slot.key == key
    }
}

impl Interpreter {
    /// Runs the unit at CS:IP: [`Engine::run_unit`] without the chain.
    #[inline(always)]
    fn run_one(&mut self, cpu: &mut CpuState, m: &mut Machine) -> UnitExit {
        let key = CpuMode::of(cpu);
        if !self.lookup_ctx.is_some_and(|c| c.holds(cpu, m, key)) {
            self.lookup_ctx = Some(LookupCtx::of(cpu, m, key));
            self.lookup_gen += 1;
        }
        let li = lookup_index(cpu.rip);
        let known = {
            let r = self.lookups[li];
            (r.rip == cpu.rip && r.gen == self.lookup_gen).then_some(r)
        };
        let (lin, phys) = match known {
            Some(r) => (r.lin, r.phys),
            None => match code_address(cpu, m, key) {
                Ok(a) => a,
                Err(e) => {
                    return self.fault_before_unit(cpu, m, e);
                }
            },
        };
        let debug = cpu.dr[7] & 0xFF != 0;
        if debug && cpu.rflags & RF == 0 {
            if let Some(hit) = debug::exec_breakpoint(cpu, lin.0) {
                cpu.dr[6] = (cpu.dr[6] & !0xF) | hit;
                return self.fault_before_unit(cpu, m, Exception::Debug);
            }
        }
        if cpu.rflags & RF != 0 {
            cpu.rflags &= !RF;
        }
        let s = match known {
            Some(r) => {
                let s = r.s as usize;
                debug_assert!({
                    let slot = &self.slots[s];
                    slot.valid && slot.phys == phys && slot.key == key
                });
                self.stats.hits += 1;
                s
            }
            None => {
                let s = self.lookup(cpu, m, key, (lin, phys));
                let s = match s {
                    Ok(s) => s,
                    Err(e) => return self.fault_before_unit(cpu, m, e),
                };
                if self.slots[s].next_phys == NO_PAGE {
                    self.lookups[li] = Remembered {
                        rip: cpu.rip,
                        gen: self.lookup_gen,
                        lin,
                        phys,
                        s: s as u32,
                    };
                }
                s
            }
        };
        // Under an interrupt shadow (after MOV SS, POP SS, STI), with TF set, or
        // with instruction breakpoints armed, only one instruction runs, so the run
        // loop sees the boundary after it.
        let trap = cpu.rflags & TF != 0;
        let single = cpu.int_shadow != 0 || trap || debug || self.single_step;
        let count = if single {
            1
        } else {
            self.slots[s].count as usize
        };
        cpu.int_shadow = 0;
        let slot = &self.slots[s];
        if !single {
            // The common path: no trap to check after each instruction, and the
            // halt check once at the end (HLT is always a unit's last).
            // `exec_one` written out with RIP kept in a register: an
            // instruction that leaves `next_rip` as set (all but the unit's
            // last, and repeated string instructions that did not yield)
            // has its successor's RIP from here, not from a load of the
            // store before its handler, so the chain of RIPs from one
            // instruction to the next does not go through memory.
            let ip_mask = key.ip_mask();
            let mut rip = cpu.rip;
            for insn in &self.units[s][..count] {
                // STI's interrupt shadow covers the one instruction after
                // it: inside a unit, that instruction clears it first.
                cpu.int_shadow = 0;
                debug_assert_eq!(rip, cpu.rip);
                let next = rip.wrapping_add(u64::from(insn.len)) & ip_mask;
                debug_assert_eq!(next, next_ip(rip, insn));
                cpu.next_rip = next;
                if let Err(e) = (insn.exec)(cpu, m, insn) {
                    cpu.icount += 1;
                    interrupt::raise(cpu, m, e, cpu.rip);
                    return self.after_fault(cpu);
                }
                cpu.icount += 1;
                // `next_rip == rip` is a restart (a repeated string
                // instruction that yielded, a branch to itself, an event
                // delivered at the next instruction's address), as in
                // `exec_one`: event delivery sets RIP too, so it is read again.
                let restart;
                if cpu.next_rip == next {
                    restart = cpu.rip == next;
                    rip = next;
                } else {
                    // A branch or an event (the unit's last instruction).
                    restart = cpu.next_rip == cpu.rip;
                    rip = cpu.next_rip;
                }
                cpu.rip = rip;
                // Port I/O (IN, OUT) goes on inside its unit unless the
                // access changed something the run loop checks.
                if restart || m.mem.code_write_pending || m.port_attention() {
                    m.take_port_attention();
                    return UnitExit::Event;
                }
            }
            if cpu.run_state != RunState::Running {
                return if cpu.run_state == RunState::Shutdown {
                    UnitExit::Shutdown
                } else {
                    UnitExit::Halted
                };
            }
            return if slot.plain_end {
                UnitExit::Continue
            } else {
                UnitExit::Event
            };
        }
        for insn in &self.units[s][..count] {
            cpu.next_rip = next_ip(cpu.rip, insn);
            match (insn.exec)(cpu, m, insn) {
                Ok(()) => {
                    let restart = cpu.next_rip == cpu.rip;
                    cpu.rip = cpu.next_rip;
                    cpu.icount += 1;
                    if trap || cpu.pending_db != 0 {
                        // Single-step and data-breakpoint traps after the instruction
                        // (SDM vol. 3A §17.3.1.2, §17.3.1.4).
                        cpu.dr[6] = (cpu.dr[6] & !0xF) | cpu.pending_db;
                        if trap {
                            cpu.dr[6] |= debug::DR6_BS;
                        }
                        cpu.pending_db = 0;
                        interrupt::raise(cpu, m, Exception::Debug, cpu.rip);
                        return self.after_fault(cpu);
                    }
                    // A repeated string instruction that yielded restarts here: the
                    // rest of the unit must not run before it completes.
                    if restart {
                        return UnitExit::Event;
                    }
                }
                Err(e) => {
                    cpu.icount += 1;
                    cpu.pending_db = 0;
                    interrupt::raise(cpu, m, e, cpu.rip);
                    return self.after_fault(cpu);
                }
            }
            if cpu.run_state != RunState::Running {
                return if cpu.run_state == RunState::Shutdown {
                    UnitExit::Shutdown
                } else {
                    UnitExit::Halted
                };
            }
            if m.mem.code_write_pending {
                return UnitExit::Event;
            }
        }
        if slot.plain_end && count == slot.count as usize {
            UnitExit::Continue
        } else {
            UnitExit::Event
        }
    }
}

impl Engine for Interpreter {
    /// Exceptions are delivered to the guest here. Units that end plainly
    /// ([`UnitExit::Continue`]) follow each other here up to the budget, where
    /// the run loop's own chain would stop: `icount` at the budget, a PAUSE
    /// hint, or the interrupt line up (the run loop then decides whether it
    /// can be taken, and calls again if not).
    fn run_unit(&mut self, cpu: &mut CpuState, m: &mut Machine) -> UnitExit {
        // Between calls the run loop may invalidate units or run another vCPU.
        self.lookup_gen += 1;
        loop {
            let exit = self.run_one(cpu, m);
            if exit != UnitExit::Continue || cpu.icount >= self.budget || cpu.pause_hint || m.intr()
            {
                return exit;
            }
            if !self.break_pages.is_empty() {
                let next = code_linear(cpu, CpuMode::of(cpu)).0 >> 12;
                if self.break_pages.binary_search(&next).is_ok() {
                    return exit;
                }
            }
        }
    }

    /// Nothing is cached across calls that the set changes: only the chain
    /// inside one call looks at it.
    fn set_break_pages(&mut self, pages: &[u64]) -> bool {
        self.break_pages = pages.to_vec();
        true
    }

    fn set_budget(&mut self, icount_limit: u64) {
        self.budget = icount_limit;
    }

    fn invalidate_pages(&mut self, pages: &[u64]) {
        self.lookup_gen += 1;
        for &page in pages {
            if let Some(list) = self.page_index.remove(&page) {
                for s in list {
                    let slot = &mut self.slots[s as usize];
                    if slot.valid {
                        slot.valid = false;
                        self.stats.invalidations += 1;
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        self.lookup_gen += 1;
        for s in &mut self.slots {
            s.valid = false;
        }
        self.page_index.clear();
    }

    fn set_single_step(&mut self, on: bool) {
        self.single_step = on;
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        Some(self.stats)
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{sreg, Segment};
    use x86bt_machine::GuestPhys;

    /// A flat machine with `code` at 0x1000 and CS:IP = 0100:0000.
    fn setup(code: &[u8]) -> (CpuState, Machine, Interpreter) {
        let mut m = Machine::flat(1 << 20).expect("machine");
        m.mem.load(GuestPhys(0x1000), code).expect("load");
        let mut cpu = CpuState::reset();
        cpu.seg[sreg::CS] = Segment::real(0x0100);
        cpu.rip = 0;
        (cpu, m, Interpreter::new())
    }

    #[test]
    fn chain_stops_before_a_unit_on_a_page_with_a_breakpoint() {
        // A = `inc ax; jmp near B` at 0100:0000 (linear page 1), B = `inc
        // dx; jmp near A` at 0100:1000 (linear page 2).
        let (mut cpu, mut m, mut it) = setup(&[0x40, 0xE9, 0xFC, 0x0F]);
        m.mem
            .load(GuestPhys(0x2000), &[0x42, 0xE9, 0xFC, 0xEF])
            .expect("B");
        it.set_budget(1_000);
        it.run_unit(&mut cpu, &mut m);
        assert_eq!(cpu.icount, 1_000, "without breakpoints one call chains on");
        assert!(it.set_break_pages(&[2]));
        it.set_budget(2_000);
        while cpu.icount < 2_000 {
            let before = cpu.icount;
            it.run_unit(&mut cpu, &mut m);
            // B runs only as a call's first unit.
            assert!(
                cpu.icount - before <= 4,
                "{} instructions",
                cpu.icount - before
            );
            assert!(cpu.rip == 0x1000 || cpu.icount >= 2_000, "{:#x}", cpu.rip);
        }
    }

    #[test]
    fn unit_cache_second_run_hits() {
        // inc ax; jmp short back to the inc
        let (mut cpu, mut m, mut it) = setup(&[0x40, 0xEB, 0xFD]);
        it.run_unit(&mut cpu, &mut m);
        it.run_unit(&mut cpu, &mut m);
        assert_eq!((it.stats.misses, it.stats.hits), (1, 1));
        assert_eq!(cpu.gpr[0], 2);
    }

    #[test]
    fn unit_cache_write_to_code_page_invalidates_its_units() {
        let (mut cpu, mut m, mut it) = setup(&[0x40, 0xEB, 0xFD]);
        it.run_unit(&mut cpu, &mut m);
        assert!(it.is_cached(&cpu, &m));
        // Patch inc ax (40) into dec ax (48) through guest memory.
        m.mem.write_u8(GuestPhys(0x1000), 0x48);
        assert!(m.mem.code_write_pending);
        it.invalidate_written(&mut m);
        assert!(!it.is_cached(&cpu, &m));
        it.run_unit(&mut cpu, &mut m);
        assert_eq!(cpu.gpr[0], 0, "the new bytes ran");
        assert_eq!(it.stats.invalidations, 1);
    }

    #[test]
    fn unit_cache_alias_cs_ip_shares_the_unit() {
        // inc ax; jmp short $+2 (falls through to offset 3)
        let (mut cpu, mut m, mut it) = setup(&[0x40, 0xEB, 0x00]);
        it.run_unit(&mut cpu, &mut m);
        // 00FF:0010 is the same physical address as 0100:0000.
        cpu.seg[sreg::CS] = Segment::real(0x00FF);
        cpu.rip = 0x10;
        it.run_unit(&mut cpu, &mut m);
        assert_eq!((it.stats.misses, it.stats.hits), (1, 1));
        assert_eq!(cpu.rip, 0x13, "relative targets follow the alias's IP");
    }

    #[test]
    fn unit_store_into_running_unit_ends_it_after_the_store() {
        // mov byte [cs:0x0005], 0x48 (patches the next instruction); inc ax; hlt
        let code = [0x2E, 0xC6, 0x06, 0x06, 0x00, 0x48, 0x40, 0xF4];
        let (mut cpu, mut m, mut it) = setup(&code);
        it.run_unit(&mut cpu, &mut m);
        assert_eq!(cpu.rip, 6, "the unit stopped right after the store");
        it.invalidate_written(&mut m);
        it.run_unit(&mut cpu, &mut m);
        assert_eq!(
            cpu.gpr[0] & 0xFFFF,
            0xFFFF,
            "dec ax ran, not the stale inc ax"
        );
    }
}
