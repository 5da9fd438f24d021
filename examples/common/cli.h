/*
 * cli.h -- what every example program shares: its one-line errors, a clock, the parsing
 * of option values, the weights shipped beside it, and the check of a libulpt call.
 * One copy of each, used by examples/tinylm (tune, tlm), examples/mpi/tune_mpi and the
 * llama host.  Beside it: task.h, the task files and the order their examples are drawn
 * in; recipe.h, the prompt and optimizer options every host trains with.
 *
 * Errors follow one rule in every program: a one-line message "PROGRAM: what went wrong"
 * on stderr, exit status 1 (2 for usage).
 */
#ifndef EXAMPLES_CLI_H
#define EXAMPLES_CLI_H

#include <stdint.h>

/* Names the program in front of every fail() line: "tune", or "tune_mpi: rank 3" (at
 * most 127 bytes kept).  Until called, the prefix is "example". */
void cli_set_name(const char *name);

/* Writes "NAME: MESSAGE\n" to stderr in one write(), so that lines from several processes
 * (MPI ranks forwarded by mpirun) are never interleaved; a message past 4 KiB is cut.
 * Returns 1, so that `return fail(...)` reports and fails in one statement. */
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Seconds on the monotonic clock, for timing a phase. */
double now(void);

/* Option values.  Each returns 0 with *out set, or fails ("WHAT must be ..., not \"S\"")
 * and returns 1 leaving *out unchanged.  `what` names the option, e.g. "--steps". */

/* A decimal integer in [lo, hi]; no sign, no spaces, nothing after it. */
int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, const char *what);

/* The same for a 64-bit value in [lo, hi]. */
int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out, const char *what);

/* A finite number above 0, or at least 0 when zero_ok. */
int parse_real(const char *s, int zero_ok, double *out, const char *what);

/* A command line: options ("--name" or "--name VALUE", anywhere) and operands. */
typedef enum {
    CLI_FLAG,   /* int *: set to 1 */
    CLI_STRING, /* const char **: the value as given */
    CLI_U32,    /* uint32_t *: parse_u32 in [lo, hi] */
    CLI_U64,    /* uint64_t *: parse_u64 in [lo, hi] */
    CLI_REAL,   /* double *: parse_real, above 0 */
    CLI_REAL0   /* double *: parse_real, 0 or above */
} cli_kind;

typedef struct {
    const char *name; /* "--steps"; NULL ends a table */
    cli_kind kind;
    void *value;      /* where the value goes: the type cli_kind names */
    uint64_t lo, hi;  /* range of an integer */
} cli_option;

/* Parses argv[1 .. argc) against table: each option sets its value (a later one wins),
 * the other arguments go to operands[0 .. max_operands) and their count to *n_operands.
 * Returns 0; 1 after a fail() line (unknown option, a value missing or out of range,
 * too many operands); 3 on --help or -h, for the caller to print its usage. */
int cli_parse(int argc, char **argv, const cli_option *table, const char **operands,
              int max_operands, int *n_operands);

/* The path of `name` relative to the directory of the running program (read from
 * /proc/self/exe), so that shipped weights are found wherever the program is run from;
 * `fallback` when that directory cannot be read.  The result lives until the next call. */
const char *beside_program(const char *name, const char *fallback);

/* Inside a function with an `int rc` and an `out:` label that frees what was taken:
 * a libulpt call that does not return ULPT_OK sets rc = 1 after reporting
 * ulpt_last_error(), and jumps to out.  Needs ulpt.h. */
#define TRY(call)                                                                          \
    do {                                                                                   \
        if ((call) != ULPT_OK) {                                                           \
            rc = fail("%s", ulpt_last_error());                                            \
            goto out;                                                                      \
        }                                                                                  \
    } while (0)

#endif
