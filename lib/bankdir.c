/* bankdir.c -- ulpt_bank_load_dir: every prompt file of a directory, read, checked and
 * built outside the lock, then spliced in together or not at all. */
#define _GNU_SOURCE /* pthread_rwlock_t under -std=c11 */
#include "bank.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- loading a directory ------------------------------------------------------------- */

static int by_name(const void *a, const void *c)
{
    return strcmp(*(char *const *)a, *(char *const *)c);
}

/* The prompt files' names in dir, sorted, into a new array of new strings. */
static int list_dir(const char *func, const ulpt_allocator *a, const char *dir, char ***out,
                    size_t *count)
{
    DIR *d = opendir(dir);
    if (!d)
        return ulpt__error(ULPT_ERR_IO, func, "cannot open directory %s: %s", dir,
                           strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = ULPT_OK;
    const size_t sl = strlen(SUFFIX);
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno)
                rc = ulpt__error(ULPT_ERR_IO, func, "cannot list directory %s: %s", dir,
                                 strerror(errno));
            break;
        }
        size_t len = strlen(de->d_name);
        if (len <= sl || strcmp(de->d_name + len - sl, SUFFIX) != 0)
            continue;
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            char **grown = ulpt__alloc(a, ncap * sizeof *grown);
            if (!grown) {
                rc = ulpt__error(ULPT_ERR_NOMEM, func, "no memory to list %s", dir);
                break;
            }
            if (n)
                memcpy(grown, names, n * sizeof *names);
            ulpt__free(a, names);
            names = grown, cap = ncap;
        }
        if (!(names[n] = ulpt__alloc(a, len + 1))) {
            rc = ulpt__error(ULPT_ERR_NOMEM, func, "no memory to list %s", dir);
            break;
        }
        memcpy(names[n++], de->d_name, len + 1);
    }
    closedir(d);
    if (rc) {
        for (size_t k = 0; k < n; k++)
            ulpt__free(a, names[k]);
        ulpt__free(a, names);
        return rc;
    }
    if (n)
        qsort(names, n, sizeof *names, by_name);
    *out = names;
    *count = n;
    return ULPT_OK;
}

/* Share projections with the entries already prepared and with the bank, so that loading
 * many prompts of one seed holds one P, not one per file, before they go in. */
static void share_early(const ulpt_bank *b, entry *e, entry *const *prepared, size_t k)
{
    for (uint32_t g = 0; g < e->groups; g++) {
        ulpt_projection *to = NULL;
        for (size_t j = k; j-- > 0 && !to;)
            for (uint32_t h = 0; h < prepared[j]->groups && !to; h++)
                if (same_projection(prepared[j]->proj[h], e->proj[g]))
                    to = prepared[j]->proj[h];
        if (!to) {
            lock_read(b);
            const shared *t = table_find(b, e->proj[g]);
            if (t)
                adopt(e, g, t->p); /* takes a reference while the bank holds one */
            unlock(b);
        } else {
            adopt(e, g, to);
        }
    }
}

int ulpt_bank_load_dir(ulpt_bank *b, const char *dir, size_t *count)
{
    const char *func = __func__;
    if (!b || !dir)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !b ? "bank" : "dir");
    char **names = NULL;
    size_t n = 0, k = 0;
    int rc = list_dir(func, &b->al, dir, &names, &n);
    if (rc)
        return rc;
    entry **es = n ? ulpt__alloc(&b->al, n * sizeof *es) : NULL;
    char **paths = n ? ulpt__calloc(&b->al, n, sizeof *paths) : NULL;
    if (n && (!es || !paths))
        rc = ulpt__error(ULPT_ERR_NOMEM, func, "no memory to load %zu files", n);
    for (; !rc && k < n; k++) {
        size_t len = strlen(dir) + 1 + strlen(names[k]) + 1;
        if (!(paths[k] = ulpt__alloc(&b->al, len))) {
            rc = ulpt__error(ULPT_ERR_NOMEM, func, "no memory for a path in %s", dir);
            break;
        }
        snprintf(paths[k], len, "%s/%s", dir, names[k]);
        names[k][strlen(names[k]) - strlen(SUFFIX)] = '\0'; /* the prompt's name */
        ulpt_prompt *p;
        if ((rc = ulpt_prompt_load(&p, paths[k])) != ULPT_OK) {
            char why[1024];
            snprintf(why, sizeof why, "%s", ulpt_last_error());
            rc = ulpt__error(rc, func, "%s: %s", paths[k], why);
            break;
        }
        rc = ulpt__bank_entry_make(func, b, p, names[k], paths[k], &es[k]);
        ulpt_prompt_free(p);
        if (rc)
            break;
        share_early(b, es[k], es, k);
    }
    if (!rc) {
        lock_write(b);
        rc = ulpt__bank_can_insert(func, b, es, n, (const char *const *)paths);
        for (size_t j = 0; !rc && j < n; j++)
            ulpt__bank_insert(b, es[j]);
        unlock(b);
        if (!rc)
            k = 0; /* the bank owns them now */
    }
    for (size_t j = 0; j < k; j++)
        ulpt__bank_entry_free(&b->al, es[j]);
    for (size_t j = 0; j < n; j++) {
        ulpt__free(&b->al, names[j]);
        if (paths)
            ulpt__free(&b->al, paths[j]);
    }
    ulpt__free(&b->al, names);
    ulpt__free(&b->al, paths);
    ulpt__free(&b->al, es);
    if (!rc && count)
        *count = n;
    return rc;
}
