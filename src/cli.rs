//! The command line (clap): `run`, `sst` and `bench`.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// x86bt: a full-system x86 PC emulator with an interpreter and a binary translator.
#[derive(Debug, Parser)]
#[command(name = "x86bt", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The execution engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// The reference interpreter.
    Interp,
    /// The binary translator (x86-64 hosts only).
    Jit,
    /// Both, compared after every unit; stops at the first divergence (exit status 116).
    Lockstep,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a PC: from a BIOS image at the reset vector (--bios), or straight
    /// into a Linux bzImage or a Multiboot kernel (--kernel), as a boot loader would.
    Run(Box<RunArgs>),
    /// Run SingleStepTests MOO files (.MOO.gz), or folders of them.
    Sst(SstArgs),
    /// Measure guest MIPS on built-in compute loops.
    Bench(BenchArgs),
    /// Run a guest under QEMU and x86bt in lockstep and report the first divergence.
    Difftest(DifftestArgs),
}

/// Options of `x86bt difftest`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["bios", "kernel", "flat", "random"])))]
pub struct DifftestArgs {
    /// The QEMU binary (default: qemu-system-i386 on PATH).
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// A BIOS image both emulators boot from the reset vector.
    #[arg(long)]
    pub bios: Option<PathBuf>,
    /// A Multiboot kernel: QEMU boots it with -kernel, x86bt loads it itself, and
    /// both are compared from its entry point on, starting from QEMU's state there.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// A raw binary loaded at --at and entered there in real mode.
    #[arg(long, requires = "at")]
    pub flat: Option<PathBuf>,
    /// Load address of --flat (below 1 MiB).
    #[arg(long, value_parser = parse_addr)]
    pub at: Option<u64>,
    /// Generate random programs instead (see --seed, --count, --mode, --len).
    #[arg(long)]
    pub random: bool,
    /// Seed of the random programs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many random programs.
    #[arg(long, default_value_t = 10)]
    pub count: u64,
    /// Mode of the random programs: real, prot16, prot32 or long (64-bit code,
    /// compared against qemu-system-x86_64).
    #[arg(long, default_value = "real")]
    pub mode: String,
    /// Random programs: enable SSE in the stub (CR4.OSFXSR|OSXMMEXCPT, CR0.EM
    /// clear, seeded XMM registers and MXCSR) and mix SSE..SSE4.2 instructions
    /// into the stream, with NaN, denormal and infinite operands and MXCSR
    /// rounding modes; QEMU runs with those CPUID features.
    #[arg(long)]
    pub sse: bool,
    /// Instructions per random program.
    #[arg(long, default_value_t = 500)]
    pub len: usize,
    /// Only this program of the campaign (to reproduce one divergence).
    #[arg(long)]
    pub index: Option<u64>,
    /// Execution engine.
    #[arg(long, value_enum, default_value_t = Engine::Interp)]
    pub engine: Engine,
    /// Instructions to compare.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_insns: u64,
    /// Instructions to run first without comparing.
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
    /// Guest RAM in MiB.
    #[arg(short = 'm', long = "memory", default_value_t = 32)]
    pub mem_mib: u64,
    /// Instructions of history shown at a divergence.
    #[arg(long, default_value_t = 20)]
    pub history: usize,
    /// On an allowed divergence, take QEMU's values and keep comparing.
    #[arg(long)]
    pub continue_allowed: bool,
    /// Test only: flip bit 0 of x86bt's EAX after this many instructions.
    #[arg(long, hide = true)]
    pub inject_bug: Option<u64>,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad address {s:?}: {e}"))
}

