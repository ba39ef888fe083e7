//! The C workloads of `x86bt bench --native` (`bench/c/`): built with gcc into
//! a 32-bit and a 64-bit Multiboot kernel and two host programs, and run under
//! x86bt, under QEMU and on the host.
//!
//! Same code everywhere. Per architecture, the workload objects (`workloads.c`,
//! `simd.c`) are compiled once and linked twice: into the kernel (with
//! `entry32.S` or `entry64.S` and `kernel.c`) and into a static host program
//! with no libc (`host.c`). So the host executes, iteration for iteration, the
//! machine code the guest executes, and a guest instruction count from x86bt
//! is also the host program's instruction count for the same iterations.
//!
//! Built at run time. The sources are embedded in x86bt; the first use writes
//! them to a cache directory named by a hash of the sources, the flags and
//! `gcc --version` (under `$XDG_CACHE_HOME/x86bt`, `$HOME/.cache/x86bt`, or the
//! temporary directory), builds there, and renames the finished directory into
//! place, so concurrent builds (parallel tests) never see half a build. `gcc`
//! (or `$X86BT_GCC`) and `objcopy` must be on PATH; a missing tool is one
//! [`Error::Native`] line.
//!
//! The kernels are flat images with an a.out-kludge Multiboot header (the form
//! QEMU's `-kernel` loads for 64-bit code too), loaded at 1 MiB. The command
//! line `workload=NAME iters=N` picks the run; N is written with ten digits so
//! that the runs with N and 2N iterations parse the same characters and
//! their instruction counts differ by exactly N iterations.

use crate::bench_kernels::{self as bk, QemuOptions, QemuRun, X86btRun};
use crate::cli::Engine;
use crate::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The C sources, as x86bt writes them into the build directory.
const SOURCES: [(&str, &str); 8] = [
    ("bench.h", include_str!("../bench/c/bench.h")),
    ("workloads.c", include_str!("../bench/c/workloads.c")),
    ("simd.c", include_str!("../bench/c/simd.c")),
    ("kernel.c", include_str!("../bench/c/kernel.c")),
    ("host.c", include_str!("../bench/c/host.c")),
    ("entry32.S", include_str!("../bench/c/entry32.S")),
    ("entry64.S", include_str!("../bench/c/entry64.S")),
    ("kernel.ld", include_str!("../bench/c/kernel.ld")),
];

/// Flags of every C file: freestanding, no PIC, no stack protector or CET
/// padding a distribution may turn on by default, and loops kept as written
/// (no auto-vectorisation, no memset/strlen calls made from loops), so the
/// scalar workloads stay scalar on every gcc.
const CFLAGS: [&str; 14] = [
    "-O2",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-tree-vectorize",
    "-fno-tree-loop-distribute-patterns",
    "-nostdinc",
    // <xmmintrin.h> includes <mm_malloc.h>, which includes <stdlib.h>.
    "-D_MM_MALLOC_H_INCLUDED",
    "-Wall",
];

/// Flags of every link: no libc, no start files, a static non-PIE image.
const LDFLAGS: [&str; 4] = ["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none"];

/// Written to the debug-exit port, and the host program's exit status, when
/// the answer checks (`EXIT_PASS` in bench.h).
pub const HOST_PASS: i32 = 0x10;
/// The host program's status when the CPU lacks a feature the workload needs.
pub const HOST_UNSUPPORTED: i32 = 0x14;

/// What a debug-exit value (or host exit status) other than a pass means
/// (the `EXIT_*` values of bench.h).
pub fn describe_exit(value: i32) -> String {
    match value {
        0x11 => "wrong answer".into(),
        0x13 => "bad command line".into(),
        HOST_UNSUPPORTED => "the CPU lacks SSE4.2".into(),
        v @ 0x40..=0x5F => format!("exception {}", v - 0x40),
        v => format!("exit value {v:#x}"),
    }
}

/// The architecture a kernel and its host program are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 32-bit protected mode with paging (i686 code).
    I386,
    /// 64-bit long mode.
    X86_64,
}

impl Arch {
    /// Both, 32-bit first.
    pub const ALL: [Arch; 2] = [Arch::I386, Arch::X86_64];

    /// 32 or 64.
    pub fn bits(self) -> u32 {
        match self {
            Arch::I386 => 32,
            Arch::X86_64 => 64,
        }
    }

    /// The QEMU system emulator for it.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::I386 => "qemu-system-i386",
            Arch::X86_64 => "qemu-system-x86_64",
        }
    }

    /// Code generation flags. The 32-bit build is plain i686; its SSE loops
    /// say what they use with target attributes (simd.c).
    fn flags(self) -> &'static [&'static str] {
        match self {
            Arch::I386 => &["-m32", "-march=i686"],
            Arch::X86_64 => &["-m64", "-mno-red-zone"],
        }
    }
}

