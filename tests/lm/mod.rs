//! Builder and runner for the long-mode test kernels in `lm_kernels.rs`.
//!
//! A kernel is a Multiboot v1 image in the a.out-kludge form (Multiboot 0.6.96
//! §3.1.3), loaded at 1 MiB: the 32-byte header, a 32-bit entry stub right after
//! it, the 64-bit code at [`CODE64`], and a data area at [`DATA_BASE`] that the
//! Rust side fills with the GDT, the 64-bit IDT and TSS, strings and the page
//! tables. Bss up to [`BSS_END`] holds the stacks.
//!
//! The entry stub (32-bit protected mode, paging off, as Multiboot leaves it)
//! loads the kernel's GDT, sets CR4.PAE, points CR3 at the PML4, sets
//! EFER.LME and EFER.NXE, sets CR0.PG (which activates IA-32e mode, SDM vol. 3A
//! §10.8.5) and far-jumps to the 64-bit code segment. The paging structures map
//! (all entries present, writable, user):
//! - linear 0-2 MiB identically through one page table of 4 KiB pages
//!   ([`PT0`]), so the checks can change single 4 KiB pages;
//! - linear 2-32 MiB identically with 2 MiB pages ([`PD0`] entries 1-15);
//! - linear 1-2 GiB onto physical 0-1 GiB with one 1 GiB page ([`PDPT`] entry 1);
//! - the top 512 GiB (PML4 entry 511, linear 0xFFFF_FF80_0000_0000 up) through
//!   the same PDPT, so a negative canonical address aliases low memory.
//!
//! Every kernel shares a runtime in 64-bit code, emitted by [`Kernel::new`]:
//! - `print` (RSI = NUL-terminated string) and `hex64` (RAX) on COM1;
//! - a stub per vector in [`VECTORS`] (pushing a dummy error code where the CPU
//!   pushes none) and a common handler. It stores every register, the vector,
//!   the error code and the CPU's five-qword frame (RIP, CS, RFLAGS, RSP, SS) at
//!   [`rec`], plus CR2, the SS it found, and the frame's address. It then
//!   abandons the frame and resumes at `[RECOVER_RIP]` with `RSP =
//!   [RECOVER_RSP]`, ring-0 data segments everywhere and RFLAGS = 2, so a fault
//!   from ring 3 or compatibility mode lands back in plain 64-bit ring-0 code.
//!
//! Each check ([`Kernel::case`]) arms that recovery, runs, and prints `PASS name`, or
//! `FAIL name` with the failing check's number, the value it saw and the last
//! fault. `exit` writes 0 to the debug-exit port (status 1) when nothing failed,
//! and 1 (status 3) otherwise.
//!
//! As in `pm/mod.rs`, [`build`] runs the kernel's builder repeatedly, handing each
//! pass the label addresses of the previous one, until they settle; every value
//! that depends on a label is encoded in a fixed-size form.

// Each test binary that includes this runtime uses only part of it.
#![allow(dead_code)]

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::process::Command;

/// What every builder step returns.
pub type AsmResult = Result<(), IcedError>;

/// Where the image (and its Multiboot header) is loaded.
pub const IMAGE_BASE: u32 = 0x10_0000;
/// The header: magic, flags, checksum and the five address fields.
const HEADER_LEN: u32 = 32;
/// The entry point: the 32-bit stub starts right after the header.
const ENTRY32: u32 = IMAGE_BASE + HEADER_LEN;
/// The 64-bit code; the entry stub must end below it.
pub const CODE64: u32 = 0x10_1000;
/// The start of the Rust-built data area; the 64-bit code must end below it.
pub const DATA_BASE: u32 = 0x12_0000;
/// The GDT, [`GDT_ENTRIES`] descriptors.
pub const GDT: u32 = 0x12_0000;
/// GDTR.limit is `GDT_ENTRIES * 8 - 1`.
pub const GDT_ENTRIES: u32 = 32;
/// The IDT, 256 16-byte gates.
pub const IDT: u32 = 0x12_1000;
/// The 64-bit TSS (SDM vol. 3A Figure 8-11), 0x68 bytes, no I/O bitmap.
pub const TSS64: u32 = 0x12_2000;
/// Runtime variables.
const VARS: u32 = 0x12_3000;
/// Scratch memory a kernel may use for its own variables (0xE00 bytes).
pub const SCRATCH: u32 = VARS + 0x200;
/// Strings printed by the checks.
const STRINGS: u32 = 0x12_4000;
const STRINGS_END: u32 = 0x12_8000;
/// The PML4.
pub const PML4: u32 = 0x12_8000;
/// The PDPT that PML4 entries 0 and 511 point to.
pub const PDPT: u32 = 0x12_9000;
/// The page directory of linear 0-1 GiB.
pub const PD0: u32 = 0x12_A000;
/// The page table of linear 0-2 MiB.
pub const PT0: u32 = 0x12_B000;
/// Free for more tables, data pages and code blobs, up to [`IMAGE_END`].
pub const FREE: u32 = 0x12_C000;
/// The end of the loaded bytes.
pub const IMAGE_END: u32 = 0x14_0000;
/// The end of bss (zeroed by the loader).
const BSS_END: u32 = 0x1A_0000;
/// The main ring-0 stack, used by the checks.
pub const STACK0_TOP: u32 = 0x1A_0000;
/// TSS.RSP0: the stack an interrupt from ring 3 switches to.
pub const RSP0_TOP: u32 = 0x19_C000;
/// The ring-3 stack.
pub const RSP3_TOP: u32 = 0x19_8000;
/// TSS.IST1.
pub const IST1_TOP: u32 = 0x19_4000;
/// TSS.IST2.
pub const IST2_TOP: u32 = 0x19_0000;

