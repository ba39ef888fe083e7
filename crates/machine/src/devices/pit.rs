//! The Intel 8254 programmable interval timer of a PC (three counters clocked at
//! [`PIT_HZ`]) and system control port B (port 0x61). Mapped with base 0, so offsets
//! are absolute ports: 0x40-0x42 (counters 0-2), 0x43 (control word), 0x61.
//!
//! Behaviour follows the Intel 8254 datasheet: modes 0-5 (6 and 7 alias 2 and 3),
//! LSB / MSB / LSB-then-MSB access, the counter latch command, the read-back command
//! and the status byte.
//!
//! Invariants:
//! - Counters are not stepped. Each one records the clock tick at which its counting
//!   element was (or will be) loaded, and its value and OUT at any tick are computed
//!   from that anchor. Ticks are `floor(now * PIT_HZ / 1e9)` in exact `u128`
//!   arithmetic; no floating point.
//! - A count written at tick `t` reaches the counting element at tick `t + 1` (the
//!   datasheet's "next CLK pulse"), so mode 0 raises OUT N + 1 clocks after the
//!   write, as specified.
//! - Channel 0's OUT drives IRQ0. [`Device::advance`] raises the line once if OUT
//!   rose at any point since the previous advance, then leaves it at OUT's current
//!   level. A periodic timer advanced every period therefore makes exactly one edge
//!   per period; advanced late over several periods it makes one edge in total, which
//!   is all an edge-triggered 8259A sampling at that moment could have latched.
//! - Gates 0 and 1 are tied high; gate 2 is port 0x61 bit 0.
//! - Not modelled: BCD counting (the BCD bit is stored and reported in the status
//!   byte but counts are binary), reads of port 0x43 (the control register is
//!   write-only; reads return 0xFF), and port 0x61 bits 2-3 and 6-7 (parity and
//!   channel-check, which read as 0). A count of 1 in modes 2 and 3, illegal per the
//!   datasheet, behaves as 2. The power-on state, undefined in the datasheet, is
//!   mode 0 with no count and OUT low, so IRQ0 starts low like the idle line.

use crate::device::{Device, IrqLine, Nanos};

/// The 8254's input clock on a PC: 14.31818 MHz / 12.
pub const PIT_HZ: u64 = 1_193_182;

/// Counter 0 data port; counters 1 and 2 follow.
const COUNTER0: u16 = 0x40;
/// Counter 2 data port.
const COUNTER2: u16 = 0x42;
/// Control word register (write-only).
const CONTROL: u16 = 0x43;
/// System control port B.
const PORT_B: u16 = 0x61;

/// Port B bit 0: gate of counter 2.
const PORT_B_GATE2: u8 = 0x01;
/// Port B bit 1: speaker data enable.
const PORT_B_SPEAKER: u8 = 0x02;
/// Port B bit 4: toggles with each memory refresh request.
const PORT_B_REFRESH: u8 = 0x10;
/// Port B bit 5: OUT of counter 2.
const PORT_B_OUT2: u8 = 0x20;
/// Half-period of the refresh toggle: one refresh request every 15.085 us.
const REFRESH_NS: u64 = 15_085;

/// Control word SC field (bits 7-6) value for the read-back command.
const SC_READ_BACK: u8 = 3;
/// Read-back bit 5: 0 latches the count of the selected counters.
const READ_BACK_NO_COUNT: u8 = 0x20;
/// Read-back bit 4: 0 latches the status of the selected counters.
const READ_BACK_NO_STATUS: u8 = 0x10;
/// Status byte bit 7: OUT pin level.
const STATUS_OUT: u8 = 0x80;
/// Status byte bit 6: null count (the last count written is not yet loaded).
const STATUS_NULL_COUNT: u8 = 0x40;
/// The counting element is 16 bits wide; a count of 0 means this many.
const MODULUS: i64 = 0x1_0000;

/// Ticks of the PIT clock completed by virtual time `now`.
fn tick_at(now: Nanos) -> i64 {
    let ticks = u128::from(now) * u128::from(PIT_HZ) / 1_000_000_000;
    i64::try_from(ticks).unwrap_or(i64::MAX)
}

/// The earliest virtual time at which `tick` has been completed.
fn time_of_tick(tick: i64) -> Nanos {
    let Ok(tick) = u128::try_from(tick) else {
        return 0;
    };
    let hz = u128::from(PIT_HZ);
    let ns = (tick * 1_000_000_000).div_ceil(hz);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Read/write access selected by control word bits 5-4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Access {
    Lsb,
    Msb,
    Word,
}

/// A mode 2 or 3 cycle of `period` ticks that begins, with OUT high, at `anchor`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Cycle {
    anchor: i64,
    period: i64,
}

