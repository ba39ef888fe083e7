//! The `data` SSE family against the host CPU (see `simd/mod.rs`) and the SDM.
//!
//! Covered, on seeded random operands, register and memory forms, and every
//! imm8 value where the immediate selects something: the SSE/SSE2/SSE3/SSE4.1
//! moves (MOVAPS ... MOVNTDQA, MOVSS/MOVSD, MOVD/MOVQ with r/m32 and XMM/m64,
//! MOVQ2DQ/MOVDQ2Q, MOVH/L PS/PD, MOVHLPS/MOVLHPS, MOVNTI/MOVNTQ, MOVDDUP/
//! MOVSLDUP/MOVSHDUP, MOVMSKPS/PD, PMOVMSKB), the logic ops, shuffles, unpacks,
//! blends (with the implicit XMM0), INSERTPS/EXTRACTPS, PEXTR*/PINSR* (MMX forms
//! too), PCMPESTRI/M and PCMPISTRI/M (all 128 meaningful imm8 values), CRC32 and
//! POPCNT (every size the 32-bit guest can encode), LDMXCSR/STMXCSR, the
//! fences, prefetches and CLFLUSH; MASKMOVQ/MASKMOVDQU and XSAVE/XSAVEOPT/
//! XRSTOR against the host through their own small host runs (their memory is
//! outside the harness's image). Faults (#UD, #NM, #GP, #MF) are checked
//! against the SDM's exception lists. The 64-bit-only forms (REX.W: MOVQ r64,
//! PEXTRQ, PINSRQ, CRC32 r64, POPCNT r64, PCMPESTRx64, CVT* r64...) are in
//! tests/sse_long.rs, with the guest in 64-bit mode.

#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(target_arch = "x86_64")]
mod host {
    use super::simd::*;
    use iced_x86::{Code, Instruction, Register};
    use x86bt_cpu::mmu::cr4;
    use x86bt_cpu::state::{cr0, CpuState};
    use x86bt_cpu::Exception;

    use Op::{Imm, Mm, M, R, X};

    /// A random image: XMM, MMX, memory and GPRs random, flags random,
    /// MXCSR at its default with all exceptions masked.
    fn random_image(rng: &mut Rng) -> Image {
        let mut img = Image::default();
        for x in &mut img.xmm {
            *x = rng.next128();
        }
        for x in &mut img.mm {
            *x = rng.next();
        }
        img.mem = rng.next128().to_le_bytes();
        img.gpr = [rng.next(), rng.next(), rng.next()];
        img.flags = rng.next() & ARITH_FLAGS;
        img
    }

    /// Runs `ins` against the host on `n` random images.
    fn check_random(ins: &Instruction, seed: u64, n: usize) {
        let mut rng = Rng(seed);
        for _ in 0..n {
            check_against_host(ins, &random_image(&mut rng));
        }
    }

    fn check_all(forms: &[(Code, &[Op])], seed: u64) {
        for (k, (code, ops)) in forms.iter().enumerate() {
            check_random(&ins(*code, ops), seed + k as u64, 40);
        }
    }

    #[test]
    fn moves_register_and_memory_forms_match_host() {
        use Code as C;
        let forms: &[(Code, &[Op])] = &[
            (C::Movaps_xmm_xmmm128, &[X(1), X(2)]),
            (C::Movaps_xmm_xmmm128, &[X(1), M]),
            (C::Movaps_xmmm128_xmm, &[M, X(3)]),
            (C::Movaps_xmmm128_xmm, &[X(4), X(3)]),
            (C::Movapd_xmm_xmmm128, &[X(1), M]),
            (C::Movapd_xmmm128_xmm, &[M, X(5)]),
            (C::Movdqa_xmm_xmmm128, &[X(0), M]),
            (C::Movdqa_xmm_xmmm128, &[X(0), X(7)]),
            (C::Movdqa_xmmm128_xmm, &[M, X(6)]),
            (C::Movups_xmm_xmmm128, &[X(1), M]),
            (C::Movups_xmmm128_xmm, &[M, X(2)]),
            (C::Movupd_xmm_xmmm128, &[X(2), X(1)]),
            (C::Movupd_xmmm128_xmm, &[M, X(2)]),
            (C::Movdqu_xmm_xmmm128, &[X(3), M]),
            (C::Movdqu_xmmm128_xmm, &[M, X(3)]),
            (C::Lddqu_xmm_m128, &[X(3), M]),
            (C::Movntps_m128_xmm, &[M, X(1)]),
            (C::Movntpd_m128_xmm, &[M, X(2)]),
            (C::Movntdq_m128_xmm, &[M, X(3)]),
            (C::Movntdqa_xmm_m128, &[X(4), M]),
            (C::Movss_xmm_xmmm32, &[X(1), X(2)]),
            (C::Movss_xmm_xmmm32, &[X(1), M]),
            (C::Movss_xmmm32_xmm, &[M, X(2)]),
            (C::Movss_xmmm32_xmm, &[X(3), X(2)]),
            (C::Movsd_xmm_xmmm64, &[X(1), X(2)]),
            (C::Movsd_xmm_xmmm64, &[X(1), M]),
            (C::Movsd_xmmm64_xmm, &[M, X(2)]),
            (C::Movsd_xmmm64_xmm, &[X(5), X(6)]),
            (C::Movd_xmm_rm32, &[X(1), R(Register::ECX)]),
            (C::Movd_xmm_rm32, &[X(1), M]),
            (C::Movd_rm32_xmm, &[R(Register::EDX), X(1)]),
            (C::Movd_rm32_xmm, &[M, X(1)]),
            (C::Movq_xmm_xmmm64, &[X(1), X(2)]),
            (C::Movq_xmm_xmmm64, &[X(1), M]),
            (C::Movq_xmmm64_xmm, &[M, X(2)]),
            (C::Movq_xmmm64_xmm, &[X(3), X(2)]),
            (C::Movq2dq_xmm_mm, &[X(1), Mm(2)]),
            (C::Movdq2q_mm_xmm, &[Mm(3), X(4)]),
            (C::Movhps_xmm_m64, &[X(1), M]),
            (C::Movhps_m64_xmm, &[M, X(1)]),
            (C::Movhpd_xmm_m64, &[X(2), M]),
            (C::Movhpd_m64_xmm, &[M, X(2)]),
            (C::Movlps_xmm_m64, &[X(1), M]),
            (C::Movlps_m64_xmm, &[M, X(1)]),
            (C::Movlpd_xmm_m64, &[X(2), M]),
            (C::Movlpd_m64_xmm, &[M, X(2)]),
            (C::Movhlps_xmm_xmm, &[X(1), X(2)]),
            (C::Movlhps_xmm_xmm, &[X(1), X(2)]),
            (C::Movnti_m32_r32, &[M, R(Register::EAX)]),
            (C::Movntq_m64_mm, &[M, Mm(5)]),
            (C::Movddup_xmm_xmmm64, &[X(1), X(2)]),
            (C::Movddup_xmm_xmmm64, &[X(1), M]),
            (C::Movsldup_xmm_xmmm128, &[X(1), X(2)]),
            (C::Movsldup_xmm_xmmm128, &[X(1), M]),
            (C::Movshdup_xmm_xmmm128, &[X(1), X(2)]),
            (C::Movshdup_xmm_xmmm128, &[X(1), M]),
            (C::Movmskps_r32_xmm, &[R(Register::EAX), X(1)]),
            (C::Movmskpd_r32_xmm, &[R(Register::ECX), X(2)]),
            (C::Pmovmskb_r32_xmm, &[R(Register::EDX), X(3)]),
            (C::Pmovmskb_r32_mm, &[R(Register::EAX), Mm(3)]),
        ];
        check_all(forms, 0x5EED_0001);
    }

