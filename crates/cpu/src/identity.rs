//! What the CPU says about itself: CPUID leaves and the model-specific registers.
//!
//! The feature set is honest: a bit is reported only when the instruction or
//! register it advertises is implemented: the x87 and FXSAVE/FXRSTOR are; no SSE,
//! no local APIC, no SYSENTER, no MTRRs, no PAT, no long mode.
//!
//! A family-6 CPU has the P6 performance-monitoring MSRs whatever CPUID says
//! (SDM Vol. 3B §21.6.8 in the current numbering, "Performance Monitoring (P6
//! Family Processor)"), and kernels probe them by family and model, so they are
//! here: PerfEvtSel0/1 (0x186/0x187) and PerfCtr0/1 (0xC1/0xC2), 40-bit
//! counters, writes sign-extended from bit 31, EN in PerfEvtSel0 gating both,
//! and RDPMC. Two events count: INST_RETIRED (0xC0) and CPU_CLK_UNHALTED (0x79),
//! which are the same number here (one instruction per cycle of a 1 GHz core).
//! Limits: the USR/OS filter is not applied per CPL (a counter with either bit
//! set counts at every CPL), other events do not advance, and the INT bit raises
//! nothing (there is no local APIC to deliver a PMI).

use crate::exception::Exception;
use crate::state::CpuState;

/// Family 6, model 6, stepping 3 (the signature QEMU's `qemu32` model reports): the signature CPUID leaf 1 returns in EAX and
/// RESET leaves in EDX.
pub const SIGNATURE: u32 = 0x0000_0663;

/// CPUID.1:EDX bits we implement (SDM vol. 2A, CPUID, Table 3-11).
const FEATURES_EDX: u32 = 1 // FPU (x87 on chip)
    | (1 << 2) // DE (CR4.DE, DR4/DR5 behaviour)
    | (1 << 3) // PSE (4 MiB pages)
    | (1 << 4) // TSC
    | (1 << 5) // MSR (RDMSR/WRMSR for the MSRs below)
    | (1 << 6) // PAE (with NX, see leaf 0x80000001)
    | (1 << 8) // CX8 (CMPXCHG8B)
    | (1 << 13) // PGE (global pages)
    | (1 << 15) // CMOV
    | (1 << 24); // FXSR (FXSAVE/FXRSTOR, CR4.OSFXSR)

/// CPUID.80000001h:EDX: NX (EFER.NXE).
const EXT_FEATURES_EDX: u32 = 1 << 20;

/// The largest basic leaf.
const MAX_LEAF: u32 = 1;

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_SYSENTER_CS: u32 = 0x174;
/// IA32_EFER.
pub const MSR_EFER: u32 = 0xC000_0080;
/// The EFER bits this CPU implements: NXE only (no long mode, no SYSCALL).
const EFER_VALID: u64 = crate::mmu::efer::NXE;

/// Executes CPUID for leaf `eax` (sub-leaf `ecx`): returns EAX, EBX, ECX, EDX.
pub fn cpuid(leaf: u32, _subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => {
            let v = b"GenuineIntel";
            let word = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
            [MAX_LEAF, word(0), word(8), word(4)]
        }
        1 => [SIGNATURE, 0, 0, FEATURES_EDX],
        // Intel: leaves above the maximum return the highest basic leaf's data.
        l if l < 0x8000_0000 => [SIGNATURE, 0, 0, FEATURES_EDX],
        0x8000_0000 => [0x8000_0001, 0, 0, 0],
        0x8000_0001 => [0, 0, 0, EXT_FEATURES_EDX],
        _ => [0; 4],
    }
}

/// The current time-stamp counter.
pub fn tsc(cpu: &CpuState) -> u64 {
    cpu.icount.wrapping_add(cpu.tsc_offset)
}

/// IA32_PLATFORM_ID (read-only): bits 52:50 select the platform; ours is 0.
const MSR_PLATFORM_ID: u32 = 0x17;
/// P6 PerfCtr0 (PerfCtr1 follows).
const MSR_PERFCTR0: u32 = 0xC1;
/// P6 PerfEvtSel0 (PerfEvtSel1 follows).
const MSR_EVNTSEL0: u32 = 0x186;
/// PerfEvtSel bits: USR (16), OS (17), EN (22, PerfEvtSel0 only).
const EVTSEL_USR: u64 = 1 << 16;
const EVTSEL_OS: u64 = 1 << 17;
const EVTSEL_EN: u64 = 1 << 22;
/// PerfEvtSel bits that exist (bit 21 is reserved; 63:32 are reserved).
const EVTSEL_VALID: u64 = 0xFFDF_FFFF;
/// The counters are 40 bits wide.
const PERFCTR_MASK: u64 = (1 << 40) - 1;
/// Events the model counts: INST_RETIRED and CPU_CLK_UNHALTED.
const EVENT_INST_RETIRED: u64 = 0xC0;
const EVENT_CLK_UNHALTED: u64 = 0x79;

