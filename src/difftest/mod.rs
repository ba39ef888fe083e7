//! `x86bt difftest`: runs the same guest under QEMU (paused, stepped through its
//! gdbstub) and under x86bt, in lockstep, and compares after every instruction:
//! GPRs, EIP and EFLAGS (without the flags the SDM leaves undefined after that
//! instruction), segment selectors, and after any instruction that can change
//! them, every segment's base, limit and attributes; CR0, CR2, CR3, CR4; and the
//! bytes of memory the instruction wrote.
//!
//! Inputs from the environment are aligned, not compared: the results of IN,
//! INS, RDTSC, RDMSR and CPUID are taken from QEMU (different CPU models,
//! different clocks, different device contents). Neither side delivers asynchronous interrupts while stepping (QEMU's
//! gdbstub masks them; x86bt's run loop is not used), so the compared window has
//! none. See `docs/difftest.md`.

pub mod allow;
pub mod campaign;
pub mod cmd;
pub mod gdb;
pub mod gen;
pub mod qemu;

use crate::error::Error;
use crate::vm::Vm;
use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic};
use qemu::{QState, Qemu};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;
use x86bt_cpu::mmu::cr4;
use x86bt_cpu::mode::CpuMode;
use x86bt_cpu::state::{flags, reg, sreg, RunState};
use x86bt_machine::pc::{self, PcConfig};

/// What to run.
pub struct DiffSetup {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The BIOS image both sides boot (for QEMU, a file).
    pub bios: PathBuf,
    /// Guest RAM in MiB.
    pub ram_mib: u64,
    /// Extra QEMU arguments (e.g. a `-device loader` for `--flat`).
    pub qemu_extra: Vec<String>,
    /// A raw image x86bt loads at an address (the `--flat` counterpart).
    pub flat: Option<(Vec<u8>, u64)>,
    /// A Multiboot kernel (see [`lockstep`]): its path.
    pub kernel: Option<PathBuf>,
    /// Instructions to compare.
    pub max_insns: u64,
    /// Instructions to run first without comparing.
    pub skip: u64,
    /// Disassembled history shown on divergence.
    pub history: usize,
    /// Test-only: after this many instructions, flip bit 0 of x86bt's EAX.
    pub inject_bug: Option<u64>,
    /// On an allowed divergence, take QEMU's values and go on comparing.
    pub continue_allowed: bool,
    /// Whether a continued allowed divergence goes unreported on stderr (a
    /// campaign counts them instead).
    pub quiet_continue: bool,
    /// The engine x86bt runs each instruction on (one instruction per unit).
    pub engine: crate::cli::Engine,
}

/// One differing field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// The field's name.
    pub name: String,
    /// x86bt's value.
    pub ours: u64,
    /// QEMU's value.
    pub qemu: u64,
}

/// How a lockstep run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Everything matched.
    Agree {
        /// Instructions compared.
        compared: u64,
        /// Whether the guest halted (the end of a test program).
        halted: bool,
        /// With `--continue-allowed`: the allow-list entries passed on the
        /// way, one per forgiven instruction.
        continued: Vec<&'static str>,
    },
    /// A divergence on the allow-list.
    Allowed {
        /// Instruction count.
        at: u64,
        /// The entry's name.
        name: &'static str,
        /// Its reason.
        reason: &'static str,
    },
    /// A real divergence.
    Diverged {
        /// Instruction count (1-based: the instruction that just ran).
        at: u64,
        /// CS base + EIP of that instruction.
        addr: u64,
        /// The last instructions, disassembled.
        history: Vec<String>,
        /// What differs.
        diffs: Vec<FieldDiff>,
        /// What the instruction read, on x86bt before it ran (registers,
        /// MXCSR and the memory operand), to judge the divergence by.
        inputs: Vec<String>,
        /// With `--continue-allowed`: the allow-list entries passed before it.
        continued: Vec<&'static str>,
    },
}

fn qemu_err(e: std::io::Error) -> Error {
    Error::Usage(format!("qemu: {e}"))
}

