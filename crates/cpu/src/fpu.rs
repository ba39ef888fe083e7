//! The x87 FPU state (placeholder until the x87 lands).

/// The x87 register file and control state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fpu {}
