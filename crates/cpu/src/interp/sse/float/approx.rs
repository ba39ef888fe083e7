//! RCPPS and RSQRTPS: the approximate reciprocal and reciprocal square root.
//!
//! The SDM fixes only a bound (relative error <= 1.5 * 2^-12) and the special
//! cases; the exact bits come from each part's own lookup tables and differ
//! between Intel generations and between Intel and AMD. x86bt's method is its
//! own and deterministic: the exact value, computed in integers to about 2^-36
//! (reciprocal) or 2^-47 (square root) relative, rounded to nearest at 12
//! fraction bits (ties away from zero), the low 11 fraction bits zero. Its
//! relative error is at most 2^-13 plus that slack, under the bound; it will
//! not match a given processor's bits, only its accuracy.
//!
//! Special cases (SDM RCPPS/RSQRTPS): a zero or a denormal (always read as a
//! zero, whatever DAZ says) gives an infinity of its sign; an infinity gives a
//! zero of its sign (RSQRT: +0, and -inf is negative); a NaN is returned
//! quieted; RSQRT of a negative non-zero gives the default NaN. A result below
//! the smallest normal is flushed to a zero of the operand's sign. MXCSR is
//! neither read nor written.

use super::soft::{is_denormal, is_inf, is_nan, is_neg, is_zero, quiet, Fmt, F32};

/// `v` (which has more than 13 significant bits) rounded to 13 significant
/// bits: the 13-bit significand and the power of two it is scaled by.
fn round13(v: u128) -> (u64, i32) {
    let len = 128 - v.leading_zeros() as i32;
    let mut shift = len - 13;
    let mut r = ((v + (1u128 << (shift - 1))) >> shift) as u64;
    if r == 1 << 13 {
        r >>= 1;
        shift += 1;
    }
    (r, shift)
}

/// A positive 13-bit significand `r` (2^12 <= r < 2^13) times 2^`scale` as a
/// single, or zero when that is below the smallest normal.
fn pack(sign: u64, r: u64, scale: i32) -> u32 {
    // r * 2^scale = 1.f * 2^(scale + 12).
    let biased = scale + 12 + 127;
    if biased < 1 {
        return sign as u32;
    }
    (sign | (biased as u64) << 23 | (r - (1 << 12)) << 11) as u32
}

/// RCPPS on one lane.
pub fn rcp(x: u32) -> u32 {
    let x = u64::from(x);
    let sign = x & F32::SIGN;
    if is_nan::<F32>(x) {
        return quiet::<F32>(x) as u32;
    }
    if is_zero::<F32>(x) || is_denormal::<F32>(x) {
        return (sign | F32::EXP) as u32;
    }
    if is_inf::<F32>(x) {
        return sign as u32;
    }
    // x = m * 2^(e - 23) with 2^23 <= m < 2^24; 1/x = (2^60 / m) * 2^(-37 - e).
    let m = (x & 0x7F_FFFF) | 1 << 23;
    let e = ((x >> 23) & 0xFF) as i32 - 127;
    let (r, shift) = round13((1u128 << 60) / u128::from(m));
    pack(sign, r, shift - 37 - e)
}

/// The integer square root of `n` (floor).
fn isqrt(n: u128) -> u128 {
    let mut rem = n;
    let mut root: u128 = 0;
    let mut bit: u128 = 1 << 126;
    while bit > n {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root
}

/// RSQRTPS on one lane.
pub fn rsqrt(x: u32) -> u32 {
    let x = u64::from(x);
    let sign = x & F32::SIGN;
    if is_nan::<F32>(x) {
        return quiet::<F32>(x) as u32;
    }
    if is_zero::<F32>(x) || is_denormal::<F32>(x) {
        return (sign | F32::EXP) as u32;
    }
    if is_neg::<F32>(x) {
        return F32::DEFAULT_NAN as u32;
    }
    if is_inf::<F32>(x) {
        return 0;
    }
    // x = m * 2^t with t even; 1/sqrt(x) = sqrt(2^120 / m) * 2^(-60 - t/2).
    let mut m = (x & 0x7F_FFFF) | 1 << 23;
    let mut t = ((x >> 23) & 0xFF) as i32 - 127 - 23;
    if t & 1 != 0 {
        m <<= 1;
        t -= 1;
    }
    let (r, shift) = round13(isqrt((1u128 << 120) / u128::from(m)));
    pack(0, r, shift - 60 - t / 2)
}
