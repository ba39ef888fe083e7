//! Protected-mode segmentation: descriptor fetch and checks, segment register
//! loads with the SDM's exceptions and error codes, far JMP/CALL/RET and IRET
//! across privilege levels, call gates, and V86 entry and exit (SDM vol. 3A
//! chapters 3, 5 and 20; vol. 2 JMP, CALL, RET, IRET, MOV, POP).
//!
//! Every transfer checks everything first and commits registers last, so a fault
//! leaves the architectural state as it was before the instruction.

use super::ops::mask;
use super::stack::{add_sp, peek, stack_flags_load};
use super::task;
use super::Exec;
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{cr0, reg, seg_attr, sreg, CpuState, Segment};
use x86bt_machine::{Linear, Machine};

/// A raw 8-byte descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Bytes 0-3.
    pub lo: u32,
    /// Bytes 4-7.
    pub hi: u32,
}

impl Desc {
    /// Segment base.
    pub fn base(self) -> u64 {
        u64::from((self.lo >> 16) | ((self.hi & 0xFF) << 16) | (self.hi & 0xFF00_0000))
    }
    /// Limit in bytes, scaled by G.
    pub fn limit(self) -> u32 {
        let l = (self.lo & 0xFFFF) | (self.hi & 0xF_0000);
        if self.hi & (1 << 23) != 0 {
            (l << 12) | 0xFFF
        } else {
            l
        }
    }
    /// Attributes in the [`Segment::attrs`] layout.
    pub fn attrs(self) -> u16 {
        (((self.hi >> 8) & 0xFF) | (((self.hi >> 20) & 0xF) << 12)) as u16
    }
    /// DPL.
    pub fn dpl(self) -> u8 {
        ((self.hi >> 13) & 3) as u8
    }
    /// Present bit.
    pub fn present(self) -> bool {
        self.hi & (1 << 15) != 0
    }
    /// Code or data (S = 1).
    pub fn is_segment(self) -> bool {
        self.hi & (1 << 12) != 0
    }
    /// The 4-bit type field.
    pub fn typ(self) -> u8 {
        ((self.hi >> 8) & 0xF) as u8
    }
    /// A code segment.
    pub fn is_code(self) -> bool {
        self.is_segment() && self.typ() & 8 != 0
    }
    /// A conforming code segment.
    pub fn conforming(self) -> bool {
        self.is_code() && self.typ() & 4 != 0
    }
    /// Gate target selector.
    pub fn gate_selector(self) -> u16 {
        (self.lo >> 16) as u16
    }
    /// Gate target offset (32-bit gates; callers mask for 286 gates).
    pub fn gate_offset(self) -> u64 {
        u64::from((self.lo & 0xFFFF) | (self.hi & 0xFFFF_0000))
    }
    /// The descriptor as a loaded segment.
    pub fn segment(self, selector: u16) -> Segment {
        Segment {
            selector,
            attrs: self.attrs(),
            limit: self.limit(),
            base: self.base(),
        }
    }
}

/// The error code for a selector.
#[inline]
pub fn sel_err(sel: u16) -> u16 {
    sel & 0xFFFC
}

