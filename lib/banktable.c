/* banktable.c -- the bank's entries and tables: an entry is one block (header,
 * projection pointers, [Z | s | b], name); slots carry generations; names hash into
 * chains; projections are shared through a counted table.  Growing happens before any
 * change readers could see. */
#define _GNU_SOURCE /* pthread_rwlock_t under -std=c11 */
#include "bank.h"

/* ---- entries ------------------------------------------------------------------------ */

void ulpt__bank_entry_free(const ulpt_allocator *a, entry *e)
{
    if (!e)
        return;
    for (uint32_t g = 0; g < e->groups; g++)
        ulpt_projection_free(e->proj[g]);
    ulpt__free(a, e);
}

/* Check p against the bank and copy it into a new entry (own projection references).
 * `what` names p in messages: "the prompt" or a file's path. */
int ulpt__bank_entry_make(const char *func, const ulpt_bank *b, const ulpt_prompt *p,
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
int ulpt__bank_can_insert(const char *func, ulpt_bank *b, entry *const *es, size_t k,
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

ulpt_bank_id ulpt__bank_insert(ulpt_bank *b, entry *e)
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

void ulpt__bank_release_projections(ulpt_bank *b, const entry *e)
{
    for (uint32_t g = 0; g < e->groups; g++)
        for (size_t k = 0; k < b->n_projs; k++)
            if (b->projs[k].p == e->proj[g]) {
                if (--b->projs[k].users == 0)
                    b->projs[k] = b->projs[--b->n_projs];
                break;
            }
}

void ulpt__bank_unchain(ulpt_bank *b, uint32_t i)
{
    uint32_t *at = &b->buckets[hash_name(b->slots[i].e->name) & (b->n_buckets - 1)];
    while (*at != i)
        at = &b->slots[*at].e->next;
    *at = b->slots[i].e->next;
}
