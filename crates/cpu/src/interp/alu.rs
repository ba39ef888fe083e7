//! Integer ALU, moves, exchanges, conversions and flag-register instructions.

use super::flags::{self, cond};
use super::ops::*;
use super::{Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::mmu::{self, FastUse};
use crate::state::flags::*;
use crate::state::{reg, CpuState};
use x86bt_machine::Machine;

/// ADD
pub const ADD: u8 = 0;
/// OR
pub const OR: u8 = 1;
/// ADC
pub const ADC: u8 = 2;
/// SBB
pub const SBB: u8 = 3;
/// AND
pub const AND: u8 = 4;
/// SUB
pub const SUB: u8 = 5;
/// XOR
pub const XOR: u8 = 6;
/// CMP
pub const CMP: u8 = 7;
/// TEST
pub const TEST: u8 = 8;

/// The eight classic two-operand ALU operations and TEST.
pub fn binop<const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    match insn.size() {
        1 => binop_n::<OP, 1>(cpu, m, insn),
        2 => binop_n::<OP, 2>(cpu, m, insn),
        4 => binop_n::<OP, 4>(cpu, m, insn),
        _ => binop_n::<OP, 8>(cpu, m, insn),
    }
}

/// [`binop`] at operand size `N`, known when the unit is decoded. Out of
/// line: the specialized forms fall back on it, and their fast paths stay
/// free of its frame.
#[inline(never)]
pub fn binop_n<const OP: u8, const N: u32>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let writes = OP != CMP && OP != TEST;
    let dst = loc(cpu, insn, 0);
    if writes {
        probe_write(cpu, dst, N)?;
    }
    let a = load(cpu, m, dst, N)?;
    let b = read_op(cpu, m, insn, 1, N)?;
    let r = alu_op::<OP>(cpu, a, b, N);
    if writes {
        store(cpu, m, dst, N, r)?;
    }
    Ok(())
}

/// [`binop`] with a GPR destination and a GPR source (`IMM` false) or an
/// immediate (`IMM` true), at operand size `N`: the register forms, which
/// cannot fault.
pub fn binop_r<const OP: u8, const N: u32, const IMM: bool>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let b = match insn.ops[1] {
        Opnd::Gpr { idx, shift } if !IMM => get_gpr(cpu, idx, shift, N),
        Opnd::Imm(v) if IMM => v & mask(N),
        _ => return binop_n::<OP, N>(cpu, m, insn),
    };
    let Opnd::Gpr { idx, shift } = insn.ops[0] else {
        return binop_n::<OP, N>(cpu, m, insn);
    };
    let a = get_gpr(cpu, idx, shift, N);
    let r = alu_op::<OP>(cpu, a, b, N);
    if OP != CMP && OP != TEST {
        set_gpr(cpu, idx, shift, N, r);
    }
    Ok(())
}

/// [`binop`] with a GPR destination and the memory operand as source, at
/// operand size `N`: [`binop_n`]'s steps for that form (the register is read
/// before the memory operand; neither has an effect of its own).
pub fn binop_rm<const OP: u8, const N: u32>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let (Opnd::Gpr { idx, shift }, Opnd::Mem) = (insn.ops[0], insn.ops[1]) else {
        return binop_n::<OP, N>(cpu, m, insn);
    };
    let off = ea(cpu, &insn.mem);
    let seg = usize::from(insn.mem.seg);
    let Some(h) = mmu::fast_data(cpu, m, seg, off, N, FastUse::Read) else {
        return binop_n::<OP, N>(cpu, m, insn);
    };
    let a = get_gpr(cpu, idx, shift, N);
    // SAFETY: `fast_data` answered this read just now.
    let b = unsafe { mmu::fast_read(h, N) };
    let r = alu_op::<OP>(cpu, a, b, N);
    if OP != CMP && OP != TEST {
        set_gpr(cpu, idx, shift, N, r);
    }
    Ok(())
}

