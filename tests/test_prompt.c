/* test_prompt.c -- forward against a double-precision reference, backward against
 * finite differences, each through every kernel path; every path against a double-precision
 * reference over many shapes; the identity projection as vanilla prompt tuning. */
#include "test.h"

#include <pthread.h>

#include "internal.h" /* ulpt__kernel_force, ulpt__prompt_backward */

/* The kernel paths each numeric test runs through (internal.h). */
static const int paths[] = {ULPT__KERNEL_AUTO, ULPT__KERNEL_GEMM, ULPT__KERNEL_FUSED,
                            ULPT__KERNEL_FUSED_PORTABLE};
#define N_PATHS ((int)(sizeof paths / sizeof paths[0]))

TEST_TIMEOUT(60); /* seconds per test in this file */

/* The configurations every numeric test runs over: groups, flags and kinds. */
static const struct {
    uint32_t n, r, d, groups;
    int kind;
    unsigned flags;
} cfg[] = {
    {6, 2, 10, 1, ULPT_PROJ_XAVIER_UNIFORM, 0},
    {6, 3, 10, 2, ULPT_PROJ_XAVIER_UNIFORM, 0},
    {6, 2, 9, 3, ULPT_PROJ_GAUSSIAN, ULPT_NO_SCALE},
    {4, 2, 7, 2, ULPT_PROJ_KAIMING_UNIFORM, ULPT_NO_SHIFT},
    {4, 1, 7, 1, ULPT_PROJ_RADEMACHER, ULPT_NO_SCALE | ULPT_NO_SHIFT},
    {3, 5, 5, 1, ULPT_PROJ_IDENTITY, 0},
    {3, 5, 5, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT},
    {100, 2, 4096, 4, ULPT_PROJ_XAVIER_UNIFORM, 0}, /* the headline shape, 4 groups */
};
#define N_CFG ((int)(sizeof cfg / sizeof cfg[0]))

static ulpt_prompt *cfg_prompt(int i)
{
    ulpt_prompt *p =
        test_prompt(cfg[i].n, cfg[i].r, cfg[i].d, cfg[i].groups, cfg[i].kind, cfg[i].flags);
    test_perturb(p, 5 + (uint64_t)i);
    return p;
}

static double *params_as_double(ulpt_prompt *p)
{
    size_t np = ulpt_prompt_num_params(p);
    double *x = malloc(np * sizeof *x);
    for (size_t i = 0; i < np; i++)
        x[i] = ulpt_prompt_params(p)[i];
    return x;
}

TEST_LOOP(forward_matches_double_precision_reference, 0, N_CFG * N_PATHS)
{
    ulpt__kernel_force = paths[_i / N_CFG];
    _i %= N_CFG;
    ulpt_prompt *p = cfg_prompt(_i);
    const size_t n = cfg[_i].n, d = cfg[_i].d, ld = d + 3;
    float *e = malloc(n * ld * sizeof *e);
    for (size_t k = 0; k < n * ld; k++)
        e[k] = 12345.0f; /* padding sentinel */
    double *ref = malloc(n * d * sizeof *ref), *x = params_as_double(p);
    test_forward_ref(p, x, ref);
    ck_assert_int_eq(ulpt_prompt_forward(p, e, ld), ULPT_OK);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < d; j++)
            ck_assert_double_eq_tol(e[i * ld + j], ref[i * d + j],
                                    1e-5 * (1 + fabs(ref[i * d + j])));
        for (size_t j = d; j < ld; j++)
            ck_assert_float_eq(e[i * ld + j], 12345.0f); /* columns past dim untouched */
    }
    free(e), free(ref), free(x);
    ulpt_prompt_free(p);
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}

/* L = sum(W (.) E) + 1/2 sum(E^2), so G = W + E: nonlinear in the parameters. */
static double loss_ref(ulpt_prompt *p, const double *x, const double *w)
{
    size_t nd = (size_t)ulpt_prompt_n_tokens(p) * ulpt_prompt_dim(p);
    double *e = malloc(nd * sizeof *e), l = 0;
    test_forward_ref(p, x, e);
    for (size_t k = 0; k < nd; k++)
        l += w[k] * e[k] + 0.5 * e[k] * e[k];
    free(e);
    return l;
}

