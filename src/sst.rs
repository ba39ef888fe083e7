//! The SingleStepTests runner (`x86bt sst`): hardware-captured single-instruction
//! cases in the MOO format (see the data set's README), run through the real
//! engine on a bare machine and compared register by register and byte by byte.
//!
//! The data comes from an 80286. x86bt is a 386-and-later CPU, so a few cases
//! legitimately differ; each such case is recognised from its *inputs* (never from
//! our result), counted as skipped, and reported with its reason:
//! - LOCK on an instruction that cannot be locked: the 80286 ignores the prefix,
//!   the 386 and later raise #UD (SDM vol. 2A, LOCK). Where the 80286 raised #UD
//!   anyway (an undefined opcode under the prefix), the case runs;
//! - MOV to or from segment register 4 or 5: #UD on the 80286, FS/GS on the 386;
//! - hashes in the data set's revocation list (known-bad captures).
//!
//! FLAGS bits 12-15 do not exist in 80286 real mode: they are cleared on load and
//! masked on compare, as the data set's README directs. The reserved bits 3 and 5
//! are masked too: they are not flags, a 386 and later keep them 0, and the
//! 80286's divide microcode leaves bit 3 set in the FLAGS image it pushes for #DE.

use crate::cli::Engine;
use crate::error::Error;
use crate::vm::Vm;
use flate2::read::GzDecoder;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use x86bt_cpu::state::{flags, sreg, RunState, Segment};
use x86bt_cpu::CpuState;
use x86bt_decoder::iced_x86::{Decoder, DecoderOptions};
use x86bt_machine::{GuestPhys, Machine};

/// Register order of the MOO `REGS` bitmask.
pub const REG_NAMES: [&str; 14] = [
    "ax", "bx", "cx", "dx", "cs", "ss", "ds", "es", "sp", "bp", "si", "di", "ip", "flags",
];

/// A register and memory state from a test.
#[derive(Clone, Debug, Default)]
pub struct MooState {
    /// Registers in [`REG_NAMES`] order; `None` where the chunk omits one.
    pub regs: [Option<u16>; 14],
    /// (physical address, byte).
    pub ram: Vec<(u32, u8)>,
}

/// One test case.
#[derive(Clone, Debug, Default)]
pub struct MooTest {
    /// The disassembly from the data set.
    pub name: String,
    /// The instruction bytes.
    pub bytes: Vec<u8>,
    /// The initial state.
    pub init: MooState,
    /// The final state (only changed registers).
    pub fina: MooState,
    /// The exception vector and the address of the pushed FLAGS, if one happened.
    pub excp: Option<(u8, u32)>,
    /// The SHA-1 identifying the test, as lowercase hex.
    pub hash: String,
}

struct Chunks<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<([u8; 4], &'a [u8]), String>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        if self.data.len() < 8 {
            self.data = &[];
            return Some(Err("truncated chunk header".into()));
        }
        let tag = [self.data[0], self.data[1], self.data[2], self.data[3]];
        let len =
            u32::from_le_bytes([self.data[4], self.data[5], self.data[6], self.data[7]]) as usize;
        let rest = &self.data[8..];
        if rest.len() < len {
            self.data = &[];
            return Some(Err(format!(
                "chunk {} overruns the file",
                String::from_utf8_lossy(&tag)
            )));
        }
        self.data = &rest[len..];
        Some(Ok((tag, &rest[..len])))
    }
}

fn chunks(data: &[u8]) -> Chunks<'_> {
    Chunks { data }
}

fn u32_at(p: &[u8], at: usize) -> Result<u32, String> {
    p.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "short field".to_string())
}

