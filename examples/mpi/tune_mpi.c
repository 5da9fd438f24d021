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
 * Errors: one line on stderr naming the rank ("tune_mpi: rank 1: ...", written whole, so
 * that mpirun does not interleave it with another rank's); exit status 1 on every rank (2
 * for usage). */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "recipe.h"
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

/* ---- the command line ------------------------------------------------------------ */

typedef struct {
    const char *model, *taskdir, *checkpoint, *resume, *save;
    uint32_t tokens, rank, steps, batch, every, stop_at;
    double lr;
    uint64_t seed;
    int quiet;
} options;

/* 0: run; 1: a bad argument (reported); 2: no TASKDIR (usage printed); 3: --help. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){ .tokens = 8, .rank = 2, .steps = 40, .batch = 8, .lr = 0.05, .seed = 1 };
    const cli_option table[] = {
        { "--model", CLI_STRING, &o->model, 0, 0 },
        { "--tokens", CLI_U32, &o->tokens, 1, 128 },
        { "--rank", CLI_U32, &o->rank, 1, 4096 },
        { "--steps", CLI_U32, &o->steps, 1, 1000000 },
        { "--batch", CLI_U32, &o->batch, 1, 1 << 20 },
        { "--lr", CLI_REAL, &o->lr, 0, 0 },
        { "--seed", CLI_U64, &o->seed, 0, UINT32_MAX },
        { "--checkpoint", CLI_STRING, &o->checkpoint, 0, 0 },
        { "--every", CLI_U32, &o->every, 1, 1000000 },
        { "--stop-at", CLI_U32, &o->stop_at, 1, 1000000 },
        { "--resume", CLI_STRING, &o->resume, 0, 0 },
        { "--save", CLI_STRING, &o->save, 0, 0 },
        { "--quiet", CLI_FLAG, &o->quiet, 0, 0 },
        { NULL, CLI_FLAG, NULL, 0, 0 },
    };
    int n_operands, rc = cli_parse(argc, argv, table, &o->taskdir, 1, &n_operands);
    if (rc == 3 && world_rank == 0)
        fputs(usage_text, stdout);
    if (rc)
        return rc;
    if (!n_operands) {
        if (world_rank == 0)
            fputs(usage_text, stderr);
        return 2;
    }
    if (o->checkpoint && o->save && !strcmp(o->checkpoint, o->save))
        return fail("--checkpoint and --save name the same file");
    if (o->every && !o->checkpoint)
        return fail("--every needs --checkpoint");
    if (!o->model) /* the weights shipped with the tinylm example, wherever this runs from */
        o->model = beside_program("../tinylm/tinylm.tlm", "examples/tinylm/tinylm.tlm");
    return 0;
}

/* ---- one run on every rank, phase by phase ---------------------------------------- */

typedef struct {
    options o;
    host h;
    const tlm_config *cfg;
    task_split train, test;
    ulpt_prompt *prompt;
    ulpt_optimizer *opt;
    task_sampler order;          /* the global batches, the same on every rank */
    const task_example **batch;  /* this step's global batch */
    float *e, *g;                /* the prompt rows and this rank's dL/dE */
    char recipe[128];            /* the options a resumed run must repeat */
    uint32_t start, last;        /* the steps already taken, and the one to stop after */
    double first, loss;          /* the global batch's loss at the first and last logged step */
    uint64_t hash;               /* rank 0's parameters, as every rank holds them */
} run;

static void run_free(run *r)
{
    task_sampler_free(&r->order);
    free(r->batch);
    free(r->e);
    free(r->g);
    free(r->h.rows);
    free(r->h.drows);
    tlm_free(r->h.model);
    ulpt_optimizer_free(r->opt);
    ulpt_prompt_free(r->prompt);
    task_split_free(&r->train);
    task_split_free(&r->test);
}

