//! What the CPU says about itself: CPUID leaves and the model-specific registers.
//!
//! The feature set is honest: a bit is reported only when the instruction or
//! register it advertises is implemented. This is an x86-64-v2 CPU: long mode
//! with NX, SYSCALL, RDTSCP, LAHF/SAHF and CMPXCHG16B; the x87, MMX, SSE through
//! SSE4.2, POPCNT, FXSAVE and XSAVE (x87 and SSE state); PAE, PSE, PGE; the PAT
//! and MTRR MSRs (they hold what is written and change no memory type). Not
//! reported: a local APIC, AVX and later, PCID, FSGSBASE, MCE/MCA.
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
    | (1 << 11) // SEP (SYSENTER/SYSEXIT and their MSRs)
    | (1 << 12) // MTRR (the MTRR MSRs hold what is written; no effect on memory)
    | (1 << 13) // PGE (global pages)
    | (1 << 15) // CMOV
    | (1 << 16) // PAT (IA32_PAT holds what is written; no effect on memory)
    | (1 << 24); // FXSR (FXSAVE/FXRSTOR, CR4.OSFXSR)

/// CPUID.1:EDX bits of the SIMD instruction sets: MMX (23), SSE (25), SSE2 (26)
/// and CLFSH (19).
const SIMD_EDX: u32 = (1 << 19) | (1 << 23) | (1 << 25) | (1 << 26);
/// CPUID.1:ECX: SSE3 (0), SSSE3 (9), SSE4.1 (19), SSE4.2 (20), POPCNT (23),
/// XSAVE (26).
const SIMD_ECX: u32 = 1 | (1 << 9) | (1 << 19) | (1 << 20) | (1 << 23) | (1 << 26);
/// CPUID.1:ECX: CX16 (CMPXCHG16B).
const FEATURES_ECX: u32 = 1 << 13;
/// CPUID.1:ECX bit 27, OSXSAVE: a copy of CR4.OSXSAVE.
const OSXSAVE: u32 = 1 << 27;

/// CPUID.80000001h:EDX: SYSCALL (11), NX (20), 1 GiB pages (26), RDTSCP (27),
/// LM (29).
const EXT_FEATURES_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29);
/// CPUID.80000001h:ECX: LAHF/SAHF in 64-bit mode (0).
const EXT_FEATURES_ECX: u32 = 1;

/// The largest basic leaf: 0xD (XSAVE).
const MAX_LEAF: u32 = 0xD;
/// The largest extended leaf: 0x80000008 (address sizes).
const MAX_EXT_LEAF: u32 = 0x8000_0008;
/// The brand string of leaves 0x80000002-4 (48 bytes, NUL-padded).
const BRAND: &[u8; 48] =
    b"x86bt virtual x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// XCR0 bits this CPU supports: x87 (0) and SSE (1).
pub const XCR0_SUPPORTED: u64 = 3;
/// The size of the XSAVE area for the x87 and SSE components: the 512-byte
/// legacy region and the 64-byte header.
pub const XSAVE_SIZE: u32 = 576;

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = 0x10;
/// IA32_SYSENTER_CS.
pub const MSR_SYSENTER_CS: u32 = 0x174;
/// IA32_EFER.
pub const MSR_EFER: u32 = 0xC000_0080;
/// STAR, LSTAR, CSTAR, FMASK (SYSCALL/SYSRET).
pub const MSR_STAR: u32 = 0xC000_0081;
/// LSTAR.
pub const MSR_LSTAR: u32 = 0xC000_0082;
/// CSTAR.
pub const MSR_CSTAR: u32 = 0xC000_0083;
/// FMASK.
pub const MSR_FMASK: u32 = 0xC000_0084;
/// FS.base.
pub const MSR_FS_BASE: u32 = 0xC000_0100;
/// GS.base.
pub const MSR_GS_BASE: u32 = 0xC000_0101;
/// KernelGSbase (SWAPGS).
pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// TSC_AUX (RDTSCP).
pub const MSR_TSC_AUX: u32 = 0xC000_0103;
/// IA32_PAT.
pub const MSR_PAT: u32 = 0x277;
/// IA32_MISC_ENABLE.
pub const MSR_MISC_ENABLE: u32 = 0x1A0;
/// IA32_MTRRCAP.
const MSR_MTRRCAP: u32 = 0xFE;
/// IA32_MTRR_DEF_TYPE.
const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
/// The fixed-range MTRRs, in the order they are kept.
const MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C, 0x26D, 0x26E, 0x26F,
];
/// The EFER bits this CPU implements: SCE, LME, LMA (read-only) and NXE.
const EFER_VALID: u64 = crate::mmu::efer::SCE | crate::mmu::efer::LME | crate::mmu::efer::NXE;

