//! The host-CPU oracle for SIMD instructions: one instruction runs on the host's
//! own CPU and in x86bt's interpreter on the same register and memory image, and
//! the images that come back are compared.
//!
//! The image ([`Image`]) holds XMM0-XMM7, MXCSR, 16 bytes of memory, RAX, RCX,
//! RDX, the arithmetic flags and MM0-MM7. A test builds one iced `Instruction`
//! whose registers are among those, and whose memory operand (if any) is
//! [`mem_operand`]: `[rdi+MEM]`. On the host the instruction runs as encoded for
//! 64-bit code inside a small stub that loads the image, runs it and stores the
//! image back (generated here with iced's assembler into an executable page).
//! In the guest it runs, re-encoded for 32-bit code with EDI as the base, as
//! one prepared instruction through `exec_one`, the step both engines share,
//! in flat 32-bit protected mode with CR4.OSFXSR and OSXMMEXCPT set.
//!
//! The host must not fault: tests that want unmasked exceptions check x86bt
//! against the SDM on their own; host runs use masked exceptions only.

#![allow(dead_code)]

use iced_x86::code_asm::*;
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Instruction, InstructionBlock, MemoryOperand, OpKind,
    Register,
};
use x86bt_cpu::interp::interpreter::{exec_one, Step};
use x86bt_cpu::interp::Insn;
use x86bt_cpu::state::{cr0, seg_attr, sreg, CpuState, Segment};
use x86bt_cpu::Exception;
use x86bt_machine::{GuestPhys, Machine};

/// Byte offsets in the image block (the host stub and the guest share them).
const XMM: usize = 0;
const MXCSR: usize = 128;
/// The memory operand's 16 bytes (16-byte aligned when the block is).
pub const MEM: i32 = 144;
const GPR: usize = 160;
const FLAGS: usize = 184;
const MM: usize = 192;
const BLOCK: usize = 256;

/// Where the guest keeps the block (16-byte aligned).
const GUEST_BLOCK: u64 = 0x2_0000;
/// Where the guest's instruction is.
const GUEST_CODE: u64 = 0x1_0000;
/// The 64-bit guest's page tables: a PML4, a PDPT and a PD that maps the
/// first 2 MiB with one large page, identity.
const GUEST_PML4: u64 = 0x3_0000;

/// The state one instruction reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    /// XMM0-XMM7.
    pub xmm: [u128; 8],
    /// MXCSR.
    pub mxcsr: u32,
    /// The memory operand's bytes.
    pub mem: [u8; 16],
    /// RAX, RCX, RDX.
    pub gpr: [u64; 3],
    /// The six arithmetic flags (CF PF AF ZF SF OF), as in RFLAGS.
    pub flags: u64,
    /// MM0-MM7.
    pub mm: [u64; 8],
}

/// The six arithmetic flags in RFLAGS.
pub const ARITH_FLAGS: u64 = 0x8D5;

impl Default for Image {
    fn default() -> Self {
        Self {
            xmm: [0; 8],
            mxcsr: 0x1F80,
            mem: [0; 16],
            gpr: [0; 3],
            flags: 0,
            mm: [0; 8],
        }
    }
}

