//! The power-management I/O block of the Intel 82371AB (PIIX4) function 3: the ACPI
//! 1.0 fixed registers PM1a_EVT (PMSTS/PMEN), PM1a_CNT (PMCNTRL) and the PM timer
//! (PMTMR), followed by the GPE0 block and PIIX4's processor and global registers.
//!
//! Where the block lives is decided by PCI configuration space, not by this device:
//! PMBA (function 3, offset 40h) holds the base and PMREGMISC (80h) bit 0 enables the
//! decode. [`crate::devices::pci::PciHost`] owns those registers and publishes them
//! through a [`PmShared`] handle that this device reads on every access.
//!
//! Limit: the port bus maps ranges statically, so [`AcpiPm`] is mapped with base 0
//! over the one 64-byte block at [`PM_IO_PORT`] (0x600, the base SeaBIOS programs)
//! and sees absolute port numbers. It answers only while the decode is enabled and
//! PMBA selects that same block; otherwise it reads 0xFF and drops writes, as an
//! undecoded ISA port would. A guest that moves PMBA elsewhere loses the block.
//!
//! Invariants:
//! - The timer is not stepped. Its value at `now` is
//!   `floor(now * PM_TIMER_HZ / 1e9) mod 2^24`, in exact `u128` arithmetic, so it
//!   counts from power-on and a system reset does not restart it.
//! - TMROF_STS (PMSTS bit 0) is computed lazily: it reads 1 when the unwrapped tick
//!   count shifted right by 23 differs from its value when the bit was last cleared,
//!   i.e. bit 23 of the 24-bit count toggled at least once in between (PIIX4
//!   datasheet, PMSTS: the status is set on each toggle of the timer's MSB). Writing
//!   1 clears it.
//! - No event is ever raised: there is no power button, RTC alarm or GPE source, and
//!   the SCI (PCI INTA# of function 3, IRQ 9 as firmware routes it) is never driven
//!   even when TMROF_EN and TMROF_STS are both set.
//! - PMCNTRL keeps SCI_EN, BRLD_EN_BM and SUS_TYP (ACPI SLP_TYP). Writing SUS_EN
//!   (ACPI SLP_EN) with SUS_TYP 0 is soft-off (PIIX4 datasheet, PMCNTRL: 000 =
//!   soft off; the `\_S5` package of our ACPI tables names that value): it asks
//!   [`SystemControl`] to power the machine off. Other sleep types (suspend) are
//!   not modelled: the write has no effect and the machine keeps running.
//!   GBL_RLS is write-only and raises no SMI.
//! - Offsets 0Ch-3Fh are stored and read back with no side effect, except that the
//!   write-1-to-clear GPSTS reads 0 (no general-purpose event exists) and reading
//!   P_LVL2/P_LVL3 returns 0 without entering a C state. GLBCTL's SMI_EN and the
//!   other SMI plumbing do nothing: the machine has no SMM.

use std::cell::Cell;
use std::rc::Rc;

use crate::device::{Device, Nanos, SystemControl};

/// The ACPI power-management timer frequency: 14.31818 MHz / 4 (ACPI spec, Power
/// Management Timer).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// Size of the PIIX4 PM I/O space: PMBA decodes address bits 15:6.
pub const PM_IO_SIZE: u16 = 64;
/// The one block this model can decode: map [`AcpiPm`] with base 0 over
/// `PM_IO_PORT..=PM_IO_PORT + PM_IO_SIZE - 1`.
pub const PM_IO_PORT: u16 = 0x600;

