//! Why a translator could not be set up.

use thiserror::Error;

/// Errors of [`crate::Translator::new`].
#[derive(Debug, Error)]
pub enum TranslatorError {
    /// The host is not x86-64: translated code could not run here.
    #[error("the binary translator needs an x86-64 host (this one is {0}); use --engine interp")]
    UnsupportedHost(&'static str),
    /// The host CPU lacks LAHF/SAHF in 64-bit mode (CPUID 8000_0001h ECX bit 0),
    /// which fragments use to move guest flags.
    #[error("the binary translator needs LAHF/SAHF in 64-bit mode, which this host CPU lacks; use --engine interp")]
    NoLahfSahf,
    /// The executable code buffer could not be mapped.
    #[error("cannot map the translator's code buffer: {0}")]
    CodeBuffer(#[from] std::io::Error),
}
