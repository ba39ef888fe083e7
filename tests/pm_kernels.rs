//! Protected-mode test kernels: Multiboot images assembled here with iced-x86, booted
//! by the real `x86bt run --kernel`, each printing one `PASS`/`FAIL` line per check
//! on COM1 and leaving through the debug-exit port (see `pm/mod.rs` for the shared
//! runtime, memory map and GDT).
//!
//! One kernel per area: segment-load faults, privilege transitions through gates,
//! task switches, virtual-8086 mode, paging faults and TLB semantics,
//! self-modifying code through a second linear alias, mixed-size stacks (POP SS,
//! ENTER, LEAVE), and precise ENTER faults with a 16-bit TSS. Every expected value
//! comes from the Intel SDM (cited per check), never from running x86bt.

mod pm;

use iced_x86::code_asm::*;
use pm::*;

// ================================================================================
// Segment-load faults
// ================================================================================

/// The LDT descriptor (GDT index 6); the LDT holds two flat data descriptors.
const SEL_LDT: u16 = 0x30;
/// A writable data descriptor with P = 0.
const SEL_NOT_PRESENT: u16 = 0x38;
/// A read-only data segment.
const SEL_READ_ONLY: u16 = 0x40;
/// An expand-down writable data segment (B = 1, byte granular, limit 0xFFF).
const SEL_EXPAND_DOWN: u16 = 0x48;
/// An execute-only code segment.
const SEL_EXEC_ONLY: u16 = 0x50;
/// An execute/read code segment.
const SEL_READABLE_CODE: u16 = 0x58;
/// A writable data segment at base 0 whose limit is [`SMALL_LIMIT`].
const SEL_SMALL: u16 = 0x60;
/// LDT index 0 (TI = 1).
const SEL_LDT_DATA: u16 = 0x04;
/// LDT index 2 with RPL 3: beyond the two-entry LDT.
const SEL_LDT_BEYOND: u16 = 0x17;
/// GDT index 32 with RPL 3: beyond GDTR.limit.
const SEL_GDT_BEYOND: u16 = 0x103;
/// The last valid offset of [`SEL_SMALL`]: limit 0x17F in 4 KiB units.
const SMALL_LIMIT: u32 = 0x17_FFFF;
/// The expand-down segment's limit: offsets 0x1000..=0xFFFF_FFFF are valid.
const EXPAND_DOWN_LIMIT: u32 = 0xFFF;
/// A dword the segment checks read back.
const SEED: u32 = 0x5EED_5EED;

fn segment_tables(k: &mut Kernel) {
    let flat = |access| segment(0, 0xF_FFFF, desc::S | access, desc::G | desc::DB);
    k.gdt(6, segment(LDT, 15, desc::P | desc::LDT, 0));
    k.gdt(7, flat(desc::DATA_RW));
    k.gdt(8, flat(desc::P | desc::DATA_RO));
    k.gdt(
        9,
        segment(
            0,
            EXPAND_DOWN_LIMIT,
            desc::P | desc::S | desc::DATA_RW_DOWN,
            desc::DB,
        ),
    );
    k.gdt(10, flat(desc::P | desc::CODE_X));
    k.gdt(11, flat(desc::P | desc::CODE_XR));
    k.gdt(
        12,
        segment(
            0,
            SMALL_LIMIT >> 12,
            desc::P | desc::S | desc::DATA_RW,
            desc::G | desc::DB,
        ),
    );
    k.poke64(LDT, flat(desc::P | desc::DATA_RW));
    k.poke64(LDT + 8, flat(desc::P | desc::DATA_RW));
}

/// A case that loads `selector` into `sreg` at ring 0 and expects `vector` with
/// `error` at that MOV.
fn load_fault(
    k: &mut Kernel,
    name: &str,
    sreg: AsmRegisterSegment,
    selector: u16,
    vector: u32,
    error: u16,
) -> AsmResult {
    k.case(name, |k, c| {
        k.arm(c)?;
        k.mov(ax, u32::from(selector))?;
        k.mark(c)?;
        k.mov(sreg, ax)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector, u32::from(error))
    })
}

/// A case that loads `sreg` with `selector` (which must succeed), then faults with
/// `vector` and error code 0 on the memory access `access` emits.
fn access_fault(
    k: &mut Kernel,
    name: &str,
    load: (AsmRegisterSegment, u16),
    vector: u32,
    access: fn(&mut Kernel) -> AsmResult,
) -> AsmResult {
    k.case(name, |k, c| {
        k.arm(c)?;
        k.mov(ax, u32::from(load.1))?;
        k.mov(load.0, ax)?;
        k.mark(c)?;
        access(k)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector, 0)
    })
}

/// Segment-register loads that fault: name, register, selector, vector, error code.
///
/// SDM vol. 2B MOV, "Operation": for DS, ES, FS and GS, an index outside the
/// descriptor table limit, or a descriptor that is not data or readable code, is
/// #GP(selector), and a not-present one #NP(selector). For SS, NULL is #GP(0); an
/// index beyond the limit, RPL != CPL, a descriptor that is not writable data, or
/// DPL != CPL is #GP(selector); not present is #SS(selector). The error code holds
/// the selector's index and TI; its low two bits are EXT and IDT, never the RPL
/// (vol. 3A §6.13).
#[rustfmt::skip]
const LOAD_FAULTS: [(&str, AsmRegisterSegment, u16, u32, u16); 10] = [
    ("seg_ds_beyond_gdt_limit_gp", ds, SEL_GDT_BEYOND, vector::GP, 0x100),
    ("seg_ds_beyond_ldt_limit_gp", ds, SEL_LDT_BEYOND, vector::GP, 0x14),
    ("seg_ds_not_present_np", ds, SEL_NOT_PRESENT, vector::NP, SEL_NOT_PRESENT),
    ("seg_ds_system_descriptor_gp", ds, TSS_SEL, vector::GP, TSS_SEL),
    ("seg_ds_execute_only_code_gp", ds, SEL_EXEC_ONLY, vector::GP, SEL_EXEC_ONLY),
    ("seg_ss_null_gp", ss, 0, vector::GP, 0),
    ("seg_ss_read_only_gp", ss, SEL_READ_ONLY, vector::GP, SEL_READ_ONLY),
    ("seg_ss_code_segment_gp", ss, SEL_READABLE_CODE, vector::GP, SEL_READABLE_CODE),
    ("seg_ss_rpl_not_cpl_gp", ss, DATA0 | 3, vector::GP, DATA0),
    ("seg_ss_not_present_ss", ss, SEL_NOT_PRESENT, vector::SS, SEL_NOT_PRESENT),
];

fn segment_faults(k: &mut Kernel) -> AsmResult {
    segment_tables(k);
    k.mov(ax, u32::from(SEL_LDT))?;
    k.lldt(ax)?;
    k.mov(dword_ptr(SCRATCH), SEED)?;

    for &(name, sreg, selector, vector, error) in LOAD_FAULTS.iter() {
        load_fault(k, name, sreg, selector, vector, error)?;
    }

    k.case("seg_ldt_selector_loads", |k, c| {
        k.mov(ax, u32::from(SEL_LDT_DATA))?;
        k.mov(ds, ax)?;
        k.mov(ebx, dword_ptr(SCRATCH))?;
        k.mov(cx, ds)?;
        k.movzx(ecx, cx)?;
        k.flat_data_segments()?;
        k.expect_reg(c, ebx, SEED)?;
        k.expect_reg(c, ecx, u32::from(SEL_LDT_DATA))
    })?;

    // MOV at CPL 3 of a data selector whose DPL (0) is below CPL and RPL:
    // #GP(selector); a DPL-3 data segment loads.
    k.case("seg_ring3_ds_dpl0_gp", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        k.mov(ax, u32::from(DATA3))?;
        k.mov(ds, ax)?;
        k.mov(bx, ds)?;
        k.mov(ax, u32::from(DATA0 | 3))?;
        k.mark(c)?;
        k.mov(ds, ax)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::GP, u32::from(DATA0))?;
        k.expect16(c, rec::CS, CODE3)?;
        k.expect16(c, rec::EBX, DATA3)
    })?;

    // SDM vol. 3A §5.3: in an expand-down segment the valid offsets are limit+1 to
    // 0xFFFFFFFF (B = 1); any byte at or below the limit is #GP(0) (not SS).
    access_fault(
        k,
        "seg_expand_down_below_limit_gp",
        (es, SEL_EXPAND_DOWN),
        vector::GP,
        |k| k.mov(eax, dword_ptr(0x800u32).es()),
    )?;
    access_fault(
        k,
        "seg_expand_down_straddling_limit_gp",
        (es, SEL_EXPAND_DOWN),
        vector::GP,
        |k| k.mov(eax, dword_ptr(EXPAND_DOWN_LIMIT - 1).es()),
    )?;
    k.case("seg_expand_down_above_limit_ok", |k, c| {
        k.mov(dword_ptr(EXPAND_DOWN_LIMIT + 1), 0x00DD_BA11u32)?;
        k.mov(ax, u32::from(SEL_EXPAND_DOWN))?;
        k.mov(es, ax)?;
        k.mov(ebx, dword_ptr(EXPAND_DOWN_LIMIT + 1).es())?;
        k.flat_data_segments()?;
        k.expect_reg(c, ebx, 0x00DD_BA11)
    })?;

    // §5.3: every byte of the access must lie within the limit; outside SS it is
    // #GP(0), through SS it is #SS(0) (MOV "Protected Mode Exceptions").
    access_fault(
        k,
        "seg_ds_straddling_limit_gp",
        (ds, SEL_SMALL),
        vector::GP,
        |k| k.mov(eax, dword_ptr(SMALL_LIMIT - 2)),
    )?;
    k.case("seg_ss_limit_violation_ss", |k, c| {
        k.arm(c)?;
        k.mov(ax, u32::from(SEL_SMALL))?;
        k.mov(ss, ax)?;
        k.mov(ebp, SMALL_LIMIT + 1)?;
        k.mark(c)?;
        k.mov(eax, dword_ptr(ebp))?; // EBP-based: the SS segment
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::SS, 0)
    })?;

    // §5.5 / MOV exceptions: writing a read-only data segment or any code segment
    // is #GP(0); reading them works.
    k.case("seg_write_read_only_gp", |k, c| {
        k.arm(c)?;
        k.mov(ax, u32::from(SEL_READ_ONLY))?;
        k.mov(es, ax)?;
        k.mov(ebx, dword_ptr(SCRATCH).es())?;
        k.mark(c)?;
        k.mov(dword_ptr(SCRATCH).es(), ebx)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::GP, 0)?;
        k.expect32(c, rec::EBX, SEED)
    })?;
    k.case("seg_write_readable_code_gp", |k, c| {
        k.arm(c)?;
        k.mov(ax, u32::from(SEL_READABLE_CODE))?;
        k.mov(ds, ax)?;
        k.mov(ebx, dword_ptr(SCRATCH))?;
        k.mark(c)?;
        k.mov(dword_ptr(SCRATCH), ebx)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::GP, 0)?;
        k.expect32(c, rec::EBX, SEED)
    })?;

    // Loading NULL into DS is allowed; a memory reference through it is #GP(0)
    // (MOV "Protected Mode Exceptions").
    k.case("seg_null_ds_access_gp", |k, c| {
        k.arm(c)?;
        k.xor(eax, eax)?;
        k.mov(ds, ax)?;
        k.mark(c)?;
        k.mov(ebx, dword_ptr(SCRATCH))?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::GP, 0)
    })?;
    k.exit()
}

#[test]
fn pm_kernel_segment_faults_all_pass() {
    assert_all_pass("segment_faults", &build(segment_faults));
}

// ================================================================================
// Privilege transitions through gates
// ================================================================================

/// A 32-bit call gate (GDT index 6, DPL 3) to ring 0 that copies two dwords.
const SEL_CALL_GATE: u16 = 0x30 | 3;
/// ESP at the call gate's ring-0 entry.
const GATE_ESP: u32 = SCRATCH;
/// The six dwords at that ESP.
const GATE_STACK: u32 = SCRATCH + 0x10;
/// CS and SS at the entry.
const GATE_CS: u32 = SCRATCH + 0x30;
const GATE_SS: u32 = SCRATCH + 0x34;
/// The call gate's parameters, pushed in this order.
const PARAM1: u32 = 0x1111_1111;
const PARAM2: u32 = 0x2222_2222;

/// A case that runs `body` at ring 3 (IOPL 0) and expects #GP(`error`) at the
/// instruction `body` marks.
fn ring3_gp(
    k: &mut Kernel,
    name: &str,
    error: u32,
    body: fn(&mut Kernel, &Case) -> AsmResult,
) -> AsmResult {
    k.case(name, |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        body(k, c)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::GP, error)?;
        k.expect16(c, rec::CS, CODE3)
    })
}

/// Ring-3 code that reads CS, SS, ESP, DS and ES into BX, CX, EDX, SI and DI.
fn read_ring3_state(k: &mut Kernel) -> AsmResult {
    k.mov(bx, cs)?;
    k.mov(cx, ss)?;
    k.mov(edx, esp)?;
    k.mov(si, ds)?;
    k.mov(di, es)
}

