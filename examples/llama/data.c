/* data.c -- labelled texts from JSONL and TSV files (data.h). */
#define _POSIX_C_SOURCE 200809L
#include "data.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int err_at(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int err_at(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- labels ------------------------------------------------------------------------ */

static const char *label_problem(const char *name)
{
    size_t len = strlen(name);
    if (!len)
        return "an empty label";
    if (len > 255)
        return "a label of more than 255 bytes";
    if (strpbrk(name, "\n\r\t"))
        return "a label holding a tab or line break";
    return NULL;
}

static int find_label(const data_labels *l, const char *name)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (!strcmp(l->name[i], name))
            return (int)i;
    return -1;
}

int data_labels_add(data_labels *l, const char *name, uint32_t *index, char *err,
                    size_t errsize)
{
    const char *bad = label_problem(name);
    if (bad)
        return err_at(err, errsize, "%s", bad);
    int at = find_label(l, name);
    if (at >= 0) {
        *index = (uint32_t)at;
        return 0;
    }
    if (l->n == DATA_MAX_LABELS)
        return err_at(err, errsize, "more than %d labels", DATA_MAX_LABELS);
    char **more = realloc(l->name, sizeof *more * (l->n + 1));
    if (!more)
        return err_at(err, errsize, "out of memory");
    l->name = more;
    if (!(l->name[l->n] = strdup(name)))
        return err_at(err, errsize, "out of memory");
    *index = l->n++;
    return 0;
}

void data_labels_free(data_labels *l)
{
    for (uint32_t i = 0; i < l->n; i++)
        free(l->name[i]);
    free(l->name);
    l->name = NULL;
    l->n = 0;
}

int data_labels_parse(data_labels *l, const char *list, char sep, char *err, size_t errsize)
{
    data_labels got = { 0 };
    char buf[256];
    for (const char *p = list;;) {
        const char *end = strchr(p, sep);
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len >= sizeof buf) {
            data_labels_free(&got);
            return err_at(err, errsize, "a label of more than 255 bytes");
        }
        memcpy(buf, p, len);
        buf[len] = '\0';
        uint32_t at;
        if (data_labels_add(&got, buf, &at, err, errsize)) {
            data_labels_free(&got);
            return -1;
        }
        if (at + 1 != got.n) {
            data_labels_free(&got);
            return err_at(err, errsize, "label \"%s\" is given twice", buf);
        }
        if (!end)
            break;
        p = end + 1;
    }
    if (got.n < 2) {
        data_labels_free(&got);
        return err_at(err, errsize, "at least two labels are needed, not \"%s\"", list);
    }
    *l = got;
    return 0;
}

char *data_labels_join(const data_labels *l)
{
    size_t n = 1;
    for (uint32_t i = 0; i < l->n; i++)
        n += strlen(l->name[i]) + 1;
    char *s = malloc(n), *p = s;
    if (!s)
        return NULL;
    for (uint32_t i = 0; i < l->n; i++) {
        size_t len = strlen(l->name[i]);
        memcpy(p, l->name[i], len);
        p += len;
        *p++ = i + 1 < l->n ? '\n' : '\0';
    }
    if (!l->n)
        *p = '\0';
    return s;
}

/* ---- JSON -------------------------------------------------------------------------- */

typedef struct {
    const char *p, *end;
    const char *problem; /* what went wrong, for the caller's message */
} cursor;

