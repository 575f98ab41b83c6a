/* float16 / bfloat16 conversion kernels for quill._casts.
 *
 * Every conversion is defined once, as a branch-free scalar function on the
 * raw bits (integer arithmetic only, so the result never depends on the
 * floating-point environment: rounding mode, FTZ/DAZ). Loops over those
 * functions are compiled several times:
 *
 *   portable  plain C, auto-vectorised for the build's baseline (any x86-64,
 *             aarch64, MSVC);
 *   avx2      the same loops compiled for AVX2, plus F16C hardware loops for
 *             float32 <-> float16;
 *   avx512    the same loops compiled for AVX-512 F/BW/VL, plus 512-bit F16C
 *             loops;
 *
 * and the best path the CPU supports is chosen at run time. The hardware
 * F16C instructions quiet signalling NaNs where numpy does not, so blocks
 * containing a NaN fall back to the scalar functions: every path returns
 * the same bits.
 */
#ifndef QUILL_CASTS_KERNELS_H
#define QUILL_CASTS_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QUILL_X86_DISPATCH 1
#include <immintrin.h>
#else
#define QUILL_X86_DISPATCH 0
#endif

#if defined(__GNUC__)
#define QUILL_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define QUILL_INLINE static __forceinline
#else
#define QUILL_INLINE static inline
#endif

/* ------------------------------------------------------------------------ */
/* Narrowing: round to nearest, ties to even, on the bits.                   */

/* float32 -> bfloat16, as ml_dtypes: NaN becomes the quiet NaN 0x7fc0 with
 * the input's sign (payload dropped); overflow rounds to infinity; float32
 * subnormals round like any other value. */
