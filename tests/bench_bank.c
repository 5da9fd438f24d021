/* bench_bank.c -- serving many tasks from one prompt bank: how fast E comes out for a
 * mixed batch of distinct prompts, against the time to write the same bytes, and what
 * a bank of many prompts costs in memory, against their parameters.
 *
 *   materialise  1000 distinct prompts (n=100, r=2, d=4096) in one call, each into one of
 *                64 destination buffers in turn (105 MB in all, far past the caches, as an
 *                engine's input buffers are); the baseline is memset of the same buffers
 *                in the same order, timed in the same run.
 *   memory       10,000 prompts added to a bank: the bytes its allocations hold (counted
 *                through the allocator hook) and the growth of the resident set, against
 *                n*r + 2d floats a prompt. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ulpt.h"

enum { N = 100, R = 2, D = 4096, PROMPTS = 1000, SLOTS = 64, MANY = 10000, REPS = 7 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_bank: %s: %s\n", what, ulpt_last_error());
    return 1;
}

/* ---- an allocator that counts the bytes held ---------------------------------------- */

static size_t held;
typedef union { size_t size; max_align_t align; } header;

static void *count_alloc(void *user, size_t size)
{
    (void)user;
    header *h = malloc(sizeof *h + size);
    if (!h)
        return NULL;
    h->size = size;
    held += size;
    return h + 1;
}
static void *count_realloc(void *user, void *ptr, size_t size)
{
    (void)user;
    header *h = ptr ? (header *)ptr - 1 : NULL;
    size_t old = h ? h->size : 0;
    header *g = realloc(h, sizeof *g + size);
    if (!g)
        return NULL;
    g->size = size;
    held += size - old;
    return g + 1;
}
static void count_free(void *user, void *ptr)
{
    (void)user;
    if (!ptr)
        return;
    header *h = (header *)ptr - 1;
    held -= h->size;
    free(h);
}

static long rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

/* ---- the benchmark -------------------------------------------------------------------- */

static int make_prompt(ulpt_prompt **p, uint64_t init_seed)
{
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = N, po.rank = R, po.dim = D, po.projection_seed = 2026, po.init_seed = init_seed;
    if (ulpt_prompt_create(p, &po) || ulpt_prompt_set_meta(*p, "model", "bench-model"))
        return 1;
    float *x = ulpt_prompt_params(*p); /* distinct scale and shift too */
    for (size_t i = (size_t)N * R; i < ulpt_prompt_num_params(*p); i++)
        x[i] += 1e-3f * (float)((i * 2654435761u + init_seed) % 1000);
    return 0;
}

static double median(double *t, int n)
{
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && t[k] < t[k - 1]; k--) {
            double x = t[k];
            t[k] = t[k - 1], t[k - 1] = x;
        }
    return t[n / 2];
}

