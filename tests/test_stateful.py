"""API-sequence tests: hypothesis state machines run against plain-Python models.

TokenBatch (every way of appending, its own tokens and itself included, clear, slicing, get,
encode/decode, metadata, pickling, pins), TokenBatchBuilder, and the incremental parsers fed
arbitrary splits of generated streams (valid, truncated, corrupted). The models are written here
from PROTOCOL.md; only the payload codecs that have their own golden-vector tests (TokenBatch.decode
for TOKEN_BATCH payloads, TensorMeta.decode for TENSOR_META) are reused inside the parser models.

QUILL_STATEFUL_EXAMPLES (default 40) sets the examples per machine, e.g. for a long run under the
sanitizer build: QUILL_STATEFUL_EXAMPLES=5000 python tools/native_builds.py run asan /tmp/quill-asan
python -m pytest tests/test_stateful.py
"""

import collections
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from quill._core.frames import (
    MAX_CANCEL_PAYLOAD,
    MAX_META_PAYLOAD,
    MessageStreamDecoder,
    StreamFrameParser,
    TensorFrameParser,
    TensorReceiver,
    TokenStreamDecoder,
)
from quill._core.tokens import Token, TokenBatch, TokenBatchBuilder, pin_batch
from quill.errors import DecodeError, IncompleteStreamError, LimitExceededError, StreamCancelledError
from quill.tensor import Tensor, TensorMeta

EXAMPLES = int(os.environ.get("QUILL_STATEFUL_EXAMPLES", "40"))
STEPS = collections.Counter()   # steps checked per machine (an invariant runs after each)


@pytest.fixture(scope="module", autouse=True)
def report_steps():
    """The figures of a long run (docs/bad-inputs.md): pytest -s shows them."""
    yield
    print(f"\nsteps checked against the models: {dict(STEPS)}, {sum(STEPS.values())} in all")


SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- TokenBatch ------------------------------------------------------------------------------

TEXTS = st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
FIELDS = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), TEXTS,
                   st.none() | st.integers(0, 2**32 - 1), st.booleans())   # logprob as f32 bits


def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def make_token(fields):
    id, position, text, bits, special = fields
    token = Token(id, position, text, None, special)
    if bits is None:
        return token
    # Through the wire to keep the exact bits (NaN payloads included); Token() takes a float.
    wire = bytearray(token.encode())
    wire[8] |= 0x02
    return Token.decode(bytes(wire[:9]) + struct.pack(">I", bits) + bytes(wire[9:]))


def oracle_encode(fields_list, sequence_id, is_final):
    """PROTOCOL.md section 3 with struct, from the model's fields."""
    out = struct.pack(">B", (sequence_id is not None) | is_final << 1)
    if sequence_id is not None:
        out += struct.pack(">I", sequence_id)
    out += struct.pack(">H", len(fields_list))
    for id, position, text, bits, special in fields_list:
        out += struct.pack(">IIB", id, position, (text is not None) | (bits is not None) << 1 | special << 2)
        if bits is not None:
            out += struct.pack(">I", bits)
        if text is not None:
            out += struct.pack(">H", len(text.encode())) + text.encode()
    return out


