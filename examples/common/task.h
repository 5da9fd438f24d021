/*
 * task.h -- the task files of docs/TINYLM.md ("Tasks") and the seeded order the examples
 * are drawn in, shared by the example hosts: examples/tinylm/tune (worker threads),
 * examples/mpi/tune_mpi (MPI ranks) and the llama host.
 *
 * A split is one file, TASKDIR/NAME.tsv: a first line "#<TAB>label0<TAB>label1" (label
 * names whose first bytes differ: they are the verbalizer), then one "0|1<TAB>text" line
 * an example.
 */
#ifndef TASK_H
#define TASK_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *text;
    uint32_t len;
    int label; /* 0 or 1 */
} task_example;

typedef struct {
    char path[4096];
    char *blob;          /* the whole file; texts point into it */
    task_example *ex;
    size_t n;
    char names[2][64];   /* label names; their first bytes are the verbalizer */
} task_split;

/* Reads TASKDIR/NAME.tsv into *s: texts of 1..max_text bytes, each below vocab.  Returns
 * 0, or -1 with *s empty and a one-line message naming the file (and the line) in
 * err[0 .. errsize). */
int task_split_load(task_split *s, const char *dir, const char *name, uint32_t max_text,
                    uint32_t vocab, char *err, size_t errsize);

/* Releases what a load took; *s is empty afterwards. */
void task_split_free(task_split *s);

/* The task's name: the last component of dir ("names" of "x/names/"), with characters
 * that JSON or a terminal would need escaped replaced by '_'; at most size - 1 bytes. */
void task_name(const char *dir, char *out, size_t size);

/* SplitMix64: the next number of the stream whose state is *state. */
uint64_t task_splitmix(uint64_t *state);

/* Fisher-Yates shuffle of idx[0 .. n), drawing from task_splitmix(state). */
void task_shuffle(size_t *idx, size_t n, uint64_t *state);

/* The order training examples are drawn in: epochs, each a fresh permutation of the
 * split.  The same seed gives the same batches in every program and on every MPI rank,
 * which is what lets tune_mpi on R ranks repeat tune's data order. */
typedef struct {
    size_t *order; /* a permutation of 0 .. n-1 */
    size_t n, next;
    uint64_t state;
} task_sampler;

/* A sampler over n > 0 examples, seeded; the first batch starts the first epoch.
 * Returns 0, or -1 (out of memory) with *s empty. */
int task_sampler_init(task_sampler *s, size_t n, uint64_t seed);

/* Fills batch[0 .. count) with the next examples of split (which has the sampler's n),
 * starting a new permutation whenever an epoch is used up. */
void task_sampler_next(task_sampler *s, const task_split *split, const task_example **batch,
                       uint32_t count);

/* Releases what init took; *s is empty afterwards. */
void task_sampler_free(task_sampler *s);

#endif
