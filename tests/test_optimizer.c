/* test_optimizer.c -- SGD with momentum, Adam and AdamW, clipping and schedules, against
 * hand-computed values and a double-precision re-implementation of torch.optim's rules. */
#include "test.h"

static ulpt_optimizer *make_opt(ulpt_prompt *p, int kind, double lr, double wd, double momentum,
                                double clip, int sched, uint64_t warmup, uint64_t total)
{
    ulpt_optimizer_options o = ULPT_OPTIMIZER_OPTIONS_INIT;
    o.kind = kind;
    o.lr = lr;
    o.weight_decay = wd;
    o.momentum = momentum;
    o.max_grad_norm = clip;
    o.schedule = sched;
    o.warmup_steps = warmup;
    o.total_steps = total;
    ulpt_optimizer *opt = NULL;
    ck_assert_int_eq(ulpt_optimizer_create(&opt, p, &o), ULPT_OK);
    return opt;
}

/* 10 parameters (n=2, r=2, d=3), all set to `value`. */
static ulpt_prompt *flat_prompt(float value)
{
    ulpt_prompt *p = test_prompt(2, 2, 3, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        ulpt_prompt_params(p)[i] = value;
    return p;
}

static void set_grads(ulpt_prompt *p, float value)
{
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        ulpt_prompt_grads(p)[i] = value;
}

TEST(sgd_momentum_matches_hand_computed_steps)
{
    /* p0 = 1, g = 1, lr 0.1, momentum 0.9: buf 1, 1.9, 2.71 -> p 0.9, 0.71, 0.439 */
    static const double expect[] = {0.9, 0.71, 0.439};
    ulpt_prompt *p = flat_prompt(1.0f);
    ulpt_optimizer *o = make_opt(p, ULPT_OPT_SGD, 0.1, 0, 0.9, 0, ULPT_SCHED_CONSTANT, 0, 0);
    for (int t = 0; t < 3; t++) {
        set_grads(p, 1.0f);
        ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
        for (size_t i = 0; i < 10; i++)
            ck_assert_double_eq_tol(ulpt_prompt_params(p)[i], expect[t], 1e-6);
    }
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST_LOOP(adam_first_step_moves_by_lr_and_adamw_decays_first, 0, 3)
{
    /* Bias-corrected first step: m_hat/sqrt(v_hat) = sign(g), so p moves by lr.
       Adam's L2 decay only changes g (2 -> 2.1); AdamW first scales p by 1 - lr*wd. */
    static const struct {
        int kind;
        double wd, expect;
    } c[] = {
        {ULPT_OPT_ADAM, 0.0, 0.9},
        {ULPT_OPT_ADAM, 0.1, 0.9},
        {ULPT_OPT_ADAMW, 0.1, 0.89},
    };
    ulpt_prompt *p = flat_prompt(1.0f);
    ulpt_optimizer *o = make_opt(p, c[_i].kind, 0.1, c[_i].wd, 0, 0, ULPT_SCHED_CONSTANT, 0, 0);
    set_grads(p, 2.0f);
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    for (size_t i = 0; i < 10; i++)
        ck_assert_double_eq_tol(ulpt_prompt_params(p)[i], c[_i].expect, 1e-6);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 1);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(clipping_scales_to_max_norm_in_place)
{
    ulpt_prompt *p = flat_prompt(0.0f);
    ulpt_optimizer *o = make_opt(p, ULPT_OPT_SGD, 1.0, 0, 0, 1.0, ULPT_SCHED_CONSTANT, 0, 0);
    float *g = ulpt_prompt_grads(p);
    set_grads(p, 0.0f);
    g[0] = 3, g[9] = 4; /* norm 5 */
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    double coef = 1.0 / (5.0 + 1e-6);
    ck_assert_double_eq_tol(g[0], 3 * coef, 1e-7); /* clipped in place, not zeroed */
    ck_assert_double_eq_tol(g[9], 4 * coef, 1e-7);
    ck_assert_double_eq_tol(ulpt_prompt_params(p)[0], -3 * coef, 1e-7);
    ck_assert_double_eq_tol(ulpt_prompt_params(p)[9], -4 * coef, 1e-7);
    /* below the limit nothing is scaled */
    set_grads(p, 0.0f);
    g[1] = 0.5f;
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    ck_assert_float_eq(g[1], 0.5f);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST_LOOP(schedules_follow_the_warmup_and_decay_formulas, 0, 16)
{
    /* lr 1, warmup 4, total 12 */
    static const struct {
        int sched;
        uint64_t t;
        double m;
    } c[] = {
        {ULPT_SCHED_CONSTANT, 0, 0.0},
        {ULPT_SCHED_CONSTANT, 2, 0.5},
        {ULPT_SCHED_CONSTANT, 4, 1.0},
        {ULPT_SCHED_CONSTANT, 50, 1.0},
        {ULPT_SCHED_LINEAR, 1, 0.25},
        {ULPT_SCHED_LINEAR, 4, 1.0},
        {ULPT_SCHED_LINEAR, 8, 0.5},
        {ULPT_SCHED_LINEAR, 10, 0.25},
        {ULPT_SCHED_LINEAR, 12, 0.0},
        {ULPT_SCHED_LINEAR, 30, 0.0},
        {ULPT_SCHED_COSINE, 3, 0.75},
        {ULPT_SCHED_COSINE, 4, 1.0},
        {ULPT_SCHED_COSINE, 6, 0.8535533905932737},
        {ULPT_SCHED_COSINE, 8, 0.5},
        {ULPT_SCHED_COSINE, 12, 0.0},
        {ULPT_SCHED_COSINE, 20, 0.0},
    };
    ulpt_prompt *p = flat_prompt(0.0f);
    ulpt_optimizer *o = make_opt(p, ULPT_OPT_SGD, 1.0, 0, 0, 0, c[_i].sched, 4, 12);
    set_grads(p, 0.0f);
    for (uint64_t t = 0; t < c[_i].t; t++)
        ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), c[_i].t);
    ck_assert_double_eq_tol(ulpt_optimizer_lr(o), c[_i].m, 1e-7);
    /* the double is the rate itself, the float its rounding */
    ck_assert_double_eq_tol(ulpt_optimizer_lr_double(o), c[_i].m, 1e-15);
    ck_assert(ulpt_optimizer_lr(o) == (float)ulpt_optimizer_lr_double(o));
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* ---- a double-precision re-implementation of torch.optim ------------------------- */

typedef struct {
    int kind, sched;
    double lr, wd, mom, clip, b1, b2, eps;
    uint64_t warmup, total;
} ref_cfg;

static double ref_lr(const ref_cfg *c, uint64_t t)
{
    if (t < c->warmup)
        return c->lr * (double)t / (double)c->warmup;
    double span = (double)(c->total - c->warmup), done = (double)(t - c->warmup);
    if (c->sched == ULPT_SCHED_LINEAR)
        return c->lr * fmax(0.0, (span - done) / span);
    if (c->sched == ULPT_SCHED_COSINE)
        return c->lr * 0.5 * (1 + cos(3.14159265358979323846 * fmin(1.0, done / span)));
    return c->lr;
}

static void ref_step(const ref_cfg *c, uint64_t t, size_t n, double *p, double *g, double *m,
                     double *v)
{
    double lr = ref_lr(c, t - 1), sq = 0;
    for (size_t i = 0; i < n; i++)
        sq += g[i] * g[i];
    if (c->clip > 0 && c->clip / (sqrt(sq) + 1e-6) < 1)
        for (size_t i = 0; i < n; i++)
            g[i] *= c->clip / (sqrt(sq) + 1e-6);
    for (size_t i = 0; i < n; i++) {
        if (c->kind == ULPT_OPT_SGD) {
            double d = g[i] + c->wd * p[i];
            m[i] = t == 1 ? d : c->mom * m[i] + d;
            p[i] -= lr * (c->mom != 0 ? m[i] : d);
            continue;
        }
        double gi = g[i];
        if (c->kind == ULPT_OPT_ADAMW)
            p[i] *= 1 - lr * c->wd;
        else
            gi += c->wd * p[i];
        m[i] = c->b1 * m[i] + (1 - c->b1) * gi;
        v[i] = c->b2 * v[i] + (1 - c->b2) * gi * gi;
        double mh = m[i] / (1 - pow(c->b1, (double)t));
        double vh = v[i] / (1 - pow(c->b2, (double)t));
        p[i] -= lr * mh / (sqrt(vh) + c->eps);
    }
}

static const ref_cfg traj[] = {
    {ULPT_OPT_SGD, ULPT_SCHED_CONSTANT, 0.05, 0.0, 0.9, 0.0, 0, 0, 0, 0, 0},
    {ULPT_OPT_SGD, ULPT_SCHED_LINEAR, 0.05, 0.01, 0.9, 1.0, 0, 0, 0, 5, 30},
    {ULPT_OPT_SGD, ULPT_SCHED_COSINE, 0.1, 0.0, 0.0, 0.5, 0, 0, 0, 3, 20},
    {ULPT_OPT_ADAM, ULPT_SCHED_CONSTANT, 0.01, 0.0, 0, 0.0, 0.9, 0.999, 1e-8, 0, 0},
    {ULPT_OPT_ADAM, ULPT_SCHED_LINEAR, 0.01, 0.05, 0, 1.0, 0.8, 0.99, 1e-6, 4, 25},
    {ULPT_OPT_ADAMW, ULPT_SCHED_CONSTANT, 0.01, 0.01, 0, 0.0, 0.9, 0.999, 1e-8, 2, 0},
    {ULPT_OPT_ADAMW, ULPT_SCHED_COSINE, 0.6, 1e-5, 0, 1.0, 0.9, 0.999, 1e-8, 5, 25},
    {ULPT_OPT_ADAMW, ULPT_SCHED_LINEAR, 0.02, 0.1, 0, 0.3, 0.9, 0.95, 1e-8, 0, 20},
};

TEST_LOOP(trajectories_match_double_precision_reference, 0, (int)(sizeof traj / sizeof traj[0]))
{
    const ref_cfg *c = &traj[_i];
    ulpt_prompt *p = test_prompt(3, 2, 5, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    test_perturb(p, 11);
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.kind = c->kind;
    oo.schedule = c->sched;
    oo.lr = c->lr;
    oo.weight_decay = c->wd;
    oo.momentum = c->mom;
    oo.max_grad_norm = c->clip;
    if (c->kind != ULPT_OPT_SGD)
        oo.beta1 = c->b1, oo.beta2 = c->b2, oo.eps = c->eps;
    oo.warmup_steps = c->warmup;
    oo.total_steps = c->total;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);

    const size_t n = ulpt_prompt_num_params(p);
    double *x = calloc(4 * n, sizeof *x), *g = x + n, *m = g + n, *v = m + n;
    for (size_t i = 0; i < n; i++)
        x[i] = ulpt_prompt_params(p)[i];
    uint64_t st = 1000 + (uint64_t)_i;
    for (uint64_t t = 1; t <= 30; t++) {
        ck_assert_double_eq_tol(ulpt_optimizer_lr(o), ref_lr(c, t - 1), 1e-7 * c->lr);
        for (size_t i = 0; i < n; i++) {
            float gi = (float)(0.8 * test_uniform(&st));
            ulpt_prompt_grads(p)[i] = gi;
            g[i] = gi;
        }
        ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
        ref_step(c, t, n, x, g, m, v);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(fabs(ulpt_prompt_params(p)[i] - x[i]) <= 2e-5 * (1 + fabs(x[i])),
                          "step %llu param %zu: %.9g, reference %.9g", (unsigned long long)t, i,
                          ulpt_prompt_params(p)[i], x[i]);
    }
    free(x);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST_LOOP(step_refuses_nonfinite_gradients_and_changes_nothing, 0, 2)
{
    ulpt_prompt *p = test_prompt(2, 2, 3, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o = make_opt(p, ULPT_OPT_ADAMW, 0.1, 0.01, 0, 1.0, ULPT_SCHED_CONSTANT, 0, 0);
    set_grads(p, 0.5f);
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    float before[10], grads[10];
    memcpy(before, ulpt_prompt_params(p), sizeof before);
    set_grads(p, 0.5f);
    ulpt_prompt_grads(p)[4] = _i ? INFINITY : NAN;
    memcpy(grads, ulpt_prompt_grads(p), sizeof grads);
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_ERR_NONFINITE);
    ck_assert_str_ne(ulpt_last_error(), "");
    ck_assert_mem_eq(ulpt_prompt_params(p), before, sizeof before);
    ck_assert_mem_eq(ulpt_prompt_grads(p), grads, sizeof grads);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 1);
    /* and the moments were not touched: the next good step equals a fresh run's */
    ulpt_prompt *q = test_prompt(2, 2, 3, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *oq = make_opt(q, ULPT_OPT_ADAMW, 0.1, 0.01, 0, 1.0, ULPT_SCHED_CONSTANT, 0, 0);
    set_grads(q, 0.5f);
    ck_assert_int_eq(ulpt_optimizer_step(oq), ULPT_OK);
    for (int k = 0; k < 2; k++) {
        set_grads(p, 0.5f);
        set_grads(q, 0.5f);
        ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
        ck_assert_int_eq(ulpt_optimizer_step(oq), ULPT_OK);
    }
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q), sizeof before);
    ulpt_optimizer_free(oq);
    ulpt_prompt_free(q);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(defaults_are_torch_adamw)
{
    const ulpt_optimizer_options d = ULPT_OPTIMIZER_OPTIONS_INIT;
    ck_assert_int_eq(d.kind, ULPT_OPT_ADAMW);
    ck_assert_double_eq(d.lr, 1e-3);
    ck_assert_double_eq(d.beta1, 0.9);
    ck_assert_double_eq(d.beta2, 0.999);
    ck_assert_double_eq(d.eps, 1e-8);
    ck_assert_double_eq(d.weight_decay, ULPT_WEIGHT_DECAY_DEFAULT);
    ck_assert_double_eq(d.max_grad_norm, 0);
    ck_assert_int_eq(d.schedule, ULPT_SCHED_CONSTANT);
    /* NULL options give the same optimizer as the defaults */
    ulpt_prompt *p = flat_prompt(1.0f), *q = flat_prompt(1.0f);
    ulpt_optimizer *a, *b;
    ck_assert_int_eq(ulpt_optimizer_create(&a, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&b, q, &d), ULPT_OK);
    set_grads(p, 0.3f);
    set_grads(q, 0.3f);
    ulpt_optimizer_step(a);
    ulpt_optimizer_step(b);
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q), 10 * sizeof(float));
    ck_assert_ptr_eq(ulpt_optimizer_prompt(a), p);
    ulpt_optimizer_free(a);
    ulpt_optimizer_free(b);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}

