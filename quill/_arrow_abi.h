/* The Arrow C data interface and C stream interface structs (ABI-stable, from the Arrow
 * specification "The Arrow C data interface"), and the bitmap helpers quill/_arrow.pyx uses.
 * Pure C, no Python API. The ARROW_C_* guards let this header coexist with arrow/c/abi.h. */
#ifndef QUILL_ARROW_ABI_H
#define QUILL_ARROW_ABI_H

#include <stdint.h>
#include <stddef.h>

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

/* Set bits of a zeroed bitmap of n bits where (values[i] & mask) != 0; return how many were set. */
static inline int64_t quill_pack_bits(uint8_t *bitmap, const uint8_t *values, uint8_t mask, int64_t n)
{
    int64_t i, set = 0;
    for (i = 0; i < n; i++) {
        if (values[i] & mask) {
            bitmap[i >> 3] |= (uint8_t)(1u << (i & 7));
            set++;
        }
    }
    return set;
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
