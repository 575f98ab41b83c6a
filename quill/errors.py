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

import base64
import binascii
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
    "FeatureUnavailableError",
    "RpcError",
    "BadRequestError",
    "UnauthorizedError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "RateLimitedError",
    "ServerError",
    "ServiceUnavailableError",
    "WrongKindError",
    "rpc_error_for_status",
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


class FeatureUnavailableError(QuillError, ImportError):
    """An optional part of quill that this installation lacks (for example HTTP/2, whose engine
    is built only where libnghttp2 was found); the message names what is missing."""


class ProblemDetails:
    """An RFC 7807 error body (docs/protocol.md section 6).

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
        except RecursionError:
            # json's recursion guard: a hostile body of ~1,000 nested brackets must not escape as RecursionError.
            raise DecodeError("problem details body nests JSON arrays/objects too deeply") from None
        return cls.from_dict(obj)

    @property
    def proto_detail(self) -> bytes | None:
        """The typed proto detail (``quill_proto_detail_base64``) decoded to bytes; its type is
        ``quill_proto_type``. None when absent; :class:`DecodeError` when it is not valid base64.

        >>> ProblemDetails(400, "Bad", quill_proto_detail_base64="CAE=").proto_detail
        b'\\x08\\x01'
        """
        if self.quill_proto_detail_base64 is None:
            return None
        if not isinstance(self.quill_proto_detail_base64, str):
            raise DecodeError("problem details quill_proto_detail_base64 must be a string, "
                              f"got {self.quill_proto_detail_base64!r}")
        try:
            return base64.b64decode(self.quill_proto_detail_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"problem details quill_proto_detail_base64 is not valid base64: {exc}") from None

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
    ``call`` ("service/method") and ``url`` say which request failed, when known.
    Use :func:`rpc_error_for_status` to get the subclass that matches a status.

    >>> str(RpcError(502, body="<html>Bad gateway</html>", call="a.B/C", url="http://h/a.B/C"))
    'a.B/C at http://h/a.B/C: HTTP 502: <html>Bad gateway</html>'
    """

    def __init__(
        self,
        status: int,
        problem: ProblemDetails | None = None,
        body: str = "",
        *,
        call: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ):
        self.status = status
        self.problem = problem
        self.body = body
        self.call = call
        self.url = url
        self.retry_after = retry_after
        if problem is not None:
            text = f"{status} {problem.title}"
            if problem.detail:
                text += f": {problem.detail}"
        else:
            text = f"HTTP {status}: {body[:200]}" if body else f"HTTP {status}"
        where = " at ".join(part for part in (call, url) if part)
        super().__init__(f"{where}: {text}" if where else text)

    def __reduce__(self):
        kwargs = {"call": self.call, "url": self.url, "retry_after": self.retry_after}
        return (_rebuild_rpc_error, (type(self), (self.status, self.problem, self.body), kwargs))


def _rebuild_rpc_error(cls, args, kwargs):
    return cls(*args, **kwargs)


class BadRequestError(RpcError):
    """400: the server could not use the request."""


class UnauthorizedError(RpcError):
    """401: missing or invalid credentials (bearer token, API key)."""


class PermissionDeniedError(RpcError):
    """403: the credentials do not allow this call."""


class NotFoundError(RpcError):
    """404: unknown service or method (or resource)."""


class ConflictError(RpcError):
    """409: the request conflicts with the server's state."""


class RateLimitedError(RpcError):
    """429: too many requests; ``retry_after`` holds the seconds from ``Retry-After`` (or None)."""


class ServerError(RpcError):
    """5xx: the server failed."""


class ServiceUnavailableError(ServerError):
    """503: the server is overloaded or not ready; ``retry_after`` as for :class:`RateLimitedError`."""


class WrongKindError(RpcError):
    """406 or 415: the call is of another kind than the method (a token stream called with
    ``call()``, say). ``method_kind`` is the method's kind as the server named it, ``expect`` how
    the call read its answer, and the message names the call to make instead.

    >>> str(WrongKindError(406, call="a.B/Generate", method_kind="token_stream",
    ...                    hint="Generate is a token stream: use stream_tokens()"))
    'Generate is a token stream: use stream_tokens() (a.B/Generate: HTTP 406)'
    """

    def __init__(self, status: int, problem: ProblemDetails | None = None, body: str = "", *,
                 call: str | None = None, url: str | None = None, retry_after: float | None = None,
                 method_kind: str = "", expect: str | None = None, hint: str = ""):
        super().__init__(status, problem, body, call=call, url=url, retry_after=retry_after)
        self.method_kind = method_kind
        self.expect = expect
        self.hint = hint
        where = " at ".join(part for part in (call, url) if part)
        self.args = (f"{hint} ({where + ': ' if where else ''}HTTP {status})",)

    def __reduce__(self):
        kwargs = {"call": self.call, "url": self.url, "retry_after": self.retry_after,
                  "method_kind": self.method_kind, "expect": self.expect, "hint": self.hint}
        return (_rebuild_rpc_error, (type(self), (self.status, self.problem, self.body), kwargs))


_ERROR_BY_STATUS = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def rpc_error_for_status(status: int, problem: ProblemDetails | None = None, body: str = "", **kwargs) -> RpcError:
    """The :class:`RpcError` subclass that matches ``status`` (plain RpcError for the rest).

    >>> type(rpc_error_for_status(404)).__name__, type(rpc_error_for_status(502)).__name__
    ('NotFoundError', 'ServerError')
    """
    cls = _ERROR_BY_STATUS.get(status) or (ServerError if 500 <= status <= 599 else RpcError)
    return cls(status, problem, body, **kwargs)
