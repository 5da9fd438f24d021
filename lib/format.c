/* format.c -- prompt files and checkpoints (docs/FORMAT.md is the byte-level spec).
 *
 *     header   magic[8] u16 major u16 minor u32 kind u64 file_length        24 bytes
 *     sections u32 tag u32 flags u64 length, then `length` bytes of payload   repeated
 *     trailer  u32 CRC-32 (zlib's) of every byte before it
 *
 * All integers little-endian.  Loading checks magic, version, length, checksum, every
 * section's bounds and the memory the shape implies before it allocates anything; then
 * it builds the prompt and checks the tensors, the fingerprint and the values against
 * it, freeing everything if one of them is wrong. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

static const unsigned char MAGIC[8] = { 0x89, 'U', 'L', 'P', 'T', '\r', '\n', 0x1a };
#define FORMAT_MAJOR 1
#define FORMAT_MINOR 0
#define KIND_PROMPT 1
#define KIND_CHECKPOINT 2
#define HEADER_BYTES 24
#define SECTION_BYTES 16
#define SECTION_REQUIRED 1u
#define SHAPE_BYTES 48
#define TENSOR_BYTES 24  /* the tensor header before its data */
#define OPTIM_BYTES 88
#define CODEC_STORED 0
#define CODEC_ZLIB 1     /* zlib stream of the byte planes */
#define MAX_INFLATE 1032 /* zlib's largest expansion ratio */
#define ALLOC_FLOOR (64.0 * 1024 * 1024)

#define TAG(a, b, c, d) ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)
enum {
    TAG_SHAPE = TAG('S', 'H', 'A', 'P'),
    TAG_META = TAG('M', 'E', 'T', 'A'),
    TAG_PARAMS = TAG('P', 'A', 'R', 'M'),
    TAG_OPTIM = TAG('O', 'P', 'T', 'M'),
    TAG_MOM1 = TAG('M', 'O', 'M', '1'),
    TAG_MOM2 = TAG('M', 'O', 'M', '2'),
};

/* ---- little-endian fields ---------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const unsigned char *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }
static void putf64(unsigned char *p, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    put64(p, u);
}
static double getf64(const unsigned char *p)
{
    uint64_t u = get64(p);
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* ---- zlib through the library's allocator ------------------------------------------ */

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    return ulpt__calloc(opaque, items, size);
}
static void z_free(voidpf opaque, voidpf ptr) { ulpt__free(opaque, ptr); }

/* Deflate src into dst (capacity *len); 0 when it does not fit or memory ran out. */
static int deflate_into(ulpt_allocator *a, int level, const unsigned char *src, size_t n,
                        unsigned char *dst, size_t *len, int *nomem)
{
    z_stream z = { 0 };
    z.zalloc = z_alloc, z.zfree = z_free, z.opaque = a;
    int rc = deflateInit(&z, level);
    if (rc != Z_OK) {
        *nomem = rc == Z_MEM_ERROR;
        return 0;
    }
    z.next_in = (Bytef *)(uintptr_t)src;
    z.next_out = dst;
    size_t in_left = n, out_left = *len;
    do { /* avail_in/out are 32-bit: feed in chunks */
        uInt in = in_left > 0x40000000u ? 0x40000000u : (uInt)in_left;
        uInt out = out_left > 0x40000000u ? 0x40000000u : (uInt)out_left;
        z.avail_in = in, z.avail_out = out;
        rc = deflate(&z, in_left == in ? Z_FINISH : Z_NO_FLUSH);
        in_left -= in - z.avail_in;
        out_left -= out - z.avail_out;
    } while (rc == Z_OK && out_left > 0);
    deflateEnd(&z);
    *len -= out_left;
    return rc == Z_STREAM_END;
}

/* Inflate exactly n bytes into dst from src; Z_OK, Z_MEM_ERROR or Z_DATA_ERROR. */
static int inflate_exact(ulpt_allocator *a, const unsigned char *src, size_t len,
                         unsigned char *dst, size_t n)
{
    z_stream z = { 0 };
    z.zalloc = z_alloc, z.zfree = z_free, z.opaque = a;
    if (inflateInit(&z) != Z_OK)
        return Z_MEM_ERROR;
    z.next_in = (Bytef *)(uintptr_t)src;
    z.next_out = dst;
    size_t in_left = len, out_left = n;
    int rc;
    do {
        uInt in = in_left > 0x40000000u ? 0x40000000u : (uInt)in_left;
        uInt out = out_left > 0x40000000u ? 0x40000000u : (uInt)out_left;
        z.avail_in = in, z.avail_out = out;
        rc = inflate(&z, Z_NO_FLUSH);
        in_left -= in - z.avail_in;
        out_left -= out - z.avail_out;
    } while (rc == Z_OK && (in_left > 0 || z.avail_in > 0) && out_left > 0);
    if (rc == Z_OK && out_left == 0) { /* all out: the stream must end here */
        z.avail_out = 0;
        rc = inflate(&z, Z_FINISH);
    }
    inflateEnd(&z);
    if (rc == Z_MEM_ERROR)
        return rc;
    return rc == Z_STREAM_END && out_left == 0 && in_left == 0 && z.avail_in == 0 ? Z_OK
                                                                                 : Z_DATA_ERROR;
}