/// 64-bit ring-0 code (STAR[47:32]: SYSCALL loads CS from here, SS = +8).
pub const KCODE64: u16 = 0x08;
/// Ring-0 data.
pub const KDATA: u16 = 0x10;
/// 32-bit ring-3 code, RPL 3 (STAR[63:48]: SYSRET to compatibility mode).
pub const UCODE32: u16 = 0x18 | 3;
/// Ring-3 data, RPL 3 (STAR[63:48] + 8: SYSRET's SS).
pub const UDATA: u16 = 0x20 | 3;
/// 64-bit ring-3 code, RPL 3 (STAR[63:48] + 16: SYSRET to 64-bit mode).
pub const UCODE64: u16 = 0x28 | 3;
/// 32-bit ring-0 code (compatibility mode).
pub const KCODE32: u16 = 0x30;
/// The 64-bit TSS (16-byte descriptor, GDT indexes 7 and 8).
pub const TSS_SEL: u16 = 0x38;
// GDT indexes 9 to GDT_ENTRIES - 1 are the kernel's own.

/// RFLAGS bits (SDM vol. 1 §3.4.3).
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Bit 1 always reads 1.
    pub const FIXED: u64 = 1 << 1;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Trap.
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Direction.
    pub const DF: u64 = 1 << 10;
    /// Resume.
    pub const RF: u64 = 1 << 16;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
}

/// Exception vectors (SDM vol. 3A Table 6-1).
pub mod vector {
    /// Invalid opcode.
    pub const UD: u64 = 6;
    /// Segment not present.
    pub const NP: u64 = 11;
    /// Stack-segment fault.
    pub const SS: u64 = 12;
    /// General protection.
    pub const GP: u64 = 13;
    /// Page fault.
    pub const PF: u64 = 14;
}

/// Descriptor access bytes and flags (SDM vol. 3A §3.4.5, §5.2.1).
pub mod desc {
    /// Present.
    pub const P: u8 = 0x80;
    /// Code or data (not a system descriptor).
    pub const S: u8 = 0x10;
    /// DPL 3.
    pub const DPL3: u8 = 0x60;
    /// Data, read/write.
    pub const DATA_RW: u8 = 0x2;
    /// Code, execute/read.
    pub const CODE_XR: u8 = 0xA;
    /// Code, execute/read, conforming.
    pub const CODE_XRC: u8 = 0xE;
    /// System: available 64-bit TSS.
    pub const TSS64: u8 = 0x9;
    /// System: 64-bit call gate.
    pub const CALL_GATE: u8 = 0xC;
    /// System: 64-bit interrupt gate.
    pub const INT_GATE: u8 = 0xE;
    /// System: 64-bit trap gate.
    pub const TRAP_GATE: u8 = 0xF;
    /// Flags nibble: 4 KiB granularity.
    pub const G: u8 = 0x8;
    /// Flags nibble: 32-bit default operand size.
    pub const DB: u8 = 0x4;
    /// Flags nibble: 64-bit code segment.
    pub const L: u8 = 0x2;
}

/// A segment descriptor (SDM vol. 3A Figure 3-8).
pub fn segment(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (b, l) = (u64::from(base), u64::from(limit));
    (l & 0xFFFF)
        | (b & 0xFF_FFFF) << 16
        | u64::from(access) << 40
        | (l >> 16 & 0xF) << 48
        | u64::from(flags & 0xF) << 52
        | (b >> 24) << 56
}

/// A flat (base 0, 4 GiB) code or data segment with access byte `access` (P and
/// S added) and flags `flags` (G added).
pub fn flat(access: u8, flags: u8) -> u64 {
    segment(0, 0xF_FFFF, desc::P | desc::S | access, desc::G | flags)
}

/// A present 16-byte gate (SDM vol. 3A Figure 5-9 call gate, Figure 6-8
/// interrupt and trap gates): the low and high qwords.
pub fn gate64(selector: u16, offset: u64, kind: u8, dpl: u8, ist: u8) -> [u64; 2] {
    let low = (offset & 0xFFFF)
        | u64::from(selector) << 16
        | u64::from(ist & 7) << 32
        | u64::from(desc::P | dpl << 5 | kind) << 40
        | (offset >> 16 & 0xFFFF) << 48;
    [low, offset >> 32]
}

/// Page-table entry bits (SDM vol. 3A Tables 4-15 to 4-20).
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User.
    pub const US: u64 = 1 << 2;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Page size (a 2 MiB or 1 GiB page).
    pub const PS: u64 = 1 << 7;
    /// Execute-disable (with EFER.NXE).
    pub const XD: u64 = 1 << 63;
    /// Present, writable, user.
    pub const PWU: u64 = P | RW | US;
}

/// Control-register and MSR numbers and bits (SDM vol. 3A §2.5, §2.2.1, vol. 4).
pub mod ctl {
    /// CR0.WP.
    pub const CR0_WP: u32 = 1 << 16;
    /// CR0.PG.
    pub const CR0_PG: u32 = 1 << 31;
    /// CR4.PAE.
    pub const CR4_PAE: u32 = 1 << 5;
    /// IA32_EFER.
    pub const MSR_EFER: u32 = 0xC000_0080;
    /// EFER.SCE.
    pub const EFER_SCE: u32 = 1 << 0;
    /// EFER.LME.
    pub const EFER_LME: u32 = 1 << 8;
    /// EFER.LMA.
    pub const EFER_LMA: u32 = 1 << 10;
    /// EFER.NXE.
    pub const EFER_NXE: u32 = 1 << 11;
    /// IA32_STAR.
    pub const MSR_STAR: u32 = 0xC000_0081;
    /// IA32_LSTAR.
    pub const MSR_LSTAR: u32 = 0xC000_0082;
    /// IA32_CSTAR.
    pub const MSR_CSTAR: u32 = 0xC000_0083;
    /// IA32_FMASK.
    pub const MSR_FMASK: u32 = 0xC000_0084;
    /// IA32_FS_BASE.
    pub const MSR_FS_BASE: u32 = 0xC000_0100;
    /// IA32_GS_BASE.
    pub const MSR_GS_BASE: u32 = 0xC000_0101;
    /// IA32_KERNEL_GS_BASE.
    pub const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
    /// IA32_TSC_AUX.
    pub const MSR_TSC_AUX: u32 = 0xC000_0103;
}

