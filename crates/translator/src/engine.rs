//! The translator engine: the translation cache and the run of one unit.
//!
//! The cache mirrors the interpreter's unit cache: direct-mapped slots keyed by
//! the guest-physical address of a unit's first byte and the mode key, a per-page
//! index so a write to a code page drops exactly the fragments decoded from it,
//! and the same alias checks (a unit must fit below the CS limit at the current
//! CS:IP, and find the same second page). Each slot owns its prepared
//! instructions in a heap box whose address the fragment embeds; a slot's
//! fragment is only ever entered through the slot, so dropping the box together
//! with the slot's validity is safe. Code stays in the buffer until the buffer is
//! full, when everything is flushed and a fresh buffer is mapped
//! ([`CodeBuffer`]).
//!
//! Units the interpreter would run one instruction at a time (interrupt shadow,
//! TF, RF, armed breakpoints) and units whose fetch faults are delegated to an
//! embedded [`Interpreter`], so those rules keep one implementation.

use crate::codebuf::CodeBuffer;
use crate::emit::{emit_unit, Externals, UnitPlan, EXIT_END, EXIT_EVENT};
use crate::error::TranslatorError;
use crate::plan::{self, HelperKind, Lowering};
use crate::runtime::{self, JitCtx};
use crate::stats::{Delegation, ExitKind, JitStats};
use dynasmrt::x64::X64Relocation;
use dynasmrt::VecAssembler;
use std::collections::HashMap;
use x86bt_cpu::interp::engine::{fetch_unit, mark_code_pages, mode_key, unit_fits, NO_PAGE};
use x86bt_cpu::interp::{interrupt, Insn};
use x86bt_cpu::mmu;
use x86bt_cpu::state::flags::{RF, TF};
use x86bt_cpu::state::{sreg, RunState};
use x86bt_cpu::{CpuState, Exception, Interpreter, UnitExit};
use x86bt_decoder::sensitive::{classify, Sensitivity};
use x86bt_decoder::{Bitness, DecodedUnit};
use x86bt_machine::Machine;

/// Sets of the two-way translation cache (a power of two). A miss costs a
/// translation, much more than the interpreter's decode, so the cache is larger
/// than the interpreter's and two-way, against conflict misses.
const SETS: usize = 1 << 15;
/// Slots per set.
const WAYS: usize = 2;
/// Size of the executable code buffer.
const CODE_CAPACITY: usize = 32 << 20;
/// Room kept free for one more fragment (12 instructions of at most a few
/// hundred bytes each).
const UNIT_ROOM: usize = 16 << 10;

struct Slot {
    valid: bool,
    phys: u64,
    next_phys: u64,
    key: u32,
    byte_len: u32,
    plain_end: bool,
    /// Offset of the fragment in the code buffer.
    entry: usize,
    /// The prepared instructions, owned here because the fragment embeds their
    /// addresses (never read from Rust).
    _insns: Box<[Insn]>,
}

impl Slot {
    fn empty() -> Self {
        Self {
            valid: false,
            phys: 0,
            next_phys: NO_PAGE,
            key: 0,
            byte_len: 0,
            plain_end: false,
            entry: 0,
            _insns: Box::new([]),
        }
    }
}

enum Lookup {
    Run(usize),
    Delegate(Delegation),
}

/// The binary translator.
pub struct Translator {
    /// The code buffer; `None` if a fresh one could not be mapped after a flush.
    code: Option<CodeBuffer>,
    slots: Vec<Slot>,
    /// Per set, the way used last (the other one is replaced on a miss).
    recent: Vec<u8>,
    page_index: HashMap<u64, Vec<u32>>,
    scratch: DecodedUnit,
    interp: Interpreter,
    ctx: Box<JitCtx>,
    stats: JitStats,
}

#[inline]
fn set_of(phys: u64, key: u32) -> usize {
    let h = phys ^ (phys >> 15) ^ (u64::from(key) << 7);
    (h as usize) & (SETS - 1)
}

fn new_buffer() -> Result<CodeBuffer, TranslatorError> {
    Ok(CodeBuffer::new(CODE_CAPACITY)?)
}