fn privilege_transitions(k: &mut Kernel) -> AsmResult {
    let entry = k.addr("gate_entry");
    k.gdt(6, gate(CODE0, entry, desc::CALL_GATE, 3, 2));

    // SDM vol. 2A IRET, "RETURN-TO-OUTER-PRIVILEGE-LEVEL": CS:EIP, EFLAGS and SS:ESP
    // come from the frame, and DS, ES, FS and GS holding a data segment whose DPL is
    // below the new CPL become NULL.
    k.case("priv_iret_to_ring3_loads_outer_state", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        read_ring3_state(k)?;
        k.int(0x80)?;
        k.landing(c)?;
        k.expect32(c, rec::VECTOR, 0x80)?;
        k.expect16(c, rec::EBX, CODE3)?;
        k.expect16(c, rec::ECX, DATA3)?;
        k.expect32(c, rec::EDX, ESP3_TOP)?;
        k.expect16(c, rec::ESI, 0)?;
        k.expect16(c, rec::EDI, 0)?;
        k.expect16(c, rec::ENTRY_FS, 0)?;
        k.expect16(c, rec::ENTRY_GS, 0)
    })?;

    // RET, "RETURN-TO-OUTER-PRIVILEGE-LEVEL": the same for a far return.
    k.case("priv_retf_to_ring3_loads_outer_state", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        let eip = k.addr(&ring3);
        k.push(u32::from(DATA3))?;
        k.push(ESP3_TOP)?;
        k.push(u32::from(CODE3))?;
        k.push(eip)?;
        k.retf()?;
        k.at(&ring3)?;
        read_ring3_state(k)?;
        k.int(0x80)?;
        k.landing(c)?;
        k.expect32(c, rec::VECTOR, 0x80)?;
        k.expect16(c, rec::EBX, CODE3)?;
        k.expect16(c, rec::ECX, DATA3)?;
        k.expect32(c, rec::EDX, ESP3_TOP)?;
        k.expect16(c, rec::ESI, 0)
    })?;

    // INT n, "INTER-PRIVILEGE-LEVEL-INTERRUPT", and vol. 3A §6.12.1 Figure 6-4:
    // through a DPL-3 gate to ring 0 the CPU takes SS0:ESP0 from the TSS and pushes
    // SS, ESP, EFLAGS, CS and the EIP of the next instruction.
    k.case("priv_int_dpl3_gate_switches_to_tss_stack", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        k.stc()?;
        k.int(0x80)?;
        k.landing(c)?;
        let next = k.addr(&c.end());
        k.expect_fault(c, 0x80, 0, next)?;
        k.expect16(c, rec::CS, CODE3)?;
        k.expect32(c, rec::EFLAGS, eflags::FIXED | eflags::CF)?;
        k.expect32(c, rec::ESP, ESP3_TOP)?;
        k.expect16(c, rec::SS, DATA3)?;
        k.expect32(c, rec::FRAME, ESP0_TOP - 20)
    })?;

    // INT n: "IF software interrupt AND gate DPL < CPL THEN
    // #GP(error_code(vector_number,1,0))", i.e. vector * 8 + 2 (IDT bit, EXT = 0).
    ring3_gp(
        k,
        "priv_int_dpl0_gate_from_ring3_gp",
        0x81 * 8 + 2,
        |k, c| {
            k.mark(c)?;
            k.int(0x81)
        },
    )?;

    // Vol. 3A §5.8.5 and Figure 5-13, CALL "CALL-GATE": a far CALL through a call
    // gate to an inner level switches to SS0:ESP0, pushes the caller's SS and ESP,
    // copies the gate's count of dwords keeping their order, then pushes CS and EIP.
    // RET n to the outer level releases n bytes on both stacks.
    k.case("priv_call_gate_copies_params_and_retf_returns", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        let back = c.label("back");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        k.push(PARAM1)?;
        k.push(PARAM2)?;
        k.call_far(SEL_CALL_GATE, 0)?;
        k.at(&back)?;
        k.mov(edx, esp)?;
        k.int(0x80)?;
        k.landing(c)?;
        let back = k.addr(&back);
        k.expect32(c, rec::VECTOR, 0x80)?;
        k.expect32(c, rec::EDX, ESP3_TOP)?;
        k.expect32(c, GATE_ESP, ESP0_TOP - 24)?;
        k.expect32(c, GATE_STACK, back)?;
        k.expect16(c, GATE_STACK + 4, CODE3)?;
        k.expect32(c, GATE_STACK + 8, PARAM2)?;
        k.expect32(c, GATE_STACK + 12, PARAM1)?;
        k.expect32(c, GATE_STACK + 16, ESP3_TOP - 8)?;
        k.expect16(c, GATE_STACK + 20, DATA3)?;
        k.expect16(c, GATE_CS, CODE0)?;
        k.expect16(c, GATE_SS, DATA0)
    })?;

    // IRET to a more privileged level: "IF return code segment selector RPL < CPL
    // THEN #GP(return code segment selector)".
    ring3_gp(
        k,
        "priv_iret_from_ring3_to_ring0_gp",
        u32::from(CODE0),
        |k, c| {
            let target = k.addr(&c.end());
            k.push(eflags::FIXED)?;
            k.push(u32::from(CODE0))?;
            k.push(target)?;
            k.mark(c)?;
            k.iretd()
        },
    )?;

    // POPF at CPL 3 with IOPL 0 (POPF "Operation"): IOPL and IF keep their values
    // without a fault; the arithmetic flags change.
    k.case("priv_popf_ring3_keeps_iopl_and_if", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        k.push(eflags::IOPL3 | eflags::IF | eflags::FIXED | eflags::CF)?;
        k.popfd()?;
        k.pushfd()?;
        k.pop(ebx)?;
        k.int(0x80)?;
        k.landing(c)?;
        k.expect32(c, rec::VECTOR, 0x80)?;
        k.expect32(c, rec::EBX, eflags::FIXED | eflags::CF)
    })?;

    // CLI: CPL > IOPL (and no PVI) is #GP(0). HLT and MOV to CR3 at CPL > 0 are
    // #GP(0) (their "Protected Mode Exceptions").
    ring3_gp(k, "priv_cli_ring3_iopl0_gp", 0, |k, c| {
        k.mark(c)?;
        k.cli()
    })?;
    ring3_gp(k, "priv_hlt_ring3_gp", 0, |k, c| {
        k.mark(c)?;
        k.hlt()
    })?;
    ring3_gp(k, "priv_mov_cr3_ring3_gp", 0, |k, c| {
        k.xor(eax, eax)?;
        k.mark(c)?;
        k.mov(cr3, eax)
    })?;

    // Vol. 1 §19.5.2: with CPL > IOPL, IN/OUT consult the TSS I/O bitmap; a set bit
    // is #GP(0), a clear one lets the access through.
    ring3_gp(k, "priv_out_port_denied_by_bitmap_gp", 0, |k, c| {
        k.mov(dx, u32::from(DENIED_PORT))?;
        k.mark(c)?;
        k.out(dx, al)
    })?;
    k.case("priv_io_port_allowed_by_bitmap", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        uart_scratch_round_trip(k)?;
        k.int(0x80)?;
        k.landing(c)?;
        k.expect32(c, rec::VECTOR, 0x80)?;
        k.expect8(c, rec::EBX, 0x5A)
    })?;
    k.exit()?;

    // The call gate's ring-0 entry: record the stack the gate built, then RET 8.
    k.at("gate_entry")?;
    k.mov(dword_ptr(GATE_ESP).ss(), esp)?;
    for i in 0..6 {
        k.mov(eax, dword_ptr(esp + 4 * i))?;
        k.mov(dword_ptr(GATE_STACK + 4 * i as u32).ss(), eax)?;
    }
    k.mov(word_ptr(GATE_CS).ss(), cs)?;
    k.mov(word_ptr(GATE_SS).ss(), ss)?;
    k.retf_1(8)
}

/// Writes 0x5A to the 16550A scratch register (COM1 + 7) and reads it back into BL.
fn uart_scratch_round_trip(k: &mut Kernel) -> AsmResult {
    k.mov(dx, 0x3FFu32)?;
    k.mov(al, 0x5A)?;
    k.out(dx, al)?;
    k.mov(al, 0)?;
    k.in_(al, dx)?;
    k.mov(bl, al)
}

#[test]
fn pm_kernel_privilege_transitions_all_pass() {
    assert_all_pass("privilege_transitions", &build(privilege_transitions));
}

// ================================================================================
// Task switches
// ================================================================================

/// TSS descriptors of tasks A, B and C (GDT indexes 6-8).
const SEL_TSS_A: u16 = 0x30;
const SEL_TSS_B: u16 = 0x38;
const SEL_TSS_C: u16 = 0x40;
/// A not-present data descriptor: loading it raises #NP, whose IDT entry is a task
/// gate to task C.
const SEL_NP_DATA: u16 = 0x48;
/// Task A's EAX, as its TSS holds it.
const TASK_A_EAX: u32 = 0xA1A1_A1A1;
/// What task A records: EAX, ESP, TR, EFLAGS, the high dwords of the main and its
/// own TSS descriptors, the main TSS's saved EIP and its own link field.
const TA_EAX: u32 = SCRATCH;
const TA_ESP: u32 = SCRATCH + 0x04;
const TA_TR: u32 = SCRATCH + 0x08;
const TA_EFLAGS: u32 = SCRATCH + 0x0C;
const TA_MAIN_DESC: u32 = SCRATCH + 0x10;
const TA_SELF_DESC: u32 = SCRATCH + 0x14;
const TA_MAIN_EIP: u32 = SCRATCH + 0x18;
const TA_LINK: u32 = SCRATCH + 0x1C;
/// What task B records: EFLAGS, its link field, the main TSS descriptor.
const TB_EFLAGS: u32 = SCRATCH + 0x20;
const TB_LINK: u32 = SCRATCH + 0x24;
const TB_MAIN_DESC: u32 = SCRATCH + 0x28;
/// What task C records: ESP at entry, the error code, TR, EFLAGS, its link field
/// and the main TSS's saved EIP.
const TC_ESP: u32 = SCRATCH + 0x30;
const TC_ERR: u32 = SCRATCH + 0x34;
const TC_TR: u32 = SCRATCH + 0x38;
const TC_EFLAGS: u32 = SCRATCH + 0x3C;
const TC_LINK: u32 = SCRATCH + 0x40;
const TC_MAIN_EIP: u32 = SCRATCH + 0x44;

/// The high dword of the GDT descriptor `sel` (its type is bits 8-11).
fn desc_high(sel: u16) -> u32 {
    GDT + u32::from(sel) + 4
}

/// The type field of an available and a busy 32-bit TSS descriptor.
const AVAILABLE: u32 = (desc::TSS32 as u32) << 8;
const BUSY: u32 = (desc::TSS32_BUSY as u32) << 8;

/// `[dst] = [src]` through EAX.
fn copy32(k: &mut Kernel, dst: u32, src: u32) -> AsmResult {
    k.mov(eax, dword_ptr(src))?;
    k.mov(dword_ptr(dst), eax)
}

/// `[dst] = EFLAGS` through EAX.
fn store_eflags(k: &mut Kernel, dst: u32) -> AsmResult {
    k.pushfd()?;
    k.pop(eax)?;
    k.mov(dword_ptr(dst), eax)
}

fn task_tables(k: &mut Kernel) {
    let tasks = [
        (SEL_TSS_A, "task_a"),
        (SEL_TSS_B, "task_b"),
        (SEL_TSS_C, "task_c"),
    ];
    for (i, (sel, entry)) in tasks.into_iter().enumerate() {
        let eip = k.addr(entry);
        let mut t = Tss::ring0(eip, TASK_STACKS[i]);
        if sel == SEL_TSS_A {
            t.eax = TASK_A_EAX;
        }
        k.tss(TSS_AUX[i], &t);
        k.gdt(
            u32::from(sel) / 8,
            segment(TSS_AUX[i], 0x67, desc::P | desc::TSS32, 0),
        );
    }
    k.gdt(
        u32::from(SEL_NP_DATA) / 8,
        segment(0, 0xF_FFFF, desc::S | desc::DATA_RW, desc::G | desc::DB),
    );
    k.idt(vector::NP, gate(SEL_TSS_C, 0, desc::TASK_GATE, 0, 0));
}

