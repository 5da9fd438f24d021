/* test_checkpoint.c -- checkpoints (lib/checkpoint.c): resuming is bit-identical, first-
 * order or forward-only; format 1.0 checkpoints still load. */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

static int bowl(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    (void)user;
    *loss = 0;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        double t = sin(0.37 * (double)k), diff = e[k] - t;
        grad[k] = (float)diff;
        *loss += 0.5 * diff * diff;
    }
    return 0;
}

static ulpt_optimizer *resume_optimizer(ulpt_prompt *p, int kind)
{
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.kind = kind;
    oo.lr = 0.05;
    oo.momentum = kind == ULPT_OPT_SGD ? 0.9 : 0.0;
    oo.max_grad_norm = 1.0;
    oo.schedule = ULPT_SCHED_LINEAR;
    oo.warmup_steps = 5;
    oo.total_steps = 40;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    return o;
}

TEST_LOOP(checkpoint_resume_is_bit_identical, ULPT_OPT_SGD, ULPT_OPT_ADAMW + 1)
{
    const int kind = _i; /* SGD, Adam, AdamW */
    ulpt_prompt *a = test_prompt(12, 2, 40, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *b = test_prompt(12, 2, 40, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *oa = resume_optimizer(a, kind), *ob = resume_optimizer(b, kind);
    for (int t = 0; t < 40; t++)
        ck_assert_int_eq(ulpt_train_step(a, oa, bowl, NULL, NULL), ULPT_OK);
    for (int t = 0; t < 20; t++)
        ck_assert_int_eq(ulpt_train_step(b, ob, bowl, NULL, NULL), ULPT_OK);
    const char *path = scratch("ckpt.ulpt");
    ck_assert_int_eq(ulpt_checkpoint_save(b, ob, path), ULPT_OK);
    ulpt_optimizer_free(ob);
    ulpt_prompt_free(b);
    ck_assert_int_eq(ulpt_checkpoint_load(&b, &ob, path), ULPT_OK);
    ck_assert_uint_eq(ulpt_optimizer_step_count(ob), 20);
    for (int t = 0; t < 20; t++)
        ck_assert_int_eq(ulpt_train_step(b, ob, bowl, NULL, NULL), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(a), ulpt_prompt_params(b),
                     ulpt_prompt_num_params(a) * sizeof(float));
    ck_assert_uint_eq(ulpt_optimizer_step_count(ob), 40);
    /* a checkpoint is also a prompt file; a prompt file is not a checkpoint */
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load(&q, path), ULPT_OK);
    ulpt_prompt_free(q);
    ulpt_prompt_save(a, path, NULL);
    ulpt_optimizer *oq = NULL;
    ck_assert_int_eq(ulpt_checkpoint_load(&q, &oq, path), ULPT_ERR_FORMAT);
    ck_assert_int_eq(ulpt_checkpoint_save(a, ob, path), ULPT_ERR_MISMATCH);
    ulpt_optimizer_free(oa);
    ulpt_optimizer_free(ob);
    ulpt_prompt_free(a);
    ulpt_prompt_free(b);
}

/* A checkpoint is float32 throughout (docs/FORMAT.md, MOM1/MOM2): another dtype in PARM
 * or in a moment is refused with ULPT_ERR_FORMAT by every reader; OPTM may grow at its
 * end but not shrink. */
TEST(checkpoint_dtypes_and_optimizer_section_size)
{
    ulpt_prompt *p = varied_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q = NULL;
    ulpt_optimizer *o, *oq = NULL;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    char path[512];
    snprintf(path, sizeof path, "%s", scratch("c.ulpt"));
    ck_assert_int_eq(ulpt_checkpoint_save(p, o, path), ULPT_OK);
    size_t len, hl, n16 = 0, n, l = 0;
    unsigned char *ck = read_all(path, &len);
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = ULPT_DTYPE_F16, so.level = 0;
    void *half;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &half, &hl, &so), ULPT_OK);
    const unsigned char *parm16 = find_section(half, hl, "PARM", &n16);
    const char *tags[] = { "PARM", "MOM1" };
    for (int t = 0; t < 2; t++) { /* the f16 payload has the right count for either */
        unsigned char *f = with_section(ck, len, tags[t], 1, parm16, n16, &n);
        FILE *out = fopen(path, "wb");
        fwrite(f, 1, n, out);
        fclose(out);
        ck_assert_int_eq(ulpt_checkpoint_load(&q, &oq, path), ULPT_ERR_FORMAT);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "must be f32"));
        ck_assert_int_eq(ulpt_prompt_load_buffer(&q, f, n), t == 0 ? ULPT_ERR_FORMAT : ULPT_OK);
        ulpt_prompt_free(q);
        q = NULL;
        free(f);
    }
    ulpt_free(half);
    const unsigned char *optm = find_section(ck, len, "OPTM", &l);
    ck_assert_uint_eq(l, 88);
    unsigned char grown[96];
    memcpy(grown, optm, 88);
    memset(grown + 88, 0x7f, 8);
    for (size_t size = 80; size <= 96; size += 16) {
        unsigned char *f = with_section(ck, len, "OPTM", 1, grown, size, &n);
        FILE *out = fopen(path, "wb");
        fwrite(f, 1, n, out);
        fclose(out);
        int rc = ulpt_checkpoint_load(&q, &oq, path);
        ck_assert_int_eq(rc, size < 88 ? ULPT_ERR_CORRUPT : ULPT_OK);
        if (!rc)
            ck_assert_uint_eq(ulpt_optimizer_step_count(oq), ulpt_optimizer_step_count(o));
        ulpt_optimizer_free(oq);
        ulpt_prompt_free(q);
        q = NULL, oq = NULL;
        free(f);
    }
    free(ck);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* ---- forward-only checkpoints (format 1.1) ---------------------------------------- */

