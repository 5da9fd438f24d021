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
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_BYTES 255
#define STACK_FLOATS 8192 /* f16/bf16 output: rows of E pass through this many floats */
#define NONE UINT32_MAX   /* end of a hash chain or of the free list */
#define SUFFIX ".ulpt"

typedef struct entry {
    uint32_t n, r, groups;
    int kind;
    size_t n_params;
    ulpt_projection **proj; /* one per group, each also in the bank's table */
    float *z, *s, *b;       /* s, b NULL when absent */
    char *name;             /* NULL when unnamed */
    uint32_t next;          /* next slot in this name's hash chain */
} entry;

typedef struct {
    entry *e;       /* NULL when the slot is free */
    uint32_t gen;   /* generation of the slot's prompt (ids carry it); 1.. */
    uint32_t next;  /* the next free slot */
} slot;

typedef struct {
    ulpt_projection *p; /* kept alive by the entries using it */
    size_t users;       /* entry groups using it */
} shared;

struct ulpt_bank {
    ulpt_allocator al;
    pthread_rwlock_t lock;
    char *model;
    uint32_t dim;
    size_t count, named;
    slot *slots;
    uint32_t n_slots, cap_slots, free_head;
    uint32_t *buckets; /* slot of the first entry of each chain, or NONE */
    size_t n_buckets;  /* a power of two, or 0 */
    shared *projs;
    size_t n_projs, cap_projs;
};

/* ---- small helpers ------------------------------------------------------------------ */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static ulpt_bank_id make_id(uint32_t slot_index, uint32_t gen)
{
    return (uint64_t)gen << 32 | slot_index;
}

static entry *lookup(const ulpt_bank *b, ulpt_bank_id id)
{
    uint32_t i = (uint32_t)id, gen = (uint32_t)(id >> 32);
    if (i >= b->n_slots || !b->slots[i].e || b->slots[i].gen != gen)
        return NULL;
    return b->slots[i].e;
}

static uint32_t find_slot(const ulpt_bank *b, const char *name)
{
    if (!b->n_buckets)
        return NONE;
    uint32_t i = b->buckets[hash_name(name) & (b->n_buckets - 1)];
    while (i != NONE && strcmp(b->slots[i].e->name, name) != 0)
        i = b->slots[i].e->next;
    return i;
}

static int same_projection(const ulpt_projection *a, const ulpt_projection *c)
{
    return ulpt_projection_seed(a) == ulpt_projection_seed(c) &&
           ulpt_projection_kind(a) == ulpt_projection_kind(c) &&
           ulpt_projection_rank(a) == ulpt_projection_rank(c) &&
           ulpt_projection_dim(a) == ulpt_projection_dim(c);
}

static shared *table_find(const ulpt_bank *b, const ulpt_projection *p)
{
    for (size_t k = 0; k < b->n_projs; k++)
        if (same_projection(b->projs[k].p, p))
            return &b->projs[k];
    return NULL;
}

/* Point the entry's group g at `to` instead of its own projection (the same matrix). */
static void adopt(entry *e, uint32_t g, ulpt_projection *to)
{
    if (e->proj[g] == to)
        return;
    ulpt_projection_free(e->proj[g]);
    e->proj[g] = ulpt__projection_ref(to);
}

static void lock_read(const ulpt_bank *b) { pthread_rwlock_rdlock((pthread_rwlock_t *)&b->lock); }
static void lock_write(ulpt_bank *b) { pthread_rwlock_wrlock(&b->lock); }
static void unlock(const ulpt_bank *b) { pthread_rwlock_unlock((pthread_rwlock_t *)&b->lock); }

/* ---- entries ------------------------------------------------------------------------ */

static void entry_free(const ulpt_allocator *a, entry *e)
{
    if (!e)
        return;
    for (uint32_t g = 0; g < e->groups; g++)
        ulpt_projection_free(e->proj[g]);
    ulpt__free(a, e);
}

/* Check p against the bank and copy it into a new entry (own projection references).
 * `what` names p in messages: "the prompt" or a file's path. */
