//! What every engine shares, and the one interface the run loop drives them
//! through.
//!
//! An engine runs the guest one translation unit at a time: the interpreter
//! ([`crate::Interpreter`]), the binary translator and lockstep (both in the
//! translator crate) implement [`Engine`], and the VM holds one of them as a
//! `Box<dyn Engine>`. The plumbing below is theirs in common: CS:IP to linear
//! and physical ([`code_address`]), fetching and decoding a unit
//! ([`fetch_unit`]), indexing its code pages so a write invalidates it
//! ([`index_code_pages`], and [`Engine::invalidate_written`], which takes the
//! written pages from memory), and the check that a cached unit may run at
//! another CS:IP alias of its bytes ([`unit_fits`]).

use crate::exception::Exception;
use crate::interp::interpreter::CacheStats;
use crate::interp::Insn;
use crate::mmu;
use crate::mode::CpuMode;
use crate::state::{sreg, CpuState};
use std::any::Any;
use std::collections::HashMap;
use x86bt_decoder::{decode_unit, DecodedUnit, UnitEnd, MAX_INSN_LEN, MAX_UNIT_INSNS};
use x86bt_machine::{GuestPhys, Linear, Machine, PAGE_SIZE};

/// Why [`Engine::run_unit`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitExit {
    /// Instructions ran and nothing needs the run loop: the next unit may follow
    /// at once (no device was touched, no mode or interrupt state changed).
    Continue,
    /// Instructions ran, and the run loop must look before the next unit: a
    /// sensitive instruction ran, an exception was delivered, or the unit was cut
    /// short (a store to code, a yielding REP).
    Event,
    /// The CPU executed HLT.
    Halted,
    /// A triple fault shut the CPU down.
    Shutdown,
    /// The guest entered a mode this build does not implement yet.
    Unsupported(&'static str),
}

/// An execution engine: what the run loop drives, one unit at a time.
///
/// Every engine keeps the one run contract (`docs/translator.md`, "Run
/// contract"), so the run loop, the clock and interrupt delivery cannot tell
/// them apart: the same [`UnitExit`], the same `icount`, RIP and `next_rip`
/// protocol, and the same exception delivery.
pub trait Engine {
    /// Runs one unit at CS:IP. Every instruction that retires or faults counts
    /// once in `cpu.icount`; RIP is left at the next instruction to run; an
    /// exception (the fetch's or an instruction's) is delivered to the guest
    /// here, with RIP at the faulting instruction and every earlier one
    /// committed. An engine may run on past the unit's end (chaining) only up
    /// to the budget ([`Engine::set_budget`]), and never past an instruction
    /// after which the run loop must look ([`UnitExit::Event`]).
    fn run_unit(&mut self, cpu: &mut CpuState, m: &mut Machine) -> UnitExit;

    /// Drops what the engine cached from the RAM pages written since the last
    /// call (`PhysMemory::take_dirty_code_pages`), or everything when the
    /// memory map changed (`PhysMemory::take_flush_all`). The run loop calls
    /// it before the next unit whenever `code_write_pending` is set.
    fn invalidate_written(&mut self, m: &mut Machine) {
        if m.mem.take_flush_all() {
            self.flush();
        }
        let pages = m.mem.take_dirty_code_pages();
        self.invalidate_pages(&pages);
    }

    /// Drops what the engine cached from the RAM pages `pages` (RAM page
    /// numbers, as `PhysMemory::take_dirty_code_pages` returns them), whose
    /// units [`index_code_pages`] recorded.
    fn invalidate_pages(&mut self, pages: &[u64]);

    /// Drops everything the engine cached (a system reset).
    fn flush(&mut self);

    /// Cuts every unit to its first instruction from now on (or not), so that
    /// the caller sees every instruction boundary (`x86bt difftest`).
    fn set_single_step(&mut self, on: bool);

    /// Makes vCPU `n` (numbered from 0) the one whose units run next. An
    /// engine that keeps nothing per vCPU ignores it.
    fn select_vcpu(&mut self, _n: usize) {}

    /// Forgets what was kept for vCPU `n` (an INIT gave it a fresh state).
    fn reset_vcpu(&mut self, _n: usize) {}

    /// The chain horizon: [`Engine::run_unit`] may go on from unit to unit
    /// without returning while `icount` is below `icount_limit`, stopping at
    /// the unit boundary where the run loop's own chain of
    /// [`UnitExit::Continue`] units would stop. An engine that never runs past
    /// one unit ignores it.
    fn set_budget(&mut self, _icount_limit: u64) {}

    /// The linear pages (address >> 12) that hold a debugger's breakpoints,
    /// sorted: an engine that returns true never goes on from one unit into
    /// a unit that starts in one of them without returning first, so the
    /// run loop may let it chain (under the budget) between its breakpoint
    /// checks. The default returns false: the run loop then runs one unit
    /// per call while breakpoints are set.
    fn set_break_pages(&mut self, _pages: &[u64]) -> bool {
        false
    }

