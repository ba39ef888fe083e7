//! Segmentation and memory access: offset -> linear (limit and type checks, with
//! the hidden descriptor cache) -> physical -> machine memory.
//!
//! Real mode performs the limit check too, as a 386 does: a word at offset 0xFFFF
//! of a 64 KiB segment raises #GP(0), or #SS(0) when the segment is SS (SDM vol. 3A
//! §20.1.3, "segment wraparound"). Paging arrives with protected mode; until then
//! linear addresses are physical (the A20 gate applies in [`x86bt_machine`]).

use crate::exception::Exception;
use crate::state::{cr0, seg_attr, sreg, CpuState};
use x86bt_machine::{GuestPhys, Machine};

/// The kind of access, for segment type checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Exec,
}

/// The fault a segment violation raises for segment register `s`.
#[inline]
pub fn seg_fault(s: usize) -> Exception {
    if s == sreg::SS {
        Exception::StackFault(0)
    } else {
        Exception::GeneralProtection(0)
    }
}

/// Checks an access of `size` bytes at `off` in segment `s` and returns its linear
/// address.
#[inline]
pub fn seg_linear(
    cpu: &CpuState,
    s: usize,
    off: u64,
    size: u32,
    acc: Access,
) -> Result<u64, Exception> {
    let seg = &cpu.seg[s];
    let last = off.wrapping_add(u64::from(size) - 1);
    let attrs = seg.attrs;
    if attrs & (seg_attr::DC | seg_attr::CODE) == seg_attr::DC {
        // Expand-down data: valid offsets are limit+1 ..= 0xFFFF or 0xFFFFFFFF.
        let upper: u64 = if attrs & seg_attr::DB != 0 {
            0xFFFF_FFFF
        } else {
            0xFFFF
        };
        if off <= u64::from(seg.limit) || last > upper || last < off {
            return Err(seg_fault(s));
        }
    } else if last > u64::from(seg.limit) || last < off {
        return Err(seg_fault(s));
    }
    if cpu.cr0 & cr0::PE != 0 {
        check_type(attrs, s, acc)?;
    }
    Ok(seg.base.wrapping_add(off) & 0xFFFF_FFFF)
}

#[cold]
fn check_type(attrs: u16, s: usize, acc: Access) -> Result<(), Exception> {
    if attrs & seg_attr::P == 0 {
        return Err(seg_fault(s));
    }
    let code = attrs & seg_attr::CODE != 0;
    let rw = attrs & seg_attr::RW != 0;
    let ok = match acc {
        Access::Read => !code || rw,
        Access::Write => !code && rw,
        Access::Exec => code,
    };
    if ok {
        Ok(())
    } else {
        Err(seg_fault(s))
    }
}

/// Linear to physical. Paging is not modelled yet, so this is the identity.
#[inline]
pub fn translate(_cpu: &CpuState, lin: u64, _acc: Access) -> Result<GuestPhys, Exception> {
    Ok(GuestPhys(lin))
}

/// Reads `size` (1, 2, 4 or 8) bytes at linear `lin`.
#[inline]
pub fn read_lin(cpu: &CpuState, m: &Machine, lin: u64, size: u32) -> Result<u64, Exception> {
    let p = translate(cpu, lin, Access::Read)?;
    Ok(match size {
        1 => u64::from(m.mem.read_u8(p)),
        2 => u64::from(u16::from_le_bytes(m.mem.read::<2>(p))),
        4 => u64::from(u32::from_le_bytes(m.mem.read::<4>(p))),
        _ => u64::from_le_bytes(m.mem.read::<8>(p)),
    })
}

/// Writes the low `size` bytes of `value` at linear `lin`.
#[inline]
pub fn write_lin(
    cpu: &CpuState,
    m: &mut Machine,
    lin: u64,
    size: u32,
    value: u64,
) -> Result<(), Exception> {
    let p = translate(cpu, lin, Access::Write)?;
    match size {
        1 => m.mem.write_u8(p, value as u8),
        2 => m.mem.write::<2>(p, (value as u16).to_le_bytes()),
        4 => m.mem.write::<4>(p, (value as u32).to_le_bytes()),
        _ => m.mem.write::<8>(p, value.to_le_bytes()),
    }
    Ok(())
}

/// Reads `size` bytes at `s:off`.
#[inline]
pub fn read(cpu: &CpuState, m: &Machine, s: usize, off: u64, size: u32) -> Result<u64, Exception> {
    let lin = seg_linear(cpu, s, off, size, Access::Read)?;
    read_lin(cpu, m, lin, size)
}

/// Writes `size` bytes at `s:off`.
#[inline]
pub fn write(
    cpu: &CpuState,
    m: &mut Machine,
    s: usize,
    off: u64,
    size: u32,
    value: u64,
) -> Result<(), Exception> {
    let lin = seg_linear(cpu, s, off, size, Access::Write)?;
    write_lin(cpu, m, lin, size, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Segment;

    #[test]
    fn seg_word_at_ffff_real_mode_raises_gp() {
        let cpu = CpuState::reset();
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0xFFFF, 2, Access::Read),
            Err(Exception::GeneralProtection(0))
        );
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0xFFFE, 2, Access::Read),
            Ok(0xFFFE)
        );
    }

    #[test]
    fn seg_word_at_ffff_on_stack_raises_ss() {
        let cpu = CpuState::reset();
        assert_eq!(
            seg_linear(&cpu, sreg::SS, 0xFFFF, 2, Access::Write),
            Err(Exception::StackFault(0))
        );
    }

    #[test]
    fn seg_unreal_limit_allows_high_offsets() {
        let mut cpu = CpuState::reset();
        cpu.seg[sreg::DS] = Segment {
            limit: 0xFFFF_FFFF,
            ..Segment::real(0)
        };
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0x10_0000, 4, Access::Read),
            Ok(0x10_0000)
        );
    }

    #[test]
    fn seg_expand_down_rejects_offsets_at_or_below_limit() {
        let mut cpu = CpuState::reset();
        cpu.seg[sreg::DS] = Segment {
            attrs: seg_attr::P | seg_attr::S | seg_attr::RW | seg_attr::DC,
            limit: 0x0FFF,
            ..Segment::real(0)
        };
        assert!(seg_linear(&cpu, sreg::DS, 0x0FFF, 1, Access::Read).is_err());
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0x1000, 1, Access::Read),
            Ok(0x1000)
        );
        assert!(seg_linear(&cpu, sreg::DS, 0xFFFF, 2, Access::Read).is_err());
    }
}
