/* ulpt -- inspect, verify, convert and export libulpt prompt files.
 *
 *     ulpt info FILE...             ulpt convert --dtype f16|bf16|f32 IN OUT
 *     ulpt verify FILE...           ulpt export-peft IN DIR
 *     ulpt materialise IN OUT.npy   ulpt diff A B
 *
 * Errors: one line on stderr, exit status 1 (2 for usage errors; `diff` exits 1 when the
 * prompts differ and 2 on errors, as diff(1) does). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ulpt.h"

static const char *dtype_name(int dtype)
{
    return dtype == ULPT_DTYPE_F16 ? "f16" : dtype == ULPT_DTYPE_BF16 ? "bf16" : "f32";
}

static const char *kind_name(int kind)
{
    static const char *names[] = { "xavier_uniform", "kaiming_uniform", "gaussian", "rademacher",
                                   "identity" };
    return kind >= 0 && kind <= ULPT_PROJ_IDENTITY ? names[kind] : "unknown";
}

static int fail(const char *what)
{
    fprintf(stderr, "ulpt: %s: %s\n", what, ulpt_last_error());
    return 1;
}

static int wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return 1;
    return 0;
}

static int usage_error(const char *usage)
{
    fprintf(stderr, "usage: %s\n", usage);
    return 2;
}

/* ---- info ------------------------------------------------------------------------- */

static const char INFO_USAGE[] = "ulpt info FILE...";
static const char INFO_HELP[] =
    "Print each prompt file's shape, projection, trainable parameters, storage type, size,\n"
    "metadata and checksum status.  Exit status 1 if any file cannot be read.\n";

static int cmd_info(int argc, char **argv)
{
    if (argc < 1)
        return usage_error(INFO_USAGE);
    int status = 0;
    for (int i = 0; i < argc; i++) {
        ulpt_file_info fi = ULPT_FILE_INFO_INIT;
        ulpt_prompt *p;
        if (ulpt_file_inspect(argv[i], &fi) != ULPT_OK || ulpt_prompt_load(&p, argv[i]) != ULPT_OK) {
            fprintf(stderr, "ulpt info: %s\n", ulpt_last_error());
            status = 1;
            continue;
        }
        uint32_t n = ulpt_prompt_n_tokens(p), d = ulpt_prompt_dim(p);
        const ulpt_projection *pr = ulpt_prompt_projection(p, 0);
        unsigned flags = ulpt_prompt_flags(p);
        printf("%s\n", argv[i]);
        printf("  kind:         %s, format %u.%u\n",
               fi.kind == ULPT_FILE_CHECKPOINT ? "checkpoint" : "prompt", fi.format_major,
               fi.format_minor);
        printf("  shape:        %u tokens x rank %u -> dim %u, %u group(s)%s%s\n", n,
               ulpt_prompt_rank(p), d, ulpt_prompt_n_groups(p),
               flags & ULPT_NO_SCALE ? ", no scale" : "", flags & ULPT_NO_SHIFT ? ", no shift" : "");
        printf("  projection:   %s, seed %llu\n", kind_name(ulpt_projection_kind(pr)),
               (unsigned long long)ulpt_projection_seed(pr));
        printf("  parameters:   %zu trainable (vanilla prompt tuning: %llu, %.2f%%)\n",
               ulpt_prompt_num_params(p), (unsigned long long)n * d,
               100.0 * (double)ulpt_prompt_num_params(p) / ((double)n * d));
        printf("  storage:      %s, %llu bytes of parameters, %llu bytes in all\n",
               dtype_name(fi.dtype), (unsigned long long)fi.stored_bytes,
               (unsigned long long)fi.file_bytes);
        printf("  checksum:     ok\n");
        for (size_t k = 0; k < ulpt_prompt_meta_count(p); k++) {
            const char *key, *value;
            ulpt_prompt_meta_at(p, k, &key, &value);
            printf("  meta %-8s %s\n", key, value);
        }
        ulpt_prompt_free(p);
    }
    return status;
}

/* ---- verify ----------------------------------------------------------------------- */

