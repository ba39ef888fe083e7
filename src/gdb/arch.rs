//! The two register layouts the GDB server offers, i386 and x86-64, as
//! `gdbstub` architectures: gdbstub_arch's core and SSE registers (GDB's own
//! `org.gnu.gdb.i386.core` and `.sse` order), followed by the system
//! registers of an `org.x86bt.gdb.sys` feature (segment bases, control
//! registers, EFER), all described in the target description XML sent to
//! GDB, and the mapping between them and `CpuState`.
//!
//! The layout is chosen once per run (see `super::Layout`): GDB fixes the
//! architecture when it connects. A guest in another mode is shown in the
//! chosen layout: in the x86-64 layout a 32-bit guest's registers are
//! zero-extended (as QEMU's qemu-system-x86_64 shows them); in the i386
//! layout a 64-bit guest's registers are cut to their low 32 bits, R8-R15
//! and XMM8-15 are not shown, and a register written there keeps its upper
//! half.

use crate::vm::Vm;
use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::{id, X86CoreRegs, X86SegmentRegs, X86_64CoreRegs, F80};
use std::fmt::Write as _;
use std::sync::OnceLock;
use x86bt_cpu::fpu::F80 as CpuF80;
use x86bt_cpu::interp::protected::Desc;
use x86bt_cpu::state::{flags, reg, sreg, CpuState, Segment};

/// The system registers after the SSE ones: (name, bits), in packet order.
const SYS32: &[(&str, u32)] = &[
    ("fs_base", 32),
    ("gs_base", 32),
    ("cr0", 32),
    ("cr2", 32),
    ("cr3", 32),
    ("cr4", 32),
    ("efer", 64),
];

/// The x86-64 layout's system registers.
const SYS64: &[(&str, u32)] = &[
    ("fs_base", 64),
    ("gs_base", 64),
    ("k_gs_base", 64),
    ("cr0", 64),
    ("cr2", 64),
    ("cr3", 64),
    ("cr4", 64),
    ("cr8", 64),
    ("efer", 64),
];

/// The EFLAGS bits software may write (SDM vol. 1 §3.4.3); bit 1 is always
/// set and the others are reserved (zero).
const EFLAGS_WRITABLE: u64 = 0x003F_7FD5;

/// The MXCSR bits that exist (MXCSR_MASK is FFFFh, `docs/design.md`).
const MXCSR_WRITABLE: u32 = 0xFFFF;

/// A segment selector a debugger wrote that cannot be loaded: null for CS
/// or SS, beyond its table, or naming a descriptor that is not present or
/// not a code or data segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadSelector(pub u16);

/// A register layout: a gdbstub [`Arch`] and its mapping to `CpuState`.
pub trait Layout: Arch<BreakpointKind = usize> {
    /// vCPU `i`'s registers in this layout.
    fn read(vm: &Vm, i: usize) -> Self::Registers;
    /// Writes `regs` to vCPU `i`. Err when a new segment selector cannot be
    /// loaded (no such descriptor); nothing is written then.
    fn write(vm: &mut Vm, i: usize, regs: &Self::Registers) -> Result<(), BadSelector>;
    /// An address of this layout as a linear address.
    fn to_u64(a: Self::Usize) -> u64;
    /// A linear address in this layout (cut to 32 bits in the i386 one).
    fn from_u64(a: u64) -> Self::Usize;
}

/// The registers of the i386 layout.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs32 {
    /// General, segment, x87 and SSE registers (GDB's order).
    pub core: X86CoreRegs,
    /// [`SYS32`]'s registers.
    pub sys: [u64; 7],
}

/// The registers of the x86-64 layout.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs64 {
    /// General, segment, x87 and SSE registers (GDB's order).
    pub core: X86_64CoreRegs,
    /// [`SYS64`]'s registers.
    pub sys: [u64; 9],
}

/// Size in bytes of the i386 core and SSE registers in a `g` packet.
const CORE32_BYTES: usize = 0x134;
/// Size in bytes of the x86-64 core and SSE registers.
const CORE64_BYTES: usize = 0x218;