class TokenBatchMachine(RuleBasedStateMachine):
    """A TokenBatch and its model: a list of token field tuples plus the header and metadata."""

    pins = Bundle("pins")

    def __init__(self):
        super().__init__()
        self.batch = TokenBatch()
        self.model = []
        self.sequence_id, self.is_final, self.metadata = None, False, {}

    @rule(fields=FIELDS)
    def add(self, fields):
        self.batch.add(make_token(fields))
        self.model.append(fields)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def add_own_token(self, data):
        i = data.draw(st.integers(-len(self.model), len(self.model) - 1))
        self.batch.add(self.batch[i] if i % 2 else self.batch.get(i))
        self.model.append(self.model[i])

    @rule(fields=st.lists(FIELDS, max_size=6))
    def extend_with_tokens(self, fields):
        self.batch.extend([make_token(f) for f in fields])
        self.model.extend(fields)

    @rule(fields=st.lists(FIELDS, max_size=6))
    def extend_with_other_batch(self, fields):
        self.batch.extend(TokenBatch.from_tokens([make_token(f) for f in fields]))
        self.model.extend(fields)

    @precondition(lambda self: len(self.model) < 400)
    @rule(how=st.sampled_from(["batch", "tokens", "iterator", "copy"]))
    def extend_with_itself(self, how):
        source = {"batch": lambda: self.batch, "tokens": self.batch.tokens,
                  "iterator": lambda: iter(self.batch), "copy": lambda: self.batch[:]}[how]()
        self.batch.extend(source)
        self.model.extend(list(self.model))

    @rule()
    def clear(self):
        self.batch.clear()
        self.model.clear()

    @rule(value=st.none() | st.integers(0, 2**32 - 1))
    def set_sequence_id(self, value):
        self.batch.sequence_id = value
        self.sequence_id = value

    @rule(value=st.booleans())
    def set_is_final(self, value):
        self.batch.is_final = value
        self.is_final = value

    @rule(key=st.text(max_size=4), value=st.text(max_size=4))
    def set_metadata(self, key, value):
        self.batch.set_metadata(key, value)
        self.metadata[key] = value

    @rule(start=st.none() | st.integers(-30, 30), stop=st.none() | st.integers(-30, 30),
          step=st.none() | st.integers(-5, 5).filter(bool))
    def slice(self, start, stop, step):
        part = self.batch[start:stop:step]
        assert [self.fields_of(t) for t in part] == self.model[start:stop:step]
        assert part.sequence_id == self.sequence_id and part.metadata_dict() == self.metadata

    @rule(index=st.integers(-50, 50))
    def get(self, index):
        token = self.batch.get(index)
        expected = self.model[index] if -len(self.model) <= index < len(self.model) else None
        assert (token and self.fields_of(token)) == (expected and expected)

    @rule()
    def encode_and_decode(self):
        wire = self.batch.encode()
        assert wire == oracle_encode(self.model, self.sequence_id, self.is_final)
        assert len(wire) == self.batch.encoded_size()
        assert TokenBatch.decode(wire) == self.batch

    @rule()
    def pickle_round_trip(self):
        clone = pickle.loads(pickle.dumps(self.batch))
        assert clone == self.batch and clone.metadata_dict() == self.metadata

    @rule(target=pins)
    def pin(self):
        pin = pin_batch(self.batch)
        return pin, bytes(pin.column("text")), bytes(pin.column("ids")), list(self.model)

    @rule(pinned=pins)
    def pinned_storage_is_unchanged(self, pinned):
        pin, text, ids, model = pinned
        assert len(pin) == len(model) and bytes(pin.column("text")) == text
        assert bytes(pin.column("ids")) == ids == struct.pack(f"={len(model)}I", *[f[0] for f in model])

    @staticmethod
    def fields_of(token):
        return (token.id, token.position, token.text, token.logprob_bits, token.is_special)

    @invariant()
    def matches_the_model(self):
        STEPS["TokenBatch"] += 1
        assert len(self.batch) == len(self.model)
        assert self.batch.token_ids() == [f[0] for f in self.model]
        assert self.batch.texts() == [f[2] for f in self.model]
        assert self.batch.text_bytes() == "".join(f[2] or "" for f in self.model).encode()
        assert self.batch.sequence_id == self.sequence_id and self.batch.is_final == self.is_final
        assert self.batch.metadata_dict() == self.metadata


TestTokenBatch = TokenBatchMachine.TestCase
TestTokenBatch.settings = SETTINGS


