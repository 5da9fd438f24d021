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
#define _GNU_SOURCE /* memrchr */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tune: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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
    const float *e;              /* prompt rows (n_tokens x C); NULL: none (baseline, --method none) */
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

/* ---- the command ---------------------------------------------------------------- */

typedef struct {
    const char *model, *taskdir, *method, *save, *load, *init_text;
    uint32_t tokens, rank, steps, batch, directions, groups, curve;
    int no_scale_shift, threads, valid, json, quiet, skip_baseline, zo;
    double lr, eps, init_std;
    uint64_t seed;
} options;

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

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return fail("%s must be an integer in [%" PRIu32 ", %" PRIu32 "], not \"%s\"", what,
                    lo, hi, s);
    *out = (uint32_t)v;
    return 0;
}

/* A finite number above 0 (or at least 0 with zero_ok) */
static int parse_real(const char *s, int zero_ok, double *out, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || !(zero_ok ? v >= 0 : v > 0))
        return fail("%s must be a %s number, not \"%s\"", what,
                    zero_ok ? "finite, non-negative" : "positive", s);
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){ .model = NULL, .method = "ulpt", .tokens = 16,
                    .rank = 2, .steps = 200, .batch = 16, .threads = 2, .lr = 0.03,
                    .seed = 1, .directions = 1, .eps = 1e-3, .groups = 1, .init_std = 1 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint32_t u;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            exit(0);
        } else if (!strcmp(a, "--no-scale-shift")) {
            o->no_scale_shift = 1;
        } else if (!strcmp(a, "--valid")) {
            o->valid = 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--skip-baseline")) {
            o->skip_baseline = 1;
        } else if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
        } else if (!strcmp(a, "--zo")) {
            o->zo = 1;
        } else if (a[0] == '-' && a[1] == '-') {
            if (!v)
                return fail("%s needs a value", a);
            i++;
            if (!strcmp(a, "--model")) {
                o->model = v;
            } else if (!strcmp(a, "--method")) {
                if (strcmp(v, "ulpt") && strcmp(v, "vanilla") && strcmp(v, "none"))
                    return fail("--method must be ulpt, vanilla or none, not \"%s\"", v);
                o->method = v;
            } else if (!strcmp(a, "--tokens")) {
                if (parse_u32(v, 1, 128, &o->tokens, "--tokens"))
                    return 1;
            } else if (!strcmp(a, "--rank")) {
                if (parse_u32(v, 1, 4096, &o->rank, "--rank"))
                    return 1;
            } else if (!strcmp(a, "--steps")) {
                if (parse_u32(v, 1, 1000000, &o->steps, "--steps"))
                    return 1;
            } else if (!strcmp(a, "--batch")) {
                if (parse_u32(v, 1, 4096, &o->batch, "--batch"))
                    return 1;
            } else if (!strcmp(a, "--threads")) {
                if (parse_u32(v, 1, MAX_THREADS, &u, "--threads"))
                    return 1;
                o->threads = (int)u;
            } else if (!strcmp(a, "--seed")) {
                if (parse_u32(v, 0, UINT32_MAX, &u, "--seed"))
                    return 1;
                o->seed = u;
            } else if (!strcmp(a, "--lr")) {
                if (parse_real(v, 0, &o->lr, "--lr"))
                    return 1;
            } else if (!strcmp(a, "--directions")) {
                if (parse_u32(v, 1, 1024, &o->directions, "--directions"))
                    return 1;
            } else if (!strcmp(a, "--eps")) {
                if (parse_real(v, 0, &o->eps, "--eps"))
                    return 1;
            } else if (!strcmp(a, "--groups")) {
                if (parse_u32(v, 1, 128, &o->groups, "--groups"))
                    return 1;
            } else if (!strcmp(a, "--curve")) {
                if (parse_u32(v, 1, 1000000, &o->curve, "--curve"))
                    return 1;
            } else if (!strcmp(a, "--init-std")) {
                if (parse_real(v, 1, &o->init_std, "--init-std"))
                    return 1;
            } else if (!strcmp(a, "--init-text")) {
                if (!*v)
                    return fail("--init-text needs at least one byte of text");
                o->init_text = v;
            } else if (!strcmp(a, "--save")) {
                o->save = v;
            } else if (!strcmp(a, "--load")) {
                o->load = v;
            } else {
                return fail("unknown option %s (see --help)", a);
            }
        } else if (!o->taskdir) {
            o->taskdir = a;
        } else {
            return fail("one TASKDIR only (see --help)");
        }
    }
    if (!o->taskdir) {
        fputs(usage_text, stderr);
        exit(2);
    }
    if (strcmp(o->method, "ulpt") && (o->groups != 1 || o->init_std != 1 || o->init_text))
        return fail("--groups, --init-std and --init-text are for --method ulpt");
    if (o->tokens % o->groups)
        return fail("--groups %" PRIu32 " does not divide --tokens %" PRIu32, o->groups,
                    o->tokens);
    if (o->curve && !o->json)
        return fail("--curve goes with --json");
    if (!o->model) { /* the weights shipped beside the program, wherever it is run from */
        static char path[4096];
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 16);
        char *slash = n > 0 ? memrchr(path, '/', (size_t)n) : NULL;
        if (slash)
            strcpy(slash + 1, "tinylm.tlm");
        o->model = slash ? path : "examples/tinylm/tinylm.tlm";
    }
    return 0;
}

