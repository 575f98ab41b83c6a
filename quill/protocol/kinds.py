"""The kinds of method, and how a call says in its headers which kind it makes
(docs/protocol.md, "Call kinds").

A request declares the form of its body in its Content-Type and the form of the answer it
reads in its Accept, with the ``frames`` parameter of ``application/proto`` (or JSON). A server
refuses a call whose declared forms its method does not have; a request that declares nothing
(plain ``application/proto``, curl's defaults) is served as the method's kind.

>>> body_form({"content-type": "application/proto; frames=messages"}), body_form({"content-type": "application/proto"})
('messages', None)
>>> answer_forms({"accept": "application/proto; frames=tokens"}), answer_forms({})
(frozenset({'tokens'}), None)
>>> wrong_kind_hint("Generate", "token_stream", "messages")
'Generate is a token stream: use stream_tokens()'
"""

from __future__ import annotations

from typing import Mapping

from .constants import JSON, PROTO, frames_parameter, is_json, media_type

__all__ = [
    "METHOD_KINDS",
    "KIND_PHRASES",
    "BODY_FORMS",
    "ANSWER_FORMS",
    "DESCRIBE_PATH",
    "LIBRARY_CALLS",
    "form_media",
    "body_form",
    "answer_forms",
    "wrong_kind_hint",
]

#: Every kind of method a server registers (``QuillApp.add_method``'s ``kind``).
METHOD_KINDS = ("unary", "server_stream", "client_stream", "token_stream", "tensor")
#: Each kind in words, for messages.
KIND_PHRASES = {
    "unary": "unary",
    "server_stream": "a message stream",
    "client_stream": "a client stream",
    "token_stream": "a token stream",
    "tensor": "a tensor method",
}
#: The request bodies each kind takes: ``message`` (one message, plain ``application/proto``),
#: ``json``, ``messages`` (message-stream frames) or ``tensor`` (tensor frames).
BODY_FORMS = {
    "unary": ("message", "json"),
    "server_stream": ("message", "json"),
    "client_stream": ("messages",),
    "token_stream": ("message", "json"),
    "tensor": ("tensor", "message", "json"),
}
#: The answers each kind gives: ``none`` (one message, no frames), ``messages``, ``tokens``
#: (TOKEN_BATCH frames), ``tensor`` (tensor frames) or ``json``. A tensor method answers a
#: tensor or a message, as its handler returns a Tensor or bytes.
ANSWER_FORMS = {
    "unary": ("none", "json"),
    "server_stream": ("messages",),
    "client_stream": ("none", "json"),
    "token_stream": ("tokens", "json"),
    "tensor": ("tensor", "none", "json"),
}
#: Where a server describes its methods (a quill extension; GET, JSON).
DESCRIBE_PATH = "/.well-known/quill/methods"

#: The client method that makes each kind of call.
LIBRARY_CALLS = {
    "unary": "call()",
    "server_stream": "call_stream()",
    "client_stream": "call_client_stream()",
    "token_stream": "stream_tokens()",
    "tensor": "call_tensor()",
}


def form_media(form: str) -> str:
    """The media type that names a body or answer form (what goes in Content-Type or Accept).

    >>> form_media("message"), form_media("tensor")
    ('application/proto', 'application/proto; frames=tensor')
    """
    if form == "message":
        return PROTO
    if form == "json":
        return JSON
    return f"{PROTO}; frames={form}"


def body_form(headers: Mapping[str, str]) -> str | None:
    """The body form a request declares (``headers`` with lower-case names), or None.

    The Content-Type's ``frames`` value (``none`` is ``message``), ``json`` for JSON (any
    ``+json`` type too). A plain ``application/proto`` body is one ``message`` when the Accept
    declares a ``frames`` answer (a call that says what it reads says what it sends); without
    that it declares nothing, and neither does a form type or no Content-Type.

    >>> body_form({"content-type": "application/proto", "accept": "application/proto; frames=none"})
    'message'
    """
    content_type = headers.get("content-type", "")
    if is_json(content_type):
        return "json"
    frames = frames_parameter(content_type)
    if frames is not None:
        return "message" if frames == "none" else frames
    if media_type(content_type) == PROTO and _accepts_frames(headers):
        return "message"
    return None


def _accepts_frames(headers: Mapping[str, str]) -> bool:
    return any(frames_parameter(entry) is not None for entry in headers.get("accept", "").split(","))


def answer_forms(headers: Mapping[str, str]) -> frozenset | None:
    """The answer forms a request's Accept declares (``headers`` with lower-case names), or None
    when it declares none.

    ``application/proto`` entries declare their ``frames`` values; one without ``frames``
    declares nothing (any answer). Without ``application/proto``, ``application/json`` declares
    ``json``; anything else (``*/*``, no Accept) declares nothing.

    >>> sorted(answer_forms({"accept": "application/proto; frames=none, application/proto; frames=tensor"}))
    ['none', 'tensor']
    >>> answer_forms({"accept": "application/json"}), answer_forms({"accept": "application/proto, */*"})
    (frozenset({'json'}), None)
    """
    forms = set()
    json_entry = False
    for entry in headers.get("accept", "").split(","):
        media = media_type(entry)
        if media == PROTO:
            frames = frames_parameter(entry)
            if frames is None:
                return None
            forms.add(frames)
        elif media == JSON:
            json_entry = True
    if forms:
        return frozenset(forms)
    return frozenset({"json"}) if json_entry else None


def wrong_kind_hint(method: str, kind: str, expect: str | None, calls: Mapping[str, str] = LIBRARY_CALLS) -> str:
    """The sentence that names the call to make instead: ``method`` is of ``kind`` and the call
    read its answer as ``expect`` (a :class:`~quill.protocol.requests.Request`'s ``expect``).
    ``calls`` maps each kind to the call that makes it (the client's methods, or the CLI's commands).

    >>> wrong_kind_hint("Echo", "tensor", "tensor")
    'Echo answered a message, not a tensor: use call()'
    """
    if kind not in KIND_PHRASES:
        return f"{method} is of kind {kind!r}, which this client cannot call"
    if kind == "tensor" and expect == "tensor":  # a tensor method whose handler answered bytes
        return f"{method} answered a message, not a tensor: use {calls['unary']}"
    return f"{method} is {KIND_PHRASES[kind]}: use {calls[kind]}"
