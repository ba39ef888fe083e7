//! The host's own SSE unit for the IEEE basic operations (ADD, SUB, MUL,
//! DIV, MIN, MAX, SQRT in PS, PD, SS and SD form) on an x86-64 host.
//!
//! These operations are fully specified by the SDM and IEEE 754 given MXCSR
//! (rounding control, DAZ, FTZ), NaN selection included, so the host's
//! result and flags are the guest's. The host runs the instruction under the
//! guest's MXCSR with its flags cleared, then puts its own MXCSR back. Only a
//! guest MXCSR with every exception masked (the power-on value, and what
//! compiled code runs under) takes this path: with one unmasked, what the
//! instruction does is no longer the masked result (an exact tiny result
//! signals underflow, FTZ stands aside, a pre-computation exception leaves
//! no result), and [`super::soft`] does it as the SDM says. RCP and RSQRT are not here: their approximations differ
//! between vendors, and the guest must see the same ones on every host.
//! `soft` stays the reference on other hosts and for those forms; the tests
//! compare it with the host directly.

/// Which operation (the `float` module's two-operand codes, and SQRT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOp {
    /// ADDxx.
    Add,
    /// SUBxx.
    Sub,
    /// MULxx.
    Mul,
    /// DIVxx.
    Div,
    /// MINxx.
    Min,
    /// MAXxx.
    Max,
    /// SQRTxx (of the second operand).
    Sqrt,
}

/// The form: packed or scalar, single or double.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// xxPS.
    Ps,
    /// xxPD.
    Pd,
    /// xxSS.
    Ss,
    /// xxSD.
    Sd,
}

/// The six exception flags and their masks in MXCSR.
#[cfg(target_arch = "x86_64")]
const FLAGS: u32 = 0x3F;
#[cfg(target_arch = "x86_64")]
const MASKS: u32 = 0x3F << 7;

#[cfg(target_arch = "x86_64")]
macro_rules! run_op {
    ($insn:literal, $a:expr, $b:expr, $out:expr, $csr:expr, $after:expr) => {
        // SAFETY: reads 16 bytes at `$a` and `$b` and 4 at `$csr`, writes 16
        // at `$out` and 4 at `$after`, all pointers to locals of the caller;
        // the host's MXCSR is saved on the stack slot and restored before
        // the block ends, so the Rust code around it runs under its own.
        unsafe {
            core::arch::asm!(
                "sub rsp, 8",
                "stmxcsr [rsp]",
                "ldmxcsr [{csr}]",
                "movdqu xmm0, [{a}]",
                "movdqu xmm1, [{b}]",
                concat!($insn, " xmm0, xmm1"),
                "movdqu [{out}], xmm0",
                "stmxcsr [{after}]",
                "ldmxcsr [rsp]",
                "add rsp, 8",
                a = in(reg) $a,
                b = in(reg) $b,
                out = in(reg) $out,
                csr = in(reg) $csr,
                after = in(reg) $after,
                out("xmm0") _,
                out("xmm1") _,
            )
        }
    };
}

/// Runs `op` in `form` on the host with the guest's MXCSR `csr`: `a` is the
/// destination's old value, `b` the source. Returns the destination's new
/// value and the flags raised, or `None` if `csr` leaves an exception
/// unmasked (the caller then takes the software path).
#[cfg(target_arch = "x86_64")]
pub fn run(op: HostOp, form: Form, a: u128, b: u128, csr: u32) -> Option<(u128, u32)> {
    if csr & MASKS != MASKS {
        return None;
    }
    let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
    let mut out = [0u8; 16];
    let masked = csr & !FLAGS;
    let mut after = 0u32;
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let (pc, pf) = (&masked as *const u32, &mut after as *mut u32);
    use Form::*;
    use HostOp::*;
    match (op, form) {
        (Add, Ps) => run_op!("addps", pa, pb, po, pc, pf),
        (Add, Pd) => run_op!("addpd", pa, pb, po, pc, pf),
        (Add, Ss) => run_op!("addss", pa, pb, po, pc, pf),
        (Add, Sd) => run_op!("addsd", pa, pb, po, pc, pf),
        (Sub, Ps) => run_op!("subps", pa, pb, po, pc, pf),
        (Sub, Pd) => run_op!("subpd", pa, pb, po, pc, pf),
        (Sub, Ss) => run_op!("subss", pa, pb, po, pc, pf),
        (Sub, Sd) => run_op!("subsd", pa, pb, po, pc, pf),
        (Mul, Ps) => run_op!("mulps", pa, pb, po, pc, pf),
        (Mul, Pd) => run_op!("mulpd", pa, pb, po, pc, pf),
        (Mul, Ss) => run_op!("mulss", pa, pb, po, pc, pf),
        (Mul, Sd) => run_op!("mulsd", pa, pb, po, pc, pf),
        (Div, Ps) => run_op!("divps", pa, pb, po, pc, pf),
        (Div, Pd) => run_op!("divpd", pa, pb, po, pc, pf),
        (Div, Ss) => run_op!("divss", pa, pb, po, pc, pf),
        (Div, Sd) => run_op!("divsd", pa, pb, po, pc, pf),
        (Min, Ps) => run_op!("minps", pa, pb, po, pc, pf),
        (Min, Pd) => run_op!("minpd", pa, pb, po, pc, pf),
        (Min, Ss) => run_op!("minss", pa, pb, po, pc, pf),
        (Min, Sd) => run_op!("minsd", pa, pb, po, pc, pf),
        (Max, Ps) => run_op!("maxps", pa, pb, po, pc, pf),
        (Max, Pd) => run_op!("maxpd", pa, pb, po, pc, pf),
        (Max, Ss) => run_op!("maxss", pa, pb, po, pc, pf),
        (Max, Sd) => run_op!("maxsd", pa, pb, po, pc, pf),
        (Sqrt, Ps) => run_op!("sqrtps", pa, pb, po, pc, pf),
        (Sqrt, Pd) => run_op!("sqrtpd", pa, pb, po, pc, pf),
        (Sqrt, Ss) => run_op!("sqrtss", pa, pb, po, pc, pf),
        (Sqrt, Sd) => run_op!("sqrtsd", pa, pb, po, pc, pf),
    }
    Some((u128::from_le_bytes(out), after & FLAGS))
}

/// Other hosts: always the software path.
#[cfg(not(target_arch = "x86_64"))]
pub fn run(_op: HostOp, _form: Form, _a: u128, _b: u128, _csr: u32) -> Option<(u128, u32)> {
    None
}
