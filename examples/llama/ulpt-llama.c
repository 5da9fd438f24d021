/* ulpt-llama.c -- libulpt prompts served and tuned inside llama.cpp.
 *
 *     ulpt-llama check   --gguf M.gguf --tlm M.tlm [--prompt P.ulpt]
 *     ulpt-llama serve   --gguf M.gguf --prompt P.ulpt [--tlm M.tlm] TASKDIR
 *     ulpt-llama tenants --gguf M.gguf PROMPTDIR TASKROOT
 *     ulpt-llama tune    --gguf M.gguf --save P.ulpt TASKDIR
 *
 * The model is tinylm converted to GGUF (convert.py); llama.cpp runs it as `gpt2`.  A
 * prompt's rows E come from libulpt (ulpt_prompt_forward) and are decoded as an
 * embedding batch, the input bytes after them as tokens of the same sequence
 * (engine.h).  `--tlm` names the same weights in tinylm's own format, for comparing
 * with tinylm's C forward.  docs/LLAMA.md walks through the calls.
 * Errors: one line on stderr, exit status 1 (2 for usage). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "host.h"
#include "task.h"
#include "tinylm.h"
#include "ulpt.h"

static const char usage_text[] =
    "usage: ulpt-llama COMMAND [options] [ARGS]\n"
    "commands:\n"
    "  check    logits through llama.cpp against tinylm's C forward; a prompt tuned for\n"
    "           another model is refused; byte i is token i\n"
    "  serve    TASKDIR: a prompt's test accuracy through llama.cpp, and its agreement\n"
    "           with tinylm's C forward (--tlm)\n"
    "  tenants  PROMPTDIR TASKROOT: every prompt of PROMPTDIR served at once, each request\n"
    "           its own sequence of one batch; throughput against one at a time\n"
    "  tune     TASKDIR: tune a prompt with forward passes only, inside llama.cpp\n"
    "options:\n"
    "  --gguf PATH      the model converted by convert.py (required)\n"
    "  --tlm PATH       the same model as tinylm weights, for tinylm's C forward\n"
    "  --prompt PATH    a prompt file (serve; check: also compare with its rows)\n"
    "  --gelu-zero-gguf PATH  check: also compare the variant convert.py --gelu-zero wrote\n"
    "  --batch B        sequences decoded together (default 8; tune: 32)\n"
    "  --requests N     tenants: requests to serve (default 512)\n"
    "  --save PATH      tune: write the tuned prompt there\n"
    "  --steps S        tune: steps (default 600); --examples M examples a step (16)\n"
    "  --directions Q   tune: random directions a step, 2Q perturbed prompts (default 1)\n"
    "  --mu EPS         tune: perturbation size (default 0.01); --lr LR AdamW peak rate (0.05)\n"
    "  --tokens N, --rank R, --seed K   tune: the prompt's shape and seed (16, 2, 1)\n"
    "  --threads T      llama.cpp threads (default: one per CPU)\n"
    "  --json           one JSON line of results\n"
    "  --verbose        llama.cpp's own log on stderr\n"
    "environment:\n"
    "  OMP_WAIT_POLICY=passive  llama.cpp's CPU threads are OpenMP threads, which spin while\n"
    "                   idle; on cores shared with other work set this, or use --threads 1\n";

int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ulpt-llama: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int parse_uint(const char *s, unsigned long lo, unsigned long hi, uint32_t *out,
                      const char *what)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return fail("%s must be an integer in [%lu, %lu], not \"%s\"", what, lo, hi, s);
    *out = (uint32_t)v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){ .batch = 0, .threads = 0, .requests = 512, .steps = 600, .seed = 1,
                    .tokens = 16, .rank = 2, .lr = 0.05, .mu = 1e-2, .examples = 16,
                    .directions = 1 };
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 2 : 0);
    }
    o->cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint32_t u;
        if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--verbose")) {
            o->verbose = 1;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            exit(0);
        } else if (a[0] == '-' && a[1] == '-') {
            if (!v)
                return fail("%s needs a value", a);
            i++;
            if (!strcmp(a, "--gguf"))
                o->gguf = v;
            else if (!strcmp(a, "--tlm"))
                o->tlm = v;
            else if (!strcmp(a, "--gelu-zero-gguf"))
                o->gelu_zero_gguf = v;
            else if (!strcmp(a, "--prompt"))
                o->prompt = v;
            else if (!strcmp(a, "--save"))
                o->save = v;
            else if (!strcmp(a, "--batch")) {
                if (parse_uint(v, 1, 64, &u, "--batch"))
                    return 1;
                o->batch = (int)u;
            } else if (!strcmp(a, "--threads")) {
                if (parse_uint(v, 1, 64, &u, "--threads"))
                    return 1;
                o->threads = (int)u;
            } else if (!strcmp(a, "--requests")) {
                if (parse_uint(v, 1, 1000000, &o->requests, "--requests"))
                    return 1;
            } else if (!strcmp(a, "--steps")) {
                if (parse_uint(v, 1, 1000000, &o->steps, "--steps"))
                    return 1;
            } else if (!strcmp(a, "--examples")) {
                if (parse_uint(v, 1, 4096, &o->examples, "--examples"))
                    return 1;
            } else if (!strcmp(a, "--directions")) {
                if (parse_uint(v, 1, 1024, &o->directions, "--directions"))
                    return 1;
            } else if (!strcmp(a, "--seed")) {
                if (parse_uint(v, 0, UINT32_MAX, &o->seed, "--seed"))
                    return 1;
            } else if (!strcmp(a, "--tokens")) {
                if (parse_uint(v, 1, 128, &o->tokens, "--tokens"))
                    return 1;
            } else if (!strcmp(a, "--rank")) {
                if (parse_uint(v, 1, 4096, &o->rank, "--rank"))
                    return 1;
            } else if (!strcmp(a, "--lr") || !strcmp(a, "--mu")) {
                char *end;
                double x = strtod(v, &end);
                if (end == v || *end || !(x > 0) || !isfinite(x))
                    return fail("%s must be a positive number, not \"%s\"", a, v);
                *(!strcmp(a, "--lr") ? &o->lr : &o->mu) = x;
            } else {
                return fail("unknown option %s (see --help)", a);
            }
        } else if (o->n_args < 2) {
            o->args[o->n_args++] = a;
        } else {
            return fail("too many arguments (see --help)");
        }
    }
    if (!o->gguf)
        return fail("%s: --gguf MODEL.gguf is required", o->cmd);
    if (!o->batch)
        o->batch = !strcmp(o->cmd, "tune") ? 32 : 8;
    return 0;
}

/* ---- the reference: tinylm's C forward over the same rows --------------------------- */

