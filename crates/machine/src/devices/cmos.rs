//! The Motorola MC146818 real-time clock and its 128 bytes of CMOS RAM, as wired in
//! a PC/AT. Mapped with base 0, so offsets are absolute ports: 0x70 (index; bit 7
//! masks NMI) and 0x71 (data).
//!
//! Invariants:
//! - The clock is not stepped. It is a count of Unix seconds that changes at update
//!   instants one second apart (`anchor_ns + k * 1 s`); the time registers (0x00-0x09
//!   and the century byte 0x32) are encoded from it on every read, in the format
//!   register B selects (binary or BCD, 24- or 12-hour). Guest writes to them move the
//!   clock, keeping the update phase.
//! - While SET (register B bit 7) is 1 or the divider is held in reset (register A
//!   DV = 11x), the clock is held and writes change the held value. Releasing the
//!   divider puts the first update 500 ms later (MC146818 datasheet, "Divider
//!   Control"); clearing SET keeps the divider's phase.
//! - Interrupt flags (register C) are computed lazily for the span since the last
//!   sync: PF at each period of the rate in register A, UF at each update, AF at an
//!   update whose new time matches the alarm bytes (0xC0-0xFF is "don't care").
//!   Flags set whether or not enabled; IRQ8 is high exactly while IRQF is 1, so each
//!   interrupt is one rising edge and reading register C ends it.
//! - CMOS RAM is battery-backed, so [`Device::reset`] keeps RAM and time and only
//!   clears the enables and flags the chip's RESET pin clears (PIE, AIE, UIE, SQWE,
//!   IRQF, PF, AF, UF).
//! - Not modelled: the square-wave output (SQWE is stored only), daylight-saving
//!   adjustment (DSE is stored only), time bases other than 32.768 kHz (any
//!   non-reset DV setting runs at the PC rate), and out-of-range time values (they
//!   are normalised into the calendar rather than counted as the chip would).
//!   Changing DM or 24/12 re-encodes the time at once, where the chip would need the
//!   time rewritten. Reads of port 0x70 return 0xFF (the index is write-only).

use std::rc::Rc;

use crate::device::{Device, IrqLine, Nanos, SystemControl};

/// Index port: bits 6-0 select the register, bit 7 masks NMI.
const INDEX_PORT: u16 = 0x70;
/// Data port for the selected register.
const DATA_PORT: u16 = 0x71;
/// Index port bit 7: 1 masks NMI.
const NMI_DISABLE: u8 = 0x80;

/// Clock and calendar registers.
const REG_SECONDS: u8 = 0x00;
const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_HOURS_ALARM: u8 = 0x05;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
/// Register A: UIP, divider select, rate select.
const REG_A: u8 = 0x0A;
/// Register B: SET, PIE, AIE, UIE, SQWE, DM, 24/12, DSE.
const REG_B: u8 = 0x0B;
/// Register C: IRQF, PF, AF, UF; read-only, cleared by reading.
const REG_C: u8 = 0x0C;
/// Register D: VRT; read-only.
const REG_D: u8 = 0x0D;
/// IBM PC convention: the century, in the same format as the year.
const REG_CENTURY: u8 = 0x32;

/// Register A bit 7: update in progress.
const A_UIP: u8 = 0x80;
/// Register A bits 6-4: divider; 11x holds the divider in reset.
const A_DIVIDER_RESET: u8 = 0x60;
/// Register A bits 3-0: periodic rate select.
const A_RATE: u8 = 0x0F;
/// Register B bit 7: inhibit updates so the time can be set.
const B_SET: u8 = 0x80;
/// Register B bits 6-4: periodic, alarm and update-ended interrupt enables.
const B_INTERRUPT_ENABLES: u8 = 0x70;
/// Register B bit 4: update-ended interrupt enable.
const B_UIE: u8 = 0x10;
/// Register B bit 2: 1 = binary, 0 = BCD.
const B_DM_BINARY: u8 = 0x04;
/// Register B bit 1: 1 = 24-hour, 0 = 12-hour.
const B_24_HOUR: u8 = 0x02;
/// The bits the RESET pin clears: PIE, AIE, UIE, SQWE.
const B_RESET_CLEARS: u8 = 0x78;
/// Register C bit 7: an enabled flag is set (IRQ asserted).
const C_IRQF: u8 = 0x80;
/// Register C bit 6: periodic interrupt flag (same position as PIE).
const C_PF: u8 = 0x40;
/// Register C bit 5: alarm flag.
const C_AF: u8 = 0x20;
/// Register C bit 4: update-ended flag.
const C_UF: u8 = 0x10;
/// Register D bit 7: valid RAM and time (battery good).
const D_VRT: u8 = 0x80;
/// 12-hour mode: bit 7 of the hours byte means PM.
const HOUR_PM: u8 = 0x80;
/// Alarm bytes with both top bits set match any value.
const ALARM_DONT_CARE: u8 = 0xC0;

