//! MMX, SSE2, SSSE3 and SSE4.1 integer arithmetic, compares, packs, unpacks
//! and shifts.

use super::super::Handler;
use iced_x86::Instruction;

/// The handler for `ins` if it belongs to this family.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    let _ = ins;
    None
}
