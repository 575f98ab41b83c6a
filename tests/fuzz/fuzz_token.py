"""atheris fuzz target for Token.decode and Token.decode_prefix (quill._core.tokens).

The first byte of each input picks a mode:
  * raw: the rest is fed to Token.decode and Token.decode_prefix;
  * built: a token is built from the input, encoded, decoded back, then decoded truncated
    at a random point, with a random byte flipped, and with bytes appended.
Invariants (see harness.py): only DecodeError, with an offset inside the input; whatever
decodes re-encodes and decodes back equal; decode_prefix consumes between 9 bytes and the
input length and agrees with decode; the heap stays within budget.

    python tests/fuzz/fuzz_token.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill._core.tokens import Token


@atheris.instrument_func
def check_token(token):
    wire = token.encode()
    again = Token.decode(wire)
    if again != token or again.encode() != wire:
        raise AssertionError(f"{token!r} does not round trip")


@atheris.instrument_func
def fuzz_raw(data):
    try:
        check_token(Token.decode(data))
    except harness.DecodeError as exc:
        harness.check_decode_error(exc, len(data))
    try:
        token, consumed = Token.decode_prefix(data)
    except harness.DecodeError as exc:
        harness.check_decode_error(exc, len(data))
    else:
        if not 9 <= consumed <= len(data):
            raise AssertionError(f"decode_prefix consumed {consumed} of {len(data)} bytes")
        check_token(token)
        if Token.decode(data[:consumed]) != token:
            raise AssertionError("decode and decode_prefix disagree")


@atheris.instrument_func
def fuzz_built(fdp):
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)) if fdp.ConsumeBool() else None
    logprob = fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else None
    token = Token(fdp.ConsumeIntInRange(0, 2**32 - 1), fdp.ConsumeIntInRange(0, 2**32 - 1),
                  text, logprob, fdp.ConsumeBool())
    check_token(token)
    wire = token.encode()
    cut = fdp.ConsumeIntInRange(0, len(wire) - 1)
    try:
        Token.decode(wire[:cut])
    except harness.DecodeError as exc:
        harness.check_decode_error(exc, cut)
    else:
        raise AssertionError(f"a token truncated to {cut} of {len(wire)} bytes decoded")
    if Token.decode_prefix(wire + fdp.ConsumeBytes(8)) != (token, len(wire)):
        raise AssertionError("decode_prefix did not stop at the end of the token")
    flipped = bytearray(wire)
    flipped[fdp.ConsumeIntInRange(0, len(wire) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
    fuzz_raw(bytes(flipped))


TestOneInput = harness.raw_or_built(fuzz_raw, fuzz_built)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
