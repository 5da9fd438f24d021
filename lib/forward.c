/* forward.c -- a prompt's forward and backward, side by side; with G = dL/dE and P_g the
 * projection of the token group g (rows Z_g, G_g):
 *
 *     E_g     = (Z_g . P_g) (.) s + b
 *     dL/db   = sum_i G[i,:]
 *     dL/ds   = sum_g sum_k P_g[k,:] (.) M_g[k,:],     M_g = Z_g^T . G_g      (r x d)
 *     dL/dZ_g = G_g . (P_g diag s)^T                                       (n_g x r)
 *
 * Two paths compute this: the fused kernels of fused.c for small rank (one pass over E
 * or G), and CBLAS GEMM for the rest; use_fused() picks one per call.  The identity
 * projection (vanilla prompt tuning) has Z: n x d and no product. */
#include "internal.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

/* ---- forward and backward -------------------------------------------------------- */

/* The fused kernels (fused.c) below this rank, CBLAS GEMM above: the crossover measured
 * by `make bench` and recorded in docs/DESIGN.md. */
#define FUSED_AUTO_MAX_RANK 12

static int use_fused(const ulpt_prompt *p)
{
    if (p->r > ULPT__FUSED_MAX_RANK)
        return 0;
    switch (ulpt__kernel_force) {
    case ULPT__KERNEL_GEMM:
        return 0;
    case ULPT__KERNEL_FUSED:
    case ULPT__KERNEL_FUSED_PORTABLE:
        return 1;
    default:
        return p->r <= FUSED_AUTO_MAX_RANK;
    }
}

/* Vanilla prompt tuning, Z: n x d:  E = Z (.) s + b;  dZ += G (.) s,  ds += Z (.) G,
 * db += G.  Elementwise; backward returns 1 if dZ stayed finite. */
static void identity_forward(const ulpt_prompt *p, float *e, size_t ld)
{
    const size_t d = p->d;
    const float *restrict s = p->s, *restrict b = p->b;
    for (size_t i = 0; i < p->n; i++) {
        const float *restrict z = p->z + i * d;
        float *restrict er = e + i * ld;
        if (s && b)
            for (size_t j = 0; j < d; j++)
                er[j] = z[j] * s[j] + b[j];
        else if (s)
            for (size_t j = 0; j < d; j++)
                er[j] = z[j] * s[j];
        else if (b)
            for (size_t j = 0; j < d; j++)
                er[j] = z[j] + b[j];
        else
            memcpy(er, z, d * sizeof(float));
    }
}

ULPT__MUST_CHECK static int identity_backward(ulpt_prompt *p, const float *grad, size_t ld)
{
    const size_t d = p->d;
    const float *restrict s = p->s;
    float *restrict gs = p->gs, *restrict gb = p->gb;
    int finite = 1;
    for (size_t i = 0; i < p->n; i++) {
        const float *restrict g = grad + i * ld, *restrict z = p->z + i * d;
        float *restrict gz = p->gz + i * d;
        if (s) /* one loop each, so that each vectorises */
            for (size_t j = 0; j < d; j++)
                gz[j] += g[j] * s[j];
        else
            for (size_t j = 0; j < d; j++)
                gz[j] += g[j];
        if (gs)
            for (size_t j = 0; j < d; j++)
                gs[j] += z[j] * g[j];
        if (gb)
            for (size_t j = 0; j < d; j++)
                gb[j] += g[j];
        finite &= ulpt__all_finite(gz, d); /* the row is still in L1 */
    }
    return finite;
}

/* The GEMM path, one group: E_g = (Z_g . P_g), then (.) s + b over each block of rows
 * while it is still in cache. */
#define FORWARD_BLOCK_FLOATS 32768u /* 128 KiB of E */

static void gemm_forward(const ulpt_prompt *p, const float *proj, const float *z, size_t rows,
                         float *e, size_t ld)
{
    const size_t r = p->r, d = p->d;
    const size_t block = d >= FORWARD_BLOCK_FLOATS ? 1 : FORWARD_BLOCK_FLOATS / d;
    for (size_t i = 0; i < rows; i += block) {
        const size_t m = rows - i < block ? rows - i : block;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)r, 1.0f,
                    z + i * r, (int)r, proj, (int)d, 0.0f, e + i * ld, (int)ld);
        float *er = e + i * ld;
        for (size_t ii = 0; ii < m; ii++, er += ld) {
            if (p->s && p->b)
                for (size_t j = 0; j < d; j++)
                    er[j] = er[j] * p->s[j] + p->b[j];
            else if (p->s)
                for (size_t j = 0; j < d; j++)
                    er[j] *= p->s[j];
            else if (p->b)
                for (size_t j = 0; j < d; j++)
                    er[j] += p->b[j];
        }
    }
}

