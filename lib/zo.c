/* zo.c -- forward-only (zeroth-order) training: the two-point SPSA estimate
 *
 *     g = (1/q) sum_j (L(theta + eps u_j) - L(theta - eps u_j)) / (2 eps) u_j
 *
 * with directions u_j regenerated from a counter-based stream (philox.c) rather than
 * stored, and an ordinary optimizer step on g.  A step copies theta aside, writes each
 * perturbed theta into the prompt only long enough to run forward into the batch
 * buffer, and restores theta from the copy (bit for bit) before the host sees anything;
 * every check happens before the gradients, the optimizer or the position change. */
#include "internal.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* and those found inside a step, the step */
#define STEP_FUNC "ulpt_zo_step"
#define STEP_FAIL(code, ...) ulpt__error((code), STEP_FUNC, __VA_ARGS__)

/* directions <= 2^30 keeps 2q in a uint32; elements < 2^34 keeps the block index of the
 * stream in one counter word */
#define MAX_DIRECTIONS (1u << 30)
#define MAX_ELEMENTS ((uint64_t)1 << 34)

struct ulpt_zo {
    ulpt_allocator al;
    ulpt_prompt *prompt;
    ulpt_optimizer *opt;
    ulpt_zo_options o; /* batch resolved: 1..2q */
    float eps;         /* float32(epsilon), the step actually taken */
    uint64_t position; /* index of the next direction */
    size_t n_params, n_pert; /* parameters; the perturbed ones come first: [0, n_pert) */
    /* taken at creation so that no step allocates; the k perturbed prompts a callback
       call gets and the saved gradients are the prompt's working buffers (internal.h) */
    double *losses;   /* 2q */
    float *theta, *u; /* n_params each */
    ulpt_lock lock;   /* a step holds it; the position is what it writes (lock.c) */
};

/* The bytes of ulpt_zo_options each version has (see prompt.c). */
ULPT__VERSIONED(zo_options_v, ulpt_zo_options, ULPT_ZO_OPTIONS_VERSION, "options",
                ULPT_ZO_OPTIONS_INIT);

int ulpt_zo_options_init(ulpt_zo_options *opts, unsigned version)
{
    if (!opts)
        return ULPT_FAIL(ULPT_ERR_INVALID, "opts is NULL");
    return ulpt__versioned_write(__func__, &zo_options_v, opts, version, &zo_options_v_defaults);
}

int ulpt__zo_check_options(const char *func, ulpt_zo_options *o)
{
    if (!(o->epsilon > 0) || !isfinite(o->epsilon) || !((float)o->epsilon > 0) ||
        !isfinite((float)o->epsilon))
        return BAD_OPTION("epsilon %g is not a finite number > 0 in float32", o->epsilon);
    if (o->directions < 1 || o->directions > MAX_DIRECTIONS)
        return BAD_OPTION("directions %u is not in 1..%u", o->directions, MAX_DIRECTIONS);
    if (o->batch > 2 * o->directions)
        return BAD_OPTION("batch %u is past 2*directions = %u (0 means 2*directions)", o->batch,
                          2 * o->directions);
    if (o->distribution != ULPT_ZO_RADEMACHER && o->distribution != ULPT_ZO_GAUSSIAN)
        return BAD_OPTION("unknown distribution %d", o->distribution);
    if (o->perturb != ULPT_ZO_PERTURB_ALL && o->perturb != ULPT_ZO_PERTURB_Z)
        return BAD_OPTION("unknown perturb %d", o->perturb);
    if (o->batch == 0)
        o->batch = 2 * o->directions;
    return ULPT_OK;
}

