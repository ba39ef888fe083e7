//! Hardware task switching through a TSS, by JMP, CALL, INT (task gates) and IRET
//! with NT set (SDM vol. 3A §7.3): busy bits, NT and the back link, CR3 and LDTR
//! reloads, and the #TS checks on the new task's segments.
//!
//! The switch saves the old task, then commits to the new one; faults while
//! loading the new task's segments are raised in the new task's context, as on
//! hardware.

use super::protected::{fetch, load_seg_pm, sel_err, v86_segment, Desc};
use super::Exec;
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{cr0, seg_attr, sreg, CpuState, Segment};
use x86bt_machine::Machine;

/// What started the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// JMP to a TSS or task gate.
    Jmp,
    /// CALL to a TSS or task gate.
    Call,
    /// An interrupt or exception through a task gate.
    Int,
    /// IRET with NT set.
    Iret,
}

const BUSY: u32 = 1 << 9;

fn set_busy(cpu: &mut CpuState, m: &mut Machine, sel: u16, busy: bool) -> Exec {
    let (d, addr) = fetch(cpu, m, sel)?;
    let hi = if busy { d.hi | BUSY } else { d.hi & !BUSY };
    let lin = mmu::table_linear(cpu, addr, 4);
    mmu::write_sys(cpu, m, lin, 4, u64::from(hi))
}

/// Switches to the task whose TSS descriptor `d` selector `sel` names (reached
/// directly or through a task gate; the caller has checked the gate).
pub fn switch_through(
    cpu: &mut CpuState,
    m: &mut Machine,
    sel: u16,
    d: Desc,
    reason: Reason,
    error: Option<u32>,
) -> Exec {
    let (tss_sel, tss) = if d.typ() == 0x5 {
        let t = d.gate_selector();
        if t & 4 != 0 {
            return Err(Exception::GeneralProtection(sel_err(t)));
        }
        let (td, _) = fetch(cpu, m, t)?;
        (t, td)
    } else {
        (sel, d)
    };
    if tss_sel & 4 != 0 || tss.is_segment() || !matches!(tss.typ(), 0x1 | 0x9) {
        return Err(Exception::GeneralProtection(sel_err(tss_sel)));
    }
    if !tss.present() {
        return Err(Exception::SegmentNotPresent(sel_err(tss_sel)));
    }
    switch(cpu, m, tss_sel, tss, reason, error)
}

/// IRET with NT: return to the task in the back link, which must be busy.
pub fn switch_back(cpu: &mut CpuState, m: &mut Machine, back: u16) -> Exec {
    if back & 4 != 0 {
        return Err(Exception::InvalidTss(sel_err(back)));
    }
    let (d, _) = fetch(cpu, m, back).map_err(|_| Exception::InvalidTss(sel_err(back)))?;
    if d.is_segment() || !matches!(d.typ(), 0x3 | 0xB) {
        return Err(Exception::InvalidTss(sel_err(back)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(back)));
    }
    switch(cpu, m, back, d, Reason::Iret, None)
}

