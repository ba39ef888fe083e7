//! A PCI endpoint function's configuration space (PCI Local Bus 3.0 ch. 6),
//! as a device behind the host bridge keeps it: the type 0 header, BARs that
//! size and relocate themselves through their writable masks, the capability
//! list with an MSI capability (64-bit address, one vector), and the command
//! bits that gate decoding, bus mastering and INTx.
//!
//! The host bridge runs configuration cycles on it and then maps or unmaps
//! the device's BAR regions on the buses ([`PciEndpoint::bar_mapping`]); the
//! device reads its MSI message and INTx gate from it when it interrupts.
//!
//! MSI-X (PCI 3.0 §6.8.2), when a function declares it
//! ([`PciEndpoint::with_msix`]): the capability names the table and the
//! pending-bit array (PBA) inside one of the function's BARs; the device
//! hands accesses there to [`PciEndpoint::msix_read`]/[`PciEndpoint::msix_write`].
//! Each table entry holds a message and a mask bit (set at reset). A vector
//! the device signals ([`PciEndpoint::msix_signal`]) while it or the whole
//! function is masked sets its pending bit instead, and is sent when the mask
//! clears. While MSI-X is enabled, MSI and INTx are off.

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
/// Where the MSI-X capability sits (after MSI's 14 bytes, if any).
const MSIX_CAP_AFTER_MSI: usize = 0x50;
/// The MSI-X capability's ID.
const CAP_ID_MSIX: u8 = 0x11;

/// Where a function's MSI-X table and PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixLayout {
    /// Vectors (1 to 2048).
    pub vectors: u16,
    /// The BAR holding both.
    pub bar: u8,
    /// The table's offset in the BAR (8-byte aligned; 16 bytes an entry).
    pub table: u32,
    /// The PBA's offset in the BAR (8-byte aligned; a bit a vector).
    pub pba: u32,
}

/// A function's MSI-X state: where its capability is, the layout, the table
/// (address low, address high, data, vector control) and the pending bits.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Msix {
    cap: usize,
    layout: MsixLayout,
    table: Vec<[u32; 4]>,
    pending: Vec<u64>,
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory,
}

/// A BAR as the function declares it: its kind and size (a power of two; at
/// least 16 bytes for memory, 4 for I/O).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BarDef {
    /// I/O or memory.
    pub kind: BarKind,
    /// Bytes.
    pub size: u64,
}

