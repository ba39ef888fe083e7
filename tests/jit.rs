//! The binary translator against the interpreter and against the guests' own
//! oracles:
//! - every guest program of `tests/guest_programs.rs`, run on the translator (the
//!   file is included below as a module, with [`TEST_ENGINE`] = jit);
//! - seeded random instruction streams (the difftest generator, in real mode and
//!   16- and 32-bit protected mode) run in lockstep, where every unit is compared
//!   with the interpreter, and run to the end on each engine alone, where the final
//!   states must match;
//! - the lockstep checker itself, which must report an injected divergence;
//! - the bench workloads in lockstep.
//!
//! `X86BT_JIT_CASES=n` raises the number of random streams per mode (CI runs the
//! default, [`DEFAULT_CASES`]).

use x86bt::cli::Engine;
use x86bt::difftest::gen::{self, Mode};
use x86bt::{RunOutcome, Vm};
use x86bt_machine::pc::{self, PcConfig};
use x86bt_machine::{GuestPhys, Machine};

/// The engine of the guest programs included below.
const TEST_ENGINE: Engine = Engine::Jit;

/// Every guest program, on the translator.
#[path = "guest_programs.rs"]
mod guest_programs;

/// Random streams per mode in a default run.
const DEFAULT_CASES: u64 = 12;
/// Instructions per random stream.
const STREAM_LEN: usize = 400;
/// Seed of the random campaign (any value; fixed so failures reproduce).
const SEED: u64 = 0x0B7_5EED;

fn pc_with_rom(rom: Vec<u8>) -> Machine {
    pc::build(PcConfig::headless(16 << 20, Some(rom))).expect("PC with the generated ROM")
}

