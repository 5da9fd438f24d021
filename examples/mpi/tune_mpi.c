/* tune_mpi.c -- data-parallel prompt tuning over MPI: the frozen tinylm is replicated on
 * every rank, and one ULPT prompt is kept identical on all of them.
 *
 *     mpirun -np R tune_mpi [options] TASKDIR       (TASKDIR holds train.tsv and test.tsv)
 *
 * Every step, every rank draws the same global batch of B training examples from the
 * seed and takes its contiguous shard, examples [B*rank/R, B*(rank+1)/R).  It runs tinylm
 * forward and backward on them and back-propagates (1/B) * sum dL_i/dE into the prompt's
 * flat gradient, so that the sum over ranks is the gradient of the global batch's mean
 * loss.  One MPI_Allreduce(SUM) over ulpt_prompt_grads() puts that sum on every rank,
 * and every rank takes the same AdamW step.  Rank 0 alone writes checkpoints and the
 * final prompt; --resume continues from a checkpoint on any number of ranks.
 *
 * With 1, 2 or 4 ranks the global batch is the same, so the parameters agree up to the
 * order in which float sums are taken; docs/DESIGN.md ("Data parallelism") explains the
 * tolerance and gives the same recipe for torch.distributed and NCCL.
 * Errors: one line on stderr naming the rank; exit status 1 on every rank (2 for usage). */
#define _GNU_SOURCE /* memrchr */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "task.h"
#include "tinylm.h"
#include "ulpt.h"

#define SEPARATOR '\n'

static const char usage_text[] =
    "usage: mpirun -np R tune_mpi [options] TASKDIR\n"
    "  --model PATH       frozen host model (default: ../tinylm/tinylm.tlm beside this program)\n"
    "  --tokens N         soft tokens (default 8); --rank R  ULPT rank (default 2)\n"
    "  --steps S          train until the optimizer has taken S steps (default 40)\n"
    "  --batch B          global batch, split over the ranks (default 8)\n"
    "  --lr LR            AdamW peak learning rate (default 0.05); 10% warmup, linear decay\n"
    "  --seed K           seeds the prompt, its projection and the data order (default 1)\n"
    "  --checkpoint PATH  rank 0 writes a checkpoint there every --every steps and at the end\n"
    "  --every K          checkpoint interval in steps (default: only at the end)\n"
    "  --stop-at K        stop after step K as if interrupted (checkpoint first)\n"
    "  --resume PATH      every rank loads this checkpoint and continues to --steps\n"
    "                     (--seed, --batch and --steps as when it was started)\n"
    "  --save PATH        rank 0 writes the tuned prompt there (f32 prompt file)\n"
    "  --quiet            no progress lines\n";

static int world_rank, world_size;

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The line goes out in one write(): mpirun forwards each rank's stderr as it reads it, so
 * a line written in pieces can be cut by another rank's line. */
static int fail(const char *fmt, ...)
{
    char line[4096]; /* PIPE_BUF: a write that size is never split */
    int n = snprintf(line, sizeof line, "tune_mpi: rank %d: ", world_rank);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if ((size_t)n > sizeof line - 2) /* cut a long message, keep the newline */
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    for (ssize_t k = 0, w; k < n; k += w)
        if ((w = write(STDERR_FILENO, line + k, (size_t)(n - k))) < 0) {
            if (errno != EINTR)
                break;
            w = 0;
        }
    return 1;
}

/* 1 on every rank if `failed` is set on any of them: after a step that can fail on some
 * ranks only, so that all of them leave together instead of waiting in a collective. */
