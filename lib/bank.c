/* bank.c -- many prompts of one model, kept as bare parameters, materialised on demand.
 *
 * An entry is one block: its header, its projection pointers, [Z | s | b] and its name;
 * nothing of size n x d is kept.  Ids are (generation << 32 | slot): a slot's generation
 * moves on when its prompt is removed, so an old id never names the slot's next prompt.
 * Names are found through a chained hash over the slots.  Projections are shared through
 * a table keyed by each projection's (seed, kind, rank, dim), counting the entry groups
 * that use it.
 *
 * A readers-writer lock lets materialisations run together while changes splice in alone.
 * Everything slow or fallible -- reading and checking files, building entries, growing the
 * tables -- happens before anything the readers see is changed, so a failed call leaves
 * the bank as it was and readers wait only for the splice. */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np: writers must not starve */
#include "bank.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- the public calls -------------------------------------------------------------- */

int ulpt_bank_create(ulpt_bank **out, const char *model, uint32_t dim)
{
    if (!out || !model)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : "model");
    size_t len = strlen(model);
    if (len == 0)
        return ULPT_FAIL(ULPT_ERR_INVALID, "model name is empty");
    if (dim == 0 || dim > INT_MAX)
        return ULPT_FAIL(ULPT_ERR_INVALID, "dim %u is outside 1..%d", dim, INT_MAX);
    ulpt_allocator al = ulpt__allocator();
    ulpt_bank *b = ulpt__calloc(&al, 1, sizeof *b);
    char *m = b ? ulpt__alloc(&al, len + 1) : NULL;
    if (!m) {
        ulpt__free(&al, b);
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for a bank");
    }
    memcpy(m, model, len + 1);
    b->al = al;
    b->model = m;
    b->dim = dim;
    b->free_head = NONE;
    pthread_rwlockattr_t attr;
    int rc = pthread_rwlockattr_init(&attr);
#ifdef __GLIBC__
    if (!rc)
        rc = pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    if (!rc) {
        rc = pthread_rwlock_init(&b->lock, &attr);
        pthread_rwlockattr_destroy(&attr);
    }
    if (rc) {
        ulpt__free(&al, m);
        ulpt__free(&al, b);
        return ULPT_FAIL(ULPT_ERR_NOMEM, "cannot create the bank's lock: %s", strerror(rc));
    }
    *out = b;
    return ULPT_OK;
}

void ulpt_bank_free(ulpt_bank *b)
{
    if (!b)
        return;
    ulpt_allocator al = b->al;
    for (uint32_t i = 0; i < b->n_slots; i++)
        ulpt__bank_entry_free(&al, b->slots[i].e);
    pthread_rwlock_destroy(&b->lock);
    ulpt__free(&al, b->slots);
    ulpt__free(&al, b->buckets);
    ulpt__free(&al, b->projs);
    ulpt__free(&al, b->model);
    ulpt__free(&al, b);
}

int ulpt_bank_add(ulpt_bank *b, ulpt_bank_id *id, const ulpt_prompt *p, const char *name)
{
    if (!b || !id || !p)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !b ? "bank" : !id ? "id" : "prompt");
    entry *e;
    const char *what = "the prompt";
    ulpt_lock *l = (ulpt_lock *)&p->lock; /* never a const object; read while no step writes */
    int rc = ulpt__lock_read(__func__, l, "prompt");
    if (rc)
        return rc;
    rc = ulpt__bank_entry_make(__func__, b, p, name, what, &e);
    ulpt__lock_unread(l);
    if (rc)
        return rc;
    lock_write(b);
    rc = ulpt__bank_can_insert(__func__, b, &e, 1, &what);
    if (!rc)
        *id = ulpt__bank_insert(b, e);
    unlock(b);
    if (rc)
        ulpt__bank_entry_free(&b->al, e);
    return rc;
}

int ulpt_bank_remove(ulpt_bank *b, ulpt_bank_id id)
{
    if (!b)
        return ULPT_FAIL(ULPT_ERR_INVALID, "bank is NULL");
    lock_write(b);
    entry *e = lookup(b, id);
    if (!e) {
        unlock(b);
        return ULPT_FAIL(ULPT_ERR_NOT_FOUND, "id %#llx is not in the bank (removed, or never added)",
                         (unsigned long long)id);
    }
    uint32_t i = (uint32_t)id;
    if (e->name) {
        ulpt__bank_unchain(b, i);
        b->named--;
    }
    ulpt__bank_release_projections(b, e);
    b->slots[i].e = NULL;
    b->count--;
    if (b->slots[i].gen < UINT32_MAX) { /* an exhausted slot retires: ids never repeat */
        b->slots[i].gen++;
        b->slots[i].next = b->free_head;
        b->free_head = i;
    }
    unlock(b);
    ulpt__bank_entry_free(&b->al, e); /* no reader can reach it any more */
    return ULPT_OK;
}

