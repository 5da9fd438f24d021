/* checkpoint.c -- checkpoints: a prompt file plus the optimizer's options, step count
 * and moments (OPTM, MOM1, MOM2), so that training resumes bit-identically.  This is
 * the one file outside optimizer.c that reads the optimizer's fields. */
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

int ulpt_checkpoint_save(const ulpt_prompt *p, const ulpt_optimizer *o, const char *path)
{
    const char *func = __func__;
    if (!p || !o || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : !o ? "optimizer" : "path");
    if (o->prompt != p)
        return ULPT_FAIL(ULPT_ERR_MISMATCH, "the optimizer was created for another prompt");
    ulpt_allocator a = ulpt__allocator();
    ulpt_tensor m = { 0 }, v = { 0 };
    int rc = ulpt__tensor_encode(func, &a, o->m, o->n, ULPT_DTYPE_F32, CHECKPOINT_LEVEL, &m);
    if (!rc)
        rc = ulpt__tensor_encode(func, &a, o->v, o->n, ULPT_DTYPE_F32, CHECKPOINT_LEVEL, &v);
    unsigned char *data = NULL;
    size_t n;
    if (!rc) {
        const ulpt_section_out s[] = {
            { TAG_OPTM, SECTION_REQUIRED, OPTM_BYTES, write_optm, o },
            ulpt__tensor_section(TAG_MOM1, &m),
            ulpt__tensor_section(TAG_MOM2, &v),
        };
        rc = ulpt__file_encode(func, &a, p, ULPT_DTYPE_F32, CHECKPOINT_LEVEL, s, 3, 0, &data, &n);
    }
    ulpt__tensor_free(&a, &m);
    ulpt__tensor_free(&a, &v);
    if (rc)
        return rc;
    rc = ulpt__write_atomic(func, path, data, n);
    ulpt__free(&a, data);
    return rc;
}

int ulpt_checkpoint_load(ulpt_prompt **prompt, ulpt_optimizer **opt, const char *path)
{
    if (!prompt || !opt || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL",
                         !prompt ? "prompt" : !opt ? "opt" : "path");
    return ulpt__file_load(__func__, path, prompt, opt, NULL);
}

#define CORRUPT(...) ulpt__error(ULPT_ERR_CORRUPT, func, __VA_ARGS__)

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

int ulpt__checkpoint_decode(const char *func, const ulpt_container *c, ulpt_prompt *p,
                            ulpt_optimizer **out)
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
    if (rc) {
        ulpt_optimizer_free(o);
        return rc;
    }
    o->steps = steps;
    *out = o;
    return ULPT_OK;
}