/// Decodes the instruction at CS:EIP for the report and the per-instruction rules,
/// with its linear address, and again without iced's check for encodings the SDM
/// calls invalid (MOV CS, r/m decodes as MOV then; see the mov-cs allow entry).
fn current_insn(vm: &mut Vm) -> (Instruction, u64, Instruction) {
    let cpu = &mut vm.cpu;
    let lmask = lin_mask(cpu);
    let lin = cpu.seg[sreg::CS].base.wrapping_add(cpu.rip) & lmask;
    let mut bytes = Vec::with_capacity(15);
    let saved = cpu.log_writes;
    cpu.log_writes = false;
    for i in 0..15u64 {
        match x86bt_cpu::mmu::read_lin_as(
            cpu,
            &mut vm.machine,
            x86bt_machine::Linear(lin.wrapping_add(i) & lmask),
            1,
            false,
        ) {
            Ok(b) => bytes.push(b as u8),
            Err(_) => break,
        }
    }
    cpu.log_writes = saved;
    let bits = CpuMode::of(cpu).bits();
    let ins = Decoder::with_ip(bits, &bytes, cpu.rip, DecoderOptions::NONE).decode();
    let lenient =
        Decoder::with_ip(bits, &bytes, cpu.rip, DecoderOptions::NO_INVALID_CHECK).decode();
    (ins, lin, lenient)
}

fn format(ins: &Instruction) -> String {
    let mut s = String::new();
    IntelFormatter::new().format(ins, &mut s);
    s
}

/// The EFLAGS bits not compared after `ins`: those the SDM leaves undefined,
/// plus RF (QEMU does not model it on single-step boundaries).
fn flag_mask(ins: &Instruction, count: Option<u8>) -> u64 {
    !(u64::from(x86bt_decoder::undefined::undefined_flags(ins, count)) | flags::RF)
}

/// The effective count of a shift or rotate about to run (CL or an immediate),
/// masked as the CPU masks it.
fn shift_count(ins: &Instruction, cpu: &x86bt_cpu::CpuState) -> Option<u8> {
    let n = ins.op_count();
    if n < 2 {
        return None;
    }
    let last = n - 1;
    let raw = match ins.op_kind(last) {
        iced_x86::OpKind::Immediate8 => u64::from(ins.immediate8()),
        iced_x86::OpKind::Register if ins.op_register(last) == iced_x86::Register::CL => {
            cpu.gpr[reg::RCX] & 0xFF
        }
        _ => return None,
    };
    // 64-bit operands mask the count to 6 bits (SDM vol. 2B, SAL/SAR/SHL/SHR).
    let is64 = ins.op0_kind() == iced_x86::OpKind::Register && ins.op0_register().size() == 8
        || ins.op0_kind() == iced_x86::OpKind::Memory && ins.memory_size().size() == 8;
    Some((raw & if is64 { 0x3F } else { 0x1F }) as u8)
}

fn push_diff(d: &mut Vec<FieldDiff>, name: &str, ours: u64, qemu: u64) {
    if ours != qemu {
        d.push(FieldDiff {
            name: name.to_string(),
            ours,
            qemu,
        });
    }
}

/// Linear addresses wrap at 4 GiB outside 64-bit mode.
fn lin_mask(cpu: &x86bt_cpu::CpuState) -> u64 {
    if CpuMode::of(cpu).is_64() {
        u64::MAX
    } else {
        0xFFFF_FFFF
    }
}

/// GPR names in x86bt's order: the 64-bit names in 64-bit mode, where all 64 bits
/// are compared, the 32-bit ones elsewhere.
const GPR64_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const GPR32_NAMES: [&str; 16] = [
    "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "r8d", "r9d", "r10d", "r11d", "r12d",
    "r13d", "r14d", "r15d",
];

/// The MXCSR and XMM registers of x86bt's FXSAVE image (`CpuState::fx`: MXCSR at
/// bytes 24..28, XMMi at 160 + 16i).
fn our_mxcsr(c: &x86bt_cpu::CpuState) -> u32 {
    u32::from_le_bytes([c.fx[24], c.fx[25], c.fx[26], c.fx[27]])
}

fn our_xmm(c: &x86bt_cpu::CpuState, i: usize) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&c.fx[160 + 16 * i..176 + 16 * i]);
    u128::from_le_bytes(b)
}

