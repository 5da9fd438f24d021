/* test_safetensors.c -- the safetensors export (lib/safetensors.c). */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

TEST(safetensors_export_holds_the_embeddings)
{
    ulpt_prompt *p = varied_prompt(5, 2, 24, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    const char *path = scratch("e.safetensors");
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, path), ULPT_OK);
    size_t len;
    unsigned char *b = read_all(path, &len);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)b[i] << (8 * i);
    ck_assert_uint_eq(hl % 8, 0);
    ck_assert_uint_eq(len, 8 + hl + 5 * 24 * 4);
    char *json = strndup((char *)b + 8, hl);
    ck_assert_ptr_nonnull(strstr(json, "\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[5,24],"
                                       "\"data_offsets\":[0,480]}"));
    float e[5 * 24];
    ulpt_prompt_forward(p, e, 24);
    ck_assert_mem_eq(b + 8 + hl, e, sizeof e); /* little-endian host */
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, "/nonexistent/e.safetensors"), ULPT_ERR_IO);
    ck_assert_int_eq(ulpt_prompt_export_safetensors(NULL, path), ULPT_ERR_INVALID);
    free(json);
    free(b);
    ulpt_prompt_free(p);
}

/* A NaN parameter is refused by name; the file already there keeps its bytes and no
 * new file appears. */
TEST(safetensors_export_refuses_a_nan_parameter_and_writes_nothing)
{
    ulpt_prompt *p = varied_prompt(5, 2, 24, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    char path[512], fresh[512]; /* scratch() reuses its buffer */
    snprintf(path, sizeof path, "%s", scratch("nan.safetensors"));
    snprintf(fresh, sizeof fresh, "%s", scratch("nan-fresh.safetensors"));
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, path), ULPT_OK);
    size_t len, len2;
    unsigned char *before = read_all(path, &len);
    ulpt_prompt_params(p)[5 * 2 + 24 + 7] = NAN; /* shift[7] */
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, path), ULPT_ERR_NONFINITE);
    ck_assert_str_eq(ulpt_last_error(),
                     "ulpt_prompt_export_safetensors: parameter shift[7] is nan");
    unsigned char *after = read_all(path, &len2);
    ck_assert_uint_eq(len2, len);
    ck_assert_mem_eq(after, before, len);
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, fresh), ULPT_ERR_NONFINITE);
    ck_assert_int_ne(access(fresh, F_OK), 0);
    free(before), free(after);
    ulpt_prompt_free(p);
}
