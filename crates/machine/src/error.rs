//! Host-side errors of the machine layer: bad configuration or images. Guest
//! misbehaviour is never one of these.

use thiserror::Error;

/// What can go wrong while building the machine or loading an image into it.
#[derive(Debug, Error)]
pub enum MachineError {
    /// The guest RAM size is zero or larger than this build supports.
    #[error("guest RAM size {mib} MiB is out of range (1..={max} MiB)")]
    RamSize {
        /// The size asked for.
        mib: u64,
        /// The largest size supported.
        max: u64,
    },
    /// The host could not give us the anonymous mapping for guest RAM.
    #[error("cannot map {bytes} bytes of guest RAM: {source}")]
    RamMap {
        /// The size asked for.
        bytes: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// A ROM image whose size a PC cannot map at the top of 4 GiB.
    #[error(
        "ROM image is {len} bytes; it must be a multiple of 64 KiB, between 64 KiB and 16 MiB"
    )]
    RomSize {
        /// The image's size.
        len: usize,
    },
    /// An image that does not fit in guest RAM at its load address.
    #[error("image of {len} bytes at {addr:#x} does not fit in guest RAM")]
    ImageOutOfRam {
        /// Where it was to be loaded.
        addr: u64,
        /// Its size.
        len: usize,
    },
    /// Two of the platform's own ranges collide (a bug in the platform's
    /// wiring, reported rather than panicking).
    #[error("platform wiring: {0}")]
    Wiring(#[from] crate::bus::BusError),
}
