//! The GDB server (`-gdb`, `-S`) driven by Debian's `gdb` in batch mode, and
//! by a few raw Remote Serial Protocol packets where batch mode cannot go
//! (Ctrl-C, error replies), against a small Multiboot kernel built here,
//! under both engines.
//!
//! Every expected value comes from the kernel's own code below (its entry,
//! the registers it loads, the data it holds, the loop count), never from
//! x86bt's output. Without `gdb` the gdb tests say SKIPPED and pass, except
//! under CI, where scripts/setup.sh installs it and they must run. Every
//! process is waited for with a deadline, so a hung server fails the test
//! instead of hanging it.

use iced_x86::BlockEncoderOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the kernel is loaded and entered (Multiboot a.out kludge).
const LOAD: u32 = 0x10_0000;
const ENTRY: u32 = LOAD + 32;
/// The loop counter the kernel increments (a watchpoint's target).
const COUNTER: u32 = LOAD + 0x800;
/// Four known dwords right after the counter.
const DATA: u32 = COUNTER + 4;
const DATA_WORDS: [u32; 4] = [0xDEAD_BEEF, 0x1234_5678, 0x0BAD_F00D, 0xC0FF_EE00];
/// Loop iterations.
const LOOPS: u32 = 10;
/// Bytes of the image.
const IMAGE_LEN: u32 = 0x1000;

/// The test kernel and the addresses a debugger uses.
struct TestKernel {
    path: PathBuf,
    /// The instruction after the loop (`mov eax, 0xCAFEBABE`).
    marker: u32,
    /// The instruction after it.
    after_marker: u32,
    /// The loop's first instruction (`inc dword [COUNTER]`).
    loop_top: u32,
}

