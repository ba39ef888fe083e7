//! virtio-blk over virtio-pci, the modern (virtio 1.x) interface only
//! (Virtual I/O Device specification 1.2: §4.1 virtio over PCI, §2.7 split
//! virtqueues, §5.2 the block device), with MSI-X, as Linux's virtio_pci and
//! virtio_blk and SeaBIOS's virtio-blk driver use it.
//!
//! The function (1AF4:1042, class 01 80 00) has one 32-bit memory BAR
//! (BAR 1, 32 KiB) holding the common configuration (0x0000), the ISR status
//! (0x1000), the device configuration (0x2000), the notification area
//! (0x3000, one queue, multiplier 0) and the MSI-X table (0x4000) and PBA
//! (0x5000), each named by a vendor-specific PCI capability.
//!
//! Features offered: VERSION_1, SEG_MAX, BLK_SIZE, FLUSH, and RO for a
//! read-only drive. One request queue of 256 entries. A notification runs
//! every request the driver made available, at once and in order (reads
//! and writes go straight to the [`BlockBackend`]; FLUSH is its flush, an
//! fsync), then interrupts once: MSI-X with the queue's vector while MSI-X is
//! on, else INTx with ISR bit 0. Runs stay deterministic, as with IDE.
//!
//! A descriptor chain the driver got wrong (a loop, a buffer in the wrong
//! direction, no room for the status byte) is a guest error: the request
//! completes with VIRTIO_BLK_S_IOERR where there is a status byte to write,
//! and is otherwise dropped; nothing can panic the host.

use super::pci::PirqLine;
use super::pci_endpoint::{BarDef, BarKind, EndpointId, MsixLayout, PciEndpoint};
use crate::block::BlockBackend;
use crate::device::{DevCtx, Device};
use crate::GuestPhys;
use std::cell::RefCell;
use std::rc::Rc;

/// PCI IDs.
pub const VENDOR: u16 = 0x1AF4;
/// The modern virtio-blk device ID (0x1040 + device type 2).
pub const DEVICE: u16 = 0x1042;
/// The BAR holding every structure.
pub const BAR: u8 = 1;
const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const MSIX_TABLE: u32 = 0x4000;
const MSIX_PBA: u32 = 0x5000;
/// MSI-X vectors: configuration changes and the one queue.
const VECTORS: u16 = 2;
/// The queue's size.
const QUEUE_SIZE: u16 = 256;
/// No MSI-X vector.
const NO_VECTOR: u16 = 0xFFFF;

/// Feature bits.
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_VERSION_1: u64 = 1 << 32;
/// Segments per request at most (SEG_MAX).
const SEG_MAX: u32 = 126;

/// Request types and status values.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// Descriptor flags.
const D_NEXT: u16 = 1;
const D_WRITE: u16 = 2;

/// The configuration space.
pub fn config_space() -> PciEndpoint {
    let cap = |cfg_type: u8, next: u8, offset: u64, length: u32, extra: Option<u32>| {
        let len = if extra.is_some() { 20 } else { 16 };
        let mut b = vec![0x09, next, len, cfg_type, BAR, 0, 0, 0];
        b.extend_from_slice(&(offset as u32).to_le_bytes());
        b.extend_from_slice(&length.to_le_bytes());
        if let Some(x) = extra {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b
    };
    let mut e = PciEndpoint::new(
        EndpointId {
            vendor: VENDOR,
            device: DEVICE,
            revision: 1,
            class: 0x01_80_00,
            subsystem: (VENDOR, 0x1100),
            pin: 1,
        },
        &[(
            usize::from(BAR),
            BarDef {
                kind: BarKind::Memory,
                size: BAR_SIZE,
            },
        )],
        false,
    )
    .with_msix(MsixLayout {
        vectors: VECTORS,
        bar: BAR,
        table: MSIX_TABLE,
        pba: MSIX_PBA,
    });
    // MSI-X sits at 0x40; the virtio capabilities follow it.
    let caps = [
        (0x50, cap(1, 0x60, COMMON, 0x38, None)),
        (0x60, cap(3, 0x70, ISR, 1, None)),
        (0x70, cap(4, 0x80, DEVICE_CFG, 0x20, None)),
        (0x80, cap(2, 0, NOTIFY, 4, Some(0))),
    ];
    e = e.with_register(0x41, 1, 0x50, 0);
    for (at, bytes) in caps {
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut v = [0u8; 4];
            v[..chunk.len()].copy_from_slice(chunk);
            e = e.with_register(at + 4 * i, chunk.len(), u32::from_le_bytes(v), 0);
        }
    }
    e
}