impl Image {
    fn to_block(self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        for (i, x) in self.xmm.iter().enumerate() {
            b[XMM + 16 * i..XMM + 16 * i + 16].copy_from_slice(&x.to_le_bytes());
        }
        b[MXCSR..MXCSR + 4].copy_from_slice(&self.mxcsr.to_le_bytes());
        let mem = MEM as usize;
        b[mem..mem + 16].copy_from_slice(&self.mem);
        for (i, g) in self.gpr.iter().enumerate() {
            b[GPR + 8 * i..GPR + 8 * i + 8].copy_from_slice(&g.to_le_bytes());
        }
        b[FLAGS..FLAGS + 8].copy_from_slice(&(self.flags & ARITH_FLAGS).to_le_bytes());
        for (i, x) in self.mm.iter().enumerate() {
            b[MM + 8 * i..MM + 8 * i + 8].copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    fn from_block(b: &[u8; BLOCK]) -> Self {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let mut img = Self::default();
        for (i, x) in img.xmm.iter_mut().enumerate() {
            *x = u128::from_le_bytes(b[XMM + 16 * i..XMM + 16 * i + 16].try_into().expect("16"));
        }
        img.mxcsr = u32::from_le_bytes(b[MXCSR..MXCSR + 4].try_into().expect("4"));
        let mem = MEM as usize;
        img.mem.copy_from_slice(&b[mem..mem + 16]);
        for (i, g) in img.gpr.iter_mut().enumerate() {
            *g = u64_at(GPR + 8 * i);
        }
        img.flags = u64_at(FLAGS) & ARITH_FLAGS;
        for (i, x) in img.mm.iter_mut().enumerate() {
            *x = u64_at(MM + 8 * i);
        }
        img
    }
}

/// The memory operand tests give their instructions: `[rdi+MEM]`.
pub fn mem_operand() -> MemoryOperand {
    MemoryOperand::with_base_displ(Register::RDI, i64::from(MEM))
}

/// The host stub's code: it takes the block address in RDI (System V), saves the
/// host's MXCSR, loads the image, runs `ins`, stores the image and puts MXCSR
/// back. Only caller-saved registers are touched, and RFLAGS is restored by the
/// ABI's rules (DF stays clear).
fn host_stub(ins: &Instruction) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    let xmms = [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7];
    let mms = [mm0, mm1, mm2, mm3, mm4, mm5, mm6, mm7];
    let build = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.sub(rsp, 8)?;
        a.stmxcsr(dword_ptr(rsp))?;
        for (i, &x) in xmms.iter().enumerate() {
            a.movdqu(x, xmmword_ptr(rdi + (XMM + 16 * i) as i32))?;
        }
        for (i, &x) in mms.iter().enumerate() {
            a.movq(x, qword_ptr(rdi + (MM + 8 * i) as i32))?;
        }
        a.ldmxcsr(dword_ptr(rdi + MXCSR as i32))?;
        a.mov(rax, qword_ptr(rdi + (FLAGS) as i32))?;
        a.push(rax)?;
        a.popfq()?;
        a.mov(rax, qword_ptr(rdi + GPR as i32))?;
        a.mov(rcx, qword_ptr(rdi + (GPR + 8) as i32))?;
        a.mov(rdx, qword_ptr(rdi + (GPR + 16) as i32))?;
        a.add_instruction(*ins)?;
        a.mov(qword_ptr(rdi + GPR as i32), rax)?;
        a.mov(qword_ptr(rdi + (GPR + 8) as i32), rcx)?;
        a.mov(qword_ptr(rdi + (GPR + 16) as i32), rdx)?;
        a.pushfq()?;
        a.pop(rax)?;
        a.mov(qword_ptr(rdi + FLAGS as i32), rax)?;
        a.stmxcsr(dword_ptr(rdi + MXCSR as i32))?;
        for (i, &x) in xmms.iter().enumerate() {
            a.movdqu(xmmword_ptr(rdi + (XMM + 16 * i) as i32), x)?;
        }
        for (i, &x) in mms.iter().enumerate() {
            a.movq(qword_ptr(rdi + (MM + 8 * i) as i32), x)?;
        }
        a.emms()?;
        a.ldmxcsr(dword_ptr(rsp))?;
        a.add(rsp, 8)?;
        a.ret()?;
        Ok(())
    };
    build(&mut a).expect("stub assembles");
    a.assemble(0).expect("stub encodes")
}

/// Runs `ins` on the host CPU on `img`.
#[cfg(target_arch = "x86_64")]
pub fn host_run(ins: &Instruction, img: &Image) -> Image {
    let code = host_stub(ins);
    let mut map = memmap2::MmapMut::map_anon(4096).expect("anonymous page");
    map[..code.len()].copy_from_slice(&code);
    let map = map.make_exec().expect("executable page");
    #[repr(C, align(16))]
    struct Aligned([u8; BLOCK]);
    let mut block = Aligned(img.to_block());
    // SAFETY: the page holds the stub just assembled above, which follows the
    // System V ABI: it reads and writes only the BLOCK bytes at RDI (the
    // instruction's memory operand is inside them) and caller-saved registers,
    // and it restores MXCSR and leaves the x87 tags empty (EMMS) before it
    // returns. The instruction under test runs with the image's MXCSR, whose
    // exception masks the callers keep set, so it cannot fault.
    unsafe {
        let f: extern "sysv64" fn(*mut u8) = std::mem::transmute(map.as_ptr());
        f(block.0.as_mut_ptr());
    }
    let mut out = Image::from_block(&block.0);
    out.flags &= ARITH_FLAGS;
    out
}