/// Builds the kernel: EAX, EBX and ECX get known values, a loop increments
/// [`COUNTER`] [`LOOPS`] times (reading it back into EDX), then at `marker`
/// EAX becomes 0xCAFEBABE and the kernel writes 0 to the debug-exit port
/// (exit status 1). With `spin`, it loops forever after the marker instead.
fn build_kernel(name: &str, spin: bool) -> TestKernel {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    let mut top = a.create_label();
    let mut marker = a.create_label();
    let mut after = a.create_label();
    let mut forever = a.create_label();
    a.mov(esp, 0x18_0000u32).unwrap();
    a.mov(eax, 0x1111_1111u32).unwrap();
    a.mov(ebx, 0x2222_2222u32).unwrap();
    a.mov(ecx, LOOPS).unwrap();
    a.set_label(&mut top).unwrap();
    a.inc(dword_ptr(COUNTER as u64)).unwrap();
    a.mov(edx, dword_ptr(COUNTER as u64)).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.set_label(&mut marker).unwrap();
    a.mov(eax, 0xCAFE_BABEu32).unwrap();
    a.set_label(&mut after).unwrap();
    a.mov(esi, 0x5A5A_5A5Au32).unwrap();
    if spin {
        a.set_label(&mut forever).unwrap();
        a.inc(edi).unwrap();
        a.jmp(forever).unwrap();
    } else {
        a.xor(eax, eax).unwrap();
        a.out(0xF4, al).unwrap();
        a.hlt().unwrap();
    }
    let r = a
        .assemble_options(
            u64::from(ENTRY),
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .expect("assembles");
    let code = r.inner.code_buffer.clone();
    let marker_ip = r.label_ip(&marker).expect("marker") as u32;
    let after_ip = r.label_ip(&after).expect("after") as u32;
    let top_ip = r.label_ip(&top).expect("top") as u32;
    let mut img = vec![0u8; IMAGE_LEN as usize];
    // Multiboot header with the a.out kludge (Multiboot 0.6.96 §3.1.1-3.1.3).
    let magic = 0x1BAD_B002u32;
    let flags = 1u32 << 16;
    let header = [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        LOAD,
        LOAD,
        LOAD + IMAGE_LEN,
        0,
        ENTRY,
    ];
    for (i, w) in header.iter().enumerate() {
        img[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    let at = (ENTRY - LOAD) as usize;
    assert!(at + code.len() < (COUNTER - LOAD) as usize, "code fits");
    img[at..at + code.len()].copy_from_slice(&code);
    for (i, w) in DATA_WORDS.iter().enumerate() {
        let o = (DATA - LOAD) as usize + i * 4;
        img[o..o + 4].copy_from_slice(&w.to_le_bytes());
    }
    let dir = std::env::temp_dir().join(format!("x86bt-gdb-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, &img).expect("write kernel");
    TestKernel {
        path,
        marker: marker_ip,
        after_marker: after_ip,
        loop_top: top_ip,
    }
}

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("1" | "true"))
}

/// Whether Debian's gdb is here; under CI it must be.
fn have_gdb() -> bool {
    let ok = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !in_ci(),
            "gdb is not on PATH, and CI requires it (scripts/setup.sh)"
        );
        eprintln!(
            "SKIPPED: gdb is not on PATH (apt-get install gdb); the GDB server checks did not run"
        );
    }
    ok
}

/// A running `x86bt run` with its GDB server.
struct Server {
    child: Child,
    port: u16,
    /// stderr lines after the one that named the port.
    stderr: mpsc::Receiver<String>,
}

/// Starts x86bt on `kernel` with `-gdb tcp:127.0.0.1:0` (the system picks a
/// free port, which x86bt prints) and `extra` arguments.
fn start(kernel: &Path, engine: &str, extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_x86bt"));
    cmd.args(["run", "--kernel"])
        .arg(kernel)
        .args(["-m", "32", "--serial", "null", "--engine", engine])
        .args(["-gdb", "tcp:127.0.0.1:0"])
        .args(extra);
    start_with(cmd)
}

/// Starts `cmd` (an `x86bt run` with `-gdb tcp:127.0.0.1:0`) and reads the
/// port it listens on from its stderr.
fn start_with(mut cmd: Command) -> Server {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("x86bt starts");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("x86bt names its GDB port");
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    Server {
        child,
        port,
        stderr: rx,
    }
}

impl Server {
    /// Waits for x86bt to exit and returns its status.
    fn wait(mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code().unwrap_or(-1);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let rest: Vec<String> = self.stderr.try_iter().collect();
                panic!("x86bt did not exit within {limit:?}; stderr: {rest:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs gdb in batch mode with `commands` against `port`; returns what it
/// printed. Killed after a minute.
fn gdb_batch(port: u16, arch: &str, commands: &[String]) -> String {
    gdb_batch_within(port, arch, commands, Duration::from_secs(60))
}

/// [`gdb_batch`] with a time limit.
fn gdb_batch_within(port: u16, arch: &str, commands: &[String], limit: Duration) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-ex", "set pagination off", "-ex"])
        .arg(format!("set architecture {arch}"))
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{port}"));
    for c in commands {
        cmd.arg("-ex").arg(c);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb starts");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        s + &e
    });
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("gdb did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reader.join().expect("output")
}

/// The value gdb printed for register `name` in `info registers` output
/// (the line after `marker`, if given).
fn reg_value(out: &str, name: &str) -> Option<u64> {
    out.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(name))
            .then(|| f.next())
            .flatten()
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
    })
}