TEST_LOOP(backward_matches_finite_differences, 0, N_CFG * N_PATHS)
{
    ulpt__kernel_force = paths[_i / N_CFG];
    _i %= N_CFG;
    ulpt_prompt *p = cfg_prompt(_i);
    const size_t n = cfg[_i].n, d = cfg[_i].d, np = ulpt_prompt_num_params(p);
    uint64_t st = 42;
    double *w = malloc(n * d * sizeof *w), *e = malloc(n * d * sizeof *e), *x = params_as_double(p);
    float *g = malloc(n * d * sizeof *g);
    for (size_t k = 0; k < n * d; k++)
        w[k] = test_uniform(&st);
    test_forward_ref(p, x, e);
    for (size_t k = 0; k < n * d; k++)
        g[k] = (float)(w[k] + e[k]);
    ulpt_prompt_zero_grad(p);
    ck_assert_int_eq(ulpt_prompt_backward(p, g, d), ULPT_OK);
    const float *grad = ulpt_prompt_grads(p);
    const size_t stride = np <= 400 ? 1 : np / 97; /* the headline shape: a sample */
    for (size_t i = 0; i < np; i += stride) {
        const double h = 1e-4, keep = x[i];
        x[i] = keep + h;
        double lp = loss_ref(p, x, w);
        x[i] = keep - h;
        double lm = loss_ref(p, x, w);
        x[i] = keep;
        double fd = (lp - lm) / (2 * h);
        ck_assert_msg(fabs(grad[i] - fd) <= 1e-4 * (1 + fabs(fd)),
                      "param %zu: backward %.8g, finite difference %.8g", i, grad[i], fd);
    }
    free(w), free(e), free(x), free(g);
    ulpt_prompt_free(p);
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}

TEST_LOOP(backward_adds_to_the_gradients, 0, N_CFG * N_PATHS)
{
    ulpt__kernel_force = paths[_i / N_CFG];
    _i %= N_CFG;
    ulpt_prompt *p = cfg_prompt(_i);
    const size_t n = cfg[_i].n, d = cfg[_i].d, np = ulpt_prompt_num_params(p), ld = d + 1;
    uint64_t st = 7;
    float *g = malloc(n * ld * sizeof *g), *once = malloc(np * sizeof *once);
    for (size_t k = 0; k < n * ld; k++)
        g[k] = (float)test_uniform(&st);
    ulpt_prompt_zero_grad(p);
    ulpt_prompt_backward(p, g, ld);
    memcpy(once, ulpt_prompt_grads(p), np * sizeof *once);
    ulpt_prompt_backward(p, g, ld);
    for (size_t i = 0; i < np; i++)
        ck_assert_float_eq_tol(ulpt_prompt_grads(p)[i], 2 * once[i], 1e-6 * (1 + fabsf(once[i])));
    ulpt_prompt_zero_grad(p);
    for (size_t i = 0; i < np; i++)
        ck_assert_float_eq(ulpt_prompt_grads(p)[i], 0.0f);
    free(g), free(once);
    ulpt_prompt_free(p);
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}

TEST(new_prompt_has_unit_scale_zero_shift_and_zero_grads)
{
    ulpt_prompt *p = test_prompt(10, 2, 64, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    const float *x = ulpt_prompt_params(p);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), 10 * 2 + 2 * 64);
    for (int j = 0; j < 64; j++) {
        ck_assert_float_eq(x[20 + j], 1.0f);
        ck_assert_float_eq(x[20 + 64 + j], 0.0f);
    }
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        ck_assert_float_eq(ulpt_prompt_grads(p)[i], 0.0f);
    ulpt_prompt_free(p);
}

