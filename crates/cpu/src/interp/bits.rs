//! Bit test and scan: BT, BTS, BTR, BTC, BSF, BSR.
//!
//! With a memory operand and a register bit offset, the offset is signed and
//! selects a bit anywhere relative to the operand's address (SDM vol. 2A, BT):
//! the address moves by `offset >> log2(bits)` operand-sized units. After BTx only
//! CF is defined; the others are left unchanged. After BSF/BSR with a zero source
//! the destination is left unchanged and ZF = 1.

use super::ops::*;
use super::{Exec, Insn, Opnd};
use crate::state::flags::*;
use crate::state::CpuState;
use x86bt_machine::Machine;

/// BT
pub const BT: u8 = 0;
/// BTS
pub const BTS: u8 = 1;
/// BTR
pub const BTR: u8 = 2;
/// BTC
pub const BTC: u8 = 3;

/// BT, BTS, BTR, BTC.
pub fn bt<const OP: u8>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let bits = u64::from(size * 8);
    let raw = read_op(cpu, m, insn, 1, size)?;
    let mut d = loc(cpu, insn, 0);
    let bit = match (insn.ops[1], &mut d) {
        (Opnd::Gpr { .. }, Loc::Mem(_, off)) => {
            let signed = sext(raw, size);
            let units = signed >> bits.trailing_zeros();
            *off = off.wrapping_add((units * i64::from(size as u8)) as u64) & insn.mem.addr_mask;
            raw & (bits - 1)
        }
        _ => raw & (bits - 1),
    };
    if OP != BT {
        probe_write(cpu, d, size)?;
    }
    let v = load(cpu, m, d, size)?;
    let was = (v >> bit) & 1;
    cpu.rflags = (cpu.rflags & !CF) | (was * CF);
    let r = match OP {
        BTS => v | (1 << bit),
        BTR => v & !(1 << bit),
        BTC => v ^ (1 << bit),
        _ => return Ok(()),
    };
    store(cpu, m, d, size, r)
}

/// BSF and BSR.
pub fn bsf_bsr<const REVERSE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let v = read_op(cpu, m, insn, 1, size)?;
    if v == 0 {
        cpu.rflags |= ZF;
        return Ok(());
    }
    cpu.rflags &= !ZF;
    let idx = if REVERSE {
        63 - u64::from(v.leading_zeros())
    } else {
        u64::from(v.trailing_zeros())
    };
    write_op(cpu, m, insn, 0, size, idx)
}
