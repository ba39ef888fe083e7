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
//! PEXTRQ, PINSRQ, CRC32 r64, POPCNT r64, XSAVE64...) wait for 64-bit mode.

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
        if rng.next() % 8 == 0 {
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
}
