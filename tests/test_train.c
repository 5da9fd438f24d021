/* test_train.c -- ulpt_train_step against a host loss with a known optimum, and the
 * promise that a failed step changes nothing. */
#include "test.h"

TEST_TIMEOUT(60); /* seconds per test in this file */

/* The host: L = 1/2 mean((E - T)^2) over n x d, with T made by a hidden ULPT prompt
 * that shares the projection seed, so L = 0 is reachable. */
typedef struct {
    const float *target;
    int fail; /* 1: return an error; 2: NaN gradient; 3: NaN loss; 4: inf gradient */
    int calls;
} host;

static int host_loss(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    host *h = user;
    h->calls++;
    if (h->fail == 1)
        return -42;
    const size_t nd = (size_t)n * d;
    double l = 0;
    for (size_t k = 0; k < nd; k++) {
        ck_assert_float_eq(grad[k], 0.0f); /* grad arrives zeroed */
        double diff = (double)e[k] - h->target[k];
        l += 0.5 * diff * diff / nd;
        grad[k] = (float)(diff / nd);
    }
    *loss = l;
    if (h->fail == 2)
        grad[nd / 2] = NAN;
    if (h->fail == 3)
        *loss = NAN;
    if (h->fail == 4)
        grad[0] = -INFINITY;
    return 0;
}

/* A host whose G is finite but near FLT_MAX everywhere: backward's sums overflow. */
static int huge_gradient_host(void *user, const float *e, uint32_t n, uint32_t d, float *grad,
                              double *loss)
{
    (void)user, (void)e;
    for (size_t k = 0; k < (size_t)n * d; k++)
        grad[k] = 3e38f;
    *loss = 1.0;
    return 0;
}

static float *hidden_target(uint32_t n, uint32_t r, uint32_t d, uint32_t groups)
{
    ulpt_prompt *t = test_prompt(n, r, d, groups, ULPT_PROJ_XAVIER_UNIFORM, 0);
    float *x = ulpt_prompt_params(t);
    uint64_t st = 8;
    for (size_t i = 0; i < ulpt_prompt_num_params(t); i++) /* far from the start */
        x[i] = (float)(2 * test_uniform(&st));
    float *e = malloc((size_t)n * d * sizeof *e);
    ulpt_prompt_forward(t, e, d);
    ulpt_prompt_free(t);
    return e;
}

TEST_LOOP(train_step_drives_a_known_optimum_to_near_zero_loss, 0, 2)
{
    const uint32_t n = 20, r = 2, d = 64, groups = _i ? 2 : 1;
    float *target = hidden_target(n, r, d, groups);
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = n, po.rank = r, po.dim = d, po.n_groups = groups;
    po.projection_seed = 1234; /* the hidden prompt's projection */
    po.init_seed = 5;          /* but its own start */
    ulpt_prompt *p;
    ck_assert_int_eq(ulpt_prompt_create(&p, &po), ULPT_OK);
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.lr = 0.05;
    oo.weight_decay = 0;
    oo.schedule = ULPT_SCHED_COSINE;
    oo.warmup_steps = 20;
    oo.total_steps = 1500;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    host h = {target, 0, 0};
    double first = 0, loss = 0;
    for (int t = 0; t < 1500; t++) {
        ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, &loss), ULPT_OK);
        if (t == 0)
            first = loss;
    }
    ck_assert_int_eq(h.calls, 1500);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 1500);
    ck_assert_msg(first > 0.1, "initial loss %g", first);
    ck_assert_msg(loss < 1e-4 * first, "loss %g after 1500 steps, started at %g", loss, first);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    free(target);
}

