"""quill._core.casts.cast against numpy, ml_dtypes and exact rational arithmetic, on every kernel path."""

import ctypes
import math
import platform
import subprocess
import sys
import warnings
from contextlib import contextmanager
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quill._core.casts import _available_paths, _cast_using, cast
from quill.dtypes import DType

BF16 = np.dtype(ml_dtypes.bfloat16)
PATHS = _available_paths()
# numpy 2 raised the most dimensions an array may have from 32 to 64 (quill's kernels take 64)
NUMPY_MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
ALL_HALF_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


@pytest.fixture(params=PATHS)
def path(request):
    return request.param


def reference(values, dtype):
    """numpy / ml_dtypes astype without their floating-point warnings.

    For float16 NaNs the reference is numpy's software conversion (x86-64 and others): the sign
    and payload kept, so a signalling NaN stays signalling. numpy on aarch64 converts float16 in
    hardware, which quiets signalling NaNs; quill gives the same bits on every machine, so there
    the NaN lanes are checked against the bit rule itself (nan_bits_kept).
    """
    result = reference_without_nan_rule(values, dtype)
    formats = {values.dtype, np.dtype(dtype)}
    if NUMPY_QUIETS_FLOAT16_SNANS and np.dtype(np.float16) in formats and formats <= FLOATS:
        nan = np.isnan(values)
        result[nan] = nan_bits_kept(values[nan], np.dtype(dtype)).view(dtype)
    return result


