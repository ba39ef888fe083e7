//! The guest side of `x86bt bench` and `benches/engines.rs`: small Multiboot v1
//! kernels, assembled at run time with iced's `code_asm`, that run one workload
//! loop a given number of times in 32-bit protected mode and then exit through the
//! isa-debug-exit port at 0xF4. The same image runs under x86bt's interpreter, its
//! translator and `qemu-system-i386 -accel tcg`.
//!
//! Image (Multiboot 0.6.96 §3.1.3, the "a.out kludge"): the 32-byte header at
//! [`layout::IMAGE_BASE`] (1 MiB), code right after it, and a data area at
//! [`layout::DATA_BASE`] that the Rust side fills: GDT, IDT, TSS, page tables, the
//! CRC table and the input buffers. Bss up to [`layout::BSS_END`] holds the work
//! arrays and the stacks.
//!
//! Every kernel shares a prologue: it loads its own GDT (a Multiboot loader leaves
//! GDTR undefined), reloads the segment registers, loads IDTR and TR, masks both
//! PICs (under QEMU, SeaBIOS has run and left IRQ 0 unmasked) and turns paging on
//! with the low 4 MiB identity-mapped, user and writable, through 4 KiB pages —
//! so the compute loops run as they would under an OS. Then:
//!
//! ```text
//!     [LEFT] = [ITERS]; setup
//! outer:  body; dec [LEFT]; jnz outer
//!     teardown; EAX = result; [RESULT] = EAX
//!     exit(EAX == [EXPECTED] ? PASS : FAIL_MISMATCH)
//! ```
//!
//! `ITERS` and `EXPECTED` are patched into the image ([`BenchKernel::image`]), so
//! each kernel checks its own answer and QEMU's exit status alone says whether the
//! guest computed the right thing. Any exception other than the ones a kernel
//! provokes exits with [`FAIL_FAULT`].
//!
//! Event kernels (after Adams & Agesen, ASPLOS 2006) unroll [`UNROLL`] events per
//! iteration, so the loop's own `dec`/`jnz` (and, where no handler counts, one
//! `add [COUNTER], 1`) is spread over eight events.
//!
//! The programs are deterministic: for a given kernel and iteration count every
//! engine retires the same guest instructions from the entry point on. That is
//! what lets `x86bt bench` take QEMU's instruction counts from x86bt's.
//!
//! The 32-bit assembler cannot take a label as an immediate, so [`build`] assembles
//! twice: the first pass places a same-sized placeholder (every label lies above
//! 1 MiB, so its immediate is always 32 bits), the second uses the addresses the
//! first found.

use crate::cli::Engine;
use crate::error::Error;
use crate::vm::{RunOutcome, Vm};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use x86bt_machine::loader::multiboot;
use x86bt_machine::pc::{self, PcConfig};
use x86bt_machine::GuestPhys;

/// Where everything lives in guest-physical memory (identity-mapped).
pub mod layout {
    /// Where the image (and its Multiboot header) is loaded.
    pub const IMAGE_BASE: u32 = 0x10_0000;
    /// The header: magic, flags, checksum and the five address fields.
    pub const HEADER_LEN: u32 = 32;
    /// The entry point: code starts right after the header.
    pub const CODE_BASE: u32 = IMAGE_BASE + HEADER_LEN;
    /// The start of the Rust-built data area; code must end below it.
    pub const DATA_BASE: u32 = 0x11_0000;
    /// The GDT (six descriptors).
    pub const GDT: u32 = 0x11_0000;
    /// The GDT pseudo-descriptor.
    pub const GDTR: u32 = 0x11_0080;
    /// The IDT pseudo-descriptor.
    pub const IDTR: u32 = 0x11_0088;
    /// The iteration count (patched per run).
    pub const ITERS: u32 = 0x11_0100;
    /// The answer the kernel must compute (patched per run).
    pub const EXPECTED: u32 = 0x11_0104;
    /// The answer it computed.
    pub const RESULT: u32 = 0x11_0108;
    /// Events counted by handlers or by the loop.
    pub const COUNTER: u32 = 0x11_010C;
    /// Iterations left.
    pub const LEFT: u32 = 0x11_0110;
    /// The variable of the `store` event (a data page).
    pub const STORE_VAR: u32 = 0x11_0118;
    /// The CPUs the kernel needs (1 or 2): the machine x86bt builds and
    /// QEMU's `-smp` follow it.
    pub const CPUS: u32 = 0x11_011C;
    /// Set by the application processor once it waits for IPIs.
    pub const AP_READY: u32 = 0x11_0120;
    /// Where the AP's start-up code is copied (SIPI vector 8).
    pub const AP_BOOT: u32 = 0x8000;
    /// A copy of the GDT pseudo-descriptor the AP's real-mode code can reach.
    pub const AP_GDTR: u32 = 0x8100;
    /// The AP's stack.
    pub const AP_STACK_TOP: u32 = 0x16_0000;
    /// Where the ring-3 exit gate (vector 0x81) resumes in ring 0.
    pub const RESUME: u32 = 0x11_0114;
    /// The main TSS (104 bytes, no I/O bitmap).
    pub const TSS: u32 = 0x11_0200;
    /// The IDT, 256 gates.
    pub const IDT: u32 = 0x11_0800;
    /// The page directory.
    pub const PD: u32 = 0x11_1000;
    /// The page table of the low 4 MiB.
    pub const PT: u32 = 0x11_2000;
    /// The CRC-32 lookup table, 256 dwords.
    pub const CRC_TABLE: u32 = 0x11_3000;
    /// Pseudo-random input bytes (CRC-32 and memcpy source).
    pub const SRC: u32 = 0x11_4000;
    /// Bytes at [`SRC`].
    pub const SRC_LEN: u32 = 0x4000;
    /// A NUL-terminated string of non-zero bytes (strlen).
    pub const STRING: u32 = 0x11_8000;
    /// Its length, without the NUL.
    pub const STRING_LEN: u32 = 16_000;
    /// The end of the loaded bytes.
    pub const IMAGE_END: u32 = 0x11_C000;
    /// Sieve flags (bss).
    pub const SIEVE: u32 = 0x12_0000;
    /// Sieve flags: 8191, the classic BYTE benchmark's size.
    pub const SIEVE_LEN: u32 = 8191;
    /// The memcpy destination, [`SRC_LEN`] bytes (bss).
    pub const DST: u32 = 0x12_4000;
    /// The quicksort array (bss).
    pub const QSORT: u32 = 0x12_8000;
    /// Elements of the quicksort array.
    pub const QSORT_LEN: u32 = 2048;
    /// The ring-3 stack top.
    pub const STACK3_TOP: u32 = 0x17_0000;
    /// TSS.ESP0: the stack an interrupt from ring 3 switches to.
    pub const ESP0_TOP: u32 = 0x17_8000;
    /// The ring-0 stack top.
    pub const STACK0_TOP: u32 = 0x18_0000;
    /// The end of bss (zeroed by the loader).
    pub const BSS_END: u32 = 0x18_0000;
    /// The page the page-fault kernel makes not-present, again and again.
    pub const PF_PAGE: u32 = 0x30_0000;
    /// Its PTE.
    pub const PF_PTE: u32 = PT + (PF_PAGE >> 12) * 4;
}
use layout::*;

