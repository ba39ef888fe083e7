//! x87 FPU instructions (escape opcodes D8-DF), WAIT/FWAIT, and FXSAVE/FXRSTOR.
//!
//! Every escape first checks CR0.EM and CR0.TS (#NM, SDM vol. 3A §2.5, Table
//! 2-2). Then the "waiting" instructions, which are all but FNINIT, FNCLEX,
//! FNSTCW, FNSTSW, FNSTENV and FNSAVE, check for a pending unmasked exception (ES
//! set): #MF when CR0.NE is set, otherwise FERR# is asserted (see `crate::fpu`)
//! and the instruction proceeds (SDM vol. 1 §8.6, §8.7).
//!
//! Faults are precise: memory operands are read, and results written, before any
//! FPU state changes, so a #PF or #GP leaves the FPU as it was. The last
//! instruction pointer, opcode and data pointer are recorded by every
//! non-control instruction that completes, including one whose unmasked
//! exception is now pending (SDM vol. 1 §8.1.8, §8.1.9).
//!
//! The FSTENV/FSAVE images follow SDM vol. 1 §8.1.10 (Figures 8-9 to 8-12): the
//! real-mode formats (real and virtual-8086 mode) hold 20/32-bit linear pointers,
//! computed here as selector × 16 + offset. Reserved upper words of the 32-bit
//! formats are stored as FFFFh, as hardware does.

use super::ops::{ea, set_gpr};
use super::{Exec, Insn, Opnd};
use crate::exception::Exception;
use crate::fpu::{self, sw, Arith, Cmp, Constant, Outcome, Trig, TrigResult, F80};
use crate::mmu;
use crate::state::{cr0, flags, reg, sreg, CpuState};
use iced_x86::{Instruction, MemorySize, Mnemonic as M, OpCodeOperandKind, OpKind, Register};
use x86bt_machine::Machine;

/// The memory operand of an instruction: segment, offset, address-size mask.
#[derive(Clone, Copy)]
pub(crate) struct MemOp {
    pub(crate) seg: usize,
    pub(crate) off: u64,
    pub(crate) mask: u64,
}

pub(crate) fn memop(cpu: &CpuState, insn: &Insn) -> MemOp {
    MemOp {
        seg: usize::from(insn.mem.seg),
        off: ea(cpu, &insn.mem),
        mask: insn.mem.addr_mask,
    }
}

fn has_mem(insn: &Insn) -> bool {
    insn.ops.contains(&Opnd::Mem)
}

/// Reads `buf.len()` bytes at the operand (the offset wraps at the address size).
pub(crate) fn read_block(cpu: &mut CpuState, m: &mut Machine, mo: MemOp, buf: &mut [u8]) -> Exec {
    let mut k = 0;
    while k < buf.len() {
        let n = chunk(buf.len() - k);
        let off = mo.off.wrapping_add(k as u64) & mo.mask;
        let v = mmu::read(cpu, m, mo.seg, off, n as u32)?;
        buf[k..k + n].copy_from_slice(&v.to_le_bytes()[..n]);
        k += n;
    }
    Ok(())
}

/// Writes `bytes` at the operand, after checking that all of them can be written.
pub(crate) fn write_block(cpu: &mut CpuState, m: &mut Machine, mo: MemOp, bytes: &[u8]) -> Exec {
    mmu::probe_write(cpu, m, mo.seg, mo.off, bytes.len() as u32)?;
    let mut k = 0;
    while k < bytes.len() {
        let n = chunk(bytes.len() - k);
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&bytes[k..k + n]);
        let off = mo.off.wrapping_add(k as u64) & mo.mask;
        mmu::write(cpu, m, mo.seg, off, n as u32, u64::from_le_bytes(v))?;
        k += n;
    }
    Ok(())
}

fn chunk(left: usize) -> usize {
    match left {
        8.. => 8,
        4..=7 => 4,
        2 | 3 => 2,
        _ => 1,
    }
}

