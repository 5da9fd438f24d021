/* test_api.c -- the calling conventions: versions, every error path with its code and
 * message, out-of-memory at every allocation, and no allocation on the hot path. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "test.h"

#include <limits.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdio.h>

TEST(version_of_the_loaded_library_matches_the_header)
{
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", ULPT_VERSION_MAJOR, ULPT_VERSION_MINOR,
             ULPT_VERSION_PATCH);
    ck_assert_uint_eq(ulpt_version(), ULPT_VERSION_NUMBER);
    ck_assert_str_eq(ulpt_version_string(), expect);
}

TEST(every_code_has_a_distinct_description)
{
    const char *seen[12];
    for (int c = 0; c >= ULPT_ERR_BUSY; c--) {
        seen[-c] = ulpt_strerror(c);
        ck_assert_str_ne(seen[-c], "unknown error");
        for (int k = 0; k < -c; k++)
            ck_assert_str_ne(seen[k], seen[-c]);
    }
    ck_assert_str_eq(ulpt_strerror(-100), "unknown error");
    ck_assert_str_eq(ulpt_strerror(5), "unknown error");
}

/* Each bad prompt option, the code it must give and a word the message must contain. */
static void bad_prompt(void (*mutate)(ulpt_prompt_options *), const char *word)
{
    ulpt_prompt_options o = ULPT_PROMPT_OPTIONS_INIT;
    o.n_tokens = 8, o.dim = 16;
    mutate(&o);
    ulpt_prompt *p = (ulpt_prompt *)(uintptr_t)0x1; /* must stay as it was */
    ck_assert_int_eq(ulpt_prompt_create(&p, &o), ULPT_ERR_INVALID);
    ck_assert_ptr_eq(p, (ulpt_prompt *)(uintptr_t)0x1);
    ck_assert_msg(strstr(ulpt_last_error(), word), "message \"%s\" lacks \"%s\"", ulpt_last_error(),
                  word);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "ulpt_prompt_create"));
}

static void m_version0(ulpt_prompt_options *o) { o->version = 0; }
static void m_version9(ulpt_prompt_options *o) { o->version = 9; }
static void m_tokens0(ulpt_prompt_options *o) { o->n_tokens = 0; }
static void m_dim0(ulpt_prompt_options *o) { o->dim = 0; }
static void m_rank0(ulpt_prompt_options *o) { o->rank = 0; }
static void m_rank_gt_dim(ulpt_prompt_options *o) { o->rank = 17; }
static void m_identity_rank(ulpt_prompt_options *o) { o->projection_kind = ULPT_PROJ_IDENTITY; }
static void m_kind(ulpt_prompt_options *o) { o->projection_kind = 17; }
static void m_kind_neg(ulpt_prompt_options *o) { o->projection_kind = -1; }
static void m_flags(ulpt_prompt_options *o) { o->flags = 4; }
static void m_groups0(ulpt_prompt_options *o) { o->n_groups = 0; }
static void m_groups3(ulpt_prompt_options *o) { o->n_groups = 3; }
static void m_std_nan(ulpt_prompt_options *o) { o->init_std = NAN; }
static void m_std_neg(ulpt_prompt_options *o) { o->init_std = -1; }
static void m_huge_dim(ulpt_prompt_options *o) { o->dim = UINT32_MAX; }
static void m_huge_tokens(ulpt_prompt_options *o) { o->n_tokens = 0x80000000u; }

static const struct {
    void (*mutate)(ulpt_prompt_options *);
    const char *word;
} bad_prompts[] = {
    {m_version0, "version"},
    {m_version9, "version"},
    {m_tokens0, "n_tokens"},
    {m_dim0, "dim"},
    {m_rank0, "rank"},
    {m_rank_gt_dim, "greater than dim"},
    {m_identity_rank, "identity"},
    {m_kind, "kind"},
    {m_kind_neg, "kind"},
    {m_flags, "flags"},
    {m_groups0, "n_groups"},
    {m_groups3, "multiple"},
    {m_std_nan, "init_std"},
    {m_std_neg, "init_std"},
    {m_huge_dim, "BLAS limit"},
    {m_huge_tokens, "BLAS limit"},
};

