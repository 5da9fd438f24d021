/* io.c -- whole-file reads and atomic writes.
 *
 * A save writes a temporary file in the target's directory, syncs it, renames it over the
 * target and syncs the directory: at every instant the target is the old file or the new
 * one, never a mix.  The system calls go through ulpt__io so that tests can make each
 * one fail.  Only a regular file (or a symlink to one) is replaced: anything else
 * that exists at the path is refused before a byte is written. */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE /* realpath, PATH_MAX, fchmod */
#endif
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long sys_write(int fd, const void *buf, size_t len) { return (long)write(fd, buf, len); }
static int sys_fsync(int fd) { return fsync(fd); }
static int sys_rename(const char *from, const char *to) { return rename(from, to); }

ulpt_io_ops ulpt__io = { sys_write, sys_fsync, sys_rename };

ULPT__MUST_CHECK static int io_error(const char *func, const char *what, const char *path)
{
    return ulpt__error(ULPT_ERR_IO, func, "%s %s: %s", what, path, strerror(errno));
}

/* The directory part of path ("." when there is none), into buf. */
static void dir_of(const char *path, char *buf, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, size, ".");
    else if (slash == path)
        snprintf(buf, size, "/");
    else
        snprintf(buf, size, "%.*s", (int)(slash - path), path);
}

int ulpt__write_atomic(const char *func, const char *path, const void *data, size_t len)
{
    static atomic_uint counter;
    size_t plen = strlen(path);
    if (plen == 0 || plen > 4000)
        return ulpt__error(ULPT_ERR_INVALID, func, "path length %zu is outside 1..4000", plen);
    /* A symlink is followed, so the file it names is replaced, not the link; an existing
       file's permission bits carry over to its replacement. */
    char resolved[PATH_MAX], tmp[PATH_MAX + 64], dir[PATH_MAX + 1];
    struct stat st;
    mode_t mode = 0;
    const char *given = path;
    if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode) && realpath(path, resolved))
        path = resolved;
    if (stat(path, &st) == 0) {
        /* the rename would put a regular file in place of a device, FIFO, socket or
           directory (as root, a save to /dev/null replaced the device) */
        if (!S_ISREG(st.st_mode))
            return ulpt__error(ULPT_ERR_IO, func, "cannot write %s%s%s: it exists and is "
                               "not a regular file (a device, FIFO, socket or directory)",
                               given, path != given ? ", a symlink to " : "",
                               path != given ? path : "");
        mode = st.st_mode & 07777;
    }
    dir_of(path, dir, sizeof dir);
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
        /* short and hidden, so that a long target name still leaves room */
        snprintf(tmp, sizeof tmp, "%s/.ulpt-tmp-%ld-%u", dir, (long)getpid(),
                 atomic_fetch_add(&counter, 1) ^ (unsigned)time(NULL));
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            return io_error(func, "cannot create a temporary file beside", path);
    }
    if (fd < 0)
        return io_error(func, "cannot create a temporary file beside", path);
    if (mode && fchmod(fd, mode) != 0)
        goto fail;

    const char *p = data;
    size_t left = len;
    while (left > 0) {
        long n = ulpt__io.write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            goto fail;
        }
        p += n;
        left -= (size_t)n;
    }
    if (ulpt__io.fsync(fd) != 0)
        goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (ulpt__io.rename(tmp, path) != 0)
        goto fail;
    /* Make the rename durable.  Best effort: the new file is complete and in place
       already, and reporting a failure now would claim the old one survived. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ulpt__io.fsync(dfd);
        close(dfd);
    }
    return ULPT_OK;

fail:;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    errno = saved;
    return io_error(func, "cannot write", path);
}

int ulpt__read_file(const char *func, const ulpt_allocator *a, const char *path, void **buf,
                    size_t *len)
{
    /* non-blocking, so that a FIFO or device is refused below instead of waited on */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return io_error(func, "cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode))
            errno = EISDIR;
        else if (!S_ISREG(st.st_mode))
            errno = EINVAL;
        int rc = io_error(func, "cannot read", path);
        close(fd);
        return rc;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    size_t size = (size_t)st.st_size;
    char *data = ulpt__alloc(a, size);
    if (!data) {
        close(fd);
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory to read %zu bytes of %s", size, path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, data + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* shrank while reading: the format checks will say what is missing */
        got += (size_t)n;
    }
    close(fd);
    *buf = data;
    *len = got;
    return ULPT_OK;
}
