//! SSE/SSE2/SSE3/SSE4.1 floating-point instructions, bit-exact under MXCSR.
//!
//! Arithmetic (ADD/SUB/MUL/DIV/SQRT/MIN/MAX, PS/PD/SS/SD), the approximations
//! RCPPS/RCPSS/RSQRTPS/RSQRTSS, compares (CMPccPS/PD/SS/SD, COMIS/UCOMIS),
//! ADDSUB, HADD/HSUB, DPPS/DPPD, ROUNDPS/PD/SS/SD and every conversion between
//! singles, doubles and integers. The numbers are done in [`soft`] (apfloat,
//! no host floating point), the approximations in [`approx`]; on an x86-64
//! host, ADD/SUB/MUL/DIV/MIN/MAX/SQRT run on the host's own SSE unit under
//! the guest's MXCSR ([`host`]), which gives the same result and flags, and
//! fall back to `soft` when an unmasked exception must be raised.
//!
//! Exceptions (SDM vol. 1 §11.5.1): every lane is computed and the flags of all
//! lanes gathered. If an unmasked pre-computation exception (IE, DE, ZE) was
//! detected in any lane, only the pre-computation flags are set and nothing is
//! computed further; otherwise all flags are set. Either way an unmasked flag
//! raises #XM (CR4.OSXMMEXCPT) or #UD through `raise_simd` and leaves the
//! destination unchanged; masked ones let the result be written.
//!
//! The forms with an MMX register (CVTPI2PS/PD xmm, mm; CVTPS2PI, CVTTPS2PI,
//! CVTPD2PI, CVTTPD2PI) add the MMX checks (#MF for a pending x87 exception)
//! to the SSE ones and make the x87-to-MMX transition when they complete;
//! CVTPI2PS/PD with a memory source do neither (SDM CVTPI2PS "Operation").

mod approx;
pub mod host;
/// Public so that the tests can compare the 64-bit GPR conversions, which the
/// 32-bit oracle cannot run, with the host.
pub mod soft;

use self::soft::{Ctx, Fmt, Op, F32, F64};
use super::super::{Exec, Handler, Insn};
use super::mxcsr::{DE, FLAGS, IE, ZE};
use super::{
    check_mmx, check_sse, mm_index, mmx_enter, mxcsr, raise_simd, set_mm, set_xmm, src_mm, src_xmm,
    xmm, xmm_index,
};
use crate::interp::ops::{read_op, write_op};
use crate::state::{flags as fl, CpuState};
use iced_x86::{Code, Instruction, OpKind};
use std::cmp::Ordering;
use x86bt_machine::Machine;

