/* test_file.c -- prompt files and checkpoints: round trips, every corruption and
 * truncation refused, bounded allocation, atomic saves, checkpoint resume, sizes. */
#define _GNU_SOURCE /* setresuid */
#include "test.h"

#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

TEST_TIMEOUT(120); /* seconds per test in this file */

/* A scratch directory per test under the run's directory (Check forks each test, so the
 * pid is unique); main removes the whole tree at the end. */
static const char *scratch(const char *name)
{
    static char dir[160], path[512];
    snprintf(dir, sizeof dir, "%s/%ld", test_dir(), (long)getpid());
    mkdir(dir, 0777);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static void *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc(*len ? *len : 1);
    ck_assert_uint_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static ulpt_prompt *varied_prompt(uint32_t n, uint32_t r, uint32_t d, uint32_t g, int kind,
                                  unsigned flags)
{
    ulpt_prompt *p = test_prompt(n, r, d, g, kind, flags);
    test_perturb(p, 77);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "model", "tinylm-1.5M"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "task", "spam"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "empty", ""), ULPT_OK);
    return p;
}

static void same_prompt(ulpt_prompt *a, ulpt_prompt *b)
{
    ck_assert_uint_eq(ulpt_prompt_n_tokens(a), ulpt_prompt_n_tokens(b));
    ck_assert_uint_eq(ulpt_prompt_rank(a), ulpt_prompt_rank(b));
    ck_assert_uint_eq(ulpt_prompt_dim(a), ulpt_prompt_dim(b));
    ck_assert_uint_eq(ulpt_prompt_n_groups(a), ulpt_prompt_n_groups(b));
    ck_assert_uint_eq(ulpt_prompt_flags(a), ulpt_prompt_flags(b));
    for (uint32_t g = 0; g < ulpt_prompt_n_groups(a); g++) {
        const ulpt_projection *pa = ulpt_prompt_projection(a, g), *pb = ulpt_prompt_projection(b, g);
        ck_assert_uint_eq(ulpt_projection_seed(pa), ulpt_projection_seed(pb));
        ck_assert_int_eq(ulpt_projection_kind(pa), ulpt_projection_kind(pb));
    }
    ck_assert_uint_eq(ulpt_prompt_meta_count(a), ulpt_prompt_meta_count(b));
    for (size_t i = 0; i < ulpt_prompt_meta_count(a); i++) {
        const char *ka, *va, *kb, *vb;
        ulpt_prompt_meta_at(a, i, &ka, &va);
        ulpt_prompt_meta_at(b, i, &kb, &vb);
        ck_assert_str_eq(ka, kb);
        ck_assert_str_eq(va, vb);
    }
}

static const struct {
    uint32_t n, r, d, g;
    int kind;
    unsigned flags;
} shapes[] = {
    { 4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0 },
    { 6, 3, 33, 3, ULPT_PROJ_GAUSSIAN, ULPT_NO_SCALE },
    { 4, 1, 5, 2, ULPT_PROJ_RADEMACHER, ULPT_NO_SHIFT },
    { 3, 16, 16, 1, ULPT_PROJ_IDENTITY, ULPT_NO_SCALE | ULPT_NO_SHIFT },
    { 100, 2, 4096, 1, ULPT_PROJ_KAIMING_UNIFORM, 0 },
};

TEST_LOOP(f32_round_trip_is_bit_exact_with_metadata, 0, (int)(sizeof shapes / sizeof shapes[0]))
{
    ulpt_prompt *p = varied_prompt(shapes[_i].n, shapes[_i].r, shapes[_i].d, shapes[_i].g,
                                   shapes[_i].kind, shapes[_i].flags);
    const char *path = scratch("p.ulpt");
    ck_assert_int_eq(ulpt_prompt_save(p, path, NULL), ULPT_OK);
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load(&q, path), ULPT_OK);
    same_prompt(p, q);
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q),
                     ulpt_prompt_num_params(p) * sizeof(float));
    ck_assert_str_eq(ulpt_prompt_get_meta(q, "model"), "tinylm-1.5M");
    ck_assert_str_eq(ulpt_prompt_get_meta(q, "empty"), "");
    for (size_t i = 0; i < ulpt_prompt_num_params(q); i++)
        ck_assert_float_eq(ulpt_prompt_grads(q)[i], 0.0f);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}