/* ---- tensors: float32 arrays stored as f32/f16/bf16, raw or zlib'd byte planes ------ */

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

typedef struct {
    int dtype, codec;
    size_t count, len; /* elements; bytes of data */
    unsigned char *data;
} tensor;

/* Byte b of element i goes to plane b (planes = 1 for no shuffle): exponent bytes
 * gather together and compress. */
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

static int tensor_encode(ulpt_allocator *a, const char *func, const float *x, size_t n,
                         int dtype, int level, tensor *t)
{
    size_t raw = n * dtype_size(dtype);
    *t = (tensor){ dtype, CODEC_STORED, n, raw, NULL };
    unsigned char *planes = NULL, *packed = NULL;
    if (level > 0) {
        size_t cap = raw; /* only worth keeping if smaller than stored */
        int nomem = 0;
        planes = ulpt__alloc(a, raw);
        packed = planes ? ulpt__alloc(a, cap) : NULL;
        if (!packed) {
            ulpt__free(a, planes);
            return ulpt__error(ULPT_ERR_NOMEM, func, "no memory to compress %zu bytes", raw);
        }
        to_bytes(x, n, dtype, 1, planes);
        size_t len = cap;
        int ok = deflate_into(a, level, planes, raw, packed, &len, &nomem);
        ulpt__free(a, planes);
        if (nomem) {
            ulpt__free(a, packed);
            return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for zlib");
        }
        if (ok && len < raw) {
            t->codec = CODEC_ZLIB, t->len = len, t->data = packed;
            return ULPT_OK;
        }
        ulpt__free(a, packed);
    }
    t->data = ulpt__alloc(a, raw);
    if (!t->data)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for %zu bytes of parameters", raw);
    to_bytes(x, n, dtype, 0, t->data);
    return ULPT_OK;
}

/* Size in the file of a tensor section's payload. */
static size_t tensor_bytes(const tensor *t) { return TENSOR_BYTES + t->len; }

static unsigned char *put_section(unsigned char *p, uint32_t tag, uint32_t flags, size_t len)
{
    put32(p, tag);
    put32(p + 4, flags);
    put64(p + 8, len);
    return p + SECTION_BYTES;
}

static unsigned char *put_tensor(unsigned char *p, uint32_t tag, const tensor *t)
{
    p = put_section(p, tag, SECTION_REQUIRED, tensor_bytes(t));
    put32(p, (uint32_t)t->dtype);
    put32(p + 4, (uint32_t)t->codec);
    put64(p + 8, t->count);
    put64(p + 16, t->len);
    memcpy(p + TENSOR_BYTES, t->data, t->len);
    return p + tensor_bytes(t);
}

/* CRC-32 of n bytes (zlib takes 32-bit lengths). */
static uint32_t crc_of(const unsigned char *p, size_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    for (size_t off = 0; off < n; off += 0x40000000u)
        crc = crc32(crc, p + off, (uInt)(n - off < 0x40000000u ? n - off : 0x40000000u));
    return (uint32_t)crc;
}

/* ---- the projection fingerprint ---------------------------------------------------- */

/* CRC-32 of every group's P as little-endian float32 bytes, in group order; 0 for the
 * identity, which has nothing to check. */
static uint32_t fingerprint(const ulpt_prompt *p)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    if (p->kind == ULPT_PROJ_IDENTITY)
        return 0;
    unsigned char buf[4096];
    for (uint32_t g = 0; g < p->groups; g++) {
        const float *x = ulpt_projection_data(p->proj[g]);
        size_t n = (size_t)p->r * p->d;
        for (size_t i = 0; i < n; i += sizeof buf / 4) {
            size_t k = n - i < sizeof buf / 4 ? n - i : sizeof buf / 4;
            to_bytes(x + i, k, ULPT_DTYPE_F32, 0, buf);
            crc = crc32(crc, buf, (uInt)(k * 4));
        }
    }
    return (uint32_t)crc;
}

/* ---- encoding --------------------------------------------------------------------- */

static size_t meta_bytes(const ulpt_meta *m)
{
    size_t n = 4;
    for (size_t i = 0; i < m->count; i++)
        n += 8 + strlen(m->keys[i]) + strlen(m->values[i]);
    return n;
}

/* The whole file in a new buffer from a (o NULL: a prompt file), starting `prefix`
 * bytes into the allocation *out; *out_len is the file's length. */
