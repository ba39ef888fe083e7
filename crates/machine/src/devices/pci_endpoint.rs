//! A PCI endpoint function's configuration space (PCI Local Bus 3.0 ch. 6),
//! as a device behind the host bridge keeps it: the type 0 header, BARs that
//! size and relocate themselves through their writable masks, the capability
//! list with an MSI capability (64-bit address, one vector), and the command
//! bits that gate decoding, bus mastering and INTx.
//!
//! The host bridge runs configuration cycles on it and then maps or unmaps
//! the device's BAR regions on the buses ([`PciEndpoint::bar_mapping`]); the
//! device reads its MSI message and INTx gate from it when it interrupts.

use crate::device::Msi;

/// Configuration-space offsets of the type 0 header.
pub mod reg {
    /// Vendor ID.
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID.
    pub const DEVICE_ID: usize = 0x02;
    /// Command.
    pub const COMMAND: usize = 0x04;
    /// Status.
    pub const STATUS: usize = 0x06;
    /// Revision ID.
    pub const REVISION: usize = 0x08;
    /// Class code (3 bytes).
    pub const CLASS: usize = 0x09;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0E;
    /// The first BAR (six follow, 4 bytes apart).
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID.
    pub const SUBSYSTEM_VENDOR: usize = 0x2C;
    /// Subsystem ID.
    pub const SUBSYSTEM_ID: usize = 0x2E;
    /// Capabilities pointer.
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line (firmware scratch).
    pub const INTERRUPT_LINE: usize = 0x3C;
    /// Interrupt pin (1 = INTA#).
    pub const INTERRUPT_PIN: usize = 0x3D;
}

/// Command register bits.
pub mod command {
    /// I/O space decoding.
    pub const IO: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus mastering (DMA, MSI).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx emulation disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
mod status {
    pub const INTERRUPT: u16 = 1 << 3;
    pub const CAPABILITIES: u16 = 1 << 4;
}

/// Where the MSI capability sits.
const MSI_CAP: usize = 0x40;
/// The MSI capability's ID.
const CAP_ID_MSI: u8 = 0x05;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory,
}

/// A BAR as the function declares it: its kind and size (a power of two; at
/// least 16 bytes for memory, 4 for I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarDef {
    /// I/O or memory.
    pub kind: BarKind,
    /// Bytes.
    pub size: u64,
}

/// A BAR's current placement, when its space's decoding is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMapping {
    /// I/O or memory.
    pub kind: BarKind,
    /// First address.
    pub base: u64,
    /// Bytes.
    pub size: u64,
}

/// The identity of a function.
#[derive(Clone, Copy, Debug)]
pub struct EndpointId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (base, sub-class, programming interface: 24 bits).
    pub class: u32,
    /// Subsystem vendor and ID.
    pub subsystem: (u16, u16),
    /// Interrupt pin (1 = INTA#, 0 = none).
    pub pin: u8,
}

/// An endpoint's configuration space.
#[derive(Clone, Debug)]
pub struct PciEndpoint {
    data: [u8; 256],
    writable: [u8; 256],
    write_one_clear: [u8; 256],
    bars: [Option<BarDef>; 6],
    msi: bool,
}