/// What the common handler records, in qwords. The order is the stack's, low to
/// high: the fifteen pushed registers (R15 first, RAX last), vector, error code,
/// then the CPU's frame (RIP, CS, RFLAGS, RSP, SS).
pub mod rec {
    use super::VARS;
    /// R15 at the fault; R14 to R8 follow.
    pub const R15: u32 = VARS;
    /// R14 at the fault.
    pub const R14: u32 = VARS + 8;
    /// R13 at the fault.
    pub const R13: u32 = VARS + 2 * 8;
    /// R12 at the fault.
    pub const R12: u32 = VARS + 3 * 8;
    /// R11 at the fault.
    pub const R11: u32 = VARS + 4 * 8;
    /// R8 at the fault.
    pub const R8: u32 = VARS + 7 * 8;
    /// RDI at the fault.
    pub const RDI: u32 = VARS + 8 * 8;
    /// RSI at the fault.
    pub const RSI: u32 = VARS + 9 * 8;
    /// RBP at the fault.
    pub const RBP: u32 = VARS + 10 * 8;
    /// RBX at the fault.
    pub const RBX: u32 = VARS + 11 * 8;
    /// RDX at the fault.
    pub const RDX: u32 = VARS + 12 * 8;
    /// RCX at the fault.
    pub const RCX: u32 = VARS + 13 * 8;
    /// RAX at the fault.
    pub const RAX: u32 = VARS + 14 * 8;
    /// The vector, or [`super::NO_FAULT`].
    pub const VECTOR: u32 = VARS + 15 * 8;
    /// The error code (0 for vectors without one).
    pub const ERROR: u32 = VARS + 16 * 8;
    /// Pushed RIP.
    pub const RIP: u32 = VARS + 17 * 8;
    /// Pushed CS.
    pub const CS: u32 = VARS + 18 * 8;
    /// Pushed RFLAGS.
    pub const RFLAGS: u32 = VARS + 19 * 8;
    /// Pushed RSP.
    pub const RSP: u32 = VARS + 20 * 8;
    /// Pushed SS.
    pub const SS: u32 = VARS + 21 * 8;
    /// Qwords copied from the handler's stack.
    pub const QWORDS: u32 = 22;
    /// CR2 at the handler.
    pub const CR2: u32 = VARS + 22 * 8;
    /// The address of the pushed RIP: where the CPU put its frame.
    pub const FRAME: u32 = VARS + 23 * 8;
    /// SS as the handler found it (the selector word).
    pub const ENTRY_SS: u32 = VARS + 24 * 8;
}

/// [`rec::VECTOR`] when nothing was delivered since the case armed.
pub const NO_FAULT: u64 = u64::MAX;
/// How many faults the handler has taken (qword).
pub const FAULTS: u32 = VARS + 25 * 8;
const RECOVER_RIP: u32 = VARS + 26 * 8;
const RECOVER_RSP: u32 = VARS + 27 * 8;
const FAILS: u32 = VARS + 28 * 8;
const CHECK_ID: u32 = VARS + 29 * 8;
const ACTUAL: u32 = VARS + 30 * 8;
const GDTR: u32 = VARS + 0x100;
const IDTR: u32 = VARS + 0x110;

/// Vectors with a handler stub: the exceptions and four software vectors.
pub const VECTORS: [std::ops::RangeInclusive<u32>; 2] = [0..=31, 0x80..=0x83];
/// Exceptions that push an error code (SDM vol. 3A Table 6-1).
const WITH_ERROR: [u32; 7] = [8, 10, 11, 12, 13, 14, 17];

/// One check: its name and the labels derived from it.
pub struct Case {
    name: String,
    checks: Cell<u32>,
}

impl Case {
    /// A label private to this case.
    pub fn label(&self, part: &str) -> String {
        format!("{}.{}", self.name, part)
    }
    /// Where a failed check jumps.
    pub fn fail(&self) -> String {
        self.label("fail")
    }
    /// Where an expected fault resumes.
    pub fn recover(&self) -> String {
        self.label("recover")
    }
    /// The instruction expected to fault (placed with [`Kernel::mark`]).
    pub fn mark(&self) -> String {
        self.label("mark")
    }
    /// The UD2 after the trigger.
    pub fn end(&self) -> String {
        self.label("end")
    }
}

/// A kernel being assembled: the 64-bit code assembler plus the data area.
pub struct Kernel {
    a: CodeAssembler,
    labels: HashMap<String, CodeLabel>,
    /// The last placed label and the instruction count at that point.
    pending: Option<(usize, CodeLabel)>,
    placed: HashSet<String>,
    prev: HashMap<String, u32>,
    wanted: HashSet<String>,
    data: Vec<u8>,
    next_string: u32,
    cases: Vec<String>,
}

impl Deref for Kernel {
    type Target = CodeAssembler;
    fn deref(&self) -> &CodeAssembler {
        &self.a
    }
}

impl DerefMut for Kernel {
    fn deref_mut(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }
}

/// An assembled kernel: the image file and the names of its checks, in order.
pub struct Built {
    pub image: Vec<u8>,
    pub cases: Vec<String>,
}

