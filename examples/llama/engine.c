/* engine.c -- llama.cpp hosting libulpt prompts: load a model and its identity, tokenize,
 * decode prompt rows in front of token sequences, score labels (engine.h). */
#include "engine.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "llama.h"

struct engine {
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    struct llama_batch embd, tokens; /* embedding rows / token ids, max_seqs * n_ctx each */
    engine_identity id;
    uint32_t n_ctx, max_seqs;
    uint32_t n_embd_inp; /* an embedding batch's row: n_embd, or wider (deepstack inputs) */
    uint32_t n_pos;      /* positions per embedding row: 4 for M-RoPE models, else 1 */
    int add_bos;
    llama_token bos;
};

static _Thread_local char error_text[1024];

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

static void backend_init(int verbose)
{
    static int ready;
    verbose_log = verbose;
    llama_log_set(log_filter, NULL);
    if (!ready) {
        llama_backend_init();
        ready = 1;
    }
}

/* ---- identity ---------------------------------------------------------------------- */

/* FNV-1a, 64 bits: a fingerprint, not a defence against forgery. */
static void fnv(uint64_t *h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        *h ^= p[i];
        *h *= 0x100000001b3ULL;
    }
}

/* A length, then the bytes: no two different sequences of fields hash alike by shifting
 * bytes from one field to the next. */
static void fnv_field(uint64_t *h, const void *data, size_t n)
{
    uint64_t len = n;
    fnv(h, &len, sizeof len);
    fnv(h, data, n);
}