    #[test]
    fn logic_and_unpacks_match_host() {
        use Code as C;
        let mut forms: Vec<(Code, &[Op])> = Vec::new();
        for code in [
            C::Andps_xmm_xmmm128,
            C::Andpd_xmm_xmmm128,
            C::Andnps_xmm_xmmm128,
            C::Andnpd_xmm_xmmm128,
            C::Orps_xmm_xmmm128,
            C::Orpd_xmm_xmmm128,
            C::Xorps_xmm_xmmm128,
            C::Xorpd_xmm_xmmm128,
            C::Unpcklps_xmm_xmmm128,
            C::Unpckhps_xmm_xmmm128,
            C::Unpcklpd_xmm_xmmm128,
            C::Unpckhpd_xmm_xmmm128,
        ] {
            forms.push((code, &[X(1), X(2)]));
            forms.push((code, &[X(3), M]));
        }
        check_all(&forms, 0x5EED_0100);
    }

    #[test]
    fn blendv_with_implicit_xmm0_matches_host() {
        use Code as C;
        for (k, code) in [
            C::Blendvps_xmm_xmmm128,
            C::Blendvpd_xmm_xmmm128,
            C::Pblendvb_xmm_xmmm128,
        ]
        .into_iter()
        .enumerate()
        {
            for (j, src) in [X(2), M].into_iter().enumerate() {
                let mut i = ins(code, &[X(1), src]);
                i.set_op2_kind(iced_x86::OpKind::Register);
                i.set_op2_register(Register::XMM0);
                check_random(&i, 0x5EED_0200 + 8 * k as u64 + j as u64, 40);
            }
        }
    }

    /// The implicit XMM0 of BLENDV (read) and PCMPxSTRM (written) where the
    /// instruction also names XMM0 as an operand: the translator renames the
    /// registers an instruction names, which must not move the implicit one
    /// (found by the difftest campaign: PBLENDVB XMM3, XMM0 took XMM3 as its
    /// mask).
    #[test]
    fn implicit_xmm0_also_named_matches_host() {
        use Code as C;
        let mut rng = Rng(0x5EED_0280);
        for code in [
            C::Blendvps_xmm_xmmm128,
            C::Blendvpd_xmm_xmmm128,
            C::Pblendvb_xmm_xmmm128,
        ] {
            for ops in [[X(3), X(0)], [X(0), X(3)], [X(0), X(0)]] {
                let mut i = ins(code, &ops);
                i.set_op2_kind(iced_x86::OpKind::Register);
                i.set_op2_register(Register::XMM0);
                for _ in 0..20 {
                    check_against_host(&i, &random_image(&mut rng));
                }
            }
        }
        for code in [C::Pcmpestrm_xmm_xmmm128_imm8, C::Pcmpistrm_xmm_xmmm128_imm8] {
            for ops in [[X(2), X(0)], [X(0), X(2)]] {
                for k in [0x00, 0x0C, 0x40, 0x4A] {
                    let i = ins(code, &[ops[0], ops[1], Imm(k)]);
                    for _ in 0..6 {
                        check_against_host(&i, &string_image(&mut rng));
                    }
                }
            }
        }
    }

    /// Every imm8 value of an immediate form, register and memory source.
    fn check_every_imm(code: Code, dst: Op, src: Op, seed: u64) {
        let mut rng = Rng(seed);
        for k in 0..=255u8 {
            let i = ins(code, &[dst, src, Imm(k)]);
            check_against_host(&i, &random_image(&mut rng));
        }
    }

