//! Interrupt and exception delivery, and the instructions that raise or return
//! from interrupts: INT n, INT3, INTO, INT1, IRET.
//!
//! Real mode delivers through the IVT at IDTR.base (SDM vol. 3A §20.1.4): push
//! FLAGS, CS, IP (16-bit each); clear IF, TF, AC and RF; load CS:IP from the
//! vector's 4-byte entry. A vector beyond the IDTR limit raises #GP; a fault
//! while delivering becomes #DF, and a fault while delivering #DF shuts the CPU
//! down (a triple fault).

use super::ops::*;
use super::protected::{self, fetch, sel_err};
use super::stack::{add_sp, load_flags, peek, push};
use super::{stack, task, Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{reg, sreg, CpuState, RunState, Segment};
use x86bt_machine::Machine;

/// Delivers interrupt `vector` in real mode, returning to `ret_ip`.
pub fn deliver_real(cpu: &mut CpuState, m: &mut Machine, vector: u8, ret_ip: u64) -> Exec {
    let off = u64::from(vector) * 4;
    if off + 3 > u64::from(cpu.idtr.limit) {
        return Err(Exception::GeneralProtection(u16::from(vector) * 8 + 2));
    }
    let entry = mmu::table_linear(cpu, cpu.idtr.base, off);
    let ip = mmu::read_lin(cpu, m, entry, 2)?;
    let cs = mmu::read_lin(cpu, m, entry.add(2), 2)?;
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

/// Where an event comes from: it decides the gate-DPL check and the EXT bit of
/// error codes raised while delivering it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// INT n, INT3, INTO: the gate's DPL must be >= CPL.
    Soft,
    /// A trap-class exception raised by an instruction.
    Exception,
    /// A fault-class exception: the EFLAGS image pushed in protected mode has
    /// RF set, so the restarted instruction does not re-trigger an instruction
    /// breakpoint (SDM vol. 3A §17.3.1.1).
    Fault,
    /// A hardware interrupt (or INT1/ICEBP, which behaves like one).
    External,
}

/// Delivers `vector` to the guest, returning to `ret_ip`.
pub fn deliver(
    cpu: &mut CpuState,
    m: &mut Machine,
    vector: u8,
    error: Option<u32>,
    ret_ip: u64,
    src: Source,
) -> Exec {
    if !cpu.protected() {
        return deliver_real(cpu, m, vector, ret_ip);
    }
    if super::long::ia32e(cpu) {
        return super::long::deliver(cpu, m, vector, error, ret_ip, src);
    }
    deliver_pm(cpu, m, vector, error, ret_ip, src)
}

/// Protected-mode and V86 delivery through the IDT (SDM vol. 3A §6.12, vol. 2A
/// INT n, "PROTECTED-MODE" and "INTER-PRIVILEGE-LEVEL-INTERRUPT").
fn deliver_pm(
    cpu: &mut CpuState,
    m: &mut Machine,
    vector: u8,
    error: Option<u32>,
    ret_ip: u64,
    src: Source,
) -> Exec {
    let ext: u16 = u16::from(src != Source::Soft);
    let idt_err = u16::from(vector) * 8 + 2 + ext;
    if src == Source::Soft && cpu.v86() && cpu.iopl() < 3 {
        return Err(Exception::GeneralProtection(0));
    }
    let off = u64::from(vector) * 8;
    if off + 7 > u64::from(cpu.idtr.limit) {
        return Err(Exception::GeneralProtection(idt_err));
    }
    let gate = protected::read_desc(cpu, m, cpu.idtr.base, off)?;
    let typ = gate.typ();
    if gate.is_segment() || !matches!(typ, 0x5 | 0x6 | 0x7 | 0xE | 0xF) {
        return Err(Exception::GeneralProtection(idt_err));
    }
    let cpl = cpu.cpl();
    if src == Source::Soft && gate.dpl() < cpl {
        return Err(Exception::GeneralProtection(idt_err));
    }
    if !gate.present() {
        return Err(Exception::SegmentNotPresent(idt_err));
    }
    if typ == 0x5 {
        cpu.next_rip = ret_ip;
        task::switch_through(cpu, m, gate.gate_selector(), gate, task::Reason::Int, error)?;
        cpu.rip = cpu.next_rip;
        return Ok(());
    }
    let sel = gate.gate_selector();
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(ext));
    }
    let (d, addr) =
        fetch(cpu, m, sel).map_err(|_| Exception::GeneralProtection(sel_err(sel) | ext))?;
    if !d.is_code() || d.dpl() > cpl {
        return Err(Exception::GeneralProtection(sel_err(sel) | ext));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel) | ext));
    }
    let gate32 = typ & 8 != 0;
    let size = if gate32 { 4 } else { 2 };
    let target = if gate32 {
        gate.gate_offset()
    } else {
        gate.gate_offset() & 0xFFFF
    };
    if target > u64::from(d.limit()) {
        return Err(Exception::GeneralProtection(ext));
    }
    let mut image = stack::flags_image(cpu) | (cpu.rflags & VM);
    if src == Source::Fault {
        image |= RF;
    }
    let old_cs = u64::from(cpu.seg[sreg::CS].selector);
    let from_v86 = cpu.v86();
    let (new_cpl, new_ss, mut sp) = if !d.conforming() && d.dpl() < cpl {
        let new_cpl = d.dpl();
        if from_v86 && new_cpl != 0 {
            return Err(Exception::GeneralProtection(sel_err(sel) | ext));
        }
        let (ss_sel, sp) = protected::tss_stack(cpu, m, new_cpl)?;
        let ss = protected::check_new_ss(cpu, m, ss_sel, new_cpl, ext)?;
        (new_cpl, Some(ss), sp)
    } else if from_v86 {
        return Err(Exception::GeneralProtection(sel_err(sel) | ext));
    } else {
        (cpl, None, cpu.gpr[reg::RSP])
    };
    let ss = new_ss.unwrap_or(cpu.seg[sreg::SS]);
    let mut frame: [u64; 11] = [0; 11];
    let mut n = 0;
    if new_ss.is_some() {
        if from_v86 {
            for s in [sreg::GS, sreg::FS, sreg::DS, sreg::ES] {
                frame[n] = u64::from(cpu.seg[s].selector);
                n += 1;
            }
        }
        frame[n] = u64::from(cpu.seg[sreg::SS].selector);
        frame[n + 1] = cpu.gpr[reg::RSP];
        n += 2;
    }
    frame[n] = image;
    frame[n + 1] = old_cs;
    frame[n + 2] = ret_ip;
    n += 3;
    if let Some(code) = error {
        frame[n] = u64::from(code);
        n += 1;
    }
    for v in &frame[..n] {
        protected::push_to(cpu, m, &ss, &mut sp, *v, size, new_cpl)?;
    }
    // Commit.
    if let Some(ss) = new_ss {
        cpu.seg[sreg::SS] = ss;
        if from_v86 {
            for s in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
                cpu.seg[s] = Segment {
                    selector: 0,
                    attrs: 0,
                    limit: 0,
                    base: 0,
                };
            }
        }
    }
    protected::set_sp(cpu, &ss, sp);
    protected::set_accessed(cpu, m, d, addr)?;
    let mut cs = d.segment((sel & !3) | u16::from(new_cpl));
    cs.attrs |= crate::state::seg_attr::ACCESSED;
    cpu.seg[sreg::CS] = cs;
    cpu.rflags &= !(TF | NT | RF | VM);
    if typ & 1 == 0 {
        cpu.rflags &= !IF;
    }
    cpu.rip = target;
    cpu.next_rip = target;
    Ok(())
}

