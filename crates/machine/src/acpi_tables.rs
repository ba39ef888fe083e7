//! Minimal ACPI tables for a directly booted kernel, which has no firmware to
//! build them (ACPI 6.5 §5.2: RSDP, RSDT, FADT, FACS and DSDT).
//!
//! They describe what x86bt's PC really has and nothing more:
//! - the PIIX4 power-management block at [`PM_IO_PORT`]: PM1a event and control
//!   registers, the 24-bit PM timer and GPE0;
//! - the SCI on ISA IRQ 9;
//! - the RTC century register at CMOS 0x32;
//! - the reset register (FADT revision 2, ACPI 2.0 §5.2.8): PIIX3's reset control
//!   register at port 0xCF9, value 0x06 (SYS_RST | RST_CPU), as PC firmware
//!   describes it, so a guest that resets through ACPI reaches the same reset;
//! - a DSDT whose only object is `\_S5`, soft-off with SLP_TYP 0 (PIIX4's
//!   "soft off" encoding), so the guest can power the machine off;
//! - a MADT (ACPI 6.5 §5.2.12): the local APIC address (0xFEE00000), the
//!   PC-AT-compatible flag (the 8259 pair is there), one Processor Local APIC
//!   entry per CPU (UID = APIC ID = the CPU's index) and LINT1 as NMI on every
//!   processor, as PC firmware wires it; the I/O APIC (its ID the first after
//!   the CPUs', at 0xFEC00000, GSIs 0-23), and the
//!   interrupt source overrides a PC has: ISA IRQ0 (the PIT) on GSI 2, and the
//!   SCI (IRQ 9) level-triggered, active high;
//! - an HPET table (IA-PC HPET 1.0a §3.2.4): the event timer block's ID (its
//!   capabilities register's low half) and its address, 0xFED00000;
//! - SMI_CMD = 0: the machine has no SMM, and the ACPI spec defines a zero
//!   SMI_CMD as "the system is always in ACPI mode". PM1_CNT.SCI_EN is set by
//!   [`crate::pc::prepare_direct_boot`] to match.
//!
//! All the tables fit in [`ACPI_AREA_LEN`] bytes at [`ACPI_AREA`], the EBDA, which
//! the Linux loader's e820 map reserves.

use crate::devices::acpi_pm::PM_IO_PORT;

/// Where the tables go: the EBDA, reserved in the e820 map, and the first KiB
/// of it is where an ACPI 1.0 OS looks for the RSDP.
pub const ACPI_AREA: u32 = 0x9_FC00;
/// Bytes the tables take (less than the 1 KiB EBDA).
pub const ACPI_AREA_LEN: usize = 0x300;

/// Offsets of each table inside the area. The FACS must be 64-byte aligned and
/// the RSDP 16-byte aligned.
const RSDP_OFF: usize = 0x00;
const FACS_OFF: usize = 0x40;
const RSDT_OFF: usize = 0x80;
const FADT_OFF: usize = 0xC0;
const DSDT_OFF: usize = 0x150;
const MADT_OFF: usize = 0x180;
const HPET_OFF: usize = 0x260;
const HPET_LEN: usize = 56;
/// The most CPUs the MADT slot holds (8 bytes per Processor Local APIC entry).
pub const MAX_CPUS: u32 = 16;
/// The local APIC's physical address, as the MADT gives it.
const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// The FADT's length: the ACPI 1.0 layout (116 bytes) plus RESET_REG,
/// RESET_VALUE, IAPC_BOOT_ARCH's successor bytes and FADT minor version (to 132).
const FADT_LEN: usize = 132;

// Slots do not overlap, stay inside the area, and the FACS is 64-byte aligned.
const _: () = assert!(FACS_OFF + 64 <= RSDT_OFF && RSDT_OFF + 40 <= FADT_OFF);
const _: () = assert!(FADT_OFF + FADT_LEN <= DSDT_OFF && DSDT_OFF + 48 <= MADT_OFF);
const _: () = assert!(MADT_OFF + madt_len(MAX_CPUS) <= HPET_OFF);
const _: () = assert!(HPET_OFF + HPET_LEN <= ACPI_AREA_LEN);
const _: () = assert!(RSDT_OFF + 48 <= FADT_OFF);
const _: () = assert!((ACPI_AREA as usize + FACS_OFF).is_multiple_of(64));

const OEM_ID: &[u8; 6] = b"X86BT ";
const OEM_TABLE_ID: &[u8; 8] = b"X86BTPC ";

/// The SCI interrupt (ISA IRQ 9, as PC firmware routes PIIX4's SCI).
pub const SCI_IRQ: u16 = 9;

