//! Guest time on Debian's i386 kernel (the README's first guest), through
//! `x86bt run`: every clock runs on virtual time, idle time included; while the
//! guest idles, `--icount sleep=on` (the default on an interactive console)
//! makes virtual time follow the wall clock, and `sleep=off` jumps to the next
//! timer event; the RTC starts at the host's date; a run without input is
//! bit-identical to the next; `panic=-1 --no-reboot` on a corrupt initrd ends
//! the run with the reset status.
//!
//! The oracles are the guest's own clocks (/proc/uptime, `date`), the host's
//! wall clock and date, and a second run of the same guest.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KERNEL: &str = "guests/vmlinuz-686";
const SHELL: &str = "guests/initramfs-shell.cpio.gz";
const RUN: &str = "guests/initramfs-run.cpio.gz";
const MARKER: &str = "X86BT-GUEST-READY";

fn have_guest() -> bool {
    if [KERNEL, SHELL, RUN].iter().all(|p| Path::new(p).exists()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have the Linux guest (scripts/build-guests.sh)"
    );
    eprintln!("SKIPPED: {KERNEL} or its initramfs is absent (run scripts/build-guests.sh)");
    false
}

/// What a shell session printed, with the wall-clock time each chunk arrived.
struct Session {
    text: String,
    arrivals: Vec<(usize, Instant)>,
}

impl Session {
    /// When the text up to and including the first `needle` after `from` had
    /// arrived, and where it ends.
    fn seen(&self, needle: &str, from: usize) -> (Instant, usize) {
        let at = self.text[from..]
            .find(needle)
            .map(|i| from + i + needle.len())
            .unwrap_or_else(|| panic!("{needle:?} missing\n{}", self.text));
        let when = self
            .arrivals
            .iter()
            .find(|(end, _)| *end >= at)
            .map(|(_, t)| *t)
            .expect("arrival");
        (when, at)
    }
}

/// Boots the shell guest with `extra` options, types `commands` once the
/// marker is out, and collects the console until the guest powers off.
fn shell_session(extra: &[&str], commands: &str) -> Session {
    let mut child = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args([
            "run", "--engine", "jit", "--kernel", KERNEL, "--initrd", SHELL,
        ])
        .args([
            "--append",
            "console=ttyS0 quiet",
            "-m",
            "256",
            "--serial",
            "stdio",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run x86bt");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send((buf[..n].to_vec(), Instant::now())).is_err() {
                break;
            }
        }
    });
    let mut s = Session {
        text: String::new(),
        arrivals: Vec::new(),
    };
    let mut stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(300);
    while let Ok((bytes, when)) =
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        s.text.push_str(&String::from_utf8_lossy(&bytes));
        s.arrivals.push((s.text.len(), when));
        // The shell's prompt after the marker: type the commands.
        if let Some(i) = s.text.find(MARKER) {
            if s.text[i..].contains("# ") {
                if let Some(mut input) = stdin.take() {
                    input.write_all(commands.as_bytes()).expect("type");
                }
            }
        }
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "status {status}\n{}", s.text);
    s
}

/// The two /proc/uptime readings around `sleep 2`, and the wall time between
/// the echo of the command line and the shell's output after the sleep.
fn timed_sleep(extra: &[&str]) -> (f64, Duration, Session) {
    // `SL""EPT` echoes as typed, so only the command's output contains SLEPT.
    let s = shell_session(
        extra,
        "cat /proc/uptime; sleep 2; echo SL\"\"EPT; cat /proc/uptime; date -u +%s; poweroff -f\n",
    );
    let (typed, after_echo) = s.seen("SL\"\"EPT", 0);
    let (slept, after) = s.seen("SLEPT", after_echo);
    // /proc/uptime is one line of two decimals: uptime and idle time.
    let uptime = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                let v: Vec<f64> = l
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                (v.len() == 2 && l.split_whitespace().count() == 2 && l.contains('.')).then(|| v[0])
            })
            .unwrap_or_else(|| panic!("no uptime in {text:?}"))
    };
    let first = uptime(&s.text[after_echo..]);
    let second = uptime(&s.text[after..]);
    (second - first, slept.duration_since(typed), s)
}

