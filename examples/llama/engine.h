/*
 * engine.h -- a GGUF model under llama.cpp as a libulpt host: the small C API an engine
 * integration needs, and what the ulpt-llama commands are built on.
 *
 *   engine_open          load a model, learn its identity (architecture, width,
 *                        vocabulary fingerprint, name, weight type)
 *   engine_tokenize      text through the model's own tokenizer (optionally wrapped in
 *                        the model's chat template by llama.cpp)
 *   engine_run           put prompt rows in front of sequences and decode them together
 *   engine_score         the summed log-probability of each label after each sequence
 *   engine_serve_bank    the same, each sequence's rows taken from a prompt bank
 *   engine_identity_*    write a model's identity into a prompt, check a prompt against it
 *
 * The layout of a sequence, the same for tuning and serving (docs/LLAMA.md):
 *
 *     [BOS]  E[0] .. E[n_rows-1]  text tokens  label tokens
 *
 * BOS is there when the model's vocabulary asks for it (tokenizer.ggml.add_bos_token, or
 * its tokenizer type's default); E is decoded as an embedding batch (llama_batch.embd) at
 * the positions after BOS; text and label tokens follow in the same sequence and attend
 * to E through the KV cache.  Different sequences are different llama.cpp sequences, so
 * requests for different prompts share every llama_decode.
 *
 * Nothing here assumes an architecture, position scheme or vocabulary: any model
 * llama.cpp loads that accepts embedding input (llama_batch.embd) can host prompts.
 *
 * Calls return 0 on success, -1 on failure with a one-line message from engine_error();
 * a failed call changes nothing the caller can see.
 */
#ifndef ULPT_LLAMA_ENGINE_H
#define ULPT_LLAMA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "ulpt.h"

typedef struct engine engine;

/* What a prompt is trained against (docs/LLAMA.md, "Model identity"). */
typedef struct {
    char arch[64];     /* general.architecture: "llama", "qwen2", "gpt2", ... */
    char name[256];    /* general.name; "" if absent */
    char vocab[32];    /* "fnv1a64:" and 16 hex digits over the tokenizer (engine.c) */
    char weights[64];  /* the weight type, llama.cpp's name ("F32", "Q4_K - Medium") */
    uint32_t n_embd;   /* width: the prompt's rows are this wide */
    uint32_t n_vocab;
    uint32_t n_ctx_train;
} engine_identity;

typedef struct {
    int max_seqs;      /* sequences decoded together, 1..256 */
    uint32_t n_ctx;    /* cells per sequence; 0: the trained context, at most 512 */
    int n_threads;     /* <= 0: one per online CPU */
    int verbose;       /* llama.cpp's own log on stderr (else its errors only) */
} engine_options;

#define ENGINE_OPTIONS_INIT { 8, 0, 0, 0 }

/* Loads a GGUF model with a context of max_seqs sequences of n_ctx cells each, float32
 * K and V (the KV cache rounds nothing), flash attention off. */
int engine_open(engine **out, const char *gguf_path, const engine_options *opts);
void engine_free(engine *e);

const engine_identity *engine_identity_of(const engine *e);
uint32_t engine_n_ctx(const engine *e);    /* cells per sequence */
uint32_t engine_max_seqs(const engine *e);
int engine_adds_bos(const engine *e);      /* 1 if sequences start with BOS */

/* Tokens of text[0 .. len) by the model's tokenizer, no BOS/EOS added, special tokens
 * not parsed (llama.cpp's tokenizer tests do the same).  chat: the text is first made the
 * user message of the model's chat template (llama_chat_apply_template, ending where the
 * assistant's answer starts) and then tokenized with special tokens parsed.  *ids is
 * malloc'ed (free it); *n_ids >= 0. */
int engine_tokenize(engine *e, const char *text, size_t len, int chat, int32_t **ids,
                    uint32_t *n_ids);

/* One sequence: prompt rows, then tokens.  n_out: logits wanted for the last n_out
 * positions of the whole sequence (BOS and rows included), at least 1. */
typedef struct engine_labels engine_labels;

typedef struct {
    const float *rows;      /* n_rows x n_embd; NULL when n_rows is 0 */
    uint32_t n_rows;
    const int32_t *tokens;
    uint32_t n_tokens;
    uint32_t n_out;
    const engine_labels *labels; /* engine_score: this sequence's labels; NULL: the call's */
} engine_seq;

/* Positions a sequence takes: BOS (if any) + n_rows + n_tokens; must be <= n_ctx. */
uint32_t engine_seq_len(const engine *e, const engine_seq *s);

/* Decodes n (1 <= n <= max_seqs) sequences together (one llama_decode for the BOS
 * tokens, one for every sequence's rows, one for the tokens) and writes the logits they
 * ask for, sequence after sequence, position after position, n_vocab floats each, to
 * logits.  The KV cache is cleared first. */
int engine_run(engine *e, const engine_seq *seqs, int n, float *logits);

/* Labels (verbalizers): label c is tokens[c][0 .. len[c]), len[c] >= 1. */
struct engine_labels {
    const int32_t *const *tokens;
    const uint32_t *len;
    uint32_t n;
};

/* scores[i * labels->n + c] = sum over k of log p(label c's token k | sequence i, label
 * c's tokens before k), in double, for n >= 1 sequences (their n_out is ignored); any
 * number of sequences, decoded max_seqs at a time.  A sequence with labels of its own
 * (requests of different tasks in one call) has its scores at the same place, and at
 * most labels->n of them.  Each sequence with its longest label must fit n_ctx.  When
 * every label is one token, a sequence is decoded once; else once per label. */
int engine_score(engine *e, const engine_seq *seqs, size_t n, const engine_labels *labels,
                 double *scores);

/* engine_score for requests whose rows come from a prompt bank: request i has the rows of
 * prompt ids[i] (materialised by ulpt_bank_materialise, every request of a chunk in one
 * call) in front of seqs[i]'s tokens (seqs[i].rows and n_rows are ignored). */
int engine_serve_bank(engine *e, const ulpt_bank *bank, const ulpt_bank_id *ids,
                      const engine_seq *seqs, size_t n, const engine_labels *labels,
                      double *scores);

/* Records e's identity in p's metadata: "model" (the name) and the "model.*" keys of
 * docs/FORMAT.md.  On error p's metadata may hold some of the keys. */
int engine_identity_to_prompt(const engine *e, ulpt_prompt *p);

/* 0 if prompt p (loaded from path) was trained against this model: architecture, width,
 * vocabulary fingerprint and name equal.  The weight type may differ (a quantization of
 * the same weights): then note gets a line saying so, else note[0] = 0.  A prompt with
 * only "model" (tinylm prompts written before the identity keys) is matched by name and
 * width, and note says so.  -1 on a mismatch, naming the key and both values. */
int engine_identity_check(const engine *e, const ulpt_prompt *p, const char *path, char *note,
                          size_t note_size);

/* llama.cpp's file type (enum llama_ftype) named NAME ("F32", "F16", "Q8_0", "Q4_0",
 * "Q4_K_M", ...; the names llama-quantize takes), -1 if unknown; and the name of one,
 * NULL if unknown. */
int engine_ftype_of(const char *name);
const char *engine_ftype_name(int ftype);

/* Writes in quantized to type (a name above) by llama_model_quantize, beside out, then
 * renamed over it: a failure leaves out as it was. */
int engine_quantize(const char *in, const char *out, const char *type, int n_threads);

const char *engine_error(void);

#endif
