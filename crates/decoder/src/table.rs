//! The one table of what the project knows per instruction form.
//!
//! A [`Row`] gives, for one decoded form (an iced [`Code`] with its operands):
//! - its **sensitivity** ([`crate::sensitive`]): whether the unit must end on it
//!   and why;
//! - the **flags** it reads and writes (from iced's per-form tables) and those
//!   the Intel SDM leaves undefined ([`crate::undefined`]);
//! - its **lowering class** ([`Class`]): how the translator may lower it, and the
//!   helper-call kind it is counted under when it does not;
//! - the **CPUID feature** that gates it.
//!
//! A form has a row exactly when the CPU this project models executes it: its
//! CPUID features are all ones that CPU reports ([`SUPPORTED`]) and the table
//! names it. Every other form is an undefined opcode (#UD) to it. Every consumer
//! reads this table: the interpreter's handler choice (a form without a row
//! gets the #UD handler, and a test walks every decodable form to check that
//! every row has a handler), the unit builder and the run loop (sensitivity),
//! the translator (flags and lowering class) and the differ (undefined flags).
//!
//! A few forms run differently on this CPU than their decoded mnemonic says,
//! as on real hardware without the feature that gave them their meaning:
//! TZCNT and LZCNT are BSF and BSR with an ignored REP prefix (no BMI1/LZCNT),
//! ENDBR32/64 and RDSSPD/Q are hint NOPs (no CET, SDM vol. 1 §18.3.1), and
//! PREFETCHW (0F 0D /1) is a hint NOP without PRFCHW in CPUID.

use crate::sensitive::{classify, Sensitivity};
use crate::undefined::{undefined_flags, AF, CF, OF, PF, SF, ZF};
use iced_x86::{Code, CpuidFeature, Instruction, Mnemonic, RflagsBits};

/// How the translator may lower a form, and what it counts as when it calls the
/// helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// An integer instruction a host instruction of the same encoding computes
    /// exactly (ALU ops, moves, SETcc and CMOVcc, LEA, BSWAP, CBW/CWD): it may
    /// be re-encoded for the host.
    Ident,
    /// MUL, IMUL, DIV and IDIV.
    MulDiv,
    /// Shifts and rotates, single and double.
    Shift,
    /// Other integer instructions (exchange-and-add, compare-and-exchange, bit
    /// tests and scans, BCD, flag operations, XLAT, BOUND).
    Alu,
    /// PUSH, POP, PUSHA, POPA, ENTER, LEAVE.
    Stack,
    /// Near and far jumps, calls and returns, LOOP, JCXZ.
    Branch,
    /// String instructions (MOVS, CMPS, SCAS, LODS, STOS, INS, OUTS).
    String,
    /// CLI, STI, PUSHF and POPF: the interrupt flag and the whole FLAGS image.
    Flags,
    /// System instructions: everything else in the sensitive table, and the
    /// privileged and descriptor-table instructions.
    System,
    /// No operation (NOP forms, hint NOPs, PREFETCH, cache-line hints).
    Nop,
    /// x87 floating point, FWAIT, and the x87/SSE state instructions.
    X87,
    /// MMX, SSE through SSE4.2 and POPCNT.
    Simd,
}

/// What the table knows about one form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// How it may be lowered.
    pub class: Class,
    /// Why it is sensitive; `None` for an ordinary instruction.
    pub sensitivity: Option<Sensitivity>,
    /// The CPUID feature that gates it; `None` for the base integer set
    /// (8086 through 486 and x86-64's own forms).
    pub feature: Option<CpuidFeature>,
    /// The arithmetic flags and DF/IF it reads (EFLAGS bit positions).
    pub flags_read: u32,
    /// The flags it writes, defined or not (EFLAGS bit positions).
    pub flags_written: u32,
    /// The written flags the SDM leaves undefined, for its immediate count when
    /// it has one; for a count in CL, the union over every count
    /// ([`undefined_flags`] with the run-time count is exact).
    pub flags_undefined: u32,
}

