//! `x86bt run`: boot a PC from a BIOS image at the reset vector.

use crate::cli::RunArgs;
use crate::error::Error;
use crate::vm::{RunOutcome, Vm};
use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// An output that remembers its first write error, so the run can stop and
/// report it instead of dropping the guest's output silently.
pub struct Checked {
    inner: Box<dyn Write>,
    what: &'static str,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

impl Checked {
    fn note<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            if let Ok(mut slot) = self.failed.lock() {
                slot.get_or_insert_with(|| format!("writing the {} output failed: {e}", self.what));
            }
            self.stop.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl Write for Checked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
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

/// `--icount sleep=on|off` (QEMU's spelling; `shift=0`, x86bt's only rate of
/// one virtual nanosecond per instruction, is accepted too). `None` when the
/// option leaves sleeping to the default.
pub fn parse_icount(spec: &str) -> Result<Option<bool>, Error> {
    let bad = || {
        Error::Usage(format!(
            "--icount {spec:?}: expected sleep=on|off (and optionally shift=0)"
        ))
    };
    let mut sleep = None;
    for part in spec.split(',') {
        match part.split_once('=').ok_or_else(bad)? {
            ("sleep", "on") => sleep = Some(true),
            ("sleep", "off") => sleep = Some(false),
            ("shift", "0") => {}
            ("shift", _) => {
                return Err(Error::Usage(format!(
                    "--icount {spec:?}: only shift=0 is supported (1 ns of virtual time per instruction)"
                )))
            }
            _ => return Err(bad()),
        }
    }
    Ok(sleep)
}

/// A Multiboot `--module` argument: "FILE" or "FILE ARGS". The file is the text
/// up to the first space; the whole text is the module's string.
pub fn split_module(arg: &str) -> (PathBuf, String) {
    let arg = arg.trim();
    let file = arg.split_once(char::is_whitespace).map_or(arg, |(f, _)| f);
    (PathBuf::from(file), arg.to_string())
}

/// Guest instructions between two looks at the wall clock under
/// `--progress`: the run stops at every multiple of this count (a stop at an
/// instruction count, as `--max-insns` makes, between two units) and goes on.
pub const PROGRESS_SLICE: u64 = 1 << 22;

/// How often the `--progress` line is rewritten, in host time.
const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

/// `--progress`: one status line on stderr, rewritten in place with a
/// carriage return. Where stdout and stderr are the same terminal, the
/// guest's console output (serial, debug console) is written below it: the
/// line is blanked before guest output goes out, and is drawn again only
/// when that output has ended its line, so the line never overwrites or
/// splits the guest's text.
///
/// The line only reads the VM between two slices of the run; it changes
/// nothing the guest can see (see [`run_with_progress`]).
#[derive(Clone)]
pub struct ProgressLine(Rc<ProgressState>);

/// What the line and the console writers share.
pub struct ProgressState {
    /// Whether stdout and stderr are one terminal.
    shared_terminal: bool,
    /// Characters of the line on screen now (0: none shown).
    shown: Cell<usize>,
    /// Whether the guest's last console byte ended a line.
    console_at_line_start: Cell<bool>,
    /// When the run started, and when and at what count the line was drawn.
    start: Instant,
    last: Cell<(Instant, u64)>,
}

impl ProgressLine {
    /// A line for a run that starts now.
    pub fn new() -> Self {
        let now = Instant::now();
        Self(Rc::new(ProgressState {
            shared_terminal: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            shown: Cell::new(0),
            console_at_line_start: Cell::new(true),
            start: now,
            last: Cell::new((now, 0)),
        }))
    }

    /// Wraps a guest console writer bound for stdout so that it writes below
    /// the line (a no-op unless stdout and stderr are one terminal).
    pub fn clear_before(&self, inner: Box<dyn Write>) -> Box<dyn Write> {
        if !self.0.shared_terminal {
            return inner;
        }
        Box::new(BelowProgress {
            inner,
            line: self.clone(),
        })
    }

