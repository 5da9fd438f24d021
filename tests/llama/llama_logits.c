/* llama_logits: every position's logits from llama.cpp for one sequence whose first rows
 * are given as embeddings and whose rest are token ids, so tests/llama/test_llama_model.py
 * can hold llama.cpp against the PyTorch reference (examples/tinylm/llama_torch.py).
 *
 *     llama_logits MODEL.gguf IN OUT [exact|default]
 *
 * IN: int32 k (embedding rows), int32 n (tokens), int32 d (width), k*d float32, n int32.
 * OUT: (k + n) x n_vocab float32 logits, row t for position t (positions count from 0).
 * "exact" (the default) keeps the KV cache in float32 and flash attention off, the
 * settings a gradient path needs; "default" takes llama.cpp's own (float16 KV cache). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static int fail(const char *msg, const char *what)
{
    fprintf(stderr, "llama_logits: %s%s%s\n", msg, what ? ": " : "", what ? what : "");
    return 1;
}

static void quiet(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

/* Decode rows [from, from + count) as one batch; embd or tokens, never both. */
static int decode(struct llama_context *ctx, const float *embd, const int32_t *tok,
                  int from, int count, int dim)
{
    struct llama_batch b = llama_batch_init(count, embd ? dim : 0, 1);
    for (int i = 0; i < count; i++) {
        if (embd)
            memcpy(b.embd + (size_t)i * dim, embd + (size_t)i * dim, sizeof(float) * dim);
        else
            b.token[i] = tok[i];
        b.pos[i] = from + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = count;
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5)
        return fail("usage: llama_logits MODEL.gguf IN OUT [exact|default]", NULL);
    int exact = argc < 5 || strcmp(argv[4], "exact") == 0;
    if (argc == 5 && !exact && strcmp(argv[4], "default") != 0)
        return fail("mode is exact or default, not", argv[4]);

    FILE *in = fopen(argv[2], "rb");
    if (!in)
        return fail("cannot open", argv[2]);
    int32_t head[3];
    if (fread(head, sizeof head, 1, in) != 1 || head[0] < 0 || head[1] < 0 ||
        head[0] + head[1] < 1 || head[2] < 1) {
        fclose(in);
        return fail("bad header in", argv[2]);
    }
    int k = head[0], n = head[1], dim = head[2];
    float *embd = malloc(sizeof(float) * ((size_t)k * dim + 1));
    int32_t *tok = malloc(sizeof(int32_t) * ((size_t)n + 1));
    if (!embd || !tok)
        return fail("out of memory", NULL);
    if (fread(embd, sizeof(float), (size_t)k * dim, in) != (size_t)k * dim ||
        fread(tok, sizeof(int32_t), (size_t)n, in) != (size_t)n) {
        fclose(in);
        return fail("truncated", argv[2]);
    }
    fclose(in);

    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model)
        return fail("llama.cpp cannot load", argv[1]);
    if (llama_model_n_embd(model) != dim)
        return fail("width of the input differs from the model's", NULL);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 256;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.no_perf = 1;
    if (exact) {
        cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx)
        return fail("llama.cpp cannot make a context for", argv[1]);
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));

    FILE *out = fopen(argv[3], "wb");
    if (!out)
        return fail("cannot create", argv[3]);
    int rc = 0;
    if (k > 0)
        rc = decode(ctx, embd, NULL, 0, k, dim);
    for (int i = 0; rc == 0 && i < k; i++)
        if (fwrite(llama_get_logits_ith(ctx, i), sizeof(float), nv, out) != (size_t)nv)
            rc = -100;
    if (rc == 0 && n > 0)
        rc = decode(ctx, NULL, tok, k, n, dim);
    for (int i = 0; rc == 0 && i < n; i++)
        if (fwrite(llama_get_logits_ith(ctx, i), sizeof(float), nv, out) != (size_t)nv)
            rc = -100;
    if (fclose(out) != 0 && rc == 0)
        rc = -100;
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    free(embd);
    free(tok);
    if (rc == -100)
        return fail("cannot write", argv[3]);
    if (rc != 0)
        return fail("llama_decode failed", NULL);
    return 0;
}
