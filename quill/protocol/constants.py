"""Protocol constants shared by the client and the server (docs/protocol.md, "RPC over HTTP").

>>> from quill.protocol.constants import PROTO, is_tensor_frames
>>> is_tensor_frames(TENSOR_FRAMES)
True
"""

from __future__ import annotations

__all__ = [
    "PROTO",
    "JSON",
    "PROBLEM_JSON",
    "TENSOR_FRAMES",
    "PREFER",
    "COMPRESSION_THRESHOLD",
    "ZSTD_LEVEL",
    "media_type",
    "is_json",
    "is_tensor_frames",
    "frames_parameter",
]

PROTO = "application/proto"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
#: The Content-Type of a request body made of tensor frames. The media type stays
#: ``application/proto`` (what the reference expects); the ``frames=tensor`` parameter is the
#: explicit signal a quill server uses to tell tensor frames from a protobuf message, since the
#: first byte cannot (0x10 is both TENSOR_META and the protobuf tag of field 2 as a varint).
TENSOR_FRAMES = "application/proto; frames=tensor"
#: The Prefer header of every call: an HTTP/1.1-only client speaks the classic profile.
PREFER = "prism=classic"
#: Bodies below this many bytes are never compressed.
COMPRESSION_THRESHOLD = 1024
#: The reference's zstd level.
ZSTD_LEVEL = 3


def media_type(content_type: str) -> str:
    """The media type of a Content-Type value, lower-cased, without parameters.

    >>> media_type("Application/Proto; frames=tensor")
    'application/proto'
    """
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    """True for ``application/json`` and any ``+json`` media type.

    >>> is_json("application/problem+json"), is_json("application/proto")
    (True, False)
    """
    media = media_type(content_type)
    return media == JSON or media.endswith("+json")


def is_tensor_frames(content_type: str) -> bool:
    """True when a Content-Type says the body is tensor frames (``frames=tensor`` parameter).

    >>> is_tensor_frames("application/proto"), is_tensor_frames('application/proto; Frames="tensor"')
    (False, True)
    """
    return frames_parameter(content_type) == "tensor"


def frames_parameter(value: str) -> str | None:
    """The ``frames`` parameter of an ``application/proto`` media type (a Content-Type or one
    Accept entry), lower-cased; None for another media type or without the parameter.

    >>> frames_parameter("application/proto; frames=Tokens"), frames_parameter("text/plain; frames=x")
    ('tokens', None)
    """
    media, _, params = value.partition(";")
    if media.strip().lower() != PROTO:
        return None
    for param in params.split(";"):
        name, _, text = param.partition("=")
        if name.strip().lower() == "frames":
            return text.strip().strip('"').lower()
    return None
