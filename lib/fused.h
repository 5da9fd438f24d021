/* fused.h -- what the small-rank kernels share (fused_forward.c, fused_backward.c and
 * fused.c, which chooses between their compiled copies): eight floats at a time, the
 * column chunks both walk, and the attributes of the AVX2 + FMA copies.  Everything here
 * is inlined into each copy, so that each is compiled for its own instruction set. */
#ifndef ULPT_FUSED_H
#define ULPT_FUSED_H

#include "internal.h"

#include <stdint.h>
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
static inline size_t chunk_cols(size_t r, size_t d)
{
    size_t w = r <= 4 ? 512 : r <= 8 ? 256 : 128;
    return w < d ? w : d;
}

/* Backward's: the same past rank 2.  At ranks 1 and 2 (four rows of G at a time) long
 * stretches of each row of G matter more than keeping the 2r + 1 rows of chunk data in
 * L1: with G in L3, as `make bench` has it, the four-row loop over chunks of 4096
 * columns (16 KiB of each row; chunk data in L2) took 1.7 times a read of G at the
 * headline shape where the same loop over chunks of 512 took 2.0. */
static inline size_t backward_cols(size_t r, size_t d)
{
    size_t w = r <= 2 ? 4096 : chunk_cols(r, d);
    return w < d ? w : d;
}

/* The distance between rows of chunk data: past 512 floats a multiple of 512 (2 KiB),
 * so that they all sit at one of two offsets modulo 4 KiB (see chunk_data). */
static inline size_t chunk_stride(size_t w)
{
    return w <= 512 ? w : (w + 511) / 512 * 512;
}

/* The width of the chunk that starts at column j0: w_max, the last one what is left.
 * Chunks start at the same columns wherever the rows are in memory: backward sums each
 * row of dZ a chunk at a time, eight columns to a lane, so chunks that moved with the
 * address would round differently for the same numbers (and a resumed run would not
 * repeat an uninterrupted one bit for bit).  Rows off a 32-byte boundary cost vector
 * loads that straddle cache lines instead. */
static inline size_t chunk_width(size_t j0, size_t w_max, size_t d)
{
    return d - j0 < w_max ? d - j0 : w_max;
}

/* Forward's: the same, except that where `row` is not on a 32-byte boundary a first
 * chunk of the 1..7 columns before the boundary comes first, so that every other chunk
 * starts on one (a row stride that is a multiple of 8 floats then keeps every vector
 * store within a cache line).  Each element of E is computed on its own, so where the
 * chunks fall does not change its bits; stores that straddle two lines cost forward a
 * fifth of its time at the headline shape. */
static inline size_t aligned_chunk_width(const float *row, size_t j0, size_t w_max, size_t d)
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
static inline float *chunk_data(float *area, const float *row, size_t rel)
{
    /* on a cache line of its own whatever the row's alignment: loads never straddle two */
    const uintptr_t a = (uintptr_t)area, want = ((uintptr_t)row + rel) % 4096 / 64 * 64;
    return area + ((want - a % 4096 + 4096) % 4096) / sizeof(float);
}

/* ---- the compiled copies ----------------------------------------------------------- */

#define FORWARD_ARGS                                                                      \
    float *restrict e, size_t ld, const float *restrict z, size_t rows, size_t r,         \
        const float *restrict proj, const float *restrict s, const float *restrict b, size_t d
#define BACKWARD_ARGS                                                                      \
    float *restrict dz, float *restrict ds, float *restrict db, const float *restrict g,   \
        size_t ld, const float *restrict z, size_t rows, size_t r,                         \
        const float *restrict proj, const float *restrict s, size_t d, float *restrict work

/* Each kernel twice: for the baseline ISA, and on x86 for AVX2 with FMA. `area` holds
 * (r + 1) w_max + SLACK_FLOATS floats; fused.c chooses the copy and the area. */
void ulpt__fused_forward_portable(FORWARD_ARGS, float *area, size_t w_max);
ULPT__MUST_CHECK int ulpt__fused_backward_portable(BACKWARD_ARGS);

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ULPT__FUSED_AVX2 1
/* vfma's a * b + c becomes one fused multiply-add: clang contracts within an expression
 * by default, GCC (in ISO C mode) only when told to. */
#if defined(__clang__)
#define AVX2_FMA __attribute__((target("avx2,fma")))
#else
#define AVX2_FMA __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
#endif
void ulpt__fused_forward_avx2_fma(FORWARD_ARGS, float *area, size_t w_max);
ULPT__MUST_CHECK int ulpt__fused_backward_avx2_fma(BACKWARD_ARGS);
#endif

#endif /* ULPT_FUSED_H */
