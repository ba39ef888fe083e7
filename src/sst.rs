//! The SingleStepTests runner (`x86bt sst`): hardware-captured single-instruction
//! cases in the MOO format (see the data set's README), run through the real
//! engine on a bare machine and compared register by register and byte by byte.
//!
//! Two captures are read, told apart by the CPU id of the `MOO ` header:
//! - `C286`, a Harris 80C286: 16-bit `REGS` chunks (AX..DI, the four segment
//!   registers, IP, FLAGS);
//! - `386E`, an Intel 80386EX in real mode: 32-bit `RG32` chunks (CR0, CR3,
//!   EAX..ESP, CS/DS/ES/FS/GS/SS, EIP, EFLAGS, DR6, DR7).
//!
//! A file whose CPU id, format version, CPU mode or state chunks this runner
//! does not know is refused as a whole, before any case runs: a case whose
//! registers are not understood would otherwise "pass" without being checked.
//!
//! The 80286 data comes from an older CPU than x86bt's, so a few cases
//! legitimately differ; each such case is recognised from its *inputs* (never
//! from our result), counted as skipped, and reported with its reason:
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
//!
//! The 80386 data is compared on EFLAGS bits 0-17 (the 386 defines none above
//! VM), less the flags the opcode leaves undefined (`f_umask` of the set's
//! `80386.csv`, or a `flags-mask` in `metadata.json`), and under any `RM32`
//! register masks the file carries. Of the system registers, the bits the 386
//! defines are compared: CR0 PE/MP/EM/TS/PG, CR3's page-directory base, DR6's
//! status bits and DR7. Its cases are real-mode ones; a case whose initial
//! state is not (CR0.PE or EFLAGS.VM set), or whose DR7 arms a breakpoint on
//! an address the format does not give (DR0-DR3), is skipped with that reason.

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

/// Register order of the 80286 `REGS` (and `RMSK`) bitmask.
pub const REG_NAMES: [&str; 14] = [
    "ax", "bx", "cx", "dx", "cs", "ss", "ds", "es", "sp", "bp", "si", "di", "ip", "flags",
];

/// Register order of the 80386 `RG32` (and `RM32`) bitmask (MOO format 1.1).
pub const REG32_NAMES: [&str; 20] = [
    "cr0", "cr3", "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "cs", "ds", "es", "fs",
    "gs", "ss", "eip", "eflags", "dr6", "dr7",
];

/// Register slots a state can hold: the longer of the two orders.
pub const MAX_REGS: usize = REG32_NAMES.len();

/// Indexes into [`REG32_NAMES`].
mod r32 {
    pub const CR0: usize = 0;
    pub const CR3: usize = 1;
    pub const ESP: usize = 9;
    pub const SS: usize = 15;
    pub const EIP: usize = 16;
    pub const EFLAGS: usize = 17;
    pub const DR6: usize = 18;
    pub const DR7: usize = 19;
}

/// The CPU a MOO file's cases were captured on: the `MOO ` header's CPU id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MooCpu {
    /// `C286`: a Harris 80C286; 16-bit `REGS` register chunks.
    I286,
    /// `386E`: an Intel 80386EX; 32-bit `RG32` register chunks.
    I386,
}

impl MooCpu {
    /// The CPU a header id names, if this runner reads its files.
    pub fn from_id(id: &[u8]) -> Option<Self> {
        match id {
            b"C286" => Some(Self::I286),
            b"386E" => Some(Self::I386),
            _ => None,
        }
    }

    /// The register chunk of this CPU's states.
    fn regs_tag(self) -> &'static [u8; 4] {
        match self {
            Self::I286 => b"REGS",
            Self::I386 => b"RG32",
        }
    }

    /// The register-mask chunk that goes with [`MooCpu::regs_tag`].
    fn mask_tag(self) -> &'static [u8; 4] {
        match self {
            Self::I286 => b"RMSK",
            Self::I386 => b"RM32",
        }
    }

    /// The register names, in bitmask order.
    pub fn reg_names(self) -> &'static [&'static str] {
        match self {
            Self::I286 => &REG_NAMES,
            Self::I386 => &REG32_NAMES,
        }
    }
}

/// Register values (or masks) by slot, in the file's CPU's order
/// ([`MooCpu::reg_names`]); `None` where the chunk omits one.
pub type RegSlots = [Option<u32>; MAX_REGS];

