/* train.c -- one training step driven by the host's loss callback, in a straight line:
 *
 *     forward (E)  ->  host (loss, G)  ->  backward (gradients)  ->  update (parameters)
 *
 * E and G are the prompt's working buffers (internal.h, taken by ulpt_optimizer_create).
 * Everything before backward only reads the prompt; backward overwrites the gradients,
 * so they are saved first and put back if backward or the update refuses, and a failed
 * step leaves parameters, gradients and optimizer state as they were.
 *
 * The step holds the prompt and the optimizer from entry to return (lock.c): any other
 * writing call on them, from another thread or from the callback, gets ULPT_ERR_BUSY.
 * Reading calls (forward, saves) may run while the host does, since nothing changes
 * then; backward and the update start only once none is running. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* The step itself; the caller holds p and o. */
static int train_run(const char *func, ulpt_prompt *p, ulpt_optimizer *o, ulpt_loss_fn loss_fn,
                void *user, double *loss)
{
    const uint32_t n = p->n, d = p->d;
    const size_t nd = (size_t)n * d, np = p->n_params;
    float *e = p->work.e, *g = p->work.g;

    /* forward: refuses NaN or infinite parameters, naming the first */
    int rc = ulpt__prompt_forward(func, p, e, d);
    if (rc != ULPT_OK)
        return rc;

    /* the host */
    double value = 0.0;
    memset(g, 0, nd * sizeof(float));
    rc = loss_fn(user, e, n, d, g, &value);
    if (rc != 0)
        return ulpt__error(ULPT_ERR_CALLBACK, func, "the loss callback returned %d", rc);
    if (!isfinite(value))
        return ulpt__error(ULPT_ERR_NONFINITE, func, "the loss callback returned a loss of %g",
                           value);

    /* from here on the step writes: no forward or save may still be reading */
    if ((rc = ulpt__lock_write(func, &p->lock, "prompt")) != ULPT_OK)
        return rc;
    if ((rc = ulpt__lock_write(func, &o->lock, "optimizer")) != ULPT_OK) {
        ulpt__lock_unwrite(&p->lock);
        return rc;
    }

    /* backward: its pass over G is also the check that G is finite */
    memcpy(p->work.saved_grads, p->grads, np * sizeof(float));
    memset(p->grads, 0, np * sizeof(float));
    rc = ulpt__prompt_backward(func, p, g, d);

    /* update: refuses a gradient that overflowed */
    if (rc == ULPT_OK)
        rc = ulpt__optimizer_step(func, o);
    if (rc != ULPT_OK) {
        memcpy(p->grads, p->work.saved_grads, np * sizeof(float));
        rc = !ulpt__all_finite(g, nd)
                 ? ulpt__error(ULPT_ERR_NONFINITE, func,
                               "the loss callback returned a NaN or infinite gradient")
                 : ulpt__error(ULPT_ERR_NONFINITE, func,
                               "the gradient overflowed in backward; nothing was changed");
    } else if (loss) {
        *loss = value;
    }
    ulpt__lock_unwrite(&o->lock);
    ulpt__lock_unwrite(&p->lock);
    return rc;
}

int ulpt_train_step(ulpt_prompt *p, ulpt_optimizer *o, ulpt_loss_fn loss_fn, void *user,
                    double *loss)
{
    if (!p || !o || !loss_fn)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL",
                         !p   ? "prompt"
                         : !o ? "optimizer"
                              : "loss_fn");
    if (o->prompt != p)
        return ULPT_FAIL(ULPT_ERR_MISMATCH, "the optimizer was created for another prompt");
    int rc = ulpt__lock_hold(__func__, &o->lock, "optimizer", 0);
    if (rc)
        return rc;
    if (!(rc = ulpt__lock_hold(__func__, &p->lock, "prompt", 0))) {
        rc = train_run(__func__, p, o, loss_fn, user, loss);
        ulpt__lock_release(&p->lock);
    }
    ulpt__lock_release(&o->lock);
    return rc;
}
