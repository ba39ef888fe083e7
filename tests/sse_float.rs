//! The SSE/SSE2/SSE3/SSE4.1 floating-point family against the host CPU (see
//! `simd/mod.rs`) and the SDM.
//!
//! Covered against the host, register and memory forms, on operands drawn
//! from ±0, ±denormals, ±smallest/largest normals, ±infinity, QNaNs and SNaNs
//! with payloads, rounding and integer-conversion edges, values near 1 and near
//! the exponent limits, and random bit patterns, under all four rounding modes
//! with DAZ and FTZ on and off, every exception masked (the host must not trap)
//! and sticky flags preset at random: ADD/SUB/MUL/DIV/MIN/MAX/SQRT in PS, PD,
//! SS and SD; CMPPS/PD/SS/SD for every imm8 predicate (and reserved high imm8
//! bits); COMISS/COMISD/UCOMISS/UCOMISD; ADDSUBPS/PD; HADDPS/PD; HSUBPS/PD;
//! DPPS/DPPD with random imm8; ROUNDPS/PD/SS/SD with every imm8[3:0]; and the
//! conversions CVTPI2PS, CVTPS2PI, CVTTPS2PI, CVTSI2SS, CVTSS2SI, CVTTSS2SI,
//! CVTPI2PD, CVTPD2PI, CVTTPD2PI, CVTSI2SD, CVTSD2SI, CVTTSD2SI, CVTPS2PD,
//! CVTPD2PS, CVTSS2SD, CVTSD2SS, CVTDQ2PS, CVTPS2DQ, CVTTPS2DQ, CVTDQ2PD,
//! CVTPD2DQ, CVTTPD2DQ (32-bit GPR forms: the oracle runs 32-bit guest code).
//!
//! RCPPS/RCPSS/RSQRTPS/RSQRTSS: the special cases (zero, denormal, infinity,
//! NaN, negative) against the host exactly; other results against the SDM's
//! error bound, computed exactly in integers (the host's results are checked
//! against the same bound, so the checker is checked too).
//!
//! Against the SDM with `guest_fault`: #UD (CR4.OSFXSR clear, CR0.EM set),
//! #NM (CR0.TS), #GP(0) for a misaligned 16-byte operand (none for scalar
//! operands), #MF for the MMX-register forms, and unmasked exceptions: #XM
//! with CR4.OSXMMEXCPT, #UD without, the destination unchanged, the flags set
//! as vol. 1 §11.5.1 says (only the pre-computation ones when one of those is
//! unmasked).

#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(target_arch = "x86_64")]
mod host {
    use super::simd::*;
    use iced_x86::{Code, Register};

    const F32_SPECIAL: &[u32] = &[
        0x0000_0000, // +0
        0x8000_0000, // -0
        0x0000_0001, // smallest denormal
        0x8000_0001,
        0x007F_FFFF, // largest denormal
        0x807F_FFFF,
        0x0040_0000,
        0x0000_0003,
        0x0080_0000, // smallest normal
        0x8080_0000,
        0x0080_0001,
        0x00FF_FFFF,
        0x7F7F_FFFF, // largest normal
        0xFF7F_FFFF,
        0x7F00_0000,
        0x3F80_0000, // 1
        0xBF80_0000,
        0x3F80_0001, // 1 + ulp
        0x3F7F_FFFF, // 1 - ulp/2
        0x3F00_0000, // 0.5
        0x3FC0_0000, // 1.5
        0xBFC0_0000,
        0x4020_0000, // 2.5
        0xC020_0000,
        0x3F40_0000, // 0.75
        0x7F80_0000, // +inf
        0xFF80_0000, // -inf
        0x7FC0_0000, // QNaN
        0xFFC0_0000, // default NaN
        0x7FC1_2345, // QNaN with payload
        0xFFE0_0F00,
        0x7F80_0001, // SNaN
        0xFFA0_1234, // SNaN with payload
        0x4B00_0000, // 2^23
        0x4B7F_FFFF,
        0x4EFF_FFFF, // just below 2^31
        0x4F00_0000, // 2^31
        0xCF00_0000, // -2^31
        0xCF00_0001,
        0x5EFF_FFFF, // just below 2^63
        0x5F00_0000, // 2^63
        0xDF00_0000, // -2^63
        0xDF00_0001,
    ];

    const F64_SPECIAL: &[u64] = &[
        0,
        1 << 63,
        1, // smallest denormal
        0x8000_0000_0000_0001,
        0x000F_FFFF_FFFF_FFFF, // largest denormal
        0x800F_FFFF_FFFF_FFFF,
        0x0008_0000_0000_0000,
        0x0010_0000_0000_0000, // smallest normal
        0x8010_0000_0000_0000,
        0x7FEF_FFFF_FFFF_FFFF, // largest normal
        0xFFEF_FFFF_FFFF_FFFF,
        0x3FF0_0000_0000_0000, // 1
        0xBFF0_0000_0000_0000,
        0x3FF0_0000_0000_0001,
        0x3FEF_FFFF_FFFF_FFFF,
        0x3FE0_0000_0000_0000, // 0.5
        0x3FF8_0000_0000_0000, // 1.5
        0xBFF8_0000_0000_0000,
        0x4004_0000_0000_0000, // 2.5
        0xC004_0000_0000_0000,
        0x7FF0_0000_0000_0000, // +inf
        0xFFF0_0000_0000_0000,
        0x7FF8_0000_0000_0000, // QNaN
        0xFFF8_0000_0000_0000, // default NaN
        0x7FF8_0000_0000_1234,
        0xFFFC_0000_1234_5678,
        0x7FF0_0000_0000_0001, // SNaN
        0xFFF4_0000_0000_0000,
        0x7FF1_2345_6789_ABCD,
        0x41E0_0000_0000_0000, // 2^31
        0x41DF_FFFF_FFE0_0000, // 2^31 - 1
        0x41DF_FFFF_FFF0_0000, // 2^31 - 0.5
        0x41DF_FFFF_FFF8_0000, // 2^31 - 0.25
        0xC1E0_0000_0000_0000, // -2^31
        0xC1E0_0000_0010_0000, // -2^31 - 0.5
        0xC1E0_0000_0020_0000, // -2^31 - 1
        0x43E0_0000_0000_0000, // 2^63
        0xC3E0_0000_0000_0000, // -2^63
        0x43DF_FFFF_FFFF_FFFF,
        0x47EF_FFFF_E000_0000, // largest single
        0x47EF_FFFF_F000_0000, // largest single + half ulp
        0x47EF_FFFF_EFFF_FFFF,
        0x47F0_0000_0000_0000, // 2^128
        0x36A0_0000_0000_0000, // smallest single denormal
        0x3690_0000_0000_0000, // half of it
        0x3690_0000_0000_0001,
        0x380F_FFFF_F000_0000, // below the smallest normal single, rounds to it
        0x380F_FFFF_E000_0000,
        0x380F_FFFF_F400_0000, // tiny after rounding to 24 bits (unbounded)
        0x380F_FFFF_FC00_0000, // rounds to the smallest normal: not tiny
        0x3810_0000_0000_0000, // smallest normal single
        0xB80F_FFFF_F800_0000,
    ];

    const I32_SPECIAL: &[u32] = &[
        0,
        1,
        0xFFFF_FFFF,
        0x8000_0000,
        0x7FFF_FFFF,
        0x0100_0001, // 2^24 + 1: inexact as a single
        0x0100_0003,
        0xFEFF_FFFF,
        0x7FFF_FFC0,
        0x7FFF_FF80,
    ];

