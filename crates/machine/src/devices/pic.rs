//! The cascaded Intel 8259A programmable interrupt controller pair of a PC/AT, plus
//! the PIIX edge/level control registers (ELCR). Mapped with base 0, so offsets are
//! absolute ports: 0x20/0x21 (master), 0xA0/0xA1 (slave), 0x4D0/0x4D1 (ELCR1/2).
//!
//! Behaviour follows the Intel 8259A datasheet (ICW1-ICW4, OCW1-OCW3, fully nested,
//! special fully nested, automatic EOI, rotation, special mask and poll modes).
//!
//! Invariants:
//! - Before the guest initialises a chip it behaves as a PC BIOS leaves it: 8086
//!   mode, normal EOI, cascaded (slave on master IR2), vector bases 0x08 (master)
//!   and 0x70 (slave), IMR 0 (everything unmasked), IR0 highest priority. The
//!   datasheet leaves the pre-initialisation state undefined; this one lets a guest
//!   started without firmware take interrupts at the vectors it expects.
//! - IRR bits of edge-triggered inputs latch rising edges and stay set until the
//!   INTA cycle (or ICW1) clears them, even if the line has dropped again: devices
//!   here signal edges with short pulses. IRR bits of level-triggered inputs
//!   (ELCR bit or ICW1 LTIM) follow the line level at each sample.
//! - Master IR2 is wired to the slave's INT output, not to ISA IRQ2. It is computed
//!   from the slave's state whenever it is needed, so it behaves as a level input.
//! - ICW1 clears IRR and ISR as well as IMR. The datasheet only promises that the
//!   edge sense is reset (pending edges are lost); clearing ISR too means a
//!   re-initialised chip cannot stay blocked by stale in-service bits.
//! - 8080/8085 mode (ICW4 bit 0 = 0), buffered mode and the slave ID of ICW3 are
//!   stored but not modelled: INTA always returns one 8086-style vector byte, and
//!   only master IR2 cascades to the slave.

use std::rc::Rc;

use crate::device::IrqLines;

/// Master command port (A0 = 0): ICW1, OCW2, OCW3 on write; IRR/ISR/poll on read.
const MASTER_CMD: u16 = 0x20;
/// Master data port (A0 = 1): ICW2-4 during init, OCW1 (IMR) otherwise.
const MASTER_DATA: u16 = 0x21;
/// Slave command port.
const SLAVE_CMD: u16 = 0xA0;
/// Slave data port.
const SLAVE_DATA: u16 = 0xA1;
/// PIIX ELCR1: edge (0) / level (1) trigger for IRQ0-7.
const ELCR1: u16 = 0x4D0;
/// PIIX ELCR2: edge / level trigger for IRQ8-15.
const ELCR2: u16 = 0x4D1;
/// Writable ELCR bits per chip: IRQ0, 1, 2 (ELCR1) and IRQ8, 13 (ELCR2) are always
/// edge-triggered on PIIX.
const ELCR_WRITABLE: [u8; 2] = [0xF8, 0xDE];

/// ICW1 bit 4: identifies ICW1 on the command port.
const ICW1_SELECT: u8 = 0x10;
/// ICW1 bit 0 (IC4): ICW4 will follow.
const ICW1_IC4: u8 = 0x01;
/// ICW1 bit 1 (SNGL): single chip, no ICW3.
const ICW1_SNGL: u8 = 0x02;
/// ICW1 bit 3 (LTIM): level-triggered inputs for the whole chip.
const ICW1_LTIM: u8 = 0x08;
/// ICW4 bit 1: automatic EOI.
const ICW4_AEOI: u8 = 0x02;
/// ICW4 bit 4: special fully nested mode.
const ICW4_SFNM: u8 = 0x10;
/// Command-port bit 3 with bit 4 clear: OCW3 rather than OCW2.
const OCW3_SELECT: u8 = 0x08;
/// OCW3 bit 2: poll command.
const OCW3_POLL: u8 = 0x04;
/// OCW3 bit 1 (RR): bit 0 (RIS) selects the register read at A0 = 0.
const OCW3_RR: u8 = 0x02;
/// OCW3 bit 0 (RIS): 1 = ISR, 0 = IRR.
const OCW3_RIS: u8 = 0x01;
/// OCW3 bit 6 (ESMM): bit 5 (SMM) sets or resets special mask mode.
const OCW3_ESMM: u8 = 0x40;
/// OCW3 bit 5 (SMM).
const OCW3_SMM: u8 = 0x20;
/// Poll word bit 7: an interrupt was pending (bits 2-0 give its level).
const POLL_INT: u8 = 0x80;
/// The master input that carries the slave's INT output on a PC.
const CASCADE_IRQ: u8 = 2;
/// `CASCADE_IRQ` as a bit.
const CASCADE_BIT: u8 = 1 << CASCADE_IRQ;