fn parse_state(p: &[u8]) -> Result<MooState, String> {
    let mut s = MooState::default();
    for c in chunks(p) {
        let (tag, body) = c?;
        match &tag {
            b"REGS" => {
                let mask = u16::from_le_bytes([
                    *body.first().ok_or("empty REGS")?,
                    *body.get(1).ok_or("short REGS")?,
                ]);
                let mut at = 2;
                for (i, r) in s.regs.iter_mut().enumerate() {
                    if mask & (1 << i) != 0 {
                        let b = body.get(at..at + 2).ok_or("short REGS")?;
                        *r = Some(u16::from_le_bytes([b[0], b[1]]));
                        at += 2;
                    }
                }
            }
            b"RAM " => {
                let n = u32_at(body, 0)? as usize;
                for k in 0..n {
                    let addr = u32_at(body, 4 + 5 * k)?;
                    let v = *body.get(8 + 5 * k).ok_or("short RAM")?;
                    s.ram.push((addr, v));
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

fn parse_test(p: &[u8]) -> Result<MooTest, String> {
    let mut t = MooTest::default();
    for c in chunks(p.get(4..).ok_or("short TEST")?) {
        let (tag, body) = c?;
        match &tag {
            b"NAME" => {
                t.name = String::from_utf8_lossy(body.get(4..).unwrap_or_default()).into_owned()
            }
            b"BYTS" => t.bytes = body.get(4..).unwrap_or_default().to_vec(),
            b"INIT" => t.init = parse_state(body)?,
            b"FINA" => t.fina = parse_state(body)?,
            b"EXCP" => t.excp = Some((*body.first().ok_or("short EXCP")?, u32_at(body, 1)?)),
            b"HASH" => t.hash = body.iter().map(|b| format!("{b:02x}")).collect(),
            _ => {}
        }
    }
    Ok(t)
}

/// Reads a `.MOO.gz` (or uncompressed `.MOO`) file.
pub fn load_moo(path: &Path) -> Result<Vec<MooTest>, Error> {
    let raw = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let data = if raw.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Moo {
                path: path.to_path_buf(),
                what: format!("gzip: {e}"),
            })?;
        out
    } else {
        raw
    };
    let bad = |what: String| Error::Moo {
        path: path.to_path_buf(),
        what,
    };
    let mut tests = Vec::new();
    let mut seen_header = false;
    for c in chunks(&data) {
        let (tag, body) = c.map_err(bad)?;
        match &tag {
            b"MOO " => seen_header = true,
            b"TEST" => tests.push(parse_test(body).map_err(bad)?),
            _ => {}
        }
    }
    if !seen_header {
        return Err(bad("no MOO header".into()));
    }
    Ok(tests)
}

/// The per-opcode flag masks from `metadata.json`, keyed by file stem ("F6.6").
#[derive(Debug, Default)]
pub struct Metadata {
    masks: BTreeMap<String, u16>,
}

impl Metadata {
    /// Loads the masks; a missing file means "compare every flag".
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Metadata {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
        let mut masks = BTreeMap::new();
        if let Some(ops) = json.get("opcodes").and_then(|o| o.as_object()) {
            for (op, v) in ops {
                if let Some(m) = v.get("flags-mask").and_then(|m| m.as_u64()) {
                    masks.insert(op.clone(), m as u16);
                }
                if let Some(regs) = v.get("reg").and_then(|r| r.as_object()) {
                    for (r, rv) in regs {
                        if let Some(m) = rv.get("flags-mask").and_then(|m| m.as_u64()) {
                            masks.insert(format!("{op}.{r}"), m as u16);
                        }
                    }
                }
            }
        }
        Ok(Self { masks })
    }

    /// The defined-flags mask for a file stem, without FLAGS bits 12-15 and the
    /// reserved bits 3 and 5 (see the module docs).
    pub fn mask(&self, stem: &str) -> u16 {
        self.masks.get(stem).copied().unwrap_or(0xFFFF) & 0x0FD7
    }
}

/// Why a case is skipped (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// LOCK on a non-lockable instruction.
    LockNonLockable,
    /// MOV with segment register 4 or 5.
    SregFsGs,
    /// Listed in the revocation list.
    Revoked,
}

impl SkipReason {
    /// The reason in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::LockNonLockable => {
                "LOCK on a non-lockable instruction: 80286 ignores it, 386+ raises #UD"
            }
            Self::SregFsGs => "MOV with sreg 4/5: #UD on the 80286, FS/GS on the 386+",
            Self::Revoked => "listed in revocation_list.txt",
        }
    }
}

fn strip_prefixes(bytes: &[u8]) -> (&[u8], bool) {
    let mut lock = false;
    let mut i = 0;
    while i < bytes.len() && matches!(bytes[i], 0x26 | 0x2E | 0x36 | 0x3E | 0xF0 | 0xF2 | 0xF3) {
        lock |= bytes[i] == 0xF0;
        i += 1;
    }
    (&bytes[i..], lock)
}

