"""The exception hierarchy and RFC 7807 Problem Details.

Every error quill raises is a :class:`QuillError` and also the builtin type the
seed API documents, so both ``except quill.QuillError`` and ``except ValueError``
(or ``ConnectionError``, ``TimeoutError``, ``RuntimeError``) work.

>>> from quill.errors import DecodeError
>>> err = DecodeError("token text runs past the end", offset=9)
>>> isinstance(err, ValueError), str(err)
(True, 'token text runs past the end (at offset 9)')
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "QuillError",
    "DecodeError",
    "EncodeError",
    "LimitExceededError",
    "IncompleteStreamError",
    "StreamCancelledError",
    "QuillConnectionError",
    "QuillTimeoutError",
    "RpcError",
    "ProblemDetails",
]


class QuillError(Exception):
    """Base class of every error raised by quill."""


class DecodeError(QuillError, ValueError):
    """Bytes that cannot be decoded: truncated, malformed or inconsistent.

    ``offset`` is the byte offset in the input where the problem was found, when known.
    """

    def __init__(self, message: str, offset: int | None = None):
        self.message = message
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at offset {offset})")

    def __reduce__(self):
        return (type(self), (self.message, self.offset))


class LimitExceededError(DecodeError):
    """Declared sizes beyond a configured limit; refused before any allocation."""


class IncompleteStreamError(DecodeError):
    """A stream ended (EOF or END_STREAM) before its content was complete."""


class EncodeError(QuillError, ValueError):
    """A value the wire format cannot carry (for example text over 65,535 bytes)."""


class StreamCancelledError(QuillError, RuntimeError):
    """The peer sent a CANCEL frame; ``reason`` holds its text (may be empty)."""

    def __init__(self, reason: str = ""):
        self.reason = reason
        super().__init__(f"stream cancelled by peer: {reason}" if reason else "stream cancelled by peer")

    def __reduce__(self):
        return (type(self), (self.reason,))


class QuillConnectionError(QuillError, ConnectionError):
    """The server could not be reached, or the connection dropped."""


class QuillTimeoutError(QuillError, TimeoutError):
    """A call did not complete within its timeout."""


class ProblemDetails:
    """An RFC 7807 error body (PROTOCOL.md section 6).

    Unknown members are kept in ``extensions`` and written back by :meth:`to_dict`.

    >>> p = ProblemDetails.from_json(b'{"type": "about:blank", "title": "Not Found", "status": 404, "x": 1}')
    >>> p.status, p.title, p.extensions
    (404, 'Not Found', {'x': 1})
    """

    _KNOWN = (
        "type", "title", "status", "detail", "instance",
        "trace_id", "quill_proto_type", "quill_proto_detail_base64",
    )

    def __init__(
        self,
        status: int,
        title: str,
        type: str = "about:blank",
        detail: str | None = None,
        instance: str | None = None,
        trace_id: str | None = None,
        quill_proto_type: str | None = None,
        quill_proto_detail_base64: str | None = None,
        extensions: dict[str, Any] | None = None,
    ):
        self.status = status
        self.title = title
        self.type = type
        self.detail = detail
        self.instance = instance
        self.trace_id = trace_id
        self.quill_proto_type = quill_proto_type
        self.quill_proto_detail_base64 = quill_proto_detail_base64
        self.extensions = dict(extensions or {})

    @classmethod
    def from_dict(cls, obj: Any) -> "ProblemDetails":
        """Build from a parsed JSON object; raises :class:`DecodeError` if required members are missing."""
        if not isinstance(obj, dict):
            raise DecodeError(f"problem details must be a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("type", "title", "status") if k not in obj]
        if missing:
            raise DecodeError(f"problem details lack required member(s): {', '.join(missing)}")
        status = obj["status"]
        if not isinstance(status, int) or isinstance(status, bool):
            raise DecodeError(f"problem details status must be an integer, got {status!r}")
        for key in ("type", "title"):
            if not isinstance(obj[key], str):
                raise DecodeError(f"problem details {key} must be a string, got {obj[key]!r}")
        known = {k: obj[k] for k in cls._KNOWN if k in obj}
        extensions = {k: v for k, v in obj.items() if k not in cls._KNOWN}
        return cls(extensions=extensions, **known)

    @classmethod
    def from_json(cls, body: bytes | str) -> "ProblemDetails":
        """Parse an ``application/problem+json`` body; raises :class:`DecodeError` if it is not one."""
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"problem details body is not valid JSON: {exc}") from None
        return cls.from_dict(obj)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extensions)
        for key in self._KNOWN:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def __eq__(self, other) -> bool:
        return isinstance(other, ProblemDetails) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        detail = f", detail={self.detail!r}" if self.detail else ""
        return f"ProblemDetails(status={self.status}, title={self.title!r}{detail})"


class RpcError(QuillError, RuntimeError):
    """The server answered with a non-2xx status.

    ``status`` is the HTTP status, ``problem`` the parsed :class:`ProblemDetails`
    (None when the body was not problem+json), ``body`` the raw body text.
    """

    def __init__(self, status: int, problem: ProblemDetails | None = None, body: str = ""):
        self.status = status
        self.problem = problem
        self.body = body
        if problem is not None:
            text = f"{status} {problem.title}"
            if problem.detail:
                text += f": {problem.detail}"
        else:
            text = f"HTTP {status}: {body[:200]}" if body else f"HTTP {status}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.status, self.problem, self.body))