fn task_switches(k: &mut Kernel) -> AsmResult {
    task_tables(k);

    // SDM vol. 3A §7.3: a JMP to a TSS saves the current state in the current TSS
    // and loads every register from the new one.
    k.case("task_jmp_loads_new_state", |k, c| {
        k.clts()?;
        k.jmp_far(SEL_TSS_A, 0)?;
        k.at(&c.label("back"))?;
        k.expect32(c, TA_EAX, TASK_A_EAX)?;
        k.expect32(c, TA_ESP, TASK_STACKS[0])?;
        k.expect16(c, TA_TR, SEL_TSS_A)?;
        k.expect_bits(c, TA_EFLAGS, eflags::NT, 0)
    })?;

    // §7.3 and Table 7-2, JMP column: the old task's busy bit is cleared and the new
    // task's set; NT and the link field are untouched; the old task's saved EIP is
    // the instruction after the JMP. §2.5: CR0.TS is set on every task switch.
    k.case("task_jmp_busy_bits_link_and_ts", |k, c| {
        k.expect_bits(c, TA_MAIN_DESC, TYPE_MASK, AVAILABLE)?;
        k.expect_bits(c, TA_SELF_DESC, TYPE_MASK, BUSY)?;
        let back = k.addr("task_jmp_loads_new_state.back");
        k.expect32(c, TA_MAIN_EIP, back)?;
        k.expect32(c, TA_LINK, 0)?;
        k.expect_bits(c, desc_high(SEL_TSS_A), TYPE_MASK, AVAILABLE)?;
        k.expect_bits(c, desc_high(TSS_SEL), TYPE_MASK, BUSY)?;
        k.mov(eax, cr0)?;
        k.and(eax, ctl::CR0_TS)?;
        k.expect_eax(c, ctl::CR0_TS)
    })?;

    // Table 7-2, CALL column: the new task runs with NT = 1 and its link field holding
    // the caller's TSS selector; the caller stays busy.
    k.case("task_call_sets_nt_and_back_link", |k, c| {
        k.call_far(SEL_TSS_B, 0)?;
        k.expect_bits(c, TB_EFLAGS, eflags::NT, eflags::NT)?;
        k.expect16(c, TB_LINK, TSS_SEL)?;
        k.expect_bits(c, TB_MAIN_DESC, TYPE_MASK, BUSY)
    })?;

    // IRET with NT = 1 returns to the task in the link field (IRET "TASK-RETURN");
    // Table 7-2, IRET column: the returning task's busy bit and the NT flag in its
    // saved EFLAGS are cleared; the caller resumes with its own NT (0).
    k.case("task_iret_returns_to_caller", |k, c| {
        k.pushfd()?;
        k.pop(eax)?;
        k.and(eax, eflags::NT)?;
        k.expect_eax(c, 0)?;
        k.str(ax)?;
        k.movzx(eax, ax)?;
        k.expect_eax(c, u32::from(TSS_SEL))?;
        k.expect_bits(c, desc_high(SEL_TSS_B), TYPE_MASK, AVAILABLE)?;
        k.expect_bits(c, TSS_AUX[1] + tss_off::EFLAGS, eflags::NT, 0)?;
        k.expect_bits(c, desc_high(TSS_SEL), TYPE_MASK, BUSY)
    })?;

    // CALL and JMP, "TASK-STATE-SEGMENT": a busy TSS is #GP(TSS selector).
    k.case("task_call_busy_tss_gp", |k, c| {
        k.arm(c)?;
        k.mark(c)?;
        k.call_far(TSS_SEL, 0)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::GP, u32::from(TSS_SEL))
    })?;
    k.case("task_jmp_busy_tss_gp", |k, c| {
        k.arm(c)?;
        k.mark(c)?;
        k.jmp_far(TSS_SEL, 0)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::GP, u32::from(TSS_SEL))
    })?;

    // §6.12.2 "Interrupt Tasks": an exception whose IDT entry is a task gate
    // switches tasks as a CALL does (NT set, link = old TSS), the error code is
    // pushed on the new task's stack, and the faulting task's saved EIP is the
    // faulting instruction. Task C moves that EIP past the fault before its IRET.
    k.case("task_gate_handles_np_exception", |k, c| {
        k.arm(c)?;
        k.mov(ax, u32::from(SEL_NP_DATA))?;
        k.mark(c)?;
        k.mov(ds, ax)?;
        k.landing(c)?;
        k.expect32(c, rec::VECTOR, NO_FAULT)?;
        k.expect32(c, TC_ERR, u32::from(SEL_NP_DATA))?;
        k.expect32(c, TC_ESP, TASK_STACKS[2] - 4)?;
        k.expect16(c, TC_TR, SEL_TSS_C)?;
        k.expect_bits(c, TC_EFLAGS, eflags::NT, eflags::NT)?;
        k.expect16(c, TC_LINK, TSS_SEL)?;
        let fault = k.addr(&c.mark());
        k.expect32(c, TC_MAIN_EIP, fault)?;
        k.expect_bits(c, desc_high(SEL_TSS_C), TYPE_MASK, AVAILABLE)
    })?;
    k.exit()?;

    k.at("task_a")?;
    k.mov(dword_ptr(TA_EAX), eax)?;
    k.mov(dword_ptr(TA_ESP), esp)?;
    k.str(word_ptr(TA_TR))?;
    store_eflags(k, TA_EFLAGS)?;
    copy32(k, TA_MAIN_DESC, desc_high(TSS_SEL))?;
    copy32(k, TA_SELF_DESC, desc_high(SEL_TSS_A))?;
    copy32(k, TA_MAIN_EIP, TSS_MAIN + tss_off::EIP)?;
    copy32(k, TA_LINK, TSS_AUX[0] + tss_off::LINK)?;
    k.jmp_far(TSS_SEL, 0)?;
    k.jmp_to("task_a")?;

    k.at("task_b")?;
    store_eflags(k, TB_EFLAGS)?;
    copy32(k, TB_LINK, TSS_AUX[1] + tss_off::LINK)?;
    copy32(k, TB_MAIN_DESC, desc_high(TSS_SEL))?;
    k.iretd()?;
    k.jmp_to("task_b")?;

    k.at("task_c")?;
    k.mov(dword_ptr(TC_ESP), esp)?;
    k.pop(eax)?;
    k.mov(dword_ptr(TC_ERR), eax)?;
    k.str(word_ptr(TC_TR))?;
    store_eflags(k, TC_EFLAGS)?;
    copy32(k, TC_LINK, TSS_AUX[2] + tss_off::LINK)?;
    copy32(k, TC_MAIN_EIP, TSS_MAIN + tss_off::EIP)?;
    let resume = k.addr("task_gate_handles_np_exception.recover");
    k.mov(dword_ptr(TSS_MAIN + tss_off::EIP), resume)?;
    k.iretd()?;
    k.jmp_to("task_c")
}

#[test]
fn pm_kernel_task_switches_all_pass() {
    assert_all_pass("task_switches", &build(task_switches));
}

// ================================================================================
// Virtual-8086 mode
// ================================================================================

/// The V86 code is copied here (below 1 MiB) and runs at V86_CS:offset.
const V86_BASE: u32 = 0x7000;
const V86_CS: u16 = 0x0700;
/// The V86 stack: 0800:1000, just below the Multiboot information at 0x9000.
const V86_SS: u16 = 0x0800;
const V86_SP: u16 = 0x1000;
/// Where the image carries the V86 code.
const V86_IMAGE: u32 = FREE;
/// The segments the V86 code loads.
const V86_DS: u16 = 0x1234;
const V86_ES: u16 = 0x2000;
const V86_FS: u16 = 0x3000;
const V86_GS: u16 = 0x4000;
/// What the V86 code reads at ES:0020 (linear 0x20020).
const V86_ES_WORD: u16 = 0xCAFE;
/// What the V86 code writes at DS:0010 (linear 0x12350).
const V86_DS_WORD: u16 = 0xBEEF;
/// What the echo handler (INT 0x82 from V86) records: CS, DS, ESP, pushed EFLAGS.
const ECHO_CS: u32 = SCRATCH;
const ECHO_DS: u32 = SCRATCH + 4;
const ECHO_ESP: u32 = SCRATCH + 8;
const ECHO_EFLAGS: u32 = SCRATCH + 0xC;

/// The 16-bit code run in V86 mode; each entry ends in a UD2 that must not run.
fn v86_code(b: &mut Blob) -> AsmResult {
    // Real-mode addressing: linear = selector * 16 + offset, with 16-bit offset
    // arithmetic (0xFFFF + 0x11 wraps to 0x0010).
    b.at("arith")?;
    b.mov(ax, u32::from(V86_DS))?;
    b.mov(ds, ax)?;
    b.mov(word_ptr(0x10u32), u32::from(V86_DS_WORD))?;
    b.mov(bx, 0xFFFFu32)?;
    b.mov(al, byte_ptr(bx + 0x11))?;
    b.mov(cx, u32::from(V86_ES))?;
    b.mov(es, cx)?;
    b.mov(bx, word_ptr(0x20u32).es())?;
    b.mov(cx, u32::from(V86_FS))?;
    b.mov(fs, cx)?;
    b.mov(cx, u32::from(V86_GS))?;
    b.mov(gs, cx)?;
    b.mov(cx, cs)?;
    b.mov(dx, ss)?;
    b.mov(si, sp)?;
    b.at("arith.int")?;
    b.int(0x30)?;
    b.ud2()?;

    b.at("io")?;
    uart_scratch_round_trip_16(b)?;
    b.mov(dx, u32::from(DENIED_PORT))?;
    b.at("io.in")?;
    b.in_(al, dx)?;
    b.ud2()?;

    b.at("io_word")?;
    b.mov(dx, u32::from(DENIED_PORT - 1))?;
    b.at("io_word.in")?;
    b.in_(ax, dx)?;
    b.ud2()?;

    b.at("iopl3")?;
    b.mov(ax, u32::from(V86_DS))?;
    b.mov(ds, ax)?;
    b.mov(ax, 0x1111u32)?;
    b.int(0x82)?;
    b.mov(bx, ds)?;
    b.at("iopl3.int")?;
    b.int(0x81)?;
    b.ud2()?;

    b.at("cli")?;
    b.cli()?;
    b.ud2()
}

/// [`uart_scratch_round_trip`] in 16-bit code.
fn uart_scratch_round_trip_16(b: &mut Blob) -> AsmResult {
    b.mov(dx, 0x3FFu32)?;
    b.mov(al, 0x5A)?;
    b.out(dx, al)?;
    b.mov(al, 0)?;
    b.in_(al, dx)?;
    b.mov(bl, al)
}

/// IRETs from ring 0 into V86 mode at V86_CS:`ip` (SDM vol. 2A IRET,
/// "RETURN-TO-VIRTUAL-8086-MODE": the frame holds EIP, CS, EFLAGS with VM = 1, ESP,
/// SS, ES, DS, FS and GS).
fn iret_to_v86(k: &mut Kernel, ip: u32, extra_flags: u32) -> AsmResult {
    for _ in 0..4 {
        k.push(0)?; // GS, FS, DS, ES
    }
    k.push(u32::from(V86_SS))?;
    k.push(u32::from(V86_SP))?;
    k.push(eflags::VM | eflags::FIXED | extra_flags)?;
    k.push(u32::from(V86_CS))?;
    k.push(ip)?;
    k.iretd()
}

fn virtual_8086(k: &mut Kernel) -> AsmResult {
    let (code, at) = assemble_blob(16, 0, v86_code);
    k.poke(V86_IMAGE, &code);
    let echo = k.addr("echo");
    k.idt(0x82, gate(CODE0, echo, desc::INT_GATE, 3, 0));
    k.cld()?;
    k.mov(esi, V86_IMAGE)?;
    k.mov(edi, V86_BASE)?;
    k.mov(ecx, code.len() as u32)?;
    k.rep().movsb()?;
    k.mov(
        word_ptr(u32::from(V86_ES) * 16 + 0x20),
        u32::from(V86_ES_WORD),
    )?;

    // Vol. 3A §20.1.1: in V86 mode linear = selector * 16 + offset.
    k.case("v86_segment_arithmetic", |k, c| {
        k.arm(c)?;
        iret_to_v86(k, at["arith"], 0)?;
        k.landing(c)?;
        k.expect16(c, u32::from(V86_DS) * 16 + 0x10, V86_DS_WORD)?;
        k.expect8(c, rec::EAX, V86_DS_WORD as u8)?;
        k.expect16(c, rec::EBX, V86_ES_WORD)?;
        k.expect16(c, rec::ECX, V86_CS)?;
        k.expect16(c, rec::EDX, V86_SS)?;
        k.expect16(c, rec::ESI, V86_SP)
    })?;

    // INT n with VM = 1, IOPL < 3 (no VME) is #GP(0) (INT n "Operation"). An
    // exception from V86 mode (§6.12.1, Figure 6-5; INT n
    // "INTERRUPT-FROM-VIRTUAL-8086-MODE") switches to SS0:ESP0, pushes GS, FS, DS,
    // ES, SS, ESP, EFLAGS (VM set), CS, EIP, and enters the handler with DS, ES, FS
    // and GS NULL.
    k.case("v86_int_iopl0_gp_frame", |k, c| {
        k.arm(c)?;
        iret_to_v86(k, at["arith"], 0)?;
        k.landing(c)?;
        k.expect_fault(c, vector::GP, 0, at["arith.int"])?;
        k.expect16(c, rec::CS, V86_CS)?;
        k.expect_bits(c, rec::EFLAGS, eflags::VM | eflags::IOPL3, eflags::VM)?;
        k.expect32(c, rec::ESP, u32::from(V86_SP))?;
        k.expect16(c, rec::SS, V86_SS)?;
        k.expect16(c, rec::V86_ES, V86_ES)?;
        k.expect16(c, rec::V86_DS, V86_DS)?;
        k.expect16(c, rec::V86_FS, V86_FS)?;
        k.expect16(c, rec::V86_GS, V86_GS)?;
        for entry in [rec::ENTRY_DS, rec::ENTRY_ES, rec::ENTRY_FS, rec::ENTRY_GS] {
            k.expect16(c, entry, 0)?;
        }
        k.expect32(c, rec::FRAME, ESP0_TOP - 36)
    })?;

    // Vol. 1 §19.5.2 and vol. 3A §20.2.8.1: in V86 mode IN/OUT always consult the
    // I/O bitmap; a set bit for any byte of the access is #GP(0).
    k.case("v86_io_allowed_port_works", |k, c| {
        k.arm(c)?;
        iret_to_v86(k, at["io"], 0)?;
        k.landing(c)?;
        k.expect8(c, rec::EBX, 0x5A)
    })?;
    k.case("v86_io_denied_port_gp", |k, c| {
        k.arm(c)?;
        iret_to_v86(k, at["io"], 0)?;
        k.landing(c)?;
        k.expect_fault(c, vector::GP, 0, at["io.in"])
    })?;
    k.case("v86_io_word_straddling_denied_port_gp", |k, c| {
        k.arm(c)?;
        iret_to_v86(k, at["io_word"], 0)?;
        k.landing(c)?;
        k.expect_fault(c, vector::GP, 0, at["io_word.in"])
    })?;

    // CLI with VM = 1 and IOPL < 3 (no VME) is #GP(0).
    k.case("v86_cli_iopl0_gp", |k, c| {
        k.arm(c)?;
        iret_to_v86(k, at["cli"], 0)?;
        k.landing(c)?;
        k.expect_fault(c, vector::GP, 0, at["cli"])?;
        k.expect16(c, rec::CS, V86_CS)
    })?;

    // With IOPL 3, INT n goes through the IDT: a DPL-3 gate reaches the ring-0
    // handler with VM set in the pushed EFLAGS and NULL data segments, and its IRET
    // returns to V86 mode with the segments restored from the frame; a DPL-0 gate is
    // #GP(vector * 8 + 2) (INT n "Operation").
    k.case("v86_iopl3_int_round_trip_and_dpl0_gate_gp", |k, c| {
        k.arm(c)?;
        iret_to_v86(k, at["iopl3"], eflags::IOPL3)?;
        k.landing(c)?;
        k.expect_fault(c, vector::GP, 0x81 * 8 + 2, at["iopl3.int"])?;
        k.expect16(c, rec::EAX, 0x1112)?;
        k.expect16(c, rec::EBX, V86_DS)?;
        k.expect16(c, ECHO_CS, CODE0)?;
        k.expect16(c, ECHO_DS, 0)?;
        k.expect32(c, ECHO_ESP, ESP0_TOP - 36)?;
        let vm3 = eflags::VM | eflags::IOPL3;
        k.expect_bits(c, ECHO_EFLAGS, vm3, vm3)
    })?;
    k.exit()?;

    // INT 0x82 from V86 mode: record, add 1 to EAX, IRET back.
    k.at("echo")?;
    k.mov(word_ptr(ECHO_CS).ss(), cs)?;
    k.mov(word_ptr(ECHO_DS).ss(), ds)?;
    k.mov(dword_ptr(ECHO_ESP).ss(), esp)?;
    k.push(ebx)?;
    k.mov(ebx, dword_ptr(esp + 12))?;
    k.mov(dword_ptr(ECHO_EFLAGS).ss(), ebx)?;
    k.pop(ebx)?;
    k.inc(eax)?;
    k.iretd()
}

