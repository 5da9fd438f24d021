/* tenants.c -- one process, one model, many prompts: every .ulpt file of a directory
 * served at once.  The prompts live in a prompt bank (ulpt_bank_*), which keeps only
 * their parameters; consecutive requests are for different prompts (and tasks, with
 * labels of their own), and a batch of B of them is served by engine_serve_bank: their
 * rows materialised by the bank in one call, each from its own prompt, and decoded as B
 * sequences of the same llama_decode calls.  The same requests are also served one at a
 * time, and the two must give the same answers.
 *
 * A prompt's "task" metadata names its test data under TASKROOT: TASKROOT/TASK (a
 * tinylm task directory), or TASKROOT/TASK.jsonl or .tsv; its layout and labels are the
 * prompt's own (host.h, format_from_prompt). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "engine.h"
#include "host.h"
#include "ulpt.h"

#define MAX_TENANTS 256

typedef struct {
    char path[4096];
    ulpt_bank_id id;
    int task;          /* index into the loaded tasks */
    size_t right, served;
} tenant;

typedef struct {
    char name[256];
    text_format fmt;
    label_set labels;
    data_split data;
    task_set test;
} task_entry;

typedef struct {
    engine *e;
    ulpt_bank *bank;
    tenant ten[MAX_TENANTS];
    task_entry tasks[MAX_TENANTS];
    int n_ten, n_tasks;
    uint32_t max_labels;
} tenancy;

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

static void free_names(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The .ulpt files of dir, sorted, into names (caller frees with free_names). */
static int list_prompts(const char *dir, char ***names, int *count)
{
    DIR *d = opendir(dir);
    if (!d)
        return fail("%s: %s", dir, strerror(errno));
    char **v = NULL;
    int n = 0, rc = 0;
    for (struct dirent *de; !rc && (de = readdir(d));) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".ulpt"))
            continue;
        if (n == MAX_TENANTS) {
            rc = fail("%s: more than %d prompts", dir, MAX_TENANTS);
            break;
        }
        char **more = realloc(v, sizeof *v * (size_t)(n + 1));
        if (!more || !(more[n] = strdup(de->d_name))) {
            v = more ? more : v;
            rc = fail("out of memory");
            break;
        }
        v = more;
        n++;
    }
    closedir(d);
    if (rc) {
        free_names(v, n);
        return rc;
    }
    if (n)
        qsort(v, (size_t)n, sizeof *v, by_name);
    *names = v;
    *count = n;
    return 0;
}

/* The task named name for prompt p: found among those loaded, or loaded from root. */
static int find_task(const options *o, tenancy *t, const char *name, const ulpt_prompt *p,
                     int *index)
{
    for (int k = 0; k < t->n_tasks; k++)
        if (!strcmp(t->tasks[k].name, name))
            return *index = k, 0;
    task_entry *x = &t->tasks[t->n_tasks];
    data_labels names = { 0 };
    options so = *o;
    char dir[4096], file[4200];
    struct stat st;
    snprintf(x->name, sizeof x->name, "%s", name);
    snprintf(x->fmt.sep, sizeof x->fmt.sep, "\n");
    snprintf(dir, sizeof dir, "%s/%s", o->args[1], name);
    const int is_dir = !stat(dir, &st) && S_ISDIR(st.st_mode);
    so.train = so.valid = so.test = NULL;
    so.sep = NULL;
    so.chat = 0;
    if (!is_dir) {
        snprintf(file, sizeof file, "%s.jsonl", dir);
        if (stat(file, &st))
            snprintf(file, sizeof file, "%s.tsv", dir);
        so.test = file;
    }
    int rc = format_from_prompt(p, &x->fmt, &names) ||
             task_load(is_dir ? dir : NULL, &so, &names, &x->fmt, NULL, NULL, &x->data) ||
             labels_prepare(t->e, &names, &x->labels) ||
             task_set_prepare(t->e, &x->data, &x->fmt, 0, &x->labels, &x->test);
    data_labels_free(&names);
    if (rc)
        return 1;
    if (x->labels.names.n > t->max_labels)
        t->max_labels = x->labels.names.n;
    *index = t->n_tasks++;
    return 0;
}

/* Every prompt trained against this model into the bank; a prompt for another model, or
 * one that does not say which task it serves, is reported and left out. */
