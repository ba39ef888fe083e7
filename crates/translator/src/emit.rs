//! Code generation: one unit's lowerings become one compiled code fragment (CCF).
//!
//! ABI: `extern "sysv64" fn(*mut CpuState, *mut JitCtx) -> u64`, the exit code
//! ([`EXIT_END`], [`EXIT_EVENT`], [`EXIT_FAULT`]). Register use inside a CCF:
//! - R15 holds the `CpuState` pointer and R14 the `JitCtx` pointer for the whole
//!   fragment (callee-saved, so they survive helper calls); R13 holds RIP at entry;
//! - guest GPR i is cached in host register [`GUEST_TO_HOST`]`[i]` between its
//!   first use and the next helper call or exit, and written back if dirty;
//! - R9 holds captured host flags until they are merged into `CpuState::rflags`;
//!   R10 and R11 are scratch.
//!
//! Invariants:
//! - Before a helper call and at every exit, `CpuState` is exact: dirty guest
//!   registers are stored, captured flags merged, RIP and `icount` advanced past
//!   every inline instruction. A helper that faults therefore sees the state before
//!   its instruction with every earlier one committed (precise exceptions).
//! - Host EFLAGS are trusted for a guest flag only while nothing since the
//!   instruction that produced it has clobbered them (`host_valid`); otherwise a
//!   reader reloads them from `CpuState::rflags` with POPFQ (arithmetic bits only,
//!   so the host's TF, DF and AC stay clear).
//! - Inline instructions never fault; the only inline path that can is the branch
//!   target's CS-limit check, which hands the branch to the helper instead.
//! - Chaining: where an inline branch leaves the unit, the state is exact, and as
//!   long as `icount` is below `JitCtx::icount_limit` (the run loop's own chain
//!   stops there too) the fragment may go on to the next unit's fragment instead
//!   of returning: to its own start if the new RIP is its entry RIP (same bytes),
//!   or through the site's link cell to another fragment on the same linear page
//!   (so the same physical page as the running one), with room below the CS limit
//!   for any unit. An empty cell exits with the site's tag in
//!   `JitCtx::pending_link`, and the engine links the cell to the fragment it runs
//!   next; it empties the cell when that fragment goes.

// dynasm's expansion of dynamic registers (`Rq(h)`) converts a `u8` into itself.
#![allow(clippy::useless_conversion)]

use crate::plan::{cond_flags, Branch, FlagSpec, Ident, Lowering, MemOp, GUEST_TO_HOST};
use crate::runtime::JitCtx;
use core::mem::{offset_of, size_of};
use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmLabelApi};
use iced_x86::ConditionCode;
use x86bt_cpu::mmu::{FastEntry, FAST_TLB_SIZE};
use x86bt_cpu::state::{flags, seg_attr, sreg, CpuState, Segment};

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
const ICOUNT_LIMIT: i32 = offset_of!(JitCtx, icount_limit) as i32;
const SELF_LOOPS: i32 = offset_of!(JitCtx, self_loops) as i32;
const CHAINS: i32 = offset_of!(JitCtx, chains) as i32;
const PENDING_LINK: i32 = offset_of!(JitCtx, pending_link) as i32;
const CS_BASE: i32 = (offset_of!(CpuState, seg)
    + sreg::CS * size_of::<Segment>()
    + offset_of!(Segment, base)) as i32;
/// The most bytes a unit covers: a chained-to unit must fit below the CS limit.
const MAX_UNIT_BYTES: i32 = (x86bt_decoder::MAX_UNIT_INSNS * x86bt_decoder::MAX_INSN_LEN) as i32;
const CS_LIMIT: i32 = (offset_of!(CpuState, seg)
    + sreg::CS * size_of::<Segment>()
    + offset_of!(Segment, limit)) as i32;
const TLB_BASE: i32 = offset_of!(JitCtx, tlb_base) as i32;
const FAST_READ: i32 = offset_of!(FastEntry, read) as i32;
const FAST_WRITE: i32 = offset_of!(FastEntry, write) as i32;
const FAST_ADDEND: i32 = offset_of!(FastEntry, addend) as i32;
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

