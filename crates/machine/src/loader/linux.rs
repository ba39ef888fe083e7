//! Linux bzImage loading through the 32-bit boot protocol (the kernel's
//! Documentation/arch/x86/boot.rst: "The real-mode kernel header", "Details of
//! header fields", "The zero page" and "32-bit boot protocol").
//!
//! The real-mode setup code never runs: the loader does its job. It copies the
//! setup header from the image into a zeroed `boot_params` ("zero page"), fills in
//! the loader's fields and the memory map the setup code would have gathered from
//! the BIOS, and loads the protected-mode kernel at 1 MiB. The caller then enters
//! the kernel as the 32-bit protocol requires: protected mode with paging off,
//! GDTR = [`LinuxEntry::gdt_base`]/[`LinuxEntry::gdt_limit`] (a GDT whose selector
//! [`BOOT_CS`] is a flat 4 GiB execute/read code segment and [`BOOT_DS`] a flat
//! 4 GiB read/write data segment), CS = [`BOOT_CS`], DS = ES = SS = [`BOOT_DS`],
//! IF = 0, ESI = [`LinuxEntry::boot_params`], EBP = EDI = EBX = 0, and a jump to
//! [`LinuxEntry::entry`].
//!
//! Memory layout chosen here (all of it below 0x9FC00, the EBDA of a PC, and
//! outside the first 0x500 bytes, where the real-mode IVT and BIOS data area live):
//! - the GDT at [`GDT_ADDR`] (0x6000, 32 bytes);
//! - `boot_params` at [`BOOT_PARAMS_ADDR`] (0x7000, 4 KiB);
//! - the NUL-terminated command line at [`CMDLINE_ADDR`] (0x20000), in a 64 KiB
//!   area, and never longer than the kernel's `cmdline_size`;
//! - the protected-mode kernel (the file after its `(setup_sects + 1) * 512`
//!   bytes of boot sector and setup code) at [`KERNEL_ADDR`] (1 MiB), the address
//!   the protocol defines for a bzImage (`LOADED_HIGH`). A relocatable kernel
//!   accepts it too: its decompressor aligns the load address up to
//!   `kernel_alignment`, never goes below `pref_address`, and decompresses there,
//!   using `init_size` bytes from that point. The loader checks that RAM covers
//!   that whole area, so a too-small guest fails here and not deep in the boot;
//! - the initrd page-aligned as high as it fits below the lowest of
//!   `initrd_addr_max + 1`, the top of RAM below 4 GiB and 896 MiB, and above the
//!   kernel's area. 896 MiB is where a 32-bit kernel's direct map ends with the
//!   default 3G/1G split; an initrd above it would be copied down at boot.
//!
//! The e820 map describes x86bt's PC layout: RAM 0-0x9FC00, reserved
//! 0x9FC00-0xA0000 (EBDA) and 0xF0000-0x100000 (BIOS), RAM from 1 MiB to the top
//! of low RAM, reserved 0xFFFC0000-4 GiB (the BIOS ROM), and RAM above 4 GiB
//! when there is some.
//!
//! Everything read from the image is bounds-checked; a bad image is a
//! [`LoaderError`], never a panic. All checks run before the first byte is written.

use super::{CpuFeature, CpuRequirement, LoaderError};
use crate::addr::{GuestPhys, PAGE_SIZE};
use crate::memory::PhysMemory;

/// Guest-physical address of the GDT the loader provides.
pub const GDT_ADDR: u32 = 0x6000;
/// Guest-physical address of `boot_params` (the zero page).
pub const BOOT_PARAMS_ADDR: u32 = 0x7000;
/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDR: u32 = 0x2_0000;
/// Where the protected-mode kernel is loaded and entered (boot.rst: a bzImage's
/// protected-mode code is loaded at 0x100000).
pub const KERNEL_ADDR: u32 = 0x10_0000;
/// `__BOOT_CS`: the code selector the 32-bit protocol requires at entry.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`: the data selector the 32-bit protocol requires in DS, ES and SS.
pub const BOOT_DS: u16 = 0x18;