static int tenants_load(const options *o, tenancy *t)
{
    char **files = NULL, note[1024];
    int n_files = 0, rc = 0;
    const engine_identity *id = engine_identity_of(t->e);
    if (ulpt_bank_create(&t->bank, id->name, id->n_embd) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    if (list_prompts(o->args[0], &files, &n_files))
        return 1;
    for (int f = 0; !rc && f < n_files; f++) {
        tenant *ten = &t->ten[t->n_ten];
        ulpt_prompt *p = NULL;
        snprintf(ten->path, sizeof ten->path, "%s/%s", o->args[0], files[f]);
        if (ulpt_prompt_load(&p, ten->path) != ULPT_OK) {
            printf("  not served: %s\n", ulpt_last_error());
            continue;
        }
        const char *task = ulpt_prompt_get_meta(p, "task");
        if (engine_identity_check(t->e, p, ten->path, note, sizeof note))
            printf("  not served: %s\n", engine_error());
        else if (!task || !task[0] || strchr(task, '/'))
            printf("  not served: %s: no usable \"task\" metadata\n", ten->path);
        else if (ulpt_bank_add(t->bank, &ten->id, p, files[f]) != ULPT_OK)
            printf("  not served: %s: %s\n", ten->path, ulpt_last_error());
        else if (find_task(o, t, task, p, &ten->task))
            rc = 1;
        else
            t->n_ten++;
        ulpt_prompt_free(p); /* the bank keeps its own copy of the parameters */
    }
    free_names(files, n_files);
    if (!rc && !t->n_ten)
        rc = fail("%s: no prompt for model \"%s\"", o->args[0], id->name);
    return rc;
}

/* Request k: tenant k mod n_ten, the (k / n_ten)-th test example of its task, so that
 * consecutive requests are for different prompts. */
static void request(const tenancy *t, size_t k, ulpt_bank_id *id, engine_seq *s,
                    uint32_t *gold)
{
    const tenant *ten = &t->ten[k % (size_t)t->n_ten];
    const task_entry *x = &t->tasks[ten->task];
    const size_t i = (k / (size_t)t->n_ten) % x->test.n;
    *id = ten->id;
    task_seqs(&x->test, i, 1, NULL, 0, s);
    s->labels = &x->labels.view;
    *gold = x->test.label[i];
}

typedef struct {
    double seconds[2], max_diff;
    size_t disagree;
} tenants_result;

/* Each chunk of B consecutive requests is served both ways: one request per
 * engine_serve_bank, and all B in one.  The two alternate chunk by chunk (and which goes
 * first alternates too), so a machine whose load changes treats both alike. */
static int tenants_serve(const options *o, tenancy *t, tenants_result *r)
{
    const size_t B = o->batch, R = o->requests, L = t->max_labels;
    ulpt_bank_id *ids = malloc(sizeof *ids * B);
    engine_seq *seqs = malloc(sizeof *seqs * B);
    uint32_t *gold = malloc(sizeof *gold * B);
    double *one = malloc(sizeof(double) * B * L), *many = malloc(sizeof(double) * B * L);
    const engine_labels *widest = &t->tasks[0].labels.view;
    for (int k = 1; k < t->n_tasks; k++)
        if (t->tasks[k].labels.view.n > widest->n)
            widest = &t->tasks[k].labels.view;
    int rc = !ids || !seqs || !gold || !one || !many ? fail("out of memory") : 0;
    for (size_t k0 = 0, chunk = 0; !rc && k0 < R; k0 += B, chunk++) {
        const size_t n = R - k0 < B ? R - k0 : B;
        for (size_t j = 0; j < n; j++)
            request(t, k0 + j, &ids[j], &seqs[j], &gold[j]);
        for (int half = 0; !rc && half < 2; half++) {
            const int way = (int)((chunk + (size_t)half) % 2); /* 0: one at a time */
            const double t0 = now();
            for (size_t j = 0; !rc && j < (way ? 1 : n); j++)
                rc = engine_serve_bank(t->e, t->bank, ids + j, seqs + j, way ? n : 1, widest,
                                       (way ? many : one) + j * L);
            r->seconds[way] += now() - t0;
        }
        if (rc) {
            rc = fail("%s", engine_error());
            break;
        }
        for (size_t j = 0; j < n; j++) {
            tenant *ten = &t->ten[(k0 + j) % (size_t)t->n_ten];
            const uint32_t nl = seqs[j].labels->n;
            const uint32_t p1 = predict(many + j * L, nl), p0 = predict(one + j * L, nl);
            r->disagree += p1 != p0;
            for (uint32_t c = 0; c < nl; c++)
                r->max_diff = fmax(r->max_diff, fabs(many[j * L + c] - one[j * L + c]));
            ten->right += p1 == gold[j];
            ten->served++;
        }
    }
    free(ids);
    free(seqs);
    free(gold);
    free(one);
    free(many);
    return rc;
}

/* Memory per loaded prompt: the heap growth (glibc's count of bytes in use) over adding
 * COPIES more copies of every prompt to a second bank. */
static int tenants_memory(const tenancy *t, double *per_prompt, size_t *param_bytes)
{
    enum { COPIES = 256 };
    const engine_identity *id = engine_identity_of(t->e);
    ulpt_bank *extra = NULL;
    ulpt_prompt *p = NULL;
    size_t added = 0, heap0 = heap_bytes();
    if (ulpt_bank_create(&extra, id->name, id->n_embd) != ULPT_OK)
        return fail("%s", ulpt_last_error());
    for (int i = 0; i < t->n_ten; i++) {
        if (ulpt_prompt_load(&p, t->ten[i].path) != ULPT_OK)
            break;
        if (i == 0)
            *param_bytes = sizeof(float) * ulpt_prompt_num_params(p);
        for (int c = 0; c < COPIES; c++) {
            ulpt_bank_id bid;
            added += ulpt_bank_add(extra, &bid, p, NULL) == ULPT_OK;
        }
        ulpt_prompt_free(p);
        p = NULL;
    }
    const size_t heap1 = heap_bytes();
    ulpt_bank_free(extra);
    *per_prompt = (double)(heap1 - heap0) / (double)(added ? added : 1);
    return 0;
}

static void tenants_report(const options *o, const tenancy *t, const tenants_result *r,
                           double per_prompt, size_t param_bytes)
{
    for (int i = 0; i < t->n_ten; i++)
        printf("  %-44s task %-6s %3zu requests, accuracy %.1f%%\n", t->ten[i].path,
               t->tasks[t->ten[i].task].name, t->ten[i].served,
               100 * (double)t->ten[i].right / (double)t->ten[i].served);
    const double one = o->requests / r->seconds[0], many = o->requests / r->seconds[1];
    printf("one request per decode:      %7.1f requests/s\n", one);
    printf("%2u requests per decode:      %7.1f requests/s  (%.2fx)\n", o->batch, many,
           many / one);
    printf("batched and one-at-a-time answers: %zu of %u labels differ, label scores within "
           "%.3g\n", r->disagree, o->requests, r->max_diff);
    printf("memory: %.0f bytes of heap per prompt in the bank; the first prompt's parameters "
           "are %zu bytes\n", per_prompt, param_bytes);
    if (o->json)
        printf("{\"prompts\": %d, \"requests\": %u, \"batch\": %u, \"rps_one\": %.2f, "
               "\"rps_batched\": %.2f, \"ratio\": %.3f, \"disagree\": %zu, \"max_diff\": %.6g, "
               "\"bytes_per_prompt\": %.0f}\n", t->n_ten, o->requests, o->batch, one, many,
               many / one, r->disagree, r->max_diff, per_prompt);
}

int cmd_tenants(const options *o)
{
    if (o->n_args != 2)
        return fail("tenants: usage: ulpt-llama tenants --gguf M.gguf [--batch B] PROMPTDIR "
                    "TASKROOT");
    tenancy *t = calloc(1, sizeof *t);
    if (!t)
        return fail("out of memory");
    tenants_result r = { { 0, 0 }, 0, 0 };
    double per_prompt = 0;
    size_t param_bytes = 0;
    int rc = open_engine(o, o->batch, &t->e) || tenants_load(o, t);
    if (!rc) {
        printf("%d prompts for model \"%s\" from %s, %d tasks; %u requests, consecutive ones "
               "for different prompts\n", t->n_ten, engine_identity_of(t->e)->name, o->args[0],
               t->n_tasks, o->requests);
        rc = tenants_serve(o, t, &r) || tenants_memory(t, &per_prompt, &param_bytes);
    }
    if (!rc) {
        tenants_report(o, t, &r, per_prompt, param_bytes);
        rc = r.disagree ? fail("batched decoding changed %zu answers", r.disagree) : 0;
    }
    for (int k = 0; k <= t->n_tasks && k < MAX_TENANTS; k++) { /* and a half-loaded one */
        task_set_free(&t->tasks[k].test);
        data_free(&t->tasks[k].data);
        labels_free(&t->tasks[k].labels);
    }
    ulpt_bank_free(t->bank);
    engine_free(t->e);
    free(t);
    return rc;
}
