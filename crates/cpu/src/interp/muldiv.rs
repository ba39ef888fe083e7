//! MUL, IMUL (one, two and three operands), DIV and IDIV.
//!
//! After MUL/IMUL, SF, ZF, AF and PF are undefined: they are set from the low half
//! of the result (SF/ZF/PF) and AF is cleared. DIV/IDIV leave all flags undefined:
//! they are left unchanged. #DE is a fault: nothing is written.

use super::flags::szp;
use super::ops::*;
use super::{Exec, Insn};
use crate::exception::Exception;
use crate::state::flags::*;
use crate::state::{reg, CpuState};
use x86bt_machine::Machine;

const RAX: u8 = reg::RAX as u8;
const RDX: u8 = reg::RDX as u8;

/// The accumulator pair as one value: AX (byte form), DX:AX, EDX:EAX, RDX:RAX.
fn acc_pair(cpu: &CpuState, size: u32) -> u128 {
    if size == 1 {
        u128::from(get_gpr(cpu, RAX, 0, 2))
    } else {
        (u128::from(get_gpr(cpu, RDX, 0, size)) << (size * 8))
            | u128::from(get_gpr(cpu, RAX, 0, size))
    }
}

fn set_acc_pair(cpu: &mut CpuState, size: u32, lo: u64, hi: u64) {
    if size == 1 {
        set_gpr(cpu, RAX, 0, 1, lo);
        set_gpr(cpu, RAX, 8, 1, hi);
    } else {
        set_gpr(cpu, RAX, 0, size, lo);
        set_gpr(cpu, RDX, 0, size, hi);
    }
}

fn mul_flags(cpu: &mut CpuState, lo: u64, size: u32, overflow: bool) {
    let mut f = szp(lo, size);
    if overflow {
        f |= CF | OF;
    }
    crate::interp::flags::set(cpu, ARITH, f);
}

/// MUL r/m: unsigned accumulator multiply.
pub fn mul(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let src = read_op(cpu, m, insn, 0, size)?;
    let a = get_gpr(cpu, RAX, 0, size);
    let p = u128::from(a) * u128::from(src);
    let bits = size * 8;
    let lo = (p as u64) & mask(size);
    let hi = ((p >> bits) as u64) & mask(size);
    set_acc_pair(cpu, size, lo, hi);
    mul_flags(cpu, lo, size, hi != 0);
    Ok(())
}

/// IMUL r/m: signed accumulator multiply.
pub fn imul1(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let src = sext(read_op(cpu, m, insn, 0, size)?, size);
    let a = sext(get_gpr(cpu, RAX, 0, size), size);
    let p = i128::from(a) * i128::from(src);
    let bits = size * 8;
    let lo = (p as u64) & mask(size);
    let hi = ((p >> bits) as u64) & mask(size);
    set_acc_pair(cpu, size, lo, hi);
    mul_flags(cpu, lo, size, i128::from(sext(lo, size)) != p);
    Ok(())
}

/// IMUL r, r/m and IMUL r, r/m, imm: truncating signed multiply.
pub fn imul_n(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let (x, y) = if insn.ins.op_count() == 3 {
        (
            read_op(cpu, m, insn, 1, size)?,
            read_op(cpu, m, insn, 2, size)?,
        )
    } else {
        (
            read_op(cpu, m, insn, 0, size)?,
            read_op(cpu, m, insn, 1, size)?,
        )
    };
    let p = i128::from(sext(x, size)) * i128::from(sext(y, size));
    let lo = (p as u64) & mask(size);
    mul_flags(cpu, lo, size, i128::from(sext(lo, size)) != p);
    write_op(cpu, m, insn, 0, size, lo)
}

/// DIV r/m: unsigned divide of the accumulator pair.
pub fn div(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let d = u128::from(read_op(cpu, m, insn, 0, size)?);
    if d == 0 {
        return Err(Exception::DivideError);
    }
    let n = acc_pair(cpu, size);
    let q = n / d;
    if q > u128::from(mask(size)) {
        return Err(Exception::DivideError);
    }
    let r = n % d;
    set_acc_pair(cpu, size, q as u64, r as u64);
    Ok(())
}

/// IDIV r/m: signed divide; the quotient truncates toward zero and the
/// remainder takes the dividend's sign.
pub fn idiv(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let d = i128::from(sext(read_op(cpu, m, insn, 0, size)?, size));
    if d == 0 {
        return Err(Exception::DivideError);
    }
    let bits = size * 8;
    let raw = acc_pair(cpu, size);
    let n = ((raw << (128 - 2 * bits)) as i128) >> (128 - 2 * bits);
    let q = n / d;
    let min = -(1i128 << (bits - 1));
    let max = (1i128 << (bits - 1)) - 1;
    if q < min || q > max {
        return Err(Exception::DivideError);
    }
    let r = n % d;
    set_acc_pair(cpu, size, q as u64 & mask(size), r as u64 & mask(size));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_pair_word_is_dx_ax() {
        let mut cpu = CpuState::reset();
        cpu.gpr[reg::RAX] = 0x1234;
        cpu.gpr[reg::RDX] = 0xABCD;
        assert_eq!(acc_pair(&cpu, 2), 0xABCD_1234);
        assert_eq!(acc_pair(&cpu, 1), 0x1234);
    }
}