/// The handler for `ins` if it belongs to this family.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    use Code::*;
    let h: Handler = match ins.code() {
        Addps_xmm_xmmm128 => bin_p::<F32, ADD>,
        Addpd_xmm_xmmm128 => bin_p::<F64, ADD>,
        Addss_xmm_xmmm32 => bin_s::<F32, ADD>,
        Addsd_xmm_xmmm64 => bin_s::<F64, ADD>,
        Subps_xmm_xmmm128 => bin_p::<F32, SUB>,
        Subpd_xmm_xmmm128 => bin_p::<F64, SUB>,
        Subss_xmm_xmmm32 => bin_s::<F32, SUB>,
        Subsd_xmm_xmmm64 => bin_s::<F64, SUB>,
        Mulps_xmm_xmmm128 => bin_p::<F32, MUL>,
        Mulpd_xmm_xmmm128 => bin_p::<F64, MUL>,
        Mulss_xmm_xmmm32 => bin_s::<F32, MUL>,
        Mulsd_xmm_xmmm64 => bin_s::<F64, MUL>,
        Divps_xmm_xmmm128 => bin_p::<F32, DIV>,
        Divpd_xmm_xmmm128 => bin_p::<F64, DIV>,
        Divss_xmm_xmmm32 => bin_s::<F32, DIV>,
        Divsd_xmm_xmmm64 => bin_s::<F64, DIV>,
        Minps_xmm_xmmm128 => bin_p::<F32, MIN>,
        Minpd_xmm_xmmm128 => bin_p::<F64, MIN>,
        Minss_xmm_xmmm32 => bin_s::<F32, MIN>,
        Minsd_xmm_xmmm64 => bin_s::<F64, MIN>,
        Maxps_xmm_xmmm128 => bin_p::<F32, MAX>,
        Maxpd_xmm_xmmm128 => bin_p::<F64, MAX>,
        Maxss_xmm_xmmm32 => bin_s::<F32, MAX>,
        Maxsd_xmm_xmmm64 => bin_s::<F64, MAX>,
        Sqrtps_xmm_xmmm128 => un_p::<F32, SQRT>,
        Sqrtpd_xmm_xmmm128 => un_p::<F64, SQRT>,
        Sqrtss_xmm_xmmm32 => un_s::<F32, SQRT>,
        Sqrtsd_xmm_xmmm64 => un_s::<F64, SQRT>,
        Rcpps_xmm_xmmm128 => un_p::<F32, RCP>,
        Rcpss_xmm_xmmm32 => un_s::<F32, RCP>,
        Rsqrtps_xmm_xmmm128 => un_p::<F32, RSQRT>,
        Rsqrtss_xmm_xmmm32 => un_s::<F32, RSQRT>,
        Roundps_xmm_xmmm128_imm8 => un_p::<F32, ROUND>,
        Roundpd_xmm_xmmm128_imm8 => un_p::<F64, ROUND>,
        Roundss_xmm_xmmm32_imm8 => un_s::<F32, ROUND>,
        Roundsd_xmm_xmmm64_imm8 => un_s::<F64, ROUND>,
        Cmpps_xmm_xmmm128_imm8 => bin_p::<F32, CMP>,
        Cmppd_xmm_xmmm128_imm8 => bin_p::<F64, CMP>,
        Cmpss_xmm_xmmm32_imm8 => bin_s::<F32, CMP>,
        Cmpsd_xmm_xmmm64_imm8 => bin_s::<F64, CMP>,
        Comiss_xmm_xmmm32 => comi::<F32, true>,
        Comisd_xmm_xmmm64 => comi::<F64, true>,
        Ucomiss_xmm_xmmm32 => comi::<F32, false>,
        Ucomisd_xmm_xmmm64 => comi::<F64, false>,
        Addsubps_xmm_xmmm128 => addsub::<F32>,
        Addsubpd_xmm_xmmm128 => addsub::<F64>,
        Haddps_xmm_xmmm128 => horizontal::<F32, ADD>,
        Haddpd_xmm_xmmm128 => horizontal::<F64, ADD>,
        Hsubps_xmm_xmmm128 => horizontal::<F32, SUB>,
        Hsubpd_xmm_xmmm128 => horizontal::<F64, SUB>,
        Dpps_xmm_xmmm128_imm8 => dot::<F32>,
        Dppd_xmm_xmmm128_imm8 => dot::<F64>,
        Cvtss2sd_xmm_xmmm32 => cvt_s::<F32, F64>,
        Cvtsd2ss_xmm_xmmm64 => cvt_s::<F64, F32>,
        Cvtps2pd_xmm_xmmm64 => cvtps2pd,
        Cvtpd2ps_xmm_xmmm128 => cvtpd2ps,
        Cvtsi2ss_xmm_rm32 | Cvtsi2ss_xmm_rm64 => cvtsi2s::<F32>,
        Cvtsi2sd_xmm_rm32 | Cvtsi2sd_xmm_rm64 => cvtsi2s::<F64>,
        Cvtss2si_r32_xmmm32 | Cvtss2si_r64_xmmm32 => cvts2si::<F32, false>,
        Cvttss2si_r32_xmmm32 | Cvttss2si_r64_xmmm32 => cvts2si::<F32, true>,
        Cvtsd2si_r32_xmmm64 | Cvtsd2si_r64_xmmm64 => cvts2si::<F64, false>,
        Cvttsd2si_r32_xmmm64 | Cvttsd2si_r64_xmmm64 => cvts2si::<F64, true>,
        Cvtdq2ps_xmm_xmmm128 => cvtdq2ps,
        Cvtps2dq_xmm_xmmm128 => cvtps2dq::<false>,
        Cvttps2dq_xmm_xmmm128 => cvtps2dq::<true>,
        Cvtdq2pd_xmm_xmmm64 => cvtdq2pd,
        Cvtpd2dq_xmm_xmmm128 => cvtpd2dq::<false>,
        Cvttpd2dq_xmm_xmmm128 => cvtpd2dq::<true>,
        Cvtpi2ps_xmm_mmm64 => cvtpi2ps,
        Cvtpi2pd_xmm_mmm64 => cvtpi2pd,
        Cvtps2pi_mm_xmmm64 => cvtps2pi::<false>,
        Cvttps2pi_mm_xmmm64 => cvtps2pi::<true>,
        Cvtpd2pi_mm_xmmm128 => cvtpd2pi::<false>,
        Cvttpd2pi_mm_xmmm128 => cvtpd2pi::<true>,
        _ => return None,
    };
    Some(h)
}

