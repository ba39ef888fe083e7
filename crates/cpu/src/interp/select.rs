//! Chooses each instruction's handler, once, when a unit is decoded.
//!
//! A form with no row in the instruction table (`x86bt_decoder::table`) is #UD:
//! the table decides what this CPU executes (its CPUID features), this module
//! only binds each row to the function that runs it.

use super::{
    alu, bcd, bits, control, descriptor, interrupt, muldiv, shift, stack, string, system, Handler,
};
use iced_x86::{Code, Instruction, Mnemonic, OpKind};
use x86bt_decoder::table;

fn is_x87(ins: &Instruction) -> bool {
    use iced_x86::CpuidFeature as F;
    ins.mnemonic() != Mnemonic::Wait
        && ins.cpuid_features().iter().any(|f| {
            matches!(
                f,
                F::FPU | F::FPU287 | F::FPU287XL_ONLY | F::FPU387 | F::FPU387SL_ONLY
            )
        })
}

fn both_gpr(ins: &Instruction) -> bool {
    ins.op_count() == 2
        && ins.op0_kind() == OpKind::Register
        && ins.op1_kind() == OpKind::Register
        && ins.op0_register().is_gpr()
        && ins.op1_register().is_gpr()
}

/// The handler for `ins`: the #UD handler for a form with no row in the
/// instruction table (`x86bt_decoder::table`).
pub fn handler(ins: &Instruction) -> Handler {
    select(ins).unwrap_or(alu::undefined)
}

/// The handler of a form with a row in the instruction table, `None` for an
/// undefined opcode. Every row has one (`select_every_row_has_a_handler`).
pub fn select(ins: &Instruction) -> Option<Handler> {
    table::row(ins)?;
    bind(ins)
}