/// [`binop`] with the memory operand as destination and a GPR (`IMM` false)
/// or an immediate (`IMM` true) as source, at operand size `N`: [`binop_n`]'s
/// steps for that form (the segment's write check, the read, the write).
pub fn binop_m<const OP: u8, const N: u32, const IMM: bool>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let b = match insn.ops[1] {
        Opnd::Gpr { idx, shift } if !IMM => get_gpr(cpu, idx, shift, N),
        Opnd::Imm(v) if IMM => v & mask(N),
        _ => return binop_n::<OP, N>(cpu, m, insn),
    };
    if insn.ops[0] != Opnd::Mem {
        return binop_n::<OP, N>(cpu, m, insn);
    }
    let writes = OP != CMP && OP != TEST;
    let (s, off) = (usize::from(insn.mem.seg), ea(cpu, &insn.mem));
    let kind = if writes {
        FastUse::Modify
    } else {
        FastUse::Read
    };
    let Some(h) = mmu::fast_data(cpu, m, s, off, N, kind) else {
        return binop_n::<OP, N>(cpu, m, insn);
    };
    // SAFETY: `fast_data` answered this access just now.
    let a = unsafe { mmu::fast_read(h, N) };
    let r = alu_op::<OP>(cpu, a, b, N);
    if writes {
        // SAFETY: as above; only the read ran since.
        unsafe { mmu::fast_write(h, N, r) };
    }
    Ok(())
}

/// The result and flags of ALU operation `OP` on `size`-byte operands.
#[inline(always)]
fn alu_op<const OP: u8>(cpu: &mut CpuState, a: u64, b: u64, size: u32) -> u64 {
    let c = cpu.rflags & CF;
    match OP {
        ADD => flags::add(cpu, a, b, 0, size),
        ADC => flags::add(cpu, a, b, c, size),
        SUB | CMP => flags::sub(cpu, a, b, 0, size),
        SBB => flags::sub(cpu, a, b, c, size),
        _ => {
            let r = match OP {
                OR => a | b,
                XOR => a ^ b,
                _ => a & b,
            };
            flags::logic(cpu, r, size);
            r
        }
    }
}

/// INC and DEC: like ADD/SUB 1 but CF is kept.
pub fn incdec<const DEC: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    match insn.size() {
        1 => incdec_n::<DEC, 1>(cpu, m, insn),
        2 => incdec_n::<DEC, 2>(cpu, m, insn),
        4 => incdec_n::<DEC, 4>(cpu, m, insn),
        _ => incdec_n::<DEC, 8>(cpu, m, insn),
    }
}

/// [`incdec`] at operand size `N`, known when the unit is decoded.
pub fn incdec_n<const DEC: bool, const N: u32>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let dst = loc(cpu, insn, 0);
    probe_write(cpu, dst, N)?;
    let a = load(cpu, m, dst, N)?;
    let cf = cpu.rflags & CF;
    let r = if DEC {
        flags::sub(cpu, a, 1, 0, N)
    } else {
        flags::add(cpu, a, 1, 0, N)
    };
    cpu.rflags = (cpu.rflags & !CF) | cf;
    store(cpu, m, dst, N, r)
}

/// [`incdec`] of a GPR at operand size `N` (cannot fault).
pub fn incdec_r<const DEC: bool, const N: u32>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let Opnd::Gpr { idx, shift } = insn.ops[0] else {
        return incdec_n::<DEC, N>(cpu, m, insn);
    };
    let a = get_gpr(cpu, idx, shift, N);
    let cf = cpu.rflags & CF;
    let r = if DEC {
        flags::sub(cpu, a, 1, 0, N)
    } else {
        flags::add(cpu, a, 1, 0, N)
    };
    cpu.rflags = (cpu.rflags & !CF) | cf;
    set_gpr(cpu, idx, shift, N, r);
    Ok(())
}

/// NEG: 0 - x; CF = (x != 0).
pub fn neg(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let dst = loc(cpu, insn, 0);
    probe_write(cpu, dst, size)?;
    let a = load(cpu, m, dst, size)?;
    let r = flags::sub(cpu, 0, a, 0, size);
    store(cpu, m, dst, size, r)
}

/// NOT: no flags.
pub fn not(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let dst = loc(cpu, insn, 0);
    probe_write(cpu, dst, size)?;
    let a = load(cpu, m, dst, size)?;
    store(cpu, m, dst, size, !a)
}

