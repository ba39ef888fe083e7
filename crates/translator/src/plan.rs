//! How each instruction of a unit is lowered, decided once at translation time.
//!
//! - **IDENT**: a register-only integer instruction from a fixed list is
//!   re-encoded for the host with iced's encoder, the same operation on host
//!   registers that hold the guest registers (see [`GUEST_TO_HOST`]). Only the
//!   register numbering changes (guest SP/ESP lives in R8); the operation, the
//!   operand size and the immediates are the guest's own.
//! - **Branch**: a relative JMP or Jcc that ends the unit is lowered inline,
//!   with the CS-limit check of the interpreter and a fallback to the helper.
//! - **Helper**: everything else calls the interpreter's prepared `exec`.
//!
//! Each IDENT instruction carries a [`FlagSpec`]: which guest flags it reads, which
//! it writes, which of those the host computes exactly as the interpreter does
//! (taken from host EFLAGS), and which the interpreter sets to a fixed value where
//! the SDM leaves them undefined (cleared here; OF of a multi-bit SHL is the
//! single-step formula SF ^ CF). Instructions whose undefined flags the
//! interpreter computes some other way stay with the helper, so the result never
//! depends on the host CPU model.

use iced_x86::{
    Code, ConditionCode, Encoder, Instruction, InstructionInfoFactory, MemoryOperand, Mnemonic,
    OpAccess, OpKind, Register,
};
use x86bt_cpu::interp::Insn;
use x86bt_cpu::state::flags::{AF, ARITH, CF, OF, PF, SF, ZF};
use x86bt_decoder::table::{self, Class};
use x86bt_decoder::undefined::undefined_flags;

/// Host register number (x86 encoding) that holds guest GPR `i` inside a
/// fragment: the identity for EAX..EBX and EBP..EDI, so the guest's implicit
/// operands (CWD's EDX, CBW's AX) and its high-byte registers (AH..BH) need no
/// renaming; guest ESP lives in R8 because the host's RSP is the host stack.
pub const GUEST_TO_HOST: [u8; 8] = [0, 1, 2, 3, 8, 5, 6, 7];

/// The guest flags an instruction reads and writes (RFLAGS bit positions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagSpec {
    /// Flags the instruction reads.
    pub read: u64,
    /// Flags the interpreter writes.
    pub written: u64,
    /// The written flags the host computes exactly as the interpreter does.
    pub defined: u64,
    /// OF = SF ^ CF (a SHL by more than one, where the SDM leaves OF undefined).
    pub of_from_sf_cf: bool,
    /// MUL and IMUL: SF, ZF and PF are those of this host register (the low
    /// half of the product) and AF is clear, as the interpreter defines them.
    pub szp_from: Option<Register>,
    /// The flags it writes depend on a count known only at run time, or are
    /// ones the host may compute otherwise than the interpreter (a shift by CL,
    /// a rotate by more than one): the instruction stays inline only where
    /// nothing can observe them ([`plan`] demotes it to the helper otherwise).
    pub only_if_dead: bool,
    /// A shift or rotate by CL of a 32- or 64-bit register: where its flags
    /// are observed, [`plan`] makes it exact instead of demoting it (see
    /// [`CountFix`]); this is set on the `only_if_dead` spec as the candidate,
    /// and is in force once `only_if_dead` is false.
    pub count_fix: Option<CountFix>,
}

/// The flag fix-up of a shift or rotate by CL, or a rotate by an immediate
/// above one, whose flags are observed. By CL the guest's flags are loaded
/// into host EFLAGS first (a masked count of zero leaves every flag as it
/// was, on the host too); the host instruction's flags are captured, and
/// where the count is not zero, the flags the SDM leaves
/// undefined are then given the interpreter's values (`interp::shift`): AF
/// clear after a shift; OF = SF ^ CF after SHL, OF clear after SHR by more
/// than one and after SAR; OF = MSB ^ CF after ROL and MSB ^ the next bit
/// after ROR, at every count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountFix {
    /// Which shift or rotate.
    pub op: CountOp,
    /// The host register of the destination (0..=8).
    pub reg: u8,
    /// The operand size in bits: 32 or 64.
    pub bits: u8,
    /// The count is CL (else an immediate the plan knows is not zero: a
    /// rotate by more than one).
    pub by_cl: bool,
}

/// The operations [`CountFix`] covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountOp {
    /// SHL/SAL.
    Shl,
    /// SHR.
    Shr,
    /// SAR.
    Sar,
    /// ROL.
    Rol,
    /// ROR.
    Ror,
}

impl FlagSpec {
    const NONE: Self = Self {
        read: 0,
        written: 0,
        defined: 0,
        of_from_sf_cf: false,
        szp_from: None,
        only_if_dead: false,
        count_fix: None,
    };

    const fn writes(written: u64, defined: u64) -> Self {
        Self {
            read: 0,
            written,
            defined,
            of_from_sf_cf: false,
            szp_from: None,
            only_if_dead: false,
            count_fix: None,
        }
    }

    /// Whether this is a shift or rotate by CL made exact ([`CountFix`]).
    pub fn count_fixed(&self) -> bool {
        self.count_fix.is_some() && !self.only_if_dead
    }

    /// Whether a capture of these flags replaces R14 whole: every arithmetic
    /// flag written, each as the interpreter computes it, with no fix-up. LAHF
    /// and SETO then go straight into R14, with no merge (see `emit`).
    pub fn whole(&self) -> bool {
        self.written == ARITH
            && self.defined == ARITH
            && !self.of_from_sf_cf
            && self.szp_from.is_none()
            && !self.count_fixed()
    }

    /// The exact form of a [`CountFix`] candidate: by CL it reads the flags
    /// it writes (a zero count keeps them), and the host computes all of them
    /// but AF and OF as the interpreter does.
    fn made_exact(self) -> Self {
        let by_cl = self.count_fix.is_some_and(|f| f.by_cl);
        Self {
            read: if by_cl { self.written } else { 0 },
            defined: self.written & !(AF | OF),
            only_if_dead: false,
            ..self
        }
    }
}

/// Helper-call classes, for `--stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HelperKind {
    /// An instruction with an explicit memory operand.
    Memory = 0,
    /// PUSH, POP, CALL, RET, ENTER, LEAVE.
    Stack,
    /// Branches not lowered inline (LOOP, JCXZ, indirect, far).
    Branch,
    /// String instructions.
    String,
    /// Entries of the sensitive table.
    Sensitive,
    /// MUL, IMUL, DIV, IDIV.
    MulDiv,
    /// x87.
    X87,
    /// Everything else (register forms outside the IDENT list, #UD).
    Other,
    /// IN and OUT, which go on inside their unit (and chain) unless the
    /// access wants the run loop (`Machine::port_attention`).
    PortIo,
    /// MMX, SSE and POPCNT.
    Simd,
}

impl HelperKind {
    /// Number of kinds.
    pub const COUNT: usize = 10;
    /// Names, in discriminant order.
    pub const NAMES: [&'static str; Self::COUNT] = [
        "memory",
        "stack",
        "branch",
        "string",
        "sensitive",
        "mul/div",
        "x87",
        "other",
        "port I/O",
        "SIMD",
    ];

    /// The kind of a helper call for `ins`, from its row in the instruction
    /// table (an undefined opcode is "other").
    fn of(ins: &Instruction) -> Self {
        let Some(row) = table::row(ins) else {
            return Self::Other;
        };
        if matches!(ins.mnemonic(), Mnemonic::In | Mnemonic::Out) {
            return Self::PortIo;
        }
        if row.sensitivity.is_some() {
            return Self::Sensitive;
        }
        match row.class {
            Class::String => Self::String,
            Class::Stack => Self::Stack,
            Class::MulDiv => Self::MulDiv,
            Class::Branch => Self::Branch,
            Class::X87 => Self::X87,
            Class::Simd => Self::Simd,
            _ if (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory) => Self::Memory,
            _ => Self::Other,
        }
    }
}

/// A relative JMP or Jcc at the end of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Branch {
    /// The condition; `None` for JMP.
    pub cc: Option<ConditionCode>,
    /// Target minus the address of the next instruction.
    pub rel: u64,
    /// Operand size in bytes (the target is masked to it).
    pub size: u8,
}

/// A guest instruction re-encoded for the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    /// The host encoding.
    pub bytes: Vec<u8>,
    /// Guest GPRs the instruction uses (bit i = GPR i), loaded before it.
    pub uses: u8,
    /// Guest GPRs it writes.
    pub writes: u8,
    /// Its flags.
    pub flags: FlagSpec,
}

/// A guest instruction with one explicit memory operand, run inline on the
/// host address the fast TLB gives for it (see [`crate::emit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemOp {
    /// The instruction with its memory operand replaced by `[r10]`; `uses`
    /// includes the address's registers.
    pub op: Ident,
    /// Host code leaving the offset (masked to the address size) in R10, without
    /// touching host flags.
    pub addr: Vec<u8>,
    /// The segment ([`x86bt_cpu::state::sreg`] index).
    pub seg: u8,
    /// Bytes accessed.
    pub size: u8,
    /// The access writes (a store or a read-modify-write).
    pub write: bool,
    /// PUSH and POP: what ESP moves by (after the store of a PUSH; before the
    /// load of a POP, so that POP ESP keeps the value loaded). They need a
    /// 32-bit stack (SS.B set); 0 for other instructions.
    pub esp_delta: i8,
    /// A string instruction: inline only while DF is clear (the helper runs
    /// it otherwise).
    pub df_clear: bool,
    /// DIV m16/m32/m64: inline only where the host's DIV cannot raise #DE (a
    /// non-zero divisor above the dividend's high half, so the quotient fits);
    /// the helper runs the rest. The guest's flags are left as they were.
    pub div_check: bool,
    /// LEAVE: the load is from the stack at EBP, so it needs a 32-bit stack
    /// (SS.B set), as PUSH and POP do.
    pub stack32: bool,
}

/// An SSE instruction run on the host's SSE unit ([`sse_op`]): the guest's
/// XMM registers stay in `CpuState` (the FXSAVE image), and `x.op` loads the
/// ones it uses into the host's XMM registers of the same numbers, runs the
/// instruction on them and stores
/// the ones it writes back. A memory form's operand is `[r10]` after the probe
/// of `x`; a register form has no address (`x.size` is 0). Inline only where
/// the interpreter would not fault: CR0.EM and CR0.TS clear and CR4.OSFXSR
/// set, a 16-byte aligned operand for the forms that require it, and, for an
/// instruction that can raise a SIMD floating-point exception, every such
/// exception masked in MXCSR (the host then computes exactly what the guest
/// does, as the fragment runs under the guest's MXCSR; see [`crate::emit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseOp {
    /// The access and the host code.
    pub x: MemOp,
    /// It can raise a SIMD floating-point exception: inline only while MXCSR
    /// masks all six.
    pub float: bool,
    /// The memory operand must be 16-byte aligned (else #GP, from the helper).
    pub align16: bool,
}

impl SseOp {
    /// Whether the instruction has a memory operand.
    pub fn has_mem(&self) -> bool {
        self.x.size != 0
    }
}

/// How one instruction is lowered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lowering {
    /// Call the interpreter's `exec` through the helper.
    Helper(HelperKind),
    /// The same instruction on host registers.
    Ident(Ident),
    /// The same instruction on host registers and a host memory address, with
    /// the helper when the inline checks fail.
    Mem(MemOp),
    /// An inline relative branch.
    Branch(Branch),
    /// An inline near CALL, RET or register-indirect JMP (32-bit operand size)
    /// ending the unit.
    Xfer(Xfer),
    /// RDTSC: EDX:EAX = icount + `CpuState::tsc_offset`, inline while CR4.TSD
    /// is clear (the helper otherwise, which checks the privilege). `true` for
    /// RDTSCP, which also loads ECX with IA32_TSC_AUX.
    Rdtsc(bool),
    /// CLI, STI, PUSHF or POPF, inline where the privilege allows it.
    Flags(FlagsOp),
    /// DIV r32 or DIV r16: the host's DIV after inline checks that it cannot
    /// raise #DE (a zero divisor, a quotient too wide go to the helper). `op`
    /// is the host instruction; the guest's flags are left as they were (the
    /// interpreter leaves them alone) and host EFLAGS count as clobbered.
    Div(Ident),
    /// An SSE instruction on the host's SSE unit, with the helper when its
    /// checks fail.
    Sse(SseOp),
}

/// The sensitive flag instructions lowered inline ([`Lowering::Flags`]). Each
/// checks at run time what decides its legality (CPL against IOPL for CLI and
/// STI, CPL 0 for POPF, a 32-bit stack for PUSHF and POPF) and takes the
/// helper otherwise; none runs inline in V86 mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlagsOp {
    /// CLI: IF = 0.
    Cli,
    /// STI: IF = 1, with the interrupt shadow if IF was 0.
    Sti,
    /// PUSHF/PUSHFD: the FLAGS image (VM and RF read as 0) to the stack.
    Pushf(MemOp),
    /// POPF/POPFD at CPL 0 (or in real mode), where every flag it can change
    /// is writable.
    Popf(MemOp),
}

/// Where an inline transfer ([`Xfer`]) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XferTarget {
    /// CALL rel32: the next instruction's address plus this.
    Rel(u64),
    /// JMP or CALL through guest GPR `n` (not ESP).
    Reg(u8),
    /// RET: the return address on the stack, then ESP += 4 + this (RET imm16).
    Ret(u16),
}

/// A near CALL rel32 / CALL r32, RET / RET imm16 or JMP r32, with a 32-bit
/// operand size: the stack access goes inline as PUSH's and POP's do (a 32-bit
/// stack), the transfer as a branch's. The target must be inside the CS limit
/// (checked before the push, as the interpreter does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xfer {
    /// The target.
    pub target: XferTarget,
    /// The stack access: CALL's store of the return address to `[ESP - 4]`, or
    /// RET's load from `[ESP]` (`addr` leaves the offset in R10; `op` is empty,
    /// the emitter supplies the access).
    pub stack: Option<MemOp>,
}