#define ULPT_TRY(call)                                                                     \
    do {                                                                                   \
        if ((call) != ULPT_OK) {                                                           \
            rc = fail("%s", ulpt_last_error());                                            \
            goto out;                                                                      \
        }                                                                                  \
    } while (0)

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o))
        return 2;
    const int none = !strcmp(o.method, "none") && !o.load;
    const int vanilla = !strcmp(o.method, "vanilla");

    split train = { 0 }, valid = { 0 }, test = { 0 };
    host h;
    ulpt_prompt *prompt = NULL;
    ulpt_optimizer *opt = NULL;
    ulpt_zo *zo = NULL;
    float *e = NULL;
    double *curve = NULL;
    size_t *order = NULL;
    int rc = 0;

    if (o.load) { /* the prompt decides the shape */
        if (ulpt_prompt_load(&prompt, o.load) != ULPT_OK)
            return fail("%s", ulpt_last_error());
        o.tokens = ulpt_prompt_n_tokens(prompt);
    }
    const uint32_t n_tokens = none ? 0 : o.tokens;
    if (host_init(&h, o.model, o.threads, n_tokens, 2 * o.directions)) {
        ulpt_prompt_free(prompt);
        return 1;
    }
    const tlm_config *cfg = tlm_config_of(h.w[0].model);
    if (n_tokens + 2 > cfg->max_len) {
        rc = fail("--tokens %" PRIu32 " leaves no room for text in a context of %" PRIu32,
                  n_tokens, cfg->max_len);
        goto out;
    }
    if (prompt && ulpt_prompt_dim(prompt) != cfg->width) {
        rc = fail("%s: the prompt's dim %" PRIu32 " is not the model's width %" PRIu32,
                  o.load, ulpt_prompt_dim(prompt), cfg->width);
        goto out;
    }
    const uint32_t max_text = cfg->max_len - n_tokens - 1;
    if (split_load(&test, o.taskdir, "test", max_text, cfg->vocab) ||
        (!o.load && !none && split_load(&train, o.taskdir, "train", max_text, cfg->vocab)) ||
        (o.valid && split_load(&valid, o.taskdir, "valid", max_text, cfg->vocab))) {
        rc = 1;
        goto out;
    }
    const split *others[2] = { &train, &valid };
    for (int k = 0; k < 2; k++) {
        if (others[k]->n && (strcmp(others[k]->names[0], test.names[0]) ||
                             strcmp(others[k]->names[1], test.names[1]))) {
            rc = fail("%s: labels \"%s\", \"%s\" differ from test.tsv's \"%s\", \"%s\"",
                      others[k]->path, others[k]->names[0], others[k]->names[1],
                      test.names[0], test.names[1]);
            goto out;
        }
    }
    h.verbalizer[0] = (uint8_t)test.names[0][0];
    h.verbalizer[1] = (uint8_t)test.names[1][0];
    if (h.verbalizer[0] >= cfg->vocab || h.verbalizer[1] >= cfg->vocab ||
        SEPARATOR >= cfg->vocab) {
        rc = fail("%s: a label's first byte or the separator is past the model's vocabulary "
                  "of %" PRIu32, test.path, cfg->vocab);
        goto out;
    }
    ulpt_set_num_threads(1); /* parallelism comes from the workers */

    double acc_before = -1, acc_after = 0, acc_valid = 0, train_seconds = 0, loss = 0, first = 0;
    if ((!o.skip_baseline || none) && evaluate(&h, &test, NULL, &acc_before)) {
        rc = 1;
        goto out;
    }
    char task[256];
    task_name(o.taskdir, task, sizeof task);
    if (!o.json) {
        if (train.n)
            printf("task %s: %zu training, %zu test examples; labels \"%s\" and \"%s\"\n",
                   task, train.n, test.n, test.names[0], test.names[1]);
        else
            printf("task %s: %zu test examples; labels \"%s\" and \"%s\"\n", task, test.n,
                   test.names[0], test.names[1]);
        printf("majority class: %.1f%% of the test set\n", 100 * majority(&test));
        if (acc_before >= 0)
            printf("frozen tinylm (%zu parameters), no prompt: test accuracy %.1f%%\n",
                   tlm_num_params(h.w[0].model), 100 * acc_before);
    }

    if (!none && !o.load) {
        ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
        po.n_tokens = o.tokens;
        po.dim = cfg->width;
        po.projection_seed = o.seed;
        po.init_seed = o.seed;
        if (vanilla) { /* P = I, no scale or shift: E = Z, n x d trainable */
            po.rank = cfg->width;
            po.projection_kind = ULPT_PROJ_IDENTITY;
            po.flags = ULPT_NO_SCALE | ULPT_NO_SHIFT;
            /* start at the scale of the model's own token embeddings */
            const float *wte = tlm_token_embedding(h.w[0].model, 0);
            double ss = 0;
            for (size_t k = 0; k < (size_t)cfg->vocab * cfg->width; k++)
                ss += (double)wte[k] * wte[k];
            po.init_std = (float)sqrt(ss / ((double)cfg->vocab * cfg->width));
        } else {
            po.rank = o.rank;
            po.flags = o.no_scale_shift ? ULPT_NO_SCALE | ULPT_NO_SHIFT : 0;
            po.n_groups = o.groups;
            po.init_std = (float)o.init_std;
        }
        ULPT_TRY(ulpt_prompt_create(&prompt, &po));
        if (o.init_text) { /* E fitted to the embeddings of the text's bytes */
            e = malloc(sizeof(float) * o.tokens * cfg->width);
            if (!e) {
                rc = fail("out of memory");
                goto out;
            }
            size_t len = strlen(o.init_text);
            for (uint32_t i = 0; i < o.tokens; i++)
                memcpy(e + (size_t)i * cfg->width,
                       tlm_token_embedding(h.w[0].model, (unsigned char)o.init_text[i % len]),
                       sizeof(float) * cfg->width);
            ULPT_TRY(ulpt_prompt_init_from_embeddings(prompt, e, cfg->width, NULL, NULL));
            free(e);
            e = NULL;
        }
        ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT; /* AdamW */
        oo.lr = o.lr;
        oo.weight_decay = 1e-5;
        oo.max_grad_norm = 1.0;
        oo.schedule = ULPT_SCHED_LINEAR;
        oo.warmup_steps = o.steps / 10;
        oo.total_steps = o.steps;
        ULPT_TRY(ulpt_optimizer_create(&opt, prompt, &oo));
        if (o.zo) {
            ulpt_zo_options zoo = ULPT_ZO_OPTIONS_INIT; /* Rademacher, Z, s and b */
            zoo.epsilon = o.eps;
            zoo.directions = o.directions;
            zoo.seed = o.seed;
            ULPT_TRY(ulpt_zo_create(&zo, prompt, opt, &zoo));
        }

        if (!o.json)
            printf("tuning %s%s: %" PRIu32 " soft tokens, %zu trainable parameters "
                   "(vanilla prompt tuning: %" PRIu32 ")\n",
                   vanilla ? "a vanilla prompt" : "a ULPT prompt",
                   o.zo ? " forward-only" : "", o.tokens, ulpt_prompt_num_params(prompt),
                   o.tokens * cfg->width);
        order = malloc(sizeof *order * train.n);
        if (o.curve && !(curve = calloc((o.steps + o.curve - 1) / o.curve, sizeof *curve))) {
            rc = fail("out of memory");
            goto out;
        }
        const example **batch = malloc(sizeof *batch * o.batch);
        if (!order || !batch) {
            free(batch);
            rc = fail("out of memory");
            goto out;
        }
        for (size_t i = 0; i < train.n; i++)
            order[i] = i;
        uint64_t state = o.seed;
        size_t next = train.n;
        h.batch = batch;
        h.batch_n = o.batch;
        h.source = &train;
        double start = now();
        for (uint32_t step = 1; step <= o.steps; step++) {
            for (uint32_t b = 0; b < o.batch; b++) { /* epochs of a fresh permutation */
                if (next == train.n) {
                    task_shuffle(order, train.n, &state);
                    next = 0;
                }
                batch[b] = &train.ex[order[next++]];
            }
            float lr = ulpt_optimizer_lr(opt);
            if ((zo ? ulpt_zo_step(&loss, zo, host_losses, &h)
                    : ulpt_train_step(prompt, opt, host_loss, &h, &loss)) != ULPT_OK) {
                free(batch);
                rc = fail("step %" PRIu32 ": %s%s%s", step, ulpt_last_error(),
                          h.error[0] ? ": " : "", h.error);
                goto out;
            }
            if (step == 1)
                first = loss;
            if (curve) /* the mean loss of each window of o.curve steps (the last may be short) */
                curve[(step - 1) / o.curve] += loss / (step > o.steps / o.curve * o.curve
                                                            ? o.steps % o.curve : o.curve);
            progress(&o, step, loss, lr, now() - start);
        }
        train_seconds = now() - start;
        free(batch);
        ulpt_prompt_set_meta(prompt, "model", tlm_meta_of(h.w[0].model)->corpus[0]
                                                  ? "tinylm" : "tinylm-random");
        ulpt_prompt_set_meta(prompt, "task", task);
    }

    if (prompt) {
        e = malloc(sizeof(float) * n_tokens * cfg->width);
        if (!e) {
            rc = fail("out of memory");
            goto out;
        }
        ULPT_TRY(ulpt_prompt_forward(prompt, e, cfg->width));
    }
    if (evaluate(&h, &test, e, &acc_after) || (o.valid && evaluate(&h, &valid, e, &acc_valid))) {
        rc = 1;
        goto out;
    }
    long long file_bytes = 0;
    if (o.save && prompt) {
        ULPT_TRY(ulpt_prompt_save(prompt, o.save, NULL));
        struct stat st;
        if (stat(o.save, &st) == 0)
            file_bytes = (long long)st.st_size;
    }
    const size_t params = prompt && !o.load ? ulpt_prompt_num_params(prompt) : 0;
    /* The training loop's time outside the host's callback: libulpt's work (forward,
     * backward, checks, AdamW) plus picking each batch's examples, so at most libulpt's. */
    const double ulpt_seconds = train_seconds - h.callback_seconds;
    if (o.json) {
        printf("{\"task\": \"%s\", \"method\": \"%s\", \"tokens\": %" PRIu32
               ", \"rank\": %" PRIu32 ", \"scale_shift\": %s, \"seed\": %" PRIu64
               ", \"lr\": %g, \"steps\": %" PRIu32 ", \"batch\": %" PRIu32
               ", \"params\": %zu, \"file_bytes\": %lld, \"majority\": %.6f"
               ", \"acc_no_prompt\": %.6f, \"acc_test\": %.6f, \"acc_valid\": %.6f"
               ", \"loss_first\": %.6f, \"loss_last\": %.6f, \"train_seconds\": %.3f"
               ", \"ulpt_seconds\": %.4f, \"forward_only\": %s, \"directions\": %" PRIu32
               ", \"eps\": %g, \"groups\": %" PRIu32 ", \"init_std\": %g, \"init_text\": %s",
               task, o.load ? "loaded" : o.method, n_tokens, prompt ? ulpt_prompt_rank(prompt) : 0,
               prompt && !(ulpt_prompt_flags(prompt) & (ULPT_NO_SCALE | ULPT_NO_SHIFT))
                   ? "true" : "false",
               o.seed, o.lr, none || o.load ? 0 : o.steps, o.batch, params, file_bytes, majority(&test), acc_before,
               acc_after, acc_valid, first, loss, train_seconds, ulpt_seconds,
               zo ? "true" : "false", zo ? o.directions : 0, zo ? o.eps : 0.0,
               prompt ? ulpt_prompt_n_groups(prompt) : 0, o.init_std,
               o.init_text ? "true" : "false");
        if (curve) {
            printf(", \"curve_every\": %" PRIu32 ", \"curve\": [", o.curve);
            for (uint32_t k = 0; k < (o.steps + o.curve - 1) / o.curve; k++)
                printf("%s%.5f", k ? ", " : "", curve[k]);
            printf("]");
        }
        printf("}\n");
    } else if (prompt) {
        if (!o.load && zo)
            printf("tuned forward-only in %.1f s (%" PRIu32 " steps x %" PRIu32
                   " forward passes of the batch; at most %.3f%% of the time inside libulpt); "
                   "loss %.4f -> %.4f\n", train_seconds, o.steps, 2 * o.directions,
                   100 * ulpt_seconds / train_seconds, first, loss);
        else if (!o.load)
            printf("tuned in %.1f s (at most %.3f%% of it inside libulpt); loss %.4f -> %.4f\n",
                   train_seconds, 100 * ulpt_seconds / train_seconds, first, loss);
        printf("%s prompt: test accuracy %.1f%%  (", o.load ? "loaded" : "tuned",
               100 * acc_after);
        if (acc_before >= 0)
            printf("no prompt %.1f%%, ", 100 * acc_before);
        printf("majority %.1f%%)\n", 100 * majority(&test));
        if (o.valid)
            printf("validation accuracy %.1f%%\n", 100 * acc_valid);
        if (o.save)
            printf("saved %s: %lld bytes (a vanilla soft prompt of %" PRIu32 " x %" PRIu32
                   " floats: %zu bytes)\n", o.save, file_bytes, n_tokens, cfg->width,
                   sizeof(float) * n_tokens * cfg->width);
    }
out:
    free(curve);
    free(order);
    free(e);
    ulpt_zo_free(zo);
    ulpt_optimizer_free(opt);
    ulpt_prompt_free(prompt);
    host_free(&h);
    task_split_free(&train);
    task_split_free(&valid);
    task_split_free(&test);
    return rc;
}