static size_t gguf_scalar_size(enum gguf_type t)
{
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

static int by_key(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The vocabulary fingerprint: every "tokenizer.ggml.*" key of the file (tokenizer type,
 * pre-tokenizer, tokens, types, scores, merges, special ids, BOS/EOS rules), sorted by
 * name, each as name, type and value.  The chat template is not part of it.  A
 * quantization copies these keys, so it keeps the fingerprint. */
static int vocab_fingerprint(const char *path, char out[32])
{
    struct gguf_init_params gp = { .no_alloc = true, .ctx = NULL };
    struct gguf_context *g = gguf_init_from_file(path, gp);
    if (!g)
        return fail("%s: not a GGUF file gguf can read", path);
    const int64_t n_kv = gguf_get_n_kv(g);
    const char **keys = malloc(sizeof *keys * (size_t)(n_kv > 0 ? n_kv : 1));
    if (!keys) {
        gguf_free(g);
        return fail("out of memory");
    }
    size_t n = 0;
    for (int64_t k = 0; k < n_kv; k++)
        if (!strncmp(gguf_get_key(g, k), "tokenizer.ggml.", 15))
            keys[n++] = gguf_get_key(g, k);
    qsort(keys, n, sizeof *keys, by_key);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        const int64_t k = gguf_find_key(g, keys[i]);
        const enum gguf_type t = gguf_get_kv_type(g, k);
        const int32_t ti = t;
        fnv_field(&h, keys[i], strlen(keys[i]));
        fnv(&h, &ti, sizeof ti);
        if (t == GGUF_TYPE_STRING) {
            const char *s = gguf_get_val_str(g, k);
            fnv_field(&h, s, strlen(s));
        } else if (t == GGUF_TYPE_ARRAY) {
            const enum gguf_type at = gguf_get_arr_type(g, k);
            const size_t m = gguf_get_arr_n(g, k);
            const int32_t ati = at;
            fnv(&h, &ati, sizeof ati);
            if (at == GGUF_TYPE_STRING) {
                for (size_t j = 0; j < m; j++) {
                    const char *s = gguf_get_arr_str(g, k, j);
                    fnv_field(&h, s, strlen(s));
                }
            } else {
                fnv_field(&h, gguf_get_arr_data(g, k), m * gguf_scalar_size(at));
            }
        } else {
            fnv_field(&h, gguf_get_val_data(g, k), gguf_scalar_size(t));
        }
    }
    free(keys);
    gguf_free(g);
    snprintf(out, 32, "fnv1a64:%016llx", (unsigned long long)h);
    return 0;
}

/* llama.cpp's names of its file types (llama_ftype), as `llama-quantize` spells them. */
static const struct {
    enum llama_ftype t;
    const char *name;
} ftypes[] = {
    { LLAMA_FTYPE_ALL_F32, "F32" },          { LLAMA_FTYPE_MOSTLY_F16, "F16" },
    { LLAMA_FTYPE_MOSTLY_BF16, "BF16" },     { LLAMA_FTYPE_MOSTLY_Q8_0, "Q8_0" },
    { LLAMA_FTYPE_MOSTLY_Q4_0, "Q4_0" },     { LLAMA_FTYPE_MOSTLY_Q4_1, "Q4_1" },
    { LLAMA_FTYPE_MOSTLY_Q5_0, "Q5_0" },     { LLAMA_FTYPE_MOSTLY_Q5_1, "Q5_1" },
    { LLAMA_FTYPE_MOSTLY_Q2_K, "Q2_K" },     { LLAMA_FTYPE_MOSTLY_Q3_K_S, "Q3_K_S" },
    { LLAMA_FTYPE_MOSTLY_Q3_K_M, "Q3_K_M" }, { LLAMA_FTYPE_MOSTLY_Q3_K_L, "Q3_K_L" },
    { LLAMA_FTYPE_MOSTLY_Q4_K_S, "Q4_K_S" }, { LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q4_K_M" },
    { LLAMA_FTYPE_MOSTLY_Q5_K_S, "Q5_K_S" }, { LLAMA_FTYPE_MOSTLY_Q5_K_M, "Q5_K_M" },
    { LLAMA_FTYPE_MOSTLY_Q6_K, "Q6_K" },
};

const char *engine_ftype_name(int ftype)
{
    for (size_t i = 0; i < sizeof ftypes / sizeof *ftypes; i++)
        if ((int)ftypes[i].t == ftype)
            return ftypes[i].name;
    return NULL;
}

int engine_ftype_of(const char *name)
{
    for (size_t i = 0; i < sizeof ftypes / sizeof *ftypes; i++)
        if (!strcmp(ftypes[i].name, name))
            return (int)ftypes[i].t;
    return -1;
}

int engine_quantize(const char *in, const char *out, const char *type, int n_threads)
{
    const int ft = engine_ftype_of(type);
    if (ft < 0)
        return fail("unknown weight type \"%s\" (F32, F16, Q8_0, Q4_0, Q4_K_M, ...)", type);
    size_t n = strlen(out) + 8;
    char *tmp = malloc(n);
    if (!tmp)
        return fail("out of memory");
    snprintf(tmp, n, "%s.part", out);
    backend_init(verbose_log);
    struct llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = (enum llama_ftype)ft;
    qp.nthread = n_threads;
    int rc = 0;
    if (llama_model_quantize(in, tmp, &qp) != 0)
        rc = fail("llama_model_quantize of %s to %s failed (run with --verbose for its log)",
                  in, type);
    else if (rename(tmp, out) != 0)
        rc = fail("%s: cannot rename into place", out);
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}

static void read_identity(engine *e)
{
    engine_identity *id = &e->id;
    if (llama_model_meta_val_str(e->model, "general.architecture", id->arch, sizeof id->arch) < 0)
        snprintf(id->arch, sizeof id->arch, "unknown");
    if (llama_model_meta_val_str(e->model, "general.name", id->name, sizeof id->name) < 0)
        id->name[0] = '\0';
    const int ft = (int)llama_model_ftype(e->model) & ~LLAMA_FTYPE_GUESSED;
    const char *ftn = engine_ftype_name(ft);
    if (ftn)
        snprintf(id->weights, sizeof id->weights, "%s", ftn);
    else
        snprintf(id->weights, sizeof id->weights, "ftype %d", ft);
    id->n_embd = (uint32_t)llama_model_n_embd(e->model);
    id->n_vocab = (uint32_t)llama_vocab_n_tokens(e->vocab);
    id->n_ctx_train = (uint32_t)llama_model_n_ctx_train(e->model);
}

/* ---- open and close ---------------------------------------------------------------- */

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
    free(e);
}

static int make_context(engine *e, const engine_options *o, const char *path)
{
    const uint32_t cap = e->n_ctx * e->max_seqs;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cap;            /* one stream of n_ctx cells per sequence */
    cp.n_batch = cap;          /* a whole run is one llama_decode per batch kind */
    cp.n_ubatch = cap;
    cp.n_seq_max = e->max_seqs;
    cp.kv_unified = false;     /* one stream per sequence: each attends to its own cells */
    cp.type_k = GGML_TYPE_F32; /* the default F16 cache would round K and V */
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    int threads = o->n_threads > 0 ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    cp.n_threads = cp.n_threads_batch = threads > 0 ? threads : 1;
    cp.no_perf = true;
    e->ctx = llama_init_from_model(e->model, cp);
    if (!e->ctx)
        return fail("%s: llama.cpp could not create a context of %u sequences of %u cells",
                    path, e->max_seqs, e->n_ctx);
    e->embd = llama_batch_init((int32_t)cap, (int32_t)e->n_embd_inp, 1);
    e->tokens = llama_batch_init((int32_t)cap, 0, 1);
    if (!e->embd.pos || !e->tokens.pos)
        return fail("out of memory");
    if (e->n_pos > 1) { /* M-RoPE reads n_pos sections of positions from an embedding batch;
                           llama_batch_init's arrays are malloc'ed, llama_batch_free frees */
        llama_pos *pos = realloc(e->embd.pos, sizeof *pos * cap * e->n_pos);
        if (!pos)
            return fail("out of memory");
        e->embd.pos = pos;
    }
    return 0;
}

int engine_open(engine **out, const char *gguf_path, const engine_options *opts)
{
    const engine_options defaults = ENGINE_OPTIONS_INIT;
    const engine_options *o = opts ? opts : &defaults;
    backend_init(o->verbose);
    if (o->max_seqs < 1 || o->max_seqs > 256)
        return fail("max_seqs %d is outside [1, 256]", o->max_seqs);
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return fail("out of memory");
    if (vocab_fingerprint(gguf_path, e->id.vocab)) {
        free(e);
        return -1;
    }
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    e->model = llama_model_load_from_file(gguf_path, mp);
    if (!e->model) {
        engine_free(e);
        return fail("%s: llama.cpp could not load the model (run with --verbose for its log)",
                    gguf_path);
    }
    e->vocab = llama_model_get_vocab(e->model);
    read_identity(e);
    /* A prompt row is as wide as a token's embedding (n_embd); where llama.cpp's input rows
     * are wider, a token's row is its embedding padded with zeros, and so is a prompt's. */
    e->n_embd_inp = (uint32_t)llama_model_n_embd_inp(e->model);
    if (e->n_embd_inp < e->id.n_embd)
        e->n_embd_inp = e->id.n_embd;
    const enum llama_rope_type rt = llama_model_rope_type(e->model);
    e->n_pos = rt == LLAMA_ROPE_TYPE_MROPE || rt == LLAMA_ROPE_TYPE_IMROPE ? 4 : 1;
    e->add_bos = llama_vocab_get_add_bos(e->vocab);
    e->bos = llama_vocab_bos(e->vocab);
    if (e->add_bos && e->bos == LLAMA_TOKEN_NULL)
        e->add_bos = 0;
    e->max_seqs = (uint32_t)o->max_seqs;
    e->n_ctx = o->n_ctx ? o->n_ctx : e->id.n_ctx_train < 512 ? e->id.n_ctx_train : 512;
    if (e->n_ctx < 2 || e->n_ctx > e->id.n_ctx_train) {
        fail("%s: %u cells per sequence; the model is trained for 2 to %u", gguf_path,
             e->n_ctx, e->id.n_ctx_train);
        engine_free(e);
        return -1;
    }
    if (make_context(e, o, gguf_path)) {
        engine_free(e);
        return -1;
    }
    *out = e;
    return 0;
}

const engine_identity *engine_identity_of(const engine *e) { return &e->id; }
uint32_t engine_n_ctx(const engine *e) { return e->n_ctx; }
uint32_t engine_max_seqs(const engine *e) { return e->max_seqs; }
int engine_adds_bos(const engine *e) { return e->add_bos; }

/* ---- tokens ------------------------------------------------------------------------ */

/* text as the user message of the model's chat template, ending where the answer starts;
 * *out is malloc'ed. */
static int chat_format(engine *e, const char *text, size_t len, char **out, int32_t *out_len)
{
    const char *tmpl = llama_model_chat_template(e->model, NULL);
    if (!tmpl)
        return fail("the model has no chat template (tokenizer.chat_template)");
    char *msg = malloc(len + 1);
    if (!msg)
        return fail("out of memory");
    memcpy(msg, text, len);
    msg[len] = '\0';
    struct llama_chat_message m = { "user", msg };
    int32_t cap = (int32_t)(2 * len + 256), got;
    char *buf = NULL;
    for (;;) {
        char *more = realloc(buf, (size_t)cap);
        if (!more) {
            free(buf);
            free(msg);
            return fail("out of memory");
        }
        buf = more;
        got = llama_chat_apply_template(tmpl, &m, 1, true, buf, cap);
        if (got < cap)
            break;
        cap = got + 1;
    }
    free(msg);
    if (got < 0) {
        free(buf);
        return fail("llama.cpp does not know the model's chat template");
    }
    *out = buf;
    *out_len = got;
    return 0;
}

int engine_tokenize(engine *e, const char *text, size_t len, int chat, int32_t **ids,
                    uint32_t *n_ids)
{
    char *formatted = NULL;
    int32_t flen = (int32_t)len;
    if (len > (size_t)INT32_MAX / 2)
        return fail("a text of %zu bytes is too long to tokenize", len);
    if (chat) {
        if (chat_format(e, text, len, &formatted, &flen))
            return -1;
        text = formatted;
    }
    int32_t cap = flen + 8, got;
    int32_t *v = NULL;
    for (;;) {
        int32_t *more = realloc(v, sizeof *v * (size_t)cap);
        if (!more) {
            free(v);
            free(formatted);
            return fail("out of memory");
        }
        v = more;
        got = llama_tokenize(e->vocab, text, flen, v, cap, false, chat != 0);
        if (got >= 0 || got == INT32_MIN)
            break;
        cap = -got;
    }
    free(formatted);
    if (got < 0) {
        free(v);
        return fail("llama.cpp could not tokenize a text of %zu bytes", len);
    }
    /* a chat template that writes BOS itself: the sequence has it already */
    if (chat && e->add_bos && got > 0 && v[0] == e->bos) {
        memmove(v, v + 1, sizeof *v * (size_t)(got - 1));
        got--;
    }
    *ids = v;
    *n_ids = (uint32_t)got;
    return 0;
}

/* ---- decoding ---------------------------------------------------------------------- */

uint32_t engine_seq_len(const engine *e, const engine_seq *s)
{
    return (uint32_t)e->add_bos + s->n_rows + s->n_tokens;
}

static void put(struct llama_batch *b, llama_pos pos, llama_seq_id seq, int want_logits)
{
    int32_t k = b->n_tokens++;
    b->pos[k] = pos;
    b->n_seq_id[k] = 1;
    b->seq_id[k][0] = seq;
    b->logits[k] = (int8_t)want_logits;
}

/* Where sequence i's wanted logits start in the output, counted in rows. */
static size_t out_start(const engine_seq *s, int i)
{
    size_t at = 0;
    for (int j = 0; j < i; j++)
        at += s[j].n_out;
    return at;
}

/* One llama_decode of batch b; copies the logits it was asked for to their rows of out,
 * where wants[k] is batch entry k's output row or -1. */
static int decode(engine *e, struct llama_batch *b, const int64_t *rows_of, float *out,
                  const char *what)
{
    if (!b->n_tokens)
        return 0;
    int rc = llama_decode(e->ctx, *b);
    if (rc)
        return fail("llama_decode of %d %s failed (%d)", b->n_tokens, what, rc);
    const size_t V = e->id.n_vocab;
    for (int32_t k = 0; k < b->n_tokens; k++) {
        if (rows_of[k] < 0)
            continue;
        const float *l = llama_get_logits_ith(e->ctx, k);
        if (!l)
            return fail("llama.cpp returned no logits for %s entry %d", what, k);
        memcpy(out + (size_t)rows_of[k] * V, l, sizeof(float) * V);
    }
    return 0;
}

int engine_run(engine *e, const engine_seq *seqs, int n, float *logits)
{
    if (n < 1 || (uint32_t)n > e->max_seqs)
        return fail("%d sequences at once; this context holds 1 to %u", n, e->max_seqs);
    for (int i = 0; i < n; i++) {
        const engine_seq *s = &seqs[i];
        const uint32_t len = engine_seq_len(e, s);
        if ((s->n_rows && !s->rows) || (s->n_tokens && !s->tokens) || len < 1 ||
            s->n_out < 1 || s->n_out > len)
            return fail("sequence %d: %u rows, %u tokens, %u outputs make no sequence", i,
                        s->n_rows, s->n_tokens, s->n_out);
        if (len > e->n_ctx)
            return fail("sequence %d: %u positions do not fit the %u cells of a sequence", i,
                        len, e->n_ctx);
        for (uint32_t t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] < 0 || (uint32_t)s->tokens[t] >= e->id.n_vocab)
                return fail("sequence %d: token %d is not in the vocabulary of %u", i,
                            s->tokens[t], e->id.n_vocab);
    }
    const size_t C = e->id.n_embd;
    const size_t cap = (size_t)e->n_ctx * e->max_seqs;
    int64_t *rows_of = malloc(sizeof *rows_of * cap);
    if (!rows_of)
        return fail("out of memory");
    llama_memory_clear(llama_get_memory(e->ctx), true);
    int rc = 0;

    /* 1. BOS of every sequence, position 0 */
    struct llama_batch *b = &e->tokens;
    b->n_tokens = 0;
    for (int i = 0; e->add_bos && i < n; i++) {
        const uint32_t len = engine_seq_len(e, &seqs[i]);
        const int want = len <= seqs[i].n_out;
        rows_of[b->n_tokens] = want ? (int64_t)out_start(seqs, i) : -1;
        b->token[b->n_tokens] = e->bos;
        put(b, 0, i, want);
    }
    rc = decode(e, b, rows_of, logits, "BOS tokens");

    /* 2. every sequence's prompt rows: one embedding batch */
    b = &e->embd;
    b->n_tokens = 0;
    for (int i = 0; !rc && i < n; i++) {
        const engine_seq *s = &seqs[i];
        const uint32_t len = engine_seq_len(e, s), first_out = len - s->n_out;
        for (uint32_t t = 0; t < s->n_rows; t++) {
            const uint32_t pos = (uint32_t)e->add_bos + t;
            const int want = pos >= first_out;
            rows_of[b->n_tokens] = want ? (int64_t)(out_start(seqs, i) + pos - first_out) : -1;
            float *row = b->embd + (size_t)b->n_tokens * e->n_embd_inp;
            memcpy(row, s->rows + t * C, sizeof(float) * C);
            memset(row + C, 0, sizeof(float) * (e->n_embd_inp - C));
            put(b, (llama_pos)pos, i, want);
        }
    }
    /* M-RoPE: a row's position in the first three sections, 0 in the fourth, as llama.cpp
     * gives a text token (llm_graph_input_pos) */
    const size_t n_rows = (size_t)b->n_tokens;
    for (uint32_t j = 1; j < e->n_pos; j++)
        for (size_t k = 0; k < n_rows; k++)
            b->pos[j * n_rows + k] = j < 3 ? b->pos[k] : 0;
    if (!rc)
        rc = decode(e, b, rows_of, logits, "prompt rows");

    /* 3. every sequence's tokens, continuing it */
    b = &e->tokens;
    b->n_tokens = 0;
    for (int i = 0; !rc && i < n; i++) {
        const engine_seq *s = &seqs[i];
        const uint32_t len = engine_seq_len(e, s), first_out = len - s->n_out;
        for (uint32_t t = 0; t < s->n_tokens; t++) {
            const uint32_t pos = (uint32_t)e->add_bos + s->n_rows + t;
            const int want = pos >= first_out;
            rows_of[b->n_tokens] = want ? (int64_t)(out_start(seqs, i) + pos - first_out) : -1;
            b->token[b->n_tokens] = s->tokens[t];
            put(b, (llama_pos)pos, i, want);
        }
    }
    if (!rc)
        rc = decode(e, b, rows_of, logits, "tokens");
    free(rows_of);
    return rc;
}

