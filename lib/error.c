/* error.c -- version, error codes and the thread-local last-error message. */
#include "internal.h"

#include <stdio.h>

#define ULPT_STR2(x) #x
#define ULPT_STR(x)  ULPT_STR2(x)

unsigned ulpt_version(void) { return ULPT_VERSION_NUMBER; }

const char *ulpt_version_string(void)
{
    return ULPT_STR(ULPT_VERSION_MAJOR) "." ULPT_STR(ULPT_VERSION_MINOR) "." ULPT_STR(
        ULPT_VERSION_PATCH);
}

const char *ulpt_strerror(int code)
{
    switch (code) {
    case ULPT_OK:
        return "success";
    case ULPT_ERR_INVALID:
        return "invalid argument";
    case ULPT_ERR_NOMEM:
        return "out of memory";
    case ULPT_ERR_IO:
        return "input/output error";
    case ULPT_ERR_FORMAT:
        return "unsupported format";
    case ULPT_ERR_CORRUPT:
        return "corrupt data";
    case ULPT_ERR_MISMATCH:
        return "mismatch";
    case ULPT_ERR_NONFINITE:
        return "non-finite value";
    case ULPT_ERR_CALLBACK:
        return "callback failed";
    case ULPT_ERR_UNSUPPORTED:
        return "unsupported";
    case ULPT_ERR_NOT_FOUND:
        return "not found";
    case ULPT_ERR_BUSY:
        return "busy";
    default:
        return "unknown error";
    }
}

/* One message per thread, so concurrent failures never mix. */
static _Thread_local char last_error[1024]; /* room for a long path */

const char *ulpt_last_error(void) { return last_error; }

int ulpt__error(int code, const char *func, const char *fmt, ...)
{
    int n = snprintf(last_error, sizeof last_error, "%s: ", func);
    if (n < 0 || (size_t)n >= sizeof last_error)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}