/// MOV between GPRs, memory and immediates.
pub fn mov(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    match insn.size() {
        1 => mov_n::<1>(cpu, m, insn),
        2 => mov_n::<2>(cpu, m, insn),
        4 => mov_n::<4>(cpu, m, insn),
        _ => mov_n::<8>(cpu, m, insn),
    }
}

/// [`mov`] at operand size `N`, known when the unit is decoded. Out of line
/// as [`binop_n`] is.
#[inline(never)]
pub fn mov_n<const N: u32>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let v = read_op(cpu, m, insn, 1, N)?;
    write_op(cpu, m, insn, 0, N, v)
}

/// MOV r, m at operand size `N`.
pub fn mov_load_n<const N: u32>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let (Opnd::Gpr { idx, shift }, Opnd::Mem) = (insn.ops[0], insn.ops[1]) else {
        return mov_n::<N>(cpu, m, insn);
    };
    let off = ea(cpu, &insn.mem);
    let Some(h) = mmu::fast_data(cpu, m, usize::from(insn.mem.seg), off, N, FastUse::Read) else {
        return mov_n::<N>(cpu, m, insn);
    };
    // SAFETY: `fast_data` answered this read just now.
    let v = unsafe { mmu::fast_read(h, N) };
    set_gpr(cpu, idx, shift, N, v);
    Ok(())
}

/// MOV m, r (`IMM` false) and MOV m, imm (`IMM` true) at operand size `N`.
pub fn mov_store_n<const N: u32, const IMM: bool>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let v = match insn.ops[1] {
        Opnd::Gpr { idx, shift } if !IMM => get_gpr(cpu, idx, shift, N),
        Opnd::Imm(v) if IMM => v & mask(N),
        _ => return mov_n::<N>(cpu, m, insn),
    };
    if insn.ops[0] != Opnd::Mem {
        return mov_n::<N>(cpu, m, insn);
    }
    let off = ea(cpu, &insn.mem);
    let Some(h) = mmu::fast_data(cpu, m, usize::from(insn.mem.seg), off, N, FastUse::Write) else {
        return mov_n::<N>(cpu, m, insn);
    };
    // SAFETY: `fast_data` answered this write just now.
    unsafe { mmu::fast_write(h, N, v) };
    Ok(())
}

/// MOV r, imm at operand size `N`.
pub fn mov_ri_n<const N: u32>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let (Opnd::Gpr { idx, shift }, Opnd::Imm(v)) = (insn.ops[0], insn.ops[1]) else {
        return mov_n::<N>(cpu, m, insn);
    };
    set_gpr(cpu, idx, shift, N, v & mask(N));
    Ok(())
}

/// MOV r, r (the hot register form).
pub fn mov_rr(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    match insn.size() {
        1 => mov_rr_n::<1>(cpu, m, insn),
        2 => mov_rr_n::<2>(cpu, m, insn),
        4 => mov_rr_n::<4>(cpu, m, insn),
        _ => mov_rr_n::<8>(cpu, m, insn),
    }
}

/// [`mov_rr`] at operand size `N`.
pub fn mov_rr_n<const N: u32>(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    if let (Opnd::Gpr { idx: d, shift: ds }, Opnd::Gpr { idx: s, shift: ss }) =
        (insn.ops[0], insn.ops[1])
    {
        let v = get_gpr(cpu, s, ss, N);
        set_gpr(cpu, d, ds, N, v);
    }
    Ok(())
}

/// MOVZX and MOVSX.
pub fn movx<const SIGNED: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let dsize = insn.ins.op0_register().size() as u32;
    let ssize = movx_source_size(insn);
    let v = read_op(cpu, m, insn, 1, ssize)?;
    let v = if SIGNED { sext(v, ssize) as u64 } else { v };
    write_op(cpu, m, insn, 0, dsize, v)
}

/// The source size of a MOVZX or MOVSX in bytes.
pub fn movx_source_size(insn: &Insn) -> u32 {
    match insn.ops[1] {
        Opnd::Gpr { .. } => insn.ins.op1_register().size() as u32,
        _ => insn.ins.memory_size().size() as u32,
    }
}

