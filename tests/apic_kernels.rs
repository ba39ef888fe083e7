//! Interrupt-controller test kernels: Multiboot images assembled here with
//! iced-x86 (the runtime of `pm/mod.rs`), booted by the real `x86bt run
//! --kernel`, each printing one `PASS`/`FAIL` line per check.
//!
//! `platform` covers the local APIC (identity registers, the timer in
//! one-shot, periodic and TSC-deadline modes, a fixed self-IPI, an NMI IPI),
//! the I/O APIC (an edge-triggered PIT interrupt on pin 2; the PIT's level
//! output on a level-triggered pin 2, where remote IRR is set while the
//! vector is in service and the EOI broadcast clears it, so the still-high
//! line is delivered again), the HPET (legacy replacement with a periodic
//! timer 0 on IRQ0; a one-shot timer 2 routed to an I/O APIC pin; timer 1's
//! FSB delivery, an MSI), and the x2APIC MSRs (ID, version, TPR, SELF IPI, and
//! EOI by MSR). `smp` starts the second CPU with INIT-SIPI-SIPI.
//!
//! Every expected value comes from the specifications (SDM vol. 3A ch. 10/11,
//! the 82093AA datasheet, IA-PC HPET 1.0a), not from running x86bt. The
//! kernels run on the interpreter, the translator and lockstep, and as
//! independent oracle, unstepped under QEMU (which must print the same lines;
//! QEMU's TCG has no TSC-deadline mode, so its build leaves that check out);
//! `platform` is also compared with QEMU instruction by instruction through
//! `x86bt difftest --kernel` up to its first HLT (the compared window has no
//! interrupts).

#[allow(dead_code)]
mod pm;

use iced_x86::code_asm::*;
use pm::*;

const APIC: u32 = 0xFEE0_0000;
const IOAPIC: u32 = 0xFEC0_0000;
const HPET: u32 = 0xFED0_0000;

/// Local APIC registers (SDM vol. 3A Table 11-1).
mod lapic {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const EOI: u32 = 0xB0;
    pub const SVR: u32 = 0xF0;
    pub const ICR_LO: u32 = 0x300;
    pub const ICR_HI: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const TIMER_INIT: u32 = 0x380;
    pub const TIMER_CUR: u32 = 0x390;
    pub const TIMER_DIV: u32 = 0x3E0;
}

/// The vectors the checks use, and their hit counters.
const V_TIMER: u32 = 0x40;
const V_SELF: u32 = 0x41;
const V_IO_EDGE: u32 = 0x42;
const V_IO_LEVEL: u32 = 0x43;
const V_HPET_LEGACY: u32 = 0x44;
const V_HPET_PIN: u32 = 0x45;
const V_HPET_MSI: u32 = 0x46;
const V_X2: u32 = 0x47;
const V_SPURIOUS: u32 = 0xFF;
/// Hit counters, one dword per vector from 0x40.
const COUNTS: u32 = FREE;
const NMI_COUNT: u32 = FREE + 0x40;
/// Remote IRR as the level handler saw it.
const LAST_RIRR: u32 = FREE + 0x44;
/// What the AP writes.
const AP_FLAG: u32 = 0x7F00;

fn count_of(v: u32) -> u32 {
    COUNTS + 4 * (v - 0x40)
}

fn apic(reg: u32) -> u32 {
    APIC + reg
}

