/* versioned.c -- structs that carry their version in their first field (options, file
 * info).  A caller built against an older header passes a shorter struct: the library
 * reads and writes only the bytes that version has, and the fields it lacks keep their
 * defaults. */
#include "internal.h"

#include <string.h>

static int known(const char *func, const ulpt_versioned *t, unsigned version)
{
    if (version < 1 || version > t->latest)
        return ulpt__error(ULPT_ERR_INVALID, func,
                           "unknown %s version %u (this library knows 1..%u)", t->what, version,
                           t->latest);
    return ULPT_OK;
}

int ulpt__versioned_read(const char *func, const ulpt_versioned *t, const void *in, void *out)
{
    memcpy(out, t->defaults, t->size[t->latest]);
    if (!in)
        return ULPT_OK;
    unsigned version;
    memcpy(&version, in, sizeof version);
    int rc = known(func, t, version);
    if (!rc)
        memcpy(out, in, t->size[version]);
    return rc;
}

int ulpt__versioned_write(const char *func, const ulpt_versioned *t, void *out, unsigned version,
                          const void *src)
{
    int rc = known(func, t, version);
    if (rc)
        return rc;
    memcpy(out, src, t->size[version]);
    memcpy(out, &version, sizeof version);
    return ULPT_OK;
}
