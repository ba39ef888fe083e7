//! Boot paths other than the reset vector: the CPU state a loader hands over.

use x86bt_cpu::state::{cr0, flags, reg, seg_attr, sreg, CpuState, Segment};

/// Selector of the flat 32-bit code segment a loader-entered kernel runs in.
pub const FLAT_CS: u16 = 0x08;
/// Selector of the flat 32-bit data segments.
pub const FLAT_DS: u16 = 0x10;

fn flat(selector: u16, code: bool) -> Segment {
    let kind = if code { seg_attr::CODE } else { 0 };
    Segment {
        selector,
        attrs: seg_attr::P
            | seg_attr::S
            | seg_attr::RW
            | seg_attr::ACCESSED
            | seg_attr::DB
            | seg_attr::G
            | kind,
        limit: 0xFFFF_FFFF,
        base: 0,
    }
}

/// The machine state Multiboot 0.6.96 §3.2 requires at a kernel's entry: 32-bit
/// protected mode without paging, flat 4 GiB code and data segments (the segment
/// caches are loaded directly; GDTR is left undefined, as the spec allows), IF
/// and VM clear, EAX = the boot loader magic, EBX = the info block.
pub fn enter_multiboot(cpu: &mut CpuState, entry: u32, magic: u32, info: u32) {
    let icount = cpu.icount;
    *cpu = CpuState::reset();
    cpu.icount = icount;
    cpu.cr0 = cr0::PE | cr0::ET;
    cpu.seg[sreg::CS] = flat(FLAT_CS, true);
    for s in [sreg::DS, sreg::ES, sreg::FS, sreg::GS, sreg::SS] {
        cpu.seg[s] = flat(FLAT_DS, false);
    }
    cpu.rflags = flags::FIXED1;
    cpu.gpr[reg::RAX] = u64::from(magic);
    cpu.gpr[reg::RBX] = u64::from(info);
    cpu.rip = u64::from(entry);
}

/// The 32-bit entry state of the Linux/x86 boot protocol (boot.rst, "32-bit Boot
/// Protocol"): protected mode without paging, a GDT with flat __BOOT_CS (0x10)
/// and __BOOT_DS (0x18), CS/DS/ES/SS loaded from it, interrupts disabled, ESI =
/// the boot_params ("zero page"), EBP = EDI = EBX = 0.
pub fn enter_linux(
    cpu: &mut CpuState,
    entry: u32,
    boot_params: u32,
    gdt_base: u32,
    gdt_limit: u16,
) {
    let icount = cpu.icount;
    *cpu = CpuState::reset();
    cpu.icount = icount;
    cpu.cr0 = cr0::PE | cr0::ET;
    cpu.gdtr = x86bt_cpu::state::TableReg {
        base: u64::from(gdt_base),
        limit: u32::from(gdt_limit),
    };
    cpu.seg[sreg::CS] = flat(0x10, true);
    for s in [sreg::DS, sreg::ES, sreg::SS, sreg::FS, sreg::GS] {
        cpu.seg[s] = flat(0x18, false);
    }
    cpu.rflags = flags::FIXED1;
    cpu.gpr = [0; 16];
    cpu.gpr[reg::RSI] = u64::from(boot_params);
    cpu.rip = u64::from(entry);
}
