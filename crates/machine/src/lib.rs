//! The PC platform: guest-physical memory with ROM and the A20 gate, the port bus,
//! the legacy devices, the virtual clock and the image loaders.
//!
//! This crate knows nothing of instruction semantics. The CPU reaches memory and
//! ports through [`Machine`].

pub mod acpi_tables;
pub mod addr;
pub mod block;
pub mod bus;
pub mod device;
pub mod devices;
pub mod error;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod mp_table;
pub mod pc;
pub mod snapshot;

pub use addr::{GuestPhys, Linear, PAGE_SHIFT, PAGE_SIZE};
pub use device::{Device, IrqLine, IrqLines, Nanos, SystemControl};
pub use error::MachineError;
pub use machine::Machine;
pub use memory::{MemoryLayout, PhysMemory};