/// What a fragment calls and embeds: the helper's address, the address of each
/// prepared instruction, and its two link cells with their tags. Named for
/// listings.
pub struct Externals<'a> {
    /// `helper_exec`.
    pub helper: u64,
    /// `helper_fill`.
    pub fill: u64,
    /// The prepared instructions, in unit order.
    pub insns: &'a [u64],
    /// Addresses of the link cells of the branch taken (0) and not taken (1).
    pub cells: [u64; 2],
    /// What an empty cell leaves in `JitCtx::pending_link`, per site.
    pub link_tags: [u64; 2],
}

/// Offsets of a fragment's entry, and of the point where a chained fragment
/// jumps in (after the prologue; R13 must hold RIP there).
#[derive(Clone, Copy, Debug)]
pub struct Fragment {
    /// The entry of the `Entry` ABI.
    pub entry: usize,
    /// The chain entry.
    pub body: usize,
}

/// The unit to emit.
pub struct UnitPlan<'a> {
    /// Lowering of each instruction.
    pub lowerings: &'a [Lowering],
    /// Whether each instruction's flags are captured (see [`crate::plan::captures`]).
    pub captures: &'a [bool],
    /// Length in bytes of each instruction.
    pub lens: &'a [u8],
    /// Helper kind passed to the helper, per instruction.
    pub kinds: &'a [u8],
    /// The unit may go on to the next fragment without returning (see the module
    /// comment on chaining).
    pub chain: bool,
}

struct Emitter<'a, A: CodeSink> {
    ops: &'a mut A,
    ext: &'a Externals<'a>,
    exit: DynamicLabel,
    /// The first instruction (R13 set).
    body: DynamicLabel,
    /// Chain code is emitted at the branch's exits.
    chain: bool,
    /// Guest registers loaded into their host registers.
    cached: u8,
    /// Cached registers written since loaded.
    dirty: u8,
    /// Guest flags that host EFLAGS hold right now.
    host_valid: u64,
    /// Flags captured in R9 and not yet merged.
    pending: Option<FlagSpec>,
    /// RIP and icount advance of inline instructions not yet stored.
    rip_delta: u64,
    insn_delta: u64,
    /// Offset of the current instruction from the unit's start.
    unit_off: u64,
    /// `CpuState::rip` was advanced inside the unit (it no longer equals R13).
    rip_moved: bool,
    /// Out-of-line paths of memory instructions, emitted after the epilogue.
    slow: Vec<SlowPath>,
    /// Where the unit's branch goes when its target is outside the CS limit.
    branch_slow: DynamicLabel,
}

/// Every guest GPR (bit i = GPR i).
const ALL_REGS: u8 = 0xFF;

/// What the out-of-line path of an inline memory instruction needs: the
/// emitter's state at the instruction, so that it can make `CpuState` exact, call
/// the TLB fill or the helper, and rejoin the inline code in the same state.
struct SlowPath {
    /// Entered when the fast TLB misses (R10 = linear address).
    miss: DynamicLabel,
    /// Entered when the inline checks fail: the helper runs the instruction.
    full: DynamicLabel,
    /// The address computation, to retry after a fill.
    retry: DynamicLabel,
    /// After the instruction.
    after: DynamicLabel,
    /// Index of the instruction in the unit, and its helper kind and length.
    i: usize,
    kind: u8,
    len: u64,
    /// Dirty and cached guest registers at the instruction.
    dirty: u8,
    cached: u8,
    rip_delta: u64,
    insn_delta: u64,
    /// Bit 0: write; bits 1 up: access size.
    size_write: u32,
    /// The instruction reads or writes flags: host EFLAGS must hold them after.
    flags: bool,
}