/// `ins` (built for the host: 64-bit registers, `[rdi+MEM]`) as guest code:
/// unchanged for the 64-bit guest; for the 32-bit one, the memory base
/// becomes EDI.
fn guest_instruction(ins: &Instruction, long: bool) -> Instruction {
    let mut g = *ins;
    if long {
        return g;
    }
    for i in 0..g.op_count() {
        if g.op_kind(i) == OpKind::Memory {
            g.set_memory_base(Register::EDI);
            g.set_memory_displ_size(1);
        }
    }
    g.set_code_size(iced_x86::CodeSize::Code32);
    g
}

/// How the guest's run ended when it raised an exception.
pub type Fault = Exception;

/// Runs `ins` in x86bt's interpreter on `img` in flat 32-bit protected mode (or
/// under `setup`'s changes to the CPU state). Returns the image after it, or the
/// exception it raised (with the image unchanged by the contract of precise
/// faults, which the callers may check with [`guest_state`]).
pub fn guest_run_with(
    ins: &Instruction,
    img: &Image,
    setup: impl FnOnce(&mut CpuState),
) -> Result<Image, Fault> {
    let (mut cpu, mut m, insn) = guest_setup(ins, img, false, setup);
    match exec_one(&mut cpu, &mut m, &insn) {
        Step::Fault(e) => Err(e),
        Step::Next | Step::End => Ok(guest_state(&cpu, &m)),
    }
}

/// [`guest_run_with`] with the default state.
pub fn guest_run(ins: &Instruction, img: &Image) -> Result<Image, Fault> {
    guest_run_with(ins, img, |_| {})
}

/// Runs `ins` in the guest and returns the exception and the image left after
/// it (for checking that a faulting instruction changed nothing).
pub fn guest_fault(
    ins: &Instruction,
    img: &Image,
    setup: impl FnOnce(&mut CpuState),
) -> (Option<Fault>, Image) {
    let (mut cpu, mut m, insn) = guest_setup(ins, img, false, setup);
    let fault = match exec_one(&mut cpu, &mut m, &insn) {
        Step::Fault(e) => Some(e),
        _ => None,
    };
    (fault, guest_state(&cpu, &m))
}

/// Runs `ins` in x86bt's interpreter in 64-bit mode (flat, identity paged),
/// where REX.W forms and 64-bit general-purpose operands exist.
pub fn guest_run64(ins: &Instruction, img: &Image) -> Result<Image, Fault> {
    let (mut cpu, mut m, insn) = guest_setup(ins, img, true, |_| {});
    match exec_one(&mut cpu, &mut m, &insn) {
        Step::Fault(e) => Err(e),
        Step::Next | Step::End => Ok(guest_state(&cpu, &m)),
    }
}

