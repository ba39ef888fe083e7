//! The x86 CPU: architectural state, segmentation and memory access, exceptions and
//! interrupt delivery, and the interpreter, which is the one definition of every
//! instruction's semantics.

pub mod exception;
pub mod fpu;
pub mod identity;
pub mod interp;
pub mod mmu;
pub mod mode;
pub mod state;

pub use exception::Exception;
pub use interp::engine::{Interpreter, UnitExit};
pub use mode::CpuMode;
pub use state::CpuState;
