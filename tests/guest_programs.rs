//! Guest programs assembled here with iced-x86's `code_asm` and run through x86bt's
//! real run loop (`Vm::run`), one section per instruction family.
//!
//! Every expected value comes from an oracle that does not involve x86bt:
//! - arithmetic, logic, shifts, multiply/divide and the bit instructions run the same
//!   instruction natively on the x86-64 host (`core::arch::asm!`, RFLAGS loaded and
//!   saved with POPFQ/PUSHFQ), over seeded LCG operands, and only the flags the Intel
//!   SDM defines for that instruction are compared;
//! - the BCD instructions (invalid in 64-bit mode) use the SDM's worked examples and a
//!   transcription of the SDM vol. 2A "Operation" pseudo-code;
//! - strings, stack, control flow, faults, I/O and devices are checked against values
//!   derived by hand from the SDM, the 8259A/8254/16550A datasheets, or a plain Rust
//!   model of the copy/compare.
//!
//! Layout of every guest: code at 1000:0000, DS=2000, ES=3000, SS:SP=9000:FFFE, and
//! one-byte HLT stubs at 1000:F000+v that IVT entries 0-31 point at, so a fault test
//! learns which vector was delivered from where the CPU halted, and reads the frame
//! the CPU pushed at SS:SP.
//!
//! Engines: this file runs every guest on the interpreter; `tests/jit.rs` includes
//! it as a module with its own `TEST_ENGINE` (the translator), so the same guests
//! and oracles check both engines. `X86BT_TEST_ENGINE=interp|jit|lockstep`
//! overrides the engine of either binary (e.g. to run them all in lockstep).

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Instruction, Register, RepPrefixKind};
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use x86bt::cli::Engine;
use x86bt::{RunOutcome, Vm};
use x86bt_cpu::state::{reg, sreg, Segment};
use x86bt_machine::pc::{self, PcConfig};
use x86bt_machine::{GuestPhys, Machine};

// ================================================================================
// Shared helpers
// ================================================================================

/// The engine these guests run on when this file is the test crate (see the
/// module comment; `tests/jit.rs` has its own).
#[allow(dead_code)]
const TEST_ENGINE: Engine = Engine::Interp;

/// The engine of this test binary, or the one `X86BT_TEST_ENGINE` names.
fn test_engine() -> Engine {
    match std::env::var("X86BT_TEST_ENGINE").as_deref() {
        Ok("interp") => Engine::Interp,
        Ok("jit") => Engine::Jit,
        Ok("lockstep") => Engine::Lockstep,
        _ => crate::TEST_ENGINE,
    }
}

const CODE_SEG: u16 = 0x1000;
const DATA_SEG: u16 = 0x2000;
const EXTRA_SEG: u16 = 0x3000;
const FAR_SEG: u16 = 0x5000;
const STACK_SEG: u16 = 0x9000;
const STACK_TOP: u16 = 0xFFFE;
/// 32 one-byte HLT stubs; IVT entry v points at CODE_SEG:STUBS+v.
const STUBS: u16 = 0xF000;
const INSN_LIMIT: u64 = 50_000_000;

// FLAGS bits (SDM vol. 1 §3.4.3).
const CF: u16 = 1 << 0;
const PF: u16 = 1 << 2;
const AF: u16 = 1 << 4;
const ZF: u16 = 1 << 6;
const SF: u16 = 1 << 7;
const TF: u16 = 1 << 8;
const IF: u16 = 1 << 9;
const OF: u16 = 1 << 11;
const ARITH: u16 = CF | PF | AF | ZF | SF | OF;

type AsmResult = Result<(), IcedError>;

fn phys(seg: u16, off: u16) -> u64 {
    (u64::from(seg) << 4) + u64::from(off)
}

/// An assembled 16-bit guest and the addresses of the labels its builder returned.
struct Program<const N: usize> {
    code: Vec<u8>,
    ips: [u16; N],
}

/// Assembles a 16-bit guest at IP 0. The builder gets the label addresses of the
/// previous pass, so it can use them as immediates (IVT entries, patch targets);
/// passes repeat until the addresses settle.
fn assemble<const N: usize>(
    build: impl Fn(&mut CodeAssembler, [u16; N]) -> Result<[CodeLabel; N], IcedError>,
) -> Program<N> {
    let mut ips = [0x4000u16; N];
    for _ in 0..8 {
        let mut a = CodeAssembler::new(16).expect("16-bit assembler");
        let labels = build(&mut a, ips).expect("guest program builds");
        let res = a
            .assemble_options(0, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .expect("guest program encodes");
        let found = labels.map(|l| res.label_ip(&l).expect("label is placed") as u16);
        if found == ips {
            return Program {
                code: res.inner.code_buffer,
                ips,
            };
        }
        ips = found;
    }
    panic!("label addresses did not settle");
}

/// Assembles a 16-bit guest without labels that need addresses.
fn asm16(build: impl Fn(&mut CodeAssembler) -> AsmResult) -> Vec<u8> {
    assemble(|a, []| {
        build(a)?;
        Ok([])
    })
    .code
}

/// `machine` with `code` at CODE_SEG:0, the HLT stubs and their IVT entries, and
/// the CPU at the first instruction with the standard segments.
fn vm_with(mut m: Machine, code: &[u8]) -> Vm {
    assert!(code.len() <= usize::from(STUBS), "code overlaps the stubs");
    m.mem
        .load(GuestPhys(phys(CODE_SEG, 0)), code)
        .expect("code fits in RAM");
    m.mem
        .load(GuestPhys(phys(CODE_SEG, STUBS)), &[0xF4; 32])
        .expect("stubs fit in RAM");
    let ivt: Vec<u8> = (0..32u16)
        .flat_map(|v| {
            let [a, b] = (STUBS + v).to_le_bytes();
            let [c, d] = CODE_SEG.to_le_bytes();
            [a, b, c, d]
        })
        .collect();
    m.mem.load(GuestPhys(0), &ivt).expect("IVT fits in RAM");
    let mut vm = Vm::with_engine(m, test_engine()).expect("engine runs on this host");
    vm.cpu.seg[sreg::CS] = Segment::real(CODE_SEG);
    vm.cpu.seg[sreg::DS] = Segment::real(DATA_SEG);
    vm.cpu.seg[sreg::ES] = Segment::real(EXTRA_SEG);
    vm.cpu.seg[sreg::SS] = Segment::real(STACK_SEG);
    vm.cpu.gpr[reg::RSP] = u64::from(STACK_TOP);
    vm.cpu.rip = 0;
    vm
}

/// A bare 16 MiB machine (no devices; ports read all ones).
fn flat_vm(code: &[u8]) -> Vm {
    vm_with(Machine::flat(16 << 20).expect("flat machine"), code)
}

/// Captures what the guest sends to COM1.
#[derive(Clone, Default)]
struct Capture(Rc<RefCell<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A PC (PIC, PIT, CMOS, COM1, debug exit) without firmware.
fn pc_vm(code: &[u8], serial: Capture) -> Vm {
    let m = pc::build(PcConfig {
        serial_out: Box::new(serial),
        ..PcConfig::headless(16 << 20, None)
    })
    .expect("PC machine");
    vm_with(m, code)
}

fn load(vm: &mut Vm, seg: u16, off: u16, bytes: &[u8]) {
    vm.machine
        .mem
        .load(GuestPhys(phys(seg, off)), bytes)
        .expect("test data fits in RAM");
}

fn bytes(vm: &Vm, seg: u16, off: u16, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    vm.machine
        .mem
        .read_bytes(GuestPhys(phys(seg, off)), &mut buf);
    buf
}

fn mem8(vm: &Vm, seg: u16, off: u16) -> u8 {
    vm.machine.mem.read_u8(GuestPhys(phys(seg, off)))
}

fn mem16(vm: &Vm, seg: u16, off: u16) -> u16 {
    u16::from_le_bytes(vm.machine.mem.read::<2>(GuestPhys(phys(seg, off))))
}

fn mem32(vm: &Vm, seg: u16, off: u16) -> u32 {
    u32::from_le_bytes(vm.machine.mem.read::<4>(GuestPhys(phys(seg, off))))
}

fn r16(vm: &Vm, r: usize) -> u16 {
    vm.cpu.gpr[r] as u16
}

fn r32(vm: &Vm, r: usize) -> u32 {
    vm.cpu.gpr[r] as u32
}

fn where_is(vm: &Vm) -> String {
    format!("{:04x}:{:04x}", vm.cpu.seg[sreg::CS].selector, vm.cpu.rip)
}

/// The vector whose HLT stub the CPU stopped in, if any.
fn stub_vector(vm: &Vm) -> Option<u8> {
    let ip = vm.cpu.rip as u16;
    (vm.cpu.seg[sreg::CS].selector == CODE_SEG && (STUBS + 1..=STUBS + 32).contains(&ip))
        .then(|| (ip - STUBS - 1) as u8)
}

/// Runs until HLT with interrupts off, and checks no exception stub was reached.
fn run_to_halt(vm: &mut Vm) {
    let out = vm.run(INSN_LIMIT);
    assert_eq!(
        out,
        RunOutcome::HaltedForever,
        "stopped at {}",
        where_is(vm)
    );
    assert_eq!(
        stub_vector(vm),
        None,
        "unexpected exception, frame IP {:04x}",
        mem16(vm, STACK_SEG, r16(vm, reg::RSP))
    );
}

/// The real-mode interrupt frame the CPU pushed: IP, CS, FLAGS (SDM vol. 3A §20.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    vector: u8,
    ip: u16,
    cs: u16,
    flags: u16,
}

/// Runs until an exception stub halts, and returns the delivered frame.
fn run_to_exception(vm: &mut Vm) -> Frame {
    let out = vm.run(INSN_LIMIT);
    assert_eq!(
        out,
        RunOutcome::HaltedForever,
        "stopped at {}",
        where_is(vm)
    );
    let vector = stub_vector(vm)
        .unwrap_or_else(|| panic!("no exception was delivered; halted at {}", where_is(vm)));
    let top = r16(vm, reg::RSP);
    let stack = vm.cpu.seg[sreg::SS].selector;
    Frame {
        vector,
        ip: mem16(vm, stack, top),
        cs: mem16(vm, stack, top.wrapping_add(2)),
        flags: mem16(vm, stack, top.wrapping_add(4)),
    }
}

// --------------------------------------------------------------------------------
// The case table: one guest program runs an instruction over many register/flag
// inputs and stores the results, so a whole operand sweep is one VM run.
// --------------------------------------------------------------------------------

/// EAX, EBX, ECX, EDX.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Regs {
    eax: u32,
    ebx: u32,
    ecx: u32,
    edx: u32,
}

/// Bytes of memory each case carries; the op's memory operand is in its middle.
const MEM_LEN: usize = 32;

/// One input (or output) of an op: registers, FLAGS and a memory window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Case {
    r: Regs,
    flags: u16,
    mem: [u8; MEM_LEN],
}

// Record layout in DS: in regs, in FLAGS, out regs, out FLAGS, memory window.
const REC: usize = 72;
const REC_IN_FLAGS: usize = 16;
const REC_OUT: usize = 20;
const REC_OUT_FLAGS: usize = 36;
const REC_MEM: usize = 40;
/// The op's memory operand: `[si + MEM_OPERAND]`, 16 bytes into the window.
const MEM_OPERAND: i32 = REC_MEM as i32 + 16;
const BATCH: usize = 900;

type Op<'a> = &'a dyn Fn(&mut CodeAssembler) -> AsmResult;

/// The case loop: load EAX-EDX and FLAGS from the record at DS:SI, run `op`, store
/// EAX-EDX and FLAGS (through PUSHF) back, next record.
fn emit_case_loop(a: &mut CodeAssembler, op: Op, count: u16) -> AsmResult {
    let mut next = a.create_label();
    a.xor(si, si)?;
    a.mov(bp, u32::from(count))?;
    a.set_label(&mut next)?;
    a.mov(eax, dword_ptr(si))?;
    a.mov(ebx, dword_ptr(si + 4))?;
    a.mov(ecx, dword_ptr(si + 8))?;
    a.mov(edx, dword_ptr(si + 12))?;
    a.push(word_ptr(si + REC_IN_FLAGS as i32))?;
    a.popf()?;
    op(a)?;
    a.pushf()?;
    a.pop(word_ptr(si + REC_OUT_FLAGS as i32))?;
    a.mov(dword_ptr(si + REC_OUT as i32), eax)?;
    a.mov(dword_ptr(si + REC_OUT as i32 + 4), ebx)?;
    a.mov(dword_ptr(si + REC_OUT as i32 + 8), ecx)?;
    a.mov(dword_ptr(si + REC_OUT as i32 + 12), edx)?;
    a.add(si, REC as i32)?;
    a.dec(bp)?;
    a.jnz(next)?;
    a.hlt()
}

fn regs_at(rec: &[u8]) -> Regs {
    let d = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    Regs {
        eax: d(0),
        ebx: d(4),
        ecx: d(8),
        edx: d(12),
    }
}

/// Runs `op` over `cases` in the guest; returns the output of each case.
fn run_cases(op: Op, cases: &[Case]) -> Vec<Case> {
    let mut results = Vec::with_capacity(cases.len());
    for batch in cases.chunks(BATCH) {
        let program = asm16(|a| emit_case_loop(a, op, batch.len() as u16));
        let mut vm = flat_vm(&program);
        let mut image = vec![0u8; batch.len() * REC];
        for (rec, c) in image.chunks_exact_mut(REC).zip(batch) {
            for (i, v) in [c.r.eax, c.r.ebx, c.r.ecx, c.r.edx].into_iter().enumerate() {
                rec[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            rec[REC_IN_FLAGS..REC_IN_FLAGS + 2].copy_from_slice(&c.flags.to_le_bytes());
            rec[REC_MEM..].copy_from_slice(&c.mem);
        }
        load(&mut vm, DATA_SEG, 0, &image);
        run_to_halt(&mut vm);
        let back = bytes(&vm, DATA_SEG, 0, image.len());
        for rec in back.chunks_exact(REC) {
            let mut mem = [0u8; MEM_LEN];
            mem.copy_from_slice(&rec[REC_MEM..]);
            results.push(Case {
                r: regs_at(&rec[REC_OUT..]),
                flags: u16::from_le_bytes([rec[REC_OUT_FLAGS], rec[REC_OUT_FLAGS + 1]]),
                mem,
            });
        }
    }
    results
}

/// Runs `op` in the guest over `cases` and compares every case with `oracle`:
/// registers and memory exactly, FLAGS under `mask` (the bits the SDM defines).
fn check_op(
    name: &str,
    op: Op,
    cases: &[Case],
    oracle: impl Fn(&Case) -> Case,
    mask: impl Fn(&Case) -> u16,
) {
    let got = run_cases(op, cases);
    assert_eq!(got.len(), cases.len(), "{name}: every case ran");
    let diffs: Vec<String> = cases
        .iter()
        .zip(&got)
        .filter_map(|(c, g)| {
            let want = oracle(c);
            let m = mask(c);
            let same = g.r == want.r && g.mem == want.mem && g.flags & m == want.flags & m;
            let mut report = format!(
                "  in     {:x?} flags {:#06x}\n  x86bt  {:x?} flags {:#06x}\n  oracle {:x?} flags {:#06x} (compared {m:#06x})",
                c.r, c.flags, g.r, g.flags, want.r, want.flags
            );
            if g.mem != want.mem {
                report += &format!(
                    "\n  memory in {:02x?}\n  x86bt     {:02x?}\n  oracle    {:02x?}",
                    c.mem, g.mem, want.mem
                );
            }
            (!same).then_some(report)
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{name}: {} of {} cases differ; first ones:\n{}",
        diffs.len(),
        cases.len(),
        diffs[..diffs.len().min(3)].join("\n")
    );
}

/// A seeded 64-bit LCG (Knuth's MMIX constants): deterministic operands.
struct Lcg(u64);

/// Values at the edges of 8-, 16- and 32-bit arithmetic.
const EDGES: [u32; 16] = [
    0,
    1,
    2,
    0x0F,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0x8000_0001,
    0xFFFF_FFFF,
];

impl Lcg {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }
    fn next64(&mut self) -> u64 {
        (u64::from(self.next()) << 32) | u64::from(self.next())
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
    /// An operand: an edge value one time in four, else random bits.
    fn operand(&mut self) -> u32 {
        if self.below(4) == 0 {
            EDGES[self.below(EDGES.len() as u32) as usize]
        } else {
            self.next()
        }
    }
    /// Random status flags (no TF, IF or DF), with the always-one bit 1.
    fn flags(&mut self) -> u16 {
        (self.next() as u16 & ARITH) | 0x0002
    }
    fn case(&mut self) -> Case {
        let mut mem = [0u8; MEM_LEN];
        for b in &mut mem {
            *b = self.next() as u8;
        }
        Case {
            r: Regs {
                eax: self.operand(),
                ebx: self.operand(),
                ecx: self.next(),
                edx: self.next(),
            },
            flags: self.flags(),
            mem,
        }
    }
}

/// How many cases a sweep runs per op.
const SWEEP: usize = 300;

fn random_cases(seed: u64) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    (0..SWEEP).map(|_| rng.case()).collect()
}

/// All 64 combinations of the six status flags, four times, with random operands.
fn all_flag_cases(seed: u64) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    let bits = [CF, PF, AF, ZF, SF, OF];
    (0..256u32)
        .map(|i| {
            let mut c = rng.case();
            c.flags = bits
                .iter()
                .enumerate()
                .filter(|(b, _)| i & (1 << b) != 0)
                .fold(0x0002, |f, (_, &bit)| f | bit);
            c
        })
        .collect()
}

/// Every shift count 0..=max_count, ten cases each; CL bits 5-7 are random (the CPU
/// masks the count to five bits).
#[cfg(target_arch = "x86_64")]
fn shift_cases(seed: u64, max_count: u32) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    (0..=max_count)
        .flat_map(|count| (0..10).map(move |_| count))
        .map(|count| {
            let mut c = rng.case();
            c.r.ecx = (rng.next() & !0x1F) | count;
            c
        })
        .collect()
}

