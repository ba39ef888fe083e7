//! System instructions: port I/O, HLT, CLI/STI, CPUID, RDTSC, MSRs, segment
//! register loads, descriptor-table and control-register access, and the x87
//! escape opcodes of a CPU without a coprocessor.
//!
//! Real mode runs at CPL 0: there are no IOPL or privilege checks here yet. The
//! protected-mode-only instructions (LAR, LSL, VERR, VERW, SLDT, STR, LLDT, LTR,
//! ARPL) raise #UD in real mode (SDM vol. 2, "Real-Address Mode Exceptions").

use super::ops::*;
use super::protected;
use super::{Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::identity;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{cr0, reg, seg_attr, sreg, CpuState, RunState};
use iced_x86::Register;
use x86bt_machine::Machine;

/// #GP(0) unless CPL is 0 (privileged instructions; V86 mode is CPL 3).
#[inline]
pub fn require_cpl0(cpu: &CpuState) -> Exec {
    if cpu.cpl() != 0 {
        Err(Exception::GeneralProtection(0))
    } else {
        Ok(())
    }
}

/// The I/O permission check (SDM vol. 1 §19.5): in protected mode with CPL >
/// IOPL, and always in V86 mode, every byte of the access must be allowed by the
/// TSS I/O permission bitmap.
pub fn check_io(cpu: &mut CpuState, m: &mut Machine, port: u16, size: u32) -> Exec {
    if !cpu.protected() || (!cpu.v86() && cpu.cpl() <= cpu.iopl()) {
        return Ok(());
    }
    let tr = cpu.tr;
    // Only a 32-bit TSS has a bitmap.
    if tr.attrs & 0x8 == 0 || tr.limit < 0x67 {
        return Err(Exception::GeneralProtection(0));
    }
    let lin = mmu::table_linear(cpu, tr.base, 0x66);
    let map = mmu::read_sys(cpu, m, lin, 2)?;
    let byte = map + u64::from(port / 8);
    if byte + 1 > u64::from(tr.limit) {
        return Err(Exception::GeneralProtection(0));
    }
    let lin = mmu::table_linear(cpu, tr.base, byte);
    let bits = mmu::read_sys(cpu, m, lin, 2)?;
    let want = ((1u64 << size) - 1) << (port % 8);
    if bits & want != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    Ok(())
}

fn port_of(cpu: &CpuState, insn: &Insn, i: usize) -> u16 {
    match insn.ops[i] {
        Opnd::Imm(v) => v as u16,
        _ => cpu.gpr[reg::RDX] as u16,
    }
}

/// IN AL/AX/EAX, imm8/DX.
pub fn in_(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = insn.size();
    let port = port_of(cpu, insn, 1);
    check_io(cpu, m, port, size)?;
    m.sync_clock(cpu.icount);
    let v = m.io_read(port, size as usize);
    set_gpr(cpu, reg::RAX as u8, 0, size, u64::from(v));
    Ok(())
}

/// OUT imm8/DX, AL/AX/EAX.
pub fn out(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = match insn.ins.op1_register().size() {
        1 => 1,
        2 => 2,
        _ => 4,
    };
    let v = get_gpr(cpu, reg::RAX as u8, 0, size);
    let port = port_of(cpu, insn, 0);
    check_io(cpu, m, port, size)?;
    m.sync_clock(cpu.icount);
    m.io_write(port, size as usize, v as u32);
    Ok(())
}

/// HLT: stop until an interrupt; IP already points past the HLT.
pub fn hlt(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    require_cpl0(cpu)?;
    cpu.run_state = RunState::Halted;
    Ok(())
}

/// #GP(0) when IF may not be changed: CPL > IOPL in protected mode, IOPL < 3
/// in V86 mode (no VME/PVI).
fn check_if_change(cpu: &CpuState) -> Exec {
    if cpu.protected() && cpu.cpl() > cpu.iopl() {
        return Err(Exception::GeneralProtection(0));
    }
    Ok(())
}

/// CLI.
pub fn cli(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    check_if_change(cpu)?;
    cpu.rflags &= !IF;
    Ok(())
}

/// STI: interrupts are recognised only after the next instruction. The unit
/// goes on after it unless it made an interrupt deliverable (INTR is up):
/// the run loop must then take it after the next instruction. (Nothing else
/// can raise INTR before the unit ends without ending it too.)
pub fn sti(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    check_if_change(cpu)?;
    if cpu.rflags & IF == 0 {
        cpu.int_shadow = 1;
        if m.intr() {
            m.request_attention();
        }
    }
    cpu.rflags |= IF;
    Ok(())
}

/// CPUID.
pub fn cpuid(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    let r = identity::cpuid_with_apic(
        cpu,
        cpu.gpr[reg::RAX] as u32,
        cpu.gpr[reg::RCX] as u32,
        m.apic_identity(),
    );
    for (slot, v) in [reg::RAX, reg::RBX, reg::RCX, reg::RDX].into_iter().zip(r) {
        cpu.gpr[slot] = u64::from(v);
    }
    Ok(())
}

/// RDTSC: #GP(0) if CR4.TSD is set outside CPL 0.
pub fn rdtsc(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    if cpu.cr4 & mmu::cr4::TSD != 0 && cpu.cpl() != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    let t = identity::tsc(cpu);
    cpu.gpr[reg::RAX] = t & 0xFFFF_FFFF;
    cpu.gpr[reg::RDX] = t >> 32;
    Ok(())
}

/// RDPMC.
pub fn rdpmc(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    let v = identity::rdpmc(cpu, cpu.gpr[reg::RCX] as u32)?;
    cpu.gpr[reg::RAX] = v & 0xFFFF_FFFF;
    cpu.gpr[reg::RDX] = v >> 32;
    Ok(())
}

/// RDMSR.
pub fn rdmsr(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    require_cpl0(cpu)?;
    let msr = cpu.gpr[reg::RCX] as u32;
    let v = match m.apic_rdmsr(msr) {
        Some(v) => v.ok_or(Exception::GeneralProtection(0))?,
        None => identity::rdmsr(cpu, msr)?,
    };
    cpu.gpr[reg::RAX] = v & 0xFFFF_FFFF;
    cpu.gpr[reg::RDX] = v >> 32;
    Ok(())
}

/// WRMSR.
pub fn wrmsr(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    require_cpl0(cpu)?;
    let v = (cpu.gpr[reg::RDX] & 0xFFFF_FFFF) << 32 | (cpu.gpr[reg::RAX] & 0xFFFF_FFFF);
    let msr = cpu.gpr[reg::RCX] as u32;
    match m.apic_wrmsr(msr, v, identity::tsc(cpu)) {
        Some(true) => Ok(()),
        Some(false) => Err(Exception::GeneralProtection(0)),
        None => identity::wrmsr(cpu, msr, v),
    }
}

/// Loads segment register `s` with `sel` under the mode's rules. Loading SS
/// inhibits interrupts for one instruction.
fn load_seg(cpu: &mut CpuState, m: &mut Machine, s: usize, sel: u16) -> Exec {
    if s == sreg::CS {
        return Err(Exception::InvalidOpcode);
    }
    protected::load_seg(cpu, m, s, sel)?;
    if s == sreg::SS {
        cpu.int_shadow = 1;
    }
    Ok(())
}

/// MOV sreg, r/m16. MOV CS is #UD on the 386 and later.
pub fn mov_to_seg(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let Opnd::Seg(s) = insn.ops[0] else {
        return Err(Exception::InvalidOpcode);
    };
    let v = read_op(cpu, m, insn, 1, 2)?;
    load_seg(cpu, m, s as usize, v as u16)
}

/// MOV r/m, sreg: a 32-bit register destination gets the zero-extended selector;
/// a memory destination is always 16 bits.
pub fn mov_from_seg(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let Opnd::Seg(s) = insn.ops[1] else {
        return Err(Exception::InvalidOpcode);
    };
    let v = u64::from(cpu.seg[s as usize].selector);
    let size = if insn.ops[0] == Opnd::Mem {
        2
    } else {
        insn.size()
    };
    write_op(cpu, m, insn, 0, size, v)
}

/// POP sreg. The pop happens on the stack as it was before the load, so the
/// old SS.B decides whether SP or ESP moves, even for POP SS into a stack of the
/// other size (SDM vol. 2B, POP: the stack-address size is that of the current
/// stack; the increment follows the load so a fault leaves SP alone).
pub fn pop_seg(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let Opnd::Seg(s) = insn.ops[0] else {
        return Err(Exception::InvalidOpcode);
    };
    let size = insn.size();
    let old_ss = cpu.seg[sreg::SS];
    let v = super::stack::peek(cpu, m, 0, size)?;
    load_seg(cpu, m, s as usize, v as u16)?;
    let sp = cpu.gpr[reg::RSP].wrapping_add(u64::from(size));
    protected::set_sp(cpu, &old_ss, sp);
    Ok(())
}

/// LDS, LES, LFS, LGS, LSS: load a far pointer.
pub fn load_far_ptr(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if insn.ops[1] != Opnd::Mem {
        return Err(Exception::InvalidOpcode);
    }
    let size = insn.size();
    let s = insn.mem.seg as usize;
    let off = ea(cpu, &insn.mem);
    let v = mmu::read(cpu, m, s, off, size)?;
    let sel = mmu::read(
        cpu,
        m,
        s,
        off.wrapping_add(u64::from(size)) & insn.mem.addr_mask,
        2,
    )?;
    let seg = match insn.ins.mnemonic() {
        iced_x86::Mnemonic::Lds => sreg::DS,
        iced_x86::Mnemonic::Les => sreg::ES,
        iced_x86::Mnemonic::Lfs => sreg::FS,
        iced_x86::Mnemonic::Lgs => sreg::GS,
        _ => sreg::SS,
    };
    load_seg(cpu, m, seg, sel as u16)?;
    write_op(cpu, m, insn, 0, size, v)
}

/// LGDT and LIDT: a 16-bit operand size loads a 24-bit base.
pub fn load_table<const IDT: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if insn.ops[0] != Opnd::Mem {
        return Err(Exception::InvalidOpcode);
    }
    require_cpl0(cpu)?;
    let s = insn.mem.seg as usize;
    let off = ea(cpu, &insn.mem);
    let limit = mmu::read(cpu, m, s, off, 2)?;
    // 64-bit mode: an 8-byte base, which must be canonical.
    let wide = mmu::in_64bit(cpu);
    let base_size = if wide { 8 } else { 4 };
    let base = mmu::read(
        cpu,
        m,
        s,
        off.wrapping_add(2) & insn.mem.addr_mask,
        base_size,
    )?;
    if wide && !mmu::canonical(base) {
        return Err(Exception::GeneralProtection(0));
    }
    let base = if !wide && insn.ins.code().op_code().operand_size() == 16 {
        base & 0x00FF_FFFF
    } else {
        base
    };
    let t = if IDT { &mut cpu.idtr } else { &mut cpu.gdtr };
    t.base = base;
    t.limit = limit as u32;
    Ok(())
}

