//! The VM: one CPU, one machine, one engine, and the run loop between them.
//!
//! ```text
//! loop {
//!     deliver a pending interrupt if IF=1 and no interrupt shadow
//!     if halted: jump virtual time to the next device deadline, or stop
//!     engine.run_unit()
//!     invalidate units whose code was written; advance device time
//! }
//! ```
//! Virtual time is `icount * NS_PER_INSN` plus the time skipped while halted, so
//! the same guest with the same input always runs the same way. Every clock the
//! guest can read runs on it: the devices get it through `Machine::set_time`, and
//! the TSC counts it too (the time skipped while halted is added to
//! `CpuState::tsc_offset`, so RDTSC in either engine sees it). With
//! [`Vm::pace_idle`], time skipped while halted follows the host's wall clock
//! (an interactive console); without it, it jumps to the next device deadline.
//!
//! The engine (`--engine`) is the interpreter, the binary translator, or both in
//! lockstep, held as one [`RunEngine`] with its own cache; the loop calls its
//! invalidation after a unit that wrote to code.

use crate::cli::Engine;
use crate::debug::{Debugger, StopReason};
use crate::error::Error;
use x86bt_cpu::engine::Engine as RunEngine;
use x86bt_cpu::interp::interpreter::CacheStats;
use x86bt_cpu::interp::interrupt;
use x86bt_cpu::state::{flags, RunState};
use x86bt_cpu::{CpuState, Interpreter, UnitExit};
use x86bt_machine::Machine;
use x86bt_translator::{Lockstep, Translator};

mod state;

/// Virtual nanoseconds per retired instruction (a nominal 1000 MIPS CPU).
pub const NS_PER_INSN: u64 = 1;

/// Run loop passes between calls of [`Vm::tick`].
pub const TICK_PASSES: u32 = 4096;

