//! Data moves, shuffles, blends, logic, insert/extract, SSE4.2 string compares,
//! CRC32, POPCNT, and the SIMD state instructions (MXCSR, XSAVE).

use super::super::Handler;
use iced_x86::Instruction;

/// The handler for `ins` if it belongs to this family.
pub fn handler(ins: &Instruction) -> Option<Handler> {
    let _ = ins;
    None
}