/* Losses only: 1/2 |E - T|^2 with T_k = sin(0.37 k), for each perturbed prompt. */
static int bowl_losses(void *user, const float *e, uint32_t count, uint32_t n, uint32_t d,
                       double *losses)
{
    (void)user;
    for (uint32_t c = 0; c < count; c++) {
        const float *x = e + (size_t)c * n * d;
        losses[c] = 0;
        for (size_t k = 0; k < (size_t)n * d; k++) {
            double diff = x[k] - sin(0.37 * (double)k);
            losses[c] += 0.5 * diff * diff;
        }
    }
    return 0;
}

static ulpt_zo *zo_for(ulpt_prompt *p, ulpt_optimizer *o, int dist, uint64_t position)
{
    ulpt_zo_options zo = ULPT_ZO_OPTIONS_INIT;
    zo.epsilon = 1e-2, zo.directions = 2, zo.batch = 3, zo.distribution = dist;
    zo.seed = 0xABCDEF0123456789u;
    ulpt_zo *z = NULL;
    ck_assert_int_eq(ulpt_zo_create(&z, p, o, &zo), ULPT_OK);
    ck_assert_int_eq(ulpt_zo_set_position(z, position), ULPT_OK);
    return z;
}

/* N steps straight, or N/2, save, load, N/2: the same bits and the same position, with
 * the schedule, clipping and both distributions; the file is format 1.1. */