/// The process exit statuses of `x86bt run` (the README's table). Every status
/// x86bt chooses itself is even, so none can be mistaken for a debug-exit status,
/// which is always odd (`(v << 1) | 1`).
pub mod status {
    /// A clean end: ACPI power-off, the `--until` text, or Ctrl-A x.
    pub const OK: i32 = 0;
    /// Bad input or a host-side failure (one error line on stderr).
    pub const HOST_ERROR: i32 = 2;
    /// An internal error: x86bt itself failed (a bug; a Rust panic would be 101).
    pub const INTERNAL_ERROR: i32 = 100;
    /// `--engine lockstep`: the translator and the interpreter disagreed.
    pub const DIVERGENCE: i32 = 116;
    /// A triple fault shut the CPU down, under `--no-reboot`.
    pub const TRIPLE_FAULT: i32 = 118;
    /// HLT with interrupts disabled: nothing can wake the CPU.
    pub const HALTED: i32 = 120;
    /// The guest asked for a reset (keyboard controller, port 0x92, port 0xCF9,
    /// the ACPI reset register), under `--no-reboot`.
    pub const RESET: i32 = 122;
    /// The `--max-insns` limit was reached.
    pub const INSTRUCTION_LIMIT: i32 = 124;
    /// The guest used something x86bt does not implement yet (named on stderr).
    pub const UNSUPPORTED: i32 = 126;
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote to the debug-exit port; the status is `(v << 1) | 1`.
    DebugExit(i32),
    /// HLT with interrupts disabled and nothing that could wake the CPU.
    HaltedForever,
    /// The instruction limit was reached.
    InstructionLimit,
    /// A triple fault shut the CPU down (under `--no-reboot`).
    TripleFault,
    /// The guest asked for a system reset (under `--no-reboot`); the string names
    /// the path (keyboard controller, port 0x92, ...).
    ResetRequested(&'static str),
    /// The guest used something not implemented yet.
    Unsupported(String),
    /// The stop flag was raised (`--until` text seen).
    Stopped,
    /// The guest turned the machine off through ACPI (S5).
    PowerOff,
    /// `--engine lockstep`: the translator and the interpreter disagreed; the
    /// report says where and how.
    Divergence(String),
    /// A debugger's breakpoint, watchpoint, step or interrupt stopped the
    /// run ([`Vm::debugger`]); `run` may be called again to go on.
    Debug(StopReason),
    /// The debugger ended the run (GDB's `kill`).
    Killed,
}

impl RunOutcome {
    /// The process exit status for this outcome (documented in the README).
    pub fn exit_status(&self) -> i32 {
        match self {
            Self::DebugExit(s) => *s,
            Self::HaltedForever => status::HALTED,
            Self::InstructionLimit => status::INSTRUCTION_LIMIT,
            Self::TripleFault => status::TRIPLE_FAULT,
            Self::ResetRequested(_) => status::RESET,
            Self::Unsupported(_) => status::UNSUPPORTED,
            Self::Stopped => status::OK,
            Self::PowerOff => status::OK,
            Self::Divergence(_) => status::DIVERGENCE,
            Self::Debug(_) | Self::Killed => status::OK,
        }
    }
}

/// Reloads and enters a directly booted kernel after a reset.
pub type RebootFn = dyn FnMut(&mut CpuState, &mut Machine);

/// Instructions a vCPU runs before the next one takes its turn (`-smp` > 1).
pub const QUANTUM: u64 = 10_000;

/// One virtual machine.
pub struct Vm {
    /// The state of the vCPU that runs now (the only one without `-smp`).
    pub cpu: Box<CpuState>,
    /// Every vCPU's state by index, except the running one's: its slot holds
    /// a spare, swapped in when another vCPU runs. Boxed so that a switch
    /// swaps two pointers, not two states of several KiB.
    #[allow(clippy::vec_box)]
    parked: Vec<Box<CpuState>>,
    /// The running vCPU's index.
    cur: usize,
    /// Instructions retired by the vCPUs that are not running.
    others_icount: u64,
    /// Per vCPU, the virtual time it last stopped running (its TSC catches up
    /// by the gap when it runs again).
    left_at: Vec<u64>,
    /// The running vCPU's `icount` at which its turn ends.
    quantum_end: u64,
    /// The platform.
    pub machine: Machine,
    /// The engine that runs the units.
    engine: Box<dyn RunEngine>,
    /// Which engine that is (`--engine`).
    kind: Engine,
    /// The instruction count up to which the engine may chain units
    /// ([`RunEngine::set_budget`]).
    budget: u64,
    /// Virtual time skipped while halted, in ns.
    idle_ns: u64,
    /// Wall time slept past what paced idle time could use (ns), carried into
    /// the next idle period so virtual time keeps to the wall clock on average.
    pace_credit_ns: u64,
    /// Stop on a reset request or a triple fault instead of resetting
    /// (`--no-reboot`).
    pub no_reboot: bool,
    /// When set and raised, the run stops (checked between units).
    pub stop_flag: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// When set and raised, the run stops as for `stop_flag`, for the
    /// caller to do something between two passes and go on (Ctrl-A s saves
    /// a snapshot); the caller lowers it.
    pub pause_flag: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Called every [`TICK_PASSES`] passes of the run loop (a display
    /// redraw, a watch on the screen); returning true stops the run.
    pub tick: Option<Box<dyn FnMut() -> bool>>,
    /// Run loop passes since the last tick.
    tick_passes: u32,
    /// What a reset runs after the machine's own reset, for a directly booted
    /// kernel (no firmware would load it again): loads it and enters it anew, as
    /// a boot loader after the firmware would.
    pub reboot: Option<Box<RebootFn>>,
    /// Sleep on the host while the guest halts, so an idle interactive guest
    /// keeps to wall-clock time instead of racing through virtual time.
    pub pace_idle: bool,
    /// A debugger's breakpoints, watchpoints and steps (`crate::debug`);
    /// after changing them, call [`Vm::debug_resume`] before [`Vm::run`].
    pub debugger: Option<Box<Debugger>>,
    /// The interpreter that runs, one instruction per unit, what a debugger
    /// must see instruction by instruction, whatever `engine` is (made on
    /// first use; it gets every invalidation `engine` gets).
    debug_interp: Option<Interpreter>,
    /// The engine keeps its chaining out of the pages with breakpoints
    /// (`Engine::set_break_pages`), so units off those pages may chain.
    engine_breaks: bool,
    /// `--record` or `--replay`: the input from outside, logged or fed back
    /// at the top of each pass and where idle time follows the wall clock
    /// (`crate::replay`).
    pub input_log: Option<Box<crate::replay::InputLog>>,
    /// Idle periods whose virtual time the wall clock cut short (paced
    /// idling) so far: input from outside that a re-run from a snapshot
    /// would not repeat (the GDB server's reverse execution watches it).
    pub wall_clock_skips: u64,
}

/// A fresh `kind` engine (empty caches) for vCPU `cur`. Fails when it cannot
/// run on this host (the translator needs x86-64).
fn new_engine(kind: Engine, cur: usize) -> Result<Box<dyn RunEngine>, Error> {
    let unusable = |e: x86bt_translator::TranslatorError| Error::Usage(format!("--engine: {e}"));
    let mut engine: Box<dyn RunEngine> = match kind {
        Engine::Interp => Box::new(Interpreter::new()),
        Engine::Jit => Box::new(Translator::new().map_err(unusable)?),
        Engine::Lockstep => Box::new(Lockstep::new().map_err(unusable)?),
    };
    engine.select_vcpu(cur);
    Ok(engine)
}

impl Vm {
    /// A VM around `machine`, with the CPU at its reset state, on the
    /// interpreter.
    pub fn new(machine: Machine) -> Self {
        Self::on(machine, Box::new(Interpreter::new()), Engine::Interp)
    }