/// SGDT and SIDT: limit then 32-bit base (the 386 and later store all 32 bits of
/// the base even with a 16-bit operand size).
pub fn store_table<const IDT: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    if insn.ops[0] != Opnd::Mem {
        return Err(Exception::InvalidOpcode);
    }
    let t = if IDT { cpu.idtr } else { cpu.gdtr };
    let s = insn.mem.seg as usize;
    let off = ea(cpu, &insn.mem);
    // 64-bit mode stores an 8-byte base.
    let (base_size, base) = if mmu::in_64bit(cpu) {
        (8, t.base)
    } else {
        (4, t.base & 0xFFFF_FFFF)
    };
    mmu::seg_linear(
        cpu,
        s,
        off.wrapping_add(1 + u64::from(base_size)) & insn.mem.addr_mask,
        1,
        mmu::Access::Write,
    )?;
    mmu::write(cpu, m, s, off, 2, u64::from(t.limit))?;
    mmu::write(
        cpu,
        m,
        s,
        off.wrapping_add(2) & insn.mem.addr_mask,
        base_size,
        base,
    )
}

/// SMSW: the low word of CR0 (a register destination may take all of CR0).
pub fn smsw(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let size = if insn.ops[0] == Opnd::Mem {
        2
    } else {
        insn.size()
    };
    write_op(cpu, m, insn, 0, size, cpu.cr0)
}

