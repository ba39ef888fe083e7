//! Known QEMU TCG deviations from hardware. A divergence is forgiven only when
//! its instruction and condition match an entry exactly; each entry says why and
//! where the hardware behaviour is documented. Everything else is a failure.

use iced_x86::{Code, Instruction, InstructionInfoFactory, OpKind, Register};
use x86bt_cpu::mmu::{seg_linear, Access};
use x86bt_cpu::state::CpuState;

/// What an entry may look at: the instruction, its effective shift count, and
/// x86bt's state before it ran.
pub struct Ctx<'a> {
    /// The instruction.
    pub ins: &'a Instruction,
    /// The same bytes decoded without iced's check for encodings the SDM calls
    /// invalid: `ins` is `Code::INVALID` for MOV CS, r/m, this is the MOV.
    pub lenient: &'a Instruction,
    /// The masked shift/rotate count, for shifts and rotates.
    pub count: Option<u8>,
    /// x86bt's CPU state before the instruction.
    pub before: &'a CpuState,
    /// x86bt's CPU state after it.
    pub after: &'a CpuState,
    /// Real mode only: x86bt delivered a fault for this instruction (SP went down
    /// by the three-word frame, whose IP and CS are the instruction's own).
    pub real_fault: bool,
    /// What differs.
    pub diffs: &'a [super::FieldDiff],
    /// Whether the instruction's memory operand is in no RAM, ROM or device
    /// (an address where nothing answers on x86bt's bus).
    pub unassigned: bool,
}

/// One allowed deviation.
pub struct Allowed {
    /// A short name.
    pub name: &'static str,
    /// Why QEMU differs, in one line.
    pub reason: &'static str,
    /// Where hardware behaviour is documented.
    pub reference: &'static str,
    /// Whether the entry covers this instruction and condition.
    pub applies: fn(&Ctx) -> bool,
}

