/*
 * host.h -- what the commands of ulpt-llama share (ulpt-llama.c: options, check and
 * serve; tenants.c; tune.c).
 */
#ifndef ULPT_LLAMA_HOST_H
#define ULPT_LLAMA_HOST_H

#include <stdint.h>

#include "task.h"

/* The byte after each example's text (docs/TINYLM.md, "Tasks"). */
#define TASK_SEPARATOR '\n'

typedef struct {
    const char *cmd, *gguf, *tlm, *prompt, *save, *gelu_zero_gguf, *args[2];
    int n_args, batch, threads, json, verbose;
    uint32_t requests, steps, seed, tokens, rank, examples, directions;
    double lr, mu;
} options;

/* "ulpt-llama: MESSAGE" on stderr; returns 1. */
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic seconds. */
double now(void);

/* The verbalizer of a split: its labels' first bytes. */
void task_verbalizer(const task_split *s, uint8_t v[2]);

/* The label with the larger logit, the first on a tie (tinylm's rule). */
int task_predict(const float *logits, const uint8_t v[2]);

int cmd_check(const options *o);
int cmd_serve(const options *o);
int cmd_tenants(const options *o);
int cmd_tune(const options *o);

#endif