/* The model, and with --resume the checkpoint; whether they fit together. */
static int load_model(run *r)
{
    const options *o = &r->o;
    if (tlm_load(&r->h.model, o->model))
        return fail("%s", tlm_last_error());
    if (o->resume && ulpt_checkpoint_load(&r->prompt, &r->opt, o->resume) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    r->cfg = tlm_config_of(r->h.model);
    r->h.C = r->cfg->width;
    r->h.n_tokens = r->prompt ? ulpt_prompt_n_tokens(r->prompt) : o->tokens;
    if (r->prompt && ulpt_prompt_dim(r->prompt) != r->cfg->width)
        return fail("%s: the prompt's dim %" PRIu32 " is not the model's width %" PRIu32,
                    o->resume, ulpt_prompt_dim(r->prompt), r->cfg->width);
    if (r->h.n_tokens + 2 > r->cfg->max_len)
        return fail("%" PRIu32 " soft tokens leave no room for text in a context of %" PRIu32,
                    r->h.n_tokens, r->cfg->max_len);
    return 0;
}

/* train.tsv and test.tsv, with one pair of labels inside the vocabulary. */
static int load_splits(run *r)
{
    const uint32_t max_text = r->cfg->max_len - r->h.n_tokens - 1, vocab = r->cfg->vocab;
    char err[4608];
    if (task_split_load(&r->train, r->o.taskdir, "train", max_text, vocab, err, sizeof err) ||
        task_split_load(&r->test, r->o.taskdir, "test", max_text, vocab, err, sizeof err))
        return fail("%s", err);
    const task_split *train = &r->train, *test = &r->test;
    if (strcmp(train->names[0], test->names[0]) || strcmp(train->names[1], test->names[1]))
        return fail("%s: labels \"%s\", \"%s\" differ from test.tsv's \"%s\", \"%s\"",
                    train->path, train->names[0], train->names[1], test->names[0],
                    test->names[1]);
    r->h.verbalizer[0] = (uint8_t)test->names[0][0];
    r->h.verbalizer[1] = (uint8_t)test->names[1][0];
    if (r->h.verbalizer[0] >= vocab || r->h.verbalizer[1] >= vocab)
        return fail("%s: a label's first byte is past the model's vocabulary", test->path);
    return 0;
}

/* The host's rows, the prompt's rows and gradient, the batch and its order. */
static int allocate(run *r)
{
    const size_t nc = (size_t)r->h.n_tokens * r->h.C, rows = (size_t)r->cfg->max_len * r->h.C;
    r->h.rows = malloc(sizeof(float) * rows);
    r->h.drows = malloc(sizeof(float) * rows);
    r->e = malloc(sizeof(float) * nc);
    r->g = malloc(sizeof(float) * nc);
    r->batch = malloc(sizeof *r->batch * r->o.batch);
    if (!r->h.rows || !r->h.drows || !r->e || !r->g || !r->batch ||
        task_sampler_init(&r->order, r->train.n, r->o.seed))
        return fail("out of memory");
    return 0;
}

/* A new prompt and optimizer, the same on every rank from the same seeds, or the resumed
 * checkpoint's, which must have been started with the same data order and schedule. */
static int make_prompt(run *r)
{
    const options *o = &r->o;
    snprintf(r->recipe, sizeof r->recipe, "--seed %" PRIu64 " --batch %" PRIu32
             " --steps %" PRIu32, o->seed, o->batch, o->steps);
    if (r->prompt) {
        const char *was = ulpt_prompt_get_meta(r->prompt, "tune_mpi");
        if (!was)
            return fail("%s: no \"tune_mpi\" metadata; not a tune_mpi checkpoint", o->resume);
        if (strcmp(was, r->recipe))
            return fail("%s was started with %s; resume it with the same options", o->resume,
                        was);
        return 0;
    }
    const ulpt_prompt_options po = recipe_prompt(o->tokens, o->rank, r->cfg->width, o->seed);
    const ulpt_optimizer_options oo = recipe_adamw(o->lr, o->steps);
    const char *model = tlm_meta_of(r->h.model)->corpus[0] ? "tinylm" : "tinylm-random";
    if (ulpt_prompt_create(&r->prompt, &po) != ULPT_OK ||
        ulpt_optimizer_create(&r->opt, r->prompt, &oo) != ULPT_OK ||
        ulpt_prompt_set_meta(r->prompt, "model", model) != ULPT_OK ||
        ulpt_prompt_set_meta(r->prompt, "tune_mpi", r->recipe) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    return 0;
}

/* Where the run starts: the checkpoint's step count says where the data order stands. */
static int position(run *r)
{
    r->start = (uint32_t)ulpt_optimizer_step_count(r->opt);
    for (uint32_t k = 0; k < r->start; k++)
        task_sampler_next(&r->order, &r->train, r->batch, r->o.batch);
    r->last = r->o.stop_at && r->o.stop_at < r->o.steps ? r->o.stop_at : r->o.steps;
    if (ranks_agree(r->prompt, &r->hash))
        return 1;
    if (world_rank == 0 && !r->o.quiet) {
        const uint32_t B = r->o.batch, few = B / (uint32_t)world_size;
        const uint32_t many = few + (B % (uint32_t)world_size != 0);
        printf("%d rank%s, global batch %" PRIu32 " (", world_size, world_size > 1 ? "s" : "", B);
        if (few != many)
            printf("%" PRIu32 " or ", few);
        printf("%" PRIu32 " examples a rank), %zu trainable parameters; %s step %" PRIu32 "\n",
               many, ulpt_prompt_num_params(r->prompt),
               r->start ? "resuming after" : "starting at", r->start);
    }
    return 0;
}

/* This rank's share of one step: the prompt's gradient of its shard of the global batch,
 * or NaN everywhere in it if anything failed (h.error says what), so that every rank's
 * optimizer refuses the summed gradient alike.  Returns this rank's part of the loss. */
static double shard_gradient(run *r, size_t lo, size_t hi)
{
    const size_t np = ulpt_prompt_num_params(r->prompt), nc = (size_t)r->h.n_tokens * r->h.C;
    memset(r->g, 0, sizeof(float) * nc);
    double part = NAN;
    int failed = ulpt_prompt_forward(r->prompt, r->e, r->h.C) != ULPT_OK;
    if (failed)
        snprintf(r->h.error, sizeof r->h.error, "%s", ulpt_last_error());
    else /* each example weighs 1/B of the global batch, on whichever rank it lands */
        part = host_shard(&r->h, r->e, &r->train, r->batch + lo, hi - lo, 1.0 / r->o.batch,
                          r->g, NULL);
    failed = failed || !isfinite(part);
    ulpt_prompt_zero_grad(r->prompt);
    if (!failed && ulpt_prompt_backward(r->prompt, r->g, r->h.C) != ULPT_OK) {
        snprintf(r->h.error, sizeof r->h.error, "%s", ulpt_last_error());
        failed = 1;
    }
    float *grads = ulpt_prompt_grads(r->prompt);
    for (size_t k = 0; failed && k < np; k++)
        grads[k] = NAN;
    return failed ? NAN : part;
}

/* Steps start+1 .. last: each rank's shard, one MPI_Allreduce of the gradients, the same
 * AdamW step everywhere; a log line and the checkpoint on the steps that have them. */
static int train(run *r)
{
    const size_t lo = (size_t)r->o.batch * (size_t)world_rank / (size_t)world_size;
    const size_t hi = (size_t)r->o.batch * (size_t)(world_rank + 1) / (size_t)world_size;
    const size_t np = ulpt_prompt_num_params(r->prompt);
    if (np > INT_MAX) /* the same on every rank */
        return fail("%zu parameters do not fit one MPI count", np);
    r->first = r->loss = NAN;
    for (uint32_t step = r->start + 1; step <= r->last; step++) {
        task_sampler_next(&r->order, &r->train, r->batch, r->o.batch);
        const double part = shard_gradient(r, lo, hi);
        float *grads = ulpt_prompt_grads(r->prompt);
        MPI_Allreduce(MPI_IN_PLACE, grads, (int)np, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        const int logged = step == r->start + 1 || step == r->last || step % 10 == 0;
        double norm = 0; /* of the global gradient, before clipping: the log shows its scale */
        for (size_t k = 0; logged && k < np; k++)
            norm += (double)grads[k] * grads[k];
        if (ulpt_optimizer_step(r->opt) != ULPT_OK)
            return isfinite(part) ? fail("step %" PRIu32 ": %s (another rank failed)", step,
                                         ulpt_last_error())
                                  : fail("step %" PRIu32 ": %s", step, r->h.error);
        if (logged) { /* the loss, for the log only: a second, tiny reduction */
            MPI_Reduce(&part, &r->loss, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
            if (step == r->start + 1)
                r->first = r->loss;
            if (world_rank == 0 && !r->o.quiet)
                printf("step %4" PRIu32 "/%" PRIu32 "  loss %.6f  |grad| %.6e\n", step,
                       r->o.steps, r->loss, sqrt(norm));
        }
        if (r->o.checkpoint && ((r->o.every && step % r->o.every == 0) || step == r->last) &&
            rank0_save(r->prompt, r->opt, r->o.checkpoint))
            return 1;
    }
    return ranks_agree(r->prompt, &r->hash);
}

/* Test accuracy, each rank scoring its share of the test set; *total (on rank 0) is the
 * number right.  Every rank learns whether all of them succeeded. */
static int evaluate(run *r, int *total)
{
    const task_split *test = &r->test;
    int correct = 0, ok = ulpt_prompt_forward(r->prompt, r->e, r->h.C) == ULPT_OK;
    const task_example **all = ok ? malloc(sizeof *all * test->n) : NULL;
    if (all) {
        for (size_t i = 0; i < test->n; i++)
            all[i] = &test->ex[i];
        const size_t a = test->n * (size_t)world_rank / (size_t)world_size;
        const size_t b = test->n * (size_t)(world_rank + 1) / (size_t)world_size;
        ok = isfinite(host_shard(&r->h, r->e, test, all + a, b - a, 1.0, NULL, &correct));
        if (!ok)
            fail("evaluation: %s", r->h.error);
        free(all);
    } else {
        fail("evaluation: %s", ok ? "out of memory" : ulpt_last_error());
    }
    if (anyone(!all || !ok))
        return 1;
    *total = 0;
    MPI_Reduce(&correct, total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    return 0;
}

/* Rank 0's last lines: the losses, the accuracy, the hash, where to resume. */
static void report(const run *r, int total)
{
    if (world_rank != 0)
        return;
    if (r->last > r->start)
        printf("steps %" PRIu32 "..%" PRIu32 ": loss %.6f -> %.6f; ", r->start + 1, r->last,
               r->first, r->loss);
    printf("test accuracy %.1f%%; parameters identical on all %d rank%s (hash %016" PRIx64
           ")\n", 100.0 * total / (double)r->test.n, world_size, world_size > 1 ? "s" : "",
           r->hash);
    if (r->last < r->o.steps)
        printf("stopped after step %" PRIu32 " of %" PRIu32 "%s%s\n", r->last, r->o.steps,
               r->o.checkpoint ? "; resume with --resume " : "",
               r->o.checkpoint ? r->o.checkpoint : "");
}

/* Runs on every rank; returns the exit status: 0, 1 (failed: the same on every rank) or
 * 2 (usage). */
static int tune(int argc, char **argv)
{
    run r = { 0 };
    int rc = parse_args(argc, argv, &r.o);
    if (anyone(rc == 1 || rc == 2))
        return 2;
    if (anyone(rc == 3))
        return 0;
    /* Set-up: any rank may fail; all leave together. */
    int total = 0;
    rc = anyone(load_model(&r) || load_splits(&r) || allocate(&r) || make_prompt(&r));
    ulpt_set_num_threads(1); /* ranks share the cores */
    rc = rc || position(&r) || train(&r) || evaluate(&r, &total) ||
         (r.o.save && rank0_save(r.prompt, NULL, r.o.save));
    if (!rc)
        report(&r, total);
    run_free(&r);
    return rc;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    setvbuf(stdout, NULL, _IOLBF, 0); /* each progress line reaches mpirun whole */
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    char name[64];
    snprintf(name, sizeof name, "tune_mpi: rank %d", world_rank);
    cli_set_name(name);
    int rc = tune(argc, argv);
    MPI_Finalize();
    return rc;
}
