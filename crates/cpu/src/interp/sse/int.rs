//! MMX, SSE2, SSSE3 and SSE4.1 integer arithmetic, compares, packs, unpacks
//! and shifts, and the MMX moves (MOVD/MOVQ with an MMX register, EMMS).
//!
//! Every instruction of the family reads a destination register and a source
//! (register, memory or immediate count), computes a pure function of them
//! ([`lanes::compute`]) and writes the destination register. One handler per
//! operation and register file, chosen by a const parameter: [`xmm_op`] for the
//! 66 0F forms, [`mmx_op`] for the 0F forms. PTEST writes flags instead.
//!
//! Memory sources: 16-byte operands of the XMM forms must be 16-byte aligned
//! (#GP(0)); the PMOVSX/PMOVZX forms read only 2, 4 or 8 bytes and have no
//! alignment requirement; MMX forms read 8 bytes unaligned. Sources are read
//! (and may fault) before anything is written, including the x87 tag and TOP
//! changes of an MMX instruction, so a faulting MMX instruction leaves TOP and
//! the tags as they were (the restart repeats them).
//!
//! Only legacy encodings are claimed: the VEX and EVEX forms (VPADDB, ...)
//! stay #UD. The MMX register forms of MOVQ2DQ, MOVDQ2Q, PSHUFW, PEXTRW,
//! PINSRW, PMOVMSKB, MASKMOVQ and MOVNTQ are data moves and not claimed here.
//! In 64-bit code the same handlers serve XMM8-XMM15 (through `xmm_index`) and
//! MOVQ between an MMX register and a 64-bit GPR.

mod lanes;

use super::super::ops::{get_gpr, set_gpr};
use super::super::{Exec, Handler, Insn, Opnd};
use super::{
    check_mmx, check_sse, mm, mm_index, mmx_enter, read_mem, set_mm, set_xmm, src_mm, src_xmm,
    write_mem, xmm, xmm_index,
};
use crate::state::{flags, CpuState};
use iced_x86::{Code, EncodingKind, Instruction, Mnemonic, OpKind};
use lanes::op;
use x86bt_machine::Machine;

/// The handler for `ins` if it belongs to this family.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    if ins.encoding() != EncodingKind::Legacy {
        return None;
    }
    match ins.code() {
        Code::Emms => return Some(emms),
        Code::Movd_mm_rm32 | Code::Movq_mm_rm64 | Code::Movq_mm_mmm64 => return Some(mmx_load),
        Code::Movd_rm32_mm | Code::Movq_rm64_mm | Code::Movq_mmm64_mm => return Some(mmx_store),
        Code::Ptest_xmm_xmmm128 => return Some(ptest),
        _ => {}
    }
    let o = operation(ins.mnemonic())?;
    if ins.op_count() == 0 || ins.op0_kind() != OpKind::Register {
        return None;
    }
    let r = ins.op0_register();
    if r.is_xmm() {
        Some(XMM_HANDLERS[usize::from(o)])
    } else if r.is_mm() {
        // SSE4.1/4.2 have no MMX forms; iced decodes none, but be sure.
        (o < op::PMOVSXBW).then(|| MMX_HANDLERS[usize::from(o)])
    } else {
        None
    }
}