fn serialize_sys(sys: &[u64], table: &[(&str, u32)], write_byte: &mut impl FnMut(Option<u8>)) {
    for (v, (_, bits)) in sys.iter().zip(table) {
        for b in &v.to_le_bytes()[..(*bits / 8) as usize] {
            write_byte(Some(*b));
        }
    }
}

fn deserialize_sys(sys: &mut [u64], table: &[(&str, u32)], mut bytes: &[u8]) -> Result<(), ()> {
    for (v, (_, bits)) in sys.iter_mut().zip(table) {
        let n = (*bits / 8) as usize;
        let (field, rest) = bytes.split_at_checked(n).ok_or(())?;
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(field);
        *v = u64::from_le_bytes(b);
        bytes = rest;
    }
    Ok(())
}

impl Registers for Regs32 {
    type ProgramCounter = u32;

    fn pc(&self) -> u32 {
        self.core.eip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        serialize_sys(&self.sys, SYS32, &mut write_byte);
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let (core, sys) = bytes.split_at_checked(CORE32_BYTES).ok_or(())?;
        self.core.gdb_deserialize(core)?;
        deserialize_sys(&mut self.sys, SYS32, sys)
    }
}

impl Registers for Regs64 {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        serialize_sys(&self.sys, SYS64, &mut write_byte);
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let (core, sys) = bytes.split_at_checked(CORE64_BYTES).ok_or(())?;
        self.core.gdb_deserialize(core)?;
        deserialize_sys(&mut self.sys, SYS64, sys)
    }
}

/// The i386 layout (GDB architecture `i386`).
pub enum I386 {}

/// The x86-64 layout (GDB architecture `i386:x86-64`).
pub enum X86_64 {}

impl Arch for I386 {
    type Usize = u32;
    type Registers = Regs32;
    type RegId = id::X86CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        static XML: OnceLock<String> = OnceLock::new();
        Some(XML.get_or_init(|| target_xml(false)))
    }
}

impl Arch for X86_64 {
    type Usize = u64;
    type Registers = Regs64;
    type RegId = id::X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        static XML: OnceLock<String> = OnceLock::new();
        Some(XML.get_or_init(|| target_xml(true)))
    }
}