static int entry_make(const char *func, const ulpt_bank *b, const ulpt_prompt *p,
                      const char *name, const char *what, entry **out)
{
    size_t name_len = name ? strlen(name) : 0;
    if (name && (name_len == 0 || name_len > NAME_MAX_BYTES))
        return ulpt__error(ULPT_ERR_INVALID, func, "%s: name length %zu is outside 1..%d", what,
                           name_len, NAME_MAX_BYTES);
    if (p->d != b->dim)
        return ulpt__error(ULPT_ERR_MISMATCH, func,
                           "%s has dim %u; the bank's model \"%s\" has dim %u", what, p->d,
                           b->model, b->dim);
    const char *model = ulpt_prompt_get_meta(p, "model");
    if (!model || strcmp(model, b->model) != 0)
        return ulpt__error(ULPT_ERR_MISMATCH, func,
                           "%s was tuned for model \"%s\", not the bank's \"%s\"", what,
                           model ? model : "(none recorded)", b->model);
    size_t bad = ulpt__first_nonfinite(p);
    if (bad < p->n_params) {
        char pname[48];
        ulpt__param_name(p, bad, pname, sizeof pname);
        return ulpt__error(ULPT_ERR_NONFINITE, func, "%s: parameter %s is %g", what, pname,
                           (double)p->params[bad]);
    }
    /* one block: entry | projection pointers | parameters | name; the sizes are those of
       a prompt that exists, so they cannot overflow */
    size_t head = sizeof(entry) + p->groups * sizeof(ulpt_projection *);
    head = (head + sizeof(float) - 1) / sizeof(float) * sizeof(float);
    size_t bytes = head + p->n_params * sizeof(float) + (name ? name_len + 1 : 0);
    unsigned char *block = ulpt__alloc(&b->al, bytes);
    if (!block)
        return ulpt__error(ULPT_ERR_NOMEM, func, "%s: no memory for %zu parameters", what,
                           p->n_params);
    entry *e = (entry *)block;
    *e = (entry){.n = p->n, .r = p->r, .groups = p->groups, .kind = p->kind,
                 .n_params = p->n_params, .next = NONE};
    e->proj = (ulpt_projection **)(block + sizeof(entry));
    e->z = (float *)(block + head);
    memcpy(e->z, p->params, p->n_params * sizeof(float));
    float *next = e->z + (size_t)p->n * p->r;
    if (p->s)
        e->s = next, next += p->d;
    if (p->b)
        e->b = next, next += p->d;
    if (name) {
        e->name = (char *)next;
        memcpy(e->name, name, name_len + 1);
    }
    for (uint32_t g = 0; g < p->groups; g++)
        e->proj[g] = ulpt__projection_ref(p->proj[g]);
    *out = e;
    return ULPT_OK;
}

/* ---- growing the tables (write lock held; nothing visible changes) -------------------- */

static int reserve_slots(ulpt_bank *b, size_t more)
{
    size_t free_slots = 0;
    for (uint32_t i = b->free_head; i != NONE && free_slots < more; i = b->slots[i].next)
        free_slots++;
    if (free_slots >= more || (size_t)b->n_slots + (more - free_slots) <= b->cap_slots)
        return 1;
    size_t need = (size_t)b->n_slots + (more - free_slots);
    if (need >= NONE) /* slot indices are 32-bit, NONE reserved */
        return 0;
    size_t cap = b->cap_slots ? b->cap_slots : 16;
    while (cap < need)
        cap *= 2;
    if (cap >= NONE)
        cap = NONE - 1;
    slot *s = ulpt__alloc(&b->al, cap * sizeof *s);
    if (!s)
        return 0;
    if (b->n_slots)
        memcpy(s, b->slots, b->n_slots * sizeof *s);
    ulpt__free(&b->al, b->slots);
    b->slots = s;
    b->cap_slots = (uint32_t)cap;
    return 1;
}

static void chain_in(ulpt_bank *b, uint32_t i)
{
    uint32_t *head = &b->buckets[hash_name(b->slots[i].e->name) & (b->n_buckets - 1)];
    b->slots[i].e->next = *head;
    *head = i;
}

/* Room for `more` named entries at one chain per name, rehashing into a new array. */
static int reserve_buckets(ulpt_bank *b, size_t more)
{
    size_t need = b->named + more;
    if (need <= b->n_buckets)
        return 1;
    size_t n = b->n_buckets ? b->n_buckets : 16;
    while (n < need)
        n *= 2;
    uint32_t *bk = ulpt__alloc(&b->al, n * sizeof *bk);
    if (!bk)
        return 0;
    for (size_t k = 0; k < n; k++)
        bk[k] = NONE;
    ulpt__free(&b->al, b->buckets);
    b->buckets = bk;
    b->n_buckets = n;
    for (uint32_t i = 0; i < b->n_slots; i++)
        if (b->slots[i].e && b->slots[i].e->name)
            chain_in(b, i);
    return 1;
}

