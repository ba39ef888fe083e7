//! The Intel 8042 keyboard controller of a PC/AT or PS/2 with a keyboard attached and
//! no mouse. It is mapped with base 0, so offsets are the absolute ports: 0x60 (data)
//! and 0x64 (status on read, command on write).
//!
//! Behaviour follows the IBM PC/AT and PS/2 technical references:
//! - controller commands: command byte and the rest of the 32-byte controller RAM
//!   (0x20-0x3F read, 0x60-0x7F write), self-test (0xAA -> 0x55), interface tests
//!   (0xAB/0xA9 -> 0x00), keyboard and aux enable/disable (0xAE/0xAD, 0xA8/0xA7),
//!   output port read/write (0xD0/0xD1: bit 0 is the active-low CPU reset, bit 1 the
//!   A20 gate), 0xD2/0xD3 (write the output buffer as keyboard / aux data), 0xD4 (send
//!   to aux), 0xDD/0xDF (A20 off/on) and the 0xF0-0xFF output-port pulses;
//! - the keyboard's own commands, sent through port 0x60 (reset, identify, echo, LEDs,
//!   typematic, scan-code set, enable/disable/defaults, resend).
//!
//! Invariants:
//! - The controller processes every write at once, so IBF always reads 0.
//! - The output buffer holds one byte. Controller replies queue ahead of keyboard
//!   bytes; keyboard bytes only move in while the keyboard interface is enabled
//!   (command byte bit 4 clear), as an inhibited keyboard holds its data.
//! - IRQ1 is driven high exactly while the output buffer holds non-aux data and
//!   command byte bit 0 is set; IRQ12 likewise for aux data and bit 1. Reading port
//!   0x60 drops the line before the next byte moves in, so each byte is a new edge.
//! - No translation is applied: command byte bit 6 is stored and reported but every
//!   keyboard byte, replies included, reaches the output buffer unchanged. So the
//!   scan-set query (0xF0 0x00) reads back set 2 as 0x02, not the translated 0x41,
//!   and [`I8042::key_bytes`] callers supply the codes the guest expects.
//! - Both internal queues are bounded, so a guest that never reads cannot grow them.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::device::{Device, IrqLine, Nanos, SystemControl};

/// Data port: output buffer on read, input buffer (data) on write.
const DATA_PORT: u16 = 0x60;
/// Status register on read, input buffer (command) on write.
const STATUS_COMMAND_PORT: u16 = 0x64;

/// Status bit 0: output buffer full.
const STATUS_OBF: u8 = 0x01;
/// Status bit 2: system flag, a copy of command byte bit 2.
const STATUS_SYS: u8 = 0x04;
/// Status bit 3: A2, set when the last write went to port 0x64 (a command).
const STATUS_A2: u8 = 0x08;
/// Status bit 4: keyboard inhibit switch; 1 = not inhibited (keylock open).
const STATUS_UNLOCKED: u8 = 0x10;
/// Status bit 5: the output buffer holds aux (mouse) data.
const STATUS_AUX_OBF: u8 = 0x20;
/// Status bit 6: general timeout (no answer from the device).
const STATUS_TIMEOUT: u8 = 0x40;

/// Command byte bit 0: IRQ1 on keyboard data.
const CB_KBD_INT: u8 = 0x01;
/// Command byte bit 1: IRQ12 on aux data.
const CB_AUX_INT: u8 = 0x02;
/// Command byte bit 2: system flag (POST passed).
const CB_SYS: u8 = 0x04;
/// Command byte bit 4: keyboard interface disabled (clock held low).
const CB_KBD_DISABLE: u8 = 0x10;
/// Command byte bit 5: aux interface disabled.
const CB_AUX_DISABLE: u8 = 0x20;
/// Command byte bit 6: translate set 2 to set 1 (stored, not applied).
const CB_TRANSLATE: u8 = 0x40;
/// The command byte as firmware leaves it after POST: keyboard IRQ on, system flag
/// set, translation on. Chosen so a guest started without a BIOS finds a working
/// keyboard.
const POWER_ON_COMMAND_BYTE: u8 = CB_KBD_INT | CB_SYS | CB_TRANSLATE;

