//! Golden tests of the host code the translator emits for a handful of units.
//!
//! Each unit is assembled here with iced's `CodeAssembler`, lowered by
//! [`x86bt_translator::listing::listing`] (the same planner and emitter the engine
//! uses, into a plain buffer) and compared with `tests/golden/<name>.txt`: the
//! guest instructions with how each is lowered, then the host code formatted by
//! iced's Intel formatter. A change in code generation shows up as a diff here.
//!
//! After an intended change, regenerate the files with
//! `X86BT_BLESS=1 cargo test -p x86bt-translator --test golden` and review the diff.

use iced_x86::code_asm::*;
use std::path::PathBuf;
use x86bt_decoder::Bitness;
use x86bt_translator::listing::listing;

fn assemble(bits: u32, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).expect("assembler");
    f(&mut a).expect("unit assembles");
    a.assemble(0).expect("unit encodes")
}

fn check(name: &str, bitness: Bitness, code: &[u8]) {
    let got = listing(bitness, code);
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "golden",
        &format!("{name}.txt"),
    ]
    .iter()
    .collect();
    if std::env::var_os("X86BT_BLESS").is_some() {
        std::fs::write(&path, &got).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with X86BT_BLESS=1 to create it\n{got}",
            path.display()
        )
    });
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "{name}: emitted code differs from {} from line {} on (X86BT_BLESS=1 regenerates):\n{got}",
            path.display(),
            first + 1
        );
    }
}

#[test]
fn golden_alu16_compare_branch() {
    // The sieve's fill loop tail: inline INC and CMP, flags of INC dead, host
    // flags of CMP used by the inline JB.
    let code = assemble(16, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(bx)?;
        a.cmp(bx, 8191)?;
        a.jb(top)
    });
    check("alu16_compare_branch", Bitness::B16, &code);
}

#[test]
fn golden_checksum16_memory_helper_then_inline() {
    // A memory operand through the helper, then ADC reloading the flags, ROL by
    // one, and a DEC/JNZ pair.
    let code = assemble(16, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(dx, word_ptr(si))?;
        a.adc(dx, 0)?;
        a.rol(dx, 1)?;
        a.add(si, 2)?;
        a.dec(cx)?;
        a.jnz(top)
    });
    check("checksum16", Bitness::B16, &code);
}

#[test]
fn golden_lea_setcc_cmov_shift32() {
    // 32-bit: LEA with scaled index, MOVZX, SETcc and CMOVcc reading the host
    // flags of CMP, SHL by 4 (OF fixed up as SF ^ CF), ESP in R8, then JMP.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.lea(eax, dword_ptr(ebx + ecx * 4 + 8))?;
        a.movzx(edx, al)?;
        a.cmp(eax, edx)?;
        a.setb(cl)?;
        a.cmovne(esi, edi)?;
        a.shl(eax, 4)?;
        a.mov(ebp, esp)?;
        a.jmp(top)
    });
    check("lea_setcc_cmov_shift32", Bitness::B32, &code);
}

#[test]
fn golden_dead_flags_before_helper_return() {
    // Flags of ADD and SUB are overwritten by XOR; XOR's are live at the RET
    // (a helper may read or push them).
    let code = assemble(32, |a| {
        a.add(eax, ebx)?;
        a.sub(ecx, edx)?;
        a.xor(esi, esi)?;
        a.mov(edi, 5)?;
        a.ret()
    });
    check("dead_flags_ret", Bitness::B32, &code);
}

#[test]
fn golden_sensitive_unit_after_inline_move() {
    // CLI and STI inline, going on inside the unit (STI leaves it with an
    // event if INTR is up, `JitCtx::intr`); the instruction after STI clears
    // the interrupt shadow first; HLT, sensitive, ends the unit through the
    // helper.
    let code = assemble(16, |a| {
        a.mov(al, 0x11)?;
        a.cli()?;
        a.sti()?;
        a.hlt()
    });
    check("sensitive16", Bitness::B16, &code);
}

#[test]
fn golden_helper_only_unit_calls_the_helper_stub() {
    // Nothing to lower inline: every instruction goes through the helper stub.
    let code = assemble(16, |a| {
        a.daa()?;
        a.das()
    });
    check("helper_only16", Bitness::B16, &code);
}

#[test]
fn golden_sse_copy_loop64() {
    // 64-bit: the SSE2 copy loop of the native benchmark: unaligned loads
    // (no alignment check), aligned stores (the check), one CR0/CR4 check
    // for the unit, a float add (the MXCSR mask check), and a probe with no
    // canonical check of its own.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.movdqu(xmm0, xmmword_ptr(rax + 0x1000))?;
        a.movdqu(xmm9, xmmword_ptr(rax + 0x1010))?;
        a.addps(xmm0, xmm9)?;
        a.add(rax, 0x20)?;
        a.movaps(xmmword_ptr(rax + 0x8000), xmm0)?;
        a.cmp(rax, 0x4000)?;
        a.jne(top)
    });
    check("sse_copy_loop64", Bitness::B64, &code);
}

#[test]
fn golden_crc_loop64_maps_r15() {
    // 64-bit: a table-driven CRC loop (the kernel decompressor's) whose R15 is
    // named four times: the unit keeps it in a legacy host register it does
    // not use (RAX), loaded by a prologue, kept across its own iterations and
    // stored back on every way out; R8 and R9, named once, use scratch loads.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.movzx(r15d, byte_ptr(rdi))?;
        a.add(rdi, 1)?;
        a.xor(r15d, ecx)?;
        a.shr(ecx, 8)?;
        a.movzx(r15d, r15b)?;
        a.xor(ecx, dword_ptr(r9 + r15 * 4))?;
        a.cmp(rdi, r8)?;
        a.jne(top)
    });
    check("crc_loop64", Bitness::B64, &code);
}

#[test]
fn golden_strlen_loop64() {
    // 64-bit: the strlen kernel's byte loop as GCC compiles it. ADD's flags are
    // overwritten by CMP, but a fault in CMP's load must see them: they are
    // live only on the slow path.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(rax, 1)?;
        a.cmp(byte_ptr(rax), 0)?;
        a.jne(top)
    });
    check("strlen_loop64", Bitness::B64, &code);
}

#[test]
fn golden_strlen_loop32() {
    // 32-bit: the same loop with INC, which keeps CF, as GCC compiles it for
    // i386. INC's flags are computed again on the slow paths only, CF from
    // R14; CMP with zero clears CF, the one flag live at the loop's start, so
    // the way back clears it in R14 instead of capturing the compare.
    let code = assemble(32, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.inc(eax)?;
        a.cmp(byte_ptr(eax), 0)?;
        a.jne(top)
    });
    check("strlen_loop32", Bitness::B32, &code);
}

#[test]
fn golden_memcpy_loop64() {
    // 64-bit: the memcpy kernel's dword loop: a load and a store per trip.
    let code = assemble(64, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(edx, dword_ptr(rax + 0x115200))?;
        a.add(rax, 4)?;
        a.mov(dword_ptr(rax + 0x11f11c), edx)?;
        a.cmp(rax, 0x4000)?;
        a.jne(top)
    });
    check("memcpy_loop64", Bitness::B64, &code);
}