#[test]
fn pm_kernel_virtual_8086_all_pass() {
    assert_all_pass("virtual_8086", &build(virtual_8086));
}

// ================================================================================
// Paging
// ================================================================================

/// 2-level paging: the directory, the identity table for 0-4 MiB, the table for the
/// test pages at 4 MiB.
const PD: u32 = 0x12_0000;
const PT0: u32 = 0x12_1000;
const PT1: u32 = 0x12_2000;
/// PAE paging: the PDPT, one directory, one table.
const PDPT: u32 = 0x12_3000;
const PAE_PD: u32 = 0x12_4000;
const PAE_PT: u32 = 0x12_5000;
/// Physical pages the test pages map: ONE and TWO in their first dwords, a RET in
/// the NX page's first byte.
const PAGE_ONE: u32 = FREE;
const PAGE_TWO: u32 = FREE + 0x1000;
const NX_PAGE: u32 = FREE + 0x2000;
const ONE: u32 = 0x1111_1111;
const TWO: u32 = 0x2222_2222;
/// 2-level test pages: PT1 entry i maps TEST_BASE + i * 4 KiB.
const TEST_BASE: u32 = 0x40_0000;
const NOT_PRESENT: u32 = TEST_BASE;
const SUPERVISOR: u32 = TEST_BASE + 0x1000;
const USER_RO: u32 = TEST_BASE + 0x2000;
const AD_PAGE: u32 = TEST_BASE + 0x3000;
const GLOBAL: u32 = TEST_BASE + 0x4000;
const NON_GLOBAL: u32 = TEST_BASE + 0x5000;
const INVLPG_PAGE: u32 = TEST_BASE + 0x6000;
const PGE_TOGGLE: u32 = TEST_BASE + 0x7000;
const SUPERVISOR_RO: u32 = TEST_BASE + 0x8000;
/// PDE 2: a 4 MiB page mapping linear 8 MiB to physical 0.
const PSE_BASE: u32 = 0x80_0000;
/// A page mapped through PD entry 3, which lacks U/S, to USER_RO's table entry.
const USER_VIA_SUPERVISOR_PDE: u32 = 0xC0_2000;
/// An instruction at the end of a present code page runs into a not-present one.
const CODE_PAGE: u32 = FREE + 0x3000;
const STRADDLE: u32 = TEST_BASE + 0x9FFE;
const STRADDLE_NEXT: u32 = TEST_BASE + 0xA000;
/// PAE test pages (PAE_PD entry 2 -> PAE_PT): execute-disabled, a reserved bit set,
/// plain.
const NX_LINEAR: u32 = 0x40_0000;
const RSVD_LINEAR: u32 = 0x40_1000;
const PAE_DATA: u32 = 0x40_2000;
/// PAE_PD entry 3 points at PAE_PT with a reserved bit set.
const RSVD_PDE_LINEAR: u32 = 0x60_2000;
/// PAE_PD entry 4: a 2 MiB page with reserved bit 13 set.
const RSVD_BIG_LINEAR: u32 = 0x80_0000;
/// PAE_PD entry 5: a 2 MiB execute-disabled page mapping physical 0.
const NX_BIG_LINEAR: u32 = 0xA0_0000;
/// A reserved bit in every PAE entry: bit 62 lies in "62:M Reserved (must be 0)"
/// (SDM vol. 3A Tables 4-9 to 4-11) for any MAXPHYADDR M; x86bt reports no CPUID
/// leaf 0x80000008, so M = 36 (§4.1.4).
const PAE_RSVD: u64 = 1 << 62;

/// The PT1 entry that maps the 2-level test page `linear`.
fn pte_of(linear: u32) -> u32 {
    PT1 + ((linear - TEST_BASE) >> 12) * 4
}

fn paging_tables(k: &mut Kernel) {
    use pm::pte::*;
    identity_paging(k, PD, PT0);
    k.poke32(PD + 4, PT1 | (P | RW | US) as u32);
    k.poke32(PD + 8, (PS | P | RW) as u32);
    k.poke32(PD + 12, PT1 | (P | RW) as u32);
    let one = u64::from(PAGE_ONE);
    let pages = [
        (SUPERVISOR, one | P | RW),
        (USER_RO, one | P | US),
        (AD_PAGE, one | P | RW | US),
        (GLOBAL, one | P | RW | G),
        (NON_GLOBAL, one | P | RW),
        (INVLPG_PAGE, one | P | RW),
        (PGE_TOGGLE, one | P | RW | G),
        (SUPERVISOR_RO, one | P),
        (STRADDLE, u64::from(CODE_PAGE) | P | RW),
    ];
    for (linear, entry) in pages {
        k.poke32(pte_of(linear), entry as u32);
    }
    k.poke32(PAGE_ONE, ONE);
    k.poke32(PAGE_TWO, TWO);
    k.poke(NX_PAGE, &[0xC3]);
    k.poke(CODE_PAGE + 0xFFE, &[0xB8, 0x01]); // MOV EAX, imm32: 2 of its 5 bytes

    // PDPTEs have only P among the low flags (SDM vol. 3A §4.4.1, Table 4-8).
    k.poke64(PDPT, u64::from(PAE_PD) | P);
    k.poke64(PAE_PD, PS | P | RW | US);
    k.poke64(PAE_PD + 8, 0x20_0000 | PS | P | RW | US);
    k.poke64(PAE_PD + 16, u64::from(PAE_PT) | P | RW | US);
    k.poke64(PAE_PD + 24, u64::from(PAE_PT) | P | RW | US | PAE_RSVD);
    k.poke64(PAE_PD + 32, PS | P | RW | 1 << 13);
    k.poke64(PAE_PD + 40, PS | P | RW | XD);
    k.poke64(PAE_PT, u64::from(NX_PAGE) | P | RW | XD);
    k.poke64(PAE_PT + 8, one | P | RW | PAE_RSVD);
    k.poke64(PAE_PT + 16, one | P | RW);
}

/// The privilege level a page-fault case runs its access at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ring {
    /// Ring 0.
    Kernel,
    /// Ring 3, with DS = flat ring-3 data.
    User,
}

/// A case expecting #PF with `error` and CR2 = `fault_addr` at the access `access`
/// emits.
fn page_fault(
    k: &mut Kernel,
    name: &str,
    ring: Ring,
    (fault_addr, error): (u32, u32),
    access: fn(&mut Kernel) -> AsmResult,
) -> AsmResult {
    k.case(name, |k, c| {
        k.arm(c)?;
        if ring == Ring::User {
            let r3 = c.label("ring3");
            k.iret_to_ring3(&r3)?;
            k.at(&r3)?;
            k.mov(ax, u32::from(DATA3))?;
            k.mov(ds, ax)?;
        }
        k.mark(c)?;
        access(k)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::PF, error)?;
        k.expect32(c, rec::CR2, fault_addr)
    })
}

/// A case expecting #PF with `error` and CR2 = `fault_addr` on fetching the
/// instruction at `target` (CALL ECX into it); the fault's EIP is `target`.
fn fetch_fault(
    k: &mut Kernel,
    name: &str,
    target: u32,
    (fault_addr, error): (u32, u32),
) -> AsmResult {
    k.case(name, |k, c| {
        k.arm(c)?;
        k.mov(ecx, target)?;
        k.call(ecx)?;
        k.landing(c)?;
        k.expect_fault(c, vector::PF, error, target)?;
        k.expect32(c, rec::CR2, fault_addr)
    })
}

/// Switches to PAE paging with EFER.NXE: CR4.PAE changes only with paging off
/// (§4.1.2); NXE enables the XD bit (§2.2.1). Clobbers EAX, ECX, EDX.
fn enter_pae(k: &mut Kernel) -> AsmResult {
    update_cr(k, cr0, 0, ctl::CR0_PG)?;
    update_cr(k, cr4, ctl::CR4_PAE, ctl::CR4_PSE | ctl::CR4_PGE)?;
    update_efer(k, ctl::EFER_NXE, 0)?;
    enable_paging(k, PDPT)
}

/// CR`n` |= `set`, then &= !`clear` (n = 0 or 4; clobbers EAX).
fn update_cr(k: &mut Kernel, cr: AsmRegisterCr, set: u32, clear: u32) -> AsmResult {
    k.mov(eax, cr)?;
    k.or(eax, set)?;
    k.and(eax, !clear)?;
    k.mov(cr, eax)
}

/// IA32_EFER |= `set`, &= !`clear`.
fn update_efer(k: &mut Kernel, set: u32, clear: u32) -> AsmResult {
    k.mov(ecx, ctl::MSR_EFER)?;
    k.rdmsr()?;
    k.or(eax, set)?;
    k.and(eax, !clear)?;
    k.wrmsr()
}

/// Remaps the 2-level test page `linear` to PAGE_TWO, keeping `flags`.
fn remap_to_two(k: &mut Kernel, linear: u32, flags: u64) -> AsmResult {
    k.mov(dword_ptr(pte_of(linear)), PAGE_TWO | flags as u32)
}

fn reload_cr3(k: &mut Kernel) -> AsmResult {
    k.mov(eax, cr3)?;
    k.mov(cr3, eax)
}

fn paging(k: &mut Kernel) -> AsmResult {
    use pm::pte::{G, P, RW};
    paging_tables(k);
    enable_paging(k, PD)?;

    // SDM vol. 3A §4.7: error code bit 0 = present (protection violation), bit 1 =
    // write, bit 2 = user-mode access; CR2 = the faulting linear address.
    page_fault(
        k,
        "pf_not_present_read",
        Ring::Kernel,
        (NOT_PRESENT + 0x123, 0),
        |k| k.mov(eax, dword_ptr(NOT_PRESENT + 0x123)),
    )?;
    page_fault(
        k,
        "pf_not_present_write",
        Ring::Kernel,
        (NOT_PRESENT + 0x456, 2),
        |k| k.mov(dword_ptr(NOT_PRESENT + 0x456), eax),
    )?;
    // §4.7: bit 4 (I/D) is set only with PAE + EFER.NXE (or SMEP), so a fetch from
    // a not-present page under 2-level paging reports 0.
    fetch_fault(
        k,
        "pf_not_present_fetch_2level",
        NOT_PRESENT,
        (NOT_PRESENT, 0),
    )?;
    // An instruction whose bytes run into a not-present page faults before it
    // executes: EIP is its first byte, CR2 the first byte it could not fetch.
    fetch_fault(
        k,
        "pf_fetch_straddling_into_not_present",
        STRADDLE,
        (STRADDLE_NEXT, 0),
    )?;
    // §4.6.1: user-mode accesses need U/S = 1 in every entry; user writes need R/W.
    page_fault(
        k,
        "pf_user_read_supervisor_page",
        Ring::User,
        (SUPERVISOR + 0x10, 5),
        |k| k.mov(eax, dword_ptr(SUPERVISOR + 0x10)),
    )?;
    page_fault(
        k,
        "pf_user_write_read_only_page",
        Ring::User,
        (USER_RO + 0x20, 7),
        |k| k.mov(dword_ptr(USER_RO + 0x20), eax),
    )?;
    page_fault(
        k,
        "pf_user_write_not_present",
        Ring::User,
        (NOT_PRESENT + 0x10, 6),
        |k| k.mov(dword_ptr(NOT_PRESENT + 0x10), eax),
    )?;
    page_fault(
        k,
        "pf_user_read_through_supervisor_pde",
        Ring::User,
        (USER_VIA_SUPERVISOR_PDE + 0x18, 5),
        |k| k.mov(eax, dword_ptr(USER_VIA_SUPERVISOR_PDE + 0x18)),
    )?;
    k.case("pf_user_read_read_only_page_ok", |k, c| {
        k.arm(c)?;
        let r3 = c.label("ring3");
        k.iret_to_ring3(&r3)?;
        k.at(&r3)?;
        k.mov(ax, u32::from(DATA3))?;
        k.mov(ds, ax)?;
        k.mov(ebx, dword_ptr(USER_RO))?;
        k.int(0x80)?;
        k.landing(c)?;
        k.expect32(c, rec::VECTOR, 0x80)?;
        k.expect32(c, rec::EBX, ONE)
    })?;

    // §4.6.1: with CR0.WP = 1 supervisor writes need R/W = 1; with WP = 0 they may
    // write any supervisor-mode address.
    update_cr(k, cr0, ctl::CR0_WP, 0)?;
    page_fault(
        k,
        "pf_supervisor_write_read_only_wp1",
        Ring::Kernel,
        (SUPERVISOR_RO + 0x30, 3),
        |k| k.mov(dword_ptr(SUPERVISOR_RO + 0x30), 0x600D_F00Du32),
    )?;
    k.case("pf_supervisor_write_read_only_wp0_ok", |k, c| {
        k.expect32(c, PAGE_ONE + 0x30, 0)?;
        update_cr(k, cr0, 0, ctl::CR0_WP)?;
        k.mov(dword_ptr(SUPERVISOR_RO + 0x30), 0x600D_F00Du32)?;
        k.expect32(c, PAGE_ONE + 0x30, 0x600D_F00D)
    })?;

    // §4.8: the accessed flag is set on the first access through an entry, the
    // dirty flag on the first write to the page.
    k.case("paging_accessed_and_dirty_bits", |k, c| {
        let (a, d) = (pm::pte::A as u32, pm::pte::D as u32);
        k.expect_bits(c, pte_of(AD_PAGE), a | d, 0)?;
        k.mov(ebx, dword_ptr(AD_PAGE))?;
        k.expect_bits(c, pte_of(AD_PAGE), a | d, a)?;
        k.mov(dword_ptr(AD_PAGE + 4), ebx)?;
        k.expect_bits(c, pte_of(AD_PAGE), a | d, a | d)?;
        k.expect_bits(c, PD + 4, a, a)
    })?;

    // §4.3: with CR4.PSE = 1 a directory entry with PS = 1 maps a 4 MiB page; its
    // own A and D flags record the accesses (§4.8).
    k.case("paging_pse_4mib_page", |k, c| {
        let (a, d) = (pm::pte::A as u32, pm::pte::D as u32);
        update_cr(k, cr4, ctl::CR4_PSE, 0)?;
        k.mov(dword_ptr(SCRATCH + 0x10), 0x0BAD_CAFEu32)?;
        k.expect32(c, PSE_BASE + SCRATCH + 0x10, 0x0BAD_CAFE)?;
        k.expect_bits(c, PD + 8, a | d, a)?;
        k.mov(dword_ptr(PSE_BASE + SCRATCH + 0x14), 0x1234_5678u32)?;
        k.expect32(c, SCRATCH + 0x14, 0x1234_5678)?;
        k.expect_bits(c, PD + 8, a | d, a | d)
    })?;

    // §4.10.4.1: INVLPG invalidates the page's translation (global or not); MOV to
    // CR3 invalidates all but global translations; changing CR4.PGE invalidates
    // all. A global translation may therefore stay cached across a CR3 load, and a
    // TLB that just used it keeps it.
    k.case("tlb_invlpg_flushes_entry", |k, c| {
        k.expect32(c, INVLPG_PAGE, ONE)?;
        remap_to_two(k, INVLPG_PAGE, P | RW)?;
        k.invlpg(ptr(INVLPG_PAGE))?;
        k.expect32(c, INVLPG_PAGE, TWO)
    })?;
    k.case("tlb_cr3_reload_flushes_non_global", |k, c| {
        k.expect32(c, NON_GLOBAL, ONE)?;
        remap_to_two(k, NON_GLOBAL, P | RW)?;
        reload_cr3(k)?;
        k.expect32(c, NON_GLOBAL, TWO)
    })?;
    k.case("tlb_global_page_survives_cr3_reload", |k, c| {
        update_cr(k, cr4, ctl::CR4_PGE, 0)?;
        k.expect32(c, GLOBAL, ONE)?;
        remap_to_two(k, GLOBAL, P | RW | G)?;
        reload_cr3(k)?;
        k.expect32(c, GLOBAL, ONE)
    })?;
    k.case("tlb_invlpg_flushes_global_page", |k, c| {
        k.invlpg(ptr(GLOBAL))?;
        k.expect32(c, GLOBAL, TWO)
    })?;
    k.case("tlb_cr4_pge_toggle_flushes_global", |k, c| {
        k.expect32(c, PGE_TOGGLE, ONE)?;
        remap_to_two(k, PGE_TOGGLE, P | RW | G)?;
        update_cr(k, cr4, 0, ctl::CR4_PGE)?;
        update_cr(k, cr4, ctl::CR4_PGE, 0)?;
        k.expect32(c, PGE_TOGGLE, TWO)
    })?;

    // §4.4: PAE paging.
    k.case("pae_paging_enabled_with_nxe", |k, c| {
        enter_pae(k)?;
        k.expect32(c, PAE_DATA, ONE)
    })?;
    // §4.6.2: with NXE, XD = 1 in any entry forbids instruction fetches but not
    // reads; §4.7: the fault reports P (protection) and I/D (bit 4).
    k.case("pae_nx_page_readable", |k, c| k.expect8(c, NX_LINEAR, 0xC3))?;
    fetch_fault(k, "pae_nx_fetch_pf", NX_LINEAR, (NX_LINEAR, 0x11))?;
    let nx_big = NX_BIG_LINEAR + NX_PAGE;
    fetch_fault(k, "pae_nx_2mib_page_fetch_pf", nx_big, (nx_big, 0x11))?;
    // Table 4-11: with EFER.NXE = 0, bit 63 is reserved.
    k.case("pae_xd_without_nxe_is_reserved_pf", |k, c| {
        k.arm(c)?;
        update_efer(k, 0, ctl::EFER_NXE)?;
        k.invlpg(ptr(NX_LINEAR))?;
        k.mark(c)?;
        k.mov(eax, dword_ptr(NX_LINEAR))?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, vector::PF, 9)?;
        k.expect32(c, rec::CR2, NX_LINEAR)
    })?;
    k.exit()
}

