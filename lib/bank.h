/* bank.h -- what the files of the prompt bank share: its entries, tables and lock.
 *   bank.c        the public calls and materialising
 *   banktable.c   entries, and splicing them into and out of the tables
 *   bankdir.c     loading a directory of prompt files */
#ifndef ULPT_BANK_H
#define ULPT_BANK_H

#include "internal.h"

#include <pthread.h> /* the includer defines _GNU_SOURCE first */
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

static inline uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static inline ulpt_bank_id make_id(uint32_t slot_index, uint32_t gen)
{
    return (uint64_t)gen << 32 | slot_index;
}

static inline entry *lookup(const ulpt_bank *b, ulpt_bank_id id)
{
    uint32_t i = (uint32_t)id, gen = (uint32_t)(id >> 32);
    if (i >= b->n_slots || !b->slots[i].e || b->slots[i].gen != gen)
        return NULL;
    return b->slots[i].e;
}

static inline uint32_t find_slot(const ulpt_bank *b, const char *name)
{
    if (!b->n_buckets)
        return NONE;
    uint32_t i = b->buckets[hash_name(name) & (b->n_buckets - 1)];
    while (i != NONE && strcmp(b->slots[i].e->name, name) != 0)
        i = b->slots[i].e->next;
    return i;
}

static inline int same_projection(const ulpt_projection *a, const ulpt_projection *c)
{
    return ulpt_projection_seed(a) == ulpt_projection_seed(c) &&
           ulpt_projection_kind(a) == ulpt_projection_kind(c) &&
           ulpt_projection_rank(a) == ulpt_projection_rank(c) &&
           ulpt_projection_dim(a) == ulpt_projection_dim(c);
}

static inline shared *table_find(const ulpt_bank *b, const ulpt_projection *p)
{
    for (size_t k = 0; k < b->n_projs; k++)
        if (same_projection(b->projs[k].p, p))
            return &b->projs[k];
    return NULL;
}

/* Point the entry's group g at `to` instead of its own projection (the same matrix). */
static inline void adopt(entry *e, uint32_t g, ulpt_projection *to)
{
    if (e->proj[g] == to)
        return;
    ulpt_projection_free(e->proj[g]);
    e->proj[g] = ulpt__projection_ref(to);
}

static inline void lock_read(const ulpt_bank *b)
{
    pthread_rwlock_rdlock((pthread_rwlock_t *)&b->lock);
}
static inline void lock_write(ulpt_bank *b) { pthread_rwlock_wrlock(&b->lock); }
static inline void unlock(const ulpt_bank *b)
{
    pthread_rwlock_unlock((pthread_rwlock_t *)&b->lock);
}

/* ---- banktable.c ------------------------------------------------------------------------ */

void ulpt__bank_entry_free(const ulpt_allocator *a, entry *e);

/* Check p against the bank and copy it into a new entry (own projection references).
 * `what` names p in messages: "the prompt" or a file's path. */
int ulpt__bank_entry_make(const char *func, const ulpt_bank *b, const ulpt_prompt *p,
                          const char *name, const char *what, entry **out);

/* Write lock held.  Check that the k entries can go in (names free, room reserved);
 * nothing changes on failure except the capacity of the tables. */
int ulpt__bank_can_insert(const char *func, ulpt_bank *b, entry *const *es, size_t k,
                          const char *const *whats);
/* Splice in an entry can_insert made room for; its id. */
ulpt_bank_id ulpt__bank_insert(ulpt_bank *b, entry *e);
/* Drop e's groups from the projection table, and e's name from its chain. */
void ulpt__bank_release_projections(ulpt_bank *b, const entry *e);
void ulpt__bank_unchain(ulpt_bank *b, uint32_t i);

#endif /* ULPT_BANK_H */
