//! Criterion bench of the interpreter on the guest compute loops of `x86bt bench`.
//! Throughput is in guest instructions, so criterion reports instructions/s.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const INSNS: u64 = 5_000_000;

fn interp(c: &mut Criterion) {
    let mut g = c.benchmark_group("interp");
    g.throughput(Throughput::Elements(INSNS));
    g.sample_size(10);
    for w in x86bt::bench::workloads() {
        g.bench_function(w.name, |b| {
            b.iter_batched(
                || x86bt::bench::prepare(&w).expect("workload loads"),
                |mut vm| {
                    vm.run(INSNS);
                    vm.cpu.icount
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, interp);
criterion_main!(benches);