/// One workload of the table in bench/c/workloads.c.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it exercises.
    pub what: &'static str,
    /// The starting iteration count N of `x86bt bench`: QEMU 10 TCG needs
    /// about 0.4 s for N iterations on a 2020s x86-64 host, start-up excluded.
    pub default_iters: u32,
    /// An SSE workload (the goal for these is apart).
    pub sse: bool,
}

/// Every workload: the five of the assembly kernels, then the SSE ones.
pub const WORKLOADS: [Workload; 8] = [
    Workload {
        name: "sieve",
        what: "byte loads/stores, compares, branches",
        default_iters: 5_000,
        sse: false,
    },
    Workload {
        name: "crc32",
        what: "table-driven CRC-32 of 16 KiB",
        default_iters: 5_000,
        sse: false,
    },
    Workload {
        name: "memcpy",
        what: "dword copy loop, 16 KiB",
        default_iters: 60_000,
        sse: false,
    },
    Workload {
        name: "strlen",
        what: "byte loop to the NUL of 16000 bytes",
        default_iters: 10_000,
        sse: false,
    },
    Workload {
        name: "qsort",
        what: "recursive quicksort of 2048 u32",
        default_iters: 1_500,
        sse: false,
    },
    Workload {
        name: "matmul",
        what: "64x64 float matrix product, SSE",
        default_iters: 80,
        sse: true,
    },
    Workload {
        name: "memcpy-sse2",
        what: "MOVDQU/MOVDQA copy loop, 16 KiB",
        default_iters: 50_000,
        sse: true,
    },
    Workload {
        name: "strsearch",
        what: "PCMPISTRI substring count in 16000 bytes, SSE4.2",
        default_iters: 1_000,
        sse: true,
    },
];

/// The workload called `name`.
pub fn workload(name: &str) -> Option<Workload> {
    WORKLOADS.into_iter().find(|w| w.name == name)
}

/// The kernel command line of a run (see the module docs for the width).
pub fn cmdline(w: Workload, iters: u32) -> String {
    format!("workload={} iters={iters:010}", w.name)
}

/// The built kernels and host programs, in their cache directory.
#[derive(Clone, Debug)]
pub struct Programs {
    dir: PathBuf,
}

impl Programs {
    /// The flat Multiboot kernel of `arch`.
    pub fn kernel_path(&self, arch: Arch) -> PathBuf {
        self.dir.join(format!("kernel{}.bin", arch.bits()))
    }

    /// The host program of `arch`.
    pub fn host_path(&self, arch: Arch) -> PathBuf {
        self.dir.join(format!("host{}", arch.bits()))
    }

    /// The kernel image of `arch`, read.
    pub fn kernel_image(&self, arch: Arch) -> Result<Vec<u8>, Error> {
        let path = self.kernel_path(arch);
        std::fs::read(&path).map_err(|source| Error::Read { path, source })
    }
}

/// A 64-bit FNV-1a hash: names the cache directory of one set of inputs.
fn fnv64(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("x86bt");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache").join("x86bt");
    }
    std::env::temp_dir().join("x86bt-cache")
}

/// The C compiler: `$X86BT_GCC`, or gcc on PATH.
fn find_gcc() -> Result<PathBuf, Error> {
    if let Some(cc) = std::env::var_os("X86BT_GCC").filter(|c| !c.is_empty()) {
        let cc = PathBuf::from(cc);
        return if cc.is_file() {
            Ok(cc)
        } else {
            bk::find_on_path(&cc.to_string_lossy())
                .ok_or_else(|| Error::Native(format!("X86BT_GCC={} does not exist", cc.display())))
        };
    }
    bk::find_on_path("gcc").ok_or_else(|| {
        Error::Native(
            "gcc is not on PATH; it builds the C workloads (Debian: apt-get install gcc)".into(),
        )
    })
}

