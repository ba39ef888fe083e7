//! What the CPU says about itself: CPUID leaves and the model-specific registers.
//!
//! The feature set is honest: a bit is reported only when the instruction or
//! register it advertises is implemented: the x87 and FXSAVE/FXRSTOR are; no SSE,
//! no local APIC, no SYSENTER, no MTRRs, no PAT, no long mode.

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

/// RDMSR. Unknown MSRs raise #GP(0), never read as zero.
pub fn rdmsr(cpu: &CpuState, msr: u32) -> Result<u64, Exception> {
    match msr {
        MSR_TSC => Ok(tsc(cpu)),
        0x174..=0x176 => Ok(cpu.sysenter[(msr - MSR_SYSENTER_CS) as usize]),
        MSR_EFER => Ok(cpu.efer),
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

#[cfg(test)]
mod tests {
    use super::*;

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