/// LMSW: loads PE, MP, EM, TS; cannot clear PE.
pub fn lmsw(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    require_cpl0(cpu)?;
    let v = read_op(cpu, m, insn, 0, 2)?;
    let keep_pe = cpu.cr0 & cr0::PE;
    cpu.cr0 = (cpu.cr0 & !0xE) | (v & 0xF) | keep_pe;
    Ok(())
}

/// CLTS.
pub fn clts(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    require_cpl0(cpu)?;
    cpu.cr0 &= !cr0::TS;
    Ok(())
}

fn cr_index(r: Register) -> Option<usize> {
    if r.is_cr() {
        Some((r as u32 - Register::CR0 as u32) as usize)
    } else {
        None
    }
}

/// CR4 bits this CPU accepts; any other set bit raises #GP(0).
const CR4_VALID: u64 = mmu::cr4::TSD
    | mmu::cr4::DE
    | mmu::cr4::PSE
    | mmu::cr4::PAE
    | mmu::cr4::PGE
    | mmu::cr4::PCE
    | mmu::cr4::OSFXSR
    | mmu::cr4::OSXMMEXCPT
    | mmu::cr4::OSXSAVE;

/// MOV CRn, r and MOV r, CRn (SDM vol. 3A §2.5; TLB effects §4.10.4; long-mode
/// activation and deactivation §9.8.5). In 64-bit mode the operands are 64
/// bits and CR8 (the task priority) exists.
pub fn mov_cr(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    require_cpl0(cpu)?;
    let wide = mmu::in_64bit(cpu);
    let width = if wide { u64::MAX } else { 0xFFFF_FFFF };
    let (dst, src) = (insn.ins.op0_register(), insn.ins.op1_register());
    if let Some(n) = cr_index(dst) {
        let (idx, _) = super::gpr_slot(src).ok_or(Exception::InvalidOpcode)?;
        let v = cpu.gpr[idx as usize] & width;
        match n {
            0 => set_cr0(cpu, v)?,
            2 => cpu.cr2 = v,
            3 => {
                if v >> mmu::MAXPHYADDR != 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                cpu.cr3 = v;
                cpu.tlb.flush(true);
            }
            4 => {
                if v & !CR4_VALID != 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                // PAE cannot be cleared while long mode is active.
                if cpu.efer & mmu::efer::LMA != 0 && v & mmu::cr4::PAE == 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                let changed = cpu.cr4 ^ v;
                cpu.cr4 = v;
                if changed & (mmu::cr4::PGE | mmu::cr4::PAE | mmu::cr4::PSE) != 0 {
                    cpu.tlb.flush(false);
                }
            }
            8 if wide => {
                if v & !0xF != 0 {
                    return Err(Exception::GeneralProtection(0));
                }
                // CR8 is the APIC's TPR[7:4] where there is an APIC (SDM
                // vol. 3A §11.8.6); writing it clears TPR[3:0].
                if !m.set_apic_tpr((v as u8) << 4) {
                    cpu.cr8 = v;
                }
            }
            _ => return Err(Exception::InvalidOpcode),
        }
    } else if let Some(n) = cr_index(src) {
        let (idx, _) = super::gpr_slot(dst).ok_or(Exception::InvalidOpcode)?;
        let v = match n {
            0 => cpu.cr0,
            2 => cpu.cr2,
            3 => cpu.cr3,
            4 => cpu.cr4,
            8 if wide => m.apic_tpr().map_or(cpu.cr8, |t| u64::from(t >> 4)),
            _ => return Err(Exception::InvalidOpcode),
        };
        cpu.gpr[idx as usize] = v & width;
    }
    Ok(())
}

