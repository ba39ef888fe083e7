//! The whole shared SingleStepTests 80286 set through `x86bt sst` (the real
//! binary), against the bar: at least 99.5% of the cases that run pass,
//! fewer than 2% of all cases are skipped, and every skip is named with its reason.
//!
//! The data lives outside the repository (`../shared/data/sst-80286`, or
//! `X86BT_SST_DIR`). Without it the test says so on stderr and skips; under CI
//! (`CI` set) a missing data set is a failure, because CI always has it.

use std::path::PathBuf;
use std::process::Command;

fn data_dir() -> PathBuf {
    std::env::var_os("X86BT_SST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/sst-80286")
        })
}

fn counts(line: &str) -> Option<(u64, u64, u64)> {
    let mut it = line
        .split(", ")
        .map(|p| p.split_whitespace().next()?.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

#[test]
fn sst_80286_set_meets_pass_and_skip_bars() {
    let dir = data_dir();
    if !dir.join("00.MOO.gz").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {}",
            dir.display()
        );
        eprintln!(
            "SKIPPED sst_80286_set_meets_pass_and_skip_bars: no data at {}",
            dir.display()
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .arg("sst")
        .arg(&dir)
        .output()
        .expect("run x86bt sst");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    let (passed, failed, skipped) =
        counts(last).unwrap_or_else(|| panic!("bad summary line: {last:?}"));
    let total = passed + failed + skipped;
    eprintln!("{last}");
    assert_eq!(total, 294_600, "every case of the set is accounted for");
    assert!(
        passed as f64 >= 0.995 * (passed + failed) as f64,
        "pass rate {passed}/{} is below 99.5%",
        passed + failed
    );
    assert!(
        (skipped as f64) < 0.02 * total as f64,
        "{skipped} of {total} skipped (>= 2%)"
    );
    let named: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("skipped "))
        .filter_map(|l| l.split(':').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(named, skipped, "every skip is counted under a named reason");
    assert!(
        !out.status.success() || failed == 0,
        "exit status reflects failures"
    );
}

#[test]
fn sst_missing_path_is_one_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(["sst", "/nonexistent/sst"])
        .output()
        .expect("run x86bt sst");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("/nonexistent/sst") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn sst_folder_without_test_files_is_an_error() {
    let dir = std::env::temp_dir().join(format!("x86bt-sst-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("README.txt"), "not a test").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .arg("sst")
        .arg(&dir)
        .output()
        .expect("run x86bt sst");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no SingleStepTests files"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("0 passed"));
}

#[test]
fn sst_corrupt_file_is_one_clear_error() {
    let dir = std::env::temp_dir().join(format!("x86bt-sst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join("00.MOO.gz");
    std::fs::write(&f, [0x1F, 0x8B, 0x08, 0x00, 0x12]).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .arg("sst")
        .arg(&f)
        .output()
        .expect("run x86bt sst");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("malformed MOO") && !err.contains("panicked"),
        "{err}"
    );
}

/// The same set through the translator and through lockstep (translator checked
/// against the interpreter after every unit): every file's line, and every
/// failing case shown, is the interpreter's, so the translator passes and fails
/// exactly the same hardware cases; lockstep reports no divergence.
#[test]
fn sst_80286_set_same_results_under_jit_and_lockstep() {
    let dir = data_dir();
    if !dir.join("00.MOO.gz").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {}",
            dir.display()
        );
        eprintln!(
            "SKIPPED sst_80286_set_same_results_under_jit_and_lockstep: no data at {}",
            dir.display()
        );
        return;
    }
    let run = |engine: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
            .args(["sst", "--show", "100000", "--engine", engine])
            .arg(&dir)
            .output()
            .expect("run x86bt sst");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let interp = run("interp");
    assert!(interp.lines().count() > 100, "{interp}");
    for engine in ["jit", "lockstep"] {
        let other = run(engine);
        assert!(
            !other.contains("lockstep:"),
            "{engine}: divergence reported"
        );
        let first = interp.lines().zip(other.lines()).find(|(a, b)| a != b);
        assert!(first.is_none(), "{engine} differs from interp: {first:?}");
        assert_eq!(interp.lines().count(), other.lines().count(), "{engine}");
    }
}
