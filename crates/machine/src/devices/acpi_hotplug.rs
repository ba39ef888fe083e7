//! The hot-plug registers the ACPI tables of SeaBIOS (built for QEMU's PIIX4
//! PC) read, as QEMU's PIIX4 answers them: without them, an unclaimed port
//! reads all ones, and the tables' methods take that as "every PCI slot is
//! being removed" and "256 CPUs are present" (Linux then ejects every PCI
//! function but the host bridge, the IDE controller among them).
//!
//! Mapped with base 0 at:
//! - 0xAE00-0xAE13, PCI hot-plug: PCIU (0xAE00, slots added), PCID
//!   (0xAE04, slots removed), B0EJ (0xAE08, eject request), RMV (0xAE0C,
//!   removable slots), SEL (0xAE10, bus select). No slot is ever added or
//!   removed and none is removable, so each reads 0; an eject request is
//!   refused (a guest error: nothing here can be unplugged).
//! - 0xAF00-0xAF1F, CPU hot-plug: a bitmap of the APIC IDs present, one bit
//!   each (the `-smp` CPUs, IDs 0 to N-1); writes are ignored.

use crate::device::{DevCtx, Device};

/// The PCI hot-plug block.
pub const PCI_HOTPLUG: (u16, u16) = (0xAE00, 0xAE13);
/// The CPU present bitmap.
pub const CPU_HOTPLUG: (u16, u16) = (0xAF00, 0xAF1F);

/// Both register blocks.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AcpiHotplug {
    present: [u8; 32],
    bus_select: u32,
}

impl AcpiHotplug {
    /// The registers for a machine of `cpus` CPUs.
    pub fn new(cpus: u32) -> Self {
        let mut present = [0u8; 32];
        for i in 0..cpus.min(256) as usize {
            present[i / 8] |= 1 << (i % 8);
        }
        Self {
            present,
            bus_select: 0,
        }
    }
}

impl Device for AcpiHotplug {
    fn name(&self) -> &'static str {
        "acpi-hotplug"
    }

    fn read(&mut self, _ctx: &mut DevCtx, _region: u8, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let port = offset + i as u64;
            *b = match port {
                0xAE10..=0xAE13 => self.bus_select.to_le_bytes()[(port - 0xAE10) as usize],
                0xAF00..=0xAF1F => self.present[(port - 0xAF00) as usize],
                _ => 0,
            };
        }
    }

    fn write(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &[u8]) {
        match offset {
            0xAE08..=0xAE0B if data.iter().any(|&b| b != 0) => {
                ctx.guest_error(
                    "ACPI PCI hot-plug: eject request refused (nothing is removable)".into(),
                );
            }
            0xAE10..=0xAE13 => {
                let mut b = self.bus_select.to_le_bytes();
                for (i, &v) in data.iter().enumerate() {
                    if let Some(slot) = b.get_mut((offset - 0xAE10) as usize + i) {
                        *slot = v;
                    }
                }
                self.bus_select = u32::from_le_bytes(b);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.bus_select = 0;
    }

    crate::state_methods!(AcpiHotplug(whole));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevEnv;

    #[test]
    fn no_slot_changes_and_the_cpus_present_are_listed() {
        let mut h = AcpiHotplug::new(3);
        let mut env = DevEnv::new();
        let mut ctx = env.at(0);
        let mut d = [0xFFu8; 4];
        h.read(&mut ctx, 0, 0xAE04, &mut d);
        assert_eq!(d, [0; 4], "no slot being removed");
        h.read(&mut ctx, 0, 0xAF00, &mut d);
        assert_eq!(d, [0b111, 0, 0, 0], "CPUs 0-2");
    }
}
