/* format.h -- what the files of the prompt-file format share.  docs/FORMAT.md is the
 * byte-level spec; the names below are its fields.
 *
 *     header   magic[8] u16 major u16 minor u32 kind u64 file_length        24 bytes
 *     sections u32 tag u32 flags u64 length, then `length` bytes of payload   repeated
 *     trailer  u32 CRC-32 (zlib's) of every byte before it
 *
 *   container.c   header, section table, trailer: writing and reading
 *   zstream.c     zlib through the library's allocator, one chunk loop; CRC-32
 *   tensor.c      tensor payloads (PARM, MOM1, MOM2): dtypes, byte planes, codecs
 *   meta.c        the META payload (with the metadata it serialises)
 *   file.c        prompt files: SHAP, the prompt's load checks, save
 *   checkpoint.c  OPTM and the moments: checkpoints; ZOST, forward-only state (1.1)
 *   load.c        reading any file: the dispatch on its kind, every load and inspect */
#ifndef ULPT_FORMAT_H
#define ULPT_FORMAT_H

#include "bytes.h"
#include "internal.h"

/* A damaged file, reported as coming from the `func` in scope. */
#define CORRUPT(...) ulpt__error(ULPT_ERR_CORRUPT, func, __VA_ARGS__)

#define FORMAT_MAJOR 1
/* The newest minor version this library knows.  A file is written with the oldest minor
 * version that has all its sections (ulpt__section_minor): 1.0 unless it holds ZOST. */
#define FORMAT_MINOR 1

/* ---- the container (container.c) -------------------------------------------------- */

enum { /* header fields */
    HDR_MAGIC = 0,
    MAGIC_BYTES = 8,
    HDR_MAJOR = 8,
    HDR_MINOR = 10,
    HDR_KIND = 12,
    HDR_LENGTH = 16,
    HEADER_BYTES = 24,
    TRAILER_BYTES = 4,
};
enum { /* section header fields */
    SECT_TAG = 0,
    SECT_FLAGS = 4,
    SECT_LENGTH = 8,
    SECTION_BYTES = 16,
};
#define SECTION_REQUIRED 1u /* flags bit 0: a reader that does not know the tag refuses */
#define MAX_SECTIONS 64     /* per file: bounds the duplicate check */

#define TAG(a, b, c, d) \
    ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)
enum {
    TAG_SHAP = TAG('S', 'H', 'A', 'P'),
    TAG_META = TAG('M', 'E', 'T', 'A'),
    TAG_PARM = TAG('P', 'A', 'R', 'M'),
    TAG_OPTM = TAG('O', 'P', 'T', 'M'),
    TAG_MOM1 = TAG('M', 'O', 'M', '1'),
    TAG_MOM2 = TAG('M', 'O', 'M', '2'),
    TAG_ZOST = TAG('Z', 'O', 'S', 'T'), /* format 1.1 */
};

/* A section's payload inside the file's bytes; data NULL when the file has none. */
typedef struct {
    const unsigned char *data;
    size_t len;
} ulpt_section;

/* A file whose header, checksum and section table passed (nothing allocated). */
typedef struct {
    int kind; /* ULPT_FILE_PROMPT or ULPT_FILE_CHECKPOINT */
    unsigned major, minor;
    ulpt_section shap, meta, parm, optm, mom1, mom2; /* the sections of format 1.0 */
    ulpt_section zost;                               /* and of 1.1 */
} ulpt_container;

/* A section to write: `len` payload bytes that write() puts at out. */
typedef struct {
    uint32_t tag, flags;
    size_t len;
    void (*write)(unsigned char *out, const void *ctx);
    const void *ctx;
} ulpt_section_out;

/* The file of the n sections in a new allocation from a, `prefix` bytes into it (*base
 * is the allocation); *len is the file's length. */
int ulpt__container_write(const char *func, const ulpt_allocator *a, int kind,
                          const ulpt_section_out *s, int n, size_t prefix, unsigned char **base,
                          size_t *len);

/* The minor format version that introduced a tag (0 for those of 1.0). */
unsigned ulpt__section_minor(uint32_t tag);

/* Magic, version, length, checksum, kind and section table (docs/FORMAT.md, checks 1-3). */
int ulpt__container_read(const char *func, const unsigned char *b, size_t len, ulpt_container *c);

/* A tag for messages: 'SHAP' when printable, else its hex value. */
void ulpt__tag_name(uint32_t tag, char out[12]);

/* ---- zlib and CRC-32 (zstream.c) ---------------------------------------------------- */

/* Deflate n bytes into dst (capacity *len): ULPT_OK with *len the bytes written, or 0
 * when the stream does not fit; ULPT_ERR_NOMEM. */
int ulpt__deflate(const ulpt_allocator *a, int level, const unsigned char *src, size_t n,
                  unsigned char *dst, size_t *len);

/* Inflate src into exactly n bytes at dst, the stream ending exactly at src + len:
 * ULPT_OK, ULPT_ERR_NOMEM, or ULPT_ERR_CORRUPT. */