fn read_mem<const N: usize>(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Result<[u8; N], Exception> {
    let mut b = [0u8; N];
    read_block(cpu, m, memop(cpu, insn), &mut b)?;
    Ok(b)
}

fn le(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(v)
}

/// The index i of an ST(i) register.
fn sti(r: Register) -> usize {
    (r as u32).wrapping_sub(Register::ST0 as u32) as usize & 7
}

/// Reads an x87 memory source operand into extended format.
fn read_operand(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
) -> Result<fpu::Loaded, Exception> {
    let plain = |value| fpu::Loaded {
        value,
        denormal: false,
    };
    Ok(match insn.ins.memory_size() {
        MemorySize::Float32 => fpu::from_f32(le(&read_mem::<4>(cpu, m, insn)?) as u32),
        MemorySize::Float64 => fpu::from_f64(le(&read_mem::<8>(cpu, m, insn)?)),
        MemorySize::Float80 => plain(F80::from_bytes(read_mem::<10>(cpu, m, insn)?)),
        MemorySize::Int16 => plain(fpu::from_int(i64::from(
            le(&read_mem::<2>(cpu, m, insn)?) as u16 as i16,
        ))),
        MemorySize::Int32 => plain(fpu::from_int(i64::from(
            le(&read_mem::<4>(cpu, m, insn)?) as u32 as i32,
        ))),
        MemorySize::Int64 => plain(fpu::from_int(le(&read_mem::<8>(cpu, m, insn)?) as i64)),
        MemorySize::Bcd => plain(fpu::from_bcd(read_mem::<10>(cpu, m, insn)?)),
        _ => return Err(Exception::InvalidOpcode),
    })
}

/// A pending unmasked exception at a waiting instruction: #MF with CR0.NE, else
/// FERR#, which the PC routes to IRQ 13 (the instruction then proceeds, as with
/// IGNNE# asserted).
fn pending(cpu: &mut CpuState, m: &mut Machine) -> Exec {
    if cpu.fpu.sw & sw::ES != 0 {
        if cpu.cr0 & cr0::NE != 0 {
            return Err(Exception::FpuError);
        }
        if !cpu.fpu.ferr {
            cpu.fpu.ferr = true;
            m.assert_ferr();
        }
    }
    Ok(())
}

/// Whether the processor uses the real-mode FSTENV/FSAVE formats.
fn real_format(cpu: &CpuState) -> bool {
    !cpu.protected() || cpu.v86()
}

/// WAIT/FWAIT: #NM if CR0.MP and CR0.TS are both set, then the pending-exception
/// check.
pub fn fwait(cpu: &mut CpuState, m: &mut Machine, _insn: &Insn) -> Exec {
    if cpu.cr0 & (cr0::MP | cr0::TS) == cr0::MP | cr0::TS {
        return Err(Exception::DeviceNotAvailable);
    }
    pending(cpu, m)
}

/// Executes an x87 escape instruction (D8-DF).
pub fn esc(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let mn = insn.ins.mnemonic();
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    match mn {
        M::Fninit => {
            cpu.fpu.init();
            return Ok(());
        }
        M::Fnclex => {
            cpu.fpu.clear_exceptions();
            return Ok(());
        }
        M::Fnstcw => return store_word(cpu, m, insn, cpu.fpu.cw),
        M::Fnstsw => return store_word(cpu, m, insn, cpu.fpu.status()),
        M::Fnstenv => return fnstenv(cpu, m, insn),
        M::Fnsave => return fnsave(cpu, m, insn),
        // The 8087's interrupt enable/disable and the 287's FSETPM are FNOPs on
        // the 387 and later, without the wait.
        M::Fneni | M::Fndisi | M::Fnsetpm => return Ok(()),
        _ => {}
    }
    pending(cpu, m)?;
    match mn {
        M::Finit => cpu.fpu.init(),
        M::Fclex => cpu.fpu.clear_exceptions(),
        M::Fstcw => store_word(cpu, m, insn, cpu.fpu.cw)?,
        M::Fstsw => store_word(cpu, m, insn, cpu.fpu.status())?,
        M::Fstenv => fnstenv(cpu, m, insn)?,
        M::Fsave => fnsave(cpu, m, insn)?,
        M::Feni | M::Fdisi | M::Fsetpm => {}
        M::Fldcw => {
            let v = le(&read_mem::<2>(cpu, m, insn)?) as u16;
            cpu.fpu.set_control(v);
        }
        M::Fldenv => fldenv(cpu, m, insn)?,
        M::Frstor => frstor(cpu, m, insn)?,
        _ => {
            data(cpu, m, insn, mn)?;
            record_pointers(cpu, insn);
        }
    }
    Ok(())
}

/// Records FIP, FCS, FOP, and FDP/FDS for a memory operand.
fn record_pointers(cpu: &mut CpuState, insn: &Insn) {
    cpu.fpu.fip = cpu.rip as u32;
    cpu.fpu.fcs = cpu.seg[sreg::CS].selector;
    cpu.fpu.fop = opcode(&insn.ins);
    if has_mem(insn) {
        cpu.fpu.fdp = ea(cpu, &insn.mem) as u32;
        cpu.fpu.fds = cpu.seg[usize::from(insn.mem.seg)].selector;
    }
}

/// The 11-bit FOP: the low 3 bits of the escape byte, then the ModR/M byte
/// (SDM vol. 1 §8.1.9), rebuilt from the decoded form.
fn opcode(ins: &Instruction) -> u16 {
    let oc = ins.op_code();
    let code = oc.op_code();
    let (first, modrm) = if oc.op_code_len() == 2 {
        let mut modrm = code & 0xFF;
        for k in 0..ins.op_count().min(oc.op_count()) {
            if oc.op_kind(k) == OpCodeOperandKind::sti_opcode {
                modrm += sti(ins.op_register(k)) as u32;
            }
        }
        (code >> 8, modrm)
    } else {
        let reg = oc.group_index().max(0) as u32;
        (code, (reg << 3) | u32::from(mem_modrm(ins)))
    };
    (((first & 7) << 8) | (modrm & 0xFF)) as u16
}

/// The mod and r/m fields of a memory operand's ModR/M byte.
fn mem_modrm(ins: &Instruction) -> u8 {
    let (base, index) = (ins.memory_base(), ins.memory_index());
    let md = |dsz: u32| match dsz {
        0 => 0u8,
        1 => 1,
        _ => 2,
    };
    if base.is_gpr16() || index.is_gpr16() {
        use Register::*;
        let rm = match (base, index) {
            (BX, SI) => 0,
            (BX, DI) => 1,
            (BP, SI) => 2,
            (BP, DI) => 3,
            (SI, None) => 4,
            (DI, None) => 5,
            (BP, None) => 6,
            _ => 7,
        };
        (md(ins.memory_displ_size()) << 6) | rm
    } else if base == Register::None && index == Register::None {
        if ins.memory_displ_size() == 2 {
            6
        } else {
            5
        }
    } else if base == Register::None {
        4
    } else {
        let rm = if index != Register::None || base == Register::ESP {
            4
        } else {
            (base.number() & 7) as u8
        };
        (md(ins.memory_displ_size()) << 6) | rm
    }
}

/// FNSTSW AX / m16, FNSTCW m16.
fn store_word(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, v: u16) -> Exec {
    if insn.ins.op_count() == 1 && insn.ins.op0_kind() == OpKind::Register {
        set_gpr(cpu, reg::RAX as u8, 0, 2, u64::from(v));
        return Ok(());
    }
    write_block(cpu, m, memop(cpu, insn), &v.to_le_bytes())
}

// ================================================================================
// Data instructions
// ================================================================================

fn data(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, mn: M) -> Exec {
    match mn {
        M::Fld | M::Fild | M::Fbld => fld(cpu, m, insn),
        M::Fst | M::Fstp | M::Fstpnce => fst(cpu, m, insn, mn != M::Fst),
        M::Fist | M::Fistp | M::Fbstp | M::Fisttp => fist(cpu, m, insn, mn != M::Fist),
        M::Fldz => push_value(cpu, F80::ZERO),
        M::Fld1 => push_value(cpu, F80::ONE),
        M::Fldpi => push_const(cpu, Constant::Pi),
        M::Fldl2t => push_const(cpu, Constant::L2T),
        M::Fldl2e => push_const(cpu, Constant::L2E),
        M::Fldlg2 => push_const(cpu, Constant::Lg2),
        M::Fldln2 => push_const(cpu, Constant::Ln2),
        M::Fadd | M::Faddp | M::Fiadd => arith(cpu, m, insn, Arith::Add, false),
        M::Fsub | M::Fsubp | M::Fisub => arith(cpu, m, insn, Arith::Sub, false),
        M::Fsubr | M::Fsubrp | M::Fisubr => arith(cpu, m, insn, Arith::Sub, true),
        M::Fmul | M::Fmulp | M::Fimul => arith(cpu, m, insn, Arith::Mul, false),
        M::Fdiv | M::Fdivp | M::Fidiv => arith(cpu, m, insn, Arith::Div, false),
        M::Fdivr | M::Fdivrp | M::Fidivr => arith(cpu, m, insn, Arith::Div, true),
        M::Fcom | M::Ficom => compare(cpu, m, insn, false, 0, false),
        M::Fcomp | M::Ficomp => compare(cpu, m, insn, false, 1, false),
        M::Fcompp => compare(cpu, m, insn, false, 2, false),
        M::Fucom => compare(cpu, m, insn, true, 0, false),
        M::Fucomp => compare(cpu, m, insn, true, 1, false),
        M::Fucompp => compare(cpu, m, insn, true, 2, false),
        M::Fcomi => compare(cpu, m, insn, false, 0, true),
        M::Fcomip => compare(cpu, m, insn, false, 1, true),
        M::Fucomi => compare(cpu, m, insn, true, 0, true),
        M::Fucomip => compare(cpu, m, insn, true, 1, true),
        M::Ftst => compare(cpu, m, insn, false, 0, false),
        M::Fxam => {
            fxam(cpu);
            Ok(())
        }
        M::Fxch => {
            fxch(cpu, sti(insn.ins.op1_register()));
            Ok(())
        }
        M::Fcmovb | M::Fcmove | M::Fcmovbe | M::Fcmovu => fcmov(cpu, insn, mn),
        M::Fcmovnb | M::Fcmovne | M::Fcmovnbe | M::Fcmovnu => fcmov(cpu, insn, mn),
        M::Ffree | M::Ffreep => {
            cpu.fpu.free(sti(insn.ins.op0_register()));
            if mn == M::Ffreep {
                cpu.fpu.top = (cpu.fpu.top + 1) & 7;
            }
            Ok(())
        }
        M::Fincstp | M::Fdecstp => {
            let f = &mut cpu.fpu;
            f.top = if mn == M::Fincstp {
                f.top + 1
            } else {
                f.top.wrapping_sub(1)
            } & 7;
            f.sw &= !sw::C1;
            Ok(())
        }
        M::Fnop => Ok(()),
        M::Fchs | M::Fabs => {
            sign_op(cpu, mn == M::Fchs);
            Ok(())
        }
        _ => numeric(cpu, mn),
    }
}

/// The register-only numeric instructions.
fn numeric(cpu: &mut CpuState, mn: M) -> Exec {
    let f = &mut cpu.fpu;
    let cw = f.cw;
    match mn {
        M::Fsqrt => unary(f, |a| fpu::sqrt(a, cw)),
        M::Frndint => unary(f, |a| fpu::round_int(a, cw)),
        M::F2xm1 => unary(f, |a| fpu::exp2m1(a, cw)),
        M::Fscale => binary_st0(f, |a, b| fpu::scale(a, b, cw)),
        M::Fprem | M::Fprem1 => fprem(f, mn == M::Fprem1),
        M::Fxtract => fxtract(f),
        M::Fsin => trig(f, Trig::Sin),
        M::Fcos => trig(f, Trig::Cos),
        M::Fsincos => trig(f, Trig::SinCos),
        M::Fptan => trig(f, Trig::Tan),
        M::Fpatan => binary_st1(f, |x, y| fpu::atan2(y, x, cw)),
        M::Fyl2x => binary_st1(f, |x, y| fpu::ylog2x(x, y, cw)),
        M::Fyl2xp1 => binary_st1(f, |x, y| fpu::ylog2xp1(x, y, cw)),
        _ => return Err(Exception::InvalidOpcode),
    }
    Ok(())
}

/// Masked stack underflow on a result that goes to ST(dst): the real indefinite
/// is stored (and popped if `pop`).
fn underflow_into(f: &mut fpu::Fpu, dst: usize, pop: bool) {
    if f.underflow() {
        f.set_st(dst, F80::INDEFINITE);
        if pop {
            f.pop();
        }
    }
}

/// ST(0) := op(ST(0)).
fn unary(f: &mut fpu::Fpu, op: impl Fn(F80) -> Outcome) {
    match f.st(0) {
        Some(a) => f.commit(op(a), 0, false),
        None => underflow_into(f, 0, false),
    }
}

/// ST(0) := op(ST(0), ST(1)).
fn binary_st0(f: &mut fpu::Fpu, op: impl Fn(F80, F80) -> Outcome) {
    match (f.st(0), f.st(1)) {
        (Some(a), Some(b)) => f.commit(op(a, b), 0, false),
        _ => underflow_into(f, 0, false),
    }
}

/// ST(1) := op(ST(0), ST(1)), then pop.
fn binary_st1(f: &mut fpu::Fpu, op: impl Fn(F80, F80) -> Outcome) {
    match (f.st(0), f.st(1)) {
        (Some(a), Some(b)) => f.commit(op(a, b), 1, true),
        _ => underflow_into(f, 1, true),
    }
}

fn push_value(cpu: &mut CpuState, v: F80) -> Exec {
    let f = &mut cpu.fpu;
    if !f.push_overflows() {
        f.push(v);
        f.sw &= !sw::C1;
    }
    Ok(())
}

fn push_const(cpu: &mut CpuState, c: Constant) -> Exec {
    let v = fpu::constant(c, cpu.fpu.cw);
    push_value(cpu, v)
}

/// FLD, FILD, FBLD.
fn fld(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let src = if has_mem(insn) {
        Some(read_operand(cpu, m, insn)?)
    } else {
        cpu.fpu
            .st(sti(insn.ins.op0_register()))
            .map(|value| fpu::Loaded {
                value,
                denormal: false,
            })
    };
    let f = &mut cpu.fpu;
    if f.push_overflows() {
        return Ok(());
    }
    let Some(src) = src else {
        if f.underflow() {
            f.push(F80::INDEFINITE);
        }
        return Ok(());
    };
    let mut v = src.value;
    // Single and double SNaNs and denormals raise IE/DE on the conversion;
    // extended, integer and BCD loads never do.
    let converted = matches!(
        insn.ins.memory_size(),
        MemorySize::Float32 | MemorySize::Float64
    ) && has_mem(insn);
    let mut flags = 0;
    if converted && v.class() == fpu::Class::SNaN {
        flags |= sw::IE;
        v = v.quiet();
    }
    if src.denormal {
        flags |= sw::DE;
    }
    f.raise(flags);
    f.sw &= !sw::C1;
    // Only an unmasked IE holds the load back: a denormal is loaded even when DE
    // is unmasked (as measured on hardware; SDM vol. 1 §8.5.2 says TOP stays).
    if f.masked(flags & sw::IE) {
        f.push(v);
    }
    Ok(())
}

/// FST, FSTP (memory and register destinations).
fn fst(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, pop: bool) -> Exec {
    let src = cpu.fpu.st(0);
    let cw = cpu.fpu.cw;
    if !has_mem(insn) {
        let dst = sti(insn.ins.op0_register());
        let f = &mut cpu.fpu;
        match src {
            Some(v) => {
                f.set_st(dst, v);
                f.sw &= !sw::C1;
                if pop {
                    f.pop();
                }
            }
            None => underflow_into(f, dst, pop),
        }
        return Ok(());
    }
    let size = insn.ins.memory_size();
    let (bytes, flags, c1): (Option<[u8; 10]>, u16, bool) = match src {
        None => {
            let bits = match size {
                MemorySize::Float32 => u64::from(0xFFC0_0000u32),
                MemorySize::Float64 => 0xFFF8_0000_0000_0000,
                _ => 0,
            };
            let mut b = if size == MemorySize::Float80 {
                F80::INDEFINITE.to_bytes()
            } else {
                [0; 10]
            };
            if size != MemorySize::Float80 {
                b[..8].copy_from_slice(&bits.to_le_bytes());
            }
            ((cw & sw::IE != 0).then_some(b), sw::IE | sw::SF, false)
        }
        Some(v) => match size {
            MemorySize::Float80 => (Some(v.to_bytes()), 0, false),
            _ => {
                let s = if size == MemorySize::Float32 {
                    fpu::to_f32(v, cw)
                } else {
                    fpu::to_f64(v, cw)
                };
                let b = s.bits.map(|bits| {
                    let mut b = [0u8; 10];
                    b[..8].copy_from_slice(&bits.to_le_bytes());
                    b
                });
                (b, s.flags, s.c1)
            }
        },
    };
    let len = match size {
        MemorySize::Float32 => 4,
        MemorySize::Float64 => 8,
        _ => 10,
    };
    store_result(
        cpu,
        m,
        insn,
        bytes.as_ref().map(|b| &b[..len]),
        flags,
        c1,
        pop,
    )
}

/// Writes a store instruction's result (if any), then commits flags, C1 and the pop.
fn store_result(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    bytes: Option<&[u8]>,
    flags: u16,
    c1: bool,
    pop: bool,
) -> Exec {
    if let Some(b) = bytes {
        write_block(cpu, m, memop(cpu, insn), b)?;
    }
    let f = &mut cpu.fpu;
    f.raise(flags);
    f.set_cc(sw::C1, c1);
    if bytes.is_some() && pop {
        f.pop();
    }
    Ok(())
}

/// FIST, FISTP, FBSTP.
fn fist(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, pop: bool) -> Exec {
    let f = &cpu.fpu;
    // FISTTP (SSE3) rounds toward zero whatever the rounding control says.
    let cw = if insn.ins.mnemonic() == M::Fisttp {
        f.cw | 0x0C00
    } else {
        f.cw
    };
    let size = insn.ins.memory_size();
    let (len, bits) = match size {
        MemorySize::Int16 => (2, 16),
        MemorySize::Int32 => (4, 32),
        MemorySize::Int64 => (8, 64),
        MemorySize::Bcd => (10, 0),
        _ => return Err(Exception::InvalidOpcode),
    };
    let (bytes, flags, c1) = match f.st(0) {
        None => {
            let b = if bits == 0 {
                [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF]
            } else {
                let mut b = [0u8; 10];
                b[..8].copy_from_slice(&(1u64 << (bits - 1)).to_le_bytes());
                b
            };
            ((cw & sw::IE != 0).then_some(b), sw::IE | sw::SF, false)
        }
        Some(v) if bits == 0 => fpu::to_bcd(v, cw),
        Some(v) => {
            let s = fpu::to_int(v, bits, cw);
            let b = s.bits.map(|x| {
                let mut b = [0u8; 10];
                b[..8].copy_from_slice(&x.to_le_bytes());
                b
            });
            (b, s.flags, s.c1)
        }
    };
    store_result(
        cpu,
        m,
        insn,
        bytes.as_ref().map(|b| &b[..len]),
        flags,
        c1,
        pop,
    )
}

/// FADD, FSUB, FSUBR, FMUL, FDIV, FDIVR in all forms; `reverse` swaps the
/// operands (the R forms).
fn arith(cpu: &mut CpuState, m: &mut Machine, insn: &Insn, op: Arith, reverse: bool) -> Exec {
    let pop = matches!(
        insn.ins.mnemonic(),
        M::Faddp | M::Fsubp | M::Fsubrp | M::Fmulp | M::Fdivp | M::Fdivrp
    );
    let (dst, src, mem_de) = if has_mem(insn) {
        let l = read_operand(cpu, m, insn)?;
        (0, Some(l.value), l.denormal)
    } else {
        let d = sti(insn.ins.op0_register());
        let s = sti(insn.ins.op1_register());
        (d, cpu.fpu.st(s), false)
    };
    let f = &mut cpu.fpu;
    let (Some(a), Some(b)) = (f.st(dst), src) else {
        underflow_into(f, dst, pop);
        return Ok(());
    };
    let (x, y) = if reverse { (b, a) } else { (a, b) };
    let out = fpu::arith(op, x, y, f.cw, mem_de);
    f.commit(out, dst, pop);
    Ok(())
}

/// The FCOM, FUCOM, FICOM, FCOMI, FUCOMI and FTST families.
fn compare(
    cpu: &mut CpuState,
    m: &mut Machine,
    insn: &Insn,
    quiet: bool,
    pops: u8,
    to_eflags: bool,
) -> Exec {
    let ins = &insn.ins;
    let (b, mem_de) = if has_mem(insn) {
        let l = read_operand(cpu, m, insn)?;
        (Some(l.value), l.denormal)
    } else if ins.mnemonic() == M::Ftst {
        (Some(F80::ZERO), false)
    } else if ins.op_count() == 2 {
        (cpu.fpu.st(sti(ins.op1_register())), false)
    } else if ins.op_count() == 1 {
        (cpu.fpu.st(sti(ins.op0_register())), false)
    } else {
        (cpu.fpu.st(1), false)
    };
    let f = &mut cpu.fpu;
    // The codes are written even when the exception is unmasked (as on hardware);
    // only the pop is held back then.
    let (r, popping) = match (f.st(0), b) {
        (Some(a), Some(b)) => {
            let (r, flags) = fpu::compare(a, b, quiet, mem_de);
            f.raise(flags);
            (r, f.masked(flags))
        }
        _ => (Cmp::Unordered, f.underflow()),
    };
    f.sw &= !sw::C1;
    // C3 C2 C0 (and ZF PF CF): > 000, < 001, = 100, unordered 111.
    let (c3, c2, c0) = match r {
        Cmp::Greater => (false, false, false),
        Cmp::Less => (false, false, true),
        Cmp::Equal => (true, false, false),
        Cmp::Unordered => (true, true, true),
    };
    if to_eflags {
        cpu.rflags &= !flags::ARITH;
        for (on, bit) in [(c3, flags::ZF), (c2, flags::PF), (c0, flags::CF)] {
            if on {
                cpu.rflags |= bit;
            }
        }
    } else {
        f.set_cc(sw::C3, c3);
        f.set_cc(sw::C2, c2);
        f.set_cc(sw::C0, c0);
    }
    if popping {
        for _ in 0..pops {
            cpu.fpu.pop();
        }
    }
    Ok(())
}

/// FXAM: the class of ST(0) in C3 C2 C0 and its sign in C1.
fn fxam(cpu: &mut CpuState) {
    let f = &mut cpu.fpu;
    let (c3, c2, c0) = fpu::examine(f.st(0));
    let sign = f.regs[f.phys(0)].sign();
    f.set_cc(sw::C3, c3);
    f.set_cc(sw::C2, c2);
    f.set_cc(sw::C0, c0);
    f.set_cc(sw::C1, sign);
}

/// FXCH: an empty operand is first replaced by the real indefinite (masked).
fn fxch(cpu: &mut CpuState, i: usize) {
    let f = &mut cpu.fpu;
    let (a, b) = match (f.st(0), f.st(i)) {
        (Some(a), Some(b)) => {
            f.sw &= !sw::C1;
            (a, b)
        }
        (a, b) => {
            if !f.underflow() {
                return;
            }
            (a.unwrap_or(F80::INDEFINITE), b.unwrap_or(F80::INDEFINITE))
        }
    };
    f.set_st(0, b);
    f.set_st(i, a);
}

/// FCMOVcc ST(0), ST(i).
fn fcmov(cpu: &mut CpuState, insn: &Insn, mn: M) -> Exec {
    let fl = cpu.rflags;
    let (cf, zf, pf) = (
        fl & flags::CF != 0,
        fl & flags::ZF != 0,
        fl & flags::PF != 0,
    );
    let cond = match mn {
        M::Fcmovb => cf,
        M::Fcmove => zf,
        M::Fcmovbe => cf || zf,
        M::Fcmovu => pf,
        M::Fcmovnb => !cf,
        M::Fcmovne => !zf,
        M::Fcmovnbe => !cf && !zf,
        _ => !pf,
    };
    let f = &mut cpu.fpu;
    let i = sti(insn.ins.op1_register());
    match (f.st(0), f.st(i)) {
        (Some(_), Some(v)) => {
            f.sw &= !sw::C1;
            if cond {
                f.set_st(0, v);
            }
        }
        _ => underflow_into(f, 0, false),
    }
    Ok(())
}

/// FCHS (`negate`) and FABS: sign-bit operations, which never raise IE.
fn sign_op(cpu: &mut CpuState, negate: bool) {
    let f = &mut cpu.fpu;
    match f.st(0) {
        Some(v) => {
            f.set_st(
                0,
                if negate {
                    v.negate()
                } else {
                    v.with_sign(false)
                },
            );
            f.sw &= !sw::C1;
        }
        None => underflow_into(f, 0, false),
    }
}

/// FPREM and FPREM1: C2 = incomplete, C0 C3 C1 = quotient bits 2, 1, 0.
fn fprem(f: &mut fpu::Fpu, nearest: bool) {
    let (Some(a), Some(b)) = (f.st(0), f.st(1)) else {
        underflow_into(f, 0, false);
        return;
    };
    let r = fpu::remainder(a, b, nearest, f.cw);
    f.commit(r.out, 0, false);
    f.set_cc(sw::C2, r.partial);
    if r.partial {
        f.sw &= !(sw::C0 | sw::C1 | sw::C3);
    }
    if let Some(q) = r.quotient {
        f.set_cc(sw::C0, q & 4 != 0);
        f.set_cc(sw::C3, q & 2 != 0);
        f.set_cc(sw::C1, q & 1 != 0);
    }
}

/// FXTRACT: ST(0) := exponent, then push the significand.
fn fxtract(f: &mut fpu::Fpu) {
    let Some(a) = f.st(0) else {
        if f.underflow() {
            f.set_st(0, F80::INDEFINITE);
            if f.is_empty(7) {
                f.push(F80::INDEFINITE);
            }
        }
        return;
    };
    if f.push_overflows() {
        return;
    }
    let (exp, sig) = fpu::extract(a, f.cw);
    f.raise(exp.flags);
    f.sw &= !sw::C1;
    if let (Some(e), Some(s)) = (exp.value, sig) {
        f.set_st(0, e);
        f.push(s);
    }
}

/// FSIN, FCOS, FSINCOS, FPTAN.
fn trig(f: &mut fpu::Fpu, which: Trig) {
    let pushes = matches!(which, Trig::SinCos | Trig::Tan);
    let Some(a) = f.st(0) else {
        if f.underflow() {
            f.set_st(0, F80::INDEFINITE);
            if pushes && f.is_empty(7) {
                f.push(F80::INDEFINITE);
            }
        }
        return;
    };
    if pushes && f.push_overflows() {
        return;
    }
    match fpu::trig(a, which, f.cw) {
        TrigResult::OutOfRange => f.sw |= sw::C2,
        TrigResult::Done(out, second) => {
            f.sw &= !sw::C2;
            f.raise(out.flags);
            f.set_cc(sw::C1, out.c1);
            if let Some(v) = out.value {
                f.set_st(0, v);
                if let Some(s) = second {
                    f.push(s);
                }
            }
        }
    }
}

// ================================================================================
// Environment and state images
// ================================================================================

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A real-mode pointer image: selector × 16 + offset.
fn linear(sel: u16, off: u32) -> u32 {
    (u32::from(sel) << 4).wrapping_add(off)
}

/// Whether the instruction uses the 32-bit (28/108-byte) image.
fn image32(insn: &Insn) -> bool {
    matches!(
        insn.ins.memory_size(),
        MemorySize::FpuEnv28 | MemorySize::FpuState108
    )
}

/// The FSTENV image (SDM vol. 1 Figures 8-9 to 8-12); returns its length.
fn env_image(cpu: &CpuState, op32: bool, b: &mut [u8]) -> usize {
    let f = &cpu.fpu;
    let real = real_format(cpu);
    let fop = f.fop & 0x7FF;
    let ip = linear(f.fcs, f.fip);
    let dp = linear(f.fds, f.fdp);
    if op32 {
        for (at, v) in [(0, f.cw), (4, f.status()), (8, f.tw)] {
            put16(b, at, v);
            put16(b, at + 2, 0xFFFF);
        }
        if real {
            put16(b, 12, ip as u16);
            put16(b, 14, 0xFFFF);
            put32(b, 16, ((ip >> 16) & 0xFFFF) << 12 | u32::from(fop));
            put16(b, 20, dp as u16);
            put16(b, 22, 0xFFFF);
            put32(b, 24, ((dp >> 16) & 0xFFFF) << 12);
        } else {
            put32(b, 12, f.fip);
            put16(b, 16, f.fcs);
            put16(b, 18, fop);
            put32(b, 20, f.fdp);
            put16(b, 24, f.fds);
            put16(b, 26, 0xFFFF);
        }
        28
    } else {
        put16(b, 0, f.cw);
        put16(b, 2, f.status());
        put16(b, 4, f.tw);
        if real {
            put16(b, 6, ip as u16);
            put16(b, 8, (((ip >> 16) & 0xF) << 12) as u16 | fop);
            put16(b, 10, dp as u16);
            put16(b, 12, (((dp >> 16) & 0xF) << 12) as u16);
        } else {
            put16(b, 6, f.fip as u16);
            put16(b, 8, f.fcs);
            put16(b, 10, f.fdp as u16);
            put16(b, 12, f.fds);
        }
        14
    }
}

/// Loads an FLDENV image; the registers must already hold their new contents
/// (the tags are recomputed from them).
fn load_env(cpu: &mut CpuState, op32: bool, b: &[u8]) {
    let real = real_format(cpu);
    let f = &mut cpu.fpu;
    let (cwv, swv, twv);
    if op32 {
        (cwv, swv, twv) = (get16(b, 0), get16(b, 4), get16(b, 8));
        if real {
            let hi = get32(b, 16);
            f.fip = u32::from(get16(b, 12)) | ((hi >> 12) & 0xFFFF) << 16;
            f.fop = (hi & 0x7FF) as u16;
            f.fdp = u32::from(get16(b, 20)) | ((get32(b, 24) >> 12) & 0xFFFF) << 16;
            (f.fcs, f.fds) = (0, 0);
        } else {
            f.fip = get32(b, 12);
            f.fcs = get16(b, 16);
            f.fop = get16(b, 18) & 0x7FF;
            f.fdp = get32(b, 20);
            f.fds = get16(b, 24);
        }
    } else {
        (cwv, swv, twv) = (get16(b, 0), get16(b, 2), get16(b, 4));
        if real {
            let hi = get16(b, 8);
            f.fip = u32::from(get16(b, 6)) | u32::from(hi >> 12) << 16;
            f.fop = hi & 0x7FF;
            f.fdp = u32::from(get16(b, 10)) | u32::from(get16(b, 12) >> 12) << 16;
            (f.fcs, f.fds) = (0, 0);
        } else {
            f.fip = u32::from(get16(b, 6));
            f.fcs = get16(b, 8);
            f.fdp = u32::from(get16(b, 10));
            f.fds = get16(b, 12);
        }
    }
    f.cw = (cwv & fpu::cw::WRITABLE) | fpu::cw::ONE;
    f.set_status(swv);
    f.load_tag_word(twv);
}

/// FNSTENV: stores the environment, then masks all exceptions.
fn fnstenv(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let mut b = [0u8; 28];
    let n = env_image(cpu, image32(insn), &mut b);
    write_block(cpu, m, memop(cpu, insn), &b[..n])?;
    cpu.fpu.cw |= fpu::cw::MASKS;
    cpu.fpu.update_es();
    Ok(())
}

/// FLDENV.
fn fldenv(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let op32 = image32(insn);
    let mut b = [0u8; 28];
    let n = if op32 { 28 } else { 14 };
    read_block(cpu, m, memop(cpu, insn), &mut b[..n])?;
    load_env(cpu, op32, &b[..n]);
    Ok(())
}

/// FNSAVE: the environment and ST(0)-ST(7), then FNINIT.
fn fnsave(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let mut b = [0u8; 108];
    let n = env_image(cpu, image32(insn), &mut b);
    for i in 0..8 {
        let r = cpu.fpu.regs[cpu.fpu.phys(i)];
        b[n + 10 * i..n + 10 * i + 10].copy_from_slice(&r.to_bytes());
    }
    write_block(cpu, m, memop(cpu, insn), &b[..n + 80])?;
    cpu.fpu.init();
    Ok(())
}

/// FRSTOR.
fn frstor(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let op32 = image32(insn);
    let n = if op32 { 28 } else { 14 };
    let mut b = [0u8; 108];
    read_block(cpu, m, memop(cpu, insn), &mut b[..n + 80])?;
    let swv = get16(&b, if op32 { 4 } else { 2 });
    let top = usize::from((swv >> 11) & 7);
    for i in 0..8 {
        let mut r = [0u8; 10];
        r.copy_from_slice(&b[n + 10 * i..n + 10 * i + 10]);
        cpu.fpu.regs[(top + i) & 7] = F80::from_bytes(r);
    }
    load_env(cpu, op32, &b[..n]);
    Ok(())
}

/// MXCSR bits FXRSTOR accepts, reported at bytes 28-31 of the image: every bit
/// of MXCSR's low word, DAZ included.
pub(crate) const MXCSR_MASK: u32 = super::sse::mxcsr::WRITABLE;

/// #NM and the 16-byte alignment check of FXSAVE/FXRSTOR.
fn fx_checks(cpu: &CpuState, mo: MemOp) -> Exec {
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Exception::DeviceNotAvailable);
    }
    let lin = cpu.seg[mo.seg].base.wrapping_add(mo.off);
    if lin & 15 != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    Ok(())
}