/// The allow-list.
pub const ALLOWED: &[Allowed] = &[
    Allowed {
        name: "mov-cs",
        reason: "QEMU TCG loads CS from MOV CS, r/m (8E /1) and goes on at the next IP; hardware (and x86bt) raise #UD",
        reference: "Intel SDM vol. 2B, MOV: 'The MOV instruction cannot be used to load the CS register', #UD 'If attempt is made to load the CS register'",
        applies: mov_cs,
    },
    Allowed {
        name: "real-wrap-fault",
        reason: "QEMU TCG does not check real-mode segment limits: an access that runs past offset 0xFFFF (a word at 0xFFFF, a 32-bit offset above it) reads or writes the bytes after the segment; a 386 and later, and x86bt, raise #GP(0), or #SS(0) through SS",
        reference: "Intel SDM vol. 3B, Architecture Compatibility, 'Segment Wraparound' (§22.33.1; 19.33.1 in older editions) and 8086 Emulation §20.1.1 (pseudo-protection faults 12 and 13 for offsets past 0FFFFH)",
        applies: |c| c.real_fault && real_overrun(c),
    },
    Allowed {
        name: "real-wrap-stack-shutdown",
        reason: "QEMU TCG wraps a real-mode stack push past offset 0 (e.g. PUSH with SP = 1) to the top of the segment; hardware cannot deliver the #SS onto that stack, and shuts down, as x86bt does",
        reference: "Intel SDM vol. 3B, Architecture Compatibility, 'Segment Wraparound' (§22.33.1: 'If a stack operation wraps around the address limit, shutdown occurs'); SDM vol. 2B PUSH (real-address mode, SP = 1)",
        applies: |c| {
            c.after.run_state == x86bt_cpu::state::RunState::Shutdown
                && c.ins.is_stack_instruction()
                && real_overrun(c)
        },
    },
    Allowed {
        name: "aam-imm8-high",
        reason: "QEMU TCG treats an AAM immediate of 0x80 or more as negative; hardware divides by it unsigned",
        reference: "Intel SDM vol. 2A, AAM (AH := tempAL / imm8); SingleStepTests 80286 D4.MOO.gz: 142 cases with imm8 >= 0x80, AL >= imm8 pass on x86bt",
        applies: |c| c.ins.mnemonic() == iced_x86::Mnemonic::Aam && c.ins.immediate8() >= 0x80,
    },
    Allowed {
        name: "rcl-rcr-full-turn",
        reason: "QEMU TCG changes CF (and with a memory operand writes a wrong value) for RCL/RCR r/m8 or r/m16 when the masked count is a non-zero multiple of 9 or 17; hardware rotates by count mod 9/17 = 0, changing nothing",
        reference: "Intel SDM vol. 2B, RCL/RCR (tempCOUNT := (COUNT AND 1FH) MOD 9 or 17); SingleStepTests 80286 C0.2/C1.2/C0.3/C1.3: 210 such cases pass on x86bt",
        applies: |c| {
            let (ins, count) = (c.ins, c.count);
            let bits = ins.op0_register().size().max(ins.memory_size().size()) * 8;
            matches!(ins.mnemonic(), iced_x86::Mnemonic::Rcl | iced_x86::Mnemonic::Rcr)
                && matches!(bits, 8 | 16)
                && count.is_some_and(|c| c != 0 && u32::from(c) % (bits as u32 + 1) == 0)
        },
    },
    Allowed {
        name: "pf-rsvd-p-bit",
        reason: "QEMU TCG pushes a reserved-bit #PF error code without P; the faulting entry is present, so hardware sets P with RSVD",
        reference: "Intel SDM vol. 3A §4.7, Figure 4-12 (P = 0 only for a not-present entry; RSVD faults come from present entries); pm_kernels paging_reserved_bits",
        applies: |c| {
            !c.diffs.is_empty()
                && c.diffs.iter().all(|d| d.name.starts_with("mem[") && d.ours & 8 != 0 && d.ours ^ d.qemu == 1)
        },
    },
    Allowed {
        name: "tlb-global-kept",
        reason: "x86bt keeps global-page translations across a CR3 reload, QEMU TCG drops them; both are allowed",
        reference: "Intel SDM vol. 3A §4.10.4.1: MOV to CR3 need not invalidate global translations (CR4.PGE)",
        applies: through_global_tlb,
    },
    Allowed {
        name: "unassigned-read",
        reason: "a read where no memory or device answers returns all ones on x86bt (an idle ISA/PCI bus) and 0 on QEMU",
        reference: "PCI Local Bus spec 3.0 §6.6 (master abort returns all ones); the guest reads an unpopulated address, e.g. the absent VGA window",
        applies: |c| c.unassigned,
    },
    Allowed {
        name: "segment-checks",
        reason: "QEMU TCG does not check data segment limits and types in protected mode; hardware raises #GP(0)/#SS(0)",
        reference: "Intel SDM vol. 3A §5.3 (limit checking) and §5.4 (type checking); the project's pm_kernels segment_faults kernel",
        applies: breaks_segment,
    },
    Allowed {
        name: "bsf-bsr-zero-32",
        reason: "BSF/BSR r32 with a zero source in 64-bit mode: QEMU TCG zero-extends the destination; an Intel host (the project's, running the same instruction) and x86bt leave the whole 64-bit register unchanged",
        reference: "Intel SDM vol. 2A, BSF/BSR: 'If the content of the source operand is 0, the content of the destination operand is undefined'; host check in docs/notes.md (issue 12)",
        applies: |c| {
            matches!(c.ins.mnemonic(), iced_x86::Mnemonic::Bsf | iced_x86::Mnemonic::Bsr)
                && c.ins.op0_register().is_gpr32()
                && c.after.rflags & x86bt_cpu::state::flags::ZF != 0
                && c.diffs.iter().all(|d| {
                    c.ins.op0_register().full_register() == reg_name(&d.name)
                        && d.ours & 0xFFFF_FFFF == d.qemu & 0xFFFF_FFFF
                })
        },
    },
    Allowed {
        name: "sse-denormal-flag",
        reason: "an SSE arithmetic instruction with a denormal operand (DAZ clear): x86bt sets MXCSR.DE as the Intel host does for the same instruction and operands; QEMU TCG leaves DE clear",
        reference: "Intel SDM vol. 1 §11.5.2.2 (denormal-operand exception); tests/sse_float.rs compares MXCSR with the host CPU on denormal operands under every MXCSR mode",
        applies: |c| {
            !c.diffs.is_empty()
                && c.diffs.iter().all(denormal_flag_only)
        },
    },
    Allowed {
        name: "sse-unmasked-exception",
        reason: "an SSE floating-point instruction (CVT*2SI included) raised an MXCSR exception whose mask is clear: x86bt leaves the destination unchanged and delivers #XM (#UD without CR4.OSXMMEXCPT); QEMU TCG does not model unmasked SIMD exceptions and writes the result",
        reference: "Intel SDM vol. 1 §11.5.1 and §11.5.4 (unmasked SIMD floating-point exceptions); tests/sse_float.rs checks the destination, flags and #XM/#UD against the SDM",
        applies: |c| {
            let csr = x86bt_cpu::interp::sse::mxcsr(c.after);
            let unmasked = csr & 0x3F & !((csr >> 7) & 0x3F);
            let sse = c.ins.cpuid_features().iter().any(|f| {
                use iced_x86::CpuidFeature as F;
                matches!(f, F::SSE | F::SSE2 | F::SSE3 | F::SSSE3 | F::SSE4_1 | F::SSE4_2)
            });
            sse && unmasked != 0 && c.after.rip != c.before.rip.wrapping_add(c.ins.len() as u64)
        },
    },
    Allowed {
        name: "minmax-daz-zeroed",
        reason: "MIN/MAX (PS/PD/SS/SD) with MXCSR.DAZ set and a denormal operand: x86bt returns the operand as DAZ reads it (a signed zero), as the Intel host does; QEMU TCG returns the denormal itself",
        reference: "Intel SDM vol. 1 §10.2.3.4 (DAZ: denormal source operands are converted to zero before use); tests/sse_float.rs host sweeps with DAZ on, docs/design.md 'SSE floating point'",
        applies: |c| {
            use iced_x86::Mnemonic as M;
            let csr = x86bt_cpu::interp::sse::mxcsr(c.before);
            matches!(
                c.ins.mnemonic(),
                M::Minps | M::Minpd | M::Minss | M::Minsd | M::Maxps | M::Maxpd | M::Maxss | M::Maxsd
            ) && csr & (1 << 6) != 0
                && c.diffs.iter().all(|d| d.name.starts_with("xmm"))
        },
    },
    Allowed {
        name: "sse-nan-select",
        reason: "an SSE arithmetic instruction with NaNs in both operands of a lane: x86bt returns the first source operand's NaN (quieted), as the Intel host does for the same instruction and operands; QEMU TCG applies the x87 rule (a QNaN before an SNaN, else the larger significand)",
        reference: "Intel SDM vol. 1 §4.8.3.5 and Table 4-7 (SSE/SSE2/SSE3: the first source operand's NaN, quieted, whatever the other; x87: a QNaN before an SNaN, else the larger significand); tests/sse_long.rs runs the differ's cases on the host",
        applies: nan_select,
    },
    Allowed {
        name: "crc32-16bit-code",
        reason: "CRC32 r32, r/m16/32 in a 16-bit code segment: the source size is the operand-size attribute (16 without 0x66, 32 with it), as x86bt and the Intel host (scripts/host-checks/crc32_16bit.c, a 16-bit LDT code segment) size it; QEMU TCG sizes it by the presence of 0x66 alone, which is right only in 32- and 64-bit code",
        reference: "Intel SDM vol. 2A, CRC32 (F2 0F 38 F1 /r: r/m16 or r/m32 by operand size) and vol. 1 §3.6 (operand-size attribute); host check in docs/notes.md (issue 12)",
        applies: |c| {
            matches!(
                c.ins.code(),
                Code::Crc32_r32_rm16 | Code::Crc32_r32_rm32
            ) && x86bt_cpu::mode::CpuMode::of(c.before).bits() == 16
                && c.diffs
                    .iter()
                    .all(|d| c.ins.op0_register().full_register() == reg_name(&d.name)
                        || c.ins.op0_register() == reg32_name(&d.name))
        },
    },
    Allowed {
        name: "pcmpestr-rex-w",
        reason: "PCMPESTRI/PCMPESTRM with REX.W: the lengths are RAX and RDX read as signed 64-bit values, as the Intel host reads them; QEMU TCG reads EAX and EDX, so an upper half changes the lengths on x86bt and the host and not on QEMU",
        reference: "Intel SDM vol. 2B, PCMPESTRI/PCMPESTRM ('the length of the first operand is the absolute value of RAX (64-bit mode with REX.W)'); tests/sse_long.rs pcmpestr_rex_w_lengths_match_host",
        applies: pcmpestr_rex_w,
    },
];

