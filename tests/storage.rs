//! Disks and CDs through SeaBIOS, as a user boots them: `-cdrom` with the
//! ISOLINUX and GRUB ISOs of `scripts/build-disk-guests.sh` to the busybox
//! marker (and the VGA text screen ISOLINUX leaves); `-hda`/`-drive` with
//! the raw disk image, whose init mounts its ext4 root from the disk,
//! prints how many boots it has counted in /data/counter, writes the next
//! value and syncs. The oracle is the guest itself: the marker lines it
//! prints, the screen it draws, and the counter it reads back next boot.
//!
//! - A boot from IDE is SIGKILLed as soon as the guest says it wrote (after
//!   its `sync`): the next boot, from the same image on virtio-blk, must read
//!   that value back, so a guest flush reached the host file (ATA FLUSH
//!   CACHE is an fsync).
//! - `snapshot=on` boots write nothing to the image: its bytes are compared.
//! - A qcow2 overlay made by `qemu-img` over the raw disk takes the guest's
//!   writes; `qemu-img check` finds it consistent, the backing file unchanged.
//! - A second x86bt on an image in use, and a missing image, fail before the
//!   guest starts with one line and exit status 2.
//!
//! - Debian's installer boots from `-cdrom` to its first menu, read off the
//!   VGA text screen.
//!
//! The guests come from `scripts/build-guests.sh` (which runs
//! build-disk-guests.sh) and SeaBIOS from Debian's `seabios`; without them
//! the tests say so and skip, and under CI that is a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIOS: &str = "/usr/share/seabios/bios-256k.bin";

fn have(files: &[&str]) -> bool {
    let missing: Vec<&&str> = files.iter().filter(|f| !Path::new(f).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have {missing:?} (scripts/setup.sh)"
    );
    eprintln!("SKIPPED: {missing:?} absent (run scripts/setup.sh)");
    false
}

fn x86bt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_x86bt"))
}