static const char VERIFY_USAGE[] = "ulpt verify FILE...";
static const char VERIFY_HELP[] =
    "Check each file completely (checksum, sizes, projection fingerprint); print 'FILE: ok'\n"
    "on stdout, or the reason it is refused on stderr.  Exit status 0 only if every file\n"
    "is good.\n";

static int cmd_verify(int argc, char **argv)
{
    if (argc < 1)
        return usage_error(VERIFY_USAGE);
    int status = 0;
    for (int i = 0; i < argc; i++) {
        ulpt_file_info fi = ULPT_FILE_INFO_INIT;
        int rc = ulpt_file_inspect(argv[i], &fi);
        if (rc == ULPT_OK) {
            printf("%s: ok\n", argv[i]);
        } else {
            fprintf(stderr, "%s: %s (%s)\n", argv[i], ulpt_strerror(rc), ulpt_last_error());
            status = 1;
        }
    }
    return status;
}

/* ---- convert ---------------------------------------------------------------------- */

static const char CONVERT_USAGE[] = "ulpt convert --dtype f16|bf16|f32 [--level 0-9] IN OUT";
static const char CONVERT_HELP[] =
    "Rewrite a prompt file with another storage type (f32 is exact; f16 and bf16 halve the\n"
    "size) and zlib level (default 6).  OUT is replaced atomically; it may equal IN.  From\n"
    "a checkpoint, OUT gets the prompt only (the optimizer state stays behind), so OUT may\n"
    "not be the checkpoint itself.\n";

static int cmd_convert(int argc, char **argv)
{
    ulpt_save_options so = ULPT_SAVE_OPTIONS_INIT;
    int have_dtype = 0, i = 0;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (!strcmp(argv[i], "--dtype")) {
            const char *t = argv[i + 1];
            so.dtype = !strcmp(t, "f32") ? ULPT_DTYPE_F32 : !strcmp(t, "f16") ? ULPT_DTYPE_F16
                     : !strcmp(t, "bf16") ? ULPT_DTYPE_BF16 : -1;
            if (so.dtype < 0) {
                fprintf(stderr, "ulpt convert: unknown dtype '%s' (f32, f16 or bf16)\n", t);
                return 2;
            }
            have_dtype = 1;
        } else if (!strcmp(argv[i], "--level")) {
            char *end;
            long level = strtol(argv[i + 1], &end, 10);
            if (*end || level < 0 || level > 9) {
                fprintf(stderr, "ulpt convert: --level takes 0 to 9, not '%s'\n", argv[i + 1]);
                return 2;
            }
            so.level = (int)level;
        } else {
            break;
        }
    }
    if (!have_dtype || argc - i != 2)
        return usage_error(CONVERT_USAGE);
    ulpt_file_info fi = ULPT_FILE_INFO_INIT;
    if (ulpt_file_inspect(argv[i], &fi) != ULPT_OK)
        return fail(argv[i]);
    if (fi.kind == ULPT_FILE_CHECKPOINT) {
        struct stat a, b;
        if (stat(argv[i], &a) == 0 && stat(argv[i + 1], &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino) {
            fprintf(stderr, "ulpt convert: %s is a checkpoint; writing its prompt over it would "
                            "lose the optimizer state\n", argv[i]);
            return 1;
        }
        fprintf(stderr, "ulpt convert: note: %s is a checkpoint; %s gets its prompt only\n",
                argv[i], argv[i + 1]);
    }
    ulpt_prompt *p;
    if (ulpt_prompt_load(&p, argv[i]) != ULPT_OK)
        return fail(argv[i]);
    int rc = ulpt_prompt_save(p, argv[i + 1], &so);
    ulpt_prompt_free(p);
    return rc ? fail(argv[i + 1]) : 0;
}

/* ---- export-peft ------------------------------------------------------------------ */