/// The operation of a mnemonic of this family.
fn operation(mn: Mnemonic) -> Option<u8> {
    use op::*;
    use Mnemonic as M;
    Some(match mn {
        M::Paddb => PADDB,
        M::Paddw => PADDW,
        M::Paddd => PADDD,
        M::Paddq => PADDQ,
        M::Paddsb => PADDSB,
        M::Paddsw => PADDSW,
        M::Paddusb => PADDUSB,
        M::Paddusw => PADDUSW,
        M::Psubb => PSUBB,
        M::Psubw => PSUBW,
        M::Psubd => PSUBD,
        M::Psubq => PSUBQ,
        M::Psubsb => PSUBSB,
        M::Psubsw => PSUBSW,
        M::Psubusb => PSUBUSB,
        M::Psubusw => PSUBUSW,
        M::Pmullw => PMULLW,
        M::Pmulhw => PMULHW,
        M::Pmulhuw => PMULHUW,
        M::Pmuludq => PMULUDQ,
        M::Pmaddwd => PMADDWD,
        M::Pavgb => PAVGB,
        M::Pavgw => PAVGW,
        M::Pminub => PMINUB,
        M::Pmaxub => PMAXUB,
        M::Pminsw => PMINSW,
        M::Pmaxsw => PMAXSW,
        M::Psadbw => PSADBW,
        M::Pcmpeqb => PCMPEQB,
        M::Pcmpeqw => PCMPEQW,
        M::Pcmpeqd => PCMPEQD,
        M::Pcmpgtb => PCMPGTB,
        M::Pcmpgtw => PCMPGTW,
        M::Pcmpgtd => PCMPGTD,
        M::Packsswb => PACKSSWB,
        M::Packssdw => PACKSSDW,
        M::Packuswb => PACKUSWB,
        M::Punpcklbw => PUNPCKLBW,
        M::Punpcklwd => PUNPCKLWD,
        M::Punpckldq => PUNPCKLDQ,
        M::Punpcklqdq => PUNPCKLQDQ,
        M::Punpckhbw => PUNPCKHBW,
        M::Punpckhwd => PUNPCKHWD,
        M::Punpckhdq => PUNPCKHDQ,
        M::Punpckhqdq => PUNPCKHQDQ,
        M::Pand => PAND,
        M::Pandn => PANDN,
        M::Por => POR,
        M::Pxor => PXOR,
        M::Psllw => PSLLW,
        M::Pslld => PSLLD,
        M::Psllq => PSLLQ,
        M::Psrlw => PSRLW,
        M::Psrld => PSRLD,
        M::Psrlq => PSRLQ,
        M::Psraw => PSRAW,
        M::Psrad => PSRAD,
        M::Pslldq => PSLLDQ,
        M::Psrldq => PSRLDQ,
        M::Pshufb => PSHUFB,
        M::Phaddw => PHADDW,
        M::Phaddd => PHADDD,
        M::Phaddsw => PHADDSW,
        M::Phsubw => PHSUBW,
        M::Phsubd => PHSUBD,
        M::Phsubsw => PHSUBSW,
        M::Pmaddubsw => PMADDUBSW,
        M::Pmulhrsw => PMULHRSW,
        M::Psignb => PSIGNB,
        M::Psignw => PSIGNW,
        M::Psignd => PSIGND,
        M::Pabsb => PABSB,
        M::Pabsw => PABSW,
        M::Pabsd => PABSD,
        M::Palignr => PALIGNR,
        M::Pmovsxbw => PMOVSXBW,
        M::Pmovsxbd => PMOVSXBD,
        M::Pmovsxbq => PMOVSXBQ,
        M::Pmovsxwd => PMOVSXWD,
        M::Pmovsxwq => PMOVSXWQ,
        M::Pmovsxdq => PMOVSXDQ,
        M::Pmovzxbw => PMOVZXBW,
        M::Pmovzxbd => PMOVZXBD,
        M::Pmovzxbq => PMOVZXBQ,
        M::Pmovzxwd => PMOVZXWD,
        M::Pmovzxwq => PMOVZXWQ,
        M::Pmovzxdq => PMOVZXDQ,
        M::Pmuldq => PMULDQ,
        M::Pmulld => PMULLD,
        M::Pminsb => PMINSB,
        M::Pminsd => PMINSD,
        M::Pmaxsb => PMAXSB,
        M::Pmaxsd => PMAXSD,
        M::Pminuw => PMINUW,
        M::Pminud => PMINUD,
        M::Pmaxuw => PMAXUW,
        M::Pmaxud => PMAXUD,
        M::Pcmpeqq => PCMPEQQ,
        M::Packusdw => PACKUSDW,
        M::Phminposuw => PHMINPOSUW,
        M::Mpsadbw => MPSADBW,
        M::Pcmpgtq => PCMPGTQ,
        _ => return None,
    })
}

/// One handler per operation, indexed by `op`.
macro_rules! table {
    ($f:ident) => {
        [
            $f::<0>, $f::<1>, $f::<2>, $f::<3>, $f::<4>, $f::<5>, $f::<6>, $f::<7>, $f::<8>,
            $f::<9>, $f::<10>, $f::<11>, $f::<12>, $f::<13>, $f::<14>, $f::<15>, $f::<16>,
            $f::<17>, $f::<18>, $f::<19>, $f::<20>, $f::<21>, $f::<22>, $f::<23>, $f::<24>,
            $f::<25>, $f::<26>, $f::<27>, $f::<28>, $f::<29>, $f::<30>, $f::<31>, $f::<32>,
            $f::<33>, $f::<34>, $f::<35>, $f::<36>, $f::<37>, $f::<38>, $f::<39>, $f::<40>,
            $f::<41>, $f::<42>, $f::<43>, $f::<44>, $f::<45>, $f::<46>, $f::<47>, $f::<48>,
            $f::<49>, $f::<50>, $f::<51>, $f::<52>, $f::<53>, $f::<54>, $f::<55>, $f::<56>,
            $f::<57>, $f::<58>, $f::<59>, $f::<60>, $f::<61>, $f::<62>, $f::<63>, $f::<64>,
            $f::<65>, $f::<66>, $f::<67>, $f::<68>, $f::<69>, $f::<70>, $f::<71>, $f::<72>,
            $f::<73>, $f::<74>, $f::<75>, $f::<76>, $f::<77>, $f::<78>, $f::<79>, $f::<80>,
            $f::<81>, $f::<82>, $f::<83>, $f::<84>, $f::<85>, $f::<86>, $f::<87>, $f::<88>,
            $f::<89>, $f::<90>, $f::<91>, $f::<92>, $f::<93>, $f::<94>, $f::<95>, $f::<96>,
            $f::<97>, $f::<98>, $f::<99>, $f::<100>, $f::<101>,
        ]
    };
}

