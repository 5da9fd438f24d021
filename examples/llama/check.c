/* check.c -- tinylm converted to GGUF (convert.py, architecture gpt2) against tinylm's own
 * C forward: the vocabulary, logits at every position with and without prompt rows, and
 * prompts for other models refused.  Also the reference scores `serve --tlm` compares
 * with. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "host.h"
#include "tinylm.h"
#include "ulpt.h"

/* Rows [E ; wte[ids]] for tinylm, of width C; returns their count. */
static uint32_t tinylm_rows(const tlm_model *m, const float *E, uint32_t n_rows,
                            const int32_t *ids, uint32_t n_ids, float *rows)
{
    const size_t C = tlm_config_of(m)->width;
    if (n_rows)
        memcpy(rows, E, sizeof(float) * n_rows * C);
    for (uint32_t t = 0; t < n_ids; t++)
        memcpy(rows + (n_rows + t) * C, tlm_token_embedding(m, ids[t]), sizeof(float) * C);
    return n_rows + n_ids;
}

static double log_prob(const float *l, size_t V, int32_t k)
{
    double top = l[0], sum = 0;
    for (size_t j = 1; j < V; j++)
        top = fmax(top, l[j]);
    for (size_t j = 0; j < V; j++)
        sum += exp((double)l[j] - top);
    return (double)l[k] - top - log(sum);
}