/// A register and memory state from a test.
#[derive(Clone, Debug, Default)]
pub struct MooState {
    /// Registers, widened to `u32` for an 80286 file.
    pub regs: RegSlots,
    /// Masks over `regs` from an `RMSK`/`RM32` chunk of this state: a clear bit
    /// is left undefined by the instruction and not compared.
    pub masks: RegSlots,
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

/// A whole MOO file.
#[derive(Clone, Debug)]
pub struct MooFile {
    /// The CPU the cases come from.
    pub cpu: MooCpu,
    /// Register masks for every case, from a top-level `RMSK`/`RM32` chunk.
    pub masks: RegSlots,
    /// The cases.
    pub tests: Vec<MooTest>,
}

/// Why a file cannot be read: damaged, or of a kind this runner does not know.
#[derive(Debug)]
enum Bad {
    Malformed(String),
    Unsupported(String),
}

impl From<&str> for Bad {
    fn from(s: &str) -> Self {
        Self::Malformed(s.into())
    }
}

impl From<String> for Bad {
    fn from(s: String) -> Self {
        Self::Malformed(s)
    }
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
            return Some(Err(format!("chunk {} overruns the file", tag_text(&tag))));
        }
        self.data = &rest[len..];
        Some(Ok((tag, &rest[..len])))
    }
}

fn chunks(data: &[u8]) -> Chunks<'_> {
    Chunks { data }
}

/// A chunk tag or CPU id for a message: printable ASCII as is, anything else
/// as hex.
fn tag_text(tag: &[u8]) -> String {
    if tag.iter().all(|b| (0x20..0x7F).contains(b)) {
        format!("'{}'", String::from_utf8_lossy(tag))
    } else {
        format!(
            "0x{}",
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
}

fn u32_at(p: &[u8], at: usize) -> Result<u32, String> {
    p.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "short field".to_string())
}

/// Reads a `REGS`/`RMSK` (16-bit) or `RG32`/`RM32` (32-bit) body: a bitmask,
/// then one value for every bit set, in register order.
fn parse_reg_chunk(cpu: MooCpu, tag: &[u8; 4], body: &[u8]) -> Result<RegSlots, Bad> {
    let names = cpu.reg_names();
    let (mask, width) = match cpu {
        MooCpu::I286 => {
            let b = body
                .get(..2)
                .ok_or_else(|| format!("short {}", tag_text(tag)))?;
            (u32::from(u16::from_le_bytes([b[0], b[1]])), 2)
        }
        MooCpu::I386 => (u32_at(body, 0)?, 4),
    };
    if mask >> names.len() != 0 {
        return Err(Bad::Unsupported(format!(
            "{} chunk names registers beyond the {} this runner knows (bitmask {mask:#x})",
            tag_text(tag),
            names.len()
        )));
    }
    let mut regs = RegSlots::default();
    let mut at = width;
    for (i, r) in regs.iter_mut().enumerate().take(names.len()) {
        if mask & (1 << i) != 0 {
            let b = body
                .get(at..at + width)
                .ok_or_else(|| format!("short {}", tag_text(tag)))?;
            *r = Some(match width {
                2 => u32::from(u16::from_le_bytes([b[0], b[1]])),
                _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            });
            at += width;
        }
    }
    Ok(regs)
}

/// Reads an `INIT` or `FINA` state. Every sub-chunk must be one this runner
/// understands: a state it could only partly read would be only partly compared.
fn parse_state(cpu: MooCpu, what: &str, p: &[u8]) -> Result<MooState, Bad> {
    let mut s = MooState::default();
    let mut has_regs = false;
    for c in chunks(p) {
        let (tag, body) = c?;
        match &tag {
            t if t == cpu.regs_tag() => {
                s.regs = parse_reg_chunk(cpu, &tag, body)?;
                has_regs = true;
            }
            t if t == cpu.mask_tag() => s.masks = parse_reg_chunk(cpu, &tag, body)?,
            b"REGS" | b"RG32" | b"RMSK" | b"RM32" => {
                return Err(Bad::Unsupported(format!(
                    "{what} holds a {} register chunk, which does not belong in a {} file ({} expected)",
                    tag_text(&tag),
                    cpu_id(cpu),
                    tag_text(cpu.regs_tag())
                )))
            }
            b"RAM " => {
                let n = u32_at(body, 0)? as usize;
                for k in 0..n {
                    let addr = u32_at(body, 4 + 5 * k)?;
                    let v = *body.get(8 + 5 * k).ok_or("short RAM")?;
                    s.ram.push((addr, v));
                }
            }
            // The prefetch queue (never exercised) and the effective-address
            // summary (derived from the registers): nothing to load or compare.
            b"QUEU" | b"EA32" => {}
            _ => {
                return Err(Bad::Unsupported(format!(
                    "unknown chunk {} in {what} (a state this runner cannot fully read is not run)",
                    tag_text(&tag)
                )))
            }
        }
    }
    if what == "INIT" && !has_regs {
        return Err(Bad::Malformed(format!(
            "INIT has no {} registers",
            tag_text(cpu.regs_tag())
        )));
    }
    Ok(s)
}

fn cpu_id(cpu: MooCpu) -> &'static str {
    match cpu {
        MooCpu::I286 => "C286",
        MooCpu::I386 => "386E",
    }
}

