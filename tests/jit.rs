//! Translator tests (work in progress).

use x86bt::cli::Engine;

#[test]
fn jit_bench_workloads_smoke() {
    for w in x86bt::bench::workloads() {
        let mut vm = x86bt::bench::prepare(&w).expect("workload");
        vm.set_engine(Engine::Lockstep).expect("jit");
        let r = vm.run(200_000);
        eprintln!(
            "{}: {} {:?}\n{}",
            w.name,
            vm.cpu.icount,
            r,
            vm.engine_stats().unwrap_or_default()
        );
    }
}
