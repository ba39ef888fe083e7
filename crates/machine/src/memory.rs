//! Guest-physical memory: one anonymous `memmap2` mapping for RAM, a read-only ROM at
//! the top of 4 GiB with its PC alias below 1 MiB, the legacy holes, and the A20 gate.
//!
//! Invariants:
//! - Every write to a page whose code bit is set (CPU store, loader, DMA) is
//!   checked against the page's code-byte map: the bytes cached units were
//!   decoded from. A write that touches one goes through
//!   [`PhysMemory::note_code_write`]: the page joins the dirty list and
//!   `code_write_pending` is raised, so the engines drop their cached units for it
//!   before running anything decoded from it again. A write to other bytes of the
//!   page (data kept beside code) changes no cached unit and invalidates nothing,
//!   so a loop that stores into its own page keeps its units.
//! - Reads of unmapped space return all ones; writes to ROM or unmapped space are
//!   dropped, as on a PC bus.
//! - `fast_end` bounds a prefix of the address space that is plain RAM, so the CPU's
//!   hot path needs one compare before touching the mapping.

use crate::addr::{GuestPhys, PAGE_SHIFT};
use crate::error::MachineError;
use memmap2::MmapMut;
use std::collections::HashMap;

mod snapshot;
pub use snapshot::{MemoryMapState, RamImage, RamRun};

/// Where the next [`PhysMemory`]'s `host_epoch` starts: each memory counts
/// from its own base, so a CPU state that kept host pointers of one memory
/// (its fast TLB) never finds its epoch equal to another's and drops them.
fn next_epoch_base() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1 << 32, Ordering::Relaxed)
}

/// A bit per byte of a 4 KiB page, and a word of zeros after it, so that a
/// 16-bit read at any byte of the map stays inside it (translated code reads
/// the map that way, [`PhysMemory::code_map`]).
type CodeBytes = [u64; 65];

/// A hasher for RAM page numbers: one multiply (Fibonacci hashing). The keys
/// are small dense integers the guest cannot choose freely, and the map is
/// looked up on every store to a page holding code, where SipHash would cost
/// more than the rest of the check.
#[derive(Default, Clone, Copy)]
struct PageHasher(u64);

impl std::hash::Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type PageMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PageHasher>>;

/// Start of the legacy VGA window (unmapped here until a VGA device exists).
const VGA_START: u64 = 0xA_0000;
/// Start of the option-ROM and BIOS window governed by the PAM registers.
const OPTROM_START: u64 = 0xC_0000;
/// Start of the BIOS alias window below 1 MiB.
const BIOS_ALIAS_START: u64 = 0xE_0000;
/// End of the first megabyte.
const ONE_MIB: u64 = 0x10_0000;
/// The highest RAM below 4 GiB; the rest of RAM is mapped from 4 GiB up, leaving
/// room for PCI and the ROM, as on a PC.
const LOW_RAM_MAX: u64 = 0xC000_0000;
/// 4 GiB.
const FOUR_GIB: u64 = 1 << 32;
/// The largest RAM size we accept, in MiB.
pub const MAX_RAM_MIB: u64 = 64 * 1024;

/// How the physical address space is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLayout {
    /// A PC: legacy VGA hole at 0xA0000, BIOS alias at 0xE0000, ROM below 4 GiB,
    /// RAM past 3 GiB moved above 4 GiB.
    Pc,
    /// RAM from address 0 with no holes and no ROM (single-instruction tests).
    Flat,
}

