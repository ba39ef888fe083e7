//! memtest86+ (Debian's package `memtest86+`, version 6) booted through
//! `x86bt run --kernel` on the translator, from the files the package installs,
//! unpadded: the 32-bit and the 64-bit image must each complete a full pass of
//! their default tests with no error (the 64-bit one runs in long mode), with
//! no warning about a missing CPU feature.
//!
//! The oracle is memtest86+ itself: it writes patterns to every byte of RAM it
//! is given and reads them back, and its serial status lines say which tests ran,
//! how much memory it saw, which pass it is on and how many errors it found.
//! `scripts/build-guests.sh` installs the package; without it the tests say so
//! and skip, and under CI that is a failure.

use std::path::Path;
use std::process::Command;

const IA32: &str = "/boot/memtest86+ia32.bin";
const X64: &str = "/boot/memtest86+x64.bin";
/// The command line Debian's package documents for a serial console; `nopause`
/// starts testing without waiting for a key.
const APPEND: &str = "console=ttyS0,115200 nopause";
/// The status line once pass 0 is over with no error. memtest86+ redraws the
/// status rows (2-9) over the serial line, not the scrolling notice area where
/// "** Pass completed, no errors **" goes, so the pass counter and the error
/// count on row 9 are the signal. An error in pass 0 would show a non-zero
/// count here.
const PASS_DONE: &str = "Pass:  1        Errors: 0";

fn have(image: &str) -> bool {
    if Path::new(image).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have {image} (scripts/build-guests.sh installs memtest86+)"
    );
    eprintln!(
        "skipped: {image} is absent (apt-get install memtest86+, or scripts/build-guests.sh)"
    );
    false
}

/// Runs `image` on the translator with `mib` MiB of RAM until `until` shows on
/// COM1 or `max_insns` retire; returns (exit status, stdout, stderr).
fn run(image: &str, mib: &str, until: &str, max_insns: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(["run", "--engine", "jit", "--kernel", image])
        .args(["--append", APPEND, "-m", mib, "--serial", "stdio"])
        .args(["--no-reboot", "--until", until, "--max-insns", max_insns])
        .output()
        .expect("run x86bt");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `image` through one full pass and checks it as the module says.
fn full_pass_has_no_errors(image: &str) {
    if !have(image) {
        return;
    }
    // The package's image ends inside its last 16-byte paragraph of syssize.
    let len = std::fs::metadata(image).expect("stat").len();
    eprintln!("{image}: {len} bytes, loaded as installed");

    // 8 MiB keeps a full pass near 170e9 instructions, 160e9 of them the bit
    // fade test's two 80-second waits on the TSC (virtual time is 1 ns an
    // instruction, and memtest86+ measures the 1000 MHz that gives; it
    // measured 160 MHz while port reads saw the time of the run loop's last
    // pass); the limit is a bound, not a target.
    let (status, log, err) = run(image, "8", PASS_DONE, "250000000000");
    let ctx = format!(
        "status {status:?}\nstderr:\n{err}\nconsole tail:\n{}",
        tail(&log)
    );

    assert_eq!(status, Some(0), "{ctx}");
    assert!(err.contains("--until text seen"), "{ctx}");
    assert!(
        !err.contains("warning"),
        "the image needs nothing missing\n{ctx}"
    );
    assert!(log.contains(PASS_DONE), "{ctx}");
    assert!(log.contains("Status: Pass"), "{ctx}");
    // No error count other than 0 was ever drawn.
    for (i, _) in log.match_indices("Errors: ") {
        let count = log[i + 8..].split(' ').next().unwrap_or("");
        assert_eq!(count, "0", "memtest86+ reported errors\n{ctx}");
    }
    // The pass went from the first test to the last. The serial redraws are
    // periodic (every two seconds of guest time), so a short test may run
    // between two of them; these three are long enough to be caught in both
    // images: #0 starts the pass, #6 (moving inversions of a 32- or 64-bit
    // pattern) is in the middle, #10 ends it (two 80-second fades).
    for test in [
        "#0  [Address test, walking ones, no cache]",
        "#6  [Moving inversions, ",
        "#10 [Bit fade test, 2 patterns]",
    ] {
        assert!(log.contains(test), "{test} never showed\n{ctx}");
    }
    // It tested the RAM the e820 map gives: 639 KiB below the EBDA and 7 MiB
    // above 1 MiB, 7807 KiB = 7.62 MiB.
    assert!(log.contains("of 7.62MB]"), "{ctx}");
}

#[test]
fn memtest_ia32_unpadded_full_pass_has_no_errors() {
    full_pass_has_no_errors(IA32);
}

#[test]
fn memtest_x64_full_pass_in_long_mode_has_no_errors() {
    full_pass_has_no_errors(X64);
}

/// The last 2000 characters of the console, for failure messages.
fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(2000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}
