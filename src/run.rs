//! `x86bt run`: boot a PC from a BIOS image at the reset vector.

use crate::cli::RunArgs;
use crate::error::Error;
use crate::vm::{RunOutcome, Vm};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use x86bt_machine::loader::{linux, multiboot};
use x86bt_machine::pc::{self, PcConfig};

/// A writer that passes bytes on and raises `seen` once `needle` has gone by.
pub struct Watch {
    inner: Box<dyn Write>,
    needle: Vec<u8>,
    matched: usize,
    seen: Arc<AtomicBool>,
}

impl Watch {
    /// Watches `inner` for `needle`.
    pub fn new(inner: Box<dyn Write>, needle: &str, seen: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            needle: needle.as_bytes().to_vec(),
            matched: 0,
            seen,
        }
    }
}

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if self.needle.is_empty() {
                break;
            }
            // A simple restartable match; needles are short text.
            if b == self.needle[self.matched] {
                self.matched += 1;
            } else {
                self.matched = usize::from(b == self.needle[0]);
            }
            if self.matched == self.needle.len() {
                self.seen.store(true, Ordering::Relaxed);
                self.matched = 0;
            }
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

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
    let bios = match &a.bios {
        Some(p) => Some(read_file(p)?),
        None => None,
    };
    let kernel = match &a.kernel {
        Some(p) => Some((p.clone(), read_file(p)?)),
        None => None,
    };
    let mut modules = Vec::new();
    for p in &a.modules {
        modules.push((p.display().to_string(), read_file(p)?));
    }
    let seen = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(AtomicBool::new(false));
    let interactive = a.serial == "stdio" && crate::console::stdin_is_tty();
    // Under --serial stdio, what is typed (or piped) on stdin reaches COM1.
    let serial_in = (a.serial == "stdio").then(x86bt_machine::devices::uart::SerialInput::new);
    let mut serial_out = open_sink(&a.serial, "serial")?;
    let mut debugcon = open_sink(&a.debugcon, "debugcon")?;
    if let Some(text) = &a.until {
        serial_out = Box::new(Watch::new(serial_out, text, Arc::clone(&seen)));
        debugcon = Box::new(Watch::new(debugcon, text, Arc::clone(&seen)));
    }
    let post = match &a.post {
        Some(spec) if spec.starts_with("file:") => Some(open_sink(spec, "post")?),
        Some(spec) => return Err(Error::Usage(format!("--post {spec:?}: expected file:PATH"))),
        None => None,
    };
    let bios_name = a
        .bios
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut machine = pc::build(PcConfig {
        ram_bytes: a.mem_mib << 20,
        bios,
        serial_out,
        serial_in: serial_in.clone(),
        debugcon,
        post,
        rtc_base_unix: 0,
    })
    .map_err(|e| match e {
        x86bt_machine::MachineError::RomSize { len } => Error::Usage(format!(
            "{bios_name}: {len} bytes is not a BIOS image size (a multiple of 64 KiB, 64 KiB to 16 MiB)"
        )),
        other => Error::Machine(other),
    })?;
    let initrd = match &a.initrd {
        Some(p) => Some(read_file(p)?),
        None => None,
    };
    let entry = match &kernel {
        Some((path, image)) => Some(load_kernel(
            &mut machine,
            path,
            image,
            initrd.as_deref(),
            &a.append,
            &modules,
        )?),
        None => None,
    };
    let mut vm = Vm::with_engine(machine, a.engine)?;
    vm.no_reboot = a.no_reboot;
    vm.stop_flag = Some(Arc::clone(&seen));
    vm.pace_idle = interactive;
    // Raw mode lasts until this guard drops at the end of the run, on every path.
    let _raw = interactive.then(crate::console::RawTerminal::enter);
    if let Some(input) = serial_in {
        crate::console::spawn_reader(input, Arc::clone(&quit), Arc::clone(&seen));
    }
    match entry {
        Some(KernelEntry::Multiboot(e)) => crate::boot::enter_multiboot(
            &mut vm.cpu,
            e.entry,
            multiboot::BOOTLOADER_MAGIC,
            e.info_addr,
        ),
        Some(KernelEntry::Linux(e)) => {
            crate::boot::enter_linux(&mut vm.cpu, e.entry, e.boot_params, e.gdt_base, e.gdt_limit)
        }
        None => {}
    }
    let start = Instant::now();
    let outcome = vm.run(a.max_insns.unwrap_or(u64::MAX));
    let secs = start.elapsed().as_secs_f64();
    let _ = std::io::stdout().flush();
    match &outcome {
        RunOutcome::DebugExit(_) => {}
        RunOutcome::Stopped if quit.load(Ordering::Relaxed) => {
            eprintln!("\r\nx86bt: quit (Ctrl-A x)")
        }
        RunOutcome::Stopped => eprintln!(
            "x86bt: --until text seen after {} instructions",
            vm.cpu.icount
        ),
        RunOutcome::PowerOff => eprintln!("x86bt: guest powered off"),
        RunOutcome::HaltedForever => eprintln!("x86bt: guest halted with interrupts disabled"),
        RunOutcome::InstructionLimit => eprintln!("x86bt: instruction limit reached"),
        RunOutcome::TripleFault => eprintln!("x86bt: triple fault (CPU shutdown)"),
        RunOutcome::Unsupported(w) => eprintln!("x86bt: stopped: {w}"),
        RunOutcome::Divergence(report) => eprint!("x86bt: {report}"),
    }
    if a.stats {
        print_stats(&vm, secs);
    }
    Ok((outcome.exit_status() & 0xFF) as u8)
}

