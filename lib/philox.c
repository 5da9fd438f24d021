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
