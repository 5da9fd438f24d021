/*
 * grad.h -- a minibatch's loss and its gradient with respect to the prompt's rows, computed
 * inside llama.cpp by llama_embd_grad (examples/llama/patches, docs/LLAMA.md "Gradients"):
 * what ulpt_train_step's callback returns when ulpt-llama tunes first-order.
 *
 * The layout is the host's (docs/LLAMA.md, "Layout"):  [BOS]  E  text tokens  label tokens.
 * The loss of an example is -log softmax over the labels of their scores, a label's score
 * its summed token log-probability after the text; the minibatch's loss is the mean.
 * When every label is one token this is the softmax over those tokens' logits at the
 * text's last row, and each example is one sequence; otherwise each (example, label) pair
 * is a sequence scoring the label's tokens, and the pairs' gradients are combined with the
 * softmax's weights.  The sequences of a step go to llama.cpp in as few graphs as the
 * row budget allows (several sequences a graph).
 *
 * The model is loaded again here, without repacked weights (which have no backward
 * matrix product), in a context of its own (one KV stream, float32, flash attention off).
 * Calls return 0 on success; on failure -1 (and grad_open 1 for a model whose graph
 * cannot be differentiated) with a one-line message in why/err.
 */
#ifndef ULPT_LLAMA_GRAD_H
#define ULPT_LLAMA_GRAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct grad_model grad_model;

/* One example: its text tokens (no BOS) and its label's index. */
typedef struct {
    const int32_t *tokens;
    uint32_t n_tokens;
    uint32_t label;
} grad_example;

/* Labels: label c is tokens[c][0 .. len[c]), len[c] >= 1. */
typedef struct {
    const int32_t *const *tokens;
    const uint32_t *len;
    uint32_t n;
} grad_labels;

/* Loads gguf_path for gradients, with graphs of up to max_rows rows (at least the longest
 * sequence a step makes; more rows a graph means fewer graphs, and attention over all of
 * a graph's rows), and probes it with a two-row batch.  Returns 1 with why saying so when
 * llama.cpp cannot differentiate the model's graph (an operation without a backward pass,
 * named), -1 on other failures. */
int grad_open(grad_model **out, const char *gguf_path, uint32_t max_rows, int n_threads,
              char *why, size_t why_size);
void grad_free(grad_model *g);

/* Rows a sequence of an example takes: BOS (if the model adds it) + n_rows + its tokens
 * + the longest label's tokens but its last. */
uint32_t grad_seq_rows(const grad_model *g, uint32_t n_rows, uint32_t n_tokens,
                       const grad_labels *labels);

/* The mean loss of m examples behind prompt rows E (n_rows x n_embd) into *loss, and its
 * gradient with respect to E into G (same shape, overwritten). */
int grad_loss(grad_model *g, const float *E, uint32_t n_rows, const grad_example *ex,
              size_t m, const grad_labels *labels, float *G, double *loss, char *err,
              size_t err_size);

/* Graphs computed so far (llama_embd_grad calls) and their sequences. */
uint64_t grad_calls(const grad_model *g);
uint64_t grad_sequences(const grad_model *g);

#endif
