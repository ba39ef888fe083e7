//! Assembly of the PC platform: memory with the BIOS ROM, and the legacy devices
//! at their ISA ports and IRQs (see the architecture's platform table).

use crate::addr::GuestPhys;
use crate::bus::Owner;
use crate::devices::{
    acpi_hotplug, acpi_pm, cmos, debug_exit, debugcon, edu, fpu_error, fw_cfg, hpet, i8042, ide,
    ioapic, lapic, pci, pic, pit, port92, post, uart, vga, virtio_blk,
};
use crate::error::MachineError;
use crate::machine::Machine;
use crate::memory::{MemoryLayout, PhysMemory};
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

/// A writer shared by several devices (both debug-console ports).
#[derive(Clone)]
pub struct SharedWriter(Rc<RefCell<Box<dyn Write>>>);

impl SharedWriter {
    /// Wraps `w`.
    pub fn new(w: Box<dyn Write>) -> Self {
        Self(Rc::new(RefCell::new(w)))
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// What a PC is built from.
pub struct PcConfig {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// The BIOS image, if any.
    pub bios: Option<Vec<u8>>,
    /// Where COM1's output goes.
    pub serial_out: Box<dyn Write>,
    /// Host input for COM1.
    pub serial_in: Option<uart::SerialInput>,
    /// Where the debug console (0xE9, 0x402) goes.
    pub debugcon: Box<dyn Write>,
    /// Where POST codes are logged, if anywhere.
    pub post: Option<Box<dyn Write>>,
    /// Wall-clock time (Unix seconds) of the RTC at power-on.
    pub rtc_base_unix: i64,
    /// CPUs (at least 1), each with its local APIC; CPU 0 is the bootstrap
    /// processor.
    pub cpus: u32,
    /// Devices added with `-device`, on PCI slots from 3 up.
    pub extra_devices: Vec<ExtraDevice>,
    /// Disks and CDs, and what the firmware boots from.
    pub storage: Storage,
}

impl PcConfig {
    /// A PC of `ram_bytes` with firmware `bios` (or none), one CPU, no
    /// drives or extra devices, the RTC at the Unix epoch, and its serial
    /// and debug-console output dropped: the machine tests, benchmarks and
    /// fuzz targets build.
    pub fn headless(ram_bytes: u64, bios: Option<Vec<u8>>) -> Self {
        Self {
            ram_bytes,
            bios,
            serial_out: Box::new(std::io::sink()),
            serial_in: None,
            debugcon: Box::new(std::io::sink()),
            post: None,
            rtc_base_unix: 0,
            cpus: 1,
            extra_devices: Vec::new(),
            storage: Default::default(),
        }
    }
}

/// The drives of a PC and the firmware's boot settings.
#[derive(Default)]
pub struct Storage {
    /// Drives on the IDE controller (PCI 00:01.1).
    pub ide: Vec<ide::DriveSpec>,
    /// virtio-blk disks, one PCI function each, on the slots after the
    /// `-device` ones.
    pub virtio: Vec<Box<dyn crate::block::BlockBackend>>,
    /// The firmware's boot order, as `-boot order=` letters: `c` the first
    /// hard disk, `d` the first CD. Empty: the firmware's own order.
    pub boot_order: String,
    /// Whether the firmware shows its boot menu (`-boot menu=on`).
    pub boot_menu: bool,
    /// A standard VGA (ports 0x3B0-0x3DF, memory 0xA0000-0xBFFFF), shared
    /// with the front end that shows its screen.
    pub vga: Option<vga::SharedVga>,
    /// The VGA BIOS, handed to the firmware as fw_cfg
    /// `vgaroms/vgabios.bin` (SeaBIOS runs it as the VGA's option ROM).
    pub vga_bios: Option<Vec<u8>>,
    /// The port of the firmware's serial console (fw_cfg `etc/sercon-port`):
    /// SeaBIOS then writes its screen output (and boot loaders' BIOS text
    /// output) to that UART. Used while the machine has no display.
    pub sercon_port: Option<u16>,
}

/// SeaBIOS's device path of the IDE drive at `channel`, `unit` (QEMU's
/// naming, which SeaBIOS matches its own `/pci@i0cf8/*@1,1/...` against).
pub fn ide_boot_path(channel: u8, unit: u8) -> String {
    format!(
        "/pci@i0cf8/ide@{},{}/drive@{channel}/disk@{unit}",
        ide::SLOT,
        ide::FUNCTION
    )
}

/// The fw_cfg `bootorder` file for `order` over `drives`: for each letter,
/// the paths of the drives of that kind in channel/unit order.
fn bootorder(order: &str, drives: &[ide::DriveSpec]) -> String {
    let mut out = String::new();
    for letter in order.chars() {
        let want = match letter {
            'c' => ide::Media::Disk,
            'd' => ide::Media::Cdrom,
            _ => continue,
        };
        let mut found: Vec<(u8, u8)> = drives
            .iter()
            .filter(|d| d.media == want)
            .map(|d| (d.channel, d.unit))
            .collect();
        found.sort_unstable();
        for (c, u) in found {
            out.push_str(&ide_boot_path(c, u));
            out.push('\n');
        }
    }
    out
}

/// A device `-device` adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraDevice {
    /// QEMU's educational PCI device (`edu`).
    Edu,
}

impl std::str::FromStr for ExtraDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split(',').next().unwrap_or("") {
            "edu" => Ok(Self::Edu),
            other => Err(format!("'{other}' is not a device x86bt has (it has: edu)")),
        }
    }
}

