//! A unit's host code as text: the guest instructions with how each is lowered,
//! then the fragment disassembled with iced's Intel formatter. Addresses that
//! change from run to run (the helper, the prepared instructions) are emitted as
//! fixed placeholders and printed by name, so the text is stable for golden tests.

use crate::emit::{emit_unit, Externals, Predict, Stubs, UnitPlan};
use crate::plan::{self, HelperKind, Lowering};
use crate::runtime::JitCtx;
use dynasmrt::x64::X64Relocation;
use dynasmrt::VecAssembler;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use std::fmt::Write;
use x86bt_cpu::interp::Insn;
use x86bt_decoder::{decode_unit, Bitness, DecodedUnit};

/// Placeholder addresses of the shared stubs in listings (within reach of a
/// relative CALL from a listing's code at address 0).
const FAKE_STUBS: Stubs = Stubs {
    enter: 0x7E00_0000,
    leave: 0x7E00_0100,
    ret: 0x7E00_0200,
    helper: 0x7E00_0300,
    fill: 0x7E00_0400,
    next: 0x7E00_0500,
};
/// Placeholder address of prepared instruction `i`: FAKE_INSN + i * 0x100.
const FAKE_INSN: u64 = 0x7E57_0001_0000;
/// Placeholder link-site tags.
const FAKE_TAGS: [u64; 2] = [0x7E57_0003_0000, 0x7E57_0003_0001];
/// Placeholder address of the `JitCtx`.
const FAKE_CTX: u64 = 0x7E57_0005_0000;
/// Placeholder addresses of the predicted fast-TLB entries: as translated
/// code reads them (within reach of a RIP-relative operand from address 0),
/// and the writable view.
const FAKE_PREDICT: u64 = 0x7D00_0000;
const FAKE_PREDICT_RW: u64 = 0x7E57_0006_0000;

fn formatter() -> IntelFormatter {
    let mut f = IntelFormatter::new();
    let o = f.options_mut();
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_space_after_operand_separator(true);
    f
}

/// The listing of the unit that `code` (guest bytes at IP 0) decodes to.
pub fn listing(bitness: Bitness, code: &[u8]) -> String {
    let mut unit = DecodedUnit::default();
    decode_unit(bitness, 0, code, code.len(), &mut unit);
    let bits = bitness.bits();
    let insns: Vec<Insn> = unit
        .instructions()
        .iter()
        .map(|i| Insn::prepare(i, bits))
        .collect();
    render(bits, &insns)
}