fn gdb_session_on(engine: &str) {
    if !have_gdb() {
        return;
    }
    let k = build_kernel(&format!("counter-{engine}.bin"), false);
    let server = start(&k.path, engine, &["-S"]);
    let commands: Vec<String> = [
        // -S: the CPU has not run; it is at the Multiboot entry.
        "echo @ENTRY\\n".to_string(),
        "info registers eip".into(),
        // Memory by linear address.
        "echo @DATA\\n".into(),
        format!("x/4xw {DATA:#x}"),
        // A write watchpoint on the counter: the first INC writes 1.
        format!("watch *(int*){COUNTER:#x}"),
        "continue".into(),
        "echo @WATCH\\n".into(),
        "info registers ecx".into(),
        "delete".into(),
        // A read watchpoint: the MOV EDX that follows reads it.
        format!("rwatch *(int*){COUNTER:#x}"),
        "continue".into(),
        "echo @RWATCH\\n".into(),
        "info registers edx".into(),
        "delete".into(),
        // A breakpoint after the loop.
        format!("break *{:#x}", k.marker),
        "continue".into(),
        "echo @BREAK\\n".into(),
        "info registers eip eax ebx ecx edx".into(),
        "stepi".into(),
        "echo @STEP\\n".into(),
        "info registers eip eax".into(),
        format!("x/1xw {COUNTER:#x}"),
        // A hardware breakpoint on the next instruction, then detach.
        format!("hbreak *{:#x}", k.after_marker + 5),
        "continue".into(),
        "echo @HBREAK\\n".into(),
        "info registers eip esi".into(),
        // Back two instructions: before the MOV ESI, before the MOV EAX.
        "reverse-stepi".into(),
        "echo @RSTEP1\\n".into(),
        "info registers eip eax".into(),
        "reverse-stepi".into(),
        "echo @RSTEP2\\n".into(),
        "info registers eip eax ecx edx".into(),
        // The breakpoint at the marker was hit right here, and nothing
        // stops before: back to where the history starts (the entry).
        "reverse-continue".into(),
        "echo @RBEGIN\\n".into(),
        "info registers eip eax".into(),
        format!("x/1xw {COUNTER:#x}"),
        // Forward again: the same loop runs, from a counter of 0.
        "continue".into(),
        "echo @AGAIN\\n".into(),
        "info registers eip edx".into(),
        format!("x/1xw {COUNTER:#x}"),
        // Back to the last write to the counter: the tenth INC.
        "delete".into(),
        format!("watch *(int*){COUNTER:#x}"),
        "reverse-continue".into(),
        "echo @RWRITE\\n".into(),
        "info registers eip ecx edx".into(),
        "delete".into(),
        // An unmapped address (the VGA hole reads as an open bus).
        "x/1xw 0xa0000".into(),
        "detach".into(),
    ]
    .into();
    let out = gdb_batch(server.port, "i386", &commands);
    let part = |tag: &str| -> &str {
        let at = out
            .find(tag)
            .unwrap_or_else(|| panic!("{tag} missing in:\n{out}"));
        let rest = &out[at + tag.len()..];
        &rest[..rest.find("\n@").unwrap_or(rest.len())]
    };
    assert_eq!(
        reg_value(part("@ENTRY"), "eip"),
        Some(u64::from(ENTRY)),
        "{out}"
    );
    let words: Vec<u32> = part("@DATA")
        .lines()
        .filter(|l| l.contains(':'))
        .flat_map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace())
        .filter_map(|w| u32::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect();
    assert_eq!(words, DATA_WORDS, "{out}");
    assert!(
        out.contains("Old value = 0") && out.contains("New value = 1"),
        "{out}"
    );
    // Stopped after the first INC: ECX still holds the full count.
    assert_eq!(
        reg_value(part("@WATCH"), "ecx"),
        Some(u64::from(LOOPS)),
        "{out}"
    );
    assert!(
        out.contains("Value = 1"),
        "read watchpoint shows the value: {out}"
    );
    assert_eq!(reg_value(part("@RWATCH"), "edx"), Some(1), "{out}");
    let b = part("@BREAK");
    assert_eq!(reg_value(b, "eip"), Some(u64::from(k.marker)), "{out}");
    assert_eq!(reg_value(b, "eax"), Some(0x1111_1111), "{out}");
    assert_eq!(reg_value(b, "ebx"), Some(0x2222_2222), "{out}");
    assert_eq!(reg_value(b, "ecx"), Some(0), "{out}");
    assert_eq!(reg_value(b, "edx"), Some(u64::from(LOOPS)), "{out}");
    let s = part("@STEP");
    assert_eq!(
        reg_value(s, "eip"),
        Some(u64::from(k.after_marker)),
        "{out}"
    );
    assert_eq!(reg_value(s, "eax"), Some(0xCAFE_BABE), "{out}");
    assert!(
        s.contains(&format!("{COUNTER:#x}:\t{LOOPS:#010x}")),
        "{out}"
    );
    let h = part("@HBREAK");
    assert_eq!(
        reg_value(h, "eip"),
        Some(u64::from(k.after_marker + 5)),
        "{out}"
    );
    assert_eq!(reg_value(h, "esi"), Some(0x5A5A_5A5A), "{out}");
    // Reverse execution (from snapshots taken while the guest ran).
    let r1 = part("@RSTEP1");
    assert_eq!(
        reg_value(r1, "eip"),
        Some(u64::from(k.after_marker)),
        "{out}"
    );
    assert_eq!(reg_value(r1, "eax"), Some(0xCAFE_BABE), "{out}");
    let r2 = part("@RSTEP2");
    assert_eq!(reg_value(r2, "eip"), Some(u64::from(k.marker)), "{out}");
    assert_eq!(reg_value(r2, "eax"), Some(0x1111_1111), "{out}");
    assert_eq!(reg_value(r2, "ecx"), Some(0), "{out}");
    assert_eq!(reg_value(r2, "edx"), Some(u64::from(LOOPS)), "{out}");
    let rb = part("@RBEGIN");
    assert!(out.contains("No more reverse-execution history"), "{out}");
    assert_eq!(reg_value(rb, "eip"), Some(u64::from(ENTRY)), "{out}");
    // RAM went back too: the counter is the image's 0.
    assert!(rb.contains(&format!("{COUNTER:#x}:\t0x00000000")), "{out}");
    let again = part("@AGAIN");
    assert_eq!(reg_value(again, "eip"), Some(u64::from(k.marker)), "{out}");
    assert_eq!(reg_value(again, "edx"), Some(u64::from(LOOPS)), "{out}");
    assert!(
        again.contains(&format!("{COUNTER:#x}:\t{LOOPS:#010x}")),
        "{out}"
    );
    // Stopped before the last INC (going backwards, the write is undone):
    // the counter goes from LOOPS back to LOOPS - 1, ECX is 1, EDX holds
    // the previous trip's value.
    assert!(
        again.contains(&format!("Old value = {LOOPS}"))
            && again.contains(&format!("New value = {}", LOOPS - 1)),
        "{out}"
    );
    let rw = part("@RWRITE");
    assert_eq!(reg_value(rw, "eip"), Some(u64::from(k.loop_top)), "{out}");
    assert_eq!(reg_value(rw, "ecx"), Some(1), "{out}");
    assert_eq!(reg_value(rw, "edx"), Some(u64::from(LOOPS - 1)), "{out}");
    assert!(
        out.contains("Cannot access memory at address 0xa0000"),
        "{out}"
    );
    // After the detach the guest runs on to its debug exit (0 -> status 1).
    assert_eq!(server.wait(Duration::from_secs(30)), 1);
}