TEST_LOOP(flags_remove_their_vectors_from_the_layout, 0, 4)
{
    static const unsigned flags[] = {0, ULPT_NO_SCALE, ULPT_NO_SHIFT,
                                     ULPT_NO_SCALE | ULPT_NO_SHIFT};
    static const size_t expect[] = {8 * 2 + 2 * 32, 8 * 2 + 32, 8 * 2 + 32, 8 * 2};
    ulpt_prompt *p = test_prompt(8, 2, 32, 2, ULPT_PROJ_XAVIER_UNIFORM, flags[_i]);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), expect[_i]);
    ck_assert_uint_eq(ulpt_prompt_flags(p), flags[_i]);
    ck_assert_uint_eq(ulpt_prompt_n_tokens(p), 8);
    ck_assert_uint_eq(ulpt_prompt_rank(p), 2);
    ck_assert_uint_eq(ulpt_prompt_dim(p), 32);
    ck_assert_uint_eq(ulpt_prompt_n_groups(p), 2);
    ulpt_prompt_free(p);
}

TEST(headline_shape_has_two_percent_of_vanilla_parameters)
{
    ulpt_prompt *p = test_prompt(100, 2, 4096, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), 8392);
    ulpt_prompt_free(p);
    p = test_prompt(100, 4096, 4096, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT);
    ck_assert_uint_eq(ulpt_prompt_num_params(p), 409600);
    ulpt_prompt_free(p);
}