/// Reads the descriptor `sel` names, from the GDT or the LDT. Returns it and its
/// linear address; a selector beyond the table's limit raises #GP(sel).
pub fn fetch(cpu: &mut CpuState, m: &mut Machine, sel: u16) -> Result<(Desc, u64), Exception> {
    let (base, limit) = if sel & 4 != 0 {
        if cpu.ldtr.attrs & seg_attr::P == 0 {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        (cpu.ldtr.base, u64::from(cpu.ldtr.limit))
    } else {
        (cpu.gdtr.base, u64::from(cpu.gdtr.limit))
    };
    let off = u64::from(sel & 0xFFF8);
    if off + 7 > limit {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let addr = mmu::table_linear(cpu, base, off);
    Ok((read_desc(cpu, m, base, off)?, addr.0))
}

/// Reads the 8-byte descriptor or gate at byte `off` of the system table at
/// linear `base`: as two dword reads, low then high, or as one read when the
/// fast TLB answers for all eight bytes (plain RAM on one page, where the
/// two reads could not differ from it).
#[inline]
pub fn read_desc(
    cpu: &mut CpuState,
    m: &mut Machine,
    base: u64,
    off: u64,
) -> Result<Desc, Exception> {
    let addr = mmu::table_linear(cpu, base, off);
    if let Some(v) = mmu::fast_read_sys(cpu, m, addr, 8) {
        return Ok(Desc {
            lo: v as u32,
            hi: (v >> 32) as u32,
        });
    }
    let hi_at = mmu::table_linear(cpu, base, off + 4);
    let lo = mmu::read_sys(cpu, m, addr, 4)? as u32;
    let hi = mmu::read_sys(cpu, m, hi_at, 4)? as u32;
    Ok(Desc { lo, hi })
}

/// Sets the accessed bit of a code/data descriptor in memory.
pub fn set_accessed(cpu: &mut CpuState, m: &mut Machine, d: Desc, addr: u64) -> Exec {
    if d.is_segment() && d.hi & (1 << 8) == 0 {
        let lin = mmu::table_linear(cpu, addr, 5);
        mmu::write_sys(cpu, m, lin, 1, u64::from((d.hi >> 8) as u8 | 1))?;
    }
    Ok(())
}

/// A V86-mode segment: base = sel << 4, 64 KiB, DPL 3 read/write data.
pub fn v86_segment(sel: u16) -> Segment {
    Segment {
        selector: sel,
        attrs: seg_attr::P | seg_attr::S | seg_attr::RW | seg_attr::ACCESSED | (3 << 5),
        limit: 0xFFFF,
        base: u64::from(sel) << 4,
    }
}

/// An unusable (null-loaded) data segment.
fn null_segment(sel: u16) -> Segment {
    Segment {
        selector: sel,
        attrs: 0,
        limit: 0,
        base: 0,
    }
}

/// Loads segment register `s` (not CS) with `sel`, with the checks of the mode.
/// `ts` turns the would-be #GP/#NP/#SS into #TS, as a task switch requires.
pub fn load_seg(cpu: &mut CpuState, m: &mut Machine, s: usize, sel: u16) -> Exec {
    if !cpu.protected() {
        cpu.load_seg_real(s, sel);
        return Ok(());
    }
    if cpu.v86() {
        cpu.seg[s] = v86_segment(sel);
        return Ok(());
    }
    load_seg_pm(cpu, m, s, sel, false)
}

/// The protected-mode part of [`load_seg`].
pub fn load_seg_pm(cpu: &mut CpuState, m: &mut Machine, s: usize, sel: u16, ts: bool) -> Exec {
    let cpl = cpu.cpl();
    let gp = |sel: u16| {
        if ts {
            Exception::InvalidTss(sel_err(sel))
        } else {
            Exception::GeneralProtection(sel_err(sel))
        }
    };
    if sel & 0xFFFC == 0 {
        if s == sreg::SS {
            // 64-bit mode allows a null SS below CPL 3 with RPL = CPL.
            if mmu::in_64bit(cpu) && cpl < 3 && (sel & 3) as u8 == cpl {
                cpu.seg[s] = Segment {
                    selector: sel,
                    ..super::long::null_stack(cpl)
                };
                return Ok(());
            }
            return Err(gp(0));
        }
        cpu.seg[s] = null_segment(sel);
        return Ok(());
    }
    let (d, addr) = fetch(cpu, m, sel).map_err(|e| {
        if ts {
            Exception::InvalidTss(sel_err(sel))
        } else {
            e
        }
    })?;
    let rpl = (sel & 3) as u8;
    if s == sreg::SS {
        let writable_data = d.is_segment() && !d.is_code() && d.typ() & 2 != 0;
        if rpl != cpl || d.dpl() != cpl || !writable_data {
            return Err(gp(sel));
        }
        if !d.present() {
            return Err(if ts {
                Exception::InvalidTss(sel_err(sel))
            } else {
                Exception::StackFault(sel_err(sel))
            });
        }
    } else {
        let readable = d.is_segment() && (!d.is_code() || d.typ() & 2 != 0);
        if !readable {
            return Err(gp(sel));
        }
        if !d.conforming() && d.dpl() < rpl.max(cpl) {
            return Err(gp(sel));
        }
        if !d.present() {
            return Err(if ts {
                Exception::InvalidTss(sel_err(sel))
            } else {
                Exception::SegmentNotPresent(sel_err(sel))
            });
        }
    }
    set_accessed(cpu, m, d, addr)?;
    let mut seg = d.segment(sel);
    seg.attrs |= seg_attr::ACCESSED;
    cpu.seg[s] = seg;
    Ok(())
}

/// Checks a code-segment descriptor for a direct far JMP or CALL (not a gate).
fn check_direct_code(cpu: &CpuState, sel: u16, d: Desc) -> Exec {
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    let ok = if d.conforming() {
        d.dpl() <= cpl
    } else {
        rpl <= cpl && d.dpl() == cpl
    };
    if !ok {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    Ok(())
}

/// Loads CS with `d` at privilege `cpl` and sets the next IP after the limit check.
fn enter_code(
    cpu: &mut CpuState,
    m: &mut Machine,
    sel: u16,
    d: Desc,
    addr: u64,
    off: u64,
    cpl: u8,
) -> Exec {
    let attrs = d.attrs();
    if cpu.efer & mmu::efer::LMA != 0 && attrs & seg_attr::L != 0 {
        // A 64-bit code segment: L with D is reserved; no limit, the target
        // must be canonical.
        if attrs & seg_attr::DB != 0 {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        if !mmu::canonical(off) {
            return Err(Exception::GeneralProtection(0));
        }
    } else if off > u64::from(d.limit()) {
        return Err(Exception::GeneralProtection(0));
    }
    set_accessed(cpu, m, d, addr)?;
    let mut seg = d.segment((sel & !3) | u16::from(cpl));
    seg.attrs |= seg_attr::ACCESSED;
    cpu.seg[sreg::CS] = seg;
    cpu.next_rip = off;
    Ok(())
}

/// What a gate leads to.
struct GateTarget {
    sel: u16,
    desc: Desc,
    addr: u64,
    off: u64,
    size32: bool,
    params: u32,
}

fn through_call_gate(
    cpu: &mut CpuState,
    m: &mut Machine,
    gate_sel: u16,
    gate: Desc,
) -> Result<GateTarget, Exception> {
    let cpl = cpu.cpl();
    let rpl = (gate_sel & 3) as u8;
    if gate.dpl() < cpl || gate.dpl() < rpl {
        return Err(Exception::GeneralProtection(sel_err(gate_sel)));
    }
    if !gate.present() {
        return Err(Exception::SegmentNotPresent(sel_err(gate_sel)));
    }
    let sel = gate.gate_selector();
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let (desc, addr) = fetch(cpu, m, sel)?;
    if !desc.is_code() || desc.dpl() > cpl {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !desc.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    let size32 = gate.typ() == 0xC;
    let off = if size32 {
        gate.gate_offset()
    } else {
        gate.gate_offset() & 0xFFFF
    };
    Ok(GateTarget {
        sel,
        desc,
        addr,
        off,
        size32,
        params: gate.hi & 0x1F,
    })
}

/// Far JMP in protected mode (SDM vol. 2A, JMP).
pub fn far_jump(cpu: &mut CpuState, m: &mut Machine, sel: u16, off: u64, size: u32) -> Exec {
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let (d, addr) = fetch(cpu, m, sel)?;
    let cpl = cpu.cpl();
    if d.is_segment() {
        if !d.is_code() {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        check_direct_code(cpu, sel, d)?;
        return enter_code(cpu, m, sel, d, addr, off & mask(size), cpl);
    }
    if super::long::ia32e(cpu) {
        // IA-32e mode: only 64-bit call gates (type 0xC, 16 bytes); 16-bit
        // gates and task gates are #GP(selector) (SDM vol. 3A §5.8.3.1).
        return match d.typ() {
            0xC => super::long::jump_through_gate(cpu, m, sel),
            _ => Err(Exception::GeneralProtection(sel_err(sel))),
        };
    }
    match d.typ() {
        0x4 | 0xC => {
            let t = through_call_gate(cpu, m, sel, d)?;
            let ok = if t.desc.conforming() {
                true
            } else {
                t.desc.dpl() == cpl
            };
            if !ok {
                return Err(Exception::GeneralProtection(sel_err(t.sel)));
            }
            enter_code(cpu, m, t.sel, t.desc, t.addr, t.off, cpl)
        }
        0x5 | 0x1 | 0x9 if cpu.efer & mmu::efer::LMA == 0 => {
            let rpl = (sel & 3) as u8;
            if d.dpl() < cpl || d.dpl() < rpl {
                return Err(Exception::GeneralProtection(sel_err(sel)));
            }
            if !d.present() {
                return Err(Exception::SegmentNotPresent(sel_err(sel)));
            }
            task::switch_through(cpu, m, sel, d, task::Reason::Jmp, None)
        }
        _ => Err(Exception::GeneralProtection(sel_err(sel))),
    }
}

/// Writes `v` (`size` bytes) below `*sp` on the stack segment `ss`, as privilege
/// `cpl` would, and moves `*sp` down.
/// Pushes onto an explicit stack segment (used by privilege-changing transfers).
pub fn push_to(
    cpu: &mut CpuState,
    m: &mut Machine,
    ss: &Segment,
    sp: &mut u64,
    v: u64,
    size: u32,
    cpl: u8,
) -> Exec {
    if mmu::in_64bit(cpu) {
        // 64-bit mode: RSP whatever SS.B says, no limit; a non-canonical
        // stack address is #SS(0).
        let nsp = sp.wrapping_sub(u64::from(size));
        if !mmu::canonical(nsp) || !mmu::canonical(nsp + u64::from(size) - 1) {
            return Err(Exception::StackFault(0));
        }
        let user = mmu::paging(cpu) && cpl == 3;
        mmu::write_lin_as(cpu, m, Linear(nsp), size, v, user)?;
        *sp = nsp;
        return Ok(());
    }
    let stack32 = ss.attrs & seg_attr::DB != 0;
    let smask = if stack32 { 0xFFFF_FFFF } else { 0xFFFF };
    let nsp = sp.wrapping_sub(u64::from(size)) & smask;
    let last = nsp + u64::from(size) - 1;
    let bad = if ss.attrs & seg_attr::DC != 0 {
        nsp <= u64::from(ss.limit) || last > smask
    } else {
        last > u64::from(ss.limit)
    };
    if bad {
        return Err(Exception::StackFault(
            if ss.selector == cpu.seg[sreg::SS].selector {
                0
            } else {
                sel_err(ss.selector)
            },
        ));
    }
    let lin = mmu::table_linear(cpu, ss.base, nsp);
    let user = mmu::paging(cpu) && cpl == 3;
    mmu::write_lin_as(cpu, m, lin, size, v, user)?;
    *sp = nsp;
    Ok(())
}

/// Reads the stack for privilege level `dpl` from the current TSS.
pub fn tss_stack(cpu: &mut CpuState, m: &mut Machine, dpl: u8) -> Result<(u16, u64), Exception> {
    let tr = cpu.tr;
    let t32 = tr.attrs & 0x8 != 0;
    let (sp_off, ss_off, sp_size) = if t32 {
        (4 + 8 * u64::from(dpl), 8 + 8 * u64::from(dpl), 4)
    } else {
        (2 + 4 * u64::from(dpl), 4 + 4 * u64::from(dpl), 2)
    };
    if ss_off + 1 > u64::from(tr.limit) {
        return Err(Exception::InvalidTss(sel_err(tr.selector)));
    }
    let (sp_at, ss_at) = (
        mmu::table_linear(cpu, tr.base, sp_off),
        mmu::table_linear(cpu, tr.base, ss_off),
    );
    if t32 {
        // ESPn and SSn are adjacent: one read when the fast TLB answers for
        // the eight bytes (plain RAM, nothing the split reads could see
        // differently; the limit check above stays the SDM's).
        if let Some(v) = mmu::fast_read_sys(cpu, m, sp_at, 8) {
            return Ok(((v >> 32) as u16, v & 0xFFFF_FFFF));
        }
    }
    let sp = mmu::read_sys(cpu, m, sp_at, sp_size)?;
    let ss = mmu::read_sys(cpu, m, ss_at, 2)? as u16;
    Ok((ss, sp))
}

/// Checks the stack segment a privilege change switches to (#TS as the SDM
/// specifies for interrupts and call gates). Returns the loaded segment.
pub fn check_new_ss(
    cpu: &mut CpuState,
    m: &mut Machine,
    ss: u16,
    dpl: u8,
    ext: u16,
) -> Result<Segment, Exception> {
    if ss & 0xFFFC == 0 {
        return Err(Exception::InvalidTss(ext));
    }
    let (d, addr) = fetch(cpu, m, ss).map_err(|_| Exception::InvalidTss(sel_err(ss) | ext))?;
    let writable_data = d.is_segment() && !d.is_code() && d.typ() & 2 != 0;
    if (ss & 3) as u8 != dpl || d.dpl() != dpl || !writable_data {
        return Err(Exception::InvalidTss(sel_err(ss) | ext));
    }
    if !d.present() {
        return Err(Exception::StackFault(sel_err(ss) | ext));
    }
    set_accessed(cpu, m, d, addr)?;
    let mut seg = d.segment(ss);
    seg.attrs |= seg_attr::ACCESSED;
    Ok(seg)
}

/// Far CALL in protected mode (SDM vol. 2A, CALL).
pub fn far_call(cpu: &mut CpuState, m: &mut Machine, sel: u16, off: u64, size: u32) -> Exec {
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let (d, addr) = fetch(cpu, m, sel)?;
    let cpl = cpu.cpl();
    let ret_cs = u64::from(cpu.seg[sreg::CS].selector);
    let ret_ip = cpu.next_rip;
    let ss = cpu.seg[sreg::SS];
    let mut sp = cpu.gpr[reg::RSP];
    if d.is_segment() {
        if !d.is_code() {
            return Err(Exception::GeneralProtection(sel_err(sel)));
        }
        check_direct_code(cpu, sel, d)?;
        let off = off & mask(size);
        if off > u64::from(d.limit()) {
            return Err(Exception::GeneralProtection(0));
        }
        push_to(cpu, m, &ss, &mut sp, ret_cs, size, cpl)?;
        push_to(cpu, m, &ss, &mut sp, ret_ip, size, cpl)?;
        enter_code(cpu, m, sel, d, addr, off, cpl)?;
        set_sp(cpu, &ss, sp);
        return Ok(());
    }
    if super::long::ia32e(cpu) {
        return match d.typ() {
            0xC => super::long::call_through_gate(cpu, m, sel),
            _ => Err(Exception::GeneralProtection(sel_err(sel))),
        };
    }
    match d.typ() {
        0x4 | 0xC => {
            let t = through_call_gate(cpu, m, sel, d)?;
            let gsize = if t.size32 { 4 } else { 2 };
            if !t.desc.conforming() && t.desc.dpl() < cpl {
                // To an inner level: switch to the TSS stack and copy parameters.
                let new_cpl = t.desc.dpl();
                let (new_ss_sel, new_sp) = tss_stack(cpu, m, new_cpl)?;
                let new_ss = check_new_ss(cpu, m, new_ss_sel, new_cpl, 0)?;
                let mut nsp = new_sp;
                if t.off > u64::from(t.desc.limit()) {
                    return Err(Exception::GeneralProtection(0));
                }
                push_to(
                    cpu,
                    m,
                    &new_ss,
                    &mut nsp,
                    u64::from(ss.selector),
                    gsize,
                    new_cpl,
                )?;
                push_to(cpu, m, &new_ss, &mut nsp, sp, gsize, new_cpl)?;
                let old_mask = if ss.attrs & seg_attr::DB != 0 {
                    0xFFFF_FFFF
                } else {
                    0xFFFF
                };
                for i in (0..u64::from(t.params)).rev() {
                    let o = (sp + i * u64::from(gsize)) & old_mask;
                    let v = mmu::read(cpu, m, sreg::SS, o, gsize)?;
                    push_to(cpu, m, &new_ss, &mut nsp, v, gsize, new_cpl)?;
                }
                push_to(cpu, m, &new_ss, &mut nsp, ret_cs, gsize, new_cpl)?;
                push_to(cpu, m, &new_ss, &mut nsp, ret_ip, gsize, new_cpl)?;
                cpu.seg[sreg::SS] = new_ss;
                set_sp(cpu, &new_ss, nsp);
                enter_code(cpu, m, t.sel, t.desc, t.addr, t.off, new_cpl)
            } else {
                push_to(cpu, m, &ss, &mut sp, ret_cs, gsize, cpl)?;
                push_to(cpu, m, &ss, &mut sp, ret_ip, gsize, cpl)?;
                enter_code(cpu, m, t.sel, t.desc, t.addr, t.off, cpl)?;
                set_sp(cpu, &ss, sp);
                Ok(())
            }
        }
        0x5 | 0x1 | 0x9 if cpu.efer & mmu::efer::LMA == 0 => {
            let rpl = (sel & 3) as u8;
            if d.dpl() < cpl || d.dpl() < rpl {
                return Err(Exception::GeneralProtection(sel_err(sel)));
            }
            if !d.present() {
                return Err(Exception::SegmentNotPresent(sel_err(sel)));
            }
            task::switch_through(cpu, m, sel, d, task::Reason::Call, None)
        }
        _ => Err(Exception::GeneralProtection(sel_err(sel))),
    }
}

/// Sets SP or ESP per the stack segment's B bit, or RSP in 64-bit mode (after
/// the transfer has loaded CS).
pub fn set_sp(cpu: &mut CpuState, ss: &Segment, sp: u64) {
    if mmu::in_64bit(cpu) {
        cpu.gpr[reg::RSP] = sp;
    } else if ss.attrs & seg_attr::DB != 0 {
        cpu.gpr[reg::RSP] = sp & 0xFFFF_FFFF;
    } else {
        cpu.gpr[reg::RSP] = (cpu.gpr[reg::RSP] & !0xFFFF) | (sp & 0xFFFF);
    }
}

/// After a return to an outer level: data segments the new CPL may not use are
/// nulled (SDM vol. 2B, RET, "RETURN-TO-OUTER-PRIVILEGE-LEVEL").
pub(crate) fn scrub_data_segments(cpu: &mut CpuState) {
    let cpl = cpu.cpl();
    for s in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
        let seg = cpu.seg[s];
        let dpl = ((seg.attrs >> 5) & 3) as u8;
        let data_or_nc = seg.attrs & seg_attr::CODE == 0 || seg.attrs & seg_attr::DC == 0;
        if seg.attrs & seg_attr::P != 0 && data_or_nc && dpl < cpl {
            cpu.seg[s] = null_segment(0);
        }
    }
}

/// Checks the code segment a return (RETF/IRET) goes to.
fn check_return_cs(
    cpu: &mut CpuState,
    m: &mut Machine,
    sel: u16,
) -> Result<(Desc, u64), Exception> {
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let (d, addr) = fetch(cpu, m, sel)?;
    let rpl = (sel & 3) as u8;
    if !d.is_code() || rpl < cpu.cpl() {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let ok = if d.conforming() {
        d.dpl() <= rpl
    } else {
        d.dpl() == rpl
    };
    if !ok {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    Ok((d, addr))
}

/// Far RET [imm16] in protected mode.
pub fn far_return(cpu: &mut CpuState, m: &mut Machine, size: u32, imm: u64) -> Exec {
    let ip = peek(cpu, m, 0, size)?;
    let sel = peek(cpu, m, u64::from(size), size)? as u16;
    let (d, addr) = check_return_cs(cpu, m, sel)?;
    let rpl = (sel & 3) as u8;
    let ip = ip & mask(size);
    if rpl == cpu.cpl() {
        enter_code(cpu, m, sel, d, addr, ip, rpl)?;
        add_sp(cpu, 2 * u64::from(size) + imm);
        return Ok(());
    }
    let depth = 2 * u64::from(size) + imm;
    let new_sp = peek(cpu, m, depth, size)?;
    let new_ss_sel = peek(cpu, m, depth + u64::from(size), size)? as u16;
    let to_64 = cpu.efer & mmu::efer::LMA != 0 && d.attrs() & seg_attr::L != 0;
    if !to_64 && ip > u64::from(d.limit()) {
        return Err(Exception::GeneralProtection(0));
    }
    let new_ss = if to_64 && new_ss_sel & 0xFFFC == 0 && rpl < 3 {
        Segment {
            selector: new_ss_sel,
            ..super::long::null_stack(rpl)
        }
    } else {
        check_return_ss(cpu, m, new_ss_sel, rpl)?
    };
    enter_code(cpu, m, sel, d, addr, ip, rpl)?;
    cpu.seg[sreg::SS] = new_ss;
    set_sp(cpu, &new_ss, new_sp.wrapping_add(imm));
    scrub_data_segments(cpu);
    Ok(())
}

fn check_return_ss(
    cpu: &mut CpuState,
    m: &mut Machine,
    ss: u16,
    rpl: u8,
) -> Result<Segment, Exception> {
    if ss & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let (d, addr) = fetch(cpu, m, ss)?;
    let writable_data = d.is_segment() && !d.is_code() && d.typ() & 2 != 0;
    if (ss & 3) as u8 != rpl || d.dpl() != rpl || !writable_data {
        return Err(Exception::GeneralProtection(sel_err(ss)));
    }
    if !d.present() {
        return Err(Exception::StackFault(sel_err(ss)));
    }
    set_accessed(cpu, m, d, addr)?;
    let mut seg = d.segment(ss);
    seg.attrs |= seg_attr::ACCESSED;
    Ok(seg)
}

/// Loads EFLAGS from an IRET image under the rules for the CPL before the
/// return: IOPL only at CPL 0, IF only when CPL <= IOPL (SDM vol. 2A, IRET).
fn iret_flags(cpu: &mut CpuState, v: u64, size: u32, old_cpl: u8) {
    let mut writable = CF | PF | AF | ZF | SF | TF | DF | OF | NT;
    if size == 4 {
        writable |= RF | AC | ID;
    }
    if old_cpl == 0 {
        writable |= IOPL;
        if size == 4 {
            writable |= VM | VIF | VIP;
        }
    }
    if old_cpl <= cpu.iopl() {
        writable |= IF;
    }
    cpu.rflags = (cpu.rflags & !writable) | (v & writable) | FIXED1;
}

/// IRET in protected mode (not V86; see [`iret_v86`]).
pub fn iret_pm(cpu: &mut CpuState, m: &mut Machine, size: u32) -> Exec {
    if cpu.rflags & NT != 0 {
        let tr_base = cpu.tr.base;
        let lin = mmu::table_linear(cpu, tr_base, 0);
        let back = mmu::read_sys(cpu, m, lin, 2)? as u16;
        return task::switch_back(cpu, m, back);
    }
    let ip = peek(cpu, m, 0, size)?;
    let sel = peek(cpu, m, u64::from(size), size)? as u16;
    let fl = peek(cpu, m, 2 * u64::from(size), size)?;
    let old_cpl = cpu.cpl();
    if size == 4 && fl & VM != 0 && old_cpl == 0 {
        return iret_to_v86(cpu, m, ip, sel, fl);
    }
    let (d, addr) = check_return_cs(cpu, m, sel)?;
    let rpl = (sel & 3) as u8;
    let ip = ip & mask(size);
    if rpl == old_cpl {
        enter_code(cpu, m, sel, d, addr, ip, rpl)?;
        add_sp(cpu, 3 * u64::from(size));
        iret_flags(cpu, fl, size, old_cpl);
        cpu.nmi_blocked = 0;
        return Ok(());
    }
    let new_sp = peek(cpu, m, 3 * u64::from(size), size)?;
    let new_ss_sel = peek(cpu, m, 4 * u64::from(size), size)? as u16;
    if ip > u64::from(d.limit()) {
        return Err(Exception::GeneralProtection(0));
    }
    let new_ss = check_return_ss(cpu, m, new_ss_sel, rpl)?;
    enter_code(cpu, m, sel, d, addr, ip, rpl)?;
    iret_flags(cpu, fl, size, old_cpl);
    cpu.seg[sreg::SS] = new_ss;
    set_sp(cpu, &new_ss, new_sp);
    scrub_data_segments(cpu);
    cpu.nmi_blocked = 0;
    Ok(())
}

/// IRET from CPL 0 to a V86 task (SDM vol. 2A, IRET, "RETURN-TO-VIRTUAL-8086-MODE").
fn iret_to_v86(cpu: &mut CpuState, m: &mut Machine, ip: u64, cs: u16, fl: u64) -> Exec {
    let mut vals = [0u64; 6];
    for (i, v) in vals.iter_mut().enumerate() {
        *v = peek(cpu, m, 12 + 4 * i as u64, 4)?;
    }
    let [esp, ss, es, ds, fs, gs] = vals;
    cpu.rflags = (fl & 0x3F_7FD5) | FIXED1 | VM;
    cpu.seg[sreg::CS] = v86_segment(cs);
    cpu.seg[sreg::SS] = v86_segment(ss as u16);
    cpu.seg[sreg::ES] = v86_segment(es as u16);
    cpu.seg[sreg::DS] = v86_segment(ds as u16);
    cpu.seg[sreg::FS] = v86_segment(fs as u16);
    cpu.seg[sreg::GS] = v86_segment(gs as u16);
    cpu.gpr[reg::RSP] = esp & 0xFFFF_FFFF;
    cpu.next_rip = ip & 0xFFFF;
    cpu.nmi_blocked = 0;
    Ok(())
}

/// IRET in V86 mode: real-mode-like with IOPL 3 (IOPL itself unchanged), #GP(0)
/// otherwise (no VME).
pub fn iret_v86(cpu: &mut CpuState, m: &mut Machine, size: u32) -> Exec {
    if cpu.iopl() != 3 {
        return Err(Exception::GeneralProtection(0));
    }
    let ip = peek(cpu, m, 0, size)? & mask(size);
    let cs = peek(cpu, m, u64::from(size), size)? as u16;
    let fl = peek(cpu, m, 2 * u64::from(size), size)?;
    if ip > 0xFFFF {
        return Err(Exception::GeneralProtection(0));
    }
    add_sp(cpu, 3 * u64::from(size));
    cpu.seg[sreg::CS] = v86_segment(cs);
    cpu.next_rip = ip;
    stack_flags_load(cpu, fl, size);
    cpu.nmi_blocked = 0;
    Ok(())
}

/// Whether CR0.PE is set and VM is clear.
pub fn pm(cpu: &CpuState) -> bool {
    cpu.cr0 & cr0::PE != 0 && !cpu.v86()
}
