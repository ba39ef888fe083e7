/*
 * The SSE workloads: a float matrix product (SSE), a 16 KiB copy through XMM
 * registers (SSE2: MOVDQU loads, MOVDQA stores) and a substring count with
 * PCMPISTRI (SSE4.2).
 *
 * Each timed function carries the ISA it needs as a target attribute, so the
 * rest of the 32-bit build stays plain i686 code and only these loops use SSE.
 * The intrinsics headers are GCC's own and need no libc (the build defines
 * _MM_MALLOC_H_INCLUDED so that <xmmintrin.h> skips <mm_malloc.h>, the one
 * part that includes <stdlib.h>).
 */
#include "bench.h"
#include <emmintrin.h>
#include <nmmintrin.h>
#include <xmmintrin.h>

/* ---- matmul: C = A x B, 64 x 64 floats. ---- */

#define DIM 64

/* Small integers, so every product and sum is exact in float and the result
 * can be checked against integer arithmetic bit for bit. */
static int8_t mat_ai[DIM][DIM], mat_bi[DIM][DIM];
static float mat_a[DIM][DIM] __attribute__((aligned(16)));
static float mat_b[DIM][DIM] __attribute__((aligned(16)));
static union {
    float f[DIM][DIM];
    uint32_t u[DIM * DIM];
} mat_c __attribute__((aligned(16)));

void matmul_init(void)
{
    uint64_t s = DATA_SEED ^ 0xAAAA;
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < DIM; j++) {
            mat_ai[i][j] = (int8_t)((uint32_t)(xorshift64(&s) >> 32) % 17) - 8;
            mat_bi[i][j] = (int8_t)((uint32_t)(xorshift64(&s) >> 32) % 17) - 8;
            mat_a[i][j] = (float)mat_ai[i][j];
            mat_b[i][j] = (float)mat_bi[i][j];
        }
}

/* Row i of C, eight columns at a time: broadcast A[i][k] (MOVSS, SHUFPS),
 * MULPS by two vectors of row k of B, ADDPS into two accumulators. */
__attribute__((target("sse"))) void matmul_iter(void)
{
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < DIM; j += 8) {
            __m128 acc0 = _mm_setzero_ps(), acc1 = _mm_setzero_ps();
            for (int k = 0; k < DIM; k++) {
                __m128 a = _mm_set1_ps(mat_a[i][k]);
                acc0 = _mm_add_ps(acc0, _mm_mul_ps(a, _mm_load_ps(&mat_b[k][j])));
                acc1 = _mm_add_ps(acc1, _mm_mul_ps(a, _mm_load_ps(&mat_b[k][j + 4])));
            }
            _mm_store_ps(&mat_c.f[i][j], acc0);
            _mm_store_ps(&mat_c.f[i][j + 4], acc1);
        }
}

uint32_t matmul_result(void) { return hash_words(mat_c.u, DIM * DIM); }

int matmul_check(void)
{
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < DIM; j++) {
            int32_t sum = 0;
            for (int k = 0; k < DIM; k++)
                sum += mat_ai[i][k] * mat_bi[k][j];
            /* |sum| <= 64 * 64: the float holds it exactly, so compare the
             * float's integer value. */
            int32_t got = (int32_t)mat_c.f[i][j];
            if (got != sum || (float)got != mat_c.f[i][j])
                return 0;
        }
    return 1;
}

/* ---- memcpy-sse2: 16 KiB from an odd source address to an aligned one. ---- */

static uint8_t sse_dst[SRC_LEN] __attribute__((aligned(16)));

void memcpy_sse2_init(void) { fill_src_bytes(); }

