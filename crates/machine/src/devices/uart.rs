//! A National Semiconductor 16550A UART, as wired for COM1 on a PC (ports 0x3F8-0x3FF,
//! IRQ4). The device is mapped at its base port, so register offsets are 0-7.
//!
//! What is modelled, after the PC16550D datasheet:
//! - every register: RBR/THR, IER, IIR/FCR, LCR (with DLAB and the divisor latch),
//!   MCR, LSR, MSR and SCR;
//! - a 16-byte receiver FIFO with the FCR trigger levels, or a one-byte holding
//!   register in 16450 (non-FIFO) mode, with overrun reported in LSR;
//! - the character-timeout indication (IIR 0x0C) four character times after the last
//!   receiver activity, computed from the divisor and the line format;
//! - loopback (MCR bit 4): THR feeds the receiver and MSR mirrors DTR/RTS/OUT1/OUT2.
//!
//! Invariants:
//! - Transmission is instantaneous: a THR write reaches `output` (flushed) within the
//!   write, so THRE and TEMT always read as set and there is no transmit FIFO.
//! - The IRQ line is driven as a level: high exactly while an enabled interrupt source
//!   is pending, MCR OUT2 is set and loopback is off. On a PC the OUT2 pin gates the
//!   INTR output onto the ISA bus; in loopback the datasheet forces OUT2 inactive, so
//!   the gate is closed there too.
//! - Host input is flow controlled: bytes stay queued in [`SerialInput`] until the
//!   receiver has room, so none are lost to overrun. Bytes given to
//!   [`Uart::receive`] model characters arriving on the wire and can overrun.
//! - Nothing a guest writes can panic the device; output errors are counted.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::device::{Device, IrqLine, Nanos};

/// RBR (read) / THR (write) with DLAB clear; divisor latch LSB with DLAB set.
const RBR_THR_DLL: u16 = 0;
/// IER with DLAB clear; divisor latch MSB with DLAB set.
const IER_DLM: u16 = 1;
/// IIR (read) / FCR (write).
const IIR_FCR: u16 = 2;
/// Line Control Register.
const LCR: u16 = 3;
/// Modem Control Register.
const MCR: u16 = 4;
/// Line Status Register.
const LSR: u16 = 5;
/// Modem Status Register.
const MSR: u16 = 6;
/// Scratch Register: holds any value, no effect on the UART.
const SCR: u16 = 7;

/// IER bit 0: received data available (also enables the character timeout).
const IER_ERBFI: u8 = 0x01;
/// IER bit 1: transmitter holding register empty.
const IER_ETBEI: u8 = 0x02;
/// IER bit 2: receiver line status.
const IER_ELSI: u8 = 0x04;
/// IER bit 3: modem status.
const IER_EDSSI: u8 = 0x08;
/// IER bits 4-7 are always zero.
const IER_MASK: u8 = 0x0F;

/// IIR bit 0 set: no interrupt pending.
const IIR_NONE: u8 = 0x01;
/// IIR priority 1 (highest): overrun, parity, framing error or break.
const IIR_LINE_STATUS: u8 = 0x06;
/// IIR priority 2: received data reached the trigger level.
const IIR_RX_DATA: u8 = 0x04;
/// IIR priority 2: character timeout, FIFO mode only.
const IIR_CHAR_TIMEOUT: u8 = 0x0C;
/// IIR priority 3: transmitter holding register empty.
const IIR_THRE: u8 = 0x02;
/// IIR priority 4 (lowest): CTS, DSR, RI or DCD changed.
const IIR_MODEM_STATUS: u8 = 0x00;
/// IIR bits 6-7: set when FCR bit 0 enables the FIFOs.
const IIR_FIFOS_ENABLED: u8 = 0xC0;

/// FCR bit 0: enable both FIFOs. Changing it clears them; the other bits are only
/// programmed while it is written as 1.
const FCR_FIFO_ENABLE: u8 = 0x01;
/// FCR bit 1: clear the receiver FIFO (self-clearing). FCR bit 2 clears the
/// transmitter FIFO, which is always empty here.
const FCR_RX_RESET: u8 = 0x02;
/// FCR bits 6-7: receiver trigger level (1, 4, 8 or 14 bytes).
const FCR_TRIGGER_SHIFT: u8 = 6;

/// LCR bits 0-1: word length minus five.
const LCR_WORD_LENGTH: u8 = 0x03;
/// LCR bit 2: two stop bits (1.5 with five-bit words).
const LCR_STOP_BITS: u8 = 0x04;
/// LCR bit 3: parity enable.
const LCR_PARITY: u8 = 0x08;
/// LCR bit 7: divisor latch access bit.
const LCR_DLAB: u8 = 0x80;

