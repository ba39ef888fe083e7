//! IA-32e mode: interrupt delivery through the 64-bit IDT (with IST stacks),
//! IRET in IA-32e mode, SYSCALL/SYSRET, SWAPGS, RDTSCP, CMPXCHG16B, and the
//! 16-byte system descriptors (SDM vol. 3A §5.8.3 call gates, §6.14 64-bit
//! interrupts, §7.7 the 64-bit TSS; vol. 2 IRET, SYSCALL, SYSRET, SWAPGS).
//!
//! As everywhere in the interpreter, everything is checked and read first and
//! committed last, so a fault leaves the state as it was.

use super::ops::{get_gpr, mask, set_gpr};
use super::protected::{fetch, sel_err, Desc};
use super::{Exec, Insn};
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{reg, seg_attr, sreg, CpuState, Segment};
use x86bt_machine::{Linear, Machine};

/// Whether IA-32e mode is active.
#[inline]
pub fn ia32e(cpu: &CpuState) -> bool {
    cpu.efer & mmu::efer::LMA != 0
}

/// A 16-byte system descriptor (LDT, TSS, gates) in IA-32e mode: the legacy
/// 8 bytes and bits 63:32 of the base or offset.
#[derive(Clone, Copy, Debug)]
pub struct Desc16 {
    /// Bytes 0-7.
    pub low: Desc,
    /// Bytes 8-11: base or offset bits 63:32.
    pub upper: u32,
}

impl Desc16 {
    /// The 64-bit base (LDT, TSS).
    pub fn base(self) -> u64 {
        self.low.base() | (u64::from(self.upper) << 32)
    }
    /// The 64-bit offset (gates).
    pub fn offset(self) -> u64 {
        self.low.gate_offset() | (u64::from(self.upper) << 32)
    }
}

