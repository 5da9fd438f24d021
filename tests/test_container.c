/* test_container.c -- the container (lib/container.c): every corruption and truncation
 * refused, versions, sections a later minor version adds. */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

TEST(every_single_byte_corruption_is_refused)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *buf = small_file(&p, &len, 0), *bad = malloc(len);
    static const unsigned char flips[] = { 0x01, 0x80, 0xff };
    for (size_t i = 0; i < len; i++)
        for (size_t f = 0; f < sizeof flips; f++) {
            memcpy(bad, buf, len);
            bad[i] ^= flips[f];
            ulpt_prompt *q = NULL;
            int rc = ulpt_prompt_load_buffer(&q, bad, len);
            ck_assert_msg(refused(rc), "byte %zu ^ 0x%02x of %zu: rc %d", i, flips[f], len, rc);
            ck_assert_ptr_null(q);
            ck_assert_str_ne(ulpt_last_error(), "");
        }
    free(bad);
    free(buf);
    ulpt_prompt_free(p);
}

TEST(every_truncation_is_refused)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *buf = small_file(&p, &len, 0);
    for (size_t n = 0; n < len; n++) {
        unsigned char *cut = malloc(n ? n : 1); /* exact size: ASan sees any overread */
        memcpy(cut, buf, n);
        ulpt_prompt *q = NULL;
        int rc = ulpt_prompt_load_buffer(&q, cut, n);
        ck_assert_msg(refused(rc), "truncated to %zu of %zu: rc %d", n, len, rc);
        free(cut);
    }
    free(buf);
    ulpt_prompt_free(p);
}

TEST(newer_major_version_is_refused_naming_it)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    b[8] = 2, b[10] = 3; /* format 2.3 */
    reseal(b, len);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "2.3"));
    memcpy(b, "GIF89a..", 8);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "magic"));
    free(b);
    ulpt_prompt_free(p);
}

/* A newer minor version may add sections: optional ones are skipped, required ones are
 * refused.  Build such a file by splicing a section in before the trailer. */
TEST_LOOP(newer_minor_sections_are_skipped_when_optional, 0, 2)
{
    ulpt_prompt *p;
    size_t len;
    const size_t extra = 16 + 5;
    unsigned char *b = small_file(&p, &len, extra);
    const size_t n = len + extra;
    unsigned char *s = b + len - 4;
    memcpy(s, "XTRA", 4);
    put32le(s + 4, (uint32_t)_i); /* flags: 0 optional, 1 required */
    put32le(s + 8, 5), put32le(s + 12, 0);
    memcpy(s + 16, "hello", 5);
    b[10] = 1; /* minor 1 */
    for (int i = 0; i < 8; i++)
        b[16 + i] = (unsigned char)((uint64_t)n >> (8 * i));
    reseal(b, n);
    ulpt_prompt *q = NULL;
    if (_i == 0) {
        ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, n), ULPT_OK);
        ck_assert_mem_eq(ulpt_prompt_params(q), ulpt_prompt_params(p),
                         ulpt_prompt_num_params(p) * sizeof(float));
        ulpt_prompt_free(q);
    } else {
        ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, n), ULPT_ERR_FORMAT);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "XTRA"));
    }
    free(b);
    ulpt_prompt_free(p);
}

/* Each tag at most once, known or not; at most 64 sections (docs/FORMAT.md). */
TEST(repeated_tags_and_too_many_sections_are_refused)
{
    ulpt_prompt *p, *q = NULL;
    size_t len, n1, n2;
    unsigned char *b = small_file(&p, &len, 0);
    unsigned char *one = with_section(b, len, "XTRA", 0, "a", 1, &n1);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, one, n1), ULPT_OK); /* skipped */
    ulpt_prompt_free(q);
    q = NULL;
    /* a second XTRA: with_section replaces the first, so append the section by hand */
    unsigned char *two = malloc(n1 + 17);
    memcpy(two, one, n1 - 4);
    memcpy(two + n1 - 4, one + n1 - 4 - 17, 17);
    n2 = n1 + 17;
    for (int i = 0; i < 8; i++)
        two[16 + i] = (unsigned char)((uint64_t)n2 >> (8 * i));
    reseal(two, n2);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, two, n2), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "'XTRA' appears twice"));
    /* 3 sections of the prompt + 61 optional ones load; one more is refused */
    unsigned char *many = b;
    size_t n = len;
    for (int i = 0; i < 62; i++) {
        char tag[5];
        snprintf(tag, sizeof tag, "X%03d", i);
        size_t m;
        unsigned char *next = with_section(many, n, tag, 0, "", 0, &m);
        if (many != b)
            free(many);
        many = next, n = m;
        ck_assert_int_eq(ulpt_prompt_load_buffer(&q, many, n),
                         i < 61 ? ULPT_OK : ULPT_ERR_CORRUPT);
        ulpt_prompt_free(q);
        q = NULL;
    }
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "more than 64 sections"));
    free(many);
    free(two);
    free(one);
    free(b);
    ulpt_prompt_free(p);
}

/* SHAP grows only at its end in later minor versions: readers take the fields they know
 * and ignore the rest; a shorter one is refused. */
TEST(a_longer_shape_section_loads_and_a_shorter_one_is_refused)
{
    ulpt_prompt *p, *q = NULL;
    size_t len, n, shap_len;
    unsigned char *b = small_file(&p, &len, 0);
    const unsigned char *shap = find_section(b, len, "SHAP", &shap_len);
    ck_assert_uint_eq(shap_len, 48);
    unsigned char longer[56];
    memcpy(longer, shap, 48);
    memset(longer + 48, 0xee, 8);
    unsigned char *f = with_section(b, len, "SHAP", 1, longer, 56, &n);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, f, n), ULPT_OK);
    same_prompt(p, q);
    ulpt_prompt_free(q);
    free(f);
    f = with_section(b, len, "SHAP", 1, longer, 40, &n);
    q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, f, n), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "at least 48"));
    free(f);
    free(b);
    ulpt_prompt_free(p);
}