/* torch's weight-decay default depends on the optimizer: AdamW 0.01, Adam and SGD 0. */
TEST_LOOP(default_weight_decay_is_torchs_for_each_kind, ULPT_OPT_SGD, ULPT_OPT_ADAMW + 1)
{
    static const double torch_wd[] = { 0.0, 0.0, 0.01 }; /* SGD, Adam, AdamW */
    const int kind = _i;
    ulpt_prompt *p = flat_prompt(1.0f), *q = flat_prompt(1.0f);
    ulpt_optimizer_options d = ULPT_OPTIMIZER_OPTIONS_INIT, e;
    d.kind = kind;
    d.lr = 0.1;
    e = d;
    e.weight_decay = torch_wd[kind];
    ulpt_optimizer *a, *b;
    ck_assert_int_eq(ulpt_optimizer_create(&a, p, &d), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&b, q, &e), ULPT_OK);
    for (int t = 0; t < 3; t++) {
        set_grads(p, 0.3f);
        set_grads(q, 0.3f);
        ulpt_optimizer_step(a);
        ulpt_optimizer_step(b);
    }
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q), 10 * sizeof(float));
    ulpt_optimizer_free(a);
    ulpt_optimizer_free(b);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}

/* ulpt_optimizer_get_options gives back what was created, with weight decay resolved
 * per kind; it writes only the fields of the caller's version and refuses others. */
