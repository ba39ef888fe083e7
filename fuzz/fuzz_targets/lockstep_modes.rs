//! The translator against the interpreter on arbitrary code in every mode
//! (`--engine lockstep`: after each unit the translator ran, the interpreter
//! runs it on a copy and the states are compared). A divergence is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use x86bt::cli::Engine;
use x86bt::RunOutcome;
use x86bt_fuzz::{mode_of, mode_rom, run_rom};

fuzz_target!(|data: &[u8]| {
    x86bt_fuzz::keep_last(data);
    let Some((&sel, code)) = data.split_first() else {
        return;
    };
    let (mode, sse) = mode_of(sel);
    if let RunOutcome::Divergence(report) = run_rom(mode_rom(mode, sse, code), Engine::Lockstep) {
        panic!("{mode} (sse {sse}): the engines diverged:\n{report}");
    }
});
