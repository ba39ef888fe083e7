//! The engines on random code in flat 32-bit protected mode and in 64-bit mode
//! (issue 12, item 6): a megabyte of random bytes runs from 1 MiB under
//! `--engine lockstep` (the translator, then the interpreter on a copy, compared
//! after every unit) for a bounded number of instructions. The IDT's handlers
//! for vectors 0-31 step the saved instruction pointer one byte forward and
//! return, so a fault does not end the run: execution goes on one byte further,
//! deterministically on both engines. SSE is enabled (CR4.OSFXSR, OSXMMEXCPT),
//! so the random bytes reach the SIMD families too.
//!
//! The oracle is the other engine: no divergence, no host panic, no hang (the
//! instruction budget ends every run). CI runs a few programs per mode;
//! `X86BT_ROM_FUZZ=n` runs n per mode by hand, with a summary of how the runs
//! ended. The real-mode counterpart is `lockstep_random_rom_fuzz_finds_no_divergence`
//! in tests/jit.rs.

use iced_x86::code_asm::*;
use x86bt::cli::Engine;
use x86bt::{RunOutcome, Vm};
use x86bt_cpu::state::{cr0, seg_attr, sreg, Segment};
use x86bt_machine::pc::{self, PcConfig};
use x86bt_machine::GuestPhys;

const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const STUBS: u64 = 0x3000;
const PML4: u64 = 0x4000;
const PDPT: u64 = 0x5000;
const PD: u64 = 0x6000;
const STACK_TOP: u64 = 0x8_0000;
const CODE: u64 = 0x10_0000;
const CODE_LEN: usize = 0x10_0000;
/// Instructions per program.
const BUDGET: u64 = 300_000;

/// Vectors that push an error code (SDM vol. 3A Table 6-1).
fn has_error_code(v: u64) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            // xorshift64* (Vigna), one byte per step.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The handler stub of vector `v`: drop the error code if there is one, step
/// the saved instruction pointer one byte on, return.
fn stub(long: bool, v: u64) -> Vec<u8> {
    let mut a = CodeAssembler::new(if long { 64 } else { 32 }).expect("assembler");
    let mut build = || -> Result<(), IcedError> {
        if long {
            if has_error_code(v) {
                a.add(rsp, 8)?;
            }
            a.inc(qword_ptr(rsp))?;
            a.iretq()?;
        } else {
            if has_error_code(v) {
                a.add(esp, 4)?;
            }
            a.inc(dword_ptr(esp))?;
            a.iretd()?;
        }
        Ok(())
    };
    build().expect("stub assembles");
    a.assemble(STUBS + 16 * v).expect("stub encodes")
}

/// A descriptor's two dwords: flat base 0, limit 4 GiB, `access` byte, `flags`
/// nibble (G, D/B, L).
fn descriptor(access: u64, flags: u64) -> u64 {
    0xFFFF | (0xF << 48) | (access << 40) | (flags << 52)
}

