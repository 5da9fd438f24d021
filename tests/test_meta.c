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