fn cases() -> u64 {
    std::env::var("X86BT_JIT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs a generated program to its final HLT on `engine`.
fn run_stream(rom: &[u8], engine: Engine) -> (RunOutcome, Vm) {
    let mut vm = Vm::with_engine(pc_with_rom(rom.to_vec()), engine).expect("engine");
    let out = vm.run(1_000_000);
    (out, vm)
}

fn data_window(vm: &Vm) -> Vec<u8> {
    let mut buf = vec![0u8; 0x1_0000];
    vm.machine
        .mem
        .read_bytes(GuestPhys(u64::from(gen::DATA_BASE)), &mut buf);
    buf
}

#[test]
fn lockstep_random_streams_agree_with_interpreter() {
    for mode in Mode::ALL {
        for index in 0..cases() {
            let p = gen::generate(mode, SEED, index, STREAM_LEN);
            let (out, vm) = run_stream(&p.rom, Engine::Lockstep);
            assert!(
                matches!(out, RunOutcome::HaltedForever),
                "{mode} stream {index} (seed {SEED:#x}): {}",
                match &out {
                    RunOutcome::Divergence(r) => r.clone(),
                    other => format!("{other:?} at rip {:#x}", vm.cpu.rip),
                }
            );
        }
    }
}

#[test]
fn jit_random_streams_end_like_interpreter() {
    for mode in Mode::ALL {
        for index in 0..cases() {
            let p = gen::generate(mode, SEED, index, STREAM_LEN);
            let (out_i, vm_i) = run_stream(&p.rom, Engine::Interp);
            let (out_j, vm_j) = run_stream(&p.rom, Engine::Jit);
            let what = format!("{mode} stream {index} (seed {SEED:#x})");
            assert_eq!(out_i, out_j, "{what}: outcome");
            let (mut ci, cj) = (vm_i.cpu.clone(), &vm_j.cpu);
            // Not architectural: only meaningful inside an instruction.
            ci.next_rip = cj.next_rip;
            assert_eq!(ci.gpr, cj.gpr, "{what}: registers");
            assert_eq!(
                (ci.rip, ci.rflags, ci.icount),
                (cj.rip, cj.rflags, cj.icount),
                "{what}: rip, rflags, icount"
            );
            assert!(ci == *cj, "{what}: CPU state");
            assert!(
                data_window(&vm_i) == data_window(&vm_j),
                "{what}: data memory"
            );
        }
    }
}

#[test]
fn lockstep_injected_fault_is_reported() {
    let w = &x86bt::bench::workloads()[0];
    let mut vm = x86bt::bench::prepare(w).expect("workload");
    vm.set_engine(Engine::Lockstep).expect("lockstep");
    vm.inject_lockstep_fault(1_000);
    match vm.run(1_000_000) {
        RunOutcome::Divergence(r) => {
            assert!(r.contains("eax: interp"), "{r}");
            assert!(r.contains("; host,"), "the report lists the unit: {r}");
            assert_eq!(RunOutcome::Divergence(r).exit_status(), 116);
        }
        other => panic!("the corrupted result went unnoticed: {other:?}"),
    }
}

#[test]
fn lockstep_bench_workloads_agree() {
    for w in x86bt::bench::workloads() {
        let mut vm = x86bt::bench::prepare(&w).expect("workload");
        vm.set_engine(Engine::Lockstep).expect("lockstep");
        let out = vm.run(300_000);
        assert_eq!(out, RunOutcome::InstructionLimit, "{}", w.name);
    }
}

/// A guest that counts in AX in a one-unit loop (`inc ax; jmp`) with the PIT
/// ticking; the IRQ0 handler records AX at each tick. The translator repeats
/// that unit inside its fragment up to the run loop's device deadline, so the
/// ticks must land on exactly the same instruction as on the interpreter.
fn tick_recorder() -> Vec<u8> {
    use iced_x86::code_asm::*;
    const TICKS: u32 = 0x200;
    let build = |handler_ip: u16| -> Result<(Vec<u8>, u16), IcedError> {
        let mut a = CodeAssembler::new(16)?;
        let mut handler = a.create_label();
        let mut spin = a.create_label();
        a.cli()?;
        a.xor(ax, ax)?;
        a.mov(ds, ax)?;
        a.mov(word_ptr(0x20), u32::from(handler_ip))?;
        a.mov(word_ptr(0x22), 0x1000u32)?;
        a.mov(ax, 0x2000u32)?;
        a.mov(ds, ax)?;
        a.mov(ax, 0x9000u32)?;
        a.mov(ss, ax)?;
        a.mov(sp, 0xFFFEu32)?;
        a.xor(si, si)?;
        for (port, value) in [
            (0x43, 0x34), // PIT counter 0, LSB/MSB, mode 2
            (0x40, 0x50),
            (0x40, 0x00),
            (0x20, 0x11), // 8259A ICW1-4, vectors 08h-0Fh
            (0x21, 0x08),
            (0x21, 0x04),
            (0x21, 0x01),
            (0x21, 0xFE), // only IRQ0
        ] {
            a.mov(al, value)?;
            a.out(port, al)?;
        }
        a.xor(ax, ax)?;
        a.sti()?;
        a.set_label(&mut spin)?;
        a.inc(ax)?;
        a.jmp(spin)?;
        a.set_label(&mut handler)?;
        a.mov(word_ptr(si + TICKS as i32), ax)?;
        a.add(si, 2)?;
        a.push(ax)?;
        a.mov(al, 0x20)?;
        a.out(0x20, al)?;
        a.pop(ax)?;
        a.iret()?;
        let res = a.assemble_options(
            0,
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )?;
        let ip = res.label_ip(&handler)? as u16;
        Ok((res.inner.code_buffer, ip))
    };
    let mut ip = 0x100;
    for _ in 0..4 {
        let (code, found) = build(ip).expect("tick guest assembles");
        if found == ip {
            return code;
        }
        ip = found;
    }
    panic!("handler address did not settle");
}

#[test]
fn jit_self_loop_stops_at_device_deadlines_like_interpreter() {
    let run = |engine| {
        let mut m = pc::build(PcConfig::headless(16 << 20, None)).expect("PC");
        m.mem
            .load(GuestPhys(0x1_0000), &tick_recorder())
            .expect("code fits");
        let mut vm = Vm::with_engine(m, engine).expect("engine");
        vm.cpu.seg[1] = x86bt_cpu::state::Segment::real(0x1000);
        vm.cpu.rip = 0;
        let out = vm.run(3_000_000);
        let mut ticks = vec![0u8; 0x400];
        vm.machine.mem.read_bytes(GuestPhys(0x2_0200), &mut ticks);
        (out, vm.cpu.gpr, vm.cpu.icount, ticks, vm.engine_stats())
    };
    let (out_i, gpr_i, n_i, ticks_i, _) = run(Engine::Interp);
    let (out_j, gpr_j, n_j, ticks_j, stats) = run(Engine::Jit);
    assert_eq!(out_i, RunOutcome::InstructionLimit);
    assert!(ticks_i[..8].iter().any(|&b| b != 0), "the timer ticked");
    assert_eq!(out_j, out_i);
    assert_eq!((gpr_j, n_j), (gpr_i, n_i));
    assert_eq!(ticks_j, ticks_i, "ticks recorded at the same AX");
    let stats = stats.unwrap_or_default();
    assert!(
        !stats.contains(" 0 repeats"),
        "the loop repeated inside its fragment: {stats}"
    );
}

/// Two units on one page that chain into each other (A: `add ax,1; jmp B`, B:
/// `add dx,imm; dec cx; jnz A`), then a store that patches B's immediate from 1
/// to 5, then the same loop again: the patched code must run. Worked by hand:
/// AX = 2 * 1000 and DX = 1000 * 1 + 1000 * 5.
fn chain_then_patch() -> Vec<u8> {
    use iced_x86::code_asm::*;
    let build = |b_ip: u16| -> Result<(Vec<u8>, u16), IcedError> {
        let mut a = CodeAssembler::new(16)?;
        let mut unit_a = a.create_label();
        let mut unit_b = a.create_label();
        let mut done = a.create_label();
        let mut again = a.create_label();
        a.xor(ax, ax)?;
        a.xor(dx, dx)?;
        a.xor(si, si)?;
        a.set_label(&mut again)?;
        a.mov(cx, 1000u32)?;
        a.set_label(&mut unit_a)?;
        a.add(ax, 1)?;
        a.jmp(unit_b)?;
        a.set_label(&mut unit_b)?;
        a.add(dx, 1)?;
        a.dec(cx)?;
        a.jnz(unit_a)?;
        a.cmp(si, 0)?;
        a.jne(done)?;
        a.inc(si)?;
        a.mov(byte_ptr(u32::from(b_ip) + 2).cs(), 5)?;
        a.jmp(again)?;
        a.set_label(&mut done)?;
        a.hlt()?;
        let res = a.assemble_options(
            0,
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )?;
        let ip = res.label_ip(&unit_b)? as u16;
        Ok((res.inner.code_buffer, ip))
    };
    let mut ip = 0x40;
    for _ in 0..4 {
        let (code, found) = build(ip).expect("guest assembles");
        if found == ip {
            let at = usize::from(ip);
            assert_eq!(&code[at..at + 3], &[0x83, 0xC2, 0x01], "add dx, imm8 at B");
            return code;
        }
        ip = found;
    }
    panic!("label address did not settle");
}

#[test]
fn jit_chained_fragments_follow_code_patched_under_them() {
    for engine in [Engine::Interp, Engine::Jit] {
        let mut m = Machine::flat(1 << 20).expect("machine");
        m.mem
            .load(GuestPhys(0x1_0000), &chain_then_patch())
            .expect("code fits");
        let mut vm = Vm::with_engine(m, engine).expect("engine");
        vm.cpu.seg[1] = x86bt_cpu::state::Segment::real(0x1000);
        vm.cpu.rip = 0;
        let out = vm.run(1_000_000);
        assert_eq!(out, RunOutcome::HaltedForever, "{engine:?}");
        assert_eq!(vm.cpu.gpr[0] & 0xFFFF, 2000, "{engine:?}: AX");
        assert_eq!(vm.cpu.gpr[2] & 0xFFFF, 6000, "{engine:?}: DX");
        if engine == Engine::Jit {
            let stats = vm.engine_stats().unwrap_or_default();
            assert!(!stats.contains(" 0 chained entries"), "{stats}");
        }
    }
}

/// A loop that stores into a variable on its own code page (1000 times: the
/// translator's fast TLB gets a write entry for a page holding code), then
/// points the same store at the immediate of its own `add dx, 1` and writes 5
/// there. The first patched iteration still adds 1 (the store comes after the
/// add), the other 999 add 5 (SDM vol. 3A §11.6: a write to code is seen by
/// the next fetch of it). Worked by hand: DX = 1000 + 1 + 999 * 5 = 5996.
fn store_beside_then_into_code() -> Vec<u8> {
    use iced_x86::code_asm::*;
    let build = |imm_at: u16, var_at: u16| -> Result<(Vec<u8>, u16, u16), IcedError> {
        let mut a = CodeAssembler::new(16)?;
        let mut top = a.create_label();
        let mut again = a.create_label();
        let mut done = a.create_label();
        let mut var = a.create_label();
        a.xor(dx, dx)?;
        a.xor(si, si)?;
        a.mov(bx, u32::from(var_at))?;
        a.set_label(&mut again)?;
        a.mov(cx, 1000u32)?;
        a.set_label(&mut top)?;
        a.add(dx, 1)?;
        a.mov(byte_ptr(bx), 5)?;
        a.dec(cx)?;
        a.jnz(top)?;
        a.cmp(si, 0)?;
        a.jne(done)?;
        a.inc(si)?;
        a.mov(bx, u32::from(imm_at))?;
        a.jmp(again)?;
        a.set_label(&mut done)?;
        a.hlt()?;
        a.set_label(&mut var)?;
        a.db(&[0])?;
        let res = a.assemble_options(
            0,
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )?;
        let top_ip = res.label_ip(&top)? as u16;
        let var_ip = res.label_ip(&var)? as u16;
        Ok((res.inner.code_buffer, top_ip + 2, var_ip))
    };
    let (mut imm, mut var) = (0x40, 0x80);
    for _ in 0..4 {
        let (code, i, v) = build(imm, var).expect("guest assembles");
        if (i, v) == (imm, var) {
            let at = usize::from(imm) - 2;
            assert_eq!(&code[at..at + 3], &[0x83, 0xC2, 0x01], "add dx, imm8");
            return code;
        }
        (imm, var) = (i, v);
    }
    panic!("label addresses did not settle");
}

#[test]
fn jit_store_beside_code_then_into_it_runs_the_patched_code() {
    for engine in [Engine::Interp, Engine::Jit, Engine::Lockstep] {
        let mut m = Machine::flat(1 << 20).expect("machine");
        m.mem
            .load(GuestPhys(0x1_0000), &store_beside_then_into_code())
            .expect("code fits");
        let mut vm = Vm::with_engine(m, engine).expect("engine");
        vm.cpu.seg[1] = x86bt_cpu::state::Segment::real(0x1000);
        vm.cpu.seg[3] = x86bt_cpu::state::Segment::real(0x1000);
        vm.cpu.rip = 0;
        let out = vm.run(1_000_000);
        assert_eq!(out, RunOutcome::HaltedForever, "{engine:?}");
        assert_eq!(vm.cpu.gpr[2] & 0xFFFF, 5996, "{engine:?}: DX");
    }
}

/// Lockstep compares the engines at one instruction boundary even when their
/// units end at different instructions: with the interpreter cut to one
/// instruction per unit, every longer translator unit is reached by running
/// the interpreter on, and nothing diverges (before, each such unit was
/// reported as a divergence of RIP and icount).
#[test]
fn lockstep_units_of_different_lengths_are_compared_at_one_boundary() {
    for w in x86bt::bench::workloads() {
        let mut vm = x86bt::bench::prepare(&w).expect("workload");
        vm.set_engine(Engine::Lockstep).expect("lockstep");
        vm.lockstep_reference_single_step(true);
        let out = vm.run(200_000);
        assert_eq!(out, RunOutcome::InstructionLimit, "{}", w.name);
        let stats = vm.engine_stats().unwrap_or_default();
        assert!(
            !stats.contains(" 0 run on to the translator's boundary"),
            "{}: {stats}",
            w.name
        );
    }
}

/// The instruction pointer is as wide as the code (SDM vol. 1 §3.5): after
/// `inc` at the last offset, 32-bit code goes on at EIP 0 and 16-bit code at
/// IP 0, which the CS limit allows. Two one-byte INCs end at the top of the
/// offset space and a HLT waits at offset 0; each engine must retire all three
/// (before, EIP became 0x100000000 and the next fetch faulted).
#[test]
fn instruction_pointer_wraps_at_the_code_size() {
    use x86bt_cpu::state::{sreg, Segment};
    for engine in [Engine::Interp, Engine::Jit, Engine::Lockstep] {
        for bits32 in [false, true] {
            let mut m = Machine::flat(1 << 20).expect("machine");
            // CS base 0x10000: offset 0 is linear 0x10000, the last offset
            // (0xFFFF or 0xFFFFFFFF) is linear 0x1FFFF or 0xFFFF (mod 2^32).
            let top = if bits32 { 0xFFFEu64 } else { 0x1_FFFE };
            m.mem.load(GuestPhys(top), &[0x40, 0x40]).expect("incs fit");
            m.mem.load(GuestPhys(0x1_0000), &[0xF4]).expect("hlt fits");
            let mut vm = Vm::with_engine(m, engine).expect("engine");
            if bits32 {
                vm.cpu.cr0 |= 1;
                vm.cpu.seg[sreg::CS] = Segment {
                    selector: 8,
                    attrs: 0xC09B,
                    limit: u32::MAX,
                    base: 0x1_0000,
                };
                vm.cpu.rip = 0xFFFF_FFFE;
            } else {
                vm.cpu.seg[sreg::CS] = Segment::real(0x1000);
                vm.cpu.rip = 0xFFFE;
            }
            let out = vm.run(1000);
            let what = format!("{engine:?}, {}-bit", if bits32 { 32 } else { 16 });
            assert_eq!(out, RunOutcome::HaltedForever, "{what}");
            assert_eq!(vm.cpu.gpr[0] & 0xFFFF, 2, "{what}: the two INCs ran");
            assert_eq!(vm.cpu.rip, 1, "{what}: after the HLT at offset 0");
            assert_eq!(vm.cpu.icount, 3, "{what}");
        }
    }
}

/// The random 64 KiB ROM of `seed` (xorshift64*, Vigna, one byte per step).
fn random_rom(seed: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..0x1_0000)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Random bytes as a 64 KiB BIOS image, run from the reset vector in real
/// mode under lockstep (the random-ROM fuzz of `docs/translator.md`, bounded
/// for CI): no divergence, panic or hang. Such ROMs found two classes, both
/// fixed: units of different lengths compared at different instructions (code
/// that writes into the zeroed RAM it runs from), and IP that did not wrap at
/// 0xFFFF. `X86BT_ROM_FUZZ=n` runs more ROMs, `X86BT_ROM_FIRST=s` from seed s.
#[test]
fn lockstep_random_rom_fuzz_finds_no_divergence() {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let roms = env("X86BT_ROM_FUZZ", 24);
    let first = env("X86BT_ROM_FIRST", 0);
    let mut caught_up = 0u64;
    let verbose = std::env::var_os("X86BT_ROM_VERBOSE").is_some();
    for seed in first..first + roms {
        let rom = random_rom(seed);
        let started = std::time::Instant::now();
        let mut vm = Vm::with_engine(pc_with_rom(rom), Engine::Lockstep).expect("lockstep");
        let out = vm.run(300_000);
        assert!(
            !matches!(out, RunOutcome::Divergence(_)),
            "ROM seed {seed}: {out:?}"
        );
        if verbose {
            eprintln!("seed {seed}: {:.2} s", started.elapsed().as_secs_f64());
        }
        let stats = vm.engine_stats().unwrap_or_default();
        caught_up += stats
            .split(", ")
            .find_map(|p| {
                p.strip_suffix(" run on to the translator's boundary")?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
    }
    eprintln!(
        "{roms} random ROMs (seeds {first}..{}) agree; {caught_up} units run on to a boundary",
        first + roms
    );
}

/// Random ROM seed 1774 (real mode): a unit with port I/O runs once, on the
/// translator with the real CPU state, whose fast TLB still held a write entry
/// for a page that had become code while lockstep's copies ran (they, not it,
/// saw the memory's epoch move). Its inline store into the code bytes at
/// 0xEC00 bypassed invalidation, and a stale unit ran later. The TLB now keeps
/// the epochs it was checked against itself.
#[test]
fn lockstep_io_unit_sees_pages_that_became_code_under_a_copy() {
    let seed = 1774u64;
    let rom = random_rom(seed);
    let mut vm = Vm::with_engine(pc_with_rom(rom), Engine::Lockstep).expect("lockstep");
    let out = vm.run(300_000);
    assert!(!matches!(out, RunOutcome::Divergence(_)), "{out:?}");
    assert!(
        vm.cpu.icount > 252_247,
        "ran past the unit that diverged: {out:?}"
    );
}

/// Random ROM seed 6568 (real mode): IVT entry 13 came to point at
/// 0000:FFFF, where every instruction crosses the CS limit, so each #GP's
/// delivery fetched a handler that raised #GP again, pushing a frame each time
/// (hardware loops so too). No instruction completed, and `icount` stood
/// still: the clock froze and the run never reached its limit, a host hang. A
/// fault raised before a unit's first instruction now counts as one, as a
/// fault inside an instruction does, and all three engines stop at the limit
/// in the same state.
#[test]
fn a_fault_storm_on_fetch_advances_the_clock() {
    let mut states = Vec::new();
    for engine in [Engine::Interp, Engine::Jit, Engine::Lockstep] {
        let mut vm = Vm::with_engine(pc_with_rom(random_rom(6568)), engine).expect("engine");
        let out = vm.run(300_000);
        assert_eq!(out, RunOutcome::InstructionLimit, "{engine:?}");
        assert_eq!(
            (vm.cpu.seg[x86bt_cpu::state::sreg::CS].selector, vm.cpu.rip),
            (0, 0xFFFF),
            "{engine:?}: in the #GP loop at 0000:FFFF"
        );
        states.push((vm.cpu.gpr, vm.cpu.rflags, vm.cpu.icount));
    }
    assert!(states.windows(2).all(|w| w[0] == w[1]), "{states:x?}");
}

/// Random ROM seed 8830 (real mode): a unit `dec cx; and byte [bx+si],0;
/// add [bx+si],al; pop bx; jg (o32) 0xffffffd2` whose Jcc, taken, leaves the
/// CS limit: the translator hands it to the helper to raise #GP, but the
/// not-taken side, emitted first, had already reset the count of the
/// instructions before it, so the helper ran with three of them uncounted.
/// The interpreter, run to the translator's (smaller) count, stopped three
/// instructions short.
#[test]
fn a_taken_branch_past_the_cs_limit_counts_the_instructions_before_it() {
    let mut vm =
        Vm::with_engine(pc_with_rom(random_rom(8830)), Engine::Lockstep).expect("lockstep");
    let out = vm.run(300_000);
    assert_eq!(out, RunOutcome::InstructionLimit);
}

/// Random ROM seed 1860 (real mode): at 0063:F9CD the translator ran a unit
/// of one instruction and ended plainly, and lockstep cut the interpreter's
/// two-instruction unit at that boundary, which ends it with an event; equal
/// states, so not a divergence.
#[test]
fn lockstep_accepts_an_event_from_a_unit_cut_at_the_translators_boundary() {
    let mut vm =
        Vm::with_engine(pc_with_rom(random_rom(1860)), Engine::Lockstep).expect("lockstep");
    let out = vm.run(300_000);
    assert!(!matches!(out, RunOutcome::Divergence(_)), "{out:?}");
    assert!(vm.cpu.icount > 195_795, "ran past the unit: {out:?}");
}

/// Emits one instruction (or a few) into a test program.
type Emit = fn(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>;

/// A flat 32-bit protected-mode machine (1 MiB) with `code` at 0x1000.
fn flat32(code: &[u8], engine: Engine) -> Vm {
    use x86bt_cpu::state::{sreg, Segment};
    let mut m = Machine::flat(1 << 20).expect("machine");
    m.mem.load(GuestPhys(0x1000), code).expect("code fits");
    let mut vm = Vm::with_engine(m, engine).expect("engine");
    vm.cpu.cr0 |= 1;
    let flat = |selector, attrs| Segment {
        selector,
        attrs,
        limit: u32::MAX,
        base: 0,
    };
    vm.cpu.seg[sreg::CS] = flat(8, 0xC09B);
    for s in [sreg::DS, sreg::ES, sreg::SS] {
        vm.cpu.seg[s] = flat(0x10, 0xC093);
    }
    vm.cpu.rip = 0x1000;
    vm.cpu.gpr[4] = 0x8_0000;
    vm
}

/// Shifts and rotates by CL whose flags are observed (by PUSHFD, and by a
/// store that follows, which needs exact flags): every count from 0 to 33,
/// after flags set three ways, for SHL, SHR, SAR, ROL and ROR on a 32-bit
/// register; and ROL and ROR by immediates above one, where OF is undefined. The translator runs them inline with a fix-up of the flags the
/// SDM leaves undefined; each result, flags image and following store must be
/// the interpreter's, and lockstep must agree unit by unit.
#[test]
fn shifts_by_cl_with_observed_flags_agree_with_interpreter() {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32).expect("assembler");
    let mut out = 0x4_0000u32;
    let ops: [Emit; 7] = [
        |a| a.shl(eax, cl),
        |a| a.shr(eax, cl),
        |a| a.sar(eax, cl),
        |a| a.rol(eax, cl),
        |a| a.ror(eax, cl),
        |a| a.rol(eax, 7),
        |a| a.ror(eax, 12),
    ];
    for op in ops {
        for count in 0..=33u32 {
            for (value, setup) in [(0x8000_0001u32, 0u32), (0x4000_0000, 1), (0xFFFF_FFFF, 2)] {
                a.mov(eax, value).unwrap();
                a.mov(ecx, count).unwrap();
                // Flags before the shift: all clear but PF, all set, mixed.
                match setup {
                    0 => a.xor(edx, edx).unwrap(),
                    1 => {
                        a.mov(edx, 0x8D5).unwrap();
                        a.push(edx).unwrap();
                        a.popfd().unwrap();
                    }
                    _ => a.cmp(eax, 0x7FFF_FFFF).unwrap(),
                }
                op(&mut a).unwrap();
                a.mov(dword_ptr(out), eax).unwrap();
                a.pushfd().unwrap();
                a.pop(edx).unwrap();
                a.mov(dword_ptr(out + 4), edx).unwrap();
                // ECX shifted by CL: the count is gone afterwards.
                a.mov(ebx, ecx).unwrap();
                a.shl(ecx, cl).unwrap();
                a.mov(dword_ptr(out + 8), ecx).unwrap();
                a.mov(ecx, ebx).unwrap();
                a.rol(ecx, cl).unwrap();
                a.mov(dword_ptr(out + 12), ecx).unwrap();
                a.pushfd().unwrap();
                a.pop(dword_ptr(out + 16)).unwrap();
                out += 24;
            }
        }
    }
    a.hlt().unwrap();
    let code = a.assemble(0x1000).expect("assembles");
    let window = |vm: &Vm| {
        let mut buf = vec![0u8; (out - 0x4_0000) as usize];
        vm.machine.mem.read_bytes(GuestPhys(0x4_0000), &mut buf);
        buf
    };
    let mut results = Vec::new();
    for engine in [Engine::Interp, Engine::Jit, Engine::Lockstep] {
        let mut vm = flat32(&code, engine);
        let outcome = vm.run(1_000_000);
        assert_eq!(outcome, RunOutcome::HaltedForever, "{engine:?}");
        results.push((engine, vm.cpu.icount, window(&vm)));
    }
    let (_, icount, reference) = &results[0];
    for (engine, n, w) in &results[1..] {
        assert_eq!(n, icount, "{engine:?}: instructions retired");
        if let Some(k) = (0..w.len())
            .step_by(24)
            .find(|&k| w[k..k + 24] != reference[k..k + 24])
        {
            panic!(
                "{engine:?}: case {} differs: {:02x?} against the interpreter's {:02x?}",
                k / 24,
                &w[k..k + 24],
                &reference[k..k + 24]
            );
        }
    }
    // The fix-up is what ran: the only helper calls of kind "other" are the
    // shifts and rotates of ECX by CL (two per case), which the fix-up cannot
    // take.
    let mut vm = flat32(&code, Engine::Jit);
    vm.run(1_000_000);
    let stats = vm.engine_stats().unwrap_or_default();
    let cases = 7 * 34 * 3;
    assert!(stats.contains(&format!("other {}", 2 * cases)), "{stats}");
}

/// DIV with a memory divisor (16- and 32-bit) and a register divisor, with
/// the flags set before it observed after it (the interpreter leaves them
/// alone): results, flags images and instruction counts must be the
/// interpreter's, and the translator must run every DIV inline.
#[test]
fn div_with_observed_flags_agrees_with_interpreter() {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32).expect("assembler");
    let divisor = 0x3_0000u32;
    let mut out = 0x4_0000u32;
    let cases = [
        (0u32, 100u32, 7u32),
        (3, 0xFFFF_FFFF, 0x1_0000),
        (0, 0, 1),
        (0x7FFF, 0x1234_5678, 0xFFFF_FFFF),
        (1, 0, 2),
    ];
    for (k, (hi, lo, d)) in cases.into_iter().enumerate() {
        for form in 0..3 {
            if form == 2 {
                // DIV m16: DX:AX by a non-zero word above DX.
                a.mov(dword_ptr(divisor), d & 0xFFFF | 1).unwrap();
                a.mov(edx, 0).unwrap();
            } else {
                a.mov(dword_ptr(divisor), d).unwrap();
                a.mov(edx, hi).unwrap();
            }
            a.mov(ebx, d).unwrap();
            a.mov(eax, lo).unwrap();
            // Flags before: from a CMP that sets them differently per case.
            a.cmp(eax, 0x1000_0000u32.wrapping_mul(k as u32 + 3))
                .unwrap();
            match form {
                0 => a.div(dword_ptr(divisor)).unwrap(),
                1 => a.div(ebx).unwrap(),
                _ => a.div(word_ptr(divisor)).unwrap(),
            }
            a.mov(dword_ptr(out), eax).unwrap();
            a.mov(dword_ptr(out + 4), edx).unwrap();
            a.pushfd().unwrap();
            a.pop(ecx).unwrap();
            a.mov(dword_ptr(out + 8), ecx).unwrap();
            out += 12;
        }
    }
    a.hlt().unwrap();
    let code = a.assemble(0x1000).expect("assembles");
    let window = |vm: &Vm| {
        let mut buf = vec![0u8; (out - 0x4_0000) as usize];
        vm.machine.mem.read_bytes(GuestPhys(0x4_0000), &mut buf);
        buf
    };
    let mut interp = flat32(&code, Engine::Interp);
    assert_eq!(interp.run(100_000), RunOutcome::HaltedForever);
    for engine in [Engine::Jit, Engine::Lockstep] {
        let mut vm = flat32(&code, engine);
        assert_eq!(vm.run(100_000), RunOutcome::HaltedForever, "{engine:?}");
        assert_eq!(vm.cpu.icount, interp.cpu.icount, "{engine:?}");
        assert_eq!(window(&vm), window(&interp), "{engine:?}");
        if engine == Engine::Jit {
            let stats = vm.engine_stats().unwrap_or_default();
            assert!(!stats.contains("mul/div "), "{stats}");
        }
    }
}

/// REP MOVS and REP STOS under paging, where the interpreter copies a page at
/// a time (`string::bulk`): unaligned runs whose elements straddle pages, an
/// overlapping copy, a fill, and a copy into a page that is not present (the
/// #PF handler maps it and the copy resumes). The oracle is the element loop
/// one iteration per step (`rep_single`); the element loop in batches (which
/// the interpreter runs when a debug register is armed: an instruction
/// breakpoint at an address never reached), the page runs and the translator
/// must leave the same memory (page tables' accessed and dirty bits
/// included), registers and instruction count. (The batched loop once lost
/// the iterations before a fault from the count.)
#[test]
fn rep_string_page_runs_equal_the_element_loop() {
    use iced_x86::code_asm::*;
    let (pd, pt, idt, gdt, log) = (
        0x1_0000u32,
        0x1_1000u32,
        0x1_2000u32,
        0x1_3000u32,
        0x1_4000u32,
    );
    let mut a = CodeAssembler::new(32).expect("assembler");
    let mut handler = a.create_label();
    let mut fill = a.create_label();
    a.lgdt(ptr(gdt + 0x100)).unwrap();
    a.lidt(ptr(idt + 0x800)).unwrap();
    a.mov(eax, pd).unwrap();
    a.mov(cr3, eax).unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, 0x8000_0000u32 as i32).unwrap();
    a.mov(cr0, eax).unwrap();
    // Source pattern at 0x20000..0x28000, by a plain loop.
    a.mov(ecx, 0x2000).unwrap();
    a.set_label(&mut fill).unwrap();
    a.mov(eax, ecx).unwrap();
    a.imul_3(eax, eax, 0x9E37_79B1u32 as i32).unwrap();
    a.mov(dword_ptr(ecx * 4 + 0x1_FFFC), eax).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(fill).unwrap();
    a.cld().unwrap();
    let runs: [(u32, u32, u32, Emit); 5] = [
        (0x2_0002, 0x3_0001, 0x1800, |a| a.rep().movsd()),
        (0x2_0000, 0x4_0F00, 0x3000, |a| a.rep().movsb()),
        (0, 0x5_0FFE, 0x1001, |a| a.rep().stosw()),
        (0, 0x6_0000, 0x2000, |a| a.rep().stosd()),
        (0x2_1000, 0x2_1004, 0x400, |a| a.rep().movsd()),
    ];
    for (k, (src, dst, count, op)) in runs.into_iter().enumerate() {
        a.mov(esi, src).unwrap();
        a.mov(edi, dst).unwrap();
        a.mov(ecx, count).unwrap();
        a.mov(eax, 0x1234_ABCDu32.rotate_left(k as u32)).unwrap();
        op(&mut a).unwrap();
        for (n, r) in [esi, edi, ecx].into_iter().enumerate() {
            a.mov(dword_ptr(log + 0x100 + 16 * k as u32 + 4 * n as u32), r)
                .unwrap();
        }
    }
    a.hlt().unwrap();
    // #PF: log CR2, ECX, ESI and EDI, map the page, return to the copy.
    a.set_label(&mut handler).unwrap();
    a.add(esp, 4).unwrap();
    a.push(eax).unwrap();
    a.push(ebx).unwrap();
    a.mov(ebx, dword_ptr(log)).unwrap();
    a.shl(ebx, 4).unwrap();
    a.mov(eax, cr2).unwrap();
    a.mov(dword_ptr(ebx + log + 0x10), eax).unwrap();
    a.mov(dword_ptr(ebx + log + 0x14), ecx).unwrap();
    a.mov(dword_ptr(ebx + log + 0x18), esi).unwrap();
    a.mov(dword_ptr(ebx + log + 0x1C), edi).unwrap();
    a.inc(dword_ptr(log)).unwrap();
    a.shr(eax, 12).unwrap();
    a.or(dword_ptr(eax * 4 + pt), 1).unwrap();
    a.mov(eax, cr2).unwrap();
    a.invlpg(ptr(eax)).unwrap();
    a.pop(ebx).unwrap();
    a.pop(eax).unwrap();
    a.iretd().unwrap();
    let handler_at = {
        let r = a
            .assemble_options(
                0x1000,
                iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .expect("assembles");
        r.label_ip(&handler).expect("handler")
    };
    let code = a.assemble(0x1000).expect("assembles");
    let setup = |vm: &mut Vm| {
        let mem = &mut vm.machine.mem;
        // Identity map of the first MiB, writable; page 0x41 not present.
        mem.load(GuestPhys(u64::from(pd)), &(pt | 3).to_le_bytes())
            .unwrap();
        for p in 0..256u32 {
            let pte = p << 12 | if p == 0x41 { 2 } else { 3 };
            mem.load(GuestPhys(u64::from(pt + 4 * p)), &pte.to_le_bytes())
                .unwrap();
        }
        // #PF: a 32-bit interrupt gate to the handler through selector 8.
        let h = handler_at as u32;
        let gate =
            (u64::from(h >> 16) << 48) | (0x8E00u64 << 32) | (8u64 << 16) | u64::from(h & 0xFFFF);
        mem.load(GuestPhys(u64::from(idt + 14 * 8)), &gate.to_le_bytes())
            .unwrap();
        let mut idtr = 0x7FFu16.to_le_bytes().to_vec();
        idtr.extend_from_slice(&idt.to_le_bytes());
        mem.load(GuestPhys(u64::from(idt + 0x800)), &idtr).unwrap();
        for (i, d) in [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF]
            .into_iter()
            .enumerate()
        {
            mem.load(GuestPhys(u64::from(gdt) + 8 * i as u64), &d.to_le_bytes())
                .unwrap();
        }
        let mut gdtr = 0x17u16.to_le_bytes().to_vec();
        gdtr.extend_from_slice(&gdt.to_le_bytes());
        mem.load(GuestPhys(u64::from(gdt + 0x100)), &gdtr).unwrap();
    };
    // The element loop two ways: one iteration per step (`rep_single`), and
    // whole batches with a debug register armed.
    let run = |engine: Engine, element_loop: Option<bool>| {
        let mut vm = flat32(&code, engine);
        setup(&mut vm);
        match element_loop {
            Some(true) => vm.cpu.rep_single = true,
            Some(false) => {
                vm.cpu.dr[0] = 0xFFFF_F000;
                vm.cpu.dr[7] = 1;
            }
            None => {}
        }
        assert_eq!(vm.run(10_000_000), RunOutcome::HaltedForever, "{engine:?}");
        let mut mem = vec![0u8; 1 << 20];
        vm.machine.mem.read_bytes(GuestPhys(0), &mut mem);
        (vm.cpu.icount, vm.cpu.gpr, mem)
    };
    let oracle = run(Engine::Interp, Some(true));
    let faults = u32::from_le_bytes(oracle.2[log as usize..log as usize + 4].try_into().unwrap());
    assert_eq!(faults, 1, "the copy into page 0x41 faulted once");
    for (engine, element_loop, what) in [
        (Engine::Interp, Some(false), "element loop in batches"),
        (Engine::Interp, None, "page runs"),
        (Engine::Jit, None, "jit"),
    ] {
        let got = run(engine, element_loop);
        assert_eq!(got.0, oracle.0, "{what}: instructions");
        assert_eq!(got.1, oracle.1, "{what}: registers");
        if let Some(i) = (0..got.2.len()).find(|&i| got.2[i] != oracle.2[i]) {
            panic!(
                "{what}: memory differs first at {i:#x}: {:#x} against {:#x}",
                got.2[i], oracle.2[i]
            );
        }
    }
}

/// CLI, STI, PUSHF and POPF go on inside their unit when they make no
/// interrupt deliverable and set no TF (no interrupt is pending in the
/// benchmark kernels' loops): the cli-sti and pushf-popf loops run as
/// chained fragments, where each of their instructions used to end a unit
/// and return to the run loop. Interp, jit and lockstep pass the kernels'
/// own checks with the same instruction count.
#[test]
fn flag_instructions_go_on_inside_their_unit() {
    use x86bt::bench_kernels::{self as bk, BenchKernel, Workload};
    let iters = 20_000;
    for w in [Workload::CliSti, Workload::PushfPopf] {
        let image = BenchKernel::new(w).image(iters);
        let mut counts = Vec::new();
        for engine in [Engine::Interp, Engine::Jit, Engine::Lockstep] {
            let run = bk::run_x86bt(&image, engine).expect("kernel loads");
            assert_eq!(
                run.outcome,
                RunOutcome::DebugExit(bk::PASS_STATUS),
                "{} under {engine:?}",
                w.name()
            );
            counts.push(run.vm.cpu.icount);
            if engine == Engine::Jit {
                let stats = run.vm.engine_stats().unwrap_or_default();
                let events: u64 = stats
                    .split("event ")
                    .nth(1)
                    .map(|s| {
                        s.chars()
                            .take_while(char::is_ascii_digit)
                            .collect::<String>()
                    })
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{}: no event count in {stats}", w.name()));
                assert!(
                    events < u64::from(iters) / 10,
                    "{}: {events} event exits for {iters} pairs\n{stats}",
                    w.name()
                );
            }
        }
        assert!(
            counts.windows(2).all(|c| c[0] == c[1]),
            "{}: {counts:?}",
            w.name()
        );
    }
}

/// Self-loops whose closing CMP leaves its flags to the Jcc alone: the
/// translator captures them only on the loop's ways out, running the CMP again
/// where the instruction budget stops the loop (`Emitter::defers_capture`).
/// Stopped by the budget at many points inside each loop, the translator's
/// registers, flags, RIP and count must be the interpreter's. The loops: a
/// byte scan whose CMP reads memory (its flags differ from byte to byte), and
/// a counter whose CMP compares registers (a JB, which reads CF).
#[test]
fn self_loops_stopped_by_the_budget_leave_the_loops_flags() {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32).expect("assembler");
    let mut scan = a.create_label();
    let mut count = a.create_label();
    a.mov(eax, 0x1_FFFFu32).unwrap();
    a.set_label(&mut scan).unwrap();
    a.add(eax, 1).unwrap();
    a.cmp(byte_ptr(eax), 0x80).unwrap();
    a.jne(scan).unwrap();
    a.mov(ecx, 3u32).unwrap();
    a.mov(ebx, 40_000u32).unwrap();
    a.set_label(&mut count).unwrap();
    a.add(ecx, 7).unwrap();
    a.mov(edx, ecx).unwrap();
    a.cmp(edx, ebx).unwrap();
    a.jb(count).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).expect("assembles");
    // 3000 bytes that are not 0x80, of every sign and size, then 0x80.
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut data: Vec<u8> = (0..3000)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            match (s >> 24) as u8 {
                0x80 => 0x7F,
                b => b,
            }
        })
        .collect();
    data.push(0x80);
    let scan_insns = 3 * 3000;
    let state = |engine, budget: u64| {
        let mut vm = flat32(&code, engine);
        vm.machine
            .mem
            .load(GuestPhys(0x2_0000), &data)
            .expect("data fits");
        let out = vm.run(budget);
        (out, vm.cpu.gpr, vm.cpu.rflags, vm.cpu.rip, vm.cpu.icount)
    };
    let mut stops = 0;
    for budget in (5..scan_insns + 3 * 6000).step_by(997).chain(3..40) {
        let want = state(Engine::Interp, budget);
        assert_eq!(want.0, RunOutcome::InstructionLimit, "budget {budget}");
        let got = state(Engine::Jit, budget);
        assert_eq!(got, want, "budget {budget}: jit (left) against interp");
        stops += 1;
    }
    assert!(stops > 40);
}

