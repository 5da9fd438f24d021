/* prompt.c -- the trainable low-dimensional prompt: Z (n x r), scale s (d), shift b (d).
 *
 * Forward and backward sit side by side; with G = dL/dE and P_g the projection of the
 * token group g (rows Z_g, G_g):
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
#include <stdio.h>
#include <string.h>


/* Errors found while checking options name the public call that got them. */
#define BAD_OPTION(...) ulpt__error(ULPT_ERR_INVALID, func, __VA_ARGS__)

/* The bytes of ulpt_prompt_options each version has: a caller built against an older
 * header passes a shorter struct, whose missing fields keep their defaults. */
static const size_t options_size[ULPT_PROMPT_OPTIONS_VERSION + 1] = {
    0, sizeof(ulpt_prompt_options),
};
static const ulpt_prompt_options defaults = ULPT_PROMPT_OPTIONS_INIT;
static const ulpt_versioned options_v = {
    "options", ULPT_PROMPT_OPTIONS_VERSION, options_size, &defaults,
};

int ulpt_prompt_options_init(ulpt_prompt_options *opts, unsigned version)
{
    if (!opts)
        return ULPT_FAIL(ULPT_ERR_INVALID, "opts is NULL");
    return ulpt__versioned_write(__func__, &options_v, opts, version, &defaults);
}

ULPT__MUST_CHECK static int check_options(const char *func, const ulpt_prompt_options *o)
{
    if (o->projection_kind < ULPT_PROJ_XAVIER_UNIFORM || o->projection_kind > ULPT_PROJ_IDENTITY)
        return BAD_OPTION("unknown projection kind %d", o->projection_kind);
    if (o->flags & ~(ULPT_NO_SCALE | ULPT_NO_SHIFT))
        return BAD_OPTION("unknown flags 0x%x", o->flags);
    if (o->n_tokens == 0 || o->dim == 0 || o->rank == 0)
        return BAD_OPTION("n_tokens %u, rank %u and dim %u must all be at least 1", o->n_tokens,
                          o->rank, o->dim);
    if (o->n_tokens > INT_MAX || o->dim > INT_MAX)
        return BAD_OPTION("n_tokens %u or dim %u is past the BLAS limit %d", o->n_tokens, o->dim,
                          INT_MAX);
    if (o->rank > o->dim)
        return BAD_OPTION("rank %u is greater than dim %u", o->rank, o->dim);
    if (o->projection_kind == ULPT_PROJ_IDENTITY && o->rank != o->dim)
        return BAD_OPTION("identity projection needs rank == dim, got %u and %u", o->rank, o->dim);
    if (o->n_groups == 0 || o->n_tokens % o->n_groups != 0)
        return BAD_OPTION("n_tokens %u is not a multiple of n_groups %u", o->n_tokens, o->n_groups);
    if (!isfinite(o->init_std) || o->init_std < 0)
        return BAD_OPTION("init_std %g is not a finite number >= 0", (double)o->init_std);
    return ULPT_OK;
}

/* Float counts of the one block holding params, grads and backward scratch. */
ULPT__MUST_CHECK static int layout(const ulpt_prompt_options *o, size_t *n_params,
                                   size_t *n_scratch)
{
    size_t nz, nd, z1 = 0, m = 0, ps = 0;
    size_t vecs = (size_t) !(o->flags & ULPT_NO_SCALE) + (size_t) !(o->flags & ULPT_NO_SHIFT);
    if (!ulpt__mul(o->n_tokens, o->rank, &nz) || !ulpt__mul(o->n_tokens, o->dim, &nd) ||
        !ulpt__mul(vecs, o->dim, &m) || nz > SIZE_MAX - m)
        return 0;
    *n_params = nz + m;
    if (o->projection_kind != ULPT_PROJ_IDENTITY) {
        size_t ng = o->n_tokens / o->n_groups;
        if (!ulpt__mul(ng, (size_t)o->rank + 1, &z1) ||
            !ulpt__mul((size_t)o->rank + 1, o->dim, &m) || !ulpt__mul(o->rank, o->dim, &ps))
            return 0;
    }
    *n_scratch = z1 + m + ps;
    size_t total, bytes;
    if (*n_params > SIZE_MAX / 2 || 2 * *n_params > SIZE_MAX - *n_scratch)
        return 0;
    total = 2 * *n_params + *n_scratch;
    return ulpt__mul(total, sizeof(float), &bytes) && ulpt__mul(nd, sizeof(float), &bytes);
}