/// Register A at power-on: 32.768 kHz time base, 1024 Hz periodic rate.
const POWER_ON_A: u8 = 0x26;
/// Register B at power-on: 24-hour, BCD, no interrupts.
const POWER_ON_B: u8 = 0x02;

const NS_PER_SEC: i64 = 1_000_000_000;
/// UIP rises this long before each update (datasheet: 244 us with a 32.768 kHz base).
const UIP_NS: i64 = 244_000;
/// The first update after the divider leaves reset comes half a second later.
const FIRST_UPDATE_NS: i64 = 500_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Days from 0000-01-01 (proleptic Gregorian; year 0 is a leap year) to 1970-01-01.
const DAYS_0000_TO_1970: i64 = 719_528;
/// Days in a 400-year Gregorian cycle.
const DAYS_PER_400_YEARS: i64 = 146_097;

/// How much RAM the machine has, and the wall-clock time the RTC starts at.
#[derive(Clone, Copy, Debug)]
pub struct CmosConfig {
    /// Bytes of RAM below 4 GiB.
    pub ram_below_4g: u64,
    /// Bytes of RAM above 4 GiB.
    pub ram_above_4g: u64,
    /// Wall-clock Unix seconds at virtual time 0.
    pub rtc_base_unix: i64,
}

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// The year (proleptic Gregorian).
    pub year: i64,
    /// 1 to 12.
    pub month: i64,
    /// 1 to 31.
    pub day: i64,
    /// 0 to 23.
    pub hour: i64,
    /// 0 to 59.
    pub minute: i64,
    /// 0 to 59.
    pub second: i64,
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_year(year: i64) -> i64 {
    if is_leap(year) {
        366
    } else {
        365
    }
}

/// Days in `month` (1 to 12) of `year`.
pub fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `year`-01-01, for any year.
fn days_to_year(year: i64) -> i64 {
    // Count from year 0 (a leap year) in whole 400-year cycles, then leap days.
    let cycles = year.div_euclid(400);
    let y = year.rem_euclid(400);
    let leap_days = (y + 3) / 4 - (y + 99) / 100 + (y + 399) / 400;
    cycles * DAYS_PER_400_YEARS + 365 * y + leap_days - DAYS_0000_TO_1970
}

/// Unix seconds for a civil time; out-of-range fields carry into the next field.
pub fn unix_from_civil(c: Civil) -> i64 {
    let year = c.year + (c.month - 1).div_euclid(12);
    let month = (c.month - 1).rem_euclid(12) + 1;
    let days_before_month: i64 = (1..month).map(|m| days_in_month(year, m)).sum();
    let days = days_to_year(year) + days_before_month + c.day - 1;
    days * SECS_PER_DAY + c.hour * 3600 + c.minute * 60 + c.second
}

/// The civil time of Unix second `secs`.
fn civil_from_unix(secs: i64) -> Civil {
    let days = secs.div_euclid(SECS_PER_DAY);
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let from_year0 = days + DAYS_0000_TO_1970;
    let mut year = from_year0.div_euclid(DAYS_PER_400_YEARS) * 400;
    let mut rest = from_year0.rem_euclid(DAYS_PER_400_YEARS);
    while rest >= days_in_year(year) {
        rest -= days_in_year(year);
        year += 1;
    }
    let mut month = 1;
    while rest >= days_in_month(year, month) {
        rest -= days_in_month(year, month);
        month += 1;
    }
    Civil {
        year,
        month,
        day: rest + 1,
        hour: sod / 3600,
        minute: sod / 60 % 60,
        second: sod % 60,
    }
}

/// Register value 1-7 with Sunday = 1; 1970-01-01 was a Thursday.
fn weekday_from_unix(secs: i64) -> i64 {
    (secs.div_euclid(SECS_PER_DAY) + 4).rem_euclid(7) + 1
}

fn to_i64(now: Nanos) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

/// The MC146818 RTC with CMOS RAM.
pub struct Cmos {
    irq8: IrqLine,
    ctl: Rc<SystemControl>,
    /// Registers and RAM; the time registers, C, D and 0x32 are computed instead.
    ram: [u8; 128],
    index: u8,
    /// An update instant of the divider (or a virtual one before power-on).
    anchor_ns: i64,
    /// The clock, in Unix seconds, at `anchor_ns` (when not held).
    anchor_secs: i64,
    /// The clock while SET or a divider reset holds it.
    held: Option<i64>,
    /// Added to the computed day of week (0-6), set by writes to register 6.
    weekday_offset: i64,
    /// PF, AF, UF as of `last_sync`.
    flags: u8,
    last_sync: i64,
}

/// The RTC's saved state (see [`crate::snapshot`]): registers and RAM, and
/// the clock's anchor in virtual time (so the date it was started with, not
/// the restoring run's `--rtc`, goes on).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CmosState {
    #[serde(with = "crate::snapshot::byte_array")]
    ram: [u8; 128],
    index: u8,
    anchor_ns: i64,
    anchor_secs: i64,
    held: Option<i64>,
    weekday_offset: i64,
    flags: u8,
    last_sync: i64,
}