/// Flat ring-0 code.
const CODE0: u16 = 0x08;
/// Flat ring-0 data.
const DATA0: u16 = 0x10;
/// Flat ring-3 code, RPL 3.
const CODE3: u16 = 0x18 | 3;
/// Flat ring-3 data, RPL 3.
const DATA3: u16 = 0x20 | 3;
/// The TSS.
const TSS_SEL: u16 = 0x28;

/// Written to the debug-exit port when the answer is right.
pub const PASS: u32 = 0x10;
/// Written when the answer is wrong.
pub const FAIL_MISMATCH: u32 = 0x11;
/// Written when an unexpected exception arrives.
pub const FAIL_FAULT: u32 = 0x12;
/// The run status of [`PASS`]: isa-debug-exit turns `v` into `(v << 1) | 1`.
pub const PASS_STATUS: i32 = (PASS as i32) << 1 | 1;
/// Events per loop iteration in the event kernels.
pub const UNROLL: u32 = 8;

/// Seed of the quicksort input (an LCG, reseeded each iteration).
pub const QSORT_SEED: u32 = 0x1234_5678;
/// Seed of the [`SRC`] bytes and the string.
const DATA_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

type AsmResult = Result<(), IcedError>;

/// What a kernel measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Guest MIPS.
    Compute,
    /// Nanoseconds per event, [`UNROLL`] events per iteration.
    Event,
}

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Sieve of Eratosthenes over 8191 byte flags; the answer is 1899 primes.
    Sieve,
    /// Table-driven CRC-32 (IEEE, reflected) of the 16 KiB at [`SRC`].
    Crc32,
    /// A dword `mov` loop copying 16 KiB (no REP).
    Memcpy,
    /// A byte loop finding the NUL of a 16000-byte string.
    Strlen,
    /// Recursive quicksort of 2048 pseudo-random u32 (refilled each iteration).
    Qsort,
    /// `INT 0x80` from ring 3 to a ring-0 handler that counts and IRETs.
    IntIret,
    /// `OUT 0x80, AL` then `IN AL, 0x80` (the POST port: nothing behind it).
    InOut,
    /// `CLI` then `STI`.
    CliSti,
    /// `PUSHFD` then `POPFD`.
    PushfPopf,
    /// `CALL` to a bare `RET`.
    CallRet,
    /// A load from a not-present page; the #PF handler sets P and returns, the
    /// load retries; then the loop clears P again and INVLPGs the page.
    PageFault,
    /// `MOV CR3, EAX` with the current page directory (a full non-global TLB
    /// flush).
    Cr3Write,
    /// `ADD [var], 1` with `var` in a data page: the baseline of [`Workload::StoreCodePage`].
    Store,
    /// `ADD [var], 1` with `var` in the loop's own code page (data kept beside
    /// code, as old code does): the stores must not invalidate the loop.
    StoreCodePage,
    /// A local APIC timer interrupt round trip: arm the one-shot timer with a
    /// count of 1 (MMIO), `STI; HLT`, the handler counts and writes EOI
    /// (MMIO), IRET, `CLI`.
    ApicTimer,
    /// A self-IPI round trip: a fixed IPI to self through the ICR (MMIO),
    /// `STI; HLT`, the handler counts and writes EOI, IRET, `CLI`.
    Ipi,
    /// A cross-CPU IPI round trip (two CPUs): the BSP sends a fixed IPI to the
    /// AP and halts; the AP's handler sends one back and EOIs; the BSP's
    /// handler counts it.
    IpiCpu,
}

