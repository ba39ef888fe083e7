//! Save and restore of the whole platform below the CPUs (snapshots): the
//! memory map's switches, the buses' mappings (BARs and the PM block move),
//! every device in the machine's list, the interrupt controllers, the ISA
//! lines and system-control signals, the virtual clock and the deadlines.
//! RAM is saved apart ([`crate::memory::RamImage`]), being most of the
//! bytes.
//!
//! What is restored is the machine's state field for field, not a state
//! rebuilt by running the machine's own update paths: those have effects
//! (delivering MSIs, sampling edges) that already happened before the save.
//! The guest errors not yet reported are diagnostics of the saving run and
//! are not kept.

use super::Machine;
use crate::bus::Mapping;
use crate::device::{ControlState, IrqLinesState, Msi, Nanos};
use crate::devices::ioapic::IoApic;
use crate::devices::lapic::Lapic;
use crate::devices::pic::PicState;
use crate::memory::MemoryMapState;
use crate::snapshot::{DeviceState, StateError};
use serde::{Deserialize, Serialize};

/// What a machine is built from, as far as a snapshot must match it: a
/// snapshot restores only into a machine of the same shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineShape {
    /// RAM in bytes.
    pub ram_bytes: u64,
    /// CPUs (local APICs; 1 without).
    pub cpus: usize,
    /// The devices of the machine's list, by name, in order.
    pub devices: Vec<String>,
    /// The firmware image's length and hash, if there is one.
    pub rom: Option<(u64, u64)>,
    /// Whether there is an 8259 pair and an I/O APIC.
    pub pic: bool,
    /// See `pic`.
    pub ioapic: bool,
}

impl MachineShape {
    /// The first difference between the snapshot's shape (`self`) and the
    /// machine's (`here`), as a sentence.
    pub fn difference(&self, here: &MachineShape) -> Option<String> {
        if self.ram_bytes != here.ram_bytes {
            return Some(format!(
                "RAM: the snapshot has {} MiB, this machine {} MiB (-m)",
                self.ram_bytes >> 20,
                here.ram_bytes >> 20
            ));
        }
        if self.cpus != here.cpus {
            return Some(format!(
                "CPUs: the snapshot has {}, this machine {} (-smp)",
                self.cpus, here.cpus
            ));
        }
        if self.devices != here.devices || self.pic != here.pic || self.ioapic != here.ioapic {
            return Some(format!(
                "devices: the snapshot has [{}], this machine [{}] (-device, drives, -vga)",
                self.devices.join(", "),
                here.devices.join(", ")
            ));
        }
        if self.rom != here.rom {
            let what = |r: &Option<(u64, u64)>| match r {
                None => "no firmware (--kernel)".to_string(),
                Some((len, hash)) => format!("a {} KiB image (hash {hash:016x})", len >> 10),
            };
            return Some(format!(
                "firmware: the snapshot was made with {}, this machine has {} (--bios)",
                what(&self.rom),
                what(&here.rom)
            ));
        }
        None
    }
}

/// The platform's state, RAM apart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineState {
    map: MemoryMapState,
    ports: Vec<Mapping>,
    mmio: Vec<Mapping>,
    devices: Vec<DeviceState>,
    pic: Option<PicState>,
    lapics: Vec<Lapic>,
    ioapic: Option<IoApic>,
    cur_cpu: usize,
    mmio_accesses: u64,
    ctl: ControlState,
    irq: IrqLinesState,
    msi: Vec<Msi>,
    now: Nanos,
    clock_origin: Option<(Nanos, u64)>,
    deadline: Nanos,
    deadlines: Vec<Nanos>,
    intr: bool,
    port_attention: bool,
}

impl Machine {
    /// What this machine is built from, for a snapshot to be checked against.
    pub fn shape(&self) -> MachineShape {
        MachineShape {
            ram_bytes: self.mem.ram_size(),
            cpus: self.cpu_count(),
            devices: self.devices.iter().map(|d| d.name().to_string()).collect(),
            rom: self.mem.rom_identity(),
            pic: self.pic.is_some(),
            ioapic: self.ioapic.is_some(),
        }
    }