// Two-operand operations.
const ADD: u8 = 0;
const SUB: u8 = 1;
const MUL: u8 = 2;
const DIV: u8 = 3;
const MIN: u8 = 4;
const MAX: u8 = 5;
const CMP: u8 = 6;
// One-operand operations.
const SQRT: u8 = 0;
const RCP: u8 = 1;
const RSQRT: u8 = 2;
const ROUND: u8 = 3;

/// Lane width in bits of `F`.
#[inline]
fn width<F: Fmt>() -> u32 {
    if F::FRAC == 23 {
        32
    } else {
        64
    }
}

/// Lane `i` of `v`, `w` bits wide.
#[inline]
fn get(v: u128, i: u32, w: u32) -> u64 {
    let m = if w == 64 { u64::MAX } else { (1 << w) - 1 };
    (v >> (i * w)) as u64 & m
}

/// `v` with lane `i` (`w` bits wide) replaced by `x`.
#[inline]
fn put(v: u128, i: u32, w: u32, x: u64) -> u128 {
    let m = (if w == 64 { u64::MAX } else { (1 << w) - 1 }) as u128;
    (v & !(m << (i * w))) | ((x as u128 & m) << (i * w))
}

/// Sets the flags `c` gathered and raises what they call for: only the
/// pre-computation flags when one of those is unmasked (the computation never
/// happened), else all of them.
fn signal(cpu: &mut CpuState, c: &Ctx) -> Exec {
    let unmasked = c.flags & !(c.csr >> 7) & FLAGS;
    let pre = IE | DE | ZE;
    let flags = if unmasked & pre != 0 {
        c.flags & pre
    } else {
        c.flags
    };
    raise_simd(cpu, flags)
}

/// The XMM destination (operand 0).
#[inline]
fn dst(insn: &Insn) -> usize {
    xmm_index(insn.ins.op_register(0))
}

/// The imm8 (operand 2) of the forms that have one.
#[inline]
fn imm8(insn: &Insn) -> u8 {
    insn.ins.immediate8()
}

/// The host form of operation `op` (a two-operand code, or SQRT with
/// `unary`), if it has one ([`host`]).
#[inline]
fn host_op(op: u8, unary: bool) -> Option<host::HostOp> {
    use host::HostOp::*;
    Some(match (op, unary) {
        (ADD, false) => Add,
        (SUB, false) => Sub,
        (MUL, false) => Mul,
        (DIV, false) => Div,
        (MIN, false) => Min,
        (MAX, false) => Max,
        (SQRT, true) => Sqrt,
        _ => return None,
    })
}

/// Runs the instruction on the host where it can ([`host`]): the new value of
/// destination `d` (old value `a`, source `b`) with its flags signalled.
/// `None`: the software path must run it.
#[inline]
fn on_host<F: Fmt>(
    cpu: &mut CpuState,
    (op, unary): (u8, bool),
    packed: bool,
    d: usize,
    a: u128,
    b: u128,
) -> Option<Exec> {
    let op = host_op(op, unary)?;
    let form = match (packed, width::<F>() == 32) {
        (true, true) => host::Form::Ps,
        (true, false) => host::Form::Pd,
        (false, true) => host::Form::Ss,
        (false, false) => host::Form::Sd,
    };
    let (r, flags) = host::run(op, form, a, b, mxcsr(cpu))?;
    Some(raise_simd(cpu, flags).map(|()| set_xmm(cpu, d, r)))
}