/// EBX with a non-zero low word (BSF/BSR sources).
#[cfg(target_arch = "x86_64")]
fn nonzero_source_cases(seed: u64) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    (0..SWEEP)
        .map(|_| {
            let mut c = rng.case();
            if c.r.ebx & 0xFFFF == 0 {
                c.r.ebx |= 1 << rng.below(16);
            }
            c
        })
        .collect()
}

/// EBX holds a signed bit offset in -128..128: a memory BTx reaches up to 16 bytes
/// either side of its operand.
#[cfg(target_arch = "x86_64")]
fn bit_offset_cases(seed: u64) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    (0..SWEEP)
        .map(|_| {
            let mut c = rng.case();
            c.r.ebx = (rng.below(256) as i32 - 128) as u32;
            c
        })
        .collect()
}

/// Half the cases make CMPXCHG's comparison succeed: EBX = EAX, and the memory
/// qword = EDX:EAX.
#[cfg(target_arch = "x86_64")]
fn compare_equal_cases(seed: u64) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    (0..SWEEP)
        .map(|i| {
            let mut c = rng.case();
            if i % 2 == 0 {
                c.r.ebx = c.r.eax;
                c.mem[16..20].copy_from_slice(&c.r.eax.to_le_bytes());
                c.mem[20..24].copy_from_slice(&c.r.edx.to_le_bytes());
            }
            c
        })
        .collect()
}

/// Sign-extends the low `bits` of `v`.
#[cfg(target_arch = "x86_64")]
fn sext(v: u64, bits: u32) -> i128 {
    let shift = 128 - bits;
    (i128::from(v) << shift) >> shift
}

/// DIV/IDIV operands whose quotient fits (no #DE): quotient, divisor and a remainder
/// smaller than the divisor (with the dividend's sign) are drawn, and the dividend
/// built from them. The dividend goes to AX, DX:AX or EDX:EAX and the divisor to
/// BL, BX or EBX.
#[cfg(target_arch = "x86_64")]
fn div_cases(seed: u64, bits: u32, signed: bool) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    let mask = (1u64 << bits) - 1;
    (0..SWEEP)
        .map(|_| {
            let mut c = rng.case();
            let (dividend, divisor) = if signed {
                let mut d = sext(u64::from(rng.operand()) & mask, bits);
                if d == 0 {
                    d = -3;
                }
                let q = sext(rng.next64() & mask, bits);
                let r = i128::from(rng.next64() % d.unsigned_abs() as u64);
                let sign = if q * d < 0 || (q * d == 0 && rng.below(2) == 0) {
                    -1
                } else {
                    1
                };
                let n = q * d + sign * r;
                assert_eq!(n / d, q, "generator: quotient must fit");
                (n, d)
            } else {
                let d = (u64::from(rng.operand()) & mask).max(1);
                let q = rng.next64() & mask;
                let r = rng.next64() % d;
                (i128::from(q) * i128::from(d) + i128::from(r), i128::from(d))
            };
            let n = dividend as u128 as u64;
            let d = divisor as u128 as u32;
            match bits {
                8 => {
                    c.r.eax = (c.r.eax & 0xFFFF_0000) | (n as u32 & 0xFFFF);
                    c.r.ebx = (c.r.ebx & !0xFF) | (d & 0xFF);
                }
                16 => {
                    c.r.eax = (c.r.eax & 0xFFFF_0000) | (n as u32 & 0xFFFF);
                    c.r.edx = (c.r.edx & 0xFFFF_0000) | ((n >> 16) as u32 & 0xFFFF);
                    c.r.ebx = (c.r.ebx & !0xFFFF) | (d & 0xFFFF);
                }
                _ => {
                    c.r.eax = n as u32;
                    c.r.edx = (n >> 32) as u32;
                    c.r.ebx = d;
                }
            }
            c
        })
        .collect()
}

// --------------------------------------------------------------------------------
// The native oracle (x86-64 hosts only).
// --------------------------------------------------------------------------------

/// A closure that runs the given Intel-syntax lines natively on a `Case`. Guest EAX,
/// ECX and EDX are RAX, RCX and RDX; guest EBX is `{b}` (LLVM reserves RBX); `{m}`
/// points 16 bytes into a copy of the case's memory window, where the guest's
/// `[si + MEM_OPERAND]` points. FLAGS go in through POPFQ and come out through
/// PUSHFQ around exactly the lines given.
#[cfg(target_arch = "x86_64")]
macro_rules! native {
    ($($line:literal),+ $(,)?) => {
        |c: &Case| -> Case {
            let mut out = *c;
            let mut a = u64::from(c.r.eax);
            let mut b = u64::from(c.r.ebx);
            let mut c_ = u64::from(c.r.ecx);
            let mut d = u64::from(c.r.edx);
            let mut f = u64::from(c.flags);
            let m = out.mem.as_mut_ptr().wrapping_add(16);
            // SAFETY: the lines are one instruction sequence from this file's test
            // tables. They touch only the registers bound here (RBX is exchanged with
            // `b` and back), RFLAGS' status bits (loaded and saved through one
            // balanced push/pop pair on the stack, which `asm!` allows without
            // `nostack`), and memory within `out.mem` through `m`: memory operands
            // reach at most 16 bytes either side of `m`, inside the 32-byte array,
            // which lives until after the block.
            unsafe {
                // The CMP only names `{m}` and `{b}` for lines that use neither;
                // POPFQ replaces the flags it sets.
                core::arch::asm!(
                    "cmp {m}, {b}",
                    "push {f}",
                    "popfq",
                    $($line,)+
                    "pushfq",
                    "pop {f}",
                    f = inout(reg) f,
                    b = inout(reg) b,
                    m = in(reg) m,
                    inout("rax") a,
                    inout("rcx") c_,
                    inout("rdx") d,
                );
            }
            out.r = Regs {
                eax: a as u32,
                ebx: b as u32,
                ecx: c_ as u32,
                edx: d as u32,
            };
            out.flags = f as u16;
            out
        }
    };
}

/// Tests that run a guest op over generated cases and compare with the same
/// instruction run natively: `name: cases, flag mask, |a| guest op, [native lines];`
#[cfg(target_arch = "x86_64")]
macro_rules! native_tests {
    ($($name:ident: $cases:expr, $mask:expr, |$a:ident| $guest:expr, [$($line:literal),+ $(,)?];)+) => {
        $(
            #[test]
            fn $name() {
                // Arrange
                let cases = $cases;
                // Act and assert
                check_op(
                    stringify!($name),
                    &|$a: &mut CodeAssembler| $guest,
                    &cases,
                    native!($($line),+),
                    $mask,
                );
            }
        )+
    };
}

/// Compares every status flag (the instruction defines or preserves them all).
fn all(_: &Case) -> u16 {
    ARITH
}

/// AND, OR, XOR, TEST: AF is undefined (SDM vol. 2A, AND "Flags Affected").
#[cfg(target_arch = "x86_64")]
fn logic(_: &Case) -> u16 {
    ARITH & !AF
}

/// MUL, IMUL: only CF and OF are defined.
#[cfg(target_arch = "x86_64")]
fn carry_overflow(_: &Case) -> u16 {
    CF | OF
}

/// DIV, IDIV: every status flag is undefined.
#[cfg(target_arch = "x86_64")]
fn none(_: &Case) -> u16 {
    0
}

/// BSF, BSR: only ZF is defined.
#[cfg(target_arch = "x86_64")]
fn zero_only(_: &Case) -> u16 {
    ZF
}