/// The target description GDB reads (GDB manual, "Target Descriptions" and
/// "i386 Features"): the core and SSE features with the registers in the
/// order gdbstub_arch sends them, then x86bt's system registers.
fn target_xml(wide: bool) -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n",
    );
    let arch = if wide { "i386:x86-64" } else { "i386" };
    let _ = writeln!(x, "<architecture>{arch}</architecture>");
    x.push_str("<feature name=\"org.gnu.gdb.i386.core\">\n");
    // EFLAGS bits (SDM vol. 1 Figure 3-8).
    x.push_str("<flags id=\"i386_eflags\" size=\"4\">\n");
    for (name, bit) in [
        ("CF", 0),
        ("", 1),
        ("PF", 2),
        ("AF", 4),
        ("ZF", 6),
        ("SF", 7),
        ("TF", 8),
        ("IF", 9),
        ("DF", 10),
        ("OF", 11),
        ("NT", 14),
        ("RF", 16),
        ("VM", 17),
        ("AC", 18),
        ("VIF", 19),
        ("VIP", 20),
        ("ID", 21),
    ] {
        let _ = writeln!(x, "<field name=\"{name}\" start=\"{bit}\" end=\"{bit}\"/>");
    }
    x.push_str("</flags>\n");
    let reg = |x: &mut String, name: &str, bits: u32, ty: &str, group: Option<&str>| {
        let group = group.map(|g| format!(" group=\"{g}\"")).unwrap_or_default();
        let _ = writeln!(
            x,
            "<reg name=\"{name}\" bitsize=\"{bits}\" type=\"{ty}\"{group}/>"
        );
    };
    let gprs: &[&str] = if wide {
        &[
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ]
    } else {
        &["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
    };
    let bits = if wide { 64 } else { 32 };
    for name in gprs {
        let ty = match &name[1..] {
            "sp" | "bp" => "data_ptr",
            _ if wide => "int64",
            _ => "int32",
        };
        reg(&mut x, name, bits, ty, None);
    }
    reg(
        &mut x,
        if wide { "rip" } else { "eip" },
        bits,
        "code_ptr",
        None,
    );
    reg(&mut x, "eflags", 32, "i386_eflags", None);
    for s in ["cs", "ss", "ds", "es", "fs", "gs"] {
        reg(&mut x, s, 32, "int32", None);
    }
    for i in 0..8 {
        reg(&mut x, &format!("st{i}"), 80, "i387_ext", None);
    }
    for f in [
        "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop",
    ] {
        reg(&mut x, f, 32, "int", Some("float"));
    }
    x.push_str("</feature>\n<feature name=\"org.gnu.gdb.i386.sse\">\n");
    for (id, ty, n) in [
        ("v4f", "ieee_single", 4),
        ("v2d", "ieee_double", 2),
        ("v16i8", "int8", 16),
        ("v8i16", "int16", 8),
        ("v4i32", "int32", 4),
        ("v2i64", "int64", 2),
    ] {
        let _ = writeln!(x, "<vector id=\"{id}\" type=\"{ty}\" count=\"{n}\"/>");
    }
    x.push_str("<union id=\"vec128\">\n");
    for (name, ty) in [
        ("v4_float", "v4f"),
        ("v2_double", "v2d"),
        ("v16_int8", "v16i8"),
        ("v8_int16", "v8i16"),
        ("v4_int32", "v4i32"),
        ("v2_int64", "v2i64"),
        ("uint128", "uint128"),
    ] {
        let _ = writeln!(x, "<field name=\"{name}\" type=\"{ty}\"/>");
    }
    x.push_str("</union>\n");
    // MXCSR bits (SDM vol. 1 Figure 10-3).
    x.push_str("<flags id=\"i386_mxcsr\" size=\"4\">\n");
    for (i, name) in [
        "IE", "DE", "ZE", "OE", "UE", "PE", "DAZ", "IM", "DM", "ZM", "OM", "UM", "PM",
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(x, "<field name=\"{name}\" start=\"{i}\" end=\"{i}\"/>");
    }
    x.push_str("<field name=\"FZ\" start=\"15\" end=\"15\"/>\n</flags>\n");
    for i in 0..if wide { 16 } else { 8 } {
        reg(&mut x, &format!("xmm{i}"), 128, "vec128", Some("vector"));
    }
    reg(&mut x, "mxcsr", 32, "i386_mxcsr", Some("vector"));
    x.push_str("</feature>\n<feature name=\"org.x86bt.gdb.sys\">\n");
    for (name, bits) in if wide { SYS64 } else { SYS32 } {
        let ty = if *bits == 64 { "int64" } else { "int32" };
        reg(&mut x, name, *bits, ty, Some("system"));
    }
    x.push_str("</feature>\n</target>\n");
    x
}

/// The x87 registers, ST(0) first, as 80-bit images.
fn st_images(c: &CpuState) -> [F80; 8] {
    std::array::from_fn(|i| c.fpu.regs[(usize::from(c.fpu.top) + i) % 8].to_bytes())
}

fn fpu_regs(c: &CpuState) -> gdbstub_arch::x86::reg::X87FpuInternalRegs {
    gdbstub_arch::x86::reg::X87FpuInternalRegs {
        fctrl: u32::from(c.fpu.cw),
        fstat: u32::from(c.fpu.status()),
        // The full tag word, two bits per physical register.
        ftag: u32::from(c.fpu.tw),
        fiseg: u32::from(c.fpu.fcs),
        fioff: c.fpu.fip,
        foseg: u32::from(c.fpu.fds),
        fooff: c.fpu.fdp,
        fop: u32::from(c.fpu.fop),
    }
}

fn xmm(c: &CpuState, i: usize) -> u128 {
    let at = 160 + 16 * i;
    u128::from_le_bytes(c.fx[at..at + 16].try_into().expect("16 bytes"))
}

fn mxcsr(c: &CpuState) -> u32 {
    u32::from_le_bytes(c.fx[24..28].try_into().expect("4 bytes"))
}

fn segments(c: &CpuState) -> X86SegmentRegs {
    let s = |i: usize| u32::from(c.seg[i].selector);
    X86SegmentRegs {
        cs: s(sreg::CS),
        ss: s(sreg::SS),
        ds: s(sreg::DS),
        es: s(sreg::ES),
        fs: s(sreg::FS),
        gs: s(sreg::GS),
    }
}

