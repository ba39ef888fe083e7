//! The PIIX3 IDE controller (PCI function 1.1, 8086:7010) with its ATA hard
//! disks and ATAPI CD-ROMs: what SeaBIOS, GRUB, ISOLINUX and Linux's ata_piix
//! drive.
//!
//! Sources: the 82371SB (PIIX3) datasheet (the function's configuration
//! space, IDETIM, the bus master registers), ATA/ATAPI-6 (the task file,
//! the command protocols, IDENTIFY DEVICE and IDENTIFY PACKET DEVICE, the
//! 48-bit address FIFO), SFF-8038i (bus master DMA and its PRD table), and
//! MMC-3 / SPC-3 (the packet commands).
//!
//! The function is in compatibility mode (programming interface 0x80): the
//! primary channel at ports 0x1F0-0x1F7 and 0x3F6 on ISA IRQ 14, the
//! secondary at 0x170-0x177 and 0x376 on IRQ 15; BAR 4 holds the two
//! channels' bus master registers (8 bytes each). IDETIM's decode enable
//! bits read 1 from reset, as firmware sets them (SeaBIOS writes 0x8000), so
//! a kernel booted directly finds both channels; the legacy ports decode
//! either way.
//!
//! Every command completes when it is issued, at that virtual time: a PIO
//! read has its first block ready, a DMA transfer runs when both the command
//! and the bus master's start bit are given, a flush has reached the host
//! disk. Runs stay deterministic, and no guest waits on the host.
//!
//! Errors the guest causes (an LBA past the end, a command the drive does
//! not have) are reported as hardware does (ERR and ABRT/IDNF in the task
//! file, CHECK CONDITION with sense data for ATAPI); a host I/O error is
//! reported to the guest as an uncorrectable medium error.

use super::pci_endpoint::{BarDef, BarKind, EndpointId, PciEndpoint};
use crate::block::BlockBackend;
use crate::device::{DevCtx, Device, IrqLine};
use crate::GuestPhys;
use std::cell::RefCell;
use std::rc::Rc;

/// PCI IDs of the PIIX3 IDE function.
pub const VENDOR: u16 = 0x8086;
/// PCI device ID.
pub const DEVICE: u16 = 0x7010;
/// The PCI slot and function.
pub const SLOT: u8 = 1;
/// The function number.
pub const FUNCTION: u8 = 1;

/// Regions: BAR 4 (bus master) is region 4 as the host bridge maps it; the
/// legacy ranges get their own.
pub const REGION_BMIDE: u8 = 4;
/// Command block of channel `c` is region `REGION_CMD + 2c`, its control
/// block (alternate status / device control) `REGION_CMD + 2c + 1`.
pub const REGION_CMD: u8 = 8;
/// The legacy command and control block ports and the IRQ of each channel.
pub const LEGACY: [(u16, u16, u8); 2] = [(0x1F0, 0x3F6, 14), (0x170, 0x376, 15)];

/// Status register bits.
mod st {
    pub const ERR: u8 = 0x01;
    pub const DRQ: u8 = 0x08;
    pub const DSC: u8 = 0x10;
    pub const DRDY: u8 = 0x40;
}

/// Error register bits.
mod er {
    pub const ABRT: u8 = 0x04;
    pub const IDNF: u8 = 0x10;
    pub const UNC: u8 = 0x40;
}

/// Device control register bits.
const CTL_NIEN: u8 = 0x02;
const CTL_SRST: u8 = 0x04;
const CTL_HOB: u8 = 0x80;

/// Device register bit 4 selects drive 1, bit 6 LBA addressing.
const DEV_DRV: u8 = 0x10;
const DEV_LBA: u8 = 0x40;

/// ATAPI interrupt reason (in the sector count register).
const IR_COD: u8 = 0x01;
const IR_IO: u8 = 0x02;

/// Bus master command and status bits.
const BM_START: u8 = 0x01;
const BM_READ: u8 = 0x08;
const BM_ACTIVE: u8 = 0x01;
const BM_ERROR: u8 = 0x02;
const BM_INTR: u8 = 0x04;
/// Status bits 5 and 6: drive 0 / drive 1 DMA capable (firmware sets them).
const BM_CAPABLE: u8 = 0x60;

/// Sectors per block of READ/WRITE MULTIPLE at most.
const MAX_MULTIPLE: u16 = 16;
/// A CD sector.
const CD_SECTOR: u64 = 2048;
/// The logical geometry a disk reports (and CHS addressing uses until
/// INITIALIZE DEVICE PARAMETERS changes it).
const HEADS: u64 = 16;
const SPT: u64 = 63;

/// What kind of drive sits at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Media {
    /// An ATA hard disk.
    Disk,
    /// An ATAPI CD-ROM drive with a disc in it.
    Cdrom,
}

/// A drive to attach: its medium and where it sits (channel 0/1, unit 0/1).
pub struct DriveSpec {
    /// Disk or CD.
    pub media: Media,
    /// The medium's contents.
    pub backend: Box<dyn BlockBackend>,
    /// 0 primary, 1 secondary.
    pub channel: u8,
    /// 0 master, 1 slave.
    pub unit: u8,
}

/// A data transfer in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Xfer {
    /// None: the data port reads 0xFFFF... (bus hold) and drops writes.
    Idle,
    /// PIO data to the host from `buf`; `left` more sectors at `lba` after
    /// it (ATA), or CD sectors (ATAPI, chunked by the byte count).
    PioIn,
    /// PIO data from the host into `buf`, `left` sectors from `lba`.
    PioOut,
    /// Waiting for the 12 bytes of an ATAPI packet.
    Packet,
    /// A DMA transfer the bus master will run: to memory (read) or from it.
    Dma { to_memory: bool },
}

/// What happens when the host has moved all of `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum After {
    /// The command is done.
    Done,
    /// Read or write the next block of an ATA command.
    AtaBlock,
    /// The next chunk of an ATAPI read.
    AtapiChunk,
}

/// What sits at a drive position: its kind and medium, or nothing.
type Slot = Option<(Media, Box<dyn BlockBackend>)>;

/// A drive's registers and state.
struct Drive {
    media: Slot,
    // The task file (each drive latches every write, as on the cable).
    feature: u8,
    nsector: u8,
    sector: u8,
    lcyl: u8,
    hcyl: u8,
    // The previous values, for 48-bit commands (the HOB).
    hob_feature: u8,
    hob_nsector: u8,
    hob_sector: u8,
    hob_lcyl: u8,
    hob_hcyl: u8,
    select: u8,
    status: u8,
    error: u8,
    // The transfer.
    xfer: Xfer,
    after: After,
    buf: Vec<u8>,
    pos: usize,
    /// The ATA block size in sectors (1, or the multiple count).
    block: u64,
    lba: u64,
    left: u64,
    write: bool,
    multiple: u16,
    heads: u64,
    spt: u64,
    /// ATAPI: sense key, ASC, ASCQ of the last command.
    sense: (u8, u8, u8),
    /// ATAPI: the byte count limit of the current packet command.
    byte_limit: usize,
    /// Whether the last command used 48-bit addressing.
    last_ext: bool,
    /// ATAPI: the packet command transfers its data by DMA.
    dma: bool,
    /// ATAPI: data of a reply not yet handed out in chunks.
    pending: Vec<u8>,
    /// Serial number text.
    serial: String,
}

impl Drive {
    fn new(media: Slot, serial: String) -> Self {
        let mut d = Self {
            media,
            feature: 0,
            nsector: 0,
            sector: 0,
            lcyl: 0,
            hcyl: 0,
            hob_feature: 0,
            hob_nsector: 0,
            hob_sector: 0,
            hob_lcyl: 0,
            hob_hcyl: 0,
            select: 0xA0,
            status: 0,
            error: 0,
            xfer: Xfer::Idle,
            after: After::Done,
            buf: Vec::new(),
            pos: 0,
            block: 1,
            lba: 0,
            left: 0,
            write: false,
            multiple: 0,
            heads: HEADS,
            spt: SPT,
            sense: (0, 0, 0),
            byte_limit: 0,
            last_ext: false,
            dma: false,
            pending: Vec::new(),
            serial,
        };
        d.reset();
        d
    }

    fn kind(&self) -> Option<Media> {
        self.media.as_ref().map(|(m, _)| *m)
    }

    fn sectors(&self) -> u64 {
        self.media.as_ref().map_or(0, |(_, b)| b.size() / 512)
    }

    fn cd_sectors(&self) -> u64 {
        self.media.as_ref().map_or(0, |(_, b)| b.size() / CD_SECTOR)
    }

    /// The power-on / reset state: the signature that tells ATA from ATAPI
    /// (ATA/ATAPI-6 §9.12), diagnostics passed.
    fn reset(&mut self) {
        self.reset_signature();
        self.error = 1;
        self.status = if self.media.is_some() {
            st::DRDY | st::DSC
        } else {
            0
        };
        self.xfer = Xfer::Idle;
        self.buf.clear();
        self.pos = 0;
        self.multiple = 0;
        self.heads = HEADS;
        self.spt = SPT;
        self.sense = (0, 0, 0);
    }

