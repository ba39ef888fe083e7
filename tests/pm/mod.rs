//! Builder and runner for the protected-mode test kernels in `pm_kernels.rs`.
//!
//! A kernel is a Multiboot v1 image in the a.out-kludge form (Multiboot 0.6.96
//! §3.1.3): the 32-byte header at [`IMAGE_BASE`], flat 32-bit code right after it,
//! and a data area at [`DATA_BASE`] that the Rust side fills with the GDT, IDT, TSSs,
//! strings and page tables. The whole image is loaded at 1 MiB; bss up to
//! [`BSS_END`] holds the stacks.
//!
//! Every kernel shares a runtime, emitted by [`Kernel::new`]:
//! - a prologue that loads its own GDT (the loader leaves GDTR undefined), reloads
//!   every segment register, takes the ring-0 stack, and loads IDTR and TR;
//! - `print` (ESI = NUL-terminated string) and `hex32` (EAX) on COM1, polling the
//!   LSR's THR-empty bit;
//! - a stub per vector in [`VECTORS`] (pushing a dummy error code where the CPU
//!   pushes none) and a common handler. The handler stores every register, the
//!   selectors it found in DS/ES/FS/GS, the vector, the error code and up to nine
//!   dwords of the CPU's frame at [`rec`], plus CR2 and the frame's address. It then
//!   abandons the frame and resumes at `[RECOVER_EIP]` with `ESP = [RECOVER_ESP]`,
//!   flat ring-0 segments and EFLAGS = 2, so a fault from ring 3, V86 mode or a
//!   broken segment lands back in plain ring-0 code.
//!
//! Each check ([`Kernel::case`]) arms that recovery, runs, and prints `PASS name`, or
//! `FAIL name` with the failing check's number, the value it saw and the last fault.
//! `exit` writes 0 to the debug-exit port (status 1) when nothing failed, and 1
//! (status 3) otherwise.
//!
//! The 32-bit `code_asm` assembler cannot use a label as an immediate or a
//! displacement, so [`build`] runs the kernel's builder repeatedly, handing each pass
//! the label addresses of the previous one, until they settle. Every value that
//! depends on a label is encoded in a fixed-size form (labels lie above 1 MiB, so an
//! immediate never shrinks to 8 bits), which makes the second pass final.

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
/// The entry point: code starts right after the header.
pub const CODE_BASE: u32 = IMAGE_BASE + HEADER_LEN;
/// The start of the Rust-built data area; code must end below it.
pub const DATA_BASE: u32 = 0x11_0000;
/// The GDT, [`GDT_ENTRIES`] descriptors.
pub const GDT: u32 = 0x11_0000;
/// GDTR.limit is `GDT_ENTRIES * 8 - 1`, so selector index 32 is beyond it.
pub const GDT_ENTRIES: u32 = 32;
/// The IDT, 256 gates.
pub const IDT: u32 = 0x11_0800;
/// Free for an LDT.
pub const LDT: u32 = 0x11_1000;
/// The main task's TSS, followed by its I/O permission bitmap.
pub const TSS_MAIN: u32 = 0x11_2000;
/// Bytes of I/O bitmap (all 65536 ports); one 0xFF byte follows it (SDM vol. 1
/// §19.5.2).
const IOMAP_LEN: u32 = 0x2000;
/// The one port the main TSS's I/O bitmap denies.
pub const DENIED_PORT: u16 = 0x300;
/// Three more 104-byte TSSs for task-switch tests.
pub const TSS_AUX: [u32; 3] = [0x11_5000, 0x11_5100, 0x11_5200];
/// Runtime variables.
const VARS: u32 = 0x11_6000;
/// Scratch memory a kernel may use for its own variables (0xF00 bytes).
pub const SCRATCH: u32 = VARS + 0x100;
/// Strings printed by the checks.
const STRINGS: u32 = 0x11_7000;
const STRINGS_END: u32 = 0x11_A000;
/// Free for page tables, data pages and code blobs, up to [`IMAGE_END`].
pub const FREE: u32 = 0x11_A000;
/// The end of the loaded bytes.
pub const IMAGE_END: u32 = 0x13_0000;
/// The end of bss (zeroed by the loader).
const BSS_END: u32 = 0x18_0000;
/// The main ring-0 stack, used by the checks.
pub const STACK0_TOP: u32 = 0x18_0000;
/// TSS.ESP0: the stack an interrupt or call gate switches to from ring 3 or V86.
pub const ESP0_TOP: u32 = 0x17_C000;
/// The ring-3 stack.
pub const ESP3_TOP: u32 = 0x17_8000;
/// Stacks of the tasks in [`TSS_AUX`].
pub const TASK_STACKS: [u32; 3] = [0x17_4000, 0x17_0000, 0x16_C000];

