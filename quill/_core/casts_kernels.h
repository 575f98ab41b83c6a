/* float16 / bfloat16 conversion kernels for quill._core.casts.
 *
 * Every conversion is defined once, as a branch-free scalar function on the
 * raw bits. Rounding is integer arithmetic; the only floating-point
 * operations (rebuilding subnormals when widening) are exact products of
 * normal numbers, so results never depend on the floating-point environment
 * (rounding mode, FTZ/DAZ). Loops over those functions are compiled several
 * times:
 *
 *   portable  plain C, auto-vectorised for the build's baseline (any x86-64,
 *             aarch64, MSVC);
 *   avx2      the same loops compiled for AVX2, plus F16C hardware loops for
 *             float32 <-> float16 (explicit round-to-nearest-even, no MXCSR
 *             dependence);
 *   avx512    the same loops compiled for AVX-512 F/BW/VL, plus 512-bit F16C
 *             loops;
 *
 * and the best path the CPU supports is chosen at run time (GCC and Clang on
 * x86; elsewhere only the portable path is built). The hardware F16C
 * instructions quiet signalling NaNs where numpy does not, so blocks
 * containing a NaN fall back to the scalar functions: every path returns the
 * same bits.
 */
#ifndef QUILL_CASTS_KERNELS_H
#define QUILL_CASTS_KERNELS_H

#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* for mincore(); Python.h, included first, already asks for it */
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define QUILL_X86_DISPATCH 1
#include <immintrin.h>
#else
#define QUILL_X86_DISPATCH 0
#endif

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#if defined(__GNUC__)
#define QUILL_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define QUILL_INLINE static __forceinline
#else
#define QUILL_INLINE static inline
#endif

/* ------------------------------------------------------------------------ */
/* Building blocks. Choices are made with bit masks rather than ?: so that  */
/* compilers if-convert and vectorise the loops (with -ftrapping-math, gcc  */
/* will not select between results of floating-point operations).           */

/* a where cond (0 or 1) is 1, else b */
QUILL_INLINE uint32_t quill_select32(uint32_t cond, uint32_t a, uint32_t b)
{
    uint32_t mask = 0u - cond;
    return (a & mask) | (b & ~mask);
}

QUILL_INLINE uint64_t quill_select64(uint64_t cond, uint64_t a, uint64_t b)
{
    uint64_t mask = 0u - cond;
    return (a & mask) | (b & ~mask);
}

/* significand / 2^shift, rounded to nearest, ties to even; shift is first
 * clamped to [2, 31] (values shifted that far out round to 0 anyway). */
QUILL_INLINE uint32_t quill_shift_round32(uint32_t significand, uint32_t shift)
{
    shift = quill_select32(shift > 31u, 31u, shift);
    shift = quill_select32(shift < 2u, 2u, shift);
    uint32_t kept = significand >> (shift - 1u);                   /* result + rounding bit */
    uint32_t sticky = (significand << (33u - shift)) != 0u;        /* any bit below it */
    uint32_t quotient = kept >> 1;
    return quotient + (kept & (quotient | sticky) & 1u);
}

QUILL_INLINE uint64_t quill_shift_round64(uint64_t significand, uint64_t shift)
{
    shift = quill_select64(shift > 63u, 63u, shift);
    shift = quill_select64(shift < 2u, 2u, shift);
    uint64_t kept = significand >> (shift - 1u);
    uint64_t sticky = (significand << (65u - shift)) != 0u;
    uint64_t quotient = kept >> 1;
    return quotient + (kept & (quotient | sticky) & 1u);
}

/* ------------------------------------------------------------------------ */
/* Narrowing: round to nearest, ties to even, on the bits.                   */

/* float32 -> bfloat16, as ml_dtypes: NaN becomes the quiet NaN 0x7fc0 with
 * the input's sign (payload dropped); overflow rounds to infinity; float32
 * subnormals round like any other value. */