impl Cycle {
    /// Ticks into the cycle before OUT falls: mode 2 pulses low for the one clock
    /// at count 1 (N - 1); mode 3 is high for (N + 1) / 2 of N clocks.
    fn high_len(self, mode: u8) -> i64 {
        if mode == 2 {
            self.period - 1
        } else {
            (self.period + 1) / 2
        }
    }

    fn phase(self, t: i64) -> Option<i64> {
        (t >= self.anchor).then(|| (t - self.anchor) % self.period)
    }

    fn out(self, mode: u8, t: i64) -> bool {
        self.phase(t).is_none_or(|k| k < self.high_len(mode))
    }

    /// The counting element. In mode 3 it steps by two; an odd count first loses
    /// one (high half) or three (low half), per the datasheet's mode 3 text.
    fn ce(self, mode: u8, t: i64) -> i64 {
        let n = self.period;
        let Some(k) = self.phase(t) else { return n };
        if mode == 2 {
            return n - k;
        }
        let h = self.high_len(mode);
        let (k, odd_step) = if k < h { (k, 1) } else { (k - h, -1) };
        match (k, n % 2) {
            (0, _) => n,
            (k, 0) => n - 2 * k,
            (k, _) => n + odd_step - 2 * k,
        }
    }

    /// The first tick after `t` at which OUT changes.
    fn next_change(self, mode: u8, t: i64) -> i64 {
        let high = self.high_len(mode);
        match self.phase(t) {
            None => self.anchor + high,
            Some(k) if k < high => t - k + high,
            Some(k) => t - k + self.period,
        }
    }
}

/// What the counting element is doing.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
enum Run {
    /// Not counting: no count yet, gate low, or a one-shot awaiting its trigger.
    /// `tc` records that the terminal count already went by (modes 0 and 4).
    Stopped { ce: u16, out: bool, tc: bool },
    /// Modes 0, 1, 4, 5: `count` loaded at tick `anchor`, one decrement per tick.
    OneShot { anchor: i64, count: i64, tc: bool },
    /// Modes 2, 3: the running cycle, and a reload scheduled for tick `.0` of
    /// `next` (the end of the current cycle or half-cycle).
    Periodic {
        cycle: Cycle,
        next: Option<(i64, Cycle)>,
    },
}

impl Run {
    fn stopped(ce: u16, out: bool) -> Self {
        Self::Stopped { ce, out, tc: false }
    }

    fn one_shot(anchor: i64, count: i64) -> Self {
        Self::OneShot {
            anchor,
            count,
            tc: false,
        }
    }

    fn periodic(anchor: i64, period: i64) -> Self {
        let cycle = Cycle { anchor, period };
        Self::Periodic { cycle, next: None }
    }
}

/// One 8254 counter.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Channel {
    /// Bits 5-0 of the last control word, reported in the status byte.
    control: u8,
    mode: u8,
    access: Access,
    /// The count register (CR), 1..=65536.
    reload: i64,
    has_count: bool,
    gate: bool,
    run: Run,
    /// When the counting element takes CR; `None` while that is not yet scheduled.
    load_tick: Option<i64>,
    pending_lsb: Option<u8>,
    read_msb_next: bool,
    latched: Option<u16>,
    status: Option<u8>,
}

impl Channel {
    fn power_on(gate: bool) -> Self {
        Self {
            control: 0x30,
            mode: 0,
            access: Access::Word,
            reload: MODULUS,
            has_count: false,
            gate,
            run: Run::stopped(0, false),
            load_tick: None,
            pending_lsb: None,
            read_msb_next: false,
            latched: None,
            status: None,
        }
    }

    /// The periodic cycle in force at tick `t`.
    fn cycle_at(cycle: Cycle, next: Option<(i64, Cycle)>, t: i64) -> Cycle {
        match next {
            Some((at, new)) if t >= at => new,
            _ => cycle,
        }
    }

