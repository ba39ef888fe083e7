//! The gdbstub target: the VM as GDB sees it. Each vCPU is a thread (thread
//! id = vCPU index + 1); registers, memory, breakpoints and watchpoints go
//! to `Vm` and its `Debugger`; resuming runs `Vm::run` until it stops.
//!
//! Reverse execution is gdbstub's `ReverseStep` and `ReverseCont`
//! extensions of `MultiThreadResume`: the command is noted, and the event
//! loop carries it out over the session's history (`super::reverse`).

use super::arch::Layout;
use super::conn::GdbConn;
use super::reverse::{History, Landing};
use crate::debug::{BreakKind, StopReason, WatchKind, Watchpoint};
use crate::vm::{RunOutcome, Vm};
use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    self, Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint,
    HwWatchpointOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use x86bt_machine::devices::uart::SerialInput;

/// The VM under GDB, in layout `L`.
pub struct GdbTarget<'a, L> {
    /// The machine.
    pub vm: &'a mut Vm,
    /// `--max-insns`: the run ends there, as without a debugger.
    pub max_insns: u64,
    /// The vCPU the next resume steps, if any.
    step: Option<usize>,
    /// The vCPU the next resume lets run alone (scheduler locking), if any.
    lock: Option<usize>,
    /// The vCPU named by the resume actions (the one a lock keeps).
    named: Option<usize>,
    /// The vCPU that last stopped (Ctrl-C is reported on it).
    last: usize,
    /// How the run ended, if the guest stopped for good while attached.
    pub ended: Option<RunOutcome>,
    /// The VM's interrupt flag.
    interrupt: Arc<AtomicBool>,
    /// The checkpoints reverse execution goes back through.
    history: History,
    /// A reverse command for the event loop to carry out.
    reverse: Option<Reverse>,
    /// The queues input from outside reaches the guest through (their
    /// `taken` counts end a history).
    inputs: Vec<SerialInput>,
    _layout: PhantomData<L>,
}

/// A reverse command GDB gave.
#[derive(Clone, Copy, Debug)]
enum Reverse {
    Step,
    Cont,
}

impl<'a, L: Layout> GdbTarget<'a, L> {
    /// A target over `vm`, which must have a debugger.
    pub fn new(
        vm: &'a mut Vm,
        max_insns: u64,
        interrupt: Arc<AtomicBool>,
        inputs: Vec<SerialInput>,
    ) -> Self {
        let last = vm.current_cpu();
        Self {
            vm,
            max_insns,
            step: None,
            lock: None,
            named: None,
            last,
            ended: None,
            interrupt,
            history: History::default(),
            reverse: None,
            inputs,
            _layout: PhantomData,
        }
    }

    /// Input from outside the guest so far: bytes taken from the input
    /// queues and idle periods the wall clock cut short.
    fn outside(&self) -> u64 {
        self.inputs.iter().map(SerialInput::taken).sum::<u64>() + self.vm.wall_clock_skips
    }

    /// Brings the history up to date with input from outside.
    fn sync_history(&mut self) {
        let outside = self.outside();
        self.history.sync(self.vm, outside);
    }

    /// The vCPU index of thread `tid`, if there is one.
    fn cpu(&self, tid: Tid) -> Result<usize, TargetError<()>> {
        let i = tid.get() - 1;
        if i < self.vm.cpu_count() {
            Ok(i)
        } else {
            Err(TargetError::NonFatal)
        }
    }
}

/// The thread id of vCPU `i`.
fn tid(i: usize) -> Tid {
    Tid::new(i + 1).expect("i + 1 is not zero")
}