int ulpt_bank_find(const ulpt_bank *b, const char *name, ulpt_bank_id *id)
{
    if (!b || !name || !id)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !b ? "bank" : !name ? "name" : "id");
    lock_read(b);
    uint32_t i = find_slot(b, name);
    if (i != NONE)
        *id = make_id(i, b->slots[i].gen);
    unlock(b);
    if (i == NONE)
        return ULPT_FAIL(ULPT_ERR_NOT_FOUND, "no prompt called \"%s\" in the bank", name);
    return ULPT_OK;
}

int ulpt_bank_n_tokens(const ulpt_bank *b, ulpt_bank_id id, uint32_t *n_tokens)
{
    if (!b || !n_tokens)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !b ? "bank" : "n_tokens");
    lock_read(b);
    const entry *e = lookup(b, id);
    if (e)
        *n_tokens = e->n;
    unlock(b);
    if (!e)
        return ULPT_FAIL(ULPT_ERR_NOT_FOUND, "id %#llx is not in the bank (removed, or never added)",
                         (unsigned long long)id);
    return ULPT_OK;
}

size_t ulpt_bank_count(const ulpt_bank *b)
{
    if (!b)
        return 0;
    lock_read(b);
    size_t n = b->count;
    unlock(b);
    return n;
}

uint32_t ulpt_bank_dim(const ulpt_bank *b) { return b ? b->dim : 0; }
const char *ulpt_bank_model(const ulpt_bank *b) { return b ? b->model : NULL; }

/* ---- materialising ------------------------------------------------------------------- */

/* E of one entry into dst.  f32 goes straight through the prompt's forward; half
 * precision goes a few rows at a time through buf (buf_floats >= dim), so E never
 * exists in float32 as a whole. */
static int write_entry(const entry *e, uint32_t d, void *dst, size_t ld, int dtype, float *buf,
                       size_t buf_floats)
{
    ulpt_prompt v;
    if (dtype == ULPT_DTYPE_F32) {
        ulpt__prompt_view(&v, e->n, e->r, d, e->groups, e->kind, e->proj, e->z, e->s, e->b);
        return ulpt_prompt_forward(&v, dst, ld);
    }
    const size_t ng = e->n / e->groups, chunk = buf_floats / d;
    for (size_t g = 0; g < e->groups; g++)
        for (size_t i = 0; i < ng; i += chunk) {
            size_t rows = ng - i < chunk ? ng - i : chunk, row0 = g * ng + i;
            ulpt__prompt_view(&v, (uint32_t)rows, e->r, d, 1, e->kind, e->proj + g,
                              e->z + row0 * e->r, e->s, e->b);
            int rc = ulpt_prompt_forward(&v, buf, d);
            if (rc)
                return rc;
            for (size_t k = 0; k < rows; k++)
                (dtype == ULPT_DTYPE_F16 ? ulpt__f32_to_f16_n : ulpt__f32_to_bf16_n)(
                    buf + k * d, (uint16_t *)dst + (row0 + k) * ld, d);
        }
    return ULPT_OK;
}

int ulpt_bank_materialise(const ulpt_bank *b, const ulpt_bank_request *req, size_t count,
                          int dtype)
{
    if (!b || (!req && count))
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !b ? "bank" : "requests");
    if (dtype < ULPT_DTYPE_F32 || dtype > ULPT_DTYPE_BF16)
        return ULPT_FAIL(ULPT_ERR_INVALID, "unknown dtype %d", dtype);
    for (size_t k = 0; k < count; k++) {
        if (!req[k].dst)
            return ULPT_FAIL(ULPT_ERR_INVALID, "request %zu: dst is NULL", k);
        if (req[k].ld < b->dim || req[k].ld > INT_MAX)
            return ULPT_FAIL(ULPT_ERR_INVALID, "request %zu: row stride %zu is outside [dim %u, %d]",
                             k, req[k].ld, b->dim, INT_MAX);
    }
    float stack[STACK_FLOATS], *buf = stack, *heap = NULL;
    if (dtype != ULPT_DTYPE_F32 && b->dim > STACK_FLOATS) {
        if (!(heap = ulpt__alloc(&b->al, (size_t)b->dim * sizeof(float))))
            return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for a row of %u floats", b->dim);
        buf = heap;
    }
    int rc = ULPT_OK;
    lock_read(b);
    for (size_t k = 0; k < count && !rc; k++)
        if (!lookup(b, req[k].id))
            rc = ULPT_FAIL(ULPT_ERR_NOT_FOUND,
                           "request %zu: id %#llx is not in the bank (removed, or never added)", k,
                           (unsigned long long)req[k].id);
    for (size_t k = 0; k < count && !rc; k++)
        rc = write_entry(lookup(b, req[k].id), b->dim, req[k].dst, req[k].ld, dtype, buf,
                         heap ? b->dim : STACK_FLOATS);
    unlock(b);
    ulpt__free(&b->al, heap);
    return rc;
}