int main(void)
{
    if (ulpt_set_num_threads(1))
        return fail("threads");
    printf("libulpt %s prompt bank, 1 thread, median of %d runs\n", ulpt_version_string(), REPS);

    /* materialise: 1000 distinct prompts, one batch */
    ulpt_bank *bank;
    if (ulpt_bank_create(&bank, "bench-model", D))
        return fail("create");
    ulpt_bank_request *req = malloc(PROMPTS * sizeof *req);
    const size_t nd = (size_t)N * D;
    float *dst = malloc(SLOTS * nd * sizeof(float));
    if (!req || !dst)
        return fail("malloc");
    memset(dst, 0, SLOTS * nd * sizeof(float)); /* fault the pages in before timing */
    for (int k = 0; k < PROMPTS; k++) {
        ulpt_prompt *p;
        if (make_prompt(&p, (uint64_t)k + 1) || ulpt_bank_add(bank, &req[k].id, p, NULL))
            return fail("add");
        ulpt_prompt_free(p);
        req[k].dst = dst + (size_t)(k % SLOTS) * nd;
        req[k].ld = D;
    }
    double tw[REPS], tf[REPS], th[REPS], tb[REPS];
    for (int rep = 0; rep < REPS; rep++) {
        double s = now();
        for (int k = 0; k < PROMPTS; k++)
            memset(dst + (size_t)(k % SLOTS) * nd, rep + 1, nd * sizeof(float));
        tw[rep] = now() - s;
        s = now();
        if (ulpt_bank_materialise(bank, req, PROMPTS, ULPT_DTYPE_F32))
            return fail("materialise");
        tf[rep] = now() - s;
        /* half precision writes half the bytes: into the first half of each slot */
        s = now();
        if (ulpt_bank_materialise(bank, req, PROMPTS, ULPT_DTYPE_F16))
            return fail("materialise f16");
        th[rep] = now() - s;
        s = now();
        if (ulpt_bank_materialise(bank, req, PROMPTS, ULPT_DTYPE_BF16))
            return fail("materialise bf16");
        tb[rep] = now() - s;
    }
    double w = median(tw, REPS), f = median(tf, REPS), h = median(th, REPS), b = median(tb, REPS);
    double bytes = (double)PROMPTS * nd * sizeof(float);
    printf("materialise %d distinct prompts n=%d r=%d d=%d (%.0f MB of f32 E) in one call\n",
           PROMPTS, N, R, D, bytes / 1e6);
    printf("  memset, same bytes   %8.1f ms  %6.2f GB/s   (baseline)\n", w * 1e3, bytes / w / 1e9);
    printf("  bank f32             %8.1f ms  %6.2f GB/s   %5.1f%% of write bandwidth, %.1f us/prompt\n",
           f * 1e3, bytes / f / 1e9, 100 * w / f, f / PROMPTS * 1e6);
    printf("  bank f16             %8.1f ms  %6.2f GB/s   %5.1f%% of write bandwidth (half the bytes)\n",
           h * 1e3, bytes / 2 / h / 1e9, 100 * (w / 2) / h);
    printf("  bank bf16            %8.1f ms  %6.2f GB/s   %5.1f%% of write bandwidth (half the bytes)\n",
           b * 1e3, bytes / 2 / b / 1e9, 100 * (w / 2) / b);
    ulpt_bank_free(bank);
    free(dst);
    free(req);

    /* memory: 10,000 prompts */
    static const ulpt_allocator counting = { count_alloc, count_realloc, count_free, NULL };
    ulpt_prompt *proto;
    if (make_prompt(&proto, 7))
        return fail("prompt");
    size_t params = ulpt_prompt_num_params(proto);
    long rss0 = rss_bytes();
    if (ulpt_set_allocator(&counting) || ulpt_bank_create(&bank, "bench-model", D))
        return fail("create");
    size_t held0 = held;
    char name[32];
    for (int k = 0; k < MANY; k++) {
        ulpt_bank_id id;
        ulpt_prompt_params(proto)[0] = (float)k; /* a distinct prompt each time */
        snprintf(name, sizeof name, "task-%05d", k);
        if (ulpt_bank_add(bank, &id, proto, name))
            return fail("add");
    }
    size_t bank_bytes = held - held0;
    long rss1 = rss_bytes();
    double floor_bytes = (double)MANY * params * sizeof(float);
    printf("memory of %d prompts (n=%d r=%d d=%d, one projection seed), named\n", MANY, N, R, D);
    printf("  parameters n*r + 2d  %8.1f MB   (%zu floats a prompt; floor)\n", floor_bytes / 1e6,
           params);
    printf("  bank allocations     %8.1f MB   %5.3f x the parameters (%.0f bytes a prompt over)\n",
           (double)bank_bytes / 1e6, (double)bank_bytes / floor_bytes,
           ((double)bank_bytes - floor_bytes) / MANY);
    if (rss0 > 0 && rss1 > 0)
        printf("  resident set growth  %8.1f MB   %5.3f x the parameters\n",
               (double)(rss1 - rss0) / 1e6, (double)(rss1 - rss0) / floor_bytes);
    printf("  (E of one prompt is n*d = %d floats, %.1f x its parameters)\n", N * D,
           (double)N * D / params);
    ulpt_bank_free(bank);
    ulpt_set_allocator(NULL);
    ulpt_prompt_free(proto);
    return 0;
}