/// The first PCI slot `-device` fills (slot 2 is kept for a VGA).
pub const FIRST_EXTRA_SLOT: u8 = 3;

/// Builds a PC.
pub fn build(cfg: PcConfig) -> Result<Machine, MachineError> {
    let mut mem = PhysMemory::new(cfg.ram_bytes, MemoryLayout::Pc)?;
    if let Some(rom) = cfg.bios {
        mem.map_rom(rom)?;
    }
    let mut m = Machine::with_memory(mem);
    let lines = Rc::clone(&m.irq);
    let ctl = Rc::clone(&m.ctl);
    let below = m.mem.ram_below_4g();
    let above = m.mem.ram_above_4g();

    m.pic = Some(pic::Pic::new(Rc::clone(&lines)));
    // Each CPU's local APIC (at IA32_APIC_BASE, 0xFEE00000), APIC ID = CPU
    // index; CPU 0 is the bootstrap processor.
    for i in 0..cfg.cpus.max(1) {
        m.lapics.push(lapic::Lapic::new(i, i == 0));
    }
    // The I/O APIC (at 0xFEC00000), its ID the first after the CPUs'.
    m.ioapic = Some(ioapic::IoApic::new(m.lapics.len() as u8));
    for (first, last) in [(0x20, 0x21), (0xA0, 0xA1), (0x4D0, 0x4D1)] {
        m.map_ports(first, last, 0, Owner::Pic, 0)?;
    }

    // Each device with its port ranges and each range's offset base.
    type Ranges<'a> = &'a [(u16, u16, u16)];
    let add = |m: &mut Machine, dev: Box<dyn crate::Device>, ranges: Ranges| {
        let id = m.add_device(dev);
        ranges.iter().try_for_each(|&(first, last, base)| {
            m.map_ports(first, last, base, Owner::Device(id), 0)
        })
    };

    add(
        &mut m,
        Box::new(pit::Pit::new(lines.legacy_line(0))),
        &[(0x40, 0x43, 0), (0x61, 0x61, 0)],
    )?;
    add(
        &mut m,
        Box::new(cmos::Cmos::new(
            lines.legacy_line(8),
            Rc::clone(&ctl),
            cmos::CmosConfig {
                ram_below_4g: below,
                ram_above_4g: above,
                rtc_base_unix: cfg.rtc_base_unix,
            },
        )),
        &[(0x70, 0x71, 0)],
    )?;
    add(
        &mut m,
        Box::new(uart::Uart::new(
            lines.line(4),
            cfg.serial_out,
            cfg.serial_in,
        )),
        &[(0x3F8, 0x3FF, 0x3F8)],
    )?;
    let kbd = i8042::SharedI8042(Rc::new(RefCell::new(i8042::I8042::new(
        lines.line(1),
        lines.line(12),
        Rc::clone(&ctl),
    ))));
    m.keyboard = Some(kbd.clone());
    add(&mut m, Box::new(kbd), &[(0x60, 0x60, 0), (0x64, 0x64, 0)])?;
    add(
        &mut m,
        Box::new(port92::Port92::new(Rc::clone(&ctl))),
        &[(0x92, 0x92, 0x92)],
    )?;
    let ferr = fpu_error::CLEAR_PORT;
    add(
        &mut m,
        Box::new(fpu_error::FpuError::new(lines.line(fpu_error::FERR_IRQ))),
        &[(ferr, ferr, 0)],
    )?;
    add(
        &mut m,
        Box::new(debug_exit::DebugExit::new(Rc::clone(&ctl))),
        &[(0xF4, 0xF7, 0xF4)],
    )?;

    let dbg = SharedWriter::new(cfg.debugcon);
    add(
        &mut m,
        Box::new(debugcon::DebugCon::new(Box::new(dbg.clone()))),
        &[(0xE9, 0xE9, 0xE9)],
    )?;
    add(
        &mut m,
        Box::new(debugcon::DebugCon::new(Box::new(dbg))),
        &[(0x402, 0x402, 0x402)],
    )?;

    let pm = acpi_pm::PmShared::new();
    let router = pci::PirqRouter::new(Rc::clone(&lines));
    let mut host =
        pci::PciHost::new(Rc::clone(&ctl), pm.clone()).with_pirq_router(Rc::clone(&router));
    for (i, dev) in cfg.extra_devices.iter().enumerate() {
        let slot = FIRST_EXTRA_SLOT + i as u8;
        match dev {
            ExtraDevice::Edu => {
                let space = Rc::new(RefCell::new(edu::config_space()));
                let intx = router.line(slot, 1);
                let id = m.add_device(Box::new(edu::Edu::new(Rc::clone(&space), intx)));
                host.plug(slot, id, space);
            }
        }
    }
    // The PIIX3's IDE function (00:01.1), with its legacy ports and IRQs.
    let Storage {
        ide: drives,
        virtio,
        boot_order,
        boot_menu,
        vga: vga_dev,
        vga_bios,
        sercon_port,
    } = cfg.storage;
    if let Some(v) = vga_dev {
        let id = m.add_device(Box::new(v));
        m.map_ports(0x3B0, 0x3DF, 0x3B0, Owner::Device(id), 0)?;
        m.map_mmio(0xA_0000, 0xB_FFFF, 0xA_0000, Owner::Device(id), 1)?;
    }
    for (i, backend) in virtio.into_iter().enumerate() {
        let slot = FIRST_EXTRA_SLOT + (cfg.extra_devices.len() + i) as u8;
        let space = Rc::new(RefCell::new(virtio_blk::config_space()));
        let intx = router.line(slot, 1);
        let dev =
            virtio_blk::VirtioBlk::new(Rc::clone(&space), intx, backend, format!("X86BT-VD{i}"));
        let id = m.add_device(Box::new(dev));
        host.plug(slot, id, space);
    }
    let order_file = bootorder(&boot_order, &drives);
    let space = Rc::new(RefCell::new(ide::config_space()));
    let irqs = ide::LEGACY.map(|(_, _, irq)| lines.line(irq));
    let id = m.add_device(Box::new(ide::Ide::new(Rc::clone(&space), irqs, drives)));
    host.plug_function(ide::SLOT, ide::FUNCTION, id, space);
    for (c, (cmd, ctl, _)) in ide::LEGACY.into_iter().enumerate() {
        let region = ide::REGION_CMD + 2 * c as u8;
        m.map_ports(cmd, cmd + 7, cmd, Owner::Device(id), region)?;
        m.map_ports(ctl, ctl, ctl, Owner::Device(id), region + 1)?;
    }
    add(&mut m, Box::new(host), &[(0xCF8, 0xCFF, 0)])?;
    // The PM block answers only where PMBA points; firmware puts it at 0x600
    // (older SeaBIOS) or 0xB000 (SeaBIOS 1.16), so both windows are routed to it.
    let pm_last = |base: u16| base + acpi_pm::PM_IO_SIZE - 1;
    add(
        &mut m,
        Box::new(acpi_pm::AcpiPm::new(pm).with_power_control(Rc::clone(&ctl))),
        &[
            (acpi_pm::PM_IO_PORT, pm_last(acpi_pm::PM_IO_PORT), 0),
            (0xB000, pm_last(0xB000), 0),
            (acpi_pm::APMC, acpi_pm::APMS, 0),
        ],
    )?;

    let (pci_first, pci_last) = acpi_hotplug::PCI_HOTPLUG;
    let (cpu_first, cpu_last) = acpi_hotplug::CPU_HOTPLUG;
    add(
        &mut m,
        Box::new(acpi_hotplug::AcpiHotplug::new(cfg.cpus.max(1))),
        &[(pci_first, pci_last, 0), (cpu_first, cpu_last, 0)],
    )?;
    let mut fw = fw_cfg::FwCfg::for_pc(below, above, cfg.cpus.max(1) as u16);
    if !order_file.is_empty() {
        let mut bytes = order_file.into_bytes();
        bytes.push(0);
        fw.add_file("bootorder", bytes);
    }
    if boot_menu {
        fw.add_item(fw_cfg::FW_CFG_BOOT_MENU, 1u16.to_le_bytes().to_vec());
    }
    // The PIT's IRQ 0 reaches I/O APIC pin 2, as on QEMU's PC: SeaBIOS's
    // MADT then says so with an interrupt source override.
    fw.add_file("etc/irq0-override", 1u64.to_le_bytes().to_vec());
    if let Some(rom) = vga_bios {
        fw.add_file("vgaroms/vgabios.bin", rom);
    }
    if let Some(port) = sercon_port {
        fw.add_file("etc/sercon-port", u64::from(port).to_le_bytes().to_vec());
    }
    add(&mut m, Box::new(fw), &[(0x510, 0x51B, 0x510)])?;
    add(
        &mut m,
        Box::new(post::PostCodes::new(cfg.post)),
        &[(0x80, 0x80, 0), (0x190, 0x190, 0)],
    )?;

    // The HPET at 0xFED00000 (the ACPI HPET table says where).
    let id = m.add_device(Box::new(hpet::Hpet::new(Rc::clone(&lines))));
    m.map_mmio(
        hpet::BASE,
        hpet::BASE + hpet::SIZE - 1,
        hpet::BASE,
        Owner::Device(id),
        0,
    )?;

    m.advance_devices();
    Ok(m)
}