static int reserve_projs(ulpt_bank *b, size_t more)
{
    if (b->n_projs + more <= b->cap_projs)
        return 1;
    size_t cap = b->cap_projs ? b->cap_projs : 8;
    while (cap < b->n_projs + more)
        cap *= 2;
    shared *t = ulpt__alloc(&b->al, cap * sizeof *t);
    if (!t)
        return 0;
    if (b->n_projs)
        memcpy(t, b->projs, b->n_projs * sizeof *t);
    ulpt__free(&b->al, b->projs);
    b->projs = t;
    b->cap_projs = cap;
    return 1;
}

/* ---- splicing entries in and out (write lock held) ------------------------------------ */

/* Check that the k entries can go in (names free, room reserved); nothing changes on
 * failure except the capacity of the tables. */
static int can_insert(const char *func, ulpt_bank *b, entry *const *es, size_t k,
                      const char *const *whats)
{
    size_t named = 0, groups = 0;
    for (size_t j = 0; j < k; j++) {
        if (es[j]->name && find_slot(b, es[j]->name) != NONE)
            return ulpt__error(ULPT_ERR_INVALID, func, "%s: name \"%s\" is already in the bank",
                               whats[j], es[j]->name);
        named += es[j]->name != NULL;
        groups += es[j]->groups;
    }
    if (!reserve_slots(b, k) || !reserve_buckets(b, named) || !reserve_projs(b, groups))
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory to grow the bank's tables");
    return ULPT_OK;
}

static ulpt_bank_id insert(ulpt_bank *b, entry *e)
{
    for (uint32_t g = 0; g < e->groups; g++) {
        shared *t = table_find(b, e->proj[g]);
        if (t) {
            adopt(e, g, t->p);
            t->users++;
        } else {
            b->projs[b->n_projs++] = (shared){e->proj[g], 1};
        }
    }
    uint32_t i;
    if (b->free_head != NONE) {
        i = b->free_head;
        b->free_head = b->slots[i].next;
    } else {
        i = b->n_slots++;
        b->slots[i].gen = 1;
    }
    b->slots[i].e = e;
    b->slots[i].next = NONE;
    if (e->name) {
        chain_in(b, i);
        b->named++;
    }
    b->count++;
    return make_id(i, b->slots[i].gen);
}

static void release_projections(ulpt_bank *b, const entry *e)
{
    for (uint32_t g = 0; g < e->groups; g++)
        for (size_t k = 0; k < b->n_projs; k++)
            if (b->projs[k].p == e->proj[g]) {
                if (--b->projs[k].users == 0)
                    b->projs[k] = b->projs[--b->n_projs];
                break;
            }
}

static void unchain(ulpt_bank *b, uint32_t i)
{
    uint32_t *at = &b->buckets[hash_name(b->slots[i].e->name) & (b->n_buckets - 1)];
    while (*at != i)
        at = &b->slots[*at].e->next;
    *at = b->slots[i].e->next;
}

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
        entry_free(&al, b->slots[i].e);
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
    int rc = entry_make(__func__, b, p, name, what, &e);
    if (rc)
        return rc;
    lock_write(b);
    rc = can_insert(__func__, b, &e, 1, &what);
    if (!rc)
        *id = insert(b, e);
    unlock(b);
    if (rc)
        entry_free(&b->al, e);
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
        unchain(b, i);
        b->named--;
    }
    release_projections(b, e);
    b->slots[i].e = NULL;
    b->count--;
    if (b->slots[i].gen < UINT32_MAX) { /* an exhausted slot retires: ids never repeat */
        b->slots[i].gen++;
        b->slots[i].next = b->free_head;
        b->free_head = i;
    }
    unlock(b);
    entry_free(&b->al, e); /* no reader can reach it any more */
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
        rc = entry_make(func, b, p, names[k], paths[k], &es[k]);
        ulpt_prompt_free(p);
        if (rc)
            break;
        share_early(b, es[k], es, k);
    }
    if (!rc) {
        lock_write(b);
        rc = can_insert(func, b, es, n, (const char *const *)paths);
        for (size_t j = 0; !rc && j < n; j++)
            insert(b, es[j]);
        unlock(b);
        if (!rc)
            k = 0; /* the bank owns them now */
    }
    for (size_t j = 0; j < k; j++)
        entry_free(&b->al, es[j]);
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
