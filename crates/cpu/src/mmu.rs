//! Segmentation and paging: offset -> linear (limit and type checks, with the
//! hidden descriptor cache; in 64-bit mode only the FS/GS bases and the
//! canonical check) -> physical (2-level, PSE, PAE and 4-level paging with NX and
//! 2 MiB/1 GiB pages, the software TLB) -> machine memory. Linear addresses are
//! [`Linear`] values: only segmentation (or a descriptor-table base, for the
//! CPU's own accesses) makes one, so a bare offset cannot be paged by mistake.
//!
//! Real mode performs the limit check too, as a 386 does: a word at offset 0xFFFF
//! of a 64 KiB segment raises #GP(0), or #SS(0) when the segment is SS (SDM vol. 3A
//! §20.1.3). An access that crosses a page boundary translates both pages before
//! touching either, so a #PF on the second page leaves memory unchanged.
//!
//! The TLB is direct-mapped by linear page. An entry records what a user and a
//! supervisor may do with the page, and whether the dirty bit is already set;
//! anything it cannot answer takes the page walk, which sets A/D bits and raises
//! #PF with CR2 and the error code (SDM vol. 3A §4.7).

use crate::exception::Exception;
use crate::mode::EFER_LMA;
use crate::state::{cr0, flags, seg_attr, sreg, CpuState};
use x86bt_machine::{GuestPhys, Linear, Machine};

/// The kind of access, for segment type checks and paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Exec,
}

/// CR4 bits.
pub mod cr4 {
    /// Virtual-8086 mode extensions (not supported).
    pub const VME: u64 = 1 << 0;
    /// Protected-mode virtual interrupts (not supported).
    pub const PVI: u64 = 1 << 1;
    /// Time-stamp disable (RDTSC at CPL > 0 raises #GP).
    pub const TSD: u64 = 1 << 2;
    /// Debugging extensions (DR4/DR5 no longer alias DR6/DR7).
    pub const DE: u64 = 1 << 3;
    /// 4 MiB pages in 2-level paging.
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    /// RDPMC allowed at any CPL.
    pub const PCE: u64 = 1 << 8;
    /// The OS uses FXSAVE/FXRSTOR (SSE instructions are enabled).
    pub const OSFXSR: u64 = 1 << 9;
    /// The OS handles #XM (unmasked SIMD floating-point exceptions raise #XM,
    /// not #UD).
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// The OS uses XSAVE and XCR0.
    pub const OSXSAVE: u64 = 1 << 18;
}

/// EFER bits.
pub mod efer {
    /// SYSCALL/SYSRET enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active (read-only: set by enabling paging with LME).
    pub const LMA: u64 = crate::mode::EFER_LMA;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
}

/// The physical-address width (CPUID 0x80000008 EAX[7:0]), which fixes the
/// reserved bits of PAE and 4-level paging entries.
pub const MAXPHYADDR: u32 = 40;

/// Set in the address of an `undo_log` entry that a page walk's accessed or
/// dirty write made: it is undone with the rest, but it is the CPU's own
/// bookkeeping, not a write of the instruction, so lockstep does not compare
/// it (one engine's TLB may hit where the other walks).
pub const UNDO_WALK: u64 = 1 << 63;

/// Whether `a` is canonical: bits 63:47 all equal (48-bit linear addresses,
/// SDM vol. 1 §3.3.7.1).
#[inline(always)]
pub const fn canonical(a: u64) -> bool {
    (((a << 16) as i64) >> 16) as u64 == a
}

/// Whether the CPU is in 64-bit mode (IA-32e with CS.L).
#[inline(always)]
pub fn in_64bit(cpu: &CpuState) -> bool {
    cpu.efer & EFER_LMA != 0 && cpu.seg[sreg::CS].attrs & seg_attr::L != 0
}

/// The mask linear addresses wrap at: 32 bits outside 64-bit mode.
#[inline(always)]
pub fn lin_mask(cpu: &CpuState) -> u64 {
    if in_64bit(cpu) {
        u64::MAX
    } else {
        0xFFFF_FFFF
    }
}

/// Entries in the TLB and in each privilege's half of the fast TLB. Both are
/// direct-mapped by linear page number, so two pages a multiple of
/// `TLB_SIZE` pages apart evict each other: with 256 entries (1 MiB of
/// linear space) the Linux 686 boot refilled the fast TLB 65.8M times, with
/// 1024 about 1.2M times. A flush costs the entries in use, not the size
/// ([`UsedList`]).
const TLB_SIZE: usize = 1024;
const T_USER_READ: u8 = 1 << 0;
const T_USER_WRITE: u8 = 1 << 1;
const T_SUP_WRITE: u8 = 1 << 2;
const T_DIRTY: u8 = 1 << 3;
const T_GLOBAL: u8 = 1 << 4;
const T_NX: u8 = 1 << 5;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct TlbEntry {
    /// Linear page number + 1; 0 is empty.
    tag: u64,
    phys_page: u64,
    flags: u8,
}

/// One entry of the fast TLB: the linear page base an access must fall in (its
/// last byte too) to read or to write without leaving translated code, and what
/// to add to the linear address to get the host address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastEntry {
    /// Page base reads may use, or [`FAST_INVALID`].
    pub read: u64,
    /// Page base writes may use, or [`FAST_INVALID`].
    pub write: u64,
    /// Host address minus linear address.
    pub addend: u64,
    /// For a write entry tagged with [`FAST_CODE_TAG`] (a page holding cached
    /// code): the address of the page's code-byte map
    /// ([`x86bt_machine::memory::PhysMemory::code_map`]). A write whose bytes
    /// are all clear there may go inline; the others run through the
    /// interpreter, which invalidates what they hit.
    pub code: u64,
}

/// Added to a write tag for a page holding cached code: the inline probe's
/// compare misses, and the cold path checks [`FastEntry::code`] instead.
pub const FAST_CODE_TAG: u64 = 2;

/// A fast-TLB tag no access matches (page bases have bits 11:0 clear).
pub const FAST_INVALID: u64 = 1;
/// Entries per privilege in the fast TLB: the main TLB's size and index.
pub const FAST_TLB_SIZE: usize = TLB_SIZE;

const FAST_EMPTY: FastEntry = FastEntry {
    read: FAST_INVALID,
    write: FAST_INVALID,
    addend: 0,
    code: 0,
};

/// The indices of a TLB's entries that may be in use, so that a flush clears
/// those instead of the whole table (a CR3 write flushes, and most address
/// spaces touch a few dozen pages between two). An index may be listed twice
/// (dropped by INVLPG, then filled again); past [`TLB_SIZE`] notes the list
/// gives up and the next flush clears everything.
#[derive(Clone, Debug, Default)]
struct UsedList {
    idx: Vec<u16>,
    all: bool,
}

impl UsedList {
    #[inline]
    fn note(&mut self, i: usize) {
        if self.idx.len() < TLB_SIZE {
            self.idx.push(i as u16);
        } else {
            self.all = true;
        }
    }

    /// Calls `f` on every index that may be in use (every index once the list
    /// gave up).
    fn each(&self, mut f: impl FnMut(usize)) {
        if self.all {
            (0..TLB_SIZE).for_each(f);
        } else {
            self.idx.iter().for_each(|&i| f(usize::from(i)));
        }
    }

    fn clear(&mut self) {
        self.idx.clear();
        self.all = false;
    }
}

/// The fast TLB that translated code probes inline: linear page to host page,
/// per privilege (supervisor, user). It is a cache of the software TLB: with
/// paging on, an entry exists only while the main TLB holds the same page at the
/// same index with the same rights (a read entry: the access is allowed; a write
/// entry: allowed and the dirty bit set), so an access that hits it has exactly
/// the effects the interpreter's access would have. With paging off it maps
/// linear = physical. It is dropped with the main TLB, and by the translator when
/// the memory map or the set of code pages changes ([`x86bt_machine::memory::PhysMemory::host_epoch`]).
#[derive(Clone, Debug)]
pub struct FastTlb {
    /// Entries by privilege (0 supervisor, 1 user), indexed by linear page.
    pub e: [[FastEntry; FAST_TLB_SIZE]; 2],
    /// Some write entry may be valid.
    pub writes: bool,
    /// Counts whole flushes of this TLB, so that caches of linear-address
    /// translations kept elsewhere (the translator's jump cache) know when to
    /// drop theirs.
    pub generation: u64,
    /// Linear page numbers flushed one by one (INVLPG) since the keeper of such
    /// a cache last took them; more than [`PAGE_NOTES`] count as a whole flush.
    pub page_notes: Vec<u64>,
    /// `PhysMemory::host_epoch` when this TLB's host pointers were last known
    /// good, and `PhysMemory::code_maps_epoch` when its code-map pointers
    /// were: kept with the TLB itself, so that every CPU state (each vCPU,
    /// lockstep's copies) is checked, not only the one that ran last.
    pub host_epoch: u64,
    /// See [`FastTlb::host_epoch`].
    pub maps_epoch: u64,
    /// Indices where either privilege's entry may be in use.
    used: UsedList,
}

