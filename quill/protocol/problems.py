"""Problem Details (RFC 9457) as quill writes them: the ``urn:quill:error:<status>`` type, and
which HTTP status answers which quill error.

The client reads the other direction, status to exception class, with
:func:`quill.errors.rpc_error_for_status`; the two stay inverse of each other for the classes
both know.

>>> problem(404, detail="no such method").to_dict()["type"]
'urn:quill:error:404'
>>> from quill.errors import LimitExceededError
>>> status_for_error(LimitExceededError("too big"))
(413, 'Payload too large')
"""

from __future__ import annotations

from http import HTTPStatus

from ..errors import (
    DecodeError,
    LimitExceededError,
    ProblemDetails,
    QuillConnectionError,
    QuillTimeoutError,
    StreamCancelledError,
)

__all__ = ["problem", "status_for_error", "ERROR_STATUSES"]

#: A quill error raised while serving a call, and the answer it gets. Checked in this order
#: (LimitExceededError is a DecodeError).
ERROR_STATUSES: tuple[tuple[type, int, str], ...] = (
    (LimitExceededError, 413, "Payload too large"),
    (DecodeError, 400, "Invalid request body"),
    (StreamCancelledError, 400, "Request stream cancelled"),
    (QuillTimeoutError, 504, "Gateway timeout"),
    (QuillConnectionError, 502, "Bad gateway"),
)


def problem(status: int, title: str | None = None, detail: str | None = None, **fields) -> ProblemDetails:
    """A Problem Details body of type ``urn:quill:error:<status>``; ``title`` defaults to the
    status's reason phrase.

    >>> problem(429).title
    'Too Many Requests'
    """
    if title is None:
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
    return ProblemDetails(status=status, title=title, type=f"urn:quill:error:{status}", detail=detail, **fields)


def status_for_error(exc: BaseException) -> tuple[int, str] | None:
    """``(status, title)`` for a quill error of :data:`ERROR_STATUSES`, else None."""
    for cls, status, title in ERROR_STATUSES:
        if isinstance(exc, cls):
            return status, title
    return None
