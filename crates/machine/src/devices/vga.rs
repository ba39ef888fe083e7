//! The standard VGA (the IBM PS/2 Video Graphics Array, as an ISA card), as the
//! IBM VGA technical reference and the FreeVGA register descriptions give it,
//! modelled far enough for text mode: SeaBIOS's VGA BIOS (`vgabios-isavga`)
//! initialises it, sets mode 3 and loads its font; boot loaders, Linux's
//! vgacon and text UIs then write the screen, and [`Vga::text_screen`] reads it
//! back the way the CRT controller would scan it out.
//!
//! Two regions, mapped by the platform:
//! - region 0: I/O ports 0x3B0-0x3DF (offset = port - 0x3B0): Miscellaneous
//!   Output, Input Status 0/1, Feature Control, the Sequencer, CRT
//!   Controller, Graphics Controller, Attribute Controller and the DAC. Each
//!   byte of a wider access goes to the next port up, as the ISA bus splits it,
//!   so a 16-bit OUT to an index port writes the index and then the data.
//! - region 1: memory 0xA0000-0xBFFFF (offset = address - 0xA0000): 256 KiB of
//!   VRAM as four 64 KiB planes, behind the Graphics Controller's memory map
//!   window, odd/even and chain-4 addressing, write modes 0-3 (set/reset,
//!   rotate, logical function, bit mask, map mask) and read modes 0-1 (with
//!   the latches, read map select and colour compare).
//!
//! Invariants:
//! - Power-on (and [`Device::reset`]) leaves every register 0 and VRAM clear,
//!   as before the VGA BIOS runs: the CRTC decodes at 0x3B4 (Misc Output bit
//!   0 clear), CPU access to VRAM is off (Misc Output bit 1 clear) and the map
//!   mask writes no plane.
//! - Ports of the inactive CRTC range (0x3Bx while colour is selected, 0x3Dx
//!   while mono is) read 0xFF and ignore writes, as on the card; so do the
//!   ports the VGA does not decode and indexes past each register file.
//! - Input Status 1 is derived from a read counter, not wall time: display
//!   enable (bit 0) and vertical retrace (bit 3) flip together on every read,
//!   so any wait-for-retrace loop ends within two reads and a run replays
//!   identically. Retrace never shows without display enable, as on the card.
//! - Odd/even addressing keeps CPU address bit 0 as the plane select and
//!   stores at the even plane address, which is what the CRTC in word mode
//!   fetches; the Misc Output odd/even page bit is not modelled (every
//!   standard mode sets it and expects the low addresses). Chain-4 stores at
//!   the CPU address with bits 1:0 cleared, so mode 13h uses a quarter of each
//!   plane, as the card does.
//! - Plane 2 holds the font the BIOS loads; text scan-out uses planes 0
//!   (characters) and 1 (attributes), so a font load never disturbs the text.
//! - [`Vga::generation`] moves only when a write changes stored state that the
//!   display depends on (VRAM, CRTC, attribute, sequencer, misc, DAC), so a
//!   display polling it redraws only when needed.
//! - No guest input can panic the device: every register file and plane is
//!   indexed through checked lookups.
//!
//! Not modelled: pixel output (graphics modes are stored, not drawn), the
//! light pen, the odd/even page bit, count-by-2/4 and line compare (split
//! screen) in [`Vga::text_screen`], blinking, screen-off and palette-address
//! blanking (the text is reported whatever the monitor would show), the
//! vertical retrace interrupt, and Input Status 0's switch sense (reads 0).

use crate::device::{DevCtx, Device};

/// One plane: 64 KiB.
const PLANE_SIZE: usize = 0x1_0000;
/// Plane addresses wrap at 64 KiB.
const PLANE_MASK: u32 = 0xFFFF;

/// The first port of region 0 and the number of ports it spans.
const PORT_BASE: u64 = 0x3B0;
const PORT_COUNT: u64 = 0x30;

// Ports, by their absolute number.
/// CRTC index and data, mono decode.
const CRTC_INDEX_MONO: u16 = 0x3B4;
const CRTC_DATA_MONO: u16 = 0x3B5;
/// Input Status 1 (read) / Feature Control (write), mono decode.
const STATUS1_MONO: u16 = 0x3BA;
/// Attribute Controller index/data flip-flop (write), index (read).
const ATTR_INDEX: u16 = 0x3C0;
/// Attribute Controller data (read).
const ATTR_DATA_READ: u16 = 0x3C1;
/// Miscellaneous Output (write) / Input Status 0 (read).
const MISC_WRITE_STATUS0: u16 = 0x3C2;
/// Sequencer index and data.
const SEQ_INDEX: u16 = 0x3C4;
const SEQ_DATA: u16 = 0x3C5;
/// DAC pixel mask.
const DAC_MASK: u16 = 0x3C6;
/// DAC read index (write) / DAC state (read).
const DAC_READ_INDEX: u16 = 0x3C7;
/// DAC write index.
const DAC_WRITE_INDEX: u16 = 0x3C8;
/// DAC data: three accesses (red, green, blue) per entry.
const DAC_DATA: u16 = 0x3C9;
/// Feature Control (read).
const FEATURE_READ: u16 = 0x3CA;
/// Miscellaneous Output (read).
const MISC_READ: u16 = 0x3CC;
/// Graphics Controller index and data.
const GC_INDEX: u16 = 0x3CE;
const GC_DATA: u16 = 0x3CF;
/// CRTC index and data, colour decode.
const CRTC_INDEX_COLOUR: u16 = 0x3D4;
const CRTC_DATA_COLOUR: u16 = 0x3D5;
/// Input Status 1 (read) / Feature Control (write), colour decode.
const STATUS1_COLOUR: u16 = 0x3DA;

/// Misc Output bit 0: CRTC and Input Status 1 at 0x3Dx (else 0x3Bx).
const MISC_COLOUR: u8 = 0x01;
/// Misc Output bit 1: CPU access to VRAM enabled.
const MISC_RAM_ENABLE: u8 = 0x02;

/// Input Status 1 bit 0: display disabled (horizontal or vertical blanking).
const STATUS1_DISPLAY_DISABLED: u8 = 0x01;
/// Input Status 1 bit 3: vertical retrace.
const STATUS1_VRETRACE: u8 = 0x08;

/// Sequencer registers: reset, clocking mode, map mask, character map
/// select, memory mode.
const SEQ_COUNT: usize = 5;
const SEQ_MAP_MASK: usize = 2;
const SEQ_MEMORY_MODE: usize = 4;
/// Memory mode bit 2: odd/even host write addressing disabled.
const SEQ_MM_ODD_EVEN_DISABLE: u8 = 0x04;
/// Memory mode bit 3: chain-4 (address bits 1:0 select the plane).
const SEQ_MM_CHAIN4: u8 = 0x08;