/// Handlers that return (IRET) after counting, and their IDT gates.
fn handlers(k: &mut Kernel) -> AsmResult {
    for v in [
        V_TIMER,
        V_SELF,
        V_IO_EDGE,
        V_HPET_LEGACY,
        V_HPET_PIN,
        V_HPET_MSI,
    ] {
        let name = format!("irq{v:02x}");
        k.at(&name)?;
        k.inc(dword_ptr(count_of(v)))?;
        k.mov(dword_ptr(apic(lapic::EOI)), 0)?;
        k.iretd()?;
    }
    // Level-triggered pin 2: note remote IRR while in service; on the second
    // delivery mask the pin before the EOI.
    k.at("irq43")?;
    k.push(eax)?;
    k.inc(dword_ptr(count_of(V_IO_LEVEL)))?;
    k.mov(dword_ptr(IOAPIC), 0x14)?;
    k.mov(eax, dword_ptr(IOAPIC + 0x10))?;
    k.shr(eax, 14)?;
    k.and(eax, 1)?;
    k.mov(dword_ptr(LAST_RIRR), eax)?;
    k.cmp(dword_ptr(count_of(V_IO_LEVEL)), 2)?;
    let eoi = k.label("irq43.eoi");
    k.jb(eoi)?;
    k.mov(dword_ptr(IOAPIC), 0x14)?;
    k.or(dword_ptr(IOAPIC + 0x10), 0x1_0000)?;
    k.at("irq43.eoi")?;
    k.mov(dword_ptr(apic(lapic::EOI)), 0)?;
    k.pop(eax)?;
    k.iretd()?;
    // x2APIC mode: the EOI is MSR 0x80B.
    k.at("irq47")?;
    k.push(eax)?;
    k.push(ecx)?;
    k.push(edx)?;
    k.inc(dword_ptr(count_of(V_X2)))?;
    k.mov(ecx, 0x80Bu32)?;
    k.xor(eax, eax)?;
    k.xor(edx, edx)?;
    k.wrmsr()?;
    k.pop(edx)?;
    k.pop(ecx)?;
    k.pop(eax)?;
    k.iretd()?;
    k.at("nmi")?;
    k.inc(dword_ptr(NMI_COUNT))?;
    k.iretd()?;
    k.at("spurious")?;
    k.iretd()?;
    for v in [
        V_TIMER,
        V_SELF,
        V_IO_EDGE,
        V_IO_LEVEL,
        V_HPET_LEGACY,
        V_HPET_PIN,
        V_HPET_MSI,
        V_X2,
    ] {
        let at = k.addr(&format!("irq{v:02x}"));
        k.idt(v, gate(CODE0, at, desc::INT_GATE, 0, 0));
    }
    let nmi = k.addr("nmi");
    k.idt(2, gate(CODE0, nmi, desc::INT_GATE, 0, 0));
    let spurious = k.addr("spurious");
    k.idt(V_SPURIOUS, gate(CODE0, spurious, desc::INT_GATE, 0, 0));
    Ok(())
}

/// Waits for one interrupt: `sti; hlt` (the STI shadow keeps it from
/// arriving between the two), then `cli`.
fn wait_irq(k: &mut Kernel) -> AsmResult {
    k.sti()?;
    k.hlt()?;
    k.cli()
}

/// Both 8259s masked, so nothing but the APICs interrupts; the local APIC
/// software-enabled with spurious vector 0xFF.
fn setup(k: &mut Kernel) -> AsmResult {
    k.mov(al, 0xFFu32)?;
    k.out(0x21u32, al)?;
    k.out(0xA1u32, al)?;
    k.mov(dword_ptr(apic(lapic::SVR)), 0x100 | V_SPURIOUS)
}

/// Programs PIT channel 0 in `mode` with `count`.
fn pit(k: &mut Kernel, mode: u32, count: u16) -> AsmResult {
    k.mov(al, 0x30 | (mode << 1))?;
    k.out(0x43u32, al)?;
    k.mov(al, u32::from(count & 0xFF))?;
    k.out(0x40u32, al)?;
    k.mov(al, u32::from(count >> 8))?;
    k.out(0x40u32, al)
}

/// Writes I/O APIC redirection entry `pin` (low dword `low`, destination
/// APIC 0).
fn redirect(k: &mut Kernel, pin: u32, low: u32) -> AsmResult {
    k.mov(dword_ptr(IOAPIC), 0x11 + 2 * pin)?;
    k.mov(dword_ptr(IOAPIC + 0x10), 0)?;
    k.mov(dword_ptr(IOAPIC), 0x10 + 2 * pin)?;
    k.mov(dword_ptr(IOAPIC + 0x10), low)
}

fn platform(k: &mut Kernel) -> AsmResult {
    platform_cases(k, true)
}

/// `platform` for QEMU's TCG, which has no TSC-deadline mode (it says so
/// when asked for the feature): everything else.
fn platform_without_tsc_deadline(k: &mut Kernel) -> AsmResult {
    platform_cases(k, false)
}

