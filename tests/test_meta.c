/* test_meta.c -- metadata (lib/meta.c): set, replace, remove, iterate. */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

TEST(metadata_set_replace_remove_and_iterate)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ck_assert_ptr_null(ulpt_prompt_get_meta(p, "model"));
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "a", "1"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "b", "2"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "a", "3"), ULPT_OK); /* replace keeps place */
    const char *k, *v;
    ck_assert_int_eq(ulpt_prompt_meta_at(p, 0, &k, &v), ULPT_OK);
    ck_assert_str_eq(k, "a");
    ck_assert_str_eq(v, "3");
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "a", NULL), ULPT_OK);
    ck_assert_uint_eq(ulpt_prompt_meta_count(p), 1);
    ck_assert_int_eq(ulpt_prompt_meta_at(p, 1, &k, &v), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "", "x"), ULPT_ERR_INVALID);
    char longkey[300];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[299] = '\0';
    ck_assert_int_eq(ulpt_prompt_set_meta(p, longkey, "x"), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_set_meta(NULL, "a", "x"), ULPT_ERR_INVALID);
    ck_assert_uint_eq(ulpt_prompt_meta_count(p), 1);
    ulpt_prompt_free(p);
}

/* Keys and values are well-formed UTF-8 (docs/FORMAT.md, META): refused when set, with
 * the byte offset named, and accepted at every length of sequence. */
TEST(metadata_must_be_utf8_when_set)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    static const char *bad[] = {
        "\xc0\x80",         /* overlong NUL */
        "\xe0\x80\xaf",     /* overlong '/' */
        "\xed\xa0\x80",     /* surrogate U+D800 */
        "\xf4\x90\x80\x80", /* U+110000 */
        "ok\xe2\x82",       /* cut short */
        "a\x80",            /* lone continuation byte */
        "\xff",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_int_eq(ulpt_prompt_set_meta(p, "k", bad[i]), ULPT_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "not UTF-8"));
        ck_assert_int_eq(ulpt_prompt_set_meta(p, bad[i], "v"), ULPT_ERR_INVALID);
    }
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "k", "ok\xe2\x82"), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "byte 2"));
    ck_assert_uint_eq(ulpt_prompt_meta_count(p), 0);
    static const char *good[] = { "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e",
                                  "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80", "" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        ck_assert_int_eq(ulpt_prompt_set_meta(p, "k", good[i]), ULPT_OK);
        ck_assert_str_eq(ulpt_prompt_get_meta(p, "k"), good[i]);
    }
    ulpt_prompt_free(p);
}

/* ... and a file carrying anything else is refused as corrupt. */
TEST(metadata_that_is_not_utf8_is_refused_on_load)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q = NULL;
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "key", "A"), ULPT_OK);
    void *buf;
    size_t len;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, NULL), ULPT_OK);
    unsigned char *b = malloc(len);
    memcpy(b, buf, len);
    ulpt_free(buf);
    unsigned char *at = memmem(b, len, "key\x01\0\0\0A", 8);
    ck_assert_ptr_nonnull(at);
    at[7] = 0xff;
    reseal(b, len);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "value that is not UTF-8"));
    at[7] = 'A', at[0] = 0xc0, at[1] = 0xab; /* the key, overlong */
    reseal(b, len);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "key that is not UTF-8"));
    ck_assert_ptr_null(q);
    free(b);
    ulpt_prompt_free(p);
}