/* Rows [E ; wte[bytes]] for tinylm, n_rows + len rows of width C. */
static void tinylm_rows(const tlm_model *m, const float *e, uint32_t n_rows, const uint8_t *text,
                        uint32_t len, float *rows)
{
    const size_t C = tlm_config_of(m)->width;
    if (n_rows)
        memcpy(rows, e, sizeof(float) * n_rows * C);
    for (uint32_t t = 0; t < len; t++)
        memcpy(rows + (n_rows + t) * C, tlm_token_embedding(m, text[t]), sizeof(float) * C);
}

/* Largest |a - b| over count values, and largest |a - b| / max|a| row by row (rows of
 * width w): the error relative to the row's own scale. */
static void compare(const float *a, const float *b, size_t count, size_t w, double *max_abs,
                    double *max_rel)
{
    for (size_t r = 0; r < count / w; r++) {
        double scale = 0, worst = 0;
        for (size_t k = 0; k < w; k++) {
            scale = fmax(scale, fabs(a[r * w + k]));
            worst = fmax(worst, fabs((double)a[r * w + k] - b[r * w + k]));
        }
        *max_abs = fmax(*max_abs, worst);
        if (scale > 0)
            *max_rel = fmax(*max_rel, worst / scale);
    }
}

/* ---- check ------------------------------------------------------------------------- */

/* What convert.py --gelu-zero subtracts from every MLP bias fc_b. */
#define GELU_ZERO_SHIFT 100.0f