fn guest_setup(
    ins: &Instruction,
    img: &Image,
    long: bool,
    setup: impl FnOnce(&mut CpuState),
) -> (CpuState, Machine, Insn) {
    let g = guest_instruction(ins, long);
    let bits = if long { 64 } else { 32 };
    let bytes = {
        let block = InstructionBlock::new(std::slice::from_ref(&g), GUEST_CODE);
        BlockEncoder::encode(bits, block, BlockEncoderOptions::NONE)
            .expect("guest instruction encodes")
            .code_buffer
    };
    let decoded =
        iced_x86::Decoder::with_ip(bits, &bytes, GUEST_CODE, iced_x86::DecoderOptions::NONE)
            .decode();
    assert!(!decoded.is_invalid(), "{g} decodes in {bits}-bit code");
    let mut m = Machine::flat(1 << 20).expect("machine");
    m.mem.load(GuestPhys(GUEST_CODE), &bytes).expect("code");
    // HLT after it ends the translator's unit ([`jit_run`]).
    m.mem
        .load(GuestPhys(GUEST_CODE + bytes.len() as u64), &[0xF4])
        .expect("hlt");
    m.mem
        .load(GuestPhys(GUEST_BLOCK), &img.to_block())
        .expect("block");
    let mut cpu = CpuState::reset();
    cpu.cr0 = cr0::PE | cr0::ET | cr0::NE | cr0::MP;
    cpu.cr4 = x86bt_cpu::mmu::cr4::OSFXSR | x86bt_cpu::mmu::cr4::OSXMMEXCPT;
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
    let gpr_mask = if long {
        use x86bt_cpu::mmu::efer;
        // PML4[0] -> PDPT[0] -> PD[0]: a 2 MiB page at 0.
        let pdpt = GUEST_PML4 + 0x1000;
        let pd = GUEST_PML4 + 0x2000;
        m.mem
            .load(GuestPhys(GUEST_PML4), &(pdpt | 3).to_le_bytes())
            .expect("pml4");
        m.mem
            .load(GuestPhys(pdpt), &(pd | 3).to_le_bytes())
            .expect("pdpt");
        m.mem
            .load(GuestPhys(pd), &0x83u64.to_le_bytes())
            .expect("pd");
        cpu.cr3 = GUEST_PML4;
        cpu.cr4 |= x86bt_cpu::mmu::cr4::PAE;
        cpu.efer = efer::LME | efer::LMA;
        cpu.cr0 |= cr0::PG;
        cpu.seg[sreg::CS].attrs = (cpu.seg[sreg::CS].attrs & !seg_attr::DB) | seg_attr::L;
        u64::MAX
    } else {
        0xFFFF_FFFF
    };
    cpu.rip = GUEST_CODE;
    cpu.gpr[7] = GUEST_BLOCK;
    cpu.gpr[0] = img.gpr[0] & gpr_mask;
    cpu.gpr[1] = img.gpr[1] & gpr_mask;
    cpu.gpr[2] = img.gpr[2] & gpr_mask;
    cpu.rflags = 2 | (img.flags & ARITH_FLAGS);
    for (i, x) in img.xmm.iter().enumerate() {
        x86bt_cpu::interp::sse::set_xmm(&mut cpu, i, *x);
    }
    for (i, x) in img.mm.iter().enumerate() {
        cpu.fpu.regs[i].sig = *x;
        cpu.fpu.regs[i].se = 0xFFFF;
    }
    x86bt_cpu::interp::sse::set_mxcsr(&mut cpu, img.mxcsr);
    setup(&mut cpu);
    let insn = Insn::prepare(&decoded, bits);
    (cpu, m, insn)
}

/// Runs `ins` on `img` through the translator, as a unit of `ins` and a HLT
/// (in 64-bit mode when `long`); the instruction must not fault. An SSE
/// instruction the translator lowers runs on the host's SSE unit inside the
/// fragment, so this checks the lowering (the register renaming, the memory
/// probe, the guest's MXCSR in force) against the same host oracle.
pub fn jit_run(ins: &Instruction, img: &Image, long: bool) -> Image {
    use x86bt_cpu::engine::{Engine, UnitExit};
    thread_local! {
        // One translator per test thread (mapping a code buffer per check
        // would dominate the run), which drops the code page's units before
        // each check: every check has a machine and an instruction of its own.
        static JIT: std::cell::RefCell<x86bt_translator::Translator> =
            std::cell::RefCell::new(x86bt_translator::Translator::new().expect("translator"));
    }
    let (mut cpu, mut m, _) = guest_setup(ins, img, long, |_| {});
    let exit = JIT.with_borrow_mut(|t| {
        t.invalidate_pages(&[GUEST_CODE >> 12]);
        t.run_unit(&mut cpu, &mut m)
    });
    assert_eq!(exit, UnitExit::Halted, "{ins}: the unit ends at its HLT");
    guest_state(&cpu, &m)
}

/// The image as the guest holds it.
fn guest_state(cpu: &CpuState, m: &Machine) -> Image {
    let mut img = Image::default();
    for (i, x) in img.xmm.iter_mut().enumerate() {
        *x = x86bt_cpu::interp::sse::xmm(cpu, i);
    }
    img.mxcsr = x86bt_cpu::interp::sse::mxcsr(cpu);
    for (i, b) in img.mem.iter_mut().enumerate() {
        *b = m
            .mem
            .read_u8(GuestPhys(GUEST_BLOCK + MEM as u64 + i as u64));
    }
    img.gpr = [cpu.gpr[0], cpu.gpr[1], cpu.gpr[2]];
    img.flags = cpu.rflags & ARITH_FLAGS;
    for (i, x) in img.mm.iter_mut().enumerate() {
        *x = cpu.fpu.regs[i].sig;
    }
    img
}

/// A small deterministic generator (xorshift64*), so runs are repeatable.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 128 random bits.
    pub fn next128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