#[test]
fn pm_kernel_paging_all_pass() {
    assert_all_pass("paging", &build(paging));
}

/// PAE entries with reserved bits set: SDM vol. 3A §4.7, a reserved bit set in any
/// paging-structure entry is #PF with P = 1 and RSVD (bit 3), plus W/R and U/S as
/// for any access.
fn paging_reserved_bits(k: &mut Kernel) -> AsmResult {
    paging_tables(k);
    enter_pae(k)?;
    page_fault(
        k,
        "pae_pte_reserved_bit_read_pf",
        Ring::Kernel,
        (RSVD_LINEAR + 0x88, 9),
        |k| k.mov(eax, dword_ptr(RSVD_LINEAR + 0x88)),
    )?;
    page_fault(
        k,
        "pae_pte_reserved_bit_write_pf",
        Ring::Kernel,
        (RSVD_LINEAR + 0x90, 0xB),
        |k| k.mov(dword_ptr(RSVD_LINEAR + 0x90), eax),
    )?;
    page_fault(
        k,
        "pae_pde_reserved_bit_read_pf",
        Ring::Kernel,
        (RSVD_PDE_LINEAR + 4, 9),
        |k| k.mov(eax, dword_ptr(RSVD_PDE_LINEAR + 4)),
    )?;
    // Table 4-9: bits 20:13 of a PDE that maps a 2 MiB page are reserved.
    page_fault(
        k,
        "pae_2mib_page_reserved_bit_read_pf",
        Ring::Kernel,
        (RSVD_BIG_LINEAR + 8, 9),
        |k| k.mov(eax, dword_ptr(RSVD_BIG_LINEAR + 8)),
    )?;
    k.exit()
}

#[test]
fn pm_kernel_paging_reserved_bits_all_pass() {
    assert_all_pass("paging_reserved_bits", &build(paging_reserved_bits));
}

// ================================================================================
// Self-modifying code through a second linear alias
// ================================================================================

/// The physical page holding the code, mapped at ALIAS_A and ALIAS_B.
const SMC_PAGE: u32 = FREE;
const ALIAS_A: u32 = 0x40_0000;
const ALIAS_B: u32 = 0x40_1000;

/// The code page, assembled for ALIAS_A: `func` returns the imm32 at offset 1;
/// `self_patch` increments the low byte of its own `MOV EAX, imm32` through
/// ALIAS_B, then jumps to it (SDM vol. 3A §11.6, option 1: store, then jump).
fn smc_code(b: &mut Blob) -> AsmResult {
    b.at("func")?;
    b.mov(eax, 1u32)?;
    b.ret()?;
    b.at("self_patch")?;
    let imm = b.addr("patched") + 1 - ALIAS_A + ALIAS_B;
    b.inc(byte_ptr(imm))?;
    let patched = b.label("patched");
    b.jmp(patched)?;
    b.at("patched")?;
    b.mov(eax, 0x10u32)?;
    b.ret()
}

/// EAX = what the code at `linear` returns (clobbers ECX).
fn call_at(k: &mut Kernel, linear: u32) -> AsmResult {
    k.mov(ecx, linear)?;
    k.call(ecx)
}

fn self_modifying_code(k: &mut Kernel) -> AsmResult {
    use pm::pte::{P, RW, US};
    let (code, at) = assemble_blob(32, ALIAS_A, smc_code);
    identity_paging(k, PD, PT0);
    k.poke32(PD + 4, PT1 | (P | RW | US) as u32);
    k.poke32(PT1, SMC_PAGE | (P | RW) as u32);
    k.poke32(PT1 + 4, SMC_PAGE | (P | RW) as u32);
    k.poke(SMC_PAGE, &code);
    enable_paging(k, PD)?;
    let func_b = at["func"] - ALIAS_A + ALIAS_B;

    // SDM vol. 3A §11.6: a write to a code location invalidates the cached code by
    // its physical address, so a store through one linear alias followed by a jump
    // executes the new bytes through the other.
    k.case("smc_both_aliases_run_the_same_code", |k, c| {
        call_at(k, at["func"])?;
        k.expect_eax(c, 1)?;
        call_at(k, func_b)?;
        k.expect_eax(c, 1)
    })?;
    k.case("smc_patch_via_b_runs_via_a", |k, c| {
        k.mov(dword_ptr(func_b + 1), 2u32)?;
        call_at(k, at["func"])?;
        k.expect_eax(c, 2)
    })?;
    k.case("smc_patch_via_a_runs_via_b", |k, c| {
        call_at(k, func_b)?;
        k.expect_eax(c, 2)?;
        k.mov(dword_ptr(at["func"] + 1), 3u32)?;
        call_at(k, func_b)?;
        k.expect_eax(c, 3)
    })?;
    k.case("smc_patch_after_hot_loop", |k, c| {
        k.mov(esi, 1000u32)?;
        k.at(&c.label("loop"))?;
        call_at(k, at["func"])?;
        k.dec(esi)?;
        let top = k.label(&c.label("loop"));
        k.jnz(top)?;
        k.expect_eax(c, 3)?;
        k.mov(dword_ptr(func_b + 1), 4u32)?;
        call_at(k, at["func"])?;
        k.expect_eax(c, 4)
    })?;
    k.case("smc_store_into_own_code_via_alias", |k, c| {
        call_at(k, at["self_patch"])?;
        k.expect_eax(c, 0x11)?;
        call_at(k, at["self_patch"])?;
        k.expect_eax(c, 0x12)
    })?;
    // New opcodes, not just a new immediate: PUSH 5; POP EAX; RET.
    k.case("smc_opcode_rewrite_via_alias", |k, c| {
        k.mov(
            dword_ptr(func_b),
            u32::from_le_bytes([0x6A, 0x05, 0x58, 0xC3]),
        )?;
        call_at(k, at["func"])?;
        k.expect_eax(c, 5)
    })?;
    k.exit()
}

#[test]
fn pm_kernel_self_modifying_code_all_pass() {
    assert_all_pass("self_modifying_code", &build(self_modifying_code));
}

// ---------------------------------------------------------------------------
// Instructions the translator lowers inline (CLI, STI, PUSHFD, POPFD, CALL,
// RET, RET imm16, JMP/CALL through a register, shifts by CL, rotates by more
// than one bit). Expected values follow from the SDM's definitions of each
// instruction; every engine (and QEMU) must produce them.

