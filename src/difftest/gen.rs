//! Seeded random programs for `x86bt difftest --random`.
//!
//! [`generate`] turns `(mode, seed, index)` into a 64 KiB BIOS image. The same triple
//! always gives the same bytes: the only source of randomness is the small splitmix64
//! generator below, seeded from the triple, and the instruction table is built from
//! iced's `Code` list in its fixed order.
//!
//! # ROM layout (offsets in the image; both emulators map it at 0xF0000 and 0xFFFF0000)
//! - `0x0000` GDT: null, 16-bit code (base 0xF0000, limit 0xFFFF), 32-bit flat code,
//!   16-bit data and 32-bit (B=1) data, both based at [`DATA_BASE`] with limit 0xFFFF;
//!   the two data descriptors are also the 16-bit and 32-bit stacks of the stack
//!   switches, so a switch changes the stack's size and not its bytes.
//!   The accessed bits are preset so no CPU writes to the descriptors in ROM.
//! - `0x0030` GDTR and `0x0038` IDTR pseudo-descriptors, `0x0040` the exception
//!   handler (`hlt`), `0x0080` a 32-gate IDT (protected modes only).
//! - `0x0200` the entry stub (real-mode code), `0x0300` the common stub in the mode's
//!   code size, then the random stream, then a final `hlt`.
//! - `0xFFF0` the reset vector: `jmp far F000:0200`.
//!
//! # What the stub does
//! Real mode: an IVT whose vectors 0-31 point at the handler, DS=ES=FS=GS=SS=0x1000.
//! Protected modes: LGDT/LIDT through CS (16-bit operand size, 24-bit bases), CR0.PE,
//! a far jump to the 16-bit or 32-bit code segment, and the data selector in every
//! data segment register. Then, in every mode: ESP=[`STACK_TOP`], a REP STOSD of a
//! seeded dword over the hot part of the data window, a few seeded dwords, seeded
//! GPRs (EBX gets the base value), and seeded arithmetic flags and DF through
//! PUSH/POPFD with IF=TF=0. A fault anywhere ends in the handler's `hlt`.
//!
//! # What the stream covers
//! `len` table entries, each picked uniformly from every legacy encoding (iced `Code`)
//! of the integer mnemonics in `MNEMONICS` that is valid in the mode and needs no CPU
//! feature beyond `FEATURES` (8086 to 486, CX8, CMOV, multi-byte NOP). That includes
//! the alternative encodings (the 0x82 group, SAL, both directions of register-to-
//! register ALU ops and MOV), the operand-size variants (a 0x66 prefix where the code
//! asks for it), moffs MOVs, PUSH/POP of registers, immediates, memory and (push
//! only) segment registers, and the short and near Jcc/JMP forms, LOOPcc and
//! JCXZ/JECXZ. Memory operands take 16- or 32-bit addressing (a
//! 0x67 prefix one time in four), any base/index form, random displacement sizes and
//! a random segment override one time in three; lockable read-modify-write forms
//! get LOCK one time in four.
//!
//! In the protected modes, one stream slot in [`SWITCH_ODDS`] is a stack switch
//! group instead (`Gen::stack_switch`): SS moves between the 16-bit (B=0, SP) and
//! the 32-bit (B=1, ESP) data descriptors, both over the data window, by MOV SS,
//! PUSH imm + POP SS (each of 16 or 32 bits), LSS SP or LSS ESP (which may also
//! move the stack anywhere in its range, and on a 16-bit stack may put garbage in
//! ESP's upper half, which such a stack ignores), or a POP SS at the very top of
//! the segment, whose ESP increment is sized by the old SS: from a 32-bit stack ESP
//! ends at 0x10000, from a 16-bit one SP wraps to 0 (an LSS puts the stack back
//! right after). The table's pushes, pops, PUSHA/POPA, ENTER and LEAVE of either
//! operand size then run on either stack size.
//!
//! Left out: CALL/RET/far transfers/INT/INTO/IRET/BOUND (control flow), other
//! segment register loads (MOV/POP DS..GS, LDS...), HLT, I/O, POPF/STI/CLI, system
//! instructions (descriptor tables, CRs/DRs, LAR/LSL/VERR/VERW/ARPL, CPUID, RDTSC,
//! RDMSR, INVD...), x87/MMX/SSE, UD0/UD1/UD2, the reserved NOPs (0F 0D, 0F 18-1E),
//! BSWAP r16, whose result is undefined, and TEST F6 /1 and F7 /1, which QEMU
//! rejects with #UD.
//!
//! # Invariants of the stream
//! - EBX is the reserved base register. No stream instruction writes EBX, BX, BL or
//!   BH, except a POPA that restores what its own PUSHA saved a few register-only
//!   instructions earlier.
//! - ESP moves only through pushes, pops, ENTER, LEAVE and the LSS of stack
//!   switches (LEAVE right after
//!   `mov ebp, esp`); the generator tracks the depth below [`STACK_TOP`] and keeps it
//!   within `0..=MAX_DEPTH`, so the stack stays inside the data window.
//! - Every explicit memory operand is built from registers whose values are known at
//!   that point (EBX, ESP, or a register loaded by a MOV emitted right before), and
//!   its effective address is checked to lie inside the 64 KiB data window. String
//!   instructions get SI/DI (and CX under REP, at most 16) from MOVs right before;
//!   a BT-family bit offset register is loaded with a small value first; ENTER with
//!   nesting level 2 or more gets EBP in the window first.
//! - CS overrides appear only on memory operands that are read and never written.
//! - Every branch (Jcc, JMP, LOOPcc, JCXZ) targets the next instruction, so both
//!   paths continue; 16-bit-operand branches, which truncate EIP, are left out of
//!   32-bit code, whose EIP is above 0xFFFF.
//! - DIV/IDIV get an odd divisor and a zero or sign-extended high half first,
//!   except one time in 64, when a #DE may end the program.
//! - Two QEMU deviations that the differ allows but stops at (`allow.rs`) are
//!   steered clear of: RCL/RCR of 8 or 16 bits by a non-zero multiple of 9 or 17,
//!   and AAM with an immediate of 0x80 or more.

use std::fmt;
use std::str::FromStr;

use iced_x86::code_asm::CodeAssembler;
use iced_x86::{
    Code, CodeSize, CpuidFeature, Encoder, EncodingKind, IcedError, Instruction,
    InstructionInfoFactory, Mnemonic, OpAccess, OpCodeOperandKind as K, OpKind, Register,
    RepPrefixKind,
};

/// Size of the BIOS image in bytes.
pub const ROM_SIZE: usize = 0x1_0000;
/// Physical address of `rom[0]` in the low alias (real mode F000:0000).
pub const ROM_BASE: u32 = 0xF_0000;
/// Physical address of offset 0 of every data segment (DS, ES, FS, GS, SS).
pub const DATA_BASE: u32 = 0x1_0000;
/// Initial SP/ESP, an offset in the data window.
pub const STACK_TOP: u32 = 0xFFF0;
/// Deepest the stream lets the stack grow below [`STACK_TOP`], in bytes.
pub const MAX_DEPTH: u32 = 0x400;

/// Size of the data window: every data segment has limit 0xFFFF.
const WINDOW: u32 = 0x1_0000;
/// The filled part of the window, where base registers and string pointers point.
const HOT_START: u32 = 0x2000;
const HOT_LEN: u32 = 0x800;
/// Seeded dwords stored over the filled pattern.
const SEEDED_DWORDS: u32 = 8;

const GDT_OFF: usize = 0x00;
const GDTR_OFF: usize = 0x30;
const IDTR_OFF: usize = 0x38;
const HANDLER_OFF: usize = 0x40;
const IDT_OFF: usize = 0x80;
const ENTRY_OFF: usize = 0x200;
const COMMON_OFF: usize = 0x300;
/// The stream (and its final HLT) must end below this offset.
const STREAM_END: usize = 0xFF00;
const RESET_OFF: usize = 0xFFF0;
const HLT: u8 = 0xF4;
const VECTORS: usize = 32;

const SEL_CODE16: u16 = 0x08;
const SEL_CODE32: u16 = 0x10;
const SEL_DATA16: u16 = 0x18;
const SEL_DATA32: u16 = 0x20;
const SEL_CODE64: u16 = 0x28;
const SEL_FLAT: u16 = 0x30;

/// Long mode: the 32-bit code that turns paging and IA-32e on, and the tables at
/// the top of the image (preset accessed and dirty bits, so no walk writes them).
const LONG32_OFF: usize = 0x280;
const LONG_TABLES_OFF: usize = 0xC000;
const PML4_OFF: usize = 0xC000;
const PDPT_OFF: usize = 0xD000;
const PD_OFF: usize = 0xE000;
const IDT64_OFF: usize = 0xF000;
/// Long mode: the GS base the stub writes (IA32_GS_BASE); FS gets the data
/// descriptor's base, [`DATA_BASE`]. DS, ES and SS bases are ignored in 64-bit
/// mode, so the data window is linear `0..WINDOW` there.
const LONG_GS_BASE: u32 = 0x2_0000;

/// One stream slot in this many (protected modes) is a stack switch group.
const SWITCH_ODDS: u64 = 12;

/// Operand-building attempts for one table entry, and table picks for one stream slot.
const ATTEMPTS: usize = 8;
const PICKS: usize = 32;

const GPR8: [Register; 8] = [
    Register::AL,
    Register::CL,
    Register::DL,
    Register::BL,
    Register::AH,
    Register::CH,
    Register::DH,
    Register::BH,
];
const GPR16: [Register; 8] = [
    Register::AX,
    Register::CX,
    Register::DX,
    Register::BX,
    Register::SP,
    Register::BP,
    Register::SI,
    Register::DI,
];
const GPR32: [Register; 8] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::ESP,
    Register::EBP,
    Register::ESI,
    Register::EDI,
];
/// Registers a memory operand may have loaded right before it (not EBX, not ESP).
const PREPPABLE: [Register; 6] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBP,
    Register::ESI,
    Register::EDI,
];
/// 64-bit mode: the REX-only registers, by size.
const GPR8_REX: [Register; 16] = [
    Register::AL,
    Register::CL,
    Register::DL,
    Register::BL,
    Register::SPL,
    Register::BPL,
    Register::SIL,
    Register::DIL,
    Register::R8L,
    Register::R9L,
    Register::R10L,
    Register::R11L,
    Register::R12L,
    Register::R13L,
    Register::R14L,
    Register::R15L,
];
const GPR16_REX: [Register; 8] = [
    Register::R8W,
    Register::R9W,
    Register::R10W,
    Register::R11W,
    Register::R12W,
    Register::R13W,
    Register::R14W,
    Register::R15W,
];
const GPR32_REX: [Register; 8] = [
    Register::R8D,
    Register::R9D,
    Register::R10D,
    Register::R11D,
    Register::R12D,
    Register::R13D,
    Register::R14D,
    Register::R15D,
];
const GPR64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];
const XMMS: [Register; 16] = [
    Register::XMM0,
    Register::XMM1,
    Register::XMM2,
    Register::XMM3,
    Register::XMM4,
    Register::XMM5,
    Register::XMM6,
    Register::XMM7,
    Register::XMM8,
    Register::XMM9,
    Register::XMM10,
    Register::XMM11,
    Register::XMM12,
    Register::XMM13,
    Register::XMM14,
    Register::XMM15,
];
const SEGS: [Register; 6] = [
    Register::ES,
    Register::CS,
    Register::SS,
    Register::DS,
    Register::FS,
    Register::GS,
];

/// The CPU mode a random program runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Real mode, 16-bit code, segments at 0x1000.
    Real,
    /// Protected mode with a 16-bit code segment.
    Prot16,
    /// Protected mode with a flat 32-bit code segment.
    Prot32,
    /// Long mode (IA-32e) with a 64-bit code segment, identity-paged.
    Long,
}

impl Mode {
    /// Every mode, in the order `real`, `prot16`, `prot32`, `long`.
    pub const ALL: [Mode; 4] = [Mode::Real, Mode::Prot16, Mode::Prot32, Mode::Long];

    /// The code size of the stream: 16, 32 or 64.
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real | Mode::Prot16 => 16,
            Mode::Prot32 => 32,
            Mode::Long => 64,
        }
    }

    /// IP/EIP of a ROM offset once the stub has reached the stream's code segment.
    pub fn ip_of(self, rom_offset: u32) -> u32 {
        match self {
            Mode::Real | Mode::Prot16 => rom_offset,
            Mode::Prot32 | Mode::Long => ROM_BASE + rom_offset,
        }
    }

    fn code_size(self) -> CodeSize {
        match self {
            Mode::Real | Mode::Prot16 => CodeSize::Code16,
            Mode::Prot32 => CodeSize::Code32,
            Mode::Long => CodeSize::Code64,
        }
    }

    /// Where the stream (and its final HLT) must end: long mode keeps its page
    /// tables and IDT at the top of the image.
    fn stream_end(self) -> usize {
        match self {
            Mode::Long => LONG_TABLES_OFF,
            _ => STREAM_END,
        }
    }

    fn tag(self) -> u64 {
        match self {
            Mode::Real => 1,
            Mode::Prot16 => 2,
            Mode::Prot32 => 3,
            Mode::Long => 4,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Real => "real",
            Mode::Prot16 => "prot16",
            Mode::Prot32 => "prot32",
            Mode::Long => "long",
        })
    }
}

/// A mode name other than `real`, `prot16` or `prot32`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}` (expected real, prot16, prot32 or long)")]
pub struct ParseModeError(pub String);

impl FromStr for Mode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "real" => Ok(Mode::Real),
            "prot16" => Ok(Mode::Prot16),
            "prot32" => Ok(Mode::Prot32),
            "long" => Ok(Mode::Long),
            other => Err(ParseModeError(other.to_string())),
        }
    }
}

/// One generated program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The 64 KiB BIOS image.
    pub rom: Vec<u8>,
    /// Offset in `rom` of the first stream byte. Its linear address is
    /// `ROM_BASE + stream_start` in every mode; its IP is [`Mode::ip_of`] of it.
    pub stream_start: u32,
    /// Length of the stream in bytes: the random instructions and the MOVs that set up
    /// their operands. The final `hlt` is at `stream_start + stream_len`.
    pub stream_len: u32,
    /// Instructions the stub and the stream retire before the final `hlt`, counting
    /// every REP iteration (REPE/REPNE as if they ran their full count, a count of 0 as
    /// one). Exact unless a REPE/REPNE stops early or a fault ends the program sooner.
    pub insns: usize,
}

impl Program {
    /// The stream's bytes, without the final `hlt`.
    pub fn stream(&self) -> &[u8] {
        let start = self.stream_start as usize;
        let end = start + self.stream_len as usize;
        self.rom.get(start..end).unwrap_or(&[])
    }
}

/// Builds program `index` of `seed` for `mode`, with `len` random instructions (fewer
/// if the ROM fills up first; each comes with the MOVs that set up its operands).
pub fn generate(mode: Mode, seed: u64, index: u64, len: usize) -> Program {
    generate_with_stats(mode, seed, index, len, false).0
}

