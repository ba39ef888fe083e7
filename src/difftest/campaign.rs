//! Random-program campaigns (`x86bt difftest --random`).

use super::DiffSetup;
use crate::cli::DifftestArgs;
use crate::error::Error;

/// Runs a campaign of random programs (filled in with the generator).
pub fn run(_a: &DifftestArgs, _setup: DiffSetup) -> Result<u8, Error> {
    Err(Error::Usage(
        "--random: the program generator is not built yet".into(),
    ))
}