/// Where a chip is in its initialisation sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum InitStep {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    step: InitStep,
    needs_icw4: bool,
    single: bool,
    level_mode: bool,
    /// ICW2 with bits 2-0 dropped (8086 mode supplies them from the level).
    base: u8,
    icw3: u8,
    auto_eoi: bool,
    rotate_on_aeoi: bool,
    sfnm: bool,
    /// The level with the lowest priority; the next one up is the highest.
    lowest: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
}

impl Chip {
    /// The state a PC BIOS leaves (see the module invariants).
    fn power_on(base: u8, icw3: u8) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0,
            step: InitStep::Ready,
            needs_icw4: true,
            single: false,
            level_mode: false,
            base,
            icw3,
            auto_eoi: false,
            rotate_on_aeoi: false,
            sfnm: false,
            lowest: 7,
            read_isr: false,
            poll: false,
            special_mask: false,
        }
    }

    /// Priority rank of `irq`: 0 is the highest.
    fn rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.lowest).wrapping_sub(1) & 7
    }

    /// The highest-priority level set in `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (1..=8)
            .map(|i| self.lowest.wrapping_add(i) & 7)
            .find(|&irq| bits & (1 << irq) != 0)
    }

    /// The level the chip would interrupt for, given its request inputs `irr` and
    /// the inputs that have a slave behind them (`cascade`), or `None`.
    fn pending(&self, irr: u8, cascade: u8) -> Option<u8> {
        let request = self.highest(irr & !self.imr)?;
        // Special mask mode: a masked level in service does not inhibit others
        // (datasheet, "Special Mask Mode").
        let blocking = if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        };
        let Some(in_service) = self.highest(blocking) else {
            return Some(request);
        };
        let higher = self.rank(request) < self.rank(in_service);
        // Special fully nested mode: a slave already in service may still
        // interrupt the master for its own higher-priority requests.
        let same_slave = self.sfnm && request == in_service && cascade & (1 << request) != 0;
        (higher || same_slave).then_some(request)
    }

    /// The INTA (or poll) effect on this chip for `irq`.
    fn acknowledge(&mut self, irq: u8) {
        let bit = 1 << irq;
        self.irr &= !bit;
        if !self.auto_eoi {
            self.isr |= bit;
        } else if self.rotate_on_aeoi {
            self.lowest = irq;
        }
    }

    fn vector(&self, irq: u8) -> u8 {
        self.base | (irq & 7)
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1_SELECT != 0 {
            self.write_icw1(value);
        } else if value & OCW3_SELECT != 0 {
            self.write_ocw3(value);
        } else {
            self.write_ocw2(value);
        }
    }

    /// ICW1: datasheet "Initialization Command Words" steps a-f.
    fn write_icw1(&mut self, value: u8) {
        self.irr = 0;
        self.isr = 0;
        self.imr = 0;
        self.lowest = 7;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.rotate_on_aeoi = false;
        self.needs_icw4 = value & ICW1_IC4 != 0;
        self.single = value & ICW1_SNGL != 0;
        self.level_mode = value & ICW1_LTIM != 0;
        if !self.needs_icw4 {
            // "If IC4 = 0, then all functions selected in ICW4 are set to zero."
            self.auto_eoi = false;
            self.sfnm = false;
        }
        self.step = InitStep::Icw2;
    }

    fn write_data(&mut self, value: u8) {
        match self.step {
            InitStep::Ready => self.imr = value,
            InitStep::Icw2 => {
                self.base = value & 0xF8;
                self.step = if !self.single {
                    InitStep::Icw3
                } else if self.needs_icw4 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.icw3 = value;
                self.step = if self.needs_icw4 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw4 => {
                self.auto_eoi = value & ICW4_AEOI != 0;
                self.sfnm = value & ICW4_SFNM != 0;
                self.step = InitStep::Ready;
            }
        }
    }

    /// OCW2: bits 7-5 are R, SL, EOI; bits 2-0 the level for SL commands.
    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            0b001 => {
                self.non_specific_eoi();
            }
            0b011 => self.isr &= !(1 << level),
            0b101 => {
                if let Some(irq) = self.non_specific_eoi() {
                    self.lowest = irq;
                }
            }
            0b100 => self.rotate_on_aeoi = true,
            0b000 => self.rotate_on_aeoi = false,
            0b111 => {
                self.isr &= !(1 << level);
                self.lowest = level;
            }
            0b110 => self.lowest = level,
            _ => {} // 0b010: no operation.
        }
    }

    /// Clears the highest-priority in-service bit and returns its level. In special
    /// mask mode an in-service bit masked by the IMR is not cleared (datasheet,
    /// "End of Interrupt").
    fn non_specific_eoi(&mut self) -> Option<u8> {
        let candidates = if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        };
        let irq = self.highest(candidates)?;
        self.isr &= !(1 << irq);
        Some(irq)
    }

    fn write_ocw3(&mut self, value: u8) {
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
        if value & OCW3_RR != 0 {
            self.read_isr = value & OCW3_RIS != 0;
        }
        self.poll = value & OCW3_POLL != 0;
    }
}

