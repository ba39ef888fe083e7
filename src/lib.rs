//! x86bt: a full-system x86 PC emulator with an interpreter and a binary
//! translator. This library holds what the `x86bt` binary is made of, so that tests
//! and benchmarks drive exactly the code users run: the VM and its run loop, the
//! SingleStepTests runner, the ROM runner and the benchmarks.

pub mod bench;
pub mod bench_kernels;
pub mod bench_native;
pub mod boot;
pub mod cli;
pub mod console;
pub mod debug;
pub mod difftest;
pub mod drives;
pub mod error;
pub mod gdb;
pub mod replay;
pub mod rtc;
pub mod run;
pub mod snapshot;
pub mod sst;
pub mod vm;

pub use error::Error;
pub use vm::{RunOutcome, Vm};