/// Options of `x86bt run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 powered off (or --until seen, or Ctrl-A x); \
(v << 1) | 1 the guest wrote v to the debug-exit port 0xF4; 2 bad input or host error; \
100 internal error; 116 lockstep divergence; 118 triple fault (--no-reboot); \
120 halted with interrupts disabled; 122 reset requested (--no-reboot); \
124 --max-insns reached; 126 unsupported guest operation."
)]
pub struct RunArgs {
    /// BIOS ROM image, mapped below 4 GiB and aliased below 1 MiB; the CPU starts
    /// at its reset vector. Without --bios and --kernel, Debian's SeaBIOS
    /// (/usr/share/seabios/bios-256k.bin) boots from the drives.
    #[arg(long)]
    pub bios: Option<PathBuf>,
    /// A drive, as QEMU's `-drive` (repeatable): file=F[,format=raw|qcow2]
    /// [,if=ide][,media=disk|cdrom][,readonly=on][,snapshot=on][,index=0-3].
    /// snapshot=on keeps the guest's writes in memory and never touches F.
    #[arg(long = "drive")]
    pub drives: Vec<String>,
    /// The primary master disk image (IDE index 0).
    #[arg(long)]
    pub hda: Option<PathBuf>,
    /// The primary slave disk image (IDE index 1).
    #[arg(long)]
    pub hdb: Option<PathBuf>,
    /// The secondary master disk image (IDE index 2).
    #[arg(long)]
    pub hdc: Option<PathBuf>,
    /// The secondary slave disk image (IDE index 3).
    #[arg(long)]
    pub hdd: Option<PathBuf>,
    /// A CD-ROM image (an ISO) in the secondary master drive (IDE index 2).
    #[arg(long)]
    pub cdrom: Option<PathBuf>,
    /// What the firmware boots from, as QEMU's `-boot`: order=LETTERS (c the
    /// hard disk, d the CD), or the bare letters, and menu=on|off.
    #[arg(long)]
    pub boot: Option<String>,
    /// The graphics card, as QEMU's `-vga`: std (a standard VGA with
    /// SeaBIOS's VGA BIOS, the default when firmware boots) or none (the
    /// default with --kernel).
    #[arg(long)]
    pub vga: Option<String>,
    /// Where the VGA's screen shows, as QEMU's `-display`: none (the
    /// default), or text (the 80x25 text screen drawn on the terminal, which
    /// the serial console must then leave: --serial file:PATH or null).
    #[arg(long, default_value = "none")]
    pub display: String,
    /// At the end of the run, write the VGA's text screen to this file.
    #[arg(long)]
    pub screen_dump: Option<PathBuf>,
    /// A kernel to boot directly, without firmware: a Linux bzImage (boot
    /// protocol 2.06+) or a Multiboot v1 kernel (ELF32, ELF64 or a.out kludge), told
    /// apart by their contents.
    #[arg(long, conflicts_with = "bios")]
    pub kernel: Option<PathBuf>,
    /// An initial ramdisk for a Linux --kernel.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// The --kernel's command line.
    #[arg(long, requires = "kernel")]
    pub append: Option<String>,
    /// A Multiboot module for a Multiboot --kernel (repeatable): "FILE" or
    /// "FILE ARGS"; the whole string is the module's string, FILE its contents.
    #[arg(long = "module", requires = "kernel")]
    pub modules: Vec<String>,
    /// Stop (exit status 0) as soon as this text appears on COM1 or the debug console.
    #[arg(long)]
    pub until: Option<String>,
    /// Exit instead of resetting: on a reset request (keyboard controller, port
    /// 0x92, port 0xCF9, the ACPI reset register) with status 122, on a triple
    /// fault with status 118.
    #[arg(long)]
    pub no_reboot: bool,
    /// Where the RTC starts: base=utc (the host's date, the default),
    /// base=localtime, or base=YYYY-MM-DD[THH:MM:SS]; clock=vm (the only clock:
    /// the RTC runs on virtual time). Give a fixed base for bit-identical runs.
    #[arg(long, default_value = "base=utc")]
    pub rtc: String,
    /// Virtual time while the guest idles: sleep=on follows the host's wall
    /// clock (a `sleep 2` in the guest takes 2 s), sleep=off jumps straight to
    /// the next timer event (runs stay bit-identical and fast). Default: on when
    /// the console is interactive (--serial stdio on a terminal), off otherwise.
    #[arg(long)]
    pub icount: Option<String>,
    /// vCPUs, as QEMU's `-smp`: N or cpus=N (1 to 15), optionally with
    /// sockets=1, cores=N, threads=1, maxcpus=N (one package of N cores). The
    /// vCPUs take turns on one host thread, so runs stay deterministic.
    #[arg(long, default_value = "1", value_parser = parse_smp)]
    pub smp: u32,
    /// Adds a device, as QEMU's `-device` (repeatable): `edu`, QEMU's
    /// educational PCI device (BAR, MSI, INTx, DMA), on PCI slot 3 and up.
    #[arg(long = "device")]
    pub devices: Vec<x86bt_machine::pc::ExtraDevice>,
    /// Guest RAM in MiB.
    #[arg(short = 'm', long = "memory", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub mem_mib: u64,
    /// Where COM1 goes: stdio, file:PATH or null.
    #[arg(long, default_value = "stdio")]
    pub serial: String,
    /// Where the debug console (ports 0xE9 and 0x402) goes: stdio, file:PATH or null.
    #[arg(long, default_value = "null")]
    pub debugcon: String,
    /// Log POST codes (ports 0x80 and 0x190) to file:PATH.
    #[arg(long)]
    pub post: Option<String>,
    /// Stop after this many guest instructions.
    #[arg(long)]
    pub max_insns: Option<u64>,
    /// Execution engine.
    #[arg(long, value_enum, default_value_t = Engine::Interp)]
    pub engine: Engine,
    /// Print instructions retired, MIPS and unit-cache counters at exit.
    #[arg(long)]
    pub stats: bool,
    /// Serve GDB's remote protocol, as QEMU's `-gdb`: tcp::PORT (every
    /// interface) or tcp:HOST:PORT; port 0 lets the system choose (stderr
    /// names the port). The guest runs until a debugger connects, unless -S.
    #[arg(long = "gdb")]
    pub gdb: Option<String>,
    /// Shorthand for -gdb tcp::1234 (QEMU's -s).
    #[arg(short = 's')]
    pub gdb_default: bool,
    /// Do not start the CPU until the debugger says continue (QEMU's -S;
    /// needs -gdb or -s).
    #[arg(short = 'S')]
    pub wait_for_gdb: bool,
    /// The register layout the GDB server shows: x86-64, i386, or auto
    /// (i386 for a 32-bit --kernel, x86-64 otherwise, as this CPU has long
    /// mode). GDB fixes it when it connects; it does not follow the guest's
    /// mode.
    #[arg(long, value_enum, default_value_t = crate::gdb::LayoutChoice::Auto)]
    pub gdb_arch: crate::gdb::LayoutChoice,
    /// Show one status line on stderr, rewritten about once a second:
    /// guest instructions, MIPS, virtual time and translations (units
    /// decoded under the interpreter). It ends with a newline at exit.
    #[arg(long)]
    pub progress: bool,
    /// Record the input from outside the guest (what is typed on the serial
    /// console, idle time paced by the wall clock, the RTC base) into FILE,
    /// for --replay.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Replay a --record FILE: the recorded input, at the same points of the
    /// run; stdin is not read (Ctrl-A x still quits on a terminal). The
    /// options must match the recording's (engine, memory, images, ...).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Save a snapshot of the whole machine to FILE once N instructions
    /// have retired (at the first instruction boundary from N on, where
    /// --max-insns N would stop), then go on; N:FILE, repeatable. On the
    /// serial console, Ctrl-A s saves one on demand.
    #[arg(long = "snapshot-at", value_name = "N:FILE")]
    pub snapshot_at: Vec<String>,
    /// Continue from a snapshot file. Give the machine options of the run
    /// that saved it (memory, -smp, firmware or kernel, drives, devices);
    /// the snapshot is refused if the machine differs. --max-insns counts
    /// from power-on, as in the run that saved.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
}