TEST_LOOP(half_precision_round_trips_within_their_precision, 0, 2)
{
    const int dtype = _i ? ULPT_DTYPE_BF16 : ULPT_DTYPE_F16;
    const double rel = _i ? 0x1p-8 : 0x1p-11; /* half an ulp: 8 and 11 significant bits */
    ulpt_prompt *p = varied_prompt(10, 2, 300, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    float *x = ulpt_prompt_params(p);
    x[0] = 1e-6f; /* a half subnormal */
    x[1] = -70000.0f;
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = dtype;
    void *buf = NULL;
    size_t len;
    if (dtype == ULPT_DTYPE_F16) { /* past 65504: refused rather than stored as inf */
        ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &so), ULPT_ERR_NONFINITE);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "Z[0][1]"));
        ck_assert_ptr_null(buf);
        x[1] = -65504.0f;
    }
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &so), ULPT_OK);
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, buf, len), ULPT_OK);
    same_prompt(p, q);
    const float *y = ulpt_prompt_params(q);
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++) {
        double tol = fabs(x[i]) * rel + (dtype == ULPT_DTYPE_F16 ? 0x1p-25 : 0);
        ck_assert_msg(fabs((double)y[i] - x[i]) <= tol, "param %zu: %.9g stored as %.9g", i,
                      x[i], y[i]);
    }
    ulpt_free(buf);
    ulpt_prompt_free(p);
    ulpt_prompt_free(q);
}

/* Reference binary16 by arithmetic on doubles: the value of a half, and the half
 * value nearest to a float (ties to even, past 65520 infinite). */
static double half_value(uint16_t h)
{
    int exp = (h >> 10) & 31, mant = h & 1023;
    double v = exp == 0 ? ldexp(mant, -24) : exp == 31 ? (mant ? NAN : INFINITY)
                                                       : ldexp(1024 + mant, exp - 25);
    return h & 0x8000 ? -v : v;
}

static double nearest_half(float f)
{
    double a = fabs((double)f);
    if (a >= 65520.0)
        return copysign(INFINITY, f);
    double quantum = a < 0x1p-14 ? 0x1p-24 : ldexp(1.0, ilogb(a) - 10);
    return copysign(rint(a / quantum) * quantum, f); /* rint: ties to even */
}

TEST(f16_conversion_matches_a_reference_on_every_half_and_many_floats)
{
    for (uint32_t h = 0; h < 65536; h++) { /* every half decodes right and round-trips */
        float f = ulpt__f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            ck_assert(isnan(half_value((uint16_t)h)));
            continue;
        }
        ck_assert_double_eq(f, half_value((uint16_t)h));
        ck_assert_uint_eq(ulpt__f32_to_f16(f), h);
    }
    uint64_t st = 1;
    for (int k = 0; k < test_reps(2000000); k++) { /* random bit patterns: every exponent */
        st = st * 6364136223846793005u + 1442695040888963407u;
        uint32_t u = (uint32_t)(st >> 32);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f))
            continue;
        uint16_t h = ulpt__f32_to_f16(f);
        double got = half_value(h), want = nearest_half(f);
        ck_assert_msg(got == want && signbit(got) == signbit(want), "%a: got %a, want %a",
                      (double)f, got, want);
    }
    ck_assert(isnan(ulpt__f16_to_f32(ulpt__f32_to_f16(NAN))));
}

TEST(bf16_conversion_rounds_to_nearest_even)
{
    uint64_t st = 2;
    for (int k = 0; k < test_reps(2000000); k++) {
        st = st * 6364136223846793005u + 1442695040888963407u;
        uint32_t u = (uint32_t)(st >> 32);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f) || isinf(f))
            continue;
        /* the two bf16 neighbours of f, and the nearer (ties to the even one) */
        uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
        float flo, fhi;
        memcpy(&flo, &lo, 4);
        memcpy(&fhi, &hi, 4);
        double dhi = isinf(fhi) ? copysign(0x1p128, fhi) : fhi; /* IEEE's overflow point */
        double dl = fabs((double)f - flo), dh = fabs(dhi - f);
        uint32_t want = dl < dh ? lo : dh < dl ? hi : ((lo >> 16) & 1 ? hi : lo);
        ck_assert_uint_eq(ulpt__f32_to_bf16(f), want >> 16);
        float back = ulpt__bf16_to_f32((uint16_t)(want >> 16));
        ck_assert_uint_eq(ulpt__f32_to_bf16(back), want >> 16);
    }
    ck_assert(isnan(ulpt__bf16_to_f32(ulpt__f32_to_bf16(NAN))));
}

TEST(buffer_and_file_agree_byte_for_byte)
{
    ulpt_prompt *p = varied_prompt(8, 2, 64, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    for (int dtype = 0; dtype < 3; dtype++) {
        ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
        so.dtype = dtype;
        so.level = dtype * 4;
        const char *path = scratch("p.ulpt");
        ck_assert_int_eq(ulpt_prompt_save(p, path, &so), ULPT_OK);
        void *buf;
        size_t len, flen;
        ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &so), ULPT_OK);
        void *file = read_all(path, &flen);
        ck_assert_uint_eq(len, flen);
        ck_assert_mem_eq(buf, file, len);
        free(file);
        ulpt_free(buf);
    }
    ulpt_prompt_free(p);
}