/// Guest-physical memory.
pub struct PhysMemory {
    ram: MmapMut,
    /// RAM mapped below 4 GiB (from address 0).
    low_ram: u64,
    layout: MemoryLayout,
    rom: Vec<u8>,
    rom_base: u64,
    a20_mask: u64,
    fast_end: u64,
    code_pages: Vec<u64>,
    /// Per RAM page with its code bit set: which of its 4096 bytes cached units
    /// were decoded from (a bit per byte). A page without an entry counts as
    /// all code.
    code_bytes: PageMap<Box<CodeBytes>>,
    dirty_code_pages: Vec<u64>,
    /// Raised when a code-byte map is freed (see [`PhysMemory::code_map`]).
    code_maps_epoch: u64,
    /// Raised when a page holding cached code was written; the run loop clears it
    /// after invalidating.
    pub code_write_pending: bool,
    /// PAM mode per 16 KiB chunk of 0xC0000-0xFFFFF: bit 0 reads RAM, bit 1 writes
    /// RAM (i440FX datasheet §3.2.18, PAM0-PAM6).
    pam: [u8; 16],
    smram_open: bool,
    flush_all: bool,
    /// Counts the events after which a host pointer handed out by
    /// [`PhysMemory::host_page`] may no longer be used as it was: a page newly
    /// marked as code (its writes must now be seen), the A20 gate, PAM or SMRAM
    /// changing the map.
    host_epoch: u64,
}

impl PhysMemory {
    /// Maps `ram_bytes` of zeroed guest RAM.
    pub fn new(ram_bytes: u64, layout: MemoryLayout) -> Result<Self, MachineError> {
        let mib = ram_bytes >> 20;
        if ram_bytes == 0 || mib > MAX_RAM_MIB {
            return Err(MachineError::RamSize {
                mib,
                max: MAX_RAM_MIB,
            });
        }
        let len = usize::try_from(ram_bytes).map_err(|_| MachineError::RamSize {
            mib,
            max: MAX_RAM_MIB,
        })?;
        let ram = MmapMut::map_anon(len).map_err(|source| MachineError::RamMap {
            bytes: ram_bytes,
            source,
        })?;
        let low_ram = match layout {
            MemoryLayout::Pc => ram_bytes.min(LOW_RAM_MAX),
            MemoryLayout::Flat => ram_bytes,
        };
        let pages = ram_bytes.div_ceil(1 << PAGE_SHIFT);
        let mut mem = Self {
            ram,
            low_ram,
            layout,
            rom: Vec::new(),
            rom_base: FOUR_GIB,
            a20_mask: u64::MAX,
            fast_end: 0,
            code_pages: vec![0; pages.div_ceil(64) as usize],
            code_bytes: PageMap::default(),
            dirty_code_pages: Vec::new(),
            code_maps_epoch: 0,
            code_write_pending: false,
            pam: [0; 16],
            smram_open: false,
            flush_all: false,
            host_epoch: next_epoch_base(),
        };
        mem.fast_end = match layout {
            MemoryLayout::Pc => low_ram.min(VGA_START),
            MemoryLayout::Flat => low_ram,
        };
        Ok(mem)
    }

    /// Maps a BIOS image at the top of 4 GiB, and its last 128 KiB (or all of a
    /// smaller image) at the top of the first megabyte.
    pub fn map_rom(&mut self, image: Vec<u8>) -> Result<(), MachineError> {
        let len = image.len();
        if !(0x1_0000..=0x100_0000).contains(&len) || !len.is_multiple_of(0x1_0000) {
            return Err(MachineError::RomSize { len });
        }
        self.rom_base = FOUR_GIB - len as u64;
        self.rom = image;
        Ok(())
    }