fn compare_regs(vm: &Vm, q: &QState, fmask: u64) -> Vec<FieldDiff> {
    let c = &vm.cpu;
    let mut d = Vec::new();
    // Outside 64-bit mode only the low halves are architectural (QEMU's x86_64
    // gdbstub masks the rest there too).
    let long = CpuMode::of(c).is_64();
    let (mask, names) = if long {
        (u64::MAX, &GPR64_NAMES)
    } else {
        (0xFFFF_FFFF, &GPR32_NAMES)
    };
    for (i, n) in names.iter().enumerate().take(q.ngpr) {
        push_diff(&mut d, n, c.gpr[i] & mask, q.gpr[i] & mask);
    }
    push_diff(
        &mut d,
        if long { "rip" } else { "eip" },
        c.rip & mask,
        q.rip & mask,
    );
    push_diff(
        &mut d,
        "eflags",
        c.rflags & fmask & 0xFFFF_FFFF,
        u64::from(q.eflags) & fmask,
    );
    for (i, n) in ["es", "cs", "ss", "ds", "fs", "gs"].iter().enumerate() {
        push_diff(&mut d, n, u64::from(c.seg[i].selector), u64::from(q.sel[i]));
    }
    let crmask = if q.wide { u64::MAX } else { 0xFFFF_FFFF };
    push_diff(&mut d, "cr0", c.cr0 & crmask, q.cr[0]);
    push_diff(&mut d, "cr2", c.cr2 & crmask, q.cr[1]);
    push_diff(&mut d, "cr3", c.cr3 & crmask, q.cr[2]);
    push_diff(&mut d, "cr4", c.cr4 & crmask, q.cr[3]);
    push_diff(&mut d, "efer", c.efer & crmask, q.efer);
    push_diff(&mut d, "fs.base", c.seg[sreg::FS].base & crmask, q.fs_base);
    push_diff(&mut d, "gs.base", c.seg[sreg::GS].base & crmask, q.gs_base);
    // With CR4.OSFXSR the SSE state is live: XMM registers and MXCSR.
    if c.cr4 & cr4::OSFXSR != 0 {
        push_diff(&mut d, "mxcsr", u64::from(our_mxcsr(c)), u64::from(q.mxcsr));
        for i in 0..q.nxmm {
            let (ours, theirs) = (our_xmm(c, i), q.xmm[i]);
            push_diff(&mut d, &format!("xmm{i}.lo"), ours as u64, theirs as u64);
            push_diff(
                &mut d,
                &format!("xmm{i}.hi"),
                (ours >> 64) as u64,
                (theirs >> 64) as u64,
            );
        }
    }
    d
}

fn compare_segments(vm: &Vm, qsegs: &[qemu::SegCache; 6]) -> Vec<FieldDiff> {
    let mut d = Vec::new();
    for (i, n) in ["es", "cs", "ss", "ds", "fs", "gs"].iter().enumerate() {
        let ours = vm.cpu.seg[i];
        let q = qsegs[i];
        // An unusable (null) segment's base and limit are meaningless.
        if ours.attrs & x86bt_cpu::state::seg_attr::P == 0 && q.attrs & 0x80 == 0 {
            continue;
        }
        push_diff(
            &mut d,
            &format!("{n}.base"),
            ours.base & lin_mask(&vm.cpu),
            q.base,
        );
        push_diff(
            &mut d,
            &format!("{n}.limit"),
            u64::from(ours.limit),
            u64::from(q.limit),
        );
        // The accessed bit of the cached attributes is not architecturally
        // visible (LAR reads the descriptor in memory), and QEMU leaves it as it
        // was in the descriptor; compare the rest.
        let a = u64::from(x86bt_cpu::state::seg_attr::ACCESSED);
        push_diff(
            &mut d,
            &format!("{n}.attrs"),
            u64::from(ours.attrs) & !a,
            u64::from(q.attrs) & !a,
        );
    }
    d
}

/// Aligns environment inputs: the registers IN, RDTSC, RDMSR and CPUID wrote on
/// QEMU are copied into x86bt.
fn align_inputs(vm: &mut Vm, ins: &Instruction, q: &QState) {
    let regs: &[usize] = match ins.mnemonic() {
        Mnemonic::In => &[reg::RAX],
        Mnemonic::Rdtsc | Mnemonic::Rdmsr | Mnemonic::Rdpmc => &[reg::RAX, reg::RDX],
        Mnemonic::Cpuid => &[reg::RAX, reg::RBX, reg::RCX, reg::RDX],
        _ => &[],
    };
    for &r in regs {
        vm.cpu.gpr[r] = q.gpr[r];
    }
}

/// Whether a memory difference is only the accessed bit of a code/data
/// descriptor in the GDT or LDT. Hardware sets it on every segment load (SDM vol.
/// 3A §3.4.5.1); QEMU TCG does not for CS loads. This deviation is noted, not
/// failed, and the comparison goes on (see `docs/difftest.md`).
fn accessed_bit_only(before: &x86bt_cpu::CpuState, addr: u64, ours: u64, qemu: u64) -> bool {
    if ours ^ qemu != 1 {
        return false;
    }
    [
        (before.gdtr.base, u64::from(before.gdtr.limit)),
        (before.ldtr.base, u64::from(before.ldtr.limit)),
    ]
    .iter()
    .any(|&(base, limit)| addr >= base && addr <= base + limit && (addr - base) % 8 == 5)
}

