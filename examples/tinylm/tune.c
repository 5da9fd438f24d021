/* tune.c -- tune a soft prompt for the frozen tinylm on a classification task, through
 * libulpt.  This is the example host: libulpt writes the prompt rows E, the host embeds
 * the text behind them, runs tinylm forward and backward and hands back the loss and
 * dL/dE (host_loss below); libulpt back-propagates into its parameters and steps AdamW.
 * With --zo it trains from losses alone: libulpt hands over the 2q perturbed prompts of
 * a forward-only step and the host scores each on the step's batch (host_losses).
 *
 *     tune [options] TASKDIR      TASKDIR holds train.tsv, test.tsv and (for --valid)
 *                                 valid.tsv, as examples/tinylm/tasks.py writes them
 *
 * An example is [E ; wte[text bytes] ; wte['\n']] and its label is the byte tinylm
 * predicts next, restricted to the two verbalizer bytes (the labels' first letters).
 * docs/TINYLM.md describes the tasks and the method; run `tune --help` for the options.
 * Errors: one line on stderr, exit status 1 (2 for usage). */
#define _POSIX_C_SOURCE 200809L /* fileno, isatty */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "recipe.h"
#include "task.h"
#include "tinylm.h"
#include "ulpt.h"

#define MAX_THREADS 16
#define SEPARATOR '\n'

static const char usage_text[] =
    "usage: tune [options] TASKDIR\n"
    "  --model PATH      frozen host model (default: tinylm.tlm beside this program)\n"
    "  --method M        ulpt (default), vanilla (n x d trainable) or none (no prompt)\n"
    "  --tokens N        soft tokens (default 16)\n"
    "  --rank R          ULPT rank (default 2)\n"
    "  --no-scale-shift  ULPT without the learned scale and shift (the paper's ablation)\n"
    "  --groups G        ULPT projection groups (default 1; G divides --tokens)\n"
    "  --init-std S      ULPT: Z starts as N(0, S^2) (default 1)\n"
    "  --init-text TEXT  ULPT: start from the least-squares fit of E to the model's token\n"
    "                    embeddings of TEXT's bytes (repeated to fill the soft tokens)\n"
    "  --steps S         training steps (default 200); --batch B (default 16)\n"
    "  --lr LR           AdamW peak learning rate (default 0.03); 10% warmup, linear decay\n"
    "  --seed K          seeds the prompt's initialization, projection and data order (1)\n"
    "  --zo              forward-only training: losses of perturbed prompts, no backward\n"
    "  --eps E           --zo perturbation size (default 1e-3)\n"
    "  --directions Q    --zo directions per step, 2Q forward passes a batch (default 1)\n"
    "  --threads T       worker threads, each with its own copy of the model (default 2)\n"
    "  --save PATH       write the tuned prompt there (f32 prompt file)\n"
    "  --load PATH       evaluate a saved prompt instead of tuning one\n"
    "  --valid           also report accuracy on valid.tsv (for learning-rate selection)\n"
    "  --json            print one JSON line of results instead of the report\n"
    "  --curve K         with --json: also the mean training loss of every K steps\n"
    "  --skip-baseline   do not measure the no-prompt accuracy (reported as -1)\n"
    "  --quiet           no progress bar\n";

/* ---- the task files (task.h) ------------------------------------------------------ */

typedef task_example example;
typedef task_split split;

static int split_load(split *s, const char *dir, const char *name, uint32_t max_text,
                      uint32_t vocab)
{
    char err[4608];
    return task_split_load(s, dir, name, max_text, vocab, err, sizeof err) ? fail("%s", err) : 0;
}

static double majority(const split *s)
{
    size_t ones = 0;
    for (size_t i = 0; i < s->n; i++)
        ones += (size_t)s->ex[i].label;
    return (double)(ones > s->n - ones ? ones : s->n - ones) / (double)s->n;
}

/* ---- the host: tinylm on a batch, split over worker threads --------------------- */

typedef struct host host;