    fn out_at(&self, t: i64) -> bool {
        match self.run {
            Run::Stopped { out, .. } => out,
            // Before the load, modes 0 and 1 already hold OUT low; 4 and 5 high.
            Run::OneShot { anchor, .. } if t < anchor => self.mode >= 4,
            Run::OneShot { anchor, count, tc } => match self.mode {
                // Mode 0: high from terminal count on. Mode 1: low until it.
                0 | 1 => tc || t - anchor >= count,
                // Modes 4 and 5: low for the one clock of terminal count.
                _ => tc || t - anchor != count,
            },
            Run::Periodic { cycle, next } => Self::cycle_at(cycle, next, t).out(self.mode, t),
        }
    }

    fn ce_at(&self, t: i64) -> u16 {
        let value = match self.run {
            Run::Stopped { ce, .. } => return ce,
            Run::OneShot { anchor, count, .. } => count - (t - anchor).max(0),
            Run::Periodic { cycle, next } => Self::cycle_at(cycle, next, t).ce(self.mode, t),
        };
        value.rem_euclid(MODULUS) as u16
    }

    /// The first tick after `t` at which OUT changes level, if any.
    fn next_change_after(&self, t: i64) -> Option<i64> {
        let mode = self.mode;
        match self.run {
            Run::Stopped { .. } | Run::OneShot { tc: true, .. } => None,
            Run::OneShot { anchor, count, .. } => {
                let end = anchor + count;
                let changes = if mode <= 1 { 1 } else { 2 };
                (end..end + changes).find(|&c| c > t)
            }
            Run::Periodic { cycle, next } => Some(match next {
                Some((at, new)) if t >= at => new.next_change(mode, t),
                Some((at, new)) => {
                    let old = cycle.next_change(mode, t);
                    if old < at {
                        old
                    } else if new.out(mode, at) != cycle.out(mode, at - 1) {
                        at
                    } else {
                        new.next_change(mode, at)
                    }
                }
                None => cycle.next_change(mode, t),
            }),
        }
    }

    /// Whether OUT went from low to high at any tick in `(from, to]`.
    fn rose_between(&self, from: i64, to: i64) -> bool {
        let mut t = from;
        // Levels alternate, so a rise is at most the second change.
        for _ in 0..2 {
            match self.next_change_after(t) {
                Some(c) if c <= to => {
                    if self.out_at(c) {
                        return true;
                    }
                    t = c;
                }
                _ => return false,
            }
        }
        false
    }

    /// Folds a scheduled reload that has happened by tick `t` into the cycle.
    fn settle(&mut self, t: i64) {
        if let Run::Periodic { cycle, next } = self.run {
            let cycle = Self::cycle_at(cycle, next, t);
            let next = next.filter(|&(at, _)| t < at);
            self.run = Run::Periodic { cycle, next };
        }
    }

    fn status_byte(&self, t: i64) -> u8 {
        let out = if self.out_at(t) { STATUS_OUT } else { 0 };
        let null = match self.load_tick {
            Some(load) if t >= load => 0,
            _ => STATUS_NULL_COUNT,
        };
        out | null | self.control
    }

    /// Counter latch command; ignored while an earlier latch is unread.
    fn latch_count(&mut self, t: i64) {
        if self.latched.is_none() {
            self.latched = Some(self.ce_at(t));
        }
    }

    fn latch_status(&mut self, t: i64) {
        if self.status.is_none() {
            self.status = Some(self.status_byte(t));
        }
    }

