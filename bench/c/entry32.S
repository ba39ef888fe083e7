/*
 * Multiboot v1 entry of the 32-bit bench kernel (kernel.c).
 *
 * The image is flat (objcopy -O binary), so the header uses the "a.out
 * kludge" (Multiboot 0.6.96 §3.1.3): flag bit 16 and the address fields say
 * where to load it; QEMU's -kernel and x86bt's loader both take that form.
 * The loader leaves EAX = 0x2BADB002, EBX = the information structure, flat
 * 32-bit segments, paging off and GDTR undefined (§3.2).
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
    ljmp $0x08, $1f
1:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $stack_top, %esp
    /* x87 and SSE on (SDM vol. 3A §9.6, §13.1.3): CR0.EM = 0, CR0.MP = 1,
     * CR0.NE = 1; CR4.OSFXSR | CR4.OSXMMEXCPT. */
    movl %cr0, %eax
    andl $~0x4, %eax
    orl $0x22, %eax
    movl %eax, %cr0
    movl %cr4, %eax
    orl $0x600, %eax
    movl %eax, %cr4
    fninit
    ldmxcsr mxcsr_default
    call kernel_main
2:  cli
    hlt
    jmp 2b

/* One 8-byte stub per exception vector 0-31: exit with EXIT_FAULT + vector. */
    .balign 8
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 32
    .balign 8
    pushl $vec
    jmp fault
    .set vec, vec + 1
    .endr
fault:
    popl %eax
    addl $0x40, %eax
    movw $0xF4, %dx
    outl %eax, %dx
3:  cli
    hlt
    jmp 3b

    .data
    .balign 8
/* Null, flat ring-0 code (0x08), flat ring-0 data (0x10). */
gdt:
    .quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF
gdt_desc:
    .word 3 * 8 - 1
    .long gdt
mxcsr_default:
    .long 0x1F80
    .globl mb_info_addr
mb_info_addr:
    .long 0

    .bss
    .balign 16
    .space 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
