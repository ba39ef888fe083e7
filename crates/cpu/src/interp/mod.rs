//! The interpreter: the reference semantics of every instruction.
//!
//! A decoded iced `Instruction` is prepared once into an [`Insn`]: the handler
//! function is chosen, register operands are resolved to GPR slots, and the memory
//! operand is reduced to base/index/scale/displacement. Executing an `Insn` is then
//! one indirect call, with no decode, allocation or formatting.
//!
//! Handlers are grouped one file per instruction family. A handler either returns
//! `Ok(())`, having written its results and `cpu.next_rip` (branches change it), or
//! returns the exception to deliver, having changed nothing architecturally visible
//! that a restart would repeat (faults are precise).

pub mod alu;
pub mod bcd;
pub mod bits;
pub mod control;
pub mod debug;
pub mod descriptor;
pub mod flags;
pub mod interpreter;
pub mod interrupt;
pub mod long;
pub mod muldiv;
pub mod ops;
pub mod protected;
pub mod select;
pub mod shift;
pub mod sse;
pub mod stack;
pub mod string;
pub mod system;
pub mod task;
pub mod x87;

use crate::exception::Exception;
use crate::state::CpuState;
use iced_x86::{Instruction, OpKind, Register};
use x86bt_machine::Machine;

/// The result of executing one instruction.
pub type Exec = Result<(), Exception>;

/// An instruction's implementation.
pub type Handler = fn(&mut CpuState, &mut Machine, &Insn) -> Exec;

/// "No register" in a [`MemRef`].
pub const NO_REG: u8 = 0xFF;
/// The base of a RIP-relative [`MemRef`]: the address of the next instruction
/// (`CpuState::next_rip`), so the displacement is kept relative to it, as
/// [`Insn::rel`] is, and a unit stays valid at every alias of its bytes.
pub const RIP_BASE: u8 = 16;

/// A prepared operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opnd {
    /// Absent.
    None,
    /// A general-purpose register: slot in `gpr`, and bit shift (8 for AH..BH).
    Gpr {
        /// Index into `CpuState::gpr`.
        idx: u8,
        /// 0, or 8 for the legacy high-byte registers.
        shift: u8,
    },
    /// A segment register (index into `CpuState::seg`).
    Seg(u8),
    /// The instruction's memory operand ([`Insn::mem`]).
    Mem,
    /// An immediate, sign- or zero-extended as the encoding says.
    Imm(u64),
    /// Anything else (control registers, implicit string operands, ...): handlers
    /// read those from the iced instruction.
    Other,
}

/// A prepared memory operand: `seg:(base + index << scale + disp) & addr_mask`,
/// where the base may be [`RIP_BASE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRef {
    /// Effective segment (override or default).
    pub seg: u8,
    /// Base GPR slot, [`RIP_BASE`] or [`NO_REG`].
    pub base: u8,
    /// Index GPR slot or [`NO_REG`].
    pub index: u8,
    /// log2 of the index scale.
    pub scale: u8,
    /// Displacement (from the next instruction, for [`RIP_BASE`]).
    pub disp: u64,
    /// 0xFFFF, 0xFFFF_FFFF or all ones, by address size.
    pub addr_mask: u64,
}

/// A prepared instruction.
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    /// The implementation.
    pub exec: Handler,
    /// Operand size in bytes of the main operand (1, 2, 4, 8).
    pub size: u8,
    /// Instruction length in bytes.
    pub len: u8,
    /// Up to three prepared operands.
    pub ops: [Opnd; 3],
    /// The memory operand, if any operand is [`Opnd::Mem`].
    pub mem: MemRef,
    /// For relative branches: target minus the next instruction's address.
    pub rel: u64,
    /// The decoded instruction, for handlers that need more.
    pub ins: Instruction,
}

/// The GPR slot and shift of a general-purpose register.
pub fn gpr_slot(r: Register) -> Option<(u8, u8)> {
    if !r.is_gpr() {
        return None;
    }
    let shift = if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) {
        8
    } else {
        0
    };
    let idx = r.full_register() as u32 - Register::RAX as u32;
    Some((idx as u8, shift))
}

