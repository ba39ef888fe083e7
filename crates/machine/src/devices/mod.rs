//! The legacy PC devices, one struct per file, each behind the [`crate::Device`]
//! trait. Register constants cite their datasheet.

pub mod acpi_hotplug;
pub mod acpi_pm;
pub mod cmos;
pub mod debug_exit;
pub mod debugcon;
pub mod edu;
pub mod fpu_error;
pub mod fw_cfg;
pub mod hpet;
pub mod i8042;
pub mod ide;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pci_endpoint;
pub mod pic;
pub mod pit;
pub mod port92;
pub mod post;
#[cfg(test)]
pub(crate) mod test_sinks;
pub mod uart;
pub mod vga;
pub mod virtio_blk;
