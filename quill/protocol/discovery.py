"""Method discovery, a quill extension (docs/protocol.md, "Method discovery"): the document a
server answers on ``GET /.well-known/quill/methods``, built from its methods, and read back as
:class:`MethodInfo` objects.

>>> document = describe_document([MethodInfo.of_kind("a.v1.S/M", "unary", "Echo the request.\\n\\nMore.")])
>>> document["services"][0]["methods"][0]["response"]
['application/proto; frames=none', 'application/json']
>>> [m.path for m in parse_methods(document)], parse_methods(document)[0].summary
(['a.v1.S/M'], 'Echo the request.')
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from ..errors import DecodeError
from .kinds import ANSWER_FORMS, BODY_FORMS, form_media

__all__ = ["MethodInfo", "describe_document", "parse_methods"]


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """One method a server describes: its ``service`` and ``name``, its ``kind`` (one of
    :data:`~quill.protocol.kinds.METHOD_KINDS`, or a kind this quill does not know), the
    Content-Types its ``request`` may have, the Accept values its ``response`` answers, and its
    docstring (``doc``, None when it has none)."""

    service: str
    name: str
    kind: str
    request: tuple[str, ...]
    response: tuple[str, ...]
    doc: str | None = None

    @classmethod
    def of_kind(cls, path: str, kind: str, doc: str | None = None) -> "MethodInfo":
        """The description of method ``path`` (``"package.Service/Method"``) of ``kind``: its
        content types are those of the kind."""
        service, _, name = path.partition("/")
        return cls(service, name, kind, tuple(form_media(form) for form in BODY_FORMS[kind]),
                   tuple(form_media(form) for form in ANSWER_FORMS[kind]), doc)

    @property
    def path(self) -> str:
        """``"package.Service/Method"``."""
        return f"{self.service}/{self.name}"

    @property
    def summary(self) -> str:
        """The first line of the docstring ("" without one)."""
        return (self.doc or "").strip().split("\n", 1)[0].strip()


def describe_document(methods: Iterable[MethodInfo]) -> dict:
    """The discovery document of ``methods``: services in the order their first method came."""
    services: dict[str, list] = {}
    for method in methods:
        services.setdefault(method.service, []).append({
            "name": method.name,
            "kind": method.kind,
            "request": list(method.request),
            "response": list(method.response),
            "doc": method.doc,
        })
    return {"services": [{"name": name, "methods": entries} for name, entries in services.items()]}


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DecodeError(f"method discovery: {what} must be a list of strings, got {value!r}"[:300])
    return tuple(value)


def _text(obj: dict, key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"method discovery: {what} needs a non-empty string {key!r}, got {value!r}"[:300])
    return value


def parse_methods(document: Any) -> list[MethodInfo]:
    """The methods of a discovery document, in its order; :class:`DecodeError` when it does not
    follow the schema. Members this quill does not know are ignored."""
    if not isinstance(document, dict) or not isinstance(document.get("services"), list):
        raise DecodeError("method discovery: the answer is not an object with a 'services' list")
    methods = []
    for service in document["services"]:
        if not isinstance(service, dict) or not isinstance(service.get("methods"), list):
            raise DecodeError(f"method discovery: a service must be an object with a 'methods' list, got {service!r}"[:300])
        service_name = _text(service, "name", "a service")
        for method in service["methods"]:
            if not isinstance(method, dict):
                raise DecodeError(f"method discovery: a method of {service_name} is not an object: {method!r}"[:300])
            name = _text(method, "name", f"a method of {service_name}")
            doc = method.get("doc")
            if doc is not None and not isinstance(doc, str):
                raise DecodeError(f"method discovery: the doc of {service_name}/{name} is not a string or null")
            methods.append(MethodInfo(
                service_name, name, _text(method, "kind", f"{service_name}/{name}"),
                _strings(method.get("request", []), f"the request of {service_name}/{name}"),
                _strings(method.get("response", []), f"the response of {service_name}/{name}"),
                doc,
            ))
    return methods
