//! The decoder's unit builder and the translator's planner and emitter on
//! arbitrary bytes: the first byte picks 16-, 32- or 64-bit code, the rest
//! is the unit. Nothing may panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use x86bt_decoder::unit::{decode_unit, Bitness, DecodedUnit};

fuzz_target!(|data: &[u8]| {
    x86bt_fuzz::keep_last(data);
    let Some((&sel, code)) = data.split_first() else {
        return;
    };
    let bitness = match sel % 3 {
        0 => Bitness::B16,
        1 => Bitness::B32,
        _ => Bitness::B64,
    };
    let mut unit = DecodedUnit::default();
    let room = usize::from(sel >> 2).min(code.len());
    decode_unit(
        bitness,
        0x1000,
        code,
        room.max(1).min(code.len()),
        &mut unit,
    );
    let _ = unit.instructions();
    // Lowers and emits the unit as the engine would (into a plain buffer).
    let _ = x86bt_translator::listing::listing(bitness, code);
});