fn parse_test(cpu: MooCpu, p: &[u8]) -> Result<MooTest, Bad> {
    let mut t = MooTest::default();
    for c in chunks(p.get(4..).ok_or("short TEST")?) {
        let (tag, body) = c?;
        match &tag {
            b"NAME" => {
                t.name = String::from_utf8_lossy(body.get(4..).unwrap_or_default()).into_owned()
            }
            b"BYTS" => t.bytes = body.get(4..).unwrap_or_default().to_vec(),
            b"INIT" => t.init = parse_state(cpu, "INIT", body)?,
            b"FINA" => t.fina = parse_state(cpu, "FINA", body)?,
            b"EXCP" => t.excp = Some((*body.first().ok_or("short EXCP")?, u32_at(body, 1)?)),
            b"HASH" => t.hash = body.iter().map(|b| format!("{b:02x}")).collect(),
            // CYCL (bus cycles), IDX, GMET and later additions: not needed to run
            // a case, and skipped as the format directs.
            _ => {}
        }
    }
    Ok(t)
}

/// Offset of `cpu_mode` in a `META` chunk: major, minor, cpu_type (1 byte
/// each), opcode (4), mnemonic (8), test count (4), seed (8).
const META_CPU_MODE: usize = 27;

/// Checks the `MOO ` header: format version 1 and a CPU id this runner reads.
fn parse_header(body: &[u8]) -> Result<MooCpu, Bad> {
    let major = *body.first().ok_or("empty MOO header")?;
    let id = body.get(8..12).ok_or("short MOO header")?;
    if major != 1 {
        return Err(Bad::Unsupported(format!(
            "MOO format version {major} (this runner reads version 1)"
        )));
    }
    MooCpu::from_id(id).ok_or_else(|| {
        Bad::Unsupported(format!(
            "CPU id {} (this runner reads 'C286', the 80286, and '386E', the 80386)",
            tag_text(id)
        ))
    })
}

fn parse_file(data: &[u8]) -> Result<MooFile, Bad> {
    let mut it = chunks(data);
    let cpu = match it.next() {
        Some(Ok((tag, body))) if &tag == b"MOO " => parse_header(body)?,
        Some(Err(e)) => return Err(Bad::Malformed(e)),
        _ => return Err("no MOO header".into()),
    };
    let mut file = MooFile {
        cpu,
        masks: RegSlots::default(),
        tests: Vec::new(),
    };
    for c in it {
        let (tag, body) = c?;
        match &tag {
            b"TEST" => file.tests.push(parse_test(cpu, body)?),
            b"META" => {
                if let Some(&mode) = body.get(META_CPU_MODE) {
                    if mode != 0 {
                        return Err(Bad::Unsupported(format!(
                            "CPU mode {mode} in META (this runner runs real-mode cases, mode 0)"
                        )));
                    }
                }
            }
            t if t == cpu.mask_tag() => file.masks = parse_reg_chunk(cpu, &tag, body)?,
            _ => {}
        }
    }
    Ok(file)
}

/// Reads a `.MOO.gz` (or uncompressed `.MOO`) file. A damaged file is
/// [`Error::Moo`]; one of a kind this runner does not know (CPU id, version,
/// mode, register chunk) is [`Error::MooUnsupported`].
pub fn load_moo(path: &Path) -> Result<MooFile, Error> {
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
    parse_file(&data).map_err(|b| match b {
        Bad::Malformed(what) => Error::Moo {
            path: path.to_path_buf(),
            what,
        },
        Bad::Unsupported(what) => Error::MooUnsupported {
            path: path.to_path_buf(),
            what,
        },
    })
}