/// The flags condition `cc` tests.
pub fn cond_flags(cc: ConditionCode) -> u64 {
    use ConditionCode as C;
    match cc {
        C::o | C::no => OF,
        C::b | C::ae => CF,
        C::e | C::ne => ZF,
        C::be | C::a => CF | ZF,
        C::s | C::ns => SF,
        C::p | C::np => PF,
        C::l | C::ge => SF | OF,
        C::le | C::g => ZF | SF | OF,
        C::None => 0,
    }
}

/// Guest R8-R15 that a 64-bit unit keeps in host registers for its whole
/// length: the host registers of legacy guest registers the unit never names
/// (explicitly or implicitly). On entry to the fragment a prologue stores each
/// borrowed legacy register to `CpuState` and loads the high register into
/// it; wherever the fragment leaves its inline code (an exit, a chain to
/// another fragment, a helper call) an epilogue stores the high register back
/// and reloads the legacy one, so everything outside the fragment sees the
/// usual register state. A unit that chains to its own start keeps the map
/// across its iterations. Registers named only once in a unit stay with the
/// per-instruction scratch loads of [`HighRegs`], which cost less there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitRegs {
    /// (guest register number 8-15, legacy guest register number whose host
    /// register holds it), the first `n` entries.
    map: [(u8, u8); 7],
    n: u8,
}

impl UnitRegs {
    /// The mapped registers: (guest R8-R15 number, host register number).
    pub fn entries(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        self.map[..usize::from(self.n)]
            .iter()
            .map(|&(g, l)| (g, GUEST_TO_HOST[usize::from(l)]))
    }

    /// The legacy guest register whose host register holds guest register
    /// `idx` (8-15) in this unit.
    fn legacy_of(&self, idx: u32) -> Option<u8> {
        self.map[..usize::from(self.n)]
            .iter()
            .find(|&&(g, _)| u32::from(g) == idx)
            .map(|&(_, l)| l)
    }
}

/// The register map of a unit ([`UnitRegs`]): empty for code that is not
/// 64-bit.
pub fn unit_regs(insns: &[Insn], factory: &mut InstructionInfoFactory) -> UnitRegs {
    let mut out = UnitRegs::default();
    if !insns.first().is_some_and(|i| is_long(&i.ins)) {
        return out;
    }
    let (mut legacy, mut uses) = (0u8, [0u32; 8]);
    for insn in insns {
        for u in factory.info(&insn.ins).used_registers() {
            let r = u.register();
            if !r.is_gpr() {
                continue;
            }
            match gpr_index(r) {
                i @ 0..=7 => legacy |= 1 << i,
                i => uses[(i - 8) as usize] += 1,
            }
        }
    }
    // Guest RSP lives in R8, which is not a legacy host register to lend.
    let mut free = (0..8u8).filter(|&l| l != 4 && legacy & (1 << l) == 0);
    let mut order: Vec<usize> = (0..8).filter(|&k| uses[k] >= 2).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(uses[k]));
    for k in order {
        let Some(l) = free.next() else { break };
        out.map[usize::from(out.n)] = (k as u8 + 8, l);
        out.n += 1;
    }
    out
}

thread_local! {
    /// The map of the unit [`plan_unit`] is lowering, which [`HighRegs`]
    /// consults (empty otherwise).
    static UNIT_REGS: core::cell::Cell<UnitRegs> = const { core::cell::Cell::new(UnitRegs {
        map: [(0, 0); 7],
        n: 0,
    }) };
}

/// Lowers every instruction of a unit (with no register map; see
/// [`plan_unit`]).
pub fn plan(insns: &[Insn]) -> Vec<Lowering> {
    plan_with(
        insns,
        UnitRegs::default(),
        &mut InstructionInfoFactory::new(),
    )
}

/// Lowers every instruction of a unit under its register map
/// ([`unit_regs`]), which the emitter then needs too.
pub fn plan_unit(insns: &[Insn]) -> (Vec<Lowering>, UnitRegs) {
    let mut factory = InstructionInfoFactory::new();
    let regs = unit_regs(insns, &mut factory);
    (plan_with(insns, regs, &mut factory), regs)
}

fn plan_with(
    insns: &[Insn],
    regs: UnitRegs,
    factory: &mut InstructionInfoFactory,
) -> Vec<Lowering> {
    let last = insns.len().saturating_sub(1);
    UNIT_REGS.set(regs);
    let mut lowerings: Vec<Lowering> = insns
        .iter()
        .enumerate()
        .map(|(i, insn)| lower(insn, i == last, factory))
        .collect();
    UNIT_REGS.set(UnitRegs::default());
    // Instructions whose flags must not be observed go to the helper where
    // they would be; each demotion can make an earlier flag live, so repeat.
    loop {
        let caps = captures(&lowerings);
        let bad = observed_dead_only(&lowerings, &caps);
        if bad.is_empty() {
            return lowerings;
        }
        for i in bad {
            lowerings[i] = match &lowerings[i] {
                Lowering::Ident(x) if x.flags.count_fix.is_some() => Lowering::Ident(Ident {
                    flags: x.flags.made_exact(),
                    ..x.clone()
                }),
                _ => Lowering::Helper(HelperKind::of(&insns[i].ins)),
            };
        }
    }
}

/// The `only_if_dead` instructions some of whose flags can be observed: read
/// by a later instruction before being written again, or needed exact in
/// `CpuState` (captured).
fn observed_dead_only(lowerings: &[Lowering], caps: &[bool]) -> Vec<usize> {
    let mut read_later = 0u64;
    let mut out = Vec::new();
    for (i, l) in lowerings.iter().enumerate().rev() {
        let f = match l {
            Lowering::Ident(x) | Lowering::Div(x) => x.flags,
            Lowering::Mem(m) | Lowering::Sse(SseOp { x: m, .. }) => m.op.flags,
            Lowering::Branch(b) => {
                read_later = b.cc.map_or(0, cond_flags);
                continue;
            }
            Lowering::Helper(_) => {
                read_later = ARITH;
                continue;
            }
            Lowering::Xfer(_) | Lowering::Rdtsc(_) => continue,
            Lowering::Flags(_) => {
                read_later = ARITH;
                continue;
            }
        };
        if f.only_if_dead && (caps[i] || f.written & read_later != 0) {
            out.push(i);
        }
        read_later = (read_later & !f.written) | f.read;
    }
    out
}

/// The helper kind each instruction passes to the helper (for `--stats`).
pub fn helper_kinds(lowerings: &[Lowering]) -> Vec<u8> {
    lowerings
        .iter()
        .map(|l| match l {
            Lowering::Helper(k) => *k as u8,
            Lowering::Mem(_) => HelperKind::Memory as u8,
            Lowering::Branch(_) => HelperKind::Branch as u8,
            Lowering::Xfer(x) if x.stack.is_some() => HelperKind::Stack as u8,
            Lowering::Xfer(_) => HelperKind::Branch as u8,
            Lowering::Rdtsc(_) | Lowering::Flags(_) => HelperKind::Sensitive as u8,
            Lowering::Ident(_) => HelperKind::Other as u8,
            Lowering::Div(_) => HelperKind::MulDiv as u8,
            Lowering::Sse(_) => HelperKind::Simd as u8,
        })
        .collect()
}

/// For each instruction, whether the flags it writes must be captured into
/// `CpuState::rflags`: some flag it writes must be exact there later, that is
/// when the unit ends, a helper runs or a memory access is made (any of which may
/// read any flag or fault), or when the emitter has to reload host EFLAGS from
/// `CpuState` for a reader.
///
/// A reader finds its flags in host EFLAGS when nothing since their writers has
/// clobbered them; that needs no capture. Which readers must reload depends on
/// the captures (merging a capture clobbers host EFLAGS), so the two are found
/// together: [`flag_reloads`] replays the emitter's bookkeeping, and every reload
/// it finds becomes a demand for exact flags, until nothing changes.
pub fn captures(lowerings: &[Lowering]) -> Vec<bool> {
    flag_plan(lowerings).0
}

/// [`captures`], and the flags live where the unit starts: those some path
/// from there needs exact (at a way out, a helper, a memory access or a
/// reload) before an instruction of the unit writes them.
pub fn flag_plan(lowerings: &[Lowering]) -> (Vec<bool>, u64) {
    let mut demand = vec![0u64; lowerings.len()];
    loop {
        let (caps, entry_live) = captures_for(lowerings, &demand);
        let mut changed = false;
        for (i, f) in flag_reloads(lowerings, &caps) {
            if demand[i] & f != f {
                demand[i] |= f;
                changed = true;
            }
        }
        if !changed {
            return (caps, entry_live);
        }
    }
}

/// Backward liveness of exact flags, with `demand[i]` the flags instruction `i`
/// needs exact in `CpuState` besides what its kind implies; and the flags live
/// at the unit's start.
fn captures_for(lowerings: &[Lowering], demand: &[u64]) -> (Vec<bool>, u64) {
    let mut live = ARITH;
    let mut out = vec![false; lowerings.len()];
    for (i, l) in lowerings.iter().enumerate().rev() {
        live = match l {
            Lowering::Ident(x) | Lowering::Div(x) => {
                out[i] = x.flags.written & live != 0;
                (live & !x.flags.written) | demand[i]
            }
            Lowering::Mem(m) | Lowering::Sse(SseOp { x: m, .. }) => {
                out[i] = m.op.flags.written & live != 0;
                ARITH
            }
            Lowering::Helper(_)
            | Lowering::Branch(_)
            | Lowering::Xfer(_)
            | Lowering::Rdtsc(_)
            | Lowering::Flags(_) => ARITH,
        };
    }
    (out, live)
}

/// How the emitter computes again the flags of an instruction whose capture
/// it leaves out ([`remats`]), on the out-of-line paths of the memory accesses
/// that follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remat {
    /// Its own host code again: CMP and TEST write nothing but flags.
    Rerun,
    /// ADD or SUB, whose destination register holds the result: the value
    /// before it is taken back into R11 and the operation done again there.
    Inverse {
        /// SUB (else ADD).
        sub: bool,
        /// The destination's host register.
        reg: u8,
        /// The operand size: 32 or 64.
        bits: u8,
        /// The second operand.
        src: RematSrc,
    },
    /// AND, OR, XOR: their flags are TEST's of the result, AF aside, which
    /// they leave undefined.
    Result {
        /// The destination's host register.
        reg: u8,
        /// The operand size: 16, 32 or 64.
        bits: u8,
    },
    /// INC or DEC of a register, which leave CF as it was: the value before
    /// it is taken back into R11 and the operation done again there, and its
    /// five flags merged into R14, whose CF is exact there (nothing between
    /// the last capture and the INC wrote CF uncaptured).
    IncDec {
        /// DEC (else INC).
        dec: bool,
        /// The register's host register.
        reg: u8,
        /// The operand size: 16, 32 or 64.
        bits: u8,
    },
}

/// The second operand of a [`Remat::Inverse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RematSrc {
    /// A sign-extended immediate.
    Imm(i32),
    /// A host register.
    Reg(u8),
}

/// Per instruction, how its flags can be computed again where they are
/// needed, so that the emitter need not capture them ([`Remat`]): for an
/// instruction whose flags are captured only because memory accesses follow
/// it (whose out-of-line paths, a TLB fill or the helper, need exact flags),
/// before an instruction that writes every flag. Nothing in between reads
/// flags, writes some but not all, or writes a register the recomputation
/// reads; and it is all inline register and memory instructions. ADD, SUB,
/// CMP, TEST, AND, OR and XOR of legacy registers and immediates qualify: the
/// `add rax, 4` before a store of a copy loop, the `add eax, ecx` before the
/// sieve's store. So do INC and DEC of a register (the `inc eax` before the
/// 32-bit strlen's load), whose CF then comes from R14: whatever wrote CF
/// before them was captured, as CF is live there, and its capture cannot have
/// been left out in turn, as they do not write every flag.
pub fn remats(insns: &[Insn], lowerings: &[Lowering], caps: &[bool]) -> Vec<Option<Remat>> {
    (0..lowerings.len())
        .map(|i| remat_at(insns, lowerings, caps, i))
        .collect()
}

fn remat_at(insns: &[Insn], lowerings: &[Lowering], caps: &[bool], i: usize) -> Option<Remat> {
    let Lowering::Ident(x) = &lowerings[i] else {
        return None;
    };
    let f = x.flags;
    let ins = &insns[i].ins;
    if caps[i] && matches!(ins.mnemonic(), Mnemonic::Inc | Mnemonic::Dec) {
        return inc_dec_remat(insns, lowerings, i);
    }
    if !caps[i]
        || f.read != 0
        || f.written != ARITH
        || f.only_if_dead
        || f.count_fixed()
        || f.szp_from.is_some()
        || f.of_from_sf_cf
    {
        return None;
    }
    if ins.op_count() != 2 {
        return None;
    }
    let (r0, bits, b0, h0) = remat_dest(ins)?;
    let (src, b1) = match ins.op1_kind() {
        OpKind::Register => {
            let r1 = ins.op1_register();
            let b1 = gpr_bit(r1)?;
            if r1.size() != r0.size() {
                return None;
            }
            (RematSrc::Reg(GUEST_TO_HOST[gpr_index(r1) as usize]), b1)
        }
        k if is_imm(k) => (RematSrc::Imm(ins.immediate(1) as i32), 0),
        _ => return None,
    };
    let (remat, inputs) = match ins.mnemonic() {
        Mnemonic::Cmp | Mnemonic::Test => (Remat::Rerun, x.uses),
        Mnemonic::Add | Mnemonic::Sub if bits >= 32 && b1 != b0 => (
            Remat::Inverse {
                sub: ins.mnemonic() == Mnemonic::Sub,
                reg: h0,
                bits,
                src,
            },
            b0 | b1,
        ),
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor => (Remat::Result { reg: h0, bits }, b0),
        _ => return None,
    };
    remat_if_replaced(lowerings, i, remat, inputs)
}

