/* test_prompt.c -- forward against a double-precision reference, backward against
 * finite differences, and the identity projection as vanilla prompt tuning. */
#include "test.h"

TEST_TIMEOUT(60); /* seconds per test in this file */

/* The configurations every numeric test runs over: groups, flags and kinds. */
static const struct {
    uint32_t n, r, d, groups;
    int kind;
    unsigned flags;
} cfg[] = {
    {6, 2, 10, 1, ULPT_PROJ_XAVIER_UNIFORM, 0},
    {6, 3, 10, 2, ULPT_PROJ_XAVIER_UNIFORM, 0},
    {6, 2, 9, 3, ULPT_PROJ_GAUSSIAN, ULPT_NO_SCALE},
    {4, 2, 7, 2, ULPT_PROJ_KAIMING_UNIFORM, ULPT_NO_SHIFT},
    {4, 1, 7, 1, ULPT_PROJ_RADEMACHER, ULPT_NO_SCALE | ULPT_NO_SHIFT},
    {3, 5, 5, 1, ULPT_PROJ_IDENTITY, 0},
    {3, 5, 5, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT},
    {100, 2, 4096, 4, ULPT_PROJ_XAVIER_UNIFORM, 0}, /* the headline shape, 4 groups */
};
#define N_CFG ((int)(sizeof cfg / sizeof cfg[0]))

static ulpt_prompt *cfg_prompt(int i)
{
    ulpt_prompt *p =
        test_prompt(cfg[i].n, cfg[i].r, cfg[i].d, cfg[i].groups, cfg[i].kind, cfg[i].flags);
    test_perturb(p, 5 + (uint64_t)i);
    return p;
}

static double *params_as_double(ulpt_prompt *p)
{
    size_t np = ulpt_prompt_num_params(p);
    double *x = malloc(np * sizeof *x);
    for (size_t i = 0; i < np; i++)
        x[i] = ulpt_prompt_params(p)[i];
    return x;
}

TEST_LOOP(forward_matches_double_precision_reference, 0, N_CFG)
{
    ulpt_prompt *p = cfg_prompt(_i);
    const size_t n = cfg[_i].n, d = cfg[_i].d, ld = d + 3;
    float *e = malloc(n * ld * sizeof *e);
    for (size_t k = 0; k < n * ld; k++)
        e[k] = 12345.0f; /* padding sentinel */
    double *ref = malloc(n * d * sizeof *ref), *x = params_as_double(p);
    test_forward_ref(p, x, ref);
    ck_assert_int_eq(ulpt_prompt_forward(p, e, ld), ULPT_OK);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < d; j++)
            ck_assert_double_eq_tol(e[i * ld + j], ref[i * d + j],
                                    1e-5 * (1 + fabs(ref[i * d + j])));
        for (size_t j = d; j < ld; j++)
            ck_assert_float_eq(e[i * ld + j], 12345.0f); /* columns past dim untouched */
    }
    free(e), free(ref), free(x);
    ulpt_prompt_free(p);
}

/* L = sum(W (.) E) + 1/2 sum(E^2), so G = W + E: nonlinear in the parameters. */
static double loss_ref(ulpt_prompt *p, const double *x, const double *w)
{
    size_t nd = (size_t)ulpt_prompt_n_tokens(p) * ulpt_prompt_dim(p);
    double *e = malloc(nd * sizeof *e), l = 0;
    test_forward_ref(p, x, e);
    for (size_t k = 0; k < nd; k++)
        l += w[k] * e[k] + 0.5 * e[k] * e[k];
    free(e);
    return l;
}

TEST_LOOP(backward_matches_finite_differences, 0, N_CFG)
{
    ulpt_prompt *p = cfg_prompt(_i);
    const size_t n = cfg[_i].n, d = cfg[_i].d, np = ulpt_prompt_num_params(p);
    uint64_t st = 42;
    double *w = malloc(n * d * sizeof *w), *e = malloc(n * d * sizeof *e), *x = params_as_double(p);
    float *g = malloc(n * d * sizeof *g);
    for (size_t k = 0; k < n * d; k++)
        w[k] = test_uniform(&st);
    test_forward_ref(p, x, e);
    for (size_t k = 0; k < n * d; k++)
        g[k] = (float)(w[k] + e[k]);
    ulpt_prompt_zero_grad(p);
    ck_assert_int_eq(ulpt_prompt_backward(p, g, d), ULPT_OK);
    const float *grad = ulpt_prompt_grads(p);
    const size_t stride = np <= 400 ? 1 : np / 97; /* the headline shape: a sample */
    for (size_t i = 0; i < np; i += stride) {
        const double h = 1e-4, keep = x[i];
        x[i] = keep + h;
        double lp = loss_ref(p, x, w);
        x[i] = keep - h;
        double lm = loss_ref(p, x, w);
        x[i] = keep;
        double fd = (lp - lm) / (2 * h);
        ck_assert_msg(fabs(grad[i] - fd) <= 1e-4 * (1 + fabs(fd)),
                      "param %zu: backward %.8g, finite difference %.8g", i, grad[i], fd);
    }
    free(w), free(e), free(x), free(g);
    ulpt_prompt_free(p);
}

