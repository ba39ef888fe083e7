//! Snapshots: the whole machine in memory ([`Snapshot`], from
//! [`crate::Vm::save`]) and in a versioned file (`--snapshot-at N:FILE`,
//! Ctrl-A s, `x86bt run --restore FILE`).
//!
//! A snapshot holds every vCPU's architectural state, RAM (sparse and
//! compressed), every device, the disks' overlays and identities, and
//! virtual time (each CPU's instruction count and TSC offset, the idle time,
//! the devices' anchors and deadlines). It does not hold the machine's
//! configuration to rebuild it from: `--restore` is given the same machine
//! options as the run that saved (as QEMU's `-loadvm`), builds that machine,
//! checks that it has the snapshot's shape (RAM size, CPUs, devices in
//! order, firmware image, each disk's size and contents) and then puts the
//! state in. The file records the command line that made it, so a refusal
//! can show it.
//!
//! The file: a 32-byte header, then one postcard record.
//!
//! ```text
//!  0  magic "X86BTSNP"
//!  8  format version, u32 little-endian (FORMAT_VERSION)
//! 12  zero, u32
//! 16  body length in bytes, u64 little-endian
//! 24  hash64 of the body, u64 little-endian
//! 32  body: postcard encoding of SnapshotFile
//! ```
//!
//! A file that is missing, truncated, corrupt (the body's hash), of another
//! format version, or made for another machine is refused with one line
//! that says which, and `x86bt run` exits with status 2. There is no
//! migration between versions: any change to a saved struct moves
//! [`FORMAT_VERSION`].

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::path::Path;
use x86bt_cpu::arch_state::ArchState;
use x86bt_machine::machine::{MachineShape, MachineState};
use x86bt_machine::memory::RamImage;
use x86bt_machine::snapshot::hash64;

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"X86BTSNP";

/// The version of the file's layout and of every struct in it.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes before the body.
const HEADER_LEN: usize = 32;

/// The whole VM's state (see the module comment).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the machine was built from, as far as a restore must match it.
    pub shape: MachineShape,
    /// Every vCPU's architectural state, by index.
    pub cpus: Vec<ArchState>,
    /// The run loop's state.
    pub run: VmRunState,
    /// The platform below the CPUs.
    pub machine: MachineState,
    /// Guest RAM.
    pub ram: RamImage,
}

impl Snapshot {
    /// Instructions retired by every vCPU together when it was taken.
    pub fn icount(&self) -> u64 {
        self.cpus.iter().map(|c| c.icount).sum()
    }
}

/// The run loop's part of a snapshot (see `vm/state.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRunState {
    /// The running vCPU.
    pub cur: usize,
    /// Instructions retired by the vCPUs that were not running.
    pub others_icount: u64,
    /// Per vCPU, the virtual time it last stopped running.
    pub left_at: Vec<u64>,
    /// The running vCPU's `icount` at which its turn ends.
    pub quantum_end: u64,
    /// The instruction count up to which the engine may chain units.
    pub budget: u64,
    /// Virtual time skipped while halted, in ns.
    pub idle_ns: u64,
    /// Run-loop passes since the last tick.
    pub tick_passes: u32,
}

/// What a snapshot file holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// The x86bt version that wrote it.
    pub x86bt: String,
    /// The command line of the run that wrote it.
    pub command_line: Vec<String>,
    /// The state.
    pub snapshot: Snapshot,
}

/// Encodes `file` with its header.
pub fn encode(file: &SnapshotFile) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut out = postcard::to_extend(file, std::mem::take(&mut out))
        .map_err(|e| Error::Snapshot(format!("cannot encode the snapshot: {e}")))?;
    let body_len = (out.len() - HEADER_LEN) as u64;
    let sum = hash64(&out[HEADER_LEN..]);
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&body_len.to_le_bytes());
    out[24..32].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Decodes a snapshot file's bytes; `name` is the file's name in errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<SnapshotFile, Error> {
    let refuse = |what: String| Error::Snapshot(format!("{name}: {what}"));
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(refuse("not an x86bt snapshot (no X86BTSNP header)".into()));
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(refuse(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    };
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(refuse(format!(
            "snapshot format version {version}; this x86bt reads version {FORMAT_VERSION} only"
        )));
    }
    let body = &bytes[HEADER_LEN..];
    let want = word(16);
    if (body.len() as u64) < want {
        return Err(refuse(format!(
            "truncated: the header says {want} bytes follow it, the file has {}",
            body.len()
        )));
    }
    if body.len() as u64 > want {
        return Err(refuse(format!(
            "corrupt: {} bytes past the end the header gives",
            body.len() as u64 - want
        )));
    }
    if hash64(body) != word(24) {
        return Err(refuse(
            "corrupt: the contents do not match their checksum".into(),
        ));
    }
    postcard::from_bytes(body).map_err(|e| refuse(format!("corrupt: cannot decode it ({e})")))
}