/* Vanilla prompt tuning trains E directly: E = Z, dL/dZ = G, SGD moves E by -lr*G. */
TEST(identity_kind_is_vanilla_prompt_tuning)
{
    const uint32_t n = 5, d = 12;
    ulpt_prompt *p = test_prompt(n, d, d, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT);
    float e[5 * 12], g[5 * 12], before[5 * 12];
    ck_assert_int_eq(ulpt_prompt_forward(p, e, d), ULPT_OK);
    ck_assert_mem_eq(e, ulpt_prompt_params(p), sizeof e);
    memcpy(before, e, sizeof e);
    uint64_t st = 3;
    for (size_t k = 0; k < n * d; k++)
        g[k] = (float)test_uniform(&st);
    ulpt_prompt_zero_grad(p);
    ulpt_prompt_backward(p, g, d);
    ck_assert_mem_eq(ulpt_prompt_grads(p), g, sizeof g);

    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.kind = ULPT_OPT_SGD;
    oo.lr = 0.5;
    oo.weight_decay = 0;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    ulpt_prompt_forward(p, e, d);
    for (size_t k = 0; k < n * d; k++)
        ck_assert_float_eq(e[k], before[k] - 0.5f * g[k]);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* ---- the fused kernels against the GEMM path ------------------------------------- */

/* A random shape: every rank the fused kernels take and a few past them (ranks 1 and 2
 * for half the dims past 1000, where backward's four-row loop and long chunks run), dims
 * around the vector width and the chunk widths (odd ones included), 1..4 groups, every
 * flag combination, rows padded (ld > dim) or not, and E and G starting anywhere in a
 * 32-byte block (off floats past it). */
typedef struct {
    uint32_t n, r, d, groups;
    int kind;
    unsigned flags;
    size_t ld, off;
} shape;

static shape random_shape(uint64_t *st)
{
    static const uint32_t dims[] = {1,   2,   3,   7,   15,  16,   17,   31,   33,   100,
                                    127, 255, 257, 511, 513, 768,  769,  1001, 1023, 1025,
                                    2048, 4095, 4096, 4097, 5000};
    static const int kinds[] = {ULPT_PROJ_XAVIER_UNIFORM, ULPT_PROJ_KAIMING_UNIFORM,
                                ULPT_PROJ_RADEMACHER, ULPT_PROJ_GAUSSIAN};
    shape s;
    const double u = 0.5 * (test_uniform(st) + 1);
    s.d = dims[(size_t)(u * (sizeof dims / sizeof dims[0]))];
    uint32_t r = 1 + (uint32_t)((0.5 * (test_uniform(st) + 1)) * 18); /* 1..18 */
    s.r = r < s.d ? r : s.d;
    if (s.d > 1000 && test_uniform(st) > 0)
        s.r = test_uniform(st) > 0 ? 2 : 1;
    s.groups = 1 + (uint32_t)((0.5 * (test_uniform(st) + 1)) * 4);
    s.n = s.groups * (1 + (uint32_t)((0.5 * (test_uniform(st) + 1)) * (s.d > 1000 ? 8 : 25)));
    s.kind = kinds[(size_t)((0.5 * (test_uniform(st) + 1)) * 4) & 3];
    s.flags = (unsigned)((0.5 * (test_uniform(st) + 1)) * 4) & 3;
    const int padded = test_uniform(st) > 0;
    s.ld = s.d + (padded ? 1 + (size_t)(test_uniform(st) * 2 + 2) : 0); /* 0 or 1..4 */
    s.off = (size_t)((0.5 * (test_uniform(st) + 1)) * 8) & 7;
    return s;
}

/* Forward and backward of one path: E into e (n x ld), the gradients of G into grads. */
static void run_path(ulpt_prompt *p, int path, const float *g, size_t ld, float *e, float *grads)
{
    ulpt__kernel_force = path;
    ck_assert_int_eq(ulpt_prompt_forward(p, e, ld), ULPT_OK);
    ulpt_prompt_zero_grad(p);
    ck_assert_int_eq(ulpt__prompt_backward("test", p, g, ld), ULPT_OK);
    memcpy(grads, ulpt_prompt_grads(p), ulpt_prompt_num_params(p) * sizeof *grads);
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}

/* Each test case draws 40 shapes.  Every path -- GEMM, the fused AVX2 + FMA copy (where
 * the CPU has it) and the fused baseline copy -- is held to a double-precision
 * re-implementation, to float round-off measured against the sum of the magnitudes of
 * the terms: the copies differ in the last bits (FMA rounds once, a multiply and an add
 * twice), so none of them is the reference for another. */
TEST_LOOP(fused_and_gemm_paths_agree_over_many_shapes, 0, 8)
{
    uint64_t st = 1000 + (uint64_t)_i;
    for (int t = 0; t < test_reps(40); t++) {
        shape sh = random_shape(&st);
        ulpt_prompt *p = test_prompt(sh.n, sh.r, sh.d, sh.groups, sh.kind, sh.flags);
        test_perturb(p, st);
        const size_t n = sh.n, d = sh.d, r = sh.r, ld = sh.ld, np = ulpt_prompt_num_params(p);
        const size_t ng = n / sh.groups;
        float *gbuf = malloc((n * ld + 8) * sizeof *gbuf), *g = gbuf + sh.off;
        for (size_t k = 0; k < n * ld; k++)
            g[k] = (float)test_uniform(&st);
        float *ebuf[3], *e[3], *gr[3];
        static const char *names[3] = {"GEMM", "fused", "fused baseline"};
        const int which[3] = {ULPT__KERNEL_GEMM, ULPT__KERNEL_FUSED, ULPT__KERNEL_FUSED_PORTABLE};
        for (int k = 0; k < 3; k++) {
            ebuf[k] = malloc((n * ld + 8) * sizeof *ebuf[k]);
            e[k] = ebuf[k] + sh.off;
            for (size_t q = 0; q < n * ld; q++)
                e[k][q] = -7.0f; /* padding sentinel */
            gr[k] = malloc(np * sizeof *gr[k]);
            run_path(p, which[k], g, ld, e[k], gr[k]);
        }

        /* the reference in double, and the magnitudes: |E| <= sum_k |z P s| + |b|;
         * gradients from |G| and the same */
        const float *x = ulpt_prompt_params(p), *s = NULL, *b = NULL;
        if (!(sh.flags & ULPT_NO_SCALE))
            s = x + n * r;
        if (!(sh.flags & ULPT_NO_SHIFT))
            b = x + n * r + (s ? d : 0);
        double *mag_s = calloc(d, sizeof(double)), *mag_b = calloc(d, sizeof(double));
        double *ref_s = calloc(d, sizeof(double)), *ref_b = calloc(d, sizeof(double));
        for (size_t i = 0; i < n; i++) {
            const float *P = ulpt_projection_data(ulpt_prompt_projection(p, (uint32_t)(i / ng)));
            double mag_z[32] = {0}, ref_z[32] = {0};
            for (size_t j = 0; j < d; j++) {
                const double sj = s ? s[j] : 1, gij = g[i * ld + j];
                double u = 0, y = 0; /* |z P| and z P */
                for (size_t k = 0; k < r; k++) {
                    const double zp = (double)x[i * r + k] * P[k * d + j];
                    u += fabs(zp), y += zp;
                    mag_z[k] += fabs(gij * P[k * d + j] * sj);
                    ref_z[k] += gij * P[k * d + j] * sj;
                }
                const double em = u * fabs(sj) + (b ? fabs(b[j]) : 0), ref = y * sj + (b ? b[j] : 0);
                mag_s[j] += fabs(gij) * u, ref_s[j] += gij * y;
                mag_b[j] += fabs(gij), ref_b[j] += gij;
                for (int k = 0; k < 3; k++)
                    ck_assert_msg(fabs(e[k][i * ld + j] - ref) <= 4e-6 * em + 1e-30,
                                  "n %u r %u d %u groups %u flags %u ld %zu: E[%zu][%zu] %.9g "
                                  "(%s) vs %.9g (double)", sh.n, sh.r, sh.d, sh.groups,
                                  sh.flags, ld, i, j, e[k][i * ld + j], names[k], ref);
            }
            for (size_t j = d; j < ld; j++)
                for (int k = 0; k < 3; k++)
                    ck_assert_float_eq(e[k][i * ld + j], -7.0f);
            for (size_t q = 0; q < r; q++)
                for (int k = 0; k < 3; k++)
                    ck_assert_msg(fabs(gr[k][i * r + q] - ref_z[q]) <= 4e-6 * mag_z[q] + 1e-30,
                                  "n %u r %u d %u groups %u flags %u: dZ[%zu][%zu] %.9g (%s) vs "
                                  "%.9g (double)", sh.n, sh.r, sh.d, sh.groups, sh.flags, i, q,
                                  gr[k][i * r + q], names[k], ref_z[q]);
        }
        for (size_t j = 0; j < d; j++)
            for (int k = 0; k < 3; k++) {
                if (s)
                    ck_assert_msg(fabs(gr[k][n * r + j] - ref_s[j]) <= 4e-6 * mag_s[j] + 1e-30,
                                  "n %u r %u d %u: dscale[%zu] %.9g (%s) vs %.9g (double)", sh.n,
                                  sh.r, sh.d, j, gr[k][n * r + j], names[k], ref_s[j]);
                if (b) {
                    size_t o = n * r + (s ? d : 0) + j;
                    ck_assert_msg(fabs(gr[k][o] - ref_b[j]) <= 4e-6 * mag_b[j] + 1e-30,
                                  "n %u r %u d %u: dshift[%zu] %.9g (%s) vs %.9g (double)", sh.n,
                                  sh.r, sh.d, j, gr[k][o], names[k], ref_b[j]);
                }
            }
        free(mag_s), free(mag_b), free(ref_s), free(ref_b), free(gbuf);
        for (int k = 0; k < 3; k++)
            free(ebuf[k]), free(gr[k]);
        ulpt_prompt_free(p);
    }
}

/* The fused kernels give the same bits wherever the host's rows sit in memory: G and E
 * copied to each of the eight float offsets of a 32-byte block (and padded or not) give
 * identical gradients and embeddings, so a resumed run repeats an uninterrupted one. */
TEST_LOOP(fused_results_do_not_depend_on_alignment, 0, 2)
{
    static const struct {
        uint32_t n, r, d, groups;
    } shapes[] = {{9, 2, 4096, 1}, {7, 1, 5000, 1}, {10, 2, 768, 2}, {9, 2, 8200, 1},
                  {6, 3, 1001, 1}, {5, 8, 600, 1},  {8, 2, 100, 2}};
    ulpt__kernel_force = _i ? ULPT__KERNEL_FUSED_PORTABLE : ULPT__KERNEL_FUSED;
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        ulpt_prompt *p = test_prompt(shapes[c].n, shapes[c].r, shapes[c].d, shapes[c].groups,
                                     ULPT_PROJ_XAVIER_UNIFORM, 0);
        test_perturb(p, 3 + c);
        const size_t n = shapes[c].n, d = shapes[c].d, np = ulpt_prompt_num_params(p);
        float *want = malloc(np * sizeof *want), *want_e = malloc(n * d * sizeof *want_e);
        float *src = malloc(n * d * sizeof *src);
        uint64_t st = 17 + c;
        for (size_t k = 0; k < n * d; k++)
            src[k] = (float)test_uniform(&st);
        for (size_t pad = 0; pad < 2; pad++) {
            const size_t ld = d + pad;
            float *gbuf = malloc((n * ld + 8) * sizeof *gbuf);
            float *ebuf = malloc((n * ld + 8) * sizeof *ebuf);
            for (size_t off = 0; off < 8; off++) {
                float *g = gbuf + off, *e = ebuf + off;
                for (size_t i = 0; i < n; i++) {
                    memcpy(g + i * ld, src + i * d, d * sizeof *g);
                    if (pad)
                        g[i * ld + d] = NAN; /* never read */
                }
                ck_assert_int_eq(ulpt_prompt_forward(p, e, ld), ULPT_OK);
                ulpt_prompt_zero_grad(p);
                ck_assert_int_eq(ulpt__prompt_backward("test", p, g, ld), ULPT_OK);
                if (pad == 0 && off == 0) {
                    memcpy(want, ulpt_prompt_grads(p), np * sizeof *want);
                    memcpy(want_e, e, n * d * sizeof *want_e);
                    continue;
                }
                ck_assert_msg(!memcmp(want, ulpt_prompt_grads(p), np * sizeof *want),
                              "n %zu r %u d %zu ld %zu: gradients differ at offset %zu", n,
                              shapes[c].r, d, ld, off);
                for (size_t i = 0; i < n; i++)
                    ck_assert_msg(!memcmp(want_e + i * d, e + i * ld, d * sizeof *e),
                                  "n %zu d %zu ld %zu: row %zu of E differs at offset %zu", n, d,
                                  ld, i, off);
            }
            free(gbuf), free(ebuf);
        }
        free(want), free(want_e), free(src);
        ulpt_prompt_free(p);
    }
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}