TEST_LOOP(failed_step_leaves_parameters_gradients_and_state_bit_identical, 0, 4)
{
    static const int expect[] = {0, ULPT_ERR_CALLBACK, ULPT_ERR_NONFINITE, ULPT_ERR_NONFINITE,
                                 ULPT_ERR_NONFINITE};
    const int fail = _i + 1;
    float *target = hidden_target(8, 2, 16, 1);
    ulpt_prompt *p = test_prompt(8, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *q = test_prompt(8, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o, *oq;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&oq, q, NULL), ULPT_OK);
    host h = {target, 0, 0};
    for (int t = 0; t < 3; t++) { /* some optimizer state first */
        ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, NULL), ULPT_OK);
        ck_assert_int_eq(ulpt_train_step(q, oq, host_loss, &h, NULL), ULPT_OK);
    }
    const size_t np = ulpt_prompt_num_params(p);
    float *params = malloc(np * sizeof *params), *grads = malloc(np * sizeof *grads);
    memcpy(params, ulpt_prompt_params(p), np * sizeof *params);
    memcpy(grads, ulpt_prompt_grads(p), np * sizeof *grads);
    float lr = ulpt_optimizer_lr(o);

    h.fail = fail;
    double loss = 123.0;
    ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, &loss), expect[fail]);
    ck_assert_str_ne(ulpt_last_error(), "");
    ck_assert_double_eq(loss, 123.0); /* out-parameter untouched */
    ck_assert_mem_eq(ulpt_prompt_params(p), params, np * sizeof *params);
    ck_assert_mem_eq(ulpt_prompt_grads(p), grads, np * sizeof *grads);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 3);
    ck_assert_float_eq(ulpt_optimizer_lr(o), lr);

    /* the moments too: the next good steps match a twin that never failed */
    h.fail = 0;
    for (int t = 0; t < 2; t++) {
        ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, NULL), ULPT_OK);
        ck_assert_int_eq(ulpt_train_step(q, oq, host_loss, &h, NULL), ULPT_OK);
    }
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q), np * sizeof *params);
    free(params), free(grads), free(target);
    ulpt_optimizer_free(o);
    ulpt_optimizer_free(oq);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}

/* A NaN parameter stops the step at forward: the host never sees an E (not even the
 * previous step's), and nothing changes.  Likewise a G that is finite but so large
 * that backward's sums overflow. */
TEST_LOOP(step_refused_at_forward_or_by_overflow_changes_nothing, 0, 2)
{
    float *target = hidden_target(8, 2, 16, 1);
    ulpt_prompt *p = test_prompt(8, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    host h = {target, 0, 0};
    for (int t = 0; t < 3; t++)
        ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, NULL), ULPT_OK);
    const size_t np = ulpt_prompt_num_params(p), shift7 = 8 * 2 + 16 + 7;
    float *x = ulpt_prompt_params(p);
    float *params = malloc(np * sizeof *params), *grads = malloc(np * sizeof *grads);
    const float keep = x[shift7];
    if (_i == 0)
        x[shift7] = NAN;
    else
        h.target = NULL; /* the host below writes huge finite gradients */
    memcpy(params, x, np * sizeof *params);
    memcpy(grads, ulpt_prompt_grads(p), np * sizeof *grads);
    const int calls = h.calls;
    double loss = 123.0;
    if (_i == 0) {
        ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, &loss), ULPT_ERR_NONFINITE);
        ck_assert_str_eq(ulpt_last_error(), "ulpt_train_step: parameter shift[7] is nan");
        ck_assert_int_eq(h.calls, calls); /* the host was never called */
    } else {
        ck_assert_int_eq(ulpt_train_step(p, o, huge_gradient_host, &h, &loss),
                         ULPT_ERR_NONFINITE);
        ck_assert_str_eq(ulpt_last_error(), "ulpt_train_step: the gradient overflowed in "
                                            "backward; nothing was changed");
    }
    ck_assert_double_eq(loss, 123.0);
    ck_assert_mem_eq(ulpt_prompt_params(p), params, np * sizeof *params);
    ck_assert_mem_eq(ulpt_prompt_grads(p), grads, np * sizeof *grads);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 3);
    x[shift7] = keep;
    h.target = target;
    ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, NULL), ULPT_OK);
    free(params), free(grads), free(target);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(train_step_equals_forward_backward_step_by_hand)
{
    float *target = hidden_target(8, 2, 16, 2);
    ulpt_prompt *p = test_prompt(8, 2, 16, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *q = test_prompt(8, 2, 16, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o, *oq;
    ulpt_optimizer_create(&o, p, NULL);
    ulpt_optimizer_create(&oq, q, NULL);
    host h = {target, 0, 0};
    float e[8 * 16], g[8 * 16];
    for (int t = 0; t < 4; t++) {
        double l1, l2;
        ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, &l1), ULPT_OK);
        ulpt_prompt_forward(q, e, 16);
        memset(g, 0, sizeof g);
        host_loss(&h, e, 8, 16, g, &l2);
        ulpt_prompt_zero_grad(q);
        ulpt_prompt_backward(q, g, 16);
        ulpt_optimizer_step(oq);
        ck_assert_double_eq(l1, l2);
    }
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q),
                     ulpt_prompt_num_params(p) * sizeof(float));
    ulpt_optimizer_free(o);
    ulpt_optimizer_free(oq);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
    free(target);
}

TEST(train_step_refuses_an_optimizer_of_another_prompt)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *q = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ulpt_optimizer_create(&o, q, NULL);
    host h = {NULL, 1, 0};
    ck_assert_int_eq(ulpt_train_step(p, o, host_loss, &h, NULL), ULPT_ERR_MISMATCH);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "another prompt"));
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}