/// BT, BTS, BTR, BTC: CF is the bit, ZF is unaffected, the rest undefined.
#[cfg(target_arch = "x86_64")]
fn bit_test(_: &Case) -> u16 {
    CF | ZF
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum ShiftKind {
    /// ROL, ROR, RCL, RCR: SF, ZF, AF, PF unaffected.
    Rotate,
    /// SHL, SHR: CF undefined when the count reaches the operand size.
    Logical,
    /// SAR.
    Arithmetic,
    /// SHLD, SHRD (counts up to the operand size).
    Double,
}

/// The flags the SDM defines after a shift or rotate by `count` (SDM vol. 2A,
/// SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR, SHLD, SHRD "Flags Affected"): nothing changes
/// for a masked count of 0; OF is defined only for a count of 1; AF is undefined
/// after a shift.
#[cfg(target_arch = "x86_64")]
fn shift_mask(kind: ShiftKind, width: u32, count: u32) -> u16 {
    let count = count & 0x1F;
    if count == 0 {
        return ARITH;
    }
    let of = if count == 1 { OF } else { 0 };
    match kind {
        ShiftKind::Rotate => CF | of | SF | ZF | AF | PF,
        ShiftKind::Logical => (if count < width { CF } else { 0 }) | of | SF | ZF | PF,
        ShiftKind::Arithmetic | ShiftKind::Double => CF | of | SF | ZF | PF,
    }
}

// Flag masks of the CL-count sweeps, by kind and operand size.

#[cfg(target_arch = "x86_64")]
fn rotate8(c: &Case) -> u16 {
    shift_mask(ShiftKind::Rotate, 8, c.r.ecx)
}
#[cfg(target_arch = "x86_64")]
fn rotate16(c: &Case) -> u16 {
    shift_mask(ShiftKind::Rotate, 16, c.r.ecx)
}
#[cfg(target_arch = "x86_64")]
fn rotate32(c: &Case) -> u16 {
    shift_mask(ShiftKind::Rotate, 32, c.r.ecx)
}
#[cfg(target_arch = "x86_64")]
fn logical8(c: &Case) -> u16 {
    shift_mask(ShiftKind::Logical, 8, c.r.ecx)
}
#[cfg(target_arch = "x86_64")]
fn logical16(c: &Case) -> u16 {
    shift_mask(ShiftKind::Logical, 16, c.r.ecx)
}
#[cfg(target_arch = "x86_64")]
fn logical32(c: &Case) -> u16 {
    shift_mask(ShiftKind::Logical, 32, c.r.ecx)
}
#[cfg(target_arch = "x86_64")]
fn arithmetic(c: &Case) -> u16 {
    shift_mask(ShiftKind::Arithmetic, 32, c.r.ecx)
}
#[cfg(target_arch = "x86_64")]
fn double(c: &Case) -> u16 {
    shift_mask(ShiftKind::Double, 32, c.r.ecx)
}

/// Runs a Jcc inside the case loop: AL = 1 if it jumped, else 0 (MOV leaves the
/// flags alone). Compared with the native SETcc of the same condition.
#[cfg(target_arch = "x86_64")]
fn jcc_op(
    a: &mut CodeAssembler,
    jcc: impl Fn(&mut CodeAssembler, CodeLabel) -> AsmResult,
) -> AsmResult {
    let mut taken = a.create_label();
    let mut done = a.create_label();
    a.mov(al, 0)?;
    jcc(a, taken)?;
    a.jmp(done)?;
    a.set_label(&mut taken)?;
    a.mov(al, 1)?;
    a.set_label(&mut done)?;
    a.nop()
}

// ================================================================================
// ALU: ADD ADC SUB SBB AND OR XOR CMP TEST INC DEC NEG NOT, vs native
// ================================================================================

#[cfg(target_arch = "x86_64")]
native_tests! {
    alu_add8_matches_native_flags: random_cases(101), all, |a| a.add(al, bl), ["add al, {b:l}"];
    alu_add16_matches_native_flags: random_cases(102), all, |a| a.add(ax, bx), ["add ax, {b:x}"];
    alu_add32_matches_native_flags: random_cases(103), all, |a| a.add(eax, ebx), ["add eax, {b:e}"];
    alu_adc8_matches_native_flags: random_cases(104), all, |a| a.adc(al, bl), ["adc al, {b:l}"];
    alu_adc16_matches_native_flags: random_cases(105), all, |a| a.adc(ax, bx), ["adc ax, {b:x}"];
    alu_adc32_matches_native_flags: random_cases(106), all, |a| a.adc(eax, ebx), ["adc eax, {b:e}"];
    alu_sub8_matches_native_flags: random_cases(107), all, |a| a.sub(al, bl), ["sub al, {b:l}"];
    alu_sub16_matches_native_flags: random_cases(108), all, |a| a.sub(ax, bx), ["sub ax, {b:x}"];
    alu_sub32_matches_native_flags: random_cases(109), all, |a| a.sub(eax, ebx), ["sub eax, {b:e}"];
    alu_sbb8_matches_native_flags: random_cases(110), all, |a| a.sbb(al, bl), ["sbb al, {b:l}"];
    alu_sbb16_matches_native_flags: random_cases(111), all, |a| a.sbb(ax, bx), ["sbb ax, {b:x}"];
    alu_sbb32_matches_native_flags: random_cases(112), all, |a| a.sbb(eax, ebx), ["sbb eax, {b:e}"];
    alu_and8_matches_native_flags: random_cases(113), logic, |a| a.and(al, bl), ["and al, {b:l}"];
    alu_and16_matches_native_flags: random_cases(114), logic, |a| a.and(ax, bx), ["and ax, {b:x}"];
    alu_and32_matches_native_flags: random_cases(115), logic, |a| a.and(eax, ebx), ["and eax, {b:e}"];
    alu_or8_matches_native_flags: random_cases(116), logic, |a| a.or(al, bl), ["or al, {b:l}"];
    alu_or16_matches_native_flags: random_cases(117), logic, |a| a.or(ax, bx), ["or ax, {b:x}"];
    alu_or32_matches_native_flags: random_cases(118), logic, |a| a.or(eax, ebx), ["or eax, {b:e}"];
    alu_xor8_matches_native_flags: random_cases(119), logic, |a| a.xor(al, bl), ["xor al, {b:l}"];
    alu_xor16_matches_native_flags: random_cases(120), logic, |a| a.xor(ax, bx), ["xor ax, {b:x}"];
    alu_xor32_matches_native_flags: random_cases(121), logic, |a| a.xor(eax, ebx), ["xor eax, {b:e}"];
    alu_cmp8_matches_native_flags: random_cases(122), all, |a| a.cmp(al, bl), ["cmp al, {b:l}"];
    alu_cmp16_matches_native_flags: random_cases(123), all, |a| a.cmp(ax, bx), ["cmp ax, {b:x}"];
    alu_cmp32_matches_native_flags: random_cases(124), all, |a| a.cmp(eax, ebx), ["cmp eax, {b:e}"];
    alu_test8_matches_native_flags: random_cases(125), logic, |a| a.test(al, bl), ["test al, {b:l}"];
    alu_test16_matches_native_flags: random_cases(126), logic, |a| a.test(ax, bx), ["test ax, {b:x}"];
    alu_test32_matches_native_flags: random_cases(127), logic, |a| a.test(eax, ebx), ["test eax, {b:e}"];
    alu_inc8_matches_native_flags: random_cases(128), all, |a| a.inc(al), ["inc al"];
    alu_inc16_matches_native_flags: random_cases(129), all, |a| a.inc(ax), ["inc ax"];
    alu_inc32_matches_native_flags: random_cases(130), all, |a| a.inc(eax), ["inc eax"];
    alu_dec8_matches_native_flags: random_cases(131), all, |a| a.dec(al), ["dec al"];
    alu_dec16_matches_native_flags: random_cases(132), all, |a| a.dec(ax), ["dec ax"];
    alu_dec32_matches_native_flags: random_cases(133), all, |a| a.dec(eax), ["dec eax"];
    alu_neg8_matches_native_flags: random_cases(134), all, |a| a.neg(al), ["neg al"];
    alu_neg16_matches_native_flags: random_cases(135), all, |a| a.neg(ax), ["neg ax"];
    alu_neg32_matches_native_flags: random_cases(136), all, |a| a.neg(eax), ["neg eax"];
    alu_not8_matches_native_flags: random_cases(137), all, |a| a.not(al), ["not al"];
    alu_not16_matches_native_flags: random_cases(138), all, |a| a.not(ax), ["not ax"];
    alu_not32_matches_native_flags: random_cases(139), all, |a| a.not(eax), ["not eax"];
    // High-byte registers, immediates and memory operands.
    alu_add8_high_byte_registers_matches_native_flags: random_cases(140), all,
        |a| a.add(ah, ch), ["add ah, ch"];
    alu_sub8_high_from_low_matches_native_flags: random_cases(141), all,
        |a| a.sub(dh, al), ["sub dh, al"];
    alu_add16_imm8_sign_extended_matches_native_flags: random_cases(142), all,
        |a| a.add(bx, -3), ["add {b:x}, -3"];
    alu_sbb16_imm16_matches_native_flags: random_cases(143), all,
        |a| a.sbb(ax, 0x1234), ["sbb ax, 0x1234"];
    alu_and32_imm32_matches_native_flags: random_cases(144), logic,
        |a| a.and(ecx, 0x8F0F_F0F1u32), ["and ecx, 0x8F0FF0F1"];
    alu_cmp8_imm_matches_native_flags: random_cases(145), all,
        |a| a.cmp(al, 0x80), ["cmp al, 0x80"];
    alu_add16_memory_destination_matches_native_flags: random_cases(146), all,
        |a| a.add(word_ptr(si + MEM_OPERAND), bx), ["add word ptr [{m}], {b:x}"];
    alu_sbb32_memory_source_matches_native_flags: random_cases(147), all,
        |a| a.sbb(eax, dword_ptr(si + MEM_OPERAND)), ["sbb eax, dword ptr [{m}]"];
    alu_xor8_memory_destination_matches_native_flags: random_cases(148), logic,
        |a| a.xor(byte_ptr(si + MEM_OPERAND), bl), ["xor byte ptr [{m}], {b:l}"];
    alu_neg16_memory_matches_native_flags: random_cases(149), all,
        |a| a.neg(word_ptr(si + MEM_OPERAND)), ["neg word ptr [{m}]"];
    alu_inc32_memory_matches_native_flags: random_cases(150), all,
        |a| a.inc(dword_ptr(si + MEM_OPERAND)), ["inc dword ptr [{m}]"];
    alu_not8_memory_matches_native_flags: random_cases(151), all,
        |a| a.not(byte_ptr(si + MEM_OPERAND)), ["not byte ptr [{m}]"];
    alu_cbw_matches_native: random_cases(152), all, |a| a.cbw(), ["cbw"];
    alu_cwd_matches_native: random_cases(153), all, |a| a.cwd(), ["cwd"];
    alu_cwde_matches_native: random_cases(154), all, |a| a.cwde(), ["cwde"];
    alu_cdq_matches_native: random_cases(155), all, |a| a.cdq(), ["cdq"];
}

// ================================================================================
// Shifts and rotates, counts 0..31 in CL, vs native
// ================================================================================

#[cfg(target_arch = "x86_64")]
native_tests! {
    shift_rol8_cl_matches_native: shift_cases(201, 31), rotate8, |a| a.rol(al, cl), ["rol al, cl"];
    shift_rol16_cl_matches_native: shift_cases(202, 31), rotate16, |a| a.rol(ax, cl), ["rol ax, cl"];
    shift_rol32_cl_matches_native: shift_cases(203, 31), rotate32, |a| a.rol(eax, cl), ["rol eax, cl"];
    shift_ror8_cl_matches_native: shift_cases(204, 31), rotate8, |a| a.ror(al, cl), ["ror al, cl"];
    shift_ror16_cl_matches_native: shift_cases(205, 31), rotate16, |a| a.ror(ax, cl), ["ror ax, cl"];
    shift_ror32_cl_matches_native: shift_cases(206, 31), rotate32, |a| a.ror(eax, cl), ["ror eax, cl"];
    shift_rcl8_cl_matches_native: shift_cases(207, 31), rotate8, |a| a.rcl(al, cl), ["rcl al, cl"];
    shift_rcl16_cl_matches_native: shift_cases(208, 31), rotate16, |a| a.rcl(ax, cl), ["rcl ax, cl"];
    shift_rcl32_cl_matches_native: shift_cases(209, 31), rotate32, |a| a.rcl(eax, cl), ["rcl eax, cl"];
    shift_rcr8_cl_matches_native: shift_cases(210, 31), rotate8, |a| a.rcr(al, cl), ["rcr al, cl"];
    shift_rcr16_cl_matches_native: shift_cases(211, 31), rotate16, |a| a.rcr(ax, cl), ["rcr ax, cl"];
    shift_rcr32_cl_matches_native: shift_cases(212, 31), rotate32, |a| a.rcr(eax, cl), ["rcr eax, cl"];
    shift_shl8_cl_matches_native: shift_cases(213, 31), logical8, |a| a.shl(al, cl), ["shl al, cl"];
    shift_shl16_cl_matches_native: shift_cases(214, 31), logical16, |a| a.shl(ax, cl), ["shl ax, cl"];
    shift_shl32_cl_matches_native: shift_cases(215, 31), logical32, |a| a.shl(eax, cl), ["shl eax, cl"];
    shift_shr8_cl_matches_native: shift_cases(216, 31), logical8, |a| a.shr(al, cl), ["shr al, cl"];
    shift_shr16_cl_matches_native: shift_cases(217, 31), logical16, |a| a.shr(ax, cl), ["shr ax, cl"];
    shift_shr32_cl_matches_native: shift_cases(218, 31), logical32, |a| a.shr(eax, cl), ["shr eax, cl"];
    shift_sar8_cl_matches_native: shift_cases(219, 31), arithmetic, |a| a.sar(al, cl), ["sar al, cl"];
    shift_sar16_cl_matches_native: shift_cases(220, 31), arithmetic, |a| a.sar(ax, cl), ["sar ax, cl"];
    shift_sar32_cl_matches_native: shift_cases(221, 31), arithmetic, |a| a.sar(eax, cl), ["sar eax, cl"];
    // A 16-bit SHLD/SHRD count above 16 leaves result and flags undefined.
    shift_shld16_cl_matches_native: shift_cases(222, 16), double,
        |a| a.shld(ax, bx, cl), ["shld ax, {b:x}, cl"];
    shift_shld32_cl_matches_native: shift_cases(223, 31), double,
        |a| a.shld(eax, ebx, cl), ["shld eax, {b:e}, cl"];
    shift_shrd16_cl_matches_native: shift_cases(224, 16), double,
        |a| a.shrd(ax, bx, cl), ["shrd ax, {b:x}, cl"];
    shift_shrd32_cl_matches_native: shift_cases(225, 31), double,
        |a| a.shrd(eax, ebx, cl), ["shrd eax, {b:e}, cl"];
    // Immediate counts (D1 /n, C1 /n ib, 0F A4/AC ib) and a memory operand.
    shift_rcr16_by_one_matches_native: random_cases(226),
        |_: &Case| shift_mask(ShiftKind::Rotate, 16, 1), |a| a.rcr(bx, 1), ["rcr {b:x}, 1"];
    shift_sar32_by_imm_matches_native: random_cases(227),
        |_: &Case| shift_mask(ShiftKind::Arithmetic, 32, 7), |a| a.sar(edx, 7), ["sar edx, 7"];
    shift_shrd32_by_imm_matches_native: random_cases(228),
        |_: &Case| shift_mask(ShiftKind::Double, 32, 12),
        |a| a.shrd(eax, ebx, 12), ["shrd eax, {b:e}, 12"];
    shift_shl16_memory_cl_matches_native: shift_cases(229, 31), logical16,
        |a| a.shl(word_ptr(si + MEM_OPERAND), cl), ["shl word ptr [{m}], cl"];
}

// ================================================================================
// MUL, IMUL (one, two and three operands), DIV, IDIV, vs native; #DE
// ================================================================================

#[cfg(target_arch = "x86_64")]
native_tests! {
    muldiv_mul8_matches_native: random_cases(301), carry_overflow, |a| a.mul(bl), ["mul {b:l}"];
    muldiv_mul16_matches_native: random_cases(302), carry_overflow, |a| a.mul(bx), ["mul {b:x}"];
    muldiv_mul32_matches_native: random_cases(303), carry_overflow, |a| a.mul(ebx), ["mul {b:e}"];
    muldiv_imul8_one_operand_matches_native: random_cases(304), carry_overflow,
        |a| a.imul(bl), ["imul {b:l}"];
    muldiv_imul16_one_operand_matches_native: random_cases(305), carry_overflow,
        |a| a.imul(bx), ["imul {b:x}"];
    muldiv_imul32_one_operand_matches_native: random_cases(306), carry_overflow,
        |a| a.imul(ebx), ["imul {b:e}"];
    muldiv_imul16_two_operands_matches_native: random_cases(307), carry_overflow,
        |a| a.imul_2(ax, bx), ["imul ax, {b:x}"];
    muldiv_imul32_two_operands_matches_native: random_cases(308), carry_overflow,
        |a| a.imul_2(eax, ebx), ["imul eax, {b:e}"];
    muldiv_imul16_memory_source_matches_native: random_cases(309), carry_overflow,
        |a| a.imul_2(cx, word_ptr(si + MEM_OPERAND)), ["imul cx, word ptr [{m}]"];
    muldiv_imul16_three_operands_imm16_matches_native: random_cases(310), carry_overflow,
        |a| a.imul_3(ax, bx, 0x1234), ["imul ax, {b:x}, 0x1234"];
    muldiv_imul16_three_operands_imm8_matches_native: random_cases(311), carry_overflow,
        |a| a.imul_3(dx, bx, -3), ["imul dx, {b:x}, -3"];
    muldiv_imul32_three_operands_imm32_matches_native: random_cases(312), carry_overflow,
        |a| a.imul_3(eax, ebx, 100_000), ["imul eax, {b:e}, 100000"];
    muldiv_div8_matches_native: div_cases(313, 8, false), none, |a| a.div(bl), ["div {b:l}"];
    muldiv_div16_matches_native: div_cases(314, 16, false), none, |a| a.div(bx), ["div {b:x}"];
    muldiv_div32_matches_native: div_cases(315, 32, false), none, |a| a.div(ebx), ["div {b:e}"];
    muldiv_idiv8_matches_native: div_cases(316, 8, true), none, |a| a.idiv(bl), ["idiv {b:l}"];
    muldiv_idiv16_matches_native: div_cases(317, 16, true), none, |a| a.idiv(bx), ["idiv {b:x}"];
    muldiv_idiv32_matches_native: div_cases(318, 32, true), none, |a| a.idiv(ebx), ["idiv {b:e}"];
}

/// DIV/IDIV faults are precise: the frame holds the faulting instruction's own
/// address (a 386+ behaviour; the 8086 pushed the next IP), and nothing changed.
fn check_divide_error(setup: impl Fn(&mut CodeAssembler) -> AsmResult, ax_before: u16) {
    // Arrange
    let p = assemble(|a, _| {
        let mut div = a.create_label();
        setup(a)?;
        a.set_label(&mut div)?;
        a.div(bl)?;
        a.hlt()?;
        Ok([div])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert
    assert_eq!(
        (frame.vector, frame.cs, frame.ip),
        (0, CODE_SEG, p.ips[0]),
        "#DE frame"
    );
    assert_eq!(
        r16(&vm, reg::RAX),
        ax_before,
        "AX is unchanged by the fault"
    );
}

#[test]
fn muldiv_div_by_zero_pushes_faulting_ip() {
    check_divide_error(
        |a| {
            a.mov(ax, 5)?;
            a.xor(bl, bl)
        },
        5,
    );
}

#[test]
fn muldiv_div_quotient_overflow_pushes_faulting_ip() {
    // 0x1000 / 0x10 = 0x100 does not fit in AL.
    check_divide_error(
        |a| {
            a.mov(ax, 0x1000)?;
            a.mov(bl, 0x10)
        },
        0x1000,
    );
}

#[test]
fn muldiv_idiv_most_negative_by_minus_one_raises_de() {
    // Arrange: -32768 / -1 = 32768 does not fit in AX.
    let p = assemble(|a, _| {
        let mut idiv = a.create_label();
        a.mov(ax, 0x8000)?;
        a.cwd()?;
        a.mov(bx, -1)?;
        a.set_label(&mut idiv)?;
        a.idiv(bx)?;
        a.hlt()?;
        Ok([idiv])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert
    assert_eq!((frame.vector, frame.ip), (0, p.ips[0]));
}

// ================================================================================
// BCD: DAA DAS AAA AAS AAM AAD (SDM examples and pseudo-code)
// ================================================================================

/// SF, ZF and PF of a byte result.
fn szp(v: u8) -> u16 {
    let mut f = 0;
    if v & 0x80 != 0 {
        f |= SF;
    }
    if v == 0 {
        f |= ZF;
    }
    if v.count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

fn with_low_byte(c: &Case, v: u8) -> u32 {
    (c.r.eax & !0xFF) | u32::from(v)
}

fn with_low_word(c: &Case, v: u16) -> u32 {
    (c.r.eax & !0xFFFF) | u32::from(v)
}

/// DAA, transcribed from SDM vol. 2A "DAA—Decimal Adjust AL after Addition",
/// Operation. OF is undefined.
fn daa_model(c: &Case) -> Case {
    let old_al = c.r.eax as u8;
    let old_cf = c.flags & CF != 0;
    let af = old_al & 0x0F > 9 || c.flags & AF != 0;
    let low_adjusted = if af { old_al.wrapping_add(6) } else { old_al };
    // The first step's "CF := old_CF or carry" is always overwritten by the
    // second step (CF := 1 if old_AL > 99H or old_CF, else 0): a carry out of
    // AL + 6 needs old_AL >= FAH, which is above 99H anyway.
    let cf = old_al > 0x99 || old_cf;
    let result = if cf {
        low_adjusted.wrapping_add(0x60)
    } else {
        low_adjusted
    };
    bcd_result(c, with_low_byte(c, result), szp(result), af, cf)
}

/// DAS, transcribed from SDM vol. 2A "DAS—Decimal Adjust AL after Subtraction",
/// Operation. OF is undefined.
fn das_model(c: &Case) -> Case {
    let old_al = c.r.eax as u8;
    let old_cf = c.flags & CF != 0;
    let mut result = old_al;
    let mut cf = false;
    let af = old_al & 0x0F > 9 || c.flags & AF != 0;
    if af {
        let (v, borrow) = old_al.overflowing_sub(6);
        result = v;
        cf = old_cf || borrow;
    }
    if old_al > 0x99 || old_cf {
        result = result.wrapping_sub(0x60);
        cf = true;
    }
    bcd_result(c, with_low_byte(c, result), szp(result), af, cf)
}

/// AAA, from SDM vol. 2A "AAA—ASCII Adjust After Addition", Operation (the 286+
/// form: AX := AX + 106H). OF, SF, ZF, PF are undefined.
fn aaa_model(c: &Case) -> Case {
    let mut word = c.r.eax as u16;
    let adjust = word & 0x0F > 9 || c.flags & AF != 0;
    if adjust {
        word = word.wrapping_add(0x106);
    }
    word &= 0xFF0F;
    bcd_result(c, with_low_word(c, word), 0, adjust, adjust)
}

/// AAS, from SDM vol. 2A "AAS—ASCII Adjust AL After Subtraction", Operation:
/// AX := AX - 6; AH := AH - 1. OF, SF, ZF, PF are undefined.
fn aas_model(c: &Case) -> Case {
    let mut word = c.r.eax as u16;
    let adjust = word & 0x0F > 9 || c.flags & AF != 0;
    if adjust {
        word = word.wrapping_sub(6).wrapping_sub(0x100);
    }
    word &= 0xFF0F;
    bcd_result(c, with_low_word(c, word), 0, adjust, adjust)
}

/// AAM imm8, from SDM vol. 2A "AAM", Operation: AH := AL / imm8; AL := AL MOD
/// imm8. SF, ZF, PF follow AL; OF, AF, CF are undefined.
fn aam_model(base: u8) -> impl Fn(&Case) -> Case {
    move |c| {
        let low = c.r.eax as u8;
        let word = u16::from_le_bytes([low % base, low / base]);
        let mut out = *c;
        out.r.eax = with_low_word(c, word);
        out.flags = (c.flags & !(SF | ZF | PF)) | szp(low % base);
        out
    }
}

/// AAD imm8, from SDM vol. 2A "AAD", Operation: AL := (AL + AH * imm8) AND FFH;
/// AH := 0. SF, ZF, PF follow AL; OF, AF, CF are undefined.
fn aad_model(base: u8) -> impl Fn(&Case) -> Case {
    move |c| {
        let [low, high] = (c.r.eax as u16).to_le_bytes();
        let v = low.wrapping_add(high.wrapping_mul(base));
        let mut out = *c;
        out.r.eax = with_low_word(c, u16::from(v));
        out.flags = (c.flags & !(SF | ZF | PF)) | szp(v);
        out
    }
}

fn bcd_result(c: &Case, new_eax: u32, szp_flags: u16, af: bool, cf: bool) -> Case {
    let mut out = *c;
    out.r.eax = new_eax;
    out.flags = (c.flags & !(SF | ZF | PF | AF | CF))
        | szp_flags
        | if af { AF } else { 0 }
        | if cf { CF } else { 0 };
    out
}

/// Every AL with every AF/CF combination; AH and the other flags random.
fn bcd_cases(seed: u64) -> Vec<Case> {
    let mut rng = Lcg::new(seed);
    (0..1024u32)
        .map(|i| {
            let mut c = rng.case();
            c.r.eax = (c.r.eax & !0xFF) | (i & 0xFF);
            c.flags &= !(AF | CF);
            if i & 0x100 != 0 {
                c.flags |= AF;
            }
            if i & 0x200 != 0 {
                c.flags |= CF;
            }
            c
        })
        .collect()
}

#[test]
fn bcd_daa_all_inputs_follow_sdm_pseudocode() {
    let cases = bcd_cases(401);
    check_op("daa", &|a| a.daa(), &cases, daa_model, |_| ARITH & !OF);
}

#[test]
fn bcd_das_all_inputs_follow_sdm_pseudocode() {
    let cases = bcd_cases(402);
    check_op("das", &|a| a.das(), &cases, das_model, |_| ARITH & !OF);
}

#[test]
fn bcd_aaa_all_inputs_follow_sdm_pseudocode() {
    let cases = bcd_cases(403);
    check_op("aaa", &|a| a.aaa(), &cases, aaa_model, |_| AF | CF);
}

#[test]
fn bcd_aas_all_inputs_follow_sdm_pseudocode() {
    let cases = bcd_cases(404);
    check_op("aas", &|a| a.aas(), &cases, aas_model, |_| AF | CF);
}

#[test]
fn bcd_aam_bases_10_and_16_follow_sdm_pseudocode() {
    let cases = bcd_cases(405);
    check_op("aam 10", &|a| a.aam(10), &cases, aam_model(10), |_| {
        SF | ZF | PF
    });
    check_op("aam 16", &|a| a.aam(16), &cases, aam_model(16), |_| {
        SF | ZF | PF
    });
}

#[test]
fn bcd_aad_bases_10_and_7_follow_sdm_pseudocode() {
    let cases = bcd_cases(406);
    check_op("aad 10", &|a| a.aad(10), &cases, aad_model(10), |_| {
        SF | ZF | PF
    });
    check_op("aad 7", &|a| a.aad(7), &cases, aad_model(7), |_| {
        SF | ZF | PF
    });
}

#[test]
fn bcd_sdm_worked_examples_give_documented_results() {
    // Arrange: each step stores AX and FLAGS at DS:4*i.
    let store = |a: &mut CodeAssembler, i: i32| -> AsmResult {
        a.pushf()?;
        a.pop(word_ptr(4 * i + 2))?;
        a.mov(word_ptr(4 * i), ax)
    };
    let code = asm16(|a| {
        // SDM vol. 2A DAA example: 79H + 35H = AEH; DAA gives 14H, CF=1, AF=1.
        a.mov(ax, 0x0079)?;
        a.mov(bl, 0x35)?;
        a.add(al, bl)?;
        store(a, 0)?;
        a.daa()?;
        store(a, 1)?;
        // SDM vol. 2A DAS example: 35H - 47H = EEH; DAS gives 88H, CF=1, AF=1.
        a.mov(ax, 0x0035)?;
        a.mov(bl, 0x47)?;
        a.sub(al, bl)?;
        store(a, 2)?;
        a.das()?;
        store(a, 3)?;
        // Hand-derived from the AAA pseudo-code: '8' + '9' = 71H with AF=1, so
        // AX := AX + 106H = 0177H, AL := AL AND 0FH: AX = 0107H ("17"), CF=AF=1.
        a.mov(ax, 0x0038)?;
        a.add(al, 0x39)?;
        a.aaa()?;
        store(a, 4)?;
        // AAS pseudo-code: '3' - '5' = FEH with AF=1: AX := 00FEH - 6 = 00F8H,
        // AH := AH - 1 = FFH, AL := 08H: AX = FF08H ("-2" as borrow, 8), CF=AF=1.
        a.mov(ax, 0x0033)?;
        a.sub(al, 0x35)?;
        a.aas()?;
        store(a, 5)?;
        // AAM pseudo-code: 7 * 9 = 63 = 3FH; AH := 3FH / 10 = 6, AL := 3.
        a.mov(al, 7)?;
        a.mov(bl, 9)?;
        a.mul(bl)?;
        a.aam(10)?;
        store(a, 6)?;
        // AAD pseudo-code: AX = 0607H ("67"): AL := 7 + 6 * 10 = 43H, AH := 0.
        a.mov(ax, 0x0607)?;
        a.aad(10)?;
        store(a, 7)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert: (AX, the flags the SDM defines, their values).
    let step = |i: u16| (mem16(&vm, DATA_SEG, 4 * i), mem16(&vm, DATA_SEG, 4 * i + 2));
    let expect = [
        // ADD: AEH, EFLAGS(OSZAPC) = 110000 per the SDM.
        (0x00AE, ARITH, SF | OF),
        (0x0014, ARITH & !OF, AF | PF | CF),
        // SUB: EEH, OSZAPC = 010111 per the SDM.
        (0x00EE, ARITH, SF | AF | PF | CF),
        (0x0088, ARITH & !OF, SF | AF | PF | CF),
        (0x0107, AF | CF, AF | CF),
        (0xFF08, AF | CF, AF | CF),
        (0x0603, SF | ZF | PF, PF),
        (0x0043, SF | ZF | PF, 0),
    ];
    for (i, (ax_want, mask, flags_want)) in expect.into_iter().enumerate() {
        let (ax_got, flags_got) = step(i as u16);
        assert_eq!(ax_got, ax_want, "step {i}: AX");
        assert_eq!(
            flags_got & mask,
            flags_want,
            "step {i}: flags under {mask:#x}"
        );
    }
}

// ================================================================================
// Bit instructions, BSWAP, XADD, CMPXCHG, MOVZX/MOVSX, SETcc, CMOVcc, Jcc
// ================================================================================

#[cfg(target_arch = "x86_64")]
native_tests! {
    bits_bt16_register_matches_native: random_cases(501), bit_test,
        |a| a.bt(ax, bx), ["bt ax, {b:x}"];
    bits_bt32_register_matches_native: random_cases(502), bit_test,
        |a| a.bt(eax, ebx), ["bt eax, {b:e}"];
    bits_bts16_register_matches_native: random_cases(503), bit_test,
        |a| a.bts(ax, bx), ["bts ax, {b:x}"];
    bits_bts32_register_matches_native: random_cases(504), bit_test,
        |a| a.bts(eax, ebx), ["bts eax, {b:e}"];
    bits_btr16_register_matches_native: random_cases(505), bit_test,
        |a| a.btr(ax, bx), ["btr ax, {b:x}"];
    bits_btr32_register_matches_native: random_cases(506), bit_test,
        |a| a.btr(eax, ebx), ["btr eax, {b:e}"];
    bits_btc16_register_matches_native: random_cases(507), bit_test,
        |a| a.btc(ax, bx), ["btc ax, {b:x}"];
    bits_btc32_register_matches_native: random_cases(508), bit_test,
        |a| a.btc(eax, ebx), ["btc eax, {b:e}"];
    // A register bit offset addresses memory beyond the operand, signed (SDM vol.
    // 2A, BT: "Bit(BitBase, BitOffset)", Figure 3-2).
    bits_bt16_memory_offset_beyond_operand_matches_native: bit_offset_cases(509), bit_test,
        |a| a.bt(word_ptr(si + MEM_OPERAND), bx), ["bt word ptr [{m}], {b:x}"];
    bits_bts32_memory_offset_beyond_operand_matches_native: bit_offset_cases(510), bit_test,
        |a| a.bts(dword_ptr(si + MEM_OPERAND), ebx), ["bts dword ptr [{m}], {b:e}"];
    bits_btr16_memory_offset_beyond_operand_matches_native: bit_offset_cases(511), bit_test,
        |a| a.btr(word_ptr(si + MEM_OPERAND), bx), ["btr word ptr [{m}], {b:x}"];
    bits_btc32_memory_offset_beyond_operand_matches_native: bit_offset_cases(512), bit_test,
        |a| a.btc(dword_ptr(si + MEM_OPERAND), ebx), ["btc dword ptr [{m}], {b:e}"];
    // An immediate offset is taken modulo the operand size.
    bits_bts16_memory_imm_offset_wraps_matches_native: random_cases(513), bit_test,
        |a| a.bts(word_ptr(si + MEM_OPERAND), 21), ["bts word ptr [{m}], 21"];
    bits_btc32_register_imm_offset_wraps_matches_native: random_cases(514), bit_test,
        |a| a.btc(ecx, 45), ["btc ecx, 45"];
    bits_bsf16_matches_native: nonzero_source_cases(515), zero_only,
        |a| a.bsf(ax, bx), ["bsf ax, {b:x}"];
    bits_bsf32_matches_native: nonzero_source_cases(516), zero_only,
        |a| a.bsf(eax, ebx), ["bsf eax, {b:e}"];
    bits_bsr16_matches_native: nonzero_source_cases(517), zero_only,
        |a| a.bsr(ax, bx), ["bsr ax, {b:x}"];
    bits_bsr32_matches_native: nonzero_source_cases(518), zero_only,
        |a| a.bsr(eax, ebx), ["bsr eax, {b:e}"];
    bits_bswap32_matches_native: random_cases(519), all, |a| a.bswap(ebx), ["bswap {b:e}"];
    bits_xadd8_matches_native: random_cases(520), all, |a| a.xadd(al, bl), ["xadd al, {b:l}"];
    bits_xadd16_matches_native: random_cases(521), all, |a| a.xadd(ax, bx), ["xadd ax, {b:x}"];
    bits_xadd32_matches_native: random_cases(522), all, |a| a.xadd(eax, ebx), ["xadd eax, {b:e}"];
    bits_xadd16_memory_matches_native: random_cases(523), all,
        |a| a.xadd(word_ptr(si + MEM_OPERAND), cx), ["xadd word ptr [{m}], cx"];
    bits_cmpxchg8_matches_native: compare_equal_cases(524), all,
        |a| a.cmpxchg(bl, cl), ["cmpxchg {b:l}, cl"];
    bits_cmpxchg16_matches_native: compare_equal_cases(525), all,
        |a| a.cmpxchg(bx, cx), ["cmpxchg {b:x}, cx"];
    bits_cmpxchg32_matches_native: compare_equal_cases(526), all,
        |a| a.cmpxchg(ebx, ecx), ["cmpxchg {b:e}, ecx"];
    bits_cmpxchg8b_matches_native: compare_equal_cases(527), all,
        |a| a.cmpxchg8b(qword_ptr(si + MEM_OPERAND)),
        ["xchg {b}, rbx", "cmpxchg8b qword ptr [{m}]", "xchg {b}, rbx"];
    bits_movzx16_from8_matches_native: random_cases(528), all,
        |a| a.movzx(ax, bl), ["movzx ax, {b:l}"];
    bits_movzx32_from_high8_matches_native: random_cases(529), all,
        |a| a.movzx(eax, ch), ["movzx eax, ch"];
    bits_movzx32_from16_matches_native: random_cases(530), all,
        |a| a.movzx(edx, bx), ["movzx edx, {b:x}"];
    bits_movzx32_from_memory16_matches_native: random_cases(531), all,
        |a| a.movzx(ecx, word_ptr(si + MEM_OPERAND)), ["movzx ecx, word ptr [{m}]"];
    bits_movsx16_from8_matches_native: random_cases(532), all,
        |a| a.movsx(ax, bl), ["movsx ax, {b:l}"];
    bits_movsx32_from8_matches_native: random_cases(533), all,
        |a| a.movsx(eax, cl), ["movsx eax, cl"];
    bits_movsx32_from16_matches_native: random_cases(534), all,
        |a| a.movsx(edx, bx), ["movsx edx, {b:x}"];
    bits_movsx16_from_memory8_matches_native: random_cases(535), all,
        |a| a.movsx(cx, byte_ptr(si + MEM_OPERAND)), ["movsx cx, byte ptr [{m}]"];
}

// SETcc, four conditions per case run (AL, AH, CL, CH), over all flag combinations.
#[cfg(target_arch = "x86_64")]
native_tests! {
    cond_seto_setno_setb_setae_match_native: all_flag_cases(601), all,
        |a| { a.seto(al)?; a.setno(ah)?; a.setb(cl)?; a.setae(ch) },
        ["seto al", "setno ah", "setb cl", "setae ch"];
    cond_sete_setne_setbe_seta_match_native: all_flag_cases(602), all,
        |a| { a.sete(al)?; a.setne(ah)?; a.setbe(cl)?; a.seta(ch) },
        ["sete al", "setne ah", "setbe cl", "seta ch"];
    cond_sets_setns_setp_setnp_match_native: all_flag_cases(603), all,
        |a| { a.sets(al)?; a.setns(ah)?; a.setp(cl)?; a.setnp(ch) },
        ["sets al", "setns ah", "setp cl", "setnp ch"];
    cond_setl_setge_setle_setg_match_native: all_flag_cases(604), all,
        |a| { a.setl(al)?; a.setge(ah)?; a.setle(cl)?; a.setg(ch) },
        ["setl al", "setge ah", "setle cl", "setg ch"];
}

// CMOVcc (32- and 16-bit) and Jcc, one condition per test.
#[cfg(target_arch = "x86_64")]
macro_rules! condition_tests {
    ($($cmov_test:ident, $jcc_test:ident, $cmov:ident, $jcc:ident, $cmov_32:literal, $cmov_16:literal, $setcc:literal;)+) => {
        native_tests! {
            $(
                $cmov_test: all_flag_cases(610), all,
                    |a| { a.$cmov(eax, ebx)?; a.$cmov(dx, cx) },
                    [$cmov_32, $cmov_16];
                $jcc_test: all_flag_cases(611), all,
                    |a| jcc_op(a, |a, l| a.$jcc(l)),
                    [$setcc];
            )+
        }
    };
}

#[cfg(target_arch = "x86_64")]
condition_tests! {
    cond_cmovo_matches_native, cond_jo_matches_native_setcc, cmovo, jo,
        "cmovo eax, {b:e}", "cmovo dx, cx", "seto al";
    cond_cmovno_matches_native, cond_jno_matches_native_setcc, cmovno, jno,
        "cmovno eax, {b:e}", "cmovno dx, cx", "setno al";
    cond_cmovb_matches_native, cond_jb_matches_native_setcc, cmovb, jb,
        "cmovb eax, {b:e}", "cmovb dx, cx", "setb al";
    cond_cmovae_matches_native, cond_jae_matches_native_setcc, cmovae, jae,
        "cmovae eax, {b:e}", "cmovae dx, cx", "setae al";
    cond_cmove_matches_native, cond_je_matches_native_setcc, cmove, je,
        "cmove eax, {b:e}", "cmove dx, cx", "sete al";
    cond_cmovne_matches_native, cond_jne_matches_native_setcc, cmovne, jne,
        "cmovne eax, {b:e}", "cmovne dx, cx", "setne al";
    cond_cmovbe_matches_native, cond_jbe_matches_native_setcc, cmovbe, jbe,
        "cmovbe eax, {b:e}", "cmovbe dx, cx", "setbe al";
    cond_cmova_matches_native, cond_ja_matches_native_setcc, cmova, ja,
        "cmova eax, {b:e}", "cmova dx, cx", "seta al";
    cond_cmovs_matches_native, cond_js_matches_native_setcc, cmovs, js,
        "cmovs eax, {b:e}", "cmovs dx, cx", "sets al";
    cond_cmovns_matches_native, cond_jns_matches_native_setcc, cmovns, jns,
        "cmovns eax, {b:e}", "cmovns dx, cx", "setns al";
    cond_cmovp_matches_native, cond_jp_matches_native_setcc, cmovp, jp,
        "cmovp eax, {b:e}", "cmovp dx, cx", "setp al";
    cond_cmovnp_matches_native, cond_jnp_matches_native_setcc, cmovnp, jnp,
        "cmovnp eax, {b:e}", "cmovnp dx, cx", "setnp al";
    cond_cmovl_matches_native, cond_jl_matches_native_setcc, cmovl, jl,
        "cmovl eax, {b:e}", "cmovl dx, cx", "setl al";
    cond_cmovge_matches_native, cond_jge_matches_native_setcc, cmovge, jge,
        "cmovge eax, {b:e}", "cmovge dx, cx", "setge al";
    cond_cmovle_matches_native, cond_jle_matches_native_setcc, cmovle, jle,
        "cmovle eax, {b:e}", "cmovle dx, cx", "setle al";
    cond_cmovg_matches_native, cond_jg_matches_native_setcc, cmovg, jg,
        "cmovg eax, {b:e}", "cmovg dx, cx", "setg al";
}

#[test]
fn bits_bsf_bsr_zero_source_set_zf() {
    // Arrange: SDM vol. 2A BSF/BSR: a zero source sets ZF (the destination is
    // undefined, so it is not checked).
    let code = asm16(|a| {
        a.xor(bx, bx)?;
        a.bsf(ax, bx)?;
        a.pushf()?;
        a.pop(word_ptr(0))?;
        a.xor(ebx, ebx)?;
        a.bsr(eax, ebx)?;
        a.pushf()?;
        a.pop(word_ptr(2))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_ne!(mem16(&vm, DATA_SEG, 0) & ZF, 0, "BSF ZF");
    assert_ne!(mem16(&vm, DATA_SEG, 2) & ZF, 0, "BSR ZF");
}

/// LAHF: AH := SF:ZF:0:AF:0:PF:1:CF (SDM vol. 2A, LAHF).
fn lahf_model(c: &Case) -> Case {
    let mut out = *c;
    let high = (c.flags & (SF | ZF | AF | PF | CF)) as u32 | 0x02;
    out.r.eax = (c.r.eax & !0xFF00) | (high << 8);
    out
}

/// SAHF: SF, ZF, AF, PF, CF := AH bits 7, 6, 4, 2, 0 (SDM vol. 2A, SAHF).
fn sahf_model(c: &Case) -> Case {
    let mut out = *c;
    let high = (c.r.eax >> 8) as u16 & 0xFF;
    let bits = SF | ZF | AF | PF | CF;
    out.flags = (c.flags & !bits) | (high & bits);
    out
}

#[test]
fn alu_lahf_stores_status_flags_in_ah() {
    let cases = all_flag_cases(620);
    check_op("lahf", &|a| a.lahf(), &cases, lahf_model, all);
}

#[test]
fn alu_sahf_loads_status_flags_from_ah() {
    let cases = random_cases(621);
    check_op("sahf", &|a| a.sahf(), &cases, sahf_model, all);
}

// ================================================================================
// String instructions: MOVS CMPS SCAS LODS STOS, REP/REPE/REPNE, DF, overrides
// ================================================================================

fn pattern(len: usize, mul: usize, add: usize) -> Vec<u8> {
    (0..len).map(|i| (i * mul + add) as u8).collect()
}

#[test]
fn string_rep_movsb_forward_copies_and_keeps_ecx_high_word() {
    // Arrange: a 16-bit REP counts in CX only, so ECX's high word survives.
    let src = pattern(37, 7, 3);
    let code = asm16(|a| {
        a.cld()?;
        a.mov(si, 0x100)?;
        a.mov(di, 0x200)?;
        a.mov(ecx, 0xABCD_0000u32 | 37)?;
        a.rep().movsb()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &src);
    load(&mut vm, EXTRA_SEG, 0x200, &[0xEE; 38]);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(bytes(&vm, EXTRA_SEG, 0x200, 37), src);
    assert_eq!(mem8(&vm, EXTRA_SEG, 0x225), 0xEE, "one byte too many");
    assert_eq!(
        (r16(&vm, reg::RSI), r16(&vm, reg::RDI), r32(&vm, reg::RCX)),
        (0x125, 0x225, 0xABCD_0000)
    );
}

#[test]
fn string_rep_movsw_with_df_set_copies_downward() {
    // Arrange: nine words, copied from the last one down.
    let words: Vec<u16> = (0..9).map(|i| 0x1000 + i * 0x111).collect();
    let src: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let code = asm16(|a| {
        a.std()?;
        a.mov(si, 0x100 + 2 * 8)?;
        a.mov(di, 0x300 + 2 * 8)?;
        a.mov(cx, 9)?;
        a.rep().movsw()?;
        a.cld()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &src);
    load(&mut vm, EXTRA_SEG, 0x2FC, &[0xEE; 24]);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(bytes(&vm, EXTRA_SEG, 0x300, 18), src);
    assert_eq!(
        mem16(&vm, EXTRA_SEG, 0x2FE),
        0xEEEE,
        "copied below the start"
    );
    assert_eq!(
        (r16(&vm, reg::RSI), r16(&vm, reg::RDI), r16(&vm, reg::RCX)),
        (0x0FE, 0x2FE, 0)
    );
}

#[test]
fn string_rep_movsd_fs_override_reads_source_from_fs() {
    // Arrange: different data at DS:10 and FS:10; only FS must be read.
    let from_fs = pattern(24, 11, 1);
    let from_ds = pattern(24, 3, 0x80);
    let code = asm16(|a| {
        a.mov(ax, 0x4000)?;
        a.mov(fs, ax)?;
        a.cld()?;
        a.mov(si, 0x10)?;
        a.mov(di, 0x40)?;
        a.mov(cx, 6)?;
        a.add_instruction(Instruction::with_movsd(
            16,
            Register::FS,
            RepPrefixKind::Repe,
        )?)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, 0x4000, 0x10, &from_fs);
    load(&mut vm, DATA_SEG, 0x10, &from_ds);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(bytes(&vm, EXTRA_SEG, 0x40, 24), from_fs);
    assert_eq!((r16(&vm, reg::RSI), r16(&vm, reg::RDI)), (0x28, 0x58));
}

#[test]
fn string_rep_movsb_address32_uses_esi_edi_ecx() {
    // Arrange: a 0x67 prefix makes REP MOVSB use ESI, EDI and ECX.
    let src = pattern(5, 5, 9);
    let code = asm16(|a| {
        a.cld()?;
        a.mov(esi, 0x100)?;
        a.mov(edi, 0x200)?;
        a.mov(ecx, 5)?;
        a.add_instruction(Instruction::with_movsb(
            32,
            Register::None,
            RepPrefixKind::Repe,
        )?)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &src);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(bytes(&vm, EXTRA_SEG, 0x200, 5), src);
    assert_eq!(
        (r32(&vm, reg::RSI), r32(&vm, reg::RDI), r32(&vm, reg::RCX)),
        (0x105, 0x205, 0)
    );
}

#[test]
fn string_rep_stos_fills_bytes_words_dwords_then_backward() {
    // Arrange
    let code = asm16(|a| {
        a.cld()?;
        a.mov(di, 0x500)?;
        a.mov(al, 0x11)?;
        a.mov(cx, 5)?;
        a.rep().stosb()?;
        a.mov(ax, 0x2233)?;
        a.mov(cx, 3)?;
        a.rep().stosw()?;
        a.mov(eax, 0x4455_6677)?;
        a.mov(cx, 2)?;
        a.rep().stosd()?;
        a.std()?;
        a.mov(al, 0x99)?;
        a.stosb()?;
        a.cld()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    let mut want = vec![0x11; 5];
    want.extend([0x33, 0x22].repeat(3));
    want.extend([0x77, 0x66, 0x55, 0x44].repeat(2));
    want.push(0x99);
    assert_eq!(bytes(&vm, EXTRA_SEG, 0x500, want.len()), want);
    assert_eq!(r16(&vm, reg::RDI), 0x512);
}

#[test]
fn string_lods_backward_sum_and_forward_dword_word() {
    // Arrange
    let table = pattern(16, 17, 1);
    let code = asm16(|a| {
        let mut l = a.create_label();
        a.std()?;
        a.mov(si, 0x10F)?;
        a.mov(cx, 16)?;
        a.xor(bx, bx)?;
        a.xor(ah, ah)?;
        a.set_label(&mut l)?;
        a.lodsb()?;
        a.add(bx, ax)?;
        a.loop_(l)?;
        a.mov(word_ptr(0x20), si)?;
        a.cld()?;
        a.mov(si, 0x200)?;
        a.lodsd()?;
        a.mov(edx, eax)?;
        a.lodsw()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &table);
    load(&mut vm, DATA_SEG, 0x200, &[1, 2, 3, 4, 5, 6]);
    // Act
    run_to_halt(&mut vm);
    // Assert
    let sum: u16 = table.iter().map(|&b| u16::from(b)).sum();
    assert_eq!(r16(&vm, reg::RBX), sum);
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x20),
        0x0FF,
        "SI after the backward loop"
    );
    assert_eq!(r32(&vm, reg::RDX), 0x0403_0201);
    assert_eq!(r16(&vm, reg::RAX), 0x0605);
    assert_eq!(r16(&vm, reg::RSI), 0x206);
}

#[test]
fn string_repe_cmpsb_stops_after_first_difference() {
    // Arrange: equal buffers except at index 23, where DS:SI < ES:DI.
    let left = pattern(40, 1, 0x30);
    let mut right = left.clone();
    let mut left_changed = left.clone();
    left_changed[23] = 0x10;
    right[23] = 0x20;
    let code = asm16(|a| {
        a.cld()?;
        a.mov(si, 0x100)?;
        a.mov(di, 0x100)?;
        a.mov(cx, 40)?;
        a.repe().cmpsb()?;
        a.pushf()?;
        a.pop(word_ptr(0x20))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &left_changed);
    load(&mut vm, EXTRA_SEG, 0x100, &right);
    // Act
    run_to_halt(&mut vm);
    // Assert: 24 comparisons; the last is 10H - 20H = F0H.
    let stop = left_changed
        .iter()
        .zip(&right)
        .position(|(l, r)| l != r)
        .expect("buffers differ") as u16;
    assert_eq!(r16(&vm, reg::RCX), 40 - (stop + 1));
    assert_eq!(r16(&vm, reg::RSI), 0x100 + stop + 1);
    assert_eq!(r16(&vm, reg::RDI), 0x100 + stop + 1);
    let fl = mem16(&vm, DATA_SEG, 0x20);
    assert_eq!(fl & (ZF | CF | SF), CF | SF, "flags of CMP 10H, 20H");
}

#[test]
fn string_repe_cmpsw_equal_buffers_exhausts_count() {
    // Arrange
    let data = pattern(20, 9, 2);
    let code = asm16(|a| {
        a.cld()?;
        a.mov(si, 0x100)?;
        a.mov(di, 0x180)?;
        a.mov(cx, 10)?;
        a.repe().cmpsw()?;
        a.pushf()?;
        a.pop(word_ptr(0x20))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &data);
    load(&mut vm, EXTRA_SEG, 0x180, &data);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(
        (r16(&vm, reg::RCX), r16(&vm, reg::RSI), r16(&vm, reg::RDI)),
        (0, 0x114, 0x194)
    );
    assert_ne!(mem16(&vm, DATA_SEG, 0x20) & ZF, 0);
}

fn repne_scasb(haystack: &[u8], needle: u8) -> Vm {
    let len = haystack.len() as u32;
    let code = asm16(|a| {
        a.cld()?;
        a.mov(di, 0x100)?;
        a.mov(al, u32::from(needle))?;
        a.mov(cx, len)?;
        a.repne().scasb()?;
        a.pushf()?;
        a.pop(word_ptr(0x20))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, EXTRA_SEG, 0x100, haystack);
    run_to_halt(&mut vm);
    vm
}

#[test]
fn string_repne_scasb_finds_byte_and_stops_past_it() {
    // Arrange
    let text = b"hello, x86bt world";
    let pos = text.iter().position(|&b| b == b'x').expect("x is there") as u16;
    // Act
    let vm = repne_scasb(text, b'x');
    // Assert
    assert_eq!(r16(&vm, reg::RDI), 0x100 + pos + 1);
    assert_eq!(r16(&vm, reg::RCX), text.len() as u16 - pos - 1);
    assert_ne!(mem16(&vm, DATA_SEG, 0x20) & ZF, 0);
}

#[test]
fn string_repne_scasb_missing_byte_exhausts_count() {
    // Arrange
    let text = b"hello, x86bt world";
    // Act
    let vm = repne_scasb(text, b'Q');
    // Assert
    assert_eq!(r16(&vm, reg::RDI), 0x100 + text.len() as u16);
    assert_eq!(r16(&vm, reg::RCX), 0);
    assert_eq!(mem16(&vm, DATA_SEG, 0x20) & ZF, 0);
}

#[test]
fn string_repe_scasw_with_df_set_stops_at_mismatch() {
    // Arrange: eight words 0x1234 except index 2; scanned from index 7 down.
    let mut words = [0x1234u16; 8];
    words[2] = 0x4321;
    let data: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let code = asm16(|a| {
        a.std()?;
        a.mov(ax, 0x1234)?;
        a.mov(di, 0x100 + 2 * 7)?;
        a.mov(cx, 8)?;
        a.repe().scasw()?;
        a.pushf()?;
        a.pop(word_ptr(0x20))?;
        a.cld()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, EXTRA_SEG, 0x100, &data);
    // Act
    run_to_halt(&mut vm);
    // Assert: indexes 7..=2 compared (six), DI one word below index 2.
    assert_eq!((r16(&vm, reg::RCX), r16(&vm, reg::RDI)), (2, 0x102));
    assert_eq!(mem16(&vm, DATA_SEG, 0x20) & ZF, 0);
}

#[test]
fn string_dword_cmps_with_gs_override_and_scas_find_the_difference() {
    // Arrange: REPE CMPSD compares GS:SI (override on the source) with ES:DI and
    // stops after dword 5; REPNE SCASD then finds EAX = dword 3 of ES:0100.
    let left: Vec<u32> = (0..8).map(|i| 0x0101_0101 * (i + 1)).collect();
    let mut right = left.clone();
    right[5] = 0x0505_0506;
    let as_bytes = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|d| d.to_le_bytes()).collect() };
    let code = asm16(|a| {
        a.mov(ax, 0x4800)?;
        a.mov(gs, ax)?;
        a.cld()?;
        a.mov(si, 0x40)?;
        a.mov(di, 0x100)?;
        a.mov(cx, 8)?;
        a.add_instruction(Instruction::with_cmpsd(
            16,
            Register::GS,
            RepPrefixKind::Repe,
        )?)?;
        a.pushf()?;
        a.pop(word_ptr(0x20))?;
        a.mov(word_ptr(0x22), si)?;
        a.mov(word_ptr(0x24), cx)?;
        a.mov(eax, 0x0404_0404)?;
        a.mov(di, 0x100)?;
        a.mov(cx, 8)?;
        a.repne().scasd()?;
        a.pushf()?;
        a.pop(word_ptr(0x26))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, 0x4800, 0x40, &as_bytes(&left));
    load(&mut vm, DATA_SEG, 0x40, &[0; 32]);
    load(&mut vm, EXTRA_SEG, 0x100, &as_bytes(&right));
    // Act
    run_to_halt(&mut vm);
    // Assert: CMPSD ran six iterations; its last was 06060606h - 05050506h.
    assert_eq!(mem16(&vm, DATA_SEG, 0x22), 0x40 + 6 * 4, "SI after CMPSD");
    assert_eq!(mem16(&vm, DATA_SEG, 0x24), 2, "CX after CMPSD");
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x20) & (ZF | CF),
        0,
        "above, not equal"
    );
    // SCASD matched dword 3 on its fourth iteration.
    assert_eq!((r16(&vm, reg::RDI), r16(&vm, reg::RCX)), (0x110, 4));
    assert_ne!(mem16(&vm, DATA_SEG, 0x26) & ZF, 0);
}

#[test]
fn string_rep_with_cx_zero_changes_nothing() {
    // Arrange: XOR sets ZF, STC sets CF; a REP with CX=0 runs no iteration, so
    // neither registers, memory nor flags change.
    let code = asm16(|a| {
        a.cld()?;
        a.mov(si, 0x100)?;
        a.mov(di, 0x200)?;
        a.xor(cx, cx)?;
        a.stc()?;
        a.rep().movsb()?;
        a.repe().cmpsb()?;
        a.pushf()?;
        a.pop(word_ptr(0x20))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &[0x55; 4]);
    load(&mut vm, EXTRA_SEG, 0x200, &[0xEE; 4]);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!((r16(&vm, reg::RSI), r16(&vm, reg::RDI)), (0x100, 0x200));
    assert_eq!(bytes(&vm, EXTRA_SEG, 0x200, 4), [0xEE; 4]);
    assert_eq!(mem16(&vm, DATA_SEG, 0x20) & (ZF | CF), ZF | CF);
}

// ================================================================================
// Stack and control transfer
// ================================================================================

#[test]
fn stack_push_sp_pushes_value_before_decrement() {
    // Arrange: SDM vol. 2B PUSH: "pushes the value of the SP register as it
    // existed before the instruction was executed" (286 and later).
    let code = asm16(|a| {
        a.mov(sp, 0x1000)?;
        a.push(sp)?;
        a.pop(ax)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!((r16(&vm, reg::RAX), r16(&vm, reg::RSP)), (0x1000, 0x1000));
}

#[test]
fn stack_pop_sp_loads_the_popped_value() {
    // Arrange
    let code = asm16(|a| {
        a.mov(sp, 0x1000)?;
        a.push(0x1234)?;
        a.pop(sp)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RSP), 0x1234);
}

#[test]
fn stack_push_pop_memory_immediate_and_segment_operands() {
    // Arrange
    let code = asm16(|a| {
        a.push(word_ptr(0x10))?;
        a.pop(word_ptr(0x20))?;
        a.push(0x1234)?;
        a.push(-2)?;
        a.pop(ax)?;
        a.pop(bx)?;
        a.push(es)?;
        a.pop(fs)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x10, &0xCAFEu16.to_le_bytes());
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(mem16(&vm, DATA_SEG, 0x20), 0xCAFE);
    assert_eq!((r16(&vm, reg::RAX), r16(&vm, reg::RBX)), (0xFFFE, 0x1234));
    assert_eq!(vm.cpu.seg[sreg::FS].selector, EXTRA_SEG);
    assert_eq!(vm.cpu.seg[sreg::FS].base, phys(EXTRA_SEG, 0));
    assert_eq!(r16(&vm, reg::RSP), STACK_TOP);
}

#[test]
fn stack_pusha_popa_round_trip_and_popa_skips_sp() {
    // Arrange: SDM vol. 2B PUSHA: Temp := SP; push AX CX DX BX Temp BP SI DI.
    // The saved SP slot is then overwritten; POPA must discard it.
    let values = [
        0x1111u16, 0x2222, 0x3333, 0x4444, 0x2000, 0x6666, 0x7777, 0x8888,
    ];
    let code = asm16(|a| {
        a.mov(sp, 0x2000)?;
        a.mov(ax, 0x1111)?;
        a.mov(cx, 0x2222)?;
        a.mov(dx, 0x3333)?;
        a.mov(bx, 0x4444)?;
        a.mov(bp, 0x6666)?;
        a.mov(si, 0x7777)?;
        a.mov(di, 0x8888)?;
        a.pusha()?;
        a.mov(word_ptr(0x10), sp)?;
        a.mov(bp, sp)?;
        a.mov(word_ptr(bp + 6), 0x5555)?;
        for r in [ax, cx, dx, bx, si, di] {
            a.xor(r, r)?;
        }
        a.popa()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert: the image PUSHA left (AX at the top, DI at the bottom).
    assert_eq!(mem16(&vm, DATA_SEG, 0x10), 0x2000 - 16);
    let pushed: Vec<u16> = (0..8)
        .map(|i| mem16(&vm, STACK_SEG, 0x2000 - 2 - 2 * i))
        .collect();
    let mut want = values.to_vec();
    want[4] = 0x5555;
    assert_eq!(pushed, want, "AX CX DX BX SP BP SI DI, SP slot overwritten");
    let regs: Vec<u16> = [
        reg::RAX,
        reg::RCX,
        reg::RDX,
        reg::RBX,
        reg::RSP,
        reg::RBP,
        reg::RSI,
        reg::RDI,
    ]
    .into_iter()
    .map(|r| r16(&vm, r))
    .collect();
    assert_eq!(regs, values);
}

#[test]
fn stack_pushad_pushes_eight_dwords_with_original_esp() {
    // Arrange
    let code = asm16(|a| {
        a.mov(esp, 0x2000)?;
        a.mov(eax, 0xA0A0_0001u32)?;
        a.mov(ecx, 0xC0C0_0002u32)?;
        a.mov(edx, 0xD0D0_0003u32)?;
        a.mov(ebx, 0xB0B0_0004u32)?;
        a.mov(ebp, 0xBDBD_0005u32)?;
        a.mov(esi, 0x5151_0006)?;
        a.mov(edi, 0xD1D1_0007u32)?;
        a.pushad()?;
        a.mov(dword_ptr(0x10), esp)?;
        a.popad()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    let want = [
        0xA0A0_0001u32,
        0xC0C0_0002,
        0xD0D0_0003,
        0xB0B0_0004,
        0x2000,
        0xBDBD_0005,
        0x5151_0006,
        0xD1D1_0007,
    ];
    let pushed: Vec<u32> = (0..8)
        .map(|i| mem32(&vm, STACK_SEG, 0x2000 - 4 - 4 * i))
        .collect();
    assert_eq!(pushed, want);
    assert_eq!(mem32(&vm, DATA_SEG, 0x10), 0x2000 - 32);
    assert_eq!(
        (r32(&vm, reg::RSP), r32(&vm, reg::RAX)),
        (0x2000, 0xA0A0_0001)
    );
}

#[test]
fn stack_pushf_popf_round_trip_defined_bits() {
    // Arrange: in real mode on a 386+ POPF writes every flag but VM/RF/VIF/VIP;
    // bits 3, 5 and 15 read as 0 and bit 1 as 1 (SDM vol. 1 §3.4.3, Figure 3-8).
    // TF is left clear so no single-step trap follows.
    let code = asm16(|a| {
        a.push(0xFEFF)?;
        a.popf()?;
        a.pushf()?;
        a.pop(ax)?;
        a.push(0)?;
        a.popf()?;
        a.pushf()?;
        a.pop(bx)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RAX), 0x7ED7);
    assert_eq!(r16(&vm, reg::RBX), 0x0002);
}

#[test]
fn stack_enter_level0_and_leave_restore_frame() {
    // Arrange: ENTER 8,0 = push BP; BP := SP; SP -= 8 (SDM vol. 2A ENTER).
    let code = asm16(|a| {
        a.mov(sp, 0x2000)?;
        a.mov(bp, 0x1234)?;
        a.enter(8, 0)?;
        a.mov(word_ptr(0x10), sp)?;
        a.mov(word_ptr(0x12), bp)?;
        a.leave()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(mem16(&vm, DATA_SEG, 0x10), 0x1FF6, "SP inside the frame");
    assert_eq!(mem16(&vm, DATA_SEG, 0x12), 0x1FFE, "BP inside the frame");
    assert_eq!(mem16(&vm, STACK_SEG, 0x1FFE), 0x1234, "saved BP");
    assert_eq!((r16(&vm, reg::RSP), r16(&vm, reg::RBP)), (0x2000, 0x1234));
}

#[test]
fn stack_enter_level2_copies_outer_frame_pointer() {
    // Arrange: SDM vol. 2A ENTER Operation, 16-bit stack, nesting level 2:
    //   Push(BP); FrameTemp := SP;
    //   BP := BP - 2; Push([SS:BP]);   (level - 1 = one outer frame pointer)
    //   Push(FrameTemp); BP := FrameTemp; SP := SP - 6.
    let code = asm16(|a| {
        a.mov(sp, 0x2000)?;
        a.mov(bp, 0x3000)?;
        a.mov(word_ptr(bp - 2), 0xAAAA)?;
        a.enter(6, 2)?;
        a.mov(word_ptr(0x10), sp)?;
        a.mov(word_ptr(0x12), bp)?;
        a.leave()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(mem16(&vm, STACK_SEG, 0x1FFE), 0x3000, "old BP");
    assert_eq!(mem16(&vm, STACK_SEG, 0x1FFC), 0xAAAA, "outer frame pointer");
    assert_eq!(mem16(&vm, STACK_SEG, 0x1FFA), 0x1FFE, "FrameTemp");
    assert_eq!(mem16(&vm, DATA_SEG, 0x12), 0x1FFE, "BP = FrameTemp");
    assert_eq!(mem16(&vm, DATA_SEG, 0x10), 0x1FFA - 6, "SP below locals");
    assert_eq!((r16(&vm, reg::RSP), r16(&vm, reg::RBP)), (0x2000, 0x3000));
}

#[test]
fn control_near_call_ret_imm16_pops_arguments() {
    // Arrange
    let p = assemble(|a, _| {
        let mut f = a.create_label();
        let mut after = a.create_label();
        a.mov(sp, 0x2000)?;
        a.push(0x1111)?;
        a.push(0x2222)?;
        a.call(f)?;
        a.set_label(&mut after)?;
        a.mov(word_ptr(0x10), sp)?;
        a.hlt()?;
        a.set_label(&mut f)?;
        a.mov(bp, sp)?;
        a.mov(cx, word_ptr(bp))?;
        a.mov(ax, word_ptr(bp + 2))?;
        a.mov(bx, word_ptr(bp + 4))?;
        a.ret_1(4)?;
        Ok([after])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RCX), p.ips[0], "return address");
    assert_eq!((r16(&vm, reg::RAX), r16(&vm, reg::RBX)), (0x2222, 0x1111));
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x10),
        0x2000,
        "RET 4 dropped both words"
    );
}

#[test]
fn control_near_call_through_register_and_memory_reaches_target() {
    // Arrange
    let p = assemble(|a, [target]| {
        let mut f = a.create_label();
        a.xor(dx, dx)?;
        a.mov(bx, u32::from(target))?;
        a.call(bx)?;
        a.mov(word_ptr(0x30), u32::from(target))?;
        a.call(word_ptr(0x30))?;
        a.hlt()?;
        a.set_label(&mut f)?;
        a.add(dx, 0x101)?;
        a.ret()?;
        Ok([f])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RDX), 0x202);
    assert_eq!(r16(&vm, reg::RSP), STACK_TOP);
}

#[test]
fn control_far_call_retf_switches_cs_and_returns() {
    // Arrange: FAR_SEG:0000 stores CS and returns; FAR_SEG:0020 reads its frame
    // and returns with RETF 2, dropping one argument word.
    let far0 = asm16(|a| {
        a.mov(ax, cs)?;
        a.retf()
    });
    let far20 = asm16(|a| {
        a.mov(bp, sp)?;
        a.mov(si, word_ptr(bp))?;
        a.mov(cx, word_ptr(bp + 2))?;
        a.mov(dx, word_ptr(bp + 4))?;
        a.retf_1(2)
    });
    let p = assemble(|a, _| {
        let mut after = a.create_label();
        a.push(0x7777)?;
        a.call_far(FAR_SEG, 0x20)?;
        a.set_label(&mut after)?;
        a.mov(word_ptr(0x10), sp)?;
        a.mov(word_ptr(0x40), 0)?;
        a.mov(word_ptr(0x42), u32::from(FAR_SEG))?;
        a.call(dword_ptr(0x40))?;
        a.mov(bx, cs)?;
        a.hlt()?;
        Ok([after])
    });
    let mut vm = flat_vm(&p.code);
    load(&mut vm, FAR_SEG, 0, &far0);
    load(&mut vm, FAR_SEG, 0x20, &far20);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RSI), p.ips[0], "pushed IP");
    assert_eq!(r16(&vm, reg::RCX), CODE_SEG, "pushed CS");
    assert_eq!(r16(&vm, reg::RDX), 0x7777, "argument");
    assert_eq!(mem16(&vm, DATA_SEG, 0x10), STACK_TOP, "RETF 2 dropped it");
    assert_eq!(r16(&vm, reg::RAX), FAR_SEG, "CS inside the far routine");
    assert_eq!(r16(&vm, reg::RBX), CODE_SEG, "CS after RETF");
    assert_eq!(r16(&vm, reg::RSP), STACK_TOP);
}

#[test]
fn control_jmp_far_loads_cs_and_ip() {
    // Arrange: jump to FAR_SEG:0040, which records CS and jumps back far.
    let p = assemble(|a, _| {
        let mut back = a.create_label();
        a.jmp_far(FAR_SEG, 0x40)?;
        a.set_label(&mut back)?;
        a.mov(bx, cs)?;
        a.hlt()?;
        Ok([back])
    });
    let far = asm16(|a| {
        a.mov(ax, cs)?;
        a.jmp_far(CODE_SEG, u32::from(p.ips[0]))
    });
    let mut vm = flat_vm(&p.code);
    load(&mut vm, FAR_SEG, 0x40, &far);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(
        (r16(&vm, reg::RAX), r16(&vm, reg::RBX)),
        (FAR_SEG, CODE_SEG)
    );
    assert_eq!(vm.cpu.seg[sreg::CS].base, phys(CODE_SEG, 0));
}

#[test]
fn control_loop_counts_cx_down_including_zero_start() {
    // Arrange: LOOP decrements first, so CX=0 runs 65536 times.
    let code = asm16(|a| {
        let mut l1 = a.create_label();
        let mut l2 = a.create_label();
        a.mov(cx, 5)?;
        a.xor(bx, bx)?;
        a.set_label(&mut l1)?;
        a.inc(bx)?;
        a.loop_(l1)?;
        a.xor(cx, cx)?;
        a.xor(edx, edx)?;
        a.set_label(&mut l2)?;
        a.inc(edx)?;
        a.loop_(l2)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RBX), 5);
    assert_eq!(r32(&vm, reg::RDX), 0x1_0000);
    assert_eq!(r16(&vm, reg::RCX), 0);
}

/// Scans DS:0100 with `inc si; cmp byte [si], key; LOOPcc` from CX=10; returns
/// (SI, CX, FLAGS).
fn loop_scan(
    data: &[u8],
    key: u8,
    loopcc: fn(&mut CodeAssembler, CodeLabel) -> AsmResult,
) -> (u16, u16, u16) {
    let code = asm16(|a| {
        let mut l = a.create_label();
        a.mov(si, 0xFF)?;
        a.mov(cx, 10)?;
        a.set_label(&mut l)?;
        a.inc(si)?;
        a.cmp(byte_ptr(si), u32::from(key))?;
        loopcc(a, l)?;
        a.pushf()?;
        a.pop(word_ptr(0x20))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, data);
    run_to_halt(&mut vm);
    (
        r16(&vm, reg::RSI),
        r16(&vm, reg::RCX),
        mem16(&vm, DATA_SEG, 0x20),
    )
}

#[test]
fn control_loope_stops_at_first_unequal_element() {
    // Arrange
    let data = [7, 7, 7, 7, 3, 7, 7, 7, 7, 7];
    // Act
    let (si_end, cx_end, fl) = loop_scan(&data, 7, |a, l| a.loope(l));
    // Assert: index 4 is the fifth comparison.
    assert_eq!((si_end, cx_end, fl & ZF), (0x104, 5, 0));
}

#[test]
fn control_loope_all_equal_runs_out_of_count() {
    // Act
    let (si_end, cx_end, fl) = loop_scan(&[7; 10], 7, |a, l| a.loope(l));
    // Assert
    assert_eq!((si_end, cx_end, fl & ZF), (0x109, 0, ZF));
}

#[test]
fn control_loopne_stops_at_first_match() {
    // Arrange
    let data = [1, 2, 3, 9, 4, 5, 6, 7, 8, 9];
    // Act
    let (si_end, cx_end, fl) = loop_scan(&data, 9, |a, l| a.loopne(l));
    // Assert
    assert_eq!((si_end, cx_end, fl & ZF), (0x103, 6, ZF));
}

#[test]
fn control_jcxz_and_jecxz_test_the_whole_counter() {
    // Arrange: JCXZ jumps on CX=0; with CL=0 but CH set it must not; JECXZ looks
    // at all of ECX.
    let code = asm16(|a| {
        let mut t1 = a.create_label();
        let mut t2 = a.create_label();
        let mut t3 = a.create_label();
        let mut n2 = a.create_label();
        let mut n3 = a.create_label();
        a.xor(cx, cx)?;
        a.mov(al, 0xBB)?;
        a.jcxz(t1)?;
        a.mov(al, 0xEE)?;
        a.set_label(&mut t1)?;
        a.mov(cx, 0x100)?;
        a.jcxz(t2)?;
        a.mov(bl, 2)?;
        a.jmp(n2)?;
        a.set_label(&mut t2)?;
        a.mov(bl, 0xEE)?;
        a.set_label(&mut n2)?;
        a.mov(ecx, 0x1_0000)?;
        a.jecxz(t3)?;
        a.mov(dl, 3)?;
        a.jmp(n3)?;
        a.set_label(&mut t3)?;
        a.mov(dl, 0xEE)?;
        a.set_label(&mut n3)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(vm.cpu.gpr[reg::RAX] as u8, 0xBB, "JCXZ with CX=0 jumps");
    assert_eq!(
        vm.cpu.gpr[reg::RBX] as u8,
        2,
        "JCXZ with CX=100H falls through"
    );
    assert_eq!(
        vm.cpu.gpr[reg::RDX] as u8,
        3,
        "JECXZ with ECX=10000H falls through"
    );
}

#[test]
fn control_xlat_reads_table_at_bx_and_honours_override() {
    // Arrange
    let table = pattern(256, 13, 5);
    let other: Vec<u8> = table.iter().map(|b| !b).collect();
    let code = asm16(|a| {
        a.mov(bx, 0x300)?;
        for (i, index) in [0x00, 0x7F, 0xFF].into_iter().enumerate() {
            a.mov(al, index)?;
            a.xlatb()?;
            a.mov(byte_ptr(0x10 + i as i32), al)?;
        }
        a.mov(al, 0x42)?;
        a.db(&[0x26, 0xD7])?; // ES: XLAT
        a.mov(byte_ptr(0x13), al)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x300, &table);
    load(&mut vm, EXTRA_SEG, 0x300, &other);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(
        bytes(&vm, DATA_SEG, 0x10, 4),
        [table[0], table[0x7F], table[0xFF], other[0x42]]
    );
}

#[test]
fn system_lds_les_lfs_lgs_lss_load_far_pointers() {
    // Arrange: five (offset, segment) pointers at DS:0050.
    let pointers: [(u16, u16); 5] = [
        (0x1234, 0x4000),
        (0x0800, 0x7000),
        (0x5678, 0x5000),
        (0x9ABC, 0x6000),
        (0xBEEF, 0x6800),
    ];
    let image: Vec<u8> = pointers
        .iter()
        .flat_map(|(o, s)| [o.to_le_bytes(), s.to_le_bytes()].concat())
        .collect();
    let code = asm16(|a| {
        a.les(di, dword_ptr(0x50))?;
        a.lss(sp, dword_ptr(0x54))?;
        a.lfs(ax, dword_ptr(0x58))?;
        a.lgs(cx, dword_ptr(0x5C))?;
        a.lds(bx, dword_ptr(0x60))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x50, &image);
    // Act
    run_to_halt(&mut vm);
    // Assert
    let got = [
        (reg::RDI, sreg::ES),
        (reg::RSP, sreg::SS),
        (reg::RAX, sreg::FS),
        (reg::RCX, sreg::GS),
        (reg::RBX, sreg::DS),
    ]
    .map(|(r, s)| (r16(&vm, r), vm.cpu.seg[s].selector, vm.cpu.seg[s].base));
    let want = pointers.map(|(o, s)| (o, s, phys(s, 0)));
    assert_eq!(got, want);
}

// ================================================================================
// Software interrupts and faults
// ================================================================================

#[test]
fn interrupt_int_n_iret_through_guest_installed_ivt_entry() {
    // Arrange: the guest points IVT[40h] at its handler, which records its own
    // FLAGS and the frame, changes BX and CF, and returns with IRET.
    let p = assemble(|a, [handler_ip, _]| {
        let mut handler = a.create_label();
        let mut after = a.create_label();
        a.xor(ax, ax)?;
        a.mov(es, ax)?;
        a.mov(word_ptr(0x40 * 4).es(), u32::from(handler_ip))?;
        a.mov(word_ptr(0x40 * 4 + 2).es(), u32::from(CODE_SEG))?;
        a.mov(bx, 0x1234)?;
        a.sti()?;
        a.stc()?;
        a.int(0x40)?;
        a.set_label(&mut after)?;
        a.pushf()?;
        a.pop(word_ptr(0x40))?;
        a.mov(word_ptr(0x42), bx)?;
        a.cli()?;
        a.hlt()?;
        a.set_label(&mut handler)?;
        a.pushf()?;
        a.pop(word_ptr(0x30))?;
        a.mov(bp, sp)?;
        for i in 0..3 {
            a.mov(ax, word_ptr(bp + 2 * i))?;
            a.mov(word_ptr(0x32 + 2 * i), ax)?;
        }
        a.mov(bx, 0x5678)?;
        a.clc()?;
        a.iret()?;
        Ok([handler, after])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert: delivery pushed FLAGS, CS, IP and cleared IF and TF (SDM vol. 3A
    // §20.1.4); IRET restored the caller's FLAGS, undoing the handler's CLC.
    let handler_flags = mem16(&vm, DATA_SEG, 0x30);
    assert_eq!(
        handler_flags & (IF | TF),
        0,
        "IF and TF clear in the handler"
    );
    assert_eq!(mem16(&vm, DATA_SEG, 0x32), p.ips[1], "pushed IP");
    assert_eq!(mem16(&vm, DATA_SEG, 0x34), CODE_SEG, "pushed CS");
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x36) & (IF | CF),
        IF | CF,
        "pushed FLAGS"
    );
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x40) & (IF | CF),
        IF | CF,
        "FLAGS after IRET"
    );
    assert_eq!(mem16(&vm, DATA_SEG, 0x42), 0x5678);
    assert_eq!(r16(&vm, reg::RSP), STACK_TOP);
}

#[test]
fn interrupt_into_with_of_set_traps_to_vector_4_after_into() {
    // Arrange: 7FH + 1 overflows.
    let p = assemble(|a, _| {
        let mut after = a.create_label();
        a.mov(al, 0x7F)?;
        a.add(al, 1)?;
        a.into()?;
        a.set_label(&mut after)?;
        a.hlt()?;
        Ok([after])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert: a trap; the frame holds the next instruction.
    assert_eq!((frame.vector, frame.ip, frame.cs), (4, p.ips[0], CODE_SEG));
    assert_ne!(frame.flags & OF, 0);
}

#[test]
fn interrupt_into_with_of_clear_does_nothing() {
    // Arrange
    let code = asm16(|a| {
        a.xor(ax, ax)?;
        a.into()?;
        a.mov(bx, 1)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RBX), 1);
}

#[test]
fn interrupt_int3_traps_to_vector_3_after_the_breakpoint() {
    // Arrange
    let p = assemble(|a, _| {
        let mut after = a.create_label();
        a.int3()?;
        a.set_label(&mut after)?;
        a.hlt()?;
        Ok([after])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert
    assert_eq!(p.code[0], 0xCC, "one-byte INT3");
    assert_eq!((frame.vector, frame.ip), (3, p.ips[0]));
}

#[test]
fn fault_bound_out_of_range_raises_br_at_bound() {
    // Arrange: BOUND compares signed (SDM vol. 2A BOUND): -2 is inside [-5, 5]
    // and 15 inside [10, 20]; 21 is outside.
    let p = assemble(|a, _| {
        let mut bad = a.create_label();
        a.mov(ax, -2)?;
        a.bound(ax, dword_ptr(0x74))?;
        a.mov(ax, 15)?;
        a.bound(ax, dword_ptr(0x70))?;
        a.mov(ax, 21)?;
        a.set_label(&mut bad)?;
        a.bound(ax, dword_ptr(0x70))?;
        a.hlt()?;
        Ok([bad])
    });
    let mut vm = flat_vm(&p.code);
    let bounds: Vec<u8> = [10i16, 20, -5, 5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    load(&mut vm, DATA_SEG, 0x70, &bounds);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert: #BR is a fault (vector 5) at the BOUND itself.
    assert_eq!((frame.vector, frame.ip), (5, p.ips[0]));
}

#[test]
fn fault_mov_cs_raises_ud_at_the_instruction() {
    // Arrange: 8E C8 is MOV CS, AX. SDM vol. 2A MOV: MOV cannot load CS; the
    // attempt raises #UD (the 8086 executed it).
    let p = assemble(|a, _| {
        let mut bad = a.create_label();
        a.mov(ax, 0x1234)?;
        a.set_label(&mut bad)?;
        a.db(&[0x8E, 0xC8])?;
        a.hlt()?;
        Ok([bad])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert
    assert_eq!((frame.vector, frame.ip, frame.cs), (6, p.ips[0], CODE_SEG));
    assert_eq!(vm.cpu.seg[sreg::CS].selector, CODE_SEG);
}

#[test]
fn fault_word_read_at_ds_ffff_raises_gp() {
    // Arrange: a byte at DS:FFFF is fine; a word there crosses the 64 KiB limit:
    // #GP in real mode (SDM vol. 2A MOV, Real-Address Mode Exceptions: "#GP If a
    // memory operand effective address is outside the ... DS ... segment limit").
    let p = assemble(|a, _| {
        let mut bad = a.create_label();
        a.mov(bx, 0xFFFF)?;
        a.mov(al, byte_ptr(bx))?;
        a.set_label(&mut bad)?;
        a.mov(ax, word_ptr(bx))?;
        a.hlt()?;
        Ok([bad])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert
    assert_eq!((frame.vector, frame.ip), (13, p.ips[0]));
}

#[test]
fn fault_word_read_at_ss_ffff_raises_ss() {
    // Arrange: [BP] defaults to SS; a word at SS:FFFF is a stack fault (#SS,
    // vector 12) in real mode (SDM vol. 2A MOV, Real-Address Mode Exceptions:
    // "#SS If a memory operand effective address is outside the SS segment
    // limit").
    let p = assemble(|a, _| {
        let mut bad = a.create_label();
        a.mov(bp, 0xFFFF)?;
        a.set_label(&mut bad)?;
        a.mov(ax, word_ptr(bp))?;
        a.hlt()?;
        Ok([bad])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert
    assert_eq!((frame.vector, frame.ip), (12, p.ips[0]));
}

#[test]
fn fault_push_with_sp_one_shuts_down() {
    // Arrange: SDM vol. 2B PUSH, Operation note: with SP=1 in real mode the push
    // raises #SS; delivering it faults the same way (#DF), and delivering #DF
    // faults again, so the processor shuts down. No handler can run.
    let code = asm16(|a| {
        a.mov(sp, 1)?;
        a.push(ax)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // A PC chipset turns the shutdown into a reset; stop at the shutdown instead.
    vm.no_reboot = true;
    // Act
    let out = vm.run(INSN_LIMIT);
    // Assert
    assert_eq!(out, RunOutcome::TripleFault, "stopped at {}", where_is(&vm));
}

#[test]
fn fault_aam_zero_raises_de() {
    // Arrange: AAM divides by its immediate (SDM vol. 2A AAM: #DE if imm8 = 0).
    let p = assemble(|a, _| {
        let mut bad = a.create_label();
        a.mov(ax, 0x0042)?;
        a.set_label(&mut bad)?;
        a.aam(0)?;
        a.hlt()?;
        Ok([bad])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    let frame = run_to_exception(&mut vm);
    // Assert
    assert_eq!((frame.vector, frame.ip), (0, p.ips[0]));
    assert_eq!(r16(&vm, reg::RAX), 0x0042);
}

// ================================================================================
// I/O, CPUID, RDTSC
// ================================================================================

#[test]
fn io_uart_scratch_register_round_trips_through_in_out() {
    // Arrange: the 16550A scratch register (COM1 + 7) holds any byte.
    let code = asm16(|a| {
        a.mov(dx, 0x3FF)?;
        a.mov(al, 0x5A)?;
        a.out(dx, al)?;
        a.xor(al, al)?;
        a.in_(al, dx)?;
        a.mov(bl, al)?;
        a.mov(al, 0xA5)?;
        a.out(dx, al)?;
        a.in_(al, dx)?;
        a.mov(bh, al)?;
        a.hlt()
    });
    let mut vm = pc_vm(&code, Capture::default());
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RBX), 0xA55A);
}

#[test]
fn io_rep_outsb_insb_move_strings_through_scratch_register() {
    // Arrange
    let code = asm16(|a| {
        a.cld()?;
        a.mov(dx, 0x3FF)?;
        a.mov(si, 0x100)?;
        a.mov(cx, 3)?;
        a.rep().outsb()?;
        a.mov(di, 0x200)?;
        a.mov(cx, 4)?;
        a.rep().insb()?;
        a.hlt()
    });
    let mut vm = pc_vm(&code, Capture::default());
    load(&mut vm, DATA_SEG, 0x100, &[0x11, 0x22, 0x33]);
    // Act
    run_to_halt(&mut vm);
    // Assert: the register keeps the last byte written.
    assert_eq!(bytes(&vm, EXTRA_SEG, 0x200, 4), [0x33; 4]);
    assert_eq!((r16(&vm, reg::RSI), r16(&vm, reg::RDI)), (0x103, 0x204));
}

#[test]
fn io_cmos_nvram_bytes_round_trip_through_index_and_data_ports() {
    // Arrange: MC146818 bytes 0E-7F are plain battery-backed RAM.
    let code = asm16(|a| {
        for (index, value) in [(0x40, 0xC3), (0x41, 0x3C)] {
            a.mov(al, index)?;
            a.out(0x70, al)?;
            a.mov(al, value)?;
            a.out(0x71, al)?;
        }
        a.mov(al, 0x40)?;
        a.out(0x70, al)?;
        a.in_(al, 0x71)?;
        a.mov(bl, al)?;
        a.mov(al, 0x41)?;
        a.out(0x70, al)?;
        a.in_(al, 0x71)?;
        a.mov(bh, al)?;
        a.hlt()
    });
    let mut vm = pc_vm(&code, Capture::default());
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RBX), 0x3CC3);
}

#[test]
fn system_cpuid_leaf0_reports_genuineintel() {
    // Arrange: the vendor string is EBX, EDX, ECX (SDM vol. 2A CPUID, leaf 0).
    let code = asm16(|a| {
        a.xor(eax, eax)?;
        a.cpuid()?;
        a.mov(dword_ptr(0), ebx)?;
        a.mov(dword_ptr(4), edx)?;
        a.mov(dword_ptr(8), ecx)?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(bytes(&vm, DATA_SEG, 0, 12), b"GenuineIntel");
}

#[test]
fn system_rdtsc_increases_between_reads() {
    // Arrange
    let code = asm16(|a| {
        let mut l = a.create_label();
        a.rdtsc()?;
        a.mov(esi, eax)?;
        a.mov(edi, edx)?;
        a.mov(cx, 100)?;
        a.set_label(&mut l)?;
        a.loop_(l)?;
        a.rdtsc()?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    let first = (u64::from(r32(&vm, reg::RDI)) << 32) | u64::from(r32(&vm, reg::RSI));
    let second = (u64::from(r32(&vm, reg::RDX)) << 32) | u64::from(r32(&vm, reg::RAX));
    assert!(second > first, "TSC went from {first} to {second}");
}

// ================================================================================
// PC devices driven by the guest: PIT -> PIC -> IVT, interrupt shadows, COM1
// ================================================================================

/// Where the tick handler counts in DS.
const TICKS: i32 = 0x10;
/// Value the guests write to the debug-exit port when done: status 0x55.
const DONE: u32 = 0x2A;

/// Points IVT[8] at `handler`, starts 8254 counter 0 in mode 2 (rate generator)
/// with `count` (LSB then MSB; Intel 8254 datasheet), then initialises both
/// 8259As (ICW1-4: edge, cascade, vector bases 08h/70h, 8086 mode; Intel 8259A
/// datasheet) and unmasks only IRQ0. Interrupts stay disabled.
///
/// The PIT goes first on purpose: its control word sets OUT high (datasheet, modes
/// 1-5), which is a rising edge on IRQ0 from the power-on low. ICW1 resets the
/// 8259A's edge sense afterwards, so the first IRQ0 the guest sees is the end of
/// the first period.
fn emit_timer_setup(a: &mut CodeAssembler, handler: u16, count: u16) -> AsmResult {
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(es, ax)?;
    a.mov(word_ptr(0x20).es(), u32::from(handler))?;
    a.mov(word_ptr(0x22).es(), u32::from(CODE_SEG))?;
    a.mov(ax, u32::from(EXTRA_SEG))?;
    a.mov(es, ax)?;
    a.mov(word_ptr(TICKS), 0)?;
    let [lo, hi] = count.to_le_bytes();
    let writes = [
        (0x43, 0x34), // counter 0, LSB then MSB, mode 2, binary
        (0x40, i32::from(lo)),
        (0x40, i32::from(hi)),
        (0x20, 0x11), // master ICW1: edge, cascade, ICW4 follows
        (0x21, 0x08), // ICW2: vectors 08h-0Fh
        (0x21, 0x04), // ICW3: slave on IR2
        (0x21, 0x01), // ICW4: 8086 mode, normal EOI
        (0xA0, 0x11), // slave ICW1
        (0xA1, 0x70), // ICW2: vectors 70h-77h
        (0xA1, 0x02), // ICW3: slave ID 2
        (0xA1, 0x01), // ICW4
        (0x21, 0xFE), // OCW1: only IRQ0 unmasked
        (0xA1, 0xFF), // OCW1: slave all masked
    ];
    for (port, value) in writes {
        a.mov(al, value)?;
        a.out(port, al)?;
    }
    Ok(())
}

/// The IRQ0 handler: count a tick, non-specific EOI (OCW2 20h), IRET.
fn emit_tick_handler(a: &mut CodeAssembler, label: &mut CodeLabel) -> AsmResult {
    a.set_label(label)?;
    a.push(ax)?;
    a.inc(word_ptr(TICKS))?;
    a.mov(al, 0x20)?;
    a.out(0x20, al)?;
    a.pop(ax)?;
    a.iret()
}

fn emit_debug_exit(a: &mut CodeAssembler) -> AsmResult {
    a.mov(al, DONE)?;
    a.out(0xF4, al)?;
    a.hlt()
}

/// The guest of the PIT tests: sleep with `sti; hlt` until five ticks.
fn five_tick_guest(count: u16) -> Vec<u8> {
    assemble(|a, [handler_ip]| {
        let mut handler = a.create_label();
        let mut wait = a.create_label();
        emit_timer_setup(a, handler_ip, count)?;
        a.set_label(&mut wait)?;
        a.sti()?;
        a.hlt()?;
        a.cli()?;
        a.cmp(word_ptr(TICKS), 5)?;
        a.jb(wait)?;
        emit_debug_exit(a)?;
        emit_tick_handler(a, &mut handler)?;
        Ok([handler])
    })
    .code
}

#[test]
fn pit_pic_ivt_five_ticks_then_debug_exit() {
    // Arrange: 1193 PIT clocks = about 1 ms per tick.
    let mut vm = pc_vm(&five_tick_guest(1193), Capture::default());
    // Act
    let out = vm.run(INSN_LIMIT);
    // Assert
    assert_eq!(
        out,
        RunOutcome::DebugExit(((DONE << 1) | 1) as i32),
        "at {}",
        where_is(&vm)
    );
    assert_eq!(mem16(&vm, DATA_SEG, TICKS as u16), 5);
}

#[test]
fn pit_mode2_five_ticks_take_five_periods_of_virtual_time() {
    // Arrange: in mode 2 OUT pulses once every `count` clocks of the 1.193182 MHz
    // input (8254 datasheet, mode 2; PC clock 14.31818 MHz / 12), so the fifth
    // IRQ0 comes 5 * count clocks after the count is loaded (one more clock for
    // the load itself, which happens within the guest's first instructions).
    let count = 1193u64;
    let mut vm = pc_vm(&five_tick_guest(count as u16), Capture::default());
    // Act
    let out = vm.run(INSN_LIMIT);
    // Assert: the guest's own instructions add well under 2 µs.
    assert!(matches!(out, RunOutcome::DebugExit(_)), "{out:?}");
    let clocks_ns = |clocks: u64| clocks * 1_000_000_000 / 1_193_182;
    let now = vm.now();
    assert!(
        (clocks_ns(5 * count)..=clocks_ns(5 * count + 2) + 2_000).contains(&now),
        "5 ticks of {count} clocks ended at {now} ns"
    );
}

#[test]
fn interrupt_sti_shadow_delays_pending_irq_by_exactly_one_instruction() {
    // Arrange: with IF=0 the guest polls the master IRR (OCW3 0Ah) until IRQ0 is
    // pending, then executes STI. SDM vol. 2B STI: interrupts are recognised after
    // the instruction following STI, so `mov bx, 1` runs and the handler interrupts
    // before `mov bx, 2`.
    let p = assemble(|a, [handler_ip, _]| {
        let mut handler = a.create_label();
        let mut poll = a.create_label();
        let mut second = a.create_label();
        emit_timer_setup(a, handler_ip, 100)?;
        a.set_label(&mut poll)?;
        a.mov(al, 0x0A)?;
        a.out(0x20, al)?;
        a.in_(al, 0x20)?;
        a.test(al, 1)?;
        a.jz(poll)?;
        a.xor(bx, bx)?;
        a.sti()?;
        a.mov(bx, 1)?;
        a.set_label(&mut second)?;
        a.mov(bx, 2)?;
        a.mov(bx, 3)?;
        a.cli()?;
        a.hlt()?;
        a.set_label(&mut handler)?;
        a.mov(word_ptr(0x20), bx)?;
        a.mov(bp, sp)?;
        a.mov(ax, word_ptr(bp))?;
        a.mov(word_ptr(0x22), ax)?;
        emit_debug_exit(a)?;
        Ok([handler, second])
    });
    let mut vm = pc_vm(&p.code, Capture::default());
    // Act
    let out = vm.run(INSN_LIMIT);
    // Assert
    assert!(
        matches!(out, RunOutcome::DebugExit(_)),
        "{out:?} at {}",
        where_is(&vm)
    );
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x20),
        1,
        "BX seen by the handler: the instruction after STI ran, no more"
    );
    assert_eq!(mem16(&vm, DATA_SEG, 0x22), p.ips[1], "interrupted IP");
}

#[test]
fn interrupt_mov_ss_shadow_never_interrupted_after_mov_ss() {
    // Arrange: a loop of `mov ss, ax; mov bx, 1; ...` runs with IF=1 while the PIT
    // fires every 30 clocks. SDM vol. 3A §6.8.3: no interrupt is recognised on the
    // boundary right after MOV SS, so the handler must never see a return IP at
    // the `mov bx, 1`. It counts those (must stay 0) and landings anywhere in the
    // loop (shows the loop really was interrupted).
    let p = assemble(|a, [handler_ip, top_ip, shadowed_ip, end_ip]| {
        let mut handler = a.create_label();
        let mut top = a.create_label();
        let mut shadowed = a.create_label();
        let mut end = a.create_label();
        let mut not_shadowed = a.create_label();
        let mut outside = a.create_label();
        emit_timer_setup(a, handler_ip, 30)?;
        a.mov(word_ptr(0x20), 0)?;
        a.mov(word_ptr(0x22), 0)?;
        a.mov(ax, ss)?;
        a.sti()?;
        a.set_label(&mut top)?;
        a.mov(ss, ax)?;
        a.set_label(&mut shadowed)?;
        a.mov(bx, 1)?;
        a.mov(bx, 0)?;
        a.cmp(word_ptr(TICKS), 20)?;
        a.jb(top)?;
        a.set_label(&mut end)?;
        emit_debug_exit(a)?;
        a.set_label(&mut handler)?;
        a.push(bp)?;
        a.mov(bp, sp)?;
        a.push(ax)?;
        a.inc(word_ptr(TICKS))?;
        a.mov(ax, word_ptr(bp + 2))?;
        a.cmp(ax, u32::from(shadowed_ip))?;
        a.jne(not_shadowed)?;
        a.inc(word_ptr(0x20))?;
        a.set_label(&mut not_shadowed)?;
        a.cmp(ax, u32::from(top_ip))?;
        a.jb(outside)?;
        a.cmp(ax, u32::from(end_ip))?;
        a.jae(outside)?;
        a.inc(word_ptr(0x22))?;
        a.set_label(&mut outside)?;
        a.mov(al, 0x20)?;
        a.out(0x20, al)?;
        a.pop(ax)?;
        a.pop(bp)?;
        a.iret()?;
        Ok([handler, top, shadowed, end])
    });
    let mut vm = pc_vm(&p.code, Capture::default());
    // Act
    let out = vm.run(INSN_LIMIT);
    // Assert
    assert!(matches!(out, RunOutcome::DebugExit(_)), "{out:?}");
    assert_eq!(mem16(&vm, DATA_SEG, TICKS as u16), 20);
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x20),
        0,
        "interrupts right after MOV SS"
    );
    assert!(
        mem16(&vm, DATA_SEG, 0x22) > 0,
        "no tick interrupted the loop"
    );
}

#[test]
fn serial_polled_uart_output_reaches_com1() {
    // Arrange: 115200 8N1 with FIFOs (PC16550D datasheet: LCR 80h opens the
    // divisor latch, DLL/DLM = 1, LCR 03h = 8 bits, no parity, 1 stop; FCR 07h
    // enables and clears the FIFOs); each byte waits for LSR bit 5 (THRE).
    let text = b"Hello from x86bt!\r\n";
    let code = asm16(|a| {
        let mut next = a.create_label();
        let mut wait = a.create_label();
        let mut done = a.create_label();
        for (port, value) in [
            (0x3FB, 0x80),
            (0x3F8, 0x01),
            (0x3F9, 0x00),
            (0x3FB, 0x03),
            (0x3FA, 0x07),
        ] {
            a.mov(dx, port)?;
            a.mov(al, value)?;
            a.out(dx, al)?;
        }
        a.cld()?;
        a.mov(si, 0x100)?;
        a.set_label(&mut next)?;
        a.lodsb()?;
        a.test(al, al)?;
        a.jz(done)?;
        a.mov(bl, al)?;
        a.mov(dx, 0x3FD)?;
        a.set_label(&mut wait)?;
        a.in_(al, dx)?;
        a.test(al, 0x20)?;
        a.jz(wait)?;
        a.mov(dx, 0x3F8)?;
        a.mov(al, bl)?;
        a.out(dx, al)?;
        a.jmp(next)?;
        a.set_label(&mut done)?;
        emit_debug_exit(a)
    });
    let serial = Capture::default();
    let mut vm = pc_vm(&code, serial.clone());
    load(&mut vm, DATA_SEG, 0x100, text);
    load(&mut vm, DATA_SEG, 0x100 + text.len() as u16, &[0]);
    // Act
    let out = vm.run(INSN_LIMIT);
    // Assert
    assert_eq!(out, RunOutcome::DebugExit(((DONE << 1) | 1) as i32));
    assert_eq!(serial.0.borrow().as_slice(), text);
}

// ================================================================================
// Self-modifying code
// ================================================================================

#[test]
fn smc_loop_sees_immediate_patched_in_its_own_body() {
    // Arrange: `mov ax, imm16` (B8 iw) at the loop top; each pass adds AX to BX
    // and then increments the immediate in place. Ten passes must see ten values.
    let p = assemble(|a, [patch_ip]| {
        let mut patch = a.create_label();
        a.xor(bx, bx)?;
        a.mov(cx, 10)?;
        a.set_label(&mut patch)?;
        a.mov(ax, 0x1000)?;
        a.add(bx, ax)?;
        a.inc(word_ptr(u32::from(patch_ip) + 1).cs())?;
        a.loop_(patch)?;
        a.hlt()?;
        Ok([patch])
    });
    assert_eq!(p.code[usize::from(p.ips[0])], 0xB8, "mov ax, imm16");
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    let want: u16 = (0..10).map(|k| 0x1000 + k).sum();
    assert_eq!(r16(&vm, reg::RBX), want);
}

#[test]
fn smc_loop_runs_once_then_runs_patched_body() {
    // Arrange: the body is entered with a JMP, so its first pass is decoded (and
    // cached) on its own; that pass adds 1111h and patches the immediate to 2222h,
    // and the second pass must add the new value.
    let p = assemble(|a, [patch_ip]| {
        let mut patch = a.create_label();
        a.xor(bx, bx)?;
        a.mov(cx, 2)?;
        a.jmp(patch)?;
        a.set_label(&mut patch)?;
        a.mov(ax, 0x1111)?;
        a.add(bx, ax)?;
        a.mov(word_ptr(u32::from(patch_ip) + 1).cs(), 0x2222)?;
        a.loop_(patch)?;
        a.hlt()?;
        Ok([patch])
    });
    assert_eq!(p.code[usize::from(p.ips[0])], 0xB8, "mov ax, imm16");
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RBX), 0x3333);
}

#[test]
fn smc_store_into_next_instruction_executes_new_bytes() {
    // Arrange: a store changes the immediate of the very next instruction, and a
    // second store turns the NOP after it into INC BX (43h). The block runs twice
    // (entered by a JMP, so it is one cached unit), storing DL+1 = 42h and then
    // 43h. After a store to code the new bytes must execute (SDM vol. 3A §11.6:
    // a write that affects a prefetched instruction invalidates the prefetch
    // queue, so there is no stale-prefetch window as on the 486).
    let p = assemble(|a, [next_ip, nop_ip]| {
        let mut top = a.create_label();
        let mut next = a.create_label();
        let mut nop = a.create_label();
        a.xor(bx, bx)?;
        a.xor(si, si)?;
        a.mov(dl, 0x41)?;
        a.mov(cx, 2)?;
        a.jmp(top)?;
        a.set_label(&mut top)?;
        a.inc(dl)?;
        a.mov(byte_ptr(u32::from(next_ip) + 1).cs(), dl)?;
        a.set_label(&mut next)?;
        a.mov(al, 0)?;
        a.mov(byte_ptr(u32::from(nop_ip)).cs(), 0x43)?;
        a.set_label(&mut nop)?;
        a.nop()?;
        a.xor(ah, ah)?;
        a.add(si, ax)?;
        a.loop_(top)?;
        a.hlt()?;
        Ok([next, nop])
    });
    assert_eq!(p.code[usize::from(p.ips[0])], 0xB0, "mov al, imm8");
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(
        r16(&vm, reg::RSI),
        0x42 + 0x43,
        "sum of the patched immediates"
    );
    assert_eq!(r16(&vm, reg::RBX), 2, "INC BX ran on both passes");
}

#[test]
fn smc_store_into_later_instruction_of_same_block_executes_new_bytes() {
    // Arrange: straight-line code run twice as one cached unit; the patched
    // `mov cx, imm16` is three instructions after the store, which writes BEEFh
    // on the first pass and BEF0h on the second. The loop counter is in DI
    // because CX is the patched register.
    let p = assemble(|a, [target_ip]| {
        let mut top = a.create_label();
        let mut target = a.create_label();
        a.xor(bx, bx)?;
        a.mov(ax, 0xBEEF)?;
        a.mov(di, 2)?;
        a.jmp(top)?;
        a.set_label(&mut top)?;
        a.mov(word_ptr(u32::from(target_ip) + 1).cs(), ax)?;
        a.mov(dx, 1)?;
        a.add(dx, 2)?;
        a.set_label(&mut target)?;
        a.mov(cx, 0)?;
        a.add(bx, cx)?;
        a.inc(ax)?;
        a.dec(di)?;
        a.jnz(top)?;
        a.hlt()?;
        Ok([target])
    });
    assert_eq!(p.code[usize::from(p.ips[0])], 0xB9, "mov cx, imm16");
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RCX), 0xBEF0);
    assert_eq!(r16(&vm, reg::RBX), 0xBEEFu16.wrapping_add(0xBEF0));
    assert_eq!(r16(&vm, reg::RDX), 3);
}

#[test]
fn smc_store_through_aliasing_segment_executes_new_bytes() {
    // Arrange: 0FFF:0010+x is the same physical byte as 1000:0000+x.
    let p = assemble(|a, [next_ip]| {
        let mut next = a.create_label();
        a.mov(ax, 0x0FFF)?;
        a.mov(es, ax)?;
        a.mov(byte_ptr(u32::from(next_ip) + 0x10 + 1).es(), 0x77)?;
        a.set_label(&mut next)?;
        a.mov(dl, 0)?;
        a.hlt()?;
        Ok([next])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(vm.cpu.gpr[reg::RDX] as u8, 0x77);
}

#[test]
fn smc_rep_stosb_over_following_code_executes_new_bytes() {
    // Arrange: REP STOSB turns the HLT right after it into a NOP, so execution
    // reaches `mov bx, 77h`.
    let p = assemble(|a, [target_ip]| {
        let mut target = a.create_label();
        a.mov(ax, cs)?;
        a.mov(es, ax)?;
        a.cld()?;
        a.mov(di, u32::from(target_ip))?;
        a.mov(al, 0x90)?;
        a.mov(cx, 1)?;
        a.rep().stosb()?;
        a.set_label(&mut target)?;
        a.hlt()?;
        a.mov(bx, 0x77)?;
        a.hlt()?;
        Ok([target])
    });
    let mut vm = flat_vm(&p.code);
    // Act
    run_to_halt(&mut vm);
    // Assert
    assert_eq!(r16(&vm, reg::RBX), 0x77);
}