/// The x87 fields of an FXSAVE image (SDM vol. 2A Table 3-53, non-64-bit
/// format): bytes 0-23 (control, status, abridged tags, opcode, pointers) and
/// 32-159 (ST0-ST7). With `wide`, the REX.W format: 64-bit FIP at 8 and FDP at
/// 16, no selectors. Other bytes of `b` are left as they are.
pub(crate) fn put_x87_image(cpu: &CpuState, b: &mut [u8], wide: bool) {
    let f = &cpu.fpu;
    put16(b, 0, f.cw);
    put16(b, 2, f.status());
    b[4] = f.abridged_tags();
    b[5] = 0;
    put16(b, 6, f.fop & 0x7FF);
    put32(b, 8, f.fip);
    if wide {
        put32(b, 12, 0);
        put32(b, 16, f.fdp);
        put32(b, 20, 0);
    } else {
        put16(b, 12, f.fcs);
        put16(b, 14, 0);
        put32(b, 16, f.fdp);
        put16(b, 20, f.fds);
        put16(b, 22, 0);
    }
    for i in 0..8 {
        let at = 32 + 16 * i;
        b[at..at + 10].copy_from_slice(&f.regs[f.phys(i)].to_bytes());
        b[at + 10..at + 16].fill(0);
    }
}