/// Writes `file` to `path`: to a temporary file beside it, renamed into
/// place, so a reader never sees half a snapshot.
pub fn write(path: &Path, file: &SnapshotFile) -> Result<u64, Error> {
    let bytes = encode(file)?;
    let tmp = path.with_extension("snap-partial");
    let fail = |source| Error::Create {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(bytes.len() as u64)
}

/// Reads and decodes the snapshot file at `path`.
pub fn read(path: &Path) -> Result<SnapshotFile, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Snapshot(format!("cannot read the snapshot {}: {e}", path.display()))
    })?;
    decode(&bytes, &path.display().to_string())
}

/// `--snapshot-at N:FILE`: the instruction count and the file.
pub fn parse_at(spec: &str) -> Result<(u64, std::path::PathBuf), Error> {
    let bad = || {
        Error::Usage(format!(
            "--snapshot-at {spec:?}: expected N:FILE (N instructions, then the file to write)"
        ))
    };
    let (n, file) = spec.split_once(':').ok_or_else(bad)?;
    let n = n
        .trim()
        .replace('_', "")
        .parse::<u64>()
        .map_err(|_| bad())?;
    if file.is_empty() {
        return Err(bad());
    }
    Ok((n, std::path::PathBuf::from(file)))
}

/// Where Ctrl-A s saves: `x86bt-snapshot-<instructions>.snap` in the
/// current directory.
pub fn on_demand_path(icount: u64) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("x86bt-snapshot-{icount}.snap"))
}

/// What a run saves, and when.
pub struct SnapshotPlan {
    /// `--snapshot-at`, by instruction count (sorted).
    pub at: Vec<(u64, std::path::PathBuf)>,
    /// Raised by Ctrl-A s; the VM's pause flag.
    pub on_demand: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The run's command line, recorded in each file.
    pub command_line: Vec<String>,
}

/// Saves `vm` to `path`, and says so on stderr (`\r\n` first when the
/// terminal is in raw mode).
pub fn save_to(
    vm: &mut crate::Vm,
    path: &Path,
    command_line: &[String],
    raw: bool,
) -> Result<(), Error> {
    let start = std::time::Instant::now();
    let snapshot = vm.save()?;
    let saved = start.elapsed();
    let file = SnapshotFile {
        x86bt: env!("CARGO_PKG_VERSION").to_string(),
        command_line: command_line.to_vec(),
        snapshot,
    };
    let bytes = write(path, &file)?;
    let nl = if raw { "\r\n" } else { "" };
    let end = if raw { "\r" } else { "" };
    eprintln!(
        "{nl}x86bt: snapshot at {} instructions saved to {} ({:.1} MiB; state taken in {:.0} ms, written in {:.0} ms){end}",
        vm.icount(),
        path.display(),
        bytes as f64 / (1 << 20) as f64,
        saved.as_secs_f64() * 1e3,
        (start.elapsed() - saved).as_secs_f64() * 1e3
    );
    Ok(())
}

