/* file.c -- prompt files: the SHAP section, the checks a load makes in the order
 * docs/FORMAT.md gives them, and the public save, load and inspect calls.
 *
 * Decoding (for load.c) checks the shape and the memory it implies before it allocates
 * anything; then it builds the prompt and checks the tensor, the fingerprint and the
 * values against it, freeing everything if one of them is wrong. */
#include "format.h"

#include <math.h>
#include <stdio.h>

enum { /* SHAP fields */
    SHAP_N_TOKENS = 0,
    SHAP_RANK = 4,
    SHAP_DIM = 8,
    SHAP_GROUPS = 12,
    SHAP_SEED = 16,
    SHAP_KIND = 24,
    SHAP_FLAGS = 28,
    SHAP_FINGERPRINT = 32,
    SHAP_RESERVED = 36,
    SHAP_N_PARAMS = 40,
    SHAP_BYTES = 48, /* in format 1.0; later minor versions may append fields */
};

/* What a load may hold at once: max(ALLOC_FLOOR, MAX_INFLATE x the file's size). */
#define ALLOC_FLOOR (64.0 * 1024 * 1024)

/* ---- the projection fingerprint ----------------------------------------------------- */

/* CRC-32 of every group's P as little-endian float32 bytes, in group order; 0 for the
 * identity, which has nothing to check. */
static uint32_t fingerprint(const ulpt_prompt *p)
{
    uint32_t crc = 0;
    if (p->kind == ULPT_PROJ_IDENTITY)
        return 0;
    unsigned char buf[4096];
    const size_t per = sizeof buf / 4;
    for (uint32_t g = 0; g < p->groups; g++) {
        const float *x = ulpt_projection_data(p->proj[g]);
        size_t n = (size_t)p->r * p->d;
        for (size_t i = 0; i < n; i += per) {
            size_t k = n - i < per ? n - i : per;
            ulpt__f32_bytes(x + i, k, buf);
            crc = ulpt__crc32(crc, buf, k * 4);
        }
    }
    return crc;
}

/* ---- encoding ----------------------------------------------------------------------- */

static void write_shape(unsigned char *w, const void *ctx)
{
    const ulpt_prompt *p = ctx;
    ulpt__put32(w + SHAP_N_TOKENS, p->n);
    ulpt__put32(w + SHAP_RANK, p->r);
    ulpt__put32(w + SHAP_DIM, p->d);
    ulpt__put32(w + SHAP_GROUPS, p->groups);
    ulpt__put64(w + SHAP_SEED, p->seed);
    ulpt__put32(w + SHAP_KIND, (uint32_t)p->kind);
    ulpt__put32(w + SHAP_FLAGS, p->flags);
    ulpt__put32(w + SHAP_FINGERPRINT, fingerprint(p));
    ulpt__put32(w + SHAP_RESERVED, 0);
    ulpt__put64(w + SHAP_N_PARAMS, p->n_params);
}

static int encode_file(const char *func, const ulpt_allocator *a, const ulpt_prompt *p, int dtype,
                  int level, const ulpt_section_out *extra, int n_extra, size_t prefix,
                  unsigned char **base, size_t *len)
{
    /* a file never holds what a load would refuse, and nothing is lost silently */
    char name[48];
    size_t bad = ulpt__first_nonfinite(p);
    if (bad < p->n_params) {
        ulpt__param_name(p, bad, name, sizeof name);
        return ulpt__error(ULPT_ERR_NONFINITE, func, "parameter %s is %g", name,
                           (double)p->params[bad]);
    }
    for (size_t i = 0; dtype != ULPT_DTYPE_F32 && i < p->n_params; i++)
        if (isinf(ulpt__dtype_round(p->params[i], dtype))) {
            ulpt__param_name(p, i, name, sizeof name);
            return ulpt__error(ULPT_ERR_NONFINITE, func,
                               "parameter %s = %g overflows %s; save as f32", name,
                               (double)p->params[i], dtype == ULPT_DTYPE_F16 ? "f16" : "bf16");
        }
    ulpt_tensor parm;
    int rc = ulpt__tensor_encode(func, a, p->params, p->n_params, dtype, level, &parm);
    if (rc)
        return rc;
    ulpt_section_out s[MAX_SECTIONS] = {
        { TAG_SHAP, SECTION_REQUIRED, SHAP_BYTES, write_shape, p },
        ulpt__meta_section(&p->meta),
        ulpt__tensor_section(TAG_PARM, &parm),
    };
    int n = 3;
    for (int i = 0; i < n_extra && n < (int)(sizeof s / sizeof s[0]); i++)
        s[n++] = extra[i];
    rc = ulpt__container_write(func, a, extra ? ULPT_FILE_CHECKPOINT : ULPT_FILE_PROMPT, s, n,
                               prefix, base, len);
    ulpt__tensor_free(a, &parm);
    return rc;
}

