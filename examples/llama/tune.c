/* tune.c -- tuning a prompt inside llama.cpp with forward passes only.
 *
 * llama.cpp has no gradient with respect to its input embeddings, so the prompt is
 * trained through libulpt's forward-only API (ulpt_zo_step): each step libulpt writes
 * 2q perturbed prompts theta +- eps*u_j and asks for their losses on one minibatch of m
 * examples.  The callback decodes every (perturbed prompt, example) pair as its own
 * sequence, up to --batch sequences per llama_decode, and returns each prompt's mean
 * verbalizer cross-entropy; libulpt forms the two-point gradient estimate and steps
 * AdamW.  The options and schedule are those of examples/tinylm/tune. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "host.h"
#include "task.h"
#include "ulpt.h"

typedef struct {
    engine *e;
    const task_example **batch; /* this step's minibatch */
    size_t m;
    uint8_t verbalizer[2];
    engine_request *req;
    float *logits;
    int max_seqs;
    uint64_t sequences;         /* decoded so far */
    double decode_seconds;
} zo_host;

/* -log softmax(l0, l1)[label], in double */
static double verbalizer_loss(float l0, float l1, int label)
{
    double a = l0, b = l1, top = fmax(a, b);
    double lse = top + log(exp(a - top) + exp(b - top));
    return lse - (label ? b : a);
}

/* libulpt's forward-only callback: losses[c] = the mean loss of perturbed prompt c on the
 * step's minibatch.  Pair (c, i) -- prompt c, example i -- is sequence c*m + i. */
static int zo_losses(void *user, const float *emb, uint32_t count, uint32_t n_tokens,
                     uint32_t dim, double *losses)
{
    zo_host *h = user;
    const size_t total = (size_t)count * h->m, V = engine_n_vocab(h->e);
    for (uint32_t c = 0; c < count; c++)
        losses[c] = 0;
    for (size_t start = 0; start < total; start += (size_t)h->max_seqs) {
        int n = (int)(total - start < (size_t)h->max_seqs ? total - start : (size_t)h->max_seqs);
        for (int j = 0; j < n; j++) {
            size_t c = (start + (size_t)j) / h->m, i = (start + (size_t)j) % h->m;
            h->req[j] = (engine_request){ emb + c * n_tokens * dim, n_tokens, h->batch[i]->text,
                                          h->batch[i]->len, TASK_SEPARATOR };
        }
        double t0 = now();
        if (engine_run(h->e, h->req, n, h->logits, NULL)) {
            fail("%s", engine_error());
            return -1;
        }
        h->decode_seconds += now() - t0;
        h->sequences += (uint64_t)n;
        for (int j = 0; j < n; j++) {
            size_t c = (start + (size_t)j) / h->m, i = (start + (size_t)j) % h->m;
            const float *l = h->logits + (size_t)j * V;
            losses[c] += verbalizer_loss(l[h->verbalizer[0]], l[h->verbalizer[1]],
                                         h->batch[i]->label);
        }
    }
    for (uint32_t c = 0; c < count; c++)
        losses[c] /= (double)h->m;
    return 0;
}

/* Test accuracy of prompt rows E through llama.cpp, max_seqs requests per decode. */
static int accuracy(zo_host *h, const task_split *s, const float *E, uint32_t n_rows, double *acc)
{
    const size_t V = engine_n_vocab(h->e);
    size_t right = 0;
    for (size_t i = 0; i < s->n; i += (size_t)h->max_seqs) {
        int n = (int)(s->n - i < (size_t)h->max_seqs ? s->n - i : (size_t)h->max_seqs);
        for (int j = 0; j < n; j++)
            h->req[j] = (engine_request){ E, n_rows, s->ex[i + (size_t)j].text,
                                          s->ex[i + (size_t)j].len, TASK_SEPARATOR };
        if (engine_run(h->e, h->req, n, h->logits, NULL))
            return fail("%s", engine_error());
        for (int j = 0; j < n; j++)
            right += task_predict(h->logits + (size_t)j * V, h->verbalizer) ==
                     s->ex[i + (size_t)j].label;
    }
    *acc = (double)right / (double)s->n;
    return 0;
}

#define TRY(call)                                                                          \
    do {                                                                                   \
        if ((call) != ULPT_OK) {                                                           \
            fail("%s", ulpt_last_error());                                                 \
            goto out;                                                                      \
        }                                                                                  \
    } while (0)