/// Options of `x86bt sst`.
#[derive(Debug, clap::Args)]
pub struct SstArgs {
    /// MOO files or folders.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Execution engine.
    #[arg(long, value_enum, default_value_t = Engine::Interp)]
    pub engine: Engine,
    /// How many failing cases to show per file.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
}

/// Options of `x86bt bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Engines the kernel suite compares, side by side: interp, jit, qemu.
    #[arg(long, value_delimiter = ',', default_value = "interp,jit,qemu")]
    pub engines: Vec<String>,
    /// Workloads of the kernel suite to run, by name (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// An eighth of the iterations: a quicker, noisier look.
    #[arg(long)]
    pub quick: bool,
    /// The QEMU binary (default: qemu-system-i386 on PATH).
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Timed QEMU runs per iteration count; the fastest counts.
    #[arg(long, default_value_t = 3)]
    pub qemu_repeats: u32,
    /// Also print each engine's raw instruction counts and times (to stderr).
    #[arg(long)]
    pub verbose: bool,
    /// Run the C workloads (bench/c/) instead, built with gcc into 32- and
    /// 64-bit Multiboot kernels and into host programs from the same objects,
    /// and add a native column.
    #[arg(long)]
    pub native: bool,
    /// With --native: the kernels to run, 32-bit, 64-bit or both.
    #[arg(long, value_enum, default_value_t = BenchArch::Both)]
    pub arch: BenchArch,
    /// With --native: the QEMU of the 64-bit kernels (default:
    /// qemu-system-x86_64 on PATH); --qemu is the 32-bit kernels'.
    #[arg(long)]
    pub qemu64: Option<PathBuf>,
    /// With --native: rounds per workload, every column measured once per
    /// round; each cell is the median of its rounds.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Run the old real-mode compute loops instead (see --insns and --engine).
    #[arg(long)]
    pub real_mode: bool,
    /// Guest instructions per real-mode workload.
    #[arg(long, default_value_t = 200_000_000)]
    pub insns: u64,
    /// Execution engine of the real-mode loops.
    #[arg(long, value_enum, default_value_t = Engine::Interp)]
    pub engine: Engine,
}

