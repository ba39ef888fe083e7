//! The SIMD state instructions: LDMXCSR/STMXCSR, the fences, the prefetch
//! hints, CLFLUSH, XGETBV/XSETBV, and XSAVE/XSAVEOPT/XRSTOR for the x87 (bit 0)
//! and SSE (bit 1) state components in the standard format (SDM vol. 1 ch. 13).
//!
//! x86bt does not track XINUSE (the init optimization): every component is
//! taken to be in use, so XSAVE sets XSTATE_BV[i] for every requested i, and
//! XSAVEOPT saves exactly what XSAVE saves (both allowed by SDM vol. 1 §13.6).
//! The XMM area holds XMM0-XMM15 whatever the mode, as FXSAVE/FXRSTOR do here.

use super::super::super::ops::{read_op, write_op};
use super::super::super::x87::{
    load_x87_image, memop, put_x87_image, read_block, write_block, MemOp, MXCSR_MASK,
};
use super::super::super::{Exec, Handler, Insn};
use super::super::{check_sse, mxcsr, set_mxcsr};
use super::gp0;
use crate::exception::Exception;
use crate::fpu::F80;
use crate::mmu::{self, cr4, Access};
use crate::state::{cr0, CpuState};
use iced_x86::{Code, Instruction};
use x86bt_machine::Machine;

/// The state components x86bt supports in XCR0: x87 and SSE.
pub const XCR0_SUPPORTED: u64 = 3;

/// The handler for `ins` if it is one of this file's.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    use Code as C;
    let h: Handler = match ins.code() {
        C::Ldmxcsr_m32 => ldmxcsr,
        C::Stmxcsr_m32 => stmxcsr,
        C::Lfence
        | C::Lfence_E9
        | C::Lfence_EA
        | C::Lfence_EB
        | C::Lfence_EC
        | C::Lfence_ED
        | C::Lfence_EE
        | C::Lfence_EF
        | C::Mfence
        | C::Mfence_F1
        | C::Mfence_F2
        | C::Mfence_F3
        | C::Mfence_F4
        | C::Mfence_F5
        | C::Mfence_F6
        | C::Mfence_F7
        | C::Sfence
        | C::Sfence_F9
        | C::Sfence_FA
        | C::Sfence_FB
        | C::Sfence_FC
        | C::Sfence_FD
        | C::Sfence_FE
        | C::Sfence_FF => hint,
        C::Prefetchnta_m8
        | C::Prefetcht0_m8
        | C::Prefetcht1_m8
        | C::Prefetcht2_m8
        | C::Prefetchw_m8 => hint,
        C::Clflush_m8 => clflush,
        C::Xgetbv => xgetbv,
        C::Xsetbv => xsetbv,
        C::Xsave_mem | C::Xsaveopt_mem => xsave::<false>,
        C::Xsave64_mem | C::Xsaveopt64_mem => xsave::<true>,
        C::Xrstor_mem => xrstor::<false>,
        C::Xrstor64_mem => xrstor::<true>,
        _ => return None,
    };
    Some(h)
}

/// LDMXCSR m32: #GP(0) when a bit outside MXCSR_MASK (FFFFh) is set. Setting
/// an unmasked exception flag raises nothing until an SSE instruction runs.
fn ldmxcsr(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let v = read_op(cpu, m, insn, 0, 4)? as u32;
    if v & !mxcsr::WRITABLE != 0 {
        return gp0();
    }
    set_mxcsr(cpu, v);
    Ok(())
}

/// STMXCSR m32.
fn stmxcsr(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    check_sse(cpu)?;
    let v = super::super::mxcsr(cpu);
    write_op(cpu, m, insn, 0, 4, u64::from(v))
}

/// LFENCE/SFENCE/MFENCE and PREFETCHh/PREFETCHW: one guest CPU executes its
/// accesses in program order, so fences order nothing further; prefetches are
/// hints that never fault (SDM vol. 2B PREFETCHh).
fn hint(_cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    Ok(())
}

/// CLFLUSH m8: no caches to flush; the address is checked as a byte read
/// (segment and page), without reading it (no device side effects).
fn clflush(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let mo = memop(cpu, insn);
    let lin = mmu::seg_linear(cpu, mo.seg, mo.off, 1, Access::Read)?;
    mmu::translate(cpu, m, lin, Access::Read)?;
    Ok(())
}

/// #UD unless CR4.OSXSAVE is set.
fn check_osxsave(cpu: &CpuState) -> Exec {
    if cpu.cr4 & cr4::OSXSAVE == 0 {
        Err(Exception::InvalidOpcode)
    } else {
        Ok(())
    }
}

/// XGETBV: EDX:EAX = XCR[ECX]; only XCR0 exists (#GP(0) otherwise).
fn xgetbv(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    check_osxsave(cpu)?;
    if cpu.gpr[1] as u32 != 0 {
        return gp0();
    }
    cpu.gpr[0] = cpu.xcr0 & 0xFFFF_FFFF;
    cpu.gpr[2] = cpu.xcr0 >> 32;
    Ok(())
}