static int encode(const char *func, ulpt_allocator *a, const ulpt_prompt *p,
                  const ulpt_optimizer *o, int dtype, int level, size_t prefix,
                  unsigned char **out, size_t *out_len)
{
    tensor t[3] = { 0 };
    int nt = o ? 3 : 1, rc = ULPT_OK;
    /* a file never holds what a load would refuse, and nothing is lost silently */
    char name[48];
    size_t bad = ulpt__first_nonfinite(p);
    if (bad < p->n_params) {
        ulpt__param_name(p, bad, name, sizeof name);
        return ulpt__error(ULPT_ERR_NONFINITE, func, "parameter %s is %g", name,
                           (double)p->params[bad]);
    }
    for (size_t i = 0; dtype != ULPT_DTYPE_F32 && i < p->n_params; i++)
        if (isinf(decode_elem(encode_elem(p->params[i], dtype), dtype))) {
            ulpt__param_name(p, i, name, sizeof name);
            return ulpt__error(ULPT_ERR_NONFINITE, func,
                               "parameter %s = %g overflows %s; save as f32", name,
                               (double)p->params[i], dtype == ULPT_DTYPE_F16 ? "f16" : "bf16");
        }
    rc = tensor_encode(a, func, p->params, p->n_params, dtype, level, &t[0]);
    if (!rc && o)
        rc = tensor_encode(a, func, o->m, o->n, ULPT_DTYPE_F32, level, &t[1]);
    if (!rc && o)
        rc = tensor_encode(a, func, o->v, o->n, ULPT_DTYPE_F32, level, &t[2]);
    size_t total = HEADER_BYTES + SECTION_BYTES + SHAPE_BYTES + SECTION_BYTES + meta_bytes(&p->meta) + 4;
    for (int i = 0; i < nt; i++)
        total += SECTION_BYTES + tensor_bytes(&t[i]);
    if (o)
        total += SECTION_BYTES + OPTIM_BYTES;
    unsigned char *base = rc ? NULL : ulpt__alloc(a, prefix + total);
    unsigned char *buf = base ? base + prefix : NULL;
    if (!rc && !base)
        rc = ulpt__error(ULPT_ERR_NOMEM, func, "no memory for a %zu-byte file", total);
    if (rc) {
        for (int i = 0; i < nt; i++)
            ulpt__free(a, t[i].data);
        return rc;
    }

    unsigned char *w = buf;
    memcpy(w, MAGIC, 8);
    w[8] = FORMAT_MAJOR, w[9] = 0, w[10] = FORMAT_MINOR, w[11] = 0;
    put32(w + 12, o ? KIND_CHECKPOINT : KIND_PROMPT);
    put64(w + 16, total);
    w += HEADER_BYTES;

    w = put_section(w, TAG_SHAPE, SECTION_REQUIRED, SHAPE_BYTES);
    put32(w, p->n), put32(w + 4, p->r), put32(w + 8, p->d), put32(w + 12, p->groups);
    put64(w + 16, p->seed);
    put32(w + 24, (uint32_t)p->kind), put32(w + 28, p->flags);
    put32(w + 32, fingerprint(p)), put32(w + 36, 0);
    put64(w + 40, p->n_params);
    w += SHAPE_BYTES;

    w = put_section(w, TAG_META, 0, meta_bytes(&p->meta));
    put32(w, (uint32_t)p->meta.count);
    w += 4;
    for (size_t i = 0; i < p->meta.count; i++) {
        size_t kl = strlen(p->meta.keys[i]), vl = strlen(p->meta.values[i]);
        put32(w, (uint32_t)kl);
        memcpy(w + 4, p->meta.keys[i], kl);
        w += 4 + kl;
        put32(w, (uint32_t)vl);
        memcpy(w + 4, p->meta.values[i], vl);
        w += 4 + vl;
    }
    w = put_tensor(w, TAG_PARAMS, &t[0]);
    if (o) {
        const ulpt_optimizer_options *op = &o->opt;
        w = put_section(w, TAG_OPTIM, SECTION_REQUIRED, OPTIM_BYTES);
        put32(w, (uint32_t)op->kind), put32(w + 4, (uint32_t)op->schedule);
        putf64(w + 8, op->lr), putf64(w + 16, op->beta1), putf64(w + 24, op->beta2);
        putf64(w + 32, op->eps), putf64(w + 40, op->weight_decay), putf64(w + 48, op->momentum);
        putf64(w + 56, op->max_grad_norm);
        put64(w + 64, op->warmup_steps), put64(w + 72, op->total_steps), put64(w + 80, o->steps);
        w += OPTIM_BYTES;
        w = put_tensor(w, TAG_MOM1, &t[1]);
        w = put_tensor(w, TAG_MOM2, &t[2]);
    }
    put32(w, crc_of(buf, total - 4));
    for (int i = 0; i < nt; i++)
        ulpt__free(a, t[i].data);
    *out = base;
    *out_len = total;
    return ULPT_OK;
}

/* ---- decoding --------------------------------------------------------------------- */

typedef struct {
    const unsigned char *data; /* payload */
    size_t len;
} section;

typedef struct {
    int kind;
    section shape, meta, params, optim, mom1, mom2;
} parsed;

#define CORRUPT(...) ulpt__error(ULPT_ERR_CORRUPT, func, __VA_ARGS__)