static void skip_space(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n'))
        c->p++;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            v |= (unsigned)(ch - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A JSON string at c->p (its opening quote), decoded into a malloc'ed buffer when out is
 * not NULL (escaped text is never longer than its decoding). */
static int json_string(cursor *c, char **out, size_t *out_len)
{
    if (c->p >= c->end || *c->p != '"')
        return c->problem = "a string was expected", -1;
    const char *p = ++c->p;
    char *buf = out ? malloc((size_t)(c->end - p) + 1) : NULL, *o = buf;
    if (out && !buf)
        return c->problem = "out of memory", -1;
    while (p < c->end && *p != '"') {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20) {
            free(buf);
            return c->problem = "a control character inside a string", -1;
        }
        if (ch != '\\') {
            if (o)
                *o++ = (char)ch;
            p++;
            continue;
        }
        if (p + 1 >= c->end)
            break;
        char esc = p[1];
        const char *simple = strchr("\"\\/bfnrt", esc);
        if (simple && esc) {
            static const char to[] = "\"\\/\b\f\n\r\t";
            if (o)
                *o++ = to[simple - "\"\\/bfnrt"];
            p += 2;
            continue;
        }
        unsigned cp, lo;
        if (esc != 'u' || p + 6 > c->end || hex4(p + 2, &cp)) {
            free(buf);
            return c->problem = "a bad escape inside a string", -1;
        }
        p += 6;
        if (cp >= 0xd800 && cp < 0xdc00) { /* a surrogate pair */
            if (p + 6 > c->end || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) ||
                lo < 0xdc00 || lo >= 0xe000) {
                free(buf);
                return c->problem = "an unpaired surrogate inside a string", -1;
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        } else if (cp >= 0xdc00 && cp < 0xe000) {
            free(buf);
            return c->problem = "an unpaired surrogate inside a string", -1;
        }
        if (o)
            o += put_utf8(o, cp);
    }
    if (p >= c->end) {
        free(buf);
        return c->problem = "a string that does not end", -1;
    }
    c->p = p + 1;
    if (out) {
        *o = '\0';
        *out = buf;
        *out_len = (size_t)(o - buf);
    }
    return 0;
}

/* Skips any JSON value (nested ones by counting brackets outside strings). */
static int json_skip(cursor *c)
{
    skip_space(c);
    if (c->p < c->end && *c->p == '"')
        return json_string(c, NULL, NULL);
    int depth = 0;
    const char *start = c->p;
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == '"') {
            if (json_string(c, NULL, NULL))
                return -1;
            continue;
        }
        if (ch == '{' || ch == '[')
            depth++;
        else if (ch == '}' || ch == ']') {
            if (!depth)
                break;
            depth--;
        } else if (ch == ',' && !depth)
            break;
        c->p++;
    }
    if (depth || c->p == start)
        return c->problem = "a value was expected", -1;
    return 0;
}

/* One line's object: its "text" and "label" strings (malloc'ed). */
static int json_example(cursor *c, char **text, size_t *text_len, char **label)
{
    size_t label_len;
    skip_space(c);
    if (c->p >= c->end || *c->p != '{')
        return c->problem = "not a JSON object", -1;
    c->p++;
    skip_space(c);
    if (c->p < c->end && *c->p == '}')
        c->p++;
    else
        for (;;) {
            char *key;
            size_t key_len;
            skip_space(c);
            if (json_string(c, &key, &key_len))
                return -1;
            skip_space(c);
            if (c->p >= c->end || *c->p != ':') {
                free(key);
                return c->problem = "a ':' was expected after a key", -1;
            }
            c->p++;
            skip_space(c);
            int is_text = !strcmp(key, "text"), is_label = !strcmp(key, "label");
            free(key);
            if ((is_text && *text) || (is_label && *label))
                return c->problem = is_text ? "\"text\" is given twice" : "\"label\" is given twice", -1;
            if (is_text || is_label) {
                if (c->p >= c->end || *c->p != '"')
                    return c->problem = is_text ? "\"text\" is not a string" : "\"label\" is not a string", -1;
                if (is_text ? json_string(c, text, text_len) : json_string(c, label, &label_len))
                    return -1;
            } else if (json_skip(c)) {
                return -1;
            }
            skip_space(c);
            if (c->p < c->end && *c->p == ',') {
                c->p++;
                continue;
            }
            if (c->p < c->end && *c->p == '}') {
                c->p++;
                break;
            }
            return c->problem = "a ',' or '}' was expected", -1;
        }
    skip_space(c);
    if (c->p != c->end)
        return c->problem = "something after the object", -1;
    if (!*text)
        return c->problem = "no \"text\"", -1;
    if (!*label)
        return c->problem = "no \"label\"", -1;
    if (memchr(*label, '\0', label_len))
        return c->problem = "a label holding a NUL byte", -1;
    return 0;
}

/* ---- TSV --------------------------------------------------------------------------- */