QUILL_INLINE uint16_t quill_f32_to_bf16(uint32_t bits)
{
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t nan = ((bits >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

/* float32 -> float16, as numpy: a NaN keeps its sign and the top 10 payload
 * bits (a signalling NaN stays signalling); a payload that would truncate to
 * zero becomes 1 so the result stays a NaN. */
QUILL_INLINE uint16_t quill_f32_to_f16(uint32_t bits)
{
    uint32_t sign = (bits >> 16) & 0x8000u;
    uint32_t mag = bits & 0x7fffffffu;
    /* normal float16 range (|x| >= 2^-14): move the exponent bias from 127
     * to 15 and round away 13 mantissa bits; saturate at infinity */
    uint32_t normal = ((mag - 0x38000000u) + 0x0fffu + ((mag >> 13) & 1u)) >> 13;
    normal = normal > 0x7c00u ? 0x7c00u : normal;
    /* subnormal float16 range: value = significand * 2^(exp - 150), in units
     * of 2^-24 that is significand >> (126 - exp) */
    uint32_t exponent = mag >> 23;
    uint32_t significand = (mag & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - exponent;
    shift = shift > 31u ? 31u : shift;
    uint32_t subnormal = (significand + ((1u << (shift - 1u)) - 1u)
                          + ((significand >> shift) & 1u)) >> shift;
    uint32_t nan = 0x7c00u | ((mag >> 13) & 0x3ffu);
    nan += nan == 0x7c00u;
    uint32_t out = mag > 0x7f800000u ? nan : (mag < 0x38800000u ? subnormal : normal);
    return (uint16_t)(sign | out);
}

/* |x| (non-NaN float64 bits) rounded once to a binary format with `mbits`
 * explicit mantissa bits and exponent bias `bias`, saturating at `inf`. */
QUILL_INLINE uint32_t quill_round_f64_magnitude(uint64_t mag, unsigned mbits, unsigned bias,
                                                uint32_t inf)
{
    const unsigned drop = 52u - mbits;
    uint64_t normal = ((mag - ((uint64_t)(1023u - bias) << 52))
                       + ((UINT64_C(1) << (drop - 1u)) - 1u) + ((mag >> drop) & 1u)) >> drop;
    normal = normal > inf ? inf : normal;
    uint64_t exponent = mag >> 52;
    uint64_t significand = (mag & UINT64_C(0xfffffffffffff)) | (UINT64_C(1) << 52);
    uint64_t shift = (uint64_t)(1076u - bias - mbits) - exponent;
    shift = shift > 63u ? 63u : shift;
    uint64_t subnormal = (significand + ((UINT64_C(1) << (shift - 1u)) - 1u)
                          + ((significand >> shift) & 1u)) >> shift;
    return (uint32_t)(mag < ((uint64_t)(1024u - bias) << 52) ? subnormal : normal);
}

/* float64 -> bfloat16, rounded once (ml_dtypes rounds twice, through
 * float32); NaN as for float32 -> bfloat16. */
QUILL_INLINE uint16_t quill_f64_to_bf16(uint64_t bits)
{
    uint32_t sign = (uint32_t)(bits >> 48) & 0x8000u;
    uint64_t mag = bits & UINT64_C(0x7fffffffffffffff);
    uint32_t out = mag > UINT64_C(0x7ff0000000000000)
                       ? 0x7fc0u : quill_round_f64_magnitude(mag, 7u, 127u, 0x7f80u);
    return (uint16_t)(sign | out);
}

/* float64 -> float16, rounded once, as numpy (NaN payload as for float32). */
QUILL_INLINE uint16_t quill_f64_to_f16(uint64_t bits)
{
    uint32_t sign = (uint32_t)(bits >> 48) & 0x8000u;
    uint64_t mag = bits & UINT64_C(0x7fffffffffffffff);
    uint32_t nan = 0x7c00u | ((uint32_t)(mag >> 42) & 0x3ffu);
    nan += nan == 0x7c00u;
    uint32_t out = mag > UINT64_C(0x7ff0000000000000)
                       ? nan : quill_round_f64_magnitude(mag, 10u, 15u, 0x7c00u);
    return (uint16_t)(sign | out);
}

/* ------------------------------------------------------------------------ */
/* Widening: exact. Subnormals are rebuilt as (integer significand) times a
 * power of two: both factors and the product are normal numbers, so the
 * floating-point environment cannot change the result.                      */

/* float16 -> float32, as numpy: NaN payloads (signalling or not) kept. */
QUILL_INLINE uint32_t quill_f16_to_f32(uint16_t half)
{
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16;
    uint32_t mag = half & 0x7fffu;
    uint32_t normal = (mag << 13) + (mag >= 0x7c00u ? 0x70000000u : 0x38000000u);
    float sub_value = (float)(int32_t)mag * 5.9604644775390625e-8f; /* 2^-24 */
    uint32_t subnormal;
    memcpy(&subnormal, &sub_value, sizeof subnormal);
    return sign | (mag < 0x0400u ? subnormal : normal);
}

/* float16 -> float64, as numpy: NaN payloads (signalling or not) kept. */
QUILL_INLINE uint64_t quill_f16_to_f64(uint16_t half)
{
    uint64_t sign = (uint64_t)(half & 0x8000u) << 48;
    uint64_t mag = half & 0x7fffu;
    uint64_t normal = (mag << 42)
                      + (mag >= 0x7c00u ? UINT64_C(0x7e00000000000000) : UINT64_C(0x3f00000000000000));
    double sub_value = (double)(int32_t)mag * 5.9604644775390625e-8; /* 2^-24 */
    uint64_t subnormal;
    memcpy(&subnormal, &sub_value, sizeof subnormal);
    return sign | (mag < 0x0400u ? subnormal : normal);
}

/* bfloat16 -> float32: exact, the bits shifted (NaN payloads kept). */
QUILL_INLINE uint32_t quill_bf16_to_f32(uint16_t half)
{
    return (uint32_t)half << 16;
}

/* bfloat16 -> float64, as ml_dtypes (which widens through float32 with the
 * hardware): NaNs come out quiet, payload kept. */
QUILL_INLINE uint64_t quill_bf16_to_f64(uint16_t half)
{
    uint64_t sign = (uint64_t)(half & 0x8000u) << 48;
    uint64_t mag = half & 0x7fffu;
    uint64_t normal = (mag << 45) + UINT64_C(0x3800000000000000);
    uint64_t special = UINT64_C(0x7ff0000000000000) | ((mag & 0x7fu) << 45)
                       | (mag > 0x7f80u ? UINT64_C(0x0008000000000000) : 0u);
    double sub_value = (double)(int32_t)mag * 9.183549615799121e-41; /* 2^-133 */
    uint64_t subnormal;
    memcpy(&subnormal, &sub_value, sizeof subnormal);
    return sign | (mag < 0x0080u ? subnormal : (mag >= 0x7f80u ? special : normal));
}

/* ------------------------------------------------------------------------ */
/* Contiguous loops.                                                         */

typedef void (*quill_cast_kernel)(const char *src, char *dst, size_t n);

enum quill_cast_kind {
    QUILL_F32_TO_BF16, QUILL_F32_TO_F16, QUILL_F64_TO_BF16, QUILL_F64_TO_F16,
    QUILL_BF16_TO_F32, QUILL_BF16_TO_F64, QUILL_F16_TO_F32, QUILL_F16_TO_F64,
    QUILL_CAST_KINDS
};

enum quill_cast_path { QUILL_PATH_PORTABLE, QUILL_PATH_AVX2, QUILL_PATH_AVX512, QUILL_CAST_PATHS };

/* One loop: n elements from src (SrcT bits) to dst (DstT bits), unaligned. */
#define QUILL_LOOP(ATTR, NAME, SRC_T, DST_T, ELEMENT_FN)                      \
    ATTR static void NAME(const char *src, char *dst, size_t n)               \
    {                                                                         \
        for (size_t i = 0; i < n; i++) {                                      \
            SRC_T x;                                                          \
            memcpy(&x, src + i * sizeof(SRC_T), sizeof(SRC_T));               \
            DST_T y = ELEMENT_FN(x);                                          \
            memcpy(dst + i * sizeof(DST_T), &y, sizeof(DST_T));               \
        }                                                                     \
    }

/* All eight loops for one instruction set, named quill_<kind>_<SUFFIX>. */
#define QUILL_LOOPS(ATTR, SUFFIX)                                                      \
    QUILL_LOOP(ATTR, quill_f32_to_bf16_##SUFFIX, uint32_t, uint16_t, quill_f32_to_bf16) \
    QUILL_LOOP(ATTR, quill_f32_to_f16_##SUFFIX, uint32_t, uint16_t, quill_f32_to_f16)   \
    QUILL_LOOP(ATTR, quill_f64_to_bf16_##SUFFIX, uint64_t, uint16_t, quill_f64_to_bf16) \
    QUILL_LOOP(ATTR, quill_f64_to_f16_##SUFFIX, uint64_t, uint16_t, quill_f64_to_f16)   \
    QUILL_LOOP(ATTR, quill_bf16_to_f32_##SUFFIX, uint16_t, uint32_t, quill_bf16_to_f32) \
    QUILL_LOOP(ATTR, quill_bf16_to_f64_##SUFFIX, uint16_t, uint64_t, quill_bf16_to_f64) \
    QUILL_LOOP(ATTR, quill_f16_to_f32_##SUFFIX, uint16_t, uint32_t, quill_f16_to_f32)   \
    QUILL_LOOP(ATTR, quill_f16_to_f64_##SUFFIX, uint16_t, uint64_t, quill_f16_to_f64)

#define QUILL_NO_ATTR
QUILL_LOOPS(QUILL_NO_ATTR, portable)

#if QUILL_X86_DISPATCH
#define QUILL_AVX2_ATTR __attribute__((target("avx2,f16c")))
#define QUILL_AVX512_ATTR __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl")))
QUILL_LOOPS(QUILL_AVX2_ATTR, avx2)
QUILL_LOOPS(QUILL_AVX512_ATTR, avx512)
#endif

/* ------------------------------------------------------------------------ */
/* Dispatch.                                                                 */

static const quill_cast_kernel quill_portable_kernels[QUILL_CAST_KINDS] = {
    quill_f32_to_bf16_portable, quill_f32_to_f16_portable,
    quill_f64_to_bf16_portable, quill_f64_to_f16_portable,
    quill_bf16_to_f32_portable, quill_bf16_to_f64_portable,
    quill_f16_to_f32_portable, quill_f16_to_f64_portable,
};

#if QUILL_X86_DISPATCH
static const quill_cast_kernel quill_avx2_kernels[QUILL_CAST_KINDS] = {
    quill_f32_to_bf16_avx2, quill_f32_to_f16_avx2,
    quill_f64_to_bf16_avx2, quill_f64_to_f16_avx2,
    quill_bf16_to_f32_avx2, quill_bf16_to_f64_avx2,
    quill_f16_to_f32_avx2, quill_f16_to_f64_avx2,
};
static const quill_cast_kernel quill_avx512_kernels[QUILL_CAST_KINDS] = {
    quill_f32_to_bf16_avx512, quill_f32_to_f16_avx512,
    quill_f64_to_bf16_avx512, quill_f64_to_f16_avx512,
    quill_bf16_to_f32_avx512, quill_bf16_to_f64_avx512,
    quill_f16_to_f32_avx512, quill_f16_to_f64_avx512,
};
#endif

/* 1 if this CPU (and OS) can run `path`. */
static int quill_path_available(int path)
{
    if (path == QUILL_PATH_PORTABLE) {
        return 1;
    }
#if QUILL_X86_DISPATCH
    __builtin_cpu_init();
    if (path == QUILL_PATH_AVX2) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    if (path == QUILL_PATH_AVX512) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")
               && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl");
    }
#endif
    return 0;
}

/* The loop for `kind` on `path`, or NULL if the path does not exist here. */
static quill_cast_kernel quill_get_kernel(int kind, int path)
{
    if (kind < 0 || kind >= QUILL_CAST_KINDS || !quill_path_available(path)) {
        return NULL;
    }
#if QUILL_X86_DISPATCH
    if (path == QUILL_PATH_AVX2) {
        return quill_avx2_kernels[kind];
    }
    if (path == QUILL_PATH_AVX512) {
        return quill_avx512_kernels[kind];
    }
#endif
    return quill_portable_kernels[kind];
}

/* ------------------------------------------------------------------------ */
/* Strided sources.                                                          */

#define QUILL_GATHER_ELEMENTS 2048
#define QUILL_MAX_NDIM 64

/* Convert an N-d source with arbitrary (also negative) byte strides into the
 * C-ordered contiguous dst. Rows whose elements are adjacent go straight
 * through the kernel; other elements are gathered into a small buffer first,
 * so every element passes through the same loop. Requires 1 <= ndim <= 64,
 * every shape[i] > 0 and src_item in {2, 4, 8}. */
static void quill_cast_strided(quill_cast_kernel kernel, const char *src, int ndim,
                               const ptrdiff_t *shape, const ptrdiff_t *strides,
                               size_t src_item, char *dst, size_t dst_item)
{
    uint64_t buffer[QUILL_GATHER_ELEMENTS];
    char *gathered = (char *)buffer;
    const size_t capacity = sizeof buffer / src_item;
    size_t pending = 0;
    ptrdiff_t index[QUILL_MAX_NDIM] = {0};
    const ptrdiff_t row_length = shape[ndim - 1];
    const ptrdiff_t row_stride = strides[ndim - 1];

    for (;;) {
        const char *row = src;
        for (int d = 0; d < ndim - 1; d++) {
            row += index[d] * strides[d];
        }
        if (row_stride == (ptrdiff_t)src_item && (size_t)row_length >= capacity / 4) {
            kernel(gathered, dst, pending);
            dst += pending * dst_item;
            pending = 0;
            kernel(row, dst, (size_t)row_length);
            dst += (size_t)row_length * dst_item;
        } else {
            for (ptrdiff_t i = 0; i < row_length; i++) {
                memcpy(gathered + pending * src_item, row + i * row_stride, src_item);
                if (++pending == capacity) {
                    kernel(gathered, dst, pending);
                    dst += pending * dst_item;
                    pending = 0;
                }
            }
        }
        int d = ndim - 2;
        while (d >= 0 && ++index[d] == shape[d]) {
            index[d] = 0;
            d--;
        }
        if (d < 0) {
            break;
        }
    }
    kernel(gathered, dst, pending);
}

#endif /* QUILL_CASTS_KERNELS_H */