    #[test]
    fn shuffles_blends_inserts_every_imm8_match_host() {
        use Code as C;
        let forms: &[(Code, Op, Op)] = &[
            (C::Shufps_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Shufps_xmm_xmmm128_imm8, X(1), M),
            (C::Shufpd_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Shufpd_xmm_xmmm128_imm8, X(1), M),
            (C::Pshufd_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Pshufd_xmm_xmmm128_imm8, X(1), M),
            (C::Pshufhw_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Pshufhw_xmm_xmmm128_imm8, X(1), M),
            (C::Pshuflw_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Pshuflw_xmm_xmmm128_imm8, X(1), M),
            (C::Pshufw_mm_mmm64_imm8, Mm(1), Mm(2)),
            (C::Pshufw_mm_mmm64_imm8, Mm(1), M),
            (C::Blendps_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Blendps_xmm_xmmm128_imm8, X(1), M),
            (C::Blendpd_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Blendpd_xmm_xmmm128_imm8, X(1), M),
            (C::Pblendw_xmm_xmmm128_imm8, X(1), X(2)),
            (C::Pblendw_xmm_xmmm128_imm8, X(1), M),
            (C::Insertps_xmm_xmmm32_imm8, X(1), X(2)),
            (C::Insertps_xmm_xmmm32_imm8, X(1), M),
            (C::Extractps_rm32_xmm_imm8, R(Register::EAX), X(2)),
            (C::Extractps_rm32_xmm_imm8, M, X(2)),
            (C::Pextrb_r32m8_xmm_imm8, R(Register::ECX), X(2)),
            (C::Pextrb_r32m8_xmm_imm8, M, X(2)),
            (C::Pextrw_r32m16_xmm_imm8, R(Register::EDX), X(2)),
            (C::Pextrw_r32m16_xmm_imm8, M, X(2)),
            (C::Pextrw_r32_xmm_imm8, R(Register::EAX), X(3)),
            (C::Pextrw_r32_mm_imm8, R(Register::EAX), Mm(3)),
            (C::Pextrd_rm32_xmm_imm8, R(Register::ECX), X(2)),
            (C::Pextrd_rm32_xmm_imm8, M, X(2)),
            (C::Pinsrb_xmm_r32m8_imm8, X(1), R(Register::EDX)),
            (C::Pinsrb_xmm_r32m8_imm8, X(1), M),
            (C::Pinsrw_xmm_r32m16_imm8, X(1), R(Register::EAX)),
            (C::Pinsrw_xmm_r32m16_imm8, X(1), M),
            (C::Pinsrw_mm_r32m16_imm8, Mm(1), R(Register::ECX)),
            (C::Pinsrw_mm_r32m16_imm8, Mm(1), M),
            (C::Pinsrd_xmm_rm32_imm8, X(1), R(Register::EDX)),
            (C::Pinsrd_xmm_rm32_imm8, X(1), M),
        ];
        for (k, &(code, d, s)) in forms.iter().enumerate() {
            check_every_imm(code, d, s, 0x5EED_0300 + k as u64);
        }
    }

    /// Strings with few distinct values (so that matches and ranges happen),
    /// some zero elements (implicit lengths), and lengths in EAX/EDX from -20
    /// to 20 (the absolute value saturates).
    fn string_image(rng: &mut Rng) -> Image {
        let mut img = random_image(rng);
        let small = |rng: &mut Rng| -> u128 {
            let mut v = 0u128;
            for i in 0..16 {
                let r = rng.next();
                let b: u128 = match r % 8 {
                    0 => 0,
                    1 => 0x80 | u128::from((r >> 8) as u8 & 3),
                    _ => u128::from((r >> 8) % 5) + 0x41,
                };
                v |= b << (8 * i);
            }
            v
        };
        img.xmm[1] = small(rng);
        img.xmm[2] = small(rng);
        img.mem = small(rng).to_le_bytes();
        img.gpr[0] = ((rng.next() % 41) as i64 - 20) as u64;
        img.gpr[2] = ((rng.next() % 41) as i64 - 20) as u64;
        if rng.next().is_multiple_of(8) {
            img.gpr[0] = 0x8000_0000;
        }
        img
    }

    #[test]
    fn string_compares_every_imm8_match_host() {
        use Code as C;
        let mut rng = Rng(0x5EED_0400);
        for code in [
            C::Pcmpestri_xmm_xmmm128_imm8,
            C::Pcmpestrm_xmm_xmmm128_imm8,
            C::Pcmpistri_xmm_xmmm128_imm8,
            C::Pcmpistrm_xmm_xmmm128_imm8,
        ] {
            for k in 0..128u8 {
                for src in [X(2), M] {
                    let i = ins(code, &[X(1), src, Imm(k)]);
                    for _ in 0..6 {
                        check_against_host(&i, &string_image(&mut rng));
                    }
                }
            }
        }
    }

    #[test]
    fn crc32_and_popcnt_every_size_match_host() {
        use Code as C;
        let forms: &[(Code, &[Op])] = &[
            (C::Crc32_r32_rm8, &[R(Register::EAX), R(Register::CL)]),
            (C::Crc32_r32_rm8, &[R(Register::EAX), R(Register::DH)]),
            (C::Crc32_r32_rm8, &[R(Register::EDX), M]),
            (C::Crc32_r32_rm16, &[R(Register::EAX), R(Register::CX)]),
            (C::Crc32_r32_rm16, &[R(Register::ECX), M]),
            (C::Crc32_r32_rm32, &[R(Register::EAX), R(Register::EDX)]),
            (C::Crc32_r32_rm32, &[R(Register::EAX), M]),
            (C::Popcnt_r16_rm16, &[R(Register::AX), R(Register::CX)]),
            (C::Popcnt_r16_rm16, &[R(Register::DX), M]),
            (C::Popcnt_r32_rm32, &[R(Register::EAX), R(Register::EDX)]),
            (C::Popcnt_r32_rm32, &[R(Register::ECX), M]),
        ];
        check_all(forms, 0x5EED_0500);
        // A zero source: ZF set.
        let img = Image {
            gpr: [0x1234, 0, 0xFFFF_0000],
            flags: ARITH_FLAGS,
            ..Image::default()
        };
        check_against_host(
            &ins(C::Popcnt_r32_rm32, &[R(Register::EAX), R(Register::ECX)]),
            &img,
        );
        check_against_host(
            &ins(C::Popcnt_r16_rm16, &[R(Register::AX), R(Register::DX)]),
            &img,
        );
    }

