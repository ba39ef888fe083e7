//! Snapshots end to end, through the `x86bt` binary: `--snapshot-at N:FILE`
//! saves while the run goes on, `--restore FILE` continues, and the oracle is
//! always the uninterrupted run with the same options.
//!
//! - A ROM assembled here (the PIT interrupting every 100 µs of virtual
//!   time, a handler that prints the main loop's counter, HLT in the loop):
//!   its output is a fingerprint of exactly where each interrupt landed.
//!   Under both engines: a run that saves at three points prints and
//!   retires what one that does not does; each snapshot restored and run to
//!   the end completes the output of a run stopped at that point into the
//!   uninterrupted one, with the same instruction count and exit status;
//!   a snapshot of one engine restores under the other; Ctrl-A s (piped to
//!   stdin) saves on demand without changing the run.
//! - Debian's Linux 686 kernel with its busybox initramfs, under the
//!   translator: the whole boot to power-off, saved at three points
//!   (decompression, early kernel, userspace), each restored to the end; and
//!   with `-smp 2`, one point. Under the interpreter, a window of the boot
//!   (the full boot takes minutes there): from a snapshot the translator took
//!   as the kernel starts printing, the interpreter runs 0.6 G instructions
//!   in one go, and again as a chain of runs each restoring the snapshot the
//!   one before saved; the chain must print and retire what the one run did.
//! - Refusals: a missing, truncated, corrupt or other-version file, and a
//!   snapshot restored into another machine, end with one line and status 2.
//!
//! The Linux guests come from `scripts/build-guests.sh`; without them those
//! tests say so and skip (under CI, where they must be present, they fail).

use iced_x86::code_asm::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_x86bt"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("x86bt-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// The ROM's address of the IRQ0 handler (F000:0400).
const HANDLER: u16 = 0x400;
/// Interrupts before the guest exits.
const TICKS: u16 = 60;

/// A 64 KiB ROM: the 8259 and the PIT (channel 0, mode 2, 120 counts, about
/// 100 µs) are set up, then a loop increments a dword and halts every 128 Ki
/// increments (about four ticks: most ticks land in the loop, so what they
/// print depends on exactly when they come, and the halts test idle time);
/// each IRQ0 prints the dword's low byte in hex, and the 60th exits through
/// the debug-exit port (status 0x21).
fn ticking_rom() -> PathBuf {
    ticking_rom_of(TICKS, "ticking.rom")
}