/// [`generate`], with SSE enabled by the stub (CR4.OSFXSR and OSXMMEXCPT set,
/// CR0.EM clear, XMM registers and MXCSR seeded) and SSE..SSE4.2 instructions in
/// the stream when `sse`.
pub fn generate_with(mode: Mode, seed: u64, index: u64, len: usize, sse: bool) -> Program {
    generate_with_stats(mode, seed, index, len, sse).0
}

/// What a generation did, for the tests.
#[derive(Clone, Debug, Default)]
#[cfg_attr(not(test), allow(dead_code))]
struct Stats {
    /// Table entries placed in the stream, in order.
    codes: Vec<Code>,
    /// Instructions iced refused to build or encode, or operands the generator could not
    /// fill (a generator bug if not 0).
    errors: usize,
}

fn generate_with_stats(
    mode: Mode,
    seed: u64,
    index: u64,
    len: usize,
    sse: bool,
) -> (Program, Stats) {
    let mut rng = Rng::new(mode, seed, index);
    if sse {
        // Another stream of the same seed: the SSE programs are their own set.
        rng.0 ^= 0x5EE5_5EE5_5EE5_5EE5;
    }
    let base = HOT_START + 0x300 + rng.below(0x200) as u32;
    let mut rom = vec![HLT; ROM_SIZE];
    write_tables(&mut rom, mode);

    let (entry, mut entry_insns) = entry_stub(mode, sse);
    place(&mut rom, ENTRY_OFF, &entry);
    if mode == Mode::Long {
        let (long32, n) = long_stub();
        place(&mut rom, LONG32_OFF, &long32);
        entry_insns += n;
    }
    let (common, common_insns) = common_stub(mode, &mut rng, base, sse);
    place(&mut rom, COMMON_OFF, &common);

    let stream_start = COMMON_OFF + common.len();
    let mut gen = Gen::new(mode, rng, base, stream_start);
    gen.sse = sse;
    gen.fill(len);
    place(&mut rom, stream_start, &gen.out);
    // The final HLT is already there: the image is filled with HLT.
    let reset = [0xEA, ENTRY_OFF as u8, (ENTRY_OFF >> 8) as u8, 0x00, 0xF0];
    place(&mut rom, RESET_OFF, &reset);

    let program = Program {
        rom,
        stream_start: stream_start as u32,
        stream_len: gen.out.len() as u32,
        insns: entry_insns + common_insns + gen.retired,
    };
    let stats = Stats {
        codes: gen.codes,
        errors: gen.errors,
    };
    (program, stats)
}

