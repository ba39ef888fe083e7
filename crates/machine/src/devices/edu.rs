//! QEMU's educational PCI device ("edu", PCI ID 1234:11e8), as QEMU's
//! `docs/specs/edu.rst` specifies it, so the same guest code drives it under
//! QEMU (`-device edu`) and under x86bt (`-device edu`): a PCI function with a
//! 1 MiB memory BAR, INTx (INTA#) and MSI, and DMA between guest memory and a
//! 4 KiB buffer of its own. It is the platform's test device for BARs, MSI,
//! INTx routing and DMA.
//!
//! BAR 0 registers (accesses below 0x80 are 32 bits; from 0x80, 32 or 64):
//! - 0x00 identification 0x010000ED; 0x04 liveness (reads the inverse of
//!   what was written); 0x08 factorial (a write starts it, when none runs;
//!   the result replaces the value); 0x20 status (bit 0 computing, read-only;
//!   bit 7: raise interrupt 0x1 when the factorial is done); 0x24 interrupt
//!   status; 0x60 raise interrupt (ORs the value in); 0x64 acknowledge
//!   (clears the bits written);
//! - DMA: 0x80 source, 0x88 destination, 0x90 count, 0x98 command (bit 0
//!   start, cleared when done; bit 1 direction, 0 guest memory to the
//!   device's buffer, 1 back; bit 2: raise interrupt 0x100 when done). The
//!   buffer is at device addresses 0x40000-0x40FFF.
//!
//! An interrupt is an MSI while MSI is enabled, else INTA# held while the
//! interrupt status is not 0. The factorial takes 1 us and a DMA transfer
//! 10 us of virtual time (QEMU uses a thread and a 100 ms timer; the
//! specification names no time). A DMA range outside the buffer, or a
//! transfer while bus mastering is off, is a guest error and transfers
//! nothing (QEMU aborts on the former); DMA to guest addresses with no RAM
//! behind them reads all ones and writes nowhere (a master abort).

use super::pci::PirqLine;
use super::pci_endpoint::{BarDef, BarKind, EndpointId, PciEndpoint};
use crate::device::{DevCtx, Device, Nanos};
use crate::GuestPhys;
use std::cell::RefCell;
use std::rc::Rc;

/// PCI IDs.
pub const VENDOR: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE: u16 = 0x11E8;
/// Identification register: version 1.0.
const IDENT: u32 = 0x0100_00ED;
/// The DMA buffer's device address and size.
const DMA_BASE: u64 = 0x40000;
const DMA_SIZE: u64 = 4096;
/// How long a factorial and a DMA transfer take.
const FACT_NS: Nanos = 1_000;
const DMA_NS: Nanos = 10_000;

/// The edu device.
pub struct Edu {
    config: Rc<RefCell<PciEndpoint>>,
    intx: PirqLine,
    liveness: u32,
    fact: u32,
    status: u32,
    irq_status: u32,
    fact_done_at: Option<Nanos>,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    dma_done_at: Option<Nanos>,
    buffer: Box<[u8; DMA_SIZE as usize]>,
}

/// edu's saved state (see [`crate::snapshot`]): its configuration space, its
/// INTx pin, registers, the computation and DMA in flight, and its buffer.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EduState {
    config: PciEndpoint,
    intx: bool,
    liveness: u32,
    fact: u32,
    status: u32,
    irq_status: u32,
    fact_done_at: Option<Nanos>,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    dma_done_at: Option<Nanos>,
    #[serde(with = "crate::snapshot::boxed_byte_array")]
    buffer: Box<[u8; DMA_SIZE as usize]>,
}

/// The configuration space edu presents.
pub fn config_space() -> PciEndpoint {
    PciEndpoint::new(
        EndpointId {
            vendor: VENDOR,
            device: DEVICE,
            revision: 0x10,
            class: 0x0000_FF00,
            subsystem: (0x1AF4, 0x1100),
            pin: 1,
        },
        &[(
            0,
            BarDef {
                kind: BarKind::Memory,
                size: 1 << 20,
            },
        )],
        true,
    )
}

impl Edu {
    /// An edu device with the configuration space `config` (shared with the
    /// host bridge) and its INTA# line `intx`.
    pub fn new(config: Rc<RefCell<PciEndpoint>>, intx: PirqLine) -> Self {
        Self {
            config,
            intx,
            liveness: 0,
            fact: 0,
            status: 0,
            irq_status: 0,
            fact_done_at: None,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            dma_done_at: None,
            buffer: Box::new([0; DMA_SIZE as usize]),
        }
    }