/// The register a compared field names (`rax`..`r15`), or `Register::None`.
fn reg_name(name: &str) -> Register {
    use Register as R;
    const GPRS: [Register; 16] = [
        R::RAX,
        R::RCX,
        R::RDX,
        R::RBX,
        R::RSP,
        R::RBP,
        R::RSI,
        R::RDI,
        R::R8,
        R::R9,
        R::R10,
        R::R11,
        R::R12,
        R::R13,
        R::R14,
        R::R15,
    ];
    const NAMES: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    NAMES
        .iter()
        .position(|n| *n == name)
        .map_or(R::None, |i| GPRS[i])
}

/// Whether `d` is MXCSR differing only in DE, set by x86bt (the
/// `sse-denormal-flag` condition).
fn denormal_flag_only(d: &super::FieldDiff) -> bool {
    d.name == "mxcsr" && d.ours ^ d.qemu == 2 && d.ours & 2 != 0
}

/// An SSE floating-point instruction whose only differences are lanes of XMM
/// registers that hold a NaN on both sides (which NaN: x86bt's choice is the
/// host's, by tests/sse_float.rs and tests/sse_long.rs), and at most a DE flag
/// x86bt set on a denormal operand.
fn nan_select(c: &Ctx) -> bool {
    use iced_x86::CpuidFeature as F;
    let fp = c
        .ins
        .cpuid_features()
        .iter()
        .any(|f| matches!(f, F::SSE | F::SSE2 | F::SSE3 | F::SSE4_1));
    let name = format!("{:?}", c.ins.mnemonic()).to_ascii_lowercase();
    let bits = if name.ends_with("ps") || name.ends_with("ss") {
        32
    } else if name.ends_with("pd") || name.ends_with("sd") {
        64
    } else {
        return false;
    };
    let nan = |v: u64| {
        let (exp, frac) = if bits == 32 {
            (0xFF << 23, (1 << 23) - 1)
        } else {
            (0x7FF << 52, (1 << 52) - 1)
        };
        v & exp == exp && v & frac != 0
    };
    let lane_mask = if bits == 32 { 0xFFFF_FFFF } else { u64::MAX };
    let mut lanes = 0;
    fp && c.diffs.iter().all(|d| {
        if denormal_flag_only(d) {
            return true;
        }
        if !d.name.starts_with("xmm") {
            return false;
        }
        (0..64 / bits).all(|k| {
            let (ours, qemu) = (
                (d.ours >> (k * bits)) & lane_mask,
                (d.qemu >> (k * bits)) & lane_mask,
            );
            if ours == qemu {
                return true;
            }
            lanes += 1;
            nan(ours) && nan(qemu)
        })
    }) && lanes > 0
}

