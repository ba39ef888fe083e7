//! What a debugger needs from the run loop, apart from any wire protocol:
//! breakpoints, watchpoints, single steps, an interrupt flag, and the stops
//! they cause ([`StopReason`], returned by `Vm::run` as
//! `RunOutcome::Debug`). The GDB server (`crate::gdb`) drives it, and its
//! reverse execution (`crate::gdb::reverse`) drives the same calls on
//! restored checkpoints.
//!
//! How the run loop honours them (see `Vm::run`):
//! - While anything is *armed* (a breakpoint, a watchpoint or a step), the
//!   run loop checks [`Debugger::before_unit`] before every unit and
//!   [`Debugger::after_unit`] after it. Units on a page with a breakpoint,
//!   and every unit while watching or stepping, run one instruction at a
//!   time on the debugger's interpreter ([`Debugger::single_at`]); other
//!   units run whole on the engine, and an engine that keeps its chaining
//!   out of the breakpoints' pages (`Engine::set_break_pages`: the
//!   translator and the interpreter) chains them as without a debugger. Guest memory is never
//!   patched (breakpoints live here, not in RAM).
//! - An instruction breakpoint is checked against the linear address of
//!   CS:RIP before the instruction runs. The first instruction after a stop
//!   at a breakpoint runs without that check (as the RF flag does for the
//!   CPU's own breakpoints), so `continue` from a breakpoint moves on.
//! - Watchpoints use `CpuState::log_accesses`: every data access is logged
//!   (the fast TLB stays empty, so none bypasses the log, and the
//!   translator's inline accesses go to the interpreter), and the log is
//!   compared after each instruction. Like the CPU's data breakpoints, a
//!   watchpoint stops the guest after the access, with RIP at the next
//!   instruction.
//! - Nothing here changes what the guest sees: a run with breakpoints that
//!   never hit retires the same instructions as one without.
//!
//! Addresses are linear (after segmentation, before paging), as in QEMU's
//! GDB server: in flat protected and long mode they are the virtual
//! addresses of the guest's symbols.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which data accesses a watchpoint catches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    /// Writes (GDB's `watch`, packet Z2).
    Write,
    /// Reads (`rwatch`, Z3).
    Read,
    /// Reads and writes (`awatch`, Z4).
    Access,
}

impl WatchKind {
    fn catches(self, write: bool) -> bool {
        match self {
            Self::Write => write,
            Self::Read => !write,
            Self::Access => true,
        }
    }
}

/// A breakpoint's kind, as the debugger asked for it. Both kinds work the
/// same way here (no guest memory is patched for either); the kind is kept
/// so each is reported and removed as the one that was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakKind {
    /// A software breakpoint (GDB's `break`, Z0).
    Software,
    /// A hardware breakpoint (`hbreak`, Z1).
    Hardware,
}

/// Why a debugged run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The interrupt flag was raised (GDB's Ctrl-C, or a debugger connecting).
    Interrupted,
    /// vCPU `cpu` reached an instruction breakpoint at linear `addr`.
    Breakpoint {
        /// The vCPU's index.
        cpu: usize,
        /// The breakpoint's linear address.
        addr: u64,
        /// The kind it was set as.
        kind: BreakKind,
    },
    /// An instruction of vCPU `cpu` touched a watched range.
    Watch {
        /// The vCPU's index.
        cpu: usize,
        /// The first watched byte the access touched.
        addr: u64,
        /// The watchpoint's kind.
        kind: WatchKind,
    },
    /// vCPU `cpu` completed the instruction it was asked to step (or took
    /// an exception or interrupt in its place: RIP is then at the handler).
    Stepped {
        /// The vCPU's index.
        cpu: usize,
    },
}

/// A watched range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchpoint {
    /// First linear address.
    pub addr: u64,
    /// Length in bytes (at least 1).
    pub len: u64,
    /// Which accesses it catches.
    pub kind: WatchKind,
}

/// A debugger's breakpoints and watchpoints, taken out for a while.
#[derive(Debug, Default)]
pub struct Points {
    breakpoints: Vec<(u64, BreakKind)>,
    watchpoints: Vec<Watchpoint>,
}

/// The debugger's state in the VM.
#[derive(Debug, Default)]
pub struct Debugger {
    /// Instruction breakpoints: (linear address, kind).
    breakpoints: Vec<(u64, BreakKind)>,
    /// Watched ranges.
    watchpoints: Vec<Watchpoint>,
    /// The vCPU being stepped, and its `icount` when the step began.
    step: Option<(usize, u64)>,
    /// A breakpoint check to skip once: (vCPU, linear address, its
    /// `icount`), where the guest stopped at a breakpoint, or where a
    /// repeated string instruction goes on with its next batch.
    skip: Option<(usize, u64, u64)>,
    /// A stop found after a unit, reported at the top of the next pass.
    pending: Option<StopReason>,
    /// Raised from other threads to stop the run (Ctrl-C, a new debugger).
    interrupt: Arc<AtomicBool>,
    /// What the run loop last set up (see [`Debugger::armed`]).
    armed: bool,
    /// The only vCPU that runs (GDB's scheduler locking, which it also uses
    /// to step one thread over a breakpoint while the others wait).
    lock: Option<usize>,
}