int cmd_tune(const options *o)
{
    if (o->n_args != 1)
        return fail("tune: usage: ulpt-llama tune --gguf M.gguf [--save P.ulpt] [--steps S] "
                    "[--directions Q] TASKDIR");
    zo_host h = { 0 };
    task_split train = { 0 }, test = { 0 };
    ulpt_prompt *p = NULL;
    ulpt_optimizer *opt = NULL;
    ulpt_zo *zo = NULL;
    float *E = NULL;
    size_t *order = NULL;
    int rc = 1;
    char err[4608], task[256];
    const uint32_t m = o->examples; /* examples a step */

    h.max_seqs = o->batch;
    if (engine_open(&h.e, o->gguf, h.max_seqs, o->threads, o->verbose)) {
        fail("%s", engine_error());
        goto out;
    }
    const uint32_t C = engine_n_embd(h.e), T = engine_max_len(h.e), V = engine_n_vocab(h.e);
    if (o->tokens + 2 > T) {
        fail("--tokens %u leaves no room for text in a context of %u", o->tokens, T);
        goto out;
    }
    if (task_split_load(&train, o->args[0], "train", T - o->tokens - 1, V, err, sizeof err) ||
        task_split_load(&test, o->args[0], "test", T - o->tokens - 1, V, err, sizeof err)) {
        fail("%s", err);
        goto out;
    }
    if (strcmp(train.names[0], test.names[0]) || strcmp(train.names[1], test.names[1])) {
        fail("%s and %s have different labels", train.path, test.path);
        goto out;
    }
    task_verbalizer(&test, h.verbalizer);
    h.m = m;
    h.batch = malloc(sizeof *h.batch * m);
    h.req = malloc(sizeof *h.req * (size_t)h.max_seqs);
    h.logits = malloc(sizeof(float) * (size_t)h.max_seqs * V);
    order = malloc(sizeof *order * train.n);
    E = malloc(sizeof(float) * o->tokens * C);
    if (!h.batch || !h.req || !h.logits || !order || !E) {
        fail("out of memory");
        goto out;
    }

    /* the prompt and optimizer of examples/tinylm/tune: rank r, AdamW, 10% warmup, then
     * linear decay to 0, weight decay 1e-5, clipping at norm 1 */
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = o->tokens;
    po.dim = C;
    po.rank = o->rank;
    po.projection_seed = po.init_seed = o->seed;
    TRY(ulpt_prompt_create(&p, &po));
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.lr = o->lr;
    oo.weight_decay = 1e-5;
    oo.max_grad_norm = 1.0;
    oo.schedule = ULPT_SCHED_LINEAR;
    oo.warmup_steps = o->steps / 10;
    oo.total_steps = o->steps;
    TRY(ulpt_optimizer_create(&opt, p, &oo));
    ulpt_zo_options zopt = ULPT_ZO_OPTIONS_INIT;
    zopt.epsilon = o->mu;
    zopt.directions = o->directions;
    zopt.seed = o->seed;
    TRY(ulpt_zo_create(&zo, p, opt, &zopt));

    double acc0;
    TRY(ulpt_prompt_forward(p, E, C));
    if (accuracy(&h, &test, E, o->tokens, &acc0))
        goto out;
    if (!o->json)
        printf("tuning a rank-%u prompt of %u rows (%zu parameters) inside llama.cpp on %s with "
               "forward passes only:\n  %u steps of %u examples, %u directions (%u perturbed "
               "prompts a step), eps %g, lr %g; test accuracy before: %.1f%%\n", o->rank,
               o->tokens, ulpt_prompt_num_params(p), o->args[0], o->steps, m, o->directions,
               2 * o->directions, o->mu, o->lr, 100 * acc0);

    for (size_t i = 0; i < train.n; i++)
        order[i] = i;
    uint64_t state = o->seed;
    size_t next = train.n;
    double loss = 0, first = 0, start = now();
    for (uint32_t step = 1; step <= o->steps; step++) {
        for (uint32_t b = 0; b < m; b++) { /* epochs of a fresh permutation, as tune does */
            if (next == train.n) {
                task_shuffle(order, train.n, &state);
                next = 0;
            }
            h.batch[b] = &train.ex[order[next++]];
        }
        if (ulpt_zo_step(&loss, zo, zo_losses, &h) != ULPT_OK) {
            fail("step %u: %s", step, ulpt_last_error());
            goto out;
        }
        if (step == 1)
            first = loss;
        if (!o->json && (step % 50 == 0 || step == o->steps)) {
            printf("  step %4u/%u  loss %.4f  %6.1f s\n", step, o->steps, loss, now() - start);
            fflush(stdout);
        }
    }
    const double seconds = now() - start;
    double acc;
    TRY(ulpt_prompt_forward(p, E, C));
    if (accuracy(&h, &test, E, o->tokens, &acc))
        goto out;
    TRY(ulpt_prompt_set_meta(p, "model", engine_model_name(h.e)));
    task_name(o->args[0], task, sizeof task);
    TRY(ulpt_prompt_set_meta(p, "task", task));
    if (o->save)
        TRY(ulpt_prompt_save(p, o->save, NULL));
    if (o->json) {
        printf("{\"task\": \"%s\", \"steps\": %u, \"batch\": %u, \"directions\": %u, "
               "\"epsilon\": %g, \"lr\": %g, \"sequences\": %" PRIu64 ", \"acc_before\": %.6f, "
               "\"acc_test\": %.6f, \"loss_first\": %.6f, \"loss_last\": %.6f, "
               "\"train_seconds\": %.3f, \"decode_seconds\": %.3f}\n", task, o->steps, m,
               o->directions, o->mu, o->lr, h.sequences, acc0, acc, first, loss, seconds,
               h.decode_seconds);
    } else {
        printf("tuned in %.1f s (%.1f s in llama_decode, %" PRIu64 " sequences of prompt + "
               "text); loss %.4f -> %.4f\n", seconds, h.decode_seconds, h.sequences, first, loss);
        printf("forward-only prompt: test accuracy %.1f%% through llama.cpp\n", 100 * acc);
        if (o->save)
            printf("saved %s\n", o->save);
    }
    rc = 0;
out:
    ulpt_zo_free(zo);
    ulpt_optimizer_free(opt);
    ulpt_prompt_free(p);
    free(E);
    free(order);
    free(h.batch);
    free(h.req);
    free(h.logits);
    task_split_free(&train);
    task_split_free(&test);
    engine_free(h.e);
    return rc;
}