/// The virtio-blk function.
pub struct VirtioBlk {
    config: Rc<RefCell<PciEndpoint>>,
    intx: PirqLine,
    backend: Box<dyn BlockBackend>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    generation: u8,
    queue_select: u16,
    // The one queue.
    q_size: u16,
    q_vector: u16,
    q_enable: bool,
    q_desc: u64,
    q_driver: u64,
    q_device: u64,
    last_avail: u16,
    used_idx: u16,
    isr: u8,
    serial: String,
}

/// A virtio-blk function's saved state (see [`crate::snapshot`]): its
/// configuration space, INTx pin, common configuration, the queue's
/// addresses and indexes, and its disk's (see [`crate::block::DiskState`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VirtioBlkState {
    config: PciEndpoint,
    intx: bool,
    disk: crate::block::DiskState,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    generation: u8,
    queue_select: u16,
    q_size: u16,
    q_vector: u16,
    q_enable: bool,
    q_desc: u64,
    q_driver: u64,
    q_device: u64,
    last_avail: u16,
    used_idx: u16,
    isr: u8,
    serial: String,
}

impl VirtioBlk {
    /// The device over `backend`, its configuration space shared with the
    /// host bridge, interrupting on `intx` when MSI-X is off.
    pub fn new(
        config: Rc<RefCell<PciEndpoint>>,
        intx: PirqLine,
        backend: Box<dyn BlockBackend>,
        serial: String,
    ) -> Self {
        let mut d = Self {
            config,
            intx,
            backend,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            generation: 0,
            queue_select: 0,
            q_size: QUEUE_SIZE,
            q_vector: NO_VECTOR,
            q_enable: false,
            q_desc: 0,
            q_driver: 0,
            q_device: 0,
            last_avail: 0,
            used_idx: 0,
            isr: 0,
            serial,
        };
        d.reset_device();
        d
    }

    fn features(&self) -> u64 {
        let ro = if self.backend.read_only() { F_RO } else { 0 };
        F_VERSION_1 | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | ro
    }

    /// Device reset (status written 0): everything the driver set up goes.
    fn reset_device(&mut self) {
        self.driver_features = 0;
        self.msix_config = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        self.q_size = QUEUE_SIZE;
        self.q_vector = NO_VECTOR;
        self.q_enable = false;
        self.q_desc = 0;
        self.q_driver = 0;
        self.q_device = 0;
        self.last_avail = 0;
        self.used_idx = 0;
        self.isr = 0;
        self.intx.set_level(false);
    }

