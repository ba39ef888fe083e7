//! Known QEMU TCG deviations from hardware. A divergence is forgiven only when
//! its instruction and condition match an entry exactly; each entry says why and
//! where the hardware behaviour is documented. Everything else is a failure.

use iced_x86::{Code, Instruction, Register};

/// One allowed deviation.
pub struct Allowed {
    /// A short name.
    pub name: &'static str,
    /// Why QEMU differs, in one line.
    pub reason: &'static str,
    /// Where hardware behaviour is documented.
    pub reference: &'static str,
    /// Whether the entry covers this instruction, given its effective shift or
    /// rotate count when it has one.
    pub applies: fn(&Instruction, count: Option<u8>) -> bool,
}

/// The allow-list.
pub const ALLOWED: &[Allowed] = &[
    Allowed {
    name: "mov-cs",
    reason: "QEMU TCG loads CS on MOV CS, r/m instead of raising #UD",
    reference:
        "Intel SDM vol. 2B, MOV: 'The MOV instruction cannot be used to load the CS register' (#UD)",
    applies: |ins, _| ins.code() == Code::Mov_Sreg_rm16 && ins.op0_register() == Register::CS,
    },
    Allowed {
        name: "aam-imm8-high",
        reason: "QEMU TCG treats an AAM immediate of 0x80 or more as negative; hardware divides by it unsigned",
        reference: "Intel SDM vol. 2A, AAM (AH := tempAL / imm8); SingleStepTests 80286 D4.MOO.gz: 142 cases with imm8 >= 0x80, AL >= imm8 pass on x86bt",
        applies: |ins, _| ins.mnemonic() == iced_x86::Mnemonic::Aam && ins.immediate8() >= 0x80,
    },
    Allowed {
        name: "rcl-rcr-full-turn",
        reason: "QEMU TCG changes CF (and with a memory operand writes a wrong value) for RCL/RCR r/m8 or r/m16 when the masked count is a non-zero multiple of 9 or 17; hardware rotates by count mod 9/17 = 0, changing nothing",
        reference: "Intel SDM vol. 2B, RCL/RCR (tempCOUNT := (COUNT AND 1FH) MOD 9 or 17); SingleStepTests 80286 C0.2/C1.2/C0.3/C1.3: 210 such cases pass on x86bt",
        applies: |ins, count| {
            let bits = ins.op0_register().size().max(ins.memory_size().size()) * 8;
            matches!(ins.mnemonic(), iced_x86::Mnemonic::Rcl | iced_x86::Mnemonic::Rcr)
                && matches!(bits, 8 | 16)
                && count.is_some_and(|c| c != 0 && u32::from(c) % (bits as u32 + 1) == 0)
        },
    },
];

/// The entry that forgives a divergence at `ins`, if any.
pub fn find(ins: &Instruction, count: Option<u8>) -> Option<&'static Allowed> {
    ALLOWED.iter().find(|a| (a.applies)(ins, count))
}
