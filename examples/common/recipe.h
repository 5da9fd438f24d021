/*
 * recipe.h -- the training recipe every example host uses, so that their figures compare:
 * a rank-r ULPT prompt whose projection and start both come from the seed, and AdamW with
 * weight decay 1e-5, clipping at gradient norm 1, a linear warmup over the first 10% of
 * the steps and a linear decay to 0 after it.  Header only; needs ulpt.h.
 */
#ifndef EXAMPLES_RECIPE_H
#define EXAMPLES_RECIPE_H

#include <stdint.h>

#include "ulpt.h"

/* The prompt: n_tokens x dim, rank r, projection and initialization seeded by seed. */
static inline ulpt_prompt_options recipe_prompt(uint32_t n_tokens, uint32_t rank, uint32_t dim,
                                                uint64_t seed)
{
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = n_tokens;
    po.rank = rank;
    po.dim = dim;
    po.projection_seed = seed;
    po.init_seed = seed;
    return po;
}

/* AdamW at peak rate lr over a run of `steps` steps. */
static inline ulpt_optimizer_options recipe_adamw(double lr, uint32_t steps)
{
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.lr = lr;
    oo.weight_decay = 1e-5;
    oo.max_grad_norm = 1.0;
    oo.schedule = ULPT_SCHED_LINEAR;
    oo.warmup_steps = steps / 10;
    oo.total_steps = steps;
    return oo;
}

#endif
