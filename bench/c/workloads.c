/*
 * The scalar workloads, the same five as the assembly kernels of `x86bt bench`
 * (src/bench_kernels.rs), with the same inputs and answers: sieve, crc32,
 * memcpy (a dword loop), strlen (a byte loop) and qsort. Plus the workload
 * table and the helpers the kernel and the host program share.
 *
 * Built with -fno-tree-vectorize and -fno-tree-loop-distribute-patterns, so
 * GCC keeps these loops scalar and never turns one into a memset or strlen
 * call: a dword loop stays a dword loop on every build.
 */
#include "bench.h"
#include <cpuid.h>

uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

uint32_t hash_words(const uint32_t *w, uint32_t n)
{
    uint32_t h = 0x811C9DC5u;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ w[i]) * 0x01000193u;
    return h;
}

/* 64 spare bytes let memcpy-sse2 read from an unaligned offset. */
uint8_t src_bytes[SRC_LEN + 64] __attribute__((aligned(64)));

void fill_src_bytes(void)
{
    uint64_t s = DATA_SEED;
    for (uint32_t i = 0; i < sizeof src_bytes; i++)
        src_bytes[i] = (uint8_t)(xorshift64(&s) >> 32);
}

/* ---- sieve: the BYTE benchmark, 8191 flags, flag i stands for 2i + 3. ---- */

#define SIEVE_LEN 8191
static uint8_t sieve_flags[SIEVE_LEN];
static uint32_t sieve_count, sieve_ref;

static void sieve_init(void)
{
    /* The reference: odd primes 3 .. 2 * 8190 + 3, by trial division. */
    sieve_ref = 0;
    for (uint32_t n = 3; n <= 2 * (SIEVE_LEN - 1) + 3; n += 2) {
        uint32_t d = 3;
        while (d * d <= n && n % d != 0)
            d += 2;
        if (d * d > n)
            sieve_ref++;
    }
}

static void sieve_iter(void)
{
    for (uint32_t i = 0; i < SIEVE_LEN; i++)
        sieve_flags[i] = 1;
    uint32_t count = 0;
    for (uint32_t i = 0; i < SIEVE_LEN; i++) {
        if (sieve_flags[i]) {
            uint32_t p = 2 * i + 3;
            for (uint32_t k = i + p; k < SIEVE_LEN; k += p)
                sieve_flags[k] = 0;
            count++;
        }
    }
    sieve_count = count;
}

static uint32_t sieve_result(void) { return sieve_count; }
static int sieve_check(void) { return sieve_count == sieve_ref; }

/* ---- crc32: table-driven CRC-32 (IEEE 802.3, reflected) of 16 KiB. ---- */

static uint32_t crc_table[256];
static uint32_t crc_value, crc_ref;

static void crc32_init(void)
{
    fill_src_bytes();
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    /* The reference: the same CRC one bit at a time, without the table. */
    uint32_t c = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < SRC_LEN; i++) {
        c ^= src_bytes[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    crc_ref = ~c;
}

static void crc32_iter(void)
{
    uint32_t c = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < SRC_LEN; i++)
        c = crc_table[(c ^ src_bytes[i]) & 0xFF] ^ (c >> 8);
    crc_value = ~c;
}

static uint32_t crc32_result(void) { return crc_value; }
static int crc32_check(void) { return crc_value == crc_ref; }

/* ---- memcpy: a dword loop copying 16 KiB. ---- */

static uint32_t copy_dst[SRC_LEN / 4];

static void memcpy_init(void) { fill_src_bytes(); }

static void memcpy_iter(void)
{
    const uint32_t *s = (const uint32_t *)src_bytes;
    for (uint32_t i = 0; i < SRC_LEN / 4; i++)
        copy_dst[i] = s[i];
}

static uint32_t memcpy_result(void) { return hash_words(copy_dst, SRC_LEN / 4); }

static int memcpy_check(void)
{
    const uint8_t *d = (const uint8_t *)copy_dst;
    for (uint32_t i = 0; i < SRC_LEN; i++)
        if (d[i] != src_bytes[i])
            return 0;
    return 1;
}

/* ---- strlen: a byte loop over a 16000-byte string of bytes 1..255. ---- */

#define STRING_LEN 16000
static char string[STRING_LEN + 1];
static uint32_t strlen_value;

static void strlen_init(void)
{
    uint64_t s = DATA_SEED ^ 0xFFFF;
    for (uint32_t i = 0; i < STRING_LEN; i++)
        string[i] = (char)((uint32_t)(uint8_t)(xorshift64(&s) >> 32) % 255 + 1);
    string[STRING_LEN] = 0;
}

static void strlen_iter(void)
{
    const char *p = string;
    while (*p)
        p++;
    strlen_value = (uint32_t)(p - string);
}

