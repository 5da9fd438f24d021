/* fused_backward.c -- the small-rank backward: one pass reading G.  For one token group
 * (rows Z_g, G_g; P_g is r x d):
 *
 *     dZ[i,k] += sum_j G[i,j] (P[k,j] s[j])
 *     M[k,:]  += Z[i,k] G[i,:]        (dL/ds = sum_k P[k,:] (.) M[k,:])
 *     dL/db   += G[i,:]
 *
 * in column chunks: every row of G passes over a chunk of P (.) s, M and the column sums,
 * kept in the caller's work area.  fused.h has the vectors and the chunks, fused.c the
 * choice of copy. */
#include "fused.h"

/* One chunk of `nr` (1 or 2) consecutive rows and kr (<= 4) of the ranks: dz[k] +=
 * g . ps_k, m_k += z[k] g over the w columns, and colsum += g if `sums`.  z and dz
 * rows are zs apart, G rows ld; ps and m are kr rows of chunk data, st floats apart.
 * Two rows at once load and store M and the column sums once for both and load each
 * vector of P (.) s once; the sums are still added in row order.  Inlined with constant
 * nr, kr and sums, so that everything stays in registers. */
INLINE void backward_rows(float *restrict dz, float *restrict m, float *restrict colsum,
                          const float *restrict g, size_t ld, const float *restrict next,
                          const float *restrict z, size_t zs, const float *restrict ps,
                          size_t st, size_t w, size_t kr, size_t nr, int sums)
{
    vf zk[2][4], acc[2][4]; /* nr * kr independent accumulators */
    for (size_t q = 0; q < nr; q++)
        for (size_t k = 0; k < kr; k++) {
            zk[q][k] = vsplat(z[q * zs + k]);
            acc[q][k] = vsplat(0.0f);
        }
    const size_t wv = w / (2 * VL) * (2 * VL);
    size_t j = 0;
    for (; j < wv; j += 2 * VL) {
        for (size_t q = 0; q < nr; q++) /* once per 64-byte line of each row */
            PREFETCH(next + q * ld + j, 0);
        for (size_t h = j; h < j + 2 * VL; h += VL) {
            vf gq[2];
            for (size_t q = 0; q < nr; q++)
                gq[q] = vload(g + q * ld + h);
            if (sums) {
                vf c = vload(colsum + h);
                for (size_t q = 0; q < nr; q++)
                    c = vadd(c, gq[q]);
                vstore(colsum + h, c);
            }
            for (size_t k = 0; k < kr; k++) {
                float *mk = m + k * st + h;
                const vf p = vload(ps + k * st + h);
                vf mv = vload(mk);
                for (size_t q = 0; q < nr; q++) {
                    mv = vfma(zk[q][k], gq[q], mv);
                    acc[q][k] = vfma(gq[q], p, acc[q][k]);
                }
                vstore(mk, mv);
            }
        }
    }
    float tail[2][4] = {{0}};
    for (; j < w; j++) /* the columns past the last pair of vectors */
        for (size_t q = 0; q < nr; q++) {
            const float gq = g[q * ld + j];
            if (sums)
                colsum[j] += gq;
            for (size_t k = 0; k < kr; k++) {
                m[k * st + j] += z[q * zs + k] * gq;
                tail[q][k] += gq * ps[k * st + j];
            }
        }
    for (size_t q = 0; q < nr; q++)
        for (size_t k = 0; k < kr; k++)
            dz[q * zs + k] += vsum(&acc[q][k]) + tail[q][k];
}

/* Four rows at once, for ranks (kr = r) 1 and 2: the same sums, with M and the column
 * sums loaded and stored once per four rows.  Eight accumulators, M, the sums and
 * P (.) s nearly fill the sixteen AVX registers, so most splats of Z are read from
 * memory, where an FMA takes them as an operand.  With G in L2 this ran 1.1 times as
 * fast as two rows at a time; prefetching (the next rows, or further along these) made
 * it slower. */
INLINE void backward_rows4(float *restrict dz, float *restrict m, float *restrict colsum,
                           const float *restrict g, size_t ld, const float *restrict z,
                           const float *restrict ps, size_t st, size_t w, size_t kr)
{
    vf acc[4][2];
    float zk[4 * 2 * VL]; /* splat z[q,k] at (q kr + k) VL */
    for (size_t q = 0; q < 4; q++)
        for (size_t k = 0; k < kr; k++) {
            vstore(zk + (q * kr + k) * VL, vsplat(z[q * kr + k]));
            acc[q][k] = vsplat(0.0f);
        }
    const size_t wv = w / VL * VL;
    size_t j = 0;
    for (; j < wv; j += VL) {
        vf p[2], mv[2], cs = vload(colsum + j);
        for (size_t k = 0; k < kr; k++) {
            p[k] = vload(ps + k * st + j);
            mv[k] = vload(m + k * st + j);
        }
        /* One row's vector of G at a time, used up before the next is loaded: that
         * leaves registers for P (.) s and a splat, and GCC's loop makes fifteen loads
         * where four vectors of G loaded at once made seventeen, in 0.95 of the time
         * (measured).  The sums still add in row order. */
        for (size_t q = 0; q < 4; q++) {
            const vf gq = vload(g + q * ld + j);
            cs = vadd(cs, gq);
            for (size_t k = 0; k < kr; k++) {
                mv[k] = vfma(gq, vload(zk + (q * kr + k) * VL), mv[k]);
                acc[q][k] = vfma(gq, p[k], acc[q][k]);
            }
        }
        vstore(colsum + j, cs);
        for (size_t k = 0; k < kr; k++)
            vstore(m + k * st + j, mv[k]);
    }
    float tail[4][2] = {{0}};
    for (; j < w; j++) /* the columns past the last vector */
        for (size_t q = 0; q < 4; q++) {
            const float gq = g[q * ld + j];
            colsum[j] += gq;
            for (size_t k = 0; k < kr; k++) {
                m[k * st + j] += z[q * kr + k] * gq;
                tail[q][k] += gq * ps[k * st + j];
            }
        }
    for (size_t q = 0; q < 4; q++)
        for (size_t k = 0; k < kr; k++)
            dz[q * kr + k] += vsum(&acc[q][k]) + tail[q][k];
}

