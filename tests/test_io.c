/* test_io.c -- atomic saves and safe loads (lib/io.c): read-only directories, each
 * system call failing, SIGKILL part way, symlinks, long names, FIFOs. */
#define _GNU_SOURCE /* setresuid, strndup */
#include "files.h"

TEST_TIMEOUT(120); /* seconds per test in this file */

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