/// How many single-page flushes [`FastTlb::page_notes`] keeps.
pub const PAGE_NOTES: usize = 64;

impl Default for FastTlb {
    fn default() -> Self {
        Self {
            e: [[FAST_EMPTY; FAST_TLB_SIZE]; 2],
            writes: false,
            generation: 0,
            page_notes: Vec::new(),
            host_epoch: u64::MAX,
            maps_epoch: u64::MAX,
            used: UsedList::default(),
        }
    }
}

impl FastTlb {
    /// Drops every entry.
    pub fn flush(&mut self) {
        let e = &mut self.e;
        self.used.each(|i| {
            e[0][i] = FAST_EMPTY;
            e[1][i] = FAST_EMPTY;
        });
        self.used.clear();
        self.writes = false;
        self.generation += 1;
        self.page_notes.clear();
    }

    /// Drops the write entries of pages holding code (their code-byte maps may
    /// have been freed).
    pub fn drop_code_writes(&mut self) {
        let e = &mut self.e;
        self.used.each(|i| {
            for set in e.iter_mut() {
                if set[i].write & FAST_CODE_TAG != 0 {
                    set[i].write = FAST_INVALID;
                }
            }
        });
    }

    /// Drops every write entry (reads stay).
    pub fn drop_writes(&mut self) {
        let e = &mut self.e;
        self.used.each(|i| {
            e[0][i].write = FAST_INVALID;
            e[1][i].write = FAST_INVALID;
        });
        self.writes = false;
    }

    fn drop_index(&mut self, i: usize) {
        self.e[0][i] = FAST_EMPTY;
        self.e[1][i] = FAST_EMPTY;
    }
}

/// The software TLB.
#[derive(Clone, Debug)]
pub struct Tlb {
    e: Box<[TlbEntry; TLB_SIZE]>,
    /// The fast TLB (see [`FastTlb`]); not part of the architectural state, so
    /// equality ignores it.
    pub fast: Box<FastTlb>,
    /// Moves whenever an entry is added or dropped, so that a translation the
    /// TLB gave may be reused while it stays (the interpreter's unit that
    /// loops on itself). Equality ignores it.
    epoch: u64,
    /// Indices whose entries may be in use.
    used: UsedList,
}

impl PartialEq for Tlb {
    fn eq(&self, other: &Self) -> bool {
        self.e == other.e
    }
}

impl Eq for Tlb {}

impl Default for Tlb {
    fn default() -> Self {
        Self {
            e: Box::new([TlbEntry::default(); TLB_SIZE]),
            fast: Box::default(),
            epoch: 0,
            used: UsedList::default(),
        }
    }
}

/// The soft TLB's entries, for a snapshot (the fast TLB, which holds host
/// pointers and caches these entries, is rebuilt).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlbEntries(Vec<TlbEntry>);

impl Tlb {
    /// The entries, for a snapshot.
    pub fn save_entries(&self) -> TlbEntries {
        TlbEntries(self.e.to_vec())
    }

    /// A TLB holding `entries` (and an empty fast TLB); `None` if there are
    /// not exactly as many as a TLB has.
    pub fn from_entries(entries: &TlbEntries) -> Option<Self> {
        let mut t = Self::default();
        if entries.0.len() != t.e.len() {
            return None;
        }
        t.e.copy_from_slice(&entries.0);
        for (i, e) in t.e.iter().enumerate() {
            if e.tag != 0 {
                t.used.note(i);
            }
        }
        Some(t)
    }

    /// A value that changes whenever the TLB's contents do: while it stays, a
    /// lookup that hit gives the same answer again.
    #[inline(always)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Drops every entry, or every non-global one.
    pub fn flush(&mut self, keep_global: bool) {
        self.epoch = self.epoch.wrapping_add(1);
        let mut kept = UsedList::default();
        let e = &mut self.e;
        self.used.each(|i| {
            if e[i].tag != 0 {
                if keep_global && e[i].flags & T_GLOBAL != 0 {
                    kept.note(i);
                } else {
                    e[i].tag = 0;
                }
            }
        });
        // An index listed twice is kept twice; the list stays bounded.
        kept.idx.sort_unstable();
        kept.idx.dedup();
        self.used = kept;
        self.fast.flush();
    }
    /// Whether a global-page translation of `lin` is cached.
    pub fn has_global(&self, lin: Linear) -> bool {
        let page = lin.page();
        let e = &self.e[(page as usize) & (TLB_SIZE - 1)];
        e.tag == page + 1 && e.flags & T_GLOBAL != 0
    }

    /// Drops the entry for one linear address (INVLPG), global or not.
    pub fn flush_page(&mut self, lin: Linear) {
        self.epoch = self.epoch.wrapping_add(1);
        let page = lin.page();
        let i = (page as usize) & (TLB_SIZE - 1);
        let e = &mut self.e[i];
        if e.tag == page + 1 {
            e.tag = 0;
        }
        self.fast.drop_index(i);
        if self.fast.page_notes.len() < PAGE_NOTES {
            self.fast.page_notes.push(page);
        } else {
            self.fast.generation += 1;
            self.fast.page_notes.clear();
        }
    }
}

/// Installs a fast-TLB entry for an access of `size` bytes at linear `lin` by
/// the current privilege, after doing what the interpreter's access would do to
/// translate it (page walk, accessed and dirty bits). Returns false, having
/// installed nothing, when the access faults, crosses a page, does not reach
/// plain RAM, or is a write while writes are being logged: the caller then runs
/// the instruction through the interpreter. A write to a page holding cached
/// code installs a write entry tagged [`FAST_CODE_TAG`] with the page's
/// code-byte map, and returns false too: this access runs through the
/// interpreter, and later ones that touch no code byte go inline from the cold
/// path. A non-canonical address gets no entry either (the interpreter raises
/// its #GP or #SS), so no entry's tag is ever a non-canonical page, and a
/// fragment's probe needs no canonical check of its own: such an address
/// misses every entry. Nor does linear page 0 in IA-32e mode: there an access
/// at the top of the address space (linear 2^64 - 15 and up) has its last
/// byte on page 0, and a fragment's probe with a predicted entry compares
/// the page of the last byte (its check that the first byte is not below
/// that page cannot see the wrap); with no page-0 entry such an access
/// misses. (Legacy-mode code forms its addresses in 32 bits, zero-extended,
/// so they cannot wrap to page 0; a change of EFER.LMA goes with a CR0.PG
/// change, which flushes the TLB.)
pub fn fast_fill(cpu: &mut CpuState, m: &mut Machine, lin: Linear, size: u32, write: bool) -> bool {
    let user = cpu.cpl() == 3;
    fast_fill_as(cpu, m, lin, size, write, user)
}

/// [`fast_fill`] for an access with an explicit privilege (`user` false for
/// the CPU's implicit supervisor accesses to descriptor tables, the IDT and
/// the TSS, whatever the CPL). Without paging every access uses the
/// supervisor entries, as [`fast_fill`]'s do.
fn fast_fill_as(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    write: bool,
    user: bool,
) -> bool {
    let lin = lin.0;
    let canonical = ((lin << 16) as i64 >> 16) as u64 == lin;
    if (write && cpu.log_writes)
        || cpu.log_accesses
        || (lin & 0xFFF) + u64::from(size) > 0x1000
        || !canonical
        || (lin >> 12 == 0 && cpu.efer & EFER_LMA != 0)
    {
        return false;
    }
    let user = paging(cpu) && user;
    let acc = if write { Access::Write } else { Access::Read };
    let Ok(phys) = translate_as(cpu, m, Linear(lin), acc, user) else {
        return false;
    };
    // A write to a page with a code-byte map takes the host page as a read
    // would; any other write needs a page without cached code.
    let code = if write {
        m.mem.code_map(phys.0 & !0xFFF)
    } else {
        None
    };
    let Some(host) = m.mem.host_page(phys.0 & !0xFFF, write && code.is_none()) else {
        return false;
    };
    let page = lin & !0xFFF;
    let addend = (host as u64).wrapping_sub(page);
    let i = ((lin >> 12) as usize) & (FAST_TLB_SIZE - 1);
    let fast = &mut *cpu.tlb.fast;
    let e = &mut fast.e[usize::from(user)][i];
    if e.read == FAST_INVALID {
        fast.used.note(i);
    }
    if e.read != page || e.addend != addend {
        *e = FastEntry {
            read: FAST_INVALID,
            write: FAST_INVALID,
            addend,
            code: 0,
        };
    }
    // A write right implies the read right at the same privilege.
    e.read = page;
    if write {
        fast.writes = true;
        if let Some(map) = code {
            e.write = page | FAST_CODE_TAG;
            e.code = map as u64;
            return false;
        }
        e.write = page;
    }
    true
}

/// The fault a segment violation raises for segment register `s`.
#[inline]
pub fn seg_fault(s: usize) -> Exception {
    if s == sreg::SS {
        Exception::StackFault(0)
    } else {
        Exception::GeneralProtection(0)
    }
}

