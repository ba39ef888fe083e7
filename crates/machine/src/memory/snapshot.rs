//! Save and restore of guest memory (snapshots): RAM as runs of pages that
//! are not all zero, each run an LZ4 block, and the memory map's switches
//! (A20, PAM, SMRAM). ROM is not saved: it is the firmware image the
//! machine is built from, which the snapshot identifies by hash
//! (`Machine::shape`).
//!
//! A restore drops every code mark and queued invalidation and moves both
//! epochs, so every cache built over the old contents (the engines' units,
//! a CPU's fast TLB) is rebuilt from the restored bytes.

use super::PhysMemory;
use crate::snapshot::Lz4;
use serde::{Deserialize, Serialize};

/// Bytes per page.
const PAGE: usize = 4096;
/// The most pages one run holds (1 MiB), so no block is larger than that.
const RUN_PAGES: usize = 256;

/// Guest RAM, sparse and compressed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RamImage {
    /// The RAM size in bytes.
    pub size: u64,
    /// The runs of pages that are not all zero, in address order; every
    /// other page is zero.
    pub runs: Vec<RamRun>,
}

/// Consecutive RAM pages that are not all zero.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RamRun {
    /// The first page's number (RAM offset / 4096).
    pub first_page: u64,
    /// The pages' bytes (a multiple of 4096 of them).
    pub block: Lz4,
}

impl RamImage {
    /// Bytes of RAM the runs hold before compression.
    pub fn stored_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.block.len).sum()
    }
}

/// The memory map's switches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryMapState {
    a20_mask: u64,
    pam: [u8; 16],
    smram_open: bool,
    /// All cached code was to be dropped (the map changed) and the engines
    /// had not yet done it; moot after a restore, kept for exactness.
    flush_all: bool,
}