/// A partition loop (quicksort's inner loop) whose first unit, `mov edx,
/// [mem]; cmp edx, esi; jae`, goes either way to code that replaces the flags
/// first (`plan::flags_dead_at`): the translator leaves the CMP's flags
/// uncaptured on both chained ways and runs it again where a way leaves for
/// the run loop (`Emitter::not_taken_flags`, `Emitter::side`). Stopped by the
/// budget at many points, the translator's registers, flags, RIP, count and
/// array must be the interpreter's.
#[test]
fn ways_into_code_that_replaces_the_flags_leave_them_exact() {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32).expect("assembler");
    let mut top = a.create_label();
    let mut skip = a.create_label();
    a.mov(esi, 0x8000_0000u32).unwrap();
    a.xor(eax, eax).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.mov(ebp, 3000u32).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(edx, dword_ptr(eax * 4 + 0x2_0000)).unwrap();
    a.cmp(edx, esi).unwrap();
    a.jae(skip).unwrap();
    a.mov(ecx, ebx).unwrap();
    a.add(ebx, 1).unwrap();
    a.mov(edi, dword_ptr(ecx * 4 + 0x2_0000)).unwrap();
    a.mov(dword_ptr(ecx * 4 + 0x2_0000), edx).unwrap();
    a.mov(dword_ptr(eax * 4 + 0x2_0000), edi).unwrap();
    a.set_label(&mut skip).unwrap();
    a.add(eax, 1).unwrap();
    a.cmp(ebp, eax).unwrap();
    a.jg(top).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).expect("assembles");
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..3000)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 16) as u32).to_le_bytes()
        })
        .collect();
    let state = |engine, budget: u64| {
        let mut vm = flat32(&code, engine);
        vm.machine
            .mem
            .load(GuestPhys(0x2_0000), &data)
            .expect("data fits");
        let out = vm.run(budget);
        let mut array = vec![0u8; data.len()];
        vm.machine.mem.read_bytes(GuestPhys(0x2_0000), &mut array);
        (
            out,
            vm.cpu.gpr,
            vm.cpu.rflags,
            vm.cpu.rip,
            vm.cpu.icount,
            array,
        )
    };
    let mut stops = 0;
    for budget in (5..20_000).step_by(211).chain(4..60) {
        let want = state(Engine::Interp, budget);
        assert_eq!(want.0, RunOutcome::InstructionLimit, "budget {budget}");
        let got = state(Engine::Jit, budget);
        let regs =
            |s: &(RunOutcome, [u64; 16], u64, u64, u64, Vec<u8>)| (s.0.clone(), s.1, s.2, s.3, s.4);
        assert_eq!(
            regs(&got),
            regs(&want),
            "budget {budget}: jit (left) against interp"
        );
        assert!(got.5 == want.5, "budget {budget}: the arrays differ");
        stops += 1;
    }
    assert!(stops > 100);
}