TEST_LOOP(bad_prompt_options_are_refused_by_name, 0,
          (int)(sizeof bad_prompts / sizeof bad_prompts[0]))
{
    bad_prompt(bad_prompts[_i].mutate, bad_prompts[_i].word);
}

static void bad_opt(ulpt_optimizer_options o, const char *word)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *opt = NULL;
    ck_assert_int_eq(ulpt_optimizer_create(&opt, p, &o), ULPT_ERR_INVALID);
    ck_assert_ptr_null(opt);
    ck_assert_msg(strstr(ulpt_last_error(), word), "message \"%s\" lacks \"%s\"", ulpt_last_error(),
                  word);
    ulpt_prompt_free(p);
}

TEST(bad_optimizer_options_are_refused_by_name)
{
    const ulpt_optimizer_options d = ULPT_OPTIMIZER_OPTIONS_INIT;
    ulpt_optimizer_options o;
#define BAD(field, value, word) o = d, o.field = value, bad_opt(o, word)
    BAD(version, 0, "version");
    BAD(version, 2, "version");
    BAD(kind, 3, "kind");
    BAD(schedule, -1, "schedule");
    BAD(lr, 0, "lr");
    BAD(lr, -1, "lr");
    BAD(lr, INFINITY, "lr");
    BAD(lr, NAN, "lr");
    BAD(beta1, 1.0, "betas");
    BAD(beta2, -0.1, "betas");
    BAD(eps, 0, "eps");
    BAD(weight_decay, -1e-3, "weight_decay");
    BAD(weight_decay, NAN, "weight_decay");
    BAD(momentum, 1.0, "momentum");
    BAD(max_grad_norm, -1, "max_grad_norm");
    BAD(max_grad_norm, INFINITY, "max_grad_norm");
    o = d, o.schedule = ULPT_SCHED_LINEAR, o.warmup_steps = 10, o.total_steps = 10;
    bad_opt(o, "total_steps");
    o = d, o.schedule = ULPT_SCHED_COSINE;
    bad_opt(o, "total_steps");
#undef BAD
}

