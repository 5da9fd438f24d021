/* train.c -- one training step driven by the host's loss callback.
 *
 * forward -> host (loss, G) -> checks -> zero grad -> backward -> optimizer step.
 * Everything that can fail happens before the first write, or is undone, so a failed
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
        return ULPT_FAIL(ULPT_ERR_INVALID, "the optimizer was created for another prompt");
    float *e = o->e, *g = o->g, *saved = o->saved_grads; /* taken at creation */
    const uint32_t n = ulpt_prompt_n_tokens(p), d = ulpt_prompt_dim(p);
    const size_t nd = (size_t)n * d, np = ulpt_prompt_num_params(p);

    ulpt_prompt_forward(p, e, d);
    memset(g, 0, nd * sizeof(float));
    double value = 0.0;
    int rc = loss_fn(user, e, n, d, g, &value);
    if (rc != 0)
        return ULPT_FAIL(ULPT_ERR_CALLBACK, "the loss callback returned %d", rc);
    if (!isfinite(value))
        return ULPT_FAIL(ULPT_ERR_NONFINITE, "the loss callback returned a loss of %g", value);
    if (!ulpt__all_finite(g, nd))
        return ULPT_FAIL(ULPT_ERR_NONFINITE,
                         "the loss callback returned a NaN or infinite gradient");

    float *grads = ulpt_prompt_grads(p);
    memcpy(saved, grads, np * sizeof(float));
    ulpt_prompt_zero_grad(p);
    ulpt_prompt_backward(p, g, d);
    rc = ulpt_optimizer_step(o);
    if (rc != 0) { /* finite G, but backward overflowed */
        memcpy(grads, saved, np * sizeof(float));
        return ULPT_FAIL(rc, "the gradient overflowed in backward; nothing was changed");
    }
    if (loss)
        *loss = value;
    return ULPT_OK;
}