/// The master/slave 8259A pair with the PIIX ELCR registers.
pub struct Pic {
    lines: Rc<IrqLines>,
    /// Index 0 is the master (IRQ0-7), 1 the slave (IRQ8-15).
    chips: [Chip; 2],
    elcr: [u8; 2],
}

/// The 8259 pair's saved state (see [`crate::snapshot`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PicState {
    chips: [Chip; 2],
    elcr: [u8; 2],
}

impl Pic {
    /// The pair's state, for a snapshot.
    pub fn save(&self) -> PicState {
        let Self {
            lines: _,
            chips,
            elcr,
        } = self;
        PicState {
            chips: chips.clone(),
            elcr: *elcr,
        }
    }

    /// Puts back a state [`Pic::save`] returned.
    pub fn restore(&mut self, s: &PicState) {
        let PicState { chips, elcr } = s.clone();
        (self.chips, self.elcr) = (chips, elcr);
    }
}

impl Pic {
    /// A pair in the power-on state described in the module comment, sampling
    /// `lines`.
    pub fn new(lines: Rc<IrqLines>) -> Self {
        Self {
            lines,
            chips: [Chip::power_on(0x08, CASCADE_BIT), Chip::power_on(0x70, 2)],
            elcr: [0; 2],
        }
    }

    /// Samples the IRQ lines into IRR and reports whether the master asserts INT
    /// to the CPU.
    pub fn intr(&mut self) -> bool {
        self.sample();
        self.chips[0]
            .pending(self.master_irr(), self.master_cascade())
            .is_some()
    }

    /// The INTA cycle: returns the vector and moves the request into service. When
    /// nothing is pending any more the chip answers with its IR7 vector and sets no
    /// ISR bit (the 8259A's spurious interrupt).
    pub fn acknowledge(&mut self) -> u8 {
        self.sample();
        let cascade = self.master_cascade();
        let Some(irq) = self.chips[0].pending(self.master_irr(), cascade) else {
            return self.chips[0].vector(7);
        };
        self.chips[0].acknowledge(irq);
        if cascade & (1 << irq) == 0 {
            return self.chips[0].vector(irq);
        }
        let slave = &mut self.chips[1];
        match slave.pending(slave.irr, 0) {
            Some(irq) => {
                slave.acknowledge(irq);
                slave.vector(irq)
            }
            None => slave.vector(7),
        }
    }

    /// Interrupt request register (bit n = IRQn; bit 2 is the slave's INT output).
    pub fn irr(&self) -> u16 {
        u16::from(self.master_irr()) | u16::from(self.chips[1].irr) << 8
    }

    /// In-service register (bit n = IRQn).
    pub fn isr(&self) -> u16 {
        u16::from(self.chips[0].isr) | u16::from(self.chips[1].isr) << 8
    }

    /// Interrupt mask register (bit n = IRQn).
    pub fn imr(&self) -> u16 {
        u16::from(self.chips[0].imr) | u16::from(self.chips[1].imr) << 8
    }