/// The MSRs of long mode and the memory-type registers: plain storage, with
/// the checks WRMSR makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Msrs {
    /// STAR, LSTAR, CSTAR, FMASK.
    pub star: u64,
    /// LSTAR: the 64-bit SYSCALL entry.
    pub lstar: u64,
    /// CSTAR: the compatibility-mode SYSCALL entry.
    pub cstar: u64,
    /// FMASK: RFLAGS bits SYSCALL clears.
    pub fmask: u64,
    /// The GS base SWAPGS exchanges with GS's.
    pub kernel_gs_base: u64,
    /// TSC_AUX, which RDTSCP returns in ECX.
    pub tsc_aux: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// The fixed-range MTRRs ([`MTRR_FIXED`] order).
    pub mtrr_fixed: [u64; 11],
    /// The variable-range MTRRs: PHYSBASE0, PHYSMASK0, ... PHYSMASK7.
    pub mtrr_var: [u64; 16],
}

impl Default for Msrs {
    /// The values at RESET (SDM vol. 3A Table 9-1 and §11.12.4 for the PAT).
    fn default() -> Self {
        Self {
            star: 0,
            lstar: 0,
            cstar: 0,
            fmask: 0,
            kernel_gs_base: 0,
            tsc_aux: 0,
            pat: 0x0007_0406_0007_0406,
            // Fast strings enabled, as firmware leaves it.
            misc_enable: 1,
            mtrr_def_type: 0,
            mtrr_fixed: [0; 11],
            mtrr_var: [0; 16],
        }
    }
}

/// Executes CPUID for leaf `eax` (sub-leaf `ecx`) on `cpu`: returns EAX, EBX,
/// ECX, EDX.
pub fn cpuid(cpu: &CpuState, leaf: u32, subleaf: u32) -> [u32; 4] {
    let osxsave = if cpu.cr4 & crate::mmu::cr4::OSXSAVE != 0 {
        OSXSAVE
    } else {
        0
    };
    let (simd_ecx, simd_edx) = (SIMD_ECX | osxsave, SIMD_EDX);
    let basic1 = [
        SIGNATURE,
        // CLFLUSH line size 8 (x 8 bytes = 64), one logical processor.
        (8 << 8) | (1 << 16),
        FEATURES_ECX | simd_ecx,
        FEATURES_EDX | simd_edx,
    ];
    match leaf {
        0 => {
            let v = b"GenuineIntel";
            let word = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
            [MAX_LEAF, word(0), word(8), word(4)]
        }
        1 => basic1,
        0xD => match subleaf {
            // Supported XCR0 bits, the size for the enabled ones, the size for all.
            0 => [XCR0_SUPPORTED as u32, XSAVE_SIZE, XSAVE_SIZE, 0],
            // XSAVEOPT (bit 0).
            1 => [1, 0, 0, 0],
            _ => [0; 4],
        },
        l if l <= MAX_LEAF => [0; 4],
        // Intel: leaves above the maximum return the highest basic leaf's data.
        l if l < 0x8000_0000 => [0; 4],
        0x8000_0000 => [MAX_EXT_LEAF, 0, 0, 0],
        0x8000_0001 => [0, 0, EXT_FEATURES_ECX, EXT_FEATURES_EDX],
        0x8000_0002..=0x8000_0004 => {
            let at = 16 * (leaf - 0x8000_0002) as usize;
            let w = |i: usize| {
                let b = &BRAND[at + 4 * i..at + 4 * i + 4];
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            };
            [w(0), w(1), w(2), w(3)]
        }
        // Physical address bits 40, linear 48.
        0x8000_0008 => [(48 << 8) | crate::mmu::MAXPHYADDR, 0, 0, 0],
        _ => [0; 4],
    }
}