    /// Total guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram.len() as u64
    }

    /// RAM mapped below 4 GiB, in bytes (it starts at address 0).
    pub fn ram_below_4g(&self) -> u64 {
        self.low_ram
    }

    /// RAM mapped from 4 GiB upwards, in bytes.
    pub fn ram_above_4g(&self) -> u64 {
        self.ram_size() - self.low_ram
    }

    /// The layout this memory was built with.
    pub fn layout(&self) -> MemoryLayout {
        self.layout
    }

    /// Opens or closes the A20 gate. Closed, address bit 20 reads as zero, so the
    /// second megabyte aliases the first as on an 8086.
    pub fn set_a20(&mut self, enabled: bool) {
        let mask = if enabled { u64::MAX } else { !(1u64 << 20) };
        if mask != self.a20_mask {
            self.a20_mask = mask;
            self.host_epoch += 1;
        }
    }

    /// The mask that the A20 gate applies to every physical address.
    pub fn a20_mask(&self) -> u64 {
        self.a20_mask
    }

    /// The end of the plain-RAM prefix of the address space (see the module docs).
    pub fn fast_end(&self) -> u64 {
        self.fast_end
    }

    /// Applies the i440FX PAM registers (config 0x59-0x5F): PAM0 bits 5:4 govern
    /// 0xF0000-0xFFFFF; PAM1-PAM6 govern 0xC0000-0xEFFFF in 16 KiB halves (bits 1:0
    /// the lower, 5:4 the upper). Cached code from the region is dropped.
    pub fn set_pam(&mut self, regs: [u8; 7]) {
        for (chunk, mode) in self.pam.iter_mut().enumerate() {
            *mode = if chunk >= 12 {
                (regs[0] >> 4) & 3
            } else {
                let r = regs[1 + chunk / 2];
                if chunk % 2 == 0 {
                    r & 3
                } else {
                    (r >> 4) & 3
                }
            };
        }
        self.flush_all = true;
        self.code_write_pending = true;
        self.host_epoch += 1;
    }

    /// Opens or closes the RAM under the VGA window (i440FX SMRAM D_OPEN).
    pub fn set_smram_open(&mut self, open: bool) {
        if self.smram_open != open {
            self.smram_open = open;
            self.flush_all = true;
            self.code_write_pending = true;
            self.host_epoch += 1;
        }
    }

    /// Returns and clears whether all cached code must be dropped (the memory map
    /// under it changed).
    pub fn take_flush_all(&mut self) -> bool {
        std::mem::take(&mut self.flush_all)
    }

    /// Where a read of `addr` lands.
    #[inline]
    fn decode(&self, addr: u64) -> Target {
        self.decode_for(addr, false)
    }

    /// Where an access of `addr` lands: RAM offset, ROM offset, or nothing.
    #[inline]
    fn decode_for(&self, addr: u64, write: bool) -> Target {
        if addr < self.fast_end {
            return Target::Ram(addr as usize);
        }
        if self.layout == MemoryLayout::Pc {
            if addr < ONE_MIB {
                if addr < OPTROM_START {
                    return if self.smram_open && addr < self.low_ram {
                        Target::Ram(addr as usize)
                    } else {
                        Target::None
                    };
                }
                let mode = self.pam[((addr - OPTROM_START) / 0x4000) as usize];
                let to_ram = if write { mode & 2 != 0 } else { mode & 1 != 0 };
                if to_ram && addr < self.low_ram {
                    return Target::Ram(addr as usize);
                }
                if write {
                    return Target::None;
                }
                if addr >= BIOS_ALIAS_START && !self.rom.is_empty() {
                    let window = ONE_MIB - BIOS_ALIAS_START;
                    let alias = (self.rom.len() as u64).min(window);
                    if addr >= ONE_MIB - alias {
                        let off = self.rom.len() as u64 - (ONE_MIB - addr);
                        return Target::Rom(off as usize);
                    }
                }
                // Not shadowed and no ROM here: the access goes to PCI, where
                // nothing answers.
                return Target::None;
            }
            if addr >= self.rom_base && addr < FOUR_GIB {
                return Target::Rom((addr - self.rom_base) as usize);
            }
            if addr >= FOUR_GIB {
                let off = addr - FOUR_GIB + self.low_ram;
                if off < self.ram_size() {
                    return Target::Ram(off as usize);
                }
                return Target::None;
            }
        }
        if addr < self.low_ram {
            return Target::Ram(addr as usize);
        }
        Target::None
    }

    /// Reads one byte.
    #[inline]
    pub fn read_u8(&self, addr: GuestPhys) -> u8 {
        let a = addr.0 & self.a20_mask;
        match self.decode(a) {
            Target::Ram(o) => self.ram[o],
            Target::Rom(o) => self.rom[o],
            Target::None => 0xFF,
        }
    }

    /// Writes one byte.
    #[inline]
    pub fn write_u8(&mut self, addr: GuestPhys, value: u8) {
        let a = addr.0 & self.a20_mask;
        if let Target::Ram(o) = self.decode_for(a, true) {
            self.note_ram_write(o, 1);
            self.ram[o] = value;
        }
    }

    /// Reads `buf.len()` bytes starting at `addr`, byte by byte through the map.
    pub fn read_bytes(&self, addr: GuestPhys, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.read_u8(addr.add(i as u64));
        }
    }

    /// Writes `data` starting at `addr`, byte by byte through the map (ROM and holes
    /// drop the bytes, code pages are invalidated).
    pub fn write_bytes(&mut self, addr: GuestPhys, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.write_u8(addr.add(i as u64), b);
        }
    }

    /// Loads an image into RAM (loaders). Fails if any byte would miss RAM.
    pub fn load(&mut self, addr: GuestPhys, data: &[u8]) -> Result<(), MachineError> {
        let end = addr.0.checked_add(data.len() as u64);
        let fits = end.is_some_and(|end| {
            (addr.0..end)
                .step_by(4096)
                .chain(std::iter::once(end.saturating_sub(1)))
                .all(|a| matches!(self.decode_for(a, true), Target::Ram(_)))
        });
        if !fits {
            return Err(MachineError::ImageOutOfRam {
                addr: addr.0,
                len: data.len(),
            });
        }
        self.write_bytes(addr, data);
        Ok(())
    }

    /// Reads a little-endian value of `N` bytes. Accesses inside the plain-RAM prefix
    /// take one compare and a copy; everything else goes byte by byte.
    #[inline]
    pub fn read<const N: usize>(&self, addr: GuestPhys) -> [u8; N] {
        let a = addr.0 & self.a20_mask;
        if a + (N as u64) <= self.fast_end || self.in_high_ram(a, N as u64) {
            let o = a as usize;
            let mut out = [0u8; N];
            out.copy_from_slice(&self.ram[o..o + N]);
            return out;
        }
        let mut out = [0u8; N];
        self.read_bytes(addr, &mut out);
        out
    }

    /// Whether `[a, a + n)` lies in the RAM between 1 MiB and the end of low RAM,
    /// where the guest-physical address is the RAM offset (a PC has no holes
    /// there; the ROM sits above `low_ram`).
    #[inline]
    fn in_high_ram(&self, a: u64, n: u64) -> bool {
        a >= ONE_MIB && a + n <= self.low_ram
    }

    /// Writes a little-endian value of `N` bytes (see [`PhysMemory::read`]).
    #[inline]
    pub fn write<const N: usize>(&mut self, addr: GuestPhys, value: [u8; N]) {
        let a = addr.0 & self.a20_mask;
        if a + (N as u64) <= self.fast_end || self.in_high_ram(a, N as u64) {
            let o = a as usize;
            self.note_ram_write(o, N);
            self.ram[o..o + N].copy_from_slice(&value);
            return;
        }
        self.write_bytes(addr, &value);
    }

    /// Whether `[addr, addr + len)` is plain RAM that the A20 gate leaves as it
    /// is: inside the plain-RAM prefix, or inside the RAM above the first
    /// megabyte (as for [`PhysMemory::read`] and [`PhysMemory::write`]), so
    /// bulk operations may treat it as one host slice. (The high range was
    /// missing here, so on the PC layout every REP MOVS/STOS above 640 KiB,
    /// that is nearly all of a kernel's, went one element at a time.)
    fn fast_range(&self, addr: GuestPhys, len: u64) -> bool {
        let Some(end) = addr.0.checked_add(len) else {
            return false;
        };
        let a20_ok = (addr.0 | end.saturating_sub(1)) & !self.a20_mask == 0;
        a20_ok && (end <= self.fast_end || self.in_high_ram(addr.0, len))
    }

    fn note_range_write(&mut self, start: u64, len: u64) {
        if len > 0 {
            self.note_ram_write(start as usize, len as usize);
        }
    }

    /// Copies `len` bytes from `src` to `dst` when both ranges are plain RAM and do
    /// not overlap (so the result equals a byte-by-byte forward copy). Returns false,
    /// having done nothing, otherwise.
    pub fn copy_fast(&mut self, src: GuestPhys, dst: GuestPhys, len: u64) -> bool {
        if !self.fast_range(src, len) || !self.fast_range(dst, len) {
            return false;
        }
        if src.0 < dst.0 + len && dst.0 < src.0 + len {
            return false;
        }
        self.note_range_write(dst.0, len);
        let (s, d, n) = (src.0 as usize, dst.0 as usize, len as usize);
        self.ram.copy_within(s..s + n, d);
        true
    }

    /// Fills `count` copies of `pattern` at `dst` when the range is plain RAM.
    /// Returns false, having done nothing, otherwise.
    pub fn fill_fast(&mut self, dst: GuestPhys, pattern: &[u8], count: u64) -> bool {
        let len = count * pattern.len() as u64;
        if pattern.is_empty() || !self.fast_range(dst, len) {
            return false;
        }
        self.note_range_write(dst.0, len);
        let d = dst.0 as usize;
        for chunk in self.ram[d..d + len as usize].chunks_exact_mut(pattern.len()) {
            chunk.copy_from_slice(pattern);
        }
        true
    }

    /// Whether a read of `addr` reaches RAM or ROM (anything but an open bus).
    pub fn is_mapped(&self, addr: GuestPhys) -> bool {
        !matches!(self.decode(addr.0 & self.a20_mask), Target::None)
    }

    /// Whether a write to `addr` reaches RAM (not ROM, not a hole).
    pub fn is_ram(&self, addr: GuestPhys) -> bool {
        matches!(
            self.decode_for(addr.0 & self.a20_mask, true),
            Target::Ram(_)
        )
    }

    /// Marks the `len` bytes at `addr` (clipped to its page) as bytes a cached
    /// unit was decoded from, and their page as holding code. Returns false for
    /// addresses outside RAM (ROM code needs no write tracking).
    pub fn mark_code(&mut self, addr: GuestPhys, len: u64) -> bool {
        match self.decode(addr.0 & self.a20_mask) {
            Target::Ram(o) => {
                let page = o >> PAGE_SHIFT;
                let bit = 1 << (page % 64);
                if self.code_pages[page / 64] & bit == 0 {
                    self.code_pages[page / 64] |= bit;
                    self.host_epoch += 1;
                }
                let start = o & ((1 << PAGE_SHIFT) - 1);
                let end = (start + len.max(1) as usize).min(1 << PAGE_SHIFT);
                let map = self
                    .code_bytes
                    .entry(page as u64)
                    .or_insert_with(|| Box::new([0; 65]));
                for b in start..end {
                    map[b / 64] |= 1 << (b % 64);
                }
                true
            }
            _ => false,
        }
    }

    /// The host address of the 4 KiB guest-physical page at `page_addr` (page
    /// aligned, before the A20 gate), for translated code to access directly: RAM
    /// only, and for `write` only a page that holds no cached code (a store there
    /// must reach [`PhysMemory::note_code_write`]). The pointer stays valid while
    /// [`PhysMemory::host_epoch`] is unchanged.
    pub fn host_page(&mut self, page_addr: u64, write: bool) -> Option<*mut u8> {
        let a = page_addr & self.a20_mask & !((1 << PAGE_SHIFT) - 1);
        let Target::Ram(o) = self.decode_for(a, write) else {
            return None;
        };
        // The whole page must be RAM with the same mapping (regions are page
        // aligned, but check the last byte as well).
        if !matches!(self.decode_for(a + (1 << PAGE_SHIFT) - 1, write), Target::Ram(e) if e == o + (1 << PAGE_SHIFT) - 1)
        {
            return None;
        }
        let page = o >> PAGE_SHIFT;
        if write && self.code_pages[page / 64] & (1 << (page % 64)) != 0 {
            return None;
        }
        Some(self.ram.as_mut_ptr().wrapping_add(o))
    }

    /// For the RAM page at guest-physical `page_addr` (page aligned, before the
    /// A20 gate), if it holds cached code: its code-byte map, a bit per byte
    /// (LSB first) that a cached unit was decoded from, followed by a zero word.
    /// A write that touches no set bit changes no cached unit. The map lives at
    /// this address, and is kept up to date, until
    /// [`PhysMemory::code_maps_epoch`] moves.
    pub fn code_map(&self, page_addr: u64) -> Option<*const u8> {
        let Target::Ram(o) = self.decode_for(page_addr & self.a20_mask, true) else {
            return None;
        };
        let page = o >> PAGE_SHIFT;
        if self.code_pages[page / 64] & (1 << (page % 64)) == 0 {
            return None;
        }
        self.code_bytes
            .get(&(page as u64))
            .map(|map| map.as_ptr().cast::<u8>())
    }

    /// Counts the frees of code-byte maps: a holder of pointers from
    /// [`PhysMemory::code_map`] (a CPU's fast TLB) drops them when this has
    /// moved since it took them. A counter, not a flag, so that every holder
    /// (each vCPU, lockstep's copies) sees the change, not the first one only.
    pub fn code_maps_epoch(&self) -> u64 {
        self.code_maps_epoch
    }

    /// See [`PhysMemory::host_page`].
    pub fn host_epoch(&self) -> u64 {
        self.host_epoch
    }

    /// Clears the code mark of the RAM page `page` (a RAM page number, as returned in
    /// the dirty list).
    pub fn unmark_code_page(&mut self, page: u64) {
        if let Some(w) = self.code_pages.get_mut((page / 64) as usize) {
            *w &= !(1 << (page % 64));
        }
    }

    /// The RAM page number (offset into RAM / 4 KiB) that `addr` falls in, if RAM.
    pub fn ram_page(&self, addr: GuestPhys) -> Option<u64> {
        match self.decode(addr.0 & self.a20_mask) {
            Target::Ram(o) => Some((o >> PAGE_SHIFT) as u64),
            _ => None,
        }
    }

    /// A write of `len` bytes at RAM offset `o`: if it touches bytes cached
    /// units were decoded from, their pages are queued for invalidation.
    #[inline]
    fn note_ram_write(&mut self, o: usize, len: usize) {
        let first = o >> PAGE_SHIFT;
        let last = (o + len.max(1) - 1) >> PAGE_SHIFT;
        for page in first..=last {
            if self.code_pages[page / 64] & (1 << (page % 64)) != 0 {
                self.code_page_write(page, o, len);
            }
        }
    }

    /// The part of [`PhysMemory::note_ram_write`] for a page with code.
    #[cold]
    fn code_page_write(&mut self, page: usize, o: usize, len: usize) {
        let base = page << PAGE_SHIFT;
        let start = o.max(base) - base;
        let end = (o + len).min(base + (1 << PAGE_SHIFT)) - base;
        let hits = self
            .code_bytes
            .get(&(page as u64))
            .is_none_or(|map| (start..end).any(|b| map[b / 64] & (1 << (b % 64)) != 0));
        if hits {
            self.note_code_write(page as u64);
        }
    }

    /// Records a write to code bytes of a RAM page: the page's code mark is
    /// cleared and the page is queued for invalidation. Its code-byte map stays
    /// until the engines take the page ([`PhysMemory::take_dirty_code_pages`]),
    /// so [`PhysMemory::keep_code_marks`] can put the mark back.
    pub fn note_code_write(&mut self, page: u64) {
        self.unmark_code_page(page);
        self.dirty_code_pages.push(page);
        self.code_write_pending = true;
    }

    /// Undoes the code writes noted since the last take: for a caller that
    /// restored the written bytes itself (lockstep, which runs the interpreter
    /// on a copy of the state and then puts memory back), so every cached unit
    /// is still right and its pages are code again.
    pub fn keep_code_marks(&mut self) {
        for page in std::mem::take(&mut self.dirty_code_pages) {
            if let Some(w) = self.code_pages.get_mut((page / 64) as usize) {
                *w |= 1 << (page % 64);
            }
        }
        self.code_write_pending = false;
    }

    /// Takes the list of written code pages (RAM page numbers). The caller drops
    /// every unit decoded from them, so their code-byte maps start afresh.
    pub fn take_dirty_code_pages(&mut self) -> Vec<u64> {
        self.code_write_pending = false;
        let pages = std::mem::take(&mut self.dirty_code_pages);
        for page in &pages {
            // A page marked again since (a unit decoded after the write) keeps
            // its map: that unit is dropped too, and re-marks on its refill.
            if self.code_pages[(*page / 64) as usize] & (1 << (page % 64)) == 0
                && self.code_bytes.remove(page).is_some()
            {
                self.code_maps_epoch += 1;
            }
        }
        pages
    }
}

