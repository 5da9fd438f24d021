/* test_fit.c -- initialising a prompt from target rows: ulpt_prompt_init_from_embeddings. */
#include "test.h"

#include <stdio.h>

TEST_TIMEOUT(60);

static ulpt_prompt *make(uint32_t n, uint32_t r, uint32_t d, uint32_t g, int kind, unsigned flags,
                         uint64_t init_seed)
{
    ulpt_prompt_options o = ULPT_PROMPT_OPTIONS_INIT;
    o.n_tokens = n, o.rank = r, o.dim = d, o.n_groups = g, o.projection_kind = kind;
    o.flags = flags, o.projection_seed = 31, o.init_seed = init_seed;
    ulpt_prompt *p;
    ck_assert_int_eq(ulpt_prompt_create(&p, &o), ULPT_OK);
    return p;
}

static float *random_rows(size_t count, uint64_t seed)
{
    float *t = malloc(count * sizeof *t);
    for (size_t k = 0; k < count; k++)
        t[k] = (float)test_uniform(&seed);
    return t;
}

static void all_finite(ulpt_prompt *p)
{
    for (size_t k = 0; k < ulpt_prompt_num_params(p); k++)
        ck_assert_msg(isfinite(ulpt_prompt_params(p)[k]), "parameter %zu is %g", k,
                      (double)ulpt_prompt_params(p)[k]);
}

static double fit(ulpt_prompt *p, const float *t, size_t ld, uint32_t iters, double tol)
{
    ulpt_fit_options o = ULPT_FIT_OPTIONS_INIT;
    o.max_iters = iters, o.tol = tol;
    double res = -1;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, ld, &o, &res), ULPT_OK);
    ck_assert_double_ge(res, 0);
    all_finite(p);
    return res;
}

/* T made by a prompt of the same structure (s != 1, b != 0) is recovered: residual ~0
 * and the fitted prompt's E reproduces T. */
