"""Numbers in protocol text (header values): ASCII digits only, on the clients and the server.

``str.isdigit()`` and ``int()`` accept far more than HTTP does: ``'²'.isdigit()`` is true (and
``int('²')`` raises ValueError), ``int('١٢')`` is 12, ``int(' +1_0 ')`` is 10, and ``float()``
takes ``'nan'`` and ``'1e9'``. These functions take only what RFC 9110 writes as ``1*DIGIT``.

>>> is_decimal("42"), is_decimal("²"), is_decimal("١٢"), is_decimal("+5"), is_decimal(b"7")
(True, False, False, False, True)
>>> parse_decimal("²", "Content-Length header")
Traceback (most recent call last):
...
quill.errors.DecodeError: Content-Length header '²' is not a decimal number (ASCII digits only)
>>> parse_real("0.5"), parse_real("-3"), parse_real("1e3"), parse_real("١")
(0.5, -3.0, None, None)
"""

from __future__ import annotations

from typing import Mapping

from ..errors import DecodeError

__all__ = ["is_decimal", "parse_decimal", "parse_real", "content_length"]


def is_decimal(value: str | bytes) -> bool:
    """True when ``value`` is one or more ASCII digits (``0``-``9``) and nothing else."""
    return value.isascii() and value.isdigit()


def parse_decimal(value: str | bytes, what: str, maximum: int | None = None) -> int:
    """``value`` (ASCII digits only) as an int; DecodeError naming ``what`` and the value when it
    is anything else, or above ``maximum``."""
    if not is_decimal(value):
        raise DecodeError(f"{what} {value!r} is not a decimal number (ASCII digits only)")
    number = int(value)
    if maximum is not None and number > maximum:
        raise DecodeError(f"{what} {value!r} is over the maximum of {maximum}")
    return number


def parse_real(value: str) -> float | None:
    """``[-]digits[.digits]`` (ASCII only, surrounding spaces allowed) as a float, None for
    anything else (exponents, ``inf``, ``nan``, other scripts' digits, ``_``)."""
    value = value.strip(" \t")
    whole, dot, fraction = value.removeprefix("-").partition(".")
    if is_decimal(whole) and (not dot or not fraction or is_decimal(fraction)):
        return float(value)
    return None


def content_length(headers: Mapping[str, str], what: str) -> int | None:
    """The Content-Length of ``headers`` (lower-case names), None when absent.

    A repeated header arrives joined by ``", "``: identical values count as one (RFC 9110
    section 8.6); differing or malformed ones raise DecodeError naming the header's value.

    >>> content_length({"content-length": "5, 5"}, "response"), content_length({}, "response")
    (5, None)
    """
    value = headers.get("content-length")
    if value is None:
        return None
    values = {part.strip(" \t") for part in value.split(",")}
    if len(values) != 1:
        raise DecodeError(f"{what}: conflicting Content-Length header {value!r}")
    return parse_decimal(values.pop(), f"{what}: Content-Length header")