/* ---- labels ------------------------------------------------------------------------ */

/* log softmax(l)[k], in double */
static double log_prob(const float *l, size_t V, int32_t k)
{
    double top = l[0];
    for (size_t j = 1; j < V; j++)
        top = fmax(top, l[j]);
    double sum = 0;
    for (size_t j = 0; j < V; j++)
        sum += exp((double)l[j] - top);
    return (double)l[k] - top - log(sum);
}

static int check_labels(const engine *e, const engine_labels *lab, uint32_t *longest)
{
    if (!lab || lab->n < 1)
        return fail("no labels to score");
    for (uint32_t c = 0; c < lab->n; c++) {
        if (lab->len[c] < 1)
            return fail("label %u has no tokens", c);
        for (uint32_t k = 0; k < lab->len[c]; k++)
            if (lab->tokens[c][k] < 0 || (uint32_t)lab->tokens[c][k] >= e->id.n_vocab)
                return fail("label %u: token %d is not in the vocabulary", c, lab->tokens[c][k]);
        if (lab->len[c] > *longest)
            *longest = lab->len[c];
    }
    return 0;
}

static const engine_labels *labels_of(const engine_seq *s, const engine_labels *call)
{
    return s->labels ? s->labels : call;
}

/* One decoded sequence of a scoring: request i with label c's tokens but its last
 * (c < 0: the request alone, for single-token labels). */