    /// The 28-bit or CHS address of a command.
    fn address28(&self) -> u64 {
        if self.select & DEV_LBA != 0 {
            u64::from(self.select & 0x0F) << 24
                | u64::from(self.hcyl) << 16
                | u64::from(self.lcyl) << 8
                | u64::from(self.sector)
        } else {
            let cyl = u64::from(self.hcyl) << 8 | u64::from(self.lcyl);
            let head = u64::from(self.select & 0x0F);
            let sector = u64::from(self.sector);
            if sector == 0 {
                return u64::MAX;
            }
            (cyl * self.heads + head) * self.spt + sector - 1
        }
    }

    fn address48(&self) -> u64 {
        u64::from(self.hob_hcyl) << 40
            | u64::from(self.hob_lcyl) << 32
            | u64::from(self.hob_sector) << 24
            | u64::from(self.hcyl) << 16
            | u64::from(self.lcyl) << 8
            | u64::from(self.sector)
    }

    /// Writes `lba` back into the task file (the last sector transferred, or
    /// the native max address), in the form the command used.
    fn set_address(&mut self, lba: u64, ext: bool) {
        if self.select & DEV_LBA != 0 || ext {
            self.sector = lba as u8;
            self.lcyl = (lba >> 8) as u8;
            self.hcyl = (lba >> 16) as u8;
            if ext {
                self.hob_sector = (lba >> 24) as u8;
                self.hob_lcyl = (lba >> 32) as u8;
                self.hob_hcyl = (lba >> 40) as u8;
            } else {
                self.select = (self.select & 0xF0) | ((lba >> 24) as u8 & 0x0F);
            }
        } else {
            let cyl = lba / (self.heads * self.spt);
            let rest = lba % (self.heads * self.spt);
            self.select = (self.select & 0xF0) | (rest / self.spt) as u8;
            self.sector = (rest % self.spt + 1) as u8;
            self.lcyl = cyl as u8;
            self.hcyl = (cyl >> 8) as u8;
        }
    }

    fn count28(&self) -> u64 {
        if self.nsector == 0 {
            256
        } else {
            u64::from(self.nsector)
        }
    }

    fn count48(&self) -> u64 {
        let n = u64::from(self.hob_nsector) << 8 | u64::from(self.nsector);
        if n == 0 {
            65536
        } else {
            n
        }
    }

    fn abort(&mut self) {
        self.error = er::ABRT;
        self.status = st::DRDY | st::DSC | st::ERR;
        self.xfer = Xfer::Idle;
    }

    fn done(&mut self) {
        self.error = 0;
        self.status = st::DRDY | st::DSC;
        self.xfer = Xfer::Idle;
    }
}

/// One IDE channel: two drive positions, the device control register, its
/// interrupt line and its half of the bus master.
struct Channel {
    drives: [Drive; 2],
    /// The drive the device register last selected.
    cur: usize,
    control: u8,
    irq: IrqLine,
    /// INTRQ as the selected drive drives it (before nIEN).
    intrq: bool,
    bm_command: u8,
    bm_status: u8,
    bm_prdt: u32,
}

/// The IDE function.
pub struct Ide {
    config: Rc<RefCell<PciEndpoint>>,
    channels: [Channel; 2],
}

/// The IDE function's saved state (see [`crate::snapshot`]): its PCI
/// configuration space and both channels with their drives.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IdeState {
    config: PciEndpoint,
    channels: [ChannelState; 2],
}

/// A channel's saved state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct ChannelState {
    drives: [DriveState; 2],
    cur: usize,
    control: u8,
    intrq: bool,
    bm_command: u8,
    bm_status: u8,
    bm_prdt: u32,
}

/// A drive's saved state: its registers, the transfer in progress, and its
/// medium's (see [`crate::block::DiskState`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct DriveState {
    media: Option<(Media, crate::block::DiskState)>,
    feature: u8,
    nsector: u8,
    sector: u8,
    lcyl: u8,
    hcyl: u8,
    hob_feature: u8,
    hob_nsector: u8,
    hob_sector: u8,
    hob_lcyl: u8,
    hob_hcyl: u8,
    select: u8,
    status: u8,
    error: u8,
    xfer: Xfer,
    after: After,
    buf: Vec<u8>,
    pos: usize,
    block: u64,
    lba: u64,
    left: u64,
    write: bool,
    multiple: u16,
    heads: u64,
    spt: u64,
    sense: (u8, u8, u8),
    byte_limit: usize,
    last_ext: bool,
    dma: bool,
    pending: Vec<u8>,
    serial: String,
}

impl Drive {
    fn save(&mut self) -> std::io::Result<DriveState> {
        let Self {
            media,
            feature,
            nsector,
            sector,
            lcyl,
            hcyl,
            hob_feature,
            hob_nsector,
            hob_sector,
            hob_lcyl,
            hob_hcyl,
            select,
            status,
            error,
            xfer,
            after,
            buf,
            pos,
            block,
            lba,
            left,
            write,
            multiple,
            heads,
            spt,
            sense,
            byte_limit,
            last_ext,
            dma,
            pending,
            serial,
        } = self;
        let media = match media {
            Some((kind, b)) => Some((*kind, b.save_state()?)),
            None => None,
        };
        Ok(DriveState {
            media,
            feature: Clone::clone(feature),
            nsector: Clone::clone(nsector),
            sector: Clone::clone(sector),
            lcyl: Clone::clone(lcyl),
            hcyl: Clone::clone(hcyl),
            hob_feature: Clone::clone(hob_feature),
            hob_nsector: Clone::clone(hob_nsector),
            hob_sector: Clone::clone(hob_sector),
            hob_lcyl: Clone::clone(hob_lcyl),
            hob_hcyl: Clone::clone(hob_hcyl),
            select: Clone::clone(select),
            status: Clone::clone(status),
            error: Clone::clone(error),
            xfer: Clone::clone(xfer),
            after: Clone::clone(after),
            buf: Clone::clone(buf),
            pos: Clone::clone(pos),
            block: Clone::clone(block),
            lba: Clone::clone(lba),
            left: Clone::clone(left),
            write: Clone::clone(write),
            multiple: Clone::clone(multiple),
            heads: Clone::clone(heads),
            spt: Clone::clone(spt),
            sense: Clone::clone(sense),
            byte_limit: Clone::clone(byte_limit),
            last_ext: Clone::clone(last_ext),
            dma: Clone::clone(dma),
            pending: Clone::clone(pending),
            serial: Clone::clone(serial),
        })
    }

    fn restore(&mut self, s: &DriveState) -> Result<(), String> {
        let DriveState {
            media,
            feature,
            nsector,
            sector,
            lcyl,
            hcyl,
            hob_feature,
            hob_nsector,
            hob_sector,
            hob_lcyl,
            hob_hcyl,
            select,
            status,
            error,
            xfer,
            after,
            buf,
            pos,
            block,
            lba,
            left,
            write,
            multiple,
            heads,
            spt,
            sense,
            byte_limit,
            last_ext,
            dma,
            pending,
            serial,
        } = s.clone();
        match (&mut self.media, media) {
            (None, None) => {}
            (Some((kind, b)), Some((saved_kind, disk))) if *kind == saved_kind => {
                b.restore_state(&disk)?
            }
            (now, then) => {
                return Err(format!(
                    "the drive is {:?} here and was {:?} in the snapshot",
                    now.as_ref().map(|(k, _)| *k),
                    then.map(|(k, _)| k)
                ))
            }
        }
        self.feature = feature;
        self.nsector = nsector;
        self.sector = sector;
        self.lcyl = lcyl;
        self.hcyl = hcyl;
        self.hob_feature = hob_feature;
        self.hob_nsector = hob_nsector;
        self.hob_sector = hob_sector;
        self.hob_lcyl = hob_lcyl;
        self.hob_hcyl = hob_hcyl;
        self.select = select;
        self.status = status;
        self.error = error;
        self.xfer = xfer;
        self.after = after;
        self.buf = buf;
        self.pos = pos;
        self.block = block;
        self.lba = lba;
        self.left = left;
        self.write = write;
        self.multiple = multiple;
        self.heads = heads;
        self.spt = spt;
        self.sense = sense;
        self.byte_limit = byte_limit;
        self.last_ext = last_ext;
        self.dma = dma;
        self.pending = pending;
        self.serial = serial;
        Ok(())
    }
}

impl Channel {
    fn save(&mut self) -> std::io::Result<ChannelState> {
        let Self {
            drives: [d0, d1],
            cur,
            control,
            irq: _,
            intrq,
            bm_command,
            bm_status,
            bm_prdt,
        } = self;
        Ok(ChannelState {
            drives: [d0.save()?, d1.save()?],
            cur: *cur,
            control: *control,
            intrq: *intrq,
            bm_command: *bm_command,
            bm_status: *bm_status,
            bm_prdt: *bm_prdt,
        })
    }

    fn restore(&mut self, s: &ChannelState) -> Result<(), String> {
        let ChannelState {
            drives,
            cur,
            control,
            intrq,
            bm_command,
            bm_status,
            bm_prdt,
        } = s;
        for (unit, (d, saved)) in self.drives.iter_mut().zip(drives).enumerate() {
            d.restore(saved).map_err(|e| format!("unit {unit}: {e}"))?;
        }
        (self.cur, self.control, self.intrq) = (*cur, *control, *intrq);
        (self.bm_command, self.bm_status, self.bm_prdt) = (*bm_command, *bm_status, *bm_prdt);
        Ok(())
    }
}