static const char PEFT_USAGE[] = "ulpt export-peft IN DIR";
static const char PEFT_HELP[] =
    "Write DIR/adapter_model.safetensors (the materialised prompt as 'prompt_embeddings',\n"
    "F32, [n_tokens, dim]) and DIR/adapter_config.json (peft_type PROMPT_TUNING), the layout\n"
    "of a Hugging Face PEFT prompt-tuning adapter.  The base model comes from the file's\n"
    "'model' metadata.  DIR is created if needed.\n";

/* The length of the well-formed UTF-8 sequence at s (RFC 3629), or 0. */
static int utf8_length(const unsigned char *s)
{
    int n = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
          : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((n == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f))) ||
        (n == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))))
        return 0; /* overlong, surrogate or past U+10FFFF */
    return n;
}

/* s as a JSON string: quotes, backslashes and control characters escaped, and any byte
 * that is not well-formed UTF-8 replaced by U+FFFD, so the file always parses. */
static void json_string(FILE *f, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', f);
    while (*s) {
        int n = utf8_length(s);
        if (n == 0) {
            fputs("\\ufffd", f);
            s++;
        } else if (*s == '"' || *s == '\\') {
            fprintf(f, "\\%c", *s++);
        } else if (*s < 0x20) {
            fprintf(f, "\\u%04x", *s++);
        } else {
            fwrite(s, 1, (size_t)n, f);
            s += n;
        }
    }
    fputc('"', f);
}

static int cmd_export_peft(int argc, char **argv)
{
    if (argc != 2)
        return usage_error(PEFT_USAGE);
    ulpt_prompt *p;
    if (ulpt_prompt_load(&p, argv[0]) != ULPT_OK)
        return fail(argv[0]);
    const char *dir = argv[1];
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "ulpt export-peft: cannot create %s: %s\n", dir, strerror(errno));
        ulpt_prompt_free(p);
        return 1;
    }
    size_t len = strlen(dir) + 64;
    char *path = malloc(len), *tmp = malloc(len + 8);
    int status = 1;
    snprintf(path, len, "%s/adapter_model.safetensors", dir);
    if (ulpt_prompt_export_safetensors(p, path) != ULPT_OK) {
        fail(path);
        goto done;
    }
    snprintf(path, len, "%s/adapter_config.json", dir);
    snprintf(tmp, len + 8, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "ulpt export-peft: cannot write %s: %s\n", tmp, strerror(errno));
        goto done;
    }
    const char *model = ulpt_prompt_get_meta(p, "model");
    fprintf(f, "{\n  \"peft_type\": \"PROMPT_TUNING\",\n  \"task_type\": \"CAUSAL_LM\",\n");
    fprintf(f, "  \"num_virtual_tokens\": %u,\n  \"token_dim\": %u,\n", ulpt_prompt_n_tokens(p),
            ulpt_prompt_dim(p));
    fprintf(f, "  \"num_transformer_submodules\": 1,\n  \"prompt_tuning_init\": \"RANDOM\",\n");
    fprintf(f, "  \"inference_mode\": true,\n  \"base_model_name_or_path\": ");
    if (model)
        json_string(f, model);
    else
        fputs("null", f);
    fputs("\n}\n", f);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "ulpt export-peft: cannot write %s: %s\n", path, strerror(errno));
        unlink(tmp);
        goto done;
    }
    if (!model)
        fprintf(stderr, "ulpt export-peft: warning: %s has no 'model' metadata; "
                        "base_model_name_or_path is null\n", argv[0]);
    status = 0;
done:
    free(path);
    free(tmp);
    ulpt_prompt_free(p);
    return status;
}

/* ---- materialise ------------------------------------------------------------------ */

static const char NPY_USAGE[] = "ulpt materialise IN OUT.npy";
static const char NPY_HELP[] =
    "Write the prompt's embeddings E (n_tokens x dim, float32) as a NumPy .npy file.\n";

