/* test_tensor.c -- tensor payloads (lib/tensor.c): half-precision storage within its
 * precision, compressed sizes. */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

TEST_LOOP(half_precision_round_trips_within_their_precision, 0, 2)
{
    const int dtype = _i ? ULPT_DTYPE_BF16 : ULPT_DTYPE_F16;
    const double rel = _i ? 0x1p-8 : 0x1p-11; /* half an ulp: 8 and 11 significant bits */
    ulpt_prompt *p = varied_prompt(10, 2, 300, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    float *x = ulpt_prompt_params(p);
    x[0] = 1e-6f; /* a half subnormal */
    x[1] = -70000.0f;
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = dtype;
    void *buf = NULL;
    size_t len;
    if (dtype == ULPT_DTYPE_F16) { /* past 65504: refused rather than stored as inf */
        ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &so), ULPT_ERR_NONFINITE);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "Z[0][1]"));
        ck_assert_ptr_null(buf);
        x[1] = -65504.0f;
    }
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &so), ULPT_OK);
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, buf, len), ULPT_OK);
    same_prompt(p, q);
    const float *y = ulpt_prompt_params(q);
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++) {
        double tol = fabs(x[i]) * rel + (dtype == ULPT_DTYPE_F16 ? 0x1p-25 : 0);
        ck_assert_msg(fabs((double)y[i] - x[i]) <= tol, "param %zu: %.9g stored as %.9g", i,
                      x[i], y[i]);
    }
    ulpt_free(buf);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}

TEST(headline_prompt_file_sizes)
{
    ulpt_prompt *p = test_prompt(100, 2, 4096, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    uint64_t st = 9;
    float *x = ulpt_prompt_params(p); /* a trained prompt: no structure left to compress */
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        x[i] = (float)test_uniform(&st);
    ulpt_prompt_set_meta(p, "model", "tinylm-1.5M");
    size_t sizes[3];
    for (int dtype = 0; dtype < 3; dtype++) {
        ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
        so.dtype = dtype;
        void *buf;
        ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &sizes[dtype], &so), ULPT_OK);
        ulpt_free(buf);
    }
    printf("file sizes, n=100 r=2 d=4096: f32 %zu, f16 %zu, bf16 %zu bytes "
           "(vanilla prompt tuning: 1638400)\n",
           sizes[0], sizes[1], sizes[2]);
    ck_assert_uint_le(sizes[0], 34000);
    ck_assert_uint_le(sizes[1], 17500);
    ck_assert_uint_le(sizes[2], 17500);
    ulpt_prompt_free(p);
}
