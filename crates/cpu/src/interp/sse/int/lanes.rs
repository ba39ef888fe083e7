//! The arithmetic of the integer family as pure functions of the destination
//! `d`, the source `s` and the immediate, on `n` bytes (8 for an MMX register,
//! 16 for an XMM register; the bits above `n` bytes are zero on entry and on
//! exit). Each operation follows the SDM vol. 2 "Operation" section of its
//! instruction; none uses host floating point or host SIMD.

/// The operations, one per instruction (the MMX and XMM forms share one).
pub mod op {
    pub const PADDB: u8 = 0;
    pub const PADDW: u8 = 1;
    pub const PADDD: u8 = 2;
    pub const PADDQ: u8 = 3;
    pub const PADDSB: u8 = 4;
    pub const PADDSW: u8 = 5;
    pub const PADDUSB: u8 = 6;
    pub const PADDUSW: u8 = 7;
    pub const PSUBB: u8 = 8;
    pub const PSUBW: u8 = 9;
    pub const PSUBD: u8 = 10;
    pub const PSUBQ: u8 = 11;
    pub const PSUBSB: u8 = 12;
    pub const PSUBSW: u8 = 13;
    pub const PSUBUSB: u8 = 14;
    pub const PSUBUSW: u8 = 15;
    pub const PMULLW: u8 = 16;
    pub const PMULHW: u8 = 17;
    pub const PMULHUW: u8 = 18;
    pub const PMULUDQ: u8 = 19;
    pub const PMADDWD: u8 = 20;
    pub const PAVGB: u8 = 21;
    pub const PAVGW: u8 = 22;
    pub const PMINUB: u8 = 23;
    pub const PMAXUB: u8 = 24;
    pub const PMINSW: u8 = 25;
    pub const PMAXSW: u8 = 26;
    pub const PSADBW: u8 = 27;
    pub const PCMPEQB: u8 = 28;
    pub const PCMPEQW: u8 = 29;
    pub const PCMPEQD: u8 = 30;
    pub const PCMPGTB: u8 = 31;
    pub const PCMPGTW: u8 = 32;
    pub const PCMPGTD: u8 = 33;
    pub const PACKSSWB: u8 = 34;
    pub const PACKSSDW: u8 = 35;
    pub const PACKUSWB: u8 = 36;
    pub const PUNPCKLBW: u8 = 37;
    pub const PUNPCKLWD: u8 = 38;
    pub const PUNPCKLDQ: u8 = 39;
    pub const PUNPCKLQDQ: u8 = 40;
    pub const PUNPCKHBW: u8 = 41;
    pub const PUNPCKHWD: u8 = 42;
    pub const PUNPCKHDQ: u8 = 43;
    pub const PUNPCKHQDQ: u8 = 44;
    pub const PAND: u8 = 45;
    pub const PANDN: u8 = 46;
    pub const POR: u8 = 47;
    pub const PXOR: u8 = 48;
    pub const PSLLW: u8 = 49;
    pub const PSLLD: u8 = 50;
    pub const PSLLQ: u8 = 51;
    pub const PSRLW: u8 = 52;
    pub const PSRLD: u8 = 53;
    pub const PSRLQ: u8 = 54;
    pub const PSRAW: u8 = 55;
    pub const PSRAD: u8 = 56;
    pub const PSLLDQ: u8 = 57;
    pub const PSRLDQ: u8 = 58;
    pub const PSHUFB: u8 = 59;
    pub const PHADDW: u8 = 60;
    pub const PHADDD: u8 = 61;
    pub const PHADDSW: u8 = 62;
    pub const PHSUBW: u8 = 63;
    pub const PHSUBD: u8 = 64;
    pub const PHSUBSW: u8 = 65;
    pub const PMADDUBSW: u8 = 66;
    pub const PMULHRSW: u8 = 67;
    pub const PSIGNB: u8 = 68;
    pub const PSIGNW: u8 = 69;
    pub const PSIGND: u8 = 70;
    pub const PABSB: u8 = 71;
    pub const PABSW: u8 = 72;
    pub const PABSD: u8 = 73;
    pub const PALIGNR: u8 = 74;
    // From here on SSE4.1/4.2 operations, which have no MMX forms.
    pub const PMOVSXBW: u8 = 75;
    pub const PMOVSXBD: u8 = 76;
    pub const PMOVSXBQ: u8 = 77;
    pub const PMOVSXWD: u8 = 78;
    pub const PMOVSXWQ: u8 = 79;
    pub const PMOVSXDQ: u8 = 80;
    pub const PMOVZXBW: u8 = 81;
    pub const PMOVZXBD: u8 = 82;
    pub const PMOVZXBQ: u8 = 83;
    pub const PMOVZXWD: u8 = 84;
    pub const PMOVZXWQ: u8 = 85;
    pub const PMOVZXDQ: u8 = 86;
    pub const PMULDQ: u8 = 87;
    pub const PMULLD: u8 = 88;
    pub const PMINSB: u8 = 89;
    pub const PMINSD: u8 = 90;
    pub const PMAXSB: u8 = 91;
    pub const PMAXSD: u8 = 92;
    pub const PMINUW: u8 = 93;
    pub const PMINUD: u8 = 94;
    pub const PMAXUW: u8 = 95;
    pub const PMAXUD: u8 = 96;
    pub const PCMPEQQ: u8 = 97;
    pub const PACKUSDW: u8 = 98;
    pub const PHMINPOSUW: u8 = 99;
    pub const MPSADBW: u8 = 100;
    pub const PCMPGTQ: u8 = 101;
    /// How many there are.
    pub const COUNT: usize = 102;
}