/// [`remat_at`] for INC and DEC of a 16-, 32- or 64-bit legacy register.
fn inc_dec_remat(insns: &[Insn], lowerings: &[Lowering], i: usize) -> Option<Remat> {
    let Lowering::Ident(x) = &lowerings[i] else {
        return None;
    };
    let f = x.flags;
    let ins = &insns[i].ins;
    if f.read != 0
        || f.written != ARITH & !CF
        || f.defined != f.written
        || f.only_if_dead
        || f.count_fixed()
        || ins.op_count() != 1
        || ins.has_lock_prefix()
    {
        return None;
    }
    let (_, bits, b0, reg) = remat_dest(ins)?;
    let remat = Remat::IncDec {
        dec: ins.mnemonic() == Mnemonic::Dec,
        reg,
        bits,
    };
    remat_if_replaced(lowerings, i, remat, b0)
}

/// The destination of a recomputed instruction: a 16-, 32- or 64-bit legacy
/// register, with its size in bits, its [`Ident::uses`] bit and its host
/// register.
fn remat_dest(ins: &Instruction) -> Option<(Register, u8, u8, u8)> {
    if ins.op0_kind() != OpKind::Register {
        return None;
    }
    let r0 = ins.op0_register();
    let bits = (r0.size() * 8) as u8;
    let b0 = gpr_bit(r0)?;
    matches!(bits, 16 | 32 | 64).then(|| (r0, bits, b0, GUEST_TO_HOST[gpr_index(r0) as usize]))
}