/// Copies `bytes` into the image; the layout constants (checked by the tests) keep
/// every piece inside it.
fn place(rom: &mut [u8], off: usize, bytes: &[u8]) {
    debug_assert!(off + bytes.len() <= rom.len(), "ROM piece past the end");
    if let Some(dst) = rom.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators").
struct Rng(u64);

impl Rng {
    fn new(mode: Mode, seed: u64, index: u64) -> Self {
        let mut r = Rng(seed);
        let a = r.next();
        let mut r = Rng(a ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let b = r.next();
        Rng(b ^ mode.tag().wrapping_mul(0x8CB9_2BA7_2F3D_8DD7))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    fn pick<T: Copy, const N: usize>(&mut self, items: &[T; N]) -> T {
        items[self.below(N as u64) as usize]
    }

    /// An immediate of `bits` bits, often a boundary value.
    fn imm(&mut self, bits: u32) -> u32 {
        let mask = if bits >= 32 {
            u32::MAX
        } else {
            (1 << bits) - 1
        };
        let sign = 1u32 << (bits - 1);
        let v = match self.below(8) {
            0 => 0,
            1 => 1,
            2 => u32::MAX,
            3 => sign,
            4 => sign - 1,
            5 => self.below(33) as u32,
            _ => self.next() as u32,
        };
        v & mask
    }

    /// A shift or rotate count: mostly 0..=33 so that every masking case shows up.
    fn count(&mut self) -> u8 {
        if self.chance(3, 4) {
            self.below(34) as u8
        } else {
            self.next() as u8
        }
    }

    /// An offset in the hot region, `margin` bytes from its ends.
    fn hot(&mut self, margin: u32) -> u32 {
        HOT_START + margin + self.below(u64::from(HOT_LEN - 2 * margin)) as u32
    }
}

// ---------------------------------------------------------------------------------
// ROM tables and stubs

/// A code or data segment descriptor (SDM vol. 3A §3.4.5).
fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> [u8; 8] {
    [
        limit as u8,
        (limit >> 8) as u8,
        base as u8,
        (base >> 8) as u8,
        (base >> 16) as u8,
        access,
        (flags << 4) | ((limit >> 16) as u8 & 0x0F),
        (base >> 24) as u8,
    ]
}

/// An interrupt gate (SDM vol. 3A §6.11): 0x86 16-bit, 0x8E 32-bit, DPL 0, present.
fn gate(offset: u32, selector: u16, type_attr: u8) -> [u8; 8] {
    [
        offset as u8,
        (offset >> 8) as u8,
        selector as u8,
        (selector >> 8) as u8,
        0,
        type_attr,
        (offset >> 16) as u8,
        (offset >> 24) as u8,
    ]
}

fn pseudo_descriptor(limit: u16, base: u32) -> [u8; 6] {
    let l = limit.to_le_bytes();
    let b = base.to_le_bytes();
    [l[0], l[1], b[0], b[1], b[2], b[3]]
}

fn write_tables(rom: &mut [u8], mode: Mode) {
    // Access 0x9B/0x93: present, DPL 0, code execute/read or data read/write, accessed.
    let mut gdt = vec![
        [0u8; 8],
        descriptor(ROM_BASE, 0xFFFF, 0x9B, 0x0),
        descriptor(0, 0xF_FFFF, 0x9B, 0xC),
        descriptor(DATA_BASE, 0xFFFF, 0x93, 0x0),
        descriptor(DATA_BASE, 0xFFFF, 0x93, 0x4),
    ];
    // Long mode has no 32-gate IDT at IDT_OFF: its longer GDT goes there.
    let mut at = GDT_OFF;
    if mode == Mode::Long {
        // 64-bit code: L=1, D=0 (SDM vol. 3A §5.2.1); flat data for DS, ES, SS.
        gdt.push(descriptor(0, 0xF_FFFF, 0x9B, 0xA));
        gdt.push(descriptor(0, 0xF_FFFF, 0x93, 0xC));
        at = IDT_OFF;
    }
    for (i, d) in gdt.iter().enumerate() {
        place(rom, at + 8 * i, d);
    }
    let gdt_limit = (8 * gdt.len() - 1) as u16;
    place(
        rom,
        GDTR_OFF,
        &pseudo_descriptor(gdt_limit, ROM_BASE + at as u32),
    );
    // hlt; jmp short back to the hlt.
    place(rom, HANDLER_OFF, &[HLT, 0xEB, 0xFD]);
    if mode == Mode::Long {
        write_long_tables(rom);
        return;
    }
    let idt_limit = (8 * VECTORS - 1) as u16;
    place(
        rom,
        IDTR_OFF,
        &pseudo_descriptor(idt_limit, ROM_BASE + IDT_OFF as u32),
    );
    let g = match mode {
        Mode::Real | Mode::Long => return,
        Mode::Prot16 => gate(HANDLER_OFF as u32, SEL_CODE16, 0x86),
        Mode::Prot32 => gate(ROM_BASE + HANDLER_OFF as u32, SEL_CODE32, 0x8E),
    };
    for v in 0..VECTORS {
        place(rom, IDT_OFF + 8 * v, &g);
    }
}

/// Long mode: 16-byte interrupt gates to the handler (SDM vol. 3A §6.14.1), and
/// 4-level page tables that identity-map the first 2 MiB with one large page (data
/// window, FS and GS windows, the ROM's low alias). Every entry has its accessed
/// bit (and the page its dirty bit) preset: the tables are in ROM.
fn write_long_tables(rom: &mut [u8]) {
    let idt_limit = (16 * VECTORS - 1) as u16;
    place(
        rom,
        IDTR_OFF,
        &pseudo_descriptor(idt_limit, ROM_BASE + IDT64_OFF as u32),
    );
    let handler = ROM_BASE + HANDLER_OFF as u32;
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&gate(handler, SEL_CODE64, 0x8E));
    for v in 0..VECTORS {
        place(rom, IDT64_OFF + 16 * v, &g);
    }
    // P | RW | A; the 2 MiB page also PS | D.
    let entry = |addr: u32, bits: u64| (u64::from(addr) | bits).to_le_bytes();
    place(rom, PML4_OFF, &entry(ROM_BASE + PDPT_OFF as u32, 0x23));
    place(rom, PDPT_OFF, &entry(ROM_BASE + PD_OFF as u32, 0x23));
    place(rom, PD_OFF, &entry(0, 0xE3));
    for off in [PML4_OFF, PDPT_OFF, PD_OFF] {
        // The image is filled with HLT (0xF4): clear the other 511 entries.
        place(rom, off + 8, &[0u8; 4096 - 8]);
    }
}

/// Long mode's 32-bit step (at `LONG32_OFF`, entered from the entry stub in
/// protected mode): CR4.PAE (and OSFXSR, OSXMMEXCPT), CR3, EFER.LME by WRMSR,
/// CR0.PG (CR0.MP set, EM clear), then a far jump to the 64-bit code segment
/// (SDM vol. 3A §10.8.5). Returns the bytes and instructions retired.
fn long_stub() -> (Vec<u8>, usize) {
    use iced_x86::code_asm::{cr0, cr3, cr4, eax, ecx, edx};
    const ASM: &str = "fixed long-mode stub template";
    let mut a = CodeAssembler::new(32).expect(ASM);
    a.mov(eax, cr4).expect(ASM);
    a.or(eax, 0x620).expect(ASM);
    a.mov(cr4, eax).expect(ASM);
    a.mov(eax, ROM_BASE + PML4_OFF as u32).expect(ASM);
    a.mov(cr3, eax).expect(ASM);
    a.mov(ecx, 0xC000_0080u32).expect(ASM);
    a.mov(eax, 0x100).expect(ASM);
    a.xor(edx, edx).expect(ASM);
    a.wrmsr().expect(ASM);
    a.mov(eax, cr0).expect(ASM);
    a.and(eax, !4i32).expect(ASM);
    a.or(eax, 0x8000_0002u32 as i32).expect(ASM);
    a.mov(cr0, eax).expect(ASM);
    let far =
        Instruction::with_far_branch(Code::Jmp_ptr1632, SEL_CODE64, ROM_BASE + COMMON_OFF as u32);
    a.add_instruction(far.expect(ASM)).expect(ASM);
    let n = a.instructions().len();
    (
        a.assemble((ROM_BASE + LONG32_OFF as u32).into())
            .expect(ASM),
        n,
    )
}

/// The real-mode code the reset vector jumps to: exception vectors, segments, and the
/// way to the common stub at `COMMON_OFF`. Returns the bytes and instructions retired.
fn entry_stub(mode: Mode, sse: bool) -> (Vec<u8>, usize) {
    use iced_x86::code_asm::{ax, cr0, cr4, cx, di, ds, eax, es, fs, gs, ptr, ss};
    const ASM: &str = "fixed entry stub template";
    let mut a = CodeAssembler::new(16).expect(ASM);
    a.cli().expect(ASM);
    let mut extra = 0;
    if sse && mode != Mode::Long {
        // SSE on (SDM vol. 3A §14.1.3): CR4.OSFXSR | OSXMMEXCPT, CR0.EM clear and
        // CR0.MP set. Long mode does it in its 32-bit step.
        a.mov(eax, cr4).expect(ASM);
        a.or(eax, 0x600).expect(ASM);
        a.mov(cr4, eax).expect(ASM);
        a.mov(eax, cr0).expect(ASM);
        a.and(eax, !4i32).expect(ASM);
        a.or(eax, 2).expect(ASM);
        a.mov(cr0, eax).expect(ASM);
    }
    match mode {
        Mode::Real => {
            a.cld().expect(ASM);
            a.xor(ax, ax).expect(ASM);
            a.mov(es, ax).expect(ASM);
            a.xor(di, di).expect(ASM);
            a.mov(eax, (0xF000u32 << 16) | HANDLER_OFF as u32)
                .expect(ASM);
            a.mov(cx, VECTORS as i32).expect(ASM);
            a.rep().stosd().expect(ASM);
            extra += VECTORS - 1;
            a.mov(ax, 0x1000).expect(ASM);
            for s in [ds, es, fs, gs, ss] {
                a.mov(s, ax).expect(ASM);
            }
            a.jmp(COMMON_OFF as u64).expect(ASM);
        }
        Mode::Prot16 | Mode::Prot32 | Mode::Long => {
            // 16-bit operand size: 24-bit bases, which reach the ROM at 0xF0000.
            a.lgdt(ptr(GDTR_OFF as u64).cs()).expect(ASM);
            a.lidt(ptr(IDTR_OFF as u64).cs()).expect(ASM);
            a.mov(eax, cr0).expect(ASM);
            a.or(eax, 1).expect(ASM);
            a.mov(cr0, eax).expect(ASM);
            let far = if mode == Mode::Prot16 {
                Instruction::with_far_branch(Code::Jmp_ptr1616, SEL_CODE16, COMMON_OFF as u32)
            } else if mode == Mode::Long {
                Instruction::with_far_branch(
                    Code::Jmp_ptr1632,
                    SEL_CODE32,
                    ROM_BASE + LONG32_OFF as u32,
                )
            } else {
                Instruction::with_far_branch(
                    Code::Jmp_ptr1632,
                    SEL_CODE32,
                    ROM_BASE + COMMON_OFF as u32,
                )
            };
            a.add_instruction(far.expect(ASM)).expect(ASM);
        }
    }
    let n = a.instructions().len() + extra;
    (a.assemble(ENTRY_OFF as u64).expect(ASM), n)
}

/// The stub in the stream's code size: data segments (protected and long modes),
/// stack, data pattern, seeded GPRs and flags, and with `sse` seeded XMM registers
/// and MXCSR. The stream follows it directly.
fn common_stub(mode: Mode, rng: &mut Rng, base: u32, sse: bool) -> (Vec<u8>, usize) {
    use iced_x86::code_asm::{
        ax, ds, dword_ptr, eax, ebp, ebx, ecx, edi, edx, es, esi, esp, fs, gs, r10, r11, r12, r13,
        r14, r15, r8, r9, rax, rbp, rcx, rdi, rdx, rsi, ss,
    };
    const ASM: &str = "fixed common stub template";
    let mut a = CodeAssembler::new(mode.bitness()).expect(ASM);
    let data_sel = match mode {
        Mode::Real => None,
        Mode::Prot16 => Some(SEL_DATA16),
        Mode::Prot32 | Mode::Long => Some(SEL_DATA32),
    };
    if let Some(sel) = data_sel {
        a.mov(ax, i32::from(sel)).expect(ASM);
        for s in [ds, es, fs, gs, ss] {
            a.mov(s, ax).expect(ASM);
        }
    }
    if mode == Mode::Long {
        // DS, ES and SS get a base of 0, which 64-bit mode uses whatever their
        // cached bases are (SDM vol. 3A §3.2.4). QEMU 10 adds the cached base of
        // an explicit ES/CS/SS/DS override in 64-bit mode; with a base of 0 that
        // deviation cannot show (see docs/difftest.md).
        a.mov(ax, i32::from(SEL_FLAT)).expect(ASM);
        for s in [ds, es, ss] {
            a.mov(s, ax).expect(ASM);
        }
        // IA32_GS_BASE (SDM vol. 4, MSR C000_0101H): GS-relative accesses land in
        // their own 64 KiB above the data window; FS has DATA_BASE from its load.
        a.mov(ecx, 0xC000_0101u32).expect(ASM);
        a.mov(eax, LONG_GS_BASE).expect(ASM);
        a.xor(edx, edx).expect(ASM);
        a.wrmsr().expect(ASM);
    }
    a.mov(esp, STACK_TOP).expect(ASM);
    a.cld().expect(ASM);
    a.mov(edi, HOT_START).expect(ASM);
    a.mov(ecx, HOT_LEN / 4).expect(ASM);
    a.mov(eax, rng.next() as u32).expect(ASM);
    a.rep().stosd().expect(ASM);
    let extra = (HOT_LEN / 4 - 1) as usize;
    for _ in 0..SEEDED_DWORDS {
        let off = HOT_START + 4 * rng.below(u64::from(HOT_LEN / 4)) as u32;
        a.mov(dword_ptr(u64::from(off)), rng.next() as u32 as i32)
            .expect(ASM);
    }
    if sse {
        sse_seed(&mut a, mode, rng);
    }
    if mode == Mode::Long {
        // Full 64-bit values, the new registers included.
        for r in [
            rax, rcx, rdx, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
        ] {
            a.mov(r, rng.next()).expect(ASM);
        }
    } else {
        for r in [eax, ecx, edx, ebp, esi, edi] {
            a.mov(r, rng.next() as u32).expect(ASM);
        }
    }
    a.mov(ebx, base).expect(ASM);
    // Arithmetic flags and DF seeded; bit 1 reads as 1; IF, TF, IOPL, NT, AC, ID clear.
    let flags = (rng.next() as u32 & 0x0CD5) | 0x2;
    if mode == Mode::Long {
        let push = Instruction::with1(Code::Pushq_imm32, flags).expect(ASM);
        a.add_instruction(push).expect(ASM);
        a.popfq().expect(ASM);
    } else {
        let push = Instruction::with1(Code::Pushd_imm32, flags).expect(ASM);
        a.add_instruction(push).expect(ASM);
        a.popfd().expect(ASM);
    }
    let _ = (esi, edi, ebp);
    let n = a.instructions().len() + extra;
    let ip = mode.ip_of(COMMON_OFF as u32);
    (a.assemble(u64::from(ip)).expect(ASM), n)
}

/// SSE seeding: [`SPECIAL_DWORDS`] floating-point specials stored over the hot
/// region (where memory operands point), every XMM register loaded from it, and
/// MXCSR loaded with a seeded rounding mode, FTZ and DAZ, exceptions masked.
fn sse_seed(a: &mut CodeAssembler, mode: Mode, rng: &mut Rng) {
    use iced_x86::code_asm::{
        dword_ptr, ptr, xmm0, xmm1, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15, xmm2, xmm3, xmm4,
        xmm5, xmm6, xmm7, xmm8, xmm9,
    };
    const ASM: &str = "fixed SSE seeding template";
    for k in 0..SPECIAL_DWORDS {
        let off = HOT_START + 4 * rng.below(u64::from(HOT_LEN / 4)) as u32;
        let v = if k % 2 == 0 {
            special_f32(rng)
        } else {
            // The high half of a double at an 8-byte boundary below.
            (special_f64(rng) >> 32) as u32
        };
        let off = if k % 2 == 1 { off | 4 } else { off };
        a.mov(dword_ptr(u64::from(off)), v as i32).expect(ASM);
    }
    let xmms = [
        xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13,
        xmm14, xmm15,
    ];
    let n = if mode == Mode::Long { 16 } else { 8 };
    for x in xmms.iter().take(n) {
        let off = HOT_START + 4 * rng.below(u64::from(HOT_LEN / 4 - 4)) as u32;
        a.movdqu(*x, ptr(u64::from(off))).expect(ASM);
    }
    let off = HOT_START + 4 * rng.below(u64::from(HOT_LEN / 4)) as u32;
    a.mov(dword_ptr(u64::from(off)), mxcsr_value(rng, false) as i32)
        .expect(ASM);
    a.ldmxcsr(dword_ptr(u64::from(off))).expect(ASM);
}

/// Floating-point specials stored by the SSE seeding.
const SPECIAL_DWORDS: u32 = 160;

/// An f32 bit pattern: zeros, infinities, quiet and signalling NaNs with payloads,
/// denormals, the normal extremes, small integers, values at the integer
/// conversion limits, or random bits.
fn special_f32(rng: &mut Rng) -> u32 {
    let sign = if rng.chance(1, 2) { 0x8000_0000 } else { 0 };
    let mag = match rng.below(12) {
        0 => 0,
        1 => 0x7F80_0000,
        2 => 0x7FC0_0000 | (rng.next() as u32 & 0x3F_FFFF),
        3 => 0x7F80_0001 | (rng.next() as u32 & 0x3F_FFFF),
        4 => 1 + (rng.next() as u32 & 0x7F_FFFE),
        5 => 0x0080_0000,
        6 => 0x7F7F_FFFF,
        7 => 0x3F80_0000,
        8 => 0x4F00_0000,
        9 => (rng.below(200) as f32).to_bits(),
        10 => ((rng.next() as u32 as f32) / 3.0).to_bits() & 0x7FFF_FFFF,
        _ => rng.next() as u32 & 0x7FFF_FFFF,
    };
    sign | mag
}

/// An f64 bit pattern of the same families as [`special_f32`].
fn special_f64(rng: &mut Rng) -> u64 {
    let sign = if rng.chance(1, 2) { 1 << 63 } else { 0 };
    let mag = match rng.below(12) {
        0 => 0,
        1 => 0x7FF0_0000_0000_0000,
        2 => 0x7FF8_0000_0000_0000 | (rng.next() & 0x7_FFFF_FFFF_FFFF),
        3 => 0x7FF0_0000_0000_0001 | (rng.next() & 0x7_FFFF_FFFF_FFFF),
        4 => 1 + (rng.next() & 0xF_FFFF_FFFF_FFFE),
        5 => 0x0010_0000_0000_0000,
        6 => 0x7FEF_FFFF_FFFF_FFFF,
        7 => 0x3FF0_0000_0000_0000,
        8 => 0x41E0_0000_0000_0000,
        9 => (rng.below(200) as f64).to_bits(),
        10 => ((rng.next() as f64) / 3.0).to_bits() & !(1 << 63),
        _ => rng.next() & !(1 << 63),
    };
    sign | mag
}

/// An MXCSR value (SDM vol. 1 §10.2.3): seeded RC, FTZ, DAZ and sticky flags, every
/// exception masked, or with `unmask` one time in four some unmasked (an #XM may
/// then end the program).
fn mxcsr_value(rng: &mut Rng, unmask: bool) -> u32 {
    let rc = (rng.below(4) as u32) << 13;
    let ftz = if rng.chance(1, 3) { 1 << 15 } else { 0 };
    let daz = if rng.chance(1, 3) { 1 << 6 } else { 0 };
    let sticky = if rng.chance(1, 4) {
        rng.next() as u32 & 0x3F
    } else {
        0
    };
    let masks = if unmask && rng.chance(1, 4) {
        0x1F80 & !((rng.next() as u32 & 0x3F) << 7)
    } else {
        0x1F80
    };
    rc | ftz | daz | sticky | masks
}

// ---------------------------------------------------------------------------------
// The instruction table

/// Every integer mnemonic the stream may use. Each contributes all of its legacy
/// encodings that are valid in the mode, need at most the CPU features in
/// [`FEATURES`] and have operands the generator knows how to fill.
const MNEMONICS: &[Mnemonic] = &[
    Mnemonic::Add,
    Mnemonic::Or,
    Mnemonic::Adc,
    Mnemonic::Sbb,
    Mnemonic::And,
    Mnemonic::Sub,
    Mnemonic::Xor,
    Mnemonic::Cmp,
    Mnemonic::Test,
    Mnemonic::Inc,
    Mnemonic::Dec,
    Mnemonic::Neg,
    Mnemonic::Not,
    Mnemonic::Mul,
    Mnemonic::Imul,
    Mnemonic::Div,
    Mnemonic::Idiv,
    Mnemonic::Rol,
    Mnemonic::Ror,
    Mnemonic::Rcl,
    Mnemonic::Rcr,
    Mnemonic::Shl,
    Mnemonic::Sal,
    Mnemonic::Shr,
    Mnemonic::Sar,
    Mnemonic::Shld,
    Mnemonic::Shrd,
    Mnemonic::Bt,
    Mnemonic::Bts,
    Mnemonic::Btr,
    Mnemonic::Btc,
    Mnemonic::Bsf,
    Mnemonic::Bsr,
    Mnemonic::Bswap,
    Mnemonic::Xadd,
    Mnemonic::Cmpxchg,
    Mnemonic::Cmpxchg8b,
    Mnemonic::Mov,
    Mnemonic::Movzx,
    Mnemonic::Movsx,
    Mnemonic::Xchg,
    Mnemonic::Lea,
    Mnemonic::Cbw,
    Mnemonic::Cwd,
    Mnemonic::Cwde,
    Mnemonic::Cdq,
    Mnemonic::Lahf,
    Mnemonic::Sahf,
    Mnemonic::Seto,
    Mnemonic::Setno,
    Mnemonic::Setb,
    Mnemonic::Setae,
    Mnemonic::Sete,
    Mnemonic::Setne,
    Mnemonic::Setbe,
    Mnemonic::Seta,
    Mnemonic::Sets,
    Mnemonic::Setns,
    Mnemonic::Setp,
    Mnemonic::Setnp,
    Mnemonic::Setl,
    Mnemonic::Setge,
    Mnemonic::Setle,
    Mnemonic::Setg,
    Mnemonic::Cmovo,
    Mnemonic::Cmovno,
    Mnemonic::Cmovb,
    Mnemonic::Cmovae,
    Mnemonic::Cmove,
    Mnemonic::Cmovne,
    Mnemonic::Cmovbe,
    Mnemonic::Cmova,
    Mnemonic::Cmovs,
    Mnemonic::Cmovns,
    Mnemonic::Cmovp,
    Mnemonic::Cmovnp,
    Mnemonic::Cmovl,
    Mnemonic::Cmovge,
    Mnemonic::Cmovle,
    Mnemonic::Cmovg,
    Mnemonic::Clc,
    Mnemonic::Stc,
    Mnemonic::Cmc,
    Mnemonic::Cld,
    Mnemonic::Std,
    Mnemonic::Daa,
    Mnemonic::Das,
    Mnemonic::Aaa,
    Mnemonic::Aas,
    Mnemonic::Aam,
    Mnemonic::Aad,
    Mnemonic::Salc,
    Mnemonic::Xlatb,
    Mnemonic::Push,
    Mnemonic::Pop,
    Mnemonic::Pusha,
    Mnemonic::Pushad,
    Mnemonic::Popa,
    Mnemonic::Popad,
    Mnemonic::Pushf,
    Mnemonic::Pushfd,
    Mnemonic::Enter,
    Mnemonic::Leave,
    Mnemonic::Nop,
    Mnemonic::Movsb,
    Mnemonic::Movsw,
    Mnemonic::Movsd,
    Mnemonic::Cmpsb,
    Mnemonic::Cmpsw,
    Mnemonic::Cmpsd,
    Mnemonic::Scasb,
    Mnemonic::Scasw,
    Mnemonic::Scasd,
    Mnemonic::Lodsb,
    Mnemonic::Lodsw,
    Mnemonic::Lodsd,
    Mnemonic::Stosb,
    Mnemonic::Stosw,
    Mnemonic::Stosd,
    Mnemonic::Jo,
    Mnemonic::Jno,
    Mnemonic::Jb,
    Mnemonic::Jae,
    Mnemonic::Je,
    Mnemonic::Jne,
    Mnemonic::Jbe,
    Mnemonic::Ja,
    Mnemonic::Js,
    Mnemonic::Jns,
    Mnemonic::Jp,
    Mnemonic::Jnp,
    Mnemonic::Jl,
    Mnemonic::Jge,
    Mnemonic::Jle,
    Mnemonic::Jg,
    Mnemonic::Jmp,
    Mnemonic::Loop,
    Mnemonic::Loope,
    Mnemonic::Loopne,
    Mnemonic::Jcxz,
    Mnemonic::Jecxz,
    // 64-bit mode's own forms.
    Mnemonic::Jrcxz,
    Mnemonic::Movsxd,
    Mnemonic::Cdqe,
    Mnemonic::Cqo,
    Mnemonic::Pushfq,
    Mnemonic::Movsq,
    Mnemonic::Cmpsq,
    Mnemonic::Scasq,
    Mnemonic::Lodsq,
    Mnemonic::Stosq,
];

/// The SSE..SSE4.2 features the SSE mix draws from (with POPCNT and the 64-bit
/// forms where the mode has them).
const SSE_FEATURES: &[CpuidFeature] = &[
    CpuidFeature::SSE,
    CpuidFeature::SSE2,
    CpuidFeature::SSE3,
    CpuidFeature::SSSE3,
    CpuidFeature::SSE4_1,
    CpuidFeature::SSE4_2,
    CpuidFeature::POPCNT,
    CpuidFeature::X64,
];

/// SSE-family mnemonics left out of the mix:
/// - RCPPS/RCPSS/RSQRTPS/RSQRTSS: approximations whose exact bits are
///   implementation-specific (SDM vol. 2B: relative error at most 1.5 * 2^-12),
///   so no two implementations need agree;
/// - MASKMOVDQU: stores through DS:(E/R)DI, which the stream does not point;
/// - MONITOR/MWAIT (SSE3's feature bit): waits, not computation;
/// - LDMXCSR: placed by its own group with a prepared value (see `Gen::ldmxcsr`).
const SSE_LEFT_OUT: &[Mnemonic] = &[
    Mnemonic::Rcpps,
    Mnemonic::Rcpss,
    Mnemonic::Rsqrtps,
    Mnemonic::Rsqrtss,
    Mnemonic::Maskmovdqu,
    Mnemonic::Monitor,
    Mnemonic::Mwait,
    Mnemonic::Ldmxcsr,
];

/// m128 operands of these need no alignment (SDM vol. 1 §11.6.4 lists the
/// unaligned forms; SSE4.2's string compares are unaligned, vol. 2B PCMPESTRI).
const SSE_UNALIGNED: &[Mnemonic] = &[
    Mnemonic::Movups,
    Mnemonic::Movupd,
    Mnemonic::Movdqu,
    Mnemonic::Lddqu,
    Mnemonic::Pcmpestri,
    Mnemonic::Pcmpestrm,
    Mnemonic::Pcmpistri,
    Mnemonic::Pcmpistrm,
];

/// The SSE table entries valid in `mode`, in iced's `Code` order.
fn sse_table(mode: Mode) -> Vec<Code> {
    Code::values()
        .filter(|&c| sse_admissible(c, mode))
        .collect()
}

fn sse_admissible(code: Code, mode: Mode) -> bool {
    let op = code.op_code();
    let in_mode = match mode.bitness() {
        16 => op.mode16(),
        32 => op.mode32(),
        _ => op.mode64(),
    };
    if op.encoding() != EncodingKind::Legacy || !in_mode {
        return false;
    }
    if SSE_LEFT_OUT.contains(&code.mnemonic()) {
        return false;
    }
    let mut probe = Instruction::default();
    probe.set_code(code);
    let f = probe.cpuid_features();
    if !f.iter().all(|f| SSE_FEATURES.contains(f)) || f.iter().all(|&f| f == CpuidFeature::X64) {
        return false;
    }
    (0..op.op_count()).all(|i| {
        let k = op.op_kind(i);
        matches!(
            k,
            K::xmm_reg
                | K::xmm_rm
                | K::xmm_or_mem
                | K::mem
                | K::r8_or_mem
                | K::r16_or_mem
                | K::r32_or_mem
                | K::r64_or_mem
                | K::r16_reg
                | K::r32_reg
                | K::r64_reg
                | K::r32_rm
                | K::r64_rm
                | K::imm8
        )
    })
}

/// What a Pentium Pro-class CPU without x87 offers (x86bt reports CX8 and CMOV).
const FEATURES: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL486,
    CpuidFeature::CX8,
    CpuidFeature::CMOV,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::X64,
];

/// The table entries valid in `mode`, in iced's `Code` order.
fn table(mode: Mode) -> Vec<Code> {
    Code::values().filter(|&c| admissible(c, mode)).collect()
}

fn admissible(code: Code, mode: Mode) -> bool {
    let op = code.op_code();
    let in_mode = match mode.bitness() {
        16 => op.mode16(),
        32 => op.mode32(),
        _ => op.mode64(),
    };
    if op.encoding() != EncodingKind::Legacy || !in_mode {
        return false;
    }
    let mnemonic = code.mnemonic();
    if !MNEMONICS.contains(&mnemonic) {
        return false;
    }
    if matches!(
        code,
        // BSWAP of a 16-bit register is undefined (SDM vol. 2A, BSWAP).
        Code::Bswap_r16
        // TEST r/m, imm as F6 /1 and F7 /1: Intel CPUs run them as TEST, but QEMU,
        // the reference, raises #UD, which would end every program that has one.
            | Code::Test_rm8_imm8_F6r1
            | Code::Test_rm16_imm16_F7r1
            | Code::Test_rm32_imm32_F7r1
            | Code::Test_rm64_imm32_F7r1
    ) {
        return false;
    }
    let mut probe = Instruction::default();
    probe.set_code(code);
    if !probe.cpuid_features().iter().all(|f| FEATURES.contains(f)) {
        return false;
    }
    (0..op.op_count()).all(|i| {
        let k = op.op_kind(i);
        match k {
            K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::mem
            | K::mem_offs
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_rm
            | K::r16_opcode
            | K::r32_reg
            | K::r32_rm
            | K::r32_opcode
            | K::al
            | K::cl
            | K::ax
            | K::dx
            | K::eax
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm16
            | K::imm32
            | K::r64_or_mem
            | K::r64_reg
            | K::r64_rm
            | K::r64_opcode
            | K::rax
            | K::imm8sex64
            | K::imm32sex64
            | K::imm64
            | K::seg_rSI
            | K::es_rDI
            | K::seg_rBX_al => mnemonic != Mnemonic::Jmp,
            // MOV r/m, Sreg reads a segment register; MOV Sreg, r/m is left out.
            K::seg_reg => i == 1,
            K::es | K::cs | K::ss | K::ds | K::fs | K::gs => mnemonic == Mnemonic::Push,
            K::br32_1 | K::br32_4 | K::br64_1 | K::br64_4 => true,
            // A 16-bit operand size truncates EIP, which is above 0xFFFF in 32-bit code.
            K::br16_1 | K::br16_2 => mode.bitness() == 16,
            _ => false,
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    String,
    Xlat,
    Enter,
    Leave,
    Popa,
}

fn kind(code: Code) -> Kind {
    use Mnemonic as M;
    match code.mnemonic() {
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Movsq
        | M::Cmpsq
        | M::Scasq
        | M::Lodsq
        | M::Stosq => Kind::String,
        M::Xlatb => Kind::Xlat,
        M::Enter => Kind::Enter,
        M::Leave => Kind::Leave,
        M::Popa | M::Popad => Kind::Popa,
        _ => Kind::Plain,
    }
}

// ---------------------------------------------------------------------------------
// The stream generator

/// Whether a group may touch memory and the stack, or only registers (between a
/// PUSHA and its POPA).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Free,
    RegOnly,
}

/// A table entry with its set-up instructions, ready to encode.
struct Group {
    code: Code,
    insns: Vec<Instruction>,
    /// Stack depth below `STACK_TOP` after the group.
    depth: u32,
    /// After a stack switch: whether SS is 32-bit, and the upper half of ESP.
    stack: Option<(bool, u32)>,
    retired: usize,
}

/// A memory operand and its effective address.
#[derive(Clone, Copy)]
struct Mem {
    base: Register,
    index: Register,
    scale: u32,
    disp: i64,
    displ_size: u32,
    seg: Register,
}

/// Registers an instruction has claimed (bit n = GPR32[n], then R8D..R15D), so
/// that the MOVs that set up its operands do not load one register twice.
type Pins = u16;

fn pin_bit(r: Register) -> Pins {
    let full = r.full_register32();
    GPR32
        .iter()
        .chain(GPR32_REX.iter())
        .position(|&g| g == full)
        .map_or(0, |n| 1 << n)
}

/// `r` (any size of a GPR) at `bits` bits.
fn sized(r: Register, bits: u32) -> Register {
    let full = r.full_register32();
    let n = GPR32
        .iter()
        .chain(GPR32_REX.iter())
        .position(|&g| g == full)
        .unwrap_or(0);
    match bits {
        16 => GPR16.iter().chain(GPR16_REX.iter()).nth(n).copied(),
        32 => GPR32.iter().chain(GPR32_REX.iter()).nth(n).copied(),
        _ => GPR64.get(n).copied(),
    }
    .unwrap_or(r)
}

fn writes(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

struct Gen {
    mode: Mode,
    rng: Rng,
    table: Vec<Code>,
    info: InstructionInfoFactory,
    base: u32,
    out: Vec<u8>,
    /// IP of the next stream byte.
    ip: u64,
    /// Room left for the stream, keeping a byte for the final HLT.
    room: usize,
    depth: u32,
    /// Whether SS is the 32-bit (B=1) stack descriptor.
    ss32: bool,
    /// The upper half of ESP: 0 on a 32-bit stack; on a 16-bit one, which uses
    /// only SP, whatever the last LSS ESP put there.
    esp_high: u32,
    retired: usize,
    codes: Vec<Code>,
    errors: usize,
    /// Whether SSE instructions join the stream (`--sse`).
    sse: bool,
    sse_table: Vec<Code>,
    /// 64-bit mode, for the instruction being built: whether it may use the
    /// REX-only registers (then not AH..BH, which no REX instruction can encode).
    rex: bool,
}

/// The ways a stack switch group loads SS (see [`Gen::stack_switch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Switch {
    MovSs,
    PopSs,
    Lss,
    PopSsAtTop,
}

impl Gen {
    fn new(mode: Mode, rng: Rng, base: u32, stream_start: usize) -> Self {
        Gen {
            mode,
            rng,
            table: table(mode),
            info: InstructionInfoFactory::new(),
            base,
            out: Vec::new(),
            ip: u64::from(mode.ip_of(stream_start as u32)),
            room: mode.stream_end().saturating_sub(stream_start + 1),
            depth: 0,
            ss32: matches!(mode, Mode::Prot32 | Mode::Long),
            esp_high: 0,
            retired: 0,
            codes: Vec::new(),
            errors: 0,
            sse: false,
            sse_table: sse_table(mode),
            rex: false,
        }
    }

    fn fill(&mut self, len: usize) {
        for _ in 0..len {
            // SS.B sizes the stack only in the protected modes (64-bit mode uses
            // RSP whatever SS says).
            let switch =
                matches!(self.mode, Mode::Prot16 | Mode::Prot32) && self.rng.chance(1, SWITCH_ODDS);
            let made = if switch {
                self.stack_switch().unwrap_or_else(|_| {
                    self.errors += 1;
                    None
                })
            } else if self.sse && self.rng.chance(1, 2) {
                self.sse_group()
            } else {
                None
            };
            let made = made.or_else(|| self.group(Ctx::Free));
            let Some(mut group) = made else {
                continue;
            };
            let Some(bytes) = self.encode(&mut group.insns) else {
                continue;
            };
            if self.out.len() + bytes.len() > self.room {
                break;
            }
            self.ip += bytes.len() as u64;
            self.out.extend_from_slice(&bytes);
            self.depth = group.depth;
            if let Some((ss32, high)) = group.stack {
                self.ss32 = ss32;
                self.esp_high = high;
            }
            self.retired += group.retired;
            self.codes.push(group.code);
        }
    }

    /// An SSE group: one time in 24 an LDMXCSR of a prepared value, else an entry of
    /// the SSE table.
    fn sse_group(&mut self) -> Option<Group> {
        if self.rng.chance(1, 24) {
            match self.ldmxcsr() {
                Ok(Some(g)) if self.acceptable(&g) => return Some(g),
                Ok(_) => {}
                Err(_) => self.errors += 1,
            }
        }
        for _ in 0..PICKS {
            let i = self.rng.below(self.sse_table.len() as u64) as usize;
            let code = *self.sse_table.get(i)?;
            for _ in 0..ATTEMPTS {
                match self.plain(code, Ctx::Free) {
                    Ok(Some(g)) if self.acceptable(&g) => return Some(g),
                    Ok(_) => {}
                    Err(_) => self.errors += 1,
                }
            }
        }
        None
    }

    /// `mov dword [m], value; ldmxcsr [m]`: a new rounding mode, FTZ and DAZ, and
    /// now and then unmasked exceptions.
    fn ldmxcsr(&mut self) -> Result<Option<Group>, IcedError> {
        self.rex = self.mode == Mode::Long && self.rng.chance(1, 2);
        let mut pins: Pins = 0;
        let mut insns = Vec::new();
        let Some(m) = self.mem(4, 0, 4, true, &mut pins, &mut insns)? else {
            return Ok(None);
        };
        if m.seg == Register::CS {
            return Ok(None);
        }
        let value = mxcsr_value(&mut self.rng, true);
        let mut mov = self.new_ins(Code::Mov_rm32_imm32);
        Self::set_mem(&mut mov, 0, &m)?;
        mov.try_set_op_kind(1, OpKind::Immediate32)?;
        mov.set_immediate32(value);
        let mut ld = self.new_ins(Code::Ldmxcsr_m32);
        Self::set_mem(&mut ld, 0, &m)?;
        insns.extend([mov, ld]);
        Ok(Some(self.group_of(Code::Ldmxcsr_m32, insns, self.depth)))
    }

    /// Picks table entries until one gives an acceptable group.
    fn group(&mut self, ctx: Ctx) -> Option<Group> {
        for _ in 0..PICKS {
            let i = self.rng.below(self.table.len() as u64) as usize;
            let code = *self.table.get(i)?;
            for _ in 0..ATTEMPTS {
                match self.build(code, ctx) {
                    Ok(Some(g)) if self.acceptable(&g) => return Some(g),
                    Ok(_) => {}
                    Err(_) => self.errors += 1,
                }
            }
        }
        None
    }

    fn build(&mut self, code: Code, ctx: Ctx) -> Result<Option<Group>, IcedError> {
        match (kind(code), ctx) {
            (Kind::Plain, _) => self.plain(code, ctx),
            (_, Ctx::RegOnly) => Ok(None),
            (Kind::String, Ctx::Free) => self.string(code),
            (Kind::Xlat, Ctx::Free) => self.xlat(code),
            (Kind::Enter, Ctx::Free) => self.enter(code),
            (Kind::Leave, Ctx::Free) => self.leave(code),
            (Kind::Popa, Ctx::Free) => self.popa(code),
        }
    }

    fn new_ins(&self, code: Code) -> Instruction {
        let mut ins = Instruction::default();
        ins.set_code(code);
        ins.set_code_size(self.mode.code_size());
        ins
    }

    fn mov_imm32(&self, reg: Register, value: u32) -> Result<Instruction, IcedError> {
        let mut ins = Instruction::with2(Code::Mov_r32_imm32, reg, value)?;
        ins.set_code_size(self.mode.code_size());
        Ok(ins)
    }

    fn group_of(&self, code: Code, insns: Vec<Instruction>, depth: u32) -> Group {
        Group {
            code,
            retired: insns.len(),
            insns,
            depth,
            stack: None,
        }
    }

    /// Address size of a memory access: the code size, or the other one (a 0x67
    /// prefix) one time in four.
    fn addr_size(&mut self) -> u32 {
        match (self.mode.bitness(), self.rng.chance(1, 4)) {
            (16, false) | (32, true) => 16,
            (64, false) => 64,
            _ => 32,
        }
    }

    fn seg_override(&mut self) -> Register {
        if self.rng.chance(1, 3) {
            self.rng.pick(&SEGS)
        } else {
            Register::None
        }
    }

    fn free_preppable(&mut self, pins: Pins) -> Option<Register> {
        let rex: &[Register] = if self.rex { &GPR32_REX } else { &[] };
        let free: Vec<Register> = PREPPABLE
            .iter()
            .chain(rex.iter())
            .copied()
            .filter(|&r| pin_bit(r) & pins == 0)
            .collect();
        free.get(self.rng.below(free.len() as u64) as usize)
            .copied()
    }

    /// A memory operand of `size` bytes whose effective address, `slack` bytes either
    /// side, lies in the data window. Loads its registers in `preps` and pins them.
    /// With `align` > 1 the address is a multiple of it (the displacement absorbs
    /// the rest).
    fn mem(
        &mut self,
        size: u32,
        slack: u32,
        align: u32,
        allow_esp: bool,
        pins: &mut Pins,
        preps: &mut Vec<Instruction>,
    ) -> Result<Option<Mem>, IcedError> {
        for _ in 0..ATTEMPTS {
            let mut p = *pins;
            let mut loads = Vec::new();
            let a = self.addr_size();
            let made = if a == 16 {
                self.mem16(&mut p, &mut loads)
            } else {
                self.mem32(a, allow_esp, &mut p, &mut loads)
            };
            let Some((mut mem, mut ea)) = made else {
                continue;
            };
            let off = ea % u64::from(align.max(1));
            if off != 0 {
                mem.disp -= off as i64;
                ea -= off;
                if mem.displ_size == 0 || (mem.displ_size == 1 && mem.disp < -0x80) {
                    mem.displ_size = if a == 16 { 2 } else { 4 };
                }
            }
            if ea >= u64::from(slack) && ea + u64::from(size + slack) <= u64::from(WINDOW) {
                for (r, v) in loads {
                    preps.push(self.mov_imm32(r, v)?);
                }
                *pins = p;
                return Ok(Some(mem));
            }
        }
        Ok(None)
    }

    /// 16-bit addressing: `[bx|bp + si|di + disp]`, `[si|di|bp|bx + disp]` or `[disp16]`.
    fn mem16(&mut self, pins: &mut Pins, loads: &mut Vec<(Register, u32)>) -> Option<(Mem, u64)> {
        use Register as R;
        let (base, index) = match self.rng.below(12) {
            0..=3 => (R::BX, R::None),
            4 => (R::BX, R::SI),
            5 => (R::BX, R::DI),
            6 => (R::BP, R::SI),
            7 => (R::BP, R::DI),
            8 => (R::SI, R::None),
            9 => (R::DI, R::None),
            10 => (R::BP, R::None),
            _ => (R::None, R::None),
        };
        let seg = self.seg_override();
        if base == R::None {
            let disp = self.rng.hot(0);
            let mem = Mem {
                base,
                index,
                scale: 1,
                disp: i64::from(disp),
                displ_size: 2,
                seg,
            };
            return Some((mem, u64::from(disp)));
        }
        let mut ea: i64 = 0;
        for (r, small) in [(base, false), (index, true)] {
            if r == R::None {
                continue;
            }
            let v = if r == R::BX {
                self.base
            } else {
                if pin_bit(r) & *pins != 0 {
                    return None;
                }
                *pins |= pin_bit(r);
                let v = if small {
                    self.rng.below(0x100) as u32
                } else {
                    self.rng.hot(0x100)
                };
                loads.push((r.full_register32(), v));
                v
            };
            ea += i64::from(v & 0xFFFF);
        }
        let (disp, displ_size) = match self.rng.below(3) {
            0 => (0, 0),
            1 => (self.rng.range(-0x80, 0x7F), 1),
            _ => (self.rng.range(-0x300, 0x300), 2),
        };
        let mem = Mem {
            base,
            index,
            scale: 1,
            disp,
            displ_size,
            seg,
        };
        Some((mem, ((ea + disp) & 0xFFFF) as u64))
    }

    /// 32-bit addressing: any base (EBX, ESP, a loaded register or none), an optional
    /// scaled index (a loaded small value, or EBX), and a displacement.
    fn mem32(
        &mut self,
        a: u32,
        allow_esp: bool,
        pins: &mut Pins,
        loads: &mut Vec<(Register, u32)>,
    ) -> Option<(Mem, u64)> {
        use Register as R;
        // On a 16-bit stack ESP's upper half may be anything: no [ESP] then.
        let allow_esp = allow_esp && self.esp_high == 0;
        let esp = STACK_TOP - self.depth;
        let base = match self.rng.below(10) {
            0..=3 => R::EBX,
            4..=6 => self.free_preppable(*pins)?,
            7 if allow_esp => R::ESP,
            7 => R::EBX,
            _ => R::None,
        };
        let mut ea: i64 = 0;
        match base {
            R::None => {}
            R::EBX => ea += i64::from(self.base),
            R::ESP => ea += i64::from(esp),
            r => {
                *pins |= pin_bit(r);
                let v = self.rng.hot(0x100);
                loads.push((r, v));
                ea += i64::from(v);
            }
        }
        let (index, scale) = if self.rng.chance(1, 2) {
            (R::None, 1)
        } else if self.rng.chance(1, 4) {
            (R::EBX, self.rng.pick(&[1, 2]))
        } else {
            (self.free_preppable(*pins)?, self.rng.pick(&[1, 2, 4, 8]))
        };
        match index {
            R::None => {}
            R::EBX => ea += i64::from(self.base) * i64::from(scale),
            r => {
                *pins |= pin_bit(r);
                let v = self.rng.below(0x80) as u32;
                loads.push((r, v));
                ea += i64::from(v) * i64::from(scale);
            }
        }
        let seg = self.seg_override();
        let (disp, displ_size) = if base == R::None {
            (i64::from(self.rng.hot(0)) - ea, 4)
        } else if base == R::ESP {
            (self.rng.range(-0x80, 0x8), self.rng.pick(&[1, 4]))
        } else {
            match self.rng.below(3) {
                0 => (0, 0),
                1 => (self.rng.range(-0x80, 0x7F), 1),
                _ => (self.rng.range(-0x300, 0x300), 4),
            }
        };
        let wide = |r: Register| if a == 64 { r.full_register() } else { r };
        let mem = Mem {
            base: wide(base),
            index: wide(index),
            scale,
            disp,
            displ_size,
            seg,
        };
        if a == 64 {
            // No wrap at 4 GiB: a negative sum is outside the window.
            return u64::try_from(ea + disp).ok().map(|ea| (mem, ea));
        }
        Some((mem, ((ea + disp) as u64) & 0xFFFF_FFFF))
    }

    fn set_mem(ins: &mut Instruction, i: u32, m: &Mem) -> Result<(), IcedError> {
        ins.try_set_op_kind(i, OpKind::Memory)?;
        ins.set_memory_base(m.base);
        ins.set_memory_index(m.index);
        ins.set_memory_index_scale(m.scale);
        ins.set_memory_displacement64(m.disp as u64);
        ins.set_memory_displ_size(m.displ_size);
        ins.set_segment_prefix(m.seg);
        Ok(())
    }

    fn set_reg(ins: &mut Instruction, i: u32, r: Register) -> Result<(), IcedError> {
        ins.try_set_op_kind(i, OpKind::Register)?;
        ins.try_set_op_register(i, r)
    }

    /// Any entry whose operands come from its op-code kinds: ALU, shifts, bit ops,
    /// MOVs, PUSH/POP, SETcc/CMOVcc, branches, flag and BCD instructions.
    fn plain(&mut self, code: Code, ctx: Ctx) -> Result<Option<Group>, IcedError> {
        use Mnemonic as M;
        let op = code.op_code();
        let kinds: Vec<K> = (0..op.op_count()).map(|i| op.op_kind(i)).collect();
        let mnemonic = code.mnemonic();
        let forced_mem = kinds.iter().position(|k| matches!(k, K::mem | K::mem_offs));
        if ctx == Ctx::RegOnly && forced_mem.is_some() {
            return Ok(None);
        }
        self.rex = self.mode == Mode::Long && self.rng.chance(1, 2);
        let rm = kinds.iter().position(|k| {
            matches!(
                k,
                K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem | K::xmm_or_mem
            )
        });
        let mem_slot = forced_mem.or(rm.filter(|_| ctx == Ctx::Free && self.rng.chance(1, 2)));

        let mut preps = Vec::new();
        let mut pins: Pins = 0;
        let mut fixed: [Option<Register>; 4] = [None; 4];
        let mut slack = 0;

        // DIV/IDIV: EAX and EDX are set up right before, so no memory register may be one.
        let is_div = matches!(mnemonic, M::Div | M::Idiv);
        let guard_div = is_div && !self.rng.chance(1, 64);
        if guard_div {
            pins |= pin_bit(Register::EAX) | pin_bit(Register::EDX);
        }
        // BT r/m, reg with memory: the bit offset reaches (offset >> 3) bytes away
        // (SDM vol. 2A, BT), so it gets a small value and the address some slack.
        let bt_reg = matches!(mnemonic, M::Bt | M::Bts | M::Btr | M::Btc)
            && mem_slot == Some(0)
            && matches!(kinds.get(1), Some(K::r16_reg | K::r32_reg | K::r64_reg));
        if bt_reg {
            let Some(r) = self.free_preppable(pins) else {
                return Ok(None);
            };
            pins |= pin_bit(r);
            let v = self.rng.range(-0x100, 0xFF) as i32 as u32;
            preps.push(self.mov_imm32(r, v)?);
            let bits = match kinds.get(1) {
                Some(K::r16_reg) => 16,
                Some(K::r64_reg) => 64,
                _ => 32,
            };
            fixed[1] = Some(sized(r, bits));
            slack = 0x40;
        }

        // RCL/RCR r/m8 and r/m16 by a non-zero multiple of 9 or 17: QEMU changes CF
        // where hardware changes nothing (`allow.rs`, rcl-rcr-full-turn), and the differ
        // stops at an allowed divergence; such counts are left out so that the rest of
        // the program is still compared. A CL count gets a MOV right before.
        let full_turn = match (mnemonic, kinds.first()) {
            (M::Rcl | M::Rcr, Some(K::r8_or_mem)) => Some(9),
            (M::Rcl | M::Rcr, Some(K::r16_or_mem)) => Some(17),
            _ => None,
        };
        if let (Some(turn), Some(K::cl)) = (full_turn, kinds.get(1)) {
            pins |= pin_bit(Register::ECX);
            let n = self.rotate_count(turn);
            let mut mov = Instruction::with2(Code::Mov_r8_imm8, Register::CL, u32::from(n))?;
            mov.set_code_size(self.mode.code_size());
            preps.push(mov);
        }

        let mem = match mem_slot {
            Some(slot) => {
                let size = op.memory_size().size() as u32;
                let allow_esp = mnemonic != M::Pop;
                let align = if size == 16 && !SSE_UNALIGNED.contains(&mnemonic) {
                    16
                } else {
                    1
                };
                let made = if kinds[slot] == K::mem_offs {
                    Some(self.moffs())
                } else {
                    self.mem(size, slack, align, allow_esp, &mut pins, &mut preps)?
                };
                let Some(m) = made else { return Ok(None) };
                Some((slot, m))
            }
            None => None,
        };

        let mut ins = self.new_ins(code);
        for (i, &k) in kinds.iter().enumerate() {
            let i = i as u32;
            if let Some((slot, m)) = mem {
                if slot as u32 == i {
                    Self::set_mem(&mut ins, i, &m)?;
                    continue;
                }
            }
            if let Some(r) = fixed.get(i as usize).copied().flatten() {
                Self::set_reg(&mut ins, i, r)?;
                continue;
            }
            if !self.operand(&mut ins, i, k, mnemonic, full_turn)? {
                // `admissible` lets no such kind in; count it as a generator bug.
                self.errors += 1;
                return Ok(None);
            }
        }
        if let Some((0, _)) = mem {
            if op.can_use_lock_prefix() && self.rng.chance(1, 4) {
                ins.set_has_lock_prefix(true);
            }
        }

        if guard_div {
            let Some(guard) = self.div_guard(&ins, kinds[0], mnemonic)? else {
                return Ok(None);
            };
            preps.extend(guard);
        }

        let inc = ins.stack_pointer_increment();
        if inc != 0 && ctx == Ctx::RegOnly {
            return Ok(None);
        }
        let depth = i64::from(self.depth) - i64::from(inc);
        if !(0..=i64::from(MAX_DEPTH)).contains(&depth) {
            return Ok(None);
        }
        preps.push(ins);
        Ok(Some(self.group_of(code, preps, depth as u32)))
    }

    /// Fills operand `i` of kind `k` with a random register, immediate or branch;
    /// `false` for a kind it does not know. `full_turn` is 9 or 17 for RCL/RCR of 8 or
    /// 16 bits, whose counts avoid its non-zero multiples.
    fn operand(
        &mut self,
        ins: &mut Instruction,
        i: u32,
        k: K,
        mnemonic: Mnemonic,
        full_turn: Option<u8>,
    ) -> Result<bool, IcedError> {
        use Mnemonic as M;
        let shift = matches!(
            mnemonic,
            M::Rol
                | M::Ror
                | M::Rcl
                | M::Rcr
                | M::Shl
                | M::Sal
                | M::Shr
                | M::Sar
                | M::Shld
                | M::Shrd
        );
        let rex = self.rex;
        let any = |rng: &mut Rng, legacy: &[Register; 8], more: &[Register; 8]| {
            if rex && rng.chance(1, 2) {
                rng.pick(more)
            } else {
                rng.pick(legacy)
            }
        };
        let reg = match k {
            K::r8_or_mem | K::r8_reg | K::r8_opcode if rex => Some(self.rng.pick(&GPR8_REX)),
            K::r8_or_mem | K::r8_reg | K::r8_opcode => Some(self.rng.pick(&GPR8)),
            K::r16_or_mem | K::r16_reg | K::r16_rm | K::r16_opcode => {
                Some(any(&mut self.rng, &GPR16, &GPR16_REX))
            }
            K::r32_or_mem | K::r32_reg | K::r32_rm | K::r32_opcode => {
                Some(any(&mut self.rng, &GPR32, &GPR32_REX))
            }
            K::r64_or_mem | K::r64_reg | K::r64_rm | K::r64_opcode => {
                let r = any(&mut self.rng, &GPR32, &GPR32_REX);
                Some(sized(r, 64))
            }
            K::xmm_reg | K::xmm_rm | K::xmm_or_mem => {
                let n = if self.mode == Mode::Long && rex {
                    16
                } else {
                    8
                };
                XMMS.get(self.rng.below(n) as usize).copied()
            }
            K::rax => Some(Register::RAX),
            K::imm8sex64 => {
                ins.try_set_op_kind(i, OpKind::Immediate8to64)?;
                ins.set_immediate8to64(i64::from(self.rng.imm(8) as u8 as i8));
                None
            }
            K::imm32sex64 => {
                ins.try_set_op_kind(i, OpKind::Immediate32to64)?;
                ins.set_immediate32to64(i64::from(self.rng.imm(32) as i32));
                None
            }
            K::imm64 => {
                ins.try_set_op_kind(i, OpKind::Immediate64)?;
                let v = if self.rng.chance(1, 2) {
                    u64::from(self.rng.imm(32))
                } else {
                    self.rng.next()
                };
                ins.set_immediate64(v);
                None
            }
            K::br64_1 | K::br64_4 => {
                ins.try_set_op_kind(i, OpKind::NearBranch64)?;
                None
            }
            K::seg_reg => Some(self.rng.pick(&SEGS)),
            K::al => Some(Register::AL),
            K::cl => Some(Register::CL),
            K::ax => Some(Register::AX),
            K::dx => Some(Register::DX),
            K::eax => Some(Register::EAX),
            K::es => Some(Register::ES),
            K::cs => Some(Register::CS),
            K::ss => Some(Register::SS),
            K::ds => Some(Register::DS),
            K::fs => Some(Register::FS),
            K::gs => Some(Register::GS),
            K::imm8_const_1 => {
                ins.try_set_op_kind(i, OpKind::Immediate8)?;
                ins.set_immediate8(1);
                None
            }
            K::imm8 => {
                let v = match mnemonic {
                    // Legacy-SSE compares: predicates 0-7 only (imm8[7:3] reserved,
                    // SDM vol. 2A CMPPS).
                    M::Cmpps | M::Cmppd | M::Cmpss | M::Cmpsd => self.rng.below(8) as u8,
                    // AAM divides by its immediate: 0 is #DE (SDM vol. 2A, AAM). QEMU
                    // divides by 0x80 and up as if negative (`allow.rs`, aam-imm8-high),
                    // so those are left out like the RCL/RCR counts above.
                    M::Aam | M::Aad if self.rng.chance(1, 2) => 10,
                    M::Aam => self.rng.range(1, 0x7F) as u8,
                    _ if shift => match full_turn {
                        Some(turn) => self.rotate_count(turn),
                        None => self.rng.count(),
                    },
                    _ => self.rng.imm(8) as u8,
                };
                ins.try_set_op_kind(i, OpKind::Immediate8)?;
                ins.set_immediate8(v);
                None
            }
            K::imm8sex16 => {
                ins.try_set_op_kind(i, OpKind::Immediate8to16)?;
                ins.set_immediate8to16(i16::from(self.rng.imm(8) as u8 as i8));
                None
            }
            K::imm8sex32 => {
                ins.try_set_op_kind(i, OpKind::Immediate8to32)?;
                ins.set_immediate8to32(i32::from(self.rng.imm(8) as u8 as i8));
                None
            }
            K::imm16 => {
                ins.try_set_op_kind(i, OpKind::Immediate16)?;
                ins.set_immediate16(self.rng.imm(16) as u16);
                None
            }
            K::imm32 => {
                ins.try_set_op_kind(i, OpKind::Immediate32)?;
                ins.set_immediate32(self.rng.imm(32));
                None
            }
            // The target is fixed to the next instruction when the group is encoded.
            K::br16_1 | K::br16_2 => {
                ins.try_set_op_kind(i, OpKind::NearBranch16)?;
                None
            }
            K::br32_1 | K::br32_4 => {
                ins.try_set_op_kind(i, OpKind::NearBranch32)?;
                None
            }
            _ => return Ok(false),
        };
        if let Some(r) = reg {
            Self::set_reg(ins, i, r)?;
        }
        Ok(true)
    }

    /// A shift count whose masked value is 0 or not a multiple of `turn`.
    fn rotate_count(&mut self, turn: u8) -> u8 {
        for _ in 0..ATTEMPTS {
            let c = self.rng.count();
            let masked = c & 0x1F;
            if masked == 0 || !masked.is_multiple_of(turn) {
                return c;
            }
        }
        1
    }

    /// `mov al/ax/eax, [moffs]` and back: an absolute offset in the hot region.
    fn moffs(&mut self) -> Mem {
        let displ_size = self.addr_size() / 8;
        Mem {
            base: Register::None,
            index: Register::None,
            scale: 1,
            disp: i64::from(self.rng.hot(0)),
            displ_size,
            seg: self.seg_override(),
        }
    }

    /// Set-up for DIV/IDIV (SDM vol. 2A, DIV and IDIV raise #DE on a zero divisor or a
    /// quotient too large): OR 1 into the divisor, then zero (DIV) or sign-extend
    /// (IDIV, via CBW/CWD/CDQ) the high half of the dividend. Only INT_MIN / -1 is left
    /// to fault. `None` if the divisor is the high half or a known zero.
    fn div_guard(
        &mut self,
        div: &Instruction,
        k: K,
        mnemonic: Mnemonic,
    ) -> Result<Option<Vec<Instruction>>, IcedError> {
        use Register as R;
        let bits = match k {
            K::r8_or_mem => 8,
            K::r16_or_mem => 16,
            K::r64_or_mem => 64,
            _ => 32,
        };
        let or_code = match bits {
            8 => Code::Or_rm8_imm8,
            16 => Code::Or_rm16_imm8,
            64 => Code::Or_rm64_imm8,
            _ => Code::Or_rm32_imm8,
        };
        let mut out = Vec::new();
        if div.op0_kind() == OpKind::Register {
            let r = div.op0_register();
            let full = r.full_register32();
            if r == R::AH || (bits > 8 && full == R::EDX) {
                return Ok(None);
            }
            if full == R::EBX || full == R::ESP {
                // Reserved registers are not written; their values are known.
                let known = if full == R::EBX {
                    self.base
                } else {
                    (self.esp_high << 16) | (STACK_TOP - self.depth)
                };
                let v = match r {
                    R::BL | R::SPL => known & 0xFF,
                    R::BH => (known >> 8) & 0xFF,
                    _ => known,
                };
                if v == 0 {
                    return Ok(None);
                }
            } else {
                let mut or = self.new_ins(or_code);
                Self::set_reg(&mut or, 0, r)?;
                Self::set_or_one(&mut or, bits)?;
                out.push(or);
            }
        } else {
            if div.memory_segment() == R::CS {
                return Ok(None);
            }
            let mut or = self.new_ins(or_code);
            let m = Mem {
                base: div.memory_base(),
                index: div.memory_index(),
                scale: div.memory_index_scale(),
                disp: div.memory_displacement64() as i64,
                displ_size: div.memory_displ_size(),
                seg: div.segment_prefix(),
            };
            Self::set_mem(&mut or, 0, &m)?;
            Self::set_or_one(&mut or, bits)?;
            out.push(or);
        }
        let mut high = match (mnemonic, bits) {
            (Mnemonic::Div, 8) => Instruction::with2(Code::Mov_r8_imm8, R::AH, 0u32)?,
            (Mnemonic::Div, 16) => Instruction::with2(Code::Mov_r16_imm16, R::DX, 0u32)?,
            (Mnemonic::Div, _) => Instruction::with2(Code::Mov_r32_imm32, R::EDX, 0u32)?,
            (_, 8) => Instruction::with(Code::Cbw),
            (_, 16) => Instruction::with(Code::Cwd),
            (_, 64) => Instruction::with(Code::Cqo),
            _ => Instruction::with(Code::Cdq),
        };
        high.set_code_size(self.mode.code_size());
        out.push(high);
        Ok(Some(out))
    }

    fn set_or_one(or: &mut Instruction, bits: u32) -> Result<(), IcedError> {
        match bits {
            8 => {
                or.try_set_op_kind(1, OpKind::Immediate8)?;
                or.set_immediate8(1);
            }
            16 => {
                or.try_set_op_kind(1, OpKind::Immediate8to16)?;
                or.set_immediate8to16(1);
            }
            64 => {
                or.try_set_op_kind(1, OpKind::Immediate8to64)?;
                or.set_immediate8to64(1);
            }
            _ => {
                or.try_set_op_kind(1, OpKind::Immediate8to32)?;
                or.set_immediate8to32(1);
            }
        }
        Ok(())
    }

    /// MOVS/CMPS/SCAS/LODS/STOS with or without REP/REPE/REPNE, SI/DI in the hot region
    /// and CX at most 16, so that the pointers move at most 64 bytes.
    fn string(&mut self, code: Code) -> Result<Option<Group>, IcedError> {
        use Code as C;
        use RepPrefixKind as Rep;
        let a = self.addr_size();
        let seg = self.seg_override();
        let plain_rep = if self.rng.chance(1, 2) {
            Rep::Repe
        } else {
            Rep::None
        };
        let cond_rep = self.rng.pick(&[Rep::None, Rep::Repe, Rep::Repne]);
        let (ins, src, dst, rep) = match code {
            C::Movsb_m8_m8 => (
                Instruction::with_movsb(a, seg, plain_rep)?,
                true,
                true,
                plain_rep,
            ),
            C::Movsw_m16_m16 => (
                Instruction::with_movsw(a, seg, plain_rep)?,
                true,
                true,
                plain_rep,
            ),
            C::Movsd_m32_m32 => (
                Instruction::with_movsd(a, seg, plain_rep)?,
                true,
                true,
                plain_rep,
            ),
            C::Cmpsb_m8_m8 => (
                Instruction::with_cmpsb(a, seg, cond_rep)?,
                true,
                true,
                cond_rep,
            ),
            C::Cmpsw_m16_m16 => (
                Instruction::with_cmpsw(a, seg, cond_rep)?,
                true,
                true,
                cond_rep,
            ),
            C::Cmpsd_m32_m32 => (
                Instruction::with_cmpsd(a, seg, cond_rep)?,
                true,
                true,
                cond_rep,
            ),
            C::Scasb_AL_m8 => (Instruction::with_scasb(a, cond_rep)?, false, true, cond_rep),
            C::Scasw_AX_m16 => (Instruction::with_scasw(a, cond_rep)?, false, true, cond_rep),
            C::Scasd_EAX_m32 => (Instruction::with_scasd(a, cond_rep)?, false, true, cond_rep),
            C::Lodsb_AL_m8 => (
                Instruction::with_lodsb(a, seg, plain_rep)?,
                true,
                false,
                plain_rep,
            ),
            C::Lodsw_AX_m16 => (
                Instruction::with_lodsw(a, seg, plain_rep)?,
                true,
                false,
                plain_rep,
            ),
            C::Lodsd_EAX_m32 => (
                Instruction::with_lodsd(a, seg, plain_rep)?,
                true,
                false,
                plain_rep,
            ),
            C::Stosb_m8_AL => (
                Instruction::with_stosb(a, plain_rep)?,
                false,
                true,
                plain_rep,
            ),
            C::Stosw_m16_AX => (
                Instruction::with_stosw(a, plain_rep)?,
                false,
                true,
                plain_rep,
            ),
            C::Stosd_m32_EAX => (
                Instruction::with_stosd(a, plain_rep)?,
                false,
                true,
                plain_rep,
            ),
            C::Movsq_m64_m64 => (
                Instruction::with_movsq(a, seg, plain_rep)?,
                true,
                true,
                plain_rep,
            ),
            C::Cmpsq_m64_m64 => (
                Instruction::with_cmpsq(a, seg, cond_rep)?,
                true,
                true,
                cond_rep,
            ),
            C::Scasq_RAX_m64 => (Instruction::with_scasq(a, cond_rep)?, false, true, cond_rep),
            C::Lodsq_RAX_m64 => (
                Instruction::with_lodsq(a, seg, plain_rep)?,
                true,
                false,
                plain_rep,
            ),
            C::Stosq_m64_RAX => (
                Instruction::with_stosq(a, plain_rep)?,
                false,
                true,
                plain_rep,
            ),
            _ => return Ok(None),
        };
        let mut insns = Vec::new();
        if src {
            let v = self.rng.hot(0x80);
            insns.push(self.mov_imm32(Register::ESI, v)?);
        }
        if dst {
            let v = self.rng.hot(0x80);
            insns.push(self.mov_imm32(Register::EDI, v)?);
        }
        let mut iterations = 1;
        if rep != Rep::None {
            let count = self.rng.below(17) as u32;
            insns.push(self.mov_imm32(Register::ECX, count)?);
            iterations = count.max(1) as usize;
        }
        let mut ins = ins;
        ins.set_code_size(self.mode.code_size());
        insns.push(ins);
        let mut g = self.group_of(code, insns, self.depth);
        g.retired += iterations - 1;
        Ok(Some(g))
    }

    /// XLAT: AL = [seg:(E)BX + AL], which stays in the window because EBX does.
    fn xlat(&mut self, code: Code) -> Result<Option<Group>, IcedError> {
        let base = match self.addr_size() {
            16 => Register::BX,
            64 => Register::RBX,
            _ => Register::EBX,
        };
        let mut ins = self.new_ins(code);
        let m = Mem {
            base,
            index: Register::AL,
            scale: 1,
            disp: 0,
            displ_size: 0,
            seg: self.seg_override(),
        };
        Self::set_mem(&mut ins, 0, &m)?;
        Ok(Some(self.group_of(code, vec![ins], self.depth)))
    }

    /// ENTER size, level: `1 + level` pushes (one for level 0) and `size` bytes
    /// (SDM vol. 2A, ENTER); levels of 2 or more copy frame pointers from [EBP - n],
    /// so EBP is loaded with a window offset first.
    fn enter(&mut self, code: Code) -> Result<Option<Group>, IcedError> {
        let opsize: u32 = match code {
            Code::Enterd_imm16_imm8 => 4,
            Code::Enterq_imm16_imm8 => 8,
            _ => 2,
        };
        let size = self.rng.below(0x41) as u32;
        let level = self.rng.pick(&[0u32, 0, 1, 1, 2, 3]);
        let pushes = if level == 0 { 1 } else { level + 1 };
        let depth = self.depth + opsize * pushes + size;
        if depth > MAX_DEPTH {
            return Ok(None);
        }
        let mut insns = Vec::new();
        if level >= 2 {
            let v = self.rng.hot(0x40);
            insns.push(self.mov_imm32(Register::EBP, v)?);
        }
        let mut ins = self.new_ins(code);
        ins.try_set_op_kind(0, OpKind::Immediate16)?;
        ins.set_immediate16(size as u16);
        ins.try_set_op_kind(1, OpKind::Immediate8_2nd)?;
        ins.set_immediate8_2nd(level as u8);
        insns.push(ins);
        Ok(Some(self.group_of(code, insns, depth)))
    }

    /// `mov ebp, esp; leave`: LEAVE sets ESP from EBP, so EBP must be known first.
    fn leave(&mut self, code: Code) -> Result<Option<Group>, IcedError> {
        let opsize: u32 = match code {
            Code::Leaved => 4,
            Code::Leaveq => 8,
            _ => 2,
        };
        if self.depth < opsize {
            return Ok(None);
        }
        let mut mov = Instruction::with2(Code::Mov_r32_rm32, Register::EBP, Register::ESP)?;
        mov.set_code_size(self.mode.code_size());
        let ins = self.new_ins(code);
        Ok(Some(self.group_of(
            code,
            vec![mov, ins],
            self.depth - opsize,
        )))
    }

    /// PUSHA, up to two register-only instructions, POPA of the same size. POPA loads
    /// EBX back from the slot its PUSHA filled, so the base register survives, while
    /// the other registers show whether POPA restores them from the right slots.
    fn popa(&mut self, code: Code) -> Result<Option<Group>, IcedError> {
        let (push, opsize) = if code == Code::Popad {
            (Code::Pushad, 4)
        } else {
            (Code::Pushaw, 2)
        };
        if self.depth + 8 * opsize > MAX_DEPTH {
            return Ok(None);
        }
        let mut insns = vec![self.new_ins(push)];
        let mut retired = 2;
        for _ in 0..self.rng.below(3) {
            if let Some(g) = self.group(Ctx::RegOnly) {
                retired += g.retired;
                insns.extend(g.insns);
            }
        }
        insns.push(self.pop_ss(code)?);
        let mut g = self.group_of(code, insns, self.depth);
        g.retired = retired;
        Ok(Some(g))
    }

    /// A group that loads SS with the 16-bit (B=0) or the 32-bit (B=1) stack
    /// descriptor, both over the data window (SDM vol. 3A §3.4.5: B sizes the
    /// stack pointer, SP or ESP, of implicit stack accesses):
    /// - MOV SS, r16/r32 from a loaded register;
    /// - PUSH imm (16 or 32 bits) of the selector, then POP SS (16 or 32 bits),
    ///   whose ESP increment is sized by the old SS (SDM vol. 2B, POP);
    /// - LSS SP/ESP from a far pointer stored in the hot region, which may also
    ///   move the stack pointer anywhere in `0..=MAX_DEPTH` below [`STACK_TOP`];
    /// - POP SS at the top of the segment: LSS puts the stack pointer at
    ///   0x10000 minus the POP's size, the POP SS there ends at 0x10000 from a
    ///   32-bit old stack and wraps SP to 0 from a 16-bit one, and an LSS ESP
    ///   right after brings the stack back to its depth.
    fn stack_switch(&mut self) -> Result<Option<Group>, IcedError> {
        let sel = |b: bool| u32::from(if b { SEL_DATA32 } else { SEL_DATA16 });
        let new32 = self.rng.chance(1, 2);
        let kind = self.rng.pick(&[
            Switch::MovSs,
            Switch::MovSs,
            Switch::PopSs,
            Switch::PopSs,
            Switch::Lss,
            Switch::Lss,
            Switch::Lss,
            Switch::PopSsAtTop,
        ]);
        // A 32-bit stack needs a clean ESP: with garbage in its upper half, only
        // an LSS ESP (which replaces it) may switch to one.
        let keeps_high = matches!(kind, Switch::MovSs | Switch::PopSs);
        let new32 = new32 && !(keeps_high && self.esp_high != 0);
        let mut high = self.esp_high;
        let mut insns = Vec::new();
        let mut depth = self.depth;
        let code = match kind {
            Switch::MovSs => {
                let Some(r) = self.free_preppable(0) else {
                    return Ok(None);
                };
                insns.push(self.mov_imm32(r, sel(new32))?);
                let i = GPR32.iter().position(|&g| g == r).unwrap_or(0);
                let (code, src) = if self.rng.chance(1, 2) {
                    (Code::Mov_Sreg_rm16, GPR16[i])
                } else {
                    (Code::Mov_Sreg_r32m16, r)
                };
                let mut mov = Instruction::with2(code, Register::SS, src)?;
                mov.set_code_size(self.mode.code_size());
                insns.push(mov);
                code
            }
            Switch::PopSs => {
                let push32 = self.rng.chance(1, 2);
                let pop32 = self.rng.chance(1, 2);
                let (pushed, popped) = (if push32 { 4 } else { 2 }, if pop32 { 4 } else { 2 });
                if depth + pushed > MAX_DEPTH || depth + pushed < popped {
                    return Ok(None);
                }
                let push = if push32 {
                    Code::Pushd_imm32
                } else {
                    Code::Push_imm16
                };
                let mut push = Instruction::with1(push, sel(new32))?;
                push.set_code_size(self.mode.code_size());
                insns.push(push);
                let code = if pop32 { Code::Popd_SS } else { Code::Popw_SS };
                insns.push(self.pop_ss(code)?);
                depth = depth + pushed - popped;
                code
            }
            Switch::Lss => {
                // LSS SP (m16:16) keeps ESP's upper half, so only LSS ESP may
                // switch to a 32-bit stack while it is not clean.
                let lss32 = self.rng.chance(1, 2) || (new32 && self.esp_high != 0);
                depth = 2 * self.rng.below(u64::from(MAX_DEPTH / 2) + 1) as u32;
                let offset = if lss32 {
                    high = self.esp_garbage(new32);
                    (high << 16) | (STACK_TOP - depth)
                } else {
                    STACK_TOP - depth
                };
                self.lss(&mut insns, lss32, offset, sel(new32))?
            }
            Switch::PopSsAtTop => {
                let pop32 = self.rng.chance(1, 2);
                let size = if pop32 { 4 } else { 2 };
                let top = WINDOW - size;
                // The new selector at the top of the window, through DS (same base).
                let (code, disp_size) = match (pop32, self.mode.bitness()) {
                    (true, 16) => (Code::Mov_rm32_imm32, 2),
                    (true, _) => (Code::Mov_rm32_imm32, 4),
                    (false, 16) => (Code::Mov_rm16_imm16, 2),
                    (false, _) => (Code::Mov_rm16_imm16, 4),
                };
                let mut store = self.new_ins(code);
                let m = Mem {
                    base: Register::None,
                    index: Register::None,
                    scale: 1,
                    disp: i64::from(top),
                    displ_size: disp_size,
                    seg: Register::None,
                };
                Self::set_mem(&mut store, 0, &m)?;
                if pop32 {
                    store.try_set_op_kind(1, OpKind::Immediate32)?;
                    store.set_immediate32(sel(new32));
                } else {
                    store.try_set_op_kind(1, OpKind::Immediate16)?;
                    store.set_immediate16(sel(new32) as u16);
                }
                insns.push(store);
                let old32 = self.rng.chance(1, 2);
                self.lss(&mut insns, true, top, sel(old32))?;
                let code = if pop32 { Code::Popd_SS } else { Code::Popw_SS };
                insns.push(self.pop_ss(code)?);
                let back32 = self.rng.chance(1, 2);
                let high = self.esp_garbage(back32);
                self.lss(
                    &mut insns,
                    true,
                    (high << 16) | (STACK_TOP - depth),
                    sel(back32),
                )?;
                let mut g = self.group_of(code, insns, depth);
                g.stack = Some((back32, high));
                return Ok(Some(g));
            }
        };
        let mut g = self.group_of(code, insns, depth);
        g.stack = Some((new32, high));
        Ok(Some(g))
    }

    /// The upper half of ESP that an LSS ESP loads: 0 for a 32-bit stack; for a
    /// 16-bit one, which ignores it, a random value half of the time.
    fn esp_garbage(&mut self, ss32: bool) -> u32 {
        if ss32 || self.rng.chance(1, 2) {
            0
        } else {
            self.rng.imm(16)
        }
    }

    /// POP SS of 16 or 32 bits.
    fn pop_ss(&self, code: Code) -> Result<Instruction, IcedError> {
        let mut pop = Instruction::with1(code, Register::SS)?;
        pop.set_code_size(self.mode.code_size());
        Ok(pop)
    }

    /// Stores the far pointer `selector:offset` at [EBX + disp] in the hot region
    /// and loads it with LSS (m16:32 when `wide`, else m16:16, which loads SP and
    /// keeps the upper half of ESP). Returns the LSS code.
    fn lss(
        &mut self,
        insns: &mut Vec<Instruction>,
        wide: bool,
        offset: u32,
        selector: u32,
    ) -> Result<Code, IcedError> {
        let disp = self.rng.range(-0x100, 0x100);
        let at = |d: i64| Mem {
            base: Register::EBX,
            index: Register::None,
            scale: 1,
            disp: d,
            displ_size: 4,
            seg: Register::None,
        };
        let (off_code, off_kind, width, lss) = if wide {
            (
                Code::Mov_rm32_imm32,
                OpKind::Immediate32,
                4,
                Code::Lss_r32_m1632,
            )
        } else {
            (
                Code::Mov_rm16_imm16,
                OpKind::Immediate16,
                2,
                Code::Lss_r16_m1616,
            )
        };
        let mut off = self.new_ins(off_code);
        Self::set_mem(&mut off, 0, &at(disp))?;
        off.try_set_op_kind(1, off_kind)?;
        if wide {
            off.set_immediate32(offset);
        } else {
            off.set_immediate16(offset as u16);
        }
        let mut sel = self.new_ins(Code::Mov_rm16_imm16);
        Self::set_mem(&mut sel, 0, &at(disp + width))?;
        sel.try_set_op_kind(1, OpKind::Immediate16)?;
        sel.set_immediate16(selector as u16);
        let mut load = self.new_ins(lss);
        let sp = if wide { Register::ESP } else { Register::SP };
        Self::set_reg(&mut load, 0, sp)?;
        Self::set_mem(&mut load, 1, &at(disp))?;
        insns.extend([off, sel, load]);
        Ok(lss)
    }

    /// The stream's rules that hold for every instruction of a group: EBX written only
    /// by POPA, ESP only by stack instructions (and never as an explicit operand), and
    /// nothing written through CS.
    fn acceptable(&mut self, g: &Group) -> bool {
        for ins in &g.insns {
            let popa = matches!(ins.code(), Code::Popaw | Code::Popad);
            let stack = ins.is_stack_instruction();
            let info = self.info.info(ins);
            for u in info.used_registers() {
                if !writes(u.access()) {
                    continue;
                }
                let full = u.register().full_register32();
                if (full == Register::EBX && !popa) || (full == Register::ESP && !stack) {
                    return false;
                }
            }
            for m in info.used_memory() {
                if m.segment() == Register::CS && writes(m.access()) {
                    return false;
                }
            }
            for i in 0..ins.op_count() {
                if ins.op_kind(i) == OpKind::Register
                    && ins.op_register(i).full_register32() == Register::ESP
                    && info.try_op_access(i).map_or(true, writes)
                {
                    return false;
                }
            }
        }
        true
    }

    /// Encodes a group at the current IP; branches get the next instruction as target.
    fn encode(&mut self, insns: &mut [Instruction]) -> Option<Vec<u8>> {
        match self.try_encode(insns) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                self.errors += 1;
                None
            }
        }
    }

    fn try_encode(&self, insns: &mut [Instruction]) -> Result<Vec<u8>, IcedError> {
        let bitness = self.mode.bitness();
        let mut enc = Encoder::try_new(bitness)?;
        let mut ip = self.ip;
        for ins in insns.iter_mut() {
            let branch = ins.op0_kind();
            if matches!(
                branch,
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) {
                // The length does not depend on the target: the rel8/rel16/rel32 form
                // is fixed by the code and a zero displacement always fits.
                let mut probe = Encoder::try_new(bitness)?;
                set_target(ins, ip);
                let len = probe.encode(ins, ip)?;
                set_target(ins, ip + len as u64);
            }
            ip += enc.encode(ins, ip)? as u64;
        }
        Ok(enc.take_buffer())
    }
}

fn set_target(ins: &mut Instruction, target: u64) {
    if ins.op0_kind() == OpKind::NearBranch16 {
        ins.set_near_branch16(target as u16);
    } else if ins.op0_kind() == OpKind::NearBranch64 {
        ins.set_near_branch64(target);
    } else {
        ins.set_near_branch32(target as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};
    use std::collections::HashSet;

    fn decode_stream(p: &Program, mode: Mode) -> Vec<Instruction> {
        let ip = u64::from(mode.ip_of(p.stream_start));
        let mut d = Decoder::with_ip(mode.bitness(), p.stream(), ip, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            out.push(d.decode());
        }
        out
    }

    #[test]
    fn generate_same_inputs_give_identical_roms() {
        for mode in Mode::ALL {
            assert_eq!(generate(mode, 7, 3, 200), generate(mode, 7, 3, 200));
        }
    }

    #[test]
    fn generate_different_indices_seeds_and_modes_differ() {
        let a = generate(Mode::Real, 7, 3, 50);
        assert_ne!(a.rom, generate(Mode::Real, 7, 4, 50).rom);
        assert_ne!(a.rom, generate(Mode::Real, 8, 3, 50).rom);
        assert_ne!(a.rom, generate(Mode::Prot16, 7, 3, 50).rom);
    }

    #[test]
    fn mode_names_round_trip_and_unknown_is_an_error() {
        for mode in Mode::ALL {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
        }
        assert!("v86".parse::<Mode>().is_err());
    }

    #[test]
    fn reset_vector_is_a_far_jmp_into_the_entry_stub() {
        for mode in Mode::ALL {
            let p = generate(mode, 1, 0, 10);
            assert_eq!(p.rom.len(), ROM_SIZE);
            let mut d = Decoder::with_ip(16, &p.rom[RESET_OFF..], 0xFFF0, DecoderOptions::NONE);
            let j = d.decode();
            assert_eq!(j.code(), Code::Jmp_ptr1616);
            assert_eq!(j.far_branch_selector(), 0xF000);
            assert_eq!(j.far_branch16() as usize, ENTRY_OFF);
        }
    }

    #[test]
    fn stubs_fit_their_slots_and_stream_ends_with_hlt() {
        for mode in Mode::ALL {
            let (entry, _) = entry_stub(mode, true);
            let end = if mode == Mode::Long {
                LONG32_OFF
            } else {
                COMMON_OFF
            };
            assert!(ENTRY_OFF + entry.len() <= end, "{mode}");
            for len in [0, 1, 300] {
                let p = generate(mode, 5, len as u64, len);
                let end = (p.stream_start + p.stream_len) as usize;
                assert!(end < STREAM_END);
                assert_eq!(p.rom[end], HLT);
                assert!(p.insns > len);
            }
        }
    }

    #[test]
    fn generate_huge_len_stops_when_the_rom_is_full() {
        let p = generate(Mode::Prot32, 2, 0, 100_000);
        assert!((p.stream_start + p.stream_len) as usize <= STREAM_END);
        assert!(p.stream_len > 0xE000);
        assert_eq!(p.rom[RESET_OFF], 0xEA);
    }

    #[test]
    fn generate_stream_places_every_requested_instruction() {
        for mode in Mode::ALL {
            for index in 0..20 {
                let (_, stats) = generate_with_stats(mode, 11, index, 150, false);
                // Long mode: a slot whose PICKS all fail is skipped (its group
                // rules refuse more 64-bit picks); most are placed.
                if mode == Mode::Long {
                    assert!(stats.codes.len() >= 120, "{mode} {index}");
                } else {
                    assert_eq!(stats.codes.len(), 150, "{mode} {index}");
                    assert_eq!(stats.errors, 0, "{mode} {index}");
                }
            }
        }
    }

    #[test]
    fn stream_instructions_all_decode_in_the_mode_bitness() {
        for mode in Mode::ALL {
            for index in 0..30 {
                let p = generate(mode, 99, index, 200);
                let insns = decode_stream(&p, mode);
                assert!(!insns.is_empty());
                for ins in &insns {
                    assert_ne!(
                        ins.code(),
                        Code::INVALID,
                        "{mode} {index} at {:#x}",
                        ins.ip()
                    );
                }
                let last = insns.last().map_or(0, |i| i.next_ip());
                assert_eq!(last, u64::from(mode.ip_of(p.stream_start + p.stream_len)));
            }
        }
    }

    #[test]
    fn table_covers_every_mnemonic_and_the_stream_uses_every_entry() {
        for mode in Mode::ALL {
            let table = table(mode);
            let mnemonics: HashSet<Mnemonic> = table.iter().map(|c| c.mnemonic()).collect();
            for m in MNEMONICS {
                let valid = |c: Code| match mode.bitness() {
                    16 => c.op_code().mode16(),
                    32 => c.op_code().mode32(),
                    _ => c.op_code().mode64(),
                };
                if !Code::values().any(|c| c.mnemonic() == *m && valid(c)) {
                    continue;
                }
                // JCXZ is the 16-bit-operand form of the CX loop; it stays in 32-bit code
                // only as Jcxz_rel8_32, so every mnemonic still has an entry.
                assert!(mnemonics.contains(m), "{mode}: no entry for {m:?}");
            }
            let mut used = HashSet::new();
            for index in 0..300 {
                let (_, stats) = generate_with_stats(mode, 3, index, 100, false);
                used.extend(stats.codes);
            }
            let missing: Vec<_> = table.iter().filter(|c| !used.contains(c)).collect();
            assert!(missing.is_empty(), "{mode}: never generated {missing:?}");
        }
    }

    /// Written registers, as iced reports them.
    fn written(f: &mut InstructionInfoFactory, ins: &Instruction) -> Vec<Register> {
        f.info(ins)
            .used_registers()
            .iter()
            .filter(|u| writes(u.access()))
            .map(|u| u.register().full_register32())
            .collect()
    }

    #[test]
    fn no_stream_instruction_writes_the_base_register() {
        let mut f = InstructionInfoFactory::new();
        for mode in Mode::ALL {
            for index in 0..100 {
                let p = generate(mode, 1234, index, 200);
                let insns = decode_stream(&p, mode);
                for (n, ins) in insns.iter().enumerate() {
                    let w = written(&mut f, ins);
                    if matches!(ins.code(), Code::Popaw | Code::Popad) {
                        // Allowed only as the end of PUSHA, register-only work, POPA.
                        let push = if ins.code() == Code::Popad {
                            Code::Pushad
                        } else {
                            Code::Pushaw
                        };
                        let before = insns[..n]
                            .iter()
                            .rev()
                            .find(|i| i.is_stack_instruction() || i.op_kind(0) == OpKind::Memory)
                            .map(|i| i.code());
                        assert_eq!(before, Some(push), "{mode} {index}: {ins}");
                        continue;
                    }
                    assert!(!w.contains(&Register::EBX), "{mode} {index}: {ins}");
                    if w.contains(&Register::ESP) {
                        assert!(
                            ins.is_stack_instruction() || ins.mnemonic() == Mnemonic::Lss,
                            "{mode} {index}: {ins}"
                        );
                    }
                }
            }
        }
    }

    /// Replays the stream with the register values the generator relies on (EBX, ESP,
    /// and registers loaded by `mov r32, imm32` or `mov ebp, esp`), and checks that
    /// every memory operand and the stack stay inside the data window.
    #[test]
    fn memory_operands_and_stack_stay_in_the_window() {
        use Register as R;
        let mut f = InstructionInfoFactory::new();
        // Long mode is left out: this evaluator tracks the eight legacy GPRs only.
        for mode in [Mode::Real, Mode::Prot16, Mode::Prot32] {
            for index in 0..100 {
                let p = generate(mode, 77, index, 200);
                let ebx = {
                    // The stub loads EBX right before PUSH flags; read it back.
                    let common = &p.rom[COMMON_OFF..p.stream_start as usize];
                    let ip = u64::from(mode.ip_of(COMMON_OFF as u32));
                    let mut d = Decoder::with_ip(mode.bitness(), common, ip, DecoderOptions::NONE);
                    let mut v = None;
                    while d.can_decode() {
                        let i = d.decode();
                        if i.code() == Code::Mov_r32_imm32 && i.op0_register() == R::EBX {
                            v = Some(i.immediate32());
                        }
                    }
                    v.expect("stub loads EBX")
                };
                let mut known: [Option<u32>; 8] = [None; 8];
                known[3] = Some(ebx);
                known[4] = Some(STACK_TOP);
                // Immediates stored at known addresses (the far pointers of LSS).
                let mut stored = std::collections::HashMap::<u64, u32>::new();
                // Between the LSS that puts the stack at the top of the window and
                // the LSS that brings it back (see `Gen::stack_switch`).
                let mut at_top = false;
                let slot = |r: Register| GPR32.iter().position(|&g| g == r.full_register32());
                for ins in decode_stream(&p, mode) {
                    let val = |known: &[Option<u32>; 8], r: Register| -> Option<u64> {
                        if r == R::None {
                            return Some(0);
                        }
                        let v = known[slot(r)?]?;
                        Some(u64::from(if r.size() == 2 { v & 0xFFFF } else { v }))
                    };
                    let has_mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
                    let exempt = matches!(ins.mnemonic(), Mnemonic::Lea | Mnemonic::Nop);
                    if has_mem && !exempt {
                        let b = val(&known, ins.memory_base());
                        let x = if ins.memory_index() == R::AL {
                            Some(0xFF)
                        } else {
                            val(&known, ins.memory_index())
                        };
                        let (Some(b), Some(x)) = (b, x) else {
                            panic!("{mode} {index}: unknown register in {ins}");
                        };
                        let mut ea = b
                            .wrapping_add(x * u64::from(ins.memory_index_scale()))
                            .wrapping_add(ins.memory_displacement64());
                        ea &= if ins.memory_base().size() == 2
                            || ins.memory_index().size() == 2
                            || ins.memory_displ_size() == 2
                        {
                            0xFFFF
                        } else {
                            0xFFFF_FFFF
                        };
                        let size = ins.memory_size().size() as u64;
                        assert!(
                            ea + size <= u64::from(WINDOW),
                            "{mode} {index}: {ins} at {ea:#x}"
                        );
                        match ins.code() {
                            Code::Mov_rm32_imm32 => {
                                stored.insert(ea, ins.immediate32());
                            }
                            Code::Mov_rm16_imm16 => {
                                stored.insert(ea, u32::from(ins.immediate16()));
                            }
                            Code::Lss_r32_m1632 | Code::Lss_r16_m1616 => {
                                let wide = ins.code() == Code::Lss_r32_m1632;
                                let off = *stored.get(&ea).expect("LSS pointer stored");
                                let width = if wide { 4 } else { 2 };
                                let sel = *stored.get(&(ea + width)).expect("LSS selector");
                                assert!(
                                    sel == u32::from(SEL_DATA16) || sel == u32::from(SEL_DATA32),
                                    "{mode} {index}: {ins} loads {sel:#x}"
                                );
                                let sp = known[4].expect("ESP is always known");
                                let esp = if wide { off } else { (sp & !0xFFFF) | off };
                                known[4] = Some(esp);
                                at_top = esp & 0xFFFF > STACK_TOP;
                                if !at_top {
                                    let depth = STACK_TOP - (esp & 0xFFFF);
                                    assert!(depth <= MAX_DEPTH, "{mode} {index}: {ins}");
                                    if sel == u32::from(SEL_DATA32) {
                                        assert_eq!(esp >> 16, 0, "{mode} {index}: {ins}");
                                    }
                                }
                                continue;
                            }
                            _ => {}
                        }
                    }
                    if at_top {
                        // Only the POP SS at the top runs on that stack.
                        assert!(
                            matches!(
                                ins.code(),
                                Code::Popw_SS
                                    | Code::Popd_SS
                                    | Code::Mov_rm32_imm32
                                    | Code::Mov_rm16_imm16
                            ),
                            "{mode} {index}: {ins} on the stack at the top"
                        );
                        if matches!(ins.code(), Code::Popw_SS | Code::Popd_SS) {
                            let size = if ins.code() == Code::Popd_SS { 4 } else { 2 };
                            let sp = known[4].expect("ESP is always known");
                            assert_eq!(sp, WINDOW - size, "{mode} {index}: {ins}");
                        }
                        continue;
                    }
                    // Update what is known.
                    let sp = known[4].expect("ESP is always known");
                    match ins.code() {
                        Code::Mov_r32_imm32 => {
                            if let Some(s) = slot(ins.op0_register()) {
                                known[s] = Some(ins.immediate32());
                            }
                            continue;
                        }
                        Code::Mov_r32_rm32 | Code::Mov_rm32_r32
                            if ins.op0_register() == R::EBP && ins.op1_register() == R::ESP =>
                        {
                            known[5] = Some(sp);
                            continue;
                        }
                        Code::Leavew | Code::Leaved => {
                            let bp = known[5].expect("LEAVE after mov ebp, esp");
                            let opsize = if ins.code() == Code::Leaved { 4 } else { 2 };
                            known[4] = Some(bp + opsize);
                            known[5] = None;
                            continue;
                        }
                        Code::Enterw_imm16_imm8 | Code::Enterd_imm16_imm8 => {
                            let opsize = if ins.code() == Code::Enterd_imm16_imm8 {
                                4
                            } else {
                                2
                            };
                            let level = u32::from(ins.immediate8_2nd() & 31);
                            let pushes = if level == 0 { 1 } else { level + 1 };
                            known[4] = Some(sp - opsize * pushes - u32::from(ins.immediate16()));
                            known[5] = None;
                            continue;
                        }
                        _ => {}
                    }
                    let inc = ins.stack_pointer_increment();
                    for w in written(&mut f, &ins) {
                        if let Some(s) = slot(w) {
                            if s != 3 && s != 4 {
                                known[s] = None;
                            }
                        }
                    }
                    // A 16-bit stack moves SP only; ESP's upper half stays.
                    let low = (i64::from(sp & 0xFFFF) + i64::from(inc)) as u32;
                    known[4] = Some((sp & !0xFFFF) | (low & 0xFFFF));
                    let depth = STACK_TOP.checked_sub(low);
                    assert!(
                        depth.is_some_and(|d| d <= MAX_DEPTH),
                        "{mode} {index}: stack out of range after {ins}"
                    );
                }
            }
        }
    }

    #[test]
    fn branches_target_the_next_instruction() {
        for mode in Mode::ALL {
            for index in 0..30 {
                let p = generate(mode, 5, index, 200);
                for ins in decode_stream(&p, mode) {
                    if matches!(ins.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32) {
                        assert_eq!(ins.near_branch_target(), ins.next_ip(), "{mode}: {ins}");
                    }
                }
            }
        }
    }

    #[test]
    fn insns_counts_stub_and_stream_with_rep_iterations() {
        // Entry: 15 instructions + 31 more REP STOSD iterations (real mode) or 7
        // (protected); common: 6 segment loads (protected), 23 instructions and 511
        // more REP STOSD iterations.
        assert_eq!(generate(Mode::Real, 1, 2, 0).insns, 15 + 31 + 23 + 511);
        assert_eq!(generate(Mode::Prot16, 1, 2, 0).insns, 7 + 6 + 23 + 511);
        assert_eq!(generate(Mode::Prot32, 1, 2, 0).insns, 7 + 6 + 23 + 511);
        for mode in Mode::ALL {
            let stub = generate(mode, 0, 0, 0).insns;
            for index in 0..30 {
                let p = generate(mode, 8, index, 200);
                let mut expected = 0;
                let mut ecx = 0;
                for ins in decode_stream(&p, mode) {
                    expected += 1;
                    if ins.code() == Code::Mov_r32_imm32 && ins.op0_register() == Register::ECX {
                        ecx = ins.immediate32() as usize;
                    }
                    if ins.is_string_instruction()
                        && (ins.has_rep_prefix() || ins.has_repne_prefix())
                    {
                        expected += ecx.max(1) - 1;
                    }
                }
                assert_eq!(p.insns - stub, expected, "{mode} {index}");
            }
        }
    }

    #[test]
    fn stream_avoids_the_qemu_deviations_the_differ_stops_at() {
        let mut seen = 0;
        for mode in Mode::ALL {
            for index in 0..100 {
                let p = generate(mode, 21, index, 200);
                let mut cl = None;
                for ins in decode_stream(&p, mode) {
                    if ins.code() == Code::Mov_r8_imm8 && ins.op0_register() == Register::CL {
                        cl = Some(ins.immediate8());
                        continue;
                    }
                    if ins.mnemonic() == Mnemonic::Aam {
                        assert!(ins.immediate8() < 0x80, "{mode} {index}: {ins}");
                    }
                    let bits = match ins.op0_kind() {
                        OpKind::Register => ins.op0_register().size() * 8,
                        _ => ins.memory_size().size() * 8,
                    };
                    if !matches!(ins.mnemonic(), Mnemonic::Rcl | Mnemonic::Rcr) || bits > 16 {
                        continue;
                    }
                    let count = match ins.op1_kind() {
                        OpKind::Register => cl.expect("CL loaded before RCL/RCR"),
                        _ => ins.immediate8(),
                    } & 0x1F;
                    let turn = bits as u8 + 1;
                    assert!(count == 0 || count % turn != 0, "{mode} {index}: {ins}");
                    seen += 1;
                }
            }
        }
        assert!(seen > 100, "only {seen} RCL/RCR of 8 or 16 bits");
    }

    /// Follows SS through the stream (the selector of each stack switch group is
    /// the last selector immediate before its SS load) and counts what runs on
    /// which stack size.
    #[test]
    fn stack_switches_cover_every_load_both_sizes_and_mixed_stack_use() {
        use std::collections::HashMap;
        let sels = [u32::from(SEL_DATA16), u32::from(SEL_DATA32)];
        for mode in [Mode::Prot16, Mode::Prot32] {
            let mut seen: HashMap<(String, bool), usize> = HashMap::new();
            let mut count = |what: &str, ss32: bool| {
                *seen.entry((what.to_string(), ss32)).or_default() += 1;
            };
            for index in 0..100 {
                let p = generate(mode, 31, index, 300);
                let insns = decode_stream(&p, mode);
                let mut ss32 = mode == Mode::Prot32;
                let mut cand = None;
                for (n, ins) in insns.iter().enumerate() {
                    let imm = match ins.code() {
                        Code::Push_imm16 | Code::Mov_rm16_imm16 => {
                            Some(u32::from(ins.immediate16()))
                        }
                        Code::Pushd_imm32 | Code::Mov_r32_imm32 => Some(ins.immediate32()),
                        _ => None,
                    };
                    if let Some(v) = imm.filter(|v| sels.contains(v)) {
                        cand = Some(v);
                    }
                    let loads_ss = match ins.code() {
                        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 => {
                            ins.op0_register() == Register::SS
                        }
                        Code::Popw_SS
                        | Code::Popd_SS
                        | Code::Lss_r16_m1616
                        | Code::Lss_r32_m1632 => true,
                        _ => false,
                    };
                    if loads_ss {
                        let new32 = cand.expect("a selector before each SS load") == sels[1];
                        let top = n > 0
                            && insns[n - 1].mnemonic() == Mnemonic::Lss
                            && matches!(ins.code(), Code::Popw_SS | Code::Popd_SS);
                        let what = if top {
                            format!("{:?} at top", ins.code())
                        } else {
                            format!("{:?}", ins.code())
                        };
                        count(&format!("{what} from"), ss32);
                        count(&format!("{:?} to", ins.code()), new32);
                        ss32 = new32;
                        continue;
                    }
                    if ins.is_stack_instruction() {
                        count(&format!("{:?}", ins.code()), ss32);
                    }
                }
            }
            let need = [
                "Mov_Sreg_rm16 to",
                "Mov_Sreg_r32m16 to",
                "Popw_SS to",
                "Popd_SS to",
                "Lss_r16_m1616 to",
                "Lss_r32_m1632 to",
                "Popw_SS from",
                "Popd_SS from",
                "Popw_SS at top from",
                "Popd_SS at top from",
                "Enterw_imm16_imm8",
                "Enterd_imm16_imm8",
                "Leavew",
                "Leaved",
                "Push_r16",
                "Push_r32",
                "Pop_r16",
                "Pop_r32",
                "Pushaw",
                "Pushad",
            ];
            for what in need {
                for ss32 in [false, true] {
                    let n = seen.get(&(what.to_string(), ss32)).copied().unwrap_or(0);
                    assert!(
                        n > 0,
                        "{mode}: {what} on a {}-bit stack never generated",
                        if ss32 { 32 } else { 16 }
                    );
                }
            }
        }
    }

    #[test]
    fn real_mode_stream_has_no_stack_switch() {
        for index in 0..50 {
            let p = generate(Mode::Real, 31, index, 300);
            for ins in decode_stream(&p, Mode::Real) {
                assert!(
                    !(matches!(
                        ins.code(),
                        Code::Popw_SS | Code::Popd_SS | Code::Lss_r16_m1616 | Code::Lss_r32_m1632
                    ) || ins.mnemonic() == Mnemonic::Mov && ins.op0_register() == Register::SS),
                    "{index}: {ins}"
                );
            }
        }
    }

    #[test]
    fn rng_below_stays_in_range_and_varies() {
        let mut r = Rng::new(Mode::Real, 0, 0);
        let v: Vec<u64> = (0..1000).map(|_| r.below(7)).collect();
        assert!(v.iter().all(|&x| x < 7));
        assert!((0..7).all(|x| v.contains(&x)));
    }
}