/// Raises a fault or trap whose return address is `ret_ip`, with the SDM's
/// double-fault rules (vol. 3A §6.15, Table 6-5): a contributory exception during
/// a contributory one, or a contributory or #PF during a #PF, becomes #DF; any
/// exception while delivering #DF shuts the CPU down (a triple fault). Other
/// combinations deliver the second exception.
pub fn raise(cpu: &mut CpuState, m: &mut Machine, e: Exception, ret_ip: u64) {
    if trace_exceptions() {
        let mode = crate::mode::CpuMode::of(cpu);
        let mut bytes = String::new();
        if let Ok((_, phys)) = crate::engine::code_address(cpu, m, mode) {
            for i in 0..12 {
                let b = m.mem.read_u8(x86bt_machine::GuestPhys(phys + i));
                bytes.push_str(&format!("{b:02x} "));
            }
        }
        eprintln!(
            "x86bt: trace: {} at {:04x}:{:x} [{bytes}] {mode:?} (icount {}, cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} rsp={:#x})",
            e.describe(),
            cpu.seg[sreg::CS].selector,
            cpu.rip,
            cpu.icount,
            cpu.cr0,
            cpu.cr3,
            cpu.cr4,
            cpu.efer,
            cpu.gpr[reg::RSP]
        );
    }
    let mut first = e;
    for _ in 0..4 {
        if let Some(addr) = first.page_fault_addr() {
            cpu.cr2 = addr;
        }
        // Every fault but an instruction-breakpoint #DB pushes RF = 1; traps
        // (#DB single-step and data breakpoints, #BP, #OF) push it as it is.
        let src = if matches!(
            first,
            Exception::Debug | Exception::Breakpoint | Exception::Overflow
        ) {
            Source::Exception
        } else {
            Source::Fault
        };
        let second = match deliver(cpu, m, first.vector(), error_code(cpu, first), ret_ip, src) {
            Ok(()) => return,
            Err(second) => second,
        };
        if first == Exception::DoubleFault {
            break;
        }
        let pf = |x: Exception| matches!(x, Exception::PageFault { .. });
        let double = (first.is_contributory() && second.is_contributory())
            || (pf(first) && (pf(second) || second.is_contributory()));
        first = if double {
            Exception::DoubleFault
        } else {
            second
        };
    }
    cpu.run_state = RunState::Shutdown;
}