/// XSETBV: XCR[ECX] = EDX:EAX at CPL 0; #GP(0) for ECX != 0, for x87 (bit 0)
/// clear, or for a component x86bt does not support.
fn xsetbv(cpu: &mut CpuState, _m: &mut Machine, _insn: &Insn) -> Exec {
    check_osxsave(cpu)?;
    if cpu.cpl() != 0 || cpu.gpr[1] as u32 != 0 {
        return gp0();
    }
    let v = ((cpu.gpr[2] & 0xFFFF_FFFF) << 32) | (cpu.gpr[0] & 0xFFFF_FFFF);
    if v & 1 == 0 || v & !XCR0_SUPPORTED != 0 {
        return gp0();
    }
    cpu.xcr0 = v;
    Ok(())
}

/// The XSAVE area's operand `k` bytes in.
fn at(mo: MemOp, k: u64) -> MemOp {
    MemOp {
        off: mo.off.wrapping_add(k) & mo.mask,
        ..mo
    }
}

/// The checks every XSAVE-family instruction makes, in the SDM's order (#UD
/// without CR4.OSXSAVE, #NM with CR0.TS, #GP(0) unless 64-byte aligned), and
/// the requested-feature bitmap EDX:EAX & XCR0.
fn xcheck(cpu: &CpuState, insn: &Insn) -> Result<(MemOp, u64), Exception> {
    check_osxsave(cpu)?;
    if cpu.cr0 & cr0::TS != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    let mo = memop(cpu, insn);
    if cpu.seg[mo.seg].base.wrapping_add(mo.off) & 63 != 0 {
        return gp0();
    }
    let mask = ((cpu.gpr[2] & 0xFFFF_FFFF) << 32) | (cpu.gpr[0] & 0xFFFF_FFFF);
    Ok((mo, mask & cpu.xcr0))
}

/// XSAVE/XSAVEOPT (`WIDE`: the REX.W forms, with 64-bit x87 pointers): x87
/// state at 0-23 and 32-159 when RFBM[0]; MXCSR and MXCSR_MASK at 24-31 and
/// XMM0-15 at 160-415 when RFBM[1]; XSTATE_BV at 512 read and written back
/// with the RFBM bits set. Nothing else is written (not XCOMP_BV, not the
/// reserved or software bytes).
fn xsave<const WIDE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let (mo, rfbm) = xcheck(cpu, insn)?;
    if rfbm & 3 != 0 {
        mmu::probe_write(cpu, m, mo.seg, mo.off, 416)?;
    }
    let hdr = at(mo, 512);
    mmu::probe_write(cpu, m, hdr.seg, hdr.off, 8)?;
    let mut bv = [0u8; 8];
    read_block(cpu, m, hdr, &mut bv)?;
    let mut b = [0u8; 416];
    if rfbm & 1 != 0 {
        put_x87_image(cpu, &mut b, WIDE);
        write_block(cpu, m, mo, &b[..24])?;
        write_block(cpu, m, at(mo, 32), &b[32..160])?;
    }
    if rfbm & 2 != 0 {
        // XMM8-15 exist in 64-bit mode only (SDM vol. 1 §13.5.2).
        let end = if mmu::in_64bit(cpu) { 416 } else { 288 };
        b[24..28].copy_from_slice(&cpu.fx[24..28]);
        b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
        b[160..end].copy_from_slice(&cpu.fx[160..end]);
        write_block(cpu, m, at(mo, 24), &b[24..32])?;
        write_block(cpu, m, at(mo, 160), &b[160..end])?;
    }
    let bv = u64::from_le_bytes(bv) | rfbm;
    write_block(cpu, m, hdr, &bv.to_le_bytes())
}

/// XRSTOR (`WIDE`: XRSTOR64), standard form only: #GP(0) when XCOMP_BV[63] is
/// set (no compaction), when header bytes 8-23 are not zero, when XSTATE_BV
/// has a bit outside XCR0, or when the MXCSR image has a reserved bit. For
/// each requested component: loaded when its XSTATE_BV bit is set, else put
/// in its initial configuration (SDM vol. 1 §13.6). MXCSR is loaded from the
/// image whenever RFBM[1] is set, whatever XSTATE_BV[1] says (§13.8.1).
fn xrstor<const WIDE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let (mo, rfbm) = xcheck(cpu, insn)?;
    let mut hdr = [0u8; 24];
    read_block(cpu, m, at(mo, 512), &mut hdr)?;
    let word = |k: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hdr[k..k + 8]);
        u64::from_le_bytes(w)
    };
    let (xstate_bv, xcomp_bv, rsvd) = (word(0), word(8), word(16));
    if xcomp_bv != 0 || rsvd != 0 || xstate_bv & !cpu.xcr0 != 0 {
        return gp0();
    }
    let mut b = [0u8; 416];
    if rfbm & 3 != 0 {
        read_block(cpu, m, mo, &mut b)?;
    }
    let csr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if rfbm & 2 != 0 && csr & !MXCSR_MASK != 0 {
        return gp0();
    }
    if rfbm & 1 != 0 {
        if xstate_bv & 1 != 0 {
            load_x87_image(cpu, &b, WIDE);
        } else {
            cpu.fpu.init();
            cpu.fpu.regs = [F80::ZERO; 8];
        }
    }
    if rfbm & 2 != 0 {
        let end = if mmu::in_64bit(cpu) { 416 } else { 288 };
        if xstate_bv & 2 != 0 {
            cpu.fx[160..end].copy_from_slice(&b[160..end]);
        } else {
            cpu.fx[160..end].fill(0);
        }
        set_mxcsr(cpu, csr);
    }
    Ok(())
}