/// `remat` for instruction `i`, if memory accesses follow it before an
/// instruction that replaces every flag, and nothing in between reads a
/// flag, writes some but not all, or writes the registers (`inputs`, as
/// [`Ident::uses`] bits) the recomputation reads.
fn remat_if_replaced(lowerings: &[Lowering], i: usize, remat: Remat, inputs: u8) -> Option<Remat> {
    let mut any_mem = false;
    for l in &lowerings[i + 1..] {
        match l {
            Lowering::Ident(y) => {
                let g = y.flags;
                if g.read != 0 || g.only_if_dead && g.written != 0 {
                    return None;
                }
                if g.written != 0 {
                    return (g.written == ARITH && any_mem).then_some(remat);
                }
                if y.writes & inputs != 0 {
                    return None;
                }
            }
            Lowering::Mem(m) => {
                let g = m.op.flags;
                if g.read != 0 || g.only_if_dead && g.written != 0 {
                    return None;
                }
                any_mem = true;
                if g.written != 0 {
                    // Its own access is the last that needs them.
                    return (g.written == ARITH).then_some(remat);
                }
                if m.op.writes & inputs != 0 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    None
}

/// The arithmetic flags instruction `ins` always clears, whatever its
/// operands hold: OF and CF for TEST, which leaves AF undefined, and OF, CF
/// and AF too for CMP with an immediate zero (SDM vol. 2: TEST clears OF and
/// CF; CMP sets them as SUB does, and subtracting zero borrows and overflows
/// nowhere).
pub fn cleared_flags(ins: &Instruction) -> u64 {
    match ins.mnemonic() {
        Mnemonic::Test => OF | CF,
        Mnemonic::Cmp if ins.op_count() == 2 && is_imm(ins.op1_kind()) && ins.immediate(1) == 0 => {
            OF | CF | AF
        }
        _ => 0,
    }
}

/// Per instruction, whether running it again leaves everything but host
/// EFLAGS as it was: CMP and TEST, which write no register and no memory.
/// The emitter may then capture their flags on a way out only, running the
/// instruction again there (`emit::Emitter::defers_capture`).
pub fn reruns(insns: &[Insn]) -> Vec<bool> {
    insns
        .iter()
        .map(|i| matches!(i.ins.mnemonic(), Mnemonic::Cmp | Mnemonic::Test))
        .collect()
}

/// For a self-loop that closes with a register CMP or TEST and a Jcc, the
/// number of instructions at its start that only its flags make live there:
/// memory and register instructions that neither read nor write a flag, and
/// write no register the compare reads, up to the first that writes flags,
/// from where register instructions replace all six before anything reads
/// them (an `inc eax` then the compare itself will do). Their out-of-line
/// paths (a TLB fill, the helper) need the flags exact, which is all that
/// makes them live at the loop's start; the emitter can then leave the
/// compare's flags uncaptured on the way back and have those paths run the
/// compare again (`emit::Emitter::defers_capture`). `None` where no such
/// prefix exists, or where it holds no memory access (nothing then needs the
/// flags at the start, and `entry_live` is already empty).
pub fn loop_prefix(insns: &[Insn], lowerings: &[Lowering]) -> Option<usize> {
    let n = lowerings.len();
    if n < 3 {
        return None;
    }
    let Lowering::Ident(cmp) = &lowerings[n - 2] else {
        return None;
    };
    let f = cmp.flags;
    if !matches!(insns[n - 2].ins.mnemonic(), Mnemonic::Cmp | Mnemonic::Test)
        || f.read != 0
        || f.written != ARITH
        || f.only_if_dead
        || f.count_fixed()
    {
        return None;
    }
    let mut factory = InstructionInfoFactory::new();
    let read: Vec<Register> = factory
        .info(&insns[n - 2].ins)
        .used_registers()
        .iter()
        .map(|u| u.register().full_register())
        .collect();
    let mut any_mem = false;
    let mut k = None;
    for (i, l) in lowerings[..n - 1].iter().enumerate() {
        let (g, is_mem) = match l {
            Lowering::Ident(y) => (y.flags, false),
            Lowering::Mem(m) if !m.df_clear && !m.div_check => (m.op.flags, true),
            _ => return None,
        };
        if g.read != 0 {
            return None;
        }
        if g.written != 0 {
            k = Some(i);
            break;
        }
        let clobbers = factory
            .info(&insns[i].ins)
            .used_registers()
            .iter()
            .any(|u| {
                matches!(
                    u.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                ) && read.contains(&u.register().full_register())
            });
        if clobbers {
            return None;
        }
        any_mem |= is_mem;
    }
    let k = k.filter(|_| any_mem)?;
    // From the join on, register instructions write all six flags before
    // anything reads one (or can fault and push them).
    let mut covered = 0;
    for l in &lowerings[k..n - 1] {
        let Lowering::Ident(y) = l else {
            return None;
        };
        let g = y.flags;
        if g.read & !covered != 0 || g.only_if_dead || g.count_fixed() {
            return None;
        }
        covered |= g.written;
        if covered & ARITH == ARITH {
            return Some(k);
        }
    }
    None
}

/// Whether the arithmetic flags are dead where `code` starts (`bits`-bit code):
/// its first instructions write none and cannot fault, up to one that writes
/// all six without reading any and cannot fault either, all within `code`.
/// Returns how many bytes that took (the caller marks them as code, so that a
/// write to them drops what relied on this), or `None`.
///
/// A fragment whose unit chains straight to such code need not capture its
/// flags on that way (`emit::Emitter::defers_capture`): nothing can observe
/// them before they are replaced, neither an instruction nor an exception
/// frame. Register MOV, MOVZX, MOVSX, MOVSXD, LEA, NOT and XCHG pass;
/// register and immediate ADD, SUB, AND, OR, XOR, CMP, TEST and NEG write all
/// six.
pub fn flags_dead_at(bits: u32, code: &[u8]) -> Option<usize> {
    let mut d = iced_x86::Decoder::new(bits, code, iced_x86::DecoderOptions::NONE);
    for _ in 0..6 {
        if !d.can_decode() {
            return None;
        }
        let ins = d.decode();
        if ins.is_invalid() || ins.has_lock_prefix() {
            return None;
        }
        let no_mem = (0..ins.op_count()).all(|k| {
            let kind = ins.op_kind(k);
            matches!(kind, OpKind::Register | OpKind::Immediate64) || is_imm(kind)
        });
        match ins.mnemonic() {
            Mnemonic::Add
            | Mnemonic::Sub
            | Mnemonic::And
            | Mnemonic::Or
            | Mnemonic::Xor
            | Mnemonic::Cmp
            | Mnemonic::Test
            | Mnemonic::Neg
                if no_mem =>
            {
                return Some(d.position());
            }
            Mnemonic::Mov
            | Mnemonic::Movzx
            | Mnemonic::Movsx
            | Mnemonic::Movsxd
            | Mnemonic::Not
            | Mnemonic::Xchg
                if no_mem && (0..ins.op_count()).all(|k| plain_gpr(&ins, k)) => {}
            Mnemonic::Lea => {}
            _ => return None,
        }
    }
    None
}

/// Operand `k` of `ins` is an immediate or a general register (not a
/// segment, control or debug register, whose moves are sensitive).
fn plain_gpr(ins: &Instruction, k: u32) -> bool {
    ins.op_kind(k) != OpKind::Register || ins.op_register(k).is_gpr()
}

/// The instructions at which the emitter reloads host EFLAGS from `CpuState`,
/// with the flags the reload is for, given the captures `caps`. This mirrors
/// `emit::Emitter`'s flag bookkeeping (`host_valid`, `pending`).
fn flag_reloads(lowerings: &[Lowering], caps: &[bool]) -> Vec<(usize, u64)> {
    // `pending`: the flags written by a capture not yet merged, if any.
    let (mut valid, mut pending) = (0u64, None::<u64>);
    let mut out = Vec::new();
    for (i, l) in lowerings.iter().enumerate() {
        let f = match l {
            Lowering::Div(_) => {
                // The emitter settles the flags before the checks, and the
                // host's DIV leaves its flags undefined.
                valid = 0;
                pending = None;
                continue;
            }
            Lowering::Ident(x) => {
                let f = x.flags;
                if f.written != 0 {
                    // A capture the instruction overwrites entirely is dropped,
                    // any other merged (which clobbers host flags).
                    let settles = f.only_if_dead || f.count_fixed();
                    if pending.is_some_and(|p| p & !f.written != 0 || settles) {
                        valid = 0;
                    }
                    pending = None;
                }
                if f.read & !valid != 0 {
                    out.push((i, f.read));
                    pending = None;
                    valid = ARITH;
                }
                f
            }
            Lowering::Mem(m) | Lowering::Sse(SseOp { x: m, .. }) => {
                pending = None;
                valid = if m.op.flags.read != 0 { ARITH } else { 0 };
                m.op.flags
            }
            Lowering::Helper(_) => {
                valid = 0;
                pending = None;
                continue;
            }
            Lowering::Branch(b) => {
                if let Some(cc) = b.cc {
                    if cond_flags(cc) & !valid != 0 {
                        out.push((i, cond_flags(cc)));
                    }
                }
                continue;
            }
            Lowering::Xfer(_) => continue,
            Lowering::Rdtsc(_) | Lowering::Flags(_) => {
                valid = 0;
                pending = None;
                continue;
            }
        };
        if f.written != 0 {
            valid = (valid & !f.written) | f.defined;
            if caps[i] {
                // A whole capture goes straight into R14: nothing to merge.
                pending = (!f.whole()).then_some(f.written);
                if f.szp_from.is_some() || f.count_fixed() {
                    // The capture's TEST (and the fix-up's) leaves host EFLAGS
                    // untrusted.
                    valid = 0;
                }
            }
        }
    }
    out
}

/// Per instruction, whether it clears the interrupt shadow before it runs:
/// the one after an STI in the same unit (STI's shadow covers exactly that
/// instruction; the interpreter's unit loop clears it there too).
pub fn shadow_clears(insns: &[Insn]) -> Vec<bool> {
    let mut out = vec![false; insns.len()];
    for (i, w) in insns.windows(2).enumerate() {
        out[i + 1] = w[0].ins.mnemonic() == Mnemonic::Sti;
    }
    out
}

/// Per instruction, whether it may load a segment register without ending the
/// unit (MOV and POP to a segment register, LDS..LGS, LSS). Far transfers and
/// other segment loaders end their unit.
pub fn seg_writes(insns: &[Insn]) -> Vec<bool> {
    insns
        .iter()
        .map(|i| {
            let ins = &i.ins;
            (ins.op_count() > 0
                && ins.op0_kind() == OpKind::Register
                && ins.op0_register().is_segment_register())
                || matches!(
                    ins.mnemonic(),
                    Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss
                )
        })
        .collect()
}

/// Whether the run loop need not look after this unit before the next: it
/// has no instruction that can raise an interrupt line or change what the loop
/// checks, that is no sensitive one (always a unit's last) and no x87 (FERR#).
/// IN and OUT (`HelperKind::PortIo`) leave the fragment through their helper
/// when their access wants the run loop, so they do not count.
fn quiet(lowerings: &[Lowering]) -> bool {
    lowerings
        .iter()
        .all(|l| !matches!(l, Lowering::Helper(HelperKind::Sensitive | HelperKind::X87)))
}

/// Whether a unit that ends with a software interrupt or an interrupt
/// return (INT n, INT3, INTO, INT1, IRET), which the helper runs, may go on
/// from there through the jump cache without returning to the run loop
/// (`runtime::helper_next` decides at run time): every instruction before it
/// is [`quiet`] and none loads a segment register.
pub fn dispatches(insns: &[Insn], lowerings: &[Lowering]) -> bool {
    let Some((last, before)) = insns.split_last() else {
        return false;
    };
    let event = matches!(
        last.ins.mnemonic(),
        Mnemonic::Int
            | Mnemonic::Int3
            | Mnemonic::Into
            | Mnemonic::Int1
            | Mnemonic::Iret
            | Mnemonic::Iretd
            | Mnemonic::Iretq
    );
    event
        && matches!(lowerings.last(), Some(Lowering::Helper(_)))
        && quiet(&lowerings[..lowerings.len() - 1])
        && !seg_writes(before).contains(&true)
}

/// Whether a unit may go on to the next fragment without returning: it ends
/// with an inline branch and is [`quiet`].
pub fn may_chain(lowerings: &[Lowering]) -> bool {
    matches!(
        lowerings.last(),
        Some(Lowering::Branch(_) | Lowering::Xfer(_))
    ) && quiet(lowerings)
}

/// Whether a unit that does not end with an inline branch may go on to the
/// next fragment without returning: it is quiet, ends on an ordinary
/// instruction (`plain_end`), and that instruction (`last`) does not branch, so
/// the next RIP is always the address after the unit.
pub fn may_fall_through(lowerings: &[Lowering], last: &Instruction, plain_end: bool) -> bool {
    !matches!(
        lowerings.last(),
        Some(Lowering::Branch(_) | Lowering::Xfer(_))
    ) && plain_end
        && last.flow_control() == iced_x86::FlowControl::Next
        && quiet(lowerings)
}

/// How one instruction is lowered. 64-bit code (`is_long`) has the IDENT
/// list (any operand size, LEA with 64-bit and RIP-relative addresses), one
/// memory operand, PUSH/POP of a register or an immediate, near CALL, RET and
/// register JMP, relative branches, RDTSC, CLI and STI inline; guest R8-R15
/// are held in scratch registers around the instruction that names them
/// ([`HighRegs`]). DIV of memory and LEAVE are inline as in 32-bit code; its
/// string forms, DIV of a register and PUSHF/POPF take the helper.
fn lower(insn: &Insn, is_last: bool, factory: &mut InstructionInfoFactory) -> Lowering {
    let ins = &insn.ins;
    if ins.is_invalid() {
        return Lowering::Helper(HelperKind::Other);
    }
    let long = is_long(ins);
    if is_last && (ins.is_jcc_short_or_near() || ins.is_jmp_short_or_near()) {
        return Lowering::Branch(Branch {
            cc: ins.is_jcc_short_or_near().then(|| ins.condition_code()),
            rel: insn.rel,
            size: insn.size,
        });
    }
    if is_last {
        if let Some(x) = xfer(insn) {
            return Lowering::Xfer(x);
        }
    }
    if matches!(ins.mnemonic(), Mnemonic::Rdtsc | Mnemonic::Rdtscp) && !ins.has_lock_prefix() {
        return Lowering::Rdtsc(ins.mnemonic() == Mnemonic::Rdtscp);
    }
    // PUSHF/POPF's inline forms need a 32-bit stack.
    if let Some(f) = flags_op(insn).filter(|f| !long || matches!(f, FlagsOp::Cli | FlagsOp::Sti)) {
        return Lowering::Flags(f);
    }
    if let Some(d) = div_op(insn).filter(|_| !long) {
        return Lowering::Div(d);
    }
    if let Some(x) = ident(insn, factory) {
        return Lowering::Ident(x);
    }
    if let Some(x) = sse_op(insn, factory) {
        return Lowering::Sse(x);
    }
    let access = if long {
        stack_op64(insn)
    } else {
        stack_op(insn).or_else(|| string_op(insn))
    }
    .or_else(|| leave_op(insn));
    match access.or_else(|| mem_op(insn, factory)) {
        Some(x) => Lowering::Mem(x),
        None => Lowering::Helper(HelperKind::of(ins)),
    }
}

/// On a machine of one vCPU, PAUSE is the NOP it architecturally is: no other
/// vCPU could take the turn its hint offers (`fetch_unit` lets such a unit end
/// plainly, and the interpreter's handler leaves the hint unset), so it lowers
/// to nothing and the unit may chain, as a spin-wait loop then does.
pub fn pause_as_nop(insns: &[Insn], lowerings: &mut [Lowering]) {
    for (insn, l) in insns.iter().zip(lowerings.iter_mut()) {
        if insn.ins.mnemonic() == Mnemonic::Pause {
            *l = Lowering::Ident(Ident {
                bytes: Vec::new(),
                uses: 0,
                writes: 0,
                flags: FlagSpec::NONE,
            });
        }
    }
}

/// Whether `ins` was decoded as 64-bit code.
fn is_long(ins: &Instruction) -> bool {
    ins.code_size() == iced_x86::CodeSize::Code64
}

/// Guest ESP, as a [`Ident::uses`] bit.
const ESP_BIT: u8 = 1 << 4;

/// A stack access of `size` bytes the emitter completes: at `[ESP - size]`
/// for a store, `[ESP]` for a load (a 32-bit stack).
fn stack_access(write: bool, size: u8) -> Option<MemOp> {
    let addr = match (write, size) {
        (true, 8) => Instruction::with2(
            Code::Lea_r64_m,
            Register::R10,
            MemoryOperand::with_base_displ(Register::R8, -8),
        ),
        (false, 8) => Instruction::with2(Code::Mov_r64_rm64, Register::R10, Register::R8),
        (true, _) => Instruction::with2(
            Code::Lea_r32_m,
            Register::R10D,
            MemoryOperand::with_base_displ(Register::R8, -i64::from(size)),
        ),
        (false, _) => Instruction::with2(Code::Mov_r32_rm32, Register::R10D, Register::R8D),
    }
    .ok()?;
    let mut enc = Encoder::new(64);
    enc.encode(&addr, 0).ok()?;
    Some(MemOp {
        op: Ident {
            bytes: Vec::new(),
            uses: ESP_BIT,
            writes: ESP_BIT,
            flags: FlagSpec::NONE,
        },
        addr: enc.take_buffer(),
        seg: 2,
        size,
        write,
        esp_delta: if write { -(size as i8) } else { size as i8 },
        df_clear: false,
        div_check: false,
        stack32: false,
    })
}

/// DIV r32 or DIV r16 (not ESP/SP, which the emitter's checks do not name),
/// for [`Lowering::Div`].
fn div_op(insn: &Insn) -> Option<Ident> {
    let ins = &insn.ins;
    if ins.has_lock_prefix()
        || !matches!(ins.code(), Code::Div_rm32 | Code::Div_rm16)
        || ins.op0_kind() != OpKind::Register
    {
        return None;
    }
    let r = ins.op0_register();
    let bit = gpr_bit(r).filter(|&b| b != ESP_BIT)?;
    let mut enc = Encoder::new(64);
    enc.encode(ins, 0).ok()?;
    Some(Ident {
        bytes: enc.take_buffer(),
        uses: bit | 0b101,
        writes: 0b101,
        // The interpreter leaves the flags alone; the emitter treats host
        // EFLAGS as clobbered after the host's DIV.
        flags: FlagSpec::NONE,
    })
}

/// LODS, STOS and SCAS without a repeat prefix: one access at DS:(E)SI (or its
/// override) or ES:(E)DI, then the index register moves forward by the element
/// size with LEA (so SCAS's flags, those of CMP, survive); inline only while DF
/// is clear.
fn string_op(insn: &Insn) -> Option<MemOp> {
    use Mnemonic as M;
    let ins = &insn.ins;
    if ins.has_rep_prefix() || ins.has_repne_prefix() || ins.has_lock_prefix() {
        return None;
    }
    let (acc, size) = match ins.memory_size().size() {
        1 => (Register::AL, 1u8),
        2 => (Register::AX, 2),
        4 => (Register::EAX, 4),
        _ => return None,
    };
    // String operands are their own operand kinds (no base register).
    let index = (0..ins.op_count()).find_map(|i| match ins.op_kind(i) {
        OpKind::MemorySegESI => Some(Register::ESI),
        OpKind::MemorySegSI => Some(Register::SI),
        OpKind::MemoryESEDI => Some(Register::EDI),
        OpKind::MemoryESDI => Some(Register::DI),
        _ => None,
    })?;
    let wide = matches!(index, Register::ESI | Register::EDI);
    let at_r10 = MemoryOperand::with_base(Register::R10);
    // Per element size (1, 2, 4): the host form, whether it stores, its flags.
    let (codes, write, flags) = match ins.mnemonic() {
        M::Lodsb | M::Lodsw | M::Lodsd => (
            [Code::Mov_r8_rm8, Code::Mov_r16_rm16, Code::Mov_r32_rm32],
            false,
            FlagSpec::NONE,
        ),
        M::Stosb | M::Stosw | M::Stosd => (
            [Code::Mov_rm8_r8, Code::Mov_rm16_r16, Code::Mov_rm32_r32],
            true,
            FlagSpec::NONE,
        ),
        M::Scasb | M::Scasw | M::Scasd => (
            [Code::Cmp_r8_rm8, Code::Cmp_r16_rm16, Code::Cmp_r32_rm32],
            false,
            FlagSpec::writes(ARITH, ARITH),
        ),
        _ => return None,
    };
    let code = codes[usize::from(size).trailing_zeros() as usize];
    let op = if write {
        Instruction::with2(code, at_r10, acc)
    } else {
        Instruction::with2(code, acc, at_r10)
    }
    .ok()?;
    let mut enc = Encoder::new(64);
    enc.encode(&op, 0).ok()?;
    let (full, reg) = if index == Register::ESI || index == Register::SI {
        (
            Register::RSI,
            if wide { Register::ESI } else { Register::SI },
        )
    } else {
        (
            Register::RDI,
            if wide { Register::EDI } else { Register::DI },
        )
    };
    let step = Instruction::with2(
        if wide {
            Code::Lea_r32_m
        } else {
            Code::Lea_r16_m
        },
        reg,
        MemoryOperand::with_base_displ(full, i64::from(size)),
    )
    .ok()?;
    enc.encode(&step, 0).ok()?;
    let bytes = enc.take_buffer();
    let addr = if wide {
        Instruction::with2(Code::Mov_r32_rm32, Register::R10D, reg)
    } else {
        Instruction::with2(Code::Movzx_r32_rm16, Register::R10D, reg)
    }
    .ok()?;
    enc.encode(&addr, 0).ok()?;
    // ES:(E)DI cannot be overridden (iced's `memory_segment` names DS there);
    // DS:(E)SI can.
    let seg = if matches!(index, Register::EDI | Register::DI) {
        0
    } else {
        (ins.memory_segment() as u32).wrapping_sub(Register::ES as u32)
    };
    if seg > 5 {
        return None;
    }
    let idx_bit = gpr_bit(reg)?;
    Some(MemOp {
        op: Ident {
            bytes,
            uses: idx_bit | 1,
            writes: idx_bit | if write || flags.written != 0 { 0 } else { 1 },
            flags,
        },
        addr: enc.take_buffer(),
        seg: seg as u8,
        size,
        write,
        esp_delta: 0,
        df_clear: true,
        div_check: false,
        stack32: false,
    })
}

/// The inline form of CLI, STI, PUSHF or POPF (see [`FlagsOp`]).
fn flags_op(insn: &Insn) -> Option<FlagsOp> {
    let ins = &insn.ins;
    if ins.has_lock_prefix() {
        return None;
    }
    let size = insn.size;
    Some(match ins.mnemonic() {
        Mnemonic::Cli => FlagsOp::Cli,
        Mnemonic::Sti => FlagsOp::Sti,
        Mnemonic::Pushf | Mnemonic::Pushfd if matches!(size, 2 | 4) => {
            FlagsOp::Pushf(stack_access(true, size)?)
        }
        Mnemonic::Popf | Mnemonic::Popfd if matches!(size, 2 | 4) => {
            FlagsOp::Popf(stack_access(false, size)?)
        }
        _ => return None,
    })
}

/// The inline form of a near CALL/RET/JMP, if it has one (see [`Xfer`]).
fn xfer(insn: &Insn) -> Option<Xfer> {
    let ins = &insn.ins;
    let size = insn.size;
    if size != 4 && !(size == 8 && is_long(ins)) {
        return None;
    }
    let reg = || {
        let r = ins.op0_register();
        gpr_bit(r)
            .filter(|&b| b != ESP_BIT && r.size() == usize::from(size))
            .map(|b| b.trailing_zeros() as u8)
    };
    let stack = |write: bool| stack_access(write, size);
    let (target, stack) = match ins.code() {
        Code::Call_rel32_32 | Code::Call_rel32_64 => {
            (XferTarget::Rel(insn.rel), Some(stack(true)?))
        }
        Code::Call_rm32 | Code::Call_rm64 if ins.op0_kind() == OpKind::Register => {
            (XferTarget::Reg(reg()?), Some(stack(true)?))
        }
        Code::Jmp_rm32 | Code::Jmp_rm64 if ins.op0_kind() == OpKind::Register => {
            (XferTarget::Reg(reg()?), None)
        }
        Code::Retnd | Code::Retnq => (XferTarget::Ret(0), Some(stack(false)?)),
        Code::Retnd_imm16 | Code::Retnq_imm16 => {
            (XferTarget::Ret(ins.immediate16()), Some(stack(false)?))
        }
        _ => return None,
    };
    Some(Xfer { target, stack })
}

/// PUSH of a register or an immediate, POP into a register, with a 32-bit
/// stack: a store to `[ESP - size]` then ESP -= size, or a load from `[ESP]`
/// then ESP += size. Flags are untouched.
fn stack_op(insn: &Insn) -> Option<MemOp> {
    let ins = &insn.ins;
    let size = u32::from(insn.size);
    if !matches!(size, 2 | 4) {
        return None;
    }
    let wide = size == 4;
    let at_r10 = MemoryOperand::with_base(Register::R10);
    let reg_of = |ins: &Instruction| {
        (ins.op0_kind() == OpKind::Register)
            .then(|| ins.op0_register())
            .filter(|r| gpr_bit(*r).is_some())
    };
    let (host, uses, writes, delta) = match ins.code() {
        Code::Push_r16 | Code::Push_r32 | Code::Push_rm16 | Code::Push_rm32 => {
            let r = reg_of(ins)?;
            let code = if wide {
                Code::Mov_rm32_r32
            } else {
                Code::Mov_rm16_r16
            };
            let host = Instruction::with2(code, at_r10, host_reg(r)).ok()?;
            (host, gpr_bit(r)? | ESP_BIT, ESP_BIT, -(size as i8))
        }
        Code::Pushd_imm32 | Code::Pushd_imm8 | Code::Push_imm16 | Code::Pushw_imm8 => {
            let v = ins.immediate(0);
            let host = if wide {
                Instruction::with2(Code::Mov_rm32_imm32, at_r10, v as u32).ok()?
            } else {
                Instruction::with2(Code::Mov_rm16_imm16, at_r10, u32::from(v as u16)).ok()?
            };
            (host, ESP_BIT, ESP_BIT, -(size as i8))
        }
        Code::Pop_r16 | Code::Pop_r32 | Code::Pop_rm16 | Code::Pop_rm32 => {
            let r = reg_of(ins)?;
            let code = if wide {
                Code::Mov_r32_rm32
            } else {
                Code::Mov_r16_rm16
            };
            let host = Instruction::with2(code, host_reg(r), at_r10).ok()?;
            // The destination counts as used: a 16-bit load keeps its upper half,
            // and the emitter only writes back registers it has loaded.
            let bit = gpr_bit(r)?;
            (host, bit | ESP_BIT, bit | ESP_BIT, size as i8)
        }
        _ => return None,
    };
    let mut enc = Encoder::new(64);
    enc.encode(&host, 0).ok()?;
    let bytes = enc.take_buffer();
    let offset = if delta < 0 {
        Instruction::with2(
            Code::Lea_r32_m,
            Register::R10D,
            MemoryOperand::with_base_displ(Register::R8, i64::from(delta)),
        )
    } else {
        Instruction::with2(Code::Mov_r32_rm32, Register::R10D, Register::R8D)
    }
    .ok()?;
    enc.encode(&offset, 0).ok()?;
    Some(MemOp {
        op: Ident {
            bytes,
            uses,
            writes,
            flags: FlagSpec::NONE,
        },
        addr: enc.take_buffer(),
        seg: 2,
        size: size as u8,
        write: delta < 0,
        esp_delta: delta,
        df_clear: false,
        div_check: false,
        stack32: false,
    })
}

/// LEAVE with the operand size of its code (32 or 64 bits): ESP = EBP + 4,
/// then EBP = the dword at the old EBP (RSP, RBP and a qword in 64-bit code).
/// The load is probed at EBP before either register changes, so a fault
/// leaves both for the helper.
fn leave_op(insn: &Insn) -> Option<MemOp> {
    let ins = &insn.ins;
    let long = is_long(ins);
    let (size, rbp, rsp, code_mov, code_lea, r10) = match (ins.code(), long) {
        (Code::Leaved, false) => (
            4u8,
            Register::EBP,
            Register::R8D,
            Code::Mov_r32_rm32,
            Code::Lea_r32_m,
            Register::R10D,
        ),
        (Code::Leaveq, true) => (
            8,
            Register::RBP,
            Register::R8,
            Code::Mov_r64_rm64,
            Code::Lea_r64_m,
            Register::R10,
        ),
        _ => return None,
    };
    let mut enc = Encoder::new(64);
    let lea = Instruction::with2(
        code_lea,
        rsp,
        MemoryOperand::with_base_displ(Register::RBP, i64::from(size)),
    )
    .ok()?;
    let load = Instruction::with2(code_mov, rbp, MemoryOperand::with_base(Register::R10)).ok()?;
    enc.encode(&lea, 0).ok()?;
    enc.encode(&load, 0).ok()?;
    let bytes = enc.take_buffer();
    enc.encode(&Instruction::with2(code_mov, r10, rbp).ok()?, 0)
        .ok()?;
    Some(MemOp {
        op: Ident {
            bytes,
            uses: ESP_BIT | 1 << 5,
            writes: ESP_BIT | 1 << 5,
            flags: FlagSpec::NONE,
        },
        addr: enc.take_buffer(),
        seg: 2,
        size,
        write: false,
        esp_delta: 0,
        df_clear: false,
        div_check: false,
        stack32: !long,
    })
}

/// PUSH of a register or an immediate, POP into a register, in 64-bit code
/// (a 64-bit operand size): a store to `[RSP - 8]` then RSP -= 8, or a load
/// from `[RSP]` then RSP += 8. R8-R15 through R11 ([`HighRegs`]).
fn stack_op64(insn: &Insn) -> Option<MemOp> {
    let ins = &insn.ins;
    if insn.size != 8 || ins.has_lock_prefix() {
        return None;
    }
    let at_r10 = MemoryOperand::with_base(Register::R10);
    let reg = || (ins.op0_kind() == OpKind::Register).then(|| ins.op0_register());
    let (host, high, write) = match ins.code() {
        Code::Push_r64 | Code::Push_rm64 => {
            let r = reg()?;
            let high = HighRegs::assign(high_bit(r).unwrap_or(0), 0, &[Register::R11])?;
            let host = Instruction::with2(Code::Mov_rm64_r64, at_r10, high.host(r)?).ok()?;
            (host, high, true)
        }
        Code::Pushq_imm32 | Code::Pushq_imm8 => {
            let v = ins.immediate(0) as i64 as i32;
            let host = Instruction::with2(Code::Mov_rm64_imm32, at_r10, v).ok()?;
            (host, HighRegs::default(), true)
        }
        Code::Pop_r64 | Code::Pop_rm64 => {
            let r = reg()?;
            let bit = high_bit(r).unwrap_or(0);
            let high = HighRegs::assign(bit, bit, &[Register::R11])?;
            let host = Instruction::with2(Code::Mov_r64_rm64, high.host(r)?, at_r10).ok()?;
            (host, high, false)
        }
        _ => return None,
    };
    if reg().is_some_and(|r| gpr_bit(r).is_none() && high_bit(r).is_none()) {
        return None;
    }
    let access = stack_access(write, 8)?;
    Some(MemOp {
        op: Ident {
            bytes: high.wrap(&host)?,
            uses: ESP_BIT,
            writes: ESP_BIT,
            flags: FlagSpec::NONE,
        },
        ..access
    })
}

/// An instruction of the IDENT list with one memory operand (not LEA), its
/// other operands registers or immediates.
fn mem_op(insn: &Insn, factory: &mut InstructionInfoFactory) -> Option<MemOp> {
    let ins = &insn.ins;
    if ins.has_rep_prefix() || ins.has_repne_prefix() || ins.mnemonic() == Mnemonic::Lea {
        return None;
    }
    let size = u32::from(insn.size);
    let long = is_long(ins);
    let sizes_ok = matches!(size, 1 | 2 | 4) || (long && size == 8);
    let addr_ok = matches!(insn.mem.addr_mask, 0xFFFF | 0xFFFF_FFFF)
        || (long && insn.mem.addr_mask == u64::MAX);
    if !sizes_ok || !addr_ok {
        return None;
    }
    // DIV m: the interpreter leaves the flags alone, and the host's are only
    // clobbered (see `MemOp::div_check`).
    let div = matches!(ins.code(), Code::Div_rm16 | Code::Div_rm32 | Code::Div_rm64)
        && !ins.has_lock_prefix();
    let flags = if div {
        FlagSpec::NONE
    } else {
        flag_spec(ins, size)?
    };
    let mut mems = 0;
    // R8-R15 among the operands (not the address): at most one, in R11 (R10
    // holds the address).
    let mut op_high = 0u16;
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Register => {
                let r = ins.op_register(i);
                match (gpr_bit(r), high_bit(r)) {
                    (Some(_), _) => {}
                    (None, Some(b)) if long => op_high |= b,
                    _ => return None,
                }
            }
            k if is_imm(k) => {}
            OpKind::Memory => mems += 1,
            _ => return None,
        }
    }
    let access_size = ins.memory_size().size();
    if mems != 1
        || !(matches!(access_size, 1 | 2 | 4) || (long && access_size == 8))
        || insn.mem.seg > 5
    {
        return None;
    }
    let info = factory.info(ins);
    let write = match info.used_memory() {
        [m] => match m.access() {
            OpAccess::Read | OpAccess::CondRead => false,
            OpAccess::Write
            | OpAccess::CondWrite
            | OpAccess::ReadWrite
            | OpAccess::ReadCondWrite => true,
            _ => return None,
        },
        _ => return None,
    };
    let (uses, writes, _, hi_writes) = usage_split(info.used_registers(), true)?;
    let high = HighRegs::assign(op_high, hi_writes & op_high, &[Register::R11])?;
    let mut host = host_insn(ins, &high)?;
    let code = match host.code() {
        Code::Mov_AL_moffs8 => Code::Mov_r8_rm8,
        Code::Mov_AX_moffs16 => Code::Mov_r16_rm16,
        Code::Mov_EAX_moffs32 => Code::Mov_r32_rm32,
        Code::Mov_moffs8_AL => Code::Mov_rm8_r8,
        Code::Mov_moffs16_AX => Code::Mov_rm16_r16,
        Code::Mov_moffs32_EAX => Code::Mov_rm32_r32,
        Code::Mov_RAX_moffs64 => Code::Mov_r64_rm64,
        Code::Mov_moffs64_RAX => Code::Mov_rm64_r64,
        c => c,
    };
    host.set_code(code);
    operand_at_r10(&mut host);
    let bytes = high.wrap(&host)?;
    let mut flags = flags;
    if let Some(lo) = flags.szp_from.filter(|&r| high_bit(r).is_some()) {
        // The product's low half is in R11 until stored.
        flags.szp_from = Some(high.host(lo)?);
    }
    Some(MemOp {
        op: Ident {
            bytes,
            uses,
            writes,
            flags,
        },
        addr: offset_code(insn)?,
        seg: insn.mem.seg,
        size: access_size as u8,
        write,
        esp_delta: 0,
        df_clear: false,
        div_check: div,
        stack32: false,
    })
}

/// Whether the host has the SSE extension `f` (the guest's CPUID may offer
/// what an older host lacks; those forms then take the helper).
fn host_has(f: iced_x86::CpuidFeature) -> bool {
    use iced_x86::CpuidFeature as F;
    #[cfg(target_arch = "x86_64")]
    {
        match f {
            F::SSE | F::SSE2 => true,
            F::SSE3 => std::arch::is_x86_feature_detected!("sse3"),
            F::SSSE3 => std::arch::is_x86_feature_detected!("ssse3"),
            F::SSE4_1 => std::arch::is_x86_feature_detected!("sse4.1"),
            F::SSE4_2 => std::arch::is_x86_feature_detected!("sse4.2"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = f;
        false
    }
}

/// The offset in `CpuState` of guest XMM register `r` (in the FXSAVE image).
fn xmm_offset(r: Register) -> i64 {
    let i = r as usize - Register::XMM0 as usize;
    (core::mem::offset_of!(x86bt_cpu::state::CpuState, fx) + 160 + 16 * i) as i64
}

/// An SSE instruction ([`SseOp`]): a legacy-encoded SSE through SSE4.2 form
/// (not MMX, whose registers alias the x87 stack) whose operands are XMM
/// registers, GPRs, an immediate and at most one explicit memory operand, and
/// which the host runs on the same XMM register numbers: guest XMMn is loaded
/// into host XMMn, so an implicit XMM0 (BLENDV's mask, PCMPxSTRM's result)
/// needs no renaming. An earlier version renamed the registers an instruction
/// names to XMM0 upwards, and PBLENDVB XMM3, XMM0 then took XMM3 as its mask.
/// Left to the helper: RCPPS/RCPSS and RSQRTPS/RSQRTSS, whose approximations
/// differ between CPU models, and DPPS/DPPD, whose intermediate rounding the
/// SDM describes but which the helper keeps as the one definition.
fn sse_op(insn: &Insn, factory: &mut InstructionInfoFactory) -> Option<SseOp> {
    use iced_x86::CpuidFeature as F;
    use Mnemonic as M;
    let ins = &insn.ins;
    let row = table::row(ins)?;
    if row.class != Class::Simd
        || ins.encoding() != iced_x86::EncodingKind::Legacy
        || ins.has_lock_prefix()
        || !matches!(
            row.feature,
            Some(F::SSE | F::SSE2 | F::SSE3 | F::SSSE3 | F::SSE4_1 | F::SSE4_2)
        )
        || !host_has(row.feature?)
        || matches!(
            ins.mnemonic(),
            M::Rcpps | M::Rcpss | M::Rsqrtps | M::Rsqrtss | M::Dpps | M::Dppd | M::Maskmovdqu
        )
    {
        return None;
    }
    let long = is_long(ins);
    let (mut op_high, mut mems) = (0u16, 0);
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Register => {
                let r = ins.op_register(i);
                if r.is_xmm() {
                    continue;
                }
                match (gpr_bit(r), high_bit(r)) {
                    (Some(_), _) => {}
                    (None, Some(b)) if long => op_high |= b,
                    _ => return None,
                }
            }
            OpKind::Immediate8 => {}
            OpKind::Memory => mems += 1,
            _ => return None,
        }
    }
    let info = factory.info(ins);
    // The XMM registers it uses, explicit and implicit, and which it writes.
    let (mut xmms, mut written) = (0u16, 0u16);
    let mut gprs = Vec::new();
    for u in info.used_registers() {
        if u.register().is_xmm() {
            let bit = 1 << (u.register() as usize - Register::XMM0 as usize);
            xmms |= bit;
            if matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            ) {
                written |= bit;
            }
        } else {
            gprs.push(*u);
        }
    }
    let (uses, writes, _, hi_writes) = usage_split(&gprs, true)?;
    let (size, write) = match (mems, info.used_memory()) {
        (0, []) => (0, false),
        (1, [m]) => {
            let size = ins.memory_size().size();
            let addr_ok = matches!(insn.mem.addr_mask, 0xFFFF | 0xFFFF_FFFF)
                || (long && insn.mem.addr_mask == u64::MAX);
            if !matches!(size, 1 | 2 | 4 | 8 | 16) || !addr_ok || insn.mem.seg > 5 {
                return None;
            }
            let write = match m.access() {
                OpAccess::Read => false,
                OpAccess::Write => true,
                _ => return None,
            };
            (size as u8, write)
        }
        _ => return None,
    };
    let scratch: &[Register] = if size == 0 {
        &[Register::R11, Register::R10]
    } else {
        &[Register::R11]
    };
    let high = HighRegs::assign(op_high, hi_writes & op_high, scratch)?;
    let mut host = *ins;
    for i in 0..host.op_count() {
        if host.op_kind(i) == OpKind::Register && !host.op_register(i).is_xmm() {
            host.set_op_register(i, high.host(host.op_register(i))?);
        }
    }
    if size != 0 {
        operand_at_r10(&mut host);
    }
    // A destination the instruction writes whole without reading needs no
    // load: the full-width moves, and MOVSS/MOVSD from memory (which clear
    // the upper lanes).
    use Code as C;
    let whole = match ins.code() {
        C::Movaps_xmm_xmmm128
        | C::Movups_xmm_xmmm128
        | C::Movapd_xmm_xmmm128
        | C::Movupd_xmm_xmmm128
        | C::Movdqa_xmm_xmmm128
        | C::Movdqu_xmm_xmmm128
        | C::Lddqu_xmm_m128
        | C::Movd_xmm_rm32
        | C::Movq_xmm_rm64
        | C::Movq_xmm_xmmm64 => true,
        C::Movss_xmm_xmmm32 | C::Movsd_xmm_xmmm64 => size != 0,
        _ => false,
    };
    let mut enc = Encoder::new(64);
    for n in (0..16u32).filter(|n| xmms & (1 << n) != 0) {
        let r = Register::XMM0 + n;
        // (Not where the destination is also the source: MOVAPS X, X.)
        let named = (0..ins.op_count())
            .filter(|&i| ins.op_kind(i) == OpKind::Register && ins.op_register(i) == r)
            .count();
        let dest_only = whole && ins.op0_kind() == OpKind::Register && ins.op0_register() == r;
        if !(dest_only && named == 1) {
            let at = MemoryOperand::with_base_displ(Register::R15, xmm_offset(r));
            let ld = Instruction::with2(Code::Movdqu_xmm_xmmm128, r, at).ok()?;
            enc.encode(&ld, 0).ok()?;
        }
    }
    let mut bytes = enc.take_buffer();
    bytes.extend(high.wrap(&host)?);
    for n in (0..16u32).filter(|n| written & (1 << n) != 0) {
        let r = Register::XMM0 + n;
        let at = MemoryOperand::with_base_displ(Register::R15, xmm_offset(r));
        let st = Instruction::with2(Code::Movdqu_xmmm128_xmm, at, r).ok()?;
        enc.encode(&st, 0).ok()?;
    }
    bytes.extend(enc.take_buffer());
    let flags = FlagSpec::writes(
        u64::from(row.flags_written),
        u64::from(row.flags_written & !row.flags_undefined),
    );
    if row.flags_read != 0 || flags.written != flags.defined {
        return None;
    }
    let unaligned_ok = matches!(
        ins.mnemonic(),
        M::Movups | M::Movupd | M::Movdqu | M::Lddqu | M::Pcmpestri | M::Pcmpestri64 | M::Pcmpistri
    );
    Some(SseOp {
        x: MemOp {
            op: Ident {
                bytes,
                uses,
                writes,
                flags,
            },
            addr: if size == 0 {
                Vec::new()
            } else {
                offset_code(insn)?
            },
            seg: insn.mem.seg,
            size,
            write,
            esp_delta: 0,
            df_clear: false,
            div_check: false,
            stack32: false,
        },
        // The interpreter's floating-point family (arithmetic, comparisons,
        // conversions) is what can raise a SIMD exception; moves, logic,
        // shuffles, strings and the integer forms cannot.
        float: x86bt_cpu::interp::sse::float::handler(ins).is_some(),
        align16: size == 16 && !unaligned_ok,
    })
}

