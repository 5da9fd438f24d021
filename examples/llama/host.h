/*
 * host.h -- what the commands of ulpt-llama share: options, and a task made ready for the
 * engine (inputs.c): labelled texts tokenized in the layout of engine.h, with their
 * labels' tokens.  Commands: ulpt-llama.c (identity, tokenize, quantize, serve),
 * check.c, tenants.c, tune.c.
 */
#ifndef ULPT_LLAMA_HOST_H
#define ULPT_LLAMA_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "engine.h"

typedef struct {
    const char *cmd, *gguf, *tlm, *prompt, *save, *gelu_zero_gguf, *args[3];
    const char *train, *valid, *test, *labels, *sep, *scores, *method;
    int n_args, json, verbose, chat;
    uint32_t batch, threads, requests, steps, seed, tokens, rank, examples, directions, ctx;
    double lr, mu;
} options;

/* How a text becomes a sequence (docs/LLAMA.md, "Layout"): the separator written after
 * the text, or the model's chat template; kept in a prompt's metadata ("input.sep",
 * "input.chat", "labels") so that serving repeats what training did. */
typedef struct {
    char sep[256];
    int chat;
} text_format;

/* A split ready for the engine: example i is tokens[i][0 .. len[i]) (text and separator,
 * or the chat-formatted text; no BOS), its label, and its file line for messages. */
typedef struct {
    char path[4096];
    int32_t **tokens;
    uint32_t *len, *label, *line;
    size_t n;
} task_set;

/* The label set and each label's tokens (the model's tokenizer, nothing added). */
typedef struct {
    data_labels names;
    int32_t **tokens;
    uint32_t *len;
    uint32_t longest;
    engine_labels view; /* what engine_score takes */
} label_set;

/* The labels of names (moved into *out, names left empty), tokenized.  0 or 1 (reported). */
int labels_prepare(engine *e, data_labels *names, label_set *out);
void labels_free(label_set *l);

/* Tokenizes every text of s; a text that, after BOS and n_rows prompt rows and with the
 * longest label, does not fit the engine's sequences is refused naming file and line.
 * 0 or 1 (reported). */
int task_set_prepare(engine *e, const data_split *s, const text_format *f, uint32_t n_rows,
                     const label_set *labels, task_set *out);
void task_set_free(task_set *t);

/* Loads a task's data: DIR as a tinylm task directory (DIR/train.tsv, DIR/test.tsv of
 * docs/TINYLM.md: labels their names' first bytes, separator "\n"), or the files given
 * by --train/--valid/--test.  names: the label set (from --labels, the prompt, or read from
 * the first file).  Splits not asked for stay empty.  0 or 1 (reported). */
int task_load(const char *dir, const options *o, data_labels *names, text_format *f,
              data_split *train, data_split *valid, data_split *test);

/* Sequences of the examples first .. first+n-1 of t, behind rows E (n_rows of them). */
void task_seqs(const task_set *t, size_t first, size_t n, const float *E, uint32_t n_rows,
               engine_seq *out);

/* The label with the highest score, the first on a tie; and -log softmax(scores)[gold]. */
uint32_t predict(const double *scores, uint32_t n_labels);
double label_loss(const double *scores, uint32_t n_labels, uint32_t gold);

/* Writes the layout and labels into p's metadata, and reads them back (a key the prompt
 * lacks leaves *f or *names as they are).  0 or 1 (reported). */
int format_to_prompt(ulpt_prompt *p, const text_format *f, const data_labels *names);
int format_from_prompt(const ulpt_prompt *p, text_format *f, data_labels *names);

/* engine_open with the options' context, threads and log; 1 (reported) on failure. */
int open_engine(const options *o, uint32_t max_seqs, engine **e);

/* The reference for a converted tinylm (check.c): scores of every example of t, as
 * engine_score defines them, through tinylm's own C forward over the same rows (E, then
 * the token embeddings of the weights in tlm_path).  0 or 1 (reported). */
int tinylm_scores(const char *tlm_path, const engine *e, const float *E, uint32_t n_rows,
                  const task_set *t, const label_set *labels, double *scores);

int cmd_check(const options *o);
int cmd_serve(const options *o);
int cmd_tenants(const options *o);
int cmd_tune(const options *o);

#endif