/* The projections of a prompt: shared ones must be exactly those the options imply. */
ULPT__MUST_CHECK static int check_shared(const char *func, const ulpt_prompt_options *o,
                                         ulpt_projection *const *shared)
{
    for (uint32_t g = 0; g < o->n_groups; g++) {
        const ulpt_projection *pr = shared[g];
        if (!pr)
            return ulpt__error(ULPT_ERR_INVALID, func, "projection of group %u is NULL", g);
        uint64_t seed = ulpt__group_seed(o->projection_seed, g);
        if (ulpt_projection_rank(pr) != o->rank || ulpt_projection_dim(pr) != o->dim ||
            ulpt_projection_kind(pr) != o->projection_kind || ulpt_projection_seed(pr) != seed)
            return ulpt__error(ULPT_ERR_MISMATCH, func,
                               "projection of group %u is (seed %llu, rank %u, dim %u, kind %d); "
                               "the options need (seed %llu, rank %u, dim %u, kind %d)",
                               g, (unsigned long long)ulpt_projection_seed(pr),
                               ulpt_projection_rank(pr), ulpt_projection_dim(pr),
                               ulpt_projection_kind(pr), (unsigned long long)seed, o->rank, o->dim,
                               o->projection_kind);
    }
    return ULPT_OK;
}

ULPT__MUST_CHECK static int create(const char *func, ulpt_prompt **out,
                                   const ulpt_prompt_options *in,
                                   ulpt_projection *const *shared)
{
    if (!out || !in)
        return ulpt__error(ULPT_ERR_INVALID, func, "%s is NULL", !out ? "out" : "opts");
    ulpt_prompt_options o, *opts = &o;
    int rc = ulpt__versioned_read(func, &options_v, in, &o);
    if (!rc)
        rc = check_options(func, opts);
    if (!rc && shared)
        rc = check_shared(func, opts, shared);
    if (rc)
        return rc;
    size_t n_params, n_scratch;
    if (!layout(opts, &n_params, &n_scratch))
        return BAD_OPTION("%u tokens x dim %u x rank %u is past addressable memory",
                          opts->n_tokens, opts->dim, opts->rank);

    ulpt_allocator al = ulpt__allocator();
    ulpt_prompt *p = ulpt__calloc(&al, 1, sizeof *p);
    if (!p)
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for a prompt");
    p->al = al;
    p->n = opts->n_tokens;
    p->r = opts->rank;
    p->d = opts->dim;
    p->groups = opts->n_groups;
    p->flags = opts->flags;
    p->kind = opts->projection_kind;
    p->seed = opts->projection_seed;
    p->n_params = n_params;
    p->proj = ulpt__calloc(&al, p->groups, sizeof *p->proj);
    p->params = ulpt__calloc(&al, 2 * n_params + n_scratch, sizeof(float));
    if (!p->proj || !p->params) {
        ulpt_prompt_free(p);
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for a prompt of %zu parameters",
                           n_params);
    }
    for (uint32_t g = 0; g < p->groups; g++) {
        if (shared) {
            p->proj[g] = ulpt__projection_ref(shared[g]);
        } else if (ulpt_projection_create(&p->proj[g], ulpt__group_seed(opts->projection_seed, g),
                                          p->r, p->d, p->kind)) {
            ulpt_prompt_free(p);
            return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for projection group %u", g);
        }
    }

    size_t nz = (size_t)p->n * p->r;
    p->grads = p->params + n_params;
    p->z = p->params;
    p->gz = p->grads;
    float *next = p->params + nz, *gnext = p->grads + nz;
    if (!(p->flags & ULPT_NO_SCALE)) {
        p->s = next, p->gs = gnext;
        next += p->d, gnext += p->d;
        for (uint32_t j = 0; j < p->d; j++)
            p->s[j] = 1.0f;
    }
    if (!(p->flags & ULPT_NO_SHIFT))
        p->b = next, p->gb = gnext; /* b = 0 from calloc */
    if (p->kind != ULPT_PROJ_IDENTITY) {
        p->ws_z1 = p->grads + n_params;
        p->ws_m = p->ws_z1 + (size_t)(p->n / p->groups) * (p->r + 1);
        p->ws_ps = p->ws_m + (size_t)(p->r + 1) * p->d;
    }
    ulpt__normal_fill(p->z, nz, opts->init_seed, p->r, 0, opts->init_std);
    *out = p;
    return ULPT_OK;
}

