//! The architectural state of one x86 CPU, as a `#[repr(C)]` struct so translated
//! code can address fields by `core::mem::offset_of!`.
//!
//! It is 64-bit-ready: 16 GPRs of 64 bits, RIP, RFLAGS, EFER and the segment
//! caches of long mode are all here even while only real mode runs. Segment
//! registers keep their hidden descriptor cache (base, limit, attributes) as the
//! hardware does (Intel SDM vol. 3A §3.4.3); real-mode loads set base = selector
//! << 4 and leave limit and attributes alone, which is what makes unreal mode work.

/// Indices of the general-purpose registers in [`CpuState::gpr`].
pub mod reg {
    /// RAX
    pub const RAX: usize = 0;
    /// RCX
    pub const RCX: usize = 1;
    /// RDX
    pub const RDX: usize = 2;
    /// RBX
    pub const RBX: usize = 3;
    /// RSP
    pub const RSP: usize = 4;
    /// RBP
    pub const RBP: usize = 5;
    /// RSI
    pub const RSI: usize = 6;
    /// RDI
    pub const RDI: usize = 7;
}

/// Indices of the segment registers in [`CpuState::seg`], in encoding order.
pub mod sreg {
    /// ES
    pub const ES: usize = 0;
    /// CS
    pub const CS: usize = 1;
    /// SS
    pub const SS: usize = 2;
    /// DS
    pub const DS: usize = 3;
    /// FS
    pub const FS: usize = 4;
    /// GS
    pub const GS: usize = 5;
}

/// RFLAGS bits (Intel SDM vol. 1 §3.4.3).
pub mod flags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Reserved, always 1.
    pub const FIXED1: u64 = 1 << 1;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Trap (single step).
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Direction.
    pub const DF: u64 = 1 << 10;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// I/O privilege level (two bits).
    pub const IOPL: u64 = 3 << 12;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Resume.
    pub const RF: u64 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u64 = 1 << 17;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
    /// Virtual interrupt flag.
    pub const VIF: u64 = 1 << 19;
    /// Virtual interrupt pending.
    pub const VIP: u64 = 1 << 20;
    /// CPUID available.
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic status flags.
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
}

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Emulate coprocessor.
    pub const EM: u64 = 1 << 2;
    /// Task switched.
    pub const TS: u64 = 1 << 3;
    /// Extension type (387 present); fixed to 1 on 486 and later.
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// A segment register with its hidden descriptor cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// The visible selector.
    pub selector: u16,
    /// Descriptor attributes: type (bits 0-3), S, DPL (5-6), P (7), AVL (12), L
    /// (13), D/B (14), G (15), in the layout of descriptor bytes 5 and 6.
    pub attrs: u16,
    /// The effective limit in bytes (already scaled by G).
    pub limit: u32,
    /// The linear base.
    pub base: u64,
}

/// Segment attribute bits, in [`Segment::attrs`].
pub mod seg_attr {
    /// Accessed.
    pub const ACCESSED: u16 = 1 << 0;
    /// Writable (data) / readable (code).
    pub const RW: u16 = 1 << 1;
    /// Expand-down (data) / conforming (code).
    pub const DC: u16 = 1 << 2;
    /// Code segment.
    pub const CODE: u16 = 1 << 3;
    /// Code or data (not system).
    pub const S: u16 = 1 << 4;
    /// Present.
    pub const P: u16 = 1 << 7;
    /// 64-bit code.
    pub const L: u16 = 1 << 13;
    /// Default size 32 bits.
    pub const DB: u16 = 1 << 14;
    /// Granularity 4 KiB.
    pub const G: u16 = 1 << 15;
}

impl Segment {
    /// A real-mode segment as left by reset or a real-mode load: base = sel << 4,
    /// 64 KiB limit, present read/write data, accessed.
    pub const fn real(selector: u16) -> Self {
        Self {
            selector,
            attrs: seg_attr::P | seg_attr::S | seg_attr::RW | seg_attr::ACCESSED,
            limit: 0xFFFF,
            base: (selector as u64) << 4,
        }
    }
}

/// A descriptor-table register (GDTR, IDTR).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableReg {
    /// Linear base.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u32,
}

