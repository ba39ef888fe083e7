//! PCI test kernels, driving QEMU's educational device (`-device edu`, PCI
//! 1234:11e8, specified in QEMU's docs/specs/edu.rst) through configuration
//! mechanism #1, its BAR and its interrupts: Multiboot images assembled here
//! with the runtime of `pm/mod.rs`, one `PASS`/`FAIL` line per check.
//!
//! `pci` finds the device, sizes and places its memory BAR (PCI 3.0
//! §6.2.5.1), walks the capability list to MSI, computes a factorial by
//! polling and by interrupt, delivers MSIs through the local APIC, runs DMA
//! both ways, takes INTA# through the PIIX3's PIRQ routing and the I/O APIC
//! (level-triggered, acknowledged at the device), and sends an MSI to an
//! APIC ID no CPU has (nothing arrives). It runs on the three engines and
//! unstepped under QEMU, which must print the same lines. (`difftest
//! --kernel` starts QEMU without the device, so it is not used here.)
//!
//! `pci_robustness` does what would stop QEMU or that QEMU leaves undefined:
//! a BAR placed over the HPET (the machine refuses the overlap, logs a guest
//! error, and the HPET still answers), DMA beyond the device's buffer (a guest
//! error; QEMU aborts), DMA from guest addresses with no RAM (reads all
//! ones). x86bt only, with `X86BT_TRACE=guest_errors`, whose lines it checks.

#[allow(dead_code)]
mod pm;

use iced_x86::code_asm::*;
use pm::*;
use std::process::Command;

const APIC: u32 = 0xFEE0_0000;
const IOAPIC: u32 = 0xFEC0_0000;
const HPET: u32 = 0xFED0_0000;
/// Where the kernel places the edu BAR.
const EDU: u32 = 0xFEB0_0000;
/// Configuration address of edu's function 0 (0 if not found).
const EDU_CFG: u32 = FREE;
/// Offset of its MSI capability.
const MSI_CAP: u32 = FREE + 4;
/// Interrupt counter.
const HITS: u32 = FREE + 8;
/// DMA source and destination areas in guest RAM.
const DMA_SRC: u32 = 0x20_0000;
const DMA_DST: u32 = 0x20_1000;
const V_MSI: u32 = 0x48;
const V_INTX: u32 = 0x49;
/// The ISA IRQ the kernel routes edu's PIRQ to.
const INTX_IRQ: u32 = 11;

/// `EAX = config dword at [EDU_CFG] + reg` (clobbers EDX).
fn cfg_read(k: &mut Kernel, reg: u32) -> AsmResult {
    k.mov(eax, dword_ptr(EDU_CFG))?;
    k.or(eax, reg)?;
    k.mov(dx, 0xCF8u32)?;
    k.out(dx, eax)?;
    k.mov(dx, 0xCFCu32)?;
    k.in_(eax, dx)
}

/// Config dword at [EDU_CFG] + reg = `value` (clobbers EAX, EDX).
fn cfg_write(k: &mut Kernel, reg: u32, value: u32) -> AsmResult {
    k.mov(eax, dword_ptr(EDU_CFG))?;
    k.or(eax, reg)?;
    k.mov(dx, 0xCF8u32)?;
    k.out(dx, eax)?;
    k.mov(dx, 0xCFCu32)?;
    k.mov(eax, value)?;
    k.out(dx, eax)
}

/// Config dword at [EDU_CFG] + [MSI_CAP] + off = `value`.
fn msi_write(k: &mut Kernel, off: u32, value: u32) -> AsmResult {
    k.mov(eax, dword_ptr(EDU_CFG))?;
    k.or(eax, dword_ptr(MSI_CAP))?;
    k.add(eax, off)?;
    k.mov(dx, 0xCF8u32)?;
    k.out(dx, eax)?;
    k.mov(dx, 0xCFCu32)?;
    k.mov(eax, value)?;
    k.out(dx, eax)
}

