/* test_zo.c -- forward-only training: the estimate is unbiased on a quadratic, a convex
 * toy converges, the stream is reproducible and documented, batching changes nothing,
 * failures change nothing, bad options are named, no step allocates. */
#include "test.h"

#include <float.h>
#include <stdio.h>

TEST_TIMEOUT(120); /* seconds per test in this file */

/* The host: L = 1/2 sum_k w_k (E_k - T_k)^2 over one n x d prompt.  With only Z
 * perturbed, E is affine in Z, so L is an exact quadratic in the perturbed parameters. */
typedef struct {
    const double *target, *weight; /* n*d each; weight NULL = 1 */
    size_t nd;
    int fail;       /* 1 error, 2 NaN loss, 3 inf loss, 4 a loss left unwritten, 5 huge loss */
    int fail_call;  /* the 1-based call that fails (0: every call) */
    int calls, prompts;
    uint32_t counts[64]; /* count of each call */
    double seen[64];     /* losses handed back, in step order, for the first 64 prompts */
} host;

static double host_loss_of(const host *h, const float *e)
{
    double l = 0;
    for (size_t k = 0; k < h->nd; k++) {
        double diff = (double)e[k] - h->target[k];
        l += 0.5 * (h->weight ? h->weight[k] : 1.0) * diff * diff;
    }
    return l;
}

static int host_losses(void *user, const float *e, uint32_t count, uint32_t n, uint32_t d,
                       double *losses)
{
    host *h = user;
    ck_assert_uint_eq((size_t)n * d, h->nd);
    h->calls++;
    if (h->calls <= 64)
        h->counts[h->calls - 1] = count;
    int failing = h->fail && (h->fail_call == 0 || h->fail_call == h->calls);
    if (failing && h->fail == 1)
        return 7;
    for (uint32_t c = 0; c < count; c++) {
        ck_assert(isnan(losses[c])); /* losses arrive as NaN */
        losses[c] = host_loss_of(h, e + (size_t)c * h->nd);
        if (h->prompts < 64)
            h->seen[h->prompts] = losses[c];
        h->prompts++;
    }
    if (failing && h->fail == 2)
        losses[count - 1] = NAN;
    if (failing && h->fail == 3)
        losses[0] = INFINITY;
    if (failing && h->fail == 4)
        losses[count / 2] = NAN; /* as if never written */
    if (failing && h->fail == 5)
        losses[0] = 1e300;
    return 0;
}

/* A target E* = Z* P with s = 1, b = 0 from a hidden prompt on the same projection. */
static double *reachable_target(uint32_t n, uint32_t r, uint32_t d)
{
    ulpt_prompt *t = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    float *x = ulpt_prompt_params(t);
    uint64_t st = 17;
    for (size_t i = 0; i < (size_t)n * r; i++)
        x[i] = (float)(2 * test_uniform(&st));
    float *e = malloc((size_t)n * d * sizeof *e);
    double *out = malloc((size_t)n * d * sizeof *out);
    ulpt_prompt_forward(t, e, d);
    for (size_t k = 0; k < (size_t)n * d; k++)
        out[k] = e[k];
    free(e);
    ulpt_prompt_free(t);
    return out;
}

static ulpt_zo *make_zo(ulpt_prompt *p, ulpt_optimizer *o, double eps, uint32_t q, uint32_t k,
                        int dist, int perturb, uint64_t seed)
{
    ulpt_zo_options zo = ULPT_ZO_OPTIONS_INIT;
    zo.epsilon = eps, zo.directions = q, zo.batch = k;
    zo.distribution = dist, zo.perturb = perturb, zo.seed = seed;
    ulpt_zo *z = NULL;
    ck_assert_int_eq(ulpt_zo_create(&z, p, o, &zo), ULPT_OK);
    return z;
}

static ulpt_optimizer *sgd(ulpt_prompt *p, double lr)
{
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.kind = ULPT_OPT_SGD, oo.lr = lr, oo.weight_decay = 0;
    ulpt_optimizer *o = NULL;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    return o;
}

/* ---- the estimate ------------------------------------------------------------------- */

/* On a quadratic the central difference is exact: (L(t+eu) - L(t-eu)) / 2e = a.u with
 * a = grad L, so one direction's estimate is (a.u) u, whose mean is a (E[u u^T] = I).
 * Its component i has variance
 *     Rademacher:  sum_{k != i} a_k^2     = |a|^2 - a_i^2   (u_k^2 = 1)
 *     Gaussian:    |a|^2 + a_i^2                            (E[u^4] = 3)
 * so the mean of N directions lies within 5 sqrt(var_i / N) of a_i except with
 * probability 5.7e-7 per component (here 24 components: 1.4e-5 in all, for a seed
 * chosen once).  The reference gradient is a double-precision finite difference of a
 * double re-implementation of forward (exact for a quadratic). */
