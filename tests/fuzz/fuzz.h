/* fuzz.h -- what the libFuzzer targets share: bytes in, a file path out, and the rule
 * that anything the library accepts must be usable. */
#ifndef ULPT_FUZZ_H
#define ULPT_FUZZ_H

#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "ulpt.h"

/* The input as a file without touching the disk: a memfd, named through /proc. */
static inline int fuzz_file(const uint8_t *data, size_t size, char *path, size_t path_size)
{
    int fd = memfd_create("ulpt-fuzz", MFD_CLOEXEC);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size)
        abort();
    snprintf(path, path_size, "/proc/self/fd/%d", fd);
    return fd;
}

/* A copy of the input with the length field and CRC made right, so that mutations
 * reach the section parser instead of stopping at the checksum.  NULL if too short. */
static inline uint8_t *fuzz_reseal(const uint8_t *data, size_t size)
{
    if (size < 28)
        return NULL;
    uint8_t *b = malloc(size);
    if (!b)
        abort();
    memcpy(b, data, size);
    for (int i = 0; i < 8; i++)
        b[16 + i] = (uint8_t)((uint64_t)size >> (8 * i));
    uint32_t crc = (uint32_t)crc32(0, b, (uInt)(size - 4));
    for (int i = 0; i < 4; i++)
        b[size - 4 + i] = (uint8_t)(crc >> (8 * i));
    return b;
}

/* A prompt the library accepted must work: forward and a save round trip. */
static inline void fuzz_use(ulpt_prompt *p)
{
    size_t n = (size_t)ulpt_prompt_n_tokens(p) * ulpt_prompt_dim(p);
    float *e = malloc(n * sizeof *e);
    if (!e || ulpt_prompt_forward(p, e, ulpt_prompt_dim(p)) != ULPT_OK)
        abort();
    free(e);
    void *buf;
    size_t len;
    ulpt_prompt *q;
    if (ulpt_prompt_save_buffer(p, &buf, &len, NULL) != ULPT_OK ||
        ulpt_prompt_load_buffer(&q, buf, len) != ULPT_OK)
        abort();
    ulpt_free(buf);
    ulpt_prompt_free(q);
}

#endif
