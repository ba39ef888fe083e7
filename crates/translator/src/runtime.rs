//! The boundary between Rust and translated code: the context a fragment
//! carries, the helper it calls, and the call into a fragment.
//!
//! The helper runs one prepared instruction through the interpreter's
//! [`exec_one`], the same per-instruction protocol as the interpreter's own loop
//! (so `next_rip`, RIP, `icount`, restarts and code-write checks agree by
//! construction), and reports the outcome as an exit code.

use crate::plan::HelperKind;
use x86bt_cpu::Exception;
use x86bt_machine::Machine;
#[cfg(target_arch = "x86_64")]
use {
    crate::emit::{EXIT_END, EXIT_EVENT, EXIT_FAULT},
    x86bt_cpu::interp::interpreter::{exec_one, Step},
    x86bt_cpu::interp::Insn,
    x86bt_cpu::CpuState,
};

/// Entries of the jump cache (a power of two).
pub const JC_SIZE: usize = 4096;

/// The jump-cache entry of guest RIP `rip`: the low bits, folded with the page
/// number so that page-aligned targets spread (the emitter computes the same).
pub const fn jc_index(rip: u64) -> usize {
    ((rip ^ (rip >> 12)) as usize) & (JC_SIZE - 1)
}
/// The RIP of an empty jump-cache entry (not canonical, so no RIP makes it).
pub const JC_EMPTY: u64 = u64::MAX;

/// One jump-cache entry: a guest RIP under one spec (see `JitCtx::jc`) and the
/// chain entry of its fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct JcEntry {
    /// The guest RIP (all 64 bits), or [`JC_EMPTY`].
    pub rip: u64,
    /// The spec id the fragment was made for.
    pub spec: u64,
    /// The chain entry (absolute address) of the fragment.
    pub addr: u64,
    /// Keeps the entry a power of two in size.
    pub pad: u64,
}

impl JcEntry {
    /// An empty entry.
    pub const EMPTY: Self = Self {
        rip: JC_EMPTY,
        spec: 0,
        addr: 0,
        pad: 0,
    };
}

/// What a running fragment needs besides the CPU state. Lives in a `Box` owned
/// by the translator, so its address is stable while a fragment runs.
#[repr(C)]
pub struct JitCtx {
    /// The machine, valid while a fragment runs.
    pub m: *mut Machine,
    /// The exception a helper returned with [`EXIT_FAULT`].
    pub exc: Option<Exception>,
    /// Helper calls by [`HelperKind`].
    pub helper_calls: [u64; HelperKind::COUNT],
    /// Fragments go on to the next fragment (or their own start) without
    /// returning while `CpuState::icount` is below this (the run loop's horizon).
    pub icount_limit: u64,
    /// Set by a fragment that left through an unlinked link jump: the site's tag
    /// (see `Translator`), or 0.
    pub pending_link: u64,
    /// The fast-TLB entries of the current privilege
    /// (`CpuState::tlb.fast.e[user]`), set before each entry.
    pub tlb_base: u64,
    /// Fast-TLB fills asked for by fragments, and how many installed an entry.
    pub fills: u64,
    /// See `fills`.
    pub fills_ok: u64,
    /// The running vCPU's jump cache ([`JC_SIZE`] entries): where a fragment
    /// whose next RIP is known only at run time (RET, JMP/CALL through a
    /// register) or lies on another page goes on without returning. Indexed
    /// by [`jc_index`] of the guest RIP; an entry holds the fragment made for
    /// that RIP under one *spec* (mode key, CS base and limit, flat segments;
    /// the translator numbers them), so a fragment only takes entries made for
    /// its own spec. It maps linear addresses, which are the vCPU's own, so
    /// each vCPU has one and the translator points this at the running one's;
    /// it empties a vCPU's whenever that vCPU's TLB is flushed or the memory
    /// map changes, drops the entries of a page INVLPG flushes, and removes an
    /// entry from every vCPU's when its fragment goes.
    pub jc: *mut JcEntry,
    /// The host's MXCSR, saved by the enter stub and put back by a unit that
    /// ran under the guest's (see [`crate::emit`]).
    pub host_mxcsr: u32,
    /// `Machine::intr()` as of the fragment's entry or its last helper call
    /// (nothing else can change it while a fragment runs): an inline STI or
    /// POPF that sets IF while it is up ends the unit, as the interpreter's
    /// does.
    pub intr: u8,
    /// `FastTlb::generation` as of the last entry, when the running vCPU's
    /// jump cache was brought up to date with its TLB: [`helper_next`] goes
    /// on through the jump cache only while it has not moved.
    pub generation: u64,
}

