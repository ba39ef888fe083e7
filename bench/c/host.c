/*
 * The host program of `x86bt bench --native`: a static Linux executable with
 * no libc, linked from the same workload objects as the guest kernel, so the
 * host runs the very instructions the guest runs.
 *
 *     host32 WORKLOAD ITERS     (or host64)
 *
 * runs the workload's init, then ITERS iterations timed with CLOCK_MONOTONIC,
 * checks the answer, and prints one line
 *
 *     workload=NAME iters=N result=0xRRRRRRRR ns=0xNNNNNNNNNNNNNNNN status=S
 *
 * and exits with S: EXIT_PASS, EXIT_MISMATCH, EXIT_BAD_ARGS or
 * EXIT_UNSUPPORTED (bench.h). Numbers are printed in hex so that 32-bit code
 * needs no 64-bit division.
 *
 * System calls go straight to the kernel: INT 0x80 in 32-bit code (i386
 * numbers), SYSCALL in 64-bit code (x86-64 numbers).
 */
#include "bench.h"

#ifdef __x86_64__
#define SYS_write 1
#define SYS_clock_gettime 228
#define SYS_exit_group 231
typedef int64_t word_t;

static word_t sys3(word_t n, word_t a, word_t b, word_t c)
{
    word_t r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call host_main\n"
        "  hlt\n");
#else
#define SYS_write 4
#define SYS_clock_gettime 265
#define SYS_exit_group 252
typedef int32_t word_t;

static word_t sys3(word_t n, word_t a, word_t b, word_t c)
{
    word_t r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}

/* The stack pointer goes to host_main as its argument; the call leaves the
 * stack 16-byte aligned, as GCC's i386 code assumes. */
__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  mov %esp, %eax\n"
        "  and $-16, %esp\n"
        "  sub $12, %esp\n"
        "  push %eax\n"
        "  call host_main\n"
        "  hlt\n");
#endif

#define CLOCK_MONOTONIC 1

/* The kernel's struct timespec for this ABI: two longs. */
struct timespec_abi {
    word_t sec, nsec;
};

static uint64_t now_ns(void)
{
    struct timespec_abi t;
    sys3(SYS_clock_gettime, CLOCK_MONOTONIC, (word_t)(uintptr_t)&t, 0);
    return (uint64_t)t.sec * 1000000000u + (uint64_t)t.nsec;
}

static __attribute__((noreturn)) void exit_with(uint32_t status)
{
    for (;;)
        sys3(SYS_exit_group, (word_t)status, 0, 0);
}

static char out[256];
static uint32_t out_len;

static void put(const char *s)
{
    while (*s && out_len < sizeof out)
        out[out_len++] = *s++;
}

static void put_hex(uint64_t v, int digits)
{
    put("0x");
    for (int i = digits - 1; i >= 0; i--)
        if (out_len < sizeof out)
            out[out_len++] = "0123456789abcdef"[(v >> (4 * i)) & 0xF];
}

static void put_u32(uint32_t v)
{
    char buf[10];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n > 0 && out_len < sizeof out)
        out[out_len++] = buf[--n];
}

static uint32_t str_len(const char *s)
{
    uint32_t n = 0;
    while (s[n])
        n++;
    return n;
}

static void flush(void) { sys3(SYS_write, 1, (word_t)(uintptr_t)out, (word_t)out_len); }

__attribute__((noreturn, used)) void host_main(word_t *sp)
{
    word_t argc = sp[0];
    char **argv = (char **)(sp + 1);
    if (argc != 3) {
        put("usage: host WORKLOAD ITERS\n");
        flush();
        exit_with(EXIT_BAD_ARGS);
    }
    const struct workload *w = find_workload(argv[1], str_len(argv[1]));
    int ok;
    uint32_t iters = parse_u32(argv[2], str_len(argv[2]), &ok);
    if (!w || !ok || iters == 0) {
        put("bad workload or iteration count\n");
        flush();
        exit_with(EXIT_BAD_ARGS);
    }
    put("workload=");
    put(w->name);
    put(" iters=");
    put_u32(iters);
    if (!cpu_supports(w)) {
        put(" status=unsupported\n");
        flush();
        exit_with(EXIT_UNSUPPORTED);
    }
    w->init();
    uint64_t t0 = now_ns();
    run_iterations(w, iters);
    uint64_t t1 = now_ns();
    uint32_t status = w->check() ? EXIT_PASS : EXIT_MISMATCH;
    put(" result=");
    put_hex(w->result(), 8);
    put(" ns=");
    put_hex(t1 - t0, 16);
    put(" status=");
    put_u32(status);
    put("\n");
    flush();
    exit_with(status);
}