/// Assembles a kernel: the entry stub, the shared runtime, then `body` at
/// `main`. `body` ends its main flow with [`Kernel::exit`] and may emit routines
/// after it.
pub fn build(body: fn(&mut Kernel) -> AsmResult) -> Built {
    let entry = entry_stub();
    let mut prev = HashMap::new();
    for _ in 0..8 {
        let mut k = Kernel::new(prev.clone()).expect("runtime assembles");
        body(&mut k).expect("kernel assembles");
        let res =
            k.a.assemble_options(
                u64::from(CODE64),
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .expect("kernel encodes");
        let found: HashMap<String, u32> = k
            .labels
            .iter()
            .map(|(name, l)| {
                let ip = res.label_ip(l).expect("label is placed");
                (name.clone(), u32::try_from(ip).expect("32-bit address"))
            })
            .collect();
        if found == prev {
            for name in &k.wanted {
                assert!(found.contains_key(name), "label {name} is never placed");
            }
            let code = res.inner.code_buffer;
            return Built {
                image: k.image(&entry, &code),
                cases: k.cases,
            };
        }
        prev = found;
    }
    panic!("label addresses did not settle");
}

/// The 32-bit entry stub (see the module docs).
fn entry_stub() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).expect("assembler");
    let stub = |a: &mut CodeAssembler| -> AsmResult {
        a.cli()?;
        a.lgdt(ptr(GDTR))?;
        a.mov(eax, cr4)?;
        a.or(eax, ctl::CR4_PAE)?;
        a.mov(cr4, eax)?;
        a.mov(eax, PML4)?;
        a.mov(cr3, eax)?;
        a.mov(ecx, ctl::MSR_EFER)?;
        a.rdmsr()?;
        a.or(eax, ctl::EFER_LME | ctl::EFER_NXE)?;
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, ctl::CR0_PG)?;
        a.mov(cr0, eax)?;
        // Now in compatibility mode (IA-32e active, CS still 32-bit).
        a.jmp_far(KCODE64, CODE64)
    };
    stub(&mut a).expect("entry stub assembles");
    let code = a.assemble(u64::from(ENTRY32)).expect("entry stub encodes");
    assert!(code.len() <= (CODE64 - ENTRY32) as usize);
    code
}

impl Kernel {
    fn new(prev: HashMap<String, u32>) -> Result<Self, IcedError> {
        let mut k = Kernel {
            a: CodeAssembler::new(64)?,
            labels: HashMap::new(),
            pending: None,
            placed: HashSet::new(),
            prev,
            wanted: HashSet::new(),
            data: vec![0; (IMAGE_END - DATA_BASE) as usize],
            next_string: STRINGS,
            cases: Vec::new(),
        };
        k.base_tables();
        k.prologue()?;
        k.runtime()?;
        k.at("main")?;
        Ok(k)
    }

    /// The label called `name`, created on first use.
    pub fn label(&mut self, name: &str) -> CodeLabel {
        if let Some(l) = self.labels.get(name) {
            return *l;
        }
        let l = self.a.create_label();
        self.labels.insert(name.to_string(), l);
        l
    }

    /// Places `name` at the next instruction.
    pub fn at(&mut self, name: &str) -> AsmResult {
        assert!(
            self.placed.insert(name.to_string()),
            "label {name} placed twice"
        );
        // iced allows one label per instruction: a second name for the same spot
        // shares the first's label, or, if it was already referenced, gets a NOP.
        let here = self.a.instructions().len();
        if let Some((at, first)) = self.pending {
            if at == here {
                if !self.labels.contains_key(name) {
                    self.labels.insert(name.to_string(), first);
                    return Ok(());
                }
                self.a.nop()?;
            }
        }
        let mut l = self.label(name);
        self.a.set_label(&mut l)?;
        self.labels.insert(name.to_string(), l);
        self.pending = Some((self.a.instructions().len(), l));
        Ok(())
    }

    /// The address of label `name` from the previous pass (a same-sized
    /// placeholder in the first).
    pub fn addr(&mut self, name: &str) -> u32 {
        self.wanted.insert(name.to_string());
        self.prev.get(name).copied().unwrap_or(CODE64)
    }

    /// `call name`.
    pub fn call_to(&mut self, name: &str) -> AsmResult {
        let l = self.label(name);
        self.a.call(l)
    }

    /// `jmp name`.
    pub fn jmp_to(&mut self, name: &str) -> AsmResult {
        let l = self.label(name);
        self.a.jmp(l)
    }

    /// `jne name`.
    pub fn jne_to(&mut self, name: &str) -> AsmResult {
        let l = self.label(name);
        self.a.jne(l)
    }

