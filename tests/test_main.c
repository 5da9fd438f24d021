/* test_main.c -- collects the tests every tests/test_*.c registered (test.h), one suite per
 * file, runs them; the exit status is the verdict. */
#define _POSIX_C_SOURCE 200809L
#include "test.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

test_alloc_state test_alloc;

static char run_dir[64];

const char *test_dir(void) { return run_dir; }

static void *count_alloc(void *user, size_t size)
{
    (void)user;
    if (test_alloc.calls++ == test_alloc.fail_at)
        return NULL;
    void *p = malloc(size);
    if (p)
        test_alloc.live++;
    return p;
}

static void *count_realloc(void *user, void *ptr, size_t size)
{
    (void)user;
    if (test_alloc.calls++ == test_alloc.fail_at)
        return NULL;
    void *q = realloc(ptr, size);
    if (q && !ptr)
        test_alloc.live++;
    return q;
}

static void count_free(void *user, void *ptr)
{
    (void)user;
    if (ptr)
        test_alloc.live--;
    free(ptr);
}

void test_alloc_install(long fail_at)
{
    static const ulpt_allocator a = {count_alloc, count_realloc, count_free, NULL};
    test_alloc = (test_alloc_state){0, 0, fail_at};
    ck_assert_int_eq(ulpt_set_allocator(&a), ULPT_OK);
}

void test_alloc_remove(void) { ulpt_set_allocator(NULL); }

/* ---- the registry: filled by constructors before main -------------------------------- */

typedef struct {
    const TTest *t;
    int lo, hi;
} test_entry;

static test_entry *tests;
static size_t n_tests, cap_tests;

static struct {
    const char *file;
    double seconds;
} timeouts[64];
static size_t n_timeouts;

static void die(const char *what)
{
    fprintf(stderr, "test registry: %s\n", what);
    exit(EXIT_FAILURE);
}

void test_register(const TTest *t, int lo, int hi)
{
    if (n_tests == cap_tests) {
        cap_tests = cap_tests ? 2 * cap_tests : 128;
        tests = realloc(tests, cap_tests * sizeof *tests);
        if (!tests)
            die("out of memory");
    }
    tests[n_tests++] = (test_entry){t, lo, hi};
}

void test_register_timeout(const char *file, double seconds)
{
    if (n_timeouts == sizeof timeouts / sizeof timeouts[0])
        die("too many TEST_TIMEOUT lines");
    timeouts[n_timeouts].file = file;
    timeouts[n_timeouts++].seconds = seconds;
}

/* File order, then the order within each file (constructors run in no promised order). */
static int by_place(const void *a, const void *b)
{
    const TTest *x = ((const test_entry *)a)->t, *y = ((const test_entry *)b)->t;
    int c = strcmp(x->file, y->file);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* "tests/test_meta.c" -> "meta" */
static void suite_name(const char *file, char *out, size_t size)
{
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (strncmp(base, "test_", 5) == 0)
        base += 5;
    size_t len = strcspn(base, ".");
    if (len >= size)
        len = size - 1;
    memcpy(out, base, len);
    out[len] = '\0';
}

static SRunner *collect(void)
{
    static char names[64][64];
    size_t n_suites = 0;
    SRunner *sr = NULL;
    TCase *tc = NULL;
    qsort(tests, n_tests, sizeof *tests, by_place);
    for (size_t i = 0; i < n_tests; i++) {
        if (i == 0 || strcmp(tests[i].t->file, tests[i - 1].t->file) != 0) {
            if (n_suites == sizeof names / sizeof names[0])
                die("too many test files");
            char *name = names[n_suites++];
            suite_name(tests[i].t->file, name, sizeof names[0]);
            Suite *s = suite_create(name);
            tc = tcase_create(name);
            for (size_t k = 0; k < n_timeouts; k++)
                if (strcmp(timeouts[k].file, tests[i].t->file) == 0)
                    tcase_set_timeout(tc, timeouts[k].seconds);
            suite_add_tcase(s, tc);
            if (!sr)
                sr = srunner_create(s);
            else
                srunner_add_suite(sr, s);
        }
        tcase_add_loop_test(tc, tests[i].t, tests[i].lo, tests[i].hi);
    }
    if (!sr)
        die("no tests registered");
    return sr;
}

int main(void)
{
    snprintf(run_dir, sizeof run_dir, "/tmp/ulpt-test-%ld", (long)getpid());
    mkdir(run_dir, 0777);
    chmod(run_dir, 0777); /* a test drops to an unprivileged user inside it */
    SRunner *sr = collect();
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free(tests);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "chmod -R u+w %s; rm -rf %s", run_dir, run_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", run_dir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