/// A copy loop `mov edx, [ecx]; add ecx, 4; cmp ecx, ebx; jne` leaves the
/// compare's flags uncaptured on its way back, which runs a copy of the load
/// whose out-of-line paths run the compare again (`plan::loop_prefix`). The
/// load faults on a later trip, so the #GP frame must hold the CMP's flags:
/// 0x30000 - 0x40000 sets CF, PF and SF. DS has a limit, so every load goes
/// through the helper, which raises #GP(0) past it.
///
/// The second loop, `mov edx, [ecx*4]; inc ecx; cmp ecx, ebx; jne` (the
/// 32-bit copy loop's shape), joins the body at the INC, which keeps CF: the
/// compare after it replaces the rest before anything reads them. It faults
/// at ECX = 0xC000: 0xC000 - 0x10000 sets CF, PF and SF too.
#[test]
fn a_fault_at_a_loops_start_pushes_the_closing_compares_flags() {
    fault_at_a_loops_start(false);
    fault_at_a_loops_start(true);
}

fn fault_at_a_loops_start(inc: bool) {
    use iced_x86::code_asm::*;
    let run = |engine| {
        run_to_gp_frame(
            |a| {
                let mut top = a.create_label();
                if inc {
                    a.mov(ebx, 0x1_0000u32)?;
                    a.mov(ecx, 0xBF00u32)?;
                    a.set_label(&mut top)?;
                    a.mov(edx, dword_ptr(ecx * 4))?;
                    a.inc(ecx)?;
                } else {
                    a.mov(ebx, 0x4_0000u32)?;
                    a.mov(ecx, 0x2_FF00u32)?;
                    a.set_label(&mut top)?;
                    a.mov(edx, dword_ptr(ecx))?;
                    a.add(ecx, 4)?;
                }
                a.cmp(ecx, ebx)?;
                a.jne(top)?;
                a.hlt()
            },
            engine,
        )
    };
    let want = run(Engine::Interp);
    assert_eq!(want.0, RunOutcome::HaltedForever);
    let at_fault = if inc { 0xC000 } else { 0x3_0000 };
    assert_eq!(want.2[1], at_fault, "ECX at the fault");
    assert_eq!(want.3 & 0x8D5, 0x85, "EFLAGS image {:#x}", want.3);
    assert_eq!(run(Engine::Jit), want);
    assert_eq!(run(Engine::Lockstep), want);
}