/* fc_b += delta in every block of m, found by the file order of docs/TINYLM.md. */
static void shift_mlp_bias(tlm_model *m, float delta)
{
    const tlm_config *c = tlm_config_of(m);
    const size_t C = c->width, F = c->mlp;
    const size_t fc_b = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + C * F;
    const size_t block = fc_b + F + (F * C + C);
    float *p = tlm_params(m) + ((size_t)c->vocab + c->max_len) * C;
    for (uint32_t l = 0; l < c->layers; l++)
        for (size_t k = 0; k < F; k++)
            p[l * block + fc_b + k] += delta;
}

/* Texts for the logit check: English, a name, digits and punctuation, UTF-8, and bytes
 * the task files never hold. */
static const char *const check_texts[] = {
    "Call me Ishmael. Some years ago--never mind how long precisely--having little\n",
    "Margaret\n",
    "Re: [SAdev] 2.43 release | The figures for 12/08 are 3.5% up; see http://x.y/?a=b\n",
    "na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\n",
    "\x01\x02\x7f\x80\xfe\xff\t\t  end\n",
};

int cmd_check(const options *o)
{
    if (!o->tlm)
        return fail("check: --tlm MODEL.tlm is required");
    engine *e = NULL;
    tlm_model *m = NULL;
    ulpt_prompt *p = NULL, *other = NULL;
    float *rows = NULL, *ref = NULL, *got = NULL, *ref_half = NULL, *E = NULL, *last = NULL;
    int rc = 1;
    char tmp[] = "/tmp/ulpt-llama-XXXXXX";
    int tmp_made = 0;
    if (engine_open(&e, o->gguf, 1, o->threads, o->verbose)) {
        fail("%s", engine_error());
        goto out;
    }
    if (tlm_load(&m, o->tlm)) {
        fail("%s", tlm_last_error());
        goto out;
    }
    const tlm_config *cfg = tlm_config_of(m);
    const uint32_t C = engine_n_embd(e), V = engine_n_vocab(e), T = engine_max_len(e);
    if (C != cfg->width || V != cfg->vocab || T != cfg->max_len) {
        fail("%s and %s differ: width %u/%u, vocabulary %u/%u, context %u/%u", o->gguf, o->tlm,
             C, cfg->width, V, cfg->vocab, T, cfg->max_len);
        goto out;
    }
    const char *name = engine_model_name(e);
    printf("model: %s (\"%s\"): width %u, vocabulary %u, context %u\n", o->gguf, name, C, V, T);

    /* 1. the vocabulary: llama.cpp's tokenizer maps printable ASCII and '\n' to id = byte */
    {
        uint8_t ascii[96];
        int32_t ids[96];
        int n_ascii = 0, n_ids = 0, bad = 0;
        for (int b = 0x20; b < 0x7f; b++)
            ascii[n_ascii++] = (uint8_t)b;
        ascii[n_ascii++] = '\n';
        if (engine_tokenize(e, ascii, n_ascii, ids, &n_ids)) {
            fail("%s", engine_error());
            goto out;
        }
        for (int k = 0; k < n_ascii; k++)
            bad += k >= n_ids || ids[k] != ascii[k];
        if (n_ids != n_ascii || bad) {
            fail("llama.cpp tokenizes %d ASCII bytes into %d tokens, %d not id = byte", n_ascii,
                 n_ids, bad);
            goto out;
        }
        printf("vocabulary: llama.cpp's tokenizer maps each of %d ASCII bytes to id = byte\n",
               n_ascii);
    }

    /* 2. the prompt rows: the given prompt, or a fresh rank-2 one */
    uint32_t n_rows = 16;
    if (o->prompt) {
        if (ulpt_prompt_load_for_model(&p, o->prompt, name) != ULPT_OK) {
            fail("%s", ulpt_last_error());
            goto out;
        }
        n_rows = ulpt_prompt_n_tokens(p);
    } else {
        ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
        po.n_tokens = n_rows;
        po.dim = C;
        po.projection_seed = po.init_seed = 7;
        if (ulpt_prompt_create(&p, &po) != ULPT_OK) {
            fail("%s", ulpt_last_error());
            goto out;
        }
    }
    if (ulpt_prompt_dim(p) != C) {
        fail("the prompt's dim %u is not the model's width %u", ulpt_prompt_dim(p), C);
        goto out;
    }
    E = malloc(sizeof(float) * n_rows * C);
    rows = malloc(sizeof(float) * T * C);
    ref = malloc(sizeof(float) * T * V);
    ref_half = malloc(sizeof(float) * T * V);
    got = malloc(sizeof(float) * T * V);
    last = malloc(sizeof(float) * V);
    if (!E || !rows || !ref || !ref_half || !got || !last) {
        fail("out of memory");
        goto out;
    }
    if (ulpt_prompt_forward(p, E, C) != ULPT_OK) {
        fail("%s", ulpt_last_error());
        goto out;
    }

    /* 3. logits of every position, with and without prompt rows */
    double abs_exact = 0, rel_exact = 0, abs_half = 0, rel_half = 0, gelu_effect = 0, unused = 0;
    size_t positions = 0;
    const size_t n_texts = sizeof check_texts / sizeof *check_texts;
    for (int with_prompt = 0; with_prompt < 2; with_prompt++) {
        for (size_t k = 0; k < n_texts; k++) {
            const uint8_t *text = (const uint8_t *)check_texts[k];
            uint32_t len = (uint32_t)strlen(check_texts[k]);
            uint32_t nr = with_prompt ? n_rows : 0, n = nr + len;
            engine_request r = { with_prompt ? E : NULL, nr, text, len };
            if (engine_run(e, &r, 1, last, got)) {
                fail("%s", engine_error());
                goto out;
            }
            tinylm_rows(m, E, nr, text, len, rows);
            tlm_set_gelu_half(m, 0);
            if (tlm_forward(m, rows, n, ref)) {
                fail("%s", tlm_last_error());
                goto out;
            }
            tlm_set_gelu_half(m, 1);
            if (tlm_forward(m, rows, n, ref_half)) {
                fail("%s", tlm_last_error());
                goto out;
            }
            compare(ref, got, (size_t)n * V, V, &abs_exact, &rel_exact);
            compare(ref_half, got, (size_t)n * V, V, &abs_half, &rel_half);
            compare(ref, ref_half, (size_t)n * V, V, &gelu_effect, &unused);
            positions += n;
        }
    }
    tlm_set_gelu_half(m, 0);
    printf("logits at %zu positions (%zu texts, without and with %u prompt rows):\n", positions,
           n_texts, n_rows);
    printf("  llama.cpp vs tinylm's C forward:                  max |diff| %.3g, "
           "relative to the row's largest logit %.3g\n", abs_exact, rel_exact);
    printf("  llama.cpp vs tinylm with GELU through half floats: max |diff| %.3g, "
           "relative %.3g\n", abs_half, rel_half);
    printf("  (the half-float GELU alone moves tinylm's logits by up to %.3g)\n", gelu_effect);

    /* 3b. where the table is not involved: the variant with every GELU input below -10 */
    double abs_zero = -1, rel_zero = -1;
    if (o->gelu_zero_gguf) {
        engine *z = NULL;
        if (engine_open(&z, o->gelu_zero_gguf, 1, o->threads, o->verbose)) {
            fail("%s", engine_error());
            goto out;
        }
        shift_mlp_bias(m, -GELU_ZERO_SHIFT);
        abs_zero = rel_zero = 0;
        for (int with_prompt = 0; with_prompt < 2; with_prompt++) {
            for (size_t k = 0; k < n_texts; k++) {
                const uint8_t *text = (const uint8_t *)check_texts[k];
                uint32_t len = (uint32_t)strlen(check_texts[k]);
                uint32_t nr = with_prompt ? n_rows : 0, n = nr + len;
                engine_request r = { with_prompt ? E : NULL, nr, text, len };
                tinylm_rows(m, E, nr, text, len, rows);
                if (engine_run(z, &r, 1, last, got) || tlm_forward(m, rows, n, ref)) {
                    fail("%s", engine_error()[0] ? engine_error() : tlm_last_error());
                    engine_free(z);
                    goto out;
                }
                compare(ref, got, (size_t)n * V, V, &abs_zero, &rel_zero);
            }
        }
        shift_mlp_bias(m, GELU_ZERO_SHIFT);
        engine_free(z);
        printf("  every GELU input below -10 (GELU exactly 0, llama.cpp's table not read):\n"
               "  llama.cpp vs tinylm's C forward:                  max |diff| %.3g, "
               "relative %.3g\n", abs_zero, rel_zero);
    }

    /* 4. a prompt tuned for another model is refused, naming both */
    if (!mkdtemp(tmp)) {
        fail("mkdtemp: %s", strerror(errno));
        goto out;
    }
    tmp_made = 1;
    char path[sizeof tmp + 32];
    snprintf(path, sizeof path, "%s/other.ulpt", tmp);
    if (ulpt_prompt_set_meta(p, "model", "tinylm-random") != ULPT_OK ||
        ulpt_prompt_save(p, path, NULL) != ULPT_OK) {
        fail("%s", ulpt_last_error());
        goto out;
    }
    int lrc = ulpt_prompt_load_for_model(&other, path, name);
    if (lrc != ULPT_ERR_MISMATCH || other || !strstr(ulpt_last_error(), "tinylm-random") ||
        !strstr(ulpt_last_error(), name)) {
        fail("a prompt for \"tinylm-random\" was not refused as it should be (%d: %s)", lrc,
             ulpt_last_error());
        goto out;
    }
    printf("a prompt tuned for \"tinylm-random\" is refused: %s\n", ulpt_last_error());

    if (o->json)
        printf("{\"positions\": %zu, \"max_abs\": %.6g, \"max_rel\": %.6g, \"max_abs_half_gelu\": "
               "%.6g, \"max_rel_half_gelu\": %.6g, \"half_gelu_effect\": %.6g, "
               "\"max_abs_gelu_zero\": %.6g, \"max_rel_gelu_zero\": %.6g}\n", positions,
               abs_exact, rel_exact, abs_half, rel_half, gelu_effect, abs_zero, rel_zero);
    rc = 0;
out:
    if (tmp_made) {
        char path2[sizeof tmp + 32];
        snprintf(path2, sizeof path2, "%s/other.ulpt", tmp);
        unlink(path2);
        rmdir(tmp);
    }
    free(E);
    free(rows);
    free(ref);
    free(ref_half);
    free(got);
    free(last);
    ulpt_prompt_free(p);
    ulpt_prompt_free(other);
    tlm_free(m);
    engine_free(e);
    return rc;
}

