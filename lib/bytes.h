/* bytes.h -- little-endian fields, the byte order of every file libulpt writes, on any
 * host.  Inline: the tensor codec calls them per element. */
#ifndef ULPT_BYTES_H
#define ULPT_BYTES_H

#include <stdint.h>
#include <string.h>

static inline void ulpt__put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8);
}

static inline void ulpt__put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void ulpt__put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint16_t ulpt__get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static inline uint32_t ulpt__get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t ulpt__get64(const unsigned char *p)
{
    return ulpt__get32(p) | (uint64_t)ulpt__get32(p + 4) << 32;
}

/* IEEE-754 binary64, stored as the little-endian bytes of its bit pattern */
static inline void ulpt__putf64(unsigned char *p, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    ulpt__put64(p, u);
}

static inline double ulpt__getf64(const unsigned char *p)
{
    uint64_t u = ulpt__get64(p);
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

#endif /* ULPT_BYTES_H */