class TokenBatchBuilderMachine(RuleBasedStateMachine):
    """TokenBatchBuilder against a list of pending tokens."""

    @initialize(max_size=st.integers(1, 6), sequence_id=st.none() | st.integers(0, 9))
    def start(self, max_size, sequence_id):
        self.builder = TokenBatchBuilder(max_size=max_size, sequence_id=sequence_id)
        self.max_size, self.sequence_id = max_size, sequence_id
        self.pending, self.closed = [], False

    def check_batch(self, batch, tokens, is_final):
        assert batch.tokens() == tokens and batch.sequence_id == self.sequence_id
        assert batch.is_final == is_final

    def closed_error(self, call):
        try:
            call()
        except RuntimeError as exc:
            assert "finish() was already called" in str(exc)
        else:
            raise AssertionError("a closed builder accepted a call")

    @rule(fields=FIELDS)
    def push(self, fields):
        token = make_token(fields)
        if self.closed:
            return self.closed_error(lambda: self.builder.push(token))
        batch = self.builder.push(token)
        self.pending.append(token)
        if len(self.pending) == self.max_size:
            self.check_batch(batch, self.pending, False)
            self.pending = []
        else:
            assert batch is None

    @rule()
    def flush(self):
        if self.closed:
            return self.closed_error(self.builder.flush)
        batch = self.builder.flush()
        if self.pending:
            self.check_batch(batch, self.pending, False)
        else:
            assert batch is None
        self.pending = []

    @rule()
    def finish(self):
        if self.closed:
            return self.closed_error(self.builder.finish)
        self.check_batch(self.builder.finish(), self.pending, True)
        self.pending, self.closed = [], True

    @invariant()
    def pending_count(self):
        STEPS["TokenBatchBuilder"] += 1
        if hasattr(self, "builder"):
            assert len(self.builder) == len(self.pending)


TestTokenBatchBuilder = TokenBatchBuilderMachine.TestCase
TestTokenBatchBuilder.settings = SETTINGS


# -- incremental parsers -----------------------------------------------------------------------
#
# A model turns a whole stream into (outputs, error): the outputs a parser hands out in order,
# and the (error type, offset) it raises at the latest by finish(), or None. The machine feeds
# the real parser arbitrary splits and checks that the outputs so far are a prefix of the
# model's, and at the end that they are all of them and that the same error was raised.

KNOWN_TYPES = (0x01, 0x02, 0x04, 0x08, 0x10, 0x11, 0x20)


class Stop(Exception):
    """Raised inside a model: the parser stops here with ``error``."""

    def __init__(self, error_type, offset):
        super().__init__(error_type, offset)
        self.error = (error_type, offset)


def model_tensor_frames(data, on_start, on_end):
    """Walk tensor frames (section 4): ``on_start(type, length, offset)`` validates a header,
    ``on_end(type, reserved, payload, offset)`` returns an output or None; both may raise Stop.
    Returns the outputs and the error; ``done`` in the state dict ends the stream."""
    outputs, pos, state = [], 0, {"done": False}
    try:
        while pos < len(data):
            if state["done"]:
                raise Stop(DecodeError, pos)
            if len(data) - pos < 9:
                raise Stop(IncompleteStreamError, pos)
            frame_type, length = data[pos], int.from_bytes(data[pos + 5:pos + 9], "big")
            if frame_type not in KNOWN_TYPES:
                raise Stop(DecodeError, pos)
            on_start(state, frame_type, length, pos)
            if len(data) - pos - 9 < length:
                raise Stop(IncompleteStreamError, pos)
            output = on_end(state, frame_type, data[pos + 1:pos + 5], data[pos + 9:pos + 9 + length], pos)
            if output is not None:
                outputs.append(output)
            pos += 9 + length
        if "done" in state and state.get("needs_end") and not state["done"]:
            raise Stop(IncompleteStreamError, len(data))
    except Stop as stop:
        return outputs, stop.error
    return outputs, None


