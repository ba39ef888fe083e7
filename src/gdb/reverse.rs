//! Reverse execution for the GDB server (`reverse-stepi`, `reverse-step`,
//! `reverse-continue`; GDB's `bs` and `bc` packets), built on snapshots
//! taken in memory while the guest runs forward, and on x86bt's
//! determinism: a machine restored from a snapshot and run to the same
//! instruction count is in the state the run it came from was in there.
//!
//! - **Positions.** A point in the run is its instruction count
//!   ([`Vm::icount`]). The history is a list of checkpoints (snapshots in
//!   memory, RAM LZ4-compressed), the first one taken when the session
//!   first resumes the guest, then one every [`INTERVAL`] instructions of
//!   forward running. At most [`MAX_CHECKPOINTS`] are kept, holding at
//!   most [`MAX_BYTES`] of compressed RAM: past either, every second one
//!   goes (the first and the newest stay), so the interval doubles and
//!   memory stays bounded.
//! - **Going to a position** ([`History::go_to`]): restore the newest
//!   checkpoint at or before it, run the engine at full speed to
//!   [`APPROACH`] instructions short of it, then step one instruction at a
//!   time to it. The breakpoints and watchpoints are out of the way meanwhile.
//! - **reverse-stepi** goes to the last instruction boundary before the
//!   current position (usually one instruction back; a repeated string
//!   instruction's batch counts several).
//! - **reverse-continue** searches the stretch between each checkpoint and
//!   the next, newest first, for the stops the breakpoints and watchpoints
//!   set now would give on the way forward, and goes to the last one before
//!   the current position; with none, to the start of the history, which is
//!   reported to GDB as the start of the replay log. A breakpoint's stop is
//!   before its instruction, as forward; a watchpoint's is before the
//!   instruction whose access it caught (going backwards that access is
//!   undone, so GDB sees the watched value change, as it expects).
//! - **What ends a history.** Anything from outside that the replay could
//!   not repeat: bytes typed into the guest, idle time the wall clock cut
//!   short (`--icount sleep=on`, or an interactive console), and registers or
//!   memory written by GDB. The history then starts again at the next
//!   resume. With more than one vCPU there is no history (reverse commands
//!   stop at once at its start): positions would need every vCPU's count.
//!
//! Going forward again after going back re-runs the same future (the guest
//! is deterministic), so the checkpoints after the current position stay.

use crate::debug::StopReason;
use crate::snapshot::Snapshot;
use crate::vm::{RunOutcome, Vm};

/// Instructions of forward running between two checkpoints (at first).
pub const INTERVAL: u64 = 100_000_000;

/// The most checkpoints kept.
pub const MAX_CHECKPOINTS: usize = 24;

/// The most bytes of compressed RAM the checkpoints hold together (the
/// first and the newest stay whatever their size).
pub const MAX_BYTES: u64 = 1 << 30;

/// How far short of a position the full-speed run stops before stepping.
pub const APPROACH: u64 = 4096;

/// Where a reverse command ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Landing {
    /// At a breakpoint or watchpoint stop the forward run would give.
    Stop(StopReason),
    /// One step back (reverse-stepi), on vCPU 0.
    Stepped,
    /// At the start of the history: nothing further back.
    Begin,
}

/// The checkpoints of a GDB session.
#[derive(Default)]
pub struct History {
    /// (position, snapshot), by position.
    checkpoints: Vec<(u64, Snapshot)>,
    /// The outside-input count when the history began.
    outside: u64,
    /// The stop a reverse-continue found, while it goes there.
    last_stop: Option<StopReason>,
}

impl History {
    /// Forgets every checkpoint (the guest was changed from outside).
    pub fn forget(&mut self) {
        self.checkpoints.clear();
    }

    /// Whether reverse execution is possible on `vm` at all.
    fn possible(vm: &Vm) -> bool {
        vm.cpu_count() == 1
    }

    /// Before the guest runs forward, before a checkpoint and before a
    /// reverse command: starts the history (or starts it again here, when
    /// input from outside arrived since it began; `outside` counts such
    /// input so far).
    pub fn sync(&mut self, vm: &mut Vm, outside: u64) {
        if !Self::possible(vm) {
            return;
        }
        if outside != self.outside {
            self.outside = outside;
            self.forget();
        }
        if self.checkpoints.is_empty() {
            self.take(vm);
        }
    }