/* Arguments and parameters, as both forwards check them (the caller is counted in). */
static int forward_check(const char *func, const ulpt_prompt *p, size_t ld)
{
    if (ld < p->d || ld > INT_MAX)
        return ulpt__error(ULPT_ERR_INVALID, func, "row stride %zu is outside [dim %u, %d]", ld,
                           p->d, INT_MAX);
    size_t bad = ulpt__first_nonfinite(p); /* a few thousand floats: cheap next to E */
    if (bad < p->n_params) {
        char name[48];
        ulpt__param_name(p, bad, name, sizeof name);
        return ulpt__error(ULPT_ERR_NONFINITE, func, "parameter %s is %g", name,
                           (double)p->params[bad]);
    }
    return ULPT_OK;
}

/* 1 if the kernel this forward runs is faster with the prompt's scratch: the fused one at
 * ranks 1 and 2.  A bank's views have none. */
static int wants_scratch(const ulpt_prompt *p)
{
    return p->kind != ULPT_PROJ_IDENTITY && use_fused(p) && p->ws_m &&
           ulpt__fused_forward_work(p->r, p->d);
}

/* E into embeddings; work: the scratch the fused kernel may use, or NULL. */
static void forward_run(const ulpt_prompt *p, float *embeddings, size_t ld, float *work)
{
    if (p->kind == ULPT_PROJ_IDENTITY) {
        identity_forward(p, embeddings, ld);
        return;
    }
    const size_t r = p->r, d = p->d, ng = p->n / p->groups;
    const int fused = use_fused(p);
    for (size_t g = 0; g < p->groups; g++) {
        const float *proj = ulpt_projection_data(p->proj[g]), *z = p->z + g * ng * r;
        float *e = embeddings + g * ng * ld;
        if (fused)
            ulpt__fused_forward(e, ld, z, ng, r, proj, p->s, p->b, d, work);
        else
            gemm_forward(p, proj, z, ng, e, ld);
    }
}

int ulpt__prompt_forward(const char *func, const ulpt_prompt *p, float *embeddings, size_t ld)
{
    if (!p || !embeddings)
        return ulpt__error(ULPT_ERR_INVALID, func, "%s is NULL", !p ? "prompt" : "embeddings");
    /* Count this forward in as a reader: writers wait for no one and refuse while it runs
     * (lock.c).  Several forwards may run on one prompt at once; the first to find
     * backward's scratch free takes it (ULPT__LOCK_SCRATCH) and the others run without,
     * to the same bits. */
    ulpt_lock *l = (ulpt_lock *)&p->lock; /* never a const object */
    int rc = ulpt__lock_read(func, l, "prompt");
    if (rc)
        return rc;
    unsigned took = 0;
    if (!(rc = forward_check(func, p, ld))) {
        float *work = NULL;
        if (wants_scratch(p) &&
            !(atomic_load_explicit(&l->word, memory_order_relaxed) & ULPT__LOCK_SCRATCH) &&
            !(atomic_fetch_or_explicit(&l->word, ULPT__LOCK_SCRATCH, memory_order_acquire) &
              ULPT__LOCK_SCRATCH))
            took = ULPT__LOCK_SCRATCH, work = p->ws_m;
        forward_run(p, embeddings, ld, work);
    }
    /* out, with the scratch bit if this forward set it */
    atomic_fetch_sub_explicit(&l->word, 1 + took, memory_order_release);
    return rc;
}

int ulpt__prompt_forward_held(const char *func, ulpt_prompt *p, float *embeddings, size_t ld)
{
    int rc = forward_check(func, p, ld);
    if (!rc)
        forward_run(p, embeddings, ld, wants_scratch(p) ? p->ws_m : NULL);
    return rc;
}

/* The GEMM path, one group: M = [Z_g | 1]^T . G_g gives dL/ds (rows 0..r-1, with P_g)
 * and dL/db (row r); dL/dZ_g += G_g . (P_g diag s)^T.  G is read twice.  Returns 1 if
 * dZ_g is finite (BLAS propagates a NaN or infinity of G into it, as the fused path). */
