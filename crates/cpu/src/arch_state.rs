//! The architectural part of [`CpuState`], apart from its caches and logs:
//! what a snapshot saves (and what the GDB server and record/replay can
//! build on).
//!
//! `CpuState` stays one `#[repr(C)]` struct, because the translator
//! addresses its fields by offset; the split is made here, by
//! [`CpuState::arch`] and [`CpuState::from_arch`], which destructure it
//! without `..`: a field added to `CpuState` does not compile until it is
//! put on one side or the other.
//!
//! Saved: registers, segment caches, control, debug and model-specific
//! registers, x87/SSE state, the time-stamp offset and instruction count,
//! interrupt shadow, NMI and run state, and the soft TLB's entries. The TLB
//! is a cache the SDM lets a CPU drop at any time, but what it holds is
//! visible to a guest that changes a page table without INVLPG (the old
//! translation stays until evicted) and decides when accessed and dirty
//! bits are set; keeping it is what makes a restored run retire the same
//! instructions as the run that saved it, for every guest.
//!
//! Not saved, rebuilt: the fast TLB (host pointers, a cache of the soft
//! TLB), `next_rip` (meaningful only inside an instruction), and the
//! harness switches and their logs (`rep_single`, `log_writes`,
//! `write_log`, `log_undo`, `undo_log`, `log_accesses`, `access_log`), which belong to the tool driving
//! the CPU, not to the guest: [`CpuState::from_arch`] takes them from the
//! state it replaces.

use crate::fpu::Fpu;
use crate::identity::{Msrs, P6Counters};
use crate::mmu::{Tlb, TlbEntries};
use crate::state::{RunState, Segment, TableReg};
use crate::CpuState;
use serde::{Deserialize, Serialize};

/// The architectural state of one CPU (see the module comment).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ArchState {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: TableReg,
    pub idtr: TableReg,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub dr: [u64; 8],
    pub tsc_offset: u64,
    pub sysenter: [u64; 3],
    pub perf: P6Counters,
    pub icount: u64,
    pub int_shadow: u8,
    pub run_state: RunState,
    pub nmi_pending: u8,
    pub nmi_blocked: u8,
    #[serde(with = "x86bt_machine::snapshot::byte_array")]
    pub fx: [u8; 512],
    pub fpu: Fpu,
    pub xcr0: u64,
    pub msr: Msrs,
    /// Data breakpoints hit by the instruction in progress; zero between
    /// instructions, kept for exactness.
    pub pending_db: u64,
    /// A PAUSE the run loop has not taken yet.
    pub pause_hint: bool,
    /// The soft TLB's entries.
    pub tlb: TlbEntries,
}

impl CpuState {
    /// The architectural state (see the module comment).
    pub fn arch(&self) -> ArchState {
        let Self {
            gpr,
            rip,
            rflags,
            seg,
            ldtr,
            tr,
            gdtr,
            idtr,
            cr0,
            cr2,
            cr3,
            cr4,
            cr8,
            efer,
            dr,
            tsc_offset,
            sysenter,
            perf,
            icount,
            next_rip: _,
            int_shadow,
            run_state,
            nmi_pending,
            nmi_blocked,
            fx,
            fpu,
            xcr0,
            msr,
            rep_single: _,
            log_writes: _,
            write_log: _,
            pending_db,
            tlb,
            log_undo: _,
            undo_log: _,
            log_accesses: _,
            access_log: _,
            pause_hint,
        } = self;
        ArchState {
            gpr: *gpr,
            rip: *rip,
            rflags: *rflags,
            seg: *seg,
            ldtr: *ldtr,
            tr: *tr,
            gdtr: *gdtr,
            idtr: *idtr,
            cr0: *cr0,
            cr2: *cr2,
            cr3: *cr3,
            cr4: *cr4,
            cr8: *cr8,
            efer: *efer,
            dr: *dr,
            tsc_offset: *tsc_offset,
            sysenter: *sysenter,
            perf: *perf,
            icount: *icount,
            int_shadow: *int_shadow,
            run_state: *run_state,
            nmi_pending: *nmi_pending,
            nmi_blocked: *nmi_blocked,
            fx: *fx,
            fpu: fpu.clone(),
            xcr0: *xcr0,
            msr: *msr,
            pending_db: *pending_db,
            pause_hint: *pause_hint,
            tlb: tlb.save_entries(),
        }
    }

    /// A CPU state with `a`'s architectural state, empty caches, and the
    /// harness switches of `harness` (its logs emptied). `None` if `a`'s
    /// TLB has the wrong number of entries (a damaged snapshot).
    pub fn from_arch(a: &ArchState, harness: &CpuState) -> Option<CpuState> {
        let ArchState {
            gpr,
            rip,
            rflags,
            seg,
            ldtr,
            tr,
            gdtr,
            idtr,
            cr0,
            cr2,
            cr3,
            cr4,
            cr8,
            efer,
            dr,
            tsc_offset,
            sysenter,
            perf,
            icount,
            int_shadow,
            run_state,
            nmi_pending,
            nmi_blocked,
            fx,
            fpu,
            xcr0,
            msr,
            pending_db,
            pause_hint,
            tlb,
        } = a.clone();
        Some(CpuState {
            gpr,
            rip,
            rflags,
            seg,
            ldtr,
            tr,
            gdtr,
            idtr,
            cr0,
            cr2,
            cr3,
            cr4,
            cr8,
            efer,
            dr,
            tsc_offset,
            sysenter,
            perf,
            icount,
            next_rip: rip,
            int_shadow,
            run_state,
            nmi_pending,
            nmi_blocked,
            fx,
            fpu,
            xcr0,
            msr,
            rep_single: harness.rep_single,
            log_writes: harness.log_writes,
            write_log: Vec::new(),
            pending_db,
            tlb: Tlb::from_entries(&tlb)?,
            log_undo: harness.log_undo,
            undo_log: Vec::new(),
            log_accesses: harness.log_accesses,
            access_log: Vec::new(),
            pause_hint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_state_round_trips_and_leaves_caches_and_logs_behind() {
        let mut c = CpuState::reset();
        c.gpr[3] = 0x1234;
        c.cr3 = 0x9000;
        c.icount = 77;
        c.fx[200] = 5;
        c.fpu.top = 3;
        c.msr.lstar = 0xFFFF_8000_0000_0000;
        c.write_log.push((1, 2));
        c.log_writes = true;
        let a = c.arch();
        let harness = CpuState::reset();
        let back = CpuState::from_arch(&a, &harness).expect("entries fit");
        assert_eq!(back.arch(), a);
        assert!(back.write_log.is_empty() && !back.log_writes);
        // Everything CpuState's equality sees is architectural.
        let mut c2 = c.clone();
        c2.write_log.clear();
        c2.log_writes = false;
        assert_eq!(back, c2);
    }
}
