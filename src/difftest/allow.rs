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
    /// Whether the entry covers this instruction in this mode.
    pub applies: fn(&Instruction, real_mode: bool) -> bool,
}

/// The allow-list.
pub const ALLOWED: &[Allowed] = &[Allowed {
    name: "mov-cs",
    reason: "QEMU TCG loads CS on MOV CS, r/m instead of raising #UD",
    reference:
        "Intel SDM vol. 2B, MOV: 'The MOV instruction cannot be used to load the CS register' (#UD)",
    applies: |ins, _| ins.code() == Code::Mov_Sreg_rm16 && ins.op0_register() == Register::CS,
}];

/// The entry that forgives a divergence at `ins`, if any.
pub fn find(ins: &Instruction, real_mode: bool) -> Option<&'static Allowed> {
    ALLOWED.iter().find(|a| (a.applies)(ins, real_mode))
}