/// The configuration space of the PIIX3 IDE function.
pub fn config_space() -> PciEndpoint {
    PciEndpoint::new(
        EndpointId {
            vendor: VENDOR,
            device: DEVICE,
            revision: 0,
            // Mass storage, IDE, compatibility mode with bus mastering.
            class: 0x01_01_80,
            subsystem: (0, 0),
            pin: 0,
        },
        &[(
            usize::from(REGION_BMIDE),
            BarDef {
                kind: BarKind::Io,
                size: 16,
            },
        )],
        false,
    )
    // IDETIM, primary and secondary (bit 15: decode enable), and SIDETIM.
    .with_register(0x40, 2, 0x8000, 0xFFFF)
    .with_register(0x42, 2, 0x8000, 0xFFFF)
    .with_register(0x44, 1, 0, 0xFF)
}

impl Ide {
    /// The controller with `drives` attached, interrupting on `irqs`
    /// (IRQ 14 and 15), its configuration space shared with the host bridge.
    pub fn new(
        config: Rc<RefCell<PciEndpoint>>,
        irqs: [IrqLine; 2],
        drives: Vec<DriveSpec>,
    ) -> Self {
        let mut slots: [[Slot; 2]; 2] = Default::default();
        for d in drives {
            slots[usize::from(d.channel & 1)][usize::from(d.unit & 1)] = Some((d.media, d.backend));
        }
        let [i0, i1] = irqs;
        let mut n = 0;
        let mut channel = |slots: [Slot; 2], irq: IrqLine| {
            let [a, b] = slots;
            let mut drive = |m| {
                n += 1;
                Drive::new(m, format!("X86BT{n:05}"))
            };
            let drives = [drive(a), drive(b)];
            let capable = drives
                .iter()
                .enumerate()
                .filter(|(_, d)| d.media.is_some())
                .fold(0, |acc, (i, _)| acc | (0x20 << i));
            Channel {
                drives,
                cur: 0,
                control: 0,
                irq,
                intrq: false,
                bm_command: 0,
                bm_status: capable & BM_CAPABLE,
                bm_prdt: 0,
            }
        };
        let [s0, s1] = slots;
        let c0 = channel(s0, i0);
        let c1 = channel(s1, i1);
        Self {
            config,
            channels: [c0, c1],
        }
    }

    /// Reads a register of channel `c`'s command block.
    fn cmd_read(&mut self, c: usize, offset: u64, data: &mut [u8]) {
        let ch = &mut self.channels[c];
        if offset == 0 {
            ch.data_read(data);
            return;
        }
        let none = ch.drives.iter().all(|d| d.media.is_none());
        let hob = ch.control & CTL_HOB != 0;
        let d = &ch.drives[ch.cur];
        // A position with no drive answers 0 for the registers only a drive
        // drives (as the other drive does for it); a channel with no drive
        // at all reads 0 too (the firmware's probe then finds nothing).
        let absent = d.media.is_none();
        let v = match offset {
            1 if none || absent => 0,
            1 => {
                if hob {
                    d.hob_feature
                } else {
                    d.error
                }
            }
            2 if hob => d.hob_nsector,
            2 => d.nsector,
            3 if hob => d.hob_sector,
            3 => d.sector,
            4 if hob => d.hob_lcyl,
            4 => d.lcyl,
            5 if hob => d.hob_hcyl,
            5 => d.hcyl,
            6 => d.select,
            _ if none || absent => 0,
            _ => {
                // Reading the status register acknowledges the interrupt.
                let s = d.status;
                ch.intrq = false;
                ch.update_irq();
                s
            }
        };
        data.fill(0);
        data[0] = v;
    }

    /// Writes a register of channel `c`'s command block.
    fn cmd_write(&mut self, ctx: &mut DevCtx, c: usize, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.channels[c].data_write(data);
            self.try_dma(ctx, c);
            return;
        }
        let v = data[0];
        let ch = &mut self.channels[c];
        ch.control &= !CTL_HOB;
        for d in &mut ch.drives {
            // Each task-file register is a two-deep FIFO: the previous value
            // becomes the "high order byte" of a 48-bit command.
            use std::mem::replace;
            match offset {
                1 => d.hob_feature = replace(&mut d.feature, v),
                2 => d.hob_nsector = replace(&mut d.nsector, v),
                3 => d.hob_sector = replace(&mut d.sector, v),
                4 => d.hob_lcyl = replace(&mut d.lcyl, v),
                5 => d.hob_hcyl = replace(&mut d.hcyl, v),
                6 => d.select = v | 0xA0,
                _ => {}
            }
        }
        match offset {
            6 => ch.cur = usize::from(v & DEV_DRV != 0),
            7
                // A command to an absent drive is ignored (nothing answers).
                if ch.drives[ch.cur].media.is_some() => {
                    ch.command(v);
                    self.try_dma(ctx, c);
                }
            _ => {}
        }
    }

    /// Channel `c`'s control block: alternate status (no acknowledge) and
    /// device control (nIEN, SRST, HOB).
    fn ctl_read(&mut self, c: usize, data: &mut [u8]) {
        let ch = &self.channels[c];
        let d = &ch.drives[ch.cur];
        data.fill(0);
        if d.media.is_some() {
            data[0] = d.status;
        }
    }

    fn ctl_write(&mut self, c: usize, v: u8) {
        let ch = &mut self.channels[c];
        let was_reset = ch.control & CTL_SRST != 0;
        ch.control = v;
        if v & CTL_SRST != 0 && !was_reset {
            // Software reset: both drives to their signature, drive 0
            // selected; no interrupt.
            for d in &mut ch.drives {
                d.reset();
                d.select = 0xA0;
            }
            ch.cur = 0;
            ch.intrq = false;
        }
        ch.update_irq();
    }

    /// The bus master registers: per channel command (0), status (2) and
    /// the PRD table address (4-7).
    fn bm_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            let ch = &self.channels[(o / 8) as usize & 1];
            *b = match o % 8 {
                0 => ch.bm_command,
                2 => ch.bm_status,
                4..=7 => ch.bm_prdt.to_le_bytes()[(o % 8 - 4) as usize],
                _ => 0,
            };
        }
    }

    fn bm_write(&mut self, ctx: &mut DevCtx, offset: u64, data: &[u8]) {
        let mut start = [false; 2];
        for (i, &v) in data.iter().enumerate() {
            let o = offset + i as u64;
            let c = (o / 8) as usize & 1;
            let ch = &mut self.channels[c];
            match o % 8 {
                0 => {
                    let was = ch.bm_command & BM_START != 0;
                    ch.bm_command = v & (BM_START | BM_READ);
                    if v & BM_START != 0 && !was {
                        ch.bm_status |= BM_ACTIVE;
                        start[c] = true;
                    } else if v & BM_START == 0 {
                        // Stopping the engine ends a transfer.
                        ch.bm_status &= !BM_ACTIVE;
                    }
                }
                2 => {
                    // Interrupt and error are write-1-to-clear; the two
                    // DMA-capable bits are the firmware's to set.
                    ch.bm_status = (ch.bm_status & !(v & (BM_INTR | BM_ERROR)) & !BM_CAPABLE)
                        | (v & BM_CAPABLE);
                }
                4..=7 => {
                    let mut b = ch.bm_prdt.to_le_bytes();
                    b[(o % 8 - 4) as usize] = v;
                    ch.bm_prdt = u32::from_le_bytes(b) & !3;
                }
                _ => {}
            }
        }
        for (c, s) in start.into_iter().enumerate() {
            if s {
                self.try_dma(ctx, c);
            }
        }
    }

    /// Runs the selected drive's DMA transfer if both the command and the
    /// engine are ready (either may come first).
    fn try_dma(&mut self, ctx: &mut DevCtx, c: usize) {
        let master = self.config.borrow().bus_master();
        let ch = &mut self.channels[c];
        let cur = ch.cur;
        let Xfer::Dma { to_memory } = ch.drives[cur].xfer else {
            return;
        };
        if ch.bm_status & BM_ACTIVE == 0 || ch.bm_command & BM_START == 0 {
            return;
        }
        if !master {
            ctx.guest_error("IDE: bus master DMA with bus mastering off".into());
            return;
        }
        // The data: a read's comes from the medium sector by sector as the
        // PRD table consumes it; a write's is gathered first.
        let total = ch.drives[cur].buf.len();
        let mut moved = 0usize;
        let mut prd = u64::from(ch.bm_prdt);
        let mut exhausted = false;
        let mut guard = 0;
        while moved < total {
            let mut e = [0u8; 8];
            ctx.dma_read(GuestPhys(prd), &mut e);
            let addr = u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & !1);
            let len = match u16::from_le_bytes([e[4], e[5]]) {
                0 => 0x1_0000,
                n => usize::from(n & !1),
            };
            let n = len.min(total - moved);
            let d = &mut ch.drives[cur];
            if to_memory {
                ctx.dma_write(GuestPhys(addr), &d.buf[moved..moved + n]);
            } else {
                ctx.dma_read(GuestPhys(addr), &mut d.buf[moved..moved + n]);
            }
            moved += n;
            prd += 8;
            guard += 1;
            if e[7] & 0x80 != 0 || guard > 0x10000 {
                exhausted = n == len;
                break;
            }
        }
        let d = &mut ch.drives[cur];
        d.xfer = Xfer::Idle;
        let short = moved < total;
        if short {
            // The PRD table ended before the transfer: an error for the
            // driver to see, and the engine stops.
            ch.bm_status |= BM_ERROR;
            d.abort();
        } else if to_memory || d.finish_dma_write() {
            d.complete_packet_or_done();
        }
        // The engine stops when the table is used up; with room left in it
        // it stays active (SFF-8038i: interrupt set, active set).
        if exhausted || short {
            ch.bm_status &= !BM_ACTIVE;
        }
        ch.raise();
    }
}

