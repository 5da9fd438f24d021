/* test_file.c -- prompt files (lib/file.c): round trips, the shape checks and
 * bounded allocation, the fingerprint, load_for_model, inspect, errors and out of memory. */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

static const struct {
    uint32_t n, r, d, g;
    int kind;
    unsigned flags;
} shapes[] = {
    { 4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0 },
    { 6, 3, 33, 3, ULPT_PROJ_GAUSSIAN, ULPT_NO_SCALE },
    { 4, 1, 5, 2, ULPT_PROJ_RADEMACHER, ULPT_NO_SHIFT },
    { 3, 16, 16, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT },
    { 100, 2, 4096, 1, ULPT_PROJ_KAIMING_UNIFORM, 0 },
};

TEST_LOOP(f32_round_trip_is_bit_exact_with_metadata, 0, (int)(sizeof shapes / sizeof shapes[0]))
{
    ulpt_prompt *p = varied_prompt(shapes[_i].n, shapes[_i].r, shapes[_i].d, shapes[_i].g,
                                   shapes[_i].kind, shapes[_i].flags);
    const char *path = scratch("p.ulpt");
    ck_assert_int_eq(ulpt_prompt_save(p, path, NULL), ULPT_OK);
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load(&q, path), ULPT_OK);
    same_prompt(p, q);
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q),
                     ulpt_prompt_num_params(p) * sizeof(float));
    ck_assert_str_eq(ulpt_prompt_get_meta(q, "model"), "tinylm-1.5M");
    ck_assert_str_eq(ulpt_prompt_get_meta(q, "empty"), "");
    for (size_t i = 0; i < ulpt_prompt_num_params(q); i++)
        ck_assert_float_eq(ulpt_prompt_grads(q)[i], 0.0f);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}

TEST(buffer_and_file_agree_byte_for_byte)
{
    ulpt_prompt *p = varied_prompt(8, 2, 64, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    for (int dtype = 0; dtype < 3; dtype++) {
        ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
        so.dtype = dtype;
        so.level = dtype * 4;
        const char *path = scratch("p.ulpt");
        ck_assert_int_eq(ulpt_prompt_save(p, path, &so), ULPT_OK);
        void *buf;
        size_t len, flen;
        ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &so), ULPT_OK);
        void *file = read_all(path, &flen);
        ck_assert_uint_eq(len, flen);
        ck_assert_mem_eq(buf, file, len);
        free(file);
        ulpt_free(buf);
    }
    ulpt_prompt_free(p);
}

static long largest_alloc;
static void *big_alloc(void *u, size_t n)
{
    (void)u;
    if ((long)n > largest_alloc)
        largest_alloc = (long)n;
    return malloc(n);
}
static void big_free(void *u, void *p) { (void)u, free(p); }

TEST(header_claiming_a_trillion_elements_is_refused_without_allocating)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    put32le(b + SHAPE_AT, 1000000);     /* n_tokens */
    put32le(b + SHAPE_AT + 8, 1000000); /* dim: 10^12 embedding values */
    put32le(b + SHAPE_AT + 40, 4000000); /* and a consistent parameter count */
    reseal(b, len);
    ulpt_allocator a = { big_alloc, NULL, big_free, NULL };
    ulpt_set_allocator(&a);
    largest_alloc = 0;
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "cannot come from"));
    ck_assert_int_le(largest_alloc, 0); /* nothing at all was allocated */
    put32le(b + SHAPE_AT + 40, 24); /* inconsistent count: refused as well, still no alloc */
    reseal(b, len);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_CORRUPT);
    ck_assert_int_le(largest_alloc, 0);
    ulpt_set_allocator(NULL);
    free(b);
    ulpt_prompt_free(p);
}

TEST(changed_projection_is_a_mismatch)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    b[SHAPE_AT + 16] ^= 1; /* another seed: P regenerates differently */
    reseal(b, len);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "projection"));
    free(b);
    ulpt_prompt_free(p);
}