/// A BAR's current placement, when its space's decoding is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PciEndpoint {
    #[serde(with = "crate::snapshot::byte_array")]
    data: [u8; 256],
    #[serde(with = "crate::snapshot::byte_array")]
    writable: [u8; 256],
    #[serde(with = "crate::snapshot::byte_array")]
    write_one_clear: [u8; 256],
    bars: [Option<BarDef>; 6],
    msi: bool,
    msix: Option<Msix>,
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
            msix: None,
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

    /// Adds a device-specific register at `offset` (past the header): its
    /// reset value and writable bits.
    pub fn with_register(mut self, offset: usize, width: usize, reset: u32, writable: u32) -> Self {
        self.define(offset, width, reset, writable);
        self
    }

    /// Adds an MSI-X capability with `layout` (after MSI's, if any).
    pub fn with_msix(mut self, layout: MsixLayout) -> Self {
        let vectors = layout.vectors.clamp(1, 2048);
        let cap = if self.msi {
            self.define(MSI_CAP + 1, 1, MSIX_CAP_AFTER_MSI as u32, 0);
            MSIX_CAP_AFTER_MSI
        } else {
            self.define(reg::CAP_PTR, 1, MSI_CAP as u32, 0);
            MSI_CAP
        };
        let st = self.word(reg::STATUS) | status::CAPABILITIES;
        self.define(reg::STATUS, 2, st.into(), 0);
        // ID, next (none); message control: table size N-1 (RO), function
        // mask (14), enable (15); table and PBA offset/BIR (RO).
        self.define(cap, 2, u32::from(CAP_ID_MSIX), 0);
        self.define(cap + 2, 2, u32::from(vectors - 1), 0xC000);
        self.define(cap + 4, 4, layout.table | u32::from(layout.bar & 7), 0);
        self.define(cap + 8, 4, layout.pba | u32::from(layout.bar & 7), 0);
        self.msix = Some(Msix {
            cap,
            layout: MsixLayout { vectors, ..layout },
            table: vec![[0, 0, 0, 1]; usize::from(vectors)],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
        });
        self
    }

    /// Whether MSI-X is enabled.
    pub fn msix_enabled(&self) -> bool {
        self.msix
            .as_ref()
            .is_some_and(|m| self.word(m.cap + 2) & 0x8000 != 0)
    }

    fn msix_function_masked(&self) -> bool {
        self.msix
            .as_ref()
            .is_some_and(|m| self.word(m.cap + 2) & 0x4000 != 0)
    }

    /// The device signals MSI-X `vector`: its message, if the vector and the
    /// function are unmasked (and bus mastering is on); otherwise the vector's
    /// pending bit is set. None too when MSI-X is off (the caller uses INTx).
    pub fn msix_signal(&mut self, vector: u16) -> Option<Msi> {
        if !self.msix_enabled() {
            return None;
        }
        let blocked = self.msix_function_masked() || !self.bus_master();
        let m = self.msix.as_mut()?;
        let v = usize::from(vector);
        let entry = *m.table.get(v)?;
        if blocked || entry[3] & 1 != 0 {
            m.pending[v / 64] |= 1 << (v % 64);
            return None;
        }
        Some(Msi {
            addr: u64::from(entry[0] & !3) | (u64::from(entry[1]) << 32),
            data: entry[2],
        })
    }

    /// The pending vectors that may go now (after a mask cleared): their
    /// messages, the pending bits cleared.
    pub fn msix_take_unmasked_pending(&mut self) -> Vec<Msi> {
        if !self.msix_enabled() || self.msix_function_masked() || !self.bus_master() {
            return Vec::new();
        }
        let Some(m) = self.msix.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (v, entry) in m.table.iter().enumerate() {
            let bit = 1u64 << (v % 64);
            if m.pending[v / 64] & bit != 0 && entry[3] & 1 == 0 {
                m.pending[v / 64] &= !bit;
                out.push(Msi {
                    addr: u64::from(entry[0] & !3) | (u64::from(entry[1]) << 32),
                    data: entry[2],
                });
            }
        }
        out
    }

    /// Which MSI-X structure `offset` of BAR `bar` falls in: (is the table,
    /// byte offset into it).
    fn msix_locate(&self, bar: u8, offset: u64) -> Option<(bool, usize)> {
        let m = self.msix.as_ref()?;
        if bar != m.layout.bar {
            return None;
        }
        let n = u64::from(m.layout.vectors);
        let (t, p) = (u64::from(m.layout.table), u64::from(m.layout.pba));
        if (t..t + 16 * n).contains(&offset) {
            return Some((true, (offset - t) as usize));
        }
        if (p..p + 8 * n.div_ceil(64)).contains(&offset) {
            return Some((false, (offset - p) as usize));
        }
        None
    }

    /// A read of BAR `bar` at `offset` that hits the MSI-X table or PBA:
    /// fills `data` and returns true; false if it is not theirs.
    pub fn msix_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> bool {
        let Some((table, at)) = self.msix_locate(bar, offset) else {
            return false;
        };
        let Some(m) = self.msix.as_ref() else {
            return false;
        };
        for (i, b) in data.iter_mut().enumerate() {
            let at = at + i;
            *b = if table {
                m.table
                    .get(at / 16)
                    .map_or(0, |e| e[(at % 16) / 4].to_le_bytes()[at % 4])
            } else {
                m.pending.get(at / 8).map_or(0, |w| w.to_le_bytes()[at % 8])
            };
        }
        true
    }

    /// A write of BAR `bar` at `offset` that hits the MSI-X table (the PBA is
    /// read-only): stores it and returns the messages of pending vectors it
    /// unmasked, or None if the access is not the table's or the PBA's.
    pub fn msix_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Option<Vec<Msi>> {
        let (table, at) = self.msix_locate(bar, offset)?;
        if !table {
            return Some(Vec::new());
        }
        let m = self.msix.as_mut()?;
        for (i, &b) in data.iter().enumerate() {
            let at = at + i;
            let Some(e) = m.table.get_mut(at / 16) else {
                continue;
            };
            let word = (at % 16) / 4;
            let mut bytes = e[word].to_le_bytes();
            bytes[at % 4] = b;
            let mut v = u32::from_le_bytes(bytes);
            match word {
                0 => v &= !3,
                3 => v &= 1,
                _ => {}
            }
            e[word] = v;
        }
        Some(self.msix_take_unmasked_pending())
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

    /// The MSI message, when MSI is enabled (and MSI-X is not).
    pub fn msi_message(&self) -> Option<Msi> {
        if !self.msi || self.word(MSI_CAP + 2) & 1 == 0 || self.msix_enabled() {
            return None;
        }
        let addr = u64::from(self.dword(MSI_CAP + 4)) | (u64::from(self.dword(MSI_CAP + 8)) << 32);
        Some(Msi {
            addr,
            data: u32::from(self.word(MSI_CAP + 12)),
        })
    }

    /// Whether INTx is gated off (command bit 10, or MSI-X on).
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0 || self.msix_enabled()
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

    fn with_msix() -> PciEndpoint {
        edu_like().with_msix(MsixLayout {
            vectors: 3,
            bar: 0,
            table: 0x2000,
            pba: 0x3000,
        })
    }

    #[test]
    fn msix_capability_chains_after_msi() {
        let e = with_msix();
        assert_eq!(e.read(0x41), 0x50, "MSI's next");
        assert_eq!(e.read(0x50), 0x11, "MSI-X");
        assert_eq!(e.read(0x51), 0, "last");
        assert_eq!(u16::from_le_bytes([e.read(0x52), e.read(0x53)]), 2, "N - 1");
        assert_eq!(read32(&e, 0x54), 0x2000, "table at 0x2000 of BAR 0");
        assert_eq!(read32(&e, 0x58), 0x3000, "PBA at 0x3000 of BAR 0");
    }

    #[test]
    fn msix_entries_reset_masked_and_pend_until_unmasked() {
        let mut e = with_msix();
        write32(
            &mut e,
            0x04,
            u32::from(command::MEMORY | command::BUS_MASTER),
        );
        e.write(0x53, 0x80); // enable
        assert!(e.msix_enabled());
        assert!(e.intx_disabled(), "INTx off with MSI-X");
        let mut b = [0u8; 4];
        assert!(e.msix_read(0, 0x2000 + 16 + 12, &mut b));
        assert_eq!(u32::from_le_bytes(b), 1, "masked at reset");
        // Program vector 1, still masked: a signal pends.
        e.msix_write(0, 0x2010, &0xFEE0_1003u32.to_le_bytes());
        e.msix_write(0, 0x2018, &0x0000_4051u32.to_le_bytes());
        assert_eq!(e.msix_signal(1), None);
        assert!(e.msix_read(0, 0x3000, &mut b));
        assert_eq!(b[0], 0b10, "pending bit 1");
        // Unmasking it sends the pending message and clears the bit.
        let sent = e.msix_write(0, 0x201C, &0u32.to_le_bytes());
        assert_eq!(
            sent,
            Some(vec![Msi {
                addr: 0xFEE0_1000,
                data: 0x4051
            }])
        );
        assert!(e.msix_read(0, 0x3000, &mut b));
        assert_eq!(b[0], 0);
        // Unmasked: straight through. The function mask holds it again.
        assert_eq!(
            e.msix_signal(1),
            Some(Msi {
                addr: 0xFEE0_1000,
                data: 0x4051
            })
        );
        e.write(0x53, 0xC0);
        assert_eq!(e.msix_signal(1), None);
        e.write(0x53, 0x80);
        assert_eq!(e.msix_take_unmasked_pending().len(), 1);
        // Outside the table and PBA: not MSI-X's.
        assert!(!e.msix_read(0, 0x1000, &mut b));
        assert_eq!(e.msix_write(0, 0x4000, &[0]), None);
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