/// Writes CR0, with the checks of protected and long mode: PG without PE or NW
/// without CD is #GP(0), bits 63:32 set is #GP(0); enabling paging with
/// EFER.LME needs CR4.PAE and a CS without L, and activates long mode (LMA);
/// disabling paging in IA-32e mode is legal only outside 64-bit mode, and
/// leaves it.
pub fn set_cr0(cpu: &mut CpuState, v: u64) -> Exec {
    use mmu::efer::{LMA, LME};
    if v >> 32 != 0
        || (v & cr0::PG != 0 && v & cr0::PE == 0)
        || (v & cr0::NW != 0 && v & cr0::CD == 0)
    {
        return Err(Exception::GeneralProtection(0));
    }
    let pg_on = v & cr0::PG != 0 && cpu.cr0 & cr0::PG == 0;
    let pg_off = v & cr0::PG == 0 && cpu.cr0 & cr0::PG != 0;
    if pg_on && cpu.efer & LME != 0 {
        if cpu.cr4 & mmu::cr4::PAE == 0 || cpu.seg[sreg::CS].attrs & seg_attr::L != 0 {
            return Err(Exception::GeneralProtection(0));
        }
        cpu.efer |= LMA;
    }
    if pg_off && cpu.efer & LMA != 0 {
        if mmu::in_64bit(cpu) {
            return Err(Exception::GeneralProtection(0));
        }
        cpu.efer &= !LMA;
    }
    let changed = cpu.cr0 ^ v;
    cpu.cr0 = v | cr0::ET;
    if changed & (cr0::PG | cr0::WP | cr0::PE) != 0 {
        cpu.tlb.flush(false);
    }
    Ok(())
}