/// Whether `X86BT_TRACE=exceptions` asks for every exception on stderr (a
/// debugging aid for guests that fault early; read once).
fn trace_exceptions() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("X86BT_TRACE").is_ok_and(|v| v.contains("exceptions")))
}

/// The error code an exception pushes: none in real mode.
fn error_code(cpu: &CpuState, e: Exception) -> Option<u32> {
    if cpu.protected() {
        e.error_code()
    } else {
        None
    }
}

/// Delivers `vector` for an instruction that raises it (INT n, INT3, INT1,
/// INTO), returning to the next instruction. [`deliver`] sets RIP to the
/// handler as well as `next_rip`, as delivery from the run loop needs; the
/// instruction's own RIP is put back, so that the instruction step moves to
/// `next_rip` as after any transfer, rather than taking the delivery for the
/// instruction restarting itself (which ends its unit with an event, and
/// would keep translated code from going on to the handler's unit).
fn deliver_soft(cpu: &mut CpuState, m: &mut Machine, vector: u8, src: Source) -> Exec {
    let at = cpu.rip;
    deliver(cpu, m, vector, None, cpu.next_rip, src)?;
    cpu.rip = at;
    Ok(())
}

/// INT imm8: a trap that returns to the next instruction.
pub fn int_n(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let v = match insn.ops[0] {
        Opnd::Imm(v) => v as u8,
        _ => 0,
    };
    deliver_soft(cpu, m, v, Source::Soft)
}

/// INT3.
pub fn int3(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    deliver_soft(cpu, m, 3, Source::Soft)
}

/// INT1 (ICEBP, F1): a #DB trap.
pub fn int1(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    deliver_soft(cpu, m, 1, Source::External)
}

/// INTO: INT 4 if OF is set.
pub fn into(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    if cpu.rflags & OF != 0 {
        deliver_soft(cpu, m, 4, Source::Soft)
    } else {
        Ok(())
    }
}

/// IRET/IRETD.
pub fn iret(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    if super::long::ia32e(cpu) {
        return super::long::iret(cpu, m, size);
    }
    if cpu.v86() {
        return protected::iret_v86(cpu, m, size);
    }
    if cpu.protected() {
        return protected::iret_pm(cpu, m, size);
    }
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
    match deliver(cpu, m, vector, None, ret_ip, Source::External) {
        Ok(()) => {}
        Err(e) => raise(cpu, m, e, ret_ip),
    }
}