impl Workload {
    /// Every workload, compute first.
    pub const ALL: [Workload; 17] = [
        Workload::Sieve,
        Workload::Crc32,
        Workload::Memcpy,
        Workload::Strlen,
        Workload::Qsort,
        Workload::IntIret,
        Workload::InOut,
        Workload::CliSti,
        Workload::PushfPopf,
        Workload::CallRet,
        Workload::PageFault,
        Workload::Cr3Write,
        Workload::Store,
        Workload::StoreCodePage,
        Workload::ApicTimer,
        Workload::Ipi,
        Workload::IpiCpu,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Sieve => "sieve",
            Workload::Crc32 => "crc32",
            Workload::Memcpy => "memcpy",
            Workload::Strlen => "strlen",
            Workload::Qsort => "qsort",
            Workload::IntIret => "int-iret",
            Workload::InOut => "in-out",
            Workload::CliSti => "cli-sti",
            Workload::PushfPopf => "pushf-popf",
            Workload::CallRet => "call-ret",
            Workload::PageFault => "page-fault",
            Workload::Cr3Write => "cr3-write",
            Workload::Store => "store",
            Workload::StoreCodePage => "store-code-page",
            Workload::ApicTimer => "apic-timer",
            Workload::Ipi => "ipi",
            Workload::IpiCpu => "ipi-cpu",
        }
    }

    /// Compute loop or event nanobenchmark.
    pub fn kind(self) -> Kind {
        match self {
            Workload::Sieve
            | Workload::Crc32
            | Workload::Memcpy
            | Workload::Strlen
            | Workload::Qsort => Kind::Compute,
            _ => Kind::Event,
        }
    }

    /// The default iteration count `N` of `x86bt bench` (it also runs `2N`):
    /// QEMU 10 TCG needs about 0.4 s for `N` iterations on a 2020s x86-64 host,
    /// start-up excluded.
    pub fn default_iters(self) -> u32 {
        match self {
            Workload::Sieve => 3_000,
            Workload::Crc32 => 3_000,
            Workload::Memcpy => 20_000,
            Workload::Strlen => 5_000,
            Workload::Qsort => 2_000,
            Workload::IntIret => 100_000,
            Workload::InOut => 300_000,
            Workload::CliSti => 1_000_000,
            Workload::PushfPopf => 1_200_000,
            Workload::CallRet => 4_000_000,
            Workload::PageFault => 25_000,
            Workload::Cr3Write => 16_000,
            Workload::Store | Workload::StoreCodePage => 1_000_000,
            Workload::ApicTimer => 10_000,
            Workload::Ipi => 20_000,
            Workload::IpiCpu => 10_000,
        }
    }

    /// The answer the kernel must leave in [`RESULT`] after `iters` iterations.
    pub fn expected(self, iters: u32) -> u32 {
        match self {
            Workload::Sieve => sieve_count(SIEVE_LEN as usize),
            Workload::Crc32 => crc32_table(&src_bytes()),
            Workload::Memcpy => hash_words(&bytes_to_words(&src_bytes())),
            Workload::Strlen => STRING_LEN,
            Workload::Qsort => {
                let mut v = qsort_input();
                v.sort_unstable();
                hash_words(&v)
            }
            // A handler counts every event.
            Workload::IntIret
            | Workload::PageFault
            | Workload::ApicTimer
            | Workload::Ipi
            | Workload::IpiCpu => iters.wrapping_mul(UNROLL),
            // The loop counts iterations.
            _ => iters,
        }
    }

    /// The code of `main`: setup, the loop, and the result in EAX.
    fn main(self, k: &mut Kb) -> AsmResult {
        match self {
            Workload::Sieve => sieve(k),
            Workload::Crc32 => crc32(k),
            Workload::Memcpy => memcpy(k),
            Workload::Strlen => strlen(k),
            Workload::Qsort => qsort(k),
            Workload::IntIret => int_iret(k),
            Workload::InOut => counted_events(k, |k| {
                k.out(0x80, al)?;
                k.in_(al, 0x80)
            }),
            Workload::CliSti => {
                counted_events(k, |k| {
                    k.cli()?;
                    k.sti()
                })?;
                k.cli()
            }
            Workload::PushfPopf => counted_events(k, |k| {
                k.pushfd()?;
                k.popfd()
            }),
            Workload::CallRet => counted_events(k, |k| k.call_to("leaf")),
            Workload::PageFault => page_fault(k),
            Workload::Cr3Write => {
                k.mov(ebx, PD)?;
                counted_events(k, |k| k.mov(cr3, ebx))
            }
            Workload::Store => counted_events(k, |k| k.add(dword_ptr(STORE_VAR), 1)),
            Workload::StoreCodePage => {
                // The variable sits between a jump and the loop, so it is in the
                // loop's page but in no unit.
                k.jmp_to("store.body")?;
                k.at("store.var")?;
                k.dd(&[0])?;
                k.at("store.body")?;
                let var = k.addr("store.var");
                counted_events(k, |k| k.add(dword_ptr(var), 1))
            }
            Workload::ApicTimer => apic_events(k, apic::TIMER_INIT, 1),
            Workload::Ipi => apic_events(k, apic::ICR_LO, (1 << 18) | (1 << 14) | APIC_VECTOR),
            Workload::IpiCpu => ipi_cpu(k),
        }
    }

    /// The CPUs the kernel needs.
    pub fn cpus(self) -> u32 {
        if self == Workload::IpiCpu {
            2
        } else {
            1
        }
    }
}

/// One assembled kernel, with `ITERS` and `EXPECTED` still to patch.
pub struct BenchKernel {
    /// Which workload.
    pub workload: Workload,
    template: Vec<u8>,
}

impl BenchKernel {
    /// Assembles `workload`'s kernel.
    pub fn new(workload: Workload) -> Self {
        Self {
            workload,
            template: build(workload),
        }
    }

    /// The image for `iters` iterations (at least 1).
    pub fn image(&self, iters: u32) -> Vec<u8> {
        let mut image = self.template.clone();
        let mut put = |addr: u32, v: u32| {
            let off = (addr - IMAGE_BASE) as usize;
            image[off..off + 4].copy_from_slice(&v.to_le_bytes());
        };
        let iters = iters.max(1);
        put(ITERS, iters);
        put(EXPECTED, self.workload.expected(iters));
        image
    }
}

/// All kernels, assembled.
pub fn kernels() -> Vec<BenchKernel> {
    Workload::ALL.into_iter().map(BenchKernel::new).collect()
}

// ---------------------------------------------------------------------------
// Reference answers, computed the straightforward way in Rust.

/// Primes found by the BYTE sieve over `n` flags (flag `i` stands for `2i + 3`).
pub fn sieve_count(n: usize) -> u32 {
    let mut flags = vec![true; n];
    let mut count = 0;
    for i in 0..n {
        if flags[i] {
            let p = 2 * i + 3;
            let mut k = i + p;
            while k < n {
                flags[k] = false;
                k += p;
            }
            count += 1;
        }
    }
    count
}

fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *e = c;
    }
    t
}

fn crc32_table(data: &[u8]) -> u32 {
    let t = crc_table();
    !data.iter().fold(!0u32, |c, &b| {
        t[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// A 64-bit xorshift stream.
fn xorshift(mut s: u64) -> impl Iterator<Item = u64> {
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    })
}

/// The [`SRC_LEN`] pseudo-random bytes at [`SRC`].
pub fn src_bytes() -> Vec<u8> {
    xorshift(DATA_SEED)
        .take(SRC_LEN as usize)
        .map(|x| (x >> 32) as u8)
        .collect()
}

/// The string at [`STRING`], without its NUL: bytes 1 to 255.
pub fn string_bytes() -> Vec<u8> {
    xorshift(DATA_SEED ^ 0xFFFF)
        .take(STRING_LEN as usize)
        .map(|x| (x >> 32) as u8 % 255 + 1)
        .collect()
}

/// The quicksort input: `x = x * 1103515245 + 12345`, from [`QSORT_SEED`].
pub fn qsort_input() -> Vec<u32> {
    let mut x = QSORT_SEED;
    (0..QSORT_LEN)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            x
        })
        .collect()
}

/// Little-endian dwords of `b`.
pub fn bytes_to_words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The guest's `hash` routine: FNV-1a over dwords instead of bytes.
pub fn hash_words(w: &[u32]) -> u32 {
    w.iter()
        .fold(0x811C_9DC5u32, |h, &x| (h ^ x).wrapping_mul(0x0100_0193))
}

// ---------------------------------------------------------------------------
// Assembly.

/// A kernel being assembled: the code assembler, named labels and the data area.
struct Kb {
    a: CodeAssembler,
    labels: HashMap<&'static str, CodeLabel>,
    /// Label addresses found by the previous pass.
    prev: HashMap<&'static str, u32>,
    data: Vec<u8>,
}

impl Deref for Kb {
    type Target = CodeAssembler;
    fn deref(&self) -> &CodeAssembler {
        &self.a
    }
}

