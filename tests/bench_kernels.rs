//! The benchmark kernels of `x86bt bench` compute the right answers: under the
//! interpreter, checked against guest memory and against answers computed here
//! in plain Rust, and under `qemu-system-i386 -accel tcg` when it is installed
//! (each kernel checks its own answer, so QEMU's exit status says it all).
//! No timing here: the benchmarks measure, the tests only check.

use x86bt::bench_kernels::{self as bk, layout, BenchKernel, Workload, X86btRun, UNROLL};
use x86bt::cli::Engine;
use x86bt::RunOutcome;
use x86bt_machine::GuestPhys;

/// Iterations per test run: enough to repeat the loop, small enough to be quick.
fn test_iters(w: Workload) -> u32 {
    match w.kind() {
        bk::Kind::Compute => 2,
        bk::Kind::Event => 100,
    }
}

fn run_interp(w: Workload, iters: u32) -> X86btRun {
    let k = BenchKernel::new(w);
    bk::run_x86bt(&k.image(iters), Engine::Interp).expect("kernel loads")
}

fn bytes(run: &X86btRun, addr: u32, len: u32) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    run.vm
        .machine
        .mem
        .read_bytes(GuestPhys(u64::from(addr)), &mut buf);
    buf
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) one bit at a time.
fn crc32_bitwise(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let lsb = crc & 1;
            crc >>= 1;
            if lsb != 0 {
                crc ^= 0xEDB8_8320;
            }
        }
    }
    !crc
}

fn assert_passed(w: Workload, run: &X86btRun) {
    assert_eq!(
        run.outcome,
        RunOutcome::DebugExit(bk::PASS_STATUS),
        "{}: result {:#x}, expected {:#x}, stopped at {:#x}",
        w.name(),
        run.read32(layout::RESULT),
        run.read32(layout::EXPECTED),
        run.vm.cpu.rip
    );
}

#[test]
fn crc32_bitwise_known_vector_matches() {
    assert_eq!(crc32_bitwise(b"123456789"), 0xCBF4_3926);
}

#[test]
fn sieve_interp_counts_1899_primes() {
    let run = run_interp(Workload::Sieve, 3);
    assert_passed(Workload::Sieve, &run);
    assert_eq!(run.read32(layout::RESULT), 1899);
    let flags = bytes(&run, layout::SIEVE, layout::SIEVE_LEN);
    assert_eq!(flags.iter().filter(|&&f| f == 1).count(), 1899);
}

#[test]
fn crc32_interp_matches_bitwise_crc() {
    let run = run_interp(Workload::Crc32, 2);
    assert_passed(Workload::Crc32, &run);
    let src = bytes(&run, layout::SRC, layout::SRC_LEN);
    assert_eq!(run.read32(layout::RESULT), crc32_bitwise(&src));
}

#[test]
fn memcpy_interp_copies_the_buffer() {
    let run = run_interp(Workload::Memcpy, 2);
    assert_passed(Workload::Memcpy, &run);
    let src = bytes(&run, layout::SRC, layout::SRC_LEN);
    assert!(src.iter().any(|&b| b != 0), "source is not all zeros");
    assert_eq!(bytes(&run, layout::DST, layout::SRC_LEN), src);
}

#[test]
fn strlen_interp_finds_the_nul() {
    let run = run_interp(Workload::Strlen, 2);
    assert_passed(Workload::Strlen, &run);
    let s = bytes(&run, layout::STRING, layout::STRING_LEN + 1);
    let len = s.iter().position(|&b| b == 0).expect("NUL") as u32;
    assert_eq!(len, layout::STRING_LEN);
    assert_eq!(run.read32(layout::RESULT), len);
}

#[test]
fn qsort_interp_sorts_the_lcg_array() {
    let run = run_interp(Workload::Qsort, 2);
    assert_passed(Workload::Qsort, &run);
    let out: Vec<u32> = bytes(&run, layout::QSORT, layout::QSORT_LEN * 4)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(out.windows(2).all(|w| w[0] <= w[1]), "not sorted");
    let mut x = bk::QSORT_SEED;
    let mut want: Vec<u32> = (0..layout::QSORT_LEN)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            x
        })
        .collect();
    want.sort_unstable();
    assert_eq!(out, want, "not a permutation of the input");
}

#[test]
fn event_kernels_interp_count_every_event() {
    for w in Workload::ALL
        .into_iter()
        .filter(|w| w.kind() == bk::Kind::Event)
    {
        let n = test_iters(w);
        let run = run_interp(w, n);
        assert_passed(w, &run);
        // Handlers count each event; the other loops count iterations.
        let want = match w {
            Workload::IntIret
            | Workload::PageFault
            | Workload::ApicTimer
            | Workload::Ipi
            | Workload::IpiCpu => n * UNROLL,
            _ => n,
        };
        assert_eq!(run.read32(layout::COUNTER), want, "{}", w.name());
        assert_eq!(run.read32(layout::LEFT), 0, "{}", w.name());
    }
}