/* At ranks 1 and 2 forward takes long stretches of each row with its chunk data in the
 * prompt's scratch, which one forward at a time may hold.  While another holds it, a
 * forward takes short stretches from the stack, to the same bits: E at an odd offset and
 * padded rows too, over dims that end in one chunk, several, or a part of one. */
TEST_LOOP(forward_without_the_scratch_gives_the_same_bits, 0, 2)
{
    static const struct {
        uint32_t n, r, d, groups;
    } shapes[] = {{9, 2, 4096, 1}, {7, 1, 5000, 1}, {10, 2, 768, 2}, {5, 2, 8200, 1},
                  {6, 2, 513, 3},  {4, 1, 4097, 2}};
    ulpt__kernel_force = _i ? ULPT__KERNEL_FUSED_PORTABLE : ULPT__KERNEL_FUSED;
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        ulpt_prompt *p = test_prompt(shapes[c].n, shapes[c].r, shapes[c].d, shapes[c].groups,
                                     ULPT_PROJ_XAVIER_UNIFORM, 0);
        test_perturb(p, 5 + c);
        const size_t n = shapes[c].n, d = shapes[c].d, ld = d + c % 2, off = c % 3;
        /* one buffer for both, so that only the scratch differs between them */
        float *buf = calloc(n * ld + 8, sizeof *buf), *e = buf + off;
        float *want = malloc(n * ld * sizeof *want);
        ck_assert_int_eq(ulpt_prompt_forward(p, e, ld), ULPT_OK);
        ck_assert_uint_eq(atomic_load(&p->lock.word), 0); /* given back, counted out */
        memcpy(want, e, n * ld * sizeof *want);
        memset(buf, 0, (n * ld + 8) * sizeof *buf);
        /* as if another forward were running and held the scratch */
        atomic_store(&p->lock.word, 1 | ULPT__LOCK_SCRATCH);
        ck_assert_int_eq(ulpt_prompt_forward(p, e, ld), ULPT_OK);
        ck_assert_uint_eq(atomic_load(&p->lock.word), 1 | ULPT__LOCK_SCRATCH); /* not its */
        atomic_store(&p->lock.word, 0);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(!memcmp(want + i * ld, e + i * ld, d * sizeof *e),
                          "n %zu r %u d %zu: row %zu of E differs without the scratch", n,
                          shapes[c].r, d, i);
        free(want), free(buf);
        ulpt_prompt_free(p);
    }
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}

