/* test.h -- what the test files share: small prompt builders, a double-precision
 * reference of the forward pass, and an allocator that counts and fails on demand. */
#ifndef ULPT_TEST_H
#define ULPT_TEST_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ulpt.h"

/* Tests register themselves: writing one in a tests/test_*.c file is the whole edit.
 *
 *   TEST(name) { ... }               one run
 *   TEST_LOOP(name, lo, hi) { ... }  runs for _i = lo .. hi-1
 *   TEST_TIMEOUT(seconds);           per-test limit for the whole file (Check's default: 4 s)
 *
 * Each file is one suite named after it (tests/test_meta.c: "meta", so CK_RUN_SUITE=meta
 * runs it alone); tests run in the order they are written. */
void test_register(const TTest *t, int lo, int hi);
void test_register_timeout(const char *file, double seconds);

#define TEST_LOOP(name, lo, hi)                                                           \
    static void name##_fn(int _i CK_ATTRIBUTE_UNUSED);                                    \
    static const TTest name##_ttest = {#name, name##_fn, __FILE__, __LINE__};             \
    __attribute__((constructor)) static void name##_register(void)                       \
    {                                                                                     \
        test_register(&name##_ttest, (lo), (hi));                                         \
    }                                                                                     \
    static void name##_fn(int _i CK_ATTRIBUTE_UNUSED)
#define TEST(name) TEST_LOOP(name, 0, 1)
#define TEST_TIMEOUT(seconds)                                                             \
    __attribute__((constructor)) static void test_timeout_register(void)                 \
    {                                                                                     \
        test_register_timeout(__FILE__, (seconds));                                       \
    }                                                                                     \
    struct test_timeout_semicolon

/* A deterministic uniform draw in [-1, 1) for test data (not the library's generator). */
static inline double test_uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005u + 1442695040888963407u;
    return (double)(*state >> 11) * 0x1p-52 - 1.0;
}

/* Loop counts for the slowest exhaustive tests: full normally, a tenth (at least 4) under
 * valgrind, where `make check-valgrind` sets ULPT_TEST_QUICK. */
static inline int test_reps(int full)
{
    int quick = getenv("ULPT_TEST_QUICK") != NULL;
    return quick ? (full / 10 > 4 ? full / 10 : 4) : full;
}

static inline ulpt_prompt *test_prompt(uint32_t n, uint32_t r, uint32_t d, uint32_t groups,
                                       int kind, unsigned flags)
{
    ulpt_prompt_options o = ULPT_PROMPT_OPTIONS_INIT;
    o.n_tokens = n;
    o.rank = r;
    o.dim = d;
    o.n_groups = groups;
    o.projection_kind = kind;
    o.projection_seed = 1234;
    o.init_seed = 99;
    o.flags = flags;
    ulpt_prompt *p = NULL;
    ck_assert_int_eq(ulpt_prompt_create(&p, &o), ULPT_OK);
    return p;
}

/* Randomise every parameter, so that s != 1 and b != 0 take part in the checks. */
static inline void test_perturb(ulpt_prompt *p, uint64_t seed)
{
    float *x = ulpt_prompt_params(p);
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        x[i] += (float)(0.5 * test_uniform(&seed));
}

/* E in double from the prompt's float parameters: the reference for forward. */
static inline void test_forward_ref(ulpt_prompt *p, const double *params, double *e)
{
    uint32_t n = ulpt_prompt_n_tokens(p), r = ulpt_prompt_rank(p), d = ulpt_prompt_dim(p);
    uint32_t g = ulpt_prompt_n_groups(p), ng = n / g;
    unsigned flags = ulpt_prompt_flags(p);
    const double *z = params, *s = NULL, *b = NULL, *next = params + (size_t)n * r;
    if (!(flags & ULPT_NO_SCALE))
        s = next, next += d;
    if (!(flags & ULPT_NO_SHIFT))
        b = next;
    for (uint32_t i = 0; i < n; i++) {
        const ulpt_projection *pr = ulpt_prompt_projection(p, i / ng);
        const float *P = ulpt_projection_data(pr);
        for (uint32_t j = 0; j < d; j++) {
            double acc = 0;
            if (!P)
                acc = z[(size_t)i * r + j];
            else
                for (uint32_t k = 0; k < r; k++)
                    acc += z[(size_t)i * r + k] * P[(size_t)k * d + j];
            if (s)
                acc *= s[j];
            if (b)
                acc += b[j];
            e[(size_t)i * d + j] = acc;
        }
    }
}

/* ---- the counting allocator ------------------------------------------------------ */

typedef struct {
    long live;    /* blocks handed out and not yet freed */
    long calls;   /* alloc/realloc calls so far */
    long fail_at; /* the call index that returns NULL; -1 = never */
} test_alloc_state;

extern test_alloc_state test_alloc;

/* This run's scratch directory, removed when the run ends. */
const char *test_dir(void);
void test_alloc_install(long fail_at);
void test_alloc_remove(void);

#endif
