//! The C workloads of `x86bt bench --native` (`bench/c/`) build with gcc and
//! compute the right answers: under x86bt's interpreter and translator (32-
//! and 64-bit kernels), on the host (the host programs, whose answers are
//! compared with the Rust references of the assembly kernels), and under QEMU
//! when it is installed. Each kernel and host program checks its own answer
//! against a reference computed in C by another method; these tests add the
//! cross-checks. No timing here.
//!
//! Without gcc the tests say SKIPPED and pass, except under CI=1, where
//! scripts/setup.sh installs gcc and they must run.

use std::sync::OnceLock;
use x86bt::bench_kernels::{self as bk, Workload as AsmWorkload};
use x86bt::bench_native::{self as bn, Arch, Programs};
use x86bt::cli::Engine;
use x86bt::RunOutcome;

/// Iterations per run: enough to repeat the loop, few enough to be quick.
const ITERS: u32 = 2;

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("1")
}

/// The built programs, or `None` after saying why the tests are skipped.
fn programs() -> Option<&'static Programs> {
    static BUILT: OnceLock<Result<Programs, String>> = OnceLock::new();
    match BUILT.get_or_init(|| bn::build().map_err(|e| e.to_string())) {
        Ok(p) => Some(p),
        Err(e) if e.contains("not on PATH") && !ci() => {
            eprintln!("SKIPPED: {e}; the native workload checks did not run");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn debug_exit(value: i32) -> RunOutcome {
    RunOutcome::DebugExit(value << 1 | 1)
}

/// Guest instructions of `w` for `iters` iterations on `engine`, after
/// checking that the kernel passed.
fn x86bt_icount(image: &[u8], arch: Arch, w: bn::Workload, iters: u32, engine: Engine) -> u64 {
    let run = bn::run_x86bt(image, w, iters, engine).expect("kernel loads");
    assert_eq!(
        run.outcome,
        debug_exit(bn::HOST_PASS),
        "{}-bit {} under {engine:?}: stopped at {:#x} after {} instructions",
        arch.bits(),
        w.name,
        run.vm.cpu.rip,
        run.vm.icount()
    );
    run.vm.icount()
}

#[test]
fn native_kernels_pass_under_both_engines_with_equal_counts() {
    let Some(p) = programs() else { return };
    for arch in Arch::ALL {
        let image = p.kernel_image(arch).expect("kernel built");
        for w in bn::WORKLOADS {
            let mut per_iter = Vec::new();
            for engine in [Engine::Interp, Engine::Jit] {
                let one = x86bt_icount(&image, arch, w, 1, engine);
                let more = x86bt_icount(&image, arch, w, 1 + ITERS, engine);
                assert_eq!(
                    (more - one) % u64::from(ITERS),
                    0,
                    "{}-bit {}: iterations retire different counts",
                    arch.bits(),
                    w.name
                );
                per_iter.push((more - one) / u64::from(ITERS));
            }
            assert_eq!(
                per_iter[0],
                per_iter[1],
                "{}-bit {}: instructions per iteration, interp vs jit",
                arch.bits(),
                w.name
            );
        }
    }
}

#[test]
fn native_kernel_unknown_workload_exits_bad_args() {
    let Some(p) = programs() else { return };
    let image = p.kernel_image(Arch::X86_64).expect("kernel built");
    let vm = bk::prepare_multiboot(&image, "workload=nonesuch iters=1", 1, Engine::Interp)
        .expect("kernel loads");
    assert_eq!(bk::time_run(vm).outcome, debug_exit(0x13));
}

/// The host programs' answers: every workload passes its own check, 32-bit
/// and 64-bit builds agree, and the five workloads the assembly kernels share
/// give the answers src/bench_kernels.rs computes in Rust.
#[test]
fn host_programs_pass_and_match_the_rust_references() {
    let Some(p) = programs() else { return };
    let shared = [
        ("sieve", AsmWorkload::Sieve),
        ("crc32", AsmWorkload::Crc32),
        ("memcpy", AsmWorkload::Memcpy),
        ("strlen", AsmWorkload::Strlen),
        ("qsort", AsmWorkload::Qsort),
    ];
    for w in bn::WORKLOADS {
        let results: Vec<u32> = Arch::ALL
            .into_iter()
            .map(|arch| {
                let run = bn::run_host(p, arch, w, ITERS).expect("host program runs");
                assert!(
                    run.passed(),
                    "{}-bit host {}: {:?} {}",
                    arch.bits(),
                    w.name,
                    run.status,
                    run.stdout
                );
                assert!(run.secs.is_some(), "no time in {:?}", run.stdout);
                run.result.expect("a result")
            })
            .collect();
        assert_eq!(results[0], results[1], "{}: 32-bit vs 64-bit", w.name);
        if let Some((_, asm)) = shared.iter().find(|(n, _)| *n == w.name) {
            assert_eq!(results[0], asm.expected(ITERS), "{}", w.name);
        }
    }
}

/// QEMU, or `None` after saying why the QEMU checks are skipped (a failure
/// under CI=1, where QEMU must be installed).
fn qemu(arch: Arch) -> Option<std::path::PathBuf> {
    let q = bk::find_on_path(arch.qemu_binary());
    if q.is_none() {
        assert!(
            !ci(),
            "{} is not on PATH, and CI=1 requires it",
            arch.qemu_binary()
        );
        eprintln!(
            "SKIPPED: {} is not on PATH; the QEMU checks did not run",
            arch.qemu_binary()
        );
    }
    q
}

#[test]
fn native_kernels_pass_under_qemu() {
    let Some(p) = programs() else { return };
    std::thread::scope(|s| {
        for arch in Arch::ALL {
            let Some(q) = qemu(arch) else { continue };
            for w in bn::WORKLOADS {
                let q = q.clone();
                s.spawn(move || {
                    let run = bn::run_qemu(&q, p, arch, w, ITERS).expect("qemu runs");
                    assert!(
                        run.passed(),
                        "{}-bit {} under QEMU: status {:?}: {}",
                        arch.bits(),
                        w.name,
                        run.status,
                        run.stderr
                    );
                });
            }
        }
    });
}
