//! Data moves, shuffles, blends, logic, insert/extract, SSE4.2 string compares,
//! CRC32, POPCNT, and the SIMD state instructions (MXCSR, XSAVE).
//!
//! Everything here is bit movement: no host floating point. Handlers read every
//! source (and check every destination that can fault) before they write, so a
//! fault leaves the state as it was. MMX forms take the MMX transition
//! ([`mmx_enter`]) only once their memory accesses have succeeded.
//!
//! Submodules: [`strings`] (PCMPxSTRx, CRC32, POPCNT) and [`state`] (LDMXCSR,
//! STMXCSR, fences, prefetches, CLFLUSH, XGETBV/XSETBV, XSAVE/XRSTOR).

pub mod state;
pub mod strings;

use super::super::ops::{mask, read_op, write_op};
use super::super::{Exec, Handler, Insn, Opnd};
use super::{
    check_mmx, check_sse, mm, mm_index, mmx_enter, read_mem, set_mm, set_xmm, src_mm, src_xmm,
    write_mem, xmm, xmm_index,
};
use crate::exception::Exception;
use crate::mmu;
use crate::state::CpuState;
use iced_x86::{Code, Instruction, OpKind, Register};
use x86bt_machine::Machine;

/// The handler for `ins` if it belongs to this family.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    use Code as C;
    let h: Handler = match ins.code() {
        C::Movaps_xmm_xmmm128
        | C::Movapd_xmm_xmmm128
        | C::Movdqa_xmm_xmmm128
        | C::Movaps_xmmm128_xmm
        | C::Movapd_xmmm128_xmm
        | C::Movdqa_xmmm128_xmm
        | C::Movntps_m128_xmm
        | C::Movntpd_m128_xmm
        | C::Movntdq_m128_xmm
        | C::Movntdqa_xmm_m128 => mov128::<true>,
        C::Movups_xmm_xmmm128
        | C::Movupd_xmm_xmmm128
        | C::Movdqu_xmm_xmmm128
        | C::Movups_xmmm128_xmm
        | C::Movupd_xmmm128_xmm
        | C::Movdqu_xmmm128_xmm
        | C::Lddqu_xmm_m128 => mov128::<false>,
        C::Movss_xmm_xmmm32 | C::Movss_xmmm32_xmm => movs::<4>,
        C::Movsd_xmm_xmmm64 | C::Movsd_xmmm64_xmm => movs::<8>,
        C::Movd_xmm_rm32 => movd_to_xmm::<4>,
        C::Movq_xmm_rm64 => movd_to_xmm::<8>,
        C::Movd_rm32_xmm => movd_from_xmm::<4>,
        C::Movq_rm64_xmm => movd_from_xmm::<8>,
        C::Movq_xmm_xmmm64 | C::Movq_xmmm64_xmm => movq_xmm,
        C::Movq2dq_xmm_mm => movq2dq,
        C::Movdq2q_mm_xmm => movdq2q,
        C::Movhps_xmm_m64 | C::Movhpd_xmm_m64 | C::Movhps_m64_xmm | C::Movhpd_m64_xmm => {
            movhl::<true>
        }
        C::Movlps_xmm_m64 | C::Movlpd_xmm_m64 | C::Movlps_m64_xmm | C::Movlpd_m64_xmm => {
            movhl::<false>
        }
        C::Movhlps_xmm_xmm => movhlps,
        C::Movlhps_xmm_xmm => movlhps,
        C::Movnti_m32_r32 | C::Movnti_m64_r64 => movnti,
        C::Movntq_m64_mm => movntq,
        C::Maskmovq_rDI_mm_mm => maskmov::<8>,
        C::Maskmovdqu_rDI_xmm_xmm => maskmov::<16>,
        C::Movddup_xmm_xmmm64 => movddup,
        C::Movsldup_xmm_xmmm128 => movdup32::<0>,
        C::Movshdup_xmm_xmmm128 => movdup32::<1>,
        C::Movmskps_r32_xmm | C::Movmskps_r64_xmm => movmsk::<4>,
        C::Movmskpd_r32_xmm | C::Movmskpd_r64_xmm => movmsk::<8>,
        C::Pmovmskb_r32_xmm | C::Pmovmskb_r64_xmm => movmsk::<1>,
        C::Pmovmskb_r32_mm | C::Pmovmskb_r64_mm => pmovmskb_mm,
        C::Andps_xmm_xmmm128 | C::Andpd_xmm_xmmm128 => logic::<AND>,
        C::Andnps_xmm_xmmm128 | C::Andnpd_xmm_xmmm128 => logic::<ANDN>,
        C::Orps_xmm_xmmm128 | C::Orpd_xmm_xmmm128 => logic::<OR>,
        C::Xorps_xmm_xmmm128 | C::Xorpd_xmm_xmmm128 => logic::<XOR>,
        C::Shufps_xmm_xmmm128_imm8 => shufps,
        C::Shufpd_xmm_xmmm128_imm8 => shufpd,
        C::Unpcklps_xmm_xmmm128 => unpck::<4, false>,
        C::Unpckhps_xmm_xmmm128 => unpck::<4, true>,
        C::Unpcklpd_xmm_xmmm128 => unpck::<8, false>,
        C::Unpckhpd_xmm_xmmm128 => unpck::<8, true>,
        C::Pshufd_xmm_xmmm128_imm8 => pshufd,
        C::Pshufhw_xmm_xmmm128_imm8 => pshufw_half::<true>,
        C::Pshuflw_xmm_xmmm128_imm8 => pshufw_half::<false>,
        C::Pshufw_mm_mmm64_imm8 => pshufw,
        C::Blendps_xmm_xmmm128_imm8 => blend_imm::<4>,
        C::Blendpd_xmm_xmmm128_imm8 => blend_imm::<8>,
        C::Pblendw_xmm_xmmm128_imm8 => blend_imm::<2>,
        C::Blendvps_xmm_xmmm128 => blendv::<4>,
        C::Blendvpd_xmm_xmmm128 => blendv::<8>,
        C::Pblendvb_xmm_xmmm128 => blendv::<1>,
        C::Insertps_xmm_xmmm32_imm8 => insertps,
        C::Extractps_rm32_xmm_imm8 | C::Extractps_r64m32_xmm_imm8 => pextr::<4>,
        C::Pextrb_r32m8_xmm_imm8 | C::Pextrb_r64m8_xmm_imm8 => pextr::<1>,
        C::Pextrw_r32_xmm_imm8
        | C::Pextrw_r64_xmm_imm8
        | C::Pextrw_r32m16_xmm_imm8
        | C::Pextrw_r64m16_xmm_imm8 => pextr::<2>,
        C::Pextrd_rm32_xmm_imm8 => pextr::<4>,
        C::Pextrq_rm64_xmm_imm8 => pextr::<8>,
        C::Pextrw_r32_mm_imm8 | C::Pextrw_r64_mm_imm8 => pextrw_mm,
        C::Pinsrb_xmm_r32m8_imm8 | C::Pinsrb_xmm_r64m8_imm8 => pinsr::<1>,
        C::Pinsrw_xmm_r32m16_imm8 | C::Pinsrw_xmm_r64m16_imm8 => pinsr::<2>,
        C::Pinsrd_xmm_rm32_imm8 => pinsr::<4>,
        C::Pinsrq_xmm_rm64_imm8 => pinsr::<8>,
        C::Pinsrw_mm_r32m16_imm8 | C::Pinsrw_mm_r64m16_imm8 => pinsrw_mm,
        _ => return strings::handler(ins).or_else(|| state::handler(ins)),
    };
    Some(h)
}