/* A tag for messages: 'SHAP' when printable, else its hex value. */
static void tag_name(uint32_t tag, char out[12])
{
    int printable = 1;
    for (int i = 0; i < 4; i++) {
        unsigned c = (tag >> (8 * i)) & 0xff;
        printable &= c >= 0x20 && c < 0x7f;
    }
    if (printable)
        snprintf(out, 12, "'%c%c%c%c'", (char)tag, (char)(tag >> 8), (char)(tag >> 16),
                 (char)(tag >> 24));
    else
        snprintf(out, 12, "0x%08x", (unsigned)tag);
}

/* Header, length, checksum and section table: nothing is allocated. */
static int parse(const char *func, const unsigned char *b, size_t len, parsed *f)
{
    *f = (parsed){ 0 };
    if (len < 8 && memcmp(b, MAGIC, len) == 0)
        return CORRUPT("truncated: %zu bytes, not even a header", len);
    if (len < 8 || memcmp(b, MAGIC, 8) != 0)
        return ulpt__error(ULPT_ERR_FORMAT, func, "not a libulpt file (bad magic)");
    if (len < HEADER_BYTES + 4)
        return CORRUPT("truncated: %zu bytes, shorter than a header", len);
    unsigned major = b[8] | (unsigned)b[9] << 8, minor = b[10] | (unsigned)b[11] << 8;
    if (major != FORMAT_MAJOR)
        return ulpt__error(ULPT_ERR_FORMAT, func,
                           "format version %u.%u; this library reads %d.x", major, minor,
                           FORMAT_MAJOR);
    uint64_t declared = get64(b + 16);
    if (declared != len)
        return CORRUPT("%s: the file has %zu bytes, its header says %llu",
                       declared > len ? "truncated" : "trailing bytes", len,
                       (unsigned long long)declared);
    if (crc_of(b, len - 4) != get32(b + len - 4))
        return CORRUPT("checksum mismatch: the file is damaged");
    f->kind = (int)get32(b + 12);
    if (f->kind != KIND_PROMPT && f->kind != KIND_CHECKPOINT)
        return ulpt__error(ULPT_ERR_FORMAT, func, "unknown file kind %d", f->kind);

    size_t pos = HEADER_BYTES, end = len - 4;
    while (pos < end) {
        if (end - pos < SECTION_BYTES)
            return CORRUPT("section header at byte %zu runs past the end", pos);
        uint32_t tag = get32(b + pos), flags = get32(b + pos + 4);
        uint64_t slen = get64(b + pos + 8);
        pos += SECTION_BYTES;
        if (slen > end - pos)
            return CORRUPT("section at byte %zu claims %llu bytes, %zu remain",
                           pos - SECTION_BYTES, (unsigned long long)slen, end - pos);
        section s = { b + pos, (size_t)slen }, *slot = NULL;
        switch (tag) {
        case TAG_SHAPE: slot = &f->shape; break;
        case TAG_META: slot = &f->meta; break;
        case TAG_PARAMS: slot = &f->params; break;
        case TAG_OPTIM: slot = &f->optim; break;
        case TAG_MOM1: slot = &f->mom1; break;
        case TAG_MOM2: slot = &f->mom2; break;
        default:
            if (flags & SECTION_REQUIRED) {
                char name[12];
                tag_name(tag, name);
                return ulpt__error(ULPT_ERR_FORMAT, func,
                                   "requires section %s that format %d.%d readers do not know "
                                   "(file is %u.%u)",
                                   name, FORMAT_MAJOR, FORMAT_MINOR, major, minor);
            }
            break; /* optional: a later minor version's addition, skipped */
        }
        if (slot) {
            char name[12];
            tag_name(tag, name);
            if (slot->data)
                return CORRUPT("section %s appears twice", name);
            *slot = s;
        }
        pos += (size_t)slen;
    }
    if (!f->shape.data || !f->params.data)
        return CORRUPT("the %s section is missing", !f->shape.data ? "shape" : "parameter");
    if (f->shape.len < SHAPE_BYTES)
        return CORRUPT("shape section of %zu bytes, expected %d", f->shape.len, SHAPE_BYTES);
    if (f->kind == KIND_CHECKPOINT &&
        (!f->optim.data || !f->mom1.data || !f->mom2.data || f->optim.len < OPTIM_BYTES))
        return CORRUPT("checkpoint without complete optimizer sections");
    if (f->kind == KIND_PROMPT && (f->optim.data || f->mom1.data || f->mom2.data))
        return CORRUPT("a prompt file with optimizer sections");
    if (get32(f->shape.data + 36) != 0)
        return CORRUPT("the shape's reserved field is not 0");
    return ULPT_OK;
}

static void shape_options(const section *s, ulpt_prompt_options *o)
{
    const unsigned char *p = s->data;
    *o = (ulpt_prompt_options)ULPT_PROMPT_OPTIONS_INIT;
    o->n_tokens = get32(p), o->rank = get32(p + 4), o->dim = get32(p + 8);
    o->n_groups = get32(p + 12);
    o->projection_seed = get64(p + 16);
    o->projection_kind = (int)get32(p + 24);
    o->flags = get32(p + 28);
}

