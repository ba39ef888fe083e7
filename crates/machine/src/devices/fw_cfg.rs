//! QEMU's firmware configuration device (fw_cfg), I/O-port interface, so that
//! SeaBIOS built for QEMU finds the platform description (RAM size, CPU count, the
//! e820 map) the way it does under QEMU. Mapped with base 0x510 over 0x510-0x51B.
//!
//! Register layout (QEMU `docs/specs/fw_cfg.rst`, "Selector Register", "Data
//! Register", x86 I/O port locations):
//! - offset 0 (port 0x510): the 16-bit selector register, write-only. A write picks
//!   the item to read and rewinds the data offset to 0. Reads return `0xFFFF` (all
//!   ones, as an undriven bus), never the selector.
//! - offset 1 (port 0x511): the 8-bit data register. Each read returns the next byte
//!   of the selected item, then 0 past its end; an unknown selector reads as an
//!   empty item, so 0. A wider read is that many byte reads in a row. Writes are
//!   dropped: every item here is read-only (the write channel, selector bit 14, was
//!   deprecated by QEMU and is not modelled).
//! - offsets 4-11 (ports 0x514-0x51B): the DMA address register. Devices on this bus
//!   cannot reach guest memory, so DMA is not offered: the ID item reports only the
//!   traditional interface (bit 0), the DMA ports read as `0xFF` and drop writes, and
//!   firmware falls back to the data register (fw_cfg.rst, "DMA interface": the
//!   guest must check the ID feature bit before using DMA).
//!
//! Invariants:
//! - Items are keyed by the full 16-bit selector, including bit 15 (architecture
//!   specific items); bit 14 (write channel) is ignored on selection.
//! - Files get keys from [`FW_CFG_FILE_FIRST`] upward in the order they are added,
//!   and keep them; the file directory item ([`FW_CFG_FILE_DIR`]) lists them sorted
//!   by name and is rebuilt on every [`FwCfg::add_file`].
//! - A system reset rewinds the selector to 0; the items are platform data and stay.

use std::collections::BTreeMap;

use crate::device::{Device, Nanos};

/// Offset of the 16-bit selector register (port 0x510).
const SELECTOR: u16 = 0;
/// Offset of the 8-bit data register (port 0x511).
const DATA: u16 = 1;

/// Selector bit 14: the (deprecated) write channel; ignored here.
const SELECT_WRITE: u16 = 0x4000;

/// Item 0x0000: the signature, the four bytes "QEMU" (fw_cfg.rst, "Signature").
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
/// Item 0x0001: the little-endian u32 feature bitmap (fw_cfg.rst, "Revision / feature
/// bitmap"): bit 0 traditional interface, bit 1 DMA.
pub const FW_CFG_ID: u16 = 0x0001;
/// Item 0x0003: total guest RAM in bytes, little-endian u64.
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
/// Item 0x0005: the number of CPUs present at boot, little-endian u16.
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
/// Item 0x000E: whether the firmware shows its boot menu, little-endian u16.
pub const FW_CFG_BOOT_MENU: u16 = 0x000E;
/// Item 0x000F: the largest number of CPUs the platform supports, little-endian u16.
pub const FW_CFG_MAX_CPUS: u16 = 0x000F;
/// Item 0x0019: the file directory (fw_cfg.rst, "File Directory").
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// The first selector handed to a named file.
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;
/// One past the last selector a file may get: bit 14 is the write channel.
const FW_CFG_FILE_END: u16 = SELECT_WRITE;

/// The feature bitmap we report: traditional I/O interface only, no DMA.
const FEATURE_TRADITIONAL: u32 = 1;

/// Bytes of a file name in a directory entry, NUL padding included.
const FILE_NAME_LEN: usize = 56;

/// e820 type of usable RAM (ACPI spec, "Address Range Types": AddressRangeMemory).
const E820_RAM: u32 = 1;
/// The end of conventional memory below the EBDA, as SeaBIOS and QEMU lay it out.
const LOW_RAM_END: u64 = 0x9_FC00;
/// The start of extended memory.
const ONE_MIB: u64 = 0x10_0000;
/// Where RAM above the PCI hole starts.
const FOUR_GIB: u64 = 1 << 32;

/// One named file: its key and its name. The data lives in the item map.
struct FileEntry {
    name: String,
    key: u16,
}