typedef struct {
    size_t i;
    int64_t c;
} scored;

/* Scoring: each item is decoded as its own sequence; an item (i, c) gives label c its
 * summed log-probability from the last len positions; an item (i, -1) gives every label
 * of request i its one token's log-probability at the last position. */
static int score_items(engine *e, const engine_seq *seqs, const scored *items, size_t total,
                       const engine_labels *call, double *scores, float *logits,
                       engine_seq *tmp, int32_t *toks)
{
    const size_t V = e->id.n_vocab, per = e->n_ctx, stride = call->n;
    for (size_t start = 0; start < total; start += e->max_seqs) {
        const int m = (int)(total - start < e->max_seqs ? total - start : e->max_seqs);
        for (int j = 0; j < m; j++) {
            const scored *it = &items[start + (size_t)j];
            const engine_seq *s = &seqs[it->i];
            tmp[j] = *s;
            tmp[j].n_out = 1;
            if (it->c < 0)
                continue;
            const engine_labels *lab = labels_of(s, call);
            const uint32_t L = lab->len[it->c];
            int32_t *t = toks + (size_t)j * per;
            memcpy(t, s->tokens, sizeof *t * s->n_tokens);
            memcpy(t + s->n_tokens, lab->tokens[it->c], sizeof *t * (L - 1));
            tmp[j].tokens = t;
            tmp[j].n_tokens = s->n_tokens + L - 1;
            tmp[j].n_out = L;
        }
        if (engine_run(e, tmp, m, logits))
            return -1;
        size_t row = 0;
        for (int j = 0; j < m; j++) {
            const scored *it = &items[start + (size_t)j];
            const engine_labels *lab = labels_of(&seqs[it->i], call);
            double *out = scores + it->i * stride;
            if (it->c < 0) {
                for (uint32_t c = 0; c < lab->n; c++)
                    out[c] = log_prob(logits + row * V, V, lab->tokens[c][0]);
                row++;
                continue;
            }
            double s = 0;
            for (uint32_t k = 0; k < lab->len[it->c]; k++)
                s += log_prob(logits + (row + k) * V, V, lab->tokens[it->c][k]);
            row += lab->len[it->c];
            out[it->c] = s;
        }
    }
    return 0;
}

