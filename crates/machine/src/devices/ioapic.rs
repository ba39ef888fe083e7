//! The I/O APIC (Intel 82093AA datasheet, May 1996): 24 interrupt input pins,
//! each with a 64-bit redirection entry, turned into interrupt messages to the
//! local APICs.
//!
//! The machine holds it as a typed field, routes its MMIO window (0xFEC00000:
//! IOREGSEL at offset 0, IOWIN at 0x10) to it, feeds it the ISA IRQ lines, and
//! delivers the messages it returns. Pins carry logical levels (asserted or
//! not): the polarity bit of an entry is kept and read back, but a source here
//! never drives its pin inverted, so it changes nothing. Version 0x11 (the
//! 82093AA) has no EOI register: a level-triggered entry's remote IRR is
//! cleared by the local APIC's EOI broadcast of its vector.

/// The default MMIO base.
pub const DEFAULT_BASE: u64 = 0xFEC0_0000;
/// Input pins.
pub const PINS: usize = 24;

/// Redirection entry bits.
mod entry {
    /// Delivery status (read-only; always idle here: delivery is immediate).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Level-triggered.
    pub const LEVEL: u64 = 1 << 15;
    /// Masked.
    pub const MASKED: u64 = 1 << 16;
    /// Bits software may write: vector, delivery mode, destination mode,
    /// polarity, trigger mode, mask, destination.
    pub const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;
}

/// An interrupt message from a redirection entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// The destination (APIC ID, or logical mask).
    pub dest: u32,
    /// Logical destination mode.
    pub logical: bool,
    /// Delivery mode (the local APIC's encoding).
    pub mode: u8,
    /// The vector.
    pub vector: u8,
    /// Level-triggered (the local APIC sets the TMR bit; its EOI comes back).
    pub level: bool,
}

/// The I/O APIC.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IoApic {
    id: u8,
    select: u8,
    redir: [u64; PINS],
    /// Each pin's asserted level, as last seen.
    level: u32,
}

impl IoApic {
    /// An I/O APIC with APIC ID `id`, at power-on: every entry masked.
    pub fn new(id: u8) -> Self {
        Self {
            id,
            select: 0,
            redir: [entry::MASKED; PINS],
            level: 0,
        }
    }

    /// A system reset.
    pub fn reset(&mut self) {
        *self = Self::new(self.id);
    }

