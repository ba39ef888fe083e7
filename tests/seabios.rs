//! Debian's SeaBIOS through `x86bt run --bios`: its log on port 0x402 must show
//! the configured RAM size and reach the boot attempts. The image comes from the
//! `seabios` package, which the README's setup installs; without it the test says
//! so and skips, and under CI a missing image is a failure.

use std::path::Path;
use std::process::Command;

const BIOS: &str = "/usr/share/seabios/bios-256k.bin";

fn have_bios() -> bool {
    if Path::new(BIOS).exists() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have {BIOS}");
    eprintln!("SKIPPED: {BIOS} is absent (apt-get install seabios)");
    false
}

fn run_seabios(mib: u64, engine: &str) -> (String, std::process::ExitStatus) {
    run_seabios_smp(mib, engine, 1)
}

fn run_seabios_smp(mib: u64, engine: &str, cpus: u32) -> (String, std::process::ExitStatus) {
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args([
            "run",
            "--bios",
            BIOS,
            "--debugcon",
            "stdio",
            "--serial",
            "null",
            "--no-reboot",
            "--engine",
            engine,
        ])
        .args(["-smp", &cpus.to_string()])
        .args([
            "-m",
            &mib.to_string(),
            "--until",
            "No bootable device",
            "--max-insns",
            "200000000",
        ])
        .output()
        .expect("run x86bt");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status,
    )
}

/// The checks, on one engine.
fn detects_ram_and_reaches_boot_attempts(engine: &str) {
    if !have_bios() {
        return;
    }
    for mib in [64u64, 256] {
        let (log, status) = run_seabios(mib, engine);
        assert!(status.success(), "{engine}, -m {mib}: {status}\n{log}");
        // RAM above 1 MiB, as SeaBIOS reads it from fw_cfg's etc/e820.
        let want = format!(
            "qemu/e820: addr 0x0000000000100000 len 0x{:016x} [RAM]",
            (mib - 1) << 20
        );
        assert!(
            log.contains(&want),
            "{engine}, -m {mib}: no {want:?} in\n{log}"
        );
        assert!(log.contains("Booting from Hard Disk..."), "{engine}: {log}");
        assert!(log.contains("No bootable device."), "{engine}: {log}");
    }
}

#[test]
fn seabios_detects_ram_and_reaches_boot_attempts() {
    detects_ram_and_reaches_boot_attempts("interp");
}

#[test]
fn seabios_under_jit_detects_ram_and_reaches_boot_attempts() {
    detects_ram_and_reaches_boot_attempts("jit");
}

/// Lockstep compares the translator with the interpreter after every unit of
/// the whole firmware run; a divergence is exit status 116.
#[test]
fn seabios_under_lockstep_reaches_boot_attempts_without_divergence() {
    detects_ram_and_reaches_boot_attempts("lockstep");
}

/// With `-smp 4`, SeaBIOS reads the CPU count from fw_cfg, starts the APs
/// with INIT-SIPI (its broadcast, with no delay between them), counts each
/// one under its spinlock (which works only because PAUSE ends a vCPU's
/// turn), and builds its own MP table and ACPI tables for them.
#[test]
fn seabios_finds_4_cpus_on_every_engine() {
    if !have_bios() {
        return;
    }
    for engine in ["interp", "jit", "lockstep"] {
        let (log, status) = run_seabios_smp(64, engine, 4);
        assert!(status.success(), "{engine}: {status}\n{log}");
        for id in 1..4 {
            let want = format!("handle_smp: apic_id=0x{id}");
            assert!(log.contains(&want), "{engine}: no {want:?} in\n{log}");
        }
        assert!(
            log.contains("Found 4 cpu(s) max supported 4 cpu(s)"),
            "{engine}: {log}"
        );
        assert!(log.contains("Copying MPTABLE"), "{engine}: {log}");
    }
}