/// Replaces the memory operand of `host` by `[r10]`, where the probe leaves
/// the host address.
fn operand_at_r10(host: &mut Instruction) {
    host.set_memory_base(Register::R10);
    host.set_memory_index(Register::None);
    host.set_memory_index_scale(1);
    host.set_memory_displacement64(0);
    host.set_memory_displ_size(0);
    host.set_segment_prefix(Register::None);
}

/// Host code computing a memory operand's offset into R10 (LEA or MOV, so host
/// flags survive), masked to the address size.
fn offset_code(insn: &Insn) -> Option<Vec<u8>> {
    let ins = &insn.ins;
    if insn.mem.addr_mask == u64::MAX {
        return offset_code64(insn);
    }
    let wide = insn.mem.addr_mask == 0xFFFF_FFFF;
    let (base, index) = (ins.memory_base(), ins.memory_index());
    if matches!(base, Register::RIP | Register::EIP) {
        // EIP-relative (64-bit code with an address-size prefix): a constant.
        let imm = (ins.memory_displacement64() & insn.mem.addr_mask) as u32;
        let mov = Instruction::with2(Code::Mov_r32_imm32, Register::R10D, imm).ok()?;
        let mut enc = Encoder::new(64);
        enc.encode(&mov, 0).ok()?;
        return Some(enc.take_buffer());
    }
    if high_bit(base).is_some() || high_bit(index).is_some() {
        return None;
    }
    let mut out = Vec::new();
    let mut enc = Encoder::new(64);
    if base == Register::None && index == Register::None {
        let imm = (ins.memory_displacement64() & insn.mem.addr_mask) as u32;
        let mov = Instruction::with2(Code::Mov_r32_imm32, Register::R10D, imm).ok()?;
        enc.encode(&mov, 0).ok()?;
        out.extend(enc.take_buffer());
        return Some(out);
    }
    let disp = i64::from(ins.memory_displacement64() as u32 as i32);
    let reg = |r: Register| {
        if r == Register::None {
            Register::None
        } else {
            host_reg64(r)
        }
    };
    let mem = MemoryOperand::with_base_index_scale_displ_size(
        reg(base),
        reg(index),
        ins.memory_index_scale(),
        disp,
        if disp == 0 { 0 } else { 8 },
    );
    let lea = Instruction::with2(Code::Lea_r32_m, Register::R10D, mem).ok()?;
    enc.encode(&lea, 0).ok()?;
    out.extend(enc.take_buffer());
    if !wide {
        let zx = Instruction::with2(Code::Movzx_r32_rm16, Register::R10D, Register::R10W).ok()?;
        enc.encode(&zx, 0).ok()?;
        out.extend(enc.take_buffer());
    }
    Some(out)
}

