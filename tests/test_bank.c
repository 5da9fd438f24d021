/* test_bank.c -- the prompt bank: many prompts of one model, materialised on demand. */
#define _GNU_SOURCE
#include "test.h"

#include "internal.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODEL "tinylm-1.5M"

TEST_TIMEOUT(120);

/* A directory per test under the run's directory (Check forks each test). */
static const char *bank_dir(const char *name)
{
    static char path[512];
    char dir[160];
    snprintf(dir, sizeof dir, "%s/bank-%ld", test_dir(), (long)getpid());
    mkdir(dir, 0777);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

/* A prompt of the bank's model with every parameter perturbed. */
static ulpt_prompt *model_prompt(uint32_t n, uint32_t r, uint32_t d, uint32_t groups, int kind,
                                 unsigned flags, uint64_t seed, uint64_t perturb)
{
    ulpt_prompt_options o = ULPT_PROMPT_OPTIONS_INIT;
    o.n_tokens = n, o.rank = r, o.dim = d, o.n_groups = groups, o.projection_kind = kind;
    o.projection_seed = seed, o.init_seed = perturb, o.flags = flags;
    ulpt_prompt *p;
    ck_assert_int_eq(ulpt_prompt_create(&p, &o), ULPT_OK);
    test_perturb(p, perturb);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "model", MODEL), ULPT_OK);
    return p;
}

static ulpt_bank *new_bank(uint32_t d)
{
    ulpt_bank *b = NULL;
    ck_assert_int_eq(ulpt_bank_create(&b, MODEL, d), ULPT_OK);
    ck_assert_ptr_nonnull(b);
    return b;
}

/* E of p by its own forward, row stride d. */
static float *forward_of(ulpt_prompt *p)
{
    size_t nd = (size_t)ulpt_prompt_n_tokens(p) * ulpt_prompt_dim(p);
    float *e = malloc(nd * sizeof *e);
    ck_assert_int_eq(ulpt_prompt_forward(p, e, ulpt_prompt_dim(p)), ULPT_OK);
    return e;
}

/* E of p in double from its parameters (test.h's independent reference). */
static double *reference_of(ulpt_prompt *p)
{
    size_t np = ulpt_prompt_num_params(p), nd = (size_t)ulpt_prompt_n_tokens(p) * ulpt_prompt_dim(p);
    double *params = malloc(np * sizeof *params), *e = malloc(nd * sizeof *e);
    for (size_t i = 0; i < np; i++)
        params[i] = ulpt_prompt_params(p)[i];
    test_forward_ref(p, params, e);
    free(params);
    return e;
}

TEST(create_checks_its_arguments)
{
    ulpt_bank *b = NULL;
    ck_assert_int_eq(ulpt_bank_create(NULL, MODEL, 8), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_create(&b, NULL, 8), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_create(&b, "", 8), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_create(&b, MODEL, 0), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "dim 0"));
    ck_assert_int_eq(ulpt_bank_create(&b, MODEL, (uint32_t)INT32_MAX + 1), ULPT_ERR_INVALID);
    ck_assert_ptr_null(b);
    char model[64];
    snprintf(model, sizeof model, "%s", MODEL);
    b = new_bank(8);
    model[0] = 'X'; /* the bank keeps a copy */
    ck_assert_str_eq(ulpt_bank_model(b), MODEL);
    ck_assert_uint_eq(ulpt_bank_dim(b), 8);
    ck_assert_uint_eq(ulpt_bank_count(b), 0);
    ck_assert_uint_eq(ulpt_bank_count(NULL), 0);
    ck_assert_uint_eq(ulpt_bank_dim(NULL), 0);
    ck_assert_ptr_null(ulpt_bank_model(NULL));
    ck_assert_str_eq(ulpt_strerror(ULPT_ERR_NOT_FOUND), "not found");
    ulpt_bank_free(b);
    ulpt_bank_free(NULL);
}

/* Prompts of every shape the library makes, with one dim, in one bank. */
enum { D = 24, KINDS = 6 };
static ulpt_prompt *shape(int i)
{
    switch (i) {
    case 0: return model_prompt(5, 2, D, 1, ULPT_PROJ_XAVIER_UNIFORM, 0, 11, 1);
    case 1: return model_prompt(6, 3, D, 3, ULPT_PROJ_GAUSSIAN, 0, 12, 2);
    case 2: return model_prompt(4, 1, D, 2, ULPT_PROJ_RADEMACHER, ULPT_NO_SCALE, 13, 3);
    case 3: return model_prompt(3, 2, D, 1, ULPT_PROJ_KAIMING_UNIFORM, ULPT_NO_SHIFT, 14, 4);
    case 4: return model_prompt(2, D, D, 1, ULPT_PROJ_IDENTITY, 0, 0, 5);
    default: return model_prompt(7, 8, D, 7, ULPT_PROJ_XAVIER_UNIFORM,
                                 ULPT_NO_SCALE | ULPT_NO_SHIFT, 15, 6);
    }
}

