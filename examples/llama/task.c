/* task.c -- reading a task's TSV files (task.h). */
#include "task.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void task_free(task_split *s)
{
    free(s->blob);
    free(s->ex);
    s->blob = NULL;
    s->ex = NULL;
    s->n = 0;
}

int task_load(task_split *s, const char *dir, const char *name, uint32_t max_text, char *err,
              size_t err_size)
{
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s/%s.tsv", dir, name);
    FILE *f = fopen(s->path, "rb");
    if (!f) {
        snprintf(err, err_size, "%s: %s", s->path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    uint8_t *blob = malloc(cap);
    for (size_t got; blob && (got = fread(blob + len, 1, cap - len - 1, f)) > 0;) {
        len += got;
        if (len + 1 == cap) {
            uint8_t *more = realloc(blob, cap *= 2);
            if (!more)
                free(blob);
            blob = more;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!blob || bad) {
        free(blob);
        snprintf(err, err_size, "%s: %s", s->path, bad ? "read error" : "out of memory");
        return -1;
    }
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += blob[i] == '\n';
    s->blob = blob;
    s->ex = calloc(lines + 1, sizeof *s->ex);
    if (!s->ex) {
        task_free(s);
        snprintf(err, err_size, "%s: out of memory", s->path);
        return -1;
    }
    uint8_t *line = blob, *end = blob + len;
    for (size_t no = 1; line < end; no++) {
        uint8_t *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl) {
            snprintf(err, err_size, "%s:%zu: the last line has no newline", s->path, no);
            task_free(s);
            return -1;
        }
        size_t n = (size_t)(nl - line);
        if (no == 1) {
            *nl = '\0';
            char *a = line[0] == '#' && line[1] == '\t' ? (char *)line + 2 : NULL;
            char *b = a ? strchr(a, '\t') : NULL;
            if (!b || b == a || !b[1] || strchr(b + 1, '\t') || (size_t)(b - a) >= 64 ||
                strlen(b + 1) >= 64 || a[0] == b[1]) {
                snprintf(err, err_size, "%s:1: expected \"#<TAB>label0<TAB>label1\" with "
                         "different first letters", s->path);
                task_free(s);
                return -1;
            }
            memcpy(s->names[0], a, (size_t)(b - a));
            strcpy(s->names[1], b + 1);
            s->verbalizer[0] = (uint8_t)s->names[0][0];
            s->verbalizer[1] = (uint8_t)s->names[1][0];
        } else {
            if (n < 3 || (line[0] != '0' && line[0] != '1') || line[1] != '\t' ||
                n - 2 > max_text) {
                snprintf(err, err_size, "%s:%zu: expected \"0|1<TAB>text\" with 1..%u bytes "
                         "of text", s->path, no, max_text);
                task_free(s);
                return -1;
            }
            /* the line's own newline is the separator the model reads after the text */
            s->ex[s->n++] = (task_example){ line + 2, (uint32_t)(n - 2 + 1), line[0] - '0' };
        }
        line = nl + 1;
    }
    if (s->n == 0) {
        snprintf(err, err_size, "%s: no examples", s->path);
        task_free(s);
        return -1;
    }
    return 0;
}

int task_predict(const float *logits, const uint8_t verbalizer[2])
{
    return logits[verbalizer[1]] > logits[verbalizer[0]];
}