impl Translator {
    /// A translator with an empty cache. Fails on a host that is not x86-64, or
    /// when the code buffer cannot be mapped.
    pub fn new() -> Result<Self, TranslatorError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(TranslatorError::UnsupportedHost(std::env::consts::ARCH));
        }
        Ok(Self {
            code: Some(new_buffer()?),
            slots: (0..SETS * WAYS).map(|_| Slot::empty()).collect(),
            recent: vec![0; SETS],
            page_index: HashMap::new(),
            scratch: DecodedUnit::default(),
            interp: Interpreter::new(),
            ctx: Box::default(),
            stats: JitStats::default(),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> JitStats {
        let mut s = self.stats.clone();
        s.helper_calls = self.ctx.helper_calls;
        s.self_loops = self.ctx.self_loops;
        s
    }

    /// Lets a fragment that branches back to its own start run again without
    /// returning while `icount` is below `icount_limit` (the run loop's chain
    /// horizon). The default, 0, never repeats a unit inside its fragment.
    pub fn set_budget(&mut self, icount_limit: u64) {
        self.ctx.icount_limit = icount_limit;
    }

    /// Drops every fragment decoded from RAM pages written since the last call
    /// (and the embedded interpreter's units for them).
    pub fn invalidate_written(&mut self, m: &mut Machine) {
        if m.mem.take_flush_all() {
            self.flush();
        }
        let pages = m.mem.take_dirty_code_pages();
        self.invalidate_pages(&pages);
    }

    /// Drops every fragment decoded from the RAM pages `pages`.
    pub fn invalidate_pages(&mut self, pages: &[u64]) {
        for page in pages {
            for s in self.page_index.remove(page).unwrap_or_default() {
                let slot = &mut self.slots[s as usize];
                if slot.valid {
                    *slot = Slot::empty();
                    self.stats.invalidations += 1;
                }
            }
        }
        self.interp.invalidate_pages(pages);
    }

    /// Drops every fragment (the code stays in the buffer until it is full).
    pub fn flush(&mut self) {
        for s in &mut self.slots {
            *s = Slot::empty();
        }
        self.page_index.clear();
        self.interp.flush();
    }

    /// Drops every fragment and maps a fresh code buffer.
    fn flush_code(&mut self) {
        self.flush();
        self.stats.flushes += 1;
        // Drop the old buffer first, so the two never need to be mapped at once.
        self.code = None;
        self.code = new_buffer().ok();
    }

    /// Finds or makes the fragment for CS:IP, or says why the interpreter must
    /// run this unit.
    fn lookup(&mut self, cpu: &mut CpuState, m: &mut Machine) -> Lookup {
        if cpu.int_shadow != 0 || cpu.rflags & (TF | RF) != 0 || cpu.dr[7] & 0xFF != 0 {
            return Lookup::Delegate(Delegation::SingleStep);
        }
        let Some((phys, lin)) = code_phys(cpu, m) else {
            return Lookup::Delegate(Delegation::Fetch);
        };
        let (key, bitness) = mode_key(cpu);
        let set = set_of(phys, key);
        let mut victim = set * WAYS + 1 - usize::from(self.recent[set]);
        for way in 0..WAYS {
            let s = set * WAYS + way;
            let slot = &self.slots[s];
            if slot.valid && slot.phys == phys && slot.key == key {
                let (byte_len, next_phys) = (slot.byte_len, slot.next_phys);
                if unit_fits(cpu, m, lin, byte_len, next_phys) {
                    self.stats.hits += 1;
                    self.recent[set] = way as u8;
                    return Lookup::Run(s);
                }
                // Same bytes, but not valid at this alias: decode again here.
                victim = s;
            }
        }
        let s = victim;
        self.recent[set] = (s - set * WAYS) as u8;
        let started = std::time::Instant::now();
        let done = self.translate(cpu, m, phys, key, bitness, s);
        self.stats.translate_ns += started.elapsed().as_nanos() as u64;
        match done {
            Ok(()) => Lookup::Run(s),
            Err(d) => Lookup::Delegate(d),
        }
    }

    /// Translates the unit at CS:IP (physical `phys`) into slot `s`.
    fn translate(
        &mut self,
        cpu: &mut CpuState,
        m: &mut Machine,
        phys: u64,
        key: u32,
        bitness: Bitness,
        s: usize,
    ) -> Result<(), Delegation> {
        if self.code.as_ref().is_none_or(|c| c.free() < UNIT_ROOM) {
            self.flush_code();
        }
        let fetched =
            fetch_unit(cpu, m, phys, bitness, &mut self.scratch).map_err(|_| Delegation::Fetch)?;
        let bits = bitness.bits();
        let insns: Box<[Insn]> = self
            .scratch
            .instructions()
            .iter()
            .map(|i| Insn::prepare(i, bits))
            .collect();
        let lowerings = plan::plan(&insns);
        let captures = plan::captures(&lowerings);
        let lens: Vec<u8> = insns.iter().map(|i| i.len).collect();
        let kinds: Vec<u8> = lowerings
            .iter()
            .map(|l| match l {
                Lowering::Helper(k) => *k as u8,
                Lowering::Branch(_) => HelperKind::Branch as u8,
                Lowering::Ident(_) => HelperKind::Other as u8,
            })
            .collect();
        let ptrs: Vec<u64> = insns.iter().map(|i| i as *const Insn as u64).collect();
        let self_loop = plan::may_repeat(&lowerings);
        let code = self.code.as_mut().ok_or(Delegation::NoBuffer)?;
        let mut ops = VecAssembler::<X64Relocation>::new(code.next_exec_addr());
        emit_unit(
            &mut ops,
            &UnitPlan {
                lowerings: &lowerings,
                captures: &captures,
                lens: &lens,
                kinds: &kinds,
                self_loop,
            },
            &Externals {
                helper: runtime::helper_address(),
                insns: &ptrs,
            },
        );
        let bytes = ops.finalize().map_err(|_| Delegation::NoBuffer)?;
        let entry = code.append(&bytes).ok_or(Delegation::NoBuffer)?;
        self.stats.code_bytes += bytes.len() as u64;
        self.stats.translations += 1;
        self.stats.translated_insns += insns.len() as u64;
        self.stats.inline_insns += lowerings
            .iter()
            .filter(|l| !matches!(l, Lowering::Helper(_)))
            .count() as u64;
        self.slots[s] = Slot {
            valid: true,
            phys,
            next_phys: fetched.next_phys,
            key,
            byte_len: self.scratch.byte_len as u32,
            plain_end: fetched.plain_end,
            entry,
            _insns: insns,
        };
        for page in mark_code_pages(m, phys, fetched.next_phys)
            .into_iter()
            .flatten()
        {
            let list = self.page_index.entry(page).or_default();
            if !list.contains(&(s as u32)) {
                list.push(s as u32);
            }
        }
        Ok(())
    }

    /// Runs one unit at CS:IP, with the contract of [`Interpreter::run_unit`].
    pub fn run_unit(&mut self, cpu: &mut CpuState, m: &mut Machine) -> UnitExit {
        let s = match self.lookup(cpu, m) {
            Lookup::Run(s) => s,
            Lookup::Delegate(d) => {
                self.stats.delegated[d as usize] += 1;
                return self.interp.run_unit(cpu, m);
            }
        };
        let (entry, plain_end) = (self.slots[s].entry, self.slots[s].plain_end);
        match self.enter(entry, cpu, m) {
            EXIT_END => {
                if cpu.run_state != RunState::Running {
                    self.stats.exits[ExitKind::Halt as usize] += 1;
                    return if cpu.run_state == RunState::Shutdown {
                        UnitExit::Shutdown
                    } else {
                        UnitExit::Halted
                    };
                }
                self.stats.exits[ExitKind::End as usize] += 1;
                if plain_end {
                    UnitExit::Continue
                } else {
                    UnitExit::Event
                }
            }
            EXIT_EVENT => {
                self.stats.exits[ExitKind::Event as usize] += 1;
                UnitExit::Event
            }
            _ => {
                self.stats.exits[ExitKind::Fault as usize] += 1;
                let e = self
                    .ctx
                    .exc
                    .take()
                    .unwrap_or(Exception::GeneralProtection(0));
                interrupt::raise(cpu, m, e, cpu.rip);
                if cpu.run_state == RunState::Shutdown {
                    UnitExit::Shutdown
                } else {
                    UnitExit::Event
                }
            }
        }
    }

    /// Runs the fragment at offset `entry` of the code buffer.
    #[cfg(target_arch = "x86_64")]
    fn enter(&mut self, entry: usize, cpu: &mut CpuState, m: &mut Machine) -> u64 {
        let Some(code) = &self.code else {
            return EXIT_EVENT;
        };
        let start = code.exec_base().wrapping_add(entry);
        self.ctx.m = m;
        let ctx: *mut JitCtx = &mut *self.ctx;
        // SAFETY: `entry` is the offset of a fragment appended to this buffer,
        // which stays mapped executable and unmoved while `self.code` holds it;
        // its slot is valid, so the instructions it embeds are alive. `cpu`, `ctx`
        // and `ctx.m` come from exclusive references that are not used until the
        // call returns.
        let r = unsafe { runtime::enter(start, cpu, ctx) };
        self.ctx.m = core::ptr::null_mut();
        r
    }

    /// No fragment can run on this host ([`Translator::new`] refuses).
    #[cfg(not(target_arch = "x86_64"))]
    fn enter(&mut self, _entry: usize, _cpu: &mut CpuState, _m: &mut Machine) -> u64 {
        EXIT_EVENT
    }

    /// Whether the unit at CS:IP does port I/O (lockstep runs those only once).
    pub fn unit_does_io(&mut self, cpu: &mut CpuState, m: &mut Machine) -> bool {
        let Some((phys, _)) = code_phys(cpu, m) else {
            return false;
        };
        let (_, bitness) = mode_key(cpu);
        if fetch_unit(cpu, m, phys, bitness, &mut self.scratch).is_err() {
            return false;
        }
        self.scratch
            .instructions()
            .iter()
            .any(|i| classify(i) == Some(Sensitivity::Io))
    }
}

/// The physical and linear address of CS:IP, or `None` when fetching there
/// faults (the interpreter then raises the fault).
fn code_phys(cpu: &mut CpuState, m: &mut Machine) -> Option<(u64, u64)> {
    let cs = cpu.seg[sreg::CS];
    if cpu.rip > u64::from(cs.limit) {
        return None;
    }
    let lin = cs.base.wrapping_add(cpu.rip) & 0xFFFF_FFFF;
    let phys = if mmu::paging(cpu) {
        mmu::translate(cpu, m, lin, mmu::Access::Exec).ok()?.0
    } else {
        lin
    };
    Some((phys & m.mem.a20_mask(), lin))
}