/// A two-operand operation on one lane.
#[inline]
fn bin<F: Fmt>(c: &mut Ctx, op: u8, imm: u8, a: u64, b: u64) -> u64 {
    match op {
        ADD => soft::arith::<F>(c, Op::Add, a, b),
        SUB => soft::arith::<F>(c, Op::Sub, a, b),
        MUL => soft::arith::<F>(c, Op::Mul, a, b),
        DIV => soft::arith::<F>(c, Op::Div, a, b),
        MIN => soft::minmax::<F>(c, a, b, false),
        MAX => soft::minmax::<F>(c, a, b, true),
        _ => {
            if soft::cmp_pred::<F>(c, a, b, imm) {
                u64::MAX
            } else {
                0
            }
        }
    }
}

/// A one-operand operation on one lane.
#[inline]
fn un<F: Fmt>(c: &mut Ctx, op: u8, imm: u8, a: u64) -> u64 {
    match op {
        SQRT => soft::sqrt::<F>(c, a),
        RCP => u64::from(approx::rcp(a as u32)),
        RSQRT => u64::from(approx::rsqrt(a as u32)),
        _ => soft::round_int::<F>(c, a, imm),
    }
}

/// The packed form of a two-operand operation: xmm, xmm/m128 (aligned).
fn bin_p<F: Fmt, const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let a = xmm(cpu, d);
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    if let Some(done) = on_host::<F>(cpu, (OP, false), true, d, a, b) {
        return done;
    }
    let imm = if OP == CMP { imm8(insn) } else { 0 };
    let mut c = Ctx::new(mxcsr(cpu));
    let w = width::<F>();
    let mut r = 0;
    for i in 0..128 / w {
        r = put(
            r,
            i,
            w,
            bin::<F>(&mut c, OP, imm, get(a, i, w), get(b, i, w)),
        );
    }
    signal(cpu, &c)?;
    set_xmm(cpu, d, r);
    Ok(())
}

/// The scalar form of a two-operand operation: the low lane, the rest of the
/// destination kept.
fn bin_s<F: Fmt, const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let w = width::<F>();
    let a = xmm(cpu, d);
    let b = src_xmm(cpu, m, insn, 1, w as usize / 8, false)?;
    if let Some(done) = on_host::<F>(cpu, (OP, false), false, d, a, b) {
        return done;
    }
    let imm = if OP == CMP { imm8(insn) } else { 0 };
    let mut c = Ctx::new(mxcsr(cpu));
    let r = bin::<F>(&mut c, OP, imm, get(a, 0, w), get(b, 0, w));
    signal(cpu, &c)?;
    set_xmm(cpu, d, put(a, 0, w, r));
    Ok(())
}

/// The packed form of a one-operand operation: xmm, xmm/m128 (aligned).
fn un_p<F: Fmt, const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    if let Some(done) = on_host::<F>(cpu, (OP, true), true, d, 0, b) {
        return done;
    }
    let imm = if OP == ROUND { imm8(insn) } else { 0 };
    let mut c = Ctx::new(mxcsr(cpu));
    let w = width::<F>();
    let mut r = 0;
    for i in 0..128 / w {
        r = put(r, i, w, un::<F>(&mut c, OP, imm, get(b, i, w)));
    }
    signal(cpu, &c)?;
    set_xmm(cpu, d, r);
    Ok(())
}

