//! Guest-visible exceptions: plain values that the engines deliver through the
//! IVT/IDT. They are not Rust errors; a guest that misbehaves gets one of these,
//! never a host panic.
//!
//! An [`Exception`] is 8 bytes, and so is `Result<(), Exception>` (the tag's
//! spare values are its `Ok`): every interpreter handler returns one, and at
//! this size it comes back in a register rather than through memory. That is
//! why the #PF variant packs its address into 48 bits ([`PfAddr`]): a page
//! fault's linear address is always canonical (there is no 5-level paging, and
//! a non-canonical address faults with #GP or #SS before any page walk).

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
    /// #PF, vector 14: faulting linear address and error code. Build it
    /// with [`Exception::page_fault`].
    PageFault {
        /// The linear address (goes to CR2).
        addr: PfAddr,
        /// The error code (P, W, U, RSVD and I are bits 0-4).
        code: u8,
    },
    /// #MF, vector 16.
    FpuError,
    /// #AC, vector 17.
    AlignmentCheck,
    /// #XM, vector 19: an unmasked SIMD floating-point exception (CR4.OSXMMEXCPT
    /// set; with it clear the same condition raises #UD).
    SimdFloat,
}

/// The linear address of a #PF, kept in 48 bits and sign-extended back from
/// bit 47 (canonical in long mode; below 4 GiB, so bit 47 clear, otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfAddr([u16; 3]);

impl PfAddr {
    /// Packs a canonical linear address.
    #[inline]
    pub fn new(addr: u64) -> Self {
        debug_assert_eq!(
            ((addr << 16) as i64 >> 16) as u64,
            addr,
            "a #PF address is canonical"
        );
        Self([addr as u16, (addr >> 16) as u16, (addr >> 32) as u16])
    }

    /// The linear address.
    #[inline]
    pub fn get(self) -> u64 {
        let [a, b, c] = self.0;
        let v = u64::from(a) | u64::from(b) << 16 | u64::from(c) << 32;
        ((v << 16) as i64 >> 16) as u64
    }
}

// Handlers return `Result<(), Exception>`; past 8 bytes it goes through memory.
const _: () = assert!(std::mem::size_of::<Result<(), Exception>>() == 8);

impl Exception {
    /// A #PF at linear `addr` (canonical) with error `code` (bits 0-7).
    #[inline]
    pub fn page_fault(addr: u64, code: u32) -> Self {
        debug_assert!(code <= 0xFF, "#PF error code {code:#x}");
        Self::PageFault {
            addr: PfAddr::new(addr),
            code: code as u8,
        }
    }

    /// The linear address of a #PF (for CR2).
    pub fn page_fault_addr(self) -> Option<u64> {
        match self {
            Self::PageFault { addr, .. } => Some(addr.get()),
            _ => None,
        }
    }

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
            Self::PageFault { code, .. } => Some(u32::from(code)),
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
            Self::PageFault { addr, code } => {
                format!("#PF(addr={:#x}, code={code:#x})", addr.get())
            }
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
