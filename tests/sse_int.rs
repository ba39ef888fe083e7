//! The integer SIMD family (MMX, SSE2, SSSE3, SSE4.1 integer, SSE4.2 PCMPGTQ)
//! against the host CPU and the SDM.
//!
//! Covered: every legacy-encoded form, valid in 32-bit code, of the family's
//! mnemonics ([`MNEMONICS`], plus EMMS and the MMX MOVD/MOVQ forms), found by
//! walking iced's form table, so a form cannot be forgotten. Each runs on the
//! host and in the interpreter on seeded random images (values biased toward
//! the lane edges that saturation, sign and compare logic turn on, shift
//! counts around the lane widths, every immediate class that changes the
//! result), register and memory forms both. Faults checked against the SDM
//! (vol. 2A §2.5, Tables 2-19/2-21 and 22-7 classes): #UD for CR0.EM and for a
//! clear CR4.OSFXSR (XMM forms only), #NM for CR0.TS, #MF for a pending x87
//! exception (MMX forms), #GP(0) for a misaligned 16-byte operand and none for
//! the 2/4/8-byte ones; every fault leaves the image unchanged. The x87 side
//! effects of MMX instructions (SDM vol. 1 §9.5, Table 9-2) are checked on the
//! CPU state directly.

#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(target_arch = "x86_64")]
mod host {
    use super::simd::*;
    use iced_x86::{Code, EncodingKind, Instruction, Mnemonic, OpCodeOperandKind as K, Register};
    use x86bt_cpu::state::cr0;
    use x86bt_cpu::Exception;

    /// The mnemonics of the family whose every legacy form is checked.
    const MNEMONICS: &[Mnemonic] = {
        use Mnemonic as M;
        &[
            M::Paddb,
            M::Paddw,
            M::Paddd,
            M::Paddq,
            M::Paddsb,
            M::Paddsw,
            M::Paddusb,
            M::Paddusw,
            M::Psubb,
            M::Psubw,
            M::Psubd,
            M::Psubq,
            M::Psubsb,
            M::Psubsw,
            M::Psubusb,
            M::Psubusw,
            M::Pmullw,
            M::Pmulhw,
            M::Pmulhuw,
            M::Pmuludq,
            M::Pmaddwd,
            M::Pavgb,
            M::Pavgw,
            M::Pminub,
            M::Pmaxub,
            M::Pminsw,
            M::Pmaxsw,
            M::Psadbw,
            M::Pcmpeqb,
            M::Pcmpeqw,
            M::Pcmpeqd,
            M::Pcmpgtb,
            M::Pcmpgtw,
            M::Pcmpgtd,
            M::Packsswb,
            M::Packssdw,
            M::Packuswb,
            M::Punpcklbw,
            M::Punpcklwd,
            M::Punpckldq,
            M::Punpcklqdq,
            M::Punpckhbw,
            M::Punpckhwd,
            M::Punpckhdq,
            M::Punpckhqdq,
            M::Pand,
            M::Pandn,
            M::Por,
            M::Pxor,
            M::Psllw,
            M::Pslld,
            M::Psllq,
            M::Psrlw,
            M::Psrld,
            M::Psrlq,
            M::Psraw,
            M::Psrad,
            M::Pslldq,
            M::Psrldq,
            M::Pshufb,
            M::Phaddw,
            M::Phaddd,
            M::Phaddsw,
            M::Phsubw,
            M::Phsubd,
            M::Phsubsw,
            M::Pmaddubsw,
            M::Pmulhrsw,
            M::Psignb,
            M::Psignw,
            M::Psignd,
            M::Pabsb,
            M::Pabsw,
            M::Pabsd,
            M::Palignr,
            M::Pmovsxbw,
            M::Pmovsxbd,
            M::Pmovsxbq,
            M::Pmovsxwd,
            M::Pmovsxwq,
            M::Pmovsxdq,
            M::Pmovzxbw,
            M::Pmovzxbd,
            M::Pmovzxbq,
            M::Pmovzxwd,
            M::Pmovzxwq,
            M::Pmovzxdq,
            M::Pmuldq,
            M::Pmulld,
            M::Pminsb,
            M::Pminsd,
            M::Pmaxsb,
            M::Pmaxsd,
            M::Pminuw,
            M::Pminud,
            M::Pmaxuw,
            M::Pmaxud,
            M::Pcmpeqq,
            M::Packusdw,
            M::Phminposuw,
            M::Mpsadbw,
            M::Ptest,
            M::Pcmpgtq,
        ]
    };