    #[test]
    fn mxcsr_load_store_fences_hints_match_host() {
        use Code as C;
        let mut rng = Rng(0x5EED_0600);
        for _ in 0..200 {
            let mut img = random_image(&mut rng);
            // Any value of the low word, DAZ included, loads.
            let v = (rng.next() as u32 & 0xFFFF) | 0x1F80;
            img.mem[..4].copy_from_slice(&v.to_le_bytes());
            check_against_host(&ins(C::Ldmxcsr_m32, &[M]), &img);
            img.mxcsr = v & !0x3F;
            check_against_host(&ins(C::Stmxcsr_m32, &[M]), &img);
        }
        for code in [C::Lfence, C::Sfence, C::Mfence] {
            check_random(&ins(code, &[]), 0x5EED_0700 + code as u64, 4);
        }
        for code in [
            C::Prefetchnta_m8,
            C::Prefetcht0_m8,
            C::Prefetcht1_m8,
            C::Prefetcht2_m8,
            C::Prefetchw_m8,
            C::Clflush_m8,
        ] {
            check_random(&ins(code, &[M]), 0x5EED_0700 + code as u64, 4);
        }
    }

    /// The default test state with some change.
    fn fault(i: &Instruction, setup: impl FnOnce(&mut CpuState)) -> Option<Exception> {
        let img = random_image(&mut Rng(0x5EED_0800));
        let (f, after) = guest_fault(i, &img, setup);
        if f.is_some() {
            // Precise: nothing changed.
            assert_eq!(after.xmm, img.xmm, "{i}");
            assert_eq!(after.mem, img.mem, "{i}");
            assert_eq!(after.mm, img.mm, "{i}");
            assert_eq!(
                after.gpr.map(|g| g & 0xFFFF_FFFF),
                img.gpr.map(|g| g & 0xFFFF_FFFF),
                "{i}"
            );
        }
        f
    }

    #[test]
    fn sse_forms_without_osfxsr_or_with_em_raise_ud() {
        use Code as C;
        for i in [
            ins(C::Movaps_xmm_xmmm128, &[X(1), X(2)]),
            ins(C::Movd_rm32_xmm, &[M, X(1)]),
            ins(C::Pshufd_xmm_xmmm128_imm8, &[X(1), M, Imm(0x1B)]),
            ins(C::Pcmpistri_xmm_xmmm128_imm8, &[X(1), X(2), Imm(0)]),
            ins(C::Ldmxcsr_m32, &[M]),
            ins(C::Movq2dq_xmm_mm, &[X(1), Mm(2)]),
        ] {
            assert_eq!(
                fault(&i, |c| c.cr4 &= !cr4::OSFXSR),
                Some(Exception::InvalidOpcode),
                "{i}"
            );
            assert_eq!(
                fault(&i, |c| c.cr0 |= cr0::EM),
                Some(Exception::InvalidOpcode),
                "{i}"
            );
            assert_eq!(
                fault(&i, |c| c.cr0 |= cr0::TS),
                Some(Exception::DeviceNotAvailable),
                "{i}"
            );
        }
    }

    #[test]
    fn mmx_forms_with_em_ts_or_pending_x87_fault() {
        use Code as C;
        for i in [
            ins(C::Pshufw_mm_mmm64_imm8, &[Mm(1), M, Imm(0x1B)]),
            ins(C::Pextrw_r32_mm_imm8, &[R(Register::EAX), Mm(1), Imm(2)]),
            ins(C::Movntq_m64_mm, &[M, Mm(1)]),
            ins(C::Pmovmskb_r32_mm, &[R(Register::EAX), Mm(1)]),
            ins(C::Movdq2q_mm_xmm, &[Mm(1), X(1)]),
        ] {
            assert_eq!(
                fault(&i, |c| c.cr0 |= cr0::EM),
                Some(Exception::InvalidOpcode),
                "{i}"
            );
            assert_eq!(
                fault(&i, |c| c.cr0 |= cr0::TS),
                Some(Exception::DeviceNotAvailable),
                "{i}"
            );
            assert_eq!(
                fault(&i, |c| c.fpu.sw |= x86bt_cpu::fpu::sw::ES),
                Some(Exception::FpuError),
                "{i}"
            );
        }
    }

    #[test]
    fn aligned_forms_misaligned_raise_gp_unaligned_forms_do_not() {
        use Code as C;
        let off = |c: &mut CpuState| c.gpr[7] += 4;
        for i in [
            ins(C::Movaps_xmm_xmmm128, &[X(1), M]),
            ins(C::Movdqa_xmmm128_xmm, &[M, X(1)]),
            ins(C::Movntps_m128_xmm, &[M, X(1)]),
            ins(C::Movntdqa_xmm_m128, &[X(1), M]),
            ins(C::Andps_xmm_xmmm128, &[X(1), M]),
            ins(C::Unpcklpd_xmm_xmmm128, &[X(1), M]),
            ins(C::Pshufd_xmm_xmmm128_imm8, &[X(1), M, Imm(3)]),
            ins(C::Movsldup_xmm_xmmm128, &[X(1), M]),
            ins(C::Blendps_xmm_xmmm128_imm8, &[X(1), M, Imm(3)]),
        ] {
            assert_eq!(fault(&i, off), Some(Exception::GeneralProtection(0)), "{i}");
        }
        for i in [
            ins(C::Movups_xmm_xmmm128, &[X(1), M]),
            ins(C::Movdqu_xmmm128_xmm, &[M, X(1)]),
            ins(C::Lddqu_xmm_m128, &[X(1), M]),
            ins(C::Movsd_xmm_xmmm64, &[X(1), M]),
            ins(C::Movhps_xmm_m64, &[X(1), M]),
            ins(C::Movddup_xmm_xmmm64, &[X(1), M]),
            ins(C::Insertps_xmm_xmmm32_imm8, &[X(1), M, Imm(0x10)]),
            ins(C::Pcmpistri_xmm_xmmm128_imm8, &[X(1), M, Imm(0)]),
        ] {
            assert_eq!(fault(&i, off), None, "{i}");
        }
    }

