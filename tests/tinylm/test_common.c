/* test_common.c -- what the example hosts share (examples/common): option values and
 * command lines, the one-line errors, the program's directory, the task files and the
 * order their examples are drawn in. */
#define _POSIX_C_SOURCE 200809L /* fileno */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"
#undef fail /* Check's old fail() macro; this file tests the examples' function */
#include "cli.h"
#include "task.h"

/* ---- stderr captured: what fail() wrote between capture() and captured() ------------- */

static FILE *capture_file;
static int saved_stderr = -1;

static void capture(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/stderr-%d.txt", test_dir(), (int)getpid());
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    capture_file = fopen(path, "w+");
    ck_assert_ptr_nonnull(capture_file);
    unlink(path);
    ck_assert_int_ge(dup2(fileno(capture_file), STDERR_FILENO), 0);
}

static const char *captured(void)
{
    static char text[8192];
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    rewind(capture_file);
    size_t n = fread(text, 1, sizeof text - 1, capture_file);
    text[n] = '\0';
    fclose(capture_file);
    return text;
}

/* ---- errors and option values -------------------------------------------------------- */

TEST(fail_writes_one_named_line_and_returns_1)
{
    cli_set_name("tune_mpi: rank 3");
    capture();
    int rc = fail("bad %s", "thing");
    ck_assert_str_eq(captured(), "tune_mpi: rank 3: bad thing\n");
    ck_assert_int_eq(rc, 1);
    static char big[6000];
    memset(big, 'x', sizeof big - 1);
    capture();
    fail("%s", big);
    const char *cut = captured(); /* one pipe write at most, the newline kept */
    ck_assert_uint_eq(strlen(cut), 4095);
    ck_assert_ptr_eq(strchr(cut, '\n'), cut + 4094);
}

TEST(parse_u32_takes_plain_decimals_in_range_only)
{
    uint32_t v = 7;
    ck_assert_int_eq(parse_u32("0", 0, 10, &v, "--n"), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(parse_u32("4294967295", 0, UINT32_MAX, &v, "--n"), 0);
    ck_assert_uint_eq(v, UINT32_MAX);
    static const char *bad[] = { "", "-1", "+1", " 1", "1 ", "1x", "0x10", "11", "4294967296",
                                 "99999999999999999999999" };
    cli_set_name("t");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 5;
        capture();
        int rc = parse_u32(bad[i], 1, 10, &v, "--n");
        const char *msg = captured();
        ck_assert_msg(rc == 1, "\"%s\" accepted", bad[i]);
        ck_assert_uint_eq(v, 5); /* untouched */
        char want[256];
        snprintf(want, sizeof want, "t: --n must be an integer in [1, 10], not \"%s\"\n", bad[i]);
        ck_assert_str_eq(msg, want);
    }
    uint64_t w = 0;
    ck_assert_int_eq(parse_u64("18446744073709551615", 0, UINT64_MAX, &w, "SEED"), 0);
    ck_assert(w == UINT64_MAX);
    capture();
    ck_assert_int_eq(parse_u64("18446744073709551616", 0, UINT64_MAX, &w, "SEED"), 1);
    captured();
}

TEST(parse_real_takes_finite_numbers_above_0_or_from_0)
{
    double v = 9;
    ck_assert_int_eq(parse_real("1e-3", 0, &v, "--eps"), 0);
    ck_assert(v == 1e-3);
    ck_assert_int_eq(parse_real("0", 1, &v, "--init-std"), 0);
    ck_assert(v == 0);
    static const char *bad[] = { "0", "-1", "nan", "inf", "1e999", "", "1.5x", "0x" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = 9;
        capture();
        int rc = parse_real(bad[i], 0, &v, "--lr");
        const char *msg = captured();
        ck_assert_msg(rc == 1 && v == 9, "\"%s\" accepted", bad[i]);
        ck_assert_ptr_nonnull(strstr(msg, "--lr must be a positive number"));
    }
    capture();
    ck_assert_int_eq(parse_real("-0.5", 1, &v, "--init-std"), 1);
    ck_assert_ptr_nonnull(strstr(captured(), "finite, non-negative"));
}

