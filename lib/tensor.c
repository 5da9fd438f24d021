/* tensor.c -- tensor payloads: float32 arrays stored as f32, f16 or bf16, either as the
 * elements one after another (stored) or as a zlib stream of their byte planes.
 *
 *     u32 dtype  u32 codec  u64 count  u64 length  then `length` bytes of data
 *
 * Byte planes put byte b of every element together (all the low bytes, then the next
 * ...), so that exponent bytes sit side by side and compress. */
#include "format.h"

#include <math.h>

static size_t dtype_size(int dtype) { return dtype == ULPT_DTYPE_F32 ? 4 : 2; }

static uint32_t encode_elem(float x, int dtype)
{
    uint32_t u;
    switch (dtype) {
    case ULPT_DTYPE_F16: return ulpt__f32_to_f16(x);
    case ULPT_DTYPE_BF16: return ulpt__f32_to_bf16(x);
    default: memcpy(&u, &x, sizeof u); return u;
    }
}

static float decode_elem(uint32_t u, int dtype)
{
    float x;
    switch (dtype) {
    case ULPT_DTYPE_F16: return ulpt__f16_to_f32((uint16_t)u);
    case ULPT_DTYPE_BF16: return ulpt__bf16_to_f32((uint16_t)u);
    default: memcpy(&x, &u, sizeof x); return x;
    }
}

float ulpt__dtype_round(float x, int dtype) { return decode_elem(encode_elem(x, dtype), dtype); }

/* Element i's byte b goes to out[b*n + i] in planes, to out[i*e + b] otherwise. */
static void to_bytes(const float *x, size_t n, int dtype, int planes, unsigned char *out)
{
    size_t es = dtype_size(dtype);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = encode_elem(x[i], dtype);
        for (size_t b = 0; b < es; b++)
            out[planes ? b * n + i : i * es + b] = (unsigned char)(u >> (8 * b));
    }
}

static void from_bytes(const unsigned char *in, size_t n, int dtype, int planes, float *x)
{
    size_t es = dtype_size(dtype);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = 0;
        for (size_t b = 0; b < es; b++)
            u |= (uint32_t)in[planes ? b * n + i : i * es + b] << (8 * b);
        x[i] = decode_elem(u, dtype);
    }
}

void ulpt__f32_bytes(const float *x, size_t n, unsigned char *out)
{
    to_bytes(x, n, ULPT_DTYPE_F32, 0, out);
}

int ulpt__tensor_encode(const char *func, const ulpt_allocator *a, const float *x, size_t n,
                        int dtype, int level, ulpt_tensor *t)
{
    size_t raw = n * dtype_size(dtype);
    *t = (ulpt_tensor){ dtype, CODEC_STORED, n, raw, NULL, NULL };
    if (level > 0) { /* compressed only if strictly smaller than stored */
        unsigned char *planes = ulpt__alloc(a, raw);
        unsigned char *packed = planes ? ulpt__alloc(a, raw) : NULL;
        if (!packed) {
            ulpt__free(a, planes);
            return ulpt__error(ULPT_ERR_NOMEM, func, "no memory to compress %zu bytes", raw);
        }
        to_bytes(x, n, dtype, 1, planes);
        size_t len = raw;
        int rc = ulpt__deflate(a, level, planes, raw, packed, &len);
        ulpt__free(a, planes);
        if (rc) {
            ulpt__free(a, packed);
            return ulpt__error(rc, func, "no memory for zlib");
        }
        if (len > 0 && len < raw) {
            t->codec = CODEC_ZLIB, t->len = len, t->data = t->owned = packed;
            return ULPT_OK;
        }
        ulpt__free(a, packed);
    }
    t->owned = ulpt__alloc(a, raw);
    if (!t->owned)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for %zu bytes of parameters", raw);
    to_bytes(x, n, dtype, 0, t->owned);
    t->data = t->owned;
    return ULPT_OK;
}

void ulpt__tensor_free(const ulpt_allocator *a, ulpt_tensor *t)
{
    ulpt__free(a, t->owned);
    t->owned = NULL;
    t->data = NULL;
}

