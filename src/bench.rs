//! `x86bt run` and `x86bt bench` (filled in below).

use crate::cli::{BenchArgs, RunArgs};
use crate::error::Error;

/// `x86bt run`.
pub fn run_cmd(_a: &RunArgs) -> Result<u8, Error> {
    Err(Error::Usage("run: not wired yet".into()))
}

/// `x86bt bench`.
pub fn bench_cmd(_a: &BenchArgs) -> Result<u8, Error> {
    Err(Error::Usage("bench: not wired yet".into()))
}
