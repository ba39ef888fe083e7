//! Record and replay of the input from outside the guest (`--record FILE`,
//! `--replay FILE`).
//!
//! x86bt is deterministic: the same guest with the same input runs the same
//! way. What comes from outside during a run is recorded, with the run loop
//! pass at which the guest could first see it, and a replay feeds it back at
//! the same pass:
//!
//! - the bytes typed on the serial console: the stdin reader queues them on
//!   the side, and the run loop moves them into the UART's queue at the top
//!   of a pass ([`InputLog::boundary`]), so the UART sees them at a point of
//!   the run that the replay reaches again;
//! - how far virtual time moved while the guest halted, where the wall clock
//!   decided it ([`crate::vm::Vm::pace_idle`]): a replay moves it as far, and
//!   never sleeps;
//! - the RTC's base (`--rtc`, by default the host's date), which the replay
//!   takes from the file.
//!
//! A pass is one trip round `Vm::run`'s loop; the count of passes is as
//! deterministic as the guest, and unlike the instruction count it tells apart
//! the passes of a halted CPU. Each record holds the instruction count too, and
//! a replay that reaches a pass at another count stops with a divergence.
//!
//! The file is text, one record a line:
//!
//! ```text
//! x86bt-replay 1
//! rtc-base 1765065600
//! serial-input 1
//! shape engine jit
//! shape kernel fnv1a64:9c0e1f...
//! in 20113 1480000211 6563686f0a      (pass, icount, the bytes in hex)
//! idle 20200 10062011                 (pass, virtual ns skipped)
//! end 90311 5501238762                (pass, icount where the recording ended)
//! ```
//!
//! The `shape` lines name what else decides the run (engine, memory, vCPUs,
//! the images booted, the command line); a replay with other options is
//! refused, naming the first that differs.

use crate::cli::RunArgs;
use crate::error::Error;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use x86bt_machine::devices::uart::SerialInput;

/// The first word of a recording.
pub const MAGIC: &str = "x86bt-replay";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// One record after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes for the serial console, queued at the top of pass `pass`.
    Input {
        /// The run loop pass.
        pass: u64,
        /// The instruction count there.
        icount: u64,
        /// The bytes, in order.
        bytes: Vec<u8>,
    },
    /// In pass `pass`, the halted machine's virtual time moved `skip` ns
    /// (less than to the next deadline, as the wall clock decided).
    Idle {
        /// The run loop pass.
        pass: u64,
        /// Nanoseconds of virtual time.
        skip: u64,
    },
    /// The recording ended at the top of pass `pass`.
    End {
        /// The run loop pass.
        pass: u64,
        /// The instruction count there.
        icount: u64,
    },
}

impl Event {
    fn pass(&self) -> u64 {
        match self {
            Self::Input { pass, .. } | Self::Idle { pass, .. } | Self::End { pass, .. } => *pass,
        }
    }

    /// The record's line, without the newline.
    pub fn line(&self) -> String {
        match self {
            Self::Input {
                pass,
                icount,
                bytes,
            } => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("in {pass} {icount} {hex}")
            }
            Self::Idle { pass, skip } => format!("idle {pass} {skip}"),
            Self::End { pass, icount } => format!("end {pass} {icount}"),
        }
    }
}

/// What a recording says about the run as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The RTC's base, in seconds since 1970 (`--rtc`).
    pub rtc_base: i64,
    /// Whether COM1 had an input queue (`--serial stdio`).
    pub serial_input: bool,
    /// What else decides the run, as (name, value) pairs ([`shape`]).
    pub shape: Vec<(String, String)>,
}

impl Header {
    /// The header's lines, each ended with a newline.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{MAGIC} {VERSION}\nrtc-base {}\nserial-input {}\n",
            self.rtc_base,
            u8::from(self.serial_input)
        );
        for (k, v) in &self.shape {
            s.push_str(&format!("shape {k} {v}\n"));
        }
        s
    }
}

/// A whole recording.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    /// The header.
    pub header: Header,
    /// The records, in pass order.
    pub events: Vec<Event>,
}