/// A bounded wait for [HITS] to reach `n` with interrupts on.
fn wait_hits(k: &mut Kernel, n: u32, tag: &str) -> AsmResult {
    k.mov(ecx, 2_000_000u32)?;
    k.sti()?;
    k.at(&format!("{tag}.wait"))?;
    k.cmp(dword_ptr(HITS), n)?;
    let done = k.label(&format!("{tag}.done"));
    k.jae(done)?;
    k.pause()?;
    k.dec(ecx)?;
    let again = k.label(&format!("{tag}.wait"));
    k.jnz(again)?;
    k.at(&format!("{tag}.done"))?;
    k.cli()
}

/// A bounded wait for edu register `reg` & `mask` to read 0.
fn wait_clear(k: &mut Kernel, reg: u32, mask: u32, tag: &str) -> AsmResult {
    k.mov(ecx, 2_000_000u32)?;
    k.at(&format!("{tag}.poll"))?;
    k.test(dword_ptr(EDU + reg), mask)?;
    let done = k.label(&format!("{tag}.clear"));
    k.jz(done)?;
    k.pause()?;
    k.dec(ecx)?;
    let again = k.label(&format!("{tag}.poll"));
    k.jnz(again)?;
    k.at(&format!("{tag}.clear"))
}

/// The handlers: count, acknowledge every edu interrupt reason, EOI.
fn handlers(k: &mut Kernel) -> AsmResult {
    for v in [V_MSI, V_INTX] {
        k.at(&format!("irq{v:02x}"))?;
        k.push(eax)?;
        k.inc(dword_ptr(HITS))?;
        k.mov(eax, dword_ptr(EDU + 0x24))?;
        k.mov(dword_ptr(EDU + 0x64), eax)?;
        k.mov(dword_ptr(APIC + 0xB0), 0)?;
        k.pop(eax)?;
        k.iretd()?;
        let at = k.addr(&format!("irq{v:02x}"));
        k.idt(v, gate(CODE0, at, desc::INT_GATE, 0, 0));
    }
    k.at("spurious")?;
    k.iretd()?;
    let at = k.addr("spurious");
    k.idt(0xFF, gate(CODE0, at, desc::INT_GATE, 0, 0));
    Ok(())
}

/// PICs masked, the local APIC on; edu found and its BAR placed at [`EDU`]
/// with memory decoding and bus mastering on.
fn find_and_place(k: &mut Kernel) -> AsmResult {
    k.mov(al, 0xFFu32)?;
    k.out(0x21u32, al)?;
    k.out(0xA1u32, al)?;
    k.mov(dword_ptr(APIC + 0xF0), 0x1FF)?;
    k.mov(dword_ptr(EDU_CFG), 0)?;
    // Bus 0, devices 0-31, function 0: vendor/device.
    k.mov(ebx, 0x8000_0000u32)?;
    k.at("scan")?;
    k.mov(eax, ebx)?;
    k.mov(dx, 0xCF8u32)?;
    k.out(dx, eax)?;
    k.mov(dx, 0xCFCu32)?;
    k.in_(eax, dx)?;
    k.cmp(eax, 0x11E8_1234u32)?;
    let found = k.label("scan.found");
    k.je(found)?;
    k.add(ebx, 0x800u32)?;
    k.cmp(ebx, 0x8001_0000u32)?;
    let again = k.label("scan");
    k.jb(again)?;
    let out = k.label("scan.out");
    k.jmp(out)?;
    k.at("scan.found")?;
    k.mov(dword_ptr(EDU_CFG), ebx)?;
    cfg_write(k, 0x10, EDU)?;
    cfg_write(k, 0x04, 0x0006)?;
    k.at("scan.out")
}

