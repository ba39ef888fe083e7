//! Random-program campaigns (`x86bt difftest --random`): every program of the
//! seed is generated, booted by both emulators from its own ROM and compared in
//! lockstep. A divergence names the seed, mode and index, so
//! `--seed S --mode M --index I` reproduces it alone.

use super::gen::{self, Mode};
use super::{lockstep, report, DiffSetup, Outcome};
use crate::cli::DifftestArgs;
use crate::error::Error;
use std::io::Write;
use std::time::Instant;

/// Runs the campaign; returns the exit status (1 when any program diverged
/// outside the allow-list).
pub fn run(a: &DifftestArgs, mut setup: DiffSetup) -> Result<u8, Error> {
    let mode: Mode = a.mode.parse().map_err(|_| {
        Error::Usage(format!(
            "--mode {:?}: expected real, prot16, prot32 or long",
            a.mode
        ))
    })?;
    let dir = std::env::temp_dir().join(format!("x86bt-campaign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Create {
        path: dir.clone(),
        source,
    })?;
    let indices = match a.index {
        Some(i) => i..i + 1,
        None => 0..a.count,
    };
    // QEMU's default CPU models (qemu32, qemu64) stop at SSE3 (qemu64) or SSE2;
    // its TCG raises #UD for a feature the model lacks, so the SSE runs (and long
    // mode, whose stub always turns SSE on) get the features x86bt reports.
    if a.sse || mode == Mode::Long {
        let base = if mode == Mode::Long {
            "qemu64"
        } else {
            "qemu32"
        };
        setup.qemu_extra.extend([
            "-cpu".to_string(),
            format!("{base},+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt"),
        ]);
    }
    let sse = if a.sse { " --sse" } else { "" };
    let mut out = std::io::stdout().lock();
    let (mut agree, mut allowed, mut diverged, mut compared) = (0u64, 0u64, 0u64, 0u64);
    let mut allowed_names = std::collections::BTreeMap::<&str, u64>::new();
    // With --continue-allowed, programs run on past allowed divergences:
    // those are counted per entry here, not printed one by one.
    let mut continued_names = std::collections::BTreeMap::<&str, u64>::new();
    setup.quiet_continue = true;
    let start = Instant::now();
    for index in indices {
        let p = gen::generate_with(mode, a.seed, index, a.len, a.sse);
        let rom = dir.join(format!("{mode}-{}-{index}.rom", a.seed));
        std::fs::write(&rom, &p.rom).map_err(|source| Error::Create {
            path: rom.clone(),
            source,
        })?;
        setup.bios = rom.clone();
        setup.max_insns = a.max_insns;
        let (o, secs) = lockstep(&setup)?;
        if let Outcome::Agree { continued, .. } | Outcome::Diverged { continued, .. } = &o {
            for name in continued {
                *continued_names.entry(name).or_default() += 1;
            }
        }
        if std::env::var_os("X86BT_KEEP_ROM").is_none() {
            let _ = std::fs::remove_file(&rom);
        }
        match &o {
            Outcome::Agree { compared: n, .. } => {
                agree += 1;
                compared += n;
            }
            Outcome::Allowed { at, name, .. } => {
                allowed += 1;
                compared += at;
                *allowed_names.entry(name).or_default() += 1;
            }
            Outcome::Diverged { at, .. } => {
                diverged += 1;
                compared += at;
                let _ = writeln!(
                    out,
                    "program: --seed {} --mode {mode}{sse} --index {index} --len {}",
                    a.seed, a.len
                );
                report(&o, secs, &mut out);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for (name, n) in &allowed_names {
        let _ = writeln!(out, "allowed {n}: {name}");
    }
    for (name, n) in &continued_names {
        let _ = writeln!(out, "continued past {n}: {name}");
    }
    let _ = writeln!(
        out,
        "mode {mode}{sse}, seed {}: {} programs of {} instructions: {agree} agree, {allowed} allowed, {diverged} diverged; {compared} instructions compared in {secs:.1} s ({:.0}/s)",
        a.seed,
        agree + allowed + diverged,
        a.len,
        compared as f64 / secs.max(1e-9)
    );
    Ok(u8::from(diverged > 0))
}
