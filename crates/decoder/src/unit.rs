//! Translation units: up to [`MAX_UNIT_INSNS`] instructions decoded from one guest
//! address.
//!
//! A unit ends after (in this order of checking):
//! - undecodable bytes, kept as a final `Code::INVALID` instruction so the engine
//!   raises `#UD` at its address;
//! - a control-flow instruction (`flow_control() != Next`);
//! - an instruction in the [`crate::sensitive`] table, but IN and OUT
//!   ([`sensitive::ends_unit`]);
//! - the [`MAX_UNIT_INSNS`]th instruction;
//! - an instruction that reaches the page boundary (an instruction that starts
//!   before the boundary and straddles it is part of the unit).
//!
//! If the bytes the caller could fetch run out in the middle of an instruction (the
//! next page is not mapped, or a segment limit stops the fetch), the unit ends
//! before that instruction; if it is the first instruction the unit is empty with
//! [`UnitEnd::FetchFault`], and the engine raises the fault the fetch would.

use crate::sensitive;
use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl, Instruction};

/// The most instructions in one unit.
pub const MAX_UNIT_INSNS: usize = 12;
/// The longest legal x86 instruction, in bytes.
pub const MAX_INSN_LEN: usize = 15;

/// Code size the unit is decoded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bitness {
    /// Real mode, V86, 16-bit protected-mode code segments.
    B16,
    /// 32-bit code segments.
    B32,
    /// 64-bit long mode.
    B64,
}

impl Bitness {
    /// The bitness as iced wants it.
    pub const fn bits(self) -> u32 {
        match self {
            Self::B16 => 16,
            Self::B32 => 32,
            Self::B64 => 64,
        }
    }
}

/// Why a unit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitEnd {
    /// The last instruction transfers control.
    ControlFlow,
    /// The last instruction is in the sensitive table.
    Sensitive,
    /// The next instruction would start on the next page.
    PageBoundary,
    /// The last instruction is undecodable (`#UD`).
    Undecodable,
    /// The unit is full.
    Full,
    /// The bytes ran out inside the next instruction; it was left out.
    FetchLimit,
    /// The bytes ran out inside the first instruction: the unit is empty.
    FetchFault,
}

/// A decoded unit. Fixed-size, so decoding into a cache slot allocates nothing.
#[derive(Clone, Debug)]
pub struct DecodedUnit {
    /// The instructions; only the first `count` are meaningful.
    pub insns: [Instruction; MAX_UNIT_INSNS],
    /// How many instructions the unit holds.
    pub count: usize,
    /// Bytes covered by the unit.
    pub byte_len: usize,
    /// Why it ended.
    pub end: UnitEnd,
}

impl Default for DecodedUnit {
    fn default() -> Self {
        Self {
            insns: [Instruction::default(); MAX_UNIT_INSNS],
            count: 0,
            byte_len: 0,
            end: UnitEnd::FetchFault,
        }
    }
}

impl DecodedUnit {
    /// The decoded instructions.
    pub fn instructions(&self) -> &[Instruction] {
        &self.insns[..self.count]
    }
}

