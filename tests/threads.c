/* threads.c -- the sharing rules of docs/DESIGN.md under ThreadSanitizer (make check-tsan).
 *
 * Several threads share one projection (each trains a prompt made on it with
 * ulpt_prompt_create_shared, so its reference count moves concurrently) and read one
 * served prompt (forward, save to memory and to a file, safetensors export, metadata),
 * while each trains its own prompt, checkpoints it and reloads it.  Then threads
 * materialise mixed batches from one prompt bank (float32 and f16) while another adds and
 * removes prompts in it.  Last, forwards race a training step on one prompt, breaking
 * the rules: each call must succeed or give ULPT_ERR_BUSY, and every E a forward wrote
 * must be that of whole-step parameters.  Exit status 0 only if every thread saw the
 * values a single thread computes. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ulpt.h"

/* D past 512: the served prompt's forwards pass its scratch between them (lib/forward.c) */
enum { THREADS = 4, STEPS = 30, N = 16, R = 2, D = 1024 };

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

/* ---- the prompt bank: readers materialise while a writer adds and removes ---------- */

enum { KEPT = 6, READERS = 3, ROUNDS = 40, CHURN = 60 };
static ulpt_bank *bank;
static ulpt_bank_id kept_id[KEPT];
static float kept_e[KEPT][N * D];
static uint16_t kept_h[KEPT][N * D];
static ulpt_prompt *churn_prompt; /* what the writer keeps adding */
static float churn_e[N * D];
static _Atomic ulpt_bank_id latest; /* the writer's newest id, 0 when none */

static void *bank_reader(void *arg)
{
    long id = (long)arg;
    static _Thread_local float e[KEPT + 1][N * D];
    static _Thread_local uint16_t h[KEPT][N * D];
    for (int round = 0; round < ROUNDS; round++) {
        ulpt_bank_request req[KEPT];
        for (int k = 0; k < KEPT; k++) { /* a different order each round and thread */
            int which = (int)((k + round + id) % KEPT);
            req[k] = (ulpt_bank_request){ kept_id[which], e[which], D };
        }
        if (ulpt_bank_materialise(bank, req, KEPT, ULPT_DTYPE_F32))
            return "bank materialise failed";
        for (int k = 0; k < KEPT; k++) {
            req[k].dst = h[k];
            if (memcmp(e[k], kept_e[k], sizeof e[k]))
                return "bank materialised other values";
        }
        for (int k = 0; k < KEPT; k++)
            req[k].id = kept_id[k];
        if (ulpt_bank_materialise(bank, req, KEPT, ULPT_DTYPE_F16) ||
            memcmp(h, kept_h, sizeof h))
            return "bank f16 differs";
        /* the writer's prompt: there and right, or already gone */
        ulpt_bank_request one = { atomic_load(&latest), e[KEPT], D };
        if (one.id) {
            int rc = ulpt_bank_materialise(bank, &one, 1, ULPT_DTYPE_F32);
            if (rc == ULPT_OK && memcmp(e[KEPT], churn_e, sizeof churn_e))
                return "bank materialised a half-added prompt";
            if (rc != ULPT_OK && rc != ULPT_ERR_NOT_FOUND)
                return "bank materialise of a churned prompt failed oddly";
        }
        ulpt_bank_id found;
        if (ulpt_bank_find(bank, "kept-0", &found) || found != kept_id[0])
            return "bank find failed";
    }
    return NULL;
}

static void *bank_writer(void *arg)
{
    (void)arg;
    for (int i = 0; i < CHURN; i++) {
        ulpt_bank_id id;
        char name[32];
        snprintf(name, sizeof name, "churn-%d", i);
        if (ulpt_bank_add(bank, &id, churn_prompt, name))
            return "bank add failed";
        atomic_store(&latest, id);
        if (i % 2 && ulpt_bank_remove(bank, id))
            return "bank remove failed";
    }
    return NULL;
}

static int bank_threads(void)
{
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = N, po.rank = R, po.dim = D, po.n_groups = 2, po.projection_seed = 7;
    if (ulpt_bank_create(&bank, "tiny", D))
        return 1;
    for (int k = 0; k < KEPT; k++) {
        ulpt_prompt *p;
        char name[32];
        po.init_seed = (uint64_t)k + 100;
        po.projection_seed = k % 2 ? 7 : 8;
        snprintf(name, sizeof name, "kept-%d", k);
        if (ulpt_prompt_create(&p, &po) || ulpt_prompt_set_meta(p, "model", "tiny") ||
            ulpt_bank_add(bank, &kept_id[k], p, name) || ulpt_prompt_forward(p, kept_e[k], D))
            return 1;
        ulpt_bank_request req = { kept_id[k], kept_h[k], D };
        if (ulpt_bank_materialise(bank, &req, 1, ULPT_DTYPE_F16))
            return 1;
        ulpt_prompt_free(p);
    }
    po.init_seed = 999;
    if (ulpt_prompt_create(&churn_prompt, &po) ||
        ulpt_prompt_set_meta(churn_prompt, "model", "tiny") ||
        ulpt_prompt_forward(churn_prompt, churn_e, D))
        return 1;
    pthread_t t[READERS + 1];
    for (long i = 0; i < READERS; i++)
        pthread_create(&t[i], NULL, bank_reader, (void *)i);
    pthread_create(&t[READERS], NULL, bank_writer, NULL);
    int failed = 0;
    for (int i = 0; i <= READERS; i++) {
        void *msg;
        pthread_join(t[i], &msg);
        if (msg) {
            fprintf(stderr, "threads: bank thread %d: %s\n", i, (const char *)msg);
            failed = 1;
        }
    }
    if (ulpt_bank_count(bank) != KEPT + CHURN / 2)
        failed = 1;
    ulpt_prompt_free(churn_prompt);
    ulpt_bank_free(bank);
    printf("threads: %d threads materialising from a bank while one adds and removes %d "
           "prompts: %s\n", READERS, CHURN, failed ? "FAILED" : "ok");
    return failed;
}

