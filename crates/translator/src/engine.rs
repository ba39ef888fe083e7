//! The translator engine: the translation cache and the run of one unit.
//!
//! The cache is two-way set-associative, keyed by the guest-physical address of
//! a unit's first byte and the mode key, and matched on the CS:IP (RIP, CS base,
//! CS limit) and the flat-segment set each fragment was made for. A per-page
//! index lets a write to a code page drop exactly the fragments decoded from it,
//! and a hit passes the interpreter's alias check (the unit finds the same second
//! page). Each slot owns its prepared instructions in a heap box whose address
//! the fragment embeds; a slot's fragment is only ever entered through the slot,
//! a link jump or the jump cache, and dropping the slot resets those first, so
//! dropping the box together with the slot's validity is safe. Code stays in the
//! buffer until the buffer is full, when everything is flushed and a fresh
//! buffer (with fresh stubs) is mapped ([`CodeBuffer`]).
//!
//! Links: a fragment that leaves through an unlinked link jump (see
//! [`crate::emit`]) leaves the site's tag (slot, generation, site); the next
//! lookup, if nothing ran in between, patches the jump to the chain entry of
//! the fragment found for the new CS:IP, when that fragment may be chained to,
//! and records the link on the target. A jump-cache miss leaves `JC_REQUEST |
//! spec` instead, and the next lookup fills the entry of the new RIP the same
//! way. Dropping a slot for any reason (written code, a conflict, a flush)
//! first points every link jump that goes to it back at its stub and empties
//! its jump-cache entries; a link site of a slot dropped since is recognised by
//! its generation.
//!
//! Units the interpreter would run one instruction at a time (interrupt shadow,
//! TF, RF, armed breakpoints) and units whose fetch faults are delegated to an
//! embedded [`Interpreter`], so those rules keep one implementation.

use crate::codebuf::CodeBuffer;
use crate::emit::{
    emit_stubs, emit_unit, flat_segments, Externals, Fragment, Predict, Stubs, UnitPlan, EXIT_END,
    EXIT_EVENT, JC_REQUEST,
};
use crate::error::TranslatorError;
use crate::plan::{self, Lowering};
use crate::runtime::{self, jc_index, JcEntry, JitCtx, JC_SIZE};
use crate::stats::{Delegation, ExitKind, JitStats};
use dynasmrt::x64::X64Relocation;
use dynasmrt::VecAssembler;
use std::collections::HashMap;
use x86bt_cpu::engine::{
    code_address, fetch_unit, index_code_pages, unit_fits, Engine, UnitExit, NO_PAGE,
};
use x86bt_cpu::interp::{interrupt, Insn};
use x86bt_cpu::mmu;
use x86bt_cpu::state::flags::{RF, TF};
use x86bt_cpu::state::{sreg, RunState};
use x86bt_cpu::{CpuMode, CpuState, Exception, Interpreter};
use x86bt_decoder::sensitive::{classify, Sensitivity};
use x86bt_decoder::DecodedUnit;
use x86bt_machine::{GuestPhys, Machine};

/// Sets of the two-way translation cache (a power of two). A miss costs a
/// translation, much more than the interpreter's decode, so the cache is larger
/// than the interpreter's and two-way, against conflict misses.
const SETS: usize = 1 << 15;
/// Slots per set.
const WAYS: usize = 2;
/// Size of the executable code buffer.
const CODE_CAPACITY: usize = 128 << 20;
/// Room kept free for one more fragment (12 instructions of at most a few
/// hundred bytes each).
const UNIT_ROOM: usize = 16 << 10;

struct Slot {
    valid: bool,
    phys: u64,
    next_phys: u64,
    key: CpuMode,
    /// The CS:IP the fragment is made for (its code embeds all three).
    rip: u64,
    cs_base: u64,
    cs_limit: u32,
    /// The flat segments the fragment is made for ([`flat_segments`]).
    flat: u8,
    /// The translator's number for (key, CS base, CS limit, flat).
    spec: u32,
    /// Jump-cache entries that may point at this fragment.
    jc_refs: Vec<u32>,
    byte_len: u32,
    /// Another fragment may chain into this one.
    chain_target: bool,
    /// The unit runs on the embedded interpreter: 64-bit code that would
    /// be mostly helper calls (see [`HELPER_HEAVY`]); no fragment.
    interp_only: bool,
    /// Tells this slot's occupants apart, for link sites and tags.
    gen: u64,
    /// Offsets of the fragment in the code buffer.
    code: Fragment,
    /// The prepared instructions, owned here because the fragment embeds their
    /// addresses (never read from Rust).
    #[allow(dead_code)]
    insns: Box<[Insn]>,
    /// The executable address of each link site's stub (taken, not taken),
    /// where its link jump ends and goes while unlinked (0 for a site without
    /// one).
    stubs: [u64; 2],
    /// Link sites that jump to this fragment: (slot, generation, site).
    incoming: Vec<(u32, u64, u8)>,
}

impl Slot {
    fn empty() -> Self {
        Self {
            valid: false,
            phys: 0,
            next_phys: NO_PAGE,
            key: CpuMode::Real,
            rip: 0,
            cs_base: 0,
            cs_limit: 0,
            flat: 0,
            spec: 0,
            jc_refs: Vec::new(),
            byte_len: 0,
            chain_target: false,
            interp_only: false,
            gen: 0,
            code: Fragment {
                body: 0,
                stubs: [None; 2],
            },
            insns: Box::new([]),
            stubs: [0; 2],
            incoming: Vec::new(),
        }
    }
}