/// The function that runs `ins`, whether or not the table gives it a row.
fn bind(ins: &Instruction) -> Option<Handler> {
    use Mnemonic as M;
    if is_x87(ins) {
        return Some(super::x87::esc);
    }
    if let Some(h) = super::sse::handler(ins) {
        return Some(h);
    }
    let h: Handler = match ins.mnemonic() {
        M::Add => binop::<{ alu::ADD }>(ins),
        M::Or => binop::<{ alu::OR }>(ins),
        M::Adc => binop::<{ alu::ADC }>(ins),
        M::Sbb => binop::<{ alu::SBB }>(ins),
        M::And => binop::<{ alu::AND }>(ins),
        M::Sub => binop::<{ alu::SUB }>(ins),
        M::Xor => binop::<{ alu::XOR }>(ins),
        M::Cmp => binop::<{ alu::CMP }>(ins),
        M::Test => binop::<{ alu::TEST }>(ins),
        M::Inc => incdec::<false>(ins),
        M::Dec => incdec::<true>(ins),
        M::Neg => alu::neg,
        M::Not => alu::not,
        M::Mov => mov(ins)?,
        M::Movzx => movx::<false>(ins),
        M::Movsx => movx::<true>(ins),
        M::Xchg => alu::xchg,
        M::Lea => alu::lea,
        M::Cbw | M::Cwde | M::Cdqe => alu::cbw,
        M::Cwd | M::Cdq | M::Cqo => alu::cwd,
        M::Lahf => alu::lahf,
        M::Sahf => alu::sahf,
        M::Seto | M::Setno | M::Setb | M::Setae | M::Sete | M::Setne | M::Setbe | M::Seta => {
            alu::setcc
        }
        M::Sets | M::Setns | M::Setp | M::Setnp | M::Setl | M::Setge | M::Setle | M::Setg => {
            alu::setcc
        }
        M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova => alu::cmovcc,
        M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg => alu::cmovcc,
        M::Xadd => alu::xadd,
        M::Cmpxchg => alu::cmpxchg,
        M::Cmpxchg8b => alu::cmpxchg8b,
        M::Bswap => alu::bswap,
        M::Salc => alu::salc,
        M::Xlatb => alu::xlat,
        M::Clc => alu::flag_op::<0>,
        M::Stc => alu::flag_op::<1>,
        M::Cmc => alu::flag_op::<2>,
        M::Cld => alu::flag_op::<3>,
        M::Std => alu::flag_op::<4>,
        M::Nop => alu::nop,
        M::Pause => alu::pause,
        // The hint-NOP space 0F 18-0F 1F: on a CPU without CET these encodings
        // (ENDBR32/64, RDSSPD/Q) are NOPs (SDM vol. 1 §18.3.1, "legacy
        // compatibility"), as are the reserved NOPs.
        M::Endbr32 | M::Endbr64 | M::Rdsspd | M::Rdsspq => alu::nop,
        M::Reservednop => alu::nop,
        M::Rol => shift_for::<{ shift::ROL }>(ins),
        M::Ror => shift_for::<{ shift::ROR }>(ins),
        M::Rcl => shift_for::<{ shift::RCL }>(ins),
        M::Rcr => shift_for::<{ shift::RCR }>(ins),
        M::Shl | M::Sal => shift_for::<{ shift::SHL }>(ins),
        M::Shr => shift_for::<{ shift::SHR }>(ins),
        M::Sar => shift_for::<{ shift::SAR }>(ins),
        M::Shld => shift::shxd::<true>,
        M::Shrd => shift::shxd::<false>,
        M::Mul => muldiv::mul,
        M::Imul if ins.op_count() == 1 => muldiv::imul1,
        M::Imul => muldiv::imul_n,
        M::Div => muldiv::div,
        M::Idiv => muldiv::idiv,
        M::Daa => bcd::daa_das::<false>,
        M::Das => bcd::daa_das::<true>,
        M::Aaa => bcd::aaa_aas::<false>,
        M::Aas => bcd::aaa_aas::<true>,
        M::Aam => bcd::aam,
        M::Aad => bcd::aad,
        M::Bt => bits::bt::<{ bits::BT }>,
        M::Bts => bits::bt::<{ bits::BTS }>,
        M::Btr => bits::bt::<{ bits::BTR }>,
        M::Btc => bits::bt::<{ bits::BTC }>,
        // Without BMI1/LZCNT in CPUID (ours has neither), F3 0F BC/BD are
        // BSF/BSR with an ignored REP prefix; kernels use TZCNT that way.
        M::Bsf | M::Tzcnt => bits::bsf_bsr::<false>,
        M::Bsr | M::Lzcnt => bits::bsf_bsr::<true>,
        M::Push
            if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() =>
        {
            stack::push_op
        }
        M::Push => match super::operand_size(ins) {
            2 => stack::push_op_n::<2>,
            4 => stack::push_op_n::<4>,
            8 => stack::push_op_n::<8>,
            _ => stack::push_op,
        },
        M::Pop
            if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() =>
        {
            system::pop_seg
        }
        M::Pop => match super::operand_size(ins) {
            2 => stack::pop_op_n::<2>,
            4 => stack::pop_op_n::<4>,
            8 => stack::pop_op_n::<8>,
            _ => stack::pop_op,
        },
        M::Pusha | M::Pushad => stack::pusha,
        M::Popa | M::Popad => stack::popa,
        M::Pushf | M::Pushfd | M::Pushfq => stack::pushf,
        M::Popf | M::Popfd | M::Popfq => stack::popf,
        M::Enter => stack::enter,
        M::Leave => stack::leave,
        M::Jmp => jmp(ins),
        M::Call => call(ins),
        M::Ret => control::ret_near,
        M::Retf => control::ret_far,
        M::Loop => control::loop_cc::<0>,
        M::Loope => control::loop_cc::<1>,
        M::Loopne => control::loop_cc::<2>,
        M::Jcxz | M::Jecxz | M::Jrcxz => control::jcxz,
        M::Bound => control::bound,
        M::Int => interrupt::int_n,
        M::Int3 => interrupt::int3,
        M::Int1 => interrupt::int1,
        M::Into => interrupt::into,
        M::Iret | M::Iretd | M::Iretq => interrupt::iret,
        M::Syscall => super::long::syscall,
        M::Sysret | M::Sysretq => super::long::sysret,
        M::Swapgs => super::long::swapgs,
        M::Sysenter => super::long::sysenter,
        M::Sysexit | M::Sysexitq => super::long::sysexit,
        M::Rdtscp => super::long::rdtscp,
        M::Cmpxchg16b => super::long::cmpxchg16b,
        M::Movsxd => super::long::movsxd,
        M::Movsb | M::Movsw | M::Movsd | M::Movsq
            if ins.op_count() == 2 && ins.op0_kind() != OpKind::Register =>
        {
            string::string_op
        }
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq if ins.op0_kind() != OpKind::Register => {
            string::string_op
        }
        M::Scasb | M::Scasw | M::Scasd | M::Scasq => string::string_op,
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => string::string_op,
        M::Stosb | M::Stosw | M::Stosd | M::Stosq | M::Insb | M::Insw | M::Insd => {
            string::string_op
        }
        M::Outsb | M::Outsw | M::Outsd => string::string_op,
        M::In => system::in_,
        M::Out => system::out,
        M::Hlt => system::hlt,
        M::Cli => system::cli,
        M::Sti => system::sti,
        M::Cpuid => system::cpuid,
        M::Rdtsc => system::rdtsc,
        M::Rdpmc => system::rdpmc,
        M::Rdmsr => system::rdmsr,
        M::Wrmsr => system::wrmsr,
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => system::load_far_ptr,
        M::Lgdt => system::load_table::<false>,
        M::Lidt => system::load_table::<true>,
        M::Sgdt => system::store_table::<false>,
        M::Sidt => system::store_table::<true>,
        M::Smsw => system::smsw,
        M::Lmsw => system::lmsw,
        M::Clts => system::clts,
        M::Invd | M::Wbinvd => system::cache_op,
        M::Invlpg => system::invlpg,
        M::Wait => super::x87::fwait,
        M::Fxsave => super::x87::fxsave::<false>,
        M::Fxrstor => super::x87::fxrstor::<false>,
        M::Fxsave64 => super::x87::fxsave::<true>,
        M::Fxrstor64 => super::x87::fxrstor::<true>,
        M::Lar => descriptor::lar,
        M::Lsl => descriptor::lsl,
        M::Verr => descriptor::verr_verw::<false>,
        M::Verw => descriptor::verr_verw::<true>,
        M::Sldt => descriptor::sldt_str::<false>,
        M::Str => descriptor::sldt_str::<true>,
        M::Lldt => descriptor::lldt,
        M::Ltr => descriptor::ltr,
        M::Arpl => descriptor::arpl,
        _ if ins.is_jcc_short_or_near() => jcc(ins),
        _ => return None,
    };
    Some(h)
}