int engine_score(engine *e, const engine_seq *seqs, size_t n, const engine_labels *labels,
                 double *scores)
{
    uint32_t call_longest = 0, longest;
    size_t total = 0;
    if (check_labels(e, labels, &call_longest))
        return -1;
    longest = call_longest;
    for (size_t i = 0; i < n; i++) {
        const engine_labels *lab = labels_of(&seqs[i], labels);
        uint32_t own = call_longest;
        if (lab != labels) {
            own = 0;
            if (check_labels(e, lab, &own)) {
                char why[sizeof error_text];
                snprintf(why, sizeof why, "%s", error_text);
                return fail("sequence %zu: %s", i, why);
            }
        }
        if (lab->n > labels->n)
            return fail("sequence %zu has %u labels, more than the call's %u", i, lab->n,
                        labels->n);
        if (engine_seq_len(e, &seqs[i]) + own - 1 > e->n_ctx)
            return fail("sequence %zu: %u positions and a label of %u tokens do not fit the "
                        "%u cells of a sequence", i, engine_seq_len(e, &seqs[i]), own, e->n_ctx);
        longest = own > longest ? own : longest;
    }
    /* the items: one per request when all its labels are single tokens, else one per label */
    for (size_t i = 0; i < n; i++) {
        const engine_labels *lab = labels_of(&seqs[i], labels);
        uint32_t most = 0;
        for (uint32_t c = 0; c < lab->n; c++)
            most = lab->len[c] > most ? lab->len[c] : most;
        total += most == 1 ? 1 : lab->n;
    }
    const size_t V = e->id.n_vocab;
    scored *items = malloc(sizeof *items * total);
    float *logits = malloc(sizeof(float) * V * e->max_seqs * longest);
    engine_seq *tmp = malloc(sizeof *tmp * e->max_seqs);
    int32_t *toks = malloc(sizeof *toks * e->max_seqs * e->n_ctx);
    int rc;
    if (!items || !logits || !tmp || !toks) {
        rc = fail("out of memory");
    } else {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            const engine_labels *lab = labels_of(&seqs[i], labels);
            uint32_t most = 0;
            for (uint32_t c = 0; c < lab->n; c++)
                most = lab->len[c] > most ? lab->len[c] : most;
            if (most == 1)
                items[k++] = (scored){ i, -1 };
            else
                for (uint32_t c = 0; c < lab->n; c++)
                    items[k++] = (scored){ i, c };
        }
        rc = score_items(e, seqs, items, total, labels, scores, logits, tmp, toks);
    }
    free(items);
    free(logits);
    free(tmp);
    free(toks);
    return rc;
}