    /// The platform's state, RAM apart (see [`crate::memory::PhysMemory::save_ram`]).
    /// Fails only when a device needs the host and the host fails (a disk
    /// image that cannot be read for its hash).
    pub fn save_state(&mut self) -> Result<MachineState, StateError> {
        let Self {
            mem,
            ports,
            mmio,
            devices,
            pic,
            lapics,
            keyboard: _,
            ioapic,
            cur_cpu,
            mmio_accesses,
            ctl,
            irq,
            msi,
            requests,
            device_errors: _,
            guest_errors: _,
            now,
            clock_origin,
            deadline,
            deadlines,
            intr,
            port_attention,
        } = self;
        debug_assert!(requests.is_empty(), "saved inside a device call");
        let devices = devices
            .iter_mut()
            .map(|d| d.save())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MachineState {
            map: mem.save_map(),
            ports: ports.mappings().copied().collect(),
            mmio: mmio.mappings().copied().collect(),
            devices,
            pic: pic.as_ref().map(|p| p.save()),
            lapics: lapics.clone(),
            ioapic: ioapic.clone(),
            cur_cpu: *cur_cpu,
            mmio_accesses: *mmio_accesses,
            ctl: ctl.save(),
            irq: irq.save(),
            msi: msi.clone(),
            now: *now,
            clock_origin: *clock_origin,
            deadline: *deadline,
            deadlines: deadlines.clone(),
            intr: *intr,
            port_attention: *port_attention,
        })
    }

    /// Puts back a state [`Machine::save_state`] returned, into a machine of
    /// the same shape (the caller checks [`Machine::shape`] first, and
    /// restores RAM apart). On an error the machine is partly restored and
    /// must be discarded.
    pub fn restore_state(&mut self, s: &MachineState) -> Result<(), StateError> {
        let misfit = |what: String| StateError::Mismatch(what);
        if s.devices.len() != self.devices.len()
            || s.lapics.len() != self.lapics.len()
            || s.pic.is_some() != self.pic.is_some()
            || s.ioapic.is_some() != self.ioapic.is_some()
        {
            return Err(misfit(
                "the snapshot's devices are not this machine's".into(),
            ));
        }
        for (d, state) in self.devices.iter_mut().zip(&s.devices) {
            d.restore(state)?;
        }
        let owners_ok = |maps: &[Mapping]| {
            maps.iter().all(|m| match m.owner {
                crate::bus::Owner::Device(id) => id < s.devices.len(),
                crate::bus::Owner::Pic => true,
            })
        };
        if !owners_ok(&s.ports) || !owners_ok(&s.mmio) {
            return Err(misfit(
                "a bus mapping names a device the machine lacks".into(),
            ));
        }
        self.ports
            .set_mappings(&s.ports)
            .map_err(|e| misfit(format!("port mappings: {e}")))?;
        self.mmio
            .set_mappings(&s.mmio)
            .map_err(|e| misfit(format!("MMIO mappings: {e}")))?;
        if let (Some(p), Some(saved)) = (&mut self.pic, &s.pic) {
            p.restore(saved);
        }
        self.lapics.clone_from(&s.lapics);
        self.ioapic.clone_from(&s.ioapic);
        if s.cur_cpu >= self.cpu_count() || s.deadlines.len() > self.devices.len() {
            return Err(misfit(
                "the snapshot's CPU index or deadlines do not fit".into(),
            ));
        }
        self.cur_cpu = s.cur_cpu;
        self.mmio_accesses = s.mmio_accesses;
        self.ctl.restore(&s.ctl);
        self.irq.restore(&s.irq);
        self.msi.clone_from(&s.msi);
        self.requests.clear();
        self.device_errors.clear();
        self.guest_errors.clear();
        self.now = s.now;
        self.clock_origin = s.clock_origin;
        self.deadline = s.deadline;
        self.deadlines.clone_from(&s.deadlines);
        self.intr = s.intr;
        self.port_attention = s.port_attention;
        self.mem.restore_map(&s.map);
        Ok(())
    }
}