/// The 32-bit strlen loop, `inc ecx; cmp byte [ecx], 0; jne`, run into the
/// end of DS (limit 0x2FFFF, every byte 0x57): the CMP past the limit raises
/// #GP. The translator captures neither the INC's flags (its out-of-line
/// paths compute them again, CF from R14: `plan::remats`) nor the CMP's on
/// the way back (it clears CF, the one flag live at the loop's start, in R14:
/// `plan::cleared_flags`). The frame's EFLAGS are those after `inc ecx` from
/// 0x2FFFF, worked out from the SDM: OF, SF and ZF clear, AF set (the low
/// nibble carries), PF set (low byte 0x00), and CF the last CMP's, clear,
/// though STC set it before the loop.
#[test]
fn a_fault_in_a_strlen_loop_pushes_the_incs_flags_and_the_compares_cf() {
    use iced_x86::code_asm::*;
    let run = |engine| {
        run_to_gp_frame(
            |a| {
                let mut top = a.create_label();
                a.mov(ecx, 0x2_FE00u32)?;
                a.stc()?;
                // The loop is a unit of its own, entered with CF set.
                a.jmp(top)?;
                a.set_label(&mut top)?;
                a.inc(ecx)?;
                a.cmp(byte_ptr(ecx), 0)?;
                a.jne(top)?;
                a.hlt()
            },
            engine,
        )
    };
    let want = run(Engine::Interp);
    assert_eq!(want.0, RunOutcome::HaltedForever);
    assert_eq!(want.2[1], 0x3_0000, "ECX at the fault");
    assert_eq!(want.3 & 0x8D5, 0x14, "EFLAGS image {:#x}", want.3);
    assert_eq!(run(Engine::Jit), want);
    assert_eq!(run(Engine::Lockstep), want);
}