/// Real mode: whether x86bt has just delivered a fault for the instruction that
/// started in `before`: SP went down by exactly the FLAGS, CS, IP frame, and the
/// frame's CS:IP is the instruction's own (a fault, SDM vol. 3A §20.1.4, pushes
/// the address of the faulting instruction).
fn real_fault_frame(vm: &mut Vm, before: &x86bt_cpu::CpuState) -> bool {
    if before.protected() || vm.cpu.protected() {
        return false;
    }
    let sp = vm.cpu.gpr[reg::RSP] & 0xFFFF;
    if sp != before.gpr[reg::RSP].wrapping_sub(6) & 0xFFFF {
        return false;
    }
    let ss = vm.cpu.seg[sreg::SS].base;
    let saved = vm.cpu.log_writes;
    vm.cpu.log_writes = false;
    let mut word = |off: u64| {
        x86bt_cpu::mmu::read_lin_as(
            &mut vm.cpu,
            &mut vm.machine,
            x86bt_machine::Linear(ss.wrapping_add(off & 0xFFFF) & 0xFFFF_FFFF),
            2,
            false,
        )
    };
    let (ip, cs) = (word(sp), word(sp + 2));
    vm.cpu.log_writes = saved;
    ip.is_ok_and(|ip| ip == before.rip & 0xFFFF)
        && cs.is_ok_and(|cs| cs == u64::from(before.seg[sreg::CS].selector))
}

/// Takes QEMU's values for the fields of an allowed divergence (registers and
/// memory bytes), so the comparison can go on past it.
fn adopt_diffs(vm: &mut Vm, diffs: &[FieldDiff]) {
    for d in diffs {
        if let Some(i) = GPR32_NAMES.iter().position(|g| *g == d.name) {
            vm.cpu.gpr[i] = d.qemu;
        } else if let Some(i) = GPR64_NAMES.iter().position(|g| *g == d.name) {
            vm.cpu.gpr[i] = d.qemu;
        } else if d.name == "eip" || d.name == "rip" {
            vm.cpu.rip = d.qemu;
        } else if d.name == "eflags" {
            vm.cpu.rflags = (vm.cpu.rflags & !0xFFFF_FFFF) | d.qemu;
        } else if d.name == "mxcsr" {
            x86bt_cpu::interp::sse::set_mxcsr(&mut vm.cpu, d.qemu as u32);
        } else if let Some((i, half)) = d
            .name
            .strip_prefix("xmm")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, h)| Some((i.parse::<usize>().ok()?, h)))
        {
            let v = x86bt_cpu::interp::sse::xmm(&vm.cpu, i);
            let v = match half {
                "lo" => (v & !u128::from(u64::MAX)) | u128::from(d.qemu),
                _ => (v & u128::from(u64::MAX)) | (u128::from(d.qemu) << 64),
            };
            x86bt_cpu::interp::sse::set_xmm(&mut vm.cpu, i, v);
        } else if let Some(a) = d.name.strip_prefix("mem[").and_then(|r| r.get(..8)) {
            if let Ok(a) = u64::from_str_radix(a, 16) {
                let saved = vm.cpu.log_writes;
                vm.cpu.log_writes = false;
                let _ = x86bt_cpu::mmu::write_lin_as(
                    &mut vm.cpu,
                    &mut vm.machine,
                    x86bt_machine::Linear(a),
                    1,
                    d.qemu,
                    false,
                );
                vm.cpu.log_writes = saved;
            }
        }
    }
}

