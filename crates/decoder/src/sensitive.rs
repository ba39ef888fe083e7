//! The sensitivity column of the instruction table ([`crate::table`]): the
//! instructions that need the run loop or the interpreter's privileged
//! machinery, because they read or change state that translated code cannot
//! treat as plain registers and memory (mode, interrupt flag, segment caches,
//! descriptor tables, I/O, time, MSRs), or can unmask
//! interrupts.
//!
//! Every unit ends at the first sensitive instruction (it is the unit's last), so
//! the run loop sees any change of mode key or interrupt state before the next
//! unit is chosen. `iced_x86::Instruction::is_privileged` is not enough: several of
//! these run at CPL 3 (PUSHF, SGDT, SMSW, LAR, ...) and still need care.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

/// Why an instruction is sensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensitivity {
    /// Reads or writes the interrupt flag or the whole FLAGS image (CLI, STI, PUSHF,
    /// POPF, IRET's FLAGS part).
    Flags,
    /// Loads a segment register or changes the mode (MOV/POP seg, LxS, far
    /// transfers, CR writes, LMSW, descriptor-table loads).
    Mode,
    /// Reads system state a guest must not see raw (SGDT, SIDT, SLDT, STR, SMSW,
    /// LAR, LSL, VERR, VERW, PUSH seg, MOV from CR/DR).
    SystemRead,
    /// Port I/O.
    Io,
    /// Software interrupts and system calls.
    Interrupt,
    /// HLT and other instructions that stop or wait.
    Halt,
    /// CPUID, RDTSC, RDTSCP, RDPMC, RDMSR, WRMSR.
    Identity,
    /// TLB and cache control (INVLPG, INVD, WBINVD, CLTS).
    Cache,
    /// PAUSE, the spin-wait hint: with several vCPUs the run loop gives the
    /// next one its turn, so a vCPU that waits for another's store does not
    /// spin through its whole quantum (the run loop's pause-loop exit).
    Yield,
}

/// Classifies `ins`; `None` for an ordinary instruction.
pub fn classify(ins: &Instruction) -> Option<Sensitivity> {
    use Sensitivity::*;
    let s = match ins.mnemonic() {
        Mnemonic::Cli | Mnemonic::Sti | Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq => {
            Flags
        }
        Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => Flags,
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => Mode,
        Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss => Mode,
        Mnemonic::Lgdt | Mnemonic::Lidt | Mnemonic::Lldt | Mnemonic::Ltr | Mnemonic::Lmsw => Mode,
        Mnemonic::Swapgs | Mnemonic::Sysenter | Mnemonic::Sysexit | Mnemonic::Sysexitq => Mode,
        Mnemonic::Syscall | Mnemonic::Sysret | Mnemonic::Sysretq | Mnemonic::Rsm => Mode,
        Mnemonic::Sgdt | Mnemonic::Sidt | Mnemonic::Sldt | Mnemonic::Str | Mnemonic::Smsw => {
            SystemRead
        }
        Mnemonic::Lar | Mnemonic::Lsl | Mnemonic::Verr | Mnemonic::Verw | Mnemonic::Arpl => {
            SystemRead
        }
        Mnemonic::In | Mnemonic::Out | Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => Io,
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => Io,
        Mnemonic::Int | Mnemonic::Int1 | Mnemonic::Int3 | Mnemonic::Into => Interrupt,
        Mnemonic::Hlt | Mnemonic::Mwait | Mnemonic::Monitor => Halt,
        Mnemonic::Cpuid | Mnemonic::Rdtsc | Mnemonic::Rdtscp | Mnemonic::Rdpmc => Identity,
        Mnemonic::Rdmsr | Mnemonic::Wrmsr => Identity,
        Mnemonic::Invlpg | Mnemonic::Invd | Mnemonic::Wbinvd | Mnemonic::Clts => Cache,
        Mnemonic::Pause => Yield,
        Mnemonic::Mov => return mov_class(ins),
        Mnemonic::Push | Mnemonic::Pop => return stack_seg_class(ins),
        Mnemonic::Call | Mnemonic::Jmp => return far_class(ins),
        Mnemonic::Retf => Mode,
        _ => return None,
    };
    Some(s)
}

/// Whether `ins` ends its translation unit: every sensitive instruction but
/// IN and OUT, which go on inside the unit unless the port access changed
/// something the run loop checks, and CLI, STI, PUSHF and POPF, which go on
/// unless they made an interrupt deliverable or set TF (the engines end the
/// unit then, at run time; `Machine::port_attention`).
pub fn ends_unit(ins: &Instruction) -> bool {
    use Mnemonic as M;
    is_sensitive(ins)
        && !matches!(
            ins.mnemonic(),
            M::In
                | M::Out
                | M::Cli
                | M::Sti
                | M::Pushf
                | M::Pushfd
                | M::Pushfq
                | M::Popf
                | M::Popfd
                | M::Popfq
        )
}

/// Whether `ins` is in the sensitive table.
pub fn is_sensitive(ins: &Instruction) -> bool {
    classify(ins).is_some()
}

fn is_segment(r: Register) -> bool {
    r.is_segment_register()
}