TEST(load_for_model_refuses_another_model_naming_both)
{
    ulpt_prompt *p = varied_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    const char *path = scratch("m.ulpt");
    ulpt_prompt_save(p, path, NULL);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_for_model(&q, path, "gpt2"), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "tinylm-1.5M"));
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "gpt2"));
    ck_assert_ptr_null(q);
    ck_assert_int_eq(ulpt_prompt_load_for_model(&q, path, "tinylm-1.5M"), ULPT_OK);
    ulpt_prompt_free(q);
    ulpt_prompt_set_meta(p, "model", NULL);
    ulpt_prompt_save(p, path, NULL);
    ck_assert_int_eq(ulpt_prompt_load_for_model(&q, path, "gpt2"), ULPT_ERR_MISMATCH);
    ulpt_prompt_free(p);
}

TEST(file_errors_name_the_problem)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load(&q, "/nonexistent/dir/p.ulpt"), ULPT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "/nonexistent/dir/p.ulpt"));
    ck_assert_int_eq(ulpt_prompt_load(&q, "/tmp"), ULPT_ERR_IO);
    ck_assert_int_eq(ulpt_prompt_save(p, "/nonexistent/dir/p.ulpt", NULL), ULPT_ERR_IO);
    ck_assert_int_eq(ulpt_prompt_save(p, "", NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_save(NULL, "x", NULL), ULPT_ERR_INVALID);
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = 7;
    ck_assert_int_eq(ulpt_prompt_save(p, scratch("x"), &so), ULPT_ERR_INVALID);
    so = (ulpt_save_options)ULPT_SAVE_OPTIONS_INIT;
    so.level = 10;
    ck_assert_int_eq(ulpt_prompt_save(p, scratch("x"), &so), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, NULL, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, "", 0), ULPT_ERR_CORRUPT); /* empty file */
    ck_assert_ptr_null(q);
    ulpt_free(NULL);
    ulpt_prompt_free(p);
}