/// What the translator keeps for one vCPU apart from the shared translation
/// cache: its jump cache, which maps the vCPU's own linear addresses, what
/// decides when that goes stale, and the link its last fragment asked for.
struct VcpuJit {
    /// The entries (`JC_SIZE`); a boxed slice, so their address is stable.
    jc: Box<[JcEntry]>,
    /// `FastTlb::generation` when the jump cache was last known good.
    generation: u64,
    /// Some jump-cache entry may be filled.
    used: bool,
    /// Per jump-cache entry, the linear page number of its target (for INVLPG).
    pages: Vec<u64>,
    /// Per jump-cache entry, the second linear page of a target unit that
    /// runs onto the next page, or `u64::MAX`.
    pages2: Vec<u64>,
    /// The jump-cache entries made per linear page (some may have moved on
    /// since; `pages` decides).
    by_page: HashMap<u64, Vec<u32>>,
    /// Jump-cache fills since it was last emptied.
    fills_since_clear: usize,
    /// The link to make at this vCPU's next lookup: its last fragment left
    /// through an unlinked link jump (or missed the jump cache), and the next unit
    /// it runs is the target, if nothing ran in between.
    link_request: Option<LinkRequest>,
}

impl VcpuJit {
    fn new() -> Self {
        Self {
            jc: vec![JcEntry::EMPTY; JC_SIZE].into_boxed_slice(),
            generation: u64::MAX,
            used: false,
            pages: vec![u64::MAX; JC_SIZE],
            pages2: vec![u64::MAX; JC_SIZE],
            by_page: HashMap::new(),
            fills_since_clear: 0,
            link_request: None,
        }
    }

    /// Empties the jump cache; true if anything was in it.
    fn clear(&mut self) -> bool {
        if !self.used {
            return false;
        }
        self.jc.fill(JcEntry::EMPTY);
        self.pages.fill(u64::MAX);
        self.pages2.fill(u64::MAX);
        self.by_page.clear();
        self.fills_since_clear = 0;
        self.used = false;
        true
    }
}

/// A jump-cache reference kept by a slot: the vCPU in the high half, the
/// entry in the low.
fn jc_ref(vcpu: usize, idx: usize) -> u32 {
    ((vcpu as u32) << 16) | idx as u32
}

/// Marks a link tag as present (slot and site sit below it, the generation
/// above).
const TAG_PRESENT: u64 = 1 << 31;

fn link_tag(slot: usize, gen: u64, site: usize) -> u64 {
    (gen << 32) | TAG_PRESENT | ((slot as u64) << 1) | site as u64
}

/// A 64-bit unit is translated only if at least one instruction in this many
/// lowers inline; otherwise the embedded interpreter runs it (a helper call
/// costs a store and reload of the guest state on top of the interpreter's
/// own step).
const HELPER_HEAVY: usize = 2;

/// A fragment left through an unlinked link jump: link it to what runs next, if the
/// next unit starts at this state.
struct LinkRequest {
    tag: u64,
    icount: u64,
    rip: u64,
    cs_base: u64,
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
    /// Generation of the next translation.
    next_gen: u64,
    /// The next slot of the predicted fast-TLB entries ([`Predict`]).
    next_predict: std::cell::Cell<u32>,
    /// Spec ids: (mode key, CS base, CS limit, flat segments) -> number.
    specs: HashMap<(CpuMode, u64, u32, u8), u32>,
    /// Per vCPU, its jump cache (`JitCtx::jc` points at the running one's)
    /// and its pending link.
    vcpus: Vec<VcpuJit>,
    /// The running vCPU.
    cur: usize,
    /// The shared stubs of the current code buffer.
    stubs: Stubs,
    /// Every unit is cut to its first instruction (for harnesses that compare
    /// after every instruction, such as `x86bt difftest`).
    single_step: bool,
    /// The linear pages holding a debugger's breakpoints, sorted: no link
    /// or jump-cache entry leads into a unit that starts in one of them.
    break_pages: Vec<u64>,
    /// `/tmp/perf-PID.map`, when `X86BT_PERF_MAP` is set: one line per
    /// fragment (host address, size, guest CS:IP) and one for the stubs,
    /// the format `perf report` reads to name JIT code.
    perf_map: Option<std::io::BufWriter<std::fs::File>>,
}

/// For a unit that ends with a Jcc (its taken side, then its not-taken side):
/// whether the way goes to code on the unit's own page where the arithmetic
/// flags are dead ([`plan::flags_dead_at`]). The bytes that showed it are
/// marked as code, so that a write to them drops this unit with the page's
/// others.
fn exits_flags_dead(
    cpu: &CpuState,
    m: &mut Machine,
    phys: u64,
    key: CpuMode,
    insns: &[Insn],
) -> [bool; 2] {
    let Some(last) = insns.last().map(|i| &i.ins) else {
        return [false; 2];
    };
    if !last.is_jcc_short_or_near() || m.mem.ram_page(GuestPhys(phys)).is_none() {
        return [false; 2];
    }
    let base = cpu.seg[sreg::CS].base;
    let wrap = if key == CpuMode::Long64 {
        u64::MAX
    } else {
        0xFFFF_FFFF
    };
    let lin = |ip: u64| base.wrapping_add(ip) & wrap;
    let page = lin(cpu.rip) >> 12;
    let page_phys = phys & !0xFFF;
    [last.near_branch_target(), last.next_ip()].map(|ip| {
        let at = lin(ip);
        if at >> 12 != page {
            return false;
        }
        let off = at & 0xFFF;
        let mut code = vec![0u8; (0x1000 - off).min(64) as usize];
        m.mem.read_bytes(GuestPhys(page_phys | off), &mut code);
        match plan::flags_dead_at(key.bits(), &code) {
            Some(len) => m.mem.mark_code(GuestPhys(page_phys | off), len as u64),
            None => false,
        }
    })
}

