/* llama_grad: llama_embd_grad (the project's llama.cpp patch) from the command line, so
 * tests/llama/test_grad.py can hold its losses and gradients against PyTorch autograd;
 * and llama_model_quantize, to make the quantized files it tests.
 *
 *     llama_grad MODEL.gguf IN OUT [--threads N] [--split] [--ubatch N] [--extra-bufts]
 *                [--repeat R]
 *     llama_grad --quantize IN.gguf OUT.gguf f16|q8_0|q4_0|q4_k_m
 *
 * IN (little-endian): int32 n_seqs, int32 n_cand, n_cand int32 classes (0: the whole
 * vocabulary); then per sequence int32 n_rows, n_rows int32 tokens (-1: a row from the
 * embeddings), int32 k, k x n_embd float32 embeddings, int32 n_targets, n_targets int32
 * positions, n_targets int32 tokens.
 * OUT: per sequence float64 loss and k x n_embd float32 gradient; then float64 seconds
 * per call (the mean of R calls).
 * The context: one ubatch for everything, n_seq_max = n_seqs, one KV stream for all
 * (--split: a stream per sequence), float32 K and V, flash attention off; the model
 * loaded without repacked weights (--extra-bufts: with them).
 * Exit status 0; 1 for usage or file errors; 3 when llama_embd_grad fails, after
 * "llama_grad: status S: MESSAGE" on stderr. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama.h"

typedef struct {
    int32_t n_rows, k, n_targets;
    int32_t *tokens, *pos, *tok;
    float *embd, *grad;
} seq_in;

static int fail(const char *msg, const char *what)
{
    fprintf(stderr, "llama_grad: %s%s%s\n", msg, what ? ": " : "", what ? what : "");
    return 1;
}

static void quiet(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

/* count int32 or float32 values from f into a fresh buffer (NULL for count 0 or failure;
 * *ok cleared on failure) */
static void *read_n(FILE *f, int32_t count, int *ok)
{
    if (count < 0 || count > (1 << 26)) {
        *ok = 0;
        return NULL;
    }
    if (count == 0)
        return NULL;
    void *p = malloc((size_t)count * 4);
    if (!p || fread(p, 4, (size_t)count, f) != (size_t)count) {
        free(p);
        *ok = 0;
        return NULL;
    }
    return p;
}

static int read_i32(FILE *f, int32_t *v)
{
    return fread(v, 4, 1, f) == 1;
}

static int quantize(const char *in, const char *out, const char *type)
{
    struct llama_model_quantize_params qp = llama_model_quantize_default_params();
    if (strcmp(type, "f16") == 0)
        qp.ftype = LLAMA_FTYPE_MOSTLY_F16;
    else if (strcmp(type, "q8_0") == 0)
        qp.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
    else if (strcmp(type, "q4_0") == 0)
        qp.ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
    else if (strcmp(type, "q4_k_m") == 0)
        qp.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M;
    else
        return fail("the type is f16, q8_0, q4_0 or q4_k_m, not", type);
    qp.nthread = 1;
    if (llama_model_quantize(in, out, &qp) != 0)
        return fail("llama_model_quantize failed on", in);
    return 0;
}

