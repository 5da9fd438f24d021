/* engine.c -- llama.cpp serving ULPT prompts: an embedding batch, then a token batch, in
 * the same sequences (engine.h). */
#include "engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llama.h"

struct engine {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    struct llama_batch embd, tokens; /* embedding rows / token ids, max_seqs * max_len each */
    int32_t *last;                   /* per request: batch index of its last byte */
    uint32_t n_embd, n_vocab, max_len, max_seqs;
    char name[256];
};

static _Thread_local char error_text[512];

const char *engine_error(void) { return error_text; }

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_text, sizeof error_text, fmt, ap);
    va_end(ap);
    return -1;
}

static int verbose_log;

/* llama.cpp logs to stderr by default; keep its errors only unless asked. */
static void log_filter(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (verbose_log || level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

void engine_free(engine *e)
{
    if (!e)
        return;
    if (e->ctx)
        llama_free(e->ctx);
    if (e->model)
        llama_model_free(e->model);
    if (e->embd.pos)
        llama_batch_free(e->embd);
    if (e->tokens.pos)
        llama_batch_free(e->tokens);
    free(e->last);
    free(e);
}

int engine_open(engine **out, const char *gguf_path, int max_seqs, int n_threads, int verbose)
{
    static int backend_ready;
    verbose_log = verbose;
    llama_log_set(log_filter, NULL);
    if (!backend_ready) {
        llama_backend_init();
        backend_ready = 1;
    }
    if (max_seqs < 1 || max_seqs > 256)
        return fail("max_seqs %d is outside [1, 256]", max_seqs);
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return fail("out of memory");
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    e->model = llama_model_load_from_file(gguf_path, mp);
    if (!e->model) {
        engine_free(e);
        return fail("%s: llama.cpp could not load the model (run with --verbose for its log)",
                    gguf_path);
    }
    e->vocab = llama_model_get_vocab(e->model);
    e->n_embd = (uint32_t)llama_model_n_embd(e->model);
    e->n_vocab = (uint32_t)llama_vocab_n_tokens(e->vocab);
    e->max_len = (uint32_t)llama_model_n_ctx_train(e->model);
    e->max_seqs = (uint32_t)max_seqs;
    if (llama_model_meta_val_str(e->model, "general.name", e->name, sizeof e->name) < 0)
        e->name[0] = '\0';
    if (e->n_vocab < 256) {
        fail("%s: a vocabulary of %u tokens cannot hold the 256 bytes", gguf_path, e->n_vocab);
        engine_free(e);
        return -1;
    }

    const uint32_t cap = e->max_len * e->max_seqs;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cap;            /* one stream of max_len cells per sequence */
    cp.n_batch = cap;          /* a whole run is one llama_decode per batch kind */
    cp.n_ubatch = cap;
    cp.n_seq_max = e->max_seqs;
    cp.kv_unified = false;     /* one stream per sequence: each attends to its own cells */
    cp.type_k = GGML_TYPE_F32; /* the default F16 cache would round K and V */
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (n_threads <= 0)
        n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    cp.n_threads = cp.n_threads_batch = n_threads > 0 ? n_threads : 1;
    cp.no_perf = true;
    e->ctx = llama_init_from_model(e->model, cp);
    if (!e->ctx) {
        engine_free(e);
        return fail("%s: llama.cpp could not create a context for %d sequences", gguf_path,
                    max_seqs);
    }
    e->embd = llama_batch_init((int32_t)cap, (int32_t)e->n_embd, 1);
    e->tokens = llama_batch_init((int32_t)cap, 0, 1);
    e->last = malloc(sizeof *e->last * e->max_seqs);
    if (!e->embd.pos || !e->tokens.pos || !e->last) {
        engine_free(e);
        return fail("out of memory");
    }
    *out = e;
    return 0;
}

uint32_t engine_n_embd(const engine *e) { return e->n_embd; }
uint32_t engine_n_vocab(const engine *e) { return e->n_vocab; }
uint32_t engine_max_len(const engine *e) { return e->max_len; }
uint32_t engine_max_seqs(const engine *e) { return e->max_seqs; }
const char *engine_model_name(const engine *e) { return e->name; }

static void put(struct llama_batch *b, llama_pos pos, llama_seq_id seq, int want_logits)
{
    int32_t k = b->n_tokens++;
    b->pos[k] = pos;
    b->n_seq_id[k] = 1;
    b->seq_id[k][0] = seq;
    b->logits[k] = (int8_t)want_logits;
}

int engine_run(engine *e, const engine_request *req, int n, float *logits, float *all_logits)
{
    if (n < 1 || (uint32_t)n > e->max_seqs)
        return fail("%d requests at once; this context holds 1 to %u", n, e->max_seqs);
    if (all_logits && n != 1)
        return fail("all positions' logits are for one request at a time");
    for (int i = 0; i < n; i++) {
        if (req[i].len < 1 || (req[i].n_rows && !req[i].rows) ||
            req[i].n_rows + (uint64_t)req[i].len > e->max_len)
            return fail("request %d: %u prompt rows and %u bytes do not fit a context of %u",
                        i, req[i].n_rows, req[i].len, e->max_len);
    }
    const size_t V = e->n_vocab, d = e->n_embd;
    llama_memory_clear(llama_get_memory(e->ctx), true);

    /* 1. every request's prompt rows: one embedding batch, positions 0 .. n_rows-1 */
    struct llama_batch *b = &e->embd;
    b->n_tokens = 0;
    for (int i = 0; i < n; i++) {
        for (uint32_t t = 0; t < req[i].n_rows; t++) {
            memcpy(b->embd + (size_t)b->n_tokens * d, req[i].rows + t * d, sizeof(float) * d);
            put(b, (llama_pos)t, i, all_logits != NULL);
        }
    }
    if (b->n_tokens) {
        int rc = llama_decode(e->ctx, *b);
        if (rc)
            return fail("llama_decode of %d prompt rows failed (%d)", b->n_tokens, rc);
        if (all_logits)
            for (int32_t k = 0; k < b->n_tokens; k++)
                memcpy(all_logits + k * V, llama_get_logits_ith(e->ctx, k), sizeof(float) * V);
    }

    /* 2. every request's bytes: one token batch, continuing each sequence */
    b = &e->tokens;
    b->n_tokens = 0;
    for (int i = 0; i < n; i++) {
        for (uint32_t t = 0; t < req[i].len; t++) {
            b->token[b->n_tokens] = req[i].text[t];
            int is_last = t + 1 == req[i].len;
            if (is_last)
                e->last[i] = b->n_tokens;
            put(b, (llama_pos)(req[i].n_rows + t), i, is_last || all_logits != NULL);
        }
    }
    int rc = llama_decode(e->ctx, *b);
    if (rc)
        return fail("llama_decode of %d bytes failed (%d)", b->n_tokens, rc);
    for (int i = 0; i < n; i++) {
        const float *l = llama_get_logits_ith(e->ctx, e->last[i]);
        if (!l)
            return fail("llama.cpp returned no logits for request %d", i);
        memcpy(logits + i * V, l, sizeof(float) * V);
    }
    if (all_logits)
        for (int32_t k = 0; k < b->n_tokens; k++)
            memcpy(all_logits + (req[0].n_rows + (size_t)k) * V, llama_get_logits_ith(e->ctx, k),
                   sizeof(float) * V);
    return 0;
}

int engine_tokenize(engine *e, const uint8_t *text, int len, int32_t *ids, int *n_ids)
{
    int32_t got = llama_tokenize(e->vocab, (const char *)text, len, ids, len, false, false);
    if (got < 0)
        return fail("llama_tokenize needs room for %d tokens, more than the %d bytes", -got, len);
    *n_ids = got;
    return 0;
}
