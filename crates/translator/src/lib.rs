//! The binary translator: each translation unit of guest code is lowered into
//! one compiled code fragment of host x86-64 code (see `docs/translator.md`).
//!
//! - [`plan`] decides how each instruction is lowered (IDENT, inline branch, or
//!   the helper that calls the interpreter's implementation) and where flags are
//!   live;
//! - [`emit`] generates the fragment with dynasm-rs, and [`codebuf`] holds it;
//! - [`runtime`] is the boundary with Rust: the helper and the fragment call;
//! - [`Translator`] is the engine (`x86bt_cpu::engine::Engine`, with the run
//!   contract of the interpreter);
//! - [`Lockstep`] runs both engines on every unit and reports a divergence;
//! - [`listing`] formats a unit's host code for the golden tests.

pub mod codebuf;
pub mod emit;
pub mod engine;
pub mod error;
pub mod listing;
pub mod lockstep;
pub mod plan;
pub mod runtime;
pub mod stats;

pub use engine::Translator;
pub use error::TranslatorError;
pub use lockstep::{Divergence, Lockstep};
pub use stats::JitStats;