/* The saved bytes of a small varied prompt, in a malloc'd copy of `extra` more bytes
 * that the test may edit; *p gets the prompt. */
static unsigned char *small_file(ulpt_prompt **p, size_t *len, size_t extra)
{
    *p = varied_prompt(4, 2, 8, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    void *buf;
    ck_assert_int_eq(ulpt_prompt_save_buffer(*p, &buf, len, NULL), ULPT_OK);
    unsigned char *b = malloc(*len + extra);
    memcpy(b, buf, *len);
    ulpt_free(buf);
    return b;
}

static int refused(int rc)
{
    return rc == ULPT_ERR_CORRUPT || rc == ULPT_ERR_FORMAT || rc == ULPT_ERR_MISMATCH;
}

TEST(every_single_byte_corruption_is_refused)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *buf = small_file(&p, &len, 0), *bad = malloc(len);
    static const unsigned char flips[] = { 0x01, 0x80, 0xff };
    for (size_t i = 0; i < len; i++)
        for (size_t f = 0; f < sizeof flips; f++) {
            memcpy(bad, buf, len);
            bad[i] ^= flips[f];
            ulpt_prompt *q = NULL;
            int rc = ulpt_prompt_load_buffer(&q, bad, len);
            ck_assert_msg(refused(rc), "byte %zu ^ 0x%02x of %zu: rc %d", i, flips[f], len, rc);
            ck_assert_ptr_null(q);
            ck_assert_str_ne(ulpt_last_error(), "");
        }
    free(bad);
    free(buf);
    ulpt_prompt_free(p);
}

TEST(every_truncation_is_refused)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *buf = small_file(&p, &len, 0);
    for (size_t n = 0; n < len; n++) {
        unsigned char *cut = malloc(n ? n : 1); /* exact size: ASan sees any overread */
        memcpy(cut, buf, n);
        ulpt_prompt *q = NULL;
        int rc = ulpt_prompt_load_buffer(&q, cut, n);
        ck_assert_msg(refused(rc), "truncated to %zu of %zu: rc %d", n, len, rc);
        free(cut);
    }
    free(buf);
    ulpt_prompt_free(p);
}

/* Rewrite the CRC after an edit, as a forger would. */
static void reseal(unsigned char *b, size_t len)
{
    uint32_t crc = (uint32_t)crc32(0, b, (uInt)(len - 4));
    for (int i = 0; i < 4; i++)
        b[len - 4 + i] = (unsigned char)(crc >> (8 * i));
}

static void put32le(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Offsets in a prompt file: header 24, SHAP section header 16, then the shape fields. */
#define SHAPE_AT (24 + 16)

static long largest_alloc;
static void *big_alloc(void *u, size_t n)
{
    (void)u;
    if ((long)n > largest_alloc)
        largest_alloc = (long)n;
    return malloc(n);
}
static void big_free(void *u, void *p) { (void)u, free(p); }

TEST(header_claiming_a_trillion_elements_is_refused_without_allocating)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    put32le(b + SHAPE_AT, 1000000);     /* n_tokens */
    put32le(b + SHAPE_AT + 8, 1000000); /* dim: 10^12 embedding values */
    put32le(b + SHAPE_AT + 40, 4000000); /* and a consistent parameter count */
    reseal(b, len);
    ulpt_allocator a = { big_alloc, NULL, big_free, NULL };
    ulpt_set_allocator(&a);
    largest_alloc = 0;
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "cannot come from"));
    ck_assert_int_le(largest_alloc, 0); /* nothing at all was allocated */
    put32le(b + SHAPE_AT + 40, 24); /* inconsistent count: refused as well, still no alloc */
    reseal(b, len);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_CORRUPT);
    ck_assert_int_le(largest_alloc, 0);
    ulpt_set_allocator(NULL);
    free(b);
    ulpt_prompt_free(p);
}

TEST(newer_major_version_is_refused_naming_it)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    b[8] = 2, b[10] = 3; /* format 2.3 */
    reseal(b, len);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "2.3"));
    memcpy(b, "GIF89a..", 8);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "magic"));
    free(b);
    ulpt_prompt_free(p);
}

/* A newer minor version may add sections: optional ones are skipped, required ones are
 * refused.  Build such a file by splicing a section in before the trailer. */