    /// Master IRR with IR2 replaced by the slave's INT output.
    fn master_irr(&self) -> u8 {
        let slave = &self.chips[1];
        let slave_int = slave.pending(slave.irr, 0).is_some();
        (self.chips[0].irr & !CASCADE_BIT) | if slave_int { CASCADE_BIT } else { 0 }
    }

    /// The master inputs that cascade to the slave: only IR2 is wired to one.
    fn master_cascade(&self) -> u8 {
        let master = &self.chips[0];
        if master.single {
            0
        } else {
            master.icw3 & CASCADE_BIT
        }
    }

    /// Moves line edges and levels into the IRRs.
    fn sample(&mut self) {
        let rising = self.lines.take_rising();
        let levels = self.lines.levels();
        for (i, chip) in self.chips.iter_mut().enumerate() {
            let rising = (rising >> (8 * i)) as u8;
            let levels = (levels >> (8 * i)) as u8;
            let level_mask = if chip.level_mode { 0xFF } else { self.elcr[i] };
            chip.irr = ((chip.irr | rising) & !level_mask) | (levels & level_mask);
        }
        // ISA IRQ2 is not wired to the master; IR2 carries the slave instead.
        self.chips[0].irr &= !CASCADE_BIT;
    }

    /// The poll word: reading it acknowledges like INTA (datasheet, "Poll Command").
    fn read_poll(&mut self, index: usize) -> u8 {
        self.sample();
        let (irr, cascade) = if index == 0 {
            (self.master_irr(), self.master_cascade())
        } else {
            (self.chips[1].irr, 0)
        };
        let chip = &mut self.chips[index];
        chip.poll = false;
        match chip.pending(irr, cascade) {
            Some(irq) => {
                chip.acknowledge(irq);
                POLL_INT | irq
            }
            None => 0,
        }
    }

    fn read_command(&mut self, index: usize) -> u8 {
        if self.chips[index].poll {
            return self.read_poll(index);
        }
        self.sample();
        let chip = &self.chips[index];
        if chip.read_isr {
            chip.isr
        } else if index == 0 {
            self.master_irr()
        } else {
            chip.irr
        }
    }

    fn read_byte(&mut self, port: u16) -> Option<u8> {
        match port {
            MASTER_CMD => Some(self.read_command(0)),
            SLAVE_CMD => Some(self.read_command(1)),
            MASTER_DATA => Some(self.chips[0].imr),
            SLAVE_DATA => Some(self.chips[1].imr),
            ELCR1 => Some(self.elcr[0]),
            ELCR2 => Some(self.elcr[1]),
            _ => None,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        let (index, command) = match port {
            MASTER_CMD => (0, true),
            MASTER_DATA => (0, false),
            SLAVE_CMD => (1, true),
            SLAVE_DATA => (1, false),
            ELCR1 | ELCR2 => {
                let i = usize::from(port - ELCR1);
                self.elcr[i] = value & ELCR_WRITABLE[i];
                return;
            }
            _ => return,
        };
        if command && value & ICW1_SELECT != 0 {
            // Latch edges that arrived before the ICW1 so that it discards them.
            self.sample();
        }
        let chip = &mut self.chips[index];
        if command {
            chip.write_command(value);
        } else {
            chip.write_data(value);
        }
    }
}

/// The PIC is a typed field of the machine, not a [`crate::Device`]: the
/// machine routes its ports to these and asks it for INTR and the vector.
impl Pic {
    /// Reads ports from `port` on; each byte of a wider access reads the next
    /// port up.
    pub fn port_read(&mut self, port: u16, data: &mut [u8]) {
        for (port, byte) in (port..=u16::MAX).zip(data.iter_mut()) {
            *byte = self.read_byte(port).unwrap_or(0xFF);
        }
    }

    /// Writes ports from `port` on; each byte of a wider access writes the
    /// next port up.
    pub fn port_write(&mut self, port: u16, data: &[u8]) {
        for (port, &value) in (port..=u16::MAX).zip(data.iter()) {
            self.write_byte(port, value);
        }
    }