/// Copies QEMU's architectural state into x86bt (the Multiboot entry).
fn adopt_state(vm: &mut Vm, q: &mut Qemu) -> std::io::Result<()> {
    let st = q.state()?;
    let segs = q.segments()?;
    let [gdt, idt] = q.tables()?;
    let c = &mut vm.cpu;
    c.gpr[..st.ngpr].copy_from_slice(&st.gpr[..st.ngpr]);
    c.rip = st.rip;
    c.rflags = u64::from(st.eflags);
    for (i, s) in segs.iter().enumerate() {
        c.seg[i] = x86bt_cpu::state::Segment {
            selector: s.selector,
            attrs: s.attrs,
            limit: s.limit,
            base: s.base,
        };
    }
    c.cr0 = st.cr[0];
    c.cr2 = st.cr[1];
    c.cr3 = st.cr[2];
    c.cr4 = st.cr[3];
    c.gdtr = x86bt_cpu::state::TableReg {
        base: gdt.0,
        limit: gdt.1,
    };
    c.idtr = x86bt_cpu::state::TableReg {
        base: idt.0,
        limit: idt.1,
    };
    // Memory too: QEMU's boot information (Multiboot info, command line, its
    // GDT) lives where x86bt's loader put its own. Take QEMU's RAM whole.
    let dump = std::env::temp_dir().join(format!("x86bt-difftest-ram-{}.bin", std::process::id()));
    let ram = vm.machine.mem.ram_below_4g();
    q.monitor(&format!("pmemsave 0 {ram:#x} \"{}\"", dump.display()))?;
    let bytes = std::fs::read(&dump)?;
    let _ = std::fs::remove_file(&dump);
    for (i, chunk) in bytes.chunks(4096).enumerate() {
        let addr = (i * 4096) as u64;
        if (0xA_0000..0x10_0000).contains(&addr) {
            continue;
        }
        vm.machine
            .mem
            .write_bytes(x86bt_machine::GuestPhys(addr), chunk);
    }
    vm.invalidate_written();
    Ok(())
}

