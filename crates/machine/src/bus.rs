//! One bus type for both address spaces: [`Bus<u16>`] for I/O ports and
//! [`Bus<u64>`] for memory-mapped I/O.
//!
//! A mapping routes `first..=last` to an [`Owner`] (a device of the machine's
//! list, or one of the interrupt controllers the machine holds as typed fields)
//! with a `base` and a `region`: the owner sees `addr - base` as its offset and
//! the region tells it which of its ranges was hit (a PCI function's BARs).
//! Devices that answer at scattered ports (the PIC pair, the keyboard
//! controller) are mapped with base 0 and see absolute port numbers.
//!
//! Two mappings never overlap: [`Bus::map`] refuses one that would, with an
//! error, so a guest that programs two BARs onto each other gets the second
//! left unmapped (and a logged guest error from the caller), never a host
//! panic. Addresses nobody claims read as all ones and drop writes, as on an
//! ISA or PCI bus (master abort).

use std::collections::BTreeMap;
use thiserror::Error;

/// An index into the machine's device list.
pub type DeviceId = usize;

/// Who answers a mapped range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Owner {
    /// A device of the machine's list.
    Device(DeviceId),
    /// The 8259 pair, a typed field of the machine.
    Pic,
}

/// One routed range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    /// First address.
    pub first: u64,
    /// Last address (inclusive).
    pub last: u64,
    /// Subtracted from the address to form the owner's offset.
    pub base: u64,
    /// Who answers.
    pub owner: Owner,
    /// Which of the owner's ranges this is.
    pub region: u8,
}

/// A mapping the bus refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps one already mapped.
    #[error("range {first:#x}..={last:#x} overlaps {other_first:#x}..={other_last:#x}")]
    Overlap {
        /// The new range's first address.
        first: u64,
        /// Its last address.
        last: u64,
        /// The existing range's first address.
        other_first: u64,
        /// Its last address.
        other_last: u64,
    },
    /// `last` is below `first`.
    #[error("empty range {first:#x}..={last:#x}")]
    Empty {
        /// The range's first address.
        first: u64,
        /// Its last address.
        last: u64,
    },
    /// A range past the end of the address space (a damaged snapshot).
    #[error("range {first:#x}..={last:#x} is outside the address space")]
    OutOfSpace {
        /// The range's first address.
        first: u64,
        /// Its last address.
        last: u64,
    },
}

/// An address type a bus can be keyed by.
pub trait BusAddr: Copy + Into<u64> {
    /// Whether lookups go through a dense table (one entry per address: the
    /// 64 Ki I/O ports), rather than an ordered map.
    const DENSE: bool;
}

impl BusAddr for u16 {
    const DENSE: bool = true;
}

impl BusAddr for u64 {
    const DENSE: bool = false;
}

/// An address space of mapped ranges.
pub struct Bus<A: BusAddr> {
    /// Mappings by first address.
    map: BTreeMap<u64, Mapping>,
    /// Dense buses only: per address, 1 + the index into `slots`, or 0; an
    /// O(1) lookup for every IN and OUT (empty until the first mapping).
    table: Vec<u16>,
    slots: Vec<Mapping>,
    _addr: std::marker::PhantomData<A>,
}

impl<A: BusAddr> Default for Bus<A> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            table: Vec::new(),
            slots: Vec::new(),
            _addr: std::marker::PhantomData,
        }
    }
}

impl<A: BusAddr> Bus<A> {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `first..=last` to `owner`'s `region`, which sees `addr - base`.
    /// Refuses a range that overlaps an existing one (the bus is unchanged).
    pub fn map(
        &mut self,
        first: A,
        last: A,
        base: A,
        owner: Owner,
        region: u8,
    ) -> Result<(), BusError> {
        let (first, last, base) = (first.into(), last.into(), base.into());
        if last < first {
            return Err(BusError::Empty { first, last });
        }
        if let Some((_, m)) = self.map.range(..=last).next_back() {
            if m.last >= first {
                return Err(BusError::Overlap {
                    first,
                    last,
                    other_first: m.first,
                    other_last: m.last,
                });
            }
        }
        self.map.insert(
            first,
            Mapping {
                first,
                last,
                base,
                owner,
                region,
            },
        );
        self.rebuild();
        Ok(())
    }