/// `img` as 32-bit code sees it: the upper halves of RAX/RCX/RDX cleared.
pub fn gpr32(mut img: Image) -> Image {
    for g in &mut img.gpr {
        *g &= 0xFFFF_FFFF;
    }
    img
}

/// Checks `ins` against the host on `img`: the guest must not fault and must
/// leave the same image. The host's upper halves of RAX/RCX/RDX are compared
/// only as far as 32-bit code can see them.
pub fn check_against_host(ins: &Instruction, img: &Image) {
    let want = host_run(ins, img);
    let got =
        guest_run(ins, img).unwrap_or_else(|e| panic!("{ins}: guest raised {e:?} on {img:x?}"));
    let want32 = gpr32(want);
    assert_eq!(gpr32(got), want32, "{ins} on {img:x?}");
    assert_eq!(
        gpr32(jit_run(ins, img, false)),
        want32,
        "{ins} under jit on {img:x?}"
    );
}

/// Checks `ins` against the host in 64-bit mode: the guest must not fault and
/// must leave the same image, all 64 bits of RAX/RCX/RDX included.
pub fn check_against_host64(ins: &Instruction, img: &Image) {
    let want = host_run(ins, img);
    let got =
        guest_run64(ins, img).unwrap_or_else(|e| panic!("{ins}: guest raised {e:?} on {img:x?}"));
    assert_eq!(got, want, "{ins} (64-bit mode) on {img:x?}");
    let jit = jit_run(ins, img, true);
    assert_eq!(jit, want, "{ins} (64-bit mode) under jit on {img:x?}");
}

/// Builds `code` with operands, for tests: `ins(Code::Addps_xmm_xmmm128, &[X(0), X(1)])`.
pub fn ins(code: iced_x86::Code, ops: &[Op]) -> Instruction {
    let mut i = Instruction::default();
    i.set_code(code);
    i.set_code_size(iced_x86::CodeSize::Code64);
    for (n, op) in ops.iter().enumerate() {
        let n = n as u32;
        match *op {
            Op::X(r) => {
                i.set_op_kind(n, OpKind::Register);
                i.set_op_register(n, xmm_reg(r));
            }
            Op::Mm(r) => {
                i.set_op_kind(n, OpKind::Register);
                i.set_op_register(n, mm_reg(r));
            }
            Op::R(r) => {
                i.set_op_kind(n, OpKind::Register);
                i.set_op_register(n, r);
            }
            Op::M => {
                i.set_op_kind(n, OpKind::Memory);
                i.set_memory_base(Register::RDI);
                i.set_memory_index(Register::None);
                i.set_memory_displacement64(MEM as u64);
                i.set_memory_displ_size(1);
                i.set_memory_index_scale(1);
                i.set_segment_prefix(Register::None);
            }
            Op::Imm(v) => {
                i.set_op_kind(n, OpKind::Immediate8);
                i.set_immediate8(v);
            }
        }
    }
    i
}

/// An operand for [`ins`].
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// XMMn.
    X(u8),
    /// MMn.
    Mm(u8),
    /// A general-purpose register (RAX, RCX, RDX and their narrower names).
    R(Register),
    /// The memory operand `[rdi+MEM]`.
    M,
    /// An 8-bit immediate.
    Imm(u8),
}

fn xmm_reg(n: u8) -> Register {
    [
        Register::XMM0,
        Register::XMM1,
        Register::XMM2,
        Register::XMM3,
        Register::XMM4,
        Register::XMM5,
        Register::XMM6,
        Register::XMM7,
    ][usize::from(n & 7)]
}

fn mm_reg(n: u8) -> Register {
    [
        Register::MM0,
        Register::MM1,
        Register::MM2,
        Register::MM3,
        Register::MM4,
        Register::MM5,
        Register::MM6,
        Register::MM7,
    ][usize::from(n & 7)]
}

/// Whether the host is an AMD CPU (CPUID vendor "AuthenticAMD"), whose
/// implementation choices differ from the guest's Intel-like ones in places
/// the SDM leaves open (FXSAVE's x87 pointers, DPPS's NaN choice).
#[cfg(target_arch = "x86_64")]
#[allow(dead_code)]
pub fn host_is_amd() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    (r.ebx, r.edx, r.ecx) == (0x6874_7541, 0x6974_6E65, 0x444D_4163)
}
