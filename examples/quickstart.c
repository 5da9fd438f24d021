/* quickstart.c -- tune a ULPT prompt against a host's loss, in C.
 *
 * The "host model" here is a frozen random read-out W (dim x classes): every prompt
 * token t should make W score class t % classes highest.  The host computes the
 * softmax cross-entropy and dL/dE; libulpt owns everything else.  A real host runs its
 * transformer in host_loss instead; nothing on libulpt's side changes.
 *
 *     make quickstart  (or: cc quickstart.c $(pkg-config --cflags --libs ulpt) -lm)
 *
 * examples/tinylm/tune.c is the full-size host: a transformer and real data. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ulpt.h"

enum { N_TOKENS = 100, RANK = 2, DIM = 4096, CLASSES = 8, STEPS = 300 };

typedef struct {
    float *w;      /* DIM x CLASSES, frozen */
    int correct;   /* tokens whose top class is their target, last call */
} host_model;

/* loss = mean over tokens of cross-entropy(E_t W, t % CLASSES); G = dL/dE */
static int host_loss(void *user, const float *e, uint32_t n, uint32_t d, float *grad,
                     double *loss)
{
    host_model *m = user;
    double total = 0;
    m->correct = 0;
    for (uint32_t t = 0; t < n; t++) {
        const float *et = e + (size_t)t * d;
        double logit[CLASSES] = { 0 }, top = -INFINITY, z = 0;
        for (uint32_t j = 0; j < d; j++)
            for (int c = 0; c < CLASSES; c++)
                logit[c] += (double)et[j] * m->w[(size_t)j * CLASSES + c];
        int best = 0;
        for (int c = 0; c < CLASSES; c++) {
            if (logit[c] > top)
                top = logit[c], best = c;
        }
        for (int c = 0; c < CLASSES; c++)
            z += exp(logit[c] - top);
        const int target = (int)(t % CLASSES);
        total += log(z) - (logit[target] - top);
        m->correct += best == target;
        float dlogit[CLASSES];
        for (int c = 0; c < CLASSES; c++)
            dlogit[c] = (float)((exp(logit[c] - top) / z - (c == target)) / n);
        float *gt = grad + (size_t)t * d;
        for (uint32_t j = 0; j < d; j++)
            for (int c = 0; c < CLASSES; c++)
                gt[j] += dlogit[c] * m->w[(size_t)j * CLASSES + c];
    }
    *loss = total / n;
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress(int step, double loss, float lr, double elapsed, int correct)
{
    int filled = 30 * step / STEPS;
    char bar[31];
    memset(bar, '#', (size_t)filled);
    memset(bar + filled, '.', (size_t)(30 - filled));
    bar[30] = '\0';
    /* one line redrawn on a terminal, a line every 50 steps in a log */
    static int tty = -1;
    if (tty < 0)
        tty = isatty(fileno(stdout));
    if (!tty && step % 50 != 0 && step != 1)
        return;
    printf("%s[%s] step %3d/%d  loss %.4f  lr %.4f  tokens right %3d/%d  %5.1fs%s",
           tty ? "\r" : "", bar, step, STEPS, loss, lr, correct, N_TOKENS, elapsed,
           tty ? "" : "\n");
    fflush(stdout);
}

#define CHECK(call)                                                                        \
    do {                                                                                   \
        if ((call) != ULPT_OK) {                                                           \
            fprintf(stderr, "quickstart: %s\n", ulpt_last_error());                        \
            return EXIT_FAILURE;                                                           \
        }                                                                                  \
    } while (0)

int main(void)
{
    printf("libulpt %s: ULPT prompt of %d tokens, rank %d, dim %d\n", ulpt_version_string(),
           N_TOKENS, RANK, DIM);

    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = N_TOKENS;
    po.rank = RANK;
    po.dim = DIM;
    po.projection_seed = 2025;
    ulpt_prompt *prompt;
    CHECK(ulpt_prompt_create(&prompt, &po));
    printf("trainable parameters: %zu (vanilla prompt tuning: %d, %.1f%%)\n",
           ulpt_prompt_num_params(prompt), N_TOKENS * DIM,
           100.0 * (double)ulpt_prompt_num_params(prompt) / (N_TOKENS * DIM));

    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT; /* AdamW */
    oo.lr = 0.05;
    oo.weight_decay = 1e-5;
    oo.max_grad_norm = 1.0;
    oo.schedule = ULPT_SCHED_LINEAR;
    oo.warmup_steps = 20;
    oo.total_steps = STEPS;
    ulpt_optimizer *opt;
    CHECK(ulpt_optimizer_create(&opt, prompt, &oo));

    host_model model = { malloc(sizeof(float) * DIM * CLASSES), 0 };
    if (!model.w)
        return EXIT_FAILURE;
    uint64_t state = 7;
    for (size_t k = 0; k < (size_t)DIM * CLASSES; k++) { /* frozen read-out, std 1/16 */
        state = state * 6364136223846793005u + 1442695040888963407u;
        model.w[k] = (float)(((double)(state >> 11) * 0x1p-53 - 0.5) * 0.2165);
    }

    double start = now(), loss = 0, first = 0;
    for (int step = 1; step <= STEPS; step++) {
        float lr = ulpt_optimizer_lr(opt);
        CHECK(ulpt_train_step(prompt, opt, host_loss, &model, &loss));
        if (step == 1)
            first = loss;
        if (step == 1 || step % 10 == 0 || step == STEPS)
            progress(step, loss, lr, now() - start, model.correct);
    }
    printf("%sloss %.4f -> %.4f in %d steps, %.2f s\n", isatty(fileno(stdout)) ? "\n" : "", first, loss, STEPS, now() - start);

    /* Serving: E is all a host needs, computed once per prompt and cached. */
    float *e = malloc(sizeof(float) * N_TOKENS * DIM);
    float *g = calloc((size_t)N_TOKENS * DIM, sizeof(float));
    if (!e || !g)
        return EXIT_FAILURE;
    CHECK(ulpt_prompt_forward(prompt, e, DIM));
    host_loss(&model, e, N_TOKENS, DIM, g, &loss);
    printf("tuned prompt: %d/%d tokens pick their target class (chance: %d)\n", model.correct,
           N_TOKENS, N_TOKENS / CLASSES);

    free(e);
    free(g);
    free(model.w);
    ulpt_optimizer_free(opt);
    ulpt_prompt_free(prompt);
    return model.correct == N_TOKENS ? EXIT_SUCCESS : EXIT_FAILURE;
}
