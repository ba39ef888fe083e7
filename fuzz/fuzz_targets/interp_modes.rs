//! The interpreter on arbitrary code in real mode, 16-bit and 32-bit protected
//! mode and long mode, with and without SSE enabled (the first byte picks).
//! Whatever the code does, the run ends with an outcome, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use x86bt::cli::Engine;
use x86bt_fuzz::{mode_of, mode_rom, run_rom};

fuzz_target!(|data: &[u8]| {
    x86bt_fuzz::keep_last(data);
    let Some((&sel, code)) = data.split_first() else {
        return;
    };
    let (mode, sse) = mode_of(sel);
    let _ = run_rom(mode_rom(mode, sse, code), Engine::Interp);
});