int ulpt__file_encode(const char *func, const ulpt_allocator *a, const ulpt_prompt *p, int dtype,
                      int level, const ulpt_section_out *extra, int n_extra, size_t prefix,
                      unsigned char **base, size_t *len)
{
    ulpt_lock *l = (ulpt_lock *)&p->lock; /* never a const object */
    int rc = ulpt__lock_read(func, l, "prompt");
    if (rc)
        return rc;
    rc = encode_file(func, a, p, dtype, level, extra, n_extra, prefix, base, len);
    ulpt__lock_unread(l);
    return rc;
}

/* ---- decoding ----------------------------------------------------------------------- */

int ulpt__shape_check(const char *func, const ulpt_container *c)
{
    if (c->shap.len < SHAP_BYTES)
        return CORRUPT("shape section of %zu bytes, expected at least %d", c->shap.len,
                       SHAP_BYTES);
    if (ulpt__get32(c->shap.data + SHAP_RESERVED) != 0)
        return CORRUPT("the shape's reserved field is not 0");
    return ULPT_OK;
}

static void shape_options(const ulpt_section *s, ulpt_prompt_options *o)
{
    const unsigned char *p = s->data;
    *o = (ulpt_prompt_options)ULPT_PROMPT_OPTIONS_INIT;
    o->n_tokens = ulpt__get32(p + SHAP_N_TOKENS);
    o->rank = ulpt__get32(p + SHAP_RANK);
    o->dim = ulpt__get32(p + SHAP_DIM);
    o->n_groups = ulpt__get32(p + SHAP_GROUPS);
    o->projection_seed = ulpt__get64(p + SHAP_SEED);
    o->projection_kind = (int)ulpt__get32(p + SHAP_KIND);
    o->flags = ulpt__get32(p + SHAP_FLAGS);
}

/* Check 5: everything a load of this shape can hold at once, each term its allocator's
 * own size function -- the file, the prompt, one tensor being inflated, the metadata --
 * and `above`, what the objects built on the prompt take.  docs/FORMAT.md states the
 * same sum. */
static double memory_needed(const ulpt_container *c, const ulpt_prompt_options *o, double count,
                            size_t len, double above)
{
    return (double)len + ulpt__prompt_bytes(o) + ulpt__tensor_decode_bytes(count) +
           ulpt__meta_bytes(c->meta.len) + above;
}

/* Checks 4-6: counts, the parameter tensor's header, memory, metadata.  Nothing is
 * allocated; a forged shape cannot outgrow the bytes behind it.  above: bytes the
 * objects built on the prompt will take (an optimizer, a forward-only trainer). */
static int check_shape(const char *func, const ulpt_container *c, size_t len,
                       const ulpt_prompt_options *po, double above, ulpt_tensor *tp)
{
    double count = (double)po->n_tokens * po->rank +
                   (double)po->dim * !(po->flags & ULPT_NO_SCALE) +
                   (double)po->dim * !(po->flags & ULPT_NO_SHIFT);
    uint64_t declared = ulpt__get64(c->shap.data + SHAP_N_PARAMS);
    if ((double)declared != count)
        return CORRUPT("shape declares %llu parameters, its fields give %.0f",
                       (unsigned long long)declared, count);
    if (count > (double)len * MAX_INFLATE) /* also keeps count within size_t */
        return CORRUPT("%.0f parameters cannot come from a %zu-byte file", count, len);
    int rc = ulpt__tensor_check(func, &c->parm, (size_t)count, "parameters", tp);
    if (rc)
        return rc;
    /* so that training resumes bit-identically; every reader checks it, even one that
       wants only the prompt of a checkpoint */
    if (c->kind == ULPT_FILE_CHECKPOINT && tp->dtype != ULPT_DTYPE_F32)
        return ulpt__error(ULPT_ERR_FORMAT, func, "checkpoint parameters must be f32");
    double need = memory_needed(c, po, count, len, above), allowed = (double)len * MAX_INFLATE;
    if (need > (allowed > ALLOC_FLOOR ? allowed : ALLOC_FLOOR))
        return CORRUPT("shape %u x %u x %u needs %.0f bytes, impossible for a %zu-byte file",
                       po->n_tokens, po->rank, po->dim, need, len);
    return ulpt__meta_check(func, &c->meta);
}