    /// Removes every mapping of `owner`'s `region`; returns how many there
    /// were.
    pub fn unmap(&mut self, owner: Owner, region: u8) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, m| !(m.owner == owner && m.region == region));
        let removed = before - self.map.len();
        if removed > 0 {
            self.rebuild();
        }
        removed
    }

    /// Moves `owner`'s `region` to `first..=last` (offsets from `first`): the
    /// old mappings of the region go, and the new one is refused, leaving the
    /// region unmapped, if it would overlap another owner's range.
    pub fn remap(&mut self, owner: Owner, region: u8, first: A, last: A) -> Result<(), BusError> {
        self.unmap(owner, region);
        self.map(first, last, first, owner, region)
    }

    /// Replaces every mapping with `mappings` (a snapshot's); refuses a
    /// set with overlaps, leaving the bus empty.
    pub fn set_mappings(&mut self, mappings: &[Mapping]) -> Result<(), BusError> {
        self.map.clear();
        self.table.clear();
        self.slots.clear();
        for m in mappings {
            if let Err(e) = self.insert(*m) {
                self.map.clear();
                self.rebuild();
                return Err(e);
            }
        }
        self.rebuild();
        Ok(())
    }

    /// Inserts `m` without rebuilding the lookup table.
    fn insert(&mut self, m: Mapping) -> Result<(), BusError> {
        if A::DENSE && m.last > 0xFFFF {
            return Err(BusError::OutOfSpace {
                first: m.first,
                last: m.last,
            });
        }
        if m.last < m.first {
            return Err(BusError::Empty {
                first: m.first,
                last: m.last,
            });
        }
        if let Some((_, o)) = self.map.range(..=m.last).next_back() {
            if o.last >= m.first {
                return Err(BusError::Overlap {
                    first: m.first,
                    last: m.last,
                    other_first: o.first,
                    other_last: o.last,
                });
            }
        }
        self.map.insert(m.first, m);
        Ok(())
    }

    /// The mapping that holds `addr`, if any.
    #[inline]
    pub fn find(&self, addr: A) -> Option<Mapping> {
        let addr: u64 = addr.into();
        if A::DENSE {
            return match self.table.get(addr as usize) {
                Some(&i) if i != 0 => Some(self.slots[usize::from(i) - 1]),
                _ => None,
            };
        }
        self.map
            .range(..=addr)
            .next_back()
            .map(|(_, m)| *m)
            .filter(|m| m.last >= addr)
    }

    /// Every mapping, in address order.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.map.values()
    }

    fn rebuild(&mut self) {
        if !A::DENSE {
            return;
        }
        self.slots = self.map.values().copied().collect();
        self.table.clear();
        self.table.resize(1 << 16, 0);
        for (i, m) in self.slots.iter().enumerate() {
            let tag = u16::try_from(i + 1).unwrap_or(u16::MAX);
            self.table[m.first as usize..=m.last as usize].fill(tag);
        }
    }
}

/// The mask of a `size`-byte little-endian value.
pub fn size_mask(size: usize) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: Owner = Owner::Device(0);

    #[test]
    fn bus_finds_the_mapping_and_its_offset_base() {
        let mut bus = Bus::<u16>::new();
        bus.map(0x3F8, 0x3FF, 0x3F8, DEV, 0).expect("map");
        let m = bus.find(0x3FD).expect("mapped");
        assert_eq!((m.base, m.owner, m.region), (0x3F8, DEV, 0));
        assert_eq!(bus.find(0x3F7), None);
        assert_eq!(bus.find(0x400), None);
    }

    #[test]
    fn bus_refuses_overlap_and_keeps_the_first() {
        for dense in [true, false] {
            let (a, b) = if dense {
                let mut bus = Bus::<u16>::new();
                bus.map(0x60, 0x64, 0, DEV, 0).expect("map");
                (bus.map(0x62, 0x62, 0, Owner::Pic, 0), bus.find(0x62))
            } else {
                let mut bus = Bus::<u64>::new();
                bus.map(0xFEC0_0000, 0xFEC0_0FFF, 0xFEC0_0000, DEV, 0)
                    .expect("map");
                (
                    bus.map(0xFEBF_F000, 0xFEC0_0000, 0, Owner::Pic, 1),
                    bus.find(0xFEC0_0000),
                )
            };
            assert!(matches!(a, Err(BusError::Overlap { .. })), "{a:?}");
            assert_eq!(b.map(|m| m.owner), Some(DEV));
        }
    }

    #[test]
    fn bus_remap_moves_a_region_and_refuses_a_collision() {
        let mut bus = Bus::<u64>::new();
        bus.map(0x1000, 0x1FFF, 0x1000, DEV, 0).expect("bar 0");
        bus.map(0x8000, 0x8FFF, 0x8000, Owner::Device(1), 0)
            .expect("other device");
        bus.remap(DEV, 0, 0x4000, 0x4FFF).expect("free");
        assert_eq!(bus.find(0x1000), None);
        assert_eq!(bus.find(0x4010).map(|m| m.base), Some(0x4000));
        // Onto the other device: refused, and the region is left unmapped.
        assert!(bus.remap(DEV, 0, 0x8000, 0x8FFF).is_err());
        assert_eq!(bus.find(0x4010), None);
        assert_eq!(bus.find(0x8000).map(|m| m.owner), Some(Owner::Device(1)));
    }

    #[test]
    fn bus_refuses_an_empty_range() {
        let mut bus = Bus::<u16>::new();
        assert!(matches!(
            bus.map(5, 4, 0, DEV, 0),
            Err(BusError::Empty { .. })
        ));
    }
}