static int tsv_example(cursor *c, char **text, size_t *text_len, char **label)
{
    const char *tab = memchr(c->p, '\t', (size_t)(c->end - c->p));
    if (!tab)
        return c->problem = "no tab between label and text", -1;
    size_t label_len = (size_t)(tab - c->p);
    if (memchr(c->p, '\0', label_len))
        return c->problem = "a label holding a NUL byte", -1;
    if (!(*label = malloc(label_len + 1)))
        return c->problem = "out of memory", -1;
    memcpy(*label, c->p, label_len);
    (*label)[label_len] = '\0';
    const char *p = tab + 1;
    char *o = *text = malloc((size_t)(c->end - p) + 1);
    if (!o)
        return c->problem = "out of memory", -1;
    for (; p < c->end; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        char esc = p + 1 < c->end ? p[1] : '\0';
        if (esc == 't' || esc == 'n' || esc == 'r' || esc == '\\') {
            *o++ = esc == 't' ? '\t' : esc == 'n' ? '\n' : esc == 'r' ? '\r' : '\\';
            p++;
        } else {
            return c->problem = "a backslash that is not \\t, \\n, \\r or \\\\", -1;
        }
    }
    *o = '\0';
    *text_len = (size_t)(o - *text);
    return 0;
}

/* ---- files ------------------------------------------------------------------------- */

static int read_file(const char *path, char **data, size_t *size, char *err, size_t errsize)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_at(err, errsize, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t got = 1; buf && got;) {
        if (n == cap) {
            char *more = realloc(buf, cap *= 2);
            if (!more) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = more;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return err_at(err, errsize, "%s: %s", path, bad ? "read error" : "out of memory");
    }
    *data = buf;
    *size = n;
    return 0;
}

void data_free(data_split *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->ex[i].text);
    free(s->ex);
    s->ex = NULL;
    s->n = 0;
}

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

/* Label index of name in *l (adding it when grow), or -1 with err naming file and line. */
static int label_index(data_labels *l, const char *name, int grow, const char *where,
                       uint32_t *index, char *err, size_t errsize)
{
    int at = find_label(l, name);
    if (at >= 0) {
        *index = (uint32_t)at;
        return 0;
    }
    if (!grow) {
        char *known = data_labels_join(l);
        for (char *k = known; k && *k; k++)
            if (*k == '\n')
                *k = ',';
        err_at(err, errsize, "%s: label \"%s\" is not one of the %u labels (%s)", where, name,
               l->n, known ? known : "");
        free(known);
        return -1;
    }
    char why[128];
    if (data_labels_add(l, name, index, why, sizeof why))
        return err_at(err, errsize, "%s: %s", where, why);
    return 0;
}

int data_load(data_split *s, const char *path, data_labels *labels, int grow, char *err,
              size_t errsize)
{
    const int jsonl = ends_with(path, ".jsonl") || ends_with(path, ".json");
    if (!jsonl && !ends_with(path, ".tsv"))
        return err_at(err, errsize, "%s: the file name must end in .jsonl or .tsv", path);
    char *data;
    size_t size;
    if (read_file(path, &data, &size, err, errsize))
        return -1;
    data_split got = { 0 };
    snprintf(got.path, sizeof got.path, "%s", path);
    const uint32_t labels_before = labels->n;
    size_t cap = 0;
    int rc = 0;
    uint32_t line = 0;
    for (const char *p = data, *end = data + size; !rc && p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        line++;
        cursor c = { p, stop > p && stop[-1] == '\r' ? stop - 1 : stop, NULL };
        p = nl ? nl + 1 : end;
        if (c.p == c.end)
            continue;
        char where[4200];
        snprintf(where, sizeof where, "%s:%u", path, line);
        char *text = NULL, *label = NULL;
        size_t text_len = 0;
        data_example x = { 0 };
        if ((jsonl ? json_example(&c, &text, &text_len, &label)
                   : tsv_example(&c, &text, &text_len, &label))) {
            rc = err_at(err, errsize, "%s: %s", where, c.problem);
        } else if (!text_len) {
            rc = err_at(err, errsize, "%s: an empty text", where);
        } else if (!label_index(labels, label, grow, where, &x.label, err, errsize)) {
            if (got.n == cap) {
                data_example *more = realloc(got.ex, sizeof *more * (cap = cap ? 2 * cap : 256));
                if (!more)
                    rc = err_at(err, errsize, "%s: out of memory", where);
                else
                    got.ex = more;
            }
            if (!rc) {
                x.text = text;
                x.len = text_len;
                x.line = line;
                got.ex[got.n++] = x;
                text = NULL;
            }
        } else {
            rc = -1;
        }
        free(text);
        free(label);
    }
    free(data);
    if (!rc && !got.n)
        rc = err_at(err, errsize, "%s: no examples", path);
    if (rc) {
        data_free(&got);
        for (uint32_t i = labels_before; i < labels->n; i++)
            free(labels->name[i]);
        labels->n = labels_before;
        return -1;
    }
    *s = got;
    return 0;
}