impl Default for JitCtx {
    fn default() -> Self {
        Self {
            m: core::ptr::null_mut(),
            exc: None,
            helper_calls: [0; HelperKind::COUNT],
            icount_limit: 0,
            pending_link: 0,
            tlb_base: 0,
            fills: 0,
            fills_ok: 0,
            jc: core::ptr::null_mut(),
            host_mxcsr: 0x1F80,
            intr: 0,
            generation: 0,
        }
    }
}

/// The signature of a compiled code fragment.
#[cfg(target_arch = "x86_64")]
/// The enter stub's signature: the CPU state and the fragment body to run.
pub type Entry = unsafe extern "sysv64" fn(*mut CpuState, u64) -> u64;

/// Runs the instruction at `insn` for a fragment.
///
/// # Safety
/// `cpu` and `ctx` are the pointers the fragment was entered with (valid and
/// not otherwise borrowed while it runs), `ctx.m` points at the machine, and
/// `insn` points at a prepared instruction owned by the translation cache.
#[cfg(target_arch = "x86_64")]
pub unsafe extern "sysv64" fn helper_exec(
    cpu: *mut CpuState,
    ctx: *mut JitCtx,
    insn: *const Insn,
    kind: u64,
) -> u64 {
    // SAFETY: the caller's contract: all three pointers are valid and unaliased
    // for the duration of this call (the Rust side holds no reference while the
    // fragment runs).
    let (cpu, ctx, insn) = unsafe { (&mut *cpu, &mut *ctx, &*insn) };
    // SAFETY: `ctx.m` was set from a `&mut Machine` just before entering the
    // fragment and nothing else uses it until the fragment returns.
    let m = unsafe { &mut *ctx.m };
    if let Some(n) = ctx.helper_calls.get_mut(kind as usize) {
        *n += 1;
    }
    let step = exec_one(cpu, m, insn);
    ctx.intr = u8::from(m.intr());
    match step {
        Step::Next => EXIT_END,
        Step::End => EXIT_EVENT,
        Step::Fault(e) => {
            ctx.exc = Some(e);
            EXIT_FAULT
        }
    }
}

/// After a fragment's last instruction, an INT n or IRET (the family
/// `plan::dispatches` names) that the helper ran and that ended nothing
/// (`Step::Next`): the chain entry of the fragment to go on to, or 0 to
/// return to the run loop. `spec` is the running fragment's spec id, made
/// for mode key, CS base, CS limit and flat segments `key_flat` (key, then
/// the flat set shifted left by 8), `cs_base` and `cs_limit`.
///
/// It goes on only where the run loop would look up and run the next unit
/// at once, with nothing else done in between that a guest could see, and
/// where the lookup would find the fragment the jump cache names:
/// - the run loop's inner chain would go on: the instruction budget
///   (`icount_limit`) is not spent, the CPU runs, no PAUSE asked for a turn,
///   no interrupt is deliverable (INTR with IF and no shadow), and no NMI
///   waits, in the CPU or its APIC (an IRET unblocks NMIs, which only the
///   outer loop takes and delivers);
/// - the lookup would not delegate (TF, RF, the interrupt shadow, armed data
///   or instruction breakpoints);
/// - the fast TLB and the jump cache need none of what the engine does
///   before an entry (host or code-map epochs moved, a flush or INVLPG since
///   the entry, a write log with write entries); the fast-TLB entries of
///   the new privilege are set in the context;
/// - the state after the instruction has the fragment's own spec (a CPL
///   change keeps it when the segments stay flat), and the jump cache holds
///   the new RIP under it. On a miss the engine is asked to fill the entry
///   (`JC_REQUEST`), as a fragment's own jump-cache probe does.
///
/// # Safety
/// As [`helper_exec`], for `cpu` and `ctx`.
#[cfg(target_arch = "x86_64")]
pub unsafe extern "sysv64" fn helper_next(
    cpu: *mut CpuState,
    ctx: *mut JitCtx,
    spec: u64,
    key_flat: u64,
    cs_base: u64,
    cs_limit: u64,
) -> u64 {
    use x86bt_cpu::state::flags::{IF, RF, TF};
    use x86bt_cpu::state::{sreg, RunState};
    // SAFETY: the caller's contract, as in `helper_exec`.
    let (cpu, ctx) = unsafe { (&mut *cpu, &mut *ctx) };
    // SAFETY: as in `helper_exec`.
    let m = unsafe { &*ctx.m };
    let fast = &cpu.tlb.fast;
    let stop = cpu.icount >= ctx.icount_limit
        || cpu.run_state != RunState::Running
        || cpu.pause_hint
        || cpu.nmi_pending != 0
        || m.apic_nmi_pending()
        || cpu.int_shadow != 0
        || cpu.rflags & (TF | RF) != 0
        || cpu.dr[7] & 0xFF != 0
        || (m.intr() && cpu.rflags & IF != 0)
        || m.mem.code_write_pending
        || fast.host_epoch != m.mem.host_epoch()
        || fast.maps_epoch != m.mem.code_maps_epoch()
        || fast.generation != ctx.generation
        || !fast.page_notes.is_empty()
        || (cpu.log_writes && fast.writes);
    if stop {
        return 0;
    }
    let cs = cpu.seg[sreg::CS];
    let now = u64::from(x86bt_cpu::CpuMode::of(cpu) as u8)
        | u64::from(crate::emit::flat_segments(cpu)) << 8;
    if now != key_flat || cs.base != cs_base || u64::from(cs.limit) != cs_limit {
        return 0;
    }
    let user = x86bt_cpu::mmu::paging(cpu) && cpu.cpl() == 3;
    ctx.tlb_base = cpu.tlb.fast.e[usize::from(user)].as_mut_ptr() as u64;
    // SAFETY: `ctx.jc` points at the running vCPU's JC_SIZE entries (set by
    // the engine before the entry), and `jc_index` is below JC_SIZE.
    let e = unsafe { *ctx.jc.add(jc_index(cpu.rip)) };
    if e.rip == cpu.rip && e.spec == spec {
        return e.addr;
    }
    ctx.pending_link = crate::emit::JC_REQUEST | spec;
    0
}