/// A load that faults after an ADD whose flags only its out-of-line path
/// needs: the translator leaves the ADD's capture out and computes its flags
/// again there (`plan::remats`), so the #GP frame's EFLAGS must be the
/// interpreter's. DS has a limit, which the inline check refuses, so the
/// load runs through the helper, which raises #GP(0) past the limit; the
/// handler stores the EFLAGS image from its frame and halts.
#[test]
fn a_fault_after_an_uncaptured_add_pushes_its_flags() {
    use iced_x86::code_asm::*;
    let run = |engine| {
        run_to_gp_frame(
            |a| {
                let mut top = a.create_label();
                a.mov(ebx, 0x100u32)?;
                a.mov(ecx, 0x2_F000u32)?;
                a.set_label(&mut top)?;
                a.add(ecx, ebx)?;
                a.mov(edx, dword_ptr(ecx))?;
                a.add(edx, 1)?;
                a.jmp(top)
            },
            engine,
        )
    };
    let want = run(Engine::Interp);
    assert_eq!(want.0, RunOutcome::HaltedForever);
    // ADD's flags at the fault: 0x2FF00 + 0x100 = 0x30000, PF set (the
    // last ADD EDX, 1 made 0x57575758, PF clear: stale flags would show).
    assert_eq!(want.3 & 0x8D5, 0x04, "EFLAGS image {:#x}", want.3);
    assert_eq!(run(Engine::Jit), want);
    assert_eq!(run(Engine::Lockstep), want);
}