/// Leaves the platform the way PC firmware would before it hands over to a
/// kernel it loaded itself (`--kernel`): nothing has run at the reset vector,
/// so this does firmware's share of the setup.
/// - The PIIX4 PM block is placed at [`acpi_pm::PM_IO_PORT`] and decoded, and
///   its SCI routed to IRQ 9, through PCI configuration space as firmware does
///   it (function 00:01.3, PMBA at 40h, PMREGMISC at 80h, interrupt line 3Ch).
/// - SCI_EN is set in PM1_CNT: the tables say the system is always in ACPI mode.
/// - The ACPI tables of [`crate::acpi_tables`] are written to the EBDA, and the
///   BIOS data area's EBDA pointer (0x40E) points there, where an OS looks for
///   the RSDP.
/// - The MP tables of [`crate::mp_table`] (for a kernel booted with
///   `acpi=off`) are written at 0xF0000, which is then left as read-only RAM
///   through PAM0 (i440FX config 0x59), as firmware leaves its shadowed BIOS.
///   `cpu_signature` and `cpu_features` are CPUID leaf 1's EAX and EDX.
pub fn prepare_direct_boot(m: &mut Machine, cpu_signature: u32, cpu_features: u32) {
    const PM_FN: u32 = 0x8000_0000 | (1 << 11) | (3 << 8);
    let cfg_write = |m: &mut Machine, reg: u32, size: usize, value: u32| {
        m.io_write(0xCF8, 4, PM_FN | (reg & 0xFC));
        m.io_write(0xCFC + (reg & 3) as u16, size, value);
    };
    cfg_write(m, 0x40, 4, u32::from(acpi_pm::PM_IO_PORT) | 1);
    cfg_write(m, 0x80, 1, 1);
    cfg_write(m, 0x3C, 1, u32::from(crate::acpi_tables::SCI_IRQ));
    m.io_write(0xCF8, 4, 0);
    m.io_write(acpi_pm::PM_IO_PORT + 4, 2, 1);

    let base = crate::acpi_tables::ACPI_AREA;
    let cpus = u32::try_from(m.lapics.len()).unwrap_or(1);
    m.mem.write_bytes(
        GuestPhys(u64::from(base)),
        &crate::acpi_tables::build(base, cpus),
    );
    let ebda_segment = u16::try_from(base >> 4).unwrap_or(0);
    m.mem.write(GuestPhys(0x40E), ebda_segment.to_le_bytes());

    // PAM0 (bits 5:4 govern 0xF0000-0xFFFFF): read/write RAM while the MP
    // tables are written, then read-only RAM.
    let pam0 = |m: &mut Machine, v: u32| {
        m.io_write(0xCF8, 4, 0x8000_0000 | 0x58);
        m.io_write(0xCFD, 1, v);
        m.io_write(0xCF8, 4, 0);
    };
    pam0(m, 0x30);
    let mp = crate::mp_table::MP_AREA;
    m.mem.write_bytes(
        GuestPhys(u64::from(mp)),
        &crate::mp_table::build(
            mp,
            cpus,
            cpu_signature,
            cpu_features,
            crate::acpi_tables::SCI_IRQ as u8,
        ),
    );
    pam0(m, 0x10);
}