impl Recording {
    /// The file's text.
    pub fn text(&self) -> String {
        let mut s = self.header.text();
        for e in &self.events {
            s.push_str(&e.line());
            s.push('\n');
        }
        s
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads a recording's text; the error names the line and what is wrong.
pub fn parse(text: &str) -> Result<Recording, String> {
    let mut lines = text.lines().enumerate();
    let first = lines.next().map(|(_, l)| l).unwrap_or("");
    match first.split_once(' ') {
        Some((MAGIC, v)) if v == VERSION.to_string() => {}
        Some((MAGIC, v)) => {
            return Err(format!(
                "format version {v}; this x86bt reads version {VERSION}"
            ))
        }
        _ => return Err(format!("not an x86bt recording (no {MAGIC:?} line)")),
    }
    let mut rec = Recording::default();
    let (mut rtc, mut serial) = (None, None);
    let mut last_pass = 0;
    let mut ended = false;
    for (i, line) in lines {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        let words: Vec<&str> = line.split(' ').collect();
        let num = |k: usize| -> Result<u64, String> {
            words
                .get(k)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| bad("expected a number"))
        };
        let event = match (words[0], words.len()) {
            ("rtc-base", 2) => {
                rtc = Some(words[1].parse::<i64>().map_err(|_| bad("bad RTC base"))?);
                continue;
            }
            ("serial-input", 2) => {
                serial = Some(match words[1] {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad("expected 0 or 1")),
                });
                continue;
            }
            ("shape", 3) => {
                rec.header
                    .shape
                    .push((words[1].to_string(), words[2].to_string()));
                continue;
            }
            ("in", 4) => Event::Input {
                pass: num(1)?,
                icount: num(2)?,
                bytes: parse_hex(words[3]).ok_or_else(|| bad("bad hex bytes"))?,
            },
            ("idle", 3) => Event::Idle {
                pass: num(1)?,
                skip: num(2)?,
            },
            ("end", 3) => Event::End {
                pass: num(1)?,
                icount: num(2)?,
            },
            _ => return Err(bad("not a record")),
        };
        if ended {
            return Err(bad("a record after the end"));
        }
        if event.pass() < last_pass {
            return Err(bad("passes out of order"));
        }
        last_pass = event.pass();
        ended = matches!(event, Event::End { .. });
        rec.events.push(event);
    }
    rec.header.rtc_base = rtc.ok_or("no rtc-base line")?;
    rec.header.serial_input = serial.ok_or("no serial-input line")?;
    Ok(rec)
}

/// FNV-1a, 64 bits: a fixed hash (std's may change between Rust releases),
/// enough to tell a changed image from the recorded one.
pub fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

/// What decides a run besides the recorded input: the options that shape the
/// machine and the pass structure of the run loop (the engine, `--progress`'s
/// slices), and the contents of the images it boots. `images` are named
/// contents (kernel, initrd, BIOS; `None` when not given).
pub fn shape(a: &RunArgs, images: &[(&str, Option<&[u8]>)]) -> Vec<(String, String)> {
    let hash_opt = |v: Option<&[u8]>| v.map_or_else(|| "none".to_string(), fnv1a64);
    let mut s = vec![
        (
            "engine".to_string(),
            format!("{:?}", a.engine).to_lowercase(),
        ),
        ("memory-mib".to_string(), a.mem_mib.to_string()),
        ("smp".to_string(), a.smp.to_string()),
        ("progress".to_string(), u8::from(a.progress).to_string()),
        ("no-reboot".to_string(), u8::from(a.no_reboot).to_string()),
        (
            "append".to_string(),
            hash_opt(a.append.as_deref().map(str::as_bytes)),
        ),
        (
            "devices".to_string(),
            fnv1a64(format!("{:?}", a.devices).as_bytes()),
        ),
        (
            "drives".to_string(),
            fnv1a64(
                format!(
                    "{:?}",
                    (&a.drives, &a.hda, &a.hdb, &a.hdc, &a.hdd, &a.cdrom, &a.boot)
                )
                .as_bytes(),
            ),
        ),
        (
            "modules".to_string(),
            fnv1a64(a.modules.join("\n").as_bytes()),
        ),
        ("vga".to_string(), format!("{:?}", a.vga)),
    ];
    for (name, bytes) in images {
        s.push((name.to_string(), hash_opt(*bytes)));
    }
    // Values are single words in the file.
    for (_, v) in &mut s {
        *v = v.replace(char::is_whitespace, "_");
    }
    s
}

/// `--record` or `--replay`, as the options ask, before the run starts.
pub enum Plan {
    /// Record into a file.
    Record(PathBuf),
    /// Replay a recording read from a file.
    Replay(PathBuf, Recording),
}

