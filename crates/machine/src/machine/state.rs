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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::GuestPhys;
    use crate::block::{BlockBackend, MemDisk};
    use crate::devices::ide::{DriveSpec, Media};
    use crate::pc::{self, ExtraDevice, PcConfig, Storage};

    /// A PC with every kind of device: two CPUs, edu, a VGA, an IDE disk
    /// and CD, a virtio-blk disk.
    fn full_pc() -> Machine {
        let disk = |fill: u8, len: usize| -> Box<dyn BlockBackend> {
            Box::new(MemDisk::new(vec![fill; len]))
        };
        let mut m = pc::build(PcConfig {
            ram_bytes: 16 << 20,
            bios: None,
            serial_out: Box::new(std::io::sink()),
            serial_in: None,
            debugcon: Box::new(std::io::sink()),
            post: None,
            rtc_base_unix: 1_767_225_600,
            cpus: 2,
            extra_devices: vec![ExtraDevice::Edu],
            storage: Storage {
                ide: vec![
                    DriveSpec {
                        media: Media::Disk,
                        backend: disk(0x11, 1 << 20),
                        channel: 0,
                        unit: 0,
                    },
                    DriveSpec {
                        media: Media::Cdrom,
                        backend: disk(0x22, 2048 * 64),
                        channel: 1,
                        unit: 0,
                    },
                ],
                virtio: vec![disk(0x33, 1 << 20)],
                vga: Some(crate::devices::vga::SharedVga::default()),
                ..Storage::default()
            },
        })
        .expect("PC");
        pc::prepare_direct_boot(&mut m, 0x663, 0);
        m
    }

    fn cfg_write(m: &mut Machine, dev: u32, reg: u32, value: u32) {
        m.io_write(0xCF8, 4, 0x8000_0000 | dev << 11 | reg);
        m.io_write(0xCFC, 4, value);
    }

    /// Guest activity that leaves every device in a state other than its
    /// power-on one, with transfers and timers in flight.
    fn stir(m: &mut Machine) {
        // PIC: initialised, IRQ0 and the cascade unmasked.
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 4),
            (0x21, 1),
            (0x21, 0xFA),
        ] {
            m.io_write(port, 1, v);
        }
        // PIT: channel 0 periodic, channel 2 gated on, a latch pending.
        m.io_write(0x43, 1, 0x34);
        m.io_write(0x40, 1, 0x9B);
        m.io_write(0x40, 1, 0x2E);
        m.io_write(0x61, 1, 1);
        m.io_write(0x43, 1, 0x00);
        // CMOS: periodic interrupt on, index left on a RAM byte.
        m.io_write(0x70, 1, 0x0B);
        m.io_write(0x71, 1, 0x42);
        m.io_write(0x70, 1, 0x35);
        m.io_write(0x71, 1, 0xA5);
        // UART: FIFO on, interrupts on, a byte sent, scratch written.
        m.io_write(0x3FA, 1, 0xC7);
        m.io_write(0x3F9, 1, 0x0F);
        m.io_write(0x3FF, 1, 0x5A);
        m.io_write(0x3F8, 1, b'x'.into());
        // i8042: a command byte read pending in the output buffer.
        m.io_write(0x64, 1, 0x20);
        // Port 0x92 and the POST port.
        m.io_write(0x92, 1, 0x02);
        m.io_write(0x80, 1, 0x55);
        // fw_cfg: the signature selected, two bytes read.
        m.io_write(0x510, 2, 0);
        m.io_read(0x511, 1);
        m.io_read(0x511, 1);
        // PCI: edu (slot 3) BAR 0 placed and memory decoding on.
        cfg_write(m, 3, 0x10, 0xFEA0_0000);
        cfg_write(m, 3, 0x04, 0x0006);
        m.write_phys(GuestPhys(0xFEA0_0004), 4, 0x1234_5678);
        m.write_phys(GuestPhys(0xFEA0_0008), 4, 6);
        // The HPET counting, comparator 0 armed.
        m.write_phys(GuestPhys(0xFED0_0108), 8, 100_000);
        m.write_phys(GuestPhys(0xFED0_0100), 8, 1 << 2);
        m.write_phys(GuestPhys(0xFED0_0010), 8, 1);
        // The local APIC: enabled, timer armed, TPR set.
        m.write_phys(GuestPhys(0xFEE0_00F0), 4, 0x1FF);
        m.write_phys(GuestPhys(0xFEE0_03E0), 4, 0xB);
        m.write_phys(GuestPhys(0xFEE0_0320), 4, 0x40);
        m.write_phys(GuestPhys(0xFEE0_0380), 4, 50_000);
        m.write_phys(GuestPhys(0xFEE0_0080), 4, 0x20);
        // The I/O APIC: pin 4's entry written.
        m.write_phys(GuestPhys(0xFEC0_0000), 4, 0x18);
        m.write_phys(GuestPhys(0xFEC0_0010), 4, 0x31);
        // VGA: a sequencer register and text in VRAM.
        m.io_write(0x3C4, 1, 2);
        m.io_write(0x3C5, 1, 0x0F);
        m.write_phys(GuestPhys(0xB_8000), 2, 0x1F41);
        // IDE: IDENTIFY DEVICE on the disk, half its data read.
        m.io_write(0x1F6, 1, 0xA0);
        m.io_write(0x1F7, 1, 0xEC);
        for _ in 0..100 {
            m.io_read(0x1F0, 2);
        }
        // RAM, and time moved on past some deadlines.
        m.mem.write_bytes(GuestPhys(0x12_3456), b"guest data");
        m.set_time(1_000_000);
    }

    /// Reads everything a guest could look at, in order: every mapped port,
    /// the MMIO registers above, and RAM. Reads have effects (FIFOs drain,
    /// transfers go on); a copy answers as the original does.
    fn observe(m: &mut Machine) -> Vec<u64> {
        let mut seen = Vec::new();
        let ports: Vec<Mapping> = m.ports.mappings().copied().collect();
        for map in ports {
            for port in map.first..=map.last.min(map.first + 15) {
                seen.push(u64::from(m.io_read(port as u16, 1)));
            }
        }
        for addr in [
            0xFEA0_0004u64,
            0xFED0_00F0,
            0xFED0_0020,
            0xFEE0_0390,
            0xFEE0_0080,
            0xFEC0_0010,
            0xB_8000,
            0x12_3456,
        ] {
            seen.push(m.read_phys(GuestPhys(addr), 4));
        }
        m.set_time(2_500_000);
        seen.push(u64::from(m.intr()));
        seen.push(m.next_deadline().unwrap_or(0));
        seen
    }

    #[test]
    fn every_device_round_trips_and_the_copy_answers_as_the_original() {
        let mut a = full_pc();
        stir(&mut a);
        let state = a.save_state().expect("save");
        let ram = a.mem.save_ram();
        // Every device of the list gave a state of its own kind.
        assert!(state
            .devices
            .iter()
            .zip(a.devices())
            .all(|(s, d)| !matches!(s, DeviceState::Stateless)
                || ["isa-debug-exit", "fpu-error"].contains(&d.name())));
        let mut b = full_pc();
        b.restore_state(&state).expect("restore");
        b.mem.restore_ram(&ram).expect("RAM");
        let again = b.save_state().expect("save the copy");
        assert_eq!(format!("{again:?}"), format!("{state:?}"));
        let seen_a = observe(&mut a);
        let seen_b = observe(&mut b);
        assert_eq!(seen_a, seen_b, "the copy answers differently");
        let after_a = a.save_state().expect("save");
        let after_b = b.save_state().expect("save");
        assert_eq!(format!("{after_a:?}"), format!("{after_b:?}"));
    }

    #[test]
    fn a_state_for_other_devices_is_refused() {
        let mut a = full_pc();
        let mut state = a.save_state().expect("save");
        state.devices.swap(0, 1);
        let err = full_pc().restore_state(&state).unwrap_err();
        assert!(
            matches!(err, StateError::WrongKind { device: "pit", .. }),
            "{err}"
        );
        let plain = pc::build(PcConfig {
            ram_bytes: 16 << 20,
            bios: None,
            serial_out: Box::new(std::io::sink()),
            serial_in: None,
            debugcon: Box::new(std::io::sink()),
            post: None,
            rtc_base_unix: 0,
            cpus: 2,
            extra_devices: Vec::new(),
            storage: Storage::default(),
        })
        .expect("PC");
        let diff = a.shape().difference(&plain.shape()).expect("differs");
        assert!(diff.starts_with("devices:"), "{diff}");
    }
}
