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
            "--mode {:?}: expected real, prot16 or prot32",
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
    let mut out = std::io::stdout().lock();
    let (mut agree, mut allowed, mut diverged, mut compared) = (0u64, 0u64, 0u64, 0u64);
    let mut allowed_names = std::collections::BTreeMap::<&str, u64>::new();
    let start = Instant::now();
    for index in indices {
        let p = gen::generate(mode, a.seed, index, a.len);
        let rom = dir.join(format!("{mode}-{}-{index}.rom", a.seed));
        std::fs::write(&rom, &p.rom).map_err(|source| Error::Create {
            path: rom.clone(),
            source,
        })?;
        setup.bios = rom.clone();
        setup.max_insns = a.max_insns;
        let (o, secs) = lockstep(&setup)?;
        let _ = std::fs::remove_file(&rom);
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
                    "program: --seed {} --mode {mode} --index {index} --len {}",
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
    let _ = writeln!(
        out,
        "mode {mode}, seed {}: {} programs of {} instructions: {agree} agree, {allowed} allowed, {diverged} diverged; {compared} instructions compared in {secs:.1} s ({:.0}/s)",
        a.seed,
        agree + allowed + diverged,
        a.len,
        compared as f64 / secs.max(1e-9)
    );
    Ok(u8::from(diverged > 0))
}