#[test]
fn guest_sleep_follows_the_wall_clock_with_icount_sleep_on() {
    if !have_guest() {
        return;
    }
    let (guest, wall, s) = timed_sleep(&["--icount", "sleep=on"]);
    assert!(
        (1.95..2.3).contains(&guest),
        "guest slept {guest} s\n{}",
        s.text
    );
    assert!(
        wall >= Duration::from_millis(1900),
        "wall {wall:?}\n{}",
        s.text
    );

    // The RTC started at the host's date (the boot itself takes seconds).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let date: i64 = s.text[s.seen("SLEPT", 0).1..]
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .find(|&v: &i64| v > 1_000_000_000)
        .unwrap_or_else(|| panic!("no date\n{}", s.text));
    assert!((date - now).abs() < 600, "guest date {date}, host {now}");
}

#[test]
fn guest_sleep_skips_idle_time_with_icount_sleep_off() {
    if !have_guest() {
        return;
    }
    let (guest, wall, s) = timed_sleep(&["--icount", "sleep=off", "--rtc", "base=2001-09-09"]);
    // The guest still sees two seconds pass, on every clock it reads...
    assert!(
        (1.95..2.3).contains(&guest),
        "guest slept {guest} s\n{}",
        s.text
    );
    // ...but the host does not wait for them.
    assert!(
        wall < Duration::from_millis(1500),
        "wall {wall:?}\n{}",
        s.text
    );
    // 2001-09-09T00:00:00Z is 999,993,600 s after the epoch (`date -u -d`).
    let date = s
        .text
        .lines()
        .find_map(|l| l.trim().parse::<i64>().ok().filter(|&v| v > 900_000_000));
    assert!(
        date.is_some_and(|d| (999_993_600..999_993_700).contains(&d)),
        "--rtc base: {date:?}"
    );
}

/// Boots the run guest to power-off; returns its console and instruction count.
fn run_guest(extra: &[&str]) -> (Vec<u8>, String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(["run", "--engine", "jit", "--kernel", KERNEL])
        .args(["-m", "256", "--serial", "stdio", "--no-reboot", "--stats"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run x86bt");
    let err = String::from_utf8_lossy(&out.stderr);
    let count = err
        .lines()
        .find(|l| l.starts_with("instructions retired"))
        .unwrap_or("")
        .to_string();
    (out.stdout, format!("{count}\n{err}"), out.status.code())
}

#[test]
fn guest_run_without_input_is_bit_identical() {
    if !have_guest() {
        return;
    }
    let opts = [
        "--initrd",
        RUN,
        "--append",
        "console=ttyS0",
        "--rtc",
        "base=2026-01-01T00:00:00",
    ];
    let (a, a_err, a_status) = run_guest(&opts);
    let (b, b_err, b_status) = run_guest(&opts);
    assert_eq!(a_status, Some(0), "{a_err}");
    assert_eq!(b_status, Some(0), "{b_err}");
    assert!(String::from_utf8_lossy(&a).contains("reboot: Power down"));
    assert_eq!(
        a_err.lines().next(),
        b_err.lines().next(),
        "instruction counts"
    );
    assert!(a == b, "console output differs between two runs");
}

#[test]
fn guest_panic_on_corrupt_initrd_ends_with_reset_status_under_no_reboot() {
    if !have_guest() {
        return;
    }
    let bad = std::env::temp_dir().join(format!("x86bt-bad-initrd-{}", std::process::id()));
    // A gzip header followed by garbage: the kernel cannot unpack it, finds no
    // root filesystem and panics; panic=-1 asks for an immediate reboot.
    let mut junk = vec![0x1F, 0x8B, 0x08, 0x00, 0, 0, 0, 0, 0, 3];
    junk.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&bad, junk).expect("write initrd");
    let bad = bad.display().to_string();
    let opts = ["--initrd", &bad, "--append", "console=ttyS0 panic=-1"];
    let (console, err, status) = run_guest(&opts);
    let console = String::from_utf8_lossy(&console);
    assert!(console.contains("Kernel panic"), "{console}");
    assert_eq!(status, Some(122), "{err}\n{console}");
    assert!(err.contains("reset through the port 0xCF9"), "{err}");
}
