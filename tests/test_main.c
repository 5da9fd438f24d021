/* test_main.c -- runs every suite; the exit status is the verdict. */
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

int main(void)
{
    snprintf(run_dir, sizeof run_dir, "/tmp/ulpt-test-%ld", (long)getpid());
    mkdir(run_dir, 0777);
    chmod(run_dir, 0777); /* a test drops to an unprivileged user inside it */
    SRunner *sr = srunner_create(projection_suite());
    srunner_add_suite(sr, prompt_suite());
    srunner_add_suite(sr, optimizer_suite());
    srunner_add_suite(sr, train_suite());
    srunner_add_suite(sr, api_suite());
    srunner_add_suite(sr, file_suite());
    srunner_add_suite(sr, zo_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "chmod -R u+w %s; rm -rf %s", run_dir, run_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", run_dir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
