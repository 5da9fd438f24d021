/* test_checkpoint.c -- checkpoints (lib/checkpoint.c): resuming is bit-identical. */
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
