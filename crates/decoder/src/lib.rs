//! Bytes to instructions to translation units, on iced-x86.
//!
//! The decoder is pure: it knows nothing of guest memory. Callers hand it the bytes
//! from a unit's first instruction to the end of its page, plus up to 15 bytes of
//! the next page when that page can be fetched, so an instruction that straddles a
//! page boundary still decodes.

pub mod sensitive;
pub mod table;
pub mod undefined;
pub mod unit;

pub use iced_x86;
pub use unit::{decode_unit, Bitness, DecodedUnit, UnitEnd, MAX_INSN_LEN, MAX_UNIT_INSNS};
