//! Protected-mode test kernels: Multiboot images assembled here with iced-x86, booted
//! by the real `x86bt run --kernel`, each printing one `PASS`/`FAIL` line per check
//! on COM1 and leaving through the debug-exit port (see `pm/mod.rs` for the shared
//! runtime, memory map and GDT).
//!
//! One kernel per area: segment-load faults, privilege transitions through gates,
//! task switches, virtual-8086 mode, paging faults and TLB semantics, and
//! self-modifying code through a second linear alias. Every expected value comes
//! from the Intel SDM (cited per check), never from running x86bt.

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
        k.mov(dword_ptr(EXPAND_DOWN_LIMIT + 1), 0x0DDB_A11u32)?;
        k.mov(ax, u32::from(SEL_EXPAND_DOWN))?;
        k.mov(es, ax)?;
        k.mov(ebx, dword_ptr(EXPAND_DOWN_LIMIT + 1).es())?;
        k.flat_data_segments()?;
        k.expect_reg(c, ebx, 0x0DDB_A11)
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
