//! Control transfer: near and far JMP/CALL/RET, Jcc, JCXZ, LOOPcc, BOUND.
//!
//! Relative targets are kept as displacements from the next instruction (see
//! [`super::Insn::rel`]), so a cached unit is valid at any CS:IP that maps to its
//! physical address. A target beyond the CS limit raises #GP(0) at the branch
//! (SDM vol. 2A, JMP), leaving the branch's effects undone.

use super::flags::cond;
use super::ops::*;
use super::stack::{add_sp, peek, push};
use super::{protected, Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::state::{reg, sreg, CpuState};
use iced_x86::{Code, ConditionCode};
use x86bt_machine::Machine;

/// Sets the next IP to `target` masked to the operand size, after the limit
/// check, or in 64-bit mode the canonical check (#GP(0) at the branch, as Intel
/// CPUs raise it; SDM vol. 2A, JMP, 64-bit mode exceptions).
#[inline(always)]
fn go(cpu: &mut CpuState, target: u64, size: u32) -> Exec {
    let t = target & mask(size);
    if crate::mmu::in_64bit(cpu) {
        if !crate::mmu::canonical(t) {
            return Err(Exception::GeneralProtection(0));
        }
    } else if t > u64::from(cpu.seg[sreg::CS].limit) {
        return Err(Exception::GeneralProtection(0));
    }
    cpu.next_rip = t;
    Ok(())
}

/// JMP rel.
pub fn jmp_rel(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    go(cpu, cpu.next_rip.wrapping_add(insn.rel), insn.size())
}

/// Jcc rel.
pub fn jcc(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    if cond(cpu, insn.ins.condition_code()) {
        go(cpu, cpu.next_rip.wrapping_add(insn.rel), insn.size())
    } else {
        Ok(())
    }
}

/// Jcc rel with condition `CC` (`ConditionCode as u8`), known when the unit
/// is decoded.
pub fn jcc_cc<const CC: u8>(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    debug_assert_eq!(insn.ins.condition_code() as u8, CC);
    if cond(cpu, condition_code(CC)) {
        go(cpu, cpu.next_rip.wrapping_add(insn.rel), insn.size())
    } else {
        Ok(())
    }
}

/// The condition code numbered `n` (`ConditionCode as u8`).
#[inline(always)]
pub const fn condition_code(n: u8) -> ConditionCode {
    use ConditionCode as C;
    const ALL: [C; 17] = [
        C::None,
        C::o,
        C::no,
        C::b,
        C::ae,
        C::e,
        C::ne,
        C::be,
        C::a,
        C::s,
        C::ns,
        C::p,
        C::np,
        C::l,
        C::ge,
        C::le,
        C::g,
    ];
    ALL[n as usize]
}

/// The width of the count register of LOOPcc/JCXZ: the address size.
fn count_size(code: Code) -> u32 {
    use Code::*;
    match code {
        Loopne_rel8_16_CX | Loopne_rel8_32_CX | Loope_rel8_16_CX | Loope_rel8_32_CX
        | Loop_rel8_16_CX | Loop_rel8_32_CX | Jcxz_rel8_16 | Jcxz_rel8_32 => 2,
        Loopne_rel8_16_RCX | Loopne_rel8_64_RCX | Loope_rel8_16_RCX | Loope_rel8_64_RCX
        | Loop_rel8_16_RCX | Loop_rel8_64_RCX | Jrcxz_rel8_16 | Jrcxz_rel8_64 => 8,
        _ => 4,
    }
}

/// LOOP, LOOPE, LOOPNE.
pub fn loop_cc<const KIND: u8>(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    let cs = count_size(insn.ins.code());
    let c = get_gpr(cpu, reg::RCX as u8, 0, cs).wrapping_sub(1) & mask(cs);
    let zf = cpu.rflags & crate::state::flags::ZF != 0;
    let take = c != 0
        && match KIND {
            1 => zf,
            2 => !zf,
            _ => true,
        };
    if take {
        go(cpu, cpu.next_rip.wrapping_add(insn.rel), insn.size())?;
    }
    set_gpr(cpu, reg::RCX as u8, 0, cs, c);
    Ok(())
}

/// JCXZ, JECXZ, JRCXZ.
pub fn jcxz(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    let cs = count_size(insn.ins.code());
    if get_gpr(cpu, reg::RCX as u8, 0, cs) == 0 {
        go(cpu, cpu.next_rip.wrapping_add(insn.rel), insn.size())
    } else {
        Ok(())
    }
}

/// JMP r/m (near indirect).
pub fn jmp_ind(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let t = read_op(cpu, m, insn, 0, size)?;
    go(cpu, t, size)
}

/// CALL rel.
pub fn call_rel(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let ret = cpu.next_rip;
    go(cpu, ret.wrapping_add(insn.rel), size)?;
    push(cpu, m, ret, size)
}

/// CALL r/m (near indirect).
pub fn call_ind(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let t = read_op(cpu, m, insn, 0, size)?;
    let ret = cpu.next_rip;
    go(cpu, t, size)?;
    push(cpu, m, ret, size)
}

/// RET and RET imm16 (near).
pub fn ret_near(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let t = peek(cpu, m, 0, size)?;
    go(cpu, t, size)?;
    let extra = match insn.ops[0] {
        Opnd::Imm(v) => v & 0xFFFF,
        _ => 0,
    };
    add_sp(cpu, u64::from(size) + extra);
    Ok(())
}

/// Real-mode and V86 far transfer: load CS the real-mode way and jump.
fn far_go(cpu: &mut CpuState, sel: u16, off: u64, size: u32) -> Exec {
    let off = off & mask(size);
    if off > u64::from(cpu.seg[sreg::CS].limit) {
        return Err(Exception::GeneralProtection(0));
    }
    if cpu.v86() {
        cpu.seg[sreg::CS] = protected::v86_segment(sel);
    } else {
        cpu.load_seg_real(sreg::CS, sel);
    }
    cpu.next_rip = off;
    Ok(())
}

/// The selector and offset of a far pointer operand (ptr16:16/32 or m16:16/32).
fn far_target(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    size: u32,
) -> Result<(u16, u64), Exception> {
    if insn.ops[0] == Opnd::Mem {
        let s = insn.mem.seg as usize;
        let off = ea(cpu, &insn.mem);
        let o = crate::mmu::read(cpu, m, s, off, size)?;
        let sel = crate::mmu::read(
            cpu,
            m,
            s,
            off.wrapping_add(u64::from(size)) & insn.mem.addr_mask,
            2,
        )?;
        Ok((sel as u16, o))
    } else {
        let o = if size == 2 {
            u64::from(insn.ins.far_branch16())
        } else {
            u64::from(insn.ins.far_branch32())
        };
        Ok((insn.ins.far_branch_selector(), o))
    }
}

fn far_size(insn: &Insn) -> u32 {
    match insn.ins.code() {
        Code::Jmp_ptr1616 | Code::Call_ptr1616 | Code::Jmp_m1616 | Code::Call_m1616 => 2,
        Code::Jmp_m1664 | Code::Call_m1664 => 8,
        _ => 4,
    }
}

/// JMP far (ptr or m16:xx).
pub fn jmp_far(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = far_size(insn);
    let (sel, off) = far_target(cpu, m, insn, size)?;
    if protected::pm(cpu) {
        return protected::far_jump(cpu, m, sel, off, size);
    }
    far_go(cpu, sel, off, size)
}

/// CALL far (ptr or m16:xx), real mode: push CS, then IP.
pub fn call_far(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = far_size(insn);
    let (sel, off) = far_target(cpu, m, insn, size)?;
    if protected::pm(cpu) {
        return protected::far_call(cpu, m, sel, off, size);
    }
    let (old_cs, ret) = (cpu.seg[sreg::CS].selector, cpu.next_rip);
    let saved_sp = cpu.gpr[reg::RSP];
    let pushed = push(cpu, m, u64::from(old_cs), size).and_then(|()| push(cpu, m, ret, size));
    if let Err(e) = pushed {
        cpu.gpr[reg::RSP] = saved_sp;
        return Err(e);
    }
    if let Err(e) = far_go(cpu, sel, off, size) {
        cpu.gpr[reg::RSP] = saved_sp;
        cpu.load_seg_real(sreg::CS, old_cs);
        return Err(e);
    }
    Ok(())
}

/// RETF and RETF imm16, real mode.
pub fn ret_far(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    if protected::pm(cpu) {
        let extra = match insn.ops[0] {
            Opnd::Imm(v) => v & 0xFFFF,
            _ => 0,
        };
        return protected::far_return(cpu, m, size, extra);
    }
    let off = peek(cpu, m, 0, size)?;
    let sel = peek(cpu, m, u64::from(size), size)? as u16;
    far_go(cpu, sel, off, size)?;
    let extra = match insn.ops[0] {
        Opnd::Imm(v) => v & 0xFFFF,
        _ => 0,
    };
    add_sp(cpu, 2 * u64::from(size) + extra);
    Ok(())
}

/// BOUND r, m: #BR unless lower <= r <= upper (signed).
pub fn bound(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if insn.ops[1] != Opnd::Mem {
        return Err(Exception::InvalidOpcode);
    }
    let size = insn.size();
    let idx = sext(read_op(cpu, m, insn, 0, size)?, size);
    let s = insn.mem.seg as usize;
    let off = ea(cpu, &insn.mem);
    let lo = sext(crate::mmu::read(cpu, m, s, off, size)?, size);
    let hi_off = off.wrapping_add(u64::from(size)) & insn.mem.addr_mask;
    let hi = sext(crate::mmu::read(cpu, m, s, hi_off, size)?, size);
    if idx < lo || idx > hi {
        return Err(Exception::BoundRange);
    }
    Ok(())
}

#[cfg(test)]
mod jcc_tests {
    use super::*;

    #[test]
    fn condition_code_numbers_match_iced() {
        for cc in ConditionCode::values() {
            assert_eq!(condition_code(cc as u8), cc);
        }
    }
}