/// How a loaded kernel is entered.
pub enum KernelEntry {
    /// A Multiboot kernel.
    Multiboot(multiboot::MultibootEntry),
    /// A Linux bzImage.
    Linux(linux::LinuxEntry),
}

/// Loads a `--kernel` image, telling a Linux bzImage from a Multiboot kernel by
/// its contents; anything else gets a clear error naming what was expected.
/// Once loaded, a kernel whose headers ask for a CPU feature this CPU lacks
/// (long mode) gets one warning line on stderr, since it will stop early.
fn load_kernel(
    m: &mut x86bt_machine::Machine,
    path: &Path,
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    modules: &[(String, Vec<u8>)],
) -> Result<KernelEntry, Error> {
    let loader_err = |source| Error::Loader {
        path: path.to_path_buf(),
        source,
    };
    let warn_missing_features = || {
        use x86bt_machine::loader::{missing_cpu_features, missing_features_line};
        let missing = missing_cpu_features(image, x86bt_cpu::identity::cpuid);
        if let Some(line) = missing_features_line(&path.display().to_string(), &missing) {
            eprintln!("x86bt: warning: {line}");
        }
    };
    if linux::is_bzimage(image) {
        if !modules.is_empty() {
            return Err(Error::Usage(
                "--module is for Multiboot kernels; a Linux kernel takes --initrd".into(),
            ));
        }
        let entry = linux::load(&mut m.mem, image, initrd, cmdline).map_err(loader_err)?;
        x86bt_machine::pc::prepare_direct_boot(m);
        warn_missing_features();
        return Ok(KernelEntry::Linux(entry));
    }
    if multiboot::is_multiboot(image) {
        if initrd.is_some() {
            return Err(Error::Usage(
                "--initrd is for Linux kernels; a Multiboot kernel takes --module".into(),
            ));
        }
        let entry = multiboot::load(&mut m.mem, image, cmdline, modules).map_err(loader_err)?;
        warn_missing_features();
        return Ok(KernelEntry::Multiboot(entry));
    }
    Err(Error::Usage(format!(
        "{}: neither a Linux bzImage (no boot sector with a 'HdrS' setup header) nor a Multiboot kernel (no Multiboot v1 header in its first 8 KiB)",
        path.display()
    )))
}

/// Prints `--stats` to stderr.
pub fn print_stats(vm: &Vm, secs: f64) {
    let n = vm.cpu.icount;
    let s = &vm.interp.stats;
    eprintln!("instructions retired: {n}");
    let c = &vm.cpu;
    eprintln!(
        "stopped at {:04x}:{:08x} (cr0={:#x}, eflags={:#x}, eax={:#x} ecx={:#x} edx={:#x} ebx={:#x} esp={:#x} esi={:#x} edi={:#x})",
        c.seg[x86bt_cpu::state::sreg::CS].selector,
        c.rip,
        c.cr0,
        c.rflags,
        c.gpr[0],
        c.gpr[1],
        c.gpr[2],
        c.gpr[3],
        c.gpr[4],
        c.gpr[6],
        c.gpr[7]
    );
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
    if let Some(engine) = vm.engine_stats() {
        eprintln!("{engine}");
    }
}