fn platform_cases(k: &mut Kernel, tsc_deadline: bool) -> AsmResult {
    setup(k)?;
    // SDM vol. 3A §11.4.6/§11.4.8: the BSP's APIC ID is 0 here; version 0x14
    // class (integrated APIC: 0x1x), max LVT entry 5.
    k.case("lapic_identity", |k, c| {
        k.mov(eax, dword_ptr(apic(lapic::ID)))?;
        k.shr(eax, 24)?;
        k.expect_eax(c, 0)?;
        k.mov(eax, dword_ptr(apic(lapic::VERSION)))?;
        k.and(eax, 0x00FF_00F0u32)?;
        k.expect_eax(c, 0x0005_0010)
    })?;
    // §11.5.4: one-shot, divide by 1: one interrupt, and the current count
    // stays 0 after it.
    k.case("lapic_timer_one_shot", |k, c| {
        k.mov(dword_ptr(count_of(V_TIMER)), 0)?;
        k.mov(dword_ptr(apic(lapic::TIMER_DIV)), 0xB)?;
        k.mov(dword_ptr(apic(lapic::LVT_TIMER)), V_TIMER)?;
        k.mov(dword_ptr(apic(lapic::TIMER_INIT)), 100_000)?;
        wait_irq(k)?;
        k.expect32(c, count_of(V_TIMER), 1)?;
        k.expect32(c, apic(lapic::TIMER_CUR), 0)
    })?;
    // Periodic: it reloads; four HLTs, four interrupts. The period (2M bus
    // ticks: 4 ms under QEMU's 1 GHz bus and the default divide by 2) leaves
    // room between the fourth interrupt and the mask below: under QEMU the
    // timer runs on host time, and with 50,000 ticks a loaded CI host let a
    // fifth one in.
    k.case("lapic_timer_periodic", |k, c| {
        k.mov(dword_ptr(count_of(V_TIMER)), 0)?;
        k.mov(dword_ptr(apic(lapic::LVT_TIMER)), V_TIMER | (1 << 17))?;
        k.mov(dword_ptr(apic(lapic::TIMER_INIT)), 2_000_000)?;
        for _ in 0..4 {
            wait_irq(k)?;
        }
        k.mov(dword_ptr(apic(lapic::LVT_TIMER)), 0x1_0000)?;
        k.mov(dword_ptr(apic(lapic::TIMER_INIT)), 0)?;
        k.expect32(c, count_of(V_TIMER), 4)
    })?;
    // §11.5.4.1: TSC-deadline mode fires once the TSC passes the deadline,
    // and IA32_TSC_DEADLINE reads 0 after it fired.
    if tsc_deadline {
        tsc_deadline_case(k)?;
    }
    self_ipi_and_the_rest(k)
}

fn tsc_deadline_case(k: &mut Kernel) -> AsmResult {
    k.case("lapic_timer_tsc_deadline", |k, c| {
        k.mov(dword_ptr(count_of(V_TIMER)), 0)?;
        k.mov(dword_ptr(apic(lapic::LVT_TIMER)), V_TIMER | (2 << 17))?;
        k.rdtsc()?;
        k.add(eax, 200_000)?;
        k.adc(edx, 0)?;
        k.mov(ecx, 0x6E0u32)?;
        k.wrmsr()?;
        wait_irq(k)?;
        k.mov(dword_ptr(apic(lapic::LVT_TIMER)), 0x1_0000)?;
        k.expect32(c, count_of(V_TIMER), 1)?;
        k.mov(ecx, 0x6E0u32)?;
        k.rdmsr()?;
        k.or(eax, edx)?;
        k.expect_eax(c, 0)
    })
}

