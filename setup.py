"""Build the compiled core: every ``quill/_core/*.pyx`` is a Cython extension, ``quill._core.<name>``.

Project metadata lives in pyproject.toml; this file only lists the extensions and
their compiler flags. A module that fails to compile fails the build: there is no
pure-Python fallback.

One module is optional: ``quill._core.h2engine`` (the HTTP/2 engine) links libnghttp2 and is
built only where its headers and library are found (pkg-config, else a compile-and-link test;
Debian: ``apt-get install libnghttp2-dev``). Without it everything else builds, and asking for
HTTP/2 raises an error naming the missing library. ``QUILL_REQUIRE_NGHTTP2=1`` makes its absence
fail the build (wheels must carry it).
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    COMPILE_ARGS = ["/O2"]
else:
    # -fno-strict-aliasing: the kernels reinterpret float bits through unions and casts.
    COMPILE_ARGS = ["-O3", "-fno-strict-aliasing", "-Wno-unreachable-code"]

CORE = os.path.join("quill", "_core")
NGHTTP2_MODULE = "h2engine"


def nghttp2_flags():
    """Compiler and linker flags for libnghttp2, or None where it cannot be built against."""
    if shutil.which("pkg-config"):
        found = subprocess.run(["pkg-config", "--cflags", "--libs", "libnghttp2"], capture_output=True, text=True)
        if found.returncode == 0:
            flags = found.stdout.split()
            return {"include_dirs": [f[2:] for f in flags if f.startswith("-I")],
                    "library_dirs": [f[2:] for f in flags if f.startswith("-L")],
                    "libraries": [f[2:] for f in flags if f.startswith("-l")] or ["nghttp2"]}
    compiler = sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as work:
        source = os.path.join(work, "probe.c")
        with open(source, "w") as probe:
            probe.write("#include <nghttp2/nghttp2.h>\nint main(void) { return nghttp2_version(0) == 0; }\n")
        try:
            built = subprocess.run([*compiler.split(), source, "-o", os.path.join(work, "probe"), "-lnghttp2"],
                                   capture_output=True)
        except OSError:
            return None
    return {"libraries": ["nghttp2"]} if built.returncode == 0 else None


def extension(path, flags):
    return Extension(
        "quill._core." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=[numpy.get_include(), CORE, *flags.get("include_dirs", [])],
        library_dirs=flags.get("library_dirs", []),
        libraries=flags.get("libraries", []),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )


extensions = []
for path in sorted(glob.glob(os.path.join(CORE, "*.pyx"))):
    if os.path.basename(path) == NGHTTP2_MODULE + ".pyx":
        flags = nghttp2_flags()
        if flags is None:
            if os.environ.get("QUILL_REQUIRE_NGHTTP2") == "1":
                sys.exit("QUILL_REQUIRE_NGHTTP2=1 but libnghttp2 (headers and library) was not found")
            print("warning: libnghttp2 not found: quill._core.h2engine (HTTP/2) is not built", file=sys.stderr)
            continue
        extensions.append(extension(path, flags))
    else:
        extensions.append(extension(path, {}))

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
