/* checkpoint.c -- checkpoints: a prompt file plus the optimizer's options, step count
 * and moments (OPTM, MOM1, MOM2), so that training resumes bit-identically; and, in
 * format 1.1, a forward-only trainer's options and stream position (ZOST).  This is the
 * one file outside optimizer.c that reads the optimizer's fields. */
#include "format.h"

#include <math.h>
#include <stdio.h>

enum { /* OPTM fields */
    OPTM_KIND = 0,
    OPTM_SCHEDULE = 4,
    OPTM_LR = 8,
    OPTM_BETA1 = 16,
    OPTM_BETA2 = 24,
    OPTM_EPS = 32,
    OPTM_WEIGHT_DECAY = 40,
    OPTM_MOMENTUM = 48,
    OPTM_MAX_GRAD_NORM = 56,
    OPTM_WARMUP = 64,
    OPTM_TOTAL = 72,
    OPTM_STEPS = 80,
    OPTM_BYTES = 88, /* in format 1.0; later minor versions may append fields */
};

enum { /* ZOST fields (format 1.1) */
    ZOST_SEED = 0,
    ZOST_POSITION = 8,
    ZOST_EPSILON = 16,
    ZOST_DIRECTIONS = 24,
    ZOST_BATCH = 28,
    ZOST_DISTRIBUTION = 32,
    ZOST_PERTURB = 36,
    ZOST_BYTES = 40, /* in format 1.1; later minor versions may append fields */
};

/* Step counts past 2^53 are not exact in the double schedule arithmetic: forged. */
#define MAX_STEPS ((uint64_t)1 << 53)

/* The zlib level of checkpoints: they are written often and read once. */
#define CHECKPOINT_LEVEL 6

static void write_optm(unsigned char *w, const void *ctx)
{
    const ulpt_optimizer *o = ctx;
    const ulpt_optimizer_options *op = &o->opt;
    ulpt__put32(w + OPTM_KIND, (uint32_t)op->kind);
    ulpt__put32(w + OPTM_SCHEDULE, (uint32_t)op->schedule);
    ulpt__putf64(w + OPTM_LR, op->lr);
    ulpt__putf64(w + OPTM_BETA1, op->beta1);
    ulpt__putf64(w + OPTM_BETA2, op->beta2);
    ulpt__putf64(w + OPTM_EPS, op->eps);
    ulpt__putf64(w + OPTM_WEIGHT_DECAY, op->weight_decay);
    ulpt__putf64(w + OPTM_MOMENTUM, op->momentum);
    ulpt__putf64(w + OPTM_MAX_GRAD_NORM, op->max_grad_norm);
    ulpt__put64(w + OPTM_WARMUP, op->warmup_steps);
    ulpt__put64(w + OPTM_TOTAL, op->total_steps);
    ulpt__put64(w + OPTM_STEPS, o->steps);
}

static void write_zost(unsigned char *w, const void *ctx)
{
    const ulpt_zo *zo = ctx;
    ulpt_zo_options o = ULPT_ZO_OPTIONS_INIT;
    ulpt_zo_get_options(&o, zo); /* cannot fail: a live handle, this version */
    ulpt__put64(w + ZOST_SEED, o.seed);
    ulpt__put64(w + ZOST_POSITION, ulpt_zo_position(zo));
    ulpt__putf64(w + ZOST_EPSILON, o.epsilon);
    ulpt__put32(w + ZOST_DIRECTIONS, o.directions);
    ulpt__put32(w + ZOST_BATCH, o.batch);
    ulpt__put32(w + ZOST_DISTRIBUTION, (uint32_t)o.distribution);
    ulpt__put32(w + ZOST_PERTURB, (uint32_t)o.perturb);
}

/* The checkpoint of p and o, with zo's ZOST section unless zo is NULL, in a new
 * allocation from *a, `prefix` bytes in (*base is the allocation, *len the file's). */
