/* test_projection.c -- the generator and the projection kinds (docs/PROJECTION.md). */
#include "test.h"

#include "internal.h"

static const struct {
    uint32_t ctr[4], key[2], out[4];
} philox_kat[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

TEST_LOOP(philox_matches_known_answers, 0, 3)
{
    uint32_t out[4];
    ulpt__philox4x32(philox_kat[_i].ctr, philox_kat[_i].key, out);
    for (int k = 0; k < 4; k++)
        ck_assert_uint_eq(out[k], philox_kat[_i].out[k]);
}

/* docs/PROJECTION.md section 5. */
static const struct {
    int kind;
    uint64_t seed;
    uint32_t rank, dim;
    float first[8];
} proj_kat[] = {
    {ULPT_PROJ_XAVIER_UNIFORM,
     0,
     2,
     8,
     {0.103211403f, -0.106706351f, -0.0683019534f, 0.263060868f, -0.617932498f, 0.608003616f,
      -0.760690331f, -0.348780572f}},
    {ULPT_PROJ_XAVIER_UNIFORM,
     42,
     2,
     4096,
     {-0.0300244577f, -0.0139829908f, 0.0235981196f, -0.0144388722f, 0.0207396615f, 0.00806771405f,
      -0.00985047501f, -0.0246411879f}},
    {ULPT_PROJ_KAIMING_UNIFORM,
     42,
     2,
     4,
     {-0.35200423f, 0.304275364f, 0.494487047f, -0.365611106f, -0.382691354f, -0.00233493536f,
      0.0649061427f, 0.413901418f}},
    {ULPT_PROJ_RADEMACHER,
     0x0123456789abcdefu,
     4,
     4,
     {-0.5f, 0.5f, -0.5f, -0.5f, -0.5f, 0.5f, 0.5f, 0.5f}},
    {ULPT_PROJ_GAUSSIAN,
     7,
     2,
     4,
     {0.619449079f, 0.692641258f, 0.00787196495f, -0.459549218f, -1.32486641f, 0.325896889f,
      -0.177850485f, -1.08561027f}},
    {ULPT_PROJ_GAUSSIAN,
     0xffffffffffffffffu,
     3,
     5,
     {0.204641238f, 0.0160179231f, -0.179688737f, 0.24164705f, -0.00780931162f, 0.0397978052f,
      0.376344085f, 0.74544847f}},
};

/* The batched generator gives the words of the one-block function, in stream order,
 * through both copies (AVX2 and baseline), for any start and length, including runs
 * whose low counter word wraps into the high one. */
TEST_LOOP(philox_blocks_match_the_one_block_function, 0, 2)
{
    static const uint64_t starts[] = {0, 1, 5, 1000, 0xfffffff9u, 0xfffffffcu, 0x1fffffffdull};
    uint32_t got[4 * 40], want[4];
    ulpt__kernel_force = _i ? ULPT__KERNEL_FUSED_PORTABLE : ULPT__KERNEL_AUTO;
    for (size_t s = 0; s < sizeof starts / sizeof starts[0]; s++)
        for (size_t n = 0; n <= 40; n += (n < 18 ? 1 : 11)) {
            const uint64_t seed = 0x0123456789abcdefull + s;
            ulpt__philox4x32_blocks(got, starts[s], n, 7, 4096, seed);
            const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
            for (size_t b = 0; b < n; b++) {
                const uint64_t q = starts[s] + b;
                const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), 7, 4096};
                ulpt__philox4x32(ctr, key, want);
                ck_assert_msg(!memcmp(got + 4 * b, want, sizeof want),
                              "block %llu of a run of %zu from %llu differs",
                              (unsigned long long)q, n, (unsigned long long)starts[s]);
            }
        }
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}

TEST_LOOP(projection_matches_known_answers, 0, (int)(sizeof proj_kat / sizeof proj_kat[0]))
{
    ulpt_projection *p;
    ck_assert_int_eq(ulpt_projection_create(&p, proj_kat[_i].seed, proj_kat[_i].rank,
                                            proj_kat[_i].dim, proj_kat[_i].kind),
                     ULPT_OK);
    const float *x = ulpt_projection_data(p);
    for (int k = 0; k < 8; k++) {
        if (proj_kat[_i].kind == ULPT_PROJ_GAUSSIAN) /* 2 ulp across C libraries */
            ck_assert_float_eq_tol(x[k], proj_kat[_i].first[k],
                                   2 * fabsf(proj_kat[_i].first[k]) * 0x1p-23f);
        else
            ck_assert_float_eq(x[k], proj_kat[_i].first[k]);
    }
    ck_assert_uint_eq(ulpt_projection_seed(p), proj_kat[_i].seed);
    ck_assert_uint_eq(ulpt_projection_rank(p), proj_kat[_i].rank);
    ck_assert_uint_eq(ulpt_projection_dim(p), proj_kat[_i].dim);
    ck_assert_int_eq(ulpt_projection_kind(p), proj_kat[_i].kind);
    ulpt_projection_free(p);
}