/* Four MOVDQU loads and four MOVDQA stores per 64 bytes. */
__attribute__((target("sse2"))) void memcpy_sse2_iter(void)
{
    const uint8_t *s = src_bytes + 1;
    for (uint32_t i = 0; i < SRC_LEN; i += 64) {
        __m128i x0 = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i x1 = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i x2 = _mm_loadu_si128((const __m128i *)(s + i + 32));
        __m128i x3 = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_store_si128((__m128i *)(sse_dst + i), x0);
        _mm_store_si128((__m128i *)(sse_dst + i + 16), x1);
        _mm_store_si128((__m128i *)(sse_dst + i + 32), x2);
        _mm_store_si128((__m128i *)(sse_dst + i + 48), x3);
    }
}

uint32_t memcpy_sse2_result(void)
{
    return hash_words((const uint32_t *)sse_dst, SRC_LEN / 4);
}

int memcpy_sse2_check(void)
{
    for (uint32_t i = 0; i < SRC_LEN; i++)
        if (sse_dst[i] != src_bytes[i + 1])
            return 0;
    return 1;
}

/* ---- strsearch: occurrences of a 9-byte needle in 16000 letters. ---- */

#define TEXT_LEN 16000
/* 16 NULs after the text, so a 16-byte load from any position stays inside. */
static char text[TEXT_LEN + 16] __attribute__((aligned(16)));
static const char needle[16] __attribute__((aligned(16))) = "pcmpistri";
#define NEEDLE_LEN 9
static uint32_t search_count, search_ref;

void strsearch_init(void)
{
    uint64_t s = DATA_SEED ^ 0x5555;
    for (uint32_t i = 0; i < TEXT_LEN; i++)
        text[i] = (char)('a' + (uint32_t)(xorshift64(&s) >> 32) % 26);
    for (uint32_t i = TEXT_LEN; i < sizeof text; i++)
        text[i] = 0;
    /* Plant the needle every 100 to 499 bytes. */
    uint32_t pos = 0;
    for (;;) {
        pos += 100 + (uint32_t)(xorshift64(&s) >> 32) % 400;
        if (pos + NEEDLE_LEN > TEXT_LEN)
            break;
        for (uint32_t k = 0; k < NEEDLE_LEN; k++)
            text[pos + k] = needle[k];
    }
    /* The reference: a byte-by-byte search. */
    search_ref = 0;
    for (uint32_t i = 0; i + NEEDLE_LEN <= TEXT_LEN; i++) {
        uint32_t k = 0;
        while (k < NEEDLE_LEN && text[i + k] == needle[k])
            k++;
        search_ref += k == NEEDLE_LEN;
    }
}

#define SEARCH_MODE (_SIDD_UBYTE_OPS | _SIDD_CMP_EQUAL_ORDERED | _SIDD_LEAST_SIGNIFICANT)

/* PCMPISTRI in "equal ordered" mode gives the first position in a 16-byte
 * window where the needle matches, or where a prefix of it runs to the
 * window's end (SDM vol. 2B, PCMPISTRI; vol. 1 §12.8.4). Such a candidate is
 * confirmed by a second PCMPISTRI on a window starting at it: index 0 there
 * is a whole match, as the needle is shorter than 16 bytes. */
__attribute__((target("sse4.2"))) void strsearch_iter(void)
{
    const __m128i n = _mm_load_si128((const __m128i *)needle);
    const char *p = text;
    uint32_t count = 0;
    for (;;) {
        __m128i h = _mm_loadu_si128((const __m128i *)p);
        int i = _mm_cmpistri(n, h, SEARCH_MODE);
        if (i < 16) {
            const char *q = p + i;
            __m128i at = _mm_loadu_si128((const __m128i *)q);
            count += _mm_cmpistri(n, at, SEARCH_MODE) == 0;
            p = q + 1;
        } else if (_mm_cmpistrz(n, h, SEARCH_MODE)) {
            break; /* the window holds the text's NUL */
        } else {
            p += 16;
        }
    }
    search_count = count;
}

uint32_t strsearch_result(void) { return search_count; }
int strsearch_check(void) { return search_count == search_ref && search_ref > 0; }