    fn common_read(&self, off: u64) -> u64 {
        let q = self.queue_select == 0;
        match off {
            0x00 => self.device_feature_select.into(),
            0x04 => match self.device_feature_select {
                0 => self.features() & 0xFFFF_FFFF,
                1 => self.features() >> 32,
                _ => 0,
            },
            0x08 => self.driver_feature_select.into(),
            0x0C => match self.driver_feature_select {
                0 => self.driver_features & 0xFFFF_FFFF,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => self.msix_config.into(),
            0x12 => 1,
            0x14 => self.status.into(),
            0x15 => self.generation.into(),
            0x16 => self.queue_select.into(),
            0x18 => u64::from(if q { self.q_size } else { 0 }),
            0x1A => u64::from(if q { self.q_vector } else { NO_VECTOR }),
            0x1C => u64::from(q && self.q_enable),
            0x1E => 0,
            0x20 if q => self.q_desc,
            0x28 if q => self.q_driver,
            0x30 if q => self.q_device,
            _ => 0,
        }
    }

    fn common_write(&mut self, ctx: &mut DevCtx, off: u64, v: u64, width: usize) {
        let q = self.queue_select == 0;
        let set64 = |old: u64, off_in: u64| -> u64 {
            // 64-bit fields may be written as two 32-bit halves.
            if width == 8 {
                v
            } else if off_in == 0 {
                (old & !0xFFFF_FFFF) | (v & 0xFFFF_FFFF)
            } else {
                (old & 0xFFFF_FFFF) | (v << 32)
            }
        };
        match off {
            0x00 => self.device_feature_select = v as u32,
            0x08 => self.driver_feature_select = v as u32,
            0x0C => match self.driver_feature_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xFFFF_FFFF) | (v & 0xFFFF_FFFF)
                }
                1 => self.driver_features = (self.driver_features & 0xFFFF_FFFF) | (v << 32),
                _ => {}
            },
            0x10 => self.msix_config = v as u16,
            0x14 => {
                if v == 0 {
                    self.reset_device();
                } else {
                    self.status = v as u8;
                    // FEATURES_OK only if the driver took no feature we lack.
                    if self.status & 0x08 != 0 && self.driver_features & !self.features() != 0 {
                        self.status &= !0x08;
                        ctx.guest_error("virtio-blk: driver accepted features not offered".into());
                    }
                }
            }
            0x16 => self.queue_select = v as u16,
            0x18 if q => {
                let n = v as u16;
                if n.is_power_of_two() && n <= QUEUE_SIZE {
                    self.q_size = n;
                }
            }
            0x1A if q => self.q_vector = v as u16,
            0x1C if q => self.q_enable = v & 1 != 0,
            0x20 | 0x24 if q => self.q_desc = set64(self.q_desc, off - 0x20),
            0x28 | 0x2C if q => self.q_driver = set64(self.q_driver, off - 0x28),
            0x30 | 0x34 if q => self.q_device = set64(self.q_device, off - 0x30),
            _ => {}
        }
    }

    fn device_cfg(&self) -> [u8; 0x20] {
        let mut c = [0u8; 0x20];
        c[0..8].copy_from_slice(&(self.backend.size() / 512).to_le_bytes());
        c[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes()); // size_max
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[16..18].copy_from_slice(&16383u16.to_le_bytes()); // geometry
        c[18] = 16;
        c[19] = 63;
        c[20..24].copy_from_slice(&512u32.to_le_bytes());
        c
    }

    fn read_u16(ctx: &DevCtx, a: u64) -> u16 {
        let mut b = [0u8; 2];
        ctx.dma_read(GuestPhys(a), &mut b);
        u16::from_le_bytes(b)
    }

    /// Runs every request the driver made available, then interrupts.
    fn process(&mut self, ctx: &mut DevCtx) {
        if !self.q_enable || self.status & 0x04 == 0 || !self.config.borrow().bus_master() {
            return;
        }
        let size = self.q_size;
        let avail_idx = Self::read_u16(ctx, self.q_driver + 2);
        let mut done = 0;
        while self.last_avail != avail_idx && done < u32::from(size) {
            let slot = self.last_avail % size;
            let head = Self::read_u16(ctx, self.q_driver + 4 + 2 * u64::from(slot));
            let written = self.request(ctx, head);
            let used = self.q_device + 4 + 8 * u64::from(self.used_idx % size);
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            e[4..].copy_from_slice(&written.to_le_bytes());
            ctx.dma_write(GuestPhys(used), &e);
            self.used_idx = self.used_idx.wrapping_add(1);
            ctx.dma_write(GuestPhys(self.q_device + 2), &self.used_idx.to_le_bytes());
            self.last_avail = self.last_avail.wrapping_add(1);
            done += 1;
        }
        if done > 0 {
            self.interrupt(ctx);
        }
    }

    fn interrupt(&mut self, ctx: &mut DevCtx) {
        let mut cfg = self.config.borrow_mut();
        if cfg.msix_enabled() {
            if self.q_vector != NO_VECTOR {
                if let Some(msi) = cfg.msix_signal(self.q_vector) {
                    ctx.send_msi(msi);
                }
            }
            return;
        }
        self.isr |= 1;
        cfg.set_interrupt_status(true);
        let on = !cfg.intx_disabled();
        drop(cfg);
        self.intx.set_level(on);
    }

    /// One request from descriptor `head`; returns the bytes written into
    /// the driver's buffers (status byte included).
    fn request(&mut self, ctx: &mut DevCtx, head: u16) -> u32 {
        // The chain: (address, length, device-writable).
        let mut chain = Vec::new();
        let mut i = head;
        loop {
            if chain.len() > usize::from(self.q_size) || i >= self.q_size {
                ctx.guest_error("virtio-blk: descriptor chain loops or leaves the table".into());
                return 0;
            }
            let mut d = [0u8; 16];
            ctx.dma_read(GuestPhys(self.q_desc + 16 * u64::from(i)), &mut d);
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or([0; 8]));
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or([0; 4]));
            let flags = u16::from_le_bytes([d[12], d[13]]);
            chain.push((addr, len, flags & D_WRITE != 0));
            if flags & D_NEXT == 0 {
                break;
            }
            i = u16::from_le_bytes([d[14], d[15]]);
        }
        // The status byte: the last byte of the last (writable) descriptor.
        let Some(&(last_addr, last_len, last_w)) = chain.last() else {
            return 0;
        };
        if !last_w || last_len == 0 || chain[0].2 || chain[0].1 < 16 {
            ctx.guest_error("virtio-blk: malformed request".into());
            return 0;
        }
        let status_at = last_addr + u64::from(last_len) - 1;
        let mut hdr = [0u8; 16];
        ctx.dma_read(GuestPhys(chain[0].0), &mut hdr);
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or([0; 4]));
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
        // Data buffers: between the header and the status byte.
        let mut data: Vec<(u64, u32, bool)> = chain[1..].to_vec();
        if let Some(l) = data.last_mut() {
            l.1 -= 1;
        }
        data.retain(|d| d.1 > 0);
        let mut written = 0u32;
        let status = match kind {
            T_IN | T_OUT => {
                let to_memory = kind == T_IN;
                let mut offset = sector.saturating_mul(512);
                let mut st = S_OK;
                for &(addr, len, w) in &data {
                    // The direction must fit, and so must the range: checked
                    // before the buffer exists, so a guest's 4 GiB descriptor
                    // cannot make the host allocate it.
                    let fits = offset
                        .checked_add(u64::from(len))
                        .is_some_and(|end| end <= self.backend.size());
                    if w != to_memory || !fits {
                        st = S_IOERR;
                        break;
                    }
                    let mut buf = vec![0u8; len as usize];
                    let ok = if to_memory {
                        let ok = self.backend.read_at(offset, &mut buf).is_ok();
                        if ok {
                            ctx.dma_write(GuestPhys(addr), &buf);
                            written += len;
                        }
                        ok
                    } else {
                        ctx.dma_read(GuestPhys(addr), &mut buf);
                        self.backend.write_at(offset, &buf).is_ok()
                    };
                    if !ok {
                        st = S_IOERR;
                        break;
                    }
                    offset += u64::from(len);
                }
                st
            }
            T_FLUSH => {
                if self.backend.flush().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                }
            }
            T_GET_ID => {
                let mut id = [0u8; 20];
                let n = self.serial.len().min(20);
                id[..n].copy_from_slice(&self.serial.as_bytes()[..n]);
                if let Some(&(addr, len, true)) = data.first() {
                    let n = (len as usize).min(20);
                    ctx.dma_write(GuestPhys(addr), &id[..n]);
                    written += n as u32;
                    S_OK
                } else {
                    S_IOERR
                }
            }
            _ => S_UNSUPP,
        };
        ctx.dma_write(GuestPhys(status_at), &[status]);
        written + 1
    }
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl Device for VirtioBlk {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn read(&mut self, _ctx: &mut DevCtx, region: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if region != BAR || self.config.borrow().msix_read(BAR, offset, data) {
            return;
        }
        let v = match offset {
            o if (COMMON..COMMON + 0x38).contains(&o) => {
                let base = o & !3;
                let wide = if (0x20..0x38).contains(&base) {
                    o & !7
                } else {
                    base
                };
                let field = self.common_read(if o >= 0x20 { wide } else { o });
                if o >= 0x20 {
                    field >> (8 * (o - wide))
                } else {
                    field
                }
            }
            ISR => {
                // Reading the ISR acknowledges it.
                let v = self.isr;
                self.isr = 0;
                self.config.borrow_mut().set_interrupt_status(false);
                self.intx.set_level(false);
                v.into()
            }
            o if (DEVICE_CFG..DEVICE_CFG + 0x20).contains(&o) => {
                let c = self.device_cfg();
                let at = (o - DEVICE_CFG) as usize;
                let n = data.len().min(0x20 - at);
                data[..n].copy_from_slice(&c[at..at + n]);
                return;
            }
            _ => 0,
        };
        let n = data.len().min(8);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    }

    fn write(&mut self, ctx: &mut DevCtx, region: u8, offset: u64, data: &[u8]) {
        if region != BAR {
            return;
        }
        let released = self.config.borrow_mut().msix_write(BAR, offset, data);
        if let Some(msgs) = released {
            for m in msgs {
                ctx.send_msi(m);
            }
            return;
        }
        let v = le_value(data);
        match offset {
            o if (COMMON..COMMON + 0x38).contains(&o) => self.common_write(ctx, o, v, data.len()),
            o if (NOTIFY..NOTIFY + 4).contains(&o) => self.process(ctx),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.reset_device();
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        let Self {
            config,
            intx,
            backend,
            device_feature_select,
            driver_feature_select,
            driver_features,
            msix_config,
            status,
            generation,
            queue_select,
            q_size,
            q_vector,
            q_enable,
            q_desc,
            q_driver,
            q_device,
            last_avail,
            used_idx,
            isr,
            serial,
        } = self;
        Ok(crate::snapshot::DeviceState::VirtioBlk(Box::new(
            VirtioBlkState {
                config: config.borrow().clone(),
                intx: intx.save(),
                disk: backend.save_state().map_err(|e| {
                    crate::snapshot::StateError::Io(format!(
                        "reading a virtio-blk disk's image: {e}"
                    ))
                })?,
                device_feature_select: Clone::clone(device_feature_select),
                driver_feature_select: Clone::clone(driver_feature_select),
                driver_features: Clone::clone(driver_features),
                msix_config: Clone::clone(msix_config),
                status: Clone::clone(status),
                generation: Clone::clone(generation),
                queue_select: Clone::clone(queue_select),
                q_size: Clone::clone(q_size),
                q_vector: Clone::clone(q_vector),
                q_enable: Clone::clone(q_enable),
                q_desc: Clone::clone(q_desc),
                q_driver: Clone::clone(q_driver),
                q_device: Clone::clone(q_device),
                last_avail: Clone::clone(last_avail),
                used_idx: Clone::clone(used_idx),
                isr: Clone::clone(isr),
                serial: Clone::clone(serial),
            },
        )))
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        let crate::snapshot::DeviceState::VirtioBlk(s) = state else {
            return Err(crate::snapshot::wrong_kind(self.name(), state));
        };
        let VirtioBlkState {
            config,
            intx,
            disk,
            device_feature_select,
            driver_feature_select,
            driver_features,
            msix_config,
            status,
            generation,
            queue_select,
            q_size,
            q_vector,
            q_enable,
            q_desc,
            q_driver,
            q_device,
            last_avail,
            used_idx,
            isr,
            serial,
        } = (**s).clone();
        self.backend
            .restore_state(&disk)
            .map_err(|e| crate::snapshot::StateError::Mismatch(format!("virtio-blk disk: {e}")))?;
        *self.config.borrow_mut() = config;
        self.intx.restore(intx);
        self.device_feature_select = device_feature_select;
        self.driver_feature_select = driver_feature_select;
        self.driver_features = driver_features;
        self.msix_config = msix_config;
        self.status = status;
        self.generation = generation;
        self.queue_select = queue_select;
        self.q_size = q_size;
        self.q_vector = q_vector;
        self.q_enable = q_enable;
        self.q_desc = q_desc;
        self.q_driver = q_driver;
        self.q_device = q_device;
        self.last_avail = last_avail;
        self.used_idx = used_idx;
        self.isr = isr;
        self.serial = serial;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use crate::device::{DevEnv, IrqLines};
    use crate::devices::pci::PirqRouter;
    use crate::devices::pci_endpoint::command;

    /// A driver's view: the queue at DESC/AVAIL/USED in DevEnv's RAM.
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn device(sectors: usize) -> (VirtioBlk, DevEnv) {
        let lines = IrqLines::new();
        let router = PirqRouter::new(Rc::clone(&lines));
        let config = Rc::new(RefCell::new(config_space()));
        config
            .borrow_mut()
            .write(4, (command::MEMORY | command::BUS_MASTER) as u8);
        let data = (0..sectors * 512).map(|i| (i / 512) as u8).collect();
        let d = VirtioBlk::new(
            config,
            router.line(4, 1),
            Box::new(MemDisk::new(data)),
            "T".into(),
        );
        (d, DevEnv::new())
    }

    fn w(d: &mut VirtioBlk, env: &mut DevEnv, off: u64, v: u64, width: usize) {
        let mut ctx = env.at(0);
        d.write(&mut ctx, BAR, off, &v.to_le_bytes()[..width]);
    }

    /// Feature negotiation and the queue set up as Linux does it.
    fn set_up(d: &mut VirtioBlk, env: &mut DevEnv) {
        w(d, env, 0x14, 1 | 2, 1);
        w(d, env, 0x08, 1, 4);
        w(d, env, 0x0C, 1, 4); // VERSION_1
        w(d, env, 0x14, 1 | 2 | 8, 1);
        let mut ctx = env.at(0);
        let mut st = [0u8];
        d.read(&mut ctx, BAR, 0x14, &mut st);
        assert_eq!(st[0] & 8, 8, "FEATURES_OK kept");
        w(d, env, 0x16, 0, 2);
        w(d, env, 0x18, 16, 2);
        w(d, env, 0x20, DESC, 4);
        w(d, env, 0x24, 0, 4);
        w(d, env, 0x28, AVAIL, 8);
        w(d, env, 0x30, USED, 8);
        w(d, env, 0x1C, 1, 2);
        w(d, env, 0x14, 1 | 2 | 4 | 8, 1);
    }

    fn desc(env: &mut DevEnv, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = Vec::new();
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        env.mem.write_bytes(GuestPhys(DESC + 16 * i), &b);
    }

    fn offer(env: &mut DevEnv, slot: u16, head: u16, idx: u16) {
        env.mem.write_bytes(
            GuestPhys(AVAIL + 4 + 2 * u64::from(slot)),
            &head.to_le_bytes(),
        );
        env.mem
            .write_bytes(GuestPhys(AVAIL + 2), &idx.to_le_bytes());
    }

    #[test]
    fn a_read_request_fills_the_buffer_and_completes() {
        let (mut d, mut env) = device(16);
        set_up(&mut d, &mut env);
        // Header: IN, sector 3; data 1024 bytes at 0x5000; status at 0x6000.
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&T_IN.to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&3u64.to_le_bytes());
        env.mem.write_bytes(GuestPhys(0x4000), &hdr);
        desc(&mut env, 0, 0x4000, 16, D_NEXT, 1);
        desc(&mut env, 1, 0x5000, 1024, D_NEXT | D_WRITE, 2);
        desc(&mut env, 2, 0x6000, 1, D_WRITE, 0);
        env.mem.write_bytes(GuestPhys(0x6000), &[0xFF]);
        offer(&mut env, 0, 0, 1);
        w(&mut d, &mut env, NOTIFY, 0, 2);
        let mut data = vec![0u8; 1024];
        env.mem.read_bytes(GuestPhys(0x5000), &mut data);
        assert!(data[..512].iter().all(|&b| b == 3) && data[512..].iter().all(|&b| b == 4));
        let mut st = [0xFFu8];
        env.mem.read_bytes(GuestPhys(0x6000), &mut st);
        assert_eq!(st[0], S_OK);
        let mut used = [0u8; 12];
        env.mem.read_bytes(GuestPhys(USED), &mut used);
        assert_eq!(u16::from_le_bytes([used[2], used[3]]), 1, "used idx");
        assert_eq!(
            u32::from_le_bytes([used[8], used[9], used[10], used[11]]),
            1025
        );
    }

    #[test]
    fn a_looping_chain_is_a_guest_error_not_a_hang() {
        let (mut d, mut env) = device(4);
        set_up(&mut d, &mut env);
        desc(&mut env, 0, 0x4000, 16, D_NEXT, 1);
        desc(&mut env, 1, 0x5000, 16, D_NEXT | D_WRITE, 0);
        offer(&mut env, 0, 0, 1);
        w(&mut d, &mut env, NOTIFY, 0, 2);
        assert!(
            env.errors.iter().any(|e| e.contains("loops")),
            "{:?}",
            env.errors
        );
        // A read past the end completes with IOERR, and so does a 4 GiB
        // buffer (refused before anything is allocated).
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&T_IN.to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&1000u64.to_le_bytes());
        env.mem.write_bytes(GuestPhys(0x4000), &hdr);
        desc(&mut env, 2, 0x4000, 16, D_NEXT, 3);
        desc(&mut env, 3, 0x5000, 512, D_NEXT | D_WRITE, 4);
        desc(&mut env, 4, 0x6000, 1, D_WRITE, 0);
        offer(&mut env, 1, 2, 2);
        w(&mut d, &mut env, NOTIFY, 0, 2);
        let mut st = [0u8];
        env.mem.read_bytes(GuestPhys(0x6000), &mut st);
        assert_eq!(st[0], S_IOERR);
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&T_IN.to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&0u64.to_le_bytes());
        env.mem.write_bytes(GuestPhys(0x4000), &hdr);
        desc(&mut env, 5, 0x4000, 16, D_NEXT, 6);
        desc(&mut env, 6, 0x5000, u32::MAX, D_NEXT | D_WRITE, 7);
        desc(&mut env, 7, 0x6000, 1, D_WRITE, 0);
        env.mem.write_bytes(GuestPhys(0x6000), &[0xAA]);
        offer(&mut env, 2, 5, 3);
        w(&mut d, &mut env, NOTIFY, 0, 2);
        env.mem.read_bytes(GuestPhys(0x6000), &mut st);
        assert_eq!(st[0], S_IOERR);
    }
}
