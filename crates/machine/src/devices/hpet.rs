//! The HPET (IA-PC HPET specification 1.0a): a 64-bit main counter at
//! 100 MHz of virtual time and three comparators, memory-mapped at
//! 0xFED00000.
//!
//! - Timer 0 can run periodically; timers 1 and 2 are one-shot (as the ICH's
//!   HPET). All three compare 64 bits, or 32 with `Tn_32MODE_CNF`.
//! - Interrupts: in legacy replacement mode (`LEG_RT_CNF`) timer 0 drives
//!   ISA IRQ0 and timer 1 IRQ8, and the PIT and the RTC are cut off from
//!   those lines; otherwise a timer drives the I/O APIC pin its route names
//!   (pins 20-23), or, with `Tn_FSB_EN_CNF`, sends its FSB message (an MSI).
//!   Level-triggered timers set their status bit and hold the line until the
//!   guest clears the bit; edge-triggered ones pulse it.
//! - The counter runs while `ENABLE_CNF` is set and may be written while it
//!   is stopped. A comparator match is an equality: a comparator behind the
//!   counter fires when the counter wraps to it.

use crate::device::{DevCtx, Device, IrqLine, IrqLines, Msi, Nanos};
use std::rc::Rc;

/// Where firmware tables say the HPET is.
pub const BASE: u64 = 0xFED0_0000;
/// The size of its register block.
pub const SIZE: u64 = 0x400;
/// The counter's period in femtoseconds (10 ns: 100 MHz).
pub const PERIOD_FS: u64 = 10_000_000;
/// Nanoseconds per counter tick.
const NS_PER_TICK: u64 = PERIOD_FS / 1_000_000;
/// Comparators.
pub const TIMERS: usize = 3;
/// The I/O APIC pins a timer may be routed to (`Tn_INT_ROUTE_CAP`).
pub const ROUTE_CAP: u32 = 0x00F0_0000;

/// General configuration bits.
mod cfg {
    pub const ENABLE: u64 = 1 << 0;
    pub const LEGACY: u64 = 1 << 1;
}

/// Timer configuration bits.
mod tn {
    pub const LEVEL: u64 = 1 << 1;
    pub const INT_ENB: u64 = 1 << 2;
    pub const PERIODIC: u64 = 1 << 3;
    pub const PER_CAP: u64 = 1 << 4;
    pub const SIZE_CAP: u64 = 1 << 5;
    pub const VAL_SET: u64 = 1 << 6;
    pub const MODE32: u64 = 1 << 8;
    pub const ROUTE_SHIFT: u32 = 9;
    pub const ROUTE: u64 = 0x1F << ROUTE_SHIFT;
    pub const FSB_EN: u64 = 1 << 14;
    pub const FSB_CAP: u64 = 1 << 15;
    /// The bits software may write.
    pub const WRITABLE: u64 = LEVEL | INT_ENB | PERIODIC | VAL_SET | MODE32 | ROUTE | FSB_EN;
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Timer {
    /// Configuration (the writable bits; the capabilities are added on read).
    config: u64,
    /// The comparator.
    cmp: u64,
    /// The periodic increment (the last value written to the comparator).
    period: u64,
    /// FSB route: the message data in bits 31:0, the address in 63:32.
    fsb: u64,
}

/// The HPET.
pub struct Hpet {
    config: u64,
    /// Level-triggered timers' status bits.
    status: u64,
    /// The counter's value at `since` (when it last started or was written).
    counter_at: u64,
    /// When the counter last started or was written.
    since: Nanos,
    timers: [Timer; TIMERS],
    /// The time up to which matches have been handled.
    handled: Nanos,
    lines: Rc<IrqLines>,
    irq0: IrqLine,
    irq8: IrqLine,
    pins: [IrqLine; 8],
}

/// The HPET's saved state (see [`crate::snapshot`]): its registers, the
/// counter's anchor in virtual time and the comparators.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HpetState {
    config: u64,
    status: u64,
    counter_at: u64,
    since: Nanos,
    timers: [Timer; TIMERS],
    handled: Nanos,
}