    /// A VM around `machine` running on `engine`. Fails when the engine cannot
    /// run on this host (the translator needs x86-64).
    pub fn with_engine(machine: Machine, engine: Engine) -> Result<Self, Error> {
        Ok(Self::on(machine, new_engine(engine, 0)?, engine))
    }

    /// A VM around `machine` on `engine`, which is a `kind` engine for vCPU 0.
    fn on(machine: Machine, engine: Box<dyn RunEngine>, kind: Engine) -> Self {
        let n = machine.cpu_count();
        Self {
            cpu: Box::new(CpuState::reset()),
            parked: (0..n).map(|i| Box::new(Self::power_on_state(i))).collect(),
            cur: 0,
            others_icount: 0,
            left_at: vec![0; n],
            quantum_end: if n > 1 { QUANTUM } else { u64::MAX },
            machine,
            engine,
            kind,
            budget: 0,
            idle_ns: 0,
            pace_credit_ns: 0,
            no_reboot: false,
            stop_flag: None,
            pause_flag: None,
            tick: None,
            tick_passes: 0,
            reboot: None,
            pace_idle: false,
            debugger: None,
            debug_interp: None,
            engine_breaks: false,
            input_log: None,
            wall_clock_skips: 0,
        }
    }

    /// vCPU `i`'s state at power-on: the bootstrap processor runs from the
    /// reset vector; the others wait for a start-up IPI.
    fn power_on_state(i: usize) -> CpuState {
        let mut c = CpuState::reset();
        if i != 0 {
            c.run_state = RunState::WaitForSipi;
        }
        c
    }

    /// How many vCPUs the machine has (`-smp`).
    pub fn cpu_count(&self) -> usize {
        self.parked.len()
    }

    /// The index of the vCPU that runs now.
    pub fn current_cpu(&self) -> usize {
        self.cur
    }

    /// vCPU `i`'s state.
    pub fn cpu_state(&self, i: usize) -> &CpuState {
        if i == self.cur {
            &self.cpu
        } else {
            &self.parked[i]
        }
    }

    /// vCPU `i`'s state, to change (a debugger writing registers).
    pub fn cpu_state_mut(&mut self, i: usize) -> &mut CpuState {
        if i == self.cur {
            &mut self.cpu
        } else {
            &mut self.parked[i]
        }
    }

    /// Instructions retired by every vCPU together.
    pub fn icount(&self) -> u64 {
        self.cpu.icount + self.others_icount
    }

    /// Makes vCPU `k` the running one: its state becomes `self.cpu`, the
    /// machine's APIC accesses and the engine's per-vCPU state become its
    /// own, and its TSC catches up with the virtual time that passed while
    /// it did not run (every TSC counts the one virtual time).
    fn switch_to(&mut self, k: usize) {
        if k == self.cur {
            return;
        }
        let now = self.now();
        self.left_at[self.cur] = now;
        self.others_icount = self.others_icount + self.cpu.icount - self.parked[k].icount;
        std::mem::swap(&mut self.cpu, &mut self.parked[self.cur]);
        std::mem::swap(&mut self.cpu, &mut self.parked[k]);
        self.cur = k;
        let gap = now - self.left_at[k];
        self.cpu.tsc_offset = self.cpu.tsc_offset.wrapping_add(gap);
        self.machine.select_cpu(k);
        self.engine.select_vcpu(k);
    }

    /// Whether vCPU `k` could run now: running, or halted with an event that
    /// wakes it, or waiting for SIPI with an INIT or SIPI pending.
    fn runnable(&mut self, k: usize) -> bool {
        let c = self.cpu_state(k);
        let (state, if_set) = (c.run_state, c.rflags & flags::IF != 0);
        match state {
            RunState::Running => true,
            RunState::Shutdown => true,
            RunState::Halted => self.machine.cpu_wakes(k, if_set, false),
            RunState::WaitForSipi => self.machine.cpu_wakes(k, false, true),
        }
    }

    /// Round robin: the next vCPU after the running one that can run gets a
    /// quantum. False when none can (all halted or waiting for SIPI).
    fn schedule(&mut self) -> bool {
        let n = self.cpu_count();
        for i in 1..=n {
            let k = (self.cur + i) % n;
            if self.runnable(k) {
                self.switch_to(k);
                self.quantum_end = self.cpu.icount + QUANTUM;
                return true;
            }
        }
        false
    }