/// Checks an access of `size` bytes at `off` in segment `s` and returns its linear
/// address. In 64-bit mode there are no limit or type checks: the base is 0
/// except for FS and GS, and the address (its first and last byte) must be
/// canonical, or #SS(0) for a stack access and #GP(0) otherwise (SDM vol. 3A
/// §3.4.4, §5.3.1).
#[inline(always)]
pub fn seg_linear(
    cpu: &CpuState,
    s: usize,
    off: u64,
    size: u32,
    acc: Access,
) -> Result<Linear, Exception> {
    if cpu.efer & EFER_LMA != 0 && cpu.seg[sreg::CS].attrs & seg_attr::L != 0 {
        return seg_linear_64(cpu, s, off, size);
    }
    let seg = &cpu.seg[s];
    let last = off.wrapping_add(u64::from(size) - 1);
    let attrs = seg.attrs;
    if attrs & (seg_attr::DC | seg_attr::CODE) == seg_attr::DC {
        // Expand-down data: valid offsets are limit+1 ..= 0xFFFF or 0xFFFFFFFF.
        let upper: u64 = if attrs & seg_attr::DB != 0 {
            0xFFFF_FFFF
        } else {
            0xFFFF
        };
        if off <= u64::from(seg.limit) || last > upper || last < off {
            return Err(seg_fault(s));
        }
    } else if last > u64::from(seg.limit) || last < off {
        return Err(seg_fault(s));
    }
    if cpu.cr0 & cr0::PE != 0 && cpu.rflags & flags::VM == 0 {
        check_type(attrs, s, acc)?;
    }
    Ok(Linear(seg.base.wrapping_add(off) & 0xFFFF_FFFF))
}

/// [`seg_linear`] in 64-bit mode.
#[cold]
fn seg_linear_64(cpu: &CpuState, s: usize, off: u64, size: u32) -> Result<Linear, Exception> {
    let base = if s >= sreg::FS { cpu.seg[s].base } else { 0 };
    let lin = base.wrapping_add(off);
    let last = lin.wrapping_add(u64::from(size) - 1);
    if !canonical(lin) || !canonical(last) {
        return Err(seg_fault(s));
    }
    Ok(Linear(lin))
}

#[inline(always)]
fn check_type(attrs: u16, s: usize, acc: Access) -> Result<(), Exception> {
    // Fast accept: present writable data.
    if attrs & (seg_attr::P | seg_attr::S | seg_attr::CODE | seg_attr::RW)
        == seg_attr::P | seg_attr::S | seg_attr::RW
    {
        return Ok(());
    }
    check_type_slow(attrs, s, acc)
}

/// [`check_type`] past its fast accept.
#[inline(never)]
fn check_type_slow(attrs: u16, s: usize, acc: Access) -> Result<(), Exception> {
    if attrs & seg_attr::P == 0 {
        return Err(seg_fault(s));
    }
    let code = attrs & seg_attr::CODE != 0;
    let rw = attrs & seg_attr::RW != 0;
    let ok = match acc {
        Access::Read => !code || rw,
        Access::Write => !code && rw,
        Access::Exec => code,
    };
    if ok {
        Ok(())
    } else {
        Err(seg_fault(s))
    }
}

/// Whether paging is on.
#[inline(always)]
pub fn paging(cpu: &CpuState) -> bool {
    cpu.cr0 & cr0::PG != 0
}

/// Linear to physical for an access by the current privilege level.
#[inline]
pub fn translate(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    acc: Access,
) -> Result<GuestPhys, Exception> {
    if !paging(cpu) {
        return Ok(GuestPhys(lin.0));
    }
    let user = cpu.cpl() == 3;
    translate_as(cpu, m, lin, acc, user)
}

/// Linear to physical for an access with an explicit privilege (`user` false for
/// the implicit supervisor accesses to descriptor tables and the TSS).
#[inline]
pub fn translate_as(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    acc: Access,
    user: bool,
) -> Result<GuestPhys, Exception> {
    if !paging(cpu) {
        return Ok(GuestPhys(lin.0));
    }
    let page = lin.page();
    let e = cpu.tlb.e[(page as usize) & (TLB_SIZE - 1)];
    if e.tag == page + 1 {
        let ok = match acc {
            Access::Read => !user || e.flags & T_USER_READ != 0,
            Access::Exec => (!user || e.flags & T_USER_READ != 0) && e.flags & T_NX == 0,
            Access::Write => {
                e.flags & T_DIRTY != 0
                    && if user {
                        e.flags & T_USER_WRITE != 0
                    } else {
                        e.flags & T_SUP_WRITE != 0
                    }
            }
        };
        if ok {
            return Ok(GuestPhys((e.phys_page << 12) | (lin.0 & 0xFFF)));
        }
    }
    walk(cpu, m, lin.0, acc, user)
}

fn read_pte(m: &Machine, addr: u64, wide: bool) -> u64 {
    if wide {
        u64::from_le_bytes(m.mem.read::<8>(GuestPhys(addr)))
    } else {
        u64::from(u32::from_le_bytes(m.mem.read::<4>(GuestPhys(addr))))
    }
}

fn write_pte(m: &mut Machine, addr: u64, v: u64, wide: bool) {
    if wide {
        m.mem.write::<8>(GuestPhys(addr), v.to_le_bytes());
    } else {
        m.mem.write::<4>(GuestPhys(addr), (v as u32).to_le_bytes());
    }
}

/// Page-table entry bits the walk reads (SDM vol. 3A §4.3-4.5).
mod pte {
    pub const P: u64 = 1;
    pub const RW: u64 = 2;
    pub const US: u64 = 4;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    pub const NX: u64 = 1 << 63;
}

/// What a page walk read on its way down, before any right is checked or
/// any entry is marked: the page it reaches and the entries that map it.
#[derive(Clone, Copy, Debug)]
struct Walked {
    /// The physical page number.
    phys_page: u64,
    /// The leaf entry (PTE, or the PDE/PDPTE of a large page).
    leaf: u64,
    /// (entry address, entry) of each level from the top down, PAE PDPTEs
    /// excepted (they carry no rights and no accessed bit of the walk's).
    levels: [(u64, u64); 4],
    /// How many of `levels` are filled.
    n: usize,
    /// Entries are 8 bytes (PAE and 4-level paging), not 4.
    wide: bool,
}

/// The read-only half of the page walk (SDM vol. 3A §4.3 32-bit, §4.4 PAE,
/// §4.5 4-level paging): reads the entries for `lin` from the top down and
/// stops at the first one that is not present or has a reserved bit set,
/// returning the #PF that walk raises (`code` holds the W, U and I bits of
/// the error code). It writes nothing: the accessed and dirty bits, the
/// rights and the TLB are [`walk`]'s, so a debugger's [`peek_translate`]
/// walks the same tables without a trace.
fn walk_entries(cpu: &CpuState, m: &Machine, lin: u64, code: u32) -> Result<Walked, Exception> {
    use pte::{NX, P, PS};
    let pae = cpu.cr4 & cr4::PAE != 0;
    let long = cpu.efer & EFER_LMA != 0;
    let nxe = pae && cpu.efer & efer::NXE != 0;
    let fault = |code: u32| Exception::page_fault(lin, code);
    let rsvd = |code: u32| Exception::page_fault(lin, code | 1 | 8);
    // Address bits of an entry: 51:12 within MAXPHYADDR.
    let addr_mask: u64 = ((1u64 << MAXPHYADDR) - 1) & !0xFFF;
    // Reserved above MAXPHYADDR: bits 62:M in PAE paging (SDM vol. 3A Tables
    // 4-8 to 4-11), bits 51:M in 4-level paging, where 62:52 are ignored
    // (Tables 4-14 to 4-19); and bit 63 without NXE.
    let top = if long { 52 } else { 63 };
    let rsvd_high: u64 =
        (((1u64 << top) - 1) & !((1u64 << MAXPHYADDR) - 1)) | if nxe { 0 } else { NX };
    // Levels: (entry address, entry) from the top down.
    let mut levels: [(u64, u64); 4] = [(0, 0); 4];
    let mut n = 0;
    // (table base, index shift) of the next level to read, and the size in
    // bits of the page a PS bit at that level maps (0: PS is reserved there).
    let (mut table, mut shift) = if long {
        (cpu.cr3 & addr_mask, 39)
    } else if pae {
        let pdpte_addr = (cpu.cr3 & 0xFFFF_FFE0) + ((lin >> 30) & 3) * 8;
        let pdpte = read_pte(m, pdpte_addr, true);
        if pdpte & P == 0 {
            return Err(fault(code));
        }
        // PAE PDPTEs: bits 2:1, 8:5 and 63 are reserved too (Table 4-8).
        if pdpte & 0x1E6 != 0 || pdpte & (rsvd_high | NX) != 0 {
            return Err(rsvd(code));
        }
        (pdpte & addr_mask, 21)
    } else {
        (cpu.cr3 & 0xFFFF_F000, 22)
    };
    let wide = pae;
    let (phys_page, leaf) = loop {
        let (idx_bits, width) = if wide { (0x1FF, 8) } else { (0x3FF, 4) };
        let e_addr = table + ((lin >> shift) & idx_bits) * width;
        let e = read_pte(m, e_addr, wide);
        if e & P == 0 {
            return Err(fault(code));
        }
        if wide && e & rsvd_high != 0 {
            return Err(rsvd(code));
        }
        levels[n] = (e_addr, e);
        n += 1;
        if shift == 12 {
            let page = if wide { e & addr_mask } else { e & 0xFFFF_F000 };
            break (page >> 12, e);
        }
        if e & PS != 0 {
            match (wide, shift) {
                // 4 MiB pages need CR4.PSE; without it PS is ignored.
                (false, 22) if cpu.cr4 & cr4::PSE != 0 => {
                    break (((e & 0xFFC0_0000) | (lin & 0x3F_F000)) >> 12, e);
                }
                (false, _) => {}
                // 2 MiB pages: bits 20:13 reserved.
                (true, 21) => {
                    if e & 0x1F_E000 != 0 {
                        return Err(rsvd(code));
                    }
                    break (((e & addr_mask & !0x1F_FFFF) | (lin & 0x1F_F000)) >> 12, e);
                }
                // 1 GiB pages: bits 29:13 reserved.
                (true, 30) => {
                    if e & 0x3FFF_E000 != 0 {
                        return Err(rsvd(code));
                    }
                    break (
                        ((e & addr_mask & !0x3FFF_FFFF) | (lin & 0x3FFF_F000)) >> 12,
                        e,
                    );
                }
                // PS in a PML4E is reserved.
                _ => return Err(rsvd(code)),
            }
        }
        table = if wide { e & addr_mask } else { e & 0xFFFF_F000 };
        shift -= if wide { 9 } else { 10 };
    };
    Ok(Walked {
        phys_page,
        leaf,
        levels,
        n,
        wide,
    })
}