/// Loads the x87 fields of an FXSAVE image (the inverse of [`put_x87_image`]).
pub(crate) fn load_x87_image(cpu: &mut CpuState, b: &[u8], wide: bool) {
    let top = usize::from((get16(b, 2) >> 11) & 7);
    let f = &mut cpu.fpu;
    for i in 0..8 {
        let at = 32 + 16 * i;
        let mut r = [0u8; 10];
        r.copy_from_slice(&b[at..at + 10]);
        f.regs[(top + i) & 7] = F80::from_bytes(r);
    }
    f.cw = (get16(b, 0) & fpu::cw::WRITABLE) | fpu::cw::ONE;
    f.set_status(get16(b, 2));
    f.load_abridged_tags(b[4]);
    f.fop = get16(b, 6) & 0x7FF;
    f.fip = get32(b, 8);
    f.fdp = get32(b, 16);
    if wide {
        f.fcs = 0;
        f.fds = 0;
    } else {
        f.fcs = get16(b, 12);
        f.fds = get16(b, 20);
    }
}

/// The end of the XMM registers FXSAVE/FXRSTOR move: XMM0-15 in 64-bit mode,
/// XMM0-7 elsewhere (SDM vol. 2A FXSAVE: bytes 288-415 are not touched outside
/// 64-bit mode).
fn xmm_end(cpu: &CpuState) -> usize {
    if crate::mmu::in_64bit(cpu) {
        416
    } else {
        288
    }
}