/// Flat 32-bit ring-0 code.
pub const CODE0: u16 = 0x08;
/// Flat ring-0 data.
pub const DATA0: u16 = 0x10;
/// Flat 32-bit ring-3 code, RPL 3.
pub const CODE3: u16 = 0x18 | 3;
/// Flat ring-3 data, RPL 3.
pub const DATA3: u16 = 0x20 | 3;
/// The main task's TSS.
pub const TSS_SEL: u16 = 0x28;
// GDT indexes 6 to GDT_ENTRIES - 1 are the kernel's own.

/// EFLAGS bits (SDM vol. 1 §3.4.3).
pub mod eflags {
    /// Carry.
    pub const CF: u32 = 1 << 0;
    /// Bit 1 always reads 1.
    pub const FIXED: u32 = 1 << 1;
    /// Interrupt enable.
    pub const IF: u32 = 1 << 9;
    /// I/O privilege level 3.
    pub const IOPL3: u32 = 3 << 12;
    /// Nested task.
    pub const NT: u32 = 1 << 14;
    /// Virtual-8086 mode.
    pub const VM: u32 = 1 << 17;
    /// Alignment check.
    pub const AC: u32 = 1 << 18;
}

/// Exception vectors (SDM vol. 3A Table 6-1).
pub mod vector {
    /// Segment not present.
    pub const NP: u32 = 11;
    /// Stack-segment fault.
    pub const SS: u32 = 12;
    /// General protection.
    pub const GP: u32 = 13;
    /// Page fault.
    pub const PF: u32 = 14;
}

/// Descriptor access bytes and flags (SDM vol. 3A §3.4.5, §3.5).
pub mod desc {
    /// Present.
    pub const P: u8 = 0x80;
    /// Code or data (not a system descriptor).
    pub const S: u8 = 0x10;
    /// DPL 3.
    pub const DPL3: u8 = 0x60;
    /// Data, read-only.
    pub const DATA_RO: u8 = 0x0;
    /// Data, read/write.
    pub const DATA_RW: u8 = 0x2;
    /// Data, read/write, expand-down.
    pub const DATA_RW_DOWN: u8 = 0x6;
    /// Code, execute-only.
    pub const CODE_X: u8 = 0x8;
    /// Code, execute/read.
    pub const CODE_XR: u8 = 0xA;
    /// System: LDT.
    pub const LDT: u8 = 0x2;
    /// System: available 32-bit TSS.
    pub const TSS32: u8 = 0x9;
    /// System: available 16-bit TSS.
    pub const TSS16: u8 = 0x1;
    /// System: busy 32-bit TSS.
    pub const TSS32_BUSY: u8 = 0xB;
    /// System: task gate.
    pub const TASK_GATE: u8 = 0x5;
    /// System: 32-bit call gate.
    pub const CALL_GATE: u8 = 0xC;
    /// System: 32-bit interrupt gate.
    pub const INT_GATE: u8 = 0xE;
    /// Flags nibble: 4 KiB granularity.
    pub const G: u8 = 0x8;
    /// Flags nibble: 32-bit default operand size / big segment.
    pub const DB: u8 = 0x4;
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

/// A present gate descriptor (SDM vol. 3A Figures 5-8 and 6-2).
pub fn gate(selector: u16, offset: u32, kind: u8, dpl: u8, params: u8) -> u64 {
    let o = u64::from(offset);
    (o & 0xFFFF)
        | u64::from(selector) << 16
        | u64::from(params & 0x1F) << 32
        | u64::from(desc::P | dpl << 5 | kind) << 40
        | (o >> 16) << 48
}

/// The type field (bits 8-11 of the high dword) of a descriptor.
pub const TYPE_MASK: u32 = 0xF << 8;

/// Page-table entry bits (SDM vol. 3A Table 4-6 and Table 4-11).
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
    /// Page size (a 4 MiB or 2 MiB page in a directory entry).
    pub const PS: u64 = 1 << 7;
    /// Global.
    pub const G: u64 = 1 << 8;
    /// Execute-disable (PAE, with EFER.NXE).
    pub const XD: u64 = 1 << 63;
}