/// The flags of an IDENT candidate, or `None` if it is not on the list: the
/// instruction table's `Ident` class and MUL/IMUL, with the flags its row
/// gives. The written flags the SDM leaves undefined are the ones the host may
/// compute otherwise than the interpreter; [`FlagSpec`]'s fix-ups give them the
/// interpreter's values (logic ops clear AF; MUL/IMUL take SF, ZF and PF from
/// the low half of the product, AF clear).
fn flag_spec(ins: &Instruction, size: u32) -> Option<FlagSpec> {
    use Mnemonic as M;
    let row = table::row(ins)?;
    let from_row = FlagSpec {
        read: u64::from(row.flags_read),
        ..FlagSpec::writes(
            u64::from(row.flags_written),
            u64::from(row.flags_written & !row.flags_undefined),
        )
    };
    match (row.class, ins.mnemonic()) {
        // BSWAP of a 16-bit register is undefined; the interpreter gives zero.
        (Class::Ident, M::Bswap) if size < 4 => None,
        (Class::Ident, _) => Some(from_row),
        (Class::MulDiv, M::Mul | M::Imul) => {
            let lo = if ins.op_count() == 1 {
                match size {
                    1 => Register::AL,
                    2 => Register::AX,
                    4 => Register::EAX,
                    _ => Register::RAX,
                }
            } else {
                host_reg(ins.op0_register())
            };
            Some(FlagSpec {
                szp_from: Some(lo),
                ..from_row
            })
        }
        (Class::Shift, M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror) => {
            shift_spec(ins, &row, size)
        }
        _ => None,
    }
}

/// Shifts and rotates by an immediate whose masked count is 1 (rotates) or
/// 1..width-1 (shifts): the counts where the host and the interpreter agree on
/// every defined flag, and the undefined ones are fixed up. Flags by CL, or OF
/// of a rotate past one bit, cannot be reproduced: `only_if_dead`.
fn shift_spec(ins: &Instruction, row: &table::Row, size: u32) -> Option<FlagSpec> {
    use Mnemonic as M;
    let written = u64::from(row.flags_written);
    let rotate = matches!(ins.mnemonic(), M::Rol | M::Ror);
    let dead_only = FlagSpec {
        only_if_dead: true,
        ..FlagSpec::writes(written, 0)
    };
    if ins.op1_kind() == OpKind::Register && ins.op1_register() == Register::CL {
        // By CL: a count of 0 writes no flags, so none may be observed, unless
        // the fix-up makes them exact.
        return Some(FlagSpec {
            count_fix: count_fix(ins, size),
            ..dead_only
        });
    }
    if !matches!(ins.op1_kind(), OpKind::Immediate8) {
        return None;
    }
    let count = ins.immediate8() & if size == 8 { 0x3F } else { 0x1F };
    let width = (size * 8) as u8;
    if count == 0 || (count >= width && !rotate) {
        return None;
    }
    if rotate && count > 1 {
        // OF is undefined past one bit: the fix-up gives it the interpreter's
        // value where it is observed.
        return Some(FlagSpec {
            count_fix: count_fix(ins, size),
            ..dead_only
        });
    }
    let undefined = u64::from(undefined_flags(ins, Some(count)));
    Some(FlagSpec {
        of_from_sf_cf: matches!(ins.mnemonic(), M::Shl | M::Sal) && count > 1,
        ..FlagSpec::writes(written, written & !undefined)
    })
}

/// The [`CountFix`] of a shift or rotate by CL or a rotate by an immediate
/// above one, where it has one: a 32- or
/// 64-bit destination among the eight registers with a host register of
/// their own (R8-R15 in 64-bit code are held in scratch registers, which the
/// fix-up uses).
fn count_fix(ins: &Instruction, size: u32) -> Option<CountFix> {
    use Mnemonic as M;
    let op = match ins.mnemonic() {
        M::Shl | M::Sal => CountOp::Shl,
        M::Shr => CountOp::Shr,
        M::Sar => CountOp::Sar,
        M::Rol => CountOp::Rol,
        M::Ror => CountOp::Ror,
        _ => return None,
    };
    if ins.op0_kind() != OpKind::Register || !matches!(size, 4 | 8) {
        return None;
    }
    let r = ins.op0_register();
    let idx = r.full_register() as u32 - Register::RAX as u32;
    let by_cl = ins.op1_kind() == OpKind::Register;
    // The fix-up reads the count from CL after the instruction, so the
    // destination must not be ECX itself.
    if idx >= 8 || (by_cl && idx == 1) {
        return None;
    }
    Some(CountFix {
        op,
        reg: GUEST_TO_HOST[idx as usize],
        bits: (size * 8) as u8,
        by_cl,
    })
}

/// The host register for guest register `r` (a GPR of 8, 16 or 32 bits).
fn host_reg(r: Register) -> Register {
    match r {
        Register::SPL => Register::R8L,
        Register::SP => Register::R8W,
        Register::ESP => Register::R8D,
        Register::RSP => Register::R8,
        other => other,
    }
}

/// The host 64-bit register that holds the guest GPR `r` belongs to.
fn host_reg64(r: Register) -> Register {
    let idx = r.full_register() as u32 - Register::RAX as u32;
    let h = GUEST_TO_HOST[(idx & 7) as usize];
    [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
    ][h as usize]
}

/// Guest R8-R15 in 64-bit code: each one an instruction names is held in a
/// host scratch register (R11, then R10) around it, loaded from `CpuState`
/// before and stored back after when written. A scratch register of 32 bits
/// zero-extends into the stored 64 bits as the guest's write does, and one of 8
/// or 16 bits keeps the loaded upper bits as the guest's write keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct HighRegs {
    /// (guest register number, the 64-bit host register that holds it, and
    /// whether that is a scratch register loaded and stored around the
    /// instruction rather than the unit's mapped register, [`UnitRegs`]).
    map: Vec<(u32, Register, bool)>,
    /// The guest registers written (bit n - 8).
    writes: u16,
}

/// The guest register number of GPR `r` (0-15).
/// An immediate operand kind (not a far branch's selector and offset).
fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

fn gpr_index(r: Register) -> u32 {
    r.full_register() as u32 - Register::RAX as u32
}

/// The R8-R15 bit of guest register `r` (bit n - 8).
fn high_bit(r: Register) -> Option<u16> {
    if !r.is_gpr() {
        return None;
    }
    let idx = gpr_index(r);
    (8..16).contains(&idx).then(|| 1u16 << (idx - 8))
}

/// The 64-bit register `r64` at `size` bytes (SPL..DIL, not AH..BH, for the
/// low bytes of RSP..RDI).
fn sized(r64: Register, size: usize) -> Register {
    use Register as R;
    let idx = r64 as u32 - R::RAX as u32;
    match size {
        1 if idx < 4 => R::AL + idx,
        1 if idx < 8 => R::SPL + (idx - 4),
        1 => R::R8L + (idx - 8),
        2 => R::AX + idx,
        4 => R::EAX + idx,
        _ => r64,
    }
}

impl HighRegs {
    /// Scratch registers for the guest registers in `used` (bits n - 8), from
    /// `scratch`; `None` if there are more than it has.
    fn assign(used: u16, writes: u16, scratch: &[Register]) -> Option<Self> {
        let unit = UNIT_REGS.get();
        let mut spare = scratch.iter().copied();
        let mut map = Vec::new();
        for idx in (8..16).filter(|i| used & (1 << (i - 8)) != 0) {
            match unit.legacy_of(idx) {
                Some(l) => map.push((idx, host_reg64(Register::RAX + u32::from(l)), false)),
                None => map.push((idx, spare.next()?, true)),
            }
        }
        Some(Self { map, writes })
    }

    /// The host register for guest GPR `r`: its scratch register if it is
    /// one of R8-R15 here, else its fixed host register (`None` for an R8-R15
    /// without one).
    fn host(&self, r: Register) -> Option<Register> {
        if high_bit(r).is_none() {
            return Some(host_reg(r));
        }
        let idx = gpr_index(r);
        let (_, s, _) = self.map.iter().find(|(i, _, _)| *i == idx)?;
        Some(sized(*s, r.size()))
    }

    /// Like [`HighRegs::host`], at 64 bits (an address's base or index).
    fn host64(&self, r: Register) -> Option<Register> {
        if r == Register::None {
            return Some(Register::None);
        }
        if high_bit(r).is_none() {
            return Some(host_reg64(r));
        }
        let idx = gpr_index(r);
        self.map
            .iter()
            .find(|(i, _, _)| *i == idx)
            .map(|(_, s, _)| *s)
    }