typedef struct {
    host *h;
    int id;
    tlm_model *model;
    float *rows, *drows, *grad; /* T x C input rows, their gradient, this worker's dL/dE */
    double loss;
    double *losses;             /* this worker's loss sum of each prompt (--zo: several) */
    int correct, failed;
    char error[4608];           /* why this worker failed (tlm's messages are per thread) */
} worker;

struct host {
    worker w[MAX_THREADS];
    int n_threads;
    uint32_t n_tokens, C;
    uint8_t verbalizer[2];
    const example *const *batch; /* the examples of this call */
    const split *source;         /* the split they come from, for messages */
    size_t batch_n;
    const float *e;              /* prompt rows (n_tokens x C); NULL: none (baseline, none) */
    uint32_t n_prompts;          /* prompts at e, one after the other: > 1 only for --zo */
    uint32_t max_prompts;        /* room in each worker's losses */
    int want_grad;
    double callback_seconds;     /* time spent in host_loss, for the libulpt share */
    char error[4608];            /* why the last run_batch failed */
};

/* Loss and (if wanted) dL/dE of this worker's share of the batch: examples id, id+T, ...
 * With n_prompts > 1 (--zo) the work is every (prompt, example) pair, in the same
 * round-robin, and each prompt's loss is summed apart. */
static void *work(void *arg)
{
    worker *w = arg;
    host *h = w->h;
    const size_t C = h->C, n = h->e ? h->n_tokens : 0; /* no prompt rows: evaluation */
    const size_t units = h->batch_n * h->n_prompts;
    w->loss = 0;
    w->correct = 0;
    w->failed = 0;
    if (h->want_grad)
        memset(w->grad, 0, sizeof(float) * n * C);
    memset(w->losses, 0, sizeof(double) * h->n_prompts);
    for (size_t unit = (size_t)w->id; unit < units; unit += (size_t)h->n_threads) {
        const size_t prompt = unit / h->batch_n, i = unit % h->batch_n;
        const example *x = h->batch[i];
        uint32_t len = (uint32_t)n + x->len + 1;
        if (n)
            memcpy(w->rows, h->e + prompt * n * C, sizeof(float) * n * C);
        for (uint32_t t = 0; t <= x->len; t++)
            memcpy(w->rows + (n + t) * C,
                   tlm_token_embedding(w->model, t < x->len ? x->text[t] : SEPARATOR),
                   sizeof(float) * C);
        int pred;
        double l = tlm_class_loss(w->model, w->rows, len, h->verbalizer, 2, x->label,
                                  h->want_grad ? w->drows : NULL, &pred);
        if (!isfinite(l)) {
            const char *why = tlm_last_error();
            snprintf(w->error, sizeof w->error, "example on line %zu of %s: %s",
                     (size_t)(x - h->source->ex) + 2, h->source->path,
                     why[0] ? why : "the loss is not finite");
            w->failed = 1;
            return NULL;
        }
        w->loss += l;
        w->losses[prompt] += l;
        w->correct += pred == x->label;
        if (h->want_grad)
            for (size_t k = 0; k < n * C; k++)
                w->grad[k] += w->drows[k];
    }
    return NULL;
}

/* Runs the batch on all workers; sums loss, correct count and (if grad) dL/dE.  On
 * failure h->error says why. */
static int run_batch(host *h, double *loss, int *correct, float *grad)
{
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = { 0 };
    for (int t = 1; t < h->n_threads; t++)
        started[t] = pthread_create(&tid[t], NULL, work, &h->w[t]) == 0;
    work(&h->w[0]);
    for (int t = 1; t < h->n_threads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            work(&h->w[t]); /* no thread: do its share here */
    }
    double total = 0;
    int right = 0;
    const size_t nc = (size_t)h->n_tokens * h->C;
    for (int t = 0; t < h->n_threads; t++) {
        if (h->w[t].failed) {
            memcpy(h->error, h->w[t].error, sizeof h->error);
            return -1;
        }
        total += h->w[t].loss;
        right += h->w[t].correct;
        if (grad)
            for (size_t k = 0; k < nc; k++)
                grad[k] += h->w[t].grad[k] / (float)h->batch_n;
    }
    *loss = total / (double)(h->batch_n * h->n_prompts);
    *correct = right;
    return 0;
}