/// The scalar form of a one-operand operation: the source's low lane into the
/// destination's, the rest of the destination kept.
fn un_s<F: Fmt, const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let w = width::<F>();
    let b = src_xmm(cpu, m, insn, 1, w as usize / 8, false)?;
    let old = xmm(cpu, d);
    if let Some(done) = on_host::<F>(cpu, (OP, true), false, d, old, b) {
        return done;
    }
    let imm = if OP == ROUND { imm8(insn) } else { 0 };
    let mut c = Ctx::new(mxcsr(cpu));
    let r = un::<F>(&mut c, OP, imm, get(b, 0, w));
    signal(cpu, &c)?;
    let a = xmm(cpu, d);
    set_xmm(cpu, d, put(a, 0, w, r));
    Ok(())
}

/// COMISS/UCOMISS/COMISD/UCOMISD: ZF, PF, CF from the compare (unordered 111,
/// greater 000, less 001, equal 100); OF, SF, AF cleared. COMIS signals IE on
/// a QNaN too.
fn comi<F: Fmt, const SIGNALING: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let w = width::<F>();
    let a = get(xmm(cpu, dst(insn)), 0, w);
    let b = get(src_xmm(cpu, m, insn, 1, w as usize / 8, false)?, 0, w);
    let mut c = Ctx::new(mxcsr(cpu));
    let f = match soft::compare::<F>(&mut c, a, b, SIGNALING) {
        None => fl::ZF | fl::PF | fl::CF,
        Some(Ordering::Greater) => 0,
        Some(Ordering::Less) => fl::CF,
        Some(Ordering::Equal) => fl::ZF,
    };
    signal(cpu, &c)?;
    let all = fl::ZF | fl::PF | fl::CF | fl::OF | fl::SF | fl::AF;
    cpu.rflags = (cpu.rflags & !all) | f;
    Ok(())
}

/// ADDSUBPS/PD: even lanes subtract, odd lanes add.
fn addsub<F: Fmt>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let a = xmm(cpu, d);
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let w = width::<F>();
    let mut r = 0;
    for i in 0..128 / w {
        let op = if i & 1 == 0 { SUB } else { ADD };
        r = put(r, i, w, bin::<F>(&mut c, op, 0, get(a, i, w), get(b, i, w)));
    }
    signal(cpu, &c)?;
    set_xmm(cpu, d, r);
    Ok(())
}

/// HADDPS/PD, HSUBPS/PD: adjacent pairs of the destination, then of the
/// source, each lower element the first operand.
fn horizontal<F: Fmt, const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let a = xmm(cpu, d);
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let w = width::<F>();
    let half = 64 / w;
    let mut r = 0;
    for (k, v) in [a, b].into_iter().enumerate() {
        for j in 0..half {
            let x = bin::<F>(&mut c, OP, 0, get(v, 2 * j, w), get(v, 2 * j + 1, w));
            r = put(r, k as u32 * half + j, w, x);
        }
    }
    signal(cpu, &c)?;
    set_xmm(cpu, d, r);
    Ok(())
}

/// DPPS/DPPD (SDM DPPS "Operation"): the products of the lanes imm8[7:4]
/// selects (+0.0 for the others), summed pairwise with each step rounded, the
/// sum written to the lanes imm8[3:0] selects (+0.0 to the others).
///
/// Which operand of each addition is the first (so whose NaN wins) differs by
/// lane on hardware, as if the sums were two vector additions of the products
/// and a shuffle of them: s[i] = t[i^1] + t[i], then lane i = s[i] + s[i^2]
/// (doubles: lane i = t[i] + t[i^1]). That is the host's behaviour; the SDM's
/// pseudo-code (one tree for all lanes) does not show it.
fn dot<F: Fmt>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let a = xmm(cpu, d);
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let imm = imm8(insn);
    let mut c = Ctx::new(mxcsr(cpu));
    let w = width::<F>();
    let n = (128 / w) as usize;
    let mut t = [0u64; 4];
    for (i, ti) in t.iter_mut().enumerate().take(n) {
        if imm & (0x10 << i) != 0 {
            *ti = bin::<F>(&mut c, MUL, 0, get(a, i as u32, w), get(b, i as u32, w));
        }
    }
    let mut r = 0;
    for i in 0..n {
        // Every lane's tree raises the same flags, so one lane's are enough.
        let mut lane = Ctx::new(c.csr);
        let sum = if n == 4 {
            let own = bin::<F>(&mut lane, ADD, 0, t[i ^ 1], t[i]);
            let other = bin::<F>(&mut lane, ADD, 0, t[i ^ 3], t[i ^ 2]);
            bin::<F>(&mut lane, ADD, 0, own, other)
        } else {
            bin::<F>(&mut lane, ADD, 0, t[i], t[i ^ 1])
        };
        if i == 0 {
            c.flags |= lane.flags;
        }
        if imm & (1 << i) != 0 {
            r = put(r, i as u32, w, sum);
        }
    }
    signal(cpu, &c)?;
    set_xmm(cpu, d, r);
    Ok(())
}