/// The per-opcode flag masks, keyed by opcode as the file stems name them
/// ("F6.6", "0FA0"): from `metadata.json` (`flags-mask`, the 80286 set: a set
/// bit is a defined flag) and from `80386.csv` (`f_umask`, the 80386 set: a set
/// bit is an undefined flag), both stored as defined-flag masks.
#[derive(Debug, Default)]
pub struct Metadata {
    masks: BTreeMap<String, u32>,
    masks_386: BTreeMap<String, u32>,
}

impl Metadata {
    /// Loads `metadata.json` and `80386.csv` from `dir`; a missing file means
    /// "compare every flag".
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let mut meta = Self::default();
        if let Some(text) = read_optional(&dir.join("metadata.json"))? {
            meta.masks = json_masks(&dir.join("metadata.json"), &text)?;
        }
        let csv = dir.join("80386.csv");
        if let Some(text) = read_optional(&csv)? {
            meta.masks_386 =
                csv_masks(&text).map_err(|what| Error::Metadata { path: csv, what })?;
        }
        Ok(meta)
    }

    /// The defined-flags mask for file stem `stem` of a `cpu` file.
    ///
    /// 80286: without FLAGS bits 12-15 and the reserved bits 3 and 5 (see the
    /// module docs). 80386: EFLAGS bits 0-17; the stem's operand- and
    /// address-size prefixes ("6601" is opcode 01) do not change which flags
    /// an opcode leaves undefined.
    pub fn mask(&self, cpu: MooCpu, stem: &str) -> u32 {
        match cpu {
            MooCpu::I286 => self.masks.get(stem).copied().unwrap_or(0xFFFF) & 0x0FD7,
            MooCpu::I386 => {
                let op = opcode_key(stem);
                self.masks_386
                    .get(&op)
                    .or_else(|| self.masks.get(stem))
                    .or_else(|| self.masks.get(&op))
                    .copied()
                    .unwrap_or(u32::MAX)
                    & EFLAGS_386
            }
        }
    }
}

/// EFLAGS bits an 80386 has: CF through VM (bits 0-17).
pub const EFLAGS_386: u32 = 0x3_FFFF;

fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `opcodes[OP].flags-mask` and `opcodes[OP].reg[R].flags-mask` of a
/// `metadata.json`, keyed "OP" and "OP.R".
fn json_masks(path: &Path, text: &str) -> Result<BTreeMap<String, u32>, Error> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::Metadata {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let mut masks = BTreeMap::new();
    if let Some(ops) = json.get("opcodes").and_then(|o| o.as_object()) {
        for (op, v) in ops {
            if let Some(m) = v.get("flags-mask").and_then(|m| m.as_u64()) {
                masks.insert(op.clone(), m as u32);
            }
            if let Some(regs) = v.get("reg").and_then(|r| r.as_object()) {
                for (r, rv) in regs {
                    if let Some(m) = rv.get("flags-mask").and_then(|m| m.as_u64()) {
                        masks.insert(format!("{op}.{r}"), m as u32);
                    }
                }
            }
        }
    }
    Ok(masks)
}

/// The metadata key of an 80386 file stem: the opcode ("01", "0FA0") with the
/// group extension ("80.4"), without the leading 66/67 size prefixes that
/// name the prefixed variants ("676601" is opcode 01).
pub fn opcode_key(stem: &str) -> String {
    let (op, ext) = stem
        .split_once('.')
        .map_or((stem, None), |(o, e)| (o, Some(e)));
    let mut op = op.to_ascii_uppercase();
    while op.len() > 2 && (op.starts_with("66") || op.starts_with("67")) {
        op.drain(..2);
    }
    match ext {
        Some(e) => format!("{op}.{e}"),
        None => op,
    }
}

/// Splits one CSV line into fields, with RFC 4180 quoting (a quoted field may
/// hold commas; `""` inside quotes is one quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out
}