/// The kernels `x86bt bench --native` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchArch {
    /// 32-bit protected mode, against qemu-system-i386.
    #[value(name = "32")]
    I386,
    /// 64-bit long mode, against qemu-system-x86_64.
    #[value(name = "64")]
    X86_64,
    /// Both, one table each.
    Both,
}

/// The most vCPUs `-smp` takes: the I/O APIC's ID (4 bits) follows the CPUs'.
pub const MAX_CPUS: u32 = 15;

/// Parses QEMU's `-smp` value: `N` or `cpus=N`, with the topology keys
/// accepted where they describe one package of N single-threaded cores.
pub fn parse_smp(v: &str) -> Result<u32, String> {
    let mut cpus = None;
    let mut topo: Vec<(&str, u32)> = Vec::new();
    for (i, part) in v.split(',').enumerate() {
        let (key, val) = match part.split_once('=') {
            Some((k, val)) => (k, val),
            None if i == 0 => ("cpus", part),
            None => return Err(format!("'{part}' is not key=value")),
        };
        let n: u32 = val
            .parse()
            .map_err(|_| format!("{key}={val}: not a number"))?;
        match key {
            "cpus" => cpus = Some(n),
            "sockets" | "cores" | "threads" | "maxcpus" | "dies" | "clusters" => {
                topo.push((key, n))
            }
            _ => {
                return Err(format!(
                    "unknown key '{key}' (cpus, sockets, cores, threads, maxcpus)"
                ))
            }
        }
    }
    let cores = topo.iter().find(|(k, _)| *k == "cores").map(|&(_, n)| n);
    let n = cpus.or(cores).ok_or("no CPU count")?;
    if !(1..=MAX_CPUS).contains(&n) {
        return Err(format!("{n} CPUs: 1 to {MAX_CPUS} are supported"));
    }
    for (key, val) in topo {
        let want = match key {
            "cores" | "maxcpus" => n,
            _ => 1,
        };
        if val != want {
            return Err(format!(
                "{key}={val}: x86bt models one package of {n} cores with one thread each ({key}={want})"
            ));
        }
    }
    Ok(n)
}