    /// A read of the MMIO window at `offset` (IOREGSEL at 0, IOWIN at 0x10;
    /// other offsets read 0).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let v: u32 = match offset & !3 {
            0x00 => u32::from(self.select),
            0x10 => self.read_reg(self.select),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = (offset & 3) as usize + i;
            *b = bytes.get(at).copied().unwrap_or(0);
        }
    }

    /// A write of the MMIO window. Returns the messages a change of an
    /// entry (an unmask of an asserted level-triggered pin) sends.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> Vec<Message> {
        let mut b = [0u8; 4];
        for (i, &x) in data.iter().enumerate().take(4) {
            b[i] = x;
        }
        let v = u32::from_le_bytes(b);
        match offset {
            0x00 => {
                self.select = v as u8;
                Vec::new()
            }
            0x10 => self.write_reg(self.select, v),
            _ => Vec::new(),
        }
    }

    fn read_reg(&self, index: u8) -> u32 {
        match index {
            0x00 => u32::from(self.id & 0xF) << 24,
            // Version 0x11, maximum redirection entry 23.
            0x01 => 0x11 | ((PINS as u32 - 1) << 16),
            0x02 => u32::from(self.id & 0xF) << 24,
            i if (0x10..0x10 + 2 * PINS as u8).contains(&i) => {
                let e = self.redir[usize::from((i - 0x10) / 2)];
                if i & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, index: u8, v: u32) -> Vec<Message> {
        match index {
            0x00 => self.id = ((v >> 24) & 0xF) as u8,
            i if (0x10..0x10 + 2 * PINS as u8).contains(&i) => {
                let pin = usize::from((i - 0x10) / 2);
                let old = self.redir[pin];
                let new = if i & 1 == 0 {
                    (old & !0xFFFF_FFFF) | u64::from(v)
                } else {
                    (old & 0xFFFF_FFFF) | (u64::from(v) << 32)
                };
                self.redir[pin] = (new & entry::WRITABLE) | (old & entry::REMOTE_IRR);
                if self.redir[pin] & entry::LEVEL == 0 {
                    // Remote IRR is meaningless for edge-triggered entries.
                    self.redir[pin] &= !entry::REMOTE_IRR;
                }
                return self.service_level(pin).into_iter().collect();
            }
            _ => {}
        }
        Vec::new()
    }

    /// The message of `pin`'s entry.
    fn message(&self, pin: usize) -> Message {
        let e = self.redir[pin];
        Message {
            dest: (e >> 56) as u32,
            logical: e & (1 << 11) != 0,
            mode: ((e >> 8) & 7) as u8,
            vector: e as u8,
            level: e & entry::LEVEL != 0,
        }
    }

    /// A level-triggered, unmasked pin that is asserted with remote IRR clear
    /// sends its message and sets remote IRR.
    fn service_level(&mut self, pin: usize) -> Option<Message> {
        let e = self.redir[pin];
        let asserted = self.level & (1 << pin) != 0;
        if e & entry::LEVEL == 0 || e & entry::MASKED != 0 || !asserted {
            return None;
        }
        if e & entry::REMOTE_IRR != 0 {
            return None;
        }
        self.redir[pin] |= entry::REMOTE_IRR;
        Some(self.message(pin))
    }

    /// The pins' levels now (`levels`, bit n = pin n) and the pins that saw a
    /// rising edge since the last call (`rising`): edge-triggered entries send
    /// on a rising edge, level-triggered ones while asserted. Returns the
    /// messages to deliver.
    pub fn update(&mut self, levels: u32, rising: u32) -> Vec<Message> {
        self.level = levels;
        let mut out = Vec::new();
        for pin in 0..PINS {
            let e = self.redir[pin];
            if e & entry::MASKED != 0 {
                continue;
            }
            if e & entry::LEVEL == 0 {
                if rising & (1 << pin) != 0 {
                    out.push(self.message(pin));
                }
            } else if let Some(m) = self.service_level(pin) {
                out.push(m);
            }
        }
        out
    }

    /// The local APICs' EOI broadcast for `vector`: level-triggered entries
    /// with that vector clear remote IRR, and send again if still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<Message> {
        let mut out = Vec::new();
        for pin in 0..PINS {
            let e = self.redir[pin];
            if e & entry::LEVEL != 0 && e as u8 == vector && e & entry::REMOTE_IRR != 0 {
                self.redir[pin] &= !entry::REMOTE_IRR;
                if let Some(m) = self.service_level(pin) {
                    out.push(m);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_entry(io: &mut IoApic, pin: u8, value: u64) -> Vec<Message> {
        io.mmio_write(0, &[0x10 + 2 * pin]);
        let mut out = io.mmio_write(0x10, &(value as u32).to_le_bytes());
        io.mmio_write(0, &[0x11 + 2 * pin]);
        out.extend(io.mmio_write(0x10, &((value >> 32) as u32).to_le_bytes()));
        out
    }

    fn read_reg(io: &IoApic, index: u8) -> u32 {
        let mut io = io.clone();
        io.mmio_write(0, &[index]);
        let mut b = [0u8; 4];
        io.mmio_read(0x10, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identification_and_power_on_masks() {
        let io = IoApic::new(2);
        assert_eq!(read_reg(&io, 0), 2 << 24);
        assert_eq!(read_reg(&io, 1), 0x0017_0011, "version 0x11, 24 entries");
        for pin in 0..24 {
            assert_eq!(read_reg(&io, 0x10 + 2 * pin), 1 << 16, "pin {pin} masked");
        }
    }

    #[test]
    fn edge_entries_send_on_rising_edges_only_when_unmasked() {
        let mut io = IoApic::new(0);
        assert!(io.update(1 << 2, 1 << 2).is_empty(), "masked");
        write_entry(&mut io, 2, 0x0300_0000_0000_0030);
        let m = io.update(1 << 2, 1 << 2);
        assert_eq!(
            m,
            vec![Message {
                dest: 3,
                logical: false,
                mode: 0,
                vector: 0x30,
                level: false
            }]
        );
        assert!(io.update(1 << 2, 0).is_empty(), "no new edge");
    }

    #[test]
    fn level_entries_hold_remote_irr_until_eoi_and_resend_while_asserted() {
        let mut io = IoApic::new(0);
        write_entry(&mut io, 9, entry::LEVEL | 0x49);
        assert_eq!(io.update(1 << 9, 1 << 9).len(), 1);
        assert_ne!(read_reg(&io, 0x10 + 18) & (1 << 14), 0, "remote IRR");
        assert!(io.update(1 << 9, 0).is_empty(), "held by remote IRR");
        assert!(io.eoi(0x48).is_empty(), "another vector");
        assert_eq!(io.eoi(0x49).len(), 1, "still asserted: sent again");
        io.update(0, 0);
        assert!(io.eoi(0x49).is_empty(), "deasserted: nothing more");
        assert_eq!(read_reg(&io, 0x10 + 18) & (1 << 14), 0);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_sends_and_read_only_bits_hold() {
        let mut io = IoApic::new(0);
        io.update(1 << 11, 0);
        let m = write_entry(&mut io, 11, entry::LEVEL | entry::MASKED | 0x5B);
        assert!(m.is_empty());
        let m = write_entry(&mut io, 11, entry::LEVEL | 0x5B | (1 << 14) | (1 << 12));
        assert_eq!(m.len(), 1, "unmasked while asserted");
        // Remote IRR came from the delivery, not from the write; delivery
        // status stays idle.
        assert_eq!(read_reg(&io, 0x10 + 22) & (1 << 12), 0);
    }
}