/// Emits one fragment.
pub fn emit_unit<A: CodeSink>(ops: &mut A, unit: &UnitPlan<'_>, ext: &Externals<'_>) -> Fragment {
    let entry = ops.offset().0;
    let exit = ops.new_label();
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
        ; mov r14, rsi
    );
    let body = ops.new_label();
    dynasm!(ops ; .arch x64 ; mov r13, QWORD [r15 + RIP]);
    for (g, &h) in GUEST_TO_HOST.iter().enumerate() {
        dynasm!(ops ; .arch x64 ; mov Rq(h), QWORD [r15 + gpr_off(g)]);
    }
    dynasm!(ops ; .arch x64 ; =>body);
    let body_at = ops.offset().0;
    let mut e = Emitter {
        ops,
        ext,
        exit,
        body,
        chain: unit.chain,
        cached: ALL_REGS,
        dirty: ALL_REGS,
        host_valid: 0,
        pending: None,
        rip_delta: 0,
        insn_delta: 0,
        unit_off: 0,
        rip_moved: false,
        slow: Vec::new(),
        branch_slow: exit,
    };
    let mut ended = false;
    for (i, l) in unit.lowerings.iter().enumerate() {
        let len = u64::from(unit.lens[i]);
        e.unit_off = unit.lens[..i].iter().map(|&l| u64::from(l)).sum();
        match l {
            Lowering::Ident(x) => {
                e.ident(x, unit.captures[i]);
                e.rip_delta += len;
                e.insn_delta += 1;
            }
            Lowering::Mem(x) => {
                e.mem(i, x, unit.captures[i], len, unit.kinds[i]);
                e.rip_delta += len;
                e.insn_delta += 1;
            }
            Lowering::Helper(_) => e.helper(i, unit.kinds[i]),
            Lowering::Branch(b) => {
                e.branch(i, b, len, unit.kinds[i]);
                ended = true;
            }
        }
    }
    if !ended && unit.chain {
        e.fall_through();
    } else if !ended {
        e.sync();
        dynasm!(e.ops ; .arch x64 ; xor eax, eax);
    }
    dynasm!(e.ops
        ; .arch x64
        ; =>exit
        ; add rsp, 8
        ; pop r15
        ; pop r14
        ; pop r13
        ; pop r12
        ; pop rbp
        ; pop rbx
        ; ret
    );
    for p in std::mem::take(&mut e.slow) {
        e.slow_path(&p);
    }
    Fragment {
        entry,
        body: body_at,
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
    fn load_regs(&mut self, mask: u8) {
        for (g, &h) in GUEST_TO_HOST.iter().enumerate() {
            let bit = 1u8 << g;
            if mask & bit != 0 && self.cached & bit == 0 {
                dynasm!(self.ops ; .arch x64 ; mov Rq(h), QWORD [r15 + gpr_off(g)]);
                self.cached |= bit;
            }
        }
    }

    fn store_regs(&mut self) {
        for (g, &h) in GUEST_TO_HOST.iter().enumerate() {
            if self.dirty & (1 << g) != 0 {
                dynasm!(self.ops ; .arch x64 ; mov QWORD [r15 + gpr_off(g)], Rq(h));
            }
        }
        self.dirty = 0;
    }

    /// Merges captured flags into `CpuState::rflags` (clobbers host flags).
    fn settle_flags(&mut self) {
        let Some(s) = self.pending.take() else {
            return;
        };
        let defined = s.defined as i32;
        dynasm!(self.ops ; .arch x64 ; and r9d, defined);
        if s.of_from_sf_cf {
            dynasm!(self.ops
                ; .arch x64
                ; mov r10d, r9d
                ; shr r10d, 7
                ; xor r10d, r9d
                ; and r10d, 1
                ; shl r10d, 11
                ; or r9d, r10d
            );
        }
        let keep = !(s.written as i32);
        dynasm!(self.ops
            ; .arch x64
            ; and QWORD [r15 + RFLAGS], keep
            ; or QWORD [r15 + RFLAGS], r9
        );
        self.host_valid = 0;
    }

    /// Loads the guest's arithmetic flags into host EFLAGS.
    fn load_flags(&mut self) {
        let arith = flags::ARITH as i32;
        dynasm!(self.ops
            ; .arch x64
            ; mov r9, QWORD [r15 + RFLAGS]
            ; and r9d, arith
            ; push r9
            ; popfq
        );
        self.host_valid = flags::ARITH;
    }

    /// Stores RIP and icount of the inline instructions so far (clobbers flags).
    fn store_progress(&mut self) {
        if self.rip_delta != 0 {
            let d = self.rip_delta as i32;
            dynasm!(self.ops ; .arch x64 ; add QWORD [r15 + RIP], d);
            self.rip_moved = true;
        }
        if self.insn_delta != 0 {
            let n = self.insn_delta as i32;
            dynasm!(self.ops ; .arch x64 ; add QWORD [r15 + ICOUNT], n);
        }
        self.rip_delta = 0;
        self.insn_delta = 0;
        self.host_valid = 0;
    }

    /// Makes `CpuState` exact (see the module invariants).
    fn sync(&mut self) {
        self.settle_flags();
        self.store_regs();
        self.store_progress();
    }

    fn ident(&mut self, x: &Ident, capture: bool) {
        let f = x.flags;
        if f.written != 0 {
            self.settle_flags();
        }
        if f.read & !self.host_valid != 0 {
            self.settle_flags();
            self.load_flags();
        }
        self.load_regs(x.uses | x.writes);
        self.ops.extend(x.bytes.iter().copied());
        self.dirty |= x.writes;
        self.after_flags(f, capture);
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
        dynasm!(self.ops ; .arch x64 ; pushfq ; pop r9);
        let mut spec = f;
        if let Some(lo) = f.szp_from {
            // CF and OF from the multiply, SF, ZF and PF from TEST of the low half.
            let cf_of = (flags::CF | flags::OF) as i32;
            let szp = (flags::SF | flags::ZF | flags::PF) as i32;
            let (r, bits) = gpr_of(lo);
            match bits {
                8 => dynasm!(self.ops ; .arch x64 ; test Rb(r), Rb(r)),
                16 => dynasm!(self.ops ; .arch x64 ; test Rw(r), Rw(r)),
                _ => dynasm!(self.ops ; .arch x64 ; test Rd(r), Rd(r)),
            }
            dynasm!(self.ops
                ; .arch x64
                ; pushfq
                ; pop r11
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
    fn mem(&mut self, i: usize, x: &MemOp, capture: bool, len: u64, kind: u8) {
        let f = x.op.flags;
        self.settle_flags();
        self.host_valid = 0;
        self.load_regs(x.op.uses | x.op.writes);
        let p = SlowPath {
            miss: self.ops.new_label(),
            full: self.ops.new_label(),
            retry: self.ops.new_label(),
            after: self.ops.new_label(),
            i,
            kind,
            len,
            dirty: self.dirty,
            cached: self.cached,
            rip_delta: self.rip_delta,
            insn_delta: self.insn_delta,
            size_write: (u32::from(x.size) << 1) | u32::from(x.write),
            flags: f.read | f.written != 0,
        };
        let (retry, full, miss, after) = (p.retry, p.full, p.miss, p.after);
        let last = i32::from(x.size) - 1;
        let limit = seg_field(x.seg, offset_of!(Segment, limit));
        let attrs = seg_field(x.seg, offset_of!(Segment, attrs));
        let base = seg_field(x.seg, offset_of!(Segment, base));
        let tag = if x.write { FAST_WRITE } else { FAST_READ };
        // PUSH and POP need a 32-bit stack (SS.B).
        let db = if x.esp_delta != 0 {
            i32::from(seg_attr::DB)
        } else {
            0
        };
        let (seg_mask, seg_want) = (SEG_MASK | db, SEG_WANT | db);
        dynasm!(self.ops ; .arch x64 ; =>retry);
        self.ops.extend(x.addr.iter().copied());
        // off + size - 1 <= limit, as off <= limit - (size - 1) in signed 64 bits
        // (a limit below size - 1 admits no offset).
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
            ; lea r11d, [r10 + last]
            ; and r11d, -4096
            ; mov r12d, r10d
            ; shr r12d, FAST_SHIFT
            ; and r12d, FAST_MASK
            ; add r12, QWORD [r14 + TLB_BASE]
            ; cmp r11d, DWORD [r12 + tag]
            ; jne =>miss
            ; add r10, QWORD [r12 + FAST_ADDEND]
        );
        if f.read != 0 {
            self.load_flags();
        }
        let delta = i32::from(x.esp_delta);
        if delta > 0 {
            dynasm!(self.ops ; .arch x64 ; lea r8d, [r8 + delta]);
        }
        self.ops.extend(x.op.bytes.iter().copied());
        if delta < 0 {
            dynasm!(self.ops ; .arch x64 ; lea r8d, [r8 + delta]);
        }
        self.dirty |= x.op.writes;
        self.after_flags(f, capture);
        dynasm!(self.ops ; .arch x64 ; =>after);
        self.slow.push(p);
    }

    fn store_mask(&mut self, mask: u8) {
        for (g, &h) in GUEST_TO_HOST.iter().enumerate() {
            if mask & (1 << g) != 0 {
                dynasm!(self.ops ; .arch x64 ; mov QWORD [r15 + gpr_off(g)], Rq(h));
            }
        }
    }

    fn reload_mask(&mut self, mask: u8) {
        for (g, &h) in GUEST_TO_HOST.iter().enumerate() {
            if mask & (1 << g) != 0 {
                dynasm!(self.ops ; .arch x64 ; mov Rq(h), QWORD [r15 + gpr_off(g)]);
            }
        }
    }

    /// The out-of-line half of [`Emitter::mem`].
    fn slow_path(&mut self, p: &SlowPath) {
        let (exit, fill) = (self.exit, self.ext.fill as i64);
        let size_write = p.size_write as i32;
        // A fast-TLB miss: fill, and retry on success.
        dynasm!(self.ops ; .arch x64 ; =>p.miss);
        self.store_mask(p.dirty);
        dynasm!(self.ops
            ; .arch x64
            ; mov rdi, r15
            ; mov rsi, r14
            ; mov rdx, r10
            ; mov ecx, size_write
            ; mov rax, QWORD fill
            ; call rax
            ; test eax, eax
        );
        self.reload_mask(p.cached);
        dynasm!(self.ops ; .arch x64 ; jnz =>p.retry);
        // The helper runs the instruction on an exact state; the inline code's
        // RIP and icount bookkeeping is then put back as it expects.
        dynasm!(self.ops ; .arch x64 ; =>p.full);
        self.store_mask(p.dirty);
        if p.rip_delta != 0 {
            let d = p.rip_delta as i32;
            dynasm!(self.ops ; .arch x64 ; add QWORD [r15 + RIP], d);
        }
        if p.insn_delta != 0 {
            let n = p.insn_delta as i32;
            dynasm!(self.ops ; .arch x64 ; add QWORD [r15 + ICOUNT], n);
        }
        self.call_helper(p.i, p.kind);
        let (back, n) = ((p.rip_delta + p.len) as i32, (p.insn_delta + 1) as i32);
        dynasm!(self.ops
            ; .arch x64
            ; test eax, eax
            ; jnz =>exit
            ; sub QWORD [r15 + RIP], back
            ; sub QWORD [r15 + ICOUNT], n
        );
        self.reload_mask(p.cached);
        if p.flags {
            let arith = flags::ARITH as i32;
            dynasm!(self.ops
                ; .arch x64
                ; mov r9, QWORD [r15 + RFLAGS]
                ; and r9d, arith
                ; push r9
                ; popfq
            );
        }
        dynasm!(self.ops ; .arch x64 ; jmp =>p.after);
    }

    fn call_helper(&mut self, i: usize, kind: u8) {
        let insn = self.ext.insns[i] as i64;
        let helper = self.ext.helper as i64;
        let kind = i32::from(kind);
        dynasm!(self.ops
            ; .arch x64
            ; mov rdi, r15
            ; mov rsi, r14
            ; mov rdx, QWORD insn
            ; mov ecx, kind
            ; mov rax, QWORD helper
            ; call rax
        );
        self.host_valid = 0;
    }

    fn helper(&mut self, i: usize, kind: u8) {
        self.sync();
        self.cached = 0;
        // The helper moves RIP past its instruction.
        self.rip_moved = true;
        self.call_helper(i, kind);
        let exit = self.exit;
        dynasm!(self.ops ; .arch x64 ; test eax, eax ; jnz =>exit);
    }

    /// A relative JMP/Jcc ending the unit: RIP = target (masked to the operand
    /// size) if taken and inside the CS limit; the helper raises #GP otherwise.
    ///
    /// Every guest register is brought into its host register first, as a
    /// chained fragment expects; the dirty ones are stored only on the ways out
    /// to the run loop (`out_end`, `out_event`) and before the helper.
    fn branch(&mut self, i: usize, b: &Branch, len: u64, kind: u8) {
        self.load_regs(ALL_REGS);
        let dirty = self.dirty;
        let out_end = self.ops.new_label();
        let out_event = self.ops.new_label();
        let taken = self.ops.new_label();
        if let Some(cc) = b.cc {
            if cond_flags(cc) & !self.host_valid != 0 {
                self.settle_flags();
                self.load_flags();
            }
            let saved = (
                self.pending,
                self.rip_delta,
                self.insn_delta,
                self.rip_moved,
            );
            jump_if(self.ops, cc, taken);
            // Not taken: fall through to the next instruction.
            self.settle_flags();
            self.rip_delta += len;
            self.insn_delta += 1;
            self.store_progress();
            dynasm!(self.ops ; .arch x64 ; mov r10, QWORD [r15 + RIP]);
            self.chain_to(1, out_end);
            (
                self.pending,
                self.rip_delta,
                self.insn_delta,
                self.rip_moved,
            ) = saved;
        }
        dynasm!(self.ops ; .arch x64 ; =>taken);
        self.settle_flags();
        let mask = if b.size == 2 { 0xFFFF } else { 0xFFFF_FFFF };
        let from_start = self.unit_off.wrapping_add(len).wrapping_add(b.rel) & mask;
        if from_start == 0 && self.unit_off != 0 {
            // Back to the unit's own start, which was fetched inside the CS limit.
            self.self_loop(out_end);
        } else {
            self.taken_branch(b, len, out_end, out_event);
        }
        // The ways out to the run loop.
        let event = EXIT_EVENT as i32;
        let exit = self.exit;
        dynasm!(self.ops ; .arch x64 ; =>out_end);
        self.store_mask(dirty);
        dynasm!(self.ops ; .arch x64 ; xor eax, eax ; jmp =>exit ; =>out_event);
        self.store_mask(dirty);
        dynasm!(self.ops ; .arch x64 ; mov eax, event ; jmp =>exit);
        // Outside the CS limit: the helper raises #GP.
        dynasm!(self.ops ; .arch x64 ; =>self.branch_slow);
        self.store_mask(dirty);
        self.store_progress();
        self.call_helper(i, kind);
    }

    /// The end of a unit that runs on into the next instruction (its last one
    /// is not a branch): chained like the not-taken side of a branch, through
    /// link cell 0, as the next RIP is fixed.
    fn fall_through(&mut self) {
        self.load_regs(ALL_REGS);
        let dirty = self.dirty;
        let out_end = self.ops.new_label();
        let exit = self.exit;
        self.settle_flags();
        self.store_progress();
        dynasm!(self.ops ; .arch x64 ; mov r10, QWORD [r15 + RIP]);
        self.chain_to(0, out_end);
        dynasm!(self.ops ; .arch x64 ; =>out_end);
        self.store_mask(dirty);
        dynasm!(self.ops ; .arch x64 ; xor eax, eax ; jmp =>exit);
    }

    /// The taken side of a branch to the unit's own start: RIP is the entry RIP
    /// (R13) again, and the unit runs again inside while the budget allows.
    fn self_loop(&mut self, out_end: DynamicLabel) {
        let insns = (self.insn_delta + 1) as i32;
        dynasm!(self.ops ; .arch x64 ; add QWORD [r15 + ICOUNT], insns);
        if self.rip_moved {
            dynasm!(self.ops ; .arch x64 ; mov QWORD [r15 + RIP], r13);
        }
        self.branch_slow = self.ops.new_label();
        if !self.chain {
            dynasm!(self.ops ; .arch x64 ; jmp =>out_end);
            return;
        }
        let body = self.body;
        dynasm!(self.ops
            ; .arch x64
            ; mov r11, QWORD [r15 + ICOUNT]
            ; cmp r11, QWORD [r14 + ICOUNT_LIMIT]
            ; jae =>out_end
            ; add QWORD [r14 + SELF_LOOPS], 1
            ; jmp =>body
        );
    }

    /// The taken side of any other branch: the target is computed, checked
    /// against the CS limit (`branch_slow` if outside) and stored as RIP.
    fn taken_branch(
        &mut self,
        b: &Branch,
        len: u64,
        out_end: DynamicLabel,
        out_event: DynamicLabel,
    ) {
        let slow = self.ops.new_label();
        self.branch_slow = slow;
        let to_target = self.rip_delta.wrapping_add(len).wrapping_add(b.rel) as i64;
        let own = self.rip_delta as i32;
        dynasm!(self.ops ; .arch x64 ; mov r10, QWORD [r15 + RIP]);
        match i32::try_from(to_target) {
            Ok(d) => dynasm!(self.ops ; .arch x64 ; add r10, d),
            Err(_) => dynasm!(self.ops
                ; .arch x64
                ; mov r11, QWORD to_target
                ; add r10, r11
            ),
        }
        if b.size == 2 {
            dynasm!(self.ops ; .arch x64 ; movzx r10d, r10w);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov r10d, r10d);
        }
        let insns = (self.insn_delta + 1) as i32;
        dynasm!(self.ops
            ; .arch x64
            ; mov r11d, DWORD [r15 + CS_LIMIT]
            ; cmp r10, r11
            ; ja =>slow
            // A branch to itself restarts: the interpreter ends the unit with an event.
            ; mov r11, QWORD [r15 + RIP]
            ; add r11, own
            ; mov QWORD [r15 + RIP], r10
            ; add QWORD [r15 + ICOUNT], insns
            ; cmp r10, r11
            ; je =>out_event
        );
        self.chain_to(0, out_end);
    }
}

impl<A: CodeSink> Emitter<'_, A> {
    /// Leaves the unit with the state exact but for the guest registers, all in
    /// their host registers, and R10 = RIP: on to another fragment, or to
    /// `out` (which stores the registers and returns EXIT_END). The module
    /// comment says where it may go.
    fn chain_to(&mut self, site: usize, out: DynamicLabel) {
        if !self.chain {
            dynasm!(self.ops ; .arch x64 ; jmp =>out);
            return;
        }
        let body = self.body;
        let cell = self.ext.cells[site] as i64;
        let tag = self.ext.link_tags[site] as i64;
        dynasm!(self.ops
            ; .arch x64
            ; mov r11, QWORD [r15 + ICOUNT]
            ; cmp r11, QWORD [r14 + ICOUNT_LIMIT]
            ; jae =>out
            ; cmp r10, r13
            ; jne >other
            ; add QWORD [r14 + SELF_LOOPS], 1
            ; jmp =>body
            ; other:
            ; mov r11, QWORD [r15 + CS_BASE]
            ; lea r9, [r11 + r10]
            ; add r11, r13
            ; xor r11, r9
            ; shr r11, 12
            ; jnz =>out
            ; lea r9, [r10 + MAX_UNIT_BYTES - 1]
            ; mov r11d, DWORD [r15 + CS_LIMIT]
            ; cmp r9, r11
            ; ja =>out
            ; mov r11, QWORD cell
            ; mov r9, QWORD [r11]
            ; test r9, r9
            ; jz >unlinked
            ; add QWORD [r14 + CHAINS], 1
            ; mov r13, r10
            ; jmp r9
            ; unlinked:
            ; mov r11, QWORD tag
            ; mov QWORD [r14 + PENDING_LINK], r11
            ; jmp =>out
        );
    }
}

/// `jcc label` for a guest condition code (the host tests the same flags).
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
