/* load.c -- the one place that reads a file and dispatches on its kind: the sections
 * each kind must and must not have, then the prompt (file.c), then a checkpoint's
 * optimizer and forward-only state (checkpoint.c); and every public load and inspect.
 * The layers below never call up into this file. */
#include "format.h"

#include <string.h>

/* The sections each kind of file must have and must not have (end of check 3). */
static int check_sections(const char *func, const ulpt_container *c)
{
    if (!c->shap.data || !c->parm.data)
        return CORRUPT("the %s section is missing", !c->shap.data ? "shape" : "parameter");
    if (c->kind == ULPT_FILE_CHECKPOINT && (!c->optm.data || !c->mom1.data || !c->mom2.data))
        return CORRUPT("checkpoint without complete optimizer sections");
    if (c->kind == ULPT_FILE_PROMPT && (c->optm.data || c->mom1.data || c->mom2.data))
        return CORRUPT("a prompt file with optimizer sections");
    if (c->kind == ULPT_FILE_PROMPT && c->zost.data)
        return CORRUPT("a prompt file with a forward-only section (ZOST)");
    return ULPT_OK;
}

/* Everything from a file's bytes; opt NULL: the prompt only; zo (with opt) not NULL:
 * the forward-only trainer of a ZOST checkpoint too.  info, if not NULL, describes the
 * file. */
static int decode(const char *func, const unsigned char *b, size_t len, ulpt_prompt **out,
                      ulpt_optimizer **opt, ulpt_zo **zo, ulpt_file_info *info)
{
    ulpt_container c;
    int rc = ulpt__container_read(func, b, len, &c);
    if (!rc)
        rc = check_sections(func, &c);
    if (!rc)
        rc = ulpt__shape_check(func, &c);
    if (rc)
        return rc;
    if (opt && c.kind != ULPT_FILE_CHECKPOINT)
        return ulpt__error(ULPT_ERR_FORMAT, func, "a prompt file, not a checkpoint");
    if (zo && !c.zost.data)
        return ulpt__error(ULPT_ERR_FORMAT, func,
                           "a checkpoint without forward-only state (format %u.%u, no ZOST "
                           "section); load it with ulpt_checkpoint_load and start a stream "
                           "with ulpt_zo_create", c.major, c.minor);
    ulpt_zo_options zoo;
    uint64_t position;
    if (opt && c.zost.data && (rc = ulpt__zost_read(func, &c.zost, &zoo, &position)))
        return rc; /* checked by every checkpoint reader, built only for zo */
    ulpt_tensor tp;
    ulpt_prompt *p = NULL;
    ulpt_optimizer *o = NULL;
    ulpt_zo *z = NULL;
    /* what the objects built on the prompt take, for the memory bound (check 5) */
    const double np = ulpt__shape_params(&c), nd = ulpt__shape_rows(&c);
    const double above = (opt ? ulpt__optimizer_bytes(np, nd) : 0) +
                         (zo ? ulpt__zo_bytes(&zoo, np, nd) : 0);
    if ((rc = ulpt__prompt_decode(func, &c, len, above, &p, &tp)) != ULPT_OK)
        return rc;
    if (opt && (rc = ulpt__checkpoint_decode(func, &c, p, &o, zo ? &z : NULL))) {
        ulpt_prompt_free(p);
        return rc;
    }
    if (info) {
        info->kind = c.kind;
        info->format_major = c.major;
        info->format_minor = c.minor;
        info->dtype = tp.dtype;
        info->file_bytes = len;
        info->stored_bytes = tp.len;
    }
    *out = p;
    if (opt)
        *opt = o;
    if (zo)
        *zo = z;
    return ULPT_OK;
}

ULPT__VERSIONED(file_info_v, ulpt_file_info, ULPT_FILE_INFO_VERSION, "info", ULPT_FILE_INFO_INIT);

int ulpt_prompt_load_buffer(ulpt_prompt **out, const void *buf, size_t len)
{
    if (!out || !buf)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : "buf");
    return decode(__func__, buf, len, out, NULL, NULL, NULL);
}

