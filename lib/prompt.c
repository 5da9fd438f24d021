/* prompt.c -- the trainable low-dimensional prompt: Z (n x r), scale s (d), shift b (d),
 * in one flat buffer [Z | s | b] with its gradients; options, creation, the working
 * buffers of a training loop, accessors.  forward.c computes E and back-propagates. */
#include "internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>


/* The bytes of ulpt_prompt_options each version has: a caller built against an older
 * header passes a shorter struct, whose missing fields keep their defaults. */
ULPT__VERSIONED(prompt_options_v, ulpt_prompt_options, ULPT_PROMPT_OPTIONS_VERSION, "options",
                ULPT_PROMPT_OPTIONS_INIT);

int ulpt_prompt_options_init(ulpt_prompt_options *opts, unsigned version)
{
    if (!opts)
        return ULPT_FAIL(ULPT_ERR_INVALID, "opts is NULL");
    return ulpt__versioned_write(__func__, &prompt_options_v, opts, version,
                                 &prompt_options_v_defaults);
}

ULPT__MUST_CHECK static int check_prompt_options(const char *func, const ulpt_prompt_options *o)
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

/* The parameter count [Z | s | b] of these options. */
static double param_floats(const ulpt_prompt_options *o)
{
    return (double)o->n_tokens * o->rank + (double)o->dim * !(o->flags & ULPT_NO_SCALE) +
           (double)o->dim * !(o->flags & ULPT_NO_SHIFT);
}

/* Floats of backward scratch (struct ulpt_prompt): [Z_g | 1], M, P_g diag(s), none for
 * the identity.  The fused backward's work area starts at ws_m and may run past ws_ps. */
static double scratch_floats(const ulpt_prompt_options *o)
{
    if (o->projection_kind == ULPT_PROJ_IDENTITY)
        return 0;
    const double r = o->rank, d = o->dim, m = (r + 1) * d;
    const uint32_t ng = o->n_groups ? o->n_tokens / o->n_groups : o->n_tokens;
    double ps = r * d;
    if (o->rank <= ULPT__FUSED_MAX_RANK) {
        const double fw = (double)ulpt__fused_backward_work(o->rank, o->dim);
        if (fw > m + ps)
            ps = fw - m;
    }
    return ng * (r + 1) + m + ps;
}

double ulpt__prompt_bytes(const ulpt_prompt_options *o)
{
    _Static_assert(sizeof(ulpt_prompt) <= ULPT__HANDLE_BYTES, "a handle's bytes (internal.h)");
    _Static_assert(sizeof(ulpt_projection *) <= 8, "docs/FORMAT.md counts 8 bytes a pointer");
    const double g = o->n_groups ? o->n_groups : 1;
    return ULPT__HANDLE_BYTES + 8 * g + 4 * (2 * param_floats(o) + scratch_floats(o)) +
           g * ulpt__projection_bytes(o->rank, o->dim, o->projection_kind);
}

/* Float counts of the one block holding params, grads and backward scratch, and room
 * for n_tokens x dim floats of E.  Whole numbers below 2^53 are exact in a double, and
 * no buffer past that is addressable. */
ULPT__MUST_CHECK static int layout(const ulpt_prompt_options *o, size_t *n_params,
                                   size_t *n_scratch)
{
    const double limit = (double)SIZE_MAX < 0x1p53 ? (double)SIZE_MAX : 0x1p53;
    const double np = param_floats(o), ns = scratch_floats(o);
    if (4 * (2 * np + ns) > limit || 4 * ((double)o->n_tokens * o->dim) > limit)
        return 0;
    *n_params = (size_t)np;
    *n_scratch = (size_t)ns;
    return 1;
}

/* The projections of a prompt: shared ones must be exactly those the options imply. */
ULPT__MUST_CHECK static int check_shared(const char *func, const ulpt_prompt_options *o,
                                         ulpt_projection *const *given)
{
    for (uint32_t g = 0; g < o->n_groups; g++) {
        const ulpt_projection *pr = given[g];
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
                                   ulpt_projection *const *given)
{
    if (!out || !in)
        return ulpt__error(ULPT_ERR_INVALID, func, "%s is NULL", !out ? "out" : "opts");
    ulpt_prompt_options o, *opts = &o;
    int rc = ulpt__versioned_read(func, &prompt_options_v, in, &o);
    if (!rc)
        rc = check_prompt_options(func, opts);
    if (!rc && given)
        rc = check_shared(func, opts, given);
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
    ulpt__lock_init(&p->lock);
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
        if (given) {
            p->proj[g] = ulpt__projection_ref(given[g]);
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
    ulpt__lock_init(&v->lock);
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

/* ---- the working buffers of a training loop (internal.h) -------------------------- */

double ulpt__work_bytes(double n_params, double nd, double n_e, double n_g)
{
    return 4 * ((n_e + n_g) * nd + n_params) + 64;
}

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
    /* void, so a busy prompt is left as it is, with the message set */
    if (!p || ulpt__lock_hold(__func__, &p->lock, "prompt", 1) != ULPT_OK)
        return;
    memset(p->grads, 0, p->n_params * sizeof(float));
    ulpt__lock_release(&p->lock);
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
