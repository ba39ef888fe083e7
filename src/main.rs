//! The `x86bt` binary.

use clap::Parser;
use std::process::ExitCode;
use x86bt::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse_from(x86bt::cli::qemu_style_args(std::env::args_os()));
    // A panic is a bug in x86bt, never the guest's doing: the default hook has
    // printed it; exit with the documented internal-error status rather than
    // Rust's 101, which a guest's debug exit could also produce.
    let r = std::panic::catch_unwind(|| match cli.command {
        Command::Run(a) => x86bt::run::run_cmd(&a),
        Command::Sst(a) => sst_cmd(&a),
        Command::Bench(a) => x86bt::bench::bench_cmd(&a),
        Command::Difftest(a) => x86bt::difftest::cmd::difftest_cmd(&a),
    });
    let Ok(r) = r else {
        eprintln!(
            "x86bt: internal error (a bug in x86bt; please report it with the message above)"
        );
        return ExitCode::from(x86bt::vm::status::INTERNAL_ERROR as u8);
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("x86bt: {e}");
            ExitCode::from(x86bt::vm::status::HOST_ERROR as u8)
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
