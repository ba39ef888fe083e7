//! Code generation: one unit's lowerings become one compiled code fragment (CCF).
//!
//! A fragment is made for one CS:IP: its entry RIP, CS base and CS limit are
//! constants in its code (the translation cache matches all three, and the flat
//! segments), so RIP values, branch targets and the checks on them are worked
//! out at translation time. The `JitCtx` address is a constant too (the context
//! lives in a box as long as the translator).
//!
//! **Shared stubs.** What every fragment needs around its body is emitted once
//! per code buffer ([`emit_stubs`]) and reached by relative CALL/JMP: *enter*
//! (the `Entry` ABI: saves the host's callee-saved registers, loads the guest
//! state and jumps to a fragment's body), *leave* (stores the guest state and
//! returns to the host with an exit code), *helper* (makes `CpuState` exact,
//! runs one instruction through `helper_exec`, and reloads the state, or leaves
//! if the instruction ended the unit), *fill* (a fast-TLB fill that keeps
//! every guest register) and *next* (after a unit's closing INT n or IRET:
//! on through the jump cache where `runtime::helper_next` finds the run
//! loop would run the next unit at once, else back to the run loop). A
//! fragment is then only its body and its cold paths.
//!
//! Register use inside fragments, across chained ones:
//! - R15 holds the `CpuState` pointer;
//! - every guest GPR i lives in host register [`GUEST_TO_HOST`]`[i]`, loaded on
//!   entry and after every helper, stored on every exit and before every helper;
//! - R13 holds `CpuState::icount - JitCtx::icount_limit` as of the last point
//!   the emitter advanced it (inline instructions since are added in batches):
//!   negative while a chain may go on, so the budget check at a chain point is
//!   one ADD and one branch on the sign; the stubs convert to and from
//!   `CpuState::icount`;
//! - R14 holds the guest's arithmetic flags, newer than `CpuState::rflags`,
//!   which is brought up to date only in the stubs. They are kept in *LAHF
//!   layout*: bits 8..15 are what LAHF puts in AH (SF, ZF, AF, PF, CF at their
//!   RFLAGS positions plus 8) and bit 0 is OF, as SETO leaves it
//!   ([`lahf_layout`]). LAHF + SETO capture the host flags in a few cheap
//!   instructions and `ADD AL, 0x7F` + SAHF restore them, where PUSHFQ and
//!   POPFQ are microcoded and slow (PUSHFQ + POP measured 2-3 times as slow
//!   as LAHF + SETO in a loop on the AMD EPYC host). Bits 1..=7 are always
//!   clear; the other bits outside the layout (bit 9, 11, 13, and 16 up) are
//!   not defined, as an instruction that writes every flag exactly
//!   ([`FlagSpec::whole`]) is captured straight into R14, upper bits of guest
//!   RAX and LAHF's reserved bit included, so every reader masks them off;
//! - R12 holds `JitCtx::tlb_base`, the fast-TLB entries of the current
//!   privilege (set by the enter stub, restored by the helper stub), so the
//!   memory probe indexes them directly;
//! - R9 holds host flags captured after an instruction, in LAHF layout, until
//!   they are merged into R14, and carries values into the stubs; the memory
//!   probe uses it for the entry offset (no capture is pending there);
//! - R10 and R11 are scratch;
//! - host MXCSR: the host's (saved by the enter stub in
//!   `JitCtx::host_mxcsr`), except inside a unit with an inline SSE
//!   instruction that can raise a SIMD floating-point exception
//!   ([`crate::plan::SseOp::float`]): that unit's prologue loads the guest's
//!   MXCSR from `CpuState` as it is, and its epilogue (on every way out of the
//!   inline code, around helper calls too) stores the host's MXCSR back into
//!   `CpuState`, which gives the guest the flags its instructions raised, and
//!   loads the host's again. Inline SSE therefore rounds, flushes and flags
//!   exactly as the guest asks; it cannot trap, as such an instruction runs
//!   inline only while every exception is masked, and the others raise none.
//!   Rust code runs under the host's MXCSR (the x87 helpers' host arithmetic
//!   depends on it), except the fill stub's page walk, which does no floating
//!   point. The return stub loads the host's MXCSR too. (Switching in the
//!   helper stub on every call, the first design, cost about 60 ns a call.)
//!
//! Invariants:
//! - When a helper runs and at every exit, `CpuState` is exact: guest registers
//!   stored, flags merged, RIP and `icount` those of the instruction the helper
//!   runs (or of the exit). A helper that faults therefore sees the state before
//!   its instruction with every earlier one committed (precise exceptions).
//! - Host EFLAGS are trusted for a guest flag only while nothing since the
//!   instruction that produced it has clobbered them (`host_valid`); otherwise a
//!   reader reloads them from R14 with SAHF (only arithmetic flags change, so
//!   the host's TF, DF and AC stay clear). LAHF and SAHF go through AH, so
//!   guest RAX is parked in R11 or R9 around them.
//! - Inline instructions never fault; memory operands whose checks fail, and a
//!   branch whose target is outside the CS limit, run through the helper instead.
//! - Chaining: where an inline branch leaves the unit, and while R13 (icount) is
//!   below `JitCtx::icount_limit` (the run loop's own chain stops there too), the
//!   fragment may go on to the next unit's fragment instead of returning, with
//!   the guest registers in their host registers, R13 and R14 exact and
//!   `CpuState::rip` left stale: to its own start if the target is its entry RIP;
//!   through the site's link jump (a `JMP rel32`) if the target is on the same
//!   linear page as the entry (so on the same physical page as the running
//!   fragment) and inside the CS limit; through the jump cache (`JitCtx::jc`)
//!   for a target on another page or known only at run time. A link jump goes
//!   to the chain entry of the fragment linked to it, or to the site's own stub
//!   right after it, which leaves the site's tag in `JitCtx::pending_link` and
//!   exits; the engine then points the jump at the fragment it runs next (made
//!   for the same CS base and limit), and back at the stub when that fragment
//!   goes.

// dynasm's expansion of dynamic registers (`Rq(h)`) converts a `u8` into itself.
#![allow(clippy::useless_conversion)]

use crate::plan::{
    cond_flags, Branch, CountFix, CountOp, FlagSpec, FlagsOp, Ident, Lowering, MemOp, Remat,
    RematSrc, SseOp, UnitRegs, Xfer, XferTarget, GUEST_TO_HOST,
};
use crate::runtime::{jc_index, JcEntry, JitCtx, JC_SIZE};
use core::mem::{offset_of, size_of};
use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmLabelApi};
use iced_x86::ConditionCode;
use x86bt_cpu::mmu::{FastEntry, FAST_CODE_TAG, FAST_TLB_SIZE};
use x86bt_cpu::state::{cr0, flags, seg_attr, sreg, CpuState, Segment};

/// What a fragment leaves in `JitCtx::pending_link` when the jump cache has
/// no entry for its next RIP: this bit, or-ed with its spec id (below 2^30).
/// Link-site tags have bit 31 set instead.
pub const JC_REQUEST: u64 = 1 << 30;

/// The fragment ran to its end.
pub const EXIT_END: u64 = 0;
/// An instruction ended the unit early (it restarts itself or wrote to code).
pub const EXIT_EVENT: u64 = 1;
/// A helper returned an exception, stored in the `JitCtx`.
pub const EXIT_FAULT: u64 = 2;

const GPR: i32 = offset_of!(CpuState, gpr) as i32;
const RIP: i32 = offset_of!(CpuState, rip) as i32;
const RFLAGS: i32 = offset_of!(CpuState, rflags) as i32;
const ICOUNT: i32 = offset_of!(CpuState, icount) as i32;
const CR4: i32 = offset_of!(CpuState, cr4) as i32;
const CR0: i32 = offset_of!(CpuState, cr0) as i32;
/// MXCSR, at byte 24 of the FXSAVE image.
const MXCSR: i32 = offset_of!(CpuState, fx) as i32 + 24;
/// MXCSR's six exception masks (bits 7-12).
const MXCSR_MASKS: i32 = 0x1F80;
const TSC_OFFSET: i32 = offset_of!(CpuState, tsc_offset) as i32;
const TSC_AUX: i32 =
    (offset_of!(CpuState, msr) + offset_of!(x86bt_cpu::identity::Msrs, tsc_aux)) as i32;
const INT_SHADOW: i32 = offset_of!(CpuState, int_shadow) as i32;
const FAST_READ: i32 = offset_of!(FastEntry, read) as i32;
const JC_RIP: i32 = offset_of!(JcEntry, rip) as i32;
const JC_SPEC: i32 = offset_of!(JcEntry, spec) as i32;
const JC_ADDR: i32 = offset_of!(JcEntry, addr) as i32;
const FAST_WRITE: i32 = offset_of!(FastEntry, write) as i32;
const FAST_ADDEND: i32 = offset_of!(FastEntry, addend) as i32;
const FAST_CODE: i32 = offset_of!(FastEntry, code) as i32;
/// `(linear >> FAST_SHIFT) & FAST_MASK` is the byte offset of a linear page's
/// fast-TLB entry.
const FAST_SHIFT: i8 = (12 - FAST_ENTRY_BYTES.trailing_zeros()) as i8;
const FAST_ENTRY_BYTES: usize = size_of::<FastEntry>();
const FAST_MASK: i32 = ((FAST_TLB_SIZE - 1) * FAST_ENTRY_BYTES) as i32;
const _: () = assert!(FAST_ENTRY_BYTES.is_power_of_two() && FAST_TLB_SIZE.is_power_of_two());
/// The segment attributes the inline path accepts: a present, expand-up,
/// writable data segment, which allows any read or write inside the limit in
/// every mode (anything else takes the helper, which applies the full checks).
const SEG_MASK: i32 =
    (seg_attr::P | seg_attr::S | seg_attr::CODE | seg_attr::RW | seg_attr::DC) as i32;
const SEG_WANT: i32 = (seg_attr::P | seg_attr::S | seg_attr::RW) as i32;
const ARITH: i32 = flags::ARITH as i32;

/// RFLAGS arithmetic bits `m` in the LAHF layout of R14 and R9 (see the module
/// comment): the low byte's flags moved up by 8, OF to bit 0.
pub const fn lahf_layout(m: u64) -> u32 {
    (((m & 0xD5) << 8) | ((m >> 11) & 1)) as u32
}

/// The segment registers a fragment may treat as flat (bit i = segment
/// register i): base 0, limit 4 GiB - 1, and attributes the inline path accepts
/// (for SS also a 32-bit stack). A fragment's accesses through them skip the
/// limit and type checks and the base; the translation cache matches this set
/// like the CS:IP (see [`UnitPlan::flat`]).
pub fn flat_segments(cpu: &CpuState) -> u8 {
    let mut out = 0;
    for (i, s) in cpu.seg.iter().enumerate().take(6) {
        let db = if i == sreg::SS { seg_attr::DB } else { 0 };
        let ok = s.base == 0
            && s.limit == u32::MAX
            && s.attrs & (SEG_MASK as u16 | db) == SEG_WANT as u16 | db;
        out |= u8::from(ok) << i;
    }
    out
}

fn seg_field(s: u8, field: usize) -> i32 {
    (offset_of!(CpuState, seg) + usize::from(s) * size_of::<Segment>() + field) as i32
}

/// An assembler the emitter can write to.
pub trait CodeSink: DynasmLabelApi<Relocation = X64Relocation> {
    /// A fresh label.
    fn new_label(&mut self) -> DynamicLabel;
}

impl CodeSink for dynasmrt::VecAssembler<X64Relocation> {
    fn new_label(&mut self) -> DynamicLabel {
        self.new_dynamic_label()
    }
}

