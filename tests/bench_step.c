/* bench_step.c -- how close forward, backward and a training step come to the memory
 * floor (the time to stream the same n x d floats once), how they compare with
 * PyTorch doing the same step, and where the fused kernels stop beating GEMM.
 *
 *     bench_step [--threads N] [--torch PYTHON] [--crossover]
 *
 * For tiny rank the work is memory-bound: forward writes E (n*d floats), backward
 * reads G (n*d floats).  The baselines are a plain write (memset) and a plain read (a
 * sum) of n*d floats, timed in the same run; ratios are what to compare across
 * machines, absolute times are not.  With --torch, PYTHON runs tests/bench_torch.py
 * for PyTorch's time on each shape (s*(Z@P)+b, backward, AdamW, same thread count)
 * and for torch.empty(...).uniform_() against the projection generator.
 *
 * With one thread every figure (PyTorch's too) is the calling thread's CPU time, so
 * that other jobs on a shared machine do not count in it; with more, wall-clock time
 * (the BLAS worker threads' time is not the caller's). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h" /* ulpt__kernel_force: time each kernel path */
#include "ulpt.h"

static const char *python; /* --torch */
static int threads = 1;

static double now(void)
{
    struct timespec ts;
    clock_gettime(threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define REPS 51

/* The median of REPS timings of fn(ctx), in microseconds. */
static double median_us(void (*fn)(void *), void *ctx)
{
    double t[REPS];
    for (int i = 0; i < 5; i++)
        fn(ctx);
    for (int i = 0; i < REPS; i++) {
        double s = now();
        fn(ctx);
        t[i] = (now() - s) * 1e6;
    }
    for (int i = 1; i < REPS; i++) /* insertion sort, REPS is small */
        for (int k = i; k > 0 && t[k] < t[k - 1]; k--) {
            double x = t[k];
            t[k] = t[k - 1], t[k - 1] = x;
        }
    return t[REPS / 2];
}

/* The medians of REPS timings of each of fn[0..nfn-1](ctx), in microseconds, the
 * functions taking turns within each repetition: on a shared machine a busy spell then
 * slows the baselines and the kernels alike instead of whichever ran during it.  Each
 * timed call follows an untimed call of the same function, so that it finds the caches
 * as its own previous call left them, as in a loop of it alone. */
#define MAX_FNS 8
static void medians_us(void (*const *fn)(void *), int nfn, void *ctx, double *us)
{
    static double t[MAX_FNS][REPS];
    for (int i = 0; i < 5; i++)
        for (int f = 0; f < nfn; f++)
            fn[f](ctx);
    for (int i = 0; i < REPS; i++)
        for (int f = 0; f < nfn; f++) {
            fn[f](ctx);
            double s = now();
            fn[f](ctx);
            t[f][i] = (now() - s) * 1e6;
        }
    for (int f = 0; f < nfn; f++) {
        for (int i = 1; i < REPS; i++) /* insertion sort, REPS is small */
            for (int k = i; k > 0 && t[f][k] < t[f][k - 1]; k--) {
                double x = t[f][k];
                t[f][k] = t[f][k - 1], t[f][k - 1] = x;
            }
        us[f] = t[f][REPS / 2];
    }
}

/* PyTorch's time for `args` (tests/bench_torch.py), or 0 if unavailable. */
static double torch_us(const char *args)
{
    if (!python)
        return 0;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s tests/bench_torch.py %s", python, args);
    FILE *f = popen(cmd, "r");
    double us = 0;
    if (!f || fscanf(f, "%lf", &us) != 1)
        us = 0;
    if (f && pclose(f) != 0)
        us = 0;
    if (us == 0)
        fprintf(stderr, "bench: `%s` gave no figure\n", cmd);
    return us;
}

typedef struct {
    ulpt_prompt *p;
    ulpt_optimizer *o;
    float *e, *g;
    size_t nd;
    uint32_t d;
    volatile float sink;
} ctx;

static void write_stream(void *c_)
{
    ctx *c = c_;
    memset(c->e, 0, c->nd * sizeof(float));
}
static void read_stream(void *c_)
{
    ctx *c = c_;
    float acc[16] = {0}; /* independent lanes, so the read is not latency-bound */
    size_t k = 0;
    for (; k + 16 <= c->nd; k += 16)
        for (int l = 0; l < 16; l++)
            acc[l] += c->g[k + l];
    for (int l = 1; l < 16; l++)
        acc[0] += acc[l];
    c->sink = acc[0];
}
static void forward(void *c_)
{
    ctx *c = c_;
    if (ulpt_prompt_forward(c->p, c->e, c->d) != ULPT_OK)
        abort();
}
static void backward(void *c_)
{
    ctx *c = c_;
    if (ulpt_prompt_backward(c->p, c->g, c->d) != ULPT_OK)
        abort();
}
static void step(void *c_)
{
    ctx *c = c_;
    if (ulpt_optimizer_step(c->o) != ULPT_OK)
        abort();
}

/* The cheapest possible host: G = 0.  What remains is libulpt's own cost. */
static int null_host(void *user, const float *e, uint32_t n, uint32_t d, float *grad,
                     double *loss)
{
    (void)user, (void)e, (void)n, (void)d, (void)grad;
    *loss = 0;
    return 0;
}
static void train(void *c_)
{
    ctx *c = c_;
    if (ulpt_train_step(c->p, c->o, null_host, NULL, NULL) != ULPT_OK)
        abort();
}

static int setup(ctx *c, uint32_t n, uint32_t r, uint32_t d, int kind, unsigned flags)
{
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = n, po.rank = r, po.dim = d, po.projection_kind = kind, po.flags = flags;
    memset(c, 0, sizeof *c);
    c->nd = (size_t)n * d;
    c->d = d;
    c->e = malloc(c->nd * sizeof(float));
    c->g = malloc(c->nd * sizeof(float));
    if (!c->e || !c->g || ulpt_prompt_create(&c->p, &po) ||
        ulpt_optimizer_create(&c->o, c->p, NULL)) {
        fprintf(stderr, "bench: %s\n", ulpt_last_error());
        return 1;
    }
    for (size_t k = 0; k < c->nd; k++)
        c->g[k] = (float)(k % 7) * 1e-4f;
    return 0;
}

static void teardown(ctx *c)
{
    ulpt_optimizer_free(c->o);
    ulpt_prompt_free(c->p);
    free(c->e);
    free(c->g);
}

static int run(const char *name, uint32_t n, uint32_t r, uint32_t d, int kind, unsigned flags)
{
    ctx c;
    if (setup(&c, n, r, d, kind, flags))
        return 1;
    void (*const fns[])(void *) = {write_stream, forward, read_stream, backward, step, train};
    double us[6];
    medians_us(fns, 6, &c, us);
    const double w = us[0], f = us[1], rd = us[2], b = us[3], s = us[4], t = us[5];
    printf("%-26s n=%u r=%u d=%u, %zu params\n", name, n, r, d, ulpt_prompt_num_params(c.p));
    printf("  stream write n*d  %9.1f us   (baseline)\n", w);
    printf("  stream read  n*d  %9.1f us   (baseline)\n", rd);
    printf("  forward           %9.1f us   %5.2f x write\n", f, f / w);
    printf("  backward          %9.1f us   %5.2f x read\n", b, b / rd);
    printf("  optimizer step    %9.1f us\n", s);
    printf("  train_step        %9.1f us   %5.2f x (write + read); null host\n", t, t / (w + rd));
    if (kind != ULPT_PROJ_IDENTITY) {
        char args[128];
        snprintf(args, sizeof args, "step %u %u %u %d", n, r, d, threads);
        double pt = torch_us(args);
        if (pt > 0)
            printf("  PyTorch step      %9.1f us   libulpt %.1f x faster\n", pt, pt / t);
    }
    teardown(&c);
    return 0;
}

/* Forward + backward through each path, to place the crossover (docs/DESIGN.md). */
static int crossover(uint32_t n, uint32_t d)
{
    static const uint32_t ranks[] = {1, 2, 4, 8, 12, 16};
    printf("crossover n=%u d=%u: forward + backward, us   (GEMM / fused)\n", n, d);
    for (size_t i = 0; i < sizeof ranks / sizeof ranks[0]; i++) {
        ctx c;
        if (setup(&c, n, ranks[i], d, ULPT_PROJ_XAVIER_UNIFORM, 0))
            return 1;
        double t[2];
        for (int k = 0; k < 2; k++) {
            ulpt__kernel_force = k == 0 ? ULPT__KERNEL_GEMM : ULPT__KERNEL_FUSED;
            t[k] = median_us(forward, &c) + median_us(backward, &c);
        }
        ulpt__kernel_force = ULPT__KERNEL_AUTO;
        printf("  r=%-3u GEMM %9.1f   fused %9.1f   %5.2f\n", ranks[i], t[0], t[1], t[0] / t[1]);
        teardown(&c);
    }
    return 0;
}

/* The projection generator: a 256 x 4096 P (one million floats), allocation included,
 * against PyTorch filling as many with uniform_(). */
static uint32_t proj_rank = 256, proj_dim = 4096;
static void make_projection(void *c_)
{
    (void)c_;
    ulpt_projection *pr;
    if (ulpt_projection_create(&pr, 7, proj_rank, proj_dim, ULPT_PROJ_XAVIER_UNIFORM) != ULPT_OK)
        abort();
    ulpt_projection_free(pr);
}

static void philox(void)
{
    double us = median_us(make_projection, NULL);
    size_t count = (size_t)proj_rank * proj_dim;
    printf("projection %ux%u (xavier_uniform, Philox)  %9.1f us   %.0f M floats/s\n", proj_rank,
           proj_dim, us, (double)count / us);
    char args[64];
    snprintf(args, sizeof args, "uniform %zu", count);
    double pt = torch_us(args);
    if (pt > 0)
        printf("torch.empty(%zu).uniform_()      %9.1f us   libulpt %.1f x faster\n", count, pt,
               pt / us);
}

int main(int argc, char **argv)
{
    int only_crossover = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--torch") && i + 1 < argc)
            python = argv[++i];
        else if (!strcmp(argv[i], "--crossover"))
            only_crossover = 1;
        else {
            fprintf(stderr, "usage: bench_step [--threads N] [--torch PYTHON] [--crossover]\n");
            return 2;
        }
    }
    if (ulpt_set_num_threads(threads) != ULPT_OK) {
        fprintf(stderr, "bench: %s\n", ulpt_last_error());
        return 1;
    }
    printf("libulpt %s, %d thread(s), median of %d runs taking turns (%s)%s\n",
           ulpt_version_string(),
           threads, REPS, threads == 1 ? "CPU time" : "wall-clock time",
           python ? "; PyTorch in the same run" : "");
    if (only_crossover)
        return crossover(100, 4096) || crossover(20, 768) || crossover(1000, 4096);
    int rc = run("ULPT (headline)", 100, 2, 4096, ULPT_PROJ_XAVIER_UNIFORM, 0) ||
             run("ULPT, long prompt", 1000, 2, 4096, ULPT_PROJ_XAVIER_UNIFORM, 0) ||
             run("ULPT, small model", 20, 2, 768, ULPT_PROJ_XAVIER_UNIFORM, 0) ||
             run("ULPT rank 8", 100, 8, 4096, ULPT_PROJ_XAVIER_UNIFORM, 0) ||
             run("vanilla (identity)", 100, 4096, 4096, ULPT_PROJ_IDENTITY,
                 ULPT_NO_SCALE | ULPT_NO_SHIFT);
    if (!rc)
        philox();
    return rc;
}