int ulpt_prompt_create(ulpt_prompt **out, const ulpt_prompt_options *opts)
{
    return create(__func__, out, opts, NULL);
}

int ulpt_prompt_create_shared(ulpt_prompt **out, const ulpt_prompt_options *opts,
                              ulpt_projection *const *projections)
{
    if (!projections)
        return ULPT_FAIL(ULPT_ERR_INVALID, "projections is NULL");
    return create(__func__, out, opts, projections);
}

void ulpt_prompt_free(ulpt_prompt *p)
{
    if (!p)
        return;
    ulpt_allocator al = p->al;
    if (p->proj)
        for (uint32_t g = 0; g < p->groups; g++)
            ulpt_projection_free(p->proj[g]);
    ulpt__free(&al, p->proj);
    ulpt__free(&al, p->params);
    ulpt__free(&al, p->work.block);
    ulpt__meta_clear(&al, &p->meta);
    ulpt__free(&al, p);
}

void ulpt__prompt_view(ulpt_prompt *v, uint32_t n, uint32_t r, uint32_t d, uint32_t groups,
                       int kind, ulpt_projection *const *proj, const float *z, const float *s,
                       const float *b)
{
    /* forward only reads through these; the casts never lead to a write */
    *v = (ulpt_prompt){
        .n = n, .r = r, .d = d, .groups = groups, .kind = kind,
        .flags = (s ? 0 : ULPT_NO_SCALE) | (b ? 0 : ULPT_NO_SHIFT),
        .proj = (ulpt_projection **)proj, .n_params = (size_t)n * r,
        .params = (float *)z, .z = (float *)z, .s = (float *)s, .b = (float *)b,
    };
}

size_t ulpt__first_nonfinite(const ulpt_prompt *p)
{
    if (ulpt__all_finite(p->params, p->n_params)) /* the common case, at memory speed */
        return p->n_params;
    for (size_t i = 0; i < p->n_params; i++)
        if (!isfinite(p->params[i]))
            return i;
    return p->n_params;
}

void ulpt__param_name(const ulpt_prompt *p, size_t i, char *buf, size_t size)
{
    size_t nz = (size_t)p->n * p->r;
    if (i < nz)
        snprintf(buf, size, "Z[%zu][%zu]", i / p->r, i % p->r);
    else if (p->s && i < nz + p->d)
        snprintf(buf, size, "scale[%zu]", i - nz);
    else
        snprintf(buf, size, "shift[%zu]", i - nz - (p->s ? p->d : 0));
}

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
 * db += G.  Elementwise, one pass each way; backward returns 1 if dZ stayed finite. */
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