TEST(null_and_short_stride_arguments_are_refused)
{
    ulpt_prompt *p = test_prompt(2, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ulpt_optimizer_create(&o, p, NULL);
    float buf[2 * 8];
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = 2, po.dim = 8;
    ulpt_projection *pr;

/* each refused call sets a fresh, non-empty message naming the call */
#define REFUSED(call, name)                                                                \
    do {                                                                                   \
        ulpt_set_num_threads(-1); /* leave a different message behind first */           \
        ck_assert_int_eq((call), ULPT_ERR_INVALID);                                        \
        ck_assert_msg(strstr(ulpt_last_error(), name), "%s: \"%s\"", #call, ulpt_last_error()); \
    } while (0)
    REFUSED(ulpt_prompt_create(NULL, &po), "ulpt_prompt_create");
    REFUSED(ulpt_prompt_forward(p, NULL, 8), "ulpt_prompt_forward");
    REFUSED(ulpt_prompt_backward(p, buf, 7), "ulpt_prompt_backward");
    REFUSED(ulpt_optimizer_create(&o, NULL, NULL), "ulpt_optimizer_create");
    REFUSED(ulpt_optimizer_step(NULL), "ulpt_optimizer_step");
    REFUSED(ulpt_train_step(p, NULL, NULL, NULL, NULL), "ulpt_train_step");
    REFUSED(ulpt_projection_create(&pr, 1, 9, 8, 0), "ulpt_projection_create");
    REFUSED(ulpt_prompt_create_shared(NULL, &po, NULL), "ulpt_prompt_create_shared");
    REFUSED(ulpt_prompt_set_meta(p, "", "x"), "ulpt_prompt_set_meta");
    REFUSED(ulpt_prompt_meta_at(p, 5, NULL, NULL), "ulpt_prompt_meta_at");
    REFUSED(ulpt_prompt_save(p, NULL, NULL), "ulpt_prompt_save");
    REFUSED(ulpt_prompt_save_buffer(p, NULL, NULL, NULL), "ulpt_prompt_save_buffer");
    REFUSED(ulpt_prompt_load(NULL, "x"), "ulpt_prompt_load");
    REFUSED(ulpt_prompt_load_buffer(NULL, "x", 1), "ulpt_prompt_load_buffer");
    REFUSED(ulpt_prompt_load_for_model(NULL, "x", "m"), "ulpt_prompt_load_for_model");
    REFUSED(ulpt_checkpoint_save(p, NULL, "x"), "ulpt_checkpoint_save");
    REFUSED(ulpt_checkpoint_load(NULL, NULL, "x"), "ulpt_checkpoint_load");
    REFUSED(ulpt_prompt_export_safetensors(p, NULL), "ulpt_prompt_export_safetensors");
    REFUSED(ulpt_file_inspect(NULL, NULL), "ulpt_file_inspect");
    ck_assert_int_eq(ulpt_set_allocator(&(ulpt_allocator){ 0 }), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "ulpt_set_allocator"));
#undef REFUSED

    ck_assert_int_eq(ulpt_prompt_create(NULL, &po), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_create((ulpt_prompt **)&pr, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_forward(NULL, buf, 8), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_forward(p, NULL, 8), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_forward(p, buf, 7), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "stride 7"));
    ck_assert_int_eq(ulpt_prompt_forward(p, buf, (size_t)INT_MAX + 1), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_backward(NULL, buf, 8), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_backward(p, NULL, 8), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_backward(p, buf, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_optimizer_create(NULL, p, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_optimizer_create(&o, NULL, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_optimizer_step(NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_train_step(NULL, o, NULL, NULL, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_train_step(p, NULL, NULL, NULL, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_train_step(p, o, NULL, NULL, NULL), ULPT_ERR_INVALID);
    ck_assert_str_ne(ulpt_last_error(), "");
    ck_assert_int_eq(ulpt_projection_create(NULL, 1, 2, 8, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_projection_create(&pr, 1, 0, 8, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_projection_create(&pr, 1, 9, 8, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_projection_create(&pr, 1, 2, 8, 5), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_projection_create(&pr, 1, 2, UINT32_MAX, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_set_num_threads(0), ULPT_ERR_INVALID);
    ulpt_allocator half = {NULL, NULL, NULL, NULL};
    ck_assert_int_eq(ulpt_set_allocator(&half), ULPT_ERR_INVALID);

    /* NULL-tolerant accessors and frees */
    ulpt_prompt_free(NULL);
    ulpt_optimizer_free(NULL);
    ulpt_projection_free(NULL);
    ulpt_prompt_zero_grad(NULL);
    ck_assert_uint_eq(ulpt_prompt_num_params(NULL), 0);
    ck_assert_ptr_null(ulpt_prompt_params(NULL));
    ck_assert_ptr_null(ulpt_prompt_projection(NULL, 0));
    ck_assert_ptr_null(ulpt_projection_data(NULL));
    ck_assert_uint_eq(ulpt_optimizer_step_count(NULL), 0);
    ck_assert(ulpt_optimizer_lr(NULL) == 0.0f && ulpt_optimizer_lr_double(NULL) == 0.0);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

static void *fail_in_thread(void *arg)
{
    (void)arg;
    static char seen[256];
    snprintf(seen, sizeof seen, "%s", ulpt_last_error()); /* fresh thread: empty */
    if (seen[0] != '\0' || ulpt_set_num_threads(-5) != ULPT_ERR_INVALID)
        return NULL;
    snprintf(seen, sizeof seen, "%s", ulpt_last_error());
    return seen;
}

TEST(errors_are_per_thread)
{
    ck_assert_int_eq(ulpt_set_num_threads(0), ULPT_ERR_INVALID);
    pthread_t t;
    void *other;
    pthread_create(&t, NULL, fail_in_thread, NULL);
    pthread_join(t, &other);
    ck_assert_ptr_nonnull(other);
    ck_assert_ptr_nonnull(strstr(other, "thread count -5"));
    /* the other thread's failure did not touch this thread's message */
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "thread count 0"));
}

/* ---- out of memory at every allocation ------------------------------------------ */

static int create_all(ulpt_projection **pr, ulpt_prompt **p, ulpt_optimizer **o)
{
    int rc = ulpt_projection_create(pr, 9, 3, 40, ULPT_PROJ_GAUSSIAN);
    if (rc)
        return rc;
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = 6, po.dim = 40, po.n_groups = 3;
    rc = ulpt_prompt_create(p, &po);
    if (rc)
        return rc;
    ulpt_prompt *shared = NULL;
    po.n_groups = 1, po.rank = 3, po.projection_seed = 9, po.projection_kind = ULPT_PROJ_GAUSSIAN;
    rc = ulpt_prompt_create_shared(&shared, &po, pr);
    ulpt_prompt_free(shared);
    if (rc)
        return rc;
    return ulpt_optimizer_create(o, *p, NULL);
}

TEST(out_of_memory_at_each_allocation_fails_cleanly_and_leaks_nothing)
{
    long k;
    for (k = 0;; k++) {
        ulpt_projection *pr = NULL;
        ulpt_prompt *p = NULL;
        ulpt_optimizer *o = NULL;
        test_alloc_install(k);
        int rc = create_all(&pr, &p, &o);
        if (rc == ULPT_OK) {
            ulpt_optimizer_free(o);
            ulpt_prompt_free(p);
            ulpt_projection_free(pr);
            ck_assert_int_eq(test_alloc.live, 0);
            test_alloc_remove();
            break;
        }
        ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
        ck_assert_str_ne(ulpt_last_error(), "");
        /* the failed call's out-parameter stayed NULL; free what came before it */
        ulpt_prompt_free(p);
        ulpt_projection_free(pr);
        ck_assert_int_eq(test_alloc.live, 0);
        test_alloc_remove();
    }
    ck_assert_int_gt(k, 5); /* projection 2, prompt 3 + groups, optimizer 2 */
}

TEST(objects_are_freed_with_the_allocator_that_made_them)
{
    test_alloc_install(-1);
    ulpt_prompt *p = test_prompt(4, 2, 8, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    long live = test_alloc.live;
    ck_assert_int_gt(live, 0);
    ulpt_set_allocator(NULL); /* switch while the prompt lives */
    ulpt_prompt_free(p);
    ck_assert_int_eq(test_alloc.live, 0);
}

static int quadratic(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    (void)user;
    *loss = 0;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        grad[k] = e[k];
        *loss += 0.5 * e[k] * e[k];
    }
    return 0;
}

TEST_LOOP(hot_path_does_not_allocate, 0, 3)
{
    /* rank 2 at dims 128 and 4096 (where the fused kernels take their long chunks),
     * and the identity */
    const uint32_t d = _i == 1 ? 4096 : 128, r = _i == 2 ? d : 2;
    test_alloc_install(-1);
    ulpt_prompt *p = test_prompt(16, r, d, 2,
                                 _i == 2 ? ULPT_PROJ_IDENTITY : ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    float *buf = calloc(16 * (size_t)d, sizeof *buf);
    long calls = test_alloc.calls;
    for (int t = 0; t < 3; t++) {
        ck_assert_int_eq(ulpt_prompt_forward(p, buf, d), ULPT_OK);
        ck_assert_int_eq(ulpt_prompt_backward(p, buf, d), ULPT_OK);
        ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
        ck_assert_int_eq(ulpt_train_step(p, o, quadratic, NULL, NULL), ULPT_OK);
    }
    ck_assert_int_eq(test_alloc.calls, calls);
    free(buf);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    ck_assert_int_eq(test_alloc.live, 0);
    test_alloc_remove();
}

/* A caller built against version 1 of the options keeps working: the struct it passes is
 * exactly what ULPT_*_OPTIONS_INIT gave it then. */
TEST(options_of_version_one_are_accepted)
{
    ulpt_prompt_options po = {1, 4, 2, 8, 1, 0, ULPT_PROJ_XAVIER_UNIFORM, 0, 1.0f, 0};
    ulpt_optimizer_options oo = {1, ULPT_OPT_ADAMW,      1e-3, 0.9, 0.999, 1e-8, 0.01, 0,
                                 0, ULPT_SCHED_CONSTANT, 0,    0};
    ulpt_prompt *p;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_prompt_create(&p, &po), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(shared_projection_serves_many_prompts_and_outlives_its_creator)
{
    ulpt_projection *pr[2];
    ck_assert_int_eq(ulpt_projection_create(&pr[0], 1234, 2, 32, ULPT_PROJ_XAVIER_UNIFORM), ULPT_OK);
    ck_assert_int_eq(ulpt_projection_create(&pr[1], 1234 + 0x9E3779B97F4A7C15u, 2, 32,
                                            ULPT_PROJ_XAVIER_UNIFORM), ULPT_OK);
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = 6, po.dim = 32, po.n_groups = 2, po.projection_seed = 1234, po.init_seed = 99;
    ulpt_prompt *a, *b, *own;
    ck_assert_int_eq(ulpt_prompt_create_shared(&a, &po, pr), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_create_shared(&b, &po, pr), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_create(&own, &po), ULPT_OK);
    ck_assert_ptr_eq(ulpt_prompt_projection(a, 1), pr[1]); /* the same matrix, not a copy */
    ck_assert_ptr_eq(ulpt_prompt_projection(b, 0), pr[0]);
    const float *data = ulpt_projection_data(pr[0]);
    ulpt_projection_free(pr[0]); /* the caller lets go; the prompts keep it */
    ulpt_projection_free(pr[1]);
    ulpt_prompt_free(a);
    float e1[6 * 32], e2[6 * 32];
    ck_assert_int_eq(ulpt_prompt_forward(b, e1, 32), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_forward(own, e2, 32), ULPT_OK);
    ck_assert_mem_eq(e1, e2, sizeof e1);
    ck_assert_ptr_eq(ulpt_projection_data(ulpt_prompt_projection(b, 0)), data);
    ulpt_prompt_free(b);
    ulpt_prompt_free(own);
}

TEST(shared_projection_must_be_the_one_the_options_imply)
{
    ulpt_projection *pr;
    ck_assert_int_eq(ulpt_projection_create(&pr, 5, 2, 32, ULPT_PROJ_XAVIER_UNIFORM), ULPT_OK);
    ulpt_prompt_options po = ULPT_PROMPT_OPTIONS_INIT;
    po.n_tokens = 4, po.dim = 32, po.projection_seed = 6;
    ulpt_prompt *p = NULL;
    ck_assert_int_eq(ulpt_prompt_create_shared(&p, &po, &pr), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "seed 5"));
    po.projection_seed = 5, po.dim = 33;
    ck_assert_int_eq(ulpt_prompt_create_shared(&p, &po, &pr), ULPT_ERR_MISMATCH);
    po.dim = 32, po.projection_kind = ULPT_PROJ_GAUSSIAN;
    ck_assert_int_eq(ulpt_prompt_create_shared(&p, &po, &pr), ULPT_ERR_MISMATCH);
    ulpt_projection *none[1] = { NULL };
    po.projection_kind = ULPT_PROJ_XAVIER_UNIFORM;
    ck_assert_int_eq(ulpt_prompt_create_shared(&p, &po, none), ULPT_ERR_INVALID);
    ck_assert_ptr_null(p);
    ulpt_projection_free(pr);
}

static int overflowing(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    (void)user, (void)e;
    for (size_t k = 0; k < (size_t)n * d; k++)
        grad[k] = 3e38f; /* finite, but its sums are not */
    *loss = 1;
    return 0;
}

TEST(overflow_in_backward_is_reported_by_train_step_and_changes_nothing)
{
    ulpt_prompt *p = test_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ulpt_optimizer_create(&o, p, NULL);
    float params[4 * 2 + 16];
    memcpy(params, ulpt_prompt_params(p), sizeof params);
    ck_assert_int_eq(ulpt_train_step(p, o, overflowing, NULL, NULL), ULPT_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "ulpt_train_step"));
    ck_assert_mem_eq(ulpt_prompt_params(p), params, sizeof params);
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        ck_assert_float_eq(ulpt_prompt_grads(p)[i], 0.0f);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 0);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* A caller built against version 1 of a struct passes exactly version 1's bytes.  Put
 * each struct so that its last byte is the last readable one before a PROT_NONE page: a
 * library that read (or wrote) past the caller's version would fault. */
static void *at_page_end(size_t size, void **map, long *page)
{
    *page = sysconf(_SC_PAGESIZE);
    unsigned char *mem = mmap(NULL, 2 * (size_t)*page, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(mem, MAP_FAILED);
    ck_assert_int_eq(mprotect(mem + *page, (size_t)*page, PROT_NONE), 0);
    *map = mem;
    return mem + *page - size;
}

/* _i = 0: the structs filled by the _INIT macros; 1: by the _init functions, which must
 * not write past the version they are given either. */
TEST_LOOP(structs_are_accessed_only_as_far_as_their_version, 0, 2)
{
    void *m1, *m2, *m3, *m4;
    long page;
    ulpt_prompt_options *po = at_page_end(sizeof *po, &m1, &page);
    ulpt_optimizer_options *oo = at_page_end(sizeof *oo, &m2, &page);
    ulpt_save_options *so = at_page_end(sizeof *so, &m3, &page);
    ulpt_file_info *fi = at_page_end(sizeof *fi, &m4, &page);
    if (_i == 0) {
        *po = (ulpt_prompt_options)ULPT_PROMPT_OPTIONS_INIT;
        *oo = (ulpt_optimizer_options)ULPT_OPTIMIZER_OPTIONS_INIT;
        *so = (ulpt_save_options)ULPT_SAVE_OPTIONS_INIT;
        *fi = (ulpt_file_info)ULPT_FILE_INFO_INIT;
    } else {
        ck_assert_int_eq(ulpt_prompt_options_init(po, 1), ULPT_OK);
        ck_assert_int_eq(ulpt_optimizer_options_init(oo, 1), ULPT_OK);
        ck_assert_int_eq(ulpt_save_options_init(so, 1), ULPT_OK);
        ck_assert_int_eq(ulpt_file_info_init(fi, 1), ULPT_OK);
    }
    po->n_tokens = 4, po->dim = 8;

    ulpt_prompt *p;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_prompt_create(&p, po), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, oo), ULPT_OK);
    char path[200];
    snprintf(path, sizeof path, "%s/v1-%ld.ulpt", test_dir(), (long)getpid());
    ck_assert_int_eq(ulpt_prompt_save(p, path, so), ULPT_OK);
    ck_assert_int_eq(ulpt_file_inspect(path, fi), ULPT_OK);
    ck_assert_int_eq(fi->kind, ULPT_FILE_PROMPT);
    unlink(path);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    munmap(m1, 2 * (size_t)page), munmap(m2, 2 * (size_t)page);
    munmap(m3, 2 * (size_t)page), munmap(m4, 2 * (size_t)page);
}

/* The _init functions (for bindings, which cannot expand macros) give exactly what the
 * _INIT macros give, over whatever the struct held before. */
TEST(init_functions_give_the_macro_defaults)
{
    ulpt_prompt_options po, pm = ULPT_PROMPT_OPTIONS_INIT;
    memset(&po, 0xA5, sizeof po);
    ck_assert_int_eq(ulpt_prompt_options_init(&po, ULPT_PROMPT_OPTIONS_VERSION), ULPT_OK);
    ck_assert_uint_eq(po.version, pm.version);
    ck_assert_uint_eq(po.n_tokens, pm.n_tokens);
    ck_assert_uint_eq(po.rank, 2);
    ck_assert_uint_eq(po.dim, pm.dim);
    ck_assert_uint_eq(po.n_groups, 1);
    ck_assert_uint_eq(po.projection_seed, pm.projection_seed);
    ck_assert_int_eq(po.projection_kind, ULPT_PROJ_XAVIER_UNIFORM);
    ck_assert_uint_eq(po.init_seed, pm.init_seed);
    ck_assert(po.init_std == 1.0f);
    ck_assert_uint_eq(po.flags, pm.flags);

    ulpt_optimizer_options oo, om = ULPT_OPTIMIZER_OPTIONS_INIT;
    memset(&oo, 0xA5, sizeof oo);
    ck_assert_int_eq(ulpt_optimizer_options_init(&oo, ULPT_OPTIMIZER_OPTIONS_VERSION), ULPT_OK);
    ck_assert_uint_eq(oo.version, om.version);
    ck_assert_int_eq(oo.kind, ULPT_OPT_ADAMW);
    ck_assert(oo.lr == 1e-3 && oo.beta1 == 0.9 && oo.beta2 == 0.999 && oo.eps == 1e-8);
    ck_assert(oo.weight_decay == ULPT_WEIGHT_DECAY_DEFAULT);
    ck_assert(oo.momentum == 0 && oo.max_grad_norm == 0);
    ck_assert_int_eq(oo.schedule, ULPT_SCHED_CONSTANT);
    ck_assert_uint_eq(oo.warmup_steps, 0);
    ck_assert_uint_eq(oo.total_steps, 0);

    ulpt_save_options so, sm = ULPT_SAVE_OPTIONS_INIT;
    memset(&so, 0xA5, sizeof so);
    ck_assert_int_eq(ulpt_save_options_init(&so, ULPT_SAVE_OPTIONS_VERSION), ULPT_OK);
    ck_assert_uint_eq(so.version, sm.version);
    ck_assert_int_eq(so.dtype, sm.dtype);
    ck_assert_int_eq(so.level, 6);

    ulpt_file_info fi;
    memset(&fi, 0xA5, sizeof fi);
    ck_assert_int_eq(ulpt_file_info_init(&fi, ULPT_FILE_INFO_VERSION), ULPT_OK);
    ck_assert_uint_eq(fi.version, ULPT_FILE_INFO_VERSION);
    ck_assert(fi.kind == 0 && fi.format_major == 0 && fi.format_minor == 0 && fi.dtype == 0);
    ck_assert(fi.file_bytes == 0 && fi.stored_bytes == 0);

    /* and they are what the constructors accept: a prompt, an optimizer and a save */
    po.n_tokens = 2, po.dim = 4;
    ulpt_prompt *p;
    ulpt_optimizer *o;
    void *buf;
    size_t len;
    ck_assert_int_eq(ulpt_prompt_create(&p, &po), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    ck_assert(ulpt_optimizer_lr(o) == 1e-3f);
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &so), ULPT_OK);
    ulpt_free(buf);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* NULL and versions this library does not know: ULPT_ERR_INVALID, a message naming the
 * call and the version, the struct untouched. */
TEST(init_functions_refuse_null_and_unknown_versions)
{
    static const unsigned bad[] = { 0, 2, 1000, UINT_MAX };
    ck_assert_int_eq(ulpt_prompt_options_init(NULL, 1), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "ulpt_prompt_options_init: opts is NULL"));
    ck_assert_int_eq(ulpt_optimizer_options_init(NULL, 1), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "ulpt_optimizer_options_init"));
    ck_assert_int_eq(ulpt_save_options_init(NULL, 1), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "ulpt_save_options_init"));
    ck_assert_int_eq(ulpt_file_info_init(NULL, 1), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "ulpt_file_info_init: info is NULL"));
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        char want[64];
        snprintf(want, sizeof want, "version %u", bad[k]);
        _Alignas(8) unsigned char po[sizeof(ulpt_prompt_options)], oo[sizeof(ulpt_optimizer_options)];
        _Alignas(8) unsigned char so[sizeof(ulpt_save_options)], fi[sizeof(ulpt_file_info)];
        memset(po, 0x5A, sizeof po), memset(oo, 0x5A, sizeof oo);
        memset(so, 0x5A, sizeof so), memset(fi, 0x5A, sizeof fi);
        ck_assert_int_eq(ulpt_prompt_options_init((void *)po, bad[k]), ULPT_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), want));
        ck_assert_int_eq(ulpt_optimizer_options_init((void *)oo, bad[k]), ULPT_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), want));
        ck_assert_int_eq(ulpt_save_options_init((void *)so, bad[k]), ULPT_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), want));
        ck_assert_int_eq(ulpt_file_info_init((void *)fi, bad[k]), ULPT_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), want));
        for (size_t i = 0; i < sizeof po; i++)
            ck_assert_uint_eq(po[i], 0x5A);
        for (size_t i = 0; i < sizeof oo; i++)
            ck_assert_uint_eq(oo[i], 0x5A);
        for (size_t i = 0; i < sizeof so; i++)
            ck_assert_uint_eq(so[i], 0x5A);
        for (size_t i = 0; i < sizeof fi; i++)
            ck_assert_uint_eq(fi[i], 0x5A);
    }
}