/// MCR bit 0: DTR (looped back to DSR).
const MCR_DTR: u8 = 0x01;
/// MCR bit 1: RTS (looped back to CTS).
const MCR_RTS: u8 = 0x02;
/// MCR bit 2: OUT1 (looped back to RI).
const MCR_OUT1: u8 = 0x04;
/// MCR bit 3: OUT2 (looped back to DCD; gates IRQ onto the ISA bus on a PC).
const MCR_OUT2: u8 = 0x08;
/// MCR bit 4: loopback (diagnostic) mode.
const MCR_LOOP: u8 = 0x10;
/// MCR bits 5-7 are always zero.
const MCR_MASK: u8 = 0x1F;

/// LSR bit 0: data ready.
const LSR_DR: u8 = 0x01;
/// LSR bit 1: overrun error.
const LSR_OE: u8 = 0x02;
/// LSR bits 1-4: OE, PE, FE, BI; cleared by reading LSR. Only OE is ever produced.
const LSR_ERRORS: u8 = 0x1E;
/// LSR bit 5: transmitter holding register empty.
const LSR_THRE: u8 = 0x20;
/// LSR bit 6: transmitter empty (holding and shift register).
const LSR_TEMT: u8 = 0x40;

/// MSR bits 0-3: DCTS, DDSR, TERI, DDCD; cleared by reading MSR. Each sits four bits
/// below the status bit it tracks.
const MSR_DELTAS: u8 = 0x0F;
/// MSR bit 4: clear to send.
const MSR_CTS: u8 = 0x10;
/// MSR bit 5: data set ready.
const MSR_DSR: u8 = 0x20;
/// MSR bit 6: ring indicator (its delta, TERI, is set on the trailing edge only).
const MSR_RI: u8 = 0x40;
/// MSR bit 7: data carrier detect.
const MSR_DCD: u8 = 0x80;

/// Depth of the receiver FIFO.
const FIFO_SIZE: usize = 16;
/// The crystal on PC serial cards; the baud rate is this over 16 times the divisor.
const UART_CLOCK_HZ: u64 = 1_843_200;
/// The character timeout fires after this many character times without activity.
const TIMEOUT_CHARS: u64 = 4;
/// Divisor at power-on (9600 baud). The datasheet leaves it undefined.
const POWER_ON_DIVISOR: u16 = 12;
/// How often host input is polled, in virtual nanoseconds.
const INPUT_POLL_NS: Nanos = 1_000_000;

/// A handle through which the host (a stdin thread, say) queues bytes for the guest.
/// Clones share one queue; the UART drains it as its receiver has room.
#[derive(Clone, Debug, Default)]
pub struct SerialInput {
    queue: Arc<Mutex<VecDeque<u8>>>,
    /// Bytes taken from the queue so far, by every holder.
    taken: Arc<std::sync::atomic::AtomicU64>,
}

impl SerialInput {
    /// An empty input queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `bytes` for delivery to the guest, in order.
    pub fn push(&self, bytes: &[u8]) {
        // A panic in another holder of the lock leaves the queue itself intact.
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.extend(bytes);
    }

    /// Removes and returns up to `max` bytes from the front of the queue.
    pub fn take(&self, max: usize) -> Vec<u8> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = max.min(queue.len());
        self.taken
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        queue.drain(..n).collect()
    }

    /// How many bytes were taken from the queue so far (by the guest's
    /// device, or by a recording that moves them on).
    pub fn taken(&self) -> u64 {
        self.taken.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A 16550A UART with its transmitter wired to a host sink and its receiver fed by
/// [`SerialInput`] or [`Uart::receive`].
pub struct Uart {
    irq: IrqLine,
    output: Box<dyn Write>,
    input: Option<SerialInput>,
    /// The receiver FIFO; holds at most one byte in 16450 mode.
    rx_fifo: VecDeque<u8>,
    /// What RBR reads once the FIFO is empty: the last character received.
    rbr_last: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    rx_trigger: usize,
    /// LSR bits 1-4, latched until LSR is read.
    lsr_errors: u8,
    /// MSR bits 0-3, latched until MSR is read.
    msr_deltas: u8,
    /// The THRE interrupt source: set when THR empties or ETBEI is enabled, cleared by
    /// a THR write or by an IIR read that reports it.
    thre_pending: bool,
    /// The character-timeout indication, cleared by reading RBR or receiving.
    timeout_pending: bool,
    /// When the character timeout fires, while one is armed.
    timeout_deadline: Option<Nanos>,
    /// The latest virtual time seen, for arming the timeout from [`Uart::receive`].
    now: Nanos,
    output_errors: u64,
}

/// The UART's saved state (see [`crate::snapshot`]): its registers, the
/// receiver FIFO, pending interrupt sources and the character timeout. Host
/// input not yet received (still in [`SerialInput`]) and the count of host
/// write errors belong to the host, not the device.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UartState {
    rx_fifo: VecDeque<u8>,
    rbr_last: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    rx_trigger: usize,
    lsr_errors: u8,
    msr_deltas: u8,
    thre_pending: bool,
    timeout_pending: bool,
    timeout_deadline: Option<Nanos>,
    now: Nanos,
}