TEST_LOOP(newer_minor_sections_are_skipped_when_optional, 0, 2)
{
    ulpt_prompt *p;
    size_t len;
    const size_t extra = 16 + 5;
    unsigned char *b = small_file(&p, &len, extra);
    const size_t n = len + extra;
    unsigned char *s = b + len - 4;
    memcpy(s, "XTRA", 4);
    put32le(s + 4, (uint32_t)_i); /* flags: 0 optional, 1 required */
    put32le(s + 8, 5), put32le(s + 12, 0);
    memcpy(s + 16, "hello", 5);
    b[10] = 1; /* minor 1 */
    for (int i = 0; i < 8; i++)
        b[16 + i] = (unsigned char)((uint64_t)n >> (8 * i));
    reseal(b, n);
    ulpt_prompt *q = NULL;
    if (_i == 0) {
        ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, n), ULPT_OK);
        ck_assert_mem_eq(ulpt_prompt_params(q), ulpt_prompt_params(p),
                         ulpt_prompt_num_params(p) * sizeof(float));
        ulpt_prompt_free(q);
    } else {
        ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, n), ULPT_ERR_FORMAT);
        ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "XTRA"));
    }
    free(b);
    ulpt_prompt_free(p);
}

TEST(changed_projection_is_a_mismatch)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    b[SHAPE_AT + 16] ^= 1; /* another seed: P regenerates differently */
    reseal(b, len);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, b, len), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "projection"));
    free(b);
    ulpt_prompt_free(p);
}

TEST(load_for_model_refuses_another_model_naming_both)
{
    ulpt_prompt *p = varied_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    const char *path = scratch("m.ulpt");
    ulpt_prompt_save(p, path, NULL);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_for_model(&q, path, "gpt2"), ULPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "tinylm-1.5M"));
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "gpt2"));
    ck_assert_ptr_null(q);
    ck_assert_int_eq(ulpt_prompt_load_for_model(&q, path, "tinylm-1.5M"), ULPT_OK);
    ulpt_prompt_free(q);
    ulpt_prompt_set_meta(p, "model", NULL);
    ulpt_prompt_save(p, path, NULL);
    ck_assert_int_eq(ulpt_prompt_load_for_model(&q, path, "gpt2"), ULPT_ERR_MISMATCH);
    ulpt_prompt_free(p);
}

TEST(metadata_set_replace_remove_and_iterate)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ck_assert_ptr_null(ulpt_prompt_get_meta(p, "model"));
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "a", "1"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "b", "2"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "a", "3"), ULPT_OK); /* replace keeps place */
    const char *k, *v;
    ck_assert_int_eq(ulpt_prompt_meta_at(p, 0, &k, &v), ULPT_OK);
    ck_assert_str_eq(k, "a");
    ck_assert_str_eq(v, "3");
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "a", NULL), ULPT_OK);
    ck_assert_uint_eq(ulpt_prompt_meta_count(p), 1);
    ck_assert_int_eq(ulpt_prompt_meta_at(p, 1, &k, &v), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "", "x"), ULPT_ERR_INVALID);
    char longkey[300];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[299] = '\0';
    ck_assert_int_eq(ulpt_prompt_set_meta(p, longkey, "x"), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_set_meta(NULL, "a", "x"), ULPT_ERR_INVALID);
    ck_assert_uint_eq(ulpt_prompt_meta_count(p), 1);
    ulpt_prompt_free(p);
}

/* ---- atomic saves -------------------------------------------------------------------- */

static int count_temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strstr(e->d_name, ".ulpt-tmp-") != NULL;
    closedir(d);
    return n;
}

TEST(save_into_read_only_directory_fails_and_keeps_the_old_file)
{
    char dir[160], path[200];
    snprintf(dir, sizeof dir, "%s/ro-%ld", test_dir(), (long)getpid());
    snprintf(path, sizeof path, "%s/p.ulpt", dir);
    mkdir(dir, 0755);
    ulpt_prompt *p = varied_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ck_assert_int_eq(ulpt_prompt_save(p, path, NULL), ULPT_OK);
    size_t len0;
    void *before = read_all(path, &len0);
    chmod(path, 0644);
    chmod(dir, 0555);
    /* Root ignores permissions, so the save runs in a child that becomes nobody; its
       exit status says whether it got ULPT_ERR_IO naming the path. */
    pid_t child = fork();
    if (child == 0) {
        if (geteuid() == 0 && setresuid(65534, 65534, 65534) != 0)
            _exit(3);
        ulpt_prompt_params(p)[0] += 1.0f;
        int rc = ulpt_prompt_save(p, path, NULL);
        int ok = rc == ULPT_ERR_IO && strstr(ulpt_last_error(), path);
        if (!ok)
            fprintf(stderr, "unprivileged save: %d %s\n", rc, ulpt_last_error());
        free(before); /* the parent's heap, copied: leave no leak for valgrind to count */
        ulpt_prompt_free(p);
        _exit(ok ? 0 : 1);
    }
    int status;
    ck_assert_int_eq(waitpid(child, &status, 0), child);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    size_t len1;
    void *after = read_all(path, &len1);
    ck_assert_uint_eq(len0, len1);
    ck_assert_mem_eq(before, after, len0);
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load(&q, path), ULPT_OK);
    ck_assert_int_eq(count_temporaries(dir), 0);
    free(before), free(after);
    ulpt_prompt_free(q);
    ulpt_prompt_free(p);
}

