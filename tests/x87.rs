//! x87 FPU guest programs, assembled here with iced-x86's `code_asm` and run through
//! x86bt's real run loop (`Vm::run`) in 16-bit real mode.
//!
//! Two oracles, neither involving x86bt:
//! - On an x86-64 host (module `native`), every instruction also runs on the host's
//!   own x87 through `core::arch::asm!`. Guest and host execute the same sequence on
//!   the same 80-byte record: FNINIT, FLDCW (the case's precision, rounding and
//!   exception masks), FLD m80 B, FLD m80 A, the instruction under test, FNSTSW,
//!   FNCLEX, FLDCW 037Fh and three FSTP m80. The records that come back (status word,
//!   EFLAGS bytes, the top three registers, the instruction's memory output) are
//!   compared bit for bit. Operands are seeded and include denormals, pseudo-
//!   denormals, unnormals, infinities, quiet and signaling NaNs, zeros of both signs,
//!   values at the edges of the exponent ranges, and significands at the rounding
//!   boundaries of 24, 53 and 64 bits. Each pair runs under every precision control
//!   (24/53/64) and rounding control, with all exceptions masked and then unmasked
//!   (the unmasked responses: suppressed results, and the ±24576 exponent bias of
//!   unmasked overflow and underflow).
//! - State images (FNSTENV/FNSAVE/FXSAVE), FNINIT values, #NM, #MF and FERR#, and
//!   stack faults are also checked against values derived by hand from the Intel SDM
//!   (vol. 1 ch. 8, vol. 2 instruction pages, vol. 3A §2.5 and Table 9-1).
//!
//! Known limitation: x86bt computes FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X
//! and FYL2XP1 through host `f64` arithmetic after an exact argument reduction (see
//! `x86bt_cpu::fpu`), so their finite results are compared with a relative
//! tolerance of 2^-48 (x86bt was measured within 2^-51.4 of the host), and their PE,
//! UE and C1 bits are not compared. NaN, infinite, zero and out-of-range (C2)
//! results, and every other status bit, must match exactly. The trigonometric
//! arguments cover the whole range up to 2^63, including values within an ulp of a
//! multiple of π/2.
//!
//! Differential sweeps use 300 seeded operand pairs each; `X87_PAIRS=20000` runs a
//! longer sweep locally.
//!
//! Layout of every guest: code at 1000:0000, DS=2000, SS:SP=9000:FFFE, and one-byte
//! HLT stubs at 1000:F000+v that IVT entries 0-31 point at, so a fault test learns
//! which vector was delivered from where the CPU halted.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Instruction, MemoryOperand};
use x86bt::{RunOutcome, Vm};
use x86bt_cpu::state::{reg, seg_attr, sreg, Segment};
use x86bt_machine::{GuestPhys, Machine};

// ================================================================================
// Shared helpers
// ================================================================================

const CODE_SEG: u16 = 0x1000;
const DATA_SEG: u16 = 0x2000;
const STACK_SEG: u16 = 0x9000;
const STACK_TOP: u16 = 0xFFFE;
/// 32 one-byte HLT stubs; IVT entry v points at CODE_SEG:STUBS+v.
const STUBS: u16 = 0xF000;
const INSN_LIMIT: u64 = 50_000_000;

/// Status word bits (SDM vol. 1 §8.1.3, Figure 8-4).
const IE: u16 = 1 << 0;
const ZE: u16 = 1 << 2;
const UE: u16 = 1 << 4;
const PE: u16 = 1 << 5;
const SF: u16 = 1 << 6;
const ES: u16 = 1 << 7;
const C1: u16 = 1 << 9;
const B: u16 = 1 << 15;

/// CR0 bits (SDM vol. 3A §2.5).
const CR0_MP: u32 = 1 << 1;
const CR0_EM: u32 = 1 << 2;
const CR0_TS: u32 = 1 << 3;
const CR0_NE: u32 = 1 << 5;

/// Interrupt vectors (SDM vol. 3A Table 6-1).
const NM: u8 = 7;
const MF: u8 = 16;

type AsmResult = Result<(), IcedError>;

fn phys(seg: u16, off: u16) -> u64 {
    (u64::from(seg) << 4) + u64::from(off)
}

/// Assembles a 16-bit guest at IP 0 and returns the code with the addresses of the
/// labels its builder returned (passes repeat until the addresses settle).
fn assemble<const N: usize>(
    build: impl Fn(&mut CodeAssembler, [u16; N]) -> Result<[CodeLabel; N], IcedError>,
) -> (Vec<u8>, [u16; N]) {
    let mut ips = [0x4000u16; N];
    for _ in 0..8 {
        let mut a = CodeAssembler::new(16).expect("16-bit assembler");
        let labels = build(&mut a, ips).expect("guest program builds");
        let res = a
            .assemble_options(0, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .expect("guest program encodes");
        let found = labels.map(|l| res.label_ip(&l).expect("label is placed") as u16);
        if found == ips {
            return (res.inner.code_buffer, ips);
        }
        ips = found;
    }
    panic!("label addresses did not settle");
}

/// Assembles a 16-bit guest without labels that need addresses.
fn asm16(build: impl Fn(&mut CodeAssembler) -> AsmResult) -> Vec<u8> {
    assemble(|a, []| {
        build(a)?;
        Ok([])
    })
    .0
}

/// A 16 MiB flat machine with `code` at CODE_SEG:0, the HLT stubs and their IVT
/// entries, and the CPU at the first instruction with the standard segments.
fn flat_vm(code: &[u8]) -> Vm {
    vm_on(Machine::flat(16 << 20).expect("flat machine"), code)
}

/// A VM on the full PC (PICs, the FERR# latch at port 0xF0), no BIOS.
fn pc_vm(code: &[u8]) -> Vm {
    let m = x86bt_machine::pc::build(x86bt_machine::pc::PcConfig::headless(16 << 20, None))
        .expect("PC machine");
    vm_on(m, code)
}

fn vm_on(mut m: Machine, code: &[u8]) -> Vm {
    assert!(code.len() <= usize::from(STUBS), "code overlaps the stubs");
    m.mem
        .load(GuestPhys(phys(CODE_SEG, 0)), code)
        .expect("code fits in RAM");
    m.mem
        .load(GuestPhys(phys(CODE_SEG, STUBS)), &[0xF4; 32])
        .expect("stubs fit in RAM");
    let ivt: Vec<u8> = (0..32u16)
        .flat_map(|v| {
            let [a, b] = (STUBS + v).to_le_bytes();
            let [c, d] = CODE_SEG.to_le_bytes();
            [a, b, c, d]
        })
        .collect();
    m.mem.load(GuestPhys(0), &ivt).expect("IVT fits in RAM");
    let mut vm = Vm::new(m);
    vm.cpu.seg[sreg::CS] = Segment::real(CODE_SEG);
    vm.cpu.seg[sreg::DS] = Segment::real(DATA_SEG);
    vm.cpu.seg[sreg::ES] = Segment::real(DATA_SEG);
    vm.cpu.seg[sreg::SS] = Segment::real(STACK_SEG);
    vm.cpu.gpr[reg::RSP] = u64::from(STACK_TOP);
    vm.cpu.rip = 0;
    vm
}

/// Puts the CPU in 16-bit protected mode at CPL 0 with the real-mode layout kept:
/// CS selector 08h (base 10000h), DS/ES selector 10h (base 20000h), SS selector 18h
/// (base 90000h). No descriptor tables: only tests without exceptions use this.
fn enter_protected16(vm: &mut Vm) {
    let seg = |selector: u16, base: u64, code: bool| Segment {
        selector,
        attrs: seg_attr::P
            | seg_attr::S
            | seg_attr::RW
            | seg_attr::ACCESSED
            | if code { seg_attr::CODE } else { 0 },
        limit: 0xFFFF,
        base,
    };
    vm.cpu.cr0 |= 1;
    vm.cpu.seg[sreg::CS] = seg(0x08, phys(CODE_SEG, 0), true);
    vm.cpu.seg[sreg::DS] = seg(0x10, phys(DATA_SEG, 0), false);
    vm.cpu.seg[sreg::ES] = seg(0x10, phys(DATA_SEG, 0), false);
    vm.cpu.seg[sreg::SS] = seg(0x18, phys(STACK_SEG, 0), false);
}

fn load(vm: &mut Vm, seg: u16, off: u16, bytes: &[u8]) {
    vm.machine
        .mem
        .load(GuestPhys(phys(seg, off)), bytes)
        .expect("test data fits in RAM");
}

fn bytes(vm: &Vm, seg: u16, off: u16, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    vm.machine
        .mem
        .read_bytes(GuestPhys(phys(seg, off)), &mut buf);
    buf
}

fn mem16(vm: &Vm, seg: u16, off: u16) -> u16 {
    u16::from_le_bytes(vm.machine.mem.read::<2>(GuestPhys(phys(seg, off))))
}

fn mem32(vm: &Vm, seg: u16, off: u16) -> u32 {
    u32::from_le_bytes(vm.machine.mem.read::<4>(GuestPhys(phys(seg, off))))
}

fn where_is(vm: &Vm) -> String {
    format!("{:04x}:{:04x}", vm.cpu.seg[sreg::CS].selector, vm.cpu.rip)
}

/// The vector whose HLT stub the CPU stopped in, if any.
fn stub_vector(vm: &Vm) -> Option<u8> {
    let ip = vm.cpu.rip as u16;
    (vm.cpu.seg[sreg::CS].base == phys(CODE_SEG, 0) && (STUBS + 1..=STUBS + 32).contains(&ip))
        .then(|| (ip - STUBS - 1) as u8)
}

/// Runs until HLT with interrupts off, and checks no exception stub was reached.
fn run_to_halt(vm: &mut Vm) {
    let out = vm.run(INSN_LIMIT);
    assert_eq!(
        out,
        RunOutcome::HaltedForever,
        "stopped at {}",
        where_is(vm)
    );
    assert_eq!(stub_vector(vm), None, "unexpected exception");
}

/// Runs until an exception stub halts; returns the vector and the pushed IP.
fn run_to_exception(vm: &mut Vm) -> (u8, u16) {
    let out = vm.run(INSN_LIMIT);
    assert_eq!(
        out,
        RunOutcome::HaltedForever,
        "stopped at {}",
        where_is(vm)
    );
    let vector = stub_vector(vm)
        .unwrap_or_else(|| panic!("no exception was delivered; halted at {}", where_is(vm)));
    let top = vm.cpu.gpr[reg::RSP] as u16;
    (vector, mem16(vm, STACK_SEG, top))
}

/// Sets CR0 bits from real mode (MOV CR0 at CPL 0).
fn set_cr0(a: &mut CodeAssembler, bits: u32) -> AsmResult {
    a.mov(eax, cr0)?;
    a.or(eax, bits as i32)?;
    a.mov(cr0, eax)
}

/// An 80-bit value: sign, biased exponent, significand with its explicit J bit.
fn f80(neg: bool, exp: u16, sig: u64) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&sig.to_le_bytes());
    b[8..].copy_from_slice(&(exp | if neg { 0x8000 } else { 0 }).to_le_bytes());
    b
}

const ONE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x3F];
const INF: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x7F];
/// The real indefinite (SDM vol. 1 §4.8.3.7).
const INDEFINITE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF];

// ================================================================================
// Initialization and the control/status words
// ================================================================================

