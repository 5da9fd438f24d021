/* internal.h -- what the files of lib/ share; never installed. */
#ifndef ULPT_INTERNAL_H
#define ULPT_INTERNAL_H

#include "ulpt.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- errors (error.c) ----------------------------------------------------------- */

/* Record "func: message" as this thread's last error and return code. */
int ulpt__error(int code, const char *func, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
#define ULPT_FAIL(code, ...) ulpt__error((code), __func__, __VA_ARGS__)

/* ---- allocation (alloc.c) ------------------------------------------------------- */

/* The allocator new objects are created with (a copy of the current setting). */
ulpt_allocator ulpt__allocator(void);
void *ulpt__alloc(const ulpt_allocator *a, size_t size);
void *ulpt__calloc(const ulpt_allocator *a, size_t count, size_t size);
void ulpt__free(const ulpt_allocator *a, void *ptr);

/* a*b without overflow into *out; 0 if it would overflow size_t. */
int ulpt__mul(size_t a, size_t b, size_t *out);

/* ---- the counter-based generator (philox.c) ------------------------------------- */

/* Philox4x32-10: out = Philox(counter, key). */
void ulpt__philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* Fill out[0..count) with N(0,1) draws, stream (seed, c2, c3) of docs/PROJECTION.md,
 * scaled by `scale` (in double, then rounded to float). */
void ulpt__normal_fill(float *out, size_t count, uint64_t seed, uint32_t c2, uint32_t c3,
                       double scale);

/* ---- projection internals (projection.c) ---------------------------------------- */

/* Take one more reference (prompts keep their projections alive). */
ulpt_projection *ulpt__projection_ref(ulpt_projection *p);

/* Seed of projection group g of a prompt seeded with `seed`. */
uint64_t ulpt__group_seed(uint64_t seed, uint32_t group);

/* ---- optimizer internals (optimizer.c) ------------------------------------------ */

/* ulpt_train_step's preallocated E and G (n_tokens x dim) and gradient backup. */
void ulpt__optimizer_buffers(ulpt_optimizer *o, float **e, float **g, float **saved_grads);

#endif /* ULPT_INTERNAL_H */