    /// Host code loading each scratch register from `CpuState`.
    fn loads(&self) -> Option<Vec<u8>> {
        let mut enc = Encoder::new(64);
        for &(idx, s, _) in self.map.iter().filter(|m| m.2) {
            let at = MemoryOperand::with_base_displ(Register::R15, gpr_offset(idx));
            enc.encode(&Instruction::with2(Code::Mov_r64_rm64, s, at).ok()?, 0)
                .ok()?;
        }
        Some(enc.take_buffer())
    }

    /// Host code storing each written scratch register back.
    fn stores(&self) -> Option<Vec<u8>> {
        let mut enc = Encoder::new(64);
        for &(idx, s, _) in self.map.iter().filter(|m| m.2) {
            if self.writes & (1 << (idx - 8)) != 0 {
                let at = MemoryOperand::with_base_displ(Register::R15, gpr_offset(idx));
                enc.encode(&Instruction::with2(Code::Mov_rm64_r64, at, s).ok()?, 0)
                    .ok()?;
            }
        }
        Some(enc.take_buffer())
    }

    /// `op` between the loads and the stores.
    fn wrap(&self, op: &Instruction) -> Option<Vec<u8>> {
        let mut out = self.loads()?;
        let mut enc = Encoder::new(64);
        enc.encode(op, 0).ok()?;
        out.extend(enc.take_buffer());
        out.extend(self.stores()?);
        Some(out)
    }
}

/// The offset of guest GPR `idx` in `CpuState`.
fn gpr_offset(idx: u32) -> i64 {
    (core::mem::offset_of!(x86bt_cpu::state::CpuState, gpr) + 8 * idx as usize) as i64
}

/// The [`Ident::uses`] bit of guest register `r`: one of the eight legacy
/// GPRs at any width (SPL, BPL, SIL and DIL included), which live in host
/// registers; `None` for R8-R15 and anything else.
fn gpr_bit(r: Register) -> Option<u8> {
    if !r.is_gpr() {
        return None;
    }
    let idx = r.full_register() as u32 - Register::RAX as u32;
    (idx < 8).then(|| 1u8 << idx)
}

/// The guest GPRs an instruction uses and writes (legacy: bit i = GPR i) and
/// the R8-R15 it uses and writes (bit n - 8), or `None` if it uses any other
/// register (segment registers are skipped when `skip_segments`: an address's
/// segment is applied separately).
fn usage_split(used: &[iced_x86::UsedRegister], skip_segments: bool) -> Option<(u8, u8, u16, u16)> {
    let (mut uses, mut writes, mut hi_uses, mut hi_writes) = (0u8, 0u8, 0u16, 0u16);
    for u in used {
        let r = u.register();
        if (r.is_segment_register() && skip_segments) || matches!(r, Register::RIP | Register::EIP)
        {
            // A RIP-relative address is a constant in the fragment.
            continue;
        }
        let written = matches!(
            u.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        if let Some(bit) = high_bit(r) {
            hi_uses |= bit;
            if written {
                hi_writes |= bit;
            }
            continue;
        }
        let bit = gpr_bit(r)?;
        uses |= bit;
        if written {
            writes |= bit;
        }
    }
    Some((uses, writes, hi_uses, hi_writes))
}

fn ident(insn: &Insn, factory: &mut InstructionInfoFactory) -> Option<Ident> {
    let ins = &insn.ins;
    if ins.has_lock_prefix() {
        return None;
    }
    // PAUSE (F3 90) is sensitive (the run loop takes its hint) and never
    // reaches here.
    // PREFETCHh, the fences and ENDBR are the table's no-operations too: a
    // prefetch never faults, and the fences order nothing a CPU that runs
    // one instruction at a time could observe. (CLFLUSH, also in that class,
    // can fault like a load, and stays with the helper.)
    let hint = matches!(
        ins.mnemonic(),
        Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Lfence
            | Mnemonic::Mfence
            | Mnemonic::Sfence
            | Mnemonic::Endbr32
            | Mnemonic::Endbr64
    ) || ins.code() == Code::Prefetchw_m8;
    if ins.mnemonic() == Mnemonic::Nop
        || (hint && table::row(ins).is_some_and(|r| r.class == Class::Nop))
    {
        // No operation (NOP r/m does not access its operand): nothing to emit.
        return Some(Ident {
            bytes: Vec::new(),
            uses: 0,
            writes: 0,
            flags: FlagSpec::NONE,
        });
    }
    if ins.has_rep_prefix() || ins.has_repne_prefix() {
        return None;
    }
    let size = u32::from(insn.size);
    if !(matches!(size, 1 | 2 | 4) || (size == 8 && is_long(ins))) {
        return None;
    }
    let flags = flag_spec(ins, size)?;
    let is_lea = ins.mnemonic() == Mnemonic::Lea;
    let long = is_long(ins);
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Register => {
                let r = ins.op_register(i);
                if gpr_bit(r).is_none() && !(long && high_bit(r).is_some()) {
                    return None;
                }
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
            | OpKind::Immediate64 => {}
            OpKind::Memory if is_lea => {}
            _ => return None,
        }
    }
    let (uses, writes, hi_uses, hi_writes) =
        usage_split(factory.info(ins).used_registers(), is_lea)?;
    let high = HighRegs::assign(hi_uses, hi_writes, &[Register::R11, Register::R10])?;
    let host = if is_lea {
        host_lea(insn, &high)?
    } else {
        host_insn(ins, &high)?
    };
    let mut flags = flags;
    if let Some(lo) = flags.szp_from.filter(|&r| high_bit(r).is_some()) {
        // The product's low half is in a scratch register until stored.
        flags.szp_from = Some(high.host(lo)?);
    }
    Some(Ident {
        bytes: high.wrap(&host)?,
        uses,
        writes,
        flags,
    })
}

/// The guest instruction with host register numbers, in a form valid in 64-bit
/// mode (INC/DEC r16/r32 have no one-byte form there).
fn host_insn(ins: &Instruction, high: &HighRegs) -> Option<Instruction> {
    let mut h = *ins;
    let code = match h.code() {
        Code::Inc_r16 => Code::Inc_rm16,
        Code::Inc_r32 => Code::Inc_rm32,
        Code::Dec_r16 => Code::Dec_rm16,
        Code::Dec_r32 => Code::Dec_rm32,
        c => c,
    };
    h.set_code(code);
    for i in 0..h.op_count() {
        if h.op_kind(i) == OpKind::Register {
            h.set_op_register(i, high.host(h.op_register(i))?);
        }
    }
    Some(h)
}

/// LEA with 64-bit host base and index registers. The low `size` bytes of the
/// 64-bit sum equal the guest's offset truncated to the operand size as long as
/// the operand is no wider than the address (otherwise the helper runs it).
fn host_lea(insn: &Insn, high: &HighRegs) -> Option<Instruction> {
    let ins = &insn.ins;
    let addr_size = match insn.mem.addr_mask {
        0xFFFF => 2,
        0xFFFF_FFFF => 4,
        u64::MAX => 8,
        _ => return None,
    };
    if insn.size > addr_size {
        return None;
    }
    let dst = high.host(ins.op0_register())?;
    if addr_size == 8 {
        return host_lea64(insn, dst, high);
    }
    // The displacement modulo 2^32 is all the low `size` bytes depend on.
    let disp = i64::from(ins.memory_displacement64() as u32 as i32);
    let (base, index) = (ins.memory_base(), ins.memory_index());
    if (base == Register::None || base == Register::EIP) && index == Register::None {
        let imm = ins.memory_displacement64() & insn.mem.addr_mask;
        return if insn.size == 2 {
            Instruction::with2(Code::Mov_r16_imm16, dst, imm as u32).ok()
        } else {
            Instruction::with2(Code::Mov_r32_imm32, dst, imm as u32).ok()
        };
    }
    let (hb, hi) = (high.host64(base)?, high.host64(index)?);
    let displ_size = if disp == 0 { 0 } else { 8 };
    let mem = MemoryOperand::with_base_index_scale_displ_size(
        hb,
        hi,
        ins.memory_index_scale(),
        disp,
        displ_size,
    );
    let code = if insn.size == 2 {
        Code::Lea_r16_m
    } else {
        Code::Lea_r32_m
    };
    Instruction::with2(code, dst, mem).ok()
}

/// The offset of a 64-bit address into R10: a constant for an absolute or
/// RIP-relative one, else a 64-bit LEA on the legacy registers (flags kept).
fn offset_code64(insn: &Insn) -> Option<Vec<u8>> {
    let ins = &insn.ins;
    let (base, index) = (ins.memory_base(), ins.memory_index());
    let mut enc = Encoder::new(64);
    let op = if matches!(base, Register::RIP) || (base, index) == (Register::None, Register::None) {
        Instruction::with2(
            Code::Mov_r64_imm64,
            Register::R10,
            ins.memory_displacement64(),
        )
        .ok()?
    } else {
        // R8-R15 in the address: loaded into R10 (the base) and R11 first.
        let used = [base, index]
            .iter()
            .filter_map(|&r| high_bit(r))
            .fold(0, |a, b| a | b);
        let scratch = if high_bit(base).is_some() {
            [Register::R10, Register::R11]
        } else {
            [Register::R11, Register::R10]
        };
        let high = HighRegs::assign(used, 0, &scratch)?;
        let mem = host_mem64(ins, &high)?;
        return high.wrap(&Instruction::with2(Code::Lea_r64_m, Register::R10, mem).ok()?);
    };
    enc.encode(&op, 0).ok()?;
    Some(enc.take_buffer())
}

/// The 64-bit memory operand of `ins` on host registers (base and index
/// through `high`).
fn host_mem64(ins: &Instruction, high: &HighRegs) -> Option<MemoryOperand> {
    let disp = ins.memory_displacement64() as i64;
    Some(MemoryOperand::with_base_index_scale_displ_size(
        high.host64(ins.memory_base())?,
        high.host64(ins.memory_index())?,
        ins.memory_index_scale(),
        disp,
        if disp == 0 { 0 } else { 8 },
    ))
}

