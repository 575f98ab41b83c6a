"""The JSON forms of answers (docs/protocol.md, section 6): one shape of a token and of a token
batch, shared by the server's JSON answer of a token stream, its event streams (SSE, NDJSON) and
``quill batch``'s records, and JSON that every parser reads: a float JSON cannot carry (NaN, the
infinities) becomes the string protobuf's JSON mapping writes for it, ``"NaN"``, ``"Infinity"``
or ``"-Infinity"``.

>>> from quill._core.tokens import Token, TokenBatch
>>> batch = TokenBatch.from_tokens([Token(7, 0, "Hi", logprob=float("-inf"))], sequence_id=3)
>>> dumps(batch_json(batch))
b'{"text":"Hi","tokens":[{"id":7,"text":"Hi","logprob":"-Infinity","position":0,"is_special":false}],"sequence_id":3,"is_final":false}'
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "token_dicts", "batch_json", "finite_floats"]


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8 bytes; a non-finite float left in ``obj`` is a ValueError (a bug
    here: callers map them with :func:`finite_floats`)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _non_finite(value: float) -> str:
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def token_dicts(batch: Any) -> list[dict[str, Any]]:
    """The batch's tokens as ``{"id", "text", "logprob", "position", "is_special"}`` dicts
    (``TokenBatch.to_dicts``), their logprobs JSON can carry."""
    tokens = batch.to_dicts()
    for token in tokens:
        logprob = token["logprob"]
        if logprob is not None and not math.isfinite(logprob):
            token["logprob"] = _non_finite(logprob)
    return tokens


def batch_json(batch: Any) -> dict[str, Any]:
    """One token batch: ``{"text", "tokens", "sequence_id", "is_final"}`` (``text``: the texts of
    its tokens joined; ``sequence_id``: null when the batch has none)."""
    return {"text": batch.text(), "tokens": token_dicts(batch), "sequence_id": batch.sequence_id,
            "is_final": batch.is_final}


def finite_floats(data: Any) -> Any:
    """Nested lists with their non-finite floats as strings (see the module docstring).

    >>> finite_floats([[1.0, float("nan")], [float("inf"), 2]])
    [[1.0, 'NaN'], ['Infinity', 2]]
    """
    if isinstance(data, list):
        return [finite_floats(item) for item in data]
    if isinstance(data, float) and not math.isfinite(data):
        return _non_finite(data)
    return data
