/* fuzz_tlm.c -- the example host's .tlm weights from arbitrary bytes (tlm_load_buffer);
 * what loads must run forward and backward. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "tinylm.h"

#define HEADER 136 /* docs/TINYLM.md: the .tlm header */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Inputs whose last byte is even get the length field and CRC made right, so that
     * mutations reach the configuration checks and the inflater instead of stopping at
     * the checksum; the others test the checksum. */
    uint8_t *b = malloc(size ? size : 1);
    if (!b)
        abort();
    memcpy(b, data, size);
    if (size >= HEADER + 4 && (data[size - 1] & 1) == 0) {
        uint64_t z_len = size - HEADER - 4;
        for (int i = 0; i < 8; i++)
            b[128 + i] = (uint8_t)(z_len >> (8 * i));
        uint32_t crc = (uint32_t)crc32_z(0, b, size - 4);
        for (int i = 0; i < 4; i++)
            b[size - 4 + i] = (uint8_t)(crc >> (8 * i));
    }
    tlm_model *m = NULL;
    if (tlm_load_buffer(&m, b, size) == 0) {
        const tlm_config *c = tlm_config_of(m);
        uint32_t n = c->max_len < 3 ? c->max_len : 3;
        float *rows = calloc((size_t)n * c->width, sizeof(float));
        float *drows = calloc((size_t)n * c->width, sizeof(float));
        if (!rows || !drows)
            abort();
        for (size_t k = 0; k < (size_t)n * c->width; k++)
            rows[k] = (float)(k % 7) * 0.1f;
        uint8_t labels[2] = { 0, (uint8_t)(c->vocab > 1 ? 1 : 0) };
        double loss = tlm_class_loss(m, rows, n, labels, c->vocab > 1 ? 2 : 1, 0, drows, NULL);
        (void)loss; /* weights from the input may make it NaN; it must not crash */
        free(rows);
        free(drows);
        tlm_free(m);
    } else if (m) {
        abort(); /* a failed load leaves *out alone */
    }
    free(b);
    return 0;
}
