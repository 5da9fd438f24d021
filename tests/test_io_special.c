/* test_io_special.c -- a save never replaces what is not a regular file (lib/io.c): a
 * FIFO, a directory or a device at the target is refused before anything is written,
 * and a symlink to a regular file still has its target replaced. */
#define _GNU_SOURCE /* mknod, makedev */
#include "files.h"

#include <sys/sysmacros.h>

TEST_TIMEOUT(60);

/* Saves to `path` (made by the caller) fail with ULPT_ERR_IO naming the path and "not a
 * regular file", and leave it what it was (`kind`), with no temporary file beside it. */
static void save_is_refused(const char *path, mode_t kind)
{
    ulpt_prompt *p = varied_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_save(p, path, NULL), ULPT_ERR_IO);
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), path));
    ck_assert_ptr_nonnull(strstr(ulpt_last_error(), "not a regular file"));
    ck_assert_int_eq(ulpt_checkpoint_save(p, o, path), ULPT_ERR_IO);
    ck_assert_int_eq(ulpt_prompt_export_safetensors(p, path), ULPT_ERR_IO);
    struct stat st;
    ck_assert_int_eq(lstat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & S_IFMT, kind);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; (e = readdir(d));)
        ck_assert_ptr_null(strstr(e->d_name, ".ulpt-tmp-"));
    closedir(d);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

TEST(saving_over_a_fifo_is_refused_and_the_fifo_stays)
{
    const char *fifo = scratch("special-fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    save_is_refused(fifo, S_IFIFO);
}

TEST(saving_over_a_symlink_to_a_fifo_is_refused)
{
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s", scratch("special-fifo2"));
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    const char *link = scratch("special-to-fifo");
    ck_assert_int_eq(symlink(fifo, link), 0);
    save_is_refused(link, S_IFLNK);
    struct stat st;
    ck_assert_int_eq(lstat(fifo, &st), 0);
    ck_assert(S_ISFIFO(st.st_mode));
}

TEST(saving_over_a_directory_is_refused)
{
    const char *dir = scratch("special-dir");
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    save_is_refused(dir, S_IFDIR);
}

/* A character device where the test may make one (root): a private copy of /dev/null,
 * which a save as root used to replace with a regular file. */
TEST(saving_over_a_device_node_is_refused)
{
    const char *dev = scratch("special-null");
    if (mknod(dev, S_IFCHR | 0666, makedev(1, 3)) != 0) {
        ck_assert_int_eq(errno, EPERM); /* not root: the FIFO tests cover the same path */
        return;
    }
    save_is_refused(dev, S_IFCHR);
}

TEST(saving_through_a_symlink_to_a_regular_file_replaces_the_file)
{
    char target[512];
    snprintf(target, sizeof target, "%s", scratch("special-target.ulpt"));
    FILE *f = fopen(target, "wb");
    ck_assert_ptr_nonnull(f);
    fputs("old", f);
    fclose(f);
    const char *link = scratch("special-link.ulpt");
    ck_assert_int_eq(symlink(target, link), 0);
    ulpt_prompt *p = varied_prompt(4, 2, 8, 1, ULPT_PROJ_XAVIER_UNIFORM, 0), *q;
    ck_assert_int_eq(ulpt_prompt_save(p, link, NULL), ULPT_OK);
    struct stat st;
    ck_assert_int_eq(lstat(link, &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    ck_assert_int_eq(ulpt_prompt_load(&q, target), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(q), ulpt_prompt_params(p),
                     ulpt_prompt_num_params(p) * sizeof(float));
    ulpt_prompt_free(q);
    ulpt_prompt_free(p);
}