impl Debugger {
    /// A debugger with nothing set, whose interrupt flag is `interrupt`.
    pub fn new(interrupt: Arc<AtomicBool>) -> Self {
        Self {
            interrupt,
            ..Self::default()
        }
    }

    /// The flag that, raised, stops the run at the next pass of the loop.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.interrupt)
    }

    /// Adds an instruction breakpoint. False if that one is set already.
    pub fn add_breakpoint(&mut self, addr: u64, kind: BreakKind) -> bool {
        if self.breakpoints.contains(&(addr, kind)) {
            return false;
        }
        self.breakpoints.push((addr, kind));
        true
    }

    /// Removes an instruction breakpoint. False if it was not set.
    pub fn remove_breakpoint(&mut self, addr: u64, kind: BreakKind) -> bool {
        let before = self.breakpoints.len();
        self.breakpoints.retain(|&b| b != (addr, kind));
        self.breakpoints.len() != before
    }

    /// Adds a watchpoint. False if that one is set already or `len` is 0.
    pub fn add_watchpoint(&mut self, w: Watchpoint) -> bool {
        if w.len == 0 || self.watchpoints.contains(&w) {
            return false;
        }
        self.watchpoints.push(w);
        true
    }

    /// Removes a watchpoint. False if it was not set.
    pub fn remove_watchpoint(&mut self, w: Watchpoint) -> bool {
        let before = self.watchpoints.len();
        self.watchpoints.retain(|&x| x != w);
        self.watchpoints.len() != before
    }

    /// Takes the breakpoints and watchpoints out (reverse execution runs
    /// the guest to a position without them), to be put back with
    /// [`Debugger::set_points`].
    pub fn take_points(&mut self) -> Points {
        Points {
            breakpoints: std::mem::take(&mut self.breakpoints),
            watchpoints: std::mem::take(&mut self.watchpoints),
        }
    }

    /// Puts back what [`Debugger::take_points`] took.
    pub fn set_points(&mut self, p: Points) {
        self.breakpoints = p.breakpoints;
        self.watchpoints = p.watchpoints;
    }

    /// Forgets the step, the breakpoint to skip and the stop held for the
    /// next pass (the guest was put in another state: a restored
    /// checkpoint), keeping the breakpoints and watchpoints.
    pub fn reset_stops(&mut self) {
        self.step = None;
        self.skip = None;
        self.pending = None;
        self.lock = None;
    }

    /// Drops every breakpoint, watchpoint and step (a debugger detached).
    pub fn clear(&mut self) {
        self.breakpoints.clear();
        self.watchpoints.clear();
        self.step = None;
        self.skip = None;
        self.pending = None;
        self.lock = None;
    }

    /// Whether any watchpoint is set.
    pub fn watching(&self) -> bool {
        !self.watchpoints.is_empty()
    }

    /// Whether the run loop must look at every unit boundary.
    pub fn wants_single_step(&self) -> bool {
        !self.breakpoints.is_empty() || !self.watchpoints.is_empty() || self.step.is_some()
    }

    /// Whether the unit at linear `lin` must run one instruction at a time:
    /// always while watching or stepping, and where a breakpoint lies in
    /// the unit's page (a unit runs only instructions that start in the
    /// page it starts in, so one elsewhere cannot pass a breakpoint).
    pub(crate) fn single_at(&self, lin: u64) -> bool {
        !self.watchpoints.is_empty()
            || self.step.is_some()
            || self.breakpoints.iter().any(|&(a, _)| a >> 12 == lin >> 12)
    }

    /// The linear pages (address >> 12) holding breakpoints, sorted.
    pub fn break_pages(&self) -> Vec<u64> {
        let mut pages: Vec<u64> = self.breakpoints.iter().map(|&(a, _)| a >> 12).collect();
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    /// Whether the run loop was set up for single steps at the last resume.
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Notes how the run loop was set up (`Vm::debug_resume`).
    pub(crate) fn set_armed(&mut self, on: bool) {
        self.armed = on;
    }

    /// Asks for vCPU `cpu`, now at `icount`, to stop after one instruction.
    pub(crate) fn set_step(&mut self, step: Option<(usize, u64)>) {
        self.step = step;
    }

    /// Lets only vCPU `cpu` run until the next resume (or all, with `None`).
    pub fn set_lock(&mut self, cpu: Option<usize>) {
        self.lock = cpu;
    }

    /// The only vCPU that may run now, if the debugger locked one.
    pub fn locked(&self) -> Option<usize> {
        self.lock
    }

    /// The stop to report before anything else runs: one found after the
    /// last unit, or the interrupt flag.
    pub(crate) fn take_stop(&mut self) -> Option<StopReason> {
        if let Some(stop) = self.pending.take() {
            return Some(stop);
        }
        if self.interrupt.swap(false, Ordering::SeqCst) {
            return Some(StopReason::Interrupted);
        }
        None
    }

    /// Keeps `stop` for the top of the run loop's next pass.
    pub(crate) fn hold(&mut self, stop: StopReason) {
        self.pending.get_or_insert(stop);
    }

    /// Whether a stop waits for the top of the next pass.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Before vCPU `cpu` runs the instruction at linear `lin` (its count
    /// `icount`): the breakpoint there, if any and not to be skipped.
    pub(crate) fn before_unit(&mut self, cpu: usize, lin: u64, icount: u64) -> Option<StopReason> {
        if let Some(skip) = self.skip.take() {
            if skip == (cpu, lin, icount) {
                return None;
            }
        }
        let &(addr, kind) = self.breakpoints.iter().find(|&&(a, _)| a == lin)?;
        self.skip = Some((cpu, lin, icount));
        Some(StopReason::Breakpoint { cpu, addr, kind })
    }

    /// After vCPU `cpu` ran a unit: the watchpoints its logged accesses hit
    /// and the end of its step, kept for the top of the next pass. `resumes`
    /// says the unit left a repeated string instruction to go on at `lin`
    /// (count `icount`), which is not a new arrival at a breakpoint there.
    pub(crate) fn after_unit(
        &mut self,
        cpu: usize,
        icount: u64,
        accesses: &[(u64, u32, bool)],
        resumes: Option<u64>,
    ) {
        if let Some(lin) = resumes {
            self.skip = Some((cpu, lin, icount));
        }
        if self.pending.is_some() {
            return;
        }
        for &(lin, size, write) in accesses {
            let end = lin.saturating_add(u64::from(size));
            let hit = self.watchpoints.iter().find(|w| {
                w.kind.catches(write) && lin < w.addr.saturating_add(w.len) && w.addr < end
            });
            if let Some(w) = hit {
                self.pending = Some(StopReason::Watch {
                    cpu,
                    addr: lin.max(w.addr),
                    kind: w.kind,
                });
                return;
            }
        }
        if let Some((k, from)) = self.step {
            if k == cpu && icount > from {
                self.step = None;
                self.pending = Some(StopReason::Stepped { cpu });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugger() -> Debugger {
        Debugger::new(Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn breakpoint_stops_once_then_lets_the_instruction_run() {
        let mut d = debugger();
        assert!(d.add_breakpoint(0x1000, BreakKind::Software));
        assert!(!d.add_breakpoint(0x1000, BreakKind::Software));
        assert_eq!(d.before_unit(0, 0x0FFF, 5), None);
        let stop = d.before_unit(0, 0x1000, 6);
        assert_eq!(
            stop,
            Some(StopReason::Breakpoint {
                cpu: 0,
                addr: 0x1000,
                kind: BreakKind::Software
            })
        );
        // Resumed at the same place: it runs.
        assert_eq!(d.before_unit(0, 0x1000, 6), None);
        // Back there after more instructions (a loop): it stops again.
        assert!(d.before_unit(0, 0x1000, 9).is_some());
        assert!(d.remove_breakpoint(0x1000, BreakKind::Software));
        assert!(!d.remove_breakpoint(0x1000, BreakKind::Software));
    }

    #[test]
    fn watchpoints_catch_overlapping_accesses_of_their_kind() {
        let mut d = debugger();
        d.add_watchpoint(Watchpoint {
            addr: 0x2000,
            len: 4,
            kind: WatchKind::Write,
        });
        d.after_unit(0, 1, &[(0x2000, 4, false), (0x1FFC, 4, true)], None);
        assert_eq!(d.take_stop(), None, "a read, and a write just below");
        d.after_unit(0, 2, &[(0x1FFE, 4, true)], None);
        assert_eq!(
            d.take_stop(),
            Some(StopReason::Watch {
                cpu: 0,
                addr: 0x2000,
                kind: WatchKind::Write
            })
        );
        d.add_watchpoint(Watchpoint {
            addr: 0x3000,
            len: 1,
            kind: WatchKind::Read,
        });
        d.after_unit(0, 3, &[(0x3000, 1, true)], None);
        assert_eq!(d.take_stop(), None);
        d.after_unit(0, 4, &[(0x3000, 1, false)], None);
        assert!(matches!(
            d.take_stop(),
            Some(StopReason::Watch {
                kind: WatchKind::Read,
                ..
            })
        ));
    }

    #[test]
    fn step_ends_when_its_vcpu_retires_an_instruction() {
        let mut d = debugger();
        d.set_step(Some((1, 10)));
        d.after_unit(0, 50, &[], None);
        assert_eq!(d.take_stop(), None, "another vCPU ran");
        d.after_unit(1, 10, &[], None);
        assert_eq!(d.take_stop(), None, "nothing retired");
        d.after_unit(1, 11, &[], None);
        assert_eq!(d.take_stop(), Some(StopReason::Stepped { cpu: 1 }));
        assert!(!d.wants_single_step());
    }

    #[test]
    fn interrupt_flag_stops_once() {
        let mut d = debugger();
        d.interrupt_flag().store(true, Ordering::SeqCst);
        assert_eq!(d.take_stop(), Some(StopReason::Interrupted));
        assert_eq!(d.take_stop(), None);
    }
}
