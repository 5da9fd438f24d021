/*
 * engine.h -- the llama.cpp side of the example host: a GGUF model, a context with one
 * KV stream per sequence, and the decode that serves ULPT prompts.
 *
 * A request is a prompt's rows E (n_rows x n_embd, from ulpt_prompt_forward) followed by
 * the input bytes.  engine_run decodes the E rows of every request as ONE embedding
 * batch (llama_batch.embd, positions 0 .. n_rows-1 of the request's own sequence), then
 * the bytes of every request as ONE token batch (positions n_rows .. n_rows+len-1 of the
 * same sequence), which attends to the E rows through the KV cache.  Different requests
 * are different sequences, so requests for different prompts share both llama_decode
 * calls.  Token id = byte (the converted model's vocabulary is byte-level).
 *
 * Calls return 0 on success, -1 on failure with a one-line message from engine_error().
 */
#ifndef ULPT_LLAMA_ENGINE_H
#define ULPT_LLAMA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct engine engine;

typedef struct {
    const float *rows;   /* prompt rows, n_rows x n_embd (row stride n_embd); NULL if none */
    uint32_t n_rows;
    const uint8_t *text; /* the input bytes, separator included */
    uint32_t len;        /* >= 1; n_rows + len <= engine_max_len() */
} engine_request;

/* Loads a GGUF model and makes a context for up to max_seqs sequences at once, each up to
 * the model's trained context, with float32 K and V (the KV cache rounds nothing).
 * n_threads <= 0: one per online CPU.  verbose: llama.cpp's own log on stderr (else
 * errors only). */
int engine_open(engine **out, const char *gguf_path, int max_seqs, int n_threads, int verbose);
void engine_free(engine *e);

/* The model's width (rows are this wide), vocabulary, trained context, and the value of
 * its general.name (the identity its prompts carry as "model"; "" if absent). */
uint32_t engine_n_embd(const engine *e);
uint32_t engine_n_vocab(const engine *e);
uint32_t engine_max_len(const engine *e);
uint32_t engine_max_seqs(const engine *e);
const char *engine_model_name(const engine *e);

/* Decodes n (1 <= n <= max_seqs) requests together, each as its own sequence, and
 * writes the logits of each request's last byte to logits + i*n_vocab.  all_logits
 * (may be NULL) gets, for a single request (n must be 1), the logits of every position,
 * E rows included: (n_rows + len) x n_vocab.  The KV cache is cleared first. */
int engine_run(engine *e, const engine_request *req, int n, float *logits, float *all_logits);

/* Token ids of llama.cpp's own tokenizer for the bytes text[0 .. len) into ids (room for
 * len); *n_ids gets their count.  For checking that the vocabulary maps byte b to id b. */
int engine_tokenize(engine *e, const uint8_t *text, int len, int32_t *ids, int *n_ids);

const char *engine_error(void);

#endif