    /// Writes `bytes` into the data area at `addr`.
    pub fn poke(&mut self, addr: u32, bytes: &[u8]) {
        assert!(addr >= DATA_BASE && addr as usize + bytes.len() <= IMAGE_END as usize);
        let off = (addr - DATA_BASE) as usize;
        self.data[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a qword into the data area.
    pub fn poke64(&mut self, addr: u32, value: u64) {
        self.poke(addr, &value.to_le_bytes());
    }

    /// Sets GDT entry `index`.
    pub fn gdt(&mut self, index: u32, descriptor: u64) {
        assert!(index < GDT_ENTRIES);
        self.poke64(GDT + index * 8, descriptor);
    }

    /// Sets a 16-byte system descriptor at GDT entries `index` and `index + 1`.
    pub fn gdt16(&mut self, index: u32, descriptor: [u64; 2]) {
        self.gdt(index, descriptor[0]);
        self.gdt(index + 1, descriptor[1]);
    }

    /// Sets IDT gate `vector`.
    pub fn idt(&mut self, vector: u32, descriptor: [u64; 2]) {
        self.poke64(IDT + vector * 16, descriptor[0]);
        self.poke64(IDT + vector * 16 + 8, descriptor[1]);
    }

    /// Points IDT gate `vector` at its stub: an interrupt gate with `dpl`, on
    /// IST stack `ist` (0: none).
    pub fn idt_stub(&mut self, vector: u32, dpl: u8, ist: u8) {
        let at = self.addr(&format!("isr{vector:02x}"));
        self.idt(
            vector,
            gate64(KCODE64, u64::from(at), desc::INT_GATE, dpl, ist),
        );
    }

    /// Stores `s` NUL-terminated in the string area and returns its address.
    pub fn string(&mut self, s: &str) -> u32 {
        let at = self.next_string;
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        assert!(
            at as usize + bytes.len() <= STRINGS_END as usize,
            "strings full"
        );
        self.poke(at, &bytes);
        self.next_string += bytes.len() as u32;
        at
    }

    /// The segments, the 64-bit TSS, the pseudo-descriptors, interrupt gates to
    /// the stubs (DPL 0, except 0x80, which ring 3 may use) and the paging
    /// structures (see the module docs).
    fn base_tables(&mut self) {
        self.gdt(1, flat(desc::CODE_XR, desc::L));
        self.gdt(2, flat(desc::DATA_RW, desc::DB));
        self.gdt(3, flat(desc::DPL3 | desc::CODE_XR, desc::DB));
        self.gdt(4, flat(desc::DPL3 | desc::DATA_RW, desc::DB));
        self.gdt(5, flat(desc::DPL3 | desc::CODE_XR, desc::L));
        self.gdt(6, flat(desc::CODE_XR, desc::DB));
        // The 64-bit TSS: limit 0x67, so no I/O bitmap (SDM vol. 3A §8.7).
        let tss = segment(TSS64, 0x67, desc::P | desc::TSS64, 0);
        self.gdt16(7, [tss, 0]);
        self.poke64(TSS64 + 4, u64::from(RSP0_TOP));
        self.poke64(TSS64 + 0x24, u64::from(IST1_TOP));
        self.poke64(TSS64 + 0x2C, u64::from(IST2_TOP));
        self.poke(TSS64 + 0x66, &0x68u16.to_le_bytes());

        let gdt_limit = (GDT_ENTRIES * 8 - 1) as u16;
        self.poke(GDTR, &gdt_limit.to_le_bytes());
        self.poke64(GDTR + 2, u64::from(GDT));
        self.poke(IDTR, &0xFFFu16.to_le_bytes());
        self.poke64(IDTR + 2, u64::from(IDT));
        for v in VECTORS.into_iter().flatten() {
            self.idt_stub(v, if v == 0x80 { 3 } else { 0 }, 0);
        }

        self.poke64(PML4, u64::from(PDPT) | pte::PWU);
        self.poke64(PML4 + 511 * 8, u64::from(PDPT) | pte::PWU);
        self.poke64(PDPT, u64::from(PD0) | pte::PWU);
        self.poke64(PDPT + 8, pte::PWU | pte::PS);
        self.poke64(PD0, u64::from(PT0) | pte::PWU);
        for i in 1..16u64 {
            self.poke64(PD0 + 8 * i as u32, (i << 21) | pte::PWU | pte::PS);
        }
        for i in 0..512u64 {
            self.poke64(PT0 + 8 * i as u32, (i << 12) | pte::PWU);
        }
    }

    /// The 64-bit entry: reload the data segments, take the ring-0 stack, load
    /// IDTR and TR.
    fn prologue(&mut self) -> AsmResult {
        self.at("entry64")?;
        self.mov(ax, u32::from(KDATA))?;
        self.mov(ds, ax)?;
        self.mov(es, ax)?;
        self.mov(fs, ax)?;
        self.mov(gs, ax)?;
        self.mov(ss, ax)?;
        self.mov(rsp, u64::from(STACK0_TOP))?;
        self.lidt(ptr(IDTR))?;
        self.mov(ax, u32::from(TSS_SEL))?;
        self.ltr(ax)?;
        self.set_recovery("unexpected")?;
        self.jmp_to("main")
    }

    fn runtime(&mut self) -> AsmResult {
        self.serial_routines()?;
        self.handlers()?;
        self.exit_routines()
    }

    /// `putc` (AL), `print` (RSI) and `hex64` (RAX), preserving all registers
    /// and RFLAGS.DF.
    fn serial_routines(&mut self) -> AsmResult {
        self.at("putc")?;
        self.push(rdx)?;
        self.push(rax)?;
        self.mov(dx, 0x3FDu32)?;
        self.at("putc.wait")?;
        self.in_(al, dx)?;
        self.test(al, 0x20)?; // LSR bit 5: THR empty (16550A datasheet)
        let wait = self.label("putc.wait");
        self.jz(wait)?;
        self.pop(rax)?;
        self.mov(dx, 0x3F8u32)?;
        self.out(dx, al)?;
        self.pop(rdx)?;
        self.ret()?;

        self.at("print")?;
        self.push(rax)?;
        self.push(rsi)?;
        self.at("print.next")?;
        self.mov(al, byte_ptr(rsi))?;
        self.inc(rsi)?;
        self.test(al, al)?;
        let done = self.label("print.done");
        self.jz(done)?;
        self.call_to("putc")?;
        self.jmp_to("print.next")?;
        self.at("print.done")?;
        self.pop(rsi)?;
        self.pop(rax)?;
        self.ret()?;

        self.at("hex64")?;
        self.push(rax)?;
        self.push(rbx)?;
        self.push(rcx)?;
        self.mov(rbx, rax)?;
        self.mov(ecx, 16u32)?;
        self.at("hex64.digit")?;
        self.rol(rbx, 4)?;
        self.mov(eax, ebx)?;
        self.and(eax, 0xFu32)?;
        self.add(al, b'0' as u32)?;
        self.cmp(al, b'9' as u32)?;
        let emit = self.label("hex64.emit");
        self.jbe(emit)?;
        self.add(al, (b'A' - b'9' - 1) as u32)?;
        self.at("hex64.emit")?;
        self.call_to("putc")?;
        self.dec(ecx)?;
        let digit = self.label("hex64.digit");
        self.jnz(digit)?;
        self.pop(rcx)?;
        self.pop(rbx)?;
        self.pop(rax)?;
        self.ret()
    }

    /// The vector stubs and the common handler (see the module docs).
    fn handlers(&mut self) -> AsmResult {
        for v in VECTORS.into_iter().flatten() {
            self.at(&format!("isr{v:02x}"))?;
            if !WITH_ERROR.contains(&v) {
                self.push(0)?;
            }
            self.push(v as i32)?;
            self.jmp_to("common")?;
        }
        self.at("common")?;
        for r in [
            rax, rcx, rdx, rbx, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
        ] {
            self.push(r)?;
        }
        self.mov(ax, ss)?;
        self.mov(word_ptr(rec::ENTRY_SS), ax)?;
        self.cld()?;
        self.mov(rsi, rsp)?;
        self.mov(edi, rec::R15)?;
        // REP MOVSD, not MOVSQ: the same bytes, and x86bt's interpreter has
        // no MOVSQ yet.
        self.mov(ecx, rec::QWORDS * 2)?;
        self.rep().movsd()?;
        self.mov(rax, cr2)?;
        self.mov(qword_ptr(rec::CR2), rax)?;
        self.lea(rax, ptr(rsp + (rec::RIP - rec::R15) as i32))?;
        self.mov(qword_ptr(rec::FRAME), rax)?;
        self.inc(qword_ptr(FAULTS))?;
        self.jmp_to("resume")?;

        // Abandon everything: ring-0 data segments, the recovery stack, RFLAGS =
        // 2, and on at the recovery point.
        self.at("resume")?;
        self.mov(ax, u32::from(KDATA))?;
        self.mov(ss, ax)?;
        self.mov(rsp, qword_ptr(RECOVER_RSP))?;
        self.mov(ds, ax)?;
        self.mov(es, ax)?;
        self.mov(fs, ax)?;
        self.mov(gs, ax)?;
        self.push(rflags::FIXED as i32)?;
        self.popfq()?;
        self.jmp(qword_ptr(RECOVER_RIP))
    }

    /// `exit` (status from the failure count), `unexpected` (a fault outside any
    /// check) and `fail_details` (the tail of a FAIL line).
    fn exit_routines(&mut self) -> AsmResult {
        self.at("exit")?;
        self.cmp(qword_ptr(FAILS), 0)?;
        self.jne_to("exit.failed")?;
        self.mov(al, 0)?;
        self.out(0xF4u32, al)?;
        self.hlt()?;
        self.at("exit.failed")?;
        self.mov(al, 1)?;
        self.out(0xF4u32, al)?;
        self.hlt()?;

        self.at("unexpected")?;
        let msg = self.string("FAIL unexpected fault");
        self.mov(esi, msg)?;
        self.call_to("print")?;
        self.call_to("fail_details")?;
        self.mov(al, 2)?;
        self.out(0xF4u32, al)?;
        self.hlt()?;

        self.at("fail_details")?;
        let fields = [
            (" check=", CHECK_ID),
            (" got=", ACTUAL),
            (" vector=", rec::VECTOR),
            (" error=", rec::ERROR),
            (" rip=", rec::RIP),
            (" cr2=", rec::CR2),
        ];
        for (text, addr) in fields {
            let s = self.string(text);
            self.mov(esi, s)?;
            self.call_to("print")?;
            self.mov(rax, qword_ptr(addr))?;
            self.call_to("hex64")?;
        }
        let nl = self.string("\n");
        self.mov(esi, nl)?;
        self.call_to("print")?;
        self.ret()
    }

    /// Ends the main flow: leave through the debug-exit port.
    pub fn exit(&mut self) -> AsmResult {
        self.jmp_to("exit")
    }

    /// Makes any fault resume at `label` with the current RSP (clobbers RAX).
    pub fn set_recovery(&mut self, label: &str) -> AsmResult {
        let l = self.label(label);
        self.lea(rax, ptr(l))?;
        self.mov(qword_ptr(RECOVER_RIP), rax)?;
        self.mov(qword_ptr(RECOVER_RSP), rsp)
    }

    /// Expects a fault: it will resume at the case's `recover` label, and the
    /// record starts empty (clobbers RAX).
    pub fn arm(&mut self, c: &Case) -> AsmResult {
        self.set_recovery(&c.recover())?;
        self.mov(qword_ptr(rec::VECTOR), NO_FAULT as i32)?;
        self.mov(qword_ptr(rec::ERROR), 0)?;
        self.mov(qword_ptr(rec::RIP), 0)
    }

    /// Marks the instruction expected to fault.
    pub fn mark(&mut self, c: &Case) -> AsmResult {
        self.at(&c.mark())
    }

    /// Ends a trigger: UD2 (so a trigger that does not fault reports #UD, from
    /// any ring or mode), then the recovery point, where further faults fail the
    /// case.
    pub fn landing(&mut self, c: &Case) -> AsmResult {
        self.at(&c.end())?;
        self.ud2()?;
        self.at(&c.recover())?;
        self.set_recovery(&c.fail())
    }

    /// One check, `FAIL`ing the case unless RAX == `want` (clobbers R11).
    pub fn expect_rax(&mut self, c: &Case, want: u64) -> AsmResult {
        let id = c.checks.get() + 1;
        c.checks.set(id);
        self.mov(qword_ptr(CHECK_ID), id as i32)?;
        self.mov(qword_ptr(ACTUAL), rax)?;
        self.mov(r11, want)?;
        self.cmp(rax, r11)?;
        self.jne_to(&c.fail())
    }

    /// Checks the qword at `addr` (clobbers RAX, R11).
    pub fn expect64(&mut self, c: &Case, addr: u32, want: u64) -> AsmResult {
        self.mov(rax, qword_ptr(addr))?;
        self.expect_rax(c, want)
    }

    /// Checks the word at `addr` (selectors).
    pub fn expect16(&mut self, c: &Case, addr: u32, want: u16) -> AsmResult {
        self.movzx(eax, word_ptr(addr))?;
        self.expect_rax(c, u64::from(want))
    }

    /// Checks `[addr] & mask`.
    pub fn expect_bits(&mut self, c: &Case, addr: u32, mask: u64, want: u64) -> AsmResult {
        self.mov(rax, qword_ptr(addr))?;
        self.mov(r11, mask)?;
        self.and(rax, r11)?;
        self.expect_rax(c, want)
    }

    /// Checks a 64-bit register.
    pub fn expect_reg(&mut self, c: &Case, r: AsmRegister64, want: u64) -> AsmResult {
        self.mov(rax, r)?;
        self.expect_rax(c, want)
    }

    /// Checks the qword at [RSP] (clobbers RAX, R11).
    pub fn expect_reg_at_rsp(&mut self, c: &Case, want: u64) -> AsmResult {
        self.mov(rax, qword_ptr(rsp))?;
        self.expect_rax(c, want)
    }

    /// Checks the recorded vector, error code and faulting RIP.
    pub fn expect_fault(&mut self, c: &Case, vector: u64, error: u64, rip: u64) -> AsmResult {
        self.expect64(c, rec::VECTOR, vector)?;
        self.expect64(c, rec::ERROR, error)?;
        self.expect64(c, rec::RIP, rip)
    }

    /// Checks a fault at the case's marked instruction.
    pub fn expect_fault_at_mark(&mut self, c: &Case, vector: u64, error: u64) -> AsmResult {
        let rip = self.addr(&c.mark());
        self.expect_fault(c, vector, error, u64::from(rip))
    }

    /// Pushes an IRETQ frame to `cs:rip` with stack `ss:rsp` and executes IRETQ
    /// (clobbers RAX).
    pub fn iretq_to(&mut self, code: u16, rip: u32, flags: u64, stack: u16, top: u32) -> AsmResult {
        self.push(i32::from(stack))?;
        self.mov(eax, top)?;
        self.push(rax)?;
        self.push(flags as i32)?;
        self.push(i32::from(code))?;
        self.mov(eax, rip)?;
        self.push(rax)?;
        self.iretq()
    }

    /// IRETQs to 64-bit ring 3 at `label` (the ring-3 stack, IOPL 0).
    pub fn iretq_to_ring3(&mut self, label: &str) -> AsmResult {
        let rip = self.addr(label);
        self.iretq_to(UCODE64, rip, rflags::FIXED, UDATA, RSP3_TOP)
    }

    /// One check called `name`: recovery armed at its fail label, `body`, then
    /// the PASS or FAIL line.
    pub fn case(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Kernel, &Case) -> AsmResult,
    ) -> AsmResult {
        assert!(
            !self.cases.iter().any(|n| n == name),
            "duplicate case {name}"
        );
        self.cases.push(name.to_string());
        let c = Case {
            name: name.to_string(),
            checks: Cell::new(0),
        };
        self.mov(qword_ptr(CHECK_ID), 0)?;
        self.mov(qword_ptr(ACTUAL), 0)?;
        self.set_recovery(&c.fail())?;
        body(self, &c)?;
        let pass = self.string(&format!("PASS {name}\n"));
        let fail = self.string(&format!("FAIL {name}"));
        self.mov(esi, pass)?;
        self.call_to("print")?;
        self.jmp_to(&c.label("done"))?;
        self.at(&c.fail())?;
        self.mov(esi, fail)?;
        self.call_to("print")?;
        self.call_to("fail_details")?;
        self.inc(qword_ptr(FAILS))?;
        self.at(&c.label("done"))?;
        // Whatever the case did to the stack, segments and flags, the next one
        // starts from the runtime's state.
        self.mov(rsp, u64::from(STACK0_TOP))?;
        self.mov(ax, u32::from(KDATA))?;
        self.mov(ds, ax)?;
        self.mov(es, ax)?;
        self.mov(ss, ax)?;
        self.set_recovery("unexpected")
    }

    /// The image file: header, entry stub, 64-bit code, data area.
    fn image(&self, entry: &[u8], code: &[u8]) -> Vec<u8> {
        assert!(
            code.len() <= (DATA_BASE - CODE64) as usize,
            "code overruns the data area"
        );
        const MAGIC: u32 = 0x1BAD_B002;
        // Page-aligned modules, memory information, address fields valid.
        const FLAGS: u32 = 0x0001_0003;
        let header = [
            MAGIC,
            FLAGS,
            0u32.wrapping_sub(MAGIC).wrapping_sub(FLAGS),
            IMAGE_BASE,
            IMAGE_BASE,
            IMAGE_END,
            BSS_END,
            ENTRY32,
        ];
        let mut image = vec![0u8; (IMAGE_END - IMAGE_BASE) as usize];
        for (i, field) in header.iter().enumerate() {
            image[4 * i..4 * i + 4].copy_from_slice(&field.to_le_bytes());
        }
        let at = |a: u32| (a - IMAGE_BASE) as usize;
        image[at(ENTRY32)..at(ENTRY32) + entry.len()].copy_from_slice(entry);
        image[at(CODE64)..at(CODE64) + code.len()].copy_from_slice(code);
        image[at(DATA_BASE)..].copy_from_slice(&self.data);
        image
    }
}

/// Code assembled apart from the kernel (compatibility-mode code), with named
/// labels.
pub struct Blob {
    a: CodeAssembler,
    labels: HashMap<&'static str, CodeLabel>,
    prev: HashMap<&'static str, u32>,
}

impl Deref for Blob {
    type Target = CodeAssembler;
    fn deref(&self) -> &CodeAssembler {
        &self.a
    }
}

impl DerefMut for Blob {
    fn deref_mut(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }
}

impl Blob {
    /// The label called `name`, created on first use.
    pub fn label(&mut self, name: &'static str) -> CodeLabel {
        let a = &mut self.a;
        *self.labels.entry(name).or_insert_with(|| a.create_label())
    }

