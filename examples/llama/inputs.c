/* inputs.c -- users' data made ready for the engine: loading, the text layout, tokens,
 * labels, and what a prompt records of them (host.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "host.h"
#include "task.h"

/* ---- labels ------------------------------------------------------------------------ */

void labels_free(label_set *l)
{
    for (uint32_t c = 0; l->tokens && c < l->names.n; c++)
        free(l->tokens[c]);
    free(l->tokens);
    free(l->len);
    data_labels_free(&l->names);
    memset(l, 0, sizeof *l);
}

int labels_prepare(engine *e, data_labels *names, label_set *out)
{
    label_set l = { 0 };
    l.names = *names;
    *names = (data_labels){ 0 };
    l.tokens = calloc(l.names.n, sizeof *l.tokens);
    l.len = calloc(l.names.n, sizeof *l.len);
    if (!l.tokens || !l.len) {
        labels_free(&l);
        return fail("out of memory");
    }
    for (uint32_t c = 0; c < l.names.n; c++) {
        const char *s = l.names.name[c];
        if (engine_tokenize(e, s, strlen(s), 0, &l.tokens[c], &l.len[c])) {
            labels_free(&l);
            return fail("label \"%s\": %s", s, engine_error());
        }
        if (!l.len[c]) {
            labels_free(&l);
            return fail("label \"%s\" has no tokens", s);
        }
        if (l.len[c] > l.longest)
            l.longest = l.len[c];
    }
    l.view = (engine_labels){ (const int32_t *const *)l.tokens, l.len, l.names.n };
    *out = l;
    return 0;
}

/* ---- examples ---------------------------------------------------------------------- */

void task_set_free(task_set *t)
{
    for (size_t i = 0; t->tokens && i < t->n; i++)
        free(t->tokens[i]);
    free(t->tokens);
    free(t->len);
    free(t->label);
    free(t->line);
    memset(t, 0, sizeof *t);
}

/* The text as the model reads it: text + separator (chat: the text alone; the template
 * supplies the rest). */
static char *with_separator(const data_example *x, const text_format *f, size_t *len)
{
    const size_t sl = f->chat ? 0 : strlen(f->sep);
    char *s = malloc(x->len + sl + 1);
    if (!s)
        return NULL;
    memcpy(s, x->text, x->len);
    memcpy(s + x->len, f->sep, sl);
    s[x->len + sl] = '\0';
    *len = x->len + sl;
    return s;
}

int task_set_prepare(engine *e, const data_split *s, const text_format *f, uint32_t n_rows,
                     const label_set *labels, task_set *out)
{
    task_set t = { 0 };
    snprintf(t.path, sizeof t.path, "%s", s->path);
    t.tokens = calloc(s->n, sizeof *t.tokens);
    t.len = calloc(s->n, sizeof *t.len);
    t.label = calloc(s->n, sizeof *t.label);
    t.line = calloc(s->n, sizeof *t.line);
    if (!t.tokens || !t.len || !t.label || !t.line) {
        task_set_free(&t);
        return fail("out of memory");
    }
    t.n = s->n; /* entries not reached yet are NULL, which task_set_free skips */
    const uint32_t room = engine_n_ctx(e) - (uint32_t)engine_adds_bos(e);
    for (size_t i = 0; i < s->n; i++) {
        const data_example *x = &s->ex[i];
        size_t len;
        char *text = with_separator(x, f, &len);
        if (!text || engine_tokenize(e, text, len, f->chat, &t.tokens[i], &t.len[i])) {
            free(text);
            task_set_free(&t);
            return text ? fail("%s:%u: %s", s->path, x->line, engine_error())
                        : fail("out of memory");
        }
        free(text);
        t.label[i] = x->label;
        t.line[i] = x->line;
        const uint64_t need = (uint64_t)n_rows + t.len[i] + labels->longest - 1;
        if (need > room) {
            fail("%s:%u: the text is %u tokens; with %u prompt rows and the longest label (%u "
                 "tokens) a sequence needs %llu of the %u cells (--ctx)", s->path, x->line,
                 t.len[i], n_rows, labels->longest,
                 (unsigned long long)(need + (uint64_t)engine_adds_bos(e)), engine_n_ctx(e));
            task_set_free(&t);
            return 1;
        }
    }
    *out = t;
    return 0;
}

void task_seqs(const task_set *t, size_t first, size_t n, const float *E, uint32_t n_rows,
               engine_seq *out)
{
    for (size_t j = 0; j < n; j++)
        out[j] = (engine_seq){ E, n_rows, t->tokens[first + j], t->len[first + j], 1, NULL };
}

uint32_t predict(const double *scores, uint32_t n_labels)
{
    uint32_t best = 0;
    for (uint32_t c = 1; c < n_labels; c++)
        if (scores[c] > scores[best])
            best = c;
    return best;
}

double label_loss(const double *scores, uint32_t n_labels, uint32_t gold)
{
    double top = scores[0], sum = 0;
    for (uint32_t c = 1; c < n_labels; c++)
        top = fmax(top, scores[c]);
    for (uint32_t c = 0; c < n_labels; c++)
        sum += exp(scores[c] - top);
    return top + log(sum) - scores[gold];
}

