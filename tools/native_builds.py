"""Instrumented builds of the compiled modules, in a separate copy of the package (never in place).

Two kinds (how docs/bad-inputs.md got its sanitizer and C-coverage figures):

* ``asan``: every ``quill/_core/*.pyx`` built by gcc with ``-fsanitize=address,undefined``. Python itself
  is not instrumented, so the sanitizer runtimes are preloaded and leak detection is left to
  tools/fuzz_replay.py (LeakSanitizer would report CPython's own allocations at exit).
* ``tsan``: every ``quill/_core/*.pyx`` built by gcc with ``-fsanitize=thread``, libtsan preloaded into
  the uninstrumented Python. TSan sees the GIL's pthread locks (intercepted), so it reports races
  between the extensions' own accesses on different threads, not those inside CPython.
* ``cov``: the decoders (frames, tokens, tensor) built by clang with
  ``-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp``, so libFuzzer is guided by the
  branches of the C that Cython generated, not only by the Python harness. atheris's own libFuzzer
  is loaded too late for the extension's coverage callbacks to resolve, so clang's
  ``libclang_rt.fuzzer_no_main`` is linked into a shared library and loaded RTLD_GLOBAL first
  (atheris then reports "Using preloaded libfuzzer"). Needs clang (apt-get install clang).

    python tools/native_builds.py build asan /tmp/quill-asan
    python tools/native_builds.py run asan /tmp/quill-asan python -m pytest tests/test_frames.py
    python tools/native_builds.py build tsan /tmp/quill-tsan
    python tools/native_builds.py run tsan /tmp/quill-tsan python -m pytest tests/test_threads.py
    python tools/native_builds.py build cov /tmp/quill-cov
    python tools/native_builds.py run cov /tmp/quill-cov tests/fuzz/fuzz_token.py -max_total_time=600
"""

import glob
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
COVERED_MODULES = ["frames", "tokens", "tensor"]
SANCOV_FLAGS = "-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp"
ASAN_FLAGS = "-fsanitize=address,undefined -fno-omit-frame-pointer -g"
TSAN_FLAGS = "-fsanitize=thread -fno-omit-frame-pointer -g"
# The sanitizer runtimes each kind preloads, and their options.
RUNTIMES = {
    "asan": (("libasan.so", "libubsan.so"),
             {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}),
    "tsan": (("libtsan.so",), {"TSAN_OPTIONS": "halt_on_error=0 report_signal_unsafe=0"}),
}
FUZZER_LIBRARY = "libfuzzer_no_main.so"


def copy_package(dest):
    shutil.rmtree(dest / "quill", ignore_errors=True)
    shutil.copytree(REPO / "quill", dest / "quill",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    shutil.copy(REPO / "setup.py", dest / "setup.py")


def build_extensions(dest, modules, env):
    """Compile ``quill/_core/<module>.pyx`` in ``dest`` in place, with setup.py's flags plus ``env``'s."""
    script = (
        "import sys, numpy; from Cython.Build import cythonize; from setuptools import Extension, setup; "
        "sys.path.insert(0, '.'); "
        "exts = [Extension('quill._core.' + m, ['quill/_core/' + m + '.pyx'], include_dirs=[numpy.get_include(), 'quill/_core'], "
        "define_macros=[('NPY_NO_DEPRECATED_API', 'NPY_1_7_API_VERSION')], "
        "extra_compile_args=['-O3', '-fno-strict-aliasing', '-Wno-unreachable-code']) for m in sys.argv[1:]]; "
        "setup(name='quill-instrumented', script_args=['build_ext', '--inplace', '--build-temp', 'build-temp'], "
        "ext_modules=cythonize(exts, language_level=3, quiet=True, compiler_directives={"
        "'boundscheck': False, 'wraparound': False, 'cdivision': True, 'initializedcheck': False}))"
    )
    subprocess.run([sys.executable, "-c", script, *modules], cwd=dest, env=dict(os.environ, **env), check=True)


def clang(suffix=""):
    """``clang`` (or ``clang++``), or the newest versioned one (Debian's clang-14 package has no plain name)."""
    found = shutil.which("clang" + suffix) or max(glob.glob(f"/usr/bin/clang{suffix}-[0-9]*"), default=None)
    if found is None:
        raise SystemExit("clang not found: apt-get install clang")
    return found


def clang_runtime(name):
    found = sorted(glob.glob(f"/usr/lib/llvm-*/lib/clang/*/lib/linux/{name}"))
    if not found:
        raise SystemExit(f"{name} not found: install clang (apt-get install clang)")
    return found[-1]


def build(kind, dest):
    dest.mkdir(parents=True, exist_ok=True)
    copy_package(dest)
    modules = [pathlib.Path(p).stem for p in sorted(glob.glob(str(REPO / "quill" / "_core" / "*.pyx")))]
    if kind in RUNTIMES:
        flags = ASAN_FLAGS if kind == "asan" else TSAN_FLAGS
        build_extensions(dest, modules, {"CC": "gcc", "CFLAGS": flags, "LDFLAGS": flags})
        return
    for module in set(modules) - set(COVERED_MODULES):   # imported by quill/__init__, not fuzzed
        for built in glob.glob(str(REPO / "quill" / "_core" / f"{module}.*.so")):
            shutil.copy(built, dest / "quill" / "_core")
    build_extensions(dest, COVERED_MODULES,
                     {"CC": clang(), "LDSHARED": f"{clang()} -shared", "CFLAGS": f"{SANCOV_FLAGS} -g"})
    subprocess.run([clang("++"), "-shared", "-fPIC", "-o", str(dest / FUZZER_LIBRARY), "-Wl,--whole-archive",
                    clang_runtime("libclang_rt.fuzzer_no_main-x86_64.a"), "-Wl,--no-whole-archive", "-lpthread"],
                   check=True)


def run(kind, dest, command):
    # PYTHONSAFEPATH: `python -m pytest` from the checkout would otherwise put the checkout first on
    # sys.path and test its ordinary build instead of the instrumented copy in ``dest``.
    env = dict(os.environ, PYTHONPATH=str(dest), PYTHONHASHSEED="0", PYTHONSAFEPATH="1")
    if kind in RUNTIMES:
        libraries, options = RUNTIMES[kind]
        preload = [subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True,
                                  check=True).stdout.strip() for lib in libraries]
        env.update(options, LD_PRELOAD=":".join(preload))
        return subprocess.run(command, env=env).returncode
    target, *fuzzer_args = command
    launcher = ("import ctypes, os, runpy, sys; "
                f"ctypes.CDLL({str(dest / FUZZER_LIBRARY)!r}, mode=os.RTLD_NOW | os.RTLD_GLOBAL); "
                "sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0]))); "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-c", launcher, target, *fuzzer_args], env=env).returncode


def main(argv):
    if len(argv) < 3 or argv[0] not in ("build", "run") or argv[1] not in ("asan", "tsan", "cov"):
        print(__doc__, file=sys.stderr)
        return 2
    action, kind, dest = argv[0], argv[1], pathlib.Path(argv[2]).resolve()
    if action == "build":
        build(kind, dest)
        return 0
    return run(kind, dest, argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