/// PMSTS, 16-bit, write 1 to clear (ACPI PM1a_STS).
const PM1_STS: u8 = 0x00;
/// PMEN, 16-bit (ACPI PM1a_EN).
const PM1_EN: u8 = 0x02;
/// PMCNTRL, 16-bit (ACPI PM1a_CNT).
const PM1_CNT: u8 = 0x04;
/// Reserved word between PMCNTRL and PMTMR; reads 0.
const PM1_RESERVED: u8 = 0x06;
/// PMTMR, 32-bit read-only; bits 23:0 count, 31:24 read 0 (ACPI TMR_VAL_EXT = 0).
const PM_TMR: u8 = 0x08;
/// GPSTS, 16-bit, write 1 to clear (ACPI GPE0_STS).
const GPE0_STS: u8 = 0x0C;
/// P_LVL2 (14h) and P_LVL3 (15h), 8-bit read-only: on real hardware a read enters
/// the C2 or C3 state. Decoded together by their even address.
const P_LVL2: u8 = 0x14;

/// PMSTS bit 0: TMROF_STS, the timer's bit 23 toggled.
const TMROF_STS: u16 = 0x0001;
/// PMEN bits the PIIX4 implements: TMROF_EN (0), GBL_EN (5), PWRBTN_EN (8),
/// RTC_EN (10).
const PM1_EN_WRITABLE: u16 = 0x0521;
/// PMCNTRL bits that read back: SCI_EN (0), BRLD_EN_BM (1), SUS_TYP (12:10).
/// GBL_RLS (2) and SUS_EN (13) are write-only and read 0.
const PM1_CNT_STORED: u16 = 0x1C03;
/// PMCNTRL bit 0: SCI_EN, the system is in ACPI mode.
const SCI_EN: u16 = 0x0001;
/// PMCNTRL SUS_EN (ACPI SLP_EN).
const SUS_EN: u16 = 0x2000;
/// PMCNTRL SUS_TYP (ACPI SLP_TYP), bits 12:10.
const SUS_TYP: u16 = 0x1C00;
/// The counter is 24 bits wide.
const TIMER_MASK: u64 = 0x00FF_FFFF;
/// `ticks >> TIMER_MSB_SHIFT` changes exactly when bit 23 of the count toggles.
const TIMER_MSB_SHIFT: u32 = 23;

/// Where PCI configuration space has put the PM I/O block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PmIo {
    /// PMBA bits 15:6: the first port of the 64-byte block.
    pub base: u16,
    /// PMREGMISC bit 0 (PMIOSE): the block is decoded.
    pub enabled: bool,
}

/// A shared handle on [`PmIo`]: written by the PCI host when PMBA or PMREGMISC
/// change, read by [`AcpiPm`] on every access. Clones share one value.
#[derive(Clone, Debug, Default)]
pub struct PmShared(Rc<Cell<PmIo>>);

impl PmShared {
    /// A handle with the block at base 0 and decoding disabled (PIIX4 reset state).
    pub fn new() -> Self {
        Self::default()
    }

    /// The current placement.
    pub fn get(&self) -> PmIo {
        self.0.get()
    }

    /// Publishes a new placement.
    pub fn set(&self, io: PmIo) {
        self.0.set(io);
    }

    /// The register offset `port` selects, if the block is decoded there.
    fn offset_of(&self, port: u16) -> Option<u8> {
        let io = self.get();
        let block = !(PM_IO_SIZE - 1);
        let hit = io.enabled && port & block == io.base & block;
        hit.then(|| port.to_le_bytes()[0] & 0x3F)
    }
}

/// Timer ticks completed by virtual time `now`, before the 24-bit wrap.
fn timer_ticks(now: Nanos) -> u64 {
    let ticks = u128::from(now) * u128::from(PM_TIMER_HZ) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// The byte of 16-bit register `value` that byte address `reg` selects.
fn lane16(value: u16, reg: u8) -> u8 {
    value.to_le_bytes()[usize::from(reg & 1)]
}

/// The PIIX4 ACPI power-management I/O block.
pub struct AcpiPm {
    pm: PmShared,
    pm1_en: u16,
    pm1_cnt: u16,
    /// `ticks >> 23` when TMROF_STS was last cleared; `None` after a reset, until the
    /// next access supplies the time.
    timer_epoch: Option<u64>,
    /// Offsets 0Ch-3Fh as last written (the first 0Ch bytes are unused).
    regs: [u8; PM_IO_SIZE as usize],
    /// Where soft-off is requested; without it SUS_EN does nothing.
    ctl: Option<Rc<SystemControl>>,
    /// APMS (0xB3), a scratch byte between firmware and its SMI handler.
    apms: u8,
}

/// The PM block's saved state (see [`crate::snapshot`]): its registers, the
/// PM timer's epoch, and where PCI configuration has put the block (the
/// shared [`PmIo`], saved here once for the PCI host too).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AcpiPmState {
    io: PmIo,
    pm1_en: u16,
    pm1_cnt: u16,
    timer_epoch: Option<u64>,
    #[serde(with = "crate::snapshot::byte_array")]
    regs: [u8; PM_IO_SIZE as usize],
    apms: u8,
}

