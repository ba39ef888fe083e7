/*
 * The compute workloads of `x86bt bench --native`, written once in C.
 *
 * The same object files (workloads.o, simd.o, rt.o) are linked into two
 * programs per architecture: a Multiboot kernel (kernel.c and entry32.S or
 * entry64.S) that x86bt and QEMU boot, and a static Linux program (host.c)
 * that runs on the host. So the guest and the host execute the same machine
 * code for every workload, instruction for instruction.
 *
 * Freestanding: no libc. Only GCC's own headers (<stdint.h>, the intrinsics
 * headers, <cpuid.h>) are included. 32-bit code avoids 64-bit division, which
 * would call libgcc (not installed for -m32 without gcc-multilib).
 *
 * A workload is an `init` (inputs and an independent reference answer,
 * computed once), an `iter` (one timed iteration; every iteration does the same
 * work, so every iteration retires the same guest instructions), a `result` (the
 * answer after the iterations, printed by the host program and compared by the
 * Rust tests) and a `check` (whether the answer equals the reference). A check
 * never uses the code path it checks: the sieve is checked by trial division,
 * the table CRC by the bitwise CRC, the SSE matrix product by integer
 * arithmetic, the SSE4.2 search by a byte-by-byte search.
 */
#ifndef X86BT_BENCH_H
#define X86BT_BENCH_H

#include <stdint.h>

/* Exit values written to the isa-debug-exit port (status (v << 1) | 1) and
 * returned by the host program. */
#define EXIT_PASS 0x10
#define EXIT_MISMATCH 0x11
#define EXIT_BAD_ARGS 0x13
#define EXIT_UNSUPPORTED 0x14
/* An exception: EXIT_FAULT + vector. */
#define EXIT_FAULT 0x40

struct workload {
    const char *name;
    /* Needs SSE4.2 (CPUID.01H:ECX bit 20). */
    int needs_sse42;
    void (*init)(void);
    void (*iter)(void);
    uint32_t (*result)(void);
    int (*check)(void);
};

/* Every workload, terminated by a null name. */
extern const struct workload workloads[];

/* The workload called `name` (`len` bytes, not NUL-terminated), or 0. */
const struct workload *find_workload(const char *name, uint32_t len);

/* Runs `iters` iterations of `w` (its init already done). The kernel and the
 * host program both call this one loop. */
void run_iterations(const struct workload *w, uint32_t iters);

/* Whether the CPU has what `w` needs. */
int cpu_supports(const struct workload *w);

/* Parses "key=value" from a command line of space-separated words: the value
 * and its length, or 0 when the key is missing. */
const char *find_arg(const char *cmdline, const char *key, uint32_t *len);

/* A decimal u32 of `len` digits; sets *ok to 0 on a bad digit or overflow. */
uint32_t parse_u32(const char *s, uint32_t len, int *ok);

/* FNV-1a over dwords (the `hash` of the assembly kernels). */
uint32_t hash_words(const uint32_t *w, uint32_t n);

/* The SSE workloads (simd.c). */
void matmul_init(void);
void matmul_iter(void);
uint32_t matmul_result(void);
int matmul_check(void);
void memcpy_sse2_init(void);
void memcpy_sse2_iter(void);
uint32_t memcpy_sse2_result(void);
int memcpy_sse2_check(void);
void strsearch_init(void);
void strsearch_iter(void);
uint32_t strsearch_result(void);
int strsearch_check(void);

/* The input bytes shared by crc32, memcpy and memcpy-sse2 (workloads.c). */
#define SRC_LEN 16384
extern uint8_t src_bytes[SRC_LEN + 64];
void fill_src_bytes(void);

/* A 64-bit xorshift step (the Rust side's generator). */
uint64_t xorshift64(uint64_t *s);

/* Seed of the source bytes and of the string (the assembly kernels' DATA_SEED). */
#define DATA_SEED 0x9E3779B97F4A7C15ull

/* Keeps the compiler from merging or dropping iterations. */
#define BARRIER() __asm__ volatile("" ::: "memory")

#endif