/// MOV DRn, r32 and MOV r32, DRn (DR4/DR5 alias DR6/DR7 while CR4.DE is clear).
pub fn mov_dr(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    require_cpl0(cpu)?;
    let dr = |r: Register| (r as u32 - Register::DR0 as u32) as usize;
    let (dst, src) = (insn.ins.op0_register(), insn.ins.op1_register());
    let alias = |n: usize| if n == 4 || n == 5 { n + 2 } else { n };
    if dst.is_dr() {
        let (idx, _) = super::gpr_slot(src).ok_or(Exception::InvalidOpcode)?;
        let n = alias(dr(dst));
        if n > 7 {
            return Err(Exception::InvalidOpcode);
        }
        let width = if mmu::in_64bit(cpu) {
            u64::MAX
        } else {
            0xFFFF_FFFF
        };
        cpu.dr[n] = cpu.gpr[idx as usize] & width;
    } else {
        let (idx, _) = super::gpr_slot(dst).ok_or(Exception::InvalidOpcode)?;
        let n = alias(dr(src));
        if n > 7 {
            return Err(Exception::InvalidOpcode);
        }
        cpu.gpr[idx as usize] = cpu.dr[n];
    }
    Ok(())
}

/// INVD and WBINVD: there are no caches to act on.
pub fn cache_op(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    require_cpl0(cpu)
}

/// INVLPG m: drops the TLB entry for the operand's linear address.
pub fn invlpg(cpu: &mut CpuState, _m: &mut Machine, insn: &Insn) -> Exec {
    if insn.ops[0] != Opnd::Mem {
        return Err(Exception::InvalidOpcode);
    }
    require_cpl0(cpu)?;
    let off = ea(cpu, &insn.mem);
    // INVLPG takes the linear address without checks (64-bit mode: with the
    // FS/GS base, and no fault for a non-canonical one).
    let s = insn.mem.seg as usize;
    let base = if mmu::in_64bit(cpu) && s < sreg::FS {
        0
    } else {
        cpu.seg[s].base
    };
    let lin = x86bt_machine::Linear(base.wrapping_add(off) & mmu::lin_mask(cpu));
    cpu.tlb.flush_page(lin);
    Ok(())
}