/// The APM control port (SMI command), and the APM status scratch port.
pub const APMC: u16 = 0xB2;
/// The APM status port.
pub const APMS: u16 = 0xB3;
/// The SMI commands firmware's FADT names for entering and leaving ACPI mode.
const ACPI_ENABLE: u8 = 0xF1;
const ACPI_DISABLE: u8 = 0xF0;

impl AcpiPm {
    /// The block in its power-on state, placed and enabled through `pm`.
    pub fn new(pm: PmShared) -> Self {
        Self {
            pm,
            pm1_en: 0,
            pm1_cnt: 0,
            timer_epoch: Some(0),
            regs: [0; PM_IO_SIZE as usize],
            ctl: None,
            apms: 0,
        }
    }

    /// The same block, asking `ctl` to power off on a soft-off request.
    pub fn with_power_control(mut self, ctl: Rc<SystemControl>) -> Self {
        self.ctl = Some(ctl);
        self
    }

    /// The epoch TMROF_STS compares against, fixed at `ticks` if unknown.
    fn epoch(&mut self, ticks: u64) -> u64 {
        *self.timer_epoch.get_or_insert(ticks >> TIMER_MSB_SHIFT)
    }

    fn pm1_status(&mut self, ticks: u64) -> u16 {
        if ticks >> TIMER_MSB_SHIFT != self.epoch(ticks) {
            TMROF_STS
        } else {
            0
        }
    }

    /// One byte of the block. 16-bit registers are decoded by their even address,
    /// the timer by its dword address.
    fn read_byte(&mut self, reg: u8, ticks: u64) -> u8 {
        if reg & !3 == PM_TMR {
            let count = u32::try_from(ticks & TIMER_MASK).unwrap_or(0);
            return count.to_le_bytes()[usize::from(reg & 3)];
        }
        match reg & !1 {
            PM1_STS => lane16(self.pm1_status(ticks), reg),
            PM1_EN => lane16(self.pm1_en, reg),
            PM1_CNT => lane16(self.pm1_cnt, reg),
            PM1_RESERVED | GPE0_STS | P_LVL2 => 0,
            _ => self.regs.get(usize::from(reg)).copied().unwrap_or(0xFF),
        }
    }

    fn write_byte(&mut self, reg: u8, value: u8, ticks: u64) {
        let shift = 8 * u32::from(reg & 1);
        let wide = u16::from(value) << shift;
        let lane_mask = 0xFFu16 << shift;
        if reg & !3 == PM_TMR {
            return;
        }
        match reg & !1 {
            PM1_STS => {
                if wide & TMROF_STS != 0 {
                    self.timer_epoch = Some(ticks >> TIMER_MSB_SHIFT);
                }
            }
            PM1_EN => {
                let writable = PM1_EN_WRITABLE & lane_mask;
                self.pm1_en = (self.pm1_en & !writable) | (wide & writable);
            }
            PM1_CNT => {
                let stored = PM1_CNT_STORED & lane_mask;
                self.pm1_cnt = (self.pm1_cnt & !stored) | (wide & stored);
                if wide & SUS_EN != 0 && self.pm1_cnt & SUS_TYP == 0 {
                    if let Some(ctl) = &self.ctl {
                        ctl.request_power_off();
                    }
                }
            }
            // GPSTS has nothing to clear; P_LVL2/P_LVL3 are read-only.
            PM1_RESERVED | GPE0_STS | P_LVL2 => {}
            _ => {
                if let Some(r) = self.regs.get_mut(usize::from(reg)) {
                    *r = value;
                }
            }
        }
    }
}

