/* tune.c -- tuning a prompt inside llama.cpp.
 *
 * A tuning method is a step that moves the prompt on one minibatch (tune_method below).
 * The forward-only method needs nothing of the engine but its forward: libulpt's
 * ulpt_zo_step writes 2q perturbed prompts theta +- eps*u_j and asks for their losses on
 * the minibatch; each (perturbed prompt, example) pair is decoded as its own sequence and
 * scored by engine_score; libulpt forms the two-point gradient estimate and steps AdamW.
 * A method that has the gradient with respect to the rows (a first-order method) plugs in
 * ahead of it in `methods`: the first method usable with the model is taken, and the
 * line saying which (and why not the others) is printed.
 *
 * The loss of an example is -log softmax over the labels of their scores (each label's
 * summed token log-probability); the schedule is examples/tinylm/tune's. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"
#include "grad.h"
#include "host.h"
#include "recipe.h"
#include "task.h"
#include "ulpt.h"

typedef struct tuner tuner;

typedef struct {
    const char *name;
    /* 0 if the method can tune on t's model; else 1 with why[] saying why not */
    int (*usable)(const tuner *t, char *why, size_t size);
    int (*init)(tuner *t);                   /* 0 or 1 (reported) */
    int (*step)(tuner *t, double *loss);     /* one step on t->batch; 0 or 1 (reported) */
    void (*done)(tuner *t);
} tune_method;

struct tuner {
    const options *o;
    engine *e;
    label_set labels;
    text_format fmt;
    data_split train_data, valid_data, test_data;
    task_set train, valid, test;
    ulpt_prompt *p;
    ulpt_optimizer *opt;
    task_sampler sampler;
    task_split index_view;    /* the sampler draws example indices: ex[i].label = i */
    const task_example **drawn;
    size_t *batch;            /* this step's examples (indices into train) */
    uint32_t m;               /* examples a step */
    engine_seq *seqs;
    double *scores;
    uint64_t sequences;       /* decoded so far */
    double decode_seconds;
    void *method_state;
};

/* ---- the forward-only method ------------------------------------------------------- */

/* libulpt's forward-only callback: losses[c] = the mean loss of perturbed prompt c on the
 * step's minibatch.  Pair (c, i) -- prompt c, example i -- is sequence c*m + i. */
static int zo_losses(void *user, const float *emb, uint32_t count, uint32_t n_tokens,
                     uint32_t dim, double *losses)
{
    tuner *t = user;
    const size_t total = (size_t)count * t->m;
    const uint32_t L = t->labels.names.n;
    for (size_t j = 0; j < total; j++) {
        const size_t c = j / t->m, i = t->batch[j % t->m];
        t->seqs[j] = (engine_seq){ emb + c * n_tokens * dim, n_tokens, t->train.tokens[i],
                                   t->train.len[i], 1, NULL };
    }
    double t0 = now();
    if (engine_score(t->e, t->seqs, total, &t->labels.view, t->scores))
        return fail("%s", engine_error()), -1;
    t->decode_seconds += now() - t0;
    t->sequences += total;
    for (uint32_t c = 0; c < count; c++)
        losses[c] = 0;
    for (size_t j = 0; j < total; j++)
        losses[j / t->m] += label_loss(t->scores + j * L, L, t->train.label[t->batch[j % t->m]]);
    for (uint32_t c = 0; c < count; c++)
        losses[c] /= (double)t->m;
    return 0;
}

static int zo_usable(const tuner *t, char *why, size_t size)
{
    (void)t, (void)why, (void)size;
    return 0; /* a forward is all it needs */
}