fn translator_inline(k: &mut Kernel) -> AsmResult {
    // Mask both 8259As so STI cannot let an interrupt in (OCW1).
    k.mov(al, 0xFFu32)?;
    k.out(0x21u32, al)?;
    k.out(0xA1u32, al)?;

    // 0x7FFFFFFF + 1 = 0x80000000: OF, SF, AF (carry out of bit 3) and PF (low
    // byte 0) set; CF and ZF clear.
    k.case("inline_pushfd_image_has_arithmetic_flags", |k, c| {
        k.mov(eax, 0x7FFF_FFFFu32)?;
        k.add(eax, 1)?;
        k.pushfd()?;
        k.pop(dword_ptr(SCRATCH))?;
        k.expect_bits(c, SCRATCH, 0x8D5, 0x894)
    })?;
    k.case("inline_popfd_loads_arithmetic_flags", |k, c| {
        k.push(0xC3u32)?; // SF, ZF, CF and the fixed bit 1
        k.popfd()?;
        k.pushfd()?;
        k.pop(dword_ptr(SCRATCH))?;
        k.expect_bits(c, SCRATCH, 0x8D5, 0xC1)?;
        // The flags POPFD loaded steer a branch.
        k.push(0x2u32)?;
        k.popfd()?;
        k.mov(ebx, 1u32)?;
        let skip = k.label(&c.label("nz"));
        k.jnz(skip)?;
        k.mov(ebx, 2u32)?;
        k.at(&c.label("nz"))?;
        k.expect_reg(c, ebx, 1)
    })?;
    k.case("inline_cli_sti_toggle_if", |k, c| {
        k.cli()?;
        k.pushfd()?;
        k.pop(dword_ptr(SCRATCH))?;
        k.expect_bits(c, SCRATCH, eflags::IF, 0)?;
        k.sti()?;
        k.pushfd()?;
        k.cli()?;
        k.pop(dword_ptr(SCRATCH))?;
        k.expect_bits(c, SCRATCH, eflags::IF, eflags::IF)?;
        // POPFD at CPL 0 may set IF too.
        k.push(eflags::FIXED | eflags::IF)?;
        k.popfd()?;
        k.pushfd()?;
        k.cli()?;
        k.pop(dword_ptr(SCRATCH))?;
        k.expect_bits(c, SCRATCH, eflags::IF, eflags::IF)
    })?;
    k.case("inline_call_register_and_ret_imm16", |k, c| {
        let func = c.label("func");
        let after = c.label("after");
        k.mov(dword_ptr(SCRATCH), esp)?;
        k.mov(ebx, 0u32)?;
        k.push(11u32)?;
        k.push(22u32)?;
        let at = k.addr(&func);
        k.mov(eax, at)?;
        k.call(eax)?;
        k.jmp_to(&after)?;
        k.at(&func)?;
        // [esp] = return address, [esp + 4] = 22, [esp + 8] = 11.
        k.mov(ebx, dword_ptr(esp + 4))?;
        k.add(ebx, dword_ptr(esp + 8))?;
        k.ret_1(8)?;
        k.at(&after)?;
        k.expect_reg(c, ebx, 33)?;
        k.mov(eax, esp)?;
        k.sub(eax, dword_ptr(SCRATCH))?;
        k.expect_eax(c, 0)
    })?;
    k.case("inline_jmp_register", |k, c| {
        let target = c.label("target");
        k.mov(ebx, 0u32)?;
        let at = k.addr(&target);
        k.mov(eax, at)?;
        k.jmp(eax)?;
        k.mov(ebx, 1u32)?;
        k.at(&target)?;
        k.expect_reg(c, ebx, 0)
    })?;
    k.case("inline_call_ret_loop_counts", |k, c| {
        let func = c.label("func");
        let top = c.label("top");
        let finish = c.label("finish");
        k.mov(edi, 0u32)?;
        k.mov(esi, 1000u32)?;
        k.at(&top)?;
        k.call_to(&func)?;
        k.dec(esi)?;
        k.jne_to(&top)?;
        k.jmp_to(&finish)?;
        k.at(&func)?;
        k.add(edi, 3)?;
        k.ret()?;
        k.at(&finish)?;
        k.expect_reg(c, edi, 3000)
    })?;
    // A count of 0 leaves every flag alone (SHL "Flags Affected").
    k.case("inline_shift_by_cl_zero_keeps_cf", |k, c| {
        k.mov(eax, 5u32)?;
        k.mov(ecx, 0u32)?;
        k.stc()?;
        k.shl(eax, cl)?;
        k.setc(bl)?;
        k.movzx(ebx, bl)?;
        k.expect_reg(c, ebx, 1)?;
        k.mov(eax, 5u32)?;
        k.mov(ecx, 4u32)?;
        k.shl(eax, cl)?;
        k.add(eax, 1)?;
        k.expect_eax(c, 0x51)
    })?;
    // DIV (SDM "DIV"): quotient to EAX/AX, remainder to EDX/DX; #DE (vector 0,
    // no error code) for a zero divisor or a quotient too wide, before any
    // register changes.
    k.case("inline_div_r32_and_r16", |k, c| {
        k.mov(edx, 0u32)?;
        k.mov(eax, 100u32)?;
        k.mov(ecx, 7u32)?;
        k.div(ecx)?;
        k.add(esi, 0)?;
        k.mov(dword_ptr(SCRATCH), eax)?;
        k.mov(dword_ptr(SCRATCH + 4), edx)?;
        k.expect32(c, SCRATCH, 14)?;
        k.expect32(c, SCRATCH + 4, 2)?;
        k.mov(edx, 1u32)?;
        k.mov(eax, 2u32)?;
        k.mov(ecx, 3u32)?;
        k.div(cx)?;
        k.add(esi, 0)?;
        k.mov(dword_ptr(SCRATCH), eax)?;
        k.mov(dword_ptr(SCRATCH + 4), edx)?;
        k.expect32(c, SCRATCH, 0x5556)?;
        k.expect32(c, SCRATCH + 4, 0)
    })?;
    k.case("inline_div_by_zero_raises_de", |k, c| {
        k.arm(c)?;
        k.mov(edx, 0u32)?;
        k.mov(eax, 5u32)?;
        k.mov(ecx, 0u32)?;
        k.mark(c)?;
        k.div(ecx)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, 0, 0)
    })?;
    k.case("inline_div_quotient_overflow_raises_de", |k, c| {
        k.arm(c)?;
        k.mov(edx, 5u32)?;
        k.mov(eax, 0u32)?;
        k.mov(ecx, 3u32)?;
        k.mark(c)?;
        k.div(ecx)?;
        k.landing(c)?;
        k.expect_fault_at_mark(c, 0, 0)
    })?;
    // LODS, STOS, SCAS (SDM): the access at DS:ESI or ES:EDI, then the index
    // moves by the element size, forward with DF clear and back with DF set.
    k.case("inline_stos_lods_scas_both_directions", |k, c| {
        k.cld()?;
        k.mov(dword_ptr(SCRATCH + 8), 0u32)?;
        k.mov(edi, SCRATCH)?;
        k.mov(eax, 0x4142_4344u32)?;
        k.stosd()?;
        k.mov(dword_ptr(SCRATCH + 16), edi)?;
        k.mov(esi, SCRATCH)?;
        k.mov(eax, 0u32)?;
        k.lodsb()?;
        k.mov(dword_ptr(SCRATCH + 20), eax)?;
        k.mov(dword_ptr(SCRATCH + 24), esi)?;
        k.mov(edi, SCRATCH + 1)?;
        k.mov(al, 0x43u32)?;
        k.scasb()?;
        k.setz(bl)?;
        k.movzx(ebx, bl)?;
        k.mov(dword_ptr(SCRATCH + 28), ebx)?;
        k.mov(dword_ptr(SCRATCH + 32), edi)?;
        k.std()?;
        k.mov(edi, SCRATCH + 8)?;
        k.stosb()?;
        k.cld()?;
        k.mov(dword_ptr(SCRATCH + 36), edi)?;
        k.expect32(c, SCRATCH, 0x4142_4344)?;
        k.expect32(c, SCRATCH + 16, SCRATCH + 4)?;
        k.expect32(c, SCRATCH + 20, 0x44)?;
        k.expect32(c, SCRATCH + 24, SCRATCH + 1)?;
        k.expect32(c, SCRATCH + 28, 1)?;
        k.expect32(c, SCRATCH + 32, SCRATCH + 2)?;
        k.expect32(c, SCRATCH + 8, 0x43)?;
        k.expect32(c, SCRATCH + 36, SCRATCH + 7)
    })?;
    k.case("inline_rotate_by_four", |k, c| {
        k.mov(eax, 0x8000_0001u32)?;
        k.rol(eax, 4)?;
        k.ror(eax, 8)?;
        k.add(eax, 0)?;
        k.expect_eax(c, 0x1800_0000)
    })?;
    k.exit()
}

#[test]
fn pm_kernel_translator_inline_all_pass() {
    assert_all_pass("translator_inline", &build(translator_inline));
}

// ================================================================================
// Mixed-size stacks: POP SS, ENTER and LEAVE
// ================================================================================

/// A 16-bit stack segment (B = 0, byte granular, limit 0xFFFF, DPL 0) at
/// [`STACK16_BASE`], GDT index 6.
const SEL_SS16: u16 = 0x30;
const STACK16_BASE: u32 = 0x15_0000;
/// Where a case keeps the harness's ESP while it runs on a test stack.
const SAVED_ESP: u32 = SCRATCH + 0x80;
/// ESP and EBP after ENTER, and after the LEAVE that follows it.
const ENTER_ESP: u32 = SCRATCH;
const ENTER_EBP: u32 = SCRATCH + 4;
const LEAVE_ESP: u32 = SCRATCH + 8;
const LEAVE_EBP: u32 = SCRATCH + 0xC;
/// ESP and SS after a POP SS.
const POP_ESP: u32 = SCRATCH + 0x10;
const POP_SS: u32 = SCRATCH + 0x14;

/// The operand-size prefix where `bits` is 16 (the code is 32-bit).
fn osize(bits: u32) -> Vec<u8> {
    if bits == 16 {
        vec![0x66]
    } else {
        Vec::new()
    }
}

/// ENTER imm16, imm8 (C8 iw ib) at operand size `bits`.
fn enter_raw(k: &mut Kernel, bits: u32, alloc: u16, level: u8) -> AsmResult {
    let mut b = osize(bits);
    b.push(0xC8);
    b.extend_from_slice(&alloc.to_le_bytes());
    b.push(level);
    k.db(&b)
}

/// LEAVE (C9) at operand size `bits`.
fn leave_raw(k: &mut Kernel, bits: u32) -> AsmResult {
    let mut b = osize(bits);
    b.push(0xC9);
    k.db(&b)
}

/// POP SS (17) at operand size `bits`.
fn pop_ss_raw(k: &mut Kernel, bits: u32) -> AsmResult {
    let mut b = osize(bits);
    b.push(0x17);
    k.db(&b)
}

/// The oracle for the ENTER/LEAVE cases: the SDM's pseudo-code (vol. 2A ENTER and
/// LEAVE, "Operation") transcribed step by step for a 32-bit code segment, with the
/// stack addressed by SP or ESP as SS.B says ("StackSize"). It is not x86bt's code:
/// where the text is literal (FrameTemp := ESP, EBP := EBP - 4 in the display loop,
/// ESP := ESP - AllocSize by operand size), so is the model.
struct StackModel {
    esp: u32,
    ebp: u32,
    /// StackSize: 16 or 32.
    stack: u32,
    /// Bytes by stack offset.
    mem: std::collections::HashMap<u32, u8>,
    /// Every push: stack offset, size in bytes, value.
    pushes: Vec<(u32, u32, u32)>,
}

impl StackModel {
    fn new(stack: u32, esp_value: u32, ebp_value: u32) -> Self {
        StackModel {
            esp: esp_value,
            ebp: ebp_value,
            stack,
            mem: std::collections::HashMap::new(),
            pushes: Vec::new(),
        }
    }

    fn smask(&self) -> u32 {
        if self.stack == 32 {
            u32::MAX
        } else {
            0xFFFF
        }
    }

    /// SP or ESP, by StackSize.
    fn sp(&self) -> u32 {
        self.esp & self.smask()
    }

    fn set_sp(&mut self, v: u32) {
        self.esp = (self.esp & !self.smask()) | (v & self.smask());
    }

    fn read(&self, off: u32, bytes: u32) -> u32 {
        (0..bytes).fold(0, |v, i| {
            let at = off.wrapping_add(i) & self.smask();
            let b = *self.mem.get(&at).expect("the case primes what ENTER reads");
            v | u32::from(b) << (8 * i)
        })
    }

    fn write(&mut self, off: u32, bytes: u32, v: u32) {
        for i in 0..bytes {
            let at = off.wrapping_add(i) & self.smask();
            self.mem.insert(at, (v >> (8 * i)) as u8);
        }
    }

    /// Push: the stack pointer drops by the value's size at StackSize, then the
    /// value is stored there.
    fn push(&mut self, v: u32, bytes: u32) {
        let top = self.sp().wrapping_sub(bytes) & self.smask();
        self.set_sp(top);
        self.write(top, bytes, v);
        self.pushes.push((top, bytes, v));
    }

    fn pop(&mut self, bytes: u32) -> u32 {
        let v = self.read(self.sp(), bytes);
        self.set_sp(self.sp().wrapping_add(bytes));
        v
    }

    fn enter(&mut self, op: u32, alloc: u16, level: u8) {
        let bytes = op / 8;
        let level = level % 32;
        // IF OperandSize = 32: Push(EBP); FrameTemp := ESP.
        // ELSE: Push(BP); FrameTemp := SP.
        let frame = if op == 32 {
            self.push(self.ebp, 4);
            self.esp
        } else {
            self.push(self.ebp & 0xFFFF, 2);
            self.esp & 0xFFFF
        };
        if level > 0 {
            // FOR i := 1 to NestingLevel - 1: (E)BP := (E)BP - size at StackSize;
            // Push([(E)BP]).
            for _ in 1..level {
                let frame_ptr = (self.ebp & self.smask()).wrapping_sub(bytes) & self.smask();
                self.ebp = (self.ebp & !self.smask()) | frame_ptr;
                let v = self.read(frame_ptr, bytes);
                self.push(v, bytes);
            }
            // Push(FrameTemp).
            self.push(frame, bytes);
        }
        // CONTINUE: EBP := FrameTemp; ESP := ESP - AllocSize (OperandSize 32), or
        // BP := FrameTemp[15:0]; SP := SP - AllocSize (16).
        if op == 32 {
            self.ebp = frame;
            self.esp = self.esp.wrapping_sub(u32::from(alloc));
        } else {
            self.ebp = (self.ebp & 0xFFFF_0000) | (frame & 0xFFFF);
            let low = (self.esp & 0xFFFF).wrapping_sub(u32::from(alloc)) & 0xFFFF;
            self.esp = (self.esp & 0xFFFF_0000) | low;
        }
    }

    fn leave(&mut self, op: u32) {
        // IF StackAddressSize = 32: ESP := EBP, ELSE SP := BP.
        self.set_sp(self.ebp & self.smask());
        // IF OperandSize = 32: EBP := Pop(), ELSE BP := Pop().
        if op == 32 {
            self.ebp = self.pop(4);
        } else {
            let v = self.pop(2);
            self.ebp = (self.ebp & 0xFFFF_0000) | v;
        }
    }
}

/// One ENTER followed by LEAVE on a chosen stack.
struct EnterCase {
    name: &'static str,
    /// Operand size, 16 or 32.
    op: u32,
    /// Stack size (SS.B), 16 or 32.
    stack: u32,
    esp: u32,
    ebp: u32,
    alloc: u16,
    level: u8,
}

/// Runs `e` at ring 0: the display entries ENTER copies are primed with distinct
/// values, ENTER and LEAVE run on the chosen stack, and ESP, EBP and every pushed
/// value are checked against [`StackModel`].
fn enter_leave_case(k: &mut Kernel, e: &EnterCase) -> AsmResult {
    let (sel, base) = if e.stack == 32 {
        (DATA0, 0)
    } else {
        (SEL_SS16, STACK16_BASE)
    };
    let mut m = StackModel::new(e.stack, e.esp, e.ebp);
    let bytes = e.op / 8;
    let mut primed = Vec::new();
    for i in 1..u32::from(e.level % 32) {
        let off = (e.ebp & m.smask()).wrapping_sub(bytes * i) & m.smask();
        let v = 0xD00D_0000 | (i << 8) | i;
        m.write(off, bytes, v);
        primed.push((off, v));
    }
    let before = (m.esp, m.ebp);
    m.enter(e.op, e.alloc, e.level);
    let entered = (m.esp, m.ebp, m.pushes.clone());
    m.leave(e.op);
    // The cases stay clear of the spots where the SDM's wording by operand size and
    // x86bt's stack-size stack pointer could part (a borrow across bit 16).
    assert_eq!(m.esp, before.0, "{}: LEAVE undoes ENTER's stack", e.name);
    k.case(e.name, |k, c| {
        k.mov(dword_ptr(SAVED_ESP), esp)?;
        for &(off, v) in &primed {
            if bytes == 4 {
                k.mov(dword_ptr(base + off), v)?;
            } else {
                k.mov(word_ptr(base + off), v & 0xFFFF)?;
            }
        }
        k.mov(ax, u32::from(sel))?;
        k.mov(ss, ax)?;
        k.mov(esp, e.esp)?;
        k.mov(ebp, e.ebp)?;
        enter_raw(k, e.op, e.alloc, e.level)?;
        k.mov(dword_ptr(ENTER_ESP), esp)?;
        k.mov(dword_ptr(ENTER_EBP), ebp)?;
        leave_raw(k, e.op)?;
        k.mov(dword_ptr(LEAVE_ESP), esp)?;
        k.mov(dword_ptr(LEAVE_EBP), ebp)?;
        k.mov(ax, u32::from(DATA0))?;
        k.mov(ss, ax)?;
        k.mov(esp, dword_ptr(SAVED_ESP))?;
        k.expect32(c, ENTER_ESP, entered.0)?;
        k.expect32(c, ENTER_EBP, entered.1)?;
        for &(off, size, v) in &entered.2 {
            if size == 4 {
                k.expect32(c, base + off, v)?;
            } else {
                k.expect16(c, base + off, v as u16)?;
            }
        }
        k.expect32(c, LEAVE_ESP, m.esp)?;
        k.expect32(c, LEAVE_EBP, m.ebp)
    })
}