/* An upper bound, in bytes, of everything a load of this shape holds at once: the file,
 * the prompt (parameters, gradients, scratch, projections), the optimizer of a
 * checkpoint, and one tensor's inflate buffer. */
static double memory_needed(const ulpt_prompt_options *o, int checkpoint, size_t file_len)
{
    double n = o->n_tokens, r = o->rank, d = o->dim, g = o->n_groups ? o->n_groups : 1;
    double params = n * r + 2 * d;
    double floats = 3 * params + (n / g + 1) * (r + 1) + (2 * r + 1) * d;
    if (o->projection_kind != ULPT_PROJ_IDENTITY)
        floats += g * r * d;
    if (checkpoint)
        floats += 3 * params + 2 * n * d;
    return 4 * floats + 4096 * g + (double)file_len;
}

/* Check a tensor section against its expected element count before any allocation. */
static int tensor_check(const char *func, const section *s, size_t count, const char *what,
                        tensor *t)
{
    if (s->len < TENSOR_BYTES)
        return CORRUPT("%s section of %zu bytes is too short", what, s->len);
    const unsigned char *p = s->data;
    t->dtype = (int)get32(p), t->codec = (int)get32(p + 4);
    uint64_t n = get64(p + 8), stored = get64(p + 16);
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
    size_t raw = count * dtype_size(t->dtype); /* count is bounded by the memory check */
    if (t->codec == CODEC_STORED ? stored != raw : (double)raw > (double)stored * MAX_INFLATE + 64)
        return CORRUPT("%s: %llu bytes cannot hold %zu elements", what,
                       (unsigned long long)stored, count);
    t->count = count;
    t->len = (size_t)stored;
    t->data = (unsigned char *)(uintptr_t)(p + TENSOR_BYTES);
    return ULPT_OK;
}

static int tensor_decode(const char *func, ulpt_allocator *a, const tensor *t, float *x)
{
    if (t->codec == CODEC_STORED) {
        from_bytes(t->data, t->count, t->dtype, 0, x);
        return ULPT_OK;
    }
    size_t raw = t->count * dtype_size(t->dtype);
    unsigned char *planes = ulpt__alloc(a, raw);
    if (!planes)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory to inflate %zu bytes", raw);
    int rc = inflate_exact(a, t->data, t->len, planes, raw);
    if (rc == Z_OK)
        from_bytes(planes, t->count, t->dtype, 1, x);
    ulpt__free(a, planes);
    if (rc == Z_MEM_ERROR)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for zlib");
    return rc == Z_OK ? ULPT_OK : CORRUPT("compressed parameters do not inflate to %zu bytes", raw);
}

static int meta_check(const char *func, const section *s)
{
    if (!s->data)
        return ULPT_OK;
    if (s->len < 4)
        return CORRUPT("metadata section of %zu bytes is too short", s->len);
    size_t count = get32(s->data), pos = 4;
    if (count > 1024)
        return CORRUPT("metadata claims %zu pairs, at most 1024", count);
    for (size_t i = 0; i < 2 * count; i++) {
        if (s->len - pos < 4)
            return CORRUPT("metadata pair %zu runs past its section", i / 2);
        size_t l = get32(s->data + pos);
        pos += 4;
        if (l > s->len - pos || (i % 2 == 0 ? l == 0 || l > 255 : l > 65535) ||
            memchr(s->data + pos, 0, l))
            return CORRUPT("metadata pair %zu has a bad %s", i / 2, i % 2 ? "value" : "key");
        pos += l;
    }
    if (pos != s->len)
        return CORRUPT("metadata section has %zu stray bytes", s->len - pos);
    /* keys are unique: compare each with the ones before it (at most 1024) */
    size_t ka = 4;
    for (size_t i = 0; i < count; i++) {
        size_t kl = get32(s->data + ka), next = ka + 4 + kl;
        next += 4 + get32(s->data + next);
        for (size_t kb = 4; kb < ka;) {
            size_t ml = get32(s->data + kb);
            if (ml == kl && memcmp(s->data + kb + 4, s->data + ka + 4, kl) == 0)
                return CORRUPT("metadata key %zu appears twice", i);
            kb += 4 + ml;
            kb += 4 + get32(s->data + kb);
        }
        ka = next;
    }
    return ULPT_OK;
}

static int meta_load(const char *func, ulpt_prompt *p, const section *s)
{
    if (!s->data)
        return ULPT_OK;
    size_t count = get32(s->data), pos = 4;
    char key[256], *value = NULL;
    for (size_t i = 0; i < count; i++) {
        size_t kl = get32(s->data + pos);
        memcpy(key, s->data + pos + 4, kl);
        key[kl] = '\0';
        pos += 4 + kl;
        size_t vl = get32(s->data + pos);
        value = ulpt__alloc(&p->al, vl + 1);
        if (!value)
            return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for metadata");
        memcpy(value, s->data + pos + 4, vl);
        value[vl] = '\0';
        pos += 4 + vl;
        int rc = ulpt_prompt_set_meta(p, key, value); /* keys were checked unique */
        ulpt__free(&p->al, value);
        if (rc)
            return ulpt__error(rc, func, "no memory for metadata");
    }
    return ULPT_OK;
}