/// AML of the DSDT body: `Name (_S5, Package (4) { 0, 0, 0, 0 })`.
/// NameOp 0x08, NameString "_S5_", PackageOp 0x12, PkgLength 6 (itself, the
/// element count and four ZeroOps), NumElements 4, then 4 x ZeroOp.
const DSDT_AML: [u8; 12] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
];

/// The byte that makes `bytes` sum to zero mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A system description table header (ACPI §5.2.6) followed by `body`, with its
/// checksum filled in.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"XBT ");
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The port of the reset register the FADT names (PIIX3 reset control).
pub const RESET_REG_PORT: u16 = 0xCF9;
/// The value written there to reset (SYS_RST | RST_CPU: a hard reset).
pub const RESET_VALUE: u8 = 0x06;

/// The FADT body after the header: the ACPI 1.0 layout, then the reset register
/// of FADT revision 2 ([`FADT_LEN`] bytes in all).
fn fadt_body(facs: u32, dsdt: u32) -> Vec<u8> {
    let pm = u32::from(PM_IO_PORT);
    let mut b = Vec::with_capacity(80);
    b.extend_from_slice(&facs.to_le_bytes()); // FIRMWARE_CTRL
    b.extend_from_slice(&dsdt.to_le_bytes()); // DSDT
    b.push(0); // INT_MODEL (reserved in ACPI 2.0+)
    b.push(0); // Preferred_PM_Profile: unspecified
    b.extend_from_slice(&SCI_IRQ.to_le_bytes()); // SCI_INT
    b.extend_from_slice(&0u32.to_le_bytes()); // SMI_CMD: none, always ACPI mode
    b.extend_from_slice(&[0, 0, 0, 0]); // ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
    b.extend_from_slice(&pm.to_le_bytes()); // PM1a_EVT_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // PM1b_EVT_BLK
    b.extend_from_slice(&(pm + 4).to_le_bytes()); // PM1a_CNT_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // PM1b_CNT_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // PM2_CNT_BLK
    b.extend_from_slice(&(pm + 8).to_le_bytes()); // PM_TMR_BLK
    b.extend_from_slice(&(pm + 0xC).to_le_bytes()); // GPE0_BLK
    b.extend_from_slice(&0u32.to_le_bytes()); // GPE1_BLK
                                              // PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0_BLK_LEN,
                                              // GPE1_BLK_LEN, GPE1_BASE, CST_CNT
    b.extend_from_slice(&[4, 2, 0, 4, 4, 0, 0, 0]);
    // P_LVL2_LAT > 100 and P_LVL3_LAT > 1000: C2 and C3 not supported.
    b.extend_from_slice(&101u16.to_le_bytes());
    b.extend_from_slice(&1001u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // FLUSH_SIZE
    b.extend_from_slice(&0u16.to_le_bytes()); // FLUSH_STRIDE
    b.extend_from_slice(&[0, 0]); // DUTY_OFFSET, DUTY_WIDTH
    b.extend_from_slice(&[0, 0, 0x32]); // DAY_ALRM, MON_ALRM, CENTURY (CMOS 0x32)
    b.extend_from_slice(&0u16.to_le_bytes()); // IAPC_BOOT_ARCH (reserved in 1.0)
    b.push(0); // reserved
               // Flags: WBINVD (0), PROC_C1 (2), PWR_BUTTON (4) and SLP_BUTTON (5): no
               // fixed-feature buttons. TMR_VAL_EXT (8) clear: the timer is 24 bits.
               // RESET_REG_SUP (10): the reset register below is supported.
    b.extend_from_slice(&(0x35u32 | 1 << 10).to_le_bytes());
    // RESET_REG, a Generic Address Structure (ACPI §5.2.3.2): system I/O space,
    // 8 bits wide at offset 0, byte access, at the PIIX3 reset control port.
    b.extend_from_slice(&[1, 8, 0, 1]);
    b.extend_from_slice(&u64::from(RESET_REG_PORT).to_le_bytes());
    b.push(RESET_VALUE);
    b.extend_from_slice(&[0, 0]); // ARM_BOOT_ARCH
    b.push(0); // FADT minor version
    debug_assert_eq!(36 + b.len(), FADT_LEN);
    b
}

/// The MADT's length for `cpus` processors: the header, the local APIC
/// address and flags, a Processor Local APIC entry (8 bytes) per CPU and one
/// Local APIC NMI entry (6 bytes).
const fn madt_len(cpus: u32) -> usize {
    36 + 8 + 8 * cpus as usize + 12 + 2 * 10 + 6
}

/// The HPET table body: the event timer block ID (the capabilities
/// register's low 32 bits), its base address as a generic address (system
/// memory, 64 bits wide), HPET number 0, the minimum periodic tick (128
/// ticks, 1.28 us) and no page protection.
fn hpet_body() -> Vec<u8> {
    use crate::devices::hpet;
    let id: u32 = 1 | ((hpet::TIMERS as u32 - 1) << 8) | (1 << 13) | (1 << 15) | (0x8086 << 16);
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(&[0, 64, 0, 0]);
    b.extend_from_slice(&hpet::BASE.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&128u16.to_le_bytes());
    b.push(0);
    b
}

/// The MADT body for `cpus` processors.
fn madt_body(cpus: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(madt_len(cpus) - 36);
    b.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259 present
    for cpu in 0..cpus {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, flags
        // (bit 0: enabled).
        b.extend_from_slice(&[0, 8, cpu as u8, cpu as u8]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, ID, reserved, address, GSI base 0.
    b.extend_from_slice(&[1, 12, cpus as u8, 0]);
    b.extend_from_slice(&0xFEC0_0000u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source overrides: type 2, length 10, bus 0 (ISA), source,
    // GSI, flags (bits 1:0 polarity, 3:2 trigger; 0 = as the bus says).
    for (irq, gsi, flags) in [
        (0u8, 2u32, 0u16),
        (SCI_IRQ as u8, u32::from(SCI_IRQ), 0x000D),
    ] {
        b.extend_from_slice(&[2, 10, 0, irq]);
        b.extend_from_slice(&gsi.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    // Local APIC NMI: type 4, length 6, every processor (UID 0xFF), flags 0
    // (conforming polarity and trigger), LINT1.
    b.extend_from_slice(&[4, 6, 0xFF, 0, 0, 1]);
    b
}

/// The tables as one block to be copied to [`ACPI_AREA`], for a machine with
/// `cpus` processors (1 to [`MAX_CPUS`]). `base` is where the block will live
/// (table pointers are physical addresses).
pub fn build(base: u32, cpus: u32) -> Vec<u8> {
    let cpus = cpus.clamp(1, MAX_CPUS);
    let at = |off: usize| base + u32::try_from(off).unwrap_or(0);
    let mut area = vec![0u8; ACPI_AREA_LEN];

    // RSDP, ACPI 1.0 (revision 0, 20 bytes).
    let mut rsdp = Vec::with_capacity(20);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(0); // revision 0: ACPI 1.0
    rsdp.extend_from_slice(&at(RSDT_OFF).to_le_bytes());
    rsdp[8] = checksum(&rsdp);

    // FACS: signature, length 64, hardware signature 0, no waking vector, no
    // global lock users, no flags.
    let mut facs = vec![0u8; 64];
    facs[..4].copy_from_slice(b"FACS");
    facs[4..8].copy_from_slice(&64u32.to_le_bytes());

    let mut entries = at(FADT_OFF).to_le_bytes().to_vec();
    entries.extend_from_slice(&at(MADT_OFF).to_le_bytes());
    entries.extend_from_slice(&at(HPET_OFF).to_le_bytes());
    let rsdt = sdt(b"RSDT", 1, &entries);
    // Revision 1 (ACPI 1.0b's layout, which is all it uses).
    let madt = sdt(b"APIC", 1, &madt_body(cpus));
    // Revision 2: the first with RESET_REG (operating systems ignore the reset
    // register of a revision 1 FADT).
    let fadt = sdt(b"FACP", 2, &fadt_body(at(FACS_OFF), at(DSDT_OFF)));
    let dsdt = sdt(b"DSDT", 1, &DSDT_AML);
    let hpet = sdt(b"HPET", 1, &hpet_body());

    for (off, bytes) in [
        (RSDP_OFF, &rsdp),
        (FACS_OFF, &facs),
        (RSDT_OFF, &rsdt),
        (FADT_OFF, &fadt),
        (DSDT_OFF, &dsdt),
        (MADT_OFF, &madt),
        (HPET_OFF, &hpet),
    ] {
        area[off..off + bytes.len()].copy_from_slice(bytes);
    }
    area
}

/// Guest-physical address of the RSDP inside the block built for `base`.
pub fn rsdp_addr(base: u32) -> u32 {
    base + RSDP_OFF as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_at(area: &[u8], off: usize) -> &[u8] {
        let len = u32::from_le_bytes(area[off + 4..off + 8].try_into().unwrap()) as usize;
        &area[off..off + len]
    }

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
    }

    #[test]
    fn acpi_tables_fit_their_slots_and_checksum_to_zero() {
        let area = build(ACPI_AREA, 1);
        assert_eq!(&area[..8], b"RSD PTR ");
        assert!(sums_to_zero(&area[..20]), "RSDP checksum");
        let rsdt_addr = u32::from_le_bytes(area[16..20].try_into().unwrap());
        assert_eq!(rsdt_addr, ACPI_AREA + RSDT_OFF as u32);
        for (off, sig, len) in [
            (RSDT_OFF, b"RSDT", 48),
            (MADT_OFF, b"APIC", madt_len(1)),
            (HPET_OFF, b"HPET", HPET_LEN),
            (FADT_OFF, b"FACP", FADT_LEN),
            (DSDT_OFF, b"DSDT", 48),
        ] {
            let t = table_at(&area, off);
            assert_eq!(&t[..4], sig);
            assert_eq!(t.len(), len, "{} length", String::from_utf8_lossy(sig));
            assert!(sums_to_zero(t), "{} checksum", String::from_utf8_lossy(sig));
        }
    }

    #[test]
    fn hpet_table_gives_the_block_id_and_address() {
        let area = build(ACPI_AREA, 1);
        let rsdt = table_at(&area, RSDT_OFF);
        let ptr = u32::from_le_bytes(rsdt[44..48].try_into().unwrap());
        assert_eq!(ptr, ACPI_AREA + HPET_OFF as u32, "RSDT's third entry");
        let t = table_at(&area, HPET_OFF);
        // The ID names 3 comparators, a 64-bit counter, legacy replacement
        // and vendor 8086, as the HPET's capabilities register does.
        assert_eq!(&t[36..40], &0x8086_A201u32.to_le_bytes());
        assert_eq!(t[40], 0, "system memory");
        assert_eq!(&t[44..52], &0xFED0_0000u64.to_le_bytes());
    }

    #[test]
    fn madt_lists_each_cpu_and_the_lapic_address() {
        let area = build(ACPI_AREA, 4);
        let rsdt = table_at(&area, RSDT_OFF);
        let madt_ptr = u32::from_le_bytes(rsdt[40..44].try_into().unwrap());
        assert_eq!(madt_ptr, ACPI_AREA + MADT_OFF as u32, "RSDT's second entry");
        let m = table_at(&area, MADT_OFF);
        assert!(sums_to_zero(m));
        assert_eq!(m.len(), madt_len(4));
        assert_eq!(
            u32::from_le_bytes(m[36..40].try_into().unwrap()),
            0xFEE0_0000
        );
        assert_eq!(
            u32::from_le_bytes(m[40..44].try_into().unwrap()),
            1,
            "PCAT_COMPAT"
        );
        for cpu in 0..4u8 {
            let e = &m[44 + 8 * cpu as usize..52 + 8 * cpu as usize];
            assert_eq!(e, &[0, 8, cpu, cpu, 1, 0, 0, 0], "CPU {cpu}");
        }
        assert_eq!(&m[76..80], &[1, 12, 4, 0], "I/O APIC, ID 4");
        assert_eq!(
            u32::from_le_bytes(m[80..84].try_into().unwrap()),
            0xFEC0_0000
        );
        assert_eq!(
            &m[88..98],
            &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0],
            "IRQ0 -> GSI 2"
        );
        assert_eq!(
            &m[98..108],
            &[2, 10, 0, 9, 9, 0, 0, 0, 0x0D, 0],
            "SCI level high"
        );
        assert_eq!(&m[108..114], &[4, 6, 0xFF, 0, 0, 1], "LINT1 NMI");
    }

    #[test]
    fn fadt_points_at_the_piix4_pm_block_and_irq9() {
        let area = build(ACPI_AREA, 1);
        let f = table_at(&area, FADT_OFF);
        let dw = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
        assert_eq!(dw(36), ACPI_AREA + FACS_OFF as u32, "FIRMWARE_CTRL");
        assert_eq!(dw(40), ACPI_AREA + DSDT_OFF as u32, "DSDT");
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9, "SCI_INT");
        assert_eq!(dw(56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(dw(64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(dw(76), 0x608, "PM_TMR_BLK");
        assert_eq!(&f[88..93], &[4, 2, 0, 4, 4], "block lengths");
        assert_eq!(f[108], 0x32, "CENTURY");
    }

    #[test]
    fn fadt_reset_register_is_piix_reset_control_in_io_space() {
        // ACPI 2.0 §5.2.8: RESET_REG at offset 116 (GAS), RESET_VALUE at 128,
        // and RESET_REG_SUP (flags bit 10) set, in a FADT of revision 2 or more.
        let area = build(ACPI_AREA, 1);
        let f = table_at(&area, FADT_OFF);
        assert!(f[8] >= 2, "FADT revision");
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & 1 << 10, 0, "RESET_REG_SUP");
        assert_eq!(
            &f[116..120],
            &[1, 8, 0, 1],
            "GAS: system I/O, 8 bits, byte access"
        );
        assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0xCF9);
        assert_eq!(f[128], 0x06, "RESET_VALUE: SYS_RST | RST_CPU");
    }
}