/// [`ticking_rom`] with `ticks` interrupts before the exit.
fn ticking_rom_of(ticks: u16, name: &str) -> PathBuf {
    let mut a = CodeAssembler::new(16).expect("asm");
    let mut main = a.create_label();
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7000).unwrap();
    a.mov(word_ptr(0x20), u32::from(HANDLER)).unwrap();
    a.mov(word_ptr(0x22), 0xF000).unwrap();
    for (port, v) in [
        (0x20, 0x11),
        (0x21, 0x08),
        (0x21, 4),
        (0x21, 1),
        (0x21, 0xFE),
    ] {
        a.mov(al, v).unwrap();
        a.out(port, al).unwrap();
    }
    a.mov(al, 0x34).unwrap();
    a.out(0x43, al).unwrap();
    a.mov(al, 120).unwrap();
    a.out(0x40, al).unwrap();
    a.xor(al, al).unwrap();
    a.out(0x40, al).unwrap();
    a.sti().unwrap();
    a.set_label(&mut main).unwrap();
    a.inc(dword_ptr(0x500)).unwrap();
    a.test(dword_ptr(0x500), 0x1_FFFF).unwrap();
    a.jnz(main).unwrap();
    a.hlt().unwrap();
    a.jmp(main).unwrap();
    let code = a.assemble(0).expect("assemble");

    let mut h = CodeAssembler::new(16).expect("asm");
    let mut digit = h.create_label();
    let mut not_last = h.create_label();
    let mut letter = h.create_label();
    h.push(ax).unwrap();
    h.push(dx).unwrap();
    h.mov(dx, 0x3F8).unwrap();
    h.mov(al, byte_ptr(0x500)).unwrap();
    h.mov(ah, al).unwrap();
    h.shr(al, 4).unwrap();
    h.call(digit).unwrap();
    h.mov(al, ah).unwrap();
    h.and(al, 0xF).unwrap();
    h.call(digit).unwrap();
    h.mov(al, b' ' as i32).unwrap();
    h.out(dx, al).unwrap();
    h.inc(word_ptr(0x504)).unwrap();
    h.cmp(word_ptr(0x504), i32::from(ticks)).unwrap();
    h.jb(not_last).unwrap();
    h.mov(al, b'\n' as i32).unwrap();
    h.out(dx, al).unwrap();
    h.mov(al, 0x10).unwrap();
    h.out(0xF4, al).unwrap();
    h.set_label(&mut not_last).unwrap();
    h.mov(al, 0x20).unwrap();
    h.out(0x20, al).unwrap();
    h.pop(dx).unwrap();
    h.pop(ax).unwrap();
    h.iret().unwrap();
    // AL (0-15) as a hex digit on the port in DX.
    h.set_label(&mut digit).unwrap();
    h.add(al, b'0' as i32).unwrap();
    h.cmp(al, b'9' as i32).unwrap();
    h.jbe(letter).unwrap();
    h.add(al, 7).unwrap();
    h.set_label(&mut letter).unwrap();
    h.out(dx, al).unwrap();
    h.ret().unwrap();
    let handler = h.assemble(u64::from(HANDLER)).expect("assemble");

    let mut image = vec![0xFFu8; 0x1_0000];
    image[..code.len()].copy_from_slice(&code);
    let at = usize::from(HANDLER);
    image[at..at + handler.len()].copy_from_slice(&handler);
    // Reset vector at F000:FFF0: jmp far F000:0000.
    image[0xFFF0..0xFFF5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]);
    let path = temp(name);
    std::fs::write(&path, image).expect("write rom");
    path
}

/// One run's outcome: the console, the instructions retired, the status.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    console: Vec<u8>,
    retired: u64,
    status: Option<i32>,
}

/// Runs x86bt with `args`, the console to a file, `--stats` on.
fn run(args: &[&str], console: &str) -> (Run, String) {
    let file = temp(console);
    let out: Output = exe()
        .arg("run")
        .args(args)
        .arg("--serial")
        .arg(format!("file:{}", file.display()))
        .arg("--stats")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run x86bt");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let retired = err
        .lines()
        .find_map(|l| l.strip_prefix("instructions retired: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count in:\n{err}"));
    let console = std::fs::read(&file).expect("console file");
    let _ = std::fs::remove_file(&file);
    (
        Run {
            console,
            retired,
            status: out.status.code(),
        },
        err,
    )
}

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

/// The checks of the module comment, for one machine (`base` options, the
/// run ending by itself before `end` instructions) and the snapshot points
/// `points` gives for the uninterrupted run's instruction count. Returns
/// the uninterrupted run.
fn check_points(name: &str, base: &[&str], end: u64, points: &dyn Fn(u64) -> Vec<u64>) -> Run {
    let end_s = end.to_string();
    let head_base = base;
    let base = with(base, &["--max-insns", &end_s]);
    let (plain, _) = run(&base, &format!("{name}-plain.txt"));
    let points = points(plain.retired);
    assert!(plain.retired < end, "{name}: the run must end by itself");
    assert!(!plain.console.is_empty(), "{name}: no console output");

    let files: Vec<PathBuf> = points
        .iter()
        .map(|n| temp(&format!("{name}-{n}.snap")))
        .collect();
    let specs: Vec<String> = points
        .iter()
        .zip(&files)
        .map(|(n, f)| format!("{n}:{}", f.display()))
        .collect();
    let mut saving = base.clone();
    for s in &specs {
        saving.extend(["--snapshot-at", s.as_str()]);
    }
    let (saved, err) = run(&saving, &format!("{name}-saving.txt"));
    assert_eq!(
        saved, plain,
        "{name}: saving snapshots changed the run\n{err}"
    );
    assert_eq!(err.matches("snapshot at ").count(), points.len(), "{err}");

    for (n, file) in points.iter().zip(&files) {
        let n_s = n.to_string();
        let (head, _) = run(
            &with(head_base, &["--max-insns", &n_s]),
            &format!("{name}-head.txt"),
        );
        let f = file.display().to_string();
        let (tail, err) = run(
            &with(&base, &["--restore", &f]),
            &format!("{name}-tail.txt"),
        );
        let whole = [head.console.as_slice(), tail.console.as_slice()].concat();
        assert!(
            whole == plain.console,
            "{name}: restored at {n}: the console differs\nhead+tail:\n{}\nuninterrupted:\n{}\nstderr:\n{err}",
            String::from_utf8_lossy(&whole),
            String::from_utf8_lossy(&plain.console)
        );
        assert_eq!(
            (tail.retired, tail.status),
            (plain.retired, plain.status),
            "{name}: restored at {n}\n{err}"
        );
    }
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    plain
}