    /// A control word addressed to this counter ("all control logic is reset").
    fn write_control(&mut self, value: u8, t: i64) {
        let access = match (value >> 4) & 3 {
            0 => return self.latch_count(t),
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        let ce = self.ce_at(t);
        let mode = (value >> 1) & 7;
        *self = Self {
            control: value & 0x3F,
            mode: if mode >= 6 { mode - 4 } else { mode },
            access,
            ..Self::power_on(self.gate)
        };
        // Mode 0 sets OUT low on the control word; every other mode sets it high.
        self.run = Run::stopped(ce, self.mode != 0);
    }

    fn write_data(&mut self, value: u8, t: i64) {
        match self.access {
            Access::Lsb => self.load_count(u16::from(value), t),
            Access::Msb => self.load_count(u16::from(value) << 8, t),
            Access::Word => match self.pending_lsb.take() {
                Some(lsb) => self.load_count(u16::from_le_bytes([lsb, value]), t),
                None => {
                    self.pending_lsb = Some(value);
                    if self.mode == 0 {
                        // Mode 0: the first byte stops counting and drops OUT at once.
                        self.run = Run::stopped(self.ce_at(t), false);
                    }
                }
            },
        }
    }

    fn load_count(&mut self, raw: u16, t: i64) {
        self.settle(t);
        let n = if raw == 0 { MODULUS } else { i64::from(raw) };
        self.reload = n;
        self.has_count = true;
        // Modes 1 and 5 take the new count at the next gate trigger; all others
        // load it on the next clock, even with the gate low.
        self.load_tick = (self.mode != 1 && self.mode != 5).then_some(t + 1);
        match (self.mode, self.gate) {
            (0 | 4, true) => self.run = Run::one_shot(t + 1, n),
            (0 | 4, false) => self.run = Run::stopped(raw, self.mode == 4),
            (1 | 5, _) => {}
            (_, true) => self.load_periodic(n.max(2), t),
            (_, false) => self.run = Run::stopped(raw, true),
        }
    }

    /// Modes 2 and 3 with the gate high: a running counter takes the new count at
    /// the end of the current cycle (mode 2) or half-cycle (mode 3); a stopped one
    /// starts on the next clock.
    fn load_periodic(&mut self, m: i64, t: i64) {
        let Run::Periodic { cycle, .. } = self.run else {
            self.run = Run::periodic(t + 1, m);
            return;
        };
        let Some(k) = cycle.phase(t) else {
            // Not loaded yet: the element will take the newest count.
            self.run = Run::periodic(cycle.anchor, m);
            return;
        };
        let end = t - k + cycle.period;
        let new = Cycle {
            anchor: end,
            period: m,
        };
        let next = match cycle.high_len(self.mode) {
            // The low half of the new count begins where the old high half ends.
            high if self.mode == 3 && k < high => {
                let at = t - k + high;
                let anchor = at - new.high_len(3);
                (at, Cycle { anchor, period: m })
            }
            _ => (end, new),
        };
        self.load_tick = Some(next.0);
        self.run = Run::Periodic {
            cycle,
            next: Some(next),
        };
    }

    /// A change of the gate input at tick `t`.
    fn set_gate(&mut self, high: bool, t: i64) {
        self.settle(t);
        if high == self.gate {
            return;
        }
        self.gate = high;
        match (self.mode, high, self.run) {
            // Modes 0 and 4: gate low suspends counting, OUT unaffected.
            (0 | 4, false, Run::OneShot { anchor, count, tc }) => {
                self.run = Run::Stopped {
                    ce: self.ce_at(t),
                    out: self.out_at(t),
                    tc: tc || t - anchor >= count,
                };
            }
            (0 | 4, true, Run::Stopped { ce, tc, .. }) if self.has_count => {
                let count = match (ce, tc) {
                    (0, false) => MODULUS,
                    _ => i64::from(ce),
                };
                self.run = Run::OneShot {
                    anchor: t,
                    count,
                    tc,
                };
            }
            // Modes 2 and 3: gate low forces OUT high and stops counting.
            (2 | 3, false, _) => self.run = Run::stopped(self.ce_at(t), true),
            // A rising gate (re)triggers modes 1, 5 and restarts modes 2, 3.
            (1 | 5, true, _) if self.has_count => {
                self.load_tick.get_or_insert(t + 1);
                self.run = Run::one_shot(t + 1, self.reload);
            }
            (2 | 3, true, _) if self.has_count => {
                self.load_tick.get_or_insert(t + 1);
                self.run = Run::periodic(t + 1, self.reload.max(2));
            }
            _ => {}
        }
    }

    fn read_data(&mut self, t: i64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        let value = self.latched.unwrap_or_else(|| self.ce_at(t));
        let [lsb, msb] = value.to_le_bytes();
        match self.access {
            Access::Lsb => {
                self.latched = None;
                lsb
            }
            Access::Msb => {
                self.latched = None;
                msb
            }
            Access::Word => {
                let second = self.read_msb_next;
                self.read_msb_next = !second;
                if second {
                    self.latched = None;
                    msb
                } else {
                    lsb
                }
            }
        }
    }
}

/// The three-counter 8254 with PC port B.
pub struct Pit {
    irq0: IrqLine,
    channels: [Channel; 3],
    /// Port B bits 0-1 as last written.
    port_b: u8,
    /// The tick up to which IRQ0 reflects channel 0's OUT.
    last_tick: i64,
}

/// The PIT's saved state (see [`crate::snapshot`]): the counters with their
/// anchors in PIT ticks, port B, and how far IRQ0 has followed OUT.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PitState {
    channels: [Channel; 3],
    port_b: u8,
    last_tick: i64,
}

