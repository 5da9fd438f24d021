/*
 * host.h -- what the commands of ulpt-llama share (ulpt-llama.c: options, check and
 * serve; tenants.c; tune.c).
 */
#ifndef ULPT_LLAMA_HOST_H
#define ULPT_LLAMA_HOST_H

#include <stdint.h>

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

int cmd_check(const options *o);
int cmd_serve(const options *o);
int cmd_tenants(const options *o);
int cmd_tune(const options *o);

#endif