QUILL_INLINE uint16_t quill_f32_to_bf16(uint32_t bits)
{
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t nan = ((bits >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)quill_select32((bits & 0x7fffffffu) > 0x7f800000u, nan, rounded);
}

/* float32 -> float16 for |x| in float16's normal range and beyond: move the
 * exponent bias from 127 to 15, round away 13 mantissa bits, saturate at
 * infinity. */
QUILL_INLINE uint32_t quill_f32_to_f16_normal(uint32_t mag)
{
    uint32_t normal = ((mag - 0x38000000u) + 0x0fffu + ((mag >> 13) & 1u)) >> 13;
    return quill_select32(normal > 0x7c00u, 0x7c00u, normal);
}

/* float32 -> float16, as numpy: a NaN keeps its sign and the top 10 payload
 * bits (a signalling NaN stays signalling); a payload that would truncate to
 * zero becomes 1 so the result stays a NaN. */
QUILL_INLINE uint16_t quill_f32_to_f16(uint32_t bits)
{
    uint32_t sign = (bits >> 16) & 0x8000u;
    uint32_t mag = bits & 0x7fffffffu;
    /* subnormal float16 range (|x| < 2^-14): value = significand * 2^(exponent - 150),
     * in units of 2^-24 that is significand / 2^(126 - exponent) */
    uint32_t significand = (mag & 0x7fffffu) | 0x800000u;
    uint32_t subnormal = quill_shift_round32(significand, 126u - (mag >> 23));
    uint32_t nan = 0x7c00u | ((mag >> 13) & 0x3ffu);
    nan += nan == 0x7c00u;
    uint32_t finite = quill_select32(mag < 0x38800000u, subnormal, quill_f32_to_f16_normal(mag));
    return (uint16_t)(sign | quill_select32(mag > 0x7f800000u, nan, finite));
}

/* 1 unless quill_f32_to_f16_common applies: NaN, or a non-zero |x| below
 * float16's smallest normal 2^-14. */
QUILL_INLINE uint32_t quill_f32_to_f16_is_rare(uint32_t bits)
{
    uint32_t mag = bits & 0x7fffffffu;
    return (uint32_t)(mag - 1u < 0x387fffffu) | (uint32_t)(mag > 0x7f800000u);
}

/* quill_f32_to_f16 for inputs that are not rare (cheaper: no subnormals). */
QUILL_INLINE uint16_t quill_f32_to_f16_common(uint32_t bits)
{
    uint32_t mag = bits & 0x7fffffffu;
    uint32_t zero_mask = 0u - (uint32_t)(mag != 0u);
    return (uint16_t)(((bits >> 16) & 0x8000u) | (quill_f32_to_f16_normal(mag) & zero_mask));
}

/* float64 -> a binary format with `mbits` explicit mantissa bits, exponent
 * bias `bias` and infinity `inf`, for |x| in its normal range and beyond:
 * rebias, round away 52 - mbits bits, saturate at infinity. */
QUILL_INLINE uint64_t quill_round_f64_normal(uint64_t mag, unsigned mbits, unsigned bias,
                                             uint64_t inf)
{
    const unsigned drop = 52u - mbits;
    uint64_t normal = ((mag - ((uint64_t)(1023u - bias) << 52))
                       + ((UINT64_C(1) << (drop - 1u)) - 1u) + ((mag >> drop) & 1u)) >> drop;
    return quill_select64(normal > inf, inf, normal);
}

/* The same for any non-NaN |x|, subnormal results included. */
QUILL_INLINE uint64_t quill_round_f64(uint64_t mag, unsigned mbits, unsigned bias, uint64_t inf)
{
    /* below the target's smallest normal: value = significand * 2^(exponent - 1075),
     * in units of the smallest subnormal 2^(1 - bias - mbits) */
    uint64_t significand = (mag & UINT64_C(0xfffffffffffff)) | (UINT64_C(1) << 52);
    uint64_t subnormal = quill_shift_round64(significand,
                                             (uint64_t)(1076u - bias - mbits) - (mag >> 52));
    return quill_select64(mag < ((uint64_t)(1024u - bias) << 52), subnormal,
                          quill_round_f64_normal(mag, mbits, bias, inf));
}

/* 1 for a float64 NaN or a non-zero |x| below the smallest normal of the
 * target with exponent bias `bias`. */
QUILL_INLINE uint32_t quill_f64_is_rare(uint64_t bits, unsigned bias)
{
    uint64_t mag = bits & UINT64_C(0x7fffffffffffffff);
    return (uint32_t)(mag - 1u < ((uint64_t)(1024u - bias) << 52) - 1u)
           | (uint32_t)(mag > UINT64_C(0x7ff0000000000000));
}

/* float64 -> half for inputs that are not rare (no NaN, no subnormal result). */
QUILL_INLINE uint16_t quill_f64_to_half_common(uint64_t bits, unsigned mbits, unsigned bias,
                                               uint64_t inf)
{
    uint64_t mag = bits & UINT64_C(0x7fffffffffffffff);
    uint64_t zero_mask = 0u - (uint64_t)(mag != 0u);
    return (uint16_t)(((bits >> 48) & 0x8000u)
                      | (quill_round_f64_normal(mag, mbits, bias, inf) & zero_mask));
}

/* float64 -> bfloat16, rounded once (ml_dtypes rounds twice, through
 * float32); NaN as for float32 -> bfloat16. */
QUILL_INLINE uint16_t quill_f64_to_bf16(uint64_t bits)
{
    uint64_t sign = (bits >> 48) & 0x8000u;
    uint64_t mag = bits & UINT64_C(0x7fffffffffffffff);
    uint64_t rounded = quill_round_f64(mag, 7u, 127u, 0x7f80u);
    return (uint16_t)(sign | quill_select64(mag > UINT64_C(0x7ff0000000000000), 0x7fc0u, rounded));
}

QUILL_INLINE uint32_t quill_f64_to_bf16_is_rare(uint64_t bits)
{
    return quill_f64_is_rare(bits, 127u);
}

QUILL_INLINE uint16_t quill_f64_to_bf16_common(uint64_t bits)
{
    return quill_f64_to_half_common(bits, 7u, 127u, 0x7f80u);
}

/* float64 -> float16, rounded once, as numpy (NaN payload as for float32). */
QUILL_INLINE uint16_t quill_f64_to_f16(uint64_t bits)
{
    uint64_t sign = (bits >> 48) & 0x8000u;
    uint64_t mag = bits & UINT64_C(0x7fffffffffffffff);
    uint64_t nan = 0x7c00u | ((mag >> 42) & 0x3ffu);
    nan += nan == 0x7c00u;
    uint64_t rounded = quill_round_f64(mag, 10u, 15u, 0x7c00u);
    return (uint16_t)(sign | quill_select64(mag > UINT64_C(0x7ff0000000000000), nan, rounded));
}

QUILL_INLINE uint32_t quill_f64_to_f16_is_rare(uint64_t bits)
{
    return quill_f64_is_rare(bits, 15u);
}

QUILL_INLINE uint16_t quill_f64_to_f16_common(uint64_t bits)
{
    return quill_f64_to_half_common(bits, 10u, 15u, 0x7c00u);
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
    uint32_t normal = (mag << 13) + quill_select32(mag >= 0x7c00u, 0x70000000u, 0x38000000u);
    float sub_value = (float)(int32_t)mag * 5.9604644775390625e-8f; /* 2^-24 */
    uint32_t subnormal;
    memcpy(&subnormal, &sub_value, sizeof subnormal);
    return sign | quill_select32(mag < 0x0400u, subnormal, normal);
}

/* float16 -> float64, as numpy: NaN payloads (signalling or not) kept. */
QUILL_INLINE uint64_t quill_f16_to_f64(uint16_t half)
{
    uint64_t sign = (uint64_t)(half & 0x8000u) << 48;
    uint64_t mag = half & 0x7fffu;
    uint64_t normal = (mag << 42) + quill_select64(mag >= 0x7c00u, UINT64_C(0x7e00000000000000),
                                                   UINT64_C(0x3f00000000000000));
    double sub_value = (double)(int32_t)mag * 5.9604644775390625e-8; /* 2^-24 */
    uint64_t subnormal;
    memcpy(&subnormal, &sub_value, sizeof subnormal);
    return sign | quill_select64(mag < 0x0400u, subnormal, normal);
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
                       | quill_select64(mag > 0x7f80u, UINT64_C(0x0008000000000000), 0u);
    double sub_value = (double)(int32_t)mag * 9.183549615799121e-41; /* 2^-133 */
    uint64_t subnormal;
    memcpy(&subnormal, &sub_value, sizeof subnormal);
    return sign | quill_select64(mag < 0x0080u, subnormal,
                                 quill_select64(mag >= 0x7f80u, special, normal));
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

/* Statement: COUNT elements from SRC (SRC_T bits) to DST (DST_T bits), unaligned. */
#define QUILL_CONVERT(SRC, DST, COUNT, SRC_T, DST_T, ELEMENT_FN)              \
    for (size_t i_ = 0; i_ < (COUNT); i_++) {                                 \
        SRC_T x_;                                                             \
        memcpy(&x_, (SRC) + i_ * sizeof(SRC_T), sizeof(SRC_T));               \
        DST_T y_ = ELEMENT_FN(x_);                                            \
        memcpy((DST) + i_ * sizeof(DST_T), &y_, sizeof(DST_T));               \
    }

/* One loop over the whole array. */
#define QUILL_LOOP(ATTR, NAME, SRC_T, DST_T, ELEMENT_FN)                      \
    ATTR static void NAME(const char *src, char *dst, size_t n)               \
    {                                                                         \
        QUILL_CONVERT(src, dst, n, SRC_T, DST_T, ELEMENT_FN)                  \
    }

/* A loop for narrowing conversions whose subnormal results cost most of the
 * work: blocks of QUILL_BLOCK elements without NaNs or subnormal results
 * (checked first, vectorised) take the cheaper ELEMENT_FN##_common. */
#define QUILL_BLOCK 32
#define QUILL_SPLIT_LOOP(ATTR, NAME, SRC_T, DST_T, ELEMENT_FN)                \
    ATTR static void NAME(const char *src, char *dst, size_t n)               \
    {                                                                         \
        size_t done = 0;                                                      \
        for (; done + QUILL_BLOCK <= n; done += QUILL_BLOCK) {                \
            const char *block_src = src + done * sizeof(SRC_T);               \
            char *block_dst = dst + done * sizeof(DST_T);                     \
            uint32_t rare = 0;                                                \
            for (size_t j = 0; j < QUILL_BLOCK; j++) {                        \
                SRC_T x;                                                      \
                memcpy(&x, block_src + j * sizeof(SRC_T), sizeof(SRC_T));     \
                rare |= ELEMENT_FN##_is_rare(x);                              \
            }                                                                 \
            if (rare) {                                                       \
                QUILL_CONVERT(block_src, block_dst, QUILL_BLOCK, SRC_T, DST_T, ELEMENT_FN) \
            } else {                                                          \
                QUILL_CONVERT(block_src, block_dst, QUILL_BLOCK, SRC_T, DST_T,     \
                              ELEMENT_FN##_common)                            \
            }                                                                 \
        }                                                                     \
        QUILL_CONVERT(src + done * sizeof(SRC_T), dst + done * sizeof(DST_T), n - done, \
                      SRC_T, DST_T, ELEMENT_FN)                               \
    }

/* All eight loops for one instruction set, named quill_<kind>_<SUFFIX>. */
#define QUILL_LOOPS(ATTR, SUFFIX)                                                            \
    QUILL_LOOP(ATTR, quill_f32_to_bf16_##SUFFIX, uint32_t, uint16_t, quill_f32_to_bf16)       \
    QUILL_SPLIT_LOOP(ATTR, quill_f32_to_f16_##SUFFIX, uint32_t, uint16_t, quill_f32_to_f16)   \
    QUILL_SPLIT_LOOP(ATTR, quill_f64_to_bf16_##SUFFIX, uint64_t, uint16_t, quill_f64_to_bf16) \
    QUILL_SPLIT_LOOP(ATTR, quill_f64_to_f16_##SUFFIX, uint64_t, uint16_t, quill_f64_to_f16)   \
    QUILL_LOOP(ATTR, quill_bf16_to_f32_##SUFFIX, uint16_t, uint32_t, quill_bf16_to_f32)       \
    QUILL_LOOP(ATTR, quill_bf16_to_f64_##SUFFIX, uint16_t, uint64_t, quill_bf16_to_f64)       \
    QUILL_LOOP(ATTR, quill_f16_to_f32_##SUFFIX, uint16_t, uint32_t, quill_f16_to_f32)         \
    QUILL_LOOP(ATTR, quill_f16_to_f64_##SUFFIX, uint16_t, uint64_t, quill_f16_to_f64)

#define QUILL_NO_ATTR
QUILL_LOOPS(QUILL_NO_ATTR, portable)

#if QUILL_X86_DISPATCH
#define QUILL_AVX2_ATTR __attribute__((target("avx2,f16c")))
#define QUILL_AVX512_ATTR __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl")))
QUILL_LOOPS(QUILL_AVX2_ATTR, avx2)
QUILL_LOOPS(QUILL_AVX512_ATTR, avx512)

/* float32 <-> float16 with the F16C instructions (round to nearest even,
 * independent of MXCSR). Blocks holding a NaN take the scalar function:
 * the hardware would quiet signalling NaNs, numpy does not. */

QUILL_AVX2_ATTR static void quill_f32_to_f16_f16c(const char *src, char *dst, size_t n)
{
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    const __m256i infinity = _mm256_set1_epi32(0x7f800000);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i bits = _mm256_loadu_si256((const __m256i *)(src + 4 * i));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, magnitude), infinity);
        if (_mm256_testz_si256(nan, nan)) {
            __m128i halves = _mm256_cvtps_ph(_mm256_castsi256_ps(bits), _MM_FROUND_TO_NEAREST_INT);
            _mm_storeu_si128((__m128i *)(dst + 2 * i), halves);
        } else {
            quill_f32_to_f16_avx2(src + 4 * i, dst + 2 * i, 8);
        }
    }
    quill_f32_to_f16_avx2(src + 4 * i, dst + 2 * i, n - i);
}

QUILL_AVX2_ATTR static void quill_f16_to_f32_f16c(const char *src, char *dst, size_t n)
{
    const __m128i magnitude = _mm_set1_epi16(0x7fff);
    const __m128i infinity = _mm_set1_epi16(0x7c00);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i halves = _mm_loadu_si128((const __m128i *)(src + 2 * i));
        __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(halves, magnitude), infinity);
        if (_mm_testz_si128(nan, nan)) {
            _mm256_storeu_ps((float *)(dst + 4 * i), _mm256_cvtph_ps(halves));
        } else {
            quill_f16_to_f32_avx2(src + 2 * i, dst + 4 * i, 8);
        }
    }
    quill_f16_to_f32_avx2(src + 2 * i, dst + 4 * i, n - i);
}

QUILL_AVX512_ATTR static void quill_f32_to_f16_f16c512(const char *src, char *dst, size_t n)
{
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
    const __m512i infinity = _mm512_set1_epi32(0x7f800000);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i bits = _mm512_loadu_si512((const void *)(src + 4 * i));
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, magnitude), infinity);
        if (nan == 0) {
            __m256i halves = _mm512_cvtps_ph(_mm512_castsi512_ps(bits), _MM_FROUND_TO_NEAREST_INT);
            _mm256_storeu_si256((__m256i *)(dst + 2 * i), halves);
        } else {
            quill_f32_to_f16_avx512(src + 4 * i, dst + 2 * i, 16);
        }
    }
    quill_f32_to_f16_avx512(src + 4 * i, dst + 2 * i, n - i);
}

QUILL_AVX512_ATTR static void quill_f16_to_f32_f16c512(const char *src, char *dst, size_t n)
{
    const __m256i magnitude = _mm256_set1_epi16(0x7fff);
    const __m256i infinity = _mm256_set1_epi16(0x7c00);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i halves = _mm256_loadu_si256((const __m256i *)(src + 2 * i));
        __mmask16 nan = _mm256_cmpgt_epi16_mask(_mm256_and_si256(halves, magnitude), infinity);
        if (nan == 0) {
            _mm512_storeu_ps((void *)(dst + 4 * i), _mm512_cvtph_ps(halves));
        } else {
            quill_f16_to_f32_avx512(src + 2 * i, dst + 4 * i, 16);
        }
    }
    quill_f16_to_f32_avx512(src + 2 * i, dst + 4 * i, n - i);
}
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
    quill_f32_to_bf16_avx2, quill_f32_to_f16_f16c,
    quill_f64_to_bf16_avx2, quill_f64_to_f16_avx2,
    quill_bf16_to_f32_avx2, quill_bf16_to_f64_avx2,
    quill_f16_to_f32_f16c, quill_f16_to_f64_avx2,
};
static const quill_cast_kernel quill_avx512_kernels[QUILL_CAST_KINDS] = {
    quill_f32_to_bf16_avx512, quill_f32_to_f16_f16c512,
    quill_f64_to_bf16_avx512, quill_f64_to_f16_avx512,
    quill_bf16_to_f32_avx512, quill_bf16_to_f64_avx512,
    quill_f16_to_f32_f16c512, quill_f16_to_f64_avx512,
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
/* Large contiguous outputs: non-temporal stores.                            */

#define QUILL_STREAM_MIN_BYTES ((size_t)16 << 20)
#define QUILL_STREAM_BLOCK_BYTES 8192

static const unsigned char quill_source_size[QUILL_CAST_KINDS] = {4, 4, 8, 8, 2, 2, 2, 2};
static const unsigned char quill_target_size[QUILL_CAST_KINDS] = {2, 2, 2, 2, 4, 8, 4, 8};

#if QUILL_X86_DISPATCH
typedef void (*quill_block_store)(char *dst, const char *block, size_t bytes);

/* Copy `bytes` (a multiple of 64) from the aligned block to the 64-byte
 * aligned dst with non-temporal stores. */
QUILL_AVX2_ATTR static void quill_stream_store_avx2(char *dst, const char *block, size_t bytes)
{
    for (size_t i = 0; i < bytes; i += 32) {
        _mm256_stream_si256((__m256i *)(dst + i), _mm256_load_si256((const __m256i *)(block + i)));
    }
}

QUILL_AVX512_ATTR static void quill_stream_store_avx512(char *dst, const char *block, size_t bytes)
{
    for (size_t i = 0; i < bytes; i += 64) {
        _mm512_stream_si512((void *)(dst + i), _mm512_load_si512((const void *)(block + i)));
    }
}
#endif

/* 1 if the memory page holding p has never been touched, i.e. a fresh mapping
 * that the OS will fault in and zero on the first write (Linux; 0 elsewhere). */
static int quill_untouched_page(const char *p)
{
#if defined(__linux__)
    long page = sysconf(_SC_PAGESIZE);
    unsigned char resident = 1;
    if (page > 0
        && mincore((void *)((uintptr_t)p & ~(uintptr_t)(page - 1)), 1, &resident) == 0) {
        return !(resident & 1);
    }
#else
    (void)p;
#endif
    return 0;
}

/* Convert n contiguous elements of `kind` on `path` (which must be
 * available). With `stream` set, on the SIMD paths, an output of
 * QUILL_STREAM_MIN_BYTES or more (far beyond L2, a good part of a typical L3)
 * is converted block by block into an L1-resident buffer and written with
 * non-temporal stores: memory traffic drops by a third or more (no read of
 * each destination line before it is overwritten) and the caches keep their
 * contents. Fresh memory (stream unset by the caller, or an untouched last
 * page) is written with ordinary stores: the OS zeroes each page through the
 * cache as it faults it in, and ordinary stores then hit those lines. */
static void quill_cast_contiguous(int kind, int path, const char *src, char *dst, size_t n,
                                  int stream)
{
    quill_cast_kernel kernel = quill_get_kernel(kind, path);
#if QUILL_X86_DISPATCH
    const size_t src_item = quill_source_size[kind];
    const size_t dst_item = quill_target_size[kind];
    if (stream && path != QUILL_PATH_PORTABLE && n * dst_item >= QUILL_STREAM_MIN_BYTES
        && (uintptr_t)dst % dst_item == 0 && !quill_untouched_page(dst + n * dst_item - 1)) {
        quill_block_store store = path == QUILL_PATH_AVX512 ? quill_stream_store_avx512
                                                            : quill_stream_store_avx2;
        /* aligned by hand: mingw-w64's gcc does not align stack arrays beyond 16 bytes */
        char block_storage[QUILL_STREAM_BLOCK_BYTES + 63];
        char *block = (char *)(((uintptr_t)block_storage + 63u) & ~(uintptr_t)63u);
        const size_t per_block = QUILL_STREAM_BLOCK_BYTES / dst_item;
        size_t head = ((64u - (uintptr_t)dst % 64u) % 64u) / dst_item;
        kernel(src, dst, head);
        src += head * src_item;
        dst += head * dst_item;
        n -= head;
        for (; n >= per_block; n -= per_block) {
            kernel(src, block, per_block);
            store(dst, block, QUILL_STREAM_BLOCK_BYTES);
            src += per_block * src_item;
            dst += QUILL_STREAM_BLOCK_BYTES;
        }
        _mm_sfence();
    }
#else
    (void)stream;
#endif
    kernel(src, dst, n);
}

/* ------------------------------------------------------------------------ */
/* Strided sources.                                                          */

#define QUILL_GATHER_ELEMENTS 2048
#define QUILL_TILE_ROWS 16
#define QUILL_MAX_NDIM 64

/* Gather loops, one per element size:
 *   gather:      `count` elements `stride` bytes apart -> packed dst;
 *   gather_tile: a QUILL_TILE_ROWS x `columns` tile whose rows are `row_step`
 *                bytes apart and columns `stride` bytes apart -> packed dst,
 *                row after row, reading column after column (for sources
 *                whose rows are closer in memory than their columns, such as
 *                transposed arrays). */
#define QUILL_GATHERS(SUFFIX, ITEM_T)                                           \
    static void quill_gather_##SUFFIX(char *dst, const char *src, ptrdiff_t stride, \
                                      size_t count)                             \
    {                                                                           \
        for (size_t i = 0; i < count; i++) {                                    \
            ITEM_T item;                                                        \
            memcpy(&item, src + (ptrdiff_t)i * stride, sizeof item);           \
            memcpy(dst + i * sizeof item, &item, sizeof item);                  \
        }                                                                       \
    }                                                                           \
    static void quill_gather_tile_##SUFFIX(char *dst, const char *src, ptrdiff_t row_step, \
                                           ptrdiff_t stride, size_t columns)    \
    {                                                                           \
        for (size_t j = 0; j < columns; j++) {                                  \
            for (size_t t = 0; t < QUILL_TILE_ROWS; t++) {                      \
                ITEM_T item;                                                    \
                memcpy(&item, src + (ptrdiff_t)t * row_step + (ptrdiff_t)j * stride, sizeof item); \
                memcpy(dst + (t * columns + j) * sizeof item, &item, sizeof item); \
            }                                                                   \
        }                                                                       \
    }
