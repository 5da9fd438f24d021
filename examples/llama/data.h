/*
 * data.h -- users' labelled texts for ulpt-llama (docs/LLAMA.md, "Data").
 *
 * A split is one file, by its name's ending:
 *   NAME.jsonl  one JSON object a line: {"text": "...", "label": "..."}; other keys are
 *               ignored; both values are strings.
 *   NAME.tsv    one "LABEL<TAB>TEXT" a line; in TEXT, \t \n \r \\ stand for a tab, a line
 *               break, a carriage return, a backslash.
 * Empty lines are skipped; a line may end in CRLF.  A label is 1..255 bytes without a line
 * break or tab.  The label set is given (--labels) or read from the training file, in the
 * order labels first appear there; a later file's label outside the set is an error.
 * Every error is one line naming the file and line: "train.jsonl:12: no \"label\"".
 */
#ifndef ULPT_LLAMA_DATA_H
#define ULPT_LLAMA_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *text;     /* NUL-terminated (a text may hold NUL bytes of its own: use len) */
    size_t len;
    uint32_t label; /* index into the label set */
    uint32_t line;  /* 1-based line of the file */
} data_example;

typedef struct {
    char path[4096];
    data_example *ex;
    size_t n;
} data_split;

#define DATA_MAX_LABELS 4096

typedef struct {
    char **name;
    uint32_t n;
} data_labels;

/* Reads path into *s.  grow: labels not yet in *labels are added to it; otherwise such a
 * label is an error.  Returns 0, or -1 with a one-line message in err, *s empty and
 * *labels as it was. */
int data_load(data_split *s, const char *path, data_labels *labels, int grow, char *err,
              size_t errsize);
void data_free(data_split *s);

/* The label set of a comma-separated list ("negative,positive"), or of a newline-separated
 * one (the "labels" metadata of a prompt) when sep is '\n'.  Returns 0, or -1 with err. */
int data_labels_parse(data_labels *l, const char *list, char sep, char *err, size_t errsize);

/* Adds a copy of name (checked as above); *index gets its place.  0, or -1 with err. */
int data_labels_add(data_labels *l, const char *name, uint32_t *index, char *err,
                    size_t errsize);

/* The label set joined by '\n' (malloc'ed; NULL when out of memory). */
char *data_labels_join(const data_labels *l);
void data_labels_free(data_labels *l);

#endif