/// Runs `vm` up to `max_insns` as `run` would (`run` is [`crate::Vm::run`]
/// or the `--progress` loop), stopping to save where `plan` says: at each
/// `--snapshot-at` count, where the run stops as it does for
/// `--max-insns` (between two units, which a run that goes on cannot tell
/// from not stopping), and on Ctrl-A s.
pub fn run_with_snapshots(
    vm: &mut crate::Vm,
    max_insns: u64,
    plan: &mut SnapshotPlan,
    raw: bool,
    run: &mut dyn FnMut(&mut crate::Vm, u64) -> crate::RunOutcome,
) -> Result<crate::RunOutcome, Error> {
    use std::sync::atomic::Ordering;
    plan.at.sort_by_key(|(n, _)| *n);
    loop {
        let limit = plan
            .at
            .first()
            .map_or(max_insns, |(n, _)| (*n).min(max_insns));
        let outcome = run(vm, limit);
        let demanded = plan
            .on_demand
            .as_ref()
            .is_some_and(|f| f.swap(false, Ordering::SeqCst));
        if demanded {
            let path = on_demand_path(vm.icount());
            if let Err(e) = save_to(vm, &path, &plan.command_line, raw) {
                // The guest runs on: a failed save on demand is reported,
                // not fatal.
                let end = if raw { "\r" } else { "" };
                eprintln!("x86bt: {e}{end}");
            }
        }
        let mut saved_at = false;
        while plan.at.first().is_some_and(|(n, _)| *n <= vm.icount()) {
            let (_, path) = plan.at.remove(0);
            save_to(vm, &path, &plan.command_line, raw)?;
            saved_at = true;
        }
        let go_on = match outcome {
            crate::RunOutcome::Stopped => demanded,
            crate::RunOutcome::InstructionLimit => saved_at && vm.icount() < max_insns,
            _ => false,
        };
        if !go_on {
            return Ok(outcome);
        }
    }
}