impl AcpiPm {
    /// A write to APMC (0xB2), the SMI command port firmware's FADT names
    /// (SeaBIOS: SMI_CMD 0xB2, ACPI_ENABLE 0xF1, ACPI_DISABLE 0xF0). On
    /// hardware it raises SMI# and firmware's SMM handler sets or clears
    /// SCI_EN; x86bt has no SMM, so the two values act directly, as the
    /// ACPI spec (4.8.2.5) says the handshake must end. Other values do
    /// nothing.
    fn apm_control(&mut self, value: u8) {
        match value {
            ACPI_ENABLE => self.pm1_cnt |= SCI_EN,
            ACPI_DISABLE => self.pm1_cnt &= !SCI_EN,
            _ => {}
        }
    }

    /// Each byte is decoded on its own: bytes outside the enabled block read 0xFF.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], now: Nanos) {
        if offset == APMC || offset == APMS {
            data.fill(0);
            data[0] = if offset == APMS { self.apms } else { 0 };
            return;
        }
        let ticks = timer_ticks(now);
        self.epoch(ticks);
        let mut port = offset;
        for byte in data.iter_mut() {
            *byte = match self.pm.offset_of(port) {
                Some(reg) => self.read_byte(reg, ticks),
                None => 0xFF,
            };
            port = port.wrapping_add(1);
        }
    }

    /// Writes the register at port offset `offset` (the trait's `write`).
    pub fn port_write(&mut self, offset: u16, data: &[u8], now: Nanos) {
        if offset == APMC {
            self.apm_control(data[0]);
            return;
        }
        if offset == APMS {
            self.apms = data[0];
            return;
        }
        let ticks = timer_ticks(now);
        self.epoch(ticks);
        let mut port = offset;
        for &value in data {
            if let Some(reg) = self.pm.offset_of(port) {
                self.write_byte(reg, value, ticks);
            }
            port = port.wrapping_add(1);
        }
    }
}