static int encode_checkpoint(const char *func, const ulpt_prompt *p, const ulpt_optimizer *o,
                  const ulpt_zo *zo, size_t prefix, ulpt_allocator *a, unsigned char **base,
                  size_t *len)
{
    *a = ulpt__allocator();
    /* read while no step writes: the optimizer here, the prompt in ulpt__file_encode */
    ulpt_lock *lo = (ulpt_lock *)&o->lock, *lz = zo ? (ulpt_lock *)ulpt__zo_lock(zo) : NULL;
    int rc = ulpt__lock_read(func, lo, "optimizer");
    if (rc)
        return rc;
    if (lz && (rc = ulpt__lock_read(func, lz, "forward-only handle")) != ULPT_OK) {
        ulpt__lock_unread(lo);
        return rc;
    }
    ulpt_tensor m = { 0 }, v = { 0 };
    rc = ulpt__tensor_encode(func, a, o->m, o->n, ULPT_DTYPE_F32, CHECKPOINT_LEVEL, &m);
    if (!rc)
        rc = ulpt__tensor_encode(func, a, o->v, o->n, ULPT_DTYPE_F32, CHECKPOINT_LEVEL, &v);
    if (!rc) {
        const ulpt_section_out s[] = {
            { TAG_OPTM, SECTION_REQUIRED, OPTM_BYTES, write_optm, o },
            ulpt__tensor_section(TAG_MOM1, &m),
            ulpt__tensor_section(TAG_MOM2, &v),
            { TAG_ZOST, 0, ZOST_BYTES, write_zost, zo }, /* optional: 1.0 readers skip it */
        };
        rc = ulpt__file_encode(func, a, p, ULPT_DTYPE_F32, CHECKPOINT_LEVEL, s, zo ? 4 : 3,
                               prefix, base, len);
    }
    ulpt__tensor_free(a, &m);
    ulpt__tensor_free(a, &v);
    if (lz)
        ulpt__lock_unread(lz);
    ulpt__lock_unread(lo);
    return rc;
}

static int save(const char *func, const ulpt_prompt *p, const ulpt_optimizer *o,
                const ulpt_zo *zo, const char *path)
{
    ulpt_allocator a;
    unsigned char *data;
    size_t n;
    int rc = encode_checkpoint(func, p, o, zo, 0, &a, &data, &n);
    if (rc)
        return rc;
    rc = ulpt__write_atomic(func, path, data, n);
    ulpt__free(&a, data);
    return rc;
}

static int save_buffer(const char *func, const ulpt_prompt *p, const ulpt_optimizer *o,
                       const ulpt_zo *zo, void **buf, size_t *len)
{
    ulpt_allocator a;
    unsigned char *base;
    int rc = encode_checkpoint(func, p, o, zo, ULPT_BUFFER_PREFIX, &a, &base, len);
    if (!rc)
        *buf = ulpt__buffer_hand_out(&a, base);
    return rc;
}

int ulpt_checkpoint_save(const ulpt_prompt *p, const ulpt_optimizer *o, const char *path)
{
    if (!p || !o || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : !o ? "optimizer" : "path");
    if (o->prompt != p)
        return ULPT_FAIL(ULPT_ERR_MISMATCH, "the optimizer was created for another prompt");
    return save(__func__, p, o, NULL, path);
}

int ulpt_checkpoint_save_buffer(void **buf, size_t *len, const ulpt_prompt *p,
                                const ulpt_optimizer *o)
{
    if (!buf || !len || !p || !o)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL",
                         !buf ? "buf" : !len ? "len" : !p ? "prompt" : "optimizer");
    if (o->prompt != p)
        return ULPT_FAIL(ULPT_ERR_MISMATCH, "the optimizer was created for another prompt");
    return save_buffer(__func__, p, o, NULL, buf, len);
}

int ulpt_zo_checkpoint_save(const ulpt_zo *zo, const char *path)
{
    if (!zo || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !zo ? "zo" : "path");
    return save(__func__, ulpt_zo_prompt(zo), ulpt_zo_optimizer(zo), zo, path);
}

int ulpt_zo_checkpoint_save_buffer(void **buf, size_t *len, const ulpt_zo *zo)
{
    if (!buf || !len || !zo)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !buf ? "buf" : !len ? "len" : "zo");
    return save_buffer(__func__, ulpt_zo_prompt(zo), ulpt_zo_optimizer(zo), zo, buf, len);
}

static int read_optm(const char *func, const ulpt_section *s, ulpt_optimizer_options *oo,
                     uint64_t *steps)
{
    if (s->len < OPTM_BYTES)
        return CORRUPT("optimizer section of %zu bytes, expected at least %d", s->len, OPTM_BYTES);
    const unsigned char *q = s->data;
    *oo = (ulpt_optimizer_options)ULPT_OPTIMIZER_OPTIONS_INIT;
    oo->kind = (int)ulpt__get32(q + OPTM_KIND);
    oo->schedule = (int)ulpt__get32(q + OPTM_SCHEDULE);
    oo->lr = ulpt__getf64(q + OPTM_LR);
    oo->beta1 = ulpt__getf64(q + OPTM_BETA1);
    oo->beta2 = ulpt__getf64(q + OPTM_BETA2);
    oo->eps = ulpt__getf64(q + OPTM_EPS);
    oo->weight_decay = ulpt__getf64(q + OPTM_WEIGHT_DECAY);
    oo->momentum = ulpt__getf64(q + OPTM_MOMENTUM);
    oo->max_grad_norm = ulpt__getf64(q + OPTM_MAX_GRAD_NORM);
    oo->warmup_steps = ulpt__get64(q + OPTM_WARMUP);
    oo->total_steps = ulpt__get64(q + OPTM_TOTAL);
    *steps = ulpt__get64(q + OPTM_STEPS);
    if (!(oo->weight_decay >= 0)) /* the file holds the resolved value, never the default */
        return CORRUPT("optimizer weight decay %g is negative", oo->weight_decay);
    if (*steps > MAX_STEPS)
        return CORRUPT("optimizer step count %llu is implausible", (unsigned long long)*steps);
    return ULPT_OK;
}

