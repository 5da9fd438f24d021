/*
 * ulpt.h -- libulpt, Ultra-Low-dimensional Prompt Tuning for frozen language models.
 *
 * This header is the manual.  Read it top to bottom once; every function says what it
 * does, who owns what, what it returns and which errors it can give.
 *
 * THE METHOD
 *   Prompt tuning prepends n_tokens learned "soft token" embeddings (n x d) to a frozen
 *   model's input.  ULPT trains them in a tiny space instead and maps them up:
 *
 *       E = (Z . P) (.) s + b        Z: n x r  (trained)     P: r x d  (frozen, from a seed)
 *                                    s: d      (scale)       b: d      (shift)
 *
 *   r = 2 is the headline setting: n*r + 2d trainable numbers instead of n*d.  P is never
 *   stored; it is regenerated from (seed, kind, rank, dim) by a counter-based generator
 *   specified in docs/PROJECTION.md.
 *
 * THE LOOP
 *   The library never sees the model.  Each training step it writes E; the host prepends
 *   E to its input embeddings, runs its frozen model forward and backward, and hands back
 *   the loss and G = dL/dE (n x d); the library back-propagates G into Z, s and b and
 *   steps its optimizer.  Either let ulpt_train_step() drive this through a callback, or
 *   call ulpt_prompt_forward(), ulpt_prompt_backward() and ulpt_optimizer_step()
 *   yourself (gradient accumulation, data parallelism).
 *
 * CONVENTIONS
 *   - Objects are opaque handles, created by ulpt_X_create() and released by
 *     ulpt_X_free() (which accepts NULL).
 *   - Every fallible call returns int: ULPT_OK (0) on success, a negative ULPT_ERR_* code
 *     on failure, with a one-line message from ulpt_last_error() in the same thread.
 *   - Out-parameters come first.  A call that fails leaves every object and every
 *     out-parameter as it was.  Ten calls put their result after their inputs, and
 *     stay so for ABI compatibility (2.0, with a new soname, is the only place to
 *     reorder them): ulpt_prompt_forward (embeddings), ulpt_train_step (loss, where
 *     its sibling ulpt_zo_step puts it first), ulpt_prompt_save_buffer (buf and len,
 *     first in ulpt_checkpoint_save_buffer), ulpt_prompt_meta_at (key, value),
 *     ulpt_file_inspect (info), ulpt_prompt_init_from_embeddings (residual),
 *     ulpt_bank_add (id), ulpt_bank_find (id), ulpt_bank_n_tokens (n_tokens) and
 *     ulpt_bank_load_dir (count).  ulpt_bank_materialise writes where its requests
 *     point.
 *   - Options structs start with `unsigned version`; initialise them with their
 *     ULPT_X_OPTIONS_INIT macro, or (from languages that cannot use C macros) with
 *     ulpt_X_options_init(&opts, ULPT_X_OPTIONS_VERSION), then change the fields you
 *     need.  Fields are only ever appended, so a program built against an older header
 *     keeps working.
 *   - "Since 1.1" marks functions added after 1.0.0: a program that calls them needs
 *     libulpt 1.1 or later at run time (the loader says so, by symbol version
 *     ulpt_1.1, rather than failing at the call); "Since 1.2" likewise, ulpt_1.2.
 *   - Matrices are row-major float32; `ld` is the row stride in elements (>= dim).
 *   - Nothing allocates in forward, backward, optimizer step, train step or forward-only
 *     step: all memory is taken when the handles are created.
 *   - Threads: different handles may be used from different threads freely; one
 *     handle by several only through reading calls (THREADS, near the end).
 *
 * The sections follow the order of learning: versions and errors; the projection; the
 * prompt, its forward and backward; the optimizer; the training step; metadata; files
 * and checkpoints; forward-only training and its checkpoints; initialising a prompt from
 * text; the prompt bank; THREADS; the allocator.
 */
#ifndef ULPT_H
#define ULPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(ULPT_BUILDING_DLL)
#define ULPT_API __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define ULPT_API __attribute__((visibility("default")))
#else
#define ULPT_API
#endif

/* ---------------------------------------------------------------------------------
 * Version
 * ------------------------------------------------------------------------------- */

#define ULPT_VERSION_MAJOR 1
#define ULPT_VERSION_MINOR 2
#define ULPT_VERSION_PATCH 0
/* MAJOR*10000 + MINOR*100 + PATCH of this header. */
#define ULPT_VERSION_NUMBER \
    (ULPT_VERSION_MAJOR * 10000 + ULPT_VERSION_MINOR * 100 + ULPT_VERSION_PATCH)

/* The version of the library actually loaded, as MAJOR*10000 + MINOR*100 + PATCH.
 * Compare with ULPT_VERSION_NUMBER to detect a header/library mismatch. */
ULPT_API unsigned ulpt_version(void);

/* The same as a string, "MAJOR.MINOR.PATCH".  Static storage. */
ULPT_API const char *ulpt_version_string(void);

/* ---------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------- */

#define ULPT_OK                0
#define ULPT_ERR_INVALID      -1  /* a bad argument: NULL handle, zero or overflowing size, ... */
#define ULPT_ERR_NOMEM        -2  /* an allocation failed */
#define ULPT_ERR_IO           -3  /* reading or writing a file failed */
#define ULPT_ERR_FORMAT       -4  /* not a libulpt file, or a version this library can't read */
#define ULPT_ERR_CORRUPT      -5  /* a file is damaged: checksum, truncation, bad sizes */
#define ULPT_ERR_MISMATCH     -6  /* objects or files that do not belong together */
#define ULPT_ERR_NONFINITE    -7  /* a NaN or infinity in a loss, gradient or parameter */
#define ULPT_ERR_CALLBACK     -8  /* the host's callback reported a failure */
#define ULPT_ERR_UNSUPPORTED  -9  /* valid, but not supported by this build */
#define ULPT_ERR_NOT_FOUND   -10  /* no such prompt in a bank: removed, or never there.  Since 1.1 */
#define ULPT_ERR_BUSY        -11  /* the object is in use by another call (THREADS).  Since 1.2 */

/* A short static description of an error code ("invalid argument", ...).  Unknown codes
 * give "unknown error". */
ULPT_API const char *ulpt_strerror(int code);

/* A one-line message naming the problem of the last call in this thread that failed,
 * e.g. "ulpt_prompt_create: rank 8 is greater than dim 4".  Thread-local storage, valid
 * until the next failing call in the same thread.  Successful calls do not clear it, so
 * read it only right after a call returned an error.  Never NULL. */
ULPT_API const char *ulpt_last_error(void);

/* ---------------------------------------------------------------------------------
 * Projection: the frozen random matrix P (rank x dim)
 *
 * P is a pure function of (seed, kind, rank, dim): the same arguments give the same
 * matrix on every platform, in every language that implements docs/PROJECTION.md.
 * Uniform and Rademacher kinds are bit-identical everywhere; the Gaussian kind uses
 * log/sin/cos and agrees to within 2 ulp across C libraries.
 * ------------------------------------------------------------------------------- */

typedef struct ulpt_projection ulpt_projection;

#define ULPT_PROJ_XAVIER_UNIFORM   0  /* U(-a, a), a = sqrt(6/(rank+dim)) (reference T5 code) */
#define ULPT_PROJ_KAIMING_UNIFORM  1  /* U(-a, a), a = 1/sqrt(rank) (reference Llama code)     */
#define ULPT_PROJ_GAUSSIAN         2  /* N(0, 1/rank)                                          */
#define ULPT_PROJ_RADEMACHER       3  /* +-1/sqrt(rank), each with probability 1/2              */
#define ULPT_PROJ_IDENTITY         4  /* P = I, rank == dim: vanilla prompt tuning, no product   */