/// Reads the 16-byte system descriptor `sel` names in the GDT (or LDT). The
/// type field of the upper half (bits 12:8 of bytes 12-15) must be 0, or #GP.
pub fn fetch16(cpu: &mut CpuState, m: &mut Machine, sel: u16) -> Result<(Desc16, u64), Exception> {
    let (low, addr) = fetch(cpu, m, sel)?;
    let (base, limit) = if sel & 4 != 0 {
        (cpu.ldtr.base, u64::from(cpu.ldtr.limit))
    } else {
        (cpu.gdtr.base, u64::from(cpu.gdtr.limit))
    };
    let off = u64::from(sel & 0xFFF8);
    if off + 15 > limit {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let at = mmu::table_linear(cpu, base, off + 8);
    let upper = mmu::read_sys(cpu, m, at, 4)? as u32;
    let at = mmu::table_linear(cpu, base, off + 12);
    let top = mmu::read_sys(cpu, m, at, 4)? as u32;
    if (top >> 8) & 0x1F != 0 {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    Ok((Desc16 { low, upper }, addr))
}

/// RSPn (n = 0-2) or ISTn (n = 1-7, as 3 + n) from the 64-bit TSS (SDM vol. 3A
/// Figure 8-11): offsets 4 + 8n for RSPn, 36 + 8(n-1) for ISTn.
fn tss64_stack(cpu: &mut CpuState, m: &mut Machine, off: u64) -> Result<u64, Exception> {
    if off + 7 > u64::from(cpu.tr.limit) {
        return Err(Exception::InvalidTss(sel_err(cpu.tr.selector)));
    }
    let at = Linear(cpu.tr.base.wrapping_add(off));
    mmu::read_sys(cpu, m, at, 8)
}

/// The SS a privilege change in IA-32e mode loads: a null selector whose RPL
/// is the new CPL, usable as a flat stack (its DPL gives the CPL).
pub(crate) fn null_stack(cpl: u8) -> Segment {
    Segment {
        selector: u16::from(cpl),
        attrs: seg_attr::P
            | seg_attr::S
            | seg_attr::RW
            | seg_attr::ACCESSED
            | (u16::from(cpl) << 5),
        limit: 0xFFFF_FFFF,
        base: 0,
    }
}

/// Delivers `vector` through the 64-bit IDT (SDM vol. 3A §6.14): 16-byte gates,
/// interrupt and trap gates only, a 64-bit code segment as target, the stack
/// from RSPn on a privilege change or from ISTn when the gate names one,
/// aligned to 16 bytes, and SS:RSP, RFLAGS, CS:RIP and the error code pushed
/// as 8-byte values.
pub fn deliver(
    cpu: &mut CpuState,
    m: &mut Machine,
    vector: u8,
    error: Option<u32>,
    ret_ip: u64,
    src: super::interrupt::Source,
) -> Exec {
    use super::interrupt::Source;
    let soft = src == Source::Soft;
    let fault = src == Source::Fault;
    let ext = u16::from(!soft);
    let idt_err = u16::from(vector) * 8 + 2 + ext;
    let off = u64::from(vector) * 16;
    if off + 15 > u64::from(cpu.idtr.limit) {
        return Err(Exception::GeneralProtection(idt_err));
    }
    let mut words = [0u32; 4];
    for (i, w) in words.iter_mut().enumerate() {
        let at = mmu::table_linear(cpu, cpu.idtr.base, off + 4 * i as u64);
        *w = mmu::read_sys(cpu, m, at, 4)? as u32;
    }
    let gate = Desc16 {
        low: Desc {
            lo: words[0],
            hi: words[1],
        },
        upper: words[2],
    };
    let typ = gate.low.typ();
    if gate.low.is_segment() || !matches!(typ, 0xE | 0xF) || (words[3] >> 8) & 0x1F != 0 {
        return Err(Exception::GeneralProtection(idt_err));
    }
    let cpl = cpu.cpl();
    if soft && gate.low.dpl() < cpl {
        return Err(Exception::GeneralProtection(idt_err));
    }
    if !gate.low.present() {
        return Err(Exception::SegmentNotPresent(idt_err));
    }
    let sel = gate.low.gate_selector();
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(ext));
    }
    let (d, addr) =
        fetch(cpu, m, sel).map_err(|_| Exception::GeneralProtection(sel_err(sel) | ext))?;
    let long_code = d.attrs() & seg_attr::L != 0 && d.attrs() & seg_attr::DB == 0;
    if !d.is_code() || !long_code || d.dpl() > cpl {
        return Err(Exception::GeneralProtection(sel_err(sel) | ext));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel) | ext));
    }
    let target = gate.offset();
    if !mmu::canonical(target) {
        return Err(Exception::GeneralProtection(ext));
    }
    let new_cpl = if d.conforming() { cpl } else { d.dpl() };
    let ist = u64::from(gate.low.hi & 7);
    let mut rsp = if ist != 0 {
        tss64_stack(cpu, m, 36 + 8 * (ist - 1))?
    } else if new_cpl < cpl {
        tss64_stack(cpu, m, 4 + 8 * u64::from(new_cpl))?
    } else {
        cpu.gpr[reg::RSP]
    };
    if !mmu::canonical(rsp) {
        return Err(Exception::StackFault(ext));
    }
    rsp &= !0xF;
    let mut image = super::stack::flags_image(cpu);
    if fault {
        image |= RF;
    }
    let mut frame = [0u64; 6];
    let mut n = 0;
    for v in [
        u64::from(cpu.seg[sreg::SS].selector),
        cpu.gpr[reg::RSP],
        image,
        u64::from(cpu.seg[sreg::CS].selector),
        ret_ip,
    ] {
        frame[n] = v;
        n += 1;
    }
    if let Some(code) = error {
        frame[n] = u64::from(code);
        n += 1;
    }
    // Check the whole frame, then write it (supervisor accesses: the new CPL
    // is below 3 or the access is to its own stack).
    let user = mmu::paging(cpu) && new_cpl == 3;
    let bottom = rsp.wrapping_sub(8 * n as u64);
    if !mmu::canonical(bottom) {
        return Err(Exception::StackFault(ext));
    }
    for (i, v) in frame[..n].iter().enumerate() {
        let at = Linear(rsp.wrapping_sub(8 * (i as u64 + 1)));
        mmu::write_lin_as(cpu, m, at, 8, *v, user)?;
    }
    // Commit.
    super::protected::set_accessed(cpu, m, d, addr)?;
    if new_cpl != cpl {
        cpu.seg[sreg::SS] = null_stack(new_cpl);
    }
    let mut cs = d.segment((sel & !3) | u16::from(new_cpl));
    cs.attrs |= seg_attr::ACCESSED;
    cpu.seg[sreg::CS] = cs;
    cpu.gpr[reg::RSP] = bottom;
    cpu.rflags &= !(TF | NT | RF | VM);
    if typ == 0xE {
        cpu.rflags &= !IF;
    }
    cpu.rip = target;
    cpu.next_rip = target;
    Ok(())
}