/// Whether operand `i` is a register.
#[inline]
fn is_reg(insn: &Insn, i: u32) -> bool {
    insn.ins.op_kind(i) == OpKind::Register
}

/// The XMM register index of operand `i`.
#[inline]
fn xr(insn: &Insn, i: u32) -> usize {
    xmm_index(insn.ins.op_register(i))
}

/// The MMX register index of operand `i`.
#[inline]
fn mr(insn: &Insn, i: u32) -> usize {
    mm_index(insn.ins.op_register(i))
}

/// The instruction's 8-bit immediate.
#[inline]
fn imm8(insn: &Insn) -> u32 {
    u32::from(insn.ins.immediate8())
}

/// All ones in the low `bytes` bytes of a 128-bit value.
#[inline]
const fn mask128(bytes: usize) -> u128 {
    if bytes >= 16 {
        u128::MAX
    } else {
        (1u128 << (bytes * 8)) - 1
    }
}

/// Lane `i` of `w`-byte lanes of `v`.
#[inline]
fn lane(v: u128, w: usize, i: usize) -> u128 {
    (v >> (i * w * 8)) & mask128(w)
}

/// `v` with lane `i` of `w`-byte lanes replaced by `x`.
#[inline]
fn with_lane(v: u128, w: usize, i: usize, x: u128) -> u128 {
    let sh = i * w * 8;
    (v & !(mask128(w) << sh)) | ((x & mask128(w)) << sh)
}

