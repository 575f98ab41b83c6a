"""atheris fuzz target for Token.decode and TokenBatch.decode (quill._tokens).

The first byte of each input picks a mode:
  * raw: the rest of the input is fed to Token.decode, Token.decode_prefix and TokenBatch.decode;
  * built: tokens are built from the input, encoded, then decoded whole, truncated at a random
    point, and with a random byte flipped.
Invariants: the only error a decoder raises is DecodeError, with an offset inside the input;
whatever decodes re-encodes (EncodeError only for a text that U+FFFD replacement grew past
65,535 bytes) and decodes back equal; the columns agree with the Token objects. Anything else
raises out of TestOneInput and libFuzzer reports a crash.

    python tests/fuzz/fuzz_tokens.py -max_total_time=60 -rss_limit_mb=2048
"""

import sys

import atheris

with atheris.instrument_imports():
    from quill._tokens import Token, TokenBatch
    from quill.errors import DecodeError, EncodeError


def check_decode_error(exc, data):
    if exc.offset is None or not 0 <= exc.offset <= len(data):
        raise AssertionError(f"DecodeError offset {exc.offset} outside the {len(data)}-byte input: {exc}")


def check_batch(batch):
    """Columns agree with the Token objects, and encode/decode round trips."""
    tokens = batch.tokens()
    if batch.ids_array().tolist() != [t.id for t in tokens]:
        raise AssertionError("ids_array disagrees with the tokens")
    if batch.positions() != [t.position for t in tokens] or batch.texts() != [t.text for t in tokens]:
        raise AssertionError("positions/texts disagree with the tokens")
    if batch.has_logprob_array().tolist() != [t.logprob is not None for t in tokens]:
        raise AssertionError("has_logprob_array disagrees with the tokens")
    if batch.text() != "".join(t.text or "" for t in tokens):
        raise AssertionError("text() is not the concatenated token texts")
    try:
        wire = batch.encode()
    except EncodeError:
        if all(t.text is None or len(t.text.encode()) <= 65535 for t in tokens):
            raise
        return
    if len(wire) != batch.encoded_size():
        raise AssertionError("encoded_size() differs from len(encode())")
    again = TokenBatch.decode(wire)
    if again != batch or again.encode() != wire:
        raise AssertionError("batch does not round trip")
    rebuilt = TokenBatch.from_tokens(tokens, batch.sequence_id)
    rebuilt.is_final = batch.is_final
    if rebuilt != batch:
        raise AssertionError("a batch rebuilt from its tokens differs")


def check_token(token):
    wire = token.encode()
    if Token.decode(wire) != token or Token.decode(wire).encode() != wire:
        raise AssertionError(f"{token!r} does not round trip")


def fuzz_raw(data):
    try:
        check_batch(TokenBatch.decode(data))
    except DecodeError as exc:
        check_decode_error(exc, data)
    try:
        token, consumed = Token.decode_prefix(data)
    except DecodeError as exc:
        check_decode_error(exc, data)
    else:
        if not 9 <= consumed <= len(data):
            raise AssertionError(f"decode_prefix consumed {consumed} of {len(data)} bytes")
        check_token(token)
        if consumed == len(data) and Token.decode(data) != token:
            raise AssertionError("decode and decode_prefix disagree")


def fuzz_built(fdp):
    tokens = []
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12)) if fdp.ConsumeBool() else None
        logprob = fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else None
        tokens.append(Token(fdp.ConsumeIntInRange(0, 2**32 - 1), fdp.ConsumeIntInRange(0, 2**32 - 1),
                            text, logprob, fdp.ConsumeBool()))
    batch = TokenBatch.from_tokens(tokens, fdp.ConsumeIntInRange(0, 2**32 - 1) if fdp.ConsumeBool() else None)
    batch.is_final = fdp.ConsumeBool()
    wire = batch.encode()
    decoded = TokenBatch.decode(wire)
    if decoded != batch or decoded.tokens() != tokens:
        raise AssertionError("built batch does not round trip")
    for token in tokens:
        check_token(token)
    cut = fdp.ConsumeIntInRange(0, len(wire))
    if cut < len(wire):
        try:
            TokenBatch.decode(wire[:cut])
        except DecodeError as exc:
            check_decode_error(exc, wire[:cut])
        else:
            raise AssertionError(f"a batch truncated to {cut} of {len(wire)} bytes decoded")
    flipped = bytearray(wire)
    flipped[fdp.ConsumeIntInRange(0, len(wire) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
    fuzz_raw(bytes(flipped))


def TestOneInput(data: bytes):
    if not data:
        return
    if data[0] & 1:
        fuzz_raw(data[1:])
    else:
        fuzz_built(atheris.FuzzedDataProvider(data[1:]))


def main():
    # The compiled decoders give libFuzzer no coverage; instrumenting this harness's Python
    # code (mode, error and round-trip branches) at least steers it between the paths.
    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