impl Uart {
    /// A UART in its power-on state, interrupting on `irq`, transmitting to `output`
    /// and, if `input` is given, receiving what the host pushes into it.
    pub fn new(irq: IrqLine, output: Box<dyn Write>, input: Option<SerialInput>) -> Self {
        let uart = Self {
            irq,
            output,
            input,
            rx_fifo: VecDeque::with_capacity(FIFO_SIZE),
            rbr_last: 0,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: POWER_ON_DIVISOR,
            fifo_enabled: false,
            rx_trigger: 1,
            lsr_errors: 0,
            msr_deltas: 0,
            thre_pending: false,
            timeout_pending: false,
            timeout_deadline: None,
            now: 0,
            output_errors: 0,
        };
        uart.update_irq();
        uart
    }

    /// Delivers `bytes` to the receiver as if they had just arrived on the wire. A
    /// byte that finds the receiver full is lost and sets LSR overrun.
    pub fn receive(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.receive_byte(byte);
        }
        self.update_irq();
    }

    /// How many writes to the output sink have failed. Failures never stop the UART.
    pub fn output_errors(&self) -> u64 {
        self.output_errors
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// One character time in nanoseconds: start bit, data bits, parity and stop bits
    /// at the programmed baud rate (1.5 stop bits counted as 2).
    fn char_time(&self) -> Nanos {
        let data_bits = 5 + u64::from(self.lcr & LCR_WORD_LENGTH);
        let parity_bits = u64::from(self.lcr & LCR_PARITY != 0);
        let stop_bits = if self.lcr & LCR_STOP_BITS != 0 { 2 } else { 1 };
        let bits = 1 + data_bits + parity_bits + stop_bits;
        // A zero divisor is not a valid setting; treat it as the fastest rate.
        let divisor = u64::from(self.divisor.max(1));
        bits * divisor * 16 * 1_000_000_000 / UART_CLOCK_HZ
    }

    /// Restarts the character-timeout timer after receiver activity. The timeout only
    /// exists in FIFO mode and only while the FIFO holds data.
    fn restart_timeout(&mut self) {
        self.timeout_pending = false;
        self.timeout_deadline = if self.fifo_enabled && !self.rx_fifo.is_empty() {
            Some(self.now.saturating_add(TIMEOUT_CHARS * self.char_time()))
        } else {
            None
        };
    }

    fn clear_rx(&mut self) {
        self.rx_fifo.clear();
        self.timeout_pending = false;
        self.timeout_deadline = None;
    }

    fn receive_byte(&mut self, byte: u8) {
        if self.rx_fifo.len() < self.rx_capacity() {
            self.rx_fifo.push_back(byte);
        } else {
            self.lsr_errors |= LSR_OE;
            // 16450 mode: the new character overwrites the holding register. FIFO
            // mode: it is lost in the shift register and the FIFO is kept.
            if !self.fifo_enabled {
                self.rx_fifo.clear();
                self.rx_fifo.push_back(byte);
            }
        }
        self.restart_timeout();
    }

    /// Moves queued host bytes into the receiver, as many as fit. In loopback the
    /// serial input pin is disconnected, so host bytes wait.
    fn pull_input(&mut self) {
        if self.loopback() {
            return;
        }
        let room = self.rx_capacity().saturating_sub(self.rx_fifo.len());
        let bytes = match &self.input {
            Some(input) if room > 0 => input.take(room),
            _ => return,
        };
        for byte in bytes {
            self.receive_byte(byte);
        }
    }

    fn transmit(&mut self, byte: u8) {
        let result = self
            .output
            .write_all(&[byte])
            .and_then(|()| self.output.flush());
        if result.is_err() {
            self.output_errors += 1;
        }
    }

    /// The highest-priority pending, enabled interrupt, as IIR bits 0-3.
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_ELSI != 0 && self.lsr_errors & LSR_ERRORS != 0 {
            return IIR_LINE_STATUS;
        }
        if self.ier & IER_ERBFI != 0 && !self.rx_fifo.is_empty() {
            if !self.fifo_enabled || self.rx_fifo.len() >= self.rx_trigger {
                return IIR_RX_DATA;
            }
            if self.timeout_pending {
                return IIR_CHAR_TIMEOUT;
            }
        }
        if self.ier & IER_ETBEI != 0 && self.thre_pending {
            return IIR_THRE;
        }
        if self.ier & IER_EDSSI != 0 && self.msr_deltas != 0 {
            return IIR_MODEM_STATUS;
        }
        IIR_NONE
    }

    fn update_irq(&self) {
        let pending = self.interrupt_id() != IIR_NONE;
        let gate = self.mcr & MCR_OUT2 != 0 && !self.loopback();
        self.irq.set_level(pending && gate);
    }

    /// MSR bits 4-7: the modem inputs, or in loopback the MCR outputs wired to them.
    /// With nothing attached, the host side reports CTS, DSR and DCD asserted.
    fn modem_status(&self) -> u8 {
        if !self.loopback() {
            return MSR_CTS | MSR_DSR | MSR_DCD;
        }
        let mut status = 0;
        if self.mcr & MCR_RTS != 0 {
            status |= MSR_CTS;
        }
        if self.mcr & MCR_DTR != 0 {
            status |= MSR_DSR;
        }
        if self.mcr & MCR_OUT1 != 0 {
            status |= MSR_RI;
        }
        if self.mcr & MCR_OUT2 != 0 {
            status |= MSR_DCD;
        }
        status
    }

    fn read_rbr(&mut self) -> u8 {
        if let Some(byte) = self.rx_fifo.pop_front() {
            self.rbr_last = byte;
            self.restart_timeout();
        }
        self.rbr_last
    }

    fn read_iir(&mut self) -> u8 {
        let id = self.interrupt_id();
        if id == IIR_THRE {
            self.thre_pending = false;
        }
        if self.fifo_enabled {
            id | IIR_FIFOS_ENABLED
        } else {
            id
        }
    }

    fn read_lsr(&mut self) -> u8 {
        let mut lsr = self.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.rx_fifo.is_empty() {
            lsr |= LSR_DR;
        }
        self.lsr_errors = 0;
        lsr
    }

    fn read_msr(&mut self) -> u8 {
        let msr = self.modem_status() | self.msr_deltas;
        self.msr_deltas = 0;
        msr
    }

    fn write_thr(&mut self, value: u8) {
        // Writing THR clears the THRE interrupt; the line drops before the byte moves
        // on, so the re-raise below is a fresh edge, as on the chip.
        self.thre_pending = false;
        self.update_irq();
        if self.loopback() {
            self.receive_byte(value);
        } else {
            self.transmit(value);
        }
        self.thre_pending = true;
    }

    fn write_ier(&mut self, value: u8) {
        let enabled = !self.ier & value & IER_ETBEI != 0;
        self.ier = value & IER_MASK;
        // Enabling ETBEI while THR is empty (it always is) raises THRE at once.
        if enabled {
            self.thre_pending = true;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_FIFO_ENABLE != 0;
        if enable != self.fifo_enabled {
            self.clear_rx();
            self.fifo_enabled = enable;
        }
        if enable {
            if value & FCR_RX_RESET != 0 {
                self.clear_rx();
            }
            self.rx_trigger = match value >> FCR_TRIGGER_SHIFT {
                0 => 1,
                1 => 4,
                2 => 8,
                _ => 14,
            };
        }
    }

    fn write_mcr(&mut self, value: u8) {
        let before = self.modem_status();
        self.mcr = value & MCR_MASK;
        let after = self.modem_status();
        let changed = (before ^ after) & (MSR_CTS | MSR_DSR | MSR_DCD);
        let ri_fell = before & !after & MSR_RI;
        self.msr_deltas |= ((changed | ri_fell) >> 4) & MSR_DELTAS;
    }

    fn read_byte(&mut self, offset: u16) -> u8 {
        match offset {
            RBR_THR_DLL if self.dlab() => self.divisor.to_le_bytes()[0],
            RBR_THR_DLL => self.read_rbr(),
            IER_DLM if self.dlab() => self.divisor.to_le_bytes()[1],
            IER_DLM => self.ier,
            IIR_FCR => self.read_iir(),
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => self.read_lsr(),
            MSR => self.read_msr(),
            SCR => self.scr,
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, offset: u16, value: u8) {
        match offset {
            RBR_THR_DLL if self.dlab() => self.divisor = (self.divisor & 0xFF00) | u16::from(value),
            RBR_THR_DLL => self.write_thr(value),
            IER_DLM if self.dlab() => {
                self.divisor = (self.divisor & 0x00FF) | (u16::from(value) << 8);
            }
            IER_DLM => self.write_ier(value),
            IIR_FCR => self.write_fcr(value),
            LCR => self.lcr = value,
            MCR => self.write_mcr(value),
            SCR => self.scr = value,
            // LSR and MSR writes are for factory test only; they are ignored.
            _ => {}
        }
    }
}

impl Uart {
    /// An access wider than a byte is split into byte accesses at consecutive
    /// offsets, as the ISA bus does for an 8-bit device.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], now: Nanos) {
        self.now = self.now.max(now);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_byte(offset.wrapping_add(i as u16));
        }
        self.update_irq();
    }

    /// Writes the register at port offset `offset` (the trait's `write`).
    pub fn port_write(&mut self, offset: u16, data: &[u8], now: Nanos) {
        self.now = self.now.max(now);
        for (i, &byte) in data.iter().enumerate() {
            self.write_byte(offset.wrapping_add(i as u16), byte);
        }
        self.update_irq();
    }

    /// Brings timers up to `now` (the trait's `advance`).
    pub fn advance_to(&mut self, now: Nanos) {
        self.now = self.now.max(now);
        self.pull_input();
        if let Some(deadline) = self.timeout_deadline {
            if self.now >= deadline {
                self.timeout_deadline = None;
                self.timeout_pending = true;
            }
        }
        self.update_irq();
    }
}

