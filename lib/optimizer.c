/* optimizer.c -- SGD with momentum, Adam and AdamW over a prompt's flat parameters,
 * with global-norm clipping and a warmup/decay schedule.
 *
 * The update rules are torch.optim's, element for element, so that a run can be checked
 * against PyTorch step by step: hyperparameters and schedule factors in double, the
 * per-element arithmetic in float like PyTorch's float32 kernels. */
#include "internal.h"

#include <math.h>
#include <string.h>


static int bad_range(double x, double lo, double hi) { return !(x >= lo && x < hi); }


/* The bytes of ulpt_optimizer_options each version has (see prompt.c). */
ULPT__VERSIONED(optimizer_options_v, ulpt_optimizer_options, ULPT_OPTIMIZER_OPTIONS_VERSION, "options",
                ULPT_OPTIMIZER_OPTIONS_INIT);

int ulpt_optimizer_options_init(ulpt_optimizer_options *opts, unsigned version)
{
    if (!opts)
        return ULPT_FAIL(ULPT_ERR_INVALID, "opts is NULL");
    return ulpt__versioned_write(__func__, &optimizer_options_v, opts, version,
                                 &optimizer_options_v_defaults);
}

ULPT__MUST_CHECK static int check_optimizer_options(const char *func, const ulpt_optimizer_options *o)
{
    if (o->kind < ULPT_OPT_SGD || o->kind > ULPT_OPT_ADAMW)
        return BAD_OPTION("unknown optimizer kind %d", o->kind);
    if (o->schedule < ULPT_SCHED_CONSTANT || o->schedule > ULPT_SCHED_COSINE)
        return BAD_OPTION("unknown schedule %d", o->schedule);
    if (!(o->lr > 0) || !isfinite(o->lr))
        return BAD_OPTION("lr %g is not a finite number > 0", o->lr);
    if (bad_range(o->beta1, 0, 1) || bad_range(o->beta2, 0, 1))
        return BAD_OPTION("betas (%g, %g) are not in [0, 1)", o->beta1, o->beta2);
    if (!(o->eps > 0) || !isfinite(o->eps))
        return BAD_OPTION("eps %g is not a finite number > 0", o->eps);
    if (bad_range(o->weight_decay, 0, INFINITY))
        return BAD_OPTION("weight_decay %g is not a finite number >= 0", o->weight_decay);
    if (bad_range(o->momentum, 0, 1))
        return BAD_OPTION("momentum %g is not in [0, 1)", o->momentum);
    if (bad_range(o->max_grad_norm, 0, INFINITY))
        return BAD_OPTION("max_grad_norm %g is not a finite number >= 0", o->max_grad_norm);
    if (o->schedule != ULPT_SCHED_CONSTANT && o->total_steps <= o->warmup_steps)
        return BAD_OPTION("total_steps %llu must exceed warmup_steps %llu for a decaying schedule",
                           (unsigned long long)o->total_steps, (unsigned long long)o->warmup_steps);
    return ULPT_OK;
}

int ulpt_optimizer_create(ulpt_optimizer **out, ulpt_prompt *prompt,
                          const ulpt_optimizer_options *opts)
{
    if (!out || !prompt)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : "prompt");
    ulpt_optimizer_options opt;
    int rc = ulpt__versioned_read(__func__, &optimizer_options_v, opts, &opt);
    if (rc)
        return rc;
    if (opt.weight_decay == ULPT_WEIGHT_DECAY_DEFAULT)
        opt.weight_decay = opt.kind == ULPT_OPT_ADAMW ? 0.01 : 0.0;
    if ((rc = check_optimizer_options(__func__, &opt)) != ULPT_OK)
        return rc;

    size_t n = ulpt_prompt_num_params(prompt);
    ulpt_allocator al = ulpt__allocator();
    ulpt_optimizer *o = ulpt__calloc(&al, 1, sizeof *o);
    float *buf = o ? ulpt__calloc(&al, 2 * n, sizeof(float)) : NULL; /* n <= SIZE_MAX / 8 */
    if (!buf) {
        ulpt__free(&al, o);
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for an optimizer over %zu parameters", n);
    }
    /* Last, as it is the one step that changes the prompt (all or nothing): E and G for
     * ulpt_train_step, so that no step allocates.  The buffers may move: no step or
     * forward may be running on the prompt. */
    rc = ulpt__lock_hold(__func__, &prompt->lock, "prompt", 1);
    if (!rc) {
        rc = ulpt__prompt_reserve(__func__, prompt, 1, 1);
        ulpt__lock_release(&prompt->lock);
    }
    if (rc) {
        ulpt__free(&al, buf);
        ulpt__free(&al, o);
        return rc;
    }
    o->al = al;
    ulpt__lock_init(&o->lock);
    o->prompt = prompt;
    o->opt = opt;
    o->opt.version = ULPT_OPTIMIZER_OPTIONS_VERSION;
    o->n = n;
    o->m = buf;
    o->v = buf + n;
    *out = o;
    return ULPT_OK;
}

double ulpt__optimizer_bytes(double n_params, double nd)
{
    _Static_assert(sizeof(ulpt_optimizer) <= ULPT__HANDLE_BYTES, "a handle's bytes (internal.h)");
    return ULPT__HANDLE_BYTES + 8 * n_params + ulpt__work_bytes(n_params, nd, 1, 1);
}