    /// Draws the line if a period has passed since it was last drawn.
    pub fn update(&self, vm: &Vm) {
        let (then, then_icount) = self.0.last.get();
        let now = Instant::now();
        let elapsed = now.duration_since(then);
        if elapsed < PROGRESS_PERIOD {
            return;
        }
        if self.0.shared_terminal && !self.0.console_at_line_start.get() {
            return;
        }
        let icount = vm.icount();
        let mips = icount.saturating_sub(then_icount) as f64 / elapsed.as_secs_f64() / 1e6;
        self.0.last.set((now, icount));
        self.draw(&progress_text(vm, mips));
    }

    /// The last line, with the whole run's mean MIPS, ended with a newline.
    pub fn finish(&self, vm: &Vm) {
        let secs = self.0.start.elapsed().as_secs_f64().max(1e-9);
        let mips = vm.icount() as f64 / secs / 1e6;
        if self.0.shared_terminal && !self.0.console_at_line_start.get() {
            // The guest's text ends mid-line: start a line of our own.
            eprintln!();
            self.0.shown.set(0);
        }
        self.draw(&progress_text(vm, mips));
        eprintln!();
        self.0.shown.set(0);
    }

    fn draw(&self, text: &str) {
        let width = text.chars().count();
        let pad = self.0.shown.get().saturating_sub(width);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}{:pad$}", "");
        let _ = err.flush();
        self.0.shown.set(width);
    }

    /// Blanks the line, so the guest's output starts on a clean one.
    fn blank(&self) {
        let width = self.0.shown.replace(0);
        if width > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{:width$}\r", "");
            let _ = err.flush();
        }
    }
}

impl Default for ProgressLine {
    fn default() -> Self {
        Self::new()
    }
}

/// A guest console writer on the terminal the `--progress` line is on.
struct BelowProgress {
    inner: Box<dyn Write>,
    line: ProgressLine,
}

impl Write for BelowProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.blank();
        let n = self.inner.write(buf)?;
        if let Some(&last) = buf[..n].last() {
            self.line.0.console_at_line_start.set(last == b'\n');
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The line's text: instructions, MIPS, virtual time, and the translations
/// made (units decoded, under the interpreter).
fn progress_text(vm: &Vm, mips: f64) -> String {
    let secs = vm.now() as f64 / 1e9;
    let units = match vm.interpreter_stats() {
        Some(s) => format!("{} units decoded", s.misses),
        None => format!(
            "{} translations",
            vm.engine_stats()
                .as_deref()
                .and_then(translations_in)
                .unwrap_or(0)
        ),
    };
    format!(
        "x86bt: {} instructions, {mips:.1} MIPS, virtual time {secs:.3} s, {units}",
        vm.icount()
    )
}

/// The translation count in the translator's `--stats` text (its first line,
/// "translator: N translations (...").
pub fn translations_in(stats: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let rest = l.strip_prefix("translator: ")?;
        let (n, tail) = rest.split_once(' ')?;
        tail.starts_with("translations").then(|| n.parse().ok())?
    })
}

/// Runs as [`Vm::run`] does, in slices of [`PROGRESS_SLICE`] instructions,
/// updating `line` between them.
///
/// The slices do not change the guest's execution. A slice ends where
/// `Vm::run` checks its instruction limit: at the top of its loop, between
/// two units, before anything of that pass has happened, and the next call
/// starts that same pass again (the checks before the limit read state and
/// change none). The limit also bounds how far units chain, but a chain stops
/// only between units, and the next unit starts at the same instruction it
/// would have; interrupts are taken at the same instruction boundaries,
/// because the chain also stops for every device deadline and pending
/// interrupt. The slice ends are multiples of a fixed count, so a run with
/// `--progress` is the same every time, and the tests check it retires the
/// same instructions and prints the same output as one without.
pub fn run_with_progress(vm: &mut Vm, max_insns: u64, line: &ProgressLine) -> RunOutcome {
    loop {
        let slice_end = (vm.icount() / PROGRESS_SLICE + 1)
            .saturating_mul(PROGRESS_SLICE)
            .min(max_insns);
        let outcome = vm.run(slice_end);
        if !matches!(outcome, RunOutcome::InstructionLimit) || vm.icount() >= max_insns {
            return outcome;
        }
        line.update(vm);
    }
}

