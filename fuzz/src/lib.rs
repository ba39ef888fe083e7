//! What the fuzz targets share: a PC built around a difftest ROM whose random
//! stream is replaced by the fuzzer's bytes, run for a bounded number of
//! instructions.

use x86bt::cli::Engine;
use x86bt::difftest::gen::{generate_with, Mode};
use x86bt::{RunOutcome, Vm};
use x86bt_machine::pc::{self, PcConfig};

/// With `X86BT_FUZZ_LAST=PATH` set, writes each input to PATH before it
/// runs: a stack overflow kills the process before libFuzzer can save the
/// input that caused it, and this keeps it.
pub fn keep_last(data: &[u8]) {
    if let Some(path) = std::env::var_os("X86BT_FUZZ_LAST") {
        let _ = std::fs::write(path, data);
    }
}

/// Instructions one program may retire.
pub const BUDGET: u64 = 20_000;

/// Code bytes taken from an input at most: the stream area of every mode's
/// ROM holds them (long mode's tables start at 0xC000).
pub const MAX_CODE: usize = 0x4000;

/// The mode and SSE setting an input's first byte selects.
pub fn mode_of(b: u8) -> (Mode, bool) {
    (Mode::ALL[usize::from(b & 3)], b & 4 != 0)
}

/// A 64 KiB BIOS image whose stub enters `mode` (with SSE enabled if `sse`),
/// then runs `code` (at most [`MAX_CODE`] bytes) followed by HLT. The stub's
/// IDT ends the program at the first exception, as the difftest's does.
pub fn mode_rom(mode: Mode, sse: bool, code: &[u8]) -> Vec<u8> {
    let p = generate_with(mode, 0, 0, 0, sse);
    let mut rom = p.rom;
    let at = p.stream_start as usize;
    let code = &code[..code.len().min(MAX_CODE)];
    rom[at..at + code.len()].copy_from_slice(code);
    rom[at + code.len()] = 0xF4;
    rom
}

/// Runs `rom` on a 2 MiB PC under `engine` for at most [`BUDGET`]
/// instructions.
pub fn run_rom(rom: Vec<u8>, engine: Engine) -> RunOutcome {
    let machine = pc::build(PcConfig::headless(2 << 20, Some(rom)))
        .expect("a 2 MiB PC with a 64 KiB BIOS builds");
    let mut vm = Vm::with_engine(machine, engine).expect("engine");
    vm.run(BUDGET)
}
