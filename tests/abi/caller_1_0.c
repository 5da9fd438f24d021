/* caller_1_0.c -- a program written for libulpt 1.0.0, compiled against that release's
 * header (tests/abi/1.0/ulpt.h) and run on the library of this tree by check-abi.sh.
 * It uses the 1.0 API the way a 1.0 caller did (options from the _INIT macros, a
 * training loop, a save and a load, file inspection) and checks the answers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ulpt.h"

#if ULPT_VERSION_MAJOR != 1 || ULPT_VERSION_MINOR != 0
#error "this program must be compiled against the 1.0 header"
#endif

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "caller_1_0: %s:%d: %s failed (%s)\n", __FILE__, __LINE__,    \
                    #cond, ulpt_last_error());                                            \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

enum { N = 4, D = 16 };

/* L = sum (E - t)^2 / 2 against a fixed target t, so dL/dE = E - t. */
static int loss_fn(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    const float *t = user;
    double l = 0;
    for (size_t i = 0; i < (size_t)n * d; i++) {
        grad[i] = e[i] - t[i];
        l += 0.5 * (double)grad[i] * grad[i];
    }
    *loss = l;
    return 0;
}

int main(void)
{
    /* a 1.x library, at least the one this was built for */
    CHECK(ulpt_version() / 10000 == 1 && ulpt_version() >= ULPT_VERSION_NUMBER);

    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = N;
    po.dim = D;
    po.projection_seed = 7;
    po.init_seed = 3;
    ulpt_prompt *p = NULL;
    CHECK(ulpt_prompt_create(&p, &po) == ULPT_OK);
    CHECK(ulpt_prompt_num_params(p) == N * 2 + 2 * D);
    CHECK(ulpt_prompt_set_meta(p, "model", "abi-test") == ULPT_OK);

    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.lr = 0.05;
    ulpt_optimizer *o = NULL;
    CHECK(ulpt_optimizer_create(&o, p, &oo) == ULPT_OK);

    float target[N * D];
    for (int i = 0; i < N * D; i++)
        target[i] = (float)sin(i);
    double first = 0, loss = 0;
    for (int s = 0; s < 60; s++) {
        CHECK(ulpt_train_step(p, o, loss_fn, target, &loss) == ULPT_OK);
        if (s == 0)
            first = loss;
    }
    CHECK(ulpt_optimizer_step_count(o) == 60);
    CHECK(loss < first);

    /* an invalid call still fails cleanly with a message */
    po.rank = 99;
    ulpt_prompt *bad = NULL;
    CHECK(ulpt_prompt_create(&bad, &po) == ULPT_ERR_INVALID && bad == NULL);
    CHECK(strstr(ulpt_last_error(), "rank") != NULL);

    /* save to memory and back: the same E */
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    void *buf = NULL;
    size_t len = 0;
    CHECK(ulpt_prompt_save_buffer(p, &buf, &len, &so) == ULPT_OK);
    ulpt_prompt *q = NULL;
    CHECK(ulpt_prompt_load_buffer(&q, buf, len) == ULPT_OK);
    ulpt_free(buf);
    float e1[N * D], e2[N * D];
    CHECK(ulpt_prompt_forward(p, e1, D) == ULPT_OK);
    CHECK(ulpt_prompt_forward(q, e2, D) == ULPT_OK);
    CHECK(memcmp(e1, e2, sizeof e1) == 0);
    CHECK(strcmp(ulpt_prompt_get_meta(q, "model"), "abi-test") == 0);

    /* a checkpoint on disk, inspected through the 1.0 ulpt_file_info */
    char path[] = "tests/abi/out/caller_1_0.ulpt";
    CHECK(ulpt_checkpoint_save(p, o, path) == ULPT_OK);
    ulpt_file_info info = ULPT_FILE_INFO_INIT;
    CHECK(ulpt_file_inspect(path, &info) == ULPT_OK);
    CHECK(info.version == 1 && info.kind == ULPT_FILE_CHECKPOINT && info.dtype == ULPT_DTYPE_F32);
    ulpt_prompt *cp = NULL;
    ulpt_optimizer *co = NULL;
    CHECK(ulpt_checkpoint_load(&cp, &co, path) == ULPT_OK);
    CHECK(ulpt_optimizer_step_count(co) == 60);
    remove(path);

    ulpt_optimizer_free(co);
    ulpt_prompt_free(cp);
    ulpt_prompt_free(q);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    printf("caller_1_0: a 1.0 program on libulpt %s: trained (loss %.3f -> %.3f), saved, "
           "reloaded, inspected\n", ulpt_version_string(), first, loss);
    return 0;
}
