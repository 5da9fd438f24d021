/* fused.c -- the small-rank kernels: one pass over E forward, one pass over G backward.
 *
 * For one token group (rows Z_g, G_g; P_g is r x d):
 *
 *     forward   E[i,:]  = b + sum_k Z[i,k] (P[k,:] (.) s)               writes E once
 *     backward  dZ[i,k] += sum_j G[i,j] (P[k,j] s[j])
 *               M[k,:]  += Z[i,k] G[i,:]        (dL/ds = sum_k P[k,:] (.) M[k,:])
 *               dL/db   += G[i,:]                                        reads G once
 *
 * At r = 2 a GEMM spends its time packing and in call overhead, not arithmetic; these
 * loops do the arithmetic while each element streams by.  Both walk E or G in column
 * chunks: every row of the group passes over a chunk of P (.) s and b (forward) or
 * P (.) s, M and the column sums (backward), several rows at a time.  The chunks keep
 * that data in L1, except at ranks 1 and 2, which favour long stretches of the rows and
 * keep their data in the prompt's scratch (forward where no other forward on the same
 * prompt holds it; forward.c).  The inner loops work on 8 floats at once (GCC/clang
 * vector types; plain loops elsewhere); on x86-64 a second copy is compiled for AVX2
 * with FMA and chosen at run time, while the shipped library targets the baseline ISA.
 * The copies add in the same order, but the FMA copy rounds each multiply-add once
 * where the baseline copy rounds twice, so they agree to float round-off rather than to
 * the bit (tests/test_prompt.c holds both to a double-precision reference).
 * docs/DESIGN.md ("Speed") has the measured crossover to the GEMM path in forward.c. */
#include "internal.h"

#include <string.h>

/* Forward's stack area for chunk data: at most 2560 floats (r + 1 rows of
 * chunk_cols(r) floats, at rank 4) plus 4 KiB of slack for chunk_data() to place them
 * in; 14 KiB.  Its longer chunks at ranks 1 and 2 (ulpt__fused_forward_work) and
 * backward's (ulpt__fused_backward_work) use the caller's memory instead. */
#define SLACK_FLOATS 1024
#define AREA_FLOATS (2560 + SLACK_FLOATS)

/* ---- eight floats at a time -------------------------------------------------------- */

/* GCC and clang lower an 8-float vector to one AVX register, or to two SSE (or NEON)
 * registers on the baseline, doing the same operations either way. */
#define VL 8
#if defined(__GNUC__) || defined(__clang__)
/* The helpers below are always inlined: no vector ever crosses a call, so the note that
 * passing one changes with AVX (-Wpsabi) does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
/* the same, at any float address, and allowed to alias float arrays */
typedef float vf_unaligned
    __attribute__((vector_size(VL * sizeof(float)), aligned(4), may_alias));
#define INLINE static inline __attribute__((always_inline))
INLINE vf vload(const float *x) { return *(const vf_unaligned *)x; }
#define vstore(x, v) (*(vf_unaligned *)(x) = (v))
INLINE vf vsplat(float a) { return (vf){a, a, a, a, a, a, a, a}; }
#define vadd(a, b) ((a) + (b))
#define vmul(a, b) ((a) * (b))
/* one expression, so that a copy built with fp-contract=fast makes it one FMA */
#define vfma(a, b, c) ((a) * (b) + (c))
/* A chunk's rows are far apart, too far for the hardware to guess the next one. */
#define PREFETCH(x, rw) __builtin_prefetch((x), (rw))
#else /* any other C11 compiler: the same arithmetic, lane by lane */
typedef struct { float v[VL]; } vf;
#define INLINE static inline
INLINE vf vload(const float *x) { vf v; memcpy(v.v, x, sizeof v.v); return v; }
INLINE void vstore(float *x, vf v) { memcpy(x, v.v, sizeof v.v); }
INLINE vf vsplat(float a) { vf v; for (int l = 0; l < VL; l++) v.v[l] = a; return v; }
INLINE vf vadd(vf a, vf b) { for (int l = 0; l < VL; l++) a.v[l] += b.v[l]; return a; }
INLINE vf vmul(vf a, vf b) { for (int l = 0; l < VL; l++) a.v[l] *= b.v[l]; return a; }
INLINE vf vfma(vf a, vf b, vf c) { return vadd(vmul(a, b), c); }
#define PREFETCH(x, rw) ((void)(x))
#endif

