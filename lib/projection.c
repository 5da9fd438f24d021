/* projection.c -- the frozen random matrix P (rank x dim), regenerated from a seed.
 *
 * Element i = k*dim + j of P takes lane i%4 of the Philox block with counter
 * (i/4 low word, i/4 high word, rank, dim) and key (seed low word, seed high word).
 * docs/PROJECTION.md has the rest and known-answer vectors. */
#include "internal.h"

#include <limits.h>
#include <math.h>
#include <stdatomic.h>

struct ulpt_projection {
    ulpt_allocator al;
    atomic_int refs; /* the creator and every prompt using it; atomic so that prompts
                        sharing it may live in different threads */
    uint64_t seed;
    uint32_t rank, dim;
    int kind;
    float *data; /* rank x dim, NULL for the identity */
};

uint64_t ulpt__group_seed(uint64_t seed, uint32_t group)
{
    return seed + (uint64_t)group * 0x9E3779B97F4A7C15u;
}

/* Uniform kinds: (2u - 1) is exact in float and the product is one rounding, so these
 * are bit-identical on every IEEE platform.  The words come a few thousand at a time. */
static void fill_words(float *out, size_t count, uint64_t seed, uint32_t rank, uint32_t dim,
                       int kind, float a)
{
    enum { BLOCKS = 256 }; /* 4 KiB of words */
    uint32_t x[4 * BLOCKS];
    for (size_t i0 = 0; i0 < count; i0 += 4 * BLOCKS) {
        const size_t m = count - i0 < 4 * BLOCKS ? count - i0 : 4 * BLOCKS;
        ulpt__philox4x32_blocks(x, i0 / 4, (m + 3) / 4, rank, dim, seed);
        float *restrict o = out + i0;
        if (kind == ULPT_PROJ_RADEMACHER)
            for (size_t i = 0; i < m; i++)
                o[i] = (x[i] >> 31) ? -a : a;
        else
            for (size_t i = 0; i < m; i++)
                o[i] = (2.0f * ((float)(x[i] >> 8) * 0x1p-24f) - 1.0f) * a;
    }
}

double ulpt__projection_bytes(uint32_t rank, uint32_t dim, int kind)
{
    _Static_assert(sizeof(ulpt_projection) <= ULPT__HANDLE_BYTES, "a handle's bytes (internal.h)");
    return ULPT__HANDLE_BYTES + (kind == ULPT_PROJ_IDENTITY ? 0 : 4.0 * rank * dim);
}

int ulpt_projection_create(ulpt_projection **out, uint64_t seed, uint32_t rank, uint32_t dim,
                           int kind)
{
    if (!out)
        return ULPT_FAIL(ULPT_ERR_INVALID, "out is NULL");
    if (kind < ULPT_PROJ_XAVIER_UNIFORM || kind > ULPT_PROJ_IDENTITY)
        return ULPT_FAIL(ULPT_ERR_INVALID, "unknown projection kind %d", kind);
    if (rank == 0 || dim == 0)
        return ULPT_FAIL(ULPT_ERR_INVALID, "rank %u and dim %u must both be at least 1", rank, dim);
    if (dim > INT_MAX)
        return ULPT_FAIL(ULPT_ERR_INVALID, "dim %u is past the BLAS limit %d", dim, INT_MAX);
    if (rank > dim)
        return ULPT_FAIL(ULPT_ERR_INVALID, "rank %u is greater than dim %u", rank, dim);
    if (kind == ULPT_PROJ_IDENTITY && rank != dim)
        return ULPT_FAIL(ULPT_ERR_INVALID, "identity projection needs rank == dim, got %u and %u",
                         rank, dim);
    size_t count = 0, bytes = 0;
    if (kind != ULPT_PROJ_IDENTITY &&
        (!ulpt__mul(rank, dim, &count) || !ulpt__mul(count, sizeof(float), &bytes)))
        return ULPT_FAIL(ULPT_ERR_INVALID, "rank %u x dim %u is past addressable memory", rank,
                         dim);

    ulpt_allocator al = ulpt__allocator();
    ulpt_projection *p = ulpt__alloc(&al, sizeof *p);
    if (!p)
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for a projection");
    *p = (ulpt_projection){.al = al, .seed = seed, .rank = rank, .dim = dim, .kind = kind};
    atomic_init(&p->refs, 1);
    if (kind != ULPT_PROJ_IDENTITY) {
        p->data = ulpt__alloc(&al, bytes);
        if (!p->data) {
            ulpt__free(&al, p);
            return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for a %u x %u projection", rank, dim);
        }
    }
    switch (kind) {
    case ULPT_PROJ_XAVIER_UNIFORM:
        fill_words(p->data, count, seed, rank, dim, kind,
                   (float)sqrt(6.0 / ((double)rank + (double)dim)));
        break;
    case ULPT_PROJ_KAIMING_UNIFORM:
    case ULPT_PROJ_RADEMACHER:
        fill_words(p->data, count, seed, rank, dim, kind, (float)(1.0 / sqrt((double)rank)));
        break;
    case ULPT_PROJ_GAUSSIAN:
        ulpt__normal_fill(p->data, count, seed, rank, dim, 1.0 / sqrt((double)rank));
        break;
    default: /* identity: nothing to store */
        break;
    }
    *out = p;
    return ULPT_OK;
}

ulpt_projection *ulpt__projection_ref(ulpt_projection *p)
{
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void ulpt_projection_free(ulpt_projection *p)
{
    if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) > 1)
        return;
    ulpt_allocator al = p->al;
    ulpt__free(&al, p->data);
    ulpt__free(&al, p);
}

const float *ulpt_projection_data(const ulpt_projection *p) { return p ? p->data : NULL; }
uint64_t ulpt_projection_seed(const ulpt_projection *p) { return p ? p->seed : 0; }
uint32_t ulpt_projection_rank(const ulpt_projection *p) { return p ? p->rank : 0; }
uint32_t ulpt_projection_dim(const ulpt_projection *p) { return p ? p->dim : 0; }
int ulpt_projection_kind(const ulpt_projection *p) { return p ? p->kind : 0; }