/// The fw_cfg device: a store of read-only items behind a selector and a data port.
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<FileEntry>,
    selector: u16,
    offset: usize,
}

/// fw_cfg's saved state (see [`crate::snapshot`]): where the selector and
/// the read offset stand. The items are the machine's configuration, built
/// from the same options on restore; their hash is kept to check that.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FwCfgState {
    selector: u16,
    offset: usize,
    items_hash: u64,
}

impl FwCfg {
    /// A hash of every item and file name.
    fn items_hash(&self) -> u64 {
        let mut h = crate::snapshot::Hasher64::default();
        for (key, data) in &self.items {
            h.update(&key.to_le_bytes());
            h.update(data);
        }
        for f in &self.files {
            h.update(f.name.as_bytes());
            h.update(&f.key.to_le_bytes());
        }
        h.finish()
    }
}

impl Default for FwCfg {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfg {
    /// A device holding only the signature and the feature bitmap.
    pub fn new() -> Self {
        let mut cfg = Self {
            items: BTreeMap::new(),
            files: Vec::new(),
            selector: 0,
            offset: 0,
        };
        cfg.add_item(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        cfg.add_item(FW_CFG_ID, FEATURE_TRADITIONAL.to_le_bytes().to_vec());
        cfg.rebuild_file_dir();
        cfg
    }

    /// The items a PC firmware asks for: RAM size, CPU counts, boot menu off, and the
    /// file `etc/e820` with the RAM map.
    ///
    /// `etc/e820` lists only the RAM ranges (type 1): 0-0x9FC00, 1 MiB up to
    /// `ram_below_4g`, and 4 GiB up by `ram_above_4g` when that is non-zero. Like
    /// QEMU, it leaves the EBDA, the VGA hole and the BIOS area out (SeaBIOS adds
    /// its own reserved entries for those).
    pub fn for_pc(ram_below_4g: u64, ram_above_4g: u64, cpus: u16) -> Self {
        let mut cfg = Self::new();
        let total = ram_below_4g.saturating_add(ram_above_4g);
        cfg.add_item(FW_CFG_RAM_SIZE, total.to_le_bytes().to_vec());
        cfg.add_item(FW_CFG_NB_CPUS, cpus.to_le_bytes().to_vec());
        cfg.add_item(FW_CFG_MAX_CPUS, cpus.to_le_bytes().to_vec());
        cfg.add_item(FW_CFG_BOOT_MENU, 0u16.to_le_bytes().to_vec());
        cfg.add_file("etc/e820", e820_table(ram_below_4g, ram_above_4g));
        cfg
    }

    /// Adds or replaces the item at selector `key`. Replacing the file directory
    /// item by hand is undone by the next [`FwCfg::add_file`].
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key & !SELECT_WRITE, data);
    }

