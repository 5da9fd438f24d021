/* grad.c -- the loss and dL/dE of a minibatch through llama_embd_grad (grad.h). */
#include "grad.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

/* sequences a graph holds at most (the context's n_seq_max) */
#define GRAD_MAX_SEQS 64

struct grad_model {
    struct llama_model *model;
    struct llama_context *ctx;
    uint32_t n_embd, max_rows;
    int add_bos;
    int32_t bos;
    uint64_t calls, sequences;
    /* a step's sequences and their buffers, grown as needed */
    struct llama_embd_grad_seq *q;
    int32_t *rows, *tpos, *ttok;
    float *grads;
    size_t q_cap, rows_cap, tpos_cap, ttok_cap, g_cap;
};

static int say(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int say(char *buf, size_t size, const char *fmt, ...)
{
    if (buf && size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, size, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* *p holds at least n elements of size bytes (kept across steps); 0 or -1 */
static int reserve(void *pp, size_t *cap, size_t n, size_t size)
{
    void **p = pp;
    if (n <= *cap)
        return 0;
    void *q = realloc(*p, n * size);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

void grad_free(grad_model *g)
{
    if (!g)
        return;
    if (g->ctx)
        llama_free(g->ctx);
    if (g->model)
        llama_model_free(g->model);
    free(g->q);
    free(g->rows);
    free(g->tpos);
    free(g->ttok);
    free(g->grads);
    free(g);
}

int grad_open(grad_model **out, const char *gguf_path, uint32_t max_rows, int n_threads,
              char *why, size_t why_size)
{
    *out = NULL;
    if (max_rows < 2)
        return say(why, why_size, "graphs of %u rows: at least 2 are needed", max_rows);
    grad_model *g = calloc(1, sizeof *g);
    if (!g)
        return say(why, why_size, "out of memory");
    struct llama_model_params mp = llama_model_default_params();
    mp.use_extra_bufts = false; /* repacked weights have no OUT_PROD */
    if (!(g->model = llama_model_load_from_file(gguf_path, mp))) {
        grad_free(g);
        return say(why, why_size, "llama.cpp cannot load %s", gguf_path);
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = max_rows;
    cp.n_seq_max = GRAD_MAX_SEQS;
    cp.kv_unified = true; /* one stream: sequences of any lengths share a ubatch */
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (n_threads > 0)
        cp.n_threads = cp.n_threads_batch = n_threads;
    if (!(g->ctx = llama_init_from_model(g->model, cp))) {
        grad_free(g);
        return say(why, why_size, "llama.cpp cannot make a context of %u rows for gradients",
                   max_rows);
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(g->model);
    g->n_embd = (uint32_t)llama_model_n_embd(g->model);
    g->max_rows = max_rows;
    g->add_bos = llama_vocab_get_add_bos(vocab) && llama_vocab_bos(vocab) != LLAMA_TOKEN_NULL;
    g->bos = llama_vocab_bos(vocab);

    /* a two-row probe: one prompt row, then token 0 predicting token 0 */
    float *row = calloc(g->n_embd, sizeof *row);
    float *grow = calloc(g->n_embd, sizeof *grow);
    const int32_t toks[2] = { LLAMA_TOKEN_NULL, 0 }, pos = 1, tok = 0;
    struct llama_embd_grad_seq s = { 2, toks, row, 1, &pos, &tok, grow, 0.0 };
    char err[512];
    int32_t st = row && grow ? llama_embd_grad(g->ctx, &s, 1, NULL, 0, err, sizeof err)
                             : LLAMA_EMBD_GRAD_FAILED;
    free(row);
    free(grow);
    if (st != LLAMA_EMBD_GRAD_OK) {
        int rc = st == LLAMA_EMBD_GRAD_UNSUPPORTED ? 1 : -1;
        say(why, why_size, "%s", row && grow ? err : "out of memory");
        grad_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

static int single_token_labels(const grad_labels *labels)
{
    for (uint32_t c = 0; c < labels->n; c++)
        if (labels->len[c] != 1)
            return 0;
    return 1;
}

uint32_t grad_seq_rows(const grad_model *g, uint32_t n_rows, uint32_t n_tokens,
                       const grad_labels *labels)
{
    uint32_t longest = 1;
    for (uint32_t c = 0; c < labels->n; c++)
        longest = labels->len[c] > longest ? labels->len[c] : longest;
    return (uint32_t)g->add_bos + n_rows + n_tokens + longest - 1;
}

/* Sequences [first, first+n) of the step in one graph each chunk, as many a graph as
 * max_rows and GRAD_MAX_SEQS allow. */
static int run_chunks(grad_model *g, size_t n, const int32_t *cand, int32_t n_cand, char *err,
                      size_t err_size)
{
    size_t start = 0;
    while (start < n) {
        size_t count = 0, rows = 0;
        while (start + count < n && count < GRAD_MAX_SEQS &&
               rows + (size_t)g->q[start + count].n_rows <= g->max_rows)
            rows += (size_t)g->q[start + count++].n_rows;
        if (count == 0)
            return say(err, err_size, "a sequence of %d rows is longer than the %u rows of a "
                       "gradient graph", g->q[start].n_rows, g->max_rows);
        char why[512];
        int32_t st = llama_embd_grad(g->ctx, g->q + start, (int32_t)count, cand, n_cand, why,
                                     sizeof why);
        if (st != LLAMA_EMBD_GRAD_OK)
            return say(err, err_size, "llama_embd_grad: %s", why);
        g->calls++;
        g->sequences += count;
        start += count;
    }
    return 0;
}

int grad_loss(grad_model *g, const float *E, uint32_t n_rows, const grad_example *ex,
              size_t m, const grad_labels *labels, float *G, double *loss, char *err,
              size_t err_size)
{
    const size_t d = g->n_embd, L = labels->n;
    if (m == 0 || n_rows == 0 || L < 2)
        return say(err, err_size, "%zu examples, %u rows, %zu labels", m, n_rows, L);
    const int single = single_token_labels(labels);
    int32_t cand[256];
    if (single) {
        if (L > sizeof cand / sizeof *cand)
            return say(err, err_size, "%zu one-token labels; at most 256", L);
        for (size_t c = 0; c < L; c++) {
            cand[c] = labels->tokens[c][0];
            for (size_t k = 0; k < c; k++)
                if (cand[k] == cand[c])
                    return say(err, err_size, "labels %zu and %zu are the same token", k, c);
        }
    }
    /* the step's sequences: an example each, or an (example, label) pair each */
    const size_t S = single ? m : m * L;
    size_t n_rows_all = 0, n_targets = 0;
    for (size_t i = 0; i < m; i++) {
        if (ex[i].label >= L)
            return say(err, err_size, "example %zu: label %u of %zu", i, ex[i].label, L);
        const size_t base = (size_t)g->add_bos + n_rows + ex[i].n_tokens;
        for (size_t c = 0; c < (single ? 1 : L); c++) {
            n_rows_all += base + (single ? 0 : labels->len[c] - 1);
            n_targets += single ? 1 : labels->len[c];
        }
    }
    if (reserve(&g->q, &g->q_cap, S, sizeof *g->q) ||
        reserve(&g->rows, &g->rows_cap, n_rows_all, sizeof *g->rows) ||
        reserve(&g->tpos, &g->tpos_cap, n_targets, sizeof *g->tpos) ||
        reserve(&g->ttok, &g->ttok_cap, n_targets, sizeof *g->ttok) ||
        reserve(&g->grads, &g->g_cap, S * n_rows * d, sizeof *g->grads))
        return say(err, err_size, "out of memory");
    size_t at = 0, tat = 0;
    for (size_t j = 0; j < S; j++) {
        const grad_example *x = &ex[single ? j : j / L];
        const size_t c = single ? x->label : j % L;
        int32_t *r = g->rows + at;
        size_t k = 0;
        if (g->add_bos)
            r[k++] = g->bos;
        for (uint32_t e = 0; e < n_rows; e++)
            r[k++] = LLAMA_TOKEN_NULL;
        memcpy(r + k, x->tokens, sizeof(int32_t) * x->n_tokens);
        k += x->n_tokens;
        const size_t last = k - 1; /* the row that predicts the label's first token */
        const uint32_t n_lab = single ? 1 : labels->len[c];
        for (uint32_t t = 0; t < n_lab; t++) {
            if (t + 1 < n_lab)
                r[k++] = labels->tokens[c][t];
            g->tpos[tat + t] = (int32_t)(last + t);
            g->ttok[tat + t] = labels->tokens[c][t];
        }
        g->q[j] = (struct llama_embd_grad_seq){ (int32_t)k, r, E, (int32_t)n_lab, g->tpos + tat,
                                                 g->ttok + tat, g->grads + j * n_rows * d, 0.0 };
        at += k;
        tat += n_lab;
    }
    if (run_chunks(g, S, single ? cand : NULL, single ? (int32_t)L : 0, err, err_size))
        return -1;

    /* the mean loss, and its gradient: with one-token labels a sequence's loss is the
     * example's; otherwise d loss / d (label c's loss) = [c == gold] - softmax(scores)_c */
    memset(G, 0, sizeof(float) * n_rows * d);
    double total = 0;
    for (size_t i = 0; i < m; i++) {
        if (single) {
            total += g->q[i].loss;
            for (size_t k = 0; k < n_rows * d; k++)
                G[k] += g->q[i].grad[k] / (float)m;
            continue;
        }
        const struct llama_embd_grad_seq *s = g->q + i * L;
        double top = -INFINITY, sum = 0;
        for (size_t c = 0; c < L; c++)
            top = fmax(top, -s[c].loss);
        for (size_t c = 0; c < L; c++)
            sum += exp(-s[c].loss - top);
        total += top + log(sum) + s[ex[i].label].loss;
        for (size_t c = 0; c < L; c++) {
            const double w = (c == ex[i].label) - exp(-s[c].loss - top) / sum;
            const float wf = (float)(w / (double)m);
            for (size_t k = 0; k < n_rows * d; k++)
                G[k] += wf * s[c].grad[k];
        }
    }
    *loss = total / (double)m;
    return 0;
}

uint64_t grad_calls(const grad_model *g)
{
    return g ? g->calls : 0;
}

uint64_t grad_sequences(const grad_model *g)
{
    return g ? g->sequences : 0;
}
