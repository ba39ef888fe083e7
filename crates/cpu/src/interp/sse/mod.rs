//! SSE through SSE4.2, MMX, POPCNT and the SIMD state instructions: the shared
//! plumbing every family's handlers use.
//!
//! State: the XMM registers and MXCSR live in the FXSAVE image `CpuState::fx`
//! (MXCSR at bytes 24-27, XMMi at 160 + 16i), so FXSAVE/FXRSTOR and XSAVE copy
//! them as they are. An MMX register MMi is the significand of the x87 physical
//! register Ri (SDM vol. 1 §9.5): an MMX instruction sets TOP to 0 and tags every
//! register valid, a write also sets the exponent field to all ones, and EMMS
//! tags every register empty.
//!
//! Checks, in the SDM's order (vol. 2A §2.5 / vol. 3A §13.1): CR0.EM set or
//! CR4.OSFXSR clear raises #UD for an SSE instruction; CR0.TS raises #NM; the
//! 16-byte alignment of the aligned forms (MOVAPS, MOVDQA, and every legacy-SSE
//! memory operand of 16 bytes that is not explicitly unaligned) raises #GP(0).
//! MMX instructions check CR0.EM (#UD) and CR0.TS (#NM), then a pending x87
//! exception (#MF).
//!
//! The families are one file each; [`handler`] asks each in turn.

pub mod data;
pub mod float;
pub mod int;

use super::x87::{memop, read_block, write_block, MemOp};
use super::{Exec, Handler, Insn, Opnd};
use crate::exception::Exception;
use crate::mmu::cr4;
use crate::state::{cr0, CpuState};
use iced_x86::{Instruction, OpKind, Register};
use x86bt_machine::Machine;

/// The handler for an SSE, MMX or POPCNT instruction, or `None` when `ins` is
/// none of them (the caller goes on with its own table).
pub fn handler(ins: &Instruction) -> Option<Handler> {
    int::handler(ins)
        .or_else(|| data::handler(ins))
        .or_else(|| float::handler(ins))
}

/// MXCSR bits (SDM vol. 1 §10.2.3).
pub mod mxcsr {
    /// Invalid-operation flag.
    pub const IE: u32 = 1 << 0;
    /// Denormal flag.
    pub const DE: u32 = 1 << 1;
    /// Divide-by-zero flag.
    pub const ZE: u32 = 1 << 2;
    /// Overflow flag.
    pub const OE: u32 = 1 << 3;
    /// Underflow flag.
    pub const UE: u32 = 1 << 4;
    /// Precision flag.
    pub const PE: u32 = 1 << 5;
    /// Denormals are zeros.
    pub const DAZ: u32 = 1 << 6;
    /// The six exception flags.
    pub const FLAGS: u32 = 0x3F;
    /// The six masks (bits 7-12), one above each flag by 7.
    pub const MASKS: u32 = 0x3F << 7;
    /// Rounding control (bits 13-14): 0 nearest, 1 down, 2 up, 3 toward zero.
    pub const RC: u32 = 3 << 13;
    /// Flush to zero.
    pub const FTZ: u32 = 1 << 15;
    /// Every writable bit (MXCSR_MASK, reported by FXSAVE): with DAZ.
    pub const WRITABLE: u32 = 0xFFFF;
}

/// The index (0-15) of an XMM register.
#[inline]
pub fn xmm_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

/// The index (0-7) of an MMX register.
#[inline]
pub fn mm_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::MM0 as usize) & 7
}

/// XMM register `i`.
#[inline]
pub fn xmm(cpu: &CpuState, i: usize) -> u128 {
    let at = 160 + 16 * i;
    let mut b = [0u8; 16];
    b.copy_from_slice(&cpu.fx[at..at + 16]);
    u128::from_le_bytes(b)
}

/// Writes XMM register `i`.
#[inline]
pub fn set_xmm(cpu: &mut CpuState, i: usize, v: u128) {
    let at = 160 + 16 * i;
    cpu.fx[at..at + 16].copy_from_slice(&v.to_le_bytes());
}

/// MXCSR.
#[inline]
pub fn mxcsr(cpu: &CpuState) -> u32 {
    u32::from_le_bytes([cpu.fx[24], cpu.fx[25], cpu.fx[26], cpu.fx[27]])
}

/// Writes MXCSR (the caller has checked reserved bits).
#[inline]
pub fn set_mxcsr(cpu: &mut CpuState, v: u32) {
    cpu.fx[24..28].copy_from_slice(&v.to_le_bytes());
}

/// MMX register `i` (the significand of x87 physical register Ri).
#[inline]
pub fn mm(cpu: &CpuState, i: usize) -> u64 {
    cpu.fpu.regs[i].sig
}

/// Writes MMX register `i`: the significand, and the exponent field all ones
/// (SDM vol. 1 §9.5.1).
#[inline]
pub fn set_mm(cpu: &mut CpuState, i: usize, v: u64) {
    cpu.fpu.regs[i].sig = v;
    cpu.fpu.regs[i].se = 0xFFFF;
}

/// The x87 side effects of every MMX instruction except EMMS: TOP = 0 and all
/// registers tagged valid (SDM vol. 1 Table 9-2).
#[inline]
pub fn mmx_enter(cpu: &mut CpuState) {
    cpu.fpu.top = 0;
    cpu.fpu.tw = 0;
}