static int anyone(int failed)
{
    int any = failed;
    MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

/* ---- the host: tinylm on this rank's shard ----------------------------------------- */

typedef struct {
    tlm_model *model;
    uint32_t n_tokens, C;
    uint8_t verbalizer[2];
    float *rows, *drows; /* T x C input rows and their gradient */
    char error[4800];    /* why the last shard failed */
} host;

/* Adds scale * dL_i/dE of examples[0 .. n) (from split src) into g (n_tokens x C) and
 * returns scale * sum L_i; NaN on failure, with h->error saying why.  e: the prompt rows. */
static double host_shard(host *h, const float *e, const task_split *src,
                         const task_example *const *examples, size_t n, double scale, float *g,
                         int *correct)
{
    const size_t C = h->C, nt = h->n_tokens;
    double loss = 0;
    for (size_t i = 0; i < n; i++) {
        const task_example *x = examples[i];
        if (nt)
            memcpy(h->rows, e, sizeof(float) * nt * C);
        for (uint32_t t = 0; t <= x->len; t++)
            memcpy(h->rows + (nt + t) * C,
                   tlm_token_embedding(h->model, t < x->len ? x->text[t] : SEPARATOR),
                   sizeof(float) * C);
        int pred;
        double l = tlm_class_loss(h->model, h->rows, (uint32_t)(nt + x->len + 1), h->verbalizer,
                                  2, x->label, g ? h->drows : NULL, &pred);
        if (!isfinite(l)) {
            snprintf(h->error, sizeof h->error, "example on line %zu of %s: %s",
                     (size_t)(x - src->ex) + 2, src->path,
                     tlm_last_error()[0] ? tlm_last_error() : "the loss is not finite");
            return NAN;
        }
        loss += scale * l;
        if (correct)
            *correct += pred == x->label;
        if (g)
            for (size_t k = 0; k < nt * C; k++)
                g[k] += (float)scale * h->drows[k];
    }
    return loss;
}

/* ---- the data order: the same on every rank, a function of the seed and the step ---- */

typedef struct {
    size_t *order, next, n;
    uint64_t state;
} sampler;

/* The next global batch: epochs of fresh permutations of the training set, as tune. */
static void next_batch(sampler *s, const task_split *train, const task_example **batch,
                       uint32_t B)
{
    for (uint32_t b = 0; b < B; b++) {
        if (s->next == s->n) {
            task_shuffle(s->order, s->n, &s->state);
            s->next = 0;
        }
        batch[b] = &train->ex[s->order[s->next++]];
    }
}

/* ---- keeping the ranks together --------------------------------------------------- */

static uint64_t params_hash(ulpt_prompt *p)
{
    const unsigned char *b = (const unsigned char *)ulpt_prompt_params(p);
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
    for (size_t i = 0; i < ulpt_prompt_num_params(p) * sizeof(float); i++)
        h = (h ^ b[i]) * 0x100000001b3u;
    return h;
}

/* Checks that every rank holds bit-identical parameters; the verdict is the same on all
 * ranks.  *hash gets rank 0's. */
static int ranks_agree(ulpt_prompt *p, uint64_t *hash)
{
    uint64_t mine = params_hash(p);
    uint64_t *all = malloc(sizeof *all * (size_t)world_size);
    if (anyone(!all)) {
        free(all);
        return fail("out of memory");
    }
    MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    int rc = 0;
    for (int r = 1; r < world_size && !rc; r++)
        if (all[r] != all[0])
            rc = world_rank == 0 ? fail("rank %d's parameters differ from rank 0's", r) : 1;
    *hash = all[0];
    free(all);
    return rc;
}

/* Rank 0 writes a checkpoint or a prompt; every rank learns whether it worked. */
static int rank0_save(const ulpt_prompt *p, const ulpt_optimizer *o, const char *path)
{
    int rc = 0;
    if (world_rank == 0) {
        rc = o ? ulpt_checkpoint_save(p, o, path) : ulpt_prompt_save(p, path, NULL);
        if (rc)
            fail("%s", ulpt_last_error());
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return rc != 0;
}

/* ---- the command ---------------------------------------------------------------- */

typedef struct {
    const char *model, *taskdir, *checkpoint, *resume, *save;
    uint32_t tokens, rank, steps, batch, every, stop_at;
    double lr;
    uint64_t seed;
    int quiet;
} options;

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

/* 0: run; 1: a bad argument (reported); 2: no TASKDIR (usage printed); 3: --help. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){ .tokens = 8, .rank = 2, .steps = 40, .batch = 8, .lr = 0.05, .seed = 1 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint32_t u;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (world_rank == 0)
                fputs(usage_text, stdout);
            return 3;
        } else if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
        } else if (a[0] == '-' && a[1] == '-') {
            if (!v)
                return fail("%s needs a value", a);
            i++;
            if (!strcmp(a, "--model"))
                o->model = v;
            else if (!strcmp(a, "--checkpoint"))
                o->checkpoint = v;
            else if (!strcmp(a, "--resume"))
                o->resume = v;
            else if (!strcmp(a, "--save"))
                o->save = v;
            else if (!strcmp(a, "--tokens")) {
                if (parse_u32(v, 1, 128, &o->tokens, a))
                    return 1;
            } else if (!strcmp(a, "--rank")) {
                if (parse_u32(v, 1, 4096, &o->rank, a))
                    return 1;
            } else if (!strcmp(a, "--steps")) {
                if (parse_u32(v, 1, 1000000, &o->steps, a))
                    return 1;
            } else if (!strcmp(a, "--batch")) {
                if (parse_u32(v, 1, 1 << 20, &o->batch, a))
                    return 1;
            } else if (!strcmp(a, "--every")) {
                if (parse_u32(v, 1, 1000000, &o->every, a))
                    return 1;
            } else if (!strcmp(a, "--stop-at")) {
                if (parse_u32(v, 1, 1000000, &o->stop_at, a))
                    return 1;
            } else if (!strcmp(a, "--seed")) {
                if (parse_u32(v, 0, UINT32_MAX, &u, a))
                    return 1;
                o->seed = u;
            } else if (!strcmp(a, "--lr")) {
                char *end;
                o->lr = strtod(v, &end);
                if (end == v || *end || !(o->lr > 0) || !isfinite(o->lr))
                    return fail("--lr must be a positive number, not \"%s\"", v);
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
        if (world_rank == 0)
            fputs(usage_text, stderr);
        return 2;
    }
    if (o->checkpoint && o->save && !strcmp(o->checkpoint, o->save))
        return fail("--checkpoint and --save name the same file");
    if (o->every && !o->checkpoint)
        return fail("--every needs --checkpoint");
    if (!o->model) { /* the weights shipped with the tinylm example, wherever this runs from */
        static char path[4096];
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
        char *slash = n > 0 ? memrchr(path, '/', (size_t)n) : NULL;
        if (slash)
            strcpy(slash + 1, "../tinylm/tinylm.tlm");
        o->model = slash ? path : "examples/tinylm/tinylm.tlm";
    }
    return 0;
}

