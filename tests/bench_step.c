/* bench_step.c -- how close forward, backward and a training step come to the memory
 * floor: the time to stream the same n x d floats once.
 *
 * For tiny rank the work is memory-bound: forward writes E (n*d floats), backward
 * reads G (n*d floats).  The baselines are a plain write (memset) and a plain read (a
 * sum) of n*d floats, timed in the same run; ratios are what to compare across
 * machines, absolute times are not. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ulpt.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The median of `reps` timings of fn(ctx), in microseconds. */
static double median_us(void (*fn)(void *), void *ctx, int reps)
{
    double t[101];
    for (int i = 0; i < 5; i++)
        fn(ctx);
    for (int i = 0; i < reps; i++) {
        double s = now();
        fn(ctx);
        t[i] = (now() - s) * 1e6;
    }
    for (int i = 1; i < reps; i++) /* insertion sort, reps is small */
        for (int k = i; k > 0 && t[k] < t[k - 1]; k--) {
            double x = t[k];
            t[k] = t[k - 1], t[k - 1] = x;
        }
    return t[reps / 2];
}

typedef struct {
    ulpt_prompt *p;
    ulpt_optimizer *o;
    float *e, *g;
    size_t nd;
    uint32_t d;
    volatile float sink;
} ctx;

static void write_stream(void *c_) { ctx *c = c_; memset(c->e, 0, c->nd * sizeof(float)); }
static void read_stream(void *c_)
{
    ctx *c = c_;
    float acc[16] = { 0 }; /* independent lanes, so the read is not latency-bound */
    size_t k = 0;
    for (; k + 16 <= c->nd; k += 16)
        for (int l = 0; l < 16; l++)
            acc[l] += c->g[k + l];
    for (int l = 1; l < 16; l++)
        acc[0] += acc[l];
    c->sink = acc[0];
}
static void forward(void *c_) { ctx *c = c_; ulpt_prompt_forward(c->p, c->e, c->d); }
static void backward(void *c_) { ctx *c = c_; ulpt_prompt_backward(c->p, c->g, c->d); }
static void step(void *c_) { ctx *c = c_; ulpt_optimizer_step(c->o); }

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
    ulpt_train_step(c->p, c->o, null_host, NULL, NULL);
}

static int run(const char *name, uint32_t n, uint32_t r, uint32_t d, int kind, unsigned flags)
{
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = n, po.rank = r, po.dim = d, po.projection_kind = kind, po.flags = flags;
    ctx c = { 0 };
    c.nd = (size_t)n * d;
    c.d = d;
    c.e = malloc(c.nd * sizeof(float));
    c.g = malloc(c.nd * sizeof(float));
    if (!c.e || !c.g || ulpt_prompt_create(&c.p, &po) || ulpt_optimizer_create(&c.o, c.p, NULL)) {
        fprintf(stderr, "bench: %s\n", ulpt_last_error());
        return 1;
    }
    for (size_t k = 0; k < c.nd; k++)
        c.g[k] = (float)(k % 7) * 1e-4f;
    const int reps = 51;
    double w = median_us(write_stream, &c, reps), rd = median_us(read_stream, &c, reps);
    double f = median_us(forward, &c, reps), b = median_us(backward, &c, reps);
    double s = median_us(step, &c, reps), t = median_us(train, &c, reps);
    printf("%-26s n=%u r=%u d=%u, %zu params\n", name, n, r, d, ulpt_prompt_num_params(c.p));
    printf("  stream write n*d  %9.1f us   (baseline)\n", w);
    printf("  stream read  n*d  %9.1f us   (baseline)\n", rd);
    printf("  forward           %9.1f us   %5.2f x write\n", f, f / w);
    printf("  backward          %9.1f us   %5.2f x read\n", b, b / rd);
    printf("  optimizer step    %9.1f us\n", s);
    printf("  train_step        %9.1f us   %5.2f x (write + read); null host\n", t, t / (w + rd));
    ulpt_optimizer_free(c.o);
    ulpt_prompt_free(c.p);
    free(c.e);
    free(c.g);
    return 0;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (ulpt_set_num_threads(threads) != ULPT_OK) {
        fprintf(stderr, "bench: %s\n", ulpt_last_error());
        return 1;
    }
    printf("libulpt %s, %d BLAS thread(s), median of 51 runs\n", ulpt_version_string(), threads);
    return run("ULPT (headline)", 100, 2, 4096, ULPT_PROJ_XAVIER_UNIFORM, 0) ||
           run("ULPT rank 8", 100, 8, 4096, ULPT_PROJ_XAVIER_UNIFORM, 0) ||
           run("vanilla (identity)", 100, 4096, 4096, ULPT_PROJ_IDENTITY,
               ULPT_NO_SCALE | ULPT_NO_SHIFT);
}