    #[test]
    fn ldmxcsr_reserved_bit_raises_gp() {
        let mut img = Image::default();
        img.mem[..4].copy_from_slice(&0x1_1F80u32.to_le_bytes());
        let (f, after) = guest_fault(&ins(Code::Ldmxcsr_m32, &[M]), &img, |_| {});
        assert_eq!(f, Some(Exception::GeneralProtection(0)));
        assert_eq!(after.mxcsr, 0x1F80);
    }

    #[test]
    fn clflush_beyond_limit_raises_gp_prefetch_does_not() {
        use x86bt_cpu::state::sreg;
        let lim = |c: &mut CpuState| c.seg[sreg::DS].limit = 0x1_0000;
        assert_eq!(
            fault(&ins(Code::Clflush_m8, &[M]), lim),
            Some(Exception::GeneralProtection(0))
        );
        assert_eq!(fault(&ins(Code::Prefetcht0_m8, &[M]), lim), None);
        assert_eq!(fault(&ins(Code::Prefetchw_m8, &[M]), lim), None);
    }

    #[test]
    fn popcnt_crc32_movnti_ignore_cr0_em_and_ts() {
        use Code as C;
        for i in [
            ins(C::Popcnt_r32_rm32, &[R(Register::EAX), M]),
            ins(C::Crc32_r32_rm8, &[R(Register::EAX), M]),
            ins(C::Movnti_m32_r32, &[M, R(Register::ECX)]),
        ] {
            assert_eq!(
                fault(&i, |c| {
                    c.cr0 |= cr0::EM | cr0::TS;
                    c.cr4 &= !cr4::OSFXSR;
                }),
                None,
                "{i}"
            );
        }
    }

    /// MASKMOVDQU xmm1, xmm2 (`N` = 16) or MASKMOVQ mm1, mm2 (8) on the host,
    /// storing through RDI = `mem`.
    fn host_maskmov<const N: usize>(data: u128, sel: u128, mem: &mut [u8; 16]) {
        let (d, k) = (data.to_le_bytes(), sel.to_le_bytes());
        if N == 16 {
            // SAFETY: loads 16 bytes from each local array into XMM1/XMM2 (named
            // as clobbered) and stores the selected bytes into `mem`'s 16 bytes
            // through RDI; nothing else is touched.
            unsafe {
                std::arch::asm!(
                    "movdqu xmm1, [{d}]",
                    "movdqu xmm2, [{k}]",
                    "maskmovdqu xmm1, xmm2",
                    d = in(reg) d.as_ptr(),
                    k = in(reg) k.as_ptr(),
                    in("rdi") mem.as_mut_ptr(),
                    out("xmm1") _,
                    out("xmm2") _,
                    options(nostack),
                );
            }
        } else {
            // SAFETY: as above with MM1/MM2 (clobbered) and 8 bytes; EMMS
            // leaves the x87 tags empty as the ABI requires.
            unsafe {
                std::arch::asm!(
                    "movq mm1, [{d}]",
                    "movq mm2, [{k}]",
                    "maskmovq mm1, mm2",
                    "emms",
                    d = in(reg) d.as_ptr(),
                    k = in(reg) k.as_ptr(),
                    in("rdi") mem.as_mut_ptr(),
                    out("mm1") _,
                    out("mm2") _,
                    options(nostack),
                );
            }
        }
    }

    #[test]
    fn maskmov_selected_bytes_match_host() {
        let mut rng = Rng(0x5EED_0900);
        for n in [8usize, 16] {
            for _ in 0..200 {
                let img = random_image(&mut rng);
                let (data, sel, i) = if n == 16 {
                    let i = Instruction::with_maskmovdqu(
                        32,
                        Register::XMM1,
                        Register::XMM2,
                        Register::None,
                    )
                    .expect("maskmovdqu");
                    (img.xmm[1], img.xmm[2], i)
                } else {
                    let i = Instruction::with_maskmovq(
                        32,
                        Register::MM1,
                        Register::MM2,
                        Register::None,
                    )
                    .expect("maskmovq");
                    (u128::from(img.mm[1]), u128::from(img.mm[2]), i)
                };
                let mut want = img.mem;
                if n == 16 {
                    host_maskmov::<16>(data, sel, &mut want);
                } else {
                    host_maskmov::<8>(data, sel, &mut want);
                }
                // The guest's EDI points at the image's memory bytes.
                let got = guest_run_with(&i, &img, |c| c.gpr[7] += MEM as u64)
                    .unwrap_or_else(|e| panic!("{i}: {e:?}"));
                assert_eq!(got.mem, want, "{i} data {data:x} mask {sel:x}");
                assert_eq!(got.xmm, img.xmm);
            }
        }
    }

    /// A 64-byte-aligned buffer for XSAVE areas and FXSAVE images.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Area([u8; 1024]);

    /// FXSAVE the host's state to a scratch area, FXRSTOR `base`, run `op`
    /// (XSAVE, XSAVEOPT or XRSTOR with EDX:EAX = `rfbm`) on `area`, FXSAVE to
    /// `out`, FXRSTOR the scratch area: the host's own state is as before.
    fn host_xop(op: &str, base: &Area, area: &mut Area, out: &mut Area, rfbm: u64) {
        let mut scratch = Area([0; 1024]);
        let (s, b, a, o) = (
            scratch.0.as_mut_ptr(),
            base.0.as_ptr(),
            area.0.as_mut_ptr(),
            out.0.as_mut_ptr(),
        );
        let (eax, edx) = (rfbm as u32, (rfbm >> 32) as u32);
        // SAFETY: every pointer is a live 64-byte-aligned 1024-byte buffer;
        // the x87/SSE state the block changes is saved first and restored
        // last from `scratch` (FXRSTOR restores x87, MXCSR and XMM0-15), and
        // the images loaded from `base` and `area` keep reserved MXCSR bits
        // clear, so no instruction faults.
        unsafe {
            match op {
                "xsave" => std::arch::asm!(
                    "fxsave [{s}]", "fxrstor [{b}]", "xsave [{a}]", "fxsave [{o}]", "fxrstor [{s}]",
                    s = in(reg) s, b = in(reg) b, a = in(reg) a, o = in(reg) o,
                    in("eax") eax, in("edx") edx, options(nostack),
                ),
                "xsaveopt" => std::arch::asm!(
                    "fxsave [{s}]", "fxrstor [{b}]", "xsaveopt [{a}]", "fxsave [{o}]", "fxrstor [{s}]",
                    s = in(reg) s, b = in(reg) b, a = in(reg) a, o = in(reg) o,
                    in("eax") eax, in("edx") edx, options(nostack),
                ),
                _ => std::arch::asm!(
                    "fxsave [{s}]", "fxrstor [{b}]", "xrstor [{a}]", "fxsave [{o}]", "fxrstor [{s}]",
                    s = in(reg) s, b = in(reg) b, a = in(reg) a, o = in(reg) o,
                    in("eax") eax, in("edx") edx, options(nostack),
                ),
            }
        }
    }