    /// The position the forward run should next stop at for a checkpoint,
    /// if the history is on.
    pub fn next_due(&self) -> Option<u64> {
        let newest = self.checkpoints.last()?.0;
        let interval = self.interval();
        Some(newest.saturating_add(interval))
    }

    /// The interval between checkpoints now (it doubles each time the
    /// list is thinned).
    fn interval(&self) -> u64 {
        match self.checkpoints.as_slice() {
            [(a, _), (b, _), ..] => (b - a).max(INTERVAL),
            _ => INTERVAL,
        }
    }

    /// Takes a checkpoint at the current position, unless one is there.
    pub fn take(&mut self, vm: &mut Vm) {
        let pos = vm.icount();
        if self.checkpoints.iter().any(|(p, _)| *p == pos) {
            return;
        }
        let snap = match vm.save() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("x86bt: reverse execution: no checkpoint at {pos}: {e}");
                return;
            }
        };
        // Positions past this one belong to another future only if the
        // guest was changed, which forgets them; keep the list in order.
        let at = self.checkpoints.partition_point(|(p, _)| *p < pos);
        self.checkpoints.insert(at, (pos, snap));
        let bytes = |c: &[(u64, Snapshot)]| -> u64 {
            c.iter()
                .flat_map(|(_, s)| &s.ram.runs)
                .map(|r| r.block.data.len() as u64)
                .sum()
        };
        while self.checkpoints.len() > 2
            && (self.checkpoints.len() > MAX_CHECKPOINTS || bytes(&self.checkpoints) > MAX_BYTES)
        {
            let last = self.checkpoints.len() - 1;
            let mut k = 0;
            self.checkpoints.retain(|_| {
                let keep = k % 2 == 0 || k == last;
                k += 1;
                keep
            });
        }
    }

    /// The newest checkpoint at or before `pos`, by index.
    fn base_for(&self, pos: u64) -> Option<usize> {
        self.checkpoints.iter().rposition(|(p, _)| *p <= pos)
    }

    /// Restores checkpoint `k`, with nothing of the debugger's armed.
    fn restore(&self, vm: &mut Vm, k: usize) -> Result<(), String> {
        vm.restore(&self.checkpoints[k].1)
            .map_err(|e| format!("cannot restore the checkpoint: {e}"))?;
        if let Some(d) = vm.debugger.as_mut() {
            d.reset_stops();
        }
        Ok(())
    }

    /// Runs `vm` (at a checkpoint) to position `target`: at full speed to
    /// `approach` short of it, then one instruction at a time. Returns the
    /// positions of the instruction boundaries stepped through, the last
    /// one at or past `target` (past it only where one step retires
    /// several instructions). The debugger's points must be out of the way.
    fn run_to(vm: &mut Vm, target: u64, approach: u64) -> Result<Vec<u64>, String> {
        let cpu = vm.current_cpu();
        // The interrupt flag rises with every byte from GDB (an
        // acknowledgement, say); the run just goes on.
        while vm.icount().saturating_add(approach) < target {
            vm.debug_resume(None);
            match vm.run(target - approach) {
                RunOutcome::InstructionLimit => break,
                RunOutcome::Debug(StopReason::Interrupted) => {}
                other => return Err(format!("the replay ended early: {other:?}")),
            }
        }
        let mut seen = vec![vm.icount()];
        while vm.icount() < target {
            vm.debug_resume(Some(cpu));
            match vm.run(u64::MAX) {
                RunOutcome::Debug(StopReason::Stepped { .. }) => seen.push(vm.icount()),
                RunOutcome::Debug(StopReason::Interrupted) => {}
                other => return Err(format!("the replay ended early: {other:?}")),
            }
        }
        vm.debug_resume(None);
        Ok(seen)
    }

    /// Goes to the last instruction boundary before the current position.
    pub fn reverse_step(&mut self, vm: &mut Vm) -> Landing {
        let now = vm.icount();
        if !Self::possible(vm) || now == 0 {
            return Landing::Begin;
        }
        // None: the history starts here.
        let Some(k) = self.base_for(now - 1) else {
            return Landing::Begin;
        };
        match self.step_back(vm, k, now) {
            Ok(()) => Landing::Stepped,
            Err(e) => self.gave_up(vm, k, &e),
        }
    }

    /// Goes from checkpoint `k` to the last instruction boundary before
    /// position `now`: first to `now - 1`; where a step retired several
    /// instructions (a repeated string instruction's batch) and passed it,
    /// again to the last boundary seen before `now`; where the full-speed
    /// run passed it, again from further away.
    /// The breakpoints and watchpoints are out of the way meanwhile.
    fn step_back(&mut self, vm: &mut Vm, k: usize, now: u64) -> Result<(), String> {
        let points = vm.debugger.as_mut().map(|d| d.take_points());
        let result = self.step_back_bare(vm, k, now);
        if let (Some(d), Some(p)) = (vm.debugger.as_mut(), points) {
            d.set_points(p);
        }
        result
    }

    fn step_back_bare(&mut self, vm: &mut Vm, k: usize, now: u64) -> Result<(), String> {
        let base = self.checkpoints[k].0;
        let mut target = now - 1;
        let mut approach = APPROACH;
        for _ in 0..8 {
            if target <= base {
                return self.restore(vm, k);
            }
            self.restore(vm, k)?;
            let seen = Self::run_to(vm, target, approach)?;
            if vm.icount() < now {
                return Ok(());
            }
            match seen.iter().rev().find(|&&p| p < now) {
                Some(&p) if p > seen[0] || seen[0] == base => target = p,
                _ => approach = approach.saturating_mul(16).min(now - base),
            }
        }
        Err("no instruction boundary found before this one".into())
    }

    /// Goes back to the last stop the breakpoints and watchpoints would
    /// give before the current position, or to the start of the history.
    pub fn reverse_cont(&mut self, vm: &mut Vm) -> Landing {
        let now = vm.icount();
        if !Self::possible(vm) || self.checkpoints.is_empty() {
            return Landing::Begin;
        }
        let Some(newest) = self.base_for(now.saturating_sub(1)) else {
            return Landing::Begin;
        };
        for k in (0..=newest).rev() {
            let end = self
                .checkpoints
                .get(k + 1)
                .map_or(now, |(p, _)| (*p).min(now));
            match self.stops_between(vm, k, end, None) {
                Ok(n) if n > 0 => {
                    if let Err(e) = self.stops_between(vm, k, end, Some(n)) {
                        return self.gave_up(vm, k, &e);
                    }
                    let stop = self.last_stop.take().expect("a stop was found");
                    // Going backwards, a watched access is undone: the
                    // guest stops before the instruction that made it.
                    if matches!(stop, StopReason::Watch { .. }) {
                        let at = vm.icount();
                        if let Err(e) = self.step_back(vm, k, at) {
                            return self.gave_up(vm, k, &e);
                        }
                    }
                    return Landing::Stop(stop);
                }
                Ok(_) => {}
                Err(e) => return self.gave_up(vm, k, &e),
            }
        }
        match self.restore(vm, 0) {
            Ok(()) => Landing::Begin,
            Err(e) => self.gave_up(vm, 0, &e),
        }
    }
}

