/*
 * The guest side of `x86bt bench --native`: a Multiboot v1 kernel that runs
 * one workload and reports through QEMU's isa-debug-exit port.
 *
 * The entry stub (entry32.S or entry64.S) loads a GDT, enables SSE (and, for
 * 64-bit, builds identity page tables and enters long mode), then calls
 * kernel_main. The command line says what to run:
 *
 *     workload=NAME iters=N
 *
 * (QEMU puts the kernel's file name first; unknown words are ignored). The
 * harness writes N with a fixed number of digits, so that runs with N and 2N
 * iterations parse the same number of characters and differ by exactly N
 * iterations' instructions.
 *
 * Exit values (port 0xF4, a dword): EXIT_PASS when the answer checks,
 * EXIT_MISMATCH when not, EXIT_BAD_ARGS, EXIT_UNSUPPORTED (no SSE4.2 for a
 * workload that needs it), or EXIT_FAULT + vector on any exception.
 */
#include "bench.h"

/* The Multiboot information structure, the fields used here (Multiboot
 * 0.6.96 §3.3). */
struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
};
#define MB_INFO_CMDLINE (1u << 2)

/* Set by the entry stub: EBX at entry. */
extern uint32_t mb_info_addr;
/* 32 exception stubs, 8 bytes apart (entry32.S, entry64.S). */
extern char isr_stubs[];

static __attribute__((noreturn)) void exit_with(uint32_t v)
{
    __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"((uint16_t)0xF4));
    for (;;)
        __asm__ volatile("cli; hlt");
}

#ifdef __x86_64__
/* A 64-bit interrupt gate (SDM vol. 3A §6.14.1, Figure 6-8). */
struct gate {
    uint16_t off_lo, sel;
    uint8_t ist, type;
    uint16_t off_mid;
    uint32_t off_hi, zero;
};
#else
/* A 32-bit interrupt gate (SDM vol. 3A §6.11, Figure 6-2). */
struct gate {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
};
#endif

static struct gate idt[32] __attribute__((aligned(16)));

static void setup_idt(void)
{
    for (int v = 0; v < 32; v++) {
        uintptr_t at = (uintptr_t)(isr_stubs + 8 * v);
        struct gate *g = &idt[v];
        g->off_lo = (uint16_t)at;
        g->sel = 0x08;
        g->type = 0x8E; /* present, DPL 0, interrupt gate */
#ifdef __x86_64__
        g->off_mid = (uint16_t)(at >> 16);
        g->off_hi = (uint32_t)((uint64_t)at >> 32);
#else
        g->off_hi = (uint16_t)(at >> 16);
#endif
    }
    struct __attribute__((packed)) {
        uint16_t limit;
        uintptr_t base;
    } idtr = {sizeof idt - 1, (uintptr_t)idt};
    __asm__ volatile("lidt %0" ::"m"(idtr));
}

#ifndef __x86_64__
/* Paging as the assembly kernels have it (SDM vol. 3A §4.3): the low 4 MiB
 * identity-mapped through one page table of 4 KiB pages, present, writable,
 * user. The whole kernel, its bss and the Multiboot data lie below 4 MiB. */
static uint32_t page_dir[1024] __attribute__((aligned(4096)));
static uint32_t page_table[1024] __attribute__((aligned(4096)));

static void setup_paging(void)
{
    for (uint32_t i = 0; i < 1024; i++)
        page_table[i] = (i << 12) | 7;
    page_dir[0] = (uint32_t)page_table | 7;
    uint32_t cr0;
    __asm__ volatile("mov %0, %%cr3" ::"r"(page_dir) : "memory");
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %0, %%cr0" ::"r"(cr0 | 0x80000000u) : "memory");
}
#endif

__attribute__((noreturn)) void kernel_main(void)
{
    setup_idt();
#ifndef __x86_64__
    setup_paging();
#endif
    const struct mb_info *mb = (const struct mb_info *)(uintptr_t)mb_info_addr;
    const char *cmdline = "";
    if (mb->flags & MB_INFO_CMDLINE)
        cmdline = (const char *)(uintptr_t)mb->cmdline;
    uint32_t name_len, iters_len;
    const char *name = find_arg(cmdline, "workload", &name_len);
    const char *iters_s = find_arg(cmdline, "iters", &iters_len);
    if (!name || !iters_s)
        exit_with(EXIT_BAD_ARGS);
    const struct workload *w = find_workload(name, name_len);
    int ok;
    uint32_t iters = parse_u32(iters_s, iters_len, &ok);
    if (!w || !ok || iters == 0)
        exit_with(EXIT_BAD_ARGS);
    if (!cpu_supports(w))
        exit_with(EXIT_UNSUPPORTED);
    w->init();
    run_iterations(w, iters);
    exit_with(w->check() ? EXIT_PASS : EXIT_MISMATCH);
}
