/* interop.c -- the C side of the Rust crate's file interoperability tests.
 *
 *   interop save PATH E_OUT DTYPE   make a prompt (n 6, d 24, rank 3, 2 groups, Gaussian P),
 *                                   train it 5 steps so Z, s and b all move, set metadata,
 *                                   save it (DTYPE f32|f16|bf16) and write its E as raw
 *                                   little-endian float32 (the E the saver had)
 *   interop load PATH E_OUT         load a prompt file, write its E as above
 *
 * Exit status 0 on success; any libulpt error is printed with ulpt_last_error(). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ulpt.h"

static int fail(const char *what)
{
    fprintf(stderr, "interop: %s: %s\n", what, ulpt_last_error());
    return 1;
}

static int write_e(const ulpt_prompt *p, const char *path)
{
    size_t n = (size_t)ulpt_prompt_n_tokens(p) * ulpt_prompt_dim(p);
    float *e = malloc(n * sizeof *e);
    if (!e)
        return 1;
    if (ulpt_prompt_forward(p, e, ulpt_prompt_dim(p)) != ULPT_OK) {
        free(e);
        return fail("forward");
    }
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(e, sizeof *e, n, f) == n;
    ok = f && fclose(f) == 0 && ok;
    free(e);
    if (!ok)
        fprintf(stderr, "interop: cannot write %s\n", path);
    return !ok;
}

/* L = sum_i w_i E_i^2 / 2 with varying weights: dL/dE_i = w_i E_i. */
static int loss_fn(void *user, const float *e, uint32_t n, uint32_t d, float *g, double *loss)
{
    (void)user;
    double l = 0;
    for (size_t i = 0; i < (size_t)n * d; i++) {
        float w = 0.5f + (float)(i % 7) / 7.0f;
        g[i] = w * (e[i] - 0.25f);
        l += 0.5 * (double)w * ((double)e[i] - 0.25) * ((double)e[i] - 0.25);
    }
    *loss = l;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "save") == 0) {
        ulpt_prompt_options po;
        if (ulpt_prompt_options_init(&po, ULPT_PROMPT_OPTIONS_VERSION) != ULPT_OK)
            return fail("ulpt_prompt_options_init");
        po.n_tokens = 6, po.dim = 24, po.rank = 3, po.n_groups = 2;
        po.projection_kind = ULPT_PROJ_GAUSSIAN;
        po.projection_seed = 1234, po.init_seed = 99;
        ulpt_save_options so;
        if (ulpt_save_options_init(&so, ULPT_SAVE_OPTIONS_VERSION) != ULPT_OK)
            return fail("ulpt_save_options_init");
        so.dtype = strcmp(argv[4], "bf16") == 0  ? ULPT_DTYPE_BF16
                   : strcmp(argv[4], "f16") == 0 ? ULPT_DTYPE_F16
                                                 : ULPT_DTYPE_F32;
        ulpt_prompt *p;
        ulpt_optimizer *o;
        if (ulpt_prompt_create(&p, &po) != ULPT_OK)
            return fail("create");
        if (ulpt_optimizer_create(&o, p, NULL) != ULPT_OK)
            return fail("optimizer");
        for (int s = 0; s < 5; s++)
            if (ulpt_train_step(p, o, loss_fn, NULL, NULL) != ULPT_OK)
                return fail("train");
        if (ulpt_prompt_set_meta(p, "model", "interop/c") != ULPT_OK ||
            ulpt_prompt_set_meta(p, "task", "files written by C") != ULPT_OK)
            return fail("meta");
        if (ulpt_prompt_save(p, argv[2], &so) != ULPT_OK)
            return fail("save");
        int rc = write_e(p, argv[3]);
        ulpt_optimizer_free(o);
        ulpt_prompt_free(p);
        return rc;
    }
    if (argc == 4 && strcmp(argv[1], "load") == 0) {
        ulpt_prompt *p;
        if (ulpt_prompt_load(&p, argv[2]) != ULPT_OK)
            return fail("load");
        int rc = write_e(p, argv[3]);
        ulpt_prompt_free(p);
        return rc;
    }
    fprintf(stderr, "usage: interop save PATH E_OUT f32|f16|bf16 | interop load PATH E_OUT\n");
    return 2;
}
