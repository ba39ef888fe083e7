//! Multiboot v1 kernel loading (Multiboot Specification 0.6.96, §3 "The exact
//! definitions of Multiboot Specification").
//!
//! The loader finds the Multiboot header (§3.1.1), loads the kernel either from the
//! header's address fields (the "a.out kludge", flag bit 16, §3.1.3) or from an ELF32
//! (i386) or ELF64 (x86-64) executable's `PT_LOAD` segments, places the boot
//! modules, and builds the Multiboot
//! information structure (§3.3). The caller then sets up the machine state of §3.2:
//! EAX = [`BOOTLOADER_MAGIC`], EBX = [`MultibootEntry::info_addr`], flat 32-bit
//! code and data segments, CR0.PE = 1, paging off, IF = 0, and jumps to
//! [`MultibootEntry::entry`].
//!
//! Memory layout chosen here:
//! - Modules go page-aligned after the highest kernel byte, and never below 1 MiB.
//!   They are always page-aligned, which satisfies header flag bit 0 and costs
//!   nothing when the kernel did not ask.
//! - The information structure is followed by the command line, the boot loader
//!   name, the module strings, the module list and the memory map, in one block.
//!   The block goes at [`INFO_ADDR`] (0x9000) when it fits there below 0x9FC00
//!   (the start of the EBDA on a PC) without touching a kernel segment or
//!   module; otherwise at the first page after a segment or module where it fits
//!   in RAM overlapping nothing, as boot loaders place it (a kernel linked at
//!   0x9000 gets it after its own end).
//!
//! Header flags (§3.1.2): bits 0 (page-aligned modules) and 1 (memory information)
//! are honoured, memory information being always provided; bit 2 (video mode) is
//! accepted and ignored, so the kernel boots in whatever mode the display is in
//! and the info structure does not claim a video mode; any other bit in 0-15 makes
//! the load fail, as the spec requires. Bits 16-31 are optional; only 16 is used.
//!
//! Everything read from the image is bounds-checked; a bad image is a
//! [`LoaderError`], never a panic. All checks run before the first byte is written.

use super::{CpuFeature, CpuRequirement, LoaderError};
use crate::addr::{GuestPhys, PAGE_SIZE};
use crate::memory::PhysMemory;

/// The value the kernel finds in EAX at entry (§3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// Where the Multiboot information structure goes when nothing the kernel or
/// its modules load is there (see the module docs for the fallback).
pub const INFO_ADDR: u32 = 0x9000;

/// The header's magic field (§3.1.2).
const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The header must lie within this many bytes from the start of the image (§3.1.1).
const SEARCH_LEN: usize = 8192;
/// Bytes of the mandatory header fields: magic, flags, checksum.
const HEADER_LEN: usize = 12;
/// Bytes of the header up to and including the address fields (§3.1.3).
const HEADER_ADDR_LEN: usize = 32;

/// Header flag bit 0: align modules on 4 KiB boundaries.
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag bit 1: provide mem_* (and the memory map).
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag bit 2: the kernel would like a video mode (ignored here).
const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag bit 16: the address fields at offsets 12-28 are valid.
const FLAG_ADDRESS: u32 = 1 << 16;
/// Flag bits the loader must understand or refuse (§3.1.2).
const REQUIRED_BITS: u32 = 0xFFFF;
/// The required bits this loader understands.
const KNOWN_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

/// Info flag bit 0: mem_lower and mem_upper are valid (§3.3).
const INFO_MEMORY: u32 = 1 << 0;
/// Info flag bit 2: cmdline is valid.
const INFO_CMDLINE: u32 = 1 << 2;
/// Info flag bit 3: mods_count and mods_addr are valid.
const INFO_MODS: u32 = 1 << 3;
/// Info flag bit 6: mmap_length and mmap_addr are valid.
const INFO_MEM_MAP: u32 = 1 << 6;
/// Info flag bit 9: boot_loader_name is valid.
const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// Bytes reserved for the information structure; the 0.6.96 layout, framebuffer
/// fields included, ends at offset 116.
const INFO_STRUCT_LEN: usize = 128;
/// Offsets of the information structure fields (§3.3).
const INFO_FLAGS: usize = 0;
const INFO_MEM_LOWER: usize = 4;
const INFO_MEM_UPPER: usize = 8;
const INFO_CMDLINE_ADDR: usize = 16;
const INFO_MODS_COUNT: usize = 20;
const INFO_MODS_ADDR: usize = 24;
const INFO_MMAP_LENGTH: usize = 44;
const INFO_MMAP_ADDR: usize = 48;
const INFO_LOADER_NAME_ADDR: usize = 64;
/// The name reported in boot_loader_name.
const LOADER_NAME: &str = "x86bt";

/// Memory map entry type of available RAM (§3.3).
const MMAP_AVAILABLE: u32 = 1;
/// The value of an mmap entry's size field: base_addr, length and type.
const MMAP_ENTRY_SIZE: u32 = 20;
/// The end of conventional memory below the EBDA.
const LOW_RAM_END: u64 = 0x9_FC00;
/// The start of upper memory.
const ONE_MIB: u64 = 0x10_0000;
/// 4 GiB: nothing a 32-bit protocol describes may reach past it.
const FOUR_GIB: u64 = 1 << 32;

/// ELF constants (System V ABI, "ELF Header", "Program Header").
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;

/// Where the CPU starts after a Multiboot load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultibootEntry {
    /// The physical entry point (jump here with paging off).
    pub entry: u32,
    /// The physical address of the information structure (goes in EBX).
    pub info_addr: u32,
}

/// A validated Multiboot header.
#[derive(Clone, Copy, Debug)]
struct Header {
    /// Its file offset.
    offset: usize,
    flags: u32,
}

/// One range to load: `data` at `addr`, then zeros up to `mem_len` bytes.
struct Segment<'a> {
    addr: u64,
    data: &'a [u8],
    mem_len: u64,
}