/// All ones in a `w`-byte lane.
#[inline(always)]
const fn lane_mask(w: usize) -> u64 {
    if w >= 8 {
        u64::MAX
    } else {
        (1u64 << (w * 8)) - 1
    }
}

/// Lane `i` (of `w` bytes) of `v`, zero-extended.
#[inline(always)]
fn get(v: u128, w: usize, i: usize) -> u64 {
    (v >> (i * w * 8)) as u64 & lane_mask(w)
}

/// Lane `i` (of `w` bytes) of `v`, sign-extended.
#[inline(always)]
fn gets(v: u128, w: usize, i: usize) -> i64 {
    let sh = 64 - w * 8;
    ((get(v, w, i) << sh) as i64) >> sh
}

/// `v` with lane `i` (of `w` bytes) ORed with the low `w` bytes of `x`; the
/// lane must be zero before.
#[inline(always)]
fn put(v: &mut u128, w: usize, i: usize, x: u64) {
    *v |= u128::from(x & lane_mask(w)) << (i * w * 8);
}

/// `f` applied lane by lane to `d` and `s` (`w`-byte lanes, zero-extended).
#[inline(always)]
fn map(d: u128, s: u128, n: usize, w: usize, f: impl Fn(u64, u64) -> u64) -> u128 {
    let mut r = 0;
    for i in 0..n / w {
        put(&mut r, w, i, f(get(d, w, i), get(s, w, i)));
    }
    r
}

/// `f` applied lane by lane to `d` and `s` (`w`-byte lanes, sign-extended).
#[inline(always)]
fn maps(d: u128, s: u128, n: usize, w: usize, f: impl Fn(i64, i64) -> i64) -> u128 {
    let mut r = 0;
    for i in 0..n / w {
        put(&mut r, w, i, f(gets(d, w, i), gets(s, w, i)) as u64);
    }
    r
}

/// Signed saturation of `x` to `w` bytes.
#[inline(always)]
fn sat_s(x: i64, w: usize) -> i64 {
    let hi = (lane_mask(w) >> 1) as i64;
    x.clamp(-hi - 1, hi)
}

/// Unsigned saturation of `x` to `w` bytes.
#[inline(always)]
fn sat_u(x: i64, w: usize) -> i64 {
    x.clamp(0, lane_mask(w) as i64)
}

/// All ones when `c`.
#[inline(always)]
fn ones(c: bool) -> u64 {
    if c {
        u64::MAX
    } else {
        0
    }
}

/// A packed shift by `count` (the whole 64-bit count: any count at or past
/// the lane width gives zero, or the sign for arithmetic shifts).
#[inline(always)]
fn shift(d: u128, count: u64, n: usize, w: usize, kind: u8) -> u128 {
    let bits = (w * 8) as u64;
    match kind {
        0 => map(
            d,
            0,
            n,
            w,
            |a, _| if count >= bits { 0 } else { a << count },
        ),
        1 => map(
            d,
            0,
            n,
            w,
            |a, _| if count >= bits { 0 } else { a >> count },
        ),
        _ => maps(d, 0, n, w, |a, _| a >> count.min(bits - 1)),
    }
}