TEST_LOOP(backward_adds_to_the_gradients, 0, N_CFG)
{
    ulpt_prompt *p = cfg_prompt(_i);
    const size_t n = cfg[_i].n, d = cfg[_i].d, np = ulpt_prompt_num_params(p), ld = d + 1;
    uint64_t st = 7;
    float *g = malloc(n * ld * sizeof *g), *once = malloc(np * sizeof *once);
    for (size_t k = 0; k < n * ld; k++)
        g[k] = (float)test_uniform(&st);
    ulpt_prompt_zero_grad(p);
    ulpt_prompt_backward(p, g, ld);
    memcpy(once, ulpt_prompt_grads(p), np * sizeof *once);
    ulpt_prompt_backward(p, g, ld);
    for (size_t i = 0; i < np; i++)
        ck_assert_float_eq_tol(ulpt_prompt_grads(p)[i], 2 * once[i], 1e-6 * (1 + fabsf(once[i])));
    ulpt_prompt_zero_grad(p);
    for (size_t i = 0; i < np; i++)
        ck_assert_float_eq(ulpt_prompt_grads(p)[i], 0.0f);
    free(g), free(once);
    ulpt_prompt_free(p);
}

TEST(new_prompt_has_unit_scale_zero_shift_and_zero_grads)
{
    ulpt_prompt *p = test_prompt(10, 2, 64, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    const float *x = ulpt_prompt_params(p);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), 10 * 2 + 2 * 64);
    for (int j = 0; j < 64; j++) {
        ck_assert_float_eq(x[20 + j], 1.0f);
        ck_assert_float_eq(x[20 + 64 + j], 0.0f);
    }
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        ck_assert_float_eq(ulpt_prompt_grads(p)[i], 0.0f);
    ulpt_prompt_free(p);
}

TEST_LOOP(flags_remove_their_vectors_from_the_layout, 0, 4)
{
    static const unsigned flags[] = {0, ULPT_NO_SCALE, ULPT_NO_SHIFT,
                                     ULPT_NO_SCALE | ULPT_NO_SHIFT};
    static const size_t expect[] = {8 * 2 + 2 * 32, 8 * 2 + 32, 8 * 2 + 32, 8 * 2};
    ulpt_prompt *p = test_prompt(8, 2, 32, 2, ULPT_PROJ_XAVIER_UNIFORM, flags[_i]);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), expect[_i]);
    ck_assert_uint_eq(ulpt_prompt_flags(p), flags[_i]);
    ck_assert_uint_eq(ulpt_prompt_n_tokens(p), 8);
    ck_assert_uint_eq(ulpt_prompt_rank(p), 2);
    ck_assert_uint_eq(ulpt_prompt_dim(p), 32);
    ck_assert_uint_eq(ulpt_prompt_n_groups(p), 2);
    ulpt_prompt_free(p);
}

TEST(headline_shape_has_two_percent_of_vanilla_parameters)
{
    ulpt_prompt *p = test_prompt(100, 2, 4096, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), 8392);
    ulpt_prompt_free(p);
    p = test_prompt(100, 4096, 4096, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), 409600);
    ulpt_prompt_free(p);
}

/* Vanilla prompt tuning trains E directly: E = Z, dL/dZ = G, SGD moves E by -lr*G. */
TEST(identity_kind_is_vanilla_prompt_tuning)
{
    const uint32_t n = 5, d = 12;
    ulpt_prompt *p = test_prompt(n, d, d, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT);
    float e[5 * 12], g[5 * 12], before[5 * 12];
    ck_assert_int_eq(ulpt_prompt_forward(p, e, d), ULPT_OK);
    ck_assert_mem_eq(e, ulpt_prompt_params(p), sizeof e);
    memcpy(before, e, sizeof e);
    uint64_t st = 3;
    for (size_t k = 0; k < n * d; k++)
        g[k] = (float)test_uniform(&st);
    ulpt_prompt_zero_grad(p);
    ulpt_prompt_backward(p, g, d);
    ck_assert_mem_eq(ulpt_prompt_grads(p), g, sizeof g);

    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.kind = ULPT_OPT_SGD;
    oo.lr = 0.5;
    oo.weight_decay = 0;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    ulpt_prompt_forward(p, e, d);
    for (size_t k = 0; k < n * d; k++)
        ck_assert_float_eq(e[k], before[k] - 0.5f * g[k]);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}