/// Linear to physical as a debugger sees it: the page walk of the current
/// paging mode (CR0.PG, CR4.PAE/PSE, EFER.LMA, CR3) through entries that are
/// present and free of reserved bits, with no right checked (a debugger may
/// look at any mapped page) and nothing written: no accessed or dirty bit, no
/// TLB or fast-TLB entry, no CR2, no fault delivered. `None` when the walk
/// would fault, or the address is not canonical in IA-32e mode. Without
/// paging, linear is physical. The address is used as given (a debugger's
/// addresses are linear; no segment base is added).
pub fn peek_translate(cpu: &CpuState, m: &Machine, lin: Linear) -> Option<GuestPhys> {
    if !paging(cpu) {
        return Some(GuestPhys(lin.0));
    }
    if cpu.efer & EFER_LMA != 0 && !canonical(lin.0) {
        return None;
    }
    let w = walk_entries(cpu, m, lin.0, 0).ok()?;
    Some(GuestPhys((w.phys_page << 12) | (lin.0 & 0xFFF)))
}

/// The page walk: [`walk_entries`], then the rights of the access, then the
/// accessed and dirty bits and the TLB entry.
#[cold]
fn walk(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: u64,
    acc: Access,
    user: bool,
) -> Result<GuestPhys, Exception> {
    use pte::{A, D, G, NX, RW, US};
    let pae = cpu.cr4 & cr4::PAE != 0;
    let nxe = pae && cpu.efer & efer::NXE != 0;
    let write = acc == Access::Write;
    let mut code = (u32::from(write) << 1) | (u32::from(user) << 2);
    if nxe && acc == Access::Exec {
        code |= 1 << 4;
    }
    let Walked {
        phys_page,
        leaf,
        levels,
        n,
        wide,
    } = walk_entries(cpu, m, lin, code)?;
    let fault = |code: u32| Exception::page_fault(lin, code);
    let all = |bit: u64| levels[..n].iter().all(|(_, e)| e & bit != 0);
    let user_ok = all(US);
    let rw_all = all(RW);
    let nx = nxe && levels[..n].iter().any(|(_, e)| e & NX != 0);
    let wp = cpu.cr0 & cr0::WP != 0;
    let sup_write = rw_all || !wp;
    let allowed = match acc {
        Access::Read => !user || user_ok,
        Access::Exec => (!user || user_ok) && !nx,
        Access::Write => {
            if user {
                user_ok && rw_all
            } else {
                sup_write
            }
        }
    };
    if !allowed {
        return Err(fault(code | 1));
    }
    // Set accessed bits on every level, and dirty on the leaf for a write.
    let pae_wide = wide;
    for (i, (addr, e)) in levels[..n].iter().enumerate() {
        let mut v = *e | A;
        if write && i == n - 1 {
            v |= D;
        }
        if v != *e {
            // Lockstep puts memory back after the first engine's run: the
            // walk's accessed/dirty writes must be undone with the rest, or
            // the second run sees entries the first one marked.
            if cpu.log_undo {
                let width = if pae_wide { 8 } else { 4 };
                for i in 0..width {
                    let p = GuestPhys(addr + i);
                    cpu.undo_log.push((p.0 | UNDO_WALK, m.mem.read_u8(p)));
                }
            }
            write_pte(m, *addr, v, pae_wide);
        }
    }
    let dirty = write || leaf & D != 0;
    let mut f = 0u8;
    if user_ok {
        f |= T_USER_READ;
        if rw_all {
            f |= T_USER_WRITE;
        }
    }
    if sup_write {
        f |= T_SUP_WRITE;
    }
    if dirty {
        f |= T_DIRTY;
    }
    if leaf & G != 0 && cpu.cr4 & cr4::PGE != 0 {
        f |= T_GLOBAL;
    }
    if nx {
        f |= T_NX;
    }
    let page = lin >> 12;
    let i = (page as usize) & (TLB_SIZE - 1);
    cpu.tlb.fast.drop_index(i);
    cpu.tlb.epoch = cpu.tlb.epoch.wrapping_add(1);
    if cpu.tlb.e[i].tag == 0 {
        cpu.tlb.used.note(i);
    }
    cpu.tlb.e[i] = TlbEntry {
        tag: page + 1,
        phys_page,
        flags: f,
    };
    Ok(GuestPhys((phys_page << 12) | (lin & 0xFFF)))
}

/// A data read of guest-physical memory: RAM, ROM or memory-mapped I/O
/// ([`Machine::read_phys`]).
/// A device access first brings the machine's clock to the instruction's
/// own time (`icount`), so a device read in a loop that never returns to the
/// run loop (a chain of translated units polling the HPET counter) sees time
/// move.
#[inline]
fn mem_read(icount: u64, m: &mut Machine, p: GuestPhys, size: u32) -> u64 {
    m.read_phys_at(p, size as usize, Some(icount))
}

/// A data write of guest-physical memory ([`Machine::write_phys`]), with the
/// clock brought to the instruction's time for a device (see [`mem_read`]).
#[inline]
fn mem_write(icount: u64, m: &mut Machine, p: GuestPhys, size: u32, value: u64) {
    m.write_phys_at(p, size as usize, value, Some(icount));
}

/// Logs a write of `size` bytes at `lin` (the first `first` bytes at `p1`, the
/// rest at `p2`), with the bytes it overwrites when `log_undo` is set.
fn log_write(
    cpu: &mut CpuState,
    m: &Machine,
    lin: u64,
    size: u32,
    p1: GuestPhys,
    p2: GuestPhys,
    first: u64,
) {
    cpu.write_log.push((lin, size));
    if cpu.log_undo {
        for i in 0..u64::from(size) {
            let p = if i < first {
                p1.add(i)
            } else {
                p2.add(i - first)
            };
            let p = GuestPhys(p.0 & m.mem.a20_mask());
            cpu.undo_log.push((p.0, m.mem.read_u8(p)));
        }
    }
}

/// The linear address `first` bytes after `lin`, wrapping as the mode's linear
/// addresses do.
#[inline]
fn lin_after(cpu: &CpuState, lin: Linear, first: u64) -> Linear {
    Linear(lin.0.wrapping_add(first) & lin_mask(cpu))
}

/// Reads `size` (1, 2, 4 or 8) bytes at linear `lin` with privilege `user`.
///
/// The fast TLB answers first ([`fast_host_as`]): the CPU's own accesses to
/// the IDT, the GDT, the TSS and the stacks of a privilege change (INT n,
/// IRET, far transfers) then cost a probe, not a TLB lookup and a walk of
/// the physical memory map. A miss takes the full path and installs the
/// page's entry for the next access.
#[inline]
pub fn read_lin_as(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    user: bool,
) -> Result<u64, Exception> {
    if let Some(h) = fast_host_as(cpu, m, lin.0, size, false, user) {
        // SAFETY: `fast_host_as` found a RAM page holding all `size` bytes,
        // whose host mapping is current (same `host_epoch`).
        return Ok(unsafe { host_read(h, size) });
    }
    let v = read_lin_slow(cpu, m, lin, size, user)?;
    fast_refill_as(cpu, m, lin.0, size, false, user);
    Ok(v)
}

