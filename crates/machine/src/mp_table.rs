//! The Intel MultiProcessor Specification 1.4 tables, for a directly booted
//! kernel that does not use ACPI (`acpi=off`): the floating pointer and the
//! configuration table, describing what the MADT describes.
//!
//! - one processor entry per CPU (APIC ID = index, CPU 0 the BSP), with the
//!   CPU's signature and feature flags;
//! - bus 0 PCI and bus 1 ISA;
//! - the I/O APIC (its ID the first after the CPUs', at 0xFEC00000);
//! - an I/O interrupt entry per ISA IRQ but the cascade: IRQ0 on pin 2 (as the
//!   MADT's override), the others on their own pins, conforming polarity and
//!   trigger, except the SCI (IRQ 9) level-triggered active high;
//! - the local interrupts every CPU has: ExtINT on LINT0 and NMI on LINT1.
//!
//! The floating pointer's feature byte 2 leaves IMCRP clear: the machine
//! starts in virtual-wire mode (the 8259 reaches the BSP through LINT0).

/// Where [`crate::pc::prepare_direct_boot`] puts the tables: the start of the
/// BIOS area (0xF0000), which the e820 map reserves and firmware leaves as
/// read-only RAM.
pub const MP_AREA: u32 = 0xF_0000;
/// The local APIC's address.
const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// The I/O APIC's address.
const IOAPIC_ADDR: u32 = 0xFEC0_0000;
const PCI_BUS: u8 = 0;
const ISA_BUS: u8 = 1;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// The floating pointer (16 bytes at `base`) followed by the configuration
/// table, for `cpus` CPUs whose CPUID leaf 1 gives `signature` (EAX) and
/// `features` (EDX), and SCI on `sci_irq`.
pub fn build(base: u32, cpus: u32, signature: u32, features: u32, sci_irq: u8) -> Vec<u8> {
    let ioapic_id = cpus as u8;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..cpus {
        // Processor: type 0, APIC ID, APIC version, flags (EN, BP),
        // signature, features, reserved.
        let flags = 1 | if cpu == 0 { 2 } else { 0 };
        entries.extend_from_slice(&[0, cpu as u8, 0x14, flags]);
        entries.extend_from_slice(&signature.to_le_bytes());
        entries.extend_from_slice(&features.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    for (id, name) in [(PCI_BUS, b"PCI   "), (ISA_BUS, b"ISA   ")] {
        entries.extend_from_slice(&[1, id]);
        entries.extend_from_slice(name);
        count += 1;
    }
    // I/O APIC: type 2, ID, version 0x11, flags (EN), address.
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in (0u8..16).filter(|&i| i != 2) {
        // I/O interrupt: type 3, INT (0), flags (polarity 1:0, trigger 3:2),
        // source bus and IRQ, destination I/O APIC and pin.
        let flags: u16 = if irq == sci_irq { 0x000D } else { 0 };
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[3, 0]);
        entries.extend_from_slice(&flags.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS, irq, ioapic_id, pin]);
        count += 1;
    }
    for (kind, lint) in [(3u8, 0u8), (1, 1)] {
        // Local interrupt: type 4, ExtINT (3) or NMI (1), conforming, from
        // the ISA bus, to every local APIC (0xFF).
        entries.extend_from_slice(&[4, kind, 0, 0, ISA_BUS, 0, 0xFF, lint]);
        count += 1;
    }

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"X86BT   ");
    table.extend_from_slice(b"X86BTPC     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    table.push(0);
    table.push(0);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(base + 16).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision 1.4
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0, 0, 0, 0, 0]); // a configuration table; no IMCR
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
    }

    #[test]
    fn floating_pointer_and_table_checksum_and_point_at_each_other() {
        let b = build(MP_AREA, 4, 0x663, 0x0781_abfb, 9);
        assert_eq!(&b[..4], b"_MP_");
        assert!(sums_to_zero(&b[..16]));
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()),
            MP_AREA + 16
        );
        let t = &b[16..];
        assert_eq!(&t[..4], b"PCMP");
        let len = u16::from_le_bytes([t[4], t[5]]) as usize;
        assert_eq!(len, t.len());
        assert!(sums_to_zero(t));
        // 4 processors, 2 buses, 1 I/O APIC, 15 ISA IRQs, 2 local.
        assert_eq!(u16::from_le_bytes([t[34], t[35]]), 4 + 2 + 1 + 15 + 2);
        assert_eq!(len, 44 + 4 * 20 + (2 + 1 + 15 + 2) * 8);
    }

    #[test]
    fn entries_name_each_cpu_the_ioapic_and_irq0_on_pin_2() {
        let b = build(MP_AREA, 2, 0x663, 0, 9);
        let e = &b[16 + 44..];
        assert_eq!(&e[..4], &[0, 0, 0x14, 3], "BSP: enabled, bootstrap");
        assert_eq!(&e[20..24], &[0, 1, 0x14, 1], "AP: enabled");
        let io = &e[40 + 16..40 + 24];
        assert_eq!(&io[..4], &[2, 2, 0x11, 1]);
        let irq0 = &e[40 + 24..40 + 32];
        assert_eq!(irq0, &[3, 0, 0, 0, ISA_BUS, 0, 2, 2]);
        let sci = &e[40 + 24 + 8 * 8..40 + 24 + 9 * 8];
        assert_eq!(sci, &[3, 0, 0x0D, 0, ISA_BUS, 9, 2, 9]);
    }
}