/// PACKSS/PACKUS: the `w`-byte lanes of `d` then of `s`, saturated (signed
/// when `signed`, else unsigned from signed) to `w / 2` bytes.
#[inline(always)]
fn pack(d: u128, s: u128, n: usize, w: usize, signed: bool) -> u128 {
    let k = n / w;
    let mut r = 0;
    for i in 0..2 * k {
        let x = if i < k {
            gets(d, w, i)
        } else {
            gets(s, w, i - k)
        };
        let y = if signed {
            sat_s(x, w / 2)
        } else {
            sat_u(x, w / 2)
        };
        put(&mut r, w / 2, i, y as u64);
    }
    r
}

/// PUNPCKL/PUNPCKH: interleaves the `w`-byte lanes of the low (or high) half
/// of `d` and `s`.
#[inline(always)]
fn unpack(d: u128, s: u128, n: usize, w: usize, high: bool) -> u128 {
    let half = n / w / 2;
    let base = if high { half } else { 0 };
    let mut r = 0;
    for i in 0..half {
        put(&mut r, w, 2 * i, get(d, w, base + i));
        put(&mut r, w, 2 * i + 1, get(s, w, base + i));
    }
    r
}

/// PHADD/PHSUB: pairs of adjacent `w`-byte lanes of `d`, then of `s`, added
/// (or the second subtracted from the first), saturated when `sat`.
#[inline(always)]
fn horizontal(d: u128, s: u128, n: usize, w: usize, sub: bool, sat: bool) -> u128 {
    let k = n / w / 2;
    let mut r = 0;
    for i in 0..2 * k {
        let (v, j) = if i < k { (d, i) } else { (s, i - k) };
        let a = gets(v, w, 2 * j);
        let b = gets(v, w, 2 * j + 1);
        let x = if sub { a - b } else { a + b };
        put(&mut r, w, i, if sat { sat_s(x, w) } else { x } as u64);
    }
    r
}

/// PMOVSX/PMOVZX: the low `n / to` lanes of `from` bytes of `s`, extended
/// to `to` bytes.
#[inline(always)]
fn extend(s: u128, from: usize, to: usize, signed: bool) -> u128 {
    let mut r = 0;
    for i in 0..16 / to {
        let x = if signed {
            gets(s, from, i) as u64
        } else {
            get(s, from, i)
        };
        put(&mut r, to, i, x);
    }
    r
}