/// 0x20-0x3F: read controller RAM byte (command & 0x1F); byte 0 is the command byte.
const CMD_READ_RAM_FIRST: u8 = 0x20;
/// Last read-RAM command.
const CMD_READ_RAM_LAST: u8 = 0x3F;
/// 0x60-0x7F: write controller RAM byte (command & 0x1F) from the next data byte.
const CMD_WRITE_RAM_FIRST: u8 = 0x60;
/// Last write-RAM command.
const CMD_WRITE_RAM_LAST: u8 = 0x7F;
/// Disable the aux interface (sets command byte bit 5).
const CMD_AUX_DISABLE: u8 = 0xA7;
/// Enable the aux interface (clears command byte bit 5).
const CMD_AUX_ENABLE: u8 = 0xA8;
/// Aux interface test; replies 0x00 when the clock and data lines are good.
const CMD_AUX_TEST: u8 = 0xA9;
/// Controller self-test; replies 0x55 on success.
const CMD_SELF_TEST: u8 = 0xAA;
/// Keyboard interface test; replies 0x00 when the clock and data lines are good.
const CMD_KBD_TEST: u8 = 0xAB;
/// Disable the keyboard interface (sets command byte bit 4).
const CMD_KBD_DISABLE: u8 = 0xAD;
/// Enable the keyboard interface (clears command byte bit 4).
const CMD_KBD_ENABLE: u8 = 0xAE;
/// Read the output port into the output buffer.
const CMD_READ_OUTPUT_PORT: u8 = 0xD0;
/// Write the next data byte to the output port.
const CMD_WRITE_OUTPUT_PORT: u8 = 0xD1;
/// Place the next data byte in the output buffer as if the keyboard sent it.
const CMD_WRITE_KBD_BUFFER: u8 = 0xD2;
/// Place the next data byte in the output buffer as if the aux device sent it.
const CMD_WRITE_AUX_BUFFER: u8 = 0xD3;
/// Send the next data byte to the aux device.
const CMD_WRITE_AUX: u8 = 0xD4;
/// Close the A20 gate (a common chipset extension).
const CMD_A20_OFF: u8 = 0xDD;
/// Open the A20 gate (a common chipset extension).
const CMD_A20_ON: u8 = 0xDF;
/// 0xF0-0xFF: pulse low, for about 6 us, the output-port bits 0-3 that are clear in
/// the command's low nibble. Bit 0 is the CPU reset line, so 0xFE resets.
const CMD_PULSE_FIRST: u8 = 0xF0;

/// Self-test passed.
const SELF_TEST_OK: u8 = 0x55;
/// Interface test passed.
const INTERFACE_TEST_OK: u8 = 0x00;

/// Output port bit 0: CPU reset, active low.
const OUT_RESET_N: u8 = 0x01;
/// Output port bit 1: A20 gate.
const OUT_A20: u8 = 0x02;

/// Keyboard: set LEDs (takes a parameter byte).
const KBD_SET_LEDS: u8 = 0xED;
/// Keyboard: echo; the keyboard answers 0xEE without an ACK.
const KBD_ECHO: u8 = 0xEE;
/// Keyboard: get or set the scan-code set (takes a parameter byte, 0 = get).
const KBD_SCAN_SET: u8 = 0xF0;
/// Keyboard: identify; the answer is ACK then the two ID bytes.
const KBD_IDENTIFY: u8 = 0xF2;
/// Keyboard: set typematic rate and delay (takes a parameter byte).
const KBD_TYPEMATIC: u8 = 0xF3;
/// Keyboard: enable scanning and clear the keyboard's buffer.
const KBD_ENABLE: u8 = 0xF4;
/// Keyboard: restore defaults, clear the buffer and stop scanning.
const KBD_DEFAULT_DISABLE: u8 = 0xF5;
/// Keyboard: restore defaults, clear the buffer and keep scanning.
const KBD_SET_DEFAULT: u8 = 0xF6;
/// Keyboard: resend the last byte sent.
const KBD_RESEND: u8 = 0xFE;
/// Keyboard: reset and run the basic assurance test.
const KBD_RESET: u8 = 0xFF;

/// Keyboard reply: acknowledge.
const KBD_ACK: u8 = 0xFA;
/// Keyboard reply: basic assurance test passed.
const KBD_BAT_OK: u8 = 0xAA;
/// Keyboard reply: resend (the command was not understood).
const KBD_ERROR: u8 = 0xFE;
/// Keyboard reply to identify: an MF2 keyboard.
const KBD_ID: [u8; 2] = [0xAB, 0x83];
/// The scan-code set a keyboard uses after reset.
const KBD_DEFAULT_SET: u8 = 2;

/// What the controller reports when it cannot reach an aux device (none attached).
const AUX_NO_DEVICE: u8 = 0xFE;

/// Size of the controller RAM addressed by the 0x20/0x60 command ranges.
const RAM_SIZE: usize = 32;
/// Bound on pending controller replies.
const CONTROLLER_QUEUE_LIMIT: usize = 16;
/// Bound on bytes the keyboard holds for the host.
const KEYBOARD_QUEUE_LIMIT: usize = 256;

/// One byte for the output buffer, with where it came from.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Output {
    byte: u8,
    aux: bool,
    timeout: bool,
}

impl Output {
    fn keyboard(byte: u8) -> Self {
        Self {
            byte,
            aux: false,
            timeout: false,
        }
    }

    fn aux(byte: u8) -> Self {
        Self {
            byte,
            aux: true,
            timeout: false,
        }
    }
}

/// The MF2 keyboard on the other end of the keyboard interface.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Keyboard {
    /// Bytes waiting to go to the controller.
    queue: VecDeque<u8>,
    /// A command that takes a parameter, waiting for it.
    awaiting: Option<u8>,
    scanning: bool,
    scan_set: u8,
    last_sent: u8,
}