impl Cmos {
    /// The RTC at `cfg.rtc_base_unix`, with the memory-size bytes for `cfg`.
    pub fn new(irq8: IrqLine, ctl: Rc<SystemControl>, cfg: CmosConfig) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = POWER_ON_A;
        ram[usize::from(REG_B)] = POWER_ON_B;
        fill_memory_bytes(&mut ram, cfg);
        Self {
            irq8,
            ctl,
            ram,
            index: REG_D,
            anchor_ns: 0,
            // About +-35000 years: keeps the calendar arithmetic far from overflow
            // whatever the configuration says.
            anchor_secs: cfg.rtc_base_unix.clamp(-(1 << 40), 1 << 40),
            held: None,
            weekday_offset: 0,
            flags: 0,
            last_sync: 0,
        }
    }

    /// Reads register `index` (bits 6-0) at `now` exactly as the guest would,
    /// side effects included (reading register C clears it).
    pub fn read_register(&mut self, index: u8, now: Nanos) -> u8 {
        let t = to_i64(now);
        self.sync(t);
        let index = index & 0x7F;
        match index {
            REG_SECONDS..=REG_YEAR | REG_CENTURY => self.read_time(index, t),
            REG_A => self.ram[usize::from(REG_A)] | if self.uip(t) { A_UIP } else { 0 },
            REG_C => {
                let value = self.flags | if self.irqf() { C_IRQF } else { 0 };
                self.flags = 0;
                self.irq8.set_level(false);
                value
            }
            REG_D => D_VRT,
            _ => self.ram[usize::from(index)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8, now: Nanos) {
        let t = to_i64(now);
        self.sync(t);
        match index {
            REG_SECONDS_ALARM | REG_MINUTES_ALARM | REG_HOURS_ALARM => {
                self.ram[usize::from(index)] = value;
            }
            REG_SECONDS..=REG_YEAR | REG_CENTURY => self.write_time(index, value, t),
            REG_A => self.write_a(value, t),
            REG_B => self.write_b(value, t),
            REG_C | REG_D => {}
            _ => self.ram[usize::from(index)] = value,
        }
        self.update_irq();
    }

    fn reg_b(&self) -> u8 {
        self.ram[usize::from(REG_B)]
    }

    fn divider_running(&self) -> bool {
        self.ram[usize::from(REG_A)] & A_DIVIDER_RESET != A_DIVIDER_RESET
    }

    /// Whether updates happen (divider running and SET clear).
    fn updating(&self) -> bool {
        self.divider_running() && self.reg_b() & B_SET == 0
    }

    fn since_anchor(&self, t: i64) -> i64 {
        t.saturating_sub(self.anchor_ns)
    }

    fn secs(&self, t: i64) -> i64 {
        self.held
            .unwrap_or_else(|| self.anchor_secs + self.updates_by(t))
    }

    /// Number of update instants from the anchor up to and including `t`.
    fn updates_by(&self, t: i64) -> i64 {
        self.since_anchor(t).div_euclid(NS_PER_SEC)
    }

    fn next_update_after(&self, t: i64) -> i64 {
        self.anchor_ns + (self.updates_by(t) + 1) * NS_PER_SEC
    }

    fn uip(&self, t: i64) -> bool {
        self.updating() && self.next_update_after(t) - t <= UIP_NS
    }

    /// Holds the clock at its value at `t` (SET or divider reset).
    fn hold(&mut self, t: i64) {
        if self.held.is_none() {
            self.held = Some(self.secs(t));
        }
    }

    /// Lets a held clock run again from `t`, keeping the divider phase.
    fn release(&mut self, t: i64) {
        if let Some(value) = self.held.take() {
            self.anchor_secs = value - self.updates_by(t);
        }
    }

    /// Periodic rate in Hz from register A: 32768 >> (rate - 1), except that
    /// rates 1 and 2 give 256 and 128 Hz (datasheet, periodic rate table).
    fn periodic_hz(&self) -> Option<i64> {
        match self.ram[usize::from(REG_A)] & A_RATE {
            0 => None,
            1 => Some(256),
            2 => Some(128),
            rate => Some(32_768 >> (rate - 1)),
        }
    }

    /// Periodic events from the anchor up to and including `t`.
    fn periods_by(&self, t: i64, hz: i64) -> i128 {
        (i128::from(self.since_anchor(t)) * i128::from(hz)).div_euclid(i128::from(NS_PER_SEC))
    }

    fn next_period_after(&self, t: i64, hz: i64) -> i64 {
        let k = self.periods_by(t, hz) + 1;
        let offset = (k * i128::from(NS_PER_SEC) + i128::from(hz) - 1).div_euclid(i128::from(hz));
        self.anchor_ns
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    fn alarm_matches(&self, reg: u8, encoded: u8) -> bool {
        let alarm = self.ram[usize::from(reg)];
        alarm & ALARM_DONT_CARE == ALARM_DONT_CARE || alarm == encoded
    }

    /// Seconds from clock value `secs` to the next later second whose time of day
    /// matches the alarm bytes, if any does.
    fn next_alarm_delta(&self, secs: i64) -> Option<i64> {
        let hours: Vec<bool> = (0..24)
            .map(|h| self.alarm_matches(REG_HOURS_ALARM, self.encode_hour(h)))
            .collect();
        let minutes: Vec<bool> = (0..60)
            .map(|m| self.alarm_matches(REG_MINUTES_ALARM, self.encode(m)))
            .collect();
        let seconds: Vec<bool> = (0..60)
            .map(|s| self.alarm_matches(REG_SECONDS_ALARM, self.encode(s)))
            .collect();
        if [&hours, &minutes, &seconds]
            .iter()
            .any(|v| !v.contains(&true))
        {
            return None;
        }
        let now = secs.rem_euclid(SECS_PER_DAY);
        // Every field can match, so each loop ends within a few iterations.
        for start in (0..48).map(|i| i * 3600).filter(|&s| s + 3599 > now) {
            if !hours[(start / 3600 % 24) as usize] {
                continue;
            }
            for m in (0..60).filter(|&m| minutes[m as usize]) {
                let minute = start + m * 60;
                if let Some(s) = (0..60).find(|&s| seconds[s as usize] && minute + s > now) {
                    return Some(minute + s - now);
                }
            }
        }
        None
    }

    /// Folds the interrupt events in `(last_sync, t]` into the flags.
    fn sync(&mut self, t: i64) {
        let t0 = self.last_sync;
        if t <= t0 {
            return;
        }
        if self.divider_running() {
            if let Some(hz) = self.periodic_hz() {
                if self.periods_by(t, hz) > self.periods_by(t0, hz) {
                    self.flags |= C_PF;
                }
            }
            if self.updating() && self.updates_by(t) > self.updates_by(t0) {
                self.flags |= C_UF;
                let (s0, s1) = (self.secs(t0), self.secs(t));
                if self.next_alarm_delta(s0).is_some_and(|d| s0 + d <= s1) {
                    self.flags |= C_AF;
                }
            }
        }
        self.last_sync = t;
        self.update_irq();
    }

    fn irqf(&self) -> bool {
        self.flags & self.reg_b() & B_INTERRUPT_ENABLES != 0
    }

    fn update_irq(&self) {
        self.irq8.set_level(self.irqf());
    }

    fn encode(&self, value: i64) -> u8 {
        if self.reg_b() & B_DM_BINARY != 0 {
            value.rem_euclid(256) as u8
        } else {
            let v = value.rem_euclid(100) as u8;
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, raw: u8) -> i64 {
        if self.reg_b() & B_DM_BINARY != 0 {
            i64::from(raw)
        } else {
            i64::from(raw >> 4) * 10 + i64::from(raw & 0x0F)
        }
    }

    fn encode_hour(&self, hour: i64) -> u8 {
        if self.reg_b() & B_24_HOUR != 0 {
            return self.encode(hour);
        }
        let twelve = if hour % 12 == 0 { 12 } else { hour % 12 };
        self.encode(twelve) | if hour >= 12 { HOUR_PM } else { 0 }
    }

    fn decode_hour(&self, raw: u8) -> i64 {
        if self.reg_b() & B_24_HOUR != 0 {
            return self.decode(raw);
        }
        let pm = if raw & HOUR_PM != 0 { 12 } else { 0 };
        self.decode(raw & !HOUR_PM) % 12 + pm
    }

    fn read_time(&self, index: u8, t: i64) -> u8 {
        let secs = self.secs(t);
        let c = civil_from_unix(secs);
        match index {
            REG_SECONDS => self.encode(c.second),
            REG_MINUTES => self.encode(c.minute),
            REG_HOURS => self.encode_hour(c.hour),
            REG_WEEKDAY => {
                let day = (weekday_from_unix(secs) - 1 + self.weekday_offset).rem_euclid(7);
                self.encode(day + 1)
            }
            REG_DAY => self.encode(c.day),
            REG_MONTH => self.encode(c.month),
            REG_YEAR => self.encode(c.year.rem_euclid(100)),
            _ => self.encode(c.year.div_euclid(100)),
        }
    }

    fn write_time(&mut self, index: u8, value: u8, t: i64) {
        let old = self.secs(t);
        if index == REG_WEEKDAY {
            self.weekday_offset = (self.decode(value) - weekday_from_unix(old)).rem_euclid(7);
            return;
        }
        let mut c = civil_from_unix(old);
        let v = self.decode(value);
        match index {
            REG_SECONDS => c.second = v,
            REG_MINUTES => c.minute = v,
            REG_HOURS => c.hour = self.decode_hour(value),
            REG_DAY => c.day = v,
            REG_MONTH => c.month = v,
            REG_YEAR => c.year = c.year.div_euclid(100) * 100 + v,
            _ => c.year = v * 100 + c.year.rem_euclid(100),
        }
        let new = unix_from_civil(c);
        match &mut self.held {
            Some(held) => *held = new,
            None => self.anchor_secs += new - old,
        }
    }

    fn write_a(&mut self, value: u8, t: i64) {
        let was_running = self.divider_running();
        self.ram[usize::from(REG_A)] = value & !A_UIP;
        match (was_running, self.divider_running()) {
            (true, false) => self.hold(t),
            (false, true) => {
                self.anchor_ns = t - (NS_PER_SEC - FIRST_UPDATE_NS);
                if self.reg_b() & B_SET == 0 {
                    self.release(t);
                }
            }
            _ => {}
        }
    }

    fn write_b(&mut self, value: u8, t: i64) {
        let set = value & B_SET != 0;
        // Setting SET also clears UIE (datasheet, register B bit 4).
        let value = if set { value & !B_UIE } else { value };
        self.ram[usize::from(REG_B)] = value;
        if set {
            self.hold(t);
        } else if self.divider_running() {
            self.release(t);
        }
    }
}

/// The PC/AT memory-size bytes and their checksum (IBM AT technical reference).
fn fill_memory_bytes(ram: &mut [u8; 128], cfg: CmosConfig) {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    let put16 = |ram: &mut [u8; 128], at: usize, value: u64| {
        let [lo, hi] = (value.min(0xFFFF) as u16).to_le_bytes();
        ram[at] = lo;
        ram[at + 1] = hi;
    };
    // 0x10: no floppy drives. 0x14 (equipment): no floppy, math coprocessor
    // present (the CPU's x87), EGA/VGA display (bits 4-5 = 0).
    ram[0x10] = 0;
    ram[0x14] = 0x02;
    put16(ram, 0x15, 640);
    let extended_kb = cfg.ram_below_4g.saturating_sub(MIB) / KIB;
    put16(ram, 0x17, extended_kb);
    put16(ram, 0x30, extended_kb);
    put16(
        ram,
        0x34,
        cfg.ram_below_4g.saturating_sub(16 * MIB) / (64 * KIB),
    );
    let high = (cfg.ram_above_4g / (64 * KIB)).min(0xFF_FFFF).to_le_bytes();
    ram[0x5B..=0x5D].copy_from_slice(&high[..3]);
    let sum: u16 = ram[0x10..=0x2D].iter().map(|&b| u16::from(b)).sum();
    ram[0x2E..=0x2F].copy_from_slice(&sum.to_be_bytes());
}

impl Cmos {
    /// Each byte of a wider access reads the next port up.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], now: Nanos) {
        for (port, byte) in (offset..=u16::MAX).zip(data.iter_mut()) {
            *byte = match port {
                DATA_PORT => self.read_register(self.index, now),
                _ => 0xFF,
            };
        }
    }

    /// Each byte of a wider access writes the next port up.
    pub fn port_write(&mut self, offset: u16, data: &[u8], now: Nanos) {
        for (port, &value) in (offset..=u16::MAX).zip(data.iter()) {
            match port {
                INDEX_PORT => {
                    self.index = value & 0x7F;
                    self.ctl.set_nmi_masked(value & NMI_DISABLE != 0);
                }
                DATA_PORT => self.write_register(self.index, value, now),
                _ => {}
            }
        }
    }

    /// Brings timers up to `now` (the trait's `advance`).
    pub fn advance_to(&mut self, now: Nanos) {
        self.sync(to_i64(now));
    }
}

impl Device for Cmos {
    fn name(&self) -> &'static str {
        "cmos"
    }

    crate::port_device_methods!(advance);

    /// Counted from the last sync, so an event not yet delivered is due at once.
    fn next_deadline(&self, _now: Nanos) -> Option<Nanos> {
        if self.irqf() || !self.divider_running() {
            return None;
        }
        let t = self.last_sync;
        let enables = self.reg_b();
        let periodic = (enables & C_PF != 0)
            .then(|| self.periodic_hz())
            .flatten()
            .map(|hz| self.next_period_after(t, hz));
        let update = (enables & C_UF != 0 && self.updating()).then(|| self.next_update_after(t));
        let alarm = (enables & C_AF != 0 && self.updating())
            .then(|| self.next_alarm_delta(self.secs(t)))
            .flatten()
            .map(|d| self.next_update_after(t) + (d - 1) * NS_PER_SEC);
        [periodic, update, alarm]
            .into_iter()
            .flatten()
            .min()
            .map(|at| u64::try_from(at).unwrap_or(0))
    }

    fn reset(&mut self) {
        self.ram[usize::from(REG_B)] &= !B_RESET_CLEARS;
        self.flags = 0;
        self.irq8.set_level(false);
    }

    crate::state_methods!(Cmos(CmosState) {
        wiring: [irq8, ctl],
        state: [ram, index, anchor_ns, anchor_secs, held, weekday_offset, flags, last_sync],
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::IrqLines;

    /// 2024-02-29 13:45:30 UTC, a Thursday.
    const LEAP_DAY: i64 = 1_709_214_330;
    const SEC: Nanos = 1_000_000_000;

    fn setup_with(cfg: CmosConfig) -> (Rc<IrqLines>, Rc<SystemControl>, Cmos) {
        let lines = IrqLines::new();
        let ctl = SystemControl::new();
        let cmos = Cmos::new(lines.line(8), Rc::clone(&ctl), cfg);
        (lines, ctl, cmos)
    }

    fn setup(base: i64) -> (Rc<IrqLines>, Cmos) {
        let (lines, _ctl, cmos) = setup_with(CmosConfig {
            ram_below_4g: 128 << 20,
            ram_above_4g: 0,
            rtc_base_unix: base,
        });
        (lines, cmos)
    }

    fn write(cmos: &mut Cmos, index: u8, value: u8, now: Nanos) {
        cmos.port_write(INDEX_PORT, &[index], now);
        cmos.port_write(DATA_PORT, &[value], now);
    }

    fn time(cmos: &mut Cmos, now: Nanos) -> [u8; 7] {
        [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09].map(|i| cmos.read_register(i, now))
    }

    #[test]
    fn cmos_civil_conversion_matches_known_dates() {
        assert_eq!(civil_from_unix(0).year, 1970);
        assert_eq!(
            civil_from_unix(-1),
            Civil {
                year: 1969,
                month: 12,
                day: 31,
                hour: 23,
                minute: 59,
                second: 59
            }
        );
        assert_eq!(
            civil_from_unix(4_107_542_400),
            Civil {
                year: 2100,
                month: 3,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        assert_eq!(unix_from_civil(civil_from_unix(LEAP_DAY)), LEAP_DAY);
    }

    #[test]
    fn cmos_time_registers_read_bcd_24_hour_by_default() {
        let (_lines, mut cmos) = setup(LEAP_DAY);

        let regs = time(&mut cmos, 0);
        let century = cmos.read_register(REG_CENTURY, 0);

        // sec, min, hour, weekday (Thursday = 5), day, month, year.
        assert_eq!(regs, [0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24]);
        assert_eq!(century, 0x20);
    }

    #[test]
    fn cmos_binary_12_hour_mode_encodes_pm_in_bit7() {
        let (_lines, mut cmos) = setup(LEAP_DAY);

        write(&mut cmos, REG_B, B_DM_BINARY, 0);

        assert_eq!(time(&mut cmos, 0), [30, 45, 0x80 | 1, 5, 29, 2, 24]);
    }

    #[test]
    fn cmos_clock_advances_and_rolls_over_leap_day() {
        // 2024-02-29 23:59:59.
        let (_lines, mut cmos) = setup(1_709_251_199);

        let before = time(&mut cmos, SEC - 1);
        let after = time(&mut cmos, SEC);

        assert_eq!(before, [0x59, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24]);
        assert_eq!(after, [0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x24]);
    }

    #[test]
    fn cmos_century_rolls_over_at_year_2000() {
        let (_lines, mut cmos) = setup(946_684_799);

        let before = (
            cmos.read_register(REG_YEAR, 0),
            cmos.read_register(REG_CENTURY, 0),
        );
        let after = (
            cmos.read_register(REG_YEAR, SEC),
            cmos.read_register(REG_CENTURY, SEC),
        );

        assert_eq!(before, (0x99, 0x19));
        assert_eq!(after, (0x00, 0x20));
    }

    #[test]
    fn cmos_time_write_sets_clock_which_keeps_running() {
        let (_lines, mut cmos) = setup(LEAP_DAY);

        write(&mut cmos, REG_HOURS, 0x08, SEC / 2);
        write(&mut cmos, REG_MONTH, 0x12, SEC / 2);

        assert_eq!(
            time(&mut cmos, SEC / 2),
            [0x30, 0x45, 0x08, 0x01, 0x29, 0x12, 0x24]
        );
        assert_eq!(cmos.read_register(REG_SECONDS, SEC), 0x31);
    }

    #[test]
    fn cmos_weekday_write_keeps_counting_at_midnight() {
        // 2024-02-29 23:59:59, a Thursday; the guest claims it is a Tuesday.
        let (_lines, mut cmos) = setup(1_709_251_199);

        write(&mut cmos, REG_WEEKDAY, 0x03, 0);

        assert_eq!(cmos.read_register(REG_WEEKDAY, 0), 0x03);
        assert_eq!(cmos.read_register(REG_WEEKDAY, SEC), 0x04);
    }

    #[test]
    fn cmos_12_hour_write_decodes_pm_and_midnight() {
        let (_lines, mut cmos) = setup(LEAP_DAY);
        write(&mut cmos, REG_B, 0x00, 0);

        write(&mut cmos, REG_HOURS, HOUR_PM | 0x12, 0);
        write(&mut cmos, REG_B, B_24_HOUR, 0);
        let noon = cmos.read_register(REG_HOURS, 0);
        write(&mut cmos, REG_B, 0x00, 0);
        write(&mut cmos, REG_HOURS, 0x12, 0);
        write(&mut cmos, REG_B, B_24_HOUR, 0);
        let midnight = cmos.read_register(REG_HOURS, 0);

        assert_eq!((noon, midnight), (0x12, 0x00));
    }

    #[test]
    fn cmos_set_bit_holds_clock_until_cleared() {
        let (_lines, mut cmos) = setup(LEAP_DAY);

        write(&mut cmos, REG_B, B_SET | B_24_HOUR, SEC / 2);
        write(&mut cmos, REG_SECONDS, 0x10, SEC / 2);
        let held = cmos.read_register(REG_SECONDS, 5 * SEC);
        write(&mut cmos, REG_B, B_24_HOUR, 5 * SEC + SEC / 2);

        assert_eq!(held, 0x10);
        assert_eq!(cmos.read_register(REG_SECONDS, 6 * SEC - 1), 0x10);
        assert_eq!(cmos.read_register(REG_SECONDS, 6 * SEC), 0x11);
    }

    #[test]
    fn cmos_set_bit_clears_uie() {
        let (_lines, mut cmos) = setup(0);

        write(&mut cmos, REG_B, B_SET | B_UIE | B_24_HOUR, 0);

        assert_eq!(cmos.read_register(REG_B, 0), B_SET | B_24_HOUR);
    }

    #[test]
    fn cmos_divider_reset_holds_time_and_first_update_comes_500ms_later() {
        let (_lines, mut cmos) = setup(LEAP_DAY);

        write(&mut cmos, REG_A, 0x70, SEC / 4);
        let held = cmos.read_register(REG_SECONDS, 3 * SEC);
        write(&mut cmos, REG_A, 0x26, 3 * SEC);

        assert_eq!(held, 0x30);
        assert_eq!(cmos.read_register(REG_SECONDS, 3 * SEC + SEC / 2 - 1), 0x30);
        assert_eq!(cmos.read_register(REG_SECONDS, 3 * SEC + SEC / 2), 0x31);
    }

    #[test]
    fn cmos_uip_set_only_in_last_244us_before_update() {
        let (_lines, mut cmos) = setup(0);

        let early = cmos.read_register(REG_A, SEC - 244_001);
        let window = cmos.read_register(REG_A, SEC - 244_000);
        let updated = cmos.read_register(REG_A, SEC);

        assert_eq!((early, window, updated), (0x26, 0xA6, 0x26));
    }

    #[test]
    fn cmos_periodic_rate6_deadline_is_1024hz() {
        let (lines, mut cmos) = setup(0);
        write(&mut cmos, REG_B, 0x40 | B_24_HOUR, 0);

        // 1 s / 1024 = 976562.5 ns.
        let deadline = cmos.next_deadline(0);
        cmos.advance_to(976_563);

        assert_eq!(deadline, Some(976_563));
        assert_eq!(lines.take_rising(), 1 << 8);
        assert_eq!(cmos.read_register(REG_C, 976_563), C_IRQF | C_PF);
    }

    #[test]
    fn cmos_periodic_rate1_is_256hz_and_rate15_is_2hz() {
        let (_lines, mut cmos) = setup(0);
        write(&mut cmos, REG_B, 0x40 | B_24_HOUR, 0);

        write(&mut cmos, REG_A, 0x21, 0);
        let rate1 = cmos.next_deadline(0);
        write(&mut cmos, REG_A, 0x2F, 0);
        let rate15 = cmos.next_deadline(0);

        assert_eq!(rate1, Some(3_906_250));
        assert_eq!(rate15, Some(500_000_000));
    }

    #[test]
    fn cmos_register_c_read_clears_flags_and_lowers_irq8() {
        let (lines, mut cmos) = setup(0);
        write(&mut cmos, REG_B, B_UIE | B_24_HOUR, 0);
        cmos.advance_to(SEC);
        let raised = lines.line(8).is_high();

        let first = cmos.read_register(REG_C, SEC);
        let second = cmos.read_register(REG_C, SEC);

        assert!(raised);
        // PF is set too: the default rate runs even with PIE clear.
        assert_eq!((first, second), (C_IRQF | C_PF | C_UF, 0));
        assert!(!lines.line(8).is_high());
        assert_eq!(cmos.next_deadline(SEC), Some(2 * SEC));
    }

    #[test]
    fn cmos_flags_set_without_enables_but_irq8_stays_low() {
        let (lines, mut cmos) = setup(0);

        cmos.advance_to(SEC);

        assert!(!lines.line(8).is_high());
        assert_eq!(cmos.next_deadline(SEC), None);
        assert_eq!(cmos.read_register(REG_C, SEC), C_PF | C_UF);
    }

    #[test]
    fn cmos_alarm_fires_when_time_matches() {
        let (_lines, mut cmos) = setup(LEAP_DAY);
        write(&mut cmos, REG_HOURS_ALARM, 0x13, 0);
        write(&mut cmos, REG_MINUTES_ALARM, 0x46, 0);
        write(&mut cmos, REG_SECONDS_ALARM, 0x00, 0);
        write(&mut cmos, REG_B, 0x20 | B_24_HOUR, 0);

        let deadline = cmos.next_deadline(0);
        cmos.advance_to(29 * SEC);
        let early = cmos.read_register(REG_C, 29 * SEC);
        cmos.advance_to(30 * SEC);

        assert_eq!(deadline, Some(30 * SEC));
        assert_eq!(early & C_AF, 0);
        assert_eq!(
            cmos.read_register(REG_C, 30 * SEC),
            C_IRQF | C_AF | C_UF | C_PF
        );
    }

    #[test]
    fn cmos_alarm_dont_care_bytes_match_every_second() {
        let (_lines, mut cmos) = setup(LEAP_DAY);
        for reg in [REG_HOURS_ALARM, REG_MINUTES_ALARM, REG_SECONDS_ALARM] {
            write(&mut cmos, reg, 0xFF, 0);
        }
        write(&mut cmos, REG_B, 0x20 | B_24_HOUR, 0);

        assert_eq!(cmos.next_deadline(0), Some(SEC));
    }

    #[test]
    fn cmos_register_d_reads_vrt_and_ignores_writes() {
        let (_lines, mut cmos) = setup(0);

        write(&mut cmos, REG_D, 0x00, 0);

        assert_eq!(cmos.read_register(REG_D, 0), 0x80);
    }

    #[test]
    fn cmos_memory_size_bytes_describe_ram() {
        let (_lines, _ctl, mut cmos) = setup_with(CmosConfig {
            ram_below_4g: 3 << 30,
            ram_above_4g: 1 << 30,
            rtc_base_unix: 0,
        });

        let mut read = |i: u8| cmos.read_register(i, 0);
        let base = u16::from_le_bytes([read(0x15), read(0x16)]);
        let ext = u16::from_le_bytes([read(0x17), read(0x18)]);
        let ext2 = u16::from_le_bytes([read(0x30), read(0x31)]);
        let above16 = u16::from_le_bytes([read(0x34), read(0x35)]);
        let above4g = u32::from_le_bytes([read(0x5B), read(0x5C), read(0x5D), 0]);

        assert_eq!((read(0x10), read(0x14)), (0x00, 0x02));
        assert_eq!(base, 640);
        assert_eq!((ext, ext2), (0xFFFF, 0xFFFF));
        // (3 GiB - 16 MiB) / 64 KiB = 49152 - 256.
        assert_eq!(above16, 48_896);
        assert_eq!(above4g, 16_384);
    }

    #[test]
    fn cmos_small_ram_extended_size_in_kb() {
        let (_lines, _ctl, mut cmos) = setup_with(CmosConfig {
            ram_below_4g: 32 << 20,
            ram_above_4g: 0,
            rtc_base_unix: 0,
        });

        let ext = u16::from_le_bytes([cmos.read_register(0x17, 0), cmos.read_register(0x18, 0)]);
        let above16 =
            u16::from_le_bytes([cmos.read_register(0x34, 0), cmos.read_register(0x35, 0)]);

        assert_eq!(ext, 31 * 1024);
        assert_eq!(above16, 256);
    }

    #[test]
    fn cmos_checksum_is_big_endian_sum_of_0x10_to_0x2d() {
        let (_lines, mut cmos) = setup(0);

        let sum: u16 = (0x10..=0x2D)
            .map(|i| u16::from(cmos.read_register(i, 0)))
            .sum();
        let stored = u16::from_be_bytes([cmos.read_register(0x2E, 0), cmos.read_register(0x2F, 0)]);

        // Equipment 0x02, base 640 KB (0x0280), extended capped at 0xFFFF KB.
        assert_eq!(stored, 0x02 + 0x80 + 0x02 + 0xFF + 0xFF);
        assert_eq!(stored, sum);
    }

    #[test]
    fn cmos_index_bit7_masks_nmi() {
        let (_lines, ctl, mut cmos) = setup_with(CmosConfig {
            ram_below_4g: 0,
            ram_above_4g: 0,
            rtc_base_unix: 0,
        });

        cmos.port_write(INDEX_PORT, &[0x8F], 0);
        let masked = ctl.nmi_masked();
        cmos.port_write(INDEX_PORT, &[0x0F], 0);

        assert!(masked);
        assert!(!ctl.nmi_masked());
    }

    #[test]
    fn cmos_ram_bytes_read_back_through_ports() {
        let (_lines, mut cmos) = setup(0);
        write(&mut cmos, 0x40, 0xA5, 0);

        let mut data = [0u8; 2];
        cmos.port_read(DATA_PORT, &mut data, 0);

        assert_eq!(data, [0xA5, 0xFF]);
    }

    #[test]
    fn cmos_reset_clears_enables_and_flags_but_keeps_time() {
        let (lines, mut cmos) = setup(LEAP_DAY);
        write(&mut cmos, REG_B, 0x7A, 0);
        cmos.advance_to(SEC);

        cmos.reset();

        assert_eq!(cmos.read_register(REG_B, SEC), 0x02);
        assert_eq!(cmos.read_register(REG_C, SEC), 0);
        assert!(!lines.line(8).is_high());
        assert_eq!(cmos.read_register(REG_SECONDS, SEC), 0x31);
    }
}