impl PciEndpoint {
    /// A function with `id`, the BARs `bars` (index, definition) and, with
    /// `msi`, an MSI capability.
    pub fn new(id: EndpointId, bars: &[(usize, BarDef)], msi: bool) -> Self {
        let mut e = Self {
            data: [0; 256],
            writable: [0; 256],
            write_one_clear: [0; 256],
            bars: [None; 6],
            msi,
        };
        e.define(reg::VENDOR_ID, 2, id.vendor.into(), 0);
        e.define(reg::DEVICE_ID, 2, id.device.into(), 0);
        let cmd_writable =
            command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        e.define(reg::COMMAND, 2, 0, cmd_writable.into());
        let st = if msi { status::CAPABILITIES } else { 0 };
        e.define(reg::STATUS, 2, st.into(), 0);
        // Status bits 15:11 (parity, aborts) are write-1-to-clear; none is
        // ever set here, but a write of ones must not set them.
        e.define(reg::REVISION, 1, id.revision.into(), 0);
        e.define(reg::CLASS, 3, id.class, 0);
        e.define(reg::HEADER_TYPE, 1, 0, 0);
        e.define(reg::SUBSYSTEM_VENDOR, 2, id.subsystem.0.into(), 0);
        e.define(reg::SUBSYSTEM_ID, 2, id.subsystem.1.into(), 0);
        e.define(reg::INTERRUPT_LINE, 1, 0, 0xFF);
        e.define(reg::INTERRUPT_PIN, 1, id.pin.into(), 0);
        for &(i, def) in bars {
            let (low, min) = match def.kind {
                BarKind::Io => (1u32, 4u64),
                BarKind::Memory => (0u32, 16u64),
            };
            let size = def.size.max(min).next_power_of_two();
            // The address bits below the size read as 0 whatever is written:
            // writing all ones and reading back gives the size.
            let type_bits = if def.kind == BarKind::Io { 3 } else { 0xF };
            let writable = !(size as u32 - 1) & !type_bits;
            e.define(reg::BAR0 + 4 * i, 4, low, writable);
            e.bars[i] = Some(BarDef { size, ..def });
        }
        if msi {
            e.define(reg::CAP_PTR, 1, MSI_CAP as u32, 0);
            // ID, next (none), message control: enable (bit 0, RW),
            // multiple message enable (6:4, RW, one vector), 64-bit (bit 7).
            e.define(MSI_CAP, 2, u32::from(CAP_ID_MSI), 0);
            e.define(MSI_CAP + 2, 2, 1 << 7, 0x0071);
            e.define(MSI_CAP + 4, 4, 0, 0xFFFF_FFFC);
            e.define(MSI_CAP + 8, 4, 0, 0xFFFF_FFFF);
            e.define(MSI_CAP + 12, 2, 0, 0xFFFF);
        }
        e
    }

    fn define(&mut self, offset: usize, width: usize, reset: u32, writable: u32) {
        for (i, (v, w)) in (offset..)
            .zip(reset.to_le_bytes().into_iter().zip(writable.to_le_bytes()))
            .take(width)
        {
            self.data[i] = v;
            self.writable[i] = w;
        }
    }

    /// A configuration read of byte `reg`.
    pub fn read(&self, reg: u8) -> u8 {
        self.data[usize::from(reg)]
    }

    /// A configuration write of byte `reg`: writable bits take `value`.
    pub fn write(&mut self, reg: u8, value: u8) {
        let i = usize::from(reg);
        let w = self.writable[i];
        let merged = (self.data[i] & !w) | (value & w);
        self.data[i] = merged & !(value & self.write_one_clear[i]);
    }