#[derive(Clone, Copy)]
enum Target {
    Ram(usize),
    Rom(usize),
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(mib: u64) -> PhysMemory {
        PhysMemory::new(mib << 20, MemoryLayout::Pc).expect("map")
    }

    #[test]
    fn memory_zero_size_is_rejected() {
        assert!(matches!(
            PhysMemory::new(0, MemoryLayout::Pc),
            Err(MachineError::RamSize { .. })
        ));
    }

    #[test]
    fn memory_rom_maps_at_top_and_alias_below_1m() {
        let mut m = pc(16);
        let mut rom = vec![0u8; 0x2_0000];
        rom[0x1_FFF0] = 0xEA;
        rom[0] = 0x11;
        m.map_rom(rom).expect("rom");
        assert_eq!(m.read_u8(GuestPhys(0xFFFF_FFF0)), 0xEA);
        assert_eq!(m.read_u8(GuestPhys(0xF_FFF0)), 0xEA);
        assert_eq!(m.read_u8(GuestPhys(0xE_0000)), 0x11);
        assert_eq!(m.read_u8(GuestPhys(0xFFFE_0000)), 0x11);
    }

    /// The bulk copy and fill used by REP MOVS/STOS work on the RAM above the
    /// first megabyte too, and refuse the VGA hole and a range that runs past
    /// the end of RAM.
    #[test]
    fn memory_bulk_ops_cover_ram_above_1m() {
        let mut m = pc(16);
        assert!(m.fill_fast(GuestPhys(0x20_0000), &[0xAB, 0xCD], 2048));
        assert_eq!(m.read::<4>(GuestPhys(0x20_0FFC)), [0xAB, 0xCD, 0xAB, 0xCD]);
        assert_eq!(m.read::<1>(GuestPhys(0x20_1000)), [0]);
        assert!(m.copy_fast(GuestPhys(0x20_0000), GuestPhys(0x30_0001), 4096));
        assert_eq!(m.read::<2>(GuestPhys(0x30_0001)), [0xAB, 0xCD]);
        assert_eq!(m.read::<1>(GuestPhys(0x30_0000)), [0]);
        assert!(!m.fill_fast(GuestPhys(0xA_0000), &[1], 16));
        assert!(!m.fill_fast(GuestPhys((16 << 20) - 8), &[1], 16));
        assert!(!m.copy_fast(GuestPhys(0xF_FFF0), GuestPhys(0x20_0000), 32));
    }