/// Runs 32-bit code `body` (assembled at 0x1000 and followed by a #GP handler
/// that stores the EFLAGS image of its frame at 0x5000 and halts) on
/// `engine`, with DS limited to 0x2FFFF and bytes 0x57 at 0x20000..0x30000:
/// the outcome, icount, GPRs and the stored image.
fn run_to_gp_frame(
    body: impl Fn(&mut iced_x86::code_asm::CodeAssembler) -> Result<(), iced_x86::IcedError>,
    engine: Engine,
) -> (RunOutcome, u64, [u64; 16], u32) {
    use iced_x86::code_asm::*;
    use x86bt_cpu::state::{sreg, Segment, TableReg};
    let mut a = CodeAssembler::new(32).expect("assembler");
    let mut handler = a.create_label();
    body(&mut a).expect("body assembles");
    a.set_label(&mut handler).unwrap();
    a.mov(eax, dword_ptr(esp + 12)).unwrap();
    a.mov(dword_ptr(0x5000), eax).unwrap();
    a.hlt().unwrap();
    let res = a
        .assemble_options(
            0x1000,
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .expect("assembles");
    let at = res.label_ip(&handler).expect("handler") as u32;
    let mut vm = flat32(&res.inner.code_buffer, engine);
    let gdt: [u64; 3] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
    let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    vm.machine.mem.load(GuestPhys(0x3000), &gdt).expect("gdt");
    let gate =
        u64::from(at & 0xFFFF) | 8 << 16 | 0x8E00u64 << 32 | u64::from(at & 0xFFFF_0000) << 32;
    vm.machine
        .mem
        .load(GuestPhys(0x3800 + 13 * 8), &gate.to_le_bytes())
        .expect("idt");
    vm.machine
        .mem
        .load(GuestPhys(0x2_0000), &[0x57; 0x1_0000])
        .expect("data");
    vm.cpu.gdtr = TableReg {
        base: 0x3000,
        limit: 23,
    };
    vm.cpu.idtr = TableReg {
        base: 0x3800,
        limit: 0x7FF,
    };
    vm.cpu.seg[sreg::DS] = Segment {
        selector: 0x10,
        attrs: 0x4093,
        limit: 0x2_FFFF,
        base: 0,
    };
    let out = vm.run(100_000);
    let mut frame = [0u8; 4];
    vm.machine.mem.read_bytes(GuestPhys(0x5000), &mut frame);
    (out, vm.cpu.icount, vm.cpu.gpr, u32::from_le_bytes(frame))
}

/// One load instruction reads a dword at three addresses on linear page
/// 0x50, then at 0x4FFFE, whose first two bytes are on page 0x4F. The two
/// pages map to physical pages 0x90 and 0x70, not adjacent, and the physical
/// page before 0x70 holds other bytes. The crossing read must take its first
/// half from physical 0x90FFE and its second from 0x70000: the expected
/// values are worked out here from the page table, and the interpreter must
/// give them too. (The translator's predicted fast-TLB entry, the page of the
/// access's last byte, once matched the crossing read and took its bytes
/// from the host memory before page 0x70's.)
#[test]
fn a_load_that_crosses_into_its_last_page_reads_both_pages() {
    use iced_x86::code_asm::*;
    let (pd, pt, log) = (0x1_0000u32, 0x1_1000u32, 0x2_0000u32);
    let mut a = CodeAssembler::new(32).expect("assembler");
    let mut top = a.create_label();
    a.mov(eax, pd).unwrap();
    a.mov(cr3, eax).unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, 0x8000_0000u32 as i32).unwrap();
    a.mov(cr0, eax).unwrap();
    a.mov(esi, 0x5_0004).unwrap();
    a.mov(edi, log).unwrap();
    a.mov(ecx, 4).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(eax, dword_ptr(esi)).unwrap();
    a.mov(dword_ptr(edi), eax).unwrap();
    a.add(edi, 4).unwrap();
    a.sub(esi, 2).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).expect("assembles");
    let byte = |phys: u32| (phys.wrapping_mul(0x9E37_79B1) >> 24) as u8;
    let run = |engine: Engine| {
        let mut vm = flat32(&code, engine);
        let mem = &mut vm.machine.mem;
        mem.load(GuestPhys(u64::from(pd)), &(pt | 3).to_le_bytes())
            .unwrap();
        for p in 0..256u32 {
            let frame = match p {
                0x4F => 0x90,
                0x50 => 0x70,
                _ => p,
            };
            mem.load(
                GuestPhys(u64::from(pt + 4 * p)),
                &(frame << 12 | 3).to_le_bytes(),
            )
            .unwrap();
        }
        for phys in (0x6_F000..0x7_1000).chain(0x9_0000..0x9_1000) {
            mem.load(GuestPhys(u64::from(phys)), &[byte(phys)]).unwrap();
        }
        assert_eq!(vm.run(1_000_000), RunOutcome::HaltedForever, "{engine:?}");
        let mut got = [0u8; 16];
        vm.machine
            .mem
            .read_bytes(GuestPhys(u64::from(log)), &mut got);
        got
    };
    let dword = |phys: [u32; 4]| phys.map(byte);
    let want: Vec<u8> = [
        dword([0x7_0004, 0x7_0005, 0x7_0006, 0x7_0007]),
        dword([0x7_0002, 0x7_0003, 0x7_0004, 0x7_0005]),
        dword([0x7_0000, 0x7_0001, 0x7_0002, 0x7_0003]),
        dword([0x9_0FFE, 0x9_0FFF, 0x7_0000, 0x7_0001]),
    ]
    .concat();
    for engine in [Engine::Interp, Engine::Jit] {
        assert_eq!(run(engine).to_vec(), want, "{engine:?}");
    }
}
