//! Address newtypes. A guest-physical address and a linear address are different
//! things; keeping them apart in the type system stops a missed translation step
//! (segmentation, paging, A20) from compiling.

/// A guest-physical address, after segmentation, paging and the A20 gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestPhys(pub u64);

/// A linear address: segment base plus offset, before paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Linear(pub u64);

/// Size of a guest page (4 KiB), the unit of code tracking and invalidation.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

impl GuestPhys {
    /// The 4 KiB page frame number of this address.
    pub const fn page(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
    /// The offset of this address within its page.
    pub const fn page_offset(self) -> u64 {
        self.0 & (PAGE_SIZE - 1)
    }
    /// This address plus `n`, wrapping at 2^64.
    pub const fn add(self, n: u64) -> Self {
        Self(self.0.wrapping_add(n))
    }
}

impl Linear {
    /// The 4 KiB page number of this address.
    pub const fn page(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
    /// This address plus `n`, wrapping at 2^64.
    pub const fn add(self, n: u64) -> Self {
        Self(self.0.wrapping_add(n))
    }
}

impl std::fmt::Display for GuestPhys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "phys:{:#x}", self.0)
    }
}

impl std::fmt::Display for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lin:{:#x}", self.0)
    }
}