/* Forwards on one prompt from several threads at once, the scratch going to one at a
 * time, all give the single-threaded E. */
enum { FWD_THREADS = 4, FWD_ROUNDS = 40 };
typedef struct {
    const ulpt_prompt *p;
    const float *want;
    size_t nd, d;
    int mismatches;
} forward_job;

static void *forward_many(void *arg)
{
    forward_job *job = arg;
    float *e = malloc(job->nd * sizeof *e);
    for (int t = 0; t < FWD_ROUNDS; t++)
        if (ulpt_prompt_forward(job->p, e, job->d) != ULPT_OK ||
            memcmp(e, job->want, job->nd * sizeof *e))
            job->mismatches++;
    free(e);
    return NULL;
}

TEST(concurrent_forwards_on_one_prompt_agree)
{
    ulpt_prompt *p = test_prompt(9, 2, 2048, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    test_perturb(p, 41);
    const size_t nd = 9 * 2048;
    float *want = malloc(nd * sizeof *want);
    ck_assert_int_eq(ulpt_prompt_forward(p, want, 2048), ULPT_OK);
    pthread_t t[FWD_THREADS];
    forward_job jobs[FWD_THREADS];
    for (int k = 0; k < FWD_THREADS; k++) {
        jobs[k] = (forward_job){p, want, nd, 2048, 0};
        ck_assert_int_eq(pthread_create(&t[k], NULL, forward_many, &jobs[k]), 0);
    }
    for (int k = 0; k < FWD_THREADS; k++) {
        ck_assert_int_eq(pthread_join(t[k], NULL), 0);
        ck_assert_int_eq(jobs[k].mismatches, 0);
    }
    ck_assert_uint_eq(atomic_load(&p->lock.word), 0);
    free(want);
    ulpt_prompt_free(p);
}

/* A NaN or an infinity anywhere in G, including the columns past the last full vector
 * and any group, is reported by every path's backward. */
TEST_LOOP(nonfinite_g_is_caught_by_every_path, 0, N_PATHS)
{
    static const struct {
        uint32_t n, r, d, groups;
        int kind;
        unsigned flags;
    } shapes[] = {
        {6, 2, 37, 3, ULPT_PROJ_XAVIER_UNIFORM, 0},
        {4, 16, 300, 1, ULPT_PROJ_GAUSSIAN, ULPT_NO_SCALE},
        {8, 3, 33, 2, ULPT_PROJ_RADEMACHER, ULPT_NO_SHIFT | ULPT_NO_SCALE},
        {3, 20, 20, 1, ULPT_PROJ_IDENTITY, 0},
    };
    const float bad[] = {NAN, INFINITY, -INFINITY};
    ulpt__kernel_force = paths[_i];
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        ulpt_prompt *p = test_prompt(shapes[c].n, shapes[c].r, shapes[c].d, shapes[c].groups,
                                     shapes[c].kind, shapes[c].flags);
        const size_t nd = (size_t)shapes[c].n * shapes[c].d;
        float *g = malloc(nd * sizeof *g);
        uint64_t st = 9;
        for (size_t k = 0; k < nd; k++)
            g[k] = (float)test_uniform(&st);
        ulpt_prompt_zero_grad(p);
        ck_assert_int_eq(ulpt__prompt_backward("test", p, g, shapes[c].d), ULPT_OK);
        const size_t at[] = {0, nd / 2 + 1, nd - 1, shapes[c].d - 1};
        for (size_t a = 0; a < 4; a++)
            for (int v = 0; v < 3; v++) {
                float keep = g[at[a]];
                g[at[a]] = bad[v];
                ulpt_prompt_zero_grad(p);
                ck_assert_int_eq(ulpt__prompt_backward("test", p, g, shapes[c].d),
                                 ULPT_ERR_NONFINITE);
                /* the public call keeps its documented behaviour: added, not refused */
                ck_assert_int_eq(ulpt_prompt_backward(p, g, shapes[c].d), ULPT_OK);
                g[at[a]] = keep;
            }
        free(g);
        ulpt_prompt_free(p);
    }
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}