/* libulpt's callback: the mean cross-entropy of the batch and dL/dE. */
static int host_loss(void *user, const float *e, uint32_t n, uint32_t d, float *grad,
                     double *loss)
{
    host *h = user;
    double t0 = now();
    if (n != h->n_tokens || d != h->C)
        return -1;
    h->e = e;
    h->want_grad = 1;
    int correct, rc = run_batch(h, loss, &correct, grad);
    h->callback_seconds += now() - t0;
    return rc;
}

/* libulpt's forward-only callback: the mean cross-entropy of the step's batch under each
 * of `count` perturbed prompts, all scored in one parallel pass over the workers. */
static int host_losses(void *user, const float *e, uint32_t count, uint32_t n, uint32_t d,
                       double *losses)
{
    host *h = user;
    double t0 = now(), total;
    if (n != h->n_tokens || d != h->C || count > h->max_prompts)
        return -1;
    h->e = e;
    h->n_prompts = count;
    h->want_grad = 0;
    int correct, rc = run_batch(h, &total, &correct, NULL);
    h->n_prompts = 1;
    if (rc == 0)
        for (uint32_t c = 0; c < count; c++) {
            losses[c] = 0;
            for (int t = 0; t < h->n_threads; t++)
                losses[c] += h->w[t].losses[c];
            losses[c] /= (double)h->batch_n;
        }
    h->callback_seconds += now() - t0;
    return rc;
}

/* Accuracy on a split with prompt rows e (NULL: no prompt). */
static int evaluate(host *h, const split *s, const float *e, double *acc)
{
    const example **all = malloc(sizeof *all * s->n);
    if (!all)
        return fail("out of memory");
    for (size_t i = 0; i < s->n; i++)
        all[i] = &s->ex[i];
    h->batch = all;
    h->batch_n = s->n;
    h->source = s;
    h->e = e;
    h->want_grad = 0;
    double loss;
    int correct, rc = run_batch(h, &loss, &correct, NULL);
    free(all);
    if (rc)
        return fail("evaluation: %s", h->error);
    *acc = (double)correct / (double)s->n;
    return 0;
}

static void host_free(host *h)
{
    for (int t = 0; t < h->n_threads; t++) {
        tlm_free(h->w[t].model);
        free(h->w[t].rows);
        free(h->w[t].drows);
        free(h->w[t].grad);
        free(h->w[t].losses);
    }
    h->n_threads = 0;
}

static int host_init(host *h, const char *model_path, int threads, uint32_t n_tokens,
                     uint32_t max_prompts)
{
    memset(h, 0, sizeof *h);
    h->n_prompts = 1;
    h->max_prompts = max_prompts;
    for (int t = 0; t < threads; t++) {
        worker *w = &h->w[t];
        *w = (worker){ .h = h, .id = t };
        h->n_threads = t + 1;
        if (tlm_load(&w->model, model_path)) {
            host_free(h);
            return fail("%s", tlm_last_error());
        }
        const tlm_config *c = tlm_config_of(w->model);
        h->C = c->width;
        w->rows = malloc(sizeof(float) * c->max_len * c->width);
        w->drows = malloc(sizeof(float) * c->max_len * c->width);
        w->grad = malloc(sizeof(float) * (n_tokens ? n_tokens : 1) * c->width);
        w->losses = malloc(sizeof(double) * max_prompts);
        if (!w->rows || !w->drows || !w->grad || !w->losses) {
            host_free(h);
            return fail("out of memory");
        }
    }
    h->n_tokens = n_tokens;
    return 0;
}

/* ---- the command line ------------------------------------------------------------ */

typedef struct {
    const char *model, *taskdir, *method, *save, *load, *init_text;
    uint32_t tokens, rank, steps, batch, directions, groups, curve, threads;
    int no_scale_shift, valid, json, quiet, skip_baseline, zo;
    double lr, eps, init_std;
    uint64_t seed;
} options;