/// Whether a page is all zero.
fn is_zero(page: &[u8]) -> bool {
    // Eight-byte words ORed in blocks: vectorized, and no early exit per byte.
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

impl PhysMemory {
    /// RAM as runs of non-zero pages, each compressed.
    pub fn save_ram(&self) -> RamImage {
        let ram: &[u8] = &self.ram;
        let mut runs = Vec::new();
        let pages = ram.len() / PAGE;
        let mut p = 0;
        while p < pages {
            if is_zero(&ram[p * PAGE..(p + 1) * PAGE]) {
                p += 1;
                continue;
            }
            let first = p;
            while p < pages && p - first < RUN_PAGES && !is_zero(&ram[p * PAGE..(p + 1) * PAGE]) {
                p += 1;
            }
            runs.push(RamRun {
                first_page: first as u64,
                block: Lz4::compress(&ram[first * PAGE..p * PAGE]),
            });
        }
        // A RAM size that is not a whole number of pages: its tail, as a run
        // of its own.
        let tail = pages * PAGE;
        if tail < ram.len() && !is_zero(&ram[tail..]) {
            runs.push(RamRun {
                first_page: pages as u64,
                block: Lz4::compress(&ram[tail..]),
            });
        }
        RamImage {
            size: ram.len() as u64,
            runs,
        }
    }

    /// Puts RAM back as `image` has it. Refuses an image of another size,
    /// or runs that overlap, leave RAM or do not decompress (the RAM is then
    /// partly restored: the caller discards the machine).
    pub fn restore_ram(&mut self, image: &RamImage) -> Result<(), String> {
        if image.size != self.ram.len() as u64 {
            return Err(format!(
                "RAM is {} MiB here and {} MiB in the snapshot",
                self.ram.len() >> 20,
                image.size >> 20
            ));
        }
        let ram: &mut [u8] = &mut self.ram;
        let mut next = 0usize;
        for run in &image.runs {
            let start = usize::try_from(run.first_page)
                .ok()
                .and_then(|p| p.checked_mul(PAGE))
                .filter(|&s| s >= next)
                .ok_or("RAM runs overlap or are out of order")?;
            let end = usize::try_from(run.block.len)
                .ok()
                .and_then(|l| start.checked_add(l))
                .filter(|&e| e <= ram.len())
                .ok_or("a RAM run lies past the end of RAM")?;
            zero_nonzero(&mut ram[next..start]);
            if !run.block.decompress_into(&mut ram[start..end]) {
                return Err(format!("the RAM run at page {} is damaged", run.first_page));
            }
            next = end;
        }
        let len = ram.len();
        zero_nonzero(&mut ram[next..len]);
        self.forget_code();
        Ok(())
    }

    /// The memory map's switches, for a snapshot.
    pub fn save_map(&self) -> MemoryMapState {
        MemoryMapState {
            a20_mask: self.a20_mask,
            pam: self.pam,
            smram_open: self.smram_open,
            flush_all: self.flush_all,
        }
    }

    /// Puts the memory map's switches back.
    pub fn restore_map(&mut self, s: &MemoryMapState) {
        self.a20_mask = s.a20_mask;
        self.pam = s.pam;
        self.smram_open = s.smram_open;
        self.flush_all = s.flush_all;
        self.forget_code();
    }

    /// Drops every code mark, code-byte map and queued invalidation, and
    /// moves both epochs: whatever was cached over the old contents is
    /// stale, and the engines that cached it are replaced by fresh ones.
    pub fn forget_code(&mut self) {
        self.code_pages.fill(0);
        self.code_bytes.clear();
        self.dirty_code_pages.clear();
        self.code_write_pending = false;
        self.code_maps_epoch += 1;
        self.host_epoch += 1;
    }

    /// A hash of the ROM image, if there is one (`(length, hash)`).
    pub fn rom_identity(&self) -> Option<(u64, u64)> {
        (!self.rom.is_empty()).then(|| (self.rom.len() as u64, crate::snapshot::hash64(&self.rom)))
    }
}

/// Zeroes the pages of `ram` that are not zero already, so that pages never
/// touched stay unbacked on the host.
fn zero_nonzero(ram: &mut [u8]) {
    for page in ram.chunks_mut(PAGE) {
        if !is_zero(page) {
            page.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::addr::GuestPhys;
    use crate::memory::{MemoryLayout, PhysMemory};

    #[test]
    fn ram_round_trips_sparse_and_a_restore_clears_what_the_image_lacks() {
        let mut m = PhysMemory::new(4 << 20, MemoryLayout::Flat).expect("map");
        m.write_bytes(GuestPhys(0x1234), b"hello");
        m.write_bytes(GuestPhys(0x3F_FFF0), &[7; 16]);
        for p in 0..300u64 {
            m.write_u8(GuestPhys(0x10_0000 + p * 4096), p as u8 | 1);
        }
        let image = m.save_ram();
        // 1 page, 300 pages in runs of at most 256, and the last page.
        assert_eq!(image.runs.len(), 4, "{:?}", image.runs);
        assert_eq!(image.stored_bytes(), 302 * 4096);
        let mut other = PhysMemory::new(4 << 20, MemoryLayout::Flat).expect("map");
        other.write_bytes(GuestPhys(0x8000), b"stale");
        other.restore_ram(&image).expect("restore");
        let mut a = vec![0u8; 4 << 20];
        let mut b = vec![0u8; 4 << 20];
        m.read_bytes(GuestPhys(0), &mut a);
        other.read_bytes(GuestPhys(0), &mut b);
        assert!(a == b, "RAM differs after the round trip");
        assert_eq!(other.read_u8(GuestPhys(0x8000)), 0, "stale byte cleared");
    }

    #[test]
    fn a_damaged_or_misfit_ram_image_is_refused() {
        let mut m = PhysMemory::new(1 << 20, MemoryLayout::Flat).expect("map");
        m.write_bytes(GuestPhys(0x100), &[1, 2, 3]);
        let mut image = m.save_ram();
        let mut bigger = PhysMemory::new(2 << 20, MemoryLayout::Flat).expect("map");
        assert!(bigger
            .restore_ram(&image)
            .unwrap_err()
            .contains("RAM is 2 MiB"));
        image.runs[0].block.data.truncate(3);
        assert!(m.restore_ram(&image).unwrap_err().contains("damaged"));
        image.runs[0].first_page = u64::MAX;
        assert!(m.restore_ram(&image).is_err());
    }
}