    #[test]
    fn memory_rom_write_is_dropped() {
        let mut m = pc(16);
        m.map_rom(vec![0x55; 0x1_0000]).expect("rom");
        m.write_u8(GuestPhys(0xF_0000), 0xAA);
        assert_eq!(m.read_u8(GuestPhys(0xF_0000)), 0x55);
    }

    #[test]
    fn memory_rom_of_odd_size_is_rejected() {
        let mut m = pc(16);
        assert!(matches!(
            m.map_rom(vec![0; 1000]),
            Err(MachineError::RomSize { len: 1000 })
        ));
    }

    #[test]
    fn memory_a20_closed_wraps_second_megabyte() {
        let mut m = pc(16);
        m.write_u8(GuestPhys(0x1234), 0x42);
        m.set_a20(false);
        assert_eq!(m.read_u8(GuestPhys(0x10_1234)), 0x42);
        m.set_a20(true);
        assert_eq!(m.read_u8(GuestPhys(0x10_1234)), 0);
    }

    #[test]
    fn memory_vga_hole_reads_all_ones() {
        let m = pc(16);
        assert_eq!(m.read_u8(GuestPhys(0xB_8000)), 0xFF);
    }

    #[test]
    fn memory_write_to_code_bytes_queues_invalidation() {
        let mut m = pc(16);
        assert!(m.mark_code(GuestPhys(0x7C00), 16));
        m.write::<2>(GuestPhys(0x7C0F), [1, 2]);
        assert!(m.code_write_pending);
        assert_eq!(m.take_dirty_code_pages(), vec![7]);
        assert!(!m.code_write_pending);
        m.write::<1>(GuestPhys(0x7C00), [3]);
        assert!(!m.code_write_pending, "the mark is cleared after one write");
    }