/// [`movx`] from `S` bytes to `D` bytes, both known when the unit is decoded.
pub fn movx_n<const SIGNED: bool, const S: u32, const D: u32>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    debug_assert_eq!(
        (S, D),
        (
            movx_source_size(insn),
            insn.ins.op0_register().size() as u32
        )
    );
    let v = match insn.ops[1] {
        Opnd::Mem => {
            let off = ea(cpu, &insn.mem);
            match mmu::fast_data(cpu, m, usize::from(insn.mem.seg), off, S, FastUse::Read) {
                // SAFETY: `fast_data` answered this read just now.
                Some(h) => unsafe { mmu::fast_read(h, S) },
                None => return movx_slow::<SIGNED, S, D>(cpu, m, insn),
            }
        }
        _ => read_op(cpu, m, insn, 1, S)?,
    };
    let v = if SIGNED { sext(v, S) as u64 } else { v };
    write_op(cpu, m, insn, 0, D, v)
}

/// [`movx_n`] through the full memory path.
#[inline(never)]
fn movx_slow<const SIGNED: bool, const S: u32, const D: u32>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let v = read_op(cpu, m, insn, 1, S)?;
    let v = if SIGNED { sext(v, S) as u64 } else { v };
    write_op(cpu, m, insn, 0, D, v)
}

/// XCHG (with memory it is implicitly locked; single-threaded, that is atomic).
pub fn xchg(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let a = loc(cpu, insn, 0);
    let b = loc(cpu, insn, 1);
    probe_write(cpu, a, size)?;
    probe_write(cpu, b, size)?;
    let va = load(cpu, m, a, size)?;
    let vb = load(cpu, m, b, size)?;
    store(cpu, m, a, size, vb)?;
    store(cpu, m, b, size, va)
}

/// LEA: the offset, truncated to the operand size.
pub fn lea(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let v = ea(cpu, &insn.mem);
    write_op(cpu, m, insn, 0, insn.size(), v)
}

/// CBW/CWDE/CDQE: sign-extend the lower half of the accumulator.
pub fn cbw(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let half = size / 2;
    let v = sext(cpu.gpr[reg::RAX], half) as u64;
    set_gpr(cpu, reg::RAX as u8, 0, size, v);
    Ok(())
}

/// CWD/CDQ/CQO: sign-extend the accumulator into DX/EDX/RDX.
pub fn cwd(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let neg = cpu.gpr[reg::RAX] & sign_bit(size) != 0;
    set_gpr(cpu, reg::RDX as u8, 0, size, if neg { u64::MAX } else { 0 });
    Ok(())
}

/// LAHF: AH = SF:ZF:0:AF:0:PF:1:CF.
pub fn lahf(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    let v = (cpu.rflags & (SF | ZF | AF | PF | CF)) | FIXED1;
    set_gpr(cpu, reg::RAX as u8, 8, 1, v);
    Ok(())
}

/// SAHF: SF, ZF, AF, PF, CF from AH.
pub fn sahf(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    let ah = get_gpr(cpu, reg::RAX as u8, 8, 1);
    flags::set(cpu, SF | ZF | AF | PF | CF, ah);
    Ok(())
}

/// SETcc.
pub fn setcc(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let v = u64::from(cond(cpu, insn.ins.condition_code()));
    write_op(cpu, m, insn, 0, 1, v)
}

/// CMOVcc: the source is read (and may fault) whatever the condition.
pub fn cmovcc(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let v = read_op(cpu, m, insn, 1, size)?;
    if cond(cpu, insn.ins.condition_code()) {
        write_op(cpu, m, insn, 0, size, v)?;
    } else if size == 4 {
        // A 32-bit destination is zero-extended even when the move is not taken.
        let old = read_op(cpu, m, insn, 0, 4)?;
        write_op(cpu, m, insn, 0, 4, old)?;
    }
    Ok(())
}

/// XADD: dst = dst + src, src = old dst.
pub fn xadd(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let d = loc(cpu, insn, 0);
    probe_write(cpu, d, size)?;
    let a = load(cpu, m, d, size)?;
    let b = read_op(cpu, m, insn, 1, size)?;
    let r = flags::add(cpu, a, b, 0, size);
    write_op(cpu, m, insn, 1, size, a)?;
    store(cpu, m, d, size, r)
}

