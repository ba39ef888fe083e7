//! `x86bt run --bios` end to end: a ROM assembled here prints on COM1 and leaves
//! through the debug-exit port; bad input gets one clear error line.

use iced_x86::code_asm::*;
use std::path::PathBuf;
use std::process::Command;

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_x86bt"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("x86bt-rom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// A 64 KiB ROM: the reset vector jumps to F000:0000, which sends "hello\n" to
/// COM1 and writes 0x10 to the debug-exit port (exit status 0x21).
fn hello_rom() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).expect("asm");
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.mov(ax, 0xF000).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(si, 0x100u32).unwrap();
    a.mov(dx, 0x3F8).unwrap();
    a.set_label(&mut next).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(next).unwrap();
    a.set_label(&mut done).unwrap();
    a.mov(al, 0x10).unwrap();
    a.out(0xF4, al).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0).expect("assemble");
    let mut rom = vec![0xFFu8; 0x1_0000];
    rom[..code.len()].copy_from_slice(&code);
    rom[0x100..0x107].copy_from_slice(b"hello\n\0");
    // Reset vector at F000:FFF0: jmp far F000:0000.
    rom[0xFFF0..0xFFF5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]);
    rom
}

#[test]
fn rom_hello_prints_on_com1_and_exits_through_debug_exit() {
    let path = temp("hello.rom");
    std::fs::write(&path, hello_rom()).expect("write rom");
    let out = exe()
        .args(["run", "--bios"])
        .arg(&path)
        .args(["--serial", "stdio", "--max-insns", "100000"])
        .output()
        .expect("run x86bt");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(
        out.status.code(),
        Some((0x10 << 1) | 1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rom_hlt_with_interrupts_off_exits_with_documented_status() {
    let mut rom = vec![0xFFu8; 0x1_0000];
    rom[0xFFF0..0xFFF2].copy_from_slice(&[0xFA, 0xF4]); // cli; hlt
    let path = temp("hlt.rom");
    std::fs::write(&path, rom).expect("write rom");
    let out = exe()
        .args(["run", "--bios"])
        .arg(&path)
        .output()
        .expect("run");
    // Not 0: a halt with nothing to wake the CPU is not a clean power-off.
    assert_eq!(out.status.code(), Some(120));
    assert!(String::from_utf8_lossy(&out.stderr).contains("halted with interrupts disabled"));
}

#[test]
fn rom_instruction_limit_exits_with_documented_status() {
    let mut rom = vec![0xFFu8; 0x1_0000];
    rom[0xFFF0..0xFFF2].copy_from_slice(&[0xEB, 0xFE]); // jmp $
    let path = temp("loop.rom");
    std::fs::write(&path, rom).expect("write rom");
    let out = exe()
        .args(["run", "--max-insns", "1000", "--bios"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(124));
}

fn one_error_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn run_missing_bios_is_one_clear_error() {
    let out = exe()
        .args(["run", "--bios", "/nonexistent/bios.bin"])
        .output()
        .expect("run");
    let err = one_error_line(&out);
    assert!(err.contains("/nonexistent/bios.bin"), "{err}");
}

#[test]
fn run_bios_of_wrong_size_is_one_clear_error() {
    let path = temp("short.rom");
    std::fs::write(&path, [0u8; 1000]).expect("write");
    let out = exe()
        .args(["run", "--bios"])
        .arg(&path)
        .output()
        .expect("run");
    let err = one_error_line(&out);
    assert!(err.contains("1000 bytes"), "{err}");
}

#[test]
fn run_bad_serial_option_is_one_clear_error() {
    let path = temp("opt.rom");
    std::fs::write(&path, hello_rom()).expect("write");
    let out = exe()
        .args(["run", "--serial", "tcp:1234", "--bios"])
        .arg(&path)
        .output()
        .expect("run");
    let err = one_error_line(&out);
    assert!(err.contains("--serial"), "{err}");
}

#[test]
fn run_bad_memory_size_is_rejected_by_the_parser() {
    let out = exe()
        .args(["run", "-m", "0", "--bios", "x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