fn mov(ins: &Instruction) -> Option<Handler> {
    let seg =
        |i: u32| ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_segment_register();
    let crdr = |i: u32| ins.op_kind(i) == OpKind::Register && (ins.op_register(i).is_cr());
    let dr = |i: u32| ins.op_kind(i) == OpKind::Register && (ins.op_register(i).is_dr());
    Some(if seg(0) {
        system::mov_to_seg
    } else if seg(1) {
        system::mov_from_seg
    } else if crdr(0) || crdr(1) {
        system::mov_cr
    } else if dr(0) || dr(1) {
        system::mov_dr
    } else if ins.op0_kind() == OpKind::Register && !ins.op0_register().is_gpr() {
        return None;
    } else if both_gpr(ins) {
        match super::operand_size(ins) {
            1 => alu::mov_rr_n::<1>,
            2 => alu::mov_rr_n::<2>,
            4 => alu::mov_rr_n::<4>,
            _ => alu::mov_rr_n::<8>,
        }
    } else {
        let size = super::operand_size(ins);
        let (dst, src) = (form(ins, 0), form(ins, 1));
        match (dst, src, size) {
            (Form::Gpr, Form::Mem, 1) => alu::mov_load_n::<1>,
            (Form::Gpr, Form::Mem, 2) => alu::mov_load_n::<2>,
            (Form::Gpr, Form::Mem, 4) => alu::mov_load_n::<4>,
            (Form::Gpr, Form::Mem, _) => alu::mov_load_n::<8>,
            (Form::Mem, Form::Gpr, 1) => alu::mov_store_n::<1, false>,
            (Form::Mem, Form::Gpr, 2) => alu::mov_store_n::<2, false>,
            (Form::Mem, Form::Gpr, 4) => alu::mov_store_n::<4, false>,
            (Form::Mem, Form::Gpr, _) => alu::mov_store_n::<8, false>,
            (Form::Mem, Form::Imm, 1) => alu::mov_store_n::<1, true>,
            (Form::Mem, Form::Imm, 2) => alu::mov_store_n::<2, true>,
            (Form::Mem, Form::Imm, 4) => alu::mov_store_n::<4, true>,
            (Form::Mem, Form::Imm, _) => alu::mov_store_n::<8, true>,
            (Form::Gpr, Form::Imm, 1) => alu::mov_ri_n::<1>,
            (Form::Gpr, Form::Imm, 2) => alu::mov_ri_n::<2>,
            (Form::Gpr, Form::Imm, 4) => alu::mov_ri_n::<4>,
            (Form::Gpr, Form::Imm, _) => alu::mov_ri_n::<8>,
            (_, _, 1) => alu::mov_n::<1>,
            (_, _, 2) => alu::mov_n::<2>,
            (_, _, 4) => alu::mov_n::<4>,
            _ => alu::mov_n::<8>,
        }
    })
}