/// [`read_lin_as`] without the fast TLB.
#[inline(never)]
fn read_lin_slow(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    user: bool,
) -> Result<u64, Exception> {
    if !paging(cpu) {
        log_access(cpu, lin, size, false);
        return Ok(mem_read(cpu.icount, m, GuestPhys(lin.0), size));
    }
    let off = lin.0 & 0xFFF;
    if off + u64::from(size) <= 0x1000 {
        let p = translate_as(cpu, m, lin, Access::Read, user)?;
        log_access(cpu, lin, size, false);
        return Ok(mem_read(cpu.icount, m, p, size));
    }
    let first = 0x1000 - off;
    let p1 = translate_as(cpu, m, lin, Access::Read, user)?;
    let p2 = translate_as(cpu, m, lin_after(cpu, lin, first), Access::Read, user)?;
    log_access(cpu, lin, size, false);
    let mut v = 0u64;
    for i in 0..u64::from(size) {
        let p = if i < first {
            p1.add(i)
        } else {
            p2.add(i - first)
        };
        v |= mem_read(cpu.icount, m, p, 1) << (8 * i);
    }
    Ok(v)
}

/// Writes `size` bytes of `value` at linear `lin` with privilege `user`,
/// through the fast TLB when it answers (see [`read_lin_as`]).
#[inline]
pub fn write_lin_as(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    value: u64,
    user: bool,
) -> Result<(), Exception> {
    if let Some(h) = fast_host_as(cpu, m, lin.0, size, true, user) {
        // SAFETY: `fast_host_as` found a writable RAM page without cached
        // code holding all `size` bytes, whose host mapping is current.
        unsafe { host_write(h, size, value) };
        return Ok(());
    }
    write_lin_slow(cpu, m, lin, size, value, user)?;
    fast_refill_as(cpu, m, lin.0, size, true, user);
    Ok(())
}

/// [`write_lin_as`] without the fast TLB.
#[inline(never)]
fn write_lin_slow(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    value: u64,
    user: bool,
) -> Result<(), Exception> {
    if !paging(cpu) {
        log_access(cpu, lin, size, true);
        if cpu.log_writes {
            log_write(
                cpu,
                m,
                lin.0,
                size,
                GuestPhys(lin.0),
                GuestPhys(lin.0),
                u64::from(size),
            );
        }
        mem_write(cpu.icount, m, GuestPhys(lin.0), size, value);
        return Ok(());
    }
    let off = lin.0 & 0xFFF;
    if off + u64::from(size) <= 0x1000 {
        let p = translate_as(cpu, m, lin, Access::Write, user)?;
        log_access(cpu, lin, size, true);
        if cpu.log_writes {
            log_write(cpu, m, lin.0, size, p, p, u64::from(size));
        }
        mem_write(cpu.icount, m, p, size, value);
        return Ok(());
    }
    let first = 0x1000 - off;
    let p1 = translate_as(cpu, m, lin, Access::Write, user)?;
    let p2 = translate_as(cpu, m, lin_after(cpu, lin, first), Access::Write, user)?;
    log_access(cpu, lin, size, true);
    if cpu.log_writes {
        log_write(cpu, m, lin.0, size, p1, p2, first);
    }
    for i in 0..u64::from(size) {
        let p = if i < first {
            p1.add(i)
        } else {
            p2.add(i - first)
        };
        mem_write(cpu.icount, m, p, 1, value >> (8 * i));
    }
    Ok(())
}

/// Appends a data access that is about to happen (its pages translated) to
/// `access_log` when [`CpuState::log_accesses`] is set.
#[inline(always)]
fn log_access(cpu: &mut CpuState, lin: Linear, size: u32, write: bool) {
    if cpu.log_accesses {
        cpu.access_log.push((lin.0, size, write));
    }
}

/// Reads at linear `lin` with the current privilege level.
#[inline]
pub fn read_lin(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
) -> Result<u64, Exception> {
    let user = paging(cpu) && cpu.cpl() == 3;
    read_lin_as(cpu, m, lin, size, user)
}

/// Writes at linear `lin` with the current privilege level.
#[inline]
pub fn write_lin(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    value: u64,
) -> Result<(), Exception> {
    let user = paging(cpu) && cpu.cpl() == 3;
    write_lin_as(cpu, m, lin, size, value, user)
}

/// A supervisor-level (implicit) read: descriptor tables, the TSS, the IDT.
#[inline]
pub fn read_sys(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
) -> Result<u64, Exception> {
    read_lin_as(cpu, m, lin, size, false)
}

/// [`read_sys`] when the fast TLB answers it (plain RAM, one page, see
/// [`read_lin_as`]), and `None`, having done nothing, otherwise: for a pair of
/// adjacent reads (a descriptor's two dwords) made one where that changes
/// nothing a guest or a device can see.
#[inline]
pub fn fast_read_sys(cpu: &CpuState, m: &Machine, lin: Linear, size: u32) -> Option<u64> {
    let h = fast_host_as(cpu, m, lin.0, size, false, false)?;
    // SAFETY: `fast_host_as` found a RAM page holding all `size` bytes, whose
    // host mapping is current (same `host_epoch`).
    Some(unsafe { host_read(h, size) })
}

/// A supervisor-level (implicit) write.
#[inline]
pub fn write_sys(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    value: u64,
) -> Result<(), Exception> {
    write_lin_as(cpu, m, lin, size, value, false)
}

/// The linear address of byte `off` of a system table at linear `base` (a
/// descriptor table, the IDT, the TSS): 32-bit wrap outside IA-32e mode.
#[inline]
pub fn table_linear(cpu: &CpuState, base: u64, off: u64) -> Linear {
    let sum = base.wrapping_add(off);
    Linear(if cpu.efer & EFER_LMA != 0 {
        sum
    } else {
        sum & 0xFFFF_FFFF
    })
}

/// The host address of an access of `size` bytes at linear `lin` by the current
/// privilege, when the fast TLB ([`FastTlb`]) answers it: the access stays in
/// one page, no data breakpoint is armed, for a write no write log is kept,
/// and the page has an entry of that kind. Such an access is to plain RAM
/// through a translation the main TLB holds with the same rights (for a write,
/// with the dirty bit set, on a page without cached code), so touching the host
/// byte directly does exactly what the page walk, TLB and [`Machine`] path
/// would: nothing but the access itself.
#[inline(always)]
fn fast_host(cpu: &mut CpuState, m: &Machine, lin: u64, size: u32, write: bool) -> Option<*mut u8> {
    if (lin & 0xFFF) + u64::from(size) > 0x1000
        || cpu.dr[7] & 0xFF != 0
        || (write && cpu.log_writes)
    {
        return None;
    }
    if cpu.tlb.fast.host_epoch != m.mem.host_epoch() {
        sync_fast_tlb(cpu, m);
        return None;
    }
    let user = paging(cpu) && cpu.cpl() == 3;
    let e = &cpu.tlb.fast.e[usize::from(user)][((lin >> 12) as usize) & (FAST_TLB_SIZE - 1)];
    let tag = if write { e.write } else { e.read };
    if tag != lin & !0xFFF {
        return None;
    }
    Some(lin.wrapping_add(e.addend) as *mut u8)
}

/// [`fast_host`] for an access with an explicit privilege (`user` false for
/// the CPU's implicit supervisor accesses), by [`read_lin_as`] and
/// [`write_lin_as`]: the same answer, under the same conditions, and with
/// no access log being kept (those accesses log theirs). It changes nothing,
/// not even on a stale host epoch (the next refill or `fast_host` syncs).
#[inline(always)]
fn fast_host_as(
    cpu: &CpuState,
    m: &Machine,
    lin: u64,
    size: u32,
    write: bool,
    user: bool,
) -> Option<*mut u8> {
    if (lin & 0xFFF) + u64::from(size) > 0x1000
        || cpu.dr[7] & 0xFF != 0
        || cpu.log_accesses
        || (write && cpu.log_writes)
        || cpu.tlb.fast.host_epoch != m.mem.host_epoch()
    {
        return None;
    }
    let user = paging(cpu) && user;
    let e = &cpu.tlb.fast.e[usize::from(user)][((lin >> 12) as usize) & (FAST_TLB_SIZE - 1)];
    let tag = if write { e.write } else { e.read };
    if tag != lin & !0xFFF {
        return None;
    }
    Some(lin.wrapping_add(e.addend) as *mut u8)
}

/// How a data access uses the fast TLB in [`fast_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastUse {
    /// A read.
    Read,
    /// A write.
    Write,
    /// A read then a write of the same bytes (a read-modify-write): both
    /// entries must answer.
    Modify,
}

