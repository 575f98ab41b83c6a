"""Transport failures as data, and the decisions to retry (the protocol never sleeps itself).

A transport raises :class:`TransportError` at its boundary, saying in which stage the exchange
failed and whether any byte of the request may have reached the server. :class:`RetryPolicy`
turns that (or a 429/503 :class:`~quill.errors.RpcError`) into "wait this long, then resend" or
"give up", and :func:`quill_error_for` into the error the caller sees.

The rule: a POST is not idempotent. A request is resent after a failure only when no byte of
it can have reached the server (the connection could not be made, or the first write failed),
unless the call is idempotent (:func:`resendable`: marked so, or carrying an ``Idempotency-Key``);
429/503 answers are retried only when the client opted in with ``status_retries`` (the server said
it did not process the request).

>>> policy = RetryPolicy(retries=2, status_retries=0, backoff_s=0.05)
>>> state = RetryState()
>>> policy.delay(TransportError("connect", sent=False, detail="refused"), True, False, 1.0, state)
0.05
>>> policy.delay(TransportError("response", sent=True, detail="closed"), True, False, 1.0, state) is None
True
"""

from __future__ import annotations

from typing import Any

from ..errors import QuillConnectionError, QuillTimeoutError, RpcError

__all__ = ["TransportError", "RetryState", "RetryPolicy", "quill_error_for", "resendable", "MAX_BACKOFF_S",
           "IDEMPOTENCY_KEY"]

MAX_BACKOFF_S = 2.0
#: The request header that makes a call safe to resend: the server answers a repeated key once
#: (the IETF httpapi draft "The Idempotency-Key HTTP Header Field").
IDEMPOTENCY_KEY = "idempotency-key"

_WHEN = {
    "connect": "connecting",
    "tls": "during the TLS handshake",
    "send": "while sending the request",
    "response": "before the response arrived",
    "body": "while reading the response",
}


class TransportError(Exception):
    """A transport failed. ``stage``: connect, tls, send, response or body. ``sent``: whether any
    byte of the request may have reached the server. ``timeout``: the failure was a timeout.
    ``expected``: for a body cut short, how many bytes were still due (None if unknown)."""

    def __init__(self, stage: str, *, sent: bool, detail: str, timeout: bool = False,
                 expected: int | None = None, reused: bool = False):
        super().__init__(detail)
        self.stage = stage
        self.sent = sent
        self.detail = detail
        self.timeout = timeout
        self.expected = expected
        self.reused = reused


def resendable(request: Any) -> bool:
    """Whether ``request`` may be sent again after it may have reached the server: the call is
    marked idempotent, or it carries an ``Idempotency-Key`` header (the client's or the call's).

    >>> class R: idempotent, headers = False, (("Idempotency-Key", "k1"),)
    >>> resendable(R())
    True
    """
    return request.idempotent or any(name.lower() == IDEMPOTENCY_KEY for name, _ in request.headers)


class RetryState:
    """How many resends a call has made so far (of each kind)."""

    __slots__ = ("attempts", "status_attempts")

    def __init__(self):
        self.attempts = 0
        self.status_attempts = 0


class RetryPolicy:
    """Which failures are retried, and after how long."""

    __slots__ = ("retries", "status_retries", "backoff_s")

    def __init__(self, retries: int, status_retries: int, backoff_s: float):
        self.retries = max(0, int(retries))
        self.status_retries = max(0, int(status_retries))
        self.backoff_s = max(0.0, float(backoff_s))

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * (2 ** attempt))

    def delay(self, failure: BaseException, replayable: bool, idempotent: bool, timeout: float,
              state: RetryState, status_retries: int | None = None) -> float | None:
        """Seconds to wait before resending, or None to give up (the caller raises)."""
        if not replayable:
            return None
        if isinstance(failure, TransportError):
            if state.attempts >= self.retries or failure.stage == "tls" or failure.stage == "body":
                return None
            if failure.sent and not idempotent:
                return None  # the server may have acted on it: never replay a non-idempotent call
            wait = 0.0 if failure.reused and not failure.sent else self._backoff(state.attempts)
            state.attempts += 1
            return wait
        if isinstance(failure, RpcError) and failure.status in (429, 503):
            allowed = self.status_retries if status_retries is None else status_retries
            if state.status_attempts >= allowed:
                return None
            wait = failure.retry_after if failure.retry_after is not None else self._backoff(state.status_attempts)
            if wait > timeout:
                return None
            state.status_attempts += 1
            return wait
        return None


def quill_error_for(failure: TransportError, call: str, timeout: float, when: str | None = None) -> Exception:
    """The QuillConnectionError or QuillTimeoutError the caller sees for ``failure``.

    >>> str(quill_error_for(TransportError("connect", sent=False, detail="refused"), "s/M at u", 1.0))
    's/M at u: cannot connect: refused'
    """
    when = when or _WHEN[failure.stage]
    if failure.timeout:
        if failure.stage == "connect":
            return QuillTimeoutError(f"{call}: connecting timed out after {timeout:g} s")
        return QuillTimeoutError(f"{call}: no answer within {timeout:g} s ({when})")
    if failure.stage == "connect":
        return QuillConnectionError(f"{call}: cannot connect: {failure.detail}")
    if failure.stage == "tls":
        return QuillConnectionError(f"{call}: TLS handshake failed: {failure.detail}")
    if failure.expected is not None or failure.detail == "body cut short":
        due = failure.expected if failure.expected is not None else "some"
        return QuillConnectionError(f"{call}: connection closed mid-body ({when}; {due} more bytes were due)")
    return QuillConnectionError(f"{call}: connection failed {when}: {failure.detail}")