/* Generate P into a new projection.  The projection is immutable and reference counted:
 * prompts made from it with ulpt_prompt_create_shared keep it alive, so the caller may
 * free it right after handing it on, and one P can serve many prompts (in any threads).
 * For ULPT_PROJ_IDENTITY rank must equal dim and no matrix is stored.
 * Errors: ULPT_ERR_INVALID (NULL out, unknown kind, rank or dim 0, rank > dim, rank*dim
 * past addressable memory, dim > INT_MAX), ULPT_ERR_NOMEM. */
ULPT_API int ulpt_projection_create(ulpt_projection **out, uint64_t seed, uint32_t rank,
                                    uint32_t dim, int kind);

/* Drop the caller's reference; the memory goes when the last prompt using it is freed.
 * NULL is a no-op. */
ULPT_API void ulpt_projection_free(ulpt_projection *p);

/* The rank x dim matrix, row-major.  NULL for ULPT_PROJ_IDENTITY (and for a NULL
 * projection).  Valid for the life of the projection. */
ULPT_API const float *ulpt_projection_data(const ulpt_projection *p);

/* Accessors (0 for a NULL projection). */
ULPT_API uint64_t ulpt_projection_seed(const ulpt_projection *p);
ULPT_API uint32_t ulpt_projection_rank(const ulpt_projection *p);
ULPT_API uint32_t ulpt_projection_dim(const ulpt_projection *p);
ULPT_API int ulpt_projection_kind(const ulpt_projection *p);

/* ---------------------------------------------------------------------------------
 * Prompt: the trainable low-dimensional parameters Z, s, b
 * ------------------------------------------------------------------------------- */

typedef struct ulpt_prompt ulpt_prompt;

#define ULPT_NO_SCALE  1u  /* no scale: s = 1, not trained (the paper's ablation)  */
#define ULPT_NO_SHIFT  2u  /* no shift: b = 0, not trained (the paper's ablation)  */

#define ULPT_PROMPT_OPTIONS_VERSION 1

typedef struct ulpt_prompt_options {
    unsigned version;          /* ULPT_PROMPT_OPTIONS_VERSION */
    uint32_t n_tokens;         /* number of soft tokens n (required, >= 1) */
    uint32_t rank;             /* r, default 2; must equal dim for ULPT_PROJ_IDENTITY */
    uint32_t dim;              /* the host model's embedding width d (required, >= 1) */
    uint32_t n_groups;         /* g >= 1, default 1; n_tokens must be a multiple of g.
                                  Token rows [i*n/g, (i+1)*n/g) use projection group i. */
    uint64_t projection_seed;  /* seed of P; group i uses seed + i*0x9E3779B97F4A7C15 */
    int projection_kind;       /* ULPT_PROJ_*, default ULPT_PROJ_XAVIER_UNIFORM */
    uint64_t init_seed;        /* seed of the initial Z */
    float init_std;            /* Z ~ N(0, init_std^2), default 1 (finite, >= 0) */
    unsigned flags;            /* ULPT_NO_SCALE | ULPT_NO_SHIFT, default 0 */
} ulpt_prompt_options;

#define ULPT_PROMPT_OPTIONS_INIT \
    { ULPT_PROMPT_OPTIONS_VERSION, 0, 2, 0, 1, 0, ULPT_PROJ_XAVIER_UNIFORM, 0, 1.0f, 0 }

/* Fill *opts with the defaults of options version `version` (what
 * ULPT_PROMPT_OPTIONS_INIT gives, with that version number), for callers that cannot use
 * the macro.  Writes only the fields that version has, so a caller built against an
 * older header passes its older version and a shorter struct safely.  Since 1.1.
 * Errors: ULPT_ERR_INVALID (opts NULL, version 0 or newer than this library's
 * ULPT_PROMPT_OPTIONS_VERSION); *opts is then untouched. */
ULPT_API int ulpt_prompt_options_init(ulpt_prompt_options *opts, unsigned version);

/* Create a prompt: generate its projection(s), draw Z ~ N(0, init_std^2) from init_seed
 * (docs/PROJECTION.md gives the exact stream), set s = 1 and b = 0, zero the gradients.
 * Errors: ULPT_ERR_INVALID (NULL argument, unknown version, kind or flag, zero sizes,
 * rank > dim, identity with rank != dim, n_tokens not a multiple of n_groups, sizes past
 * addressable memory or INT_MAX, init_std negative or not finite), ULPT_ERR_NOMEM. */
ULPT_API int ulpt_prompt_create(ulpt_prompt **out, const ulpt_prompt_options *opts);

/* Create a prompt that uses existing projections instead of generating its own: one per
 * group, projections[g] for group g, each exactly the projection the options imply (seed
 * projection_seed + g*0x9E3779B97F4A7C15, the options' rank, dim and kind).  The prompt
 * takes a reference to each; the caller keeps its own.  Saves memory and time when many
 * prompts of one model share a seed.
 * Errors: as ulpt_prompt_create; ULPT_ERR_INVALID for a NULL array or entry,
 * ULPT_ERR_MISMATCH for a projection that is not the one the options imply. */
ULPT_API int ulpt_prompt_create_shared(ulpt_prompt **out, const ulpt_prompt_options *opts,
                                       ulpt_projection *const *projections);

/* Free a prompt (and its reference to its projections).  NULL is a no-op. */
ULPT_API void ulpt_prompt_free(ulpt_prompt *p);

/* Forward: write E = (Z_g . P_g) (.) s + b, n_tokens rows of dim floats, row i at
 * embeddings + i*ld.  Columns past dim are not touched.  Changes nothing in the prompt
 * that a caller can see (it may use the prompt's scratch, one forward at a time), so
 * several threads may run it on one prompt at once.  Forward and backward pick their
 * kernels by the CPU: where it has AVX2 and FMA the small-rank loops fuse each
 * multiply-add, so results may differ from another CPU's in the last bits (float
 * round-off; docs/DESIGN.md, "Speed").
 * Errors: ULPT_ERR_INVALID (NULL argument, ld < dim or ld > INT_MAX, the BLAS limit),
 * ULPT_ERR_NONFINITE (a parameter is NaN or infinite, e.g. written through
 * ulpt_prompt_params; the message names it, "scale[7]"). */
ULPT_API int ulpt_prompt_forward(const ulpt_prompt *p, float *embeddings, size_t ld);

/* Backward: given G = dL/dE (n_tokens rows of dim floats, row stride ld), ADD
 *     dL/db = sum_i G[i,:]
 *     dL/ds = sum_g sum_k P_g[k,:] (.) (Z_g^T G_g)[k,:]
 *     dL/dZ_g = G_g . (P_g diag(s))^T
 * to the gradient buffer (so several backward calls accumulate).  G is not checked for
 * NaN or infinity here; ulpt_optimizer_step refuses non-finite gradients.
 * Errors: ULPT_ERR_INVALID (NULL argument, ld < dim or ld > INT_MAX, the BLAS limit),
 * ULPT_ERR_BUSY (a forward is running on the prompt, or a step holds it: THREADS). */
ULPT_API int ulpt_prompt_backward(ulpt_prompt *p, const float *grad, size_t ld);

/* Set every gradient to 0.  NULL is a no-op.  A writing call (THREADS): on a prompt in
 * use it changes nothing and leaves an ULPT_ERR_BUSY message for ulpt_last_error. */
ULPT_API void ulpt_prompt_zero_grad(ulpt_prompt *p);