/* Each system call of a save, failing in turn: an error, the old file intact, no
 * temporary left, nothing leaked. */
static long io_calls, io_fail_at;
static long fail_write(int fd, const void *b, size_t n)
{
    if (io_calls++ == io_fail_at) {
        errno = ENOSPC;
        return -1;
    }
    return (long)write(fd, b, n < 1000 ? n : 1000); /* short writes: many calls */
}
static int fail_fsync(int fd)
{
    if (io_calls++ == io_fail_at) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}
static int fail_rename(const char *a, const char *b)
{
    if (io_calls++ == io_fail_at) {
        errno = EXDEV;
        return -1;
    }
    return rename(a, b);
}

TEST(failure_at_each_write_fsync_and_rename_keeps_the_old_file)
{
    const char *path = scratch("io.ulpt");
    char dir[128];
    snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(path, '/') - path), path);
    ulpt_prompt *p = varied_prompt(20, 2, 300, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_save_options raw = ULPT_SAVE_OPTIONS_INIT;
    raw.level = 0; /* a few KB: several short writes */
    ck_assert_int_eq(ulpt_prompt_save(p, path, &raw), ULPT_OK);
    size_t len0;
    void *before = read_all(path, &len0);
    ulpt_prompt_params(p)[0] += 1.0f;
    const ulpt_io_ops real = ulpt__io;
    ulpt__io = (ulpt_io_ops){ fail_write, fail_fsync, fail_rename };
    long k;
    for (k = 0;; k++) {
        io_calls = 0, io_fail_at = k;
        test_alloc_install(-1);
        int rc = ulpt_prompt_save(p, path, &raw);
        ck_assert_int_eq(test_alloc.live, 0);
        test_alloc_remove();
        if (rc == ULPT_OK)
            break;
        ck_assert_int_eq(rc, ULPT_ERR_IO);
        size_t len1;
        void *after = read_all(path, &len1);
        ck_assert_uint_eq(len0, len1);
        ck_assert_mem_eq(before, after, len0);
        free(after);
        ck_assert_int_eq(count_temporaries(dir), 0);
    }
    ulpt__io = real;
    ck_assert_int_gt(k, 4); /* several writes, an fsync and a rename were each failed */
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load(&q, path), ULPT_OK);
    ck_assert_float_eq(ulpt_prompt_params(q)[0], ulpt_prompt_params(p)[0]);
    free(before);
    ulpt_prompt_free(q);
    ulpt_prompt_free(p);
}

TEST(save_killed_part_way_leaves_a_loadable_file)
{
    const char *path = scratch("kill.ulpt");
    ulpt_prompt *p = test_prompt(100, 4096, 4096, 1, ULPT_PROJ_IDENTITY, 0); /* 1.6 MB */
    ulpt_save_options raw = ULPT_SAVE_OPTIONS_INIT;
    raw.level = 0;
    ck_assert_int_eq(ulpt_prompt_save(p, path, &raw), ULPT_OK);
    int interrupted = 0, rounds = test_reps(40);
    for (int round = 0; round < rounds; round++) {
        pid_t child = fork();
        if (child == 0) {
            for (int k = 1;; k++) { /* keep rewriting with new values */
                ulpt_prompt_params(p)[0] = (float)k;
                ulpt_prompt_save(p, path, &raw);
            }
        }
        struct timespec ts = { 0, 200000 + 250000L * (round % 8) };
        nanosleep(&ts, NULL);
        kill(child, SIGKILL);
        int status;
        waitpid(child, &status, 0);
        interrupted += WIFSIGNALED(status);
        ulpt_prompt *q = NULL;
        ck_assert_msg(ulpt_prompt_load(&q, path) == ULPT_OK, "round %d: %s", round,
                      ulpt_last_error());
        ulpt_prompt_free(q);
    }
    ck_assert_int_eq(interrupted, rounds);
    ulpt_prompt_free(p);
}

/* ---- checkpoints ----------------------------------------------------------------------- */

static int bowl(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    (void)user;
    *loss = 0;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        double t = sin(0.37 * (double)k), diff = e[k] - t;
        grad[k] = (float)diff;
        *loss += 0.5 * diff * diff;
    }
    return 0;
}

static ulpt_optimizer *resume_optimizer(ulpt_prompt *p, int kind)
{
    ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
    oo.kind = kind;
    oo.lr = 0.05;
    oo.momentum = kind == ULPT_OPT_SGD ? 0.9 : 0.0;
    oo.max_grad_norm = 1.0;
    oo.schedule = ULPT_SCHED_LINEAR;
    oo.warmup_steps = 5;
    oo.total_steps = 40;
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, &oo), ULPT_OK);
    return o;
}