    /// Adds a named file, or replaces the data of the file with that name (it keeps
    /// its key). Names longer than 55 bytes are cut so that the directory entry keeps
    /// its terminating NUL. Once all selectors below 0x4000 are taken, further new
    /// files are dropped.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) {
        let name = truncate_name(name);
        if let Some(file) = self.files.iter().find(|f| f.name == name) {
            let key = file.key;
            self.add_item(key, data);
            self.rebuild_file_dir();
            return;
        }
        let key = u16::try_from(self.files.len())
            .ok()
            .and_then(|n| FW_CFG_FILE_FIRST.checked_add(n))
            .filter(|&k| k < FW_CFG_FILE_END);
        let Some(key) = key else {
            return;
        };
        self.files.push(FileEntry {
            name: name.to_owned(),
            key,
        });
        self.add_item(key, data);
        self.rebuild_file_dir();
    }

    /// Rebuilds the directory item: a big-endian u32 count, then per file a
    /// big-endian u32 size, big-endian u16 selector, u16 reserved and the 56-byte
    /// NUL-padded name, sorted by name (fw_cfg.rst, "File Directory").
    fn rebuild_file_dir(&mut self) {
        let mut sorted: Vec<&FileEntry> = self.files.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut dir = Vec::with_capacity(4 + sorted.len() * (8 + FILE_NAME_LEN));
        dir.extend_from_slice(&(sorted.len() as u32).to_be_bytes());
        for file in sorted {
            let size = self.items.get(&file.key).map_or(0, Vec::len);
            dir.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
            dir.extend_from_slice(&file.key.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut name = [0u8; FILE_NAME_LEN];
            let bytes = file.name.as_bytes();
            name[..bytes.len()].copy_from_slice(bytes);
            dir.extend_from_slice(&name);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selector = key & !SELECT_WRITE;
        self.offset = 0;
    }

    fn read_data_byte(&mut self) -> u8 {
        let byte = self
            .items
            .get(&self.selector)
            .and_then(|item| item.get(self.offset))
            .copied();
        match byte {
            Some(b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }
}

/// Cuts `name` to at most `FILE_NAME_LEN - 1` bytes on a character boundary.
fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(FILE_NAME_LEN - 1);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The `etc/e820` table: packed little-endian {u64 address, u64 length, u32 type}.
fn e820_table(ram_below_4g: u64, ram_above_4g: u64) -> Vec<u8> {
    let ranges = [
        (0, ram_below_4g.min(LOW_RAM_END)),
        (ONE_MIB, ram_below_4g.saturating_sub(ONE_MIB)),
        (FOUR_GIB, ram_above_4g),
    ];
    let mut table = Vec::new();
    for (addr, len) in ranges.into_iter().filter(|&(_, len)| len != 0) {
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&E820_RAM.to_le_bytes());
    }
    table
}

impl FwCfg {
    /// Offset 1 yields one data byte per byte of the access; everything else
    /// (the write-only selector, the unused ports, the DMA register) reads all ones.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
        if offset == DATA {
            for b in data.iter_mut() {
                *b = self.read_data_byte();
            }
        }
    }

    /// A 16-bit (or wider) write at offset 0 selects an item by its low 16 bits.
    /// A byte write there is dropped, the register being 16 bits wide; data and
    /// DMA writes are dropped (no writable items, no DMA).
    pub fn port_write(&mut self, offset: u16, data: &[u8], _now: Nanos) {
        if let (SELECTOR, [lo, hi, ..]) = (offset, data) {
            self.select(u16::from_le_bytes([*lo, *hi]));
        }
    }
}

impl Device for FwCfg {
    fn name(&self) -> &'static str {
        "fw_cfg"
    }

    crate::port_device_methods!();

    fn reset(&mut self) {
        self.select(0);
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        let items_hash = self.items_hash();
        let Self {
            items: _,
            files: _,
            selector,
            offset,
        } = self;
        Ok(crate::snapshot::DeviceState::FwCfg(FwCfgState {
            selector: *selector,
            offset: *offset,
            items_hash,
        }))
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        let crate::snapshot::DeviceState::FwCfg(s) = state else {
            return Err(crate::snapshot::wrong_kind(self.name(), state));
        };
        if s.items_hash != self.items_hash() {
            return Err(crate::snapshot::StateError::Mismatch(
                "fw_cfg: the firmware configuration differs (boot order, boot menu, VGA BIOS, RAM or CPUs)".into(),
            ));
        }
        self.selector = s.selector;
        self.offset = s.offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(cfg: &mut FwCfg, key: u16) {
        cfg.port_write(SELECTOR, &key.to_le_bytes(), 0);
    }

    fn read_bytes(cfg: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                cfg.port_read(DATA, &mut b, 0);
                b[0]
            })
            .collect()
    }

    #[test]
    fn fw_cfg_signature_reads_qemu_byte_by_byte() {
        let mut cfg = FwCfg::new();

        select(&mut cfg, FW_CFG_SIGNATURE);
        let sig = read_bytes(&mut cfg, 4);

        assert_eq!(sig, b"QEMU");
    }

    #[test]
    fn fw_cfg_id_reports_traditional_interface_only() {
        let mut cfg = FwCfg::new();

        select(&mut cfg, FW_CFG_ID);
        let id = read_bytes(&mut cfg, 4);

        assert_eq!(id, [1, 0, 0, 0]);
    }

    #[test]
    fn fw_cfg_read_past_end_gives_zero() {
        let mut cfg = FwCfg::new();
        select(&mut cfg, FW_CFG_SIGNATURE);

        let bytes = read_bytes(&mut cfg, 8);

        assert_eq!(bytes, b"QEMU\0\0\0\0");
    }

    #[test]
    fn fw_cfg_unknown_selector_reads_zero() {
        let mut cfg = FwCfg::new();

        select(&mut cfg, 0x1234);

        assert_eq!(read_bytes(&mut cfg, 2), [0, 0]);
    }

    #[test]
    fn fw_cfg_reselect_rewinds_offset() {
        let mut cfg = FwCfg::new();
        select(&mut cfg, FW_CFG_SIGNATURE);
        read_bytes(&mut cfg, 3);

        select(&mut cfg, FW_CFG_SIGNATURE);

        assert_eq!(read_bytes(&mut cfg, 1), b"Q");
    }

    #[test]
    fn fw_cfg_word_data_read_is_two_byte_reads() {
        let mut cfg = FwCfg::new();
        select(&mut cfg, FW_CFG_SIGNATURE);
        let mut word = [0u8; 2];

        cfg.port_read(DATA, &mut word, 0);

        assert_eq!(&word, b"QE");
        assert_eq!(read_bytes(&mut cfg, 1), b"M");
    }

    #[test]
    fn fw_cfg_selector_and_dma_ports_read_all_ones() {
        let mut cfg = FwCfg::new();
        let mut sel = [0u8; 2];
        let mut dma = [0u8; 4];

        cfg.port_read(SELECTOR, &mut sel, 0);
        cfg.port_read(4, &mut dma, 0);

        assert_eq!(sel, [0xFF, 0xFF]);
        assert_eq!(dma, [0xFF; 4]);
    }

    #[test]
    fn fw_cfg_file_dir_lists_e820_with_size_and_key() {
        let mut cfg = FwCfg::for_pc(16 << 20, 0, 1);

        select(&mut cfg, FW_CFG_FILE_DIR);
        let count = u32::from_be_bytes(read_bytes(&mut cfg, 4).try_into().expect("4"));
        let entry = read_bytes(&mut cfg, 64);

        assert_eq!(count, 1);
        assert_eq!(u32::from_be_bytes(entry[0..4].try_into().expect("4")), 40);
        assert_eq!(
            u16::from_be_bytes(entry[4..6].try_into().expect("2")),
            FW_CFG_FILE_FIRST
        );
        assert_eq!(&entry[8..16], b"etc/e820");
        assert!(entry[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn fw_cfg_file_dir_is_sorted_by_name() {
        let mut cfg = FwCfg::new();
        cfg.add_file("b", vec![1]);
        cfg.add_file("a", vec![1, 2]);

        select(&mut cfg, FW_CFG_FILE_DIR);
        let dir = read_bytes(&mut cfg, 4 + 2 * 64);

        assert_eq!(dir[3], 2);
        assert_eq!((dir[4 + 3], dir[4 + 5], dir[4 + 8]), (2, 0x21, b'a'));
        assert_eq!((dir[68 + 3], dir[68 + 5], dir[68 + 8]), (1, 0x20, b'b'));
    }

    #[test]
    fn fw_cfg_e820_lists_ram_ranges() {
        let mut cfg = FwCfg::for_pc(0xC000_0000, 1 << 30, 2);

        select(&mut cfg, FW_CFG_FILE_FIRST);
        let table = read_bytes(&mut cfg, 60);

        let entry = |i: usize| {
            let e = &table[i * 20..i * 20 + 20];
            (
                u64::from_le_bytes(e[0..8].try_into().expect("8")),
                u64::from_le_bytes(e[8..16].try_into().expect("8")),
                u32::from_le_bytes(e[16..20].try_into().expect("4")),
            )
        };
        assert_eq!(entry(0), (0, 0x9_FC00, 1));
        assert_eq!(entry(1), (0x10_0000, 0xC000_0000 - 0x10_0000, 1));
        assert_eq!(entry(2), (1 << 32, 1 << 30, 1));
    }

    #[test]
    fn fw_cfg_pc_items_report_ram_and_cpus() {
        let mut cfg = FwCfg::for_pc(0xC000_0000, 1 << 30, 2);

        select(&mut cfg, FW_CFG_RAM_SIZE);
        let ram = read_bytes(&mut cfg, 8);
        select(&mut cfg, FW_CFG_NB_CPUS);
        let cpus = read_bytes(&mut cfg, 2);

        assert_eq!(ram, (0xC000_0000u64 + (1 << 30)).to_le_bytes());
        assert_eq!(cpus, [2, 0]);
    }

    #[test]
    fn fw_cfg_data_write_is_ignored() {
        let mut cfg = FwCfg::new();
        select(&mut cfg, FW_CFG_SIGNATURE);

        cfg.port_write(DATA, &[0x55], 0);

        assert_eq!(read_bytes(&mut cfg, 4), b"QEMU");
    }
}