impl Segment<'_> {
    fn end(&self) -> u64 {
        self.addr + self.mem_len
    }
}

/// The kernel's segments and entry point, checked but not yet written.
struct KernelPlan<'a> {
    segments: Vec<Segment<'a>>,
    entry: u32,
}

/// Whether `image` holds a valid Multiboot header (magic, flags and checksum
/// summing to 0 mod 2^32) 4-byte aligned within its first 8192 bytes (§3.1.1).
pub fn is_multiboot(image: &[u8]) -> bool {
    find_header(image).is_some()
}

/// Loads a Multiboot kernel, its `modules` and the boot information with
/// `cmdline` into `mem`. Each module is (string, contents): the string is what
/// the module list's `string` field points at, given apart from the data, so a
/// caller passes "FILE ARGS" for `--module "FILE ARGS"`. See the module docs for
/// the layout.
pub fn load(
    mem: &mut PhysMemory,
    image: &[u8],
    cmdline: &str,
    modules: &[(String, Vec<u8>)],
) -> Result<MultibootEntry, LoaderError> {
    let header = find_header(image).ok_or(LoaderError::NotMultiboot)?;
    let unknown = header.flags & REQUIRED_BITS & !KNOWN_REQUIRED;
    if unknown != 0 {
        return Err(LoaderError::UnsupportedFlags {
            flags: header.flags,
        });
    }
    let plan = if header.flags & FLAG_ADDRESS != 0 {
        aout_plan(image, header.offset)?
    } else {
        elf_plan(image)?
    };
    for seg in &plan.segments {
        check_range(mem, "kernel segment", seg.addr, seg.mem_len)?;
    }
    let kernel_end = plan.segments.iter().map(Segment::end).max().unwrap_or(0);
    let placed = place_modules(mem, kernel_end, modules)?;
    // The block's size does not depend on where it goes: build it once to
    // measure, once at its place.
    let info_len = build_info(mem, 0, cmdline, &placed).len() as u64;
    let mut occupied: Vec<(u64, u64)> = plan
        .segments
        .iter()
        .map(|seg| (seg.addr, seg.end()))
        .chain(placed.iter().map(|m| (m.start, m.end())))
        .filter(|&(start, end)| end > start)
        .collect();
    occupied.sort_unstable();
    let info_addr = place_info(mem, info_len, &occupied)?;
    let info = build_info(mem, info_addr, cmdline, &placed);

    for seg in &plan.segments {
        write_segment(mem, seg)?;
    }
    for module in &placed {
        load_bytes(mem, "module", module.start, module.data)?;
    }
    load_bytes(mem, "boot information", info_addr, &info)?;
    Ok(MultibootEntry {
        entry: plan.entry,
        // place_info keeps the block below 4 GiB.
        info_addr: info_addr as u32,
    })
}