/* The number of trainable parameters: n_tokens*rank + dim (unless ULPT_NO_SCALE)
 * + dim (unless ULPT_NO_SHIFT).  0 for NULL. */
ULPT_API size_t ulpt_prompt_num_params(const ulpt_prompt *p);

/* The parameters and their gradients, each one flat float array of
 * ulpt_prompt_num_params() elements laid out as
 *
 *     [ Z (n_tokens x rank, row-major) | s (dim, absent with ULPT_NO_SCALE)
 *                                      | b (dim, absent with ULPT_NO_SHIFT) ]
 *
 * Owned by the prompt, valid for its life.  Writing parameters directly is allowed (to
 * load weights); writing gradients is how a data-parallel host all-reduces them in one
 * call before ulpt_optimizer_step.  NULL for a NULL prompt. */
ULPT_API float *ulpt_prompt_params(ulpt_prompt *p);
ULPT_API float *ulpt_prompt_grads(ulpt_prompt *p);

/* Accessors (0 or NULL for a NULL prompt). */
ULPT_API uint32_t ulpt_prompt_n_tokens(const ulpt_prompt *p);
ULPT_API uint32_t ulpt_prompt_rank(const ulpt_prompt *p);
ULPT_API uint32_t ulpt_prompt_dim(const ulpt_prompt *p);
ULPT_API uint32_t ulpt_prompt_n_groups(const ulpt_prompt *p);
ULPT_API unsigned ulpt_prompt_flags(const ulpt_prompt *p);

/* The projection of group `group` (0-based); NULL if out of range.  Owned by the prompt:
 * valid for its life, do not free. */
ULPT_API const ulpt_projection *ulpt_prompt_projection(const ulpt_prompt *p, uint32_t group);

/* ---------------------------------------------------------------------------------
 * Optimizer: SGD with momentum, Adam, AdamW, with a learning-rate schedule and clipping
 *
 * Update rules and defaults are those of torch.optim (SGD, Adam, AdamW), so a run can be
 * checked against PyTorch step by step.  Weight decay applies to every parameter.
 * With t the 0-based index of the step being taken, the rate is lr*m(t):
 *     m(t) = t / warmup_steps                          for t < warmup_steps, then
 *     ULPT_SCHED_CONSTANT:  1
 *     ULPT_SCHED_LINEAR:    max(0, (total - t) / (total - warmup))
 *     ULPT_SCHED_COSINE:    (1 + cos(pi * min(1, (t - warmup) / (total - warmup)))) / 2
 * as Hugging Face's get_{constant,linear,cosine}_schedule_with_warmup (the cosine one
 * stays at 0 past total_steps instead of rising again).
 * ------------------------------------------------------------------------------- */

typedef struct ulpt_optimizer ulpt_optimizer;

#define ULPT_OPT_SGD    0  /* p -= lr * buf, buf = momentum*buf + (g + wd*p)  */
#define ULPT_OPT_ADAM   1  /* Adam, L2 weight decay added to the gradient       */
#define ULPT_OPT_ADAMW  2  /* Adam with decoupled weight decay p *= 1 - lr*wd  */

#define ULPT_SCHED_CONSTANT 0
#define ULPT_SCHED_LINEAR   1
#define ULPT_SCHED_COSINE   2

#define ULPT_OPTIMIZER_OPTIONS_VERSION 1

typedef struct ulpt_optimizer_options {
    unsigned version;       /* ULPT_OPTIMIZER_OPTIONS_VERSION */
    int kind;               /* ULPT_OPT_*, default ULPT_OPT_ADAMW */
    double lr;              /* peak learning rate, default 1e-3 (> 0) */
    double beta1, beta2;    /* Adam(W) moment decay, default 0.9, 0.999 (in [0, 1)) */
    double eps;             /* Adam(W) denominator epsilon, default 1e-8 (> 0) */
    double weight_decay;    /* >= 0; default ULPT_WEIGHT_DECAY_DEFAULT: torch's default for
                               the kind, 0.01 for AdamW and 0 for Adam and SGD */
    double momentum;        /* SGD momentum, default 0 (in [0, 1)) */
    double max_grad_norm;   /* clip the global gradient norm to this; 0 = off (default) */
    int schedule;           /* ULPT_SCHED_*, default ULPT_SCHED_CONSTANT */
    uint64_t warmup_steps;  /* linear warmup from 0, default 0 */
    uint64_t total_steps;   /* end of the linear/cosine decay (> warmup_steps for those) */
} ulpt_optimizer_options;

/* weight_decay: "whatever torch.optim uses for this kind" */
#define ULPT_WEIGHT_DECAY_DEFAULT (-1.0)

#define ULPT_OPTIMIZER_OPTIONS_INIT \
    { ULPT_OPTIMIZER_OPTIONS_VERSION, ULPT_OPT_ADAMW, 1e-3, 0.9, 0.999, 1e-8,            \
      ULPT_WEIGHT_DECAY_DEFAULT, 0.0, 0.0, ULPT_SCHED_CONSTANT, 0, 0 }

/* Fill *opts with the defaults of options version `version`, as
 * ulpt_prompt_options_init does (weight_decay gets ULPT_WEIGHT_DECAY_DEFAULT, resolved
 * per kind when the optimizer is created).  Since 1.1.
 * Errors: ULPT_ERR_INVALID (opts NULL, unknown version); *opts is then untouched. */
ULPT_API int ulpt_optimizer_options_init(ulpt_optimizer_options *opts, unsigned version);

/* Create an optimizer for `prompt` (opts NULL = defaults).  The prompt must outlive the
 * optimizer.  Allocates the moment buffers, and has the prompt take the two n_tokens x
 * dim buffers ulpt_train_step exchanges with the host (E and G; the prompt keeps them
 * until it is freed), so that no step allocates.  Needs exclusive access to the prompt.
 * Errors: ULPT_ERR_INVALID (NULL prompt or out, unknown version, kind or schedule,
 * hyperparameters out of range or not finite, total_steps <= warmup_steps for the
 * linear and cosine schedules), ULPT_ERR_NOMEM. */
ULPT_API int ulpt_optimizer_create(ulpt_optimizer **out, ulpt_prompt *prompt,
                                   const ulpt_optimizer_options *opts);

/* Free an optimizer.  NULL is a no-op. */
ULPT_API void ulpt_optimizer_free(ulpt_optimizer *o);

/* One step with the gradients accumulated in the prompt: clip them (in place, as
 * torch.nn.utils.clip_grad_norm_ does: scale by max_norm/(norm + 1e-6) when that is
 * below 1), update the parameters and the moments, advance the schedule.  The
 * gradients are not zeroed.
 * Errors: ULPT_ERR_INVALID (NULL), ULPT_ERR_NONFINITE (a gradient is NaN or infinite;
 * nothing is changed), ULPT_ERR_BUSY (the optimizer or its prompt is in use: THREADS). */
ULPT_API int ulpt_optimizer_step(ulpt_optimizer *o);

/* The number of steps taken so far (0 for NULL). */
ULPT_API uint64_t ulpt_optimizer_step_count(const ulpt_optimizer *o);

/* The learning rate the next step will use, lr*m(step_count) (0 for NULL). */
ULPT_API float ulpt_optimizer_lr(const ulpt_optimizer *o);

/* The same rate in the double precision the step computes it in (ulpt_optimizer_lr
 * rounds it to float); for bindings whose floats are doubles.  0 for NULL.  Since 1.1. */
ULPT_API double ulpt_optimizer_lr_double(const ulpt_optimizer *o);

/* The prompt the optimizer updates (NULL for NULL). */
ULPT_API ulpt_prompt *ulpt_optimizer_prompt(const ulpt_optimizer *o);

