//! `x86bt run`: boot a PC from a BIOS image at the reset vector.

use crate::cli::RunArgs;
use crate::error::Error;
use crate::vm::{RunOutcome, Vm};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use x86bt_machine::pc::{self, PcConfig};

/// Opens an output named `stdio`, `null` or `file:PATH`.
pub fn open_sink(spec: &str, what: &str) -> Result<Box<dyn Write>, Error> {
    match spec {
        "stdio" => Ok(Box::new(std::io::stdout())),
        "null" => Ok(Box::new(std::io::sink())),
        s => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => {
                let path = PathBuf::from(p);
                let f = std::fs::File::create(&path)
                    .map_err(|source| Error::Create { path, source })?;
                Ok(Box::new(std::io::LineWriter::new(f)))
            }
            _ => Err(Error::Usage(format!(
                "--{what} {s:?}: expected stdio, null or file:PATH"
            ))),
        },
    }
}

/// Reads a whole file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `x86bt run`.
pub fn run_cmd(a: &RunArgs) -> Result<u8, Error> {
    let bios = read_file(&a.bios)?;
    let serial_out = open_sink(&a.serial, "serial")?;
    let debugcon = open_sink(&a.debugcon, "debugcon")?;
    let post = match &a.post {
        Some(spec) if spec.starts_with("file:") => Some(open_sink(spec, "post")?),
        Some(spec) => return Err(Error::Usage(format!("--post {spec:?}: expected file:PATH"))),
        None => None,
    };
    let machine = pc::build(PcConfig {
        ram_bytes: a.mem_mib << 20,
        bios: Some(bios),
        serial_out,
        serial_in: None,
        debugcon,
        post,
        rtc_base_unix: 0,
    })
    .map_err(|e| match e {
        x86bt_machine::MachineError::RomSize { len } => Error::Usage(format!(
            "{}: {len} bytes is not a BIOS image size (a multiple of 64 KiB, 64 KiB to 16 MiB)",
            a.bios.display()
        )),
        other => Error::Machine(other),
    })?;
    let mut vm = Vm::new(machine);
    let start = Instant::now();
    let outcome = vm.run(a.max_insns.unwrap_or(u64::MAX));
    let secs = start.elapsed().as_secs_f64();
    let _ = std::io::stdout().flush();
    match &outcome {
        RunOutcome::DebugExit(_) => {}
        RunOutcome::HaltedForever => eprintln!("x86bt: guest halted with interrupts disabled"),
        RunOutcome::InstructionLimit => eprintln!("x86bt: instruction limit reached"),
        RunOutcome::TripleFault => eprintln!("x86bt: triple fault (CPU shutdown)"),
        RunOutcome::Unsupported(w) => eprintln!("x86bt: stopped: {w}"),
    }
    if a.stats {
        print_stats(&vm, secs);
    }
    Ok((outcome.exit_status() & 0xFF) as u8)
}

/// Prints `--stats` to stderr.
pub fn print_stats(vm: &Vm, secs: f64) {
    let n = vm.cpu.icount;
    let s = &vm.interp.stats;
    eprintln!("instructions retired: {n}");
    eprintln!(
        "wall time: {secs:.3} s, {:.1} MIPS",
        n as f64 / secs.max(1e-9) / 1e6
    );
    eprintln!(
        "unit cache: {} hits, {} misses, {} invalidations, mean unit {:.2} instructions",
        s.hits,
        s.misses,
        s.invalidations,
        s.decoded_insns as f64 / s.misses.max(1) as f64
    );
}