/// Absolute addresses of the shared stubs ([`emit_stubs`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stubs {
    /// `extern "sysv64" fn(*mut CpuState, body: u64) -> u64`: enters the
    /// fragment body at `body`.
    pub enter: u64,
    /// Jumped to with R9 = RIP, R12 = exit code: stores the guest state, returns.
    pub leave: u64,
    /// Jumped to with RAX = exit code, the state already in `CpuState`: returns.
    pub ret: u64,
    /// Called with R9 = icount, R10 = RIP, R11 = the `Insn`, R12 = helper kind:
    /// runs the instruction; returns only if the unit goes on.
    pub helper: u64,
    /// Called with R10 = linear address, R11 = size and write bit: a fast-TLB
    /// fill; R11 = 1 if the access may now go inline.
    pub fill: u64,
    /// Jumped to at the end of a fragment whose last instruction, an INT n or
    /// IRET ([`UnitPlan::dispatch`]), ran in the helper, with the state exact
    /// in `CpuState` and EDX = spec, RCX = mode key | flat segments << 8,
    /// R8 = CS base, R9 = CS limit: goes on at the fragment
    /// `runtime::helper_next` names, or returns [`EXIT_EVENT`].
    pub next: u64,
}

/// Offsets of the stubs in the code [`emit_stubs`] made.
#[derive(Clone, Copy, Debug)]
pub struct StubOffsets {
    /// See [`Stubs`].
    pub enter: usize,
    /// See [`Stubs`].
    pub leave: usize,
    /// See [`Stubs`].
    pub ret: usize,
    /// See [`Stubs`].
    pub helper: usize,
    /// See [`Stubs`].
    pub fill: usize,
    /// See [`Stubs`].
    pub next: usize,
}

/// What a fragment calls and embeds: the stubs, the context, the address of
/// each prepared instruction, and its two link sites' tags. Named for
/// listings.
pub struct Externals<'a> {
    /// The shared stubs of the code buffer.
    pub stubs: Stubs,
    /// The `JitCtx` the fragment will be entered with.
    pub ctx: u64,
    /// The prepared instructions, in unit order.
    pub insns: &'a [u64],
    /// What an unlinked link jump's stub leaves in `JitCtx::pending_link`,
    /// per site (taken 0, not taken 1).
    pub link_tags: [u64; 2],
    /// Where the memory accesses keep their predicted fast-TLB entries
    /// ([`Emitter::probe`]); `None`: each access computes its entry.
    pub predict: Option<Predict<'a>>,
}

/// The table of predicted fast-TLB entries: one 32-bit slot per memory
/// access of the translated code (slots are reused round the table; two
/// accesses sharing one only predict worse), holding the byte offset in the
/// fast-TLB array of the entry the access used last. A prediction is only a
/// guess: the probe compares the entry's tag with the access's page, which
/// matches only at the page's own entry, so a stale or shared slot costs a
/// miss and never a wrong translation.
#[derive(Clone, Copy, Debug)]
pub struct Predict<'a> {
    /// The table's address as translated code reads it (the executable view,
    /// within reach of a RIP-relative operand).
    pub rx: u64,
    /// Its address in the writable view, where the out-of-line path stores a
    /// new prediction.
    pub rw: u64,
    /// The next slot to hand out.
    pub next: &'a std::cell::Cell<u32>,
    /// The executable address of the assembler's offset 0.
    pub code_base: u64,
}

/// Slots of the [`Predict`] table: the code buffer's data area in 32-bit slots.
pub const PREDICT_SLOTS: u32 = (crate::codebuf::DATA_BYTES / 4) as u32;

/// Offsets of a fragment's body (where the enter stub and chained fragments
/// jump in) and of each link site's stub.
#[derive(Clone, Copy, Debug)]
pub struct Fragment {
    /// The body.
    pub body: usize,
    /// Per link site (taken, not taken), the offset of its stub, which is also
    /// where its link jump ends, if the site has one.
    pub stubs: [Option<usize>; 2],
}

/// The unit to emit.
pub struct UnitPlan<'a> {
    /// Lowering of each instruction.
    pub lowerings: &'a [Lowering],
    /// Whether each instruction's flags are captured (see [`crate::plan::captures`]).
    pub captures: &'a [bool],
    /// The flags live at the unit's start ([`crate::plan::flag_plan`]).
    pub entry_live: u64,
    /// Per instruction, whether it can run again harmlessly
    /// ([`crate::plan::reruns`]).
    pub reruns: &'a [bool],
    /// Per instruction, how its flags are computed again where its capture
    /// is left out ([`crate::plan::remats`]).
    pub remats: &'a [Option<Remat>],
    /// Length in bytes of each instruction.
    pub lens: &'a [u8],
    /// Helper kind passed to the helper, per instruction.
    pub kinds: &'a [u8],
    /// The unit may go on to the next fragment without returning (see the module
    /// comment on chaining).
    pub chain: bool,
    /// The RIP of the unit's first instruction.
    pub rip: u64,
    /// Where IP wraps in this code: 0xFFFF for 16-bit code, 0xFFFF_FFFF for
    /// 32-bit code (the address after the unit is masked with it).
    pub ip_mask: u64,
    /// CS base and limit the fragment is made for.
    pub cs_base: u64,
    /// See `cs_base`.
    pub cs_limit: u32,
    /// The flat segments ([`flat_segments`]) at entry. The set holds up to the
    /// first instruction that may load a segment register (`seg_writes`), after
    /// which every access is checked in full.
    pub flat: u8,
    /// Per instruction, whether it may load a segment register.
    pub seg_writes: &'a [bool],
    /// The translator's number for this fragment's spec (mode key, CS base
    /// and limit, flat segments), for the jump cache.
    pub spec: u32,
    /// Protected mode (CR0.PE), and V86 mode, which the mode key fixes.
    pub protected: bool,
    /// See `protected`.
    pub v86: bool,
    /// The unit ends with an event (its last instruction is sensitive): its
    /// ends report [`EXIT_EVENT`], so the run loop looks before the next unit
    /// even when this one was chained into.
    pub event_end: bool,
    /// 64-bit code: no CS limit (a branch target must be canonical instead)
    /// and RIP values of 64 bits.
    pub long: bool,
    /// The guest R8-R15 the unit keeps in borrowed legacy host registers
    /// ([`UnitRegs`]).
    pub regs: UnitRegs,
    /// Per instruction, whether it clears the interrupt shadow first (it
    /// follows an STI; [`crate::plan::shadow_clears`]).
    pub shadow_clear: &'a [bool],
    /// See [`crate::plan::loop_prefix`].
    pub loop_prefix: Option<usize>,
    /// For a unit that ends with a Jcc, per way (taken, not taken): it chains
    /// to code that replaces the flags before anything can observe them
    /// ([`crate::plan::flags_dead_at`]).
    pub exit_dead: [bool; 2],
    /// The flags the instruction before the unit's last always clears
    /// ([`crate::plan::cleared_flags`]).
    pub closing_clears: u64,
    /// The unit ends with an INT n or IRET the helper runs, after which it
    /// may go on through the jump cache ([`crate::plan::dispatches`],
    /// [`Stubs::next`]).
    pub dispatch: bool,
    /// The mode key the fragment is made for (with `cs_base`, `cs_limit`
    /// and `flat`, what `spec` numbers).
    pub key: u8,
}

/// The start of a self-loop whose closing compare leaves its flags
/// uncaptured although memory accesses at the start need them on their
/// out-of-line paths ([`crate::plan::loop_prefix`]): the way back runs a copy
/// of those instructions whose out-of-line paths run the compare again, then
/// joins the body after them.
struct LoopCopy {
    /// Per instruction of the prefix: its index, lowering, helper kind, unit
    /// offset, and whether it clears the interrupt shadow first.
    insns: Vec<(usize, Lowering, u8, u64, bool)>,
    /// The flat segments at the unit's start.
    flat: u8,
    /// In the body, right after the prefix.
    join: DynamicLabel,
}

struct Emitter<'a, A: CodeSink> {
    ops: &'a mut A,
    ext: &'a Externals<'a>,
    /// After the prologue that loads the unit's mapped registers: where the
    /// unit goes on when it chains to its own start.
    mapped: DynamicLabel,
    /// See [`UnitPlan::regs`].
    regs: UnitRegs,
    /// The unit has an inline SSE instruction that can raise a SIMD
    /// floating-point exception: it runs under the guest's MXCSR.
    float_unit: bool,
    /// Chain code is emitted at the branch's exits.
    chain: bool,
    /// Entry RIP, CS base and CS limit of the fragment.
    rip: u64,
    cs_base: u64,
    cs_limit: u32,
    /// See [`UnitPlan::long`].
    long: bool,
    /// See [`UnitPlan::ip_mask`].
    ip_mask: u64,
    /// Segments known flat here.
    flat: u8,
    /// See [`UnitPlan::spec`].
    spec: u32,
    /// See [`UnitPlan::protected`].
    protected: bool,
    v86: bool,
    /// The exit code of the unit's ends ([`UnitPlan::event_end`]).
    end_code: u64,
    /// Guest flags that host EFLAGS hold right now.
    host_valid: u64,
    /// Flags captured in R9 and not yet merged into R14.
    pending: Option<FlagSpec>,
    /// The flags of the instruction before the unit's closing Jcc, left in
    /// host EFLAGS uncaptured ([`Emitter::defers_capture`]): its code (to run
    /// again where they are needed after host EFLAGS are gone), its flags,
    /// and whether it is a memory access (whose host address R10 still holds,
    /// or zero after the helper ran it, which left them exact in R14).
    deferred: Option<(Vec<u8>, FlagSpec, bool)>,
    /// The flags of an earlier instruction, not captured, that the
    /// out-of-line paths of the memory accesses after it compute again
    /// ([`crate::plan::remats`]): how, its code, its flags.
    remat: Option<Pending>,
    /// Inline instructions retired since R13 was last advanced.
    insn_delta: u64,
    /// Offset of the current instruction from the unit's start.
    unit_off: u64,
    /// `CpuState` is exact and holds what the host registers hold (right after
    /// a helper that went on).
    exact: bool,
    /// Out-of-line paths, emitted after the body.
    slow: Vec<SlowPath>,
    /// Offsets of the link sites' stubs.
    stubs: [Option<usize>; 2],
    /// An SSE instruction of this unit has checked CR0 and CR4 (see
    /// `Emitter::sse`).
    sse_checked: bool,
    /// The copy of the loop's start the way back runs ([`LoopCopy`]).
    loop_copy: Option<LoopCopy>,
    /// See [`UnitPlan::exit_dead`].
    exit_dead: [bool; 2],
    /// See [`UnitPlan::entry_live`].
    entry_live: u64,
}

/// The out-of-line paths of an inline memory access, transfer or RDTSC: the
/// emitter's state at the instruction, so that it can call the TLB fill or the
/// helper and rejoin the inline code in the same state.
struct SlowPath {
    /// Entered when the fast TLB misses (R10 = linear address), for an access.
    miss: Option<DynamicLabel>,
    /// Where the probe leaves the host address in R10, for a write to a page
    /// holding code that misses its code chunks.
    hit: Option<DynamicLabel>,
    /// Entered when the inline checks fail: the helper runs the instruction.
    full: DynamicLabel,
    /// The address computation, to retry after a fill.
    retry: DynamicLabel,
    /// After the instruction, where the helper path rejoins; `None`: the
    /// fragment ends after the helper (a transfer).
    after: Option<DynamicLabel>,
    /// Index of the instruction in the unit, and its helper kind.
    i: usize,
    kind: u8,
    /// Unit offset of the instruction, and inline instructions not yet in R13.
    unit_off: u64,
    insn_delta: u64,
    /// Bit 0: write; bits 1 up: access size.
    size_write: u32,
    /// The instruction reads or writes flags: host EFLAGS must hold them after.
    flags: bool,
    /// After the helper, R10 is zeroed: the instruction's capture was
    /// deferred, and R14 now holds its flags (see `Emitter::deferred`).
    zero_r10: bool,
    /// Flags to compute again into R14 first (`Emitter::remat`).
    remat: Option<Pending>,
    /// The probe used a predicted entry ([`Predict`]): entered when its tag
    /// does not match; the writable address of the access's slot; where the
    /// inline code goes on after the host address is made.
    mispredict: Option<(DynamicLabel, u64, DynamicLabel)>,
}

/// A [`Remat`] with the code and flags of its instruction.
type Pending = (Remat, Vec<u8>, FlagSpec);

/// Stores every guest register into `CpuState`.
fn store_all<A: CodeSink>(ops: &mut A) {
    for (g, &h) in GUEST_TO_HOST.iter().enumerate() {
        dynasm!(ops ; .arch x64 ; mov QWORD [r15 + gpr_off(g)], Rq(h));
    }
}

