//! EFLAGS bits the Intel SDM leaves undefined after an instruction.
//!
//! The differ masks these out of EFLAGS before comparing x86bt with QEMU: where the
//! manual says "undefined", two correct CPUs may disagree. The sets come from the
//! "Flags Affected" section of each instruction's page in the Intel SDM, vol. 2A-2C
//! (order number 325383). Only the arithmetic flags ever appear here; DF, IF, TF and
//! the system flags are never undefined after an integer instruction.
//!
//! Shifts and rotates depend on the count: [`undefined_flags`] takes the count after
//! the SDM's masking (`count & 0x1F`, the "masked count" of the SAL/SAR/SHL/SHR,
//! ROL/ROR/RCL/RCR and SHLD/SHRD pages) when the caller knows it. Without one, it
//! reads an immediate count from the instruction, and for a CL count it returns the
//! union over every count, which is the safe answer for a comparison.

use iced_x86::{Instruction, Mnemonic, OpKind};

/// Carry flag.
pub const CF: u32 = 1 << 0;
/// Parity flag.
pub const PF: u32 = 1 << 2;
/// Auxiliary carry flag.
pub const AF: u32 = 1 << 4;
/// Zero flag.
pub const ZF: u32 = 1 << 6;
/// Sign flag.
pub const SF: u32 = 1 << 7;
/// Overflow flag.
pub const OF: u32 = 1 << 11;
/// All six arithmetic flags.
pub const ARITH: u32 = CF | PF | AF | ZF | SF | OF;

/// The EFLAGS bits left undefined by `ins`. `count` is the effective shift or rotate
/// count (masked to 5 bits as the SDM does) when known; it is ignored for other
/// instructions. Returns 0 for instructions that define every flag they touch.
pub fn undefined_flags(ins: &Instruction, count: Option<u8>) -> u32 {
    use Mnemonic as M;
    match ins.mnemonic() {
        // AND (vol. 2A), OR (2B), XOR (2C), TEST (2B): "The state of the AF flag is
        // undefined."
        M::And | M::Or | M::Xor | M::Test => AF,
        // MUL (vol. 2B), IMUL (2A): "The SF, ZF, AF, and PF flags are undefined."
        M::Mul | M::Imul => SF | ZF | AF | PF,
        // DIV, IDIV (vol. 2A): "The CF, OF, SF, ZF, AF, and PF flags are undefined."
        M::Div | M::Idiv => ARITH,
        M::Shl | M::Sal | M::Shr | M::Sar => shift(ins, count),
        M::Shld | M::Shrd => double_shift(ins, count),
        M::Rol | M::Ror | M::Rcl | M::Rcr => rotate(ins, count),
        // BT, BTS, BTR, BTC (vol. 2A): "The ZF flag is unaffected. The OF, SF, AF, and PF flags
        // are undefined."
        M::Bt | M::Bts | M::Btr | M::Btc => OF | SF | AF | PF,
        // BSF, BSR (vol. 2A): "The ZF flag is set to 1 if the source operand is 0; otherwise ...
        // cleared. The CF, OF, SF, AF, and PF flags are undefined."
        M::Bsf | M::Bsr => CF | OF | SF | AF | PF,
        // DAA, DAS (vol. 2A): "The OF flag is undefined."
        M::Daa | M::Das => OF,
        // AAA, AAS (vol. 2A): "The OF, SF, ZF, and PF flags are undefined."
        M::Aaa | M::Aas => OF | SF | ZF | PF,
        // AAM, AAD (vol. 2A): "The OF, AF, and CF flags are undefined."
        M::Aam | M::Aad => OF | AF | CF,
        _ => 0,
    }
}

/// The count given by the caller, else an immediate count in the last operand, masked
/// to 5 bits (6 for a 64-bit operand); `None` for a CL count the caller did not
/// supply.
fn masked_count(ins: &Instruction, count: Option<u8>) -> Option<u8> {
    let last = ins.op_count().checked_sub(1)?;
    let imm = match ins.op_kind(last) {
        OpKind::Immediate8 => Some(ins.immediate8()),
        _ => None,
    };
    let mask = if operand_bits(ins) == 64 { 0x3F } else { 0x1F };
    count.or(imm).map(|c| c & mask)
}