/* Everything from a file's bytes; *opt_out NULL: a prompt only.  info, if not NULL,
 * describes the file. */
static int decode(const char *func, const unsigned char *b, size_t len, ulpt_prompt **out,
                  ulpt_optimizer **opt_out, ulpt_file_info *info)
{
    parsed f;
    int rc = parse(func, b, len, &f);
    if (rc)
        return rc;
    if (opt_out && f.kind != KIND_CHECKPOINT)
        return ulpt__error(ULPT_ERR_FORMAT, func, "a prompt file, not a checkpoint");
    ulpt_prompt_options po;
    shape_options(&f.shape, &po);
    /* the parameter count the shape implies, and the tensor that must hold it, before
       anything is allocated: a forged shape cannot outgrow the bytes behind it */
    double count = (double)po.n_tokens * po.rank + (double)po.dim * (!(po.flags & ULPT_NO_SCALE)) +
                   (double)po.dim * (!(po.flags & ULPT_NO_SHIFT));
    uint64_t declared = get64(f.shape.data + 40);
    if ((double)declared != count)
        return CORRUPT("shape declares %llu parameters, its fields give %.0f",
                       (unsigned long long)declared, count);
    tensor tp, t1, t2;
    if (count > (double)len * MAX_INFLATE) /* also keeps count within size_t */
        return CORRUPT("%.0f parameters cannot come from a %zu-byte file", count, len);
    if ((rc = tensor_check(func, &f.params, (size_t)count, "parameters", &tp)) != ULPT_OK)
        return rc;
    double need = memory_needed(&po, opt_out != NULL, len), allowed = (double)len * MAX_INFLATE;
    if (need > (allowed > ALLOC_FLOOR ? allowed : ALLOC_FLOOR))
        return CORRUPT("shape %u x %u x %u needs %.0f bytes, impossible for a %zu-byte file",
                       po.n_tokens, po.rank, po.dim, need, len);
    if ((rc = meta_check(func, &f.meta)) != ULPT_OK)
        return rc;

    ulpt_prompt *p = NULL;
    ulpt_optimizer *o = NULL;
    if ((rc = ulpt_prompt_create(&p, &po)) != ULPT_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", ulpt_last_error()); /* not format from itself */
        return rc == ULPT_ERR_NOMEM ? rc : CORRUPT("bad shape (%s)", why);
    }
    if (get32(f.shape.data + 32) != fingerprint(p))
        rc = ulpt__error(ULPT_ERR_MISMATCH, func,
                         "the regenerated projection differs from the one this prompt was "
                         "trained with (fingerprint %08x, stored %08x)",
                         (unsigned)fingerprint(p), (unsigned)get32(f.shape.data + 32));
    if (!rc)
        rc = tensor_decode(func, &p->al, &tp, p->params);
    if (!rc && ulpt__first_nonfinite(p) < p->n_params) {
        char name[48];
        ulpt__param_name(p, ulpt__first_nonfinite(p), name, sizeof name);
        rc = CORRUPT("parameter %s is not finite; libulpt never writes such a file", name);
    }
    if (!rc)
        rc = meta_load(func, p, &f.meta);
    if (!rc && opt_out) {
        const unsigned char *q = f.optim.data;
        ulpt_optimizer_options oo = ULPT_OPTIMIZER_OPTIONS_INIT;
        oo.kind = (int)get32(q), oo.schedule = (int)get32(q + 4);
        oo.lr = getf64(q + 8), oo.beta1 = getf64(q + 16), oo.beta2 = getf64(q + 24);
        oo.eps = getf64(q + 32), oo.weight_decay = getf64(q + 40), oo.momentum = getf64(q + 48);
        oo.max_grad_norm = getf64(q + 56);
        oo.warmup_steps = get64(q + 64), oo.total_steps = get64(q + 72);
        if (!(oo.weight_decay >= 0)) /* the file holds the resolved value, never the default */
            rc = CORRUPT("optimizer weight decay %g is negative", oo.weight_decay);
        else if (get64(q + 80) > ((uint64_t)1 << 53)) /* past exact double counts: forged */
            rc = CORRUPT("optimizer step count %llu is implausible",
                         (unsigned long long)get64(q + 80));
        else if ((rc = ulpt_optimizer_create(&o, p, &oo)) != ULPT_OK && rc != ULPT_ERR_NOMEM) {
            char why[256];
            snprintf(why, sizeof why, "%s", ulpt_last_error());
            rc = CORRUPT("bad optimizer options (%s)", why);
        }
        if (!rc)
            rc = tensor_check(func, &f.mom1, o->n, "first moments", &t1);
        if (!rc)
            rc = tensor_check(func, &f.mom2, o->n, "second moments", &t2);
        if (!rc && (t1.dtype != ULPT_DTYPE_F32 || t2.dtype != ULPT_DTYPE_F32))
            rc = ulpt__error(ULPT_ERR_FORMAT, func, "checkpoint moments must be f32");
        if (!rc)
            rc = tensor_decode(func, &p->al, &t1, o->m);
        if (!rc)
            rc = tensor_decode(func, &p->al, &t2, o->v);
        for (size_t i = 0; !rc && i < o->n; i++)
            if (!isfinite(o->m[i]) || !isfinite(o->v[i]) || o->v[i] < 0)
                rc = CORRUPT("optimizer moment %zu is not finite (or negative)", i);
        if (!rc)
            o->steps = get64(q + 80);
    }
    if (rc) {
        ulpt_optimizer_free(o);
        ulpt_prompt_free(p);
        return rc;
    }
    if (info) {
        info->kind = f.kind;
        info->format_major = b[8] | (unsigned)b[9] << 8;
        info->format_minor = b[10] | (unsigned)b[11] << 8;
        info->dtype = tp.dtype;
        info->file_bytes = len;
        info->stored_bytes = tp.len;
    }
    *out = p;
    if (opt_out)
        *opt_out = o;
    return ULPT_OK;
}

