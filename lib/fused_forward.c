/* fused_forward.c -- the small-rank forward: one pass writing E.  For one token group
 * (rows Z_g; P_g is r x d):
 *
 *     E[i,:] = b + sum_k Z[i,k] (P[k,:] (.) s)
 *
 * in column chunks: every row of the group passes over a chunk of P (.) s and b, several
 * rows at a time, the chunk data in L1 (in the prompt's scratch for the longer chunks of
 * ranks 1 and 2).  fused.h has the vectors and the chunks, fused.c the choice of copy. */
#include "fused.h"

/* One chunk of `nr` (1 or 4) consecutive rows: er[q*ld + j] = bias[j] + sum_k
 * zi[q*r + k] ps[k*w + j], j < w.  Several rows at once load each vector of P (.) s and
 * b once for all of them.  Inlined with constant r and nr for the small ranks, so that
 * the loops unroll. */
INLINE void forward_rows(float *restrict er, size_t ld, const float *next,
                         const float *restrict zi, const float *restrict ps,
                         const float *restrict bias, size_t w, size_t r, size_t nr)
{
    vf zk[4][ULPT__FUSED_MAX_RANK];
    for (size_t q = 0; q < nr; q++)
        for (size_t k = 0; k < r; k++)
            zk[q][k] = vsplat(zi[q * r + k]);
    const size_t wv = w / (2 * VL) * (2 * VL);
    size_t j = 0;
    for (; j < wv; j += 2 * VL) {
        /* The next row, once per 64-byte line; the four-row loop ran a fifth slower
         * with it (measured), the one-row loop of the larger ranks faster. */
        if (nr == 1)
            PREFETCH(next + j, 1);
        if (nr == 1 || r > 2) { /* past rank 2 the registers hold one vector of each row */
            for (size_t h = j; h < j + 2 * VL; h += VL) {
                const vf bv = vload(bias + h);
                for (size_t q = 0; q < nr; q++) {
                    vf acc = bv;
                    for (size_t k = 0; k < r; k++)
                        acc = vfma(zk[q][k], vload(ps + k * w + h), acc);
                    vstore(er + q * ld + h, acc);
                }
            }
            continue;
        }
        /* Sixteen columns of a row, then of the next: each row's stores come in pairs
         * that fill a 64-byte line (when E's rows are on 64-byte boundaries).  Plain
         * stores in that order over four rows of 4096 columns wrote as fast as memset;
         * a vector of each row in turn took 1.2 to 1.4 times as long (measured). */
        const vf b0 = vload(bias + j), b1 = vload(bias + j + VL);
        for (size_t q = 0; q < nr; q++) {
            vf a0 = b0, a1 = b1;
            for (size_t k = 0; k < r; k++) {
                a0 = vfma(zk[q][k], vload(ps + k * w + j), a0);
                a1 = vfma(zk[q][k], vload(ps + k * w + j + VL), a1);
            }
            vstore(er + q * ld + j, a0);
            vstore(er + q * ld + j + VL, a1);
        }
    }
    for (; j < w; j++) /* the columns past the last pair of vectors */
        for (size_t q = 0; q < nr; q++) {
            float acc = bias[j];
            for (size_t k = 0; k < r; k++)
                acc += zi[q * r + k] * ps[k * w + j];
            er[q * ld + j] = acc;
        }
}

/* Rows i .. i+nr-1 of a chunk, with r a constant for the small ranks. */
#define FORWARD_RANKS(nr)                                                                 \
    switch (r) {                                                                          \
    case 1: forward_rows(er, ld, next, zi, ps, bias, w, 1, nr); break;                    \
    case 2: forward_rows(er, ld, next, zi, ps, bias, w, 2, nr); break;                    \
    case 3: forward_rows(er, ld, next, zi, ps, bias, w, 3, nr); break;                    \
    case 4: forward_rows(er, ld, next, zi, ps, bias, w, 4, nr); break;                    \
    case 8: forward_rows(er, ld, next, zi, ps, bias, w, 8, 1); break;                     \
    default: forward_rows(er, ld, next, zi, ps, bias, w, r, 1); break;                    \
    }

/* `area` holds (r + 1) w_max + SLACK_FLOATS floats. */
INLINE void forward_body(float *restrict e, size_t ld, const float *restrict z, size_t rows,
                         size_t r, const float *restrict proj, const float *restrict s,
                         const float *restrict b, size_t d, float *area, size_t w_max)
{
    float *ps = chunk_data(area, e, 256); /* r*w floats, then w of b */
    for (size_t j0 = 0, w; j0 < d; j0 += w) {
        w = aligned_chunk_width(e, j0, w_max, d);
        float *bias = ps + r * w;
        for (size_t k = 0; k < r; k++)
            for (size_t j = 0; j < w; j++)
                ps[k * w + j] = s ? proj[k * d + j0 + j] * s[j0 + j] : proj[k * d + j0 + j];
        for (size_t j = 0; j < w; j++)
            bias[j] = b ? b[j0 + j] : 0.0f;
        for (size_t i = 0; i < rows;) {
            /* four rows at a time up to rank 4; past it the splats fill the registers */
            const size_t nr = r <= 4 && rows - i >= 4 ? 4 : 1;
            float *er = e + i * ld + j0;
            const float *next = i + nr < rows ? er + nr * ld : er, *zi = z + i * r;
            if (nr == 4)
                FORWARD_RANKS(4)
            else
                FORWARD_RANKS(1)
            i += nr;
        }
    }
}

void ulpt__fused_forward_portable(FORWARD_ARGS, float *area, size_t w_max)
{
    forward_body(e, ld, z, rows, r, proj, s, b, d, area, w_max);
}

#ifdef ULPT__FUSED_AVX2
AVX2_FMA void ulpt__fused_forward_avx2_fma(FORWARD_ARGS, float *area, size_t w_max)
{
    forward_body(e, ld, z, rows, r, proj, s, b, d, area, w_max);
}
#endif