/// The result of operation `OP` on `d` and `s` (with `imm`), `n` bytes wide.
#[inline(always)]
pub fn compute(op: u8, d: u128, s: u128, imm: u8, n: usize) -> u128 {
    use op::*;
    let r = match op {
        PADDB => map(d, s, n, 1, u64::wrapping_add),
        PADDW => map(d, s, n, 2, u64::wrapping_add),
        PADDD => map(d, s, n, 4, u64::wrapping_add),
        PADDQ => map(d, s, n, 8, u64::wrapping_add),
        PADDSB => maps(d, s, n, 1, |a, b| sat_s(a + b, 1)),
        PADDSW => maps(d, s, n, 2, |a, b| sat_s(a + b, 2)),
        PADDUSB => map(d, s, n, 1, |a, b| (a + b).min(0xFF)),
        PADDUSW => map(d, s, n, 2, |a, b| (a + b).min(0xFFFF)),
        PSUBB => map(d, s, n, 1, u64::wrapping_sub),
        PSUBW => map(d, s, n, 2, u64::wrapping_sub),
        PSUBD => map(d, s, n, 4, u64::wrapping_sub),
        PSUBQ => map(d, s, n, 8, u64::wrapping_sub),
        PSUBSB => maps(d, s, n, 1, |a, b| sat_s(a - b, 1)),
        PSUBSW => maps(d, s, n, 2, |a, b| sat_s(a - b, 2)),
        PSUBUSB => map(d, s, n, 1, u64::saturating_sub),
        PSUBUSW => map(d, s, n, 2, u64::saturating_sub),
        PMULLW => map(d, s, n, 2, u64::wrapping_mul),
        PMULHW => maps(d, s, n, 2, |a, b| (a * b) >> 16),
        PMULHUW => map(d, s, n, 2, |a, b| (a * b) >> 16),
        PMULUDQ => map(d, s, n, 8, |a, b| (a & 0xFFFF_FFFF) * (b & 0xFFFF_FFFF)),
        PMULDQ => map(d, s, n, 8, |a, b| {
            (i64::from(a as i32)).wrapping_mul(i64::from(b as i32)) as u64
        }),
        PMULLD => map(d, s, n, 4, u64::wrapping_mul),
        PMADDWD => {
            let mut r = 0;
            for i in 0..n / 4 {
                let x = gets(d, 2, 2 * i) * gets(s, 2, 2 * i)
                    + gets(d, 2, 2 * i + 1) * gets(s, 2, 2 * i + 1);
                put(&mut r, 4, i, x as u64);
            }
            r
        }
        PAVGB => map(d, s, n, 1, |a, b| (a + b + 1) >> 1),
        PAVGW => map(d, s, n, 2, |a, b| (a + b + 1) >> 1),
        PMINUB => map(d, s, n, 1, u64::min),
        PMAXUB => map(d, s, n, 1, u64::max),
        PMINUW => map(d, s, n, 2, u64::min),
        PMAXUW => map(d, s, n, 2, u64::max),
        PMINUD => map(d, s, n, 4, u64::min),
        PMAXUD => map(d, s, n, 4, u64::max),
        PMINSB => maps(d, s, n, 1, i64::min),
        PMAXSB => maps(d, s, n, 1, i64::max),
        PMINSW => maps(d, s, n, 2, i64::min),
        PMAXSW => maps(d, s, n, 2, i64::max),
        PMINSD => maps(d, s, n, 4, i64::min),
        PMAXSD => maps(d, s, n, 4, i64::max),
        PSADBW => {
            let mut r = 0;
            for q in 0..n / 8 {
                let sum: u64 = (0..8)
                    .map(|j| get(d, 1, 8 * q + j).abs_diff(get(s, 1, 8 * q + j)))
                    .sum();
                put(&mut r, 8, q, sum);
            }
            r
        }
        PCMPEQB => map(d, s, n, 1, |a, b| ones(a == b)),
        PCMPEQW => map(d, s, n, 2, |a, b| ones(a == b)),
        PCMPEQD => map(d, s, n, 4, |a, b| ones(a == b)),
        PCMPEQQ => map(d, s, n, 8, |a, b| ones(a == b)),
        PCMPGTB => maps(d, s, n, 1, |a, b| ones(a > b) as i64),
        PCMPGTW => maps(d, s, n, 2, |a, b| ones(a > b) as i64),
        PCMPGTD => maps(d, s, n, 4, |a, b| ones(a > b) as i64),
        PCMPGTQ => maps(d, s, n, 8, |a, b| ones(a > b) as i64),
        PACKSSWB => pack(d, s, n, 2, true),
        PACKSSDW => pack(d, s, n, 4, true),
        PACKUSWB => pack(d, s, n, 2, false),
        PACKUSDW => pack(d, s, n, 4, false),
        PUNPCKLBW => unpack(d, s, n, 1, false),
        PUNPCKLWD => unpack(d, s, n, 2, false),
        PUNPCKLDQ => unpack(d, s, n, 4, false),
        PUNPCKLQDQ => unpack(d, s, n, 8, false),
        PUNPCKHBW => unpack(d, s, n, 1, true),
        PUNPCKHWD => unpack(d, s, n, 2, true),
        PUNPCKHDQ => unpack(d, s, n, 4, true),
        PUNPCKHQDQ => unpack(d, s, n, 8, true),
        PAND => d & s,
        PANDN => !d & s,
        POR => d | s,
        PXOR => d ^ s,
        PSLLW => shift(d, s as u64, n, 2, 0),
        PSLLD => shift(d, s as u64, n, 4, 0),
        PSLLQ => shift(d, s as u64, n, 8, 0),
        PSRLW => shift(d, s as u64, n, 2, 1),
        PSRLD => shift(d, s as u64, n, 4, 1),
        PSRLQ => shift(d, s as u64, n, 8, 1),
        PSRAW => shift(d, s as u64, n, 2, 2),
        PSRAD => shift(d, s as u64, n, 4, 2),
        PSLLDQ => {
            if s >= 16 {
                0
            } else {
                d << (s * 8)
            }
        }
        PSRLDQ => {
            if s >= 16 {
                0
            } else {
                d >> (s * 8)
            }
        }
        PSHUFB => {
            let mut r = 0;
            for i in 0..n {
                let b = get(s, 1, i);
                if b & 0x80 == 0 {
                    put(&mut r, 1, i, get(d, 1, b as usize & (n - 1)));
                }
            }
            r
        }
        PHADDW => horizontal(d, s, n, 2, false, false),
        PHADDD => horizontal(d, s, n, 4, false, false),
        PHADDSW => horizontal(d, s, n, 2, false, true),
        PHSUBW => horizontal(d, s, n, 2, true, false),
        PHSUBD => horizontal(d, s, n, 4, true, false),
        PHSUBSW => horizontal(d, s, n, 2, true, true),
        PMADDUBSW => {
            let mut r = 0;
            for i in 0..n / 2 {
                let x = get(d, 1, 2 * i) as i64 * gets(s, 1, 2 * i)
                    + get(d, 1, 2 * i + 1) as i64 * gets(s, 1, 2 * i + 1);
                put(&mut r, 2, i, sat_s(x, 2) as u64);
            }
            r
        }
        PMULHRSW => maps(d, s, n, 2, |a, b| (((a * b) >> 14) + 1) >> 1),
        PSIGNB => maps(d, s, n, 1, |a, b| a * b.signum()),
        PSIGNW => maps(d, s, n, 2, |a, b| a * b.signum()),
        PSIGND => maps(d, s, n, 4, |a, b| a * b.signum()),
        PABSB => maps(s, 0, n, 1, |a, _| a.abs()),
        PABSW => maps(s, 0, n, 2, |a, _| a.abs()),
        PABSD => maps(s, 0, n, 4, |a, _| a.abs()),
        PALIGNR => {
            // Byte i of the result is byte imm + i of the 2n-byte
            // concatenation d:s (s in the low half), or zero past its end.
            let mut r = 0;
            for i in 0..n {
                let k = usize::from(imm) + i;
                let b = if k < n {
                    get(s, 1, k)
                } else if k < 2 * n {
                    get(d, 1, k - n)
                } else {
                    0
                };
                put(&mut r, 1, i, b);
            }
            r
        }
        PMOVSXBW => extend(s, 1, 2, true),
        PMOVSXBD => extend(s, 1, 4, true),
        PMOVSXBQ => extend(s, 1, 8, true),
        PMOVSXWD => extend(s, 2, 4, true),
        PMOVSXWQ => extend(s, 2, 8, true),
        PMOVSXDQ => extend(s, 4, 8, true),
        PMOVZXBW => extend(s, 1, 2, false),
        PMOVZXBD => extend(s, 1, 4, false),
        PMOVZXBQ => extend(s, 1, 8, false),
        PMOVZXWD => extend(s, 2, 4, false),
        PMOVZXWQ => extend(s, 2, 8, false),
        PMOVZXDQ => extend(s, 4, 8, false),
        PHMINPOSUW => {
            let (mut min, mut at) = (get(s, 2, 0), 0);
            for i in 1..8 {
                let x = get(s, 2, i);
                if x < min {
                    min = x;
                    at = i as u64;
                }
            }
            u128::from(min | at << 16)
        }
        MPSADBW => {
            let doff = usize::from(imm >> 2 & 1) * 4;
            let soff = usize::from(imm & 3) * 4;
            let mut r = 0;
            for i in 0..8 {
                let sum: u64 = (0..4)
                    .map(|j| get(d, 1, doff + i + j).abs_diff(get(s, 1, soff + j)))
                    .sum();
                put(&mut r, 2, i, sum);
            }
            r
        }
        _ => 0,
    };
    r & lanes_u(n)
}

/// All ones in the low `n` bytes.
#[inline(always)]
fn lanes_u(n: usize) -> u128 {
    if n >= 16 {
        u128::MAX
    } else {
        (1u128 << (n * 8)) - 1
    }
}
