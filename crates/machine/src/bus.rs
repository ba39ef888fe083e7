//! The I/O port bus: a map from port ranges to devices.
//!
//! Each mapping has a `base`; a device sees `port - base` as its offset. Devices
//! that answer at scattered ports (the PIC pair, the keyboard controller) are mapped
//! with base 0 and see absolute port numbers. Ports nobody claims read as all ones
//! and drop writes, as on an ISA bus.

use crate::device::{Device, Nanos};
use std::collections::BTreeMap;

/// An index into the bus's device list.
pub type DeviceId = usize;

#[derive(Clone, Copy, Debug)]
struct Mapping {
    last: u16,
    base: u16,
    dev: DeviceId,
}

/// The I/O port address space.
#[derive(Default)]
pub struct PortBus {
    map: BTreeMap<u16, Mapping>,
    devices: Vec<Box<dyn Device>>,
    /// Per port, 1 + the index of its mapping in `mappings`, or 0: an O(1)
    /// lookup for every IN and OUT (empty until the first mapping).
    table: Vec<u16>,
    mappings: Vec<Mapping>,
}

impl PortBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device; map its ports with [`PortBus::map`].
    pub fn add(&mut self, dev: Box<dyn Device>) -> DeviceId {
        self.devices.push(dev);
        self.devices.len() - 1
    }

    /// Routes ports `first..=last` to `dev`, which sees `port - base`.
    ///
    /// # Panics
    /// If the range overlaps an existing mapping: that is a wiring bug in the
    /// platform code, never something a guest or a user can cause.
    pub fn map(&mut self, first: u16, last: u16, base: u16, dev: DeviceId) {
        let overlaps = self
            .map
            .range(..=last)
            .next_back()
            .is_some_and(|(&start, m)| start <= last && m.last >= first);
        assert!(!overlaps, "port range {first:#x}..={last:#x} overlaps");
        let m = Mapping { last, base, dev };
        self.map.insert(first, m);
        self.mappings.push(m);
        if self.table.is_empty() {
            self.table = vec![0; 1 << 16];
        }
        let tag = u16::try_from(self.mappings.len()).expect("fewer than 65536 port ranges");
        self.table[usize::from(first)..=usize::from(last)].fill(tag);
    }

    #[inline]
    fn find(&self, port: u16) -> Option<Mapping> {
        match self.table.get(usize::from(port)) {
            Some(&i) if i != 0 => Some(self.mappings[usize::from(i) - 1]),
            _ => None,
        }
    }

    /// Reads `size` (1, 2 or 4) bytes from `port`, little-endian.
    pub fn read(&mut self, port: u16, size: usize, now: Nanos) -> u32 {
        self.read_from(port, size, now).0
    }

    /// As [`PortBus::read`], also saying which device answered, if any.
    pub fn read_from(&mut self, port: u16, size: usize, now: Nanos) -> (u32, Option<DeviceId>) {
        let mut buf = [0xFFu8; 4];
        let size = size.min(4);
        let m = self.find(port);
        if let Some(m) = m {
            let dev = &mut self.devices[m.dev];
            dev.read(port.wrapping_sub(m.base), &mut buf[..size], now);
        }
        (u32::from_le_bytes(buf) & size_mask(size), m.map(|m| m.dev))
    }

    /// Writes `size` (1, 2 or 4) bytes of `value` to `port`. Returns the device that
    /// took the write, if any.
    pub fn write(&mut self, port: u16, size: usize, value: u32, now: Nanos) -> Option<DeviceId> {
        let size = size.min(4);
        let m = self.find(port)?;
        let bytes = value.to_le_bytes();
        self.devices[m.dev].write(port.wrapping_sub(m.base), &bytes[..size], now);
        Some(m.dev)
    }

    /// The devices, for time advance and deadlines.
    pub fn devices_mut(&mut self) -> &mut [Box<dyn Device>] {
        &mut self.devices
    }

    /// One device.
    pub fn device_mut(&mut self, id: DeviceId) -> Option<&mut (dyn Device + 'static)> {
        self.devices.get_mut(id).map(|d| d.as_mut())
    }
}

fn size_mask(size: usize) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::any::Any;

    struct Echo {
        last: Vec<(u16, Vec<u8>)>,
    }
    impl Device for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn read(&mut self, offset: u16, data: &mut [u8], _now: Nanos) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8], _now: Nanos) {
            self.last.push((offset, data.to_vec()));
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
    }

    #[test]
    fn bus_unclaimed_port_reads_all_ones() {
        let mut bus = PortBus::new();
        assert_eq!(bus.read(0x1234, 2, 0), 0xFFFF);
        assert_eq!(bus.write(0x1234, 1, 0, 0), None);
    }

    #[test]
    fn bus_device_sees_offset_from_base() {
        let mut bus = PortBus::new();
        let id = bus.add(Box::new(Echo { last: vec![] }));
        bus.map(0x3F8, 0x3FF, 0x3F8, id);
        assert_eq!(bus.read(0x3FD, 1, 0), 5);
        assert_eq!(bus.write(0x3F9, 2, 0xBEEF, 0), Some(id));
        let dev = bus.device_mut(id).expect("dev");
        let echo = dev.as_any_mut().downcast_mut::<Echo>().expect("echo");
        assert_eq!(echo.last, vec![(1, vec![0xEF, 0xBE])]);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn bus_overlapping_map_panics() {
        let mut bus = PortBus::new();
        let id = bus.add(Box::new(Echo { last: vec![] }));
        bus.map(0x60, 0x64, 0, id);
        bus.map(0x62, 0x62, 0, id);
    }
}