#[test]
fn rom_snapshots_continue_bit_for_bit_under_both_engines() {
    let rom = ticking_rom();
    let rom = rom.display().to_string();
    let mut runs = Vec::new();
    for engine in ["interp", "jit"] {
        let base = ["--bios", rom.as_str(), "--engine", engine];
        let plain = check_points(&format!("rom-{engine}"), &base, 100_000_000, &|end| {
            vec![1_000, end / 3 + 7, end * 5 / 6]
        });
        assert_eq!(plain.status, Some(0x21), "the ROM's debug exit");
        assert_eq!(
            plain.console.iter().filter(|&&b| b == b' ').count(),
            usize::from(TICKS),
            "{}",
            String::from_utf8_lossy(&plain.console)
        );
        runs.push(plain);
    }
    assert_eq!(runs[0], runs[1], "interp and jit differ");
}

#[test]
fn rom_snapshot_of_one_engine_restores_under_the_other() {
    let rom = ticking_rom();
    let rom = rom.display().to_string();
    let file = temp("cross.snap");
    let (plain, _) = run(&["--bios", &rom, "--engine", "jit"], "cross-plain.txt");
    let at = (plain.retired / 2).to_string();
    let spec = format!("{at}:{}", file.display());
    let (head, _) = run(
        &["--bios", &rom, "--engine", "interp", "--max-insns", &at],
        "cross-head.txt",
    );
    run(
        &[
            "--bios",
            &rom,
            "--engine",
            "interp",
            "--max-insns",
            &at,
            "--snapshot-at",
            &spec,
        ],
        "cross-save.txt",
    );
    let f = file.display().to_string();
    let (tail, err) = run(
        &["--bios", &rom, "--engine", "jit", "--restore", &f],
        "cross-tail.txt",
    );
    assert_eq!(
        [head.console, tail.console].concat(),
        plain.console,
        "{err}"
    );
    assert_eq!((tail.retired, tail.status), (plain.retired, plain.status));
    let _ = std::fs::remove_file(file);
}

