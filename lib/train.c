/* train.c -- one training step driven by the host's loss callback, in a straight line:
 *
 *     forward (E)  ->  host (loss, G)  ->  backward (gradients)  ->  update (parameters)
 *
 * E and G are the prompt's working buffers (internal.h, taken by ulpt_optimizer_create).
 * Everything before backward only reads the prompt; backward overwrites the gradients,
 * so they are saved first and put back if backward or the update refuses, and a failed
 * step leaves parameters, gradients and optimizer state as they were. */
#include "internal.h"

#include <math.h>
#include <string.h>

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
    const uint32_t n = p->n, d = p->d;
    const size_t nd = (size_t)n * d, np = p->n_params;
    float *e = p->work.e, *g = p->work.g;

    /* forward: refuses NaN or infinite parameters, naming the first */
    int rc = ulpt__prompt_forward(__func__, p, e, d);
    if (rc != ULPT_OK)
        return rc;

    /* the host */
    double value = 0.0;
    memset(g, 0, nd * sizeof(float));
    rc = loss_fn(user, e, n, d, g, &value);
    if (rc != 0)
        return ULPT_FAIL(ULPT_ERR_CALLBACK, "the loss callback returned %d", rc);
    if (!isfinite(value))
        return ULPT_FAIL(ULPT_ERR_NONFINITE, "the loss callback returned a loss of %g", value);

    /* backward: its pass over G is also the check that G is finite */
    memcpy(p->work.saved_grads, p->grads, np * sizeof(float));
    ulpt_prompt_zero_grad(p);
    rc = ulpt__prompt_backward(__func__, p, g, d);

    /* update: refuses a gradient that overflowed */
    if (rc == ULPT_OK)
        rc = ulpt_optimizer_step(o);
    if (rc != ULPT_OK) {
        memcpy(p->grads, p->work.saved_grads, np * sizeof(float));
        if (!ulpt__all_finite(g, nd))
            return ULPT_FAIL(ULPT_ERR_NONFINITE,
                             "the loss callback returned a NaN or infinite gradient");
        return ULPT_FAIL(ULPT_ERR_NONFINITE,
                         "the gradient overflowed in backward; nothing was changed");
    }
    if (loss)
        *loss = value;
    return ULPT_OK;
}