/// A machine with the random code, the GDT, IDT and stubs, ready in flat 32-bit
/// protected mode or, with `long`, in 64-bit mode with identity paging.
fn machine_with(seed: u64, long: bool) -> Vm {
    let machine = pc::build(PcConfig::headless(16 << 20, Some(vec![0xF4; 0x1_0000]))).expect("PC");
    let mut vm = Vm::with_engine(machine, Engine::Lockstep).expect("lockstep");
    let mem = &mut vm.machine.mem;
    // GDT: null, 32-bit code (0x08), data (0x10), 64-bit code (0x18).
    let gdt = [
        0,
        descriptor(0x9B, 0xC),
        descriptor(0x93, 0xC),
        descriptor(0x9B, 0xA),
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.load(GuestPhys(GDT + 8 * i as u64), &d.to_le_bytes())
            .expect("gdt");
    }
    let code_sel: u64 = if long { 0x18 } else { 0x08 };
    for v in 0..32u64 {
        let target = STUBS + 16 * v;
        mem.load(GuestPhys(target), &stub(long, v)).expect("stub");
        // An interrupt gate (type 0xE, present, DPL 0).
        let low = (target & 0xFFFF) | (code_sel << 16) | (0x8E << 40) | ((target >> 16) << 48);
        if long {
            mem.load(GuestPhys(IDT + 16 * v), &low.to_le_bytes())
                .expect("idt");
            mem.load(GuestPhys(IDT + 16 * v + 8), &(target >> 32).to_le_bytes())
                .expect("idt");
        } else {
            mem.load(GuestPhys(IDT + 8 * v), &low.to_le_bytes())
                .expect("idt");
        }
    }
    if long {
        // Identity map of the first GiB with 2 MiB pages.
        mem.load(GuestPhys(PML4), &(PDPT | 3).to_le_bytes())
            .expect("pml4");
        mem.load(GuestPhys(PDPT), &(PD | 3).to_le_bytes())
            .expect("pdpt");
        for i in 0..512u64 {
            let pde = (i << 21) | 0x83;
            mem.load(GuestPhys(PD + 8 * i), &pde.to_le_bytes())
                .expect("pd");
        }
    }
    mem.load(GuestPhys(CODE), &random_bytes(seed, CODE_LEN))
        .expect("code");
    let cpu = &mut vm.cpu;
    let data = Segment {
        selector: 0x10,
        attrs: seg_attr::P
            | seg_attr::S
            | seg_attr::RW
            | seg_attr::ACCESSED
            | seg_attr::DB
            | seg_attr::G,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    for s in 0..6 {
        cpu.seg[s] = data;
    }
    let code_attrs = seg_attr::P
        | seg_attr::S
        | seg_attr::CODE
        | seg_attr::RW
        | seg_attr::ACCESSED
        | seg_attr::G;
    cpu.seg[sreg::CS] = Segment {
        selector: code_sel as u16,
        attrs: code_attrs | if long { seg_attr::L } else { seg_attr::DB },
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    cpu.gdtr.base = GDT;
    cpu.gdtr.limit = 8 * gdt.len() as u32 - 1;
    cpu.idtr.base = IDT;
    cpu.idtr.limit = if long { 16 * 32 - 1 } else { 8 * 32 - 1 };
    cpu.cr0 = cr0::PE | cr0::ET | cr0::NE | cr0::MP;
    cpu.cr4 = x86bt_cpu::mmu::cr4::OSFXSR | x86bt_cpu::mmu::cr4::OSXMMEXCPT;
    if long {
        use x86bt_cpu::mmu::efer;
        cpu.cr4 |= x86bt_cpu::mmu::cr4::PAE;
        cpu.cr3 = PML4;
        cpu.efer = efer::LME | efer::LMA | efer::NXE | efer::SCE;
        cpu.cr0 |= cr0::PG;
    }
    cpu.gpr[4] = STACK_TOP;
    cpu.rip = CODE;
    cpu.rflags = 2;
    vm
}

/// Runs `n` random programs in one mode; panics on a divergence. Returns how
/// the runs ended, by kind.
fn fuzz(long: bool, n: u64) -> std::collections::BTreeMap<String, u64> {
    // X86BT_ROM_FIRST=s starts at seed s (to run one program again).
    let first: u64 = std::env::var("X86BT_ROM_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    fuzz_from(long, first, n)
}

/// Runs the programs of seeds `first..first + n`.
fn fuzz_from(long: bool, first: u64, n: u64) -> std::collections::BTreeMap<String, u64> {
    let mut ends = std::collections::BTreeMap::new();
    for seed in first..first + n {
        let mut vm = machine_with(seed, long);
        let out = vm.run(BUDGET);
        assert!(
            !matches!(out, RunOutcome::Divergence(_)),
            "{} program seed {seed}: {out:?}",
            if long { "64-bit" } else { "32-bit" }
        );
        let kind = format!("{out:?}");
        let kind = kind.split(['(', ' ', '{']).next().unwrap_or("").to_string();
        *ends.entry(kind).or_insert(0) += 1;
    }
    ends
}

fn programs() -> u64 {
    std::env::var("X86BT_ROM_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

#[test]
fn lockstep_random_protected_mode_code_finds_no_divergence() {
    let n = programs();
    let ends = fuzz(false, n);
    eprintln!("{n} random 32-bit protected-mode programs agree; ends: {ends:?}");
}

#[test]
fn lockstep_random_64bit_code_finds_no_divergence() {
    let n = programs();
    let ends = fuzz(true, n);
    eprintln!("{n} random 64-bit programs agree; ends: {ends:?}");
}

/// Regression (64-bit seed 449): the random code moves its stack onto its own
/// page directory and pops an entry the page walk of a later access in the same
/// unit marks accessed. Lockstep must undo the first run's accessed/dirty
/// writes with its other writes, or the second run pops the marked entry.
#[test]
fn lockstep_undoes_page_walk_accessed_bits_between_runs() {
    fuzz_from(true, 449, 1);
}

/// Regression (32-bit seed 9170): `ret 0xffff` at linear 0 returning to
/// itself; the interpreter ends such a unit with an event (its restart check),
/// the translator with a plain end, and the states agree.
#[test]
fn lockstep_accepts_either_exit_for_a_unit_that_branches_to_itself() {
    fuzz_from(false, 9170, 1);
}
