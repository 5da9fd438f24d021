/* layout.c -- the layout of every public struct in libulpt.so.1, frozen at compile time.
 *
 * Callers compiled against an older header pass these structs to a newer library, so a
 * field may never move and a struct may only grow (at its end, with a new version
 * number).  A failing assertion here means an incompatible ABI change: restore the
 * layout, or bump the soname deliberately (a new major version) and update this file.
 * Built for the LP64 targets libulpt supports. */
#include <stddef.h>

#include "ulpt.h"

#define ABI_FIELD(T, f, off) \
    _Static_assert(offsetof(T, f) == (off), #T "." #f " moved: incompatible ABI change")
#define ABI_SIZE(T, size) \
    _Static_assert(sizeof(T) >= (size), #T " shrank: incompatible ABI change")
/* ulpt_allocator has no version field: it can never change */
#define ABI_FROZEN(T, size) _Static_assert(sizeof(T) == (size), #T " changed size")

#if defined(__LP64__)
ABI_FIELD(ulpt_allocator, alloc, 0);
ABI_FIELD(ulpt_allocator, realloc, 8);
ABI_FIELD(ulpt_allocator, free, 16);
ABI_FIELD(ulpt_allocator, user, 24);
ABI_FROZEN(ulpt_allocator, 32);
ABI_FIELD(ulpt_prompt_options, version, 0);
ABI_FIELD(ulpt_prompt_options, n_tokens, 4);
ABI_FIELD(ulpt_prompt_options, rank, 8);
ABI_FIELD(ulpt_prompt_options, dim, 12);
ABI_FIELD(ulpt_prompt_options, n_groups, 16);
ABI_FIELD(ulpt_prompt_options, projection_seed, 24);
ABI_FIELD(ulpt_prompt_options, projection_kind, 32);
ABI_FIELD(ulpt_prompt_options, init_seed, 40);
ABI_FIELD(ulpt_prompt_options, init_std, 48);
ABI_FIELD(ulpt_prompt_options, flags, 52);
ABI_SIZE(ulpt_prompt_options, 56);
ABI_FIELD(ulpt_optimizer_options, version, 0);
ABI_FIELD(ulpt_optimizer_options, kind, 4);
ABI_FIELD(ulpt_optimizer_options, lr, 8);
ABI_FIELD(ulpt_optimizer_options, beta1, 16);
ABI_FIELD(ulpt_optimizer_options, beta2, 24);
ABI_FIELD(ulpt_optimizer_options, eps, 32);
ABI_FIELD(ulpt_optimizer_options, weight_decay, 40);
ABI_FIELD(ulpt_optimizer_options, momentum, 48);
ABI_FIELD(ulpt_optimizer_options, max_grad_norm, 56);
ABI_FIELD(ulpt_optimizer_options, schedule, 64);
ABI_FIELD(ulpt_optimizer_options, warmup_steps, 72);
ABI_FIELD(ulpt_optimizer_options, total_steps, 80);
ABI_SIZE(ulpt_optimizer_options, 88);
ABI_FIELD(ulpt_save_options, version, 0);
ABI_FIELD(ulpt_save_options, dtype, 4);
ABI_FIELD(ulpt_save_options, level, 8);
ABI_SIZE(ulpt_save_options, 12);
ABI_FIELD(ulpt_file_info, version, 0);
ABI_FIELD(ulpt_file_info, kind, 4);
ABI_FIELD(ulpt_file_info, format_major, 8);
ABI_FIELD(ulpt_file_info, format_minor, 12);
ABI_FIELD(ulpt_file_info, dtype, 16);
ABI_FIELD(ulpt_file_info, file_bytes, 24);
ABI_FIELD(ulpt_file_info, stored_bytes, 32);
ABI_SIZE(ulpt_file_info, 40);
ABI_FIELD(ulpt_zo_options, version, 0);
ABI_FIELD(ulpt_zo_options, epsilon, 8);
ABI_FIELD(ulpt_zo_options, directions, 16);
ABI_FIELD(ulpt_zo_options, batch, 20);
ABI_FIELD(ulpt_zo_options, distribution, 24);
ABI_FIELD(ulpt_zo_options, perturb, 28);
ABI_FIELD(ulpt_zo_options, seed, 32);
ABI_SIZE(ulpt_zo_options, 40);
ABI_FIELD(ulpt_fit_options, version, 0);
ABI_FIELD(ulpt_fit_options, max_iters, 4);
ABI_FIELD(ulpt_fit_options, tol, 8);
ABI_SIZE(ulpt_fit_options, 16);
/* ulpt_bank_request travels in arrays and has no version field: it can never change */
ABI_FIELD(ulpt_bank_request, id, 0);
ABI_FIELD(ulpt_bank_request, dst, 8);
ABI_FIELD(ulpt_bank_request, ld, 16);
ABI_FROZEN(ulpt_bank_request, 24);
#endif

int main(void) { return 0; }