/// Control-register and MSR bits (SDM vol. 3A §2.5, §2.2.1).
pub mod ctl {
    /// CR0.TS.
    pub const CR0_TS: u32 = 1 << 3;
    /// CR0.WP.
    pub const CR0_WP: u32 = 1 << 16;
    /// CR0.PG.
    pub const CR0_PG: u32 = 1 << 31;
    /// CR4.PSE.
    pub const CR4_PSE: u32 = 1 << 4;
    /// CR4.PAE.
    pub const CR4_PAE: u32 = 1 << 5;
    /// CR4.PGE.
    pub const CR4_PGE: u32 = 1 << 7;
    /// The IA32_EFER MSR.
    pub const MSR_EFER: u32 = 0xC000_0080;
    /// IA32_EFER.NXE.
    pub const EFER_NXE: u32 = 1 << 11;
}

/// What the common handler records. The order is the stack's, low to high: PUSHAD,
/// the four data selectors found at entry, vector, error code, then the CPU's frame
/// (EIP, CS, EFLAGS, and with a stack switch ESP, SS, and from V86 ES, DS, FS, GS).
pub mod rec {
    use super::VARS;
    /// EDI at the fault.
    pub const EDI: u32 = VARS;
    /// ESI at the fault.
    pub const ESI: u32 = VARS + 0x04;
    /// EBP at the fault.
    pub const EBP: u32 = VARS + 0x08;
    /// EBX at the fault.
    pub const EBX: u32 = VARS + 0x10;
    /// EDX at the fault.
    pub const EDX: u32 = VARS + 0x14;
    /// ECX at the fault.
    pub const ECX: u32 = VARS + 0x18;
    /// EAX at the fault.
    pub const EAX: u32 = VARS + 0x1C;
    /// GS as the handler found it.
    pub const ENTRY_GS: u32 = VARS + 0x20;
    /// FS as the handler found it.
    pub const ENTRY_FS: u32 = VARS + 0x24;
    /// ES as the handler found it.
    pub const ENTRY_ES: u32 = VARS + 0x28;
    /// DS as the handler found it.
    pub const ENTRY_DS: u32 = VARS + 0x2C;
    /// The vector, or [`super::NO_FAULT`].
    pub const VECTOR: u32 = VARS + 0x30;
    /// The error code (0 for vectors without one).
    pub const ERROR: u32 = VARS + 0x34;
    /// Pushed EIP.
    pub const EIP: u32 = VARS + 0x38;
    /// Pushed CS.
    pub const CS: u32 = VARS + 0x3C;
    /// Pushed EFLAGS.
    pub const EFLAGS: u32 = VARS + 0x40;
    /// Pushed ESP (stack switch only).
    pub const ESP: u32 = VARS + 0x44;
    /// Pushed SS (stack switch only).
    pub const SS: u32 = VARS + 0x48;
    /// Pushed ES (from V86 only).
    pub const V86_ES: u32 = VARS + 0x4C;
    /// Pushed DS (from V86 only).
    pub const V86_DS: u32 = VARS + 0x50;
    /// Pushed FS (from V86 only).
    pub const V86_FS: u32 = VARS + 0x54;
    /// Pushed GS (from V86 only).
    pub const V86_GS: u32 = VARS + 0x58;
    /// Dwords copied from the handler's stack.
    pub const DWORDS: u32 = 23;
    /// CR2 at the handler.
    pub const CR2: u32 = VARS + 0x5C;
    /// The address of the pushed EIP: where the CPU put its frame.
    pub const FRAME: u32 = VARS + 0x60;
}

/// [`rec::VECTOR`] when nothing was delivered since the case armed.
pub const NO_FAULT: u32 = 0xFFFF_FFFF;
const FAULTS: u32 = VARS + 0x64;
const RECOVER_EIP: u32 = VARS + 0x68;
const RECOVER_ESP: u32 = VARS + 0x6C;
const FAILS: u32 = VARS + 0x70;
const CHECK_ID: u32 = VARS + 0x74;
const ACTUAL: u32 = VARS + 0x78;
const GDTR: u32 = VARS + 0x80;
const IDTR: u32 = VARS + 0x88;

/// Vectors with a handler stub: the exceptions and four software vectors.
pub const VECTORS: [std::ops::RangeInclusive<u32>; 2] = [0..=31, 0x80..=0x83];
/// Exceptions that push an error code (SDM vol. 3A Table 6-1).
const WITH_ERROR: [u32; 7] = [8, 10, 11, 12, 13, 14, 17];

/// A 32-bit TSS's fields (SDM vol. 3A Figure 7-2).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tss {
    pub link: u16,
    pub esp0: u32,
    pub ss0: u16,
    pub cr3: u32,
    pub eip: u32,
    pub eflags: u32,
    pub eax: u32,
    pub ecx: u32,
    pub edx: u32,
    pub ebx: u32,
    pub esp: u32,
    pub ebp: u32,
    pub esi: u32,
    pub edi: u32,
    pub es: u16,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub fs: u16,
    pub gs: u16,
    pub ldt: u16,
    pub iomap: u16,
}