impl Hpet {
    /// An HPET driving `lines` (ISA IRQ0 and IRQ8 in legacy mode, I/O APIC
    /// pins 20-23 otherwise).
    pub fn new(lines: Rc<IrqLines>) -> Self {
        Self {
            config: 0,
            status: 0,
            counter_at: 0,
            since: 0,
            timers: Default::default(),
            handled: 0,
            irq0: lines.line(0),
            irq8: lines.line(8),
            pins: std::array::from_fn(|i| lines.apic_pin(16 + i as u8)),
            lines,
        }
    }

    fn enabled(&self) -> bool {
        self.config & cfg::ENABLE != 0
    }

    /// The main counter at `now`.
    pub fn counter(&self, now: Nanos) -> u64 {
        if !self.enabled() {
            return self.counter_at;
        }
        let ticks = now.saturating_sub(self.since) / NS_PER_TICK;
        self.counter_at.wrapping_add(ticks)
    }

    /// The time at which the counter reads `value` (at or after `self.since`),
    /// or None when the counter is stopped.
    fn time_of(&self, ticks_from_base: u64) -> Option<Nanos> {
        self.since
            .checked_add(ticks_from_base.checked_mul(NS_PER_TICK)?)
    }

    /// Timer `n`'s capabilities and configuration as the guest reads them.
    fn timer_config(&self, n: usize) -> u64 {
        let mut caps = tn::SIZE_CAP | tn::FSB_CAP | (u64::from(ROUTE_CAP) << 32);
        if n == 0 {
            caps |= tn::PER_CAP;
        }
        self.timers[n].config | caps
    }

    fn width_mask(&self, n: usize) -> u64 {
        if self.timers[n].config & tn::MODE32 != 0 {
            0xFFFF_FFFF
        } else {
            u64::MAX
        }
    }

    /// The first time after `after` at which timer `n` matches.
    fn next_match(&self, n: usize, after: Nanos) -> Option<Nanos> {
        if !self.enabled() {
            return None;
        }
        let mask = self.width_mask(n);
        let cur = self.counter(after);
        let mut delta = self.timers[n].cmp.wrapping_sub(cur) & mask;
        if delta == 0 {
            // Matching now was handled (or is being); the next match is a
            // full wrap away.
            delta = mask.checked_add(1)?;
        }
        // The counter reads `cur + delta` at the first tick boundary after
        // `after` that many ticks on.
        let ticks = now_ticks(self, after).checked_add(delta)?;
        self.time_of(ticks)
    }

    /// Handles the matches up to `now`. A timer fires once however many of
    /// its matches passed (edges that close together are one edge to an
    /// interrupt controller); a periodic comparator then moves past the
    /// counter by whole periods.
    fn advance_to(&mut self, ctx: &mut DevCtx) {
        let now = ctx.now();
        if !self.enabled() {
            self.handled = now;
            return;
        }
        for n in 0..TIMERS {
            if self.next_match(n, self.handled).is_none_or(|t| t > now) {
                continue;
            }
            self.fire(ctx, n);
            let mask = self.width_mask(n);
            let cur = self.counter(now);
            let t = &mut self.timers[n];
            if n == 0 && t.config & tn::PERIODIC != 0 && t.period != 0 {
                let behind = cur.wrapping_sub(t.cmp) & mask;
                if behind <= mask / 2 {
                    let k = behind / t.period + 1;
                    t.cmp = t.cmp.wrapping_add(k.wrapping_mul(t.period)) & mask;
                }
            }
        }
        self.handled = now;
    }

    /// Timer `n` matched: its interrupt goes out as configured.
    fn fire(&mut self, ctx: &mut DevCtx, n: usize) {
        let config = self.timers[n].config;
        let level = config & tn::LEVEL != 0;
        if level {
            self.status |= 1 << n;
        }
        if config & tn::INT_ENB == 0 {
            return;
        }
        if self.config & cfg::LEGACY != 0 && n < 2 {
            let line = if n == 0 { &self.irq0 } else { &self.irq8 };
            if level {
                line.set_level(true);
            } else {
                line.pulse();
            }
            return;
        }
        if config & tn::FSB_EN != 0 {
            let fsb = self.timers[n].fsb;
            ctx.send_msi(Msi {
                addr: fsb >> 32,
                data: fsb as u32,
            });
            return;
        }
        if let Some(line) = self.route_line(n) {
            if level {
                line.set_level(true);
            } else {
                line.pulse();
            }
        }
    }

