/* internal.h -- what the files of lib/ share; never installed. */
#ifndef ULPT_INTERNAL_H
#define ULPT_INTERNAL_H

#include "ulpt.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Internal functions whose result says whether they worked: ignoring it is a bug. */
#if defined(__GNUC__) || defined(__clang__)
#define ULPT__MUST_CHECK __attribute__((warn_unused_result))
#else
#define ULPT__MUST_CHECK
#endif

/* ---- errors (error.c) ----------------------------------------------------------- */

/* Record "func: message" as this thread's last error and return code. */
ULPT__MUST_CHECK int ulpt__error(int code, const char *func, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
#define ULPT_FAIL(code, ...) ulpt__error((code), __func__, __VA_ARGS__)
/* A bad option (ULPT_ERR_INVALID), reported as coming from the public call `func` in
 * scope that was given it. */
#define BAD_OPTION(...) ulpt__error(ULPT_ERR_INVALID, func, __VA_ARGS__)

/* ---- versioned structs (versioned.c) ----------------------------------------------- */

/* A public struct whose first field is `unsigned version`. */
typedef struct {
    const char *what;     /* for messages: "options", "save options", "info" */
    unsigned latest;      /* this library's version of it */
    const size_t *size;   /* size[v]: the bytes version v has, v = 1..latest */
    const void *defaults; /* a whole latest-version struct */
} ulpt_versioned;

/* The one definition of a versioned struct's table: NAME (a ulpt_versioned) and
 * NAME_defaults (the INIT macro's struct), for structs with one version so far.  A new
 * version appends its size to NAME's size table. */
#define ULPT__VERSIONED(name, type, version, what, init)                                  \
    static const size_t name##_size[(version) + 1] = { 0, sizeof(type) };               \
    static const type name##_defaults = init;                                            \
    static const ulpt_versioned name = { what, (version), name##_size, &name##_defaults }

/* out (a latest-version struct) = the defaults, overwritten by as many bytes of in as
 * its version has; in NULL: the defaults.  ULPT_ERR_INVALID for an unknown version. */
int ulpt__versioned_read(const char *func, const ulpt_versioned *t, const void *in, void *out);

/* The first bytes of src (a latest-version struct) that `version` has into the caller's
 * out, whose version field becomes `version`: the _init functions and getters.
 * ULPT_ERR_INVALID for an unknown version, out untouched (the caller checks NULL). */
int ulpt__versioned_write(const char *func, const ulpt_versioned *t, void *out, unsigned version,
                          const void *src);

/* ---- the threading rules (lock.c) ----------------------------------------------------- */

/* The word a prompt, optimizer or forward-only handle is guarded by: readers (forward,
 * saves) count themselves in; one call at a time holds it (HELD), and while the holder
 * changes what readers see it sets WRITE, which turns readers away.  Every call either
 * gets what it asks for at once or returns ULPT_ERR_BUSY naming the holder. */
#define ULPT__LOCK_READERS 0x00ffffffu
#define ULPT__LOCK_SCRATCH (1u << 24) /* a prompt's: a forward borrows the scratch */
#define ULPT__LOCK_HELD (1u << 25)
#define ULPT__LOCK_WRITE (1u << 26)
typedef struct {
    atomic_uint word;
    _Atomic(const char *) holder; /* the public call holding it, for messages */
} ulpt_lock;

void ulpt__lock_init(ulpt_lock *l);
/* Count a reader in (ULPT_ERR_BUSY while WRITE is set); ulpt__lock_unread counts it out. */
ULPT__MUST_CHECK int ulpt__lock_read(const char *func, ulpt_lock *l, const char *what);
void ulpt__lock_unread(ulpt_lock *l);
/* Hold an idle object (no holder, no reader) for func, with WRITE set if `write`. */
ULPT__MUST_CHECK int ulpt__lock_hold(const char *func, ulpt_lock *l, const char *what,
                                     int write);
/* The holder starts writing (no reader may be in: ULPT_ERR_BUSY), or stops. */
ULPT__MUST_CHECK int ulpt__lock_write(const char *func, ulpt_lock *l, const char *what);
void ulpt__lock_unwrite(ulpt_lock *l);
/* The holder lets go (HELD and WRITE cleared). */
void ulpt__lock_release(ulpt_lock *l);

/* ---- allocation (embed.c) ------------------------------------------------------- */

/* The allocator new objects are created with (a copy of the current setting). */
ulpt_allocator ulpt__allocator(void);
void *ulpt__alloc(const ulpt_allocator *a, size_t size);
void *ulpt__calloc(const ulpt_allocator *a, size_t count, size_t size);
void ulpt__free(const ulpt_allocator *a, void *ptr);

/* A buffer for the caller, released by ulpt_free: allocate ULPT_BUFFER_PREFIX + len
 * bytes from a at base, fill from base + ULPT_BUFFER_PREFIX, hand out what this returns. */
#define ULPT_BUFFER_PREFIX 64
void *ulpt__buffer_hand_out(const ulpt_allocator *a, unsigned char *base);

/* a*b without overflow into *out; 0 if it would overflow size_t. */
ULPT__MUST_CHECK int ulpt__mul(size_t a, size_t b, size_t *out);

/* ---- the counter-based generator (philox.c) ------------------------------------- */

/* Philox4x32-10: out = Philox(counter, key). */
void ulpt__philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* Blocks q0 .. q0 + n - 1 of the stream (key seed, counter (q, q >> 32, c2, c3)):
 * out[4 (q - q0) + i] = word i of block q.  The same words as ulpt__philox4x32, several
 * blocks at a time (vectorised, with the AVX2 copy where the CPU has it). */
void ulpt__philox4x32_blocks(uint32_t *out, uint64_t q0, size_t n, uint32_t c2, uint32_t c3,
                             uint64_t seed);

/* Fill out[0..count) with N(0,1) draws, stream (seed, c2, c3) of docs/PROJECTION.md,
 * scaled by `scale` (in double, then rounded to float). */
void ulpt__normal_fill(float *out, size_t count, uint64_t seed, uint32_t c2, uint32_t c3,
                       double scale);

/* Direction `index` of the forward-only stream of `seed` (docs/PROJECTION.md section 6):
 * count elements (count <= 2^34), Rademacher +-1 or, with gaussian, N(0,1). */
void ulpt__zo_direction(float *out, size_t count, uint64_t seed, uint64_t index, int gaussian);

/* ---- forward-only training (zo.c) ----------------------------------------------------- */

/* Check options (a full current-version struct) as ulpt_zo_create does, naming the
 * field in an ULPT_ERR_INVALID from func; batch 0 becomes 2q. */
int ulpt__zo_check_options(const char *func, ulpt_zo_options *o);

/* The handle's lock, for the checkpoint that reads it. */
const ulpt_lock *ulpt__zo_lock(const ulpt_zo *zo);

/* Bytes ulpt_zo_create requests for these options (batch resolved) over a prompt of
 * n_params parameters and n_tokens x dim = nd, whose optimizer already reserved its
 * buffers: the handle, its buffers and the prompt's grown working block. */
double ulpt__zo_bytes(const ulpt_zo_options *o, double n_params, double nd);

/* ---- object sizes ------------------------------------------------------------------- */

/* Each object's size function sits beside its allocator and returns the bytes that
 * allocator requests, as a double so that any shape (a forged one too) can be sized
 * without overflow.  A file load sums them for its memory bound (file.c; docs/FORMAT.md,
 * check 5, states the same sums).  Every handle counts as ULPT__HANDLE_BYTES. */
#define ULPT__HANDLE_BYTES 512

/* ulpt_optimizer_create over a prompt of n_params parameters and n_tokens x dim = nd:
 * the handle, the moments and the prompt's working block (optimizer.c). */
double ulpt__optimizer_bytes(double n_params, double nd);

/* ---- projection internals (projection.c) ---------------------------------------- */

/* ulpt_projection_create: the handle and, except for the identity, rank x dim floats. */
double ulpt__projection_bytes(uint32_t rank, uint32_t dim, int kind);

/* Take one more reference (prompts keep their projections alive). */
ulpt_projection *ulpt__projection_ref(ulpt_projection *p);

/* Seed of projection group g of a prompt seeded with `seed`. */
uint64_t ulpt__group_seed(uint64_t seed, uint32_t group);

/* ---- what the CPU can run (cpu.c) ------------------------------------------------ */

#define ULPT__CPU_AVX2 1u
#define ULPT__CPU_FMA 2u
#define ULPT__CPU_F16C 4u

/* 1 if the CPU, and the OS (which must save the YMM registers), support every one of
 * `features`; asked once, thread-safe.  0 off x86 and under other compilers. */
int ulpt__cpu_has(unsigned features);

/* Which kernels forward and backward use.  AUTO chooses by shape (forward.c, the
 * crossover measured in docs/DESIGN.md); the others force one path, for the tests that
 * cross-check the paths and for the benchmark.  Not thread-safe: set it while no other
 * libulpt call runs.  Not public API. */
enum {
    ULPT__KERNEL_AUTO,
    ULPT__KERNEL_GEMM,           /* CBLAS sgemm: the general path */
    ULPT__KERNEL_FUSED,          /* fused loops, AVX2 + FMA copy where the CPU has both */
    ULPT__KERNEL_FUSED_PORTABLE, /* fused loops, the baseline-ISA copy */
};
extern int ulpt__kernel_force;

/* 1 if the AVX2 copies of the vectorised loops (fused.c, philox.c) may run: the CPU has
 * AVX2 and the tests have not forced the baseline copies (ULPT__KERNEL_FUSED_PORTABLE). */
int ulpt__use_avx2(void);

/* ---- the small-rank kernels (fused.c) ------------------------------------------- */

/* The largest rank the fused kernels take; above it only the GEMM path runs. */
#define ULPT__FUSED_MAX_RANK 16

/* E[i,:] = b + sum_k z[i,k] (proj[k,:] (.) s) for `rows` rows (E row stride ld, z rows
 * of r <= ULPT__FUSED_MAX_RANK, proj r x d); s and b NULL when absent.  `work` holds
 * ulpt__fused_forward_work(r, d) floats of scratch, or is NULL (always where that count
 * is 0; elsewhere slower, to the same bits). */
void ulpt__fused_forward(float *restrict e, size_t ld, const float *restrict z, size_t rows,
                         size_t r, const float *restrict proj, const float *restrict s,
                         const float *restrict b, size_t d, float *restrict work);
/* Floats of scratch the faster ulpt__fused_forward needs: 0 (none used) or at most
 * 3 * 4096 + 1024 (52 KiB), never more than ulpt__fused_backward_work(r, d). */
size_t ulpt__fused_forward_work(size_t r, size_t d);

/* One pass over G (rows x d, stride ld), proj r x d:  dz[i,k] += G[i,:] . (proj[k,:] (.) s),
 * ds += sum_k proj[k,:] (.) (z^T G)[k,:] and db += sum_i G[i,:]; s, ds and db NULL when
 * absent.  `work` holds ulpt__fused_backward_work(r, d) floats of scratch.  Returns 1 if
 * the dz rows are all finite afterwards, 0 if not (a NaN or infinity in G always makes
 * its row of dz non-finite). */
ULPT__MUST_CHECK int ulpt__fused_backward(float *restrict dz, float *restrict ds,
                                          float *restrict db, const float *restrict g,
                                          size_t ld, const float *restrict z, size_t rows,
                                          size_t r, const float *restrict proj,
                                          const float *restrict s, size_t d,
                                          float *restrict work);
/* Floats of scratch ulpt__fused_backward needs, r <= ULPT__FUSED_MAX_RANK: at most
 * 21504 (rank 2). */
size_t ulpt__fused_backward_work(size_t r, size_t d);

/* ---- files (io.c) ------------------------------------------------------------------- */

/* The system calls a save makes, replaceable by tests to inject failures. */
typedef struct {
    long (*write)(int fd, const void *buf, size_t len);
    int (*fsync)(int fd);
    int (*rename)(const char *from, const char *to);
} ulpt_io_ops;
extern ulpt_io_ops ulpt__io;

/* Write len bytes to path atomically (temporary file, fsync, rename, fsync directory);
 * errors are reported as coming from func. */
ULPT__MUST_CHECK int ulpt__write_atomic(const char *func, const char *path, const void *data,
                                        size_t len);

/* Read a whole regular file into a new buffer from a. */
ULPT__MUST_CHECK int ulpt__read_file(const char *func, const ulpt_allocator *a,
                                     const char *path, void **buf, size_t *len);

/* ---- half precision (half.c) ------------------------------------------------------- */

uint16_t ulpt__f32_to_f16(float f);
float ulpt__f16_to_f32(uint16_t h);
uint16_t ulpt__f32_to_bf16(float f);
float ulpt__bf16_to_f32(uint16_t b);
/* count floats at once, bit for bit as the scalar conversions (NaN payloads aside) */
void ulpt__f32_to_f16_n(const float *restrict x, uint16_t *restrict out, size_t count);
void ulpt__f32_to_bf16_n(const float *restrict x, uint16_t *restrict out, size_t count);

/* ---- metadata (meta.c) -------------------------------------------------------------- */

typedef struct {
    char **keys, **values; /* count pairs, insertion order */
    size_t count, cap;
} ulpt_meta;

void ulpt__meta_clear(const ulpt_allocator *a, ulpt_meta *m);

/* ---- the objects, shared by the files that serialise them -------------------------- */

/* The working buffers of a loop that trains a prompt, owned by the prompt because
 * they hold its quantities: its embeddings E (n_e slots of n_tokens x dim, written by
 * forward, read by the host), their gradients G (n_g slots, written by the host, read
 * by backward) and a copy of its gradients from before a step, to restore when the step
 * fails.  Taken by ulpt__prompt_reserve when a trainer is created, so that no step
 * allocates; freed with the prompt.  Rows are 64-byte aligned when dim is a multiple of
 * 16 (the block is). */
typedef struct {
    void *block; /* the one allocation; the pointers below point into it */
    float *e, *g, *saved_grads;
    uint32_t n_e, n_g;
} ulpt_work;

struct ulpt_prompt {
    ulpt_allocator al;
    uint32_t n, r, d, groups;
    unsigned flags;
    int kind;
    uint64_t seed;          /* projection_seed: group g uses ulpt__group_seed(seed, g) */
    ulpt_projection **proj; /* one per group */
    size_t n_params;
    float *params, *grads; /* [Z | s | b], s and b absent with their flags */
    float *z, *s, *b;      /* views into params; s, b NULL when absent */
    float *gz, *gs, *gb;   /* views into grads */
    /* backward scratch, unused by the identity: [Z_g | 1] (n_g x (r+1)), M ((r+1) x d),
       P_g diag(s) (r x d); from ws_m on, the fused kernel's work area where that is
       longer */
    float *ws_z1, *ws_m, *ws_ps;
    /* readers, holder and writer (lock.c); its ULPT__LOCK_SCRATCH bit is set while a
       forward borrows the scratch from ws_m on (forward.c): several forwards may run on
       one prompt at once, and only one may use it */
    ulpt_lock lock;
    ulpt_meta meta;
    ulpt_work work;
};

struct ulpt_optimizer {
    ulpt_allocator al;
    ulpt_prompt *prompt;
    ulpt_optimizer_options opt;
    uint64_t steps;
    size_t n;     /* parameters */
    float *m, *v; /* Adam moments; SGD keeps its momentum buffer in m */
    ulpt_lock lock;
};

/* ulpt_optimizer_step for a caller that holds o and its prompt with WRITE set; errors
 * named as from func (optimizer.c). */
ULPT__MUST_CHECK int ulpt__optimizer_step(const char *func, ulpt_optimizer *o);

/* ---- numeric checks --------------------------------------------------------------- */

/* 1 if all count floats are finite.  x*0 is NaN exactly for NaN and infinity; summing
 * those products has no branch, so it vectorises and runs at memory speed. */
ULPT__MUST_CHECK static inline int ulpt__all_finite(const float *x, size_t count)
{
    float acc[32] = { 0 }; /* 32 lanes: enough independent adds to hide their latency */
    size_t i = 0;
    for (; i + 32 <= count; i += 32)
        for (int l = 0; l < 32; l++)
            acc[l] += x[i + l] * 0.0f;
    for (; i < count; i++)
        acc[0] += x[i] * 0.0f;
    for (int l = 1; l < 32; l++)
        acc[0] += acc[l];
    return acc[0] == 0.0f;
}

/* ---- prompt internals (prompt.c) ----------------------------------------------------- */

/* ulpt_prompt_create for these options, valid or not (n_groups 0 counts as 1): the
 * handle, the projection pointers, the block of parameters, gradients and backward
 * scratch, and the projections. */
double ulpt__prompt_bytes(const ulpt_prompt_options *o);

/* ulpt__prompt_reserve's block for n_e E and n_g G slots of nd floats and the saved
 * gradients of n_params, with 64 bytes for alignment. */
double ulpt__work_bytes(double n_params, double nd, double n_e, double n_g);

/* The index of the first parameter that is NaN or infinite, or num_params if none. */
ULPT__MUST_CHECK size_t ulpt__first_nonfinite(const ulpt_prompt *p);

/* Make p->work hold at least n_e E slots and n_g G slots (and the saved gradients);
 * what it already holds is kept if large enough.  All or nothing: on ULPT_ERR_NOMEM
 * (message set, naming func) the prompt is unchanged.  Needs exclusive access. */
ULPT__MUST_CHECK int ulpt__prompt_reserve(const char *func, ulpt_prompt *p, uint32_t n_e,
                                          uint32_t n_g);

/* ulpt_prompt_forward, with errors reported as coming from func. */
ULPT__MUST_CHECK int ulpt__prompt_forward(const char *func, const ulpt_prompt *p,
                                          float *embeddings, size_t ld);

/* The same for a caller that holds p with WRITE set (so no reader is in and the scratch
 * is free): the forward-only step, between writing a perturbation and undoing it. */
ULPT__MUST_CHECK int ulpt__prompt_forward_held(const char *func, ulpt_prompt *p,
                                               float *embeddings, size_t ld);

/* ulpt_prompt_backward with errors reported as coming from func, and
 * ULPT_ERR_NONFINITE (with no message set) when a gradient it added came out NaN or
 * infinite: G held one, or a sum overflowed.  The gradients are changed either way.
 * The caller holds p with WRITE set. */
ULPT__MUST_CHECK int ulpt__prompt_backward(const char *func, ulpt_prompt *p, const float *grad,
                                           size_t ld);

/* The name of parameter i in the flat layout: "Z[3][1]", "scale[7]", "shift[0]". */
void ulpt__param_name(const ulpt_prompt *p, size_t i, char *buf, size_t size);

/* A prompt over borrowed arrays, for ulpt_prompt_forward only (the bank keeps bare
 * parameters and materialises through it, so it runs the same kernel): n rows of Z at z,
 * groups projections (n a multiple of groups), s and b NULL when absent.  Forward checks
 * the n*rank values at z; the owner vouches for s and b.  No gradients, nothing to free. */
void ulpt__prompt_view(ulpt_prompt *v, uint32_t n, uint32_t r, uint32_t d, uint32_t groups,
                       int kind, ulpt_projection *const *proj, const float *z, const float *s,
                       const float *b);

#endif /* ULPT_INTERNAL_H */
