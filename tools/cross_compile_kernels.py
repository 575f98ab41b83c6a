"""Compile and link quill's C kernels for Windows and macOS from Linux, to prove their guards.

The headers under quill/_core/ (the cast kernels and their x86 dispatch, the token and DLPack helpers)
hold every platform-dependent line of the compiled modules: ``__builtin_cpu_supports``,
``mincore``, ``<immintrin.h>``, ``__attribute__``. Each target below builds one translation unit
that includes all three and calls every dispatch entry point, into a shared library, so that a
missing guard fails to compile or leaves an undefined symbol at link time:

* x86_64-windows-gnu with mingw-w64's gcc and with ``zig cc`` (the AVX2/AVX-512 paths, dispatched
  by libgcc's / compiler-rt's CPU model);
* x86_64-windows with the compiler's GNU identity removed (``-U__GNUC__ -D_MSC_VER``): the
  preprocessor path MSVC takes (portable kernels only, ``__forceinline``), checked by clang;
  MSVC itself only runs in .github/workflows/wheels.yml;
* aarch64-macos and x86_64-macos with ``zig cc`` (Apple's clang is not available here).

    python tools/cross_compile_kernels.py

Needs the ziglang wheel (``pip install ziglang``) and, for the first target, Debian's mingw-w64.
"""

import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = r"""
#include "casts_kernels.h"
#include "tokens_wire.h"
#include "tensor_dlpack.h"

#if QUILL_X86_DISPATCH != EXPECT_X86_DISPATCH
#error "the x86 dispatch (AVX2/AVX-512 paths) is not what this target should get"
#endif

/* Every path the dispatcher knows, every kind, contiguous and strided. */
int quill_kernel_smoke(char *dst, const char *src, size_t n)
{
    int available = 0;
    for (int path = 0; path < QUILL_CAST_PATHS; path++) {
        for (int kind = 0; kind < QUILL_CAST_KINDS; kind++) {
            if (quill_get_kernel(kind, path) != NULL) {
                available++;
                quill_cast_contiguous(kind, path, src, dst, n, 1);
            }
        }
    }
    ptrdiff_t shape[2] = {2, (ptrdiff_t)n / 2}, strides[2] = {4, 8};
    quill_cast_strided(quill_get_kernel(QUILL_F32_TO_F16, QUILL_PATH_PORTABLE), src, 2, shape,
                       strides, 4, dst, 2);
    quill_prefetch(src);
    return available;
}
"""
ZIG = [sys.executable, "-m", "ziglang", "cc"]
TARGETS = {
    "x86_64-windows-gnu (mingw-w64 gcc)": ["x86_64-w64-mingw32-gcc", "-DEXPECT_X86_DISPATCH=1"],
    "x86_64-windows-gnu (zig cc)": ZIG + ["-target", "x86_64-windows-gnu", "-DEXPECT_X86_DISPATCH=1"],
    "x86_64-windows, MSVC's preprocessor path (zig cc)": ZIG + [
        "-target", "x86_64-windows-gnu", "-U__GNUC__", "-D_MSC_VER=1940", "-fms-extensions",
        "-Wno-builtin-macro-redefined", "-DEXPECT_X86_DISPATCH=0"],
    "aarch64-macos (zig cc)": ZIG + ["-target", "aarch64-macos", "-DEXPECT_X86_DISPATCH=0"],
    "x86_64-macos (zig cc)": ZIG + ["-target", "x86_64-macos", "-DEXPECT_X86_DISPATCH=1"],
}
# setup.py's flags, plus warnings as errors
FLAGS = ["-O3", "-fno-strict-aliasing", "-Wall", "-Werror", "-Wno-unused-function", "-shared", "-fPIC"]


def main():
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        source = pathlib.Path(tmp) / "kernels.c"
        source.write_text(SOURCE)
        for name, compiler in TARGETS.items():
            if shutil.which(compiler[0]) is None:
                print(f"-- {name}: {compiler[0]} not installed")
                failures += 1
                continue
            output = pathlib.Path(tmp) / "kernels.out"
            done = subprocess.run([*compiler, *FLAGS, f"-I{REPO / 'quill' / '_core'}", "-o", str(output), str(source)],
                                  capture_output=True, text=True)
            print(f"{'ok' if done.returncode == 0 else 'FAILED'} {name}")
            if done.returncode != 0:
                print(done.stdout + done.stderr)
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