int engine_serve_bank(engine *e, const ulpt_bank *bank, const ulpt_bank_id *ids,
                      const engine_seq *seqs, size_t n, const engine_labels *labels,
                      double *scores)
{
    const size_t C = e->id.n_embd, chunk = e->max_seqs;
    uint32_t max_rows = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t r;
        if (ulpt_bank_n_tokens(bank, ids[i], &r) != ULPT_OK)
            return fail("request %zu: %s", i, ulpt_last_error());
        if (r > max_rows)
            max_rows = r;
    }
    float *rows = malloc(sizeof(float) * chunk * (max_rows ? max_rows : 1) * C);
    ulpt_bank_request *mat = malloc(sizeof *mat * chunk);
    engine_seq *s = malloc(sizeof *s * chunk);
    int rc = 0;
    if (!rows || !mat || !s)
        rc = fail("out of memory");
    for (size_t start = 0; !rc && start < n; start += chunk) {
        const size_t m = n - start < chunk ? n - start : chunk;
        for (size_t j = 0; j < m; j++) {
            float *E = rows + j * max_rows * C;
            mat[j] = (ulpt_bank_request){ ids[start + j], E, C };
            s[j] = seqs[start + j];
            s[j].rows = E;
            ulpt_bank_n_tokens(bank, ids[start + j], &s[j].n_rows);
        }
        if (ulpt_bank_materialise(bank, mat, m, ULPT_DTYPE_F32) != ULPT_OK)
            rc = fail("%s", ulpt_last_error());
        else
            rc = engine_score(e, s, m, labels, scores + start * labels->n);
    }
    free(rows);
    free(mat);
    free(s);
    return rc;
}