/// The operand-size by stack-size matrix at levels 0, 1 and 3. 32-bit stacks run
/// at 0x158000; with a 32-bit operand size EBP's upper half (0x0014) differs from
/// ESP's, while with a 16-bit one it must match, since LEAVE then reloads ESP from
/// all of EBP (SDM vol. 2A ENTER: software keeps EBP within the stack's 64 KiB for
/// a 66H ENTER). 16-bit stacks run at SS16:8000 with EBP's upper half 0x1234, which
/// a 16-bit operand size keeps. With a 32-bit operand size on the 16-bit stack
/// ESP's upper half is 0 here (the kernel without QEMU covers a non-zero one, where
/// QEMU differs).
#[rustfmt::skip]
const ENTER_MATRIX: [EnterCase; 12] = [
    EnterCase { name: "enter_op32_stack32_level0_matches_sdm", op: 32, stack: 32, esp: 0x0015_8000, ebp: 0x0014_8100, alloc: 0x20, level: 0 },
    EnterCase { name: "enter_op32_stack32_level1_matches_sdm", op: 32, stack: 32, esp: 0x0015_8000, ebp: 0x0014_8100, alloc: 0x10, level: 1 },
    EnterCase { name: "enter_op32_stack32_level3_matches_sdm", op: 32, stack: 32, esp: 0x0015_8000, ebp: 0x0014_8100, alloc: 0x08, level: 3 },
    EnterCase { name: "enter_op16_stack32_level0_matches_sdm", op: 16, stack: 32, esp: 0x0015_8000, ebp: 0x0015_8100, alloc: 0x20, level: 0 },
    EnterCase { name: "enter_op16_stack32_level1_matches_sdm", op: 16, stack: 32, esp: 0x0015_8000, ebp: 0x0015_8100, alloc: 0x10, level: 1 },
    EnterCase { name: "enter_op16_stack32_level3_matches_sdm", op: 16, stack: 32, esp: 0x0015_8000, ebp: 0x0015_8100, alloc: 0x08, level: 3 },
    EnterCase { name: "enter_op32_stack16_level0_matches_sdm", op: 32, stack: 16, esp: 0x0000_8000, ebp: 0x1234_8100, alloc: 0x20, level: 0 },
    EnterCase { name: "enter_op32_stack16_level1_matches_sdm", op: 32, stack: 16, esp: 0x0000_8000, ebp: 0x1234_8100, alloc: 0x10, level: 1 },
    EnterCase { name: "enter_op32_stack16_level3_matches_sdm", op: 32, stack: 16, esp: 0x0000_8000, ebp: 0x1234_8100, alloc: 0x08, level: 3 },
    EnterCase { name: "enter_op16_stack16_level0_matches_sdm", op: 16, stack: 16, esp: 0x00AB_8000, ebp: 0x1234_8100, alloc: 0x20, level: 0 },
    EnterCase { name: "enter_op16_stack16_level1_matches_sdm", op: 16, stack: 16, esp: 0x00AB_8000, ebp: 0x1234_8100, alloc: 0x10, level: 1 },
    EnterCase { name: "enter_op16_stack16_level3_matches_sdm", op: 16, stack: 16, esp: 0x00AB_8000, ebp: 0x1234_8100, alloc: 0x08, level: 3 },
];

/// One POP SS: from the stack `from` (`DATA0` flat 32-bit, or [`SEL_SS16`]) at
/// `esp`, popping `bits` whose low word is `to`; checks ESP and SS afterwards.
fn pop_ss_case(
    k: &mut Kernel,
    name: &str,
    (from, esp_before): (u16, u32),
    (bits, to): (u32, u16),
    esp_after: u32,
) -> AsmResult {
    let base = if from == SEL_SS16 { STACK16_BASE } else { 0 };
    let slot = base + (esp_before & if from == SEL_SS16 { 0xFFFF } else { u32::MAX });
    k.case(name, |k, c| {
        k.mov(dword_ptr(SAVED_ESP), esp)?;
        if bits == 32 {
            // The upper word of the popped dword is not part of the selector.
            k.mov(dword_ptr(slot), 0xABCD_0000 | u32::from(to))?;
        } else {
            k.mov(word_ptr(slot), u32::from(to))?;
        }
        k.mov(ax, u32::from(from))?;
        k.mov(ss, ax)?;
        k.mov(esp, esp_before)?;
        pop_ss_raw(k, bits)?;
        k.mov(dword_ptr(POP_ESP), esp)?;
        k.mov(word_ptr(POP_SS), ss)?;
        k.mov(ax, u32::from(DATA0))?;
        k.mov(ss, ax)?;
        k.mov(esp, dword_ptr(SAVED_ESP))?;
        k.expect32(c, POP_ESP, esp_after)?;
        k.expect16(c, POP_SS, to)
    })
}

fn stack16_descriptor(k: &mut Kernel) {
    k.gdt(
        u32::from(SEL_SS16) / 8,
        segment(STACK16_BASE, 0xFFFF, desc::P | desc::S | desc::DATA_RW, 0),
    );
}

fn mixed_size_stacks(k: &mut Kernel) -> AsmResult {
    stack16_descriptor(k);

    // SDM vol. 2B POP, "Operation": the branch is chosen by StackAddrSize, the
    // current stack's B flag, and the increment is "ESP := ESP + 4" (or 2) when it
    // is 32, "SP := SP + 4" (or 2) when it is 16; loading SS does not change which
    // register the instruction steps. From a 32-bit stack at 0x15FFFC the pop
    // carries into bit 16 even though the new SS is 16-bit.
    pop_ss_case(
        k,
        "pop_ss_dword_from_32bit_stack_to_16bit_steps_esp",
        (DATA0, 0x0015_FFFC),
        (32, SEL_SS16),
        0x0016_0000,
    )?;
    pop_ss_case(
        k,
        "pop_ss_word_from_32bit_stack_to_16bit_steps_esp",
        (DATA0, 0x0015_FFFE),
        (16, SEL_SS16),
        0x0016_0000,
    )?;
    // From the 16-bit stack at SP = 0xFFFC the increment wraps SP to 0 and keeps
    // ESP's upper half (0xABCD), though the new SS is 32-bit.
    pop_ss_case(
        k,
        "pop_ss_dword_from_16bit_stack_to_32bit_steps_sp",
        (SEL_SS16, 0xABCD_FFFC),
        (32, DATA0),
        0xABCD_0000,
    )?;
    pop_ss_case(
        k,
        "pop_ss_word_from_16bit_stack_to_32bit_steps_sp",
        (SEL_SS16, 0xABCD_FFFE),
        (16, DATA0),
        0xABCD_0000,
    )?;

    for e in &ENTER_MATRIX {
        enter_leave_case(k, e)?;
    }
    k.exit()
}

#[test]
fn pm_kernel_mixed_size_stacks_all_pass() {
    assert_all_pass("mixed_size_stacks", &build(mixed_size_stacks));
}

// ================================================================================
// Precise ENTER faults, ENTER's FrameTemp on a 16-bit stack, a 16-bit TSS
// ================================================================================
//
// These checks are not compared with QEMU, which differs on each (QEMU 10.0's
// target/i386 as read for facts): its ENTER stores each push as it goes, so a
// fault on a later push leaves the earlier ones in memory, and it never checks the
// final stack pointer after AllocSize; it computes FrameTemp as ESP - 4 without
// keeping ESP's upper half on a 16-bit stack; and its 16-bit TSS load reads the
// segment selectors at a 4-byte stride.

/// An expand-down ring-3 stack segment (B = 1, 4 KiB granular) whose valid
/// offsets are [`STACK_PAGE`] and up, GDT index 7.
const SEL_DOWN3: u16 = 0x38 | 3;
/// A 16-bit TSS (GDT index 8) at `TSS_AUX[0]`, and the code segment its task runs
/// in (index 9): 32-bit, based at the task's code so that IP 0 starts it.
const SEL_TSS16: u16 = 0x40;
const SEL_TASK16_CS: u16 = 0x48;
/// The page the faulting ENTERs push into; the page below it is not present.
const STACK_PAGE: u32 = 0x14_0000;
const HOLE_PAGE: u32 = STACK_PAGE - 0x1000;
/// Page tables for this kernel.
const EDGE_PD: u32 = FREE;
const EDGE_PT0: u32 = FREE + 0x1000;
/// The ring-3 ENTERs' frame pointer and the two display entries below it.
const EDGE_EBP: u32 = STACK_PAGE + 0x100;
const DISPLAY: [u32; 2] = [0xD15B_0001, 0xD15B_0002];
/// What the pushes would overwrite.
const SENTINEL: u32 = 0x5E47_1E00;
/// What the 16-bit task records: the eight GPRs in PUSHAD's register order
/// (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI), EFLAGS, FS and GS.
const T16_REGS: u32 = SCRATCH + 0x100;
const T16_EFLAGS: u32 = SCRATCH + 0x120;
const T16_FS: u32 = SCRATCH + 0x124;
const T16_GS: u32 = SCRATCH + 0x128;
/// The 16-bit task's words: IP, FLAGS, the GPRs (AX..DI), and its SP.
const T16_WORDS: [u16; 8] = [
    0x1111, 0x2222, 0x3333, 0x4444, 0x7000, 0x6666, 0x7777, 0x8888,
];
/// 16-bit TSS field offsets (SDM vol. 3A Figure 7-11).
mod tss16_off {
    pub const IP: u32 = 0x0E;
    pub const FLAGS: u32 = 0x10;
    pub const AX: u32 = 0x12;
    pub const ES: u32 = 0x22;
    pub const CS: u32 = 0x24;
    pub const SS: u32 = 0x26;
    pub const DS: u32 = 0x28;
    pub const LDT: u32 = 0x2A;
}

fn edge_tables(k: &mut Kernel) {
    stack16_descriptor(k);
    k.gdt(
        u32::from(SEL_DOWN3) / 8,
        segment(
            0,
            (STACK_PAGE >> 12) - 1,
            desc::P | desc::S | desc::DPL3 | desc::DATA_RW_DOWN,
            desc::G | desc::DB,
        ),
    );
    k.gdt(
        u32::from(SEL_TSS16) / 8,
        segment(TSS_AUX[0], 0x2B, desc::P | desc::TSS16, 0),
    );
    let task = k.addr("task16");
    k.gdt(
        u32::from(SEL_TASK16_CS) / 8,
        segment(task, 0xFFFF, desc::P | desc::S | desc::CODE_XR, desc::DB),
    );
    let t = TSS_AUX[0];
    let word = |k: &mut Kernel, off: u32, v: u16| k.poke(t + off, &v.to_le_bytes());
    word(k, tss16_off::IP, 0);
    word(k, tss16_off::FLAGS, eflags::FIXED as u16);
    for (i, v) in T16_WORDS.iter().enumerate() {
        word(k, tss16_off::AX + 2 * i as u32, *v);
    }
    word(k, tss16_off::ES, DATA0);
    word(k, tss16_off::CS, SEL_TASK16_CS);
    word(k, tss16_off::SS, SEL_SS16);
    word(k, tss16_off::DS, DATA0);
    word(k, tss16_off::LDT, 0);

    identity_paging(k, EDGE_PD, EDGE_PT0);
    k.poke32(EDGE_PT0 + (HOLE_PAGE >> 12) * 4, 0);
    // A task switch back to the main task loads CR3 from its TSS, where the
    // outgoing switch stored nothing (SDM vol. 3A §7.2.1: CR3 is not saved).
    k.poke32(TSS_MAIN + 0x1C, EDGE_PD);
}

/// Primes the display entries below [`EDGE_EBP`] and writes [`SENTINEL`] + i at the
/// `n` dwords from `top` down.
fn prime_edge(k: &mut Kernel, top: u32, n: u32) -> AsmResult {
    k.mov(dword_ptr(EDGE_EBP - 4), DISPLAY[0])?;
    k.mov(dword_ptr(EDGE_EBP - 8), DISPLAY[1])?;
    for i in 0..n {
        k.mov(dword_ptr(top - 4 * i), SENTINEL + i)?;
    }
    Ok(())
}

/// A ring-3 ENTER (32-bit operand size) at ESP = `esp`, EBP = [`EDGE_EBP`], on
/// `stack` (the flat ring-3 stack or [`SEL_DOWN3`]) that must fault with `vector`
/// (and CR2 = `cr2` for #PF) leaving ESP, EBP, SS and the `n` dwords it would have
/// pushed from `esp - 4` down as they were.
#[allow(clippy::too_many_arguments)]
fn enter_fault_case(
    k: &mut Kernel,
    name: &str,
    stack: u16,
    esp_before: u32,
    (alloc, level): (u16, u8),
    n: u32,
    vector: u32,
    cr2_want: u32,
) -> AsmResult {
    k.case(name, |k, c| {
        prime_edge(k, esp_before - 4, n)?;
        k.arm(c)?;
        let r3 = c.label("ring3");
        k.iret_to_ring3(&r3)?;
        k.at(&r3)?;
        k.mov(ax, u32::from(stack))?;
        k.mov(ss, ax)?;
        k.mov(esp, esp_before)?;
        k.mov(ebp, EDGE_EBP)?;
        k.mark(c)?;
        enter_raw(k, 32, alloc, level)?;
        k.landing(c)?;
        if vector == vector::PF {
            // SDM vol. 3A §4.7: a user-mode write to a not-present page.
            k.expect_fault_at_mark(c, vector::PF, 6)?;
            k.expect32(c, rec::CR2, cr2_want)?;
        } else {
            k.expect_fault_at_mark(c, vector::SS, 0)?;
        }
        k.expect32(c, rec::ESP, esp_before)?;
        k.expect32(c, rec::EBP, EDGE_EBP)?;
        k.expect16(c, rec::SS, stack)?;
        for i in 0..n {
            k.expect32(c, esp_before - 4 - 4 * i, SENTINEL + i)?;
        }
        Ok(())
    })
}