/* ---- serve ------------------------------------------------------------------------- */

int cmd_serve(const options *o)
{
    if (!o->prompt || o->n_args != 1)
        return fail("serve: usage: ulpt-llama serve --gguf M.gguf --prompt P.ulpt [--tlm M.tlm] "
                    "TASKDIR");
    engine *e = NULL;
    tlm_model *m = NULL;
    ulpt_prompt *p = NULL;
    task_split test = { 0 };
    float *E = NULL, *logits = NULL, *rows = NULL, *ref = NULL;
    engine_request *req = NULL;
    int rc = 1;
    char err[4608];
    if (engine_open(&e, o->gguf, o->batch, o->threads, o->verbose)) {
        fail("%s", engine_error());
        goto out;
    }
    const uint32_t C = engine_n_embd(e), V = engine_n_vocab(e), T = engine_max_len(e);
    /* the prompt must have been tuned for this model: its "model" is the GGUF's name */
    if (ulpt_prompt_load_for_model(&p, o->prompt, engine_model_name(e)) != ULPT_OK) {
        fail("%s", ulpt_last_error());
        goto out;
    }
    const uint32_t n_rows = ulpt_prompt_n_tokens(p);
    if (ulpt_prompt_dim(p) != C || n_rows + 2 > T) {
        fail("%s: a prompt of %u x %u does not fit the model (width %u, context %u)", o->prompt,
             n_rows, ulpt_prompt_dim(p), C, T);
        goto out;
    }
    if (task_load(&test, o->args[0], "test", T - n_rows - 1, err, sizeof err)) {
        fail("%s", err);
        goto out;
    }
    if (o->tlm) {
        if (tlm_load(&m, o->tlm)) {
            fail("%s", tlm_last_error());
            goto out;
        }
        if (tlm_config_of(m)->width != C) {
            fail("%s is not the model of %s", o->tlm, o->gguf);
            goto out;
        }
    }
    E = malloc(sizeof(float) * n_rows * C);
    logits = malloc(sizeof(float) * (size_t)o->batch * V);
    rows = malloc(sizeof(float) * T * C);
    ref = malloc(sizeof(float) * T * V);
    req = malloc(sizeof *req * (size_t)o->batch);
    if (!E || !logits || !rows || !ref || !req) {
        fail("out of memory");
        goto out;
    }
    /* E is materialised once and shared by every request for this prompt */
    if (ulpt_prompt_forward(p, E, C) != ULPT_OK) {
        fail("%s", ulpt_last_error());
        goto out;
    }
    size_t right = 0, right_ref = 0, agree = 0;
    double max_abs = 0, max_rel = 0, seconds = 0;
    for (size_t i = 0; i < test.n; i += (size_t)o->batch) {
        int n = (int)(test.n - i < (size_t)o->batch ? test.n - i : (size_t)o->batch);
        for (int k = 0; k < n; k++)
            req[k] = (engine_request){ E, n_rows, test.ex[i + k].input, test.ex[i + k].len };
        double t0 = now();
        if (engine_run(e, req, n, logits, NULL)) {
            fail("%s", engine_error());
            goto out;
        }
        seconds += now() - t0;
        for (int k = 0; k < n; k++) {
            const task_example *x = &test.ex[i + k];
            const float *l = logits + (size_t)k * V;
            int pred = task_predict(l, test.verbalizer);
            right += pred == x->label;
            if (!m)
                continue;
            uint32_t len = n_rows + x->len;
            tinylm_rows(m, E, n_rows, x->input, x->len, rows);
            if (tlm_forward(m, rows, len, ref)) {
                fail("%s", tlm_last_error());
                goto out;
            }
            const float *r = ref + (size_t)(len - 1) * V;
            int pred_ref = task_predict(r, test.verbalizer);
            right_ref += pred_ref == x->label;
            agree += pred == pred_ref;
            for (int c = 0; c < 2; c++) {
                uint8_t b = test.verbalizer[c];
                double d = fabs((double)l[b] - r[b]);
                max_abs = fmax(max_abs, d);
                max_rel = fmax(max_rel, d / fmax(fabs(r[test.verbalizer[0]]),
                                                 fabs(r[test.verbalizer[1]])));
            }
        }
    }
    const double acc = (double)right / (double)test.n;
    if (o->json) {
        printf("{\"prompt\": \"%s\", \"examples\": %zu, \"acc_llama\": %.6f", o->prompt, test.n,
               acc);
        if (m)
            printf(", \"acc_tinylm\": %.6f, \"label_agreement\": %.6f, \"max_abs_label_logit\": "
                   "%.6g, \"max_rel_label_logit\": %.6g", (double)right_ref / (double)test.n,
                   (double)agree / (double)test.n, max_abs, max_rel);
        printf(", \"seconds\": %.3f}\n", seconds);
    } else {
        printf("%s (model \"%s\", %u rows) on %s: %zu test examples, %d per llama_decode\n",
               o->prompt, engine_model_name(e), n_rows, test.path, test.n, o->batch);
        printf("  test accuracy through llama.cpp: %.2f%%  (%.0f requests/s)\n", 100 * acc,
               (double)test.n / seconds);
        if (m) {
            printf("  test accuracy through tinylm's C forward: %.2f%%\n",
                   100 * (double)right_ref / (double)test.n);
            printf("  same predicted label: %zu of %zu (%.2f%%)\n", agree, test.n,
                   100 * (double)agree / (double)test.n);
            printf("  label logits: max |diff| %.3g, relative %.3g\n", max_abs, max_rel);
        }
    }
    rc = 0;
out:
    free(E);
    free(logits);
    free(rows);
    free(ref);
    free(req);
    task_free(&test);
    ulpt_prompt_free(p);
    tlm_free(m);
    engine_free(e);
    return rc;
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o))
        return 2;
    ulpt_set_num_threads(1);
    if (!strcmp(o.cmd, "check"))
        return cmd_check(&o);
    if (!strcmp(o.cmd, "serve"))
        return cmd_serve(&o);
    if (!strcmp(o.cmd, "tenants"))
        return cmd_tenants(&o);
    if (!strcmp(o.cmd, "tune"))
        return cmd_tune(&o);
    return fail("unknown command \"%s\" (see --help)", o.cmd);
}