int ulpt__prompt_forward(const char *func, const ulpt_prompt *p, float *embeddings, size_t ld)
{
    if (!p || !embeddings)
        return ulpt__error(ULPT_ERR_INVALID, func, "%s is NULL", !p ? "prompt" : "embeddings");
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
    if (p->kind == ULPT_PROJ_IDENTITY) {
        identity_forward(p, embeddings, ld);
        return ULPT_OK;
    }
    const size_t r = p->r, d = p->d, ng = p->n / p->groups;
    const int fused = use_fused(p);
    for (size_t g = 0; g < p->groups; g++) {
        const float *proj = ulpt_projection_data(p->proj[g]), *z = p->z + g * ng * r;
        float *e = embeddings + g * ng * ld;
        if (fused)
            ulpt__fused_forward(e, ld, z, ng, r, proj, p->s, p->b, d);
        else
            gemm_forward(p, proj, z, ng, e, ld);
    }
    return ULPT_OK;
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
                                      p->s, p->d);
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
    int rc = ulpt__prompt_backward(__func__, p, grad, ld);
    /* As documented, non-finite gradients are kept here; ulpt_optimizer_step refuses them. */
    return rc == ULPT_ERR_NONFINITE ? ULPT_OK : rc;
}

/* ---- the working buffers of a training loop (internal.h) -------------------------- */

int ulpt__prompt_reserve(const char *func, ulpt_prompt *p, uint32_t n_e, uint32_t n_g)
{
    ulpt_work *w = &p->work;
    if (n_e < w->n_e)
        n_e = w->n_e;
    if (n_g < w->n_g)
        n_g = w->n_g;
    if (w->block && n_e == w->n_e && n_g == w->n_g)
        return ULPT_OK;
    /* the prompt checked n_tokens * dim * sizeof(float) fits; 64 bytes for alignment */
    const size_t nd = (size_t)p->n * p->d, slots = (size_t)n_e + n_g;
    size_t floats, bytes;
    if (!ulpt__mul(nd, slots, &floats) || floats > SIZE_MAX / sizeof(float) - p->n_params - 16 ||
        !ulpt__mul(floats + p->n_params, sizeof(float), &bytes))
        return ulpt__error(ULPT_ERR_INVALID, func, "%zu buffers of %u x %u floats are past "
                           "addressable memory", slots, p->n, p->d);
    void *block = ulpt__alloc(&p->al, bytes + 64);
    if (!block)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for %zu training buffers of %u x %u "
                           "floats", slots, p->n, p->d);
    float *base = (float *)(void *)((char *)block + (64 - (uintptr_t)block % 64) % 64);
    ulpt__free(&p->al, w->block);
    *w = (ulpt_work){.block = block, .e = base, .g = base + n_e * nd,
                     .saved_grads = base + slots * nd, .n_e = n_e, .n_g = n_g};
    return ULPT_OK;
}

void ulpt_prompt_zero_grad(ulpt_prompt *p)
{
    if (p)
        memset(p->grads, 0, p->n_params * sizeof(float));
}

size_t ulpt_prompt_num_params(const ulpt_prompt *p) { return p ? p->n_params : 0; }
float *ulpt_prompt_params(ulpt_prompt *p) { return p ? p->params : NULL; }
float *ulpt_prompt_grads(ulpt_prompt *p) { return p ? p->grads : NULL; }
uint32_t ulpt_prompt_n_tokens(const ulpt_prompt *p) { return p ? p->n : 0; }
uint32_t ulpt_prompt_rank(const ulpt_prompt *p) { return p ? p->r : 0; }
uint32_t ulpt_prompt_dim(const ulpt_prompt *p) { return p ? p->d : 0; }
uint32_t ulpt_prompt_n_groups(const ulpt_prompt *p) { return p ? p->groups : 0; }
unsigned ulpt_prompt_flags(const ulpt_prompt *p) { return p ? p->flags : 0; }

const ulpt_projection *ulpt_prompt_projection(const ulpt_prompt *p, uint32_t group)
{
    return p && group < p->groups ? p->proj[group] : NULL;
}