/// CRT Controller registers 00h-18h.
const CRTC_COUNT: usize = 25;
const CRTC_H_DISPLAY_END: usize = 0x01;
const CRTC_OVERFLOW: usize = 0x07;
const CRTC_MAX_SCAN_LINE: usize = 0x09;
const CRTC_CURSOR_START: usize = 0x0A;
const CRTC_CURSOR_END: usize = 0x0B;
const CRTC_START_HIGH: usize = 0x0C;
const CRTC_START_LOW: usize = 0x0D;
const CRTC_CURSOR_HIGH: usize = 0x0E;
const CRTC_CURSOR_LOW: usize = 0x0F;
const CRTC_V_RETRACE_END: usize = 0x11;
const CRTC_V_DISPLAY_END: usize = 0x12;
const CRTC_OFFSET: usize = 0x13;
const CRTC_UNDERLINE: usize = 0x14;
const CRTC_MODE: usize = 0x17;
/// Vertical Retrace End bit 7: registers 00h-07h are write-protected...
const CRTC_PROTECT: u8 = 0x80;
/// ...except Overflow bit 4, line compare bit 8, which stays writable.
const CRTC_OVERFLOW_LINE_COMPARE: u8 = 0x10;
/// Maximum Scan Line bit 7: every scan line shown twice.
const CRTC_MSL_DOUBLE_SCAN: u8 = 0x80;
/// Cursor Start bit 5: cursor off.
const CRTC_CURSOR_DISABLE: u8 = 0x20;
/// Underline Location bit 6: doubleword addressing.
const CRTC_UL_DWORD: u8 = 0x40;
/// Mode Control bit 5: in word mode, MA15 (else MA13) appears on address bit 0.
const CRTC_MODE_ADDRESS_WRAP: u8 = 0x20;
/// Mode Control bit 6: byte mode (else word mode).
const CRTC_MODE_BYTE: u8 = 0x40;

/// Graphics Controller registers 00h-08h.
const GC_COUNT: usize = 9;
const GC_SET_RESET: usize = 0;
const GC_ENABLE_SET_RESET: usize = 1;
const GC_COLOUR_COMPARE: usize = 2;
const GC_DATA_ROTATE: usize = 3;
const GC_READ_MAP: usize = 4;
const GC_MODE: usize = 5;
const GC_MISC: usize = 6;
const GC_COLOUR_DONT_CARE: usize = 7;
const GC_BIT_MASK: usize = 8;
/// Graphics Mode bit 3: read mode 1 (colour compare).
const GC_MODE_READ_COMPARE: u8 = 0x08;
/// Graphics Mode bit 4: odd/even host read addressing.
const GC_MODE_HOST_ODD_EVEN: u8 = 0x10;

/// Attribute Controller registers 00h-14h: 16 palette entries, mode
/// control, overscan, colour plane enable, pel panning, colour select.
const ATTR_COUNT: usize = 21;
const ATTR_PALETTE_LAST: usize = 0x0F;
const ATTR_MODE: usize = 0x10;
/// Mode Control bit 0: graphics (else text).
const ATTR_MODE_GRAPHICS: u8 = 0x01;
/// Index register: bits 4:0 index, bit 5 palette address source.
const ATTR_INDEX_BITS: u8 = 0x1F;
const ATTR_INDEX_WRITABLE: u8 = 0x3F;
/// Palette entries and DAC components are six bits.
const SIX_BITS: u8 = 0x3F;

/// DAC State (0x3C7 read): the last index write was to the read index.
const DAC_STATE_READING: u8 = 0x03;

/// The largest text screen [`Vga::text_screen`] accepts.
const MAX_COLS: usize = 132;
const MAX_ROWS: usize = 60;

/// The text on a VGA screen, as the CRT controller would scan it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextScreen {
    /// Characters per row (0 when not in a usable text mode).
    pub cols: usize,
    /// Rows (0 when not in a usable text mode).
    pub rows: usize,
    /// Character codes (CP437), row by row, `cols * rows` of them.
    pub chars: Vec<u8>,
    /// Attribute bytes, one per character.
    pub attrs: Vec<u8>,
    /// The cursor as `(row, col)`, when it is enabled and on the screen.
    pub cursor: Option<(usize, usize)>,
}

impl TextScreen {
    /// Each row as text: CP437 mapped to Unicode, trailing spaces trimmed.
    pub fn lines(&self) -> Vec<String> {
        (0..self.rows)
            .map(|row| {
                let start = row.saturating_mul(self.cols);
                let end = start.saturating_add(self.cols);
                let bytes = self.chars.get(start..end).unwrap_or(&[]);
                let line: String = bytes.iter().map(|&b| cp437(b)).collect();
                line.trim_end_matches(' ').to_string()
            })
            .collect()
    }

    /// The rows joined by `'\n'`.
    pub fn to_text(&self) -> String {
        self.lines().join("\n")
    }
}

/// CP437 glyphs 0x01-0x1F (index 0 is the NUL cell, shown blank).
const CP437_LOW: [char; 32] = [
    ' ', '☺', '☻', '♥', '♦', '♣', '♠', '•', '◘', '○', '◙', '♂', '♀', '♪', '♫', '☼', //
    '►', '◄', '↕', '‼', '¶', '§', '▬', '↨', '↑', '↓', '→', '←', '∟', '↔', '▲', '▼',
];

/// CP437 glyphs 0x80-0xFF (0xFF, a non-breaking space, shown as a space).
const CP437_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', ' ',
];

/// One CP437 byte as the character the VGA's ROM font draws for it.
fn cp437(b: u8) -> char {
    match b {
        0x20..=0x7E => char::from(b),
        0x7F => '⌂',
        0x00..=0x1F => CP437_LOW.get(usize::from(b)).copied().unwrap_or('?'),
        0x80..=0xFF => CP437_HIGH
            .get(usize::from(b - 0x80))
            .copied()
            .unwrap_or('?'),
    }
}

/// Eight copies of bit `bit` of `value`: how set/reset and write mode 2
/// expand one bit per plane to a whole byte.
fn spread(value: u8, bit: usize) -> u8 {
    if (value >> bit) & 1 != 0 {
        0xFF
    } else {
        0x00
    }
}