/// MOVAPS/MOVAPD/MOVDQA/MOVNTPS/MOVNTPD/MOVNTDQ/MOVNTDQA (`ALIGNED`), MOVUPS/
/// MOVUPD/MOVDQU/LDDQU: 16 bytes, register or memory either way.
fn mov128<const ALIGNED: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    if is_reg(insn, 0) {
        let v = src_xmm(cpu, m, insn, 1, 16, ALIGNED)?;
        set_xmm(cpu, xr(insn, 0), v);
        Ok(())
    } else {
        let v = xmm(cpu, xr(insn, 1));
        write_mem(cpu, m, insn, 16, v, ALIGNED)
    }
}

/// MOVSS/MOVSD (`N` = 4/8): register to register merges the low element;
/// a load zeroes the rest of the register; a store writes `N` bytes.
fn movs<const N: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    if !is_reg(insn, 0) {
        let v = xmm(cpu, xr(insn, 1));
        return write_mem(cpu, m, insn, N, v, false);
    }
    let d = xr(insn, 0);
    let v = if is_reg(insn, 1) {
        let s = xmm(cpu, xr(insn, 1));
        (xmm(cpu, d) & !mask128(N)) | (s & mask128(N))
    } else {
        read_mem(cpu, m, insn, N)?
    };
    set_xmm(cpu, d, v);
    Ok(())
}

/// MOVD/MOVQ xmm, r/m32/r/m64: zero-extended into the register.
fn movd_to_xmm<const N: u32>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let v = read_op(cpu, m, insn, 1, N)?;
    set_xmm(cpu, xr(insn, 0), u128::from(v));
    Ok(())
}

/// MOVD/MOVQ r/m32/r/m64, xmm: the low element (a 32-bit register write
/// clears bits 63:32 as every 32-bit write does).
fn movd_from_xmm<const N: u32>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let v = xmm(cpu, xr(insn, 1)) as u64;
    write_op(cpu, m, insn, 0, N, v & mask(N))
}

/// MOVQ xmm, xmm/m64 (F3 0F 7E) and MOVQ xmm/m64, xmm (66 0F D6): the low
/// quadword, zero-extended in a register destination.
fn movq_xmm(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    if !is_reg(insn, 0) {
        let v = xmm(cpu, xr(insn, 1));
        return write_mem(cpu, m, insn, 8, v, false);
    }
    let v = src_xmm(cpu, m, insn, 1, 8, false)?;
    set_xmm(cpu, xr(insn, 0), v & mask128(8));
    Ok(())
}

/// #UD/#NM of an SSE instruction, then #MF of a pending x87 exception: the
/// checks of MOVQ2DQ and MOVDQ2Q, SSE2 instructions with an MMX operand.
fn check_sse_mmx(cpu: &CpuState) -> Exec {
    check_sse(cpu)?;
    check_mmx(cpu)
}

/// MOVQ2DQ xmm, mm.
fn movq2dq(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    check_sse_mmx(cpu)?;
    mmx_enter(cpu);
    let v = mm(cpu, mr(insn, 1));
    set_xmm(cpu, xr(insn, 0), u128::from(v));
    Ok(())
}

/// MOVDQ2Q mm, xmm.
fn movdq2q(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    check_sse_mmx(cpu)?;
    mmx_enter(cpu);
    let v = xmm(cpu, xr(insn, 1)) as u64;
    set_mm(cpu, mr(insn, 0), v);
    Ok(())
}