/* Checks 6-8 for the prompt: build it, then the fingerprint, the values, the metadata. */
static int build(const char *func, const ulpt_container *c, const ulpt_prompt_options *po,
                 const ulpt_tensor *tp, ulpt_prompt **out)
{
    ulpt_prompt *p = NULL;
    int rc = ulpt_prompt_create(&p, po);
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "%s", ulpt_last_error()); /* not format from itself */
        return rc == ULPT_ERR_NOMEM ? rc : CORRUPT("bad shape (%s)", why);
    }
    uint32_t stored = ulpt__get32(c->shap.data + SHAP_FINGERPRINT), regenerated = fingerprint(p);
    if (stored != regenerated)
        rc = ulpt__error(ULPT_ERR_MISMATCH, func,
                         "the regenerated projection differs from the one this prompt was "
                         "trained with (fingerprint %08x, stored %08x)",
                         (unsigned)regenerated, (unsigned)stored);
    if (!rc)
        rc = ulpt__tensor_decode(func, &p->al, tp, p->params);
    if (!rc && ulpt__first_nonfinite(p) < p->n_params) {
        char name[48];
        ulpt__param_name(p, ulpt__first_nonfinite(p), name, sizeof name);
        rc = CORRUPT("parameter %s is not finite; libulpt never writes such a file", name);
    }
    if (!rc)
        rc = ulpt__meta_load(func, p, &c->meta);
    if (rc)
        ulpt_prompt_free(p);
    else
        *out = p;
    return rc;
}

double ulpt__shape_params(const ulpt_container *c)
{
    return (double)ulpt__get64(c->shap.data + SHAP_N_PARAMS);
}

double ulpt__shape_rows(const ulpt_container *c)
{
    return (double)ulpt__get32(c->shap.data + SHAP_N_TOKENS) * ulpt__get32(c->shap.data + SHAP_DIM);
}

int ulpt__prompt_decode(const char *func, const ulpt_container *c, size_t len, double above,
                        ulpt_prompt **out, ulpt_tensor *tp)
{
    ulpt_prompt_options po;
    shape_options(&c->shap, &po);
    int rc = check_shape(func, c, len, &po, above, tp);
    return rc ? rc : build(func, c, &po, tp, out);
}

/* ---- the public calls --------------------------------------------------------------- */

ULPT__VERSIONED(save_options_v, ulpt_save_options, ULPT_SAVE_OPTIONS_VERSION, "save options",
                ULPT_SAVE_OPTIONS_INIT);

int ulpt_save_options_init(ulpt_save_options *opts, unsigned version)
{
    if (!opts)
        return ULPT_FAIL(ULPT_ERR_INVALID, "opts is NULL");
    return ulpt__versioned_write(__func__, &save_options_v, opts, version,
                                 &save_options_v_defaults);
}

/* A prompt file in a new allocation from *a, `prefix` bytes in. */
static int encode_prompt(const char *func, const ulpt_prompt *p, const ulpt_save_options *opts,
                         size_t prefix, ulpt_allocator *a, unsigned char **base, size_t *len)
{
    ulpt_save_options so;
    int rc = ulpt__versioned_read(func, &save_options_v, opts, &so);
    if (rc)
        return rc;
    if (so.dtype < ULPT_DTYPE_F32 || so.dtype > ULPT_DTYPE_BF16)
        return ulpt__error(ULPT_ERR_INVALID, func, "unknown dtype %d", so.dtype);
    if (so.level < 0 || so.level > 9)
        return ulpt__error(ULPT_ERR_INVALID, func, "zlib level %d is outside 0..9", so.level);
    *a = ulpt__allocator();
    return ulpt__file_encode(func, a, p, so.dtype, so.level, NULL, 0, prefix, base, len);
}

int ulpt_prompt_save_buffer(const ulpt_prompt *p, void **buf, size_t *len,
                            const ulpt_save_options *opts)
{
    if (!p || !buf || !len)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : !buf ? "buf" : "len");
    ulpt_allocator a;
    unsigned char *base;
    int rc = encode_prompt(__func__, p, opts, ULPT_BUFFER_PREFIX, &a, &base, len);
    if (!rc)
        *buf = ulpt__buffer_hand_out(&a, base);
    return rc;
}

int ulpt_prompt_save(const ulpt_prompt *p, const char *path, const ulpt_save_options *opts)
{
    if (!p || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : "path");
    ulpt_allocator a;
    unsigned char *data;
    size_t n;
    int rc = encode_prompt(__func__, p, opts, 0, &a, &data, &n);
    if (rc)
        return rc;
    rc = ulpt__write_atomic(__func__, path, data, n);
    ulpt__free(&a, data);
    return rc;
}
