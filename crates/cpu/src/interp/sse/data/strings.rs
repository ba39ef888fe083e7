//! SSE4.2 string compares (PCMPESTRI, PCMPESTRM, PCMPISTRI, PCMPISTRM), CRC32
//! and POPCNT.
//!
//! The string compares follow SDM vol. 2B §4.1: the imm8 picks the element
//! format (bits 1:0: unsigned/signed bytes/words), the aggregation (bits 3:2:
//! equal any, ranges, equal each, equal ordered), the polarity (bits 5:4) and
//! the output (bit 6: most significant index, or a byte/word mask). The first
//! operand is the "set" (xmm1, length EAX or implicit), the second the string
//! (xmm2/m128, length EDX or implicit); the memory operand need not be aligned.

use super::super::super::ops::{read_op, write_op};
use super::super::super::{Exec, Handler, Insn};
use super::super::{check_sse, set_xmm, src_xmm, xmm};
use super::{imm8, xr};
use crate::state::{flags, CpuState};
use iced_x86::{Code, Instruction};
use x86bt_machine::Machine;

/// The handler for `ins` if it is one of this file's.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    use Code as C;
    let h: Handler = match ins.code() {
        C::Pcmpestri_xmm_xmmm128_imm8
        | C::Pcmpestri64_xmm_xmmm128_imm8
        | C::Pcmpestrm_xmm_xmmm128_imm8
        | C::Pcmpestrm64_xmm_xmmm128_imm8
        | C::Pcmpistri_xmm_xmmm128_imm8
        | C::Pcmpistrm_xmm_xmmm128_imm8 => pcmpstr,
        C::Crc32_r32_rm8 | C::Crc32_r64_rm8 => crc32::<1>,
        C::Crc32_r32_rm16 => crc32::<2>,
        C::Crc32_r32_rm32 => crc32::<4>,
        C::Crc32_r64_rm64 => crc32::<8>,
        C::Popcnt_r16_rm16 | C::Popcnt_r32_rm32 | C::Popcnt_r64_rm64 => popcnt,
        _ => return None,
    };
    Some(h)
}

/// The elements of a string operand, widened to i32 (signed or not by the
/// format).
struct Elems {
    e: [i32; 16],
}

impl Elems {
    fn new(v: u128, words: bool, signed: bool) -> Self {
        let mut e = [0i32; 16];
        let n = if words { 8 } else { 16 };
        for (i, x) in e.iter_mut().enumerate().take(n) {
            *x = if words {
                let w = (v >> (16 * i)) as u16;
                if signed {
                    i32::from(w as i16)
                } else {
                    i32::from(w)
                }
            } else {
                let b = (v >> (8 * i)) as u8;
                if signed {
                    i32::from(b as i8)
                } else {
                    i32::from(b)
                }
            };
        }
        Self { e }
    }

    /// The implicit length: the index of the first zero element, or `n`.
    fn implicit_len(&self, n: usize) -> usize {
        self.e[..n].iter().position(|&x| x == 0).unwrap_or(n)
    }
}

/// An explicit length: the absolute value of the register (32 or 64 bits, as
/// signed), saturated to `n`.
fn explicit_len(r: u64, wide: bool, n: usize) -> usize {
    let v = if wide {
        r as i64
    } else {
        i64::from(r as u32 as i32)
    };
    v.unsigned_abs().min(n as u64) as usize
}

/// IntRes1 of the aggregation `agg` over set `a` (valid length `la`) and
/// string `b` (valid length `lb`), `n` elements (SDM vol. 2B §4.1.4 with the
/// invalid-element overrides of Table 4-7).
fn aggregate(agg: u32, a: &Elems, la: usize, b: &Elems, lb: usize, n: usize) -> u32 {
    let (a, b) = (&a.e, &b.e);
    let mut res = 0u32;
    for j in 0..n {
        let hit = match agg {
            // Equal any: string element j is one of the set's valid elements.
            0 => j < lb && a[..la].contains(&b[j]),
            // Ranges: set elements (2i, 2i+1) bound string element j; both
            // bounds must be valid.
            1 => j < lb && (0..la / 2).any(|p| a[2 * p] <= b[j] && b[j] <= a[2 * p + 1]),
            // Equal each: both valid and equal, or both invalid.
            2 => {
                if j < la && j < lb {
                    a[j] == b[j]
                } else {
                    j >= la && j >= lb
                }
            }
            // Equal ordered: the set matches the string from j on; an invalid
            // set element matches anything, an invalid string element
            // nothing else.
            _ => (0..n - j).all(|i| {
                let k = j + i;
                if i >= la {
                    true
                } else if k >= lb {
                    false
                } else {
                    a[i] == b[k]
                }
            }),
        };
        res |= u32::from(hit) << j;
    }
    res
}

/// PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM: IntRes2 into ECX (index forms) or
/// XMM0 (mask forms); CF = IntRes2 != 0, ZF = the string is shorter than the
/// register, SF = the set is, OF = IntRes2 bit 0, AF = PF = 0.
fn pcmpstr(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    use Code as C;
    check_sse(cpu)?;
    let k = imm8(insn);
    let bv = src_xmm(cpu, m, insn, 1, 16, false)?;
    let av = xmm(cpu, xr(insn, 0));
    let words = k & 1 != 0;
    let signed = k & 2 != 0;
    let n = if words { 8 } else { 16 };
    let a = Elems::new(av, words, signed);
    let b = Elems::new(bv, words, signed);
    let code = insn.ins.code();
    let (la, lb) = match code {
        C::Pcmpistri_xmm_xmmm128_imm8 | C::Pcmpistrm_xmm_xmmm128_imm8 => {
            (a.implicit_len(n), b.implicit_len(n))
        }
        _ => {
            let wide = matches!(
                code,
                C::Pcmpestri64_xmm_xmmm128_imm8 | C::Pcmpestrm64_xmm_xmmm128_imm8
            );
            (
                explicit_len(cpu.gpr[0], wide, n),
                explicit_len(cpu.gpr[2], wide, n),
            )
        }
    };
    let res1 = aggregate((k >> 2) & 3, &a, la, &b, lb, n);
    let all = (1u32 << n) - 1;
    let res2 = match (k >> 4) & 3 {
        1 => !res1 & all,
        3 => res1 ^ ((1u32 << lb) - 1),
        _ => res1,
    };
    let msb = k & 0x40 != 0;
    match code {
        C::Pcmpestrm_xmm_xmmm128_imm8
        | C::Pcmpestrm64_xmm_xmmm128_imm8
        | C::Pcmpistrm_xmm_xmmm128_imm8 => {
            let r = if msb {
                let w = if words { 2 } else { 1 };
                (0..n).fold(0u128, |r, j| {
                    if res2 & (1 << j) != 0 {
                        r | (super::mask128(w) << (8 * w * j))
                    } else {
                        r
                    }
                })
            } else {
                u128::from(res2)
            };
            set_xmm(cpu, 0, r);
        }
        _ => {
            let idx = if res2 == 0 {
                n as u32
            } else if msb {
                31 - res2.leading_zeros()
            } else {
                res2.trailing_zeros()
            };
            // A 32-bit write: RCX's upper half is cleared in 64-bit mode.
            cpu.gpr[1] = u64::from(idx);
        }
    }
    let mut f =
        cpu.rflags & !(flags::CF | flags::PF | flags::AF | flags::ZF | flags::SF | flags::OF);
    if res2 != 0 {
        f |= flags::CF;
    }
    if lb < n {
        f |= flags::ZF;
    }
    if la < n {
        f |= flags::SF;
    }
    if res2 & 1 != 0 {
        f |= flags::OF;
    }
    cpu.rflags = f;
    Ok(())
}

/// CRC-32C (polynomial 11EDC6F41h, bit-reflected as 82F63B78h) of `n` bytes
/// of `v` onto `crc`, without pre- or post-inversion (SDM vol. 2A CRC32).
pub fn crc32c(mut crc: u32, v: u64, n: usize) -> u32 {
    for i in 0..n {
        crc ^= u32::from((v >> (8 * i)) as u8);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    crc
}

/// CRC32 r32/r64, r/m8/16/32/64 (`N` bytes): the 32-bit result zero-extended.
/// No flags, no SIMD state.
fn crc32<const N: usize>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let v = read_op(cpu, m, insn, 1, N as u32)?;
    let crc = read_op(cpu, m, insn, 0, 4)? as u32;
    write_op(cpu, m, insn, 0, 4, u64::from(crc32c(crc, v, N)))
}

/// POPCNT r, r/m (16, 32, 64): the number of set bits; ZF when the source is
/// zero, CF OF SF AF PF cleared.
fn popcnt(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let v = read_op(cpu, m, insn, 1, size)?;
    write_op(cpu, m, insn, 0, size, u64::from(v.count_ones()))?;
    let mut f =
        cpu.rflags & !(flags::CF | flags::PF | flags::AF | flags::ZF | flags::SF | flags::OF);
    if v == 0 {
        f |= flags::ZF;
    }
    cpu.rflags = f;
    Ok(())
}
