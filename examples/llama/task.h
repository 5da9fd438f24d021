/*
 * task.h -- the classification tasks of docs/TINYLM.md, as examples/tinylm/tasks.py
 * writes them: TASKDIR/{train,valid,test}.tsv, a "#<TAB>label0<TAB>label1" line, then
 * "0|1<TAB>text" lines.  The verbalizer is the labels' first bytes; an example's input
 * is its text followed by the separator byte '\n'.
 */
#ifndef ULPT_LLAMA_TASK_H
#define ULPT_LLAMA_TASK_H

#include <stddef.h>
#include <stdint.h>

#define TASK_SEPARATOR '\n'

typedef struct {
    const uint8_t *input; /* text bytes then the separator */
    uint32_t len;         /* with the separator */
    int label;            /* 0 or 1 */
} task_example;

typedef struct {
    char path[4096];
    char names[2][64];     /* label names */
    uint8_t verbalizer[2]; /* their first bytes */
    task_example *ex;
    size_t n;
    uint8_t *blob;
} task_split;

/* Reads DIR/NAME.tsv; texts longer than max_text bytes are refused.  Returns 0, or -1
 * with a one-line message (naming the file and line) in err. */
int task_load(task_split *s, const char *dir, const char *name, uint32_t max_text, char *err,
              size_t err_size);
void task_free(task_split *s);

/* The index of the larger of the two label logits, the first on a tie (tinylm's rule). */
int task_predict(const float *logits, const uint8_t verbalizer[2]);

#endif