    /// The running vCPU's INIT and start-up IPIs (SDM vol. 3A §9.4.4): INIT
    /// puts it in its INIT state (an application processor then waits for
    /// SIPI; the TSC, the MSRs and the x87/SSE state are kept); a SIPI starts
    /// a waiting processor in real mode at vector * 4096.
    fn take_cpu_events(&mut self) {
        if self.machine.take_apic_init() {
            let keep = (*self.cpu).clone();
            let mut c = Self::power_on_state(self.cur);
            c.icount = keep.icount;
            c.tsc_offset = keep.tsc_offset;
            c.msr = keep.msr;
            c.sysenter = keep.sysenter;
            c.fpu = keep.fpu;
            c.fx = keep.fx;
            *self.cpu = c;
            self.engine.reset_vcpu(self.cur);
        }
        if let Some(v) = self.machine.take_apic_sipi() {
            if self.cpu.run_state == RunState::WaitForSipi {
                let cs = &mut self.cpu.seg[x86bt_cpu::state::sreg::CS];
                cs.selector = u16::from(v) << 8;
                cs.base = u64::from(v) << 12;
                self.cpu.rip = 0;
                self.cpu.run_state = RunState::Running;
            }
        }
    }

    /// Switches to a fresh `engine` (empty caches, no single-stepping).
    pub fn set_engine(&mut self, engine: Engine) -> Result<(), Error> {
        self.engine = new_engine(engine, self.cur)?;
        self.kind = engine;
        self.engine_breaks = false;
        Ok(())
    }

    /// The engine `run` uses.
    pub fn engine(&self) -> Engine {
        self.kind
    }

    /// The engine's counters for `--stats` (translator and lockstep), if any.
    pub fn engine_stats(&self) -> Option<String> {
        self.engine.stats_text()
    }

    /// The interpreter's unit-cache counters for `--stats`, under
    /// `--engine interp`.
    pub fn interpreter_stats(&self) -> Option<CacheStats> {
        self.engine.cache_stats()
    }

    /// The lockstep engine, if that is the one `run` uses.
    fn lockstep(&mut self) -> Option<&mut Lockstep> {
        self.engine.as_any_mut().downcast_mut::<Lockstep>()
    }

    /// Test hook of `--engine lockstep`: the interpreter runs one instruction
    /// per unit while the translator runs whole units.
    #[doc(hidden)]
    pub fn lockstep_reference_single_step(&mut self, on: bool) {
        if let Some(l) = self.lockstep() {
            l.set_reference_single_step(on);
        }
    }

    /// Test hook of `--engine lockstep`: corrupts the translator's result after
    /// `units` units, so a test can see that the divergence is caught.
    pub fn inject_lockstep_fault(&mut self, units: u64) {
        if let Some(l) = self.lockstep() {
            l.inject_fault_after(units);
        }
    }

    /// Runs one unit on the chosen engine.
    fn run_unit(&mut self) -> UnitExit {
        // A device access inside the unit (or chain) brings the clock to its
        // own instruction's time from here.
        let origin = self.others_icount * NS_PER_INSN + self.idle_ns;
        self.machine.set_clock_origin(origin, NS_PER_INSN);
        self.engine.set_budget(self.budget);
        self.engine.run_unit(&mut self.cpu, &mut self.machine)
    }

    /// Runs one instruction on the debugger's single-stepping interpreter.
    fn run_debug_insn(&mut self) -> UnitExit {
        let origin = self.others_icount * NS_PER_INSN + self.idle_ns;
        self.machine.set_clock_origin(origin, NS_PER_INSN);
        let cur = self.cur;
        let di = self.debug_interp.get_or_insert_with(|| {
            let mut i = Interpreter::new();
            i.set_single_step(true);
            i
        });
        di.select_vcpu(cur);
        di.set_budget(self.budget);
        di.run_unit(&mut self.cpu, &mut self.machine)
    }

    /// Runs one unit on the chosen engine after dropping what it cached from
    /// code written since (for harnesses that drive the VM unit by unit, such
    /// as `x86bt sst`; no devices, no interrupts).
    pub fn step_unit(&mut self) -> UnitExit {
        if self.machine.mem.code_write_pending {
            self.invalidate_written();
        }
        self.run_unit()
    }

    /// Makes every unit one instruction long on the chosen engine, so that
    /// [`Vm::step_unit`] runs exactly one (`x86bt difftest`).
    pub fn set_single_step(&mut self, on: bool) {
        self.engine.set_single_step(on);
    }

    /// Takes the lockstep divergence report, if the lockstep engine found one
    /// since the last call.
    pub fn take_divergence(&mut self) -> Option<String> {
        self.engine.take_divergence()
    }

    /// Drops what the engine cached from code pages written since the last call.
    pub fn invalidate_written(&mut self) {
        let Some(di) = self.debug_interp.as_mut() else {
            self.engine.invalidate_written(&mut self.machine);
            return;
        };
        // Both caches drop the same pages (the list can be taken only once).
        if self.machine.mem.take_flush_all() {
            self.engine.flush();
            di.flush();
        }
        let pages = self.machine.mem.take_dirty_code_pages();
        self.engine.invalidate_pages(&pages);
        di.invalidate_pages(&pages);
    }

