/* tenants.c -- one process, one model, many prompts: every .ulpt file of a directory
 * served at once.  The prompts live in a prompt bank (ulpt_bank_*), which keeps only
 * their parameters; consecutive requests are for different prompts, and a batch of B of
 * them has its rows materialised by the bank in one call -- each request's rows from its
 * own prompt -- and is decoded as B sequences of one embedding batch and one token batch
 * (engine.h).  The same requests are also served one at a time, and the two must give
 * the same answers. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "host.h"
#include "task.h"
#include "ulpt.h"

#define MAX_TENANTS 256

typedef struct {
    char path[4096];
    ulpt_bank_id id;
    uint32_t n_rows;
    int task; /* index into the loaded tasks */
    size_t right, served;
} tenant;

typedef struct {
    char name[256];
    task_split test;
} task_entry;

/* Bytes the process has allocated and not freed (glibc). */
static size_t heap_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The .ulpt files of dir, sorted, into names (caller frees each and the array). */
static int list_prompts(const char *dir, char ***names, int *count)
{
    DIR *d = opendir(dir);
    if (!d)
        return fail("%s: %s", dir, strerror(errno));
    char **v = NULL;
    int n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".ulpt"))
            continue;
        char **more = n < MAX_TENANTS ? realloc(v, sizeof *v * (size_t)(n + 1)) : NULL;
        if (!more || !(more[n] = strdup(de->d_name))) {
            closedir(d);
            for (int i = 0; i < n; i++)
                free((more ? more : v)[i]);
            free(more ? more : v);
            return fail(n < MAX_TENANTS ? "out of memory" : "%s: more than %d prompts", dir,
                        MAX_TENANTS);
        }
        v = more;
        n++;
    }
    closedir(d);
    if (n)
        qsort(v, (size_t)n, sizeof *v, by_name);
    *names = v;
    *count = n;
    return 0;
}

typedef struct {
    engine *e;
    const ulpt_bank *bank;
    ulpt_bank_request *mat;
    const tenant *ten;
    const task_entry *tasks;
    int n_ten;
    float *rows;
    uint32_t max_rows, C;
    float *logits;
    engine_request *req;
    int *owner;
} batch_ctx;

/* Request k: tenant k mod n_ten, the (k / n_ten)-th test example of its task, so that
 * consecutive requests are for different prompts. */
static const task_example *request_example(const batch_ctx *b, size_t k)
{
    const task_split *s = &b->tasks[b->ten[k % (size_t)b->n_ten].task].test;
    return &s->ex[(k / (size_t)b->n_ten) % s->n];
}

/* Requests k0 .. k0+n-1 in one engine_run, their rows materialised by the bank in one
 * call, each request's from its own prompt. */
