"""Checks of what a caller puts into a request line or a header (docs/protocol.md, "RPC over HTTP").

Each check matches the whole string (``fullmatch``: a trailing newline is not accepted), so no CR,
LF or other control byte can reach the request line or the header block.

>>> check_rpc_name("service", "echo.v1.EchoService")
'echo.v1.EchoService'
>>> check_rpc_name("method", "..")
Traceback (most recent call last):
...
ValueError: invalid method name '..': a dot segment would leave the base path
"""

from __future__ import annotations

import re

__all__ = ["check_rpc_name", "check_header", "FRAMING_HEADERS"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NAME_PART = re.compile(r"[A-Za-z0-9_.\-]+")
#: Headers the transport sets itself; a caller may not override them.
FRAMING_HEADERS = frozenset(
    ("content-length", "transfer-encoding", "content-encoding", "connection", "host", "upgrade", "te", "trailer")
)


def check_rpc_name(what: str, name: object) -> str:
    """Return ``name`` if it is a valid service or method name, else raise ValueError.

    Letters, digits, ``_``, ``.`` and ``-`` only; ``.`` and ``..`` are refused because a proxy that
    normalises dot segments would send the call outside the base path.
    """
    if not isinstance(name, str) or not _NAME_PART.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits, '_', '.', '-'")
    if name in (".", ".."):
        raise ValueError(f"invalid {what} name {name!r}: a dot segment would leave the base path")
    return name


def check_header(name: object, value: object) -> tuple[str, str]:
    """Return ``(name, value)`` if they can go into a request header, else raise.

    >>> check_header("X-Trace", "abc")
    ('X-Trace', 'abc')
    """
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid HTTP header name {name!r}")
    if not isinstance(value, str):
        raise TypeError(f"header {name!r} value must be a str, got {type(value).__name__}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} value contains CR, LF or NUL: {value!r}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r} value is not latin-1 encodable: {value!r}") from None
    if name.lower() in FRAMING_HEADERS:
        raise ValueError(f"header {name!r} is set by the client itself and cannot be overridden")
    return name, value