    /// Current virtual time.
    pub fn now(&self) -> u64 {
        self.icount() * NS_PER_INSN + self.idle_ns
    }

    fn can_take_interrupt(&self) -> bool {
        self.cpu.rflags & flags::IF != 0 && self.cpu.int_shadow == 0
    }

    /// Runs until the guest stops or `max_insns` instructions have retired.
    pub fn run(&mut self, max_insns: u64) -> RunOutcome {
        loop {
            if let Some(stop) = self.debugger.as_mut().and_then(|d| d.take_stop()) {
                return RunOutcome::Debug(stop);
            }
            if let Some(status) = self.machine.ctl.exit_status() {
                return RunOutcome::DebugExit(status);
            }
            if self.machine.ctl.powered_off() {
                return RunOutcome::PowerOff;
            }
            if let Some(source) = self.machine.ctl.take_reset() {
                if self.no_reboot {
                    return RunOutcome::ResetRequested(source);
                }
                self.reset();
            }
            if self.icount() >= max_insns {
                return RunOutcome::InstructionLimit;
            }
            self.report_guest_errors();
            let raised = |f: &Option<std::sync::Arc<std::sync::atomic::AtomicBool>>| {
                f.as_ref()
                    .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
            };
            if raised(&self.stop_flag) || raised(&self.pause_flag) {
                return RunOutcome::Stopped;
            }
            if let Some(log) = &mut self.input_log {
                match log.boundary(self.cpu.icount + self.others_icount) {
                    crate::replay::Boundary::Go => {}
                    crate::replay::Boundary::End => return RunOutcome::Stopped,
                    crate::replay::Boundary::Diverged(report) => {
                        return RunOutcome::Divergence(report)
                    }
                }
            }
            self.tick_passes += 1;
            if self.tick_passes >= TICK_PASSES {
                self.tick_passes = 0;
                if let Some(t) = &mut self.tick {
                    if t() {
                        return RunOutcome::Stopped;
                    }
                }
            }
            let locked = self.debugger.as_ref().and_then(|d| d.locked());
            if let Some(k) = locked {
                // A debugger lets one vCPU run: it stays on, with no quantum.
                self.switch_to(k);
                self.take_cpu_events();
                if self.cpu.run_state == RunState::WaitForSipi {
                    // Nothing it can do until another vCPU sends SIPI.
                    return RunOutcome::Debug(StopReason::Stepped { cpu: k });
                }
            } else if self.cpu_count() > 1 {
                let keep =
                    self.cpu.run_state == RunState::Running && self.cpu.icount < self.quantum_end;
                if !keep && !self.schedule() {
                    // Every vCPU halted or waits for SIPI.
                    if !self.idle_all() {
                        return RunOutcome::HaltedForever;
                    }
                    continue;
                }
                self.take_cpu_events();
                if self.cpu.run_state == RunState::WaitForSipi {
                    self.quantum_end = self.cpu.icount;
                    continue;
                }
            }
            if self.machine.take_apic_nmi() {
                self.cpu.nmi_pending = 1;
            }
            if self.cpu.nmi_pending != 0 && self.cpu.nmi_blocked == 0 && self.cpu.int_shadow == 0 {
                // NMI: not maskable by IF, blocked until the next IRET.
                self.cpu.nmi_pending = 0;
                self.cpu.nmi_blocked = 1;
                self.cpu.run_state = RunState::Running;
                let ret = self.cpu.rip;
                interrupt::raise_external(&mut self.cpu, &mut self.machine, 2, ret);
            }
            if self.machine.intr() && self.can_take_interrupt() {
                if let Some(vector) = self.machine.acknowledge_interrupt() {
                    self.cpu.run_state = RunState::Running;
                    let ret = self.cpu.rip;
                    interrupt::raise_external(&mut self.cpu, &mut self.machine, vector, ret);
                }
            }
            match self.cpu.run_state {
                RunState::Shutdown if self.no_reboot => return RunOutcome::TripleFault,
                RunState::Shutdown => {
                    // A triple fault resets a PC (the chipset turns the shutdown
                    // cycle into INIT/RESET).
                    self.reset();
                    continue;
                }
                RunState::Halted | RunState::WaitForSipi
                    if self.cpu_count() > 1 && locked.is_none() =>
                {
                    // The next vCPU's turn.
                    self.quantum_end = self.cpu.icount;
                    continue;
                }
                RunState::Halted | RunState::WaitForSipi => {
                    if !self.idle() {
                        return RunOutcome::HaltedForever;
                    }
                    continue;
                }
                RunState::Running => {}
            }
            let debugging = self.debugger.as_ref().is_some_and(|d| d.armed());
            let mut exit = if debugging {
                self.debug_chain(max_insns)
            } else {
                // The translator may repeat a unit that branches back to itself
                // inside its fragment, as the chain below would, up to the same
                // horizon.
                self.budget = self.horizon(max_insns);
                self.run_unit()
            };
            // Units that touch nothing outside the CPU follow each other without a
            // trip through this loop, up to the next device deadline (when an
            // interrupt could next be raised) or the instruction limit.
            if exit == UnitExit::Continue && !debugging {
                let horizon = self.horizon(max_insns);
                self.budget = horizon;
                // An instruction can raise an interrupt line without touching a
                // device (FERR# -> IRQ 13), so INTR is watched too.
                while exit == UnitExit::Continue
                    && self.cpu.icount < horizon
                    && !self.cpu.pause_hint
                    && !(self.machine.intr() && self.can_take_interrupt())
                {
                    exit = self.run_unit();
                }
            }
            // PAUSE: a spin-wait; with other vCPUs, this one's turn ends.
            if std::mem::take(&mut self.cpu.pause_hint) && self.cpu_count() > 1 {
                self.quantum_end = self.cpu.icount;
            }
            if let Some(report) = self.engine.take_divergence() {
                return RunOutcome::Divergence(report);
            }
            match exit {
                UnitExit::Continue | UnitExit::Event | UnitExit::Halted => {}
                UnitExit::Shutdown => continue,
                UnitExit::Unsupported(what) => return RunOutcome::Unsupported(what.to_string()),
            }
            if self.machine.mem.code_write_pending {
                self.invalidate_written();
            }
            // The loop has looked: a port access's mark is moot now.
            self.machine.take_port_attention();
            let now = self.now();
            self.machine.set_time(now);
        }
    }