/* Runs on every rank; returns the exit status: 0, 1 (failed: the same on every rank) or
 * 2 (usage). */
static int run(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (anyone(rc == 1 || rc == 2))
        return 2;
    if (anyone(rc == 3))
        return 0;

    host h = { 0 };
    task_split train = { 0 }, test = { 0 };
    ulpt_prompt *prompt = NULL;
    ulpt_optimizer *opt = NULL;
    sampler smp = { 0 };
    const task_example **batch = NULL;
    float *e = NULL, *g = NULL;
    rc = 1;

    /* Set-up: any rank may fail; all leave together. */
    int bad = 0;
    if (tlm_load(&h.model, o.model))
        bad = fail("%s", tlm_last_error());
    if (!bad && o.resume && ulpt_checkpoint_load(&prompt, &opt, o.resume) != ULPT_OK)
        bad = fail("%s", ulpt_last_error());
    const tlm_config *cfg = bad ? NULL : tlm_config_of(h.model);
    if (!bad) {
        h.C = cfg->width;
        h.n_tokens = prompt ? ulpt_prompt_n_tokens(prompt) : o.tokens;
        if (prompt && ulpt_prompt_dim(prompt) != cfg->width)
            bad = fail("%s: the prompt's dim %" PRIu32 " is not the model's width %" PRIu32,
                       o.resume, ulpt_prompt_dim(prompt), cfg->width);
        else if (h.n_tokens + 2 > cfg->max_len)
            bad = fail("%" PRIu32 " soft tokens leave no room for text in a context of %" PRIu32,
                       h.n_tokens, cfg->max_len);
    }
    if (!bad) {
        const uint32_t max_text = cfg->max_len - h.n_tokens - 1;
        char err[4608];
        if (task_split_load(&train, o.taskdir, "train", max_text, cfg->vocab, err, sizeof err) ||
            task_split_load(&test, o.taskdir, "test", max_text, cfg->vocab, err, sizeof err))
            bad = fail("%s", err);
    }
    if (!bad && (strcmp(train.names[0], test.names[0]) || strcmp(train.names[1], test.names[1])))
        bad = fail("%s: labels \"%s\", \"%s\" differ from test.tsv's \"%s\", \"%s\"", train.path,
                   train.names[0], train.names[1], test.names[0], test.names[1]);
    h.verbalizer[0] = (uint8_t)test.names[0][0];
    h.verbalizer[1] = (uint8_t)test.names[1][0];
    if (!bad && (h.verbalizer[0] >= cfg->vocab || h.verbalizer[1] >= cfg->vocab))
        bad = fail("%s: a label's first byte is past the model's vocabulary", test.path);
    if (!bad) {
        const size_t nc = (size_t)h.n_tokens * h.C;
        h.rows = malloc(sizeof(float) * cfg->max_len * h.C);
        h.drows = malloc(sizeof(float) * cfg->max_len * h.C);
        e = malloc(sizeof(float) * nc);
        g = malloc(sizeof(float) * nc);
        batch = malloc(sizeof *batch * o.batch);
        smp = (sampler){ malloc(sizeof(size_t) * train.n), train.n, train.n, o.seed };
        if (!h.rows || !h.drows || !e || !g || !batch || !smp.order)
            bad = fail("out of memory");
        for (size_t i = 0; !bad && i < train.n; i++)
            smp.order[i] = i;
    }
    /* The data order and the schedule follow from these; a resumed run must repeat them. */
    char recipe[128];
    snprintf(recipe, sizeof recipe, "--seed %" PRIu64 " --batch %" PRIu32 " --steps %" PRIu32,
             o.seed, o.batch, o.steps);
    const char *was = prompt ? ulpt_prompt_get_meta(prompt, "tune_mpi") : NULL;
    if (!bad && prompt && !was)
        bad = fail("%s: no \"tune_mpi\" metadata; not a tune_mpi checkpoint", o.resume);
    else if (!bad && prompt && strcmp(was, recipe))
        bad = fail("%s was started with %s; resume it with the same options", o.resume, was);
    if (!bad && !prompt) { /* every rank makes the same prompt from the same seeds */
        ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
        po.n_tokens = o.tokens;
        po.rank = o.rank;
        po.dim = cfg->width;
        po.projection_seed = o.seed;
        po.init_seed = o.seed;
        ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT; /* AdamW */
        oo.lr = o.lr;
        oo.weight_decay = 1e-5;
        oo.max_grad_norm = 1.0;
        oo.schedule = ULPT_SCHED_LINEAR;
        oo.warmup_steps = o.steps / 10;
        oo.total_steps = o.steps;
        if (ulpt_prompt_create(&prompt, &po) != ULPT_OK ||
            ulpt_optimizer_create(&opt, prompt, &oo) != ULPT_OK ||
            ulpt_prompt_set_meta(prompt, "model", tlm_meta_of(h.model)->corpus[0]
                                                      ? "tinylm" : "tinylm-random") != ULPT_OK ||
            ulpt_prompt_set_meta(prompt, "tune_mpi", recipe) != ULPT_OK)
            bad = fail("%s", ulpt_last_error());
    }
    if (anyone(bad))
        goto out;

    /* The checkpoint's step count says where the data order stands. */
    const uint32_t start = (uint32_t)ulpt_optimizer_step_count(opt);
    for (uint32_t k = 0; k < start; k++)
        next_batch(&smp, &train, batch, o.batch);
    const uint32_t last = o.stop_at && o.stop_at < o.steps ? o.stop_at : o.steps;
    uint64_t hash;
    if (ranks_agree(prompt, &hash))
        goto out;
    if (world_rank == 0 && !o.quiet) {
        const uint32_t few = o.batch / (uint32_t)world_size;
        const uint32_t many = few + (o.batch % (uint32_t)world_size != 0);
        printf("%d rank%s, global batch %" PRIu32 " (", world_size, world_size > 1 ? "s" : "",
               o.batch);
        if (few != many)
            printf("%" PRIu32 " or ", few);
        printf("%" PRIu32 " examples a rank), %zu trainable parameters; %s step %" PRIu32 "\n",
               many, ulpt_prompt_num_params(prompt), start ? "resuming after" : "starting at",
               start);
    }

    /* This rank's shard of every global batch. */
    const size_t lo = (size_t)o.batch * (size_t)world_rank / (size_t)world_size;
    const size_t hi = (size_t)o.batch * (size_t)(world_rank + 1) / (size_t)world_size;
    const size_t np = ulpt_prompt_num_params(prompt), nc = (size_t)h.n_tokens * h.C;
    if (np > INT_MAX) {
        fail("%zu parameters do not fit one MPI count", np); /* the same on every rank */
        goto out;
    }
    ulpt_set_num_threads(1); /* ranks share the cores */
    double first = NAN, loss = NAN;
    for (uint32_t step = start + 1; step <= last; step++) {
        next_batch(&smp, &train, batch, o.batch);
        memset(g, 0, sizeof(float) * nc);
        int failed = ulpt_prompt_forward(prompt, e, h.C) != ULPT_OK;
        if (failed)
            snprintf(h.error, sizeof h.error, "%s", ulpt_last_error());
        /* Each example weighs 1/B of the global batch, on whichever rank it lands. */
        double part = NAN;
        if (!failed)
            part = host_shard(&h, e, &train, batch + lo, hi - lo, 1.0 / o.batch, g, NULL);
        failed = failed || !isfinite(part);
        ulpt_prompt_zero_grad(prompt);
        if (!failed && ulpt_prompt_backward(prompt, g, h.C) != ULPT_OK) {
            snprintf(h.error, sizeof h.error, "%s", ulpt_last_error());
            failed = 1;
        }
        float *grads = ulpt_prompt_grads(prompt);
        if (failed) /* poison the sum: every rank's optimizer step then refuses it alike */
            for (size_t k = 0; k < np; k++)
                grads[k] = NAN;
        MPI_Allreduce(MPI_IN_PLACE, grads, (int)np, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        const int logged = step == start + 1 || step == last || step % 10 == 0;
        double norm = 0; /* of the global gradient, before clipping: the log shows its scale */
        for (size_t k = 0; logged && k < np; k++)
            norm += (double)grads[k] * grads[k];
        if (ulpt_optimizer_step(opt) != ULPT_OK) {
            if (failed)
                fail("step %" PRIu32 ": %s", step, h.error);
            else
                fail("step %" PRIu32 ": %s (another rank failed)", step, ulpt_last_error());
            goto out;
        }
        /* the loss, for the log only: a second, tiny reduction on logged steps */
        if (logged) {
            MPI_Reduce(&part, &loss, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
            if (step == start + 1)
                first = loss;
            if (world_rank == 0 && !o.quiet)
                printf("step %4" PRIu32 "/%" PRIu32 "  loss %.6f  |grad| %.6e\n", step, o.steps,
                       loss, sqrt(norm));
        }
        if (o.checkpoint && ((o.every && step % o.every == 0) || step == last) &&
            rank0_save(prompt, opt, o.checkpoint))
            goto out;
    }
    if (ranks_agree(prompt, &hash))
        goto out;

    /* Test accuracy, each rank scoring its share of the test set. */
    int correct = 0, ok = ulpt_prompt_forward(prompt, e, h.C) == ULPT_OK;
    const task_example **all = ok ? malloc(sizeof *all * test.n) : NULL;
    if (all) {
        for (size_t i = 0; i < test.n; i++)
            all[i] = &test.ex[i];
        const size_t a = test.n * (size_t)world_rank / (size_t)world_size;
        const size_t b = test.n * (size_t)(world_rank + 1) / (size_t)world_size;
        ok = isfinite(host_shard(&h, e, &test, all + a, b - a, 1.0, NULL, &correct));
        if (!ok)
            fail("evaluation: %s", h.error);
        free(all);
    } else {
        fail("evaluation: %s", ok ? "out of memory" : ulpt_last_error());
    }
    if (anyone(!all || !ok))
        goto out;
    int total = 0;
    MPI_Reduce(&correct, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (o.save && rank0_save(prompt, NULL, o.save))
        goto out;
    if (world_rank == 0) {
        if (last > start)
            printf("steps %" PRIu32 "..%" PRIu32 ": loss %.6f -> %.6f; ", start + 1, last,
                   first, loss);
        printf("test accuracy %.1f%%; parameters identical on all %d rank%s (hash %016" PRIx64
               ")\n", 100.0 * total / (double)test.n, world_size, world_size > 1 ? "s" : "",
               hash);
        if (last < o.steps)
            printf("stopped after step %" PRIu32 " of %" PRIu32 "%s%s\n", last, o.steps,
                   o.checkpoint ? "; resume with --resume " : "",
                   o.checkpoint ? o.checkpoint : "");
    }
    rc = 0;
out:
    free(smp.order);
    free(batch);
    free(e);
    free(g);
    free(h.rows);
    free(h.drows);
    tlm_free(h.model);
    ulpt_optimizer_free(opt);
    ulpt_prompt_free(prompt);
    task_split_free(&train);
    task_split_free(&test);
    return rc;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    setvbuf(stdout, NULL, _IOLBF, 0); /* each progress line reaches mpirun whole */
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    int rc = run(argc, argv);
    MPI_Finalize();
    return rc;
}
