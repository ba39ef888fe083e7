//! Debug registers: instruction breakpoints from DR0-DR3/DR7, and the DR6 status
//! bits (SDM vol. 3A §17.2). Data breakpoints are not checked yet.

use crate::state::CpuState;

/// DR6.BS: the #DB came from single-stepping (TF).
pub const DR6_BS: u64 = 1 << 14;

/// The DR6 B0-B3 bits of the enabled instruction breakpoints at linear `lin`,
/// if any matches.
pub fn exec_breakpoint(cpu: &CpuState, lin: u64) -> Option<u64> {
    let dr7 = cpu.dr[7];
    let mut hit = 0;
    for n in 0..4 {
        let enabled = (dr7 >> (2 * n)) & 3 != 0;
        let rw = (dr7 >> (16 + 4 * n)) & 3;
        if enabled && rw == 0 && cpu.dr[n] & 0xFFFF_FFFF == lin {
            hit |= 1 << n;
        }
    }
    (hit != 0).then_some(hit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_breakpoint_enabled_in_dr7_matches_its_address() {
        let mut cpu = CpuState::reset();
        cpu.dr[1] = 0x1234;
        cpu.dr[7] = 1 << 2; // L1, R/W1 = 00 (execute)
        assert_eq!(exec_breakpoint(&cpu, 0x1234), Some(0b10));
        assert_eq!(exec_breakpoint(&cpu, 0x1235), None);
        cpu.dr[7] |= 1 << 20; // R/W1 = 01: a write breakpoint, not execute
        assert_eq!(exec_breakpoint(&cpu, 0x1234), None);
    }
}
