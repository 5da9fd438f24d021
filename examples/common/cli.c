/* cli.c -- errors, clock, option values and the program's directory (cli.h). */
#define _GNU_SOURCE /* memrchr */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char program[128] = "example";

void cli_set_name(const char *name)
{
    snprintf(program, sizeof program, "%s", name);
}

int fail(const char *fmt, ...)
{
    char line[4096]; /* PIPE_BUF: a write of this size reaches a pipe whole */
    int n = snprintf(line, sizeof line, "%s: ", program);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if ((size_t)n > sizeof line - 2) /* cut a long message, keep the newline */
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    for (ssize_t k = 0, w; k < n; k += w)
        if ((w = write(STDERR_FILENO, line + k, (size_t)(n - k))) < 0) {
            if (errno != EINTR)
                break;
            w = 0;
        }
    return 1;
}

double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    /* strtoull accepts leading blanks and a sign; an option value has neither */
    if (errno || end == s || *end || s[0] < '0' || s[0] > '9' || v < lo || v > hi)
        return fail("%s must be an integer in [%" PRIu64 ", %" PRIu64 "], not \"%s\"", what,
                    lo, hi, s);
    *out = v;
    return 0;
}

int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, const char *what)
{
    uint64_t v = 0;
    if (parse_u64(s, lo, hi, &v, what))
        return 1;
    *out = (uint32_t)v;
    return 0;
}

int parse_real(const char *s, int zero_ok, double *out, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || !(zero_ok ? v >= 0 : v > 0))
        return fail("%s must be a %s number, not \"%s\"", what,
                    zero_ok ? "finite, non-negative" : "positive", s);
    *out = v;
    return 0;
}

/* Stores one option's value v (NULL for a flag). */
static int set_option(const cli_option *opt, const char *v)
{
    switch (opt->kind) {
    case CLI_FLAG:
        *(int *)opt->value = 1;
        return 0;
    case CLI_STRING:
        *(const char **)opt->value = v;
        return 0;
    case CLI_U32:
        return parse_u32(v, (uint32_t)opt->lo, (uint32_t)opt->hi, opt->value, opt->name);
    case CLI_U64:
        return parse_u64(v, opt->lo, opt->hi, opt->value, opt->name);
    case CLI_REAL:
    case CLI_REAL0:
        return parse_real(v, opt->kind == CLI_REAL0, opt->value, opt->name);
    }
    return fail("%s: unknown kind of option", opt->name);
}

int cli_parse(int argc, char **argv, const cli_option *table, const char **operands,
              int max_operands, int *n_operands)
{
    *n_operands = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return 3;
        if (a[0] != '-' || a[1] != '-') {
            if (*n_operands == max_operands)
                return fail("unexpected argument \"%s\" (see --help)", a);
            operands[(*n_operands)++] = a;
            continue;
        }
        const cli_option *opt = table;
        while (opt->name && strcmp(opt->name, a))
            opt++;
        if (!opt->name)
            return fail("unknown option %s (see --help)", a);
        const char *v = NULL;
        if (opt->kind != CLI_FLAG) {
            if (i + 1 == argc)
                return fail("%s needs a value", a);
            v = argv[++i];
        }
        if (set_option(opt, v))
            return 1;
    }
    return 0;
}

const char *beside_program(const char *name, const char *fallback)
{
    static char path[4096];
    size_t room = strlen(name) + 1;
    if (room >= sizeof path)
        return fallback;
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - room);
    if (n <= 0 || (size_t)n >= sizeof path - room) /* unreadable, or perhaps cut short */
        return fallback;
    char *slash = memrchr(path, '/', (size_t)n);
    if (!slash)
        return fallback;
    memcpy(slash + 1, name, room);
    return path;
}