TEST_LOOP(get_options_returns_the_options_as_created, ULPT_OPT_SGD, ULPT_OPT_ADAMW + 1)
{
    ulpt_prompt *p = flat_prompt(1.0f);
    ulpt_optimizer_options in = ULPT_OPTIMIZER_OPTIONS_INIT;
    in.kind = _i;
    in.lr = 0.25;
    in.beta1 = 0.8;
    in.momentum = _i == ULPT_OPT_SGD ? 0.5 : 0.0;
    in.max_grad_norm = 3.0;
    in.schedule = ULPT_SCHED_COSINE;
    in.warmup_steps = 7;
    in.total_steps = 70;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &in), ULPT_OK);
    ulpt_optimizer_options out = ULPT_OPTIMIZER_OPTIONS_INIT;
    ck_assert_int_eq(ulpt_optimizer_get_options(&out, o), ULPT_OK);
    ck_assert_uint_eq(out.version, ULPT_OPTIMIZER_OPTIONS_VERSION);
    ck_assert_int_eq(out.kind, in.kind);
    ck_assert_double_eq(out.lr, 0.25);
    ck_assert_double_eq(out.beta1, 0.8);
    ck_assert_double_eq(out.beta2, 0.999);
    ck_assert_double_eq(out.weight_decay, _i == ULPT_OPT_ADAMW ? 0.01 : 0.0);
    ck_assert_double_eq(out.momentum, in.momentum);
    ck_assert_double_eq(out.max_grad_norm, 3.0);
    ck_assert_int_eq(out.schedule, ULPT_SCHED_COSINE);
    ck_assert_uint_eq(out.warmup_steps, 7);
    ck_assert_uint_eq(out.total_steps, 70);
    /* an optimizer created from what it reports behaves the same */
    ulpt_prompt *q = flat_prompt(1.0f);
    ulpt_optimizer *o2;
    ck_assert_int_eq(ulpt_optimizer_create(&o2, q, &out), ULPT_OK);
    for (int t = 0; t < 3; t++) {
        set_grads(p, 0.3f);
        set_grads(q, 0.3f);
        ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
        ck_assert_int_eq(ulpt_optimizer_step(o2), ULPT_OK);
    }
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q), 10 * sizeof(float));
    /* unknown versions and NULLs are refused, leaving *opts alone */
    ulpt_optimizer_options bad;
    memset(&bad, 0x5a, sizeof bad);
    bad.version = ULPT_OPTIMIZER_OPTIONS_VERSION + 1;
    ulpt_optimizer_options copy = bad;
    ck_assert_int_eq(ulpt_optimizer_get_options(&bad, o), ULPT_ERR_INVALID);
    ck_assert_mem_eq(&bad, &copy, sizeof bad);
    bad.version = 0;
    ck_assert_int_eq(ulpt_optimizer_get_options(&bad, o), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_optimizer_get_options(NULL, o), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_optimizer_get_options(&out, NULL), ULPT_ERR_INVALID);
    ulpt_optimizer_free(o);
    ulpt_optimizer_free(o2);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}
