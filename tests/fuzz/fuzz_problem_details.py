"""atheris fuzz target for Problem Details parsing (quill.errors.ProblemDetails.from_json).

The first byte of each input picks a mode:
  * raw: the rest is parsed as an application/problem+json body (bytes, and str when it is UTF-8);
  * built: a JSON object is assembled from the input, with the required members present,
    missing or of the wrong type, random extension members and nesting, then parsed.
Invariants (see harness.py): only DecodeError; a parsed problem has an int status and str
type and title; it serialises with to_json and parses back to the same JSON; proto_detail
is bytes, None or a DecodeError; the heap stays within budget.

    python tests/fuzz/fuzz_problem_details.py -max_total_time=60 -rss_limit_mb=2048
"""

import json

import atheris

import harness

with atheris.instrument_imports(include=["quill"]):
    from quill.errors import ProblemDetails

MEMBERS = ["type", "title", "status", "detail", "instance", "trace_id", "quill_proto_type",
           "quill_proto_detail_base64", "x"]


@atheris.instrument_func
def json_value(fdp, depth=0):
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 3 else 4)
    if kind == 0:
        return fdp.ConsumeIntInRange(-2**70, 2**70)
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20))
    if kind == 2:
        return fdp.ConsumeBool()
    if kind == 3:
        return None
    if kind == 4:
        return fdp.ConsumeRegularFloat()
    if kind == 5:
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 6:
        return "[" * fdp.ConsumeIntInRange(0, 3000)   # becomes deep nesting once spliced raw below
    return {fdp.PickValueInList(MEMBERS): json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


@atheris.instrument_func
def built_body(fdp):
    obj = {}
    for _ in range(fdp.ConsumeIntInRange(0, 10)):
        obj[fdp.PickValueInList(MEMBERS)] = json_value(fdp)
    if fdp.ConsumeBool():
        obj.update(type="about:blank", title=fdp.ConsumeUnicodeNoSurrogates(10),
                   status=fdp.ConsumeIntInRange(100, 599))
    if fdp.ConsumeBool():
        obj["quill_proto_detail_base64"] = fdp.ConsumeUnicodeNoSurrogates(12)
    body = json.dumps(obj)
    if fdp.ConsumeBool():   # splice raw text in: unbalanced or deep brackets, stray bytes
        at = fdp.ConsumeIntInRange(0, len(body))
        body = body[:at] + fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64)) + body[at:]
    return body.encode("utf-8", "surrogatepass")


@atheris.instrument_func
def check_body(body):
    try:
        problem = ProblemDetails.from_json(body)
    except harness.DecodeError:
        return
    if not isinstance(problem.status, int) or not isinstance(problem.title, str) or not isinstance(problem.type, str):
        raise AssertionError(f"{problem!r} has a status, title or type of the wrong type")
    wire = problem.to_json()
    if ProblemDetails.from_json(wire).to_json() != wire:
        raise AssertionError(f"{problem!r} does not round trip through to_json")
    try:
        detail = problem.proto_detail
    except harness.DecodeError:
        return
    if detail is not None and not isinstance(detail, bytes):
        raise AssertionError(f"proto_detail is a {type(detail).__name__}")


def TestOneInput(data):
    if not data:
        return
    with harness.MemoryWatch(harness.memory_budget(len(data))):
        if data[0] & 1:
            body = data[1:]
            check_body(body)
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                return
            check_body(text)
        else:
            check_body(built_body(atheris.FuzzedDataProvider(data[1:])))


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