/// IRET in IA-32e mode (SDM vol. 2A IRET, "IA-32e-MODE"): NT is #GP(0); the
/// frame is RIP, CS, RFLAGS and, from 64-bit mode or to an outer level, RSP and
/// SS, each `size` bytes. A null SS may be returned to in 64-bit mode below
/// CPL 3.
pub fn iret(cpu: &mut CpuState, m: &mut Machine, size: u32) -> Exec {
    use super::stack::peek;
    if cpu.rflags & NT != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let from_64 = mmu::in_64bit(cpu);
    let s = u64::from(size);
    let ip = peek(cpu, m, 0, size)?;
    let sel = peek(cpu, m, s, size)? as u16;
    let fl = peek(cpu, m, 2 * s, size)?;
    let old_cpl = cpu.cpl();
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let (d, addr) = fetch(cpu, m, sel)?;
    let rpl = (sel & 3) as u8;
    if !d.is_code() || rpl < old_cpl {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let dpl_ok = if d.conforming() {
        d.dpl() <= rpl
    } else {
        d.dpl() == rpl
    };
    if !dpl_ok {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    let to_64 = d.attrs() & seg_attr::L != 0;
    if to_64 && d.attrs() & seg_attr::DB != 0 {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let ip = ip & mask(size);
    if to_64 {
        if !mmu::canonical(ip) {
            return Err(Exception::GeneralProtection(0));
        }
    } else if ip > u64::from(d.limit()) {
        return Err(Exception::GeneralProtection(0));
    }
    let outer = rpl > old_cpl;
    let new_stack = if outer || from_64 {
        let sp = peek(cpu, m, 3 * s, size)?;
        let ss_sel = peek(cpu, m, 4 * s, size)? as u16;
        let ss = if ss_sel & 0xFFFC == 0 {
            // A null SS: only to 64-bit code below CPL 3, with RPL = new CPL.
            if !to_64 || rpl == 3 || (ss_sel & 3) as u8 != rpl {
                return Err(Exception::GeneralProtection(0));
            }
            null_stack(rpl)
        } else {
            let (sd, saddr) = fetch(cpu, m, ss_sel)?;
            let writable = sd.is_segment() && !sd.is_code() && sd.typ() & 2 != 0;
            if (ss_sel & 3) as u8 != rpl || sd.dpl() != rpl || !writable {
                return Err(Exception::GeneralProtection(sel_err(ss_sel)));
            }
            if !sd.present() {
                return Err(Exception::StackFault(sel_err(ss_sel)));
            }
            super::protected::set_accessed(cpu, m, sd, saddr)?;
            let mut seg = sd.segment(ss_sel);
            seg.attrs |= seg_attr::ACCESSED;
            seg
        };
        Some((ss, sp))
    } else {
        None
    };
    // Commit.
    super::protected::set_accessed(cpu, m, d, addr)?;
    let mut cs = d.segment(sel);
    cs.attrs |= seg_attr::ACCESSED;
    cpu.seg[sreg::CS] = cs;
    cpu.next_rip = ip;
    // RFLAGS: as in protected mode, with VM never set in IA-32e mode.
    let mut writable = CF | PF | AF | ZF | SF | TF | DF | OF | NT;
    if size >= 4 {
        writable |= RF | AC | ID;
    }
    if old_cpl == 0 {
        writable |= IOPL | VIF | VIP;
    }
    if old_cpl <= cpu.iopl() {
        writable |= IF;
    }
    cpu.rflags = (cpu.rflags & !writable) | (fl & writable) | FIXED1;
    match new_stack {
        Some((ss, sp)) => {
            cpu.seg[sreg::SS] = ss;
            cpu.gpr[reg::RSP] = if to_64 {
                sp
            } else if ss.attrs & seg_attr::DB != 0 {
                sp & 0xFFFF_FFFF
            } else {
                (cpu.gpr[reg::RSP] & !0xFFFF) | (sp & 0xFFFF)
            };
        }
        None => super::stack::add_sp(cpu, 3 * s),
    }
    if outer {
        super::protected::scrub_data_segments(cpu);
    }
    cpu.nmi_blocked = 0;
    Ok(())
}

/// SYSCALL (SDM vol. 2B): from 64-bit mode (compatibility mode through CSTAR),
/// #UD unless EFER.SCE is set and IA-32e mode is active. RCX gets the return
/// RIP, R11 RFLAGS; CS and SS become flat ring-0 segments from STAR[47:32].
pub fn syscall(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    if cpu.efer & mmu::efer::SCE == 0 || !ia32e(cpu) {
        return Err(Exception::InvalidOpcode);
    }
    let from_64 = mmu::in_64bit(cpu);
    let sel = ((cpu.msr.star >> 32) & 0xFFFC) as u16;
    cpu.gpr[reg::RCX] = cpu.next_rip;
    cpu.gpr[11] = cpu.rflags & !RF;
    cpu.rflags &= !(cpu.msr.fmask | RF);
    cpu.rflags |= FIXED1;
    cpu.seg[sreg::CS] = flat_code(sel, 0, true);
    cpu.seg[sreg::SS] = flat_data(sel.wrapping_add(8), 0);
    cpu.next_rip = if from_64 {
        cpu.msr.lstar
    } else {
        cpu.msr.cstar
    };
    Ok(())
}

/// SYSRET (SDM vol. 2B): from 64-bit mode at CPL 0 back to CPL 3, to 64-bit
/// code (REX.W, CS = STAR[63:48] + 16) or compatibility mode (CS =
/// STAR[63:48]); RFLAGS from R11. A non-canonical RCX is #GP(0) (Intel: at
/// CPL 0, before anything changes).
pub fn sysret(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    if cpu.efer & mmu::efer::SCE == 0 || !mmu::in_64bit(cpu) {
        return Err(Exception::InvalidOpcode);
    }
    if cpu.cpl() != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let to_64 = insn.size() == 8;
    let rcx = cpu.gpr[reg::RCX];
    if to_64 && !mmu::canonical(rcx) {
        return Err(Exception::GeneralProtection(0));
    }
    let base = ((cpu.msr.star >> 48) & 0xFFFF) as u16;
    let cs_sel = if to_64 { base.wrapping_add(16) } else { base } | 3;
    cpu.seg[sreg::CS] = flat_code(cs_sel, 3, to_64);
    cpu.seg[sreg::SS] = flat_data(base.wrapping_add(8) | 3, 3);
    cpu.rflags = (cpu.gpr[11] & 0x3C_7FD7) | FIXED1;
    cpu.next_rip = if to_64 { rcx } else { rcx & 0xFFFF_FFFF };
    Ok(())
}

/// SWAPGS: exchanges GS.base with IA32_KERNEL_GS_BASE; 64-bit mode, CPL 0.
pub fn swapgs(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    if !mmu::in_64bit(cpu) {
        return Err(Exception::InvalidOpcode);
    }
    if cpu.cpl() != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    std::mem::swap(&mut cpu.seg[sreg::GS].base, &mut cpu.msr.kernel_gs_base);
    Ok(())
}

/// RDTSCP: EDX:EAX = TSC, ECX = TSC_AUX (#GP(0) under CR4.TSD above CPL 0).
pub fn rdtscp(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    if cpu.cr4 & mmu::cr4::TSD != 0 && cpu.cpl() != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let t = crate::identity::tsc(cpu);
    cpu.gpr[reg::RAX] = t & 0xFFFF_FFFF;
    cpu.gpr[reg::RDX] = t >> 32;
    cpu.gpr[reg::RCX] = cpu.msr.tsc_aux & 0xFFFF_FFFF;
    Ok(())
}

/// CMPXCHG16B m128: compares RDX:RAX with the operand; equal: ZF = 1 and
/// RCX:RBX is stored; else ZF = 0 and the operand is loaded into RDX:RAX (the
/// operand is written back either way, as a locked cycle does). A misaligned
/// operand is #GP(0).
pub fn cmpxchg16b(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if insn.ops[0] != super::Opnd::Mem {
        return Err(Exception::InvalidOpcode);
    }
    let s = usize::from(insn.mem.seg);
    let off = super::ops::ea(cpu, &insn.mem);
    let lin = mmu::seg_linear(cpu, s, off, 16, mmu::Access::Write)?;
    if lin.0 & 15 != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    mmu::probe_write(cpu, m, s, off, 16)?;
    let lo = mmu::read(cpu, m, s, off, 8)?;
    let hi = mmu::read(cpu, m, s, off.wrapping_add(8), 8)?;
    let (rax, rdx) = (cpu.gpr[reg::RAX], cpu.gpr[reg::RDX]);
    let equal = lo == rax && hi == rdx;
    let (new_lo, new_hi) = if equal {
        (cpu.gpr[reg::RBX], cpu.gpr[reg::RCX])
    } else {
        (lo, hi)
    };
    mmu::write(cpu, m, s, off, 8, new_lo)?;
    mmu::write(cpu, m, s, off.wrapping_add(8), 8, new_hi)?;
    if equal {
        cpu.rflags |= ZF;
    } else {
        cpu.rflags &= !ZF;
        cpu.gpr[reg::RAX] = lo;
        cpu.gpr[reg::RDX] = hi;
    }
    Ok(())
}

/// MOVSXD r, r/m32: sign-extends a doubleword (with a 16- or 32-bit
/// destination it moves the low bits, as the SDM allows).
pub fn movsxd(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let v = super::ops::read_op(cpu, m, insn, 1, 4)?;
    let v = super::ops::sext(v, 4) as u64;
    let super::Opnd::Gpr { idx, shift } = insn.ops[0] else {
        return Err(Exception::InvalidOpcode);
    };
    set_gpr(cpu, idx, shift, size, v & mask(size));
    let _ = get_gpr;
    Ok(())
}

/// Where a 64-bit call gate leads (SDM vol. 3A §5.8.3.1).
struct GateTarget {
    sel: u16,
    desc: Desc,
    addr: u64,
    off: u64,
}

/// Checks the 64-bit call gate `gate_sel` and its target, in the order of the
/// SDM's CALL and JMP pseudo-code ("IA-32e mode" call gate branches): gate DPL
/// against CPL and RPL, presence, the upper type field (in [`fetch16`]), then the
/// code segment: null, not code or DPL > CPL, not 64-bit, not present, and a
/// non-canonical offset.
fn call_gate_target(
    cpu: &mut CpuState,
    m: &mut Machine,
    gate_sel: u16,
) -> Result<GateTarget, Exception> {
    let (gate, _) = fetch16(cpu, m, gate_sel)?;
    let cpl = cpu.cpl();
    let rpl = (gate_sel & 3) as u8;
    if gate.low.dpl() < cpl || gate.low.dpl() < rpl {
        return Err(Exception::GeneralProtection(sel_err(gate_sel)));
    }
    if !gate.low.present() {
        return Err(Exception::SegmentNotPresent(sel_err(gate_sel)));
    }
    let sel = gate.low.gate_selector();
    if sel & 0xFFFC == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let (desc, addr) = fetch(cpu, m, sel)?;
    if !desc.is_code() || desc.dpl() > cpl {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    let long_code = desc.attrs() & seg_attr::L != 0 && desc.attrs() & seg_attr::DB == 0;
    if !long_code {
        return Err(Exception::GeneralProtection(sel_err(sel)));
    }
    if !desc.present() {
        return Err(Exception::SegmentNotPresent(sel_err(sel)));
    }
    let off = gate.offset();
    if !mmu::canonical(off) {
        return Err(Exception::GeneralProtection(0));
    }
    Ok(GateTarget {
        sel,
        desc,
        addr,
        off,
    })
}

/// Loads CS from a checked gate target at privilege `cpl` and goes to its
/// offset.
fn enter_gate_target(cpu: &mut CpuState, m: &mut Machine, t: &GateTarget, cpl: u8) -> Exec {
    super::protected::set_accessed(cpu, m, t.desc, t.addr)?;
    let mut cs = t.desc.segment((t.sel & !3) | u16::from(cpl));
    cs.attrs |= seg_attr::ACCESSED;
    cpu.seg[sreg::CS] = cs;
    cpu.next_rip = t.off;
    Ok(())
}

/// JMP through a 64-bit call gate (SDM vol. 2A JMP, "IA-32e mode" call gate):
/// no stack change; a non-conforming target must have DPL = CPL.
pub fn jump_through_gate(cpu: &mut CpuState, m: &mut Machine, gate_sel: u16) -> Exec {
    let t = call_gate_target(cpu, m, gate_sel)?;
    let cpl = cpu.cpl();
    if !t.desc.conforming() && t.desc.dpl() != cpl {
        return Err(Exception::GeneralProtection(sel_err(t.sel)));
    }
    enter_gate_target(cpu, m, &t, cpl)
}

/// CALL through a 64-bit call gate (SDM vol. 2A CALL, vol. 3A §5.8.5 and
/// Figure 5-13): to a more privileged non-conforming segment, RSP comes from
/// RSPn of the 64-bit TSS (#SS(0) unless canonical), SS becomes a null selector
/// with RPL = the new CPL, and the old SS, old RSP, CS and RIP are pushed as
/// qwords on the new stack (no parameters are copied); otherwise CS and RIP are
/// pushed as qwords on the current stack. Everything is checked and written
/// before anything is committed.
pub fn call_through_gate(cpu: &mut CpuState, m: &mut Machine, gate_sel: u16) -> Exec {
    let t = call_gate_target(cpu, m, gate_sel)?;
    let cpl = cpu.cpl();
    let ret_cs = u64::from(cpu.seg[sreg::CS].selector);
    let ret_ip = cpu.next_rip;
    let inner = !t.desc.conforming() && t.desc.dpl() < cpl;
    let new_cpl = if inner { t.desc.dpl() } else { cpl };
    let (rsp, frame): (u64, &[u64]) = if inner {
        let rsp = tss64_stack(cpu, m, 4 + 8 * u64::from(new_cpl))?;
        if !mmu::canonical(rsp) {
            return Err(Exception::StackFault(0));
        }
        (
            rsp,
            &[
                u64::from(cpu.seg[sreg::SS].selector),
                cpu.gpr[reg::RSP],
                ret_cs,
                ret_ip,
            ],
        )
    } else {
        (cpu.gpr[reg::RSP], &[ret_cs, ret_ip])
    };
    let bottom = rsp.wrapping_sub(8 * frame.len() as u64);
    if !mmu::canonical(bottom) || !mmu::canonical(rsp.wrapping_sub(1)) {
        return Err(Exception::StackFault(0));
    }
    let user = mmu::paging(cpu) && new_cpl == 3;
    for (i, v) in frame.iter().enumerate() {
        let at = Linear(rsp.wrapping_sub(8 * (i as u64 + 1)));
        mmu::write_lin_as(cpu, m, at, 8, *v, user)?;
    }
    // Commit.
    enter_gate_target(cpu, m, &t, new_cpl)?;
    if inner {
        cpu.seg[sreg::SS] = null_stack(new_cpl);
    }
    cpu.gpr[reg::RSP] = bottom;
    Ok(())
}

/// SYSENTER (SDM vol. 2B): #GP(0) in real mode or with IA32_SYSENTER_CS = 0;
/// enters CPL 0 with flat CS = SYSENTER_CS (64-bit code in IA-32e mode, else
/// 32-bit) and SS = SYSENTER_CS + 8, RSP = SYSENTER_ESP and RIP = SYSENTER_EIP
/// (their low 32 bits outside IA-32e mode), and clears VM, IF and RF.
pub fn sysenter(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    let cs = (cpu.sysenter[0] & 0xFFFC) as u16;
    if !cpu.protected() || cs == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let long = ia32e(cpu);
    cpu.rflags &= !(VM | IF | RF);
    cpu.seg[sreg::CS] = flat_code(cs, 0, long);
    cpu.seg[sreg::SS] = flat_data(cs.wrapping_add(8), 0);
    let width = if long { u64::MAX } else { 0xFFFF_FFFF };
    cpu.gpr[reg::RSP] = cpu.sysenter[1] & width;
    cpu.next_rip = cpu.sysenter[2] & width;
    Ok(())
}

/// SYSEXIT (SDM vol. 2B): #GP(0) in real mode, above CPL 0 or with
/// IA32_SYSENTER_CS = 0; returns to CPL 3 with CS = SYSENTER_CS + 16 (32-bit
/// code) or, with REX.W, + 32 (64-bit code), SS = CS + 8, RSP = (E/R)CX and
/// RIP = (E/R)DX; a non-canonical target with REX.W is #GP(0).
pub fn sysexit(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    let base = (cpu.sysenter[0] & 0xFFFC) as u16;
    if !cpu.protected() || cpu.v86() || cpu.cpl() != 0 || base == 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let wide = insn.size() == 8;
    let (rip, rsp) = (cpu.gpr[reg::RDX], cpu.gpr[reg::RCX]);
    if wide && (!mmu::canonical(rip) || !mmu::canonical(rsp)) {
        return Err(Exception::GeneralProtection(0));
    }
    let cs = base.wrapping_add(if wide { 32 } else { 16 }) | 3;
    cpu.seg[sreg::CS] = flat_code(cs, 3, wide);
    cpu.seg[sreg::SS] = flat_data(cs.wrapping_add(8), 3);
    let width = if wide { u64::MAX } else { 0xFFFF_FFFF };
    cpu.gpr[reg::RSP] = rsp & width;
    cpu.next_rip = rip & width;
    Ok(())
}

/// The flat code segment SYSCALL/SYSRET and SYSENTER/SYSEXIT load: 64-bit
/// (L) or 32-bit (D).
fn flat_code(selector: u16, dpl: u16, long: bool) -> Segment {
    Segment {
        selector,
        attrs: seg_attr::P
            | seg_attr::S
            | seg_attr::CODE
            | seg_attr::RW
            | seg_attr::ACCESSED
            | seg_attr::G
            | (dpl << 5)
            | if long { seg_attr::L } else { seg_attr::DB },
        limit: 0xFFFF_FFFF,
        base: 0,
    }
}

/// The flat stack segment SYSCALL/SYSRET and SYSENTER/SYSEXIT load.
fn flat_data(selector: u16, dpl: u16) -> Segment {
    Segment {
        selector,
        attrs: seg_attr::P
            | seg_attr::S
            | seg_attr::RW
            | seg_attr::ACCESSED
            | seg_attr::DB
            | seg_attr::G
            | (dpl << 5),
        limit: 0xFFFF_FFFF,
        base: 0,
    }
}
