//! String instructions: MOVS, CMPS, SCAS, LODS, STOS, INS, OUTS, with REP, REPE
//! and REPNE.
//!
//! The address size picks SI/DI/CX or ESI/EDI/ECX. The source segment may be
//! overridden; the destination is always ES. A repeated instruction runs in
//! batches: after [`BATCH`] iterations with work left it ends without advancing
//! IP, so the run loop can deliver interrupts and it resumes where it stopped, as
//! an interrupted REP does on hardware. Each iteration retires as one instruction.
//! A fault leaves the registers as of the last completed iteration.

use super::flags;
use super::ops::*;
use super::{Exec, Insn};
use crate::exception::Exception;
use crate::mmu;
use crate::state::flags::*;
use crate::state::{reg, sreg, CpuState};
use iced_x86::{Mnemonic, OpKind};
use x86bt_machine::Machine;

/// Iterations a repeated string instruction runs before yielding.
pub const BATCH: u64 = 4096;

const RSI: u8 = reg::RSI as u8;
const RDI: u8 = reg::RDI as u8;
const RCX: u8 = reg::RCX as u8;
/// The page size, for the bulk path.
const PAGE: u64 = 4096;

fn addr_size(insn: &Insn) -> u32 {
    for i in 0..insn.ins.op_count() {
        match insn.ins.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return 2,
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => return 4,
            OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => return 8,
            _ => {}
        }
    }
    2
}

/// All the string instructions.
pub fn string_op(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    // The element size comes from the memory operand: OUTS has DX as operand 0.
    let size = match insn.ins.memory_size().size() {
        s @ (1 | 2 | 4 | 8) => s as u32,
        _ => insn.size(),
    };
    let asz = addr_size(insn);
    let amask = mask(asz);
    let mn = insn.ins.mnemonic();
    let rep = insn.ins.has_rep_prefix() || insn.ins.has_repne_prefix();
    let compare = matches!(
        mn,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq
    ) || matches!(
        mn,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq
    );
    let step = if cpu.rflags & DF != 0 {
        (u64::from(size)).wrapping_neg()
    } else {
        u64::from(size)
    };
    let src_seg = insn.ins.memory_segment() as u32;
    let src_seg = src_seg.wrapping_sub(iced_x86::Register::ES as u32) as usize;
    if matches!(
        mn,
        Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
    ) && !(rep && get_gpr(cpu, RCX, 0, asz) == 0)
    {
        super::system::check_io(cpu, m, cpu.gpr[reg::RDX] as u16, size)?;
    }
    if rep && step == u64::from(size) && bulk(cpu, m, mn, size, asz, src_seg) {
        return Ok(());
    }
    let mut done = 0u64;
    loop {
        if rep && get_gpr(cpu, RCX, 0, asz) == 0 {
            break;
        }
        let si = get_gpr(cpu, RSI, 0, asz);
        let di = get_gpr(cpu, RDI, 0, asz);
        // One iteration; a fault in it leaves the iterations before it retired
        // (each counts as an instruction, the faulting one is counted by the
        // caller).
        let mut one = || -> Exec {
            match mn {
                Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => {
                    let v = mmu::read(cpu, m, src_seg, si, size)?;
                    mmu::write(cpu, m, sreg::ES, di, size, v)?;
                    set_gpr(cpu, RSI, 0, asz, si.wrapping_add(step) & amask);
                    set_gpr(cpu, RDI, 0, asz, di.wrapping_add(step) & amask);
                }
                Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq => {
                    mmu::write(cpu, m, sreg::ES, di, size, cpu.gpr[reg::RAX])?;
                    set_gpr(cpu, RDI, 0, asz, di.wrapping_add(step) & amask);
                }
                Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => {
                    let v = mmu::read(cpu, m, src_seg, si, size)?;
                    set_gpr(cpu, reg::RAX as u8, 0, size, v);
                    set_gpr(cpu, RSI, 0, asz, si.wrapping_add(step) & amask);
                }
                Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq => {
                    let a = mmu::read(cpu, m, src_seg, si, size)?;
                    let b = mmu::read(cpu, m, sreg::ES, di, size)?;
                    flags::sub(cpu, a, b, 0, size);
                    set_gpr(cpu, RSI, 0, asz, si.wrapping_add(step) & amask);
                    set_gpr(cpu, RDI, 0, asz, di.wrapping_add(step) & amask);
                }
                Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => {
                    let b = mmu::read(cpu, m, sreg::ES, di, size)?;
                    flags::sub(cpu, cpu.gpr[reg::RAX], b, 0, size);
                    set_gpr(cpu, RDI, 0, asz, di.wrapping_add(step) & amask);
                }
                Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => {
                    mmu::seg_linear(cpu, sreg::ES, di, size, mmu::Access::Write)?;
                    let port = cpu.gpr[reg::RDX] as u16;
                    m.sync_clock(cpu.icount);
                    let v = m.io_read(port, size as usize);
                    mmu::write(cpu, m, sreg::ES, di, size, u64::from(v))?;
                    set_gpr(cpu, RDI, 0, asz, di.wrapping_add(step) & amask);
                }
                Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => {
                    let v = mmu::read(cpu, m, src_seg, si, size)?;
                    let port = cpu.gpr[reg::RDX] as u16;
                    m.sync_clock(cpu.icount);
                    m.io_write(port, size as usize, v as u32);
                    set_gpr(cpu, RSI, 0, asz, si.wrapping_add(step) & amask);
                }
                _ => return Err(Exception::InvalidOpcode),
            }
            Ok(())
        };
        if let Err(e) = one() {
            cpu.icount += done;
            return Err(e);
        }
        if !rep {
            return Ok(());
        }
        let c = get_gpr(cpu, RCX, 0, asz).wrapping_sub(1) & amask;
        set_gpr(cpu, RCX, 0, asz, c);
        done += 1;
        if compare {
            let zf = cpu.rflags & ZF != 0;
            if insn.ins.has_repe_prefix() != zf || c == 0 {
                break;
            }
        }
        if c == 0 {
            break;
        }
        // Yield after a batch, or when a store hit cached code, resuming at this
        // same instruction.
        if done >= BATCH || m.mem.code_write_pending || cpu.rep_single {
            cpu.next_rip = cpu.rip;
            break;
        }
    }
    cpu.icount += done.saturating_sub(1);
    Ok(())
}