/// A private copy of a guest image, so the tests never change `guests/`.
fn scratch_copy(src: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("x86bt-storage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let dst = dir.join(name);
    std::fs::copy(src, &dst).expect("copy the image");
    dst
}

/// Boots with `args` until the serial console shows `until` (exit 0) or the
/// guest powers off; returns the console and the exit status.
fn boot(args: &[&str], engine: &str, until: Option<&str>) -> (String, i32) {
    let mut cmd = x86bt();
    cmd.args(["run", "-m", "256", "--serial", "stdio", "--engine", engine])
        .args(["--max-insns", "40000000000", "--no-reboot"])
        .args(args);
    if let Some(u) = until {
        cmd.args(["--until", u]);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run x86bt");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text, out.status.code().unwrap_or(-1))
}

/// Boots `iso` from the CD to the busybox marker; returns the console and
/// the VGA text screen at the end.
fn iso_boots(iso: &str, engine: &str) -> (String, String) {
    let dir = std::env::temp_dir().join(format!(
        "x86bt-storage-{}-{}",
        Path::new(iso)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("iso"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let dump = dir.join("screen.txt");
    let dump_arg = dump.to_str().expect("utf-8 path");
    let (log, status) = boot(
        &["-cdrom", iso, "--screen-dump", dump_arg],
        engine,
        Some("X86BT-GUEST-READY"),
    );
    assert_eq!(status, 0, "{iso} on {engine}:\n{log}");
    assert!(log.contains("Booting from DVD/CD"), "{log}");
    assert!(log.contains("Linux version 6.1"), "{log}");
    assert!(log.contains("X86BT-GUEST-READY"), "{log}");
    let screen = std::fs::read_to_string(&dump).expect("screen dump");
    let _ = std::fs::remove_dir_all(&dir);
    (log, screen)
}

/// The ISOLINUX ISO, and the VGA's text screen as SeaBIOS's VGA BIOS and
/// ISOLINUX draw it (`--screen-dump`): the BIOS banner, the boot line,
/// ISOLINUX's own banner and its loading lines.
#[test]
fn isolinux_iso_boots_from_the_cd_and_draws_on_the_vga_screen() {
    if !have(&[
        BIOS,
        "guests/isolinux.iso",
        "/usr/share/seabios/vgabios-isavga.bin",
    ]) {
        return;
    }
    let (_, screen) = iso_boots("guests/isolinux.iso", "jit");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].starts_with("SeaBIOS (version"), "{screen}");
    assert!(screen.contains("Booting from DVD/CD..."), "{screen}");
    assert!(screen.contains("ISOLINUX 6.04"), "{screen}");
    assert!(
        screen.contains("Loading /boot/vmlinuz-686... ok"),
        "{screen}"
    );
    assert!(lines.len() <= 25, "80x25: {screen}");
}

/// The GRUB ISO (the interpreter boots it in the by-hand matrix of
/// docs/notes.md; CI keeps to the translator here for time).
#[test]
fn grub_iso_boots_from_the_cd() {
    if !have(&[BIOS, "guests/grub.iso"]) {
        return;
    }
    let (log, _) = iso_boots("guests/grub.iso", "jit");
    assert!(log.contains("GNU GRUB"), "{log}");
}

/// Debian's installer (`debian-installer-12-netboot-i386`'s kernel and
/// initrd on an ISOLINUX ISO) boots from the CD to its first menu, read off
/// the VGA text screen: the run stops when the screen shows the menu's
/// title, and the dump holds the whole dialog.
#[test]
fn debian_installer_reaches_its_first_menu_on_the_vga_screen() {
    if !have(&[
        BIOS,
        "guests/di-i386.iso",
        "/usr/share/seabios/vgabios-isavga.bin",
    ]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("x86bt-storage-di-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let dump = dir.join("screen.txt");
    let out = x86bt()
        .args(["run", "-m", "512", "--serial", "null", "--engine", "jit"])
        .args(["--max-insns", "60000000000", "-cdrom", "guests/di-i386.iso"])
        .args(["--until", "[!!] Select a language", "--screen-dump"])
        .arg(&dump)
        .stdin(Stdio::null())
        .output()
        .expect("run x86bt");
    let err = String::from_utf8_lossy(&out.stderr);
    let screen = std::fs::read_to_string(&dump).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{err}\n{screen}");
    assert!(screen.contains("[!!] Select a language"), "{screen}");
    assert!(
        screen.contains("Choose the language to be used for the installation process."),
        "{screen}"
    );
    assert!(screen.contains("English"), "{screen}");
    assert!(
        screen.contains("<Tab> moves; <Space> selects; <Enter> activates buttons"),
        "{screen}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-boot` picks what SeaBIOS boots first (fw_cfg `bootorder`): with a disk
/// and a CD both present, `d` boots the CD and `c` the disk. The run stops
/// at the line SeaBIOS prints for the device it boots; the wrong device
/// would run on to the instruction limit (status 124).
#[test]
fn boot_order_picks_the_cd_or_the_disk() {
    if !have(&[BIOS, "guests/isolinux.iso", "guests/disk-686.img"]) {
        return;
    }
    // The VGA text screen is watched too, and it may show the line a few
    // characters before the serial console does (the screen is checked
    // between run-loop passes), so the serial log is checked for the
    // device's name only.
    for (order, want, device) in [
        ("d", "Booting from DVD/CD", "Booting from DVD"),
        ("c", "Booting from Hard Disk", "Booting from Hard"),
    ] {
        let out = x86bt()
            .args(["run", "-m", "64", "--serial", "stdio", "--engine", "jit"])
            .args(["--max-insns", "3000000000", "--until", want, "-boot", order])
            .args(["-drive", "file=guests/disk-686.img,format=raw,snapshot=on"])
            .args(["-cdrom", "guests/isolinux.iso"])
            .stdin(Stdio::null())
            .output()
            .expect("run x86bt");
        let log = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "-boot {order}: {log}");
        assert!(log.contains(device), "-boot {order}: {log}");
    }
}

/// The counter line of a disk boot.
fn counter(log: &str) -> String {
    log.lines()
        .find_map(|l| l.trim_end().strip_prefix("X86BT-DISK-COUNTER "))
        .unwrap_or_else(|| panic!("no counter line in:\n{log}"))
        .to_string()
}

/// Boots `disk` from IDE and SIGKILLs x86bt the moment the guest prints that
/// it wrote and synced its counter; returns the console up to there.
fn boot_and_kill_after_write(disk: &Path) -> String {
    let mut child = x86bt()
        .args(["run", "-m", "256", "--serial", "stdio", "--engine", "jit"])
        .args(["--max-insns", "40000000000", "-hda"])
        .arg(disk)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run x86bt");
    let mut log = String::new();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).expect("read console");
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        log.push_str(&text);
        if text.contains("X86BT-DISK-WROTE") {
            // SIGKILL: no chance to flush anything on the way out.
            child.kill().expect("SIGKILL");
            break;
        }
    }
    let _ = child.wait();
    log
}

#[test]
fn disk_keeps_what_the_guest_synced_across_sigkill_from_ide_to_virtio() {
    if !have(&[BIOS, "guests/disk-686.img"]) {
        return;
    }
    let disk = scratch_copy("guests/disk-686.img", "disk-686.img");
    let first = boot_and_kill_after_write(&disk);
    assert!(first.contains("X86BT-DISK-READY"), "{first}");
    assert_eq!(counter(&first), "none", "a fresh image:\n{first}");
    assert!(first.contains("X86BT-DISK-WROTE 1"), "{first}");
    // The next boot (the interpreter this time, and the disk on virtio-blk)
    // finds the value whole, and the guest's root filesystem mounted cleanly.
    let spec = format!("file={},format=raw,if=virtio", disk.display());
    let (second, status) = boot(&["-drive", &spec], "interp", None);
    assert_eq!(status, 0, "powers off:\n{second}");
    assert!(
        second.contains("[vda] 131072 512-byte logical blocks"),
        "{second}"
    );
    assert!(second.contains("initrd: root /dev/vda1"), "{second}");
    assert_eq!(counter(&second), "1", "{second}");
    assert!(second.contains("X86BT-DISK-WROTE 2"), "{second}");
    assert!(!second.contains("EXT4-fs error"), "{second}");
    let _ = std::fs::remove_file(&disk);
}

#[test]
fn snapshot_on_leaves_the_image_untouched() {
    if !have(&[BIOS, "guests/disk-686.img"]) {
        return;
    }
    let disk = scratch_copy("guests/disk-686.img", "snap-686.img");
    let before = std::fs::read(&disk).expect("image");
    let spec = format!("file={},format=raw,if=ide,snapshot=on", disk.display());
    let (log, status) = boot(&["-drive", &spec], "jit", None);
    assert_eq!(status, 0, "{log}");
    // The guest wrote (to the overlay)...
    assert!(log.contains("X86BT-DISK-WROTE 1"), "{log}");
    // ...and the image did not change.
    assert!(
        std::fs::read(&disk).expect("image") == before,
        "image changed"
    );
    let _ = std::fs::remove_file(&disk);
}

/// A qcow2 overlay made by QEMU's `qemu-img` over the raw disk: the guest
/// boots from it (virtio-blk, translator) and writes its counter into it;
/// the raw backing file is unchanged and `qemu-img check` finds the overlay
/// consistent.
#[test]
fn qcow2_overlay_takes_the_guests_writes_and_leaves_its_backing_file_alone() {
    if !have(&[BIOS, "guests/disk-686.img", "/usr/bin/qemu-img"]) {
        return;
    }
    let base = scratch_copy("guests/disk-686.img", "qbase-686.img");
    let overlay = base.with_file_name("overlay-686.qcow2");
    let _ = std::fs::remove_file(&overlay);
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let before = std::fs::read(&base).expect("base");
    let spec = format!("file={},if=virtio", overlay.display());
    let (log, status) = boot(&["-drive", &spec], "jit", None);
    assert_eq!(status, 0, "{log}");
    assert_eq!(counter(&log), "none", "{log}");
    assert!(log.contains("X86BT-DISK-WROTE 1"), "{log}");
    assert!(
        std::fs::read(&base).expect("base") == before,
        "backing file changed"
    );
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&overlay)
        .status()
        .expect("qemu-img check");
    assert!(check.success(), "qemu-img check");
    let _ = std::fs::remove_file(&overlay);
    let _ = std::fs::remove_file(&base);
}

#[test]
fn an_image_in_use_and_a_missing_image_are_one_line_errors() {
    if !have(&[BIOS]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("x86bt-storage-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let img = dir.join("blank.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("blank image");
    // The first x86bt holds the image (SeaBIOS finds nothing to boot and
    // waits); the second is refused before its guest starts.
    let mut first = x86bt()
        .args(["run", "--serial", "null", "-hda"])
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("first x86bt");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = x86bt()
        .args(["run", "--serial", "null", "--max-insns", "1000", "-hda"])
        .arg(&img)
        .output()
        .expect("second x86bt");
    let _ = first.kill();
    let _ = first.wait();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    // Read-only users share it once the writer is gone.
    let ro = format!("file={},readonly=on", img.display());
    let missing = x86bt()
        .args(["run", "--serial", "null", "--max-insns", "1000"])
        .args(["-drive", &ro, "-hdb", "/nonexistent/disk.img"])
        .output()
        .expect("x86bt");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/disk.img: cannot open"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