int main(int argc, char **argv)
{
    llama_log_set(quiet, NULL);
    if (argc == 5 && strcmp(argv[1], "--quantize") == 0) {
        llama_backend_init();
        int rc = quantize(argv[2], argv[3], argv[4]);
        llama_backend_free();
        return rc;
    }
    if (argc < 4)
        return fail("usage: llama_grad MODEL.gguf IN OUT [--threads N] [--split] [--ubatch N] "
                    "[--extra-bufts] [--repeat R] | --quantize IN OUT TYPE", NULL);
    int threads = 2, split = 0, ubatch = 0, extra = 0, repeat = 1;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--ubatch") == 0 && i + 1 < argc)
            ubatch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc)
            repeat = atoi(argv[++i]);
        else if (strcmp(argv[i], "--split") == 0)
            split = 1;
        else if (strcmp(argv[i], "--extra-bufts") == 0)
            extra = 1;
        else
            return fail("unknown option", argv[i]);
    }
    if (threads < 1 || repeat < 1 || ubatch < 0)
        return fail("--threads and --repeat must be at least 1", NULL);

    FILE *in = fopen(argv[2], "rb");
    if (!in)
        return fail("cannot open", argv[2]);
    int32_t n_seqs = 0, n_cand = 0;
    int ok = read_i32(in, &n_seqs) && read_i32(in, &n_cand) && n_seqs > 0 && n_seqs < 4096;
    int32_t *cand = ok ? read_n(in, n_cand, &ok) : NULL;
    seq_in *s = ok ? calloc((size_t)n_seqs, sizeof *s) : NULL;
    ok = ok && s;

    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.use_extra_bufts = extra != 0;
    struct llama_model *model = ok ? llama_model_load_from_file(argv[1], mp) : NULL;
    const int32_t d = model ? llama_model_n_embd(model) : 0;
    int64_t total = 0;
    for (int32_t i = 0; ok && model && i < n_seqs; i++) {
        ok = read_i32(in, &s[i].n_rows);
        s[i].tokens = ok ? read_n(in, s[i].n_rows, &ok) : NULL;
        ok = ok && read_i32(in, &s[i].k) && s[i].k >= 0 && s[i].k <= (1 << 26) / d;
        s[i].embd = ok ? read_n(in, s[i].k * d, &ok) : NULL;
        ok = ok && read_i32(in, &s[i].n_targets);
        s[i].pos = ok ? read_n(in, s[i].n_targets, &ok) : NULL;
        s[i].tok = ok ? read_n(in, s[i].n_targets, &ok) : NULL;
        s[i].grad = ok && s[i].k ? calloc((size_t)s[i].k * d, sizeof(float)) : NULL;
        ok = ok && (s[i].k == 0 || s[i].grad);
        total += ok ? s[i].n_rows : 0;
    }
    fclose(in);
    int rc = 1;
    struct llama_context *ctx = NULL;
    struct llama_embd_grad_seq *q = NULL;
    if (!model) {
        fail(ok ? "cannot load the model" : "cannot read", ok ? argv[1] : argv[2]);
        goto out;
    }
    if (!ok) {
        fail("cannot read", argv[2]);
        goto out;
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(llama_model_n_ctx_train(model) * n_seqs);
    cp.n_batch = cp.n_ubatch = ubatch ? (uint32_t)ubatch : (uint32_t)(total > 0 ? total : 1);
    cp.n_seq_max = (uint32_t)n_seqs;
    cp.kv_unified = !split;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    ctx = llama_init_from_model(model, cp);
    q = calloc((size_t)n_seqs, sizeof *q);
    if (!ctx || !q) {
        fail("cannot make a context", NULL);
        goto out;
    }
    for (int32_t i = 0; i < n_seqs; i++)
        q[i] = (struct llama_embd_grad_seq){ s[i].n_rows, s[i].tokens, s[i].embd, s[i].n_targets,
                                             s[i].pos, s[i].tok, s[i].grad, 0.0 };
    char err[512];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < repeat; r++) {
        int32_t st = llama_embd_grad(ctx, q, n_seqs, cand, n_cand, err, sizeof err);
        if (st != LLAMA_EMBD_GRAD_OK) {
            fprintf(stderr, "llama_grad: status %d: %s\n", (int)st, err);
            rc = 3;
            goto out;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)) / repeat;

    FILE *out = fopen(argv[3], "wb");
    if (!out) {
        fail("cannot write", argv[3]);
        goto out;
    }
    ok = 1;
    for (int32_t i = 0; i < n_seqs; i++) {
        ok = ok && fwrite(&q[i].loss, sizeof(double), 1, out) == 1;
        ok = ok && (s[i].k == 0 || fwrite(s[i].grad, sizeof(float), (size_t)s[i].k * d, out) ==
                                       (size_t)s[i].k * d);
    }
    ok = ok && fwrite(&secs, sizeof secs, 1, out) == 1;
    ok = (fclose(out) == 0) && ok;
    rc = ok ? 0 : fail("cannot write", argv[3]);
out:
    for (int32_t i = 0; s && i < n_seqs; i++) {
        free(s[i].tokens);
        free(s[i].embd);
        free(s[i].pos);
        free(s[i].tok);
        free(s[i].grad);
    }
    free(s);
    free(q);
    free(cand);
    if (ctx)
        llama_free(ctx);
    if (model)
        llama_model_free(model);
    llama_backend_free();
    return rc;
}