/// `80386.csv`: rows of `op` (hex opcode), `ex` (group extension, empty when
/// none) and `f_umask` (hex mask of the flags the instruction leaves
/// undefined), found by the header row. An opcode listed more than once
/// (register and memory forms) leaves undefined what any of its rows does.
fn csv_masks(text: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next().ok_or("empty file")?);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("no '{name}' column"))
    };
    let (op_col, ex_col, mask_col) = (col("op")?, col("ex")?, col("f_umask")?);
    let mut masks = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let f = csv_fields(line);
        let get = |i: usize| f.get(i).map_or("", |s| s.trim());
        let umask_text = get(mask_col);
        if umask_text.is_empty() {
            continue;
        }
        let hex = |s: &str| {
            let s = s.trim_start_matches("0x").trim_start_matches("0X");
            u32::from_str_radix(s, 16)
        };
        let umask = hex(umask_text)
            .map_err(|_| format!("row {}: f_umask {umask_text:?} is not hex", n + 2))?;
        let op: String = get(op_col)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        let key = match get(ex_col) {
            "" => op,
            ex => format!("{op}.{ex}"),
        };
        let defined = masks.entry(key).or_insert(u32::MAX);
        *defined &= !umask;
    }
    Ok(masks)
}

/// Why a case is skipped (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// LOCK on a non-lockable instruction (80286 data).
    LockNonLockable,
    /// MOV with segment register 4 or 5 (80286 data).
    SregFsGs,
    /// Listed in the revocation list.
    Revoked,
    /// An 80386 case whose initial state is not real mode (CR0.PE or EFLAGS.VM).
    NotRealMode,
    /// An 80386 case whose DR7 arms breakpoints at addresses the format omits.
    DebugBreakpoints,
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
            Self::NotRealMode => "initial state not in real mode (CR0.PE or EFLAGS.VM set)",
            Self::DebugBreakpoints => {
                "DR7 enables breakpoints, but the format gives no DR0-DR3 addresses"
            }
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

/// Decides from a case's inputs whether it exercises behaviour x86bt cannot
/// reproduce: 80286-only behaviour, or (80386) state the format does not give.
pub fn skip_reason(cpu: MooCpu, t: &MooTest, revoked: &HashSet<String>) -> Option<SkipReason> {
    if revoked.contains(&t.hash) {
        return Some(SkipReason::Revoked);
    }
    match cpu {
        MooCpu::I286 => skip_reason_286(t),
        MooCpu::I386 => {
            let init = |i: usize| t.init.regs[i].unwrap_or(0);
            if u64::from(init(r32::CR0)) & x86bt_cpu::state::cr0::PE != 0
                || u64::from(init(r32::EFLAGS)) & flags::VM != 0
            {
                return Some(SkipReason::NotRealMode);
            }
            // L0-G3: a breakpoint is armed (SDM vol. 3B §17.2.4).
            (init(r32::DR7) & 0xFF != 0).then_some(SkipReason::DebugBreakpoints)
        }
    }
}

