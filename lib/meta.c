/* meta.c -- string key/value metadata a prompt carries into its files, and its META
 * section (docs/FORMAT.md): u32 count, then count times u32 key length, key, u32 value
 * length, value.  Keys and values are UTF-8 without NUL, checked when set and when
 * loaded, so bindings can hand them out as strings. */
#include "format.h"

#define META_MAX_KEY 255
#define META_MAX_VALUE 65535
#define META_MAX_PAIRS 1024

/* The offset of the first byte of s that does not start well-formed UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing past U+10FFFF), or len if none. */
static size_t utf8_bad_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i], lo = 0x80, hi = 0xbf;
        size_t n; /* continuation bytes */
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        else
            return i;
        if (len - i <= n || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        i += n + 1;
    }
    return len;
}

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

/* ulpt_prompt_set_meta, for a caller that holds p. */
static int set_meta(const char *func, ulpt_prompt *p, const char *key, const char *value)
{
    size_t klen = strlen(key), bad;
    if (klen == 0 || klen > META_MAX_KEY)
        return ulpt__error(ULPT_ERR_INVALID, func, "key length %zu is outside 1..%d", klen, META_MAX_KEY);
    if ((bad = utf8_bad_at((const unsigned char *)key, klen)) < klen)
        return ulpt__error(ULPT_ERR_INVALID, func, "key is not UTF-8 (byte %zu)", bad);
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
        return ulpt__error(ULPT_ERR_INVALID, func, "value of \"%s\" is %zu bytes, over %d", key, vlen,
                         META_MAX_VALUE);
    if ((bad = utf8_bad_at((const unsigned char *)value, vlen)) < vlen)
        return ulpt__error(ULPT_ERR_INVALID, func, "value of \"%s\" is not UTF-8 (byte %zu)", key, bad);
    if (at == SIZE_MAX && m->count >= META_MAX_PAIRS)
        return ulpt__error(ULPT_ERR_INVALID, func, "a prompt holds at most %d metadata keys",
                         META_MAX_PAIRS);
    char *v = copy(&p->al, value, vlen);
    if (!v)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for the value of \"%s\"", key);
    if (at != SIZE_MAX) {
        ulpt__free(&p->al, m->values[at]);
        m->values[at] = v;
        return ULPT_OK;
    }
    char *k = copy(&p->al, key, klen);
    if (!k || !reserve(&p->al, m)) {
        ulpt__free(&p->al, k);
        ulpt__free(&p->al, v);
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for metadata key \"%s\"", key);
    }
    m->keys[m->count] = k;
    m->values[m->count] = v;
    m->count++;
    return ULPT_OK;
}

int ulpt_prompt_set_meta(ulpt_prompt *p, const char *key, const char *value)
{
    if (!p || !key)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : "key");
    /* saves read the metadata */
    int rc = ulpt__lock_hold(__func__, &p->lock, "prompt", 1);
    if (rc)
        return rc;
    rc = set_meta(__func__, p, key, value);
    ulpt__lock_release(&p->lock);
    return rc;
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

/* ---- the META section ---------------------------------------------------------------- */

static size_t meta_bytes(const ulpt_meta *m)
{
    size_t n = 4;
    for (size_t i = 0; i < m->count; i++)
        n += 8 + strlen(m->keys[i]) + strlen(m->values[i]);
    return n;
}

static void write_meta(unsigned char *w, const void *ctx)
{
    const ulpt_meta *m = ctx;
    ulpt__put32(w, (uint32_t)m->count);
    w += 4;
    for (size_t i = 0; i < m->count; i++) {
        const char *str[2] = { m->keys[i], m->values[i] };
        for (int j = 0; j < 2; j++) {
            size_t l = strlen(str[j]);
            ulpt__put32(w, (uint32_t)l);
            memcpy(w + 4, str[j], l);
            w += 4 + l;
        }
    }
}

/* Optional: a reader that did not know it could skip it. */
ulpt_section_out ulpt__meta_section(const ulpt_meta *m)
{
    return (ulpt_section_out){ TAG_META, 0, meta_bytes(m), write_meta, m };
}

int ulpt__meta_check(const char *func, const ulpt_section *s)
{
    if (!s->data)
        return ULPT_OK;
    if (s->len < 4)
        return CORRUPT("metadata section of %zu bytes is too short", s->len);
    size_t count = ulpt__get32(s->data), pos = 4;
    if (count > META_MAX_PAIRS)
        return CORRUPT("metadata claims %zu pairs, at most %d", count, META_MAX_PAIRS);
    for (size_t i = 0; i < 2 * count; i++) { /* key, value, key, ... */
        const char *what = i % 2 ? "value" : "key";
        if (s->len - pos < 4)
            return CORRUPT("metadata pair %zu runs past its section", i / 2);
        size_t l = ulpt__get32(s->data + pos);
        pos += 4;
        if (l > s->len - pos || (i % 2 == 0 ? l == 0 || l > META_MAX_KEY : l > META_MAX_VALUE) ||
            memchr(s->data + pos, 0, l))
            return CORRUPT("metadata pair %zu has a bad %s", i / 2, what);
        if (utf8_bad_at(s->data + pos, l) < l)
            return CORRUPT("metadata pair %zu has a %s that is not UTF-8", i / 2, what);
        pos += l;
    }
    if (pos != s->len)
        return CORRUPT("metadata section has %zu stray bytes", s->len - pos);
    /* keys are unique: compare each with the ones before it (at most 1024) */
    size_t ka = 4;
    for (size_t i = 0; i < count; i++) {
        size_t kl = ulpt__get32(s->data + ka), next = ka + 4 + kl;
        next += 4 + ulpt__get32(s->data + next);
        for (size_t kb = 4; kb < ka;) {
            size_t ml = ulpt__get32(s->data + kb);
            if (ml == kl && memcmp(s->data + kb + 4, s->data + ka + 4, kl) == 0)
                return CORRUPT("metadata key %zu appears twice", i);
            kb += 4 + ml;
            kb += 4 + ulpt__get32(s->data + kb);
        }
        ka = next;
    }
    return ULPT_OK;
}

double ulpt__meta_bytes(size_t len)
{
    /* each pair's key and value copies and the value's passing copy take at most the
       bytes behind them; the two pointer arrays at most 8 bytes a pair each, twice over
       while they grow (old and new, up to 1024 pairs) */
    _Static_assert(sizeof(char *) <= 8 && META_MAX_PAIRS <= 1024, "docs/FORMAT.md, check 5");
    return 2.0 * len + 16.0 * (1024 + 512);
}

int ulpt__meta_load(const char *func, ulpt_prompt *p, const ulpt_section *s)
{
    if (!s->data)
        return ULPT_OK;
    size_t count = ulpt__get32(s->data), pos = 4;
    char key[META_MAX_KEY + 1];
    for (size_t i = 0; i < count; i++) {
        size_t kl = ulpt__get32(s->data + pos);
        memcpy(key, s->data + pos + 4, kl);
        key[kl] = '\0';
        pos += 4 + kl;
        size_t vl = ulpt__get32(s->data + pos);
        char *value = ulpt__alloc(&p->al, vl + 1);
        if (!value)
            return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for metadata");
        memcpy(value, s->data + pos + 4, vl);
        value[vl] = '\0';
        pos += 4 + vl;
        int rc = ulpt_prompt_set_meta(p, key, value); /* checked: only memory can fail */
        ulpt__free(&p->al, value);
        if (rc)
            return ulpt__error(rc, func, "no memory for metadata");
    }
    return ULPT_OK;
}