/// `--restore FILE`: puts the snapshot in `path` into `vm`, which was built
/// from the run's options. A refusal names what differs and, for a machine
/// of another shape, the command line that made the snapshot.
pub fn restore_from(vm: &mut crate::Vm, path: &Path) -> Result<(), Error> {
    let start = std::time::Instant::now();
    let file = read(path)?;
    let read_in = start.elapsed();
    vm.restore(&file.snapshot).map_err(|e| {
        let made = file.command_line.join(" ");
        Error::Snapshot(format!("{}: {e} (it was made by: {made})", path.display()))
    })?;
    eprintln!(
        "x86bt: restored {} at {} instructions (read in {:.0} ms, restored in {:.0} ms)",
        path.display(),
        vm.icount(),
        read_in.as_secs_f64() * 1e3,
        (start.elapsed() - read_in).as_secs_f64() * 1e3
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x86bt_machine::{GuestPhys, Machine};

    /// A snapshot file of a bare VM with a few bytes in RAM and registers
    /// set.
    fn sample() -> SnapshotFile {
        let mut vm = crate::Vm::new(Machine::flat(1 << 20).expect("machine"));
        vm.machine.mem.write_bytes(GuestPhys(0x4321), b"snap");
        vm.cpu.gpr[0] = 0xDEAD_BEEF;
        vm.cpu.icount = 12_345;
        SnapshotFile {
            x86bt: "test".into(),
            command_line: vec!["x86bt".into(), "run".into()],
            snapshot: vm.save().expect("save"),
        }
    }

    #[test]
    fn a_snapshot_file_round_trips_into_another_vm() {
        let bytes = encode(&sample()).expect("encode");
        let back = decode(&bytes, "f").expect("decode");
        assert_eq!(back.command_line, ["x86bt", "run"]);
        let mut vm = crate::Vm::new(Machine::flat(1 << 20).expect("machine"));
        vm.machine.mem.write_bytes(GuestPhys(0x8000), b"stale");
        vm.restore(&back.snapshot).expect("restore");
        assert_eq!(vm.cpu.gpr[0], 0xDEAD_BEEF);
        assert_eq!(vm.icount(), 12_345);
        let mut buf = [0u8; 4];
        vm.machine.mem.read_bytes(GuestPhys(0x4321), &mut buf);
        assert_eq!(&buf, b"snap");
        assert_eq!(vm.machine.mem.read_u8(GuestPhys(0x8000)), 0);
    }

    fn refusal(bytes: &[u8]) -> String {
        match decode(bytes, "f") {
            Err(Error::Snapshot(e)) => e,
            other => panic!("not refused: {:?}", other.map(|f| f.x86bt)),
        }
    }

    #[test]
    fn truncated_corrupt_and_foreign_files_are_refused_saying_which() {
        let good = encode(&sample()).expect("encode");
        assert!(refusal(&good[..4]).contains("not an x86bt snapshot"));
        assert!(refusal(b"PK\x03\x04 a zip file").contains("not an x86bt snapshot"));
        assert!(refusal(&good[..20]).contains("truncated"));
        assert!(refusal(&good[..good.len() - 1]).contains("truncated"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(refusal(&longer).contains("corrupt"));
        for at in [HEADER_LEN, HEADER_LEN + 7, good.len() / 2, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 1;
            assert!(refusal(&flipped).contains("corrupt"), "byte {at}");
        }
        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let e = refusal(&newer);
        assert!(
            e.contains(&format!("version {}", FORMAT_VERSION + 1)),
            "{e}"
        );
        // A body whose checksum fits but which is not a snapshot.
        let mut junk = good[..HEADER_LEN].to_vec();
        junk.extend_from_slice(&[0xFF; 16]);
        junk[16..24].copy_from_slice(&16u64.to_le_bytes());
        let sum = hash64(&junk[HEADER_LEN..]);
        junk[24..32].copy_from_slice(&sum.to_le_bytes());
        assert!(refusal(&junk).contains("cannot decode"));
    }

    #[test]
    fn a_snapshot_for_another_machine_is_refused_and_changes_nothing() {
        let file = sample();
        let mut vm = crate::Vm::new(Machine::flat(2 << 20).expect("machine"));
        vm.cpu.gpr[0] = 7;
        let Err(Error::Snapshot(e)) = vm.restore(&file.snapshot) else {
            panic!("restored into a machine with twice the RAM")
        };
        assert!(
            e.contains("RAM: the snapshot has 1 MiB, this machine 2 MiB"),
            "{e}"
        );
        assert_eq!(vm.cpu.gpr[0], 7);
    }

    /// A guest that edits a page-table entry without INVLPG keeps using the
    /// old translation until the TLB entry goes (SDM vol. 3A §4.10.4.3); a
    /// restored run must too, or it would part from the run that saved.
    #[test]
    fn a_stale_tlb_entry_survives_a_restore() {
        use x86bt_cpu::mmu::{translate, Access};
        use x86bt_machine::Linear;
        let mut vm = crate::Vm::new(Machine::flat(1 << 20).expect("machine"));
        let mem = &mut vm.machine.mem;
        mem.write(GuestPhys(0x1000), 0x2003u32.to_le_bytes()); // PDE 0
        mem.write(GuestPhys(0x2000 + 5 * 4), 0x7003u32.to_le_bytes()); // PTE 5
        vm.cpu.cr3 = 0x1000;
        vm.cpu.cr0 |= x86bt_cpu::state::cr0::PE | x86bt_cpu::state::cr0::PG;
        let lin = Linear(0x5123);
        let first = translate(&mut vm.cpu, &mut vm.machine, lin, Access::Read);
        assert_eq!(first, Ok(GuestPhys(0x7123)));
        // The entry now says 0x8000, but no INVLPG: the TLB still has 0x7000.
        vm.machine
            .mem
            .write(GuestPhys(0x2000 + 5 * 4), 0x8003u32.to_le_bytes());
        let stale = translate(&mut vm.cpu, &mut vm.machine, lin, Access::Read);
        assert_eq!(stale, Ok(GuestPhys(0x7123)));
        let snapshot = vm.save().expect("save");
        let mut other = crate::Vm::new(Machine::flat(1 << 20).expect("machine"));
        other.restore(&snapshot).expect("restore");
        let after = translate(&mut other.cpu, &mut other.machine, lin, Access::Read);
        assert_eq!(after, Ok(GuestPhys(0x7123)), "the TLB entry was lost");
    }

    #[test]
    fn snapshot_at_takes_n_colon_file() {
        assert_eq!(
            parse_at("1_000:a.snap").expect("parses"),
            (1000, std::path::PathBuf::from("a.snap"))
        );
        assert_eq!(
            parse_at("5:dir/x:y").expect("parses").1,
            Path::new("dir/x:y")
        );
        for bad in ["", "12", ":f", "x:f", "12:"] {
            assert!(parse_at(bad).is_err(), "{bad:?}");
        }
    }
}