fn self_ipi_and_the_rest(k: &mut Kernel) -> AsmResult {
    // §11.6.1: a fixed IPI to self (shorthand 01); the ICR's delivery
    // status reads idle afterwards.
    k.case("self_ipi_fixed", |k, c| {
        k.mov(dword_ptr(count_of(V_SELF)), 0)?;
        k.mov(dword_ptr(apic(lapic::ICR_HI)), 0)?;
        k.mov(
            dword_ptr(apic(lapic::ICR_LO)),
            V_SELF | (1 << 14) | (1 << 18),
        )?;
        k.sti()?;
        k.nop()?;
        k.cli()?;
        k.expect32(c, count_of(V_SELF), 1)?;
        k.expect_bits(c, apic(lapic::ICR_LO), 1 << 12, 0)
    })?;
    // An NMI IPI to APIC ID 0 (physical): vector 2, not maskable by IF.
    k.case("nmi_ipi", |k, c| {
        k.mov(dword_ptr(NMI_COUNT), 0)?;
        k.mov(dword_ptr(apic(lapic::ICR_HI)), 0)?;
        k.mov(dword_ptr(apic(lapic::ICR_LO)), (4 << 8) | (1 << 14))?;
        // Delivery takes its time (the SDM gives no bound): a bounded wait.
        k.mov(ecx, 1_000_000u32)?;
        k.at("nmi.wait")?;
        k.cmp(dword_ptr(NMI_COUNT), 0)?;
        let seen = k.label("nmi.seen");
        k.jne(seen)?;
        k.pause()?;
        k.dec(ecx)?;
        let again = k.label("nmi.wait");
        k.jnz(again)?;
        k.at("nmi.seen")?;
        k.expect32(c, NMI_COUNT, 1)
    })?;
    // 82093AA: an edge-triggered entry on pin 2 (ISA IRQ0, the PIT, as the
    // MADT's override says) in PIT mode 2 (rate generator): three HLTs, three
    // interrupts; the entry reads back as written.
    k.case("ioapic_edge", |k, c| {
        k.mov(dword_ptr(count_of(V_IO_EDGE)), 0)?;
        redirect(k, 2, V_IO_EDGE)?;
        pit(k, 2, 2000)?;
        for _ in 0..3 {
            wait_irq(k)?;
        }
        k.mov(dword_ptr(IOAPIC), 0x14)?;
        k.or(dword_ptr(IOAPIC + 0x10), 0x1_0000)?;
        k.expect32(c, count_of(V_IO_EDGE), 3)?;
        k.mov(dword_ptr(IOAPIC), 0x14)?;
        k.expect_bits(c, IOAPIC + 0x10, 0x1_BFFF, 0x1_0000 | V_IO_EDGE)
    })?;
    // 82093AA: a level-triggered entry; PIT mode 0 holds OUT high after the
    // count. Remote IRR is set while the vector is in service; the EOI
    // clears it, and the line, still high, is delivered again; the handler
    // masks the pin the second time. Remote IRR ends clear.
    k.case("ioapic_level_remote_irr", |k, c| {
        k.mov(dword_ptr(count_of(V_IO_LEVEL)), 0)?;
        k.mov(dword_ptr(LAST_RIRR), 0)?;
        // The PIT first: its control word drops OUT (mode 2 left it high,
        // which a level-triggered entry would take at once).
        pit(k, 0, 2000)?;
        redirect(k, 2, V_IO_LEVEL | (1 << 15))?;
        wait_irq(k)?;
        k.sti()?;
        k.nop()?;
        k.cli()?;
        // A new control word drops OUT again.
        pit(k, 0, 0xFFFF)?;
        k.expect32(c, count_of(V_IO_LEVEL), 2)?;
        k.expect32(c, LAST_RIRR, 1)?;
        k.mov(dword_ptr(IOAPIC), 0x14)?;
        k.expect_bits(c, IOAPIC + 0x10, (1 << 16) | (1 << 14), 1 << 16)
    })?;
    // HPET 1.0a §2.3: 3+ timers of a 64-bit counter at 10 ns (QEMU's and
    // ours); legacy replacement routes timer 0 to IRQ0 (I/O APIC pin 2);
    // timer 0 periodic with VAL_SET: three HLTs, three interrupts.
    k.case("hpet_legacy_periodic", |k, c| {
        k.expect_bits(c, HPET, 0xFFFF_0000, 0x8086_0000)?;
        k.expect32(c, HPET + 4, 10_000_000)?;
        k.mov(dword_ptr(count_of(V_HPET_LEGACY)), 0)?;
        k.mov(dword_ptr(HPET + 0x10), 0)?;
        k.mov(dword_ptr(HPET + 0xF0), 0)?;
        k.mov(dword_ptr(HPET + 0xF4), 0)?;
        // INT_ENB | PERIODIC | VAL_SET; comparator then period, 1 ms.
        k.mov(dword_ptr(HPET + 0x100), 0x4C)?;
        k.mov(dword_ptr(HPET + 0x108), 100_000)?;
        k.mov(dword_ptr(HPET + 0x108), 100_000)?;
        redirect(k, 2, V_HPET_LEGACY)?;
        k.mov(dword_ptr(HPET + 0x10), 3)?;
        for _ in 0..3 {
            wait_irq(k)?;
        }
        k.mov(dword_ptr(HPET + 0x10), 0)?;
        k.mov(dword_ptr(HPET + 0x100), 0)?;
        k.mov(dword_ptr(IOAPIC), 0x14)?;
        k.or(dword_ptr(IOAPIC + 0x10), 0x1_0000)?;
        k.expect32(c, count_of(V_HPET_LEGACY), 3)
    })?;
    // A one-shot timer 2 routed to the highest I/O APIC pin its
    // Tn_INT_ROUTE_CAP allows, edge-triggered: one interrupt.
    k.case("hpet_one_shot_ioapic_pin", |k, c| {
        k.mov(dword_ptr(count_of(V_HPET_PIN)), 0)?;
        k.mov(eax, dword_ptr(HPET + 0x144))?;
        k.and(eax, 0x00FF_FFFFu32)?;
        k.bsr(ebx, eax)?;
        let none = k.label("hpet_pin.none");
        k.jz(none)?;
        // The redirection entry for pin EBX.
        k.lea(eax, ptr(ebx * 2 + 0x11))?;
        k.mov(dword_ptr(IOAPIC), eax)?;
        k.mov(dword_ptr(IOAPIC + 0x10), 0)?;
        k.dec(eax)?;
        k.mov(dword_ptr(IOAPIC), eax)?;
        k.mov(dword_ptr(IOAPIC + 0x10), V_HPET_PIN)?;
        // INT_ENB | route << 9; comparator = counter + 50,000 ticks.
        k.mov(eax, ebx)?;
        k.shl(eax, 9)?;
        k.or(eax, 4)?;
        k.mov(dword_ptr(HPET + 0x140), eax)?;
        k.mov(eax, dword_ptr(HPET + 0xF0))?;
        k.add(eax, 50_000)?;
        k.mov(dword_ptr(HPET + 0x148), eax)?;
        k.mov(dword_ptr(HPET + 0x14C), 0)?;
        k.mov(dword_ptr(HPET + 0x10), 1)?;
        wait_irq(k)?;
        k.mov(dword_ptr(HPET + 0x10), 0)?;
        k.mov(dword_ptr(HPET + 0x140), 0)?;
        k.at("hpet_pin.none")?;
        k.expect32(c, count_of(V_HPET_PIN), 1)
    })?;
    // Timer 1's FSB delivery (Tn_FSB_EN_CNF): the route register's message
    // reaches the local APIC as an MSI: fixed, vector 0x46, APIC 0.
    k.case("hpet_fsb_msi", |k, c| {
        k.mov(dword_ptr(count_of(V_HPET_MSI)), 0)?;
        k.expect_bits(c, HPET + 0x120, 1 << 15, 1 << 15)?;
        k.mov(dword_ptr(HPET + 0x130), V_HPET_MSI)?;
        k.mov(dword_ptr(HPET + 0x134), APIC)?;
        k.mov(dword_ptr(HPET + 0x120), 0x4004)?;
        k.mov(eax, dword_ptr(HPET + 0xF0))?;
        k.add(eax, 30_000)?;
        k.mov(dword_ptr(HPET + 0x128), eax)?;
        k.mov(dword_ptr(HPET + 0x12C), 0)?;
        k.mov(dword_ptr(HPET + 0x10), 1)?;
        wait_irq(k)?;
        k.mov(dword_ptr(HPET + 0x10), 0)?;
        k.mov(dword_ptr(HPET + 0x120), 0)?;
        k.expect32(c, count_of(V_HPET_MSI), 1)
    })?;
    // §11.12: x2APIC mode (IA32_APIC_BASE.EXTD): the ID and version as MSRs
    // 0x802/0x803, TPR (0x808) reads back, SELF IPI (0x83F) delivers, EOI by
    // MSR 0x80B (the handler).
    k.case("x2apic_msrs", |k, c| {
        k.mov(dword_ptr(count_of(V_X2)), 0)?;
        k.mov(ecx, 0x1Bu32)?;
        k.rdmsr()?;
        k.or(eax, 0xC00u32)?;
        k.wrmsr()?;
        k.mov(ecx, 0x802u32)?;
        k.rdmsr()?;
        k.expect_eax(c, 0)?;
        k.mov(ecx, 0x803u32)?;
        k.rdmsr()?;
        k.and(eax, 0x00FF_00F0u32)?;
        k.expect_eax(c, 0x0005_0010)?;
        k.mov(ecx, 0x808u32)?;
        k.mov(eax, 0x20u32)?;
        k.xor(edx, edx)?;
        k.wrmsr()?;
        k.rdmsr()?;
        k.expect_eax(c, 0x20)?;
        k.xor(eax, eax)?;
        k.wrmsr()?;
        k.mov(ecx, 0x83Fu32)?;
        k.mov(eax, V_X2)?;
        k.wrmsr()?;
        k.sti()?;
        k.nop()?;
        k.cli()?;
        k.expect32(c, count_of(V_X2), 1)
    })?;
    k.exit()?;
    handlers(k)
}