/* Copy the optimizer's options, as created (or as loaded from a checkpoint), into *opts:
 * set opts->version first (ULPT_OPTIMIZER_OPTIONS_INIT does); it is kept, and only the
 * fields that version has are written.  weight_decay is reported resolved (0.01 for
 * AdamW created with ULPT_WEIGHT_DECAY_DEFAULT), never as the default marker.
 * Since 1.2.
 * Errors: ULPT_ERR_INVALID (NULL argument, unknown opts->version); *opts is then
 * untouched. */
ULPT_API int ulpt_optimizer_get_options(ulpt_optimizer_options *opts, const ulpt_optimizer *o);

/* ---------------------------------------------------------------------------------
 * Training step driven by the host's loss
 * ------------------------------------------------------------------------------- */

/* The host model.  It receives the prompt embeddings E (n_tokens x dim, row stride
 * dim), runs its model, writes dL/dE into `grad` (same shape, arrives zeroed) and the
 * loss into *loss.  Return 0 on success, anything else on failure.  Writing calls on
 * the prompt or optimizer it serves return ULPT_ERR_BUSY; reading calls (a forward, a
 * checkpoint save) are allowed (THREADS). */
typedef int (*ulpt_loss_fn)(void *user, const float *embeddings, uint32_t n_tokens,
                            uint32_t dim, float *grad, double *loss);

/* One training step: forward, callback, check the loss is finite, zero the prompt's
 * gradients, backward (which also checks G is finite), optimizer step.  *loss (may be
 * NULL) gets the callback's loss.  `o` must have been created for `p`.
 * Errors: ULPT_ERR_INVALID (NULL argument), ULPT_ERR_MISMATCH (`o` not made for `p`;
 * since 1.2, ULPT_ERR_INVALID before), ULPT_ERR_CALLBACK
 * (the callback returned nonzero), ULPT_ERR_NONFINITE (a parameter NaN or infinite,
 * named, before the callback is called; the loss or an element of G NaN or infinite;
 * the gradient overflowing in backward), ULPT_ERR_BUSY (p or o in use by another call,
 * or a reading call still running on them when the callback returned: THREADS).  On
 * any failure the parameters, gradients and optimizer state are unchanged. */
ULPT_API int ulpt_train_step(ulpt_prompt *p, ulpt_optimizer *o, ulpt_loss_fn loss_fn,
                             void *user, double *loss);

/* ---------------------------------------------------------------------------------
 * Metadata: string key/value pairs a prompt carries into its files
 *
 * Conventional keys: "model" (identity of the host model the prompt was tuned for, e.g.
 * "meta-llama/Llama-3.2-1B"; ulpt_prompt_load_for_model checks it), "task", "created"
 * (ISO 8601 date).  Keys are 1..255 bytes, values 0..65535 bytes, at most 1024 pairs;
 * both are NUL-terminated, well-formed UTF-8 (checked when set and when a file is
 * loaded, since 1.1: bindings hand them out as strings).  Order of insertion is kept.
 * ------------------------------------------------------------------------------- */

/* Set key to value (a copy is kept), replacing an existing value; value NULL removes the
 * key (no error if absent).  Allocates: not for hot paths.
 * Errors: ULPT_ERR_INVALID (NULL prompt or key, empty or too long key, too long value,
 * too many keys, a key or value that is not UTF-8: the message gives the byte offset),
 * ULPT_ERR_NOMEM.  On error the metadata is unchanged. */
ULPT_API int ulpt_prompt_set_meta(ulpt_prompt *p, const char *key, const char *value);

/* The value of key, or NULL when absent (or p or key NULL).  Valid until the key is set
 * again or removed, or the prompt is freed. */
ULPT_API const char *ulpt_prompt_get_meta(const ulpt_prompt *p, const char *key);

/* The number of pairs, and pair i (0-based, insertion order) into *key and *value.
 * Errors: ULPT_ERR_INVALID (NULL argument, i out of range). */
ULPT_API size_t ulpt_prompt_meta_count(const ulpt_prompt *p);
ULPT_API int ulpt_prompt_meta_at(const ulpt_prompt *p, size_t i, const char **key,
                                 const char **value);

/* ---------------------------------------------------------------------------------
 * Prompt files and checkpoints (docs/FORMAT.md)
 *
 * A prompt file holds the shape, the projection's seed, kind and fingerprint, the
 * metadata and the parameters [Z | s | b] (zlib-compressed), under a CRC-32 of the
 * whole file.  Saving is atomic: the data goes to a temporary file in the same
 * directory, which is flushed, synced and renamed over the target, so a failed or
 * interrupted save leaves the previous file intact (after the rename the directory is
 * synced too, best effort).  An existing target must be a regular file or a symlink to
 * one (the file it names is replaced): a device, FIFO, socket or directory there is
 * refused with ULPT_ERR_IO ("... is not a regular file") before anything is written.
 * Loading checks everything before allocating anything large: it never holds more than
 * max(64 MiB, 1032 x the file's size), and refuses damage with ULPT_ERR_CORRUPT,
 * ULPT_ERR_FORMAT or ULPT_ERR_MISMATCH.
 * ------------------------------------------------------------------------------- */

/* Storage types of the parameters in a file, and the output types of the bank's
 * ulpt_bank_materialise (below). */
#define ULPT_DTYPE_F32   0  /* exact */
#define ULPT_DTYPE_F16   1  /* IEEE half, round to nearest even (past 65504: inf) */
#define ULPT_DTYPE_BF16  2  /* bfloat16, round to nearest even */

#define ULPT_SAVE_OPTIONS_VERSION 1

typedef struct ulpt_save_options {
    unsigned version;  /* ULPT_SAVE_OPTIONS_VERSION */
    int dtype;         /* storage type of the parameters, default ULPT_DTYPE_F32 */
    int level;         /* zlib level 0..9, default 6 (0: stored uncompressed) */
} ulpt_save_options;

#define ULPT_SAVE_OPTIONS_INIT { ULPT_SAVE_OPTIONS_VERSION, ULPT_DTYPE_F32, 6 }

/* Fill *opts with the defaults of save options version `version`, as
 * ulpt_prompt_options_init does.  Since 1.1.
 * Errors: ULPT_ERR_INVALID (opts NULL, unknown version); *opts is then untouched. */
ULPT_API int ulpt_save_options_init(ulpt_save_options *opts, unsigned version);

/* Save a prompt (parameters and metadata, not gradients) to path, atomically; opts NULL
 * = defaults.  Errors: ULPT_ERR_INVALID (NULL argument, bad options), ULPT_ERR_NOMEM,
 * ULPT_ERR_NONFINITE (a parameter is NaN or infinite, or too large for f16: nothing is
 * written rather than a value lost),
 * ULPT_ERR_IO (the message names the path and the system error; the previous file, if
 * any, is intact and no temporary file is left behind). */
ULPT_API int ulpt_prompt_save(const ulpt_prompt *p, const char *path,
                              const ulpt_save_options *opts);

/* The same bytes into a new buffer *buf of *len bytes, to be released with ulpt_free.
 * Errors: ULPT_ERR_INVALID, ULPT_ERR_NOMEM. */
ULPT_API int ulpt_prompt_save_buffer(const ulpt_prompt *p, void **buf, size_t *len,
                                     const ulpt_save_options *opts);

/* Release memory the library handed out (ulpt_prompt_save_buffer and the checkpoint
 * _save_buffer calls).  NULL is a no-op. */
ULPT_API void ulpt_free(void *ptr);