/// The kind of an operand, as [`super::Insn::prepare`] prepares it, for the
/// handlers specialized by form.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Gpr,
    Mem,
    Imm,
    Other,
}

fn form(ins: &Instruction, i: u32) -> Form {
    if i >= ins.op_count() {
        return Form::Other;
    }
    match ins.op_kind(i) {
        OpKind::Register if ins.op_register(i).is_gpr() => Form::Gpr,
        OpKind::Memory => Form::Mem,
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Form::Imm,
        _ => Form::Other,
    }
}

// The hot integer forms get a handler specialized by operand size (and, for
// the ALU operations, by register or immediate source), chosen here once per
// decoded instruction; the size is the one `Insn::size` gives them.

fn binop<const OP: u8>(ins: &Instruction) -> Handler {
    let size = super::operand_size(ins);
    let reg_dst =
        ins.op_count() == 2 && ins.op0_kind() == OpKind::Register && ins.op0_register().is_gpr();
    let imm_src = matches!(
        ins.op1_kind(),
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    );
    match (size, reg_dst && both_gpr(ins), reg_dst && imm_src) {
        (1, true, _) => alu::binop_r::<OP, 1, false>,
        (2, true, _) => alu::binop_r::<OP, 2, false>,
        (4, true, _) => alu::binop_r::<OP, 4, false>,
        (8, true, _) => alu::binop_r::<OP, 8, false>,
        (1, _, true) => alu::binop_r::<OP, 1, true>,
        (2, _, true) => alu::binop_r::<OP, 2, true>,
        (4, _, true) => alu::binop_r::<OP, 4, true>,
        (8, _, true) => alu::binop_r::<OP, 8, true>,
        _ if ins.op_count() == 2 => match (form(ins, 0), form(ins, 1)) {
            (Form::Gpr, Form::Mem) => binop_sized::<OP>(size, 0),
            (Form::Mem, Form::Gpr) => binop_sized::<OP>(size, 1),
            (Form::Mem, Form::Imm) => binop_sized::<OP>(size, 2),
            _ => binop_sized::<OP>(size, 3),
        },
        _ => binop_sized::<OP>(size, 3),
    }
}

/// The [`binop`] handler of `size` bytes for form `f`: 0 GPR <- memory, 1
/// memory <- GPR, 2 memory <- immediate, 3 any.
fn binop_sized<const OP: u8>(size: u8, f: u8) -> Handler {
    match (f, size) {
        (0, 1) => alu::binop_rm::<OP, 1>,
        (0, 2) => alu::binop_rm::<OP, 2>,
        (0, 4) => alu::binop_rm::<OP, 4>,
        (0, _) => alu::binop_rm::<OP, 8>,
        (1, 1) => alu::binop_m::<OP, 1, false>,
        (1, 2) => alu::binop_m::<OP, 2, false>,
        (1, 4) => alu::binop_m::<OP, 4, false>,
        (1, _) => alu::binop_m::<OP, 8, false>,
        (2, 1) => alu::binop_m::<OP, 1, true>,
        (2, 2) => alu::binop_m::<OP, 2, true>,
        (2, 4) => alu::binop_m::<OP, 4, true>,
        (2, _) => alu::binop_m::<OP, 8, true>,
        (_, 1) => alu::binop_n::<OP, 1>,
        (_, 2) => alu::binop_n::<OP, 2>,
        (_, 4) => alu::binop_n::<OP, 4>,
        _ => alu::binop_n::<OP, 8>,
    }
}