#[inline]
fn set_of(phys: u64, key: CpuMode) -> usize {
    let h = phys ^ (phys >> 15) ^ (u64::from(key.key()) << 7);
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
        if !host_has_lahf_sahf() {
            return Err(TranslatorError::NoLahfSahf);
        }
        let mut t = Self {
            code: Some(new_buffer()?),
            slots: (0..SETS * WAYS).map(|_| Slot::empty()).collect(),
            recent: vec![0; SETS],
            page_index: HashMap::new(),
            scratch: DecodedUnit::default(),
            interp: Interpreter::new(),
            ctx: Box::default(),
            stats: JitStats::default(),
            next_predict: std::cell::Cell::new(0),
            next_gen: 1,
            specs: HashMap::new(),
            vcpus: vec![VcpuJit::new()],
            cur: 0,
            stubs: Stubs::default(),
            single_step: false,
            break_pages: Vec::new(),
            perf_map: std::env::var_os("X86BT_PERF_MAP").and_then(|_| {
                let path = format!("/tmp/perf-{}.map", std::process::id());
                std::fs::File::create(path)
                    .ok()
                    .map(std::io::BufWriter::new)
            }),
        };
        t.ctx.jc = t.vcpus[0].jc.as_mut_ptr();
        t.install_stubs();
        if t.code.is_none() {
            return Err(TranslatorError::CodeBuffer(std::io::Error::other(
                "the translator's stubs do not assemble",
            )));
        }
        Ok(t)
    }

    /// The counters so far.
    pub fn stats(&self) -> JitStats {
        let mut s = self.stats.clone();
        s.helper_calls = self.ctx.helper_calls;
        s.tlb_fills = self.ctx.fills;
        s.tlb_fills_ok = self.ctx.fills_ok;
        s
    }

    /// Empties a slot, and every link jump and jump-cache entry that points at
    /// its fragment.
    fn drop_slot(&mut self, t: usize) {
        if let Some(code) = &self.code {
            let body = code.exec_base() as u64 + self.slots[t].code.body as u64;
            for r in std::mem::take(&mut self.slots[t].jc_refs) {
                let (vcpu, idx) = ((r >> 16) as usize, (r & 0xFFFF) as usize);
                let e = &mut self.vcpus[vcpu].jc[idx];
                if e.addr == body {
                    *e = JcEntry::EMPTY;
                }
            }
        }
        for (src, gen, site) in std::mem::take(&mut self.slots[t].incoming) {
            let src = &self.slots[src as usize];
            if let Some(code) = self.code.as_mut().filter(|_| src.valid && src.gen == gen) {
                let stub = (src.stubs[usize::from(site)] - code.exec_base() as u64) as usize;
                let reset = code.patch_rel32(stub, stub);
                debug_assert!(reset, "a link site's jump ends at its stub");
            }
        }
        self.slots[t] = Slot::empty();
    }

    /// Makes the link a fragment asked for, from its link jump to the fragment of slot
    /// `t`, if both are still there and `t` may be chained to.
    fn link(&mut self, tag: u64, t: usize, rip: u64) {
        if tag & TAG_PRESENT == 0 {
            self.fill_jc(tag, t, rip);
            return;
        }
        let (gen, src, site) = (
            tag >> 32,
            ((tag & 0xFFFF_FFFF) >> 1) as usize & 0x3FFF_FFFF,
            (tag & 1) as usize,
        );
        let Some(code) = self.code.as_mut() else {
            return;
        };
        let ok = src < self.slots.len()
            && src != t
            && self.slots[src].valid
            && self.slots[src].gen == gen
            && self.slots[src].stubs[site] != 0
            && self.slots[t].valid
            && self.slots[t].chain_target
            && self.slots[t].cs_base == self.slots[src].cs_base
            && self.slots[t].cs_limit == self.slots[src].cs_limit
            && self.slots[t].flat == self.slots[src].flat;
        if ok {
            let end = (self.slots[src].stubs[site] - code.exec_base() as u64) as usize;
            if code.patch_rel32(end, self.slots[t].code.body) {
                self.slots[t].incoming.push((src as u32, gen, site as u8));
                self.stats.links += 1;
            }
        }
    }

    /// Fills the jump-cache entry of `rip` with slot `t`'s fragment, for the
    /// fragment that asked with `tag` (`JC_REQUEST | spec`), if `t` has a
    /// fragment and was made for the same spec. A unit that runs onto a
    /// second page is no link target (`chain_target`: a link jump is not
    /// reset when that page's mapping changes), but it may be a jump-cache
    /// target: the entry is listed under both linear pages, so INVLPG of
    /// either drops it, and every TLB flush empties the jump cache.
    fn fill_jc(&mut self, tag: u64, t: usize, rip: u64) {
        let spec = tag & (JC_REQUEST - 1);
        let slot = &self.slots[t];
        if tag & JC_REQUEST == 0 || !slot.valid || slot.interp_only || u64::from(slot.spec) != spec
        {
            return;
        }
        if self.vcpus[self.cur].fills_since_clear >= 16 * JC_SIZE {
            // Bound the per-page lists, which keep entries since overwritten.
            self.clear_jc();
        }
        let Some(code) = &self.code else {
            return;
        };
        let slot = &mut self.slots[t];
        let idx = jc_index(rip);
        let v = &mut self.vcpus[self.cur];
        v.fills_since_clear += 1;
        v.jc[idx] = JcEntry {
            rip,
            spec,
            addr: code.exec_base() as u64 + slot.code.body as u64,
            pad: 0,
        };
        let mask = slot.key.linear_mask();
        let page = (slot.cs_base.wrapping_add(rip) & mask) >> 12;
        let last = (slot
            .cs_base
            .wrapping_add(rip)
            .wrapping_add(u64::from(slot.byte_len.max(1) - 1))
            & mask)
            >> 12;
        v.pages[idx] = page;
        v.by_page.entry(page).or_default().push(idx as u32);
        v.pages2[idx] = if last != page { last } else { u64::MAX };
        if last != page {
            v.by_page.entry(last).or_default().push(idx as u32);
        }
        slot.jc_refs.push(jc_ref(self.cur, idx));
        v.used = true;
        self.stats.jc_fills += 1;
    }

    /// Empties the running vCPU's jump cache.
    fn clear_jc(&mut self) {
        if self.vcpus[self.cur].clear() {
            self.stats.jc_clears += 1;
        }
    }

    /// The spec id of (key, CS base, CS limit, flat).
    fn spec_of(&mut self, key: CpuMode, cs_base: u64, cs_limit: u32, flat: u8) -> u32 {
        let n = self.specs.len() as u32;
        *self
            .specs
            .entry((key, cs_base, cs_limit, flat))
            .or_insert(n)
    }

    /// Drops every fragment and maps a fresh code buffer.
    fn flush_code(&mut self) {
        self.flush();
        self.stats.flushes += 1;
        // Drop the old buffer first, so the two never need to be mapped at once.
        self.code = None;
        self.code = new_buffer().ok();
        self.install_stubs();
    }

    /// Emits the shared stubs at the start of a fresh code buffer (or drops
    /// the buffer if they cannot be emitted).
    fn install_stubs(&mut self) {
        let Some(code) = self.code.as_mut() else {
            return;
        };
        let mut ops = VecAssembler::<X64Relocation>::new(code.next_exec_addr());
        let off = emit_stubs(
            &mut ops,
            &*self.ctx as *const JitCtx as u64,
            runtime::helper_address(),
            runtime::fill_address(),
            runtime::next_address(),
        );
        let placed = ops
            .finalize()
            .ok()
            .and_then(|bytes| Some((code.append(&bytes)?, bytes.len())));
        let Some((at, len)) = placed else {
            self.code = None;
            return;
        };
        let base = code.exec_base() as u64 + at as u64;
        // Named too, so that a profile (or `scripts/host_insns.py`) can tell
        // the stubs from the run loop: they are translated code's way in,
        // out and to the helpers.
        if let Some(f) = &mut self.perf_map {
            use std::io::Write;
            let _ = writeln!(f, "{base:x} {len:x} x86bt-jit stubs");
            let _ = f.flush();
        }
        self.stubs = Stubs {
            enter: base + off.enter as u64,
            leave: base + off.leave as u64,
            ret: base + off.ret as u64,
            helper: base + off.helper as u64,
            fill: base + off.fill as u64,
            next: base + off.next as u64,
        };
    }

    /// Finds or makes the fragment for CS:IP, or says why the interpreter must
    /// run this unit.
    fn lookup(&mut self, cpu: &mut CpuState, m: &mut Machine) -> Lookup {
        if cpu.int_shadow != 0 || cpu.rflags & (TF | RF) != 0 || cpu.dr[7] & 0xFF != 0 {
            return Lookup::Delegate(Delegation::SingleStep);
        }
        let key = CpuMode::of(cpu);
        let Ok((lin, phys)) = code_address(cpu, m, key) else {
            return Lookup::Delegate(Delegation::Fetch);
        };
        let flat = flat_segments(cpu);
        // A unit on a page with a breakpoint is entered only from here,
        // never through a link or the jump cache.
        let on_break_page = self.break_pages.binary_search(&(lin.0 >> 12)).is_ok();
        let link = self.vcpus[self.cur].link_request.take().filter(|r| {
            !on_break_page
                && r.icount == cpu.icount
                && r.rip == cpu.rip
                && r.cs_base == cpu.seg[sreg::CS].base
        });
        let set = set_of(phys, key);
        let mut victim = set * WAYS + 1 - usize::from(self.recent[set]);
        let mut found = None;
        for way in 0..WAYS {
            let s = set * WAYS + way;
            let slot = &self.slots[s];
            if slot.valid
                && slot.phys == phys
                && slot.key == key
                && slot.rip == cpu.rip
                && slot.cs_base == cpu.seg[sreg::CS].base
                && slot.cs_limit == cpu.seg[sreg::CS].limit
                && slot.flat == flat
            {
                let (byte_len, next_phys) = (slot.byte_len, slot.next_phys);
                if unit_fits(cpu, m, key, lin, byte_len, next_phys) {
                    self.stats.hits += 1;
                    found = Some(s);
                    break;
                }
                // Same bytes and CS:IP, but not valid at this alias: decode
                // again here.
                victim = s;
            }
        }
        let s = match found {
            Some(s) => s,
            None => {
                let started = std::time::Instant::now();
                let done = self.translate(cpu, m, phys, key, victim);
                self.stats.translate_ns += started.elapsed().as_nanos() as u64;
                if let Err(d) = done {
                    return Lookup::Delegate(d);
                }
                victim
            }
        };
        self.recent[set] = (s - set * WAYS) as u8;
        if let Some(r) = link {
            self.link(r.tag, s, cpu.rip);
        }
        Lookup::Run(s)
    }

    /// Translates the unit at CS:IP (physical `phys`) into slot `s`.
    fn translate(
        &mut self,
        cpu: &mut CpuState,
        m: &mut Machine,
        phys: u64,
        key: CpuMode,
        s: usize,
    ) -> Result<(), Delegation> {
        let flat = flat_segments(cpu);
        if self.code.as_ref().is_none_or(|c| c.free() < UNIT_ROOM) {
            self.flush_code();
        }
        let mut fetched =
            fetch_unit(cpu, m, phys, key, &mut self.scratch).map_err(|_| Delegation::Fetch)?;
        if self.single_step && self.scratch.count > 1 {
            let first = self.scratch.insns[0];
            self.scratch.count = 1;
            self.scratch.byte_len = first.len();
            // A cut unit ends with an event, as the interpreter's single step
            // of a longer unit does.
            fetched.plain_end = false;
            let lin = cpu.seg[sreg::CS].base.wrapping_add(cpu.rip) & 0xFFF;
            if lin + first.len() as u64 <= 0x1000 {
                fetched.next_phys = NO_PAGE;
            }
        }
        let bits = key.bits();
        let insns: Box<[Insn]> = self
            .scratch
            .instructions()
            .iter()
            .map(|i| Insn::prepare(i, bits))
            .collect();
        let (mut lowerings, regs) = plan::plan_unit(&insns);
        if m.cpu_count() == 1 {
            plan::pause_as_nop(&insns, &mut lowerings);
        }
        let inline = lowerings
            .iter()
            .filter(|l| !matches!(l, Lowering::Helper(_)))
            .count();
        if key == CpuMode::Long64 && inline * HELPER_HEAVY < lowerings.len() {
            // Mostly helper calls, each dearer than the interpreter's own step:
            // the interpreter runs it, and the slot remembers that.
            self.drop_slot(s);
            let gen = self.next_gen;
            self.next_gen += 1;
            self.stats.interp_units += 1;
            let cs = cpu.seg[sreg::CS];
            let spec = self.spec_of(key, cs.base, cs.limit, flat);
            let unit = Slot {
                interp_only: true,
                ..self.unit_slot(cpu, (phys, fetched.next_phys), key, flat, spec, gen)
            };
            self.install(m, s, unit);
            return Ok(());
        }
        let (captures, entry_live) = plan::flag_plan(&lowerings);
        let exit_dead = exits_flags_dead(cpu, m, phys, key, &insns);
        let remats = plan::remats(&insns, &lowerings, &captures);
        let reruns = plan::reruns(&insns);
        let lens: Vec<u8> = insns.iter().map(|i| i.len).collect();
        let kinds = plan::helper_kinds(&lowerings);
        let ptrs: Vec<u64> = insns.iter().map(|i| i as *const Insn as u64).collect();
        self.drop_slot(s);
        let gen = self.next_gen;
        self.next_gen += 1;
        let seg_writes = plan::seg_writes(&insns);
        // A unit that loads a segment register may leave with other flat
        // segments than it was entered with, so it returns to the run loop.
        let chain = (plan::may_chain(&lowerings)
            || insns
                .last()
                .is_some_and(|l| plan::may_fall_through(&lowerings, &l.ins, fetched.plain_end)))
            && !seg_writes.contains(&true)
            // An STI that ends its unit may leave the interrupt shadow set,
            // which the run loop must see before the next instruction.
            && insns.last().is_none_or(|l| l.ins.mnemonic() != iced_x86::Mnemonic::Sti);
        let shadow_clear = plan::shadow_clears(&insns);
        // A unit that ends on a sensitive instruction ends with an event, as
        // the interpreter's does: the run loop looks before the next unit,
        // however the unit was entered. (One holding x87, which can raise
        // FERR#, ends plainly; it never chains on, and the run loop watches
        // INTR between plain units.)
        let event_end = !fetched.plain_end;
        let cs = cpu.seg[sreg::CS];
        let spec = self.spec_of(key, cs.base, cs.limit, flat);
        let mut stubs = [0u64; 2];
        let frag = {
            let code = self.code.as_mut().ok_or(Delegation::NoBuffer)?;
            let code_base = code.next_exec_addr() as u64;
            let mut ops = VecAssembler::<X64Relocation>::new(code.next_exec_addr());
            let frag = emit_unit(
                &mut ops,
                &UnitPlan {
                    lowerings: &lowerings,
                    captures: &captures,
                    entry_live,
                    reruns: &reruns,
                    remats: &remats,
                    lens: &lens,
                    kinds: &kinds,
                    chain,
                    rip: cpu.rip,
                    ip_mask: key.ip_mask(),
                    cs_base: cs.base,
                    cs_limit: cs.limit,
                    flat,
                    seg_writes: &seg_writes,
                    spec,
                    protected: key.protected(),
                    v86: key == CpuMode::V86,
                    event_end,
                    long: key == CpuMode::Long64,
                    regs,
                    shadow_clear: &shadow_clear,
                    loop_prefix: plan::loop_prefix(&insns, &lowerings),
                    exit_dead,
                    closing_clears: insns
                        .len()
                        .checked_sub(2)
                        .map_or(0, |k| plan::cleared_flags(&insns[k].ins)),
                    dispatch: !self.single_step && plan::dispatches(&insns, &lowerings),
                    key: key as u8,
                },
                &Externals {
                    stubs: self.stubs,
                    ctx: &*self.ctx as *const JitCtx as u64,
                    insns: &ptrs,
                    link_tags: [link_tag(s, gen, 0), link_tag(s, gen, 1)],
                    predict: code.data().map(|(rx, rw)| Predict {
                        rx,
                        rw,
                        next: &self.next_predict,
                        code_base,
                    }),
                },
            );
            let bytes = ops.finalize().map_err(|_| Delegation::NoBuffer)?;
            let at = code.append(&bytes).ok_or(Delegation::NoBuffer)?;
            if let Some(f) = &mut self.perf_map {
                use iced_x86::Formatter;
                use std::io::Write;
                let mut text = String::new();
                let mut fmt = iced_x86::IntelFormatter::new();
                for i in insns.iter() {
                    if !text.is_empty() {
                        text.push_str("; ");
                    }
                    fmt.format(&i.ins, &mut text);
                }
                let _ = writeln!(
                    f,
                    "{:x} {:x} guest {:04x}:{:08x} phys {:x}: {text}",
                    code.exec_base() as usize + at,
                    bytes.len(),
                    cs.selector,
                    cpu.rip,
                    phys,
                );
                let _ = f.flush();
            }
            self.stats.code_bytes += bytes.len() as u64;
            let base = code.exec_base() as u64;
            for (stub, off) in stubs.iter_mut().zip(frag.stubs) {
                *stub = off.map_or(0, |o| base + (at + o) as u64);
            }
            Fragment {
                body: at + frag.body,
                stubs: frag.stubs,
            }
        };
        self.stats.translations += 1;
        self.stats.translated_insns += insns.len() as u64;
        self.stats.inline_insns += inline as u64;
        let unit = Slot {
            // Any unit on one page: one that ends with an event says so itself.
            chain_target: fetched.next_phys == NO_PAGE,
            code: frag,
            insns,
            stubs,
            ..self.unit_slot(cpu, (phys, fetched.next_phys), key, flat, spec, gen)
        };
        self.install(m, s, unit);
        Ok(())
    }

    /// A slot for the unit just decoded (`self.scratch`) at CS:IP, on the
    /// physical pages `pages`, with no fragment yet.
    fn unit_slot(
        &self,
        cpu: &CpuState,
        pages: (u64, u64),
        key: CpuMode,
        flat: u8,
        spec: u32,
        gen: u64,
    ) -> Slot {
        let cs = cpu.seg[sreg::CS];
        Slot {
            valid: true,
            phys: pages.0,
            next_phys: pages.1,
            key,
            rip: cpu.rip,
            cs_base: cs.base,
            cs_limit: cs.limit,
            flat,
            spec,
            byte_len: self.scratch.byte_len as u32,
            gen,
            ..Slot::empty()
        }
    }

    /// Puts `unit` in slot `s` and indexes its code pages.
    fn install(&mut self, m: &mut Machine, s: usize, unit: Slot) {
        let pages = (unit.phys, unit.next_phys);
        self.slots[s] = unit;
        index_code_pages(m, &mut self.page_index, pages, &self.scratch, s as u32);
    }

    /// Makes the fast TLB safe for the fragment about to run, and points the
    /// context at the entries of the current privilege: the host pages it maps
    /// must still be what `PhysMemory` says (no new code page, no map change),
    /// and no write may bypass the write log while one is kept.
    fn prepare_fast_tlb(&mut self, cpu: &mut CpuState, m: &mut Machine) {
        let epoch = m.mem.host_epoch();
        if epoch != cpu.tlb.fast.host_epoch {
            cpu.tlb.fast.flush();
            cpu.tlb.fast.host_epoch = epoch;
        }
        let maps = m.mem.code_maps_epoch();
        if maps != cpu.tlb.fast.maps_epoch {
            cpu.tlb.fast.drop_code_writes();
            cpu.tlb.fast.maps_epoch = maps;
        }
        // The jump cache maps linear addresses: it goes with every TLB flush
        // (and with the memory map, whose change flushed the fast TLB above),
        // and loses the entries of each page INVLPG flushed.
        if cpu.tlb.fast.generation != self.vcpus[self.cur].generation {
            self.clear_jc();
            self.vcpus[self.cur].generation = cpu.tlb.fast.generation;
            cpu.tlb.fast.page_notes.clear();
        } else if !cpu.tlb.fast.page_notes.is_empty() {
            let v = &mut self.vcpus[self.cur];
            for page in std::mem::take(&mut cpu.tlb.fast.page_notes) {
                for idx in v.by_page.remove(&page).unwrap_or_default() {
                    let idx = idx as usize;
                    if v.pages[idx] == page || v.pages2[idx] == page {
                        v.pages[idx] = u64::MAX;
                        v.pages2[idx] = u64::MAX;
                        v.jc[idx] = JcEntry::EMPTY;
                    }
                }
            }
        }
        if cpu.log_writes && cpu.tlb.fast.writes {
            cpu.tlb.fast.drop_writes();
        }
        let user = mmu::paging(cpu) && cpu.cpl() == 3;
        self.ctx.tlb_base = cpu.tlb.fast.e[usize::from(user)].as_mut_ptr() as u64;
        self.ctx.generation = cpu.tlb.fast.generation;
    }

    /// Runs the fragment whose body is at offset `entry` of the code buffer.
    #[cfg(target_arch = "x86_64")]
    fn enter(&mut self, entry: usize, cpu: &mut CpuState, m: &mut Machine) -> u64 {
        self.prepare_fast_tlb(cpu, m);
        let Some(code) = &self.code else {
            return EXIT_EVENT;
        };
        let body = code.exec_base() as u64 + entry as u64;
        let stub = self.stubs.enter as *const u8;
        self.ctx.m = m;
        // SAFETY: `body` is a fragment appended to this buffer and `stub` the
        // buffer's enter stub; the buffer stays mapped executable and unmoved
        // while `self.code` holds it; the slot is valid, so the instructions the
        // fragment embeds are alive. `cpu` and `ctx.m` come from exclusive
        // references that are not used until the call returns, and nothing
        // borrows the boxed context (whose address the code embeds) meanwhile.
        let r = unsafe { runtime::enter(stub, cpu, body) };
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
        let mode = CpuMode::of(cpu);
        let Ok((_, phys)) = code_address(cpu, m, mode) else {
            return false;
        };
        if fetch_unit(cpu, m, phys, mode, &mut self.scratch).is_err() {
            return false;
        }
        self.scratch
            .instructions()
            .iter()
            .any(|i| classify(i) == Some(Sensitivity::Io))
    }
}