/// The listing of prepared instructions `insns` of a `bits`-bit unit.
pub fn render(bits: u32, insns: &[Insn]) -> String {
    let (lowerings, regs) = plan::plan_unit(insns);
    let (captures, entry_live) = plan::flag_plan(&lowerings);
    let remats = plan::remats(insns, &lowerings, &captures);
    let reruns = plan::reruns(insns);
    let lens: Vec<u8> = insns.iter().map(|i| i.len).collect();
    let kinds = plan::helper_kinds(&lowerings);
    let ptrs: Vec<u64> = (0..insns.len() as u64)
        .map(|i| FAKE_INSN + i * 0x100)
        .collect();
    let mut ops = VecAssembler::<X64Relocation>::new(0);
    emit_unit(
        &mut ops,
        &UnitPlan {
            lowerings: &lowerings,
            captures: &captures,
            entry_live,
            reruns: &reruns,
            remats: &remats,
            lens: &lens,
            kinds: &kinds,
            chain: plan::may_chain(&lowerings) && !plan::seg_writes(insns).contains(&true),
            rip: 0,
            ip_mask: match bits {
                16 => 0xFFFF,
                32 => 0xFFFF_FFFF,
                _ => u64::MAX,
            },
            cs_base: 0,
            cs_limit: if bits == 16 { 0xFFFF } else { u32::MAX },
            // 16-bit units show the checked access path (real-mode segments),
            // 32-bit ones the flat model's.
            flat: if bits == 16 { 0 } else { 0x3F },
            seg_writes: &plan::seg_writes(insns),
            spec: 0,
            // 16-bit units as in real mode, 32-bit ones in protected mode.
            protected: bits == 32,
            v86: false,
            event_end: insns
                .last()
                .is_some_and(|i| !x86bt_cpu::engine::ends_plainly(&i.ins)),
            long: bits == 64,
            regs,
            shadow_clear: &plan::shadow_clears(insns),
            loop_prefix: plan::loop_prefix(insns, &lowerings),
            exit_dead: [false; 2],
            closing_clears: insns
                .len()
                .checked_sub(2)
                .map_or(0, |k| plan::cleared_flags(&insns[k].ins)),
            dispatch: plan::dispatches(insns, &lowerings),
            key: match bits {
                16 => x86bt_cpu::CpuMode::Real as u8,
                32 => x86bt_cpu::CpuMode::Prot32 as u8,
                _ => x86bt_cpu::CpuMode::Long64 as u8,
            },
        },
        &Externals {
            stubs: FAKE_STUBS,
            ctx: FAKE_CTX,
            insns: &ptrs,
            link_tags: FAKE_TAGS,
            predict: Some(Predict {
                rx: FAKE_PREDICT,
                rw: FAKE_PREDICT_RW,
                next: &std::cell::Cell::new(0),
                code_base: 0,
            }),
        },
    );
    let host = match ops.finalize() {
        Ok(b) => b,
        Err(e) => return format!("; cannot assemble: {e}\n"),
    };
    let mut f = formatter();
    let mut out = format!("; guest, {bits}-bit\n");
    let mut text = String::new();
    for ((insn, l), cap) in insns.iter().zip(&lowerings).zip(&captures) {
        text.clear();
        f.format(&insn.ins, &mut text);
        let how = match l {
            Lowering::Ident(x) if x.flags.written != 0 && *cap => "ident, flags captured",
            Lowering::Ident(x) if x.flags.written != 0 => "ident, flags dead",
            Lowering::Ident(_) => "ident",
            Lowering::Branch(_) => "inline branch",
            Lowering::Xfer(_) => "inline transfer",
            Lowering::Rdtsc(false) => "inline RDTSC",
            Lowering::Rdtsc(true) => "inline RDTSCP",
            Lowering::Flags(_) => "inline flags instruction",
            Lowering::Div(_) => "inline DIV",
            Lowering::Mem(x) if x.op.flags.written != 0 && *cap => "memory inline, flags captured",
            Lowering::Mem(x) if x.op.flags.written != 0 => "memory inline, flags dead",
            Lowering::Mem(_) => "memory inline",
            Lowering::Sse(x) if x.x.op.flags.written != 0 && *cap => "SSE inline, flags captured",
            Lowering::Sse(x) if x.x.op.flags.written != 0 => "SSE inline, flags dead",
            Lowering::Sse(_) => "SSE inline",
            Lowering::Helper(k) => HelperKind::NAMES[*k as usize],
        };
        let _ = writeln!(out, ";   {:04x}  {text:<28} {how}", insn.ins.ip());
    }
    let _ = writeln!(out, "; host, {} bytes", host.len());
    let mut d = Decoder::with_ip(64, &host, 0, DecoderOptions::NONE);
    for ins in &mut d {
        text.clear();
        f.format(&ins, &mut text);
        let mut line = text.clone();
        for (name, at) in [
            ("stub_leave", FAKE_STUBS.leave),
            ("stub_ret", FAKE_STUBS.ret),
            ("stub_helper", FAKE_STUBS.helper),
            ("stub_fill", FAKE_STUBS.fill),
            ("stub_next", FAKE_STUBS.next),
        ] {
            line = line.replace(&format!("0x{at:016x}"), name);
            line = line.replace(&format!("0x{at:x}"), name);
        }
        for (name, off) in [
            (
                "ctx.icount_limit",
                core::mem::offset_of!(JitCtx, icount_limit),
            ),
            ("ctx.tlb_base", core::mem::offset_of!(JitCtx, tlb_base)),
            (
                "ctx.pending_link",
                core::mem::offset_of!(JitCtx, pending_link),
            ),
            ("ctx.jc", core::mem::offset_of!(JitCtx, jc)),
            ("ctx.intr", core::mem::offset_of!(JitCtx, intr)),
        ] {
            line = line.replace(&format!("0x{:x}", FAKE_CTX + off as u64), name);
        }
        line = line.replace(&format!("0x{FAKE_CTX:x}"), "ctx");
        for (site, name) in ["taken", "not_taken"].iter().enumerate() {
            line = line.replace(&format!("0x{:x}", FAKE_TAGS[site]), &format!("tag_{name}"));
        }
        for i in (0..insns.len() as u64).rev() {
            line = line.replace(
                &format!("0x{:x}", FAKE_INSN + i * 0x100),
                &format!("insn[{i}]"),
            );
        }
        let _ = writeln!(out, "{:04x}  {line}", ins.ip());
    }
    out
}