    /// A system reset.
    pub fn reset(&mut self) {
        // Edges latched before the reset must not survive it.
        self.lines.take_rising();
        self.chips = [Chip::power_on(0x08, CASCADE_BIT), Chip::power_on(0x70, 2)];
        self.elcr = [0; 2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Rc<IrqLines>, Pic) {
        let lines = IrqLines::new();
        let pic = Pic::new(Rc::clone(&lines));
        (lines, pic)
    }

    fn out(pic: &mut Pic, port: u16, value: u8) {
        pic.port_write(port, &[value]);
    }

    fn inb(pic: &mut Pic, port: u16) -> u8 {
        let mut data = [0u8];
        pic.port_read(port, &mut data);
        data[0]
    }

    /// The sequence Linux and most BIOSes use: edge, cascade, ICW4, 8086 mode.
    fn init_pair(pic: &mut Pic, master_base: u8, slave_base: u8, icw4: u8) {
        out(pic, 0x20, 0x11);
        out(pic, 0x21, master_base);
        out(pic, 0x21, 0x04);
        out(pic, 0x21, icw4);
        out(pic, 0xA0, 0x11);
        out(pic, 0xA1, slave_base);
        out(pic, 0xA1, 0x02);
        out(pic, 0xA1, icw4);
    }

    #[test]
    fn pic_power_on_irq0_acknowledges_vector_08() {
        let (lines, mut pic) = setup();
        lines.line(0).pulse();

        let intr = pic.intr();
        let vector = pic.acknowledge();

        assert!(intr);
        assert_eq!(vector, 0x08);
        assert_eq!(pic.isr(), 0x0001);
        assert_eq!(pic.irr(), 0x0000);
    }

    #[test]
    fn pic_icw_sequence_sets_vector_bases() {
        let (lines, mut pic) = setup();
        init_pair(&mut pic, 0x20, 0x28, 0x01);
        lines.line(1).pulse();

        let vector = pic.acknowledge();

        assert_eq!(vector, 0x21);
    }

    #[test]
    fn pic_icw2_low_bits_ignored_in_8086_mode() {
        let (lines, mut pic) = setup();
        init_pair(&mut pic, 0x47, 0x70, 0x01);
        lines.line(3).pulse();

        assert_eq!(pic.acknowledge(), 0x43);
    }

    #[test]
    fn pic_slave_irq_cascades_through_master_ir2() {
        let (lines, mut pic) = setup();
        init_pair(&mut pic, 0x20, 0x28, 0x01);
        lines.line(10).pulse();

        let intr = pic.intr();
        let vector = pic.acknowledge();

        assert!(intr);
        assert_eq!(vector, 0x2A);
        assert_eq!(pic.isr(), (1 << 10) | (1 << 2));
    }

    #[test]
    fn pic_masked_irq_sets_irr_without_intr() {
        let (lines, mut pic) = setup();
        out(&mut pic, 0x21, 0x02);
        lines.line(1).pulse();

        let intr = pic.intr();

        assert!(!intr);
        assert_eq!(pic.irr(), 0x0002);
    }

    #[test]
    fn pic_nothing_pending_at_ack_returns_spurious_ir7_without_isr() {
        let (_lines, mut pic) = setup();

        let vector = pic.acknowledge();

        assert_eq!(vector, 0x0F);
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn pic_in_service_blocks_lower_and_admits_higher() {
        let (lines, mut pic) = setup();
        lines.line(3).pulse();
        pic.acknowledge();

        lines.line(5).pulse();
        let lower = pic.intr();
        lines.line(1).pulse();
        let higher = pic.intr();

        assert!(!lower);
        assert!(higher);
        assert_eq!(pic.acknowledge(), 0x09);
    }

    #[test]
    fn pic_eoi_non_specific_clears_highest_isr() {
        let (lines, mut pic) = setup();
        lines.line(3).pulse();
        pic.acknowledge();
        lines.line(1).pulse();
        pic.acknowledge();

        out(&mut pic, 0x20, 0x20);

        assert_eq!(pic.isr(), 1 << 3);
    }

    #[test]
    fn pic_eoi_specific_clears_named_isr_bit() {
        let (lines, mut pic) = setup();
        lines.line(3).pulse();
        pic.acknowledge();
        lines.line(1).pulse();
        pic.acknowledge();

        out(&mut pic, 0x20, 0x60 | 3);

        assert_eq!(pic.isr(), 1 << 1);
    }

    #[test]
    fn pic_auto_eoi_acknowledge_sets_no_isr() {
        let (lines, mut pic) = setup();
        init_pair(&mut pic, 0x20, 0x28, 0x03);
        lines.line(4).pulse();

        let vector = pic.acknowledge();

        assert_eq!(vector, 0x24);
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn pic_rotate_on_non_specific_eoi_makes_serviced_level_lowest() {
        let (lines, mut pic) = setup();
        lines.line(0).pulse();
        pic.acknowledge();
        out(&mut pic, 0x20, 0xA0);

        // IR0 is now lowest, so IR1 is highest and IR0 loses to IR7.
        lines.line(0).pulse();
        lines.line(7).pulse();
        let vector = pic.acknowledge();

        assert_eq!(vector, 0x0F);
        assert_eq!(pic.isr(), 1 << 7);
    }

    #[test]
    fn pic_set_priority_command_makes_next_level_highest() {
        let (lines, mut pic) = setup();
        out(&mut pic, 0x20, 0xC0 | 4);
        lines.line(1).pulse();
        lines.line(6).pulse();

        let vector = pic.acknowledge();

        assert_eq!(vector, 0x0E);
    }

    #[test]
    fn pic_rotate_in_auto_eoi_mode_rotates_on_each_ack() {
        let (lines, mut pic) = setup();
        init_pair(&mut pic, 0x20, 0x28, 0x03);
        out(&mut pic, 0x20, 0x80);
        lines.line(1).pulse();
        pic.acknowledge();

        lines.line(1).pulse();
        lines.line(3).pulse();
        let vector = pic.acknowledge();

        assert_eq!(vector, 0x23);
    }

    #[test]
    fn pic_ocw3_read_isr_selects_isr_on_command_port() {
        let (lines, mut pic) = setup();
        lines.line(5).pulse();
        pic.acknowledge();
        lines.line(6).pulse();
        pic.intr();

        let irr = inb(&mut pic, 0x20);
        out(&mut pic, 0x20, 0x0B);
        let isr = inb(&mut pic, 0x20);
        out(&mut pic, 0x20, 0x0A);
        let irr_again = inb(&mut pic, 0x20);

        assert_eq!((irr, isr, irr_again), (0x40, 0x20, 0x40));
    }

    #[test]
    fn pic_poll_command_returns_level_and_sets_isr() {
        let (lines, mut pic) = setup();
        lines.line(6).pulse();

        out(&mut pic, 0x20, 0x0C);
        let poll = inb(&mut pic, 0x20);
        let after = inb(&mut pic, 0x20);

        assert_eq!(poll, 0x86);
        assert_eq!(pic.isr(), 1 << 6);
        assert_eq!(after, 0x00, "the poll ends; IRR is read again");
    }

    #[test]
    fn pic_poll_with_nothing_pending_reads_bit7_clear() {
        let (_lines, mut pic) = setup();

        out(&mut pic, 0xA0, 0x0C);

        assert_eq!(inb(&mut pic, 0xA0) & POLL_INT, 0);
    }

    #[test]
    fn pic_special_mask_mode_admits_lower_level_while_masked_in_service() {
        let (lines, mut pic) = setup();
        lines.line(1).pulse();
        pic.acknowledge();
        out(&mut pic, 0x21, 0x02);
        out(&mut pic, 0x20, 0x68);
        lines.line(5).pulse();

        let intr = pic.intr();

        assert!(intr);
        assert_eq!(pic.acknowledge(), 0x0D);
    }

    #[test]
    fn pic_special_mask_mode_off_keeps_lower_level_blocked() {
        let (lines, mut pic) = setup();
        lines.line(1).pulse();
        pic.acknowledge();
        out(&mut pic, 0x21, 0x02);
        out(&mut pic, 0x20, 0x68);
        out(&mut pic, 0x20, 0x48);
        lines.line(5).pulse();

        assert!(!pic.intr());
    }

    #[test]
    fn pic_edge_input_needs_new_rising_edge_after_ack() {
        let (lines, mut pic) = setup();
        let irq3 = lines.line(3);
        irq3.set_level(true);
        pic.acknowledge();
        out(&mut pic, 0x20, 0x20);

        let still_high = pic.intr();
        irq3.set_level(false);
        irq3.set_level(true);
        let new_edge = pic.intr();

        assert!(!still_high);
        assert!(new_edge);
    }

    #[test]
    fn pic_level_input_stays_pending_while_line_high() {
        let (lines, mut pic) = setup();
        out(&mut pic, 0x4D1, 0x04);
        let irq10 = lines.line(10);
        irq10.set_level(true);
        pic.acknowledge();
        out(&mut pic, 0xA0, 0x20);
        out(&mut pic, 0x20, 0x20);

        let while_high = pic.intr();
        irq10.set_level(false);
        let after_low = pic.intr();

        assert!(while_high);
        assert!(!after_low);
        assert_eq!(pic.irr() & (1 << 10), 0);
    }

    #[test]
    fn pic_elcr_forces_irq0_1_2_8_13_edge() {
        let (_lines, mut pic) = setup();

        out(&mut pic, 0x4D0, 0xFF);
        out(&mut pic, 0x4D1, 0xFF);

        assert_eq!(inb(&mut pic, 0x4D0), 0xF8);
        assert_eq!(inb(&mut pic, 0x4D1), 0xDE);
    }

    #[test]
    fn pic_icw1_clears_imr_and_pending_edges() {
        let (lines, mut pic) = setup();
        out(&mut pic, 0x21, 0xFF);
        lines.line(4).pulse();

        init_pair(&mut pic, 0x20, 0x28, 0x01);

        assert_eq!(pic.imr(), 0);
        assert_eq!(pic.irr(), 0);
        assert!(!pic.intr());
    }

    #[test]
    fn pic_single_mode_skips_icw3() {
        let (_lines, mut pic) = setup();

        out(&mut pic, 0x20, 0x13);
        out(&mut pic, 0x21, 0x40);
        out(&mut pic, 0x21, 0x01);
        out(&mut pic, 0x21, 0xAA);

        assert_eq!(pic.imr() & 0xFF, 0xAA);
    }

    #[test]
    fn pic_single_mode_master_ir2_is_not_cascaded() {
        let (lines, mut pic) = setup();
        out(&mut pic, 0x20, 0x13);
        out(&mut pic, 0x21, 0x40);
        out(&mut pic, 0x21, 0x01);
        lines.line(9).pulse();

        assert_eq!(pic.acknowledge(), 0x42);
    }

    #[test]
    fn pic_slave_in_service_blocks_further_slave_irqs_without_sfnm() {
        let (lines, mut pic) = setup();
        lines.line(12).pulse();
        pic.acknowledge();

        lines.line(9).pulse();

        assert!(!pic.intr());
    }

    #[test]
    fn pic_sfnm_admits_higher_slave_irq_while_slave_in_service() {
        let (lines, mut pic) = setup();
        init_pair(&mut pic, 0x20, 0x28, 0x11);
        lines.line(12).pulse();
        pic.acknowledge();

        lines.line(9).pulse();
        let intr = pic.intr();

        assert!(intr);
        assert_eq!(pic.acknowledge(), 0x29);
    }

    #[test]
    fn pic_data_port_reads_imr() {
        let (_lines, mut pic) = setup();

        out(&mut pic, 0x21, 0xB8);
        out(&mut pic, 0xA1, 0x8F);

        assert_eq!(inb(&mut pic, 0x21), 0xB8);
        assert_eq!(inb(&mut pic, 0xA1), 0x8F);
        assert_eq!(pic.imr(), 0x8FB8);
    }

    #[test]
    fn pic_wide_access_covers_consecutive_ports() {
        let (_lines, mut pic) = setup();
        pic.port_write(0x4D0, &[0x28, 0x0E]);
        out(&mut pic, 0x21, 0x5A);

        let mut elcr = [0u8; 2];
        pic.port_read(0x4D0, &mut elcr);
        let mut cmd_data = [0u8; 2];
        pic.port_read(0x20, &mut cmd_data);

        assert_eq!(elcr, [0x28, 0x0E]);
        assert_eq!(cmd_data, [0x00, 0x5A]);
    }

    #[test]
    fn pic_unknown_port_reads_all_ones() {
        let (_lines, mut pic) = setup();

        assert_eq!(inb(&mut pic, 0x22), 0xFF);
    }

    #[test]
    fn pic_reset_restores_power_on_state() {
        let (lines, mut pic) = setup();
        init_pair(&mut pic, 0x20, 0x28, 0x03);
        out(&mut pic, 0x21, 0xFF);
        out(&mut pic, 0x4D0, 0x20);
        lines.line(0).pulse();

        pic.reset();
        lines.line(0).pulse();

        assert_eq!(pic.imr(), 0);
        assert_eq!(inb(&mut pic, 0x4D0), 0);
        assert_eq!(pic.acknowledge(), 0x08);
        assert_eq!(pic.isr(), 1);
    }
}
