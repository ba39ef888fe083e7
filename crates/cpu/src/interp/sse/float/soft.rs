//! The numeric core of the SSE floating-point family: IEEE single and double
//! arithmetic under MXCSR, on raw bit patterns (a single in the low 32 bits of a
//! `u64`), with the exception flags each operation detects gathered in a
//! [`Ctx`].
//!
//! Finite operands are widened exactly into [`Wide`] (108-bit significand,
//! 20-bit exponent). The operation runs there rounding toward zero, and an
//! inexact result gets its last bit set ("round to odd"); since 108 >= 53 + 2,
//! rounding that value once more to 24 or 53 bits in any mode equals rounding
//! the exact result once (Boldo and Melquiond, 2008), the argument `fpu.rs`
//! relies on too. Square roots are computed exactly in integers (a 63-bit root
//! and a sticky bit). Everything else (NaNs, infinities, zeros, DAZ, the
//! invalid cases) is decided on the bit patterns before apfloat is asked.
//!
//! Rounding ([`round`]) follows SDM vol. 1 §4.9.1.4-5 and §11.5.2 for SSE:
//! overflow when the result rounded with an unbounded exponent exceeds the
//! largest finite exponent (masked: infinity or the largest finite number by
//! RC, with OE and PE); tininess judged after rounding, with an unbounded
//! exponent (apfloat judges it on the denormalized result, so the unbounded
//! formats [`Unb24S`]/[`Unb53S`] decide instead); a masked underflow delivers
//! the denormal and flags UE only with PE (inexact), while FTZ (with UE masked)
//! delivers a zero of the result's sign and flags UE and PE whenever the result
//! is tiny. With UE unmasked a tiny result flags UE even when exact.
//!
//! NaNs follow SDM vol. 1 Table 4-7 for SSE: the first source operand's NaN if
//! it is one, else the second's, quieted; an SNaN operand flags IE; an invalid
//! operation on non-NaN operands gives the default NaN (sign set, quiet bit
//! only). DAZ (vol. 1 §10.2.3.4) reads a denormal operand as a zero of its sign
//! before anything else, so it never flags DE.

use super::super::mxcsr::{DAZ, DE, FTZ, IE, PE, UE, ZE};
use rustc_apfloat::ieee::{DoubleS, IeeeFloat, Semantics, SingleS};
use rustc_apfloat::{Category, Float, FloatConvert, Round, Status, StatusAnd};
use std::cmp::Ordering;