fn is_control_or_debug(r: Register) -> bool {
    r.is_cr() || r.is_dr() || r.is_tr()
}

fn mov_class(ins: &Instruction) -> Option<Sensitivity> {
    let reg = |i: u32| {
        if ins.op_kind(i) == OpKind::Register {
            ins.op_register(i)
        } else {
            Register::None
        }
    };
    let (dst, src) = (reg(0), reg(1));
    if is_segment(dst) || is_control_or_debug(dst) {
        Some(Sensitivity::Mode)
    } else if is_segment(src) || is_control_or_debug(src) {
        Some(Sensitivity::SystemRead)
    } else {
        None
    }
}

fn stack_seg_class(ins: &Instruction) -> Option<Sensitivity> {
    if ins.op_count() == 1 && ins.op0_kind() == OpKind::Register && is_segment(ins.op0_register()) {
        Some(if ins.mnemonic() == Mnemonic::Pop {
            Sensitivity::Mode
        } else {
            Sensitivity::SystemRead
        })
    } else {
        None
    }
}

fn far_class(ins: &Instruction) -> Option<Sensitivity> {
    let far = matches!(
        ins.code(),
        Code::Call_ptr1616
            | Code::Call_ptr1632
            | Code::Jmp_ptr1616
            | Code::Jmp_ptr1632
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
            | Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
    );
    far.then_some(Sensitivity::Mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode16(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(16, bytes, 0, DecoderOptions::NONE).decode()
    }

    #[test]
    fn sensitive_covers_architecture_list() {
        // One encoding per family named in the architecture's sensitive list.
        let cases: &[&[u8]] = &[
            &[0x9D],             // popf
            &[0x9C],             // pushf
            &[0x0F, 0x01, 0x07], // sgdt [bx]
            &[0x0F, 0x01, 0x0F], // sidt [bx]
            &[0x0F, 0x00, 0xC0], // sldt ax
            &[0x0F, 0x00, 0xC8], // str ax
            &[0x0F, 0x01, 0xE0], // smsw ax
            &[0x0F, 0x02, 0xC0], // lar
            &[0x0F, 0x03, 0xC0], // lsl
            &[0x0F, 0x00, 0xE0], // verr
            &[0x0F, 0x00, 0xE8], // verw
            &[0x1E],             // push ds
            &[0x1F],             // pop ds
            &[0x8E, 0xD8],       // mov ds, ax
            &[0x8C, 0xD8],       // mov ax, ds
            &[0x9A, 0, 0, 0, 0], // call far ptr
            &[0xEA, 0, 0, 0, 0], // jmp far ptr
            &[0xFF, 0x1F],       // call far [bx]
            &[0xFF, 0x2F],       // jmp far [bx]
            &[0xCB],             // retf
            &[0xCD, 0x10],       // int 10h
            &[0xCF],             // iret
            &[0xE4, 0x60],       // in al, 60h
            &[0xEE],             // out dx, al
            &[0x6C],             // insb
            &[0x6E],             // outsb
            &[0xF4],             // hlt
            &[0x0F, 0xA2],       // cpuid
            &[0x0F, 0x31],       // rdtsc
            &[0x0F, 0x32],       // rdmsr
            &[0x0F, 0x30],       // wrmsr
            &[0x0F, 0x01, 0x38], // invlpg [bx+si]
            &[0x0F, 0x06],       // clts
            &[0x0F, 0x01, 0xF0], // lmsw ax
            &[0x0F, 0x22, 0xC0], // mov cr0, eax
            &[0x0F, 0x20, 0xC0], // mov eax, cr0
            &[0x0F, 0x23, 0xC0], // mov dr0, eax
            &[0x0F, 0x34],       // sysenter
            &[0x0F, 0x35],       // sysexit
            &[0xFA],             // cli
            &[0xFB],             // sti
            &[0x0F, 0x01, 0x17], // lgdt [bx]
            &[0x0F, 0x01, 0x1F], // lidt [bx]
            &[0xC5, 0x07],       // lds
            &[0x0F, 0xB2, 0x07], // lss
        ];
        for bytes in cases {
            let ins = decode16(bytes);
            assert!(
                is_sensitive(&ins),
                "{bytes:02x?} ({:?}) must be sensitive",
                ins.code()
            );
        }
        let syscall = Decoder::with_ip(64, &[0x0F, 0x05], 0, DecoderOptions::NONE).decode();
        let swapgs = Decoder::with_ip(64, &[0x0F, 0x01, 0xF8], 0, DecoderOptions::NONE).decode();
        let sysexitq = Decoder::with_ip(64, &[0x48, 0x0F, 0x35], 0, DecoderOptions::NONE).decode();
        assert!(is_sensitive(&syscall) && is_sensitive(&swapgs) && is_sensitive(&sysexitq));
    }

    #[test]
    fn sensitive_plain_alu_and_near_branches_are_not() {
        for bytes in [
            &[0x01, 0xC3][..],
            &[0x8B, 0x07],
            &[0xE8, 0, 0],
            &[0xFF, 0xD0],
            &[0xC3],
        ] {
            let ins = decode16(bytes);
            assert!(!is_sensitive(&ins), "{bytes:02x?} is ordinary");
        }
    }
}