/* Load a prompt file: regenerate its projection(s), check them against the stored
 * fingerprint, restore parameters (always as float32) and metadata; gradients are zero.
 * Errors: ULPT_ERR_INVALID (NULL argument), ULPT_ERR_IO (cannot read path),
 * ULPT_ERR_FORMAT (not a libulpt prompt file, or a newer major format version: the
 * message names it), ULPT_ERR_CORRUPT (checksum, truncation, inconsistent sizes),
 * ULPT_ERR_MISMATCH (the regenerated projection differs from the one trained with),
 * ULPT_ERR_NOMEM. */
ULPT_API int ulpt_prompt_load(ulpt_prompt **out, const char *path);
ULPT_API int ulpt_prompt_load_buffer(ulpt_prompt **out, const void *buf, size_t len);

/* Load, refusing a prompt whose "model" metadata is absent or differs from model with
 * ULPT_ERR_MISMATCH and a message naming both. */
ULPT_API int ulpt_prompt_load_for_model(ulpt_prompt **out, const char *path,
                                        const char *model);

/* Checkpoints: a prompt file (float32) plus the optimizer's options, step count and
 * moments, atomically.  Training N steps straight and N/2 + save + load + N/2 give
 * bit-identical parameters.  Loading creates both objects; free them as usual.
 * Errors: as ulpt_prompt_save / ulpt_prompt_load; ULPT_ERR_MISMATCH if o was not
 * created for p; ULPT_ERR_FORMAT when loading a plain prompt file as a checkpoint. */
ULPT_API int ulpt_checkpoint_save(const ulpt_prompt *p, const ulpt_optimizer *o,
                                  const char *path);
ULPT_API int ulpt_checkpoint_load(ulpt_prompt **prompt, ulpt_optimizer **opt,
                                  const char *path);

/* Checkpoints to and from memory: the same bytes as ulpt_checkpoint_save writes, into a
 * new buffer *buf of *len bytes released with ulpt_free; and a checkpoint loaded from
 * len bytes at buf (which the call only reads), creating both objects.  The
 * out-parameters are written only on success.  Since 1.2.
 * Errors: as ulpt_checkpoint_save and ulpt_checkpoint_load, without ULPT_ERR_IO. */
ULPT_API int ulpt_checkpoint_save_buffer(void **buf, size_t *len, const ulpt_prompt *p,
                                         const ulpt_optimizer *o);
ULPT_API int ulpt_checkpoint_load_buffer(ulpt_prompt **prompt, ulpt_optimizer **opt,
                                         const void *buf, size_t len);

/* What a file is, for tools: filled by ulpt_file_inspect after the same checks as a load.
 * Set version (ULPT_FILE_INFO_INIT does) so that a later library, which may append
 * fields, fills only the ones this caller knows. */
#define ULPT_FILE_PROMPT      1
#define ULPT_FILE_CHECKPOINT  2
#define ULPT_FILE_INFO_VERSION 1

typedef struct ulpt_file_info {
    unsigned version;          /* ULPT_FILE_INFO_VERSION */
    int kind;                  /* ULPT_FILE_PROMPT or ULPT_FILE_CHECKPOINT */
    unsigned format_major;     /* format version of the file */
    unsigned format_minor;
    int dtype;                 /* storage type of the parameters, ULPT_DTYPE_* */
    uint64_t file_bytes;       /* the file's size */
    uint64_t stored_bytes;     /* bytes the parameters take in the file */
} ulpt_file_info;

#define ULPT_FILE_INFO_INIT { ULPT_FILE_INFO_VERSION, 0, 0, 0, 0, 0, 0 }

/* Zero *info and set its version to `version`, as ULPT_FILE_INFO_INIT does, writing only
 * the fields that version has.  Since 1.1.
 * Errors: ULPT_ERR_INVALID (info NULL, unknown version); *info is then untouched. */
ULPT_API int ulpt_file_info_init(ulpt_file_info *info, unsigned version);

/* Check a file completely (as ulpt_checkpoint_load or ulpt_prompt_load would) and
 * describe it.  *info is written only on success (its version field is kept).
 * Errors: as ulpt_prompt_load; ULPT_ERR_INVALID for an unknown info->version. */
ULPT_API int ulpt_file_inspect(const char *path, ulpt_file_info *info);

/* Write the materialised prompt E (n_tokens x dim) as a safetensors file with one F32
 * tensor "prompt_embeddings" -- the tensor a Hugging Face PEFT prompt-tuning adapter
 * keeps in adapter_model.safetensors -- atomically.
 * Errors: ULPT_ERR_INVALID, ULPT_ERR_NOMEM, ULPT_ERR_IO, ULPT_ERR_NONFINITE (a parameter
 * is NaN or infinite, named as by ulpt_prompt_forward; nothing is written). */
ULPT_API int ulpt_prompt_export_safetensors(const ulpt_prompt *p, const char *path);

/* ---------------------------------------------------------------------------------
 * Forward-only (zeroth-order) training: losses only, no backward pass
 *
 * For hosts that can run their model forward but not backward (most inference engines,
 * quantised models).  Each step draws q random directions u_1..u_q of the trainable
 * parameters theta, asks the host for the losses at theta + eps*u_j and theta - eps*u_j
 * on one minibatch, and forms the two-point (SPSA) gradient estimate
 *
 *     g = (1/q) sum_j (L(theta + eps*u_j) - L(theta - eps*u_j)) / (2*eps) * u_j
 *
 * in the prompt's gradient buffer, then takes an ordinary ulpt_optimizer_step (so the
 * optimizer's kind, schedule and clipping apply as usual).  E[g] is the gradient of L
 * up to O(eps^2) for both distributions below (E[u u^T] = I).  The directions are never
 * stored: direction j is a pure function of (seed, j), regenerated from the counter-
 * based stream of docs/PROJECTION.md section 6, and the handle keeps only its position,
 * the index of the next direction.  A prompt has n*r + 2d numbers to estimate (288 for
 * 16 tokens, r = 2, d = 128), few enough for this to train from losses alone.
 * Everything in this section is since 1.1.
 * ------------------------------------------------------------------------------- */

typedef struct ulpt_zo ulpt_zo;

#define ULPT_ZO_RADEMACHER  0  /* u_i = +-1, each with probability 1/2 (the default)   */
#define ULPT_ZO_GAUSSIAN    1  /* u_i ~ N(0, 1)                                         */

#define ULPT_ZO_PERTURB_ALL 0  /* perturb every trainable parameter: Z, s and b (default) */
#define ULPT_ZO_PERTURB_Z   1  /* perturb Z only; s and b get a zero gradient (the
                                  optimizer's weight decay still applies to them)      */

#define ULPT_ZO_OPTIONS_VERSION 1

typedef struct ulpt_zo_options {
    unsigned version;      /* ULPT_ZO_OPTIONS_VERSION */
    double epsilon;        /* perturbation size eps, default 1e-3 (finite, > 0; used as
                              float32(epsilon), which must be > 0 too) */
    uint32_t directions;   /* q >= 1 directions per step, default 1: 2q losses a step */
    uint32_t batch;        /* k, perturbed prompts handed to one callback call, 1..2q;
                              default 0 = 2q (the whole step in one call) */
    int distribution;      /* ULPT_ZO_RADEMACHER (default) or ULPT_ZO_GAUSSIAN */
    int perturb;           /* ULPT_ZO_PERTURB_ALL (default) or ULPT_ZO_PERTURB_Z */
    uint64_t seed;         /* seed of the direction stream, default 0 */
} ulpt_zo_options;

#define ULPT_ZO_OPTIONS_INIT \
    { ULPT_ZO_OPTIONS_VERSION, 1e-3, 1, 0, ULPT_ZO_RADEMACHER, ULPT_ZO_PERTURB_ALL, 0 }