/* The lanes of v summed in a fixed order. */
INLINE float vsum(const vf *v)
{
    float x[VL];
    vstore(x, *v);
    return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

/* Forward's columns per chunk: 512 (2 KiB a row of chunk data) for the small ranks,
 * fewer for the larger, so that the r + 1 rows of chunk data stay in L1. */
static size_t chunk_cols(size_t r, size_t d)
{
    size_t w = r <= 4 ? 512 : r <= 8 ? 256 : 128;
    return w < d ? w : d;
}

/* Backward's: the same past rank 2.  At ranks 1 and 2 (four rows of G at a time) long
 * stretches of each row of G matter more than keeping the 2r + 1 rows of chunk data in
 * L1: with G in L3, as `make bench` has it, the four-row loop over chunks of 4096
 * columns (16 KiB of each row; chunk data in L2) took 1.7 times a read of G at the
 * headline shape where the same loop over chunks of 512 took 2.0. */
static size_t backward_cols(size_t r, size_t d)
{
    size_t w = r <= 2 ? 4096 : chunk_cols(r, d);
    return w < d ? w : d;
}

/* The distance between rows of chunk data: past 512 floats a multiple of 512 (2 KiB),
 * so that they all sit at one of two offsets modulo 4 KiB (see chunk_data). */
static size_t chunk_stride(size_t w)
{
    return w <= 512 ? w : (w + 511) / 512 * 512;
}

size_t ulpt__fused_backward_work(size_t r, size_t d)
{
    return (2 * r + 1) * chunk_stride(backward_cols(r, d)) + SLACK_FLOATS;
}

/* The width of the chunk that starts at column j0: w_max, the last one what is left.
 * Chunks start at the same columns wherever the rows are in memory: backward sums each
 * row of dZ a chunk at a time, eight columns to a lane, so chunks that moved with the
 * address would round differently for the same numbers (and a resumed run would not
 * repeat an uninterrupted one bit for bit).  Rows off a 32-byte boundary cost vector
 * loads that straddle cache lines instead. */
static size_t chunk_width(size_t j0, size_t w_max, size_t d)
{
    return d - j0 < w_max ? d - j0 : w_max;
}

/* Forward's: the same, except that where `row` is not on a 32-byte boundary a first
 * chunk of the 1..7 columns before the boundary comes first, so that every other chunk
 * starts on one (a row stride that is a multiple of 8 floats then keeps every vector
 * store within a cache line).  Each element of E is computed on its own, so where the
 * chunks fall does not change its bits; stores that straddle two lines cost forward a
 * fifth of its time at the headline shape. */
static size_t aligned_chunk_width(const float *row, size_t j0, size_t w_max, size_t d)
{
    if (j0 == 0 && d > VL) {
        const size_t head = (VL - (uintptr_t)row / sizeof(float) % VL) % VL;
        if (head)
            return head;
    }
    return chunk_width(j0, w_max, d);
}

/* Where in `area` (the chunk data and SLACK_FLOATS more) the chunk data starts.  A load
 * whose address matches a recent store's in its low 12 bits waits for it as if they were
 * the same address ("4K aliasing").  Forward loads P (.) s and b while storing E; backward
 * loads G while storing M and the sums.  Up to rank 4 chunk rows are a multiple of 2 KiB
 * apart, so all of them sit at one of two offsets modulo 4 KiB, and placing the first
 * `rel` bytes after the streamed row (modulo 4 KiB, rounded down to a cache line) keeps
 * both clear of the rows' recent accesses: forward wants its loads just ahead of E
 * (rel = 256), backward wants its stores well behind G (rel = 1792; at the headline
 * shape a placement 16 bytes before G's offset took twice as long). */
static float *chunk_data(float *area, const float *row, size_t rel)
{
    /* on a cache line of its own whatever the row's alignment: loads never straddle two */
    const uintptr_t a = (uintptr_t)area, want = ((uintptr_t)row + rel) % 4096 / 64 * 64;
    return area + ((want - a % 4096 + 4096) % 4096) / sizeof(float);
}

/* ---- forward -------------------------------------------------------------------- */

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

/* ---- backward ------------------------------------------------------------------- */

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

/* ---- the compiled copies and the choice between them ------------------------------ */

#define FORWARD_ARGS                                                                      \
    float *restrict e, size_t ld, const float *restrict z, size_t rows, size_t r,         \
        const float *restrict proj, const float *restrict s, const float *restrict b, size_t d
#define BACKWARD_ARGS                                                                      \
    float *restrict dz, float *restrict ds, float *restrict db, const float *restrict g,   \
        size_t ld, const float *restrict z, size_t rows, size_t r,                         \
        const float *restrict proj, const float *restrict s, size_t d, float *restrict work

static void forward_portable(FORWARD_ARGS, float *area, size_t w_max)
{
    forward_body(e, ld, z, rows, r, proj, s, b, d, area, w_max);
}
ULPT__MUST_CHECK static int backward_portable(BACKWARD_ARGS)
{
    return backward_body(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2 1
/* vfma's a * b + c becomes one fused multiply-add: clang contracts within an expression
 * by default, GCC (in ISO C mode) only when told to. */
#if defined(__clang__)
#define AVX2_FMA __attribute__((target("avx2,fma")))
#else
#define AVX2_FMA __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
#endif
AVX2_FMA static void forward_avx2_fma(FORWARD_ARGS, float *area, size_t w_max)
{
    forward_body(e, ld, z, rows, r, proj, s, b, d, area, w_max);
}
ULPT__MUST_CHECK AVX2_FMA static int backward_avx2_fma(BACKWARD_ARGS)
{
    return backward_body(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
}
#endif

/* The AVX2 + FMA copies may run (every x86-64 CPU with AVX2 but a few has FMA too). */
static int use_avx2_fma(void)
{
    return ulpt__use_avx2() && ulpt__cpu_has(ULPT__CPU_FMA);
}

size_t ulpt__fused_forward_work(size_t r, size_t d)
{
    return r <= 2 && d > chunk_cols(r, d) ? (r + 1) * backward_cols(r, d) + SLACK_FLOATS : 0;
}

void ulpt__fused_forward(FORWARD_ARGS, float *work)
{
    /* Ranks 1 and 2 take rows 4096 columns at a time, like backward: with E in L3, as
     * `make bench` has it, forward over long stretches of each row (sixteen columns of
     * a row at a time) took 1.33 times a write of E at the headline shape, against 1.54
     * over 512-column chunks (medians of 25 runs).  Their chunk data, up to 52 KiB, is
     * more than a caller's stack should give, so it comes from `work` (the prompt's
     * scratch); without it forward takes 512 columns at a time from the stack, to the
     * same bits (each element of E is computed on its own). */
    float stack[AREA_FLOATS], *area = work ? work : stack;
    const size_t w_max = work ? backward_cols(r, d) : chunk_cols(r, d);
#ifdef HAVE_AVX2
    if (use_avx2_fma())
        forward_avx2_fma(e, ld, z, rows, r, proj, s, b, d, area, w_max);
    else
#endif
        forward_portable(e, ld, z, rows, r, proj, s, b, d, area, w_max);
}

int ulpt__fused_backward(BACKWARD_ARGS)
{
#ifdef HAVE_AVX2
    if (use_avx2_fma())
        return backward_avx2_fma(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
#endif
    return backward_portable(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
}