TEST_LOOP(zo_checkpoint_resume_is_bit_identical, 0, 2)
{
    const int dist = _i ? ULPT_ZO_GAUSSIAN : ULPT_ZO_RADEMACHER;
    ulpt_prompt *a = test_prompt(6, 2, 16, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *b = test_prompt(6, 2, 16, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *oa = resume_optimizer(a, ULPT_OPT_ADAMW), *ob = resume_optimizer(b, ULPT_OPT_ADAMW);
    ulpt_zo *za = zo_for(a, oa, dist, 0xFFFFFFF0u), *zb = zo_for(b, ob, dist, 0xFFFFFFF0u);
    for (int t = 0; t < 40; t++) /* the position crosses 2^32 */
        ck_assert_int_eq(ulpt_zo_step(NULL, za, bowl_losses, NULL), ULPT_OK);
    for (int t = 0; t < 20; t++)
        ck_assert_int_eq(ulpt_zo_step(NULL, zb, bowl_losses, NULL), ULPT_OK);
    const char *path = scratch("zo.ulpt");
    ck_assert_int_eq(ulpt_zo_checkpoint_save(zb, path), ULPT_OK);
    ulpt_zo_free(zb);
    ulpt_optimizer_free(ob);
    ulpt_prompt_free(b);
    b = NULL, ob = NULL, zb = NULL;
    ck_assert_int_eq(ulpt_zo_checkpoint_load(&b, &ob, &zb, path), ULPT_OK);
    ck_assert_ptr_eq(ulpt_zo_prompt(zb), b);
    ck_assert_ptr_eq(ulpt_zo_optimizer(zb), ob);
    ck_assert_uint_eq(ulpt_zo_position(zb), (uint64_t)0xFFFFFFF0u + 40);
    ck_assert_uint_eq(ulpt_optimizer_step_count(ob), 20);
    ulpt_zo_options x = ULPT_ZO_OPTIONS_INIT, y = ULPT_ZO_OPTIONS_INIT;
    ck_assert_int_eq(ulpt_zo_get_options(&x, za), ULPT_OK);
    ck_assert_int_eq(ulpt_zo_get_options(&y, zb), ULPT_OK);
    ck_assert_uint_eq(x.seed, y.seed);
    ck_assert_double_eq(x.epsilon, y.epsilon);
    ck_assert_uint_eq(x.directions, y.directions);
    ck_assert_uint_eq(x.batch, y.batch);
    ck_assert_int_eq(x.distribution, y.distribution);
    ck_assert_int_eq(x.perturb, y.perturb);
    for (int t = 0; t < 20; t++)
        ck_assert_int_eq(ulpt_zo_step(NULL, zb, bowl_losses, NULL), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(a), ulpt_prompt_params(b),
                     ulpt_prompt_num_params(a) * sizeof(float));
    ck_assert_uint_eq(ulpt_zo_position(zb), ulpt_zo_position(za));
    ulpt_file_info info = ULPT_FILE_INFO_INIT;
    ck_assert_int_eq(ulpt_file_inspect(path, &info), ULPT_OK);
    ck_assert_int_eq(info.kind, ULPT_FILE_CHECKPOINT);
    ck_assert_uint_eq(info.format_minor, 1);
    /* files without forward-only state stay format 1.0 */
    ck_assert_int_eq(ulpt_checkpoint_save(a, oa, path), ULPT_OK);
    ck_assert_int_eq(ulpt_file_inspect(path, &info), ULPT_OK);
    ck_assert_uint_eq(info.format_minor, 0);
    ck_assert_int_eq(ulpt_prompt_save(a, path, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_file_inspect(path, &info), ULPT_OK);
    ck_assert_uint_eq(info.format_minor, 0);
    ulpt_zo_free(za), ulpt_zo_free(zb);
    ulpt_optimizer_free(oa), ulpt_optimizer_free(ob);
    ulpt_prompt_free(a), ulpt_prompt_free(b);
}

/* The ZOST section is optional: the first-order loader (and a 1.0 library) reads the
 * same prompt and optimizer and skips it.  An ordinary checkpoint holds no stream, and
 * the forward-only loader says so, leaving its out-parameters alone. */
TEST(zo_checkpoint_is_also_an_ordinary_checkpoint)
{
    ulpt_prompt *p = test_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q = NULL;
    ulpt_optimizer *o = resume_optimizer(p, ULPT_OPT_ADAM), *oq = NULL;
    ulpt_zo *z = zo_for(p, o, ULPT_ZO_RADEMACHER, 0);
    for (int t = 0; t < 5; t++)
        ck_assert_int_eq(ulpt_zo_step(NULL, z, bowl_losses, NULL), ULPT_OK);
    char path[512], plain[512];
    snprintf(path, sizeof path, "%s", scratch("zo.ulpt"));
    snprintf(plain, sizeof plain, "%s", scratch("plain.ulpt"));
    ck_assert_int_eq(ulpt_zo_checkpoint_save(z, path), ULPT_OK);
    ck_assert_int_eq(ulpt_checkpoint_load(&q, &oq, path), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q),
                     ulpt_prompt_num_params(p) * sizeof(float));
    ck_assert_uint_eq(ulpt_optimizer_step_count(oq), 5);
    ulpt_optimizer_free(oq);
    ulpt_prompt_free(q);
    ck_assert_int_eq(ulpt_prompt_load(&q, path), ULPT_OK);
    ulpt_prompt_free(q);

    ck_assert_int_eq(ulpt_checkpoint_save(p, o, plain), ULPT_OK);
    ulpt_prompt *x = (ulpt_prompt *)plain;
    ulpt_optimizer *y = (ulpt_optimizer *)plain;
    ulpt_zo *w = (ulpt_zo *)plain;
    ck_assert_int_eq(ulpt_zo_checkpoint_load(&x, &y, &w, plain), ULPT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "without forward-only state"));
    ck_assert_ptr_eq(x, (ulpt_prompt *)plain);
    ck_assert_ptr_eq(y, (ulpt_optimizer *)plain);
    ck_assert_ptr_eq(w, (ulpt_zo *)plain);
    ulpt_prompt_save(p, plain, NULL);
    ck_assert_int_eq(ulpt_zo_checkpoint_load(&x, &y, &w, plain), ULPT_ERR_FORMAT);
    ck_assert_int_eq(ulpt_zo_checkpoint_load(NULL, &y, &w, path), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_load(&x, NULL, &w, path), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_load(&x, &y, NULL, path), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_load(&x, &y, &w, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_save(NULL, path), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_save(z, NULL), ULPT_ERR_INVALID);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* A checkpoint written by libulpt 1.0.0 (format 1.0), kept byte for byte: n_tokens 4,
 * rank 2, dim 8, projection seed 7, init seed 3, AdamW lr 0.1, three ulpt_train_step of
 * L = 1/2 sum (E - 0.25)^2.  Later libraries must load it as it is. */
static const unsigned char checkpoint_1_0[] = {
    0x89, 0x55, 0x4c, 0x50, 0x54, 0x0d, 0x0a, 0x1a, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x70, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x53, 0x48, 0x41, 0x50, 0x01, 0x00, 0x00, 0x00,
    0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd2, 0x81, 0x7f, 0xda, 0x00, 0x00, 0x00, 0x00,
    0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4d, 0x45, 0x54, 0x41, 0x00, 0x00, 0x00, 0x00,
    0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x41, 0x52, 0x4d,
    0x01, 0x00, 0x00, 0x00, 0x78, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x77, 0x72, 0x9d, 0x3f, 0xbc, 0xc1, 0x64, 0xbf, 0x3f, 0x87, 0x28, 0x3e,
    0x84, 0x47, 0x8c, 0x3e, 0xc0, 0x46, 0xa6, 0x3f, 0x74, 0xa9, 0x8b, 0xbe, 0x36, 0x8a, 0x76, 0x3c,
    0x1d, 0x95, 0x90, 0xbe, 0xc5, 0x48, 0x34, 0x3f, 0xa5, 0x70, 0x33, 0x3f, 0x31, 0x6d, 0x35, 0x3f,
    0xed, 0x4a, 0x34, 0x3f, 0xbe, 0xb8, 0x34, 0x3f, 0x95, 0x76, 0x34, 0x3f, 0x0e, 0x91, 0x32, 0x3f,
    0x2e, 0x7d, 0x34, 0x3f, 0x2f, 0xc4, 0x07, 0x3d, 0x3b, 0x21, 0x7c, 0x3e, 0xaf, 0x30, 0x90, 0x3e,
    0xce, 0xf7, 0xb2, 0x3d, 0xa6, 0x96, 0x95, 0x3e, 0x58, 0x24, 0x96, 0x3e, 0x38, 0x9b, 0x3a, 0x3e,
    0x18, 0x23, 0x96, 0x3e, 0x4f, 0x50, 0x54, 0x4d, 0x01, 0x00, 0x00, 0x00, 0x58, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9a, 0x99, 0x99, 0x99,
    0x99, 0x99, 0xb9, 0x3f, 0xcd, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xec, 0x3f, 0x2b, 0x87, 0x16, 0xd9,
    0xce, 0xf7, 0xef, 0x3f, 0x3a, 0x8c, 0x30, 0xe2, 0x8e, 0x79, 0x45, 0x3e, 0x7b, 0x14, 0xae, 0x47,
    0xe1, 0x7a, 0x84, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4d, 0x4f, 0x4d, 0x31,
    0x01, 0x00, 0x00, 0x00, 0x78, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xdc, 0x37, 0x00, 0x3f, 0xd0, 0x7e, 0xf2, 0xbe, 0xe8, 0x4b, 0xf9, 0x3d,
    0x62, 0x42, 0x38, 0x3d, 0xef, 0xc3, 0x03, 0x3f, 0xf5, 0xe9, 0x83, 0xbe, 0x7b, 0xb4, 0xc5, 0xbb,
    0xc6, 0xb0, 0x73, 0xbe, 0x3c, 0xaf, 0x50, 0x3d, 0xf3, 0xab, 0x24, 0x3d, 0x4e, 0x00, 0x05, 0x3e,
    0xaf, 0x02, 0x49, 0x3d, 0x22, 0x5d, 0xdc, 0x3e, 0xed, 0xf1, 0xe0, 0x3e, 0x8c, 0x13, 0x0d, 0x3d,
    0xe8, 0xbb, 0xaf, 0x3f, 0x9c, 0xc5, 0x94, 0x3b, 0x38, 0xde, 0x8a, 0xbd, 0x21, 0xb3, 0x86, 0xbe,
    0x1e, 0x84, 0xa1, 0xbc, 0x5d, 0x7b, 0x1a, 0xbf, 0x06, 0xa8, 0x1a, 0xbf, 0xaa, 0xa9, 0x33, 0xbc,
    0x92, 0x09, 0x7b, 0xbf, 0x4d, 0x4f, 0x4d, 0x32, 0x01, 0x00, 0x00, 0x00, 0x78, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x98, 0xd4, 0x3b, 0x3c,
    0xb8, 0xb0, 0x2d, 0x3c, 0xa7, 0x17, 0x5a, 0x3a, 0xa7, 0x28, 0x0c, 0x39, 0xd2, 0x14, 0x46, 0x3c,
    0x74, 0x75, 0x60, 0x3b, 0x35, 0x92, 0x0c, 0x37, 0x94, 0xa2, 0x41, 0x3b, 0xc5, 0x07, 0x00, 0x39,
    0xc0, 0x6b, 0x91, 0x38, 0x6f, 0x88, 0x57, 0x3a, 0xd6, 0x69, 0xee, 0x38, 0xb2, 0x5b, 0x0d, 0x3c,
    0xe0, 0x10, 0x11, 0x3c, 0xa2, 0xf5, 0x4b, 0x38, 0xee, 0x2c, 0xb1, 0x3d, 0x48, 0xee, 0xa9, 0x38,
    0xe2, 0x32, 0x0a, 0x3a, 0x6d, 0x04, 0x77, 0x3b, 0xaf, 0xc4, 0xb9, 0x38, 0x5a, 0xe4, 0x88, 0x3c,
    0x8a, 0x21, 0x87, 0x3c, 0xe3, 0x97, 0x23, 0x39, 0xcc, 0x64, 0x31, 0x3d, 0x93, 0xfa, 0x09, 0xd6,
};

static int quarter_bowl(void *user, const float *e, uint32_t n, uint32_t d, float *g, double *l)
{
    (void)user;
    *l = 0;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        double t = e[k] - 0.25;
        *l += 0.5 * t * t;
        g[k] = (float)t;
    }
    return 0;
}

TEST(format_1_0_checkpoint_still_loads_and_resumes)
{
    const char *path = scratch("format-1.0.ulpt");
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(checkpoint_1_0, 1, sizeof checkpoint_1_0, f), sizeof checkpoint_1_0);
    ck_assert_int_eq(fclose(f), 0);
    ulpt_file_info info = ULPT_FILE_INFO_INIT;
    ck_assert_int_eq(ulpt_file_inspect(path, &info), ULPT_OK);
    ck_assert_uint_eq(info.format_major, 1);
    ck_assert_uint_eq(info.format_minor, 0);

    /* the same run today */
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = 4, po.dim = 8, po.projection_seed = 7, po.init_seed = 3;
    ulpt_prompt *p, *q = NULL;
    ulpt_optimizer *o, *oq = NULL;
    ck_assert_int_eq(ulpt_prompt_create(&p, &po), ULPT_OK);
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.lr = 0.1;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    for (int t = 0; t < 3; t++)
        ck_assert_int_eq(ulpt_train_step(p, o, quarter_bowl, NULL, NULL), ULPT_OK);

    /* the parameters 1.0 held when it wrote the file, bit for bit */
    static const uint32_t stored[24] = {
        0x3f9d7277u, 0xbf64c1bcu, 0x3e28873fu, 0x3e8c4784u, 0x3fa646c0u, 0xbe8ba974u,
        0x3c768a36u, 0xbe90951du, 0x3f3448c5u, 0x3f3370a5u, 0x3f356d31u, 0x3f344aedu,
        0x3f34b8beu, 0x3f347695u, 0x3f32910eu, 0x3f347d2eu, 0x3d07c42fu, 0x3e7c213bu,
        0x3e9030afu, 0x3db2f7ceu, 0x3e9596a6u, 0x3e962458u, 0x3e3a9b38u, 0x3e962318u,
    };
    ck_assert_int_eq(ulpt_checkpoint_load(&q, &oq, path), ULPT_OK);
    const size_t np = ulpt_prompt_num_params(p);
    ck_assert_uint_eq(np, 24);
    ck_assert_mem_eq(ulpt_prompt_params(q), stored, sizeof stored);
    ck_assert_uint_eq(ulpt_optimizer_step_count(oq), 3);
    /* today's kernels may round differently from 1.0's, by an ulp or so */
    for (size_t i = 0; i < np; i++)
        ck_assert_float_eq_tol(ulpt_prompt_params(p)[i], ulpt_prompt_params(q)[i], 1e-6f);
    /* no forward-only state in it; a stream started on it trains like one on the twin,
       so the Adam moments came back too (zero moments would move each parameter by
       about lr = 0.1 on the next step) */
    ulpt_prompt *x = NULL;
    ulpt_optimizer *y = NULL;
    ulpt_zo *w = NULL;
    ck_assert_int_eq(ulpt_zo_checkpoint_load(&x, &y, &w, path), ULPT_ERR_FORMAT);
    ck_assert_ptr_null(x);
    ulpt_zo *za = zo_for(p, o, ULPT_ZO_RADEMACHER, 0), *zb = zo_for(q, oq, ULPT_ZO_RADEMACHER, 0);
    for (int t = 0; t < 3; t++) {
        ck_assert_int_eq(ulpt_zo_step(NULL, za, bowl_losses, NULL), ULPT_OK);
        ck_assert_int_eq(ulpt_zo_step(NULL, zb, bowl_losses, NULL), ULPT_OK);
    }
    for (size_t i = 0; i < np; i++)
        ck_assert_float_eq_tol(ulpt_prompt_params(p)[i], ulpt_prompt_params(q)[i], 1e-4f);
    ulpt_zo_free(za), ulpt_zo_free(zb);
    ulpt_optimizer_free(o), ulpt_optimizer_free(oq);
    ulpt_prompt_free(p), ulpt_prompt_free(q);
}

/* Forged ZOST payloads: every field ulpt_zo_create would refuse, a short payload, a
 * state whose buffers would pass the load's memory bound, and ZOST in a prompt file are
 * ULPT_ERR_CORRUPT; a longer payload (a later minor version's fields) reads as its first
 * 40 bytes. */
TEST(forged_forward_only_state_is_refused)
{
    ulpt_prompt *p = test_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q = NULL;
    ulpt_optimizer *o = resume_optimizer(p, ULPT_OPT_ADAMW), *oq = NULL;
    ulpt_zo *z = zo_for(p, o, ULPT_ZO_GAUSSIAN, 12), *zq = NULL;
    char path[512];
    snprintf(path, sizeof path, "%s", scratch("zo.ulpt"));
    ck_assert_int_eq(ulpt_zo_checkpoint_save(z, path), ULPT_OK);
    size_t len, l = 0, n;
    unsigned char *ck = read_all(path, &len);
    const unsigned char *zost = find_section(ck, len, "ZOST", &l);
    ck_assert_ptr_nonnull(zost);
    ck_assert_uint_eq(l, 40);
    static const struct {
        size_t offset, size;
        uint64_t value;
        const char *says;
    } forged[] = {
        {16, 8, 0x7FF8000000000000u, "epsilon"}, /* NaN */
        {16, 8, 0, "epsilon"},
        {16, 8, 0xBFF0000000000000u, "epsilon"}, /* -1 */
        {24, 4, 0, "directions"},
        {24, 4, (1u << 30) + 1, "directions"},
        {28, 4, 0, "batch 0"},
        {28, 4, 5, "batch"}, /* past 2q = 4 */
        {32, 4, 2, "distribution"},
        {36, 4, 0xFFFFFFFFu, "perturb"},
        {24, 4, 1u << 30, "needs"}, /* 2^31 losses: 16 GiB, from a small file */
    };
    for (size_t c = 0; c < sizeof forged / sizeof forged[0]; c++) {
        unsigned char payload[40];
        memcpy(payload, zost, 40);
        for (size_t i = 0; i < forged[c].size; i++)
            payload[forged[c].offset + i] = (unsigned char)(forged[c].value >> (8 * i));
        unsigned char *f = with_section(ck, len, "ZOST", 0, payload, 40, &n);
        FILE *out = fopen(path, "wb");
        fwrite(f, 1, n, out);
        fclose(out);
        ck_assert_int_eq(ulpt_zo_checkpoint_load(&q, &oq, &zq, path), ULPT_ERR_CORRUPT);
        ck_assert_msg(strstr(ulpt_last_error(), forged[c].says) != NULL, "case %zu: %s", c,
                      ulpt_last_error());
        ck_assert_ptr_null(q);
        ck_assert_ptr_null(zq);
        free(f);
    }
    unsigned char longer[48];
    memcpy(longer, zost, 40);
    memset(longer + 40, 0x5a, 8);
    for (size_t size = 32; size <= 48; size += 16) {
        unsigned char *f = with_section(ck, len, "ZOST", 0, longer, size, &n);
        FILE *out = fopen(path, "wb");
        fwrite(f, 1, n, out);
        fclose(out);
        int rc = ulpt_zo_checkpoint_load(&q, &oq, &zq, path);
        ck_assert_int_eq(rc, size < 40 ? ULPT_ERR_CORRUPT : ULPT_OK);
        if (!rc)
            ck_assert_uint_eq(ulpt_zo_position(zq), 12);
        ulpt_zo_free(zq), ulpt_optimizer_free(oq), ulpt_prompt_free(q);
        q = NULL, oq = NULL, zq = NULL;
        free(f);
    }
    /* a prompt file never holds it */
    void *pf;
    size_t pl;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &pf, &pl, NULL), ULPT_OK);
    unsigned char *f = with_section(pf, pl, "ZOST", 0, zost, 40, &n);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, f, n), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "forward-only"));
    free(f);
    ulpt_free(pf);
    free(ck);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(out_of_memory_in_forward_only_save_and_load_fails_cleanly)
{
    ulpt_prompt *p = test_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o = resume_optimizer(p, ULPT_OPT_ADAMW);
    ulpt_zo *z = zo_for(p, o, ULPT_ZO_RADEMACHER, 3);
    char path[512];
    snprintf(path, sizeof path, "%s", scratch("zo.ulpt"));
    ck_assert_int_eq(ulpt_zo_checkpoint_save(z, path), ULPT_OK);
    size_t len;
    unsigned char *before = read_all(path, &len);
    long k;
    for (k = 0;; k++) { /* a failed save leaves the old file */
        test_alloc_install(k);
        int rc = ulpt_zo_checkpoint_save(z, path);
        test_alloc_remove();
        size_t now_len;
        unsigned char *now = read_all(path, &now_len);
        ck_assert_uint_eq(now_len, len);
        ck_assert_mem_eq(now, before, len);
        free(now);
        if (rc == ULPT_OK)
            break;
        ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
        ck_assert_int_eq(test_alloc.live, 0);
    }
    ck_assert_int_gt(k, 1);
    for (k = 0;; k++) {
        ulpt_prompt *q = NULL;
        ulpt_optimizer *oq = NULL;
        ulpt_zo *zq = NULL;
        test_alloc_install(k);
        int rc = ulpt_zo_checkpoint_load(&q, &oq, &zq, path);
        if (rc == ULPT_OK) {
            ck_assert_uint_eq(ulpt_zo_position(zq), 3);
            ulpt_zo_free(zq), ulpt_optimizer_free(oq), ulpt_prompt_free(q);
            ck_assert_int_eq(test_alloc.live, 0);
            test_alloc_remove();
            break;
        }
        ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
        ck_assert_ptr_null(q);
        ck_assert_ptr_null(oq);
        ck_assert_ptr_null(zq);
        ck_assert_int_eq(test_alloc.live, 0);
        test_alloc_remove();
    }
    ck_assert_int_gt(k, 5); /* file, prompt, optimizer, handle */
    free(before);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* Checkpoints to memory are the bytes of the file; loading them resumes bit-identically;
 * bad arguments, another prompt's optimizer and damage give the file calls' errors and
 * leave the out-parameters alone. */
TEST(checkpoint_buffers_are_the_file_bytes_and_resume)
{
    ulpt_prompt *a = test_prompt(6, 2, 24, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *b = test_prompt(6, 2, 24, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *oa = resume_optimizer(a, ULPT_OPT_ADAMW), *ob = resume_optimizer(b, ULPT_OPT_ADAMW);
    ck_assert_int_eq(ulpt_prompt_set_meta(b, "task", "buffers"), ULPT_OK);
    for (int t = 0; t < 10; t++)
        ck_assert_int_eq(ulpt_train_step(a, oa, bowl, NULL, NULL), ULPT_OK);
    for (int t = 0; t < 5; t++)
        ck_assert_int_eq(ulpt_train_step(b, ob, bowl, NULL, NULL), ULPT_OK);
    const char *path = scratch("ckpt.ulpt");
    ck_assert_int_eq(ulpt_checkpoint_save(b, ob, path), ULPT_OK);
    size_t flen, blen = 0;
    void *file = read_all(path, &flen), *buf = NULL;
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&buf, &blen, b, ob), ULPT_OK);
    ck_assert_uint_eq(blen, flen);
    ck_assert_mem_eq(buf, file, flen);

    ulpt_prompt *c = NULL;
    ulpt_optimizer *oc = NULL;
    ck_assert_int_eq(ulpt_checkpoint_load_buffer(&c, &oc, buf, blen), ULPT_OK);
    ck_assert_ptr_eq(ulpt_optimizer_prompt(oc), c);
    ck_assert_uint_eq(ulpt_optimizer_step_count(oc), 5);
    ck_assert_str_eq(ulpt_prompt_get_meta(c, "task"), "buffers");
    for (int t = 0; t < 5; t++)
        ck_assert_int_eq(ulpt_train_step(c, oc, bowl, NULL, NULL), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(a), ulpt_prompt_params(c),
                     ulpt_prompt_num_params(a) * sizeof(float));

    /* errors: NULLs, another prompt's optimizer, a prompt file, a damaged byte */
    void *nb = (void *)path;
    size_t nl = 12345;
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(NULL, &nl, b, ob), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&nb, NULL, b, ob), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&nb, &nl, NULL, ob), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&nb, &nl, b, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&nb, &nl, a, ob), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "another prompt"));
    ck_assert_ptr_eq(nb, (void *)path);
    ck_assert_uint_eq(nl, 12345);
    ulpt_prompt *x = (ulpt_prompt *)path;
    ulpt_optimizer *y = (ulpt_optimizer *)path;
    ck_assert_int_eq(ulpt_checkpoint_load_buffer(NULL, &y, buf, blen), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_checkpoint_load_buffer(&x, NULL, buf, blen), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_checkpoint_load_buffer(&x, &y, NULL, blen), ULPT_ERR_INVALID);
    ((unsigned char *)buf)[blen / 2] ^= 1;
    ck_assert_int_eq(ulpt_checkpoint_load_buffer(&x, &y, buf, blen), ULPT_ERR_CORRUPT);
    ck_assert_int_eq(ulpt_checkpoint_load_buffer(&x, &y, buf, 10), ULPT_ERR_CORRUPT); /* truncated */
    void *pf;
    size_t pl;
    ck_assert_int_eq(ulpt_prompt_save_buffer(b, &pf, &pl, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_checkpoint_load_buffer(&x, &y, pf, pl), ULPT_ERR_FORMAT);
    ck_assert_ptr_eq(x, (ulpt_prompt *)path);
    ck_assert_ptr_eq(y, (ulpt_optimizer *)path);
    ulpt_free(pf);
    ulpt_free(buf);
    free(file);
    ulpt_optimizer_free(oa), ulpt_optimizer_free(ob), ulpt_optimizer_free(oc);
    ulpt_prompt_free(a), ulpt_prompt_free(b), ulpt_prompt_free(c);
}