#[test]
fn fnstcw_at_power_on_reads_0040() {
    // Arrange: SDM vol. 3A Table 9-1: x87 control word 0040H after RESET.
    let code = asm16(|a| {
        a.fnstcw(word_ptr(0))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0, &[0xAA, 0xAA]);

    // Act
    run_to_halt(&mut vm);

    // Assert
    assert_eq!(mem16(&vm, DATA_SEG, 0), 0x0040);
}

#[test]
fn fninit_after_dirty_state_gives_status_0_control_037f_tags_empty() {
    // Arrange: unusual CW, a masked divide by zero (ZE, TOP 7), then FNINIT.
    let code = asm16(|a| {
        a.fninit()?;
        a.fldcw(word_ptr(0x100))?;
        a.fld1()?;
        a.fldz()?;
        a.fdivp(st1, st0)?;
        a.fnstsw(word_ptr(0x10))?;
        a.fninit()?;
        a.fnstsw(word_ptr(0))?;
        a.fnstcw(word_ptr(2))?;
        a.fnstsw(ax)?;
        a.mov(word_ptr(4), ax)?;
        a.fnstenv(ptr(0x20))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &0x0E7Fu16.to_le_bytes());

    // Act
    run_to_halt(&mut vm);

    // Assert: SDM vol. 2A FINIT/FNINIT.
    assert_eq!(mem16(&vm, DATA_SEG, 0x10), 0x3800 | ZE, "state was dirty");
    assert_eq!(mem16(&vm, DATA_SEG, 0), 0x0000, "FNSTSW m16");
    assert_eq!(mem16(&vm, DATA_SEG, 2), 0x037F, "FNSTCW");
    assert_eq!(mem16(&vm, DATA_SEG, 4), 0x0000, "FNSTSW AX");
    assert_eq!(mem16(&vm, DATA_SEG, 0x24), 0xFFFF, "tag word: all empty");
}

#[test]
fn fldcw_reserved_bits_read_back_with_bit6_set() {
    // Arrange: FLDCW 0000h unmasks everything; bit 6 reads as 1.
    let code = asm16(|a| {
        a.fninit()?;
        a.fldcw(word_ptr(0x100))?;
        a.fnstcw(word_ptr(0))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x100, &0x0000u16.to_le_bytes());

    // Act
    run_to_halt(&mut vm);

    // Assert
    assert_eq!(mem16(&vm, DATA_SEG, 0), 0x0040);
}

// ================================================================================
// State images: FNSTENV, FNSAVE, FRSTOR, FXSAVE (SDM vol. 1 §8.1.10, Figures 8-9
// to 8-12; vol. 2A FXSAVE Table 3-53)
// ================================================================================

/// Where the environment tests keep their data in DS.
const CW_AT: u16 = 0x100;
const INF_AT: u16 = 0x110;
const IMAGE_AT: u16 = 0x200;
const AFTER_AT: u16 = 0x300;

/// `fld tbyte [INF_AT]` is DB /5 with mod 00 r/m 110: FOP = 3 << 8 | 2Eh.
const FLD_M80_DISP16_FOP: u16 = 0x32E;

/// FNINIT; FLDCW 0F40h (every exception unmasked, PC 64, RC toward zero); FLD1;
/// FLDZ; FLD +inf (the last non-control instruction, at the returned label);
/// `save` into DS:IMAGE_AT; FNSTCW and FNSTSW into DS:AFTER_AT. After the loads
/// TOP is 5 and R7 = 1.0 (valid), R6 = 0 (zero), R5 = +inf (special).
fn env_program(save: Instruction) -> (Vec<u8>, u16) {
    let (code, [fld_ip]) = assemble(|a, _| {
        let mut fld = a.create_label();
        a.fninit()?;
        a.fldcw(word_ptr(CW_AT))?;
        a.fld1()?;
        a.fldz()?;
        a.set_label(&mut fld)?;
        a.fld(tword_ptr(INF_AT))?;
        a.add_instruction(save)?;
        a.fnstcw(word_ptr(AFTER_AT))?;
        a.fnstsw(word_ptr(AFTER_AT + 2))?;
        a.hlt()?;
        Ok([fld])
    });
    (code, fld_ip)
}

fn image_insn(code: Code) -> Instruction {
    Instruction::with1(code, MemoryOperand::with_displ(u64::from(IMAGE_AT), 2))
        .expect("valid x87 state instruction")
}

/// Runs `save` after the common prologue, in real mode or 16-bit protected mode;
/// returns the VM and the IP of the last FLD.
fn run_env_program(code: Code, protected: bool) -> (Vm, u16) {
    let (program, fld_ip) = env_program(image_insn(code));
    let mut vm = flat_vm(&program);
    if protected {
        enter_protected16(&mut vm);
    }
    load(&mut vm, DATA_SEG, CW_AT, &0x0F40u16.to_le_bytes());
    load(&mut vm, DATA_SEG, INF_AT, &INF);
    run_to_halt(&mut vm);
    (vm, fld_ip)
}

/// The tag word after FLD1, FLDZ, FLD +inf from an empty stack: R7 valid (00),
/// R6 zero (01), R5 special (10), R4-R0 empty (11).
const TW_AFTER_LOADS: u16 = 0x1BFF;
/// The status word then: TOP = 5, nothing else.
const SW_AFTER_LOADS: u16 = 5 << 11;

#[test]
fn fnstenv_16bit_real_mode_matches_figure_8_12() {
    // Arrange and act
    let (vm, ip) = run_env_program(Code::Fnstenv_m14byte, false);

    // Assert: 20-bit linear pointers, their top nibble above the FOP.
    let fip = phys(CODE_SEG, ip);
    let fdp = phys(DATA_SEG, INF_AT);
    let w = |i: u16| mem16(&vm, DATA_SEG, IMAGE_AT + 2 * i);
    assert_eq!(w(0), 0x0F40, "control word");
    assert_eq!(w(1), SW_AFTER_LOADS, "status word");
    assert_eq!(w(2), TW_AFTER_LOADS, "tag word");
    assert_eq!(w(3), fip as u16, "FIP 15..0");
    assert_eq!(
        w(4),
        ((fip >> 16) as u16) << 12 | FLD_M80_DISP16_FOP,
        "FIP 19..16, FOP"
    );
    assert_eq!(w(5), fdp as u16, "FDP 15..0");
    assert_eq!(w(6), ((fdp >> 16) as u16) << 12, "FDP 19..16");
    assert_eq!(
        mem16(&vm, DATA_SEG, AFTER_AT),
        0x0F7F,
        "FNSTENV masks every exception"
    );
}

#[test]
fn fnstenv_32bit_real_mode_matches_figure_8_10() {
    // Arrange and act
    let (vm, ip) = run_env_program(Code::Fnstenv_m28byte, false);

    // Assert
    let fip = phys(CODE_SEG, ip) as u32;
    let fdp = phys(DATA_SEG, INF_AT) as u32;
    let d = |i: u16| mem32(&vm, DATA_SEG, IMAGE_AT + 4 * i);
    assert_eq!(d(0) & 0xFFFF, 0x0F40, "control word");
    assert_eq!(d(1) & 0xFFFF, u32::from(SW_AFTER_LOADS), "status word");
    assert_eq!(d(2) & 0xFFFF, u32::from(TW_AFTER_LOADS), "tag word");
    assert_eq!(d(3) & 0xFFFF, fip & 0xFFFF, "FIP 15..0");
    assert_eq!(
        d(4),
        (fip >> 16) << 12 | u32::from(FLD_M80_DISP16_FOP),
        "FIP 31..16, FOP"
    );
    assert_eq!(d(5) & 0xFFFF, fdp & 0xFFFF, "FDP 15..0");
    assert_eq!(d(6), (fdp >> 16) << 12, "FDP 31..16");
    assert_eq!(
        mem16(&vm, DATA_SEG, AFTER_AT),
        0x0F7F,
        "FNSTENV masks every exception"
    );
}

#[test]
fn fnstenv_32bit_protected_mode_matches_figure_8_9() {
    // Arrange and act: CS selector 08h, DS selector 10h.
    let (vm, ip) = run_env_program(Code::Fnstenv_m28byte, true);

    // Assert
    let d = |i: u16| mem32(&vm, DATA_SEG, IMAGE_AT + 4 * i);
    assert_eq!(d(0) & 0xFFFF, 0x0F40, "control word");
    assert_eq!(d(1) & 0xFFFF, u32::from(SW_AFTER_LOADS), "status word");
    assert_eq!(d(2) & 0xFFFF, u32::from(TW_AFTER_LOADS), "tag word");
    assert_eq!(d(3), u32::from(ip), "FIP offset");
    assert_eq!(
        d(4),
        u32::from(FLD_M80_DISP16_FOP) << 16 | 0x0008,
        "FOP, FCS"
    );
    assert_eq!(d(5), u32::from(INF_AT), "FDP offset");
    assert_eq!(d(6) & 0xFFFF, 0x0010, "FDS");
}

#[test]
fn fnstenv_16bit_protected_mode_matches_figure_8_11() {
    // Arrange and act
    let (vm, ip) = run_env_program(Code::Fnstenv_m14byte, true);

    // Assert: no FOP in this format.
    let w = |i: u16| mem16(&vm, DATA_SEG, IMAGE_AT + 2 * i);
    assert_eq!(
        [w(0), w(1), w(2), w(3), w(4), w(5), w(6)],
        [
            0x0F40,
            SW_AFTER_LOADS,
            TW_AFTER_LOADS,
            ip,
            0x0008,
            INF_AT,
            0x0010
        ]
    );
}

/// The registers of an FNSAVE image after the common prologue: ST(0) = +inf,
/// ST(1) = 0, ST(2) = 1.0, ST(3)-ST(7) = R0-R4, +0 since power-on (FNINIT keeps
/// register contents).
fn saved_registers_after_loads() -> Vec<u8> {
    let mut v = INF.to_vec();
    v.extend_from_slice(&[0; 10]);
    v.extend_from_slice(&ONE);
    v.extend_from_slice(&[0; 50]);
    v
}

#[test]
fn fnsave_94byte_real_mode_stores_env_then_registers_and_reinitializes() {
    // Arrange and act
    let (vm, ip) = run_env_program(Code::Fnsave_m94byte, false);

    // Assert: the 14-byte environment, ST(0)..ST(7) at 14, then FNINIT state.
    let fip = phys(CODE_SEG, ip);
    assert_eq!(mem16(&vm, DATA_SEG, IMAGE_AT + 4), TW_AFTER_LOADS);
    assert_eq!(mem16(&vm, DATA_SEG, IMAGE_AT + 6), fip as u16);
    assert_eq!(
        bytes(&vm, DATA_SEG, IMAGE_AT + 14, 80),
        saved_registers_after_loads()
    );
    assert_eq!(
        mem16(&vm, DATA_SEG, AFTER_AT),
        0x037F,
        "control word after FNSAVE"
    );
    assert_eq!(
        mem16(&vm, DATA_SEG, AFTER_AT + 2),
        0x0000,
        "status word after FNSAVE"
    );
}

#[test]
fn fnsave_108byte_real_and_protected_modes_store_registers_at_28() {
    for protected in [false, true] {
        // Arrange and act
        let (vm, ip) = run_env_program(Code::Fnsave_m108byte, protected);

        // Assert
        let fip = if protected {
            u32::from(ip)
        } else {
            phys(CODE_SEG, ip) as u32 & 0xFFFF
        };
        assert_eq!(mem16(&vm, DATA_SEG, IMAGE_AT), 0x0F40, "pm {protected}");
        assert_eq!(
            mem16(&vm, DATA_SEG, IMAGE_AT + 8),
            TW_AFTER_LOADS,
            "pm {protected}"
        );
        assert_eq!(
            mem32(&vm, DATA_SEG, IMAGE_AT + 12) & 0xFFFF,
            fip,
            "pm {protected}"
        );
        assert_eq!(
            bytes(&vm, DATA_SEG, IMAGE_AT + 28, 80),
            saved_registers_after_loads(),
            "pm {protected}"
        );
        assert_eq!(mem16(&vm, DATA_SEG, AFTER_AT), 0x037F, "pm {protected}");
        assert_eq!(mem16(&vm, DATA_SEG, AFTER_AT + 2), 0x0000, "pm {protected}");
    }
}

#[test]
fn frstor_tag_word_only_empty_is_kept_rest_recomputed_from_contents() {
    // Arrange: a 94-byte image whose tag word claims every register valid except
    // R1 (empty), TOP = 3, over registers of every class (SDM vol. 1 §8.1.7: a
    // loaded tag only says empty or not).
    let regs = [
        ONE,                                       // ST0 = R3: valid 00
        [0; 10],                                   // ST1 = R4: zero 01
        f80(false, 0, 0x1234),                     // ST2 = R5: denormal 10
        INF,                                       // ST3 = R6: special 10
        f80(true, 0x7FFF, 0xC000_0000_0000_0001),  // ST4 = R7: QNaN 10
        f80(false, 0x3FFF, 0x4000_0000_0000_0000), // ST5 = R0: unnormal 10
        ONE,                                       // ST6 = R1: tagged empty 11
        f80(false, 0, 0x8000_0000_0000_0001),      // ST7 = R2: pseudo-denormal 10
    ];
    let mut image = vec![0u8; 94];
    image[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
    image[2..4].copy_from_slice(&(3u16 << 11).to_le_bytes());
    image[4..6].copy_from_slice(&0x000Cu16.to_le_bytes());
    for (i, r) in regs.iter().enumerate() {
        image[14 + 10 * i..24 + 10 * i].copy_from_slice(r);
    }
    let code = asm16(|a| {
        a.frstor(ptr(IMAGE_AT))?;
        a.fnstenv(ptr(AFTER_AT))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, IMAGE_AT, &image);

    // Act
    run_to_halt(&mut vm);

    // Assert: R7..R0 = 10 10 10 01 00 10 11 10.
    assert_eq!(mem16(&vm, DATA_SEG, AFTER_AT + 4), 0xA92E);
    assert_eq!(mem16(&vm, DATA_SEG, AFTER_AT + 2), 3 << 11);
}

#[test]
fn fxsave_x87_area_matches_table_3_53() {
    // Arrange: FXSAVE to a 16-byte aligned area after the common prologue.
    let (program, [fld_ip]) = assemble(|a, _| {
        let mut fld = a.create_label();
        a.fninit()?;
        a.fldcw(word_ptr(CW_AT))?;
        a.fld1()?;
        a.fldz()?;
        a.set_label(&mut fld)?;
        a.fld(tword_ptr(INF_AT))?;
        a.fxsave(ptr(0x400))?;
        a.hlt()?;
        Ok([fld])
    });
    let mut vm = flat_vm(&program);
    load(&mut vm, DATA_SEG, CW_AT, &0x0F40u16.to_le_bytes());
    load(&mut vm, DATA_SEG, INF_AT, &INF);

    // Act
    run_to_halt(&mut vm);

    // Assert: FCW, FSW, abridged FTW (bit p = R(p) not empty), FOP, FIP, FCS,
    // FDP, FDS, then ST(i) in 16-byte slots from offset 32.
    let area = bytes(&vm, DATA_SEG, 0x400, 160);
    let w = |at: usize| u16::from_le_bytes([area[at], area[at + 1]]);
    let d = |at: usize| u32::from_le_bytes(area[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(w(0), 0x0F40, "FCW");
    assert_eq!(w(2), SW_AFTER_LOADS, "FSW");
    assert_eq!(area[4], 0b1110_0000, "abridged tag: R5, R6, R7");
    assert_eq!(w(6), FLD_M80_DISP16_FOP, "FOP");
    assert_eq!(d(8), u32::from(fld_ip), "FIP");
    assert_eq!(w(12), CODE_SEG, "FCS");
    assert_eq!(d(16), u32::from(INF_AT), "FDP");
    assert_eq!(w(20), DATA_SEG, "FDS");
    // MXCSR at power-on is 1F80h (SDM vol. 3A Table 9-1); MXCSR_MASK FFFFh,
    // the value of a processor with DAZ (SDM vol. 1 §11.6.6).
    assert_eq!(d(24), 0x1F80, "MXCSR");
    assert_eq!(d(28), 0xFFFF, "MXCSR_MASK");
    assert_eq!(&area[32..42], &INF, "ST(0)");
    assert_eq!(&area[48..58], &[0; 10], "ST(1)");
    assert_eq!(&area[64..74], &ONE, "ST(2)");
}

// ================================================================================
// #NM, #MF and FERR# (SDM vol. 3A §2.5 Table 2-2, vol. 1 §8.7, appendix D)
// ================================================================================

/// Points IVT entry `vector` at CODE_SEG:`ip`.
fn hook(vm: &mut Vm, vector: u8, ip: u16) {
    let mut entry = ip.to_le_bytes().to_vec();
    entry.extend_from_slice(&CODE_SEG.to_le_bytes());
    load(vm, 0, u16::from(vector) * 4, &entry);
}

#[test]
fn fld_with_cr0_ts_raises_nm_and_changes_nothing() {
    // Arrange
    let (code, [at]) = assemble(|a, _| {
        let mut fld = a.create_label();
        a.fninit()?;
        set_cr0(a, CR0_TS)?;
        a.set_label(&mut fld)?;
        a.fld1()?;
        a.hlt()?;
        Ok([fld])
    });
    let mut vm = flat_vm(&code);

    // Act
    let (vector, ip) = run_to_exception(&mut vm);

    // Assert
    assert_eq!((vector, ip), (NM, at));
    assert_eq!((vm.cpu.fpu.status(), vm.cpu.fpu.tw), (0, 0xFFFF));
}

#[test]
fn fninit_with_cr0_em_raises_nm() {
    // Arrange: EM faults every escape, the non-waiting ones included.
    let (code, [at]) = assemble(|a, _| {
        let mut fninit = a.create_label();
        set_cr0(a, CR0_EM)?;
        a.set_label(&mut fninit)?;
        a.fninit()?;
        a.hlt()?;
        Ok([fninit])
    });
    let mut vm = flat_vm(&code);

    // Act
    let (vector, ip) = run_to_exception(&mut vm);

    // Assert
    assert_eq!((vector, ip), (NM, at));
}

#[test]
fn fwait_raises_nm_only_with_mp_and_ts_both_set() {
    for (bits, faults) in [
        (CR0_MP | CR0_TS, true),
        (CR0_TS, false),
        (CR0_EM, false),
        (CR0_MP | CR0_EM, false),
    ] {
        // Arrange
        let (code, [at]) = assemble(|a, _| {
            let mut wait = a.create_label();
            set_cr0(a, bits)?;
            a.set_label(&mut wait)?;
            a.wait()?;
            a.hlt()?;
            Ok([wait])
        });
        let mut vm = flat_vm(&code);

        // Act and assert
        if faults {
            assert_eq!(run_to_exception(&mut vm), (NM, at), "cr0 bits {bits:#x}");
        } else {
            run_to_halt(&mut vm);
        }
    }
}

#[test]
fn nm_handler_clearing_ts_restarts_the_faulting_fld() {
    // Arrange: the #NM handler does CLTS and IRET, as a lazy-switching OS does.
    let (code, [handler]) = assemble(|a, _| {
        let mut handler = a.create_label();
        a.fninit()?;
        set_cr0(a, CR0_TS | CR0_MP)?;
        a.fld1()?;
        a.fnstsw(word_ptr(0))?;
        a.hlt()?;
        a.set_label(&mut handler)?;
        a.clts()?;
        a.iret()?;
        Ok([handler])
    });
    let mut vm = flat_vm(&code);
    hook(&mut vm, NM, handler);

    // Act
    run_to_halt(&mut vm);

    // Assert: FLD1 ran once, after the handler.
    assert_eq!(mem16(&vm, DATA_SEG, 0), 7 << 11);
}

/// FNINIT, unmask ZE (control word 037Bh), 1 / 0 with FDIVP, FNSTSW to DS:0, then
/// `next` at the returned label. CR0.NE is set first when `ne`.
fn divide_by_zero_then(ne: bool, next: fn(&mut CodeAssembler) -> AsmResult) -> (Vm, u16) {
    let (code, [at]) = assemble(|a, _| {
        let mut after = a.create_label();
        if ne {
            set_cr0(a, CR0_NE)?;
        }
        a.fninit()?;
        a.fldcw(word_ptr(CW_AT))?;
        a.fld1()?;
        a.fldz()?;
        a.fdivp(st1, st0)?;
        a.fnstsw(word_ptr(0))?;
        a.set_label(&mut after)?;
        next(a)?;
        a.fnstsw(word_ptr(2))?;
        a.hlt()?;
        Ok([after])
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, CW_AT, &0x037Bu16.to_le_bytes());
    (vm, at)
}

/// The status word after the unmasked 1 / 0: ZE, ES and B; TOP 6 (no pop).
const SW_PENDING_ZE: u16 = B | ES | ZE | 6 << 11;

#[test]
fn fdivp_by_zero_unmasked_with_cr0_ne_raises_mf_at_next_waiting_insn() {
    for next in [
        (|a: &mut CodeAssembler| a.fld1()) as fn(&mut CodeAssembler) -> AsmResult,
        |a| a.wait(),
        |a| a.fadd_2(st0, st1),
    ] {
        // Arrange
        let (mut vm, at) = divide_by_zero_then(true, next);

        // Act
        let (vector, ip) = run_to_exception(&mut vm);

        // Assert: FNSTSW (no wait) ran; the next waiting instruction faulted before
        // doing anything, and the suppressed quotient left the stack as it was.
        assert_eq!((vector, ip), (MF, at));
        assert_eq!(mem16(&vm, DATA_SEG, 0), SW_PENDING_ZE);
        assert_eq!(vm.cpu.fpu.status(), SW_PENDING_ZE);
    }
}

#[test]
fn mf_handler_with_fnclex_lets_the_faulting_insn_complete() {
    // Arrange
    let (code, [handler]) = assemble(|a, _| {
        let mut handler = a.create_label();
        set_cr0(a, CR0_NE)?;
        a.fninit()?;
        a.fldcw(word_ptr(CW_AT))?;
        a.fld1()?;
        a.fldz()?;
        a.fdivp(st1, st0)?;
        a.fld1()?;
        a.fnstsw(word_ptr(0))?;
        a.hlt()?;
        a.set_label(&mut handler)?;
        a.fnclex()?;
        a.iret()?;
        Ok([handler])
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, CW_AT, &0x037Bu16.to_le_bytes());
    hook(&mut vm, MF, handler);

    // Act
    run_to_halt(&mut vm);

    // Assert: flags cleared by the handler, FLD1 pushed once.
    assert_eq!(mem16(&vm, DATA_SEG, 0), 5 << 11);
}

#[test]
fn fdivp_by_zero_unmasked_without_cr0_ne_asserts_ferr_and_continues() {
    // Arrange: CR0.NE clear: the DOS-compatible FERR# path (SDM vol. 1 §8.7, D.1).
    let (mut vm, _) = divide_by_zero_then(false, |a| a.fld1());

    // Act
    run_to_halt(&mut vm);

    // Assert: no #MF; FERR# is latched; the FLD1 still ran.
    assert_eq!(mem16(&vm, DATA_SEG, 0), SW_PENDING_ZE);
    assert!(x86bt_cpu::fpu::ferr(&vm.cpu.fpu));
    assert_eq!(mem16(&vm, DATA_SEG, 2), B | ES | ZE | 5 << 11);
}

#[test]
fn ferr_reaches_irq13_and_port_f0_clears_it() {
    // Arrange: the PC/AT DOS-compatible path (SDM vol. 1 appendix D.2.1): CR0.NE
    // clear, PICs at 08h/70h with only IRQ 2 and IRQ 13 unmasked, IF set. The
    // IRQ 13 handler (vector 75h) clears the x87 exception, writes port F0h,
    // sends EOI to both PICs and counts its runs at DS:6.
    let (code, [handler]) = assemble(|a, _| {
        let mut handler = a.create_label();
        for (port, value) in [
            (0x20, 0x11),
            (0xA0, 0x11),
            (0x21, 0x08),
            (0xA1, 0x70),
            (0x21, 0x04),
            (0xA1, 0x02),
            (0x21, 0x01),
            (0xA1, 0x01),
            (0x21, 0xFB),
            (0xA1, 0xDF),
        ] {
            a.mov(al, value)?;
            a.out(port, al)?;
        }
        a.sti()?;
        a.fninit()?;
        a.fldcw(word_ptr(CW_AT))?;
        a.fld1()?;
        a.fldz()?;
        a.fdivp(st1, st0)?;
        a.fld1()?; // waiting: asserts FERR#
                   // Interrupts are taken at unit boundaries; the jump ends this unit.
        let mut next = a.create_label();
        a.jmp(next)?;
        a.set_label(&mut next)?;
        a.nop()?;
        a.cli()?;
        a.hlt()?;
        a.set_label(&mut handler)?;
        a.fnclex()?;
        a.mov(al, 0)?;
        a.out(0xF0, al)?;
        a.mov(al, 0x20)?;
        a.out(0xA0, al)?;
        a.out(0x20, al)?;
        a.inc(word_ptr(6))?;
        a.iret()?;
        Ok([handler])
    });
    let mut vm = pc_vm(&code);
    load(&mut vm, DATA_SEG, CW_AT, &0x037Bu16.to_le_bytes());
    hook(&mut vm, 0x75, handler);

    // Act
    run_to_halt(&mut vm);

    // Assert: one IRQ 13, FERR# and the latch cleared, the exception cleared.
    assert_eq!(mem16(&vm, DATA_SEG, 6), 1, "IRQ 13 handler runs");
    assert_eq!(
        vm.machine.irq.levels() & (1 << 13),
        0,
        "port F0h lowers IRQ 13"
    );
    assert!(!x86bt_cpu::fpu::ferr(&vm.cpu.fpu));
    assert_eq!(vm.cpu.fpu.status() & ES, 0);
}

#[test]
fn fnclex_after_ferr_drops_it() {
    // Arrange
    let (mut vm, _) = divide_by_zero_then(false, |a| {
        a.wait()?;
        a.fnclex()
    });

    // Act
    run_to_halt(&mut vm);

    // Assert
    assert!(!x86bt_cpu::fpu::ferr(&vm.cpu.fpu));
    assert_eq!(mem16(&vm, DATA_SEG, 2), 6 << 11);
}

#[test]
fn fldcw_unmasking_a_raised_flag_makes_next_waiting_insn_raise_mf() {
    // Arrange: a masked 1 / 0 sets ZE; FLDCW 037Bh then unmasks it (SDM vol. 2A
    // FLDCW: the exception is generated at the next waiting instruction).
    let (code, [at]) = assemble(|a, _| {
        let mut after = a.create_label();
        set_cr0(a, CR0_NE)?;
        a.fninit()?;
        a.fld1()?;
        a.fldz()?;
        a.fdivp(st1, st0)?;
        a.fldcw(word_ptr(CW_AT))?;
        a.fnstsw(word_ptr(0))?;
        a.set_label(&mut after)?;
        a.fld1()?;
        a.hlt()?;
        Ok([after])
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, CW_AT, &0x037Bu16.to_le_bytes());

    // Act
    let (vector, ip) = run_to_exception(&mut vm);

    // Assert: the masked quotient (+inf) was stored and popped: TOP 7.
    assert_eq!((vector, ip), (MF, at));
    assert_eq!(mem16(&vm, DATA_SEG, 0), B | ES | ZE | 7 << 11);
}

#[test]
fn fxsave_with_cr0_ts_raises_nm_and_misaligned_raises_gp() {
    for (bits, offset, want) in [(CR0_TS, 0x400u16, NM), (0, 0x408, 13)] {
        // Arrange
        let (code, [at]) = assemble(|a, _| {
            let mut fx = a.create_label();
            set_cr0(a, bits)?;
            a.set_label(&mut fx)?;
            a.fxsave(ptr(offset))?;
            a.hlt()?;
            Ok([fx])
        });
        let mut vm = flat_vm(&code);

        // Act and assert
        assert_eq!(run_to_exception(&mut vm), (want, at), "offset {offset:#x}");
    }
}

// ================================================================================
// Stack faults and BCD (SDM vol. 1 §8.5.1.1, vol. 2A FBLD/FBSTP)
// ================================================================================

#[test]
fn ninth_push_sets_ie_sf_c1_and_loads_the_indefinite() {
    // Arrange
    let code = asm16(|a| {
        a.fninit()?;
        for _ in 0..9 {
            a.fld1()?;
        }
        a.fnstsw(word_ptr(0))?;
        a.fstp(tword_ptr(0x10))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);

    // Act
    run_to_halt(&mut vm);

    // Assert: C1 = 1 means overflow; TOP 7 after the masked push.
    assert_eq!(mem16(&vm, DATA_SEG, 0), 7 << 11 | C1 | SF | IE);
    assert_eq!(bytes(&vm, DATA_SEG, 0x10, 10), INDEFINITE);
}

#[test]
fn fsqrt_of_empty_st0_sets_ie_sf_clears_c1() {
    // Arrange: 1 / 3 rounds up (C1 = 1); then ST(0) is freed and used.
    let code = asm16(|a| {
        a.fninit()?;
        a.fld1()?;
        a.fild(word_ptr(0x20))?;
        a.fdivp(st1, st0)?;
        a.fnstsw(word_ptr(0))?;
        a.ffree(st0)?;
        a.fsqrt()?;
        a.fnstsw(word_ptr(2))?;
        a.fstp(tword_ptr(0x10))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0x20, &3u16.to_le_bytes());

    // Act
    run_to_halt(&mut vm);

    // Assert: C1 = 0 means underflow; the masked result is the indefinite.
    assert_eq!(mem16(&vm, DATA_SEG, 0), 7 << 11 | C1 | PE);
    assert_eq!(mem16(&vm, DATA_SEG, 2), 7 << 11 | PE | SF | IE);
    assert_eq!(bytes(&vm, DATA_SEG, 0x10, 10), INDEFINITE);
}

#[test]
fn fbld_then_fistp_and_fbstp_round_trip_18_digits() {
    // Arrange: -123456789012345678 in packed BCD (least significant byte first),
    // and -1234.5, which FBSTP rounds to even under RC = nearest.
    let mut bcd = [0x78u8, 0x56, 0x34, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x80];
    let code = asm16(|a| {
        a.fninit()?;
        a.fbld(tword_ptr(0))?;
        a.fld(st0)?;
        a.fistp(qword_ptr(0x10))?;
        a.fbstp(tword_ptr(0x20))?;
        a.fld(tword_ptr(0x40))?;
        a.fbstp(tword_ptr(0x30))?;
        a.fnstsw(word_ptr(0x50))?;
        a.hlt()
    });
    let mut vm = flat_vm(&code);
    load(&mut vm, DATA_SEG, 0, &bcd);
    load(
        &mut vm,
        DATA_SEG,
        0x40,
        &f80(true, 0x4009, 0x9A50_0000_0000_0000),
    );

    // Act
    run_to_halt(&mut vm);

    // Assert
    let int = u64::from_le_bytes(bytes(&vm, DATA_SEG, 0x10, 8).try_into().expect("8 bytes"));
    assert_eq!(int as i64, -123_456_789_012_345_678);
    assert_eq!(bytes(&vm, DATA_SEG, 0x20, 10), bcd);
    bcd = [0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0x80];
    assert_eq!(bytes(&vm, DATA_SEG, 0x30, 10), bcd);
    assert_eq!(
        mem16(&vm, DATA_SEG, 0x50),
        PE,
        "inexact, rounded down: C1 = 0"
    );
}

// ================================================================================
// Differential tests against the host's x87
// ================================================================================

#[cfg(target_arch = "x86_64")]
mod native {
    use super::*;

    // Record layout, shared by the guest loop and the host template (whose
    // displacements are literals and must match these).
    const R_A: usize = 0;
    const R_B: usize = 10;
    const R_CW: usize = 20;
    const R_SW: usize = 22;
    const R_MASK_ALL: usize = 24;
    /// CF, ZF, PF, OF, SF as 0/1 bytes (SETcc) for the FCOMI family.
    const R_FLAGS: usize = 26;
    /// ST(0), ST(1), ST(2) after the instruction, stored with FSTP m80.
    const R_ST: usize = 32;
    /// Where a store instruction writes (16 bytes).
    const R_MEM: usize = 62;
    const REC: usize = 80;
    const _: () = assert!(R_MEM + 16 <= REC && R_ST + 30 == R_MEM);
    /// Records per guest run (the records fill DS from offset 0).
    const BATCH: usize = 800;

    type Rec = [u8; REC];
    type GuestOp = fn(&mut CodeAssembler) -> AsmResult;

    /// One instruction (or short sequence) under test, for the guest and the host.
    struct Op {
        name: &'static str,
        host: fn(&mut Rec),
        guest: GuestOp,
    }

    /// `op!(name, "host Intel-syntax text with {r} = record", |a| guest)`. The host
    /// text goes into the record template between the two loads and FNSTSW.
    macro_rules! op {
        ($name:literal, $host:literal, $guest:expr) => {
            Op {
                name: $name,
                host: {
                    fn host(rec: &mut Rec) {
                        let r = rec.as_mut_ptr();
                        // SAFETY: `r` points to a live, writable REC-byte record and the
                        // template only addresses bytes 0..REC of it. The x87 registers
                        // are declared clobbered and RFLAGS may change (no
                        // preserves_flags); the closing FNINIT leaves the x87 empty with
                        // control word 037Fh, as the SysV ABI requires at a call
                        // boundary. Unmasked exceptions are cleared by FNCLEX before the
                        // next waiting instruction, so no #MF (SIGFPE) can be raised.
                        unsafe {
                            core::arch::asm!(
                                "fninit",
                                "fldcw word ptr [{r} + 20]",
                                "fld tbyte ptr [{r} + 10]",
                                "fld tbyte ptr [{r}]",
                                $host,
                                "fnstsw word ptr [{r} + 22]",
                                "fnclex",
                                "fldcw word ptr [{r} + 24]",
                                "fstp tbyte ptr [{r} + 32]",
                                "fstp tbyte ptr [{r} + 42]",
                                "fstp tbyte ptr [{r} + 52]",
                                "fninit",
                                r = in(reg) r,
                                out("st(0)") _,
                                out("st(1)") _,
                                out("st(2)") _,
                                out("st(3)") _,
                                out("st(4)") _,
                                out("st(5)") _,
                                out("st(6)") _,
                                out("st(7)") _,
                                options(nostack),
                            );
                        }
                    }
                    host
                },
                guest: $guest,
            }
        };
    }

    /// The guest side of the record template, looping over `count` records at DS:0.
    fn case_loop(a: &mut CodeAssembler, op: GuestOp, count: u16) -> AsmResult {
        let at = |off: usize| si + off as i32;
        let mut next = a.create_label();
        a.xor(si, si)?;
        a.mov(bp, u32::from(count))?;
        a.set_label(&mut next)?;
        a.fninit()?;
        a.fldcw(word_ptr(at(R_CW)))?;
        a.fld(tword_ptr(at(R_B)))?;
        a.fld(tword_ptr(at(R_A)))?;
        op(a)?;
        a.fnstsw(word_ptr(at(R_SW)))?;
        a.fnclex()?;
        a.fldcw(word_ptr(at(R_MASK_ALL)))?;
        for i in 0..3 {
            a.fstp(tword_ptr(at(R_ST + 10 * i)))?;
        }
        a.add(si, REC as i32)?;
        a.dec(bp)?;
        a.jnz(next)?;
        a.hlt()
    }

    fn run_guest(op: &Op, recs: &[Rec]) -> Vec<Rec> {
        let mut out = Vec::with_capacity(recs.len());
        for batch in recs.chunks(BATCH) {
            let code = asm16(|a| case_loop(a, op.guest, batch.len() as u16));
            let mut vm = flat_vm(&code);
            let image: Vec<u8> = batch.iter().flatten().copied().collect();
            load(&mut vm, DATA_SEG, 0, &image);
            run_to_halt(&mut vm);
            let back = bytes(&vm, DATA_SEG, 0, image.len());
            out.extend(
                back.chunks_exact(REC)
                    .map(|c| Rec::try_from(c).expect("whole record")),
            );
        }
        out
    }

    fn run_host(op: &Op, recs: &[Rec]) -> Vec<Rec> {
        recs.iter()
            .map(|r| {
                let mut r = *r;
                (op.host)(&mut r);
                r
            })
            .collect()
    }

    fn hex80(b: &[u8]) -> String {
        format!(
            "{:04x}:{:016x}",
            u16::from_le_bytes([b[8], b[9]]),
            u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
        )
    }

    fn sw_of(r: &Rec) -> u16 {
        u16::from_le_bytes([r[R_SW], r[R_SW + 1]])
    }

    fn st_of(r: &Rec, i: usize) -> &[u8] {
        &r[R_ST + 10 * i..R_ST + 10 * i + 10]
    }

    fn describe(r: &Rec) -> String {
        format!(
            "sw {:04x} flags {:?} st {} {} {} mem {:02x?}",
            sw_of(r),
            &r[R_FLAGS..R_FLAGS + 5],
            hex80(st_of(r, 0)),
            hex80(st_of(r, 1)),
            hex80(st_of(r, 2)),
            &r[R_MEM..R_MEM + 10]
        )
    }

    /// Runs `op` on the guest and on the host over `recs` and checks every record
    /// with `same(guest, host)`.
    fn check_with(op: &Op, recs: &[Rec], same: impl Fn(&Rec, &Rec) -> bool) {
        let got = run_guest(op, recs);
        let want = run_host(op, recs);
        let bad: Vec<_> = recs
            .iter()
            .zip(got.iter().zip(&want))
            .filter(|(_, (g, w))| !same(g, w))
            .collect();
        // Report each distinct operand pair once (its first control word).
        let mut seen = std::collections::HashSet::new();
        let firsts = bad.iter().filter(|(i, _)| seen.insert(&i[..R_CW]));
        let diffs: Vec<String> = firsts
            .map(|(i, (g, w))| {
                format!(
                    "  a {} b {} cw {:04x}\n    x86bt {}\n    host  {}",
                    hex80(&i[R_A..R_A + 10]),
                    hex80(&i[R_B..R_B + 10]),
                    u16::from_le_bytes([i[R_CW], i[R_CW + 1]]),
                    describe(g),
                    describe(w)
                )
            })
            .collect();
        let shown = std::env::var("X87_DIFFS").map_or(6, |v| v.parse().unwrap_or(6));
        assert!(
            bad.is_empty(),
            "{}: {} of {} cases differ; first ones:\n{}",
            op.name,
            bad.len(),
            recs.len(),
            diffs[..diffs.len().min(shown)].join("\n")
        );
    }

    /// Bit-exact comparison of everything the template recorded.
    fn check(op: &Op, recs: &[Rec]) {
        check_with(op, recs, |g, w| g == w);
    }

    fn check_all(ops: &[Op], recs: &[Rec]) {
        for op in ops {
            check(op, recs);
        }
    }

    // ----------------------------------------------------------------------------
    // Control words and records
    // ----------------------------------------------------------------------------

    /// PC 24/53/64 × RC nearest/down/up/zero, all exceptions masked, then unmasked.
    fn every_pc_rc() -> Vec<u16> {
        let mut v = Vec::new();
        for masks in [0x3F, 0x00] {
            for pc in [0u16, 2, 3] {
                for rc in 0..4u16 {
                    v.push(masks | 0x40 | pc << 8 | rc << 10);
                }
            }
        }
        v
    }

    /// RC × masked/unmasked at PC 64 (for instructions PC does not affect).
    fn every_rc() -> Vec<u16> {
        let mut v = Vec::new();
        for masks in [0x3F, 0x00] {
            for rc in 0..4u16 {
                v.push(masks | 0x340 | rc << 10);
            }
        }
        v
    }

    fn records(pairs: &[([u8; 10], [u8; 10])], cws: &[u16]) -> Vec<Rec> {
        let mut v = Vec::with_capacity(pairs.len() * cws.len());
        for (a, b) in pairs {
            for cw in cws {
                let mut r = [0u8; REC];
                r[R_A..R_A + 10].copy_from_slice(a);
                r[R_B..R_B + 10].copy_from_slice(b);
                r[R_CW..R_CW + 2].copy_from_slice(&cw.to_le_bytes());
                r[R_MASK_ALL..R_MASK_ALL + 2].copy_from_slice(&0x037Fu16.to_le_bytes());
                v.push(r);
            }
        }
        v
    }

    // ----------------------------------------------------------------------------
    // Seeded operands
    // ----------------------------------------------------------------------------

    /// SplitMix64: deterministic operands.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bit(&mut self) -> bool {
            self.next() & 1 != 0
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len() as u64) as usize]
        }
        /// A biased exponent within `spread` of `center`.
        fn exp_near(&mut self, center: i32, spread: i32) -> u16 {
            (center + self.below(2 * spread as u64 + 1) as i32 - spread).clamp(1, 0x7FFE) as u16
        }
    }

    /// `mant × 2^e2` (rounded toward zero to 64 bits), as an 80-bit value.
    fn from_parts(neg: bool, mant: u128, e2: i32) -> [u8; 10] {
        if mant == 0 {
            return f80(neg, 0, 0);
        }
        let lz = mant.leading_zeros() as i32;
        let sig = ((mant << lz) >> 64) as u64;
        let exp = 16383 + 63 + 64 - lz + e2;
        f80(neg, exp.clamp(1, 0x7FFE) as u16, sig)
    }

    /// A significand whose bits below precision 24, 53 or 64 sit at or next to a
    /// rounding boundary (half, half ± 1 ulp, all ones, lowest bit, none).
    fn boundary_sig(g: &mut Rng) -> u64 {
        let p = g.pick(&[24u32, 53, 64]);
        let top = g.next() | 1 << 63;
        if p == 64 {
            return top;
        }
        let low = 64 - p;
        let half = 1u64 << (low - 1);
        let tail = match g.below(6) {
            0 => half,
            1 => half - 1,
            2 => half + 1,
            3 => 1,
            4 => (1 << low) - 1,
            _ => 0,
        };
        (top & !((1u64 << low) - 1)) | tail
    }

    /// A normal value with a short significand (products stay near-exact).
    fn short(g: &mut Rng) -> [u8; 10] {
        let bits = g.pick(&[3u32, 12, 24, 32]);
        let sig = (g.next() | 1 << 63) & !(u64::MAX >> bits);
        f80(g.bit(), g.exp_near(0x3FFF, 20), sig)
    }

    /// Any 80-bit operand, specials included.
    fn any(g: &mut Rng) -> [u8; 10] {
        let neg = g.bit();
        match g.below(26) {
            0 => f80(neg, 0, 0),
            1 => f80(neg, 0x7FFF, 1 << 63),
            2 => f80(
                neg,
                0x7FFF,
                0xC000_0000_0000_0000 | g.next() >> g.below(64).max(2),
            ),
            3 => f80(neg, 0x7FFF, 1 << 63 | (g.next() >> 2).max(1)),
            4 => f80(neg, 0, (g.next() >> (1 + g.below(62))).max(1)),
            5 => f80(neg, 1 + g.below(70) as u16, g.next() | 1 << 63),
            6 => f80(neg, 0x7FFE - g.below(70) as u16, g.next() | 1 << 63),
            7 => g.pick(&[
                f80(neg, 0x7FFE, u64::MAX),
                f80(neg, 1, 1 << 63),
                f80(neg, 0, u64::MAX >> 1),
                INDEFINITE,
            ]),
            // Unsupported (unnormal) and pseudo-denormal encodings.
            8 if g.below(3) == 0 => f80(neg, g.exp_near(0x3FFF, 30), g.next() >> 1),
            8 => f80(neg, 0, g.next() | 1 << 63),
            9..=12 => f80(neg, g.exp_near(0x3FFF, 70), boundary_sig(g)),
            13 | 14 => from_parts(neg, u128::from(g.below(1000)), -(g.below(3) as i32)),
            15 | 16 => short(g),
            _ => f80(neg, g.exp_near(0x3FFF, 40), g.next() | 1 << 63),
        }
    }

    fn normal(g: &mut Rng) -> (bool, u16, u64) {
        (g.bit(), g.exp_near(0x3FFF, 60), g.next() | 1 << 63)
    }

    /// Operand pairs for the two-operand arithmetic: random, rounding boundaries of
    /// sums, equal magnitudes, and exponents that overflow or underflow together.
    fn arith_pairs(seed: u64, n: usize) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        (0..n)
            .map(|_| match g.below(9) {
                0..=2 => (any(&mut g), any(&mut g)),
                3 => {
                    let (neg, e, s) = normal(&mut g);
                    let d = i32::from(g.pick(&[24u16, 53, 64])) + g.below(5) as i32 - 2;
                    let eb = (i32::from(e) - d).max(1) as u16;
                    let sb = if g.bit() {
                        1 << 63
                    } else {
                        boundary_sig(&mut g)
                    };
                    (f80(neg, e, s), f80(g.bit(), eb, sb))
                }
                4 => {
                    let a = any(&mut g);
                    let mut b = a;
                    b[9] ^= if g.bit() { 0x80 } else { 0 };
                    (a, b)
                }
                5 | 6 => {
                    let centers = [0x2000, 0x3FFF, 0x5FFE, 40, 0x7FC0];
                    let (ca, cb) = (g.pick(&centers), g.pick(&centers));
                    let (ea, eb) = (g.exp_near(ca, 40), g.exp_near(cb, 40));
                    (
                        f80(g.bit(), ea, boundary_sig(&mut g)),
                        f80(g.bit(), eb, g.next() | 1 << 63),
                    )
                }
                7 => (
                    f80(g.bit(), g.exp_near(0x3FFF, 30), boundary_sig(&mut g)),
                    from_parts(g.bit(), u128::from(g.pick(&[3u8, 5, 7, 10, 1])), 0),
                ),
                _ => (short(&mut g), short(&mut g)),
            })
            .collect()
    }

    /// A single-precision bit pattern of any class.
    fn any_f32(g: &mut Rng) -> u32 {
        let sign = (g.next() as u32) & 0x8000_0000;
        let frac = g.next() as u32 & 0x007F_FFFF;
        sign | match g.below(10) {
            0 => 0,
            1 => 0x7F80_0000,
            2 => 0x7FC0_0000 | frac,
            3 => 0x7F80_0000 | (frac & 0x003F_FFFF).max(1),
            4 => frac.max(1),
            5 => 0x0080_0000 | frac,
            6 => 0x7F7F_FFFF,
            _ => (100 + g.below(55) as u32) << 23 | frac,
        }
    }

    /// A double-precision bit pattern of any class.
    fn any_f64(g: &mut Rng) -> u64 {
        let sign = g.next() & 1 << 63;
        let frac = g.next() & 0x000F_FFFF_FFFF_FFFF;
        sign | match g.below(10) {
            0 => 0,
            1 => 0x7FF0_0000_0000_0000,
            2 => 0x7FF8_0000_0000_0000 | frac,
            3 => 0x7FF0_0000_0000_0000 | (frac & 0x0007_FFFF_FFFF_FFFF).max(1),
            4 => frac.max(1),
            5 => 0x0010_0000_0000_0000 | frac,
            6 => 0x7FEF_FFFF_FFFF_FFFF,
            _ => (990 + g.below(70)) << 52 | frac,
        }
    }

    fn with_low(bytes: &[u8]) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..bytes.len()].copy_from_slice(bytes);
        b
    }

    /// Pairs whose B holds a 32-bit (`width` 4) or 64-bit (8) memory operand.
    fn mem_pairs(seed: u64, n: usize, width: usize) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        (0..n)
            .map(|_| {
                let a = if g.below(3) == 0 {
                    any(&mut g)
                } else {
                    f80(g.bit(), g.exp_near(0x3FFF, 30), boundary_sig(&mut g))
                };
                let b = match width {
                    4 => with_low(&any_f32(&mut g).to_le_bytes()),
                    8 => with_low(&any_f64(&mut g).to_le_bytes()),
                    2 => with_low(&(g.next() as u16).to_le_bytes()),
                    _ => with_low(&(g.next() as u32 >> g.below(32)).to_le_bytes()),
                };
                (a, b)
            })
            .collect()
    }

    /// Operand pairs per sweep: 300, or `X87_PAIRS` for a longer local run.
    fn pair_count() -> usize {
        std::env::var("X87_PAIRS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    }

    // ----------------------------------------------------------------------------
    // Arithmetic
    // ----------------------------------------------------------------------------

    #[test]
    fn fadd_fsub_register_forms_every_pc_rc_and_mask_match_host() {
        // Arrange
        let recs = records(&arith_pairs(1, pair_count()), &every_pc_rc());
        let ops = [
            op!("fadd st,st(1)", "fadd st, st(1)", |a| a.fadd_2(st0, st1)),
            op!("fsub st,st(1)", "fsub st, st(1)", |a| a.fsub_2(st0, st1)),
            op!("fsubr st,st(1)", "fsubr st, st(1)", |a| a.fsubr_2(st0, st1)),
            op!("faddp st(1),st", "faddp st(1), st", |a| a.faddp(st1, st0)),
            op!("fsubrp st(1),st", "fsubrp st(1), st", |a| a
                .fsubrp(st1, st0)),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn fmul_fdiv_register_forms_every_pc_rc_and_mask_match_host() {
        // Arrange
        let recs = records(&arith_pairs(2, pair_count()), &every_pc_rc());
        let ops = [
            op!("fmul st,st(1)", "fmul st, st(1)", |a| a.fmul_2(st0, st1)),
            op!("fdiv st,st(1)", "fdiv st, st(1)", |a| a.fdiv_2(st0, st1)),
            op!("fdivr st,st(1)", "fdivr st, st(1)", |a| a.fdivr_2(st0, st1)),
            op!("fdivp st(1),st", "fdivp st(1), st", |a| a.fdivp(st1, st0)),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn arith_memory_operands_every_pc_rc_and_mask_match_host() {
        // Arrange: m32/m64 operands of every class (denormals raise DE on load).
        let r32 = records(&mem_pairs(3, pair_count(), 4), &every_pc_rc());
        let r64 = records(&mem_pairs(4, pair_count(), 8), &every_pc_rc());
        let ops32 = [
            op!("fadd m32", "fadd dword ptr [{r} + 10]", |a| a
                .fadd(dword_ptr(si + 10))),
            op!("fmul m32", "fmul dword ptr [{r} + 10]", |a| a
                .fmul(dword_ptr(si + 10))),
            op!("fsubr m32", "fsubr dword ptr [{r} + 10]", |a| a
                .fsubr(dword_ptr(si + 10))),
            op!("fdiv m32", "fdiv dword ptr [{r} + 10]", |a| a
                .fdiv(dword_ptr(si + 10))),
        ];
        let ops64 = [
            op!("fsub m64", "fsub qword ptr [{r} + 10]", |a| a
                .fsub(qword_ptr(si + 10))),
            op!("fmul m64", "fmul qword ptr [{r} + 10]", |a| a
                .fmul(qword_ptr(si + 10))),
            op!("fdivr m64", "fdivr qword ptr [{r} + 10]", |a| a
                .fdivr(qword_ptr(si + 10))),
        ];

        // Act and assert
        check_all(&ops32, &r32);
        check_all(&ops64, &r64);
    }

    #[test]
    fn arith_integer_operands_every_pc_rc_and_mask_match_host() {
        // Arrange
        let r16 = records(&mem_pairs(5, pair_count(), 2), &every_pc_rc());
        let r32 = records(&mem_pairs(6, pair_count(), 3), &every_pc_rc());
        let ops16 = [
            op!("fiadd m16", "fiadd word ptr [{r} + 10]", |a| a
                .fiadd(word_ptr(si + 10))),
            op!("fidivr m16", "fidivr word ptr [{r} + 10]", |a| a
                .fidivr(word_ptr(si + 10))),
        ];
        let ops32 = [
            op!("fimul m32", "fimul dword ptr [{r} + 10]", |a| a
                .fimul(dword_ptr(si + 10))),
            op!("fisub m32", "fisub dword ptr [{r} + 10]", |a| a
                .fisub(dword_ptr(si + 10))),
            op!("fidiv m32", "fidiv dword ptr [{r} + 10]", |a| a
                .fidiv(dword_ptr(si + 10))),
        ];

        // Act and assert
        check_all(&ops16, &r16);
        check_all(&ops32, &r32);
    }

    // ----------------------------------------------------------------------------
    // Square root, rounding to integer, scaling, remainders, extraction
    // ----------------------------------------------------------------------------

    /// One operand of any class in A (B is a random normal that stays ST(1)).
    fn unary_pairs(seed: u64, n: usize) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        (0..n)
            .map(|_| {
                let a = match g.below(4) {
                    0 => from_parts(
                        g.bit(),
                        u128::from(g.next()) >> g.below(60),
                        -(g.below(70) as i32),
                    ),
                    _ => any(&mut g),
                };
                (a, short(&mut g))
            })
            .collect()
    }

    #[test]
    fn fsqrt_every_pc_rc_and_mask_matches_host() {
        // Arrange
        let recs = records(&unary_pairs(7, pair_count()), &every_pc_rc());
        let op = op!("fsqrt", "fsqrt", |a| a.fsqrt());

        // Act and assert
        check(&op, &recs);
    }

    #[test]
    fn frndint_every_rc_and_mask_matches_host() {
        // Arrange: PC does not apply to FRNDINT; run it anyway.
        let recs = records(&unary_pairs(8, pair_count()), &every_pc_rc());
        let op = op!("frndint", "frndint", |a| a.frndint());

        // Act and assert
        check(&op, &recs);
    }

    #[test]
    fn fxtract_every_mask_matches_host() {
        // Arrange
        let recs = records(&unary_pairs(9, pair_count()), &every_rc());
        let op = op!("fxtract", "fxtract", |a| a.fxtract());

        // Act and assert
        check(&op, &recs);
    }

    /// FSCALE pairs: ST(0) of any class, ST(1) a scale that is small, fractional,
    /// large enough to overflow or underflow, or special.
    fn scale_pairs(seed: u64, n: usize) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        (0..n)
            .map(|_| {
                let neg = g.bit();
                let b = match g.below(8) {
                    0 => any(&mut g),
                    1 | 2 => from_parts(neg, u128::from(g.below(80)), 0),
                    3 => from_parts(neg, u128::from(g.next() >> 40), -(g.below(24) as i32)),
                    4 => from_parts(neg, u128::from(16000 + g.below(20000)), 0),
                    5 => from_parts(neg, u128::from(g.next()), -(g.below(40) as i32)),
                    6 => from_parts(neg, u128::from(g.next() >> 2), -63 - g.below(4) as i32),
                    _ => from_parts(
                        neg,
                        u128::from(g.below(70)) * 4 + u128::from(g.below(4)),
                        -2,
                    ),
                };
                (any(&mut g), b)
            })
            .collect()
    }

    #[test]
    fn fscale_every_rc_and_mask_matches_host() {
        // Arrange
        let recs = records(&scale_pairs(10, pair_count()), &every_pc_rc());
        let op = op!("fscale", "fscale", |a| a.fscale());

        // Act and assert
        check(&op, &recs);
    }

    /// FPREM pairs: exponent differences from -3 to 120 (partial remainders beyond
    /// 63), equal significands, and specials.
    fn rem_pairs(seed: u64, n: usize) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        (0..n)
            .map(|_| match g.below(6) {
                0 => (any(&mut g), any(&mut g)),
                1 => (any(&mut g), short(&mut g)),
                _ => {
                    let (neg, ea, sa) = normal(&mut g);
                    let d = g.pick(&[
                        -3i32, -2, -1, 0, 1, 2, 5, 17, 31, 32, 33, 62, 63, 64, 65, 70, 100, 120,
                    ]);
                    let eb = (i32::from(ea) - d).clamp(1, 0x7FFE) as u16;
                    let sb = if g.below(4) == 0 {
                        sa
                    } else {
                        g.next() | 1 << 63
                    };
                    let b = if g.below(8) == 0 {
                        f80(g.bit(), 0, sb >> g.below(64))
                    } else {
                        f80(g.bit(), eb, sb)
                    };
                    (f80(neg, ea, sa), b)
                }
            })
            .collect()
    }

    #[test]
    fn fprem_every_mask_matches_host() {
        // Arrange
        let recs = records(&rem_pairs(11, pair_count()), &every_rc());
        let op = op!("fprem", "fprem", |a| a.fprem());

        // Act and assert
        check(&op, &recs);
    }

    #[test]
    fn fprem1_every_mask_matches_host() {
        // Arrange
        let recs = records(&rem_pairs(12, pair_count()), &every_rc());
        let op = op!("fprem1", "fprem1", |a| a.fprem1());

        // Act and assert
        check(&op, &recs);
    }

    // ----------------------------------------------------------------------------
    // Conversions to and from memory formats
    // ----------------------------------------------------------------------------

    /// Values for FST m32 (`single`) or m64: rounding boundaries of 24/53 bits, and
    /// exponents around the format's overflow and denormal thresholds.
    fn store_pairs(seed: u64, n: usize, single: bool) -> Vec<([u8; 10], [u8; 10])> {
        let (max_e, min_e, p) = if single {
            (127, -126, 24)
        } else {
            (1023, -1022, 53)
        };
        let mut g = Rng(seed);
        (0..n)
            .map(|_| {
                let neg = g.bit();
                let low = 64 - p;
                let a = match g.below(7) {
                    0 => any(&mut g),
                    1 => {
                        // Just below, at, and above the largest finite value.
                        let e = 16383 + max_e + g.below(2) as i32;
                        let tail = g.pick(&[0u64, 1 << (low - 1), (1 << low) - 1, 1]);
                        f80(neg, e as u16, (u64::MAX << low) | tail)
                    }
                    2 | 3 => {
                        // The denormal range and just below it.
                        let e = 16383 + min_e - g.below(p as u64 + 3) as i32;
                        f80(neg, e as u16, boundary_sig(&mut g))
                    }
                    4 => {
                        let e = 16383 + min_e - 1 + g.below(3) as i32;
                        f80(neg, e as u16, u64::MAX << g.below(64))
                    }
                    _ => {
                        let sig = (g.next() | 1 << 63) & (u64::MAX << low)
                            | g.pick(&[
                                1u64 << (low - 1),
                                (1 << (low - 1)) + 1,
                                (1 << (low - 1)) - 1,
                                0,
                            ]);
                        f80(neg, g.exp_near(0x3FFF, 100), sig)
                    }
                };
                (a, short(&mut g))
            })
            .collect()
    }

    #[test]
    fn fst_m32_every_rc_and_mask_matches_host() {
        // Arrange
        let recs = records(&store_pairs(20, pair_count(), true), &every_rc());
        let ops = [
            op!("fst m32", "fst dword ptr [{r} + 62]", |a| a
                .fst(dword_ptr(si + 62))),
            op!("fstp m32", "fstp dword ptr [{r} + 62]", |a| a
                .fstp(dword_ptr(si + 62))),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn fst_m64_every_rc_and_mask_matches_host() {
        // Arrange
        let recs = records(&store_pairs(21, pair_count(), false), &every_rc());
        let ops = [
            op!("fst m64", "fst qword ptr [{r} + 62]", |a| a
                .fst(qword_ptr(si + 62))),
            op!("fstp m64", "fstp qword ptr [{r} + 62]", |a| a
                .fstp(qword_ptr(si + 62))),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn fstp_m80_any_value_is_stored_unchanged_like_host() {
        // Arrange
        let recs = records(&unary_pairs(22, pair_count()), &every_rc());
        let op = op!("fstp m80", "fstp tbyte ptr [{r} + 62]", |a| a
            .fstp(tword_ptr(si + 62)));

        // Act and assert
        check(&op, &recs);
    }

    /// A memory image of `width` bytes in A (the loads read it from [r + 0]).
    fn load_pairs(seed: u64, n: usize, width: usize) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        (0..n)
            .map(|_| {
                let a = match width {
                    4 => with_low(&any_f32(&mut g).to_le_bytes()),
                    8 => with_low(&any_f64(&mut g).to_le_bytes()),
                    _ => {
                        let edges = [
                            0u64,
                            1,
                            u64::MAX,
                            1 << 63,
                            (1 << 63) - 1,
                            0x8000,
                            0x7FFF,
                            0x8000_0000,
                            0x7FFF_FFFF,
                        ];
                        let v = if g.bit() {
                            g.pick(&edges)
                        } else {
                            g.next() >> g.below(64)
                        };
                        with_low(&v.to_le_bytes())
                    }
                };
                (a, short(&mut g))
            })
            .collect()
    }

    #[test]
    fn fld_m32_m64_every_class_and_mask_matches_host() {
        // Arrange: denormals raise DE, SNaNs IE (quieted when masked).
        let r32 = records(&load_pairs(23, pair_count(), 4), &every_rc());
        let r64 = records(&load_pairs(24, pair_count(), 8), &every_rc());
        let op32 = op!("fld m32", "fld dword ptr [{r}]", |a| a.fld(dword_ptr(si)));
        let op64 = op!("fld m64", "fld qword ptr [{r}]", |a| a.fld(qword_ptr(si)));

        // Act and assert
        check(&op32, &r32);
        check(&op64, &r64);
    }

    #[test]
    fn fild_m16_m32_m64_matches_host() {
        // Arrange
        let recs = records(&load_pairs(25, pair_count(), 0), &every_rc()[..1]);
        let ops = [
            op!("fild m16", "fild word ptr [{r}]", |a| a.fild(word_ptr(si))),
            op!("fild m32", "fild dword ptr [{r}]", |a| a
                .fild(dword_ptr(si))),
            op!("fild m64", "fild qword ptr [{r}]", |a| a
                .fild(qword_ptr(si))),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    /// Values around the limits of `bits`-bit integers, in steps of 1/4, plus
    /// half-integers, large magnitudes and specials.
    fn int_store_pairs(seed: u64, n: usize, bits: u32) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        let lim = 1u128 << (bits - 1);
        (0..n)
            .map(|_| {
                let neg = g.bit();
                let a = match g.below(6) {
                    0 => any(&mut g),
                    1 | 2 => from_parts(neg, lim * 4 + u128::from(g.below(12)) - 6, -2),
                    3 => from_parts(neg, u128::from(g.next()) % (lim * 4), -2),
                    4 => from_parts(neg, 2 * u128::from(g.below(1000)) + 1, -1),
                    _ => f80(
                        neg,
                        g.exp_near(0x3FFF + bits as i32 / 2, bits as i32 / 2 + 8),
                        g.next() | 1 << 63,
                    ),
                };
                (a, short(&mut g))
            })
            .collect()
    }

    #[test]
    fn fist_fistp_every_rc_and_mask_match_host() {
        // Arrange: out of range stores the integer indefinite (masked) or nothing.
        let r16 = records(&int_store_pairs(26, pair_count(), 16), &every_rc());
        let r32 = records(&int_store_pairs(27, pair_count(), 32), &every_rc());
        let r64 = records(&int_store_pairs(28, pair_count(), 64), &every_rc());
        let ops16 = [
            op!("fist m16", "fist word ptr [{r} + 62]", |a| a
                .fist(word_ptr(si + 62))),
            op!("fistp m16", "fistp word ptr [{r} + 62]", |a| a
                .fistp(word_ptr(si + 62))),
        ];
        let ops32 = [
            op!("fist m32", "fist dword ptr [{r} + 62]", |a| a
                .fist(dword_ptr(si + 62))),
            op!("fistp m32", "fistp dword ptr [{r} + 62]", |a| a
                .fistp(dword_ptr(si + 62))),
        ];
        let op64 = op!("fistp m64", "fistp qword ptr [{r} + 62]", |a| a
            .fistp(qword_ptr(si + 62)));

        // Act and assert
        check_all(&ops16, &r16);
        check_all(&ops32, &r32);
        check(&op64, &r64);
    }

    #[test]
    fn fisttp_every_rc_and_mask_match_host() {
        // Arrange: FISTTP (SSE3) truncates whatever RC says.
        let r16 = records(&int_store_pairs(36, pair_count(), 16), &every_rc());
        let r32 = records(&int_store_pairs(37, pair_count(), 32), &every_rc());
        let r64 = records(&int_store_pairs(38, pair_count(), 64), &every_rc());
        let op16 = op!("fisttp m16", "fisttp word ptr [{r} + 62]", |a| a
            .fisttp(word_ptr(si + 62)));
        let op32 = op!("fisttp m32", "fisttp dword ptr [{r} + 62]", |a| a
            .fisttp(dword_ptr(si + 62)));
        let op64 = op!("fisttp m64", "fisttp qword ptr [{r} + 62]", |a| a
            .fisttp(qword_ptr(si + 62)));

        // Act and assert
        check(&op16, &r16);
        check(&op32, &r32);
        check(&op64, &r64);
    }

    fn bcd(neg: bool, mut v: u64) -> [u8; 10] {
        let mut b = [0u8; 10];
        for byte in b.iter_mut().take(9) {
            *byte = (v % 10) as u8 | ((v / 10 % 10) as u8) << 4;
            v /= 100;
        }
        b[9] = if neg { 0x80 } else { 0 };
        b
    }

    #[test]
    fn fbld_fbstp_every_rc_and_mask_match_host() {
        // Arrange: FBLD of valid 18-digit BCD; FBSTP of values up to and past
        // 10^18 - 1 (past it: the BCD indefinite, or nothing when unmasked).
        let mut g = Rng(29);
        let loads: Vec<_> = (0..pair_count())
            .map(|_| {
                let v = (g.next() % 1_000_000_000_000_000_000) >> g.below(60);
                (bcd(g.bit(), v), short(&mut g))
            })
            .collect();
        let stores: Vec<_> = (0..pair_count())
            .map(|_| {
                let neg = g.bit();
                let a = match g.below(4) {
                    0 => any(&mut g),
                    1 => from_parts(
                        neg,
                        4 * 999_999_999_999_999_999 + u128::from(g.below(12)) - 4,
                        -2,
                    ),
                    _ => from_parts(
                        neg,
                        u128::from((g.next() % 4_000_000_000_000_000_000) >> g.below(62)),
                        -2,
                    ),
                };
                (a, short(&mut g))
            })
            .collect();
        let fbld = op!("fbld", "fbld tbyte ptr [{r}]", |a| a.fbld(tword_ptr(si)));
        let fbstp = op!("fbstp", "fbstp tbyte ptr [{r} + 62]", |a| a
            .fbstp(tword_ptr(si + 62)));

        // Act and assert
        check(&fbld, &records(&loads, &every_rc()[..1]));
        check(&fbstp, &records(&stores, &every_rc()));
    }
    // ----------------------------------------------------------------------------
    // Comparisons and classification
    // ----------------------------------------------------------------------------

    /// Comparison pairs: the arithmetic pairs plus equal values, zeros of both
    /// signs, and NaNs against numbers.
    fn compare_pairs(seed: u64, n: usize) -> Vec<([u8; 10], [u8; 10])> {
        let mut g = Rng(seed);
        let mut v = arith_pairs(seed, n / 2);
        v.extend((0..n / 2).map(|_| {
            let a = any(&mut g);
            match g.below(4) {
                0 => (a, a),
                1 => (f80(g.bit(), 0, 0), f80(g.bit(), 0, 0)),
                2 => (a, f80(g.bit(), 0x7FFF, 1 << 63)),
                _ => (
                    a,
                    f80(g.bit(), 0x7FFF, 0xC000_0000_0000_0000 | g.next() >> 3),
                ),
            }
        }));
        v
    }

    #[test]
    fn fcom_fucom_families_set_condition_codes_like_host() {
        // Arrange
        let recs = records(&compare_pairs(30, pair_count()), &every_rc());
        let ops = [
            op!("fcom st(1)", "fcom st(1)", |a| a.fcom_2(st0, st1)),
            op!("fcomp st(1)", "fcomp st(1)", |a| a.fcomp_2(st0, st1)),
            op!("fcompp", "fcompp", |a| a.fcompp()),
            op!("fucom st(1)", "fucom st(1)", |a| a.fucom(st0, st1)),
            op!("fucomp st(1)", "fucomp st(1)", |a| a.fucomp(st0, st1)),
            op!("fucompp", "fucompp", |a| a.fucompp()),
            op!("ftst", "ftst", |a| a.ftst()),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn fcom_ficom_memory_operands_set_condition_codes_like_host() {
        // Arrange
        let r32 = records(&mem_pairs(31, pair_count(), 4), &every_rc());
        let r64 = records(&mem_pairs(32, pair_count(), 8), &every_rc());
        let r16i = records(&mem_pairs(33, pair_count(), 2), &every_rc());
        let r32i = records(&mem_pairs(34, pair_count(), 3), &every_rc());
        let op32 = op!("fcomp m32", "fcomp dword ptr [{r} + 10]", |a| a
            .fcomp(dword_ptr(si + 10)));
        let op64 = op!("fcom m64", "fcom qword ptr [{r} + 10]", |a| a
            .fcom(qword_ptr(si + 10)));
        let op16i = op!("ficom m16", "ficom word ptr [{r} + 10]", |a| a
            .ficom(word_ptr(si + 10)));
        let op32i = op!("ficomp m32", "ficomp dword ptr [{r} + 10]", |a| a
            .ficomp(dword_ptr(si + 10)));

        // Act and assert
        check(&op32, &r32);
        check(&op64, &r64);
        check(&op16i, &r16i);
        check(&op32i, &r32i);
    }

    /// SETB/SETE/SETP/SETO/SETS into the record's flag bytes.
    fn store_flags(a: &mut CodeAssembler) -> AsmResult {
        a.setb(byte_ptr(si + 26))?;
        a.sete(byte_ptr(si + 27))?;
        a.setp(byte_ptr(si + 28))?;
        a.seto(byte_ptr(si + 29))?;
        a.sets(byte_ptr(si + 30))
    }

    #[test]
    fn fcomi_fucomi_families_set_eflags_like_host() {
        // Arrange: CMP first gives both sides the same EFLAGS; then CF ZF PF OF SF
        // are stored with SETcc.
        let recs = records(&compare_pairs(35, pair_count()), &every_rc());
        let ops = [
            op!(
                "fcomi",
                "cmp {r}, {r}\nfcomi st, st(1)\nsetb byte ptr [{r} + 26]\nsete byte ptr [{r} + 27]\nsetp byte ptr [{r} + 28]\nseto byte ptr [{r} + 29]\nsets byte ptr [{r} + 30]",
                |a| {
                    a.cmp(si, si)?;
                    a.fcomi(st0, st1)?;
                    store_flags(a)
                }
            ),
            op!(
                "fcomip",
                "cmp {r}, {r}\nfcomip st, st(1)\nsetb byte ptr [{r} + 26]\nsete byte ptr [{r} + 27]\nsetp byte ptr [{r} + 28]\nseto byte ptr [{r} + 29]\nsets byte ptr [{r} + 30]",
                |a| {
                    a.cmp(si, si)?;
                    a.fcomip(st0, st1)?;
                    store_flags(a)
                }
            ),
            op!(
                "fucomi",
                "cmp {r}, {r}\nfucomi st, st(1)\nsetb byte ptr [{r} + 26]\nsete byte ptr [{r} + 27]\nsetp byte ptr [{r} + 28]\nseto byte ptr [{r} + 29]\nsets byte ptr [{r} + 30]",
                |a| {
                    a.cmp(si, si)?;
                    a.fucomi(st0, st1)?;
                    store_flags(a)
                }
            ),
            op!(
                "fucomip",
                "cmp {r}, {r}\nfucomip st, st(1)\nsetb byte ptr [{r} + 26]\nsete byte ptr [{r} + 27]\nsetp byte ptr [{r} + 28]\nseto byte ptr [{r} + 29]\nsets byte ptr [{r} + 30]",
                |a| {
                    a.cmp(si, si)?;
                    a.fucomip(st0, st1)?;
                    store_flags(a)
                }
            ),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn fxam_every_class_and_empty_matches_host() {
        // Arrange: FFREE makes ST(0) empty while keeping its contents (C1 = sign).
        let recs = records(&unary_pairs(36, pair_count()), &every_rc()[..1]);
        let ops = [
            op!("fxam", "fxam", |a| a.fxam()),
            op!("fxam empty", "ffree st(0)\nfxam", |a| {
                a.ffree(st0)?;
                a.fxam()
            }),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    // ----------------------------------------------------------------------------
    // Constants, register moves and stack faults
    // ----------------------------------------------------------------------------

    #[test]
    fn constants_every_rc_match_host() {
        // Arrange: the constants are rounded by RC (SDM vol. 1 §8.3.8).
        let recs = records(&unary_pairs(37, 2), &every_pc_rc());
        let ops = [
            op!("fldpi", "fldpi", |a| a.fldpi()),
            op!("fldl2t", "fldl2t", |a| a.fldl2t()),
            op!("fldl2e", "fldl2e", |a| a.fldl2e()),
            op!("fldlg2", "fldlg2", |a| a.fldlg2()),
            op!("fldln2", "fldln2", |a| a.fldln2()),
            op!("fld1", "fld1", |a| a.fld1()),
            op!("fldz", "fldz", |a| a.fldz()),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn register_moves_and_sign_ops_match_host() {
        // Arrange: after CMP, ZF=1 PF=1 CF=0 on both sides (for FCMOVcc).
        let recs = records(&unary_pairs(38, 100), &every_rc());
        let ops = [
            op!("fchs", "fchs", |a| a.fchs()),
            op!("fabs", "fabs", |a| a.fabs()),
            op!("fxch", "fxch st(1)", |a| a.fxch(st0, st1)),
            op!("fld st(1)", "fld st(1)", |a| a.fld(st1)),
            op!("fst st(1)", "fst st(1)", |a| a.fst(st1)),
            op!("fstp st(1)", "fstp st(1)", |a| a.fstp(st1)),
            op!("fincstp", "fincstp", |a| a.fincstp()),
            op!("fdecstp", "fdecstp", |a| a.fdecstp()),
            op!("ffree st(1)", "ffree st(1)", |a| a.ffree(st1)),
            op!("fcmove", "cmp {r}, {r}\nfcmove st, st(1)", |a| {
                a.cmp(si, si)?;
                a.fcmove(st0, st1)
            }),
            op!("fcmovb", "cmp {r}, {r}\nfcmovb st, st(1)", |a| {
                a.cmp(si, si)?;
                a.fcmovb(st0, st1)
            }),
            op!("fcmovnu", "cmp {r}, {r}\nfcmovnu st, st(1)", |a| {
                a.cmp(si, si)?;
                a.fcmovnu(st0, st1)
            }),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }

    #[test]
    fn stack_overflow_and_underflow_responses_match_host() {
        // Arrange: two values are loaded; seven more pushes overflow once. FFREE
        // empties a register for the underflow cases.
        let recs = records(&unary_pairs(39, 40), &every_rc());
        let ops = [
            op!(
                "push overflow",
                "fld st(0)\nfld st(0)\nfld st(0)\nfld st(0)\nfld st(0)\nfld st(0)\nfld1",
                |a| {
                    for _ in 0..6 {
                        a.fld(st0)?;
                    }
                    a.fld1()
                }
            ),
            op!("fadd empty", "ffree st(1)\nfadd st, st(1)", |a| {
                a.ffree(st1)?;
                a.fadd_2(st0, st1)
            }),
            op!("faddp empty", "ffree st(0)\nfaddp st(1), st", |a| {
                a.ffree(st0)?;
                a.faddp(st1, st0)
            }),
            op!("fsqrt empty", "ffree st(0)\nfsqrt", |a| {
                a.ffree(st0)?;
                a.fsqrt()
            }),
            op!(
                "fst m32 empty",
                "ffree st(0)\nfst dword ptr [{r} + 62]",
                |a| {
                    a.ffree(st0)?;
                    a.fst(dword_ptr(si + 62))
                }
            ),
            op!(
                "fstp m64 empty",
                "ffree st(0)\nfstp qword ptr [{r} + 62]",
                |a| {
                    a.ffree(st0)?;
                    a.fstp(qword_ptr(si + 62))
                }
            ),
            op!(
                "fistp m16 empty",
                "ffree st(0)\nfistp word ptr [{r} + 62]",
                |a| {
                    a.ffree(st0)?;
                    a.fistp(word_ptr(si + 62))
                }
            ),
            op!(
                "fbstp empty",
                "ffree st(0)\nfbstp tbyte ptr [{r} + 62]",
                |a| {
                    a.ffree(st0)?;
                    a.fbstp(tword_ptr(si + 62))
                }
            ),
            op!("fcom empty", "ffree st(1)\nfcom st(1)", |a| {
                a.ffree(st1)?;
                a.fcom_2(st0, st1)
            }),
            op!("fcompp empty", "ffree st(1)\nfcompp", |a| {
                a.ffree(st1)?;
                a.fcompp()
            }),
            op!("fxch empty", "ffree st(1)\nfxch st(1)", |a| {
                a.ffree(st1)?;
                a.fxch(st0, st1)
            }),
            op!("fld empty", "ffree st(1)\nfld st(1)", |a| {
                a.ffree(st1)?;
                a.fld(st1)
            }),
            op!("fprem empty", "ffree st(1)\nfprem", |a| {
                a.ffree(st1)?;
                a.fprem()
            }),
            op!("fxtract empty", "ffree st(0)\nfxtract", |a| {
                a.ffree(st0)?;
                a.fxtract()
            }),
            op!("fscale empty", "ffree st(1)\nfscale", |a| {
                a.ffree(st1)?;
                a.fscale()
            }),
        ];

        // Act and assert
        check_all(&ops, &recs);
    }
    // ----------------------------------------------------------------------------
    // Transcendentals: within a tolerance (see the module documentation)
    // ----------------------------------------------------------------------------

    /// A finite 80-bit value as f64 (`None` for NaNs, infinities, unsupported
    /// encodings and magnitudes outside f64's normal range).
    fn finite(b: &[u8]) -> Option<f64> {
        let sig = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let se = u16::from_le_bytes([b[8], b[9]]);
        let exp = i32::from(se & 0x7FFF);
        if exp == 0x7FFF || (exp != 0 && sig >> 63 == 0) {
            return None;
        }
        let e = exp.max(1) - 16383 - 63;
        let mag =
            sig as f64 * 2f64.powi(e.clamp(-1000, 1000)) * 2f64.powi(e - e.clamp(-1000, 1000));
        let v = if se & 0x8000 != 0 { -mag } else { mag };
        (v == 0.0 || v.abs() >= f64::MIN_POSITIVE && v.is_finite()).then_some(v)
    }

    /// The x86bt value is the host's exactly, or both are finite and within
    /// `rel` × max(|host|, `floor`).
    fn close(got: &[u8], want: &[u8], rel: f64, floor: f64) -> bool {
        if got == want {
            return true;
        }
        match (finite(got), finite(want)) {
            (Some(g), Some(w)) => (g - w).abs() <= rel * w.abs().max(floor),
            _ => false,
        }
    }

    /// Status bits compared for transcendentals: not PE, UE or C1 (rounding).
    const TRANSCENDENTAL_SW: u16 = !(PE | UE | C1);
    /// The documented tolerance: 2^-48 relative.
    const TOLERANCE: f64 = 1.0 / (1u64 << 48) as f64;

    fn check_close(op: &Op, recs: &[Rec]) {
        check_with(op, recs, |g, w| {
            sw_of(g) & TRANSCENDENTAL_SW == sw_of(w) & TRANSCENDENTAL_SW
                && (0..3).all(|i| close(st_of(g, i), st_of(w, i), TOLERANCE, 0.0))
                && g[R_MEM..] == w[R_MEM..]
        });
    }

    /// A value of magnitude in [2^lo, 2^hi) with a random significand.
    fn within(g: &mut Rng, lo: i32, hi: i32) -> [u8; 10] {
        let e = 16383 + lo + g.below((hi - lo) as u64) as i32;
        f80(g.bit(), e as u16, g.next() | 1 << 63)
    }

    /// Specials for the transcendentals: zeros, infinities, NaNs, denormals.
    fn special(g: &mut Rng) -> [u8; 10] {
        let neg = g.bit();
        match g.below(5) {
            0 => f80(neg, 0, 0),
            1 => f80(neg, 0x7FFF, 1 << 63),
            2 => f80(neg, 0x7FFF, 0xC000_0000_0000_0000 | g.next() >> 2),
            3 => f80(neg, 0x7FFF, 1 << 63 | (g.next() >> 2).max(1)),
            _ => f80(neg, 0, (g.next() >> 1).max(1)),
        }
    }

    #[test]
    fn fsin_fcos_fsincos_fptan_within_tolerance_of_host() {
        // Arrange: every magnitude up to the 2^63 limit, arguments within an ulp
        // of a multiple of the x87's π/2 (SDM vol. 1 §8.3.8), tiny values,
        // specials, and out-of-range values (C2 set, nothing changed).
        const HALF_P: u128 = 0xC_90FD_AA22_168C_234C; // × 2^-67
        let mut g = Rng(40);
        let pairs: Vec<_> = (0..pair_count())
            .map(|_| {
                let a = match g.below(10) {
                    0 => special(&mut g),
                    1 => within(&mut g, -70, -20),
                    2 => within(&mut g, 62, 66),
                    3 | 4 => {
                        let k =
                            u128::from(g.pick(&[1u64, 2, 3, 4, 7, 100, 1 << 20, 12345, 1 << 40]));
                        let mut v = from_parts(g.bit(), k * HALF_P, -67);
                        v[0] = v[0].wrapping_add(g.pick(&[0u8, 1, 255, 2]));
                        v
                    }
                    _ => within(&mut g, -20, 62),
                };
                (a, short(&mut g))
            })
            .collect();
        let recs = records(&pairs, &every_rc());
        let ops = [
            op!("fsin", "fsin", |a| a.fsin()),
            op!("fcos", "fcos", |a| a.fcos()),
            op!("fsincos", "fsincos", |a| a.fsincos()),
            op!("fptan", "fptan", |a| a.fptan()),
        ];

        // Act and assert
        for op in &ops {
            check_close(op, &recs);
        }
    }

    #[test]
    fn fpatan_within_tolerance_of_host() {
        // Arrange: all four quadrants, wide exponent ratios, specials.
        let mut g = Rng(41);
        let pairs: Vec<_> = (0..pair_count())
            .map(|_| {
                let x = if g.below(8) == 0 {
                    special(&mut g)
                } else {
                    within(&mut g, -40, 40)
                };
                let y = if g.below(8) == 0 {
                    special(&mut g)
                } else {
                    within(&mut g, -40, 40)
                };
                (x, y)
            })
            .collect();
        let recs = records(&pairs, &every_rc());
        let op = op!("fpatan", "fpatan", |a| a.fpatan());

        // Act and assert
        check_close(&op, &recs);
    }

    #[test]
    fn f2xm1_fyl2x_fyl2xp1_within_tolerance_of_host() {
        // Arrange: F2XM1 on [-1, 1]; FYL2X on positive x (and invalid signs);
        // FYL2XP1 on |x| < 1 - sqrt(2)/2.
        let mut g = Rng(42);
        let mut pairs = |x: &dyn Fn(&mut Rng) -> [u8; 10]| -> Vec<_> {
            (0..pair_count())
                .map(|_| {
                    let a = if g.below(8) == 0 {
                        special(&mut g)
                    } else {
                        x(&mut g)
                    };
                    let y = if g.below(8) == 0 {
                        special(&mut g)
                    } else {
                        within(&mut g, -20, 20)
                    };
                    (a, y)
                })
                .collect()
        };
        let r2xm1 = records(&pairs(&|g| within(g, -70, 0)), &every_rc());
        let rl2x = records(
            &pairs(&|g| {
                let mut v = within(g, -40, 40);
                v[9] &= if g.below(8) == 0 { 0xFF } else { 0x7F };
                v
            }),
            &every_rc(),
        );
        let rl2xp1 = records(&pairs(&|g| within(g, -70, -2)), &every_rc());
        let f2xm1 = op!("f2xm1", "f2xm1", |a| a.f2xm1());
        let fyl2x = op!("fyl2x", "fyl2x", |a| a.fyl2x());
        let fyl2xp1 = op!("fyl2xp1", "fyl2xp1", |a| a.fyl2xp1());

        // Act and assert
        check_close(&f2xm1, &r2xm1);
        check_close(&fyl2x, &rl2x);
        check_close(&fyl2xp1, &rl2xp1);
    }
    // ----------------------------------------------------------------------------
    // State images against the host: tag word reconstruction
    // ----------------------------------------------------------------------------

    /// A random status word image: any TOP, condition codes and exception flags,
    /// but no ES/B (a pending exception would fault the host's next FPU use).
    fn random_status(g: &mut Rng) -> u16 {
        g.next() as u16 & !(ES | B)
    }

    #[test]
    fn frstor_then_fnstenv_words_match_host() {
        // Arrange: 108-byte images (the 32-bit format: the guest runs FRSTOR with
        // an operand-size prefix) with random tags over registers of any class.
        const N: usize = 200;
        let mut g = Rng(50);
        let images: Vec<[u8; 108]> = (0..N)
            .map(|_| {
                let mut image = [0u8; 108];
                image[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
                image[4..6].copy_from_slice(&random_status(&mut g).to_le_bytes());
                image[8..10].copy_from_slice(&(g.next() as u16).to_le_bytes());
                for i in 0..8 {
                    image[28 + 10 * i..38 + 10 * i].copy_from_slice(&any(&mut g));
                }
                image
            })
            .collect();
        let code = asm16(|a| {
            let mut next = a.create_label();
            a.xor(si, si)?;
            a.mov(di, 0x8000u32)?;
            a.mov(bp, N as u32)?;
            a.set_label(&mut next)?;
            a.add_instruction(Instruction::with1(
                Code::Frstor_m108byte,
                MemoryOperand::with_base(iced_x86::Register::SI),
            )?)?;
            a.add_instruction(Instruction::with1(
                Code::Fnstenv_m28byte,
                MemoryOperand::with_base(iced_x86::Register::DI),
            )?)?;
            a.add(si, 108)?;
            a.add(di, 28)?;
            a.dec(bp)?;
            a.jnz(next)?;
            a.hlt()
        });
        let mut vm = flat_vm(&code);
        load(&mut vm, DATA_SEG, 0, &images.concat());

        // Act
        run_to_halt(&mut vm);
        let got = bytes(&vm, DATA_SEG, 0x8000, 28 * N);

        // Assert: control, status and tag dwords, reserved halves included.
        for (i, image) in images.iter().enumerate() {
            let mut env = [0u8; 28];
            // SAFETY: `image` is a readable 108-byte FRSTOR image and `env` a
            // writable 28-byte FNSTENV area. The image's status word has no pending
            // exception, so neither instruction faults; FNINIT then leaves the x87
            // as the ABI requires (empty, control word 037Fh).
            unsafe {
                core::arch::asm!(
                    "frstor [{img}]",
                    "fnstenv [{env}]",
                    "fninit",
                    img = in(reg) image.as_ptr(),
                    env = in(reg) env.as_mut_ptr(),
                    out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
                    out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
                    options(nostack),
                );
            }
            assert_eq!(
                &got[28 * i..28 * i + 12],
                &env[..12],
                "image {i}: sw {:04x} tw {:04x} regs {:02x?}",
                u16::from_le_bytes([image[4], image[5]]),
                u16::from_le_bytes([image[8], image[9]]),
                &image[28..]
            );
        }
    }

    /// A 16-byte aligned FXSAVE area.
    #[repr(C, align(16))]
    struct FxArea([u8; 512]);

    #[test]
    fn fxrstor_then_fxsave_and_fnstenv_match_host() {
        // Arrange: random abridged tags over registers of any class; image i at
        // DS:1024i, its FNSTENV at 8000h + 1024i and its FXSAVE 512 bytes later.
        const N: usize = 30;
        let mut g = Rng(51);
        let images: Vec<FxArea> = (0..N)
            .map(|_| {
                let mut area = FxArea([0; 512]);
                let b = &mut area.0;
                b[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
                b[2..4].copy_from_slice(&random_status(&mut g).to_le_bytes());
                b[4] = g.next() as u8;
                b[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
                for i in 0..8 {
                    b[32 + 16 * i..42 + 16 * i].copy_from_slice(&any(&mut g));
                }
                area
            })
            .collect();
        let code = asm16(|a| {
            let mut next = a.create_label();
            a.xor(si, si)?;
            a.mov(bp, N as u32)?;
            a.set_label(&mut next)?;
            a.fxrstor(ptr(si))?;
            a.add_instruction(Instruction::with1(
                Code::Fnstenv_m28byte,
                MemoryOperand::with_base_displ(iced_x86::Register::SI, 0x8000),
            )?)?;
            a.fxsave(ptr(si + 0x8000 + 512))?;
            a.add(si, 1024)?;
            a.dec(bp)?;
            a.jnz(next)?;
            a.hlt()
        });
        let mut vm = flat_vm(&code);
        for (i, area) in images.iter().enumerate() {
            load(&mut vm, DATA_SEG, (1024 * i) as u16, &area.0);
        }

        // Act
        run_to_halt(&mut vm);

        // Assert: the reconstructed full tag word, and FCW/FSW/abridged FTW and the
        // registers of the FXSAVE that follows.
        for (i, area) in images.iter().enumerate() {
            let at = (1024 * i) as u16 + 0x8000;
            let mut env = [0u8; 28];
            let mut saved = FxArea([0; 512]);
            // SAFETY: `area` and `saved` are 16-byte aligned 512-byte areas and
            // `env` a writable 28-byte one. The image holds MXCSR 1F80h (the
            // default) and no pending x87 exception, so nothing faults; the XMM
            // registers that FXRSTOR loads are declared clobbered, and FNINIT leaves
            // the x87 as the ABI requires.
            unsafe {
                core::arch::asm!(
                    "fxrstor [{img}]",
                    "fnstenv [{env}]",
                    "fxsave [{out}]",
                    "fninit",
                    img = in(reg) area.0.as_ptr(),
                    env = in(reg) env.as_mut_ptr(),
                    out = in(reg) saved.0.as_mut_ptr(),
                    out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
                    out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                    out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                    out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                    out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                    options(nostack),
                );
            }
            let what = format!(
                "image {i}: sw {:04x} ftw {:02x} regs {:02x?}",
                u16::from_le_bytes([area.0[2], area.0[3]]),
                area.0[4],
                &area.0[32..160]
            );
            assert_eq!(bytes(&vm, DATA_SEG, at, 12), &env[..12], "FNSTENV {what}");
            let fx = bytes(&vm, DATA_SEG, at + 512, 160);
            assert_eq!(&fx[..6], &saved.0[..6], "FXSAVE header {what}");
            for r in 0..8 {
                let slot = 32 + 16 * r;
                assert_eq!(
                    &fx[slot..slot + 10],
                    &saved.0[slot..slot + 10],
                    "ST({r}) {what}"
                );
            }
        }
    }
}
