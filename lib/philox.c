/* philox.c -- Philox4x32-10, the counter-based generator behind P and the initial Z.
 *
 * Any element can be computed on its own from (seed, counter), so P is a pure function
 * of its parameters and never needs to be stored.  docs/PROJECTION.md is the spec. */
#include "internal.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

void ulpt__philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* PHILOX_LANES blocks at once, counters q0 + l: the same rounds as ulpt__philox4x32 on
 * arrays, which the compiler turns into vector multiplies (eight lanes a 32-bit word). */
#define PHILOX_LANES 8

#if defined(__GNUC__) || defined(__clang__)
#define PHILOX_INLINE static inline __attribute__((always_inline))
#else
#define PHILOX_INLINE static inline
#endif

PHILOX_INLINE void philox_lanes(uint32_t *restrict out, uint64_t q0, uint32_t c2, uint32_t c3,
                                uint32_t key0, uint32_t key1)
{
    uint32_t c[4][PHILOX_LANES];
    for (int l = 0; l < PHILOX_LANES; l++) {
        c[0][l] = (uint32_t)(q0 + (uint64_t)l);
        c[1][l] = (uint32_t)((q0 + (uint64_t)l) >> 32);
        c[2][l] = c2;
        c[3][l] = c3;
    }
    uint32_t k0 = key0, k1 = key1;
    for (int round = 0; round < 10; round++) {
        for (int l = 0; l < PHILOX_LANES; l++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * c[0][l];
            uint64_t p1 = (uint64_t)PHILOX_M1 * c[2][l];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1][l] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3][l] ^ k1;
            c[0][l] = n0;
            c[1][l] = (uint32_t)p1;
            c[2][l] = n2;
            c[3][l] = (uint32_t)p0;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (int l = 0; l < PHILOX_LANES; l++)
        for (int w = 0; w < 4; w++)
            out[4 * l + w] = c[w][l];
}

PHILOX_INLINE void blocks_body(uint32_t *restrict out, uint64_t q0, size_t n, uint32_t c2,
                               uint32_t c3, uint64_t seed)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    size_t b = 0;
    for (; b + PHILOX_LANES <= n; b += PHILOX_LANES)
        philox_lanes(out + 4 * b, q0 + b, c2, c3, key[0], key[1]);
    for (; b < n; b++) {
        const uint64_t q = q0 + b;
        const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), c2, c3};
        ulpt__philox4x32(ctr, key, out + 4 * b);
    }
}

static void blocks_portable(uint32_t *restrict out, uint64_t q0, size_t n, uint32_t c2,
                            uint32_t c3, uint64_t seed)
{
    blocks_body(out, q0, n, c2, c3, seed);
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* 32 x 32 -> 64-bit products of eight lanes by m: the high and low words.  AVX2
 * multiplies the even lanes (vpmuludq); the odd ones are shifted down first. */
__attribute__((target("avx2"))) static inline void mul_hi_lo(__m256i c, __m256i m, __m256i *hi,
                                                             __m256i *lo)
{
    const __m256i even = _mm256_mul_epu32(c, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* Eight blocks a round in four registers (one word of each block per register), then
 * transposed so that each block's four words are consecutive, as in the stream. */
__attribute__((target("avx2"))) static void blocks_avx2(uint32_t *restrict out, uint64_t q0,
                                                        size_t n, uint32_t c2, uint32_t c3,
                                                        uint64_t seed)
{
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    size_t b = 0;
    for (; b + 8 <= n; b += 8) {
        const uint64_t q = q0 + b;
        /* the low counter words q..q+7, and the high ones (which change where q+l wraps) */
        __m256i x0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)q), step);
        __m256i x1 = _mm256_set1_epi32((int)(uint32_t)(q >> 32));
        if ((uint32_t)q > UINT32_MAX - 7)
            x1 = _mm256_add_epi32(x1, _mm256_and_si256(_mm256_cmpgt_epi32(
                                          _mm256_set1_epi32((int)((uint32_t)q ^ 0x80000000u)),
                                          _mm256_xor_si256(x0, _mm256_set1_epi32(INT32_MIN))),
                                      _mm256_set1_epi32(1)));
        __m256i x2 = _mm256_set1_epi32((int)c2), x3 = _mm256_set1_epi32((int)c3);
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            __m256i hi0, lo0, hi1, lo1;
            mul_hi_lo(x0, m0, &hi0, &lo0);
            mul_hi_lo(x2, m1, &hi1, &lo1);
            x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32((int)k0));
            x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32((int)k1));
            x1 = lo1;
            x3 = lo0;
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const __m256i t0 = _mm256_unpacklo_epi32(x0, x1), t1 = _mm256_unpackhi_epi32(x0, x1);
        const __m256i t2 = _mm256_unpacklo_epi32(x2, x3), t3 = _mm256_unpackhi_epi32(x2, x3);
        const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
        const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
        __m256i *o = (__m256i *)(void *)(out + 4 * b);
        _mm256_storeu_si256(o, _mm256_permute2x128_si256(u0, u1, 0x20));     /* blocks 0, 1 */
        _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20)); /* 2, 3 */
        _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31)); /* 4, 5 */
        _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31)); /* 6, 7 */
    }
    blocks_body(out + 4 * b, q0 + b, n - b, c2, c3, seed);
}
#endif

