"""Replay fuzz corpora through their targets without libFuzzer, and look for leaks.

Used for the sanitizer runs in docs/bad-inputs.md: libFuzzer is not needed (nor wanted
next to a preloaded AddressSanitizer runtime) to run a saved corpus, so this imports
``tests/fuzz/fuzz_<name>.py`` and calls its ``TestOneInput`` on every file. With
``--passes N`` (N >= 3) the corpus is replayed N times and the Python heap (tracemalloc)
must not grow after the first two (warm-up) passes: a reference leaked per call in the
compiled code would show as growth proportional to the passes.

    python tools/fuzz_replay.py tests/fuzz/fuzz_token.py CORPUS_DIR [CORPUS_DIR ...] --passes 5

Exit status 1 on any failure (an exception out of TestOneInput, or heap growth).
"""

import argparse
import gc
import importlib.util
import pathlib
import sys
import tracemalloc

LEAK_TOLERANCE_BYTES = 64 * 1024


def load_target(path):
    path = pathlib.Path(path).resolve()
    sys.path.insert(0, str(path.parent))   # the targets import harness.py from their directory
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TestOneInput


def corpus_inputs(dirs):
    return [p.read_bytes() for d in dirs for p in sorted(pathlib.Path(d).iterdir()) if p.is_file()]


def replay(test_one_input, inputs):
    for data in inputs:
        test_one_input(data)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("corpus", nargs="+")
    parser.add_argument("--passes", type=int, default=1)
    args = parser.parse_args(argv)
    tracemalloc.start()
    test_one_input = load_target(args.target)
    inputs = corpus_inputs(args.corpus)
    warm_up = min(2, args.passes)
    for _ in range(warm_up):
        replay(test_one_input, inputs)
    gc.collect()
    after_warm_up, _ = tracemalloc.get_traced_memory()
    for _ in range(args.passes - warm_up):
        replay(test_one_input, inputs)
    gc.collect()
    after_last, _ = tracemalloc.get_traced_memory()
    growth = after_last - after_warm_up
    print(f"{pathlib.Path(args.target).stem}: {len(inputs)} inputs x {args.passes} passes, "
          f"heap growth after {warm_up} warm-up passes: {growth} bytes")
    if args.passes >= 3 and growth > LEAK_TOLERANCE_BYTES:
        print(f"heap grew by {growth} bytes over {args.passes - warm_up} passes: a leak", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