/// Reads a little-endian u32 at `off`; callers pass slices already checked to hold
/// the field, so the 0 fallback never shows.
fn le32(bytes: &[u8], off: usize) -> u32 {
    bytes
        .get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Reads a little-endian u64 at `off` (see [`le32`]).
fn le64(bytes: &[u8], off: usize) -> u64 {
    bytes
        .get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Reads a little-endian u16 at `off` (see [`le32`]).
fn le16(bytes: &[u8], off: usize) -> u16 {
    bytes
        .get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

/// The first valid header at a 4-byte-aligned offset with all 12 mandatory bytes
/// inside the search window.
fn find_header(image: &[u8]) -> Option<Header> {
    let window = image.get(..SEARCH_LEN.min(image.len()))?;
    (0..window.len().saturating_sub(HEADER_LEN - 1))
        .step_by(4)
        .find_map(|offset| {
            let magic = le32(window, offset);
            let flags = le32(window, offset + 4);
            let checksum = le32(window, offset + 8);
            let valid =
                magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(checksum) == 0;
            valid.then_some(Header { offset, flags })
        })
}

/// The a.out kludge (§3.1.3): load `[load_addr, load_end_addr)` from the file
/// offset that puts the header at `header_addr`, zero up to `bss_end_addr`.
fn aout_plan(image: &[u8], header_offset: usize) -> Result<KernelPlan<'_>, LoaderError> {
    let bad = |reason| LoaderError::BadAddressFields { reason };
    let fields = image
        .get(header_offset..header_offset + HEADER_ADDR_LEN)
        .ok_or(LoaderError::Truncated {
            what: "Multiboot address fields",
            need: (header_offset + HEADER_ADDR_LEN) as u64,
            have: image.len(),
        })?;
    let header_addr = le32(fields, 12);
    let load_addr = le32(fields, 16);
    let load_end_addr = le32(fields, 20);
    let bss_end_addr = le32(fields, 24);
    let entry = le32(fields, 28);

    let back = header_addr
        .checked_sub(load_addr)
        .ok_or(bad("load_addr is above header_addr"))?;
    let file_offset = header_offset
        .checked_sub(back as usize)
        .ok_or(bad("load_addr lies before the start of the file"))?;
    let load_len = if load_end_addr == 0 {
        image.len() - file_offset
    } else {
        load_end_addr
            .checked_sub(load_addr)
            .ok_or(bad("load_end_addr is below load_addr"))? as usize
    };
    let data = image
        .get(file_offset..file_offset.saturating_add(load_len))
        .ok_or(LoaderError::Truncated {
            what: "a.out text and data",
            need: file_offset as u64 + load_len as u64,
            have: image.len(),
        })?;
    let load_end = u64::from(load_addr) + load_len as u64;
    let mem_len = if bss_end_addr == 0 {
        load_len as u64
    } else if u64::from(bss_end_addr) < load_end {
        return Err(bad("bss_end_addr is below load_end_addr"));
    } else {
        u64::from(bss_end_addr) - u64::from(load_addr)
    };
    Ok(KernelPlan {
        segments: vec![Segment {
            addr: u64::from(load_addr),
            data,
            mem_len,
        }],
        entry,
    })
}

/// An ELF little-endian executable, ELF32 for i386 or ELF64 for x86-64 (as GRUB
/// loads both for Multiboot v1): every `PT_LOAD` segment at its physical address.
/// The entry point is `e_entry`, moved from virtual to physical when it falls
/// inside a segment whose `p_vaddr` differs from its `p_paddr` (higher-half
/// kernels; the CPU starts with paging off). Segments and the entry point must
/// lie below 4 GiB.
fn elf_plan(image: &[u8]) -> Result<KernelPlan<'_>, LoaderError> {
    let bad = |reason| LoaderError::BadElf { reason };
    if image.get(..4) != Some(ELF_MAGIC.as_slice()) {
        return Err(bad(
            "no ELF magic, and the Multiboot header has no address fields",
        ));
    }
    let layout = match image.get(4) {
        Some(&ELFCLASS32) => &ELF32,
        Some(&ELFCLASS64) => &ELF64,
        _ => return Err(bad("neither a 32-bit nor a 64-bit ELF file")),
    };
    let ehdr = image.get(..layout.ehdr_len).ok_or(LoaderError::Truncated {
        what: "ELF header",
        need: layout.ehdr_len as u64,
        have: image.len(),
    })?;
    if ehdr.get(5) != Some(&ELFDATA2LSB) {
        return Err(bad("not a little-endian ELF file"));
    }
    if le16(ehdr, 16) != ET_EXEC {
        return Err(bad("not an executable (ET_EXEC)"));
    }
    if le16(ehdr, 18) != layout.machine {
        return Err(bad(layout.wrong_machine));
    }
    let word = |bytes: &[u8], off: usize| layout.word(bytes, off);
    let e_entry = word(ehdr, 24);
    let phoff = word(ehdr, layout.e_phoff);
    let phentsize = usize::from(le16(ehdr, layout.e_phentsize));
    let phnum = usize::from(le16(ehdr, layout.e_phentsize + 2));
    if phentsize < layout.phdr_len {
        return Err(bad(
            "program header entries are smaller than the ELF class's",
        ));
    }
    let table_len = phnum * phentsize;
    let table = usize::try_from(phoff)
        .ok()
        .and_then(|off| image.get(off..))
        .and_then(|t| t.get(..table_len))
        .ok_or(LoaderError::Truncated {
            what: "ELF program headers",
            need: phoff.saturating_add(table_len as u64),
            have: image.len(),
        })?;

    let mut segments = Vec::new();
    let mut entry = e_entry;
    for ph in table.chunks_exact(phentsize) {
        if le32(ph, 0) != PT_LOAD {
            continue;
        }
        let field = |i: usize| word(ph, layout.p_fields[i]);
        let (offset, vaddr, paddr, filesz, memsz) =
            (field(0), field(1), field(2), field(3), field(4));
        if filesz > memsz {
            return Err(bad("a segment's file size exceeds its memory size"));
        }
        if paddr.checked_add(memsz).is_none_or(|end| end > FOUR_GIB) {
            return Err(LoaderError::TooLarge {
                what: "ELF segment",
                addr: paddr,
                len: memsz,
            });
        }
        let data = usize::try_from(offset)
            .ok()
            .and_then(|start| image.get(start..))
            .and_then(|d| d.get(..usize::try_from(filesz).ok()?))
            .ok_or(LoaderError::Truncated {
                what: "ELF segment",
                need: offset.saturating_add(filesz),
                have: image.len(),
            })?;
        if e_entry.wrapping_sub(vaddr) < memsz {
            entry = paddr.wrapping_add(e_entry.wrapping_sub(vaddr));
        }
        segments.push(Segment {
            addr: paddr,
            data,
            mem_len: memsz,
        });
    }
    if segments.is_empty() {
        return Err(bad("no loadable (PT_LOAD) segment"));
    }
    let entry = u32::try_from(entry).map_err(|_| bad("the entry point lies above 4 GiB"))?;
    Ok(KernelPlan { segments, entry })
}

/// Where an ELF class keeps the fields the loader reads (System V ABI, "ELF
/// Header" and "Program Header"; ELF-64 Object File Format for class 64).
struct ElfLayout {
    /// Bytes of an address or offset: 4 or 8.
    word_len: usize,
    ehdr_len: usize,
    phdr_len: usize,
    /// The e_machine this loader takes for the class.
    machine: u16,
    wrong_machine: &'static str,
    e_phoff: usize,
    /// e_phentsize; e_phnum follows it.
    e_phentsize: usize,
    /// p_offset, p_vaddr, p_paddr, p_filesz, p_memsz.
    p_fields: [usize; 5],
}

impl ElfLayout {
    /// The little-endian address or offset at `off`, widened to u64.
    fn word(&self, bytes: &[u8], off: usize) -> u64 {
        if self.word_len == 8 {
            le64(bytes, off)
        } else {
            u64::from(le32(bytes, off))
        }
    }
}

const ELF32: ElfLayout = ElfLayout {
    word_len: 4,
    ehdr_len: 52,
    phdr_len: 32,
    machine: EM_386,
    wrong_machine: "a 32-bit ELF file that is not for i386 (EM_386)",
    e_phoff: 28,
    e_phentsize: 42,
    p_fields: [4, 8, 12, 16, 20],
};

const ELF64: ElfLayout = ElfLayout {
    word_len: 8,
    ehdr_len: 64,
    phdr_len: 56,
    machine: EM_X86_64,
    wrong_machine: "a 64-bit ELF file that is not for x86-64 (EM_X86_64)",
    e_phoff: 32,
    e_phentsize: 54,
    p_fields: [8, 16, 24, 32, 40],
};

/// The CPU features the image says it needs: long mode for an ELF64 file (its
/// class, whether it is loaded from its program headers or by the a.out kludge),
/// since its code runs in 64-bit mode once it has set it up.
pub fn cpu_requirements(image: &[u8]) -> Vec<CpuRequirement> {
    if image.get(..4) == Some(ELF_MAGIC.as_slice()) && image.get(4) == Some(&ELFCLASS64) {
        vec![CpuRequirement {
            feature: CpuFeature::LongMode,
            kind: "a 64-bit ELF kernel (ELF class ELFCLASS64)",
        }]
    } else {
        Vec::new()
    }
}

/// Rejects a range larger than guest RAM or reaching past 4 GiB, before anything
/// is allocated or written for it.
fn check_range(
    mem: &PhysMemory,
    what: &'static str,
    addr: u64,
    len: u64,
) -> Result<(), LoaderError> {
    if len > mem.ram_size() || addr + len > FOUR_GIB {
        return Err(LoaderError::TooLarge { what, addr, len });
    }
    Ok(())
}

/// A module with its guest-physical placement.
struct PlacedModule<'a> {
    name: &'a str,
    start: u64,
    data: &'a [u8],
}