/// Decides from a case's inputs whether it exercises 80286-only behaviour.
pub fn skip_reason(t: &MooTest, revoked: &HashSet<String>) -> Option<SkipReason> {
    if revoked.contains(&t.hash) {
        return Some(SkipReason::Revoked);
    }
    let (op, lock) = strip_prefixes(&t.bytes);
    // Where the 80286 itself raised #UD, both CPUs agree whatever the reason.
    let expects_ud = matches!(t.excp, Some((6, _)));
    if lock && !expects_ud {
        let ins = Decoder::with_ip(16, &t.bytes, 0, DecoderOptions::NONE).decode();
        if ins.is_invalid() {
            return Some(SkipReason::LockNonLockable);
        }
    }
    if let [0x8C | 0x8E, modrm, ..] = op {
        if matches!((modrm >> 3) & 7, 4 | 5) {
            return Some(SkipReason::SregFsGs);
        }
    }
    None
}

/// The outcome of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseResult {
    /// All compared state matched.
    Pass,
    /// Something differed: a description of the first difference.
    Fail(String),
    /// Skipped for a documented reason.
    Skip(SkipReason),
}

/// Runs SingleStepTests cases on one reusable VM.
pub struct SstRunner {
    vm: Vm,
    revoked: HashSet<String>,
    meta: Metadata,
}

/// Instructions one case may run before it counts as a hang.
const CASE_BUDGET: u64 = 200_000;

impl SstRunner {
    /// A runner with a flat 16 MiB machine, for the data set in `dir` (metadata and
    /// revocation list are read from there when present).
    pub fn new(dir: &Path, engine: Engine) -> Result<Self, Error> {
        let machine = Machine::flat(16 << 20)?;
        let meta = Metadata::load(&dir.join("metadata.json"))?;
        let revoked = std::fs::read_to_string(dir.join("revocation_list.txt"))
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            vm: Vm::with_engine(machine, engine)?,
            revoked,
            meta,
        })
    }

    /// Loads a case's initial state into the VM.
    fn load(&mut self, t: &MooTest) {
        let vm = &mut self.vm;
        for &(a, v) in &t.init.ram {
            vm.machine.mem.write_u8(GuestPhys(u64::from(a)), v);
        }
        vm.invalidate_written();
        let icount = vm.cpu.icount;
        *vm.cpu = CpuState::reset();
        vm.cpu.icount = icount;
        let r = |i: usize| u64::from(t.init.regs[i].unwrap_or(0));
        let gpr = [
            (0, 0usize),
            (1, 3),
            (2, 1),
            (3, 2),
            (8, 4),
            (9, 5),
            (10, 6),
            (11, 7),
        ];
        for (moo, slot) in gpr {
            vm.cpu.gpr[slot] = r(moo);
        }
        for (moo, s) in [(4, sreg::CS), (5, sreg::SS), (6, sreg::DS), (7, sreg::ES)] {
            vm.cpu.seg[s] = Segment::real(r(moo) as u16);
        }
        vm.cpu.rip = r(12);
        vm.cpu.rflags = (r(13) & 0x0FFF & !0x28) | flags::FIXED1;
    }

    fn ours(&self, i: usize) -> u16 {
        let c = &self.vm.cpu;
        (match i {
            0 => c.gpr[0],
            1 => c.gpr[3],
            2 => c.gpr[1],
            3 => c.gpr[2],
            4 => u64::from(c.seg[sreg::CS].selector),
            5 => u64::from(c.seg[sreg::SS].selector),
            6 => u64::from(c.seg[sreg::DS].selector),
            7 => u64::from(c.seg[sreg::ES].selector),
            8 => c.gpr[4],
            9 => c.gpr[5],
            10 => c.gpr[6],
            11 => c.gpr[7],
            12 => c.rip,
            _ => c.rflags,
        }) as u16
    }

    /// Runs one case from file stem `stem` ("F6.6").
    pub fn run_case(&mut self, stem: &str, t: &MooTest) -> CaseResult {
        if let Some(r) = skip_reason(t, &self.revoked) {
            return CaseResult::Skip(r);
        }
        self.load(t);
        let start = self.vm.cpu.icount;
        let limit = start + CASE_BUDGET;
        while self.vm.cpu.run_state == RunState::Running && self.vm.cpu.icount < limit {
            let exit = self.vm.step_unit();
            if let x86bt_cpu::UnitExit::Unsupported(w) = exit {
                return CaseResult::Fail(format!("unsupported: {w}"));
            }
            if let Some(d) = self.vm.take_divergence() {
                return CaseResult::Fail(format!("lockstep: {d}"));
            }
        }
        if self.vm.cpu.run_state != RunState::Halted {
            return CaseResult::Fail(format!("did not reach HLT ({:?})", self.vm.cpu.run_state));
        }
        let fmask = self.meta.mask(stem);
        for (i, name) in REG_NAMES.iter().enumerate() {
            let Some(want) = t.fina.regs[i].or(t.init.regs[i]) else {
                continue;
            };
            let got = self.ours(i);
            let (g, w) = if i == 13 {
                (got & fmask, want & fmask)
            } else {
                (got, want)
            };
            if g != w {
                return CaseResult::Fail(format!("{name}: got {g:#06x}, want {w:#06x}"));
            }
        }
        // The FLAGS image an exception pushed sits 4 bytes above the final SS:SP (the
        // handler is a lone HLT). The EXCP chunk's address is rounded down to even,
        // which misses it when SP is odd, so derive it from the expected state.
        let flags_at = t.excp.map(|_| {
            let reg = |i: usize| u32::from(t.fina.regs[i].or(t.init.regs[i]).unwrap_or(0));
            (reg(5) << 4) + ((reg(8) + 4) & 0xFFFF)
        });
        for &(a, want) in &t.fina.ram {
            let mut got = self.vm.machine.mem.read_u8(GuestPhys(u64::from(a)));
            let mut want = want;
            if let Some(fa) = flags_at {
                let m = if a == fa {
                    fmask as u8
                } else if a == fa + 1 {
                    (fmask >> 8) as u8
                } else {
                    0xFF
                };
                got &= m;
                want &= m;
            }
            if got != want {
                return CaseResult::Fail(format!(
                    "ram[{a:#07x}]: got {got:#04x}, want {want:#04x}"
                ));
            }
        }
        CaseResult::Pass
    }
}