/// `x86bt bench` gives QEMU x86bt's instruction count per iteration, which holds
/// only if every iteration retires the same number.
#[test]
fn kernels_interp_retire_the_same_instructions_each_iteration() {
    for w in Workload::ALL {
        let counts: Vec<u64> = (1..=3)
            .map(|n| {
                let run = run_interp(w, n);
                assert_passed(w, &run);
                run.vm.icount()
            })
            .collect();
        assert_eq!(
            counts[2] - counts[1],
            counts[1] - counts[0],
            "{}: {counts:?}",
            w.name()
        );
    }
}

/// A wrong expected answer must make the kernel fail, or a pass would mean nothing.
fn wrong_answer_image() -> Vec<u8> {
    let mut image = BenchKernel::new(Workload::Sieve).image(1);
    let off = (layout::EXPECTED - layout::IMAGE_BASE) as usize;
    image[off..off + 4].copy_from_slice(&1898u32.to_le_bytes());
    image
}

#[test]
fn sieve_interp_wrong_expected_answer_fails() {
    let run = bk::run_x86bt(&wrong_answer_image(), Engine::Interp).expect("kernel loads");
    assert_eq!(
        run.outcome,
        RunOutcome::DebugExit((bk::FAIL_MISMATCH << 1 | 1) as i32)
    );
}

/// QEMU, or `None` after saying why the QEMU checks are skipped (a failure under
/// CI=1, where QEMU must be installed).
fn qemu() -> Option<std::path::PathBuf> {
    let q = bk::find_qemu(None);
    if q.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("1"),
            "qemu-system-i386 is not on PATH, and CI=1 requires it"
        );
        eprintln!("SKIPPED: qemu-system-i386 is not on PATH; the QEMU checks did not run");
    }
    q
}

#[test]
fn kernels_qemu_answer_right() {
    let Some(q) = qemu() else { return };
    let mut failed = Vec::new();
    for w in Workload::ALL {
        let image = BenchKernel::new(w).image(test_iters(w));
        let run = bk::run_qemu(&q, &image).expect("qemu runs");
        if !run.passed() {
            failed.push(format!(
                "{}: status {:?} {}",
                w.name(),
                run.status,
                run.stderr.trim()
            ));
        }
    }
    assert!(failed.is_empty(), "under QEMU: {failed:#?}");
}

#[test]
fn sieve_qemu_wrong_expected_answer_fails() {
    let Some(q) = qemu() else { return };
    let run = bk::run_qemu(&q, &wrong_answer_image()).expect("qemu runs");
    assert_eq!(run.status, Some((bk::FAIL_MISMATCH << 1 | 1) as i32));
}

/// Every kernel under the translator, with chaining and repeats inside
/// fragments as `x86bt bench` runs them: the kernel's own answer check passes,
/// and it retires exactly the interpreter's instruction count with the same
/// result word.
#[test]
fn kernels_jit_answer_right_and_retire_the_interpreters_count() {
    for w in Workload::ALL {
        let n = test_iters(w) + 1;
        let k = BenchKernel::new(w);
        let jit = bk::run_x86bt(&k.image(n), Engine::Jit).expect("kernel loads");
        assert_passed(w, &jit);
        let interp = run_interp(w, n);
        assert_eq!(jit.vm.icount(), interp.vm.icount(), "{}", w.name());
        assert_eq!(
            jit.read32(layout::RESULT),
            interp.read32(layout::RESULT),
            "{}",
            w.name()
        );
    }
}

/// A loop that stores into a variable in its own code page keeps its units:
/// the stores touch no byte a unit was decoded from, so neither engine drops
/// or re-decodes anything (before code-byte tracking, every store dropped the
/// page's units, 8 per iteration).
#[test]
fn store_code_page_loop_is_not_invalidated_under_either_engine() {
    let w = Workload::StoreCodePage;
    let iters = 100;
    let image = BenchKernel::new(w).image(iters);
    let interp = bk::run_x86bt(&image, Engine::Interp).expect("kernel loads");
    assert_passed(w, &interp);
    let cache = interp.vm.interpreter_stats().expect("interpreter stats");
    assert_eq!(cache.invalidations, 0, "interp");
    let jit = bk::run_x86bt(&image, Engine::Jit).expect("kernel loads");
    assert_passed(w, &jit);
    let stats = jit.vm.engine_stats().expect("translator stats");
    let invalidations: u64 = stats
        .split([',', '\n', ':'])
        .find_map(|part| part.trim().strip_suffix(" invalidations")?.parse().ok())
        .unwrap_or_else(|| panic!("no invalidation count in {stats}"));
    assert_eq!(invalidations, 0, "jit: {stats}");
}