    /// The engine's own counters for `--stats`, as printed, if it has any.
    fn stats_text(&self) -> Option<String> {
        None
    }

    /// The interpreter's unit-cache counters (the `--stats` "unit cache"
    /// line), when the engine is the interpreter.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }

    /// Takes the report of a divergence found since the last call. Only
    /// lockstep finds one; the unit that diverged returned
    /// [`UnitExit::Event`], so the run loop looks and stops.
    fn take_divergence(&mut self) -> Option<String> {
        None
    }

    /// The engine itself, for test hooks that reach one engine's own knobs.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// "The unit does not run onto a second page."
pub const NO_PAGE: u64 = u64::MAX;

/// The linear address of CS:IP, and where IP wraps (see [`CpuMode`]).
#[inline]
pub fn code_linear(cpu: &CpuState, mode: CpuMode) -> Linear {
    Linear(cpu.seg[sreg::CS].base.wrapping_add(cpu.rip) & mode.linear_mask())
}

/// A unit fetched and decoded by [`fetch_unit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The physical page the unit runs onto, or [`NO_PAGE`].
    pub next_phys: u64,
    /// The unit ends on an ordinary instruction (not sensitive, not #UD), so the
    /// run loop need not look before the next unit.
    pub plain_end: bool,
}

/// Whether a unit whose last instruction is `last` needs no look from the run
/// loop after it: `last` does not end units (`sensitive::ends_unit`: an
/// ordinary instruction, or IN, OUT, CLI, STI, PUSHF or POPF, which end the
/// unit with an event at run time when they changed something the run loop
/// checks, `Machine::port_attention`), or it is RDTSC or RDTSCP, sensitive but
/// unable to make an interrupt deliverable or change what the run loop checks
/// (the TSC counts retired instructions). An STI that set the interrupt
/// shadow as a unit's last instruction leaves it set, and the next unit runs
/// its first instruction alone, as after any shadow.
pub fn ends_plainly(last: &iced_x86::Instruction) -> bool {
    use iced_x86::Mnemonic as M;
    !x86bt_decoder::sensitive::ends_unit(last) || matches!(last.mnemonic(), M::Rdtsc | M::Rdtscp)
}

/// Fetches the bytes at CS:IP (physical `phys`) and decodes one unit into `out`.
/// Returns the fault the fetch raises if not even the first instruction can be
/// fetched. Both engines decode through here.
pub fn fetch_unit(
    cpu: &mut CpuState,
    m: &mut Machine,
    phys: u64,
    mode: CpuMode,
    out: &mut DecodedUnit,
) -> Result<Fetched, Exception> {
    let ip = cpu.rip;
    let cs = cpu.seg[sreg::CS];
    let lin = code_linear(cpu, mode);
    let page_room = (PAGE_SIZE - (lin.0 & (PAGE_SIZE - 1))) as usize;
    // 64-bit code has no CS limit; the next page's linear address must be
    // canonical instead (the translation below faults otherwise).
    let limit_room = if mode.is_64() {
        usize::MAX
    } else {
        (u64::from(cs.limit) + 1).saturating_sub(ip) as usize
    };
    let want = page_room.min(MAX_UNIT_INSNS * MAX_INSN_LEN) + MAX_INSN_LEN - 1;
    let mut avail = want.min(limit_room);
    let mut cut_by: Exception = Exception::GeneralProtection(0);
    let mut buf = [0u8; MAX_UNIT_INSNS * MAX_INSN_LEN + MAX_INSN_LEN];
    let first = avail.min(page_room);
    for (i, b) in buf.iter_mut().enumerate().take(first) {
        *b = m.mem.read_u8(GuestPhys(phys + i as u64));
    }
    let mut next_phys = NO_PAGE;
    if avail > page_room {
        let next_lin = lin.0.wrapping_add(page_room as u64) & mode.linear_mask();
        let next = if mmu::canonical(next_lin) {
            mmu::translate(cpu, m, Linear(next_lin), mmu::Access::Exec)
        } else {
            Err(Exception::GeneralProtection(0))
        };
        match next {
            Ok(p) => {
                let p = p.0 & m.mem.a20_mask();
                next_phys = p;
                for (i, b) in buf[page_room..avail].iter_mut().enumerate() {
                    *b = m.mem.read_u8(GuestPhys(p + i as u64));
                }
            }
            Err(e) => {
                avail = page_room;
                cut_by = e;
            }
        }
    }
    decode_unit(mode.bitness(), ip, &buf[..avail], page_room, out);
    if out.end == UnitEnd::FetchFault {
        return Err(cut_by);
    }
    // PAUSE ends its unit for the run loop only when another vCPU could take
    // the turn; on a machine of one it is the NOP it architecturally is.
    let solo = m.cpu_count() == 1;
    let plain_end = out.end != UnitEnd::Undecodable
        && out.instructions().last().is_some_and(|i| {
            ends_plainly(i) || (solo && i.mnemonic() == iced_x86::Mnemonic::Pause)
        });
    Ok(Fetched {
        next_phys: if out.byte_len > page_room {
            next_phys
        } else {
            NO_PAGE
        },
        plain_end,
    })
}