/// QEMU's single-dash long options, as a QEMU user types them (`-smp 2`,
/// `-kernel F`), become clap's double-dash ones. A value that follows an
/// option is never rewritten.
pub fn qemu_style_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    /// QEMU's options that take a value, and those that do not.
    const QEMU_VALUED: &[&str] = &[
        "smp", "bios", "kernel", "initrd", "append", "serial", "debugcon", "icount", "rtc",
        "device", "drive", "hda", "hdb", "hdc", "hdd", "cdrom", "boot", "vga", "display", "gdb",
    ];
    const QEMU_FLAGS: &[&str] = &["no-reboot"];
    /// x86bt's own options that take a value.
    const OWN_VALUED: &[&str] = &[
        "until",
        "module",
        "memory",
        "max-insns",
        "engine",
        "post",
        "gdb-arch",
        "snapshot-at",
        "restore",
    ];
    let is_qemu = |n: &str| QEMU_VALUED.contains(&n) || QEMU_FLAGS.contains(&n);
    let takes_value = |n: &str| QEMU_VALUED.contains(&n) || OWN_VALUED.contains(&n);
    let mut out = Vec::new();
    let mut value_next = false;
    for a in args {
        if std::mem::take(&mut value_next) {
            out.push(a);
            continue;
        }
        let Some(s) = a.to_str() else {
            out.push(a);
            continue;
        };
        let name = |s: &str| s.split_once('=').map_or(s, |(k, _)| k).to_string();
        if let Some(rest) = s.strip_prefix('-').filter(|r| !r.starts_with('-')) {
            if is_qemu(&name(rest)) {
                value_next = !rest.contains('=') && takes_value(rest);
                out.push(format!("--{rest}").into());
                continue;
            }
        }
        if let Some(rest) = s.strip_prefix("--") {
            value_next = !rest.contains('=') && takes_value(rest);
        } else if s == "-m" {
            value_next = true;
        }
        out.push(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smp_takes_qemu_forms_and_refuses_other_topologies() {
        assert_eq!(parse_smp("4"), Ok(4));
        assert_eq!(parse_smp("cpus=2"), Ok(2));
        assert_eq!(parse_smp("4,sockets=1,cores=4,threads=1,maxcpus=4"), Ok(4));
        assert_eq!(parse_smp("cores=3"), Ok(3));
        assert!(parse_smp("0").is_err());
        assert!(parse_smp("16").is_err());
        assert!(parse_smp("4,sockets=2").is_err());
        assert!(parse_smp("4,threads=2").is_err());
        assert!(parse_smp("4,bogus=1").is_err());
        assert!(parse_smp("four").is_err());
    }

    fn rewrite(args: &[&str]) -> Vec<String> {
        qemu_style_args(args.iter().map(std::ffi::OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn qemu_single_dash_options_become_long_options_but_values_stay() {
        assert_eq!(
            rewrite(&["x86bt", "run", "-smp", "2", "-kernel", "k", "-device", "edu"]),
            ["x86bt", "run", "--smp", "2", "--kernel", "k", "--device", "edu"]
        );
        // A value that looks like an option is left alone.
        assert_eq!(
            rewrite(&["x86bt", "run", "--append", "-smp", "-m", "64"]),
            ["x86bt", "run", "--append", "-smp", "-m", "64"]
        );
        assert_eq!(
            rewrite(&["x86bt", "run", "-append", "-kernel", "-no-reboot"]),
            ["x86bt", "run", "--append", "-kernel", "--no-reboot"]
        );
    }

    #[test]
    fn device_names_edu_and_refuses_others() {
        let cli = Cli::try_parse_from(rewrite(&[
            "x86bt", "run", "--kernel", "k", "-device", "edu",
        ]))
        .expect("parses");
        let Command::Run(a) = cli.command else {
            panic!("run")
        };
        assert_eq!(a.devices, [x86bt_machine::pc::ExtraDevice::Edu]);
        assert!(Cli::try_parse_from(rewrite(&[
            "x86bt", "run", "--kernel", "k", "-device", "e1000"
        ]))
        .is_err());
    }
}