TEST_LOOP(estimate_mean_equals_the_gradient_within_five_sigma, 0, 2)
{
    const int dist = _i ? ULPT_ZO_GAUSSIAN : ULPT_ZO_RADEMACHER;
    const uint32_t n = 12, r = 2, d = 16, q = 4, steps = (uint32_t)test_reps(5000);
    const size_t nd = (size_t)n * d, nz = (size_t)n * r;
    ulpt_prompt *p = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    test_perturb(p, 3); /* s != 1, b != 0: E stays affine in Z */
    double *target = reachable_target(n, r, d), *w = malloc(nd * sizeof *w);
    uint64_t st = 5;
    for (size_t k = 0; k < nd; k++)
        w[k] = 1.0 + 0.5 * test_uniform(&st); /* an uneven quadratic */
    host h = {target, w, nd, 0, 0, 0, 0, {0}, {0}};

    const size_t np = ulpt_prompt_num_params(p);
    float *theta = malloc(np * sizeof *theta);
    memcpy(theta, ulpt_prompt_params(p), np * sizeof *theta);
    double *a = calloc(np, sizeof *a), *x = malloc(np * sizeof *x), *e = malloc(nd * sizeof *e);
    for (size_t i = 0; i < nz; i++) {
        double lpm[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            for (size_t j = 0; j < np; j++)
                x[j] = theta[j];
            x[i] += sgn ? -1e-3 : 1e-3;
            test_forward_ref(p, x, e);
            lpm[sgn] = 0;
            for (size_t k = 0; k < nd; k++)
                lpm[sgn] += 0.5 * w[k] * (e[k] - target[k]) * (e[k] - target[k]);
        }
        a[i] = (lpm[0] - lpm[1]) / 2e-3;
    }
    double a2 = 0;
    for (size_t i = 0; i < nz; i++)
        a2 += a[i] * a[i];

    ulpt_optimizer *o = sgd(p, 1e-3);
    ulpt_zo *z = make_zo(p, o, 1e-2, q, 0, dist, ULPT_ZO_PERTURB_Z, 2024);
    double *sum = calloc(np, sizeof *sum);
    for (uint32_t t = 0; t < steps; t++) {
        ck_assert_int_eq(ulpt_zo_step(NULL, z, host_losses, &h), ULPT_OK);
        const float *g = ulpt_prompt_grads(p);
        for (size_t i = 0; i < np; i++)
            sum[i] += g[i];
        memcpy(ulpt_prompt_params(p), theta, np * sizeof *theta); /* estimate at one theta */
    }
    const double N = (double)steps * q;
    for (size_t i = 0; i < np; i++) {
        double mean = sum[i] / steps;
        if (i >= nz) { /* s and b are not perturbed: no estimate at all */
            ck_assert_double_eq(mean, 0.0);
            continue;
        }
        double var = dist == ULPT_ZO_RADEMACHER ? a2 - a[i] * a[i] : a2 + a[i] * a[i];
        double bound = 5 * sqrt(var / N);
        ck_assert_msg(fabs(mean - a[i]) <= bound,
                      "component %zu: mean %.6g, gradient %.6g, 5-sigma bound %.3g", i, mean,
                      a[i], bound);
    }
    /* the bound is tight enough to catch a wrong estimator (a factor of 2, say) on the
       largest component */
    double amax = 0;
    for (size_t i = 0; i < nz; i++)
        amax = fmax(amax, fabs(a[i]));
    ck_assert_msg(5 * sqrt((a2 + amax * amax) / N) < 0.5 * amax, "bound too loose");
    ck_assert_uint_eq(ulpt_zo_position(z), (uint64_t)steps * q);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    free(theta), free(a), free(x), free(e), free(sum), free(target), free(w);
}

/* The step is exactly the documented formula: with SGD at lr 1, the update is
 * -g, g_i = sum_j float32((L+_j - L-_j) / (2 q eps)) u_j[i], and u_j is direction
 * position + j of ulpt_zo_direction. */