/// Runs as [`Vm::run`] does while serving GDB (`crate::gdb`): a debugger
/// that connects stops the guest (the acceptor raises the VM's interrupt
/// flag) and is served until it detaches, after which the guest runs on.
/// With `wait` (`-S`), nothing runs before the first debugger's session.
pub fn run_with_gdb(
    vm: &mut Vm,
    max_insns: u64,
    line: Option<&ProgressLine>,
    server: &crate::gdb::Server,
    wait: bool,
    inputs: &[x86bt_machine::devices::uart::SerialInput],
) -> RunOutcome {
    use crate::gdb::SessionEnd;
    let mut first = if wait {
        server.wait_for_connection()
    } else {
        None
    };
    loop {
        if let Some(conn) = first.take().or_else(|| server.take_connection()) {
            match crate::gdb::session(vm, conn, server.layout, max_insns, inputs) {
                SessionEnd::Detached => continue,
                SessionEnd::Killed => return RunOutcome::Killed,
                SessionEnd::GuestEnded(outcome) => return outcome,
            }
        }
        let outcome = match line {
            Some(line) => run_with_progress(vm, max_insns, line),
            None => vm.run(max_insns),
        };
        if !matches!(outcome, RunOutcome::Debug(_)) {
            return outcome;
        }
    }
}

/// Signals that end a run: they stop the guest and let the normal exit path
/// restore the terminal. If the run does not stop within two seconds, the
/// terminal is restored here and the process exits.
fn watch_signals(
    stop: Arc<AtomicBool>,
    got: Arc<std::sync::atomic::AtomicI32>,
    terminal: Option<crate::console::SavedTerminal>,
) -> Result<(), Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT])
        .map_err(|e| Error::Usage(format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            got.store(sig, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_secs(2));
            if let Some(t) = terminal {
                t.restore();
            }
            eprintln!(
                "\r\nx86bt: {} (the run did not stop in time)",
                signal_name(sig)
            );
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "terminated by SIGTERM",
        libc::SIGHUP => "hung up (SIGHUP)",
        libc::SIGINT => "interrupted (SIGINT)",
        _ => "stopped by a signal",
    }
}

/// The firmware x86bt boots drives with when no --bios is given.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// SeaBIOS's VGA BIOS for a plain ISA VGA (no PCI, no VBE needed).
pub const VGA_BIOS: &str = "/usr/share/seabios/vgabios-isavga.bin";

/// The drives the options name, in QEMU's order: -hda..-hdd and -cdrom at
/// their fixed indexes, then each -drive.
fn drive_options(a: &RunArgs) -> Result<Vec<crate::drives::DriveOpt>, Error> {
    use x86bt_machine::devices::ide::Media;
    let mut out = Vec::new();
    for (i, p) in [&a.hda, &a.hdb, &a.hdc, &a.hdd].into_iter().enumerate() {
        if let Some(p) = p {
            out.push(crate::drives::shorthand(p, Media::Disk, i as u8));
        }
    }
    if let Some(p) = &a.cdrom {
        out.push(crate::drives::shorthand(p, Media::Cdrom, 2));
    }
    for spec in &a.drives {
        out.push(crate::drives::parse_drive(spec)?);
    }
    Ok(out)
}