TEST_LOOP(initial_z_matches_known_answers, 0, 3)
{
    static const float z[8] = {-0.214431375f, -0.0704231113f, 0.811836123f, 0.204263523f,
                               0.250748426f,  -0.321006864f,  0.764864564f, 0.274602562f};
    ulpt_prompt_options o = ULPT_PROMPT_OPTIONS_INIT;
    o.n_tokens = 4 + (uint32_t)_i * 7; /* a longer prompt starts with the same rows */
    o.dim = 8 + (uint32_t)_i;
    o.init_seed = 1;
    o.init_std = 0.5f;
    ulpt_prompt *p;
    ck_assert_int_eq(ulpt_prompt_create(&p, &o), ULPT_OK);
    for (int k = 0; k < 8; k++)
        ck_assert_float_eq_tol(ulpt_prompt_params(p)[k], z[k], 2 * fabsf(z[k]) * 0x1p-23f);
    ulpt_prompt_free(p);
}

TEST(group_seeds_follow_the_spec)
{
    ulpt_prompt *p = test_prompt(6, 2, 8, 3, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ck_assert_uint_eq(ulpt_projection_seed(ulpt_prompt_projection(p, 0)), 1234);
    ck_assert_uint_eq(ulpt_projection_seed(ulpt_prompt_projection(p, 1)),
                      1234 + 0x9E3779B97F4A7C15u);
    ck_assert_uint_eq(ulpt_projection_seed(ulpt_prompt_projection(p, 2)),
                      1234 + 2 * 0x9E3779B97F4A7C15u);
    ck_assert_ptr_null(ulpt_prompt_projection(p, 3));
    ulpt_prompt_free(p);
    /* the spec's own example: seed 5, group 1 */
    ck_assert_uint_eq(ulpt__group_seed(5, 1), 11400714819323198490u);
}

TEST_LOOP(same_inputs_give_identical_bytes, ULPT_PROJ_XAVIER_UNIFORM, ULPT_PROJ_RADEMACHER + 1)
{
    int kind = _i;
    ulpt_projection *a, *b, *c;
    ck_assert_int_eq(ulpt_projection_create(&a, 77, 3, 1001, kind), ULPT_OK);
    ck_assert_int_eq(ulpt_projection_create(&b, 77, 3, 1001, kind), ULPT_OK);
    ck_assert_int_eq(ulpt_projection_create(&c, 78, 3, 1001, kind), ULPT_OK);
    ck_assert_mem_eq(ulpt_projection_data(a), ulpt_projection_data(b), 3 * 1001 * sizeof(float));
    ck_assert_int_ne(
        memcmp(ulpt_projection_data(a), ulpt_projection_data(c), 3 * 1001 * sizeof(float)), 0);
    ulpt_projection_free(a);
    ulpt_projection_free(b);
    ulpt_projection_free(c);
}

TEST_LOOP(each_kind_has_its_bounds_mean_and_variance, ULPT_PROJ_XAVIER_UNIFORM,
          ULPT_PROJ_RADEMACHER + 1)
{
    const int kind = _i;
    const uint32_t r = 4, d = 16384;
    ulpt_projection *p;
    ck_assert_int_eq(ulpt_projection_create(&p, 2024, r, d, kind), ULPT_OK);
    const float *x = ulpt_projection_data(p);
    const size_t count = (size_t)r * d;
    double bound, var;
    switch (kind) {
    case ULPT_PROJ_XAVIER_UNIFORM:
        bound = sqrt(6.0 / (r + d));
        var = bound * bound / 3;
        break;
    case ULPT_PROJ_KAIMING_UNIFORM:
        bound = 1 / sqrt(r);
        var = bound * bound / 3;
        break;
    case ULPT_PROJ_RADEMACHER:
        bound = 1 / sqrt(r);
        var = 1.0 / r;
        break;
    default:
        bound = INFINITY;
        var = 1.0 / r;
        break; /* Gaussian */
    }
    double sum = 0, sq = 0;
    for (size_t i = 0; i < count; i++) {
        ck_assert(fabs(x[i]) <= bound * (1 + 1e-7));
        if (kind == ULPT_PROJ_RADEMACHER)
            ck_assert(fabs(fabs(x[i]) - bound) < 1e-7);
        sum += x[i];
        sq += (double)x[i] * x[i];
    }
    double mean = sum / count, variance = sq / count - mean * mean;
    ck_assert(fabs(mean) < 5 * sqrt(var / count)); /* 5 sigma */
    ck_assert(fabs(variance / var - 1) < 0.03);    /* ~5 sigma for 65536 draws */
    ulpt_projection_free(p);
}

TEST(identity_projection_stores_nothing)
{
    ulpt_projection *p;
    ck_assert_int_eq(ulpt_projection_create(&p, 1, 16, 16, ULPT_PROJ_IDENTITY), ULPT_OK);
    ck_assert_ptr_null(ulpt_projection_data(p));
    ulpt_projection_free(p);
    ck_assert_int_eq(ulpt_projection_create(&p, 1, 2, 16, ULPT_PROJ_IDENTITY), ULPT_ERR_INVALID);
}

TEST(projection_outlives_its_creator_inside_a_prompt)
{
    /* the prompt's projection stays valid however the caller's handles come and go */
    ulpt_prompt *p = test_prompt(4, 2, 32, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    const ulpt_projection *pr = ulpt_prompt_projection(p, 0);
    ulpt_projection *fresh;
    ck_assert_int_eq(ulpt_projection_create(&fresh, 1234, 2, 32, ULPT_PROJ_XAVIER_UNIFORM),
                     ULPT_OK);
    ck_assert_mem_eq(ulpt_projection_data(pr), ulpt_projection_data(fresh), 64 * sizeof(float));
    ulpt_projection_free(fresh);
    ulpt_prompt_free(p);
}