/// The host address of a data access of `size` bytes at `s:off` when the
/// checks [`read`] and [`write`] make all pass on their first, cheapest
/// branch: in 64-bit mode a canonical access; in legacy mode a segment that
/// is not expand-down, with the access within its limit and (in protected
/// mode) present writable data; and a fast-TLB answer ([`fast_host`]) for every access `kind` makes.
/// Then the access through the host address does exactly what [`read`] and
/// [`write`] would. `None` otherwise, with nothing changed: the caller takes
/// the full path, which faults, refills or synchronizes as needed.
///
/// It takes no `&mut` and calls nothing, so a handler whose fast path is
/// this needs no stack frame of its own.
#[inline(always)]
pub fn fast_data(
    cpu: &CpuState,
    m: &Machine,
    s: usize,
    off: u64,
    size: u32,
    kind: FastUse,
) -> Option<*mut u8> {
    let lin = if cpu.efer & EFER_LMA != 0 {
        // 64-bit mode as seg_linear_64 does it; compatibility mode takes the
        // full path.
        if cpu.seg[sreg::CS].attrs & seg_attr::L == 0 {
            return None;
        }
        let base = if s >= sreg::FS { cpu.seg[s].base } else { 0 };
        let lin = base.wrapping_add(off);
        if !canonical(lin) || !canonical(lin.wrapping_add(u64::from(size) - 1)) {
            return None;
        }
        lin
    } else {
        let seg = &cpu.seg[s];
        let last = off.wrapping_add(u64::from(size) - 1);
        let attrs = seg.attrs;
        if attrs & (seg_attr::DC | seg_attr::CODE) == seg_attr::DC
            || last > u64::from(seg.limit)
            || last < off
        {
            return None;
        }
        if cpu.cr0 & cr0::PE != 0
            && cpu.rflags & flags::VM == 0
            && attrs & (seg_attr::P | seg_attr::S | seg_attr::CODE | seg_attr::RW)
                != seg_attr::P | seg_attr::S | seg_attr::RW
        {
            return None;
        }
        seg.base.wrapping_add(off) & 0xFFFF_FFFF
    };
    if (lin & 0xFFF) + u64::from(size) > 0x1000
        || cpu.dr[7] & 0xFF != 0
        || (kind != FastUse::Read && cpu.log_writes)
        || cpu.tlb.fast.host_epoch != m.mem.host_epoch()
    {
        return None;
    }
    let user = paging(cpu) && cpu.cpl() == 3;
    let e = &cpu.tlb.fast.e[usize::from(user)][((lin >> 12) as usize) & (FAST_TLB_SIZE - 1)];
    let page = lin & !0xFFF;
    let hit = match kind {
        FastUse::Read => e.read == page,
        FastUse::Write => e.write == page,
        FastUse::Modify => e.read == page && e.write == page,
    };
    hit.then(|| lin.wrapping_add(e.addend) as *mut u8)
}

/// Reads `size` (1, 2, 4 or 8) little-endian bytes at host address `h`.
///
/// # Safety
/// `h` must be [`fast_data`]'s answer for a read or a read-modify-write of
/// `size` bytes, with nothing run since.
#[inline(always)]
pub unsafe fn fast_read(h: *mut u8, size: u32) -> u64 {
    // SAFETY: `fast_data` found a RAM page holding all `size` bytes, whose host
    // mapping is current; the caller ran nothing since.
    unsafe { host_read(h, size) }
}

/// Writes the low `size` (1, 2, 4 or 8) bytes of `v`, little-endian, at host
/// address `h`.
///
/// # Safety
/// `h` must be [`fast_data`]'s answer for a write or a read-modify-write of
/// `size` bytes, with nothing run since but a [`fast_read`] of it.
#[inline(always)]
pub unsafe fn fast_write(h: *mut u8, size: u32, v: u64) {
    // SAFETY: `fast_data` found a writable RAM page without cached code holding
    // all `size` bytes, whose host mapping is current.
    unsafe { host_write(h, size, v) }
}

/// Drops the fast TLB's host pointers when the memory map under them changed
/// ([`x86bt_machine::memory::PhysMemory::host_epoch`]), as the translator
/// does before it runs a fragment.
#[cold]
fn sync_fast_tlb(cpu: &mut CpuState, m: &Machine) {
    cpu.tlb.fast.flush();
    cpu.tlb.fast.host_epoch = m.mem.host_epoch();
}

/// After an access the slow path made, installs its fast-TLB entry so the
/// next access to the page takes [`fast_host`]. The slow path has just
/// translated the address, so the translation here hits the TLB and has no
/// effect of its own.
#[inline]
fn fast_refill(cpu: &mut CpuState, m: &mut Machine, lin: u64, size: u32, write: bool) {
    let user = cpu.cpl() == 3;
    fast_refill_as(cpu, m, lin, size, write, user);
}

/// [`fast_refill`] for an access with an explicit privilege.
#[inline]
fn fast_refill_as(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: u64,
    size: u32,
    write: bool,
    user: bool,
) {
    if (lin & 0xFFF) + u64::from(size) > 0x1000
        || cpu.dr[7] & 0xFF != 0
        || (write && cpu.log_writes)
        || cpu.tlb.fast.host_epoch != m.mem.host_epoch()
    {
        return;
    }
    let user = paging(cpu) && user;
    let e = &cpu.tlb.fast.e[usize::from(user)][((lin >> 12) as usize) & (FAST_TLB_SIZE - 1)];
    // A write to a page known to hold cached code stays on the slow path,
    // which checks the bytes it touches against the code-byte map.
    if write && e.write == (lin & !0xFFF) | FAST_CODE_TAG {
        return;
    }
    fast_fill_as(cpu, m, Linear(lin), size, write, user);
}

/// Reads `size` (1, 2, 4 or 8) little-endian bytes at host address `h`.
///
/// # Safety
/// `h` must point at `size` readable bytes ([`fast_host`]'s answer).
#[inline(always)]
unsafe fn host_read(h: *const u8, size: u32) -> u64 {
    // SAFETY: the caller guarantees `size` readable bytes at `h`; every read is
    // unaligned-safe.
    unsafe {
        match size {
            1 => u64::from(h.read()),
            2 => u64::from(u16::from_le(h.cast::<u16>().read_unaligned())),
            4 => u64::from(u32::from_le(h.cast::<u32>().read_unaligned())),
            _ => u64::from_le(h.cast::<u64>().read_unaligned()),
        }
    }
}

/// Writes the low `size` (1, 2, 4 or 8) bytes of `v`, little-endian, at host
/// address `h`.
///
/// # Safety
/// `h` must point at `size` writable bytes ([`fast_host`]'s answer for a write).
#[inline(always)]
unsafe fn host_write(h: *mut u8, size: u32, v: u64) {
    // SAFETY: the caller guarantees `size` writable bytes at `h`; every write
    // is unaligned-safe.
    unsafe {
        match size {
            1 => h.write(v as u8),
            2 => h.cast::<u16>().write_unaligned((v as u16).to_le()),
            4 => h.cast::<u32>().write_unaligned((v as u32).to_le()),
            _ => h.cast::<u64>().write_unaligned(v.to_le()),
        }
    }
}

/// Reads `size` bytes at `s:off`.
///
/// Inlined into every handler, so the segment check and the fast-TLB probe
/// see the handler's constant `size`; everything past the fast TLB is one
/// out-of-line call.
#[inline(always)]
pub fn read(
    cpu: &mut CpuState,
    m: &mut Machine,
    s: usize,
    off: u64,
    size: u32,
) -> Result<u64, Exception> {
    let lin = seg_linear(cpu, s, off, size, Access::Read)?;
    if let Some(h) = fast_host(cpu, m, lin.0, size, false) {
        // SAFETY: `fast_host` found a RAM page holding all `size` bytes, whose
        // host mapping is current (same `host_epoch`).
        return Ok(unsafe { host_read(h, size) });
    }
    read_miss(cpu, m, lin, size)
}

/// [`read`] when the fast TLB did not answer: the slow path, then the
/// fast-TLB refill.
#[inline(never)]
fn read_miss(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
) -> Result<u64, Exception> {
    let v = read_slow(cpu, m, lin, size)?;
    fast_refill(cpu, m, lin.0, size, false);
    Ok(v)
}

/// [`read`] past the segment check, without the fast TLB.
#[inline(never)]
fn read_slow(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
) -> Result<u64, Exception> {
    if cpu.cr0 & cr0::PG == 0 && cpu.dr[7] & 0xFF == 0 && !cpu.log_accesses {
        return Ok(mem_read(cpu.icount, m, GuestPhys(lin.0), size));
    }
    if cpu.dr[7] & 0xFF != 0 {
        crate::interp::debug::data_access(cpu, lin.0, size, false);
    }
    let user = paging(cpu) && cpu.cpl() == 3;
    read_lin_slow(cpu, m, lin, size, user)
}

/// Writes `size` bytes at `s:off`. Inlined as [`read`] is.
#[inline(always)]
pub fn write(
    cpu: &mut CpuState,
    m: &mut Machine,
    s: usize,
    off: u64,
    size: u32,
    value: u64,
) -> Result<(), Exception> {
    let lin = seg_linear(cpu, s, off, size, Access::Write)?;
    if let Some(h) = fast_host(cpu, m, lin.0, size, true) {
        // SAFETY: `fast_host` found a writable RAM page without cached code
        // holding all `size` bytes, whose host mapping is current.
        unsafe { host_write(h, size, value) };
        return Ok(());
    }
    write_miss(cpu, m, lin, size, value)
}

