//! Host-side errors of the front end: bad files, bad options. A guest that
//! misbehaves is never one of these.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can stop x86bt before or outside guest execution.
#[derive(Debug, Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The machine could not be built (RAM size, ROM size, image placement).
    #[error(transparent)]
    Machine(#[from] x86bt_machine::MachineError),
    /// A SingleStepTests file is malformed.
    #[error("{path}: malformed MOO file: {what}")]
    Moo {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A SingleStepTests file of a kind the runner does not read: an unknown
    /// CPU id, format version, CPU mode or register chunk. Refused whole, so
    /// that no case "passes" with registers that were never compared.
    #[error("{path}: unsupported MOO file: {what}")]
    MooUnsupported {
        /// The file.
        path: PathBuf,
        /// What the runner does not know.
        what: String,
    },
    /// The metadata file is malformed.
    #[error("{path}: malformed metadata: {what}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A kernel image that cannot be loaded.
    #[error("{path}: {source}")]
    Loader {
        /// The image.
        path: PathBuf,
        /// Why.
        source: x86bt_machine::loader::LoaderError,
    },
    /// The native benchmark programs (`bench/c/`) could not be built or run:
    /// no gcc, a compile error, a host program that did not start.
    #[error("bench --native: {0}")]
    Native(String),
    /// An option value that cannot be used.
    #[error("{0}")]
    Usage(String),
    /// A snapshot that cannot be written, read or restored here: missing,
    /// truncated, corrupt, of another format version, or made for another
    /// machine; the text says which.
    #[error("{0}")]
    Snapshot(String),
}