impl Channel {
    fn update_irq(&self) {
        self.irq
            .set_level(self.intrq && self.control & CTL_NIEN == 0);
    }

    /// The selected drive asks for attention: INTRQ, and the bus master's
    /// interrupt bit.
    fn raise(&mut self) {
        self.intrq = true;
        self.bm_status |= BM_INTR;
        self.update_irq();
    }

    fn data_read(&mut self, data: &mut [u8]) {
        let cur = self.cur;
        let d = &mut self.drives[cur];
        if d.xfer != Xfer::PioIn {
            data.fill(0xFF);
            return;
        }
        let n = data.len().min(d.buf.len() - d.pos);
        data[..n].copy_from_slice(&d.buf[d.pos..d.pos + n]);
        data[n..].fill(0xFF);
        d.pos += n;
        if d.pos >= d.buf.len() && d.next_in() {
            self.raise();
        }
    }

    fn data_write(&mut self, data: &[u8]) {
        let cur = self.cur;
        let d = &mut self.drives[cur];
        if !matches!(d.xfer, Xfer::PioOut | Xfer::Packet) {
            return;
        }
        let n = data.len().min(d.buf.len() - d.pos);
        d.buf[d.pos..d.pos + n].copy_from_slice(&data[..n]);
        d.pos += n;
        if d.pos < d.buf.len() {
            return;
        }
        if d.xfer == Xfer::Packet {
            d.xfer = Xfer::Idle;
            self.run_packet();
            return;
        }
        d.next_out();
        self.raise();
    }
}

/// The pieces of text IDENTIFY holds: ASCII, two characters a word, the
/// first in the high byte, padded with spaces.
fn put_string(words: &mut [u16], text: &str) {
    let bytes: Vec<u8> = text
        .bytes()
        .chain(std::iter::repeat(b' '))
        .take(words.len() * 2)
        .collect();
    for (w, pair) in words.iter_mut().zip(bytes.chunks(2)) {
        *w = u16::from(pair[0]) << 8 | u16::from(pair[1]);
    }
}