fn skip_reason_286(t: &MooTest) -> Option<SkipReason> {
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

/// x86bt's GPR slot (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI) of each 80286
/// `REGS` slot that is a general register.
const GPR_286: [(usize, usize); 8] = [
    (0, 0),
    (1, 3),
    (2, 1),
    (3, 2),
    (8, 4),
    (9, 5),
    (10, 6),
    (11, 7),
];

/// The same for the 80386 `RG32` order (EAX EBX ECX EDX ESI EDI EBP ESP).
const GPR_386: [(usize, usize); 8] = [
    (2, 0),
    (3, 3),
    (4, 1),
    (5, 2),
    (6, 6),
    (7, 7),
    (8, 5),
    (9, 4),
];

/// x86bt's segment slot of each segment register of the two orders.
const SEG_286: [(usize, usize); 4] = [(4, sreg::CS), (5, sreg::SS), (6, sreg::DS), (7, sreg::ES)];
const SEG_386: [(usize, usize); 6] = [
    (10, sreg::CS),
    (11, sreg::DS),
    (12, sreg::ES),
    (13, sreg::FS),
    (14, sreg::GS),
    (15, sreg::SS),
];

/// CR0 bits the 80386 defines and this runner loads (MP, EM, TS) and compares
/// (those and PE, PG); ET is fixed at 1 in x86bt, as on the 486 and later, and
/// the 386EX's other bits are reserved (SDM vol. 3A §2.5).
const CR0_LOADED: u32 = 0xE;
const CR0_COMPARED: u32 = 0x8000_000F;
/// CR3's page-directory base; the low bits are reserved on the 386.
const CR3_COMPARED: u32 = 0xFFFF_F000;
/// DR6's status bits B0-B3, BD, BS, BT; the rest read as fixed values.
const DR6_COMPARED: u32 = 0xE00F;

/// (file slot, x86bt slot) pairs.
type SlotMap = &'static [(usize, usize)];

/// Where `cpu`'s general and segment registers live in x86bt's state.
fn slot_maps(cpu: MooCpu) -> (SlotMap, SlotMap) {
    match cpu {
        MooCpu::I286 => (&GPR_286, &SEG_286),
        MooCpu::I386 => (&GPR_386, &SEG_386),
    }
}

impl SstRunner {
    /// A runner with a flat 16 MiB machine, for the data set in `dir` (metadata and
    /// revocation list are read from there when present).
    pub fn new(dir: &Path, engine: Engine) -> Result<Self, Error> {
        let machine = Machine::flat(16 << 20)?;
        let meta = Metadata::load(dir)?;
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
    fn load(&mut self, cpu: MooCpu, t: &MooTest) {
        let vm = &mut self.vm;
        for &(a, v) in &t.init.ram {
            vm.machine.mem.write_u8(GuestPhys(u64::from(a)), v);
        }
        vm.invalidate_written();
        let icount = vm.cpu.icount;
        *vm.cpu = CpuState::reset();
        vm.cpu.icount = icount;
        let r = |i: usize| u64::from(t.init.regs[i].unwrap_or(0));
        let (gprs, segs) = slot_maps(cpu);
        for &(moo, slot) in gprs {
            vm.cpu.gpr[slot] = r(moo);
        }
        for &(moo, s) in segs {
            vm.cpu.seg[s] = Segment::real(r(moo) as u16);
        }
        match cpu {
            MooCpu::I286 => {
                vm.cpu.rip = r(12);
                vm.cpu.rflags = (r(13) & 0x0FFF & !0x28) | flags::FIXED1;
            }
            MooCpu::I386 => {
                vm.cpu.rip = r(r32::EIP);
                // Bits 1, 3, 5 and 15 are fixed (1, 0, 0, 0) on every 386 and later.
                vm.cpu.rflags = (r(r32::EFLAGS) & u64::from(EFLAGS_386) & !0x8028) | flags::FIXED1;
                let loaded = u64::from(CR0_LOADED);
                vm.cpu.cr0 = (vm.cpu.cr0 & !loaded) | (r(r32::CR0) & loaded);
                vm.cpu.cr3 = r(r32::CR3);
                vm.cpu.dr[6] = r(r32::DR6);
                vm.cpu.dr[7] = r(r32::DR7);
            }
        }
    }

    /// Our value of register slot `i` in `cpu`'s order.
    fn ours(&self, cpu: MooCpu, i: usize) -> u32 {
        let c = &self.vm.cpu;
        let (gprs, segs) = slot_maps(cpu);
        if let Some(&(_, slot)) = gprs.iter().find(|&&(moo, _)| moo == i) {
            return c.gpr[slot] as u32;
        }
        if let Some(&(_, s)) = segs.iter().find(|&&(moo, _)| moo == i) {
            return u32::from(c.seg[s].selector);
        }
        (match (cpu, i) {
            (MooCpu::I286, 12) | (MooCpu::I386, r32::EIP) => c.rip,
            (MooCpu::I286, _) | (MooCpu::I386, r32::EFLAGS) => c.rflags,
            (MooCpu::I386, r32::CR0) => c.cr0,
            (MooCpu::I386, r32::CR3) => c.cr3,
            (MooCpu::I386, r32::DR6) => c.dr[6],
            (MooCpu::I386, _) => c.dr[7],
        }) as u32
    }

    /// The bits of register slot `i` that are compared, before the file's and
    /// the case's own register masks.
    fn compared_bits(&self, cpu: MooCpu, stem: &str, i: usize) -> u32 {
        match (cpu, i) {
            (MooCpu::I286, 13) | (MooCpu::I386, r32::EFLAGS) => self.meta.mask(cpu, stem),
            (MooCpu::I286, _) => 0xFFFF,
            (MooCpu::I386, r32::CR0) => CR0_COMPARED,
            (MooCpu::I386, r32::CR3) => CR3_COMPARED,
            (MooCpu::I386, r32::DR6) => DR6_COMPARED,
            // Segment registers are 16 bits; the format leaves the upper half
            // undefined.
            (MooCpu::I386, 10..=15) => 0xFFFF,
            (MooCpu::I386, _) => u32::MAX,
        }
    }

    /// Runs one case of `file`, whose file stem is `stem` ("F6.6").
    pub fn run_case(&mut self, file: &MooFile, stem: &str, t: &MooTest) -> CaseResult {
        let cpu = file.cpu;
        if let Some(r) = skip_reason(cpu, t, &self.revoked) {
            return CaseResult::Skip(r);
        }
        self.load(cpu, t);
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
        let digits = match cpu {
            MooCpu::I286 => 6,
            MooCpu::I386 => 10,
        };
        for (i, name) in cpu.reg_names().iter().enumerate() {
            let Some(want) = t.fina.regs[i].or(t.init.regs[i]) else {
                continue;
            };
            let mask = self.compared_bits(cpu, stem, i)
                & file.masks[i].unwrap_or(u32::MAX)
                & t.fina.masks[i].unwrap_or(u32::MAX);
            let (g, w) = (self.ours(cpu, i) & mask, want & mask);
            if g != w {
                return CaseResult::Fail(format!(
                    "{name}: got {g:#0digits$x}, want {w:#0digits$x}"
                ));
            }
        }
        self.compare_ram(cpu, stem, t)
    }

    /// Compares the final RAM bytes, the pushed FLAGS image of an exception
    /// under the flags mask.
    fn compare_ram(&self, cpu: MooCpu, stem: &str, t: &MooTest) -> CaseResult {
        let fmask = self.meta.mask(cpu, stem);
        // The FLAGS image an exception pushed sits 4 bytes above the final SS:SP
        // (real mode pushes FLAGS, CS, IP as words; the handler is a lone HLT).
        // The 80286 data's EXCP address is rounded down to even, which misses it
        // when SP is odd, so it is derived from the expected state.
        let (ss, sp) = match cpu {
            MooCpu::I286 => (5, 8),
            MooCpu::I386 => (r32::SS, r32::ESP),
        };
        let flags_at = t.excp.map(|_| {
            let reg = |i: usize| t.fina.regs[i].or(t.init.regs[i]).unwrap_or(0);
            ((reg(ss) & 0xFFFF) << 4) + ((reg(sp) + 4) & 0xFFFF)
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
        let file = load_moo(f)?;
        let stem = stem(f);
        let (mut pass, mut fail, mut skip) = (0u64, 0u64, 0u64);
        let mut shown = Vec::new();
        for t in &file.tests {
            match r.run_case(&file, &stem, t) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_opcode_key_drops_size_prefixes_keeps_group() {
        assert_eq!(opcode_key("01"), "01");
        assert_eq!(opcode_key("6601"), "01");
        assert_eq!(opcode_key("676601"), "01");
        assert_eq!(opcode_key("660fa0"), "0FA0");
        assert_eq!(opcode_key("66C1.4"), "C1.4");
        assert_eq!(opcode_key("80.4"), "80.4");
        // An opcode is never stripped away.
        assert_eq!(opcode_key("66"), "66");
    }

    #[test]
    fn test_csv_masks_quoted_fields_and_repeated_rows() {
        let csv = "op,ex,f_umask,desc\n\
                   D4,,0x0811,\"AAM, ASCII adjust\"\n\
                   F6,6,08D5,\"DIV \"\"unsigned\"\"\"\n\
                   0F BC,,0801,BSF\n\
                   0FBC,,0014,BSF mem\n\
                   90,,,NOP\n";
        let m = csv_masks(csv).expect("parses");
        assert_eq!(m["D4"], !0x0811);
        assert_eq!(m["F6.6"], !0x08D5);
        assert_eq!(m["0FBC"], !0x0815);
        assert!(!m.contains_key("90"));
        assert!(csv_masks("op,ex\n01,\n").is_err());
        assert!(csv_masks("op,ex,f_umask\n01,,zz\n").is_err());
    }

    #[test]
    fn test_header_refuses_unknown_cpu_and_version() {
        let header = |major: u8, id: &[u8; 4]| {
            let mut b = vec![major, 1, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(id);
            b
        };
        assert_eq!(parse_header(&header(1, b"386E")).ok(), Some(MooCpu::I386));
        assert_eq!(parse_header(&header(1, b"C286")).ok(), Some(MooCpu::I286));
        assert!(matches!(
            parse_header(&header(1, b"8088")),
            Err(Bad::Unsupported(_))
        ));
        assert!(matches!(
            parse_header(&header(2, b"386E")),
            Err(Bad::Unsupported(_))
        ));
        assert!(matches!(parse_header(&[1, 0]), Err(Bad::Malformed(_))));
    }
}