/// Runs the lockstep comparison.
pub fn lockstep(setup: &DiffSetup) -> Result<(Outcome, f64), Error> {
    let rom = match setup.kernel {
        Some(_) => None,
        None => Some(crate::run::read_file(&setup.bios)?),
    };
    let mut machine = pc::build(PcConfig::headless(setup.ram_mib << 20, rom))?;
    let entry = match &setup.kernel {
        Some(path) => {
            let image = crate::run::read_file(path)?;
            let err = |source| Error::Loader {
                path: path.clone(),
                source,
            };
            if x86bt_machine::loader::linux::is_bzimage(&image) {
                Some(
                    x86bt_machine::loader::linux::load(&mut machine.mem, &image, None, "")
                        .map_err(err)?
                        .entry,
                )
            } else {
                Some(
                    x86bt_machine::loader::multiboot::load(&mut machine.mem, &image, "", &[])
                        .map_err(err)?
                        .entry,
                )
            }
        }
        None => None,
    };
    let mut vm = Vm::with_engine(machine, setup.engine)?;
    if let Some((image, at)) = &setup.flat {
        vm.machine.mem.load(x86bt_machine::GuestPhys(*at), image)?;
    }
    vm.set_single_step(true);
    vm.cpu.rep_single = true;
    let bios = setup.kernel.is_none().then_some(setup.bios.as_path());
    let mut q =
        Qemu::spawn(&setup.qemu, bios, setup.ram_mib, &setup.qemu_extra).map_err(qemu_err)?;
    if let Some(entry) = entry {
        // QEMU boots a Multiboot kernel through its BIOS and option ROM; x86bt
        // enters it directly. Run QEMU to the entry point and start both from
        // QEMU's state there (registers, segment caches, descriptor tables).
        q.run_to(u64::from(entry)).map_err(qemu_err)?;
        adopt_state(&mut vm, &mut q).map_err(qemu_err)?;
    }
    if setup.kernel.is_none() {
        // EDX at reset holds the CPU signature (SDM vol. 3A §10.1.4), an input
        // like CPUID's results: the QEMU CPU model's is taken.
        let st = q.state().map_err(qemu_err)?;
        vm.cpu.gpr[reg::RDX] = st.gpr[reg::RDX];
    }
    let start = Instant::now();
    let mut history: VecDeque<String> = VecDeque::new();
    vm.cpu.log_writes = true;
    let mut compared = 0u64;
    let mut done = 0u64;
    let mut continued = Vec::new();
    while compared < setup.max_insns {
        done += 1;
        let skipping = done <= setup.skip;
        let (ins, addr, lenient) = current_insn(&mut vm);
        let exits = ins.mnemonic() == Mnemonic::Out
            && (ins.op0_kind() == iced_x86::OpKind::Immediate8 && ins.immediate8() == 0xF4
                || ins.op0_kind() == iced_x86::OpKind::Register
                    && vm.cpu.gpr[reg::RDX] as u16 == 0xF4);
        // HLT at CPL > 0 (and in virtual-8086 mode, CPL 3) is #GP(0) (SDM vol.
        // 2A, HLT): it is stepped and compared like any other instruction.
        let halts = ins.mnemonic() == Mnemonic::Hlt && vm.cpu.cpl() == 0;
        if halts || exits {
            // QEMU's gdbstub steps with interrupts masked, so a stepped HLT never
            // completes there: the guest's end is reached.
            return Ok((
                Outcome::Agree {
                    compared,
                    halted: true,
                    continued: std::mem::take(&mut continued),
                },
                start.elapsed().as_secs_f64(),
            ));
        }
        let count = shift_count(&ins, &vm.cpu);
        let (pre_eax, pre_fl) = (vm.cpu.gpr[reg::RAX] as u32, vm.cpu.rflags as u32);
        let before = vm.cpu.clone();
        let before_cs = vm.cpu.seg[sreg::CS].selector;
        vm.cpu.write_log.clear();
        vm.step_unit();
        if let Some(report) = vm.take_divergence() {
            return Err(Error::Usage(format!(
                "the lockstep engine diverged from the interpreter: {report}"
            )));
        }
        vm.invalidate_written();
        if !skipping {
            compared += 1;
        }
        if !skipping && setup.inject_bug == Some(compared) {
            vm.cpu.gpr[reg::RAX] ^= 1;
        }
        q.step().map_err(qemu_err)?;
        let mut qs = q.state().map_err(qemu_err)?;
        // QEMU single-steps a REP string instruction one iteration per step and
        // needs one more step, with the count already 0, to leave it; hardware
        // (and x86bt) leave it with the last iteration. Take that extra step.
        let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
        let ipmask = lin_mask(&before);
        let at_insn =
            |qs: &QState| qs.rip & ipmask == addr.wrapping_sub(before.seg[sreg::CS].base) & ipmask;
        // QEMU's gdbstub step can return without progress: it leaves a
        // single-stepped REP only on a further step once the count is 0, restarts
        // an iteration that stored into the code it runs from, and sometimes stops
        // for its own events before executing anything. Step again while QEMU
        // still sits at the instruction x86bt has finished (or, for REP, while
        // its count has not moved when ours has).
        for _ in 0..8 {
            let ours_moved = vm.cpu.rip != before.rip
                || vm.cpu.seg[sreg::CS].selector != before.seg[sreg::CS].selector;
            let rep_stalled = rep
                && qs.gpr[1] & ipmask == before.gpr[reg::RCX] & ipmask
                && vm.cpu.gpr[reg::RCX] != before.gpr[reg::RCX];
            if !(at_insn(&qs) && (ours_moved || rep_stalled)) {
                break;
            }
            q.step().map_err(qemu_err)?;
            qs = q.state().map_err(qemu_err)?;
        }
        align_inputs(&mut vm, &ins, &qs);
        if matches!(
            ins.mnemonic(),
            Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd
        ) {
            // INS stores port input: the bytes are an input, taken from QEMU.
            for &(lin, size) in &vm.cpu.write_log.clone() {
                let theirs = q.memory(lin, size as usize).map_err(qemu_err)?;
                vm.cpu.log_writes = false;
                for (i, b) in theirs.iter().enumerate() {
                    let a = lin.wrapping_add(i as u64) & lin_mask(&before);
                    let _ = x86bt_cpu::mmu::write_lin_as(
                        &mut vm.cpu,
                        &mut vm.machine,
                        x86bt_machine::Linear(a),
                        1,
                        u64::from(*b),
                        false,
                    );
                }
                vm.cpu.log_writes = true;
            }
        }
        history.push_back(format!(
            "{:>10}  {addr:08x}  {:<36} before: eax={pre_eax:08x} eflags={pre_fl:08x}",
            vm.cpu.icount,
            format(&ins)
        ));
        if history.len() > setup.history {
            history.pop_front();
        }
        if skipping {
            // Stay aligned, but compare nothing.
            vm.cpu.write_log.clear();
            if vm.cpu.run_state != RunState::Running {
                return Ok((
                    Outcome::Agree {
                        compared,
                        halted: true,
                        continued,
                    },
                    start.elapsed().as_secs_f64(),
                ));
            }
            continue;
        }
        let fmask = flag_mask(&ins, count);
        let mut diffs = compare_regs(&vm, &qs, fmask);
        // Undefined flags are not compared; take QEMU's so that later
        // instructions, which may read them, stay comparable.
        vm.cpu.rflags = (vm.cpu.rflags & (fmask | !0xFFFF_FFFF))
            | (u64::from(qs.eflags) & !fmask & 0xFFFF_FFFF);
        let transfer = x86bt_decoder::sensitive::is_sensitive(&ins)
            || before_cs != vm.cpu.seg[sreg::CS].selector
            || ins.flow_control() != iced_x86::FlowControl::Next;
        if diffs.is_empty() && (transfer || compared == 1) {
            let segs = q.segments().map_err(qemu_err)?;
            diffs = compare_segments(&vm, &segs);
        }
        if diffs.is_empty() {
            diffs = memory_diffs(&mut vm, &mut q, &before);
        }
        if !diffs.is_empty() {
            let unassigned = allow::mem_linear(&ins, &before).is_some_and(|lin| {
                let mut probe = before.clone();
                probe.log_writes = false;
                x86bt_cpu::mmu::translate_as(
                    &mut probe,
                    &mut vm.machine,
                    x86bt_machine::Linear(lin),
                    x86bt_cpu::mmu::Access::Read,
                    false,
                )
                .is_ok_and(|p| !vm.machine.mem.is_mapped(p) && !vm.machine.is_mmio(p))
            });
            let real_fault = real_fault_frame(&mut vm, &before);
            if let Some(a) = allow::find(&allow::Ctx {
                ins: &ins,
                lenient: &lenient,
                count,
                before: &before,
                after: &vm.cpu,
                real_fault,
                diffs: &diffs,
                unassigned,
            }) {
                if setup.continue_allowed {
                    if !setup.quiet_continue {
                        eprintln!("allowed divergence at instruction {compared}: {}; continuing with QEMU's values", a.name);
                    }
                    continued.push(a.name);
                    // The bytes x86bt wrote (an exception frame QEMU did not
                    // push, say) take QEMU's values too.
                    let mem = memory_diffs(&mut vm, &mut q, &before);
                    adopt_diffs(&mut vm, &diffs);
                    adopt_diffs(&mut vm, &mem);
                    continue;
                }
                return Ok((
                    Outcome::Allowed {
                        at: compared,
                        name: a.name,
                        reason: a.reason,
                    },
                    start.elapsed().as_secs_f64(),
                ));
            }
            let inputs = inputs_of(&mut vm, &before, &ins);
            return Ok((
                Outcome::Diverged {
                    at: compared,
                    addr,
                    history: history.into_iter().collect(),
                    diffs,
                    inputs,
                    continued,
                },
                start.elapsed().as_secs_f64(),
            ));
        }
        if vm.cpu.run_state != RunState::Running {
            return Ok((
                Outcome::Agree {
                    compared,
                    halted: true,
                    continued: std::mem::take(&mut continued),
                },
                start.elapsed().as_secs_f64(),
            ));
        }
    }
    Ok((
        Outcome::Agree {
            compared,
            halted: false,
            continued,
        },
        start.elapsed().as_secs_f64(),
    ))
}