/// The CPUID features of the CPU this project models (`x86bt_cpu::identity`):
/// a form whose features are all here may have a row; any other form is #UD.
pub const SUPPORTED: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL486,
    CpuidFeature::X64,
    CpuidFeature::CPUID,
    CpuidFeature::TSC,
    CpuidFeature::MSR,
    CpuidFeature::RDPMC,
    CpuidFeature::CX8,
    CpuidFeature::CMPXCHG16B,
    CpuidFeature::CMOV,
    CpuidFeature::SEP,
    CpuidFeature::SYSCALL,
    CpuidFeature::RDTSCP,
    CpuidFeature::PAUSE,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::CLFSH,
    CpuidFeature::FPU,
    CpuidFeature::FPU287,
    CpuidFeature::FPU387,
    CpuidFeature::FXSR,
    CpuidFeature::XSAVE,
    CpuidFeature::XSAVEOPT,
    CpuidFeature::MMX,
    CpuidFeature::SSE,
    CpuidFeature::SSE2,
    CpuidFeature::SSE3,
    CpuidFeature::SSSE3,
    CpuidFeature::SSE4_1,
    CpuidFeature::SSE4_2,
    CpuidFeature::POPCNT,
];

/// Base features: the integer instruction set up to the 486 and x86-64's own
/// forms (a row names no feature for them).
fn is_base(f: CpuidFeature) -> bool {
    matches!(
        f,
        CpuidFeature::INTEL8086
            | CpuidFeature::INTEL186
            | CpuidFeature::INTEL286
            | CpuidFeature::INTEL386
            | CpuidFeature::INTEL486
            | CpuidFeature::X64
    )
}

/// Whether every CPUID feature `ins` needs is one this CPU reports.
pub fn supported(ins: &Instruction) -> bool {
    !ins.is_invalid() && ins.cpuid_features().iter().all(|f| SUPPORTED.contains(f))
}

/// The forms that decode to another meaning on this CPU than their mnemonic
/// (see the module comment): their row, whatever their features.
fn legacy_meaning(ins: &Instruction) -> Option<(Class, Option<CpuidFeature>)> {
    if ins.code() == Code::Prefetchw_m8 {
        return Some((Class::Nop, Some(CpuidFeature::MULTIBYTENOP)));
    }
    match ins.mnemonic() {
        Mnemonic::Tzcnt | Mnemonic::Lzcnt => Some((Class::Alu, None)),
        Mnemonic::Endbr32 | Mnemonic::Endbr64 | Mnemonic::Rdsspd | Mnemonic::Rdsspq => {
            Some((Class::Nop, Some(CpuidFeature::MULTIBYTENOP)))
        }
        _ => None,
    }
}

/// The row of `ins`, or `None` when it is an undefined opcode to this CPU.
pub fn row(ins: &Instruction) -> Option<Row> {
    if ins.is_invalid() {
        return None;
    }
    let (class, feature) = match legacy_meaning(ins) {
        Some(meaning) => meaning,
        None if supported(ins) => {
            let feature = ins.cpuid_features().iter().copied().find(|&f| !is_base(f));
            (class_of(ins, feature)?, feature)
        }
        None => return None,
    };
    let (flags_read, flags_written) = if matches!(ins.mnemonic(), Mnemonic::Tzcnt | Mnemonic::Lzcnt)
    {
        // Run as BSF/BSR: they read nothing and write every arithmetic flag.
        (0, CF | PF | AF | ZF | SF | OF)
    } else {
        (
            eflags(ins.rflags_read()),
            eflags(
                ins.rflags_written()
                    | ins.rflags_cleared()
                    | ins.rflags_set()
                    | ins.rflags_undefined(),
            ),
        )
    };
    Some(Row {
        class,
        sensitivity: classify(ins),
        feature,
        flags_read,
        flags_written,
        flags_undefined: undefined_flags(ins, None),
    })
}

/// iced's [`RflagsBits`] as EFLAGS bit positions (the arithmetic flags, DF, IF
/// and AC; the x87 condition codes are not EFLAGS).
fn eflags(bits: u32) -> u32 {
    const MAP: [(u32, u32); 9] = [
        (RflagsBits::OF, OF),
        (RflagsBits::SF, SF),
        (RflagsBits::ZF, ZF),
        (RflagsBits::AF, AF),
        (RflagsBits::CF, CF),
        (RflagsBits::PF, PF),
        (RflagsBits::DF, 1 << 10),
        (RflagsBits::IF, 1 << 9),
        (RflagsBits::AC, 1 << 18),
    ];
    MAP.iter()
        .filter(|(from, _)| bits & from != 0)
        .fold(0, |acc, (_, to)| acc | to)
}