QUILL_GATHERS(16, uint16_t)
QUILL_GATHERS(32, uint32_t)
QUILL_GATHERS(64, uint64_t)

/* Convert an N-d source with arbitrary (also negative or zero) byte strides
 * into the C-ordered contiguous dst, row by row (a row: the last axis).
 * Long rows whose elements are adjacent go straight through the kernel.
 * When rows are closer to each other in memory than their elements are,
 * QUILL_TILE_ROWS rows at a time are gathered tile by tile, so that every
 * cache line read is used. Other elements are gathered into a small buffer
 * first. Every element passes through the same kernel loop. Requires
 * 1 <= ndim <= 64, every shape[i] > 0 and src_item in {2, 4, 8}. */
static void quill_cast_strided(quill_cast_kernel kernel, const char *src, int ndim,
                               const ptrdiff_t *shape, const ptrdiff_t *strides,
                               size_t src_item, char *dst, size_t dst_item)
{
    uint64_t buffer[QUILL_GATHER_ELEMENTS];
    char *gathered = (char *)buffer;
    const size_t capacity = sizeof buffer / src_item;
    void (*gather)(char *, const char *, ptrdiff_t, size_t) =
        src_item == 2 ? quill_gather_16 : (src_item == 4 ? quill_gather_32 : quill_gather_64);
    void (*gather_tile)(char *, const char *, ptrdiff_t, ptrdiff_t, size_t) =
        src_item == 2 ? quill_gather_tile_16
                      : (src_item == 4 ? quill_gather_tile_32 : quill_gather_tile_64);
    size_t pending = 0;
    ptrdiff_t index[QUILL_MAX_NDIM] = {0};
    const size_t row_length = (size_t)shape[ndim - 1];
    const ptrdiff_t row_stride = strides[ndim - 1];
    const ptrdiff_t row_step = ndim >= 2 ? strides[ndim - 2] : 0;
    const int tiled = ndim >= 2 && row_length > 1
                      && (row_step < 0 ? -row_step : row_step)
                             < (row_stride < 0 ? -row_stride : row_stride);

    for (;;) {
        const char *row = src;
        for (int d = 0; d < ndim - 1; d++) {
            row += index[d] * strides[d];
        }
        ptrdiff_t rows_done = 1;
        if (tiled && shape[ndim - 2] - index[ndim - 2] >= QUILL_TILE_ROWS) {
            kernel(gathered, dst, pending);
            dst += pending * dst_item;
            pending = 0;
            const size_t tile_columns = capacity / QUILL_TILE_ROWS;
            for (size_t done = 0; done < row_length; done += tile_columns) {
                size_t columns = row_length - done;
                columns = columns < tile_columns ? columns : tile_columns;
                gather_tile(gathered, row + (ptrdiff_t)done * row_stride, row_step, row_stride,
                            columns);
                for (size_t t = 0; t < QUILL_TILE_ROWS; t++) {
                    kernel(gathered + t * columns * src_item,
                           dst + (t * row_length + done) * dst_item, columns);
                }
            }
            dst += QUILL_TILE_ROWS * row_length * dst_item;
            rows_done = QUILL_TILE_ROWS;
        } else if (row_stride == (ptrdiff_t)src_item && row_length >= capacity / 4) {
            kernel(gathered, dst, pending);
            dst += pending * dst_item;
            pending = 0;
            kernel(row, dst, row_length);
            dst += row_length * dst_item;
        } else {
            for (size_t done = 0; done < row_length;) {
                size_t take = row_length - done;
                take = take < capacity - pending ? take : capacity - pending;
                gather(gathered + pending * src_item, row + (ptrdiff_t)done * row_stride,
                       row_stride, take);
                done += take;
                pending += take;
                if (pending == capacity) {
                    kernel(gathered, dst, pending);
                    dst += pending * dst_item;
                    pending = 0;
                }
            }
        }
        int d = ndim - 2;
        if (d >= 0) {
            index[d] += rows_done;
        }
        while (d >= 0 && index[d] == shape[d]) {
            index[d] = 0;
            d--;
            if (d >= 0) {
                index[d]++;
            }
        }
        if (d < 0) {
            break;
        }
    }
    kernel(gathered, dst, pending);
}

#endif /* QUILL_CASTS_KERNELS_H */