/// `x86bt run`.
pub fn run_cmd(a: &RunArgs) -> Result<u8, Error> {
    let gdb_spec = match (&a.gdb, a.gdb_default) {
        (Some(_), true) => {
            return Err(Error::Usage(
                "-s is -gdb tcp::1234: give one of -gdb and -s".into(),
            ))
        }
        (Some(spec), false) => Some(
            spec.parse::<crate::gdb::GdbSpec>()
                .map_err(|e| Error::Usage(format!("-gdb {e}")))?,
        ),
        (None, true) => Some(crate::gdb::GdbSpec {
            host: String::new(),
            port: 1234,
        }),
        (None, false) => None,
    };
    if a.wait_for_gdb && gdb_spec.is_none() {
        return Err(Error::Usage(
            "-S waits for a debugger: give -gdb tcp::PORT or -s too".into(),
        ));
    }
    if a.kernel.is_none() && (a.initrd.is_some() || a.append.is_some() || !a.modules.is_empty()) {
        return Err(Error::Usage(
            "--initrd, --append and --module go with --kernel (a BIOS boots from its own devices)"
                .into(),
        ));
    }
    let replay = crate::replay::Plan::from_args(a)?;
    if !a.snapshot_at.is_empty() && gdb_spec.is_some() {
        return Err(Error::Usage(
            "--snapshot-at does not go with a GDB server".into(),
        ));
    }
    let drive_opts = drive_options(a)?;
    let snapshot_at = a
        .snapshot_at
        .iter()
        .map(|s| crate::snapshot::parse_at(s))
        .collect::<Result<Vec<_>, _>>()?;
    let (boot_order, boot_menu) = match &a.boot {
        Some(spec) => crate::drives::parse_boot(spec)?,
        None => (String::new(), false),
    };
    // With drives and nothing else to boot, the firmware boots from them.
    let bios_path = match (&a.bios, &a.kernel) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            let p = PathBuf::from(DEFAULT_BIOS);
            if !p.exists() {
                return Err(Error::Usage(format!(
                    "nothing to boot: give --bios, --kernel, or drives with Debian's SeaBIOS                      installed ({DEFAULT_BIOS}: apt-get install seabios)"
                )));
            }
            Some(p)
        }
    };
    let bios = match &bios_path {
        Some(p) => Some(read_file(p)?),
        None => None,
    };
    let want_vga = match a.vga.as_deref() {
        None => bios_path.is_some(),
        Some("std") => true,
        Some("none") => false,
        Some(other) => {
            return Err(Error::Usage(format!(
                "-vga {other}: x86bt has std and none"
            )))
        }
    };
    let text_display = match a.display.as_str() {
        "none" => false,
        "text" | "curses" => true,
        other => {
            return Err(Error::Usage(format!(
                "-display {other}: x86bt has none and text"
            )))
        }
    };
    if text_display && a.progress {
        return Err(Error::Usage(
            "--progress and --display text both draw on the terminal: use one".into(),
        ));
    }
    if text_display && a.serial == "stdio" {
        return Err(Error::Usage(
            "--display text draws on the terminal: send the serial console elsewhere \
             (--serial file:PATH or null)"
                .into(),
        ));
    }
    if (text_display || a.screen_dump.is_some()) && !want_vga {
        return Err(Error::Usage(
            "--display text and --screen-dump need a VGA (-vga std)".into(),
        ));
    }
    let vga = want_vga.then(x86bt_machine::devices::vga::SharedVga::new);
    // The VGA BIOS for firmware to run, from Debian's seabios package.
    let vga_bios = match (&vga, &bios_path) {
        (Some(_), Some(_)) => {
            let p = Path::new(VGA_BIOS);
            if !p.exists() {
                return Err(Error::Usage(format!(
                    "-vga std needs {VGA_BIOS} (apt-get install seabios), or -vga none"
                )));
            }
            Some(read_file(p)?)
        }
        _ => None,
    };
    // Every image is opened (and locked) now, before the guest starts.
    let ide = crate::drives::open_all(&drive_opts)?;
    let virtio = crate::drives::open_virtio(&drive_opts)?;
    let kernel = match &a.kernel {
        Some(p) => Some((p.clone(), read_file(p)?)),
        None => None,
    };
    let mut modules = Vec::new();
    for arg in &a.modules {
        let (path, string) = split_module(arg);
        modules.push((string, read_file(&path)?));
    }
    let mut rtc_base_unix = crate::rtc::parse_base(&a.rtc)?;
    if let Some(plan) = &replay {
        rtc_base_unix = plan.rtc_base(rtc_base_unix);
    }
    let sleep = a.icount.as_deref().map(parse_icount).transpose()?.flatten();
    let seen = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(AtomicBool::new(false));
    let output_error = Arc::new(std::sync::Mutex::new(None));
    let interactive = a.serial == "stdio" && crate::console::stdin_is_tty();
    // Under --serial stdio, what is typed (or piped) on stdin reaches COM1.
    let serial_in = replay
        .as_ref()
        .map_or(a.serial == "stdio", |p| p.serial_input(a.serial == "stdio"))
        .then(x86bt_machine::devices::uart::SerialInput::new);
    let checked = |inner: Box<dyn Write>, what: &'static str| -> Box<dyn Write> {
        Box::new(Checked {
            inner,
            what,
            failed: Arc::clone(&output_error),
            stop: Arc::clone(&seen),
        })
    };
    let mut serial_out = checked(open_sink(&a.serial, "serial")?, "serial");
    let mut debugcon = checked(open_sink(&a.debugcon, "debugcon")?, "debug console");
    if let Some(text) = &a.until {
        serial_out = Box::new(Watch::new(serial_out, text, Arc::clone(&seen)));
        debugcon = Box::new(Watch::new(debugcon, text, Arc::clone(&seen)));
    }
    let progress_line = a.progress.then(ProgressLine::new);
    if let Some(line) = &progress_line {
        if a.serial == "stdio" {
            serial_out = line.clear_before(serial_out);
        }
        if a.debugcon == "stdio" {
            debugcon = line.clear_before(debugcon);
        }
    }
    let post = match &a.post {
        Some(spec) if spec.starts_with("file:") => Some(checked(open_sink(spec, "post")?, "POST")),
        Some(spec) => return Err(Error::Usage(format!("--post {spec:?}: expected file:PATH"))),
        None => None,
    };
    let initrd = match &a.initrd {
        Some(p) => Some(read_file(p)?),
        None => None,
    };
    let replay_header = replay.as_ref().map(|_| crate::replay::Header {
        rtc_base: rtc_base_unix,
        serial_input: serial_in.is_some(),
        shape: crate::replay::shape(
            a,
            &[
                ("kernel", kernel.as_ref().map(|(_, k)| k.as_slice())),
                ("initrd", initrd.as_deref()),
                ("bios", bios.as_deref()),
            ],
        ),
    });
    let bios_name = bios_path
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
        rtc_base_unix,
        cpus: a.smp,
        extra_devices: a.devices.clone(),
        storage: x86bt_machine::pc::Storage {
            ide,
            virtio,
            vga: vga.clone(),
            vga_bios,
            boot_order,
            boot_menu,
            // No display yet: the firmware's screen goes to COM1.
            sercon_port: bios_path.is_some().then_some(0x3F8),
        },
    })
    .map_err(|e| match e {
        x86bt_machine::MachineError::RomSize { len } => Error::Usage(format!(
            "{bios_name}: {len} bytes is not a BIOS image size (a multiple of 64 KiB, 64 KiB to 16 MiB)"
        )),
        other => Error::Machine(other),
    })?;
    let loaded = match &kernel {
        Some((path, image)) => Some(load_kernel(
            &mut machine,
            path,
            image,
            initrd.as_deref(),
            a.append.as_deref().unwrap_or(""),
            &modules,
        )?),
        None => None,
    };
    let (entry, missing_features) = match loaded {
        Some((e, missing)) => (Some(e), missing),
        None => (None, None),
    };
    if let Some(line) = &missing_features {
        eprintln!("x86bt: warning: {line}");
    }
    let mut vm = Vm::with_engine(machine, a.engine)?;
    vm.no_reboot = a.no_reboot;
    // What is typed goes to COM1, or under --record to the log's queue, which
    // the run loop empties into COM1's; a replay reads stdin only for Ctrl-A x.
    let mut typed_to = serial_in.clone();
    let mut replaying = false;
    if let (Some(plan), Some(header)) = (replay, replay_header) {
        let (log, staged) = plan.begin(header, serial_in.clone())?;
        replaying = log.replaying();
        typed_to = if replaying {
            crate::console::stdin_is_tty().then_some(staged)
        } else {
            typed_to.map(|_| staged)
        };
        vm.input_log = Some(Box::new(log));
    }
    // The GDB server listens before the guest starts, so a port in use stops
    // the run before anything ran.
    let gdb_server = match &gdb_spec {
        Some(spec) => {
            let layout = a
                .gdb_arch
                .decide(kernel.as_ref().map(|(_, image)| image.as_slice()));
            let debugger = crate::debug::Debugger::new(Arc::new(AtomicBool::new(false)));
            let server = crate::gdb::Server::bind(spec, layout, debugger.interrupt_flag())?;
            vm.debugger = Some(Box::new(debugger));
            let arch = match layout {
                crate::gdb::Layout::I386 => "i386",
                crate::gdb::Layout::X86_64 => "x86-64",
            };
            eprintln!(
                "x86bt: GDB server on {} ({arch} registers){}",
                server.local,
                if a.wait_for_gdb {
                    "; the CPU waits for the debugger (-S)"
                } else {
                    ""
                }
            );
            Some(server)
        }
        None => None,
    };
    if let Some((path, image)) = kernel {
        // After a reset the kernel boots again, as it would from firmware and a
        // boot loader (QEMU's -kernel does the same).
        let cmdline = a.append.clone().unwrap_or_default();
        vm.reboot = Some(Box::new(move |cpu, m| {
            if let Ok((entry, _)) =
                load_kernel(m, &path, &image, initrd.as_deref(), &cmdline, &modules)
            {
                enter_kernel(cpu, entry);
            }
        }));
    }
    vm.stop_flag = Some(Arc::clone(&seen));
    // With the screen on the terminal, what is typed there goes to the
    // guest's keyboard (Ctrl-A x quits, as on the serial console).
    let keys = (text_display && crate::console::stdin_is_tty())
        .then(x86bt_machine::devices::uart::SerialInput::new);
    if let Some(v) = &vga {
        vm.tick = Some(screen_tick(
            v.clone(),
            text_display,
            a.until.clone(),
            Arc::clone(&seen),
            keys.clone().zip(vm.machine.keyboard.clone()),
        ));
    }
    vm.pace_idle = sleep.unwrap_or(interactive);
    // Raw mode lasts until this guard drops at the end of the run, on every path.
    let raw = (interactive || keys.is_some()).then(crate::console::RawTerminal::enter);
    let signal = Arc::new(std::sync::atomic::AtomicI32::new(0));
    watch_signals(
        Arc::clone(&seen),
        Arc::clone(&signal),
        raw.as_ref().and_then(|r| r.saved()),
    )?;
    // Ctrl-A s asks the run loop to stop at the next pass and save (not
    // under -gdb, whose loop has no snapshot plan).
    let save_now = Arc::new(AtomicBool::new(false));
    if gdb_server.is_none() {
        vm.pause_flag = Some(Arc::clone(&save_now));
    }
    // Where input from outside reaches the guest (reverse execution's
    // history under -gdb ends where it is read).
    let inputs: Vec<_> = typed_to.iter().chain(keys.iter()).cloned().collect();
    if let Some(input) = typed_to {
        crate::console::spawn_reader(
            input,
            Arc::clone(&quit),
            Arc::clone(&seen),
            Arc::clone(&save_now),
        );
    }
    if let Some(k) = keys {
        crate::console::spawn_reader(
            k,
            Arc::clone(&quit),
            Arc::clone(&seen),
            Arc::clone(&save_now),
        );
    }
    if let Some(entry) = entry {
        enter_kernel(&mut vm.cpu, entry);
    }
    if let Some(path) = &a.restore {
        crate::snapshot::restore_from(&mut vm, path)?;
    }
    let start = Instant::now();
    let max_insns = a.max_insns.unwrap_or(u64::MAX);
    let outcome = match &gdb_server {
        Some(server) => run_with_gdb(
            &mut vm,
            max_insns,
            progress_line.as_ref(),
            server,
            a.wait_for_gdb,
            &inputs,
        ),
        None => {
            let mut plan = crate::snapshot::SnapshotPlan {
                at: snapshot_at,
                on_demand: Some(save_now),
                command_line: std::env::args().collect(),
            };
            crate::snapshot::run_with_snapshots(
                &mut vm,
                max_insns,
                &mut plan,
                raw.as_ref().is_some_and(|r| r.saved().is_some()),
                &mut |vm, limit| match &progress_line {
                    Some(line) => run_with_progress(vm, limit, line),
                    None => vm.run(limit),
                },
            )?
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let _ = std::io::stdout().flush();
    if let Some(line) = &progress_line {
        line.finish(&vm);
    }
    if let (Some(path), Some(v)) = (&a.screen_dump, &vga) {
        let text = v.text_screen().to_text() + "\n";
        std::fs::write(path, text).map_err(|source| Error::Create {
            path: path.clone(),
            source,
        })?;
    }
    drop(raw);
    let icount = vm.icount();
    if let Some(log) = vm.input_log.as_mut() {
        log.finish(icount)?;
    }
    if a.stats {
        print_stats(&vm, secs);
    }
    if let Some(msg) = output_error.lock().ok().and_then(|mut m| m.take()) {
        return Err(Error::Usage(msg));
    }
    let sig = signal.load(Ordering::SeqCst);
    if sig != 0 {
        eprintln!("\r\nx86bt: {}", signal_name(sig));
        return Ok((128 + sig) as u8);
    }
    if replaying && outcome == RunOutcome::Stopped && !seen.load(Ordering::Relaxed) {
        eprintln!(
            "x86bt: end of the recording, after {} instructions",
            vm.icount()
        );
    } else {
        report_outcome(&outcome, &vm, quit.load(Ordering::Relaxed));
    }
    let stopped_early = matches!(
        outcome,
        RunOutcome::HaltedForever
            | RunOutcome::TripleFault
            | RunOutcome::ResetRequested(_)
            | RunOutcome::InstructionLimit
            | RunOutcome::Unsupported(_)
    );
    if let (true, Some(line)) = (stopped_early, missing_features) {
        eprintln!("x86bt: the likely cause: {line}");
    }
    Ok((outcome.exit_status() & 0xFF) as u8)
}

/// What the run loop does with the VGA's screen between units: with
/// `draw`, redraws the text screen on the terminal when it changed (at most
/// 20 times a second of host time); with an `--until` text, stops the run
/// once the screen shows it (setting `seen`, as the serial watch does).
fn screen_tick(
    vga: x86bt_machine::devices::vga::SharedVga,
    draw: bool,
    until: Option<String>,
    seen: Arc<AtomicBool>,
    keyboard: Option<(
        x86bt_machine::devices::uart::SerialInput,
        x86bt_machine::devices::i8042::SharedI8042,
    )>,
) -> Box<dyn FnMut() -> bool> {
    let mut shown = u64::MAX;
    let mut checked = u64::MAX;
    let mut last_draw = Instant::now();
    Box::new(move || {
        if let Some((typed, kbd)) = &keyboard {
            let bytes = typed.take(64);
            if !bytes.is_empty() {
                let codes = x86bt_machine::devices::i8042::terminal_bytes_to_scancodes(&bytes);
                kbd.0.borrow_mut().key_bytes(&codes);
            }
        }
        let generation = vga.generation();
        if draw && generation != shown && last_draw.elapsed().as_millis() >= 50 {
            shown = generation;
            last_draw = Instant::now();
            let screen = vga.text_screen();
            let mut out = String::from("\x1b[H\x1b[2J");
            for line in screen.lines() {
                out.push_str(&line);
                out.push_str("\r\n");
            }
            if let Some((row, col)) = screen.cursor {
                out.push_str(&format!("\x1b[{};{}H", row + 1, col + 1));
            }
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        }
        if let Some(text) = &until {
            if generation != checked {
                checked = generation;
                if vga.text_screen().to_text().contains(text.as_str()) {
                    seen.store(true, Ordering::Relaxed);
                    return true;
                }
            }
        }
        false
    })
}

/// The one line on stderr that says how the run ended.
fn report_outcome(outcome: &RunOutcome, vm: &Vm, quit: bool) {
    match outcome {
        RunOutcome::DebugExit(_) => {}
        RunOutcome::Stopped if quit => eprintln!("\r\nx86bt: quit (Ctrl-A x)"),
        RunOutcome::Stopped => eprintln!(
            "x86bt: --until text seen after {} instructions",
            vm.icount()
        ),
        RunOutcome::PowerOff => eprintln!("x86bt: guest powered off"),
        RunOutcome::HaltedForever => eprintln!(
            "x86bt: guest halted with interrupts disabled at {:04x}:{:08x} (nothing can wake it)",
            vm.cpu.seg[x86bt_cpu::state::sreg::CS].selector,
            vm.cpu.rip
        ),
        RunOutcome::InstructionLimit => eprintln!("x86bt: instruction limit reached"),
        RunOutcome::TripleFault => eprintln!("x86bt: triple fault (CPU shutdown); --no-reboot"),
        RunOutcome::ResetRequested(source) => {
            eprintln!("x86bt: guest requested a reset through the {source}; --no-reboot")
        }
        RunOutcome::Unsupported(w) => eprintln!("x86bt: stopped: {w}"),
        RunOutcome::Divergence(report) => eprint!("x86bt: {report}"),
        RunOutcome::Killed => eprintln!("x86bt: killed by the debugger"),
        RunOutcome::Debug(_) => {}
    }
}

/// Puts the CPU at a loaded kernel's entry, in the state its boot protocol
/// asks for.
fn enter_kernel(cpu: &mut x86bt_cpu::CpuState, entry: KernelEntry) {
    match entry {
        KernelEntry::Multiboot(e) => {
            crate::boot::enter_multiboot(cpu, e.entry, multiboot::BOOTLOADER_MAGIC, e.info_addr)
        }
        KernelEntry::Linux(e) => {
            crate::boot::enter_linux(cpu, e.entry, e.boot_params, e.gdt_base, e.gdt_limit)
        }
    }
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
/// With the entry comes, for a kernel whose headers ask for a CPU feature this
/// CPU lacks (long mode), the line that says so.
fn load_kernel(
    m: &mut x86bt_machine::Machine,
    path: &Path,
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    modules: &[(String, Vec<u8>)],
) -> Result<(KernelEntry, Option<String>), Error> {
    let loader_err = |source| Error::Loader {
        path: path.to_path_buf(),
        source,
    };
    let missing_features = || {
        use x86bt_machine::loader::{missing_cpu_features, missing_features_line};
        let reset = x86bt_cpu::CpuState::reset();
        let missing = missing_cpu_features(image, |leaf, sub| {
            x86bt_cpu::identity::cpuid(&reset, leaf, sub)
        });
        missing_features_line(&path.display().to_string(), &missing)
    };
    if linux::is_bzimage(image) {
        if !modules.is_empty() {
            return Err(Error::Usage(
                "--module is for Multiboot kernels; a Linux kernel takes --initrd".into(),
            ));
        }
        let entry = linux::load(&mut m.mem, image, initrd, cmdline).map_err(loader_err)?;
        // The MP table's processor entries carry CPUID leaf 1's signature
        // and features.
        let id = x86bt_cpu::identity::cpuid(&x86bt_cpu::CpuState::reset(), 1, 0);
        x86bt_machine::pc::prepare_direct_boot(m, id[0], id[3]);
        return Ok((KernelEntry::Linux(entry), missing_features()));
    }
    if multiboot::is_multiboot(image) {
        if initrd.is_some() {
            return Err(Error::Usage(
                "--initrd is for Linux kernels; a Multiboot kernel takes --module".into(),
            ));
        }
        let entry = multiboot::load(&mut m.mem, image, cmdline, modules).map_err(loader_err)?;
        return Ok((KernelEntry::Multiboot(entry), missing_features()));
    }
    Err(Error::Usage(format!(
        "{}: neither a Linux bzImage (no boot sector with a 'HdrS' setup header) nor a Multiboot kernel (no Multiboot v1 header in its first 8 KiB)",
        path.display()
    )))
}

/// Prints `--stats` to stderr.
pub fn print_stats(vm: &Vm, secs: f64) {
    let n = vm.icount();
    // Zero under the translator and lockstep, whose counters follow.
    let s = vm.interpreter_stats().unwrap_or_default();
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
    for i in (0..vm.cpu_count()).filter(|_| vm.cpu_count() > 1) {
        let c = vm.cpu_state(i);
        eprintln!(
            "vCPU {i}: {:?} at {:04x}:{:08x}, {} instructions",
            c.run_state,
            c.seg[x86bt_cpu::state::sreg::CS].selector,
            c.rip,
            c.icount
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_translations_in_reads_the_translator_stats_text() {
        let stats = x86bt_translator::stats::JitStats {
            translations: 12345,
            hits: 7,
            ..Default::default()
        };
        assert_eq!(translations_in(&stats.to_string()), Some(12345));
        // Lockstep's text starts with the same lines.
        let lockstep = format!("{stats}\nlockstep: 3 units, 3 compared");
        assert_eq!(translations_in(&lockstep), Some(12345));
        assert_eq!(translations_in("unit cache: 1 hits"), None);
    }
}