static uint32_t strlen_result(void) { return strlen_value; }
/* The string was built with STRING_LEN non-zero bytes. */
static int strlen_check(void) { return strlen_value == STRING_LEN; }

/* ---- qsort: recursive quicksort of 2048 LCG values, refilled each time. ---- */

#define QSORT_LEN 2048
#define QSORT_SEED 0x12345678u
static uint32_t qsort_array[QSORT_LEN];
static uint32_t qsort_sum, qsort_xor;

static void qsort_fill(void)
{
    uint32_t x = QSORT_SEED;
    for (uint32_t i = 0; i < QSORT_LEN; i++) {
        x = x * 1103515245u + 12345u;
        qsort_array[i] = x;
    }
}

static void qsort_init(void)
{
    qsort_fill();
    qsort_sum = qsort_xor = 0;
    for (uint32_t i = 0; i < QSORT_LEN; i++) {
        qsort_sum += qsort_array[i];
        qsort_xor ^= qsort_array[i] * 0x9E3779B9u;
    }
}

/* Lomuto partition around the middle element, recursing on the left part and
 * looping on the right, as the assembly kernel does. */
static void qsort_range(uint32_t *a, int32_t lo, int32_t hi)
{
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        uint32_t pivot = a[mid];
        a[mid] = a[hi];
        a[hi] = pivot;
        int32_t store = lo;
        for (int32_t c = lo; c < hi; c++) {
            if (a[c] < pivot) {
                uint32_t t = a[store];
                a[store] = a[c];
                a[c] = t;
                store++;
            }
        }
        a[hi] = a[store];
        a[store] = pivot;
        qsort_range(a, lo, store - 1);
        lo = store + 1;
    }
}

static void qsort_iter(void)
{
    qsort_fill();
    qsort_range(qsort_array, 0, QSORT_LEN - 1);
}

static uint32_t qsort_result(void) { return hash_words(qsort_array, QSORT_LEN); }

/* Sorted, and the same multiset as the input (sum and a mixed xor). */
static int qsort_check(void)
{
    uint32_t sum = 0, x = 0;
    for (uint32_t i = 0; i < QSORT_LEN; i++) {
        if (i > 0 && qsort_array[i - 1] > qsort_array[i])
            return 0;
        sum += qsort_array[i];
        x ^= qsort_array[i] * 0x9E3779B9u;
    }
    return sum == qsort_sum && x == qsort_xor;
}

/* ---- the table ---- */

const struct workload workloads[] = {
    {"sieve", 0, sieve_init, sieve_iter, sieve_result, sieve_check},
    {"crc32", 0, crc32_init, crc32_iter, crc32_result, crc32_check},
    {"memcpy", 0, memcpy_init, memcpy_iter, memcpy_result, memcpy_check},
    {"strlen", 0, strlen_init, strlen_iter, strlen_result, strlen_check},
    {"qsort", 0, qsort_init, qsort_iter, qsort_result, qsort_check},
    {"matmul", 0, matmul_init, matmul_iter, matmul_result, matmul_check},
    {"memcpy-sse2", 0, memcpy_sse2_init, memcpy_sse2_iter, memcpy_sse2_result,
     memcpy_sse2_check},
    {"strsearch", 1, strsearch_init, strsearch_iter, strsearch_result, strsearch_check},
    {0, 0, 0, 0, 0, 0},
};

const struct workload *find_workload(const char *name, uint32_t len)
{
    for (const struct workload *w = workloads; w->name; w++) {
        uint32_t i = 0;
        while (i < len && w->name[i] && w->name[i] == name[i])
            i++;
        if (i == len && !w->name[i])
            return w;
    }
    return 0;
}

void run_iterations(const struct workload *w, uint32_t iters)
{
    for (uint32_t i = 0; i < iters; i++) {
        w->iter();
        BARRIER();
    }
}

int cpu_supports(const struct workload *w)
{
    unsigned a, b, c, d;
    if (!w->needs_sse42)
        return 1;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c & bit_SSE4_2) != 0;
}

const char *find_arg(const char *cmdline, const char *key, uint32_t *len)
{
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *word = p;
        const char *k = key;
        while (*k && *p == *k) {
            p++;
            k++;
        }
        if (!*k && *p == '=') {
            const char *v = ++p;
            while (*p && *p != ' ')
                p++;
            *len = (uint32_t)(p - v);
            return v;
        }
        p = word;
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

uint32_t parse_u32(const char *s, uint32_t len, int *ok)
{
    uint32_t v = 0;
    *ok = len > 0;
    for (uint32_t i = 0; i < len; i++) {
        uint32_t d = (uint32_t)(s[i] - '0');
        if (d > 9 || v > (0xFFFFFFFFu - d) / 10)
            *ok = 0;
        v = v * 10 + d;
    }
    return v;
}
