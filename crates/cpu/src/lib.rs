//! The x86 CPU: architectural state, segmentation and memory access, exceptions and
//! interrupt delivery, the interpreter, which is the one definition of every
//! instruction's semantics, and the engine interface every engine implements
//! ([`engine::Engine`]) with the unit plumbing they share.

pub mod arch_state;
pub mod engine;
pub mod exception;
pub mod fpu;
pub mod identity;
pub mod interp;
pub mod mmu;
pub mod mode;
pub mod state;

pub use engine::UnitExit;
pub use exception::Exception;
pub use interp::interpreter::Interpreter;
pub use mode::CpuMode;
pub use state::CpuState;