/* ---- command lines ------------------------------------------------------------------- */

typedef struct {
    const char *model;
    uint32_t steps;
    uint64_t seed;
    double lr, eps;
    int quiet;
} toy_options;

/* cli_parse of a command line given as one string of words separated by single spaces. */
static int parse(const char *line, toy_options *o, const char **operands, int *n)
{
    static char buf[1024];
    char *argv[32] = { "prog" };
    int argc = 1;
    snprintf(buf, sizeof buf, "%s", line);
    for (char *w = strtok(buf, " "); w && argc < 32; w = strtok(NULL, " "))
        argv[argc++] = w;
    *o = (toy_options){ .steps = 10, .lr = 0.5 };
    const cli_option table[] = {
        { "--model", CLI_STRING, &o->model, 0, 0 },
        { "--steps", CLI_U32, &o->steps, 1, 100 },
        { "--seed", CLI_U64, &o->seed, 0, UINT32_MAX },
        { "--lr", CLI_REAL, &o->lr, 0, 0 },
        { "--eps", CLI_REAL0, &o->eps, 0, 0 },
        { "--quiet", CLI_FLAG, &o->quiet, 0, 0 },
        { NULL, CLI_FLAG, NULL, 0, 0 },
    };
    capture();
    int rc = cli_parse(argc, argv, table, operands, 2, n);
    const char *msg = captured();
    ck_assert_msg(rc == 1 ? strchr(msg, '\n') == msg + strlen(msg) - 1 : !*msg,
                  "%s: rc %d, stderr \"%s\"", line, rc, msg);
    return rc;
}

TEST(cli_parse_sets_each_kind_and_collects_operands)
{
    toy_options o;
    const char *ops[2];
    int n;
    ck_assert_int_eq(parse("A --quiet --steps 7 --seed 4294967295 --lr 2e-2 --eps 0 B "
                           "--model m.tlm --steps 8", &o, ops, &n), 0);
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(ops[0], "A");
    ck_assert_str_eq(ops[1], "B");
    ck_assert_str_eq(o.model, "m.tlm");
    ck_assert_uint_eq(o.steps, 8); /* the later one wins */
    ck_assert(o.seed == UINT32_MAX && o.lr == 2e-2 && o.eps == 0 && o.quiet == 1);
    ck_assert_int_eq(parse("", &o, ops, &n), 0);
    ck_assert(n == 0 && o.steps == 10 && o.lr == 0.5 && !o.model && !o.quiet); /* defaults */
}

TEST(cli_parse_refuses_what_it_does_not_know)
{
    toy_options o;
    const char *ops[2];
    int n;
    ck_assert_int_eq(parse("A --help --bogus", &o, ops, &n), 3);
    ck_assert_int_eq(parse("-h", &o, ops, &n), 3);
    static const char *bad[] = { "--bogus 1", "A B C", "--steps", "--steps 0", "--steps x",
                                 "--lr 0", "--eps -1", "--seed 4294967296", "--model" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(parse(bad[i], &o, ops, &n) == 1, "\"%s\" accepted", bad[i]);
}

TEST(beside_program_names_a_file_in_the_programs_directory)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    ck_assert_int_gt(n, 0);
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    char want[4200];
    snprintf(want, sizeof want, "%s/tinylm.tlm", exe);
    ck_assert_str_eq(beside_program("tinylm.tlm", "fallback"), want);
    static char huge[5000];
    memset(huge, 'a', sizeof huge - 1);
    ck_assert_str_eq(beside_program(huge, "fallback"), "fallback"); /* no room: no cut path */
}

/* ---- the task files and the sampler -------------------------------------------------- */

static void write_file(const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_dir(), name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    ck_assert_int_eq(fclose(f), 0);
}

TEST(task_split_load_reads_labels_and_examples)
{
    write_file("ok.tsv", "#\tyes\tno\n1\tgood\n0\tbad one\n");
    task_split s;
    char err[512];
    ck_assert_int_eq(task_split_load(&s, test_dir(), "ok", 64, 256, err, sizeof err), 0);
    ck_assert_str_eq(s.names[0], "yes");
    ck_assert_str_eq(s.names[1], "no");
    ck_assert_uint_eq(s.n, 2);
    ck_assert_int_eq(s.ex[0].label, 1);
    ck_assert_uint_eq(s.ex[1].len, 7);
    ck_assert_int_eq(memcmp(s.ex[1].text, "bad one", 7), 0);
    task_split_free(&s);
    ck_assert(s.n == 0 && !s.ex && !s.blob);
}