void ulpt__philox4x32_blocks(uint32_t *out, uint64_t q0, size_t n, uint32_t c2, uint32_t c3,
                             uint64_t seed)
{
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    if (ulpt__use_avx2()) {
        blocks_avx2(out, q0, n, c2, c3, seed);
        return;
    }
#endif
    blocks_portable(out, q0, n, c2, c3, seed);
}

/* Box-Muller on two words: u1 in (0, 1] keeps the log finite, u2 in [0, 1). */
static void box_muller(uint32_t x0, uint32_t x1, double *z0, double *z1)
{
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = ((double)(x0 >> 8) + 1.0) * 0x1p-24;
    double u2 = (double)(x1 >> 8) * 0x1p-24;
    double radius = sqrt(-2.0 * log(u1));
    *z0 = radius * cos(two_pi * u2);
    *z1 = radius * sin(two_pi * u2);
}

void ulpt__normal_fill(float *out, size_t count, uint64_t seed, uint32_t c2, uint32_t c3,
                       double scale)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (size_t q = 0; q * 4 < count; q++) {
        const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)((uint64_t)q >> 32), c2, c3};
        uint32_t x[4];
        double z[4];
        ulpt__philox4x32(ctr, key, x);
        box_muller(x[0], x[1], &z[0], &z[1]);
        box_muller(x[2], x[3], &z[2], &z[3]);
        for (size_t lane = 0; lane < 4 && q * 4 + lane < count; lane++)
            out[q * 4 + lane] = (float)(z[lane] * scale);
    }
}

/* Direction `index` of a forward-only trainer's stream (docs/PROJECTION.md section 6):
 * block q of element words is Philox((q, index lo, index hi, ZO_TAG), seed).  No
 * projection or Z stream has c3 = ZO_TAG (theirs is a dim <= 2^31 - 1, or 0), so the
 * directions are independent of P and of the initial Z even under one seed. */
#define ZO_TAG 0xFFFFFFFFu

void ulpt__zo_direction(float *out, size_t count, uint64_t seed, uint64_t index, int gaussian)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (size_t q = 0; q * 4 < count; q++) {
        const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)index, (uint32_t)(index >> 32), ZO_TAG};
        uint32_t x[4];
        ulpt__philox4x32(ctr, key, x);
        float u[4];
        if (gaussian) {
            double z[4];
            box_muller(x[0], x[1], &z[0], &z[1]);
            box_muller(x[2], x[3], &z[2], &z[3]);
            for (int lane = 0; lane < 4; lane++)
                u[lane] = (float)z[lane];
        } else {
            for (int lane = 0; lane < 4; lane++)
                u[lane] = x[lane] >> 31 ? -1.0f : 1.0f;
        }
        for (size_t lane = 0; lane < 4 && q * 4 + lane < count; lane++)
            out[q * 4 + lane] = u[lane];
    }
}
