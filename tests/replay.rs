//! `--record FILE` and `--replay FILE` through `x86bt run`: an interactive
//! shell session on Debian's i386 kernel (busybox on the serial console), typed
//! at a human pace with idle time following the wall clock (`--icount
//! sleep=on`), ended with Ctrl-A x; its replay, with nothing on stdin, must
//! print byte for byte the same console and retire the same instructions. The
//! oracle is the recorded run itself. A replay file that is not one, or that
//! was recorded with other options, is refused with one line and status 2.
//!
//! The guest comes from `scripts/build-guests.sh`; without it the guest test
//! says so and skips, and under CI it is a failure.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KERNEL: &str = "guests/vmlinuz-686";
const SHELL: &str = "guests/initramfs-shell.cpio.gz";
const MARKER: &str = "X86BT-GUEST-READY";

fn have_guest() -> bool {
    if [KERNEL, SHELL].iter().all(|p| Path::new(p).exists()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have the Linux guest (scripts/build-guests.sh)"
    );
    eprintln!("SKIPPED: {KERNEL} or {SHELL} is absent (run scripts/build-guests.sh)");
    false
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("x86bt-replay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn x86bt(engine: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_x86bt"));
    c.args([
        "run", "--engine", engine, "--kernel", KERNEL, "--initrd", SHELL,
    ])
    .args([
        "--append",
        "console=ttyS0 quiet",
        "-m",
        "256",
        "--serial",
        "stdio",
        "--stats",
    ]);
    c
}

/// The "instructions retired" count of `--stats`.
fn retired(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("instructions retired: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count in\n{stderr}"))
}

/// Boots the shell guest recording into `file`, and types each of `steps`
/// once the text before it has come out (the prompt after the marker first),
/// a little later, as a person would. Returns the console and stderr.
fn record(engine: &str, file: &Path, steps: &[(&str, &str)]) -> (String, String) {
    let mut child = x86bt(engine)
        .args(["--icount", "sleep=on", "--record"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run x86bt");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = Vec::new();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut next = 0;
    let mut from = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok(bytes) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        text.extend_from_slice(&bytes);
        let s = String::from_utf8_lossy(&text).into_owned();
        while let Some((wait_for, typed)) = steps.get(next) {
            let Some(i) = s[from..].find(wait_for) else {
                break;
            };
            from += i + wait_for.len();
            std::thread::sleep(Duration::from_millis(150));
            // Typed in two parts, so the input arrives at two points.
            let (a, b) = typed.split_at(typed.len() / 2);
            stdin.write_all(a.as_bytes()).expect("type");
            stdin.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(40));
            stdin.write_all(b.as_bytes()).expect("type");
            stdin.flush().expect("flush");
            next += 1;
        }
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let status = child.wait().expect("wait");
    let text = String::from_utf8_lossy(&text).into_owned();
    assert!(status.success(), "status {status}\n{err}\n{text}");
    assert_eq!(next, steps.len(), "not every step was typed\n{text}");
    (text, err)
}

fn replay(engine: &str, file: &Path) -> Output {
    x86bt(engine)
        .arg("--replay")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run x86bt")
}

fn record_and_replay(engine: &str) {
    let file = temp(&format!("session-{engine}.rec"));
    let steps = [
        ("# ", "echo he\"\"llo-typed\n"),
        ("hello-typed", "uname -a\n"),
        (" i686 GNU/Linux", "ls /\n"),
        ("proc", "\x01x"),
    ];
    let (console, err) = record(engine, &file, &steps);
    assert!(console.contains(MARKER), "{console}");
    assert!(err.contains("quit (Ctrl-A x)"), "{err}");
    let rec = std::fs::read_to_string(&file).expect("recording");
    assert!(rec.starts_with("x86bt-replay 1\n"), "{rec}");
    assert!(
        rec.lines().filter(|l| l.starts_with("in ")).count() >= 4,
        "{rec}"
    );
    // Paced idle periods mostly reach their deadline (COM1 polls its input
    // every virtual millisecond), so `idle` records are rare.
    assert!(rec.lines().last().unwrap().starts_with("end "), "{rec}");

    let out = replay(engine, &file);
    let replay_err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{replay_err}", out.status);
    assert!(replay_err.contains("end of the recording"), "{replay_err}");
    let replayed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(replayed, console, "the replay's console differs");
    assert_eq!(retired(&replay_err), retired(&err));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn typed_shell_session_replays_identically_under_jit() {
    if have_guest() {
        record_and_replay("jit");
    }
}

#[test]
fn replay_refuses_other_options() {
    if !have_guest() {
        return;
    }
    let file = temp("options.rec");
    let (_, _) = record("jit", &file, &[("# ", "\x01x")]);
    let out = replay("interp", &file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("recorded with engine jit, this run has interp"),
        "{err}"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn corrupt_or_missing_replay_file_is_one_line_and_status_2() {
    let bad = temp("corrupt.rec");
    std::fs::write(
        &bad,
        "x86bt-replay 1\nrtc-base 0\nserial-input 1\nin 5 xx 0a\n",
    )
    .unwrap();
    for file in [bad.clone(), temp("absent.rec")] {
        let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
            .args(["run", "--kernel", "/nonexistent", "--replay"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .expect("run x86bt");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("replay") || err.contains("absent.rec"),
            "{err}"
        );
    }
    let _ = std::fs::remove_file(&bad);
}