TEST_LOOP(checkpoint_resume_is_bit_identical, ULPT_OPT_SGD, ULPT_OPT_ADAMW + 1)
{
    const int kind = _i; /* SGD, Adam, AdamW */
    ulpt_prompt *a = test_prompt(12, 2, 40, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *b = test_prompt(12, 2, 40, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *oa = resume_optimizer(a, kind), *ob = resume_optimizer(b, kind);
    for (int t = 0; t < 40; t++)
        ck_assert_int_eq(ulpt_train_step(a, oa, bowl, NULL, NULL), ULPT_OK);
    for (int t = 0; t < 20; t++)
        ck_assert_int_eq(ulpt_train_step(b, ob, bowl, NULL, NULL), ULPT_OK);
    const char *path = scratch("ckpt.ulpt");
    ck_assert_int_eq(ulpt_checkpoint_save(b, ob, path), ULPT_OK);
    ulpt_optimizer_free(ob);
    ulpt_prompt_free(b);
    ck_assert_int_eq(ulpt_checkpoint_load(&b, &ob, path), ULPT_OK);
    ck_assert_uint_eq(ulpt_optimizer_step_count(ob), 20);
    for (int t = 0; t < 20; t++)
        ck_assert_int_eq(ulpt_train_step(b, ob, bowl, NULL, NULL), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(a), ulpt_prompt_params(b),
                     ulpt_prompt_num_params(a) * sizeof(float));
    ck_assert_uint_eq(ulpt_optimizer_step_count(ob), 40);
    /* a checkpoint is also a prompt file; a prompt file is not a checkpoint */
    ulpt_prompt *q;
    ck_assert_int_eq(ulpt_prompt_load(&q, path), ULPT_OK);
    ulpt_prompt_free(q);
    ulpt_prompt_save(a, path, NULL);
    ulpt_optimizer *oq = NULL;
    ck_assert_int_eq(ulpt_checkpoint_load(&q, &oq, path), ULPT_ERR_FORMAT);
    ck_assert_int_eq(ulpt_checkpoint_save(a, ob, path), ULPT_ERR_MISMATCH);
    ulpt_optimizer_free(oa);
    ulpt_optimizer_free(ob);
    ulpt_prompt_free(a);
    ulpt_prompt_free(b);
}

TEST(headline_prompt_file_sizes)
{
    ulpt_prompt *p = test_prompt(100, 2, 4096, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    uint64_t st = 9;
    float *x = ulpt_prompt_params(p); /* a trained prompt: no structure left to compress */
    for (size_t i = 0; i < ulpt_prompt_num_params(p); i++)
        x[i] = (float)test_uniform(&st);
    ulpt_prompt_set_meta(p, "model", "tinylm-1.5M");
    size_t sizes[3];
    for (int dtype = 0; dtype < 3; dtype++) {
        ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
        so.dtype = dtype;
        void *buf;
        ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &sizes[dtype], &so), ULPT_OK);
        ulpt_free(buf);
    }
    printf("file sizes, n=100 r=2 d=4096: f32 %zu, f16 %zu, bf16 %zu bytes "
           "(vanilla prompt tuning: 1638400)\n",
           sizes[0], sizes[1], sizes[2]);
    ck_assert_uint_le(sizes[0], 34000);
    ck_assert_uint_le(sizes[1], 17500);
    ck_assert_uint_le(sizes[2], 17500);
    ulpt_prompt_free(p);
}

TEST(file_errors_name_the_problem)
{
    ulpt_prompt *p = test_prompt(2, 2, 4, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load(&q, "/nonexistent/dir/p.ulpt"), ULPT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "/nonexistent/dir/p.ulpt"));
    ck_assert_int_eq(ulpt_prompt_load(&q, "/tmp"), ULPT_ERR_IO);
    ck_assert_int_eq(ulpt_prompt_save(p, "/nonexistent/dir/p.ulpt", NULL), ULPT_ERR_IO);
    ck_assert_int_eq(ulpt_prompt_save(p, "", NULL), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_save(NULL, "x", NULL), ULPT_ERR_INVALID);
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = 7;
    ck_assert_int_eq(ulpt_prompt_save(p, scratch("x"), &so), ULPT_ERR_INVALID);
    so = (ulpt_save_options)ULPT_SAVE_OPTIONS_INIT;
    so.level = 10;
    ck_assert_int_eq(ulpt_prompt_save(p, scratch("x"), &so), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, NULL, 0), ULPT_ERR_INVALID);
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, "", 0), ULPT_ERR_CORRUPT); /* empty file */
    ck_assert_ptr_null(q);
    ulpt_free(NULL);
    ulpt_prompt_free(p);
}

