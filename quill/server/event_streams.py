"""Token and message streams that plain HTTP tools read: Server-Sent Events or NDJSON, one JSON
object per token batch or message, for a call that asks with ``Accept: text/event-stream`` or
``Accept: application/x-ndjson`` (docs/protocol.md, section 6, "Event streams").

Such a call may also be a ``GET`` with its request in the query (``?request=<the request,
URL-encoded>``), since a browser's ``EventSource`` can do nothing else.

>>> sse_event({"text": "Hi"}), ndjson_line({"text": "Hi"})
(b'data: {"text":"Hi"}\\n\\n', b'{"text":"Hi"}\\n')
>>> message_json(b'{"word": "hi"}'), message_json(b"\\x08\\x01")
({'message': {'word': 'hi'}}, {'data_base64': 'CAE='})
"""

from __future__ import annotations

import base64
import json
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qsl

from ..protocol.constants import PROTO, media_type
from ..protocol.problems import problem
from .exchange import Exchange
from .handlers import Route
from ..protocol.json_answers import dumps
from .problems import HttpProblem, problem_for

__all__ = [
    "SSE", "NDJSON", "EVENT_STREAM_KINDS", "MAX_QUERY_BYTES", "event_format", "takes_get",
    "request_from_query", "send_event_stream", "message_json", "sse_event", "ndjson_line",
]

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
#: The handler kinds whose answers can be sent as event streams (and called with GET).
EVENT_STREAM_KINDS = ("server_stream", "token_stream")
#: The longest query string a GET call may carry (its request, URL-encoded), in bytes.
MAX_QUERY_BYTES = 8192

#: The event that ends an SSE stream (EventSource drops an event without data: hence the ``{}``).
SSE_END = b"event: end\ndata: {}\n\n"


def event_format(headers: dict[str, str]) -> str | None:
    """:data:`SSE` or :data:`NDJSON`, whichever the Accept header lists first, unless it also
    names ``application/proto`` (what quill's clients ask for); else None.

    >>> event_format({"accept": "text/event-stream"}), event_format({"accept": "application/proto"})
    ('text/event-stream', None)
    """
    accept = headers.get("accept", "").lower()
    if PROTO in accept:
        return None
    for part in accept.split(","):
        media = media_type(part)
        if media in (SSE, NDJSON):
            return media
    return None


def takes_get(route: Route | None, headers: dict[str, str]) -> bool:
    """True when a GET to ``route`` is an event-stream call (a streaming method, asked for SSE or NDJSON)."""
    return route is not None and route.kind in EVENT_STREAM_KINDS and event_format(headers) is not None


def request_from_query(exchange: Exchange) -> None:
    """Take a GET call's request from its query: ``request=<the request, URL-encoded UTF-8>``, the
    only parameter (absent: an empty request). A query over :data:`MAX_QUERY_BYTES` is 414; other
    parameters, a malformed query or a body is 400."""
    query = exchange.scope.get("query_string") or b""
    if len(query) > MAX_QUERY_BYTES:
        raise HttpProblem(problem(414, "URI too long", f"the query of a GET call is {len(query)} bytes; at most "
                                  f"{MAX_QUERY_BYTES} are accepted (POST the request instead)"))
    if exchange.headers.get("content-length", "0").strip() != "0" or "transfer-encoding" in exchange.headers:
        raise HttpProblem(problem(400, "Bad request", "a GET call carries its request in ?request=, not in a body"))
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(query),
                          encoding="utf-8", errors="strict", max_num_fields=1)
    except ValueError as exc:  # UnicodeDecodeError among them
        raise HttpProblem(problem(400, "Bad request", f"the query of a GET call must be request=<the request, "
                                  f"URL-encoded UTF-8>: {exc}")) from None
    if any(name != "request" for name, _ in pairs):
        raise HttpProblem(problem(400, "Bad request", f"a GET call takes one query parameter, request; got "
                                  f"{', '.join(repr(name) for name, _ in pairs)}"))
    exchange.take_body(pairs[0][1].encode("utf-8") if pairs else b"")


def message_json(message: Any) -> dict[str, Any]:
    """A message of a message stream as JSON: ``{"message": <its JSON>}`` for a message that is a
    JSON object or array (UTF-8), else ``{"data_base64": <its bytes in base64>}``."""
    data = bytes(message)
    if data.lstrip(b" \t\r\n")[:1] in (b"{", b"["):
        try:
            value = json.loads(data.decode("utf-8"), parse_constant=_not_json)
            dumps(value)  # numbers JSON cannot carry back (1e400 reads as inf) mean: not JSON
        except (ValueError, RecursionError):
            pass
        else:
            return {"message": value}
    return {"data_base64": base64.b64encode(data).decode("ascii")}


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def sse_event(obj: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event whose data is ``obj`` as JSON (one line: JSON escapes newlines)."""
    head = b"" if event is None else b"event: " + event.encode("ascii") + b"\n"
    return head + b"data: " + dumps(obj) + b"\n\n"


def ndjson_line(obj: Any) -> bytes:
    return dumps(obj) + b"\n"


async def send_event_stream(exchange: Exchange, items: AsyncIterator, form: str, to_json: Callable[[Any], Any]) -> None:
    """Send ``items`` as :data:`SSE` events or :data:`NDJSON` lines of ``to_json(item)``, each as
    soon as the handler makes it, never compressed. The end is ``event: end`` (SSE) or the end of
    the body (NDJSON); a handler that fails midway ends it with its Problem Details, as
    ``event: error`` or a last ``{"error": <problem>}`` line."""
    sse = form == SSE

    def encode(item: Any) -> bytes:
        obj = to_json(item)
        return sse_event(obj) if sse else ndjson_line(obj)

    def failed(exc: BaseException) -> bytes:
        answer = problem_for(exc, exchange.context.method_path)[0].to_dict()
        answer.setdefault("instance", exchange.scope.get("path"))
        return sse_event(answer, "error") if sse else ndjson_line({"error": answer})

    headers = [("content-type", form), ("cache-control", "no-cache"), ("x-accel-buffering", "no")]
    await exchange.stream(items, encode, SSE_END if sse else b"", failed, headers=headers)