TEST(a_mixed_batch_is_each_prompts_forward)
{
    ulpt_bank *b = new_bank(D);
    ulpt_prompt *p[KINDS];
    ulpt_bank_id id[KINDS];
    for (int i = 0; i < KINDS; i++) {
        p[i] = shape(i);
        ck_assert_int_eq(ulpt_bank_add(b, &id[i], p[i], NULL), ULPT_OK);
        ck_assert_uint_ne(id[i], 0);
        uint32_t n = 0;
        ck_assert_int_eq(ulpt_bank_n_tokens(b, id[i], &n), ULPT_OK);
        ck_assert_uint_eq(n, ulpt_prompt_n_tokens(p[i]));
    }
    ck_assert_uint_eq(ulpt_bank_count(b), KINDS);
    /* a batch in scrambled order, prompts repeated, strides wider than dim */
    const int order[] = { 3, 0, 5, 0, 4, 1, 2, 5, 3 };
    enum { REQ = sizeof order / sizeof order[0], LD = D + 5 };
    ulpt_bank_request req[REQ];
    float *dst[REQ];
    for (int k = 0; k < REQ; k++) {
        size_t n = ulpt_prompt_n_tokens(p[order[k]]);
        dst[k] = malloc(n * LD * sizeof(float));
        for (size_t j = 0; j < n * LD; j++)
            dst[k][j] = -7.0f;
        req[k] = (ulpt_bank_request){ id[order[k]], dst[k], LD };
    }
    ck_assert_int_eq(ulpt_bank_materialise(b, req, REQ, ULPT_DTYPE_F32), ULPT_OK);
    for (int k = 0; k < REQ; k++) {
        ulpt_prompt *q = p[order[k]];
        size_t n = ulpt_prompt_n_tokens(q);
        float *e = forward_of(q);
        double *ref = reference_of(q);
        for (size_t i = 0; i < n; i++) {
            /* bit for bit the prompt's own forward, and close to the double reference */
            ck_assert_mem_eq(dst[k] + i * LD, e + i * D, D * sizeof(float));
            for (size_t j = 0; j < D; j++)
                ck_assert_double_le(fabs(dst[k][i * LD + j] - ref[i * D + j]),
                                    1e-5 * (1 + fabs(ref[i * D + j])));
            for (size_t j = D; j < LD; j++) /* past dim: untouched */
                ck_assert_float_eq(dst[k][i * LD + j], -7.0f);
        }
        free(e);
        free(ref);
        free(dst[k]);
    }
    ck_assert_int_eq(ulpt_bank_materialise(b, NULL, 0, ULPT_DTYPE_F32), ULPT_OK);
    for (int i = 0; i < KINDS; i++)
        ulpt_prompt_free(p[i]);
    ulpt_bank_free(b);
}

/* Half output: the float32 E converted by the library's round-to-nearest-even, and
 * within half an ulp of the double reference. */
static void check_half(uint32_t n, uint32_t r, uint32_t d, uint32_t groups, int dtype)
{
    ulpt_bank *b = new_bank(d);
    ulpt_prompt *p = model_prompt(n, r, d, groups, ULPT_PROJ_XAVIER_UNIFORM, 0, 3, 9);
    ulpt_bank_id id;
    ck_assert_int_eq(ulpt_bank_add(b, &id, p, "half"), ULPT_OK);
    size_t ld = d + 3;
    uint16_t *h = malloc((size_t)n * ld * sizeof *h);
    for (size_t j = 0; j < (size_t)n * ld; j++)
        h[j] = 0xABCD;
    ulpt_bank_request req = { id, h, ld };
    ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, dtype), ULPT_OK);
    float *e = forward_of(p);
    double *ref = reference_of(p);
    double ulp = dtype == ULPT_DTYPE_F16 ? 0x1p-11 : 0x1p-8; /* half an ulp, relative */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < d; j++) {
            float x = e[i * d + j];
            uint16_t want = dtype == ULPT_DTYPE_F16 ? ulpt__f32_to_f16(x) : ulpt__f32_to_bf16(x);
            ck_assert_uint_eq(h[i * ld + j], want);
            double got = dtype == ULPT_DTYPE_F16 ? ulpt__f16_to_f32(h[i * ld + j])
                                                 : ulpt__bf16_to_f32(h[i * ld + j]);
            ck_assert_double_le(fabs(got - ref[i * d + j]), ulp * fabs(ref[i * d + j]) + 1e-6);
        }
        for (size_t j = d; j < ld; j++)
            ck_assert_uint_eq(h[i * ld + j], 0xABCD);
    }
    free(h);
    free(e);
    free(ref);
    ulpt_prompt_free(p);
    ulpt_bank_free(b);
}