/// REP MOVS and REP STOS going forward over plain RAM with no wrap and no overlap:
/// one host copy or fill per page for up to [`BATCH`] elements, with the same
/// final state as the element loop. The segment checks cover the whole batch
/// first; then each run of whole elements that stays inside one source and one
/// destination page is translated (source first, as the element loop reads
/// before it writes, so the accessed and dirty bits are set alike) and copied.
/// It stops before a run it cannot do (an element that straddles a page, a
/// page that faults, memory that is not plain RAM, an overlap), so the element
/// loop, run when the instruction restarts, raises the fault or does the
/// access exactly. Returns false, having changed nothing, when not even the
/// first run applies.
fn bulk(
    cpu: &mut CpuState,
    m: &mut Machine,
    mn: Mnemonic,
    size: u32,
    asz: u32,
    src_seg: usize,
) -> bool {
    let movs = matches!(
        mn,
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq
    );
    let stos = matches!(
        mn,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd | Mnemonic::Stosq
    );
    // Data breakpoints are checked per access by the element loop.
    if !(movs || stos)
        || cpu.log_writes
        || cpu.log_accesses
        || cpu.rep_single
        || cpu.dr[7] & 0xFF != 0
    {
        return false;
    }
    let amask = mask(asz);
    let count = get_gpr(cpu, RCX, 0, asz).min(BATCH);
    if count == 0 {
        return false;
    }
    let size64 = u64::from(size);
    let bytes = count * size64;
    let range = |cpu: &CpuState, s: usize, off: u64, acc| -> Option<u64> {
        if off + bytes - 1 > amask {
            return None;
        }
        mmu::seg_linear(cpu, s, off, bytes as u32, acc)
            .ok()
            .map(|l| l.0)
    };
    let di = get_gpr(cpu, RDI, 0, asz);
    let Some(dst) = range(cpu, sreg::ES, di, mmu::Access::Write) else {
        return false;
    };
    let si = get_gpr(cpu, RSI, 0, asz);
    let src = if movs {
        let Some(src) = range(cpu, src_seg, si, mmu::Access::Read) else {
            return false;
        };
        src
    } else {
        0
    };
    let page_left = |lin: u64| PAGE - (lin & (PAGE - 1));
    let pat = cpu.gpr[reg::RAX].to_le_bytes();
    let a20 = m.mem.a20_mask();
    let mut done = 0u64;
    while done < bytes {
        let (d, s) = (dst + done, src + done);
        let mut run = page_left(d).min(bytes - done);
        if movs {
            run = run.min(page_left(s));
        }
        // Whole elements only: one that straddles a page is the element loop's.
        let run = run / size64 * size64;
        if run == 0 {
            break;
        }
        let ok = if movs {
            let Ok(ps) = mmu::translate(cpu, m, x86bt_machine::Linear(s), mmu::Access::Read) else {
                break;
            };
            let Ok(pd) = mmu::translate(cpu, m, x86bt_machine::Linear(d), mmu::Access::Write)
            else {
                break;
            };
            m.mem.copy_fast(
                x86bt_machine::GuestPhys(ps.0 & a20),
                x86bt_machine::GuestPhys(pd.0 & a20),
                run,
            )
        } else {
            let Ok(pd) = mmu::translate(cpu, m, x86bt_machine::Linear(d), mmu::Access::Write)
            else {
                break;
            };
            m.mem.fill_fast(
                x86bt_machine::GuestPhys(pd.0 & a20),
                &pat[..size as usize],
                run / size64,
            )
        };
        if !ok {
            break;
        }
        done += run;
    }
    if done == 0 {
        return false;
    }
    let n = done / size64;
    set_gpr(cpu, RDI, 0, asz, di + done);
    if movs {
        set_gpr(cpu, RSI, 0, asz, si + done);
    }
    let left = get_gpr(cpu, RCX, 0, asz) - n;
    set_gpr(cpu, RCX, 0, asz, left);
    if left != 0 {
        cpu.next_rip = cpu.rip;
    }
    cpu.icount += n - 1;
    true
}