impl Keyboard {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            awaiting: None,
            scanning: true,
            scan_set: KBD_DEFAULT_SET,
            last_sent: 0,
        }
    }

    fn send(&mut self, byte: u8) {
        if self.queue.len() < KEYBOARD_QUEUE_LIMIT {
            self.queue.push_back(byte);
        }
        self.last_sent = byte;
    }

    /// Handles one byte from the controller: a parameter if one is awaited, else a
    /// command. A command byte (bit 7 set) in place of a parameter abandons the
    /// pending command and is executed instead.
    fn receive(&mut self, byte: u8) {
        if let Some(command) = self.awaiting.take() {
            if byte & 0x80 == 0 {
                self.parameter(command, byte);
                return;
            }
        }
        self.command(byte);
    }

    fn parameter(&mut self, command: u8, value: u8) {
        if command != KBD_SCAN_SET {
            // LED state and typematic settings have no visible effect here.
            self.send(KBD_ACK);
            return;
        }
        match value {
            0 => {
                self.send(KBD_ACK);
                self.send(self.scan_set);
            }
            1..=3 => {
                self.send(KBD_ACK);
                self.scan_set = value;
            }
            _ => self.send(KBD_ERROR),
        }
    }

    fn command(&mut self, command: u8) {
        match command {
            KBD_SET_LEDS | KBD_TYPEMATIC | KBD_SCAN_SET => {
                self.send(KBD_ACK);
                self.awaiting = Some(command);
            }
            KBD_ECHO => self.send(KBD_ECHO),
            KBD_IDENTIFY => {
                self.send(KBD_ACK);
                for byte in KBD_ID {
                    self.send(byte);
                }
            }
            KBD_ENABLE => {
                self.queue.clear();
                self.scanning = true;
                self.send(KBD_ACK);
            }
            KBD_DEFAULT_DISABLE => {
                self.queue.clear();
                self.scanning = false;
                self.send(KBD_ACK);
            }
            KBD_SET_DEFAULT => {
                self.queue.clear();
                self.send(KBD_ACK);
            }
            KBD_RESEND => self.send(self.last_sent),
            KBD_RESET => {
                *self = Self::new();
                self.send(KBD_ACK);
                self.send(KBD_BAT_OK);
            }
            _ => self.send(KBD_ERROR),
        }
    }
}

/// The 8042 keyboard controller with an MF2 keyboard on its keyboard interface.
pub struct I8042 {
    irq1: IrqLine,
    irq12: IrqLine,
    ctl: Rc<SystemControl>,
    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; RAM_SIZE],
    /// Output-port bits 2-7 as last written; bits 0-1 come from the live signals.
    output_port: u8,
    /// A controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    /// Status bit 3: whether the last write was to the command port.
    last_write_command: bool,
    /// The output buffer register.
    obuf: Option<Output>,
    /// What port 0x60 reads when the output buffer is empty: the last byte.
    obuf_last: u8,
    /// Controller replies, ahead of keyboard data.
    replies: VecDeque<Output>,
    kbd: Keyboard,
}

/// The keyboard controller's saved state (see [`crate::snapshot`]): its
/// RAM and output port, the output buffer and the queues, and the keyboard.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    ram: [u8; RAM_SIZE],
    output_port: u8,
    pending: Option<u8>,
    last_write_command: bool,
    obuf: Option<Output>,
    obuf_last: u8,
    replies: VecDeque<Output>,
    kbd: Keyboard,
}

impl I8042 {
    /// A controller in its power-on state, raising `irq1` for keyboard data and
    /// `irq12` for aux data, driving A20 and reset through `ctl`.
    pub fn new(irq1: IrqLine, irq12: IrqLine, ctl: Rc<SystemControl>) -> Self {
        let mut ram = [0; RAM_SIZE];
        ram[0] = POWER_ON_COMMAND_BYTE;
        let i8042 = Self {
            irq1,
            irq12,
            ctl,
            ram,
            output_port: 0,
            pending: None,
            last_write_command: false,
            obuf: None,
            obuf_last: 0,
            replies: VecDeque::new(),
            kbd: Keyboard::new(),
        };
        i8042.update_irqs();
        i8042
    }

    /// Injects scancodes as if keys were pressed. They are dropped while the keyboard
    /// has scanning disabled (command 0xF5), as a real keyboard ignores its keys then.
    pub fn key_bytes(&mut self, scancodes: &[u8]) {
        if self.kbd.scanning {
            for &code in scancodes {
                self.kbd.send(code);
            }
        }
        self.refill();
        self.update_irqs();
    }

    fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if let Some(out) = self.obuf {
            status |= STATUS_OBF;
            if out.aux {
                status |= STATUS_AUX_OBF;
            }
            if out.timeout {
                status |= STATUS_TIMEOUT;
            }
        }
        if self.command_byte() & CB_SYS != 0 {
            status |= STATUS_SYS;
        }
        if self.last_write_command {
            status |= STATUS_A2;
        }
        status
    }

    fn output_port_value(&self) -> u8 {
        let a20 = if self.ctl.a20() { OUT_A20 } else { 0 };
        (self.output_port & !(OUT_RESET_N | OUT_A20)) | OUT_RESET_N | a20
    }

    fn reply(&mut self, out: Output) {
        if self.replies.len() < CONTROLLER_QUEUE_LIMIT {
            self.replies.push_back(out);
        }
    }

    /// Moves the next byte into an empty output buffer: a controller reply first,
    /// else keyboard data if the keyboard interface is enabled.
    fn refill(&mut self) {
        if self.obuf.is_some() {
            return;
        }
        self.obuf = self.replies.pop_front();
        if self.obuf.is_none() && self.command_byte() & CB_KBD_DISABLE == 0 {
            self.obuf = self.kbd.queue.pop_front().map(Output::keyboard);
        }
    }

    fn update_irqs(&self) {
        let (kbd, aux) = match self.obuf {
            Some(out) => (!out.aux, out.aux),
            None => (false, false),
        };
        let cb = self.command_byte();
        self.irq1.set_level(kbd && cb & CB_KBD_INT != 0);
        self.irq12.set_level(aux && cb & CB_AUX_INT != 0);
    }

    fn read_data(&mut self) -> u8 {
        if let Some(out) = self.obuf.take() {
            self.obuf_last = out.byte;
        }
        // Let the line fall before the next byte moves in, so it makes a new edge.
        self.update_irqs();
        self.refill();
        self.obuf_last
    }

    fn write_output_port(&mut self, value: u8) {
        self.output_port = value;
        self.ctl.set_a20(value & OUT_A20 != 0);
        if value & OUT_RESET_N == 0 {
            self.ctl
                .request_reset("keyboard controller (i8042 reset pulse)");
        }
    }

    fn write_command(&mut self, command: u8) {
        self.last_write_command = true;
        // A new command abandons one still waiting for its data byte.
        self.pending = None;
        match command {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                let byte = self.ram[usize::from(command & 0x1F)];
                self.reply(Output::keyboard(byte));
            }
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending = Some(command),
            CMD_AUX_DISABLE => self.ram[0] |= CB_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ram[0] &= !CB_AUX_DISABLE,
            CMD_AUX_TEST | CMD_KBD_TEST => self.reply(Output::keyboard(INTERFACE_TEST_OK)),
            CMD_SELF_TEST => self.reply(Output::keyboard(SELF_TEST_OK)),
            CMD_KBD_DISABLE => self.ram[0] |= CB_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ram[0] &= !CB_KBD_DISABLE,
            CMD_READ_OUTPUT_PORT => self.reply(Output::keyboard(self.output_port_value())),
            CMD_A20_OFF => self.ctl.set_a20(false),
            CMD_A20_ON => self.ctl.set_a20(true),
            CMD_PULSE_FIRST..=0xFF if command & OUT_RESET_N == 0 => self
                .ctl
                .request_reset("keyboard controller (i8042 reset pulse)"),
            // The other pulses touch no line modelled here, and controller firmware
            // ignores commands it does not know.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_write_command = false;
        match self.pending.take() {
            Some(command @ CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST) => {
                self.ram[usize::from(command & 0x1F)] = value;
            }
            Some(CMD_WRITE_OUTPUT_PORT) => self.write_output_port(value),
            Some(CMD_WRITE_KBD_BUFFER) => self.reply(Output::keyboard(value)),
            Some(CMD_WRITE_AUX_BUFFER) => self.reply(Output::aux(value)),
            Some(CMD_WRITE_AUX) => {
                // Sending enables the aux clock; with no device attached the
                // transmission times out and the controller reports 0xFE as aux data.
                self.ram[0] &= !CB_AUX_DISABLE;
                self.reply(Output {
                    byte: AUX_NO_DEVICE,
                    aux: true,
                    timeout: true,
                });
            }
            _ => {
                // Sending to the keyboard re-enables the keyboard interface, as the
                // common AT-compatible controllers do.
                self.ram[0] &= !CB_KBD_DISABLE;
                self.kbd.receive(value);
            }
        }
    }
}

impl I8042 {
    /// Only the byte at port 0x60 or 0x64 is driven; any wider part reads 0xFF.
    pub fn port_read(&mut self, offset: u16, data: &mut [u8], _now: Nanos) {
        data.fill(0xFF);
        if let Some(first) = data.first_mut() {
            *first = match offset {
                DATA_PORT => self.read_data(),
                STATUS_COMMAND_PORT => self.status(),
                _ => 0xFF,
            };
        }
        self.update_irqs();
    }

    /// Only the first byte is taken; the rest would belong to the next port up.
    pub fn port_write(&mut self, offset: u16, data: &[u8], _now: Nanos) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA_PORT => self.write_data(value),
            STATUS_COMMAND_PORT => self.write_command(value),
            _ => {}
        }
        self.refill();
        self.update_irqs();
    }
}

impl Device for I8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }

    crate::port_device_methods!();

    /// Power-on state of the controller and keyboard. A20 and the reset line live in
    /// [`SystemControl`], which the platform resets itself.
    fn reset(&mut self) {
        self.ram = [0; RAM_SIZE];
        self.ram[0] = POWER_ON_COMMAND_BYTE;
        self.output_port = 0;
        self.pending = None;
        self.last_write_command = false;
        self.obuf = None;
        self.obuf_last = 0;
        self.replies.clear();
        self.kbd = Keyboard::new();
        self.update_irqs();
    }

    crate::state_methods!(I8042(I8042State) {
        wiring: [irq1, irq12, ctl],
        state: [
            ram,
            output_port,
            pending,
            last_write_command,
            obuf,
            obuf_last,
            replies,
            kbd,
        ],
    });
}

