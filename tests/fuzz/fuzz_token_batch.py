"""atheris fuzz target for TokenBatch.decode (quill._core.tokens).

The first byte of each input picks a mode:
  * raw: the rest of the input is fed to TokenBatch.decode;
  * built: tokens are built from the input, encoded, then decoded whole, truncated at a random
    point, and with a random byte flipped.
Invariants (see harness.py): the only error a decoder raises is DecodeError, with an offset inside the input;
whatever decodes re-encodes (EncodeError only for a text that U+FFFD replacement grew past
65,535 bytes) and decodes back equal; the columns agree with the Token objects; the heap stays
within budget.

    python tests/fuzz/fuzz_token_batch.py -max_total_time=60 -rss_limit_mb=2048
"""

import atheris

import harness
from fuzz_token import check_token

with atheris.instrument_imports(include=["quill"]):
    from quill._core.tokens import Token, TokenBatch
    from quill.errors import DecodeError, EncodeError


@atheris.instrument_func
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


@atheris.instrument_func
def fuzz_raw(data):
    try:
        check_batch(TokenBatch.decode(data))
    except DecodeError as exc:
        harness.check_decode_error(exc, len(data))


@atheris.instrument_func
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
            harness.check_decode_error(exc, cut)
        else:
            raise AssertionError(f"a batch truncated to {cut} of {len(wire)} bytes decoded")
    flipped = bytearray(wire)
    flipped[fdp.ConsumeIntInRange(0, len(wire) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
    fuzz_raw(bytes(flipped))


TestOneInput = harness.raw_or_built(fuzz_raw, fuzz_built)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
