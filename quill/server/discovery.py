"""What the server says about its methods: the discovery document on
``GET /.well-known/quill/methods``, and the refusal of a call whose headers declare another kind
than the method's (docs/protocol.md, "Call kinds" and "Method discovery").

A refusal is a Problem Details answer titled "Wrong kind of call" with the member
``quill_method_kind`` (the method's kind): 415 when the Content-Type declares a body the method
does not take, 406 when the Accept declares only answers it does not give.

>>> from quill.server.handlers import Route
>>> route = Route("a.v1.S/Generate", "token_stream", lambda request, context: [])
>>> check_call_kind({"accept": "application/proto; frames=messages"}, route)
Traceback (most recent call last):
  ...
quill.server.problems.HttpProblem: Wrong kind of call
"""

from __future__ import annotations

import inspect
import json
from typing import Iterable, Mapping

from ..protocol.discovery import MethodInfo, describe_document
from ..protocol.kinds import ANSWER_FORMS, BODY_FORMS, KIND_PHRASES, answer_forms, body_form, form_media
from ..protocol.problems import problem
from .handlers import Route
from .problems import HttpProblem

__all__ = ["WRONG_KIND_TITLE", "check_call_kind", "check_answer_form", "describe_routes", "handler_doc"]

WRONG_KIND_TITLE = "Wrong kind of call"


def _wrong_kind(status: int, route: Route, detail: str, headers: Iterable[tuple[str, str]] = ()) -> HttpProblem:
    text = f"{route.path} is {KIND_PHRASES[route.kind]} (kind {route.kind}): {detail}"
    return HttpProblem(problem(status, WRONG_KIND_TITLE, text, extensions={"quill_method_kind": route.kind}),
                       headers)


def _either(forms: Iterable[str]) -> str:
    """``'a', 'b' or 'c'``: the media types of ``forms``, quoted (they hold commas and semicolons)."""
    quoted = [f"'{form_media(form)}'" for form in forms]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_call_kind(headers: Mapping[str, str], route: Route) -> None:
    """Raise the 415 or 406 refusal when the request's headers (lower-case names) declare a
    body or an answer that ``route`` does not have; a request that declares nothing passes."""
    body = body_form(headers)
    if body is not None and body not in BODY_FORMS[route.kind]:
        takes = BODY_FORMS[route.kind]
        content_type = headers.get("content-type", "")
        raise _wrong_kind(415, route, f"it takes a request of Content-Type {_either(takes)}, not '{content_type}'",
                          [("accept", ", ".join(form_media(form) for form in takes))])
    answers = answer_forms(headers)
    if answers is not None and answers.isdisjoint(ANSWER_FORMS[route.kind]):
        raise _wrong_kind(406, route, f"it answers {_either(ANSWER_FORMS[route.kind])}, "
                                      f"and the request accepts only {_either(sorted(answers))}")


def check_answer_form(headers: Mapping[str, str], route: Route, form: str) -> None:
    """Raise the 406 refusal when the handler's answer came out as ``form`` (a tensor method's
    ``tensor`` or ``none``) and the request's Accept declares answers without it."""
    answers = answer_forms(headers)
    if answers is not None and form not in answers:
        what = "a tensor" if form == "tensor" else "a message"
        raise _wrong_kind(406, route, f"its handler answered {what} ({_either([form])}), "
                                      f"and the request accepts only {_either(sorted(answers))}")


def handler_doc(function: object) -> str | None:
    """A handler's docstring, cleaned (None for a handler without one, or one that is not a
    function: the docstring of a partial or a callable object's class is not the method's)."""
    if not inspect.isroutine(function):
        return None
    return inspect.getdoc(function) or None


def describe_routes(routes: Iterable[Route]) -> bytes:
    """The discovery document of ``routes``, as JSON bytes."""
    document = describe_document(MethodInfo.of_kind(route.path, route.kind, handler_doc(route.function))
                                 for route in routes)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