/* ---- the public calls ------------------------------------------------------------- */

/* ulpt_free finds the allocator that made a buffer in front of it. */
#define BUFFER_PREFIX 64

/* The bytes each version of the caller-facing structs has (see prompt.c). */
static const size_t save_options_size[ULPT_SAVE_OPTIONS_VERSION + 1] = {
    0, sizeof(ulpt_save_options),
};
static const size_t file_info_size[ULPT_FILE_INFO_VERSION + 1] = { 0, sizeof(ulpt_file_info) };

int ulpt_save_options_init(ulpt_save_options *opts, unsigned version)
{
    static const ulpt_save_options defaults = ULPT_SAVE_OPTIONS_INIT;
    if (!opts)
        return ULPT_FAIL(ULPT_ERR_INVALID, "opts is NULL");
    if (version < 1 || version > ULPT_SAVE_OPTIONS_VERSION)
        return ULPT_FAIL(ULPT_ERR_INVALID, "unknown save options version %u (this library knows 1..%d)",
                         version, ULPT_SAVE_OPTIONS_VERSION);
    memcpy(opts, &defaults, save_options_size[version]); /* the caller's version's bytes only */
    opts->version = version;
    return ULPT_OK;
}

int ulpt_file_info_init(ulpt_file_info *info, unsigned version)
{
    static const ulpt_file_info empty = ULPT_FILE_INFO_INIT;
    if (!info)
        return ULPT_FAIL(ULPT_ERR_INVALID, "info is NULL");
    if (version < 1 || version > ULPT_FILE_INFO_VERSION)
        return ULPT_FAIL(ULPT_ERR_INVALID, "unknown info version %u (this library knows 1..%d)",
                         version, ULPT_FILE_INFO_VERSION);
    memcpy(info, &empty, file_info_size[version]); /* the caller's version's bytes only */
    info->version = version;
    return ULPT_OK;
}

/* The caller's options, read as far as its version goes, into *o. */
static int check_save_options(const char *func, const ulpt_save_options *in, ulpt_save_options *o)
{
    static const ulpt_save_options defaults = ULPT_SAVE_OPTIONS_INIT;
    *o = defaults;
    if (!in)
        return ULPT_OK;
    if (in->version < 1 || in->version > ULPT_SAVE_OPTIONS_VERSION)
        return ulpt__error(ULPT_ERR_INVALID, func, "unknown save options version %u",
                           in->version);
    memcpy(o, in, save_options_size[in->version]);
    if (o->dtype < ULPT_DTYPE_F32 || o->dtype > ULPT_DTYPE_BF16)
        return ulpt__error(ULPT_ERR_INVALID, func, "unknown dtype %d", o->dtype);
    if (o->level < 0 || o->level > 9)
        return ulpt__error(ULPT_ERR_INVALID, func, "zlib level %d is outside 0..9", o->level);
    return ULPT_OK;
}

/* A prompt file in a new allocation from *a, `prefix` bytes in. */
static int encode_prompt(const char *func, const ulpt_prompt *p, const ulpt_save_options *opts,
                         size_t prefix, ulpt_allocator *a, unsigned char **base, size_t *len)
{
    ulpt_save_options so;
    int rc = check_save_options(func, opts, &so);
    if (rc)
        return rc;
    *a = ulpt__allocator();
    return encode(func, a, p, NULL, so.dtype, so.level, prefix, base, len);
}

int ulpt_prompt_save_buffer(const ulpt_prompt *p, void **buf, size_t *len,
                            const ulpt_save_options *opts)
{
    if (!p || !buf || !len)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : !buf ? "buf" : "len");
    ulpt_allocator a;
    unsigned char *base;
    int rc = encode_prompt(__func__, p, opts, BUFFER_PREFIX, &a, &base, len);
    if (rc)
        return rc;
    memcpy(base, &a, sizeof a); /* for ulpt_free */
    *buf = base + BUFFER_PREFIX;
    return ULPT_OK;
}

