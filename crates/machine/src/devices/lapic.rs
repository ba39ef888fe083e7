//! The local APIC, one per CPU (Intel SDM vol. 3A ch. 11, "Advanced
//! Programmable Interrupt Controller (APIC)"; 82489DX-compatible xAPIC and
//! x2APIC).
//!
//! The machine holds the local APICs as typed fields and routes to them: xAPIC
//! accesses in the 4 KiB page at IA32_APIC_BASE (per CPU: each CPU reaches its
//! own), x2APIC accesses through MSRs 0x800-0x8FF, interrupts from the IOAPIC,
//! MSIs and IPIs. This file is the register model, interrupt acceptance and
//! priority, and the timer; it knows nothing of the other APICs: an ICR write
//! leaves an [`Ipi`] for the machine to deliver.
//!
//! Choices where the SDM leaves room, or QEMU's `pc` machine sets the
//! expectation:
//! - version 0x14 (an integrated xAPIC) with 6 LVT entries (timer, thermal,
//!   PMC, LINT0, LINT1, error; the CMCI entry is not implemented: no MCA);
//! - the timer counts at 1 GHz (one tick per nanosecond of virtual time,
//!   divided by the divide configuration);
//! - the bootstrap processor's LINT0 starts in ExtINT mode, unmasked, as
//!   firmware leaves it (QEMU does the same), so the 8259 reaches the CPU
//!   through the APIC in virtual-wire mode from reset on.

use crate::device::Nanos;

/// The architectural default of IA32_APIC_BASE's base field.
pub const DEFAULT_BASE: u64 = 0xFEE0_0000;

/// IA32_APIC_BASE (MSR 0x1B) bits.
pub mod base_msr {
    /// This is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode.
    pub const EXTD: u64 = 1 << 10;
    /// The APIC is globally enabled.
    pub const EN: u64 = 1 << 11;
    /// The base address field (bits 12..MAXPHYADDR).
    pub const BASE_MASK: u64 = 0x0000_00FF_FFFF_F000;
}

/// Register offsets in the xAPIC page (the x2APIC MSR is 0x800 + offset / 16).
pub mod reg {
    /// Local APIC ID.
    pub const ID: u32 = 0x20;
    /// Version.
    pub const VERSION: u32 = 0x30;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// Arbitration priority.
    pub const APR: u32 = 0x90;
    /// Processor priority.
    pub const PPR: u32 = 0xA0;
    /// End of interrupt.
    pub const EOI: u32 = 0xB0;
    /// Remote read.
    pub const RRD: u32 = 0xC0;
    /// Logical destination.
    pub const LDR: u32 = 0xD0;
    /// Destination format.
    pub const DFR: u32 = 0xE0;
    /// Spurious interrupt vector.
    pub const SVR: u32 = 0xF0;
    /// In-service register, 8 words.
    pub const ISR: u32 = 0x100;
    /// Trigger mode register, 8 words.
    pub const TMR: u32 = 0x180;
    /// Interrupt request register, 8 words.
    pub const IRR: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command, low word.
    pub const ICR_LO: u32 = 0x300;
    /// Interrupt command, high word (xAPIC destination).
    pub const ICR_HI: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT performance counters.
    pub const LVT_PMC: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u32 = 0x3E0;
    /// Self IPI (x2APIC only).
    pub const SELF_IPI: u32 = 0x3F0;
}

/// The version register: version 0x14, 6 LVT entries (max LVT index 5).
const VERSION: u32 = 0x0005_0014;
/// LVT: the mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer: the mode field (bits 18:17: one-shot, periodic, TSC-deadline).
const TIMER_MODE_SHIFT: u32 = 17;
/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;

/// The LVT entries, in register order from the timer.
const LVT_TIMER: usize = 0;
const LVT_THERMAL: usize = 1;
const LVT_PMC: usize = 2;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;

/// Writable bits of each LVT entry (SDM vol. 3A Figure 11-8): vector,
/// delivery mode where the entry has one, pin polarity and trigger mode for
/// LINT0/1, the mask, and the timer mode.
const LVT_WRITABLE: [u32; 6] = [
    0x0007_00FF, // timer: vector, mask, mode (bits 18:17)
    0x0001_07FF, // thermal: vector, delivery mode, mask
    0x0001_07FF, // PMC
    0x0001_A7FF, // LINT0: vector, mode, polarity, trigger, mask
    0x0001_A7FF, // LINT1
    0x0001_00FF, // error: vector, mask
];

/// Delivery modes (ICR, LVT, IOAPIC and MSI all use this encoding).
pub mod mode {
    /// Fixed.
    pub const FIXED: u8 = 0;
    /// Lowest priority.
    pub const LOWEST: u8 = 1;
    /// System management interrupt.
    pub const SMI: u8 = 2;
    /// NMI.
    pub const NMI: u8 = 4;
    /// INIT.
    pub const INIT: u8 = 5;
    /// Start-up (SIPI).
    pub const STARTUP: u8 = 6;
    /// External interrupt (the 8259's vector).
    pub const EXTINT: u8 = 7;
}