int ulpt_zo_create(ulpt_zo **out, ulpt_prompt *p, ulpt_optimizer *opt, const ulpt_zo_options *opts)
{
    static const char func[] = "ulpt_zo_create";
    if (!out || !p || !opt)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : !p ? "prompt" : "optimizer");
    if (ulpt_optimizer_prompt(opt) != p)
        return ULPT_FAIL(ULPT_ERR_MISMATCH, "the optimizer was created for another prompt");
    ulpt_zo_options o;
    int rc = ulpt__versioned_read(func, &zo_options_v, opts, &o);
    if (!rc)
        rc = ulpt__zo_check_options(func, &o);
    if (rc)
        return rc;

    const size_t np = ulpt_prompt_num_params(p);
    if ((uint64_t)np >= MAX_ELEMENTS)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%zu parameters are past the stream's limit of 2^34",
                         np);
    size_t nd, batch_floats, floats, bytes;
    if (!ulpt__mul(ulpt_prompt_n_tokens(p), ulpt_prompt_dim(p), &nd) ||
        !ulpt__mul(nd, o.batch, &batch_floats) || np > (SIZE_MAX - batch_floats) / 2 ||
        !ulpt__mul(2 * np + batch_floats, sizeof(float), &floats) ||
        floats > SIZE_MAX - 2 * sizeof(double) * o.directions)
        return ULPT_FAIL(ULPT_ERR_INVALID, "batch %u of %zu-float prompts is too large", o.batch,
                         nd);
    bytes = 2 * np * sizeof(float) + 2 * sizeof(double) * o.directions;

    ulpt_allocator al = ulpt__allocator();
    ulpt_zo *z = ulpt__calloc(&al, 1, sizeof *z);
    void *buf = z ? ulpt__alloc(&al, bytes) : NULL;
    if (!buf) {
        ulpt__free(&al, z);
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for %zu bytes of forward-only buffers", bytes);
    }
    /* last, the one step that changes the prompt (all or nothing): k slots of E, which
       may move, so no step or forward may be running on it */
    rc = ulpt__lock_hold(func, &p->lock, "prompt", 1);
    if (!rc) {
        rc = ulpt__prompt_reserve(func, p, o.batch, 0);
        ulpt__lock_release(&p->lock);
    }
    if (rc) {
        ulpt__free(&al, buf);
        ulpt__free(&al, z);
        return rc;
    }
    z->al = al;
    ulpt__lock_init(&z->lock);
    z->prompt = p;
    z->opt = opt;
    z->o = o;
    z->o.version = ULPT_ZO_OPTIONS_VERSION;
    z->eps = (float)o.epsilon;
    z->n_params = np;
    z->n_pert = o.perturb == ULPT_ZO_PERTURB_Z
                    ? (size_t)ulpt_prompt_n_tokens(p) * ulpt_prompt_rank(p)
                    : np;
    z->losses = buf; /* doubles first: the block is aligned for them */
    z->theta = (float *)(z->losses + 2 * (size_t)o.directions);
    z->u = z->theta + np;
    *out = z;
    return ULPT_OK;
}

double ulpt__zo_bytes(const ulpt_zo_options *o, double n_params, double nd)
{
    _Static_assert(sizeof(ulpt_zo) <= ULPT__HANDLE_BYTES, "a handle's bytes (internal.h)");
    /* the optimizer reserved one G slot; E grows to batch slots (at least the one) */
    const double slots = o->batch > 1 ? o->batch : 1;
    return ULPT__HANDLE_BYTES + 8 * n_params + 16.0 * o->directions +
           ulpt__work_bytes(n_params, nd, slots, 1);
}

void ulpt_zo_free(ulpt_zo *zo)
{
    if (!zo)
        return;
    ulpt_allocator al = zo->al;
    ulpt__free(&al, zo->losses);
    ulpt__free(&al, zo);
}

/* u = direction `index`, zero past the perturbed parameters. */
static void direction(const ulpt_zo *z, uint64_t index, float *u)
{
    ulpt__zo_direction(u, z->n_pert, z->o.seed, index, z->o.distribution == ULPT_ZO_GAUSSIAN);
    memset(u + z->n_pert, 0, (z->n_params - z->n_pert) * sizeof(float));
}

/* Ask the host for the losses of the `count` prompts in the batch buffer, the first of
 * which is prompt `first` of the step; theta is back in place when this runs. */