TEST(out_of_memory_during_save_and_load_fails_cleanly)
{
    ulpt_prompt *p = varied_prompt(6, 2, 40, 2, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ulpt_optimizer_create(&o, p, NULL);
    char path[512], st_path[512]; /* scratch() reuses its buffer */
    snprintf(path, sizeof path, "%s", scratch("oom.ulpt"));
    snprintf(st_path, sizeof st_path, "%s", scratch("oom.safetensors"));
    ck_assert_int_eq(ulpt_checkpoint_save(p, o, path), ULPT_OK);
    long k;
    for (k = 0;; k++) { /* every allocation of a save, then of a load */
        test_alloc_install(k);
        void *buf = NULL;
        size_t len;
        int rc1 = ulpt_prompt_save_buffer(p, &buf, &len, NULL);
        ulpt_free(buf);
        int rc2 = ulpt_checkpoint_save(p, o, path);
        ulpt_prompt *q = NULL;
        ulpt_optimizer *oq = NULL;
        int rc3 = ulpt_checkpoint_load(&q, &oq, path);
        ulpt_optimizer_free(oq);
        ulpt_prompt_free(q);
        ulpt_file_info fi = ULPT_FILE_INFO_INIT;
        int rc4 = ulpt_file_inspect(path, &fi);
        int rc5 = ulpt_prompt_export_safetensors(p, st_path);
        char value[32];
        snprintf(value, sizeof value, "v%ld", k);
        size_t count = ulpt_prompt_meta_count(p);
        const char *old = ulpt_prompt_get_meta(p, "task");
        char before[64];
        snprintf(before, sizeof before, "%s", old ? old : "");
        int rc6 = ulpt_prompt_set_meta(p, k % 2 ? "task" : "new-key", value);
        if (rc6 == ULPT_ERR_NOMEM) { /* unchanged */
            ck_assert_uint_eq(ulpt_prompt_meta_count(p), count);
            ck_assert_str_eq(ulpt_prompt_get_meta(p, "task"), before);
        }
        ulpt_prompt_set_meta(p, "new-key", NULL);
        long live = test_alloc.live;
        test_alloc_remove();
        int rcs[] = { rc1, rc2, rc3, rc4, rc5, rc6 }, all_ok = 1;
        for (int i = 0; i < 6; i++) {
            ck_assert_msg(rcs[i] == ULPT_OK || rcs[i] == ULPT_ERR_NOMEM, "call %d: %d", i, rcs[i]);
            all_ok &= rcs[i] == ULPT_OK;
        }
        /* what the prompt holds now (metadata) came from this allocator; the rest is freed */
        ck_assert_int_le(live, 2 * (long)ulpt_prompt_meta_count(p) + 2);
        if (all_ok)
            break;
        ulpt_prompt *check; /* whatever failed, the file is still the good one */
        ulpt_optimizer *ocheck;
        ck_assert_int_eq(ulpt_checkpoint_load(&check, &ocheck, path), ULPT_OK);
        ulpt_optimizer_free(ocheck);
        ulpt_prompt_free(check);
    }
    ck_assert_int_gt(k, 10);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}


TEST(safetensors_export_holds_the_embeddings)
{
    ulpt_prompt *p = varied_prompt(5, 2, 24, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    const char *path = scratch("e.safetensors");
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, path), ULPT_OK);
    size_t len;
    unsigned char *b = read_all(path, &len);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)b[i] << (8 * i);
    ck_assert_uint_eq(hl % 8, 0);
    ck_assert_uint_eq(len, 8 + hl + 5 * 24 * 4);
    char *json = strndup((char *)b + 8, hl);
    ck_assert_ptr_nonnull(strstr(json, "\"prompt_embeddings\":{\"dtype\":\"F32\",\"shape\":[5,24],"
                                       "\"data_offsets\":[0,480]}"));
    float e[5 * 24];
    ulpt_prompt_forward(p, e, 24);
    ck_assert_mem_eq(b + 8 + hl, e, sizeof e); /* little-endian host */
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, "/nonexistent/e.safetensors"), ULPT_ERR_IO);
    ck_assert_int_eq(ulpt_prompt_export_safetensors(NULL, path), ULPT_ERR_INVALID);
    free(json);
    free(b);
    ulpt_prompt_free(p);
}