fn seg_index(r: Register) -> u8 {
    (r as u32).wrapping_sub(Register::ES as u32) as u8
}

fn prepare_operand(ins: &Instruction, i: u32) -> Opnd {
    match ins.op_kind(i) {
        OpKind::Register => {
            let r = ins.op_register(i);
            if let Some((idx, shift)) = gpr_slot(r) {
                Opnd::Gpr { idx, shift }
            } else if r.is_segment_register() {
                Opnd::Seg(seg_index(r))
            } else {
                Opnd::Other
            }
        }
        OpKind::Memory => Opnd::Mem,
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64
        | OpKind::Immediate8_2nd => Opnd::Imm(ins.immediate(i)),
        _ => Opnd::Other,
    }
}

fn reg_addr_mask(r: Register) -> u64 {
    if r.is_gpr16() {
        0xFFFF
    } else if r.is_gpr32() || r == Register::EIP {
        0xFFFF_FFFF
    } else {
        u64::MAX
    }
}

fn prepare_mem(ins: &Instruction, bitness: u32) -> MemRef {
    let base = ins.memory_base();
    let index = ins.memory_index();
    let slot = |r: Register| gpr_slot(r).map_or(NO_REG, |(i, _)| i);
    let addr_mask = if base != Register::None {
        reg_addr_mask(base)
    } else if index != Register::None {
        reg_addr_mask(index)
    } else {
        match ins.memory_displ_size() {
            2 => 0xFFFF,
            4 => 0xFFFF_FFFF,
            8 => u64::MAX,
            _ => match bitness {
                16 => 0xFFFF,
                32 => 0xFFFF_FFFF,
                _ => u64::MAX,
            },
        }
    };
    let rip_relative = matches!(base, Register::RIP | Register::EIP);
    MemRef {
        seg: seg_index(ins.memory_segment()),
        base: if rip_relative { RIP_BASE } else { slot(base) },
        index: slot(index),
        scale: ins.memory_index_scale().trailing_zeros() as u8,
        // iced gives a RIP-relative operand's absolute address; keep it
        // relative to the next instruction.
        disp: if rip_relative {
            ins.memory_displacement64().wrapping_sub(ins.next_ip())
        } else {
            ins.memory_displacement64()
        },
        addr_mask,
    }
}

/// The size in bytes of the main operand of `ins`.
pub(crate) fn operand_size(ins: &Instruction) -> u8 {
    for i in 0..ins.op_count().min(2) {
        match ins.op_kind(i) {
            OpKind::Register => {
                let r = ins.op_register(i);
                if r.is_gpr() {
                    return r.size() as u8;
                }
            }
            OpKind::Memory
            | OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI => {
                let s = ins.memory_size().size();
                if matches!(s, 1 | 2 | 4 | 8) {
                    return s as u8;
                }
            }
            _ => {}
        }
    }
    match ins.op_code().operand_size() {
        16 => 2,
        32 => 4,
        64 => 8,
        _ => 2,
    }
}

impl Insn {
    /// Prepares a decoded instruction of a unit decoded for `bitness` (16, 32, 64).
    pub fn prepare(ins: &Instruction, bitness: u32) -> Self {
        let mut ops = [Opnd::None; 3];
        for (i, op) in ops
            .iter_mut()
            .enumerate()
            .take(ins.op_count().min(3) as usize)
        {
            *op = prepare_operand(ins, i as u32);
        }
        let has_mem = ops.contains(&Opnd::Mem);
        let rel = if ins.is_jmp_short_or_near()
            || ins.is_jcc_short_or_near()
            || ins.is_call_near()
            || ins.is_loopcc()
            || ins.is_loop()
            || ins.is_jcx_short()
        {
            ins.near_branch_target().wrapping_sub(ins.next_ip())
        } else {
            0
        };
        Self {
            exec: select::handler(ins),
            size: operand_size(ins),
            len: ins.len() as u8,
            ops,
            mem: if has_mem {
                prepare_mem(ins, bitness)
            } else {
                MemRef::default()
            },
            rel,
            ins: *ins,
        }
    }

    /// The operand size in bytes.
    #[inline]
    pub fn size(&self) -> u32 {
        u32::from(self.size)
    }
}