/// CVTSS2SD/CVTSD2SS: the low lane converted, the rest of the destination kept.
fn cvt_s<F: Fmt, G: Fmt>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let d = dst(insn);
    let (wf, wg) = (width::<F>(), width::<G>());
    let b = src_xmm(cpu, m, insn, 1, wf as usize / 8, false)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let r = soft::convert::<F, G>(&mut c, get(b, 0, wf));
    signal(cpu, &c)?;
    let a = xmm(cpu, d);
    set_xmm(cpu, d, put(a, 0, wg, r));
    Ok(())
}

/// CVTPS2PD xmm, xmm/m64: two singles to two doubles.
fn cvtps2pd(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 8, false)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let lo = soft::convert::<F32, F64>(&mut c, get(b, 0, 32));
    let hi = soft::convert::<F32, F64>(&mut c, get(b, 1, 32));
    signal(cpu, &c)?;
    set_xmm(cpu, dst(insn), u128::from(lo) | u128::from(hi) << 64);
    Ok(())
}

/// CVTPD2PS xmm, xmm/m128: two doubles to the low two singles, the upper half
/// zeroed.
fn cvtpd2ps(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let lo = soft::convert::<F64, F32>(&mut c, get(b, 0, 64));
    let hi = soft::convert::<F64, F32>(&mut c, get(b, 1, 64));
    signal(cpu, &c)?;
    set_xmm(cpu, dst(insn), u128::from(lo) | u128::from(hi) << 32);
    Ok(())
}

/// CVTSI2SS/CVTSI2SD xmm, r/m32 or r/m64: the low lane, the rest kept.
fn cvtsi2s<F: Fmt>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let size = insn.size();
    let v = read_op(cpu, m, insn, 1, size)?;
    let v = if size == 8 {
        v as i64
    } else {
        i64::from(v as u32 as i32)
    };
    let mut c = Ctx::new(mxcsr(cpu));
    let r = soft::from_int::<F>(&mut c, v);
    signal(cpu, &c)?;
    let d = dst(insn);
    let a = xmm(cpu, d);
    set_xmm(cpu, d, put(a, 0, width::<F>(), r));
    Ok(())
}

/// CVTSS2SI/CVTTSS2SI/CVTSD2SI/CVTTSD2SI r32 or r64, xmm/m32 or m64.
fn cvts2si<F: Fmt, const TRUNCATE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let w = width::<F>();
    let size = insn.size();
    let b = src_xmm(cpu, m, insn, 1, w as usize / 8, false)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let r = soft::to_int::<F>(&mut c, get(b, 0, w), size * 8, TRUNCATE);
    signal(cpu, &c)?;
    write_op(cpu, m, insn, 0, size, r)
}

/// CVTDQ2PS xmm, xmm/m128.
fn cvtdq2ps(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let mut r = 0;
    for i in 0..4 {
        let v = i64::from(get(b, i, 32) as u32 as i32);
        r = put(r, i, 32, soft::from_int::<F32>(&mut c, v));
    }
    signal(cpu, &c)?;
    set_xmm(cpu, dst(insn), r);
    Ok(())
}

/// CVTPS2DQ/CVTTPS2DQ xmm, xmm/m128.
fn cvtps2dq<const TRUNCATE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let mut r = 0;
    for i in 0..4 {
        r = put(
            r,
            i,
            32,
            soft::to_int::<F32>(&mut c, get(b, i, 32), 32, TRUNCATE),
        );
    }
    signal(cpu, &c)?;
    set_xmm(cpu, dst(insn), r);
    Ok(())
}