    fn raise(&mut self, ctx: &mut DevCtx, bits: u32) {
        self.irq_status |= bits;
        if self.irq_status == 0 {
            return;
        }
        let cfg = self.config.borrow();
        if let Some(msi) = cfg.msi_message() {
            if cfg.bus_master() {
                ctx.send_msi(msi);
            }
            return;
        }
        drop(cfg);
        self.update_intx();
    }

    /// INTA# follows the interrupt status (while MSI is off and INTx is not
    /// gated).
    fn update_intx(&mut self) {
        let mut cfg = self.config.borrow_mut();
        let pending = self.irq_status != 0 && cfg.msi_message().is_none();
        cfg.set_interrupt_status(pending);
        let level = pending && !cfg.intx_disabled();
        drop(cfg);
        if self.intx.is_high() != level {
            self.intx.set_level(level);
        }
    }

    fn advance_to(&mut self, ctx: &mut DevCtx) {
        let now = ctx.now();
        if self.fact_done_at.is_some_and(|t| t <= now) {
            self.fact_done_at = None;
            self.fact = (1..=self.fact).fold(1u32, |a, n| a.wrapping_mul(n));
            self.status &= !1;
            if self.status & 0x80 != 0 {
                self.raise(ctx, 0x1);
            }
        }
        if self.dma_done_at.is_some_and(|t| t <= now) {
            self.dma_done_at = None;
            self.dma_transfer(ctx);
            self.dma_cmd &= !1;
            if self.dma_cmd & 4 != 0 {
                self.raise(ctx, 0x100);
            }
        }
    }

    /// The transfer the DMA registers describe.
    fn dma_transfer(&mut self, ctx: &mut DevCtx) {
        let to_guest = self.dma_cmd & 2 != 0;
        let (guest, dev) = if to_guest {
            (self.dma_dst, self.dma_src)
        } else {
            (self.dma_src, self.dma_dst)
        };
        let n = self.dma_count;
        let inside = dev >= DMA_BASE && n <= DMA_SIZE && dev - DMA_BASE <= DMA_SIZE - n;
        if !inside {
            ctx.guest_error(format!(
                "edu: DMA of {n:#x} bytes at device address {dev:#x} is outside its buffer (0x40000-0x40fff); nothing transferred"
            ));
            return;
        }
        if !self.config.borrow().bus_master() {
            ctx.guest_error("edu: DMA with bus mastering off; nothing transferred".into());
            return;
        }
        let off = (dev - DMA_BASE) as usize;
        let buf = &mut self.buffer[off..off + n as usize];
        if to_guest {
            ctx.dma_write(GuestPhys(guest), buf);
        } else {
            ctx.dma_read(GuestPhys(guest), buf);
        }
    }

    fn reg_read(&self, offset: u64) -> u64 {
        match offset {
            0x00 => IDENT.into(),
            0x04 => (!self.liveness).into(),
            0x08 => self.fact.into(),
            0x20 => self.status.into(),
            0x24 => self.irq_status.into(),
            0x80 => self.dma_src,
            0x88 => self.dma_dst,
            0x90 => self.dma_count,
            0x98 => self.dma_cmd,
            o if (DMA_BASE..DMA_BASE + DMA_SIZE).contains(&o) => {
                let i = (o - DMA_BASE) as usize;
                let mut b = [0u8; 8];
                let n = (DMA_SIZE as usize - i).min(8);
                b[..n].copy_from_slice(&self.buffer[i..i + n]);
                u64::from_le_bytes(b)
            }
            _ => u64::MAX,
        }
    }

    fn reg_write(&mut self, ctx: &mut DevCtx, offset: u64, value: u64) {
        let now = ctx.now();
        let v32 = value as u32;
        match offset {
            0x04 => self.liveness = v32,
            0x08 if self.status & 1 == 0 => {
                self.fact = v32;
                self.status |= 1;
                self.fact_done_at = Some(now + FACT_NS);
            }
            0x20 => self.status = (self.status & 1) | (v32 & 0x80),
            0x60 => self.raise(ctx, v32),
            0x64 => {
                self.irq_status &= !v32;
                self.update_intx();
            }
            0x80 => self.dma_src = value,
            0x88 => self.dma_dst = value,
            0x90 => self.dma_count = value,
            0x98 if self.dma_cmd & 1 == 0 => {
                self.dma_cmd = value & 7;
                if value & 1 != 0 {
                    self.dma_done_at = Some(now + DMA_NS);
                }
            }
            _ => {}
        }
    }
}