/// MOVHPS/MOVHPD (`HIGH`) and MOVLPS/MOVLPD: one quadword between memory and
/// the high or low half of the register; the other half is kept.
fn movhl<const HIGH: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let sh = if HIGH { 64 } else { 0 };
    if !is_reg(insn, 0) {
        let v = xmm(cpu, xr(insn, 1)) >> sh;
        return write_mem(cpu, m, insn, 8, v, false);
    }
    let v = read_mem(cpu, m, insn, 8)?;
    let d = xr(insn, 0);
    let old = xmm(cpu, d);
    set_xmm(cpu, d, (old & !(mask128(8) << sh)) | (v << sh));
    Ok(())
}

/// MOVHLPS: the source's high quadword into the destination's low one.
fn movhlps(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = xr(insn, 0);
    let s = xmm(cpu, xr(insn, 1));
    let old = xmm(cpu, d);
    set_xmm(cpu, d, (old & !mask128(8)) | (s >> 64));
    Ok(())
}

/// MOVLHPS: the source's low quadword into the destination's high one.
fn movlhps(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = xr(insn, 0);
    let s = xmm(cpu, xr(insn, 1));
    let old = xmm(cpu, d);
    set_xmm(cpu, d, (old & mask128(8)) | (s << 64));
    Ok(())
}

/// MOVNTI m32/m64, r32/r64: a plain store (the non-temporal hint has no
/// architectural effect). No CR0/CR4 checks: it uses no SIMD state.
fn movnti(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let v = read_op(cpu, m, insn, 1, size)?;
    write_op(cpu, m, insn, 0, size, v)
}

/// MOVNTQ m64, mm.
fn movntq(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    let v = mm(cpu, mr(insn, 1));
    write_mem(cpu, m, insn, 8, u128::from(v), false)?;
    mmx_enter(cpu);
    Ok(())
}

/// The segment index of a segment register.
fn seg_of(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ES as usize) & 7
}

/// MASKMOVQ (`N` = 8) and MASKMOVDQU (16): the bytes of the first source whose
/// mask byte (second source) has bit 7 set go to DS:DI/EDI/RDI (segment
/// override allowed), by the address size. Every selected byte is checked
/// for writing before any is written; unselected bytes are not accessed.
fn maskmov<const N: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let (data, sel) = if N == 8 {
        check_mmx(cpu)?;
        (
            u128::from(mm(cpu, mr(insn, 1))),
            u128::from(mm(cpu, mr(insn, 2))),
        )
    } else {
        check_sse(cpu)?;
        (xmm(cpu, xr(insn, 1)), xmm(cpu, xr(insn, 2)))
    };
    let amask: u64 = match insn.ins.op0_kind() {
        OpKind::MemorySegDI => 0xFFFF,
        OpKind::MemorySegEDI => 0xFFFF_FFFF,
        _ => u64::MAX,
    };
    let seg = seg_of(insn.ins.memory_segment());
    let base = cpu.gpr[7];
    let chosen = (0..N).filter(|&i| (sel >> (8 * i + 7)) & 1 != 0);
    for i in chosen.clone() {
        let off = base.wrapping_add(i as u64) & amask;
        mmu::probe_write(cpu, m, seg, off, 1)?;
    }
    for i in chosen {
        let off = base.wrapping_add(i as u64) & amask;
        mmu::write(cpu, m, seg, off, 1, (data >> (8 * i)) as u64 & 0xFF)?;
    }
    if N == 8 {
        mmx_enter(cpu);
    }
    Ok(())
}

/// MOVDDUP xmm, xmm/m64: the low quadword in both halves.
fn movddup(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let v = src_xmm(cpu, m, insn, 1, 8, false)? & mask128(8);
    set_xmm(cpu, xr(insn, 0), v | (v << 64));
    Ok(())
}

/// MOVSLDUP (`ODD` = 0) and MOVSHDUP (1): the even or odd doublewords, each
/// duplicated into its pair.
fn movdup32<const ODD: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut r = 0;
    for pair in 0..2 {
        let x = lane(s, 4, 2 * pair + ODD);
        r = with_lane(r, 4, 2 * pair, x);
        r = with_lane(r, 4, 2 * pair + 1, x);
    }
    set_xmm(cpu, xr(insn, 0), r);
    Ok(())
}

/// The sign bit of each `w`-byte lane of the low `bytes` bytes of `v`.
fn sign_mask(v: u128, w: usize, bytes: usize) -> u64 {
    (0..bytes / w).fold(0, |acc, i| {
        acc | ((((v >> (8 * w * (i + 1) - 1)) & 1) as u64) << i)
    })
}