int ulpt__inflate(const ulpt_allocator *a, const unsigned char *src, size_t len,
                  unsigned char *dst, size_t n);

/* CRC-32 (zlib's) continued over n more bytes; start from 0. */
uint32_t ulpt__crc32(uint32_t crc, const unsigned char *p, size_t n);

/* ---- tensor payloads (tensor.c) ----------------------------------------------------- */

enum { /* tensor payload fields */
    TEN_DTYPE = 0,
    TEN_CODEC = 4,
    TEN_COUNT = 8,
    TEN_LENGTH = 16,
    TENSOR_BYTES = 24, /* then the data */
};
#define CODEC_STORED 0
#define CODEC_ZLIB 1 /* a zlib stream of the byte planes */
/* zlib inflates at most 1032:1; with a stream's fixed bytes, the data of a zlib tensor
 * holding `raw` bytes satisfies raw <= MAX_INFLATE * length + INFLATE_SLACK */
#define MAX_INFLATE 1032
#define INFLATE_SLACK 64

typedef struct {
    int dtype, codec;
    size_t count, len; /* elements; bytes of data */
    const unsigned char *data;
    unsigned char *owned; /* what ulpt__tensor_encode allocated */
} ulpt_tensor;

/* n floats as dtype, zlib'd at level (1-9) when that is strictly smaller, else stored. */
int ulpt__tensor_encode(const char *func, const ulpt_allocator *a, const float *x, size_t n,
                        int dtype, int level, ulpt_tensor *t);
void ulpt__tensor_free(const ulpt_allocator *a, ulpt_tensor *t);
ulpt_section_out ulpt__tensor_section(uint32_t tag, const ulpt_tensor *t);

/* A tensor payload checked against the element count it must hold, before any
 * allocation; t points into the section. */
int ulpt__tensor_check(const char *func, const ulpt_section *s, size_t count, const char *what,
                       ulpt_tensor *t);
int ulpt__tensor_decode(const char *func, const ulpt_allocator *a, const ulpt_tensor *t,
                        float *x);
/* What decoding a tensor of count elements of any dtype and codec requests at most: the
 * inflated bytes (at most 4 a element) and zlib's inflate state and window. */
double ulpt__tensor_decode_bytes(double count);

/* x stored as dtype and read back. */
float ulpt__dtype_round(float x, int dtype);

/* n floats as their little-endian float32 bytes. */
void ulpt__f32_bytes(const float *x, size_t n, unsigned char *out);

/* ---- the META payload (meta.c) ------------------------------------------------------ */

ulpt_section_out ulpt__meta_section(const ulpt_meta *m);
/* bounds, lengths, UTF-8, unique keys */
int ulpt__meta_check(const char *func, const ulpt_section *s);
/* into p, after ulpt__meta_check passed */
int ulpt__meta_load(const char *func, ulpt_prompt *p, const ulpt_section *s);
/* What ulpt__meta_load of a META payload of len bytes requests at most. */
double ulpt__meta_bytes(size_t len);

/* ---- prompt files (file.c) ---------------------------------------------------------- */

/* A prompt file, or with `extra` sections (a checkpoint's) a checkpoint, in a new
 * allocation from a, `prefix` bytes in. */
int ulpt__file_encode(const char *func, const ulpt_allocator *a, const ulpt_prompt *p, int dtype,
                      int level, const ulpt_section_out *extra, int n_extra, size_t prefix,
                      unsigned char **base, size_t *len);

/* The SHAP section's size and reserved field (end of check 3). */
int ulpt__shape_check(const char *func, const ulpt_container *c);

/* The parameter count and n_tokens x dim a checked SHAP section declares. */
double ulpt__shape_params(const ulpt_container *c);
double ulpt__shape_rows(const ulpt_container *c);

/* The prompt of a file whose container and sections passed (checks 4-8): shape, memory
 * (with `above` bytes for the objects the caller builds on it: an optimizer, a
 * forward-only trainer), tensor, fingerprint, values, metadata.  *tp describes the
 * parameter tensor. */
int ulpt__prompt_decode(const char *func, const ulpt_container *c, size_t len, double above,
                        ulpt_prompt **out, ulpt_tensor *tp);

/* ---- checkpoints (checkpoint.c) ----------------------------------------------------- */

/* The ZOST payload's fields, checked (check 3; nothing allocated): the options of the
 * trainer (batch resolved) and its stream position. */
int ulpt__zost_read(const char *func, const ulpt_section *s, ulpt_zo_options *o,
                    uint64_t *position);

/* The optimizer of a checkpoint whose prompt p was just decoded, and with zo not NULL
 * the forward-only trainer of its ZOST section (check 8). */
int ulpt__checkpoint_decode(const char *func, const ulpt_container *c, ulpt_prompt *p,
                            ulpt_optimizer **out, ulpt_zo **zo);

#endif /* ULPT_FORMAT_H */
