//! Interrupt and exception delivery, and the instructions that raise or return
//! from interrupts: INT n, INT3, INTO, INT1, IRET.
//!
//! Real mode delivers through the IVT at IDTR.base (SDM vol. 3A §20.1.4): push
//! FLAGS, CS, IP (16-bit each); clear IF, TF, AC and RF; load CS:IP from the
//! vector's 4-byte entry. A vector beyond the IDTR limit raises #GP; a fault
//! while delivering becomes #DF, and a fault while delivering #DF shuts the CPU
//! down (a triple fault).

use super::ops::*;
use super::stack::{add_sp, load_flags, peek, push};
use super::{Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{reg, sreg, CpuState, RunState};
use x86bt_machine::Machine;

/// Delivers interrupt `vector` in real mode, returning to `ret_ip`.
pub fn deliver_real(cpu: &mut CpuState, m: &mut Machine, vector: u8, ret_ip: u64) -> Exec {
    let off = u64::from(vector) * 4;
    if off + 3 > u64::from(cpu.idtr.limit) {
        return Err(Exception::GeneralProtection(u16::from(vector) * 8 + 2));
    }
    let entry = cpu.idtr.base.wrapping_add(off);
    let ip = mmu::read_lin(cpu, m, entry, 2)?;
    let cs = mmu::read_lin(cpu, m, entry.wrapping_add(2), 2)?;
    let saved_sp = cpu.gpr[reg::RSP];
    let image = super::stack::flags_image(cpu);
    let pushed = push(cpu, m, image, 2)
        .and_then(|()| push(cpu, m, u64::from(cpu.seg[sreg::CS].selector), 2))
        .and_then(|()| push(cpu, m, ret_ip, 2));
    if let Err(e) = pushed {
        cpu.gpr[reg::RSP] = saved_sp;
        return Err(e);
    }
    cpu.rflags &= !(IF | TF | AC | RF);
    cpu.load_seg_real(sreg::CS, cs as u16);
    cpu.rip = ip;
    cpu.next_rip = ip;
    Ok(())
}

/// Delivers `vector` to the guest, returning to `ret_ip`.
pub fn deliver(
    cpu: &mut CpuState,
    m: &mut Machine,
    vector: u8,
    _error: Option<u32>,
    ret_ip: u64,
) -> Exec {
    // Protected-mode delivery (IDT gates, error codes) comes with protected mode;
    // the run loop refuses to run with CR0.PE set until then.
    deliver_real(cpu, m, vector, ret_ip)
}

/// Raises a fault or trap whose return address is `ret_ip`, escalating to #DF and
/// then to shutdown as the hardware does (SDM vol. 3A §6.15, interrupt 8).
pub fn raise(cpu: &mut CpuState, m: &mut Machine, e: Exception, ret_ip: u64) {
    if let Exception::PageFault { addr, .. } = e {
        cpu.cr2 = addr;
    }
    if deliver(cpu, m, e.vector(), e.error_code(), ret_ip).is_ok() {
        return;
    }
    if deliver(cpu, m, 8, Some(0), ret_ip).is_ok() {
        return;
    }
    cpu.run_state = RunState::Shutdown;
}

/// INT imm8: a trap that returns to the next instruction.
pub fn int_n(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let v = match insn.ops[0] {
        Opnd::Imm(v) => v as u8,
        _ => 0,
    };
    deliver(cpu, m, v, None, cpu.next_rip)
}

/// INT3.
pub fn int3(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    deliver(cpu, m, 3, None, cpu.next_rip)
}

/// INT1 (ICEBP, F1): a #DB trap.
pub fn int1(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    deliver(cpu, m, 1, None, cpu.next_rip)
}

/// INTO: INT 4 if OF is set.
pub fn into(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    if cpu.rflags & OF != 0 {
        deliver(cpu, m, 4, None, cpu.next_rip)
    } else {
        Ok(())
    }
}

/// IRET/IRETD in real mode: pop IP, CS, FLAGS.
pub fn iret(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if cpu.protected() {
        return Err(Exception::InvalidOpcode);
    }
    let size = insn.size();
    let ip = peek(cpu, m, 0, size)?;
    let cs = peek(cpu, m, u64::from(size), size)? as u16;
    let fl = peek(cpu, m, 2 * u64::from(size), size)?;
    let ip = ip & mask(size);
    if ip > u64::from(cpu.seg[sreg::CS].limit) {
        return Err(Exception::GeneralProtection(0));
    }
    add_sp(cpu, 3 * u64::from(size));
    cpu.load_seg_real(sreg::CS, cs);
    cpu.next_rip = ip;
    load_flags(cpu, fl, size);
    cpu.nmi_blocked = 0;
    Ok(())
}

/// Delivers an external (PIC) interrupt `vector`, returning to `ret_ip`.
pub fn raise_external(cpu: &mut CpuState, m: &mut Machine, vector: u8, ret_ip: u64) {
    if deliver(cpu, m, vector, None, ret_ip).is_ok() {
        return;
    }
    if deliver(cpu, m, 8, Some(0), ret_ip).is_ok() {
        return;
    }
    cpu.run_state = RunState::Shutdown;
}