    /// The run loop's chain of units under a debugger: [`Vm::debug_unit`]
    /// after [`Vm::debug_unit`], stopping where the plain chain stops (an
    /// exit that needs the loop, the horizon, an interrupt to take) and at a
    /// debugger's stop, which the top of the next pass reports.
    fn debug_chain(&mut self, max_insns: u64) -> UnitExit {
        let horizon = self.horizon(max_insns);
        loop {
            let Some(exit) = self.debug_unit(horizon) else {
                // Stopped before the unit: nothing ran.
                return UnitExit::Event;
            };
            if exit != UnitExit::Continue
                || self.debugger.as_ref().is_some_and(|d| d.has_pending())
                || self.cpu.icount >= horizon
                || self.cpu.pause_hint
                || self.machine.mem.code_write_pending
                || (self.machine.intr() && self.can_take_interrupt())
            {
                return exit;
            }
        }
    }

    /// One unit under a debugger ([`crate::debug`]): the breakpoint check
    /// before it (`None`, having run nothing, when it stops there), the
    /// unit, and the watchpoint and step checks after it. Stops are held
    /// for the top of the run loop's next pass. Where the debugger must see
    /// every instruction ([`Debugger::single_at`]) the unit is one
    /// instruction on the debugger's interpreter; elsewhere it is one whole
    /// unit of the chosen engine, without the engine's own chaining, so the
    /// next unit is checked again.
    fn debug_unit(&mut self, horizon: u64) -> Option<UnitExit> {
        let cur = self.cur;
        let lin = self.code_linear(cur);
        let rip = self.cpu.rip;
        let icount = self.cpu.icount;
        let mut single = true;
        if let Some(d) = self.debugger.as_mut() {
            if let Some(stop) = d.before_unit(cur, lin, icount) {
                d.hold(stop);
                return None;
            }
            single = d.single_at(lin);
        }
        // A budget at the current count lets the engine run exactly one
        // unit; an engine that keeps its chaining off the breakpoints'
        // pages may chain up to the horizon (no watchpoint or step is set
        // where `single` is false).
        self.budget = if !single && self.engine_breaks {
            horizon
        } else {
            icount
        };
        let exit = if single {
            self.run_debug_insn()
        } else {
            self.run_unit()
        };
        // A repeated string instruction that yields between batches stays at
        // its own address; its next batch is no new arrival at a breakpoint.
        // (A yield ends its unit with an event; a loop onto itself does not.)
        let resumes = (exit == UnitExit::Event
            && self.cpu.rip == rip
            && self.cpu.icount > icount
            && self.code_linear(cur) == lin
            && self.rep_string_at(cur, lin))
        .then_some(lin);
        let accesses = std::mem::take(&mut self.cpu.access_log);
        if let Some(d) = self.debugger.as_mut() {
            d.after_unit(cur, self.cpu.icount, &accesses, resumes);
        }
        // Keep the allocation for the next instruction's accesses.
        self.cpu.access_log = accesses;
        self.cpu.access_log.clear();
        Some(exit)
    }

    /// The linear address of vCPU `i`'s CS:RIP.
    pub fn code_linear(&self, i: usize) -> u64 {
        let c = self.cpu_state(i);
        x86bt_cpu::engine::code_linear(c, x86bt_cpu::CpuMode::of(c)).0
    }

