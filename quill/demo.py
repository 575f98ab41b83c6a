"""The demo inference service, ``inference.v1.LLMService`` (``quill demo`` walks through it).

Nothing is downloaded: ``Generate`` samples from a tiny deterministic bigram model over
a built-in vocabulary, ``Embed`` derives unit-length vectors from a hash of each input.
The same request always gives the same answer.

Methods and request layouts. A request is JSON when its Content-Type is ``application/json``
or its body starts with ``{`` (so ``call_json`` and the seed's ``call(..., b'{"prompt": ...}')``
work); any other body is read as the protobuf message of the reference's ``inference.proto``.

``Generate`` (token_stream: TOKEN_BATCH frames, or one JSON answer with ``Accept: application/json``)
    ``{"prompt": "Hello", "max_tokens": 16, "batch_size": 1, "seed": 0, "token_delay_ms": 0,
    "sequence_id": 7}`` -- every member optional. ``max_tokens`` (alias ``max_new_tokens``,
    0..100000) tokens are generated, ``batch_size`` (1..4096) per TokenBatch; every token
    has its text and logprob; the last batch has ``is_final`` set. ``token_delay_ms``
    (0..1000, default: the server's setting) simulates compute per token.
    Protobuf: ``GenerateRequest`` (``input_ids`` = 1, ``max_new_tokens`` = 2; other fields ignored).

``Embed`` (tensor: tensor frames, or JSON with ``Accept: application/json``)
    ``{"input": "text" | ["text", ...], "dim": 256, "dtype": "float32" | "bfloat16" | "float16"}``
    answers a ``(len(input), dim)`` Tensor named ``"embedding"`` of unit-length rows. A
    tensor-frame body (Content-Type ``application/proto; frames=tensor``) embeds each row of
    that tensor (its bytes), as 256-dim float32.
    Protobuf: ``EmbedRequest`` (``input_ids`` = 1, uint32; one 256-dim float32 row).

The service is safe to expose: every answer is bounded by counts checked before any work,
never by request bytes alone (a ``(2**63, 0)`` tensor is 0 bytes on the wire). At most
``MAX_EMBED_ELEMENTS`` elements per embedding (inputs x dim, or tensor rows x 256),
``MAX_TOKENS`` tokens per generation, and ids within uint32; anything else is a 400.

``Echo`` (tensor)
    answers its request unchanged: bytes as bytes, a Tensor as tensor frames.

>>> app.methods()["inference.v1.LLMService/Embed"]
'tensor'
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import math
import random
import zlib
from typing import Any, AsyncIterator, Iterator

import numpy as np

from .errors import BadRequestError, ProblemDetails
from .protocol.constants import media_type
from .server import QuillApp

__all__ = [
    "SERVICE",
    "VOCABULARY",
    "ToyLanguageModel",
    "GenerateParams",
    "parse_generate_request",
    "embed_texts",
    "create_demo_app",
    "app",
]

SERVICE = "inference.v1.LLMService"
MAX_TOKENS = 100_000
MAX_BATCH = 4096
MAX_DELAY_MS = 1000.0
MAX_EMBED_DIM = 65_536
MAX_EMBED_ELEMENTS = 16 * 1024 * 1024
TENSOR_EMBED_DIM = 256  # the width of the rows embedded from a tensor or protobuf request
MAX_TOKEN_ID = 2**32 - 1

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 (Token.is_eos() ids)

# The toy model's "training data": its bigram counts come from these sentences.
_CORPUS = """
A quill writes tokens to the wire. The server streams tokens over loopback without copies.
The client reads each frame as it arrives. Every frame carries a batch of tokens with logprobs.
A tensor travels as frames of bytes. The model answers with an embedding tensor.
The server sends tokens as soon as the model writes them. The client prints each token as it arrives.
Tensors and tokens share the wire. A quill never copies the tensor bytes.
"""
_WORDS = tuple(dict.fromkeys(
    (" " + w if w not in ".," else w) for w in _CORPUS.replace(".", " .").replace(",", " ,").split()
))
VOCABULARY = SPECIAL_TOKENS + _WORDS
_FIRST_WORD = len(SPECIAL_TOKENS)
BOS = 1


def _bad_request(detail: str) -> BadRequestError:
    return BadRequestError(400, ProblemDetails(400, "Invalid request", type="urn:quill:error:400", detail=detail))


class ToyLanguageModel:
    """A deterministic bigram model estimated from a few built-in sentences (add-``smoothing``).

    >>> model = ToyLanguageModel()
    >>> steps = list(model.generate("Hello", 3))
    >>> steps == list(model.generate("Hello", 3)), len(steps), all(lp < 0 for _, lp in steps)
    (True, 3, True)
    """

    def __init__(self, smoothing: float = 0.001):
        index = {word: i for i, word in enumerate(_WORDS)}
        words = [index[" " + w if w not in ".," else w] for w in _CORPUS.replace(".", " .").replace(",", " ,").split()]
        counts = [[smoothing] * len(_WORDS) for _ in VOCABULARY]
        previous = BOS
        for word in words:
            counts[previous][word] += 1.0
            previous = BOS if _WORDS[word] == "." else _FIRST_WORD + word
        self._cumulative: list[list[float]] = []
        self._logprobs: list[list[float]] = []
        for row in counts:
            total = sum(row)
            running, cumulative = 0.0, []
            for count in row:
                running += count / total
                cumulative.append(running)
            cumulative[-1] = 1.0
            self._cumulative.append(cumulative)
            self._logprobs.append([math.log(count / total) for count in row])

    def generate(self, prompt: str | list[int], max_tokens: int, seed: int = 0) -> Iterator[tuple[int, float]]:
        """Yield ``(token_id, logprob)`` for ``max_tokens`` new tokens after ``prompt``."""
        key = prompt.encode("utf-8", "surrogatepass") if isinstance(prompt, str) else np.asarray(prompt, "<u4").tobytes()
        rng = random.Random(zlib.crc32(key) ^ (seed * 0x9E3779B1))
        previous = BOS
        for _ in range(max_tokens):
            row = self._cumulative[previous]
            index = min(bisect.bisect_right(row, rng.random()), len(row) - 1)
            token_id = _FIRST_WORD + index
            yield token_id, self._logprobs[previous][index]
            previous = BOS if _WORDS[index] == "." else token_id


class GenerateParams:
    """A parsed ``Generate`` request (see the module docstring for the layout)."""

    __slots__ = ("prompt", "max_tokens", "batch_size", "seed", "token_delay", "sequence_id")

    def __init__(self, prompt: str | list[int] = "", max_tokens: int = 16, batch_size: int = 1, seed: int = 0,
                 token_delay: float | None = None, sequence_id: int | None = None):
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.token_delay = token_delay
        self.sequence_id = sequence_id


def _int_member(obj: dict, names: tuple[str, ...], default: int | None, low: int, high: int) -> int | None:
    for name in names:
        if name in obj and obj[name] is not None:
            value = obj[name]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise _bad_request(f"{name} must be an integer in {low}..{high}, got {value!r}")
            return value
    return default


def _is_json_body(body: bytes, content_type: str | None) -> bool:
    """JSON when the Content-Type says so, or when the body starts with ``{`` (a byte no
    protobuf message of ours starts with: it would be field 15 opening a group)."""
    if content_type is not None and media_type(content_type) in ("application/json", "text/json"):
        return True
    return body[:1] == b"{"


def _json_object(body: bytes) -> dict:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad_request(f"request must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_generate_request(body: bytes, content_type: str | None = None) -> GenerateParams:
    """Parse a JSON or protobuf ``GenerateRequest`` body; bad input raises a 400 :class:`BadRequestError`.

    The body is JSON when ``content_type`` is ``application/json`` or it starts with ``{``;
    otherwise it is the protobuf message.

    >>> p = parse_generate_request(b'{"prompt": "Hello", "max_tokens": 100}')
    >>> p.prompt, p.max_tokens, p.batch_size
    ('Hello', 100, 1)
    >>> parse_generate_request(bytes([0x0a, 0x02, 0x05, 0x06, 0x10, 0x03])).max_tokens  # protobuf
    3
    """
    if not body:
        return GenerateParams()
    if not _is_json_body(body, content_type):
        fields = _protobuf_fields(body)
        ids = _input_ids(fields)
        max_tokens = fields.get(2, [16])[-1]
        if max_tokens > MAX_TOKENS:
            raise _bad_request(f"max_new_tokens must be at most {MAX_TOKENS}, got {max_tokens}")
        return GenerateParams(prompt=ids, max_tokens=max_tokens)
    obj = _json_object(body)
    prompt = obj.get("prompt", "")
    if not isinstance(prompt, str):
        raise _bad_request(f"prompt must be a string, got {type(prompt).__name__}")
    delay = obj.get("token_delay_ms")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or not 0 <= delay <= MAX_DELAY_MS):
        raise _bad_request(f"token_delay_ms must be a number in 0..{MAX_DELAY_MS:g}, got {delay!r}")
    return GenerateParams(
        prompt=prompt,
        max_tokens=_int_member(obj, ("max_tokens", "max_new_tokens"), 16, 0, MAX_TOKENS),
        batch_size=_int_member(obj, ("batch_size",), 1, 1, MAX_BATCH),
        seed=_int_member(obj, ("seed",), 0, 0, 2**63 - 1),
        token_delay=None if delay is None else delay / 1000.0,
        sequence_id=_int_member(obj, ("sequence_id",), None, 0, 2**32 - 1),
    )


def _protobuf_fields(body: bytes) -> dict[int, list[int]]:
    """The varint fields of a protobuf message (packed repeated varints unpacked);
    other wire types are skipped. Malformed input raises a 400 error naming the offset."""
    fields: dict[int, list[int]] = {}

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        start = pos
        while True:
            if pos >= len(body):
                raise _bad_request(f"protobuf body: truncated varint at offset {start}")
            byte = body[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value & 0xFFFFFFFFFFFFFFFF, pos
            shift += 7
            if shift >= 70:
                raise _bad_request(f"protobuf body: varint longer than 10 bytes at offset {start}")

    pos = 0
    while pos < len(body):
        key_at = pos
        key, pos = varint(pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = varint(pos)
            fields.setdefault(number, []).append(value)
        elif wire_type == 2:
            length, pos = varint(pos)
            if pos + length > len(body):
                raise _bad_request(f"protobuf body: field {number} at offset {key_at} runs past the end")
            end, inner = pos + length, pos
            if number == 1:  # packed repeated uint32 input_ids
                while inner < end:
                    value, inner = varint(inner)
                    fields.setdefault(1, []).append(value)
            pos = end
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            if pos > len(body):
                raise _bad_request(f"protobuf body: fixed-width field {number} at offset {key_at} runs past the end")
        else:
            raise _bad_request(f"protobuf body: unsupported wire type {wire_type} at offset {key_at}")
    return fields


def _input_ids(fields: dict[int, list[int]]) -> list[int]:
    """Field 1 of a protobuf request, ``repeated uint32 input_ids``, range-checked."""
    ids = fields.get(1, [])
    for value in ids:
        if value > MAX_TOKEN_ID:
            raise _bad_request(f"input_ids are uint32: {value} is out of range 0..{MAX_TOKEN_ID}")
    return ids


def embed_texts(texts: list[bytes], dim: int) -> np.ndarray:
    """Deterministic unit-length float32 rows, one per input, seeded by a BLAKE2 hash.

    >>> rows = embed_texts([b"a", b"b", b"a"], 8)
    >>> rows.shape, bool((rows[0] == rows[2]).all()), round(float(np.linalg.norm(rows[1])), 5)
    ((3, 8), True, 1.0)
    """
    out = np.empty((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
        vector = np.random.default_rng(seed).standard_normal(dim, dtype=np.float32)
        out[row] = vector / np.float32(np.linalg.norm(vector) or 1.0)
    return out


def _embed_request(request: Any, content_type: str | None) -> tuple[list[bytes], int, str]:
    from .tensor import Tensor

    if isinstance(request, Tensor):
        # Limited by rows, not bytes: a (rows, 0) tensor is 0 bytes on the wire whatever its rows.
        rows = request.shape[0] if request.ndim >= 1 else 1
        if rows * TENSOR_EMBED_DIM > MAX_EMBED_ELEMENTS:
            raise _bad_request(f"a tensor of {rows} rows would embed to {rows} x {TENSOR_EMBED_DIM} elements; "
                               f"at most {MAX_EMBED_ELEMENTS // TENSOR_EMBED_DIM} rows")
        data = request.tobytes()
        step = len(data) // rows if rows else 0
        return [data[i * step:(i + 1) * step] for i in range(rows)], TENSOR_EMBED_DIM, "float32"
    if not _is_json_body(request, content_type):
        ids = _input_ids(_protobuf_fields(request))
        return [np.asarray(ids, "<u4").tobytes()], TENSOR_EMBED_DIM, "float32"
    obj = _json_object(request)
    inputs = obj.get("input", "")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
        raise _bad_request("input must be a string or a list of strings")
    dim = _int_member(obj, ("dim",), 256, 1, MAX_EMBED_DIM)
    dtype = obj.get("dtype", "float32")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise _bad_request(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if len(inputs) * dim > MAX_EMBED_ELEMENTS:
        raise _bad_request(f"{len(inputs)} inputs x {dim} dims exceeds {MAX_EMBED_ELEMENTS} elements")
    return [t.encode("utf-8", "surrogatepass") for t in inputs], dim, dtype


def create_demo_app(*, token_delay: float = 0.0, **app_options: Any) -> QuillApp:
    """A :class:`QuillApp` serving the demo ``inference.v1.LLMService``.

    ``token_delay`` (seconds) is the default simulated compute per generated token;
    ``app_options`` go to :class:`QuillApp` (``max_request_bytes``, ``auth``).

    >>> create_demo_app(token_delay=0.01).methods()
    {'inference.v1.LLMService/Generate': 'token_stream', 'inference.v1.LLMService/Embed': 'tensor', 'inference.v1.LLMService/Echo': 'tensor'}
    """
    from ._core.tokens import Token, TokenBatch
    from .dtypes import DType
    from .tensor import Tensor

    demo = QuillApp(**app_options)
    model = ToyLanguageModel()

    @demo.token_stream(f"{SERVICE}/Generate")
    async def generate(request: bytes, context) -> AsyncIterator[TokenBatch]:
        """Generate tokens after a prompt, each with its text and logprob, as they are sampled.

        JSON ``{"prompt", "max_tokens", "batch_size", "seed", "token_delay_ms", "sequence_id"}``
        (every member optional) or a protobuf ``GenerateRequest``.
        """
        params = parse_generate_request(request, context.headers.get("content-type"))
        delay = token_delay if params.token_delay is None else params.token_delay
        batch = TokenBatch(sequence_id=params.sequence_id)
        for position, (token_id, logprob) in enumerate(model.generate(params.prompt, params.max_tokens, params.seed)):
            if delay:
                await asyncio.sleep(delay)
            batch.add(Token(token_id, position, text=VOCABULARY[token_id], logprob=logprob))
            if len(batch) == params.batch_size and position + 1 < params.max_tokens:
                yield batch
                batch = TokenBatch(sequence_id=params.sequence_id)
                if not delay:
                    await asyncio.sleep(0)  # let other requests in between batches
        batch.is_final = True
        yield batch

    @demo.tensor(f"{SERVICE}/Embed")
    def embed(request: bytes | Tensor, context) -> Tensor:
        """Embed texts as a tensor of unit-length rows.

        JSON ``{"input": "text" | ["text", ...], "dim": 256, "dtype": "float32"}``, a tensor
        (each row's bytes embedded) or a protobuf ``EmbedRequest``.
        """
        texts, dim, dtype = _embed_request(request, context.headers.get("content-type"))
        tensor = Tensor.from_numpy(embed_texts(texts, dim), name="embedding")
        return tensor if dtype == "float32" else tensor.astype(DType.from_name(dtype))

    @demo.tensor(f"{SERVICE}/Echo")
    async def echo(request: bytes | Tensor, context) -> bytes | Tensor:
        """Answer the request unchanged: bytes as bytes, a tensor as a tensor."""
        return request

    return demo


#: The demo app, for ``quill serve`` and ``uvicorn quill.demo:app``.
app = create_demo_app()