/// Width in bits of the destination (operand 0).
fn operand_bits(ins: &Instruction) -> u32 {
    let bytes = match ins.op0_kind() {
        OpKind::Register => ins.op0_register().size(),
        _ => ins.memory_size().size(),
    };
    8 * bytes as u32
}

/// SAL/SAR/SHL/SHR (SDM vol. 2B): "If the count is 0, the flags are not affected.
/// For a non-zero count, the AF flag is undefined." "The OF flag is affected only on
/// 1-bit shifts", so it is undefined for larger counts. "The CF flag ... is undefined
/// for SHL and SHR instructions where the count is greater than or equal to the size
/// (in bits) of the destination operand" (reachable for 8- and 16-bit operands only,
/// as the count is masked to 5 bits).
fn shift(ins: &Instruction, count: Option<u8>) -> u32 {
    let bits = operand_bits(ins);
    let sar = ins.mnemonic() == Mnemonic::Sar;
    match masked_count(ins, count) {
        Some(0) => 0,
        Some(1) => AF,
        Some(c) => {
            let cf = if !sar && u32::from(c) >= bits { CF } else { 0 };
            AF | OF | cf
        }
        None => AF | OF | if !sar && bits < 32 { CF } else { 0 },
    }
}

/// SHLD/SHRD (SDM vol. 2B): "If the count is 1 or greater, the CF flag is filled with
/// the last bit shifted out ... For a 1-bit shift, the OF flag is set if a sign change
/// occurred; otherwise, it is cleared. For shifts greater than 1 bit, the OF flag is
/// undefined. If a shift occurs, the AF flag is undefined. If the count operand is 0,
/// the flags are not affected. If the count is greater than the operand size, the flags
/// are undefined."
fn double_shift(ins: &Instruction, count: Option<u8>) -> u32 {
    let bits = operand_bits(ins);
    match masked_count(ins, count) {
        Some(0) => 0,
        Some(1) => AF,
        Some(c) if u32::from(c) > bits => ARITH,
        Some(_) => AF | OF,
        None if bits < 32 => ARITH,
        None => AF | OF,
    }
}