TEST(f16_and_bf16_output_round_the_forward)
{
    check_half(5, 2, 40, 1, ULPT_DTYPE_F16);
    check_half(5, 2, 40, 1, ULPT_DTYPE_BF16);
    /* several rows per pass through the stack buffer, groups cutting the passes */
    check_half(12, 2, 4096, 3, ULPT_DTYPE_F16);
    check_half(12, 2, 4096, 4, ULPT_DTYPE_BF16);
    /* dim past the stack buffer: one heap row */
    check_half(3, 2, 9000, 1, ULPT_DTYPE_F16);
    check_half(3, 2, 9000, 3, ULPT_DTYPE_BF16);
}

TEST(added_prompts_are_copies)
{
    ulpt_bank *b = new_bank(D);
    ulpt_prompt *p = shape(0);
    float *before = forward_of(p);
    ulpt_bank_id id;
    ck_assert_int_eq(ulpt_bank_add(b, &id, p, "copy"), ULPT_OK);
    ulpt_prompt_params(p)[0] += 1.0f; /* the caller's prompt moves on ... */
    float e[5 * D];
    ulpt_bank_request req = { id, e, D };
    ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, ULPT_DTYPE_F32), ULPT_OK);
    ck_assert_mem_eq(e, before, sizeof e); /* ... the bank's does not */
    ulpt_prompt_free(p); /* and the bank needs nothing of it */
    ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, ULPT_DTYPE_F32), ULPT_OK);
    ck_assert_mem_eq(e, before, sizeof e);
    free(before);
    ulpt_bank_free(b);
}

TEST(names_find_ids)
{
    ulpt_bank *b = new_bank(D);
    ulpt_prompt *p = shape(0);
    ulpt_bank_id ids[40], found;
    char name[32];
    for (int i = 0; i < 40; i++) { /* enough to rehash the names a few times */
        snprintf(name, sizeof name, "task-%d", i);
        ck_assert_int_eq(ulpt_bank_add(b, &ids[i], p, name), ULPT_OK);
    }
    ck_assert_int_eq(ulpt_bank_add(b, &found, p, NULL), ULPT_OK); /* unnamed is fine */
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "task-%d", i);
        ck_assert_int_eq(ulpt_bank_find(b, name, &found), ULPT_OK);
        ck_assert_uint_eq(found, ids[i]);
    }
    found = 77;
    ck_assert_int_eq(ulpt_bank_find(b, "task-40", &found), ULPT_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "task-40"));
    ck_assert_uint_eq(found, 77);
    ck_assert_int_eq(ulpt_bank_find(NULL, "x", &found), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_find(b, NULL, &found), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_find(b, "x", NULL), ULPT_ERR_INVALID);
    ulpt_prompt_free(p);
    ulpt_bank_free(b);
}

TEST(removed_ids_are_stale_and_never_reused)
{
    ulpt_bank *b = new_bank(D);
    ulpt_prompt *p0 = shape(0), *p1 = shape(1);
    ulpt_bank_id a, c, again, found;
    ck_assert_int_eq(ulpt_bank_add(b, &a, p0, "a"), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_add(b, &c, p1, "c"), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_remove(b, a), ULPT_OK);
    ck_assert_uint_eq(ulpt_bank_count(b), 1);
    float e[7 * D];
    ulpt_bank_request req = { a, e, D };
    ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, ULPT_DTYPE_F32), ULPT_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "request 0"));
    uint32_t n = 99;
    ck_assert_int_eq(ulpt_bank_n_tokens(b, a, &n), ULPT_ERR_NOT_FOUND);
    ck_assert_uint_eq(n, 99);
    ck_assert_int_eq(ulpt_bank_remove(b, a), ULPT_ERR_NOT_FOUND);
    ck_assert_int_eq(ulpt_bank_find(b, "a", &found), ULPT_ERR_NOT_FOUND);
    /* the freed slot is used again, under a new id: the old one stays stale */
    ck_assert_int_eq(ulpt_bank_add(b, &again, p1, "a"), ULPT_OK);
    ck_assert_uint_ne(again, a);
    ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, ULPT_DTYPE_F32), ULPT_ERR_NOT_FOUND);
    ck_assert_int_eq(ulpt_bank_find(b, "a", &found), ULPT_OK);
    ck_assert_uint_eq(found, again);
    /* the others still answer */
    float *want = forward_of(p1);
    req.id = c;
    ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, ULPT_DTYPE_F32), ULPT_OK);
    ck_assert_mem_eq(e, want, 6 * D * sizeof(float));
    /* ids that were never issued */
    ck_assert_int_eq(ulpt_bank_remove(b, 0), ULPT_ERR_NOT_FOUND);
    ck_assert_int_eq(ulpt_bank_remove(b, c + 1000), ULPT_ERR_NOT_FOUND);
    ck_assert_int_eq(ulpt_bank_remove(b, c ^ (1ull << 40)), ULPT_ERR_NOT_FOUND);
    ck_assert_int_eq(ulpt_bank_remove(NULL, c), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_n_tokens(b, c, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_remove(b, c), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_remove(b, again), ULPT_OK);
    ck_assert_uint_eq(ulpt_bank_count(b), 0);
    free(want);
    ulpt_prompt_free(p0);
    ulpt_prompt_free(p1);
    ulpt_bank_free(b);
}