static int run_batch(batch_ctx *b, size_t k0, int n)
{
    for (int j = 0; j < n; j++) {
        size_t k = k0 + (size_t)j;
        const tenant *t = &b->ten[k % (size_t)b->n_ten];
        const task_example *x = request_example(b, k);
        float *E = b->rows + (size_t)j * b->max_rows * b->C;
        b->mat[j] = (ulpt_bank_request){ t->id, E, b->C };
        b->req[j] = (engine_request){ E, t->n_rows, x->input, x->len };
        b->owner[j] = (int)(k % (size_t)b->n_ten);
    }
    if (ulpt_bank_materialise(b->bank, b->mat, (size_t)n, ULPT_DTYPE_F32) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    if (engine_run(b->e, b->req, n, b->logits, NULL))
        return fail("%s", engine_error());
    return 0;
}

int cmd_tenants(const options *o)
{
    if (o->n_args != 2)
        return fail("tenants: usage: ulpt-llama tenants --gguf M.gguf [--batch B] PROMPTDIR "
                    "TASKROOT");
    const char *dir = o->args[0], *root = o->args[1];
    engine *e = NULL;
    ulpt_bank *bank = NULL;
    ulpt_prompt *p = NULL;
    ulpt_bank_request *mat = NULL;
    tenant *ten = NULL;
    task_entry *tasks = NULL;
    char **files = NULL;
    int n_files = 0, n_ten = 0, n_tasks = 0, rc = 1;
    float *rows = NULL, *logits = NULL, *single = NULL, *batched = NULL;
    int *batched_owner = NULL;
    engine_request *req = NULL;
    int *owner = NULL;
    char err[4608];

    if (engine_open(&e, o->gguf, o->batch, o->threads, o->verbose)) {
        fail("%s", engine_error());
        goto out;
    }
    const uint32_t C = engine_n_embd(e), V = engine_n_vocab(e), T = engine_max_len(e);
    const char *model = engine_model_name(e);
    if (ulpt_bank_create(&bank, model, C) != ULPT_OK) {
        fail("%s", ulpt_last_error());
        goto out;
    }
    if (list_prompts(dir, &files, &n_files))
        goto out;
    ten = calloc((size_t)n_files + 1, sizeof *ten);
    tasks = calloc((size_t)n_files + 1, sizeof *tasks);
    if (!ten || !tasks) {
        fail("out of memory");
        goto out;
    }

    /* Load every prompt tuned for this model; a prompt for another model, or one that
     * does not say which task it serves, is reported and left out. */
    uint32_t max_rows = 0;
    for (int f = 0; f < n_files; f++) {
        tenant *t = &ten[n_ten];
        snprintf(t->path, sizeof t->path, "%s/%s", dir, files[f]);
        /* one file at a time (not ulpt_bank_load_dir, which is all or nothing), so that
         * a foreign prompt is reported and the others are still served */
        if (ulpt_prompt_load_for_model(&p, t->path, model) != ULPT_OK) {
            printf("  not served: %s\n", ulpt_last_error());
            continue;
        }
        const char *task = ulpt_prompt_get_meta(p, "task");
        uint32_t n_rows = ulpt_prompt_n_tokens(p);
        if (!task || !task[0] || strchr(task, '/') || n_rows + 2 > T) {
            printf("  not served: %s: %s\n", t->path,
                   !task || !task[0] || strchr(task, '/') ? "no usable \"task\" metadata"
                                                         : "its rows leave no room for text");
            ulpt_prompt_free(p);
            p = NULL;
            continue;
        }
        if (ulpt_bank_add(bank, &t->id, p, files[f]) != ULPT_OK) {
            printf("  not served: %s: %s\n", t->path, ulpt_last_error());
            ulpt_prompt_free(p);
            p = NULL;
            continue;
        }
        t->n_rows = n_rows;
        t->task = -1;
        for (int k = 0; k < n_tasks; k++)
            if (!strcmp(tasks[k].name, task))
                t->task = k;
        if (t->task < 0) {
            char taskdir[4096];
            snprintf(taskdir, sizeof taskdir, "%s/%s", root, task);
            if (task_load(&tasks[n_tasks].test, taskdir, "test", T - 1, err, sizeof err)) {
                fail("%s (the task of %s)", err, t->path);
                goto out;
            }
            snprintf(tasks[n_tasks].name, sizeof tasks[n_tasks].name, "%s", task);
            t->task = n_tasks++;
        }
        if (n_rows > max_rows)
            max_rows = n_rows;
        n_ten++;
        ulpt_prompt_free(p); /* the bank keeps its own copy of the parameters */
        p = NULL;
    }
    if (n_ten == 0) {
        fail("%s: no prompt for model \"%s\"", dir, model);
        goto out;
    }
    for (int k = 0; k < n_tasks; k++)
        for (size_t i = 0; i < tasks[k].test.n; i++)
            if (tasks[k].test.ex[i].len + max_rows > T) {
                fail("%s: an example of %u bytes does not fit behind %u prompt rows",
                     tasks[k].test.path, tasks[k].test.ex[i].len, max_rows);
                goto out;
            }

    const int B = o->batch;
    const size_t R = o->requests;
    rows = malloc(sizeof(float) * (size_t)B * max_rows * C);
    logits = malloc(sizeof(float) * (size_t)B * V);
    single = malloc(sizeof(float) * R * 2);
    batched = malloc(sizeof(float) * (size_t)B * V);
    batched_owner = malloc(sizeof(int) * (size_t)B);
    req = malloc(sizeof *req * (size_t)B);
    mat = malloc(sizeof *mat * (size_t)B);
    owner = malloc(sizeof *owner * (size_t)B);
    if (!rows || !logits || !single || !batched || !batched_owner || !req || !mat || !owner) {
        fail("out of memory");
        goto out;
    }
    printf("%d prompts for model \"%s\" from %s, %d tasks; %zu requests, consecutive ones for "
           "different prompts\n", n_ten, model, dir, n_tasks, R);

    /* Each chunk of B consecutive requests is served both ways: one request per
     * llama_decode pair, and all B in one.  The two alternate chunk by chunk (and which
     * goes first alternates too), so a machine whose load changes treats both alike. */
    double seconds[2] = { 0, 0 }, max_diff = 0;
    size_t disagree = 0;
    batch_ctx bc = { e, bank, mat, ten, tasks, n_ten, rows, max_rows, C, logits, req, owner };
    if (run_batch(&bc, 0, B < (int)R ? B : (int)R)) /* untimed: start warm */
        goto out;
    for (size_t k0 = 0, chunk = 0; k0 < R; k0 += (size_t)B, chunk++) {
        int n = (int)(R - k0 < (size_t)B ? R - k0 : (size_t)B);
        for (int half = 0; half < 2; half++) {
            int way = (int)((chunk + (size_t)half) % 2); /* 0: one at a time, 1: batched */
            double t0 = now();
            if (way == 0) {
                for (int j = 0; j < n; j++) {
                    if (run_batch(&bc, k0 + (size_t)j, 1))
                        goto out;
                    const task_split *s = &tasks[ten[owner[0]].task].test;
                    single[2 * (k0 + (size_t)j)] = logits[s->verbalizer[0]];
                    single[2 * (k0 + (size_t)j) + 1] = logits[s->verbalizer[1]];
                }
                seconds[0] += now() - t0;
            } else {
                if (run_batch(&bc, k0, n))
                    goto out;
                seconds[1] += now() - t0;
                memcpy(batched, logits, sizeof(float) * (size_t)n * V);
                memcpy(batched_owner, owner, sizeof(int) * (size_t)n);
            }
        }
        for (int j = 0; j < n; j++) {
            size_t k = k0 + (size_t)j;
            tenant *t = &ten[batched_owner[j]];
            const task_split *s = &tasks[t->task].test;
            const float *l = batched + (size_t)j * V;
            float pair[2] = { l[s->verbalizer[0]], l[s->verbalizer[1]] };
            int p1 = pair[1] > pair[0], p0 = single[2 * k + 1] > single[2 * k];
            disagree += p1 != p0;
            for (int c = 0; c < 2; c++)
                max_diff = fmax(max_diff, fabs((double)pair[c] - single[2 * k + c]));
            t->right += p1 == request_example(&bc, k)->label;
            t->served++;
        }
    }
    for (int i = 0; i < n_ten; i++)
        printf("  %-44s task %-6s %3zu requests, accuracy %.1f%%\n", ten[i].path,
               tasks[ten[i].task].name, ten[i].served,
               100 * (double)ten[i].right / (double)ten[i].served);
    const double one = (double)R / seconds[0], many = (double)R / seconds[1];
    printf("one request per llama_decode:   %7.1f requests/s\n", one);
    printf("%2d requests per llama_decode:   %7.1f requests/s  (%.2fx)\n", B, many, many / one);
    printf("batched and one-at-a-time answers: %zu of %zu labels differ, label logits within "
           "%.3g\n", disagree, R, max_diff);
    /* Memory per loaded prompt: the heap growth (glibc's count of bytes in use) over
     * adding COPIES more copies of every prompt to a second bank. */
    enum { COPIES = 256 };
    ulpt_bank *extra = NULL;
    size_t added = 0, param_bytes = 0, row_bytes = 0, heap0 = heap_bytes();
    if (ulpt_bank_create(&extra, model, C) != ULPT_OK) {
        fail("%s", ulpt_last_error());
        goto out;
    }
    for (int i = 0; i < n_ten && !p; i++) {
        if (ulpt_prompt_load(&p, ten[i].path) != ULPT_OK)
            break;
        if (i == 0) {
            param_bytes = sizeof(float) * ulpt_prompt_num_params(p);
            row_bytes = sizeof(float) * ulpt_prompt_n_tokens(p) * (size_t)C;
        }
        for (int c = 0; c < COPIES; c++) {
            ulpt_bank_id id;
            added += ulpt_bank_add(extra, &id, p, NULL) == ULPT_OK;
        }
        ulpt_prompt_free(p);
        p = NULL;
    }
    size_t heap1 = heap_bytes();
    ulpt_bank_free(extra);
    const double per_prompt = (double)(heap1 - heap0) / (double)(added ? added : 1);
    printf("memory: %.0f bytes of heap per prompt in the bank (growth over %zu adds); the\n"
           "  first prompt's parameters are %zu bytes, the rows materialised per request %zu\n",
           per_prompt, added, param_bytes, row_bytes);
    if (o->json)
        printf("{\"prompts\": %d, \"requests\": %zu, \"batch\": %d, \"rps_one\": %.2f, "
               "\"rps_batched\": %.2f, \"ratio\": %.3f, \"disagree\": %zu, \"max_diff\": %.6g, "
               "\"bytes_per_prompt\": %.0f}\n",
               n_ten, R, B, one, many, many / one, disagree, max_diff, per_prompt);
    rc = disagree ? fail("batched decoding changed %zu answers", disagree) : 0;
out:
    ulpt_bank_free(bank);
    ulpt_prompt_free(p);
    free(mat);
    for (int k = 0; k < n_tasks; k++)
        task_free(&tasks[k].test);
    for (int f = 0; f < n_files; f++)
        free(files[f]);
    free(files);
    free(ten);
    free(tasks);
    free(rows);
    free(logits);
    free(single);
    free(batched);
    free(batched_owner);
    free(req);
    free(owner);
    engine_free(e);
    return rc;
}