impl Plan {
    /// The plan the options ask for (`None`: neither option). Refuses what
    /// cannot be recorded or replayed, and a replay file that cannot be read.
    pub fn from_args(a: &RunArgs) -> Result<Option<Self>, Error> {
        let path = match (&a.record, &a.replay) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "--record and --replay: give one of them".into(),
                ))
            }
            (Some(p), None) | (None, Some(p)) => p.clone(),
        };
        if a.gdb.is_some() || a.gdb_default {
            return Err(Error::Usage(
                "--record and --replay do not go with a GDB server yet".into(),
            ));
        }
        if a.restore.is_some() {
            return Err(Error::Usage(
                "--record and --replay start at power-on: not with --restore".into(),
            ));
        }
        if a.display != "none" {
            return Err(Error::Usage(
                "--record and --replay take the serial console's input, not the text display's keyboard (-display none)".into(),
            ));
        }
        if a.record.is_some() {
            return Ok(Some(Self::Record(path)));
        }
        let text = std::fs::read(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::Usage(format!("--replay {}: not text", path.display())))?;
        let rec =
            parse(&text).map_err(|e| Error::Usage(format!("--replay {}: {e}", path.display())))?;
        Ok(Some(Self::Replay(path, rec)))
    }

    /// The RTC base to use: the recorded one on replay, else `asked`.
    pub fn rtc_base(&self, asked: i64) -> i64 {
        match self {
            Self::Record(_) => asked,
            Self::Replay(_, rec) => rec.header.rtc_base,
        }
    }

    /// Whether COM1 gets an input queue: as recorded on replay, else `asked`.
    pub fn serial_input(&self, asked: bool) -> bool {
        match self {
            Self::Record(_) => asked,
            Self::Replay(_, rec) => rec.header.serial_input,
        }
    }

    /// Starts recording or replaying. `target` is COM1's input queue; the
    /// queue returned is where the stdin reader must put what is typed (on
    /// replay, a queue nobody reads: only Ctrl-A x counts).
    pub fn begin(
        self,
        header: Header,
        target: Option<SerialInput>,
    ) -> Result<(InputLog, SerialInput), Error> {
        let staged = SerialInput::new();
        let mode = match self {
            Self::Record(path) => {
                let file = std::fs::File::create(&path).map_err(|source| Error::Create {
                    path: path.clone(),
                    source,
                })?;
                let mut out = std::io::BufWriter::new(file);
                let failed = out
                    .write_all(header.text().as_bytes())
                    .and_then(|()| out.flush())
                    .err()
                    .map(|e| format!("writing {}: {e}", path.display()));
                Mode::Record {
                    staged: staged.clone(),
                    out,
                    path,
                    failed,
                }
            }
            Self::Replay(path, rec) => {
                if rec.header.serial_input != header.serial_input {
                    return Err(Error::Usage(format!(
                        "--replay {}: the serial input differs",
                        path.display()
                    )));
                }
                if let Some((k, v)) = rec
                    .header
                    .shape
                    .iter()
                    .find(|(k, v)| !header.shape.iter().any(|(k2, v2)| k2 == k && v2 == v))
                {
                    let now = header
                        .shape
                        .iter()
                        .find(|(k2, _)| k2 == k)
                        .map_or("nothing", |(_, v)| v.as_str());
                    return Err(Error::Usage(format!(
                        "--replay {}: recorded with {k} {v}, this run has {now}",
                        path.display()
                    )));
                }
                Mode::Replay {
                    events: rec.events.into(),
                }
            }
        };
        Ok((
            InputLog {
                passes: 0,
                target,
                mode,
            },
            staged,
        ))
    }
}

enum Mode {
    Record {
        /// Where the stdin reader queues typed bytes.
        staged: SerialInput,
        out: std::io::BufWriter<std::fs::File>,
        path: PathBuf,
        /// The first write error.
        failed: Option<String>,
    },
    Replay {
        /// The records not yet replayed.
        events: VecDeque<Event>,
    },
}

/// What the run loop does after [`InputLog::boundary`].
#[derive(Debug, PartialEq, Eq)]
pub enum Boundary {
    /// Run the pass.
    Go,
    /// The recording ended here: stop the run.
    End,
    /// The replay is not where the recording was (the report says how).
    Diverged(String),
}

/// The run loop's side of a recording or a replay ([`crate::vm::Vm::input_log`]).
pub struct InputLog {
    /// Passes begun.
    passes: u64,
    /// COM1's input queue.
    target: Option<SerialInput>,
    mode: Mode,
}