/// #UD and #NM for an SSE instruction (SDM vol. 2A Table 2-19 "Type 4"/"Type 5"
/// exception classes): CR0.EM or a clear CR4.OSFXSR is #UD, CR0.TS is #NM.
#[inline]
pub fn check_sse(cpu: &CpuState) -> Exec {
    if cpu.cr0 & cr0::EM != 0 || cpu.cr4 & cr4::OSFXSR == 0 {
        return Err(Exception::InvalidOpcode);
    }
    if cpu.cr0 & cr0::TS != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    Ok(())
}

/// #UD, #NM and #MF for an MMX instruction (SDM vol. 2A Table 2-29 class 22-7).
#[inline]
pub fn check_mmx(cpu: &CpuState) -> Exec {
    if cpu.cr0 & cr0::EM != 0 {
        return Err(Exception::InvalidOpcode);
    }
    if cpu.cr0 & cr0::TS != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    if cpu.fpu.sw & crate::fpu::sw::ES != 0 {
        return Err(Exception::FpuError);
    }
    Ok(())
}

/// Raises what `flags` (MXCSR exception flags an instruction detected) call
/// for: sets them in MXCSR, and returns #XM (CR4.OSXMMEXCPT set) or #UD (clear)
/// when one of them is unmasked. The caller decides, per the SDM, whether the
/// destination was written (pre-computation exceptions: not written; post-
/// computation: written only when all are masked).
#[inline]
pub fn raise_simd(cpu: &mut CpuState, flags: u32) -> Exec {
    let flags = flags & mxcsr::FLAGS;
    if flags == 0 {
        return Ok(());
    }
    let csr = mxcsr(cpu);
    set_mxcsr(cpu, csr | flags);
    let unmasked = flags & !(csr >> 7) & mxcsr::FLAGS;
    if unmasked == 0 {
        Ok(())
    } else if cpu.cr4 & cr4::OSXMMEXCPT != 0 {
        Err(Exception::SimdFloat)
    } else {
        Err(Exception::InvalidOpcode)
    }
}

/// The memory operand of `insn`.
#[inline]
#[allow(dead_code)]
pub(crate) fn mem(cpu: &CpuState, insn: &Insn) -> MemOp {
    memop(cpu, insn)
}

/// #GP(0) unless the memory operand's linear address is 16-byte aligned.
#[inline]
pub(crate) fn check_align16(cpu: &CpuState, mo: MemOp) -> Exec {
    let lin = cpu.seg[mo.seg].base.wrapping_add(mo.off);
    if lin & 15 != 0 {
        Err(Exception::GeneralProtection(0))
    } else {
        Ok(())
    }
}

/// Reads `n` (1-16) bytes of the memory operand, zero-extended.
#[inline]
pub fn read_mem(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    n: usize,
) -> Result<u128, Exception> {
    let mo = memop(cpu, insn);
    let mut b = [0u8; 16];
    read_block(cpu, m, mo, &mut b[..n])?;
    Ok(u128::from_le_bytes(b))
}

/// Reads the 16-byte memory operand, with the alignment check when `aligned`.
#[inline]
pub fn read_mem128(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    aligned: bool,
) -> Result<u128, Exception> {
    let mo = memop(cpu, insn);
    if aligned {
        check_align16(cpu, mo)?;
    }
    let mut b = [0u8; 16];
    read_block(cpu, m, mo, &mut b)?;
    Ok(u128::from_le_bytes(b))
}

/// Writes the low `n` (1-16) bytes of `v` to the memory operand, after checking
/// that all of them can be written; the alignment check first when `aligned`.
#[inline]
pub fn write_mem(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    n: usize,
    v: u128,
    aligned: bool,
) -> Exec {
    let mo = memop(cpu, insn);
    if aligned {
        check_align16(cpu, mo)?;
    }
    write_block(cpu, m, mo, &v.to_le_bytes()[..n])
}

/// Operand `i` as a 128-bit source: an XMM register, or `n` bytes of memory
/// (16 with `aligned` for the forms that check alignment; 4 or 8 for scalar
/// forms, zero-extended).
#[inline]
pub fn src_xmm(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    i: u32,
    n: usize,
    aligned: bool,
) -> Result<u128, Exception> {
    match insn.ins.op_kind(i) {
        OpKind::Register => Ok(xmm(cpu, xmm_index(insn.ins.op_register(i)))),
        _ if n == 16 => read_mem128(cpu, m, insn, aligned),
        _ => read_mem(cpu, m, insn, n),
    }
}

/// Operand `i` as a 64-bit MMX source: an MMX register or 8 bytes of memory.
#[inline]
pub fn src_mm(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, i: u32) -> Result<u64, Exception> {
    match insn.ins.op_kind(i) {
        OpKind::Register => Ok(mm(cpu, mm_index(insn.ins.op_register(i)))),
        _ => Ok(read_mem(cpu, m, insn, 8)? as u64),
    }
}

/// Whether operand `i` of `insn` is a general-purpose register or memory
/// prepared as such (for MOVD/MOVQ, PEXTR*, PINSR*, CVTSI2SS and the like).
#[inline]
pub fn is_gpr_or_mem(insn: &Insn, i: usize) -> bool {
    matches!(insn.ops[i], Opnd::Gpr { .. } | Opnd::Mem)
}