/// The two P6 performance counters and their event selects. A counter's value
/// is `value[i]` plus the instructions retired since `mark` while it counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct P6Counters {
    /// PerfEvtSel0/1.
    pub evtsel: [u64; 2],
    /// PerfCtr0/1 as of `mark`.
    pub value: [u64; 2],
    /// `icount` when `value` was last brought up to date.
    pub mark: u64,
}

impl P6Counters {
    fn counting(&self, i: usize) -> bool {
        let sel = self.evtsel[i];
        let event = sel & 0xFF;
        self.evtsel[0] & EVTSEL_EN != 0
            && sel & (EVTSEL_USR | EVTSEL_OS) != 0
            && (event == EVENT_INST_RETIRED || event == EVENT_CLK_UNHALTED)
    }

    /// Counter `i` (0 or 1) at instruction count `icount`.
    pub fn read(&self, i: usize, icount: u64) -> u64 {
        let delta = if self.counting(i) {
            icount.wrapping_sub(self.mark)
        } else {
            0
        };
        self.value[i].wrapping_add(delta) & PERFCTR_MASK
    }

    /// Folds the counts so far into `value`, before a select or counter changes.
    fn settle(&mut self, icount: u64) {
        self.value = [self.read(0, icount), self.read(1, icount)];
        self.mark = icount;
    }
}

/// IA32_BIOS_SIGN_ID, the microcode update signature.
const MSR_BIOS_SIGN_ID: u32 = 0x8b;

/// RDMSR. Unknown MSRs raise #GP(0), never read as zero.
pub fn rdmsr(cpu: &CpuState, msr: u32) -> Result<u64, Exception> {
    match msr {
        MSR_TSC => Ok(tsc(cpu)),
        0x174..=0x176 => Ok(cpu.sysenter[(msr - MSR_SYSENTER_CS) as usize]),
        MSR_EFER => Ok(cpu.efer),
        // IA32_BIOS_SIGN_ID: the microcode revision sits in the high half
        // after a CPUID(1); ours is revision 0, and the low half reads 0.
        MSR_BIOS_SIGN_ID => Ok(0),
        MSR_PLATFORM_ID => Ok(0),
        MSR_PERFCTR0 | 0xC2 => Ok(cpu.perf.read((msr - MSR_PERFCTR0) as usize, cpu.icount)),
        MSR_EVNTSEL0 | 0x187 => Ok(cpu.perf.evtsel[(msr - MSR_EVNTSEL0) as usize]),
        _ => Err(Exception::GeneralProtection(0)),
    }
}

/// WRMSR. Unknown MSRs raise #GP(0), never ignored.
pub fn wrmsr(cpu: &mut CpuState, msr: u32, value: u64) -> Result<(), Exception> {
    match msr {
        MSR_TSC => {
            cpu.tsc_offset = value.wrapping_sub(cpu.icount);
            Ok(())
        }
        0x174..=0x176 => {
            cpu.sysenter[(msr - MSR_SYSENTER_CS) as usize] = value;
            Ok(())
        }
        // Writing IA32_BIOS_SIGN_ID (the microcode-revision probe) is allowed
        // with any value; there is no microcode to update.
        MSR_BIOS_SIGN_ID => Ok(()),
        MSR_PERFCTR0 | 0xC2 => {
            cpu.perf.settle(cpu.icount);
            // Bits 31:0 are written and bits 39:32 copy bit 31.
            let v = value as u32 as i32 as i64 as u64 & PERFCTR_MASK;
            cpu.perf.value[(msr - MSR_PERFCTR0) as usize] = v;
            Ok(())
        }
        MSR_EVNTSEL0 | 0x187 if value & !EVTSEL_VALID == 0 => {
            cpu.perf.settle(cpu.icount);
            cpu.perf.evtsel[(msr - MSR_EVNTSEL0) as usize] = value;
            Ok(())
        }
        MSR_EFER if value & !EFER_VALID == 0 => {
            if (cpu.efer ^ value) & crate::mmu::efer::NXE != 0 {
                cpu.tlb.flush(false);
            }
            cpu.efer = value;
            Ok(())
        }
        _ => Err(Exception::GeneralProtection(0)),
    }
}