impl InputLog {
    /// Whether this is a replay.
    pub fn replaying(&self) -> bool {
        matches!(self.mode, Mode::Replay { .. })
    }

    fn write(&mut self, e: &Event) {
        if let Mode::Record {
            out, path, failed, ..
        } = &mut self.mode
        {
            if failed.is_none() {
                if let Err(err) = writeln!(out, "{}", e.line()).and_then(|()| out.flush()) {
                    *failed = Some(format!("writing {}: {err}", path.display()));
                }
            }
        }
    }

    /// The top of a run loop pass, at instruction count `icount`: recording,
    /// moves what was typed since the last pass into COM1's queue and logs
    /// it; replaying, queues what was recorded for this pass.
    pub fn boundary(&mut self, icount: u64) -> Boundary {
        self.passes += 1;
        let pass = self.passes;
        let events = match &mut self.mode {
            Mode::Record { staged, .. } => {
                let bytes = staged.take(usize::MAX);
                if !bytes.is_empty() {
                    if let Some(t) = &self.target {
                        t.push(&bytes);
                    }
                    self.write(&Event::Input {
                        pass,
                        icount,
                        bytes,
                    });
                }
                return Boundary::Go;
            }
            Mode::Replay { events } => events,
        };
        while let Some(e) = events.front() {
            // An idle record of this pass waits for the pass's idle period.
            if e.pass() > pass || (e.pass() == pass && matches!(e, Event::Idle { .. })) {
                break;
            }
            let e = events.pop_front().expect("front exists");
            match e {
                Event::Input {
                    pass: p,
                    icount: at,
                    bytes,
                } if p == pass && at == icount => {
                    if let Some(t) = &self.target {
                        t.push(&bytes);
                    }
                }
                Event::End { pass: p, icount: at } if p == pass && at == icount => {
                    return Boundary::End
                }
                other => {
                    return Boundary::Diverged(format!(
                        "replay diverged: at run loop pass {pass}, instruction {icount}, the recording has \"{}\"\n",
                        other.line()
                    ))
                }
            }
        }
        Boundary::Go
    }

    /// Replaying, how far virtual time moves while halted in this pass, at
    /// most `gap` ns: as recorded, else to the deadline. `None` when
    /// recording (the caller decides, then calls [`InputLog::note_skip`]).
    pub fn replayed_skip(&mut self, gap: u64) -> Option<u64> {
        let Mode::Replay { events } = &mut self.mode else {
            return None;
        };
        match events.front() {
            Some(&Event::Idle { pass, skip }) if pass == self.passes => {
                events.pop_front();
                Some(skip.min(gap))
            }
            _ => Some(gap),
        }
    }

    /// Recording: virtual time moved `skip` of the `gap` ns to the next
    /// deadline while halted; logged when the wall clock cut it short.
    pub fn note_skip(&mut self, gap: u64, skip: u64) {
        if skip != gap && !self.replaying() {
            let pass = self.passes;
            self.write(&Event::Idle { pass, skip });
        }
    }