int ulpt__zost_read(const char *func, const ulpt_section *s, ulpt_zo_options *o,
                    uint64_t *position)
{
    if (s->len < ZOST_BYTES)
        return CORRUPT("forward-only section of %zu bytes, expected at least %d", s->len,
                       ZOST_BYTES);
    const unsigned char *q = s->data;
    *o = (ulpt_zo_options)ULPT_ZO_OPTIONS_INIT;
    o->seed = ulpt__get64(q + ZOST_SEED);
    o->epsilon = ulpt__getf64(q + ZOST_EPSILON);
    o->directions = ulpt__get32(q + ZOST_DIRECTIONS);
    o->batch = ulpt__get32(q + ZOST_BATCH);
    o->distribution = (int)ulpt__get32(q + ZOST_DISTRIBUTION);
    o->perturb = (int)ulpt__get32(q + ZOST_PERTURB);
    *position = ulpt__get64(q + ZOST_POSITION);
    if (o->batch == 0) /* written resolved, never the "2q" default */
        return CORRUPT("forward-only batch 0");
    if (ulpt__zo_check_options(func, o)) {
        char why[256];
        snprintf(why, sizeof why, "%s", ulpt_last_error());
        return CORRUPT("bad forward-only options (%s)", why);
    }
    return ULPT_OK;
}

int ulpt__checkpoint_decode(const char *func, const ulpt_container *c, ulpt_prompt *p,
                            ulpt_optimizer **out, ulpt_zo **zo)
{
    ulpt_tensor t1, t2;
    ulpt_optimizer_options oo;
    uint64_t steps = 0;
    ulpt_optimizer *o = NULL;
    int rc = read_optm(func, &c->optm, &oo, &steps);
    if (!rc && (rc = ulpt_optimizer_create(&o, p, &oo)) != ULPT_OK && rc != ULPT_ERR_NOMEM) {
        char why[256];
        snprintf(why, sizeof why, "%s", ulpt_last_error());
        rc = CORRUPT("bad optimizer options (%s)", why);
    }
    if (!rc)
        rc = ulpt__tensor_check(func, &c->mom1, o->n, "first moments", &t1);
    if (!rc)
        rc = ulpt__tensor_check(func, &c->mom2, o->n, "second moments", &t2);
    if (!rc && (t1.dtype != ULPT_DTYPE_F32 || t2.dtype != ULPT_DTYPE_F32)) /* as PARM */
        rc = ulpt__error(ULPT_ERR_FORMAT, func, "checkpoint moments must be f32");
    if (!rc)
        rc = ulpt__tensor_decode(func, &p->al, &t1, o->m);
    if (!rc)
        rc = ulpt__tensor_decode(func, &p->al, &t2, o->v);
    for (size_t i = 0; !rc && i < o->n; i++)
        if (!isfinite(o->m[i]) || !isfinite(o->v[i]) || o->v[i] < 0)
            rc = CORRUPT("optimizer moment %zu is not finite (or negative)", i);
    ulpt_zo *z = NULL;
    if (!rc && zo) { /* ZOST was checked with the shape (check 3) */
        ulpt_zo_options zoo;
        uint64_t position;
        ulpt__zost_read(func, &c->zost, &zoo, &position);
        if ((rc = ulpt_zo_create(&z, p, o, &zoo)) != ULPT_OK && rc != ULPT_ERR_NOMEM) {
            char why[256];
            snprintf(why, sizeof why, "%s", ulpt_last_error());
            rc = CORRUPT("bad forward-only state (%s)", why);
        }
        if (!rc)
            ulpt_zo_set_position(z, position);
    }
    if (rc) {
        ulpt_optimizer_free(o);
        return rc;
    }
    o->steps = steps;
    *out = o;
    if (zo)
        *zo = z;
    return ULPT_OK;
}