impl Pit {
    /// A PIT in its power-on state (see the module comment), driving `irq0`.
    pub fn new(irq0: IrqLine) -> Self {
        Self {
            irq0,
            channels: Self::power_on_channels(),
            port_b: 0,
            last_tick: 0,
        }
    }

    fn power_on_channels() -> [Channel; 3] {
        [
            Channel::power_on(true),
            Channel::power_on(true),
            Channel::power_on(false),
        ]
    }

    /// The value of counter `channel`'s counting element at `now` (0 for a channel
    /// that does not exist). Latches are neither taken nor consumed.
    pub fn count(&mut self, channel: usize, now: Nanos) -> u16 {
        self.channels
            .get(channel)
            .map_or(0, |ch| ch.ce_at(tick_at(now)))
    }

    /// The level of counter `channel`'s OUT pin at `now` (low for a channel that
    /// does not exist).
    pub fn out(&mut self, channel: usize, now: Nanos) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|ch| ch.out_at(tick_at(now)))
    }

    fn read_port_b(&self, now: Nanos) -> u8 {
        let refresh = if (now / REFRESH_NS) % 2 == 1 {
            PORT_B_REFRESH
        } else {
            0
        };
        let out2 = if self.channels[2].out_at(tick_at(now)) {
            PORT_B_OUT2
        } else {
            0
        };
        self.port_b | refresh | out2
    }

    fn read_byte(&mut self, port: u16, now: Nanos) -> Option<u8> {
        match port {
            COUNTER0..=COUNTER2 => {
                let ch = &mut self.channels[usize::from(port - COUNTER0)];
                Some(ch.read_data(tick_at(now)))
            }
            PORT_B => Some(self.read_port_b(now)),
            _ => None,
        }
    }

    fn write_control(&mut self, value: u8, t: i64) {
        let select = value >> 6;
        if select != SC_READ_BACK {
            if let Some(ch) = self.channels.get_mut(usize::from(select)) {
                ch.write_control(value, t);
            }
            return;
        }
        // Read-back: bits 3-1 select counters 2-0; bits 5 and 4 are active low.
        for (i, ch) in self.channels.iter_mut().enumerate() {
            if value & (2 << i) == 0 {
                continue;
            }
            if value & READ_BACK_NO_COUNT == 0 {
                ch.latch_count(t);
            }
            if value & READ_BACK_NO_STATUS == 0 {
                ch.latch_status(t);
            }
        }
    }

    fn write_byte(&mut self, port: u16, value: u8, t: i64) {
        match port {
            COUNTER0..=COUNTER2 => self.channels[usize::from(port - COUNTER0)].write_data(value, t),
            CONTROL => self.write_control(value, t),
            PORT_B => {
                self.port_b = value & (PORT_B_GATE2 | PORT_B_SPEAKER);
                self.channels[2].set_gate(value & PORT_B_GATE2 != 0, t);
            }
            _ => {}
        }
    }
}

impl Pit {
    /// Each byte of a wider access reads the next port up.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], now: Nanos) {
        for (port, byte) in (offset..=u16::MAX).zip(data.iter_mut()) {
            *byte = self.read_byte(port, now).unwrap_or(0xFF);
        }
    }

    /// Each byte of a wider access writes the next port up. Channel 0's output is
    /// brought up to `now` first, so edges under the old programming are kept.
    pub fn port_write(&mut self, offset: u16, data: &[u8], now: Nanos) {
        self.advance_to(now);
        let t = self.last_tick;
        for (port, &value) in (offset..=u16::MAX).zip(data.iter()) {
            self.write_byte(port, value, t);
        }
        self.irq0.set_level(self.channels[0].out_at(t));
    }

    /// Brings timers up to `now` (the trait's `advance`).
    pub fn advance_to(&mut self, now: Nanos) {
        let t = tick_at(now);
        if t > self.last_tick {
            if self.channels[0].rose_between(self.last_tick, t) {
                // Latch the edge even if OUT has fallen again since.
                self.irq0.set_level(false);
                self.irq0.set_level(true);
            }
            self.last_tick = t;
        }
        for ch in &mut self.channels {
            ch.settle(self.last_tick);
        }
        self.irq0.set_level(self.channels[0].out_at(self.last_tick));
    }
}

