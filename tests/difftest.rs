//! `x86bt difftest` against QEMU: agreement on a small real-mode program, and a
//! deliberately injected emulator bug (the hidden `--inject-bug` hook) that the
//! differ must report at the right instruction and register. Without
//! qemu-system-i386 the tests say so and skip; under CI a missing QEMU fails.

use iced_x86::code_asm::*;
use std::process::Command;

fn have_qemu() -> bool {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("qemu-system-i386").exists());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have qemu-system-i386"
        );
        eprintln!("SKIPPED: qemu-system-i386 not found (scripts/setup.sh installs it)");
    }
    found
}

fn program() -> std::path::PathBuf {
    let mut a = CodeAssembler::new(16).expect("asm");
    a.cli().unwrap();
    a.mov(ax, 0x1234u32).unwrap();
    a.mov(bx, 0x0F0Fu32).unwrap();
    a.add(ax, bx).unwrap();
    a.xor(cx, cx).unwrap();
    a.mov(dx, 0x9000u32).unwrap();
    a.mov(ss, dx).unwrap();
    a.mov(sp, 0x1000u32).unwrap();
    a.push(ax).unwrap();
    a.pop(si).unwrap();
    a.shl(si, 3).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x7C00).expect("assemble");
    let dir = std::env::temp_dir().join(format!("x86bt-dt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("prog.bin");
    std::fs::write(&p, code).expect("write");
    p
}

fn difftest(extra: &[&str]) -> (String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .arg("difftest")
        .arg("--flat")
        .arg(program())
        .args(["--at", "0x7c00", "--max-insns", "100"])
        .args(extra)
        .output()
        .expect("run difftest");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

#[test]
fn difftest_small_program_agrees_with_qemu() {
    if !have_qemu() {
        return;
    }
    let (out, code) = difftest(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("agree: 12 instructions compared") && out.contains("guest halted"),
        "{out}"
    );
}

#[test]
fn difftest_reports_injected_bug_at_its_instruction() {
    if !have_qemu() {
        return;
    }
    // Flip EAX bit 0 after instruction 3 (the jump at the reset vector is 1, CLI
    // is 2, MOV AX is 3): the differ must stop right there on EAX.
    let (out, code) = difftest(&["--inject-bug", "3"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DIVERGENCE after instruction 3"), "{out}");
    let eax_row = out
        .lines()
        .find(|l| l.starts_with("eax"))
        .unwrap_or_default()
        .to_string();
    assert!(
        eax_row.contains("0x1235") && eax_row.contains("0x1234"),
        "eax row: {eax_row:?}\n{out}"
    );
    assert!(
        out.contains("mov ax,1234h"),
        "history shows the instruction: {out}"
    );
}

/// The bounded campaign CI runs: 100 programs of 500 random instructions in one
/// mode, on one engine (one instruction per unit), no divergence outside the
/// allow-list.
fn campaign(mode: &str, engine: &str) {
    if !have_qemu() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args([
            "difftest", "--random", "--seed", "2026", "--count", "100", "--len", "500", "--mode",
            mode, "--engine", engine,
        ])
        .output()
        .expect("run difftest campaign");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("100 programs of 500 instructions") && stdout.contains(" 0 diverged"),
        "{stdout}"
    );
}

#[test]
fn difftest_campaign_real_mode_has_no_divergence() {
    campaign("real", "interp");
}

#[test]
fn difftest_campaign_prot16_has_no_divergence() {
    campaign("prot16", "interp");
}

#[test]
fn difftest_campaign_prot32_has_no_divergence() {
    campaign("prot32", "interp");
}

#[test]
fn difftest_campaign_real_mode_under_jit_has_no_divergence() {
    campaign("real", "jit");
}

#[test]
fn difftest_campaign_prot16_under_jit_has_no_divergence() {
    campaign("prot16", "jit");
}

#[test]
fn difftest_campaign_prot32_under_jit_has_no_divergence() {
    campaign("prot32", "jit");
}