/* Fill *opts with the defaults of options version `version` (as ULPT_ZO_OPTIONS_INIT),
 * writing only the fields that version has.
 * Errors: ULPT_ERR_INVALID (NULL opts, unknown version); *opts is then untouched. */
ULPT_API int ulpt_zo_options_init(ulpt_zo_options *opts, unsigned version);

/* The host model, forward only.  It receives `count` perturbed prompts one after the
 * other (count x n_tokens x dim floats; prompt c starts at embeddings + c*n_tokens*dim,
 * rows of dim floats), runs its model with each of them on the SAME minibatch (the one
 * of the current step; an engine can batch them as `count` sequences of one forward
 * pass) and writes their losses to losses[0..count).  Prompt c of a call is the
 * (first + c)-th of the step, where `first` counts the prompts of earlier calls of the
 * step; prompt 2j is theta + eps*u_j, prompt 2j+1 is theta - eps*u_j.  The losses
 * arrive as NaN, so one left unwritten fails the step.  Return 0 on success, anything
 * else on failure.  While it runs, the prompt holds its unperturbed parameters;
 * writing calls on the prompt, optimizer or handle it serves return ULPT_ERR_BUSY,
 * reading calls are allowed (THREADS). */
typedef int (*ulpt_zo_loss_fn)(void *user, const float *embeddings, uint32_t count,
                               uint32_t n_tokens, uint32_t dim, double *losses);

/* Create a forward-only trainer for prompt p and its optimizer o (made for p; both must
 * outlive the handle); opts NULL = defaults.  Takes every buffer a step needs here:
 * about 3 * num_params + k * n_tokens * dim floats and 2q doubles.  The stream starts
 * at position 0.
 * Errors: ULPT_ERR_INVALID (NULL p, o or out; unknown options version; the message
 * names the bad field: epsilon not finite and > 0, directions 0 or past 2^30, batch past
 * 2q, unknown distribution or perturb; a prompt past 2^34 parameters, the stream's
 * limit), ULPT_ERR_MISMATCH (o not made for p; since 1.2, ULPT_ERR_INVALID before),
 * ULPT_ERR_NOMEM. */
ULPT_API int ulpt_zo_create(ulpt_zo **out, ulpt_prompt *p, ulpt_optimizer *o,
                            const ulpt_zo_options *opts);

/* Free a handle (not its prompt or optimizer).  NULL is a no-op. */
ULPT_API void ulpt_zo_free(ulpt_zo *zo);

/* One forward-only step: for each of the q directions j (stream positions position ..
 * position + q - 1) write theta + eps*u_j and theta - eps*u_j through ulpt_prompt_forward
 * into the handle's buffer, calling the callback whenever k prompts are ready (2q/k
 * calls, rounded up); check every loss is finite; replace the prompt's gradients with
 * the estimate g; ulpt_optimizer_step; advance the position by q.  *loss (may be NULL)
 * gets the mean of the 2q losses, an estimate of L(theta) (biased by O(eps^2)).  No
 * allocation.  Holds the handle, its prompt and its optimizer from entry to return.
 * Errors: ULPT_ERR_INVALID (NULL zo or loss_fn), ULPT_ERR_CALLBACK (the callback
 * returned nonzero), ULPT_ERR_NONFINITE (a loss NaN or infinite, a perturbed parameter
 * or the estimate overflowed, or theta itself is not finite), ULPT_ERR_BUSY (the
 * handle, its prompt or its optimizer in use: THREADS).  On any failure the
 * parameters, gradients, optimizer state, stream position and *loss are unchanged. */
ULPT_API int ulpt_zo_step(double *loss, ulpt_zo *zo, ulpt_zo_loss_fn loss_fn, void *user);

/* The stream position: the index of the next direction, q times the steps taken since
 * position 0 (0 for NULL). */
ULPT_API uint64_t ulpt_zo_position(const ulpt_zo *zo);

/* Move the stream to `position` (a host that keeps its own checkpoints restores it with
 * this).  Errors: ULPT_ERR_INVALID (NULL zo). */
ULPT_API int ulpt_zo_set_position(ulpt_zo *zo, uint64_t position);

/* Write direction `index` of the handle's stream, u_index (ulpt_prompt_num_params floats
 * in the layout of ulpt_prompt_params; 0 outside the perturbed parts), into out.  The
 * handle is not changed.  Errors: ULPT_ERR_INVALID (NULL argument). */
ULPT_API int ulpt_zo_direction(float *out, const ulpt_zo *zo, uint64_t index);

/* Copy the handle's options into *opts: the fields of opts->version (which is kept;
 * set it, e.g. with ULPT_ZO_OPTIONS_INIT); batch is reported as the k in use.
 * Errors: ULPT_ERR_INVALID (NULL argument, unknown opts->version). */
ULPT_API int ulpt_zo_get_options(ulpt_zo_options *opts, const ulpt_zo *zo);

/* Accessors (NULL for NULL). */
ULPT_API ulpt_prompt *ulpt_zo_prompt(const ulpt_zo *zo);
ULPT_API ulpt_optimizer *ulpt_zo_optimizer(const ulpt_zo *zo);

/* Forward-only checkpoints: ulpt_checkpoint_save's file (the prompt, the optimizer's
 * options, step count and moments) plus the handle's options and stream position in a
 * ZOST section (format 1.1, docs/FORMAT.md), atomically.  Training N steps straight and
 * N/2 + save + load + N/2 give bit-identical parameters and the same position.  Such a
 * file is also an ordinary checkpoint: ulpt_checkpoint_load (and libulpt 1.0) reads its
 * prompt and optimizer and skips the forward-only state.
 * Errors: as ulpt_checkpoint_save (ULPT_ERR_INVALID for NULL zo or path). */
ULPT_API int ulpt_zo_checkpoint_save(const ulpt_zo *zo, const char *path);

/* Load a forward-only checkpoint: creates the prompt, its optimizer and a handle for
 * them with the stored options and position (free all three as usual: handle, then
 * optimizer, then prompt).  The out-parameters are written only on success.
 * Errors: as ulpt_checkpoint_load; ULPT_ERR_INVALID for a NULL argument;
 * ULPT_ERR_FORMAT for a checkpoint without forward-only state (an ordinary or a format
 * 1.0 checkpoint: load it with ulpt_checkpoint_load and call ulpt_zo_create);
 * ULPT_ERR_CORRUPT for forward-only state that ulpt_zo_create would refuse. */
ULPT_API int ulpt_zo_checkpoint_load(ulpt_prompt **prompt, ulpt_optimizer **opt, ulpt_zo **zo,
                                     const char *path);

/* Forward-only checkpoints to and from memory, as ulpt_checkpoint_save_buffer and
 * ulpt_checkpoint_load_buffer: the bytes ulpt_zo_checkpoint_save writes (release *buf
 * with ulpt_free), and the three objects from such bytes.  Since 1.2.
 * Errors: as ulpt_zo_checkpoint_save and ulpt_zo_checkpoint_load, without
 * ULPT_ERR_IO. */
ULPT_API int ulpt_zo_checkpoint_save_buffer(void **buf, size_t *len, const ulpt_zo *zo);
ULPT_API int ulpt_zo_checkpoint_load_buffer(ulpt_prompt **prompt, ulpt_optimizer **opt,
                                            ulpt_zo **zo, const void *buf, size_t len);

