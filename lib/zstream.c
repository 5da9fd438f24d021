/* zstream.c -- zlib on whole buffers through the library's allocator, and CRC-32.
 *
 * zlib counts bytes in 32-bit fields; buffers here may be larger, so both directions
 * feed it through one loop in chunks of at most 1 GiB. */
#include "format.h"

#include <zlib.h>

#define CHUNK 0x40000000u

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    return ulpt__calloc(opaque, items, size);
}
static void z_free(voidpf opaque, voidpf ptr) { ulpt__free(opaque, ptr); }

static uInt chunk(size_t left) { return left > CHUNK ? CHUNK : (uInt)left; }

/* Run deflate (finishing once the last input is in) or inflate until the stream ends,
 * fails, the output is full, or -- inflating -- the input is used up.  *in_left and
 * *out_left count down what is left. */
static int pump(z_stream *z, int deflating, size_t *in_left, size_t *out_left)
{
    int rc;
    do {
        uInt in = chunk(*in_left), out = chunk(*out_left);
        z->avail_in = in, z->avail_out = out;
        rc = deflating ? deflate(z, *in_left == in ? Z_FINISH : Z_NO_FLUSH)
                       : inflate(z, Z_NO_FLUSH);
        *in_left -= in - z->avail_in;
        *out_left -= out - z->avail_out;
    } while (rc == Z_OK && *out_left > 0 && (deflating || *in_left > 0));
    return rc;
}

int ulpt__deflate(const ulpt_allocator *a, int level, const unsigned char *src, size_t n,
                  unsigned char *dst, size_t *len)
{
    z_stream z = { 0 };
    z.zalloc = z_alloc, z.zfree = z_free, z.opaque = (voidpf)(uintptr_t)a;
    int rc = deflateInit(&z, level);
    if (rc != Z_OK) {
        *len = 0;
        return rc == Z_MEM_ERROR ? ULPT_ERR_NOMEM : ULPT_OK;
    }
    z.next_in = (Bytef *)(uintptr_t)src;
    z.next_out = dst;
    size_t in_left = n, out_left = *len;
    rc = pump(&z, 1, &in_left, &out_left);
    deflateEnd(&z);
    if (rc == Z_MEM_ERROR)
        return ULPT_ERR_NOMEM;
    *len = rc == Z_STREAM_END ? *len - out_left : 0;
    return ULPT_OK;
}

int ulpt__inflate(const ulpt_allocator *a, const unsigned char *src, size_t len,
                  unsigned char *dst, size_t n)
{
    z_stream z = { 0 };
    z.zalloc = z_alloc, z.zfree = z_free, z.opaque = (voidpf)(uintptr_t)a;
    if (inflateInit(&z) != Z_OK)
        return ULPT_ERR_NOMEM;
    z.next_in = (Bytef *)(uintptr_t)src;
    z.next_out = dst;
    size_t in_left = len, out_left = n;
    int rc = pump(&z, 0, &in_left, &out_left);
    if (rc == Z_OK && out_left == 0) { /* all out: the stream must end right here */
        z.avail_out = 0;
        rc = inflate(&z, Z_FINISH);
    }
    inflateEnd(&z);
    if (rc == Z_MEM_ERROR)
        return ULPT_ERR_NOMEM;
    return rc == Z_STREAM_END && out_left == 0 && in_left == 0 && z.avail_in == 0
               ? ULPT_OK
               : ULPT_ERR_CORRUPT;
}

uint32_t ulpt__crc32(uint32_t crc, const unsigned char *p, size_t n)
{
    uLong c = crc;
    for (size_t off = 0; off < n; off += CHUNK)
        c = crc32(c, p + off, chunk(n - off));
    return (uint32_t)c;
}