/// What the x87, SSE and segment parts of both layouts write.
struct Common<'a> {
    eflags: u32,
    segments: &'a X86SegmentRegs,
    st: &'a [F80; 8],
    fpu: &'a gdbstub_arch::x86::reg::X87FpuInternalRegs,
    xmm: &'a [u128],
    mxcsr: u32,
}

/// The segment registers after a debugger wrote `sel` to register `s`: an
/// unchanged selector keeps its cache; a new one is loaded as the CPU would
/// load it, from `sel << 4` in real and V86 mode, from its descriptor
/// (read without side effects) in protected mode. Err for a selector whose
/// descriptor cannot be read or is not present, or a null CS or SS.
fn load_segment(vm: &Vm, i: usize, s: usize, sel: u16) -> Result<Segment, BadSelector> {
    let c = vm.cpu_state(i);
    let old = c.seg[s];
    if sel == old.selector {
        return Ok(old);
    }
    if !c.protected() || c.v86() {
        return Ok(Segment {
            selector: sel,
            base: u64::from(sel) << 4,
            ..old
        });
    }
    if sel & !3 == 0 {
        if s == sreg::CS || s == sreg::SS {
            return Err(BadSelector(sel));
        }
        return Ok(Segment {
            selector: sel,
            attrs: 0,
            limit: 0,
            base: 0,
        });
    }
    let (base, limit) = if sel & 4 != 0 {
        (c.ldtr.base, u64::from(c.ldtr.limit))
    } else {
        (c.gdtr.base, u64::from(c.gdtr.limit))
    };
    let off = u64::from(sel & 0xFFF8);
    if off + 7 > limit {
        return Err(BadSelector(sel));
    }
    let mut b = [0u8; 8];
    if vm.debug_read(i, base.wrapping_add(off), &mut b) != 8 {
        return Err(BadSelector(sel));
    }
    let d = Desc {
        lo: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
        hi: u32::from_le_bytes(b[4..].try_into().expect("4 bytes")),
    };
    if !d.present() || !d.is_segment() {
        return Err(BadSelector(sel));
    }
    Ok(d.segment(sel))
}

/// Writes the registers both layouts share to vCPU `i`.
fn write_common(vm: &mut Vm, i: usize, r: &Common) -> Result<(), BadSelector> {
    let sels = [
        (sreg::CS, r.segments.cs),
        (sreg::SS, r.segments.ss),
        (sreg::DS, r.segments.ds),
        (sreg::ES, r.segments.es),
        (sreg::FS, r.segments.fs),
        (sreg::GS, r.segments.gs),
    ];
    let mut loaded = [Segment::default(); 6];
    for (s, sel) in sels {
        loaded[s] = load_segment(vm, i, s, sel as u16)?;
    }
    let c = vm.cpu_state_mut(i);
    c.seg = loaded;
    c.rflags = (c.rflags & !0xFFFF_FFFF) | (u64::from(r.eflags) & EFLAGS_WRITABLE) | flags::FIXED1;
    c.fpu.cw = r.fpu.fctrl as u16;
    c.fpu.set_status(r.fpu.fstat as u16);
    c.fpu.tw = r.fpu.ftag as u16;
    c.fpu.fcs = r.fpu.fiseg as u16;
    c.fpu.fip = r.fpu.fioff;
    c.fpu.fds = r.fpu.foseg as u16;
    c.fpu.fdp = r.fpu.fooff;
    c.fpu.fop = (r.fpu.fop & 0x7FF) as u16;
    for (k, img) in r.st.iter().enumerate() {
        let p = (usize::from(c.fpu.top) + k) % 8;
        c.fpu.regs[p] = CpuF80::from_bytes(*img);
    }
    for (k, v) in r.xmm.iter().enumerate() {
        c.fx[160 + 16 * k..176 + 16 * k].copy_from_slice(&v.to_le_bytes());
    }
    c.fx[24..28].copy_from_slice(&(r.mxcsr & MXCSR_WRITABLE).to_le_bytes());
    Ok(())
}