impl Device for Edu {
    fn name(&self) -> &'static str {
        "edu"
    }

    fn read(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &mut [u8]) {
        self.advance_to(ctx);
        let ok = if offset < 0x80 {
            data.len() == 4
        } else {
            matches!(data.len(), 4 | 8)
        };
        let v = if ok { self.reg_read(offset) } else { u64::MAX };
        let n = data.len().min(8);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    }

    fn write(&mut self, ctx: &mut DevCtx, _region: u8, offset: u64, data: &[u8]) {
        self.advance_to(ctx);
        let ok = if offset < 0x80 {
            data.len() == 4
        } else {
            matches!(data.len(), 4 | 8)
        };
        if !ok {
            return;
        }
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(b);
        if (DMA_BASE..DMA_BASE + DMA_SIZE).contains(&offset) {
            let i = (offset - DMA_BASE) as usize;
            let n = (DMA_SIZE as usize - i).min(data.len());
            self.buffer[i..i + n].copy_from_slice(&data[..n]);
            return;
        }
        self.reg_write(ctx, offset, value);
    }

    fn advance(&mut self, ctx: &mut DevCtx) {
        self.advance_to(ctx);
    }

    fn next_deadline(&self, _now: Nanos) -> Option<Nanos> {
        match (self.fact_done_at, self.dma_done_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn reset(&mut self) {
        *self.config.borrow_mut() = config_space();
        self.intx.set_level(false);
        let config = Rc::clone(&self.config);
        let intx = self.intx.clone();
        *self = Self::new(config, intx);
    }

    fn save(&mut self) -> Result<crate::snapshot::DeviceState, crate::snapshot::StateError> {
        let Self {
            config,
            intx,
            liveness,
            fact,
            status,
            irq_status,
            fact_done_at,
            dma_src,
            dma_dst,
            dma_count,
            dma_cmd,
            dma_done_at,
            buffer,
        } = self;
        Ok(crate::snapshot::DeviceState::Edu(Box::new(EduState {
            config: config.borrow().clone(),
            intx: intx.save(),
            liveness: Clone::clone(liveness),
            fact: Clone::clone(fact),
            status: Clone::clone(status),
            irq_status: Clone::clone(irq_status),
            fact_done_at: Clone::clone(fact_done_at),
            dma_src: Clone::clone(dma_src),
            dma_dst: Clone::clone(dma_dst),
            dma_count: Clone::clone(dma_count),
            dma_cmd: Clone::clone(dma_cmd),
            dma_done_at: Clone::clone(dma_done_at),
            buffer: Clone::clone(buffer),
        })))
    }

    fn restore(
        &mut self,
        state: &crate::snapshot::DeviceState,
    ) -> Result<(), crate::snapshot::StateError> {
        let crate::snapshot::DeviceState::Edu(s) = state else {
            return Err(crate::snapshot::wrong_kind(self.name(), state));
        };
        let EduState {
            config,
            intx,
            liveness,
            fact,
            status,
            irq_status,
            fact_done_at,
            dma_src,
            dma_dst,
            dma_count,
            dma_cmd,
            dma_done_at,
            buffer,
        } = (**s).clone();
        *self.config.borrow_mut() = config;
        self.intx.restore(intx);
        self.liveness = liveness;
        self.fact = fact;
        self.status = status;
        self.irq_status = irq_status;
        self.fact_done_at = fact_done_at;
        self.dma_src = dma_src;
        self.dma_dst = dma_dst;
        self.dma_count = dma_count;
        self.dma_cmd = dma_cmd;
        self.dma_done_at = dma_done_at;
        self.buffer = buffer;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DevEnv, IrqLines};
    use crate::devices::pci::PirqRouter;

    /// Edu on slot 3 (PIRQ C), PIRQ C routed to IRQ 11 by hand.
    fn rig() -> (Edu, Rc<RefCell<PciEndpoint>>, Rc<IrqLines>, DevEnv) {
        let cfg = Rc::new(RefCell::new(config_space()));
        let lines = IrqLines::new();
        let router = PirqRouter::new(Rc::clone(&lines));
        router.route_for_test([0x80, 0x80, 11, 0x80]);
        let edu = Edu::new(Rc::clone(&cfg), router.line(3, 1));
        (edu, cfg, lines, DevEnv::new())
    }

    fn w(edu: &mut Edu, env: &mut DevEnv, now: Nanos, off: u64, v: u32) {
        edu.write(&mut env.at(now), 0, off, &v.to_le_bytes());
    }

    fn r(edu: &mut Edu, env: &mut DevEnv, now: Nanos, off: u64) -> u32 {
        let mut b = [0u8; 4];
        edu.read(&mut env.at(now), 0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identification_liveness_and_factorial() {
        let (mut edu, _, _, mut env) = rig();
        assert_eq!(r(&mut edu, &mut env, 0, 0), 0x0100_00ED);
        w(&mut edu, &mut env, 0, 4, 0x1234_5678);
        assert_eq!(r(&mut edu, &mut env, 0, 4), !0x1234_5678);
        w(&mut edu, &mut env, 0, 8, 10);
        assert_eq!(r(&mut edu, &mut env, 0, 0x20) & 1, 1, "computing");
        assert_eq!(r(&mut edu, &mut env, FACT_NS, 8), 3_628_800);
        assert_eq!(r(&mut edu, &mut env, FACT_NS, 0x20) & 1, 0);
    }

    #[test]
    fn intx_follows_the_interrupt_status_msi_replaces_it() {
        let (mut edu, cfg, lines, mut env) = rig();
        w(&mut edu, &mut env, 0, 0x60, 0x8);
        assert_ne!(lines.levels() & (1 << 11), 0, "INTA# asserted");
        w(&mut edu, &mut env, 0, 0x64, 0x8);
        assert_eq!(lines.levels() & (1 << 11), 0, "deasserted on ack");
        {
            let mut c = cfg.borrow_mut();
            for (i, b) in 0xFEE0_0000u32.to_le_bytes().into_iter().enumerate() {
                c.write(0x44 + i as u8, b);
            }
            c.write(0x4C, 0x41);
            c.write(0x42, 1);
            c.write(0x04, 0x04);
        }
        w(&mut edu, &mut env, 0, 0x60, 0x1);
        assert_eq!(lines.levels() & (1 << 11), 0, "no INTx with MSI");
        assert_eq!(env.msi.len(), 1);
        assert_eq!(env.msi[0].data, 0x41);
    }

    #[test]
    fn dma_round_trip_through_the_buffer() {
        let (mut edu, cfg, _, mut env) = rig();
        cfg.borrow_mut().write(0x04, 0x06);
        env.mem.write_bytes(GuestPhys(0x1000), b"hello, dma");
        w(&mut edu, &mut env, 0, 0x80, 0x1000);
        w(&mut edu, &mut env, 0, 0x88, 0x40010);
        w(&mut edu, &mut env, 0, 0x90, 10);
        w(&mut edu, &mut env, 0, 0x98, 1);
        edu.advance(&mut env.at(DMA_NS));
        assert_eq!(r(&mut edu, &mut env, DMA_NS, 0x98) & 1, 0, "done");
        w(&mut edu, &mut env, DMA_NS, 0x80, 0x40010);
        w(&mut edu, &mut env, DMA_NS, 0x88, 0x2000);
        w(&mut edu, &mut env, DMA_NS, 0x98, 3);
        edu.advance(&mut env.at(2 * DMA_NS));
        let mut back = [0u8; 10];
        env.mem.read_bytes(GuestPhys(0x2000), &mut back);
        assert_eq!(&back, b"hello, dma");
    }

    #[test]
    fn dma_outside_the_buffer_is_a_guest_error_not_a_panic() {
        let (mut edu, cfg, _, mut env) = rig();
        cfg.borrow_mut().write(0x04, 0x06);
        w(&mut edu, &mut env, 0, 0x80, 0x1000);
        w(&mut edu, &mut env, 0, 0x88, 0x40FF0);
        w(&mut edu, &mut env, 0, 0x90, 0x100);
        w(&mut edu, &mut env, 0, 0x98, 1);
        edu.advance(&mut env.at(DMA_NS));
        assert_eq!(env.errors.len(), 1, "{:?}", env.errors);
        // Guest memory with no RAM behind it: a master abort, no panic.
        w(&mut edu, &mut env, DMA_NS, 0x88, 0x40000);
        w(&mut edu, &mut env, DMA_NS, 0x80, 0xF000_0000);
        w(&mut edu, &mut env, DMA_NS, 0x90, 16);
        w(&mut edu, &mut env, DMA_NS, 0x98, 1);
        edu.advance(&mut env.at(2 * DMA_NS));
        assert_eq!(env.errors.len(), 1, "no new error");
        assert_eq!(r(&mut edu, &mut env, 2 * DMA_NS, 0x40000), u32::MAX);
    }
}
