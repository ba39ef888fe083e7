//! How `x86bt run` ends: every outcome has its own exit status and one line on
//! stderr (README, "Exit status"), every reset path obeys `--no-reboot` as in
//! QEMU, misused options are one clear error, a failing output is reported, and
//! the terminal is restored when a signal ends the run.
//!
//! The guests are tiny ROMs assembled here. The oracle for the reset paths is
//! the PC itself: a reset restarts the ROM at the reset vector with RAM kept,
//! which the ROM sees through a boot counter it keeps in RAM.

use iced_x86::code_asm::*;
use std::path::PathBuf;
use std::process::{Command, Output};

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_x86bt"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("x86bt-outcomes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// A 64 KiB ROM whose code (real mode, at F000:0000) `body` emits; the reset
/// vector jumps there. `data` is placed at F000:0200.
fn rom(name: &str, body: impl FnOnce(&mut CodeAssembler), data: &[u8]) -> PathBuf {
    let mut a = CodeAssembler::new(16).expect("asm");
    body(&mut a);
    let code = a.assemble(0).expect("assemble");
    assert!(code.len() <= 0x200);
    let mut image = vec![0xFFu8; 0x1_0000];
    image[..code.len()].copy_from_slice(&code);
    image[0x200..0x200 + data.len()].copy_from_slice(data);
    // Reset vector at F000:FFF0: jmp far F000:0000.
    image[0xFFF0..0xFFF5].copy_from_slice(&[0xEA, 0x00, 0x00, 0x00, 0xF0]);
    let path = temp(name);
    std::fs::write(&path, image).expect("write rom");
    path
}

/// A guest that counts its boots in RAM at 0000:0500 (RAM survives a reset).
/// On its second boot it writes 0x21 to the debug-exit port (status 0x43); on
/// its first it runs `reset` and then spins, so an ignored reset ends with
/// the instruction limit instead.
fn reset_guest(name: &str, reset: impl FnOnce(&mut CodeAssembler), data: &[u8]) -> PathBuf {
    rom(
        name,
        |a| {
            let mut second = a.create_label();
            let mut spin = a.create_label();
            a.xor(ax, ax).unwrap();
            a.mov(ds, ax).unwrap();
            a.inc(byte_ptr(0x500)).unwrap();
            a.cmp(byte_ptr(0x500), 2).unwrap();
            a.je(second).unwrap();
            reset(a);
            a.set_label(&mut spin).unwrap();
            a.jmp(spin).unwrap();
            a.set_label(&mut second).unwrap();
            a.mov(al, 0x21).unwrap();
            a.out(0xF4, al).unwrap();
            a.hlt().unwrap();
        },
        data,
    )
}