TEST_LOOP(step_applies_the_documented_estimate_to_the_optimizer, 0, 2)
{
    const uint32_t n = 4, r = 2, d = 8, q = 3;
    ulpt_prompt *p = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    test_perturb(p, 11);
    double *target = reachable_target(n, r, d);
    host h = {target, NULL, (size_t)n * d, 0, 0, 0, 0, {0}, {0}};
    ulpt_optimizer *o = sgd(p, 1.0);
    ulpt_zo *z = make_zo(p, o, 0.01, q, 0, _i ? ULPT_ZO_GAUSSIAN : ULPT_ZO_RADEMACHER,
                         ULPT_ZO_PERTURB_ALL, 77);
    ck_assert_int_eq(ulpt_zo_set_position(z, 1000), ULPT_OK);
    const size_t np = ulpt_prompt_num_params(p);
    float *before = malloc(np * sizeof *before), *u = malloc(np * sizeof *u);
    double *g = calloc(np, sizeof *g);
    memcpy(before, ulpt_prompt_params(p), np * sizeof *before);
    double loss = 0;
    ck_assert_int_eq(ulpt_zo_step(&loss, z, host_losses, &h), ULPT_OK);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(h.counts[0], 2 * q);
    float gf[64] = {0};
    double mean = 0;
    for (uint32_t j = 0; j < q; j++) {
        ck_assert_int_eq(ulpt_zo_direction(u, z, 1000 + j), ULPT_OK);
        float c = (float)((h.seen[2 * j] - h.seen[2 * j + 1]) / (2.0 * q * (double)0.01f));
        for (size_t i = 0; i < np; i++)
            gf[i] += c * u[i];
        mean += h.seen[2 * j] + h.seen[2 * j + 1];
    }
    ck_assert_double_eq_tol(loss, mean / (2 * q), 1e-12);
    const float *after = ulpt_prompt_params(p);
    for (size_t i = 0; i < np; i++) {
        ck_assert_float_eq(ulpt_prompt_grads(p)[i], gf[i]);
        ck_assert_float_eq(after[i], before[i] - gf[i]);
    }
    ck_assert_uint_eq(ulpt_zo_position(z), 1000 + q);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    free(before), free(u), free(g), free(target);
}

/* The prompts the host sees are forward(theta + eps u_j) and forward(theta - eps u_j),
 * in that order, however they are split into calls. */
static struct {
    float *expect; /* 2q prompts of n x d */
    size_t nd;
    int seen;
} order_check;

static int host_compare(void *user, const float *e, uint32_t count, uint32_t n, uint32_t d,
                        double *losses)
{
    (void)user;
    for (uint32_t c = 0; c < count; c++, order_check.seen++) {
        ck_assert_mem_eq(e + (size_t)c * n * d, order_check.expect + order_check.seen * order_check.nd,
                         order_check.nd * sizeof(float));
        losses[c] = (double)e[(size_t)c * n * d];
    }
    return 0;
}

TEST(callback_gets_plus_and_minus_prompts_in_order)
{
    const uint32_t n = 3, r = 2, d = 5, q = 3;
    const size_t nd = (size_t)n * d;
    ulpt_prompt *p = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *ref = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    test_perturb(p, 4);
    test_perturb(ref, 4);
    ulpt_optimizer *o = sgd(p, 0.1);
    ulpt_zo *z = make_zo(p, o, 0.125, q, 4, ULPT_ZO_GAUSSIAN, ULPT_ZO_PERTURB_ALL, 5);
    const size_t np = ulpt_prompt_num_params(p);
    float *u = malloc(np * sizeof *u);
    float *theta = malloc(np * sizeof *theta);
    order_check.expect = malloc(2 * q * nd * sizeof(float));
    order_check.nd = nd;
    order_check.seen = 0;
    memcpy(theta, ulpt_prompt_params(ref), np * sizeof *theta);
    for (uint32_t s = 0; s < 2 * q; s++) {
        ulpt_zo_direction(u, z, s / 2);
        for (size_t i = 0; i < np; i++)
            ulpt_prompt_params(ref)[i] = theta[i] + (s % 2 ? -0.125f : 0.125f) * u[i];
        ulpt_prompt_forward(ref, order_check.expect + s * nd, d);
    }
    ck_assert_int_eq(ulpt_zo_step(NULL, z, host_compare, NULL), ULPT_OK);
    ck_assert_int_eq(order_check.seen, 2 * q);
    free(order_check.expect), free(u), free(theta);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    ulpt_prompt_free(ref);
}

/* ---- training ----------------------------------------------------------------------- */

/* A convex toy: L = 1/2 |E - E*|^2 / (n d), E* = Z* P reachable, only Z perturbed and
 * s = 1, b = 0: a convex quadratic in Z with minimum 0 at Z*. */
