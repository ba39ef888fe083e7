//! The CPU's operating mode, as far as decoding and the meaning of a prepared
//! instruction depend on it: the key both engines' caches are keyed by.
//!
//! A unit decoded in one mode is never run in another: the mode fixes the code
//! size (16, 32 or 64 bits, and so how bytes decode), the address and operand
//! defaults, where the instruction pointer wraps, whether linear addresses are
//! 32 or 64 bits wide, and which privilege checks apply (real mode has none, V86
//! has IOPL-sensitive instructions, long mode has 64-bit descriptors).

use crate::state::{cr0, flags, seg_attr, sreg, CpuState};
use x86bt_decoder::Bitness;

/// EFER.LMA: long mode is active (IA-32e paging on).
pub const EFER_LMA: u64 = 1 << 10;

/// The operating mode (SDM vol. 3A §2.2 and §5.2 for IA-32e's sub-modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum CpuMode {
    /// Real-address mode (CR0.PE clear).
    Real = 0,
    /// Virtual-8086 mode (EFLAGS.VM in protected mode).
    V86 = 1,
    /// Protected mode, 16-bit code segment.
    Prot16 = 2,
    /// Protected mode, 32-bit code segment.
    Prot32 = 3,
    /// IA-32e compatibility mode, 16-bit code segment.
    Compat16 = 4,
    /// IA-32e compatibility mode, 32-bit code segment.
    Compat32 = 5,
    /// IA-32e 64-bit mode (CS.L set).
    Long64 = 6,
}

impl CpuMode {
    /// The mode `cpu` is in.
    #[inline]
    pub fn of(cpu: &CpuState) -> Self {
        if cpu.cr0 & cr0::PE == 0 {
            return Self::Real;
        }
        let attrs = cpu.seg[sreg::CS].attrs;
        let d = attrs & seg_attr::DB != 0;
        if cpu.efer & EFER_LMA != 0 {
            if attrs & seg_attr::L != 0 {
                Self::Long64
            } else if d {
                Self::Compat32
            } else {
                Self::Compat16
            }
        } else if cpu.rflags & flags::VM != 0 {
            Self::V86
        } else if d {
            Self::Prot32
        } else {
            Self::Prot16
        }
    }

    /// The cache key: a small number, distinct per mode.
    #[inline]
    pub const fn key(self) -> u32 {
        self as u32
    }

    /// The code size bytes decode for.
    #[inline]
    pub const fn bitness(self) -> Bitness {
        match self {
            Self::Real | Self::V86 | Self::Prot16 | Self::Compat16 => Bitness::B16,
            Self::Prot32 | Self::Compat32 => Bitness::B32,
            Self::Long64 => Bitness::B64,
        }
    }

    /// The code size in bits (16, 32, 64).
    #[inline]
    pub const fn bits(self) -> u32 {
        self.bitness().bits()
    }

    /// Where the instruction pointer wraps: IP at 16 bits, EIP at 32, RIP never
    /// (SDM vol. 1 §3.5; 64-bit code faults on a non-canonical RIP instead).
    #[inline]
    pub const fn ip_mask(self) -> u64 {
        match self.bitness() {
            Bitness::B16 => 0xFFFF,
            Bitness::B32 => 0xFFFF_FFFF,
            Bitness::B64 => u64::MAX,
        }
    }

    /// The default address size in bytes.
    #[inline]
    pub const fn address_bytes(self) -> u32 {
        self.bits() / 8
    }

    /// The default operand size in bytes (64-bit mode defaults to 32-bit
    /// operands; REX.W selects 64).
    #[inline]
    pub const fn operand_bytes(self) -> u32 {
        match self.bitness() {
            Bitness::B16 => 2,
            _ => 4,
        }
    }

    /// The stack width in bytes, given SS.B: 64-bit mode always uses RSP.
    #[inline]
    pub const fn stack_bytes(self, ss_b: bool) -> u32 {
        match self {
            Self::Long64 => 8,
            _ if ss_b => 4,
            _ => 2,
        }
    }

    /// Whether segment limits and bases (except FS and GS) are ignored and
    /// linear addresses are 64 bits wide.
    #[inline]
    pub const fn is_64(self) -> bool {
        matches!(self, Self::Long64)
    }

    /// Whether IA-32e mode is active (64-bit or compatibility mode).
    #[inline]
    pub const fn is_ia32e(self) -> bool {
        matches!(self, Self::Compat16 | Self::Compat32 | Self::Long64)
    }

    /// Whether protected-mode checks apply (everything but real mode).
    #[inline]
    pub const fn protected(self) -> bool {
        !matches!(self, Self::Real)
    }

    /// The mask of a linear address: 32 bits outside 64-bit mode (compatibility
    /// mode too: its segment arithmetic is 32-bit), 64 inside.
    #[inline]
    pub const fn linear_mask(self) -> u64 {
        if self.is_64() {
            u64::MAX
        } else {
            0xFFFF_FFFF
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Segment;

    #[test]
    fn mode_of_reset_cpu_is_real_16_bit() {
        let cpu = CpuState::reset();
        assert_eq!(CpuMode::of(&cpu), CpuMode::Real);
        assert_eq!(CpuMode::Real.bitness(), Bitness::B16);
        assert_eq!(CpuMode::Real.ip_mask(), 0xFFFF);
    }

    #[test]
    fn mode_of_long_mode_follows_cs_l_and_d() {
        let mut cpu = CpuState::reset();
        cpu.cr0 |= cr0::PE | cr0::PG;
        cpu.efer = EFER_LMA | (1 << 8);
        let code = seg_attr::P | seg_attr::S | seg_attr::CODE;
        cpu.seg[sreg::CS] = Segment {
            attrs: code | seg_attr::L,
            ..Segment::default()
        };
        assert_eq!(CpuMode::of(&cpu), CpuMode::Long64);
        cpu.seg[sreg::CS].attrs = code | seg_attr::DB;
        assert_eq!(CpuMode::of(&cpu), CpuMode::Compat32);
        cpu.seg[sreg::CS].attrs = code;
        assert_eq!(CpuMode::of(&cpu), CpuMode::Compat16);
        // VM is ignored in IA-32e mode (it cannot be set there).
        cpu.rflags |= flags::VM;
        assert_eq!(CpuMode::of(&cpu), CpuMode::Compat16);
    }

    #[test]
    fn mode_of_protected_mode_follows_vm_and_cs_d() {
        let mut cpu = CpuState::reset();
        cpu.cr0 |= cr0::PE;
        cpu.seg[sreg::CS].attrs |= seg_attr::DB;
        assert_eq!(CpuMode::of(&cpu), CpuMode::Prot32);
        cpu.rflags |= flags::VM;
        assert_eq!(CpuMode::of(&cpu), CpuMode::V86);
        assert_eq!(CpuMode::V86.bitness(), Bitness::B16);
    }

    #[test]
    fn mode_widths_follow_the_sdm() {
        assert_eq!(CpuMode::Long64.operand_bytes(), 4);
        assert_eq!(CpuMode::Long64.address_bytes(), 8);
        assert_eq!(CpuMode::Long64.stack_bytes(false), 8);
        assert_eq!(CpuMode::Compat32.linear_mask(), 0xFFFF_FFFF);
        assert_eq!(CpuMode::Prot16.stack_bytes(true), 4);
    }
}
