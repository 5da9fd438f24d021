/*
 * tinylm.h -- a small byte-level causal transformer that hosts libulpt.
 *
 * docs/TINYLM.md is the specification: configuration, parameters in file order, the
 * forward pass, the losses and the .tlm weights file.  This header is the manual of the C
 * model written from it.
 *
 * The forward pass takes input *rows* (n x C embeddings), not bytes, so a host prepends
 * soft-prompt rows to the embedded text (a text byte b contributes the row wte[b]).  The
 * backward pass returns dL/drows only: the weights are frozen.
 *
 * CONVENTIONS
 *   - Calls that can fail return 0 on success and nonzero on failure, with a one-line
 *     message from tlm_last_error() in the same thread; the loss helpers return NaN.
 *   - A call that fails leaves its out-parameters as they were.
 *   - All memory is taken when the model is created or loaded; forward and backward keep
 *     their activations inside the model, so one model serves one thread at a time.
 *   - Matrices are row-major float32.
 */
#ifndef TINYLM_H
#define TINYLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* V vocabulary (bytes), C width, L blocks, H heads (C % H == 0), F MLP hidden size,
 * T maximum sequence length (prompt rows + text bytes). */
typedef struct {
    uint32_t vocab, width, layers, heads, mlp, max_len;
} tlm_config;

#define TLM_CONFIG_DEFAULT {256, 128, 4, 4, 512, 192}

/* A model refuses a configuration whose parameters and activations together would take
 * more than this many bytes, so a forged file cannot ask for unbounded memory. */
#define TLM_MAX_BYTES ((uint64_t)4 << 30)

/* Longest corpus name a .tlm file holds, in bytes (UTF-8). */
#define TLM_CORPUS_MAX 64

/* What a .tlm file says about the training run (zeros and "" for a random model). */
typedef struct {
    uint64_t seed, steps;
    char corpus[TLM_CORPUS_MAX + 1]; /* NUL-terminated */
} tlm_meta;

typedef struct tlm_model tlm_model;

/* The one-line message of this thread's last failure ("" if none). */
const char *tlm_last_error(void);

/* A model with GPT-2-like random weights: N(0, 0.02) for matrices and embeddings, zero
 * biases, unit LayerNorm gains, drawn in file order from `seed` (deterministic on every
 * platform that has the same libm).  Fails on a configuration with a zero field, C not
 * divisible by H, or past TLM_MAX_BYTES. */
int tlm_create_random(tlm_model **out, const tlm_config *cfg, uint64_t seed);

/* Reads a .tlm file.  Refuses (one-line message) a wrong magic, version or nonzero
 * reserved field, a bad configuration, a parameter count the configuration does not
 * imply, a truncated file or trailing bytes, a bad CRC-32, and zlib data that does not
 * inflate to exactly 4 P bytes.  The header is checked before anything large is
 * allocated.  On failure *out is untouched. */
int tlm_load(tlm_model **out, const char *path);

/* The same from the len bytes of a .tlm file in memory; messages name "buffer". */
int tlm_load_buffer(tlm_model **out, const void *buf, size_t len);

/* Writes the model as a .tlm file with the given training record; `corpus` (may be NULL)
 * is at most TLM_CORPUS_MAX bytes.  A failed save removes the partial file. */
int tlm_save(const tlm_model *m, const char *path, uint64_t seed, uint64_t steps,
             const char *corpus);

/* Releases a model; NULL is fine. */
void tlm_free(tlm_model *m);

const tlm_config *tlm_config_of(const tlm_model *m);
const tlm_meta *tlm_meta_of(const tlm_model *m);

/* All parameters, flat in file order (wte, wpe, blocks, lnf).  Writable: a trainer or a
 * test may change them; nothing is cached from them. */
float *tlm_params(tlm_model *m);
size_t tlm_num_params(const tlm_model *m);

/* wte[byte], C floats; NULL when byte is outside [0, V). */
const float *tlm_token_embedding(const tlm_model *m, int byte);

/* on != 0: the forward pass computes GELU as an engine that tabulates it in half
 * precision does (llama.cpp's CPU backend): z rounded to IEEE half, GELU of that in float,
 * the result rounded to half; 0 for z <= -10 and z for z >= 10.  With it, logits can be
 * compared with such an engine down to float rounding.  The backward pass keeps the exact
 * derivative.  on = 0 (the default) is the specification's tanh form. */
void tlm_set_gelu_half(tlm_model *m, int on);

/* rows: n x C input rows, 1 <= n <= T.  Writes logits: n x V.  Keeps the activations
 * for tlm_backward. */
int tlm_forward(tlm_model *m, const float *rows, uint32_t n, float *logits);

/* dlogits: n x V, dL/dlogits for the n of the last tlm_forward.  Writes drows: n x C,
 * dL/drows.  Fails if no forward has run. */
int tlm_backward(tlm_model *m, const float *dlogits, float *drows);

/* Classification with a verbalizer: forward over rows (n x C), cross-entropy of the
 * softmax of the last position's logits restricted to label_bytes[0 .. n_labels) against
 * label index `target`.  If drows is not NULL, runs backward into it (n x C).  Sets
 * *predicted (may be NULL) to the label index with the largest logit.  Returns the loss,
 * or NaN on failure. */
double tlm_class_loss(tlm_model *m, const float *rows, uint32_t n, const uint8_t *label_bytes,
                      int n_labels, int target, float *drows, int *predicted);

/* Language modelling: the mean over t < n-1 of the cross-entropy of softmax(logits[t])
 * against bytes[t+1], forward only.  2 <= n <= T.  Returns NaN on failure. */
double tlm_lm_loss(tlm_model *m, const uint8_t *bytes, uint32_t n);

#ifdef __cplusplus
}
#endif

#endif