    /// Places `name` at the next instruction.
    pub fn at(&mut self, name: &'static str) -> AsmResult {
        let mut l = self.label(name);
        self.a.set_label(&mut l)?;
        self.labels.insert(name, l);
        Ok(())
    }

    /// The address of `name` from the previous pass (0 in the first).
    pub fn addr(&self, name: &str) -> u32 {
        self.prev.get(name).copied().unwrap_or(0)
    }
}

/// Assembles `build` at `origin` until its label addresses settle (see
/// [`build`]); returns the bytes and the labels' addresses.
pub fn assemble_blob(
    bitness: u32,
    origin: u32,
    build: impl Fn(&mut Blob) -> AsmResult,
) -> (Vec<u8>, HashMap<&'static str, u32>) {
    let mut prev: HashMap<&'static str, u32> = HashMap::new();
    for _ in 0..8 {
        let mut b = Blob {
            a: CodeAssembler::new(bitness).expect("assembler"),
            labels: HashMap::new(),
            prev: prev.clone(),
        };
        build(&mut b).expect("blob assembles");
        let res =
            b.a.assemble_options(
                u64::from(origin),
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .expect("blob encodes");
        let found: HashMap<&'static str, u32> = b
            .labels
            .iter()
            .map(|(name, l)| (*name, res.label_ip(l).expect("placed") as u32))
            .collect();
        if found == prev {
            return (res.inner.code_buffer, found);
        }
        prev = found;
    }
    panic!("blob label addresses did not settle");
}

/// Runs a built kernel under x86bt, once per engine (interpreter, translator,
/// lockstep), and under `qemu-system-x86_64 -kernel`, and asserts that each run
/// printed exactly one `PASS` line per check, in order, and left through the
/// debug-exit port with 0.
///
/// QEMU is the independent oracle here through the kernel's own output: the
/// differ steps `qemu-system-i386`, which has no long mode.
pub fn assert_all_pass(name: &str, built: &Built) {
    assert_all_pass_qemu_differs(name, built, &[]);
}

/// [`assert_all_pass`] for a kernel with checks where QEMU is known to differ
/// from the SDM: each `(case, why)` must print `FAIL case` under QEMU (so the
/// divergence stays known) and `PASS case` under x86bt.
pub fn assert_all_pass_qemu_differs(name: &str, built: &Built, qemu_fails: &[(&str, &str)]) {
    for (case, why) in qemu_fails {
        assert!(built.cases.iter().any(|c| c == case), "no case {case}");
        assert!(!why.is_empty());
    }
    let dir = std::env::temp_dir().join(format!("x86bt-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.bin"));
    std::fs::write(&path, &built.image).expect("write kernel");
    let mut runs: Vec<_> = ["interp", "jit", "lockstep"]
        .iter()
        .map(|engine| (engine.to_string(), Some(run_kernel(&path, engine))))
        .collect();
    runs.push(("qemu-system-x86_64".to_string(), run_qemu(name, &path)));
    // X86BT_LM_KEEP=1 keeps the image for running it by hand.
    if std::env::var_os("X86BT_LM_KEEP").is_none() {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
    }
    let want: Vec<String> = built.cases.iter().map(|c| format!("PASS {c}")).collect();
    for (engine, out) in runs {
        let Some(out) = out else { continue };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut got: Vec<&str> = stdout.lines().collect();
        if engine.starts_with("qemu") {
            // A known divergence: FAIL with details becomes the PASS line.
            for line in got.iter_mut() {
                for (case, _) in qemu_fails {
                    let fail = format!("FAIL {case} ");
                    if line.starts_with(&fail) {
                        let i = want.iter().position(|w| w == &format!("PASS {case}"));
                        *line = want[i.expect("case is listed")].as_str();
                    }
                }
            }
            let out = stdout.lines().filter(|l| l.starts_with("FAIL")).count();
            assert_eq!(
                out,
                qemu_fails.len(),
                "kernel {name}: QEMU's known divergences changed:\n{stdout}"
            );
        }
        assert_eq!(
            got, want,
            "kernel {name} on {engine}, output:\n{stdout}\nstderr:\n{stderr}"
        );
        let status = if engine.starts_with("qemu") && !qemu_fails.is_empty() {
            3
        } else {
            1
        };
        assert_eq!(
            out.status.code(),
            Some(status),
            "kernel {name} on {engine} must exit through the debug-exit port with 0; stderr:\n{stderr}"
        );
    }
}

/// One run of the kernel image at `path` on `engine`.
fn run_kernel(path: &std::path::Path, engine: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(["run", "--kernel"])
        .arg(path)
        .args([
            "--serial",
            "stdio",
            "--no-reboot",
            "--max-insns",
            "50000000",
            "--engine",
            engine,
        ])
        .args(["-m", "32"])
        .output()
        .expect("run x86bt")
}

/// One run under `qemu-system-x86_64 -kernel` (TCG, `-cpu max`, which has 1 GiB
/// pages, NX, SYSCALL and RDTSCP), or `None` when QEMU is missing (a failure
/// under CI).
fn run_qemu(name: &str, path: &std::path::Path) -> Option<std::process::Output> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("qemu-system-x86_64").exists());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have qemu-system-x86_64"
        );
        eprintln!("SKIPPED QEMU run of {name}: qemu-system-x86_64 not found");
        return None;
    }
    let out = Command::new("timeout")
        .args(["120", "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "max", "-m", "32", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args([
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=1",
        ])
        .arg("-kernel")
        .arg(path)
        .output()
        .expect("run qemu-system-x86_64");
    Some(out)
}