TEST(a_target_in_the_prompts_structure_is_recovered)
{
    struct { uint32_t n, r, d, g; int kind; unsigned flags; } cases[] = {
        { 8, 2, 64, 1, ULPT_PROJ_XAVIER_UNIFORM, 0 },
        { 12, 2, 48, 3, ULPT_PROJ_GAUSSIAN, 0 },
        { 6, 3, 40, 2, ULPT_PROJ_RADEMACHER, ULPT_NO_SCALE },
        { 6, 1, 32, 1, ULPT_PROJ_KAIMING_UNIFORM, ULPT_NO_SHIFT },
        { 4, 2, 32, 2, ULPT_PROJ_XAVIER_UNIFORM, ULPT_NO_SCALE | ULPT_NO_SHIFT },
        { 5, 24, 24, 1, ULPT_PROJ_IDENTITY, 0 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ulpt_prompt *src = make(cases[c].n, cases[c].r, cases[c].d, cases[c].g, cases[c].kind,
                                cases[c].flags, 5);
        test_perturb(src, 40 + c);
        size_t ld = cases[c].d + 3, nd = (size_t)cases[c].n * ld;
        float *t = calloc(nd, sizeof *t), *e = calloc(nd, sizeof *e);
        ck_assert_int_eq(ulpt_prompt_forward(src, t, ld), ULPT_OK);
        ulpt_prompt *p = make(cases[c].n, cases[c].r, cases[c].d, cases[c].g, cases[c].kind,
                              cases[c].flags, 6);
        double res = fit(p, t, ld, 2000, 1e-20);
        ck_assert_msg(res < 2e-6, "case %zu: residual %g", c, res);
        ck_assert_int_eq(ulpt_prompt_forward(p, e, ld), ULPT_OK);
        for (size_t i = 0; i < cases[c].n; i++)
            for (size_t j = 0; j < cases[c].d; j++)
                ck_assert_msg(fabs(e[i * ld + j] - t[i * ld + j]) < 1e-4 * (1 + fabs(t[i * ld + j])),
                              "case %zu E[%zu][%zu] %g vs T %g", c, i, j, (double)e[i * ld + j],
                              (double)t[i * ld + j]);
        free(t);
        free(e);
        ulpt_prompt_free(src);
        ulpt_prompt_free(p);
    }
}

/* ---- a double-precision reference for the linear cases (ULPT_NO_SCALE) ---------------- */

/* Solve the dense system a x = y (u x u, partial pivoting), in place into y. */
static void gauss_solve(double *a, double *y, size_t u)
{
    for (size_t c = 0; c < u; c++) {
        size_t piv = c;
        for (size_t r = c + 1; r < u; r++)
            if (fabs(a[r * u + c]) > fabs(a[piv * u + c]))
                piv = r;
        ck_assert_double_gt(fabs(a[piv * u + c]), 1e-14);
        for (size_t k = 0; k < u; k++) {
            double tmp = a[c * u + k];
            a[c * u + k] = a[piv * u + k], a[piv * u + k] = tmp;
        }
        double tmp = y[c];
        y[c] = y[piv], y[piv] = tmp;
        for (size_t r = c + 1; r < u; r++) {
            double f = a[r * u + c] / a[c * u + c];
            for (size_t k = c; k < u; k++)
                a[r * u + k] -= f * a[c * u + k];
            y[r] -= f * y[c];
        }
    }
    for (size_t c = u; c-- > 0;) {
        for (size_t k = c + 1; k < u; k++)
            y[c] -= a[c * u + k] * y[k];
        y[c] /= a[c * u + c];
    }
}

/* The relative residual of the joint least-squares fit of E = Z_g P_g + b (b absent with
 * ULPT_NO_SHIFT) to T, from the normal equations over all n*r (+ d) unknowns at once. */
static double linear_reference(ulpt_prompt *p, const float *t)
{
    size_t n = ulpt_prompt_n_tokens(p), r = ulpt_prompt_rank(p), d = ulpt_prompt_dim(p);
    size_t ng = n / ulpt_prompt_n_groups(p), shift = !(ulpt_prompt_flags(p) & ULPT_NO_SHIFT);
    size_t u = n * r + (shift ? d : 0), m = n * d;
    double *a = calloc(m * u, sizeof *a), *ata = calloc(u * u, sizeof *ata),
           *aty = calloc(u, sizeof *aty);
    for (size_t i = 0; i < n; i++) { /* equation (i, j): sum_k z_ik P[k][j] + b_j = T_ij */
        const float *P = ulpt_projection_data(ulpt_prompt_projection(p, (uint32_t)(i / ng)));
        for (size_t j = 0; j < d; j++) {
            for (size_t k = 0; k < r; k++)
                a[(i * d + j) * u + i * r + k] = P[k * d + j];
            if (shift)
                a[(i * d + j) * u + n * r + j] = 1;
        }
    }
    for (size_t x = 0; x < u; x++) {
        for (size_t q = 0; q < m; q++)
            aty[x] += a[q * u + x] * t[q];
        for (size_t y = 0; y < u; y++)
            for (size_t q = 0; q < m; q++)
                ata[x * u + y] += a[q * u + x] * a[q * u + y];
    }
    /* with one group, b along P's rows trades against Z: the system is singular.  A ridge
       of 1e-10 of the diagonal picks one solution and moves the residual by far less
       than the tolerance below */
    double top = 0;
    for (size_t x = 0; x < u; x++)
        top = fmax(top, ata[x * u + x]);
    for (size_t x = 0; x < u; x++)
        ata[x * u + x] += 1e-10 * top;
    gauss_solve(ata, aty, u);
    double e2 = 0, t2 = 0;
    for (size_t q = 0; q < m; q++) {
        double e = -(double)t[q];
        for (size_t x = 0; x < u; x++)
            e += a[q * u + x] * aty[x];
        e2 += e * e;
        t2 += (double)t[q] * t[q];
    }
    free(a);
    free(ata);
    free(aty);
    return sqrt(e2 / t2);
}

TEST(a_random_target_reaches_the_least_squares_residual_where_the_fit_is_linear)
{
    struct { uint32_t n, r, d, g; unsigned flags; int rounds; } cases[] = {
        { 6, 2, 10, 1, ULPT_NO_SCALE, 1 },                  /* exact in one round */
        { 6, 2, 10, 2, ULPT_NO_SCALE | ULPT_NO_SHIFT, 1 },  /* likewise */
        { 6, 2, 10, 2, ULPT_NO_SCALE, 3000 },               /* rounds converge to it */
        { 8, 3, 12, 4, ULPT_NO_SCALE, 3000 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ulpt_prompt *p = make(cases[c].n, cases[c].r, cases[c].d, cases[c].g,
                              ULPT_PROJ_XAVIER_UNIFORM, cases[c].flags, 1);
        float *t = random_rows((size_t)cases[c].n * cases[c].d, 100 + c);
        double want = linear_reference(p, t);
        double got = fit(p, t, cases[c].d, (uint32_t)cases[c].rounds, 0);
        ck_assert_double_gt(want, 0.1); /* a random T is far from the structure */
        ck_assert_msg(fabs(got - want) <= 1e-6 * want, "case %zu: %.9g vs reference %.9g", c,
                      got, want);
        free(t);
        ulpt_prompt_free(p);
    }
}

/* With the scale, the fit is bilinear: where the rounds stop, the gradient of ||E - T||^2
 * (the library's backward of G = 2(E - T), itself checked against finite differences)
 * vanishes in every parameter, and the residual is below the fit without the scale's
 * freedom (the first round). */
TEST(with_the_scale_the_fit_stops_at_a_stationary_point)
{
    const uint32_t n = 10, r = 2, d = 32;
    for (uint32_t g = 1; g <= 2; g++) {
        ulpt_prompt *p = make(n, r, d, g, ULPT_PROJ_GAUSSIAN, 0, 1);
        float *t = random_rows((size_t)n * d, 7 + g), *e = malloc((size_t)n * d * sizeof *e);
        double first = fit(p, t, d, 1, 0);
        double res = fit(p, t, d, 5000, 1e-15);
        ck_assert_double_lt(res, first);
        ck_assert_int_eq(ulpt_prompt_forward(p, e, d), ULPT_OK);
        for (size_t k = 0; k < (size_t)n * d; k++)
            e[k] = 2 * (e[k] - t[k]);
        ulpt_prompt_zero_grad(p);
        ck_assert_int_eq(ulpt_prompt_backward(p, e, d), ULPT_OK);
        double gmax = 0;
        for (size_t k = 0; k < ulpt_prompt_num_params(p); k++)
            gmax = fmax(gmax, fabs(ulpt_prompt_grads(p)[k]));
        ck_assert_msg(gmax < 1e-3, "groups %u: largest gradient %g at residual %g", g, gmax, res);
        free(t);
        free(e);
        ulpt_prompt_free(p);
    }
}

TEST(the_residual_never_increases_across_rounds)
{
    const unsigned flags[] = { 0, ULPT_NO_SHIFT, ULPT_NO_SCALE };
    for (int f = 0; f < 3; f++) {
        ulpt_prompt *p = make(12, 2, 40, 3, ULPT_PROJ_XAVIER_UNIFORM, flags[f], 1);
        float *t = random_rows(12 * 40, 55 + f);
        double prev = INFINITY, first = 0;
        for (uint32_t k = 1; k <= 40; k++) { /* max_iters = k is the run's first k rounds */
            double res = fit(p, t, 40, k, 0);
            ck_assert_msg(res <= prev * (1 + 1e-6), "flags %u round %u: %.9g after %.9g",
                          flags[f], k, res, prev);
            if (k == 1)
                first = res;
            prev = res;
        }
        if (flags[f] != ULPT_NO_SCALE) /* the bilinear fits keep improving */
            ck_assert_double_lt(prev, first * 0.999);
        free(t);
        ulpt_prompt_free(p);
    }
}

TEST(the_fit_is_deterministic_and_ignores_the_current_parameters)
{
    ulpt_prompt *a = make(6, 2, 24, 2, ULPT_PROJ_XAVIER_UNIFORM, 0, 1);
    ulpt_prompt *b = make(6, 2, 24, 2, ULPT_PROJ_XAVIER_UNIFORM, 0, 2);
    test_perturb(b, 3);
    float *t = random_rows(6 * 24, 9);
    double ra = fit(a, t, 24, 50, 0), rb = fit(b, t, 24, 50, 0);
    ck_assert_double_eq(ra, rb);
    ck_assert_mem_eq(ulpt_prompt_params(a), ulpt_prompt_params(b),
                     ulpt_prompt_num_params(a) * sizeof(float));
    free(t);
    ulpt_prompt_free(a);
    ulpt_prompt_free(b);
}

/* Rank-deficient and zero targets: finite parameters, the exact fit where there is one. */
TEST(degenerate_targets_give_finite_parameters)
{
    const uint32_t n = 6, d = 16;
    float t[6 * 16];
    for (int variant = 0; variant < 5; variant++) {
        uint64_t seed = 3;
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = 0; j < d; j++) {
                float row = (float)test_uniform(&seed);
                switch (variant) {
                case 0: t[i * d + j] = 0; break;                              /* all zero */
                case 1: t[i * d + j] = (float)(j % 5) - 2; break;             /* rows equal */
                case 2: t[i * d + j] = j < 4 ? 0 : row; break;                /* zero columns */
                case 3: t[i * d + j] = (float)i * ((float)j - 7); break;      /* rank 1 */
                default: t[i * d + j] = 1e-30f * row; break;                  /* tiny */
                }
            }
        const unsigned flags[] = { 0, ULPT_NO_SCALE, ULPT_NO_SHIFT };
        for (int f = 0; f < 3; f++) {
            for (int kind = ULPT_PROJ_XAVIER_UNIFORM; kind <= ULPT_PROJ_IDENTITY; kind += 4) {
                ulpt_prompt *p = make(n, kind == ULPT_PROJ_IDENTITY ? d : 2, d, 2, kind, flags[f], 1);
                double res = fit(p, t, d, 100, 1e-10);
                ck_assert_msg(isfinite(res), "variant %d flags %u: %g", variant, flags[f], res);
                if (variant == 0 || (variant == 1 && !(flags[f] & ULPT_NO_SHIFT)) ||
                    kind == ULPT_PROJ_IDENTITY)
                    ck_assert_msg(res < 1e-6, "variant %d flags %u kind %d: residual %g", variant,
                                  flags[f], kind, res);
                ulpt_prompt_free(p);
            }
        }
    }
}

TEST(bad_arguments_leave_the_prompt_unchanged)
{
    ulpt_prompt *p = make(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0, 1);
    test_perturb(p, 1);
    size_t np = ulpt_prompt_num_params(p);
    float before[4 * 2 + 16], t[4 * 8];
    memcpy(before, ulpt_prompt_params(p), np * sizeof(float));
    for (int k = 0; k < 32; k++)
        t[k] = (float)k;
    ulpt_fit_options o = ULPT_FIT_OPTIONS_INIT;
    double res = 42;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(NULL, t, 8, NULL, &res), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, NULL, 8, NULL, &res), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 7, NULL, &res), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "row stride 7"));
    o.version = 2;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 8, &o, &res), ULPT_ERR_INVALID);
    o = (ulpt_fit_options)ULPT_FIT_OPTIONS_INIT;
    o.max_iters = 0;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 8, &o, &res), ULPT_ERR_INVALID);
    o = (ulpt_fit_options)ULPT_FIT_OPTIONS_INIT;
    o.tol = -1;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 8, &o, &res), ULPT_ERR_INVALID);
    o.tol = NAN;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 8, &o, &res), ULPT_ERR_INVALID);
    t[2 * 8 + 5] = NAN;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 8, NULL, &res), ULPT_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "target[2][5]"));
    t[2 * 8 + 5] = INFINITY;
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 8, NULL, &res), ULPT_ERR_NONFINITE);
    ck_assert_mem_eq(ulpt_prompt_params(p), before, np * sizeof(float));
    ck_assert_double_eq(res, 42);
    t[2 * 8 + 5] = 0; /* NULL residual and NULL options are fine */
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, t, 8, NULL, NULL), ULPT_OK);
    ulpt_prompt_free(p);
}