def reference_without_nan_rule(values, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return values.astype(dtype)


FLOATS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
MANTISSA_BITS = {2: 10, 4: 23, 8: 52}


def nan_bits_kept(nans, target, quieted=False):
    """The bits of NaNs converted between IEEE formats by numpy's software rule: sign kept, the
    payload's top bits kept (shifted left when widening), and a narrowed payload that would be
    zero (an infinity) made 1. With ``quieted``, as an FPU converts them: the same with the
    quiet bit set (which alone keeps a NaN a NaN)."""
    source_size, target_size = nans.dtype.itemsize, target.itemsize
    bits = nans.view(f"u{source_size}").astype(np.uint64)
    drop = MANTISSA_BITS[source_size] - MANTISSA_BITS[target_size]
    payload = bits & np.uint64((1 << MANTISSA_BITS[source_size]) - 1)
    payload = payload >> np.uint64(drop) if drop > 0 else payload << np.uint64(-drop)
    if quieted:
        payload |= np.uint64(quiet_bit(target))
    payload = np.maximum(payload, np.uint64(1))
    sign = (bits >> np.uint64(8 * source_size - 1)) << np.uint64(8 * target_size - 1)
    exponent = np.uint64(((1 << (8 * target_size - 1 - MANTISSA_BITS[target_size])) - 1)
                         << MANTISSA_BITS[target_size])
    return (sign | exponent | payload).astype(f"u{target_size}")


def quiet_bit(dtype):
    return 1 << (MANTISSA_BITS[np.dtype(dtype).itemsize] - 1)


# a signalling float16 NaN widened: numpy's software conversion keeps it signalling
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    NUMPY_QUIETS_FLOAT16_SNANS = bool(np.array([0x7C01], np.uint16).view(np.float16).astype(np.float32)
                                      .view(np.uint32)[0] & quiet_bit(np.float32))


def assert_same_bits(actual, expected):
    assert actual.shape == expected.shape
    uint = np.dtype(f"u{expected.dtype.itemsize}")
    np.testing.assert_array_equal(actual.view(uint), expected.view(uint))


def f32(*bit_patterns):
    return np.array(bit_patterns, dtype=np.uint32).view(np.float32)


def f64(*bit_patterns):
    return np.array(bit_patterns, dtype=np.uint64).view(np.float64)


def test_every_path_this_cpu_supports_is_available():
    assert PATHS == tuple(p for p in ("portable", "avx2", "avx512") if p in PATHS)
    assert PATHS[0] == "portable"
    if platform.machine() != "x86_64":
        assert PATHS == ("portable",)  # SIMD paths exist for GCC and Clang on x86-64 only (not MSVC)
        return
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(next(line for line in cpuinfo if line.startswith("flags")).split())
    except OSError:
        return  # no way to cross-check the runtime dispatch on this OS
    assert ("avx2" in PATHS) == ({"avx2", "f16c"} <= flags)
    assert ("avx512" in PATHS) == ({"avx2", "f16c", "avx512f", "avx512bw", "avx512vl"} <= flags)


# -- widening: all 65,536 bit patterns ------------------------------------------------------

def nan_patterns(dtype):
    """Every float16 NaN; in a wider format, NaNs of both signs whose payloads keep each of
    float16's 1,024 top-bit patterns (0 included) over low bits of none, 1 and all ones."""
    size = np.dtype(dtype).itemsize
    if size == 2:
        return ALL_HALF_BITS[(ALL_HALF_BITS & 0x7FFF) > 0x7C00].view(np.float16)
    drop = MANTISSA_BITS[size] - 10
    top = np.arange(1024, dtype=np.uint64) << np.uint64(drop)
    payloads = np.concatenate([top | np.uint64(low) for low in (0, 1, (1 << drop) - 1)])
    payloads = payloads[payloads != 0]
    exponent = np.uint64((1 << (8 * size - 1)) - (1 << MANTISSA_BITS[size]))
    sign = np.uint64(1 << (8 * size - 1))
    return np.concatenate([exponent | payloads, sign | exponent | payloads]).astype(f"u{size}").view(dtype)


@pytest.mark.parametrize("source, target", [(np.float16, np.float32), (np.float16, np.float64),
                                            (np.float32, np.float16), (np.float64, np.float16)])
def test_the_nan_rule_is_numpys_software_or_hardware_conversion(source, target):
    nans = nan_patterns(source)
    assert np.isnan(nans).all()
    numpy_bits = reference_without_nan_rule(nans, target).view(f"u{np.dtype(target).itemsize}")
    np.testing.assert_array_equal(numpy_bits, nan_bits_kept(nans, np.dtype(target), NUMPY_QUIETS_FLOAT16_SNANS))


@pytest.mark.parametrize("target", [np.float32, np.float64])
def test_all_float16_patterns_widen_like_numpy(path, target):
    halves = ALL_HALF_BITS.view(np.float16)
    assert_same_bits(_cast_using(path, halves, target), reference(halves, target))


@pytest.mark.parametrize("target", [np.float32, np.float64])
def test_all_bfloat16_patterns_widen_like_ml_dtypes(path, target):
    halves = ALL_HALF_BITS.view(BF16)
    assert_same_bits(_cast_using(path, halves, target), reference(halves, target))


def test_uint16_bits_read_as_half_with_src_dtype(path):
    widened = _cast_using(path, ALL_HALF_BITS, "float32", src_dtype="bfloat16")
    assert_same_bits(widened, ALL_HALF_BITS.astype(np.uint32) << 16)
    widened = _cast_using(path, ALL_HALF_BITS, DType.float32(), src_dtype=np.float16)
    assert_same_bits(widened, reference(ALL_HALF_BITS.view(np.float16), np.float32))


# -- float32 -> float16 / bfloat16 ----------------------------------------------------------

SPECIAL_F32 = f32(
    0x00000000, 0x80000000,                          # +-0
    0x7F800000, 0xFF800000,                          # +-inf
    0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF,  # quiet NaNs
    0x7FC00001, 0x7FE00000, 0xFFD55555,              # quiet NaNs with payloads
    0x7F800001, 0xFF800001, 0x7FA00000, 0x7F802000,  # signalling NaNs
    0x7F801FFF, 0xFFBFFFFF, 0x7F810000,              # signalling, payload low bits only / high
    0x00000001, 0x80000001, 0x007FFFFF, 0x00400000,  # float32 subnormals
    0x00008000, 0x00018000, 0x00010000, 0x00017FFF,  # bfloat16 ties among subnormals
    0x00800000, 0x3F808000, 0x3F818000, 0x3F808001,  # smallest normal, bf16 ties, above tie
    0x3F807FFF, 0xBF808000, 0xBF818000,
    0x3F801000, 0x3F803000, 0x3F801001, 0x3F800FFF,  # float16 ties at 1.0
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F7F8000,  # float32 max, bf16 max, bf16 overflow tie
    0x7F7F0000, 0x7F7EFFFF,
    0x477FE000, 0x477FEFFF, 0x477FF000, 0xC77FF000,  # 65504 (f16 max), below tie, tie -> inf
    0x47800000, 0x4B800000,                          # 65536, 2^24
    0x38800000, 0x387FE000, 0x387FF000, 0x387FFFFF,  # 2^-14 (f16 min normal) and just below
    0x33800000, 0x33000000, 0x33000001, 0x32FFFFFF,  # 2^-24 (f16 min subnormal), its half, around
    0x33C00000, 0x34200000, 0x34000000, 0xB3000000,  # 1.5 and 2.5 subnormal ulps (ties to even)
    0x3F800000, 0x40490FDB, 0xC0490FDB, 0x3DCCCCCD,  # 1, +-pi, 0.1
)


def test_special_float32_to_bfloat16_matches_ml_dtypes(path):
    assert_same_bits(_cast_using(path, SPECIAL_F32, "bfloat16"), reference(SPECIAL_F32, BF16))


def test_special_float32_to_float16_matches_numpy(path):
    assert_same_bits(_cast_using(path, SPECIAL_F32, "float16"), reference(SPECIAL_F32, np.float16))


def test_float32_to_bfloat16_documented_values():
    bits = cast(f32(0x7FA00001, 0xFF800001, 0x7F7FFFFF, 0x00018000, 0x3F818000), "bfloat16",
                out=np.empty(5, np.uint16))
    assert bits.tolist() == [0x7FC0, 0xFFC0, 0x7F80, 0x0002, 0x3F82]


def test_float32_to_float16_keeps_nan_payload_like_numpy():
    bits = cast(f32(0x7F802000, 0xFF800001, 0x7FC00000), "float16").view(np.uint16)
    assert bits.tolist() == [0x7C01, 0xFC01, 0x7E00]  # signalling stays signalling, never inf


@pytest.fixture(scope="module")
def random_float32():
    bits = np.random.default_rng(20261125).integers(0, 1 << 32, 10_000_000, dtype=np.uint64)
    values = bits.astype(np.uint32).view(np.float32)
    return values, reference(values, BF16), reference(values, np.float16)


def test_random_float32_patterns_match_ml_dtypes_and_numpy(path, random_float32):
    values, bfloat16s, float16s = random_float32
    out = np.empty(values.shape, np.uint16)
    assert_same_bits(_cast_using(path, values, "bfloat16", out=out), bfloat16s)
    assert_same_bits(_cast_using(path, values, "float16", out=out), float16s)


def test_paths_agree_with_each_other(random_float32):
    values = random_float32[0][:1_000_003]
    for target in ("bfloat16", "float16"):
        results = [_cast_using(p, values, target) for p in PATHS]
        for other in results[1:]:
            assert_same_bits(other, results[0])


# -- float64 -> float16 / bfloat16: rounded once --------------------------------------------

def exact_round(value: float, mantissa_bits: int, bias: int) -> float:
    """The binary format (mantissa_bits, bias) value nearest to ``value``, ties to even, by
    exact rational arithmetic: an independent reference for single rounding."""
    if value == 0 or math.isinf(value):
        return value
    magnitude = Fraction(abs(value))
    exponent = max(math.frexp(abs(value))[1] - 1, 1 - bias)
    ulp = Fraction(2) ** (exponent - mantissa_bits)
    units, remainder = divmod(magnitude, ulp)
    if remainder > ulp / 2 or (remainder == ulp / 2 and units % 2 == 1):
        units += 1
    rounded = units * ulp
    if rounded >= Fraction(2) ** (bias + 1):
        return math.copysign(math.inf, value)
    return math.copysign(float(rounded), value)


def exact_bfloat16(values):
    return np.array([exact_round(float(v), 7, 127) for v in values]).astype(BF16)


def exact_float16(values):
    return np.array([exact_round(float(v), 10, 15) for v in values]).astype(np.float16)


def double_rounding_cases(mantissa_bits, bias):
    """Values that rounding through float32 turns into a tie of the target, then rounds wrongly."""
    ulp = 2.0 ** -mantissa_bits
    cases = []
    for scale in (1.0, 2.0 ** (1 - bias), 2.0 ** bias, 2.0 ** (bias // 2)):
        cases += [
            scale * (1 + ulp / 2 + 2.0 ** -30),        # just above a tie: up, not to even
            scale * (1 + ulp + ulp / 2 - 2.0 ** -30),  # just below a tie: down, not to even
            -scale * (1 + ulp / 2 + 2.0 ** -40),
        ]
    tiny = 2.0 ** (1 - bias - mantissa_bits)  # the smallest subnormal
    cases += [tiny * (2.5 + 2.0 ** -30), tiny * (1.5 - 2.0 ** -30), -tiny * (4.5 + 2.0 ** -28)]
    return np.array(cases)


def test_double_rounding_cases_really_differ_from_rounding_through_float32():
    for target, mantissa_bits, bias in ((BF16, 7, 127), (np.float16, 10, 15)):
        values = double_rounding_cases(mantissa_bits, bias)
        through_float32 = values.astype(np.float32).astype(target).view(np.uint16)
        exact = np.array([exact_round(float(v), mantissa_bits, bias) for v in values])
        assert (through_float32 != exact.astype(target).view(np.uint16)).all()


def random_float64(count, low_exponent, high_exponent, seed):
    rng = np.random.default_rng(seed)
    significands = rng.uniform(-2, 2, count)
    values = np.ldexp(significands, rng.integers(low_exponent, high_exponent, count))
    # add ties and near-ties of the target: round significands to few bits, nudge by 1 ulp
    ties = np.ldexp(np.round(np.ldexp(significands[: count // 2], 12)), -12)
    ties = np.ldexp(ties, rng.integers(low_exponent, high_exponent, count // 2))
    nudged = np.nextafter(ties, np.where(rng.random(count // 2) < 0.5, -np.inf, np.inf))
    return np.concatenate([values, ties, nudged])


def test_float64_to_bfloat16_rounds_once(path):
    values = np.concatenate([
        double_rounding_cases(7, 127),
        random_float64(3000, -140, 130, seed=7),
        f64(0x3810000000000000, 0x380FFFFFFFFFFFFF, 0x37F0000000000000,  # 2^-126, 2^-127, ...
            0x36A0000000000000, 0x3690000000000000, 0x3690000000000001,  # 2^-149 and halves
            0x47EFE00000000000, 0x47EFF00000000000, 0x47EFEFFFFFFFFFFF,  # bf16 max, overflow tie
            0x47EFFFFFE0000000, 0x7FEFFFFFFFFFFFFF, 0x0000000000000001,  # > f32 max, f64 max, tiny
            0x8000000000000000, 0x7FF0000000000000, 0xFFF0000000000000),
    ])
    assert_same_bits(_cast_using(path, values, "bfloat16"), exact_bfloat16(values))


def test_float64_to_float16_rounds_once_like_numpy_and_exact_arithmetic(path):
    values = np.concatenate([
        double_rounding_cases(10, 15),
        random_float64(3000, -27, 18, seed=11),
        f64(0x40EFFC0000000000, 0x40EFFE0000000000, 0x40EFFDFFFFFFFFFF,  # 65504, tie, below
            0x3E70000000000000, 0x3E60000000000000, 0x3E60000000000001,  # 2^-24, 2^-25, above
            0x3F10000000000000, 0x3F0FFFFFFFFFFFFF, 0x0000000000000001,  # 2^-14, below, tiny
            0x8000000000000000, 0x7FF0000000000000, 0xFFF0000000000000),
    ])
    result = _cast_using(path, values, "float16")
    assert_same_bits(result, exact_float16(values))
    assert_same_bits(result, reference(values, np.float16))


def test_float64_random_bit_patterns_to_float16_match_numpy(path):
    bits = np.random.default_rng(5).integers(0, 1 << 63, 1_000_000, dtype=np.uint64)
    values = (bits | (bits << np.uint64(1) & np.uint64(1 << 63))).view(np.float64)
    assert_same_bits(_cast_using(path, values, "float16"), reference(values, np.float16))


def test_float64_nans():
    values = f64(0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001,
                 0xFFF4000000000000, 0x7FF0000020000000, 0x7FF0040000000000)
    for path in PATHS:
        assert _cast_using(path, values, "bfloat16", out=np.empty(6, np.uint16)).tolist() == \
            [0x7FC0, 0xFFC0, 0x7FC0, 0xFFC0, 0x7FC0, 0x7FC0]
        assert_same_bits(_cast_using(path, values, "float16"), reference(values, np.float16))


# -- layouts --------------------------------------------------------------------------------

def layouts(dtype):
    """Views of every kind over arrays of ``dtype``, by name."""
    base = np.random.default_rng(3).standard_normal((6, 40, 700)).astype(dtype)
    long_rows = np.random.default_rng(4).standard_normal((3, 5000)).astype(dtype)
    return {
        "every other": base.ravel()[::2],
        "reversed": base.ravel()[::-1],
        "transposed": base.T,
        "negative strides 3-d": base[::-2, 5:1:-1, ::-3],
        "long contiguous rows": long_rows[:, 10:4990],
        "long reversed rows": long_rows[::-1, ::-1],
        "column": base[:, 3, :1][:, 0],
        "broadcast zero stride": np.broadcast_to(base[0, 0, :5], (3000, 5)),
        "0-d": np.array(1.5, dtype=dtype),
        "0-d view": base[1, 2, 3, ...],
        "empty": np.empty((0,), dtype),
        "empty 3-d": base[:, :0, :],
        "many dims": base.reshape(6, 2, 2, 2, 5, 7, 10, 10)[:, ::-1, :, 1, ::2, :, 3],
        "unaligned": np.frombuffer(base.tobytes()[1:4001 * base.itemsize + 1], dtype=dtype),
        "big-endian": base[0].astype(np.dtype(dtype).newbyteorder(">")),
    }


LAYOUT_NAMES = list(layouts(np.float32))
CONVERSIONS = [(np.float32, BF16), (np.float32, np.float16), (np.float64, BF16),
               (np.float64, np.float16), (BF16, np.float32), (BF16, np.float64),
               (np.float16, np.float32), (np.float16, np.float64)]


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("source, target", CONVERSIONS)
def test_any_layout_converts_like_its_contiguous_copy(path, layout, source, target):
    src = layouts(source)[layout]
    result = _cast_using(path, src, target)
    assert result.flags.c_contiguous and result.shape == src.shape
    expected = _cast_using(path, src.astype(source, order="C"), target)
    assert_same_bits(result, expected)


def test_the_most_dimensions_numpy_allows(path):
    shape = (2,) + (1,) * (NUMPY_MAX_DIMS - 3) + (3, 4)
    src = np.arange(2 * 3 * 4, dtype=np.float32).reshape(shape)[..., ::-1, ::2]
    assert src.ndim == NUMPY_MAX_DIMS and not src.flags.c_contiguous
    assert_same_bits(_cast_using(path, src, "float16"), reference(src, np.float16))


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=4),
       steps=st.lists(st.sampled_from([1, 2, -1, -3]), min_size=4, max_size=4),
       source=st.sampled_from(["float32", "float64", "float16", "bfloat16"]))
def test_random_views_match_contiguous_conversion(shape, steps, source):
    base = np.random.default_rng(len(shape)).standard_normal([n * 3 + 1 for n in shape])
    view = base[tuple(slice(None, None, s) for s in steps[: len(shape)])].astype(source)[
        tuple(slice(None, n) for n in shape)]
    target = "float32" if source in ("float16", "bfloat16") else "bfloat16"
    expected = reference(np.ascontiguousarray(view), BF16 if target == "bfloat16" else np.float32)
    for path in PATHS:
        assert_same_bits(_cast_using(path, view, target), expected)


# -- results and out= -----------------------------------------------------------------------

def test_allocated_result_dtypes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert cast(x, "bfloat16").dtype == BF16
    assert cast(x, DType.float16()).dtype == np.float16
    assert cast(cast(x, ml_dtypes.bfloat16), np.float64).dtype == np.float64
    scalar = cast(np.float32(2.5), "bfloat16")
    assert scalar.shape == () and scalar.dtype == BF16 and float(scalar) == 2.5


def test_out_is_filled_and_returned():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    for out in (np.empty((3, 4), np.uint16), np.empty((3, 4), np.int16), np.empty((3, 4), BF16)):
        assert cast(x, "bfloat16", out=out) is out
        assert_same_bits(out, x.astype(BF16))
    wide = np.empty((3, 4), np.uint32)
    assert cast(x.astype(np.float16), "float32", out=wide) is wide
    assert_same_bits(wide, x.astype(np.float16).astype(np.float32))


def test_out_overlapping_src_gives_the_right_answer():
    buffer = np.arange(16, dtype=np.float32)
    expected = buffer.astype(np.float16)
    halves = buffer.view(np.float16)[:16]  # the first half of the same memory
    assert cast(buffer, "float16", out=halves) is halves
    assert_same_bits(halves, expected)
    widened = np.zeros(8, dtype=np.float32)
    narrow = widened.view(np.uint16)[4:12]  # bits stored in the upper part of the output
    narrow[:] = np.arange(8, dtype=np.float32).astype(BF16).view(np.uint16)
    cast(narrow, "float32", out=widened, src_dtype="bfloat16")
    assert widened.tolist() == list(range(8))


@pytest.mark.parametrize("out, message", [
    (np.empty(5, np.uint16), "shape"),
    (np.empty((2, 2), np.uint16), "shape"),
    (np.empty(4, np.uint32), "2-byte"),
    (np.empty(4, np.float16), "cannot hold bfloat16"),
    (np.empty(8, np.uint16)[::2], "C-contiguous"),
    (np.empty(4, ">u2"), "native-order"),
    (np.empty(4, "S2"), "native-order"),
    ([0, 0, 0, 0], "numpy array"),
])
def test_bad_out_is_refused(out, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cast(np.ones(4, np.float32), "bfloat16", out=out)


def test_out_of_another_half_type_is_refused():
    with pytest.raises(ValueError, match="cannot hold float16"):
        cast(np.ones(4, np.float32), "float16", out=np.empty(4, BF16))
    with pytest.raises(ValueError, match="complex64; use float64"):
        cast(np.ones(4, np.float16), "float64", out=np.empty(4, np.int64).view(np.complex64))


def test_read_only_out_is_refused():
    out = np.empty(4, np.uint16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cast(np.ones(4, np.float32), "float16", out=out)


def test_bfloat16_without_ml_dtypes_uses_uint16_bits_or_says_how_to_fix_it():
    script = """
import sys
sys.modules["ml_dtypes"] = None  # as if it were not installed
import numpy as np
from quill._core.casts import cast
x = np.array([1.0, -2.5, 3.4e38], dtype=np.float32)
bits = cast(x, "bfloat16", out=np.empty(3, np.uint16))
print(bits.tolist(), cast(bits, "float32", src_dtype="bfloat16").tolist())
try:
    cast(x, "bfloat16")
except TypeError as error:
    print("TypeError:", error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "[16256, 49184, 32640] [1.0, -2.5, inf]"
    assert lines[1].startswith("TypeError:") and "ml_dtypes" in lines[1]


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("src, dtype, src_dtype, error, message", [
    ([1.0, 2.0], "float16", None, TypeError, "numpy array, got list"),
    (b"\0\0\0\0", "float16", None, TypeError, "numpy array, got bytes"),
    (np.ones(3, np.float32), "float32", None, TypeError, "no kernel converts float32 to float32"),
    (np.ones(3, np.float16), "bfloat16", None, TypeError, "float16 to bfloat16"),
    (np.ones(3, np.int32), "float16", None, TypeError, "cannot convert from int32"),
    (np.ones(3, np.uint16), "float32", None, TypeError, "pass src_dtype"),
    (np.ones(3, np.complex64), "float16", None, TypeError, "cannot convert from complex64"),
    (np.ones(3, np.float32), "int8", None, TypeError, "no kernel converts float32 to int8"),
    (np.ones(3, np.float32), "float17", None, TypeError, "dtype must be"),
    (np.ones(3, np.float32), 3.5, None, TypeError, "dtype must be"),
    (np.ones(3, np.uint16), "float32", "float32", ValueError, "4-byte elements"),
    (np.ones(3, np.uint16), "float32", "nonsense", TypeError, "src_dtype must be"),
    (np.array([None, 1.0]), "float16", "float64", TypeError, "object"),
])
def test_bad_input_raises_clear_errors(src, dtype, src_dtype, error, message):
    with pytest.raises(error, match=message):
        cast(src, dtype, src_dtype=src_dtype)


def test_unknown_path_is_refused():
    with pytest.raises(ValueError, match="not available"):
        _cast_using("sse9", np.ones(2, np.float32), "float16")


# -- large arrays: streamed stores and recycled result memory --------------------------------

def data_address(array):
    return array.__array_interface__["data"][0]


@pytest.mark.parametrize("touched", [True, False])  # written before: streamed, else plain stores
@pytest.mark.parametrize("source, target", [(BF16, np.float32), (np.float16, np.float32),
                                            (np.float16, np.float64), (np.float32, BF16)])
def test_large_outputs_with_odd_alignment_convert_exactly(path, source, target, touched):
    # > 16 MiB of output: the non-temporal store path, entered at a misaligned address
    count = (17 << 20) // np.dtype(target).itemsize + 5
    bits = np.random.default_rng(9).integers(0, 1 << 16, count, dtype=np.uint64)
    if np.dtype(source).itemsize == 4:
        bits = bits * np.uint64(65537)
    src = bits.astype(f"u{np.dtype(source).itemsize}").view(source)
    storage = np.empty(count + 3, target)
    if touched:
        storage.view(np.uint8)[:] = 0xAB
    out = storage[3:]
    assert _cast_using(path, src, target, out=out) is out
    assert_same_bits(out, reference(src, target))


def test_dropped_large_results_are_recycled_but_live_ones_never_are():
    x = np.random.default_rng(2).standard_normal(1 << 20).astype(np.float32)  # 2 MiB result
    first = cast(x, "bfloat16")
    view = first[::3]
    expected_view = view.copy()
    address = data_address(first)
    del first
    second = cast(-x, "bfloat16")  # `view` keeps the first result's memory alive
    assert data_address(second) != address
    assert_same_bits(view, expected_view)
    assert_same_bits(second, (-x).astype(BF16))
    second_address = data_address(second)
    del view, second
    third = cast(x * 2, "bfloat16")
    assert data_address(third) in (address, second_address)
    assert_same_bits(third, (x * 2).astype(BF16))
    assert third.flags.writeable and third.flags.c_contiguous and third.dtype == BF16
    fourth = cast(x.reshape(1024, 1024), "float16")
    assert fourth.shape == (1024, 1024) and fourth.dtype == np.float16
    assert_same_bits(fourth, x.reshape(1024, 1024).astype(np.float16))
    assert not np.shares_memory(third, fourth)


# -- independence from the floating-point environment ---------------------------------------

@contextmanager
def flush_denormals_and_round_toward_zero():
    """Set MXCSR FTZ + DAZ + round-toward-zero for this thread (glibc x86-64 fenv_t layout)."""
    libc = ctypes.CDLL(None)
    saved = ctypes.create_string_buffer(32)
    assert libc.fegetenv(saved) == 0
    changed = bytearray(saved.raw)
    mxcsr = int.from_bytes(changed[28:32], "little") | 0x8040 | 0x6000  # FTZ, DAZ, RC=toward 0
    changed[28:32] = mxcsr.to_bytes(4, "little")
    assert libc.fesetenv(ctypes.create_string_buffer(bytes(changed), 32)) == 0
    try:
        yield
    finally:
        libc.fesetenv(saved)


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="sets MXCSR through glibc's x86-64 fenv_t")
def test_results_do_not_depend_on_ftz_daz_or_rounding_mode(path):
    rng = np.random.default_rng(8)
    floats = np.concatenate([
        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.arange(1, 1 << 16, dtype=np.uint32).view(np.float32),        # float32 subnormals
        np.ldexp(rng.random(50_000, dtype=np.float32), -20),            # float16 subnormals
    ])
    doubles = np.concatenate([reference(floats, np.float64), np.ldexp(rng.random(50_000), -140)])
    conversions = [(ALL_HALF_BITS, "float32", "float16"), (ALL_HALF_BITS, "float64", "float16"),
                   (ALL_HALF_BITS, "float32", "bfloat16"), (ALL_HALF_BITS, "float64", "bfloat16"),
                   (floats, "float16", None), (floats, "bfloat16", None),
                   (doubles, "float16", None), (doubles, "bfloat16", None)]
    expected = [_cast_using(path, src, target, src_dtype=sd) for src, target, sd in conversions]
    with flush_denormals_and_round_toward_zero():
        assert np.float32(1e-39) * np.float32(1) == 0  # the environment really changed
        actual = [_cast_using(path, src, target, src_dtype=sd) for src, target, sd in conversions]
    for got, want in zip(actual, expected):
        assert_same_bits(got, want)