fn pci(k: &mut Kernel) -> AsmResult {
    find_and_place(k)?;
    k.case("edu_found", |k, c| {
        k.cmp(dword_ptr(EDU_CFG), 0)?;
        k.setne(al)?;
        k.movzx(eax, al)?;
        k.expect_eax(c, 1)
    })?;
    // PCI 3.0 §6.2.5.1: all ones written, 0xFFF00000 read: 1 MiB of 32-bit
    // non-prefetchable memory. Interrupt pin INTA#; the capability list
    // (status bit 4) leads to MSI (ID 5).
    k.case("bar_sizing_and_capabilities", |k, c| {
        cfg_write(k, 0x04, 0)?;
        cfg_write(k, 0x10, 0xFFFF_FFFF)?;
        cfg_read(k, 0x10)?;
        k.expect_eax(c, 0xFFF0_0000)?;
        cfg_write(k, 0x10, EDU)?;
        cfg_write(k, 0x04, 0x0006)?;
        cfg_read(k, 0x3C)?;
        k.shr(eax, 8)?;
        k.and(eax, 0xFFu32)?;
        k.expect_eax(c, 1)?;
        cfg_read(k, 0x04)?;
        k.shr(eax, 16 + 4)?;
        k.and(eax, 1u32)?;
        k.expect_eax(c, 1)?;
        // Walk the list: EBX = pointer.
        cfg_read(k, 0x34)?;
        k.movzx(ebx, al)?;
        k.mov(dword_ptr(MSI_CAP), 0)?;
        k.at("caps.next")?;
        k.test(ebx, ebx)?;
        let end = k.label("caps.end");
        k.jz(end)?;
        k.mov(eax, dword_ptr(EDU_CFG))?;
        k.or(eax, ebx)?;
        k.mov(dx, 0xCF8u32)?;
        k.out(dx, eax)?;
        k.mov(dx, 0xCFCu32)?;
        k.in_(eax, dx)?;
        k.cmp(al, 5u32)?;
        let msi = k.label("caps.msi");
        k.je(msi)?;
        k.movzx(ebx, ah)?;
        k.jmp_to("caps.next")?;
        k.at("caps.msi")?;
        k.mov(dword_ptr(MSI_CAP), ebx)?;
        k.at("caps.end")?;
        k.cmp(dword_ptr(MSI_CAP), 0)?;
        k.setne(al)?;
        k.movzx(eax, al)?;
        k.expect_eax(c, 1)
    })?;
    // edu.rst: identification 0x010000ED, the liveness register inverts,
    // through the BAR where the kernel placed it.
    k.case("bar_registers", |k, c| {
        k.expect32(c, EDU, 0x0100_00ED)?;
        k.mov(dword_ptr(EDU + 4), 0x1234_5678)?;
        k.expect32(c, EDU + 4, !0x1234_5678u32)
    })?;
    k.case("factorial_polled", |k, c| {
        k.mov(dword_ptr(EDU + 0x20), 0)?;
        k.mov(dword_ptr(EDU + 0x08), 10)?;
        wait_clear(k, 0x20, 1, "fact")?;
        k.expect32(c, EDU + 0x08, 3_628_800)
    })?;
    // MSI: address 0xFEE00000 (APIC 0), data = vector; a raised interrupt
    // arrives once, the handler acknowledges it.
    k.case("msi_on_raise", |k, c| {
        k.mov(dword_ptr(HITS), 0)?;
        msi_write(k, 4, APIC)?;
        msi_write(k, 8, 0)?;
        msi_write(k, 12, V_MSI)?;
        msi_write(k, 0, 0x0001_0000 | 0x05)?;
        k.mov(dword_ptr(EDU + 0x60), 0x10)?;
        wait_hits(k, 1, "msi")?;
        k.expect32(c, HITS, 1)?;
        k.expect32(c, EDU + 0x24, 0)
    })?;
    k.case("factorial_interrupt", |k, c| {
        k.mov(dword_ptr(HITS), 0)?;
        k.mov(dword_ptr(EDU + 0x20), 0x80)?;
        k.mov(dword_ptr(EDU + 0x08), 5)?;
        wait_hits(k, 1, "factirq")?;
        k.mov(dword_ptr(EDU + 0x20), 0)?;
        k.expect32(c, HITS, 1)?;
        k.expect32(c, EDU + 0x08, 120)
    })?;
    // DMA guest -> device buffer -> guest, each with its completion
    // interrupt (command bit 2).
    k.case("dma_round_trip", |k, c| {
        for (i, v) in [0x0102_0304u32, 0x0506_0708, 0xA0B0_C0D0, 0xDEAD_BEEF]
            .into_iter()
            .enumerate()
        {
            k.mov(dword_ptr(DMA_SRC + 4 * i as u32), v)?;
            k.mov(dword_ptr(DMA_DST + 4 * i as u32), 0)?;
        }
        k.mov(dword_ptr(HITS), 0)?;
        k.mov(dword_ptr(EDU + 0x80), DMA_SRC)?;
        k.mov(dword_ptr(EDU + 0x88), 0x40000)?;
        k.mov(dword_ptr(EDU + 0x90), 16)?;
        k.mov(dword_ptr(EDU + 0x98), 1 | 4)?;
        wait_hits(k, 1, "dma1")?;
        k.mov(dword_ptr(EDU + 0x80), 0x40000)?;
        k.mov(dword_ptr(EDU + 0x88), DMA_DST)?;
        k.mov(dword_ptr(EDU + 0x90), 16)?;
        k.mov(dword_ptr(EDU + 0x98), 1 | 2 | 4)?;
        wait_hits(k, 2, "dma2")?;
        k.expect32(c, HITS, 2)?;
        k.expect32(c, DMA_DST, 0x0102_0304)?;
        k.expect32(c, DMA_DST + 12, 0xDEAD_BEEF)
    })?;
    // INTA# with MSI off: PIIX3 PIRQRC[(slot - 1 + pin - 1) mod 4] routes it to
    // IRQ 11; the I/O APIC's pin 11, level-triggered, delivers it; the
    // handler's acknowledge at the device drops the line before the EOI.
    k.case("intx_through_pirq_and_ioapic", |k, c| {
        k.mov(dword_ptr(HITS), 0)?;
        msi_write(k, 0, 0x05)?;
        // PIRQ index = (device - 1) & 3 for pin A (QEMU's PIIX swizzle,
        // which x86bt wires the same way).
        k.mov(ebx, dword_ptr(EDU_CFG))?;
        k.shr(ebx, 11)?;
        k.dec(ebx)?;
        k.and(ebx, 3u32)?;
        k.lea(eax, ptr(ebx + 0x8000_0860u32))?;
        k.and(eax, !3u32)?;
        k.mov(dx, 0xCF8u32)?;
        k.out(dx, eax)?;
        k.lea(edx, ptr(ebx + 0xCFCu32))?;
        k.mov(al, INTX_IRQ)?;
        k.out(dx, al)?;
        k.mov(dword_ptr(IOAPIC), 0x11 + 2 * INTX_IRQ)?;
        k.mov(dword_ptr(IOAPIC + 0x10), 0)?;
        k.mov(dword_ptr(IOAPIC), 0x10 + 2 * INTX_IRQ)?;
        k.mov(dword_ptr(IOAPIC + 0x10), V_INTX | (1 << 15))?;
        k.mov(dword_ptr(EDU + 0x60), 0x20)?;
        wait_hits(k, 1, "intx")?;
        k.mov(dword_ptr(IOAPIC), 0x10 + 2 * INTX_IRQ)?;
        k.mov(dword_ptr(IOAPIC + 0x10), 0x1_0000)?;
        k.expect32(c, HITS, 1)?;
        // Remote IRR clear: the line dropped before the EOI.
        k.mov(dword_ptr(IOAPIC), 0x10 + 2 * INTX_IRQ)?;
        k.expect_bits(c, IOAPIC + 0x10, 1 << 14, 0)?;
        // The function's interrupt status bit is clear again.
        cfg_read(k, 0x04)?;
        k.shr(eax, 16 + 3)?;
        k.and(eax, 1u32)?;
        k.expect_eax(c, 0)
    })?;
    // An MSI to APIC ID 5, which no CPU has: nothing arrives.
    k.case("msi_to_a_missing_cpu", |k, c| {
        k.mov(dword_ptr(HITS), 0)?;
        msi_write(k, 4, APIC | (5 << 12))?;
        msi_write(k, 12, V_MSI)?;
        msi_write(k, 0, 0x0001_0000 | 0x05)?;
        k.mov(dword_ptr(EDU + 0x60), 0x40)?;
        k.mov(ecx, 100_000u32)?;
        k.sti()?;
        k.at("lost.spin")?;
        k.pause()?;
        k.dec(ecx)?;
        let again = k.label("lost.spin");
        k.jnz(again)?;
        k.cli()?;
        k.mov(dword_ptr(EDU + 0x64), 0x40)?;
        msi_write(k, 0, 0x05)?;
        k.expect32(c, HITS, 0)
    })?;
    k.exit()?;
    handlers(k)
}