TEST(out_of_memory_leaves_the_prompt_unchanged)
{
    ulpt_prompt *p = make(6, 2, 16, 2, ULPT_PROJ_XAVIER_UNIFORM, 0, 1);
    size_t np = ulpt_prompt_num_params(p);
    float *before = malloc(np * sizeof *before), *t = random_rows(6 * 16, 4);
    memcpy(before, ulpt_prompt_params(p), np * sizeof(float));
    long k;
    for (k = 0;; k++) {
        double res = 42;
        test_alloc_install(k);
        int rc = ulpt_prompt_init_from_embeddings(p, t, 16, NULL, &res);
        long live = test_alloc.live;
        test_alloc_remove();
        ck_assert_int_eq(live, 0);
        if (rc == ULPT_OK)
            break;
        ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
        ck_assert_double_eq(res, 42);
        ck_assert_mem_eq(ulpt_prompt_params(p), before, np * sizeof(float));
    }
    ck_assert_int_eq(k, 2); /* the working block and the staging copy */
    free(before);
    free(t);
    ulpt_prompt_free(p);
}

TEST(fit_options_init_fills_the_defaults)
{
    ulpt_fit_options o, want = ULPT_FIT_OPTIONS_INIT;
    memset(&o, 0xff, sizeof o);
    ck_assert_int_eq(ulpt_fit_options_init(&o, ULPT_FIT_OPTIONS_VERSION), ULPT_OK);
    ck_assert_uint_eq(o.version, want.version);
    ck_assert_uint_eq(o.max_iters, want.max_iters);
    ck_assert_double_eq(o.tol, want.tol);
    ck_assert_int_eq(ulpt_fit_options_init(NULL, 1), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_fit_options_init(&o, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_fit_options_init(&o, ULPT_FIT_OPTIONS_VERSION + 1), ULPT_ERR_INVALID);
}
