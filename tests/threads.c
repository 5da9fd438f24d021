/* threads.c -- the sharing rules of docs/DESIGN.md under ThreadSanitizer (make check-tsan).
 *
 * Several threads share one projection (each trains a prompt made on it with
 * ulpt_prompt_create_shared, so its reference count moves concurrently) and read one
 * served prompt (forward, save to memory and to a file, safetensors export, metadata),
 * while each trains its own prompt, checkpoints it and reloads it.  Exit status 0 only if every thread saw the
 * values a single thread computes. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ulpt.h"

enum { THREADS = 4, STEPS = 30, N = 16, R = 2, D = 256 };

static ulpt_projection *shared_proj;
static const ulpt_prompt *served;
static float served_e[N * D], proj_copy[R * D];
static char dir[64];

static int quadratic(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    const float *target = user;
    *loss = 0;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        grad[k] = e[k] - target[k];
        *loss += 0.5 * (double)grad[k] * grad[k];
    }
    return 0;
}

static void *worker(void *arg)
{
    long id = (long)arg;
    char path[128];
    float e[N * D];
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = N, po.rank = R, po.dim = D, po.init_seed = (uint64_t)id;
    po.projection_seed = 7; /* the shared projection's */
    ulpt_prompt *mine;
    ulpt_optimizer *opt;
    if (ulpt_prompt_create_shared(&mine, &po, &shared_proj) ||
        ulpt_optimizer_create(&opt, mine, NULL))
        return "create failed";
    for (int step = 0; step < STEPS; step++) {
        /* readers of the shared objects */
        if (memcmp(ulpt_projection_data(shared_proj), proj_copy, sizeof proj_copy))
            return "shared projection changed";
        if (ulpt_prompt_forward(served, e, D) || memcmp(e, served_e, sizeof e))
            return "served prompt forward differs";
        void *buf;
        size_t len;
        if (ulpt_prompt_save_buffer(served, &buf, &len, NULL))
            return "save_buffer failed";
        ulpt_free(buf);
        snprintf(path, sizeof path, "%s/served-%ld.ulpt", dir, id);
        if (ulpt_prompt_save(served, path, NULL))
            return "save failed";
        snprintf(path, sizeof path, "%s/served-%ld.safetensors", dir, id);
        if (ulpt_prompt_export_safetensors(served, path))
            return "export failed";
        if (strcmp(ulpt_prompt_get_meta(served, "model"), "tiny") != 0)
            return "metadata differs";
        /* its own training */
        if (ulpt_train_step(mine, opt, quadratic, served_e, NULL))
            return "train_step failed";
    }
    snprintf(path, sizeof path, "%s/ckpt-%ld.ulpt", dir, id);
    ulpt_prompt *back;
    ulpt_optimizer *oback;
    if (ulpt_checkpoint_save(mine, opt, path) || ulpt_checkpoint_load(&back, &oback, path))
        return "checkpoint failed";
    if (memcmp(ulpt_prompt_params(back), ulpt_prompt_params(mine),
               ulpt_prompt_num_params(mine) * sizeof(float)))
        return "checkpoint differs";
    ulpt_optimizer_free(oback);
    ulpt_prompt_free(back);
    ulpt_optimizer_free(opt);
    ulpt_prompt_free(mine);
    return NULL;
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/ulpt-threads-%ld", (long)getpid());
    if (mkdir(dir, 0777) != 0)
        return 1;
    ulpt_set_num_threads(1);
    ulpt_projection *proj;
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = N, po.rank = R, po.dim = D;
    ulpt_prompt *p;
    if (ulpt_projection_create(&proj, 7, R, D, ULPT_PROJ_XAVIER_UNIFORM) ||
        ulpt_prompt_create(&p, &po) || ulpt_prompt_set_meta(p, "model", "tiny"))
        return 1;
    memcpy(proj_copy, ulpt_projection_data(proj), sizeof proj_copy);
    ulpt_prompt_forward(p, served_e, D);
    shared_proj = proj, served = p;

    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    int failed = 0;
    for (int i = 0; i < THREADS; i++) {
        void *msg;
        pthread_join(t[i], &msg);
        if (msg) {
            fprintf(stderr, "threads: thread %d: %s\n", i, (const char *)msg);
            failed = 1;
        }
    }
    ulpt_prompt_free(p);
    ulpt_projection_free(proj);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        failed = 1;
    printf("threads: %d threads x %d steps sharing a projection and a served prompt: %s\n",
           THREADS, STEPS, failed ? "FAILED" : "ok");
    return failed;
}