/// FXSAVE m512 (SDM vol. 2A FXSAVE, Table 3-53; with REX.W, `FXSAVE64`, the
/// 64-bit format of Table 3-56): the x87 state with the abridged tag byte, then
/// MXCSR and the XMM registers kept in `CpuState::fx`. Bytes 416-511 are not
/// written. No pending-exception check.
pub fn fxsave<const WIDE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let mo = memop(cpu, insn);
    fx_checks(cpu, mo)?;
    let end = xmm_end(cpu);
    let mut b = [0u8; 416];
    put_x87_image(cpu, &mut b, WIDE);
    b[24..28].copy_from_slice(&cpu.fx[24..28]);
    put32(&mut b, 28, MXCSR_MASK);
    b[160..end].copy_from_slice(&cpu.fx[160..end]);
    write_block(cpu, m, mo, &b[..end])
}

/// FXRSTOR m512 (and `FXRSTOR64`): the inverse of [`fxsave`]; #GP(0) for
/// reserved MXCSR bits.
pub fn fxrstor<const WIDE: bool>(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    let mo = memop(cpu, insn);
    fx_checks(cpu, mo)?;
    let end = xmm_end(cpu);
    let mut b = [0u8; 416];
    read_block(cpu, m, mo, &mut b[..end])?;
    if get32(&b, 24) & !MXCSR_MASK != 0 {
        return Err(Exception::GeneralProtection(0));
    }
    load_x87_image(cpu, &b, WIDE);
    cpu.fx[24..28].copy_from_slice(&b[24..28]);
    cpu.fx[160..end].copy_from_slice(&b[160..end]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode16(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(16, bytes, 0, DecoderOptions::NONE).decode()
    }

    #[test]
    fn opcode_register_form_adds_sti_index() {
        assert_eq!(opcode(&decode16(&[0xD8, 0xC3])), 0x0C3);
        assert_eq!(opcode(&decode16(&[0xDE, 0xE9])), 0x6E9);
        assert_eq!(opcode(&decode16(&[0xD9, 0xEE])), 0x1EE);
    }

    #[test]
    fn opcode_memory_form_rebuilds_modrm() {
        // FLD qword [bp+0] encodes mod 01 r/m 110; FSTP tbyte [bx] mod 00 reg 7 r/m 111.
        assert_eq!(opcode(&decode16(&[0xDD, 0x46, 0x00])), 0x546);
        assert_eq!(opcode(&decode16(&[0xDB, 0x3F])), 0x33F);
        assert_eq!(opcode(&decode16(&[0xD8, 0x06, 0x34, 0x12])), 0x006);
        let ins = Decoder::with_ip(32, &[0xD9, 0x44, 0x24, 0x08], 0, DecoderOptions::NONE).decode();
        assert_eq!(opcode(&ins), 0x144);
    }
}