/// Writes control registers and EFER as given (no checks: a debugger may
/// put the CPU in any state), dropping the TLBs when paging may change.
fn write_control(c: &mut CpuState, cr: [u64; 4], efer: u64) {
    let [cr0, cr2, cr3, cr4] = cr;
    if (c.cr0, c.cr3, c.cr4, c.efer) != (cr0, cr3, cr4, efer) {
        c.tlb.flush(false);
        c.tlb.fast.flush();
    }
    (c.cr0, c.cr2, c.cr3, c.cr4, c.efer) = (cr0, cr2, cr3, cr4, efer);
}

/// The i386 layout's GPR order (GDB's): EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI
/// are `CpuState::gpr` 0-7 in encoding order.
impl Layout for I386 {
    fn read(vm: &Vm, i: usize) -> Regs32 {
        let c = vm.cpu_state(i);
        let g = |r: usize| c.gpr[r] as u32;
        Regs32 {
            core: X86CoreRegs {
                eax: g(reg::RAX),
                ecx: g(reg::RCX),
                edx: g(reg::RDX),
                ebx: g(reg::RBX),
                esp: g(reg::RSP),
                ebp: g(reg::RBP),
                esi: g(reg::RSI),
                edi: g(reg::RDI),
                eip: c.rip as u32,
                eflags: c.rflags as u32,
                segments: segments(c),
                st: st_images(c),
                fpu: fpu_regs(c),
                xmm: std::array::from_fn(|k| xmm(c, k)),
                mxcsr: mxcsr(c),
            },
            sys: [
                c.seg[sreg::FS].base & 0xFFFF_FFFF,
                c.seg[sreg::GS].base & 0xFFFF_FFFF,
                c.cr0 & 0xFFFF_FFFF,
                c.cr2 & 0xFFFF_FFFF,
                c.cr3 & 0xFFFF_FFFF,
                c.cr4 & 0xFFFF_FFFF,
                c.efer,
            ],
        }
    }

    fn write(vm: &mut Vm, i: usize, r: &Regs32) -> Result<(), BadSelector> {
        let k = &r.core;
        write_common(
            vm,
            i,
            &Common {
                eflags: k.eflags,
                segments: &k.segments,
                st: &k.st,
                fpu: &k.fpu,
                xmm: &k.xmm,
                mxcsr: k.mxcsr,
            },
        )?;
        let c = vm.cpu_state_mut(i);
        let low = |old: u64, v: u32| (old & !0xFFFF_FFFF) | u64::from(v);
        for (r, v) in [
            (reg::RAX, k.eax),
            (reg::RCX, k.ecx),
            (reg::RDX, k.edx),
            (reg::RBX, k.ebx),
            (reg::RSP, k.esp),
            (reg::RBP, k.ebp),
            (reg::RSI, k.esi),
            (reg::RDI, k.edi),
        ] {
            c.gpr[r] = low(c.gpr[r], v);
        }
        c.rip = low(c.rip, k.eip);
        let [fs, gs, cr0, cr2, cr3, cr4, efer] = r.sys;
        c.seg[sreg::FS].base = low(c.seg[sreg::FS].base, fs as u32);
        c.seg[sreg::GS].base = low(c.seg[sreg::GS].base, gs as u32);
        let hi = |old: u64, v: u64| (old & !0xFFFF_FFFF) | (v & 0xFFFF_FFFF);
        let cr = [
            hi(c.cr0, cr0),
            hi(c.cr2, cr2),
            hi(c.cr3, cr3),
            hi(c.cr4, cr4),
        ];
        write_control(c, cr, efer);
        Ok(())
    }

    fn to_u64(a: u32) -> u64 {
        u64::from(a)
    }

    fn from_u64(a: u64) -> u32 {
        a as u32
    }
}

/// GDB's x86-64 GPR order: RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8-R15.
const GPR64_ORDER: [usize; 16] = [0, 3, 1, 2, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15];