    #[test]
    fn memory_write_beside_code_in_its_page_invalidates_nothing() {
        let mut m = pc(16);
        assert!(m.mark_code(GuestPhys(0x7C00), 16));
        m.write::<4>(GuestPhys(0x7BFC), [1, 2, 3, 4]);
        m.write::<4>(GuestPhys(0x7C10), [1, 2, 3, 4]);
        m.write_u8(GuestPhys(0x7FFF), 9);
        assert!(m.fill_fast(GuestPhys(0x7E00), &[0xAA], 0x100));
        assert!(!m.code_write_pending);
        assert!(
            m.host_page(0x7000, true).is_none(),
            "the page still holds code"
        );
        let map = m.code_map(0x7000).expect("a code page has a map");
        // SAFETY: the map is 65 words and stays allocated while the page is code.
        let bytes = unsafe { std::slice::from_raw_parts(map, 65 * 8) };
        assert_eq!(bytes[0xC00 / 8..0xC00 / 8 + 3], [0xFF, 0xFF, 0]);
        assert!(bytes[..0xC00 / 8].iter().all(|&b| b == 0));
    }

    #[test]
    fn memory_bulk_write_over_code_bytes_queues_their_page() {
        let mut m = pc(16);
        assert!(m.mark_code(GuestPhys(0x8FF0), 0x40));
        assert!(m.fill_fast(GuestPhys(0x8000), &[0], 0xFF1));
        assert_eq!(m.take_dirty_code_pages(), vec![8]);
    }