/// Marks the bytes `unit` was decoded from ([`code_bytes`] of them from `phys`,
/// the part past its page at `next_phys`, unless [`NO_PAGE`]) as code, and records
/// `slot` under each of their RAM pages in `page_index` (ROM pages are not
/// recorded), so a write to those bytes invalidates the unit. Shared by both
/// engines' caches.
pub fn index_code_pages(
    m: &mut Machine,
    page_index: &mut HashMap<u64, Vec<u32>>,
    (phys, next_phys): (u64, u64),
    unit: &DecodedUnit,
    slot: u32,
) {
    let code_len = code_bytes(unit);
    let first = code_len.min(PAGE_SIZE - (phys & (PAGE_SIZE - 1)));
    let mut pages = [None; 2];
    for (o, (p, len)) in pages
        .iter_mut()
        .zip([(phys, first), (next_phys, code_len - first)])
    {
        if p != NO_PAGE && len > 0 && m.mem.mark_code(GuestPhys(p), len) {
            *o = m.mem.ram_page(GuestPhys(p));
        }
    }
    if pages[1] == pages[0] {
        pages[1] = None;
    }
    for page in pages.into_iter().flatten() {
        let list = page_index.entry(page).or_default();
        if !list.contains(&slot) {
            list.push(slot);
        }
    }
}

/// The bytes a decoded unit depends on: its own, and for a unit that ends on an
/// undecodable instruction the longest instruction's worth (15 bytes, SDM vol. 2A
/// §2.3.11), since a write there could make it decodable.
fn code_bytes(unit: &DecodedUnit) -> u64 {
    let extra = if unit.end == UnitEnd::Undecodable {
        MAX_INSN_LEN as u64
    } else {
        0
    };
    unit.byte_len as u64 + extra
}

/// Whether a cached unit of `byte_len` bytes, decoded at physical `phys` and
/// running onto `next_phys`, may run at the current CS:IP (linear `lin`): it
/// must fit below the CS limit here, and a unit that runs onto the next page must
/// find the same physical page there.
pub fn unit_fits(
    cpu: &mut CpuState,
    m: &mut Machine,
    mode: CpuMode,
    lin: Linear,
    byte_len: u32,
    next_phys: u64,
) -> bool {
    let cs = cpu.seg[sreg::CS];
    let fits = mode.is_64() || cpu.rip + u64::from(byte_len) <= u64::from(cs.limit) + 1;
    fits && (next_phys == NO_PAGE || {
        let next_lin = (lin.0 | (PAGE_SIZE - 1)).wrapping_add(1) & mode.linear_mask();
        mmu::canonical(next_lin)
            && mmu::translate(cpu, m, Linear(next_lin), mmu::Access::Exec)
                .is_ok_and(|p| p.0 & m.mem.a20_mask() == next_phys)
    })
}

/// The linear and physical address of CS:IP for an instruction fetch: #GP(0)
/// when IP is beyond the CS limit (outside 64-bit mode) or RIP is not
/// canonical (in it), else the page walk's fault if any. Every engine starts
/// every unit here.
#[inline]
pub fn code_address(
    cpu: &mut CpuState,
    m: &mut Machine,
    mode: CpuMode,
) -> Result<(Linear, u64), Exception> {
    if mode.is_64() {
        if !mmu::canonical(cpu.rip) {
            return Err(Exception::GeneralProtection(0));
        }
    } else if cpu.rip > u64::from(cpu.seg[sreg::CS].limit) {
        return Err(Exception::GeneralProtection(0));
    }
    let lin = code_linear(cpu, mode);
    let phys = mmu::translate(cpu, m, lin, mmu::Access::Exec)?;
    Ok((lin, phys.0 & m.mem.a20_mask()))
}

/// The address of the instruction after `insn`, which starts at `rip`: IP wraps
/// at 16 bits in 16-bit code and EIP at 32 bits in 32-bit code (SDM vol. 1
/// §3.5: the instruction pointer is as wide as the code), so an instruction
/// that ends at the top of the address space is followed by offset 0, which
/// the CS limit then allows or not.
#[inline(always)]
pub fn next_ip(rip: u64, insn: &Insn) -> u64 {
    let next = rip.wrapping_add(u64::from(insn.len));
    match insn.ins.code_size() {
        iced_x86::CodeSize::Code16 => next & 0xFFFF,
        iced_x86::CodeSize::Code32 => next & 0xFFFF_FFFF,
        _ => next,
    }
}