fn run(path: &PathBuf, extra: &[&str]) -> Output {
    exe()
        .args([
            "run",
            "--max-insns",
            "2000000",
            "--serial",
            "null",
            "--bios",
        ])
        .arg(path)
        .args(extra)
        .output()
        .expect("run x86bt")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each reset path: (name, code that asks for the reset, the ROM's data,
/// the words that name the path on stderr).
type ResetPath = (
    &'static str,
    fn(&mut CodeAssembler),
    &'static [u8],
    &'static str,
);

const RESET_PATHS: &[ResetPath] = &[
    (
        // i8042 command 0xFE: pulse output-port bit 0 (CPU reset) low.
        "kbc",
        |a| {
            a.mov(al, 0xFE).unwrap();
            a.out(0x64, al).unwrap();
        },
        &[],
        "keyboard controller",
    ),
    (
        // Port 0x92 (PS/2 system control port A) bit 0: fast reset on 0 -> 1.
        "port92",
        |a| {
            a.in_(al, 0x92).unwrap();
            a.or(al, 1).unwrap();
            a.out(0x92, al).unwrap();
        },
        &[],
        "port 0x92",
    ),
    (
        // PIIX3 reset control register: SYS_RST | RST_CPU (PIIX3 datasheet 4.1.17).
        "cf9",
        |a| {
            a.mov(dx, 0xCF9).unwrap();
            a.mov(al, 0x06).unwrap();
            a.out(dx, al).unwrap();
        },
        &[],
        "port 0xCF9",
    ),
    (
        // The reset register the FADT names (what an ACPI OS writes): its port
        // and value come from the tables x86bt gives a directly booted kernel.
        "acpi",
        |a| {
            a.mov(dx, x86bt_machine::acpi_tables::RESET_REG_PORT as u32)
                .unwrap();
            a.mov(al, x86bt_machine::acpi_tables::RESET_VALUE as u32)
                .unwrap();
            a.out(dx, al).unwrap();
        },
        &[],
        "port 0xCF9",
    ),
    (
        // An IDT of limit 0: INT 3 faults (#GP), so does the #GP, and then the
        // #DF: a triple fault (SDM vol. 3A 6.15, interrupt 8).
        "triple",
        |a| {
            a.lidt(ptr(0x200).cs()).unwrap();
            a.int3().unwrap();
        },
        &[0, 0, 0, 0, 0, 0],
        "triple fault",
    ),
];

#[test]
fn run_reset_paths_without_no_reboot_restart_the_machine() {
    for (name, reset, data, _) in RESET_PATHS {
        let path = reset_guest(&format!("reset-{name}.rom"), *reset, data);
        let out = run(&path, &[]);
        // Second boot reached: the reset restarted the ROM with RAM kept.
        assert_eq!(out.status.code(), Some(0x43), "{name}: {}", stderr(&out));
    }
}

#[test]
fn run_reset_paths_with_no_reboot_end_the_run_with_their_status() {
    for (name, reset, data, words) in RESET_PATHS {
        let path = reset_guest(&format!("noreboot-{name}.rom"), *reset, data);
        let out = run(&path, &["--no-reboot"]);
        let err = stderr(&out);
        let want = if *name == "triple" { 118 } else { 122 };
        assert_eq!(out.status.code(), Some(want), "{name}: {err}");
        assert!(err.contains(words), "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
    }
}

#[test]
fn run_debug_exit_statuses_are_odd_and_ours_even() {
    // Every debug-exit value gives an odd status, so none is one of x86bt's
    // own (all even): 50, 61 and 62 gave 101, 123 and 125, once x86bt's.
    for v in [0u8, 50, 61, 62, 127] {
        let path = rom(
            &format!("exit-{v}.rom"),
            |a| {
                a.mov(al, u32::from(v)).unwrap();
                a.out(0xF4, al).unwrap();
                a.hlt().unwrap();
            },
            &[],
        );
        let out = run(&path, &[]);
        assert_eq!(out.status.code(), Some(i32::from(v) << 1 | 1));
    }
    for ours in [2, 100, 116, 118, 120, 122, 124, 126] {
        assert_eq!(ours % 2, 0, "x86bt's status {ours} must be even");
    }
}

#[test]
fn run_hlt_with_interrupts_off_is_not_success() {
    let path = rom(
        "cli-hlt.rom",
        |a| {
            a.cli().unwrap();
            a.hlt().unwrap();
        },
        &[],
    );
    let out = run(&path, &[]);
    assert_eq!(out.status.code(), Some(120), "{}", stderr(&out));
    assert!(stderr(&out).contains("halted with interrupts disabled"));
}

fn one_error_line(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// `x86bt run --bios ROM` with the options `opt`.
fn run_bios_with(rom: &PathBuf, opt: &[&str]) -> Output {
    exe()
        .args(["run", "--bios"])
        .arg(rom)
        .args(opt)
        .output()
        .expect("run")
}

#[test]
fn run_kernel_options_without_kernel_are_one_clear_error() {
    let path = rom("plain.rom", |a| a.hlt().unwrap(), &[]);
    for opt in [
        ["--append", "console=ttyS0"],
        ["--initrd", "/etc/hostname"],
        ["--module", "/etc/hostname"],
    ] {
        let err = one_error_line(&run_bios_with(&path, &opt));
        assert!(err.contains("--kernel"), "{opt:?}: {err}");
    }
}

#[test]
fn run_serial_to_full_disk_is_reported() {
    let path = rom(
        "print.rom",
        |a| {
            let mut again = a.create_label();
            a.mov(dx, 0x3F8).unwrap();
            a.set_label(&mut again).unwrap();
            a.mov(al, b'x' as u32).unwrap();
            a.out(dx, al).unwrap();
            a.mov(al, b'\n' as u32).unwrap();
            a.out(dx, al).unwrap();
            a.jmp(again).unwrap();
        },
        &[],
    );
    let out = exe()
        .args(["run", "--serial", "file:/dev/full", "--bios"])
        .arg(&path)
        .output()
        .expect("run");
    let err = one_error_line(&out);
    assert!(err.contains("serial output failed"), "{err}");
}

#[test]
fn run_bad_rtc_and_icount_options_are_one_clear_error() {
    let path = rom("rtc.rom", |a| a.hlt().unwrap(), &[]);
    for opt in [
        ["--rtc", "base=yesterday"],
        ["--rtc", "base=utc,clock=host"],
        ["--icount", "sleep=maybe"],
        ["--icount", "shift=3"],
    ] {
        let err = one_error_line(&run_bios_with(&path, &opt));
        assert!(err.contains(opt[0]), "{opt:?}: {err}");
    }
}

#[test]
fn run_help_describes_kernel_booting_and_statuses() {
    let out = exe().args(["run", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Linux bzImage") && help.contains("Multiboot"),
        "{help}"
    );
    assert!(help.contains("122") && help.contains("120"), "{help}");
}

/// Where the test kernels load (1 MiB) and enter (after the header).
const KERNEL_LOAD: u32 = 0x10_0000;

/// A Multiboot v1 image in the a.out-kludge form (Multiboot §3.1.1: header
/// address fields, loaded at [`KERNEL_LOAD`] as a whole, entered after the
/// 32-byte header) around 32-bit code assembled for that entry.
fn multiboot_image(a: &mut CodeAssembler) -> Vec<u8> {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 1 << 16; // the address fields below are valid
    let code = a.assemble(u64::from(KERNEL_LOAD + 32)).expect("assemble");
    let mut image = Vec::new();
    for field in [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
        KERNEL_LOAD,      // header_addr
        KERNEL_LOAD,      // load_addr
        0,                // load_end_addr: the whole file
        0,                // bss_end_addr: no bss
        KERNEL_LOAD + 32, // entry_addr
    ] {
        image.extend_from_slice(&field.to_le_bytes());
    }
    image.extend_from_slice(&code);
    image
}

/// A Multiboot kernel that prints its first module's string, a newline and the module's bytes on
/// COM1, then leaves through the debug-exit port with 0x10.
fn module_echo_kernel() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).expect("asm");
    let mut puts = a.create_label();
    let mut bytes = a.create_label();
    let mut bytes_done = a.create_label();
    let mut puts_done = a.create_label();
    a.mov(esi, dword_ptr(ebx + 24)).unwrap(); // mods_addr (Multiboot 3.3)
    a.mov(edi, esi).unwrap();
    a.mov(esi, dword_ptr(edi + 8)).unwrap(); // the module's string
    a.mov(dx, 0x3F8).unwrap();
    a.set_label(&mut puts).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(puts_done).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(puts).unwrap();
    a.set_label(&mut puts_done).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    a.out(dx, al).unwrap();
    a.mov(esi, dword_ptr(edi)).unwrap(); // mod_start
    a.mov(ecx, dword_ptr(edi + 4)).unwrap(); // mod_end
    a.set_label(&mut bytes).unwrap();
    a.cmp(esi, ecx).unwrap();
    a.jae(bytes_done).unwrap();
    a.lodsb().unwrap();
    a.out(dx, al).unwrap();
    a.jmp(bytes).unwrap();
    a.set_label(&mut bytes_done).unwrap();
    a.mov(al, 0x10).unwrap();
    a.out(0xF4, al).unwrap();
    a.hlt().unwrap();
    multiboot_image(&mut a)
}

#[test]
fn run_module_with_arguments_passes_the_whole_string() {
    let kernel = temp("echo.mb");
    std::fs::write(&kernel, module_echo_kernel()).expect("write kernel");
    let module = temp("module.bin");
    std::fs::write(&module, "HELLO-MODULE").expect("write module");
    let arg = format!("{} a=1 b=2", module.display());
    let out = exe()
        .args([
            "run",
            "--serial",
            "stdio",
            "--max-insns",
            "100000",
            "--kernel",
        ])
        .arg(&kernel)
        .args(["--module", &arg])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0x21), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{arg}\nHELLO-MODULE")
    );
}

/// The terminal settings of the pty's slave side.
fn termios_of(fd: i32) -> libc::termios {
    // SAFETY: termios is plain old data, filled by tcgetattr for a valid fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is the open slave side of a pty and `t` is valid to write.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}

#[test]
fn run_signal_while_raw_restores_the_terminal() {
    use std::os::fd::FromRawFd;
    let path = rom(
        "spin.rom",
        |a| {
            let mut spin = a.create_label();
            a.set_label(&mut spin).unwrap();
            a.jmp(spin).unwrap();
        },
        &[],
    );
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
    ] {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two descriptors; the other arguments may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty");
        let before = termios_of(slave);
        assert_ne!(before.c_lflag & libc::ICANON, 0, "a new pty is canonical");
        // SAFETY: dup of a valid descriptor; the child's stdin owns the copy.
        let stdin = unsafe { std::process::Stdio::from_raw_fd(libc::dup(slave)) };
        let child = exe()
            .args(["run", "--serial", "stdio", "--bios"])
            .arg(&path)
            .stdin(stdin)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // Wait until x86bt has put the terminal in raw mode.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while termios_of(slave).c_lflag & libc::ICANON != 0 {
            assert!(std::time::Instant::now() < deadline, "{name}: never raw");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: signals the child we spawned, which is still running.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().expect("wait");
        let after = termios_of(slave);
        // SAFETY: closes the two descriptors openpty gave us.
        unsafe {
            libc::close(master);
            libc::close(slave);
        }
        assert_eq!(out.status.code(), Some(128 + sig), "{name}");
        assert_eq!(after.c_lflag, before.c_lflag, "{name}: lflag restored");
        assert_eq!(after.c_iflag, before.c_iflag, "{name}: iflag restored");
        assert!(String::from_utf8_lossy(&out.stderr).contains(name));
    }
}

/// A Multiboot kernel (loaded at 1 MiB) that counts its boots at 0x500 (RAM
/// outside its image) and asks the keyboard controller for a reset on its
/// first boot; on its second it leaves with 0x21 (status 0x43).
fn reboot_counting_kernel() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).expect("asm");
    let mut second = a.create_label();
    let mut spin = a.create_label();
    a.inc(byte_ptr(0x500)).unwrap();
    a.cmp(byte_ptr(0x500), 2).unwrap();
    a.je(second).unwrap();
    a.mov(al, 0xFE).unwrap();
    a.out(0x64, al).unwrap();
    a.set_label(&mut spin).unwrap();
    a.jmp(spin).unwrap();
    a.set_label(&mut second).unwrap();
    a.mov(al, 0x21).unwrap();
    a.out(0xF4, al).unwrap();
    a.hlt().unwrap();
    multiboot_image(&mut a)
}

#[test]
fn run_reset_of_a_directly_booted_kernel_boots_it_again() {
    let kernel = temp("reboot.mb");
    std::fs::write(&kernel, reboot_counting_kernel()).expect("write kernel");
    for engine in ["interp", "jit"] {
        let out = exe()
            .args([
                "run",
                "--serial",
                "null",
                "--max-insns",
                "100000",
                "--engine",
                engine,
            ])
            .arg("--kernel")
            .arg(&kernel)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0x43), "{engine}: {}", stderr(&out));
        let out = exe()
            .args([
                "run",
                "--serial",
                "null",
                "--max-insns",
                "100000",
                "--no-reboot",
            ])
            .arg("--kernel")
            .arg(&kernel)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(122), "{engine}: {}", stderr(&out));
    }
}