/// The lowering class of a supported form; `None` for a form the table does
/// not name (an undefined opcode to this CPU).
fn class_of(ins: &Instruction, feature: Option<CpuidFeature>) -> Option<Class> {
    use CpuidFeature as F;
    use Mnemonic as M;
    match feature {
        Some(F::FPU | F::FPU287 | F::FPU387 | F::FXSR | F::XSAVE | F::XSAVEOPT) => {
            return Some(Class::X87)
        }
        Some(
            F::MMX | F::SSE | F::SSE2 | F::SSE3 | F::SSSE3 | F::SSE4_1 | F::SSE4_2 | F::POPCNT,
        ) => {
            return Some(match ins.mnemonic() {
                // PREFETCHh, the cache-line hints and the fences order or hint
                // nothing a single in-order CPU could observe.
                M::Prefetchnta
                | M::Prefetcht0
                | M::Prefetcht1
                | M::Prefetcht2
                | M::Lfence
                | M::Mfence
                | M::Sfence => Class::Nop,
                M::Ldmxcsr | M::Stmxcsr => Class::X87,
                _ => Class::Simd,
            });
        }
        Some(F::CLFSH) => return Some(Class::Nop),
        _ => {}
    }
    if classify(ins).is_some() {
        return Some(match ins.mnemonic() {
            M::Cli | M::Sti | M::Pushf | M::Pushfd | M::Pushfq | M::Popf | M::Popfd | M::Popfq => {
                Class::Flags
            }
            M::Push | M::Pop => Class::Stack,
            M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => Class::String,
            M::Call | M::Jmp | M::Retf => Class::Branch,
            M::Pause => Class::Nop,
            M::Rsm | M::Mwait | M::Monitor => return None,
            _ => Class::System,
        });
    }
    let class = match ins.mnemonic() {
        M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
            Class::Ident
        }
        M::Inc | M::Dec | M::Neg | M::Not | M::Movzx | M::Movsx | M::Movsxd | M::Xchg => {
            Class::Ident
        }
        // MOV between GPRs, memory and immediates (CR, DR and segment forms are
        // sensitive, above); TR forms are 386-only (#UD here).
        M::Mov if (0..ins.op_count()).all(|i| !is_special_register(ins, i)) => Class::Ident,
        M::Lea | M::Cbw | M::Cwde | M::Cdqe | M::Cwd | M::Cdq | M::Cqo | M::Bswap => Class::Ident,
        M::Seto | M::Setno | M::Setb | M::Setae | M::Sete | M::Setne | M::Setbe | M::Seta => {
            Class::Ident
        }
        M::Sets | M::Setns | M::Setp | M::Setnp | M::Setl | M::Setge | M::Setle | M::Setg => {
            Class::Ident
        }
        M::Cmovo | M::Cmovno | M::Cmovb | M::Cmovae | M::Cmove | M::Cmovne | M::Cmovbe => {
            Class::Ident
        }
        M::Cmova | M::Cmovs | M::Cmovns | M::Cmovp | M::Cmovnp | M::Cmovl | M::Cmovge => {
            Class::Ident
        }
        M::Cmovle | M::Cmovg => Class::Ident,
        M::Mul | M::Imul | M::Div | M::Idiv => Class::MulDiv,
        M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => Class::Shift,
        M::Shld | M::Shrd => Class::Shift,
        M::Xadd | M::Cmpxchg | M::Cmpxchg8b | M::Cmpxchg16b | M::Lahf | M::Sahf | M::Salc => {
            Class::Alu
        }
        M::Xlatb | M::Clc | M::Stc | M::Cmc | M::Cld | M::Std | M::Bound => Class::Alu,
        M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad => Class::Alu,
        M::Bt | M::Bts | M::Btr | M::Btc | M::Bsf | M::Bsr => Class::Alu,
        M::Nop | M::Reservednop => Class::Nop,
        M::Push | M::Pop | M::Pusha | M::Pushad | M::Popa | M::Popad | M::Enter | M::Leave => {
            Class::Stack
        }
        M::Jmp | M::Call | M::Ret | M::Loop | M::Loope | M::Loopne => Class::Branch,
        M::Jcxz | M::Jecxz | M::Jrcxz => Class::Branch,
        _ if ins.is_jcc_short_or_near() => Class::Branch,
        _ if ins.is_string_instruction() => Class::String,
        M::Wait => Class::X87,
        _ => return None,
    };
    Some(class)
}