/* 0: run; 2: a bad argument (reported) or no TASKDIR (usage printed); 3: --help. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){ .method = "ulpt", .tokens = 16, .rank = 2, .steps = 200, .batch = 16,
                    .threads = 2, .lr = 0.03, .seed = 1, .directions = 1, .eps = 1e-3,
                    .groups = 1, .init_std = 1 };
    const cli_option table[] = {
        { "--model", CLI_STRING, &o->model, 0, 0 },
        { "--method", CLI_STRING, &o->method, 0, 0 },
        { "--tokens", CLI_U32, &o->tokens, 1, 128 },
        { "--rank", CLI_U32, &o->rank, 1, 4096 },
        { "--no-scale-shift", CLI_FLAG, &o->no_scale_shift, 0, 0 },
        { "--groups", CLI_U32, &o->groups, 1, 128 },
        { "--init-std", CLI_REAL0, &o->init_std, 0, 0 },
        { "--init-text", CLI_STRING, &o->init_text, 0, 0 },
        { "--steps", CLI_U32, &o->steps, 1, 1000000 },
        { "--batch", CLI_U32, &o->batch, 1, 4096 },
        { "--lr", CLI_REAL, &o->lr, 0, 0 },
        { "--seed", CLI_U64, &o->seed, 0, UINT32_MAX },
        { "--zo", CLI_FLAG, &o->zo, 0, 0 },
        { "--eps", CLI_REAL, &o->eps, 0, 0 },
        { "--directions", CLI_U32, &o->directions, 1, 1024 },
        { "--threads", CLI_U32, &o->threads, 1, MAX_THREADS },
        { "--save", CLI_STRING, &o->save, 0, 0 },
        { "--load", CLI_STRING, &o->load, 0, 0 },
        { "--valid", CLI_FLAG, &o->valid, 0, 0 },
        { "--json", CLI_FLAG, &o->json, 0, 0 },
        { "--curve", CLI_U32, &o->curve, 1, 1000000 },
        { "--skip-baseline", CLI_FLAG, &o->skip_baseline, 0, 0 },
        { "--quiet", CLI_FLAG, &o->quiet, 0, 0 },
        { NULL, CLI_FLAG, NULL, 0, 0 },
    };
    int n_operands, rc = cli_parse(argc, argv, table, &o->taskdir, 1, &n_operands);
    if (rc == 3) {
        fputs(usage_text, stdout);
        return 3;
    }
    if (rc)
        return 2;
    if (!n_operands) {
        fputs(usage_text, stderr);
        return 2;
    }
    if (strcmp(o->method, "ulpt") && strcmp(o->method, "vanilla") && strcmp(o->method, "none"))
        return 2 * fail("--method must be ulpt, vanilla or none, not \"%s\"", o->method);
    if (o->init_text && !*o->init_text)
        return 2 * fail("--init-text needs at least one byte of text");
    if (strcmp(o->method, "ulpt") && (o->groups != 1 || o->init_std != 1 || o->init_text))
        return 2 * fail("--groups, --init-std and --init-text are for --method ulpt");
    if (o->tokens % o->groups)
        return 2 * fail("--groups %" PRIu32 " does not divide --tokens %" PRIu32, o->groups,
                        o->tokens);
    if (o->curve && !o->json)
        return 2 * fail("--curve goes with --json");
    if (!o->model) /* the weights shipped beside the program, wherever it is run from */
        o->model = beside_program("tinylm.tlm", "examples/tinylm/tinylm.tlm");
    return 0;
}

/* ---- one run, phase by phase ------------------------------------------------------ */

typedef struct {
    const options *o;
    int none, vanilla;           /* --method none (and nothing loaded); --method vanilla */
    uint32_t n_tokens;           /* prompt rows in front of each example (0: none) */
    host h;
    const tlm_config *cfg;
    split train, valid, test;
    char task[256];
    ulpt_prompt *prompt;
    ulpt_optimizer *opt;
    ulpt_zo *zo;                 /* --zo only */
    float *e;                    /* the tuned prompt's rows, for evaluation */
    double *curve;               /* --curve: mean loss of each window of steps */
    double acc_before, acc_after, acc_valid, train_seconds, loss_first, loss_last;
    long long file_bytes;
} run;