def check_control(frame_type, length, offset):
    """END_STREAM and CANCEL headers in the two tensor-frame stream decoders."""
    if frame_type == 0x02 and length:
        raise Stop(DecodeError, offset)
    if frame_type == 0x04 and length > MAX_CANCEL_PAYLOAD:
        raise Stop(LimitExceededError, offset + 5)
    if frame_type not in (0x02, 0x04):
        raise Stop(DecodeError, offset)


def end_control(state, frame_type):
    if frame_type == 0x04:
        raise Stop(StreamCancelledError, None)
    state["done"] = True


def model_tensor_frame_parser(data, max_payload):
    def start(state, frame_type, length, offset):
        if length > max_payload:
            raise Stop(LimitExceededError, offset + 5)

    return model_tensor_frames(data, start, lambda state, t, r, payload, offset: (t, r, payload, offset))


def model_token_stream_decoder(data, max_payload):
    def start(state, frame_type, length, offset):
        state["needs_end"] = True
        if frame_type == 0x20:
            if length > max_payload:
                raise Stop(LimitExceededError, offset + 5)
        else:
            check_control(frame_type, length, offset)

    def end(state, frame_type, reserved, payload, offset):
        if frame_type != 0x20:
            return end_control(state, frame_type)
        try:
            return TokenBatch.decode(payload)
        except DecodeError as exc:
            raise Stop(type(exc), offset + 9 + exc.offset) from None

    outputs, error = model_tensor_frames(data, start, end)
    if error is None and not data:
        error = (IncompleteStreamError, 0)
    return outputs, error


def model_tensor_receiver(data, max_bytes):
    def start(state, frame_type, length, offset):
        state["needs_end"] = True
        if frame_type == 0x11:
            if "meta" not in state or length > state["meta"].size_bytes - len(state["bytes"]):
                raise Stop(DecodeError, offset)
        elif frame_type == 0x10:
            if "meta" in state:
                raise Stop(DecodeError, offset)
            if length > MAX_META_PAYLOAD:
                raise Stop(LimitExceededError, offset + 5)
        else:
            check_control(frame_type, length, offset)

    def end(state, frame_type, reserved, payload, offset):
        if frame_type == 0x11:
            state["bytes"] += payload
        elif frame_type == 0x10:
            try:
                state["meta"] = TensorMeta.decode(payload, max_bytes=max_bytes)
            except DecodeError as exc:
                raise Stop(type(exc), offset + 9 + (exc.offset or 0)) from None
            state["bytes"] = b""
        elif frame_type == 0x02:
            if "meta" not in state:
                raise Stop(DecodeError, offset)
            if len(state["bytes"]) != state["meta"].size_bytes:
                raise Stop(IncompleteStreamError, offset)
            end_control(state, frame_type)
            return Tensor(state["meta"], state["bytes"])
        else:
            end_control(state, frame_type)

    outputs, error = model_tensor_frames(data, start, end)
    if error is None and not data:
        error = (IncompleteStreamError, 0)
    return outputs, error


def model_stream_frames(data, max_size, on_frame=None):
    """Section 5 frames: varint length, flags, payload. ``on_frame(state, flags, payload, offset,
    payload_offset)`` interprets one (decoders); without it every frame is an output."""
    outputs, pos, state = [], 0, {"done": False}
    try:
        while pos < len(data):
            if state["done"]:
                raise Stop(DecodeError, pos)
            start, length = pos, 0
            for k in range(10):
                if pos == len(data):
                    raise Stop(IncompleteStreamError, start)
                byte = data[pos]
                pos += 1
                if k == 9 and (byte & 0x80 or byte > 1):
                    raise Stop(DecodeError, start)
                length |= (byte & 0x7F) << 7 * k
                if not byte & 0x80:
                    break
            if length > max_size:
                raise Stop(LimitExceededError, start)
            if pos == len(data) or len(data) - pos - 1 < length:
                raise Stop(IncompleteStreamError, start)
            flags, payload = data[pos], data[pos + 1:pos + 1 + length]
            pos += 1 + length
            output = (flags, payload, start) if on_frame is None else on_frame(state, flags, payload, pos - length)
            if output is not None:
                outputs.append(output)
        if on_frame is not None and not state["done"]:
            raise Stop(IncompleteStreamError, len(data))
    except Stop as stop:
        return outputs, stop.error
    return outputs, None