/* Rows i .. i+nr-1 of a chunk, the ranks four at a time: G's chunk rows stay in L1
 * between the passes.  (Four rows at once ran slower here: the splats of Z and the
 * accumulators no longer fit in the registers.) */
#define BACKWARD_RANKS(nr)                                                                  \
    for (size_t kb = 0; kb < r; kb += 4) {                                                  \
        float *mb = m + kb * st;                                                            \
        const float *pb = ps + kb * st;                                                     \
        const size_t kr = r - kb < 4 ? r - kb : 4;                                          \
        if (kb == 0 && kr == 1)                                                             \
            backward_rows(dzi, mb, colsum, gr, ld, next, zi, r, pb, st, w, 1, nr, 1);       \
        else if (kb == 0 && kr == 2)                                                        \
            backward_rows(dzi, mb, colsum, gr, ld, next, zi, r, pb, st, w, 2, nr, 1);       \
        else if (kb == 0 && kr == 3)                                                        \
            backward_rows(dzi, mb, colsum, gr, ld, next, zi, r, pb, st, w, 3, nr, 1);       \
        else if (kb == 0)                                                                   \
            backward_rows(dzi, mb, colsum, gr, ld, next, zi, r, pb, st, w, 4, nr, 1);       \
        else if (kr == 1)                                                                   \
            backward_rows(dzi + kb, mb, NULL, gr, ld, next, zi + kb, r, pb, st, w, 1, nr, 0); \
        else if (kr == 2)                                                                   \
            backward_rows(dzi + kb, mb, NULL, gr, ld, next, zi + kb, r, pb, st, w, 2, nr, 0); \
        else if (kr == 3)                                                                   \
            backward_rows(dzi + kb, mb, NULL, gr, ld, next, zi + kb, r, pb, st, w, 3, nr, 0); \
        else                                                                                \
            backward_rows(dzi + kb, mb, NULL, gr, ld, next, zi + kb, r, pb, st, w, 4, nr, 0); \
    }

/* Per chunk: build P (.) s, stream every row of G through it into zeroed M and column
 * sums (in `work`), then add dL/ds = sum_k P_k (.) M_k and dL/db = colsum.  dz is
 * accumulated into.  Returns 1 if every dz[i,:] is finite: a NaN or infinity anywhere
 * in G reaches its row (x * inf and 0 * inf are not finite), so this is the
 * finiteness check of G, at no extra pass. */
INLINE int backward_body(float *restrict dz, float *restrict ds, float *restrict db,
                         const float *restrict g, size_t ld, const float *restrict z,
                         size_t rows, size_t r, const float *restrict proj,
                         const float *restrict s, size_t d, float *restrict work)
{
    const size_t w_max = backward_cols(r, d), st = chunk_stride(w_max);
    float *ps = chunk_data(work, g, 1792); /* r rows of P (.) s, r of M, 1 of sums */
    float *m = ps + r * st, *colsum = m + r * st;
    for (size_t j0 = 0, w; j0 < d; j0 += w) {
        w = chunk_width(j0, w_max, d);
        for (size_t k = 0; k < r; k++) {
            for (size_t j = 0; j < w; j++)
                ps[k * st + j] = s ? proj[k * d + j0 + j] * s[j0 + j] : proj[k * d + j0 + j];
            memset(m + k * st, 0, w * sizeof(float));
        }
        memset(colsum, 0, w * sizeof(float));
        for (size_t i = 0; i < rows;) {
            const float *gr = g + i * ld + j0, *zi = z + i * r;
            float *dzi = dz + i * r;
            if (r <= 2 && rows - i >= 4) {
                if (r == 1)
                    backward_rows4(dzi, m, colsum, gr, ld, zi, ps, st, w, 1);
                else
                    backward_rows4(dzi, m, colsum, gr, ld, zi, ps, st, w, 2);
                i += 4;
                continue;
            }
            const size_t nr = rows - i >= 2 ? 2 : 1;
            const float *next = i + nr < rows ? gr + nr * ld : gr; /* to prefetch */
            if (nr == 2)
                BACKWARD_RANKS(2)
            else
                BACKWARD_RANKS(1)
            i += nr;
        }
        if (ds)
            for (size_t k = 0; k < r; k++)
                for (size_t j = 0; j < w; j++)
                    ds[j0 + j] += proj[k * d + j0 + j] * m[k * st + j];
        if (db)
            for (size_t j = 0; j < w; j++)
                db[j0 + j] += colsum[j];
    }
    return ulpt__all_finite(dz, rows * r);
}

int ulpt__fused_backward_portable(BACKWARD_ARGS)
{
    return backward_body(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
}

#ifdef ULPT__FUSED_AVX2
AVX2_FMA int ulpt__fused_backward_avx2_fma(BACKWARD_ARGS)
{
    return backward_body(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
}
#endif