fn pci_robustness(k: &mut Kernel) -> AsmResult {
    find_and_place(k)?;
    // The BAR moved onto the HPET: refused and left unmapped; the HPET's
    // capabilities still read.
    k.case("bar_over_the_hpet", |k, c| {
        cfg_write(k, 0x10, HPET)?;
        k.expect_bits(c, HPET, 0xFFFF_0000, 0x8086_0000)?;
        cfg_write(k, 0x10, EDU)?;
        k.expect32(c, EDU, 0x0100_00ED)
    })?;
    // DMA past the buffer's end: nothing happens, the command completes.
    k.case("dma_beyond_the_buffer", |k, c| {
        k.mov(dword_ptr(DMA_DST), 0x5555_5555)?;
        k.mov(dword_ptr(EDU + 0x80), 0x40FF0)?;
        k.mov(dword_ptr(EDU + 0x88), DMA_DST)?;
        k.mov(dword_ptr(EDU + 0x90), 0x100)?;
        k.mov(dword_ptr(EDU + 0x98), 1 | 2)?;
        wait_clear(k, 0x98, 1, "dmaerr")?;
        k.expect32(c, DMA_DST, 0x5555_5555)
    })?;
    // DMA from 0xF0000000, where nothing is: all ones arrive.
    k.case("dma_from_no_ram", |k, c| {
        k.mov(dword_ptr(EDU + 0x80), 0xF000_0000u32 as i32)?;
        k.mov(dword_ptr(EDU + 0x88), 0x40000)?;
        k.mov(dword_ptr(EDU + 0x90), 16)?;
        k.mov(dword_ptr(EDU + 0x98), 1)?;
        wait_clear(k, 0x98, 1, "dmanone")?;
        k.expect32(c, EDU + 0x40000, 0xFFFF_FFFF)
    })?;
    k.exit()
}

#[test]
fn pci_kernel_edu_all_pass() {
    let built = build(pci);
    assert_all_pass_with("pci_edu", &built, &["-device", "edu"], false);
    qemu_prints_the_same_with("pci_edu", &built, 1, &["-device", "edu"]);
}

#[test]
fn pci_kernel_robustness_all_pass_with_guest_errors_logged() {
    let built = build(pci_robustness);
    assert_all_pass_with("pci_robust", &built, &["-device", "edu"], false);
    let dir = std::env::temp_dir().join(format!("x86bt-pci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pci_robust.bin");
    std::fs::write(&path, &built.image).expect("write kernel");
    let out = Command::new(env!("CARGO_BIN_EXE_x86bt"))
        .args(["run", "--kernel"])
        .arg(&path)
        .args([
            "-device",
            "edu",
            "--serial",
            "stdio",
            "--no-reboot",
            "-m",
            "32",
        ])
        .args(["--max-insns", "50000000"])
        .env("X86BT_TRACE", "guest_errors")
        .output()
        .expect("run x86bt");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("mapping refused"),
        "no BAR overlap error:\n{err}"
    );
    assert!(
        err.contains("outside its buffer"),
        "no DMA range error:\n{err}"
    );
}