ULPT__MUST_CHECK static int gemm_backward(ulpt_prompt *p, const float *proj, size_t g,
                                          const float *gg, size_t ld)
{
    const size_t r = p->r, d = p->d, ng = p->n / p->groups;
    const size_t k = r + (p->b ? 1 : 0); /* columns of [Z_g | 1] */
    for (size_t i = 0; i < ng; i++) {
        memcpy(p->ws_z1 + i * k, p->z + (g * ng + i) * r, r * sizeof(float));
        if (p->b)
            p->ws_z1[i * k + r] = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)d, (int)ng, 1.0f, p->ws_z1,
                (int)k, gg, (int)ld, 0.0f, p->ws_m, (int)d);
    if (p->gs)
        for (size_t kk = 0; kk < r; kk++)
            for (size_t j = 0; j < d; j++)
                p->gs[j] += proj[kk * d + j] * p->ws_m[kk * d + j];
    if (p->gb)
        for (size_t j = 0; j < d; j++)
            p->gb[j] += p->ws_m[r * d + j];
    const float *ps = proj;
    if (p->s) {
        for (size_t kk = 0; kk < r; kk++)
            for (size_t j = 0; j < d; j++)
                p->ws_ps[kk * d + j] = proj[kk * d + j] * p->s[j];
        ps = p->ws_ps;
    }
    float *gz = p->gz + g * ng * r;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ng, (int)r, (int)d, 1.0f, gg,
                (int)ld, ps, (int)d, 1.0f, gz, (int)r);
    return ulpt__all_finite(gz, ng * r);
}

/* The fused path, one group: one pass over G_g (fused.c).  dZ is summed in zeroed
 * scratch and then added, so that two calls add exactly twice what one adds. */
ULPT__MUST_CHECK static int fused_backward(ulpt_prompt *p, const float *proj, size_t g,
                                           const float *gg, size_t ld)
{
    const size_t r = p->r, ng = p->n / p->groups;
    float *dz = p->ws_z1, *gz = p->gz + g * ng * r;
    memset(dz, 0, ng * r * sizeof(float));
    int finite = ulpt__fused_backward(dz, p->gs, p->gb, gg, ld, p->z + g * ng * r, ng, r, proj,
                                      p->s, p->d, p->ws_m);
    for (size_t i = 0; i < ng * r; i++)
        gz[i] += dz[i];
    return finite;
}

int ulpt_prompt_forward(const ulpt_prompt *p, float *embeddings, size_t ld)
{
    return ulpt__prompt_forward(__func__, p, embeddings, ld);
}

int ulpt__prompt_backward(const char *func, ulpt_prompt *p, const float *grad, size_t ld)
{
    if (!p || !grad)
        return ulpt__error(ULPT_ERR_INVALID, func, "%s is NULL", !p ? "prompt" : "grad");
    if (ld < p->d || ld > INT_MAX)
        return ulpt__error(ULPT_ERR_INVALID, func, "row stride %zu is outside [dim %u, %d]", ld,
                           p->d, INT_MAX);
    int finite;
    if (p->kind == ULPT_PROJ_IDENTITY) {
        finite = identity_backward(p, grad, ld);
    } else {
        const size_t ng = p->n / p->groups;
        const int fused = use_fused(p);
        finite = 1;
        for (size_t g = 0; g < p->groups; g++) {
            const float *proj = ulpt_projection_data(p->proj[g]), *gg = grad + g * ng * ld;
            finite &= fused ? fused_backward(p, proj, g, gg, ld)
                            : gemm_backward(p, proj, g, gg, ld);
        }
    }
    return finite ? ULPT_OK : ULPT_ERR_NONFINITE; /* the caller words the message */
}

int ulpt_prompt_backward(ulpt_prompt *p, const float *grad, size_t ld)
{
    if (!p || !grad)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : "grad");
    /* the scratch and the gradients: no forward may be using the one, no step the other */
    int rc = ulpt__lock_hold(__func__, &p->lock, "prompt", 1);
    if (rc)
        return rc;
    rc = ulpt__prompt_backward(__func__, p, grad, ld);
    ulpt__lock_release(&p->lock);
    /* As documented, non-finite gradients are kept here; ulpt_optimizer_step refuses them. */
    return rc == ULPT_ERR_NONFINITE ? ULPT_OK : rc;
}
