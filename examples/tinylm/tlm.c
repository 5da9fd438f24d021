/* tlm.c -- the tinylm command line.
 *
 *     tlm init OUT.tlm SEED         random weights (TLM_CONFIG_DEFAULT), saved
 *     tlm logits MODEL.tlm TEXTFILE the logits of every byte of TEXTFILE (n <= T) on
 *                                   stdout: n x V float32, little-endian, row-major
 *     tlm info MODEL.tlm            configuration and training record
 *
 * Errors: one line on stderr, exit status 1 (2 for usage). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tinylm.h"

static int usage(void)
{
    fputs("usage: tlm init OUT.tlm SEED | tlm logits MODEL.tlm TEXTFILE | tlm info MODEL.tlm\n",
          stderr);
    return 2;
}

static int cmd_init(const char *path, const char *seed_text)
{
    uint64_t seed;
    if (parse_u64(seed_text, 0, UINT64_MAX, &seed, "SEED"))
        return 1;
    tlm_config cfg = TLM_CONFIG_DEFAULT;
    tlm_model *m;
    if (tlm_create_random(&m, &cfg, seed))
        return fail("%s", tlm_last_error());
    int rc = tlm_save(m, path, seed, 0, "");
    tlm_free(m);
    return rc ? fail("%s", tlm_last_error()) : 0;
}

/* The whole text, refused when it is empty or has more than max_len bytes. */
static uint8_t *read_text(const char *path, uint32_t max_len, uint32_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail("%s: %s", path, strerror(errno));
        return NULL;
    }
    uint8_t *buf = malloc((size_t)max_len + 1);
    size_t got = buf ? fread(buf, 1, (size_t)max_len + 1, f) : 0;
    int bad = !buf || ferror(f);
    fclose(f);
    if (bad)
        fail("%s: %s", path, buf ? "read failed" : "out of memory");
    else if (got == 0 || got > max_len) {
        if (got)
            fail("%s: more than %u bytes, the model's maximum length", path, (unsigned)max_len);
        else
            fail("%s: empty; there is nothing to score", path);
        bad = 1;
    }
    if (bad) {
        free(buf);
        return NULL;
    }
    *n = (uint32_t)got;
    return buf;
}

static int write_le_floats(const float *x, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                              (unsigned char)(u >> 24)};
        if (fwrite(b, 1, 4, stdout) != 4)
            return -1;
    }
    return fflush(stdout);
}

static int cmd_logits(const char *model_path, const char *text_path)
{
    tlm_model *m;
    if (tlm_load(&m, model_path))
        return fail("%s", tlm_last_error());
    const tlm_config *c = tlm_config_of(m);
    uint32_t n = 0;
    uint8_t *text = read_text(text_path, c->max_len, &n);
    float *rows = NULL, *logits = NULL;
    int rc = 1;
    if (!text)
        goto done;
    rows = malloc((size_t)n * c->width * sizeof *rows);
    logits = malloc((size_t)n * c->vocab * sizeof *logits);
    if (!rows || !logits) {
        fail("out of memory");
        goto done;
    }
    for (uint32_t t = 0; t < n; t++) {
        const float *e = tlm_token_embedding(m, text[t]);
        if (!e) {
            fail("%s: byte %u is outside the model's vocabulary", text_path, text[t]);
            goto done;
        }
        memcpy(rows + (size_t)t * c->width, e, c->width * sizeof *rows);
    }
    if (tlm_forward(m, rows, n, logits)) {
        fail("%s", tlm_last_error());
        goto done;
    }
    if (write_le_floats(logits, (size_t)n * c->vocab)) {
        fail("writing the logits: %s", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(text), free(rows), free(logits);
    tlm_free(m);
    return rc;
}

static int cmd_info(const char *path)
{
    tlm_model *m;
    if (tlm_load(&m, path))
        return fail("%s", tlm_last_error());
    const tlm_config *c = tlm_config_of(m);
    const tlm_meta *meta = tlm_meta_of(m);
    printf("%s: tinylm V=%u C=%u L=%u H=%u F=%u T=%u, %zu parameters\n", path, c->vocab, c->width,
           c->layers, c->heads, c->mlp, c->max_len, tlm_num_params(m));
    printf("trained from seed %" PRIu64 " for %" PRIu64 " steps on \"%s\"\n", meta->seed,
           meta->steps, meta->corpus);
    tlm_free(m);
    return fflush(stdout) ? fail("writing: %s", strerror(errno)) : 0;
}

int main(int argc, char **argv)
{
    cli_set_name("tlm");
    if (argc == 4 && strcmp(argv[1], "init") == 0)
        return cmd_init(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "logits") == 0)
        return cmd_logits(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "info") == 0)
        return cmd_info(argv[2]);
    return usage();
}