static int zo_init(tuner *t)
{
    ulpt_zo *zo = NULL;
    ulpt_zo_options zopt = ULPT_ZO_OPTIONS_INIT;
    zopt.epsilon = t->o->mu;
    zopt.directions = t->o->directions;
    zopt.seed = t->o->seed;
    if (ulpt_zo_create(&zo, t->p, t->opt, &zopt) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    const size_t most = (size_t)2 * t->o->directions * t->m;
    t->seqs = malloc(sizeof *t->seqs * most);
    t->scores = malloc(sizeof(double) * most * t->labels.names.n);
    if (!t->seqs || !t->scores) {
        ulpt_zo_free(zo);
        return fail("out of memory");
    }
    t->method_state = zo;
    return 0;
}

static int zo_step(tuner *t, double *loss)
{
    return ulpt_zo_step(loss, t->method_state, zo_losses, t) != ULPT_OK
               ? fail("%s", ulpt_last_error())
               : 0;
}

static void zo_done(tuner *t)
{
    ulpt_zo_free(t->method_state);
    t->method_state = NULL;
}

/* ---- the first-order method: dL/dE from llama.cpp (grad.c, llama_embd_grad) ---------- */

static grad_model *fo_model; /* opened by fo_usable, which must learn whether it can */

/* the step's loss and dL/dE for ulpt_train_step */
static int fo_loss(void *user, const float *E, uint32_t n_rows, uint32_t dim, float *G,
                   double *loss)
{
    tuner *t = user;
    grad_example *ex = t->method_state;
    char err[600];
    (void)dim;
    for (uint32_t b = 0; b < t->m; b++)
        ex[b] = (grad_example){ t->train.tokens[t->batch[b]], t->train.len[t->batch[b]],
                                t->train.label[t->batch[b]] };
    const grad_labels labels = { t->labels.view.tokens, t->labels.view.len, t->labels.view.n };
    const double t0 = now();
    if (grad_loss(fo_model, E, n_rows, ex, t->m, &labels, G, loss, err, sizeof err))
        return fail("%s", err), -1;
    t->decode_seconds += now() - t0;
    return 0;
}

static int fo_usable(const tuner *t, char *why, size_t size)
{
    /* graphs of at least 512 rows, and at least the longest sequence of a step */
    uint32_t longest = 0;
    for (size_t i = 0; i < t->train.n; i++)
        longest = t->train.len[i] > longest ? t->train.len[i] : longest;
    uint32_t rows = 2 + t->o->tokens + longest + t->labels.longest;
    rows = rows > 512 ? rows : 512;
    return grad_open(&fo_model, t->o->gguf, rows, (int)t->o->threads, why, size) != 0;
}

static int fo_init(tuner *t)
{
    if (!(t->method_state = malloc(sizeof(grad_example) * t->m)))
        return fail("out of memory");
    return 0;
}

static int fo_step(tuner *t, double *loss)
{
    const uint64_t before = grad_sequences(fo_model);
    if (ulpt_train_step(t->p, t->opt, fo_loss, t, loss) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    t->sequences += grad_sequences(fo_model) - before;
    return 0;
}

static void fo_done(tuner *t)
{
    free(t->method_state);
    t->method_state = NULL;
    grad_free(fo_model);
    fo_model = NULL;
}

static const tune_method methods[] = {
    { "first-order", fo_usable, fo_init, fo_step, fo_done },
    { "forward-only", zo_usable, zo_init, zo_step, zo_done },
};

/* ---- phases ------------------------------------------------------------------------ */

/* Test (or validation) accuracy of prompt rows E over s, max_seqs sequences a decode. */
static int accuracy(tuner *t, const task_set *s, const float *E, double *acc)
{
    const uint32_t L = t->labels.names.n;
    engine_seq *seqs = malloc(sizeof *seqs * s->n);
    double *scores = malloc(sizeof(double) * s->n * L);
    if (!seqs || !scores) {
        free(seqs);
        free(scores);
        return fail("out of memory");
    }
    task_seqs(s, 0, s->n, E, ulpt_prompt_n_tokens(t->p), seqs);
    int rc = engine_score(t->e, seqs, s->n, &t->labels.view, scores);
    size_t right = 0;
    for (size_t i = 0; !rc && i < s->n; i++)
        right += predict(scores + i * L, L) == s->label[i];
    free(seqs);
    free(scores);
    if (rc)
        return fail("%s", engine_error());
    *acc = (double)right / (double)s->n;
    return 0;
}

/* The model, the data (tokenized and checked to fit), the prompt and its optimizer. */
static int tune_setup(tuner *t)
{
    const options *o = t->o;
    data_labels names = { 0 };
    char err[512];
    int rc = 1;
    snprintf(t->fmt.sep, sizeof t->fmt.sep, "%s", o->sep ? o->sep : "\n");
    t->fmt.chat = o->chat;
    if (open_engine(o, o->batch, &t->e))
        return 1;
    if (o->labels && data_labels_parse(&names, o->labels, ',', err, sizeof err))
        return fail("--labels: %s", err);
    if (task_load(o->n_args ? o->args[0] : NULL, o, &names, &t->fmt, &t->train_data,
                  &t->valid_data, &t->test_data) ||
        labels_prepare(t->e, &names, &t->labels) ||
        task_set_prepare(t->e, &t->train_data, &t->fmt, o->tokens, &t->labels, &t->train) ||
        (t->valid_data.n && task_set_prepare(t->e, &t->valid_data, &t->fmt, o->tokens,
                                             &t->labels, &t->valid)) ||
        (t->test_data.n && task_set_prepare(t->e, &t->test_data, &t->fmt, o->tokens,
                                            &t->labels, &t->test)))
        goto out;
    t->m = o->examples;
    t->batch = malloc(sizeof *t->batch * t->m);
    t->drawn = malloc(sizeof *t->drawn * t->m);
    t->index_view.ex = calloc(t->train.n, sizeof *t->index_view.ex);
    t->index_view.n = t->train.n;
    if (!t->batch || !t->drawn || !t->index_view.ex ||
        task_sampler_init(&t->sampler, t->train.n, o->seed)) {
        rc = fail("out of memory");
        goto out;
    }
    for (size_t i = 0; i < t->train.n; i++)
        t->index_view.ex[i].label = (int)i;

    /* the recipe of every example host (examples/common/recipe.h) */
    const ulpt_prompt_options po =
        recipe_prompt(o->tokens, o->rank, engine_identity_of(t->e)->n_embd, o->seed);
    TRY(ulpt_prompt_create(&t->p, &po));
    const ulpt_optimizer_options oo = recipe_adamw(o->lr, o->steps);
    TRY(ulpt_optimizer_create(&t->opt, t->p, &oo));
    rc = 0;
out:
    data_labels_free(&names);
    return rc;
}

/* The first usable method (or the one --method names), and a line saying which and why
 * not those before it. */
static const tune_method *tune_pick(const tuner *t)
{
    const char *want = t->o->method;
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        char why[512] = "";
        if (want && strcmp(want, methods[i].name))
            continue;
        if (!methods[i].usable(t, why, sizeof why))
            return &methods[i];
        if (want)
            return fail("--method %s: not usable with this model: %s", want, why), NULL;
        if (!t->o->json)
            printf("not %s: %s\n", methods[i].name, why);
    }
    if (want)
        fail("--method %s: unknown (first-order or forward-only)", want);
    return NULL;
}

static int tune_loop(tuner *t, const tune_method *method, double *first, double *last)
{
    const double start = now();
    for (uint32_t step = 1; step <= t->o->steps; step++) {
        task_sampler_next(&t->sampler, &t->index_view, t->drawn, t->m);
        for (uint32_t b = 0; b < t->m; b++)
            t->batch[b] = (size_t)t->drawn[b]->label;
        if (method->step(t, last))
            return fail("step %u: %s", step, "the step failed (see above)");
        if (step == 1)
            *first = *last;
        if (!t->o->json && (step % 50 == 0 || step == t->o->steps)) {
            printf("  step %4u/%u  loss %.4f  %6.1f s\n", step, t->o->steps, *last,
                   now() - start);
            fflush(stdout);
        }
    }
    return 0;
}

/* The prompt records the model, the layout, the labels and the task; saved if asked. */
static int tune_save(tuner *t)
{
    char task[256], dir[4096];
    const options *o = t->o;
    /* the task: the task directory, or the directory of the training file */
    snprintf(dir, sizeof dir, "%s", o->n_args ? o->args[0] : o->train);
    char *slash = o->n_args ? NULL : strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else if (!o->n_args)
        snprintf(dir, sizeof dir, ".");
    task_name(dir, task, sizeof task);
    if (engine_identity_to_prompt(t->e, t->p))
        return fail("%s", engine_error());
    if (format_to_prompt(t->p, &t->fmt, &t->labels.names))
        return 1;
    if (ulpt_prompt_set_meta(t->p, "task", task) != ULPT_OK ||
        (o->save && ulpt_prompt_save(t->p, o->save, NULL) != ULPT_OK))
        return fail("%s", ulpt_last_error());
    return 0;
}

static void tuner_free(tuner *t)
{
    ulpt_optimizer_free(t->opt);
    ulpt_prompt_free(t->p);
    task_sampler_free(&t->sampler);
    free(t->index_view.ex);
    free(t->drawn);
    free(t->batch);
    free(t->seqs);
    free(t->scores);
    task_set_free(&t->train);
    task_set_free(&t->valid);
    task_set_free(&t->test);
    data_free(&t->train_data);
    data_free(&t->valid_data);
    data_free(&t->test_data);
    labels_free(&t->labels);
    engine_free(t->e);
}

int cmd_tune(const options *o)
{
    tuner t = { .o = o };
    const tune_method *method = NULL;
    float *E = NULL;
    int rc = 1;
    if (o->n_args > 1)
        return fail("tune: usage: ulpt-llama tune --gguf M.gguf (--train T.jsonl | TASKDIR) "
                    "[--test X.jsonl] [--save P.ulpt]");
    if (tune_setup(&t) || !(method = tune_pick(&t)) || method->init(&t))
        goto out;
    const task_set *eval = t.test.n ? &t.test : t.valid.n ? &t.valid : &t.train;
    const char *eval_name = t.test.n ? "test" : t.valid.n ? "validation" : "training";
    const size_t C = engine_identity_of(t.e)->n_embd;
    double acc0, acc, first = 0, loss = 0;
    if (!(E = malloc(sizeof(float) * o->tokens * C))) {
        rc = fail("out of memory");
        goto out;
    }
    TRY(ulpt_prompt_forward(t.p, E, C));
    if (accuracy(&t, eval, E, &acc0))
        goto out;
    if (!o->json)
        printf("tuning a rank-%u prompt of %u rows (%zu parameters) inside llama.cpp, %s:\n"
               "  %u steps of %u examples, %u labels; %s accuracy before: %.1f%%\n", o->rank,
               o->tokens, ulpt_prompt_num_params(t.p), method->name, o->steps, t.m,
               t.labels.names.n, eval_name, 100 * acc0);
    const double start = now();
    if (tune_loop(&t, method, &first, &loss))
        goto out;
    const double seconds = now() - start;
    TRY(ulpt_prompt_forward(t.p, E, C));
    if (accuracy(&t, eval, E, &acc) || tune_save(&t))
        goto out;
    if (o->json) {
        printf("{\"method\": \"%s\", \"steps\": %u, \"batch\": %u, \"directions\": %u, "
               "\"epsilon\": %g, \"lr\": %g, \"sequences\": %" PRIu64 ", \"eval\": \"%s\", "
               "\"acc_before\": %.6f, \"acc_test\": %.6f, \"loss_first\": %.6f, "
               "\"loss_last\": %.6f, \"train_seconds\": %.3f, \"decode_seconds\": %.3f}\n",
               method->name, o->steps, t.m, o->directions, o->mu, o->lr, t.sequences,
               eval_name, acc0, acc, first, loss, seconds, t.decode_seconds);
    } else {
        printf("tuned in %.1f s (%.1f s scoring, %" PRIu64 " sequences); loss %.4f -> %.4f\n",
               seconds, t.decode_seconds, t.sequences, first, loss);
        printf("%s accuracy %.1f%% through llama.cpp\n", eval_name, 100 * acc);
        if (o->save)
            printf("saved %s\n", o->save);
    }
    rc = 0;
out:
    if (method && method->done)
        method->done(&t);
    free(E);
    tuner_free(&t);
    return rc;
}