    /// The I/O APIC pin line timer `n` is routed to, if the route is one it
    /// may take.
    fn route_line(&self, n: usize) -> Option<&IrqLine> {
        let route = ((self.timers[n].config & tn::ROUTE) >> tn::ROUTE_SHIFT) as u32;
        (ROUTE_CAP & (1 << route) != 0 && route >= 16).then(|| &self.pins[route as usize - 16])
    }

    /// The line timer `n` drives now, if any (for level-triggered deassert).
    fn line_of(&self, n: usize) -> Option<&IrqLine> {
        let config = self.timers[n].config;
        if self.config & cfg::LEGACY != 0 && n < 2 {
            return Some(if n == 0 { &self.irq0 } else { &self.irq8 });
        }
        if config & tn::FSB_EN != 0 {
            return None;
        }
        self.route_line(n)
    }

    /// Lowers the lines of level-triggered timers whose status is clear.
    fn update_levels(&self) {
        for n in 0..TIMERS {
            let config = self.timers[n].config;
            if config & tn::LEVEL == 0 {
                continue;
            }
            let high = self.status & (1 << n) != 0 && config & tn::INT_ENB != 0;
            if let Some(line) = self.line_of(n) {
                if !high && line.is_high() {
                    line.set_level(false);
                }
            }
        }
    }

    fn reg_read(&self, offset: u64, now: Nanos) -> u64 {
        match offset {
            // Capabilities: revision 1, TIMERS-1 comparators, 64-bit counter,
            // legacy replacement capable, vendor 0x8086, the period.
            0x000 => {
                1 | ((TIMERS as u64 - 1) << 8)
                    | (1 << 13)
                    | (1 << 15)
                    | (0x8086 << 16)
                    | (PERIOD_FS << 32)
            }
            0x010 => self.config,
            0x020 => self.status,
            0x0F0 => self.counter(now),
            o if (0x100..0x100 + 0x20 * TIMERS as u64).contains(&o) => {
                let n = ((o - 0x100) / 0x20) as usize;
                match (o - 0x100) % 0x20 {
                    0x00 => self.timer_config(n),
                    0x08 => self.timers[n].cmp,
                    0x10 => self.timers[n].fsb,
                    _ => 0,
                }
            }
            _ => 0,
        }
    }