/// The GDT: null, unused, then the flat 4 GiB segments at 0x10 and 0x18 (base 0,
/// limit 0xFFFFF with G = 1, D/B = 1; type 0xB execute/read accessed and 0x3
/// read/write accessed, present, DPL 0; Intel SDM Vol. 3A §3.4.5).
const GDT: [u64; 4] = [0, 0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
/// Size of `boot_params`.
const BOOT_PARAMS_LEN: usize = 4096;
/// Size of the command line area at [`CMDLINE_ADDR`], NUL included.
const CMDLINE_AREA: usize = 0x1_0000;
/// The oldest protocol accepted: 2.06 added `cmdline_size`.
const MIN_PROTOCOL: u16 = 0x0206;
/// Protocol 2.12 added `xloadflags`.
const PROTOCOL_2_12: u16 = 0x020C;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at 0x200, which
/// only a 64-bit (CONFIG_X86_64) kernel sets.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Protocol 2.10 added `pref_address` and `init_size`.
const PROTOCOL_2_10: u16 = 0x020A;
/// Sector size of the boot sector and setup code.
const SECTOR: usize = 512;
/// `syssize` counts 16-byte units.
const SYSSIZE_UNIT: u64 = 16;
/// `setup_sects` of 0 means 4 (boot.rst, "Details of header fields").
const DEFAULT_SETUP_SECTS: usize = 4;

/// Setup header field offsets, the same in the image and in `boot_params`
/// (boot.rst, "The real-mode kernel header").
const HDR_START: usize = 0x1F1;
const HDR_SETUP_SECTS: usize = 0x1F1;
const HDR_SYSSIZE: usize = 0x1F4;
const HDR_BOOT_FLAG: usize = 0x1FE;
const HDR_JUMP_OFFSET: usize = 0x201;
const HDR_MAGIC: usize = 0x202;
const HDR_VERSION: usize = 0x206;
const HDR_TYPE_OF_LOADER: usize = 0x210;
const HDR_LOADFLAGS: usize = 0x211;
const HDR_CODE32_START: usize = 0x214;
const HDR_RAMDISK_IMAGE: usize = 0x218;
const HDR_RAMDISK_SIZE: usize = 0x21C;
const HDR_HEAP_END_PTR: usize = 0x224;
const HDR_CMD_LINE_PTR: usize = 0x228;
const HDR_INITRD_ADDR_MAX: usize = 0x22C;
const HDR_KERNEL_ALIGNMENT: usize = 0x230;
const HDR_RELOCATABLE_KERNEL: usize = 0x234;
const HDR_XLOADFLAGS: usize = 0x236;
const HDR_CMDLINE_SIZE: usize = 0x238;
const HDR_SETUP_DATA: usize = 0x250;
const HDR_PREF_ADDRESS: usize = 0x258;
const HDR_INIT_SIZE: usize = 0x260;
/// A 2.06 header reaches at least to the end of `cmdline_size`.
const HDR_MIN_END: usize = 0x23C;
/// `boot_params.hdr` ends here; `edd_mbr_sig_buffer` follows.
const HDR_AREA_END: usize = 0x290;
/// The boot sector signature at offset 510.
const BOOT_FLAG: u16 = 0xAA55;
/// The setup header signature at 0x202.
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// `type_of_loader` for a boot loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xFF;

/// `loadflags` bit 0: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit 6: obsolete "do not reload segment registers".
const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags` bit 7: `heap_end_ptr` is valid (only the setup code uses it).
const CAN_USE_HEAP: u8 = 1 << 7;

/// `boot_params` offsets outside the setup header (boot.rst, "The zero page").
const BP_EXT_MEM_K: usize = 0x002;
const BP_ORIG_VIDEO_IS_VGA: usize = 0x00F;
const BP_ALT_MEM_K: usize = 0x1E0;
const BP_E820_ENTRIES: usize = 0x1E8;
const BP_E820_TABLE: usize = 0x2D0;
/// Bytes per e820 entry: u64 address, u64 size, u32 type.
const E820_ENTRY_LEN: usize = 20;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
const E820_RESERVED: u32 = 2;

/// The end of conventional memory below the EBDA.
const LOW_RAM_END: u64 = 0x9_FC00;
/// The start of the legacy VGA window.
const VGA_START: u64 = 0xA_0000;
/// The start of the BIOS area below 1 MiB.
const BIOS_START: u64 = 0xF_0000;
/// The start of upper memory.
const ONE_MIB: u64 = 0x10_0000;
/// The start of the BIOS ROM area below 4 GiB reported as reserved.
const ROM_START: u64 = 0xFFFC_0000;
/// 4 GiB.
const FOUR_GIB: u64 = 1 << 32;
/// Where a 32-bit kernel's direct map ends (3G/1G split); the initrd stays below.
const LOWMEM_LIMIT: u64 = 896 << 20;

/// Where the CPU starts after a Linux load, and what it needs set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxEntry {
    /// The physical entry point: the protected-mode kernel's load address.
    pub entry: u32,
    /// The physical address of `boot_params` (goes in ESI).
    pub boot_params: u32,
    /// GDTR base: the GDT holding [`BOOT_CS`] and [`BOOT_DS`].
    pub gdt_base: u32,
    /// GDTR limit.
    pub gdt_limit: u16,
}

/// The setup header fields the loader uses, checked.
#[derive(Clone, Copy, Debug)]
struct SetupHeader<'a> {
    /// The header bytes from offset 0x1F1 to its end (0x202 + the byte at 0x201).
    raw: &'a [u8],
    version: u16,
    loadflags: u8,
    initrd_addr_max: u32,
    kernel_alignment: u32,
    relocatable: bool,
    cmdline_size: u32,
    /// `pref_address` and `init_size`, from protocol 2.10 on.
    pref_address: Option<u64>,
    init_size: u32,
    /// The protected-mode kernel's size `syssize` declares, in bytes.
    sys_len: u64,
}

/// Whether `image` looks like a bzImage: the boot sector signature 0xAA55 at
/// offset 510 and "HdrS" at 0x202.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(HDR_BOOT_FLAG..HDR_BOOT_FLAG + 2) == Some(BOOT_FLAG.to_le_bytes().as_slice())
        && image.get(HDR_MAGIC..HDR_MAGIC + 4) == Some(HEADER_MAGIC.as_slice())
}

/// The CPU features the setup header says the kernel needs: long mode when
/// protocol 2.12's `xloadflags` has XLF_KERNEL_64. A 64-bit kernel's 32-bit entry
/// checks for long mode and halts without it. Older protocols carry no such
/// field, and other required features sit in the setup code's data, not the
/// header, so they are not reported.
pub fn cpu_requirements(image: &[u8]) -> Vec<CpuRequirement> {
    let version = le16(image, HDR_VERSION);
    let hdr_end = HDR_MAGIC + usize::from(image.get(HDR_JUMP_OFFSET).copied().unwrap_or(0));
    let has_xloadflags = is_bzimage(image)
        && version >= PROTOCOL_2_12
        && hdr_end >= HDR_XLOADFLAGS + 2
        && image.len() >= HDR_XLOADFLAGS + 2;
    if has_xloadflags && le16(image, HDR_XLOADFLAGS) & XLF_KERNEL_64 != 0 {
        vec![CpuRequirement {
            feature: CpuFeature::LongMode,
            kind: "a 64-bit kernel (bzImage xloadflags XLF_KERNEL_64)",
        }]
    } else {
        Vec::new()
    }
}

/// Loads a bzImage, its optional `initrd` and `cmdline` into `mem` and builds the
/// zero page and GDT. See the module docs for the layout and the entry state.
pub fn load(
    mem: &mut PhysMemory,
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<LinuxEntry, LoaderError> {
    let (hdr, kernel) = parse(image)?;
    let max_cmdline = (hdr.cmdline_size as usize).min(CMDLINE_AREA - 1);
    if cmdline.len() > max_cmdline {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max: max_cmdline,
        });
    }
    // A file ending inside the last paragraph leaves up to 15 bytes of the
    // declared size (parse checked that); they are zeroed.
    let tail = hdr.sys_len.saturating_sub(kernel.len() as u64) as usize;
    let kernel_end = kernel_area_end(&hdr, (kernel.len() + tail) as u64);
    if kernel_end > mem.ram_below_4g() {
        return Err(LoaderError::OutOfRam {
            what: "kernel and its decompression area (init_size)",
            addr: u64::from(KERNEL_ADDR),
            len: kernel_end - u64::from(KERNEL_ADDR),
        });
    }
    let initrd = initrd.filter(|data| !data.is_empty());
    let initrd_addr = match initrd {
        Some(data) => place_initrd(mem, &hdr, kernel_end, data.len() as u64)?,
        None => 0,
    };
    let initrd_len = initrd.map_or(0, <[u8]>::len);
    let params = boot_params(mem, &hdr, initrd_addr, initrd_len as u64);
    let mut cmdline_bytes = Vec::with_capacity(cmdline.len() + 1);
    cmdline_bytes.extend_from_slice(cmdline.as_bytes());
    cmdline_bytes.push(0);
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();

    load_bytes(mem, "GDT", u64::from(GDT_ADDR), &gdt)?;
    load_bytes(mem, "boot_params", u64::from(BOOT_PARAMS_ADDR), &params)?;
    load_bytes(mem, "command line", u64::from(CMDLINE_ADDR), &cmdline_bytes)?;
    load_bytes(mem, "protected-mode kernel", u64::from(KERNEL_ADDR), kernel)?;
    let tail_addr = u64::from(KERNEL_ADDR) + kernel.len() as u64;
    if tail != 0 {
        load_bytes(mem, "protected-mode kernel", tail_addr, &vec![0; tail])?;
    }
    if let Some(data) = initrd {
        load_bytes(mem, "initrd", initrd_addr, data)?;
    }
    Ok(LinuxEntry {
        entry: KERNEL_ADDR,
        boot_params: BOOT_PARAMS_ADDR,
        gdt_base: GDT_ADDR,
        gdt_limit: (gdt.len() - 1) as u16,
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

/// Reads a little-endian u16 at `off` (see [`le32`]).
fn le16(bytes: &[u8], off: usize) -> u16 {
    bytes
        .get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

/// Reads a little-endian u64 at `off` (see [`le32`]).
fn le64(bytes: &[u8], off: usize) -> u64 {
    bytes
        .get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Checks the image and splits it into its setup header and protected-mode kernel.
fn parse(image: &[u8]) -> Result<(SetupHeader<'_>, &[u8]), LoaderError> {
    let bad = |reason| LoaderError::BadSetupHeader { reason };
    if !is_bzimage(image) {
        return Err(LoaderError::NotBzImage);
    }
    let setup_sects = match image.get(HDR_SETUP_SECTS).copied().unwrap_or(0) {
        0 => DEFAULT_SETUP_SECTS,
        n => usize::from(n),
    };
    // From here on the image holds at least two sectors, so every header field
    // below 0x400 is inside it.
    let setup_len = (setup_sects + 1) * SECTOR;
    let kernel = image.get(setup_len..).ok_or(LoaderError::Truncated {
        what: "boot sector and setup code",
        need: setup_len as u64,
        have: image.len(),
    })?;
    let version = le16(image, HDR_VERSION);
    if version < MIN_PROTOCOL {
        return Err(LoaderError::ProtocolTooOld {
            major: (version >> 8) as u8,
            minor: version as u8,
        });
    }
    let hdr_end = HDR_MAGIC + usize::from(image.get(HDR_JUMP_OFFSET).copied().unwrap_or(0));
    if hdr_end < HDR_MIN_END {
        return Err(bad("the header ends before cmdline_size (0x238)"));
    }
    if hdr_end > HDR_AREA_END {
        return Err(bad("the header runs past boot_params' header area (0x290)"));
    }
    let loadflags = image.get(HDR_LOADFLAGS).copied().unwrap_or(0);
    if loadflags & LOADED_HIGH == 0 {
        return Err(bad(
            "LOADED_HIGH is clear: a zImage (loaded at 0x10000) is not supported",
        ));
    }
    // syssize counts 16-byte paragraphs, rounded up, so the last one may be
    // partial: the file may end up to 15 bytes before syssize * 16.
    let sys_len = u64::from(le32(image, HDR_SYSSIZE)) * 16;
    let sys_min = sys_len.saturating_sub(SYSSIZE_UNIT - 1).max(1);
    if (kernel.len() as u64) < sys_min {
        return Err(LoaderError::Truncated {
            what: "protected-mode kernel (syssize)",
            need: setup_len as u64 + sys_min,
            have: image.len(),
        });
    }
    let since_2_10 = version >= PROTOCOL_2_10;
    let hdr = SetupHeader {
        raw: image.get(HDR_START..hdr_end).unwrap_or(&[]),
        version,
        loadflags,
        initrd_addr_max: le32(image, HDR_INITRD_ADDR_MAX),
        kernel_alignment: le32(image, HDR_KERNEL_ALIGNMENT),
        relocatable: image.get(HDR_RELOCATABLE_KERNEL).is_some_and(|&b| b != 0),
        cmdline_size: le32(image, HDR_CMDLINE_SIZE),
        pref_address: since_2_10.then(|| le64(image, HDR_PREF_ADDRESS)),
        init_size: if since_2_10 {
            le32(image, HDR_INIT_SIZE)
        } else {
            0
        },
        sys_len,
    };
    Ok((hdr, kernel))
}

/// One past the last byte the kernel uses while it starts: its loaded image, and
/// from protocol 2.10 on the `init_size` bytes the decompressor works in. That
/// area starts at the load address aligned up to `kernel_alignment` (relocatable
/// kernels) but never below `pref_address`, the kernel's link-time address.
fn kernel_area_end(hdr: &SetupHeader<'_>, kernel_len: u64) -> u64 {
    let loaded_end = u64::from(KERNEL_ADDR) + kernel_len;
    let Some(pref) = hdr.pref_address else {
        return loaded_end;
    };
    let base = if hdr.relocatable {
        let align = u64::from(hdr.kernel_alignment.max(1));
        u64::from(KERNEL_ADDR).next_multiple_of(align).max(pref)
    } else {
        pref
    };
    base.saturating_add(u64::from(hdr.init_size))
        .max(loaded_end)
}

/// The page-aligned address of an initrd of `len` bytes as high as it fits (see
/// the module docs), at or above `kernel_end`.
fn place_initrd(
    mem: &PhysMemory,
    hdr: &SetupHeader<'_>,
    kernel_end: u64,
    len: u64,
) -> Result<u64, LoaderError> {
    let high = (u64::from(hdr.initrd_addr_max) + 1)
        .min(mem.ram_below_4g())
        .min(LOWMEM_LIMIT);
    let low = kernel_end.next_multiple_of(PAGE_SIZE);
    high.checked_sub(len)
        .map(|start| start & !(PAGE_SIZE - 1))
        .filter(|&start| start >= low)
        .ok_or(LoaderError::InitrdTooLarge { len, low, high })
}

/// The zero page: the image's setup header at 0x1F1 with the loader's fields
/// filled in, the memory sizes and the e820 map; everything else zero.
fn boot_params(
    mem: &PhysMemory,
    hdr: &SetupHeader<'_>,
    initrd_addr: u64,
    initrd_len: u64,
) -> Vec<u8> {
    let mut bp = vec![0u8; BOOT_PARAMS_LEN];
    if let Some(dst) = bp.get_mut(HDR_START..HDR_START + hdr.raw.len()) {
        dst.copy_from_slice(hdr.raw);
    }
    put8(&mut bp, HDR_TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED);
    put8(
        &mut bp,
        HDR_LOADFLAGS,
        (hdr.loadflags | LOADED_HIGH) & !(CAN_USE_HEAP | KEEP_SEGMENTS),
    );
    put32(&mut bp, HDR_CODE32_START, KERNEL_ADDR);
    put16(&mut bp, HDR_HEAP_END_PTR, 0);
    put32(&mut bp, HDR_CMD_LINE_PTR, CMDLINE_ADDR);
    // The initrd lies below LOWMEM_LIMIT, so both fit in 32 bits.
    put32(&mut bp, HDR_RAMDISK_IMAGE, initrd_addr as u32);
    put32(&mut bp, HDR_RAMDISK_SIZE, initrd_len as u32);
    if hdr.version >= 0x0209 {
        // No setup_data chain: the field belongs to the loader from 2.09 on.
        put64(&mut bp, HDR_SETUP_DATA, 0);
    }

    // No VGA console: orig_video_isVGA, mode, lines and columns stay 0, which
    // the kernel reads as "no display"; the console is the serial port.
    put8(&mut bp, BP_ORIG_VIDEO_IS_VGA, 0);
    let above_1m_k = mem.ram_below_4g().saturating_sub(ONE_MIB) / 1024;
    put16(&mut bp, BP_EXT_MEM_K, above_1m_k.min(0xFFFF) as u16);
    put32(
        &mut bp,
        BP_ALT_MEM_K,
        above_1m_k.min(u64::from(u32::MAX)) as u32,
    );

    let map = e820_map(mem);
    put8(&mut bp, BP_E820_ENTRIES, map.len() as u8);
    for (i, &(addr, size, kind)) in map.iter().enumerate() {
        let off = BP_E820_TABLE + i * E820_ENTRY_LEN;
        put64(&mut bp, off, addr);
        put64(&mut bp, off + 8, size);
        put32(&mut bp, off + 16, kind);
    }
    bp
}

/// The e820 map of x86bt's PC layout (see the module docs), sorted by address,
/// without empty ranges: (address, size, type).
fn e820_map(mem: &PhysMemory) -> Vec<(u64, u64, u32)> {
    let below = mem.ram_below_4g();
    let entries = [
        (0, below.min(LOW_RAM_END), E820_RAM),
        (LOW_RAM_END, VGA_START - LOW_RAM_END, E820_RESERVED),
        (BIOS_START, ONE_MIB - BIOS_START, E820_RESERVED),
        (ONE_MIB, below.saturating_sub(ONE_MIB), E820_RAM),
        (ROM_START, FOUR_GIB - ROM_START, E820_RESERVED),
        (FOUR_GIB, mem.ram_above_4g(), E820_RAM),
    ];
    entries
        .into_iter()
        .filter(|&(_, size, _)| size != 0)
        .collect()
}

fn put8(buf: &mut [u8], off: usize, value: u8) {
    if let Some(b) = buf.get_mut(off) {
        *b = value;
    }
}

fn put16(buf: &mut [u8], off: usize, value: u16) {
    if let Some(b) = buf.get_mut(off..off + 2) {
        b.copy_from_slice(&value.to_le_bytes());
    }
}

fn put32(buf: &mut [u8], off: usize, value: u32) {
    if let Some(b) = buf.get_mut(off..off + 4) {
        b.copy_from_slice(&value.to_le_bytes());
    }
}

fn put64(buf: &mut [u8], off: usize, value: u64) {
    if let Some(b) = buf.get_mut(off..off + 8) {
        b.copy_from_slice(&value.to_le_bytes());
    }
}

/// [`PhysMemory::load`] with the loader's error.
fn load_bytes(
    mem: &mut PhysMemory,
    what: &'static str,
    addr: u64,
    data: &[u8],
) -> Result<(), LoaderError> {
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

    const MIB: u64 = 1 << 20;
    /// The synthetic kernel's alignment, link address and decompression size.
    const ALIGN: u32 = 0x20_0000;
    const PREF: u64 = 0x100_0000;
    const INIT_SIZE: u32 = 0x20_0000;
    /// The synthetic header's length byte: the header ends at 0x26C (2.15).
    const JUMP_OFFSET: u8 = 0x6A;

    fn memory(bytes: u64) -> PhysMemory {
        PhysMemory::new(bytes, MemoryLayout::Pc).expect("map")
    }

    /// A bzImage of protocol `version` with `setup_sects` (as stored in the
    /// header) of setup code and `payload` as the protected-mode kernel.
    fn bzimage(version: u16, setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let mut img = vec![0u8; (sects + 1) * SECTOR];
        img[HDR_SETUP_SECTS] = setup_sects;
        put32(&mut img, HDR_SYSSIZE, (payload.len() / 16) as u32);
        put16(&mut img, HDR_BOOT_FLAG, BOOT_FLAG);
        img[0x200] = 0xEB;
        img[HDR_JUMP_OFFSET] = JUMP_OFFSET;
        img[HDR_MAGIC..HDR_MAGIC + 4].copy_from_slice(HEADER_MAGIC);
        put16(&mut img, HDR_VERSION, version);
        img[HDR_LOADFLAGS] = LOADED_HIGH | KEEP_SEGMENTS | CAN_USE_HEAP;
        put32(&mut img, HDR_CODE32_START, KERNEL_ADDR);
        put16(&mut img, HDR_HEAP_END_PTR, 0x9E00);
        put32(&mut img, HDR_INITRD_ADDR_MAX, 0x7FFF_FFFF);
        put32(&mut img, HDR_KERNEL_ALIGNMENT, ALIGN);
        img[HDR_RELOCATABLE_KERNEL] = 1;
        put32(&mut img, HDR_CMDLINE_SIZE, 255);
        put64(&mut img, HDR_PREF_ADDRESS, PREF);
        put32(&mut img, HDR_INIT_SIZE, INIT_SIZE);
        // Bytes after the header's end, which must not be copied.
        img[0x26C..0x270].copy_from_slice(&[0xCC; 4]);
        img.extend_from_slice(payload);
        img
    }

    fn payload() -> Vec<u8> {
        (0..0x3000u32).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn r8(mem: &PhysMemory, addr: u64) -> u8 {
        mem.read_u8(GuestPhys(addr))
    }

    fn r16(mem: &PhysMemory, addr: u64) -> u16 {
        u16::from_le_bytes(mem.read::<2>(GuestPhys(addr)))
    }

    fn r32(mem: &PhysMemory, addr: u64) -> u32 {
        u32::from_le_bytes(mem.read::<4>(GuestPhys(addr)))
    }

    fn r64(mem: &PhysMemory, addr: u64) -> u64 {
        u64::from_le_bytes(mem.read::<8>(GuestPhys(addr)))
    }

    /// A `boot_params` field.
    fn bp(off: usize) -> u64 {
        u64::from(BOOT_PARAMS_ADDR) + off as u64
    }

    fn cstr(mem: &PhysMemory, addr: u32) -> String {
        let mut out = Vec::new();
        let mut a = u64::from(addr);
        while out.len() < CMDLINE_AREA {
            match r8(mem, a) {
                0 => break,
                b => out.push(b),
            }
            a += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn e820(mem: &PhysMemory) -> Vec<(u64, u64, u32)> {
        (0..usize::from(r8(mem, bp(BP_E820_ENTRIES))))
            .map(|i| {
                let e = bp(BP_E820_TABLE + i * E820_ENTRY_LEN);
                (r64(mem, e), r64(mem, e + 8), r32(mem, e + 16))
            })
            .collect()
    }

    #[test]
    fn linux_is_bzimage_checks_both_signatures() {
        let img = bzimage(0x020F, 1, &payload());
        assert!(is_bzimage(&img));
        assert!(!is_bzimage(&img[..0x204]));
        let mut no_flag = img.clone();
        no_flag[510] = 0;
        assert!(!is_bzimage(&no_flag));
        let mut no_magic = img;
        no_magic[HDR_MAGIC] = b'h';
        assert!(!is_bzimage(&no_magic));
    }

    #[test]
    fn linux_kernel_is_loaded_at_one_mib() {
        let data = payload();
        let img = bzimage(0x020F, 3, &data);
        let mut mem = memory(64 * MIB);

        let entry = load(&mut mem, &img, None, "").expect("load");

        assert_eq!(
            entry,
            LinuxEntry {
                entry: 0x10_0000,
                boot_params: 0x7000,
                gdt_base: 0x6000,
                gdt_limit: 31,
            }
        );
        let mut loaded = vec![0u8; data.len()];
        mem.read_bytes(GuestPhys(u64::from(KERNEL_ADDR)), &mut loaded);
        assert_eq!(loaded, data);
    }

    #[test]
    fn linux_zero_setup_sects_means_four() {
        let data = payload();
        let img = bzimage(0x020F, 0, &data);
        assert_eq!(img.len(), 5 * SECTOR + data.len());
        let mut mem = memory(64 * MIB);

        load(&mut mem, &img, None, "").expect("load");

        assert_eq!(r32(&mem, u64::from(KERNEL_ADDR)), le32(&data, 0));
        assert_eq!(r8(&mem, bp(HDR_SETUP_SECTS)), 0);
    }

    #[test]
    fn linux_boot_params_hold_header_copy_and_loader_fields() {
        let img = bzimage(0x020F, 1, &payload());
        let mut mem = memory(64 * MIB);

        load(&mut mem, &img, None, "console=ttyS0 panic=-1").expect("load");

        let mut copy = vec![0u8; HDR_AREA_END - HDR_START];
        mem.read_bytes(GuestPhys(bp(HDR_START)), &mut copy);
        let hdr_end = 0x202 + usize::from(JUMP_OFFSET);
        let loader_fields = [
            HDR_TYPE_OF_LOADER,
            HDR_LOADFLAGS,
            HDR_HEAP_END_PTR,
            HDR_HEAP_END_PTR + 1,
        ];
        for off in HDR_START..hdr_end {
            let in_field = loader_fields.contains(&off)
                || (HDR_CMD_LINE_PTR..HDR_CMD_LINE_PTR + 4).contains(&off);
            if !in_field {
                assert_eq!(copy[off - HDR_START], img[off], "header byte {off:#x}");
            }
        }
        assert!(copy[hdr_end - HDR_START..].iter().all(|&b| b == 0));
        assert_eq!(r16(&mem, bp(HDR_VERSION)), 0x020F);
        assert_eq!(r8(&mem, bp(HDR_TYPE_OF_LOADER)), 0xFF);
        assert_eq!(r8(&mem, bp(HDR_LOADFLAGS)), LOADED_HIGH);
        assert_eq!(r16(&mem, bp(HDR_HEAP_END_PTR)), 0);
        assert_eq!(r32(&mem, bp(HDR_CODE32_START)), KERNEL_ADDR);
        assert_eq!(r32(&mem, bp(HDR_RAMDISK_IMAGE)), 0);
        assert_eq!(r32(&mem, bp(HDR_RAMDISK_SIZE)), 0);
        let cmd_line_ptr = r32(&mem, bp(HDR_CMD_LINE_PTR));
        assert_eq!(cmd_line_ptr, CMDLINE_ADDR);
        assert_eq!(cstr(&mem, cmd_line_ptr), "console=ttyS0 panic=-1");
        assert_eq!(r8(&mem, bp(BP_ORIG_VIDEO_IS_VGA)), 0);
        assert_eq!(r16(&mem, bp(BP_EXT_MEM_K)), 63 * 1024);
        assert_eq!(r32(&mem, bp(BP_ALT_MEM_K)), 63 * 1024);
    }

    #[test]
    fn linux_gdt_has_flat_boot_segments() {
        let img = bzimage(0x020F, 1, &payload());
        let mut mem = memory(64 * MIB);

        let entry = load(&mut mem, &img, None, "").expect("load");

        let base = u64::from(entry.gdt_base);
        let cs = r64(&mem, base + u64::from(BOOT_CS));
        let ds = r64(&mem, base + u64::from(BOOT_DS));
        assert_eq!(cs, 0x00CF_9B00_0000_FFFF);
        assert_eq!(ds, 0x00CF_9300_0000_FFFF);
        assert!(u64::from(entry.gdt_limit) >= u64::from(BOOT_DS) + 7);
    }

    #[test]
    fn linux_e820_matches_pc_layout() {
        let img = bzimage(0x020F, 1, &payload());
        let mut mem = memory(64 * MIB);

        load(&mut mem, &img, None, "").expect("load");

        assert_eq!(
            e820(&mem),
            vec![
                (0, 0x9_FC00, 1),
                (0x9_FC00, 0x400, 2),
                (0xF_0000, 0x1_0000, 2),
                (0x10_0000, 63 * MIB, 1),
                (0xFFFC_0000, 0x4_0000, 2),
            ]
        );
    }

    #[test]
    fn linux_e820_lists_ram_above_4g() {
        let img = bzimage(0x020F, 1, &payload());
        let mut mem = memory(3 * 1024 * MIB + 64 * MIB);

        load(&mut mem, &img, Some(&[1, 2, 3]), "").expect("load");

        let map = e820(&mem);
        assert_eq!(map.len(), 6);
        assert_eq!(map[3], (0x10_0000, 0xC000_0000 - MIB, 1));
        assert_eq!(map[5], (1 << 32, 64 * MIB, 1));
        assert_eq!(r32(&mem, bp(HDR_RAMDISK_IMAGE)), (896 * MIB - 4096) as u32);
    }

    #[test]
    fn linux_initrd_is_placed_high_and_page_aligned() {
        let img = bzimage(0x020F, 1, &payload());
        let initrd: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut mem = memory(64 * MIB);

        load(&mut mem, &img, Some(&initrd), "").expect("load");

        let addr = r32(&mem, bp(HDR_RAMDISK_IMAGE));
        assert_eq!(u64::from(addr), (64 * MIB - 10_000) & !0xFFF);
        assert_eq!(r32(&mem, bp(HDR_RAMDISK_SIZE)), 10_000);
        let mut loaded = vec![0u8; initrd.len()];
        mem.read_bytes(GuestPhys(u64::from(addr)), &mut loaded);
        assert_eq!(loaded, initrd);
    }

    #[test]
    fn linux_initrd_respects_initrd_addr_max() {
        let mut img = bzimage(0x020F, 1, &payload());
        put32(&mut img, HDR_INITRD_ADDR_MAX, 0x1FF_FFFF);
        let mut mem = memory(64 * MIB);

        load(&mut mem, &img, Some(&[0xAB; 5000]), "").expect("load");

        assert_eq!(r32(&mem, bp(HDR_RAMDISK_IMAGE)), 0x200_0000 - 0x2000);
        assert_eq!(r8(&mem, 0x200_0000 - 0x2000 + 4999), 0xAB);
    }

    #[test]
    fn linux_initrd_too_large_is_rejected() {
        let img = bzimage(0x020F, 1, &payload());
        let initrd = vec![0u8; (60 * MIB) as usize];
        let mut mem = memory(64 * MIB);

        let result = load(&mut mem, &img, Some(&initrd), "");

        // The kernel's area ends at pref_address + init_size = 18 MiB.
        assert!(matches!(
            result,
            Err(LoaderError::InitrdTooLarge { low, high, .. })
                if low == PREF + u64::from(INIT_SIZE) && high == 64 * MIB
        ));
    }

    #[test]
    fn linux_protocol_2_05_is_rejected() {
        let img = bzimage(0x0205, 1, &payload());
        let mut mem = memory(64 * MIB);

        let result = load(&mut mem, &img, None, "");

        assert!(matches!(
            result,
            Err(LoaderError::ProtocolTooOld { major: 2, minor: 5 })
        ));
        let msg = result.unwrap_err().to_string();
        assert!(msg.contains("2.05"), "{msg}");
    }

    #[test]
    fn linux_non_bzimage_is_rejected() {
        let mut mem = memory(64 * MIB);

        assert!(matches!(
            load(&mut mem, &[0u8; 4096], None, ""),
            Err(LoaderError::NotBzImage)
        ));
        assert!(matches!(
            load(&mut mem, &[], None, ""),
            Err(LoaderError::NotBzImage)
        ));
    }

    #[test]
    fn linux_truncated_image_is_rejected() {
        let img = bzimage(0x020F, 8, &payload());
        let mut mem = memory(64 * MIB);

        let setup = load(&mut mem, &img[..0x800], None, "");
        let kernel = load(&mut mem, &img[..img.len() - 16], None, "");

        assert!(matches!(
            setup,
            Err(LoaderError::Truncated {
                what: "boot sector and setup code",
                need: 0x1200,
                ..
            })
        ));
        assert!(matches!(
            kernel,
            Err(LoaderError::Truncated {
                what: "protected-mode kernel (syssize)",
                ..
            })
        ));
    }

    #[test]
    fn linux_long_cmdline_is_rejected() {
        let img = bzimage(0x020F, 1, &payload());
        let mut mem = memory(64 * MIB);

        let result = load(&mut mem, &img, None, &"x".repeat(256));

        assert!(matches!(
            result,
            Err(LoaderError::CmdlineTooLong { len: 256, max: 255 })
        ));
        assert!(load(&mut mem, &img, None, &"x".repeat(255)).is_ok());
    }

    #[test]
    fn linux_ram_below_init_size_is_rejected() {
        let img = bzimage(0x020F, 1, &payload());
        let mut mem = memory(16 * MIB);

        let result = load(&mut mem, &img, None, "");

        assert!(matches!(result, Err(LoaderError::OutOfRam { .. })));
        assert_eq!(r32(&mem, u64::from(KERNEL_ADDR)), 0, "nothing written");
    }

    #[test]
    fn linux_header_past_its_area_is_rejected() {
        let mut img = bzimage(0x020F, 1, &payload());
        img[HDR_JUMP_OFFSET] = 0xFF;
        let mut mem = memory(64 * MIB);

        let result = load(&mut mem, &img, None, "");

        assert!(matches!(result, Err(LoaderError::BadSetupHeader { .. })));
    }

    #[test]
    fn linux_zimage_is_rejected() {
        let mut img = bzimage(0x020F, 1, &payload());
        img[HDR_LOADFLAGS] = 0;
        let mut mem = memory(64 * MIB);

        let result = load(&mut mem, &img, None, "");

        assert!(matches!(result, Err(LoaderError::BadSetupHeader { .. })));
    }

    #[test]
    fn linux_last_paragraph_short_by_15_loads_and_zero_fills() {
        // syssize rounds up: 0x2FF1 bytes are 0x300 paragraphs, the last one
        // holding a single byte.
        let data: Vec<u8> = payload()[..0x2FF1].to_vec();
        let mut img = bzimage(0x020F, 2, &data);
        put32(&mut img, HDR_SYSSIZE, 0x300);
        let mut mem = memory(64 * MIB);
        let tail = u64::from(KERNEL_ADDR) + 0x2FF1;
        mem.write_bytes(GuestPhys(tail), &[0xEE; 32]);

        load(&mut mem, &img, None, "").expect("load");

        let mut loaded = vec![0u8; data.len()];
        mem.read_bytes(GuestPhys(u64::from(KERNEL_ADDR)), &mut loaded);
        assert_eq!(loaded, data);
        let mut rest = [0xFFu8; 15];
        mem.read_bytes(GuestPhys(tail), &mut rest);
        assert_eq!(rest, [0; 15], "the declared size's missing bytes are zero");
        assert_eq!(
            r8(&mem, tail + 15),
            0xEE,
            "nothing past syssize * 16 written"
        );
    }

    #[test]
    fn linux_file_short_by_16_is_truncated() {
        let data: Vec<u8> = payload()[..0x2FF0].to_vec();
        let mut img = bzimage(0x020F, 2, &data);
        put32(&mut img, HDR_SYSSIZE, 0x300);
        let mut mem = memory(64 * MIB);

        let result = load(&mut mem, &img, None, "");

        // The least a 0x300-paragraph kernel can hold is 0x2FF1 bytes after the
        // three sectors of boot sector and setup code.
        assert!(
            matches!(
                result,
                Err(LoaderError::Truncated {
                    what: "protected-mode kernel (syssize)",
                    need,
                    have,
                }) if need == 3 * 512 + 0x2FF1 && have == 3 * 512 + 0x2FF0
            ),
            "{result:?}"
        );
    }

    /// A 2.12+ header with `xloadflags`.
    fn with_xloadflags(version: u16, xloadflags: u16) -> Vec<u8> {
        let mut img = bzimage(version, 1, &payload());
        put16(&mut img, HDR_XLOADFLAGS, xloadflags);
        img
    }

    #[test]
    fn linux_xlf_kernel_64_requires_long_mode() {
        let img = with_xloadflags(0x020F, XLF_KERNEL_64 | 0x2);

        let reqs = cpu_requirements(&img);

        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].feature, CpuFeature::LongMode);
        assert!(reqs[0].kind.contains("XLF_KERNEL_64"), "{:?}", reqs[0]);
    }

    #[test]
    fn linux_32bit_xloadflags_require_nothing() {
        // XLF_EFI_HANDOVER_32 alone: what a 32-bit kernel (and memtest86+'s
        // ia32 image) sets.
        assert!(cpu_requirements(&with_xloadflags(0x020F, 1 << 2)).is_empty());
        assert!(cpu_requirements(&with_xloadflags(0x020C, 0)).is_empty());
    }

    #[test]
    fn linux_xloadflags_before_2_12_are_ignored() {
        // Before 2.12 the bytes at 0x236 were padding, whatever they hold.
        assert!(cpu_requirements(&with_xloadflags(0x020B, XLF_KERNEL_64)).is_empty());
        assert!(cpu_requirements(&[0u8; 0x300]).is_empty());
        assert!(cpu_requirements(&[]).is_empty());
    }

    /// A real image for the requirement tests, or `None` (and a visible skip).
    fn real_image(path: &str) -> Option<Vec<u8>> {
        match std::fs::read(path) {
            Ok(data) => Some(data),
            Err(e) => {
                // CI installs every guest (scripts/build-guests.sh): no skips there.
                assert!(std::env::var_os("CI").is_none(), "CI must have {path}: {e}");
                eprintln!("skipped: {path}: {e}");
                None
            }
        }
    }

    #[test]
    fn linux_memtest_images_requirements_match_their_class() {
        // Debian's memtest86+ package: x64 sets xloadflags 0x9 (XLF_KERNEL_64 |
        // XLF_EFI_HANDOVER_64), ia32 sets 0x4 (XLF_EFI_HANDOVER_32).
        if let Some(x64) = real_image("/boot/memtest86+x64.bin") {
            let reqs = cpu_requirements(&x64);
            assert_eq!(reqs.len(), 1);
            assert_eq!(reqs[0].feature, CpuFeature::LongMode);
        }
        if let Some(ia32) = real_image("/boot/memtest86+ia32.bin") {
            assert!(cpu_requirements(&ia32).is_empty());
            // And it loads as installed, its last paragraph short by 8 bytes.
            let mut mem = memory(64 * MIB);
            load(&mut mem, &ia32, None, "").expect("load memtest86+ia32.bin");
        }
    }

    #[test]
    fn linux_debian_amd64_kernel_requires_long_mode() {
        // Debian's linux-image-*-amd64 bzImage, from X86BT_AMD64_KERNEL or
        // guests/vmlinuz-amd64 (docs/design.md, "Boot").
        let path = std::env::var("X86BT_AMD64_KERNEL").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../guests/vmlinuz-amd64").to_string()
        });
        let Some(image) = real_image(&path) else {
            return;
        };
        assert!(is_bzimage(&image));
        let reqs = cpu_requirements(&image);
        assert_eq!(reqs.len(), 1, "{path}");
        assert_eq!(reqs[0].feature, CpuFeature::LongMode);
    }
}