    /// Whether the instruction at linear `lin` of vCPU `i` is a repeated
    /// string instruction (read without side effects).
    fn rep_string_at(&self, i: usize, lin: u64) -> bool {
        let mut bytes = [0u8; 15];
        let n = self.debug_read(i, lin, &mut bytes);
        let c = self.cpu_state(i);
        let mut dec = iced_x86::Decoder::with_ip(
            x86bt_cpu::CpuMode::of(c).bits(),
            &bytes[..n],
            lin,
            iced_x86::DecoderOptions::NONE,
        );
        let insn = dec.decode();
        !insn.is_invalid()
            && (insn.has_rep_prefix() || insn.has_repne_prefix())
            && insn.is_string_instruction()
    }

    /// Sets the run loop up for what [`Vm::debugger`] holds, before
    /// [`Vm::run`] goes on: with a breakpoint, a watchpoint or `step` (a
    /// vCPU to stop after one of its instructions), the loop runs one unit
    /// per pass and the debugger sees every boundary it needs
    /// ([`Vm::debug_unit`]); with a watchpoint, every vCPU logs its data
    /// accesses. Without anything set, the engine runs at full speed again.
    pub fn debug_resume(&mut self, step: Option<usize>) {
        let from = step.map(|k| (k, self.cpu_state(k).icount));
        let Some(d) = self.debugger.as_mut() else {
            return;
        };
        d.set_step(from);
        let single = d.wants_single_step();
        let watch = d.watching();
        d.set_armed(single);
        let pages = d.break_pages();
        self.engine_breaks = self.engine.set_break_pages(&pages);
        for i in 0..self.cpu_count() {
            let c = self.cpu_state_mut(i);
            if watch && !c.log_accesses {
                c.tlb.fast.flush();
            }
            c.log_accesses = watch;
            c.access_log.clear();
        }
    }

    /// Reads guest memory at linear `lin` as vCPU `i` sees it, through a
    /// page walk without side effects (`mmu::peek_translate`), from RAM and
    /// ROM only (a device register could change when read). Returns how many
    /// bytes were read: fewer than asked where the range runs into an
    /// unmapped page, an address beyond the linear address width, or
    /// anything but RAM and ROM.
    pub fn debug_read(&self, i: usize, lin: u64, buf: &mut [u8]) -> usize {
        for (k, b) in buf.iter_mut().enumerate() {
            match self.debug_phys(i, lin.wrapping_add(k as u64)) {
                Some(p) if self.machine.mem.is_mapped(p) => *b = self.machine.mem.read_u8(p),
                _ => return k,
            }
        }
        buf.len()
    }

    /// Writes guest memory at linear `lin` as vCPU `i` sees it (see
    /// [`Vm::debug_read`]), all or nothing: every byte must reach RAM. Code
    /// cached from the bytes is dropped before the guest runs again.
    pub fn debug_write(&mut self, i: usize, lin: u64, data: &[u8]) -> bool {
        let mut phys = Vec::with_capacity(data.len());
        for k in 0..data.len() {
            match self.debug_phys(i, lin.wrapping_add(k as u64)) {
                Some(p) if self.machine.mem.is_ram(p) => phys.push(p),
                _ => return false,
            }
        }
        for (p, &b) in phys.into_iter().zip(data) {
            self.machine.mem.write_u8(p, b);
        }
        if self.machine.mem.code_write_pending {
            self.invalidate_written();
        }
        true
    }

    /// The guest-physical address of linear `lin` for vCPU `i`, without side
    /// effects; `None` past the 32-bit linear space outside IA-32e mode.
    fn debug_phys(&self, i: usize, lin: u64) -> Option<x86bt_machine::GuestPhys> {
        let c = self.cpu_state(i);
        if c.efer & x86bt_cpu::mode::EFER_LMA == 0 && lin > 0xFFFF_FFFF {
            return None;
        }
        x86bt_cpu::mmu::peek_translate(c, &self.machine, x86bt_machine::Linear(lin))
            .map(|p| x86bt_machine::GuestPhys(p.0 & self.machine.mem.a20_mask()))
    }

    /// Where a chain of units must stop for the run loop, as the running
    /// vCPU's `icount`: the next device deadline (when an interrupt could next
    /// be raised), the instruction limit, the end of its quantum, or a million
    /// instructions from now; now, if an interrupt is deliverable.
    fn horizon(&self, max_insns: u64) -> u64 {
        if self.machine.intr() && self.can_take_interrupt() {
            return self.cpu.icount;
        }
        let others = self.others_icount;
        self.machine
            .next_deadline()
            .map_or(u64::MAX, |d| {
                (d.saturating_sub(self.idle_ns) / NS_PER_INSN).saturating_sub(others)
            })
            .min(max_insns.saturating_sub(others))
            .min(self.quantum_end)
            .min(self.cpu.icount + 1_000_000)
    }