TEST(task_split_load_refuses_each_malformed_line_by_number)
{
    static const struct {
        const char *text, *says;
    } bad[] = {
        { "#\tyes\tno\n1\tgood\n2\tthree\n", "bad.tsv:3: expected" },
        { "#\tyes\tyeah\n1\tx\n", "bad.tsv:1: expected" },
        { "yes\tno\n1\tx\n", "bad.tsv:1:" },
        { "#\tyes\tno\n1\tx", "bad.tsv:2: the last line has no newline" },
        { "#\tyes\tno\n1\t\n", "bad.tsv:2: expected" },
        { "#\tyes\tno\n1\ttoo long\n", "1..4 bytes" },
        { "#\tyes\tno\n1\t\x80\n", "byte 0x80 is past" },
        { "#\tyes\tno\n", "bad.tsv: no examples" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file("bad.tsv", bad[i].text);
        task_split s;
        char err[512] = "";
        ck_assert_int_eq(task_split_load(&s, test_dir(), "bad", 4, 128, err, sizeof err), -1);
        ck_assert_msg(strstr(err, bad[i].says), "case %zu: \"%s\"", i, err);
        ck_assert(s.n == 0 && !s.ex && !s.blob);
    }
    task_split s;
    char err[512];
    ck_assert_int_eq(task_split_load(&s, test_dir(), "missing", 4, 128, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "missing.tsv: No such file"));
}

TEST(task_name_is_the_last_component_made_safe)
{
    char name[8];
    task_name("x/names/", name, sizeof name);
    ck_assert_str_eq(name, "names");
    task_name("a\"b\\c\n", name, sizeof name);
    ck_assert_str_eq(name, "a_b_c_");
    task_name("/very/longname", name, sizeof name);
    ck_assert_str_eq(name, "longnam");
}

/* Every epoch is a permutation of the examples; the same seed gives the same batches
 * however they are cut; the order is task_shuffle's of the identity, epoch after epoch. */
TEST(sampler_draws_seeded_epochs_of_permutations)
{
    enum { N = 7, EPOCHS = 5 };
    task_example ex[N];
    task_split split = { .ex = ex, .n = N };
    task_sampler a, b;
    ck_assert_int_eq(task_sampler_init(&a, N, 42), 0);
    ck_assert_int_eq(task_sampler_init(&b, N, 42), 0);
    const task_example *one[N * EPOCHS], *cut[N * EPOCHS];
    task_sampler_next(&a, &split, one, N * EPOCHS);
    for (size_t at = 0, k = 1; at < N * EPOCHS; at += k, k = k % 4 + 1) { /* 1, 2, 3, 4, 1.. */
        k = at + k <= N * EPOCHS ? k : N * EPOCHS - at;
        task_sampler_next(&b, &split, cut + at, (uint32_t)k);
    }
    ck_assert_int_eq(memcmp(one, cut, sizeof one), 0);
    size_t idx[N];
    for (size_t i = 0; i < N; i++)
        idx[i] = i;
    uint64_t state = 42;
    int differs = 0;
    for (int e = 0; e < EPOCHS; e++) {
        task_shuffle(idx, N, &state);
        int seen[N] = { 0 };
        for (size_t i = 0; i < N; i++) {
            const size_t got = (size_t)(one[e * N + i] - ex);
            ck_assert_uint_eq(got, idx[i]);
            seen[got]++;
            differs |= e > 0 && one[e * N + i] != one[i];
        }
        for (size_t i = 0; i < N; i++)
            ck_assert_int_eq(seen[i], 1);
    }
    ck_assert(differs); /* each epoch is a fresh permutation */
    task_sampler_free(&a);
    task_sampler_free(&b);
    ck_assert(!a.order && a.n == 0);
}