/// Loads every guest register from `CpuState`.
fn load_all<A: CodeSink>(ops: &mut A) {
    for (g, &h) in GUEST_TO_HOST.iter().enumerate() {
        dynasm!(ops ; .arch x64 ; mov Rq(h), QWORD [r15 + gpr_off(g)]);
    }
}

/// R14 into `CpuState::rflags` (clobbers R10, R11 and host flags).
fn flags_to_mem<A: CodeSink>(ops: &mut A) {
    dynasm!(ops
        ; .arch x64
        ; mov r10d, r14d
        ; shr r10d, 8
        ; and r10d, 0xD5
        ; mov r11d, r14d
        ; and r11d, 1
        ; shl r11d, 11
        ; or r10d, r11d
        ; and QWORD [r15 + RFLAGS], !ARITH
        ; or QWORD [r15 + RFLAGS], r10
    );
}

/// R14 from `CpuState::rflags` (clobbers R10 and host flags).
fn flags_from_mem<A: CodeSink>(ops: &mut A) {
    dynasm!(ops
        ; .arch x64
        ; mov r10, QWORD [r15 + RFLAGS]
        ; mov r14d, r10d
        ; and r14d, 0xD5
        ; shl r14d, 8
        ; shr r10d, 11
        ; and r10d, 1
        ; or r14d, r10d
    );
}

/// Emits the shared stubs (see the module comment) for fragments entered with
/// the context at `ctx`, calling `helper_exec` at `helper` and `helper_fill` at
/// `fill`.
pub fn emit_stubs<A: CodeSink>(
    ops: &mut A,
    ctx: u64,
    helper: u64,
    fill: u64,
    next: u64,
) -> StubOffsets {
    let tlb_base = (ctx + offset_of!(JitCtx, tlb_base) as u64) as i64;
    let limit = (ctx + offset_of!(JitCtx, icount_limit) as u64) as i64;
    let host_mxcsr = (ctx + offset_of!(JitCtx, host_mxcsr) as u64) as i64;
    let (ctx, helper, fill, next) = (ctx as i64, helper as i64, fill as i64, next as i64);
    // enter(cpu = RDI, body = RSI). After the pushes and the SUB the stack is
    // 16-byte aligned, as every CALL from a fragment expects.
    let enter = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        ; push rbx
        ; push rbp
        ; push r12
        ; push r13
        ; push r14
        ; push r15
        ; sub rsp, 8
        ; mov r15, rdi
        ; mov r12, QWORD tlb_base
        ; mov r12, QWORD [r12]
        ; mov r13, QWORD [r15 + ICOUNT]
        ; mov r11, QWORD limit
        ; sub r13, QWORD [r11]
        ; mov r11, QWORD host_mxcsr
        ; stmxcsr [r11]
    );
    dynasm!(ops ; .arch x64 ; mov r11, rsi);
    flags_from_mem(ops);
    load_all(ops);
    dynasm!(ops ; .arch x64 ; jmp r11);
    // leave: R9 = RIP, R12 = exit code.
    let leave = ops.offset().0;
    store_all(ops);
    dynasm!(ops
        ; .arch x64
        ; mov QWORD [r15 + RIP], r9
        ; mov r11, QWORD limit
        ; add r13, QWORD [r11]
        ; mov QWORD [r15 + ICOUNT], r13
    );
    flags_to_mem(ops);
    dynasm!(ops ; .arch x64 ; mov rax, r12);
    // ret: RAX = exit code. Reached from a fragment only right after a
    // helper, which raised no MXCSR flag since the guest's was loaded: the
    // host's is put back without a merge.
    let ret = ops.offset().0;
    let ret_label = ops.new_label();
    dynasm!(ops
        ; .arch x64
        ; =>ret_label
        ; mov r11, QWORD host_mxcsr
        ; ldmxcsr [r11]
        ; add rsp, 8
        ; pop r15
        ; pop r14
        ; pop r13
        ; pop r12
        ; pop rbp
        ; pop rbx
        ; ret
    );
    // helper: R9 = icount, R10 = RIP, R11 = the Insn, R12 = kind. The return
    // address makes the stack 8 mod 16, so one more slot before the call.
    let helper_at = ops.offset().0;
    store_all(ops);
    dynasm!(ops
        ; .arch x64
        ; mov QWORD [r15 + RIP], r10
        ; mov rdx, r11
        ; mov rcx, r12
        ; mov r11, QWORD limit
        ; add r9, QWORD [r11]
        ; mov QWORD [r15 + ICOUNT], r9
    );
    flags_to_mem(ops);
    dynasm!(ops
        ; .arch x64
        ; mov rdi, r15
        ; mov rsi, QWORD ctx
        ; mov rax, QWORD helper
        ; sub rsp, 8
        ; call rax
        ; add rsp, 8
        ; test rax, rax
        ; jnz >out
    );
    load_all(ops);
    dynasm!(ops
        ; .arch x64
        ; mov r13, QWORD [r15 + ICOUNT]
        ; mov r11, QWORD limit
        ; sub r13, QWORD [r11]
        ; mov r12, QWORD tlb_base
        ; mov r12, QWORD [r12]
    );
    flags_from_mem(ops);
    dynasm!(ops
        ; .arch x64
        ; ret
        // The unit ends here: drop the return address and return to the host.
        ; out:
        ; add rsp, 8
        ; jmp =>ret_label
    );
    // fill: R10 = linear address, R11 = size << 1 | write; R11 = result. Seven
    // pushes after the return address keep the stack aligned for the call.
    let fill_at = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        ; push rax
        ; push rcx
        ; push rdx
        ; push rsi
        ; push rdi
        ; push r8
        ; push r9
        ; mov rdi, r15
        ; mov rsi, QWORD ctx
        ; mov rdx, r10
        ; mov rcx, r11
        ; mov rax, QWORD fill
        ; call rax
        ; mov r11, rax
        ; pop r9
        ; pop r8
        ; pop rdi
        ; pop rsi
        ; pop rdx
        ; pop rcx
        ; pop rax
        ; ret
    );
    // next: as in the module comment on chaining, with the state exact in
    // CpuState (the helper stub stored it all), so only the call's clobbers
    // need undoing: the stack is as in a fragment's body, 16-byte aligned.
    let next_at = ops.offset().0;
    dynasm!(ops
        ; .arch x64
        ; mov rdi, r15
        ; mov rsi, QWORD ctx
        ; mov rax, QWORD next
        ; call rax
        ; test rax, rax
        ; jz >back
        ; mov r13, QWORD [r15 + ICOUNT]
        ; mov r11, QWORD limit
        ; sub r13, QWORD [r11]
        ; mov r12, QWORD tlb_base
        ; mov r12, QWORD [r12]
        ; mov r11, rax
    );
    flags_from_mem(ops);
    load_all(ops);
    dynasm!(ops
        ; .arch x64
        ; jmp r11
        ; back:
        ; mov eax, EXIT_EVENT as i32
        ; jmp =>ret_label
    );
    StubOffsets {
        enter,
        leave,
        ret,
        helper: helper_at,
        fill: fill_at,
        next: next_at,
    }
}

/// Emits one fragment.
pub fn emit_unit<A: CodeSink>(ops: &mut A, unit: &UnitPlan<'_>, ext: &Externals<'_>) -> Fragment {
    let body = ops.new_label();
    dynasm!(ops ; .arch x64 ; =>body);
    let body_at = ops.offset().0;
    let mapped = ops.new_label();
    let mut e = Emitter {
        ops,
        ext,
        mapped,
        regs: unit.regs,
        float_unit: unit
            .lowerings
            .iter()
            .any(|l| matches!(l, Lowering::Sse(s) if s.float)),
        chain: unit.chain,
        rip: unit.rip,
        cs_base: unit.cs_base,
        cs_limit: unit.cs_limit,
        long: unit.long,
        ip_mask: unit.ip_mask,
        flat: unit.flat,
        spec: unit.spec,
        protected: unit.protected,
        v86: unit.v86,
        end_code: if unit.event_end { EXIT_EVENT } else { EXIT_END },
        host_valid: 0,
        pending: None,
        deferred: None,
        remat: None,
        insn_delta: 0,
        unit_off: 0,
        exact: false,
        slow: Vec::new(),
        stubs: [None; 2],
        sse_checked: false,
        loop_copy: None,
        exit_dead: unit.exit_dead,
        entry_live: unit.entry_live,
    };
    let n = unit.lowerings.len();
    let rotated = unit
        .loop_prefix
        .filter(|_| n >= 2 && e.defers_capture(unit, n - 2));
    if let Some(k) = rotated {
        let offs = unit.lens.iter().scan(0u64, |o, &l| {
            let at = *o;
            *o += u64::from(l);
            Some(at)
        });
        e.loop_copy = Some(LoopCopy {
            insns: (0..k)
                .zip(offs)
                .map(|(j, off)| {
                    let l = unit.lowerings[j].clone();
                    (j, l, unit.kinds[j], off, unit.shadow_clear[j])
                })
                .collect(),
            flat: unit.flat,
            join: e.ops.new_label(),
        });
    }
    e.prologue();
    dynasm!(e.ops ; .arch x64 ; =>mapped);
    let mut ended = false;
    for (i, l) in unit.lowerings.iter().enumerate() {
        let len = u64::from(unit.lens[i]);
        e.unit_off = unit.lens[..i].iter().map(|&l| u64::from(l)).sum();
        if rotated == Some(i) {
            let join = e.loop_copy.as_ref().map(|c| c.join);
            if let Some(join) = join {
                dynasm!(e.ops ; .arch x64 ; =>join);
            }
        }
        if !matches!(l, Lowering::Helper(_)) {
            e.exact = false;
        }
        if unit.shadow_clear[i] {
            dynasm!(e.ops ; .arch x64 ; mov BYTE [r15 + INT_SHADOW], 0);
        }
        let defer = e.defers_capture(unit, i);
        match l {
            Lowering::Ident(x) => {
                let remat = unit.remats[i].filter(|_| !defer);
                e.ident(x, unit.captures[i] && !defer && remat.is_none());
                e.insn_delta += 1;
                if defer {
                    e.deferred = Some((x.bytes.clone(), x.flags, false));
                }
                if let Some(r) = remat {
                    e.remat = Some((r, x.bytes.clone(), x.flags));
                }
            }
            Lowering::Mem(x) => {
                e.mem(i, x, unit.captures[i] && !defer, unit.kinds[i], defer);
                e.insn_delta += 1;
                if defer {
                    e.deferred = Some((x.op.bytes.clone(), x.op.flags, true));
                }
            }
            Lowering::Helper(_) => {
                e.helper(i, unit.kinds[i]);
                if unit.seg_writes[i] {
                    e.flat = 0;
                }
            }
            Lowering::Branch(b) => {
                e.branch(i, b, len, unit.kinds[i]);
                ended = true;
            }
            Lowering::Xfer(x) => {
                e.xfer(i, x, len, unit.kinds[i]);
                ended = true;
            }
            Lowering::Rdtsc(aux) => {
                e.rdtsc(i, *aux, unit.kinds[i]);
                e.insn_delta += 1;
            }
            Lowering::Flags(op) => {
                e.flags_insn(i, op, unit.kinds[i], len);
                e.insn_delta += 1;
            }
            Lowering::Div(x) => {
                e.div(i, x, unit.kinds[i]);
                e.insn_delta += 1;
            }
            Lowering::Sse(x) => {
                e.sse(i, x, unit.captures[i], unit.kinds[i]);
                e.insn_delta += 1;
            }
        }
    }
    let end_off: u64 = unit.lens.iter().map(|&l| u64::from(l)).sum();
    if !ended && unit.chain {
        e.fall_through(end_off);
    } else if !ended && e.exact && unit.dispatch {
        // An INT n or IRET ran in the helper: on through the jump cache if
        // the next unit may follow at once (`runtime::helper_next`).
        debug_assert_eq!(e.end_code, EXIT_EVENT);
        let next = e.ext.stubs.next;
        let key_flat = i32::from(unit.key) | i32::from(unit.flat) << 8;
        dynasm!(e.ops
            ; .arch x64
            ; mov edx, unit.spec as i32
            ; mov ecx, key_flat
            ; mov r8, QWORD unit.cs_base as i64
            ; mov r9d, unit.cs_limit as i32
            ; jmp extern next as usize
        );
    } else if !ended && e.exact {
        // The last instruction ran in the helper, which left the state (and
        // RIP, perhaps a branch target) in CpuState.
        let (ret, code) = (e.ext.stubs.ret, e.end_code as i32);
        dynasm!(e.ops ; .arch x64 ; mov eax, code ; jmp extern ret as usize);
    } else if !ended {
        e.settle_flags();
        let n = e.insn_delta;
        e.advance(n);
        let code = e.end_code;
        e.leave(e.rip.wrapping_add(end_off) & e.ip_mask, code);
    }
    for p in std::mem::take(&mut e.slow) {
        e.slow_path(&p);
    }
    Fragment {
        body: body_at,
        stubs: e.stubs,
    }
}

