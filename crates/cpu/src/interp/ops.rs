//! Operand access for handlers: registers by slot and width, the effective address
//! of the memory operand, and locations that a read-modify-write reads and writes
//! through one address computation.

use super::{Exec, Insn, MemRef, Opnd, NO_REG, RIP_BASE};
use crate::exception::Exception;
use crate::mmu;
use crate::state::CpuState;
use x86bt_machine::Machine;

/// All ones in the low `size` bytes.
#[inline(always)]
pub const fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// The sign bit of a `size`-byte value.
#[inline(always)]
pub const fn sign_bit(size: u32) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
#[inline(always)]
pub const fn sext(v: u64, size: u32) -> i64 {
    let sh = 64 - size * 8;
    ((v << sh) as i64) >> sh
}

/// Reads a GPR slot at a width.
#[inline(always)]
pub fn get_gpr(cpu: &CpuState, idx: u8, shift: u8, size: u32) -> u64 {
    (cpu.gpr[idx as usize] >> shift) & mask(size)
}

/// Writes a GPR slot at a width. 8- and 16-bit writes keep the other bits; a
/// 32-bit write zero-extends into the upper half, as long mode defines (outside
/// long mode the upper half is not visible).
#[inline(always)]
pub fn set_gpr(cpu: &mut CpuState, idx: u8, shift: u8, size: u32, v: u64) {
    let r = &mut cpu.gpr[idx as usize];
    match size {
        1 => *r = (*r & !(0xFFu64 << shift)) | ((v & 0xFF) << shift),
        2 => *r = (*r & !0xFFFF) | (v & 0xFFFF),
        4 => *r = v & 0xFFFF_FFFF,
        _ => *r = v,
    }
}

/// The offset (effective address) of a memory operand.
#[inline(always)]
pub fn ea(cpu: &CpuState, m: &MemRef) -> u64 {
    let mut a = m.disp;
    if m.base != NO_REG {
        let base = if m.base == RIP_BASE {
            cpu.next_rip
        } else {
            cpu.gpr[usize::from(m.base & 15)]
        };
        a = a.wrapping_add(base);
    }
    if m.index != NO_REG {
        a = a.wrapping_add(cpu.gpr[m.index as usize] << m.scale);
    }
    a & m.addr_mask
}

/// Where an operand lives, resolved once for a read-modify-write.
#[derive(Clone, Copy, Debug)]
pub enum Loc {
    /// A GPR slot and shift.
    Reg(u8, u8),
    /// Segment and offset.
    Mem(u8, u64),
}

/// Resolves operand `i`.
#[inline(always)]
pub fn loc(cpu: &CpuState, insn: &Insn, i: usize) -> Loc {
    match insn.ops[i] {
        Opnd::Gpr { idx, shift } => Loc::Reg(idx, shift),
        _ => Loc::Mem(insn.mem.seg, ea(cpu, &insn.mem)),
    }
}

/// Reads a location.
#[inline(always)]
pub fn load(cpu: &mut CpuState, m: &mut Machine, l: Loc, size: u32) -> Result<u64, Exception> {
    match l {
        Loc::Reg(idx, shift) => Ok(get_gpr(cpu, idx, shift, size)),
        Loc::Mem(s, off) => mmu::read(cpu, m, s as usize, off, size),
    }
}

/// Writes a location.
#[inline(always)]
pub fn store(cpu: &mut CpuState, m: &mut Machine, l: Loc, size: u32, v: u64) -> Exec {
    match l {
        Loc::Reg(idx, shift) => {
            set_gpr(cpu, idx, shift, size, v);
            Ok(())
        }
        Loc::Mem(s, off) => mmu::write(cpu, m, s as usize, off, size, v),
    }
}

/// Checks that a location can be written before a read-modify-write reads it, so a
/// fault on the write leaves nothing half-done.
#[inline(always)]
pub fn probe_write(cpu: &CpuState, l: Loc, size: u32) -> Exec {
    if let Loc::Mem(s, off) = l {
        mmu::seg_linear(cpu, s as usize, off, size, mmu::Access::Write)?;
    }
    Ok(())
}

/// Reads operand `i` at `size` bytes.
#[inline(always)]
pub fn read_op(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    i: usize,
    size: u32,
) -> Result<u64, Exception> {
    match insn.ops[i] {
        Opnd::Gpr { idx, shift } => Ok(get_gpr(cpu, idx, shift, size)),
        Opnd::Imm(v) => Ok(v & mask(size)),
        Opnd::Mem => mmu::read(cpu, m, insn.mem.seg as usize, ea(cpu, &insn.mem), size),
        Opnd::Seg(s) => Ok(u64::from(cpu.seg[s as usize].selector)),
        Opnd::None | Opnd::Other => Ok(0),
    }
}

/// Writes operand `i` at `size` bytes.
#[inline(always)]
pub fn write_op(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    i: usize,
    size: u32,
    v: u64,
) -> Exec {
    match insn.ops[i] {
        Opnd::Gpr { idx, shift } => {
            set_gpr(cpu, idx, shift, size, v);
            Ok(())
        }
        Opnd::Mem => mmu::write(cpu, m, insn.mem.seg as usize, ea(cpu, &insn.mem), size, v),
        _ => Ok(()),
    }
}

/// The stack-pointer width in bytes: 64-bit mode always uses RSP, whatever
/// SS.B says (SDM vol. 1 §6.2.3; a 64-bit kernel's SS usually has B = 1);
/// otherwise SS.B selects ESP over SP.
#[inline(always)]
pub fn stack_size(cpu: &CpuState) -> u32 {
    if crate::mmu::in_64bit(cpu) {
        8
    } else if cpu.seg[crate::state::sreg::SS].attrs & crate::state::seg_attr::DB != 0 {
        4
    } else {
        2
    }
}