/// The bytes x86bt's instruction wrote (its write log, which this consumes)
/// that differ from QEMU's memory there, byte by byte; the accessed bit of a
/// descriptor is not counted (see [`accessed_bit_only`]).
fn memory_diffs(vm: &mut Vm, q: &mut Qemu, before: &x86bt_cpu::CpuState) -> Vec<FieldDiff> {
    let mut diffs = Vec::new();
    let log = std::mem::take(&mut vm.cpu.write_log);
    for &(lin, size) in &log {
        // A write to a device register (the APIC page, the HPET...) is not
        // memory: reading it back means something else, on both sides, and
        // may change the device. Such writes are not compared.
        let mut probe = before.clone();
        probe.log_writes = false;
        let device = x86bt_cpu::mmu::translate_as(
            &mut probe,
            &mut vm.machine,
            x86bt_machine::Linear(lin & lin_mask(before)),
            x86bt_cpu::mmu::Access::Read,
            false,
        )
        .is_ok_and(|p| vm.machine.is_mmio(p));
        if device {
            continue;
        }
        let Ok(theirs) = q.memory(lin, size as usize) else {
            push_diff(
                &mut diffs,
                &format!("mem[{lin:08x}] (unreadable in qemu)"),
                0,
                u64::MAX,
            );
            continue;
        };
        for (i, t) in theirs.iter().enumerate() {
            let a = lin.wrapping_add(i as u64) & lin_mask(before);
            vm.cpu.log_writes = false;
            let ours = x86bt_cpu::mmu::read_lin_as(
                &mut vm.cpu,
                &mut vm.machine,
                x86bt_machine::Linear(a),
                1,
                false,
            )
            .unwrap_or(0);
            vm.cpu.log_writes = true;
            if accessed_bit_only(before, a, ours, u64::from(*t)) {
                continue;
            }
            push_diff(&mut diffs, &format!("mem[{a:08x}]"), ours, u64::from(*t));
        }
    }
    diffs
}