fn stack_edges(k: &mut Kernel) -> AsmResult {
    edge_tables(k);
    enable_paging(k, EDGE_PD)?;

    // SDM vol. 2A ENTER, "Operation": with OperandSize = 32, "Push(EBP)" moves SP
    // only on a 16-bit stack, then "FrameTemp := ESP", all 32 bits, and at CONTINUE
    // "EBP := FrameTemp"; level 1 pushes FrameTemp as a doubleword. From
    // ESP = 0x00010000 (SP = 0): EBP = 0x0001FFFC, and [SS:FFF8] = 0x0001FFFC.
    enter_leave_case(
        k,
        &EnterCase {
            name: "enter_op32_stack16_frame_temp_keeps_esp_upper_half",
            op: 32,
            stack: 16,
            esp: 0x0001_0000,
            ebp: 0x1234_5678,
            alloc: 0x10,
            level: 1,
        },
    )?;

    // SDM vol. 2A ENTER: "the ENTER instruction causes a page fault whenever a write
    // using the final value of the stack pointer (within the current stack segment)
    // would do so", and #SS(0) "if the new value of the SP or ESP register is outside
    // the stack segment limit"; vol. 3A §6.5: a fault reports the state from before
    // the faulting instruction, so ENTER leaves registers and memory as they were.
    //
    // Level 3 from ESP = STACK_PAGE + 12: EBP at +8, two display copies at +4 and
    // +0, FrameTemp at STACK_PAGE - 4 in the hole: #PF there, nothing written.
    enter_fault_case(
        k,
        "enter_final_push_not_present_pf_changes_nothing",
        DATA3,
        STACK_PAGE + 12,
        (0, 3),
        3,
        vector::PF,
        STACK_PAGE - 4,
    )?;
    // Level 0 from STACK_PAGE + 8 with AllocSize 16: the push lands at +4, the
    // final ESP (STACK_PAGE - 12) is in the hole.
    enter_fault_case(
        k,
        "enter_final_esp_not_present_pf_changes_nothing",
        DATA3,
        STACK_PAGE + 8,
        (16, 0),
        1,
        vector::PF,
        STACK_PAGE - 12,
    )?;
    // The same two on the expand-down stack, whose limit sits at the hole: the
    // segment check comes first and raises #SS(0).
    enter_fault_case(
        k,
        "enter_final_push_below_limit_ss_changes_nothing",
        SEL_DOWN3,
        STACK_PAGE + 12,
        (0, 3),
        3,
        vector::SS,
        0,
    )?;
    enter_fault_case(
        k,
        "enter_final_esp_below_limit_ss_changes_nothing",
        SEL_DOWN3,
        STACK_PAGE + 8,
        (16, 0),
        1,
        vector::SS,
        0,
    )?;

    // A task switch into a 16-bit TSS loads only the low words of the GPRs (SDM vol.
    // 3A §7.6 leaves the upper halves undefined): x86bt sets them to all ones, as
    // docs/design.md records, whatever the outgoing task held. EFLAGS' upper half
    // (AC here) is kept from the outgoing task, and FS and GS, which a 16-bit TSS
    // lacks, are NULL. The outgoing upper halves are 0x5A5A to tell them apart.
    k.case(
        "task_switch_into_16bit_tss_sets_upper_halves_to_ones",
        |k, c| {
            k.pushfd()?;
            k.or(dword_ptr(esp), eflags::AC)?;
            k.popfd()?;
            k.mov(dword_ptr(SAVED_ESP), esp)?;
            for r in [eax, ecx, edx, ebx, ebp, esi, edi] {
                k.mov(r, 0x5A5A_0000u32)?;
            }
            k.jmp_far(SEL_TSS16, 0)?;
            k.at(&c.label("back"))?;
            k.pushfd()?;
            k.and(dword_ptr(esp), !eflags::AC)?;
            k.popfd()?;
            for (i, v) in T16_WORDS.iter().enumerate() {
                k.expect32(c, T16_REGS + 4 * i as u32, 0xFFFF_0000 | u32::from(*v))?;
            }
            k.expect_bits(
                c,
                T16_EFLAGS,
                0xFFFF | eflags::AC,
                eflags::AC | eflags::FIXED,
            )?;
            k.expect32(c, T16_FS, 0)?;
            k.expect32(c, T16_GS, 0)
        },
    )?;
    k.exit()?;

    // The 16-bit task: records its state and jumps back to the main task. Its
    // stack is SS16:7000 (16-bit), so the PUSHFD moves SP only.
    k.at("task16")?;
    for (i, r) in [eax, ecx, edx, ebx, esp, ebp, esi, edi]
        .into_iter()
        .enumerate()
    {
        k.mov(dword_ptr(T16_REGS + 4 * i as u32), r)?;
    }
    k.pushfd()?;
    k.pop(eax)?;
    k.mov(dword_ptr(T16_EFLAGS), eax)?;
    k.xor(eax, eax)?;
    k.mov(ax, fs)?;
    k.mov(dword_ptr(T16_FS), eax)?;
    k.mov(ax, gs)?;
    k.mov(dword_ptr(T16_GS), eax)?;
    k.jmp_far(TSS_SEL, 0)?;
    k.jmp_to("task16")
}

#[test]
fn pm_kernel_stack_edges_all_pass() {
    assert_all_pass_without_qemu("stack_edges", &build(stack_edges));
}

// ================================================================================
// System tables read afresh by every event
// ================================================================================

/// The vectors this kernel's own handlers take (DPL-3 interrupt gates).
const EV_A: u32 = 0x82;
const EV_B: u32 = 0x83;
/// Counters the handlers add 1 to: `ev_a` (reached through the first gate of
/// EV_A), `ev_b` (its second gate) and `ev_esp` (EV_B, which also records
/// ESP at its entry, by count).
const EV_COUNT_A: u32 = SCRATCH;
const EV_COUNT_B: u32 = SCRATCH + 0x04;
const EV_COUNT_ESP: u32 = SCRATCH + 0x08;
const EV_ESP: u32 = SCRATCH + 0x10;
/// The paging structures of the remap case, and the page the GDT/IDT page is
/// copied to.
const EV_PD: u32 = FREE;
const EV_PT0: u32 = FREE + 0x1000;
const EV_TABLES_COPY: u32 = FREE + 0x2000;
/// The page holding the GDT and the IDT.
const EV_TABLES_PAGE: u32 = GDT & !0xFFF;
/// TSS.ESP0 (SDM vol. 3A Figure 8-2).
const TSS_ESP0: u32 = TSS_MAIN + 4;
/// The access byte of CODE0's descriptor, and its accessed bit.
const CODE0_ACCESS: u32 = GDT + CODE0 as u32 + 5;
const ACCESSED: u32 = 1;

/// IDT entry `vector`'s two dwords = an interrupt gate to `handler` (DPL 3).
fn set_gate(k: &mut Kernel, table: u32, vector: u32, handler: &str) -> AsmResult {
    let g = gate(CODE0, k.addr(handler), desc::INT_GATE, 3, 0);
    k.mov(dword_ptr(table + vector * 8), g as u32)?;
    k.mov(dword_ptr(table + vector * 8 + 4), (g >> 32) as u32)
}

/// The CPU reads the IDT gate, the TSS's stack pointer, and the GDT
/// descriptors again at every INT n (SDM vol. 3A §6.12.1; vol. 2A INT n,
/// "Operation"): nothing it read for one event may stand in for memory a
/// store, or a remapped page, has changed before the next. Each check runs
/// the same INT twice with such a change in between, so an engine that kept
/// what it read (or a stale translation of it) takes the old handler, stack
/// or descriptor the second time.
fn event_tables(k: &mut Kernel) -> AsmResult {
    set_gate(k, IDT, EV_A, "ev_a")?;
    set_gate(k, IDT, EV_B, "ev_esp")?;

    // A store from ring 3 (no paging: every page is writable) rewrites the
    // gate between two INTs; the second goes to the new handler.
    k.case("event_int_takes_gate_rewritten_between_ints", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        k.mov(ax, u32::from(DATA3))?;
        k.mov(ds, ax)?;
        k.int(EV_A)?;
        k.int(EV_A)?;
        set_gate(k, IDT, EV_A, "ev_b")?;
        k.int(EV_A)?;
        k.int(0x80)?;
        k.landing(c)?;
        k.expect32(c, rec::VECTOR, 0x80)?;
        k.expect32(c, EV_COUNT_A, 2)?;
        k.expect32(c, EV_COUNT_B, 1)?;
        set_gate(k, IDT, EV_A, "ev_a")
    })?;

    // TSS.ESP0 rewritten between two INTs from ring 3: the second frame is
    // on the new stack (SDM vol. 3A §6.12.1, Figure 6-4: five dwords).
    k.case("event_int_takes_tss_esp0_rewritten_between_ints", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        k.mov(ax, u32::from(DATA3))?;
        k.mov(ds, ax)?;
        k.int(EV_B)?;
        k.mov(dword_ptr(TSS_ESP0), ESP0_TOP - 0x100)?;
        k.int(EV_B)?;
        k.int(0x80)?;
        k.landing(c)?;
        k.mov(dword_ptr(TSS_ESP0), ESP0_TOP)?;
        k.expect32(c, EV_COUNT_ESP, 2)?;
        k.expect32(c, EV_ESP, ESP0_TOP - 20)?;
        k.expect32(c, EV_ESP + 4, ESP0_TOP - 0x100 - 20)
    })?;

    // With paging, the page holding the IDT remapped (its PTE rewritten,
    // then INVLPG, vol. 3A §4.10.4.1) between two INTs: the second reads the
    // gate from the new page, a copy whose EV_A gate leads to `ev_b`.
    k.case("event_int_reads_idt_through_remapped_page", |k, c| {
        k.mov(dword_ptr(EV_COUNT_A), 0u32)?;
        k.mov(dword_ptr(EV_COUNT_B), 0u32)?;
        k.mov(esi, EV_TABLES_PAGE)?;
        k.mov(edi, EV_TABLES_COPY)?;
        k.mov(ecx, 1024u32)?;
        k.cld()?;
        k.rep().movsd()?;
        set_gate(k, EV_TABLES_COPY + (IDT - EV_TABLES_PAGE), EV_A, "ev_b")?;
        enable_paging(k, EV_PD)?;
        k.int(EV_A)?;
        let pte = EV_PT0 + (EV_TABLES_PAGE >> 12) * 4;
        let flags = (pm::pte::P | pm::pte::RW | pm::pte::US) as u32;
        k.mov(dword_ptr(pte), EV_TABLES_COPY | flags)?;
        k.invlpg(ptr(IDT))?;
        k.int(EV_A)?;
        k.mov(dword_ptr(pte), EV_TABLES_PAGE | flags)?;
        k.invlpg(ptr(IDT))?;
        update_cr(k, cr0, 0, ctl::CR0_PG)?;
        k.expect32(c, EV_COUNT_A, 1)?;
        k.expect32(c, EV_COUNT_B, 1)
    })?;
    k.exit()?;
    event_handlers(k)
}

/// The handlers of [`event_tables`], after its main flow.
fn event_handlers(k: &mut Kernel) -> AsmResult {
    for (name, counter) in [("ev_a", EV_COUNT_A), ("ev_b", EV_COUNT_B)] {
        k.at(name)?;
        k.add(dword_ptr(counter), 1)?;
        k.iretd()?;
    }
    k.at("ev_esp")?;
    k.mov(eax, dword_ptr(EV_COUNT_ESP))?;
    k.mov(dword_ptr(eax * 4 + EV_ESP), esp)?;
    k.add(dword_ptr(EV_COUNT_ESP), 1)?;
    k.iretd()
}

/// The accessed bit of the code descriptor an INT loads, cleared between two
/// INTs (see [`event_tables`]).
fn event_accessed_bit(k: &mut Kernel) -> AsmResult {
    set_gate(k, IDT, EV_A, "ev_a")?;
    set_gate(k, IDT, EV_B, "ev_esp")?;
    // Loading CS through the gate sets the code descriptor's accessed bit
    // when it is clear (vol. 3A §3.4.5.1), each time: ring 3 clears it, an
    // INT sets it, ring 3 clears it again, the next INT sets it again.
    k.case("event_int_sets_cleared_accessed_bit_again", |k, c| {
        k.arm(c)?;
        let ring3 = c.label("ring3");
        k.iret_to_ring3(&ring3)?;
        k.at(&ring3)?;
        k.mov(ax, u32::from(DATA3))?;
        k.mov(ds, ax)?;
        k.and(byte_ptr(CODE0_ACCESS), !ACCESSED & 0xFF)?;
        k.int(EV_A)?;
        k.movzx(ebx, byte_ptr(CODE0_ACCESS))?;
        k.and(byte_ptr(CODE0_ACCESS), !ACCESSED & 0xFF)?;
        k.movzx(ecx, byte_ptr(CODE0_ACCESS))?;
        k.int(EV_A)?;
        k.movzx(edx, byte_ptr(CODE0_ACCESS))?;
        k.int(0x80)?;
        k.landing(c)?;
        k.expect32(c, rec::EBX, 0x9B)?;
        k.expect32(c, rec::ECX, 0x9A)?;
        k.expect32(c, rec::EDX, 0x9B)
    })?;

    k.exit()?;
    event_handlers(k)
}

#[test]
fn pm_kernel_event_accessed_bit_all_pass() {
    // QEMU (TCG) leaves the accessed bit of the code descriptor an interrupt
    // gate loads as it is (its protected-mode interrupt delivery loads CS
    // without it), where the SDM sets it for every descriptor loaded into a
    // segment register: the known deviation this kernel pins.
    assert_all_pass_without_qemu("event_accessed_bit", &build(event_accessed_bit));
}

#[test]
fn pm_kernel_event_tables_all_pass() {
    let built = build(|k| {
        identity_paging(k, EV_PD, EV_PT0);
        event_tables(k)
    });
    assert_all_pass("event_tables", &built);
}