/// The real-mode code an AP starts at 0x8000 (SIPI vector 8): it writes
/// 0xA5 to [`AP_FLAG`] and halts.
const AP_CODE: [u8; 12] = [
    0x31, 0xC0, // xor ax, ax
    0x8E, 0xD8, // mov ds, ax
    0xC6, 0x06, 0x00, 0x7F, 0xA5, // mov byte [0x7F00], 0xA5
    0xFA, // cli
    0xF4, // hlt
    0xF4, // hlt
];

fn smp(k: &mut Kernel) -> AsmResult {
    setup(k)?;
    // SDM vol. 3A §9.4.4.1: INIT, then two SIPIs to APIC ID 1; the AP runs
    // in real mode at vector * 4096.
    k.case("init_sipi_sipi", |k, c| {
        k.mov(byte_ptr(AP_FLAG), 0)?;
        for (i, b) in AP_CODE.iter().enumerate() {
            k.mov(byte_ptr(0x8000 + i as u32), u32::from(*b))?;
        }
        k.mov(dword_ptr(apic(lapic::ICR_HI)), 1 << 24)?;
        k.mov(
            dword_ptr(apic(lapic::ICR_LO)),
            (5 << 8) | (1 << 14) | (1 << 15),
        )?;
        k.mov(dword_ptr(apic(lapic::ICR_LO)), (5 << 8) | (1 << 15))?;
        for _ in 0..2 {
            k.mov(dword_ptr(apic(lapic::ICR_LO)), (6 << 8) | (1 << 14) | 0x08)?;
        }
        // Wait for the flag (a bounded spin).
        k.mov(ecx, 50_000_000u32)?;
        k.at("ap.wait")?;
        k.cmp(byte_ptr(AP_FLAG), 0xA5)?;
        let seen = k.label("ap.seen");
        k.je(seen)?;
        k.pause()?;
        k.dec(ecx)?;
        let again = k.label("ap.wait");
        k.jnz(again)?;
        k.at("ap.seen")?;
        k.expect8(c, AP_FLAG, 0xA5)
    })?;
    k.exit()
}

#[test]
fn apic_kernel_platform_all_pass() {
    let built = build(platform);
    assert_all_pass_with("apic_platform", &built, &[], true);
    qemu_prints_the_same("apic_platform", &build(platform_without_tsc_deadline), 1);
}

#[test]
fn apic_kernel_smp_init_sipi_all_pass() {
    let built = build(smp);
    assert_all_pass_with("apic_smp", &built, &["-smp", "2"], false);
    qemu_prints_the_same("apic_smp", &built, 2);
}