impl Engine for Translator {
    /// Runs one unit at CS:IP, or delegates it to the embedded interpreter.
    fn run_unit(&mut self, cpu: &mut CpuState, m: &mut Machine) -> UnitExit {
        let s = match self.lookup(cpu, m) {
            Lookup::Run(s) if self.slots[s].interp_only => {
                self.stats.delegated[Delegation::HelperHeavy as usize] += 1;
                return self.interp.run_unit(cpu, m);
            }
            Lookup::Run(s) => s,
            Lookup::Delegate(d) => {
                self.stats.delegated[d as usize] += 1;
                return self.interp.run_unit(cpu, m);
            }
        };
        let entry = self.slots[s].code.body;
        self.ctx.pending_link = 0;
        self.ctx.intr = u8::from(m.intr());
        let exit = self.enter(entry, cpu, m);
        if self.ctx.pending_link != 0 {
            self.vcpus[self.cur].link_request = Some(LinkRequest {
                tag: self.ctx.pending_link,
                icount: cpu.icount,
                rip: cpu.rip,
                cs_base: cpu.seg[sreg::CS].base,
            });
        }
        match exit {
            EXIT_END | EXIT_EVENT => {
                if cpu.run_state != RunState::Running {
                    self.stats.exits[ExitKind::Halt as usize] += 1;
                    return if cpu.run_state == RunState::Shutdown {
                        UnitExit::Shutdown
                    } else {
                        UnitExit::Halted
                    };
                }
                if exit == EXIT_END {
                    self.stats.exits[ExitKind::End as usize] += 1;
                    UnitExit::Continue
                } else {
                    self.stats.exits[ExitKind::Event as usize] += 1;
                    UnitExit::Event
                }
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

    /// Drops every fragment decoded from the RAM pages `pages` (and the
    /// embedded interpreter's units for them).
    fn invalidate_pages(&mut self, pages: &[u64]) {
        for page in pages {
            for s in self.page_index.remove(page).unwrap_or_default() {
                if self.slots[s as usize].valid {
                    self.drop_slot(s as usize);
                    self.stats.invalidations += 1;
                }
            }
        }
        self.interp.invalidate_pages(pages);
    }

    /// Drops every fragment (the code stays in the buffer until it is full).
    fn flush(&mut self) {
        for v in &mut self.vcpus {
            if v.clear() {
                self.stats.jc_clears += 1;
            }
        }
        for s in &mut self.slots {
            *s = Slot::empty();
        }
        self.page_index.clear();
        self.interp.flush();
    }

    /// Cuts every unit to one instruction from now on (or not): each one then
    /// runs through its own fragment, and the caller sees every boundary.
    fn set_single_step(&mut self, on: bool) {
        if on != self.single_step {
            self.flush();
            self.single_step = on;
        }
        self.interp.single_step = on;
    }

    /// Makes vCPU `n` (numbered from 0) the one whose fragments run next: its
    /// jump cache becomes the one fragments use. Every vCPU shares the
    /// translation cache.
    fn select_vcpu(&mut self, n: usize) {
        while self.vcpus.len() <= n {
            self.vcpus.push(VcpuJit::new());
        }
        if n != self.cur {
            // The link the last vCPU's fragment asked for is about its next
            // unit with nothing run in between; others run before it does.
            self.vcpus[self.cur].link_request = None;
            self.ctx.pending_link = 0;
        }
        self.cur = n;
        self.ctx.jc = self.vcpus[n].jc.as_mut_ptr();
    }

    /// Forgets what was kept for vCPU `n`: its jump cache of linear addresses
    /// and its pending link (after an INIT gave it a fresh CPU state, whose
    /// TLB generation starts anew).
    fn reset_vcpu(&mut self, n: usize) {
        if let Some(v) = self.vcpus.get_mut(n) {
            if v.clear() {
                self.stats.jc_clears += 1;
            }
            v.generation = u64::MAX;
            v.link_request = None;
        }
    }

    /// Lets fragments go on to the next fragment without returning (chaining, and
    /// repeating a unit that branches to itself) while `icount` is below
    /// `icount_limit` (the run loop's chain horizon). The default, 0, returns
    /// after every unit.
    fn set_budget(&mut self, icount_limit: u64) {
        self.ctx.icount_limit = icount_limit;
    }

    /// Links and jump-cache entries made before a page got a breakpoint
    /// could lead into it: a page new to the set flushes the cache.
    fn set_break_pages(&mut self, pages: &[u64]) -> bool {
        if pages
            .iter()
            .any(|p| self.break_pages.binary_search(p).is_err())
        {
            self.flush();
        }
        self.break_pages = pages.to_vec();
        true
    }

    fn stats_text(&self) -> Option<String> {
        Some(self.stats().to_string())
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Whether the host CPU has LAHF/SAHF in 64-bit mode (CPUID 8000_0001h ECX
/// bit 0), which the emitter uses for flags.
fn host_has_lahf_sahf() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID is safe on every x86-64 CPU; leaf 8000_0000h says whether leaf
        // 8000_0001h exists.
        let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
        max >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).ecx & 1 != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use x86bt_cpu::state::Segment;
    use x86bt_machine::GuestPhys;

    /// Two units on one page that chain into each other: A = `inc ax; jmp B` at
    /// 0100:0000, B = `inc dx; jmp A` at 0100:0010.
    fn setup() -> (CpuState, Machine, Translator) {
        let mut m = Machine::flat(1 << 20).expect("machine");
        m.mem
            .load(GuestPhys(0x1000), &[0x40, 0xEB, 0x0D])
            .expect("A");
        m.mem
            .load(GuestPhys(0x1010), &[0x42, 0xEB, 0xED])
            .expect("B");
        let mut cpu = CpuState::reset();
        cpu.seg[sreg::CS] = Segment::real(0x0100);
        cpu.rip = 0;
        cpu.gpr = [0; 16];
        (cpu, m, Translator::new().expect("translator"))
    }

    /// Where site 0's link jump of slot `s` goes.
    fn link_target(t: &Translator, s: usize) -> u64 {
        let code = t.code.as_ref().expect("buffer");
        let stub = t.slots[s].stubs[0];
        let end = (stub - code.exec_base() as u64) as usize;
        stub.wrapping_add_signed(i64::from(code.rel32_at(end)))
    }

    fn slot_at(t: &Translator, phys: u64) -> usize {
        t.slots
            .iter()
            .position(|s| s.valid && s.phys == phys)
            .expect("translated")
    }

    #[test]
    fn engine_links_same_page_fragments_and_chains_through_them() {
        let (mut cpu, mut m, mut t) = setup();
        t.set_budget(1_000);
        let mut calls = 0;
        while cpu.icount < 1_000 {
            assert_eq!(t.run_unit(&mut cpu, &mut m), UnitExit::Continue);
            calls += 1;
        }
        // A asks for a link to B, B for one back to A; from then on one call
        // runs both back and forth up to the budget.
        assert!(calls <= 4, "{calls} calls");
        assert_eq!(cpu.icount, 1_000);
        let (a, b) = (slot_at(&t, 0x1000), slot_at(&t, 0x1010));
        let base = t.code.as_ref().expect("buffer").exec_base() as u64;
        assert_eq!(link_target(&t, a), base + t.slots[b].code.body as u64);
        assert_eq!(link_target(&t, b), base + t.slots[a].code.body as u64);
        assert_eq!(cpu.gpr[0] + cpu.gpr[2], 500, "one INC per unit of two");
    }

    /// A = `inc ax; jmp near B` at 0100:0000 (linear page 1), B = `inc dx;
    /// jmp near A` at 0100:1000 (linear page 2).
    fn two_pages() -> (CpuState, Machine, Translator) {
        let (cpu, mut m, t) = setup();
        m.mem
            .load(GuestPhys(0x1000), &[0x40, 0xE9, 0xFC, 0x0F])
            .expect("A");
        m.mem
            .load(GuestPhys(0x2000), &[0x42, 0xE9, 0xFC, 0xEF])
            .expect("B");
        (cpu, m, t)
    }

    #[test]
    fn engine_never_chains_into_a_page_with_a_breakpoint() {
        let (mut cpu, mut m, mut t) = two_pages();
        t.set_budget(1_000);
        // Without breakpoints the two units link both ways.
        let mut calls = 0;
        while cpu.icount < 1_000 {
            t.run_unit(&mut cpu, &mut m);
            calls += 1;
        }
        assert!(calls <= 4, "{calls} calls");
        // A breakpoint on B's page: the links made into it go (a flush), and
        // from now on every call that reaches B returns there first.
        assert!(t.set_break_pages(&[2]));
        t.set_budget(3_000);
        let mut calls = 0;
        while cpu.icount < 3_000 {
            let before = cpu.icount;
            assert_eq!(t.run_unit(&mut cpu, &mut m), UnitExit::Continue);
            calls += 1;
            // B is run only as a call's first unit: a call runs at most
            // B and A (two instructions each).
            assert!(
                cpu.icount - before <= 4 || cpu.icount >= 3_000,
                "ran {} instructions, to {:#x}",
                cpu.icount - before,
                cpu.rip
            );
        }
        // Each call runs B, then A (B may still link to A), and stops at B.
        assert!(calls >= 499, "{calls} calls");
        // (A cross-page jump goes through the jump cache, not a link.)
        assert!(
            !t.vcpus[0].jc.iter().any(|e| e.rip == 0x1000 && e.addr != 0),
            "no jump-cache entry leads to B"
        );
        // Without the breakpoint the links come back.
        assert!(t.set_break_pages(&[]));
        t.set_budget(5_000);
        let mut calls = 0;
        while cpu.icount < 5_000 {
            t.run_unit(&mut cpu, &mut m);
            calls += 1;
        }
        assert!(calls <= 4, "{calls} calls");
    }

    #[test]
    fn engine_a_link_request_is_kept_per_vcpu_and_dropped_at_a_switch() {
        let (mut cpu, mut m, mut t) = setup();
        t.set_budget(1_000);
        // A runs and leaves through its unlinked link jump toward B.
        assert_eq!(t.run_unit(&mut cpu, &mut m), UnitExit::Continue);
        assert!(t.vcpus[0].link_request.is_some(), "A asked for a link");
        t.select_vcpu(1);
        assert!(
            t.vcpus.iter().all(|v| v.link_request.is_none()),
            "a switch drops the request"
        );
        // Another vCPU at B, even with the same icount, RIP and CS base, does
        // not link A's site.
        t.set_budget(0);
        t.run_unit(&mut cpu, &mut m);
        let a = slot_at(&t, 0x1000);
        assert_eq!(link_target(&t, a), t.slots[a].stubs[0]);
        assert_eq!(t.stats().links, 0);
    }

    #[test]
    fn engine_dropping_a_fragment_resets_the_link_jumps_to_it() {
        let (mut cpu, mut m, mut t) = setup();
        t.set_budget(1_000);
        while cpu.icount < 1_000 {
            t.run_unit(&mut cpu, &mut m);
        }
        let (a, b) = (slot_at(&t, 0x1000), slot_at(&t, 0x1010));
        let stub = t.slots[a].stubs[0];
        assert_ne!(stub, 0);
        assert_ne!(link_target(&t, a), stub);
        // As a conflict eviction would.
        t.drop_slot(b);
        assert_eq!(link_target(&t, a), stub, "no jump into a dropped fragment");
        // A leaves through its stub, B is translated again and relinked.
        t.set_budget(2_000);
        while cpu.icount < 2_000 {
            t.run_unit(&mut cpu, &mut m);
        }
        let b = slot_at(&t, 0x1010);
        let base = t.code.as_ref().expect("buffer").exec_base() as u64;
        assert_eq!(link_target(&t, a), base + t.slots[b].code.body as u64);
        assert_eq!(cpu.gpr[0] + cpu.gpr[2], 1_000);
    }
}