/// MOVMSKPS (`W` = 4), MOVMSKPD (8), PMOVMSKB xmm (1): the lanes' sign bits,
/// zero-extended into the general register.
fn movmsk<const W: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let v = sign_mask(xmm(cpu, xr(insn, 1)), W, 16);
    write_op(cpu, m, insn, 0, 4, v)
}

/// PMOVMSKB r32, mm.
fn pmovmskb_mm(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    mmx_enter(cpu);
    let v = sign_mask(u128::from(mm(cpu, mr(insn, 1))), 1, 8);
    write_op(cpu, m, insn, 0, 4, v)
}

const AND: u8 = 0;
const ANDN: u8 = 1;
const OR: u8 = 2;
const XOR: u8 = 3;

/// ANDPS/ANDPD, ANDNPS/ANDNPD (NOT destination AND source), ORPS/ORPD,
/// XORPS/XORPD.
fn logic<const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let d = xr(insn, 0);
    let a = xmm(cpu, d);
    let r = match OP {
        AND => a & s,
        ANDN => !a & s,
        OR => a | s,
        _ => a ^ s,
    };
    set_xmm(cpu, d, r);
    Ok(())
}

/// SHUFPS: result doublewords 0-1 chosen from the destination, 2-3 from the
/// source, two immediate bits each.
fn shufps(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let d = xr(insn, 0);
    let a = xmm(cpu, d);
    let k = imm8(insn) as usize;
    let mut r = 0;
    for i in 0..4 {
        let from = if i < 2 { a } else { s };
        r = with_lane(r, 4, i, lane(from, 4, (k >> (2 * i)) & 3));
    }
    set_xmm(cpu, d, r);
    Ok(())
}

/// SHUFPD: the low result quadword from the destination (imm bit 0), the
/// high one from the source (bit 1).
fn shufpd(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let d = xr(insn, 0);
    let a = xmm(cpu, d);
    let k = imm8(insn) as usize;
    let r = lane(a, 8, k & 1) | (lane(s, 8, (k >> 1) & 1) << 64);
    set_xmm(cpu, d, r);
    Ok(())
}

/// UNPCKLPS/UNPCKHPS (`W` = 4) and UNPCKLPD/UNPCKHPD (8): the low (or high)
/// halves of destination and source interleaved, destination first.
fn unpck<const W: usize, const HIGH: bool>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let d = xr(insn, 0);
    let a = xmm(cpu, d);
    let n = 16 / W;
    let first = if HIGH { n / 2 } else { 0 };
    let mut r = 0;
    for i in 0..n / 2 {
        r = with_lane(r, W, 2 * i, lane(a, W, first + i));
        r = with_lane(r, W, 2 * i + 1, lane(s, W, first + i));
    }
    set_xmm(cpu, d, r);
    Ok(())
}

/// PSHUFD: each result doubleword chosen from the source by two imm bits.
fn pshufd(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let k = imm8(insn) as usize;
    let r = (0..4).fold(0, |r, i| with_lane(r, 4, i, lane(s, 4, (k >> (2 * i)) & 3)));
    set_xmm(cpu, xr(insn, 0), r);
    Ok(())
}

/// Four words of `v` shuffled by `k`.
fn shuffle4w(v: u64, k: usize) -> u64 {
    (0..4).fold(0, |r, i| {
        r | (((v >> (16 * ((k >> (2 * i)) & 3))) & 0xFFFF) << (16 * i))
    })
}

/// PSHUFHW (`HIGH`) / PSHUFLW: the four words of one half shuffled, the
/// other half copied.
fn pshufw_half<const HIGH: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let k = imm8(insn) as usize;
    let (lo, hi) = (s as u64, (s >> 64) as u64);
    let (lo, hi) = if HIGH {
        (lo, shuffle4w(hi, k))
    } else {
        (shuffle4w(lo, k), hi)
    };
    set_xmm(cpu, xr(insn, 0), u128::from(lo) | (u128::from(hi) << 64));
    Ok(())
}

/// PSHUFW mm, mm/m64, imm8.
fn pshufw(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    let s = src_mm(cpu, m, insn, 1)?;
    mmx_enter(cpu);
    set_mm(cpu, mr(insn, 0), shuffle4w(s, imm8(insn) as usize));
    Ok(())
}