/// [`helper_next`]'s address, as the stubs embed it.
pub fn next_address() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        helper_next as *const () as usize as u64
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// Fills the fast TLB for an access at linear `lin` by a fragment
/// ([`x86bt_cpu::mmu::fast_fill`]); `size_write` is the access size shifted
/// left by one, with bit 0 set for a write. Returns 1 if the access may now
/// go inline.
///
/// # Safety
/// As [`helper_exec`], for `cpu` and `ctx`.
#[cfg(target_arch = "x86_64")]
pub unsafe extern "sysv64" fn helper_fill(
    cpu: *mut CpuState,
    ctx: *mut JitCtx,
    lin: u64,
    size_write: u64,
) -> u64 {
    // SAFETY: the caller's contract, as in `helper_exec`.
    let (cpu, ctx) = unsafe { (&mut *cpu, &mut *ctx) };
    // SAFETY: as in `helper_exec`.
    let m = unsafe { &mut *ctx.m };
    ctx.fills += 1;
    let ok = x86bt_cpu::mmu::fast_fill(
        cpu,
        m,
        x86bt_machine::Linear(lin),
        (size_write >> 1) as u32,
        size_write & 1 != 0,
    );
    ctx.fills_ok += u64::from(ok);
    u64::from(ok)
}

/// The fill helper's address, as fragments embed it.
pub fn fill_address() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        helper_fill as *const () as usize as u64
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// The helper's address, as fragments embed it.
pub fn helper_address() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        helper_exec as *const () as usize as u64
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// Runs the fragment body at `body` through the enter stub at `stub`.
///
/// # Safety
/// `stub` is the enter stub of a code buffer made by
/// [`crate::emit::emit_stubs`] and `body` the body of a fragment emitted into
/// the same buffer, which stays mapped for the call, whose embedded instruction
/// pointers and context are alive; `cpu` is valid as [`helper_exec`] requires,
/// and the context the code embeds is not borrowed while it runs.
#[cfg(target_arch = "x86_64")]
pub unsafe fn enter(stub: *const u8, cpu: *mut CpuState, body: u64) -> u64 {
    // SAFETY: `stub` starts a function with the `Entry` ABI (the caller's
    // contract); function pointers and code pointers have the same size here.
    let f: Entry = unsafe { core::mem::transmute::<*const u8, Entry>(stub) };
    // SAFETY: the stub follows the SysV ABI, saves the callee-saved registers
    // the fragments use, and only touches `cpu`, the context and what the
    // helpers reach.
    unsafe { f(cpu, body) }
}