/// Runs `cmd` to its end; an error carries the first lines of its stderr.
fn run_tool(mut cmd: Command, what: &str) -> Result<String, Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Native(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let head: Vec<&str> = err.lines().take(6).collect();
        return Err(Error::Native(format!(
            "{what} failed ({}): {}",
            out.status,
            head.join(" | ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the kernels and host programs, or finds them already built.
pub fn build() -> Result<Programs, Error> {
    let gcc = find_gcc()?;
    let objcopy = bk::find_on_path("objcopy").ok_or_else(|| {
        Error::Native("objcopy is not on PATH (Debian: apt-get install binutils)".into())
    })?;
    let mut version = Command::new(&gcc);
    version.arg("--version");
    let version = run_tool(version, "gcc --version")?;
    let mut include = Command::new(&gcc);
    include.arg("-print-file-name=include");
    let include = run_tool(include, "gcc -print-file-name=include")?
        .trim()
        .to_string();

    let mut h = fnv64(0xCBF2_9CE4_8422_2325, version.as_bytes());
    for (name, text) in SOURCES {
        h = fnv64(fnv64(h, name.as_bytes()), text.as_bytes());
    }
    for f in CFLAGS.iter().chain(&LDFLAGS) {
        h = fnv64(h, f.as_bytes());
    }
    let root = cache_root();
    let dir = root.join(format!("native-{h:016x}"));
    let programs = Programs { dir: dir.clone() };
    let done = |p: &Programs| {
        Arch::ALL
            .iter()
            .all(|&a| p.kernel_path(a).is_file() && p.host_path(a).is_file())
    };
    if done(&programs) {
        return Ok(programs);
    }

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = root.join(format!(
        "native-{h:016x}.tmp-{}-{stamp}",
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp).map_err(|source| Error::Create {
        path: tmp.clone(),
        source,
    })?;
    let built = build_in(&tmp, &gcc, &objcopy, &include);
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Another process may have finished first; its directory is as good.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if done(&programs) {
        Ok(programs)
    } else {
        Err(Error::Native(format!(
            "the build in {} is incomplete",
            dir.display()
        )))
    }
}

/// Writes the sources to `dir` and builds both architectures there.
fn build_in(dir: &Path, gcc: &Path, objcopy: &Path, include: &str) -> Result<(), Error> {
    for (name, text) in SOURCES {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Create { path, source })?;
    }
    let gcc_cmd = |arch: Arch| {
        let mut c = Command::new(gcc);
        c.current_dir(dir).args(arch.flags());
        c
    };
    for arch in Arch::ALL {
        let b = arch.bits();
        for src in ["workloads", "simd", "kernel", "host"] {
            let mut c = gcc_cmd(arch);
            c.args(CFLAGS)
                .args(["-isystem", include, "-c", &format!("{src}.c")])
                .args(["-o", &format!("{src}{b}.o")]);
            run_tool(c, &format!("gcc ({b}-bit) on {src}.c"))?;
        }
        let mut c = gcc_cmd(arch);
        c.args(["-c", &format!("entry{b}.S"), "-o", &format!("entry{b}.o")]);
        run_tool(c, &format!("gcc on entry{b}.S"))?;
        let objs = [format!("workloads{b}.o"), format!("simd{b}.o")];
        let mut c = gcc_cmd(arch);
        c.args(LDFLAGS)
            .args(["-Wl,-T,kernel.ld", "-Wl,--no-warn-rwx-segments", "-o"])
            .arg(format!("kernel{b}.elf"))
            .args([format!("entry{b}.o"), format!("kernel{b}.o")])
            .args(&objs);
        run_tool(c, &format!("linking the {b}-bit kernel"))?;
        let mut c = Command::new(objcopy);
        c.current_dir(dir)
            .args(["-O", "binary"])
            .arg(format!("kernel{b}.elf"))
            .arg(format!("kernel{b}.bin"));
        run_tool(c, &format!("objcopy of the {b}-bit kernel"))?;
        let mut c = gcc_cmd(arch);
        c.args(LDFLAGS)
            .arg("-o")
            .arg(format!("host{b}"))
            .arg(format!("host{b}.o"))
            .args(&objs);
        run_tool(c, &format!("linking the {b}-bit host program"))?;
    }
    Ok(())
}

/// Runs `w` for `iters` iterations in-process under x86bt, timing `Vm::run`.
pub fn run_x86bt(image: &[u8], w: Workload, iters: u32, engine: Engine) -> Result<X86btRun, Error> {
    let vm = bk::prepare_multiboot(image, &cmdline(w, iters), 1, engine)?;
    Ok(bk::time_run(vm))
}

/// The QEMU CPU model of the native kernels: QEMU's default models lack
/// SSE4.2, which strsearch needs.
pub const QEMU_CPU: &str = "max";

/// Runs `w` under `qemu` (the emulator of `arch`), timed from spawn to exit.
pub fn run_qemu(
    qemu: &Path,
    programs: &Programs,
    arch: Arch,
    w: Workload,
    iters: u32,
) -> Result<QemuRun, Error> {
    let append = cmdline(w, iters);
    let opts = QemuOptions {
        cpu_model: Some(QEMU_CPU),
        append: Some(&append),
        ..QemuOptions::default()
    };
    bk::spawn_qemu(qemu, &programs.kernel_path(arch), &opts)
}

/// A finished run of a host program.
#[derive(Clone, Debug)]
pub struct HostRun {
    /// Its exit status (None if a signal or the time limit ended it).
    pub status: Option<i32>,
    /// The answer it printed.
    pub result: Option<u32>,
    /// The time of the iterations alone, by its own clock (CLOCK_MONOTONIC).
    pub secs: Option<f64>,
    /// What it printed.
    pub stdout: String,
}

impl HostRun {
    /// Whether the answer checked.
    pub fn passed(&self) -> bool {
        self.status == Some(HOST_PASS)
    }
}

/// Seconds after which a host program is killed.
const HOST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the host program of `arch` for `w` and `iters` iterations.
pub fn run_host(
    programs: &Programs,
    arch: Arch,
    w: Workload,
    iters: u32,
) -> Result<HostRun, Error> {
    let path = programs.host_path(arch);
    let mut child = Command::new(&path)
        .arg(w.name)
        .arg(iters.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Native(format!("cannot run {}: {e}", path.display())))?;
    let status = bk::wait_child(&mut child, Instant::now(), HOST_TIMEOUT)
        .map_err(|e| Error::Native(format!("waiting for {}: {e}", path.display())))?;
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut stdout);
    }
    let field = |key: &str| {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok())
    };
    Ok(HostRun {
        status,
        result: field("result").and_then(|r| u32::try_from(r).ok()),
        secs: field("ns").map(|ns| ns as f64 / 1e9),
        stdout,
    })
}

/// Whether `perf stat` can count host instructions here.
#[derive(Clone, Debug)]
pub enum Counters {
    /// It can, with this perf.
    Available(PathBuf),
    /// It cannot, and why (one line).
    Unavailable(String),
}

/// The perf event counted: instructions retired in user space (what an
/// unprivileged user may count of its own processes).
const PERF_EVENT: &str = "instructions:u";

/// Finds out whether `perf stat -e instructions:u` counts on this host.
pub fn probe_counters() -> Counters {
    let Some(perf) = bk::find_on_path("perf") else {
        return Counters::Unavailable("perf is not installed".into());
    };
    match count_instructions(&perf, Command::new("true"), 0) {
        Ok(_) => Counters::Available(perf),
        Err(e) => Counters::Unavailable(e),
    }
}

/// Runs `cmd` under `perf stat` and returns the host instructions it retired
/// (in user space), or why there is no count (among the reasons, an exit
/// status other than `expect`: perf passes the command's on).
pub fn count_instructions(perf: &Path, cmd: Command, expect: i32) -> Result<u64, String> {
    let mut p = Command::new(perf);
    p.args(["stat", "-x", ",", "-e", PERF_EVENT, "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let out = p.output().map_err(|e| format!("cannot run perf: {e}"))?;
    if out.status.code() != Some(expect) {
        return Err(format!(
            "{} exited with {} under perf, not {expect}",
            cmd.get_program().to_string_lossy(),
            out.status
        ));
    }
    parse_perf_csv(&String::from_utf8_lossy(&out.stderr))
}

/// The count of [`PERF_EVENT`] in `perf stat -x ,` output (stderr): the
/// first field of the line that names the event.
pub fn parse_perf_csv(stderr: &str) -> Result<u64, String> {
    let line = stderr
        .lines()
        .find(|l| l.split(',').nth(2) == Some(PERF_EVENT))
        .ok_or_else(|| format!("perf stat printed no {PERF_EVENT} line"))?;
    let value = line.split(',').next().unwrap_or_default().trim();
    value
        .parse()
        .map_err(|_| format!("perf stat -e {PERF_EVENT} says {value} (no hardware counters here)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_perf_csv_count_is_read() {
        let err = "1234567,,instructions:u,1000,100.00,,\n";
        assert_eq!(parse_perf_csv(err), Ok(1_234_567));
    }

    #[test]
    fn parse_perf_csv_not_supported_is_an_error() {
        let err = "<not supported>,,instructions:u,0,100.00,,\n";
        let e = parse_perf_csv(err).unwrap_err();
        assert!(e.contains("<not supported>"), "{e}");
    }

    #[test]
    fn cmdline_iterations_have_fixed_width() {
        let w = WORKLOADS[0];
        assert_eq!(cmdline(w, 7).len(), cmdline(w, 4_000_000_000).len());
    }

    #[test]
    fn workloads_are_named_as_in_the_c_table() {
        let table = SOURCES[1].1;
        for w in WORKLOADS {
            assert!(table.contains(&format!("{{\"{}\",", w.name)), "{}", w.name);
        }
    }
}
