/* Byte-level helpers for quill/_core/tokens.pyx: big-endian loads and stores that are safe at any
 * alignment, and a UTF-8 validator. Pure C, no Python API, callable without the GIL. */
#ifndef QUILL_TOKENS_WIRE_H
#define QUILL_TOKENS_WIRE_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

static inline uint32_t quill_load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint16_t quill_load_be16(const unsigned char *p)
{
    return (uint16_t)(((uint16_t)p[0] << 8) | (uint16_t)p[1]);
}

static inline void quill_store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void quill_store_be16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline float quill_f32_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint32_t quill_bits_from_f32(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits;
}

/* A hint to start loading the cache line at p (no effect where unsupported). */
static inline void quill_prefetch(const void *p)
{
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p);
#else
    (void)p;
#endif
}

/* Copy n bytes from src to dst. A short copy (n <= 16) whose source and destination both have
 * 16 bytes of room is done as two fixed 8-byte moves instead of a call to memcpy: token texts
 * are mostly a few bytes long, and the extra bytes written land in spare capacity. */
#define QUILL_COPY_SLACK 16

static inline void quill_copy_text(unsigned char *dst, const unsigned char *src, size_t n,
                                   size_t src_room, size_t dst_room)
{
    if (n <= 16 && src_room >= 16 && dst_room >= 16) {
        uint64_t lo, hi;
        memcpy(&lo, src, 8);
        memcpy(&hi, src + 8, 8);
        memcpy(dst, &lo, 8);
        memcpy(dst + 8, &hi, 8);
    } else {
        memcpy(dst, src, n);
    }
}

/* 1 when every byte of p[0..n) is below 0x80. */
static inline int quill_is_ascii(const unsigned char *p, size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, p + i, 8);
        acc |= word;
    }
    for (; i < n; i++)
        acc |= p[i];
    return (acc & UINT64_C(0x8080808080808080)) == 0;
}

/* 1 when p[0..n) is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
static inline int quill_is_utf8(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80)
                return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            unsigned char lo = (c == 0xE0) ? 0xA0 : 0x80;
            unsigned char hi = (c == 0xED) ? 0x9F : 0xBF;
            if (i + 2 >= n || p[i + 1] < lo || p[i + 1] > hi || (p[i + 2] & 0xC0) != 0x80)
                return 0;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            unsigned char lo = (c == 0xF0) ? 0x90 : 0x80;
            unsigned char hi = (c == 0xF4) ? 0x8F : 0xBF;
            if (i + 3 >= n || p[i + 1] < lo || p[i + 1] > hi || (p[i + 2] & 0xC0) != 0x80 ||
                (p[i + 3] & 0xC0) != 0x80)
                return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

#endif