impl Device for AcpiPm {
    fn name(&self) -> &'static str {
        "acpi-pm"
    }

    crate::port_device_methods!();

    fn reset(&mut self) {
        self.pm1_en = 0;
        self.pm1_cnt = 0;
        self.timer_epoch = None;
        self.regs = [0; PM_IO_SIZE as usize];
        self.apms = 0;
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        let Self {
            pm,
            pm1_en,
            pm1_cnt,
            timer_epoch,
            regs,
            ctl: _,
            apms,
        } = self;
        Ok(crate::snapshot::DeviceState::AcpiPm(AcpiPmState {
            io: pm.get(),
            pm1_en: *pm1_en,
            pm1_cnt: *pm1_cnt,
            timer_epoch: *timer_epoch,
            regs: *regs,
            apms: *apms,
        }))
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        let crate::snapshot::DeviceState::AcpiPm(s) = state else {
            return Err(crate::snapshot::wrong_kind(self.name(), state));
        };
        let AcpiPmState {
            io,
            pm1_en,
            pm1_cnt,
            timer_epoch,
            regs,
            apms,
        } = s.clone();
        self.pm.set(io);
        (self.pm1_en, self.pm1_cnt, self.timer_epoch) = (pm1_en, pm1_cnt, timer_epoch);
        (self.regs, self.apms) = (regs, apms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::SystemControl;
    use crate::devices::pci::PciHost;

    /// Port of PMTMR with the block at 0x600.
    const TMR_PORT: u16 = PM_IO_PORT + PM_TMR as u16;
    /// PM1a_STS port with the block at 0x600.
    const STS_PORT: u16 = PM_IO_PORT;

    fn read(pm: &mut AcpiPm, port: u16, size: usize, now: Nanos) -> u32 {
        let mut buf = [0u8; 4];
        pm.port_read(port, &mut buf[..size], now);
        u32::from_le_bytes(buf)
    }

    fn write(pm: &mut AcpiPm, port: u16, size: usize, value: u32, now: Nanos) {
        pm.port_write(port, &value.to_le_bytes()[..size], now);
    }

    fn enabled_at(base: u16) -> AcpiPm {
        let shared = PmShared::new();
        shared.set(PmIo {
            base,
            enabled: true,
        });
        AcpiPm::new(shared)
    }

    /// Writes a dword to PCI function 00:01.3 register `reg` through CF8/CFC.
    fn pm_config_write(host: &mut PciHost, reg: u8, value: u32) {
        let address = 0x8000_0000 | (1 << 11) | (3 << 8) | u32::from(reg);
        host.port_write(0xCF8, &address.to_le_bytes(), 0);
        host.port_write(0xCFC, &value.to_le_bytes(), 0);
    }

    #[test]
    fn acpi_pm_pmba_and_enable_timer_advances_at_pm_timer_rate() {
        let shared = PmShared::new();
        let mut host = PciHost::new(SystemControl::new(), shared.clone());
        let mut pm = AcpiPm::new(shared);
        pm_config_write(&mut host, 0x40, 0x0000_0601);
        pm_config_write(&mut host, 0x80, 0x0000_0001);

        let t0 = read(&mut pm, TMR_PORT, 4, 250_000_000);
        let t1 = read(&mut pm, TMR_PORT, 4, 1_250_000_000);

        // 0.25 s and 1.25 s at 3 579 545 Hz: 894 886.25 and 4 474 431.25 ticks.
        assert_eq!((t0, t1), (894_886, 4_474_431));
        assert_eq!(t1 - t0, 3_579_545);
    }

    #[test]
    fn acpi_pm_timer_wraps_at_24_bits() {
        let mut pm = enabled_at(PM_IO_PORT);
        // 2^24 ticks take 4.686... s; at 5 s the count is 17 897 725 - 16 777 216.
        let value = read(&mut pm, TMR_PORT, 4, 5_000_000_000);

        assert_eq!(value, 1_120_509);
    }

    #[test]
    fn acpi_pm_decode_disabled_reads_ff_and_drops_writes() {
        let shared = PmShared::new();
        shared.set(PmIo {
            base: PM_IO_PORT,
            enabled: false,
        });
        let mut pm = AcpiPm::new(shared.clone());

        write(&mut pm, PM_IO_PORT + 2, 2, 0x0001, 0);
        let timer = read(&mut pm, TMR_PORT, 4, 1_000_000_000);
        shared.set(PmIo {
            base: PM_IO_PORT,
            enabled: true,
        });
        let enable = read(&mut pm, PM_IO_PORT + 2, 2, 0);

        assert_eq!(timer, 0xFFFF_FFFF);
        assert_eq!(enable, 0);
    }

    #[test]
    fn acpi_pm_other_base_reads_ff() {
        let mut pm = enabled_at(0xB000);

        let timer = read(&mut pm, TMR_PORT, 4, 1_000_000_000);

        assert_eq!(timer, 0xFFFF_FFFF);
    }

    #[test]
    fn acpi_pm_timer_msb_toggle_sets_tmr_sts() {
        let mut pm = enabled_at(PM_IO_PORT);
        // Bit 23 first sets at tick 8 388 608, i.e. 2.343 484 6.. s.
        let before = read(&mut pm, STS_PORT, 2, 2_343_484_000);
        let after = read(&mut pm, STS_PORT, 2, 2_343_485_000);

        assert_eq!((before, after), (0, 1));
    }

    #[test]
    fn acpi_pm_tmr_sts_write_one_clears_until_next_toggle() {
        let mut pm = enabled_at(PM_IO_PORT);
        write(&mut pm, STS_PORT, 2, 0x0001, 3_000_000_000);

        let cleared = read(&mut pm, STS_PORT, 2, 3_000_000_000);
        // The next toggle (bit 23 clears at tick 16 777 216) is at 4.686 969 s.
        let set_again = read(&mut pm, STS_PORT, 2, 4_690_000_000);

        assert_eq!((cleared, set_again), (0, 1));
    }

    #[test]
    fn acpi_pm_pm1_enable_keeps_only_implemented_bits() {
        let mut pm = enabled_at(PM_IO_PORT);

        write(&mut pm, PM_IO_PORT + 2, 2, 0xFFFF, 0);

        assert_eq!(read(&mut pm, PM_IO_PORT + 2, 2, 0), 0x0521);
    }

    #[test]
    fn acpi_pm_sleep_enable_is_write_only_and_type_is_stored() {
        let mut pm = enabled_at(PM_IO_PORT);

        // SUS_TYP = 0 with SUS_EN and SCI_EN: soft-off on QEMU, stored only here.
        write(&mut pm, PM_IO_PORT + 4, 2, 0x2001, 0);
        let soft_off = read(&mut pm, PM_IO_PORT + 4, 2, 0);
        write(&mut pm, PM_IO_PORT + 4, 2, 0x3401 | 0x0004, 0);
        let typed = read(&mut pm, PM_IO_PORT + 4, 2, 0);

        assert_eq!((soft_off, typed), (0x0001, 0x1401));
    }

    #[test]
    fn acpi_pm_gpe_enable_stored_and_status_reads_zero() {
        let mut pm = enabled_at(PM_IO_PORT);

        write(&mut pm, PM_IO_PORT + 0x0C, 4, 0xABCD_FFFF, 0);

        assert_eq!(read(&mut pm, PM_IO_PORT + 0x0C, 4, 0), 0xABCD_0000);
    }

    #[test]
    fn acpi_pm_timer_is_read_only() {
        let mut pm = enabled_at(PM_IO_PORT);

        write(&mut pm, TMR_PORT, 4, 0x0012_3456, 0);

        assert_eq!(read(&mut pm, TMR_PORT, 4, 0), 0);
    }

    #[test]
    fn acpi_pm_reset_clears_registers_but_not_timer() {
        let mut pm = enabled_at(PM_IO_PORT);
        write(&mut pm, PM_IO_PORT + 2, 2, 0x0001, 0);
        write(&mut pm, PM_IO_PORT + 0x28, 4, 0x1, 0);

        pm.reset();

        assert_eq!(read(&mut pm, PM_IO_PORT + 2, 2, 0), 0);
        assert_eq!(read(&mut pm, PM_IO_PORT + 0x28, 4, 0), 0);
        assert_eq!(read(&mut pm, TMR_PORT, 4, 1_000_000_000), 3_579_545);
    }

    #[test]
    fn acpi_pm_reset_does_not_report_stale_tmr_sts() {
        let mut pm = enabled_at(PM_IO_PORT);

        pm.reset();

        assert_eq!(read(&mut pm, STS_PORT, 2, 3_000_000_000), 0);
    }

    #[test]
    fn apm_control_enters_and_leaves_acpi_mode() {
        let mut pm = enabled_at(PM_IO_PORT);
        let cnt = PM_IO_PORT + u16::from(PM1_CNT);
        assert_eq!(read(&mut pm, cnt, 2, 0) & 1, 0);
        write(&mut pm, APMC, 1, u32::from(ACPI_ENABLE), 0);
        assert_eq!(read(&mut pm, cnt, 2, 0) & 1, 1, "SCI_EN set");
        write(&mut pm, APMC, 1, 0x55, 0);
        assert_eq!(read(&mut pm, cnt, 2, 0) & 1, 1, "other commands do nothing");
        write(&mut pm, APMC, 1, u32::from(ACPI_DISABLE), 0);
        assert_eq!(read(&mut pm, cnt, 2, 0) & 1, 0, "SCI_EN clear");
        write(&mut pm, APMS, 1, 0xA5, 0);
        assert_eq!(read(&mut pm, APMS, 1, 0), 0xA5);
    }
}