/// RDPMC: counter `ecx` (0 or 1), or #GP(0) for another index or when CR4.PCE
/// is clear outside ring 0.
pub fn rdpmc(cpu: &CpuState, ecx: u32) -> Result<u64, Exception> {
    let pce = cpu.cr4 & crate::mmu::cr4::PCE != 0;
    if ecx > 1 || (!pce && cpu.cpl() != 0) {
        return Err(Exception::GeneralProtection(0));
    }
    Ok(cpu.perf.read(ecx as usize, cpu.icount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p6_counter_writes_sign_extend_from_bit_31_and_read_back() {
        let mut cpu = CpuState::reset();
        wrmsr(&mut cpu, MSR_PERFCTR0, 0xabcd).unwrap();
        assert_eq!(rdmsr(&cpu, MSR_PERFCTR0).unwrap(), 0xabcd);
        wrmsr(&mut cpu, 0xC2, 0xFFFF_FFFF_8000_0000).unwrap();
        assert_eq!(rdmsr(&cpu, 0xC2).unwrap(), 0xFF_8000_0000);
        cpu.icount += 100;
        // Not enabled: nothing counts.
        assert_eq!(rdmsr(&cpu, MSR_PERFCTR0).unwrap(), 0xabcd);
    }

    #[test]
    fn p6_counter_counts_instructions_retired_only_while_enabled() {
        let mut cpu = CpuState::reset();
        wrmsr(&mut cpu, MSR_PERFCTR0, 0).unwrap();
        wrmsr(
            &mut cpu,
            MSR_EVNTSEL0,
            EVTSEL_EN | EVTSEL_OS | EVTSEL_USR | 0xC0,
        )
        .unwrap();
        cpu.icount += 1000;
        assert_eq!(rdmsr(&cpu, MSR_PERFCTR0).unwrap(), 1000);
        // Clearing EN stops both counters; the count so far stays.
        wrmsr(&mut cpu, MSR_EVNTSEL0, EVTSEL_OS | 0xC0).unwrap();
        cpu.icount += 500;
        assert_eq!(rdmsr(&cpu, MSR_PERFCTR0).unwrap(), 1000);
        assert_eq!(rdpmc(&cpu, 0).unwrap(), 1000);
        assert!(rdpmc(&cpu, 2).is_err());
        // Reserved bit 21 is #GP.
        assert!(wrmsr(&mut cpu, MSR_EVNTSEL0, 1 << 21).is_err());
    }

    #[test]
    fn cpuid_leaf0_reports_vendor_in_ebx_edx_ecx_order() {
        let [_, b, c, d] = cpuid(0, 0);
        let mut s = Vec::new();
        for w in [b, d, c] {
            s.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&s, b"GenuineIntel");
    }

    #[test]
    fn cpuid_leaf1_claims_fpu_and_fxsr_but_not_sse() {
        let edx = cpuid(1, 0)[3];
        assert_eq!(edx & 1, 1);
        assert_ne!(edx & (1 << 24), 0);
        assert_eq!(edx & (1 << 25), 0, "no SSE");
    }

    #[test]
    fn msr_unknown_raises_gp() {
        let mut cpu = CpuState::reset();
        assert_eq!(rdmsr(&cpu, 0x1B), Err(Exception::GeneralProtection(0)));
        // EFER exists, but LME (bit 8) is not implemented.
        assert_eq!(
            wrmsr(&mut cpu, 0xC000_0080, 1 << 8),
            Err(Exception::GeneralProtection(0))
        );
        assert_eq!(wrmsr(&mut cpu, 0xC000_0080, 1 << 11), Ok(()));
    }

    #[test]
    fn msr_tsc_write_sets_counter() {
        let mut cpu = CpuState::reset();
        cpu.icount = 100;
        wrmsr(&mut cpu, MSR_TSC, 5000).expect("tsc");
        cpu.icount = 150;
        assert_eq!(rdmsr(&cpu, MSR_TSC), Ok(5050));
    }
}