static int cmd_materialise(int argc, char **argv)
{
    if (argc != 2)
        return usage_error(NPY_USAGE);
    ulpt_prompt *p;
    if (ulpt_prompt_load(&p, argv[0]) != ULPT_OK)
        return fail(argv[0]);
    uint32_t n = ulpt_prompt_n_tokens(p), d = ulpt_prompt_dim(p);
    float *e = malloc((size_t)n * d * sizeof *e);
    if (!e) {
        fprintf(stderr, "ulpt materialise: out of memory\n");
        ulpt_prompt_free(p);
        return 1;
    }
    ulpt_prompt_forward(p, e, d);
    /* .npy 1.0: magic, version, u16 header length, a dict padded so data is 64-aligned */
    char header[128];
    int hl = snprintf(header, sizeof header,
                      "{'descr': '<f4', 'fortran_order': False, 'shape': (%u, %u), }", n, d);
    int total = (10 + hl + 1 + 63) / 64 * 64;
    memset(header + hl, ' ', (size_t)(total - 10 - hl - 1));
    header[total - 10 - 1] = '\n';
    unsigned char pre[10] = { 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(total - 10),
                              (unsigned char)((total - 10) >> 8) };
    int status = 0;
    size_t tlen = strlen(argv[1]) + 8;
    char *tmp = malloc(tlen);
    if (!tmp) {
        free(e);
        ulpt_prompt_free(p);
        return 1;
    }
    snprintf(tmp, tlen, "%s.tmp", argv[1]); /* written whole, then renamed into place */
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(pre, 1, 10, f) == 10 &&
             fwrite(header, 1, (size_t)(total - 10), f) == (size_t)(total - 10) &&
             fwrite(e, sizeof *e, (size_t)n * d, f) == (size_t)n * d;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, argv[1]) != 0) {
        fprintf(stderr, "ulpt materialise: cannot write %s: %s\n", argv[1], strerror(errno));
        unlink(tmp);
        status = 1;
    }
    free(tmp);
    free(e);
    ulpt_prompt_free(p);
    return status;
}

/* ---- diff ------------------------------------------------------------------------- */

static const char DIFF_USAGE[] = "ulpt diff A B";
static const char DIFF_HELP[] =
    "Compare two prompt files: shape, projection, metadata, and the largest absolute\n"
    "difference of Z, scale, shift and of the embeddings E.  Exit status 0 if identical,\n"
    "1 if they differ, 2 on error.\n";

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d)
            m = d;
    }
    return m;
}

