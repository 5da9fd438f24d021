/* half.c -- float32 <-> IEEE binary16 and bfloat16, round to nearest even, for storage. */
#include "internal.h"

#include <string.h>

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t ulpt__f32_to_f16(float f)
{
    uint32_t x = bits_of(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf stays inf; NaN stays a quiet NaN */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) /* rounds past 65504 */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* subnormal half (or zero): scale by 2^24 and round once */
        if (ax < 0x33000000u) /* below half of the smallest subnormal: 0 */
            return (uint16_t)sign;
        uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(ax >> 23); /* 14 .. 24 */
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias the exponent, round the 13 dropped mantissa bits to even */
    uint32_t h = ((ax >> 13) - ((127u - 15u) << 10));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++; /* may carry into the exponent, which is still right */
    return (uint16_t)(sign | h);
}

float ulpt__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1f)
        return float_of(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in float */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    return float_of(sign | ((exp + 127u - 15u) << 23) | (mant << 13));
}

uint16_t ulpt__f32_to_bf16(float f)
{
    uint32_t x = bits_of(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a NaN after truncation */
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float ulpt__bf16_to_f32(uint16_t b) { return float_of((uint32_t)b << 16); }

/* Whole rows (the bank's half-precision output): the same results as the scalar
 * functions above, bit for bit (a NaN stays a NaN of the same sign, its payload may
 * differ), written as selects without branches so that the compiler vectorises them. */
static void f32_to_f16_portable(const float *restrict x, uint16_t *restrict out, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t u = bits_of(x[i]), sign = (u >> 16) & 0x8000u, ax = u & 0x7fffffffu;
        /* normal: round the 13 dropped bits to even; a carry moves into the exponent */
        uint32_t normal = ((ax + 0xfffu + ((ax >> 13) & 1u)) >> 13) - ((127u - 15u) << 10);
        /* subnormal: |x| * 2^24 rounded to an integer by adding 2^23 (exact scaling, one
           round-to-nearest-even addition) */
        uint32_t sub = bits_of(float_of(ax) * 0x1p24f + 0x1p23f) - 0x4b000000u;
        uint32_t special = 0x7c00u | (0x200u & -(uint32_t)(ax > 0x7f800000u)); /* inf, NaN */
        uint32_t big = -(uint32_t)(ax >= 0x477ff000u), tiny = -(uint32_t)(ax < 0x38800000u);
        uint32_t h = (special & big) | (sub & tiny) | (normal & ~big & ~tiny); /* masks */
        out[i] = (uint16_t)(sign | h);
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* x86's F16C instruction rounds to nearest even as the scalar code does; chosen at run
 * time, so the library itself still runs on any x86-64. */
__attribute__((target("avx,f16c"))) static void f32_to_f16_f16c(const float *x, uint16_t *out,
                                                                 size_t count)
{
    size_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    f32_to_f16_portable(x + i, out + i, count - i);
}

void ulpt__f32_to_f16_n(const float *restrict x, uint16_t *restrict out, size_t count)
{
    if (ulpt__cpu_has(ULPT__CPU_F16C))
        f32_to_f16_f16c(x, out, count);
    else
        f32_to_f16_portable(x, out, count);
}
#else
void ulpt__f32_to_f16_n(const float *restrict x, uint16_t *restrict out, size_t count)
{
    f32_to_f16_portable(x, out, count);
}
#endif

static inline void f32_to_bf16_rows(const float *restrict x, uint16_t *restrict out,
                                    size_t count)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t u = bits_of(x[i]);
        uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        uint32_t nan = (u >> 16) | 0x40u;
        out[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The same loop compiled for AVX2 too (packing 32-bit lanes to 16 is where SSE2 spends
 * its time), chosen at run time. */
__attribute__((target("avx2"))) static void f32_to_bf16_avx2(const float *restrict x,
                                                             uint16_t *restrict out, size_t count)
{
    f32_to_bf16_rows(x, out, count);
}

void ulpt__f32_to_bf16_n(const float *restrict x, uint16_t *restrict out, size_t count)
{
    if (ulpt__cpu_has(ULPT__CPU_AVX2))
        f32_to_bf16_avx2(x, out, count);
    else
        f32_to_bf16_rows(x, out, count);
}
#else
void ulpt__f32_to_bf16_n(const float *restrict x, uint16_t *restrict out, size_t count)
{
    f32_to_bf16_rows(x, out, count);
}
#endif
