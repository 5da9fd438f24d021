/* embed.c -- how libulpt fits into a host (the header's "Embedding" section): the
 * allocation hook every object and buffer goes through, ulpt_free for the buffers handed
 * to the caller, and the BLAS thread count. */
#include "internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

static void *std_alloc(void *user, size_t size)
{
    (void)user;
    return malloc(size);
}
static void *std_realloc(void *user, void *ptr, size_t size)
{
    (void)user;
    return realloc(ptr, size);
}
static void std_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

static const ulpt_allocator std_allocator = {std_alloc, std_realloc, std_free, NULL};
static ulpt_allocator current = {std_alloc, std_realloc, std_free, NULL};

int ulpt_set_allocator(const ulpt_allocator *a)
{
    if (!a) {
        current = std_allocator;
        return ULPT_OK;
    }
    if (!a->alloc || !a->free)
        return ULPT_FAIL(ULPT_ERR_INVALID, "allocator needs alloc and free functions");
    current = *a;
    return ULPT_OK;
}

ulpt_allocator ulpt__allocator(void) { return current; }

void *ulpt__alloc(const ulpt_allocator *a, size_t size)
{
    return a->alloc(a->user, size ? size : 1);
}

void *ulpt__calloc(const ulpt_allocator *a, size_t count, size_t size)
{
    size_t bytes;
    if (!ulpt__mul(count, size, &bytes))
        return NULL;
    void *p = ulpt__alloc(a, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void ulpt__free(const ulpt_allocator *a, void *ptr)
{
    if (ptr)
        a->free(a->user, ptr);
}

int ulpt__mul(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

/* A buffer handed to the caller starts ULPT_BUFFER_PREFIX bytes into its allocation;
 * the allocator that made it sits in front, so ulpt_free needs nothing else. */
void *ulpt__buffer_hand_out(const ulpt_allocator *a, unsigned char *base)
{
    memcpy(base, a, sizeof *a);
    return base + ULPT_BUFFER_PREFIX;
}

void ulpt_free(void *ptr)
{
    if (!ptr)
        return;
    unsigned char *base = (unsigned char *)ptr - ULPT_BUFFER_PREFIX;
    ulpt_allocator a;
    memcpy(&a, base, sizeof a);
    ulpt__free(&a, base);
}

int ulpt_set_num_threads(int n)
{
    if (n < 1)
        return ULPT_FAIL(ULPT_ERR_INVALID, "thread count %d is below 1", n);
    openblas_set_num_threads(n);
    return ULPT_OK;
}
