/* The Arrow C data interface and C stream interface structs (ABI-stable, from the Arrow
 * specification "The Arrow C data interface"), and the bitmap helpers quill/_core/arrow.pyx uses.
 * Pure C, no Python API. The ARROW_C_* guards let this header coexist with arrow/c/abi.h. */
#ifndef QUILL_ARROW_ABI_H
#define QUILL_ARROW_ABI_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE

#define ARROW_FLAG_DICTIONARY_ORDERED 1
#define ARROW_FLAG_NULLABLE 2
#define ARROW_FLAG_MAP_KEYS_SORTED 4

struct ArrowSchema {
    const char *format;
    const char *name;
    const char *metadata;
    int64_t flags;
    int64_t n_children;
    struct ArrowSchema **children;
    struct ArrowSchema *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};

struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

#endif /* ARROW_C_DATA_INTERFACE */

#ifndef ARROW_C_STREAM_INTERFACE
#define ARROW_C_STREAM_INTERFACE

struct ArrowArrayStream {
    int (*get_schema)(struct ArrowArrayStream *, struct ArrowSchema *out);
    int (*get_next)(struct ArrowArrayStream *, struct ArrowArray *out);
    const char *(*get_last_error)(struct ArrowArrayStream *);
    void (*release)(struct ArrowArrayStream *);
    void *private_data;
};

#endif /* ARROW_C_STREAM_INTERFACE */

/* Bit i of an Arrow bitmap (least significant bit first). */
static inline int quill_bit(const uint8_t *bitmap, int64_t i)
{
    return (bitmap[i >> 3] >> (i & 7)) & 1;
}

/* count (<= 8) bytes as a little-endian word, the first in the low byte. */
static inline uint64_t quill_load8(const uint8_t *v, int64_t count)
{
    uint64_t x = 0;
    int64_t i;
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
    if (count == 8) {
        memcpy(&x, v, 8);
        return x;
    }
#endif
    for (i = 0; i < count; i++)
        x |= (uint64_t)v[i] << (8 * i);
    return x;
}

/* A byte whose bit i says whether byte i of x has a bit of mask set. */
static inline unsigned quill_gather(uint64_t x, uint8_t mask)
{
    uint64_t masked = x & (mask * 0x0101010101010101ull);
    uint64_t nonzero = (((masked & 0x7f7f7f7f7f7f7f7full) + 0x7f7f7f7f7f7f7f7full) | masked) >> 7 & 0x0101010101010101ull;
    return (unsigned)((nonzero * 0x0102040810204080ull) >> 56);
}

static inline unsigned quill_popcount8(unsigned byte)
{
    return ((byte * 0x08040201u) >> 3 & 0x11111111u) * 0x11111111u >> 28;
}

/* Write k bitmaps of n bits in one pass over values: bit i of bitmaps[m] is
 * (values[i] & masks[m]) != 0 (whole bytes: the last byte's spare bits are 0), and set[m] counts
 * the bits set. Branch-free: each eight values are loaded once as a word, their masked bytes
 * turned into 0/1 and gathered into one byte by a multiplication. */
static inline void quill_pack_bits(const uint8_t *values, int64_t n, int k, const uint8_t *masks,
                                   uint8_t **bitmaps, int64_t *set)
{
    int64_t j, bytes = (n + 7) / 8;
    int m;
    for (m = 0; m < k; m++)
        set[m] = 0;
    for (j = 0; j < bytes; j++) {
        uint64_t x = quill_load8(values + 8 * j, n - 8 * j < 8 ? n - 8 * j : 8);
        for (m = 0; m < k; m++) {
            unsigned byte = quill_gather(x, masks[m]);
            bitmaps[m][j] = (uint8_t)byte;
            set[m] += quill_popcount8(byte);
        }
    }
}

/* The number of zero bits among bits [start, start + n) of a bitmap. */
static inline int64_t quill_count_zero_bits(const uint8_t *bitmap, int64_t start, int64_t n)
{
    int64_t i, zeros = 0;
    for (i = start; i < start + n; i++)
        zeros += !quill_bit(bitmap, i);
    return zeros;
}

#endif /* QUILL_ARROW_ABI_H */