impl History {
    /// Runs from checkpoint `k` with the debugger's points armed to
    /// position `end`, counting the stops before it; with `stop_at`, stops
    /// at that stop (1-based) and keeps it in `last_stop`.
    fn stops_between(
        &mut self,
        vm: &mut Vm,
        k: usize,
        end: u64,
        stop_at: Option<usize>,
    ) -> Result<usize, String> {
        self.restore(vm, k)?;
        let mut n = 0;
        loop {
            vm.debug_resume(None);
            match vm.run(end) {
                RunOutcome::Debug(StopReason::Interrupted) => {}
                // A breakpoint's stop is before its instruction, so one at
                // `end` belongs to the next stretch; a watchpoint's is after
                // the access, so one at `end` belongs here.
                RunOutcome::Debug(stop @ StopReason::Breakpoint { .. }) if vm.icount() < end => {
                    n += 1;
                    if stop_at == Some(n) {
                        self.last_stop = Some(stop);
                        return Ok(n);
                    }
                }
                RunOutcome::Debug(stop @ StopReason::Watch { .. }) if vm.icount() <= end => {
                    n += 1;
                    if stop_at == Some(n) {
                        self.last_stop = Some(stop);
                        return Ok(n);
                    }
                }
                RunOutcome::Debug(_) | RunOutcome::InstructionLimit => return Ok(n),
                other => return Err(format!("the replay ended early: {other:?}")),
            }
        }
    }

    /// A reverse command that could not be done: said on stderr; the
    /// history is forgotten and the guest is left where checkpoint `k` is
    /// (the nearest known state), reported as the start of the history.
    fn gave_up(&mut self, vm: &mut Vm, k: usize, why: &str) -> Landing {
        eprintln!("x86bt: reverse execution stopped: {why}");
        let _ = self.restore(vm, k);
        Landing::Begin
    }
}