/// Totals over a run.
#[derive(Debug, Default)]
pub struct Totals {
    /// Cases that passed.
    pub passed: u64,
    /// Cases that failed.
    pub failed: u64,
    /// Skips by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

impl Totals {
    /// All skips.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// Expands folders into their `.MOO.gz`/`.MOO` files, sorted.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|source| Error::Read {
                path: p.clone(),
                source,
            })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    let n = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    n.ends_with(".MOO.gz") || n.ends_with(".MOO")
                })
                .collect();
            if v.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: no SingleStepTests files (*.MOO.gz or *.MOO) in this folder",
                    p.display()
                )));
            }
            v.sort();
            out.extend(v);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::Read {
                path: p.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
    }
    Ok(out)
}

/// The file stem used as the metadata key: "F6.6.MOO.gz" -> "F6.6".
pub fn stem(path: &Path) -> String {
    let n = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    n.trim_end_matches(".gz")
        .trim_end_matches(".MOO")
        .to_string()
}

/// Runs every case of every file, printing one line per file to `out`, and
/// returns the totals.
pub fn run_files(
    files: &[PathBuf],
    engine: Engine,
    show_failures: usize,
    out: &mut dyn std::io::Write,
) -> Result<Totals, Error> {
    let mut totals = Totals::default();
    let mut runner: Option<(PathBuf, SstRunner)> = None;
    for f in files {
        let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
        if runner.as_ref().is_none_or(|(d, _)| *d != dir) {
            runner = Some((dir.clone(), SstRunner::new(&dir, engine)?));
        }
        let Some((_, r)) = runner.as_mut() else {
            continue;
        };
        let tests = load_moo(f)?;
        let stem = stem(f);
        let (mut pass, mut fail, mut skip) = (0u64, 0u64, 0u64);
        let mut shown = Vec::new();
        for t in &tests {
            match r.run_case(&stem, t) {
                CaseResult::Pass => pass += 1,
                CaseResult::Skip(reason) => {
                    skip += 1;
                    *totals.skipped.entry(reason).or_default() += 1;
                }
                CaseResult::Fail(why) => {
                    fail += 1;
                    if shown.len() < show_failures {
                        shown.push(format!(
                            "    {} [{}] {}: {why}",
                            t.hash.get(..8).unwrap_or(""),
                            hex(&t.bytes),
                            t.name
                        ));
                    }
                }
            }
        }
        totals.passed += pass;
        totals.failed += fail;
        let _ = writeln!(out, "{stem}: {pass} passed, {fail} failed, {skip} skipped");
        for s in shown {
            let _ = writeln!(out, "{s}");
        }
    }
    Ok(totals)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