/* ---- identity in a prompt's metadata ----------------------------------------------- */

int engine_identity_to_prompt(const engine *e, ulpt_prompt *p)
{
    const engine_identity *id = &e->id;
    char width[16], vocab_n[16];
    snprintf(width, sizeof width, "%u", id->n_embd);
    snprintf(vocab_n, sizeof vocab_n, "%u", id->n_vocab);
    const char *kv[][2] = {
        { "model", id->name },           { "model.arch", id->arch },
        { "model.n_embd", width },       { "model.n_vocab", vocab_n },
        { "model.vocab", id->vocab },    { "model.weights", id->weights },
    };
    for (size_t i = 0; i < sizeof kv / sizeof *kv; i++)
        if (ulpt_prompt_set_meta(p, kv[i][0], kv[i][1]) != ULPT_OK)
            return fail("%s", ulpt_last_error());
    return 0;
}

int engine_identity_check(const engine *e, const ulpt_prompt *p, const char *path, char *note,
                          size_t note_size)
{
    const engine_identity *id = &e->id;
    char width[16], vocab_n[16];
    snprintf(width, sizeof width, "%u", id->n_embd);
    snprintf(vocab_n, sizeof vocab_n, "%u", id->n_vocab);
    note[0] = '\0';
    const char *name = ulpt_prompt_get_meta(p, "model");
    if (!name)
        return fail("%s has no \"model\" metadata: it does not say which model it was trained "
                    "against", path);
    /* the recorded keys first: an architecture or vocabulary says more than a width */
    const char *want[][2] = {
        { "model.arch", id->arch },   { "model.n_embd", width },
        { "model.vocab", id->vocab }, { "model.n_vocab", vocab_n },
        { "model", id->name },
    };
    int has_keys = 0;
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const char *v = ulpt_prompt_get_meta(p, want[i][0]);
        has_keys += v && strcmp(want[i][0], "model");
        if (v && strcmp(v, want[i][1]))
            return fail("%s was trained against %s \"%s\"; this model has %s \"%s\"", path,
                        want[i][0], v, want[i][0], want[i][1]);
    }
    if (ulpt_prompt_dim(p) != id->n_embd)
        return fail("%s has rows of width %u; this model (\"%s\") is %u wide", path,
                    ulpt_prompt_dim(p), id->name, id->n_embd);
    if (!has_keys) {
        snprintf(note, note_size, "%s carries only a model name (\"%s\"): matched by name and "
                 "width, the vocabulary unchecked", path, name);
        return 0;
    }
    if (!ulpt_prompt_get_meta(p, "model.vocab"))
        return fail("%s names no vocabulary fingerprint (model.vocab)", path);
    const char *w = ulpt_prompt_get_meta(p, "model.weights");
    if (w && strcmp(w, id->weights))
        snprintf(note, note_size, "%s was trained against %s weights; this file's are %s (a "
                 "quantization of the same model: answers may differ slightly)", path, w,
                 id->weights);
    return 0;
}
