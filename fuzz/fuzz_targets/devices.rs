//! The PC's devices under arbitrary register traffic, as a guest driver gone
//! wrong would make it: port reads and writes, MMIO reads and writes (the
//! APICs, HPET, PCI BARs wherever the input programs them), guest-RAM writes
//! that DMA descriptors and virtio rings are read from, and time passing so
//! that timers fire and transfers complete. The machine has an IDE disk and a
//! CD, a virtio-blk disk, a VGA and QEMU's edu device. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use x86bt_machine::block::MemDisk;
use x86bt_machine::devices::ide::{DriveSpec, Media};
use x86bt_machine::devices::vga::SharedVga;
use x86bt_machine::pc::{self, ExtraDevice, PcConfig, Storage};
use x86bt_machine::GuestPhys;

/// Ports the input addresses most: the PC's devices sit below 0x1000, and
/// PCI BARs are placed from 0xC000 by a guest (the input may put them
/// anywhere).
fn port(hi: u8, lo: u8) -> u16 {
    let p = u16::from_le_bytes([lo, hi]);
    if hi & 0x80 == 0 {
        p & 0x0FFF
    } else {
        p
    }
}

/// MMIO addresses: the APICs, the HPET, the VGA window, or anywhere above RAM.
fn mmio(sel: u8, off: u32) -> u64 {
    match sel & 3 {
        0 => 0xFEE0_0000 + u64::from(off & 0xFFF),
        1 => 0xFEC0_0000 + u64::from(off & 0xFFF),
        2 => 0xFED0_0000 + u64::from(off & 0x3FF),
        _ => 0x000A_0000 + u64::from(off & 0x1_FFFF),
    }
}

fuzz_target!(|data: &[u8]| {
    x86bt_fuzz::keep_last(data);
    let storage = Storage {
        ide: vec![
            DriveSpec {
                media: Media::Disk,
                backend: Box::new(MemDisk::new(vec![0x5A; 1 << 20])),
                channel: 0,
                unit: 0,
            },
            DriveSpec {
                media: Media::Cdrom,
                backend: Box::new(MemDisk::new(vec![0xA5; 1 << 20])),
                channel: 1,
                unit: 0,
            },
        ],
        virtio: vec![Box::new(MemDisk::new(vec![0x3C; 1 << 20]))],
        vga: Some(SharedVga::new()),
        ..Default::default()
    };
    let mut m = pc::build(PcConfig {
        cpus: 2,
        extra_devices: vec![ExtraDevice::Edu],
        storage,
        ..PcConfig::headless(4 << 20, None)
    })
    .expect("a 4 MiB PC builds");
    let mut now = 0u64;
    for op in data.chunks_exact(8) {
        let size = 1usize << (op[1] & 3);
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        match op[0] % 8 {
            0 | 1 => m.io_write(port(op[2], op[3]), size.min(4), value),
            2 => {
                let _ = m.io_read(port(op[2], op[3]), size.min(4));
            }
            3 => {
                let at = mmio(op[1] >> 2, u32::from_le_bytes([op[2], op[3], op[4], 0]));
                m.write_phys(GuestPhys(at), size, u64::from(value));
            }
            4 => {
                let at = mmio(op[1] >> 2, u32::from_le_bytes([op[2], op[3], op[4], 0]));
                let _ = m.read_phys(GuestPhys(at), size);
            }
            5 => {
                // Guest RAM below 1 MiB, where a driver keeps its rings.
                let at = u64::from(u32::from_le_bytes([op[2], op[3], op[1] & 0x0F, 0])) & !7;
                m.write_phys(GuestPhys(at), 4, u64::from(value));
            }
            6 => {
                // Time passes: up to about 65 ms.
                now += u64::from(u16::from_le_bytes([op[2], op[3]])) * 1_000;
                m.set_time(now);
                m.advance_devices();
            }
            _ => {
                for _ in 0..16 {
                    if m.acknowledge_interrupt().is_none() {
                        break;
                    }
                }
                m.select_cpu(usize::from(op[1] & 1));
            }
        }
    }
});