    fn word(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.data[at], self.data[at + 1]])
    }

    fn dword(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.data[at],
            self.data[at + 1],
            self.data[at + 2],
            self.data[at + 3],
        ])
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.word(reg::COMMAND)
    }

    /// Whether the function may master the bus (DMA, MSI writes).
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// BAR `i`'s placement, if it exists, its space is enabled in the
    /// command register and it is not at 0 (unprogrammed).
    pub fn bar_mapping(&self, i: usize) -> Option<BarMapping> {
        let def = self.bars.get(i).copied().flatten()?;
        let raw = u64::from(self.dword(reg::BAR0 + 4 * i));
        let (enabled, base) = match def.kind {
            BarKind::Io => (self.command() & command::IO != 0, raw & !3),
            BarKind::Memory => (self.command() & command::MEMORY != 0, raw & !0xF),
        };
        let fits = match def.kind {
            BarKind::Io => base + def.size <= 0x1_0000,
            BarKind::Memory => base + def.size <= 1 << 32,
        };
        (enabled && base != 0 && fits).then_some(BarMapping {
            kind: def.kind,
            base,
            size: def.size,
        })
    }

    /// The BARs the function has.
    pub fn bar_indices(&self) -> impl Iterator<Item = usize> + '_ {
        (0..6).filter(|&i| self.bars[i].is_some())
    }

    /// The MSI message, when MSI is enabled.
    pub fn msi_message(&self) -> Option<Msi> {
        if !self.msi || self.word(MSI_CAP + 2) & 1 == 0 {
            return None;
        }
        let addr = u64::from(self.dword(MSI_CAP + 4)) | (u64::from(self.dword(MSI_CAP + 8)) << 32);
        Some(Msi {
            addr,
            data: u32::from(self.word(MSI_CAP + 12)),
        })
    }

    /// Whether INTx is gated off (command bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// The interrupt pin (1 = INTA#), 0 for none.
    pub fn pin(&self) -> u8 {
        self.data[reg::INTERRUPT_PIN]
    }

    /// Sets the status register's interrupt bit (the function's INTx
    /// request, whether or not INTx is gated).
    pub fn set_interrupt_status(&mut self, on: bool) {
        let st = status::INTERRUPT.to_le_bytes()[0];
        if on {
            self.data[reg::STATUS] |= st;
        } else {
            self.data[reg::STATUS] &= !st;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edu_like() -> PciEndpoint {
        PciEndpoint::new(
            EndpointId {
                vendor: 0x1234,
                device: 0x11E8,
                revision: 0x10,
                class: 0x00FF00,
                subsystem: (0x1AF4, 0x1100),
                pin: 1,
            },
            &[
                (
                    0,
                    BarDef {
                        kind: BarKind::Memory,
                        size: 1 << 20,
                    },
                ),
                (
                    1,
                    BarDef {
                        kind: BarKind::Io,
                        size: 32,
                    },
                ),
            ],
            true,
        )
    }

    fn write32(e: &mut PciEndpoint, at: usize, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            e.write((at + i) as u8, b);
        }
    }

    fn read32(e: &PciEndpoint, at: usize) -> u32 {
        e.dword(at)
    }

    #[test]
    fn bar_sizing_by_writing_all_ones() {
        // PCI 3.0 §6.2.5.1: write all ones, read back, mask the type bits,
        // invert and add one: the size.
        let mut e = edu_like();
        write32(&mut e, 0x10, u32::MAX);
        assert_eq!(read32(&e, 0x10), 0xFFF0_0000);
        write32(&mut e, 0x14, u32::MAX);
        assert_eq!(
            read32(&e, 0x14),
            0xFFFF_FFE1,
            "I/O BAR: bit 0 set, 32 bytes"
        );
        // Unimplemented BARs read 0 and ignore writes.
        write32(&mut e, 0x18, u32::MAX);
        assert_eq!(read32(&e, 0x18), 0);
    }

    #[test]
    fn bar_maps_only_when_decoding_is_on_and_programmed() {
        let mut e = edu_like();
        write32(&mut e, 0x10, 0xFEA0_0000);
        assert_eq!(e.bar_mapping(0), None, "memory decoding off");
        write32(&mut e, 0x04, u32::from(command::MEMORY));
        assert_eq!(
            e.bar_mapping(0),
            Some(BarMapping {
                kind: BarKind::Memory,
                base: 0xFEA0_0000,
                size: 1 << 20
            })
        );
        write32(&mut e, 0x14, 0xC000);
        assert_eq!(e.bar_mapping(1), None, "I/O decoding off");
    }

    #[test]
    fn msi_capability_lists_and_enables() {
        let mut e = edu_like();
        assert_ne!(e.read(0x06) & 0x10, 0, "capabilities list");
        assert_eq!(e.read(0x34), 0x40);
        assert_eq!(e.read(0x40), 5, "MSI");
        assert_eq!(e.read(0x41), 0, "last capability");
        assert_eq!(e.msi_message(), None);
        write32(&mut e, 0x44, 0xFEE0_1003);
        write32(&mut e, 0x4C, 0x4041);
        e.write(0x42, 1);
        assert_eq!(
            e.msi_message(),
            Some(Msi {
                addr: 0xFEE0_1000,
                data: 0x4041
            })
        );
        assert_eq!(e.read(0x42) & 0x80, 0x80, "64-bit capable, read-only");
    }
}