/// The standard VGA.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Vga {
    /// Miscellaneous Output.
    misc: u8,
    /// Feature Control (stored, drives nothing).
    feature: u8,
    seq_index: u8,
    seq: [u8; SEQ_COUNT],
    crtc_index: u8,
    crtc: [u8; CRTC_COUNT],
    gc_index: u8,
    gc: [u8; GC_COUNT],
    /// Attribute index register: bits 4:0 index, bit 5 palette address source.
    attr_index: u8,
    attr: [u8; ATTR_COUNT],
    /// The attribute flip-flop: the next 0x3C0 write is data (else index).
    attr_data_next: bool,
    dac_mask: u8,
    dac_read_index: u8,
    dac_read_component: usize,
    dac_write_index: u8,
    dac_write_component: usize,
    /// The red and green of an entry being written; the DAC takes all three
    /// components at once, on the blue write.
    dac_pending: [u8; 3],
    dac_state: u8,
    /// 256 entries of (red, green, blue), six bits each.
    dac: Vec<[u8; 3]>,
    /// The four planes, one after another.
    #[serde(with = "crate::snapshot::bytes")]
    vram: Vec<u8>,
    /// The latches: one byte per plane, loaded by every CPU read.
    latch: [u8; 4],
    /// Input Status 1 reads so far, the source of the retrace bits.
    status_reads: u64,
    generation: u64,
}

impl Vga {
    /// A VGA in its power-on state.
    pub fn new() -> Self {
        Self {
            misc: 0,
            feature: 0,
            seq_index: 0,
            seq: [0; SEQ_COUNT],
            crtc_index: 0,
            crtc: [0; CRTC_COUNT],
            gc_index: 0,
            gc: [0; GC_COUNT],
            attr_index: 0,
            attr: [0; ATTR_COUNT],
            attr_data_next: false,
            dac_mask: 0,
            dac_read_index: 0,
            dac_read_component: 0,
            dac_write_index: 0,
            dac_write_component: 0,
            dac_pending: [0; 3],
            dac_state: 0,
            dac: vec![[0; 3]; 256],
            vram: vec![0; 4 * PLANE_SIZE],
            latch: [0; 4],
            status_reads: 0,
            generation: 0,
        }
    }

    /// A counter that moves whenever a write changes something the screen
    /// shows (VRAM, CRTC, attribute, sequencer, misc or DAC state).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Plane `index` (0-3), 64 KiB: 0 holds text characters, 1 attributes,
    /// 2 the font (32 bytes per glyph, per character map block).
    pub fn plane(&self, index: usize) -> Option<&[u8]> {
        let start = index.checked_mul(PLANE_SIZE)?;
        self.vram.get(start..start.checked_add(PLANE_SIZE)?)
    }

    /// The text screen, derived from the registers as the CRTC scans it out:
    /// a 0x0 screen when the attribute controller is in graphics mode or the
    /// timing registers give no sensible text geometry.
    pub fn text_screen(&self) -> TextScreen {
        if self.attr_reg(ATTR_MODE) & ATTR_MODE_GRAPHICS != 0 {
            return TextScreen::default();
        }
        let cols = usize::from(self.crtc_reg(CRTC_H_DISPLAY_END)) + 1;
        let overflow = self.crtc_reg(CRTC_OVERFLOW);
        // Vertical Display End: bits 7:0 here, bit 8 in Overflow bit 1, bit 9
        // in Overflow bit 6.
        let vde = usize::from(self.crtc_reg(CRTC_V_DISPLAY_END))
            | usize::from((overflow >> 1) & 1) << 8
            | usize::from((overflow >> 6) & 1) << 9;
        let msl = self.crtc_reg(CRTC_MAX_SCAN_LINE);
        let mut char_height = usize::from(msl & 0x1F) + 1;
        if msl & CRTC_MSL_DOUBLE_SCAN != 0 {
            char_height *= 2;
        }
        let rows = (vde + 1) / char_height;
        if cols > MAX_COLS || rows == 0 || rows > MAX_ROWS {
            return TextScreen::default();
        }

        // The CRTC address counter advances one per character and by twice
        // the Offset register per character row; the memory address it
        // fetches depends on byte, word or doubleword mode.
        let start = u32::from(self.crtc_reg(CRTC_START_HIGH)) << 8
            | u32::from(self.crtc_reg(CRTC_START_LOW));
        let stride = 2 * u32::from(self.crtc_reg(CRTC_OFFSET));
        let mut chars = Vec::with_capacity(cols * rows);
        let mut attrs = Vec::with_capacity(cols * rows);
        for row in 0..rows as u32 {
            for col in 0..cols as u32 {
                let addr = self.crtc_memory_address(start + row * stride + col);
                chars.push(self.plane_byte(0, addr));
                attrs.push(self.plane_byte(1, addr));
            }
        }
        TextScreen {
            cols,
            rows,
            chars,
            attrs,
            cursor: self.cursor(start, stride, cols, rows),
        }
    }

    /// Where the cursor shows, if it is enabled and within the screen.
    fn cursor(&self, start: u32, stride: u32, cols: usize, rows: usize) -> Option<(usize, usize)> {
        let cursor_start = self.crtc_reg(CRTC_CURSOR_START);
        let cursor_end = self.crtc_reg(CRTC_CURSOR_END) & 0x1F;
        // A start line past the end line draws no cursor on the VGA.
        if cursor_start & CRTC_CURSOR_DISABLE != 0 || cursor_start & 0x1F > cursor_end {
            return None;
        }
        let location = u32::from(self.crtc_reg(CRTC_CURSOR_HIGH)) << 8
            | u32::from(self.crtc_reg(CRTC_CURSOR_LOW));
        // The cursor shows where the address counter equals the location.
        let delta = location.wrapping_sub(start) & PLANE_MASK;
        // With an Offset of 0 every row repeats the first one's addresses.
        let (row, col) = match (delta.checked_div(stride), delta.checked_rem(stride)) {
            (Some(row), Some(col)) => (row, col),
            _ => (0, delta),
        };
        let (row, col) = (row as usize, col as usize);
        (row < rows && col < cols).then_some((row, col))
    }

    /// The plane address the CRTC fetches for address counter `counter`
    /// (IBM's table for the Mode Control register): byte mode uses it as
    /// is; word mode shifts it left one, with MA13 or MA15 in bit 0;
    /// doubleword mode shifts it left two, with MA12-MA13 in bits 1:0.
    fn crtc_memory_address(&self, counter: u32) -> u32 {
        let ma = counter & PLANE_MASK;
        let mode = self.crtc_reg(CRTC_MODE);
        let addr = if self.crtc_reg(CRTC_UNDERLINE) & CRTC_UL_DWORD != 0 {
            (ma << 2) | ((ma >> 12) & 3)
        } else if mode & CRTC_MODE_BYTE == 0 {
            let wrap_bit = if mode & CRTC_MODE_ADDRESS_WRAP != 0 {
                15
            } else {
                13
            };
            (ma << 1) | ((ma >> wrap_bit) & 1)
        } else {
            ma
        };
        addr & PLANE_MASK
    }