int tinylm_scores(const char *tlm_path, const engine *e, const float *E, uint32_t n_rows,
                  const task_set *t, const label_set *labels, double *scores)
{
    tlm_model *m = NULL;
    if (tlm_load(&m, tlm_path))
        return fail("%s", tlm_last_error());
    const tlm_config *c = tlm_config_of(m);
    const size_t V = c->vocab, T = c->max_len;
    if (c->width != engine_identity_of(e)->n_embd || engine_adds_bos(e)) {
        tlm_free(m);
        return fail("%s is not the model of the GGUF file", tlm_path);
    }
    int32_t *ids = malloc(sizeof *ids * T);
    float *rows = malloc(sizeof(float) * T * c->width), *logits = malloc(sizeof(float) * T * V);
    int rc = !ids || !rows || !logits ? fail("out of memory") : 0;
    for (size_t i = 0; !rc && i < t->n; i++) {
        for (uint32_t l = 0; !rc && l < labels->names.n; l++) {
            const uint32_t len = t->len[i], L = labels->len[l];
            if (n_rows + len + L - 1 > T) {
                rc = fail("%s:%u: too long for tinylm", t->path, t->line[i]);
                break;
            }
            memcpy(ids, t->tokens[i], sizeof *ids * len);
            memcpy(ids + len, labels->tokens[l], sizeof *ids * (L - 1));
            uint32_t n = tinylm_rows(m, E, n_rows, ids, len + L - 1, rows);
            if (tlm_forward(m, rows, n, logits)) {
                rc = fail("%s", tlm_last_error());
                break;
            }
            double s = 0;
            for (uint32_t k = 0; k < L; k++)
                s += log_prob(logits + (size_t)(n_rows + len - 1 + k) * V, V,
                              labels->tokens[l][k]);
            scores[i * labels->names.n + l] = s;
        }
    }
    free(ids);
    free(rows);
    free(logits);
    tlm_free(m);
    return rc;
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

/* Texts for the logit check: English, a name, digits and punctuation, UTF-8, and bytes
 * the task files never hold. */
static const char *const check_texts[] = {
    "Call me Ishmael. Some years ago--never mind how long precisely--having little\n",
    "Margaret\n",
    "Re: [SAdev] 2.43 release | The figures for 12/08 are 3.5% up; see http://x.y/?a=b\n",
    "na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\n",
    "\x01\x02\x7f\x80\xfe\xff\t\t  end\n",
};
#define N_TEXTS (sizeof check_texts / sizeof *check_texts)

typedef struct {
    engine *e;
    tlm_model *m;
    ulpt_prompt *p;
    float *E, *rows, *ref, *ref_half, *got;
    uint32_t n_rows, C, V, T;
    size_t positions;
    double abs_exact, rel_exact, abs_half, rel_half, gelu_effect, abs_zero, rel_zero;
} checking;

/* 1. the model in both forms, of the same shape */
static int check_open(const options *o, checking *k)
{
    if (open_engine(o, 1, &k->e))
        return 1;
    if (tlm_load(&k->m, o->tlm))
        return fail("%s", tlm_last_error());
    const tlm_config *cfg = tlm_config_of(k->m);
    const engine_identity *id = engine_identity_of(k->e);
    k->C = id->n_embd;
    k->V = id->n_vocab;
    k->T = engine_n_ctx(k->e);
    if (k->C != cfg->width || k->V != cfg->vocab || id->n_ctx_train != cfg->max_len ||
        engine_adds_bos(k->e))
        return fail("%s and %s differ: width %u/%u, vocabulary %u/%u, context %u/%u, BOS %d/0",
                    o->gguf, o->tlm, k->C, cfg->width, k->V, cfg->vocab, id->n_ctx_train,
                    cfg->max_len, engine_adds_bos(k->e));
    printf("model: %s (\"%s\", %s): width %u, vocabulary %u, context %u\n", o->gguf, id->name,
           id->arch, k->C, k->V, id->n_ctx_train);
    return 0;
}

/* 2. llama.cpp's tokenizer maps printable ASCII and '\n' to id = byte */
static int check_vocabulary(checking *k)
{
    char ascii[96];
    int n_ascii = 0, bad = 0;
    for (int b = 0x20; b < 0x7f; b++)
        ascii[n_ascii++] = (char)b;
    ascii[n_ascii++] = '\n';
    int32_t *ids;
    uint32_t n_ids;
    if (engine_tokenize(k->e, ascii, (size_t)n_ascii, 0, &ids, &n_ids))
        return fail("%s", engine_error());
    for (int i = 0; i < n_ascii; i++)
        bad += (uint32_t)i >= n_ids || ids[i] != (unsigned char)ascii[i];
    free(ids);
    if (n_ids != (uint32_t)n_ascii || bad)
        return fail("llama.cpp tokenizes %d ASCII bytes into %u tokens, %d not id = byte",
                    n_ascii, n_ids, bad);
    printf("vocabulary: llama.cpp's tokenizer maps each of %d ASCII bytes to id = byte\n",
           n_ascii);
    return 0;
}

/* 3. the prompt rows: the given prompt, or a fresh rank-2 one */
static int check_rows(const options *o, checking *k)
{
    int rc = 1;
    char note[1024];
    k->n_rows = 16;
    if (o->prompt) {
        TRY(ulpt_prompt_load(&k->p, o->prompt));
        if (engine_identity_check(k->e, k->p, o->prompt, note, sizeof note))
            return fail("%s", engine_error());
        k->n_rows = ulpt_prompt_n_tokens(k->p);
    } else {
        ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
        po.n_tokens = k->n_rows;
        po.dim = k->C;
        po.projection_seed = po.init_seed = 7;
        TRY(ulpt_prompt_create(&k->p, &po));
    }
    const size_t T = k->T, C = k->C, V = k->V;
    k->E = malloc(sizeof(float) * k->n_rows * C);
    k->rows = malloc(sizeof(float) * T * C);
    k->ref = malloc(sizeof(float) * T * V);
    k->ref_half = malloc(sizeof(float) * T * V);
    k->got = malloc(sizeof(float) * T * V);
    if (!k->E || !k->rows || !k->ref || !k->ref_half || !k->got)
        return fail("out of memory");
    TRY(ulpt_prompt_forward(k->p, k->E, C));
    rc = 0;
out:
    return rc;
}

/* Logits of every position of text (with the rows or not) through e and through tinylm
 * (exact GELU into ref, and GELU through half floats into ref_half when half). */
static int both_forwards(checking *k, engine *e, size_t text, int with_rows, int half,
                         uint32_t *n)
{
    int32_t ids[256];
    const char *s = check_texts[text];
    uint32_t len = (uint32_t)strlen(s);
    for (uint32_t t = 0; t < len; t++)
        ids[t] = (unsigned char)s[t];
    const uint32_t nr = with_rows ? k->n_rows : 0;
    engine_seq q = { with_rows ? k->E : NULL, nr, ids, len, nr + len, NULL };
    if (engine_run(e, &q, 1, k->got))
        return fail("%s", engine_error());
    *n = tinylm_rows(k->m, k->E, nr, ids, len, k->rows);
    tlm_set_gelu_half(k->m, 0);
    if (tlm_forward(k->m, k->rows, *n, k->ref))
        return fail("%s", tlm_last_error());
    if (half) {
        tlm_set_gelu_half(k->m, 1);
        int bad = tlm_forward(k->m, k->rows, *n, k->ref_half);
        tlm_set_gelu_half(k->m, 0);
        if (bad)
            return fail("%s", tlm_last_error());
    }
    return 0;
}

/* 4. logits of every position, with and without prompt rows */
static int check_logits(checking *k)
{
    double unused = 0;
    for (int with_rows = 0; with_rows < 2; with_rows++)
        for (size_t t = 0; t < N_TEXTS; t++) {
            uint32_t n;
            if (both_forwards(k, k->e, t, with_rows, 1, &n))
                return 1;
            const size_t count = (size_t)n * k->V;
            compare(k->ref, k->got, count, k->V, &k->abs_exact, &k->rel_exact);
            compare(k->ref_half, k->got, count, k->V, &k->abs_half, &k->rel_half);
            compare(k->ref, k->ref_half, count, k->V, &k->gelu_effect, &unused);
            k->positions += n;
        }
    printf("logits at %zu positions (%zu texts, without and with %u prompt rows):\n",
           k->positions, N_TEXTS, k->n_rows);
    printf("  llama.cpp vs tinylm's C forward:                  max |diff| %.3g, "
           "relative to the row's largest logit %.3g\n", k->abs_exact, k->rel_exact);
    printf("  llama.cpp vs tinylm with GELU through half floats: max |diff| %.3g, "
           "relative %.3g\n", k->abs_half, k->rel_half);
    printf("  (the half-float GELU alone moves tinylm's logits by up to %.3g)\n", k->gelu_effect);
    return 0;
}

/* 4b. where llama.cpp's GELU table is not involved: the variant with every GELU input
 * below -10 */
static int check_gelu_zero(const options *o, checking *k)
{
    k->abs_zero = k->rel_zero = -1;
    if (!o->gelu_zero_gguf)
        return 0;
    options oz = *o;
    oz.gguf = o->gelu_zero_gguf;
    engine *z = NULL;
    if (open_engine(&oz, 1, &z))
        return 1;
    shift_mlp_bias(k->m, -GELU_ZERO_SHIFT);
    k->abs_zero = k->rel_zero = 0;
    int rc = 0;
    for (int with_rows = 0; !rc && with_rows < 2; with_rows++)
        for (size_t t = 0; !rc && t < N_TEXTS; t++) {
            uint32_t n;
            rc = both_forwards(k, z, t, with_rows, 0, &n);
            if (!rc)
                compare(k->ref, k->got, (size_t)n * k->V, k->V, &k->abs_zero, &k->rel_zero);
        }
    shift_mlp_bias(k->m, GELU_ZERO_SHIFT);
    engine_free(z);
    if (!rc)
        printf("  every GELU input below -10 (GELU exactly 0, llama.cpp's table not read):\n"
               "  llama.cpp vs tinylm's C forward:                  max |diff| %.3g, "
               "relative %.3g\n", k->abs_zero, k->rel_zero);
    return rc;
}

/* 5. prompts trained against another model are refused, naming both sides */
static int check_refusal(checking *k)
{
    const char *name = engine_identity_of(k->e)->name;
    static const char *const others[][2] = {
        { "model", "tinylm-random" },
        { "model.vocab", "fnv1a64:0123456789abcdef" },
    };
    char note[1024];
    for (size_t i = 0; i < 2; i++) {
        int bad = 0;
        if (engine_identity_to_prompt(k->e, k->p))
            return fail("%s", engine_error());
        if (ulpt_prompt_set_meta(k->p, others[i][0], others[i][1]) != ULPT_OK)
            return fail("%s", ulpt_last_error());
        bad = !engine_identity_check(k->e, k->p, "other.ulpt", note, sizeof note) ||
              !strstr(engine_error(), others[i][1]) ||
              (i == 0 && !strstr(engine_error(), name));
        if (bad)
            return fail("a prompt for %s \"%s\" was not refused as it should be (%s)",
                        others[i][0], others[i][1], engine_error());
        printf("a prompt tuned for %s \"%s\" is refused: %s\n", others[i][0], others[i][1],
               engine_error());
    }
    return 0;
}

int cmd_check(const options *o)
{
    if (!o->tlm)
        return fail("check: --tlm MODEL.tlm is required");
    checking k = { 0 };
    int rc = check_open(o, &k) || check_vocabulary(&k) || check_rows(o, &k) ||
             check_logits(&k) || check_gelu_zero(o, &k) || check_refusal(&k);
    if (!rc && o->json)
        printf("{\"positions\": %zu, \"max_abs\": %.6g, \"max_rel\": %.6g, \"max_abs_half_gelu\": "
               "%.6g, \"max_rel_half_gelu\": %.6g, \"half_gelu_effect\": %.6g, "
               "\"max_abs_gelu_zero\": %.6g, \"max_rel_gelu_zero\": %.6g}\n", k.positions,
               k.abs_exact, k.rel_exact, k.abs_half, k.rel_half, k.gelu_effect, k.abs_zero,
               k.rel_zero);
    free(k.E);
    free(k.rows);
    free(k.ref);
    free(k.ref_half);
    free(k.got);
    ulpt_prompt_free(k.p);
    tlm_free(k.m);
    engine_free(k.e);
    return rc;
}