#[test]
fn gdb_drives_breakpoints_watchpoints_steps_and_memory_under_interp() {
    gdb_session_on("interp");
}

#[test]
fn gdb_drives_breakpoints_watchpoints_steps_and_memory_under_jit() {
    gdb_session_on("jit");
}

/// A minimal RSP client: sends a packet, returns the reply's payload.
struct Rsp {
    s: TcpStream,
}

impl Rsp {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Self { s }
    }

    fn send(&mut self, payload: &str) {
        let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.s, "${payload}#{sum:02x}").expect("send");
    }

    /// Reads one packet, acknowledging it; skips acks.
    fn reply(&mut self) -> String {
        let mut b = [0u8; 1];
        loop {
            self.s.read_exact(&mut b).expect("reply byte");
            if b[0] == b'$' {
                break;
            }
        }
        let mut payload = Vec::new();
        loop {
            self.s.read_exact(&mut b).expect("payload byte");
            if b[0] == b'#' {
                break;
            }
            payload.push(b[0]);
        }
        let mut sum = [0u8; 2];
        self.s.read_exact(&mut sum).expect("checksum");
        self.s.write_all(b"+").expect("ack");
        // Run-length encoding: `X*n` repeats X another n - 29 times.
        let mut out = Vec::new();
        let mut i = 0;
        while i < payload.len() {
            if payload[i] == b'*' && i + 1 < payload.len() {
                let last = *out.last().expect("a byte to repeat");
                out.extend(std::iter::repeat_n(last, usize::from(payload[i + 1] - 29)));
                i += 2;
            } else {
                out.push(payload[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("text")
    }

    fn ask(&mut self, payload: &str) -> String {
        self.send(payload);
        self.reply()
    }
}

fn ctrl_c_on(engine: &str) {
    let k = build_kernel(&format!("spin-{engine}.bin"), true);
    let server = start(&k.path, engine, &[]);
    // The guest runs from the start (no -S); connecting stops it.
    let mut link = Rsp::connect(server.port);
    let stop = link.ask("?");
    assert!(stop.starts_with('T') || stop.starts_with('S'), "{stop}");
    // Memory at the data and, as an error, in the VGA hole.
    assert_eq!(link.ask(&format!("m{DATA:x},4")), "efbeadde");
    assert!(link.ask("ma0000,4").starts_with('E'));
    // Continue, let it spin, then Ctrl-C: a SIGINT stop.
    link.send("c");
    std::thread::sleep(Duration::from_millis(300));
    link.s.write_all(&[0x03]).expect("ctrl-c");
    let stop = link.reply();
    assert!(stop.starts_with("T02"), "stopped by SIGINT: {stop}");
    // It ran the loop: the counter reached LOOPS before the spin.
    assert_eq!(
        link.ask(&format!("m{COUNTER:x},4")),
        format!("{:02x}000000", LOOPS)
    );
    // Kill ends the run.
    link.send("k");
    drop(link);
    assert_eq!(server.wait(Duration::from_secs(30)), 0);
}

#[test]
fn ctrl_c_interrupts_a_running_guest_under_interp() {
    ctrl_c_on("interp");
}

#[test]
fn ctrl_c_interrupts_a_running_guest_under_jit() {
    ctrl_c_on("jit");
}

fn x86bt_fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gdb_port_in_use_or_bad_spec_is_one_error_line_and_status_2() {
    let k = build_kernel("errors.bin", false);
    let kernel = k.path.to_str().expect("utf-8 path");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let spec = format!("tcp:127.0.0.1:{port}");
    for args in [
        vec!["run", "--kernel", kernel, "-gdb", spec.as_str()],
        vec!["run", "--kernel", kernel, "-gdb", "tcp:1234"],
        vec!["run", "--kernel", kernel, "-S"],
    ] {
        let (status, err) = x86bt_fails(&args);
        assert_eq!(status, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A Linux guest from guests/ (scripts/build-guests.sh).
struct LinuxGuest {
    kernel: &'static str,
    initrd: &'static str,
    /// GDB's architecture name for the layout x86bt picks for the kernel.
    arch: &'static str,
    /// The stack pointer's name and width.
    sp: &'static str,
    width: u64,
    /// The program counter's name.
    pc: &'static str,
    /// The watchpoint set at the breakpoint, and what gdb must then print.
    watch: &'static str,
    watch_shows: &'static str,
}

/// Breakpoint, stepi, registers, memory and a watchpoint on a Debian kernel.
/// Debian ships no System.map with symbols (it is in the -dbg package), so
/// the breakpoint is on an address the boot protocol fixes: with `nokaslr`
/// the decompressor runs the kernel at the header's `pref_address`
/// (LOAD_PHYSICAL_ADDR), where its startup_32 (686) or startup_64 (amd64)
/// is. Every expected value is read from the bzImage's own header or is a
/// fact of the boot protocol or the SDM.
fn linux_under_gdb(g: &LinuxGuest) {
    if !have_gdb() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (kernel, initrd) = (root.join(g.kernel), root.join(g.initrd));
    if !kernel.exists() || !initrd.exists() {
        eprintln!(
            "SKIPPED: {} or {} is absent (run scripts/build-guests.sh)",
            g.kernel, g.initrd
        );
        return;
    }
    let image = std::fs::read(&kernel).expect("kernel");
    let le32 = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().expect("4 bytes"));
    // Boot protocol header: setup_sects at 0x1F1 (0 means 4), code32_start
    // at 0x214, pref_address at 0x258.
    let setup_sects = match image[0x1F1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_offset = (setup_sects + 1) * 512;
    let code32_start = le32(0x214);
    let pref = u64::from_le_bytes(image[0x258..0x260].try_into().expect("8 bytes"));
    let pm_words: Vec<u32> = (0..4).map(|i| le32(pm_offset + 4 * i)).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_x86bt"));
    child
        .args(["run", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--append", "console=ttyS0 nokaslr panic=-1", "-m", "256"])
        .args(["--serial", "null", "--engine", "jit", "-S"])
        .args(["-gdb", "tcp:127.0.0.1:0"]);
    let server = start_with(child);
    let (sp, pc, w) = (g.sp, g.pc, g.width);
    let regs = if w == 8 {
        "rip rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 eflags cs ss ds es fs gs"
    } else {
        "eip eax ebx ecx edx esi edi ebp esp eflags cs ss ds es fs gs"
    };
    let commands: Vec<String> = vec![
        "echo @ENTRY\n".into(),
        format!("info registers {pc} cs ds"),
        "echo @HDRS\n".into(),
        "x/1xw $esi+0x202".into(),
        "echo @PM\n".into(),
        format!("x/4xw {code32_start:#x}"),
        format!("hbreak *{pref:#x}"),
        "continue".into(),
        "echo @BREAK\n".into(),
        format!("info registers {pc} cr0 efer"),
        "x/2i $pc".into(),
        "echo @BREAKREGS\n".into(),
        format!("info registers {regs}"),
        "stepi".into(),
        "echo @STEP\n".into(),
        format!("info registers {pc}"),
        g.watch.to_string(),
        "continue".into(),
        "echo @WATCH\n".into(),
        format!("info registers {sp}"),
        // Backwards from here, across the checkpoints of the boot: to the
        // breakpoint (the watchpoint deleted), one instruction before it,
        // and forward onto it again.
        "delete 2".into(),
        "reverse-continue".into(),
        "echo @RBREAK\n".into(),
        format!("info registers {regs}"),
        "reverse-stepi".into(),
        "echo @RSTEP\n".into(),
        format!("info registers {pc}"),
        "stepi".into(),
        "echo @FORWARD\n".into(),
        format!("info registers {regs}"),
        "detach".into(),
    ];
    let out = gdb_batch_within(server.port, g.arch, &commands, Duration::from_secs(600));
    let part = |tag: &str| -> &str {
        let at = out
            .find(tag)
            .unwrap_or_else(|| panic!("{tag} missing in:\n{out}"));
        let rest = &out[at + tag.len()..];
        &rest[..rest.find("\n@").unwrap_or(rest.len())]
    };
    // The 32-bit boot protocol: entry at code32_start, __BOOT_CS 0x10,
    // __BOOT_DS 0x18, ESI at boot_params, whose setup header says "HdrS".
    let e = part("@ENTRY");
    assert_eq!(reg_value(e, pc), Some(u64::from(code32_start)), "{out}");
    assert_eq!(reg_value(e, "cs"), Some(0x10), "{out}");
    assert_eq!(reg_value(e, "ds"), Some(0x18), "{out}");
    assert!(part("@HDRS").contains("0x53726448"), "{out}");
    let words: Vec<u32> = part("@PM")
        .lines()
        .filter(|l| l.contains(':'))
        .flat_map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace())
        .filter_map(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .collect();
    assert_eq!(
        words, pm_words,
        "memory at code32_start is the file's: {out}"
    );
    let b = part("@BREAK");
    assert_eq!(reg_value(b, pc), Some(pref), "{out}");
    let cr0 = reg_value(b, "cr0").expect("cr0");
    let efer = reg_value(b, "efer").expect("efer");
    if w == 8 {
        // 64-bit code runs only with paging on and IA-32e mode active.
        assert!(cr0 & (1 << 31) != 0 && efer & (1 << 10) != 0, "{out}");
    } else {
        // The 686 kernel's startup_32 runs with paging off.
        assert_eq!(cr0 & (1 << 31), 0, "{out}");
    }
    // stepi lands on the second instruction gdb disassembled there.
    let second = b
        .lines()
        .filter(|l| l.trim_start().starts_with("0x") || l.starts_with("=>"))
        .nth(1)
        .and_then(|l| l.split_whitespace().find(|t| t.starts_with("0x")))
        .map(|t| t.trim_end_matches(':'))
        .and_then(|t| u64::from_str_radix(t.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no second instruction in {b}"));
    assert_eq!(reg_value(part("@STEP"), pc), Some(second), "{out}");
    assert!(out.contains("atchpoint 2: "), "{out}");
    assert!(part("@STEP").contains(g.watch_shows), "{out}");
    // Reverse execution: back at the breakpoint, every register is what
    // the forward run showed there; one instruction before, the PC is
    // elsewhere; a step forward is at the breakpoint again, the same.
    let at_break = part("@BREAKREGS");
    let same = |tag: &str| {
        let got = part(tag);
        for name in regs.split(' ') {
            assert_eq!(
                reg_value(got, name),
                reg_value(at_break, name),
                "{tag} {name}: {out}"
            );
        }
    };
    same("@RBREAK");
    let back = reg_value(part("@RSTEP"), pc).expect("pc");
    assert_ne!(back, pref, "{out}");
    same("@FORWARD");
    assert!(out.contains("detached"), "{out}");
    // Detached, the guest goes on booting.
    std::thread::sleep(Duration::from_secs(2));
    let mut server = server;
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "x86bt still runs"
    );
}

#[test]
fn gdb_on_the_686_kernel_breaks_at_startup_32_steps_and_watches() {
    linux_under_gdb(&LinuxGuest {
        kernel: "guests/vmlinuz-686",
        initrd: "guests/initramfs-run.cpio.gz",
        arch: "i386",
        sp: "esp",
        width: 4,
        pc: "eip",
        // startup_32 copies boot_params (ESI) out of the way with paging
        // off, so it reads the header's "HdrS" (0x53726448) at ESI + 0x202.
        watch: "eval \"rwatch *(int *) %d\", $esi + 0x202",
        watch_shows: "Value = 1400005704",
    });
}

#[test]
fn gdb_on_the_amd64_kernel_breaks_at_startup_64_steps_and_watches() {
    linux_under_gdb(&LinuxGuest {
        kernel: "guests/vmlinuz-amd64",
        initrd: "guests/initramfs-run-amd64.cpio.gz",
        arch: "i386:x86-64",
        sp: "rsp",
        width: 8,
        pc: "rip",
        // startup_64 calls into C soon: the first push writes below RSP.
        watch: "eval \"watch *(long *) %d\", $rsp - 8",
        watch_shows: "New value",
    });
}

/// EIP from a `g` reply in the i386 layout (EAX..EDI, then EIP, as 8 hex
/// digits each, little-endian).
fn eip_of(g: &str) -> u32 {
    let bytes: Vec<u8> = (0..4)
        .map(|i| u8::from_str_radix(&g[64 + 2 * i..66 + 2 * i], 16).expect("hex"))
        .collect();
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

#[test]
fn reverse_steps_end_at_the_start_of_the_history_and_need_one_vcpu() {
    let k = build_kernel("reverse-rsp.bin", false);
    for (smp, history) in [("1", true), ("2", false)] {
        let server = start(&k.path, "jit", &["-S", "-smp", smp]);
        let mut link = Rsp::connect(server.port);
        link.ask("?");
        assert_eq!(eip_of(&link.ask("g")), ENTRY);
        // Two steps: past `mov esp` (5 bytes) and `mov eax` (5 bytes).
        for _ in 0..2 {
            let stop = link.ask("s");
            assert!(stop.starts_with('T'), "{stop}");
        }
        assert_eq!(eip_of(&link.ask("g")), ENTRY + 10);
        let stop = link.ask("bs");
        if history {
            assert!(!stop.contains("replaylog"), "{stop}");
            assert_eq!(eip_of(&link.ask("g")), ENTRY + 5, "smp {smp}");
            assert!(!link.ask("bs").contains("replaylog"));
            assert_eq!(eip_of(&link.ask("g")), ENTRY);
            // The first resume's position is where the history begins.
            let stop = link.ask("bs");
            assert!(stop.contains("replaylog:begin"), "{stop}");
            assert_eq!(eip_of(&link.ask("g")), ENTRY);
        } else {
            // With two vCPUs there is no history: the guest stays.
            assert!(stop.contains("replaylog:begin"), "{stop}");
            assert_eq!(eip_of(&link.ask("g")), ENTRY + 10, "smp {smp}");
        }
        link.send("k");
        drop(link);
        assert_eq!(server.wait(Duration::from_secs(30)), 0);
    }
}
