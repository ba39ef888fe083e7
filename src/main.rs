//! The `x86bt` binary.

use clap::Parser;
use std::process::ExitCode;
use x86bt::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Run(a) => x86bt::run::run_cmd(&a),
        Command::Sst(a) => sst_cmd(&a),
        Command::Bench(a) => x86bt::bench::bench_cmd(&a),
        Command::Difftest(a) => x86bt::difftest::cmd::difftest_cmd(&a),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("x86bt: {e}");
            ExitCode::from(2)
        }
    }
}

fn sst_cmd(a: &x86bt::cli::SstArgs) -> Result<u8, x86bt::Error> {
    let files = x86bt::sst::collect_files(&a.paths)?;
    let mut out = std::io::stdout().lock();
    let t = x86bt::sst::run_files(&files, a.engine, a.show, &mut out)?;
    for (reason, n) in &t.skipped {
        println!("skipped {n}: {}", reason.describe());
    }
    let total = t.passed + t.failed + t.skipped_total();
    if total > 0 {
        println!(
            "pass rate {:.3}% of run cases; {:.3}% of all cases skipped",
            100.0 * t.passed as f64 / (t.passed + t.failed).max(1) as f64,
            100.0 * t.skipped_total() as f64 / total as f64
        );
    }
    println!(
        "{} passed, {} failed, {} skipped",
        t.passed,
        t.failed,
        t.skipped_total()
    );
    Ok(u8::from(t.failed > 0))
}