impl Device for Uart {
    fn name(&self) -> &'static str {
        "uart16550a"
    }

    crate::port_device_methods!(advance);

    /// The armed character timeout, or the next host-input poll (every virtual
    /// millisecond while an input queue is attached), whichever is sooner.
    fn next_deadline(&self, now: Nanos) -> Option<Nanos> {
        let poll = self
            .input
            .as_ref()
            .map(|_| now.saturating_add(INPUT_POLL_NS));
        [poll, self.timeout_deadline].into_iter().flatten().min()
    }

    /// Master reset: registers to their datasheet reset values. The divisor latch
    /// (undefined by the datasheet) returns to 9600 baud; queued host input is kept.
    fn reset(&mut self) {
        self.clear_rx();
        self.rbr_last = 0;
        self.ier = 0;
        self.lcr = 0;
        self.mcr = 0;
        self.scr = 0;
        self.divisor = POWER_ON_DIVISOR;
        self.fifo_enabled = false;
        self.rx_trigger = 1;
        self.lsr_errors = 0;
        self.msr_deltas = 0;
        self.thre_pending = false;
        self.update_irq();
    }

    crate::state_methods!(Uart(UartState) {
        wiring: [irq, output, input, output_errors],
        state: [
            rx_fifo,
            rbr_last,
            ier,
            lcr,
            mcr,
            scr,
            divisor,
            fifo_enabled,
            rx_trigger,
            lsr_errors,
            msr_deltas,
            thre_pending,
            timeout_pending,
            timeout_deadline,
            now,
        ],
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::IrqLines;
    use std::rc::Rc;

    use crate::devices::test_sinks::{BrokenSink, SharedBuf};

    struct Rig {
        uart: Uart,
        lines: Rc<IrqLines>,
        out: SharedBuf,
    }

    fn rig_with_input(input: Option<SerialInput>) -> Rig {
        let lines = IrqLines::new();
        let out = SharedBuf::default();
        let uart = Uart::new(lines.line(4), Box::new(out.clone()), input);
        Rig { uart, lines, out }
    }

    fn rig() -> Rig {
        rig_with_input(None)
    }

    fn rd(uart: &mut Uart, offset: u16) -> u8 {
        let mut data = [0u8];
        uart.port_read(offset, &mut data, 0);
        data[0]
    }

    fn wr(uart: &mut Uart, offset: u16, value: u8) {
        uart.port_write(offset, &[value], 0);
    }

    fn irq4_high(lines: &IrqLines) -> bool {
        lines.levels() & (1 << 4) != 0
    }

    #[test]
    fn uart_power_on_registers_read_datasheet_reset_values() {
        let mut r = rig();

        let values = [
            rd(&mut r.uart, IER_DLM),
            rd(&mut r.uart, IIR_FCR),
            rd(&mut r.uart, LCR),
            rd(&mut r.uart, MCR),
            rd(&mut r.uart, LSR),
        ];

        assert_eq!(values, [0x00, 0x01, 0x00, 0x00, 0x60]);
        // No loopback: CTS, DSR and DCD asserted, no deltas.
        assert_eq!(rd(&mut r.uart, MSR), 0xB0);
        assert!(!irq4_high(&r.lines));
    }

    #[test]
    fn uart_thr_write_sends_byte_to_output() {
        let mut r = rig();

        wr(&mut r.uart, RBR_THR_DLL, b'A');
        wr(&mut r.uart, RBR_THR_DLL, b'\n');

        assert_eq!(*r.out.0.borrow(), b"A\n");
        assert_eq!(rd(&mut r.uart, LSR) & 0x60, 0x60);
    }

    #[test]
    fn uart_lsr_after_rx_reports_data_ready() {
        let mut r = rig();

        r.uart.receive(b"x");

        assert_eq!(rd(&mut r.uart, LSR), 0x61);
    }

    #[test]
    fn uart_rbr_read_returns_byte_and_clears_data_ready() {
        let mut r = rig();
        r.uart.receive(b"x");

        let byte = rd(&mut r.uart, RBR_THR_DLL);

        assert_eq!(byte, b'x');
        assert_eq!(rd(&mut r.uart, LSR), 0x60);
    }

    #[test]
    fn uart_dlab_set_maps_offsets_0_and_1_to_divisor_latch() {
        let mut r = rig();
        wr(&mut r.uart, LCR, 0x83);

        wr(&mut r.uart, RBR_THR_DLL, 0x01);
        wr(&mut r.uart, IER_DLM, 0x02);

        assert_eq!(rd(&mut r.uart, RBR_THR_DLL), 0x01);
        assert_eq!(rd(&mut r.uart, IER_DLM), 0x02);
        assert!(r.out.0.borrow().is_empty());
        wr(&mut r.uart, LCR, 0x03);
        assert_eq!(rd(&mut r.uart, IER_DLM), 0x00);
    }

    #[test]
    fn uart_ier_upper_bits_read_as_zero() {
        let mut r = rig();

        wr(&mut r.uart, IER_DLM, 0xFF);

        assert_eq!(rd(&mut r.uart, IER_DLM), 0x0F);
    }

    #[test]
    fn uart_enabling_etbei_with_out2_raises_thre_interrupt_and_irq() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_OUT2);

        wr(&mut r.uart, IER_DLM, IER_ETBEI);

        assert!(irq4_high(&r.lines));
        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x02);
    }

    #[test]
    fn uart_iir_read_reporting_thre_clears_it() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_OUT2);
        wr(&mut r.uart, IER_DLM, IER_ETBEI);

        let first = rd(&mut r.uart, IIR_FCR);

        assert_eq!(first, 0x02);
        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x01);
        assert!(!irq4_high(&r.lines));
    }

    #[test]
    fn uart_thr_write_reraises_thre_with_new_edge() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_OUT2);
        wr(&mut r.uart, IER_DLM, IER_ETBEI);
        rd(&mut r.uart, IIR_FCR);
        r.lines.take_rising();

        wr(&mut r.uart, RBR_THR_DLL, b'z');

        assert_eq!(r.lines.take_rising() & (1 << 4), 1 << 4);
        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x02);
    }

    #[test]
    fn uart_pending_interrupt_without_out2_keeps_irq_low() {
        let mut r = rig();
        wr(&mut r.uart, IER_DLM, IER_ERBFI);

        r.uart.receive(b"a");

        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x04);
        assert!(!irq4_high(&r.lines));
    }

    #[test]
    fn uart_rx_data_with_out2_drives_irq_until_read() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_OUT2);
        wr(&mut r.uart, IER_DLM, IER_ERBFI);

        r.uart.receive(b"a");

        assert!(irq4_high(&r.lines));
        rd(&mut r.uart, RBR_THR_DLL);
        assert!(!irq4_high(&r.lines));
    }

    #[test]
    fn uart_overrun_in_16450_mode_sets_oe_and_keeps_newest_byte() {
        let mut r = rig();

        r.uart.receive(b"ab");

        assert_eq!(rd(&mut r.uart, LSR), 0x63);
        assert_eq!(rd(&mut r.uart, LSR), 0x61);
        assert_eq!(rd(&mut r.uart, RBR_THR_DLL), b'b');
    }

    #[test]
    fn uart_line_status_outranks_rx_data() {
        let mut r = rig();
        wr(&mut r.uart, IER_DLM, IER_ERBFI | IER_ELSI);
        r.uart.receive(b"ab");

        let first = rd(&mut r.uart, IIR_FCR);
        rd(&mut r.uart, LSR);
        let second = rd(&mut r.uart, IIR_FCR);

        assert_eq!((first, second), (0x06, 0x04));
    }

    #[test]
    fn uart_rx_data_outranks_thre_which_survives_iir_read() {
        let mut r = rig();
        wr(&mut r.uart, IER_DLM, IER_ERBFI | IER_ETBEI);
        r.uart.receive(b"a");

        let first = rd(&mut r.uart, IIR_FCR);
        rd(&mut r.uart, RBR_THR_DLL);
        let second = rd(&mut r.uart, IIR_FCR);

        assert_eq!((first, second), (0x04, 0x02));
    }

    #[test]
    fn uart_fifo_enable_sets_iir_fifo_bits() {
        let mut r = rig();

        wr(&mut r.uart, IIR_FCR, FCR_FIFO_ENABLE);

        assert_eq!(rd(&mut r.uart, IIR_FCR), 0xC1);
    }

    #[test]
    fn uart_fifo_trigger_4_reports_rx_data_only_at_fourth_byte() {
        let mut r = rig();
        wr(&mut r.uart, IIR_FCR, 0x41);
        wr(&mut r.uart, IER_DLM, IER_ERBFI);

        r.uart.receive(b"abc");
        let below = rd(&mut r.uart, IIR_FCR);
        r.uart.receive(b"d");
        let at = rd(&mut r.uart, IIR_FCR);

        assert_eq!((below, at), (0xC1, 0xC4));
    }

    #[test]
    fn uart_fifo_below_trigger_after_four_char_times_reports_timeout() {
        let mut r = rig();
        wr(&mut r.uart, IIR_FCR, 0xC1);
        wr(&mut r.uart, IER_DLM, IER_ERBFI);
        r.uart.receive(b"a");
        let deadline = r.uart.next_deadline(0);

        r.uart.advance_to(10_000_000);

        // 9600 baud 5N1 (LCR 0): 7 bits * 12 * 16 / 1.8432 MHz = 729166 ns per char.
        assert_eq!(deadline, Some(4 * 729_166));
        assert_eq!(rd(&mut r.uart, IIR_FCR), 0xCC);
        assert_eq!(rd(&mut r.uart, RBR_THR_DLL), b'a');
        assert_eq!(rd(&mut r.uart, IIR_FCR), 0xC1);
    }

    #[test]
    fn uart_fifo_before_timeout_elapses_reports_no_interrupt() {
        let mut r = rig();
        wr(&mut r.uart, IIR_FCR, 0xC1);
        wr(&mut r.uart, IER_DLM, IER_ERBFI);
        r.uart.receive(b"a");

        r.uart.advance_to(1_000);

        assert_eq!(rd(&mut r.uart, IIR_FCR), 0xC1);
    }

    #[test]
    fn uart_full_fifo_overrun_sets_oe_and_keeps_first_16_bytes() {
        let mut r = rig();
        wr(&mut r.uart, IIR_FCR, FCR_FIFO_ENABLE);
        let sent: Vec<u8> = (0..17).collect();

        r.uart.receive(&sent);

        assert_eq!(rd(&mut r.uart, LSR) & LSR_OE, LSR_OE);
        let got: Vec<u8> = (0..16).map(|_| rd(&mut r.uart, RBR_THR_DLL)).collect();
        assert_eq!(got, &sent[..16]);
        assert_eq!(rd(&mut r.uart, LSR) & LSR_DR, 0);
    }

    #[test]
    fn uart_fcr_rx_reset_empties_fifo() {
        let mut r = rig();
        wr(&mut r.uart, IIR_FCR, FCR_FIFO_ENABLE);
        r.uart.receive(b"abc");

        wr(&mut r.uart, IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_RESET);

        assert_eq!(rd(&mut r.uart, LSR), 0x60);
    }

    #[test]
    fn uart_fifo_disable_clears_fifo_and_iir_fifo_bits() {
        let mut r = rig();
        wr(&mut r.uart, IIR_FCR, FCR_FIFO_ENABLE);
        r.uart.receive(b"abc");

        wr(&mut r.uart, IIR_FCR, 0x00);

        assert_eq!(rd(&mut r.uart, LSR), 0x60);
        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x01);
    }

    #[test]
    fn uart_loopback_thr_write_arrives_in_rbr_not_output() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_LOOP);

        wr(&mut r.uart, RBR_THR_DLL, 0x5A);

        assert!(r.out.0.borrow().is_empty());
        assert_eq!(rd(&mut r.uart, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut r.uart, RBR_THR_DLL), 0x5A);
    }

    #[test]
    fn uart_loopback_msr_status_mirrors_mcr_outputs() {
        let mut r = rig();

        // RTS -> CTS and OUT2 -> DCD: the probe Linux uses.
        wr(&mut r.uart, MCR, MCR_LOOP | MCR_RTS | MCR_OUT2);
        let partial = rd(&mut r.uart, MSR) & 0xF0;
        wr(&mut r.uart, MCR, MCR_LOOP | 0x0F);
        let all = rd(&mut r.uart, MSR) & 0xF0;

        assert_eq!((partial, all), (0x90, 0xF0));
    }

    #[test]
    fn uart_loopback_msr_changes_set_delta_bits_cleared_by_read() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_LOOP);
        rd(&mut r.uart, MSR);

        wr(&mut r.uart, MCR, MCR_LOOP | 0x0F);
        let rising = rd(&mut r.uart, MSR);
        wr(&mut r.uart, MCR, MCR_LOOP);
        let falling = rd(&mut r.uart, MSR);

        // Rising: DCTS, DDSR, DDCD but no TERI (RI rose). Falling: all four deltas.
        assert_eq!(rising, 0xF0 | 0x0B);
        assert_eq!(falling, 0x0F);
        assert_eq!(rd(&mut r.uart, MSR), 0x00);
    }

    #[test]
    fn uart_modem_status_change_reports_lowest_priority_source() {
        let mut r = rig();
        wr(&mut r.uart, IER_DLM, IER_EDSSI);

        wr(&mut r.uart, MCR, MCR_LOOP | MCR_OUT2);

        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x00);
        rd(&mut r.uart, MSR);
        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x01);
    }

    #[test]
    fn uart_loopback_keeps_irq_low_even_with_out2() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_LOOP | MCR_OUT2);

        wr(&mut r.uart, IER_DLM, IER_ETBEI);

        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x02);
        assert!(!irq4_high(&r.lines));
    }

    #[test]
    fn uart_scratch_register_holds_written_value() {
        let mut r = rig();

        wr(&mut r.uart, SCR, 0xA5);

        assert_eq!(rd(&mut r.uart, SCR), 0xA5);
    }

    #[test]
    fn uart_without_input_has_no_deadline() {
        let r = rig();

        assert_eq!(r.uart.next_deadline(5), None);
    }

    #[test]
    fn uart_with_input_polls_every_virtual_millisecond() {
        let r = rig_with_input(Some(SerialInput::new()));

        assert_eq!(r.uart.next_deadline(5), Some(1_000_005));
    }

    #[test]
    fn uart_advance_moves_host_input_into_fifo() {
        let input = SerialInput::new();
        let mut r = rig_with_input(Some(input.clone()));
        wr(&mut r.uart, IIR_FCR, FCR_FIFO_ENABLE);
        input.push(b"hi");

        r.uart.advance_to(1_000_000);

        assert_eq!(rd(&mut r.uart, RBR_THR_DLL), b'h');
        assert_eq!(rd(&mut r.uart, RBR_THR_DLL), b'i');
        assert_eq!(rd(&mut r.uart, LSR), 0x60);
    }

    #[test]
    fn uart_host_input_in_16450_mode_waits_without_overrun() {
        let input = SerialInput::new();
        let mut r = rig_with_input(Some(input.clone()));
        input.push(b"ab");

        r.uart.advance_to(1_000_000);
        r.uart.advance_to(2_000_000);
        let first = rd(&mut r.uart, RBR_THR_DLL);
        r.uart.advance_to(3_000_000);
        let second = rd(&mut r.uart, RBR_THR_DLL);

        assert_eq!((first, second), (b'a', b'b'));
        assert_eq!(rd(&mut r.uart, LSR), 0x60);
    }

    #[test]
    fn uart_host_input_waits_while_in_loopback() {
        let input = SerialInput::new();
        let mut r = rig_with_input(Some(input.clone()));
        wr(&mut r.uart, MCR, MCR_LOOP);
        input.push(b"a");

        r.uart.advance_to(1_000_000);

        assert_eq!(rd(&mut r.uart, LSR) & LSR_DR, 0);
    }

    #[test]
    fn uart_failing_output_counts_error_without_panic() {
        let lines = IrqLines::new();
        let mut uart = Uart::new(lines.line(4), Box::new(BrokenSink), None);

        wr(&mut uart, RBR_THR_DLL, b'x');

        assert_eq!(uart.output_errors(), 1);
        assert_eq!(rd(&mut uart, LSR), 0x60);
    }

    #[test]
    fn uart_word_read_splits_into_consecutive_registers() {
        let mut r = rig();
        wr(&mut r.uart, SCR, 0x42);

        let mut data = [0u8; 2];
        r.uart.port_read(MSR, &mut data, 0);

        assert_eq!(data, [0xB0, 0x42]);
    }

    #[test]
    fn uart_reset_returns_registers_to_reset_values() {
        let mut r = rig();
        wr(&mut r.uart, MCR, MCR_OUT2);
        wr(&mut r.uart, IER_DLM, IER_ETBEI);
        wr(&mut r.uart, IIR_FCR, FCR_FIFO_ENABLE);
        r.uart.receive(b"a");

        r.uart.reset();

        assert_eq!(rd(&mut r.uart, IIR_FCR), 0x01);
        assert_eq!(rd(&mut r.uart, LSR), 0x60);
        assert_eq!(rd(&mut r.uart, MCR), 0x00);
        assert!(!irq4_high(&r.lines));
    }
}