impl Layout for X86_64 {
    fn read(vm: &Vm, i: usize) -> Regs64 {
        let c = vm.cpu_state(i);
        Regs64 {
            core: X86_64CoreRegs {
                regs: GPR64_ORDER.map(|r| c.gpr[r]),
                eflags: c.rflags as u32,
                rip: c.rip,
                segments: segments(c),
                st: st_images(c),
                fpu: fpu_regs(c),
                xmm: std::array::from_fn(|k| xmm(c, k)),
                mxcsr: mxcsr(c),
            },
            sys: [
                c.seg[sreg::FS].base,
                c.seg[sreg::GS].base,
                c.msr.kernel_gs_base,
                c.cr0,
                c.cr2,
                c.cr3,
                c.cr4,
                c.cr8,
                c.efer,
            ],
        }
    }

    fn write(vm: &mut Vm, i: usize, r: &Regs64) -> Result<(), BadSelector> {
        let k = &r.core;
        write_common(
            vm,
            i,
            &Common {
                eflags: k.eflags,
                segments: &k.segments,
                st: &k.st,
                fpu: &k.fpu,
                xmm: &k.xmm,
                mxcsr: k.mxcsr,
            },
        )?;
        let c = vm.cpu_state_mut(i);
        for (slot, v) in GPR64_ORDER.iter().zip(k.regs) {
            c.gpr[*slot] = v;
        }
        c.rip = k.rip;
        let [fs, gs, kgs, cr0, cr2, cr3, cr4, cr8, efer] = r.sys;
        c.seg[sreg::FS].base = fs;
        c.seg[sreg::GS].base = gs;
        c.msr.kernel_gs_base = kgs;
        c.cr8 = cr8 & 0xF;
        write_control(c, [cr0, cr2, cr3, cr4], efer);
        Ok(())
    }

    fn to_u64(a: u64) -> u64 {
        a
    }

    fn from_u64(a: u64) -> u64 {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_xml_names_gdb_registers_in_packet_order() {
        let x = target_xml(true);
        let names: Vec<&str> = x
            .match_indices("<reg name=\"")
            .map(|(at, m)| {
                let rest = &x[at + m.len()..];
                &rest[..rest.find('"').expect("closing quote")]
            })
            .collect();
        assert_eq!(&names[..3], ["rax", "rbx", "rcx"]);
        assert_eq!(names[16], "rip");
        assert_eq!(names[17], "eflags");
        assert_eq!(names[24], "st0");
        assert_eq!(names.iter().filter(|n| n.starts_with("xmm")).count(), 16);
        assert_eq!(names.last(), Some(&"efer"));
        // The bytes a `g` packet carries match what the XML describes.
        let bits: u32 = x
            .match_indices("bitsize=\"")
            .map(|(at, m)| {
                let rest = &x[at + m.len()..];
                rest[..rest.find('"').expect("quote")]
                    .parse::<u32>()
                    .expect("bits")
            })
            .sum();
        let mut n = 0;
        Regs64::default().gdb_serialize(|_| n += 1);
        assert_eq!(bits / 8, n);
        let x32 = target_xml(false);
        let bits32: u32 = x32
            .match_indices("bitsize=\"")
            .map(|(at, m)| {
                let rest = &x32[at + m.len()..];
                rest[..rest.find('"').expect("quote")]
                    .parse::<u32>()
                    .expect("bits")
            })
            .sum();
        let mut n32 = 0;
        Regs32::default().gdb_serialize(|_| n32 += 1);
        assert_eq!(bits32 / 8, n32);
    }

    #[test]
    fn registers_round_trip_through_the_packet_bytes() {
        let mut r = Regs64::default();
        r.core.regs[3] = 0x1122_3344_5566_7788;
        r.core.rip = 0xFFFF_FFFF_8100_0000;
        r.sys = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        let mut back = Regs64::default();
        back.gdb_deserialize(&bytes).expect("deserializes");
        assert_eq!(back, r);
        let mut r32 = Regs32::default();
        r32.core.eip = 0xC100_0000;
        r32.sys = [1, 2, 3, 4, 5, 6, 0x1_0000_0D01];
        let mut bytes = Vec::new();
        r32.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        let mut back = Regs32::default();
        back.gdb_deserialize(&bytes).expect("deserializes");
        assert_eq!(back, r32);
        assert!(back.gdb_deserialize(&bytes[..bytes.len() - 1]).is_err());
    }
}
