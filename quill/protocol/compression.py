"""zstd for request and response bodies, one implementation for the client and the server.

Bodies may hold several concatenated zstd frames (RFC 8878 section 3.1): :class:`ZstdDecoder`
decodes them one after another, bounds what it produces, and reports a body that ends inside a
frame. :func:`accepts_zstd` reads an ``Accept-Encoding`` header as RFC 9110 section 12.5.3 says,
q-values included (``zstd;q=0`` means "not acceptable").

>>> from quill.protocol.compression import ZstdDecoder, compress
>>> decoder = ZstdDecoder()
>>> decoder.decompress(compress(b"first|") + compress(b"second"))
b'first|second'
>>> decoder.finish()
"""

from __future__ import annotations

from typing import Iterable, Iterator

from ..errors import DecodeError, IncompleteStreamError, LimitExceededError
from .constants import ZSTD_LEVEL
from .numbers import parse_real

# The one place that picks the zstd implementation. Not zstandard: it publishes no free-threaded
# wheels, and urllib3's own zstd extra moved to backports.zstd (the same API as the standard
# library's, with cp313t/cp314t wheels); benchmarks/bench_zstd.py measures the three side by side.
try:  # Python 3.14+
    from compression import zstd as _zstd

    IMPLEMENTATION = "compression.zstd"
except ImportError:  # older Pythons: the backport that urllib3's zstd extra installs
    try:
        from backports import zstd as _zstd

        IMPLEMENTATION = "backports.zstd"
    except ImportError:  # pragma: no cover - depends on the environment
        _zstd = None
        IMPLEMENTATION = None

__all__ = ["IMPLEMENTATION", "available", "compress", "compress_stream", "StreamCompressor", "ZstdDecoder", "accepts_zstd", "coding_weights"]

#: The largest zstd window a body may use: 8 MiB, as RFC 9659 sets for the ``zstd`` content
#: coding. A frame that asks for more is refused, so its window costs no more memory than that.
WINDOW_LOG_MAX = 23


def available() -> bool:
    """Whether zstd is importable here (``compression.zstd`` or ``backports.zstd``)."""
    return _zstd is not None


def _require() -> None:
    if _zstd is None:
        raise ImportError("zstd support needs Python 3.14 or the backport: pip install 'urllib3[zstd]'")


def compress(data, level: int = ZSTD_LEVEL) -> bytes:
    """One zstd frame holding ``data`` (any bytes-like object)."""
    _require()
    return _zstd.compress(data, level=level)


class StreamCompressor:
    """One zstd frame written piece by piece: ``compress(piece)`` flushes a block after each piece,
    so the receiver can decode every piece as soon as it arrives; ``flush()`` ends the frame."""

    __slots__ = ("_compressor",)

    def __init__(self, level: int = ZSTD_LEVEL):
        _require()
        self._compressor = _zstd.ZstdCompressor(level=level)

    def compress(self, piece) -> bytes:
        return self._compressor.compress(piece, mode=_zstd.ZstdCompressor.FLUSH_BLOCK)

    def flush(self) -> bytes:
        return self._compressor.flush(mode=_zstd.ZstdCompressor.FLUSH_FRAME)


def compress_stream(pieces: Iterable, level: int = ZSTD_LEVEL) -> Iterator[bytes]:
    """Compress a stream of buffers into one zstd frame (streams stay streams).

    >>> ZstdDecoder().decompress(b"".join(compress_stream([b"a", b"b"])))
    b'ab'
    """
    compressor = StreamCompressor(level)
    for piece in pieces:
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()