TEST_LOOP(convex_toy_converges_from_losses_alone, 0, 2)
{
    const uint32_t n = 8, r = 2, d = 32;
    const size_t nd = (size_t)n * d;
    ulpt_prompt *p = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    double *target = reachable_target(n, r, d), *w = malloc(nd * sizeof *w);
    for (size_t k = 0; k < nd; k++)
        w[k] = 1.0 / (double)nd;
    host h = {target, w, nd, 0, 0, 0, 0, {0}, {0}};
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.lr = 0.05, oo.weight_decay = 0;
    oo.schedule = ULPT_SCHED_COSINE, oo.total_steps = 3000;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    ulpt_zo *z = make_zo(p, o, 1e-3, 2, 0, _i ? ULPT_ZO_GAUSSIAN : ULPT_ZO_RADEMACHER,
                         ULPT_ZO_PERTURB_Z, 9);
    double first = 0, loss = 0;
    for (int t = 0; t < 3000; t++) {
        ck_assert_int_eq(ulpt_zo_step(&loss, z, host_losses, &h), ULPT_OK);
        if (t == 0)
            first = loss;
    }
    ck_assert_msg(first > 0.05, "initial loss %g", first);
    ck_assert_msg(loss < 1e-4 * first, "loss %g after 3000 steps, started at %g", loss, first);
    ck_assert_int_eq(h.calls, 3000); /* one call a step: batch 0 = 2q */
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    free(target), free(w);
}

/* Every part perturbed, AdamW with warmup, decay and clipping: a reachable target is
 * approached too (not convex in (Z, s, b), so no rate is promised, only progress). */
TEST(all_parts_train_with_adamw_schedule_and_clipping)
{
    const uint32_t n = 8, r = 2, d = 32;
    const size_t nd = (size_t)n * d;
    ulpt_prompt *p = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    double *target = reachable_target(n, r, d), *w = malloc(nd * sizeof *w);
    for (size_t k = 0; k < nd; k++)
        w[k] = 1.0 / (double)nd;
    host h = {target, w, nd, 0, 0, 0, 0, {0}, {0}};
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.lr = 0.02, oo.max_grad_norm = 1.0;
    oo.schedule = ULPT_SCHED_LINEAR, oo.warmup_steps = 100, oo.total_steps = 2000;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    ulpt_zo *z = make_zo(p, o, 1e-3, 4, 3, ULPT_ZO_RADEMACHER, ULPT_ZO_PERTURB_ALL, 10);
    double first = 0, loss = 0;
    for (int t = 0; t < 2000; t++) {
        ck_assert_int_eq(ulpt_zo_step(&loss, z, host_losses, &h), ULPT_OK);
        if (t == 0)
            first = loss;
    }
    ck_assert_msg(loss < 0.05 * first, "loss %g after 2000 steps, started at %g", loss, first);
    ck_assert_int_eq(h.calls, 2000 * 3); /* 8 prompts in calls of 3, 3, 2 */
    ck_assert_uint_eq(h.counts[0], 3);
    ck_assert_uint_eq(h.counts[2], 2);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 2000);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    free(target), free(w);
}

/* ---- the stream --------------------------------------------------------------------- */

/* docs/PROJECTION.md section 6, known answers: the first 8 elements of a direction.
 * Rademacher values are exact everywhere; Gaussian ones within 2 ulp (libm). */