impl PlacedModule<'_> {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// Places each module page-aligned after the kernel (and at or above 1 MiB).
fn place_modules<'a>(
    mem: &PhysMemory,
    kernel_end: u64,
    modules: &'a [(String, Vec<u8>)],
) -> Result<Vec<PlacedModule<'a>>, LoaderError> {
    let mut next = kernel_end.max(ONE_MIB).next_multiple_of(PAGE_SIZE);
    let mut placed = Vec::with_capacity(modules.len());
    for (name, data) in modules {
        check_range(mem, "module", next, data.len() as u64)?;
        let module = PlacedModule {
            name,
            start: next,
            data,
        };
        next = module.end().next_multiple_of(PAGE_SIZE);
        placed.push(module);
    }
    Ok(placed)
}

/// The first place for `len` bytes of boot information that overlaps no range
/// in `occupied` (sorted, non-empty `[start, end)` ranges: kernel segments and
/// modules) and lies in one RAM range of the memory map below 4 GiB. The
/// candidates are [`INFO_ADDR`], then the page after each occupied range in
/// address order, so the block stays at 0x9000 unless something is loaded there.
fn place_info(mem: &PhysMemory, len: u64, occupied: &[(u64, u64)]) -> Result<u64, LoaderError> {
    let ram: Vec<(u64, u64)> = ram_ranges(mem)
        .into_iter()
        .map(|(base, size)| (base, (base + size).min(FOUR_GIB)))
        .collect();
    let after = occupied
        .iter()
        .map(|&(_, end)| end.next_multiple_of(PAGE_SIZE));
    let mut room = 0;
    for start in std::iter::once(u64::from(INFO_ADDR)).chain(after) {
        let Some(&(_, ram_end)) = ram.iter().find(|&&(b, e)| b <= start && start < e) else {
            continue;
        };
        if occupied.iter().any(|&(s, e)| s <= start && start < e) {
            continue;
        }
        let limit = occupied
            .iter()
            .map(|&(s, _)| s)
            .filter(|&s| s > start)
            .fold(ram_end, u64::min);
        if limit - start >= len {
            return Ok(start);
        }
        room = room.max(limit - start);
    }
    Err(LoaderError::InfoTooLarge { need: len, room })
}