/// Why the CPU is not executing.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunState {
    /// Executing instructions.
    #[default]
    Running = 0,
    /// Stopped by HLT until an interrupt.
    Halted = 1,
    /// Shut down after a triple fault.
    Shutdown = 2,
    /// An application processor after RESET or INIT: it runs nothing until a
    /// start-up IPI (SIPI) names where to begin (SDM vol. 3A §9.4.4).
    WaitForSipi = 3,
}

/// The architectural state. Field order is part of the translator ABI.
#[repr(C)]
#[derive(Clone, Debug, PartialEq)]
pub struct CpuState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8-R15.
    pub gpr: [u64; 16],
    /// The instruction pointer (an offset in CS).
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    /// LDTR with its cache.
    pub ldtr: Segment,
    /// TR with its cache.
    pub tr: Segment,
    /// GDTR.
    pub gdtr: TableReg,
    /// IDTR.
    pub idtr: TableReg,
    /// CR0.
    pub cr0: u64,
    /// CR2 (page-fault linear address).
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (task priority, long mode).
    pub cr8: u64,
    /// EFER.
    pub efer: u64,
    /// DR0-DR7 (DR4/DR5 alias DR6/DR7).
    pub dr: [u64; 8],
    /// Time-stamp counter offset: TSC = icount + tsc_offset.
    pub tsc_offset: u64,
    /// SYSENTER_CS/ESP/EIP MSRs.
    pub sysenter: [u64; 3],
    /// The P6 performance counters (see [`crate::identity`]).
    pub perf: crate::identity::P6Counters,
    /// Instructions retired since reset.
    pub icount: u64,
    /// The instruction pointer after the executing instruction; branch handlers
    /// replace it. Only meaningful while an instruction executes.
    pub next_rip: u64,
    /// Set by MOV SS, POP SS and STI: interrupts are inhibited until after the next
    /// instruction (SDM vol. 3A §6.8.3).
    pub int_shadow: u8,
    /// Running, halted or shut down.
    pub run_state: RunState,
    /// An NMI is waiting for delivery.
    pub nmi_pending: u8,
    /// NMIs are blocked until the next IRET.
    pub nmi_blocked: u8,
    /// The SSE part of the FXSAVE image (MXCSR at bytes 24-27, the XMM registers
    /// at 160-415); the x87 part lives in `fpu`.
    pub fx: [u8; 512],
    /// The x87 FPU.
    pub fpu: crate::fpu::Fpu,
    /// XCR0, the XSAVE feature mask (bit 0, x87, always set; bit 1, SSE).
    pub xcr0: u64,
    /// The long-mode and memory-type MSRs.
    pub msr: crate::identity::Msrs,
    /// When set, a repeated string instruction runs one iteration per step, as
    /// QEMU single-steps them (differential testing).
    pub rep_single: bool,
    /// When set, every guest-memory write is appended to `write_log` as (linear
    /// address, size): the differential tester compares those bytes.
    pub log_writes: bool,
    /// The writes logged since the log was last cleared.
    pub write_log: Vec<(u64, u32)>,
    /// Data breakpoints hit by the executing instruction (DR6 B0-B3 bits).
    pub pending_db: u64,
    /// The software TLB (not architectural; flushed as the SDM says a TLB may be).
    pub tlb: crate::mmu::Tlb,
    /// When set together with `log_writes`, every logged write also appends the
    /// bytes it overwrites to `undo_log`, so lockstep testing can put memory back
    /// and run the same unit again on another engine.
    pub log_undo: bool,
    /// (guest-physical address, old byte) for each byte written while `log_undo`
    /// was set, in write order.
    pub undo_log: Vec<(u64, u8)>,
    /// Set by PAUSE (a spin-wait hint); the run loop takes it and, with
    /// several vCPUs, ends this one's turn.
    pub pause_hint: bool,
    /// When set, every data access that reaches linear memory (reads and
    /// writes, the CPU's implicit ones included; not instruction fetches) is
    /// appended to `access_log`, and the fast TLB takes no entries, so no
    /// access bypasses the log (a debugger's watchpoints; the fast TLB must
    /// be flushed when this is set). Not architectural.
    pub log_accesses: bool,
    /// The accesses logged since the log was last cleared: (linear address,
    /// size, whether it was a write).
    pub access_log: Vec<(u64, u32, bool)>,
}

