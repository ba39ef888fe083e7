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
            assert_eq!(RunOutcome::Divergence(r).exit_status(), 123);
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
