//! The descriptor instructions: LLDT, LTR, SLDT, STR, LAR, LSL, VERR, VERW, ARPL.
//! All but SLDT/STR/ARPL-in-register-form need protected mode; in real and V86
//! mode they raise #UD (SDM vol. 2, "Real-Address Mode Exceptions").

use super::ops::*;
use super::protected::{fetch, sel_err, Desc};
use super::system::require_cpl0;
use super::task::load_ldt;
use super::{Exec, Insn};
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::ZF;
use crate::state::CpuState;
use x86bt_machine::Machine;

fn pm_only(cpu: &CpuState) -> Exec {
    if !cpu.protected() || cpu.v86() {
        Err(Exception::InvalidOpcode)
    } else {
        Ok(())
    }
}

/// SLDT and STR: store the LDTR or TR selector (a register destination gets it
/// zero-extended; memory is always 16 bits).
pub fn sldt_str<const TR: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pm_only(cpu)?;
    let v = u64::from(if TR {
        cpu.tr.selector
    } else {
        cpu.ldtr.selector
    });
    let size = if insn.ops[0] == super::Opnd::Mem {
        2
    } else {
        insn.size()
    };
    write_op(cpu, m, insn, 0, size, v)
}

/// LLDT r/m16.
pub fn lldt(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pm_only(cpu)?;
    require_cpl0(cpu)?;
    let sel = read_op(cpu, m, insn, 0, 2)? as u16;
    load_ldt(cpu, m, sel, false)
}

/// LTR r/m16: loads TR from an available TSS and marks it busy.
pub fn ltr(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pm_only(cpu)?;
    require_cpl0(cpu)?;
    let sel = read_op(cpu, m, insn, 0, 2)? as u16;
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    if sel & 4 != 0 {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let long = super::long::ia32e(cpu);
    // IA-32e mode: a 16-byte descriptor, available 64-bit TSS (type 9) only.
    let (d, base, addr) = if long {
        let (d16, addr) = super::long::fetch16(cpu, m, sel)?;
        (d16.low, d16.base(), addr)
    } else {
        let (d, addr) = fetch(cpu, m, sel)?;
        (d, d.base(), addr)
    };
    let ok_type = if long {
        d.typ() == 0x9
    } else {
        matches!(d.typ(), 0x1 | 0x9)
    };
    if d.is_segment() || !ok_type {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    let busy = d.hi | (1 << 9);
    let lin = mmu::table_linear(cpu, addr, 4);
    mmu::write_sys(cpu, m, lin, 4, u64::from(busy))?;
    cpu.tr = Desc { lo: d.lo, hi: busy }.segment(sel);
    cpu.tr.base = base;
    Ok(())
}

/// Fetches the descriptor for LAR/LSL/VERR/VERW, or None when the selector is
/// null or beyond its table (ZF = 0 then, no fault).
fn probe(cpu: &mut CpuState, m: &mut Machine, sel: u16) -> Result<Option<Desc>, Exception> {
    if sel & 0xFFFC == 0 {
        return Ok(None);
    }
    match fetch(cpu, m, sel) {
        Ok((d, _)) => Ok(Some(d)),
        Err(Exception::GeneralProtection(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The privilege test of LAR/LSL/VERR/VERW: conforming code is always visible;
/// everything else needs DPL >= max(CPL, RPL).
fn visible(cpu: &CpuState, sel: u16, d: Desc) -> bool {
    d.conforming() || d.dpl() >= cpu.cpl().max((sel & 3) as u8)
}

fn set_zf(cpu: &mut CpuState, on: bool) {
    if on {
        cpu.rflags |= ZF;
    } else {
        cpu.rflags &= !ZF;
    }
}

/// LAR r, r/m16: the access-rights bytes of a descriptor.
pub fn lar(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pm_only(cpu)?;
    let size = insn.size();
    let sel = read_op(cpu, m, insn, 1, 2)? as u16;
    let ok = probe(cpu, m, sel)?.filter(|d| {
        (d.is_segment() || matches!(d.typ(), 1 | 2 | 3 | 4 | 5 | 9 | 0xB | 0xC))
            && visible(cpu, sel, *d)
    });
    set_zf(cpu, ok.is_some());
    if let Some(d) = ok {
        write_op(cpu, m, insn, 0, size, u64::from(d.hi & 0x00F0_FF00))?;
    }
    Ok(())
}

/// LSL r, r/m16: the scaled limit of a descriptor.
pub fn lsl(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pm_only(cpu)?;
    let size = insn.size();
    let sel = read_op(cpu, m, insn, 1, 2)? as u16;
    let ok = probe(cpu, m, sel)?.filter(|d| {
        (d.is_segment() || matches!(d.typ(), 1 | 2 | 3 | 9 | 0xB)) && visible(cpu, sel, *d)
    });
    set_zf(cpu, ok.is_some());
    if let Some(d) = ok {
        write_op(cpu, m, insn, 0, size, u64::from(d.limit()))?;
    }
    Ok(())
}

/// VERR and VERW r/m16: whether the segment is readable / writable at CPL.
pub fn verr_verw<const WRITE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pm_only(cpu)?;
    let sel = read_op(cpu, m, insn, 0, 2)? as u16;
    let ok = probe(cpu, m, sel)?.is_some_and(|d| {
        if !d.is_segment() {
            return false;
        }
        let usable = if WRITE {
            !d.is_code() && d.typ() & 2 != 0
        } else {
            !d.is_code() || d.typ() & 2 != 0
        };
        usable && visible(cpu, sel, d)
    });
    set_zf(cpu, ok);
    Ok(())
}

/// ARPL r/m16, r16: raise the destination's RPL to the source's.
pub fn arpl(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    pm_only(cpu)?;
    let d = loc(cpu, insn, 0);
    let dst = load(cpu, m, d, 2)?;
    let src = read_op(cpu, m, insn, 1, 2)?;
    if dst & 3 < src & 3 {
        store(cpu, m, d, 2, (dst & !3) | (src & 3))?;
        set_zf(cpu, true);
    } else {
        set_zf(cpu, false);
    }
    Ok(())
}
