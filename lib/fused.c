/* fused.c -- the small-rank kernels: one pass over E forward (fused_forward.c), one pass
 * over G backward (fused_backward.c); here, the choice between their compiled copies and
 * the work areas they need.
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
#include "fused.h"

/* The AVX2 + FMA copies may run (every x86-64 CPU with AVX2 but a few has FMA too). */
static int use_avx2_fma(void)
{
    return ulpt__use_avx2() && ulpt__cpu_has(ULPT__CPU_FMA);
}

size_t ulpt__fused_backward_work(size_t r, size_t d)
{
    return (2 * r + 1) * chunk_stride(backward_cols(r, d)) + SLACK_FLOATS;
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
#ifdef ULPT__FUSED_AVX2
    if (use_avx2_fma())
        ulpt__fused_forward_avx2_fma(e, ld, z, rows, r, proj, s, b, d, area, w_max);
    else
#endif
        ulpt__fused_forward_portable(e, ld, z, rows, r, proj, s, b, d, area, w_max);
}

int ulpt__fused_backward(BACKWARD_ARGS)
{
#ifdef ULPT__FUSED_AVX2
    if (use_avx2_fma())
        return ulpt__fused_backward_avx2_fma(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
#endif
    return ulpt__fused_backward_portable(dz, ds, db, g, ld, z, rows, r, proj, s, d, work);
}