/// The values `ins` read, as x86bt held them before it ran (`before`): the
/// registers it reads (general-purpose at their size, XMM as 128 bits), MXCSR
/// for SSE instructions, and the bytes of its explicit memory operand.
fn inputs_of(vm: &mut Vm, before: &x86bt_cpu::CpuState, ins: &Instruction) -> Vec<String> {
    use iced_x86::{InstructionInfoFactory, OpAccess, Register};
    let mut out = Vec::new();
    let mut f = InstructionInfoFactory::new();
    let info = f.info(ins);
    let mut sse = false;
    for u in info.used_registers() {
        if !matches!(
            u.access(),
            OpAccess::Read | OpAccess::ReadWrite | OpAccess::CondRead | OpAccess::ReadCondWrite
        ) {
            continue;
        }
        let r = u.register();
        if r.is_xmm() {
            sse = true;
            let i = r as usize - Register::XMM0 as usize;
            out.push(
                format!("{r:?}={:#034x}", x86bt_cpu::interp::sse::xmm(before, i)).to_lowercase(),
            );
        } else if r.is_gpr() {
            let full = r.full_register() as usize - Register::RAX as usize;
            let v = before.gpr[full];
            let v = match r.size() {
                1 if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) => {
                    (v >> 8) & 0xFF
                }
                n if n < 8 => v & ((1u64 << (8 * n)) - 1),
                _ => v,
            };
            out.push(format!("{r:?}={v:#x}").to_lowercase());
        }
    }
    if sse {
        out.push(format!(
            "mxcsr={:#x}",
            x86bt_cpu::interp::sse::mxcsr(before)
        ));
    }
    let size = ins.memory_size().size().min(16) as u64;
    if let Some(lin) = allow::mem_linear(ins, before).filter(|_| size > 0) {
        let mut probe = before.clone();
        probe.log_writes = false;
        let bytes: Option<Vec<u8>> = (0..size)
            .map(|i| {
                x86bt_cpu::mmu::read_lin_as(
                    &mut probe,
                    &mut vm.machine,
                    x86bt_machine::Linear(lin.wrapping_add(i) & lin_mask(before)),
                    1,
                    false,
                )
                .ok()
                .map(|b| b as u8)
            })
            .collect();
        if let Some(b) = bytes {
            let le: String = b.iter().rev().map(|x| format!("{x:02x}")).collect();
            out.push(format!("mem[{lin:#x}]=0x{le}"));
        }
    }
    out
}

/// Prints an outcome; returns whether it is a failure.
pub fn report(o: &Outcome, secs: f64, out: &mut dyn std::io::Write) -> bool {
    match o {
        Outcome::Agree {
            compared, halted, ..
        } => {
            let _ = writeln!(
                out,
                "agree: {compared} instructions compared in {secs:.2} s ({:.0} instructions/s){}",
                *compared as f64 / secs.max(1e-9),
                if *halted { ", guest halted" } else { "" }
            );
            false
        }
        Outcome::Allowed { at, name, reason } => {
            let _ = writeln!(
                out,
                "allowed divergence at instruction {at}: {name}: {reason}"
            );
            false
        }
        Outcome::Diverged {
            at,
            addr,
            history,
            diffs,
            inputs,
            ..
        } => {
            let _ = writeln!(
                out,
                "DIVERGENCE after instruction {at} (at linear {addr:#010x})"
            );
            let _ = writeln!(out, "last instructions:");
            for h in history {
                let _ = writeln!(out, "  {h}");
            }
            let _ = writeln!(out, "{:<14} {:>18} {:>18}", "field", "x86bt", "qemu");
            for d in diffs {
                let _ = writeln!(out, "{:<14} {:>#18x} {:>#18x}", d.name, d.ours, d.qemu);
            }
            if !inputs.is_empty() {
                let _ = writeln!(out, "inputs: {}", inputs.join(" "));
            }
            true
        }
    }
}

/// Finds QEMU: `--qemu`, else `qemu-system-i386` on PATH, or `qemu-system-x86_64`
/// when `long` (a guest that enters long mode).
pub fn find_qemu(given: Option<&Path>, long: bool) -> Result<PathBuf, Error> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let name = if long {
        "qemu-system-x86_64"
    } else {
        "qemu-system-i386"
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::Usage(format!(
                "{name} not found (install qemu-system-x86, or pass --qemu PATH)"
            ))
        })
}
