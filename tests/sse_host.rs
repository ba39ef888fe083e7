//! SIMD instructions against the host CPU (see `simd/mod.rs`). This file checks
//! the oracle itself on instructions x86bt has had since the 386, so a broken
//! harness cannot pass the SIMD tests.

#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(target_arch = "x86_64")]
#[test]
fn harness_host_and_guest_agree_on_an_integer_add() {
    use iced_x86::{Code, Register};
    use simd::*;
    let mut rng = Rng(0x1234_5678);
    for _ in 0..100 {
        let img = Image {
            gpr: [rng.next(), rng.next(), rng.next()],
            ..Image::default()
        };
        let add = ins(
            Code::Add_r32_rm32,
            &[Op::R(Register::EAX), Op::R(Register::ECX)],
        );
        check_against_host(&add, &img);
        let add_mem = ins(Code::Add_rm32_r32, &[Op::M, Op::R(Register::EDX)]);
        let img = Image {
            mem: rng.next128().to_le_bytes(),
            ..img
        };
        check_against_host(&add_mem, &img);
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn harness_host_sees_a_wrong_result() {
    use iced_x86::{Code, Register};
    use simd::*;
    // The host's SUB and the guest's ADD must not compare equal: the oracle
    // really looks at the result.
    let img = Image {
        gpr: [5, 3, 0],
        ..Image::default()
    };
    let sub = ins(
        Code::Sub_r32_rm32,
        &[Op::R(Register::EAX), Op::R(Register::ECX)],
    );
    let add = ins(
        Code::Add_r32_rm32,
        &[Op::R(Register::EAX), Op::R(Register::ECX)],
    );
    let host = host_run(&sub, &img);
    let guest = guest_run(&add, &img).expect("no fault");
    assert_eq!(host.gpr[0], 2);
    assert_eq!(guest.gpr[0], 8);
}