/* ---------------------------------------------------------------------------------
 * Initialising a prompt from text.  Since 1.1 (every function and type of this section).
 *
 * PEFT starts a soft prompt from the embeddings of a text (a task description, a class
 * name repeated).  ULPT's equivalent fits the prompt's structure to such rows: given T
 * (n_tokens x dim, from the host's embedding table), set Z, s and b so that
 * E = (Z_g . P_g) (.) s + b is the least-squares fit to T, and tune from there instead
 * of from noise.
 * ------------------------------------------------------------------------------- */

#define ULPT_FIT_OPTIONS_VERSION 1

typedef struct ulpt_fit_options {
    unsigned version;   /* ULPT_FIT_OPTIONS_VERSION */
    uint32_t max_iters; /* rounds of alternating least squares, default 100 (>= 1) */
    double tol;         /* stop once a round lowers ||E - T||^2 by less than tol times its
                           value before the round, default 1e-10 (>= 0; 0: all rounds) */
} ulpt_fit_options;

#define ULPT_FIT_OPTIONS_INIT { ULPT_FIT_OPTIONS_VERSION, 100, 1e-10 }

/* Fill *opts with the defaults of options version `version` (as ULPT_FIT_OPTIONS_INIT).
 * Errors: ULPT_ERR_INVALID (NULL, version 0 or newer than this library's). */
ULPT_API int ulpt_fit_options_init(ulpt_fit_options *opts, unsigned version);

/* Set p's Z, s and b to the least-squares fit of E to `target` (n_tokens rows of dim
 * floats, row i at target + i*ld), within the prompt's structure: its groups (rows of
 * group g use P_g), and s = 1 / b = 0 held fixed under ULPT_NO_SCALE / ULPT_NO_SHIFT.
 *
 * E is bilinear in Z and s, so this is alternating least squares, in double: from
 * s = 1 and b = the mean row of T (b = 0 under ULPT_NO_SHIFT), each round solves exactly
 * for Z with s and b fixed (per row, through the pseudo-inverse of P_g diag(s)^2 P_g^T,
 * minimum-norm where it is singular; elementwise for the identity projection), then for
 * s (per column) with Z and b fixed, then for b (the mean row of T - (Z P) (.) s).  Each
 * block is an exact minimum, so ||E - T|| never rises from one round to the next.  Rounds
 * stop after opts->max_iters, when a round lowers ||E - T||^2 by no more than opts->tol
 * times its previous value, or at an exact fit.  A value a block cannot reach (s_j of a
 * column Z P leaves all zero, z of a direction P diag(s) does not span) keeps its start.
 * Under ULPT_NO_SCALE with one group (or ULPT_NO_SCALE | ULPT_NO_SHIFT) the first round
 * is already the exact joint least-squares solution; otherwise the result is the point
 * the rounds reach, a local minimum of the bilinear problem in general.  The start and
 * every step depend only on T, P, the flags and the options: not on p's current
 * parameters, so equal inputs give equal results, and max_iters = k reproduces the first
 * k rounds of a longer run.  Gradients and any optimizer's state are left alone.
 *
 * *residual (may be NULL) gets ||E - T||_F / ||T||_F for E of the parameters stored
 * (after rounding to float), or ||E - T||_F when T is all zero.  opts NULL = defaults.
 * Allocates working memory (about n_tokens x dim doubles) for the call.
 * Errors: ULPT_ERR_INVALID (NULL p or target, ld outside [dim, INT_MAX], unknown options
 * version, max_iters 0, tol negative or not finite), ULPT_ERR_NONFINITE (a NaN or
 * infinity in T: the message names it; or a fitted value past float's range),
 * ULPT_ERR_NOMEM.  On error the prompt and *residual are unchanged. */
ULPT_API int ulpt_prompt_init_from_embeddings(ulpt_prompt *p, const float *target, size_t ld,
                                              const ulpt_fit_options *opts, double *residual);

/* ---------------------------------------------------------------------------------
 * Prompt bank: many tasks served from one frozen model.  Since 1.1 (every function and
 * type of this section).
 *
 * An engine serving thousands of tasks holds one model and, per task, only the prompt's
 * parameters: n_tokens*rank + 2*dim floats (the [Z | s | b] of ulpt_prompt_params), not
 * the n_tokens x dim rows of E.  A bank keeps those parameters for prompts of one model
 * (one embedding width and one "model" name) and writes E for a mixed batch of them on
 * demand, in float32, f16 or bf16.  Projections are shared: every prompt of the bank with
 * the same (projection seed, kind, rank, dim) uses one P, so a bank of prompts tuned
 * with one seed pays for P once.
 *
 * Prompts are named by ids, opaque nonzero numbers that stay valid until the prompt is
 * removed and are never reused (within one bank) after that: a removed prompt's id gives
 * ULPT_ERR_NOT_FOUND, never another prompt.  A prompt may also carry a name (unique in
 * the bank), which ulpt_bank_find turns into its id.
 *
 * THREADS
 *   A bank is safe to use from several threads at once.  Any number of threads may run
 *   ulpt_bank_materialise, ulpt_bank_find, ulpt_bank_n_tokens and ulpt_bank_count
 *   concurrently with each other AND with ulpt_bank_add, ulpt_bank_load_dir and
 *   ulpt_bank_remove (adding and removing while serving): the bank holds a
 *   readers-writer lock, taken for reading by those calls and for writing by the three
 *   that change the bank, only for the moment their change is spliced in (files are read
 *   and decoded outside it).  A materialisation sees each prompt either before or after a
 *   concurrent change, never half of it; removing a prompt waits for materialisations
 *   already running.  ulpt_bank_free needs exclusive access: no other call on the bank
 *   may be running or start.
 * ------------------------------------------------------------------------------- */

typedef struct ulpt_bank ulpt_bank;

/* A prompt's handle in a bank; 0 is never a valid id. */
typedef uint64_t ulpt_bank_id;

/* Create an empty bank for prompts of the model called `model` (copied; matched exactly
 * against each prompt's "model" metadata) whose embeddings are `dim` floats wide.
 * Errors: ULPT_ERR_INVALID (NULL out or model, empty model, dim 0 or > INT_MAX),
 * ULPT_ERR_NOMEM. */
ULPT_API int ulpt_bank_create(ulpt_bank **out, const char *model, uint32_t dim);

/* Free the bank and every prompt in it (dropping its references to the projections).
 * NULL is a no-op.  Needs exclusive access. */
ULPT_API void ulpt_bank_free(ulpt_bank *bank);

/* Add a copy of prompt p's parameters, under `name` (copied, 1..255 bytes; NULL for no
 * name), and store its new id in *id.  The caller keeps p and may free it at once.  The
 * bank keeps n_tokens*rank + (scale) dim + (shift) dim floats, the shape, a name and one
 * projection reference per group (shared with other prompts of the same projection).
 * Errors: ULPT_ERR_INVALID (NULL bank, id or p; empty or too long name, or a name already
 * in the bank), ULPT_ERR_MISMATCH (p's dim is not the bank's, or its "model" metadata is
 * absent or not the bank's model: the message names both), ULPT_ERR_NONFINITE (a
 * parameter is NaN or infinite), ULPT_ERR_NOMEM.  On error the bank is unchanged. */
ULPT_API int ulpt_bank_add(ulpt_bank *bank, ulpt_bank_id *id, const ulpt_prompt *p,
                           const char *name);

/* Add every prompt file "NAME.ulpt" in directory `dir` (not recursing; other files are
 * ignored), each named NAME, in the byte order of the file names.  All or nothing: if any
 * file cannot be read or added, none is, and the message names that file.  *count (may be
 * NULL) gets the number of prompts added.  Ids come from ulpt_bank_find.
 * Errors: ULPT_ERR_INVALID (NULL bank or dir, a NAME already in the bank or longer than
 * 255 bytes), ULPT_ERR_IO (cannot list dir or read a file), the errors of
 * ulpt_prompt_load for a damaged file, ULPT_ERR_MISMATCH (a prompt tuned for another model
 * or with another dim: the message names the file and both models or dims),
 * ULPT_ERR_NOMEM.  On error the bank is unchanged and *count is not written. */