fn shift_for<const OP: u8>(ins: &Instruction) -> Handler {
    match super::operand_size(ins) {
        1 => shift::shift_n::<OP, 1>,
        2 => shift::shift_n::<OP, 2>,
        4 => shift::shift_n::<OP, 4>,
        _ => shift::shift_n::<OP, 8>,
    }
}

fn incdec<const DEC: bool>(ins: &Instruction) -> Handler {
    if form(ins, 0) == Form::Gpr {
        return match super::operand_size(ins) {
            1 => alu::incdec_r::<DEC, 1>,
            2 => alu::incdec_r::<DEC, 2>,
            4 => alu::incdec_r::<DEC, 4>,
            _ => alu::incdec_r::<DEC, 8>,
        };
    }
    match super::operand_size(ins) {
        1 => alu::incdec_n::<DEC, 1>,
        2 => alu::incdec_n::<DEC, 2>,
        4 => alu::incdec_n::<DEC, 4>,
        _ => alu::incdec_n::<DEC, 8>,
    }
}

fn movx<const SIGNED: bool>(ins: &Instruction) -> Handler {
    let dst = ins.op0_register().size();
    let src = if ins.op1_kind() == OpKind::Register {
        ins.op1_register().size()
    } else {
        ins.memory_size().size()
    };
    match (src, dst) {
        (1, 2) => alu::movx_n::<SIGNED, 1, 2>,
        (1, 4) => alu::movx_n::<SIGNED, 1, 4>,
        (1, 8) => alu::movx_n::<SIGNED, 1, 8>,
        (2, 2) => alu::movx_n::<SIGNED, 2, 2>,
        (2, 4) => alu::movx_n::<SIGNED, 2, 4>,
        (2, 8) => alu::movx_n::<SIGNED, 2, 8>,
        _ => alu::movx::<SIGNED>,
    }
}

fn jcc(ins: &Instruction) -> Handler {
    use iced_x86::ConditionCode as C;
    match ins.condition_code() {
        C::o => control::jcc_cc::<{ C::o as u8 }>,
        C::no => control::jcc_cc::<{ C::no as u8 }>,
        C::b => control::jcc_cc::<{ C::b as u8 }>,
        C::ae => control::jcc_cc::<{ C::ae as u8 }>,
        C::e => control::jcc_cc::<{ C::e as u8 }>,
        C::ne => control::jcc_cc::<{ C::ne as u8 }>,
        C::be => control::jcc_cc::<{ C::be as u8 }>,
        C::a => control::jcc_cc::<{ C::a as u8 }>,
        C::s => control::jcc_cc::<{ C::s as u8 }>,
        C::ns => control::jcc_cc::<{ C::ns as u8 }>,
        C::p => control::jcc_cc::<{ C::p as u8 }>,
        C::np => control::jcc_cc::<{ C::np as u8 }>,
        C::l => control::jcc_cc::<{ C::l as u8 }>,
        C::ge => control::jcc_cc::<{ C::ge as u8 }>,
        C::le => control::jcc_cc::<{ C::le as u8 }>,
        C::g => control::jcc_cc::<{ C::g as u8 }>,
        C::None => control::jcc,
    }
}

fn jmp(ins: &Instruction) -> Handler {
    match ins.code() {
        Code::Jmp_ptr1616
        | Code::Jmp_ptr1632
        | Code::Jmp_m1616
        | Code::Jmp_m1632
        | Code::Jmp_m1664 => control::jmp_far,
        _ if ins.is_jmp_short_or_near() => control::jmp_rel,
        _ => control::jmp_ind,
    }
}