/// An explicit string length as PCMPESTRx reads it: the absolute value of RAX
/// or RDX at 64 bits (REX.W) or 32, saturated to `n`.
fn explicit_len(r: u64, wide: bool, n: u64) -> u64 {
    let v = if wide {
        r as i64
    } else {
        i64::from(r as u32 as i32)
    };
    v.unsigned_abs().min(n)
}

/// PCMPESTRI64/PCMPESTRM64 whose lengths depend on RAX's or RDX's upper half.
fn pcmpestr_rex_w(c: &Ctx) -> bool {
    if !matches!(
        c.ins.code(),
        Code::Pcmpestri64_xmm_xmmm128_imm8 | Code::Pcmpestrm64_xmm_xmmm128_imm8
    ) {
        return false;
    }
    let n = if c.ins.immediate8() & 1 != 0 { 8 } else { 16 };
    let differs = |r: u64| explicit_len(r, true, n) != explicit_len(r, false, n);
    (differs(c.before.gpr[0]) || differs(c.before.gpr[2]))
        && c.diffs
            .iter()
            .all(|d| matches!(d.name.as_str(), "rcx" | "eflags") || d.name.starts_with("xmm0"))
}

/// The 32-bit register a compared field names outside 64-bit mode
/// (`eax`..`edi`), or `Register::None`.
fn reg32_name(name: &str) -> Register {
    use Register as R;
    const GPRS: [Register; 8] = [
        R::EAX,
        R::ECX,
        R::EDX,
        R::EBX,
        R::ESP,
        R::EBP,
        R::ESI,
        R::EDI,
    ];
    const NAMES: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
    NAMES
        .iter()
        .position(|n| *n == name)
        .map_or(R::None, |i| GPRS[i])
}

/// MOV CS, r/m: iced calls it invalid (so does x86bt, which raises #UD); QEMU
/// runs it as a MOV. Only the fields such a difference can touch may differ: the
/// instruction pointer, CS, the stack and flags of x86bt's #UD frame, and that
/// frame in memory.
fn mov_cs(c: &Ctx) -> bool {
    c.ins.code() == Code::INVALID
        && matches!(
            c.lenient.code(),
            Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16
        )
        && c.lenient.op0_register() == Register::CS
        && c.diffs.iter().any(|d| d.name == "eip")
        && c.diffs.iter().all(|d| {
            matches!(d.name.as_str(), "eip" | "esp" | "eflags" | "cs") || d.name.starts_with("mem[")
        })
}

