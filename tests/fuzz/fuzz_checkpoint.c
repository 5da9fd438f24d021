/* fuzz_checkpoint.c -- checkpoints from arbitrary bytes, read by both loaders; what loads
 * must keep training. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *sealed = fuzz_reseal(data, size); /* past the checksum: the sections */
    char path[64];
    int fd = sealed ? fuzz_file(sealed, size, path, sizeof path)
                    : fuzz_file(data, size, path, sizeof path);
    free(sealed);
    ulpt_prompt *p = NULL;
    ulpt_optimizer *o = NULL;
    if (ulpt_checkpoint_load(&p, &o, path) == ULPT_OK) {
        fuzz_use(p);
        int rc = ulpt_optimizer_step(o); /* stored moments may be anything finite or not */
        if (rc != ULPT_OK && rc != ULPT_ERR_NONFINITE)
            abort();
    } else if (p || o) {
        abort();
    }
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    p = NULL, o = NULL;
    ulpt_zo *z = NULL;
    if (ulpt_zo_checkpoint_load(&p, &o, &z, path) == ULPT_OK) {
        if (ulpt_zo_prompt(z) != p || ulpt_zo_optimizer(z) != o)
            abort();
        float *u = malloc(ulpt_prompt_num_params(p) * sizeof *u);
        if (!u || ulpt_zo_direction(u, z, ulpt_zo_position(z)) != ULPT_OK)
            abort();
        free(u);
    } else if (p || o || z) {
        abort();
    }
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    close(fd);
    return 0;
}