/// [`write`] when the fast TLB did not answer: the slow path, then the
/// fast-TLB refill.
#[inline(never)]
fn write_miss(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    value: u64,
) -> Result<(), Exception> {
    write_slow(cpu, m, lin, size, value)?;
    fast_refill(cpu, m, lin.0, size, true);
    Ok(())
}

/// [`write`] past the segment check, without the fast TLB.
#[inline(never)]
fn write_slow(
    cpu: &mut CpuState,
    m: &mut Machine,
    lin: Linear,
    size: u32,
    value: u64,
) -> Result<(), Exception> {
    if cpu.dr[7] & 0xFF != 0 {
        crate::interp::debug::data_access(cpu, lin.0, size, true);
    }
    if !paging(cpu) && !cpu.log_writes && !cpu.log_accesses {
        mem_write(cpu.icount, m, GuestPhys(lin.0), size, value);
        return Ok(());
    }
    let user = paging(cpu) && cpu.cpl() == 3;
    write_lin_slow(cpu, m, lin, size, value, user)
}

/// Checks that `s:off` can be written (segment and page), without writing.
pub fn probe_write(
    cpu: &mut CpuState,
    m: &mut Machine,
    s: usize,
    off: u64,
    size: u32,
) -> Result<(), Exception> {
    let lin = seg_linear(cpu, s, off, size, Access::Write)?;
    if paging(cpu) {
        translate(cpu, m, lin, Access::Write)?;
        let last = lin_after(cpu, lin, u64::from(size) - 1);
        if last.page() != lin.page() {
            translate(cpu, m, last, Access::Write)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Segment;

    #[test]
    fn seg_word_at_ffff_real_mode_raises_gp() {
        let cpu = CpuState::reset();
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0xFFFF, 2, Access::Read),
            Err(Exception::GeneralProtection(0))
        );
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0xFFFE, 2, Access::Read),
            Ok(Linear(0xFFFE))
        );
    }

    #[test]
    fn seg_word_at_ffff_on_stack_raises_ss() {
        let cpu = CpuState::reset();
        assert_eq!(
            seg_linear(&cpu, sreg::SS, 0xFFFF, 2, Access::Write),
            Err(Exception::StackFault(0))
        );
    }

    #[test]
    fn seg_unreal_limit_allows_high_offsets() {
        let mut cpu = CpuState::reset();
        cpu.seg[sreg::DS] = Segment {
            limit: 0xFFFF_FFFF,
            ..Segment::real(0)
        };
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0x10_0000, 4, Access::Read),
            Ok(Linear(0x10_0000))
        );
    }

    #[test]
    fn seg_expand_down_rejects_offsets_at_or_below_limit() {
        let mut cpu = CpuState::reset();
        cpu.seg[sreg::DS] = Segment {
            attrs: seg_attr::P | seg_attr::S | seg_attr::RW | seg_attr::DC,
            limit: 0x0FFF,
            ..Segment::real(0)
        };
        assert!(seg_linear(&cpu, sreg::DS, 0x0FFF, 1, Access::Read).is_err());
        assert_eq!(
            seg_linear(&cpu, sreg::DS, 0x1000, 1, Access::Read),
            Ok(Linear(0x1000))
        );
        assert!(seg_linear(&cpu, sreg::DS, 0xFFFF, 2, Access::Read).is_err());
    }

    fn paged() -> (CpuState, Machine) {
        let mut m = Machine::flat(8 << 20).expect("machine");
        // Page directory at 0x1000, one page table at 0x2000 mapping linear
        // 0x400000.. with PTE 0 -> phys 0x5000 user read-only.
        m.mem
            .write::<4>(GuestPhys(0x1000 + 4), (0x2000u32 | 0x7).to_le_bytes());
        m.mem
            .write::<4>(GuestPhys(0x2000), (0x5000u32 | 0x5).to_le_bytes());
        let mut cpu = CpuState::reset();
        cpu.cr0 = cr0::PE | cr0::PG;
        cpu.cr3 = 0x1000;
        (cpu, m)
    }

    /// A machine whose linear 0x400000.. maps `TLB_SIZE` pages (one whole
    /// direct-mapped round of both TLBs) to physical 0x100000.., supervisor
    /// read/write; the pages with an odd number are global, with CR4.PGE on.
    fn paged_round() -> (CpuState, Machine) {
        let mut m = Machine::flat(8 << 20).expect("machine");
        let tables = 0x1000u32;
        for t in 0..(TLB_SIZE as u32).div_ceil(1024) {
            let pt = 0x2000 + t * 0x1000;
            m.mem.write::<4>(
                GuestPhys(u64::from(tables + 4 * (1 + t))),
                (pt | 0x3).to_le_bytes(),
            );
        }
        for i in 0..TLB_SIZE as u32 {
            let g = if i % 2 == 1 { 0x100 } else { 0 };
            let pte = (0x10_0000 + i * 0x1000) | 0x3 | g;
            m.mem
                .write::<4>(GuestPhys(u64::from(0x2000 + 4 * i)), pte.to_le_bytes());
        }
        let mut cpu = CpuState::reset();
        cpu.cr0 = cr0::PE | cr0::PG;
        cpu.cr3 = u64::from(tables);
        cpu.cr4 |= cr4::PGE;
        (cpu, m)
    }

    /// Fills the TLB and the fast TLB for the first `n` pages of
    /// [`paged_round`], `rounds` times, with an INVLPG of each page between
    /// rounds (each refill notes its index again).
    fn fill_round(cpu: &mut CpuState, m: &mut Machine, n: usize, rounds: usize) {
        for r in 0..rounds {
            for i in 0..n as u64 {
                let lin = Linear(0x40_0000 + i * 0x1000);
                if r > 0 {
                    cpu.tlb.flush_page(lin);
                }
                assert!(fast_fill(cpu, m, lin, 4, true), "page {i} fills");
            }
        }
    }

    fn tlb_used(cpu: &CpuState) -> (usize, usize, usize) {
        let main = cpu.tlb.e.iter().filter(|e| e.tag != 0).count();
        let global = cpu
            .tlb
            .e
            .iter()
            .filter(|e| e.tag != 0 && e.flags & T_GLOBAL != 0)
            .count();
        let fast = cpu
            .tlb
            .fast
            .e
            .iter()
            .flatten()
            .filter(|e| **e != FAST_EMPTY)
            .count();
        (main, global, fast)
    }

    #[test]
    fn a_flush_empties_every_entry_however_many_were_filled() {
        // A few pages; the whole table; and half of it refilled until the
        // list of used indices is full of repeats, then the other half
        // filled (the list gives up and the flush clears all).
        for (first, rounds, n) in [
            (5, 1, 5),
            (TLB_SIZE, 1, TLB_SIZE),
            (TLB_SIZE / 2, 2, TLB_SIZE),
        ] {
            let (mut cpu, mut m) = paged_round();
            fill_round(&mut cpu, &mut m, first, rounds);
            fill_round(&mut cpu, &mut m, n, 1);
            assert_eq!(tlb_used(&cpu), (n, n / 2, n), "{n} pages filled");
            cpu.tlb.flush(false);
            assert_eq!(
                tlb_used(&cpu),
                (0, 0, 0),
                "{first} pages {rounds} times, then {n}"
            );
            // And the next fill and flush start from a clean list.
            fill_round(&mut cpu, &mut m, 3, 1);
            cpu.tlb.flush(false);
            assert_eq!(tlb_used(&cpu), (0, 0, 0));
        }
    }

    #[test]
    fn a_flush_that_keeps_global_pages_still_drops_them_on_the_next_full_one() {
        for n in [6, TLB_SIZE] {
            let (mut cpu, mut m) = paged_round();
            fill_round(&mut cpu, &mut m, n, 1);
            cpu.tlb.flush(true);
            assert_eq!(tlb_used(&cpu), (n / 2, n / 2, 0), "globals kept");
            let p = translate_as(&mut cpu, &mut m, Linear(0x40_1000), Access::Read, false);
            assert_eq!(p, Ok(GuestPhys(0x10_1000)));
            cpu.tlb.flush(false);
            assert_eq!(tlb_used(&cpu), (0, 0, 0), "{n} pages");
        }
    }

    #[test]
    fn dropping_write_entries_reaches_every_filled_index() {
        let (mut cpu, mut m) = paged_round();
        fill_round(&mut cpu, &mut m, TLB_SIZE / 2, 3);
        cpu.tlb.fast.drop_writes();
        let writes = cpu.tlb.fast.e.iter().flatten();
        assert!(writes.clone().all(|e| e.write == FAST_INVALID));
        assert_eq!(
            writes.filter(|e| e.read != FAST_INVALID).count(),
            TLB_SIZE / 2
        );
    }

    #[test]
    fn paging_maps_and_sets_accessed_bits() {
        let (mut cpu, mut m) = paged();
        let p =
            translate_as(&mut cpu, &mut m, Linear(0x40_0123), Access::Read, false).expect("mapped");
        assert_eq!(p, GuestPhys(0x5123));
        let pte = u32::from_le_bytes(m.mem.read::<4>(GuestPhys(0x2000)));
        assert_eq!(pte & 0x20, 0x20, "A set");
    }

    #[test]
    fn paging_not_present_faults_with_error_code() {
        let (mut cpu, mut m) = paged();
        let e = translate_as(&mut cpu, &mut m, Linear(0x40_1000), Access::Write, true);
        assert_eq!(e, Err(Exception::page_fault(0x40_1000, 0b110)));
    }

    #[test]
    fn paging_write_to_read_only_respects_wp() {
        let (mut cpu, mut m) = paged();
        assert!(translate_as(&mut cpu, &mut m, Linear(0x40_0000), Access::Write, false).is_ok());
        cpu.tlb.flush(false);
        cpu.cr0 |= cr0::WP;
        assert_eq!(
            translate_as(&mut cpu, &mut m, Linear(0x40_0000), Access::Write, false),
            Err(Exception::page_fault(0x40_0000, 0b011))
        );
        assert_eq!(
            translate_as(&mut cpu, &mut m, Linear(0x40_0000), Access::Write, true),
            Err(Exception::page_fault(0x40_0000, 0b111))
        );
    }

    /// The bytes of the RAM holding page tables, to compare before and after.
    fn table_bytes(m: &Machine, from: u64, to: u64) -> Vec<u8> {
        let mut b = vec![0u8; (to - from) as usize];
        m.mem.read_bytes(GuestPhys(from), &mut b);
        b
    }

    /// 4-level paging with a 4 KiB page, a 2 MiB page, a 1 GiB page and a
    /// not-present PTE, tables at 0x10000-0x14FFF, entries without A/D bits.
    fn long_paged() -> (CpuState, Machine) {
        let mut m = Machine::flat(8 << 20).expect("machine");
        let w = |m: &mut Machine, a: u64, v: u64| m.mem.write::<8>(GuestPhys(a), v.to_le_bytes());
        // PML4[0] -> PDPT 0x11000; PML4[1] -> PDPT 0x14000 (a 1 GiB page).
        w(&mut m, 0x10000, 0x11000 | 0x7);
        w(&mut m, 0x10008, 0x14000 | 0x3);
        // PDPT[0] -> PD 0x12000; PD[0] -> PT 0x13000; PD[1]: 2 MiB at 0x600000.
        w(&mut m, 0x11000, 0x12000 | 0x7);
        w(&mut m, 0x12000, 0x13000 | 0x7);
        w(&mut m, 0x12008, 0x60_0000 | 0x83);
        // PT[5] -> 0x7000 user read-only; PT[6] not present.
        w(&mut m, 0x13000 + 5 * 8, 0x7000 | 0x5);
        w(&mut m, 0x13000 + 6 * 8, 0x8000);
        // PDPT(1)[2]: 1 GiB page at 0 (linear 0x80_8000_0000).
        w(&mut m, 0x14000 + 2 * 8, 0x83);
        let mut cpu = CpuState::reset();
        cpu.cr0 = cr0::PE | cr0::PG;
        cpu.cr4 = cr4::PAE;
        cpu.efer = efer::LME | efer::LMA;
        cpu.cr3 = 0x10000;
        (cpu, m)
    }

    /// Linear page 0 gets no fast-TLB entry in IA-32e mode (a 64-bit access
    /// that wraps from the top of the address space ends on it, and the
    /// translator's predicted probe would take it), while page 5 of the same
    /// table does; in legacy mode page 0 gets one.
    #[test]
    fn page_zero_gets_no_fast_entry_in_ia32e_mode() {
        let (mut cpu, mut m) = long_paged();
        m.mem
            .write::<8>(GuestPhys(0x13000), (0x9000u64 | 0x7).to_le_bytes());
        assert!(fast_fill(&mut cpu, &mut m, Linear(0x5000), 4, false));
        assert!(!fast_fill(&mut cpu, &mut m, Linear(0x10), 4, false));
        assert!(cpu.tlb.fast.e.iter().flatten().all(|e| e.read != 0));
        // The page itself translates: only the fast entry is withheld.
        let p = translate_as(&mut cpu, &mut m, Linear(0x10), Access::Read, false);
        assert_eq!(p, Ok(GuestPhys(0x9010)));
        let (mut cpu, mut m) = paged_round();
        cpu.cr3 = 0x1000;
        m.mem
            .write::<4>(GuestPhys(0x1000), (0x2000u32 | 0x3).to_le_bytes());
        assert!(fast_fill(&mut cpu, &mut m, Linear(0x10), 4, false));
    }

    #[test]
    fn peek_translate_agrees_with_the_walk_and_leaves_no_trace() {
        for (mut cpu, mut m, lins) in [
            {
                let (c, m) = paged();
                (c, m, vec![0x40_0123u64, 0x40_0FFF])
            },
            {
                let (c, m) = long_paged();
                (c, m, vec![0x5123u64, 0x20_0456, 0x2F_F000, 0x80_8000_1234])
            },
        ] {
            let tables_before = table_bytes(&m, 0x1000, 0x15000);
            let tlb_before = cpu.tlb.clone();
            let peeked: Vec<_> = lins
                .iter()
                .map(|&l| peek_translate(&cpu, &m, Linear(l)))
                .collect();
            assert_eq!(
                table_bytes(&m, 0x1000, 0x15000),
                tables_before,
                "no A/D bit set"
            );
            assert_eq!(cpu.tlb, tlb_before, "no TLB entry filled");
            // The MMU's own walk (which does set A/D and fill the TLB) agrees.
            for (&l, p) in lins.iter().zip(peeked) {
                let walked = translate_as(&mut cpu, &mut m, Linear(l), Access::Read, false);
                assert_eq!(p, walked.ok(), "linear {l:#x}");
            }
            assert_ne!(
                table_bytes(&m, 0x1000, 0x15000),
                tables_before,
                "the real walk sets accessed bits (the check above can fail)"
            );
        }
    }

    #[test]
    fn peek_translate_of_unmapped_or_reserved_is_none_without_fault() {
        let (cpu, m) = long_paged();
        let cr2 = cpu.cr2;
        // A not-present PTE, a not-present PML4E, a non-canonical address
        // whose low 48 bits are mapped.
        assert_eq!(peek_translate(&cpu, &m, Linear(0x6000)), None);
        assert_eq!(peek_translate(&cpu, &m, Linear(0x100_0000_0000)), None);
        assert_eq!(
            peek_translate(&cpu, &m, Linear(0x5000)),
            Some(GuestPhys(0x7000))
        );
        assert_eq!(
            peek_translate(&cpu, &m, Linear(0x0001_0000_0000_5000)),
            None
        );
        let (cpu2, mut m2) = long_paged();
        // A reserved bit (bit 45, above MAXPHYADDR 40) in the PTE.
        m2.mem.write::<8>(
            GuestPhys(0x13000 + 5 * 8),
            (0x7005u64 | 1 << 45).to_le_bytes(),
        );
        assert_eq!(peek_translate(&cpu2, &m2, Linear(0x5000)), None);
        assert_eq!(cpu.cr2, cr2);
        // Paging off: linear is physical.
        let flat = CpuState::reset();
        assert_eq!(
            peek_translate(&flat, &m, Linear(0x12_3456)),
            Some(GuestPhys(0x12_3456))
        );
    }

    #[test]
    fn peek_translate_ignores_rights_the_walk_enforces() {
        // A supervisor-only 2 MiB page is still readable by a debugger even
        // while the CPU runs at CPL 3; the CPU's own user read faults.
        let (mut cpu, mut m) = long_paged();
        assert_eq!(
            peek_translate(&cpu, &m, Linear(0x20_0010)),
            Some(GuestPhys(0x60_0010))
        );
        assert!(translate_as(&mut cpu, &mut m, Linear(0x20_0010), Access::Read, true).is_err());
    }

    #[test]
    fn log_accesses_records_reads_and_writes_past_the_fast_tlb() {
        let (mut cpu, mut m) = paged();
        // Make PTE 0 writable for the write below.
        m.mem
            .write::<4>(GuestPhys(0x2000), (0x5000u32 | 0x7).to_le_bytes());
        cpu.seg[sreg::DS] = Segment {
            limit: 0xFFFF_FFFF,
            ..Segment::real(0)
        };
        // Warm the fast TLB without logging, then turn logging on.
        read(&mut cpu, &mut m, sreg::DS, 0x40_0010, 4).expect("read");
        cpu.log_accesses = true;
        cpu.tlb.fast.flush();
        read(&mut cpu, &mut m, sreg::DS, 0x40_0010, 4).expect("read");
        write(&mut cpu, &mut m, sreg::DS, 0x40_0020, 2, 0xBEEF).expect("write");
        read(&mut cpu, &mut m, sreg::DS, 0x40_0010, 1).expect("read");
        assert_eq!(
            cpu.access_log,
            [
                (0x40_0010, 4, false),
                (0x40_0020, 2, true),
                (0x40_0010, 1, false)
            ]
        );
    }
}