/// Ctrl-A s on the console (here piped to stdin) saves
/// `x86bt-snapshot-<instructions>.snap` in the current directory and the
/// run goes on unchanged; the snapshot continues as the others do.
#[test]
fn ctrl_a_s_saves_on_demand_and_the_run_goes_on() {
    let rom = ticking_rom_of(5000, "long.rom").display().to_string();
    let (plain, _) = run(&["--bios", &rom, "--engine", "jit"], "demand-plain.txt");
    let dir = temp("demand");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut child = exe()
        .args([
            "run", "--bios", &rom, "--engine", "jit", "--serial", "stdio",
        ])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run x86bt");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"\x01s").expect("type Ctrl-A s");
    }
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.stdout == plain.console, "the run changed\n{err}");
    assert_eq!(out.status.code(), plain.status);
    let n: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("x86bt: snapshot at "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no snapshot line in: {err}"));
    let file = dir.join(format!("x86bt-snapshot-{n}.snap"));
    assert!(file.exists(), "{err}");
    let n_s = n.to_string();
    let (head, _) = run(
        &["--bios", &rom, "--engine", "jit", "--max-insns", &n_s],
        "d-head.txt",
    );
    let f = file.display().to_string();
    let (tail, err) = run(
        &["--bios", &rom, "--engine", "jit", "--restore", &f],
        "d-tail.txt",
    );
    assert!(
        [head.console, tail.console].concat() == plain.console,
        "{err}"
    );
    assert_eq!((tail.retired, tail.status), (plain.retired, plain.status));
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs x86bt expecting a refusal: status 2 and one line on stderr that
/// contains `want`.
fn refused(args: &[&str], want: &str) {
    let out = exe().arg("run").args(args).output().expect("run x86bt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(want), "{args:?}: wanted {want:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_snapshot_files_and_other_machines_are_refused_with_one_line() {
    let rom = ticking_rom();
    let rom = rom.display().to_string();
    let good = temp("good.snap");
    let spec = format!("1000000:{}", good.display());
    run(
        &[
            "--bios",
            &rom,
            "--max-insns",
            "1000000",
            "--snapshot-at",
            &spec,
        ],
        "refusals.txt",
    );
    let bytes = std::fs::read(&good).expect("snapshot written");
    let variant = |name: &str, change: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        change(&mut b);
        let p = temp(name);
        std::fs::write(&p, b).expect("write");
        p.display().to_string()
    };
    let restore = |file: &str, want: &str| {
        refused(
            &["--bios", &rom, "--restore", file, "--serial", "null"],
            want,
        );
    };
    restore(&temp("absent.snap").display().to_string(), "No such file");
    restore(
        &variant("short.snap", &|b| b.truncate(b.len() / 2)),
        "truncated",
    );
    restore(&variant("header.snap", &|b| b.truncate(20)), "truncated");
    restore(
        &variant("flipped.snap", &|b| {
            let i = b.len() - 100;
            b[i] ^= 0x40;
        }),
        "corrupt",
    );
    restore(&variant("longer.snap", &|b| b.push(0)), "corrupt");
    restore(
        &variant("version.snap", &|b| b[8] = b[8].wrapping_add(1)),
        "format version",
    );
    restore(
        &variant("other.snap", &|b| b[..8].copy_from_slice(b"NOTASNAP")),
        "not an x86bt snapshot",
    );
    let g = good.display().to_string();
    refused(
        &[
            "--bios",
            &rom,
            "-m",
            "64",
            "--restore",
            &g,
            "--serial",
            "null",
        ],
        "RAM: the snapshot has 128 MiB, this machine 64 MiB",
    );
    refused(
        &[
            "--bios",
            &rom,
            "-smp",
            "2",
            "--restore",
            &g,
            "--serial",
            "null",
        ],
        "CPUs: the snapshot has 1, this machine 2",
    );
    refused(
        &[
            "--bios",
            &rom,
            "-device",
            "edu",
            "--restore",
            &g,
            "--serial",
            "null",
        ],
        "devices:",
    );
    let other_rom = temp("other.rom");
    let mut image = std::fs::read(&rom).expect("rom");
    image[0x8000] ^= 1;
    std::fs::write(&other_rom, image).expect("write");
    refused(
        &[
            "--bios",
            &other_rom.display().to_string(),
            "--restore",
            &g,
            "--serial",
            "null",
        ],
        "firmware:",
    );
    refused(
        &["--bios", &rom, "--snapshot-at", "12", "--serial", "null"],
        "expected N:FILE",
    );
    // What does not compose yet is refused before anything runs: a restored
    // run cannot be recorded or replayed (the log starts at power-on), and
    // the GDB server's loop takes no snapshot plan.
    let log = temp("refused.replay").display().to_string();
    for flag in ["--record", "--replay"] {
        refused(
            &[
                "--bios",
                &rom,
                "--restore",
                &g,
                flag,
                &log,
                "--serial",
                "null",
            ],
            "not with --restore",
        );
    }
    refused(
        &[
            "--bios",
            &rom,
            "--snapshot-at",
            &spec,
            "-gdb",
            "tcp::0",
            "--serial",
            "null",
        ],
        "--snapshot-at does not go with a GDB server",
    );
}

// --- Linux -------------------------------------------------------------------

const KERNEL: &str = "guests/vmlinuz-686";
const INITRD: &str = "guests/initramfs-run.cpio.gz";

fn have_linux() -> bool {
    if Path::new(KERNEL).exists() && Path::new(INITRD).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have {KERNEL} and {INITRD} (scripts/build-guests.sh)"
    );
    eprintln!("SKIPPED: {KERNEL} or {INITRD} is absent (run scripts/build-guests.sh)");
    false
}

/// The Linux machine's options (as tests/linux_boot.rs boots it).
fn linux(engine: &'static str, smp: &'static str) -> Vec<&'static str> {
    vec![
        "--kernel",
        KERNEL,
        "--initrd",
        INITRD,
        "--append",
        "console=ttyS0 panic=-1",
        "-m",
        "256",
        "-smp",
        smp,
        "--no-reboot",
        "--engine",
        engine,
        "--rtc",
        "base=2026-01-01T00:00:00",
    ]
}

/// The whole boot (about 6.8 G instructions) under the translator, saved in
/// the decompressor (1.5 G, no console yet), as the kernel prints its boot
/// log (3 G) and in userspace (5.5 G).
#[test]
fn linux_boot_snapshots_continue_bit_for_bit_under_the_translator() {
    if !have_linux() {
        return;
    }
    let plain = check_points("linux-jit", &linux("jit", "1"), 40_000_000_000, &|_| {
        vec![1_500_000_000, 3_000_000_000, 5_500_000_000]
    });
    assert_eq!(plain.status, Some(0), "powered off");
    assert!(String::from_utf8_lossy(&plain.console).contains("X86BT-GUEST-READY"));
}

/// With two vCPUs taking turns: one point, after the second CPU is up.
#[test]
fn linux_smp_boot_snapshot_continues_bit_for_bit() {
    if !have_linux() {
        return;
    }
    check_points("linux-smp", &linux("jit", "2"), 40_000_000_000, &|_| {
        vec![4_500_000_000]
    });
}

/// The interpreter over a window of the boot where the kernel prints its
/// log: a snapshot the translator took at 2.4 G is the start; the one run
/// goes to 3.0 G; the chain saves at 2.6 G and 2.8 G, each run restoring the
/// previous one's snapshot (so restoring a snapshot the interpreter took is
/// tested too).
#[test]
fn linux_boot_window_snapshots_continue_bit_for_bit_under_the_interpreter() {
    if !have_linux() {
        return;
    }
    let start = temp("linux-start.snap");
    let spec = format!("2400000000:{}", start.display());
    run(
        &with(
            &linux("jit", "1"),
            &["--max-insns", "2400000000", "--snapshot-at", &spec],
        ),
        "window-start.txt",
    );
    let interp = linux("interp", "1");
    let s = start.display().to_string();
    let (one, err) = run(
        &with(&interp, &["--restore", &s, "--max-insns", "3000000000"]),
        "window-one.txt",
    );
    assert_eq!(one.status, Some(124), "the limit ends it\n{err}");
    assert!(one.console.len() > 2000, "the window prints the boot log");
    let mut console = Vec::new();
    let mut from = start.clone();
    let mut last = None;
    for (i, stop) in ["2600000000", "2800000000", "3000000000"]
        .iter()
        .enumerate()
    {
        let to = temp(&format!("linux-chain-{i}.snap"));
        let spec = format!("{stop}:{}", to.display());
        let f = from.display().to_string();
        let (part, err) = run(
            &with(
                &interp,
                &["--restore", &f, "--max-insns", stop, "--snapshot-at", &spec],
            ),
            "window-part.txt",
        );
        assert!(err.contains("snapshot at "), "{err}");
        console.extend(part.console.iter().copied());
        last = Some(part);
        from = to;
    }
    let last = last.expect("three parts");
    assert!(
        console == one.console,
        "the chain printed:\n{}\nthe one run:\n{}",
        String::from_utf8_lossy(&console),
        String::from_utf8_lossy(&one.console)
    );
    assert_eq!((last.retired, last.status), (one.retired, one.status));
}