impl<L: Layout> Target for GdbTarget<'_, L> {
    type Arch = L;
    type Error = ();

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    // Breakpoints are the stub's business (GDB's Z0), never instructions
    // patched into guest memory.
    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl<L: Layout> MultiThreadBase for GdbTarget<'_, L> {
    fn read_registers(&mut self, regs: &mut L::Registers, tid: Tid) -> TargetResult<(), Self> {
        let i = self.cpu(tid)?;
        *regs = L::read(self.vm, i);
        Ok(())
    }

    fn write_registers(&mut self, regs: &L::Registers, tid: Tid) -> TargetResult<(), Self> {
        let i = self.cpu(tid)?;
        // The past no longer leads here.
        self.history.forget();
        L::write(self.vm, i, regs).map_err(|_| TargetError::NonFatal)
    }

    /// All or nothing: a range that runs into an unmapped page, or onto
    /// anything but RAM and ROM, is an error reply (gdbstub sends the bytes
    /// of every chunk it asks for in a row, so a short chunk cannot be told).
    fn read_addrs(
        &mut self,
        start: L::Usize,
        data: &mut [u8],
        tid: Tid,
    ) -> TargetResult<usize, Self> {
        let i = self.cpu(tid)?;
        if self.vm.debug_read(i, L::to_u64(start), data) != data.len() {
            return Err(TargetError::NonFatal);
        }
        Ok(data.len())
    }

    fn write_addrs(&mut self, start: L::Usize, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let i = self.cpu(tid)?;
        self.history.forget();
        if self.vm.debug_write(i, L::to_u64(start), data) {
            Ok(())
        } else {
            Err(TargetError::NonFatal)
        }
    }

    fn list_active_threads(&mut self, thread_is_active: &mut dyn FnMut(Tid)) -> Result<(), ()> {
        for i in 0..self.vm.cpu_count() {
            thread_is_active(tid(i));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> MultiThreadResume for GdbTarget<'_, L> {
    /// Every vCPU runs (all-stop mode); a step stops once the stepped vCPU
    /// has retired one instruction, while the others run their turns as
    /// usual. Signals GDB would pass on are dropped: a guest machine has no
    /// signals.
    fn resume(&mut self) -> Result<(), ()> {
        if let Some(d) = self.vm.debugger.as_mut() {
            d.set_lock(self.lock);
        }
        self.vm.debug_resume(self.step);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), ()> {
        self.step = None;
        self.lock = None;
        self.named = None;
        Ok(())
    }

    fn set_resume_action_continue(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), ()> {
        // Only a thread named on its own comes here (a wildcard continue
        // means no lock); a lock keeps the first one named.
        if self.named.is_none() {
            self.named = Some(self.cpu(tid).map_err(|_| ())?);
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, Tid, Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, Tid, Self>> {
        Some(self)
    }
}

impl<L: Layout> ReverseStep<Tid> for GdbTarget<'_, L> {
    /// The position is the whole machine's: with one vCPU (the only case
    /// with a history), that vCPU's previous instruction.
    fn reverse_step(&mut self, _tid: Tid) -> Result<(), ()> {
        self.reverse = Some(Reverse::Step);
        Ok(())
    }
}

impl<L: Layout> ReverseCont<Tid> for GdbTarget<'_, L> {
    fn reverse_cont(&mut self) -> Result<(), ()> {
        self.reverse = Some(Reverse::Cont);
        Ok(())
    }
}

impl<L: Layout> MultiThreadSingleStep for GdbTarget<'_, L> {
    fn set_resume_action_step(&mut self, tid: Tid, _signal: Option<Signal>) -> Result<(), ()> {
        let i = self.cpu(tid).map_err(|_| ())?;
        self.step = Some(i);
        self.named = Some(i);
        Ok(())
    }
}

impl<L: Layout> MultiThreadSchedulerLocking for GdbTarget<'_, L> {
    /// GDB resumed some threads and left the others stopped: only the
    /// stepped (or first continued) vCPU runs; the others wait.
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), ()> {
        self.lock = self.step.or(self.named);
        Ok(())
    }
}

impl<L: Layout> Breakpoints for GdbTarget<'_, L> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl<L: Layout> GdbTarget<'_, L> {
    fn debugger(&mut self) -> &mut crate::debug::Debugger {
        self.vm
            .debugger
            .as_deref_mut()
            .expect("a GDB session runs on a VM with a debugger")
    }
}

impl<L: Layout> SwBreakpoint for GdbTarget<'_, L> {
    fn add_sw_breakpoint(&mut self, addr: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self
            .debugger()
            .add_breakpoint(L::to_u64(addr), BreakKind::Software))
    }

    fn remove_sw_breakpoint(&mut self, addr: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self
            .debugger()
            .remove_breakpoint(L::to_u64(addr), BreakKind::Software))
    }
}

impl<L: Layout> HwBreakpoint for GdbTarget<'_, L> {
    fn add_hw_breakpoint(&mut self, addr: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self
            .debugger()
            .add_breakpoint(L::to_u64(addr), BreakKind::Hardware))
    }

    fn remove_hw_breakpoint(&mut self, addr: L::Usize, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self
            .debugger()
            .remove_breakpoint(L::to_u64(addr), BreakKind::Hardware))
    }
}

fn watchpoint<L: Layout>(
    addr: L::Usize,
    len: L::Usize,
    kind: breakpoints::WatchKind,
) -> Watchpoint {
    Watchpoint {
        addr: L::to_u64(addr),
        len: L::to_u64(len),
        kind: match kind {
            breakpoints::WatchKind::Write => WatchKind::Write,
            breakpoints::WatchKind::Read => WatchKind::Read,
            breakpoints::WatchKind::ReadWrite => WatchKind::Access,
        },
    }
}