/// The value of a register before the instruction, at its size; 0 for segment
/// registers (offsets are wanted, not linear addresses).
fn reg_value(cpu: &CpuState, r: Register) -> u64 {
    let full = r.full_register();
    if !full.is_gpr() {
        return 0;
    }
    let v = cpu.gpr[(full as usize) - (Register::RAX as usize)];
    match r.size() {
        1 if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) => {
            (v >> 8) & 0xFF
        }
        1 => v & 0xFF,
        2 => v & 0xFFFF,
        4 => v & 0xFFFF_FFFF,
        _ => v,
    }
}

/// Real mode (not virtual-8086): whether any memory access of the instruction,
/// explicit operand, string operand or stack slot as iced lists them, runs past
/// its segment's limit once its offset is formed at the address size (so a 16-bit
/// offset that wraps inside the segment does not count, a word at 0xFFFF does).
fn real_overrun(c: &Ctx) -> bool {
    let cpu = c.before;
    if cpu.protected() {
        return false;
    }
    let mut f = InstructionInfoFactory::new();
    let info = f.info(c.ins);
    info.used_memory().iter().any(|m| {
        let s = (m.segment() as usize).wrapping_sub(Register::ES as usize);
        let size = m.memory_size().size() as u64;
        if s >= 6 || size == 0 {
            return false;
        }
        let mask = match m.address_size() {
            iced_x86::CodeSize::Code16 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        };
        let off = reg_value(cpu, m.base())
            .wrapping_add(reg_value(cpu, m.index()).wrapping_mul(u64::from(m.scale())))
            .wrapping_add(m.displacement())
            & mask;
        off + size - 1 > u64::from(cpu.seg[s].limit)
    })
}

/// The offset of the explicit memory operand of `c.ins`, with its operand index.
fn mem_offset(c: &Ctx) -> Option<(u32, u64)> {
    let cpu = c.before;
    let ins = c.ins;
    let op = (0..ins.op_count()).find(|&i| ins.op_kind(i) == OpKind::Memory)?;
    // Segment bases are not added: the check below wants the offset.
    let reg = |r: Register, _: usize, _: usize| -> Option<u64> { Some(reg_value(cpu, r)) };
    let off = ins.virtual_address(op, 0, reg)?;
    let addr_mask = if ins.memory_base().is_gpr16() || ins.memory_index().is_gpr16() {
        0xFFFF
    } else {
        0xFFFF_FFFF
    };
    Some((op, off & addr_mask))
}

/// The linear address of the explicit memory operand, if any.
pub fn mem_linear(ins: &Instruction, before: &CpuState) -> Option<u64> {
    let c = Ctx {
        ins,
        lenient: ins,
        count: None,
        before,
        after: before,
        real_fault: false,
        diffs: &[],
        unassigned: false,
    };
    let (_, off) = mem_offset(&c)?;
    let s = (ins.memory_segment() as usize).wrapping_sub(Register::ES as usize);
    (s < 6).then(|| before.seg[s].base.wrapping_add(off) & 0xFFFF_FFFF)
}

/// Whether the explicit memory operand reads through a global-page TLB entry
/// that a CR3 reload kept (the SDM allows, but does not require, keeping it).
fn through_global_tlb(c: &Ctx) -> bool {
    let Some((_, off)) = mem_offset(c) else {
        return false;
    };
    let s = (c.ins.memory_segment() as usize).wrapping_sub(Register::ES as usize);
    s < 6
        && c.before.tlb.has_global(x86bt_machine::Linear(
            c.before.seg[s].base.wrapping_add(off) & 0xFFFF_FFFF,
        ))
}

/// Whether the explicit memory operand of `ins` breaks its segment's limit or
/// type in protected mode, judged on the state before it ran.
fn breaks_segment(c: &Ctx) -> bool {
    let cpu = c.before;
    if !cpu.protected() || cpu.v86() {
        return false;
    }
    let ins = c.ins;
    let Some((op, off)) = mem_offset(c) else {
        return false;
    };
    let s = (ins.memory_segment() as usize).wrapping_sub(Register::ES as usize);
    let size = ins.memory_size().size().clamp(1, 8) as u32;
    let write = op == 0
        && !matches!(
            ins.mnemonic(),
            iced_x86::Mnemonic::Cmp | iced_x86::Mnemonic::Test
        );
    s < 6
        && seg_linear(
            cpu,
            s,
            off,
            size,
            if write { Access::Write } else { Access::Read },
        )
        .is_err()
}

/// The entry that forgives a divergence, if any.
pub fn find(c: &Ctx) -> Option<&'static Allowed> {
    ALLOWED.iter().find(|a| (a.applies)(c))
}