impl Device for Pit {
    fn name(&self) -> &'static str {
        "pit"
    }

    crate::port_device_methods!(advance);

    /// Counted from the last advance, so an edge not yet delivered is due at once.
    fn next_deadline(&self, _now: Nanos) -> Option<Nanos> {
        self.channels[0]
            .next_change_after(self.last_tick)
            .map(time_of_tick)
    }

    fn reset(&mut self) {
        self.channels = Self::power_on_channels();
        self.port_b = 0;
        self.irq0.set_level(false);
    }

    crate::state_methods!(Pit(PitState) {
        wiring: [irq0],
        state: [channels, port_b, last_tick],
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::IrqLines;
    use std::rc::Rc;

    fn setup() -> (Rc<IrqLines>, Pit) {
        let lines = IrqLines::new();
        let pit = Pit::new(lines.line(0));
        (lines, pit)
    }

    fn out(pit: &mut Pit, port: u16, value: u8, now: Nanos) {
        pit.port_write(port, &[value], now);
    }

    fn inb(pit: &mut Pit, port: u16, now: Nanos) -> u8 {
        let mut data = [0u8];
        pit.port_read(port, &mut data, now);
        data[0]
    }

    /// Programs `channel` with `mode`, LSB-then-MSB access, and `count`, at `now`.
    fn program(pit: &mut Pit, channel: u8, mode: u8, count: u16, now: Nanos) {
        let [lsb, msb] = count.to_le_bytes();
        out(pit, CONTROL, channel << 6 | 0x30 | mode << 1, now);
        out(pit, COUNTER0 + u16::from(channel), lsb, now);
        out(pit, COUNTER0 + u16::from(channel), msb, now);
    }

    /// Time of PIT tick `n`.
    fn at(n: i64) -> Nanos {
        time_of_tick(n)
    }

    #[test]
    fn pit_one_second_is_pit_hz_ticks() {
        assert_eq!(tick_at(1_000_000_000), 1_193_182);
        assert_eq!(tick_at(at(1000)), 1000);
        assert_eq!(tick_at(at(1000) - 1), 999);
    }

    #[test]
    fn pit_mode0_control_word_drives_out_low() {
        let (lines, mut pit) = setup();
        program(&mut pit, 0, 2, 100, 0);

        out(&mut pit, CONTROL, 0x30, at(10));

        assert!(!pit.out(0, at(10)));
        assert!(!lines.line(0).is_high());
    }

    #[test]
    fn pit_mode0_out_rises_n_plus_1_clocks_after_count_write() {
        let (lines, mut pit) = setup();
        program(&mut pit, 0, 0, 100, 0);
        lines.take_rising();

        let before = pit.out(0, at(100));
        let deadline = pit.next_deadline(0);
        pit.advance_to(at(101));

        assert!(!before);
        assert_eq!(deadline, Some(at(101)));
        assert_eq!(lines.take_rising(), 1);
        assert_eq!(pit.next_deadline(at(101)), None);
    }

    #[test]
    fn pit_mode0_counts_down_and_wraps_after_terminal_count() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 0, 1000, 0);

        assert_eq!(pit.count(0, at(1 + 10)), 990);
        assert_eq!(pit.count(0, at(1 + 1001)), 0xFFFF);
        assert!(pit.out(0, at(1 + 1001)));
    }

    #[test]
    fn pit_mode0_first_byte_of_word_stops_count_and_drops_out() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 0, 10, 0);

        out(&mut pit, COUNTER0, 0x20, at(50));
        let stopped = (pit.count(0, at(55)), pit.count(0, at(60)));
        let out_low = !pit.out(0, at(60));
        out(&mut pit, COUNTER0, 0x00, at(60));

        assert!(out_low);
        assert_eq!(stopped.0, stopped.1);
        assert_eq!(pit.count(0, at(61 + 5)), 0x20 - 5);
    }

    #[test]
    fn pit_count_zero_means_65536() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 0, 0, 0);

        assert_eq!(pit.count(0, at(2)), 0xFFFF);
        assert!(!pit.out(0, at(65536)));
        assert!(pit.out(0, at(65537)));
    }

    #[test]
    fn pit_mode2_out_low_for_one_clock_before_reload() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 2, 10, 0);

        // Loaded at tick 1; CE reaches 1 at tick 10, reload (CE=10) at tick 11.
        let levels: Vec<bool> = (9..=12).map(|n| pit.out(0, at(n))).collect();

        assert_eq!(levels, [true, false, true, true]);
        assert_eq!(pit.count(0, at(10)), 1);
        assert_eq!(pit.count(0, at(11)), 10);
    }

    #[test]
    fn pit_mode2_advance_at_deadlines_makes_one_edge_per_period() {
        let (lines, mut pit) = setup();
        program(&mut pit, 0, 2, 1193, 0);
        lines.take_rising();
        let mut edges = 0;
        let mut now = 0;

        while let Some(deadline) = pit.next_deadline(now) {
            now = deadline;
            if now > at(1 + 5 * 1193) {
                break;
            }
            pit.advance_to(now);
            edges += lines.take_rising().count_ones();
        }

        assert_eq!(edges, 5);
    }

    #[test]
    fn pit_mode2_late_advance_collapses_periods_into_one_edge() {
        let (lines, mut pit) = setup();
        program(&mut pit, 0, 2, 100, 0);
        lines.take_rising();

        pit.advance_to(at(1 + 350));

        assert_eq!(lines.take_rising(), 1);
        assert!(lines.line(0).is_high());
    }

    #[test]
    fn pit_mode2_new_count_takes_effect_at_next_reload() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 2, 100, 0);

        out(&mut pit, COUNTER0, 50, at(30));
        out(&mut pit, COUNTER0, 0, at(30));

        assert_eq!(pit.count(0, at(31)), 100 - 30);
        assert_eq!(pit.count(0, at(101)), 50);
        assert!(!pit.out(0, at(101 + 49)));
    }

    #[test]
    fn pit_mode6_behaves_as_mode2() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 6, 10, 0);

        assert!(!pit.out(0, at(10)));
        assert!(pit.out(0, at(11)));
    }

    #[test]
    fn pit_mode3_even_count_is_half_high_half_low() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 3, 8, 0);

        let levels: Vec<bool> = (1..=9).map(|n| pit.out(0, at(n))).collect();
        let counts: Vec<u16> = (1..=5).map(|n| pit.count(0, at(n))).collect();

        assert_eq!(
            levels,
            [true, true, true, true, false, false, false, false, true]
        );
        assert_eq!(counts, [8, 6, 4, 2, 8]);
    }

    #[test]
    fn pit_mode3_odd_count_high_one_clock_longer() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 3, 5, 0);

        // High for (5 + 1) / 2 = 3 clocks, low for (5 - 1) / 2 = 2.
        let levels: Vec<bool> = (1..=6).map(|n| pit.out(0, at(n))).collect();
        // N, N-1, then by two; after the reload N, N-3, then by two.
        let counts: Vec<u16> = (1..=5).map(|n| pit.count(0, at(n))).collect();

        assert_eq!(levels, [true, true, true, false, false, true]);
        assert_eq!(counts, [5, 4, 2, 5, 2]);
    }

    #[test]
    fn pit_mode3_new_count_takes_effect_at_half_cycle_end() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 3, 100, 0);

        out(&mut pit, COUNTER0, 20, at(10));
        out(&mut pit, COUNTER0, 0, at(10));

        // Old high half ends at 1 + 50; the new low half lasts 10, high 10.
        assert!(pit.out(0, at(50)));
        assert!(!pit.out(0, at(51)));
        assert!(!pit.out(0, at(60)));
        assert!(pit.out(0, at(61)));
        assert!(!pit.out(0, at(71)));
    }

    #[test]
    fn pit_mode4_out_low_one_clock_at_terminal_count() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 4, 10, 0);

        let levels: Vec<bool> = (10..=12).map(|n| pit.out(0, at(n))).collect();

        pit.advance_to(at(12));

        assert_eq!(levels, [true, false, true]);
        assert_eq!(pit.next_deadline(at(12)), None);
    }

    #[test]
    fn pit_mode1_gate_rise_starts_one_shot_on_channel2() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 2, 1, 10, 0);
        let idle = pit.out(2, at(5));

        out(&mut pit, PORT_B, 0x01, at(20));

        assert!(idle);
        assert!(!pit.out(2, at(21)));
        assert!(!pit.out(2, at(30)));
        assert!(pit.out(2, at(31)));
    }

    #[test]
    fn pit_mode5_gate_rise_strobes_after_count() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 2, 5, 10, 0);

        out(&mut pit, PORT_B, 0x01, at(20));

        assert!(pit.out(2, at(30)));
        assert!(!pit.out(2, at(31)));
        assert!(pit.out(2, at(32)));
    }

    #[test]
    fn pit_gate_low_suspends_mode0_count() {
        let (_lines, mut pit) = setup();
        out(&mut pit, PORT_B, 0x01, 0);
        program(&mut pit, 2, 0, 100, 0);

        out(&mut pit, PORT_B, 0x00, at(41));
        let paused = pit.count(2, at(80));
        out(&mut pit, PORT_B, 0x01, at(80));

        assert_eq!(paused, 60);
        assert_eq!(pit.count(2, at(90)), 50);
        assert!(!pit.out(2, at(139)));
        assert!(pit.out(2, at(140)));
    }

    #[test]
    fn pit_gate_low_forces_mode2_out_high_and_rise_restarts() {
        let (_lines, mut pit) = setup();
        out(&mut pit, PORT_B, 0x01, 0);
        program(&mut pit, 2, 2, 10, 0);

        out(&mut pit, PORT_B, 0x00, at(10));
        let gated = pit.out(2, at(10));
        out(&mut pit, PORT_B, 0x01, at(100));

        assert!(gated);
        assert_eq!(pit.count(2, at(101)), 10);
        assert!(!pit.out(2, at(110)));
    }

    #[test]
    fn pit_lsb_and_msb_only_access_load_one_byte() {
        let (_lines, mut pit) = setup();
        out(&mut pit, CONTROL, 0x50, 0);
        out(&mut pit, 0x41, 0x34, 0);
        let lsb = pit.count(1, at(1));
        out(&mut pit, CONTROL, 0x60, 0);
        out(&mut pit, 0x41, 0x12, 0);
        let msb = pit.count(1, at(1));

        assert_eq!((lsb, msb), (0x0034, 0x1200));
    }

    #[test]
    fn pit_counter_latch_holds_value_until_both_bytes_read() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 2, 1000, 0);

        out(&mut pit, CONTROL, 0x00, at(101));
        out(&mut pit, CONTROL, 0x00, at(201));
        let lsb = inb(&mut pit, COUNTER0, at(301));
        let msb = inb(&mut pit, COUNTER0, at(401));
        let live = u16::from_le_bytes([
            inb(&mut pit, COUNTER0, at(501)),
            inb(&mut pit, COUNTER0, at(501)),
        ]);

        assert_eq!(u16::from_le_bytes([lsb, msb]), 900);
        assert_eq!(live, 500);
    }

    #[test]
    fn pit_read_back_returns_status_before_count() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 2, 3, 0x1234, 0);

        // Read-back: latch count and status of counter 2.
        out(&mut pit, CONTROL, 0xC8, at(1));
        let status = inb(&mut pit, COUNTER2, at(5));
        let lsb = inb(&mut pit, COUNTER2, at(5));
        let msb = inb(&mut pit, COUNTER2, at(5));

        // OUT high (gate low: mode 3 holds OUT high), count loaded, RW=11, mode 3.
        assert_eq!(status, 0x80 | 0x30 | 0x06);
        assert_eq!(u16::from_le_bytes([lsb, msb]), 0x1234);
    }

    #[test]
    fn pit_status_null_count_set_until_count_loaded() {
        let (_lines, mut pit) = setup();
        program(&mut pit, 0, 0, 10, at(5));

        out(&mut pit, CONTROL, 0xE2, at(5));
        let before = inb(&mut pit, COUNTER0, at(5));
        out(&mut pit, CONTROL, 0xE2, at(6));
        let after = inb(&mut pit, COUNTER0, at(6));

        assert_eq!(before, 0x40 | 0x30);
        assert_eq!(after, 0x30);
    }

    #[test]
    fn pit_port61_reports_gate_speaker_out2_and_refresh() {
        let (_lines, mut pit) = setup();
        out(&mut pit, PORT_B, 0xFF, 0);
        program(&mut pit, 2, 0, 10, 0);

        let early = inb(&mut pit, PORT_B, 100);
        let later = inb(&mut pit, PORT_B, at(11).max(REFRESH_NS));

        assert_eq!(early, 0x03);
        assert_eq!(later, 0x03 | 0x10 | 0x20);
    }

    #[test]
    fn pit_port43_reads_all_ones() {
        let (_lines, mut pit) = setup();

        assert_eq!(inb(&mut pit, CONTROL, 0), 0xFF);
    }

    #[test]
    fn pit_reset_stops_counters_and_lowers_irq0() {
        let (lines, mut pit) = setup();
        program(&mut pit, 0, 2, 10, 0);

        pit.reset();

        assert!(!lines.line(0).is_high());
        assert_eq!(pit.next_deadline(0), None);
    }
}
