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
 * chunks sized so that the chunk of P (.) s, M, b and db stays in L1 while every row
 * of the group passes over it.  The inner loops work on 8 floats at once (GCC/clang
 * vector types; plain loops elsewhere); on x86-64 a second copy is compiled for AVX2
 * and chosen at run time, while the shipped library targets the baseline ISA.  Both
 * copies do the same float operations in the same order, so they give identical
 * results.  docs/DESIGN.md ("Speed") has the measured crossover to the GEMM path in
 * forward.c. */
#include "internal.h"

#include <string.h>

/* The stack area for chunk data: at most 4608 floats (backward's 2r + 1 rows of
 * chunk_cols(r) floats) plus 4 KiB of slack for chunk_data() to place them in. */
#define AREA_FLOATS (4608 + 1024)

int ulpt__kernel_force = ULPT__KERNEL_AUTO;

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
#define PREFETCH(x, rw) ((void)(x))
#endif

/* The lanes of v summed in a fixed order. */
INLINE float vsum(const vf *v)
{
    float x[VL];
    vstore(x, *v);
    return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

/* Columns per chunk: 512 (2 KiB a row of chunk data) for the small ranks, fewer for
 * the larger, so that the 2r + 1 rows of chunk data stay in L1. */
static size_t chunk_cols(size_t r, size_t d)
{
    size_t w = r <= 4 ? 512 : r <= 8 ? 256 : 128;
    return w < d ? w : d;
}

/* Where in `area` (AREA_FLOATS floats) the chunk data starts.  A load whose address
 * matches a recent store's in its low 12 bits waits for it as if they were the same
 * address ("4K aliasing").  Forward loads P (.) s and b while storing E; backward loads
 * G while storing M and the sums.  Up to rank 4 chunk rows are 2 KiB apart, so all of
 * them sit at one of two offsets modulo 4 KiB, and placing the first `rel` bytes after
 * the streamed row (modulo 4 KiB, rounded down to a cache line) keeps both clear of the
 * rows' recent accesses: forward wants its loads just ahead of E (rel = 256), backward wants its
 * stores well behind G (rel = 1792). */
static float *chunk_data(float *area, const float *row, size_t rel)
{
    /* on a cache line of its own whatever the row's alignment: loads never straddle two */
    const uintptr_t a = (uintptr_t)area, want = ((uintptr_t)row + rel) % 4096 / 64 * 64;
    return area + ((want - a % 4096 + 4096) % 4096) / sizeof(float);
}

/* ---- forward -------------------------------------------------------------------- */

/* One chunk of one row: er[j] = bias[j] + sum_k zi[k] ps[k*w + j], j < w.  Inlined with
 * a constant r for the small ranks, so that the k loop unrolls. */
INLINE void forward_row(float *restrict er, float *next, const float *restrict zi,
                        const float *restrict ps, const float *restrict bias, size_t w, size_t r)
{
    vf zk[ULPT__FUSED_MAX_RANK];
    for (size_t k = 0; k < r; k++)
        zk[k] = vsplat(zi[k]);
    size_t j = 0;
    for (; j + VL <= w; j += VL) {
        PREFETCH(next + j, 1);
        vf acc = vload(bias + j);
        for (size_t k = 0; k < r; k++)
            acc = vadd(acc, vmul(zk[k], vload(ps + k * w + j)));
        vstore(er + j, acc);
    }
    for (; j < w; j++) { /* the columns past the last full vector */
        float acc = bias[j];
        for (size_t k = 0; k < r; k++)
            acc += zi[k] * ps[k * w + j];
        er[j] = acc;
    }
}

INLINE void forward_body(float *restrict e, size_t ld, const float *restrict z, size_t rows,
                         size_t r, const float *restrict proj, const float *restrict s,
                         const float *restrict b, size_t d)
{
    float area[AREA_FLOATS];
    float *ps = chunk_data(area, e, 256); /* r*w floats, then w of b */
    const size_t w_max = chunk_cols(r, d);
    for (size_t j0 = 0; j0 < d; j0 += w_max) {
        const size_t w = d - j0 < w_max ? d - j0 : w_max;
        float *bias = ps + r * w;
        for (size_t k = 0; k < r; k++)
            for (size_t j = 0; j < w; j++)
                ps[k * w + j] = s ? proj[k * d + j0 + j] * s[j0 + j] : proj[k * d + j0 + j];
        for (size_t j = 0; j < w; j++)
            bias[j] = b ? b[j0 + j] : 0.0f;
        for (size_t i = 0; i < rows; i++) {
            float *er = e + i * ld + j0, *next = i + 1 < rows ? er + ld : er;
            const float *zi = z + i * r;
            switch (r) {
            case 1: forward_row(er, next, zi, ps, bias, w, 1); break;
            case 2: forward_row(er, next, zi, ps, bias, w, 2); break;
            case 3: forward_row(er, next, zi, ps, bias, w, 3); break;
            case 4: forward_row(er, next, zi, ps, bias, w, 4); break;
            case 8: forward_row(er, next, zi, ps, bias, w, 8); break;
            default: forward_row(er, next, zi, ps, bias, w, r); break;
            }
        }
    }
}

/* ---- backward ------------------------------------------------------------------- */

/* One chunk of `nr` (1 or 2) consecutive rows and kr (<= 4) of the ranks: dz[k] +=
 * g . ps_k, m_k += z[k] g over the w columns, and colsum += g unless colsum is NULL.
 * z and dz rows are zs apart, G rows ld; ps and m are kr rows of w (chunk data,
 * contiguous).  Two rows at once load and store M and the column sums once for both;
 * the sums are still added in row order, so the pairing does not change the result.
 * Inlined with constant nr and kr, so that everything stays in registers. */
INLINE void backward_rows(float *restrict dz, float *restrict m, float *restrict colsum,
                          const float *restrict g, size_t ld, const float *restrict next,
                          const float *restrict z, size_t zs, const float *restrict ps,
                          size_t w, size_t kr, size_t nr)
{
    /* per row and k, two accumulators, so that consecutive vectors' adds overlap */
    vf zk[2][4], acc0[2][4], acc1[2][4];
    for (size_t q = 0; q < nr; q++)
        for (size_t k = 0; k < kr; k++) {
            zk[q][k] = vsplat(z[q * zs + k]);
            acc0[q][k] = acc1[q][k] = vsplat(0.0f);
        }
    const size_t wv = w / (2 * VL) * (2 * VL);
    size_t j = 0;
    for (; j < wv; j += 2 * VL) {
        vf g0[2], g1[2];
        for (size_t q = 0; q < nr; q++) {
            g0[q] = vload(g + q * ld + j);
            g1[q] = vload(g + q * ld + j + VL);
            PREFETCH(next + q * ld + j, 0);
        }
        if (colsum) {
            vf c0 = vload(colsum + j), c1 = vload(colsum + j + VL);
            for (size_t q = 0; q < nr; q++)
                c0 = vadd(c0, g0[q]), c1 = vadd(c1, g1[q]);
            vstore(colsum + j, c0);
            vstore(colsum + j + VL, c1);
        }
        for (size_t k = 0; k < kr; k++) {
            float *mk = m + k * w + j;
            const vf p0 = vload(ps + k * w + j), p1 = vload(ps + k * w + j + VL);
            vf m0 = vload(mk), m1 = vload(mk + VL);
            for (size_t q = 0; q < nr; q++) {
                m0 = vadd(m0, vmul(zk[q][k], g0[q]));
                m1 = vadd(m1, vmul(zk[q][k], g1[q]));
                acc0[q][k] = vadd(acc0[q][k], vmul(g0[q], p0));
                acc1[q][k] = vadd(acc1[q][k], vmul(g1[q], p1));
            }
            vstore(mk, m0);
            vstore(mk + VL, m1);
        }
    }
    float tail[2][4] = {{0}};
    for (; j < w; j++) /* the columns past the last pair of vectors */
        for (size_t q = 0; q < nr; q++) {
            const float gq = g[q * ld + j];
            if (colsum)
                colsum[j] += gq;
            for (size_t k = 0; k < kr; k++) {
                m[k * w + j] += z[q * zs + k] * gq;
                tail[q][k] += gq * ps[k * w + j];
            }
        }
    for (size_t q = 0; q < nr; q++)
        for (size_t k = 0; k < kr; k++) {
            const vf a = vadd(acc0[q][k], acc1[q][k]);
            dz[q * zs + k] += vsum(&a) + tail[q][k];
        }
}

/* Rows i, i+1 (nr = 2) or i (nr = 1) of a chunk, the ranks four at a time: G's chunk
 * rows stay in L1 between the passes. */
#define BACKWARD_RANKS(nr)                                                                \
    for (size_t kb = 0; kb < r; kb += 4) {                                                \
        float *cs = kb == 0 ? colsum : NULL, *mb = m + kb * w;                            \
        const float *pb = ps + kb * w;                                                    \
        switch (r - kb < 4 ? r - kb : 4) {                                                \
        case 1: backward_rows(dzi + kb, mb, cs, gr, ld, next, zi + kb, r, pb, w, 1, nr); break; \
        case 2: backward_rows(dzi + kb, mb, cs, gr, ld, next, zi + kb, r, pb, w, 2, nr); break; \
        case 3: backward_rows(dzi + kb, mb, cs, gr, ld, next, zi + kb, r, pb, w, 3, nr); break; \
        default: backward_rows(dzi + kb, mb, cs, gr, ld, next, zi + kb, r, pb, w, 4, nr); break; \
        }                                                                                 \
    }

/* Per chunk: build P (.) s, stream every row of G through it into zeroed M and column
 * sums (on the stack), then add dL/ds = sum_k P_k (.) M_k and dL/db = colsum.  dz is
 * accumulated into.  Returns 1 if every dz[i,:] is finite: a NaN or infinity anywhere
 * in G reaches its row (x * inf and 0 * inf are not finite), so this is the
 * finiteness check of G, at no extra pass. */
INLINE int backward_body(float *restrict dz, float *restrict ds, float *restrict db,
                         const float *restrict g, size_t ld, const float *restrict z,
                         size_t rows, size_t r, const float *restrict proj,
                         const float *restrict s, size_t d)
{
    float area[AREA_FLOATS];
    float *ps = chunk_data(area, g, 1792); /* r*w floats, then r*w of M, w of sums */
    const size_t w_max = chunk_cols(r, d);
    for (size_t j0 = 0; j0 < d; j0 += w_max) {
        const size_t w = d - j0 < w_max ? d - j0 : w_max;
        float *m = ps + r * w, *colsum = m + r * w;
        for (size_t k = 0; k < r; k++)
            for (size_t j = 0; j < w; j++)
                ps[k * w + j] = s ? proj[k * d + j0 + j] * s[j0 + j] : proj[k * d + j0 + j];
        memset(m, 0, r * w * sizeof(float));
        memset(colsum, 0, w * sizeof(float));
        for (size_t i = 0; i < rows;) {
            const size_t nr = rows - i >= 2 ? 2 : 1;
            const float *gr = g + i * ld + j0, *zi = z + i * r;
            const float *next = i + nr < rows ? gr + nr * ld : gr; /* to prefetch */
            float *dzi = dz + i * r;
            if (nr == 2)
                BACKWARD_RANKS(2)
            else
                BACKWARD_RANKS(1)
            i += nr;
        }
        if (ds)
            for (size_t k = 0; k < r; k++)
                for (size_t j = 0; j < w; j++)
                    ds[j0 + j] += proj[k * d + j0 + j] * m[k * w + j];
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
        const float *restrict proj, const float *restrict s, size_t d

static void forward_portable(FORWARD_ARGS) { forward_body(e, ld, z, rows, r, proj, s, b, d); }
ULPT__MUST_CHECK static int backward_portable(BACKWARD_ARGS)
{
    return backward_body(dz, ds, db, g, ld, z, rows, r, proj, s, d);
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2 1
__attribute__((target("avx2"))) static void forward_avx2(FORWARD_ARGS)
{
    forward_body(e, ld, z, rows, r, proj, s, b, d);
}
ULPT__MUST_CHECK __attribute__((target("avx2"))) static int backward_avx2(BACKWARD_ARGS)
{
    return backward_body(dz, ds, db, g, ld, z, rows, r, proj, s, d);
}
#endif

int ulpt__use_avx2(void)
{
#ifdef HAVE_AVX2
    if (ulpt__kernel_force == ULPT__KERNEL_FUSED_PORTABLE)
        return 0;
    __builtin_cpu_init(); /* idempotent; needed if called before constructors ran */
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

void ulpt__fused_forward(FORWARD_ARGS)
{
#ifdef HAVE_AVX2
    if (ulpt__use_avx2()) {
        forward_avx2(e, ld, z, rows, r, proj, s, b, d);
        return;
    }
#endif
    forward_portable(e, ld, z, rows, r, proj, s, b, d);
}

int ulpt__fused_backward(BACKWARD_ARGS)
{
#ifdef HAVE_AVX2
    if (ulpt__use_avx2())
        return backward_avx2(dz, ds, db, g, ld, z, rows, r, proj, s, d);
#endif
    return backward_portable(dz, ds, db, g, ld, z, rows, r, proj, s, d);
}
