//! The stack: PUSH, POP, PUSHA, POPA, PUSHF, POPF, ENTER, LEAVE, and the push/pop
//! primitives other families use.
//!
//! The stack-pointer width is SS.B (SP or ESP); the value width is the operand
//! size. Every access is limit-checked against SS and faults with #SS(0). Multi-
//! value pops read everything first and move SP last, so a fault changes nothing.

use super::ops::*;
use super::{Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{reg, sreg, CpuState};
use x86bt_machine::Machine;

const RSP: u8 = reg::RSP as u8;

/// Pushes the low `size` bytes of `v`.
#[inline]
pub fn push(cpu: &mut CpuState, m: &mut Machine, v: u64, size: u32) -> Exec {
    let ss = stack_size(cpu);
    let sp = get_gpr(cpu, RSP, 0, ss).wrapping_sub(u64::from(size)) & mask(ss);
    mmu::write(cpu, m, sreg::SS, sp, size, v)?;
    set_gpr(cpu, RSP, 0, ss, sp);
    Ok(())
}

/// Reads the `size`-byte value `depth` bytes above the stack pointer.
#[inline]
pub fn peek(cpu: &mut CpuState, m: &mut Machine, depth: u64, size: u32) -> Result<u64, Exception> {
    let ss = stack_size(cpu);
    let sp = get_gpr(cpu, RSP, 0, ss).wrapping_add(depth) & mask(ss);
    mmu::read(cpu, m, sreg::SS, sp, size)
}

/// Moves the stack pointer by `n` bytes (positive: pop).
#[inline]
pub fn add_sp(cpu: &mut CpuState, n: u64) {
    let ss = stack_size(cpu);
    let sp = get_gpr(cpu, RSP, 0, ss).wrapping_add(n);
    set_gpr(cpu, RSP, 0, ss, sp);
}

/// Pops a `size`-byte value.
#[inline]
pub fn pop(cpu: &mut CpuState, m: &mut Machine, size: u32) -> Result<u64, Exception> {
    let v = peek(cpu, m, 0, size)?;
    add_sp(cpu, u64::from(size));
    Ok(v)
}

/// PUSH r/m, imm, and PUSH sreg. PUSH SP pushes the value before the push.
pub fn push_op(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    match insn.size() {
        2 => push_op_n::<2>(cpu, m, insn),
        4 => push_op_n::<4>(cpu, m, insn),
        8 => push_op_n::<8>(cpu, m, insn),
        size => push_op_any(cpu, m, insn, size),
    }
}

/// [`push_op`] at operand size `N`, known when the unit is decoded.
pub fn push_op_n<const N: u32>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    push_op_any(cpu, m, insn, N)
}

#[inline(always)]
fn push_op_any(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, size: u32) -> Exec {
    let v = match insn.ops[0] {
        Opnd::Seg(s) => u64::from(cpu.seg[s as usize].selector),
        _ => read_op(cpu, m, insn, 0, size)?,
    };
    push(cpu, m, v, size)
}

/// POP r/m. With a memory destination, the address is computed after SP moves
/// (SDM vol. 2B, POP), and SP is restored if the store faults.
pub fn pop_op(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    match insn.size() {
        2 => pop_op_n::<2>(cpu, m, insn),
        4 => pop_op_n::<4>(cpu, m, insn),
        8 => pop_op_n::<8>(cpu, m, insn),
        size => pop_op_any(cpu, m, insn, size),
    }
}

/// [`pop_op`] at operand size `N`, known when the unit is decoded.
pub fn pop_op_n<const N: u32>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pop_op_any(cpu, m, insn, N)
}

#[inline(always)]
fn pop_op_any(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, size: u32) -> Exec {
    let v = peek(cpu, m, 0, size)?;
    let old_sp = cpu.gpr[reg::RSP];
    add_sp(cpu, u64::from(size));
    if let Err(e) = write_op(cpu, m, insn, 0, size, v) {
        cpu.gpr[reg::RSP] = old_sp;
        return Err(e);
    }
    Ok(())
}

/// PUSHA/PUSHAD: AX, CX, DX, BX, original SP, BP, SI, DI.
pub fn pusha(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let saved = cpu.gpr[reg::RSP];
    for r in 0..8u8 {
        let v = if r == RSP { saved } else { cpu.gpr[r as usize] };
        if let Err(e) = push(cpu, m, v, size) {
            cpu.gpr[reg::RSP] = saved;
            return Err(e);
        }
    }
    Ok(())
}

/// POPA/POPAD: the reverse, skipping the saved SP.
pub fn popa(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let mut vals = [0u64; 8];
    for (i, v) in vals.iter_mut().enumerate() {
        *v = peek(cpu, m, (i as u64) * u64::from(size), size)?;
    }
    for (i, v) in vals.iter().enumerate() {
        let r = 7 - i as u8;
        if r != RSP {
            set_gpr(cpu, r, 0, size, *v);
        }
    }
    add_sp(cpu, 8 * u64::from(size));
    Ok(())
}

/// The FLAGS image PUSHF and interrupts push: VM and RF read as 0.
pub fn flags_image(cpu: &CpuState) -> u64 {
    cpu.rflags & !(VM | RF)
}

/// PUSHF/PUSHFD. In V86 mode with IOPL < 3 it raises #GP(0) (no VME).
pub fn pushf(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if cpu.v86() && cpu.iopl() < 3 {
        return Err(Exception::GeneralProtection(0));
    }
    let v = flags_image(cpu);
    push(cpu, m, v, insn.size())
}

