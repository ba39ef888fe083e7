/*
 * Multiboot v1 entry of the 64-bit bench kernel (kernel.c).
 *
 * Multiboot starts every kernel in 32-bit protected mode with paging off
 * (Multiboot 0.6.96 §3.2), so this stub builds identity page tables for the
 * first GiB (2 MiB pages), turns on PAE, EFER.LME and paging, and far-jumps
 * to 64-bit code (SDM vol. 3A §10.8.5, "Initializing IA-32e Mode"). The
 * header is the a.out kludge form (§3.1.3), which QEMU's -kernel accepts for
 * an image it would refuse as an ELF64 file.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00010000

    .section .multiboot, "a"
    .balign 4
mb_header:
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
    .long mb_header, __image_start, __load_end, __bss_end, _start

    .text
    .code32
    .globl _start
_start:
    cli
    movl %ebx, mb_info_addr
    lgdt gdt_desc
    ljmp $0x18, $1f
1:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* PML4[0] -> PDPT[0] -> PD: 512 present, writable 2 MiB pages. */
    movl $pdpt + 3, pml4
    movl $pd + 3, pdpt
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, pd(, %ecx, 8)
    incl %ecx
    cmpl $512, %ecx
    jb 2b
    movl $pml4, %eax
    movl %eax, %cr3
    /* CR4.PAE | CR4.OSFXSR | CR4.OSXMMEXCPT */
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    /* IA32_EFER.LME */
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    /* CR0.PG | CR0.NE | CR0.MP, CR0.EM = 0 */
    movl %cr0, %eax
    andl $~0x4, %eax
    orl $0x80000022, %eax
    movl %eax, %cr0
    ljmp $0x08, $long_mode

    .code64
long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movq $stack_top, %rsp
    fninit
    ldmxcsr mxcsr_default
    call kernel_main
3:  cli
    hlt
    jmp 3b

/* One 8-byte stub per exception vector 0-31: exit with EXIT_FAULT + vector. */
    .balign 8
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 32
    .balign 8
    pushq $vec
    jmp fault
    .set vec, vec + 1
    .endr
fault:
    popq %rax
    addl $0x40, %eax
    movw $0xF4, %dx
    outl %eax, %dx
4:  cli
    hlt
    jmp 4b

    .data
    .balign 8
/* Null, 64-bit ring-0 code (0x08), flat data (0x10), 32-bit ring-0 code (0x18). */
gdt:
    .quad 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CF9A000000FFFF
gdt_desc:
    .word 4 * 8 - 1
    .long gdt
mxcsr_default:
    .long 0x1F80
    .globl mb_info_addr
mb_info_addr:
    .long 0

    .bss
    .balign 4096
pml4:
    .space 4096
pdpt:
    .space 4096
pd:
    .space 4096
    .balign 16
    .space 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