/// CVTDQ2PD xmm, xmm/m64 (exact).
fn cvtdq2pd(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 8, false)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let mut r = 0;
    for i in 0..2 {
        let v = i64::from(get(b, i, 32) as u32 as i32);
        r = put(r, i, 64, soft::from_int::<F64>(&mut c, v));
    }
    signal(cpu, &c)?;
    set_xmm(cpu, dst(insn), r);
    Ok(())
}

/// CVTPD2DQ/CVTTPD2DQ xmm, xmm/m128: the low two doublewords, the upper half
/// zeroed.
fn cvtpd2dq<const TRUNCATE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let mut r = 0;
    for i in 0..2 {
        r = put(
            r,
            i,
            32,
            soft::to_int::<F64>(&mut c, get(b, i, 64), 32, TRUNCATE),
        );
    }
    signal(cpu, &c)?;
    set_xmm(cpu, dst(insn), r);
    Ok(())
}

/// Whether operand `i` is an MMX register.
fn is_mm(insn: &Insn, i: u32) -> bool {
    insn.ins.op_kind(i) == OpKind::Register && insn.ins.op_register(i).is_mm()
}

/// CVTPI2PS xmm, mm/m64: two doublewords to the low two singles, the upper half
/// kept.
fn cvtpi2ps(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let reg = is_mm(insn, 1);
    if reg {
        check_mmx(cpu)?;
    }
    let b = u128::from(src_mm(cpu, m, insn, 1)?);
    let mut c = Ctx::new(mxcsr(cpu));
    let d = dst(insn);
    let mut r = xmm(cpu, d);
    for i in 0..2 {
        let v = i64::from(get(b, i, 32) as u32 as i32);
        r = put(r, i, 32, soft::from_int::<F32>(&mut c, v));
    }
    signal(cpu, &c)?;
    if reg {
        mmx_enter(cpu);
    }
    set_xmm(cpu, d, r);
    Ok(())
}

/// CVTPI2PD xmm, mm/m64 (exact).
fn cvtpi2pd(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let reg = is_mm(insn, 1);
    if reg {
        check_mmx(cpu)?;
    }
    let b = u128::from(src_mm(cpu, m, insn, 1)?);
    let mut c = Ctx::new(mxcsr(cpu));
    let mut r = 0;
    for i in 0..2 {
        let v = i64::from(get(b, i, 32) as u32 as i32);
        r = put(r, i, 64, soft::from_int::<F64>(&mut c, v));
    }
    signal(cpu, &c)?;
    if reg {
        mmx_enter(cpu);
    }
    set_xmm(cpu, dst(insn), r);
    Ok(())
}

/// CVTPS2PI/CVTTPS2PI mm, xmm/m64.
fn cvtps2pi<const TRUNCATE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    check_mmx(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 8, false)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let mut r = 0;
    for i in 0..2 {
        r = put(
            r,
            i,
            32,
            soft::to_int::<F32>(&mut c, get(b, i, 32), 32, TRUNCATE),
        );
    }
    signal(cpu, &c)?;
    mmx_enter(cpu);
    set_mm(cpu, mm_index(insn.ins.op_register(0)), r as u64);
    Ok(())
}

/// CVTPD2PI/CVTTPD2PI mm, xmm/m128.
fn cvtpd2pi<const TRUNCATE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    check_mmx(cpu)?;
    let b = src_xmm(cpu, m, insn, 1, 16, true)?;
    let mut c = Ctx::new(mxcsr(cpu));
    let mut r = 0;
    for i in 0..2 {
        r = put(
            r,
            i,
            32,
            soft::to_int::<F64>(&mut c, get(b, i, 64), 32, TRUNCATE),
        );
    }
    signal(cpu, &c)?;
    mmx_enter(cpu);
    set_mm(cpu, mm_index(insn.ins.op_register(0)), r as u64);
    Ok(())
}