fn call(ins: &Instruction) -> Handler {
    match ins.code() {
        Code::Call_ptr1616
        | Code::Call_ptr1632
        | Code::Call_m1616
        | Code::Call_m1632
        | Code::Call_m1664 => control::call_far,
        _ if ins.is_call_near() => control::call_rel,
        _ => control::call_ind,
    }
}

/// Whether `ins` is a conditional jump (for the flags-liveness users).
pub fn is_jcc(ins: &Instruction) -> bool {
    ins.is_jcc_short_or_near()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};
    use std::collections::BTreeMap;

    /// Forms whose CPUID features this CPU reports but which it does not
    /// execute: #UD on purpose. UD0, UD1 and UD2 are the architecture's own
    /// undefined opcodes (SDM vol. 2B, UD).
    const DELIBERATE_UD: &[Code] = &[
        Code::Ud0_r16_rm16,
        Code::Ud0_r32_rm32,
        Code::Ud0_r64_rm64,
        Code::Ud1_r16_rm16,
        Code::Ud1_r32_rm32,
        Code::Ud1_r64_rm64,
        Code::Ud2,
    ];

    /// Every encoding of one opcode byte (in each opcode map, after each
    /// mandatory-prefix and REX.W choice) with a ModRM byte of every register
    /// form and the memory forms of each `reg` field, in 16-, 32- and 64-bit
    /// code, decoded. Immediates and displacements are ones (a zero shift count
    /// or ENTER level is as valid, but ones also reach the count-1 forms).
    fn every_form(mut visit: impl FnMut(u32, &Instruction)) {
        let maps: [&[u8]; 4] = [&[], &[0x0F], &[0x0F, 0x38], &[0x0F, 0x3A]];
        for bits in [16u32, 32, 64] {
            let mut prefixes: Vec<Vec<u8>> = vec![vec![], vec![0x66], vec![0xF2], vec![0xF3]];
            if bits == 64 {
                for p in [&[][..], &[0x66], &[0xF2], &[0xF3]] {
                    prefixes.push([p, &[0x48]].concat());
                }
            }
            for prefix in &prefixes {
                for map in maps {
                    for op in 0..=255u8 {
                        for modrm in (0xC0..=0xFFu8).chain((0..8).map(|r| r << 3)) {
                            let mut bytes = prefix.clone();
                            bytes.extend_from_slice(map);
                            bytes.extend_from_slice(&[op, modrm]);
                            bytes.extend_from_slice(&[1; 10]);
                            let ins =
                                Decoder::with_ip(bits, &bytes, 0, DecoderOptions::NONE).decode();
                            if !ins.is_invalid() {
                                visit(bits, &ins);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn select_every_row_has_a_handler() {
        // Per form (iced's Code), the first failure seen, with the bytes' mode.
        let mut no_handler = BTreeMap::new();
        let mut no_row = BTreeMap::new();
        let mut supported_without_row = BTreeMap::new();
        let (mut rows, mut forms) = (0usize, std::collections::HashSet::new());
        every_form(|bits, ins| {
            let row = table::row(ins);
            let h = bind(ins);
            forms.insert(ins.code());
            let key = format!("{:?}", ins.code());
            let what = format!("{bits}-bit {ins}");
            match (row.is_some(), h.is_some()) {
                (true, true) => rows += 1,
                (true, false) => {
                    no_handler.entry(key).or_insert(what);
                }
                (false, true) => {
                    no_row.entry(key).or_insert(what);
                }
                (false, false) => {
                    if table::supported(ins) && !DELIBERATE_UD.contains(&ins.code()) {
                        supported_without_row.entry(key).or_insert(what);
                    }
                }
            }
        });
        assert!(
            forms.len() > 1500 && rows > 100_000,
            "the walk reached {} forms, {rows} rows",
            forms.len()
        );
        assert!(
            no_handler.is_empty() && no_row.is_empty() && supported_without_row.is_empty(),
            "rows without a handler: {no_handler:#?}\nhandlers without a row: {no_row:#?}\n\
             forms of supported features with neither: {supported_without_row:#?}"
        );
    }
}