ULPT_API int ulpt_bank_load_dir(ulpt_bank *bank, const char *dir, size_t *count);

/* Remove a prompt; its id becomes stale (ULPT_ERR_NOT_FOUND from then on).  Waits for
 * materialisations that are running.  Errors: ULPT_ERR_INVALID (NULL bank),
 * ULPT_ERR_NOT_FOUND (id not in the bank). */
ULPT_API int ulpt_bank_remove(ulpt_bank *bank, ulpt_bank_id id);

/* The id of the prompt called `name`, into *id.
 * Errors: ULPT_ERR_INVALID (NULL argument), ULPT_ERR_NOT_FOUND (no such name). */
ULPT_API int ulpt_bank_find(const ulpt_bank *bank, const char *name, ulpt_bank_id *id);

/* The number of token rows of prompt `id` (the rows ulpt_bank_materialise writes), into
 * *n_tokens.  Errors: ULPT_ERR_INVALID (NULL argument), ULPT_ERR_NOT_FOUND. */
ULPT_API int ulpt_bank_n_tokens(const ulpt_bank *bank, ulpt_bank_id id, uint32_t *n_tokens);

/* The number of prompts in the bank, its dim, and its model name (owned by the bank,
 * valid for its life).  0 / NULL for a NULL bank. */
ULPT_API size_t ulpt_bank_count(const ulpt_bank *bank);
ULPT_API uint32_t ulpt_bank_dim(const ulpt_bank *bank);
ULPT_API const char *ulpt_bank_model(const ulpt_bank *bank);

/* One prompt to materialise: E of prompt `id` into n_tokens rows at `dst`, row i at
 * element i*ld (elements of the output type: float for ULPT_DTYPE_F32, uint16_t for f16
 * and bf16); columns past dim are not touched.  Plain data, layout fixed. */
typedef struct ulpt_bank_request {
    ulpt_bank_id id;
    void *dst;
    size_t ld; /* row stride in elements, dim <= ld <= INT_MAX */
} ulpt_bank_request;

/* Write E = (Z . P) (.) s + b for each of the `count` requests, exactly as
 * ulpt_prompt_forward computes it for the prompt that was added (bit for bit in f32),
 * converted to `dtype` (ULPT_DTYPE_F32, or ULPT_DTYPE_F16 / ULPT_DTYPE_BF16 with round to
 * nearest even, as the half-precision storage of prompt files) for engines whose
 * embeddings are half precision.  Requests may name the same prompt several times.
 * Every request is checked before anything is written.  Allocates nothing, except for
 * f16/bf16 output when dim > 8192 (one row of floats).
 * Errors: ULPT_ERR_INVALID (NULL bank, NULL requests with count > 0, unknown dtype, a NULL
 * dst or an ld outside [dim, INT_MAX]: the message names the request), ULPT_ERR_NOT_FOUND
 * (a request's id is not in the bank: the message names the request and the id),
 * ULPT_ERR_NOMEM.  On error nothing is written. */
ULPT_API int ulpt_bank_materialise(const ulpt_bank *bank, const ulpt_bank_request *requests,
                                   size_t count, int dtype);

/* ---------------------------------------------------------------------------------
 * THREADS: which calls may run at once
 *
 * Different handles may be used from different threads freely.  Projections are
 * immutable and may be shared.  A prompt, optimizer or forward-only handle may be
 * used by several threads at once only through READING calls: ulpt_prompt_forward,
 * the saves (ulpt_prompt_save*, ulpt_checkpoint_save*, ulpt_zo_checkpoint_save*,
 * ulpt_prompt_export_safetensors), ulpt_bank_add, and the accessors.  Every WRITING
 * call (ulpt_prompt_backward, ulpt_prompt_zero_grad, ulpt_prompt_set_meta,
 * ulpt_prompt_init_from_embeddings, ulpt_optimizer_create and ulpt_zo_create on their
 * prompt, ulpt_optimizer_step, ulpt_train_step, ulpt_zo_step, ulpt_zo_set_position)
 * needs the object to itself.
 *
 * The library enforces this without waiting: a writing call that finds the object in
 * use returns ULPT_ERR_BUSY (since 1.2) and changes nothing, with a message naming
 * what holds it ("the prompt is in use by ulpt_train_step", "... being read by 1
 * running call(s)"); a reading call that finds it being written returns
 * ULPT_ERR_BUSY too.  (ulpt_prompt_zero_grad returns nothing: it then leaves the
 * gradients as they are and sets the message.)  The check is one atomic operation
 * per call; nothing is allocated.  Writing through the pointers of
 * ulpt_prompt_params / ulpt_prompt_grads, and freeing a handle another call uses,
 * cannot be seen and remain the caller's responsibility.
 *
 * ulpt_train_step and ulpt_zo_step hold their prompt and optimizer (and handle) from
 * entry to return.  From inside their callback, or from another thread meanwhile,
 * writing calls on those objects get ULPT_ERR_BUSY (a nested step, a backward, an
 * optimizer step); reading calls are allowed, since nothing changes while the host
 * runs: a forward there gives the E the step handed over (forward-only: theta, never
 * a perturbation), a checkpoint save there records the state before the step.  The
 * step writes only once no reading call is running on the prompt or optimizer; if one
 * still is when the callback returns, the step returns ULPT_ERR_BUSY with everything
 * as it was.
 *
 * ulpt_set_num_threads and ulpt_set_allocator are process-wide: call them only while
 * no other libulpt call runs (they are not checked).  A bank has its own rules (its
 * THREADS, in the bank's section).
 * ------------------------------------------------------------------------------- */

/* The number of threads the BLAS kernels may use (OpenBLAS's thread pool, process-wide).
 * Not thread-safe: call it while no other libulpt call runs (it reconfigures a pool
 * that running calls may be using).  n >= 1.  Ranks up to 12 do not use BLAS: their
 * forward and backward run in the calling thread.  Above that, one or two threads are
 * usually fastest.
 * Errors: ULPT_ERR_INVALID if n < 1. */
ULPT_API int ulpt_set_num_threads(int n);

/* ---------------------------------------------------------------------------------
 * Allocator: where the library's memory comes from
 * ------------------------------------------------------------------------------- */

/* A user-supplied allocator.  The functions get `user` as their first argument and must
 * behave like malloc, realloc and free (free(user, NULL) must be harmless).  Returning
 * NULL from alloc or realloc makes the calling function fail with ULPT_ERR_NOMEM,
 * cleanly. */
typedef struct ulpt_allocator {
    void *(*alloc)(void *user, size_t size);
    void *(*realloc)(void *user, void *ptr, size_t size);
    void (*free)(void *user, void *ptr);
    void *user;
} ulpt_allocator;

/* Route every allocation the library makes through `a` (copied); NULL restores the C
 * library's malloc/realloc/free.  Objects remember the allocator that created them and
 * are freed through it, so switching allocators while objects exist is safe.  Not
 * thread-safe: call it while no other libulpt call runs.  The memory OpenBLAS takes for
 * itself is outside this hook.
 * Errors: ULPT_ERR_INVALID if `a` lacks alloc or free. */
ULPT_API int ulpt_set_allocator(const ulpt_allocator *a);

#ifdef __cplusplus
}
#endif

#endif /* ULPT_H */