/// BLENDPS (`W` = 4), BLENDPD (8), PBLENDW (2): lane i from the source when
/// imm bit i is set.
fn blend_imm<const W: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let d = xr(insn, 0);
    let k = imm8(insn);
    let mut r = xmm(cpu, d);
    for i in 0..16 / W {
        if k & (1 << i) != 0 {
            r = with_lane(r, W, i, lane(s, W, i));
        }
    }
    set_xmm(cpu, d, r);
    Ok(())
}

/// BLENDVPS (`W` = 4), BLENDVPD (8), PBLENDVB (1): lane i from the source when
/// the sign bit of lane i of the implicit XMM0 is set.
fn blendv<const W: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let s = src_xmm(cpu, m, insn, 1, 16, true)?;
    let sel = sign_mask(xmm(cpu, 0), W, 16);
    let d = xr(insn, 0);
    let mut r = xmm(cpu, d);
    for i in 0..16 / W {
        if sel & (1 << i) != 0 {
            r = with_lane(r, W, i, lane(s, W, i));
        }
    }
    set_xmm(cpu, d, r);
    Ok(())
}

/// INSERTPS xmm, xmm/m32, imm8: the source doubleword (imm[7:6] of a register,
/// the 32-bit memory operand) goes to doubleword imm[5:4] of the destination;
/// then the doublewords selected by imm[3:0] are zeroed.
fn insertps(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let k = imm8(insn) as usize;
    let x = if is_reg(insn, 1) {
        lane(xmm(cpu, xr(insn, 1)), 4, (k >> 6) & 3)
    } else {
        read_mem(cpu, m, insn, 4)?
    };
    let d = xr(insn, 0);
    let mut r = with_lane(xmm(cpu, d), 4, (k >> 4) & 3, x);
    for i in 0..4 {
        if k & (1 << i) != 0 {
            r = with_lane(r, 4, i, 0);
        }
    }
    set_xmm(cpu, d, r);
    Ok(())
}

/// PEXTRB/PEXTRW/PEXTRD/PEXTRQ and EXTRACTPS (`N` = 1, 2, 4, 8 bytes): lane
/// imm mod (16 / N) of the source, zero-extended into a general register (of
/// 32 or 64 bits) or stored as `N` bytes.
fn pextr<const N: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let k = imm8(insn) as usize & (16 / N - 1);
    let v = lane(xmm(cpu, xr(insn, 1)), N, k) as u64;
    let size = match insn.ops[0] {
        Opnd::Gpr { .. } => insn.ins.op0_register().size() as u32,
        _ => N as u32,
    };
    write_op(cpu, m, insn, 0, size, v)
}

/// PEXTRW r32, mm, imm8.
fn pextrw_mm(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    mmx_enter(cpu);
    let k = imm8(insn) & 3;
    let v = (mm(cpu, mr(insn, 1)) >> (16 * k)) & 0xFFFF;
    write_op(cpu, m, insn, 0, 4, v)
}

/// PINSRB/PINSRW/PINSRD/PINSRQ (`N` = 1, 2, 4, 8 bytes): the low `N` bytes of
/// a general register or `N` bytes of memory into lane imm mod (16 / N).
fn pinsr<const N: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let v = read_op(cpu, m, insn, 1, N as u32)?;
    let k = imm8(insn) as usize & (16 / N - 1);
    let d = xr(insn, 0);
    let r = with_lane(xmm(cpu, d), N, k, u128::from(v));
    set_xmm(cpu, d, r);
    Ok(())
}

/// PINSRW mm, r32/m16, imm8.
fn pinsrw_mm(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_mmx(cpu)?;
    let v = read_op(cpu, m, insn, 1, 2)?;
    mmx_enter(cpu);
    let d = mr(insn, 0);
    let sh = 16 * (imm8(insn) & 3);
    let r = (mm(cpu, d) & !(0xFFFF << sh)) | (v << sh);
    set_mm(cpu, d, r);
    Ok(())
}

/// #GP(0): shared by the state instructions.
pub(super) fn gp0<T>() -> Result<T, Exception> {
    Err(Exception::GeneralProtection(0))
}
