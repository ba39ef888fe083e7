//! SSE/SSE2/SSE3/SSE4.1 floating-point instructions, bit-exact under MXCSR.

use super::super::Handler;
use iced_x86::Instruction;

/// The handler for `ins` if it belongs to this family.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    let _ = ins;
    None
}