    fn reg_write(&mut self, ctx: &mut DevCtx, offset: u64, value: u64, mask: u64) {
        let now = ctx.now();
        let merge = |old: u64| (old & !mask) | (value & mask);
        match offset {
            0x010 => {
                let old = self.config;
                let new = merge(old) & (cfg::ENABLE | cfg::LEGACY);
                if (old ^ new) & cfg::ENABLE != 0 {
                    // Starting or stopping: the counter keeps its value.
                    self.counter_at = self.counter(now);
                    self.since = now;
                }
                self.config = new;
                if (old ^ new) & cfg::LEGACY != 0 {
                    let gate = if new & cfg::LEGACY != 0 { 0x0101 } else { 0 };
                    self.lines.set_legacy_gate(gate);
                }
                self.handled = now;
            }
            0x020 => {
                // Write 1 to clear.
                self.status &= !(value & mask);
                self.update_levels();
            }
            0x0F0 => {
                // Writable while halted (a write while running takes effect
                // too, as on most implementations).
                self.counter_at = merge(self.counter(now));
                self.since = now;
                self.handled = now;
            }
            o if (0x100..0x100 + 0x20 * TIMERS as u64).contains(&o) => {
                let n = ((o - 0x100) / 0x20) as usize;
                match (o - 0x100) % 0x20 {
                    0x00 => {
                        let t = &mut self.timers[n];
                        let mut c = merge(t.config) & tn::WRITABLE;
                        if n != 0 {
                            c &= !tn::PERIODIC;
                        }
                        t.config = c;
                        if c & tn::MODE32 != 0 {
                            t.cmp &= 0xFFFF_FFFF;
                            t.period &= 0xFFFF_FFFF;
                        }
                        self.update_levels();
                    }
                    0x08 => {
                        let wmask = self.width_mask(n);
                        let t = &mut self.timers[n];
                        let v = merge(t.cmp) & wmask;
                        if t.config & tn::PERIODIC != 0 {
                            // The period is what was written; the comparator
                            // only with VAL_SET (which clears itself).
                            t.period = merge(t.period) & wmask;
                            if t.config & tn::VAL_SET != 0 {
                                t.cmp = v;
                            }
                        } else {
                            t.cmp = v;
                            t.period = v;
                        }
                        t.config &= !tn::VAL_SET;
                        self.handled = now;
                    }
                    0x10 => {
                        let t = &mut self.timers[n];
                        t.fsb = merge(t.fsb);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The counter's tick count since `hpet.since` at time `at`.
fn now_ticks(hpet: &Hpet, at: Nanos) -> u64 {
    at.saturating_sub(hpet.since) / NS_PER_TICK
}

impl Device for Hpet {
    fn name(&self) -> &'static str {
        "hpet"
    }

    fn read(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &mut [u8]) {
        self.advance_to(ctx);
        let reg = self.reg_read(offset & !7, ctx.now());
        let shift = (offset & 7) * 8;
        let bytes = (reg >> shift).to_le_bytes();
        let n = data.len().min(8 - (offset & 7) as usize);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &[u8]) {
        self.advance_to(ctx);
        let shift = (offset & 7) * 8;
        let n = data.len().min(8 - (offset & 7) as usize);
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(buf) << shift;
        let mask = (if n == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        }) << shift;
        self.reg_write(ctx, offset & !7, value, mask);
    }

    fn advance(&mut self, ctx: &mut DevCtx) {
        self.advance_to(ctx);
    }

    fn next_deadline(&self, now: Nanos) -> Option<Nanos> {
        (0..TIMERS)
            .filter(|&n| self.timers[n].config & tn::INT_ENB != 0)
            .filter_map(|n| self.next_match(n, self.handled.min(now)))
            .min()
    }

    fn reset(&mut self) {
        self.lines.set_legacy_gate(0);
        *self = Self::new(Rc::clone(&self.lines));
    }

    crate::state_methods!(Hpet(HpetState) {
        wiring: [lines, irq0, irq8, pins],
        state: [config, status, counter_at, since, timers, handled],
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevEnv;

    fn write64(h: &mut Hpet, env: &mut DevEnv, now: Nanos, off: u64, v: u64) {
        h.write(&mut env.at(now), 0, off, &v.to_le_bytes());
    }

    fn read64(h: &mut Hpet, env: &mut DevEnv, now: Nanos, off: u64) -> u64 {
        let mut b = [0u8; 8];
        h.read(&mut env.at(now), 0, off, &mut b);
        u64::from_le_bytes(b)
    }

    fn run_to(h: &mut Hpet, env: &mut DevEnv, now: Nanos) {
        h.advance(&mut env.at(now));
    }

    #[test]
    fn capabilities_name_three_64_bit_timers_at_100_mhz() {
        let lines = IrqLines::new();
        let mut h = Hpet::new(lines);
        let mut env = DevEnv::new();
        let caps = read64(&mut h, &mut env, 0, 0);
        assert_eq!(caps & 0xFF, 1, "revision");
        assert_eq!((caps >> 8) & 0x1F, 2, "comparators - 1");
        assert_ne!(caps & (1 << 13), 0, "64-bit counter");
        assert_ne!(caps & (1 << 15), 0, "legacy replacement capable");
        assert_eq!(caps >> 32, 10_000_000, "period in fs");
        assert_ne!(read64(&mut h, &mut env, 0, 0x100) & tn::PER_CAP, 0);
        assert_eq!(read64(&mut h, &mut env, 0, 0x120) & tn::PER_CAP, 0);
    }

    #[test]
    fn counter_runs_only_while_enabled_and_keeps_its_value() {
        let mut h = Hpet::new(IrqLines::new());
        let mut env = DevEnv::new();
        assert_eq!(read64(&mut h, &mut env, 1000, 0xF0), 0);
        write64(&mut h, &mut env, 1000, 0x10, cfg::ENABLE);
        assert_eq!(read64(&mut h, &mut env, 2000, 0xF0), 100);
        write64(&mut h, &mut env, 2005, 0x10, 0);
        assert_eq!(read64(&mut h, &mut env, 9000, 0xF0), 100);
        write64(&mut h, &mut env, 9000, 0xF0, 0xFFFF_FFF0);
        write64(&mut h, &mut env, 9000, 0x10, cfg::ENABLE);
        assert_eq!(read64(&mut h, &mut env, 9200, 0xF0), 0x1_0000_0004);
    }

    #[test]
    fn legacy_timer0_periodic_pulses_irq0_and_cuts_the_pit_off() {
        let lines = IrqLines::new();
        let pit = lines.legacy_line(0);
        let mut h = Hpet::new(Rc::clone(&lines));
        let mut env = DevEnv::new();
        write64(&mut h, &mut env, 0, 0x10, cfg::LEGACY);
        // Periodic every 1000 ticks (10 us): VAL_SET sets the comparator.
        write64(
            &mut h,
            &mut env,
            0,
            0x100,
            tn::INT_ENB | tn::PERIODIC | tn::VAL_SET,
        );
        write64(&mut h, &mut env, 0, 0x108, 1000);
        write64(&mut h, &mut env, 0, 0x108, 1000);
        write64(&mut h, &mut env, 0, 0x10, cfg::LEGACY | cfg::ENABLE);
        lines.take_rising();
        pit.set_level(true);
        assert_eq!(lines.take_rising(), 0, "the PIT is cut off");
        assert_eq!(h.next_deadline(0), Some(10_000));
        let mut edges = 0;
        for t in (0..=50_000).step_by(1000) {
            run_to(&mut h, &mut env, t);
            edges += lines.take_rising() & 1;
        }
        assert_eq!(edges, 5, "matches at 10, 20, 30, 40, 50 us");
        assert_eq!(read64(&mut h, &mut env, 50_000, 0x108), 6000);
    }

    #[test]
    fn one_shot_level_timer_holds_its_pin_until_status_is_cleared() {
        let lines = IrqLines::new();
        let mut h = Hpet::new(Rc::clone(&lines));
        let mut env = DevEnv::new();
        let route = 21u64 << tn::ROUTE_SHIFT;
        write64(&mut h, &mut env, 0, 0x120, tn::INT_ENB | tn::LEVEL | route);
        write64(&mut h, &mut env, 0, 0x128, 50);
        write64(&mut h, &mut env, 0, 0x10, cfg::ENABLE);
        run_to(&mut h, &mut env, 499);
        assert_eq!(lines.all_levels() & (1 << 21), 0);
        run_to(&mut h, &mut env, 500);
        assert_ne!(lines.all_levels() & (1 << 21), 0);
        assert_eq!(read64(&mut h, &mut env, 600, 0x20), 2);
        // One-shot: no second match before the counter wraps.
        run_to(&mut h, &mut env, 1_000_000);
        write64(&mut h, &mut env, 1_000_000, 0x20, 2);
        assert_eq!(lines.all_levels() & (1 << 21), 0);
        assert_eq!(read64(&mut h, &mut env, 1_000_000, 0x20), 0);
    }

    #[test]
    fn fsb_delivery_sends_the_programmed_message() {
        let mut h = Hpet::new(IrqLines::new());
        let mut env = DevEnv::new();
        write64(&mut h, &mut env, 0, 0x150, (0xFEE0_1000u64 << 32) | 0x41);
        write64(&mut h, &mut env, 0, 0x140, tn::INT_ENB | tn::FSB_EN);
        write64(&mut h, &mut env, 0, 0x148, 10);
        write64(&mut h, &mut env, 0, 0x10, cfg::ENABLE);
        run_to(&mut h, &mut env, 100);
        assert_eq!(
            env.msi,
            vec![Msi {
                addr: 0xFEE0_1000,
                data: 0x41
            }]
        );
    }

    #[test]
    fn mode32_comparator_behind_the_counter_fires_at_the_wrap() {
        let mut h = Hpet::new(IrqLines::new());
        let mut env = DevEnv::new();
        write64(&mut h, &mut env, 0, 0xF0, 0xFFFF_FF00);
        write64(&mut h, &mut env, 0, 0x100, tn::INT_ENB | tn::MODE32);
        write64(&mut h, &mut env, 0, 0x108, 0x10);
        write64(&mut h, &mut env, 0, 0x10, cfg::ENABLE);
        // 0x100 ticks to the wrap, 0x10 more.
        assert_eq!(h.next_deadline(0), Some(0x110 * 10));
    }
}