fn switch(
    cpu: &mut CpuState,
    m: &mut Machine,
    sel: u16,
    d: Desc,
    reason: Reason,
    error: Option<u32>,
) -> Exec {
    let new32 = d.typ() & 8 != 0;
    let min_limit = if new32 { 0x67 } else { 0x2B };
    if d.limit() < min_limit {
        return Err(Exception::InvalidTss(sel_err(sel)));
    }
    let new_base = d.base();
    // Save the outgoing task.
    let old = cpu.tr;
    let old32 = old.attrs & 0x8 != 0;
    let mut flags_out = cpu.rflags;
    if reason == Reason::Iret {
        flags_out &= !NT;
    }
    let w = |cpu: &mut CpuState, m: &mut Machine, off: u64, size: u32, v: u64| {
        let lin = mmu::table_linear(cpu, old.base, off);
        mmu::write_sys(cpu, m, lin, size, v)
    };
    if old32 {
        w(cpu, m, 0x20, 4, cpu.next_rip)?;
        w(cpu, m, 0x24, 4, flags_out & 0xFFFF_FFFF)?;
        for i in 0..8 {
            w(cpu, m, 0x28 + 4 * i as u64, 4, cpu.gpr[i] & 0xFFFF_FFFF)?;
        }
        for s in 0..6 {
            w(
                cpu,
                m,
                0x48 + 4 * s as u64,
                2,
                u64::from(cpu.seg[s].selector),
            )?;
        }
    } else {
        w(cpu, m, 0x0E, 2, cpu.next_rip & 0xFFFF)?;
        w(cpu, m, 0x10, 2, flags_out & 0xFFFF)?;
        for i in 0..8 {
            w(cpu, m, 0x12 + 2 * i as u64, 2, cpu.gpr[i] & 0xFFFF)?;
        }
        for s in 0..4 {
            w(
                cpu,
                m,
                0x22 + 2 * s as u64,
                2,
                u64::from(cpu.seg[s].selector),
            )?;
        }
    }
    // Read the incoming task.
    let r = |cpu: &mut CpuState, m: &mut Machine, off: u64, size: u32| {
        let lin = mmu::table_linear(cpu, new_base, off);
        mmu::read_sys(cpu, m, lin, size)
    };
    let mut gpr = [0u64; 8];
    let mut sels = [0u16; 6];
    let (eip, mut eflags, cr3, ldt);
    if new32 {
        cr3 = Some(r(cpu, m, 0x1C, 4)?);
        eip = r(cpu, m, 0x20, 4)?;
        eflags = r(cpu, m, 0x24, 4)?;
        for (i, g) in gpr.iter_mut().enumerate() {
            *g = r(cpu, m, 0x28 + 4 * i as u64, 4)?;
        }
        for (s, v) in sels.iter_mut().enumerate() {
            *v = r(cpu, m, 0x48 + 4 * s as u64, 2)? as u16;
        }
        ldt = r(cpu, m, 0x60, 2)? as u16;
    } else {
        cr3 = None;
        eip = r(cpu, m, 0x0E, 2)?;
        eflags = r(cpu, m, 0x10, 2)? | (cpu.rflags & !0xFFFF & !VM);
        // A 16-bit TSS holds only the low words; the SDM leaves the upper halves
        // undefined. They read as all ones, as QEMU and Bochs leave them.
        for (i, g) in gpr.iter_mut().enumerate() {
            *g = r(cpu, m, 0x12 + 2 * i as u64, 2)? | 0xFFFF_0000;
        }
        for (s, v) in sels.iter_mut().enumerate().take(4) {
            *v = r(cpu, m, 0x22 + 2 * s as u64, 2)? as u16;
        }
        ldt = r(cpu, m, 0x2A, 2)? as u16;
    }
    // Busy bits and the back link.
    if matches!(reason, Reason::Jmp | Reason::Iret) {
        set_busy(cpu, m, old.selector, false)?;
    }
    if matches!(reason, Reason::Call | Reason::Int) {
        let lin = mmu::table_linear(cpu, new_base, 0);
        mmu::write_sys(cpu, m, lin, 2, u64::from(old.selector))?;
        eflags |= NT;
    }
    if reason != Reason::Iret {
        set_busy(cpu, m, sel, true)?;
    }
    // Commit: from here on faults belong to the new task.
    cpu.tr = Segment {
        selector: sel,
        attrs: d.attrs() | 0x2,
        limit: d.limit(),
        base: new_base,
    };
    cpu.cr0 |= cr0::TS;
    if let Some(cr3) = cr3 {
        if cpu.cr0 & cr0::PG != 0 {
            cpu.cr3 = cr3 & 0xFFFF_FFFF;
            cpu.tlb.flush(true);
        }
    }
    cpu.rflags = (eflags & 0x3F_7FD5) | FIXED1;
    for (i, g) in gpr.iter().enumerate() {
        cpu.gpr[i] = g & 0xFFFF_FFFF;
    }
    cpu.next_rip = eip & 0xFFFF_FFFF;
    for (s, v) in sels.iter().enumerate() {
        cpu.seg[s].selector = *v;
    }
    load_ldt(cpu, m, ldt, true)?;
    if cpu.v86() {
        for (s, v) in sels.iter().enumerate() {
            cpu.seg[s] = v86_segment(*v);
        }
    } else {
        load_task_cs(cpu, m, sels[sreg::CS])?;
        load_seg_pm(cpu, m, sreg::SS, sels[sreg::SS], true)?;
        for s in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
            load_seg_pm(cpu, m, s, sels[s], true)?;
        }
    }
    if cpu.next_rip > u64::from(cpu.seg[sreg::CS].limit) {
        return Err(Exception::GeneralProtection(0));
    }
    if let Some(code) = error {
        let size = if new32 { 4 } else { 2 };
        super::stack::push(cpu, m, u64::from(code), size)?;
    }
    Ok(())
}

fn load_task_cs(cpu: &mut CpuState, m: &mut Machine, sel: u16) -> Exec {
    if sel & 0xFFFC == 0 {
        return Err(Exception::InvalidTss(0));
    }
    let (d, _) = fetch(cpu, m, sel).map_err(|_| Exception::InvalidTss(sel_err(sel)))?;
    if !d.is_code() {
        return Err(Exception::InvalidTss(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    let mut seg = d.segment(sel);
    seg.attrs |= seg_attr::ACCESSED;
    cpu.seg[sreg::CS] = seg;
    // The new CPL is the CS RPL; SS (loaded next) must match it.
    cpu.seg[sreg::SS].attrs = (cpu.seg[sreg::SS].attrs & !(3 << 5)) | ((sel & 3) << 5);
    Ok(())
}

/// Loads LDTR (LLDT, task switch). `ts` reports faults as #TS.
pub fn load_ldt(cpu: &mut CpuState, m: &mut Machine, sel: u16, ts: bool) -> Exec {
    let err = |sel: u16| {
        if ts {
            Exception::InvalidTss(sel_err(sel))
        } else {
            Exception::GeneralProtection(sel_err(sel))
        }
    };
    if sel & 0xFFFC == 0 {
        cpu.ldtr = Segment {
            selector: sel,
            attrs: 0,
            limit: 0,
            base: 0,
        };
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(err(sel));
    }
    let (d, base) = if super::long::ia32e(cpu) {
        let (d16, _) = super::long::fetch16(cpu, m, sel).map_err(|_| err(sel))?;
        (d16.low, d16.base())
    } else {
        let (d, _) = fetch(cpu, m, sel).map_err(|_| err(sel))?;
        (d, d.base())
    };
    if d.is_segment() || d.typ() != 0x2 {
        return Err(err(sel));
    }
    if !d.present() {
        return Err(if ts {
            Exception::InvalidTss(sel_err(sel))
        } else {
            Exception::SegmentNotPresent(sel_err(sel))
        });
    }
    cpu.ldtr = d.segment(sel);
    cpu.ldtr.base = base;
    Ok(())
}