static int call_host(ulpt_zo *z, ulpt_zo_loss_fn fn, void *user, uint32_t first, uint32_t count)
{
    const uint32_t n = ulpt_prompt_n_tokens(z->prompt), d = ulpt_prompt_dim(z->prompt);
    double *losses = z->losses + first;
    for (uint32_t c = 0; c < count; c++)
        losses[c] = NAN; /* one the host forgets to write fails the step */
    int rc = fn(user, z->prompt->work.e, count, n, d, losses);
    if (rc != 0)
        return STEP_FAIL(ULPT_ERR_CALLBACK, "the loss callback returned %d", rc);
    for (uint32_t c = 0; c < count; c++)
        if (!isfinite(losses[c]))
            return STEP_FAIL(ULPT_ERR_NONFINITE,
                             "the loss callback returned a loss of %g for prompt %u of the step "
                             "(direction %u, %s)",
                             losses[c], first + c, (first + c) / 2, (first + c) % 2 ? "minus" : "plus");
    return ULPT_OK;
}

/* The 2q losses of the step into z->losses; the prompt holds theta again on return. */
static int evaluate(ulpt_zo *z, ulpt_zo_loss_fn fn, void *user)
{
    float *theta = ulpt_prompt_params(z->prompt);
    const size_t np = z->n_params, npert = z->n_pert;
    const size_t nd = (size_t)ulpt_prompt_n_tokens(z->prompt) * ulpt_prompt_dim(z->prompt);
    const uint32_t d = ulpt_prompt_dim(z->prompt), slots = 2 * z->o.directions, k = z->o.batch;
    const float eps = z->eps;
    memcpy(z->theta, theta, np * sizeof(float));
    uint32_t first = 0; /* the step's index of the buffer's first prompt */
    for (uint32_t s = 0; s < slots; s++) {
        if (s % 2 == 0)
            direction(z, z->position + s / 2, z->u);
        const float sign = s % 2 ? -eps : eps;
        /* readers (a forward from the callback, or from another thread) must not see
           theta perturbed */
        int rc = ulpt__lock_write(STEP_FUNC, &z->prompt->lock, "prompt");
        if (rc)
            return rc;
        for (size_t i = 0; i < npert; i++)
            theta[i] = z->theta[i] + sign * z->u[i];
        rc = ulpt__prompt_forward_held(STEP_FUNC, z->prompt,
                                       z->prompt->work.e + (size_t)(s - first) * nd, d);
        memcpy(theta, z->theta, npert * sizeof(float));
        ulpt__lock_unwrite(&z->prompt->lock);
        if (rc) { /* forward's message names the parameter */
            char why[512];
            snprintf(why, sizeof why, "%s", ulpt_last_error());
            return STEP_FAIL(rc, "prompt %u of the step: %s", s, why);
        }
        if (s - first + 1 == k || s + 1 == slots) {
            rc = call_host(z, fn, user, first, s - first + 1);
            if (rc)
                return rc;
            first = s + 1;
        }
    }
    return ULPT_OK;
}