    #[test]
    fn memory_kept_code_marks_survive_an_undone_write() {
        let mut m = pc(16);
        assert!(m.mark_code(GuestPhys(0x7C00), 4));
        m.write_u8(GuestPhys(0x7C01), 0x90);
        m.keep_code_marks();
        assert!(!m.code_write_pending);
        m.write_u8(GuestPhys(0x7C02), 0x90);
        assert_eq!(
            m.take_dirty_code_pages(),
            vec![7],
            "still code after the undo"
        );
    }

    #[test]
    fn memory_load_beyond_ram_fails() {
        let mut m = pc(1);
        assert!(m.load(GuestPhys(0xF_F000), &[0; 0x2000]).is_err());
        assert!(m.load(GuestPhys(0x1000), &[0; 0x2000]).is_ok());
    }

    #[test]
    fn memory_pam_routes_bios_window_between_rom_and_ram() {
        let mut m = pc(16);
        m.map_rom(vec![0x55; 0x2_0000]).expect("rom");
        // PAM0 = 0x20: 0xF0000-0xFFFFF write-only RAM (reads still from ROM).
        m.set_pam([0x20, 0, 0, 0, 0, 0, 0]);
        m.write_u8(GuestPhys(0xF_1234), 0xAA);
        assert_eq!(m.read_u8(GuestPhys(0xF_1234)), 0x55);
        // PAM0 = 0x30: read/write RAM; the byte written before is there.
        m.set_pam([0x30, 0, 0, 0, 0, 0, 0]);
        assert_eq!(m.read_u8(GuestPhys(0xF_1234)), 0xAA);
        assert!(m.take_flush_all());
        // 0xC0000 with PAM1 = 0: not RAM.
        assert_eq!(m.read_u8(GuestPhys(0xC_0000)), 0xFF);
    }

    #[test]
    fn memory_flat_layout_has_no_holes() {
        let mut m = PhysMemory::new(16 << 20, MemoryLayout::Flat).expect("map");
        m.write::<4>(GuestPhys(0xB_8000), [1, 2, 3, 4]);
        assert_eq!(m.read::<4>(GuestPhys(0xB_8000)), [1, 2, 3, 4]);
        assert_eq!(m.read_u8(GuestPhys(0x100_0000)), 0xFF);
    }
}