/* The bank's state, for "unchanged" checks: count and the E of every id given. */
static void same_state(ulpt_bank *b, size_t count, const ulpt_bank_id *ids, float *const *want,
                       int k)
{
    ck_assert_uint_eq(ulpt_bank_count(b), count);
    for (int i = 0; i < k; i++) {
        uint32_t n;
        ck_assert_int_eq(ulpt_bank_n_tokens(b, ids[i], &n), ULPT_OK);
        float *e = malloc((size_t)n * ulpt_bank_dim(b) * sizeof *e);
        ulpt_bank_request req = { ids[i], e, ulpt_bank_dim(b) };
        ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, ULPT_DTYPE_F32), ULPT_OK);
        ck_assert_mem_eq(e, want[i], (size_t)n * ulpt_bank_dim(b) * sizeof *e);
        free(e);
    }
}

TEST(add_refuses_other_models_and_bad_prompts_leaving_the_bank_unchanged)
{
    ulpt_bank *b = new_bank(D);
    ulpt_prompt *good = shape(1);
    ulpt_bank_id id, other = 5;
    ck_assert_int_eq(ulpt_bank_add(b, &id, good, "good"), ULPT_OK);
    float *want = forward_of(good);

    ulpt_prompt *p = shape(0);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "model", "llama-3"), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_add(b, &other, p, "x"), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "\"llama-3\""));
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "\"" MODEL "\""));
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "model", NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_add(b, &other, p, "x"), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "none recorded"));
    ulpt_prompt_free(p);

    p = model_prompt(2, 2, D + 1, 1, ULPT_PROJ_XAVIER_UNIFORM, 0, 1, 1);
    ck_assert_int_eq(ulpt_bank_add(b, &other, p, "x"), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "dim 25"));
    ulpt_prompt_free(p);

    p = shape(0);
    ulpt_prompt_params(p)[5 * 2 + D + 3] = NAN;
    ck_assert_int_eq(ulpt_bank_add(b, &other, p, "x"), ULPT_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "shift[3]"));
    ulpt_prompt_params(p)[5 * 2 + D + 3] = 0;
    ck_assert_int_eq(ulpt_bank_add(b, &other, p, "good"), ULPT_ERR_INVALID); /* name taken */
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "already"));
    ck_assert_int_eq(ulpt_bank_add(b, &other, p, ""), ULPT_ERR_INVALID);
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ck_assert_int_eq(ulpt_bank_add(b, &other, p, longname), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_add(NULL, &other, p, "x"), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_add(b, NULL, p, "x"), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_add(b, &other, NULL, "x"), ULPT_ERR_INVALID);
    ck_assert_uint_eq(other, 5); /* never written on failure */
    same_state(b, 1, &id, &want, 1);
    ck_assert_int_eq(ulpt_bank_find(b, "x", &other), ULPT_ERR_NOT_FOUND);
    ulpt_prompt_free(p);
    ulpt_prompt_free(good);
    free(want);
    ulpt_bank_free(b);
}

