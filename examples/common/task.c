/* task.c -- the task files (task.h), the seeded order of their examples, the sampler. */
#include "task.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int refuse(char *err, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(char *err, size_t errsize, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsize, fmt, ap);
    va_end(ap);
    return -1;
}

void task_split_free(task_split *s)
{
    free(s->blob);
    free(s->ex);
    s->blob = NULL;
    s->ex = NULL;
    s->n = 0;
}

/* The file is read whole and its lines cut in place, so the texts need no copies. */
int task_split_load(task_split *s, const char *dir, const char *name, uint32_t max_text,
                    uint32_t vocab, char *err, size_t errsize)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.tsv", dir, name);
    memset(s, 0, sizeof *s);
    memcpy(s->path, path, sizeof path);
    FILE *f = fopen(path, "rb");
    if (!f)
        return refuse(err, errsize, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *blob = malloc(cap);
    for (size_t got; blob && (got = fread(blob + len, 1, cap - len - 1, f)) > 0;) {
        len += got;
        if (len + 1 == cap) {
            char *more = realloc(blob, cap *= 2);
            if (!more)
                free(blob);
            blob = more;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!blob)
        return refuse(err, errsize, "%s: out of memory", path);
    if (bad) {
        free(blob);
        return refuse(err, errsize, "%s: read error", path);
    }
    blob[len] = '\0';
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += blob[i] == '\n';
    s->blob = blob;
    s->ex = calloc(lines + 1, sizeof *s->ex);
    if (!s->ex) {
        task_split_free(s);
        return refuse(err, errsize, "%s: out of memory", path);
    }
    char *line = blob, *end = blob + len;
    for (size_t no = 1; line < end; no++) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl) {
            task_split_free(s);
            return refuse(err, errsize, "%s:%zu: the last line has no newline", path, no);
        }
        *nl = '\0';
        if (no == 1) {
            char *a = line[0] == '#' && line[1] == '\t' ? line + 2 : NULL;
            char *b = a ? strchr(a, '\t') : NULL;
            if (!b || b == a || !b[1] || strchr(b + 1, '\t') || (size_t)(b - a) >= 64 ||
                strlen(b + 1) >= 64 || a[0] == b[1]) {
                task_split_free(s);
                return refuse(err, errsize, "%s:1: expected \"#<TAB>label0<TAB>label1\" with "
                              "different first letters", path);
            }
            memcpy(s->names[0], a, (size_t)(b - a));
            strcpy(s->names[1], b + 1);
        } else {
            uint32_t tlen = (uint32_t)(nl - line) - 2;
            if ((line[0] != '0' && line[0] != '1') || line[1] != '\t' || nl - line < 3 ||
                tlen > max_text) {
                task_split_free(s);
                return refuse(err, errsize, "%s:%zu: expected \"0|1<TAB>text\" with 1..%" PRIu32
                              " bytes of text", path, no, max_text);
            }
            for (uint32_t k = 0; k < tlen; k++) {
                if ((uint8_t)line[2 + k] >= vocab) {
                    task_split_free(s);
                    return refuse(err, errsize, "%s:%zu: byte 0x%02x is past the model's "
                                  "vocabulary of %" PRIu32, path, no, (uint8_t)line[2 + k], vocab);
                }
            }
            s->ex[s->n++] = (task_example){ (const uint8_t *)line + 2, tlen, line[0] - '0' };
        }
        line = nl + 1;
    }
    if (s->n == 0) {
        task_split_free(s);
        return refuse(err, errsize, "%s: no examples", path);
    }
    return 0;
}

uint64_t task_splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

void task_shuffle(size_t *idx, size_t n, uint64_t *state)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(task_splitmix(state) % i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

int task_sampler_init(task_sampler *s, size_t n, uint64_t seed)
{
    *s = (task_sampler){ malloc(sizeof(size_t) * (n ? n : 1)), n, n, seed };
    if (!s->order) {
        *s = (task_sampler){ 0 };
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        s->order[i] = i;
    return 0;
}

void task_sampler_next(task_sampler *s, const task_split *split, const task_example **batch,
                       uint32_t count)
{
    for (uint32_t b = 0; b < count; b++) {
        if (s->next == s->n) {
            task_shuffle(s->order, s->n, &s->state);
            s->next = 0;
        }
        batch[b] = &split->ex[s->order[s->next++]];
    }
}

void task_sampler_free(task_sampler *s)
{
    free(s->order);
    *s = (task_sampler){ 0 };
}

/* The last component of dir ("names" of "x/names/"), with characters that JSON or a
 * terminal would need escaped replaced by '_'. */
void task_name(const char *dir, char *out, size_t size)
{
    size_t end = strlen(dir);
    while (end > 1 && dir[end - 1] == '/')
        end--;
    size_t start = end;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    size_t n = 0;
    for (size_t i = start; i < end && n + 1 < size; i++)
        out[n++] = dir[i] == '"' || dir[i] == '\\' || (unsigned char)dir[i] < 0x20 ? '_' : dir[i];
    out[n] = '\0';
}