    fn plane_byte(&self, plane: usize, addr: u32) -> u8 {
        self.vram
            .get(plane * PLANE_SIZE + (addr & PLANE_MASK) as usize)
            .copied()
            .unwrap_or(0xFF)
    }

    fn seq_reg(&self, index: usize) -> u8 {
        self.seq.get(index).copied().unwrap_or(0)
    }

    fn crtc_reg(&self, index: usize) -> u8 {
        self.crtc.get(index).copied().unwrap_or(0)
    }

    fn gc_reg(&self, index: usize) -> u8 {
        self.gc.get(index).copied().unwrap_or(0)
    }

    fn attr_reg(&self, index: usize) -> u8 {
        self.attr.get(index).copied().unwrap_or(0)
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Stores `value` in `slot`, moving the generation if it changed.
    fn store(slot: &mut u8, value: u8, generation: &mut u64) {
        if *slot != value {
            *slot = value;
            *generation = generation.wrapping_add(1);
        }
    }

    /// Whether `port` is decoded: the 0x3Bx and 0x3Dx CRTC/status ports
    /// only while Misc Output selects mono or colour respectively.
    fn decoded(&self, port: u16) -> bool {
        let colour = self.misc & MISC_COLOUR != 0;
        match port {
            0x3B0..=0x3BF => !colour,
            0x3D0..=0x3DF => colour,
            _ => true,
        }
    }

    fn port_read(&mut self, offset: u64) -> u8 {
        if offset >= PORT_COUNT {
            return 0xFF;
        }
        let port = (PORT_BASE + offset) as u16;
        if !self.decoded(port) {
            return 0xFF;
        }
        match port {
            CRTC_INDEX_MONO | CRTC_INDEX_COLOUR => self.crtc_index,
            CRTC_DATA_MONO | CRTC_DATA_COLOUR => self
                .crtc
                .get(usize::from(self.crtc_index))
                .copied()
                .unwrap_or(0xFF),
            STATUS1_MONO | STATUS1_COLOUR => {
                // Reading Input Status 1 also puts the attribute flip-flop
                // back to expecting an index.
                self.attr_data_next = false;
                let odd = self.status_reads & 1 != 0;
                self.status_reads = self.status_reads.wrapping_add(1);
                if odd {
                    STATUS1_DISPLAY_DISABLED | STATUS1_VRETRACE
                } else {
                    0
                }
            }
            ATTR_INDEX => self.attr_index,
            ATTR_DATA_READ => self
                .attr
                .get(usize::from(self.attr_index & ATTR_INDEX_BITS))
                .copied()
                .unwrap_or(0xFF),
            // Input Status 0: no retrace interrupt pending, switch sense 0.
            MISC_WRITE_STATUS0 => 0,
            SEQ_INDEX => self.seq_index,
            SEQ_DATA => self
                .seq
                .get(usize::from(self.seq_index))
                .copied()
                .unwrap_or(0xFF),
            DAC_MASK => self.dac_mask,
            DAC_READ_INDEX => self.dac_state,
            DAC_WRITE_INDEX => self.dac_write_index,
            DAC_DATA => self.dac_read(),
            FEATURE_READ => self.feature,
            MISC_READ => self.misc,
            GC_INDEX => self.gc_index,
            GC_DATA => self
                .gc
                .get(usize::from(self.gc_index))
                .copied()
                .unwrap_or(0xFF),
            _ => 0xFF,
        }
    }

    fn port_write(&mut self, offset: u64, value: u8) {
        if offset >= PORT_COUNT {
            return;
        }
        let port = (PORT_BASE + offset) as u16;
        if !self.decoded(port) {
            return;
        }
        match port {
            CRTC_INDEX_MONO | CRTC_INDEX_COLOUR => self.crtc_index = value,
            CRTC_DATA_MONO | CRTC_DATA_COLOUR => self.crtc_write(value),
            STATUS1_MONO | STATUS1_COLOUR => self.feature = value,
            ATTR_INDEX => self.attr_write(value),
            MISC_WRITE_STATUS0 => Self::store(&mut self.misc, value, &mut self.generation),
            SEQ_INDEX => self.seq_index = value,
            SEQ_DATA => {
                if let Some(slot) = self.seq.get_mut(usize::from(self.seq_index)) {
                    Self::store(slot, value, &mut self.generation);
                }
            }
            DAC_MASK => Self::store(&mut self.dac_mask, value, &mut self.generation),
            DAC_READ_INDEX => {
                self.dac_read_index = value;
                self.dac_read_component = 0;
                self.dac_state = DAC_STATE_READING;
            }
            DAC_WRITE_INDEX => {
                self.dac_write_index = value;
                self.dac_write_component = 0;
                self.dac_state = 0;
            }
            DAC_DATA => self.dac_write(value),
            GC_INDEX => self.gc_index = value,
            GC_DATA => {
                if let Some(slot) = self.gc.get_mut(usize::from(self.gc_index)) {
                    *slot = value;
                }
            }
            _ => {}
        }
    }

    fn crtc_write(&mut self, value: u8) {
        let index = usize::from(self.crtc_index);
        let protected = self.crtc_reg(CRTC_V_RETRACE_END) & CRTC_PROTECT != 0;
        let value = match (protected, index) {
            (true, CRTC_OVERFLOW) => {
                (self.crtc_reg(CRTC_OVERFLOW) & !CRTC_OVERFLOW_LINE_COMPARE)
                    | (value & CRTC_OVERFLOW_LINE_COMPARE)
            }
            (true, 0..=7) => return,
            _ => value,
        };
        if let Some(slot) = self.crtc.get_mut(index) {
            Self::store(slot, value, &mut self.generation);
        }
    }

    /// 0x3C0: alternately the index (with the palette address source bit)
    /// and the data for that index.
    fn attr_write(&mut self, value: u8) {
        if self.attr_data_next {
            let index = usize::from(self.attr_index & ATTR_INDEX_BITS);
            let value = if index <= ATTR_PALETTE_LAST {
                value & SIX_BITS
            } else {
                value
            };
            if let Some(slot) = self.attr.get_mut(index) {
                Self::store(slot, value, &mut self.generation);
            }
        } else {
            Self::store(
                &mut self.attr_index,
                value & ATTR_INDEX_WRITABLE,
                &mut self.generation,
            );
        }
        self.attr_data_next = !self.attr_data_next;
    }

    fn dac_read(&mut self) -> u8 {
        let entry = self
            .dac
            .get(usize::from(self.dac_read_index))
            .copied()
            .unwrap_or([0; 3]);
        let value = entry.get(self.dac_read_component).copied().unwrap_or(0);
        self.dac_read_component += 1;
        if self.dac_read_component >= 3 {
            self.dac_read_component = 0;
            self.dac_read_index = self.dac_read_index.wrapping_add(1);
        }
        value
    }

    fn dac_write(&mut self, value: u8) {
        if let Some(slot) = self.dac_pending.get_mut(self.dac_write_component) {
            *slot = value & SIX_BITS;
        }
        self.dac_write_component += 1;
        if self.dac_write_component >= 3 {
            self.dac_write_component = 0;
            let pending = self.dac_pending;
            if let Some(entry) = self.dac.get_mut(usize::from(self.dac_write_index)) {
                if *entry != pending {
                    *entry = pending;
                    self.generation = self.generation.wrapping_add(1);
                }
            }
            self.dac_write_index = self.dac_write_index.wrapping_add(1);
        }
    }

    /// The offset of region-1 `offset` within the Graphics Controller's
    /// memory map window, if it falls inside it and CPU access is on.
    fn window_offset(&self, offset: u64) -> Option<u32> {
        if self.misc & MISC_RAM_ENABLE == 0 {
            return None;
        }
        let (base, size) = match (self.gc_reg(GC_MISC) >> 2) & 3 {
            0 => (0x0_0000, 0x2_0000), // A0000-BFFFF
            1 => (0x0_0000, 0x1_0000), // A0000-AFFFF
            2 => (0x1_0000, 0x0_8000), // B0000-B7FFF
            _ => (0x1_8000, 0x0_8000), // B8000-BFFFF
        };
        let off = offset.checked_sub(base)?;
        (off < size).then_some(off as u32)
    }

    fn mem_read(&mut self, offset: u64) -> u8 {
        let Some(off) = self.window_offset(offset) else {
            return 0xFF;
        };
        let mode = self.gc_reg(GC_MODE);
        let read_map = self.gc_reg(GC_READ_MAP);
        let (addr, plane) = if self.seq_reg(SEQ_MEMORY_MODE) & SEQ_MM_CHAIN4 != 0 {
            (off & !3, off & 3)
        } else if mode & GC_MODE_HOST_ODD_EVEN != 0 {
            // Odd/even: A0 picks the odd or even plane of the pair the read
            // map selects.
            (off & !1, u32::from(read_map & 2) | (off & 1))
        } else {
            (off, u32::from(read_map & 3))
        };
        let latch = std::array::from_fn(|p| self.plane_byte(p, addr));
        self.latch = latch;
        if mode & GC_MODE_READ_COMPARE == 0 {
            return self.latch.get(plane as usize).copied().unwrap_or(0xFF);
        }
        // Read mode 1: a bit is set where every plane that is not "don't
        // care" matches its colour compare bit.
        let compare = self.gc_reg(GC_COLOUR_COMPARE);
        let care = self.gc_reg(GC_COLOUR_DONT_CARE);
        let mut result = 0xFF;
        for (p, &latch) in self.latch.iter().enumerate() {
            if (care >> p) & 1 != 0 {
                result &= !(latch ^ spread(compare, p));
            }
        }
        result
    }

    fn mem_write(&mut self, offset: u64, value: u8) {
        let Some(off) = self.window_offset(offset) else {
            return;
        };
        let mem_mode = self.seq_reg(SEQ_MEMORY_MODE);
        let map_mask = self.seq_reg(SEQ_MAP_MASK) & 0x0F;
        let (addr, planes) = if mem_mode & SEQ_MM_CHAIN4 != 0 {
            (off & !3, map_mask & (1 << (off & 3)))
        } else if mem_mode & SEQ_MM_ODD_EVEN_DISABLE == 0 {
            // Odd/even: even addresses reach planes 0 and 2, odd 1 and 3.
            let pair = if off & 1 == 0 { 0b0101 } else { 0b1010 };
            (off & !1, map_mask & pair)
        } else {
            (off, map_mask)
        };
        let addr = (addr & PLANE_MASK) as usize;

        let rotate = u32::from(self.gc_reg(GC_DATA_ROTATE) & 7);
        let function = (self.gc_reg(GC_DATA_ROTATE) >> 3) & 3;
        let set_reset = self.gc_reg(GC_SET_RESET);
        let enable_sr = self.gc_reg(GC_ENABLE_SET_RESET);
        let bit_mask = self.gc_reg(GC_BIT_MASK);
        let rotated = value.rotate_right(rotate);
        let write_mode = self.gc_reg(GC_MODE) & 3;

        let latches = self.latch;
        for (p, &latch) in latches.iter().enumerate() {
            if (planes >> p) & 1 == 0 {
                continue;
            }
            let byte = match write_mode {
                0 => {
                    let data = if (enable_sr >> p) & 1 != 0 {
                        spread(set_reset, p)
                    } else {
                        rotated
                    };
                    Self::alu(data, latch, function, bit_mask)
                }
                1 => latch,
                2 => Self::alu(spread(value, p), latch, function, bit_mask),
                _ => Self::alu(spread(set_reset, p), latch, function, rotated & bit_mask),
            };
            if let Some(slot) = self.vram.get_mut(p * PLANE_SIZE + addr) {
                if *slot != byte {
                    *slot = byte;
                    self.generation = self.generation.wrapping_add(1);
                }
            }
        }
    }

    /// The logical function (replace, AND, OR, XOR) of `data` with the
    /// latch, then the bit mask choosing between the result and the latch.
    fn alu(data: u8, latch: u8, function: u8, mask: u8) -> u8 {
        let result = match function {
            0 => data,
            1 => data & latch,
            2 => data | latch,
            _ => data ^ latch,
        };
        (result & mask) | (latch & !mask)
    }
}

impl Default for Vga {
    fn default() -> Self {
        Self::new()
    }
}

impl Device for Vga {
    fn name(&self) -> &'static str {
        "vga"
    }

