//! Decimal adjust: DAA, DAS, AAA, AAS, AAM, AAD (SDM vol. 2A pseudo-code).
//!
//! AAA and AAS adjust AX as a whole (`AX += 0x106`; `AX -= 6, AH -= 1`), so a
//! carry or borrow out of AL reaches AH, as on the 80286 and later (the 8086
//! adjusted AL and AH apart; the hardware test data confirms it). Undefined flags: OF after DAA/DAS is cleared; after AAA/AAS,
//! OF/SF/ZF/PF are set from AL; after AAM/AAD, CF/OF/AF are cleared.

use super::flags::szp;
use super::ops::*;
use super::{Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::state::flags::*;
use crate::state::{reg, CpuState};
use x86bt_machine::Machine;

const RAX: u8 = reg::RAX as u8;

/// DAA and DAS.
pub fn daa_das<const SUB: bool>(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    let old_al = get_gpr(cpu, RAX, 0, 1);
    let old_cf = cpu.rflags & CF != 0;
    let mut al = old_al;
    let mut cf = false;
    let mut af = false;
    if (al & 0xF) > 9 || cpu.rflags & AF != 0 {
        if SUB {
            cf = old_cf || al < 6;
            al = al.wrapping_sub(6) & 0xFF;
        } else {
            cf = old_cf || al + 6 > 0xFF;
            al = (al + 6) & 0xFF;
        }
        af = true;
    }
    if old_al > 0x99 || old_cf {
        al = if SUB {
            al.wrapping_sub(0x60)
        } else {
            al + 0x60
        } & 0xFF;
        cf = true;
    }
    set_gpr(cpu, RAX, 0, 1, al);
    let f = szp(al, 1) | (u64::from(cf) * CF) | (u64::from(af) * AF);
    crate::interp::flags::set(cpu, ARITH, f);
    Ok(())
}

/// AAA and AAS.
pub fn aaa_aas<const SUB: bool>(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    let ax = get_gpr(cpu, RAX, 0, 2);
    let adjust = (ax & 0xF) > 9 || cpu.rflags & AF != 0;
    let ax = if adjust {
        if SUB {
            let ax = ax.wrapping_sub(6) & 0xFFFF;
            ax.wrapping_sub(0x100) & 0xFFFF
        } else {
            ax.wrapping_add(0x106) & 0xFFFF
        }
    } else {
        ax
    };
    let ax = ax & 0xFF0F;
    set_gpr(cpu, RAX, 0, 2, ax);
    let mut f = szp(ax, 1);
    if adjust {
        f |= AF | CF;
    }
    crate::interp::flags::set(cpu, ARITH, f);
    Ok(())
}

fn imm8(insn: &Insn) -> u64 {
    match insn.ops[0] {
        Opnd::Imm(v) => v & 0xFF,
        _ => 10,
    }
}

/// AAM imm8: AH = AL / imm, AL = AL % imm; #DE when imm is 0.
pub fn aam(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    let base = imm8(insn);
    if base == 0 {
        return Err(Exception::DivideError);
    }
    let al = get_gpr(cpu, RAX, 0, 1);
    let (q, r) = (al / base, al % base);
    set_gpr(cpu, RAX, 0, 2, (q << 8) | r);
    crate::interp::flags::set(cpu, ARITH, szp(r, 1));
    Ok(())
}

/// AAD imm8: AL = AL + AH * imm, AH = 0.
pub fn aad(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    let base = imm8(insn);
    let ax = get_gpr(cpu, RAX, 0, 2);
    let al = ((ax & 0xFF) + (ax >> 8) * base) & 0xFF;
    set_gpr(cpu, RAX, 0, 2, al);
    crate::interp::flags::set(cpu, ARITH, szp(al, 1));
    Ok(())
}
