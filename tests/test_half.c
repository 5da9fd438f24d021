/* test_half.c -- float32 to binary16 and bfloat16 (lib/half.c) against references. */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

/* Reference binary16 by arithmetic on doubles: the value of a half, and the half
 * value nearest to a float (ties to even, past 65520 infinite). */
static double half_value(uint16_t h)
{
    int exp = (h >> 10) & 31, mant = h & 1023;
    double v = exp == 0 ? ldexp(mant, -24) : exp == 31 ? (mant ? NAN : INFINITY)
                                                       : ldexp(1024 + mant, exp - 25);
    return h & 0x8000 ? -v : v;
}

static double nearest_half(float f)
{
    double a = fabs((double)f);
    if (a >= 65520.0)
        return copysign(INFINITY, f);
    double quantum = a < 0x1p-14 ? 0x1p-24 : ldexp(1.0, ilogb(a) - 10);
    return copysign(rint(a / quantum) * quantum, f); /* rint: ties to even */
}

TEST(f16_conversion_matches_a_reference_on_every_half_and_many_floats)
{
    for (uint32_t h = 0; h < 65536; h++) { /* every half decodes right and round-trips */
        float f = ulpt__f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            ck_assert(isnan(half_value((uint16_t)h)));
            continue;
        }
        ck_assert_double_eq(f, half_value((uint16_t)h));
        ck_assert_uint_eq(ulpt__f32_to_f16(f), h);
    }
    uint64_t st = 1;
    for (int k = 0; k < test_reps(2000000); k++) { /* random bit patterns: every exponent */
        st = st * 6364136223846793005u + 1442695040888963407u;
        uint32_t u = (uint32_t)(st >> 32);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f))
            continue;
        uint16_t h = ulpt__f32_to_f16(f);
        double got = half_value(h), want = nearest_half(f);
        ck_assert_msg(got == want && signbit(got) == signbit(want), "%a: got %a, want %a",
                      (double)f, got, want);
    }
    ck_assert(isnan(ulpt__f16_to_f32(ulpt__f32_to_f16(NAN))));
}

TEST(bf16_conversion_rounds_to_nearest_even)
{
    uint64_t st = 2;
    for (int k = 0; k < test_reps(2000000); k++) {
        st = st * 6364136223846793005u + 1442695040888963407u;
        uint32_t u = (uint32_t)(st >> 32);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f) || isinf(f))
            continue;
        /* the two bf16 neighbours of f, and the nearer (ties to the even one) */
        uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
        float flo, fhi;
        memcpy(&flo, &lo, 4);
        memcpy(&fhi, &hi, 4);
        double dhi = isinf(fhi) ? copysign(0x1p128, fhi) : fhi; /* IEEE's overflow point */
        double dl = fabs((double)f - flo), dh = fabs(dhi - f);
        uint32_t want = dl < dh ? lo : dh < dl ? hi : ((lo >> 16) & 1 ? hi : lo);
        ck_assert_uint_eq(ulpt__f32_to_bf16(f), want >> 16);
        float back = ulpt__bf16_to_f32((uint16_t)(want >> 16));
        ck_assert_uint_eq(ulpt__f32_to_bf16(back), want >> 16);
    }
    ck_assert(isnan(ulpt__bf16_to_f32(ulpt__f32_to_bf16(NAN))));
}