/* The step itself; the caller holds zo, its optimizer and its prompt. */
static int zo_run(double *loss, ulpt_zo *zo, ulpt_zo_loss_fn loss_fn, void *user)
{
    int rc = evaluate(zo, loss_fn, user);
    if (rc)
        return rc;

    /* g = sum_j c_j u_j, c_j = (L+ - L-) / (2 q eps), accumulated in direction order */
    const uint32_t q = zo->o.directions;
    const size_t np = zo->n_params, npert = zo->n_pert;
    double mean = 0;
    for (uint32_t j = 0; j < 2 * q; j++)
        mean += zo->losses[j] / (2.0 * q); /* divided first: finite losses, finite mean */
    for (uint32_t j = 0; j < q; j++) { /* each coefficient must fit a float */
        const double c = (zo->losses[2 * j] - zo->losses[2 * j + 1]) / (2.0 * q * (double)zo->eps);
        if (!(fabs(c) <= FLT_MAX))
            return STEP_FAIL(ULPT_ERR_NONFINITE, "the gradient estimate of direction %u "
                             "overflows float (losses %g and %g); nothing was changed", j,
                             zo->losses[2 * j], zo->losses[2 * j + 1]);
    }
    /* from here on the step writes: no forward or save may still be reading */
    ulpt_lock *held[] = { &zo->prompt->lock, &zo->opt->lock, &zo->lock };
    static const char *const names[] = { "prompt", "optimizer", "forward-only handle" };
    int w = 0;
    for (; w < 3 && !rc; w++)
        rc = ulpt__lock_write(STEP_FUNC, held[w], names[w]);
    if (!rc) {
        float *grads = ulpt_prompt_grads(zo->prompt);
        memcpy(zo->prompt->work.saved_grads, grads, np * sizeof(float));
        memset(grads, 0, np * sizeof(float));
        for (uint32_t j = 0; j < q; j++) {
            const float c = (float)((zo->losses[2 * j] - zo->losses[2 * j + 1]) /
                                    (2.0 * q * (double)zo->eps));
            direction(zo, zo->position + j, zo->u);
            for (size_t i = 0; i < npert; i++)
                grads[i] += c * zo->u[i];
        }
        rc = ulpt__optimizer_step(STEP_FUNC, zo->opt);
        if (rc) { /* finite losses, but the estimate overflowed */
            memcpy(grads, zo->prompt->work.saved_grads, np * sizeof(float));
            rc = STEP_FAIL(rc, "the gradient estimate overflowed; nothing was changed");
        } else {
            zo->position += q;
            if (loss)
                *loss = mean;
        }
    } else {
        w--; /* the one that failed is not held for writing */
    }
    while (w-- > 0)
        ulpt__lock_unwrite(held[w]);
    return rc;
}

int ulpt_zo_step(double *loss, ulpt_zo *zo, ulpt_zo_loss_fn loss_fn, void *user)
{
    if (!zo || !loss_fn)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !zo ? "zo" : "loss_fn");
    /* from entry to return, the handle, its optimizer and its prompt are the step's */
    int rc = ulpt__lock_hold(__func__, &zo->lock, "forward-only handle", 0);
    if (rc)
        return rc;
    if (!(rc = ulpt__lock_hold(__func__, &zo->opt->lock, "optimizer", 0))) {
        if (!(rc = ulpt__lock_hold(__func__, &zo->prompt->lock, "prompt", 0))) {
            rc = zo_run(loss, zo, loss_fn, user);
            ulpt__lock_release(&zo->prompt->lock);
        }
        ulpt__lock_release(&zo->opt->lock);
    }
    ulpt__lock_release(&zo->lock);
    return rc;
}

const ulpt_lock *ulpt__zo_lock(const ulpt_zo *zo) { return &zo->lock; }

uint64_t ulpt_zo_position(const ulpt_zo *zo) { return zo ? zo->position : 0; }

int ulpt_zo_set_position(ulpt_zo *zo, uint64_t position)
{
    if (!zo)
        return ULPT_FAIL(ULPT_ERR_INVALID, "zo is NULL");
    int rc = ulpt__lock_hold(__func__, &zo->lock, "forward-only handle", 1);
    if (rc)
        return rc;
    zo->position = position;
    ulpt__lock_release(&zo->lock);
    return ULPT_OK;
}

int ulpt_zo_direction(float *out, const ulpt_zo *zo, uint64_t index)
{
    if (!out || !zo)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : "zo");
    direction(zo, index, out);
    return ULPT_OK;
}

int ulpt_zo_get_options(ulpt_zo_options *opts, const ulpt_zo *zo)
{
    if (!opts || !zo)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !opts ? "opts" : "zo");
    return ulpt__versioned_write(__func__, &zo_options_v, opts, opts->version, &zo->o);
}

ulpt_prompt *ulpt_zo_prompt(const ulpt_zo *zo) { return zo ? zo->prompt : NULL; }
ulpt_optimizer *ulpt_zo_optimizer(const ulpt_zo *zo) { return zo ? zo->opt : NULL; }