/// ESR bits the model can raise.
mod esr {
    /// A vector below 16 was sent.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// A vector below 16 was received.
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// An access to a register that does not exist (x2APIC: a reserved MSR
    /// raises #GP instead; xAPIC sets this bit).
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// An interprocessor interrupt from an ICR write, for the machine to route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ipi {
    /// The destination field: an APIC ID (physical) or a logical mask, 8 bits
    /// in xAPIC mode, 32 in x2APIC mode.
    pub dest: u32,
    /// Logical destination mode.
    pub logical: bool,
    /// The shorthand: 0 none, 1 self, 2 all including self, 3 all excluding self.
    pub shorthand: u8,
    /// The delivery mode ([`mode`]).
    pub mode: u8,
    /// The vector.
    pub vector: u8,
    /// Level (for INIT: assert, or the level de-assert that does nothing on
    /// current CPUs).
    pub assert: bool,
    /// Level-triggered.
    pub level: bool,
}

/// What the CPU should take next from its APIC, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A fixed interrupt with this vector is deliverable (above the PPR).
    Vector(u8),
    /// LINT0 in ExtINT mode and the 8259 asserts INTR: the vector comes from
    /// the 8259's acknowledge cycle.
    ExtInt,
}

/// One local APIC.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Lapic {
    /// The APIC ID (as at reset; xAPIC software may rewrite the ID register).
    initial_id: u32,
    id: u32,
    base: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    esr: u32,
    /// Errors since the last ESR write (the ESR shows them after a write).
    esr_pending: u32,
    icr: u64,
    lvt: [u32; 6],
    /// LINT0 and LINT1 input levels (level-triggered LVT entries).
    nmi_pending: bool,
    init_pending: bool,
    sipi_vector: Option<u8>,
    timer_initial: u32,
    timer_divide: u32,
    /// When the current count was loaded (one-shot/periodic).
    timer_start: Nanos,
    /// The next expiry, if the timer is armed.
    timer_deadline: Option<Nanos>,
    /// TSC-deadline mode: the IA32_TSC_DEADLINE value, and its time.
    tsc_deadline: u64,
    /// ICR writes not yet delivered by the machine.
    ipis: Vec<Ipi>,
}

impl Lapic {
    /// The local APIC of CPU `id` at power-on; `bsp` for the bootstrap
    /// processor.
    pub fn new(id: u32, bsp: bool) -> Self {
        let mut l = Self {
            initial_id: id,
            id,
            base: DEFAULT_BASE | base_msr::EN | if bsp { base_msr::BSP } else { 0 },
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xFF,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [LVT_MASKED; 6],
            nmi_pending: false,
            init_pending: false,
            sipi_vector: None,
            timer_initial: 0,
            timer_divide: 0,
            timer_start: 0,
            timer_deadline: None,
            tsc_deadline: 0,
            ipis: Vec::new(),
        };
        l.reset_registers();
        l
    }