/// Loads FLAGS from a popped value: the bits a real-mode (CPL 0) POPF or IRET may
/// change. VM, VIP and VIF are kept; RF is cleared; reserved bits are fixed.
pub fn load_flags(cpu: &mut CpuState, v: u64, size: u32) {
    let writable = if size == 2 { 0x7FD5 } else { 0x7FD5 | AC | ID };
    let kept = cpu.rflags & !writable & !RF & !0xFFFF;
    cpu.rflags = kept | (v & writable) | FIXED1;
}

/// Loads FLAGS from a POPF (or V86 IRET) image under the mode's rules: in
/// protected mode IOPL changes only at CPL 0 and IF only when CPL <= IOPL; in V86
/// mode (IOPL 3) IOPL is kept (SDM vol. 2B, POPF).
pub fn stack_flags_load(cpu: &mut CpuState, v: u64, size: u32) {
    if !cpu.protected() {
        load_flags(cpu, v, size);
        return;
    }
    let mut writable = CF | PF | AF | ZF | SF | TF | DF | OF | NT;
    if size >= 4 {
        writable |= AC | ID;
    }
    let cpl = cpu.cpl();
    if cpu.v86() {
        writable |= IF;
    } else {
        if cpl == 0 {
            writable |= IOPL;
        }
        if cpl <= cpu.iopl() {
            writable |= IF;
        }
    }
    cpu.rflags = (cpu.rflags & !writable & !RF) | (v & writable) | FIXED1;
}

/// POPF/POPFD. In V86 mode with IOPL < 3 it raises #GP(0) (no VME).
pub fn popf(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if cpu.v86() && cpu.iopl() < 3 {
        return Err(Exception::GeneralProtection(0));
    }
    let size = insn.size();
    let v = pop(cpu, m, size)?;
    let before = cpu.rflags;
    stack_flags_load(cpu, v, size);
    // The unit goes on unless the run loop must look: TF set (single-step
    // traps begin), or IF set while INTR is up.
    let rose = cpu.rflags & !before;
    if cpu.rflags & TF != 0 || (rose & IF != 0 && m.intr()) {
        m.request_attention();
    }
    Ok(())
}

/// ENTER imm16, imm8 (SDM vol. 2A, ENTER, "Operation").
///
/// The stack pointer moves at the stack size (SS.B); values, the frame pointer
/// written and FrameTemp take the operand size: with a 32-bit operand size
/// FrameTemp is the whole ESP after the first push, even on a 16-bit stack, and
/// with a 16-bit one only BP changes. The display copies read `[(E)BP - size * i]`
/// at the stack size.
///
/// The instruction is precise: the write at the final stack pointer (which the
/// SDM says faults whenever a write there would), then every read and push, are
/// checked before anything is written, so a #SS or #PF leaves registers and
/// memory as they were.
pub fn enter(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let step = u64::from(size);
    let alloc = u64::from(insn.ins.immediate16());
    let level = usize::from(insn.ins.immediate8_2nd() & 31);
    let ss = stack_size(cpu);
    // Push(EBP or BP): the stack pointer after it, and FrameTemp, which is ESP
    // (operand size 32) or SP (16) as the register reads after that push.
    let first = get_gpr(cpu, RSP, 0, ss).wrapping_sub(step) & mask(ss);
    let after_first = if ss >= 4 {
        first
    } else {
        (cpu.gpr[reg::RSP] & !0xFFFF) | first
    };
    let frame = after_first & mask(size);
    // BP, then level - 1 display copies and FrameTemp when the level is not 0.
    let count = if level > 0 { 1 + level } else { 1 };
    let at = |i: usize| first.wrapping_sub(i as u64 * step) & mask(ss);
    let last = at(count - 1);
    let final_sp = last.wrapping_sub(alloc) & mask(ss);
    mmu::probe_write(cpu, m, sreg::SS, final_sp, size)?;
    let mut values = [0u64; 33];
    values[0] = get_gpr(cpu, reg::RBP as u8, 0, size);
    if level > 0 {
        let mut bp = get_gpr(cpu, reg::RBP as u8, 0, ss);
        for v in values.iter_mut().take(level).skip(1) {
            bp = bp.wrapping_sub(step) & mask(ss);
            *v = mmu::read(cpu, m, sreg::SS, bp, size)?;
        }
        values[level] = frame;
    }
    for i in 0..count {
        mmu::probe_write(cpu, m, sreg::SS, at(i), size)?;
    }
    for (i, v) in values[..count].iter().enumerate() {
        mmu::write(cpu, m, sreg::SS, at(i), size, *v)?;
    }
    set_gpr(cpu, reg::RBP as u8, 0, size, frame);
    set_gpr(cpu, RSP, 0, ss, final_sp);
    Ok(())
}

/// LEAVE: SP = BP, then pop BP.
pub fn leave(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let ss = stack_size(cpu);
    let bp = get_gpr(cpu, reg::RBP as u8, 0, ss);
    let v = mmu::read(cpu, m, sreg::SS, bp, size)?;
    set_gpr(cpu, RSP, 0, ss, bp.wrapping_add(u64::from(size)));
    set_gpr(cpu, reg::RBP as u8, 0, size, v);
    Ok(())
}
