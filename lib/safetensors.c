/* safetensors.c -- the materialised prompt as a safetensors file, the tensor a PEFT
 * prompt-tuning adapter stores, so stacks that know only vanilla soft prompts can serve
 * a ULPT prompt.
 *
 * safetensors: u64 little-endian N, then N bytes of JSON header (padded with spaces to a
 * multiple of 8), then the tensor data; offsets in the header are relative to the data. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

int ulpt_prompt_export_safetensors(const ulpt_prompt *p, const char *path)
{
    if (!p || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : "path");
    const size_t nd = (size_t)p->n * p->d, bytes = nd * sizeof(float);
    char header[256];
    int hl = snprintf(header, sizeof header,
                      "{\"__metadata__\":{\"format\":\"pt\"},\"prompt_embeddings\":{\"dtype\":"
                      "\"F32\",\"shape\":[%u,%u],\"data_offsets\":[0,%zu]}}",
                      p->n, p->d, bytes);
    size_t padded = ((size_t)hl + 7) / 8 * 8;
    if (bytes > SIZE_MAX - 8 - padded)
        return ULPT_FAIL(ULPT_ERR_INVALID, "the prompt is too large to export");
    size_t total = 8 + padded + bytes;
    ulpt_allocator a = ulpt__allocator();
    unsigned char *buf = ulpt__alloc(&a, total);
    if (!buf)
        return ULPT_FAIL(ULPT_ERR_NOMEM, "no memory for a %zu-byte file", total);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, (size_t)hl);
    memset(buf + 8 + hl, ' ', padded - (size_t)hl);
    float *e = (float *)(void *)(buf + 8 + padded); /* 8-aligned by construction */
    int rc = ulpt__prompt_forward(__func__, p, e, p->d); /* refuses NaN parameters */
    if (rc != ULPT_OK) {
        ulpt__free(&a, buf);
        return rc;
    }
    for (size_t i = 0; i < nd; i++) { /* little-endian on every host */
        uint32_t u;
        memcpy(&u, &e[i], 4);
        unsigned char *q = (unsigned char *)&e[i];
        q[0] = (unsigned char)u, q[1] = (unsigned char)(u >> 8);
        q[2] = (unsigned char)(u >> 16), q[3] = (unsigned char)(u >> 24);
    }
    rc = ulpt__write_atomic(__func__, path, buf, total);
    ulpt__free(&a, buf);
    return rc;
}