TEST(materialise_checks_every_request_before_writing)
{
    ulpt_bank *b = new_bank(D);
    ulpt_prompt *p = shape(0);
    ulpt_bank_id id, gone;
    ck_assert_int_eq(ulpt_bank_add(b, &id, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_add(b, &gone, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_remove(b, gone), ULPT_OK);
    float e0[5 * D], e1[5 * D];
    for (int j = 0; j < 5 * D; j++)
        e0[j] = e1[j] = 3.0f;
    ulpt_bank_request req[2] = { { id, e0, D }, { id, e1, D } };
    struct { int k; ulpt_bank_request bad; int dtype, rc; const char *says; } cases[] = {
        { 1, { gone, e1, D }, ULPT_DTYPE_F32, ULPT_ERR_NOT_FOUND, "request 1: id" },
        { 1, { gone, e1, D }, ULPT_DTYPE_F16, ULPT_ERR_NOT_FOUND, "request 1: id" },
        { 1, { id, NULL, D }, ULPT_DTYPE_F32, ULPT_ERR_INVALID, "request 1: dst" },
        { 1, { id, e1, D - 1 }, ULPT_DTYPE_F32, ULPT_ERR_INVALID, "request 1: row stride 23" },
        { 1, { id, e1, (size_t)INT32_MAX + 1 }, ULPT_DTYPE_BF16, ULPT_ERR_INVALID, "row stride" },
        { 1, { id, e1, D }, 3, ULPT_ERR_INVALID, "dtype 3" },
        { 1, { id, e1, D }, -1, ULPT_ERR_INVALID, "dtype -1" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ulpt_bank_request r[2] = { req[0], cases[c].bad };
        ck_assert_int_eq(ulpt_bank_materialise(b, r, 2, cases[c].dtype), cases[c].rc);
        ck_assert_msg(strstr(ulpt_last_error(), cases[c].says), "case %zu: %s", c,
                      ulpt_last_error());
        for (int j = 0; j < 5 * D; j++) /* not even the good request was written */
            ck_assert_float_eq(e0[j], 3.0f);
    }
    ck_assert_int_eq(ulpt_bank_materialise(NULL, req, 2, ULPT_DTYPE_F32), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_materialise(b, NULL, 2, ULPT_DTYPE_F32), ULPT_ERR_INVALID);
    ulpt_prompt_free(p);
    ulpt_bank_free(b);
}

/* Blocks the bank holds after adding three 2-group prompts of these seeds and freeing
 * the prompts: bank, model name, slot table, projection table, three entries, and two
 * blocks (struct, matrix) for each distinct projection kept. */
static long blocks_held(uint64_t s0, uint64_t s1, uint64_t s2)
{
    test_alloc_install(-1);
    ulpt_bank *b = new_bank(D);
    const uint64_t seeds[3] = { s0, s1, s2 };
    for (int i = 0; i < 3; i++) {
        ulpt_prompt *p = model_prompt(4, 2, D, 2, ULPT_PROJ_XAVIER_UNIFORM, 0, seeds[i], 1);
        ulpt_bank_id id;
        ck_assert_int_eq(ulpt_bank_add(b, &id, p, NULL), ULPT_OK);
        ulpt_prompt_free(p);
    }
    long live = test_alloc.live;
    ulpt_bank_free(b);
    ck_assert_int_eq(test_alloc.live, 0);
    test_alloc_remove();
    return live;
}

TEST(prompts_of_one_seed_share_one_projection)
{
    ck_assert_int_eq(blocks_held(42, 42, 42), 4 + 3 + 2 * 2 * 1);
    ck_assert_int_eq(blocks_held(42, 43, 42), 4 + 3 + 2 * 2 * 2);
    ck_assert_int_eq(blocks_held(41, 42, 43), 4 + 3 + 2 * 2 * 3);
}

/* A directory holding a.ulpt (shape 0), b.ulpt (shape 1, stored f16) and a stray file. */
static const char *prompt_dir(const char *name, ulpt_prompt **a, ulpt_prompt **bp)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", bank_dir(name));
    mkdir(dir, 0777);
    char path[600];
    *a = shape(0);
    *bp = shape(1);
    snprintf(path, sizeof path, "%s/a.ulpt", dir);
    ck_assert_int_eq(ulpt_prompt_save(*a, path, NULL), ULPT_OK);
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = ULPT_DTYPE_F16;
    snprintf(path, sizeof path, "%s/b.ulpt", dir);
    ck_assert_int_eq(ulpt_prompt_save(*bp, path, &so), ULPT_OK);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("not a prompt\n", f);
    fclose(f);
    return dir;
}

TEST(load_dir_adds_every_prompt_file_by_name)
{
    ulpt_prompt *a, *bp;
    const char *dir = prompt_dir("ok", &a, &bp);
    ulpt_bank *b = new_bank(D);
    size_t count = 0;
    ck_assert_int_eq(ulpt_bank_load_dir(b, dir, &count), ULPT_OK);
    ck_assert_uint_eq(count, 2);
    ck_assert_uint_eq(ulpt_bank_count(b), 2);
    char path[600];
    const char *names[2] = { "a", "b" };
    for (int i = 0; i < 2; i++) {
        ulpt_bank_id id;
        ck_assert_int_eq(ulpt_bank_find(b, names[i], &id), ULPT_OK);
        snprintf(path, sizeof path, "%s/%s.ulpt", dir, names[i]);
        ulpt_prompt *loaded; /* what the file holds (b's f16-rounded parameters) */
        ck_assert_int_eq(ulpt_prompt_load(&loaded, path), ULPT_OK);
        float *want = forward_of(loaded);
        size_t nd = (size_t)ulpt_prompt_n_tokens(loaded) * D;
        float *e = malloc(nd * sizeof *e);
        ulpt_bank_request req = { id, e, D };
        ck_assert_int_eq(ulpt_bank_materialise(b, &req, 1, ULPT_DTYPE_F32), ULPT_OK);
        ck_assert_mem_eq(e, want, nd * sizeof *e);
        free(e);
        free(want);
        ulpt_prompt_free(loaded);
    }
    /* loading the same files again: the names are taken, nothing is added */
    count = 9;
    ck_assert_int_eq(ulpt_bank_load_dir(b, dir, &count), ULPT_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "a.ulpt: name \"a\" is already"));
    ck_assert_uint_eq(count, 9);
    ck_assert_uint_eq(ulpt_bank_count(b), 2);
    /* an empty directory adds nothing, successfully; count may be NULL */
    char empty[600];
    snprintf(empty, sizeof empty, "%s", bank_dir("empty"));
    mkdir(empty, 0777);
    ck_assert_int_eq(ulpt_bank_load_dir(b, empty, &count), ULPT_OK);
    ck_assert_uint_eq(count, 0);
    ck_assert_int_eq(ulpt_bank_load_dir(b, empty, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_bank_load_dir(NULL, empty, NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_bank_load_dir(b, NULL, NULL), ULPT_ERR_INVALID);
    ulpt_prompt_free(a);
    ulpt_prompt_free(bp);
    ulpt_bank_free(b);
}

/* Every failing load leaves the bank with its one prompt "keep", and names the file. */
static void load_fails(ulpt_bank *b, const char *dir, int rc, const char *says1,
                       const char *says2, ulpt_bank_id keep, float *want)
{
    size_t count = 123;
    ck_assert_int_eq(ulpt_bank_load_dir(b, dir, &count), rc);
    ck_assert_msg(strstr(ulpt_last_error(), says1), "%s", ulpt_last_error());
    ck_assert_msg(strstr(ulpt_last_error(), says2), "%s", ulpt_last_error());
    ck_assert_uint_eq(count, 123);
    same_state(b, 1, &keep, &want, 1);
    ulpt_bank_id id;
    ck_assert_int_eq(ulpt_bank_find(b, "a", &id), ULPT_ERR_NOT_FOUND);
}

TEST(load_dir_refuses_other_models_and_damage_all_or_nothing)
{
    ulpt_bank *b = new_bank(D);
    ulpt_prompt *keep = shape(2), *a, *bp;
    ulpt_bank_id kid;
    ck_assert_int_eq(ulpt_bank_add(b, &kid, keep, "keep"), ULPT_OK);
    float *want = forward_of(keep);
    char path[600];

    /* another model's prompt, sorted after two good files */
    const char *dir = prompt_dir("model", &a, &bp);
    ulpt_prompt *z = shape(3);
    ck_assert_int_eq(ulpt_prompt_set_meta(z, "model", "gpt2"), ULPT_OK);
    snprintf(path, sizeof path, "%s/z.ulpt", dir);
    ck_assert_int_eq(ulpt_prompt_save(z, path, NULL), ULPT_OK);
    load_fails(b, dir, ULPT_ERR_MISMATCH, "z.ulpt was tuned for model \"gpt2\"",
               "not the bank's \"" MODEL "\"", kid, want);
    ulpt_prompt_free(z);
    ulpt_prompt_free(a);
    ulpt_prompt_free(bp);

    /* another dim */
    dir = prompt_dir("dim", &a, &bp);
    z = model_prompt(2, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0, 1, 1);
    snprintf(path, sizeof path, "%s/c.ulpt", dir);
    ck_assert_int_eq(ulpt_prompt_save(z, path, NULL), ULPT_OK);
    load_fails(b, dir, ULPT_ERR_MISMATCH, "c.ulpt has dim 16", "dim 24", kid, want);
    ulpt_prompt_free(z);
    ulpt_prompt_free(a);
    ulpt_prompt_free(bp);

    /* a damaged file */
    dir = prompt_dir("damaged", &a, &bp);
    snprintf(path, sizeof path, "%s/b.ulpt", dir);
    ck_assert_int_eq(truncate(path, 40), 0);
    load_fails(b, dir, ULPT_ERR_CORRUPT, "b.ulpt: ", "ulpt_bank_load_dir", kid, want);
    ulpt_prompt_free(a);
    ulpt_prompt_free(bp);

    /* a directory that is not there, and an unreadable "file" */
    load_fails(b, bank_dir("absent"), ULPT_ERR_IO, "absent", "cannot open directory", kid,
               want);
    dir = prompt_dir("subdir", &a, &bp);
    snprintf(path, sizeof path, "%s/d.ulpt", dir);
    mkdir(path, 0777);
    load_fails(b, dir, ULPT_ERR_IO, "d.ulpt", "ulpt_bank_load_dir", kid, want);
    ulpt_prompt_free(a);
    ulpt_prompt_free(bp);

    ulpt_prompt_free(keep);
    free(want);
    ulpt_bank_free(b);
}

/* Out of memory at every allocation of create, add, load_dir, materialise (f16 with a row
 * on the heap) and remove: each failing call says so and leaves the bank as it was, and
 * nothing leaks. */
TEST(out_of_memory_at_each_allocation_leaves_the_bank_unchanged)
{
    enum { BIG = 9000 };
    ulpt_prompt *a, *bp, *p = shape(4), *big;
    const char *dir = prompt_dir("oom", &a, &bp);
    big = model_prompt(2, 2, BIG, 1, ULPT_PROJ_XAVIER_UNIFORM, 0, 5, 5);
    float *want = forward_of(p);
    static uint16_t h[2 * BIG], hwant[2 * BIG];
    float *bigwant = forward_of(big);
    for (int j = 0; j < 2 * BIG; j++)
        hwant[j] = ulpt__f32_to_f16(bigwant[j]);
    long k;
    for (k = 0;; k++) {
        test_alloc_install(k);
        ulpt_bank *b = NULL, *hb = NULL;
        int rc = ulpt_bank_create(&b, MODEL, D);
        if (rc) {
            ck_assert_int_eq(rc, ULPT_ERR_NOMEM);
            ck_assert_ptr_null(b);
            ck_assert_int_eq(test_alloc.live, 0);
            test_alloc_remove();
            continue;
        }
        ulpt_bank_id id = 0, other = 0;
        int rcs[6] = { 0 };
        rcs[0] = ulpt_bank_add(b, &id, p, "p");
        if (rcs[0] == ULPT_OK) {
            rcs[1] = ulpt_bank_load_dir(b, dir, NULL);
            same_state(b, rcs[1] ? 1 : 3, &id, &want, 1);
            if (rcs[1] == ULPT_OK)
                ck_assert_int_eq(ulpt_bank_find(b, "b", &other), ULPT_OK);
            else
                ck_assert_int_eq(ulpt_bank_find(b, "b", &other), ULPT_ERR_NOT_FOUND);
            rcs[2] = ulpt_bank_add(b, &other, p, "again"); /* grows no table: entry only */
            same_state(b, (rcs[1] ? 1 : 3) + !rcs[2], &id, &want, 1);
            ck_assert_int_eq(ulpt_bank_remove(b, id), ULPT_OK);
        } else {
            ck_assert_uint_eq(ulpt_bank_count(b), 0);
        }
        rcs[3] = ulpt_bank_create(&hb, MODEL, BIG);
        if (rcs[3] == ULPT_OK) {
            ulpt_bank_id bid;
            rcs[4] = ulpt_bank_add(hb, &bid, big, NULL);
            if (rcs[4] == ULPT_OK) {
                memset(h, 0, sizeof h);
                ulpt_bank_request req = { bid, h, BIG };
                rcs[5] = ulpt_bank_materialise(hb, &req, 1, ULPT_DTYPE_F16);
                if (rcs[5] == ULPT_OK)
                    ck_assert_mem_eq(h, hwant, sizeof h);
                else
                    for (int j = 0; j < 2 * BIG; j++)
                        ck_assert_uint_eq(h[j], 0);
            }
        }
        ulpt_bank_free(b);
        ulpt_bank_free(hb);
        ck_assert_int_eq(test_alloc.live, 0);
        test_alloc_remove();
        int all_ok = 1;
        for (int i = 0; i < 6; i++) {
            ck_assert_msg(rcs[i] == ULPT_OK || rcs[i] == ULPT_ERR_NOMEM, "call %d: %d (%s)", i,
                          rcs[i], ulpt_last_error());
            all_ok &= rcs[i] == ULPT_OK;
        }
        if (all_ok)
            break;
    }
    ck_assert_int_gt(k, 20); /* the loop did reach the later calls' allocations */
    free(want);
    free(bigwant);
    ulpt_prompt_free(a);
    ulpt_prompt_free(bp);
    ulpt_prompt_free(p);
    ulpt_prompt_free(big);
}

TEST(removing_the_last_user_of_a_projection_frees_it)
{
    test_alloc_install(-1);
    ulpt_bank *b = new_bank(D);
    ulpt_bank_id id[3];
    const uint64_t seeds[3] = { 42, 43, 42 };
    for (int i = 0; i < 3; i++) {
        ulpt_prompt *p = model_prompt(4, 2, D, 1, ULPT_PROJ_XAVIER_UNIFORM, 0, seeds[i], 1);
        ck_assert_int_eq(ulpt_bank_add(b, &id[i], p, NULL), ULPT_OK);
        ulpt_prompt_free(p);
    }
    long live = test_alloc.live;
    ck_assert_int_eq(ulpt_bank_remove(b, id[1]), ULPT_OK); /* seed 43's only user */
    ck_assert_int_eq(test_alloc.live, live - 1 - 2);
    ck_assert_int_eq(ulpt_bank_remove(b, id[0]), ULPT_OK); /* seed 42 still used */
    ck_assert_int_eq(test_alloc.live, live - 2 - 2);
    ck_assert_int_eq(ulpt_bank_remove(b, id[2]), ULPT_OK);
    ck_assert_int_eq(test_alloc.live, live - 3 - 4);
    ulpt_bank_free(b);
    ck_assert_int_eq(test_alloc.live, 0);
    test_alloc_remove();
}

/* The row conversions the bank writes half precision with (vectorised, F16C or AVX2 where
 * the CPU has them) agree with the scalar ones of prompt files, bit for bit: on a stride
 * through every float bit pattern and on every pattern near the edges (subnormals,
 * rounding to zero, overflow, inf, NaN). */
TEST(row_half_conversions_match_the_scalar_ones)
{
    enum { CHUNK = 4096 };
    static uint32_t u[CHUNK];
    static float x[CHUNK];
    static uint16_t h[CHUNK], bh[CHUNK];
    const uint32_t edges[] = { 0, 0x33000000u, 0x387fc000u, 0x38800000u, 0x477fe000u,
                               0x477ff000u, 0x7f800000u, 0x7f800001u, 0x7fc00000u, 0x3f800000u };
    uint64_t stride = getenv("ULPT_TEST_QUICK") ? 100003 : 4099, next = 0;
    size_t n = 0, checked = 0;
    int edge = 0, near = 0;
    for (;;) {
        /* the stride, then 2048 patterns either side of each edge, each sign */
        uint64_t v;
        if (next <= 0xffffffffu) {
            v = next;
            next += stride;
        } else if (edge < (int)(sizeof edges / sizeof edges[0])) {
            v = (uint64_t)edges[edge] + (uint64_t)(near & 4095) - 2048;
            v = ((v & 0x7fffffffu) | (near & 4096 ? 0x80000000u : 0)) & 0xffffffffu;
            if (++near == 8192)
                near = 0, edge++;
        } else {
            break;
        }
        u[n++] = (uint32_t)v;
        if (n == CHUNK) {
            memcpy(x, u, sizeof x);
            ulpt__f32_to_f16_n(x, h, CHUNK);
            ulpt__f32_to_bf16_n(x, bh, CHUNK);
            /* in pieces of 7, the f16 rows take the portable path (vector paths do 8) */
            static uint16_t h7[CHUNK];
            for (size_t k = 0; k < CHUNK; k += 7)
                ulpt__f32_to_f16_n(x + k, h7 + k, CHUNK - k < 7 ? CHUNK - k : 7);
            for (size_t k = 0; k < CHUNK; k++)
                if (!isnan(x[k]) && h7[k] != h[k])
                    ck_abort_msg("bits %08x: f16 %04x in pieces, %04x whole", u[k], h7[k], h[k]);
            for (size_t k = 0; k < CHUNK; k++) {
                uint16_t hs = ulpt__f32_to_f16(x[k]), bs = ulpt__f32_to_bf16(x[k]);
                if (isnan(x[k])) { /* a NaN of the same sign; the payload may differ */
                    int ok = (h[k] & 0x7c00) == 0x7c00 && (h[k] & 0x3ff) && (h[k] ^ hs) < 0x8000 &&
                             (bh[k] & 0x7f80) == 0x7f80 && (bh[k] & 0x7f) && (bh[k] ^ bs) < 0x8000;
                    if (!ok)
                        ck_abort_msg("NaN bits %08x: f16 %04x, bf16 %04x", u[k], h[k], bh[k]);
                } else if (h[k] != hs || bh[k] != bs) {
                    ck_abort_msg("bits %08x: f16 %04x/%04x, bf16 %04x/%04x", u[k], h[k], hs,
                                 bh[k], bs);
                }
            }
            checked += n;
            n = 0;
        }
    }
    ck_assert_uint_gt(checked, 80000);
}