/// Decodes one unit for `bitness` at instruction pointer `ip` from `bytes`, which
/// start at the unit's first byte. `page_room` is how many of them lie on the
/// unit's first page; the rest (at most [`MAX_INSN_LEN`] - 1) belong to the next
/// page and serve only an instruction that straddles the boundary.
pub fn decode_unit(
    bitness: Bitness,
    ip: u64,
    bytes: &[u8],
    page_room: usize,
    out: &mut DecodedUnit,
) {
    let mut decoder = Decoder::with_ip(bitness.bits(), bytes, ip, DecoderOptions::NONE);
    out.count = 0;
    out.byte_len = 0;
    out.end = UnitEnd::Full;
    loop {
        let slot = &mut out.insns[out.count];
        decoder.decode_out(slot);
        if slot.is_invalid() && decoder.last_error() == DecoderError::NoMoreBytes {
            out.end = if out.count == 0 {
                UnitEnd::FetchFault
            } else {
                UnitEnd::FetchLimit
            };
            return;
        }
        out.count += 1;
        out.byte_len += slot.len();
        let end = if slot.is_invalid() {
            Some(UnitEnd::Undecodable)
        } else if slot.flow_control() != FlowControl::Next {
            Some(UnitEnd::ControlFlow)
        } else if sensitive::ends_unit(slot) {
            Some(UnitEnd::Sensitive)
        } else if out.count == MAX_UNIT_INSNS {
            Some(UnitEnd::Full)
        } else if out.byte_len >= page_room {
            Some(UnitEnd::PageBoundary)
        } else {
            None
        };
        if let Some(end) = end {
            // A unit cut by its size or its page does not end with STI: that
            // would leave the interrupt shadow set at its end, and the next
            // unit would run one instruction alone. STI starts the next unit
            // instead, where the instruction it covers follows it.
            let cut = matches!(end, UnitEnd::Full | UnitEnd::PageBoundary);
            if cut
                && out.count > 1
                && out.insns[out.count - 1].mnemonic() == iced_x86::Mnemonic::Sti
            {
                out.count -= 1;
                out.byte_len -= out.insns[out.count].len();
            }
            out.end = end;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, Mnemonic};

    fn unit(bitness: Bitness, bytes: &[u8], page_room: usize) -> DecodedUnit {
        let mut u = DecodedUnit::default();
        decode_unit(bitness, 0x100, bytes, page_room, &mut u);
        u
    }

    #[test]
    fn unit_ends_at_control_flow() {
        // inc ax; jmp short $; nop
        let u = unit(Bitness::B16, &[0x40, 0xEB, 0xFE, 0x90], 4096);
        assert_eq!((u.count, u.end), (2, UnitEnd::ControlFlow));
        assert_eq!(u.insns[1].mnemonic(), Mnemonic::Jmp);
    }

    #[test]
    fn unit_ends_at_sensitive_instruction() {
        // inc ax; hlt; nop
        let u = unit(Bitness::B16, &[0x40, 0xF4, 0x90], 4096);
        assert_eq!((u.count, u.end), (2, UnitEnd::Sensitive));
    }

    #[test]
    fn unit_cut_by_its_size_does_not_end_with_sti() {
        // Six CLI/STI pairs: the twelfth instruction, an STI, starts the
        // next unit.
        let code: Vec<u8> = [0xFA, 0xFB].repeat(7);
        let u = unit(Bitness::B32, &code, 4096);
        assert_eq!(
            (u.count, u.byte_len, u.end),
            (MAX_UNIT_INSNS - 1, 11, UnitEnd::Full)
        );
        assert_eq!(u.insns[u.count - 1].mnemonic(), Mnemonic::Cli);
    }

    #[test]
    fn unit_goes_on_after_cli_sti_pushf_popf() {
        // cli; sti; pushf; popf; nop; hlt: the flag instructions end their
        // unit at run time only (when they make an interrupt deliverable or
        // set TF), so the unit runs to HLT.
        let u = unit(Bitness::B16, &[0xFA, 0xFB, 0x9C, 0x9D, 0x90, 0xF4], 4096);
        assert_eq!((u.count, u.end), (6, UnitEnd::Sensitive));
    }

    #[test]
    fn unit_ends_at_page_boundary() {
        // Five one-byte NOPs, but only three lie on this page.
        let u = unit(Bitness::B32, &[0x90; 5], 3);
        assert_eq!((u.count, u.byte_len, u.end), (3, 3, UnitEnd::PageBoundary));
    }

    #[test]
    fn unit_keeps_instruction_straddling_page_boundary() {
        // nop; mov eax, 0x12345678 with the boundary after the opcode byte.
        let bytes = [0x90, 0xB8, 0x78, 0x56, 0x34, 0x12, 0x90];
        let u = unit(Bitness::B32, &bytes, 2);
        assert_eq!((u.count, u.byte_len, u.end), (2, 6, UnitEnd::PageBoundary));
        assert_eq!(u.insns[1].code(), Code::Mov_r32_imm32);
        assert_eq!(u.insns[1].immediate32(), 0x1234_5678);
    }

    #[test]
    fn unit_ends_at_undecodable_bytes_with_invalid_instruction() {
        // inc ax; lea ax, ax (a register operand is undefined); nop
        let u = unit(Bitness::B16, &[0x40, 0x8D, 0xC0, 0x90], 4096);
        assert_eq!((u.count, u.end), (2, UnitEnd::Undecodable));
        assert!(u.insns[1].is_invalid());
    }

    #[test]
    fn unit_holds_at_most_twelve_instructions() {
        let u = unit(Bitness::B16, &[0x90; 40], 4096);
        assert_eq!((u.count, u.end), (MAX_UNIT_INSNS, UnitEnd::Full));
    }

    #[test]
    fn unit_truncated_first_instruction_is_fetch_fault() {
        let u = unit(Bitness::B32, &[0xB8, 0x78], 2);
        assert_eq!((u.count, u.end), (0, UnitEnd::FetchFault));
        let u = unit(Bitness::B32, &[0x90, 0xB8, 0x78], 2);
        assert_eq!((u.count, u.end), (1, UnitEnd::FetchLimit));
    }

    #[test]
    fn unit_decodes_64bit_code() {
        // mov rax, [rip+0]; ret
        let u = unit(Bitness::B64, &[0x48, 0x8B, 0x05, 0, 0, 0, 0, 0xC3], 4096);
        assert_eq!((u.count, u.end), (2, UnitEnd::ControlFlow));
        assert_eq!(u.insns[0].code(), Code::Mov_r64_rm64);
    }
}
