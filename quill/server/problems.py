"""What the server answers when a call fails: exceptions mapped to Problem Details (with
extra headers such as Retry-After), and the reason text of the CANCEL frame that ends a
stream whose handler failed after the answer started.

>>> from quill.errors import LimitExceededError
>>> answer, headers = problem_for(LimitExceededError("prompt too long"), "a.B/C")
>>> answer.status, answer.title, headers
(413, 'Payload too large', [])
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

from ..errors import ProblemDetails, RpcError
from ..protocol.problems import problem, status_for_error
from .tracing import current_trace_id

__all__ = ["HttpProblem", "ClientGone", "problem_for", "cancel_reason"]

logger = logging.getLogger("quill.server")


class HttpProblem(Exception):
    """Raised inside the app to answer with ``problem`` (and extra response headers)."""

    def __init__(self, problem: ProblemDetails, headers: Sequence[tuple[str, str]] = ()):
        super().__init__(problem.title)
        self.problem = problem
        self.headers = list(headers)


class ClientGone(Exception):
    """The client disconnected before the request body was read."""


def problem_for(exc: BaseException, method_path: str) -> tuple[ProblemDetails, list[tuple[str, str]]]:
    """The answer to an exception from a handler (or from reading the request).

    Unexpected exceptions answer 500 without their text; the traceback goes to the log under
    the ``trace_id`` that the answer carries (the call's OpenTelemetry trace id when tracing).
    """
    if isinstance(exc, HttpProblem):
        return exc.problem, exc.headers
    if isinstance(exc, RpcError):
        headers = [] if exc.retry_after is None else [("retry-after", str(max(0, math.ceil(exc.retry_after))))]
        if exc.problem is not None:
            return exc.problem, headers
        return problem(exc.status, None, exc.body or None), headers
    known = status_for_error(exc)
    if known is not None:
        return problem(known[0], known[1], str(exc)), []
    trace_id = current_trace_id()
    logger.error("handler for %s failed (trace_id %s)", method_path, trace_id, exc_info=exc)
    return problem(
        500,
        "Internal server error",
        "the handler raised an unexpected error; the server log has the details under this trace_id",
        trace_id=trace_id,
    ), []


def cancel_reason(exc: BaseException, method_path: str, max_chars: int = 2000) -> str:
    """The text of the CANCEL frame that ends a stream whose handler failed:
    ``"<status> <title>: <detail> (trace_id ...)"``, valid UTF-8, at most ``max_chars``."""
    answer, _ = problem_for(exc, method_path)
    reason = f"{answer.status} {answer.title}"
    if answer.detail:
        reason += f": {answer.detail}"
    if answer.trace_id:
        reason += f" (trace_id {answer.trace_id})"
    return reason.encode("utf-8", "replace").decode("utf-8")[:max_chars]