macro_rules! semantics {
    ($($(#[$doc:meta])* $name:ident: $bits:expr, $exp_bits:expr, $prec:expr;)*) => {
        $(
            $(#[$doc])*
            pub struct $name;
            impl Semantics for $name {
                const BITS: usize = $bits;
                const EXP_BITS: usize = $exp_bits;
                const PRECISION: usize = $prec;
            }
        )*
    };
}

semantics! {
    /// The working format: 108-bit significand, 20-bit exponent.
    WideS: 128, 20, 108;
    /// 24-bit significand, unbounded (20-bit) exponent: overflow and tininess.
    Unb24S: 128, 20, 24;
    /// 53-bit significand, unbounded exponent.
    Unb53S: 128, 20, 53;
}

/// The exact working format.
pub type Wide = IeeeFloat<WideS>;

/// The overflow flag (not re-exported by `mxcsr` under a short name here).
const OE: u32 = super::super::mxcsr::OE;

/// An IEEE binary format as SSE uses it.
pub trait Fmt {
    /// Fraction bits (23 or 52).
    const FRAC: u32;
    /// Exponent bias.
    const BIAS: i32;
    /// The largest exponent of a finite number.
    const EMAX: i32;
    /// The exponent of the smallest normal number.
    const EMIN: i32;
    /// The sign bit.
    const SIGN: u64;
    /// The exponent field, all ones.
    const EXP: u64;
    /// The default NaN (SDM vol. 1 Table 4-3 "QNaN floating-point indefinite").
    const DEFAULT_NAN: u64;
    /// A finite or infinite `x`, exactly, in the working format.
    fn to_wide(x: u64) -> Wide;
    /// `w` rounded to the format by `rc`: its bits and apfloat's status.
    fn narrow(w: Wide, rc: Round) -> StatusAnd<u64>;
    /// `w` rounded by `rc` to the format's precision with an unbounded
    /// exponent: that value's exponent, and whether it was inexact.
    fn unbounded(w: Wide, rc: Round) -> (i32, bool);
}

/// IEEE single precision.
pub struct F32;
/// IEEE double precision.
pub struct F64;

macro_rules! format {
    ($name:ident, $s:ty, $u:ty, $frac:expr, $bias:expr, $sign:expr, $exp:expr, $nan:expr) => {
        impl Fmt for $name {
            const FRAC: u32 = $frac;
            const BIAS: i32 = $bias;
            const EMAX: i32 = <$s as Semantics>::MAX_EXP;
            const EMIN: i32 = <$s as Semantics>::MIN_EXP;
            const SIGN: u64 = $sign;
            const EXP: u64 = $exp;
            const DEFAULT_NAN: u64 = $nan;
            fn to_wide(x: u64) -> Wide {
                let v = IeeeFloat::<$s>::from_bits(u128::from(x));
                v.convert_r(Round::NearestTiesToEven, &mut false).value
            }
            fn narrow(w: Wide, rc: Round) -> StatusAnd<u64> {
                let r: StatusAnd<IeeeFloat<$s>> = w.convert_r(rc, &mut false);
                r.map(|v| v.to_bits() as u64)
            }
            fn unbounded(w: Wide, rc: Round) -> (i32, bool) {
                let r: StatusAnd<IeeeFloat<$u>> = w.convert_r(rc, &mut false);
                (r.value.ilogb(), r.status.contains(Status::INEXACT))
            }
        }
    };
}

format!(
    F32,
    SingleS, Unb24S, 23, 127, 0x8000_0000, 0x7F80_0000, 0xFFC0_0000
);
format!(
    F64,
    DoubleS,
    Unb53S,
    52,
    1023,
    1 << 63,
    0x7FF0_0000_0000_0000,
    0xFFF8_0000_0000_0000
);

/// The fraction field of `F`.
#[inline]
fn frac_mask<F: Fmt>() -> u64 {
    (1u64 << F::FRAC) - 1
}

/// The quiet bit of `F`.
#[inline]
fn quiet_bit<F: Fmt>() -> u64 {
    1u64 << (F::FRAC - 1)
}

/// Whether `x` is a NaN.
#[inline]
pub fn is_nan<F: Fmt>(x: u64) -> bool {
    x & !F::SIGN > F::EXP
}

/// Whether `x` is a signaling NaN.
#[inline]
pub fn is_snan<F: Fmt>(x: u64) -> bool {
    is_nan::<F>(x) && x & quiet_bit::<F>() == 0
}

/// Whether `x` is an infinity.
#[inline]
pub fn is_inf<F: Fmt>(x: u64) -> bool {
    x & !F::SIGN == F::EXP
}

/// Whether `x` is a zero.
#[inline]
pub fn is_zero<F: Fmt>(x: u64) -> bool {
    x & !F::SIGN == 0
}

/// Whether `x` is a denormal.
#[inline]
pub fn is_denormal<F: Fmt>(x: u64) -> bool {
    x & F::EXP == 0 && x & frac_mask::<F>() != 0
}

/// Whether `x` has its sign bit set.
#[inline]
pub fn is_neg<F: Fmt>(x: u64) -> bool {
    x & F::SIGN != 0
}

/// `x` with its quiet bit set.
#[inline]
pub fn quiet<F: Fmt>(x: u64) -> u64 {
    x | quiet_bit::<F>()
}

/// The apfloat rounding mode for MXCSR.RC (or ROUNDPS's imm8[1:0]).
pub fn rounding(rc: u32) -> Round {
    match rc & 3 {
        0 => Round::NearestTiesToEven,
        1 => Round::TowardNegative,
        2 => Round::TowardPositive,
        _ => Round::TowardZero,
    }
}

/// One instruction's MXCSR and the exception flags its operations detected.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// MXCSR as the instruction found it.
    pub csr: u32,
    /// Flags detected so far (MXCSR bit positions).
    pub flags: u32,
}

impl Ctx {
    /// A context for MXCSR `csr`.
    pub fn new(csr: u32) -> Self {
        Self { csr, flags: 0 }
    }

    /// The rounding mode MXCSR.RC selects.
    pub fn rc(&self) -> Round {
        rounding(self.csr >> 13)
    }

    /// `x` as an operand reads it: a denormal is a zero of its sign under DAZ.
    #[inline]
    pub fn daz<F: Fmt>(&self, x: u64) -> u64 {
        if self.csr & DAZ != 0 && is_denormal::<F>(x) {
            x & F::SIGN
        } else {
            x
        }
    }

    /// Whether exception `flag` is masked.
    #[inline]
    fn masked(&self, flag: u32) -> bool {
        self.csr & (flag << 7) != 0
    }
}

/// Round to odd: an inexact result rounded toward zero gets its last bit set.
fn odd(r: StatusAnd<Wide>) -> Wide {
    if r.status.contains(Status::INEXACT) && r.value.is_finite_non_zero() {
        Wide::from_bits(r.value.to_bits() | 1)
    } else {
        r.value
    }
}

/// Rounds `w` (exact, or rounded to odd in the working format) to `F` under
/// MXCSR, flagging OE/UE/PE (see the module documentation). With OE or UE
/// unmasked the returned value is never written, so it does not matter.
pub fn round<F: Fmt>(c: &mut Ctx, w: Wide) -> u64 {
    let sign = if w.is_negative() { F::SIGN } else { 0 };
    match w.category() {
        Category::Zero => return sign,
        Category::Infinity => return sign | F::EXP,
        Category::NaN => return F::DEFAULT_NAN,
        Category::Normal => {}
    }
    let rc = c.rc();
    let (e, lost) = F::unbounded(w, rc);
    let inexact = if lost { PE } else { 0 };
    if e > F::EMAX {
        // Masked: infinity or the largest finite number, as RC says (apfloat
        // does the same). Unmasked: nothing is written.
        c.flags |= if c.masked(OE) { OE | PE } else { OE | inexact };
        return F::narrow(w, rc).value;
    }
    if e < F::EMIN {
        if !c.masked(UE) {
            c.flags |= UE | inexact;
            return sign;
        }
        if c.csr & FTZ != 0 {
            c.flags |= UE | PE;
            return sign;
        }
        let b = F::narrow(w, rc);
        if b.status.contains(Status::INEXACT) {
            c.flags |= UE | PE;
        }
        return b.value;
    }
    c.flags |= inexact;
    F::narrow(w, rc).value
}

/// The four basic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// a + b.
    Add,
    /// a - b.
    Sub,
    /// a * b.
    Mul,
    /// a / b.
    Div,
}

/// The NaN result of a two-operand operation with a NaN operand (flags IE for
/// an SNaN): `a`'s if it is a NaN, else `b`'s, quieted.
fn nan2<F: Fmt>(c: &mut Ctx, a: u64, b: u64) -> u64 {
    if is_snan::<F>(a) || is_snan::<F>(b) {
        c.flags |= IE;
    }
    if is_nan::<F>(a) {
        quiet::<F>(a)
    } else {
        quiet::<F>(b)
    }
}

/// `a op b`, correctly rounded under MXCSR.
pub fn arith<F: Fmt>(c: &mut Ctx, op: Op, a: u64, b: u64) -> u64 {
    let a = c.daz::<F>(a);
    let b = c.daz::<F>(b);
    if is_nan::<F>(a) || is_nan::<F>(b) {
        return nan2::<F>(c, a, b);
    }
    let sign = (a ^ b) & F::SIGN;
    let invalid = match op {
        Op::Add => is_inf::<F>(a) && is_inf::<F>(b) && sign != 0,
        Op::Sub => is_inf::<F>(a) && is_inf::<F>(b) && sign == 0,
        Op::Mul => (is_inf::<F>(a) && is_zero::<F>(b)) || (is_zero::<F>(a) && is_inf::<F>(b)),
        Op::Div => (is_zero::<F>(a) && is_zero::<F>(b)) || (is_inf::<F>(a) && is_inf::<F>(b)),
    };
    if invalid {
        c.flags |= IE;
        return F::DEFAULT_NAN;
    }
    if op == Op::Div && is_zero::<F>(b) && !is_inf::<F>(a) {
        // Divide-by-zero outranks a denormal dividend: no DE (as measured).
        c.flags |= ZE;
        return sign | F::EXP;
    }
    if is_denormal::<F>(a) || is_denormal::<F>(b) {
        c.flags |= DE;
    }
    let (x, y) = (F::to_wide(a), F::to_wide(b));
    let run = |rc: Round| match op {
        Op::Add => x.add_r(y, rc),
        Op::Sub => x.sub_r(y, rc),
        Op::Mul => x.mul_r(y, rc),
        Op::Div => x.div_r(y, rc),
    };
    let r = run(Round::TowardZero);
    let w = if r.value.is_zero() {
        // An exact zero: its sign depends on the rounding mode (x - x is -0
        // rounding down), which apfloat applies when asked with that mode.
        run(c.rc()).value
    } else {
        odd(r)
    };
    round::<F>(c, w)
}

/// The integer square root of `n` and whether it was inexact.
fn isqrt(n: u128) -> (u128, bool) {
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
    (root, rem != 0)
}

/// The integer significand and exponent of a finite non-zero `x`:
/// `x = ±m * 2^e`.
fn decompose<F: Fmt>(x: u64) -> (u64, i32) {
    let field = ((x & F::EXP) >> F::FRAC) as i32;
    let frac = x & frac_mask::<F>();
    if field == 0 {
        (frac, 1 - F::BIAS - F::FRAC as i32)
    } else {
        (frac | 1 << F::FRAC, field - F::BIAS - F::FRAC as i32)
    }
}

/// The square root of `a`, correctly rounded under MXCSR.
pub fn sqrt<F: Fmt>(c: &mut Ctx, a: u64) -> u64 {
    let a = c.daz::<F>(a);
    if is_nan::<F>(a) {
        return nan2::<F>(c, a, a);
    }
    if is_zero::<F>(a) {
        return a;
    }
    if is_neg::<F>(a) {
        c.flags |= IE;
        return F::DEFAULT_NAN;
    }
    if is_inf::<F>(a) {
        return a;
    }
    if is_denormal::<F>(a) {
        c.flags |= DE;
    }
    let (m, e) = decompose::<F>(a);
    // m * 2^s with 125 or 126 bits and e - s even: the root has 63 bits.
    let len = 64 - m.leading_zeros() as i32;
    let mut s = 125 - len;
    if (e - s) & 1 != 0 {
        s += 1;
    }
    let (root, inexact) = isqrt(u128::from(m) << s);
    // One more bit below the root carries the sticky bit (round to odd).
    let r = (root << 1) | u128::from(inexact);
    let w = Wide::from_u128(r).value.scalbn((e - s) / 2 - 1);
    round::<F>(c, w)
}

/// The order of two non-NaN values (+0 equals -0).
fn order<F: Fmt>(a: u64, b: u64) -> Ordering {
    let key = |x: u64| -> i64 {
        let mag = (x & !F::SIGN) as i64;
        if is_neg::<F>(x) {
            -mag
        } else {
            mag
        }
    };
    key(a).cmp(&key(b))
}

/// MINPS/MAXPS on one lane (SDM MINPS "MIN(SRC1, SRC2)"): `a < b ? a : b`
/// (`a > b` for max), so a NaN operand or two zeros give the second operand,
/// unquieted; any NaN flags IE.
pub fn minmax<F: Fmt>(c: &mut Ctx, a: u64, b: u64, max: bool) -> u64 {
    let a = c.daz::<F>(a);
    let b = c.daz::<F>(b);
    if is_nan::<F>(a) || is_nan::<F>(b) {
        c.flags |= IE;
        return b;
    }
    if is_denormal::<F>(a) || is_denormal::<F>(b) {
        c.flags |= DE;
    }
    let want = if max {
        Ordering::Greater
    } else {
        Ordering::Less
    };
    if order::<F>(a, b) == want {
        a
    } else {
        b
    }
}

/// Compares two values: `None` when unordered. A NaN flags IE when `signaling`
/// (COMISS, the LT/LE/NLT/NLE predicates), an SNaN always.
pub fn compare<F: Fmt>(c: &mut Ctx, a: u64, b: u64, signaling: bool) -> Option<Ordering> {
    let a = c.daz::<F>(a);
    let b = c.daz::<F>(b);
    if is_nan::<F>(a) || is_nan::<F>(b) {
        if signaling || is_snan::<F>(a) || is_snan::<F>(b) {
            c.flags |= IE;
        }
        return None;
    }
    if is_denormal::<F>(a) || is_denormal::<F>(b) {
        c.flags |= DE;
    }
    Some(order::<F>(a, b))
}

/// CMPPS's predicate `imm & 7` (SDM CMPPS Table 3-1, legacy encoding) on one
/// lane: all ones when it holds.
pub fn cmp_pred<F: Fmt>(c: &mut Ctx, a: u64, b: u64, imm: u8) -> bool {
    let p = imm & 7;
    let signaling = matches!(p, 1 | 2 | 5 | 6);
    let o = compare::<F>(c, a, b, signaling);
    let holds = match p & 3 {
        0 => o == Some(Ordering::Equal),
        1 => o == Some(Ordering::Less),
        2 => matches!(o, Some(Ordering::Less | Ordering::Equal)),
        _ => o.is_none(),
    };
    holds != (p & 4 != 0)
}

/// A float converted to another format (CVTSS2SD, CVTSD2SS and the packed
/// forms): a NaN keeps its sign and the high bits of its payload, quieted.
pub fn convert<F: Fmt, G: Fmt>(c: &mut Ctx, a: u64) -> u64 {
    let a = c.daz::<F>(a);
    if is_nan::<F>(a) {
        if is_snan::<F>(a) {
            c.flags |= IE;
        }
        let frac = a & frac_mask::<F>();
        let frac = if G::FRAC >= F::FRAC {
            frac << (G::FRAC - F::FRAC)
        } else {
            frac >> (F::FRAC - G::FRAC)
        };
        let sign = if is_neg::<F>(a) { G::SIGN } else { 0 };
        return sign | G::EXP | quiet_bit::<G>() | frac;
    }
    if is_denormal::<F>(a) {
        c.flags |= DE;
    }
    round::<G>(c, F::to_wide(a))
}

/// A signed integer converted to `F` (CVTSI2SS, CVTDQ2PS, ...), rounded by RC.
pub fn from_int<F: Fmt>(c: &mut Ctx, v: i64) -> u64 {
    round::<F>(c, Wide::from_i128(i128::from(v)).value)
}

/// `a` converted to a `bits`-bit signed integer, rounded by RC or truncated;
/// NaN, infinity and out-of-range values flag IE and give the integer
/// indefinite 1 << (bits - 1) (SDM CVTSS2SI "Operation"). Denormal
/// operands flag no DE (the conversions list only IE and PE).
pub fn to_int<F: Fmt>(c: &mut Ctx, a: u64, bits: u32, truncate: bool) -> u64 {
    let indefinite = 1u64 << (bits - 1);
    let a = c.daz::<F>(a);
    if is_nan::<F>(a) || is_inf::<F>(a) {
        c.flags |= IE;
        return indefinite;
    }
    let rc = if truncate { Round::TowardZero } else { c.rc() };
    let r = F::to_wide(a).round_to_integral(rc);
    let v = r.value.to_i128_r(128, Round::TowardZero, &mut false).value;
    let lim = 1i128 << (bits - 1);
    if v < -lim || v >= lim {
        c.flags |= IE;
        return indefinite;
    }
    if r.status.contains(Status::INEXACT) {
        c.flags |= PE;
    }
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (v as u64) & mask
}

/// ROUNDPS on one lane: imm8[1:0] is the rounding mode unless imm8[2] selects
/// MXCSR.RC; imm8[3] suppresses PE. Only an SNaN flags IE; no DE (SDM ROUNDPS
/// "SIMD Floating-Point Exceptions").
pub fn round_int<F: Fmt>(c: &mut Ctx, a: u64, imm: u8) -> u64 {
    let a = c.daz::<F>(a);
    if is_nan::<F>(a) {
        return nan2::<F>(c, a, a);
    }
    if is_inf::<F>(a) || is_zero::<F>(a) {
        return a;
    }
    let rc = if imm & 4 != 0 {
        c.rc()
    } else {
        rounding(u32::from(imm))
    };
    let r = F::to_wide(a).round_to_integral(rc);
    if r.status.contains(Status::INEXACT) && imm & 8 == 0 {
        c.flags |= PE;
    }
    if r.value.is_zero() {
        return a & F::SIGN;
    }
    // An integer of at most the format's precision: exact, no flags.
    let mut exact = Ctx::new(c.csr);
    round::<F>(&mut exact, r.value) | (a & F::SIGN)
}