static XMM_HANDLERS: [Handler; op::COUNT] = table!(xmm_op);
static MMX_HANDLERS: [Handler; op::COUNT] = table!(mmx_op);

/// The immediate operand (operand 2), or 0.
#[inline(always)]
fn imm8(insn: &Insn) -> u8 {
    match insn.ops[2] {
        Opnd::Imm(v) => v as u8,
        _ => 0,
    }
}

/// The bytes a memory source of `insn` holds (16, 8, 4 or 2).
#[inline(always)]
fn mem_bytes(insn: &Insn) -> usize {
    insn.ins.memory_size().size()
}

/// An XMM form: `op0 = OP(op0, op1 [, imm8])`; `op1` is an XMM register,
/// memory or an immediate shift count.
pub fn xmm_op<const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = match insn.ops[1] {
        Opnd::Imm(v) => u128::from(v as u8),
        _ => src_xmm(cpu, m, insn, 1, mem_bytes(insn), true)?,
    };
    let di = xmm_index(insn.ins.op0_register());
    let r = lanes::compute(OP, xmm(cpu, di), s, imm8(insn), 16);
    set_xmm(cpu, di, r);
    Ok(())
}

/// An MMX form: `op0 = OP(op0, op1 [, imm8])`; `op1` is an MMX register,
/// memory or an immediate shift count.
pub fn mmx_op<const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    let s = match insn.ops[1] {
        Opnd::Imm(v) => v & 0xFF,
        _ => src_mm(cpu, m, insn, 1)?,
    };
    mmx_enter(cpu);
    let di = mm_index(insn.ins.op0_register());
    let r = lanes::compute(OP, u128::from(mm(cpu, di)), u128::from(s), imm8(insn), 8);
    set_mm(cpu, di, r as u64);
    Ok(())
}

/// PTEST: ZF = (op0 AND op1) is zero, CF = (NOT op0 AND op1) is zero; AF, OF,
/// PF and SF cleared (SDM vol. 2B "PTEST").
pub fn ptest(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let d = xmm(cpu, xmm_index(insn.ins.op0_register()));
    let mut f = cpu.rflags & !flags::ARITH;
    if d & s == 0 {
        f |= flags::ZF;
    }
    if !d & s == 0 {
        f |= flags::CF;
    }
    cpu.rflags = f;
    Ok(())
}

/// EMMS: every x87 register tagged empty (SDM vol. 2A "EMMS").
pub fn emms(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    cpu.fpu.tw = 0xFFFF;
    Ok(())
}

/// MOVD mm, r/m32 (zero-extended), MOVQ mm, r/m64 and MOVQ mm, mm/m64.
pub fn mmx_load(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    let n = if insn.ins.code() == Code::Movd_mm_rm32 {
        4
    } else {
        8
    };
    let v = match insn.ops[1] {
        Opnd::Gpr { idx, shift } => get_gpr(cpu, idx, shift, n),
        Opnd::Mem => read_mem(cpu, m, insn, n as usize)? as u64,
        _ => mm(cpu, mm_index(insn.ins.op1_register())),
    };
    mmx_enter(cpu);
    set_mm(cpu, mm_index(insn.ins.op0_register()), v);
    Ok(())
}

/// MOVD r/m32, mm (the low half), MOVQ r/m64, mm and MOVQ mm/m64, mm. A store
/// that faults leaves the x87 state as it was.
pub fn mmx_store(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    let n = if insn.ins.code() == Code::Movd_rm32_mm {
        4
    } else {
        8
    };
    let v = mm(cpu, mm_index(insn.ins.op1_register()));
    match insn.ops[0] {
        Opnd::Gpr { idx, shift } => set_gpr(cpu, idx, shift, n, v),
        Opnd::Mem => write_mem(cpu, m, insn, n as usize, u128::from(v), false)?,
        _ => set_mm(cpu, mm_index(insn.ins.op0_register()), v),
    }
    mmx_enter(cpu);
    Ok(())
}