/* ---- loading ----------------------------------------------------------------------- */

/* A tinylm task split (docs/TINYLM.md) as data: label c is its name's first byte. */
static int from_tinylm(const char *dir, const char *split, data_labels *names, data_split *out)
{
    task_split ts = { 0 };
    char err[4608];
    if (task_split_load(&ts, dir, split, UINT32_MAX, 256, err, sizeof err))
        return fail("%s", err);
    data_labels mine = { 0 };
    int rc = 0;
    for (int c = 0; c < 2 && !rc; c++) {
        char one[2] = { ts.names[c][0], 0 };
        uint32_t at;
        if (data_labels_add(&mine, one, &at, err, sizeof err))
            rc = fail("%s: %s", ts.path, err);
    }
    if (!rc && names->n) { /* labels given (by the prompt or --labels): the same two */
        for (uint32_t c = 0; c < 2 && !rc; c++)
            if (names->n != 2 || strcmp(names->name[c], mine.name[c]))
                rc = fail("%s: its labels (\"%s\", \"%s\") are not the prompt's or --labels'",
                          ts.path, mine.name[0], mine.name[1]);
    }
    data_split s = { 0 };
    snprintf(s.path, sizeof s.path, "%s", ts.path);
    s.ex = rc ? NULL : calloc(ts.n, sizeof *s.ex);
    if (!rc && !s.ex)
        rc = fail("out of memory");
    for (size_t i = 0; !rc && i < ts.n; i++, s.n++) {
        data_example *x = &s.ex[i];
        if (!(x->text = malloc(ts.ex[i].len + 1))) {
            rc = fail("out of memory");
            break;
        }
        memcpy(x->text, ts.ex[i].text, ts.ex[i].len);
        x->text[ts.ex[i].len] = '\0';
        x->len = ts.ex[i].len;
        x->label = (uint32_t)ts.ex[i].label;
        x->line = (uint32_t)i + 2; /* after the header line */
    }
    task_split_free(&ts);
    if (rc) {
        data_free(&s);
        data_labels_free(&mine);
        return rc;
    }
    if (!names->n)
        *names = mine;
    else
        data_labels_free(&mine);
    *out = s;
    return 0;
}

static int load_file(const char *path, data_labels *names, data_split *out)
{
    char err[4608];
    if (data_load(out, path, names, names->n == 0, err, sizeof err))
        return fail("%s", err);
    if (names->n < 2)
        return fail("%s: one label (\"%s\") is no choice; give --labels", path, names->name[0]);
    return 0;
}

int task_load(const char *dir, const options *o, data_labels *names, text_format *f,
              data_split *train, data_split *valid, data_split *test)
{
    if (dir) {
        if (o->train || o->valid || o->test)
            return fail("give a task directory or --train/--valid/--test files, not both");
        if (o->chat || o->sep)
            return fail("a tinylm task directory has its own layout: no --chat or --sep");
        snprintf(f->sep, sizeof f->sep, "\n");
        f->chat = 0;
        if (train && from_tinylm(dir, "train", names, train))
            return 1;
        if (test && from_tinylm(dir, "test", names, test))
            return 1;
        return 0;
    }
    if (train && (!o->train || load_file(o->train, names, train)))
        return o->train ? 1 : fail("--train FILE is needed (or a task directory)");
    if (valid && o->valid && load_file(o->valid, names, valid))
        return 1;
    if (test && o->test && load_file(o->test, names, test))
        return 1;
    return 0;
}

/* ---- what a prompt records --------------------------------------------------------- */

int format_to_prompt(ulpt_prompt *p, const text_format *f, const data_labels *names)
{
    char *joined = data_labels_join(names);
    if (!joined)
        return fail("out of memory");
    int ok = ulpt_prompt_set_meta(p, "labels", joined) == ULPT_OK &&
             ulpt_prompt_set_meta(p, "input.chat", f->chat ? "1" : "0") == ULPT_OK &&
             ulpt_prompt_set_meta(p, "input.sep", f->chat ? NULL : f->sep) == ULPT_OK;
    free(joined);
    return ok ? 0 : fail("%s", ulpt_last_error());
}

int format_from_prompt(const ulpt_prompt *p, text_format *f, data_labels *names)
{
    const char *chat = ulpt_prompt_get_meta(p, "input.chat");
    const char *sep = ulpt_prompt_get_meta(p, "input.sep");
    const char *labels = ulpt_prompt_get_meta(p, "labels");
    if (chat)
        f->chat = !strcmp(chat, "1");
    if (sep) {
        if (strlen(sep) >= sizeof f->sep)
            return fail("the prompt's separator is longer than %zu bytes", sizeof f->sep - 1);
        snprintf(f->sep, sizeof f->sep, "%s", sep);
    }
    if (labels && !names->n) {
        char err[512];
        if (data_labels_parse(names, labels, '\n', err, sizeof err))
            return fail("the prompt's labels: %s", err);
    }
    return 0;
}
