//! Criterion bench `engines`: the compute kernels of `x86bt bench` (Multiboot,
//! 32-bit protected mode, paging on) under the interpreter and the translator.
//! Throughput is in guest instructions, so criterion reports instructions/s.
//! QEMU is compared by `x86bt bench`, not here: criterion times closures in this
//! process.
//!
//! Each sample boots the kernel from its Multiboot entry and runs it to its exit;
//! building the VM and loading the image are outside the timed part. An engine
//! that cannot run a kernel to the right answer is reported and skipped.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use x86bt::bench_kernels::{self as bk, BenchKernel, Kind, Workload};
use x86bt::cli::Engine;

/// Guest instructions per sample, roughly.
const INSNS: u64 = 5_000_000;

/// Iterations giving about [`INSNS`] instructions, and the exact count.
fn size(k: &BenchKernel) -> (u32, u64) {
    let count = |n| {
        bk::run_x86bt(&k.image(n), Engine::Interp)
            .expect("kernel loads")
            .vm
            .cpu
            .icount
    };
    let (one, two) = (count(1), count(2));
    let n = u32::try_from((INSNS / (two - one).max(1)).max(1)).unwrap_or(u32::MAX);
    (n, count(n))
}

fn engines(c: &mut Criterion) {
    let mut g = c.benchmark_group("engines");
    g.sample_size(10);
    for w in Workload::ALL
        .into_iter()
        .filter(|w| w.kind() == Kind::Compute)
    {
        let k = BenchKernel::new(w);
        let (n, insns) = size(&k);
        let image = k.image(n);
        g.throughput(Throughput::Elements(insns));
        for (name, engine) in [("interp", Engine::Interp), ("jit", Engine::Jit)] {
            match bk::run_x86bt(&image, engine) {
                Ok(run) if run.passed() => {}
                Ok(run) => {
                    eprintln!("{name} on {}: {:?}; skipped", w.name(), run.outcome);
                    continue;
                }
                Err(e) => {
                    eprintln!("{name} on {}: {e}; skipped", w.name());
                    continue;
                }
            }
            g.bench_function(format!("{}/{name}", w.name()), |b| {
                b.iter_batched(
                    || bk::prepare(&image, engine).expect("kernel loads"),
                    |mut vm| {
                        vm.run(u64::MAX);
                        vm.cpu.icount
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, engines);
criterion_main!(benches);