/// CMPXCHG: compare the accumulator with the destination.
pub fn cmpxchg(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let d = loc(cpu, insn, 0);
    probe_write(cpu, d, size)?;
    let dv = load(cpu, m, d, size)?;
    let src = read_op(cpu, m, insn, 1, size)?;
    let acc = cpu.gpr[reg::RAX] & mask(size);
    flags::sub(cpu, acc, dv, 0, size);
    if acc == dv {
        store(cpu, m, d, size, src)
    } else {
        // A memory destination is written back with its own value (SDM: the
        // processor never produces a locked read without a locked write); a
        // register destination is not written at all, so a 32-bit one keeps
        // its upper half in 64-bit mode (as hardware and QEMU do).
        if let Loc::Mem(..) = d {
            store(cpu, m, d, size, dv)?;
        }
        set_gpr(cpu, reg::RAX as u8, 0, size, dv);
        Ok(())
    }
}

/// CMPXCHG8B m64.
pub fn cmpxchg8b(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if insn.ops[0] != Opnd::Mem {
        return Err(Exception::InvalidOpcode);
    }
    let d = loc(cpu, insn, 0);
    probe_write(cpu, d, 8)?;
    let v = load(cpu, m, d, 8)?;
    let edx_eax = (cpu.gpr[reg::RDX] & 0xFFFF_FFFF) << 32 | (cpu.gpr[reg::RAX] & 0xFFFF_FFFF);
    if v == edx_eax {
        let ecx_ebx = (cpu.gpr[reg::RCX] & 0xFFFF_FFFF) << 32 | (cpu.gpr[reg::RBX] & 0xFFFF_FFFF);
        store(cpu, m, d, 8, ecx_ebx)?;
        cpu.rflags |= ZF;
    } else {
        store(cpu, m, d, 8, v)?;
        set_gpr(cpu, reg::RAX as u8, 0, 4, v & 0xFFFF_FFFF);
        set_gpr(cpu, reg::RDX as u8, 0, 4, v >> 32);
        cpu.rflags &= !ZF;
    }
    Ok(())
}

/// BSWAP. With a 16-bit operand the result is undefined; Intel parts give zero.
pub fn bswap(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let v = read_op(cpu, m, insn, 0, size)?;
    let r = match size {
        4 => u64::from((v as u32).swap_bytes()),
        8 => v.swap_bytes(),
        _ => 0,
    };
    write_op(cpu, m, insn, 0, size, r)
}

/// SALC (undocumented, D6): AL = CF ? 0xFF : 0.
pub fn salc(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    let v = if cpu.rflags & CF != 0 { 0xFF } else { 0 };
    set_gpr(cpu, reg::RAX as u8, 0, 1, v);
    Ok(())
}

/// XLAT: AL = [seg:(E)BX + AL].
pub fn xlat(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let mem = &insn.mem;
    let off = (cpu.gpr[reg::RBX].wrapping_add(cpu.gpr[reg::RAX] & 0xFF)) & mem.addr_mask;
    let v = crate::mmu::read(cpu, m, mem.seg as usize, off, 1)?;
    set_gpr(cpu, reg::RAX as u8, 0, 1, v);
    Ok(())
}

/// CLC, STC, CMC, CLD, STD.
pub fn flag_op<const OP: u8>(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    match OP {
        0 => cpu.rflags &= !CF,
        1 => cpu.rflags |= CF,
        2 => cpu.rflags ^= CF,
        3 => cpu.rflags &= !DF,
        _ => cpu.rflags |= DF,
    }
    Ok(())
}

/// NOP, PAUSE, multi-byte NOP, and prefetch/hint forms: nothing happens.
pub fn nop(_cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    Ok(())
}

/// PAUSE: a NOP that hints a spin-wait; the run loop takes the hint.
pub fn pause(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    // With one vCPU there is no other to give the turn to.
    cpu.pause_hint = m.cpu_count() > 1;
    Ok(())
}

/// Raises #UD: undefined opcodes and everything not implemented.
pub fn undefined(_cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    Err(Exception::InvalidOpcode)
}