/// CPUID as a CPU with a local APIC reports it (`apic`: its initial APIC ID,
/// whether IA32_APIC_BASE enables it, and the CPU count). Leaf 1 adds the
/// initial APIC ID in EBX[31:24], APIC (EDX bit 9, clear while the APIC is
/// globally disabled, as Intel CPUs report it), x2APIC (ECX bit 21) and
/// TSC-deadline (ECX bit 24); with more than one CPU, HTT (EDX bit 28) and the
/// addressable IDs per package in EBX[23:16]. Leaf 0xB describes the
/// topology: one package of `cpus` cores with one thread each, and the x2APIC
/// ID in EDX. Without an APIC, [`cpuid`].
pub fn cpuid_with_apic(
    cpu: &CpuState,
    leaf: u32,
    subleaf: u32,
    apic: Option<(u32, bool, u32)>,
) -> [u32; 4] {
    let mut r = cpuid(cpu, leaf, subleaf);
    let Some((id, enabled, cpus)) = apic else {
        return r;
    };
    let cpus = cpus.max(1);
    match leaf {
        1 => {
            r[1] |= id << 24;
            r[2] |= (1 << 21) | (1 << 24);
            if enabled {
                r[3] |= 1 << 9;
            }
            if cpus > 1 {
                let ids = cpus.next_power_of_two().min(128);
                r[1] = (r[1] & !0x00FF_0000) | (ids << 16);
                r[3] |= 1 << 28;
            }
        }
        0xB => {
            // Level type in ECX[15:8]: 1 SMT, 2 core, 0 invalid (the end).
            // EAX: how far to shift the x2APIC ID right for the next level's ID.
            let core_shift = cpus.next_power_of_two().trailing_zeros();
            r = match subleaf {
                0 => [0, 1, 1 << 8, id],
                1 => [core_shift, cpus, 1 | (2 << 8), id],
                n => [0, 0, n & 0xFF, id],
            };
        }
        _ => {}
    }
    r
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        MSR_STAR => Ok(cpu.msr.star),
        MSR_LSTAR => Ok(cpu.msr.lstar),
        MSR_CSTAR => Ok(cpu.msr.cstar),
        MSR_FMASK => Ok(cpu.msr.fmask),
        MSR_FS_BASE => Ok(cpu.seg[crate::state::sreg::FS].base),
        MSR_GS_BASE => Ok(cpu.seg[crate::state::sreg::GS].base),
        MSR_KERNEL_GS_BASE => Ok(cpu.msr.kernel_gs_base),
        MSR_TSC_AUX => Ok(cpu.msr.tsc_aux),
        MSR_PAT => Ok(cpu.msr.pat),
        MSR_MISC_ENABLE => Ok(cpu.msr.misc_enable),
        // Eight variable ranges, fixed ranges, write-combining; no SMRR.
        MSR_MTRRCAP => Ok(8 | (1 << 8) | (1 << 10)),
        MSR_MTRR_DEF_TYPE => Ok(cpu.msr.mtrr_def_type),
        0x200..=0x20F => Ok(cpu.msr.mtrr_var[(msr - 0x200) as usize]),
        m if MTRR_FIXED.contains(&m) => Ok(cpu.msr.mtrr_fixed[fixed_index(m)]),
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
        MSR_EFER if value & !(EFER_VALID | crate::mmu::efer::LMA) == 0 => {
            use crate::mmu::efer;
            // LME cannot change while paging is on (SDM vol. 3A §9.8.5); LMA
            // is read-only.
            if (cpu.efer ^ value) & efer::LME != 0 && cpu.cr0 & crate::state::cr0::PG != 0 {
                return Err(Exception::GeneralProtection(0));
            }
            let value = (value & EFER_VALID) | (cpu.efer & efer::LMA);
            if (cpu.efer ^ value) & efer::NXE != 0 {
                cpu.tlb.flush(false);
            }
            cpu.efer = value;
            Ok(())
        }
        MSR_STAR => {
            cpu.msr.star = value;
            Ok(())
        }
        MSR_LSTAR | MSR_CSTAR | MSR_FS_BASE | MSR_GS_BASE | MSR_KERNEL_GS_BASE
            if !crate::mmu::canonical(value) =>
        {
            Err(Exception::GeneralProtection(0))
        }
        MSR_LSTAR => {
            cpu.msr.lstar = value;
            Ok(())
        }
        MSR_CSTAR => {
            cpu.msr.cstar = value;
            Ok(())
        }
        MSR_FMASK => {
            cpu.msr.fmask = value & 0xFFFF_FFFF;
            Ok(())
        }
        MSR_FS_BASE => {
            cpu.seg[crate::state::sreg::FS].base = value;
            Ok(())
        }
        MSR_GS_BASE => {
            cpu.seg[crate::state::sreg::GS].base = value;
            Ok(())
        }
        MSR_KERNEL_GS_BASE => {
            cpu.msr.kernel_gs_base = value;
            Ok(())
        }
        MSR_TSC_AUX if value >> 32 == 0 => {
            cpu.msr.tsc_aux = value;
            Ok(())
        }
        // Each PAT entry must be a defined memory type (0, 1, 4, 5, 6, 7).
        MSR_PAT if (0..8).all(|i| matches!((value >> (8 * i)) & 0xFF, 0 | 1 | 4..=7)) => {
            cpu.msr.pat = value;
            Ok(())
        }
        // Writable: fast strings (0), and the bits kernels toggle (limit CPUID
        // maxval 22, XD disable 34 must stay clear as NX is reported).
        MSR_MISC_ENABLE if (value ^ cpu.msr.misc_enable) & !((1 << 0) | (1 << 22)) == 0 => {
            cpu.msr.misc_enable = value;
            Ok(())
        }
        MSR_MTRR_DEF_TYPE if value & !0xCFF == 0 && mtrr_type_ok(value & 0xFF) => {
            cpu.msr.mtrr_def_type = value;
            Ok(())
        }
        0x200..=0x20F if mtrr_var_ok(msr, value) => {
            cpu.msr.mtrr_var[(msr - 0x200) as usize] = value;
            Ok(())
        }
        m if MTRR_FIXED.contains(&m) && (0..8).all(|i| mtrr_type_ok((value >> (8 * i)) & 0xFF)) => {
            cpu.msr.mtrr_fixed[fixed_index(m)] = value;
            Ok(())
        }
        _ => Err(Exception::GeneralProtection(0)),
    }
}