/// The boot information block as it will sit at `base`: the structure, then the
/// strings, the module list and the memory map. [`place_info`] keeps it below
/// 4 GiB, so every address in it fits in a u32.
fn build_info(mem: &PhysMemory, base: u64, cmdline: &str, modules: &[PlacedModule<'_>]) -> Vec<u8> {
    let mut info = vec![0u8; INFO_STRUCT_LEN];
    let cmdline_addr = push_cstr(&mut info, base, cmdline);
    let name_addr = push_cstr(&mut info, base, LOADER_NAME);
    let module_strings: Vec<u64> = modules
        .iter()
        .map(|m| push_cstr(&mut info, base, m.name))
        .collect();

    align4(&mut info);
    let mods_addr = base + info.len() as u64;
    for (module, string) in modules.iter().zip(&module_strings) {
        // mod_start, mod_end (one past the last byte, as GRUB reports it), string,
        // reserved (§3.3, "Boot modules").
        push32(&mut info, module.start);
        push32(&mut info, module.end());
        push32(&mut info, *string);
        push32(&mut info, 0);
    }

    let mmap_addr = base + info.len() as u64;
    for (base, len) in ram_ranges(mem) {
        push32(&mut info, u64::from(MMAP_ENTRY_SIZE));
        info.extend_from_slice(&base.to_le_bytes());
        info.extend_from_slice(&len.to_le_bytes());
        push32(&mut info, u64::from(MMAP_AVAILABLE));
    }
    let mmap_len = base + info.len() as u64 - mmap_addr;

    let below_4g = mem.ram_below_4g();
    let mem_lower = below_4g.min(LOW_RAM_END) / 1024;
    let mem_upper = (below_4g.saturating_sub(ONE_MIB) / 1024).min(u64::from(u32::MAX));
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME;
    let fields = [
        (INFO_FLAGS, u64::from(flags)),
        (INFO_MEM_LOWER, mem_lower),
        (INFO_MEM_UPPER, mem_upper),
        (INFO_CMDLINE_ADDR, cmdline_addr),
        (INFO_MODS_COUNT, modules.len() as u64),
        (INFO_MODS_ADDR, mods_addr),
        (INFO_MMAP_LENGTH, mmap_len),
        (INFO_MMAP_ADDR, mmap_addr),
        (INFO_LOADER_NAME_ADDR, name_addr),
    ];
    for (offset, value) in fields {
        if let Some(field) = info.get_mut(offset..offset + 4) {
            field.copy_from_slice(&(value as u32).to_le_bytes());
        }
    }
    info
}

/// The RAM ranges for the memory map: conventional memory below the EBDA, RAM from
/// 1 MiB to the top of low RAM, and RAM above 4 GiB when there is some.
fn ram_ranges(mem: &PhysMemory) -> Vec<(u64, u64)> {
    let below = mem.ram_below_4g();
    let ranges = [
        (0, below.min(LOW_RAM_END)),
        (ONE_MIB, below.saturating_sub(ONE_MIB)),
        (FOUR_GIB, mem.ram_above_4g()),
    ];
    ranges.into_iter().filter(|&(_, len)| len != 0).collect()
}

/// Appends a NUL-terminated string to `info` (which sits at `base`) and returns
/// its guest address.
fn push_cstr(info: &mut Vec<u8>, base: u64, s: &str) -> u64 {
    let addr = base + info.len() as u64;
    info.extend_from_slice(s.as_bytes());
    info.push(0);
    addr
}

/// Appends a little-endian u32 (the value is known to fit; see `build_info`).
fn push32(info: &mut Vec<u8>, value: u64) {
    info.extend_from_slice(&(value as u32).to_le_bytes());
}

/// Pads `info` to a multiple of 4 bytes.
fn align4(info: &mut Vec<u8>) {
    info.resize(info.len().next_multiple_of(4), 0);
}

/// Writes a segment's file bytes, then zeros the rest of its memory size.
fn write_segment(mem: &mut PhysMemory, seg: &Segment<'_>) -> Result<(), LoaderError> {
    load_bytes(mem, "kernel segment", seg.addr, seg.data)?;
    let mut addr = seg.addr + seg.data.len() as u64;
    let end = seg.end();
    while addr < end {
        let n = (end - addr).min(ZEROS.len() as u64);
        let chunk = ZEROS.get(..n as usize).unwrap_or(&[]);
        load_bytes(mem, "kernel bss", addr, chunk)?;
        addr += n;
    }
    Ok(())
}

/// A block of zeros to clear bss with, so no allocation follows an image's sizes.
static ZEROS: [u8; 0x1_0000] = [0; 0x1_0000];

/// [`PhysMemory::load`] with the loader's error; empty data writes nothing and
/// needs no RAM.
fn load_bytes(
    mem: &mut PhysMemory,
    what: &'static str,
    addr: u64,
    data: &[u8],
) -> Result<(), LoaderError> {
    if data.is_empty() {
        return Ok(());
    }
    mem.load(GuestPhys(addr), data)
        .map_err(|_| LoaderError::OutOfRam {
            what,
            addr,
            len: data.len() as u64,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryLayout;

    const KERNEL_ADDR: u32 = 0x10_0000;
    const CODE: [u8; 8] = [0xFA, 0xF4, 0xEB, 0xFD, 1, 2, 3, 4];

    fn put32(buf: &mut [u8], off: usize, value: u32) {
        buf[off..off + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn put16(buf: &mut [u8], off: usize, value: u16) {
        buf[off..off + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn put_header(buf: &mut [u8], off: usize, flags: u32) {
        put32(buf, off, HEADER_MAGIC);
        put32(buf, off + 4, flags);
        put32(
            buf,
            off + 8,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        );
    }

    /// An ELF32 executable: header, one program header at 52, the Multiboot header
    /// at 84, `CODE` at file offset 0x100 loaded at `paddr` (virtual `vaddr`) with
    /// `memsz` bytes of memory.
    fn elf(vaddr: u32, paddr: u32, memsz: u32, entry: u32) -> Vec<u8> {
        let mut img = vec![0u8; 0x100];
        img[..4].copy_from_slice(ELF_MAGIC);
        img[4] = ELFCLASS32;
        img[5] = ELFDATA2LSB;
        img[6] = 1;
        put16(&mut img, 16, ET_EXEC);
        put16(&mut img, 18, EM_386);
        put32(&mut img, 20, 1);
        put32(&mut img, 24, entry);
        put32(&mut img, 28, 52);
        put16(&mut img, 40, 52);
        put16(&mut img, 42, 32);
        put16(&mut img, 44, 1);
        put32(&mut img, 52, PT_LOAD);
        put32(&mut img, 56, 0x100);
        put32(&mut img, 60, vaddr);
        put32(&mut img, 64, paddr);
        put32(&mut img, 68, CODE.len() as u32);
        put32(&mut img, 72, memsz);
        put_header(&mut img, 84, FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO);
        img.extend_from_slice(&CODE);
        img
    }

    /// Appends a second `PT_LOAD` segment to an [`elf`] image: 8 bytes of 0x99
    /// at `paddr` (also its virtual address) with `memsz` bytes of memory.
    fn add_segment(img: &mut Vec<u8>, paddr: u32, memsz: u32) {
        // The program header table moves to the end of the file.
        let phoff = img.len();
        let data_off = phoff + 64;
        let mut table = img[52..84].to_vec();
        let mut second = vec![0u8; 32];
        put32(&mut second, 0, PT_LOAD);
        put32(&mut second, 4, data_off as u32);
        put32(&mut second, 8, paddr);
        put32(&mut second, 12, paddr);
        put32(&mut second, 16, 8);
        put32(&mut second, 20, memsz);
        table.extend_from_slice(&second);
        img.extend_from_slice(&table);
        img.extend_from_slice(&[0x99; 8]);
        put32(img, 28, phoff as u32);
        put16(img, 44, 2);
    }

    /// An a.out-kludge image: the header at offset 0 loaded at `KERNEL_ADDR`, then
    /// `CODE`; bss up to `bss_end`.
    fn aout(load_end: u32, bss_end: u32) -> Vec<u8> {
        let mut img = vec![0u8; 32];
        put_header(&mut img, 0, FLAG_ADDRESS | FLAG_MEMORY_INFO);
        put32(&mut img, 12, KERNEL_ADDR);
        put32(&mut img, 16, KERNEL_ADDR);
        put32(&mut img, 20, load_end);
        put32(&mut img, 24, bss_end);
        put32(&mut img, 28, KERNEL_ADDR + 32);
        img.extend_from_slice(&CODE);
        img
    }

    fn memory() -> PhysMemory {
        PhysMemory::new(16 << 20, MemoryLayout::Pc).expect("map")
    }

    fn r32(mem: &PhysMemory, addr: u64) -> u32 {
        u32::from_le_bytes(mem.read::<4>(GuestPhys(addr)))
    }

    fn info_field(mem: &PhysMemory, offset: usize) -> u32 {
        r32(mem, u64::from(INFO_ADDR) + offset as u64)
    }

    fn cstr(mem: &PhysMemory, addr: u32) -> String {
        let mut out = Vec::new();
        let mut a = u64::from(addr);
        while mem.read_u8(GuestPhys(a)) != 0 && out.len() < 4096 {
            out.push(mem.read_u8(GuestPhys(a)));
            a += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn multiboot_header_aligned_in_first_8k_is_found() {
        let mut img = vec![0u8; 8192];
        put_header(&mut img, 8180, 0);

        assert!(is_multiboot(&img));
    }

    #[test]
    fn multiboot_header_past_8k_or_misaligned_is_not_found() {
        let mut late = vec![0u8; 8300];
        put_header(&mut late, 8184, 0);
        let mut odd = vec![0u8; 64];
        put_header(&mut odd, 2, 0);

        assert!(!is_multiboot(&late));
        assert!(!is_multiboot(&odd));
    }

    #[test]
    fn multiboot_corrupted_checksum_is_rejected() {
        let mut img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);
        img[84 + 8] ^= 1;
        let mut mem = memory();

        let result = load(&mut mem, &img, "", &[]);

        assert!(!is_multiboot(&img));
        assert!(matches!(result, Err(LoaderError::NotMultiboot)));
    }

    #[test]
    fn multiboot_elf_loads_segment_and_zeroes_bss() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x2000, KERNEL_ADDR);
        let mut mem = memory();
        mem.write_bytes(GuestPhys(u64::from(KERNEL_ADDR) + 8), &[0xAA; 0x3000]);

        let entry = load(&mut mem, &img, "", &[]).expect("load");

        assert_eq!(
            entry,
            MultibootEntry {
                entry: KERNEL_ADDR,
                info_addr: INFO_ADDR
            }
        );
        assert_eq!(mem.read::<8>(GuestPhys(u64::from(KERNEL_ADDR))), CODE);
        let mut bss = vec![0xFFu8; 0x2000 - 8];
        mem.read_bytes(GuestPhys(u64::from(KERNEL_ADDR) + 8), &mut bss);
        assert!(bss.iter().all(|&b| b == 0));
        assert_eq!(
            mem.read_u8(GuestPhys(u64::from(KERNEL_ADDR) + 0x2000)),
            0xAA
        );
    }

    #[test]
    fn multiboot_elf_virtual_entry_moves_to_physical() {
        let img = elf(0xC010_0000, KERNEL_ADDR, 0x1000, 0xC010_0004);
        let mut mem = memory();

        let entry = load(&mut mem, &img, "", &[]).expect("load");

        assert_eq!(entry.entry, KERNEL_ADDR + 4);
    }

    #[test]
    fn multiboot_aout_kludge_loads_at_load_addr_and_zeroes_bss() {
        let img = aout(0, KERNEL_ADDR + 0x3000);
        let mut mem = memory();
        mem.write_bytes(GuestPhys(u64::from(KERNEL_ADDR) + 40), &[0xAA; 0x100]);

        let entry = load(&mut mem, &img, "", &[]).expect("load");

        assert_eq!(entry.entry, KERNEL_ADDR + 32);
        assert_eq!(r32(&mem, u64::from(KERNEL_ADDR)), HEADER_MAGIC);
        assert_eq!(mem.read::<8>(GuestPhys(u64::from(KERNEL_ADDR) + 32)), CODE);
        assert_eq!(r32(&mem, u64::from(KERNEL_ADDR) + 40), 0);
    }

    #[test]
    fn multiboot_aout_load_end_limits_loaded_bytes() {
        let img = aout(KERNEL_ADDR + 36, 0);
        let mut mem = memory();
        mem.write_bytes(GuestPhys(u64::from(KERNEL_ADDR) + 36), &[0xAA; 4]);

        load(&mut mem, &img, "", &[]).expect("load");

        assert_eq!(r32(&mem, u64::from(KERNEL_ADDR) + 32), 0xFDEB_F4FA);
        assert_eq!(r32(&mem, u64::from(KERNEL_ADDR) + 36), 0xAAAA_AAAA);
    }

    #[test]
    fn multiboot_info_reports_memory_cmdline_and_loader_name() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);
        let mut mem = memory();

        load(&mut mem, &img, "console=ttyS0 quiet", &[]).expect("load");

        assert_eq!(info_field(&mem, INFO_FLAGS), 0x24D);
        assert_eq!(info_field(&mem, INFO_MEM_LOWER), 639);
        assert_eq!(info_field(&mem, INFO_MEM_UPPER), 15 * 1024);
        let cmdline = info_field(&mem, INFO_CMDLINE_ADDR);
        assert_eq!(cstr(&mem, cmdline), "console=ttyS0 quiet");
        let name = info_field(&mem, INFO_LOADER_NAME_ADDR);
        assert_eq!(cstr(&mem, name), "x86bt");
    }

    #[test]
    fn multiboot_modules_are_page_aligned_after_kernel() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1800, KERNEL_ADDR);
        let modules = vec![
            ("initrd.img".to_string(), vec![0x11; 100]),
            ("second arg".to_string(), vec![0x22; 5000]),
        ];
        let mut mem = memory();

        load(&mut mem, &img, "", &modules).expect("load");

        assert_eq!(info_field(&mem, INFO_MODS_COUNT), 2);
        let list = u64::from(info_field(&mem, INFO_MODS_ADDR));
        assert_eq!(list % 4, 0);
        let first = (r32(&mem, list), r32(&mem, list + 4));
        let second = (r32(&mem, list + 16), r32(&mem, list + 20));
        assert_eq!(first, (0x10_2000, 0x10_2000 + 100));
        assert_eq!(second, (0x10_3000, 0x10_3000 + 5000));
        assert_eq!(cstr(&mem, r32(&mem, list + 8)), "initrd.img");
        assert_eq!(cstr(&mem, r32(&mem, list + 24)), "second arg");
        let mut content = vec![0u8; 5000];
        mem.read_bytes(GuestPhys(0x10_3000), &mut content);
        assert!(content.iter().all(|&b| b == 0x22));
        assert_eq!(mem.read_u8(GuestPhys(0x10_2000 + 99)), 0x11);
    }

    #[test]
    fn multiboot_mmap_lists_ram_ranges() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);
        let mut mem = memory();

        load(&mut mem, &img, "", &[]).expect("load");

        let addr = u64::from(info_field(&mem, INFO_MMAP_ADDR));
        assert_eq!(info_field(&mem, INFO_MMAP_LENGTH), 48);
        let entry = |i: u64| {
            let e = addr + 24 * i;
            (
                r32(&mem, e),
                u64::from_le_bytes(mem.read::<8>(GuestPhys(e + 4))),
                u64::from_le_bytes(mem.read::<8>(GuestPhys(e + 12))),
                r32(&mem, e + 20),
            )
        };
        assert_eq!(entry(0), (20, 0, 0x9_FC00, 1));
        assert_eq!(entry(1), (20, 0x10_0000, 15 << 20, 1));
    }

    #[test]
    fn multiboot_truncated_elf_is_rejected() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);
        let mut mem = memory();

        let result = load(&mut mem, &img[..0x104], "", &[]);

        assert!(matches!(
            result,
            Err(LoaderError::Truncated {
                what: "ELF segment",
                ..
            })
        ));
    }

    #[test]
    fn multiboot_unknown_required_flag_is_rejected() {
        let mut img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);
        put_header(&mut img, 84, 1 << 5);
        let mut mem = memory();

        let result = load(&mut mem, &img, "", &[]);

        assert!(matches!(
            result,
            Err(LoaderError::UnsupportedFlags { flags: 0x20 })
        ));
    }

    #[test]
    fn multiboot_segment_outside_ram_is_rejected() {
        let img = elf(0x200_0000, 0x200_0000, 0x1000, 0x200_0000);
        let mut mem = memory();

        let result = load(&mut mem, &img, "", &[]);

        assert!(matches!(result, Err(LoaderError::OutOfRam { .. })));
    }

    /// The byte ranges the boot information uses, read back from guest memory
    /// as a kernel would find them: the structure, the command line, the loader
    /// name, the module list with each module's string, and the memory map.
    fn info_ranges(mem: &PhysMemory, info: u32) -> Vec<(u64, u64)> {
        let field = |off: usize| r32(mem, u64::from(info) + off as u64);
        let string = |addr: u32| {
            let len = cstr(mem, addr).len() as u64 + 1;
            (u64::from(addr), u64::from(addr) + len)
        };
        let mut ranges = vec![
            (u64::from(info), u64::from(info) + 116),
            string(field(INFO_CMDLINE_ADDR)),
            string(field(INFO_LOADER_NAME_ADDR)),
        ];
        let mods = field(INFO_MODS_ADDR);
        let count = field(INFO_MODS_COUNT);
        ranges.push((u64::from(mods), u64::from(mods) + 16 * u64::from(count)));
        for i in 0..count {
            ranges.push(string(r32(mem, u64::from(mods + 16 * i + 8))));
        }
        let mmap = field(INFO_MMAP_ADDR);
        ranges.push((
            u64::from(mmap),
            u64::from(mmap) + u64::from(field(INFO_MMAP_LENGTH)),
        ));
        ranges
    }

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    #[test]
    fn multiboot_kernel_at_0x9000_gets_info_after_its_end() {
        // Code at 0x9000, bss to 0xB800: the info block goes to the next page.
        let img = elf(0x9000, 0x9000, 0x2800, 0x9000);
        let modules = vec![("mod.bin a=1 b".to_string(), vec![0x5A; 300])];
        let mut mem = memory();
        mem.write_bytes(GuestPhys(0x9008), &[0xAA; 0x2800]);

        let entry = load(&mut mem, &img, "root=x", &modules).expect("load");

        assert_eq!(entry.info_addr, 0xC000);
        assert_eq!(entry.entry, 0x9000);
        assert_eq!(mem.read::<8>(GuestPhys(0x9000)), CODE, "kernel intact");
        let mut bss = vec![0xFFu8; 0x2800 - 8];
        mem.read_bytes(GuestPhys(0x9008), &mut bss);
        assert!(bss.iter().all(|&b| b == 0), "bss zeroed, not info");
        let info = u64::from(entry.info_addr);
        assert_eq!(r32(&mem, info), 0x24D);
        assert_eq!(
            cstr(&mem, r32(&mem, info + INFO_CMDLINE_ADDR as u64)),
            "root=x"
        );
        let list = u64::from(r32(&mem, info + INFO_MODS_ADDR as u64));
        assert_eq!(cstr(&mem, r32(&mem, list + 8)), "mod.bin a=1 b");
        // The module sits at 1 MiB (never lower); nothing of the block
        // touches the kernel or the module.
        assert_eq!(r32(&mem, list), 0x10_0000);
        for range in info_ranges(&mem, entry.info_addr) {
            assert!(
                !overlaps(range, (0x9000, 0xB800)),
                "{range:x?} on the kernel"
            );
            assert!(
                !overlaps(range, (0x10_0000, 0x10_0000 + 300)),
                "{range:x?} on the module"
            );
            assert!(range.1 <= 0x9_FC00, "{range:x?} past low RAM");
        }
    }

    #[test]
    fn multiboot_kernel_at_one_mib_keeps_info_at_0x9000() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x3000, KERNEL_ADDR);
        let modules = vec![
            ("first".to_string(), vec![1; 10]),
            ("second with args".to_string(), vec![2; 20]),
        ];
        let mut mem = memory();

        let entry = load(&mut mem, &img, "console=ttyS0", &modules).expect("load");

        assert_eq!(entry.info_addr, 0x9000);
        let kernel = (u64::from(KERNEL_ADDR), u64::from(KERNEL_ADDR) + 0x3000);
        let mods = [(0x10_3000, 0x10_3000 + 10), (0x10_4000, 0x10_4000 + 20)];
        for range in info_ranges(&mem, entry.info_addr) {
            assert!(range.0 >= 0x9000 && range.1 <= 0x9_FC00, "{range:x?}");
            assert!(!overlaps(range, kernel), "{range:x?} on the kernel");
            for m in mods {
                assert!(!overlaps(range, m), "{range:x?} on a module");
            }
        }
    }

    #[test]
    fn multiboot_kernel_filling_low_ram_gets_info_above_its_modules() {
        // The kernel covers 0x1000-0x9FC00 and 1 MiB-2 MiB, the module follows:
        // the first free room is the page after the module.
        let mut img = elf(0x1000, 0x1000, 0x9_EC00, 0x1000);
        add_segment(&mut img, 0x10_0000, 0x10_0000);
        let modules = vec![("m".to_string(), vec![7; 0x1800])];
        let mut mem = memory();

        let entry = load(&mut mem, &img, "", &modules).expect("load");

        assert_eq!(entry.info_addr, 0x20_2000);
        assert_eq!(r32(&mem, 0x20_2000), 0x24D);
        assert_eq!(mem.read_u8(GuestPhys(0x20_17FF)), 7, "module intact");
    }

    #[test]
    fn multiboot_info_larger_than_free_ram_is_rejected() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);
        let cmdline = "x".repeat(16 << 20);
        let mut mem = memory();

        let result = load(&mut mem, &img, &cmdline, &[]);

        // The largest free room is 1 MiB + 4 KiB up to the top of 16 MiB.
        assert!(
            matches!(
                result,
                Err(LoaderError::InfoTooLarge { room, .. }) if room == (15 << 20) - 0x1000
            ),
            "{result:?}"
        );
    }

    /// An ELF64 x86-64 executable: header, one program header at 64, the
    /// Multiboot header at 120, `CODE` at file offset 0x100 loaded at `paddr`
    /// (virtual `vaddr`) with `memsz` bytes of memory.
    fn elf64(vaddr: u64, paddr: u64, memsz: u64, entry: u64) -> Vec<u8> {
        let put64 = |buf: &mut [u8], off: usize, value: u64| {
            buf[off..off + 8].copy_from_slice(&value.to_le_bytes());
        };
        let mut img = vec![0u8; 0x100];
        img[..4].copy_from_slice(ELF_MAGIC);
        img[4] = ELFCLASS64;
        img[5] = ELFDATA2LSB;
        img[6] = 1;
        put16(&mut img, 16, ET_EXEC);
        put16(&mut img, 18, EM_X86_64);
        put32(&mut img, 20, 1);
        put64(&mut img, 24, entry);
        put64(&mut img, 32, 64);
        put16(&mut img, 52, 64);
        put16(&mut img, 54, 56);
        put16(&mut img, 56, 1);
        put32(&mut img, 64, PT_LOAD);
        put64(&mut img, 72, 0x100);
        put64(&mut img, 80, vaddr);
        put64(&mut img, 88, paddr);
        put64(&mut img, 96, CODE.len() as u64);
        put64(&mut img, 104, memsz);
        put_header(&mut img, 120, FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO);
        img.extend_from_slice(&CODE);
        img
    }

    #[test]
    fn multiboot_elf64_loads_at_paddr_and_requires_long_mode() {
        let img = elf64(
            0xFFFF_FFFF_8010_0000,
            0x10_0000,
            0x2000,
            0xFFFF_FFFF_8010_0004,
        );
        let mut mem = memory();

        let entry = load(&mut mem, &img, "", &[]).expect("load");

        assert_eq!(entry.entry, 0x10_0004);
        assert_eq!(mem.read::<8>(GuestPhys(0x10_0000)), CODE);
        let reqs = cpu_requirements(&img);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].feature, CpuFeature::LongMode);
        assert!(reqs[0].kind.contains("ELFCLASS64"));
    }

    #[test]
    fn multiboot_elf32_requires_nothing() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);

        assert!(cpu_requirements(&img).is_empty());
        assert!(cpu_requirements(&aout(0, 0)).is_empty());
    }

    #[test]
    fn multiboot_elf64_above_4g_is_rejected() {
        let img = elf64(0x1_0000_0000, 0x1_0000_0000, 0x1000, 0x1_0000_0000);
        let mut mem = memory();

        let result = load(&mut mem, &img, "", &[]);

        assert!(
            matches!(result, Err(LoaderError::TooLarge { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn multiboot_absurd_bss_is_rejected() {
        let img = aout(0, 0xFFFF_F000);
        let mut mem = memory();

        let result = load(&mut mem, &img, "", &[]);

        assert!(matches!(result, Err(LoaderError::TooLarge { .. })));
    }

    #[test]
    fn multiboot_non_elf_without_address_fields_is_rejected() {
        let mut img = vec![0u8; 64];
        put_header(&mut img, 0, 0);
        let mut mem = memory();

        let result = load(&mut mem, &img, "", &[]);

        assert!(matches!(result, Err(LoaderError::BadElf { .. })));
    }

    #[test]
    fn multiboot_cmdline_too_big_for_low_ram_goes_after_kernel() {
        let img = elf(KERNEL_ADDR, KERNEL_ADDR, 0x1000, KERNEL_ADDR);
        let cmdline = "x".repeat(0x10_0000);
        let mut mem = memory();

        let entry = load(&mut mem, &img, &cmdline, &[]).expect("load");

        assert_eq!(entry.info_addr, KERNEL_ADDR + 0x1000);
        let at = r32(&mem, u64::from(entry.info_addr) + INFO_CMDLINE_ADDR as u64);
        let mut tail = [0u8; 2];
        mem.read_bytes(GuestPhys(u64::from(at) + 0x10_0000 - 1), &mut tail);
        assert_eq!(tail, [b'x', 0]);
    }
}