static int cmd_diff(int argc, char **argv)
{
    if (argc != 2)
        return usage_error(DIFF_USAGE);
    ulpt_prompt *a, *b;
    if (ulpt_prompt_load(&a, argv[0]) != ULPT_OK)
        return fail(argv[0]) + 1;
    if (ulpt_prompt_load(&b, argv[1]) != ULPT_OK) {
        ulpt_prompt_free(a);
        return fail(argv[1]) + 1;
    }
    int differ = 0;
    const ulpt_projection *pa = ulpt_prompt_projection(a, 0), *pb = ulpt_prompt_projection(b, 0);
    if (ulpt_prompt_n_tokens(a) != ulpt_prompt_n_tokens(b) || ulpt_prompt_rank(a) != ulpt_prompt_rank(b) ||
        ulpt_prompt_dim(a) != ulpt_prompt_dim(b) || ulpt_prompt_n_groups(a) != ulpt_prompt_n_groups(b) ||
        ulpt_prompt_flags(a) != ulpt_prompt_flags(b) ||
        ulpt_projection_kind(pa) != ulpt_projection_kind(pb) ||
        ulpt_projection_seed(pa) != ulpt_projection_seed(pb)) {
        printf("shape or projection differ: %u x %u -> %u (%s, seed %llu) vs %u x %u -> %u (%s, seed %llu)\n",
               ulpt_prompt_n_tokens(a), ulpt_prompt_rank(a), ulpt_prompt_dim(a),
               kind_name(ulpt_projection_kind(pa)), (unsigned long long)ulpt_projection_seed(pa),
               ulpt_prompt_n_tokens(b), ulpt_prompt_rank(b), ulpt_prompt_dim(b),
               kind_name(ulpt_projection_kind(pb)), (unsigned long long)ulpt_projection_seed(pb));
        differ = 1;
    } else {
        size_t nz = (size_t)ulpt_prompt_n_tokens(a) * ulpt_prompt_rank(a), d = ulpt_prompt_dim(a);
        unsigned flags = ulpt_prompt_flags(a);
        const float *xa = ulpt_prompt_params(a), *xb = ulpt_prompt_params(b);
        double dz = max_abs_diff(xa, xb, nz), ds = 0, db = 0;
        size_t at = nz;
        if (!(flags & ULPT_NO_SCALE))
            ds = max_abs_diff(xa + at, xb + at, d), at += d;
        if (!(flags & ULPT_NO_SHIFT))
            db = max_abs_diff(xa + at, xb + at, d);
        size_t nd = (size_t)ulpt_prompt_n_tokens(a) * d;
        float *ea = malloc(nd * sizeof *ea), *eb = malloc(nd * sizeof *eb);
        double de = 0;
        if (ea && eb) {
            ulpt_prompt_forward(a, ea, d);
            ulpt_prompt_forward(b, eb, d);
            de = max_abs_diff(ea, eb, nd);
        }
        free(ea);
        free(eb);
        if (dz || ds || db || de) {
            printf("parameters differ: max |dZ| %.3g, |ds| %.3g, |db| %.3g; embeddings max |dE| %.3g\n",
                   dz, ds, db, de);
            differ = 1;
        }
    }
    size_t na = ulpt_prompt_meta_count(a), nb = ulpt_prompt_meta_count(b);
    for (size_t k = 0; k < na; k++) {
        const char *key, *va;
        ulpt_prompt_meta_at(a, k, &key, &va);
        const char *vb = ulpt_prompt_get_meta(b, key);
        if (!vb || strcmp(va, vb)) {
            printf("meta %s: \"%s\" vs %s%s%s\n", key, va, vb ? "\"" : "", vb ? vb : "(absent)",
                   vb ? "\"" : "");
            differ = 1;
        }
    }
    for (size_t k = 0; k < nb; k++) {
        const char *key, *vb;
        ulpt_prompt_meta_at(b, k, &key, &vb);
        if (!ulpt_prompt_get_meta(a, key)) {
            printf("meta %s: (absent) vs \"%s\"\n", key, vb);
            differ = 1;
        }
    }
    if (!differ)
        printf("identical\n");
    ulpt_prompt_free(a);
    ulpt_prompt_free(b);
    return differ;
}

/* ---- main ------------------------------------------------------------------------- */

static const struct {
    const char *name, *usage, *help;
    int (*run)(int, char **);
} commands[] = {
    { "info", INFO_USAGE, INFO_HELP, cmd_info },
    { "verify", VERIFY_USAGE, VERIFY_HELP, cmd_verify },
    { "convert", CONVERT_USAGE, CONVERT_HELP, cmd_convert },
    { "export-peft", PEFT_USAGE, PEFT_HELP, cmd_export_peft },
    { "materialise", NPY_USAGE, NPY_HELP, cmd_materialise },
    { "diff", DIFF_USAGE, DIFF_HELP, cmd_diff },
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void overview(FILE *f)
{
    fprintf(f, "ulpt %s -- tools for libulpt prompt files\n\nusage:\n", ulpt_version_string());
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %s\n", commands[i].usage);
    fprintf(f, "\n'ulpt COMMAND --help' describes a command; see also ulpt(1).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        overview(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        overview(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("ulpt %s\n", ulpt_version_string());
        return 0;
    }
    /* the API's spelling; the one of 1.1 stays, so that scripts keep working */
    if (!strcmp(argv[1], "materialize"))
        argv[1] = "materialise";
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], commands[i].name) != 0)
            continue;
        if (wants_help(argc - 2, argv + 2)) {
            printf("usage: %s\n\n%s", commands[i].usage, commands[i].help);
            return 0;
        }
        return commands[i].run(argc - 2, argv + 2);
    }
    fprintf(stderr, "ulpt: unknown command '%s' (try 'ulpt --help')\n", argv[1]);
    return 2;
}