static int load(const char *func, const char *path, ulpt_prompt **out, ulpt_optimizer **opt,
                    ulpt_zo **zo, ulpt_file_info *info)
{
    ulpt_allocator a = ulpt__allocator();
    void *data;
    size_t len;
    int rc = ulpt__read_file(func, &a, path, &data, &len);
    if (rc)
        return rc;
    rc = decode(func, data, len, out, opt, zo, info);
    ulpt__free(&a, data);
    return rc;
}

int ulpt_prompt_load(ulpt_prompt **out, const char *path)
{
    if (!out || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : "path");
    return load(__func__, path, out, NULL, NULL, NULL);
}

int ulpt_prompt_load_for_model(ulpt_prompt **out, const char *path, const char *model)
{
    if (!out || !path || !model)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : !path ? "path" : "model");
    ulpt_prompt *p;
    int rc = load(__func__, path, &p, NULL, NULL, NULL);
    if (rc)
        return rc;
    const char *tuned = ulpt_prompt_get_meta(p, "model");
    if (!tuned || strcmp(tuned, model) != 0) {
        rc = ULPT_FAIL(ULPT_ERR_MISMATCH, "%s was tuned for model \"%s\", not \"%s\"", path,
                       tuned ? tuned : "(none recorded)", model);
        ulpt_prompt_free(p);
        return rc;
    }
    *out = p;
    return ULPT_OK;
}

int ulpt_file_inspect(const char *path, ulpt_file_info *info)
{
    if (!path || !info)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !path ? "path" : "info");
    ulpt_file_info tmp;
    int rc = ulpt__versioned_read(__func__, &file_info_v, info, &tmp);
    if (rc)
        return rc;
    ulpt_allocator a = ulpt__allocator();
    void *data;
    size_t len;
    if ((rc = ulpt__read_file(__func__, &a, path, &data, &len)) != ULPT_OK)
        return rc;
    /* a checkpoint is checked with its optimizer sections, a prompt file without */
    const unsigned char *b = data;
    int checkpoint = len >= HEADER_BYTES && ulpt__get32(b + HDR_KIND) == ULPT_FILE_CHECKPOINT;
    ulpt_prompt *p = NULL;
    ulpt_optimizer *o = NULL;
    rc = decode(__func__, b, len, &p, checkpoint ? &o : NULL, NULL, &tmp);
    ulpt__free(&a, data);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    if (!rc) /* only the fields the caller's version has */
        ulpt__versioned_write(__func__, &file_info_v, info, info->version, &tmp);
    return rc;
}

int ulpt_file_info_init(ulpt_file_info *info, unsigned version)
{
    if (!info)
        return ULPT_FAIL(ULPT_ERR_INVALID, "info is NULL");
    return ulpt__versioned_write(__func__, &file_info_v, info, version, &file_info_v_defaults);
}

int ulpt_checkpoint_load(ulpt_prompt **prompt, ulpt_optimizer **opt, const char *path)
{
    if (!prompt || !opt || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL",
                         !prompt ? "prompt" : !opt ? "opt" : "path");
    return load(__func__, path, prompt, opt, NULL, NULL);
}

int ulpt_checkpoint_load_buffer(ulpt_prompt **prompt, ulpt_optimizer **opt, const void *buf,
                                size_t len)
{
    if (!prompt || !opt || !buf)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL",
                         !prompt ? "prompt" : !opt ? "opt" : "buf");
    return decode(__func__, buf, len, prompt, opt, NULL, NULL);
}

int ulpt_zo_checkpoint_load(ulpt_prompt **prompt, ulpt_optimizer **opt, ulpt_zo **zo,
                            const char *path)
{
    if (!prompt || !opt || !zo || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL",
                         !prompt ? "prompt" : !opt ? "opt" : !zo ? "zo" : "path");
    return load(__func__, path, prompt, opt, zo, NULL);
}

int ulpt_zo_checkpoint_load_buffer(ulpt_prompt **prompt, ulpt_optimizer **opt, ulpt_zo **zo,
                                   const void *buf, size_t len)
{
    if (!prompt || !opt || !zo || !buf)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL",
                         !prompt ? "prompt" : !opt ? "opt" : !zo ? "zo" : "buf");
    return decode(__func__, buf, len, prompt, opt, zo, NULL);
}