/* ---- misuse: forwards race a training step on one prompt -------------------------- */

/* Breaking the threading rules must give ULPT_ERR_BUSY, never a wrong E: every forward
 * that succeeds wrote the E of the parameters after some whole step. */
enum { RACE_STEPS = 60, RACE_FORWARDS = 2, RACE_KEEP = 40 };
static ulpt_prompt *race;
static float race_params[RACE_STEPS + 1][N * R + 2 * D];
static _Atomic int race_done;

typedef struct {
    float e[RACE_KEEP][N * D];
    _Atomic int ok;
    int kept, busy;
    const char *error;
} race_reader;

static void *race_forward(void *arg)
{
    race_reader *r = arg;
    static _Thread_local float e[N * D];
    while (!atomic_load(&race_done)) {
        int rc = ulpt_prompt_forward(race, e, D);
        if (rc == ULPT_ERR_BUSY) {
            r->busy++;
            continue;
        }
        if (rc) {
            r->error = "forward failed with another error";
            break;
        }
        if (r->ok++ % 7 == 0 && r->kept < RACE_KEEP)
            memcpy(r->e[r->kept++], e, sizeof e);
        /* a pause, so that the steps find the prompt idle now and then */
        nanosleep(&(struct timespec){ 0, 20000 }, NULL);
    }
    return NULL;
}

static int race_threads(void)
{
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = N, po.rank = R, po.dim = D;
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.kind = ULPT_OPT_SGD, oo.lr = 0.01;
    ulpt_optimizer *o;
    if (ulpt_prompt_create(&race, &po) || ulpt_optimizer_create(&o, race, &oo))
        return 1;
    const size_t np = ulpt_prompt_num_params(race);
    memcpy(race_params[0], ulpt_prompt_params(race), np * sizeof(float));
    static race_reader readers[RACE_FORWARDS];
    pthread_t t[RACE_FORWARDS];
    for (int i = 0; i < RACE_FORWARDS; i++)
        pthread_create(&t[i], NULL, race_forward, &readers[i]);
    for (int i = 0; i < RACE_FORWARDS; i++) /* the race starts once both forwards run */
        while (atomic_load(&readers[i].ok) < 3 && !readers[i].error)
            nanosleep(&(struct timespec){ 0, 100000 }, NULL);
    int steps = 0, busy = 0, failed = 0;
    while (steps < RACE_STEPS && busy < 1000000) {
        int rc = ulpt_train_step(race, o, quadratic, served_e, NULL);
        if (rc == ULPT_OK)
            memcpy(race_params[++steps], ulpt_prompt_params(race), np * sizeof(float));
        else if (rc == ULPT_ERR_BUSY)
            busy++;
        else
            failed = 1, steps = RACE_STEPS;
    }
    if (steps < RACE_STEPS)
        failed = 1; /* never found the prompt idle */
    atomic_store(&race_done, 1);
    int forwards = 0, forward_busy = 0, checked = 0;
    for (int i = 0; i < RACE_FORWARDS; i++) {
        pthread_join(t[i], NULL);
        if (readers[i].error)
            failed = 1;
        forwards += readers[i].ok, forward_busy += readers[i].busy;
    }
    /* each kept E against the E of every whole step's parameters, single-threaded */
    static float want[RACE_STEPS + 1][N * D];
    for (int k = 0; k <= RACE_STEPS && !failed; k++) {
        memcpy(ulpt_prompt_params(race), race_params[k], np * sizeof(float));
        if (ulpt_prompt_forward(race, want[k], D))
            failed = 1;
    }
    for (int i = 0; i < RACE_FORWARDS && !failed; i++)
        for (int j = 0; j < readers[i].kept; j++, checked++) {
            int found = 0;
            for (int k = 0; k <= RACE_STEPS && !found; k++)
                found = !memcmp(readers[i].e[j], want[k], sizeof want[k]);
            if (!found)
                failed = 1;
        }
    if (checked < RACE_FORWARDS)
        failed = 1;
    ulpt_optimizer_free(o);
    ulpt_prompt_free(race);
    printf("threads: %d forwards racing %d training steps on one prompt: %d forwards ok, %d "
           "busy; %d steps busy; %d E checked against whole steps: %s\n", RACE_FORWARDS,
           RACE_STEPS, forwards, forward_busy, busy, checked, failed ? "FAILED" : "ok");
    return failed;
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
    return failed | bank_threads() | race_threads();
}