/// The host register number and width of an 8-, 16- or 32-bit register.
/// AH..BH are not expected here (a product's low half is AL, AX, EAX or the
/// destination of IMUL, which has no byte form).
fn gpr_of(r: iced_x86::Register) -> (u8, u32) {
    let full = r.full_register() as u32 - iced_x86::Register::RAX as u32;
    (full as u8, r.size() as u32 * 8)
}

fn gpr_off(g: usize) -> i32 {
    GPR + 8 * g as i32
}

impl<A: CodeSink> Emitter<'_, A> {
    /// The absolute address of a `JitCtx` field.
    fn ctx_field(&self, off: usize) -> i64 {
        (self.ext.ctx + off as u64) as i64
    }

    /// Merges the flags captured in R9 into R14 (clobbers host flags).
    fn settle_flags(&mut self) {
        let Some(s) = self.pending.take() else {
            return;
        };
        let defined = lahf_layout(s.defined) as i32;
        dynasm!(self.ops ; .arch x64 ; and r9d, defined);
        if s.of_from_sf_cf {
            self.or_of_from_sf_cf();
        }
        if s.written == flags::ARITH {
            // Every flag replaced: no dependence on the old R14.
            dynasm!(self.ops ; .arch x64 ; mov r14d, r9d);
        } else {
            let keep = !(lahf_layout(s.written) as i32);
            dynasm!(self.ops
                ; .arch x64
                ; and r14d, keep
                ; or r14d, r9d
            );
        }
        self.host_valid = 0;
    }

    /// ORs SF ^ CF into OF (bit 0) of the capture in R9, whose OF is clear
    /// (clobbers R10 and host flags).
    fn or_of_from_sf_cf(&mut self) {
        // OF (bit 0) = SF (bit 15) ^ CF (bit 8).
        dynasm!(self.ops
            ; .arch x64
            ; mov r10d, r9d
            ; shr r10d, 7
            ; xor r10d, r9d
            ; shr r10d, 8
            ; and r10d, 1
            ; or r9d, r10d
        );
    }

    /// Loads the guest's arithmetic flags (R14) into host EFLAGS: OF by an
    /// addition that overflows exactly when bit 0 is set, the rest by SAHF.
    fn load_flags(&mut self) {
        dynasm!(self.ops
            ; .arch x64
            ; mov r11, rax
            ; mov eax, r14d
            ; add al, 0x7F
            ; sahf
            ; mov rax, r11
        );
        self.host_valid = flags::ARITH;
    }

    /// Host flags into R9, in LAHF layout (keeps host flags and guest RAX).
    fn capture_flags(&mut self) {
        dynasm!(self.ops
            ; .arch x64
            ; mov r9, rax
            ; lahf
            ; seto al
            ; xchg rax, r9
        );
    }

    /// Host flags into R14, in LAHF layout, whole (keeps host flags and guest
    /// RAX). Bits 1..=7 are left clear and bits 16..=63 hold guest RAX's:
    /// every reader of R14 masks them off.
    fn capture_into_r14(&mut self) {
        dynasm!(self.ops
            ; .arch x64
            ; mov r14, rax
            ; lahf
            ; seto al
            ; xchg rax, r14
        );
    }

    /// Adds `n` retired instructions to R13 (keeps host flags).
    fn advance(&mut self, n: u64) {
        if n != 0 {
            let n = n as i32;
            dynasm!(self.ops ; .arch x64 ; lea r13, [r13 + n]);
        }
        self.insn_delta = 0;
    }

    /// Loads the unit's mapped registers ([`UnitRegs`]): each borrowed legacy
    /// register to `CpuState`, the guest R8-R15 it holds from there; and the
    /// guest's MXCSR in a unit with floating-point SSE (moves only: host flags
    /// kept).
    fn prologue(&mut self) {
        if self.float_unit {
            dynasm!(self.ops ; .arch x64 ; ldmxcsr [r15 + MXCSR]);
        }
        for (g, h) in self.regs.entries() {
            let (at_g, at_h) = (gpr_off(usize::from(g)), gpr_off(usize::from(h)));
            dynasm!(self.ops
                ; .arch x64
                ; mov QWORD [r15 + at_h], Rq(h)
                ; mov Rq(h), QWORD [r15 + at_g]
            );
        }
    }

    /// Undoes [`Emitter::prologue`]: each mapped register back to `CpuState`
    /// and the borrowed legacy register reloaded, so that code outside the
    /// fragment's inline path sees the usual register state (clobbers R11).
    fn epilogue(&mut self) {
        if self.float_unit {
            let host = self.ctx_field(offset_of!(JitCtx, host_mxcsr));
            dynasm!(self.ops
                ; .arch x64
                ; stmxcsr [r15 + MXCSR]
                ; mov r11, QWORD host
                ; ldmxcsr [r11]
            );
        }
        for (g, h) in self.regs.entries() {
            let (at_g, at_h) = (gpr_off(usize::from(g)), gpr_off(usize::from(h)));
            dynasm!(self.ops
                ; .arch x64
                ; mov QWORD [r15 + at_g], Rq(h)
                ; mov Rq(h), QWORD [r15 + at_h]
            );
        }
    }

    /// Leaves the fragment with exit code `code` and RIP = `rip`, R13 advanced
    /// and the flags settled.
    fn leave(&mut self, rip: u64, code: u64) {
        self.epilogue();
        self.leave_unmapped(rip, code);
    }

    /// [`Emitter::leave`] where the epilogue has run.
    fn leave_unmapped(&mut self, rip: u64, code: u64) {
        let c = code as i32;
        let leave = self.ext.stubs.leave;
        match u32::try_from(rip) {
            Ok(v) => dynasm!(self.ops ; .arch x64 ; mov r9d, v as i32),
            Err(_) => dynasm!(self.ops ; .arch x64 ; mov r9, QWORD rip as i64),
        }
        dynasm!(self.ops
            ; .arch x64
            ; mov r12d, c
            ; jmp extern leave as usize
        );
    }

    /// Whether a transfer to `target` passes the checks of its mode: inside
    /// the CS limit, or canonical in 64-bit code (else #GP).
    fn target_ok(&self, target: u64) -> bool {
        if self.long {
            (target as i64) << 16 >> 16 == target as i64
        } else {
            target <= u64::from(self.cs_limit)
        }
    }

    /// Calls the helper stub for instruction `i` at unit offset `unit_off`,
    /// with `delta` inline instructions not yet in R13 (flags settled). On
    /// return R13 counts the instruction and every register is reloaded.
    fn call_helper(&mut self, i: usize, kind: u8, unit_off: u64, delta: u64) {
        let insn = self.ext.insns[i] as i64;
        let helper = self.ext.stubs.helper;
        let at = self.rip.wrapping_add(unit_off);
        let (n, kind) = (delta as i32, i32::from(kind));
        dynasm!(self.ops ; .arch x64 ; lea r9, [r13 + n]);
        match u32::try_from(at) {
            Ok(v) => dynasm!(self.ops ; .arch x64 ; mov r10d, v as i32),
            Err(_) => dynasm!(self.ops ; .arch x64 ; mov r10, QWORD at as i64),
        }
        self.epilogue();
        dynasm!(self.ops
            ; .arch x64
            ; mov r11, QWORD insn
            ; mov r12d, kind
            ; call extern helper as usize
        );
        self.prologue();
        self.host_valid = 0;
    }

    fn helper(&mut self, i: usize, kind: u8) {
        self.settle_flags();
        let (off, n) = (self.unit_off, self.insn_delta);
        self.call_helper(i, kind, off, n);
        self.insn_delta = 0;
        self.exact = true;
    }

    fn ident(&mut self, x: &Ident, capture: bool) {
        let f = x.flags;
        if f.written != 0 {
            // The flags a recomputation gives are overwritten here.
            self.remat = None;
        }
        if f.only_if_dead || f.count_fixed() {
            self.settle_flags();
        } else if f.written != 0 {
            self.drop_or_settle(f.written);
        }
        if f.read & !self.host_valid != 0 {
            self.settle_flags();
            self.load_flags();
        }
        self.ops.extend(x.bytes.iter().copied());
        match f.count_fix {
            Some(fix) if capture && f.count_fixed() => self.count_fixup(f, fix),
            _ => self.after_flags(f, capture),
        }
    }

    /// After a shift or rotate by CL made exact ([`CountFix`]): its flags
    /// captured in R9 and, where the masked count is not zero, the undefined
    /// ones given the interpreter's values there (clobbers R10, R11 and host
    /// flags).
    fn count_fixup(&mut self, f: FlagSpec, fix: CountFix) {
        self.capture_flags();
        let mask = if fix.bits == 64 { 0x3F } else { 0x1F };
        let af = lahf_layout(flags::AF) as i32;
        let r = fix.reg;
        let top = i8::try_from(fix.bits - 1).unwrap_or(63);
        if fix.by_cl {
            dynasm!(self.ops
                ; .arch x64
                ; test cl, mask
                ; jz >done
            );
        }
        match fix.op {
            CountOp::Shl => {
                dynasm!(self.ops ; .arch x64 ; and r9d, !(af | 1));
                self.or_of_from_sf_cf();
            }
            CountOp::Shr => dynasm!(self.ops
                ; .arch x64
                ; and r9d, !af
                // OF is the host's (the old MSB) for a count of one, else clear.
                ; mov r10d, ecx
                ; and r10d, i32::from(mask)
                ; cmp r10d, 1
                ; je >done
                ; and r9d, -2
            ),
            CountOp::Sar => dynasm!(self.ops ; .arch x64 ; and r9d, !(af | 1)),
            CountOp::Rol => dynasm!(self.ops
                ; .arch x64
                // OF = MSB ^ CF (bit 8).
                ; mov r10, Rq(r)
                ; shr r10, top
                ; mov r11d, r9d
                ; shr r11d, 8
                ; xor r10d, r11d
                ; and r10d, 1
                ; and r9d, -2
                ; or r9d, r10d
            ),
            CountOp::Ror => dynasm!(self.ops
                ; .arch x64
                // OF = MSB ^ the bit below it.
                ; mov r10, Rq(r)
                ; shr r10, top - 1
                ; mov r11d, r10d
                ; shr r11d, 1
                ; xor r10d, r11d
                ; and r10d, 1
                ; and r9d, -2
                ; or r9d, r10d
            ),
        }
        dynasm!(self.ops ; .arch x64 ; done:);
        // R9 holds every written flag as the interpreter has it.
        self.pending = Some(FlagSpec {
            read: 0,
            defined: f.written,
            count_fix: None,
            ..f
        });
        self.host_valid = 0;
    }

    /// Before an instruction that writes flags `written` (its capture would
    /// overwrite R9): a pending capture it overwrites entirely is dropped
    /// (nothing can observe it any more), any other is merged.
    fn drop_or_settle(&mut self, written: u64) {
        match self.pending {
            Some(p) if p.written & !written == 0 => self.pending = None,
            Some(_) => self.settle_flags(),
            None => {}
        }
    }

    /// Flag bookkeeping after an inline instruction that ran with flags `f`.
    fn after_flags(&mut self, f: FlagSpec, capture: bool) {
        if f.written == 0 {
            return;
        }
        self.host_valid = (self.host_valid & !f.written) | f.defined;
        if !capture {
            return;
        }
        if f.whole() {
            // No capture is pending (the instruction overwrote it), and this
            // one replaces every flag: straight into R14.
            debug_assert!(self.pending.is_none());
            self.capture_into_r14();
            return;
        }
        self.capture_flags();
        let mut spec = f;
        if let Some(lo) = f.szp_from {
            // CF and OF from the multiply, SF, ZF and PF from TEST of the low half.
            let cf_of = lahf_layout(flags::CF | flags::OF) as i32;
            let szp = lahf_layout(flags::SF | flags::ZF | flags::PF) as i32;
            let (r, bits) = gpr_of(lo);
            match bits {
                8 => dynasm!(self.ops ; .arch x64 ; test Rb(r), Rb(r)),
                16 => dynasm!(self.ops ; .arch x64 ; test Rw(r), Rw(r)),
                32 => dynasm!(self.ops ; .arch x64 ; test Rd(r), Rd(r)),
                _ => dynasm!(self.ops ; .arch x64 ; test Rq(r), Rq(r)),
            }
            dynasm!(self.ops
                ; .arch x64
                ; mov r11, rax
                ; lahf
                ; xchg rax, r11
                ; and r9d, cf_of
                ; and r11d, szp
                ; or r9d, r11d
            );
            spec.defined = f.written;
            spec.szp_from = None;
            // Host EFLAGS hold TEST's flags now; trust none of them.
            self.host_valid = 0;
        }
        self.pending = Some(spec);
    }

    /// An inline memory instruction: offset, segment limit and type, fast-TLB
    /// probe, then the instruction on the host address in R10. Any check that
    /// fails goes out of line ([`SlowPath`]).
    fn mem(&mut self, i: usize, x: &MemOp, capture: bool, kind: u8, defer: bool) {
        let f = x.op.flags;
        self.settle_flags();
        self.host_valid = 0;
        let mut p = self.slow_path_here(i, kind, true, f.read | f.written != 0);
        p.zero_r10 = defer;
        if x.df_clear {
            let df = flags::DF as i32;
            dynasm!(self.ops
                ; .arch x64
                ; test DWORD [r15 + RFLAGS], df
                ; jnz =>p.full
            );
        }
        self.probe(x, &mut p);
        if x.div_check {
            // The divisor (in R11) must be non-zero and above the dividend's
            // high half (DX, EDX or RDX), or the helper runs the DIV.
            let full = p.full;
            match x.size {
                2 => dynasm!(self.ops
                    ; .arch x64
                    ; movzx r11d, WORD [r10]
                    ; test r11d, r11d
                    ; jz =>full
                    ; cmp dx, r11w
                    ; jae =>full
                ),
                4 => dynasm!(self.ops
                    ; .arch x64
                    ; mov r11d, DWORD [r10]
                    ; test r11d, r11d
                    ; jz =>full
                    ; cmp edx, r11d
                    ; jae =>full
                ),
                _ => dynasm!(self.ops
                    ; .arch x64
                    ; mov r11, QWORD [r10]
                    ; test r11, r11
                    ; jz =>full
                    ; cmp rdx, r11
                    ; jae =>full
                ),
            }
        }
        if f.read != 0 {
            self.load_flags();
        }
        let delta = i32::from(x.esp_delta);
        if delta > 0 {
            self.move_esp(delta);
        }
        self.ops.extend(x.op.bytes.iter().copied());
        if delta < 0 {
            self.move_esp(delta);
        }
        self.after_flags(f, capture);
        self.rejoin_here(p);
        if f.written != 0 {
            self.remat = None;
        }
    }

    /// ESP (RSP in 64-bit code) += `delta`, host flags kept.
    fn move_esp(&mut self, delta: i32) {
        if self.long {
            dynasm!(self.ops ; .arch x64 ; lea r8, [r8 + delta]);
        } else {
            dynasm!(self.ops ; .arch x64 ; lea r8d, [r8 + delta]);
        }
    }

    /// RDTSC: EDX:EAX = icount before it + `CpuState::tsc_offset`, as the
    /// interpreter computes it, unless CR4.TSD is set (then the helper runs it,
    /// which checks the privilege).
    fn rdtsc(&mut self, i: usize, aux: bool, kind: u8) {
        self.settle_flags();
        self.host_valid = 0;
        let p = self.slow_path_here(i, kind, true, false);
        let tsd = x86bt_cpu::mmu::cr4::TSD as i32;
        let n = self.insn_delta as i32;
        let limit = self.ctx_field(offset_of!(JitCtx, icount_limit));
        dynasm!(self.ops
            ; .arch x64
            ; test DWORD [r15 + CR4], tsd
            ; jnz =>p.full
            ; lea rax, [r13 + n]
            ; add rax, QWORD [r15 + TSC_OFFSET]
            ; mov r11, QWORD limit
            ; add rax, QWORD [r11]
            ; mov rdx, rax
            ; shr rdx, 32
            ; mov eax, eax
        );
        if aux {
            // RDTSCP: ECX = IA32_TSC_AUX (its low 32 bits, zero-extended).
            dynasm!(self.ops ; .arch x64 ; mov ecx, DWORD [r15 + TSC_AUX]);
        }
        self.host_valid = 0;
        self.rejoin_here(p);
    }

    /// CLI, STI, PUSHF or POPF ([`FlagsOp`]): the interpreter's semantics for
    /// the cases the run-time checks admit, the helper for the rest (which
    /// raises what the instruction raises).
    fn flags_insn(&mut self, i: usize, op: &FlagsOp, kind: u8, len: u64) {
        use flags::{AC, ID, IF, RF, TF, VM};
        self.settle_flags();
        self.host_valid = 0;
        let mut p = self.slow_path_here(i, kind, true, false);
        let full = p.full;
        let intr = self.ctx_field(offset_of!(JitCtx, intr));
        let (exit, cont) = (self.ops.new_label(), self.ops.new_label());
        let mut attention = false;
        let ss_attrs = seg_field(sreg::SS as u8, offset_of!(Segment, attrs));
        if self.v86 {
            // IOPL-sensitive, VME: always the helper.
            dynasm!(self.ops ; .arch x64 ; jmp =>full);
        } else {
            match op {
                FlagsOp::Cli | FlagsOp::Sti => {
                    if self.protected {
                        // CPL (SS.DPL) <= IOPL, or #GP from the helper.
                        dynasm!(self.ops
                            ; .arch x64
                            ; movzx r10d, WORD [r15 + ss_attrs]
                            ; shr r10d, 5
                            ; and r10d, 3
                            ; mov r11, QWORD [r15 + RFLAGS]
                            ; shr r11d, 12
                            ; and r11d, 3
                            ; cmp r10d, r11d
                            ; ja =>full
                        );
                    }
                    let if_ = IF as i32;
                    if *op == FlagsOp::Cli {
                        dynasm!(self.ops ; .arch x64 ; and QWORD [r15 + RFLAGS], !if_);
                    } else {
                        // IF rising while INTR is up ends the unit after
                        // STI (the interpreter's `sti` asks for the run loop).
                        dynasm!(self.ops
                            ; .arch x64
                            ; test DWORD [r15 + RFLAGS], if_
                            ; jnz =>cont
                            ; mov BYTE [r15 + INT_SHADOW], 1
                            ; or QWORD [r15 + RFLAGS], if_
                            ; mov r11, QWORD intr
                            ; cmp BYTE [r11], 0
                            ; jne =>exit
                            ; =>cont
                            ; or QWORD [r15 + RFLAGS], if_
                        );
                        attention = true;
                    }
                }
                FlagsOp::Pushf(m) => {
                    // The image: RFLAGS without VM and RF, arithmetic flags from
                    // R14, in R9 (after the probe, which uses R9; R10 holds the
                    // host address).
                    let keep = !((flags::ARITH | VM | RF) as i32);
                    self.probe(m, &mut p);
                    dynasm!(self.ops
                        ; .arch x64
                        ; mov r9, QWORD [r15 + RFLAGS]
                        ; and r9d, keep
                        ; mov r11d, r14d
                        ; shr r11d, 8
                        ; and r11d, 0xD5
                        ; or r9d, r11d
                        ; mov r11d, r14d
                        ; and r11d, 1
                        ; shl r11d, 11
                        ; or r9d, r11d
                    );
                    if m.size == 2 {
                        dynasm!(self.ops ; .arch x64 ; mov WORD [r10], r9w ; lea r8d, [r8 - 2]);
                    } else {
                        dynasm!(self.ops ; .arch x64 ; mov DWORD [r10], r9d ; lea r8d, [r8 - 4]);
                    }
                }
                FlagsOp::Popf(m) => {
                    if self.protected {
                        // CPL 0, where IF and IOPL are writable too.
                        dynasm!(self.ops
                            ; .arch x64
                            ; test BYTE [r15 + ss_attrs], 0x60
                            ; jnz =>full
                        );
                    }
                    self.probe(m, &mut p);
                    let mut writable = 0x7FD5u64;
                    if m.size == 4 {
                        writable |= AC | ID;
                        dynasm!(self.ops ; .arch x64 ; mov r9d, DWORD [r10]);
                    } else {
                        dynasm!(self.ops ; .arch x64 ; movzx r9d, WORD [r10]);
                    }
                    let (w, keep) = (writable as i32, !((writable | RF) as i32));
                    // The old image in R10, and the flags it raised in R9.
                    dynasm!(self.ops
                        ; .arch x64
                        ; and r9d, w
                        ; mov r10, QWORD [r15 + RFLAGS]
                        ; mov r11, r10
                        ; and r11, keep
                        ; or r11, r9
                        ; or r11, 2
                        ; mov QWORD [r15 + RFLAGS], r11
                        ; not r10
                        ; and r10, r11
                        ; mov r9, r10
                    );
                    flags_from_mem(self.ops);
                    let d = i32::from(m.size);
                    let (if_, tf) = (IF as i32, TF as i32);
                    // TF set, or IF rising while INTR is up, ends the unit
                    // after POPF, as the interpreter's `popf` does.
                    dynasm!(self.ops
                        ; .arch x64
                        ; lea r8d, [r8 + d]
                        ; test DWORD [r15 + RFLAGS], tf
                        ; jnz =>exit
                        ; test r9d, if_
                        ; jz =>cont
                        ; mov r11, QWORD intr
                        ; cmp BYTE [r11], 0
                        ; jne =>exit
                        ; =>cont
                    );
                    attention = true;
                }
            }
        }
        if attention {
            // The way out after the instruction: counted, RIP past it, an
            // event for the run loop.
            let skip = self.ops.new_label();
            let n = (self.insn_delta + 1) as i32;
            let next = self.rip.wrapping_add(self.unit_off).wrapping_add(len) & self.ip_mask;
            dynasm!(self.ops ; .arch x64 ; jmp =>skip ; =>exit ; lea r13, [r13 + n]);
            self.leave(next, EXIT_EVENT);
            dynasm!(self.ops ; .arch x64 ; =>skip);
        }
        self.host_valid = 0;
        self.rejoin_here(p);
    }

    /// DIV r32/r16: the checks that make the host's DIV unable to fault (a
    /// non-zero divisor above the dividend's high half, so the quotient fits),
    /// then DIV itself; the helper runs the rest (and raises #DE).
    fn div(&mut self, i: usize, x: &Ident, kind: u8) {
        self.settle_flags();
        self.host_valid = 0;
        let p = self.slow_path_here(i, kind, true, false);
        let full = p.full;
        // The divisor register, from the host encoding's ModRM (mod = 11).
        let rex_b = x.bytes.iter().any(|&b| b & 0xF1 == 0x41);
        let modrm = x.bytes[x.bytes.len() - 1];
        let h = (modrm & 7) | if rex_b { 8 } else { 0 };
        if x.bytes.first() == Some(&0x66) {
            dynasm!(self.ops
                ; .arch x64
                ; test Rw(h), Rw(h)
                ; jz =>full
                ; cmp dx, Rw(h)
                ; jae =>full
            );
        } else {
            dynasm!(self.ops
                ; .arch x64
                ; test Rd(h), Rd(h)
                ; jz =>full
                ; cmp edx, Rd(h)
                ; jae =>full
            );
        }
        self.ops.extend(x.bytes.iter().copied());
        self.host_valid = 0;
        self.rejoin_here(p);
    }

    /// An SSE instruction ([`SseOp`]): the checks under which the interpreter
    /// would not fault (CR0.EM, CR0.TS, CR4.OSFXSR; MXCSR's masks for one that
    /// can raise a SIMD exception; the probe and the alignment of a memory
    /// operand), then the host code; the helper runs it otherwise.
    fn sse(&mut self, i: usize, s: &SseOp, capture: bool, kind: u8) {
        let x = &s.x;
        let f = x.op.flags;
        self.settle_flags();
        self.host_valid = 0;
        let mut p = self.slow_path_here(i, kind, true, f.written != 0);
        let full = p.full;
        if !self.sse_checked {
            // Once per unit: nothing that changes CR0.EM, CR0.TS or
            // CR4.OSFXSR can run inside one (those writes are sensitive and
            // end their unit), and where this check fails the helper faults,
            // so every later SSE instruction of the unit is reached only with
            // the check passed.
            let em_ts = (cr0::EM | cr0::TS) as i8;
            let osfxsr = (x86bt_cpu::mmu::cr4::OSFXSR >> 8) as i8;
            dynasm!(self.ops
                ; .arch x64
                ; test BYTE [r15 + CR0], em_ts
                ; jnz =>full
                ; test BYTE [r15 + CR4 + 1], osfxsr
                ; jz =>full
            );
            self.sse_checked = true;
        }
        if s.float {
            dynasm!(self.ops
                ; .arch x64
                ; mov r11d, DWORD [r15 + MXCSR]
                ; not r11d
                ; test r11d, MXCSR_MASKS
                ; jnz =>full
            );
        }
        if s.has_mem() {
            self.probe(x, &mut p);
            if s.align16 {
                dynasm!(self.ops ; .arch x64 ; test r10b, 15 ; jnz =>full);
            }
        }
        self.ops.extend(x.op.bytes.iter().copied());
        self.after_flags(f, capture);
        self.rejoin_here(p);
    }

    /// Places `p`'s rejoin point here and queues its out-of-line code.
    fn rejoin_here(&mut self, p: SlowPath) {
        if let Some(after) = p.after {
            dynasm!(self.ops ; .arch x64 ; =>after);
        }
        self.slow.push(p);
    }

    /// The out-of-line path of instruction `i` in the emitter's state now:
    /// after the helper, back to the inline code (`rejoin`) or out of the
    /// fragment.
    fn slow_path_here(&mut self, i: usize, kind: u8, rejoin: bool, flags: bool) -> SlowPath {
        SlowPath {
            miss: None,
            hit: None,
            full: self.ops.new_label(),
            retry: self.ops.new_label(),
            after: rejoin.then(|| self.ops.new_label()),
            i,
            kind,
            unit_off: self.unit_off,
            insn_delta: self.insn_delta,
            size_write: 0,
            flags,
            zero_r10: false,
            remat: self.remat.clone(),
            mispredict: None,
        }
    }

    /// The address, checks and fast-TLB probe of access `x`, leaving the host
    /// address in R10; failures go to `p`'s paths.
    fn probe(&mut self, x: &MemOp, p: &mut SlowPath) {
        let miss = self.ops.new_label();
        p.miss = Some(miss);
        p.size_write = (u32::from(x.size) << 1) | u32::from(x.write);
        let (retry, full) = (p.retry, p.full);
        let last = i32::from(x.size) - 1;
        let limit = seg_field(x.seg, offset_of!(Segment, limit));
        let attrs = seg_field(x.seg, offset_of!(Segment, attrs));
        let base = seg_field(x.seg, offset_of!(Segment, base));
        let tag = if x.write { FAST_WRITE } else { FAST_READ };
        // PUSH and POP need a 32-bit stack (SS.B).
        let db = if x.esp_delta != 0 || x.stack32 {
            i32::from(seg_attr::DB)
        } else {
            0
        };
        let (seg_mask, seg_want) = (SEG_MASK | db, SEG_WANT | db);
        dynasm!(self.ops ; .arch x64 ; =>retry);
        self.ops.extend(x.addr.iter().copied());
        if self.long {
            // 64-bit code: no limits, and a base only for FS and GS (SDM vol.
            // 3A §3.2.4). The linear address must be canonical, or the helper
            // raises #GP or #SS: a non-canonical page is never a fast-TLB tag
            // (`mmu::fast_fill` makes no entry for one), so such an access, or
            // one that runs past the canonical range, misses below, and the
            // fill refuses it.
            if usize::from(x.seg) >= sreg::FS {
                dynasm!(self.ops ; .arch x64 ; add r10, QWORD [r15 + base]);
            }
        } else if self.flat & (1 << x.seg) == 0 {
            // off + size - 1 <= limit, as off <= limit - (size - 1) in signed 64
            // bits (a limit below size - 1 admits no offset).
            dynasm!(self.ops
                ; .arch x64
                ; mov r11d, DWORD [r15 + limit]
                ; sub r11, last
                ; cmp r10, r11
                ; jg =>full
                ; movzx r11d, WORD [r15 + attrs]
                ; and r11d, seg_mask
                ; cmp r11d, seg_want
                ; jne =>full
                ; add r10, QWORD [r15 + base]
                ; mov r10d, r10d
            );
        }
        // A flat segment: the linear address is the offset, which LEA left
        // zero-extended in R10 (a page-crossing or wrapping access misses below).
        // R12 holds the fast-TLB array; R9 (no capture pending) the entry offset.
        if let Some(pr) = self.ext.predict {
            // The entry this access used last ([`Predict`]): its offset is
            // loaded apart from the address, so the host address is one ADD
            // after the linear one, not a load after it.
            let slot = pr.next.get() % PREDICT_SLOTS;
            pr.next.set(slot.wrapping_add(1) % PREDICT_SLOTS);
            let (wrong, on) = (self.ops.new_label(), self.ops.new_label());
            p.mispredict = Some((wrong, pr.rw + u64::from(slot) * 4, on));
            self.load_r9d_rip(pr.rx + u64::from(slot) * 4, pr.code_base);
            dynasm!(self.ops
                ; .arch x64
                ; lea r11, [r10 + last]
                ; and r11, -4096
                ; cmp r11, QWORD [r12 + r9 + tag]
                ; jne =>wrong
            );
            if last > 0 {
                // The tag is the page of the last byte, and the predicted
                // entry need not be the first byte's: an access that starts
                // on the page before would hit it. (The entry computed from
                // the address cannot: the last byte's page is never found
                // at the first byte's index.) An access that wraps from the
                // top of the address space to page 0 passes this check, and
                // finds no entry: `mmu::fast_fill` gives page 0 none in
                // IA-32e mode.
                dynasm!(self.ops ; .arch x64 ; cmp r10, r11 ; jb =>wrong);
            }
            dynasm!(self.ops
                ; .arch x64
                ; add r10, QWORD [r12 + r9 + FAST_ADDEND]
                ; =>on
            );
        } else {
            dynasm!(self.ops
                ; .arch x64
                ; mov r9d, r10d
                ; shr r9d, FAST_SHIFT
                ; and r9d, FAST_MASK
                ; lea r11, [r10 + last]
                ; and r11, -4096
                ; cmp r11, QWORD [r12 + r9 + tag]
                ; jne =>miss
                ; add r10, QWORD [r12 + r9 + FAST_ADDEND]
            );
        }
        if x.write {
            let hit = self.ops.new_label();
            dynasm!(self.ops ; .arch x64 ; =>hit);
            p.hit = Some(hit);
        }
    }

    /// `mov r9d, [rip + disp]` loading the 32-bit value at executable address
    /// `at` (the code buffer's data area, within 2 GiB of its code).
    fn load_r9d_rip(&mut self, at: u64, code_base: u64) {
        const LEN: u64 = 7;
        let next = code_base + self.ops.offset().0 as u64 + LEN;
        let disp = at.wrapping_sub(next) as i64;
        let disp = i32::try_from(disp).expect("the data area is within 2 GiB of the code");
        // REX.R, MOV r32, r/m32, ModRM mod 00 reg 001 (R9 with REX.R) rm 101
        // (RIP-relative).
        self.ops.extend([0x44, 0x8B, 0x0D]);
        self.ops.extend(disp.to_le_bytes());
    }

    /// The out-of-line paths of an inline memory access, transfer or RDTSC.
    fn slow_path(&mut self, p: &SlowPath) {
        let fill = self.ext.stubs.fill;
        let size_write = p.size_write as i32;
        if let (Some((wrong, slot, on)), Some(miss)) = (p.mispredict, p.miss) {
            // The predicted entry was not the page's (R10 = linear address,
            // R11 = its last byte's page): the page's own entry, and if that
            // hits, it becomes the prediction.
            let tag = if p.size_write & 1 != 0 {
                FAST_WRITE
            } else {
                FAST_READ
            };
            dynasm!(self.ops
                ; .arch x64
                ; =>wrong
                ; mov r9d, r10d
                ; shr r9d, FAST_SHIFT
                ; and r9d, FAST_MASK
                ; cmp r11, QWORD [r12 + r9 + tag]
                ; jne =>miss
                ; mov r11, QWORD slot as i64
                ; mov DWORD [r11], r9d
                ; add r10, QWORD [r12 + r9 + FAST_ADDEND]
                ; jmp =>on
            );
        }
        if let Some(miss) = p.miss {
            dynasm!(self.ops ; .arch x64 ; =>miss);
            let size = p.size_write >> 1;
            if let Some(hit) = p.hit.filter(|_| size <= 8) {
                // A write to a page holding cached code (R11 = the page of its
                // last byte, R9 = the entry): inline after all if none of its
                // bytes is a code byte. The 16 bits of the page's code-byte map
                // from byte `off / 8` on cover bits `off % 8` up to
                // `off % 8 + size - 1 <= 14` (no access crosses the page here).
                let (fill, busy) = (self.ops.new_label(), self.ops.new_label());
                dynasm!(self.ops
                    ; .arch x64
                    ; or r11, FAST_CODE_TAG as i32
                    ; cmp r11, QWORD [r12 + r9 + FAST_WRITE]
                    ; jne =>fill
                    ; mov r11, QWORD [r12 + r9 + FAST_CODE]
                    ; push r10
                    ; and r10d, 0xFFF
                    ; mov r9d, r10d
                    ; shr r9d, 3
                    ; movzx r11d, WORD [r11 + r9]
                    ; and r10d, 7
                );
                for k in 0..size {
                    if k > 0 {
                        dynasm!(self.ops ; .arch x64 ; inc r10d);
                    }
                    dynasm!(self.ops ; .arch x64 ; bt r11d, r10d ; jc =>busy);
                }
                dynasm!(self.ops
                    ; .arch x64
                    ; pop r10
                    ; mov r9d, r10d
                    ; shr r9d, FAST_SHIFT
                    ; and r9d, FAST_MASK
                    ; add r10, QWORD [r12 + r9 + FAST_ADDEND]
                    ; jmp =>hit
                    ; =>busy
                    ; pop r10
                    ; =>fill
                );
            }
            // A fast-TLB miss: fill, and retry on success (the stub keeps every
            // guest register; R13 and R14 are callee-saved, and no capture is
            // pending: flags are settled before the probe, or computed again
            // here, after the code-byte check above, which needs R9 and R11).
            self.remat_flags(&p.remat);
            dynasm!(self.ops
                ; .arch x64
                ; mov r11d, size_write
                ; call extern fill as usize
                ; test r11d, r11d
                ; jnz =>p.retry
            );
        }
        // The helper runs the instruction on an exact state. Then either the
        // fragment ends, or the inline code goes on from the state the helper
        // left, with R13 put back as the inline code counts.
        dynasm!(self.ops ; .arch x64 ; =>p.full);
        self.remat_flags(&p.remat);
        self.call_helper(p.i, p.kind, p.unit_off, p.insn_delta);
        let Some(after) = p.after else {
            let (ret, code) = (self.ext.stubs.ret, self.end_code as i32);
            dynasm!(self.ops ; .arch x64 ; mov eax, code ; jmp extern ret as usize);
            return;
        };
        let back = -((p.insn_delta + 1) as i32);
        dynasm!(self.ops ; .arch x64 ; lea r13, [r13 + back]);
        if p.zero_r10 {
            dynasm!(self.ops ; .arch x64 ; xor r10d, r10d);
        }
        if p.flags {
            // Host EFLAGS and a capture in R9 both as the inline path leaves them.
            self.load_flags();
            dynasm!(self.ops ; .arch x64 ; mov r9, r14);
        }
        dynasm!(self.ops ; .arch x64 ; jmp =>after);
    }

    /// On an out-of-line path: the flags of [`Emitter::remat`] computed again
    /// and made R14 (clobbers host flags, R9 and R11; keeps guest registers).
    fn remat_flags(&mut self, r: &Option<Pending>) {
        let Some((how, code, f)) = r else {
            return;
        };
        match *how {
            Remat::Rerun => self.ops.extend(code.iter().copied()),
            Remat::Inverse {
                sub,
                reg,
                bits,
                src,
            } => {
                dynasm!(self.ops ; .arch x64 ; mov r11, Rq(reg));
                match (sub, bits, src) {
                    (false, 32, RematSrc::Imm(v)) => {
                        dynasm!(self.ops ; .arch x64 ; sub r11d, v ; add r11d, v)
                    }
                    (false, _, RematSrc::Imm(v)) => {
                        dynasm!(self.ops ; .arch x64 ; sub r11, v ; add r11, v)
                    }
                    (false, 32, RematSrc::Reg(s)) => {
                        dynasm!(self.ops ; .arch x64 ; sub r11d, Rd(s) ; add r11d, Rd(s))
                    }
                    (false, _, RematSrc::Reg(s)) => {
                        dynasm!(self.ops ; .arch x64 ; sub r11, Rq(s) ; add r11, Rq(s))
                    }
                    (true, 32, RematSrc::Imm(v)) => {
                        dynasm!(self.ops ; .arch x64 ; add r11d, v ; sub r11d, v)
                    }
                    (true, _, RematSrc::Imm(v)) => {
                        dynasm!(self.ops ; .arch x64 ; add r11, v ; sub r11, v)
                    }
                    (true, 32, RematSrc::Reg(s)) => {
                        dynasm!(self.ops ; .arch x64 ; add r11d, Rd(s) ; sub r11d, Rd(s))
                    }
                    (true, _, RematSrc::Reg(s)) => {
                        dynasm!(self.ops ; .arch x64 ; add r11, Rq(s) ; sub r11, Rq(s))
                    }
                }
            }
            Remat::Result { reg, bits } => match bits {
                16 => dynasm!(self.ops ; .arch x64 ; test Rw(reg), Rw(reg)),
                32 => dynasm!(self.ops ; .arch x64 ; test Rd(reg), Rd(reg)),
                _ => dynasm!(self.ops ; .arch x64 ; test Rq(reg), Rq(reg)),
            },
            Remat::IncDec { dec, reg, bits } => {
                dynasm!(self.ops ; .arch x64 ; mov r11, Rq(reg));
                match (dec, bits) {
                    (false, 16) => dynasm!(self.ops ; .arch x64 ; dec r11w ; inc r11w),
                    (false, 32) => dynasm!(self.ops ; .arch x64 ; dec r11d ; inc r11d),
                    (false, _) => dynasm!(self.ops ; .arch x64 ; dec r11 ; inc r11),
                    (true, 16) => dynasm!(self.ops ; .arch x64 ; inc r11w ; dec r11w),
                    (true, 32) => dynasm!(self.ops ; .arch x64 ; inc r11d ; dec r11d),
                    (true, _) => dynasm!(self.ops ; .arch x64 ; inc r11 ; dec r11),
                }
                // Its five flags over R14's, whose CF is exact here.
                let (defined, keep) = (
                    lahf_layout(f.defined) as i32,
                    !(lahf_layout(f.written) as i32),
                );
                self.capture_flags();
                dynasm!(self.ops
                    ; .arch x64
                    ; and r9d, defined
                    ; and r14d, keep
                    ; or r14d, r9d
                );
                return;
            }
        }
        if f.whole() {
            self.capture_into_r14();
        } else {
            // Every flag written (`plan::remats`): R14 is replaced.
            let defined = lahf_layout(f.defined) as i32;
            self.capture_flags();
            dynasm!(self.ops
                ; .arch x64
                ; and r9d, defined
                ; mov r14d, r9d
            );
        }
    }

    /// A relative JMP/Jcc ending the unit: RIP = target (masked to the operand
    /// size) if taken, known at translation time; a target outside the CS limit
    /// goes to the helper, which raises #GP.
    fn branch(&mut self, i: usize, b: &Branch, len: u64, kind: u8) {
        let n = self.insn_delta + 1;
        let here = self.rip.wrapping_add(self.unit_off);
        let mask = match b.size {
            2 => 0xFFFF,
            4 => 0xFFFF_FFFF,
            _ => u64::MAX,
        };
        let target = here.wrapping_add(len).wrapping_add(b.rel) & mask;
        let taken = self.ops.new_label();
        if let Some(cc) = b.cc {
            if cond_flags(cc) & !self.host_valid != 0 {
                self.settle_flags();
                self.load_flags();
            }
            let (pending, delta) = (self.pending, self.insn_delta);
            let deferred = self.deferred.clone();
            if self.chain && target == self.rip && target != here && self.target_ok(target) {
                // A loop's closing Jcc: the way back stays on the straight
                // line, with one taken branch per trip (its budget check's),
                // and the way on is out of line.
                let not_taken = self.ops.new_label();
                jump_if(self.ops, invert(cc), not_taken);
                self.settle_flags();
                self.side(target, n, 0);
                (self.pending, self.insn_delta) = (pending, delta);
                self.deferred = deferred;
                dynasm!(self.ops ; .arch x64 ; =>not_taken);
                self.not_taken_flags();
                self.settle_flags();
                self.side(here.wrapping_add(len) & self.ip_mask, n, 1);
                return;
            }
            jump_if(self.ops, cc, taken);
            // Not taken: on to the next instruction. The taken side below
            // starts from the same state: the not-taken side's count and
            // flag capture belong to that path only (random ROM seed 8830:
            // a taken Jcc to a target past the CS limit called the helper
            // with the preceding instructions uncounted).
            self.not_taken_flags();
            self.settle_flags();
            self.side(here.wrapping_add(len) & self.ip_mask, n, 1);
            (self.pending, self.insn_delta) = (pending, delta);
            self.deferred = deferred;
        }
        dynasm!(self.ops ; .arch x64 ; =>taken);
        self.settle_flags();
        if !self.target_ok(target) {
            // Outside the CS limit, or not canonical: the helper raises #GP.
            self.helper_ends_unit(i, kind);
        } else if target == here {
            // A branch to itself restarts: the interpreter ends the unit with an
            // event.
            self.advance(n);
            self.leave(target, EXIT_EVENT);
        } else {
            self.side(target, n, 0);
        }
    }

    /// Runs instruction `i` (the unit's last) through the helper, which ends
    /// the unit.
    fn helper_ends_unit(&mut self, i: usize, kind: u8) {
        let (off, n) = (self.unit_off, self.insn_delta);
        self.call_helper(i, kind, off, n);
        let (ret, code) = (self.ext.stubs.ret, self.end_code as i32);
        dynasm!(self.ops ; .arch x64 ; mov eax, code ; jmp extern ret as usize);
    }

    /// The end of a unit that runs on into the next instruction (its last one
    /// is not a branch): chained like the not-taken side of a branch, through
    /// link site 0.
    fn fall_through(&mut self, end_off: u64) {
        self.settle_flags();
        let n = self.insn_delta;
        self.side(self.rip.wrapping_add(end_off) & self.ip_mask, n, 0);
    }

    /// One way out of the unit, to `target`, after `n` more instructions, with
    /// the flags settled: on to a fragment where the module comment allows,
    /// else back to the run loop.
    fn side(&mut self, target: u64, n: u64, site: usize) {
        let wrap = if self.long { u64::MAX } else { 0xFFFF_FFFF };
        let lin = |a: u64| (self.cs_base.wrapping_add(a) & wrap) >> 12;
        let same_page = lin(target) == lin(self.rip);
        if self.chain && self.target_ok(target) && target == self.rip {
            // To its own start, with the unit's registers still mapped, while
            // icount stays below the limit (R13 negative).
            let mapped = self.mapped;
            if self.loop_copy.is_some() {
                let out = self.ops.new_label();
                self.advance_and_check(n, out);
                self.emit_loop_copy();
                dynasm!(self.ops ; .arch x64 ; =>out);
            } else {
                if self.deferred.is_some() && self.entry_live != 0 {
                    // The flags live at the loop's start, which the deferred
                    // compare always clears (`Emitter::defers_capture`).
                    let keep = !(lahf_layout(self.entry_live) as i32);
                    dynasm!(self.ops ; .arch x64 ; and r14d, keep);
                }
                dynasm!(self.ops
                    ; .arch x64
                    ; add r13, n as i32
                    ; js =>mapped
                );
                self.insn_delta = 0;
            }
            self.rerun_deferred();
            self.epilogue();
        } else if self.chain && self.target_ok(target) {
            let out = self.ops.new_label();
            self.epilogue();
            self.advance_and_check(n, out);
            if same_page {
                let tag = self.ext.link_tags[site] as i64;
                let pending = self.ctx_field(offset_of!(JitCtx, pending_link));
                // The site's link jump: to its stub, right after it, until
                // the engine points it at the fragment that runs next.
                self.ops.extend([0xE9, 0, 0, 0, 0]);
                self.stubs[site] = Some(self.ops.offset().0);
                dynasm!(self.ops
                    ; .arch x64
                    ; mov r11, QWORD tag
                    ; mov r10, QWORD pending
                    ; mov QWORD [r10], r11
                );
            } else {
                // Another page: through the jump cache, at a fixed entry.
                let idx = jc_index(target);
                let table = self.ctx_field(offset_of!(JitCtx, jc));
                let entry = (idx * size_of::<JcEntry>()) as i32;
                let (want, spec) = (target as i64, self.spec as i32);
                dynasm!(self.ops
                    ; .arch x64
                    ; mov r10, QWORD table
                    ; mov r10, QWORD [r10]
                    ; lea r10, [r10 + entry]
                    ; mov r11, QWORD want
                    ; cmp r11, QWORD [r10 + JC_RIP]
                    ; jne >miss
                    ; cmp QWORD [r10 + JC_SPEC], spec
                    ; jne >miss
                    ; jmp QWORD [r10 + JC_ADDR]
                    ; miss:
                );
                self.jc_request();
            }
            dynasm!(self.ops ; .arch x64 ; =>out);
        } else {
            self.epilogue();
            self.advance(n);
        }
        // Flags left deferred for a chained way are made exact for the run
        // loop (a self-loop's were above, before its epilogue).
        self.rerun_deferred();
        let code = self.end_code;
        self.leave_unmapped(target, code);
    }

    /// Whether instruction `i` leaves its flags in host EFLAGS uncaptured
    /// ([`Emitter::deferred`]): they would be captured only for the unit's
    /// closing Jcc, which follows, and its taken side goes back to the unit's
    /// start, where no flag is live ([`UnitPlan::entry_live`]), so only the
    /// ways out need them. The not-taken side captures them from host EFLAGS
    /// after the Jcc; the taken side's way out when the budget has run out
    /// (its check clobbers host EFLAGS) runs the instruction again, a CMP or
    /// TEST, and captures then. A loop such as `add rax, 1; cmp byte [rax],
    /// 0; jne` then captures nothing per trip for its branch.
    fn defers_capture(&self, unit: &UnitPlan<'_>, i: usize) -> bool {
        if !(self.chain && unit.captures[i] && unit.reruns[i]) || i + 2 != unit.lowerings.len() {
            return false;
        }
        let Lowering::Branch(b) = &unit.lowerings[i + 1] else {
            return false;
        };
        let Some(cc) = b.cc else {
            return false;
        };
        let f = match &unit.lowerings[i] {
            Lowering::Ident(x) => x.flags,
            Lowering::Mem(m) if !m.write && m.esp_delta == 0 && !m.df_clear && !m.div_check => {
                m.op.flags
            }
            _ => return false,
        };
        if f.read != 0 || f.only_if_dead || f.count_fixed() || cond_flags(cc) & !f.defined != 0 {
            return false;
        }
        let off: u64 = unit.lens[..=i].iter().map(|&l| u64::from(l)).sum();
        let here = self.rip.wrapping_add(off);
        let mask = match b.size {
            2 => 0xFFFF,
            4 => 0xFFFF_FFFF,
            _ => u64::MAX,
        };
        let len = u64::from(unit.lens[i + 1]);
        let target = here.wrapping_add(len).wrapping_add(b.rel) & mask;
        if target == here || !self.target_ok(target) {
            return false;
        }
        if target == self.rip {
            // The flags live at the start that the compare always clears are
            // cleared in R14 on the way back (`Emitter::side`).
            unit.entry_live & !unit.closing_clears == 0 || unit.loop_prefix.is_some()
        } else {
            // Chained to code where the flags are dead; the ways out run the
            // compare again after the epilogue, which must leave the guest
            // registers where the compare's code reads them.
            unit.exit_dead[0]
                && matches!(unit.lowerings[i], Lowering::Ident(_))
                && self.regs.entries().next().is_none()
        }
    }

    /// The not-taken side of the unit's closing Jcc: the deferred flags
    /// ([`Emitter::deferred`]) are captured from host EFLAGS, unless that way
    /// chains to code where they are dead ([`UnitPlan::exit_dead`]); then
    /// only its ways out to the run loop run the compare again.
    fn not_taken_flags(&mut self) {
        let keep = self.exit_dead[1]
            && self.deferred.as_ref().is_some_and(|d| !d.2)
            && self.regs.entries().next().is_none();
        if keep {
            return;
        }
        if let Some((_, f, _)) = self.deferred.take() {
            // Host EFLAGS still hold the deferred flags.
            self.after_flags(f, true);
        }
    }

    /// On the way back of a self-loop with a [`LoopCopy`]: the loop's start
    /// again, with the deferred compare (held in host EFLAGS no longer) run
    /// again on its out-of-line paths, then on into the body.
    fn emit_loop_copy(&mut self) {
        let Some(copy) = self.loop_copy.take() else {
            return;
        };
        let Some((bytes, f, _)) = self.deferred.clone() else {
            return;
        };
        let saved = (
            self.unit_off,
            self.insn_delta,
            self.host_valid,
            self.pending.take(),
            self.remat.take(),
            self.exact,
            self.flat,
        );
        (self.insn_delta, self.host_valid, self.exact) = (0, 0, false);
        self.flat = copy.flat;
        self.remat = Some((Remat::Rerun, bytes, f));
        for (j, l, kind, off, shadow) in &copy.insns {
            self.unit_off = *off;
            if *shadow {
                dynasm!(self.ops ; .arch x64 ; mov BYTE [r15 + INT_SHADOW], 0);
            }
            match l {
                Lowering::Ident(x) => self.ident(x, false),
                Lowering::Mem(x) => self.mem(*j, x, false, *kind, false),
                _ => unreachable!("plan::loop_prefix admits register and memory instructions"),
            }
            self.insn_delta += 1;
        }
        dynasm!(self.ops ; .arch x64 ; jmp =>copy.join);
        (
            self.unit_off,
            self.insn_delta,
            self.host_valid,
            self.pending,
            self.remat,
            self.exact,
            self.flat,
        ) = saved;
    }

    /// On the self-loop's way out ([`Emitter::defers_capture`]): the deferred
    /// instruction run again and its flags captured and settled into R14,
    /// unless it was a memory access the helper ran (R10 zero), which left
    /// R14 exact (clobbers host flags, R9 and R11).
    fn rerun_deferred(&mut self) {
        let Some((bytes, f, mem)) = self.deferred.take() else {
            return;
        };
        let done = self.ops.new_label();
        if mem {
            dynasm!(self.ops
                ; .arch x64
                ; test r10, r10
                ; jz =>done
            );
        }
        self.ops.extend(bytes.iter().copied());
        self.after_flags(f, true);
        self.settle_flags();
        dynasm!(self.ops ; .arch x64 ; =>done);
    }

    /// Adds `n` retired instructions to R13 and goes to `out` unless icount is
    /// still below `JitCtx::icount_limit` (R13 counts from it, so that is its
    /// sign; clobbers host flags).
    fn advance_and_check(&mut self, n: u64, out: DynamicLabel) {
        let n = n as i32;
        dynasm!(self.ops
            ; .arch x64
            ; add r13, n
            ; jns =>out
        );
        self.insn_delta = 0;
    }

    /// Asks the engine to fill the jump-cache entry of the next RIP.
    fn jc_request(&mut self) {
        let req = (JC_REQUEST | u64::from(self.spec)) as i64;
        let pending = self.ctx_field(offset_of!(JitCtx, pending_link));
        dynasm!(self.ops
            ; .arch x64
            ; mov r11, QWORD req
            ; mov r10, QWORD pending
            ; mov QWORD [r10], r11
        );
    }

    /// An inline near CALL, RET or JMP through a register ([`Xfer`]): the
    /// stack access probed, the target read and checked against the CS limit,
    /// and only then the side effects (the push, ESP), so that a fault leaves
    /// the state for the helper, which runs the instruction and ends the
    /// fragment. The transfer then goes on as a branch's would: to a static
    /// target like [`Emitter::side`], to a dynamic one through the jump cache.
    fn xfer(&mut self, i: usize, x: &Xfer, len: u64, kind: u8) {
        self.settle_flags();
        self.host_valid = 0;
        let next = self.rip.wrapping_add(self.unit_off).wrapping_add(len) & self.ip_mask;
        let limit = self.cs_limit;
        let target = match x.target {
            // The operand size, 32 or 64 bits, masks the target.
            XferTarget::Rel(rel) => {
                Some(next.wrapping_add(rel) & if self.long { u64::MAX } else { 0xFFFF_FFFF })
            }
            _ => None,
        };
        if target.is_some_and(|t| !self.target_ok(t)) {
            // Outside the CS limit, or not canonical: the helper raises #GP.
            self.helper_ends_unit(i, kind);
            return;
        }
        let mut p = self.slow_path_here(i, kind, false, false);
        let full = p.full;
        if let Some(m) = &x.stack {
            self.probe(m, &mut p);
        }
        // A dynamic target goes to R9 (free: no capture is pending) and is
        // checked against the CS limit before any side effect.
        match (x.target, self.long) {
            (XferTarget::Reg(g), false) => {
                let h = GUEST_TO_HOST[usize::from(g)];
                dynasm!(self.ops ; .arch x64 ; mov r9d, Rd(h));
            }
            (XferTarget::Reg(g), true) => {
                let h = GUEST_TO_HOST[usize::from(g)];
                dynasm!(self.ops ; .arch x64 ; mov r9, Rq(h));
            }
            (XferTarget::Ret(_), false) => dynasm!(self.ops ; .arch x64 ; mov r9d, DWORD [r10]),
            (XferTarget::Ret(_), true) => dynasm!(self.ops ; .arch x64 ; mov r9, QWORD [r10]),
            (XferTarget::Rel(_), _) => {}
        }
        if target.is_none() && self.long {
            // The target must be canonical (else #GP, from the helper).
            dynasm!(self.ops
                ; .arch x64
                ; mov r11, r9
                ; shl r11, 16
                ; sar r11, 16
                ; cmp r11, r9
                ; jne =>full
            );
        } else if target.is_none() && limit != u32::MAX {
            let l = limit as i32;
            dynasm!(self.ops
                ; .arch x64
                ; mov r11d, DWORD l
                ; cmp r9, r11
                ; ja =>full
            );
        }
        let width = if self.long { 8 } else { 4 };
        match x.target {
            XferTarget::Ret(release) => self.move_esp(width + i32::from(release)),
            _ if x.stack.is_some() && self.long => {
                dynasm!(self.ops
                    ; .arch x64
                    ; mov r11, QWORD next as i64
                    ; mov QWORD [r10], r11
                );
                self.move_esp(-8);
            }
            _ if x.stack.is_some() => {
                let ret = next as u32 as i32;
                dynasm!(self.ops ; .arch x64 ; mov DWORD [r10], ret);
                self.move_esp(-4);
            }
            _ => {}
        }
        let n = self.insn_delta + 1;
        self.slow.push(p);
        match target {
            Some(t) => self.side(t, n, 0),
            None => self.side_dynamic(n),
        }
    }

    /// A way out of the unit to the RIP in R9 (32 or 64 bits), after `n` more
    /// instructions, otherwise as [`Emitter::side`]: on through the jump cache,
    /// or back to the run loop.
    fn side_dynamic(&mut self, n: u64) {
        let out = self.ops.new_label();
        self.epilogue();
        if !self.chain {
            self.advance(n);
        } else {
            self.advance_and_check(n, out);
            let base = self.ctx_field(offset_of!(JitCtx, jc));
            let spec = self.spec as i32;
            let mask = (JC_SIZE - 1) as i32;
            let shift = size_of::<JcEntry>().trailing_zeros() as i8;
            if !self.long {
                dynasm!(self.ops ; .arch x64 ; mov r9d, r9d);
            }
            dynasm!(self.ops
                ; .arch x64
                ; mov r11d, r9d
                ; shr r11d, 12
                ; xor r11d, r9d
                ; and r11d, mask
                ; shl r11d, shift
                ; mov r10, QWORD base
                ; mov r10, QWORD [r10]
                ; add r10, r11
                ; cmp r9, QWORD [r10 + JC_RIP]
                ; jne >miss
                ; cmp QWORD [r10 + JC_SPEC], spec
                ; jne >miss
                ; jmp QWORD [r10 + JC_ADDR]
                ; miss:
            );
            self.jc_request();
        }
        let (leave, code) = (self.ext.stubs.leave, self.end_code as i32);
        dynasm!(self.ops
            ; .arch x64
            ; =>out
            ; mov r12d, code
            ; jmp extern leave as usize
        );
    }
}