    /// The run ended at instruction count `icount`. Recording: writes the end
    /// record (the next pass, whose top the run stopped at). Fails with the
    /// first write error.
    pub fn finish(&mut self, icount: u64) -> Result<(), Error> {
        if self.replaying() {
            return Ok(());
        }
        let pass = self.passes + 1;
        self.write(&Event::End { pass, icount });
        match &mut self.mode {
            Mode::Record {
                failed: Some(f), ..
            } => Err(Error::Usage(f.clone())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recording {
        Recording {
            header: Header {
                rtc_base: 1_765_065_600,
                serial_input: true,
                shape: vec![
                    ("engine".into(), "jit".into()),
                    ("kernel".into(), fnv1a64(b"kernel")),
                ],
            },
            events: vec![
                Event::Input {
                    pass: 5,
                    icount: 1000,
                    bytes: b"echo hi\n".to_vec(),
                },
                Event::Idle {
                    pass: 5,
                    skip: 10_062_011,
                },
                Event::Input {
                    pass: 9,
                    icount: 2000,
                    bytes: vec![0, 1, 0xff],
                },
                Event::End {
                    pass: 12,
                    icount: 3000,
                },
            ],
        }
    }

    #[test]
    fn test_recording_round_trips_through_its_text() {
        let rec = sample();
        let text = rec.text();
        assert!(text.starts_with("x86bt-replay 1\n"));
        assert_eq!(parse(&text), Ok(rec));
    }

    #[test]
    fn test_corrupt_recordings_are_refused_with_the_reason() {
        let text = sample().text();
        let cases = [
            (String::new(), "not an x86bt recording"),
            ("hello\n".to_string(), "not an x86bt recording"),
            (
                text.replace("x86bt-replay 1", "x86bt-replay 2"),
                "version 2",
            ),
            (
                text.replace("in 9 2000 0001ff", "in 9 2000 0001f"),
                "line 8: bad hex",
            ),
            (text.replace("in 9 2000", "in 3 2000"), "out of order"),
            (text.replace("idle 5 ", "idle x "), "expected a number"),
            (text.replace("rtc-base 1765065600\n", ""), "no rtc-base"),
            (format!("{text}in 13 4000 00\n"), "after the end"),
            (format!("{text}garbage\n"), "not a record"),
            // Cut in the middle of a record.
            (text[..text.len() - 8].to_string(), "not a record"),
        ];
        for (bad, why) in cases {
            let err = parse(&bad).expect_err(&bad);
            assert!(err.contains(why), "{err:?} should say {why:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    fn replay_log(rec: Recording, target: &SerialInput) -> InputLog {
        let header = rec.header.clone();
        let (log, _) = Plan::Replay(PathBuf::from("r"), rec)
            .begin(header, Some(target.clone()))
            .expect("shape matches");
        log
    }

    #[test]
    fn test_replay_queues_input_at_the_recorded_pass_and_ends_there() {
        let target = SerialInput::new();
        let mut log = replay_log(sample(), &target);
        for _ in 0..4 {
            assert_eq!(log.boundary(1000), Boundary::Go);
        }
        assert!(target.take(100).is_empty());
        assert_eq!(log.boundary(1000), Boundary::Go);
        assert_eq!(target.take(100), b"echo hi\n");
        assert_eq!(log.replayed_skip(u64::MAX), Some(10_062_011));
        assert_eq!(log.boundary(1500), Boundary::Go);
        assert_eq!(
            log.replayed_skip(77),
            Some(77),
            "no record: to the deadline"
        );
        for _ in 7..=8 {
            assert_eq!(log.boundary(1800), Boundary::Go);
        }
        assert_eq!(log.boundary(2000), Boundary::Go);
        assert_eq!(target.take(100), vec![0, 1, 0xff]);
        for _ in 10..=11 {
            assert_eq!(log.boundary(2500), Boundary::Go);
        }
        assert_eq!(log.boundary(3000), Boundary::End);
    }

    #[test]
    fn test_replay_reports_a_divergence() {
        let target = SerialInput::new();
        let mut log = replay_log(sample(), &target);
        for _ in 0..4 {
            log.boundary(999);
        }
        match log.boundary(999) {
            Boundary::Diverged(m) => assert!(m.contains("instruction 999"), "{m}"),
            other => panic!("{other:?}"),
        }
        // An idle record the replay never used is a divergence too.
        let mut log = replay_log(sample(), &target);
        for _ in 0..5 {
            log.boundary(1000);
        }
        assert!(matches!(log.boundary(1500), Boundary::Diverged(_)));
    }

    #[test]
    fn test_replay_refuses_another_shape() {
        let rec = sample();
        let mut header = rec.header.clone();
        header.shape[0].1 = "interp".into();
        let err = Plan::Replay(PathBuf::from("r"), rec)
            .begin(header, None)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("recorded with engine jit, this run has interp"),
            "{err}"
        );
    }

    #[test]
    fn test_recording_writes_what_was_typed_and_the_end() {
        let dir = std::env::temp_dir().join(format!("x86bt-rr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec");
        let target = SerialInput::new();
        let header = sample().header;
        let (mut log, typed) = Plan::Record(path.clone())
            .begin(header.clone(), Some(target.clone()))
            .unwrap();
        log.boundary(10);
        typed.push(b"ls\n");
        assert!(target.take(10).is_empty(), "held until a pass begins");
        log.boundary(20);
        assert_eq!(target.take(10), b"ls\n");
        log.note_skip(100, 100);
        log.note_skip(100, 40);
        log.finish(30).unwrap();
        let rec = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(rec.header, header);
        assert_eq!(
            rec.events,
            vec![
                Event::Input {
                    pass: 2,
                    icount: 20,
                    bytes: b"ls\n".to_vec()
                },
                Event::Idle { pass: 2, skip: 40 },
                Event::End {
                    pass: 3,
                    icount: 30
                },
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