/// ROL/ROR/RCL/RCR (SDM vol. 2B, RCL/RCR/ROL/ROR): "If the masked count is 0, the
/// flags are not affected. If the masked count is 1, then the OF flag is affected,
/// otherwise (masked count is greater than 1) the OF flag is undefined." CF is always
/// defined; SF, ZF, AF and PF are unaffected.
fn rotate(ins: &Instruction, count: Option<u8>) -> u32 {
    match masked_count(ins, count) {
        Some(0 | 1) => 0,
        _ => OF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;
    use iced_x86::{Decoder, DecoderOptions};

    /// Assembles one instruction in 32-bit code and decodes it back.
    fn one(
        build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
    ) -> Instruction {
        let mut a = CodeAssembler::new(32).expect("assembler");
        build(&mut a).expect("fixed test instruction");
        let bytes = a.assemble(0).expect("assemble");
        Decoder::new(32, &bytes, DecoderOptions::NONE).decode()
    }

    #[test]
    fn undefined_flags_logic_ops_leave_only_af() {
        assert_eq!(undefined_flags(&one(|a| a.and(eax, ebx)), None), AF);
        assert_eq!(undefined_flags(&one(|a| a.test(al, 1)), None), AF);
        assert_eq!(
            undefined_flags(&one(|a| a.xor(dword_ptr(ebx), 5)), None),
            AF
        );
    }

    #[test]
    fn undefined_flags_mul_div_follow_the_sdm() {
        assert_eq!(
            undefined_flags(&one(|a| a.mul(ecx)), None),
            SF | ZF | AF | PF
        );
        assert_eq!(
            undefined_flags(&one(|a| a.imul_3(eax, ecx, 3)), None),
            SF | ZF | AF | PF
        );
        assert_eq!(undefined_flags(&one(|a| a.div(cl)), None), ARITH);
        assert_eq!(undefined_flags(&one(|a| a.idiv(ecx)), None), ARITH);
    }

    #[test]
    fn undefined_flags_shifts_depend_on_the_count() {
        let shl_cl = one(|a| a.shl(eax, cl));
        assert_eq!(undefined_flags(&shl_cl, Some(0)), 0);
        assert_eq!(undefined_flags(&shl_cl, Some(1)), AF);
        assert_eq!(undefined_flags(&shl_cl, Some(5)), AF | OF);
        assert_eq!(undefined_flags(&shl_cl, None), AF | OF);
        // Immediate counts are read from the instruction, masked to 5 bits.
        assert_eq!(undefined_flags(&one(|a| a.sar(eax, 1)), None), AF);
        assert_eq!(undefined_flags(&one(|a| a.shr(eax, 32)), None), 0);
        // SHL/SHR by the operand width or more leave CF undefined; SAR does not.
        assert_eq!(undefined_flags(&one(|a| a.shl(al, 8)), None), AF | OF | CF);
        assert_eq!(undefined_flags(&one(|a| a.sar(al, 8)), None), AF | OF);
        assert_eq!(undefined_flags(&one(|a| a.shr(ax, cl)), None), AF | OF | CF);
    }

    #[test]
    fn undefined_flags_double_shifts_past_the_width_leave_everything() {
        let shld16 = one(|a| a.shld(ax, bx, cl));
        assert_eq!(undefined_flags(&shld16, Some(0)), 0);
        assert_eq!(undefined_flags(&shld16, Some(1)), AF);
        assert_eq!(undefined_flags(&shld16, Some(16)), AF | OF);
        assert_eq!(undefined_flags(&shld16, Some(17)), ARITH);
        assert_eq!(undefined_flags(&shld16, None), ARITH);
        let shrd32 = one(|a| a.shrd(eax, ebx, 31));
        assert_eq!(undefined_flags(&shrd32, None), AF | OF);
    }

    #[test]
    fn undefined_flags_rotates_only_of_past_one() {
        assert_eq!(undefined_flags(&one(|a| a.rol(eax, 1)), None), 0);
        assert_eq!(undefined_flags(&one(|a| a.rcr(bl, 3)), None), OF);
        let ror_cl = one(|a| a.ror(eax, cl));
        assert_eq!(undefined_flags(&ror_cl, Some(0)), 0);
        assert_eq!(undefined_flags(&ror_cl, None), OF);
    }

    #[test]
    fn undefined_flags_bit_and_bcd_ops_follow_the_sdm() {
        assert_eq!(
            undefined_flags(&one(|a| a.bt(eax, 3)), None),
            OF | SF | AF | PF
        );
        assert_eq!(
            undefined_flags(&one(|a| a.bts(eax, ecx)), None),
            OF | SF | AF | PF
        );
        assert_eq!(
            undefined_flags(&one(|a| a.bsf(eax, ecx)), None),
            CF | OF | SF | AF | PF
        );
        assert_eq!(undefined_flags(&one(|a| a.daa()), None), OF);
        assert_eq!(undefined_flags(&one(|a| a.aas()), None), OF | SF | ZF | PF);
        assert_eq!(undefined_flags(&one(|a| a.aam(10)), None), OF | AF | CF);
    }

    #[test]
    fn undefined_flags_defined_instructions_give_zero() {
        assert_eq!(undefined_flags(&one(|a| a.add(eax, ebx)), None), 0);
        assert_eq!(undefined_flags(&one(|a| a.neg(eax)), None), 0);
        assert_eq!(undefined_flags(&one(|a| a.inc(ecx)), None), 0);
        assert_eq!(undefined_flags(&one(|a| a.mov(eax, 1)), None), 0);
    }
}