    /// The register state of a reset or INIT (SDM vol. 3A §11.4.7.3): the ID
    /// and IA32_APIC_BASE are kept; everything else returns to its power-on
    /// value.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xFF;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; 6];
        if self.is_bsp() {
            // Virtual-wire mode, as firmware leaves the BSP: the 8259 reaches
            // the CPU through LINT0.
            self.lvt[LVT_LINT0] = u32::from(mode::EXTINT) << 8;
        }
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.timer_deadline = None;
        self.tsc_deadline = 0;
    }

    /// A system reset: the power-on state, IA32_APIC_BASE included.
    pub fn reset(&mut self) {
        let bsp = self.is_bsp();
        *self = Self::new(self.initial_id, bsp);
    }

    /// An INIT (from an IPI or the INIT pin): the registers reset, the ID and
    /// IA32_APIC_BASE kept.
    pub fn init(&mut self) {
        self.reset_registers();
    }

    /// Whether this is the bootstrap processor's APIC.
    pub fn is_bsp(&self) -> bool {
        self.base & base_msr::BSP != 0
    }

    /// The APIC ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The initial APIC ID (what CPUID reports, whatever the guest wrote to
    /// the ID register since).
    pub fn initial_id(&self) -> u32 {
        self.initial_id
    }

    /// IA32_APIC_BASE.
    pub fn base_msr(&self) -> u64 {
        self.base
    }

    /// The guest-physical address of the xAPIC page, if the APIC is enabled
    /// in xAPIC mode (x2APIC mode has no MMIO window).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.base & (base_msr::EN | base_msr::EXTD) == base_msr::EN)
            .then_some(self.base & base_msr::BASE_MASK)
    }

    /// Whether the APIC is globally enabled.
    pub fn enabled(&self) -> bool {
        self.base & base_msr::EN != 0
    }

    /// Whether it is in x2APIC mode.
    pub fn x2apic(&self) -> bool {
        self.base & (base_msr::EN | base_msr::EXTD) == base_msr::EN | base_msr::EXTD
    }

    fn software_enabled(&self) -> bool {
        self.enabled() && self.svr & SVR_ENABLE != 0
    }

    /// A WRMSR to IA32_APIC_BASE. Returns false for a value the SDM makes
    /// #GP(0): reserved bits, x2APIC mode while disabled, or leaving x2APIC
    /// mode for xAPIC mode directly (SDM vol. 3A §11.12.5, Figure 11-27).
    pub fn set_base_msr(&mut self, value: u64) -> bool {
        let writable = base_msr::BSP | base_msr::EXTD | base_msr::EN | base_msr::BASE_MASK;
        if value & !writable != 0 {
            return false;
        }
        let (en, extd) = (value & base_msr::EN != 0, value & base_msr::EXTD != 0);
        if extd && !en {
            return false;
        }
        if self.x2apic() && en && !extd {
            return false;
        }
        let was_enabled = self.enabled();
        // BSP is read-only: it stays what the platform made it.
        self.base = (value & !base_msr::BSP) | (self.base & base_msr::BSP);
        if was_enabled && !en {
            // Global disable: the APIC returns to its power-on state, and its
            // LVTs are masked (SDM vol. 3A §11.4.3).
            self.reset_registers();
            self.lvt = [LVT_MASKED; 6];
        }
        if !was_enabled && en {
            self.reset_registers();
        }
        if extd {
            // x2APIC: the logical ID is derived from the APIC ID.
            self.ldr = ((self.id >> 4) << 16) | (1 << (self.id & 15));
        }
        true
    }

    /// Whether an interrupt message to `dest` (physical: an APIC ID, or all
    /// ones to broadcast; logical: a mask matched against the LDR, in the
    /// flat or cluster model of the DFR, or x2APIC's cluster scheme) names
    /// this APIC (SDM vol. 3A §11.6.2).
    pub fn is_destination(&self, dest: u32, logical: bool) -> bool {
        let x2 = self.x2apic();
        if !logical {
            let all = if x2 { u32::MAX } else { 0xFF };
            return dest == all || dest == self.id;
        }
        if x2 {
            return dest == u32::MAX
                || (dest >> 16 == self.ldr >> 16 && dest & self.ldr & 0xFFFF != 0);
        }
        let dest = dest & 0xFF;
        let mine = self.ldr >> 24;
        if dest == 0xFF {
            return true;
        }
        if self.dfr >> 28 == 0xF {
            dest & mine != 0
        } else {
            dest >> 4 == mine >> 4 && dest & mine & 0xF != 0
        }
    }

    // ---- priority and acceptance ----

    fn highest(bits: &[u32; 8]) -> Option<u8> {
        (0..8)
            .rev()
            .find(|&w| bits[w] != 0)
            .map(|w| (w as u32 * 32 + 31 - bits[w].leading_zeros()) as u8)
    }

    fn test(bits: &[u32; 8], v: u8) -> bool {
        bits[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }

    fn set(bits: &mut [u32; 8], v: u8, on: bool) {
        let w = &mut bits[usize::from(v >> 5)];
        if on {
            *w |= 1 << (v & 31);
        } else {
            *w &= !(1 << (v & 31));
        }
    }

    /// The processor priority (SDM vol. 3A §11.8.3.1): the TPR if its class
    /// is at least that of the highest in-service vector, else that class.
    pub fn ppr(&self) -> u8 {
        let isrv = Self::highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The task priority register (CR8 is its bits 7:4 in 64-bit mode).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the TPR (a register write, or MOV to CR8 with `cr8 << 4`).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// A fixed or lowest-priority interrupt arrives with `vector`; `level`
    /// for level-triggered ones (their EOI is broadcast to the IOAPIC).
    /// Vectors 0-15 are illegal: the receive error is logged and the
    /// interrupt dropped (SDM vol. 3A §11.5.3).
    pub fn accept(&mut self, vector: u8, level: bool) {
        if !self.enabled() {
            return;
        }
        if vector < 16 {
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        Self::set(&mut self.irr, vector, true);
        Self::set(&mut self.tmr, vector, level);
    }

    /// Logs an error in the ESR and raises the error LVT.
    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        if lvt & LVT_MASKED == 0 {
            self.accept((lvt & 0xFF) as u8, false);
        }
    }

    /// An NMI arrives (delivery mode NMI, or LINT1 in NMI mode).
    pub fn accept_nmi(&mut self) {
        if self.enabled() {
            self.nmi_pending = true;
        }
    }

    /// An INIT arrives.
    pub fn accept_init(&mut self) {
        if self.enabled() {
            self.init_pending = true;
        }
    }

    /// A start-up IPI arrives with `vector` (the CPU starts at vector * 4096
    /// if it is waiting for SIPI).
    pub fn accept_sipi(&mut self, vector: u8) {
        if self.enabled() {
            self.sipi_vector = Some(vector);
        }
    }

    /// Whether an INIT is pending.
    pub fn init_pending(&self) -> bool {
        self.init_pending
    }

    /// Whether a start-up IPI is pending.
    pub fn sipi_pending(&self) -> bool {
        self.sipi_vector.is_some()
    }

    /// Whether an NMI is pending.
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending
    }

    /// Takes a pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi_pending)
    }

    /// Takes a pending INIT.
    pub fn take_init(&mut self) -> bool {
        std::mem::take(&mut self.init_pending)
    }

    /// Takes a pending start-up vector.
    pub fn take_sipi(&mut self) -> Option<u8> {
        self.sipi_vector.take()
    }

    /// What the CPU should take next, with `pic_intr` the 8259's INTR output
    /// (which reaches the CPU through LINT0 in ExtINT mode, or directly when
    /// the APIC is globally disabled).
    pub fn pending(&self, pic_intr: bool) -> Option<Pending> {
        if !self.enabled() {
            return pic_intr.then_some(Pending::ExtInt);
        }
        if let Some(v) = Self::highest(&self.irr) {
            if self.software_enabled() && v >> 4 > self.ppr() >> 4 {
                return Some(Pending::Vector(v));
            }
        }
        let lint0 = self.lvt[LVT_LINT0];
        let extint = lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == u32::from(mode::EXTINT);
        (pic_intr && extint).then_some(Pending::ExtInt)
    }

    /// The CPU acknowledges the fixed interrupt [`Lapic::pending`] named:
    /// the vector moves from the IRR to the ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        Self::set(&mut self.irr, vector, false);
        Self::set(&mut self.isr, vector, true);
    }

    /// An EOI: the highest in-service vector is retired. Returns it if it
    /// was level-triggered (the machine broadcasts the EOI to the IOAPIC).
    pub fn eoi(&mut self) -> Option<u8> {
        let v = Self::highest(&self.isr)?;
        Self::set(&mut self.isr, v, false);
        Self::test(&self.tmr, v).then_some(v)
    }

    // ---- the timer ----

    fn timer_mode(&self) -> u32 {
        (self.lvt[LVT_TIMER] >> TIMER_MODE_SHIFT) & 3
    }

    /// The divide configuration as a shift (SDM vol. 3A Figure 11-10: bits
    /// 0, 1 and 3; 0b111 divides by 1).
    fn divide_shift(&self) -> u32 {
        let v = (self.timer_divide & 3) | ((self.timer_divide >> 1) & 4);
        (v + 1) & 7
    }

    fn period(&self) -> Nanos {
        u64::from(self.timer_initial) << self.divide_shift()
    }

    fn arm(&mut self, now: Nanos) {
        self.timer_start = now;
        self.timer_deadline =
            (self.timer_initial != 0 && self.timer_mode() != 2).then(|| now + self.period());
    }

    /// The timer's current count at `now`.
    fn current_count(&self, now: Nanos) -> u32 {
        if self.timer_initial == 0 || self.timer_mode() == 2 {
            return 0;
        }
        let ticks = (now.saturating_sub(self.timer_start)) >> self.divide_shift();
        let initial = u64::from(self.timer_initial);
        match self.timer_mode() {
            1 => (initial - ticks % initial) as u32,
            _ => initial.saturating_sub(ticks) as u32,
        }
    }

    /// IA32_TSC_DEADLINE (MSR 0x6E0): reads 0 outside TSC-deadline mode.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == 2 {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// A WRMSR to IA32_TSC_DEADLINE, with the TSC and virtual time now:
    /// ignored outside TSC-deadline mode, 0 disarms, a past value fires at
    /// once (SDM vol. 3A §11.5.4.1).
    pub fn set_tsc_deadline(&mut self, value: u64, tsc: u64, now: Nanos) {
        if self.timer_mode() != 2 {
            return;
        }
        self.tsc_deadline = value;
        self.timer_deadline = (value != 0).then(|| now + value.saturating_sub(tsc));
    }

    /// When [`Lapic::advance`] must next run, if the timer is armed.
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.timer_deadline
    }

    /// Brings the timer up to `now`: an expiry raises the timer LVT (unless
    /// masked; the count still runs), and a periodic timer reloads.
    pub fn advance(&mut self, now: Nanos) {
        let Some(deadline) = self.timer_deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        let lvt = self.lvt[LVT_TIMER];
        if lvt & LVT_MASKED == 0 && self.software_enabled() {
            self.accept((lvt & 0xFF) as u8, false);
        }
        match self.timer_mode() {
            1 if self.period() != 0 => {
                // Periodic: the next expiry on the period's grid (expiries
                // that fell in one advance coalesce into one interrupt, as
                // they would while the IRR bit is already set).
                let p = self.period();
                let missed = (now - deadline) / p;
                self.timer_deadline = Some(deadline + (missed + 1) * p);
            }
            2 => {
                self.timer_deadline = None;
                self.tsc_deadline = 0;
            }
            _ => self.timer_deadline = None,
        }
    }

    // ---- register access ----

    /// Reads the 32-bit register at `offset` (16-byte aligned) at `now`;
    /// `None` for an offset with no register.
    pub fn read_reg(&self, offset: u32, now: Nanos) -> Option<u32> {
        let x2 = self.x2apic();
        Some(match offset {
            reg::ID => {
                if x2 {
                    self.id
                } else {
                    self.id << 24
                }
            }
            reg::VERSION => VERSION,
            reg::TPR => u32::from(self.tpr),
            reg::APR if !x2 => 0,
            reg::PPR => u32::from(self.ppr()),
            reg::LDR => self.ldr,
            reg::DFR if !x2 => self.dfr,
            reg::SVR => self.svr,
            o if (reg::ISR..reg::ISR + 0x80).contains(&o) => {
                self.isr[((o - reg::ISR) / 16) as usize]
            }
            o if (reg::TMR..reg::TMR + 0x80).contains(&o) => {
                self.tmr[((o - reg::TMR) / 16) as usize]
            }
            o if (reg::IRR..reg::IRR + 0x80).contains(&o) => {
                self.irr[((o - reg::IRR) / 16) as usize]
            }
            reg::ESR => self.esr,
            reg::ICR_LO => self.icr as u32,
            reg::ICR_HI if !x2 => (self.icr >> 32) as u32,
            reg::LVT_TIMER => self.lvt[LVT_TIMER],
            reg::LVT_THERMAL => self.lvt[LVT_THERMAL],
            reg::LVT_PMC => self.lvt[LVT_PMC],
            reg::LVT_LINT0 => self.lvt[LVT_LINT0],
            reg::LVT_LINT1 => self.lvt[LVT_LINT1],
            reg::LVT_ERROR => self.lvt[LVT_ERROR],
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        })
    }

    /// Writes the 32-bit register at `offset` at `now` (`value_hi` is the
    /// ICR's destination half for an x2APIC ICR write). Returns false for an
    /// offset with no writable register.
    pub fn write_reg(&mut self, offset: u32, value: u32, value_hi: u32, now: Nanos) -> bool {
        let x2 = self.x2apic();
        match offset {
            reg::ID if !x2 => self.id = value >> 24,
            reg::TPR => self.tpr = value as u8,
            reg::EOI => {
                // The machine forwards a level-triggered EOI; see
                // [`Lapic::eoi`], called by the machine for this write.
                return true;
            }
            reg::LDR if !x2 => self.ldr = value & 0xFF00_0000,
            reg::DFR if !x2 => self.dfr = value | 0x0FFF_FFFF,
            reg::SVR => {
                // Bits 0-7 vector, 8 enable, 9 focus checking (kept), 12 EOI
                // broadcast suppression (not offered: version bit 24 clear).
                self.svr = value & 0x3FF;
                if value & SVR_ENABLE == 0 {
                    // Software disable masks every LVT entry (SDM vol. 3A
                    // §11.4.7.2).
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            reg::ESR => {
                // A write latches the errors since the last one.
                self.esr = std::mem::take(&mut self.esr_pending);
            }
            reg::ICR_LO => {
                let hi = if x2 {
                    value_hi
                } else {
                    (self.icr >> 32) as u32
                };
                self.icr = (u64::from(hi) << 32) | u64::from(value & !(1 << 12));
                self.send_ipi();
            }
            reg::ICR_HI if !x2 => {
                self.icr = (self.icr & 0xFFFF_FFFF) | (u64::from(value & 0xFF00_0000) << 32);
            }
            reg::LVT_TIMER
            | reg::LVT_THERMAL
            | reg::LVT_PMC
            | reg::LVT_LINT0
            | reg::LVT_LINT1
            | reg::LVT_ERROR => {
                let i = ((offset - reg::LVT_TIMER) / 16) as usize;
                let mut v = value & LVT_WRITABLE[i];
                if !self.software_enabled() {
                    v |= LVT_MASKED;
                }
                let old_mode = self.timer_mode();
                self.lvt[i] = v;
                if i == LVT_TIMER && self.timer_mode() != old_mode {
                    // A mode change disarms the timer (SDM vol. 3A §11.5.4.1).
                    self.timer_deadline = None;
                    self.tsc_deadline = 0;
                    if self.timer_mode() != 2 {
                        self.timer_initial = 0;
                    }
                }
            }
            reg::TIMER_INITIAL => {
                if self.timer_mode() != 2 {
                    self.timer_initial = value;
                    self.arm(now);
                }
            }
            reg::TIMER_DIVIDE => {
                // The count keeps its position: re-arm from the current count.
                let current = self.current_count(now);
                self.timer_divide = value & 0xB;
                if self.timer_deadline.is_some() && self.timer_mode() != 2 {
                    let remaining = u64::from(current) << self.divide_shift();
                    self.timer_start = (now + remaining).saturating_sub(self.period());
                    self.timer_deadline = Some(now + remaining);
                }
            }
            reg::SELF_IPI if x2 => {
                self.accept(value as u8, false);
            }
            _ => return false,
        }
        true
    }

    /// Decodes the ICR into an [`Ipi`] for the machine.
    fn send_ipi(&mut self) {
        let lo = self.icr as u32;
        let x2 = self.x2apic();
        let ipi = Ipi {
            dest: if x2 {
                (self.icr >> 32) as u32
            } else {
                (self.icr >> 56) as u32
            },
            logical: lo & (1 << 11) != 0,
            shorthand: ((lo >> 18) & 3) as u8,
            mode: ((lo >> 8) & 7) as u8,
            vector: lo as u8,
            assert: lo & (1 << 14) != 0,
            level: lo & (1 << 15) != 0,
        };
        if matches!(ipi.mode, mode::FIXED | mode::LOWEST) && ipi.vector < 16 {
            self.error(esr::SEND_ILLEGAL_VECTOR);
            return;
        }
        self.ipis.push(ipi);
    }

    /// Takes the IPIs sent since the last call.
    pub fn take_ipis(&mut self) -> Vec<Ipi> {
        std::mem::take(&mut self.ipis)
    }

    /// A 1-, 2-, 4- or 8-byte read of the xAPIC page at `offset`. Registers
    /// are 32 bits at 16-byte alignment; other bytes read as 0, and a
    /// register that does not exist reads 0 and logs an illegal-register
    /// error.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8], now: Nanos) {
        let aligned = (offset & 0xFF0) as u32;
        let v = match self.read_reg(aligned, now) {
            Some(v) => v,
            None => {
                self.error(esr::ILLEGAL_REGISTER);
                0
            }
        };
        let bytes = u64::from(v).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = (offset & 0xF) as usize + i;
            *b = bytes.get(at).copied().filter(|_| at < 4).unwrap_or(0);
        }
    }

    /// A write of the xAPIC page at `offset`: a 32-bit write at a register's
    /// start writes it; narrower or misaligned writes are dropped (the SDM
    /// makes only aligned 32-bit accesses defined). Returns whether it was an
    /// EOI write, for the machine to complete.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], now: Nanos) -> bool {
        if offset & 0xF != 0 || data.len() < 4 {
            return false;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let o = offset as u32 & 0xFF0;
        if !self.write_reg(o, v, 0, now) {
            self.error(esr::ILLEGAL_REGISTER);
        }
        o == reg::EOI
    }

    /// An x2APIC RDMSR of MSR `msr` (0x800-0x8FF); `None` is #GP(0).
    pub fn msr_read(&self, msr: u32, now: Nanos) -> Option<u64> {
        if !self.x2apic() || !(0x800..=0x8FF).contains(&msr) {
            return None;
        }
        let offset = (msr - 0x800) << 4;
        match offset {
            reg::ICR_LO => Some(self.icr),
            reg::EOI | reg::SELF_IPI => None,
            _ => self.read_reg(offset, now).map(u64::from),
        }
    }

    /// An x2APIC WRMSR; false is #GP(0) (read-only or reserved registers, a
    /// non-zero EOI write).
    pub fn msr_write(&mut self, msr: u32, value: u64, now: Nanos) -> bool {
        if !self.x2apic() || !(0x800..=0x8FF).contains(&msr) {
            return false;
        }
        let offset = (msr - 0x800) << 4;
        match offset {
            reg::ID | reg::VERSION | reg::PPR | reg::LDR | reg::TIMER_CURRENT => false,
            o if (reg::ISR..reg::IRR + 0x80).contains(&o) => false,
            reg::EOI if value != 0 => false,
            reg::ICR_LO => self.write_reg(offset, value as u32, (value >> 32) as u32, now),
            _ if value >> 32 != 0 => false,
            _ => self.write_reg(offset, value as u32, 0, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled_bsp() -> Lapic {
        let mut l = Lapic::new(0, true);
        assert!(l.write_reg(reg::SVR, SVR_ENABLE | 0xFF, 0, 0));
        l
    }

    #[test]
    fn power_on_state_follows_the_sdm() {
        let l = Lapic::new(3, false);
        assert_eq!(l.read_reg(reg::ID, 0), Some(3 << 24));
        assert_eq!(l.read_reg(reg::VERSION, 0), Some(0x0005_0014));
        assert_eq!(l.read_reg(reg::SVR, 0), Some(0xFF), "software-disabled");
        assert_eq!(l.read_reg(reg::DFR, 0), Some(u32::MAX), "flat model");
        for r in [
            reg::LVT_TIMER,
            reg::LVT_LINT0,
            reg::LVT_LINT1,
            reg::LVT_ERROR,
        ] {
            assert_eq!(l.read_reg(r, 0), Some(LVT_MASKED), "{r:#x} masked on an AP");
        }
        assert_eq!(l.base_msr(), DEFAULT_BASE | base_msr::EN);
        let bsp = Lapic::new(0, true);
        assert_eq!(bsp.base_msr(), DEFAULT_BASE | base_msr::EN | base_msr::BSP);
        assert_eq!(bsp.read_reg(reg::LVT_LINT0, 0), Some(0x700), "virtual wire");
    }

    #[test]
    fn priority_class_gates_delivery_and_eoi_retires_the_highest() {
        let mut l = enabled_bsp();
        l.accept(0x41, false);
        l.accept(0x72, true);
        assert_eq!(l.pending(false), Some(Pending::Vector(0x72)));
        l.acknowledge(0x72);
        assert_eq!(l.ppr(), 0x70);
        // 0x41 is below the in-service class: held.
        assert_eq!(l.pending(false), None);
        l.set_tpr(0x80);
        assert_eq!(l.ppr(), 0x80, "TPR above the ISR class");
        assert_eq!(l.eoi(), Some(0x72), "level-triggered: broadcast");
        assert_eq!(l.pending(false), None, "TPR 0x80 still holds 0x41");
        l.set_tpr(0x30);
        assert_eq!(l.pending(false), Some(Pending::Vector(0x41)));
        l.acknowledge(0x41);
        assert_eq!(l.eoi(), None, "edge-triggered: no broadcast");
        assert_eq!(l.eoi(), None, "nothing in service");
    }

    #[test]
    fn illegal_vectors_set_the_esr_after_a_write() {
        let mut l = enabled_bsp();
        l.accept(5, false);
        assert_eq!(
            l.read_reg(reg::ESR, 0),
            Some(0),
            "latched on the next write"
        );
        l.write_reg(reg::ESR, 0, 0, 0);
        assert_eq!(l.read_reg(reg::ESR, 0), Some(esr::RECEIVE_ILLEGAL_VECTOR));
        l.write_reg(reg::ICR_LO, 0x0000_0003, 0, 0);
        assert!(l.take_ipis().is_empty(), "not sent");
        l.write_reg(reg::ESR, 0, 0, 0);
        assert_eq!(l.read_reg(reg::ESR, 0), Some(esr::SEND_ILLEGAL_VECTOR));
    }

    #[test]
    fn software_disable_masks_and_keeps_lvts_masked() {
        let mut l = enabled_bsp();
        l.write_reg(reg::LVT_TIMER, 0x30, 0, 0);
        assert_eq!(l.read_reg(reg::LVT_TIMER, 0), Some(0x30));
        l.write_reg(reg::SVR, 0xFF, 0, 0);
        assert_eq!(l.read_reg(reg::LVT_TIMER, 0), Some(0x30 | LVT_MASKED));
        l.write_reg(reg::LVT_TIMER, 0x30, 0, 0);
        assert_eq!(l.read_reg(reg::LVT_TIMER, 0), Some(0x30 | LVT_MASKED));
        // Software-disabled: accepted interrupts are held, and the 8259 is
        // cut off too, since the disable masked LINT0.
        l.accept(0x50, false);
        assert_eq!(l.pending(true), None);
    }

    #[test]
    fn extint_through_lint0_or_with_the_apic_globally_disabled() {
        let mut l = Lapic::new(0, true);
        assert_eq!(l.pending(true), Some(Pending::ExtInt), "BSP virtual wire");
        assert_eq!(l.pending(false), None);
        let mut ap = Lapic::new(1, false);
        assert_eq!(ap.pending(true), None, "AP LINT0 masked");
        assert!(ap.set_base_msr(DEFAULT_BASE));
        assert_eq!(ap.pending(true), Some(Pending::ExtInt), "globally disabled");
        assert_eq!(ap.mmio_base(), None);
        l.write_reg(reg::SVR, 0x1FF, 0, 0);
        l.write_reg(reg::LVT_LINT0, LVT_MASKED | 0x700, 0, 0);
        assert_eq!(l.pending(true), None, "LINT0 masked");
    }

    #[test]
    fn one_shot_timer_counts_down_and_fires_once() {
        let mut l = enabled_bsp();
        l.write_reg(reg::TIMER_DIVIDE, 0b0011, 0, 0); // divide by 16
        l.write_reg(reg::LVT_TIMER, 0xEC, 0, 0);
        l.write_reg(reg::TIMER_INITIAL, 1000, 0, 100);
        assert_eq!(l.next_deadline(), Some(100 + 16_000));
        assert_eq!(l.read_reg(reg::TIMER_CURRENT, 100 + 1600), Some(900));
        l.advance(16_099);
        assert_eq!(l.pending(false), None);
        l.advance(16_100);
        assert_eq!(l.pending(false), Some(Pending::Vector(0xEC)));
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.read_reg(reg::TIMER_CURRENT, 20_000), Some(0));
    }

    #[test]
    fn periodic_timer_reloads_on_its_grid() {
        let mut l = enabled_bsp();
        l.write_reg(reg::TIMER_DIVIDE, 0b1011, 0, 0); // divide by 1
        l.write_reg(reg::LVT_TIMER, (1 << 17) | 0x40, 0, 0);
        l.write_reg(reg::TIMER_INITIAL, 500, 0, 0);
        l.advance(500);
        assert_eq!(l.next_deadline(), Some(1000));
        assert_eq!(l.read_reg(reg::TIMER_CURRENT, 1100), Some(400));
        // Three periods missed in one advance: one interrupt, next on grid.
        l.advance(2700);
        assert_eq!(l.next_deadline(), Some(3000));
        // Writing 0 stops it.
        l.write_reg(reg::TIMER_INITIAL, 0, 0, 2800);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn tsc_deadline_mode_arms_from_the_msr() {
        let mut l = enabled_bsp();
        l.write_reg(reg::LVT_TIMER, (2 << 17) | 0x50, 0, 0);
        l.write_reg(reg::TIMER_INITIAL, 1000, 0, 0);
        assert_eq!(l.next_deadline(), None, "initial count ignored");
        l.set_tsc_deadline(5_000, 1_000, 200);
        assert_eq!(l.next_deadline(), Some(4_200));
        assert_eq!(l.tsc_deadline(), 5_000);
        l.advance(4_200);
        assert_eq!(l.pending(false), Some(Pending::Vector(0x50)));
        assert_eq!(l.tsc_deadline(), 0, "cleared once fired");
        l.set_tsc_deadline(10, 1_000, 300);
        assert_eq!(
            l.next_deadline(),
            Some(300),
            "a past deadline fires at once"
        );
    }

    #[test]
    fn icr_write_sends_an_ipi_with_its_fields() {
        let mut l = enabled_bsp();
        l.write_reg(reg::ICR_HI, 0x0300_0000, 0, 0);
        l.write_reg(reg::ICR_LO, 0x0000_4500, 0, 0); // INIT, assert
        l.write_reg(reg::ICR_LO, 0x0000_0699, 0, 0); // SIPI 0x99
        l.write_reg(reg::ICR_LO, 0x000C_0031, 0, 0); // fixed 0x31, all but self
        let ipis = l.take_ipis();
        assert_eq!(ipis.len(), 3);
        assert_eq!(
            (ipis[0].mode, ipis[0].dest, ipis[0].assert),
            (mode::INIT, 3, true)
        );
        assert_eq!((ipis[1].mode, ipis[1].vector), (mode::STARTUP, 0x99));
        assert_eq!((ipis[2].shorthand, ipis[2].vector), (3, 0x31));
    }

    #[test]
    fn x2apic_mode_through_msrs() {
        let mut l = Lapic::new(5, false);
        assert!(
            !l.set_base_msr(DEFAULT_BASE | base_msr::EXTD),
            "EXTD without EN"
        );
        assert!(l.set_base_msr(DEFAULT_BASE | base_msr::EN | base_msr::EXTD));
        assert_eq!(l.mmio_base(), None);
        assert_eq!(l.msr_read(0x802, 0), Some(5), "full 32-bit ID");
        assert_eq!(l.msr_read(0x80D, 0), Some((1 << 5) as u64), "derived LDR");
        assert!(!l.msr_write(0x802, 7, 0), "ID is read-only");
        assert!(l.msr_write(0x80F, 0x1FF, 0));
        assert!(l.msr_write(0x830, (9u64 << 32) | 0x4F, 0));
        let ipi = l.take_ipis()[0];
        assert_eq!((ipi.dest, ipi.vector), (9, 0x4F));
        assert!(!l.msr_write(0x80B, 1, 0), "non-zero EOI");
        assert!(l.msr_write(0x83F, 0x66, 0), "self IPI");
        assert_eq!(l.pending(false), Some(Pending::Vector(0x66)));
        assert!(
            !l.set_base_msr(DEFAULT_BASE | base_msr::EN),
            "x2APIC to xAPIC"
        );
    }

    #[test]
    fn mmio_reads_are_32_bit_registers_at_16_byte_strides() {
        let mut l = enabled_bsp();
        let mut b = [0u8; 4];
        l.mmio_read(0x30, &mut b, 0);
        assert_eq!(u32::from_le_bytes(b), VERSION);
        let mut w = [0u8; 2];
        l.mmio_read(0x32, &mut w, 0);
        assert_eq!(u16::from_le_bytes(w), 0x0005);
        let mut q = [0u8; 8];
        l.mmio_read(0x30, &mut q, 0);
        assert_eq!(
            u64::from_le_bytes(q),
            u64::from(VERSION),
            "upper bytes read 0"
        );
        assert!(l.mmio_write(0xB0, &0u32.to_le_bytes(), 0), "EOI");
        assert!(!l.mmio_write(0x80, &[0x20], 0));
        assert_eq!(l.tpr(), 0, "a byte write is dropped");
    }
}