    /// Every vCPU halted or waits for SIPI: skip virtual time to the next
    /// device event. Returns false when nothing can ever wake one (no halted
    /// vCPU takes interrupts, or no device deadline).
    fn idle_all(&mut self) -> bool {
        let n = self.cpu_count();
        let any_if = (0..n).any(|k| {
            let c = self.cpu_state(k);
            c.run_state == RunState::Halted && c.rflags & flags::IF != 0
        });
        any_if && self.skip_to_deadline()
    }

    /// Halted: skip virtual time to the next device event. Returns false when
    /// nothing can ever wake the CPU (interrupts off, or no device deadline).
    fn idle(&mut self) -> bool {
        if self.cpu.rflags & flags::IF == 0 {
            return false;
        }
        if self.machine.intr() {
            return true;
        }
        self.skip_to_deadline()
    }

    /// Moves virtual time to the next device deadline (paced by the wall
    /// clock with [`Vm::pace_idle`]) and brings the devices there. False when
    /// there is no deadline.
    fn skip_to_deadline(&mut self) -> bool {
        let Some(deadline) = self.machine.next_deadline() else {
            return false;
        };
        let now = self.now();
        if deadline > now {
            let gap = deadline - now;
            let replayed = self.input_log.as_mut().and_then(|l| l.replayed_skip(gap));
            let skip = match replayed {
                Some(skip) => skip,
                None if self.pace_idle => self.paced_skip(gap),
                None => gap,
            };
            if replayed.is_none() && skip != gap {
                self.wall_clock_skips += 1;
            }
            if let Some(log) = &mut self.input_log {
                log.note_skip(gap, skip);
            }
            self.idle_ns += skip;
            // The TSC runs on virtual time too, idle time included (a parked
            // vCPU's catches up when it runs again).
            self.cpu.tsc_offset = self.cpu.tsc_offset.wrapping_add(skip);
        }
        let now = self.now();
        self.machine.set_time(now);
        true
    }

    /// Paced idling: sleeps on the host toward a device deadline `gap` ns away
    /// (at most 10 ms at a time, so typed input is seen promptly) and returns how
    /// far virtual time may move: the wall time that passed, never past the
    /// deadline. Oversleep is kept as credit for the next idle period, so over
    /// many short idle periods virtual time keeps to the wall clock.
    fn paced_skip(&mut self, gap: u64) -> u64 {
        const SLICE_NS: u64 = 10_000_000;
        let want = gap.saturating_sub(self.pace_credit_ns).min(SLICE_NS);
        let start = std::time::Instant::now();
        if want > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(want));
        }
        let slept = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let available = slept.saturating_add(self.pace_credit_ns);
        let skip = available.min(gap);
        self.pace_credit_ns = (available - skip).min(SLICE_NS);
        skip
    }

    /// Prints the guest errors the machine recorded (a BAR programmed onto
    /// another range, an MSI nobody takes) with `X86BT_TRACE=guest_errors`,
    /// QEMU's `-d guest_errors`; drops them otherwise.
    fn report_guest_errors(&mut self) {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let errors = self.machine.take_guest_errors();
        if errors.is_empty()
            || !*ON.get_or_init(|| {
                std::env::var("X86BT_TRACE").is_ok_and(|v| v.contains("guest_errors"))
            })
        {
            return;
        }
        for e in errors {
            eprintln!("x86bt: guest error at instruction {}: {e}", self.cpu.icount);
        }
    }

    /// A system reset: the CPU and devices return to their reset state; RAM is
    /// kept, the BIOS window reads ROM again; a directly booted kernel is
    /// loaded and entered again ([`Vm::reboot`]).
    pub fn reset(&mut self) {
        self.switch_to(0);
        for k in 1..self.cpu_count() {
            let icount = self.parked[k].icount;
            *self.parked[k] = Self::power_on_state(k);
            self.parked[k].icount = icount;
        }
        self.quantum_end = if self.cpu_count() > 1 {
            self.cpu.icount + QUANTUM
        } else {
            u64::MAX
        };
        let icount = self.cpu.icount;
        *self.cpu = CpuState::reset();
        self.cpu.icount = icount;
        self.machine.reset_devices();
        self.machine.ctl.set_a20(true);
        self.machine.mem.set_a20(true);
        for i in 0..7 {
            self.machine.ctl.set_pam(i, 0);
        }
        self.machine.advance_devices();
        if let Some(mut boot) = self.reboot.take() {
            boot(&mut self.cpu, &mut self.machine);
            self.reboot = Some(boot);
        }
        self.machine.mem.take_dirty_code_pages();
        self.engine.flush();
        if let Some(di) = self.debug_interp.as_mut() {
            di.flush();
        }
    }
}