TEST(inspect_describes_prompts_and_checkpoints)
{
    ulpt_prompt *p = varied_prompt(4, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ulpt_optimizer_create(&o, p, NULL);
    const char *path = scratch("i.ulpt");
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    so.dtype = ULPT_DTYPE_BF16;
    ck_assert_int_eq(ulpt_prompt_save(p, path, &so), ULPT_OK);
    ulpt_file_info fi = ULPT_FILE_INFO_INIT, untouched;
    memset(&untouched, 0x5a, sizeof untouched);
    untouched.version = ULPT_FILE_INFO_VERSION;
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_OK);
    ck_assert_int_eq(fi.kind, ULPT_FILE_PROMPT);
    ck_assert_uint_eq(fi.format_major, 1);
    ck_assert_uint_eq(fi.format_minor, 0);
    ck_assert_int_eq(fi.dtype, ULPT_DTYPE_BF16);
    size_t len;
    free(read_all(path, &len));
    ck_assert_uint_eq(fi.file_bytes, len);
    ck_assert_uint_lt(fi.stored_bytes, len);
    ck_assert_int_eq(ulpt_checkpoint_save(p, o, path), ULPT_OK);
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_OK);
    ck_assert_int_eq(fi.kind, ULPT_FILE_CHECKPOINT);
    ck_assert_int_eq(fi.dtype, ULPT_DTYPE_F32);
    /* damage: an error, and *info untouched */
    FILE *f = fopen(path, "r+b");
    fseek(f, 30, SEEK_SET);
    fputc(0x77, f);
    fclose(f);
    fi = untouched;
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_ERR_CORRUPT);
    ck_assert_mem_eq(&fi, &untouched, sizeof fi);
    ck_assert_int_eq(ulpt_file_inspect(NULL, &fi), ULPT_ERR_INVALID);
    fi.version = 2;
    ck_assert_int_eq(ulpt_file_inspect(path, &fi), ULPT_ERR_INVALID);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(non_finite_parameters_are_never_saved_served_or_loaded)
{
    ulpt_prompt *p;
    size_t len;
    unsigned char *b = small_file(&p, &len, 0);
    float *x = ulpt_prompt_params(p);
    const size_t scale3 = 4 * 2 + 3; /* Z is 4 x 2, then scale */
    x[scale3] = NAN;
    float e[4 * 8];
    ck_assert_int_eq(ulpt_prompt_forward(p, e, 8), ULPT_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "scale[3]"));
    ck_assert_int_eq(ulpt_prompt_save(p, scratch("nan.ulpt"), NULL), ULPT_ERR_NONFINITE);
    x[scale3] = INFINITY;
    void *buf = NULL;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, NULL), ULPT_ERR_NONFINITE);
    ck_assert_ptr_null(buf);
    /* a forged file with a NaN in it (stored, resealed) is refused as corrupt */
    x[scale3] = 1.0f;
    ulpt_save_options raw = ULPT_SAVE_OPTIONS_INIT;
    raw.level = 0;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, &raw), ULPT_OK);
    unsigned char *f = malloc(len);
    memcpy(f, buf, len);
    ulpt_free(buf);
    size_t data = len - 4 - ulpt_prompt_num_params(p) * 4; /* PARM data ends the file */
    const float nan = NAN;
    memcpy(f + data + scale3 * 4, &nan, 4);
    reseal(f, len);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load_buffer(&q, f, len), ULPT_ERR_CORRUPT);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "scale[3]"));
    free(f);
    free(b);
    ulpt_prompt_free(p);
}

TEST(save_follows_symlinks_keeps_the_mode_and_takes_long_names)
{
    ulpt_prompt *p = varied_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q;
    char target[512], link[512], longname[512];
    snprintf(target, sizeof target, "%s", scratch("real.ulpt"));
    snprintf(link, sizeof link, "%s", scratch("link.ulpt"));
    ck_assert_int_eq(ulpt_prompt_save(p, target, NULL), ULPT_OK);
    ck_assert_int_eq(chmod(target, 0640), 0);
    ck_assert_int_eq(symlink(target, link), 0);
    ulpt_prompt_set_meta(p, "task", "through the link");
    ck_assert_int_eq(ulpt_prompt_save(p, link, NULL), ULPT_OK);
    struct stat st;
    ck_assert_int_eq(lstat(link, &st), 0);
    ck_assert(S_ISLNK(st.st_mode)); /* still a link */
    ck_assert_int_eq(stat(target, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0640); /* the replacement kept the mode */
    ck_assert_int_eq(ulpt_prompt_load(&q, target), ULPT_OK);
    ck_assert_str_eq(ulpt_prompt_get_meta(q, "task"), "through the link");
    ulpt_prompt_free(q);
    char name[256];
    memset(name, 'n', 250);
    memcpy(name + 250, ".ulpt", 6); /* 255 bytes: the longest name a file system takes */
    snprintf(longname, sizeof longname, "%s", scratch(name));
    ck_assert_msg(ulpt_prompt_save(p, longname, NULL) == ULPT_OK, "%s", ulpt_last_error());
    ck_assert_int_eq(ulpt_prompt_load(&q, longname), ULPT_OK);
    ulpt_prompt_free(q);
    ulpt_prompt_free(p);
}

TEST(loading_a_fifo_is_refused_without_waiting)
{
    const char *fifo = scratch("fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ulpt_prompt *q = NULL;
    ck_assert_int_eq(ulpt_prompt_load(&q, fifo), ULPT_ERR_IO); /* would block forever */
    ck_assert_ptr_null(q);
}