/// The 8042 as the platform plugs it in, shared with the front end, which
/// types keys into it between units ([`I8042::key_bytes`]).
#[derive(Clone)]
pub struct SharedI8042(pub std::rc::Rc<std::cell::RefCell<I8042>>);

impl Device for SharedI8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }

    fn read(&mut self, ctx: &mut crate::device::DevCtx, region: u8, offset: u64, data: &mut [u8]) {
        self.0.borrow_mut().read(ctx, region, offset, data);
    }

    fn write(&mut self, ctx: &mut crate::device::DevCtx, region: u8, offset: u64, data: &[u8]) {
        self.0.borrow_mut().write(ctx, region, offset, data);
    }

    fn reset(&mut self) {
        self.0.borrow_mut().reset();
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        self.0.borrow_mut().save()
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        self.0.borrow_mut().restore(state)
    }
}

/// Set 1 scancodes (what a guest reads with the controller translating, as
/// firmware and Linux set it up) for the bytes a terminal sends: printable
/// ASCII with Shift where needed, Enter, Tab, Backspace, Escape, Ctrl
/// letters, and the cursor keys' escape sequences. Each key is a make and a
/// break code. Bytes with no key are dropped.
pub fn terminal_bytes_to_scancodes(bytes: &[u8]) -> Vec<u8> {
    const SHIFT: u8 = 0x2A;
    const CTRL: u8 = 0x1D;
    fn key(out: &mut Vec<u8>, code: u8, modifier: Option<u8>) {
        if let Some(m) = modifier {
            out.push(m);
        }
        out.extend_from_slice(&[code, code | 0x80]);
        if let Some(m) = modifier {
            out.push(m | 0x80);
        }
    }
    fn plain(c: u8) -> Option<(u8, bool)> {
        const ROW1: &[u8] = b"1234567890-=";
        const ROW1S: &[u8] = b"!@#$%^&*()_+";
        const ROWQ: &[u8] = b"qwertyuiop[]";
        const ROWQS: &[u8] = b"QWERTYUIOP{}";
        const ROWA: &[u8] = b"asdfghjkl;'`";
        const ROWAS: &[u8] = b"ASDFGHJKL:\"~";
        const ROWZ: &[u8] = b"\\zxcvbnm,./";
        const ROWZS: &[u8] = b"|ZXCVBNM<>?";
        let find = |row: &[u8], base: u8| row.iter().position(|&r| r == c).map(|i| base + i as u8);
        if let Some(k) = find(ROW1, 0x02) {
            return Some((k, false));
        }
        if let Some(k) = find(ROW1S, 0x02) {
            return Some((k, true));
        }
        if let Some(k) = find(ROWQ, 0x10) {
            return Some((k, false));
        }
        if let Some(k) = find(ROWQS, 0x10) {
            return Some((k, true));
        }
        if let Some(k) = find(ROWA, 0x1E) {
            return Some((k, false));
        }
        if let Some(k) = find(ROWAS, 0x1E) {
            return Some((k, true));
        }
        // Backslash sits at 0x2B, the Z row from 0x2C.
        if c == b'\\' {
            return Some((0x2B, false));
        }
        if let Some(k) = find(&ROWZ[1..], 0x2C) {
            return Some((k, false));
        }
        if c == b'|' {
            return Some((0x2B, true));
        }
        if let Some(k) = find(&ROWZS[1..], 0x2C) {
            return Some((k, true));
        }
        match c {
            b' ' => Some((0x39, false)),
            _ => None,
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            0x1B if bytes.get(i) == Some(&b'[') && i + 1 < bytes.len() => {
                let code = match bytes[i + 1] {
                    b'A' => Some(0x48),
                    b'B' => Some(0x50),
                    b'C' => Some(0x4D),
                    b'D' => Some(0x4B),
                    b'H' => Some(0x47),
                    b'F' => Some(0x4F),
                    _ => None,
                };
                i += 2;
                if let Some(c) = code {
                    out.extend_from_slice(&[0xE0, c, 0xE0, c | 0x80]);
                }
            }
            0x1B => key(&mut out, 0x01, None),
            b'\r' | b'\n' => key(&mut out, 0x1C, None),
            b'\t' => key(&mut out, 0x0F, None),
            0x08 | 0x7F => key(&mut out, 0x0E, None),
            0x01..=0x1A => {
                // Ctrl plus the letter.
                if let Some((k, _)) = plain(b'a' + b - 1) {
                    key(&mut out, k, Some(CTRL));
                }
            }
            _ => {
                if let Some((k, shifted)) = plain(b) {
                    key(&mut out, k, shifted.then_some(SHIFT));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::IrqLines;

    struct Rig {
        kbc: I8042,
        lines: Rc<IrqLines>,
        ctl: Rc<SystemControl>,
    }

    fn rig() -> Rig {
        let lines = IrqLines::new();
        let ctl = SystemControl::new();
        let kbc = I8042::new(lines.line(1), lines.line(12), Rc::clone(&ctl));
        Rig { kbc, lines, ctl }
    }

    fn status(kbc: &mut I8042) -> u8 {
        let mut data = [0u8];
        kbc.port_read(STATUS_COMMAND_PORT, &mut data, 0);
        data[0]
    }

    fn read_data(kbc: &mut I8042) -> u8 {
        let mut data = [0u8];
        kbc.port_read(DATA_PORT, &mut data, 0);
        data[0]
    }

    fn command(kbc: &mut I8042, value: u8) {
        kbc.port_write(STATUS_COMMAND_PORT, &[value], 0);
    }

    fn data(kbc: &mut I8042, value: u8) {
        kbc.port_write(DATA_PORT, &[value], 0);
    }

    /// Reads every byte the output buffer offers.
    fn drain(kbc: &mut I8042) -> Vec<u8> {
        let mut bytes = Vec::new();
        while status(kbc) & STATUS_OBF != 0 {
            bytes.push(read_data(kbc));
        }
        bytes
    }

    fn irq_high(lines: &IrqLines, irq: u8) -> bool {
        lines.levels() & (1 << irq) != 0
    }

    #[test]
    fn i8042_self_test_command_replies_0x55() {
        let mut r = rig();

        command(&mut r.kbc, 0xAA);

        assert_eq!(status(&mut r.kbc) & STATUS_OBF, STATUS_OBF);
        assert_eq!(read_data(&mut r.kbc), 0x55);
        assert_eq!(status(&mut r.kbc) & STATUS_OBF, 0);
    }

    #[test]
    fn i8042_interface_tests_reply_zero() {
        let mut r = rig();

        command(&mut r.kbc, 0xAB);
        command(&mut r.kbc, 0xA9);

        assert_eq!(drain(&mut r.kbc), [0x00, 0x00]);
    }

    #[test]
    fn i8042_command_byte_written_via_0x60_reads_back_via_0x20() {
        let mut r = rig();
        command(&mut r.kbc, 0x60);
        data(&mut r.kbc, 0x65);

        command(&mut r.kbc, 0x20);

        assert_eq!(drain(&mut r.kbc), [0x65]);
    }

    #[test]
    fn i8042_status_a2_tracks_last_port_written() {
        let mut r = rig();

        command(&mut r.kbc, 0xAE);
        let after_command = status(&mut r.kbc) & STATUS_A2;
        data(&mut r.kbc, 0xF4);
        let after_data = status(&mut r.kbc) & STATUS_A2;

        assert_eq!((after_command, after_data), (STATUS_A2, 0));
    }

    #[test]
    fn i8042_status_sys_follows_command_byte_bit2() {
        let mut r = rig();
        command(&mut r.kbc, 0x60);
        data(&mut r.kbc, 0x00);
        let clear = status(&mut r.kbc) & STATUS_SYS;

        command(&mut r.kbc, 0x60);
        data(&mut r.kbc, 0x04);

        assert_eq!(clear, 0);
        assert_eq!(status(&mut r.kbc) & STATUS_SYS, STATUS_SYS);
    }

    #[test]
    fn i8042_status_reports_keyboard_not_inhibited_and_input_buffer_empty() {
        let mut r = rig();

        let s = status(&mut r.kbc);

        assert_eq!(s & (STATUS_UNLOCKED | 0x02), STATUS_UNLOCKED);
    }

    #[test]
    fn i8042_kbd_and_aux_disable_commands_set_command_byte_bits() {
        let mut r = rig();
        command(&mut r.kbc, 0x60);
        data(&mut r.kbc, 0x00);

        command(&mut r.kbc, 0xAD);
        command(&mut r.kbc, 0xA7);
        command(&mut r.kbc, 0x20);
        let disabled = drain(&mut r.kbc);
        command(&mut r.kbc, 0xAE);
        command(&mut r.kbc, 0xA8);
        command(&mut r.kbc, 0x20);
        let enabled = drain(&mut r.kbc);

        assert_eq!((disabled, enabled), (vec![0x30], vec![0x00]));
    }

    #[test]
    fn i8042_keyboard_reset_replies_ack_then_bat_ok() {
        let mut r = rig();

        data(&mut r.kbc, 0xFF);

        assert_eq!(drain(&mut r.kbc), [0xFA, 0xAA]);
    }

    #[test]
    fn i8042_keyboard_identify_replies_ack_ab_83() {
        let mut r = rig();

        data(&mut r.kbc, 0xF2);

        assert_eq!(drain(&mut r.kbc), [0xFA, 0xAB, 0x83]);
    }

    #[test]
    fn i8042_keyboard_echo_replies_ee() {
        let mut r = rig();

        data(&mut r.kbc, 0xEE);

        assert_eq!(drain(&mut r.kbc), [0xEE]);
    }

    #[test]
    fn i8042_keyboard_enable_disable_defaults_reply_ack() {
        let mut r = rig();

        let replies: Vec<Vec<u8>> = [0xF4, 0xF5, 0xF6]
            .into_iter()
            .map(|cmd| {
                data(&mut r.kbc, cmd);
                drain(&mut r.kbc)
            })
            .collect();

        assert_eq!(replies, [[0xFA], [0xFA], [0xFA]]);
    }

    #[test]
    fn i8042_keyboard_set_leds_acks_command_and_parameter() {
        let mut r = rig();

        data(&mut r.kbc, 0xED);
        let first = drain(&mut r.kbc);
        data(&mut r.kbc, 0x07);

        assert_eq!(first, [0xFA]);
        assert_eq!(drain(&mut r.kbc), [0xFA]);
    }

    #[test]
    fn i8042_keyboard_typematic_acks_command_and_parameter() {
        let mut r = rig();

        data(&mut r.kbc, 0xF3);
        data(&mut r.kbc, 0x20);

        assert_eq!(drain(&mut r.kbc), [0xFA, 0xFA]);
    }

    #[test]
    fn i8042_keyboard_scan_set_query_reports_set_2() {
        let mut r = rig();

        data(&mut r.kbc, 0xF0);
        data(&mut r.kbc, 0x00);

        assert_eq!(drain(&mut r.kbc), [0xFA, 0xFA, 0x02]);
    }

    #[test]
    fn i8042_keyboard_scan_set_select_then_query_reports_new_set() {
        let mut r = rig();

        data(&mut r.kbc, 0xF0);
        data(&mut r.kbc, 0x01);
        data(&mut r.kbc, 0xF0);
        data(&mut r.kbc, 0x00);

        assert_eq!(drain(&mut r.kbc), [0xFA, 0xFA, 0xFA, 0xFA, 0x01]);
    }

    #[test]
    fn i8042_keyboard_command_in_place_of_parameter_is_executed() {
        let mut r = rig();

        data(&mut r.kbc, 0xED);
        data(&mut r.kbc, 0xEE);

        assert_eq!(drain(&mut r.kbc), [0xFA, 0xEE]);
    }

    #[test]
    fn i8042_keyboard_unknown_command_replies_resend() {
        let mut r = rig();

        data(&mut r.kbc, 0xE8);

        assert_eq!(drain(&mut r.kbc), [0xFE]);
    }

    #[test]
    fn i8042_keyboard_resend_repeats_last_byte() {
        let mut r = rig();
        data(&mut r.kbc, 0xEE);
        drain(&mut r.kbc);

        data(&mut r.kbc, 0xFE);

        assert_eq!(drain(&mut r.kbc), [0xEE]);
    }

    #[test]
    fn i8042_read_output_port_reports_reset_high_and_a20() {
        let mut r = rig();

        command(&mut r.kbc, 0xD0);
        let a20_on = drain(&mut r.kbc);
        r.ctl.set_a20(false);
        command(&mut r.kbc, 0xD0);
        let a20_off = drain(&mut r.kbc);

        assert_eq!((a20_on, a20_off), (vec![0x03], vec![0x01]));
    }

    #[test]
    fn i8042_write_output_port_bit1_drives_a20_without_reset() {
        let mut r = rig();

        command(&mut r.kbc, 0xD1);
        data(&mut r.kbc, 0xDD);
        let off = r.ctl.a20();
        command(&mut r.kbc, 0xD1);
        data(&mut r.kbc, 0xDF);

        assert!(!off);
        assert!(r.ctl.a20());
        assert!(r.ctl.take_reset().is_none());
    }

    #[test]
    fn i8042_write_output_port_bit0_clear_requests_reset() {
        let mut r = rig();

        command(&mut r.kbc, 0xD1);
        data(&mut r.kbc, 0x02);

        assert!(r.ctl.take_reset().is_some());
    }

    #[test]
    fn i8042_a20_commands_dd_df_close_and_open_gate() {
        let mut r = rig();

        command(&mut r.kbc, 0xDD);
        let off = r.ctl.a20();
        command(&mut r.kbc, 0xDF);

        assert!(!off);
        assert!(r.ctl.a20());
    }

    #[test]
    fn i8042_pulse_command_fe_requests_reset() {
        let mut r = rig();

        command(&mut r.kbc, 0xFE);

        assert!(r.ctl.take_reset().is_some());
    }

    #[test]
    fn i8042_pulse_command_with_bit0_set_does_not_reset() {
        let mut r = rig();

        command(&mut r.kbc, 0xFF);
        command(&mut r.kbc, 0xFD);

        assert!(r.ctl.take_reset().is_none());
    }

    #[test]
    fn i8042_pulse_command_f0_requests_reset() {
        let mut r = rig();

        command(&mut r.kbc, 0xF0);

        assert!(r.ctl.take_reset().is_some());
    }

    #[test]
    fn i8042_write_keyboard_buffer_d2_returns_byte_on_irq1() {
        let mut r = rig();

        command(&mut r.kbc, 0xD2);
        data(&mut r.kbc, 0x9C);

        assert_eq!(
            status(&mut r.kbc) & (STATUS_OBF | STATUS_AUX_OBF),
            STATUS_OBF
        );
        assert!(irq_high(&r.lines, 1));
        assert_eq!(read_data(&mut r.kbc), 0x9C);
    }

    #[test]
    fn i8042_write_aux_buffer_d3_sets_aux_obf_and_irq12() {
        let mut r = rig();
        command(&mut r.kbc, 0x60);
        data(&mut r.kbc, CB_KBD_INT | CB_AUX_INT);

        command(&mut r.kbc, 0xD3);
        data(&mut r.kbc, 0x5A);

        assert_eq!(status(&mut r.kbc) & (STATUS_OBF | STATUS_AUX_OBF), 0x21);
        assert!(irq_high(&r.lines, 12));
        assert!(!irq_high(&r.lines, 1));
        assert_eq!(read_data(&mut r.kbc), 0x5A);
        assert!(!irq_high(&r.lines, 12));
    }

    #[test]
    fn i8042_write_to_absent_aux_device_reports_fe_with_timeout() {
        let mut r = rig();

        command(&mut r.kbc, 0xD4);
        data(&mut r.kbc, 0xFF);

        let s = status(&mut r.kbc);
        assert_eq!(s & 0x61, 0x61);
        assert_eq!(read_data(&mut r.kbc), 0xFE);
        assert_eq!(status(&mut r.kbc) & 0x61, 0);
    }

    #[test]
    fn i8042_key_bytes_with_irq_enabled_raise_irq1_until_read() {
        let mut r = rig();

        r.kbc.key_bytes(&[0x1C]);

        assert!(irq_high(&r.lines, 1));
        assert_eq!(read_data(&mut r.kbc), 0x1C);
        assert!(!irq_high(&r.lines, 1));
    }

    #[test]
    fn i8042_key_bytes_arrive_one_at_a_time_each_with_new_edge() {
        let mut r = rig();
        r.kbc.key_bytes(&[0xE0, 0x48]);
        r.lines.take_rising();

        let first = read_data(&mut r.kbc);

        assert_eq!(first, 0xE0);
        assert_eq!(r.lines.take_rising() & (1 << 1), 1 << 1);
        assert_eq!(read_data(&mut r.kbc), 0x48);
        assert_eq!(status(&mut r.kbc) & STATUS_OBF, 0);
    }

    #[test]
    fn i8042_keyboard_irq_disabled_in_command_byte_keeps_irq1_low() {
        let mut r = rig();
        command(&mut r.kbc, 0x60);
        data(&mut r.kbc, 0x00);

        r.kbc.key_bytes(&[0x1C]);

        assert_eq!(status(&mut r.kbc) & STATUS_OBF, STATUS_OBF);
        assert!(!irq_high(&r.lines, 1));
    }

    #[test]
    fn i8042_disabled_keyboard_interface_holds_bytes_until_enabled() {
        let mut r = rig();
        command(&mut r.kbc, 0xAD);

        r.kbc.key_bytes(&[0x1C]);
        let held = status(&mut r.kbc) & STATUS_OBF;
        command(&mut r.kbc, 0xAE);

        assert_eq!(held, 0);
        assert_eq!(drain(&mut r.kbc), [0x1C]);
    }

    #[test]
    fn i8042_keyboard_with_scanning_disabled_drops_keys() {
        let mut r = rig();
        data(&mut r.kbc, 0xF5);
        drain(&mut r.kbc);

        r.kbc.key_bytes(&[0x1C]);

        assert_eq!(status(&mut r.kbc) & STATUS_OBF, 0);
    }

    #[test]
    fn i8042_empty_output_buffer_rereads_last_byte() {
        let mut r = rig();
        r.kbc.key_bytes(&[0x1C]);
        read_data(&mut r.kbc);

        let again = read_data(&mut r.kbc);

        assert_eq!(again, 0x1C);
    }

    #[test]
    fn i8042_reset_restores_power_on_command_byte_and_empties_buffer() {
        let mut r = rig();
        command(&mut r.kbc, 0x60);
        data(&mut r.kbc, 0x00);
        r.kbc.key_bytes(&[0x1C]);

        r.kbc.reset();
        command(&mut r.kbc, 0x20);

        assert_eq!(drain(&mut r.kbc), [POWER_ON_COMMAND_BYTE]);
    }

    #[test]
    fn terminal_bytes_become_set1_make_and_break_codes() {
        assert_eq!(terminal_bytes_to_scancodes(b"a"), [0x1E, 0x9E]);
        assert_eq!(terminal_bytes_to_scancodes(b"A"), [0x2A, 0x1E, 0x9E, 0xAA]);
        assert_eq!(terminal_bytes_to_scancodes(b"\r"), [0x1C, 0x9C]);
        assert_eq!(
            terminal_bytes_to_scancodes(b"1!"),
            [0x02, 0x82, 0x2A, 0x02, 0x82, 0xAA]
        );
        assert_eq!(terminal_bytes_to_scancodes(b"/"), [0x35, 0xB5]);
        assert_eq!(terminal_bytes_to_scancodes(b"m"), [0x32, 0xB2]);
        assert_eq!(terminal_bytes_to_scancodes(b"\\"), [0x2B, 0xAB]);
        assert_eq!(
            terminal_bytes_to_scancodes(b"\x1b[B"),
            [0xE0, 0x50, 0xE0, 0xD0]
        );
        assert_eq!(
            terminal_bytes_to_scancodes(b"\x03"),
            [0x1D, 0x2E, 0xAE, 0x9D]
        );
        assert_eq!(terminal_bytes_to_scancodes(b" "), [0x39, 0xB9]);
    }
}