impl Tss {
    /// A ring-0 task with flat segments, starting at `eip` on the stack `esp`.
    pub fn ring0(eip: u32, stack: u32) -> Self {
        Tss {
            eip,
            esp: stack,
            eflags: eflags::FIXED,
            cs: CODE0,
            ss: DATA0,
            ds: DATA0,
            es: DATA0,
            fs: DATA0,
            gs: DATA0,
            ss0: DATA0,
            esp0: stack,
            iomap: 0x68,
            ..Tss::default()
        }
    }
}

/// Offsets of TSS fields the checks read.
pub mod tss_off {
    /// Previous task link.
    pub const LINK: u32 = 0x00;
    /// Saved EIP.
    pub const EIP: u32 = 0x20;
    /// Saved EFLAGS.
    pub const EFLAGS: u32 = 0x24;
}

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
    /// The UD2 after the trigger; an INT n returns here.
    pub fn end(&self) -> String {
        self.label("end")
    }
}

/// A kernel being assembled: the code assembler plus the data area.
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

/// Assembles a kernel: the shared runtime, then `body` at `main`. `body` ends its
/// main flow with [`Kernel::exit`] and may emit routines after it.
pub fn build(body: fn(&mut Kernel) -> AsmResult) -> Built {
    let mut prev = HashMap::new();
    for _ in 0..8 {
        let mut k = Kernel::new(prev.clone()).expect("runtime assembles");
        body(&mut k).expect("kernel assembles");
        let res =
            k.a.assemble_options(
                u64::from(CODE_BASE),
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
                image: k.image(&code),
                cases: k.cases,
            };
        }
        prev = found;
    }
    panic!("label addresses did not settle");
}

