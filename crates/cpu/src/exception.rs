//! Guest-visible exceptions: plain values that the engines deliver through the
//! IVT/IDT. They are not Rust errors; a guest that misbehaves gets one of these,
//! never a host panic.

/// An exception raised by an instruction (a fault, or a trap such as INT n that
/// the instruction delivers itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exception {
    /// #DE, vector 0: divide error.
    DivideError,
    /// #DB, vector 1.
    Debug,
    /// #BP, vector 3 (INT3 is delivered by the instruction itself).
    Breakpoint,
    /// #OF, vector 4.
    Overflow,
    /// #BR, vector 5: BOUND range exceeded.
    BoundRange,
    /// #UD, vector 6: invalid opcode.
    InvalidOpcode,
    /// #NM, vector 7: device not available.
    DeviceNotAvailable,
    /// #DF, vector 8, error code 0.
    DoubleFault,
    /// #TS, vector 10, with selector error code.
    InvalidTss(u16),
    /// #NP, vector 11, with selector error code.
    SegmentNotPresent(u16),
    /// #SS, vector 12, with selector error code.
    StackFault(u16),
    /// #GP, vector 13, with selector error code.
    GeneralProtection(u16),
    /// #PF, vector 14: faulting linear address and error code.
    PageFault {
        /// The linear address (goes to CR2).
        addr: u64,
        /// The error code.
        code: u32,
    },
    /// #MF, vector 16.
    FpuError,
    /// #AC, vector 17.
    AlignmentCheck,
    /// #XM, vector 19: an unmasked SIMD floating-point exception (CR4.OSXMMEXCPT
    /// set; with it clear the same condition raises #UD).
    SimdFloat,
}

impl Exception {
    /// The interrupt vector.
    pub fn vector(self) -> u8 {
        match self {
            Self::DivideError => 0,
            Self::Debug => 1,
            Self::Breakpoint => 3,
            Self::Overflow => 4,
            Self::BoundRange => 5,
            Self::InvalidOpcode => 6,
            Self::DeviceNotAvailable => 7,
            Self::DoubleFault => 8,
            Self::InvalidTss(_) => 10,
            Self::SegmentNotPresent(_) => 11,
            Self::StackFault(_) => 12,
            Self::GeneralProtection(_) => 13,
            Self::PageFault { .. } => 14,
            Self::FpuError => 16,
            Self::AlignmentCheck => 17,
            Self::SimdFloat => 19,
        }
    }

    /// The error code pushed in protected mode, if this exception has one.
    pub fn error_code(self) -> Option<u32> {
        match self {
            Self::InvalidTss(c)
            | Self::SegmentNotPresent(c)
            | Self::StackFault(c)
            | Self::GeneralProtection(c) => Some(u32::from(c)),
            Self::DoubleFault | Self::AlignmentCheck => Some(0),
            Self::PageFault { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether a second exception of this class during delivery of `first` makes a
    /// double fault (SDM vol. 3A §6.15, Table 6-5).
    pub fn is_contributory(self) -> bool {
        matches!(
            self,
            Self::DivideError
                | Self::InvalidTss(_)
                | Self::SegmentNotPresent(_)
                | Self::StackFault(_)
                | Self::GeneralProtection(_)
        )
    }

    /// A short mnemonic such as `#GP(0)` for diagnostics.
    pub fn describe(self) -> String {
        match self {
            Self::PageFault { addr, code } => format!("#PF(addr={addr:#x}, code={code:#x})"),
            other => {
                let name = match other.vector() {
                    0 => "#DE",
                    1 => "#DB",
                    3 => "#BP",
                    4 => "#OF",
                    5 => "#BR",
                    6 => "#UD",
                    7 => "#NM",
                    8 => "#DF",
                    10 => "#TS",
                    11 => "#NP",
                    12 => "#SS",
                    13 => "#GP",
                    16 => "#MF",
                    17 => "#AC",
                    _ => "#XM",
                };
                match other.error_code() {
                    Some(c) => format!("{name}({c:#x})"),
                    None => name.to_string(),
                }
            }
        }
    }
}