impl<L: Layout> HwWatchpoint for GdbTarget<'_, L> {
    fn add_hw_watchpoint(
        &mut self,
        addr: L::Usize,
        len: L::Usize,
        kind: breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self
            .debugger()
            .add_watchpoint(watchpoint::<L>(addr, len, kind)))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: L::Usize,
        len: L::Usize,
        kind: breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self
            .debugger()
            .remove_watchpoint(watchpoint::<L>(addr, len, kind)))
    }
}

/// gdbstub's blocking event loop over [`GdbTarget`] and [`GdbConn`].
pub struct EventLoop<'a, L>(PhantomData<&'a L>);

impl<'a, L: Layout> BlockingEventLoop for EventLoop<'a, L> {
    type Target = GdbTarget<'a, L>;
    type Connection = GdbConn;
    type StopReason = MultiThreadStopReason<L::Usize>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut GdbConn,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<(), std::io::Error>> {
        // A byte that arrived before the flag was lowered is in the channel;
        // one that arrives after raises the flag again.
        target.interrupt.store(false, Ordering::SeqCst);
        target.sync_history();
        if let Some(command) = target.reverse.take() {
            let landing = match command {
                Reverse::Step => target.history.reverse_step(target.vm),
                Reverse::Cont => target.history.reverse_cont(target.vm),
            };
            target.last = target.vm.current_cpu();
            let reason = match landing {
                Landing::Stop(stop) => stop_reason::<L>(target, stop),
                Landing::Stepped => MultiThreadStopReason::SignalWithThread {
                    tid: tid(target.last),
                    signal: Signal::SIGTRAP,
                },
                Landing::Begin => MultiThreadStopReason::ReplayLog {
                    tid: Some(tid(target.last)),
                    pos: ReplayLogPosition::Begin,
                },
            };
            return Ok(Event::TargetStopped(reason));
        }
        loop {
            if conn.pending() {
                let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(b));
            }
            // The run stops where the next checkpoint is due, takes it, and
            // goes on (a run that stops and goes on is the run that did not).
            let due = target.history.next_due().unwrap_or(u64::MAX);
            let limit = due.min(target.max_insns);
            let outcome = target.vm.run(limit);
            let stop = match outcome {
                // The flag without a byte from GDB: another client knocking.
                RunOutcome::Debug(StopReason::Interrupted) => continue,
                RunOutcome::Debug(stop) => stop,
                RunOutcome::InstructionLimit if target.vm.icount() < target.max_insns => {
                    target.sync_history();
                    target.history.take(target.vm);
                    continue;
                }
                ended => {
                    let code = (ended.exit_status() & 0xFF) as u8;
                    target.ended = Some(ended);
                    return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(code)));
                }
            };
            let reason = stop_reason::<L>(target, stop);
            return Ok(Event::TargetStopped(reason));
        }
    }

    fn on_interrupt(target: &mut Self::Target) -> Result<Option<Self::StopReason>, ()> {
        target.last = target.vm.current_cpu();
        Ok(Some(MultiThreadStopReason::SignalWithThread {
            tid: tid(target.last),
            signal: Signal::SIGINT,
        }))
    }
}

/// How GDB hears of `stop` (which is not `Interrupted`); notes its vCPU as
/// the last one stopped.
fn stop_reason<L: Layout>(
    target: &mut GdbTarget<'_, L>,
    stop: StopReason,
) -> MultiThreadStopReason<L::Usize> {
    match stop {
        StopReason::Interrupted => {
            target.last = target.vm.current_cpu();
            MultiThreadStopReason::SignalWithThread {
                tid: tid(target.last),
                signal: Signal::SIGINT,
            }
        }
        StopReason::Breakpoint { cpu, kind, .. } => {
            target.last = cpu;
            match kind {
                BreakKind::Software => MultiThreadStopReason::SwBreak(tid(cpu)),
                BreakKind::Hardware => MultiThreadStopReason::HwBreak(tid(cpu)),
            }
        }
        StopReason::Watch { cpu, addr, kind } => {
            target.last = cpu;
            MultiThreadStopReason::Watch {
                tid: tid(cpu),
                kind: match kind {
                    WatchKind::Write => breakpoints::WatchKind::Write,
                    WatchKind::Read => breakpoints::WatchKind::Read,
                    WatchKind::Access => breakpoints::WatchKind::ReadWrite,
                },
                addr: L::from_u64(addr),
            }
        }
        StopReason::Stepped { cpu } => {
            target.last = cpu;
            MultiThreadStopReason::SignalWithThread {
                tid: tid(cpu),
                signal: Signal::SIGTRAP,
            }
        }
    }
}
