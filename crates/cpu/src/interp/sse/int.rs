//! SSE2/SSSE3/SSE4.1/SSE4.2 integer instructions, their MMX forms, the data
//! moves and shuffles, POPCNT, and the SIMD state instructions.

use super::super::Handler;
use iced_x86::Instruction;

/// The handler for `ins` if it belongs to this family.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    let _ = ins;
    None
}