    /// Guest addresses of the three areas.
    const G_BASE: u64 = 0x4000;
    const G_AREA: u64 = 0x5000;
    const G_OUT: u64 = 0x6000;

    /// A flat 32-bit protected-mode guest with CR4.OSFXSR and OSXSAVE and
    /// XCR0 = 3.
    fn guest() -> (CpuState, x86bt_machine::Machine) {
        use x86bt_cpu::state::{seg_attr, sreg, Segment};
        let m = x86bt_machine::Machine::flat(1 << 20).expect("machine");
        let mut cpu = CpuState::reset();
        cpu.cr0 = cr0::PE | cr0::ET | cr0::NE | cr0::MP;
        cpu.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::OSXSAVE;
        cpu.xcr0 = 3;
        let flat = |code: bool| Segment {
            selector: if code { 8 } else { 16 },
            attrs: seg_attr::P
                | seg_attr::S
                | seg_attr::RW
                | seg_attr::ACCESSED
                | seg_attr::DB
                | seg_attr::G
                | if code { seg_attr::CODE } else { 0 },
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        for s in 0..6 {
            cpu.seg[s] = flat(false);
        }
        cpu.seg[sreg::CS] = flat(true);
        cpu.rip = 0x1000;
        (cpu, m)
    }

    /// Runs one 32-bit instruction given as bytes.
    fn gexec(
        cpu: &mut CpuState,
        m: &mut x86bt_machine::Machine,
        bytes: &[u8],
    ) -> Result<(), Exception> {
        use x86bt_cpu::interp::interpreter::{exec_one, Step};
        let d =
            iced_x86::Decoder::with_ip(32, bytes, cpu.rip, iced_x86::DecoderOptions::NONE).decode();
        assert!(!d.is_invalid(), "{bytes:x?}");
        let insn = x86bt_cpu::interp::Insn::prepare(&d, 32);
        match exec_one(cpu, m, &insn) {
            Step::Fault(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// `0F AE /r` with a disp32 memory operand at `addr`.
    fn op0fae(reg: u8, addr: u64) -> Vec<u8> {
        let mut v = vec![0x0F, 0xAE, (reg << 3) | 5];
        v.extend_from_slice(&(addr as u32).to_le_bytes());
        v
    }
    const FXSAVE: u8 = 0;
    const FXRSTOR: u8 = 1;
    const XSAVE: u8 = 4;
    const XRSTOR: u8 = 5;
    const XSAVEOPT: u8 = 6;

    /// The same run in the guest: FXRSTOR base, the operation, FXSAVE out.
    fn guest_xop(reg: u8, base: &Area, area: &Area, out: &Area, rfbm: u64) -> (Area, Area) {
        let (mut cpu, mut m) = guest();
        use x86bt_machine::GuestPhys;
        m.mem.load(GuestPhys(G_BASE), &base.0).expect("base");
        m.mem.load(GuestPhys(G_AREA), &area.0).expect("area");
        m.mem.load(GuestPhys(G_OUT), &out.0).expect("out");
        gexec(&mut cpu, &mut m, &op0fae(FXRSTOR, G_BASE)).expect("fxrstor");
        cpu.gpr[0] = rfbm & 0xFFFF_FFFF;
        cpu.gpr[2] = rfbm >> 32;
        gexec(&mut cpu, &mut m, &op0fae(reg, G_AREA)).expect("xsave family");
        gexec(&mut cpu, &mut m, &op0fae(FXSAVE, G_OUT)).expect("fxsave");
        let mut a = Area([0; 1024]);
        let mut o = Area([0; 1024]);
        m.mem.read_bytes(GuestPhys(G_AREA), &mut a.0);
        m.mem.read_bytes(GuestPhys(G_OUT), &mut o.0);
        (a, o)
    }

    /// A random FXSAVE image FXRSTOR accepts: random x87 control, status,
    /// tags, pointers and registers, a valid MXCSR, random XMM registers and
    /// software bytes; the reserved bytes of each register slot zero.
    fn random_fx(rng: &mut Rng) -> Area {
        let mut a = Area([0; 1024]);
        for b in a.0.iter_mut() {
            *b = rng.next() as u8;
        }
        let b = &mut a.0;
        b[5] = 0;
        b[6..8].copy_from_slice(&((rng.next() as u16) & 0x7FF).to_le_bytes());
        b[14..16].fill(0);
        b[22..24].fill(0);
        b[24..28].copy_from_slice(&((rng.next() as u32) & 0xFFFF).to_le_bytes());
        b[28..32].copy_from_slice(&0xFFFFu32.to_le_bytes());
        for i in 0..8 {
            b[32 + 16 * i + 10..32 + 16 * (i + 1)].fill(0);
        }
        a
    }

    /// Whether the host drops FCS and FDS (CPUID.(EAX=7,ECX=0):EBX[13]): it
    /// then saves them as zero, an implementation choice the SDM allows.
    fn host_drops_fcs_fds() -> bool {
        let r = std::arch::x86_64::__cpuid_count(7, 0);
        r.ebx & (1 << 13) != 0
    }

    /// Compares two FXSAVE-format images byte by byte, except FCS (12-13) and
    /// FDS (20-21) when the host drops them, and XMM8-15 (288-415): the host
    /// runs in 64-bit mode, where they exist, the guest in 32-bit mode, where
    /// the SDM says they are neither saved nor loaded. MXCSR_MASK bit 17 may
    /// be set on the host only: AMD hosts report MM (misaligned SSE mode;
    /// 2FFFFh on an AMD EPYC), a feature the guest's CPU, mask FFFFh, lacks.
    fn assert_legacy_eq(got: &[u8], want: &[u8], what: &str) {
        let skip = host_drops_fcs_fds();
        // AMD hosts save FOP, FIP and FDP (6-23) only while FSW.ES is set,
        // and zeros otherwise (AMD64 APM vol. 5, FXSAVE); the guest's CPU
        // saves them always, as Intel's do.
        let amd_skips_x87_pointers = host_is_amd() && want[2] & 0x80 == 0;
        for k in 0..512 {
            if (skip && matches!(k, 12 | 13 | 20 | 21)) || (288..416).contains(&k) {
                continue;
            }
            if k == 30 && got[k] == want[k] & !0x02 {
                continue;
            }
            if amd_skips_x87_pointers && (6..24).contains(&k) {
                continue;
            }
            assert_eq!(got[k], want[k], "{what}: byte {k}");
        }
    }

    #[test]
    fn xsave_and_xsaveopt_images_match_host() {
        let mut rng = Rng(0x5EED_0A00);
        for round in 0..60 {
            let base = random_fx(&mut rng);
            let mut area = Area([0; 1024]);
            for b in area.0.iter_mut() {
                *b = rng.next() as u8;
            }
            // XSTATE_BV bits beyond x87/SSE stay as they were (bits 0-1 of
            // the initial value random).
            let opt = round % 3 == 2;
            for rfbm in [1u64, 2, 3] {
                let mut want = area;
                let mut scratch_out = Area([0; 1024]);
                host_xop(
                    if opt { "xsaveopt" } else { "xsave" },
                    &base,
                    &mut want,
                    &mut scratch_out,
                    rfbm,
                );
                let reg = if opt { XSAVEOPT } else { XSAVE };
                let (got, _) = guest_xop(reg, &base, &area, &Area([0; 1024]), rfbm);
                let what = format!("{} rfbm {rfbm}", if opt { "xsaveopt" } else { "xsave" });
                assert_legacy_eq(&got.0, &want.0, &what);
                // Outside 64-bit mode XMM8-15's bytes are left as they were.
                assert_eq!(
                    &got.0[288..416],
                    &area.0[288..416],
                    "{what}: XMM8-15 untouched"
                );
                // XSTATE_BV: bits outside RFBM kept; x86bt sets every RFBM bit
                // (XINUSE taken as all ones), which the host's bit, when set,
                // must agree with.
                let bv = |a: &Area| u64::from_le_bytes(a.0[512..520].try_into().expect("8"));
                let (g, w) = (bv(&got), bv(&want));
                assert_eq!(g & !rfbm, w & !rfbm, "{what}: XSTATE_BV");
                assert_eq!(g & rfbm, rfbm, "{what}: XSTATE_BV");
                assert_eq!(w & rfbm & !g, 0, "{what}: XSTATE_BV");
                assert_eq!(&got.0[520..], &want.0[520..], "{what}: after the header");
            }
        }
    }

    #[test]
    fn xrstor_loads_or_inits_each_component_as_host() {
        let mut rng = Rng(0x5EED_0B00);
        for _ in 0..60 {
            let base = random_fx(&mut rng);
            let mut area = random_fx(&mut rng);
            area.0[512..1024].fill(0);
            for xstate_bv in 0..4u64 {
                area.0[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
                for rfbm in [1u64, 2, 3] {
                    let mut a = area;
                    let mut want = Area([0; 1024]);
                    host_xop("xrstor", &base, &mut a, &mut want, rfbm);
                    let (_, got) = guest_xop(XRSTOR, &base, &area, &Area([0; 1024]), rfbm);
                    // FXSAVE writes 0-415 only; the rest stays zero in both.
                    assert_legacy_eq(
                        &got.0,
                        &want.0,
                        &format!("xrstor xstate_bv {xstate_bv} rfbm {rfbm}"),
                    );
                }
            }
        }
    }

    /// The guest's result of one XSAVE-family instruction on a valid area at
    /// `addr`, after `setup`.
    fn xfault(
        reg: u8,
        addr: u64,
        setup: impl FnOnce(&mut CpuState, &mut [u8]),
    ) -> Option<Exception> {
        let (mut cpu, mut m) = guest();
        let mut area = random_fx(&mut Rng(0x5EED_0C00));
        area.0[512..1024].fill(0);
        area.0[512] = 3;
        cpu.gpr[0] = 3;
        setup(&mut cpu, &mut area.0);
        m.mem
            .load(x86bt_machine::GuestPhys(addr), &area.0)
            .expect("area");
        let before = cpu.fx;
        let f = gexec(&mut cpu, &mut m, &op0fae(reg, addr)).err();
        if f.is_some() {
            assert_eq!(cpu.fx, before, "a faulting XRSTOR loads nothing");
        }
        f
    }

    #[test]
    fn xsave_family_faults_follow_the_sdm() {
        for reg in [XSAVE, XSAVEOPT, XRSTOR] {
            assert_eq!(xfault(reg, G_AREA, |_, _| {}), None);
            assert_eq!(
                xfault(reg, G_AREA + 16, |_, _| {}),
                Some(Exception::GeneralProtection(0)),
                "not 64-byte aligned"
            );
            assert_eq!(
                xfault(reg, G_AREA, |c, _| c.cr4 &= !cr4::OSXSAVE),
                Some(Exception::InvalidOpcode)
            );
            assert_eq!(
                xfault(reg, G_AREA, |c, _| c.cr0 |= cr0::TS),
                Some(Exception::DeviceNotAvailable)
            );
        }
        let bad_headers: [fn(&mut [u8]); 5] = [
            |a| a[512] = 4,    // XSTATE_BV bit 2, not in XCR0
            |a| a[527] = 0x80, // XCOMP_BV[63]: compacted form
            |a| a[520] = 1,    // XCOMP_BV nonzero
            |a| a[530] = 1,    // header bytes 16-23 nonzero
            |a| a[26] = 1,     // MXCSR bit 16: reserved
        ];
        for (k, bad) in bad_headers.iter().enumerate() {
            assert_eq!(
                xfault(XRSTOR, G_AREA, |_, a| bad(a)),
                Some(Exception::GeneralProtection(0)),
                "bad header {k}"
            );
        }
        // XSTATE_BV bit 1 with XCR0 = 1: #GP.
        assert_eq!(
            xfault(XRSTOR, G_AREA, |c, _| c.xcr0 = 1),
            Some(Exception::GeneralProtection(0))
        );
        // Header bytes 24-63 are not checked.
        assert_eq!(xfault(XRSTOR, G_AREA, |_, a| a[540] = 1), None);
    }

    /// Runs XGETBV (`0F 01 D0`) or XSETBV (`0F 01 D1`) after `setup`.
    fn xcr(setbv: bool, setup: impl FnOnce(&mut CpuState)) -> (Result<(), Exception>, CpuState) {
        let (mut cpu, mut m) = guest();
        cpu.xcr0 = 1;
        setup(&mut cpu);
        let r = gexec(&mut cpu, &mut m, &[0x0F, 0x01, 0xD0 | u8::from(setbv)]);
        (r, cpu)
    }

    #[test]
    fn xgetbv_xsetbv_follow_the_sdm() {
        let (r, c) = xcr(false, |c| c.gpr = [!0; 16].map(|_| 0xFFFF_FFFF_0000_0000));
        assert_eq!(r, Ok(()));
        assert_eq!((c.gpr[0], c.gpr[2]), (1, 0), "XCR0 reset value 1");
        let (r, c) = xcr(true, |c| {
            c.gpr[0] = 3;
            c.gpr[1] = 0;
            c.gpr[2] = 0;
        });
        assert_eq!(r, Ok(()));
        assert_eq!(c.xcr0, 3);
        let gp = Err(Exception::GeneralProtection(0));
        for (eax, ecx, edx) in [
            (2u64, 0u64, 0u64),
            (7, 0, 0),
            (3, 1, 0),
            (3, 0, 1),
            (0, 0, 0),
        ] {
            let (r, c) = xcr(true, |c| {
                c.gpr[0] = eax;
                c.gpr[1] = ecx;
                c.gpr[2] = edx;
            });
            assert_eq!(r, gp, "xsetbv eax {eax} ecx {ecx} edx {edx}");
            assert_eq!(c.xcr0, 1);
        }
        let (r, _) = xcr(false, |c| c.gpr[1] = 1);
        assert_eq!(r, gp, "xgetbv ecx 1");
        // CPL 3: #GP.
        let (r, _) = xcr(true, |c| {
            c.gpr[0] = 3;
            c.gpr[1] = 0;
            c.seg[x86bt_cpu::state::sreg::SS].attrs |= 3 << 5;
        });
        assert_eq!(r, gp);
        for setbv in [false, true] {
            let (r, _) = xcr(setbv, |c| c.cr4 &= !cr4::OSXSAVE);
            assert_eq!(r, Err(Exception::InvalidOpcode));
        }
    }

    #[test]
    fn mmx_form_with_faulting_memory_keeps_x87_top_and_tags() {
        use x86bt_cpu::state::sreg;
        let (mut cpu, mut m) = guest();
        cpu.seg[sreg::DS].limit = 0xFFFF;
        cpu.fpu.top = 3;
        cpu.fpu.tw = 0xFFFF;
        // PSHUFW mm1, [0x10000], 1Bh: beyond the DS limit.
        let r = gexec(&mut cpu, &mut m, &[0x0F, 0x70, 0x0D, 0, 0, 1, 0, 0x1B]);
        assert_eq!(r, Err(Exception::GeneralProtection(0)));
        assert_eq!((cpu.fpu.top, cpu.fpu.tw), (3, 0xFFFF));
        // Within the limit it runs, and the MMX transition happens (SDM vol. 1
        // Table 9-2: TOP 0, all tags valid).
        let r = gexec(&mut cpu, &mut m, &[0x0F, 0x70, 0x0D, 0, 0xF0, 0, 0, 0x1B]);
        assert_eq!(r, Ok(()));
        assert_eq!((cpu.fpu.top, cpu.fpu.tw), (0, 0));
    }

    #[test]
    fn pcmpistri_misaligned_memory_runs_on_host_and_guest() {
        // The SDM exempts the SSE4.2 string compares from the 16-byte
        // alignment check; the host confirms it on a misaligned operand.
        #[repr(C, align(16))]
        struct Buf([u8; 32]);
        let buf = Buf([0x41; 32]);
        let ecx: u64;
        // SAFETY: reads 16 bytes at buf+1, inside the 32-byte buffer; XMM1
        // is named as clobbered; ECX is an output; flags are clobbered by
        // default in Rust inline assembly.
        unsafe {
            std::arch::asm!(
                "pxor xmm1, xmm1",
                "pcmpistri xmm1, [{p}], 0",
                p = in(reg) buf.0.as_ptr().add(1),
                out("rcx") ecx,
                out("xmm1") _,
                options(nostack, readonly),
            );
        }
        assert_eq!(ecx, 16, "empty set: no match, index 16");
        let i = ins(Code::Pcmpistri_xmm_xmmm128_imm8, &[X(1), M, Imm(0)]);
        let img = Image {
            mem: [0x41; 16],
            ..Image::default()
        };
        let got = guest_run_with(&i, &img, |c| c.gpr[7] += 1).expect("no #GP");
        assert_eq!(got.gpr[1], 16);
    }
}