TEST(out_of_memory_during_save_and_load_fails_cleanly)
{
    ulpt_prompt *p = varied_prompt(6, 2, 40, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ulpt_optimizer_create(&o, p, NULL);
    char path[512], st_path[512]; /* scratch() reuses its buffer */
    snprintf(path, sizeof path, "%s", scratch("oom.ulpt"));
    snprintf(st_path, sizeof st_path, "%s", scratch("oom.safetensors"));
    ck_assert_int_eq(ulpt_checkpoint_save(p, o, path), ULPT_OK);
    long k;
    for (k = 0;; k++) { /* every allocation of a save, then of a load */
        test_alloc_install(k);
        void *buf = NULL;
        size_t len;
        int rc1 = ulpt_prompt_save_buffer(p, &buf, &len, NULL);
        ulpt_free(buf);
        int rc2 = ulpt_checkpoint_save(p, o, path);
        ulpt_prompt *q = NULL;
        ulpt_optimizer *oq = NULL;
        int rc3 = ulpt_checkpoint_load(&q, &oq, path);
        ulpt_optimizer_free(oq);
        ulpt_prompt_free(q);
        ulpt_file_info fi = ULPT_FILE_INFO_INIT;
        int rc4 = ulpt_file_inspect(path, &fi);
        int rc5 = ulpt_prompt_export_safetensors(p, st_path);
        char value[32];
        snprintf(value, sizeof value, "v%ld", k);
        size_t count = ulpt_prompt_meta_count(p);
        const char *old = ulpt_prompt_get_meta(p, "task");
        char before[64];
        snprintf(before, sizeof before, "%s", old ? old : "");
        int rc6 = ulpt_prompt_set_meta(p, k % 2 ? "task" : "new-key", value);
        if (rc6 == ULPT_ERR_NOMEM) { /* unchanged */
            ck_assert_uint_eq(ulpt_prompt_meta_count(p), count);
            ck_assert_str_eq(ulpt_prompt_get_meta(p, "task"), before);
        }
        ulpt_prompt_set_meta(p, "new-key", NULL);
        long live = test_alloc.live;
        test_alloc_remove();
        int rcs[] = { rc1, rc2, rc3, rc4, rc5, rc6 }, all_ok = 1;
        for (int i = 0; i < 6; i++) {
            ck_assert_msg(rcs[i] == ULPT_OK || rcs[i] == ULPT_ERR_NOMEM, "call %d: %d", i, rcs[i]);
            all_ok &= rcs[i] == ULPT_OK;
        }
        /* what the prompt holds now (metadata) came from this allocator; the rest is freed */
        ck_assert_int_le(live, 2 * (long)ulpt_prompt_meta_count(p) + 2);
        if (all_ok)
            break;
        ulpt_prompt *check; /* whatever failed, the file is still the good one */
        ulpt_optimizer *ocheck;
        ck_assert_int_eq(ulpt_checkpoint_load(&check, &ocheck, path), ULPT_OK);
        ulpt_optimizer_free(ocheck);
        ulpt_prompt_free(check);
    }
    ck_assert_int_gt(k, 10);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(inspect_describes_prompts_and_checkpoints)
{
    ulpt_prompt *p = varied_prompt(4, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ulpt_optimizer_create(&o, p, NULL);
    const char *path = scratch("i.ulpt");
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = ULPT_DTYPE_BF16;
    ck_assert_int_eq(ulpt_prompt_save(p, path, &so), ULPT_OK);
    ulpt_file_info fi = ULPT_FILE_INFO_INIT, untouched;
    memset(&untouched, 0x5a, sizeof untouched);
    untouched.version = ULPT_FILE_INFO_VERSION;
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_OK);
    ck_assert_int_eq(fi.kind, ULPT_FILE_PROMPT);
    ck_assert_uint_eq(fi.format_major, 1);
    ck_assert_uint_eq(fi.format_minor, 0);
    ck_assert_int_eq(fi.dtype, ULPT_DTYPE_BF16);
    size_t len;
    free(read_all(path, &len));
    ck_assert_uint_eq(fi.file_bytes, len);
    ck_assert_uint_lt(fi.stored_bytes, len);
    ck_assert_int_eq(ulpt_checkpoint_save(p, o, path), ULPT_OK);
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_OK);
    ck_assert_int_eq(fi.kind, ULPT_FILE_CHECKPOINT);
    ck_assert_int_eq(fi.dtype, ULPT_DTYPE_F32);
    /* damage: an error, and *info untouched */
    FILE *f = fopen(path, "r+b");
    fseek(f, 30, SEEK_SET);
    fputc(0x77, f);
    fclose(f);
    fi = untouched;
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_ERR_CORRUPT);
    ck_assert_mem_eq(&fi, &untouched, sizeof fi);
    ck_assert_int_eq(ulpt_file_inspect(NULL, &fi), ULPT_ERR_INVALID);
    fi.version = 2;
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_ERR_INVALID);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(non_finite_parameters_are_never_saved_served_or_loaded)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    float *x = ulpt_prompt_params(p);
    const size_t scale3 = 4 * 2 + 3; /* Z is 4 x 2, then scale */
    x[scale3] = NAN;
    float e[4 * 8];
    ck_assert_int_eq(ulpt_prompt_forward(p, e, 8), ULPT_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "scale[3]"));
    ck_assert_int_eq(ulpt_prompt_save(p, scratch("nan.ulpt"), NULL), ULPT_ERR_NONFINITE);
    x[scale3] = INFINITY;
    void *buf = NULL;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, NULL), ULPT_ERR_NONFINITE);
    ck_assert_ptr_null(buf);
    /* a forged file with a NaN in it (stored, resealed) is refused as corrupt */
    x[scale3] = 1.0f;
    ulpt_save_options raw = ULPT_SAVE_OPTIONS_INIT;
    raw.level = 0;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &raw), ULPT_OK);
    unsigned char *f = malloc(len);
    memcpy(f, buf, len);
    ulpt_free(buf);
    size_t data = len - 4 - ulpt_prompt_num_params(p) * 4; /* PARM data ends the file */
    const float nan = NAN;
    memcpy(f + data + scale3 * 4, &nan, 4);
    reseal(f, len);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, f, len), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "scale[3]"));
    free(f);
    free(b);
    ulpt_prompt_free(p);
}