impl DerefMut for Kb {
    fn deref_mut(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }
}

impl Kb {
    fn label(&mut self, name: &'static str) -> CodeLabel {
        if let Some(l) = self.labels.get(name) {
            return *l;
        }
        let l = self.a.create_label();
        self.labels.insert(name, l);
        l
    }

    /// Places `name` at the next instruction (one label per instruction).
    fn at(&mut self, name: &'static str) -> AsmResult {
        let mut l = self.label(name);
        self.a.set_label(&mut l)?;
        // set_label records the instruction index in the label it is given.
        self.labels.insert(name, l);
        Ok(())
    }

    /// The address of `name` from the previous pass, or a 32-bit placeholder.
    fn addr(&self, name: &'static str) -> u32 {
        self.prev.get(name).copied().unwrap_or(CODE_BASE)
    }

    fn call_to(&mut self, name: &'static str) -> AsmResult {
        let l = self.label(name);
        self.a.call(l)
    }

    fn jmp_to(&mut self, name: &'static str) -> AsmResult {
        let l = self.label(name);
        self.a.jmp(l)
    }

    fn poke32(&mut self, addr: u32, v: u32) {
        let off = (addr - DATA_BASE) as usize;
        self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn poke64(&mut self, addr: u32, v: u64) {
        self.poke32(addr, v as u32);
        self.poke32(addr + 4, (v >> 32) as u32);
    }

    fn poke(&mut self, addr: u32, bytes: &[u8]) {
        let off = (addr - DATA_BASE) as usize;
        self.data[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// `[LEFT] = [ITERS]`, then `body` [LEFT] times (at least once: ITERS >= 1).
    /// Ends on a NOP, so a label may follow.
    fn iterate(&mut self, body: impl FnOnce(&mut Kb) -> AsmResult) -> AsmResult {
        self.mov(eax, dword_ptr(ITERS))?;
        self.mov(dword_ptr(LEFT), eax)?;
        self.at("outer")?;
        body(self)?;
        self.dec(dword_ptr(LEFT))?;
        let outer = self.label("outer");
        self.jnz(outer)?;
        self.nop()
    }
}

/// A segment descriptor (SDM vol. 3A §3.4.5, Figure 3-8): flat, 4 KiB granular,
/// 32-bit, with access byte `access`.
fn flat_segment(access: u8) -> u64 {
    0x00CF_0000_0000_FFFF | u64::from(access) << 40
}

/// A present 32-bit interrupt gate (SDM vol. 3A §6.11, Figure 6-2) to CODE0:`at`.
fn interrupt_gate(at: u32, dpl: u8) -> u64 {
    let o = u64::from(at);
    (o & 0xFFFF) | u64::from(CODE0) << 16 | u64::from(0x80 | dpl << 5 | 0xE) << 40 | (o >> 16) << 48
}

/// The descriptor tables, the TSS, the page tables and the input data.
fn tables(k: &mut Kb) {
    k.poke64(GDT + 0x08, flat_segment(0x9A)); // P, DPL 0, code execute/read
    k.poke64(GDT + 0x10, flat_segment(0x92)); // P, DPL 0, data read/write
    k.poke64(GDT + 0x18, flat_segment(0xFA)); // P, DPL 3, code
    k.poke64(GDT + 0x20, flat_segment(0xF2)); // P, DPL 3, data
                                              // Available 32-bit TSS, limit 0x67: no I/O bitmap (SDM vol. 3A §7.2.2).
    let tss = u64::from(TSS);
    k.poke64(
        GDT + u32::from(TSS_SEL),
        0x67 | (tss & 0xFF_FFFF) << 16 | 0x89u64 << 40 | (tss >> 24) << 56,
    );
    k.poke(GDTR, &(6u16 * 8 - 1).to_le_bytes());
    k.poke32(GDTR + 2, GDT);
    k.poke(IDTR, &(256u16 * 8 - 1).to_le_bytes());
    k.poke32(IDTR + 2, IDT);
    k.poke32(TSS + 4, ESP0_TOP);
    k.poke32(TSS + 8, u32::from(DATA0));
    k.poke32(TSS + 0x64, 0x68 << 16);

    let fault = k.addr("isr_fault");
    for v in 0..32 {
        k.poke64(IDT + v * 8, interrupt_gate(fault, 0));
    }
    let pf = k.addr("isr_pf");
    k.poke64(IDT + 14 * 8, interrupt_gate(pf, 0));
    let syscall = k.addr("isr_syscall");
    k.poke64(IDT + 0x80 * 8, interrupt_gate(syscall, 3));
    let back = k.addr("isr_back");
    k.poke64(IDT + 0x81 * 8, interrupt_gate(back, 3));
    let apic_isr = k.addr("isr_apic");
    k.poke64(IDT + APIC_VECTOR * 8, interrupt_gate(apic_isr, 0));
    let pong = k.addr("isr_pong");
    k.poke64(IDT + PING_VECTOR * 8, interrupt_gate(pong, 0));

    // Page tables (SDM vol. 3A §4.3): P | RW | US everywhere in the low 4 MiB,
    // except the page-fault kernel's page, which starts not present.
    k.poke32(PD, PT | 7);
    // 0xFEC00000-0xFEFFFFFF (the local APIC among them): one 4 MiB page,
    // present, writable, PWT | PCD, PS (CR4.PSE is set).
    k.poke32(PD + (0xFEC0_0000 >> 22) * 4, 0xFEC0_0000 | 0x9B);
    for i in 0..1024 {
        let present = if i == PF_PAGE >> 12 { 0 } else { 1 };
        k.poke32(PT + i * 4, i << 12 | 6 | present);
    }

    let table: Vec<u8> = crc_table().iter().flat_map(|e| e.to_le_bytes()).collect();
    k.poke(CRC_TABLE, &table);
    k.poke(SRC, &src_bytes());
    k.poke(STRING, &string_bytes());
}

/// Entry, exception handlers, the exit path and `hash`.
fn runtime(k: &mut Kb) -> AsmResult {
    k.cli()?;
    k.lgdt(ptr(GDTR))?;
    let reload = k.addr("reload");
    k.jmp_far(CODE0, reload)?;
    k.at("reload")?;
    k.mov(ax, u32::from(DATA0))?;
    for s in [ds, es, fs, gs, ss] {
        k.mov(s, ax)?;
    }
    k.mov(esp, STACK0_TOP)?;
    k.lidt(ptr(IDTR))?;
    k.mov(ax, u32::from(TSS_SEL))?;
    k.ltr(ax)?;
    // Mask every IRQ at both 8259As (OCW1).
    k.mov(al, 0xFF)?;
    k.out(0x21, al)?;
    k.out(0xA1, al)?;
    k.mov(eax, PD)?;
    k.mov(cr3, eax)?;
    k.mov(eax, cr4)?;
    k.or(eax, 0x10u32)?; // CR4.PSE
    k.mov(cr4, eax)?;
    k.mov(eax, cr0)?;
    k.or(eax, 0x8000_0000u32)?; // CR0.PG
    k.mov(cr0, eax)?;
    k.jmp_to("main")?;

    k.at("isr_fault")?;
    k.mov(eax, FAIL_FAULT)?;
    k.jmp_to("exit")?;

    // INT 0x80: count and return (to ring 3).
    k.at("isr_syscall")?;
    k.add(dword_ptr(COUNTER), 1)?;
    k.iretd()?;

    // The APIC events: count, EOI, return.
    k.at("isr_apic")?;
    k.add(dword_ptr(COUNTER), 1)?;
    k.mov(dword_ptr(apic::EOI), 0u32)?;
    k.iretd()?;

    // The AP's side of ipi-cpu: answer the BSP (APIC ID 0), EOI, return.
    k.at("isr_pong")?;
    k.mov(dword_ptr(apic::ICR_HI), 0u32)?;
    k.mov(dword_ptr(apic::ICR_LO), APIC_VECTOR)?;
    k.mov(dword_ptr(apic::EOI), 0u32)?;
    k.iretd()?;

    // INT 0x81: back to ring 0 for good; drop the frame, resume at [RESUME].
    k.at("isr_back")?;
    k.add(esp, 20)?;
    k.mov(ax, u32::from(DATA0))?;
    k.mov(ds, ax)?;
    k.mov(es, ax)?;
    k.jmp(dword_ptr(RESUME))?;

    // #PF: make the faulting page present and retry. Only PF_PAGE may fault.
    k.at("isr_pf")?;
    k.push(eax)?;
    k.mov(eax, cr2)?;
    k.shr(eax, 12)?;
    k.cmp(eax, PF_PAGE >> 12)?;
    let bad = k.label("isr_fault");
    k.jne(bad)?;
    k.or(dword_ptr(eax * 4 + PT), 1)?;
    k.add(dword_ptr(COUNTER), 1)?;
    k.pop(eax)?;
    k.add(esp, 4)?; // the error code
    k.iretd()?;

    // hash: ESI = dwords, ECX = count -> EAX (clobbers ESI, ECX).
    k.at("hash")?;
    k.mov(eax, 0x811C_9DC5u32)?;
    k.at("hash.loop")?;
    k.xor(eax, dword_ptr(esi))?;
    k.imul_3(eax, eax, 0x0100_0193)?;
    k.add(esi, 4)?;
    k.dec(ecx)?;
    let l = k.label("hash.loop");
    k.jnz(l)?;
    k.ret()?;

    k.at("leaf")?;
    k.ret()
}

/// After `main`: store and check the result in EAX, exit.
fn epilogue(k: &mut Kb) -> AsmResult {
    k.mov(dword_ptr(RESULT), eax)?;
    k.cmp(eax, dword_ptr(EXPECTED))?;
    k.mov(eax, PASS)?;
    let exit = k.label("exit");
    k.je(exit)?;
    k.mov(eax, FAIL_MISMATCH)?;
    k.at("exit")?;
    k.mov(dx, 0xF4u32)?;
    k.out(dx, eax)?;
    k.at("halt")?;
    k.cli()?;
    k.hlt()?;
    k.jmp_to("halt")
}

fn sieve(k: &mut Kb) -> AsmResult {
    k.iterate(|k| {
        k.xor(ebx, ebx)?;
        k.at("fill")?;
        k.mov(byte_ptr(ebx + SIEVE), 1)?;
        k.inc(ebx)?;
        k.cmp(ebx, SIEVE_LEN)?;
        let fill = k.label("fill");
        k.jb(fill)?;
        k.xor(ebx, ebx)?;
        k.xor(edx, edx)?;
        k.at("scan")?;
        k.cmp(byte_ptr(ebx + SIEVE), 0)?;
        let next = k.label("next");
        k.je(next)?;
        k.lea(eax, ptr(ebx + ebx + 3))?; // the prime p = 2i + 3
        k.lea(esi, ptr(ebx + eax))?;
        k.at("mark")?;
        k.cmp(esi, SIEVE_LEN)?;
        let counted = k.label("counted");
        k.jae(counted)?;
        k.mov(byte_ptr(esi + SIEVE), 0)?;
        k.add(esi, eax)?;
        k.jmp_to("mark")?;
        k.at("counted")?;
        k.inc(edx)?;
        k.at("next")?;
        k.inc(ebx)?;
        k.cmp(ebx, SIEVE_LEN)?;
        let scan = k.label("scan");
        k.jb(scan)?;
        k.mov(dword_ptr(COUNTER), edx)
    })?;
    k.mov(eax, dword_ptr(COUNTER))
}

fn crc32(k: &mut Kb) -> AsmResult {
    k.iterate(|k| {
        k.mov(esi, SRC)?;
        k.mov(ecx, SRC_LEN)?;
        k.mov(eax, 0xFFFF_FFFFu32)?;
        k.at("byte")?;
        k.movzx(edx, byte_ptr(esi))?;
        k.xor(dl, al)?;
        k.shr(eax, 8)?;
        k.xor(eax, dword_ptr(edx * 4 + CRC_TABLE))?;
        k.inc(esi)?;
        k.dec(ecx)?;
        let l = k.label("byte");
        k.jnz(l)?;
        k.not(eax)?;
        k.mov(dword_ptr(COUNTER), eax)
    })?;
    k.mov(eax, dword_ptr(COUNTER))
}

fn memcpy(k: &mut Kb) -> AsmResult {
    k.iterate(|k| {
        k.mov(esi, SRC)?;
        k.mov(edi, DST)?;
        k.mov(ecx, SRC_LEN / 4)?;
        k.at("copy")?;
        k.mov(eax, dword_ptr(esi))?;
        k.mov(dword_ptr(edi), eax)?;
        k.add(esi, 4)?;
        k.add(edi, 4)?;
        k.dec(ecx)?;
        let l = k.label("copy");
        k.jnz(l)
    })?;
    k.mov(esi, DST)?;
    k.mov(ecx, SRC_LEN / 4)?;
    k.call_to("hash")
}

fn strlen(k: &mut Kb) -> AsmResult {
    k.iterate(|k| {
        k.mov(esi, STRING)?;
        k.at("char")?;
        k.mov(al, byte_ptr(esi))?;
        k.inc(esi)?;
        k.test(al, al)?;
        let l = k.label("char");
        k.jnz(l)?;
        k.sub(esi, STRING + 1)?;
        k.mov(dword_ptr(COUNTER), esi)
    })?;
    k.mov(eax, dword_ptr(COUNTER))
}

fn qsort(k: &mut Kb) -> AsmResult {
    k.iterate(|k| {
        k.mov(eax, QSORT_SEED)?;
        k.mov(edi, QSORT)?;
        k.mov(ecx, QSORT_LEN)?;
        k.at("fill")?;
        k.imul_3(eax, eax, 1_103_515_245)?;
        k.add(eax, 12_345)?;
        k.mov(dword_ptr(edi), eax)?;
        k.add(edi, 4)?;
        k.dec(ecx)?;
        let l = k.label("fill");
        k.jnz(l)?;
        k.mov(esi, QSORT)?;
        k.mov(edi, QSORT + (QSORT_LEN - 1) * 4)?;
        k.call_to("qsort")
    })?;
    k.mov(esi, QSORT)?;
    k.mov(ecx, QSORT_LEN)?;
    k.call_to("hash")?;
    k.jmp_to("done")?;

    // qsort: sorts the u32 from ESI to EDI (inclusive pointers) in place, Lomuto
    // partition around the middle element. Clobbers everything but ESP.
    k.at("qsort")?;
    k.cmp(esi, edi)?;
    let ret = k.label("qsort.ret");
    k.jae(ret)?;
    k.mov(eax, edi)?;
    k.sub(eax, esi)?;
    k.shr(eax, 3)?;
    k.lea(ebx, ptr(esi + eax * 4))?;
    k.mov(eax, dword_ptr(ebx))?; // pivot, swapped to the end
    k.mov(ecx, dword_ptr(edi))?;
    k.mov(dword_ptr(ebx), ecx)?;
    k.mov(dword_ptr(edi), eax)?;
    k.mov(ebx, esi)?; // the store pointer
    k.mov(ecx, esi)?;
    k.at("qsort.scan")?;
    k.cmp(ecx, edi)?;
    let placed = k.label("qsort.placed");
    k.jae(placed)?;
    k.mov(edx, dword_ptr(ecx))?;
    k.cmp(edx, eax)?;
    let skip = k.label("qsort.skip");
    k.jae(skip)?;
    k.mov(ebp, dword_ptr(ebx))?;
    k.mov(dword_ptr(ebx), edx)?;
    k.mov(dword_ptr(ecx), ebp)?;
    k.add(ebx, 4)?;
    k.at("qsort.skip")?;
    k.add(ecx, 4)?;
    k.jmp_to("qsort.scan")?;
    k.at("qsort.placed")?;
    k.mov(edx, dword_ptr(ebx))?;
    k.mov(dword_ptr(ebx), eax)?;
    k.mov(dword_ptr(edi), edx)?;
    k.push(edi)?;
    k.push(ebx)?;
    k.lea(edi, ptr(ebx - 4))?;
    k.call_to("qsort")?;
    k.pop(ebx)?;
    k.pop(edi)?;
    k.lea(esi, ptr(ebx + 4))?;
    k.jmp_to("qsort")?;
    k.at("qsort.ret")?;
    k.ret()?;
    k.at("done")?;
    k.nop()
}

/// `UNROLL` copies of `event`, then `[COUNTER] += 1`, per iteration.
fn counted_events(k: &mut Kb, event: impl Fn(&mut Kb) -> AsmResult) -> AsmResult {
    k.iterate(|k| {
        for _ in 0..UNROLL {
            event(k)?;
        }
        k.add(dword_ptr(COUNTER), 1)
    })?;
    k.mov(eax, dword_ptr(COUNTER))
}

fn int_iret(k: &mut Kb) -> AsmResult {
    let resume = k.addr("ring0");
    k.mov(dword_ptr(RESUME), resume)?;
    // Into ring 3 through an IRET frame (SDM vol. 3A §6.12.1): EIP, CS, EFLAGS
    // (IF = 0, IOPL = 0), ESP, SS.
    k.push(u32::from(DATA3))?;
    k.push(STACK3_TOP)?;
    k.push(2u32)?;
    k.push(u32::from(CODE3))?;
    let ring3 = k.addr("ring3");
    k.push(ring3)?;
    k.iretd()?;
    k.at("ring3")?;
    // IRET to an outer level nulls DS and ES, which held DPL-0 selectors.
    k.mov(ax, u32::from(DATA3))?;
    k.mov(ds, ax)?;
    k.mov(es, ax)?;
    k.iterate(|k| {
        for _ in 0..UNROLL {
            k.int(0x80)?;
        }
        Ok(())
    })?;
    k.int(0x81)?;
    k.at("ring0")?;
    k.mov(eax, dword_ptr(COUNTER))
}

fn page_fault(k: &mut Kb) -> AsmResult {
    k.iterate(|k| {
        for _ in 0..UNROLL {
            k.and(dword_ptr(PF_PTE), !1u32)?;
            k.invlpg(ptr(PF_PAGE))?;
            k.mov(eax, dword_ptr(PF_PAGE))?;
        }
        Ok(())
    })?;
    k.mov(eax, dword_ptr(COUNTER))
}

/// The local APIC (SDM vol. 3A ch. 11), identity-mapped through a 4 MiB page
/// with caching off.
mod apic {
    pub const BASE: u32 = 0xFEE0_0000;
    pub const EOI: u32 = BASE + 0xB0;
    pub const SVR: u32 = BASE + 0xF0;
    pub const ICR_LO: u32 = BASE + 0x300;
    pub const ICR_HI: u32 = BASE + 0x310;
    pub const LVT_TIMER: u32 = BASE + 0x320;
    pub const TIMER_INIT: u32 = BASE + 0x380;
    pub const TIMER_DIV: u32 = BASE + 0x3E0;
}

/// The vector the APIC events raise.
const APIC_VECTOR: u32 = 0x40;

/// An APIC event kernel: the APIC software-enabled, the timer one-shot with
/// divide 1 on [`APIC_VECTOR`]; each event writes `value` to `reg` and waits
/// for the interrupt (`STI; HLT; CLI`), whose handler counts it.
fn apic_events(k: &mut Kb, reg: u32, value: u32) -> AsmResult {
    k.mov(dword_ptr(apic::SVR), 0x1FFu32)?;
    k.mov(dword_ptr(apic::TIMER_DIV), 0xBu32)?;
    k.mov(dword_ptr(apic::LVT_TIMER), APIC_VECTOR)?;
    k.iterate(|k| {
        for _ in 0..UNROLL {
            k.mov(dword_ptr(reg), value)?;
            k.sti()?;
            k.hlt()?;
            k.cli()?;
        }
        Ok(())
    })?;
    k.mov(eax, dword_ptr(COUNTER))
}

/// The vector the AP takes the BSP's IPI on.
const PING_VECTOR: u32 = 0x42;

/// The AP's start-up code at [`AP_BOOT`] (16-bit, CS = 0x800, IP = 0): load
/// the kernel's GDT from the copy at [`AP_GDTR`], set CR0.PE, and jump to
/// `ap32` (flat 32-bit code).
fn ap_boot_code(ap32: u32) -> Vec<u8> {
    let mut b = vec![
        0xFA, // cli
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0x66, 0x0F, 0x01, 0x16, // o32 lgdt [disp16]
    ];
    b.extend_from_slice(&(AP_GDTR as u16).to_le_bytes());
    b.extend_from_slice(&[
        0x0F, 0x20, 0xC0, // mov eax, cr0
        0x66, 0x83, 0xC8, 0x01, // or eax, 1
        0x0F, 0x22, 0xC0, // mov cr0, eax
        0x66, 0xEA, // jmp far ptr16:32
    ]);
    b.extend_from_slice(&ap32.to_le_bytes());
    b.extend_from_slice(&CODE0.to_le_bytes());
    b
}

/// The cross-CPU IPI kernel: start the AP (INIT, SIPI, SIPI: SDM vol. 3A
/// §9.4.4.1), wait for it, then per event send it [`PING_VECTOR`] and halt
/// until its reply ([`APIC_VECTOR`], counted by `isr_apic`) arrives.
fn ipi_cpu(k: &mut Kb) -> AsmResult {
    k.mov(dword_ptr(apic::SVR), 0x1FFu32)?;
    let ap32 = k.addr("ap32");
    for (i, byte) in ap_boot_code(ap32).into_iter().enumerate() {
        k.mov(byte_ptr(AP_BOOT + i as u32), u32::from(byte))?;
    }
    for i in 0..6 {
        k.mov(al, byte_ptr(GDTR + i))?;
        k.mov(byte_ptr(AP_GDTR + i), al)?;
    }
    k.mov(dword_ptr(AP_READY), 0u32)?;
    k.mov(dword_ptr(apic::ICR_HI), 1u32 << 24)?;
    k.mov(dword_ptr(apic::ICR_LO), 0x4500u32)?;
    for _ in 0..2 {
        k.mov(dword_ptr(apic::ICR_LO), 0x4600u32 | (AP_BOOT >> 12))?;
    }
    k.at("ipi_cpu.wait")?;
    k.pause()?;
    k.cmp(dword_ptr(AP_READY), 0)?;
    let wait = k.label("ipi_cpu.wait");
    k.je(wait)?;
    k.iterate(|k| {
        for _ in 0..UNROLL {
            k.mov(dword_ptr(apic::ICR_HI), 1u32 << 24)?;
            k.mov(dword_ptr(apic::ICR_LO), PING_VECTOR)?;
            k.sti()?;
            k.hlt()?;
            k.cli()?;
        }
        Ok(())
    })?;
    k.mov(eax, dword_ptr(COUNTER))?;
    let done = k.label("ipi_cpu.done");
    k.jmp(done)?;

    // The AP: flat segments, its own stack, the shared IDT and page tables,
    // its APIC on; then it waits for IPIs.
    k.at("ap32")?;
    k.mov(ax, u32::from(DATA0))?;
    for s in [ds, es, fs, gs, ss] {
        k.mov(s, ax)?;
    }
    k.mov(esp, AP_STACK_TOP)?;
    k.lidt(ptr(IDTR))?;
    k.mov(eax, PD)?;
    k.mov(cr3, eax)?;
    k.mov(eax, cr4)?;
    k.or(eax, 0x10u32)?;
    k.mov(cr4, eax)?;
    k.mov(eax, cr0)?;
    k.or(eax, 0x8000_0000u32)?;
    k.mov(cr0, eax)?;
    k.mov(dword_ptr(apic::SVR), 0x1FFu32)?;
    k.mov(dword_ptr(AP_READY), 1u32)?;
    k.at("ap.idle")?;
    k.sti()?;
    k.hlt()?;
    k.jmp_to("ap.idle")?;
    k.at("ipi_cpu.done")?;
    k.nop()
}

/// Assembles `w`'s kernel image (ITERS = 1).
fn build(w: Workload) -> Vec<u8> {
    let mut prev = HashMap::new();
    for _ in 0..4 {
        let mut k = Kb {
            a: CodeAssembler::new(32).expect("32-bit assembler"),
            labels: HashMap::new(),
            prev: prev.clone(),
            data: vec![0; (IMAGE_END - DATA_BASE) as usize],
        };
        tables(&mut k);
        k.poke32(CPUS, w.cpus());
        runtime(&mut k).expect("runtime assembles");
        k.at("main").expect("main");
        w.main(&mut k).expect("workload assembles");
        epilogue(&mut k).expect("epilogue assembles");
        let res =
            k.a.assemble_options(
                u64::from(CODE_BASE),
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .expect("kernel encodes");
        let found: HashMap<&'static str, u32> = k
            .labels
            .iter()
            .map(|(name, l)| {
                let ip = res.label_ip(l).expect("label placed");
                (*name, u32::try_from(ip).expect("32-bit address"))
            })
            .collect();
        if found == prev {
            return image(&res.inner.code_buffer, &k.data);
        }
        prev = found;
    }
    panic!("label addresses of {} did not settle", w.name());
}

fn image(code: &[u8], data: &[u8]) -> Vec<u8> {
    assert!(
        code.len() <= (DATA_BASE - CODE_BASE) as usize,
        "code too big"
    );
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 0x0001_0000; // the address fields are valid
    let header = [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC).wrapping_sub(FLAGS),
        IMAGE_BASE, // header_addr
        IMAGE_BASE, // load_addr
        IMAGE_END,  // load_end_addr
        BSS_END,    // bss_end_addr
        CODE_BASE,  // entry_addr
    ];
    let mut image = vec![0u8; (IMAGE_END - IMAGE_BASE) as usize];
    for (i, field) in header.iter().enumerate() {
        image[4 * i..4 * i + 4].copy_from_slice(&field.to_le_bytes());
    }
    image[HEADER_LEN as usize..HEADER_LEN as usize + code.len()].copy_from_slice(code);
    image[(DATA_BASE - IMAGE_BASE) as usize..].copy_from_slice(data);
    image
}

// ---------------------------------------------------------------------------
// Running.

/// A VM with `image` loaded as `--kernel` would load it (64 MiB PC, no BIOS, all
/// output discarded) and the CPU at the Multiboot entry, on `engine`.
pub fn prepare(image: &[u8], engine: Engine) -> Result<Vm, Error> {
    prepare_multiboot(image, "", image_cpus(image), engine)
}

/// A VM with the Multiboot kernel `image` loaded with the command line
/// `cmdline` on a 64 MiB PC of `cpus` CPUs (no BIOS, all output discarded),
/// and the CPU at its entry, on `engine`.
pub fn prepare_multiboot(
    image: &[u8],
    cmdline: &str,
    cpus: u32,
    engine: Engine,
) -> Result<Vm, Error> {
    let mut machine = pc::build(PcConfig {
        cpus,
        ..PcConfig::headless(64 << 20, None)
    })?;
    let entry =
        multiboot::load(&mut machine.mem, image, cmdline, &[]).map_err(|source| Error::Loader {
            path: PathBuf::from("<bench kernel>"),
            source,
        })?;
    let mut vm = Vm::with_engine(machine, engine)?;
    vm.no_reboot = true;
    crate::boot::enter_multiboot(
        &mut vm.cpu,
        entry.entry,
        multiboot::BOOTLOADER_MAGIC,
        entry.info_addr,
    );
    Ok(vm)
}

/// The CPUs `image` says it needs ([`layout::CPUS`]).
pub fn image_cpus(image: &[u8]) -> u32 {
    let at = (CPUS - IMAGE_BASE) as usize;
    image
        .get(at..at + 4)
        .map_or(1, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .clamp(1, 2)
}

/// A finished in-process run.
pub struct X86btRun {
    /// The VM after the run (memory holds the results).
    pub vm: Vm,
    /// How it ended; [`RunOutcome::DebugExit`] with [`PASS_STATUS`] is success.
    pub outcome: RunOutcome,
    /// Wall time of `Vm::run` alone.
    pub secs: f64,
}

impl X86btRun {
    /// Whether the kernel exited with the right answer.
    pub fn passed(&self) -> bool {
        self.outcome == RunOutcome::DebugExit(PASS_STATUS)
    }

    /// A dword of guest memory.
    pub fn read32(&self, addr: u32) -> u32 {
        u32::from_le_bytes(self.vm.machine.mem.read(GuestPhys(u64::from(addr))))
    }
}

/// Guest instructions after which an in-process run is abandoned: far beyond any
/// workload's count, so only a kernel gone astray reaches it.
const MAX_INSNS: u64 = 1 << 40;

/// Runs `image` on `engine` to its exit, timing the run alone.
pub fn run_x86bt(image: &[u8], engine: Engine) -> Result<X86btRun, Error> {
    Ok(time_run(prepare(image, engine)?))
}

/// Runs a prepared VM to its exit, timing the run alone.
pub fn time_run(mut vm: Vm) -> X86btRun {
    let start = Instant::now();
    let outcome = vm.run(MAX_INSNS);
    let secs = start.elapsed().as_secs_f64();
    X86btRun { vm, outcome, secs }
}

/// `qemu` if given, else `qemu-system-i386` from PATH, if it exists.
pub fn find_qemu(qemu: Option<&Path>) -> Option<PathBuf> {
    if let Some(q) = qemu {
        return q.exists().then(|| q.to_path_buf());
    }
    find_on_path("qemu-system-i386")
}

/// The first file called `name` in a directory of PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A finished QEMU run.
pub struct QemuRun {
    /// The exit status (None if killed by a signal or the time limit).
    pub status: Option<i32>,
    /// Wall time from spawn to exit.
    pub secs: f64,
    /// What QEMU printed on stderr.
    pub stderr: String,
}

impl QemuRun {
    /// Whether the kernel exited with the right answer.
    pub fn passed(&self) -> bool {
        self.status == Some(PASS_STATUS)
    }
}

/// Seconds after which a QEMU run is killed.
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

/// Boots `image` with `qemu -accel tcg -kernel` and the isa-debug-exit device at
/// 0xF4, and times it from spawn to exit (start-up and SeaBIOS included).
pub fn run_qemu(qemu: &Path, image: &[u8]) -> Result<QemuRun, Error> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "x86bt-bench-{}-{}.img",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, image).map_err(|source| Error::Create {
        path: path.clone(),
        source,
    })?;
    let opts = QemuOptions {
        cpus: image_cpus(image),
        ..QemuOptions::default()
    };
    let result = spawn_qemu(qemu, &path, &opts);
    let _ = std::fs::remove_file(&path);
    result
}

/// How [`spawn_qemu`] starts QEMU beyond its fixed options.
#[derive(Clone, Debug)]
pub struct QemuOptions<'a> {
    /// `-smp`.
    pub cpus: u32,
    /// `-cpu`, or QEMU's default model.
    pub cpu_model: Option<&'a str>,
    /// The kernel command line (`-append`).
    pub append: Option<&'a str>,
}

impl Default for QemuOptions<'_> {
    fn default() -> Self {
        Self {
            cpus: 1,
            cpu_model: None,
            append: None,
        }
    }
}