class ZstdDecoder:
    """Incremental decoding of a zstd body made of one or more frames.

    ``limit`` bounds the total output (LimitExceededError past it, raised before the excess is
    returned); ``max_length`` bounds one call's output, so a small input that expands hugely is
    handed out piece by piece: call ``decompress(b"", max_length)`` again while ``has_output``.
    ``finish()`` raises IncompleteStreamError when the input ended inside a frame.
    ``what`` names the body in error messages. A frame whose window is over 8 MiB
    (:data:`WINDOW_LOG_MAX`) is refused with DecodeError.
    """

    __slots__ = ("_decompressor", "_pending", "_limit", "_produced", "_consumed", "_what", "_in_frame")

    def __init__(self, limit: int | None = None, what: str = "body"):
        _require()
        self._decompressor = _new_decompressor()
        self._pending = b""  # input of a next frame, not yet given to a decompressor
        self._limit = limit
        self._produced = 0
        self._consumed = 0
        self._what = what
        self._in_frame = False

    @property
    def has_output(self) -> bool:
        """True when buffered input may still produce output without more input."""
        dec = self._decompressor
        return bool(self._pending) or bool(dec.eof and dec.unused_data) or (self._in_frame and not dec.needs_input)

    def decompress(self, data=b"", max_length: int = -1) -> bytes:
        """Decode ``data`` (plus what is buffered) into at most ``max_length`` bytes (-1: all)."""
        if data:
            self._consumed += len(data)
            self._pending = self._pending + bytes(data) if self._pending else data
        pieces = []
        room = max_length
        while room != 0:
            dec = self._decompressor
            if dec.eof:  # the frame ended: what follows it starts the next frame
                rest = dec.unused_data
                if rest:
                    self._pending = rest + bytes(self._pending) if self._pending else rest
                if not self._pending:
                    break
                dec = self._decompressor = _new_decompressor()
            data, self._pending = self._pending, b""
            if not data and dec.needs_input:
                break
            cap = room
            if self._limit is not None:  # never produce much more than the limit allows
                left = self._limit - self._produced + 1
                cap = left if cap < 0 else min(cap, left)
            try:
                out = dec.decompress(data, max_length=cap)
            except _zstd.ZstdError as exc:
                raise DecodeError(f"{self._what} is not valid zstd: {exc}", offset=self._consumed) from None
            self._in_frame = not dec.eof
            if out:
                self._produced += len(out)
                if self._limit is not None and self._produced > self._limit:
                    raise LimitExceededError(f"decompressed {self._what} exceeds the limit of {self._limit} bytes")
                pieces.append(out)
                if room > 0:
                    room -= len(out)
            elif not dec.eof:
                break
        return b"".join(pieces)

    def finish(self) -> None:
        """Raise IncompleteStreamError if the body ended inside a zstd frame (call it once all
        output has been taken, i.e. ``has_output`` is False)."""
        if self.has_output:
            raise RuntimeError("ZstdDecoder.finish() with output left: call decompress() until has_output is False")
        if self._in_frame:
            raise IncompleteStreamError(
                f"zstd-compressed {self._what} ends in the middle of a frame", offset=self._consumed
            )


def _new_decompressor():
    return _zstd.ZstdDecompressor(options={_zstd.DecompressionParameter.window_log_max: WINDOW_LOG_MAX})


def coding_weights(accept_encoding: str) -> dict[str, float]:
    """The content codings of an ``Accept-Encoding`` value with their q-values (lower-case names).

    >>> coding_weights("gzip, zstd;q=0.5, *;q=0")
    {'gzip': 1.0, 'zstd': 0.5, '*': 0.0}
    """
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *params = element.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                number = parse_real(value)  # a malformed weight (None) is not an acceptance
                weight = 0.0 if number is None else min(1.0, max(0.0, number))
        weights[coding] = weight
    return weights


def accepts_zstd(accept_encoding: str | None) -> bool:
    """True when the client accepts zstd answers (and zstd is available here).

    >>> accepts_zstd("zstd"), accepts_zstd("zstd;q=0"), accepts_zstd("gzip, *"), accepts_zstd(None)
    (True, False, True, False)
    """
    if not accept_encoding or _zstd is None:
        return False
    weights = coding_weights(accept_encoding)
    weight = weights.get("zstd", weights.get("*", 0.0))
    return weight > 0.0