/* Forward-only checkpoints to memory: the file's bytes, and a resume with the same bits
 * and position; an ordinary checkpoint's bytes have no forward-only state. */
TEST(zo_checkpoint_buffers_are_the_file_bytes_and_resume)
{
    ulpt_prompt *a = test_prompt(6, 2, 16, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *b = test_prompt(6, 2, 16, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *oa = resume_optimizer(a, ULPT_OPT_ADAM), *ob = resume_optimizer(b, ULPT_OPT_ADAM);
    ulpt_zo *za = zo_for(a, oa, ULPT_ZO_GAUSSIAN, 77), *zb = zo_for(b, ob, ULPT_ZO_GAUSSIAN, 77);
    for (int t = 0; t < 12; t++)
        ck_assert_int_eq(ulpt_zo_step(NULL, za, bowl_losses, NULL), ULPT_OK);
    for (int t = 0; t < 6; t++)
        ck_assert_int_eq(ulpt_zo_step(NULL, zb, bowl_losses, NULL), ULPT_OK);
    const char *path = scratch("zo.ulpt");
    ck_assert_int_eq(ulpt_zo_checkpoint_save(zb, path), ULPT_OK);
    size_t flen, blen;
    void *file = read_all(path, &flen), *buf;
    ck_assert_int_eq(ulpt_zo_checkpoint_save_buffer(&buf, &blen, zb), ULPT_OK);
    ck_assert_uint_eq(blen, flen);
    ck_assert_mem_eq(buf, file, flen);
    ulpt_prompt *c;
    ulpt_optimizer *oc;
    ulpt_zo *zc;
    ck_assert_int_eq(ulpt_zo_checkpoint_load_buffer(&c, &oc, &zc, buf, blen), ULPT_OK);
    ck_assert_ptr_eq(ulpt_zo_prompt(zc), c);
    ck_assert_ptr_eq(ulpt_zo_optimizer(zc), oc);
    ck_assert_uint_eq(ulpt_zo_position(zc), ulpt_zo_position(zb));
    for (int t = 0; t < 6; t++)
        ck_assert_int_eq(ulpt_zo_step(NULL, zc, bowl_losses, NULL), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(a), ulpt_prompt_params(c),
                     ulpt_prompt_num_params(a) * sizeof(float));
    ck_assert_uint_eq(ulpt_zo_position(zc), ulpt_zo_position(za));

    ulpt_prompt *x = (ulpt_prompt *)path;
    ulpt_optimizer *y = (ulpt_optimizer *)path;
    ulpt_zo *w = (ulpt_zo *)path;
    void *nb = (void *)path;
    size_t nl = 1;
    ck_assert_int_eq(ulpt_zo_checkpoint_save_buffer(NULL, &nl, zb), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_save_buffer(&nb, NULL, zb), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_save_buffer(&nb, &nl, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_load_buffer(NULL, &y, &w, buf, blen), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_load_buffer(&x, NULL, &w, buf, blen), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_load_buffer(&x, &y, NULL, buf, blen), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_zo_checkpoint_load_buffer(&x, &y, &w, NULL, blen), ULPT_ERR_INVALID);
    void *plain;
    size_t plen;
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&plain, &plen, b, ob), ULPT_OK);
    ck_assert_int_eq(ulpt_zo_checkpoint_load_buffer(&x, &y, &w, plain, plen), ULPT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "without forward-only state"));
    ck_assert_ptr_eq(x, (ulpt_prompt *)path);
    ck_assert_ptr_eq(y, (ulpt_optimizer *)path);
    ck_assert_ptr_eq(w, (ulpt_zo *)path);
    ck_assert_ptr_eq(nb, (void *)path);
    ulpt_free(plain);
    ulpt_free(buf);
    free(file);
    ulpt_zo_free(za), ulpt_zo_free(zb), ulpt_zo_free(zc);
    ulpt_optimizer_free(oa), ulpt_optimizer_free(ob), ulpt_optimizer_free(oc);
    ulpt_prompt_free(a), ulpt_prompt_free(b), ulpt_prompt_free(c);
}

