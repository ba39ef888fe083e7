//! Debug registers: instruction and data breakpoints from DR0-DR3/DR7, and the
//! DR6 status bits (SDM vol. 3A §17.2-17.3). Data breakpoints are traps: a hit
//! is recorded in `CpuState::pending_db` and #DB is raised after the instruction.

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

/// Records the data breakpoints that an access of `size` bytes at linear `lin`
/// hits (RW = 01 for writes, 11 for reads and writes; LEN = 1, 2, 8 or 4 bytes,
/// the address aligned down to the length).
pub fn data_access(cpu: &mut CpuState, lin: u64, size: u32, write: bool) {
    let dr7 = cpu.dr[7];
    for n in 0..4 {
        if (dr7 >> (2 * n)) & 3 == 0 {
            continue;
        }
        let rw = (dr7 >> (16 + 4 * n)) & 3;
        if !(rw == 3 || (rw == 1 && write)) {
            continue;
        }
        let len = match (dr7 >> (18 + 4 * n)) & 3 {
            0 => 1,
            1 => 2,
            2 => 8,
            _ => 4,
        };
        let start = cpu.dr[n] & 0xFFFF_FFFF & !(len - 1);
        if lin < start + len && start < lin + u64::from(size) {
            cpu.pending_db |= 1 << n;
        }
    }
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

    #[test]
    fn data_breakpoint_write_hits_overlapping_word() {
        let mut cpu = CpuState::reset();
        cpu.dr[0] = 0x2002;
        cpu.dr[7] = 1 | (0b01 << 16) | (0b01 << 18); // L0, write, 2 bytes
        data_access(&mut cpu, 0x2000, 2, true);
        assert_eq!(cpu.pending_db, 0, "0x2000-0x2001 misses 0x2002-0x2003");
        data_access(&mut cpu, 0x2003, 1, false);
        assert_eq!(cpu.pending_db, 0, "reads do not hit a write breakpoint");
        data_access(&mut cpu, 0x2001, 2, true);
        assert_eq!(cpu.pending_db, 1);
    }
}
