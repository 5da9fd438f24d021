/* container.c -- the container every prompt file and checkpoint shares: a 24-byte
 * header, tagged sections, a CRC-32 trailer (docs/FORMAT.md, "Layout").  It knows the
 * tags of formats 1.0 and 1.1 and their flag rule, nothing of what the payloads hold. */
#include "format.h"

#include <stdio.h>

static const unsigned char MAGIC[MAGIC_BYTES] = { 0x89, 'U', 'L', 'P', 'T', '\r', '\n', 0x1a };

int ulpt__container_write(const char *func, const ulpt_allocator *a, int kind,
                          const ulpt_section_out *s, int n, size_t prefix, unsigned char **base,
                          size_t *len)
{
    size_t total = HEADER_BYTES + TRAILER_BYTES;
    for (int i = 0; i < n; i++)
        total += SECTION_BYTES + s[i].len;
    unsigned char *mem = ulpt__alloc(a, prefix + total);
    if (!mem)
        return ulpt__error(ULPT_ERR_NOMEM, func, "no memory for a %zu-byte file", total);
    unsigned char *file = mem + prefix, *w = file;
    memcpy(w + HDR_MAGIC, MAGIC, MAGIC_BYTES);
    ulpt__put16(w + HDR_MAJOR, FORMAT_MAJOR);
    unsigned minor = 0; /* the oldest version that has every section written */
    for (int i = 0; i < n; i++)
        if (ulpt__section_minor(s[i].tag) > minor)
            minor = ulpt__section_minor(s[i].tag);
    ulpt__put16(w + HDR_MINOR, (uint16_t)minor);
    ulpt__put32(w + HDR_KIND, (uint32_t)kind);
    ulpt__put64(w + HDR_LENGTH, total);
    w += HEADER_BYTES;
    for (int i = 0; i < n; i++) {
        ulpt__put32(w + SECT_TAG, s[i].tag);
        ulpt__put32(w + SECT_FLAGS, s[i].flags);
        ulpt__put64(w + SECT_LENGTH, s[i].len);
        w += SECTION_BYTES;
        s[i].write(w, s[i].ctx);
        w += s[i].len;
    }
    ulpt__put32(w, ulpt__crc32(0, file, total - TRAILER_BYTES));
    *base = mem;
    *len = total;
    return ULPT_OK;
}

void ulpt__tag_name(uint32_t tag, char out[12])
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

unsigned ulpt__section_minor(uint32_t tag) { return tag == TAG_ZOST ? 1 : 0; }

/* Where a section of format 1.0 or 1.1 goes; NULL for a tag this version does not know. */
static ulpt_section *slot_of(ulpt_container *c, uint32_t tag)
{
    switch (tag) {
    case TAG_SHAP: return &c->shap;
    case TAG_META: return &c->meta;
    case TAG_PARM: return &c->parm;
    case TAG_OPTM: return &c->optm;
    case TAG_MOM1: return &c->mom1;
    case TAG_MOM2: return &c->mom2;
    case TAG_ZOST: return &c->zost;
    default: return NULL;
    }
}

int ulpt__container_read(const char *func, const unsigned char *b, size_t len, ulpt_container *c)
{
    *c = (ulpt_container){ 0 };
    if (len < MAGIC_BYTES && memcmp(b, MAGIC, len) == 0)
        return CORRUPT("truncated: %zu bytes, not even a header", len);
    if (len < MAGIC_BYTES || memcmp(b + HDR_MAGIC, MAGIC, MAGIC_BYTES) != 0)
        return ulpt__error(ULPT_ERR_FORMAT, func, "not a libulpt file (bad magic)");
    if (len < HEADER_BYTES + TRAILER_BYTES)
        return CORRUPT("truncated: %zu bytes, shorter than a header", len);
    c->major = ulpt__get16(b + HDR_MAJOR), c->minor = ulpt__get16(b + HDR_MINOR);
    if (c->major != FORMAT_MAJOR)
        return ulpt__error(ULPT_ERR_FORMAT, func, "format version %u.%u; this library reads %d.x",
                           c->major, c->minor, FORMAT_MAJOR);
    uint64_t declared = ulpt__get64(b + HDR_LENGTH);
    if (declared != len)
        return CORRUPT("%s: the file has %zu bytes, its header says %llu",
                       declared > len ? "truncated" : "trailing bytes", len,
                       (unsigned long long)declared);
    if (ulpt__crc32(0, b, len - TRAILER_BYTES) != ulpt__get32(b + len - TRAILER_BYTES))
        return CORRUPT("checksum mismatch: the file is damaged");
    c->kind = (int)ulpt__get32(b + HDR_KIND);
    if (c->kind != ULPT_FILE_PROMPT && c->kind != ULPT_FILE_CHECKPOINT)
        return ulpt__error(ULPT_ERR_FORMAT, func, "unknown file kind %d", c->kind);

    uint32_t seen[MAX_SECTIONS];
    int n = 0;
    size_t pos = HEADER_BYTES, end = len - TRAILER_BYTES;
    while (pos < end) {
        if (end - pos < SECTION_BYTES)
            return CORRUPT("section header at byte %zu runs past the end", pos);
        uint32_t tag = ulpt__get32(b + pos + SECT_TAG), flags = ulpt__get32(b + pos + SECT_FLAGS);
        uint64_t slen = ulpt__get64(b + pos + SECT_LENGTH);
        if (slen > end - pos - SECTION_BYTES)
            return CORRUPT("section at byte %zu claims %llu bytes, %zu remain", pos,
                           (unsigned long long)slen, end - pos - SECTION_BYTES);
        char name[12];
        ulpt__tag_name(tag, name);
        if (n == MAX_SECTIONS)
            return CORRUPT("more than %d sections", MAX_SECTIONS);
        for (int i = 0; i < n; i++) /* known or not, each tag at most once */
            if (seen[i] == tag)
                return CORRUPT("section %s appears twice", name);
        seen[n++] = tag;
        ulpt_section *sect = slot_of(c, tag);
        if (sect)
            *sect = (ulpt_section){ b + pos + SECTION_BYTES, (size_t)slen };
        else if (flags & SECTION_REQUIRED)
            return ulpt__error(ULPT_ERR_FORMAT, func,
                               "requires section %s that format %d.%d readers do not know "
                               "(file is %u.%u)",
                               name, FORMAT_MAJOR, FORMAT_MINOR, c->major, c->minor);
        /* else: optional, a later minor version's addition, skipped */
        pos += SECTION_BYTES + (size_t)slen;
    }
    return ULPT_OK;
}