/* Out of memory at every allocation of the buffer calls: NOMEM, nothing leaked, the
 * out-parameters untouched. */
TEST(out_of_memory_in_checkpoint_buffers_fails_cleanly)
{
    ulpt_prompt *p = test_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o = resume_optimizer(p, ULPT_OPT_ADAMW);
    ulpt_zo *z = zo_for(p, o, ULPT_ZO_RADEMACHER, 3);
    void *buf = NULL;
    size_t len = 0;
    long k;
    for (int zo = 0; zo < 2; zo++) {
        for (k = 0;; k++) {
            void *b = (void *)&k;
            size_t n = 7;
            test_alloc_install(k);
            int rc = zo ? ulpt_zo_checkpoint_save_buffer(&b, &n, z)
                        : ulpt_checkpoint_save_buffer(&b, &n, p, o);
            test_alloc_remove();
            if (rc == ULPT_OK) {
                if (zo)
                    buf = b, len = n;
                else
                    ulpt_free(b);
                break;
            }
            ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
            ck_assert_ptr_eq(b, (void *)&k);
            ck_assert_uint_eq(n, 7);
            ck_assert_int_eq(test_alloc.live, 0);
        }
        ck_assert_int_gt(k, 1);
    }
    for (int zo = 0; zo < 2; zo++) {
        for (k = 0;; k++) {
            ulpt_prompt *q = NULL;
            ulpt_optimizer *oq = NULL;
            ulpt_zo *zq = NULL;
            test_alloc_install(k);
            int rc = zo ? ulpt_zo_checkpoint_load_buffer(&q, &oq, &zq, buf, len)
                        : ulpt_checkpoint_load_buffer(&q, &oq, buf, len);
            if (rc == ULPT_OK) {
                ulpt_zo_free(zq), ulpt_optimizer_free(oq), ulpt_prompt_free(q);
                ck_assert_int_eq(test_alloc.live, 0);
                test_alloc_remove();
                break;
            }
            ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
            ck_assert_ptr_null(q);
            ck_assert_ptr_null(oq);
            ck_assert_ptr_null(zq);
            ck_assert_int_eq(test_alloc.live, 0);
            test_alloc_remove();
        }
        ck_assert_int_gt(k, 3);
    }
    ulpt_free(buf);
    ulpt_zo_free(z);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}