static void run_free(run *r)
{
    free(r->curve);
    free(r->e);
    ulpt_zo_free(r->zo);
    ulpt_optimizer_free(r->opt);
    ulpt_prompt_free(r->prompt);
    host_free(&r->h);
    task_split_free(&r->train);
    task_split_free(&r->valid);
    task_split_free(&r->test);
}

/* The prompt to evaluate (--load), the workers' models, and whether they fit together. */
static int open_host(run *r)
{
    const options *o = r->o;
    if (o->load && ulpt_prompt_load(&r->prompt, o->load) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    r->n_tokens = r->none ? 0 : r->prompt ? ulpt_prompt_n_tokens(r->prompt) : o->tokens;
    if (host_init(&r->h, o->model, (int)o->threads, r->n_tokens, 2 * o->directions))
        return 1;
    r->cfg = tlm_config_of(r->h.w[0].model);
    if (r->n_tokens + 2 > r->cfg->max_len)
        return fail("--tokens %" PRIu32 " leaves no room for text in a context of %" PRIu32,
                    r->n_tokens, r->cfg->max_len);
    if (r->prompt && ulpt_prompt_dim(r->prompt) != r->cfg->width)
        return fail("%s: the prompt's dim %" PRIu32 " is not the model's width %" PRIu32,
                    o->load, ulpt_prompt_dim(r->prompt), r->cfg->width);
    return 0;
}

/* test.tsv, and train.tsv and valid.tsv when they are used; one pair of labels. */
static int load_splits(run *r)
{
    const options *o = r->o;
    const uint32_t max_text = r->cfg->max_len - r->n_tokens - 1, vocab = r->cfg->vocab;
    if (split_load(&r->test, o->taskdir, "test", max_text, vocab) ||
        (!o->load && !r->none && split_load(&r->train, o->taskdir, "train", max_text, vocab)) ||
        (o->valid && split_load(&r->valid, o->taskdir, "valid", max_text, vocab)))
        return 1;
    const split *test = &r->test, *others[2] = { &r->train, &r->valid };
    for (int k = 0; k < 2; k++)
        if (others[k]->n && (strcmp(others[k]->names[0], test->names[0]) ||
                             strcmp(others[k]->names[1], test->names[1])))
            return fail("%s: labels \"%s\", \"%s\" differ from test.tsv's \"%s\", \"%s\"",
                        others[k]->path, others[k]->names[0], others[k]->names[1],
                        test->names[0], test->names[1]);
    r->h.verbalizer[0] = (uint8_t)test->names[0][0];
    r->h.verbalizer[1] = (uint8_t)test->names[1][0];
    if (r->h.verbalizer[0] >= vocab || r->h.verbalizer[1] >= vocab || SEPARATOR >= vocab)
        return fail("%s: a label's first byte or the separator is past the model's "
                    "vocabulary of %" PRIu32, test->path, vocab);
    task_name(o->taskdir, r->task, sizeof r->task);
    return 0;
}

/* The frozen model's accuracy without a prompt, and the report's first lines. */
static int measure_baseline(run *r)
{
    const options *o = r->o;
    const split *test = &r->test;
    r->acc_before = -1;
    if ((!o->skip_baseline || r->none) && evaluate(&r->h, test, NULL, &r->acc_before))
        return 1;
    if (o->json)
        return 0;
    if (r->train.n)
        printf("task %s: %zu training, %zu test examples; labels \"%s\" and \"%s\"\n", r->task,
               r->train.n, test->n, test->names[0], test->names[1]);
    else
        printf("task %s: %zu test examples; labels \"%s\" and \"%s\"\n", r->task, test->n,
               test->names[0], test->names[1]);
    printf("majority class: %.1f%% of the test set\n", 100 * majority(test));
    if (r->acc_before >= 0)
        printf("frozen tinylm (%zu parameters), no prompt: test accuracy %.1f%%\n",
               tlm_num_params(r->h.w[0].model), 100 * r->acc_before);
    return 0;
}

/* The root mean square of the model's token embeddings: where a vanilla prompt starts. */
static double embedding_rms(const tlm_model *m, const tlm_config *cfg)
{
    const float *wte = tlm_token_embedding(m, 0);
    double ss = 0;
    for (size_t k = 0; k < (size_t)cfg->vocab * cfg->width; k++)
        ss += (double)wte[k] * wte[k];
    return sqrt(ss / ((double)cfg->vocab * cfg->width));
}

/* E fitted to the model's embeddings of the text's bytes, repeated to fill the rows. */
static int init_from_text(run *r, const char *text)
{
    const size_t C = r->cfg->width, len = strlen(text);
    float *rows = malloc(sizeof(float) * r->o->tokens * C);
    if (!rows)
        return fail("out of memory");
    for (uint32_t i = 0; i < r->o->tokens; i++)
        memcpy(rows + i * C, tlm_token_embedding(r->h.w[0].model, (unsigned char)text[i % len]),
               sizeof(float) * C);
    int rc = ulpt_prompt_init_from_embeddings(r->prompt, rows, (uint32_t)C, NULL, NULL);
    free(rows);
    return rc != ULPT_OK ? fail("%s", ulpt_last_error()) : 0;
}

/* The prompt of --method, the examples' AdamW (recipe.h), and (--zo) the forward-only
 * trainer over them. */
static int create_prompt(run *r)
{
    const options *o = r->o;
    int rc = 0;
    ulpt_prompt_options po = recipe_prompt(o->tokens, o->rank, r->cfg->width, o->seed);
    if (r->vanilla) { /* P = I, no scale or shift: E = Z, n x d trainable */
        po.rank = r->cfg->width;
        po.projection_kind = ULPT_PROJ_IDENTITY;
        po.flags = ULPT_NO_SCALE | ULPT_NO_SHIFT;
        po.init_std = (float)embedding_rms(r->h.w[0].model, r->cfg);
    } else {
        po.flags = o->no_scale_shift ? ULPT_NO_SCALE | ULPT_NO_SHIFT : 0;
        po.n_groups = o->groups;
        po.init_std = (float)o->init_std;
    }
    TRY(ulpt_prompt_create(&r->prompt, &po));
    if (o->init_text && init_from_text(r, o->init_text))
        return 1;
    ulpt_optimizer_options oo = recipe_adamw(o->lr, o->steps);
    TRY(ulpt_optimizer_create(&r->opt, r->prompt, &oo));
    if (o->zo) {
        ulpt_zo_options zoo = ULPT_ZO_OPTIONS_INIT; /* Rademacher, Z, s and b */
        zoo.epsilon = o->eps;
        zoo.directions = o->directions;
        zoo.seed = o->seed;
        TRY(ulpt_zo_create(&r->zo, r->prompt, r->opt, &zoo));
    }
    if (!o->json)
        printf("tuning %s%s: %" PRIu32 " soft tokens, %zu trainable parameters "
               "(vanilla prompt tuning: %" PRIu32 ")\n",
               r->vanilla ? "a vanilla prompt" : "a ULPT prompt", o->zo ? " forward-only" : "",
               o->tokens, ulpt_prompt_num_params(r->prompt), o->tokens * r->cfg->width);
out:
    return rc;
}

static void progress(const options *o, uint32_t step, double loss, float lr, double elapsed)
{
    static int tty = -1;
    if (tty < 0)
        tty = isatty(fileno(stdout));
    if (o->quiet || o->json || (!tty && step % 25 && step != o->steps))
        return;
    char bar[31];
    int filled = (int)(30 * (uint64_t)step / o->steps);
    memset(bar, '#', (size_t)filled);
    memset(bar + filled, '.', (size_t)(30 - filled));
    bar[30] = '\0';
    printf("%s[%s] step %3" PRIu32 "/%" PRIu32 "  loss %.4f  lr %.5f  %6.1fs%s",
           tty ? "\r" : "", bar, step, o->steps, loss, lr, elapsed,
           tty && step < o->steps ? "" : "\n");
    fflush(stdout);
}

/* o->steps steps on batches drawn in seeded epochs (task_sampler); the loss of the first
 * and the last, and with --curve the mean of every window of o->curve steps. */
static int train(run *r)
{
    const options *o = r->o;
    const example **batch = malloc(sizeof *batch * o->batch);
    task_sampler order = { 0 };
    int rc = 0;
    if (o->curve && !(r->curve = calloc((o->steps + o->curve - 1) / o->curve, sizeof *r->curve)))
        rc = fail("out of memory");
    else if (!batch || task_sampler_init(&order, r->train.n, o->seed))
        rc = fail("out of memory");
    r->h.batch = batch;
    r->h.batch_n = o->batch;
    r->h.source = &r->train;
    const double start = now();
    for (uint32_t step = 1; !rc && step <= o->steps; step++) {
        task_sampler_next(&order, &r->train, batch, o->batch);
        const float lr = ulpt_optimizer_lr(r->opt);
        double loss;
        if ((r->zo ? ulpt_zo_step(&loss, r->zo, host_losses, &r->h)
                   : ulpt_train_step(r->prompt, r->opt, host_loss, &r->h, &loss)) != ULPT_OK) {
            rc = fail("step %" PRIu32 ": %s%s%s", step, ulpt_last_error(),
                      r->h.error[0] ? ": " : "", r->h.error);
            break;
        }
        if (step == 1)
            r->loss_first = loss;
        r->loss_last = loss;
        if (r->curve) /* the last window may be short */
            r->curve[(step - 1) / o->curve] +=
                loss / (step > o->steps / o->curve * o->curve ? o->steps % o->curve : o->curve);
        progress(o, step, loss, lr, now() - start);
    }
    r->train_seconds = now() - start;
    r->h.batch = NULL;
    free(batch);
    task_sampler_free(&order);
    if (rc)
        return rc;
    TRY(ulpt_prompt_set_meta(r->prompt, "model", tlm_meta_of(r->h.w[0].model)->corpus[0]
                                                     ? "tinylm" : "tinylm-random"));
    TRY(ulpt_prompt_set_meta(r->prompt, "task", r->task));
out:
    return rc;
}

/* Test (and --valid) accuracy with the prompt's rows; --save writes the prompt. */
static int evaluate_prompt(run *r)
{
    const options *o = r->o;
    int rc = 0;
    if (r->prompt) {
        if (!(r->e = malloc(sizeof(float) * r->n_tokens * r->cfg->width)))
            return fail("out of memory");
        TRY(ulpt_prompt_forward(r->prompt, r->e, r->cfg->width));
    }
    if (evaluate(&r->h, &r->test, r->e, &r->acc_after) ||
        (o->valid && evaluate(&r->h, &r->valid, r->e, &r->acc_valid)))
        return 1;
    if (o->save && r->prompt) {
        TRY(ulpt_prompt_save(r->prompt, o->save, NULL));
        struct stat st;
        if (stat(o->save, &st) == 0)
            r->file_bytes = (long long)st.st_size;
    }
out:
    return rc;
}

/* The training loop's time outside the host's callback: libulpt's work (forward,
 * backward, checks, AdamW) plus picking each batch's examples, so at most libulpt's. */
static double ulpt_seconds(const run *r)
{
    return r->train_seconds - r->h.callback_seconds;
}

/* --json: one line, the fields docs/TINYLM.md lists. */
static void report_json(const run *r)
{
    const options *o = r->o;
    const ulpt_prompt *p = r->prompt;
    const int zo = r->zo != NULL;
    printf("{\"task\": \"%s\", \"method\": \"%s\", \"tokens\": %" PRIu32
           ", \"rank\": %" PRIu32 ", \"scale_shift\": %s, \"seed\": %" PRIu64
           ", \"lr\": %g, \"steps\": %" PRIu32 ", \"batch\": %" PRIu32
           ", \"params\": %zu, \"file_bytes\": %lld, \"majority\": %.6f"
           ", \"acc_no_prompt\": %.6f, \"acc_test\": %.6f, \"acc_valid\": %.6f"
           ", \"loss_first\": %.6f, \"loss_last\": %.6f, \"train_seconds\": %.3f"
           ", \"ulpt_seconds\": %.4f, \"forward_only\": %s, \"directions\": %" PRIu32
           ", \"eps\": %g, \"groups\": %" PRIu32 ", \"init_std\": %g, \"init_text\": %s",
           r->task, o->load ? "loaded" : o->method, r->n_tokens, p ? ulpt_prompt_rank(p) : 0,
           p && !(ulpt_prompt_flags(p) & (ULPT_NO_SCALE | ULPT_NO_SHIFT)) ? "true" : "false",
           o->seed, o->lr, r->none || o->load ? 0 : o->steps, o->batch,
           p && !o->load ? ulpt_prompt_num_params(p) : 0, r->file_bytes, majority(&r->test),
           r->acc_before, r->acc_after, r->acc_valid, r->loss_first, r->loss_last,
           r->train_seconds, ulpt_seconds(r), zo ? "true" : "false", zo ? o->directions : 0,
           zo ? o->eps : 0.0, p ? ulpt_prompt_n_groups(p) : 0, o->init_std,
           o->init_text ? "true" : "false");
    if (r->curve) {
        printf(", \"curve_every\": %" PRIu32 ", \"curve\": [", o->curve);
        for (uint32_t k = 0; k < (o->steps + o->curve - 1) / o->curve; k++)
            printf("%s%.5f", k ? ", " : "", r->curve[k]);
        printf("]");
    }
    printf("}\n");
}

/* The report's last lines: training, accuracy, the saved file. */
static void report_text(const run *r)
{
    const options *o = r->o;
    if (!r->prompt)
        return;
    const double share = 100 * ulpt_seconds(r) / r->train_seconds;
    if (!o->load && r->zo)
        printf("tuned forward-only in %.1f s (%" PRIu32 " steps x %" PRIu32
               " forward passes of the batch; at most %.3f%% of the time inside libulpt); "
               "loss %.4f -> %.4f\n", r->train_seconds, o->steps, 2 * o->directions, share,
               r->loss_first, r->loss_last);
    else if (!o->load)
        printf("tuned in %.1f s (at most %.3f%% of it inside libulpt); loss %.4f -> %.4f\n",
               r->train_seconds, share, r->loss_first, r->loss_last);
    printf("%s prompt: test accuracy %.1f%%  (", o->load ? "loaded" : "tuned",
           100 * r->acc_after);
    if (r->acc_before >= 0)
        printf("no prompt %.1f%%, ", 100 * r->acc_before);
    printf("majority %.1f%%)\n", 100 * majority(&r->test));
    if (o->valid)
        printf("validation accuracy %.1f%%\n", 100 * r->acc_valid);
    if (o->save)
        printf("saved %s: %lld bytes (a vanilla soft prompt of %" PRIu32 " x %" PRIu32
               " floats: %zu bytes)\n", o->save, r->file_bytes, r->n_tokens, r->cfg->width,
               sizeof(float) * r->n_tokens * r->cfg->width);
}

int main(int argc, char **argv)
{
    options o;
    cli_set_name("tune");
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 3 ? 0 : rc;
    run r = { .o = &o, .none = !strcmp(o.method, "none") && !o.load,
              .vanilla = !strcmp(o.method, "vanilla") };
    const int tuning = !r.none && !o.load;
    ulpt_set_num_threads(1); /* parallelism comes from the workers */
    rc = open_host(&r) || load_splits(&r) || measure_baseline(&r) ||
         (tuning && (create_prompt(&r) || train(&r))) || evaluate_prompt(&r);
    if (!rc && o.json)
        report_json(&r);
    else if (!rc)
        report_text(&r);
    run_free(&r);
    return rc;
}