fn fixed_index(msr: u32) -> usize {
    MTRR_FIXED.iter().position(|&m| m == msr).unwrap_or(0)
}

/// A defined MTRR memory type: UC, WC, WT, WP, WB (SDM vol. 3A Table 11-8).
fn mtrr_type_ok(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// A variable-range MTRR value: PHYSBASE has a type in bits 7:0 and bits
/// 11:8 reserved; PHYSMASK has V in bit 11 and bits 10:0 reserved; both have
/// bits above MAXPHYADDR reserved.
fn mtrr_var_ok(msr: u32, value: u64) -> bool {
    let high = value >> crate::mmu::MAXPHYADDR != 0;
    let ok = if msr & 1 == 0 {
        value & 0xF00 == 0 && mtrr_type_ok(value & 0xFF)
    } else {
        value & 0x7FF == 0
    };
    ok && !high
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
        let [_, b, c, d] = cpuid(&CpuState::reset(), 0, 0);
        let mut s = Vec::new();
        for w in [b, d, c] {
            s.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&s, b"GenuineIntel");
    }

    #[test]
    fn cpuid_leaf1_claims_x86_64_v2_and_no_apic() {
        let [_, _, ecx, edx] = cpuid(&CpuState::reset(), 1, 0);
        // FPU, CX8, CMOV, MMX, FXSR, SSE, SSE2 (SDM vol. 2A Table 3-11).
        for bit in [0, 8, 15, 23, 24, 25, 26] {
            assert_ne!(edx & (1 << bit), 0, "EDX bit {bit}");
        }
        assert_eq!(edx & (1 << 9), 0, "no APIC");
        // SSE3, SSSE3, CX16, SSE4.1, SSE4.2, POPCNT (Table 3-10); no AVX (28).
        for bit in [0, 9, 13, 19, 20, 23] {
            assert_ne!(ecx & (1 << bit), 0, "ECX bit {bit}");
        }
        assert_eq!(ecx & (1 << 28), 0, "no AVX");
        let ext = cpuid(&CpuState::reset(), 0x8000_0001, 0);
        assert_ne!(ext[3] & (1 << 29), 0, "long mode");
        assert_ne!(ext[2] & 1, 0, "LAHF in 64-bit mode");
    }

    #[test]
    fn msr_unknown_raises_gp() {
        let mut cpu = CpuState::reset();
        assert_eq!(rdmsr(&cpu, 0x1B), Err(Exception::GeneralProtection(0)));
        // EFER exists; bit 1 is reserved (SDM vol. 3A Table 2-1 IA32_EFER).
        assert_eq!(
            wrmsr(&mut cpu, 0xC000_0080, 1 << 1),
            Err(Exception::GeneralProtection(0))
        );
        assert_eq!(wrmsr(&mut cpu, 0xC000_0080, 1 << 11), Ok(()));
        // LME may not change while paging is on (SDM vol. 3A §9.8.5).
        cpu.cr0 |= crate::state::cr0::PE | crate::state::cr0::PG;
        assert_eq!(
            wrmsr(&mut cpu, 0xC000_0080, (1 << 11) | (1 << 8)),
            Err(Exception::GeneralProtection(0))
        );
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
