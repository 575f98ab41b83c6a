"""TokenBatch -> pyarrow.Table through the Arrow PyCapsule Interface, against the usual way
(building the table from Python lists).

Workload (issue 13): one TokenBatch of 3.2 M tokens (``--tokens``), each with a 3-8 letter
ASCII text, a logprob (every tenth token has none), a sequential position and a random id below
50,000; every 100th token is special. Rows:
  * quill: ``pyarrow.table(batch)``. ids, positions, logprob values, text offsets and text bytes
    are the batch's own memory (no copy); only three bitmaps are built (logprob and text
    validity, is_special), so the time grows with the token count by those bitmaps alone. The
    same export at 1/100 and 1/10 of the tokens shows it.
  * peer "lists -> table": ``pyarrow.table`` from five Python lists already built (the cheapest
    form of the usual way: the lists are free).
  * peer "batch -> lists -> table": the usual way in full, from the batch's Token objects.
  * the way back: ``TokenBatch.from_arrow(table)`` (a copy into the batch's storage) against
    ``TokenBatch.from_tokens`` over Token objects built from the table's Python lists.
Each time is the median of ``--runs`` runs (wall clock, garbage collector paused); short
operations repeat inside a run until it lasts 0.2 s.

    python benchmarks/bench_arrow.py [--tokens 3200000] [--runs 5]
"""

import argparse
import gc
import random
import statistics
import string
import time

import pyarrow as pa

from quill import Token, TokenBatch

SCHEMA = pa.schema([("id", pa.uint32(), False), ("position", pa.uint32(), False), ("logprob", pa.float32()),
                    ("text", pa.large_utf8()), ("is_special", pa.bool_(), False)])


def make_batch(count, seed=1234):
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    tokens = [Token(rng.randrange(50_000), i, "".join(rng.choices(letters, k=rng.randint(3, 8))),
                    None if i % 10 == 9 else -rng.random() * 10, i % 100 == 99) for i in range(count)]
    return TokenBatch.from_tokens(tokens, sequence_id=1)


def as_lists(batch):
    """The usual way's first half: five Python lists from the batch's tokens."""
    tokens = batch.tokens()
    return {"id": [t.id for t in tokens], "position": [t.position for t in tokens],
            "logprob": [t.logprob for t in tokens], "text": [t.text for t in tokens],
            "is_special": [t.is_special for t in tokens]}


def measure(fn, runs, min_seconds=0.2):
    """Median seconds per call of ``fn`` over ``runs`` runs."""
    times = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            calls, start = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
        finally:
            gc.enable()
        times.append(elapsed / calls)
    return statistics.median(times)


def seconds(value):
    return f"{value * 1e3:.3f} ms" if value < 1 else f"{value:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=3_200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n = args.tokens

    batch = make_batch(n)
    lists = as_lists(batch)
    table = pa.table(batch)
    assert table.equals(pa.table(lists, schema=SCHEMA)), "the export and the peer's table differ"
    assert TokenBatch.from_arrow(table) == batch

    small = {size: batch[:size] for size in (n // 100, n // 10)}
    export = {size: measure(lambda b=b: pa.table(b), args.runs) for size, b in small.items()}
    export[n] = measure(lambda: pa.table(batch), args.runs)
    from_lists = measure(lambda: pa.table(lists, schema=SCHEMA), args.runs)
    full_usual = measure(lambda: pa.table(as_lists(batch), schema=SCHEMA), args.runs)
    import_quill = measure(lambda: TokenBatch.from_arrow(table), args.runs)
    import_usual = measure(lambda: TokenBatch.from_tokens(
        [Token(i, p, t, lp, s) for i, p, lp, t, s in zip(*table.to_pydict().values())], sequence_id=1), args.runs)

    print(f"\nTokenBatch of {n:,} tokens, median of {args.runs} runs (pyarrow {pa.__version__})\n")
    print("| workload | quill | quill time | peer | peer time | ratio |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    rows = [
        ("batch -> pyarrow.Table", "pa.table(batch)", export[n], "pa.table(lists) (lists prebuilt)", from_lists),
        ("batch -> pyarrow.Table", "pa.table(batch)", export[n], "batch -> lists -> pa.table", full_usual),
        ("pyarrow.Table -> batch", "TokenBatch.from_arrow", import_quill, "table -> Tokens -> from_tokens", import_usual),
    ]
    for workload, ours, our_time, peer, peer_time in rows:
        print(f"| {workload} | {ours} | {seconds(our_time)} | {peer} | {seconds(peer_time)} | "
              f"{peer_time / our_time:,.0f}x |")
    print("\nExport time by token count (only the three bitmaps grow with it):\n")
    print("| tokens | pa.table(batch) | per token |")
    print("| ---: | ---: | ---: |")
    for size in sorted(export):
        print(f"| {size:,} | {seconds(export[size])} | {export[size] / size * 1e9:.2f} ns |")


if __name__ == "__main__":
    main()