impl Kernel {
    fn new(prev: HashMap<String, u32>) -> Result<Self, IcedError> {
        let mut k = Kernel {
            a: CodeAssembler::new(32)?,
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

    /// The address of label `name` from the previous pass (a same-sized placeholder
    /// in the first).
    pub fn addr(&mut self, name: &str) -> u32 {
        self.wanted.insert(name.to_string());
        self.prev.get(name).copied().unwrap_or(CODE_BASE)
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

    /// Writes a dword into the data area.
    pub fn poke32(&mut self, addr: u32, value: u32) {
        self.poke(addr, &value.to_le_bytes());
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

    /// Sets IDT gate `vector`.
    pub fn idt(&mut self, vector: u32, descriptor: u64) {
        self.poke64(IDT + vector * 8, descriptor);
    }

    /// Points IDT gate `vector` at its stub, as an interrupt gate with `dpl`.
    pub fn idt_stub(&mut self, vector: u32, dpl: u8) {
        let at = self.addr(&format!("isr{vector:02x}"));
        self.idt(vector, gate(CODE0, at, desc::INT_GATE, dpl, 0));
    }

    /// Writes a TSS at `addr`.
    pub fn tss(&mut self, addr: u32, t: &Tss) {
        let dwords = [
            u32::from(t.link),
            t.esp0,
            u32::from(t.ss0),
            0,
            0,
            0,
            0,
            t.cr3,
            t.eip,
            t.eflags,
            t.eax,
            t.ecx,
            t.edx,
            t.ebx,
            t.esp,
            t.ebp,
            t.esi,
            t.edi,
            u32::from(t.es),
            u32::from(t.cs),
            u32::from(t.ss),
            u32::from(t.ds),
            u32::from(t.fs),
            u32::from(t.gs),
            u32::from(t.ldt),
            u32::from(t.iomap) << 16,
        ];
        for (i, d) in dwords.iter().enumerate() {
            self.poke32(addr + 4 * i as u32, *d);
        }
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

    /// Flat ring-0 and ring-3 segments, the main TSS with its I/O bitmap, the
    /// pseudo-descriptors, and interrupt gates to the stubs: DPL 0, except 0x80,
    /// which ring 3 and V86 code may use as a system call.
    fn base_tables(&mut self) {
        let flat = |access| segment(0, 0xF_FFFF, desc::P | desc::S | access, desc::G | desc::DB);
        self.gdt(1, flat(desc::CODE_XR));
        self.gdt(2, flat(desc::DATA_RW));
        self.gdt(3, flat(desc::DPL3 | desc::CODE_XR));
        self.gdt(4, flat(desc::DPL3 | desc::DATA_RW));
        self.gdt(
            5,
            segment(TSS_MAIN, 0x68 + IOMAP_LEN, desc::P | desc::TSS32, 0),
        );
        let main = Tss {
            ss0: DATA0,
            esp0: ESP0_TOP,
            iomap: 0x68,
            ..Tss::default()
        };
        self.tss(TSS_MAIN, &main);
        let port = u32::from(DENIED_PORT);
        self.poke(TSS_MAIN + 0x68 + port / 8, &[1 << (port % 8)]);
        self.poke(TSS_MAIN + 0x68 + IOMAP_LEN, &[0xFF]);

        let gdt_limit = (GDT_ENTRIES * 8 - 1) as u16;
        self.poke(GDTR, &gdt_limit.to_le_bytes());
        self.poke32(GDTR + 2, GDT);
        self.poke(IDTR, &0x7FFu16.to_le_bytes());
        self.poke32(IDTR + 2, IDT);
        for v in VECTORS.into_iter().flatten() {
            self.idt_stub(v, if v == 0x80 { 3 } else { 0 });
        }
    }

    /// The entry: the loader's segment caches are valid but GDTR is not.
    fn prologue(&mut self) -> AsmResult {
        self.cli()?;
        self.lgdt(ptr(GDTR))?;
        let reload = self.addr("reload");
        self.jmp_far(CODE0, reload)?;
        self.at("reload")?;
        self.flat_data_segments()?;
        self.mov(ss, ax)?;
        self.mov(esp, STACK0_TOP)?;
        self.lidt(ptr(IDTR))?;
        self.mov(ax, u32::from(TSS_SEL))?;
        self.ltr(ax)?;
        self.set_recovery("unexpected")?;
        self.jmp_to("main")
    }

    /// DS, ES, FS and GS = flat ring-0 data (clobbers AX).
    pub fn flat_data_segments(&mut self) -> AsmResult {
        self.mov(ax, u32::from(DATA0))?;
        self.mov(ds, ax)?;
        self.mov(es, ax)?;
        self.mov(fs, ax)?;
        self.mov(gs, ax)
    }

    fn runtime(&mut self) -> AsmResult {
        self.serial_routines()?;
        self.handlers()?;
        self.exit_routines()
    }

    /// `putc` (AL), `print` (ESI) and `hex32` (EAX), preserving all registers.
    fn serial_routines(&mut self) -> AsmResult {
        self.at("putc")?;
        self.push(edx)?;
        self.push(eax)?;
        self.mov(dx, 0x3FDu32)?;
        self.at("putc.wait")?;
        self.in_(al, dx)?;
        self.test(al, 0x20)?; // LSR bit 5: THR empty (16550A datasheet)
        let wait = self.label("putc.wait");
        self.jz(wait)?;
        self.pop(eax)?;
        self.mov(dx, 0x3F8u32)?;
        self.out(dx, al)?;
        self.pop(edx)?;
        self.ret()?;

        self.at("print")?;
        self.push(eax)?;
        self.push(esi)?;
        self.cld()?;
        self.at("print.next")?;
        self.lodsb()?;
        self.test(al, al)?;
        let done = self.label("print.done");
        self.jz(done)?;
        self.call_to("putc")?;
        self.jmp_to("print.next")?;
        self.at("print.done")?;
        self.pop(esi)?;
        self.pop(eax)?;
        self.ret()?;

        self.at("hex32")?;
        self.pushad()?;
        self.mov(ebx, eax)?;
        self.mov(ecx, 8u32)?;
        self.at("hex32.digit")?;
        self.rol(ebx, 4)?;
        self.mov(eax, ebx)?;
        self.and(eax, 0xFu32)?;
        self.add(al, b'0' as u32)?;
        self.cmp(al, b'9' as u32)?;
        let emit = self.label("hex32.emit");
        self.jbe(emit)?;
        self.add(al, (b'A' - b'9' - 1) as u32)?;
        self.at("hex32.emit")?;
        self.call_to("putc")?;
        self.dec(ecx)?;
        let digit = self.label("hex32.digit");
        self.jnz(digit)?;
        self.popad()?;
        self.ret()
    }

    /// The vector stubs and the common handler (see the module docs).
    fn handlers(&mut self) -> AsmResult {
        for v in VECTORS.into_iter().flatten() {
            self.at(&format!("isr{v:02x}"))?;
            if !WITH_ERROR.contains(&v) {
                self.push(0)?;
            }
            self.push(v)?;
            self.jmp_to("common")?;
        }
        self.at("common")?;
        self.push(ds)?;
        self.push(es)?;
        self.push(fs)?;
        self.push(gs)?;
        self.pushad()?;
        self.mov(ax, u32::from(DATA0))?;
        self.mov(ds, ax)?;
        self.mov(es, ax)?;
        self.cld()?;
        self.mov(esi, esp)?;
        self.mov(edi, rec::EDI)?;
        self.mov(ecx, rec::DWORDS)?;
        self.rep().movsd()?;
        self.mov(eax, cr2)?;
        self.mov(dword_ptr(rec::CR2), eax)?;
        self.lea(eax, ptr(esp + (rec::EIP - rec::EDI) as i32))?;
        self.mov(dword_ptr(rec::FRAME), eax)?;
        self.inc(dword_ptr(FAULTS))?;
        self.mov(ax, u32::from(DATA0))?;
        self.mov(ss, ax)?;
        self.mov(esp, dword_ptr(RECOVER_ESP))?;
        self.mov(fs, ax)?;
        self.mov(gs, ax)?;
        self.push(eflags::FIXED)?;
        self.popfd()?;
        self.jmp(dword_ptr(RECOVER_EIP))
    }

    /// `exit` (status from the failure count), `unexpected` (a fault outside any
    /// check) and `fail_details` (the tail of a FAIL line).
    fn exit_routines(&mut self) -> AsmResult {
        self.at("exit")?;
        self.cmp(dword_ptr(FAILS), 0)?;
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
            (" eip=", rec::EIP),
            (" cr2=", rec::CR2),
        ];
        for (text, addr) in fields {
            let s = self.string(text);
            self.mov(esi, s)?;
            self.call_to("print")?;
            self.mov(eax, dword_ptr(addr))?;
            self.call_to("hex32")?;
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

    /// Makes any fault resume at `label` with the current ESP.
    pub fn set_recovery(&mut self, label: &str) -> AsmResult {
        let at = self.addr(label);
        self.mov(dword_ptr(RECOVER_EIP), at)?;
        self.mov(dword_ptr(RECOVER_ESP), esp)
    }

    /// Expects a fault: it will resume at the case's `recover` label, and the record
    /// starts empty.
    pub fn arm(&mut self, c: &Case) -> AsmResult {
        self.set_recovery(&c.recover())?;
        self.mov(dword_ptr(rec::VECTOR), NO_FAULT)
    }

    /// Marks the instruction expected to fault.
    pub fn mark(&mut self, c: &Case) -> AsmResult {
        self.at(&c.mark())
    }

    /// Ends a trigger: UD2 (so a trigger that does not fault reports #UD, from any
    /// ring or mode), then the recovery point, where further faults fail the case.
    pub fn landing(&mut self, c: &Case) -> AsmResult {
        self.at(&c.end())?;
        self.ud2()?;
        self.at(&c.recover())?;
        self.set_recovery(&c.fail())
    }

    /// One check with a message, `FAIL`ing the case unless EAX == `want`.
    pub fn expect_eax(&mut self, c: &Case, want: u32) -> AsmResult {
        let id = c.checks.get() + 1;
        c.checks.set(id);
        self.mov(dword_ptr(CHECK_ID), id)?;
        self.mov(dword_ptr(ACTUAL), eax)?;
        self.cmp(eax, want)?;
        self.jne_to(&c.fail())
    }

    /// Checks the dword at `addr`.
    pub fn expect32(&mut self, c: &Case, addr: u32, want: u32) -> AsmResult {
        self.mov(eax, dword_ptr(addr))?;
        self.expect_eax(c, want)
    }

    /// Checks the word at `addr` (selectors, 16-bit registers).
    pub fn expect16(&mut self, c: &Case, addr: u32, want: u16) -> AsmResult {
        self.movzx(eax, word_ptr(addr))?;
        self.expect_eax(c, u32::from(want))
    }

    /// Checks the byte at `addr`.
    pub fn expect8(&mut self, c: &Case, addr: u32, want: u8) -> AsmResult {
        self.movzx(eax, byte_ptr(addr))?;
        self.expect_eax(c, u32::from(want))
    }

    /// Checks `[addr] & mask`.
    pub fn expect_bits(&mut self, c: &Case, addr: u32, mask: u32, want: u32) -> AsmResult {
        self.mov(eax, dword_ptr(addr))?;
        self.and(eax, mask)?;
        self.expect_eax(c, want)
    }

    /// Checks a 32-bit register.
    pub fn expect_reg(&mut self, c: &Case, r: AsmRegister32, want: u32) -> AsmResult {
        self.mov(eax, r)?;
        self.expect_eax(c, want)
    }

    /// Checks the recorded vector, error code and faulting EIP.
    pub fn expect_fault(&mut self, c: &Case, vector: u32, error: u32, eip: u32) -> AsmResult {
        self.expect32(c, rec::VECTOR, vector)?;
        self.expect32(c, rec::ERROR, error)?;
        self.expect32(c, rec::EIP, eip)
    }

    /// Checks a fault at the case's marked instruction.
    pub fn expect_fault_at_mark(&mut self, c: &Case, vector: u32, error: u32) -> AsmResult {
        let eip = self.addr(&c.mark());
        self.expect_fault(c, vector, error, eip)
    }

    /// Pushes an IRET frame to `cs:eip` at the outer level `ss:esp` and executes
    /// IRETD.
    pub fn iret_to(
        &mut self,
        code_sel: u16,
        eip: u32,
        flags: u32,
        stack_sel: u16,
        stack_ptr: u32,
    ) -> AsmResult {
        self.push(u32::from(stack_sel))?;
        self.push(stack_ptr)?;
        self.push(flags)?;
        self.push(u32::from(code_sel))?;
        self.push(eip)?;
        self.iretd()
    }

    /// IRETs to ring 3 at `label` (flat ring-3 segments, the ring-3 stack, IOPL 0).
    pub fn iret_to_ring3(&mut self, label: &str) -> AsmResult {
        let eip = self.addr(label);
        self.iret_to(CODE3, eip, eflags::FIXED, DATA3, ESP3_TOP)
    }

    /// One check called `name`: recovery armed at its fail label, `body`, then the
    /// PASS or FAIL line.
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
        self.mov(dword_ptr(CHECK_ID), 0)?;
        self.mov(dword_ptr(ACTUAL), 0)?;
        self.set_recovery(&c.fail())?;
        body(self, &c)?;
        let pass = self.string(&format!("PASS {name}\n"));
        let fail = self.string(&format!("FAIL {name}"));
        self.flat_data_segments()?;
        self.mov(esi, pass)?;
        self.call_to("print")?;
        self.jmp_to(&c.label("done"))?;
        self.at(&c.fail())?;
        self.flat_data_segments()?;
        self.mov(esi, fail)?;
        self.call_to("print")?;
        self.call_to("fail_details")?;
        self.inc(dword_ptr(FAILS))?;
        self.at(&c.label("done"))?;
        self.set_recovery("unexpected")
    }

    /// The image file: header, code, data area.
    fn image(&self, code: &[u8]) -> Vec<u8> {
        assert!(
            code.len() <= (DATA_BASE - CODE_BASE) as usize,
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
            CODE_BASE,
        ];
        let mut image = vec![0u8; (IMAGE_END - IMAGE_BASE) as usize];
        for (i, field) in header.iter().enumerate() {
            image[4 * i..4 * i + 4].copy_from_slice(&field.to_le_bytes());
        }
        image[HEADER_LEN as usize..HEADER_LEN as usize + code.len()].copy_from_slice(code);
        image[(DATA_BASE - IMAGE_BASE) as usize..].copy_from_slice(&self.data);
        image
    }
}

/// A 2-level page directory at `pd` whose first entry maps the low 4 MiB identically
/// (user, writable) through the table at `pt0`.
pub fn identity_paging(k: &mut Kernel, pd: u32, pt0: u32) {
    let user_rw = pte::P | pte::RW | pte::US;
    k.poke32(pd, pt0 | user_rw as u32);
    for i in 0..1024u32 {
        k.poke32(pt0 + 4 * i, (i << 12) | user_rw as u32);
    }
}

/// Loads CR3 with `cr3` and sets CR0.PG (clobbers EAX).
pub fn enable_paging(k: &mut Kernel, root: u32) -> AsmResult {
    k.mov(eax, root)?;
    k.mov(cr3, eax)?;
    k.mov(eax, cr0)?;
    k.or(eax, ctl::CR0_PG)?;
    k.mov(cr0, eax)
}

/// Code assembled apart from the kernel (V86 code, a page executed through an
/// alias), with named labels.
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

/// Assembles `build` at `origin` until its label addresses settle (see [`build`]);
/// returns the bytes and the labels' addresses.
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
/// lockstep), and asserts that each run printed exactly one `PASS` line per
/// check, in order, and left through the debug-exit port with 0; then compares
/// it with QEMU instruction by instruction.
pub fn assert_all_pass(name: &str, built: &Built) {
    assert_all_pass_on(name, built, true);
}

/// [`assert_all_pass`] without the QEMU comparison, for a kernel whose checks pin
/// a behaviour where QEMU is known to differ from the SDM (the caller names each).
pub fn assert_all_pass_without_qemu(name: &str, built: &Built) {
    assert_all_pass_on(name, built, false);
}

fn assert_all_pass_on(name: &str, built: &Built, qemu: bool) {
    assert_all_pass_with(name, built, &[], qemu);
}

/// [`assert_all_pass`] with extra `x86bt run` arguments (`-smp 2`), and the
/// QEMU comparison only if `qemu`.
pub fn assert_all_pass_with(name: &str, built: &Built, extra: &[&str], qemu: bool) {
    let dir = std::env::temp_dir().join(format!("x86bt-pm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.bin"));
    std::fs::write(&path, &built.image).expect("write kernel");
    let runs: Vec<_> = ["interp", "jit", "lockstep"]
        .iter()
        .map(|engine| (*engine, run_kernel(&path, engine, extra)))
        .collect();
    if qemu {
        difftest_against_qemu(name, &path);
    }
    // X86BT_PM_KEEP=1 keeps the image for running it by hand.
    if std::env::var_os("X86BT_PM_KEEP").is_none() {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
    }
    let want: Vec<String> = built.cases.iter().map(|c| format!("PASS {c}")).collect();
    for (engine, out) in runs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            got, want,
            "kernel {name} on {engine}, output:\n{stdout}\nstderr:\n{stderr}"
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "kernel {name} on {engine} must exit through the debug-exit port with 0; stderr:\n{stderr}"
        );
    }
}

/// One run of the kernel image at `path` on `engine`.
fn run_kernel(path: &std::path::Path, engine: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(["run", "--kernel"])
        .arg(path)
        .args(extra)
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

/// Runs the kernel through `x86bt difftest --kernel` against QEMU: it must agree
/// to the end, or stop at a divergence on the allow-list. Without QEMU the step
/// says so and is skipped; under CI a missing QEMU is a failure.
fn difftest_against_qemu(name: &str, path: &std::path::Path) {
    // One QEMU lockstep at a time: the kernels' tests run in parallel, and on a
    // two-core machine several stepped QEMUs starve each other.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("qemu-system-i386").exists());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have qemu-system-i386"
        );
        eprintln!("SKIPPED difftest of {name}: qemu-system-i386 not found");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(["difftest", "--kernel"])
        .arg(path)
        .args(["-m", "16", "--max-insns", "2000000"])
        .output()
        .expect("run x86bt difftest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "difftest of kernel {name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("agree:") || stdout.contains("allowed divergence"),
        "difftest of kernel {name}:\n{stdout}"
    );
    eprintln!("difftest {name}: {}", stdout.trim());
}

/// Boots the kernel under QEMU itself (`qemu-system-i386 -kernel`, `-smp
/// cpus`, unstepped, so interrupts flow), as an independent oracle: it must
/// print the same `PASS` lines as the kernel's checks and leave through the
/// debug-exit port with 0. QEMU's HPET gets its FSB (MSI) delivery turned on
/// and the CPU model x2APIC.
/// Without QEMU the step says so and is skipped; under CI it is a failure.
#[allow(dead_code)]
pub fn qemu_prints_the_same(name: &str, built: &Built, cpus: u32) {
    qemu_prints_the_same_with(name, built, cpus, &[]);
}

/// [`qemu_prints_the_same`] with extra QEMU arguments (`-device edu`).
#[allow(dead_code)]
pub fn qemu_prints_the_same_with(name: &str, built: &Built, cpus: u32, extra: &[&str]) {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("qemu-system-i386").exists());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have qemu-system-i386"
        );
        eprintln!("SKIPPED QEMU run of {name}: qemu-system-i386 not found");
        return;
    }
    let dir = std::env::temp_dir().join(format!("x86bt-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.bin"));
    std::fs::write(&path, &built.image).expect("write kernel");
    let out = Command::new("timeout")
        .arg("60")
        .arg("qemu-system-i386")
        .args(["-machine", "pc", "-cpu", "qemu32,+x2apic"])
        .args(["-smp", &cpus.to_string(), "-m", "32"])
        .args(["-global", "hpet.msi=on"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(extra)
        .arg("-kernel")
        .arg(&path)
        .output()
        .expect("run qemu-system-i386");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .collect();
    let want: Vec<String> = built.cases.iter().map(|c| format!("PASS {c}")).collect();
    assert_eq!(
        got,
        want,
        "kernel {name} under QEMU, status {:?}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "kernel {name} under QEMU: debug exit 0"
    );
}
