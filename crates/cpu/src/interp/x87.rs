//! x87 instructions (placeholder: behaves as a CPU without a coprocessor).

use super::{Exec, Insn};
use crate::state::CpuState;
use x86bt_machine::Machine;

/// Executes an x87 escape instruction.
pub fn esc(cpu: &mut CpuState, m: &mut Machine, insn: &Insn) -> Exec {
    super::system::fpu_escape(cpu, m, insn)
}