    /// The MMX moves of the family (the XMM MOVD/MOVQ forms are not in it).
    const MMX_MOVES: &[Code] = &[
        Code::Movd_mm_rm32,
        Code::Movd_rm32_mm,
        Code::Movq_mm_mmm64,
        Code::Movq_mmm64_mm,
    ];

    /// Every legacy form of the family that 32-bit code can encode.
    pub fn forms() -> Vec<Code> {
        Code::values()
            .filter(|c| {
                let oc = c.op_code();
                oc.encoding() == EncodingKind::Legacy
                    && oc.mode32()
                    && (MNEMONICS.contains(&c.mnemonic()) || MMX_MOVES.contains(c))
            })
            .collect()
    }

    /// Whether `code` has an MMX register operand.
    pub fn is_mmx(code: Code) -> bool {
        code.op_code()
            .op_kinds()
            .iter()
            .any(|k| matches!(k, K::mm_reg | K::mm_rm | K::mm_or_mem))
    }

    /// A random value with lanes biased toward the edges: all-random, lanes
    /// from {0, 1, 0x7F.., 0x80.., 0xFF..} of a random width, or a small
    /// number (a shift count or shuffle index).
    pub fn value(rng: &mut Rng) -> u128 {
        match rng.next() % 6 {
            0 | 1 => rng.next128(),
            2 | 3 => {
                let w = 1usize << (rng.next() % 4);
                let mut v = 0u128;
                for i in 0..16 / w {
                    let bits = w * 8;
                    let all = if bits == 64 {
                        u64::MAX
                    } else {
                        (1u64 << bits) - 1
                    };
                    let lane = match rng.next() % 7 {
                        0 => 0,
                        1 => 1,
                        2 => all >> 1,
                        3 => (all >> 1) + 1,
                        4 => all,
                        _ => rng.next() & all,
                    };
                    v |= u128::from(lane) << (i * bits);
                }
                v
            }
            4 => u128::from(rng.next() % 72) | (rng.next128() << 64),
            _ => u128::from(rng.next() % 72),
        }
    }

    /// A random image; some registers are copies of others, for the equal-lane
    /// cases of compares and PSIGN/PTEST.
    pub fn image(rng: &mut Rng) -> Image {
        let mut img = Image {
            flags: rng.next() & ARITH_FLAGS,
            gpr: [rng.next(), rng.next(), rng.next()],
            mem: value(rng).to_le_bytes(),
            ..Image::default()
        };
        for i in 0..8 {
            img.xmm[i] = value(rng);
            img.mm[i] = value(rng) as u64;
        }
        if rng.next().is_multiple_of(4) {
            let (a, b) = ((rng.next() % 8) as usize, (rng.next() % 8) as usize);
            img.xmm[a] = img.xmm[b];
            img.mm[a] = img.mm[b];
            img.mem = img.xmm[b].to_le_bytes();
        }
        img
    }

    /// An immediate for `code`: every value that selects differently for
    /// MPSADBW, counts around the lane widths for shifts, byte counts around
    /// 8/16/32 for PALIGNR and the byte shifts, else random.
    pub fn immediate(code: Code, rng: &mut Rng) -> u8 {
        match code.mnemonic() {
            Mnemonic::Mpsadbw => (rng.next() % 8) as u8 | (rng.next() as u8 & 0xF8),
            _ => match rng.next() % 3 {
                0 => (rng.next() % 70) as u8,
                1 => (rng.next() % 36) as u8,
                _ => rng.next() as u8,
            },
        }
    }

    /// Operands for `code`: registers chosen at random, the memory operand
    /// when `mem` (for the operand that may be memory).
    pub fn operands(code: Code, mem: bool, rng: &mut Rng) -> Vec<Op> {
        let gprs = [Register::EAX, Register::ECX, Register::EDX];
        let mut r = |n: u64| (rng.next() % n) as u8;
        let kinds: Vec<K> = code.op_code().op_kinds().to_vec();
        let mut ops = Vec::new();
        for k in kinds {
            ops.push(match k {
                K::mm_reg | K::mm_rm => Op::Mm(r(8)),
                K::xmm_reg | K::xmm_rm => Op::X(r(8)),
                K::mm_or_mem if mem => Op::M,
                K::mm_or_mem => Op::Mm(r(8)),
                K::xmm_or_mem if mem => Op::M,
                K::xmm_or_mem => Op::X(r(8)),
                K::r32_or_mem if mem => Op::M,
                K::r32_or_mem => Op::R(gprs[usize::from(r(3))]),
                K::imm8 => Op::Imm(0),
                other => panic!("{code:?}: operand kind {other:?} not handled by the test"),
            });
        }
        ops
    }