def model_varint(payload, base):
    """The credit varint of a CREDIT frame; Stop unless it is well formed and fills the payload."""
    for k in range(min(len(payload), 10)):
        if k == 9 and (payload[k] & 0x80 or payload[k] > 1):
            raise Stop(DecodeError, base)
        if not payload[k] & 0x80:
            if k + 1 != len(payload):
                raise Stop(DecodeError, base + k + 1)
            return
    raise Stop(DecodeError if len(payload) >= 10 else IncompleteStreamError, base)


def model_message_stream_decoder(data, max_size):
    def on_frame(state, flags, payload, payload_offset):
        if flags & 0x04:
            raise Stop(StreamCancelledError, None)
        output = None
        if flags & 0x01:
            output = payload
        elif flags & 0x08:
            model_varint(payload, payload_offset)
        if flags & 0x02:
            state["done"] = True
        return output

    return model_stream_frames(data, max_size, on_frame)


# Stream generators: frames built from parts, then maybe cut short or a few bytes changed.

SMALL = st.binary(max_size=40)


def tensor_frame(types=st.sampled_from(KNOWN_TYPES + (0x00, 0x03, 0xFF)), payloads=SMALL):
    return st.builds(lambda t, reserved, payload: bytes([t]) + reserved + len(payload).to_bytes(4, "big") + payload,
                     types, st.sampled_from([b"\0\0\0\0", b"ab\0z"]), payloads)


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


STREAM_FRAME = st.builds(lambda flags, payload: varint(len(payload)) + bytes([flags]) + payload,
                         st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0x08, 0x09, 0x10, 0x81]),
                         SMALL | st.integers(0, 2**40).map(varint))
TOKEN_BATCH_FRAME = st.lists(FIELDS, max_size=4).map(
    lambda fields: b"\x20\0\0\0\0" + (lambda wire: len(wire).to_bytes(4, "big") + wire)(
        oracle_encode(fields, None, False)))
TENSOR = st.builds(lambda shape, dtype: np.zeros(shape, dtype), st.lists(st.integers(0, 4), max_size=3),
                   st.sampled_from([np.uint8, np.float32, np.int64]))


def tensor_stream(array, split):
    meta = Tensor.from_numpy(array).meta.encode()
    data = array.tobytes()
    out = b"\x10\0\0\0\0" + len(meta).to_bytes(4, "big") + meta
    for i in range(0, len(data), split):
        out += b"\x11\0\0\0\0" + len(data[i:i + split]).to_bytes(4, "big") + data[i:i + split]
    return out + b"\x02" + bytes(8)


def damaged(streams):
    """A stream as built, cut short, with a byte changed, or with bytes appended."""
    @st.composite
    def build(draw):
        data = draw(streams)
        how = draw(st.sampled_from(["as built", "as built", "cut", "change", "append"]))
        if how == "cut" and data:
            return data[:draw(st.integers(0, len(data) - 1))]
        if how == "change" and data:
            at = draw(st.integers(0, len(data) - 1))
            return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
        if how == "append":
            return data + draw(st.binary(min_size=1, max_size=12))
        return data
    return build()


