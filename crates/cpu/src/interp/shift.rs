//! Shifts and rotates, including SHLD/SHRD.
//!
//! The count is masked to 5 bits (6 for 64-bit operands) as on every 386 and later
//! part (SDM vol. 2B, SAL/SAR/SHL/SHR). A masked count of zero changes no flag;
//! the destination is still written, so a 32-bit register destination has its
//! upper half cleared in 64-bit mode, as every 32-bit register write does (and
//! as QEMU does). Where the SDM leaves OF undefined (count > 1), the value is the
//! one the last single-bit step would produce, which is what iterative hardware
//! gives; AF is left cleared.

use super::flags::szp;
use super::ops::*;
use super::{Exec, Insn};
use crate::state::flags::*;
use crate::state::CpuState;
use x86bt_machine::Machine;

/// ROL
pub const ROL: u8 = 0;
/// ROR
pub const ROR: u8 = 1;
/// RCL
pub const RCL: u8 = 2;
/// RCR
pub const RCR: u8 = 3;
/// SHL/SAL
pub const SHL: u8 = 4;
/// SHR
pub const SHR: u8 = 5;
/// SAR
pub const SAR: u8 = 7;

#[inline(always)]
fn msb(v: u64, size: u32) -> u64 {
    u64::from(v & sign_bit(size) != 0)
}

/// The group-2 shifts and rotates.
pub fn shift<const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    match insn.size() {
        1 => shift_n::<OP, 1>(cpu, m, insn),
        2 => shift_n::<OP, 2>(cpu, m, insn),
        4 => shift_n::<OP, 4>(cpu, m, insn),
        _ => shift_n::<OP, 8>(cpu, m, insn),
    }
}

/// [`shift`] at operand size `N`, known when the unit is decoded.
pub fn shift_n<const OP: u8, const N: u32>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Exec {
    let size = N;
    let bits = u64::from(size * 8);
    let d = loc(cpu, insn, 0);
    probe_write(cpu, d, size)?;
    let a = load(cpu, m, d, size)?;
    let count_mask = if size == 8 { 0x3F } else { 0x1F };
    let cnt = read_op(cpu, m, insn, 1, 1)? & count_mask;
    if cnt == 0 {
        return zero_count(cpu, d, size, a);
    }
    let mk = mask(size);
    let cf_in = cpu.rflags & CF;
    let (r, cf, of, arith) = match OP {
        ROL => {
            let c = cnt % bits;
            let r = if c == 0 {
                a
            } else {
                ((a << c) | (a >> (bits - c))) & mk
            };
            let cf = r & 1;
            (r, cf, msb(r, size) ^ cf, false)
        }
        ROR => {
            let c = cnt % bits;
            let r = if c == 0 {
                a
            } else {
                ((a >> c) | (a << (bits - c))) & mk
            };
            let cf = msb(r, size);
            (r, cf, cf ^ msb(r << 1, size), false)
        }
        RCL | RCR => {
            let width = bits + 1;
            let c = if size <= 2 { cnt % width } else { cnt };
            let v = (u128::from(cf_in) << bits) | u128::from(a);
            let wmask = (1u128 << width) - 1;
            let rot = if c == 0 {
                v
            } else if OP == RCL {
                ((v << c) | (v >> (width - u64::from(c != 0) * c))) & wmask
            } else {
                ((v >> c) | (v << (width - c))) & wmask
            };
            let r = (rot as u64) & mk;
            let cf = ((rot >> bits) & 1) as u64;
            let of = if OP == RCL {
                msb(r, size) ^ cf
            } else {
                msb(r, size) ^ msb(r << 1, size)
            };
            (r, cf, of, false)
        }
        SHL => {
            let r = if cnt < 64 { (a << cnt) & mk } else { 0 };
            let cf = if cnt <= bits {
                (a >> (bits - cnt)) & 1
            } else {
                0
            };
            (r, cf, msb(r, size) ^ cf, true)
        }
        SHR => {
            let r = a >> cnt;
            let cf = if cnt <= bits { (a >> (cnt - 1)) & 1 } else { 0 };
            let of = if cnt == 1 { msb(a, size) } else { 0 };
            (r, cf, of, true)
        }
        _ => {
            let s = sext(a, size);
            let r = (s >> cnt.min(63)) as u64 & mk;
            let cf = ((s >> (cnt - 1).min(63)) & 1) as u64;
            (r, cf, 0, true)
        }
    };
    let mut f = (cf * CF) | (of * OF);
    let which = if arith {
        f |= szp(r, size);
        ARITH
    } else {
        CF | OF
    };
    crate::interp::flags::set(cpu, which, f);
    store(cpu, m, d, size, r)
}

/// SHLD and SHRD: shift the destination, filling from the source register.
pub fn shxd<const LEFT: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let bits = u64::from(size * 8);
    let d = loc(cpu, insn, 0);
    probe_write(cpu, d, size)?;
    let a = load(cpu, m, d, size)?;
    let src = read_op(cpu, m, insn, 1, size)?;
    let count_mask = if size == 8 { 0x3F } else { 0x1F };
    let cnt = read_op(cpu, m, insn, 2, 1)? & count_mask;
    if cnt == 0 {
        return zero_count(cpu, d, size, a);
    }
    let mk = mask(size);
    // 32- and 64-bit operands: the count is below the width.
    // 16-bit operands: treat dst:src (SHLD) or src:dst (SHRD) as one wide value;
    // for counts above 16 (undefined) the source pattern repeats, as on Intel
    // parts.
    let (r, cf) = if size >= 4 {
        if LEFT {
            let r = ((a << cnt) | (src >> (bits - cnt))) & mk;
            (r, (a >> (bits - cnt)) & 1)
        } else {
            let r = ((a >> cnt) | (src << (bits - cnt))) & mk;
            (r, (a >> (cnt - 1)) & 1)
        }
    } else if LEFT {
        let wide = (u128::from(a) << (2 * bits)) | (u128::from(src) << bits) | u128::from(a);
        let r = ((wide << cnt) >> (2 * bits)) as u64 & mk;
        let cf = ((wide << (cnt - 1)) >> (3 * bits - 1)) as u64 & 1;
        (r, cf)
    } else {
        let wide = (u128::from(a) << (2 * bits)) | (u128::from(src) << bits) | u128::from(a);
        let r = (wide >> cnt) as u64 & mk;
        let cf = (wide >> (cnt - 1)) as u64 & 1;
        (r, cf)
    };
    let of = msb(r, size) ^ msb(a, size);
    let f = szp(r, size) | (cf * CF) | (of * OF);
    crate::interp::flags::set(cpu, ARITH, f);
    store(cpu, m, d, size, r)
}

/// A masked count of zero: no flag changes, and a 32-bit register destination
/// is written back (zero-extended); memory is left alone.
fn zero_count(cpu: &mut CpuState, d: Loc, size: u32, a: u64) -> Exec {
    if let (Loc::Reg(idx, shift), 4) = (d, size) {
        set_gpr(cpu, idx, shift, 4, a);
    }
    Ok(())
}