TEST(stream_matches_the_known_answers_of_the_spec)
{
    static const struct {
        uint64_t seed, index;
        int gaussian;
        float u[8];
    } known[] = {
        {0x0000000000000000u, 0x0u, 0, {-1, -1, 1, 1, -1, -1, 1, -1}},
        {0x000000000000002au, 0x5u, 0, {-1, 1, -1, -1, 1, -1, -1, 1}},
        {0xffffffffffffffffu, 0x100000001u, 0, {-1, -1, 1, -1, -1, 1, -1, -1}},
        {0x0000000000000000u, 0x0u, 1,
         {0.662866294f, -0.0944342315f, -0.826330721f, 2.3796711f, 0.494557679f, -1.0406003f,
          1.79420364f, -0.479293972f}},
        {0x000000000000002au, 0x5u, 1,
         {-0.357826233f, 0.758842528f, -0.432355344f, -0.546113074f, 1.81927443f, -0.827503741f,
          -0.0790078193f, 0.140352845f}},
        {0xffffffffffffffffu, 0x100000001u, 1,
         {-0.17118755f, -0.13523373f, 1.14061797f, -1.36040723f, -0.128352627f, 0.706311643f,
          0.901468515f, -0.437486202f}},
    };
    /* any prompt with at least 8 parameters: the stream does not depend on its shape */
    ulpt_prompt *p = test_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o = sgd(p, 0.1);
    float u[24 + 16];
    for (size_t c = 0; c < sizeof known / sizeof known[0]; c++) {
        ulpt_zo *z = make_zo(p, o, 1e-3, 1, 0, known[c].gaussian, ULPT_ZO_PERTURB_ALL,
                             known[c].seed);
        ck_assert_int_eq(ulpt_zo_direction(u, z, known[c].index), ULPT_OK);
        for (int i = 0; i < 8; i++)
            ck_assert_msg(known[c].gaussian ? fabsf(u[i] - known[c].u[i]) <=
                                                  2 * FLT_EPSILON * fabsf(known[c].u[i])
                                            : u[i] == known[c].u[i],
                          "case %zu element %d: %.9g, expected %.9g", c,
                          i, (double)u[i], (double)known[c].u[i]);
        ulpt_zo_free(z);
    }
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST_LOOP(stream_is_reproducible_and_depends_only_on_seed_and_index, 0, 2)
{
    ulpt_prompt *small = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *big = test_prompt(6, 3, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *os = sgd(small, 0.1), *ob = sgd(big, 0.1);
    ulpt_zo *a = make_zo(small, os, 1e-3, 1, 0, _i, ULPT_ZO_PERTURB_ALL, 31);
    ulpt_zo *b = make_zo(big, ob, 0.5, 3, 2, _i, ULPT_ZO_PERTURB_ALL, 31);
    ulpt_zo *c = make_zo(big, ob, 1e-3, 1, 0, _i, ULPT_ZO_PERTURB_ALL, 32);
    ulpt_zo *zonly = make_zo(big, ob, 1e-3, 1, 0, _i, ULPT_ZO_PERTURB_Z, 31);
    const size_t ns = ulpt_prompt_num_params(small), nb = ulpt_prompt_num_params(big);
    float ua[16], ub[64], uc[64], uz[64], again[64];
    double sum = 0, sq = 0;
    for (uint64_t j = 0; j < 200; j++) {
        uint64_t idx = j < 100 ? j : (j << 32) + j; /* high index words too */
        ulpt_zo_direction(ua, a, idx);
        ulpt_zo_direction(ub, b, idx);
        ulpt_zo_direction(uc, c, idx);
        ulpt_zo_direction(uz, zonly, idx);
        ulpt_zo_direction(again, b, idx);
        ck_assert_mem_eq(ub, again, nb * sizeof(float));  /* a pure function */
        ck_assert_mem_eq(ua, ub, ns * sizeof(float));     /* shape-free prefix */
        ck_assert(memcmp(ub, uc, nb * sizeof(float)) != 0); /* seed matters */
        ck_assert_mem_eq(uz, ub, 18 * sizeof(float));     /* Z-only: the same Z words */
        for (size_t i = 18; i < nb; i++)
            ck_assert_float_eq(uz[i], 0.0f);
        for (size_t i = 0; i < nb; i++) {
            if (!_i)
                ck_assert(ub[i] == 1.0f || ub[i] == -1.0f);
            sum += ub[i], sq += (double)ub[i] * ub[i];
        }
    }
    /* 200 x 50 draws of mean 0, variance 1: 5-sigma bounds on the moments */
    const double N = 200.0 * (double)nb;
    ck_assert_msg(fabs(sum / N) < 5 / sqrt(N), "mean %g", sum / N);
    if (_i) /* Var(u^2) = 2 */
        ck_assert_msg(fabs(sq / N - 1) < 5 * sqrt(2 / N), "second moment %g", sq / N);
    else
        ck_assert_double_eq(sq, N);
    ulpt_zo_free(a), ulpt_zo_free(b), ulpt_zo_free(c), ulpt_zo_free(zonly);
    ulpt_optimizer_free(os), ulpt_optimizer_free(ob);
    ulpt_prompt_free(small), ulpt_prompt_free(big);
}

/* Two runs with the same seeds are bit-identical, whatever k, and differ with another
 * seed. */
TEST(training_is_deterministic_and_independent_of_the_batch_split)
{
    const uint32_t n = 4, r = 2, d = 8, q = 3;
    double *target = reachable_target(n, r, d);
    host h = {target, NULL, (size_t)n * d, 0, 0, 0, 0, {0}, {0}};
    ulpt_prompt *p[4];
    ulpt_optimizer *o[4];
    ulpt_zo *z[4];
    static const uint32_t k[4] = {0, 1, 4, 0};
    for (int c = 0; c < 4; c++) {
        p[c] = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
        ck_assert_int_eq(ulpt_optimizer_create(&o[c], p[c], NULL), ULPT_OK);
        z[c] = make_zo(p[c], o[c], 1e-2, q, k[c], ULPT_ZO_GAUSSIAN, ULPT_ZO_PERTURB_ALL,
                       c == 3 ? 8 : 7);
    }
    for (int t = 0; t < 25; t++)
        for (int c = 0; c < 4; c++)
            ck_assert_int_eq(ulpt_zo_step(NULL, z[c], host_losses, &h), ULPT_OK);
    const size_t bytes = ulpt_prompt_num_params(p[0]) * sizeof(float);
    ck_assert_mem_eq(ulpt_prompt_params(p[0]), ulpt_prompt_params(p[1]), bytes);
    ck_assert_mem_eq(ulpt_prompt_params(p[0]), ulpt_prompt_params(p[2]), bytes);
    ck_assert(memcmp(ulpt_prompt_params(p[0]), ulpt_prompt_params(p[3]), bytes) != 0);
    for (int c = 0; c < 4; c++) {
        ulpt_zo_free(z[c]);
        ulpt_optimizer_free(o[c]);
        ulpt_prompt_free(p[c]);
    }
    free(target);
}

/* ---- failures ----------------------------------------------------------------------- */

/* fail kinds 1..5 of the host, each in the first or the second call of a step split in
 * calls of 3 (q = 2: prompts 0-2, then 3) */
TEST_LOOP(failed_step_changes_nothing, 0, 10)
{
    static const int expect[] = {0, ULPT_ERR_CALLBACK, ULPT_ERR_NONFINITE, ULPT_ERR_NONFINITE,
                                 ULPT_ERR_NONFINITE, ULPT_ERR_NONFINITE};
    const int fail = _i % 5 + 1, call = _i / 5 + 1;
    const uint32_t n = 4, r = 2, d = 8;
    double *target = reachable_target(n, r, d);
    host h = {target, NULL, (size_t)n * d, 0, 0, 0, 0, {0}, {0}};
    ulpt_prompt *p = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *twin = test_prompt(n, r, d, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o, *ot;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&ot, twin, NULL), ULPT_OK);
    ulpt_zo *z = make_zo(p, o, 1e-2, 2, 3, ULPT_ZO_RADEMACHER, ULPT_ZO_PERTURB_ALL, 3);
    ulpt_zo *zt = make_zo(twin, ot, 1e-2, 2, 3, ULPT_ZO_RADEMACHER, ULPT_ZO_PERTURB_ALL, 3);
    for (int t = 0; t < 3; t++) { /* optimizer state and a stream position first */
        ck_assert_int_eq(ulpt_zo_step(NULL, z, host_losses, &h), ULPT_OK);
        ck_assert_int_eq(ulpt_zo_step(NULL, zt, host_losses, &h), ULPT_OK);
    }
    const size_t np = ulpt_prompt_num_params(p);
    float *params = malloc(np * sizeof *params), *grads = malloc(np * sizeof *grads);
    memcpy(params, ulpt_prompt_params(p), np * sizeof *params);
    memcpy(grads, ulpt_prompt_grads(p), np * sizeof *grads);
    const float lr = ulpt_optimizer_lr(o);

    h.fail = fail, h.fail_call = call, h.calls = 0;
    double loss = 123.0;
    ck_assert_int_eq(ulpt_zo_step(&loss, z, host_losses, &h), expect[fail]);
    ck_assert_str_ne(ulpt_last_error(), "");
    ck_assert_msg(strstr(ulpt_last_error(), "ulpt_zo_step") != NULL, "%s", ulpt_last_error());
    /* stops at the failing call; a finite but huge loss fails only when forming g */
    ck_assert_int_eq(h.calls, fail == 5 ? 2 : call);
    ck_assert_double_eq(loss, 123.0);
    ck_assert_mem_eq(ulpt_prompt_params(p), params, np * sizeof *params);
    ck_assert_mem_eq(ulpt_prompt_grads(p), grads, np * sizeof *grads);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 3);
    ck_assert_float_eq(ulpt_optimizer_lr(o), lr);
    ck_assert_uint_eq(ulpt_zo_position(z), 6);

    /* moments and stream too: the next good steps match the twin that never failed */
    h.fail = 0;
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(ulpt_zo_step(NULL, z, host_losses, &h), ULPT_OK);
        ck_assert_int_eq(ulpt_zo_step(NULL, zt, host_losses, &h), ULPT_OK);
    }
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(twin), np * sizeof *params);
    free(params), free(grads), free(target);
    ulpt_zo_free(z), ulpt_zo_free(zt);
    ulpt_optimizer_free(o), ulpt_optimizer_free(ot);
    ulpt_prompt_free(p), ulpt_prompt_free(twin);
}