void ulpt_optimizer_free(ulpt_optimizer *o)
{
    if (!o)
        return;
    ulpt_allocator al = o->al;
    ulpt__free(&al, o->m);
    ulpt__free(&al, o);
}

/* m(t), the schedule's factor for 0-based step t (Hugging Face's lambdas). */
static double schedule_factor(const ulpt_optimizer_options *o, uint64_t t)
{
    if (t < o->warmup_steps)
        return (double)t / (double)o->warmup_steps;
    double span = (double)(o->total_steps - o->warmup_steps);
    double done = (double)(t - o->warmup_steps);
    switch (o->schedule) {
    case ULPT_SCHED_LINEAR:
        return t >= o->total_steps ? 0.0 : (span - done) / span;
    case ULPT_SCHED_COSINE: {
        const double pi = 3.14159265358979323846;
        return t >= o->total_steps ? 0.0 : 0.5 * (1.0 + cos(pi * done / span));
    }
    default:
        return 1.0;
    }
}

static double current_lr(const ulpt_optimizer *o)
{
    return o->opt.lr * schedule_factor(&o->opt, o->steps);
}

/* The sum of squares in double, in four lanes so that it vectorises. */
static double sum_squares(const float *restrict g, size_t n)
{
    double acc[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++)
            acc[l] += (double)g[i + l] * g[i + l];
    for (; i < n; i++)
        acc[0] += (double)g[i] * g[i];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

int ulpt__optimizer_step(const char *func, ulpt_optimizer *o)
{
    /* restrict: the four arrays never overlap, which lets the loops below vectorise */
    float *restrict p = ulpt_prompt_params(o->prompt), *restrict g = ulpt_prompt_grads(o->prompt);
    float *restrict m = o->m, *restrict v = o->v;
    const size_t n = o->n;
    const ulpt_optimizer_options *op = &o->opt;

    /* The norm doubles as the finiteness check: refuse before touching anything. */
    double sq = sum_squares(g, n);
    if (!isfinite(sq))
        return ulpt__error(ULPT_ERR_NONFINITE, func,
                           "a gradient is NaN or infinite (or overflows the norm)");
    if (op->max_grad_norm > 0) {
        float coef = (float)(op->max_grad_norm / (sqrt(sq) + 1e-6));
        if (coef < 1.0f)
            for (size_t i = 0; i < n; i++)
                g[i] *= coef;
    }

    const double lr = current_lr(o);
    const float wd = (float)op->weight_decay;
    o->steps++;
    if (op->kind == ULPT_OPT_SGD) {
        const float mom = (float)op->momentum, lrf = (float)lr;
        const int first = o->steps == 1;
        for (size_t i = 0; i < n; i++) {
            float d = wd != 0 ? g[i] + wd * p[i] : g[i];
            if (mom != 0) {
                m[i] = first ? d : mom * m[i] + d;
                d = m[i];
            }
            p[i] -= lrf * d;
        }
        return ULPT_OK;
    }

    const double bc1 = 1.0 - pow(op->beta1, (double)o->steps);
    const double bc2 = 1.0 - pow(op->beta2, (double)o->steps);
    const float b2 = (float)op->beta2;
    const float one_m_b1 = (float)(1.0 - op->beta1), one_m_b2 = (float)(1.0 - op->beta2);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)op->eps;
    const float decay = (float)(1.0 - lr * op->weight_decay);
    const int adamw = op->kind == ULPT_OPT_ADAMW;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        if (adamw)
            p[i] *= decay;
        else if (wd != 0)
            gi += wd * p[i];
        m[i] += (gi - m[i]) * one_m_b1; /* torch's lerp for weights < 0.5 */
        v[i] = v[i] * b2 + one_m_b2 * gi * gi;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * (m[i] / denom);
    }
    return ULPT_OK;
}

int ulpt_optimizer_step(ulpt_optimizer *o)
{
    if (!o)
        return ULPT_FAIL(ULPT_ERR_INVALID, "optimizer is NULL");
    int rc = ulpt__lock_hold(__func__, &o->lock, "optimizer", 1);
    if (rc)
        return rc;
    if (!(rc = ulpt__lock_hold(__func__, &o->prompt->lock, "optimizer's prompt", 1))) {
        rc = ulpt__optimizer_step(__func__, o);
        ulpt__lock_release(&o->prompt->lock);
    }
    ulpt__lock_release(&o->lock);
    return rc;
}

uint64_t ulpt_optimizer_step_count(const ulpt_optimizer *o) { return o ? o->steps : 0; }
float ulpt_optimizer_lr(const ulpt_optimizer *o) { return o ? (float)current_lr(o) : 0.0f; }
double ulpt_optimizer_lr_double(const ulpt_optimizer *o) { return o ? current_lr(o) : 0.0; }
ulpt_prompt *ulpt_optimizer_prompt(const ulpt_optimizer *o) { return o ? o->prompt : NULL; }

int ulpt_optimizer_get_options(ulpt_optimizer_options *opts, const ulpt_optimizer *o)
{
    if (!opts || !o)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !opts ? "opts" : "optimizer");
    return ulpt__versioned_write(__func__, &optimizer_options_v, opts, opts->version, &o->opt);
}