fn words_to_bytes(words: &[u16; 256]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl Drive {
    /// IDENTIFY DEVICE (ATA/ATAPI-6 §8.15).
    fn identify(&self) -> Vec<u8> {
        let mut w = [0u16; 256];
        let sectors = self.sectors();
        let cyls = (sectors / (HEADS * SPT)).clamp(1, 16383);
        w[0] = 0x0040;
        w[1] = cyls as u16;
        w[3] = HEADS as u16;
        w[6] = SPT as u16;
        put_string(&mut w[10..20], &self.serial);
        put_string(&mut w[23..27], "1.0");
        put_string(&mut w[27..47], "X86BT HARDDISK");
        w[47] = 0x8000 | MAX_MULTIPLE;
        w[49] = 0x0300; // LBA, DMA
        w[50] = 0x4000;
        w[51] = 0x0200; // PIO timing mode 2
        w[53] = 0x0007; // words 54-58, 64-70 and 88 are valid
        let cur_cyls = (sectors / (self.heads * self.spt)).clamp(1, 65535);
        w[54] = cur_cyls as u16;
        w[55] = self.heads as u16;
        w[56] = self.spt as u16;
        let chs = (cur_cyls * self.heads * self.spt).min(sectors) as u32;
        w[57] = chs as u16;
        w[58] = (chs >> 16) as u16;
        w[59] = if self.multiple != 0 {
            0x0100 | self.multiple
        } else {
            0
        };
        let lba28 = sectors.min(0x0FFF_FFFF) as u32;
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[63] = 0x0407; // multiword DMA 0-2 supported, mode 2 selected
        w[64] = 0x0003; // PIO 3 and 4
        w[65..69].copy_from_slice(&[120, 120, 120, 120]);
        w[80] = 0x00F0; // ATA-4 to ATA-7
        w[82] = 0x0060; // write cache, look-ahead
        w[83] = 0x7400; // 48-bit, FLUSH CACHE, FLUSH CACHE EXT
        w[84] = 0x4000;
        w[85] = 0x0060;
        w[86] = 0x3400;
        w[87] = 0x4000;
        w[88] = 0x003F; // Ultra DMA 0-5 supported, none selected
        w[93] = 0x4000 | 0x0001; // the device's reset result: valid
        w[100..104].copy_from_slice(&[
            sectors as u16,
            (sectors >> 16) as u16,
            (sectors >> 32) as u16,
            (sectors >> 48) as u16,
        ]);
        words_to_bytes(&w)
    }

    /// IDENTIFY PACKET DEVICE (ATA/ATAPI-6 §8.16).
    fn identify_packet(&self) -> Vec<u8> {
        let mut w = [0u16; 256];
        // ATAPI, CD-ROM device, removable, 50 us DRQ, 12-byte packets.
        w[0] = 0x85C0;
        put_string(&mut w[10..20], &self.serial);
        put_string(&mut w[23..27], "1.0");
        put_string(&mut w[27..47], "X86BT DVD-ROM");
        w[49] = 0x0300; // LBA, DMA
        w[53] = 0x0007;
        w[63] = 0x0407;
        w[64] = 0x0003;
        w[65..69].copy_from_slice(&[120, 120, 120, 120]);
        w[80] = 0x00F0;
        w[82] = 0x0210; // PACKET, DEVICE RESET
        w[83] = 0x4000;
        w[84] = 0x4000;
        w[85] = 0x0210;
        w[87] = 0x4000;
        w[88] = 0x003F;
        words_to_bytes(&w)
    }

    /// Starts a PIO transfer to the host of `data`, interrupting.
    fn pio_in(&mut self, data: Vec<u8>, after: After) {
        self.buf = data;
        self.pos = 0;
        self.xfer = Xfer::PioIn;
        self.after = after;
        self.error = 0;
        self.status = st::DRDY | st::DSC | st::DRQ;
    }

    /// Reads the next ATA block (at `lba`, up to `block` of `left` sectors)
    /// into `buf`; false (with the error set) if the medium fails.
    fn read_block(&mut self) -> bool {
        let n = self.block.min(self.left);
        let mut data = vec![0u8; (n * 512) as usize];
        let Some((_, b)) = self.media.as_mut() else {
            return false;
        };
        if b.read_at(self.lba * 512, &mut data).is_err() {
            self.error = er::UNC;
            self.status = st::DRDY | st::ERR;
            self.xfer = Xfer::Idle;
            return false;
        }
        self.lba += n;
        self.left -= n;
        self.pio_in(data, After::AtaBlock);
        true
    }

    /// After the host read all of `buf`: the next block or chunk, or the end.
    /// Returns whether that interrupts: each ATA block does, the end of an
    /// ATA read does not; every ATAPI chunk and the ATAPI status phase do.
    fn next_in(&mut self) -> bool {
        match self.after {
            After::AtaBlock if self.left > 0 => self.read_block(),
            After::AtaBlock => {
                self.set_address(self.lba - 1, self.last_ext);
                self.done();
                false
            }
            After::AtapiChunk if self.left > 0 || !self.pending.is_empty() => {
                self.atapi_chunk();
                true
            }
            _ if self.kind() == Some(Media::Cdrom) => {
                self.atapi_ok();
                true
            }
            _ => {
                self.done();
                false
            }
        }
    }

    /// Sets up the next block of a PIO write.
    fn expect_out(&mut self) {
        let n = self.block.min(self.left);
        self.buf = vec![0u8; (n * 512) as usize];
        self.pos = 0;
        self.xfer = Xfer::PioOut;
        self.status = st::DRDY | st::DSC | st::DRQ;
    }

    /// After the host wrote all of `buf`: write it out, then the next block
    /// or the end.
    fn next_out(&mut self) {
        let n = (self.buf.len() / 512) as u64;
        let ok = match self.media.as_mut() {
            Some((_, b)) => b.write_at(self.lba * 512, &self.buf).is_ok(),
            None => false,
        };
        if !ok {
            self.error = er::UNC;
            self.status = st::DRDY | st::ERR;
            self.xfer = Xfer::Idle;
            return;
        }
        self.lba += n;
        self.left -= n;
        if self.left > 0 {
            self.expect_out();
        } else {
            self.set_address(self.lba - 1, self.last_ext);
            self.done();
        }
    }

    /// Writes a completed DMA write's data to the medium.
    fn finish_dma_write(&mut self) -> bool {
        let ok = match self.media.as_mut() {
            Some((_, b)) => b.write_at(self.lba * 512, &self.buf).is_ok(),
            None => false,
        };
        if !ok {
            self.error = er::UNC;
            self.status = st::DRDY | st::ERR;
        }
        ok
    }

    fn complete_packet_or_done(&mut self) {
        if self.kind() == Some(Media::Cdrom) {
            self.atapi_ok();
        } else {
            self.set_address(self.lba + self.left.max(1) - 1, self.last_ext);
            self.done();
        }
    }
}

impl Channel {
    /// Executes an ATA command on the selected drive.
    fn command(&mut self, cmd: u8) {
        let cur = self.cur;
        let cd = self.drives[cur].kind() == Some(Media::Cdrom);
        let d = &mut self.drives[cur];
        d.xfer = Xfer::Idle;
        d.buf.clear();
        d.pos = 0;
        d.last_ext = false;
        let interrupt = match (cmd, cd) {
            (0xEC, false) => {
                let data = d.identify();
                d.pio_in(data, After::Done);
                true
            }
            (0xEC, true) => {
                // An ATAPI device aborts IDENTIFY DEVICE and shows its
                // signature (ATA/ATAPI-6 §8.15.1).
                d.reset_signature();
                d.abort();
                true
            }
            (0xA1, true) => {
                let data = d.identify_packet();
                d.pio_in(data, After::Done);
                true
            }
            (0x08, true) => {
                // DEVICE RESET: no interrupt.
                d.reset();
                false
            }
            (0xA0, true) => {
                // PACKET: the command bytes come next, no interrupt (50 us
                // DRQ); byte count limit in the cylinder registers.
                d.byte_limit = usize::from(u16::from(d.hcyl) << 8 | u16::from(d.lcyl));
                d.dma = d.feature & 1 != 0;
                d.buf = vec![0u8; 12];
                d.pos = 0;
                d.xfer = Xfer::Packet;
                d.nsector = IR_COD;
                d.status = st::DRDY | st::DRQ;
                false
            }
            // READ/WRITE SECTORS and MULTIPLE, 28- and 48-bit (PIO).
            (0x20 | 0x21 | 0xC4 | 0x24 | 0x29 | 0x30 | 0x31 | 0xC5 | 0x34 | 0x39, false) => {
                let write = matches!(cmd, 0x30 | 0x31 | 0xC5 | 0x34 | 0x39);
                let ext = matches!(cmd, 0x24 | 0x29 | 0x34 | 0x39);
                let multiple = matches!(cmd, 0xC4 | 0x29 | 0xC5 | 0x39);
                if multiple && d.multiple == 0 {
                    d.abort();
                    true
                } else if d.start(ext, write) {
                    d.block = if multiple { d.multiple.into() } else { 1 };
                    if write {
                        // The first block needs no interrupt (PIO data-out).
                        d.expect_out();
                        false
                    } else {
                        d.read_block();
                        true
                    }
                } else {
                    true
                }
            }
            (0xC8 | 0xC9 | 0x25 | 0xCA | 0xCB | 0x35, false) => {
                let ext = matches!(cmd, 0x25 | 0x35);
                let write = matches!(cmd, 0xCA | 0xCB | 0x35);
                if d.start(ext, write) {
                    d.prepare_dma(write);
                    false
                } else {
                    true
                }
            }
            (0x40..=0x42, false) => {
                // READ VERIFY: the range must exist.
                if d.start(cmd == 0x42, false) {
                    d.lba += d.left;
                    d.left = 0;
                    d.set_address(d.lba - 1, d.last_ext);
                    d.done();
                }
                true
            }
            (0xE7 | 0xEA, _) => {
                let ok = d.media.as_mut().is_none_or(|(_, b)| b.flush().is_ok());
                if ok {
                    d.done();
                } else {
                    d.error = er::UNC;
                    d.status = st::DRDY | st::ERR;
                }
                true
            }
            (0xC6, false) => {
                let n = u16::from(d.nsector);
                if n == 0 || n.is_power_of_two() && n <= MAX_MULTIPLE {
                    d.multiple = n;
                    d.done();
                } else {
                    d.abort();
                }
                true
            }
            (0x91, false) => {
                d.heads = u64::from(d.select & 0x0F) + 1;
                d.spt = u64::from(d.nsector).max(1);
                d.done();
                true
            }
            (0xF8, false) | (0x27, false) => {
                let max = d.sectors().saturating_sub(1);
                d.set_address(max, cmd == 0x27);
                d.done();
                true
            }
            (0x90, _) => {
                // EXECUTE DEVICE DIAGNOSTIC: both drives' signatures.
                for d in &mut self.drives {
                    if d.media.is_some() {
                        d.reset_signature();
                        d.error = 1;
                        d.status = if d.kind() == Some(Media::Cdrom) {
                            0
                        } else {
                            st::DRDY | st::DSC
                        };
                    }
                }
                true
            }
            (0xEF, _) => {
                d.done();
                true
            }
            (0xE5, _) => {
                d.nsector = 0xFF;
                d.done();
                true
            }
            (0xE0..=0xE3 | 0x94..=0x97 | 0xE6 | 0x99 | 0x10..=0x1F | 0x70, false) => {
                d.done();
                true
            }
            (0xE0 | 0xE1 | 0xE3, true) => {
                d.done();
                true
            }
            _ => {
                d.abort();
                true
            }
        };
        if interrupt {
            self.raise();
        }
    }
}

impl Drive {
    /// Checks and latches the range of a read or write: false (aborted with
    /// IDNF) when it runs past the end.
    fn start(&mut self, ext: bool, write: bool) -> bool {
        let (lba, count) = if ext {
            (self.address48(), self.count48())
        } else {
            (self.address28(), self.count28())
        };
        self.last_ext = ext;
        self.write = write;
        let ro = self.media.as_ref().is_some_and(|(_, b)| b.read_only());
        if write && ro {
            self.abort();
            return false;
        }
        if lba
            .checked_add(count)
            .is_none_or(|end| end > self.sectors())
        {
            self.error = er::IDNF | er::ABRT;
            self.status = st::DRDY | st::ERR;
            return false;
        }
        self.lba = lba;
        self.left = count;
        true
    }

    /// Prepares an ATA DMA transfer of the latched range: a read's data is
    /// read now, a write's buffer waits for the bus master.
    fn prepare_dma(&mut self, write: bool) {
        let bytes = (self.left * 512) as usize;
        self.buf = vec![0u8; bytes];
        if !write {
            let Some((_, b)) = self.media.as_mut() else {
                return;
            };
            if b.read_at(self.lba * 512, &mut self.buf).is_err() {
                self.error = er::UNC;
                self.status = st::DRDY | st::ERR;
                return;
            }
        }
        self.xfer = Xfer::Dma { to_memory: !write };
        self.status = st::DRDY | st::DSC | st::DRQ;
    }

    fn reset_signature(&mut self) {
        self.nsector = 1;
        self.sector = 1;
        (self.lcyl, self.hcyl) = match self.kind() {
            Some(Media::Cdrom) => (0x14, 0xEB),
            _ => (0, 0),
        };
    }
}

/// Sense keys and additional sense codes (SPC-3 §4.5.6, MMC-3 annex F).
mod sense {
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const INVALID_OPCODE: u8 = 0x20;
    pub const LBA_OUT_OF_RANGE: u8 = 0x21;
    pub const INVALID_FIELD: u8 = 0x24;
    pub const UNRECOVERED_READ: u8 = 0x11;
    pub const NO_MEDIUM: u8 = 0x3A;
}

/// What a packet command answers.
enum Reply {
    /// Success, no data.
    Nothing,
    /// Data to the host (already cut to the allocation length).
    Data(Vec<u8>),
    /// `count` CD sectors from `lba`.
    Read { lba: u64, count: u64 },
}

/// A failed packet command: sense key, ASC, ASCQ.
type Sense = (u8, u8, u8);

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A logical block address as minutes, seconds, frames (MMC-3 §4.2.3.2:
/// 75 frames a second, LBA 0 at 00:02:00).
fn msf(lba: u64) -> [u8; 4] {
    let f = lba + 150;
    [0, (f / 75 / 60) as u8, (f / 75 % 60) as u8, (f % 75) as u8]
}

impl Channel {
    /// Runs the packet the host just wrote on the selected drive and starts
    /// its data or status phase.
    fn run_packet(&mut self) {
        let cur = self.cur;
        let d = &mut self.drives[cur];
        let mut cdb = [0u8; 12];
        cdb.copy_from_slice(&d.buf[..12]);
        match d.atapi(&cdb) {
            Ok(Reply::Nothing) => d.atapi_ok(),
            Ok(Reply::Data(v)) if v.is_empty() => d.atapi_ok(),
            Ok(Reply::Data(v)) => {
                d.pending = v;
                d.left = 0;
                d.data_phase();
            }
            Ok(Reply::Read { count: 0, .. }) => d.atapi_ok(),
            Ok(Reply::Read { lba, count }) => {
                d.pending.clear();
                d.lba = lba;
                d.left = count;
                d.data_phase();
            }
            Err(s) => d.atapi_error(s),
        }
        // Only a DMA data phase waits for the bus master to interrupt.
        if !matches!(d.xfer, Xfer::Dma { .. }) {
            self.raise();
        }
    }
}

impl Drive {
    /// The successful end of a packet command: the status phase.
    fn atapi_ok(&mut self) {
        self.sense = (0, 0, 0);
        self.error = 0;
        self.status = st::DRDY | st::DSC;
        self.nsector = IR_IO | IR_COD;
        self.xfer = Xfer::Idle;
    }

    /// CHECK CONDITION: the sense is kept for REQUEST SENSE.
    fn atapi_error(&mut self, s: Sense) {
        self.sense = s;
        self.error = s.0 << 4 | er::ABRT;
        self.status = st::DRDY | st::ERR;
        self.nsector = IR_IO | IR_COD;
        self.xfer = Xfer::Idle;
    }

    /// Reads `n` CD sectors at `lba` onto the end of `pending`.
    fn cd_read(&mut self, n: u64) -> bool {
        let Some((_, b)) = self.media.as_mut() else {
            return false;
        };
        let at = self.pending.len();
        self.pending.resize(at + (n * CD_SECTOR) as usize, 0);
        if b.read_at(self.lba * CD_SECTOR, &mut self.pending[at..])
            .is_err()
        {
            return false;
        }
        self.lba += n;
        self.left -= n;
        true
    }

    /// Starts the data phase of a packet command: all of it by DMA, or the
    /// first PIO chunk.
    fn data_phase(&mut self) {
        if self.dma {
            if self.left > 0 && !self.cd_read(self.left) {
                self.atapi_error((sense::MEDIUM_ERROR, sense::UNRECOVERED_READ, 0));
                return;
            }
            self.buf = std::mem::take(&mut self.pending);
            self.xfer = Xfer::Dma { to_memory: true };
            self.nsector = IR_IO;
            self.status = st::DRDY | st::DSC | st::DRQ;
        } else {
            self.atapi_chunk();
        }
    }

    /// Hands the next PIO chunk to the host: at most the byte count limit
    /// (even), its length in the cylinder registers (ATA/ATAPI-6 §9.8).
    fn atapi_chunk(&mut self) {
        let limit = match self.byte_limit {
            0 | 0xFFFF => 0xFFFE,
            n => n & !1,
        };
        let remaining = self.pending.len() as u64 + self.left * CD_SECTOR;
        let size = (limit as u64).min(remaining) as usize;
        if self.pending.len() < size {
            let need = (size - self.pending.len()) as u64;
            if !self.cd_read(need.div_ceil(CD_SECTOR).min(self.left)) {
                self.atapi_error((sense::MEDIUM_ERROR, sense::UNRECOVERED_READ, 0));
                return;
            }
        }
        let rest = self.pending.split_off(size);
        let chunk = std::mem::replace(&mut self.pending, rest);
        self.lcyl = size as u8;
        self.hcyl = (size >> 8) as u8;
        self.nsector = IR_IO;
        self.pio_in(chunk, After::AtapiChunk);
    }

    /// Executes a packet command (MMC-3, SPC-3): what SeaBIOS's El Torito
    /// boot, GRUB, ISOLINUX and Linux's sr driver issue.
    fn atapi(&mut self, cdb: &[u8; 12]) -> Result<Reply, Sense> {
        let present = self.media.is_some();
        let sectors = self.cd_sectors();
        let invalid_field = (sense::ILLEGAL_REQUEST, sense::INVALID_FIELD, 0);
        let cut = |mut v: Vec<u8>, alloc: usize| {
            v.truncate(alloc);
            Ok(Reply::Data(v))
        };
        let need_medium = || {
            if present {
                Ok(())
            } else {
                Err((sense::NOT_READY, sense::NO_MEDIUM, 0))
            }
        };
        match cdb[0] {
            // TEST UNIT READY
            0x00 => need_medium().map(|()| Reply::Nothing),
            // REQUEST SENSE: fixed format; the sense is then cleared.
            0x03 => {
                let (key, asc, ascq) = std::mem::take(&mut self.sense);
                let mut v = vec![0u8; 18];
                v[0] = 0x70;
                v[2] = key;
                v[7] = 10;
                v[12] = asc;
                v[13] = ascq;
                cut(v, usize::from(cdb[4]))
            }
            // INQUIRY (standard data only)
            0x12 => {
                if cdb[1] & 1 != 0 {
                    return Err(invalid_field);
                }
                let mut v = vec![0u8; 36];
                v[0] = 0x05; // CD/DVD device
                v[1] = 0x80; // removable
                v[2] = 0x05; // SPC-3
                v[3] = 0x32; // response data format 2
                v[4] = 31;
                v[8..16].copy_from_slice(b"X86BT   ");
                v[16..32].copy_from_slice(b"DVD-ROM         ");
                v[32..36].copy_from_slice(b"1.0 ");
                cut(v, be16(&cdb[3..5]))
            }
            // START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, SEEK(10),
            // SET CD SPEED, SYNCHRONIZE CACHE: accepted, nothing to do.
            0x1B | 0x1E | 0x2B | 0xBB | 0x35 => Ok(Reply::Nothing),
            // READ CAPACITY: last block and block length.
            0x25 => {
                need_medium()?;
                let mut v = Vec::with_capacity(8);
                v.extend_from_slice(&(sectors.saturating_sub(1) as u32).to_be_bytes());
                v.extend_from_slice(&(CD_SECTOR as u32).to_be_bytes());
                Ok(Reply::Data(v))
            }
            // READ(10), READ(12), and READ CD for user data only.
            0x28 | 0xA8 | 0xBE => {
                need_medium()?;
                let lba = be32(&cdb[2..6]);
                let count = match cdb[0] {
                    0x28 => be16(&cdb[7..9]) as u64,
                    0xA8 => be32(&cdb[6..10]),
                    _ => {
                        // Expected sector type any or mode 1, user data only.
                        if cdb[1] & 0x1C > 0x08 || cdb[9] & 0xF8 != 0x10 {
                            return Err(invalid_field);
                        }
                        u64::from(cdb[6]) << 16 | u64::from(cdb[7]) << 8 | u64::from(cdb[8])
                    }
                };
                if lba.checked_add(count).is_none_or(|end| end > sectors) {
                    return Err((sense::ILLEGAL_REQUEST, sense::LBA_OUT_OF_RANGE, 0));
                }
                // A DMA transfer is staged whole in host memory: READ(12)
                // may ask for 2^32 sectors of a large disc, so one command
                // is held to READ(10)'s 65,535 (128 MiB), a limit of ours.
                if count > 0xFFFF {
                    return Err(invalid_field);
                }
                Ok(Reply::Read { lba, count })
            }
            // READ TOC/PMA/ATIP: formats 0 (the TOC) and 1 (sessions).
            0x43 => {
                need_medium()?;
                let time = cdb[1] & 2 != 0;
                let format = match cdb[2] & 0x0F {
                    0 if cdb[9] >> 6 != 0 => cdb[9] >> 6,
                    f => f,
                };
                let addr = |lba: u64| {
                    if time {
                        msf(lba)
                    } else {
                        (lba as u32).to_be_bytes()
                    }
                };
                let mut v = vec![0, 0, 1, 1];
                match format {
                    0 => {
                        let start = cdb[6];
                        if start > 1 && start != 0xAA {
                            return Err(invalid_field);
                        }
                        if start <= 1 {
                            // Track 1: data, digital copy permitted.
                            v.extend_from_slice(&[0, 0x14, 1, 0]);
                            v.extend_from_slice(&addr(0));
                        }
                        v.extend_from_slice(&[0, 0x14, 0xAA, 0]);
                        v.extend_from_slice(&addr(sectors));
                    }
                    1 => {
                        v.extend_from_slice(&[0, 0x14, 1, 0]);
                        v.extend_from_slice(&addr(0));
                    }
                    _ => return Err(invalid_field),
                }
                let len = (v.len() - 2) as u16;
                v[..2].copy_from_slice(&len.to_be_bytes());
                cut(v, be16(&cdb[7..9]))
            }
            // GET CONFIGURATION: the profile list (DVD-ROM, CD-ROM), core
            // and removable medium features; the current profile by size.
            0x46 => {
                let profile: u16 = if !present {
                    0
                } else if sectors > 359_847 {
                    0x0010
                } else {
                    0x0008
                };
                let mut v = vec![0u8; 8];
                v[6..8].copy_from_slice(&profile.to_be_bytes());
                let cur = |p: u16| u8::from(p == profile);
                // Feature 0: profile list.
                v.extend_from_slice(&[0, 0, 0x03, 8]);
                v.extend_from_slice(&[0, 0x10, cur(0x10), 0, 0, 0x08, cur(0x08), 0]);
                // Feature 1: core (ATAPI interface).
                v.extend_from_slice(&[0, 1, 0x0B, 8, 0, 0, 0, 2, 1, 0, 0, 0]);
                // Feature 3: removable medium (tray, eject).
                v.extend_from_slice(&[0, 3, 0x03, 4, 0x29, 0, 0, 0]);
                let len = (v.len() - 4) as u32;
                v[..4].copy_from_slice(&len.to_be_bytes());
                cut(v, be16(&cdb[7..9]))
            }
            // GET EVENT STATUS NOTIFICATION, polled: media events only.
            0x4A => {
                if cdb[1] & 1 == 0 {
                    return Err(invalid_field);
                }
                let alloc = be16(&cdb[7..9]);
                if cdb[4] & 0x10 != 0 {
                    let status = if present { 0x02 } else { 0 };
                    cut(vec![0, 6, 0x04, 0x10, 0, status, 0, 0], alloc)
                } else {
                    // No event class asked for that the drive supports.
                    cut(vec![0, 2, 0x80, 0x10], alloc)
                }
            }
            // READ DISC INFORMATION: one complete session, one track.
            0x51 => {
                need_medium()?;
                let mut v = vec![0u8; 34];
                v[1] = 32;
                v[2] = 0x0E; // last session complete, disc finalized
                v[3] = 1;
                v[4] = 1;
                v[5] = 1;
                v[6] = 1;
                v[7] = 0x20; // unrestricted use
                cut(v, be16(&cdb[7..9]))
            }
            // MODE SENSE(6) and (10): error recovery (0x01) and the
            // capabilities page (0x2A), or both (0x3F).
            0x1A | 0x5A => {
                let page = cdb[2] & 0x3F;
                if cdb[2] >> 6 == 3 {
                    return Err((sense::ILLEGAL_REQUEST, 0x39, 0));
                }
                let mut pages = Vec::new();
                if matches!(page, 0x01 | 0x3F) {
                    pages.extend_from_slice(&[0x01, 0x06, 0, 5, 0, 0, 0, 0]);
                }
                if matches!(page, 0x2A | 0x3F) {
                    let mut p = vec![0u8; 22];
                    p[0] = 0x2A;
                    p[1] = 20;
                    p[2] = 0x3B; // reads CD-R/RW, DVD-ROM
                    p[4] = 0x71; // multi-session, mode 2 forms, audio play
                    p[5] = 0xFF;
                    p[6] = 0x2D; // eject, tray loading, lock
                    p[8..10].copy_from_slice(&(706u16 * 4).to_be_bytes());
                    p[14..16].copy_from_slice(&(706u16 * 4).to_be_bytes());
                    pages.extend_from_slice(&p);
                }
                if pages.is_empty() {
                    return Err(invalid_field);
                }
                if cdb[0] == 0x1A {
                    let mut v = vec![(pages.len() + 3) as u8, 0, 0, 0];
                    v.extend_from_slice(&pages);
                    cut(v, usize::from(cdb[4]))
                } else {
                    let mut v = vec![0u8; 8];
                    v[..2].copy_from_slice(&((pages.len() + 6) as u16).to_be_bytes());
                    v.extend_from_slice(&pages);
                    cut(v, be16(&cdb[7..9]))
                }
            }
            // MECHANISM STATUS: no changer, the door closed.
            0xBD => {
                let mut v = vec![0u8; 8];
                v[5] = 1;
                cut(v, be16(&cdb[8..10]))
            }
            _ => Err((sense::ILLEGAL_REQUEST, sense::INVALID_OPCODE, 0)),
        }
    }
}

impl Device for Ide {
    fn name(&self) -> &'static str {
        "ide"
    }

    fn read(&mut self, _ctx: &mut DevCtx, region: u8, offset: u64, data: &mut [u8]) {
        match region {
            REGION_BMIDE => self.bm_read(offset, data),
            r if (REGION_CMD..REGION_CMD + 4).contains(&r) => {
                let c = usize::from((r - REGION_CMD) / 2);
                if (r - REGION_CMD).is_multiple_of(2) {
                    self.cmd_read(c, offset, data);
                } else {
                    self.ctl_read(c, data);
                }
            }
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, ctx: &mut DevCtx, region: u8, offset: u64, data: &[u8]) {
        match region {
            REGION_BMIDE => self.bm_write(ctx, offset, data),
            r if (REGION_CMD..REGION_CMD + 4).contains(&r) => {
                let c = usize::from((r - REGION_CMD) / 2);
                if (r - REGION_CMD).is_multiple_of(2) {
                    self.cmd_write(ctx, c, offset, data);
                } else if let Some(&v) = data.first() {
                    self.ctl_write(c, v);
                }
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        for ch in &mut self.channels {
            for d in &mut ch.drives {
                d.reset();
                d.select = 0xA0;
            }
            ch.cur = 0;
            ch.control = 0;
            ch.intrq = false;
            ch.bm_command = 0;
            ch.bm_status &= BM_CAPABLE;
            ch.bm_prdt = 0;
            ch.update_irq();
        }
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        let Self { config, channels } = self;
        let io = |e: std::io::Error| {
            crate::snapshot::StateError::Io(format!("reading an IDE drive's image: {e}"))
        };
        let [c0, c1] = channels;
        Ok(crate::snapshot::DeviceState::Ide(Box::new(IdeState {
            config: config.borrow().clone(),
            channels: [c0.save().map_err(io)?, c1.save().map_err(io)?],
        })))
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        let crate::snapshot::DeviceState::Ide(s) = state else {
            return Err(crate::snapshot::wrong_kind(self.name(), state));
        };
        for (i, (c, saved)) in self.channels.iter_mut().zip(&s.channels).enumerate() {
            c.restore(saved).map_err(|e| {
                crate::snapshot::StateError::Mismatch(format!("IDE channel {i}, {e}"))
            })?;
        }
        *self.config.borrow_mut() = s.config.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use crate::device::{DevEnv, IrqLines};
    use crate::devices::pci_endpoint::command;

    struct Rig {
        ide: Ide,
        env: DevEnv,
        lines: Rc<IrqLines>,
        config: Rc<RefCell<PciEndpoint>>,
    }

    fn rig(drives: Vec<DriveSpec>) -> Rig {
        let lines = IrqLines::new();
        let config = Rc::new(RefCell::new(config_space()));
        let ide = Ide::new(Rc::clone(&config), [lines.line(14), lines.line(15)], drives);
        Rig {
            ide,
            env: DevEnv::new(),
            lines,
            config,
        }
    }

    fn disk(sectors: usize) -> DriveSpec {
        let data = (0..sectors * 512)
            .map(|i| (i / 512) as u8 ^ i as u8)
            .collect();
        DriveSpec {
            media: Media::Disk,
            backend: Box::new(MemDisk::new(data)),
            channel: 0,
            unit: 0,
        }
    }

    fn cd(sectors: usize) -> DriveSpec {
        let data = (0..sectors * 2048).map(|i| (i / 2048) as u8).collect();
        let mut m = MemDisk::new(data);
        m.read_only = true;
        DriveSpec {
            media: Media::Cdrom,
            backend: Box::new(m),
            channel: 1,
            unit: 0,
        }
    }

    impl Rig {
        fn out8(&mut self, region: u8, offset: u64, v: u8) {
            let mut ctx = self.env.at(0);
            self.ide.write(&mut ctx, region, offset, &[v]);
        }
        fn in8(&mut self, region: u8, offset: u64) -> u8 {
            let mut ctx = self.env.at(0);
            let mut b = [0u8];
            self.ide.read(&mut ctx, region, offset, &mut b);
            b[0]
        }
        fn in16(&mut self, region: u8) -> u16 {
            let mut ctx = self.env.at(0);
            let mut b = [0u8; 2];
            self.ide.read(&mut ctx, region, 0, &mut b);
            u16::from_le_bytes(b)
        }
        fn out16(&mut self, region: u8, v: u16) {
            let mut ctx = self.env.at(0);
            self.ide.write(&mut ctx, region, 0, &v.to_le_bytes());
        }
        fn read_block(&mut self, region: u8, bytes: usize) -> Vec<u8> {
            (0..bytes / 2)
                .flat_map(|_| self.in16(region).to_le_bytes())
                .collect()
        }
        fn irq(&self, n: u8) -> bool {
            self.lines.levels() & (1 << n) != 0
        }
        /// Sends an ATAPI packet on the secondary channel with byte count
        /// limit `limit`.
        fn packet(&mut self, cdb: &[u8], limit: u16) {
            let r = REGION_CMD + 2;
            self.out8(r, 6, 0xA0);
            self.out8(r, 1, 0);
            self.out8(r, 4, limit as u8);
            self.out8(r, 5, (limit >> 8) as u8);
            self.out8(r, 7, 0xA0);
            assert_eq!(
                self.in8(r + 1, 0) & st::DRQ,
                st::DRQ,
                "ready for the packet"
            );
            assert_eq!(self.in8(r, 2), IR_COD);
            let mut p = [0u8; 12];
            p[..cdb.len()].copy_from_slice(cdb);
            for w in p.chunks(2) {
                self.out16(r, u16::from_le_bytes([w[0], w[1]]));
            }
        }
        /// Reads an ATAPI reply chunk by chunk.
        fn reply(&mut self) -> Vec<u8> {
            let r = REGION_CMD + 2;
            let mut out = Vec::new();
            loop {
                let status = self.in8(r, 7);
                if status & st::DRQ == 0 {
                    assert_eq!(self.in8(r, 2), IR_IO | IR_COD, "status phase");
                    return out;
                }
                assert_eq!(self.in8(r, 2), IR_IO, "data phase");
                let n = usize::from(self.in8(r, 5)) << 8 | usize::from(self.in8(r, 4));
                out.extend(self.read_block(r, n));
            }
        }
    }

    #[test]
    fn signatures_tell_disk_from_cd_and_empty_channels_read_zero() {
        let mut r = rig(vec![disk(100), cd(10)]);
        let p = REGION_CMD;
        let s = REGION_CMD + 2;
        assert_eq!((r.in8(p, 4), r.in8(p, 5)), (0, 0), "ATA signature");
        assert_eq!((r.in8(s, 4), r.in8(s, 5)), (0x14, 0xEB), "ATAPI signature");
        // The absent slave of the primary channel: status 0.
        r.out8(p, 6, 0xB0);
        assert_eq!(r.in8(p, 7), 0);
        // Written task-file registers read back whichever drive is selected.
        r.out8(p, 2, 0x55);
        assert_eq!(r.in8(p, 2), 0x55);
        let mut empty = rig(vec![]);
        assert_eq!(empty.in8(REGION_CMD, 7), 0);
    }

    #[test]
    fn identify_reports_the_disk_size_and_lba48() {
        let mut r = rig(vec![disk(20_000)]);
        r.out8(REGION_CMD, 6, 0xA0);
        r.out8(REGION_CMD, 7, 0xEC);
        assert!(r.irq(14), "the data block interrupts");
        assert_eq!(r.in8(REGION_CMD, 7) & st::DRQ, st::DRQ);
        assert!(!r.irq(14), "reading status acknowledges");
        let id = r.read_block(REGION_CMD, 512);
        let w = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
        assert_eq!(u32::from(w(60)) | u32::from(w(61)) << 16, 20_000);
        assert_eq!(w(100), 20_000);
        assert_ne!(w(83) & (1 << 10), 0, "48-bit feature set");
        // Model text is byte-swapped per word: "X8" is 0x5838.
        assert_eq!(w(27), 0x5838);
        assert_eq!(r.in8(REGION_CMD, 7), st::DRDY | st::DSC, "done");
    }

    #[test]
    fn pio_read_and_write_sectors_with_lba28_and_lba48() {
        let mut r = rig(vec![disk(300)]);
        let p = REGION_CMD;
        // READ SECTORS: 2 sectors from LBA 5.
        for (reg, v) in [(2, 2), (3, 5), (4, 0), (5, 0), (6, 0xE0), (7, 0x20)] {
            r.out8(p, reg, v);
        }
        let got = r.read_block(p, 1024);
        let want: Vec<u8> = (5 * 512..7 * 512)
            .map(|i| (i / 512) as u8 ^ i as u8)
            .collect();
        assert_eq!(got, want);
        assert_eq!(r.in8(p, 3), 6, "the last sector read is in the task file");
        assert_eq!(
            r.in8(p, 7),
            st::DRDY | st::DSC,
            "done; the interrupt acknowledged"
        );
        // WRITE SECTORS EXT: 1 sector at LBA 257 (HOB bytes written first).
        for (reg, v) in [
            (2, 0),
            (2, 1),
            (3, 0),
            (3, 1),
            (4, 0),
            (4, 1),
            (5, 0),
            (5, 0),
        ] {
            r.out8(p, reg, v);
        }
        r.out8(p, 6, 0x40);
        r.out8(p, 7, 0x34);
        assert!(!r.irq(14), "no interrupt before the first block");
        for i in 0..256u16 {
            r.out16(p, i);
        }
        assert!(r.irq(14), "the written block interrupts");
        assert_eq!(r.in8(p, 7), st::DRDY | st::DSC);
        // Read it back with READ SECTORS (LBA28).
        for (reg, v) in [(2, 1), (3, 1), (4, 1), (5, 0), (6, 0xE0), (7, 0x20)] {
            r.out8(p, reg, v);
        }
        let back = r.read_block(p, 512);
        let want: Vec<u8> = (0..256u16).flat_map(u16::to_le_bytes).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn a_read_past_the_end_aborts_with_idnf() {
        let mut r = rig(vec![disk(10)]);
        let p = REGION_CMD;
        for (reg, v) in [(2, 2), (3, 9), (4, 0), (5, 0), (6, 0xE0), (7, 0x20)] {
            r.out8(p, reg, v);
        }
        assert_eq!(r.in8(p, 7) & st::ERR, st::ERR);
        assert_eq!(r.in8(p, 1), er::IDNF | er::ABRT);
    }

    #[test]
    fn bus_master_dma_reads_into_guest_memory_and_interrupts() {
        let mut r = rig(vec![disk(64)]);
        r.config
            .borrow_mut()
            .write(4, command::IO as u8 | command::BUS_MASTER as u8);
        // A PRD table at 0x1000: 512 bytes to 0x2000, then 1024 (end) to 0x3000.
        let mut prd = Vec::new();
        prd.extend_from_slice(&0x2000u32.to_le_bytes());
        prd.extend_from_slice(&512u32.to_le_bytes());
        prd.extend_from_slice(&0x3000u32.to_le_bytes());
        prd.extend_from_slice(&(1024u32 | 0x8000_0000).to_le_bytes());
        r.env.mem.write_bytes(GuestPhys(0x1000), &prd);
        for (i, b) in 0x1000u32.to_le_bytes().into_iter().enumerate() {
            r.out8(REGION_BMIDE, 4 + i as u64, b);
        }
        // READ DMA, 3 sectors from LBA 10; then start the engine (to memory).
        for (reg, v) in [(2, 3), (3, 10), (4, 0), (5, 0), (6, 0xE0), (7, 0xC8)] {
            r.out8(REGION_CMD, reg, v);
        }
        assert!(!r.irq(14), "nothing before the engine starts");
        r.out8(REGION_BMIDE, 0, BM_START | BM_READ);
        assert!(r.irq(14));
        let bm = r.in8(REGION_BMIDE, 2);
        assert_eq!(
            bm & (BM_INTR | BM_ACTIVE | BM_ERROR),
            BM_INTR,
            "table used up"
        );
        let mut got = vec![0u8; 1536];
        r.env.mem.read_bytes(GuestPhys(0x2000), &mut got[..512]);
        r.env.mem.read_bytes(GuestPhys(0x3000), &mut got[512..]);
        let want: Vec<u8> = (10 * 512..13 * 512)
            .map(|i| (i / 512) as u8 ^ i as u8)
            .collect();
        assert_eq!(got, want);
        assert_eq!(r.in8(REGION_CMD, 7), st::DRDY | st::DSC);
    }

    #[test]
    fn atapi_identify_inquiry_capacity_and_read() {
        let mut r = rig(vec![disk(8), cd(40)]);
        let s = REGION_CMD + 2;
        r.out8(s, 6, 0xA0);
        r.out8(s, 7, 0xEC);
        assert_eq!(r.in8(s, 1), er::ABRT, "IDENTIFY DEVICE aborted on ATAPI");
        assert_eq!((r.in8(s, 4), r.in8(s, 5)), (0x14, 0xEB));
        r.out8(s, 7, 0xA1);
        let id = r.read_block(s, 512);
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x85C0);
        r.packet(&[0x12, 0, 0, 0, 36], 0xFFFE);
        let inq = r.reply();
        assert_eq!((inq.len(), inq[0]), (36, 5));
        r.packet(&[0x25], 8);
        assert_eq!(r.reply(), [0, 0, 0, 39, 0, 0, 8, 0]);
        // READ(10) of 3 sectors from 7, in chunks of at most 2048 bytes.
        r.packet(&[0x28, 0, 0, 0, 0, 7, 0, 0, 3], 2048);
        let data = r.reply();
        assert_eq!(data.len(), 3 * 2048);
        assert!(data[..2048].iter().all(|&b| b == 7) && data[4096..].iter().all(|&b| b == 9));
        // Past the end: CHECK CONDITION, then REQUEST SENSE says why.
        r.packet(&[0x28, 0, 0, 0, 0, 39, 0, 0, 2], 2048);
        assert_eq!(r.in8(s, 7) & st::ERR, st::ERR);
        assert_eq!(r.in8(s, 1) >> 4, sense::ILLEGAL_REQUEST);
        r.packet(&[0x03, 0, 0, 0, 18], 18);
        let sense_data = r.reply();
        assert_eq!((sense_data[2], sense_data[12]), (5, 0x21));
        // An unknown opcode.
        r.packet(&[0xFF], 0);
        assert_eq!(r.in8(s, 1) >> 4, sense::ILLEGAL_REQUEST);
    }

    #[test]
    fn atapi_toc_lists_one_data_track_and_the_lead_out() {
        let mut r = rig(vec![cd(1000)]);
        r.packet(&[0x43, 0, 0, 0, 0, 0, 0, 0, 100], 100);
        let toc = r.reply();
        assert_eq!(toc.len(), 20);
        assert_eq!((toc[2], toc[3]), (1, 1));
        assert_eq!((toc[5], toc[6]), (0x14, 1));
        assert_eq!(toc[14], 0xAA);
        assert_eq!(be32(&toc[16..20]), 1000);
    }

    #[test]
    fn flush_reaches_the_backend() {
        struct Counting(Rc<RefCell<u32>>);
        impl BlockBackend for Counting {
            fn size(&self) -> u64 {
                512 * 8
            }
            fn read_only(&self) -> bool {
                false
            }
            fn read_at(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
                buf.fill(0);
                Ok(())
            }
            fn write_at(&mut self, _: u64, _: &[u8]) -> std::io::Result<()> {
                Ok(())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                *self.0.borrow_mut() += 1;
                Ok(())
            }
            fn save_state(&mut self) -> std::io::Result<crate::block::DiskState> {
                Ok(crate::block::DiskState::Image { size: 0, hash: 0 })
            }
            fn restore_state(&mut self, _: &crate::block::DiskState) -> Result<(), String> {
                Ok(())
            }
        }
        let n = Rc::new(RefCell::new(0));
        let mut r = rig(vec![DriveSpec {
            media: Media::Disk,
            backend: Box::new(Counting(Rc::clone(&n))),
            channel: 0,
            unit: 0,
        }]);
        r.out8(REGION_CMD, 7, 0xE7);
        r.out8(REGION_CMD, 7, 0xEA);
        assert_eq!(*n.borrow(), 2);
        assert!(r.irq(14));
    }
}
