/* lock.c -- the threading rules, enforced where it is cheap (include/ulpt.h, THREADS).
 *
 * Each prompt, optimizer and forward-only handle carries one atomic word: a count of
 * the calls reading it (forward, saves), a HELD bit for the one call that owns it (a
 * writer, or a training step from entry to return) and a WRITE bit while that call is
 * changing what readers read.  Every operation is one atomic read-modify-write that
 * either succeeds or reports ULPT_ERR_BUSY: nothing waits, nothing is allocated.  A
 * caller that breaks the rules gets an error naming what holds the object instead of a
 * wrong result. */
#include "internal.h"

/* "the prompt is in use by ulpt_train_step", or by the readers. */
static int busy(const char *func, const ulpt_lock *l, const char *what, unsigned w)
{
    if (w & (ULPT__LOCK_HELD | ULPT__LOCK_WRITE)) {
        const char *holder = atomic_load_explicit(&((ulpt_lock *)l)->holder,
                                                  memory_order_relaxed);
        return ulpt__error(ULPT_ERR_BUSY, func, "the %s is in use by %s (threading rules)", what,
                           holder ? holder : "another call");
    }
    return ulpt__error(ULPT_ERR_BUSY, func,
                       "the %s is being read by %u running call(s) (a forward or a save; "
                       "threading rules)", what, w & ULPT__LOCK_READERS);
}

void ulpt__lock_init(ulpt_lock *l)
{
    atomic_init(&l->word, 0);
    atomic_init(&l->holder, NULL);
}

int ulpt__lock_read(const char *func, ulpt_lock *l, const char *what)
{
    unsigned w = atomic_fetch_add_explicit(&l->word, 1, memory_order_acquire);
    if (w & ULPT__LOCK_WRITE) {
        atomic_fetch_sub_explicit(&l->word, 1, memory_order_relaxed);
        return busy(func, l, what, w);
    }
    return ULPT_OK;
}

void ulpt__lock_unread(ulpt_lock *l) { atomic_fetch_sub_explicit(&l->word, 1, memory_order_release); }

int ulpt__lock_hold(const char *func, ulpt_lock *l, const char *what, int write)
{
    unsigned w = 0, want = ULPT__LOCK_HELD | (write ? ULPT__LOCK_WRITE : 0);
    /* only from idle: no holder and no reader */
    if (!atomic_compare_exchange_strong_explicit(&l->word, &w, want, memory_order_acquire,
                                                 memory_order_relaxed))
        return busy(func, l, what, w);
    atomic_store_explicit(&l->holder, func, memory_order_relaxed);
    return ULPT_OK;
}

int ulpt__lock_write(const char *func, ulpt_lock *l, const char *what)
{
    unsigned w = ULPT__LOCK_HELD;
    if (!atomic_compare_exchange_strong_explicit(&l->word, &w, ULPT__LOCK_HELD | ULPT__LOCK_WRITE,
                                                 memory_order_acquire, memory_order_relaxed))
        return busy(func, l, what, w & ~(ULPT__LOCK_HELD | ULPT__LOCK_WRITE));
    return ULPT_OK;
}

void ulpt__lock_unwrite(ulpt_lock *l)
{
    atomic_fetch_and_explicit(&l->word, ~ULPT__LOCK_WRITE, memory_order_release);
}

void ulpt__lock_release(ulpt_lock *l)
{
    atomic_store_explicit(&l->holder, NULL, memory_order_relaxed);
    atomic_fetch_and_explicit(&l->word, ~(ULPT__LOCK_HELD | ULPT__LOCK_WRITE),
                              memory_order_release);
}