void ulpt_free(void *ptr)
{
    if (!ptr)
        return;
    unsigned char *base = (unsigned char *)ptr - BUFFER_PREFIX;
    ulpt_allocator a;
    memcpy(&a, base, sizeof a);
    ulpt__free(&a, base);
}

int ulpt_prompt_save(const ulpt_prompt *p, const char *path, const ulpt_save_options *opts)
{
    if (!p || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !p ? "prompt" : "path");
    ulpt_allocator a;
    unsigned char *data;
    size_t n;
    int rc = encode_prompt(__func__, p, opts, 0, &a, &data, &n);
    if (rc)
        return rc;
    rc = ulpt__write_atomic(__func__, path, data, n);
    ulpt__free(&a, data);
    return rc;
}

int ulpt_prompt_load_buffer(ulpt_prompt **out, const void *buf, size_t len)
{
    if (!out || !buf)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : "buf");
    return decode(__func__, buf, len, out, NULL, NULL);
}

static int load_file(const char *func, const char *path, ulpt_prompt **out, ulpt_optimizer **opt,
                     ulpt_file_info *info)
{
    ulpt_allocator a = ulpt__allocator();
    void *data;
    size_t len;
    int rc = ulpt__read_file(func, &a, path, &data, &len);
    if (rc)
        return rc;
    rc = decode(func, data, len, out, opt, info);
    ulpt__free(&a, data);
    return rc;
}

int ulpt_prompt_load(ulpt_prompt **out, const char *path)
{
    if (!out || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : "path");
    return load_file(__func__, path, out, NULL, NULL);
}

int ulpt_prompt_load_for_model(ulpt_prompt **out, const char *path, const char *model)
{
    if (!out || !path || !model)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !out ? "out" : !path ? "path" : "model");
    ulpt_prompt *p;
    int rc = load_file(__func__, path, &p, NULL, NULL);
    if (rc)
        return rc;
    const char *tuned = ulpt_prompt_get_meta(p, "model");
    if (!tuned || strcmp(tuned, model) != 0) {
        rc = ULPT_FAIL(ULPT_ERR_MISMATCH, "%s was tuned for model \"%s\", not \"%s\"", path,
                       tuned ? tuned : "(none recorded)", model);
        ulpt_prompt_free(p);
        return rc;
    }
    *out = p;
    return ULPT_OK;
}

int ulpt_checkpoint_save(const ulpt_prompt *p, const ulpt_optimizer *o, const char *path)
{
    const char *func = __func__;
    if (!p || !o || !path)
        return ulpt__error(ULPT_ERR_INVALID, func, "%s is NULL", !p ? "prompt" : !o ? "optimizer" : "path");
    if (o->prompt != p)
        return ulpt__error(ULPT_ERR_MISMATCH, func, "the optimizer was created for another prompt");
    ulpt_allocator a = ulpt__allocator();
    unsigned char *data;
    size_t n;
    int rc = encode(func, &a, p, o, ULPT_DTYPE_F32, 6, 0, &data, &n);
    if (rc)
        return rc;
    rc = ulpt__write_atomic(func, path, data, n);
    ulpt__free(&a, data);
    return rc;
}

int ulpt_checkpoint_load(ulpt_prompt **prompt, ulpt_optimizer **opt, const char *path)
{
    if (!prompt || !opt || !path)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !prompt ? "prompt" : !opt ? "opt" : "path");
    return load_file(__func__, path, prompt, opt, NULL);
}

int ulpt_file_inspect(const char *path, ulpt_file_info *info)
{
    if (!path || !info)
        return ULPT_FAIL(ULPT_ERR_INVALID, "%s is NULL", !path ? "path" : "info");
    if (info->version < 1 || info->version > ULPT_FILE_INFO_VERSION)
        return ULPT_FAIL(ULPT_ERR_INVALID, "unknown info version %u (this library knows 1..%d)",
                         info->version, ULPT_FILE_INFO_VERSION);
    ulpt_allocator a = ulpt__allocator();
    void *data;
    size_t len;
    int rc = ulpt__read_file(__func__, &a, path, &data, &len);
    if (rc)
        return rc;
    /* a checkpoint is checked with its optimizer sections, a prompt file without */
    int checkpoint = len >= HEADER_BYTES && get32((const unsigned char *)data + 12) == KIND_CHECKPOINT;
    ulpt_prompt *p = NULL;
    ulpt_optimizer *o = NULL;
    ulpt_file_info tmp = *info;
    rc = decode(__func__, data, len, &p, checkpoint ? &o : NULL, &tmp);
    ulpt__free(&a, data);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
    if (!rc) /* only the fields the caller's version has */
        memcpy(info, &tmp, file_info_size[info->version]);
    return rc;
}
