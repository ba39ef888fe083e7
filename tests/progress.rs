//! `x86bt run --progress`: one status line on stderr, rewritten in place with a
//! carriage return about once a second, ended with a newline at exit; absent
//! without the option. It must not change the run: the guest's output on
//! stdout, the exit status and the instructions retired are the same with and
//! without it, under the interpreter and the translator, for a ROM assembled
//! here and (where the guest files exist) a whole Linux boot with timer
//! interrupts.

use iced_x86::code_asm::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_x86bt"))
}

/// A 64 KiB ROM (real mode, entered at F000:0000 from the reset vector) that
/// prints "start" on COM1, counts ECX down from `spins` (two instructions a
/// turn), prints "done" and leaves through the debug-exit port with 0x10
/// (exit status 0x21).
fn spin_rom(name: &str, spins: u32) -> PathBuf {
    let mut a = CodeAssembler::new(16).expect("asm");
    let mut spin = a.create_label();
    a.mov(dx, 0x3F8).unwrap();
    for &b in b"start\n" {
        a.mov(al, u32::from(b)).unwrap();
        a.out(dx, al).unwrap();
    }
    a.mov(ecx, spins).unwrap();
    a.set_label(&mut spin).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(spin).unwrap();
    for &b in b"done\n" {
        a.mov(al, u32::from(b)).unwrap();
        a.out(dx, al).unwrap();
    }
    a.mov(al, 0x10).unwrap();
    a.out(0xF4, al).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0).expect("assemble");
    let mut image = vec![0xFFu8; 0x1_0000];
    image[..code.len()].copy_from_slice(&code);
    // Reset vector at F000:FFF0: jmp far F000:0000.
    image[0xFFF0..0xFFF5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]);
    let dir = std::env::temp_dir().join(format!("x86bt-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, image).expect("write rom");
    path
}

fn run_rom(rom: &Path, engine: &str, extra: &[&str]) -> Output {
    exe()
        .args(["run", "--serial", "stdio", "--stats", "--engine", engine])
        .arg("--bios")
        .arg(rom)
        .args(extra)
        .output()
        .expect("run x86bt")
}

/// `--stats`' instruction count and wall time.
fn stats(err: &str) -> (u64, f64) {
    let n = err
        .lines()
        .find_map(|l| l.strip_prefix("instructions retired: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count: {err}"));
    let secs = err
        .lines()
        .find_map(|l| l.strip_prefix("wall time: "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no wall time: {err}"));
    (n, secs)
}

/// One progress line: "x86bt: N instructions, F MIPS, virtual time S s, T
/// translations" (or "T units decoded"). Returns N.
fn parse_line(line: &str) -> Option<u64> {
    let rest = line.trim_end().strip_prefix("x86bt: ")?;
    let mut parts = rest.split(", ");
    let n = parts.next()?.strip_suffix(" instructions")?.parse().ok()?;
    parts.next()?.strip_suffix(" MIPS")?.parse::<f64>().ok()?;
    let vt = parts.next()?.strip_prefix("virtual time ")?;
    vt.strip_suffix(" s")?.parse::<f64>().ok()?;
    let units = parts.next()?;
    let count = units
        .strip_suffix(" translations")
        .or_else(|| units.strip_suffix(" units decoded"))?;
    count.parse::<u64>().ok()?;
    parts.next().is_none().then_some(n)
}

/// The progress lines of a stderr: the text before its first newline, split
/// at each carriage return.
fn progress_lines(err: &str) -> Vec<u64> {
    let first = err.split('\n').next().unwrap_or("");
    first
        .split('\r')
        .filter(|s| !s.is_empty())
        .map(|s| parse_line(s).unwrap_or_else(|| panic!("not a progress line: {s:?}")))
        .collect()
}

#[test]
fn progress_line_is_drawn_in_place_and_ended_with_a_newline() {
    // About 600 million instructions: a few seconds under the interpreter.
    let rom = spin_rom("spin-long.rom", 300_000_000);
    let out = run_rom(&rom, "interp", &["--progress"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0x21), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "start\ndone\n");
    assert!(
        err.starts_with('\r'),
        "the line is drawn after a CR: {err:?}"
    );
    let lines = progress_lines(&err);
    let (retired, secs) = stats(&err);
    // The last line is the final count, and a newline ends it.
    assert_eq!(lines.last(), Some(&retired), "{err:?}");
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    if secs >= 2.0 {
        assert!(lines.len() >= 2, "a line a second over {secs} s: {err:?}");
    }
    // The rest of stderr is the run's own report, on lines of its own.
    let rest = err.split_once('\n').map_or("", |(_, r)| r);
    assert!(rest.starts_with("instructions retired: "), "{err:?}");
    assert!(!rest.contains('\r'), "{err:?}");
}

#[test]
fn progress_absent_without_the_option() {
    let rom = spin_rom("spin-short.rom", 1_000_000);
    let out = run_rom(&rom, "interp", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0x21), "{err}");
    assert!(
        !err.contains('\r') && !err.contains("virtual time"),
        "{err:?}"
    );
}

/// With and without `--progress`, under both engines: the same stdout, exit
/// status and instructions retired. The slices `--progress` runs in end in
/// the middle of the spin loop, many times over.
#[test]
fn progress_changes_no_output_status_or_instruction_count() {
    let rom = spin_rom("spin-mid.rom", 20_000_000);
    for engine in ["interp", "jit"] {
        let plain = run_rom(&rom, engine, &[]);
        let shown = run_rom(&rom, engine, &["--progress"]);
        let (a, _) = stats(&String::from_utf8_lossy(&plain.stderr));
        let err = String::from_utf8_lossy(&shown.stderr);
        let (b, _) = stats(&err);
        assert_eq!(a, b, "{engine}: instructions retired");
        assert_eq!(plain.stdout, shown.stdout, "{engine}: stdout");
        assert_eq!(plain.status.code(), shown.status.code(), "{engine}");
        assert_eq!(progress_lines(&err).last(), Some(&b), "{engine}: {err:?}");
        let units = if engine == "jit" {
            " translations"
        } else {
            " units decoded"
        };
        assert!(
            err.split('\n').next().unwrap_or("").ends_with(units),
            "{err:?}"
        );
    }
}

/// The same on a Linux boot to power-off, where the PIT, the APIC timer and
/// the serial port interrupt the guest: the instruction count and the whole
/// console log are the same with and without `--progress`.
#[test]
fn progress_keeps_a_linux_boot_identical() {
    let (kernel, initrd) = ("guests/vmlinuz-686", "guests/initramfs-run.cpio.gz");
    if !(Path::new(kernel).exists() && Path::new(initrd).exists()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {kernel} and {initrd} (scripts/build-guests.sh)"
        );
        eprintln!("SKIPPED: {kernel} or {initrd} is absent (run scripts/build-guests.sh)");
        return;
    }
    let boot = |extra: &[&str]| {
        exe()
            .args(["run", "--kernel", kernel, "--initrd", initrd])
            .args(["--append", "console=ttyS0 panic=-1", "-m", "256"])
            .args(["--serial", "stdio", "--no-reboot", "--engine", "jit"])
            .args(["--max-insns", "40000000000", "--stats"])
            .args(["--rtc", "base=2026-01-01T00:00:00"])
            .args(extra)
            .output()
            .expect("run x86bt")
    };
    let plain = boot(&[]);
    let shown = boot(&["--progress"]);
    let err = String::from_utf8_lossy(&shown.stderr);
    assert_eq!(plain.status.code(), Some(0), "{err}");
    assert_eq!(shown.status.code(), Some(0), "{err}");
    let (a, _) = stats(&String::from_utf8_lossy(&plain.stderr));
    let (b, _) = stats(&err);
    assert_eq!(a, b, "instructions retired");
    assert!(
        plain.stdout == shown.stdout,
        "the console logs differ with --progress"
    );
    assert_eq!(progress_lines(&err).last(), Some(&b), "{err:?}");
}

#[test]
fn progress_with_text_display_is_one_clear_error() {
    let rom = spin_rom("spin-vga.rom", 1);
    let out = exe()
        .args(["run", "--progress", "--display", "text", "--serial", "null"])
        .arg("--bios")
        .arg(&rom)
        .output()
        .expect("run x86bt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--progress"), "{err}");
}