impl Default for CpuState {
    fn default() -> Self {
        Self::reset()
    }
}

impl CpuState {
    /// The state after RESET (SDM vol. 3A §9.1.1, Table 9-1): CS = F000 with base
    /// FFFF0000, IP = FFF0, EDX holds the processor signature.
    pub fn reset() -> Self {
        let mut seg = [Segment::real(0); 6];
        seg[sreg::CS] = Segment {
            selector: 0xF000,
            attrs: seg_attr::P | seg_attr::S | seg_attr::CODE | seg_attr::RW | seg_attr::ACCESSED,
            limit: 0xFFFF,
            base: 0xFFFF_0000,
        };
        let mut gpr = [0; 16];
        gpr[reg::RDX] = u64::from(crate::identity::SIGNATURE);
        Self {
            gpr,
            rip: 0xFFF0,
            rflags: flags::FIXED1,
            seg,
            ldtr: Segment {
                attrs: 0x82,
                ..Segment::real(0)
            },
            tr: Segment {
                attrs: 0x8B,
                ..Segment::real(0)
            },
            gdtr: TableReg {
                base: 0,
                limit: 0xFFFF,
            },
            idtr: TableReg {
                base: 0,
                limit: 0xFFFF,
            },
            cr0: cr0::CD | cr0::NW | cr0::ET,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            dr: [0, 0, 0, 0, 0xFFFF_0FF0, 0x400, 0xFFFF_0FF0, 0x400],
            tsc_offset: 0,
            sysenter: [0; 3],
            perf: crate::identity::P6Counters::default(),
            icount: 0,
            next_rip: 0xFFF0,
            int_shadow: 0,
            run_state: RunState::Running,
            nmi_pending: 0,
            nmi_blocked: 0,
            fx: FX_RESET,
            fpu: crate::fpu::Fpu::default(),
            xcr0: 1,
            msr: crate::identity::Msrs::default(),
            rep_single: false,
            log_writes: false,
            write_log: Vec::new(),
            pending_db: 0,
            tlb: crate::mmu::Tlb::default(),
            log_undo: false,
            undo_log: Vec::new(),
            pause_hint: false,
            log_accesses: false,
            access_log: Vec::new(),
        }
    }

    /// Whether CR0.PE is set.
    #[inline]
    pub fn protected(&self) -> bool {
        self.cr0 & cr0::PE != 0
    }

    /// Loads a segment register the real-mode way: selector and base only.
    #[inline]
    pub fn load_seg_real(&mut self, s: usize, selector: u16) {
        self.seg[s].selector = selector;
        self.seg[s].base = u64::from(selector) << 4;
    }

    /// Whether the CPU is in virtual-8086 mode.
    #[inline]
    pub fn v86(&self) -> bool {
        self.rflags & flags::VM != 0
    }

    /// The current privilege level: 0 in real mode, 3 in V86 mode, otherwise the
    /// DPL of SS, which always equals CPL in protected mode (SDM vol. 3A §5.5).
    #[inline]
    pub fn cpl(&self) -> u8 {
        if self.cr0 & cr0::PE == 0 {
            0
        } else if self.rflags & flags::VM != 0 {
            3
        } else {
            ((self.seg[sreg::SS].attrs >> 5) & 3) as u8
        }
    }

    /// The I/O privilege level.
    #[inline]
    pub fn iopl(&self) -> u8 {
        ((self.rflags >> 12) & 3) as u8
    }

    /// The 16-bit FLAGS image.
    pub fn flags16(&self) -> u16 {
        self.rflags as u16
    }
}

/// The FXSAVE image at power-on and RESET: MXCSR = 1F80h (all SIMD exceptions
/// masked, round to nearest; SDM vol. 3A Table 9-1), everything else zero.
const FX_RESET: [u8; 512] = {
    let mut fx = [0u8; 512];
    fx[25] = 0x1F;
    fx[24] = 0x80;
    fx
};