    /// How an image's XMM registers and memory are filled.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        /// Singles.
        S,
        /// Doubles.
        D,
        /// Doubleword integers.
        I,
    }

    fn pick<T: Copy>(rng: &mut Rng, v: &[T]) -> T {
        v[(rng.next() % v.len() as u64) as usize]
    }

    fn single(rng: &mut Rng) -> u32 {
        let r = rng.next();
        let sign = (r as u32 & 1) << 31;
        let frac = (r >> 8) as u32 & 0x7F_FFFF;
        match (r >> 40) % 8 {
            0..=2 => pick(rng, F32_SPECIAL),
            3 => (r >> 16) as u32,
            // Near 1: exponents 124..=130.
            4 => sign | (124 + (r >> 50) as u32 % 7) << 23 | frac,
            // Near the limits: exponents 0..=3 and 251..=254.
            5 => {
                let e = (r >> 50) as u32 % 8;
                let e = if e < 4 { e } else { 247 + e };
                sign | e << 23 | frac
            }
            // A special value's neighbour.
            6 => pick(rng, F32_SPECIAL)
                .wrapping_add((r >> 50) as u32 % 5)
                .wrapping_sub(2),
            // Integer-valued or half-integer values near the conversion range.
            _ => sign | (150 + (r >> 50) as u32 % 10) << 23 | frac,
        }
    }

    fn double(rng: &mut Rng) -> u64 {
        let r = rng.next();
        let r2 = rng.next();
        let sign = (r & 1) << 63;
        let frac = r2 & 0x000F_FFFF_FFFF_FFFF;
        match (r >> 40) % 8 {
            0..=2 => pick(rng, F64_SPECIAL),
            3 => r2,
            4 => sign | (1020 + (r >> 50) % 7) << 52 | frac,
            5 => {
                let e = (r >> 50) % 8;
                let e = if e < 4 { e } else { 2039 + e };
                sign | e << 52 | frac
            }
            6 => pick(rng, F64_SPECIAL)
                .wrapping_add((r >> 50) % 5)
                .wrapping_sub(2),
            // Around the single range's limits, for CVTSD2SS.
            _ => {
                let e = match (r >> 50) % 4 {
                    0 => 1023 + 127 + (r >> 52) % 3,
                    1 => 1023 - 126 - (r >> 52) % 26,
                    2 => 1023 + 20 + (r >> 52) % 45,
                    _ => 1023 - 2 + (r >> 52) % 5,
                };
                sign | e << 52 | frac
            }
        }
    }

    fn int32(rng: &mut Rng) -> u32 {
        let r = rng.next();
        match r % 4 {
            0 => pick(rng, I32_SPECIAL),
            1 => (r >> 32) as u32,
            _ => (((r >> 32) as u32) >> ((r >> 8) % 32)) ^ if r & 0x100 != 0 { !0 } else { 0 },
        }
    }

    /// 128 bits of `kind` lanes.
    pub fn fill(rng: &mut Rng, kind: Kind) -> u128 {
        let mut v = 0u128;
        match kind {
            Kind::S => {
                for i in 0..4 {
                    v |= u128::from(single(rng)) << (32 * i);
                }
            }
            Kind::D => {
                for i in 0..2 {
                    v |= u128::from(double(rng)) << (64 * i);
                }
            }
            Kind::I => {
                for i in 0..4 {
                    v |= u128::from(int32(rng)) << (32 * i);
                }
            }
        }
        v
    }

    /// MXCSR with every exception masked: RC, DAZ and FTZ from `config` (0-15),
    /// some flags preset at random.
    pub fn masked_mxcsr(rng: &mut Rng, config: usize) -> u32 {
        let rc = (config as u32 & 3) << 13;
        let daz = if config & 4 != 0 { 1 << 6 } else { 0 };
        let ftz = if config & 8 != 0 { 1 << 15 } else { 0 };
        let flags = if rng.next().is_multiple_of(4) {
            rng.next() as u32 & 0x3F
        } else {
            0
        };
        0x1F80 | rc | daz | ftz | flags
    }

    /// A random image: XMM registers and memory of `kind`, MM registers and
    /// GPRs of doubleword integers, random flags.
    pub fn image(rng: &mut Rng, kind: Kind, config: usize) -> Image {
        let mut img = Image::default();
        for x in img.xmm.iter_mut() {
            *x = fill(rng, kind);
        }
        img.mem = fill(rng, kind).to_le_bytes();
        for x in img.mm.iter_mut() {
            *x = fill(rng, Kind::I) as u64;
        }
        for g in img.gpr.iter_mut() {
            *g = u64::from(int32(rng));
        }
        img.flags = rng.next() & ARITH_FLAGS;
        img.mxcsr = masked_mxcsr(rng, config);
        img
    }

    /// Runs `code` against the host `n` times for each of the 16 MXCSR
    /// configurations, with each operand list of `forms` (an `Op::Imm` in them
    /// is replaced by a random imm8 when `imms` is empty, else by one of them).
    pub fn sweep(code: Code, kind: Kind, forms: &[&[Op]], imms: &[u8], n: usize, seed: u64) {
        sweep_with(code, kind, forms, imms, n, seed, check);
    }

    /// [`sweep`] with another check of each case.
    pub fn sweep_with(
        code: Code,
        kind: Kind,
        forms: &[&[Op]],
        imms: &[u8],
        n: usize,
        seed: u64,
        check: impl Fn(&iced_x86::Instruction, &Image),
    ) {
        let mut rng = Rng(seed ^ (code as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for config in 0..16 {
            for _ in 0..n {
                let img = image(&mut rng, kind, config);
                for form in forms {
                    let imm = if imms.is_empty() {
                        rng.next() as u8
                    } else {
                        pick(&mut rng, imms)
                    };
                    let ops: Vec<Op> = form
                        .iter()
                        .map(|o| match o {
                            Op::Imm(_) => Op::Imm(imm),
                            o => *o,
                        })
                        .collect();
                    check(&ins(code, &ops), &img);
                }
            }
        }
    }

    /// [`check_against_host`], reporting a mismatch in hexadecimal.
    pub fn check(ins: &iced_x86::Instruction, img: &Image) {
        let mut want = host_run(ins, img);
        let mut got =
            guest_run(ins, img).unwrap_or_else(|e| panic!("{ins}: guest raised {e:?} on {img:x?}"));
        for g in want.gpr.iter_mut().chain(got.gpr.iter_mut()) {
            *g &= 0xFFFF_FFFF;
        }
        if got != want {
            panic!(
                "{ins}\n input: xmm {:x?} mem {:x} mxcsr {:x} mm {:x?}\n want: xmm {:x?} mxcsr {:x} gpr {:x?} flags {:x} mm {:x?}\n  got: xmm {:x?} mxcsr {:x} gpr {:x?} flags {:x} mm {:x?}",
                img.xmm, u128::from_le_bytes(img.mem), img.mxcsr, img.mm,
                want.xmm, want.mxcsr, want.gpr, want.flags, want.mm,
                got.xmm, got.mxcsr, got.gpr, got.flags, got.mm,
            );
        }
        // The translator: the instruction inline under the guest's MXCSR.
        assert_eq!(
            gpr32(jit_run(ins, img, false)),
            want,
            "{ins} under jit on {img:x?}"
        );
    }

    pub const XX: &[Op] = &[Op::X(0), Op::X(1)];
    pub const XM: &[Op] = &[Op::X(2), Op::M];
    pub const XXI: &[Op] = &[Op::X(0), Op::X(1), Op::Imm(0)];
    pub const XMI: &[Op] = &[Op::X(2), Op::M, Op::Imm(0)];

    pub fn eax() -> Op {
        Op::R(Register::EAX)
    }
}

#[cfg(target_arch = "x86_64")]
use host::*;
#[cfg(target_arch = "x86_64")]
use iced_x86::{Code, Register};
#[cfg(target_arch = "x86_64")]
use simd::*;

const N: usize = 60;

#[cfg(target_arch = "x86_64")]
#[test]
fn arith_packed_single_random_operands_match_host() {
    for code in [
        Code::Addps_xmm_xmmm128,
        Code::Subps_xmm_xmmm128,
        Code::Mulps_xmm_xmmm128,
        Code::Divps_xmm_xmmm128,
        Code::Minps_xmm_xmmm128,
        Code::Maxps_xmm_xmmm128,
        Code::Sqrtps_xmm_xmmm128,
    ] {
        sweep(code, Kind::S, &[XX, XM], &[], N, 1);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn arith_packed_double_random_operands_match_host() {
    for code in [
        Code::Addpd_xmm_xmmm128,
        Code::Subpd_xmm_xmmm128,
        Code::Mulpd_xmm_xmmm128,
        Code::Divpd_xmm_xmmm128,
        Code::Minpd_xmm_xmmm128,
        Code::Maxpd_xmm_xmmm128,
        Code::Sqrtpd_xmm_xmmm128,
    ] {
        sweep(code, Kind::D, &[XX, XM], &[], N, 2);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn arith_scalar_single_random_operands_match_host() {
    for code in [
        Code::Addss_xmm_xmmm32,
        Code::Subss_xmm_xmmm32,
        Code::Mulss_xmm_xmmm32,
        Code::Divss_xmm_xmmm32,
        Code::Minss_xmm_xmmm32,
        Code::Maxss_xmm_xmmm32,
        Code::Sqrtss_xmm_xmmm32,
    ] {
        sweep(code, Kind::S, &[XX, XM], &[], 2 * N, 3);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn arith_scalar_double_random_operands_match_host() {
    for code in [
        Code::Addsd_xmm_xmmm64,
        Code::Subsd_xmm_xmmm64,
        Code::Mulsd_xmm_xmmm64,
        Code::Divsd_xmm_xmmm64,
        Code::Minsd_xmm_xmmm64,
        Code::Maxsd_xmm_xmmm64,
        Code::Sqrtsd_xmm_xmmm64,
    ] {
        sweep(code, Kind::D, &[XX, XM], &[], 2 * N, 4);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn cmp_every_predicate_matches_host() {
    let imms: Vec<u8> = (0..8).chain([8, 0x0D, 0x55, 0xFF]).collect();
    for (code, kind) in [
        (Code::Cmpps_xmm_xmmm128_imm8, Kind::S),
        (Code::Cmppd_xmm_xmmm128_imm8, Kind::D),
        (Code::Cmpss_xmm_xmmm32_imm8, Kind::S),
        (Code::Cmpsd_xmm_xmmm64_imm8, Kind::D),
    ] {
        sweep(code, kind, &[XXI, XMI], &imms, N, 5);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn comis_random_operands_set_flags_as_host() {
    for (code, kind) in [
        (Code::Comiss_xmm_xmmm32, Kind::S),
        (Code::Ucomiss_xmm_xmmm32, Kind::S),
        (Code::Comisd_xmm_xmmm64, Kind::D),
        (Code::Ucomisd_xmm_xmmm64, Kind::D),
    ] {
        sweep(code, kind, &[XX, XM], &[], 2 * N, 6);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn horizontal_and_addsub_random_operands_match_host() {
    for (code, kind) in [
        (Code::Addsubps_xmm_xmmm128, Kind::S),
        (Code::Addsubpd_xmm_xmmm128, Kind::D),
        (Code::Haddps_xmm_xmmm128, Kind::S),
        (Code::Haddpd_xmm_xmmm128, Kind::D),
        (Code::Hsubps_xmm_xmmm128, Kind::S),
        (Code::Hsubpd_xmm_xmmm128, Kind::D),
    ] {
        sweep(code, kind, &[XX, XM], &[], N, 7);
    }
}

/// DPPS and DPPD against the host. Where two NaNs meet in the sum, which one
/// comes out is the implementation's: the guest follows the SDM's sum tree
/// (as Intel's parts do), and AMD hosts pick otherwise (seen on an AMD EPYC:
/// DPPS XMM2, [mem], 7Bh gave the destination's NaN 7FC12347h in a lane where
/// the SDM's order gives the source's 7FC12345h). On an AMD host a result
/// may therefore differ from the host's only in which NaN a lane holds: the
/// same lanes NaN, everything else (other lanes, MXCSR, flags) equal. The
/// translator must give the interpreter's result either way.
#[cfg(target_arch = "x86_64")]
#[test]
fn dot_product_random_imm8_matches_host() {
    let amd = host_is_amd();
    for (code, kind, seed) in [
        (Code::Dpps_xmm_xmmm128_imm8, Kind::S, 8),
        (Code::Dppd_xmm_xmmm128_imm8, Kind::D, 9),
    ] {
        sweep_with(code, kind, &[XXI, XMI], &[], 3 * N, seed, |ins, img| {
            if !amd {
                return check(ins, img);
            }
            let want = host_run(ins, img);
            let got = guest_run(ins, img)
                .unwrap_or_else(|e| panic!("{ins}: guest raised {e:?} on {img:x?}"));
            let lanes_ok = got.xmm.iter().zip(&want.xmm).all(|(&g, &w)| {
                g == w
                    || nan_lanes(g, kind) == nan_lanes(w, kind) && nan_lanes(g, kind) != 0 && {
                        let keep = !nan_mask(g, kind);
                        g & keep == w & keep
                    }
            });
            assert!(
                lanes_ok
                    && (got.mxcsr, got.flags, got.mm) == (want.mxcsr, want.flags, want.mm)
                    && got
                        .gpr
                        .iter()
                        .zip(&want.gpr)
                        .all(|(g, w)| g & 0xFFFF_FFFF == w & 0xFFFF_FFFF),
                "{ins} on {img:x?}:\n want {:x?}\n  got {:x?}",
                want.xmm,
                got.xmm
            );
            assert_eq!(
                gpr32(jit_run(ins, img, false)),
                gpr32(got),
                "{ins} under jit on {img:x?}"
            );
        });
    }
}

/// Bit i set: lane i of `v` (single or double precision) is a NaN.
fn nan_lanes(v: u128, kind: Kind) -> u8 {
    let (bits, exp, frac) = match kind {
        Kind::S => (32, 0x7F80_0000u128, 0x007F_FFFFu128),
        _ => (64, 0x7FF0_0000_0000_0000, 0x000F_FFFF_FFFF_FFFF),
    };
    (0..128 / bits).fold(0, |m, i| {
        let lane = v >> (i * bits);
        if lane & exp == exp && lane & frac != 0 {
            m | 1 << i
        } else {
            m
        }
    })
}

/// The bits of `v`'s NaN lanes.
fn nan_mask(v: u128, kind: Kind) -> u128 {
    let bits = if matches!(kind, Kind::S) { 32 } else { 64 };
    let lane = (1u128 << bits) - 1;
    let lanes = nan_lanes(v, kind);
    (0..128 / bits)
        .filter(|i| lanes & 1 << i != 0)
        .fold(0, |m, i| m | lane << (i * bits))
}

#[cfg(target_arch = "x86_64")]
#[test]
fn round_every_imm8_mode_matches_host() {
    let imms: Vec<u8> = (0..16).chain([0x10, 0xF3]).collect();
    for (code, kind) in [
        (Code::Roundps_xmm_xmmm128_imm8, Kind::S),
        (Code::Roundpd_xmm_xmmm128_imm8, Kind::D),
        (Code::Roundss_xmm_xmmm32_imm8, Kind::S),
        (Code::Roundsd_xmm_xmmm64_imm8, Kind::D),
    ] {
        sweep(code, kind, &[XXI, XMI], &imms, N, 10);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn convert_float_to_float_matches_host() {
    for (code, kind) in [
        (Code::Cvtss2sd_xmm_xmmm32, Kind::S),
        (Code::Cvtps2pd_xmm_xmmm64, Kind::S),
        (Code::Cvtsd2ss_xmm_xmmm64, Kind::D),
        (Code::Cvtpd2ps_xmm_xmmm128, Kind::D),
    ] {
        sweep(code, kind, &[XX, XM], &[], 2 * N, 11);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn convert_float_to_int_matches_host() {
    let gx: &[Op] = &[eax(), Op::X(1)];
    let gm: &[Op] = &[Op::R(Register::EDX), Op::M];
    for (code, kind) in [
        (Code::Cvtss2si_r32_xmmm32, Kind::S),
        (Code::Cvttss2si_r32_xmmm32, Kind::S),
        (Code::Cvtsd2si_r32_xmmm64, Kind::D),
        (Code::Cvttsd2si_r32_xmmm64, Kind::D),
    ] {
        sweep(code, kind, &[gx, gm], &[], 2 * N, 12);
    }
    for (code, kind) in [
        (Code::Cvtps2dq_xmm_xmmm128, Kind::S),
        (Code::Cvttps2dq_xmm_xmmm128, Kind::S),
        (Code::Cvtpd2dq_xmm_xmmm128, Kind::D),
        (Code::Cvttpd2dq_xmm_xmmm128, Kind::D),
    ] {
        sweep(code, kind, &[XX, XM], &[], N, 13);
    }
    let mx: &[Op] = &[Op::Mm(3), Op::X(1)];
    let mm: &[Op] = &[Op::Mm(5), Op::M];
    for (code, kind) in [
        (Code::Cvtps2pi_mm_xmmm64, Kind::S),
        (Code::Cvttps2pi_mm_xmmm64, Kind::S),
        (Code::Cvtpd2pi_mm_xmmm128, Kind::D),
        (Code::Cvttpd2pi_mm_xmmm128, Kind::D),
    ] {
        sweep(code, kind, &[mx, mm], &[], N, 14);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn convert_int_to_float_matches_host() {
    let xg: &[Op] = &[Op::X(0), Op::R(Register::ECX)];
    let xm: &[Op] = &[Op::X(2), Op::M];
    let xmm_mm: &[Op] = &[Op::X(4), Op::Mm(6)];
    for code in [Code::Cvtsi2ss_xmm_rm32, Code::Cvtsi2sd_xmm_rm32] {
        sweep(code, Kind::I, &[xg, xm], &[], 2 * N, 15);
    }
    for code in [Code::Cvtdq2ps_xmm_xmmm128, Code::Cvtdq2pd_xmm_xmmm64] {
        sweep(code, Kind::I, &[XX, XM], &[], N, 16);
    }
    for code in [Code::Cvtpi2ps_xmm_mmm64, Code::Cvtpi2pd_xmm_mmm64] {
        sweep(code, Kind::I, &[xmm_mm, xm], &[], N, 17);
    }
}

// ---------------------------------------------------------------------------
// RCPPS/RSQRTPS: special cases against the host, the rest against the SDM's
// error bound.
// ---------------------------------------------------------------------------

/// Operands whose RCP/RSQRT result the SDM fixes: zeros, denormals,
/// infinities, NaNs, and (for RSQRT) negative numbers.
#[cfg(target_arch = "x86_64")]
const APPROX_SPECIAL: &[u32] = &[
    0x0000_0000,
    0x8000_0000,
    0x0000_0001,
    0x8000_0001,
    0x007F_FFFF,
    0x807F_FFFF,
    0x0012_3456,
    0x7F80_0000,
    0xFF80_0000,
    0x7FC0_0000,
    0xFFC0_0000,
    0x7FC1_2345,
    0x7F80_0001,
    0xFFA0_1234,
];

#[cfg(target_arch = "x86_64")]
const NEGATIVE: &[u32] = &[0xBF80_0000, 0xC2F6_E979, 0xFF7F_FFFF, 0x8080_0000];

#[cfg(target_arch = "x86_64")]
fn special_image(rng: &mut Rng, pool: &[u32]) -> Image {
    let mut lanes = || {
        let mut v = 0u128;
        for i in 0..4 {
            v |= u128::from(pool[(rng.next() % pool.len() as u64) as usize]) << (32 * i);
        }
        v
    };
    let mut img = Image::default();
    for x in img.xmm.iter_mut() {
        *x = lanes();
    }
    img.mem = lanes().to_le_bytes();
    img.mxcsr = 0x1F80 | (rng.next() as u32 & 0x3F) | ((rng.next() as u32 & 0x23) << 13 >> 7);
    img
}

#[cfg(target_arch = "x86_64")]
#[test]
fn rcp_special_operands_match_host() {
    let mut rng = Rng(0x5EC1A1);
    for _ in 0..300 {
        let img = special_image(&mut rng, APPROX_SPECIAL);
        for code in [Code::Rcpps_xmm_xmmm128, Code::Rcpss_xmm_xmmm32] {
            check(&ins(code, XX), &img);
            check(&ins(code, XM), &img);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn rsqrt_special_and_negative_operands_match_host() {
    let pool: Vec<u32> = APPROX_SPECIAL.iter().chain(NEGATIVE).copied().collect();
    let mut rng = Rng(0x5EC1A2);
    for _ in 0..300 {
        let img = special_image(&mut rng, &pool);
        for code in [Code::Rsqrtps_xmm_xmmm128, Code::Rsqrtss_xmm_xmmm32] {
            check(&ins(code, XX), &img);
            check(&ins(code, XM), &img);
        }
    }
}

/// A positive normal single as m * 2^e (m with its integer bit).
#[cfg(target_arch = "x86_64")]
fn parts(x: u32) -> (u128, i32) {
    let e = ((x >> 23) & 0xFF) as i32;
    assert!(e != 0 && e != 0xFF, "{x:#x} is normal");
    (u128::from(x & 0x7F_FFFF | 1 << 23), e - 127 - 23)
}

/// `a <= b * 2^k` for non-negative integers, exactly (the callers' values
/// stay far below 2^128 after the shift).
#[cfg(target_arch = "x86_64")]
fn le_scaled(a: u128, b: u128, k: i32) -> bool {
    if k >= 0 {
        a <= b << k
    } else {
        a << -k <= b
    }
}

/// |x * y - 1| <= 1.5 * 2^-12 (SDM RCPPS), exactly: with x * y = P * 2^k,
/// 2^13 - 3 <= P * 2^(k + 13) <= 2^13 + 3.
#[cfg(target_arch = "x86_64")]
fn rcp_within_bound(x: u32, y: u32) -> bool {
    if y & 0x8000_0000 != x & 0x8000_0000 {
        return false;
    }
    let (mx, ex) = parts(x & 0x7FFF_FFFF);
    let (my, ey) = parts(y & 0x7FFF_FFFF);
    let p = mx * my;
    let k = ex + ey + 13;
    le_scaled((1 << 13) - 3, p, k) && le_scaled(p, (1 << 13) + 3, -k)
}

/// |y * sqrt(x) - 1| <= 1.5 * 2^-12, exactly: (2^13 - 3)^2 * 2^-26 <= y^2 * x
/// <= (2^13 + 3)^2 * 2^-26.
#[cfg(target_arch = "x86_64")]
fn rsqrt_within_bound(x: u32, y: u32) -> bool {
    if y & 0x8000_0000 != 0 {
        return false;
    }
    let (mx, ex) = parts(x);
    let (my, ey) = parts(y);
    let q = my * my * mx;
    let k = 2 * ey + ex + 26;
    let lo = ((1u128 << 13) - 3).pow(2);
    let hi = ((1u128 << 13) + 3).pow(2);
    le_scaled(lo, q, k) && le_scaled(q, hi, -k)
}

#[cfg(target_arch = "x86_64")]
#[test]
fn rcp_normal_operands_within_sdm_error_bound() {
    let mut rng = Rng(0xB0D);
    let mut inputs: Vec<u32> = vec![0x3F80_0000, 0x3FFF_FFFF, 0x3F80_0001, 0x0080_0000];
    // The largest input the SDM guarantees not to give a tiny result.
    inputs.push(0x7E7F_E800);
    for _ in 0..4000 {
        let r = rng.next();
        // Exponents 1..=252: the result is a normal.
        let e = 1 + (r >> 40) as u32 % 252;
        inputs.push((r as u32 & 0x807F_FFFF) | e << 23);
    }
    for chunk in inputs.chunks(4) {
        let mut v = 0u128;
        for (i, x) in chunk.iter().enumerate() {
            v |= u128::from(*x) << (32 * i);
        }
        let img = Image {
            xmm: [0, v, 0, 0, 0, 0, 0, 0],
            ..Image::default()
        };
        let i = ins(Code::Rcpps_xmm_xmmm128, XX);
        let got = guest_run(&i, &img).expect("no fault");
        let host = host_run(&i, &img);
        assert_eq!(got.mxcsr, img.mxcsr, "RCPPS leaves MXCSR alone");
        for (l, x) in chunk.iter().enumerate() {
            let y = (got.xmm[0] >> (32 * l)) as u32;
            let h = (host.xmm[0] >> (32 * l)) as u32;
            assert!(rcp_within_bound(*x, y), "rcp({x:#x}) = {y:#x}");
            assert!(rcp_within_bound(*x, h), "host rcp({x:#x}) = {h:#x}");
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn rcp_huge_operands_flush_to_signed_zero() {
    // SDM RCPPS: inputs of magnitude >= 1.00000000000110000000001B * 2^126
    // give tiny results, flushed to zero of the operand's sign.
    let xs = [0x7E80_C001u32, 0xFE80_C001, 0x7F7F_FFFF, 0xFF00_0000];
    let mut v = 0u128;
    for (i, x) in xs.iter().enumerate() {
        v |= u128::from(*x) << (32 * i);
    }
    let img = Image {
        xmm: [0, v, 0, 0, 0, 0, 0, 0],
        ..Image::default()
    };
    let got = guest_run(&ins(Code::Rcpps_xmm_xmmm128, XX), &img).expect("no fault");
    assert_eq!(got.xmm[0], 0x8000_0000_0000_0000_8000_0000_0000_0000);
    check(&ins(Code::Rcpps_xmm_xmmm128, XX), &img);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn rsqrt_positive_operands_within_sdm_error_bound() {
    let mut rng = Rng(0x5C47);
    let mut inputs: Vec<u32> = vec![
        0x3F80_0000,
        0x4080_0000,
        0x4000_0000,
        0x0080_0000,
        0x7F7F_FFFF,
    ];
    for _ in 0..4000 {
        let r = rng.next();
        let e = 1 + (r >> 40) as u32 % 254;
        inputs.push((r as u32 & 0x007F_FFFF) | e << 23);
    }
    inputs.truncate(inputs.len() / 4 * 4);
    for chunk in inputs.chunks(4) {
        let mut v = 0u128;
        for (i, x) in chunk.iter().enumerate() {
            v |= u128::from(*x) << (32 * i);
        }
        let img = Image {
            mem: v.to_le_bytes(),
            ..Image::default()
        };
        let i = ins(Code::Rsqrtps_xmm_xmmm128, &[Op::X(3), Op::M]);
        let got = guest_run(&i, &img).expect("no fault");
        let host = host_run(&i, &img);
        for (l, x) in chunk.iter().enumerate() {
            let y = (got.xmm[3] >> (32 * l)) as u32;
            let h = (host.xmm[3] >> (32 * l)) as u32;
            assert!(rsqrt_within_bound(*x, y), "rsqrt({x:#x}) = {y:#x}");
            assert!(rsqrt_within_bound(*x, h), "host rsqrt({x:#x}) = {h:#x}");
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn approx_bound_checker_rejects_a_result_one_percent_off() {
    // 1/1 = 1 and 1/sqrt(1) = 1; 1.01 (0x3F8147AE) is far outside the bound,
    // 1 + 2^-12 (0x3F800800) inside it, 1 + 2^-11 (0x3F801000) outside.
    assert!(rcp_within_bound(0x3F80_0000, 0x3F80_0000));
    assert!(rcp_within_bound(0x3F80_0000, 0x3F80_0800));
    assert!(!rcp_within_bound(0x3F80_0000, 0x3F80_1000));
    assert!(!rcp_within_bound(0x3F80_0000, 0x3F81_47AE));
    assert!(!rcp_within_bound(0x3F80_0000, 0xBF80_0000));
    assert!(rsqrt_within_bound(0x4080_0000, 0x3F00_0000));
    assert!(!rsqrt_within_bound(0x4080_0000, 0x3F00_1000));
    assert!(rsqrt_within_bound(0x4080_0000, 0x3F00_0400));
}

// ---------------------------------------------------------------------------
// Faults and unmasked exceptions, against the SDM.
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod faults {
    use super::simd::*;
    use iced_x86::{Code, Instruction};
    use x86bt_cpu::mmu::cr4;
    use x86bt_cpu::state::{cr0, CpuState};
    use x86bt_cpu::Exception;

    const IE: u32 = 1;
    const DE: u32 = 2;
    const ZE: u32 = 4;
    const OE: u32 = 8;
    const UE: u32 = 16;
    const PE: u32 = 32;

    /// MXCSR with every exception masked except `unmask` (flags' bit
    /// positions).
    fn csr(unmask: u32) -> u32 {
        0x1F80 & !(unmask << 7)
    }

    fn img(x0: u128, x1: u128, mxcsr: u32) -> Image {
        Image {
            xmm: [x0, x1, 0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666],
            mem: x1.to_le_bytes(),
            mxcsr,
            flags: 0x8D5,
            gpr: [0xAAAA_AAAA, 0xBBBB_BBBB, 0xCCCC_CCCC],
            ..Image::default()
        }
    }

    /// Runs `i` expecting `want`, and checks that only MXCSR changed, to
    /// `mxcsr_after`.
    fn expect_fault(i: &Instruction, image: &Image, want: Exception, mxcsr_after: u32) {
        expect_fault_with(i, image, want, mxcsr_after, |_| {});
    }

    fn expect_fault_with(
        i: &Instruction,
        image: &Image,
        want: Exception,
        mxcsr_after: u32,
        setup: impl FnOnce(&mut CpuState),
    ) {
        let (fault, after) = guest_fault(i, image, setup);
        assert_eq!(fault, Some(want), "{i}");
        let mut expected = *image;
        expected.mxcsr = mxcsr_after;
        assert_eq!(after, expected, "{i}: only MXCSR may change");
    }

    const ONES_PS: u128 = 0x3F80_0000_3F80_0000_3F80_0000_3F80_0000;

    #[test]
    fn addps_osfxsr_clear_raises_ud() {
        let i = ins(Code::Addps_xmm_xmmm128, &[Op::X(0), Op::X(1)]);
        let im = img(ONES_PS, ONES_PS, 0x1F80);
        expect_fault_with(&i, &im, Exception::InvalidOpcode, 0x1F80, |c| {
            c.cr4 &= !cr4::OSFXSR
        });
    }

    #[test]
    fn sqrtsd_cr0_em_raises_ud() {
        let i = ins(Code::Sqrtsd_xmm_xmmm64, &[Op::X(0), Op::X(1)]);
        let im = img(ONES_PS, ONES_PS, 0x1F80);
        expect_fault_with(&i, &im, Exception::InvalidOpcode, 0x1F80, |c| {
            c.cr0 |= cr0::EM
        });
    }

    #[test]
    fn cvtsi2sd_cr0_ts_raises_nm() {
        let i = ins(
            Code::Cvtsi2sd_xmm_rm32,
            &[Op::X(0), Op::R(iced_x86::Register::EAX)],
        );
        let im = img(ONES_PS, ONES_PS, 0x1F80);
        expect_fault_with(&i, &im, Exception::DeviceNotAvailable, 0x1F80, |c| {
            c.cr0 |= cr0::TS
        });
    }

    #[test]
    fn packed_misaligned_m128_raises_gp() {
        for code in [
            Code::Mulpd_xmm_xmmm128,
            Code::Cmpps_xmm_xmmm128_imm8,
            Code::Haddps_xmm_xmmm128,
            Code::Dppd_xmm_xmmm128_imm8,
            Code::Roundps_xmm_xmmm128_imm8,
            Code::Cvtpd2ps_xmm_xmmm128,
            Code::Cvttpd2dq_xmm_xmmm128,
            Code::Cvtdq2ps_xmm_xmmm128,
            Code::Sqrtps_xmm_xmmm128,
            Code::Rcpps_xmm_xmmm128,
        ] {
            let i = ins(code, &[Op::X(0), Op::M, Op::Imm(0)]);
            let im = img(ONES_PS, ONES_PS, 0x1F80);
            expect_fault_with(&i, &im, Exception::GeneralProtection(0), 0x1F80, |c| {
                c.gpr[7] += 8
            });
        }
        let i = ins(Code::Cvtpd2pi_mm_xmmm128, &[Op::Mm(0), Op::M]);
        let im = img(ONES_PS, ONES_PS, 0x1F80);
        expect_fault_with(&i, &im, Exception::GeneralProtection(0), 0x1F80, |c| {
            c.gpr[7] += 4
        });
    }

    #[test]
    fn scalar_and_m64_misaligned_operands_do_not_fault() {
        for code in [
            Code::Addss_xmm_xmmm32,
            Code::Divsd_xmm_xmmm64,
            Code::Comisd_xmm_xmmm64,
            Code::Cvtps2pd_xmm_xmmm64,
            Code::Cvtdq2pd_xmm_xmmm64,
            Code::Roundsd_xmm_xmmm64_imm8,
        ] {
            let i = ins(code, &[Op::X(0), Op::M, Op::Imm(4)]);
            let im = img(ONES_PS, ONES_PS, 0x1F80);
            let (fault, _) = guest_fault(&i, &im, |c| c.gpr[7] += 3);
            assert_eq!(fault, None, "{i}");
        }
    }

    #[test]
    fn cvtpi2ps_mm_source_with_pending_x87_exception_raises_mf() {
        let i = ins(Code::Cvtpi2ps_xmm_mmm64, &[Op::X(0), Op::Mm(1)]);
        let im = img(ONES_PS, ONES_PS, 0x1F80);
        let pending = |c: &mut CpuState| c.fpu.sw |= x86bt_cpu::fpu::sw::ES;
        expect_fault_with(&i, &im, Exception::FpuError, 0x1F80, pending);
        // The memory form does not touch the x87 state (SDM CVTPI2PS).
        let i = ins(Code::Cvtpi2ps_xmm_mmm64, &[Op::X(0), Op::M]);
        let (fault, _) = guest_fault(&i, &im, pending);
        assert_eq!(fault, None);
        let i = ins(Code::Cvtps2pi_mm_xmmm64, &[Op::Mm(0), Op::X(1)]);
        expect_fault_with(&i, &im, Exception::FpuError, 0x1F80, pending);
    }

    #[test]
    fn addps_unmasked_invalid_on_snan_raises_xm_and_keeps_destination() {
        // Lane 2 of the source is an SNaN; IE unmasked.
        let src = ONES_PS & !(0xFFFF_FFFFu128 << 64) | 0x7F80_0001u128 << 64;
        let i = ins(Code::Addps_xmm_xmmm128, &[Op::X(0), Op::X(1)]);
        let im = img(ONES_PS, src, csr(IE));
        expect_fault(&i, &im, Exception::SimdFloat, csr(IE) | IE);
        // Without CR4.OSXMMEXCPT the same exception is #UD (SDM vol. 3A
        // §13.1 / ADDPS "SIMD Floating-Point Exceptions").
        expect_fault_with(&i, &im, Exception::InvalidOpcode, csr(IE) | IE, |c| {
            c.cr4 &= !cr4::OSXMMEXCPT
        });
        // Masked, the lane is the quieted SNaN and the rest 2.0.
        let done = guest_run(&i, &img(ONES_PS, src, 0x1F80)).expect("masked");
        assert_eq!(done.xmm[0], 0x4000_0000_7FC0_0001_4000_0000_4000_0000);
        assert_eq!(done.mxcsr, 0x1F80 | IE);
    }

    #[test]
    fn divps_unmasked_invalid_sets_only_precomputation_flags() {
        // Lane 0: 0/0 (invalid, unmasked); lane 1: 2^127 / 2^-126 overflows
        // (masked); lane 2: 1/0 (divide by zero, masked); lane 3: 1/3
        // (inexact). The computation stops at the pre-computation step: IE
        // and ZE are set, OE and PE are not (SDM vol. 1 §11.5.1).
        let a = 0x3F80_0000_3F80_0000_7F00_0000_0000_0000u128;
        let b = 0x4040_0000_0000_0000_0080_0000_0000_0000u128;
        let i = ins(Code::Divps_xmm_xmmm128, &[Op::X(0), Op::X(1)]);
        expect_fault(
            &i,
            &img(a, b, csr(IE)),
            Exception::SimdFloat,
            csr(IE) | IE | ZE,
        );
        // With everything masked all four flags are set and the results
        // written: default NaN, +inf (overflow, nearest), +inf, 1/3.
        let done = guest_run(&i, &img(a, b, 0x1F80)).expect("masked");
        assert_eq!(done.xmm[0], 0x3EAA_AAAB_7F80_0000_7F80_0000_FFC0_0000);
        assert_eq!(done.mxcsr, 0x1F80 | IE | ZE | OE | PE);
    }

    #[test]
    fn mulps_unmasked_overflow_raises_xm_with_oe_and_pe() {
        // Lane 1: 2^127 * 3 = 1.5 * 2^128: exact with an unbounded exponent,
        // so OE alone; lane 2: (2 - 2^-23) * 2^127 * (1 + 2^-23): inexact, PE
        // too (SDM: PE only for a loss of accuracy with unbounded exponent).
        let a = 0x7F7F_FFFF_7F00_0000_0000_0000u128;
        let b = 0x3F80_0001_4040_0000_0000_0000u128;
        let i = ins(Code::Mulps_xmm_xmmm128, &[Op::X(0), Op::X(1)]);
        expect_fault(
            &i,
            &img(a, b, csr(OE)),
            Exception::SimdFloat,
            csr(OE) | OE | PE,
        );
        let a1 = a & !(0xFFFF_FFFFu128 << 64);
        expect_fault(&i, &img(a1, b, csr(OE)), Exception::SimdFloat, csr(OE) | OE);
    }

    #[test]
    fn mulss_unmasked_underflow_on_exact_tiny_result_raises_xm() {
        // 2^-100 * 2^-30 = 2^-130: tiny and exact. Masked: a denormal, no
        // flag at all (underflow needs inexactness when masked); unmasked:
        // UE and #XM (SDM vol. 1 §11.5.2.5).
        let a = 0x0D80_0000u128; // 2^-100
        let b = 0x3080_0000u128; // 2^-30
        let i = ins(Code::Mulss_xmm_xmmm32, &[Op::X(0), Op::X(1)]);
        let done = guest_run(&i, &img(a, b, 0x1F80)).expect("masked");
        assert_eq!(done.xmm[0], 0x0008_0000);
        assert_eq!(done.mxcsr, 0x1F80);
        expect_fault(&i, &img(a, b, csr(UE)), Exception::SimdFloat, csr(UE) | UE);
        // FTZ with UE masked: zero, UE and PE.
        let done = guest_run(&i, &img(a, b, 0x9F80)).expect("ftz");
        assert_eq!(done.xmm[0], 0);
        assert_eq!(done.mxcsr, 0x9F80 | UE | PE);
        // FTZ does not apply when UE is unmasked.
        expect_fault(
            &i,
            &img(a, b, csr(UE) | 0x8000),
            Exception::SimdFloat,
            csr(UE) | 0x8000 | UE,
        );
    }

    #[test]
    fn addsd_unmasked_precision_raises_xm_and_keeps_destination() {
        // 1 + 2^-60 is inexact.
        let a = 0x3FF0_0000_0000_0000u128;
        let b = 0x3C30_0000_0000_0000u128;
        let i = ins(Code::Addsd_xmm_xmmm64, &[Op::X(0), Op::X(1)]);
        expect_fault(&i, &img(a, b, csr(PE)), Exception::SimdFloat, csr(PE) | PE);
    }

    #[test]
    fn addss_unmasked_denormal_raises_xm_unless_daz() {
        let a = 0x3F80_0000u128;
        let b = 0x0000_0001u128;
        let i = ins(Code::Addss_xmm_xmmm32, &[Op::X(0), Op::X(1)]);
        // DE is a pre-computation exception: the (inexact) sum never happens,
        // so PE stays clear.
        expect_fault(&i, &img(a, b, csr(DE)), Exception::SimdFloat, csr(DE) | DE);
        // DAZ reads the denormal as zero: no DE, the exact sum 1.0.
        let done = guest_run(&i, &img(a, b, csr(DE) | 0x40)).expect("daz");
        assert_eq!(done.xmm[0], 0x3F80_0000);
        assert_eq!(done.mxcsr, csr(DE) | 0x40);
    }

    #[test]
    fn divss_unmasked_divide_by_zero_raises_xm() {
        let i = ins(Code::Divss_xmm_xmmm32, &[Op::X(0), Op::X(1)]);
        expect_fault(
            &i,
            &img(0x3F80_0000, 0x8000_0000, csr(ZE)),
            Exception::SimdFloat,
            csr(ZE) | ZE,
        );
    }

    #[test]
    fn comiss_unmasked_invalid_on_qnan_keeps_eflags() {
        // COMISS signals IE on a QNaN, UCOMISS only on an SNaN.
        let i = ins(Code::Comiss_xmm_xmmm32, &[Op::X(0), Op::X(1)]);
        expect_fault(
            &i,
            &img(0x7FC0_0000, 0x3F80_0000, csr(IE)),
            Exception::SimdFloat,
            csr(IE) | IE,
        );
        let u = ins(Code::Ucomiss_xmm_xmmm32, &[Op::X(0), Op::X(1)]);
        let done = guest_run(&u, &img(0x7FC0_0000, 0x3F80_0000, csr(IE))).expect("quiet");
        // Unordered: ZF, PF, CF set; OF, SF, AF clear.
        assert_eq!(done.flags, 0x45);
        assert_eq!(done.mxcsr, csr(IE));
        expect_fault(
            &u,
            &img(0x7F80_0001, 0x3F80_0000, csr(IE)),
            Exception::SimdFloat,
            csr(IE) | IE,
        );
    }

    #[test]
    fn cvtsd2si_unmasked_invalid_keeps_destination_register() {
        // 2^31 does not fit: IE; masked it gives the integer indefinite.
        let i = ins(
            Code::Cvtsd2si_r32_xmmm64,
            &[Op::R(iced_x86::Register::EAX), Op::X(1)],
        );
        let big = 0x41E0_0000_0000_0000u128;
        expect_fault(
            &i,
            &img(0, big, csr(IE)),
            Exception::SimdFloat,
            csr(IE) | IE,
        );
        let done = guest_run(&i, &img(0, big, 0x1F80)).expect("masked");
        assert_eq!(done.gpr[0], 0x8000_0000);
        assert_eq!(done.mxcsr, 0x1F80 | IE);
    }

    #[test]
    fn cvtpd2ps_unmasked_overflow_keeps_destination() {
        // 2^200 overflows a single.
        let i = ins(Code::Cvtpd2ps_xmm_xmmm128, &[Op::X(0), Op::X(1)]);
        let v = 0x4C70_0000_0000_0000u128;
        expect_fault(
            &i,
            &img(ONES_PS, v, csr(OE)),
            Exception::SimdFloat,
            csr(OE) | OE,
        );
    }

    #[test]
    fn roundss_precision_suppressed_by_imm8_bit3() {
        // 1.5 rounded to nearest even is 2.0, inexact: with imm8[3] no PE and
        // so no #XM even with PE unmasked.
        let i = ins(
            Code::Roundss_xmm_xmmm32_imm8,
            &[Op::X(0), Op::X(1), Op::Imm(8)],
        );
        let done = guest_run(&i, &img(0, 0x3FC0_0000, csr(PE))).expect("suppressed");
        assert_eq!(done.xmm[0], 0x4000_0000);
        assert_eq!(done.mxcsr, csr(PE));
        let i = ins(
            Code::Roundss_xmm_xmmm32_imm8,
            &[Op::X(0), Op::X(1), Op::Imm(0)],
        );
        expect_fault(
            &i,
            &img(0, 0x3FC0_0000, csr(PE)),
            Exception::SimdFloat,
            csr(PE) | PE,
        );
    }
}

// ---------------------------------------------------------------------------
// The 64-bit GPR conversions' numeric core (`soft::to_int` /
// `soft::from_int` at 64 bits, shared with the 32-bit forms), compared with
// the host running the 64-bit instruction under the 16 MXCSR modes. The whole
// instructions run in a 64-bit guest in tests/sse_long.rs.
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
#[test]
fn convert_64bit_integer_forms_match_host() {
    use x86bt_cpu::interp::sse::float::soft::{self, Ctx, F32, F64};
    let mut rng = Rng(0x6464);
    let rax = Op::R(Register::RAX);
    for n in 0..4000 {
        let mut img = image(&mut rng, if n % 2 == 0 { Kind::S } else { Kind::D }, n % 16);
        // Float to int64.
        let (code, x, single) = match n % 4 {
            0 => (
                Code::Cvtss2si_r64_xmmm32,
                img.xmm[1] as u64 & 0xFFFF_FFFF,
                true,
            ),
            1 => (Code::Cvttsd2si_r64_xmmm64, img.xmm[1] as u64, false),
            2 => (
                Code::Cvttss2si_r64_xmmm32,
                img.xmm[1] as u64 & 0xFFFF_FFFF,
                true,
            ),
            _ => (Code::Cvtsd2si_r64_xmmm64, img.xmm[1] as u64, false),
        };
        let truncate = matches!(n % 4, 1 | 2);
        let host = host_run(&ins(code, &[rax, Op::X(1)]), &img);
        let mut c = Ctx::new(img.mxcsr);
        let got = if single {
            soft::to_int::<F32>(&mut c, x, 64, truncate)
        } else {
            soft::to_int::<F64>(&mut c, x, 64, truncate)
        };
        assert_eq!(
            (got, img.mxcsr | c.flags),
            (host.gpr[0], host.mxcsr),
            "{code:?} {x:#x} mxcsr {:#x}",
            img.mxcsr
        );
        // Int64 to float.
        let r = rng.next();
        let v = match r % 5 {
            0 => [i64::MIN, i64::MAX, (1 << 53) + 1, -(1 << 24) - 1, 0, -1][(r >> 8) as usize % 6],
            _ => (rng.next() as i64) >> ((r >> 8) % 64),
        };
        img.gpr[0] = v as u64;
        for (code, single) in [
            (Code::Cvtsi2ss_xmm_rm64, true),
            (Code::Cvtsi2sd_xmm_rm64, false),
        ] {
            let host = host_run(&ins(code, &[Op::X(0), rax]), &img);
            let mut c = Ctx::new(img.mxcsr);
            let (got, mask) = if single {
                (soft::from_int::<F32>(&mut c, v), 0xFFFF_FFFFu128)
            } else {
                (soft::from_int::<F64>(&mut c, v), u128::from(u64::MAX))
            };
            assert_eq!(
                (u128::from(got), img.mxcsr | c.flags),
                (host.xmm[0] & mask, host.mxcsr),
                "{code:?} {v:#x} mxcsr {:#x}",
                img.mxcsr
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn mulss_tiny_result_rounding_to_smallest_normal_flags_underflow_as_host() {
    // (1 - 2^-24) * 2^-126 is tiny with an unbounded exponent (tininess after
    // rounding, SDM vol. 1 §4.9.1.5) although rounding it to the denormal
    // format gives 2^-126 under round-to-nearest; (1 + 2^-23) * (1 - 2^-24)
    // * 2^-126 is not tiny. Every rounding mode, with and without FTZ.
    let i = ins(Code::Mulss_xmm_xmmm32, &[Op::X(0), Op::X(1)]);
    for (a, b) in [
        (0x3F7F_FFFFu128, 0x0080_0000u128),
        (0x3F7F_FFFF, 0x0080_0001),
        (0x3F7F_FFFE, 0x0080_0001),
        (0xBF7F_FFFF, 0x0080_0000),
    ] {
        for config in 0..16 {
            let mut rng = Rng(1);
            let mut img = image(&mut rng, Kind::S, config);
            img.mxcsr &= !0x3F;
            img.xmm[0] = a;
            img.xmm[1] = b;
            check(&i, &img);
        }
    }
    // The first case on the host, round to nearest, no FTZ: the denormal
    // rounding reaches 2^-126, and UE and PE are set all the same.
    let img = Image {
        xmm: [0x3F7F_FFFF, 0x0080_0000, 0, 0, 0, 0, 0, 0],
        ..Image::default()
    };
    let host = host_run(&i, &img);
    assert_eq!(host.xmm[0], 0x0080_0000);
    assert_eq!(host.mxcsr, 0x1F80 | 0x30);
}

// ---------------------------------------------------------------------------
// The software path of ADD/SUB/MUL/DIV/MIN/MAX/SQRT (`soft`), compared with
// the host lane by lane. On an x86-64 host the interpreter runs these
// instructions on the host's own SSE unit (`float::host`), so the tests above
// check that path; this one keeps `soft`, which other hosts and the unmasked
// exceptions use, checked against the same oracle.
// ---------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
#[test]
fn soft_arith_lanes_match_host() {
    use x86bt_cpu::interp::sse::float::soft::{self, Ctx, Fmt, Op as SoftOp, F32, F64};
    fn lane<F: Fmt>(c: &mut Ctx, code: Code, a: u64, b: u64) -> u64 {
        use Code::*;
        match code {
            Addps_xmm_xmmm128 | Addpd_xmm_xmmm128 => soft::arith::<F>(c, SoftOp::Add, a, b),
            Subps_xmm_xmmm128 | Subpd_xmm_xmmm128 => soft::arith::<F>(c, SoftOp::Sub, a, b),
            Mulps_xmm_xmmm128 | Mulpd_xmm_xmmm128 => soft::arith::<F>(c, SoftOp::Mul, a, b),
            Divps_xmm_xmmm128 | Divpd_xmm_xmmm128 => soft::arith::<F>(c, SoftOp::Div, a, b),
            Minps_xmm_xmmm128 | Minpd_xmm_xmmm128 => soft::minmax::<F>(c, a, b, false),
            Maxps_xmm_xmmm128 | Maxpd_xmm_xmmm128 => soft::minmax::<F>(c, a, b, true),
            _ => soft::sqrt::<F>(c, b),
        }
    }
    let mut rng = Rng(0x50F7);
    for (codes, kind) in [
        (
            [
                Code::Addps_xmm_xmmm128,
                Code::Subps_xmm_xmmm128,
                Code::Mulps_xmm_xmmm128,
                Code::Divps_xmm_xmmm128,
                Code::Minps_xmm_xmmm128,
                Code::Maxps_xmm_xmmm128,
                Code::Sqrtps_xmm_xmmm128,
            ],
            Kind::S,
        ),
        (
            [
                Code::Addpd_xmm_xmmm128,
                Code::Subpd_xmm_xmmm128,
                Code::Mulpd_xmm_xmmm128,
                Code::Divpd_xmm_xmmm128,
                Code::Minpd_xmm_xmmm128,
                Code::Maxpd_xmm_xmmm128,
                Code::Sqrtpd_xmm_xmmm128,
            ],
            Kind::D,
        ),
    ] {
        for code in codes {
            for config in 0..16 {
                for _ in 0..N {
                    let img = image(&mut rng, kind, config);
                    let host = host_run(&ins(code, XX), &img);
                    let (a, b) = (img.xmm[0], img.xmm[1]);
                    let mut c = Ctx::new(img.mxcsr);
                    let w = if kind == Kind::S { 32 } else { 64 };
                    let m = if w == 32 { 0xFFFF_FFFF } else { u64::MAX };
                    let mut r = 0u128;
                    for i in 0..128 / w {
                        let (x, y) = ((a >> (i * w)) as u64 & m, (b >> (i * w)) as u64 & m);
                        let v = if w == 32 {
                            lane::<F32>(&mut c, code, x, y)
                        } else {
                            lane::<F64>(&mut c, code, x, y)
                        };
                        r |= u128::from(v & m) << (i * w);
                    }
                    assert_eq!(
                        (r, img.mxcsr | c.flags),
                        (host.xmm[0], host.mxcsr),
                        "{code:?} a {a:#x} b {b:#x} mxcsr {:#x}",
                        img.mxcsr
                    );
                }
            }
        }
    }
}