/// Whether operand `i` is a segment, control, debug or test register.
fn is_special_register(ins: &Instruction, i: u32) -> bool {
    ins.op_kind(i) == iced_x86::OpKind::Register && {
        let r = ins.op_register(i);
        r.is_segment_register() || r.is_cr() || r.is_dr() || r.is_tr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bits: u32, bytes: &[u8]) -> Instruction {
        Decoder::with_ip(bits, bytes, 0, DecoderOptions::NONE).decode()
    }

    #[test]
    fn table_rows_carry_flags_in_eflags_layout() {
        let add = row(&decode(32, &[0x01, 0xC3])).unwrap();
        assert_eq!(add.class, Class::Ident);
        assert_eq!(add.flags_written, CF | PF | AF | ZF | SF | OF);
        assert_eq!((add.flags_read, add.flags_undefined), (0, 0));
        let adc = row(&decode(32, &[0x11, 0xC3])).unwrap();
        assert_eq!(adc.flags_read, CF);
        let and = row(&decode(32, &[0x21, 0xC3])).unwrap();
        assert_eq!(and.flags_undefined, AF);
        let inc = row(&decode(32, &[0x40])).unwrap();
        assert_eq!(inc.flags_written, PF | AF | ZF | SF | OF);
        let jz = row(&decode(32, &[0x74, 0x00])).unwrap();
        assert_eq!((jz.class, jz.flags_read), (Class::Branch, ZF));
        let std = row(&decode(32, &[0xFD])).unwrap();
        assert_eq!(std.flags_written, 1 << 10);
    }

    #[test]
    fn table_gates_forms_on_the_cpuid_features() {
        // SSE4.2's CRC32 has a row, AVX's VADDPS and BMI's ANDN do not.
        let crc32 = row(&decode(32, &[0xF2, 0x0F, 0x38, 0xF1, 0xC1])).unwrap();
        assert_eq!(
            (crc32.class, crc32.feature),
            (Class::Simd, Some(CpuidFeature::SSE4_2))
        );
        assert!(row(&decode(32, &[0xC5, 0xF4, 0x58, 0xC2])).is_none());
        assert!(row(&decode(64, &[0xC4, 0xE2, 0x70, 0xF2, 0xC2])).is_none());
        // TZCNT is BSF here (no BMI1), ENDBR64 a hint NOP (no CET).
        let tzcnt = row(&decode(32, &[0xF3, 0x0F, 0xBC, 0xC1])).unwrap();
        assert_eq!((tzcnt.class, tzcnt.flags_read), (Class::Alu, 0));
        let endbr = row(&decode(64, &[0xF3, 0x0F, 0x1E, 0xFA])).unwrap();
        assert_eq!(endbr.class, Class::Nop);
    }

    #[test]
    fn table_sensitivity_comes_from_the_sensitive_column() {
        let out = row(&decode(32, &[0xEE])).unwrap();
        assert_eq!(
            (out.class, out.sensitivity),
            (Class::System, Some(Sensitivity::Io))
        );
        let outsb = row(&decode(32, &[0x6E])).unwrap();
        assert_eq!(outsb.class, Class::String);
        let popf = row(&decode(32, &[0x9D])).unwrap();
        assert_eq!(popf.class, Class::Flags);
        assert!(row(&decode(32, &[0x01, 0xC3]))
            .unwrap()
            .sensitivity
            .is_none());
    }

    #[test]
    fn table_undefined_flags_follow_the_immediate_count() {
        let shl1 = row(&decode(32, &[0xC1, 0xE0, 0x01])).unwrap();
        assert_eq!(shl1.flags_undefined, AF);
        let shl4 = row(&decode(32, &[0xC1, 0xE0, 0x04])).unwrap();
        assert_eq!(shl4.flags_undefined, AF | OF);
        let mul = row(&decode(32, &[0xF7, 0xE3])).unwrap();
        assert_eq!(
            (mul.class, mul.flags_undefined),
            (Class::MulDiv, SF | ZF | AF | PF)
        );
    }
}