    fn read(&mut self, _ctx: &mut DevCtx, region: u8, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *byte = match region {
                0 => self.port_read(at),
                1 => self.mem_read(at),
                _ => 0xFF,
            };
        }
    }

    fn write(&mut self, _ctx: &mut DevCtx, region: u8, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u64);
            match region {
                0 => self.port_write(at, byte),
                1 => self.mem_write(at, byte),
                _ => {}
            }
        }
    }

    fn reset(&mut self) {
        let generation = self.generation;
        *self = Self::new();
        self.generation = generation;
        self.bump();
    }

    crate::state_methods!(Vga(whole));
}

/// The VGA as the platform plugs it in, shared with the front end, which
/// reads the text screen (a display, a screen dump) between units.
#[derive(Clone, Default)]
pub struct SharedVga(pub std::rc::Rc<std::cell::RefCell<Vga>>);

impl SharedVga {
    /// A VGA in its power-on state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text screen now (see [`Vga::text_screen`]).
    pub fn text_screen(&self) -> TextScreen {
        self.0.borrow().text_screen()
    }

    /// See [`Vga::generation`].
    pub fn generation(&self) -> u64 {
        self.0.borrow().generation()
    }
}

impl Device for SharedVga {
    fn name(&self) -> &'static str {
        "vga"
    }

    fn read(&mut self, ctx: &mut DevCtx, region: u8, offset: u64, data: &mut [u8]) {
        self.0.borrow_mut().read(ctx, region, offset, data);
    }

    fn write(&mut self, ctx: &mut DevCtx, region: u8, offset: u64, data: &[u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevEnv;

    /// Mode 3 as the standard VGA BIOS table gives it.
    const MODE3_MISC: u8 = 0x67;
    const MODE3_SEQ: [u8; 5] = [0x03, 0x00, 0x03, 0x00, 0x02];
    const MODE3_CRTC: [u8; 25] = [
        0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00,
        0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF,
    ];
    const MODE3_GC: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF];
    const MODE3_ATTR: [u8; 21] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E,
        0x3F, 0x0C, 0x00, 0x0F, 0x08, 0x00,
    ];
    /// B8000 in region 1.
    const TEXT: u64 = 0x1_8000;

    struct Rig {
        env: DevEnv,
        vga: Vga,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                env: DevEnv::new(),
                vga: Vga::new(),
            }
        }

        fn outb(&mut self, port: u16, value: u8) {
            let mut ctx = self.env.at(0);
            self.vga
                .write(&mut ctx, 0, u64::from(port) - 0x3B0, &[value]);
        }

        fn outw(&mut self, port: u16, value: u16) {
            let mut ctx = self.env.at(0);
            self.vga
                .write(&mut ctx, 0, u64::from(port) - 0x3B0, &value.to_le_bytes());
        }

        fn inb(&mut self, port: u16) -> u8 {
            let mut ctx = self.env.at(0);
            let mut data = [0u8];
            self.vga
                .read(&mut ctx, 0, u64::from(port) - 0x3B0, &mut data);
            data[0]
        }

        fn poke(&mut self, offset: u64, bytes: &[u8]) {
            let mut ctx = self.env.at(0);
            self.vga.write(&mut ctx, 1, offset, bytes);
        }

        fn peek(&mut self, offset: u64) -> u8 {
            let mut ctx = self.env.at(0);
            let mut data = [0u8];
            self.vga.read(&mut ctx, 1, offset, &mut data);
            data[0]
        }

        fn crtc(&mut self, index: u8, value: u8) {
            self.outb(0x3D4, index);
            self.outb(0x3D5, value);
        }

        /// Sets mode 3 in the order SeaBIOS's VGA BIOS does, after its
        /// init has selected colour decode.
        fn mode3(&mut self) {
            self.outb(0x3C2, 0xC3);
            self.inb(0x3DA);
            for (i, &v) in MODE3_ATTR.iter().enumerate() {
                self.outb(0x3C0, i as u8);
                self.outb(0x3C0, v);
            }
            self.outb(0x3C4, 0);
            self.outb(0x3C5, 0x03);
            for (i, &v) in MODE3_SEQ.iter().enumerate().skip(1) {
                self.outb(0x3C4, i as u8);
                self.outb(0x3C5, v);
            }
            for (i, &v) in MODE3_GC.iter().enumerate() {
                self.outb(0x3CE, i as u8);
                self.outb(0x3CF, v);
            }
            self.outw(0x3D4, 0x0011);
            for (i, &v) in MODE3_CRTC.iter().enumerate() {
                self.crtc(i as u8, v);
            }
            self.outb(0x3C2, MODE3_MISC);
            self.outb(0x3C0, 0x20);
            self.inb(0x3DA);
            // The BIOS clears the text page with blank cells.
            for cell in 0..0x4000u64 {
                self.poke(TEXT + cell * 2, &[0x20, 0x07]);
            }
        }

        fn put(&mut self, row: u64, col: u64, text: &str) {
            for (i, b) in text.bytes().enumerate() {
                self.poke(TEXT + (row * 80 + col + i as u64) * 2, &[b, 0x07]);
            }
        }

        fn get_font_access(&mut self) {
            for w in [0x0100, 0x0402, 0x0704, 0x0300] {
                self.outw(0x3C4, w);
            }
            for w in [0x0204, 0x0005, 0x0406] {
                self.outw(0x3CE, w);
            }
        }

        fn release_font_access(&mut self) {
            for w in [0x0100, 0x0302, 0x0304, 0x0300] {
                self.outw(0x3C4, w);
            }
            for w in [0x0E06, 0x0004, 0x1005] {
                self.outw(0x3CE, w);
            }
        }
    }

    #[test]
    fn vga_mode3_text_screen_shows_written_text() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.put(0, 0, "Hello");
        rig.put(24, 75, "World");
        rig.crtc(0x0E, 0x00);
        rig.crtc(0x0F, 85);

        let screen = rig.vga.text_screen();

        assert_eq!((screen.cols, screen.rows), (80, 25));
        let lines = screen.lines();
        assert_eq!(lines.len(), 25);
        assert_eq!(lines[0], "Hello");
        assert_eq!(lines[24], format!("{}World", " ".repeat(75)));
        assert!(lines[1..24].iter().all(String::is_empty));
        assert_eq!(screen.attrs[0], 0x07);
        assert_eq!(screen.cursor, Some((1, 5)));
        assert!(screen.to_text().starts_with("Hello\n\n"));
    }

    #[test]
    fn vga_text_reads_back_through_odd_even() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.poke(TEXT + 10, &[0x55, 0xAA, 0x12, 0x34]);

        let got: Vec<u8> = (0..4).map(|i| rig.peek(TEXT + 10 + i)).collect();

        assert_eq!(got, [0x55, 0xAA, 0x12, 0x34]);
        assert_eq!(rig.vga.plane(0).unwrap()[10..13], [0x55, 0, 0x12]);
        assert_eq!(rig.vga.plane(1).unwrap()[10..13], [0xAA, 0, 0x34]);
    }

    #[test]
    fn vga_start_address_and_offset_move_the_screen() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.put(1, 0, "second");
        rig.crtc(0x0C, 0);
        rig.crtc(0x0D, 80);

        let screen = rig.vga.text_screen();

        assert_eq!(screen.lines()[0], "second");
        assert_eq!(screen.rows, 25);
    }

    #[test]
    fn vga_cursor_disable_bit_hides_cursor() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.crtc(0x0A, 0x2D);

        assert_eq!(rig.vga.text_screen().cursor, None);
    }

    #[test]
    fn vga_font_load_keeps_text_and_fills_plane2() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.put(0, 0, "Hello");
        let glyph: Vec<u8> = (0..16).map(|i| 0x80 | i).collect();

        rig.get_font_access();
        for ch in 0..256u64 {
            rig.poke(ch * 32, &glyph);
        }
        let read_back = rig.peek(0x41 * 32 + 3);
        rig.release_font_access();

        assert_eq!(read_back, 0x83);
        let plane2 = rig.vga.plane(2).unwrap();
        assert_eq!(plane2[0x41 * 32..0x41 * 32 + 16], glyph[..]);
        assert_eq!(plane2[0x41 * 32 + 16], 0);
        let screen = rig.vga.text_screen();
        assert_eq!(screen.lines()[0], "Hello");
        assert_eq!(screen.attrs[0], 0x07);
        assert_eq!(rig.peek(TEXT), b'H');
    }

    /// Planar 16-colour addressing (mode 12h style): sequential, all planes.
    fn planar(rig: &mut Rig) {
        rig.mode3();
        rig.outw(0x3C4, 0x0F02);
        rig.outw(0x3C4, 0x0604);
        rig.outw(0x3CE, 0x0005);
        rig.outw(0x3CE, 0x0506);
        rig.outb(0x3C0, 0x10);
        rig.outb(0x3C0, 0x01);
    }

    #[test]
    fn vga_write_mode0_set_reset_and_bit_mask() {
        let mut rig = Rig::new();
        planar(&mut rig);
        rig.poke(0, &[0xAA]);
        rig.peek(0);
        rig.outw(0x3CE, 0x0F01);
        rig.outw(0x3CE, 0x0500);
        rig.outw(0x3CE, 0xF008);

        rig.poke(0, &[0x00]);

        let planes: Vec<u8> = (0..4).map(|p| rig.vga.plane(p).unwrap()[0]).collect();
        assert_eq!(planes, [0xFA, 0x0A, 0xFA, 0x0A]);
        assert_eq!(rig.vga.text_screen(), TextScreen::default());
    }

    #[test]
    fn vga_write_mode0_rotate_and_xor() {
        let mut rig = Rig::new();
        planar(&mut rig);
        rig.poke(5, &[0x0F]);
        rig.peek(5);
        rig.outw(0x3CE, 0x1C03);

        rig.poke(5, &[0x01]);

        assert_eq!(rig.vga.plane(3).unwrap()[5], 0x0F ^ 0x10);
    }

    #[test]
    fn vga_write_modes_1_2_3() {
        // Above the text page mode 3 cleared, so the planes start at 0.
        const A: u64 = 0x9000;
        let mut rig = Rig::new();
        planar(&mut rig);
        rig.outw(0x3C4, 0x0102);
        rig.poke(A, &[0x3C]);
        rig.outw(0x3C4, 0x0F02);
        rig.peek(A);
        rig.outw(0x3CE, 0x0105);
        rig.poke(A + 1, &[0]);
        let mode1: Vec<u8> = (0..4)
            .map(|p| rig.vga.plane(p).unwrap()[A as usize + 1])
            .collect();
        rig.outw(0x3CE, 0x0205);
        rig.outw(0x3CE, 0x0F08);
        rig.poke(A, &[0x06]);
        let mode2: Vec<u8> = (0..4)
            .map(|p| rig.vga.plane(p).unwrap()[A as usize])
            .collect();
        rig.peek(A + 2);
        rig.outw(0x3CE, 0x0305);
        rig.outw(0x3CE, 0xFF08);
        rig.outw(0x3CE, 0x0900);
        rig.poke(A + 2, &[0x81]);
        let mode3: Vec<u8> = (0..4)
            .map(|p| rig.vga.plane(p).unwrap()[A as usize + 2])
            .collect();

        assert_eq!(mode1, [0x3C, 0, 0, 0]);
        assert_eq!(mode2, [0x30, 0x0F, 0x0F, 0x00]);
        assert_eq!(mode3, [0x81, 0, 0, 0x81]);
    }

    #[test]
    fn vga_read_mode1_colour_compare() {
        let mut rig = Rig::new();
        planar(&mut rig);
        for (p, v) in [(1u8, 0xF0u8), (2, 0x3C), (4, 0xFF), (8, 0x00)] {
            rig.outw(0x3C4, u16::from(p) << 8 | 2);
            rig.poke(0, &[v]);
        }
        rig.outw(0x3CE, 0x0805);
        rig.outw(0x3CE, 0x0502);
        rig.outw(0x3CE, 0x0F07);

        let all = rig.peek(0);
        rig.outw(0x3CE, 0x0507);
        let planes_0_2 = rig.peek(0);

        // Colour 5 = planes 0 and 2 set, 1 and 3 clear.
        assert_eq!(all, 0xC0);
        assert_eq!(planes_0_2, 0xF0);
    }

    #[test]
    fn vga_window_outside_selection_reads_ff_and_drops_writes() {
        let mut rig = Rig::new();
        rig.mode3();

        rig.poke(0, &[0x12]);

        assert_eq!(rig.peek(0), 0xFF);
        assert_eq!(rig.peek(0x1_0000), 0xFF);
        assert!(rig
            .vga
            .plane(0)
            .unwrap()
            .iter()
            .all(|&b| b == 0x20 || b == 0));
    }

    #[test]
    fn vga_chain4_selects_plane_by_low_bits() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.outw(0x3C4, 0x0F02);
        rig.outw(0x3C4, 0x0E04);
        rig.outw(0x3CE, 0x4005);
        rig.outw(0x3CE, 0x0506);

        rig.poke(0x9005, &[0x77]);

        assert_eq!(rig.vga.plane(1).unwrap()[0x9004], 0x77);
        assert_eq!(rig.peek(0x9005), 0x77);
        assert_eq!(rig.peek(0x9004), 0);
    }

    #[test]
    fn vga_input_status1_read_resets_attribute_flip_flop() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.outb(0x3C0, 0x12);

        rig.inb(0x3DA);
        rig.outb(0x3C0, 0x32);
        rig.outb(0x3C0, 0x05);

        assert_eq!(rig.inb(0x3C0), 0x32);
        assert_eq!(rig.inb(0x3C1), 0x05);
    }

    #[test]
    fn vga_retrace_bits_toggle_on_successive_reads() {
        let mut rig = Rig::new();
        rig.mode3();

        let reads: Vec<u8> = (0..4).map(|_| rig.inb(0x3DA) & 0x09).collect();

        assert_ne!(reads[0], reads[1]);
        assert_ne!(reads[1], reads[2]);
        assert_eq!(reads[0], reads[2]);
        assert!(reads.contains(&0x09) && reads.contains(&0x00));
    }

    #[test]
    fn vga_dac_write_then_read_sequence() {
        let mut rig = Rig::new();
        rig.outb(0x3C8, 5);
        for v in [0x3F, 0x41, 0x10, 0x01, 0x02, 0x03] {
            rig.outb(0x3C9, v);
        }
        let write_state = rig.inb(0x3C7);
        let write_index = rig.inb(0x3C8);

        rig.outb(0x3C7, 5);
        let read_state = rig.inb(0x3C7);
        let got: Vec<u8> = (0..6).map(|_| rig.inb(0x3C9)).collect();

        assert_eq!(write_state, 0);
        assert_eq!(write_index, 7);
        assert_eq!(read_state, 3);
        assert_eq!(got, [0x3F, 0x01, 0x10, 0x01, 0x02, 0x03]);
    }

    #[test]
    fn vga_dac_entry_changes_only_on_third_write() {
        let mut rig = Rig::new();
        rig.outb(0x3C8, 9);
        rig.outb(0x3C9, 0x11);
        rig.outb(0x3C9, 0x22);

        rig.outb(0x3C7, 9);
        let before = rig.inb(0x3C9);
        rig.outb(0x3C8, 9);
        for v in [0x11, 0x22, 0x33] {
            rig.outb(0x3C9, v);
        }
        rig.outb(0x3C7, 9);
        let after = rig.inb(0x3C9);

        assert_eq!((before, after), (0, 0x11));
    }

    #[test]
    fn vga_inactive_crtc_range_reads_ff() {
        let mut rig = Rig::new();
        rig.mode3();

        assert_eq!(rig.inb(0x3B4), 0xFF);
        assert_eq!(rig.inb(0x3B5), 0xFF);
        assert_eq!(rig.inb(0x3BA), 0xFF);
        rig.outb(0x3D4, 0x01);
        assert_eq!(rig.inb(0x3D5), 0x4F);

        rig.outb(0x3C2, 0x66);
        assert_eq!(rig.inb(0x3D5), 0xFF);
        assert_eq!(rig.inb(0x3DA), 0xFF);
        rig.outb(0x3B4, 0x01);
        assert_eq!(rig.inb(0x3B5), 0x4F);
    }

    #[test]
    fn vga_word_out_writes_index_then_data() {
        let mut rig = Rig::new();
        rig.mode3();

        rig.outw(0x3D4, 0x340E);

        assert_eq!(rig.inb(0x3D4), 0x0E);
        assert_eq!(rig.inb(0x3D5), 0x34);
    }

    #[test]
    fn vga_crtc_write_protect_guards_0_to_7() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.crtc(0x11, 0x8E);

        rig.crtc(0x01, 0x27);
        rig.crtc(0x07, 0x00);
        rig.crtc(0x0C, 0x12);

        rig.outb(0x3D4, 0x01);
        assert_eq!(rig.inb(0x3D5), 0x4F);
        rig.outb(0x3D4, 0x07);
        assert_eq!(rig.inb(0x3D5), 0x1F & !0x10);
        rig.outb(0x3D4, 0x0C);
        assert_eq!(rig.inb(0x3D5), 0x12);
    }

    #[test]
    fn vga_misc_and_feature_read_back() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.outb(0x3DA, 0x01);

        assert_eq!(rig.inb(0x3CC), 0x67);
        assert_eq!(rig.inb(0x3CA), 0x01);
        assert_eq!(rig.inb(0x3DF), 0xFF);
    }

    #[test]
    fn vga_reset_gives_blank_state() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.put(0, 0, "Hello");
        let generation = rig.vga.generation();

        rig.vga.reset();

        assert!(rig.vga.text_screen().to_text().is_empty());
        assert_eq!(rig.inb(0x3CC), 0);
        assert!(rig.vga.plane(0).unwrap().iter().all(|&b| b == 0));
        assert!(rig.vga.generation() > generation);
    }

    #[test]
    fn vga_nonsense_geometry_gives_empty_screen() {
        let mut rig = Rig::new();
        rig.mode3();
        rig.crtc(0x09, 0x00);

        let screen = rig.vga.text_screen();

        assert_eq!((screen.cols, screen.rows), (0, 0));
        assert!(screen.lines().is_empty());
    }

    #[test]
    fn vga_generation_moves_only_on_visible_change() {
        let mut rig = Rig::new();
        rig.mode3();
        let g0 = rig.vga.generation();
        rig.inb(0x3DA);
        rig.peek(TEXT);
        let g1 = rig.vga.generation();
        rig.put(3, 3, "x");
        let g2 = rig.vga.generation();
        rig.crtc(0x0F, 0x10);
        let g3 = rig.vga.generation();

        assert_eq!(g0, g1);
        assert!(g2 > g1);
        assert!(g3 > g2);
    }

    #[test]
    fn vga_cp437_box_drawing_maps_to_unicode() {
        let screen = TextScreen {
            cols: 8,
            rows: 1,
            chars: vec![0xC9, 0xCD, 0xBB, 0xB3, 0xB0, 0xDB, 0x1E, 0x00],
            attrs: vec![0x07; 8],
            cursor: None,
        };

        assert_eq!(screen.lines(), ["╔═╗│░█▲"]);
    }

    #[test]
    fn vga_inconsistent_screen_does_not_panic() {
        let screen = TextScreen {
            cols: usize::MAX,
            rows: 2,
            chars: vec![b'a'],
            attrs: Vec::new(),
            cursor: None,
        };

        assert_eq!(screen.lines(), ["", ""]);
    }

    #[test]
    fn vga_wide_accesses_and_out_of_range_offsets_are_safe() {
        let mut rig = Rig::new();
        rig.mode3();
        let mut ctx = rig.env.at(0);
        let mut data = [0u8; 8];

        rig.vga.read(&mut ctx, 0, 0x2E, &mut data);
        rig.vga.write(&mut ctx, 1, u64::MAX - 2, &[1, 2, 3, 4]);
        rig.vga.read(&mut ctx, 7, 0, &mut data);

        assert_eq!(data, [0xFF; 8]);
    }
}