/// `jcc label` for a guest condition code (the host tests the same flags).
/// The condition that holds exactly when `cc` does not.
fn invert(cc: ConditionCode) -> ConditionCode {
    use ConditionCode as C;
    match cc {
        C::o => C::no,
        C::no => C::o,
        C::b => C::ae,
        C::ae => C::b,
        C::e => C::ne,
        C::ne => C::e,
        C::be => C::a,
        C::a => C::be,
        C::s => C::ns,
        C::ns => C::s,
        C::p => C::np,
        C::np => C::p,
        C::l => C::ge,
        C::ge => C::l,
        C::le => C::g,
        C::g => C::le,
        C::None => C::None,
    }
}

fn jump_if<A: CodeSink>(ops: &mut A, cc: ConditionCode, l: DynamicLabel) {
    use ConditionCode as C;
    match cc {
        C::o => dynasm!(ops ; .arch x64 ; jo =>l),
        C::no => dynasm!(ops ; .arch x64 ; jno =>l),
        C::b => dynasm!(ops ; .arch x64 ; jb =>l),
        C::ae => dynasm!(ops ; .arch x64 ; jae =>l),
        C::e => dynasm!(ops ; .arch x64 ; je =>l),
        C::ne => dynasm!(ops ; .arch x64 ; jne =>l),
        C::be => dynasm!(ops ; .arch x64 ; jbe =>l),
        C::a => dynasm!(ops ; .arch x64 ; ja =>l),
        C::s => dynasm!(ops ; .arch x64 ; js =>l),
        C::ns => dynasm!(ops ; .arch x64 ; jns =>l),
        C::p => dynasm!(ops ; .arch x64 ; jp =>l),
        C::np => dynasm!(ops ; .arch x64 ; jnp =>l),
        C::l => dynasm!(ops ; .arch x64 ; jl =>l),
        C::ge => dynasm!(ops ; .arch x64 ; jge =>l),
        C::le => dynasm!(ops ; .arch x64 ; jle =>l),
        C::g => dynasm!(ops ; .arch x64 ; jg =>l),
        C::None => dynasm!(ops ; .arch x64 ; jmp =>l),
    }
}