/// Boots the Multiboot kernel file `kernel` with `qemu -accel tcg -kernel`, a
/// 64 MiB machine and the isa-debug-exit device at 0xF4, and times it from
/// spawn to exit (start-up and SeaBIOS included).
pub fn spawn_qemu(qemu: &Path, kernel: &Path, opts: &QemuOptions) -> Result<QemuRun, Error> {
    let start = Instant::now();
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ]);
    if let Some(model) = opts.cpu_model {
        cmd.args(["-cpu", model]);
    }
    if let Some(append) = opts.append {
        cmd.args(["-append", append]);
    }
    let mut child = cmd
        .args(["-smp", &opts.cpus.to_string(), "-m", "64", "-kernel"])
        .arg(kernel)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Usage(format!("cannot run {}: {e}", qemu.display())))?;
    let status = wait_child(&mut child, start, QEMU_TIMEOUT)
        .map_err(|e| Error::Usage(format!("waiting for QEMU: {e}")))?;
    let secs = start.elapsed().as_secs_f64();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    Ok(QemuRun {
        status,
        secs,
        stderr,
    })
}

/// Waits for `child`, polling, and kills it once `timeout` has passed since
/// `start`: its exit status, or `None` if a signal or the time limit ended it.
pub fn wait_child(
    child: &mut std::process::Child,
    start: Instant,
    timeout: Duration,
) -> std::io::Result<Option<i32>> {
    loop {
        match child.try_wait()? {
            Some(s) => return Ok(s.code()),
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}