/* A parameter so large that theta + eps u overflows: the step refuses before the host
 * is asked, naming the parameter, and theta is restored bit for bit. */
TEST(perturbation_that_overflows_is_refused_and_theta_restored)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o = sgd(p, 0.1);
    ulpt_zo *z = make_zo(p, o, 1e38, 1, 0, ULPT_ZO_RADEMACHER, ULPT_ZO_PERTURB_ALL, 1);
    float *x = ulpt_prompt_params(p);
    x[5] = FLT_MAX; /* scale[1] */
    const size_t np = ulpt_prompt_num_params(p);
    float *params = malloc(np * sizeof *params);
    memcpy(params, x, np * sizeof *params);
    host h = {NULL, NULL, 8, 0, 0, 0, 0, {0}, {0}};
    ck_assert_int_eq(ulpt_zo_step(NULL, z, host_losses, &h), ULPT_ERR_NONFINITE);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_msg(strstr(ulpt_last_error(), "scale[1]") != NULL, "%s", ulpt_last_error());
    ck_assert_mem_eq(x, params, np * sizeof *params);
    ck_assert_uint_eq(ulpt_zo_position(z), 0);
    free(params);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* ---- arguments and options ------------------------------------------------------------- */

TEST(bad_options_are_refused_with_the_field_named)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o = sgd(p, 0.1);
    static const struct {
        const char *field;
        double eps;
        uint32_t q, k;
        int dist, perturb;
        unsigned version;
    } bad[] = {
        {"epsilon", 0.0, 1, 0, 0, 0, 1},       {"epsilon", -1e-3, 1, 0, 0, 0, 1},
        {"epsilon", NAN, 1, 0, 0, 0, 1},       {"epsilon", INFINITY, 1, 0, 0, 0, 1},
        {"epsilon", 1e-50, 1, 0, 0, 0, 1},     {"epsilon", 1e39, 1, 0, 0, 0, 1},
        {"directions", 1e-3, 0, 0, 0, 0, 1},   {"directions", 1e-3, (1u << 30) + 1, 0, 0, 0, 1},
        {"batch", 1e-3, 2, 5, 0, 0, 1},        {"distribution", 1e-3, 1, 0, 2, 0, 1},
        {"distribution", 1e-3, 1, 0, -1, 0, 1}, {"perturb", 1e-3, 1, 0, 0, 2, 1},
        {"version", 1e-3, 1, 0, 0, 0, 0},      {"version", 1e-3, 1, 0, 0, 0, 2},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        ulpt_zo_options zo = ULPT_ZO_OPTIONS_INIT;
        zo.epsilon = bad[c].eps, zo.directions = bad[c].q, zo.batch = bad[c].k;
        zo.distribution = bad[c].dist, zo.perturb = bad[c].perturb, zo.version = bad[c].version;
        ulpt_zo *z = (ulpt_zo *)&zo; /* must stay as it was */
        ck_assert_int_eq(ulpt_zo_create(&z, p, o, &zo), ULPT_ERR_INVALID);
        ck_assert_ptr_eq(z, (ulpt_zo *)&zo);
        ck_assert_msg(strstr(ulpt_last_error(), bad[c].field) != NULL, "case %zu: %s", c,
                      ulpt_last_error());
        ck_assert_msg(strstr(ulpt_last_error(), "ulpt_zo_create") != NULL, "%s", ulpt_last_error());
    }
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(null_arguments_and_foreign_optimizers_are_refused)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *q = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o = sgd(p, 0.1), *oq = sgd(q, 0.1);
    ulpt_zo *z = NULL;
    ck_assert_int_eq(ulpt_zo_create(NULL, p, o, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_create(&z, NULL, o, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_create(&z, p, NULL, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_create(&z, p, oq, NULL), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "another prompt"));
    ck_assert_ptr_null(z);
    ck_assert_int_eq(ulpt_zo_create(&z, p, o, NULL), ULPT_OK); /* NULL options: defaults */
    ulpt_zo_options got = ULPT_ZO_OPTIONS_INIT;
    got.batch = 99;
    ck_assert_int_eq(ulpt_zo_get_options(&got, z), ULPT_OK);
    ck_assert_double_eq(got.epsilon, 1e-3);
    ck_assert_uint_eq(got.directions, 1);
    ck_assert_uint_eq(got.batch, 2); /* resolved */
    ck_assert_int_eq(got.distribution, ULPT_ZO_RADEMACHER);
    ck_assert_int_eq(got.perturb, ULPT_ZO_PERTURB_ALL);
    got.version = 9;
    ck_assert_int_eq(ulpt_zo_get_options(&got, z), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_get_options(NULL, z), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_step(NULL, NULL, host_losses, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_step(NULL, z, NULL, NULL), ULPT_ERR_INVALID);
    float u[16];
    ck_assert_int_eq(ulpt_zo_direction(NULL, z, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_direction(u, NULL, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_set_position(NULL, 3), ULPT_ERR_INVALID);
    ck_assert_uint_eq(ulpt_zo_position(NULL), 0);
    ck_assert_ptr_null(ulpt_zo_prompt(NULL));
    ck_assert_ptr_null(ulpt_zo_optimizer(NULL));
    ck_assert_ptr_eq(ulpt_zo_prompt(z), p);
    ck_assert_ptr_eq(ulpt_zo_optimizer(z), o);
    ulpt_zo_free(NULL);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o), ulpt_optimizer_free(oq);
    ulpt_prompt_free(p), ulpt_prompt_free(q);
}

TEST(options_init_fills_the_defaults_of_a_version)
{
    ulpt_zo_options a, b = ULPT_ZO_OPTIONS_INIT;
    memset(&a, 0xAB, sizeof a);
    ck_assert_int_eq(ulpt_zo_options_init(&a, ULPT_ZO_OPTIONS_VERSION), ULPT_OK);
    ck_assert_uint_eq(a.version, ULPT_ZO_OPTIONS_VERSION);
    ck_assert_double_eq(a.epsilon, b.epsilon);
    ck_assert_uint_eq(a.directions, b.directions);
    ck_assert_uint_eq(a.batch, b.batch);
    ck_assert_int_eq(a.distribution, b.distribution);
    ck_assert_int_eq(a.perturb, b.perturb);
    ck_assert_uint_eq(a.seed, b.seed);
    ck_assert_int_eq(ulpt_zo_options_init(NULL, 1), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_options_init(&a, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_options_init(&a, ULPT_ZO_OPTIONS_VERSION + 1), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "version"));
}

/* ---- memory ------------------------------------------------------------------------- */

TEST(out_of_memory_at_each_allocation_fails_cleanly_and_no_step_allocates)
{
    long k;
    double *target = reachable_target(4, 2, 8);
    for (k = 0;; k++) {
        ulpt_prompt *p = NULL;
        ulpt_optimizer *o = NULL;
        ulpt_zo *z = NULL;
        ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
        po.n_tokens = 4, po.dim = 8, po.projection_seed = 1234, po.init_seed = 99;
        test_alloc_install(k);
        int rc = ulpt_prompt_create(&p, &po);
        if (rc == ULPT_OK)
            rc = ulpt_optimizer_create(&o, p, NULL);
        if (rc == ULPT_OK)
            rc = ulpt_zo_create(&z, p, o, NULL);
        if (rc == ULPT_OK) {
            long calls = test_alloc.calls;
            host h = {target, NULL, 32, 0, 0, 0, 0, {0}, {0}};
            for (int t = 0; t < 5; t++)
                ck_assert_int_eq(ulpt_zo_step(NULL, z, host_losses, &h), ULPT_OK);
            h.fail = 1;
            ck_assert_int_eq(ulpt_zo_step(NULL, z, host_losses, &h), ULPT_ERR_CALLBACK);
            ck_assert_int_eq(test_alloc.calls, calls); /* steps never allocate */
            ulpt_zo_free(z);
            ulpt_optimizer_free(o);
            ulpt_prompt_free(p);
            ck_assert_int_eq(test_alloc.live, 0);
            test_alloc_remove();
            break;
        }
        ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
        ck_assert_str_ne(ulpt_last_error(), "");
        ck_assert_ptr_null(z);
        ulpt_optimizer_free(o);
        ulpt_prompt_free(p);
        ck_assert_int_eq(test_alloc.live, 0);
        test_alloc_remove();
    }
    ck_assert_int_gt(k, 3);
    free(target);
}
