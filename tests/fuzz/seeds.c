/* seeds.c -- real files to start the fuzzers from: prompt files of several shapes and
 * storage types, checkpoints of each optimizer, forward-only ones too.  Usage: seeds DIR */
#include <stdio.h>

#include "ulpt.h"

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    static const struct { uint32_t n, r, d, g; int kind; unsigned flags; } shapes[] = {
        { 4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0 },
        { 6, 3, 20, 3, ULPT_PROJ_GAUSSIAN, ULPT_NO_SCALE },
        { 2, 6, 6, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT },
    };
    char path[512];
    int k = 0;
    for (int s = 0; s < 3; s++) {
        ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
        po.n_tokens = shapes[s].n, po.rank = shapes[s].r, po.dim = shapes[s].d;
        po.n_groups = shapes[s].g, po.projection_kind = shapes[s].kind, po.flags = shapes[s].flags;
        ulpt_prompt *p;
        if (ulpt_prompt_create(&p, &po) || ulpt_prompt_set_meta(p, "model", "seed"))
            return 1;
        for (int dtype = 0; dtype < 3; dtype++) {
            ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
            so.dtype = dtype, so.level = dtype == 1 ? 0 : 6;
            snprintf(path, sizeof path, "%s/prompt-%d.ulpt", argv[1], k++);
            if (ulpt_prompt_save(p, path, &so))
                return 1;
        }
        ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
        oo.kind = s; /* SGD, Adam, AdamW */
        oo.momentum = s == 0 ? 0.9 : 0.0;
        ulpt_optimizer *o;
        if (ulpt_optimizer_create(&o, p, &oo) || ulpt_optimizer_step(o))
            return 1;
        snprintf(path, sizeof path, "%s/checkpoint-%d.ulpt", argv[1], s);
        if (ulpt_checkpoint_save(p, o, path))
            return 1;
        ulpt_zo_options zoo = ULPT_ZO_OPTIONS_INIT;
        zoo.directions = (uint32_t)s + 1, zoo.distribution = s % 2, zoo.perturb = s == 2;
        ulpt_zo *z;
        if (ulpt_zo_create(&z, p, o, &zoo) || ulpt_zo_set_position(z, 77))
            return 1;
        snprintf(path, sizeof path, "%s/zo-checkpoint-%d.ulpt", argv[1], s);
        int rc = ulpt_zo_checkpoint_save(z, path);
        ulpt_zo_free(z);
        if (rc)
            return 1;
        ulpt_optimizer_free(o);
        ulpt_prompt_free(p);
    }
    return 0;
}
