/* meta.c -- string key/value metadata a prompt carries into its files. */
#include "internal.h"

#include <string.h>

#define META_MAX_KEY 255
#define META_MAX_VALUE 65535
#define META_MAX_PAIRS 1024

static char *copy(const ulpt_allocator *a, const char *s, size_t len)
{
    char *c = ulpt__alloc(a, len + 1);
    if (c)
        memcpy(c, s, len + 1);
    return c;
}

static size_t find(const ulpt_meta *m, const char *key)
{
    for (size_t i = 0; i < m->count; i++)
        if (strcmp(m->keys[i], key) == 0)
            return i;
    return SIZE_MAX;
}

void ulpt__meta_clear(const ulpt_allocator *a, ulpt_meta *m)
{
    for (size_t i = 0; i < m->count; i++) {
        ulpt__free(a, m->keys[i]);
        ulpt__free(a, m->values[i]);
    }
    ulpt__free(a, m->keys);
    ulpt__free(a, m->values);
    *m = (ulpt_meta){ 0 };
}

/* Grow both arrays to hold one more pair; either may have moved, none is lost. */
ULPT__MUST_CHECK static int reserve(const ulpt_allocator *a, ulpt_meta *m)
{
    if (m->count < m->cap)
        return 1;
    size_t cap = m->cap ? 2 * m->cap : 8;
    char **k = ulpt__alloc(a, cap * sizeof *k);
    char **v = k ? ulpt__alloc(a, cap * sizeof *v) : NULL;
    if (!v) {
        ulpt__free(a, k);
        return 0;
    }
    if (m->count) {
        memcpy(k, m->keys, m->count * sizeof *k);
        memcpy(v, m->values, m->count * sizeof *v);
    }
    ulpt__free(a, m->keys);
    ulpt__free(a, m->values);
    m->keys = k, m->values = v, m->cap = cap;
    return 1;
}

int ulpt_prompt_set_meta(ulpt_prompt *p, const char *key, const char *value)
{
    if (!p || !key)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : "key");
    size_t klen = strlen(key);
    if (klen == 0 || klen > META_MAX_KEY)
        return ULPT_FAIL(ULPT_ERR_INVALID, "key length %zu is outside 1..%d", klen, META_MAX_KEY);
    ulpt_meta *m = &p->meta;
    size_t at = find(m, key);
    if (!value) {
        if (at != SIZE_MAX) {
            ulpt__free(&p->al, m->keys[at]);
            ulpt__free(&p->al, m->values[at]);
            memmove(m->keys + at, m->keys + at + 1, (m->count - at - 1) * sizeof *m->keys);
            memmove(m->values + at, m->values + at + 1, (m->count - at - 1) * sizeof *m->values);
            m->count--;
        }
        return ULPT_OK;
    }
    size_t vlen = strlen(value);
    if (vlen > META_MAX_VALUE)
        return ULPT_FAIL(ULPT_ERR_INVALID, "value of \"%s\" is %zu bytes, over %d", key, vlen,
                         META_MAX_VALUE);
    if (at == SIZE_MAX && m->count >= META_MAX_PAIRS)
        return ULPT_FAIL(ULPT_ERR_INVALID, "a prompt holds at most %d metadata keys",
                         META_MAX_PAIRS);
    char *v = copy(&p->al, value, vlen);
    if (!v)
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for the value of \"%s\"", key);
    if (at != SIZE_MAX) {
        ulpt__free(&p->al, m->values[at]);
        m->values[at] = v;
        return ULPT_OK;
    }
    char *k = copy(&p->al, key, klen);
    if (!k || !reserve(&p->al, m)) {
        ulpt__free(&p->al, k);
        ulpt__free(&p->al, v);
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for metadata key \"%s\"", key);
    }
    m->keys[m->count] = k;
    m->values[m->count] = v;
    m->count++;
    return ULPT_OK;
}

const char *ulpt_prompt_get_meta(const ulpt_prompt *p, const char *key)
{
    if (!p || !key)
        return NULL;
    size_t at = find(&p->meta, key);
    return at == SIZE_MAX ? NULL : p->meta.values[at];
}

size_t ulpt_prompt_meta_count(const ulpt_prompt *p) { return p ? p->meta.count : 0; }

int ulpt_prompt_meta_at(const ulpt_prompt *p, size_t i, const char **key, const char **value)
{
    if (!p || !key || !value)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : !key ? "key" : "value");
    if (i >= p->meta.count)
        return ULPT_FAIL(ULPT_ERR_INVALID, "index %zu is past the %zu metadata pairs", i,
                         p->meta.count);
    *key = p->meta.keys[i];
    *value = p->meta.values[i];
    return ULPT_OK;
}
