//! [`Vm::save`] and [`Vm::restore`]: the whole VM as a [`Snapshot`] in
//! memory, and back.
//!
//! Saved with the machine and every vCPU's architectural state: the run
//! loop's own state that decides what happens next (which vCPU runs and
//! until when, the instructions the others retired, the virtual time
//! skipped while halted, where each vCPU left off, the tick count). Not
//! saved: the engine and its caches (a restore starts a fresh engine of the
//! VM's own kind, which translates or decodes anew), the host's pacing
//! credit, and the VM's options and hooks (`no_reboot`, `stop_flag`,
//! `pause_flag`, `tick`, `reboot`, `pace_idle`), which the restoring run gives,
//! nor the GDB server's debugger state and the record/replay log (`--restore`
//! is refused with `--record` and `--replay`).
//!
//! A save happens between two passes of the run loop (after [`Vm::run`]
//! returned), where no instruction is half done, so the snapshot is at an
//! instruction boundary that the run itself stopped at: `--max-insns` and
//! `--progress` stop there too, and a run that stops and goes on retires
//! and prints what one that never stopped does.

use super::{new_engine, Vm};
use crate::error::Error;
use crate::snapshot::{Snapshot, VmRunState};
use x86bt_cpu::CpuState;

impl Vm {
    /// The whole VM's state. Fails only when the host fails a device (a
    /// disk image that cannot be read for its identity).
    pub fn save(&mut self) -> Result<Snapshot, Error> {
        let Self {
            cpu: _,
            parked: _,
            cur,
            others_icount,
            left_at,
            quantum_end,
            machine,
            engine: _,
            kind: _,
            budget,
            idle_ns,
            pace_credit_ns: _,
            no_reboot: _,
            stop_flag: _,
            pause_flag: _,
            tick: _,
            tick_passes,
            reboot: _,
            pace_idle: _,
            debugger: _,
            debug_interp: _,
            engine_breaks: _,
            input_log: _,
            wall_clock_skips: _,
        } = self;
        let run = VmRunState {
            cur: *cur,
            others_icount: *others_icount,
            left_at: left_at.clone(),
            quantum_end: *quantum_end,
            budget: *budget,
            idle_ns: *idle_ns,
            tick_passes: *tick_passes,
        };
        let machine_state = machine
            .save_state()
            .map_err(|e| Error::Snapshot(format!("cannot save the machine: {e}")))?;
        let cpus = (0..self.cpu_count())
            .map(|i| self.cpu_state(i).arch())
            .collect();
        Ok(Snapshot {
            shape: self.machine.shape(),
            cpus,
            run,
            machine: machine_state,
            ram: self.machine.mem.save_ram(),
        })
    }

    /// Puts the VM in the state `s` holds. The machine must be of the same
    /// shape (RAM, CPUs, devices, firmware), else nothing changes and the
    /// error says what differs; past that check, an error (a damaged
    /// snapshot, a disk that changed) leaves the VM partly restored, to be
    /// discarded. The engine starts afresh with empty caches.
    pub fn restore(&mut self, s: &Snapshot) -> Result<(), Error> {
        let misfit = |what: String| Error::Snapshot(format!("the snapshot does not fit: {what}"));
        if let Some(d) = s.shape.difference(&self.machine.shape()) {
            return Err(Error::Snapshot(format!(
                "the snapshot was made for another machine: {d}"
            )));
        }
        let n = self.cpu_count();
        if s.cpus.len() != n || s.run.left_at.len() != n || s.run.cur >= n {
            return Err(misfit(format!("{} vCPUs for {n}", s.cpus.len())));
        }
        let engine = new_engine(self.kind, s.run.cur)?;
        let mut cpus = Vec::with_capacity(n);
        for (i, a) in s.cpus.iter().enumerate() {
            let c = CpuState::from_arch(a, self.cpu_state(i))
                .ok_or_else(|| misfit(format!("vCPU {i}'s TLB is damaged")))?;
            cpus.push(Box::new(c));
        }
        self.machine
            .restore_state(&s.machine)
            .map_err(|e| misfit(e.to_string()))?;
        self.machine
            .mem
            .restore_ram(&s.ram)
            .map_err(|e| misfit(e.to_string()))?;
        // The running vCPU's state in `cpu`, a spare in its parked slot.
        let spare = Box::new(CpuState::reset());
        self.cpu = std::mem::replace(&mut cpus[s.run.cur], spare);
        self.parked = cpus;
        let VmRunState {
            cur,
            others_icount,
            left_at,
            quantum_end,
            budget,
            idle_ns,
            tick_passes,
        } = s.run.clone();
        self.cur = cur;
        self.others_icount = others_icount;
        self.left_at = left_at;
        self.quantum_end = quantum_end;
        self.budget = budget;
        self.idle_ns = idle_ns;
        self.tick_passes = tick_passes;
        self.pace_credit_ns = 0;
        self.engine = engine;
        // A fresh engine knows no breakpoint pages until the next resume.
        self.engine_breaks = false;
        // The debugger's interpreter caches decoded code of the old RAM.
        self.debug_interp = None;
        Ok(())
    }
}