    /// Whether `code` has a memory form.
    pub fn has_mem(code: Code) -> bool {
        code.op_code()
            .op_kinds()
            .iter()
            .any(|k| matches!(k, K::mm_or_mem | K::xmm_or_mem | K::r32_or_mem))
    }

    /// Builds `code` with `ops`, an immediate filled in.
    pub fn build(code: Code, ops: &[Op], rng: &mut Rng) -> Instruction {
        let ops: Vec<Op> = ops
            .iter()
            .map(|o| match o {
                Op::Imm(_) => Op::Imm(immediate(code, rng)),
                o => *o,
            })
            .collect();
        ins(code, &ops)
    }

    /// Runs `code` `n` times on random images, register and memory forms.
    pub fn check_form(code: Code, n: usize, seed: u64) {
        let mut rng = Rng(seed ^ (code as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..n {
            let img = image(&mut rng);
            let ops = operands(code, false, &mut rng);
            check_against_host(&build(code, &ops, &mut rng), &img);
            if has_mem(code) {
                let ops = operands(code, true, &mut rng);
                check_against_host(&build(code, &ops, &mut rng), &img);
            }
        }
    }

    /// The image a fault must leave: the one it started from.
    pub fn assert_fault(
        ins: &Instruction,
        img: &Image,
        setup: impl FnOnce(&mut x86bt_cpu::CpuState),
        want: Exception,
    ) {
        let (fault, after) = guest_fault(ins, img, setup);
        assert_eq!(fault, Some(want), "{ins}");
        // The guest runs 32-bit code: it holds the low halves of the GPRs.
        let mut before = *img;
        for g in &mut before.gpr {
            *g &= 0xFFFF_FFFF;
        }
        assert_eq!(after, before, "{ins}: the fault changed the image");
    }

    /// Clears CR4.OSFXSR.
    pub fn no_osfxsr(cpu: &mut x86bt_cpu::CpuState) {
        cpu.cr4 &= !x86bt_cpu::mmu::cr4::OSFXSR;
    }

    /// Sets CR0.EM.
    pub fn em(cpu: &mut x86bt_cpu::CpuState) {
        cpu.cr0 |= cr0::EM;
    }

    /// Sets CR0.TS.
    pub fn ts(cpu: &mut x86bt_cpu::CpuState) {
        cpu.cr0 |= cr0::TS;
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_form_walk_over_iced_table_finds_every_named_form() {
    // The walk finds the forms the brief names: MMX and XMM forms of the
    // MMX-era instructions, XMM forms of SSE4, the MMX moves and EMMS is
    // checked on its own. A broken filter would find too few.
    let forms = host::forms();
    assert!(forms.contains(&iced_x86::Code::Paddb_mm_mmm64));
    assert!(forms.contains(&iced_x86::Code::Paddb_xmm_xmmm128));
    assert!(forms.contains(&iced_x86::Code::Psrlw_mm_imm8));
    assert!(forms.contains(&iced_x86::Code::Palignr_mm_mmm64_imm8));
    assert!(forms.contains(&iced_x86::Code::Pcmpgtq_xmm_xmmm128));
    assert!(forms.contains(&iced_x86::Code::Movd_rm32_mm));
    assert!(forms.len() > 180, "{} forms", forms.len());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_every_form_random_operands_match_host() {
    for code in host::forms() {
        host::check_form(code, 150, 0x5EED_0001);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_every_form_lane_edges_match_host() {
    // Operand 0 is register 0, operand 1 register 1 or memory; at each lane
    // width, lane 0 of the two takes every pair of the edge values (and the
    // other lanes other pairs), so each saturation, sign, rounding and
    // tie case is met with both operand orders.
    use simd::*;
    const EDGES: usize = 9;
    // Edge e of a `bits`-wide lane: 0, 1, 2, the signed maximum and one
    // below, the signed minimum and one above, -1 and -2.
    let edge = |bits: usize, e: usize| -> u64 {
        let all = u64::MAX >> (64 - bits);
        let min = 1u64 << (bits - 1);
        [
            0,
            1,
            2,
            all >> 1,
            (all >> 1) - 1,
            min,
            min | 1,
            all,
            all - 1,
        ][e]
    };
    let pattern = |w: usize, k: usize| -> u128 {
        let bits = 8 * w;
        (0..16 / w).fold(0u128, |v, i| {
            v | u128::from(edge(bits, (i + k) % EDGES)) << (i * bits)
        })
    };
    let mut rng = Rng(0xED6E);
    for code in host::forms() {
        for mem in [false, true] {
            if mem && !host::has_mem(code) {
                continue;
            }
            let mut n = 0;
            let ops: Vec<Op> = host::operands(code, mem, &mut rng)
                .into_iter()
                .map(|o| {
                    n += 1;
                    match o {
                        Op::X(_) => Op::X(n - 1),
                        Op::Mm(_) => Op::Mm(n - 1),
                        Op::R(_) => Op::R(iced_x86::Register::EAX),
                        o => o,
                    }
                })
                .collect();
            for w in [1, 2, 4, 8] {
                for k in 0..EDGES {
                    for j in 0..EDGES {
                        let (a, b) = (pattern(w, k), pattern(w, j));
                        let mut img = host::image(&mut rng);
                        img.xmm[0] = a;
                        img.xmm[1] = b;
                        img.mm[0] = a as u64;
                        img.mm[1] = b as u64;
                        img.mem = b.to_le_bytes();
                        img.gpr[0] = b as u64;
                        check_against_host(&host::build(code, &ops, &mut rng), &img);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_shift_counts_every_value_match_host() {
    use simd::*;
    // Every immediate count 0..=255 and every register count 0..=130 plus the
    // huge ones, for each shift form: the count saturates at the lane width.
    let mut rng = Rng(0xC0_FFEE);
    for code in host::forms() {
        let m = code.mnemonic();
        let name = format!("{m:?}");
        if !name.starts_with("Psll") && !name.starts_with("Psrl") && !name.starts_with("Psra") {
            continue;
        }
        let imm = code
            .op_code()
            .op_kinds()
            .contains(&iced_x86::OpCodeOperandKind::imm8);
        let mmx = host::is_mmx(code);
        let reg = |r| if mmx { Op::Mm(r) } else { Op::X(r) };
        let mut img = host::image(&mut rng);
        img.xmm[0] = rng.next128();
        img.mm[0] = rng.next();
        if imm {
            for c in 0..=255u8 {
                check_against_host(&ins(code, &[reg(0), Op::Imm(c)]), &img);
            }
        } else {
            let counts = (0..=130u64).chain([1 << 32, 1 << 63, u64::MAX]);
            for c in counts {
                img.xmm[1] = u128::from(c) | (u128::from(rng.next()) << 64);
                img.mm[1] = c;
                check_against_host(&ins(code, &[reg(0), reg(1)]), &img);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_palignr_every_immediate_matches_host() {
    use iced_x86::Code;
    use simd::*;
    let mut rng = Rng(0xA11C);
    let img = host::image(&mut rng);
    for c in 0..=255u8 {
        check_against_host(
            &ins(
                Code::Palignr_xmm_xmmm128_imm8,
                &[Op::X(0), Op::X(1), Op::Imm(c)],
            ),
            &img,
        );
        check_against_host(
            &ins(
                Code::Palignr_xmm_xmmm128_imm8,
                &[Op::X(2), Op::M, Op::Imm(c)],
            ),
            &img,
        );
        check_against_host(
            &ins(
                Code::Palignr_mm_mmm64_imm8,
                &[Op::Mm(0), Op::Mm(1), Op::Imm(c)],
            ),
            &img,
        );
        check_against_host(
            &ins(Code::Palignr_mm_mmm64_imm8, &[Op::Mm(3), Op::M, Op::Imm(c)]),
            &img,
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_same_register_both_operands_match_host() {
    // op0 == op1: the source is read before the destination is written.
    use simd::*;
    let mut rng = Rng(0x5A3E);
    for code in host::forms() {
        if code.op_code().op_count() < 2 {
            continue;
        }
        let mut ops = host::operands(code, false, &mut rng);
        match (ops[0], ops[1]) {
            (Op::X(_), Op::X(_)) | (Op::Mm(_), Op::Mm(_)) => ops[1] = ops[0],
            _ => continue,
        }
        for _ in 0..20 {
            let img = host::image(&mut rng);
            check_against_host(&host::build(code, &ops, &mut rng), &img);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_xmm_forms_without_osfxsr_raise_ud() {
    use simd::*;
    let mut rng = Rng(0x0D);
    let img = host::image(&mut rng);
    for code in host::forms().into_iter().filter(|&c| !host::is_mmx(c)) {
        let ins = host::build(code, &host::operands(code, false, &mut rng), &mut rng);
        host::assert_fault(
            &ins,
            &img,
            host::no_osfxsr,
            x86bt_cpu::Exception::InvalidOpcode,
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_every_form_with_cr0_em_raises_ud() {
    use simd::*;
    let mut rng = Rng(0x0E);
    let img = host::image(&mut rng);
    for code in host::forms() {
        let ins = host::build(code, &host::operands(code, true, &mut rng), &mut rng);
        host::assert_fault(&ins, &img, host::em, x86bt_cpu::Exception::InvalidOpcode);
    }
    let emms = ins(iced_x86::Code::Emms, &[]);
    host::assert_fault(&emms, &img, host::em, x86bt_cpu::Exception::InvalidOpcode);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_every_form_with_cr0_ts_raises_nm() {
    use simd::*;
    let mut rng = Rng(0x0F);
    let img = host::image(&mut rng);
    for code in host::forms() {
        let ins = host::build(code, &host::operands(code, true, &mut rng), &mut rng);
        host::assert_fault(
            &ins,
            &img,
            host::ts,
            x86bt_cpu::Exception::DeviceNotAvailable,
        );
    }
    let emms = ins(iced_x86::Code::Emms, &[]);
    host::assert_fault(
        &emms,
        &img,
        host::ts,
        x86bt_cpu::Exception::DeviceNotAvailable,
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_mmx_forms_with_pending_x87_exception_raise_mf() {
    use simd::*;
    let mut rng = Rng(0x10);
    let img = host::image(&mut rng);
    let pending = |cpu: &mut x86bt_cpu::CpuState| cpu.fpu.sw |= x86bt_cpu::fpu::sw::ES;
    for code in host::forms().into_iter().filter(|&c| host::is_mmx(c)) {
        let ins = host::build(code, &host::operands(code, true, &mut rng), &mut rng);
        host::assert_fault(&ins, &img, pending, x86bt_cpu::Exception::FpuError);
    }
    let emms = ins(iced_x86::Code::Emms, &[]);
    host::assert_fault(&emms, &img, pending, x86bt_cpu::Exception::FpuError);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_mmx_forms_without_osfxsr_match_host() {
    // CR4.OSFXSR governs SSE only: MMX forms run as usual with it clear.
    use simd::*;
    let mut rng = Rng(0x11);
    for code in host::forms().into_iter().filter(|&c| host::is_mmx(c)) {
        let img = host::image(&mut rng);
        let ins = host::build(code, &host::operands(code, true, &mut rng), &mut rng);
        let want = host_run(&ins, &img);
        let got = guest_run_with(&ins, &img, host::no_osfxsr).expect("no fault");
        assert_eq!(
            (got.xmm, got.mm, got.mem),
            (want.xmm, want.mm, want.mem),
            "{ins}"
        );
    }
}

/// `ins` with its memory operand moved `by` bytes past the aligned one.
#[cfg(target_arch = "x86_64")]
fn displaced(mut ins: iced_x86::Instruction, by: u64) -> iced_x86::Instruction {
    ins.set_memory_displacement64(simd::MEM as u64 + by);
    ins
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_xmm_m128_forms_misaligned_raise_gp0() {
    use simd::*;
    let mut rng = Rng(0x12);
    let img = host::image(&mut rng);
    let mut n = 0;
    for code in host::forms()
        .into_iter()
        .filter(|&c| !host::is_mmx(c) && host::has_mem(c))
    {
        let ins = host::build(code, &host::operands(code, true, &mut rng), &mut rng);
        if ins.memory_size().size() != 16 {
            continue;
        }
        for by in [1, 4, 8, 15] {
            host::assert_fault(
                &displaced(ins, by),
                &img,
                |_| {},
                x86bt_cpu::Exception::GeneralProtection(0),
            );
        }
        n += 1;
    }
    assert!(n > 80, "{n} forms with a 16-byte operand");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_narrow_memory_forms_misaligned_match_host() {
    // PMOVSX/PMOVZX (2, 4, 8 bytes) and the MMX forms (8 bytes) have no
    // alignment requirement. Every access stays inside the compared 16 bytes.
    use simd::*;
    let mut rng = Rng(0x13);
    for code in host::forms().into_iter().filter(|&c| host::has_mem(c)) {
        let ins = host::build(code, &host::operands(code, true, &mut rng), &mut rng);
        if ins.memory_size().size() == 16 {
            continue;
        }
        for by in [1, 3, 7] {
            let img = host::image(&mut rng);
            check_against_host(&displaced(ins, by), &img);
        }
    }
}

/// The x87 side effects of MMX instructions, on the CPU state itself (the
/// host image holds neither TOP nor the tags): one instruction, assembled
/// for 16-bit code, runs in real mode from reset with DS:BX as its memory
/// operand, after `setup`.
mod x87_effects {
    use iced_x86::code_asm::*;
    use x86bt_cpu::interp::interpreter::{exec_one, Step};
    use x86bt_cpu::interp::Insn;
    use x86bt_cpu::{CpuState, Exception};
    use x86bt_machine::{GuestPhys, Machine};

    /// Runs the one instruction `emit` assembles; returns the fault, if any,
    /// and the CPU state after it.
    fn run(
        emit: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
        setup: impl FnOnce(&mut CpuState),
    ) -> (Option<Exception>, CpuState, Machine) {
        let mut a = CodeAssembler::new(16).expect("16-bit assembler");
        emit(&mut a).expect("assembles");
        let code = a.assemble(0x1000).expect("encodes");
        let ins =
            iced_x86::Decoder::with_ip(16, &code, 0x1000, iced_x86::DecoderOptions::NONE).decode();
        let mut m = Machine::flat(1 << 20).expect("machine");
        m.mem.load(GuestPhys(0x1000), &code).expect("code");
        let mut cpu = CpuState::reset();
        for s in 0..6 {
            cpu.seg[s].base = 0;
            cpu.seg[s].selector = 0;
        }
        cpu.rip = 0x1000;
        cpu.gpr[3] = 0x2000;
        setup(&mut cpu);
        let insn = Insn::prepare(&ins, 16);
        let fault = match exec_one(&mut cpu, &mut m, &insn) {
            Step::Fault(e) => Some(e),
            _ => None,
        };
        (fault, cpu, m)
    }

    /// TOP 5, every register empty, MM1 = 1, MM2 = 2 (exponent fields zero).
    fn x87_busy(cpu: &mut CpuState) {
        cpu.fpu.top = 5;
        cpu.fpu.tw = 0xFFFF;
        for (i, r) in cpu.fpu.regs.iter_mut().enumerate() {
            r.sig = i as u64;
            r.se = 0;
        }
    }

    #[test]
    fn mmx_arithmetic_any_registers_sets_top0_tags_valid_exponent_ones() {
        // SDM vol. 1 Table 9-2: TOP = 0, all tags 00B; §9.5.1: a written MMX
        // register has bits 79-64 all ones; the others are left as they were.
        let (fault, cpu, _) = run(|a| a.paddb(mm1, mm2), x87_busy);
        assert_eq!(fault, None);
        assert_eq!(cpu.fpu.top, 0);
        assert_eq!(cpu.fpu.tw, 0);
        assert_eq!((cpu.fpu.regs[1].sig, cpu.fpu.regs[1].se), (3, 0xFFFF));
        assert_eq!((cpu.fpu.regs[2].sig, cpu.fpu.regs[2].se), (2, 0));
    }

    #[test]
    fn mmx_store_to_gpr_sets_top0_tags_valid() {
        // MOVD r32, mm writes no MMX register but is an MMX instruction.
        let (fault, cpu, _) = run(|a| a.movd(eax, mm2), x87_busy);
        assert_eq!(fault, None);
        assert_eq!((cpu.fpu.top, cpu.fpu.tw), (0, 0));
        assert_eq!(cpu.gpr[0], 2);
    }

    #[test]
    fn emms_any_state_tags_all_empty_top_kept() {
        // SDM vol. 2A EMMS: x87FPUTagWord <- FFFFH; nothing else changes.
        let (fault, cpu, _) = run(
            |a| a.emms(),
            |cpu| {
                cpu.fpu.top = 3;
                cpu.fpu.tw = 0;
            },
        );
        assert_eq!(fault, None);
        assert_eq!((cpu.fpu.top, cpu.fpu.tw), (3, 0xFFFF));
    }

    #[test]
    fn mmx_load_past_segment_limit_faults_x87_state_kept() {
        // An 8-byte read at DS:FFFD crosses the real-mode limit: #GP(0)
        // (SDM vol. 3A §21.1.3 / vol. 2A class 22-7 "Real-Address Mode"),
        // raised before the MMX side effects.
        let (fault, cpu, _) = run(
            |a| a.paddb(mm1, qword_ptr(bx)),
            |cpu| {
                x87_busy(cpu);
                cpu.gpr[3] = 0xFFFD;
            },
        );
        assert_eq!(fault, Some(Exception::GeneralProtection(0)));
        assert_eq!((cpu.fpu.top, cpu.fpu.tw), (5, 0xFFFF));
        assert_eq!((cpu.fpu.regs[1].sig, cpu.fpu.regs[1].se), (1, 0));
    }

    #[test]
    fn mmx_store_past_segment_limit_faults_x87_state_and_memory_kept() {
        let (fault, cpu, m) = run(
            |a| a.movq(qword_ptr(bx), mm7),
            |cpu| {
                x87_busy(cpu);
                cpu.gpr[3] = 0xFFFC;
            },
        );
        assert_eq!(fault, Some(Exception::GeneralProtection(0)));
        assert_eq!((cpu.fpu.top, cpu.fpu.tw), (5, 0xFFFF));
        for a in 0xFFFC..0x1_0000 {
            assert_eq!(m.mem.read_u8(GuestPhys(a)), 0, "byte {a:#x} written");
        }
    }

    #[test]
    fn mmx_movd_load_r32_zero_extends_to_64_bits() {
        // SDM vol. 2B MOVD: MM[63:32] <- 0.
        let (fault, cpu, _) = run(
            |a| a.movd(mm3, ecx),
            |cpu| {
                x87_busy(cpu);
                cpu.fpu.regs[3].sig = u64::MAX;
                cpu.gpr[1] = 0x8765_4321;
            },
        );
        assert_eq!(fault, None);
        assert_eq!(cpu.fpu.regs[3].sig, 0x8765_4321);
    }
}

/// The forms 64-bit code adds: XMM8-XMM15 (REX.R/REX.B) and the MOVQ forms
/// with a 64-bit GPR. The guest runs the instruction decoded and prepared as
/// 64-bit code (register forms only: no memory, so no segmentation is
/// involved); the oracle is the host running the same form on XMM0-XMM7
/// with the same values.
#[cfg(target_arch = "x86_64")]
mod long_forms {
    use super::host;
    use super::simd::*;
    use iced_x86::{BlockEncoder, BlockEncoderOptions, Code, InstructionBlock, Register};
    use x86bt_cpu::interp::interpreter::{exec_one, Step};
    use x86bt_cpu::interp::sse::{set_xmm, xmm};
    use x86bt_cpu::interp::Insn;
    use x86bt_cpu::CpuState;
    use x86bt_machine::{GuestPhys, Machine};

    /// Runs `ins` (64-bit code) on a CPU whose XMM`i + 8` hold `img.xmm[i]`
    /// (and XMM0-7 `img.xmm` too), MMn `img.mm[n]`, RAX/RCX/RDX `img.gpr`.
    fn run64(ins: &iced_x86::Instruction, img: &Image) -> CpuState {
        let block = InstructionBlock::new(std::slice::from_ref(ins), 0x1000);
        let code = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)
            .expect("encodes")
            .code_buffer;
        let dec =
            iced_x86::Decoder::with_ip(64, &code, 0x1000, iced_x86::DecoderOptions::NONE).decode();
        assert_eq!(dec.code(), ins.code(), "{ins} decodes back");
        let mut m = Machine::flat(1 << 20).expect("machine");
        m.mem.load(GuestPhys(0x1000), &code).expect("code");
        let mut cpu = CpuState::reset();
        cpu.cr4 |= x86bt_cpu::mmu::cr4::OSFXSR;
        cpu.rip = 0x1000;
        for i in 0..8 {
            set_xmm(&mut cpu, i, img.xmm[i]);
            set_xmm(&mut cpu, i + 8, img.xmm[i]);
            cpu.fpu.regs[i].sig = img.mm[i];
        }
        cpu.gpr[..3].copy_from_slice(&img.gpr);
        let insn = Insn::prepare(&dec, 64);
        match exec_one(&mut cpu, &mut m, &insn) {
            Step::Fault(e) => panic!("{ins}: {e:?}"),
            _ => cpu,
        }
    }

    #[test]
    fn int_xmm_forms_upper_registers_match_host_on_lower() {
        let mut rng = Rng(0x64);
        let mut n = 0;
        for code in host::forms().into_iter().filter(|&c| !host::is_mmx(c)) {
            for _ in 0..20 {
                let img = host::image(&mut rng);
                let ops = host::operands(code, false, &mut rng);
                let low = host::build(code, &ops, &mut rng);
                let want = host_run(&low, &img);
                // Every XMM operand moved up by 8, or only the first, or
                // only the second (REX.R and REX.B separately).
                let which = rng.next() % 3;
                let mut high = low;
                let mut dst = None;
                for i in 0..high.op_count() {
                    let r = high.op_register(i);
                    if high.op_kind(i) == iced_x86::OpKind::Register && r.is_xmm() {
                        let up = which == 0 || (which == 1) == (i == 0);
                        if up {
                            high.set_op_register(i, r + 8);
                        }
                        if i == 0 {
                            dst = Some((r.number() + if up { 8 } else { 0 }, r.number()));
                        }
                    }
                }
                let cpu = run64(&high, &img);
                if code == Code::Ptest_xmm_xmmm128 {
                    assert_eq!(cpu.rflags & ARITH_FLAGS, want.flags, "{high}");
                } else if let Some((g, h)) = dst {
                    assert_eq!(xmm(&cpu, g), want.xmm[h], "{high} on {img:x?}");
                }
                n += 1;
            }
        }
        assert!(n > 1000);
    }

    #[test]
    fn mmx_movq_r64_forms_full_width_match_host() {
        let mut rng = Rng(0x65);
        for _ in 0..200 {
            let img = host::image(&mut rng);
            let mm = (rng.next() % 8) as u8;
            let gpr = [Register::RAX, Register::RCX, Register::RDX][(rng.next() % 3) as usize];
            let load = ins(Code::Movq_mm_rm64, &[Op::Mm(mm), Op::R(gpr)]);
            let want = host_run(&load, &img);
            let cpu = run64(&load, &img);
            assert_eq!(
                cpu.fpu.regs[usize::from(mm)].sig,
                want.mm[usize::from(mm)],
                "{load}"
            );
            let store = ins(Code::Movq_rm64_mm, &[Op::R(gpr), Op::Mm(mm)]);
            let want = host_run(&store, &img);
            let cpu = run64(&store, &img);
            assert_eq!(cpu.gpr[..3], want.gpr, "{store}");
            // MOVD r32, mm in 64-bit code zero-extends into the 64-bit GPR.
            let gpr32 = [Register::EAX, Register::ECX, Register::EDX][(rng.next() % 3) as usize];
            let movd = ins(Code::Movd_rm32_mm, &[Op::R(gpr32), Op::Mm(mm)]);
            let want = host_run(&movd, &img);
            let cpu = run64(&movd, &img);
            assert_eq!(cpu.gpr[..3], want.gpr, "{movd}");
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn int_vex_forms_raise_ud() {
    // The VEX encodings (AVX, AVX2) are not this CPU's: CPUID reports no AVX,
    // so they are undefined opcodes (SDM vol. 2A §2.4, "#UD if CPUID.AVX = 0"
    // in the exception class of every VEX form).
    use iced_x86::Code;
    use simd::*;
    let img = Image::default();
    for code in [
        Code::VEX_Vpaddb_xmm_xmm_xmmm128,
        Code::VEX_Vpmaddwd_xmm_xmm_xmmm128,
        Code::VEX_Vpshufb_xmm_xmm_xmmm128,
    ] {
        let v = ins(code, &[Op::X(0), Op::X(1), Op::X(2)]);
        host::assert_fault(&v, &img, |_| {}, x86bt_cpu::Exception::InvalidOpcode);
    }
    let v = ins(Code::VEX_Vptest_xmm_xmmm128, &[Op::X(0), Op::X(1)]);
    host::assert_fault(&v, &img, |_| {}, x86bt_cpu::Exception::InvalidOpcode);
}