static void write_tensor(unsigned char *out, const void *ctx)
{
    const ulpt_tensor *t = ctx;
    ulpt__put32(out + TEN_DTYPE, (uint32_t)t->dtype);
    ulpt__put32(out + TEN_CODEC, (uint32_t)t->codec);
    ulpt__put64(out + TEN_COUNT, t->count);
    ulpt__put64(out + TEN_LENGTH, t->len);
    memcpy(out + TENSOR_BYTES, t->data, t->len);
}

ulpt_section_out ulpt__tensor_section(uint32_t tag, const ulpt_tensor *t)
{
    return (ulpt_section_out){ tag, SECTION_REQUIRED, TENSOR_BYTES + t->len, write_tensor, t };
}

int ulpt__tensor_check(const char *func, const ulpt_section *s, size_t count, const char *what,
                       ulpt_tensor *t)
{
    if (s->len < TENSOR_BYTES)
        return CORRUPT("%s section of %zu bytes is too short", what, s->len);
    const unsigned char *p = s->data;
    t->dtype = (int)ulpt__get32(p + TEN_DTYPE), t->codec = (int)ulpt__get32(p + TEN_CODEC);
    uint64_t n = ulpt__get64(p + TEN_COUNT), stored = ulpt__get64(p + TEN_LENGTH);
    if (t->dtype < ULPT_DTYPE_F32 || t->dtype > ULPT_DTYPE_BF16)
        return ulpt__error(ULPT_ERR_FORMAT, func, "%s: unknown dtype %d", what, t->dtype);
    if (t->codec != CODEC_STORED && t->codec != CODEC_ZLIB)
        return ulpt__error(ULPT_ERR_FORMAT, func, "%s: unknown codec %d", what, t->codec);
    if (n != count)
        return CORRUPT("%s: %llu elements declared, the shape needs %zu", what,
                       (unsigned long long)n, count);
    if (stored != s->len - TENSOR_BYTES)
        return CORRUPT("%s: %llu data bytes declared, the section holds %zu", what,
                       (unsigned long long)stored, s->len - TENSOR_BYTES);
    /* count is bounded by the file's size (the caller checked), so raw fits in size_t.
       zlib data must satisfy raw <= 1032 * stored + 64, i.e. stored >= ceil((raw-64)/1032) */
    size_t raw = count * dtype_size(t->dtype);
    int fits = t->codec == CODEC_STORED
                   ? stored == raw
                   : stored >= (raw > INFLATE_SLACK ? (raw - INFLATE_SLACK + MAX_INFLATE - 1) /
                                                          MAX_INFLATE
                                                    : 0);
    if (!fits)
        return CORRUPT("%s: %llu bytes cannot hold %zu elements", what,
                       (unsigned long long)stored, count);
    t->count = count;
    t->len = (size_t)stored;
    t->data = p + TENSOR_BYTES;
    t->owned = NULL;
    return ULPT_OK;
}

/* zlib's inflate takes its state (about 7 KiB) and a 32 KiB window (zlib.h, "Memory
 * usage"): 64 KiB covers both with room. */
#define INFLATE_STATE_BYTES 65536.0

double ulpt__tensor_decode_bytes(double count)
{
    return 4 * count + INFLATE_STATE_BYTES;
}

int ulpt__tensor_decode(const char *func, const ulpt_allocator *a, const ulpt_tensor *t, float *x)
{
    if (t->codec == CODEC_STORED) {
        from_bytes(t->data, t->count, t->dtype, 0, x);
        return ULPT_OK;
    }
    size_t raw = t->count * dtype_size(t->dtype);
    unsigned char *planes = ulpt__alloc(a, raw);
    if (!planes)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory to inflate %zu bytes", raw);
    int rc = ulpt__inflate(a, t->data, t->len, planes, raw);
    if (rc == ULPT_OK)
        from_bytes(planes, t->count, t->dtype, 1, x);
    ulpt__free(a, planes);
    if (rc == ULPT_ERR_NOMEM)
        return ulpt__error(rc, func, "no memory for zlib");
    return rc ? CORRUPT("compressed parameters do not inflate to %zu bytes", raw) : ULPT_OK;
}
