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
    pc::build(PcConfig {
        ram_bytes: 16 << 20,
        bios: Some(rom),
        serial_out: Box::new(std::io::sink()),
        serial_in: None,
        debugcon: Box::new(std::io::sink()),
        post: None,
        rtc_base_unix: 0,
        cpus: 1,
        extra_devices: Vec::new(),
        storage: Default::default(),
    })
    .expect("PC with the generated ROM")
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
        let mut m = pc::build(PcConfig {
            ram_bytes: 16 << 20,
            bios: None,
            serial_out: Box::new(std::io::sink()),
            serial_in: None,
            debugcon: Box::new(std::io::sink()),
            post: None,
            rtc_base_unix: 0,
            cpus: 1,
            extra_devices: Vec::new(),
            storage: Default::default(),
        })
        .expect("PC");
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
