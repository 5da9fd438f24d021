/* files.h -- what the tests of the file format share: scratch paths, file bytes, varied
 * prompts and their comparison, forging helpers. */
#ifndef ULPT_TEST_FILES_H
#define ULPT_TEST_FILES_H

#include "test.h"

#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* A scratch directory per test under the run's directory (Check forks each test, so the
 * pid is unique); main removes the whole tree at the end. */
static inline const char *scratch(const char *name)
{
    static char dir[160], path[512];
    snprintf(dir, sizeof dir, "%s/%ld", test_dir(), (long)getpid());
    mkdir(dir, 0777);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static inline void *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc(*len ? *len : 1);
    ck_assert_uint_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static inline ulpt_prompt *varied_prompt(uint32_t n, uint32_t r, uint32_t d, uint32_t g,
                                         int kind, unsigned flags)
{
    ulpt_prompt *p = test_prompt(n, r, d, g, kind, flags);
    test_perturb(p, 77);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "model", "tinylm-1.5M"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "task", "spam"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "empty", ""), ULPT_OK);
    return p;
}

static inline void same_prompt(ulpt_prompt *a, ulpt_prompt *b)
{
    ck_assert_uint_eq(ulpt_prompt_n_tokens(a), ulpt_prompt_n_tokens(b));
    ck_assert_uint_eq(ulpt_prompt_rank(a), ulpt_prompt_rank(b));
    ck_assert_uint_eq(ulpt_prompt_dim(a), ulpt_prompt_dim(b));
    ck_assert_uint_eq(ulpt_prompt_n_groups(a), ulpt_prompt_n_groups(b));
    ck_assert_uint_eq(ulpt_prompt_flags(a), ulpt_prompt_flags(b));
    for (uint32_t g = 0; g < ulpt_prompt_n_groups(a); g++) {
        const ulpt_projection *pa = ulpt_prompt_projection(a, g), *pb = ulpt_prompt_projection(b, g);
        ck_assert_uint_eq(ulpt_projection_seed(pa), ulpt_projection_seed(pb));
        ck_assert_int_eq(ulpt_projection_kind(pa), ulpt_projection_kind(pb));
    }
    ck_assert_uint_eq(ulpt_prompt_meta_count(a), ulpt_prompt_meta_count(b));
    for (size_t i = 0; i < ulpt_prompt_meta_count(a); i++) {
        const char *ka, *va, *kb, *vb;
        ulpt_prompt_meta_at(a, i, &ka, &va);
        ulpt_prompt_meta_at(b, i, &kb, &vb);
        ck_assert_str_eq(ka, kb);
        ck_assert_str_eq(va, vb);
    }
}

/* The saved bytes of a small varied prompt, in a malloc'd copy of `extra` more bytes
 * that the test may edit; *p gets the prompt. */
static inline unsigned char *small_file(ulpt_prompt **p, size_t *len, size_t extra)
{
    *p = varied_prompt(4, 2, 8, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    void *buf;
    ck_assert_int_eq(ulpt_prompt_save_buffer(*p, &buf, len, NULL), ULPT_OK);
    unsigned char *b = malloc(*len + extra);
    memcpy(b, buf, *len);
    ulpt_free(buf);
    return b;
}

static inline int refused(int rc)
{
    return rc == ULPT_ERR_CORRUPT || rc == ULPT_ERR_FORMAT || rc == ULPT_ERR_MISMATCH;
}

/* Rewrite the CRC after an edit, as a forger would. */
static inline void reseal(unsigned char *b, size_t len)
{
    uint32_t crc = (uint32_t)crc32(0, b, (uInt)(len - 4));
    for (int i = 0; i < 4; i++)
        b[len - 4 + i] = (unsigned char)(crc >> (8 * i));
}

static inline void put32le(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Offsets in a prompt file: header 24, SHAP section header 16, then the shape fields. */
#define SHAPE_AT (24 + 16)

/* The payload of section tag (e.g. "PARM") of file b, *n its length; NULL if absent. */
static inline const unsigned char *find_section(const unsigned char *b, size_t len,
                                                const char *tag, size_t *n)
{
    for (size_t pos = 24; pos + 16 <= len - 4;) {
        uint64_t l = 0;
        for (int i = 0; i < 8; i++)
            l |= (uint64_t)b[pos + 8 + i] << (8 * i);
        if (memcmp(b + pos, tag, 4) == 0) {
            *n = (size_t)l;
            return b + pos + 16;
        }
        pos += 16 + (size_t)l;
    }
    return NULL;
}

/* File b with section tag's payload replaced by (p, n), or the section appended (with
 * `flags`) when b has none; the length and CRC redone.  malloc'd, *out_len its size. */
static inline unsigned char *with_section(const unsigned char *b, size_t len, const char *tag,
                                          uint32_t flags, const void *p, size_t n,
                                          size_t *out_len)
{
    unsigned char *o = malloc(len + 16 + n), *w = o + 24;
    int found = 0;
    memcpy(o, b, 24);
    for (size_t pos = 24; pos + 16 <= len - 4;) {
        uint64_t l = 0;
        for (int i = 0; i < 8; i++)
            l |= (uint64_t)b[pos + 8 + i] << (8 * i);
        memcpy(w, b + pos, 16);
        if (memcmp(b + pos, tag, 4) == 0) {
            found = 1;
            for (int i = 0; i < 8; i++)
                w[8 + i] = (unsigned char)((uint64_t)n >> (8 * i));
            memcpy(w + 16, p, n);
            w += 16 + n;
        } else {
            memcpy(w + 16, b + pos + 16, (size_t)l);
            w += 16 + (size_t)l;
        }
        pos += 16 + (size_t)l;
    }
    if (!found) {
        memcpy(w, tag, 4);
        put32le(w + 4, flags);
        for (int i = 0; i < 8; i++)
            w[8 + i] = (unsigned char)((uint64_t)n >> (8 * i));
        memcpy(w + 16, p, n);
        w += 16 + n;
    }
    *out_len = (size_t)(w - o) + 4;
    for (int i = 0; i < 8; i++)
        o[16 + i] = (unsigned char)((uint64_t)*out_len >> (8 * i));
    reseal(o, *out_len);
    return o;
}

#endif