/// LEA with a 64-bit address (64-bit code): a constant for an absolute or
/// RIP-relative address (iced resolves RIP + displacement for the fragment's
/// own RIP), else a host LEA on the legacy registers, whose low `size` bytes
/// are the guest's.
fn host_lea64(insn: &Insn, dst: Register, high: &HighRegs) -> Option<Instruction> {
    let ins = &insn.ins;
    let (base, index) = (ins.memory_base(), ins.memory_index());
    if matches!(base, Register::RIP | Register::EIP)
        || (base, index) == (Register::None, Register::None)
    {
        if index != Register::None {
            return None;
        }
        let v = ins.memory_displacement64();
        return match insn.size {
            2 => Instruction::with2(Code::Mov_r16_imm16, dst, v as u16 as u32).ok(),
            4 => Instruction::with2(Code::Mov_r32_imm32, dst, v as u32).ok(),
            _ => Instruction::with2(Code::Mov_r64_imm64, dst, v).ok(),
        };
    }
    let mem = host_mem64(ins, high)?;
    let code = match insn.size {
        2 => Code::Lea_r16_m,
        4 => Code::Lea_r32_m,
        _ => Code::Lea_r64_m,
    };
    Instruction::with2(code, dst, mem).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

    /// Hand-encoded sequences (SDM vol. 2 encodings): the flags are dead
    /// where a flag-free, fault-free run ends in a register ADD, SUB, AND,
    /// OR, XOR, CMP, TEST or NEG; not where an instruction reads flags, can
    /// fault, or the code ends first.
    #[test]
    fn flags_dead_at_needs_a_full_writer_before_any_reader_or_fault() {
        // movsxd rcx, ebx; add ebx, 1
        assert_eq!(
            flags_dead_at(64, &[0x48, 0x63, 0xCB, 0x83, 0xC3, 0x01]),
            Some(6)
        );
        // add rax, 1
        assert_eq!(flags_dead_at(64, &[0x48, 0x83, 0xC0, 0x01, 0xCC]), Some(4));
        // lea eax, [ebx+4]; xor ecx, ecx (32-bit)
        assert_eq!(flags_dead_at(32, &[0x8D, 0x43, 0x04, 0x31, 0xC9]), Some(5));
        // mov edx, [rax]: a load can fault, and its frame holds the flags.
        assert_eq!(flags_dead_at(64, &[0x8B, 0x10, 0x01, 0xC0]), None);
        // adc eax, 1 reads CF.
        assert_eq!(flags_dead_at(32, &[0x83, 0xD0, 0x01]), None);
        // inc eax keeps CF: not every flag is replaced, and nothing follows.
        assert_eq!(flags_dead_at(64, &[0xFF, 0xC0]), None);
        // setz al reads ZF.
        assert_eq!(flags_dead_at(32, &[0x0F, 0x94, 0xC0, 0x31, 0xC0]), None);
        // mov ds, ax is not a plain register move.
        assert_eq!(flags_dead_at(16, &[0x8E, 0xD8, 0x31, 0xC0]), None);
        // add [rax], ecx writes memory.
        assert_eq!(flags_dead_at(64, &[0x01, 0x08]), None);
        // mov eax, ebx and then the code ends.
        assert_eq!(flags_dead_at(32, &[0x89, 0xD8]), None);
        // lock add: #UD on a register destination.
        assert_eq!(flags_dead_at(32, &[0xF0, 0x01, 0xC8]), None);
    }

    fn prepared(bits: u32, bytes: &[u8]) -> Insn {
        let mut d = Decoder::new(bits, bytes, DecoderOptions::NONE);
        Insn::prepare(&d.decode(), bits)
    }

    fn host_text(l: &Lowering) -> String {
        let (Lowering::Ident(x) | Lowering::Mem(MemOp { op: x, .. })) = l else {
            return format!("{l:?}");
        };
        let mut d = Decoder::new(64, &x.bytes, DecoderOptions::NONE);
        let mut s = String::new();
        IntelFormatter::new().format(&d.decode(), &mut s);
        s
    }

    fn lowered(bits: u32, bytes: &[u8]) -> String {
        let insn = prepared(bits, bytes);
        host_text(&lower(&insn, false, &mut InstructionInfoFactory::new()))
    }

    #[test]
    fn plan_register_alu_keeps_operation_and_size() {
        assert_eq!(lowered(16, &[0x01, 0xD8]), "add ax,bx");
        assert_eq!(lowered(32, &[0x01, 0xD8]), "add eax,ebx");
        assert_eq!(lowered(16, &[0x45]), "inc bp");
        assert_eq!(lowered(16, &[0x88, 0xE0]), "mov al,ah");
    }

    #[test]
    fn plan_guest_esp_lives_in_r8() {
        assert_eq!(lowered(32, &[0x89, 0xE5]), "mov ebp,r8d");
        assert_eq!(lowered(16, &[0x83, 0xC4, 0x04]), "add r8w,4");
    }

    #[test]
    fn plan_lea_uses_64_bit_host_addressing() {
        // lea ax, [bx+si-2] (16-bit addressing)
        assert_eq!(lowered(16, &[0x8D, 0x40, 0xFE]), "lea ax,[rbx+rsi+0FFFEh]");
        // lea eax, [ebx+ecx*4-8]
        assert_eq!(
            lowered(32, &[0x8D, 0x44, 0x8B, 0xF8]),
            "lea eax,[rbx+rcx*4-8]"
        );
        // lea eax, [bx] (address narrower than the operand) stays with the helper
        assert!(lowered(32, &[0x67, 0x8D, 0x07]).starts_with("Helper"));
    }

    #[test]
    fn plan_memory_operands_go_to_r10() {
        assert_eq!(lowered(16, &[0x01, 0x07]), "add [r10],ax");
        // mov eax, [moffs32] becomes the ModRM form
        assert_eq!(
            lowered(32, &[0xA1, 0x78, 0x56, 0x34, 0x12]),
            "mov eax,[r10]"
        );
        // mov byte [esp+4], 1
        assert_eq!(
            lowered(32, &[0xC6, 0x44, 0x24, 0x04, 0x01]),
            "mov byte ptr [r10],1"
        );
        let insn = prepared(16, &[0x8B, 0x40, 0xFE]); // mov ax, [bx+si-2]
        let Lowering::Mem(m) = lower(&insn, false, &mut InstructionInfoFactory::new()) else {
            panic!("not inline");
        };
        assert_eq!((m.seg, m.size, m.write), (3, 2, false));
        let mut d = Decoder::new(64, &m.addr, DecoderOptions::NONE);
        let mut text = Vec::new();
        for i in d.iter() {
            let mut t = String::new();
            IntelFormatter::new().format(&i, &mut t);
            text.push(t);
        }
        assert_eq!(text, ["lea r10d,[rbx+rsi+0FFFEh]", "movzx r10d,r10w"]);
        // mov ah, [bx]: AH cannot be encoded next to R10
        assert!(lowered(16, &[0x8A, 0x27]).starts_with("Helper(Memory)"));
    }

    fn addr_text(bits: u32, bytes: &[u8]) -> Vec<String> {
        let insn = prepared(bits, bytes);
        let Lowering::Mem(m) = lower(&insn, false, &mut InstructionInfoFactory::new()) else {
            panic!("not inline");
        };
        disassemble(&m.addr)
    }

    /// Host code as Intel-syntax lines.
    fn disassemble(code: &[u8]) -> Vec<String> {
        let mut d = Decoder::new(64, code, DecoderOptions::NONE);
        d.iter()
            .map(|i| {
                let mut t = String::new();
                IntelFormatter::new().format(&i, &mut t);
                t
            })
            .collect()
    }

    #[test]
    fn plan_64bit_code_keeps_legacy_registers_and_resolves_rip() {
        assert_eq!(lowered(64, &[0x48, 0x01, 0xD8]), "add rax,rbx");
        // RSP lives in R8, SPL in R8B.
        assert_eq!(lowered(64, &[0x48, 0x89, 0xE0]), "mov rax,r8");
        assert_eq!(lowered(64, &[0x40, 0x88, 0xE0]), "mov al,r8b");
        // A 64-bit shift count is masked to 6 bits: 40 is a shift by 40.
        assert_eq!(lowered(64, &[0x48, 0xC1, 0xE0, 40]), "shl rax,28h");
        // lea rax, [rip+10h] after a 7-byte instruction at 0: the constant 17h.
        assert_eq!(
            lowered(64, &[0x48, 0x8D, 0x05, 0x10, 0, 0, 0]),
            "mov rax,17h"
        );
        // mov rax, [rbx+rsi*8-8]: a 64-bit LEA into R10.
        assert_eq!(
            lowered(64, &[0x48, 0x8B, 0x44, 0xF3, 0xF8]),
            "mov rax,[r10]"
        );
        assert_eq!(
            addr_text(64, &[0x48, 0x8B, 0x44, 0xF3, 0xF8]),
            ["lea r10,[rbx+rsi*8-8]"]
        );
        // mov eax, [rip-4] after a 6-byte instruction at 0: address 2.
        assert_eq!(
            addr_text(64, &[0x8B, 0x05, 0xFC, 0xFF, 0xFF, 0xFF]),
            ["mov r10,2"]
        );
        // R8-R15 live in CpuState, held in R11 (then R10) around the
        // instruction and stored back when written: add r9, rax.
        let gpr = core::mem::offset_of!(x86bt_cpu::state::CpuState, gpr);
        let r9 = format!("[r15+{:X}h]", gpr + 8 * 9);
        assert_eq!(
            all_text(&lower(
                &prepared(64, &[0x49, 0x01, 0xC1]),
                false,
                &mut InstructionInfoFactory::new()
            )),
            [
                format!("mov r11,{r9}"),
                "add r11,rax".into(),
                format!("mov {r9},r11")
            ]
        );
        // mov eax, [r9+rax*2]: the address's R9 loaded into a scratch first;
        // R9 is only read, so not stored.
        let text = addr_text(64, &[0x41, 0x8B, 0x04, 0x41]);
        assert_eq!(text.len(), 2);
        assert!(text[0].starts_with("mov r10,[r15"), "{text:?}");
        assert_eq!(text[1], "lea r10,[r10+rax*2]");
        // push r12: the store through R11, RSP (R8) moved by 8 after it.
        let push = prepared(64, &[0x41, 0x54]);
        let l = lower(&push, false, &mut InstructionInfoFactory::new());
        let Lowering::Mem(m) = &l else {
            panic!("not inline: {l:?}");
        };
        assert_eq!((m.size, m.write, m.esp_delta, m.seg), (8, true, -8, 2));
        assert_eq!(all_text(&l)[1], "mov [r10],r11");
        // call rel32 and ret with a 64-bit return address.
        let call = prepared(64, &[0xE8, 0, 0, 0, 0]);
        let l = lower(&call, true, &mut InstructionInfoFactory::new());
        assert!(
            matches!(&l, Lowering::Xfer(Xfer { stack: Some(s), .. }) if s.size == 8),
            "{l:?}"
        );
    }

    #[test]
    fn plan_rdtscp_is_inline_and_pause_is_a_nop_on_one_vcpu() {
        // RDTSCP is RDTSC's inline form with ECX = TSC_AUX (Linux 686 reads
        // the TSC with it, millions of times a boot).
        let l = lower(
            &prepared(32, &[0x0F, 0x01, 0xF9]),
            false,
            &mut InstructionInfoFactory::new(),
        );
        assert_eq!(l, Lowering::Rdtsc(true));
        // PAUSE takes the helper (the run loop may give another vCPU the
        // turn) unless the machine has one vCPU.
        let insns = [prepared(32, &[0xF3, 0x90])];
        let mut ls = plan(&insns);
        assert!(
            matches!(ls[0], Lowering::Helper(HelperKind::Sensitive)),
            "{ls:?}"
        );
        pause_as_nop(&insns, &mut ls);
        assert!(
            matches!(&ls[0], Lowering::Ident(x) if x.bytes.is_empty()),
            "{ls:?}"
        );
    }

    fn all_text(l: &Lowering) -> Vec<String> {
        let (Lowering::Ident(x) | Lowering::Mem(MemOp { op: x, .. })) = l else {
            panic!("not inline: {l:?}");
        };
        disassemble(&x.bytes)
    }

    #[test]
    fn plan_string_and_out_of_range_shifts_use_the_helper() {
        assert!(lowered(16, &[0xA4]).starts_with("Helper(String)"));
        // shl ax, 16: count >= width
        assert!(lowered(16, &[0xC1, 0xE0, 0x10]).starts_with("Helper"));
    }

    #[test]
    fn plan_shift_by_cl_and_wide_rotate_stay_inline_only_where_flags_are_dead() {
        let is_ident = |l: &Lowering| matches!(l, Lowering::Ident(_));
        // shl ax,cl; add ax,bx; jnz: ADD overwrites every flag before anything
        // looks, so the shift stays inline.
        let insns = [
            prepared(16, &[0xD3, 0xE0]),
            prepared(16, &[0x01, 0xD8]),
            prepared(16, &[0x75, 0xFA]),
        ];
        assert!(is_ident(&plan(&insns)[0]));
        // shl ax,cl; jz: the branch reads ZF, which a count of 0 leaves alone.
        let insns = [prepared(16, &[0xD3, 0xE0]), prepared(16, &[0x74, 0xFA])];
        assert!(matches!(plan(&insns)[0], Lowering::Helper(_)));
        // rol ax,3 at the end of a unit: its flags must be exact in CpuState,
        // and OF is undefined past one bit, so the interpreter computes them.
        assert!(matches!(
            plan(&[prepared(16, &[0xC1, 0xC0, 0x03])])[0],
            Lowering::Helper(_)
        ));
        // rol ax,3; inc cx; adc dx,0: ADC reads ROL's CF.
        let insns = [
            prepared(16, &[0xC1, 0xC0, 0x03]),
            prepared(16, &[0x41]),
            prepared(16, &[0x83, 0xD2, 0x00]),
        ];
        assert!(matches!(plan(&insns)[0], Lowering::Helper(_)));
        // rol ax,3; sub ax,bx; jnz: dead.
        let insns = [
            prepared(16, &[0xC1, 0xC0, 0x03]),
            prepared(16, &[0x29, 0xD8]),
            prepared(16, &[0x75, 0xFA]),
        ];
        assert!(is_ident(&plan(&insns)[0]));
    }

    #[test]
    fn plan_div_inline_keeps_the_flags() {
        // div ecx; add esi,0: ADD replaces the flags.
        let insns = [
            prepared(32, &[0xF7, 0xF1]),
            prepared(32, &[0x83, 0xC6, 0x00]),
        ];
        assert!(matches!(plan(&insns)[0], Lowering::Div(_)));
        // cmp eax,ebx; div ecx; jz: the interpreter keeps ZF across DIV, the
        // host does not, so CMP's flags are captured and JZ reloads them.
        let insns = [
            prepared(32, &[0x39, 0xD8]),
            prepared(32, &[0xF7, 0xF1]),
            prepared(32, &[0x74, 0xFA]),
        ];
        let l = plan(&insns);
        assert!(matches!(l[1], Lowering::Div(_)));
        assert_eq!(captures(&l), vec![true, false, false]);
        assert_eq!(flag_reloads(&l, &captures(&l)), vec![(2, ZF)]);
        // div esp: not lowered.
        assert!(matches!(
            plan(&[
                prepared(32, &[0xF7, 0xF4]),
                prepared(32, &[0x83, 0xC6, 0x00])
            ])[0],
            Lowering::Helper(_)
        ));
    }

    #[test]
    fn plan_lods_stos_scas_go_inline_without_rep() {
        // lodsb, stosd, scasw (32-bit code): inline, DF checked at run time.
        for bytes in [&[0xAC][..], &[0xAB], &[0x66, 0xAF]] {
            match lower(
                &prepared(32, bytes),
                false,
                &mut InstructionInfoFactory::new(),
            ) {
                Lowering::Mem(m) => assert!(m.df_clear, "{bytes:02x?}"),
                other => panic!("{bytes:02x?}: {other:?}"),
            }
        }
        // rep stosd: the helper.
        assert!(lowered(32, &[0xF3, 0xAB]).starts_with("Helper(String)"));
    }

    #[test]
    fn captures_skip_flags_overwritten_before_use() {
        // add ax,bx; sub cx,dx; jnz (last: branch)
        let insns = [
            prepared(16, &[0x01, 0xD8]),
            prepared(16, &[0x29, 0xD1]),
            prepared(16, &[0x75, 0xFA]),
        ];
        let l = plan(&insns);
        assert!(matches!(l[2], Lowering::Branch(_)));
        assert_eq!(captures(&l), vec![false, true, false]);
    }

    #[test]
    fn captures_skip_flags_a_reader_finds_in_host_eflags() {
        // add ax,bx; inc cx; adc dx,0: ADC finds ADD's CF in host EFLAGS (INC
        // keeps CF), and ADC overwrites every flag, so nothing is captured but
        // ADC's own flags, live at the end.
        let insns = [
            prepared(16, &[0x01, 0xD8]),
            prepared(16, &[0x41]),
            prepared(16, &[0x83, 0xD2, 0x00]),
        ];
        assert_eq!(captures(&plan(&insns)), vec![false, false, true]);
        // add ax,bx; mov [si],ax; adc dx,0: the memory access needs exact flags,
        // so ADD's are captured, and ADC reloads them.
        let insns = [
            prepared(16, &[0x01, 0xD8]),
            prepared(16, &[0x89, 0x04]),
            prepared(16, &[0x83, 0xD2, 0x00]),
        ];
        let l = plan(&insns);
        assert_eq!(captures(&l), vec![true, false, true]);
        assert_eq!(flag_reloads(&l, &captures(&l)), vec![(2, CF)]);
    }

    #[test]
    fn captures_keep_partial_writers_live() {
        // add ax,bx (CF survives inc); inc cx
        let insns = [prepared(16, &[0x01, 0xD8]), prepared(16, &[0x41])];
        assert_eq!(captures(&plan(&insns)), vec![true, true]);
    }
}