END = b"\x02" + bytes(8)
PARSERS = {
    "TensorFrameParser": (lambda: TensorFrameParser(max_payload=32), lambda d: model_tensor_frame_parser(d, 32),
                          damaged(st.lists(tensor_frame(), max_size=5).map(b"".join))),
    "TokenStreamDecoder": (lambda: TokenStreamDecoder(max_payload=200), lambda d: model_token_stream_decoder(d, 200),
                           damaged(st.lists(TOKEN_BATCH_FRAME | tensor_frame(), max_size=4)
                                   .map(lambda frames: b"".join(frames) + END))),
    "TensorReceiver": (lambda: TensorReceiver(max_bytes=400), lambda d: model_tensor_receiver(d, 400),
                       damaged(st.builds(tensor_stream, TENSOR, st.integers(1, 50)))),
    "StreamFrameParser": (lambda: StreamFrameParser(max_frame_size=30), lambda d: model_stream_frames(d, 30),
                          damaged(st.lists(STREAM_FRAME, max_size=6).map(b"".join))),
    "MessageStreamDecoder": (lambda: MessageStreamDecoder(max_frame_size=30),
                             lambda d: model_message_stream_decoder(d, 30),
                             damaged(st.lists(STREAM_FRAME, max_size=6).map(lambda f: b"".join(f) + b"\x00\x02"))),
}


def comparable(output):
    """An output of a parser or a model, as plain values."""
    if isinstance(output, TokenBatch):
        return ("batch", output.encode())
    if isinstance(output, Tensor):
        return ("tensor", output.meta.encode(), bytes(output.data))
    if isinstance(output, tuple):
        return output
    if isinstance(output, bytes):
        return output
    if hasattr(output, "type"):        # TensorFrame
        return (output.type, output.reserved, output.payload, output.offset)
    return (output.flags, output.payload, output.offset)   # StreamFrame


def parser_machine(make_parser, model, streams):
    class ParserMachine(RuleBasedStateMachine):
        @initialize(data=streams)
        def start(self, data):
            self.parser, self.data, self.fed = make_parser(), data, 0
            outputs, self.expected_error = model(data)
            self.expected = [comparable(o) for o in outputs]
            self.outputs, self.error = [], None

        def call(self, method, *args):
            try:
                result = method(*args)
            except (DecodeError, StreamCancelledError) as exc:
                seen = (type(exc), getattr(exc, "offset", None))
                assert self.error in (None, seen), (self.error, seen)   # sticky: the same error again
                self.error = seen
                return
            assert self.error is None, "a call succeeded after an error"
            if isinstance(result, list):
                self.outputs.extend(comparable(o) for o in result)
            elif result is not None:
                self.outputs.append(comparable(result))

        @rule(size=st.integers(0, 70))
        def feed(self, size):   # once everything is fed, this feeds empty chunks
            chunk = self.data[self.fed:self.fed + size]
            self.fed += len(chunk)
            self.call(self.parser.feed, memoryview(chunk) if size % 2 else chunk)

        @rule(size=st.integers(0, 70), abandon=st.booleans())
        def fill_window(self, size, abandon):
            """Write the next bytes into the payload window on offer (if any) and commit them; or
            take a window and leave it (the next feed abandons it)."""
            window = self.parser.payload_window(1)
            if window is None or abandon:
                return
            chunk = self.data[self.fed:self.fed + min(size, len(window))]
            memoryview(window)[:len(chunk)] = chunk
            self.fed += len(chunk)
            self.call(self.parser.commit, window, len(chunk))

        @invariant()
        def outputs_are_a_prefix(self):
            STEPS[type(self.parser).__name__] += 1
            assert self.outputs == self.expected[:len(self.outputs)]

        def teardown(self):
            if not hasattr(self, "parser"):
                return
            self.call(self.parser.feed, self.data[self.fed:])
            self.call(self.parser.finish)
            assert self.outputs == self.expected
            assert self.error == self.expected_error
            done = self.expected_error is None and not isinstance(self.parser, (TensorFrameParser, StreamFrameParser))
            assert self.parser.done == done

    ParserMachine.TestCase.settings = SETTINGS
    return ParserMachine.TestCase


for _name, (_make, _model, _streams) in PARSERS.items():
    globals()[f"Test{_name}"] = parser_machine(_make, _model, _streams)
