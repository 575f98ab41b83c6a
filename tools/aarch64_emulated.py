"""Cross-compile quill's extensions for aarch64 and run the tests of the compiled code under QEMU.

No arm machine needed: the C that Cython generates here is compiled by Debian's
``aarch64-linux-gnu-gcc`` with setup.py's flags, against the headers of Debian's arm64 CPython
(packages fetched with ``apt-get download`` and unpacked with ``dpkg -x``, never installed) and of
numpy's aarch64 wheel. That CPython then runs under ``qemu-aarch64-static`` with numpy, ml_dtypes
and the test tools from their aarch64 wheels (``pip install --target --platform
manylinux2014_aarch64 --only-binary=:all:``) and runs the tests of the compiled modules: the cast
kernels' exhaustive tests (all 65,536 patterns each way, the float32 -> half edge cases) against
numpy and ml_dtypes, the golden vectors, and the codec and tensor tests.

    python tools/aarch64_emulated.py /tmp/quill-aarch64               # every default test module
    python tools/aarch64_emulated.py /tmp/quill-aarch64 tests/test_casts.py -k exhaustive

Needs root for apt-get (the arm64 architecture is added to dpkg if missing, so that apt can fetch
its packages), and Cython and pip in the running interpreter. Results: docs/platforms.md.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON = "3.11"  # Debian 12's CPython, the version of the arm64 packages below
DEBIAN_PACKAGES = [
    f"python{PYTHON}-minimal", f"libpython{PYTHON}-minimal", f"libpython{PYTHON}-stdlib",
    f"libpython{PYTHON}", f"libpython{PYTHON}-dev", "libc6", "libgcc-s1", "libbz2-1.0", "libcrypt1",
    "libdb5.3", "libexpat1", "libffi8", "liblzma5", "libncursesw6", "libnsl2", "libreadline8",
    "libsqlite3-0", "libssl3", "libtinfo6", "libtirpc3", "libuuid1", "zlib1g", "libgssapi-krb5-2",
    "libkrb5-3", "libk5crypto3", "libkrb5support0", "libkeyutils1", "libcom-err2",
    "libstdc++6",  # for ml_dtypes (C++)
]
WHEELS = ["numpy", "ml_dtypes", "pytest", "hypothesis", "urllib3[zstd]", "uvicorn"]
CROSS_GCC = "aarch64-linux-gnu-gcc"
# setup.py's flags for gcc (the cross compiler is gcc 12, like the native one)
CFLAGS = ["-O3", "-fno-strict-aliasing", "-Wno-unreachable-code", "-fPIC", "-shared",
          "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION"]
DEFAULT_TESTS = ["tests/test_casts.py", "tests/interop", "tests/test_frames.py", "tests/test_tokens.py",
                 "tests/test_tensor.py", "tests/test_dtypes.py"]


def run(*command, **kwargs):
    print("+", " ".join(str(part) for part in command), flush=True)
    return subprocess.run([str(part) for part in command], check=True, **kwargs)


def host_tools():
    """The cross compiler and QEMU, installed from Debian when missing, and dpkg's arm64 lists."""
    missing = [package for tool, package in [(CROSS_GCC, "gcc-aarch64-linux-gnu"),
                                             ("qemu-aarch64-static", "qemu-user-static")]
               if shutil.which(tool) is None]
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], check=True,
                             capture_output=True, text=True).stdout.split()
    if "arm64" not in foreign:
        run("dpkg", "--add-architecture", "arm64")
    if missing or "arm64" not in foreign:
        run("apt-get", "update", "-qq")
    if missing:
        run("apt-get", "install", "-y", "-qq", *missing, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def arm64_root(workdir):
    """Debian's arm64 CPython and the libraries it loads, unpacked under workdir/root."""
    root = workdir / "root"
    debs = workdir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in DEBIAN_PACKAGES if not list(debs.glob(f"{name}_*_arm64.deb"))]
    if wanted:
        run("apt-get", "download", *[f"{name}:arm64" for name in wanted], cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            run("dpkg", "-x", deb, root)
    return root


def arm64_site_packages(workdir):
    """numpy, ml_dtypes, the test tools and quill's runtime dependencies, from aarch64 wheels."""
    site = workdir / "site-packages"
    if not site.exists():
        run(sys.executable, "-m", "pip", "install", "-q", "--target", site, "--platform", "manylinux2014_aarch64",
            "--platform", "manylinux_2_28_aarch64",  # Debian 12 has glibc 2.36; newer numpy needs 2.28
            "--python-version", PYTHON, "--implementation", "cp", "--only-binary=:all:", *WHEELS)
    return site


def cross_compile(workdir, root, site):
    """quill/ with its quill/_core/*.pyx modules compiled for aarch64 (C from Cython here, objects by the cross gcc)."""
    package = workdir / "quill"
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(REPO / "quill", package, ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    numpy_include = site / "numpy" / "_core" / "include"
    includes = [root / "usr" / "include" / f"python{PYTHON}",
                root / "usr" / "include", numpy_include, package / "_core"]  # pyconfig.h: <aarch64-linux-gnu/...>
    suffix = f".cpython-{PYTHON.replace('.', '')}-aarch64-linux-gnu.so"
    directives = ["boundscheck=False", "wraparound=False", "cdivision=True", "initializedcheck=False",
                  "embedsignature=True"]
    for pyx in sorted((package / "_core").glob("*.pyx")):
        c_file = pyx.with_suffix(".c")
        run(sys.executable, "-m", "cython", "-3", *[f"-X{d}" for d in directives], "-o", c_file, pyx)
        run(CROSS_GCC, *CFLAGS, *[f"-I{path}" for path in includes], "-o", pyx.with_name(pyx.stem + suffix), c_file)
    return package


def emulated_python(workdir, root):
    """A launcher for the arm64 CPython under QEMU. It is also what that CPython reports as
    sys.executable (QEMU's -0 sets argv[0]), so that tests which start ``sys.executable`` in a
    child process start it emulated too, without binfmt_misc."""
    launcher = workdir / "bin" / "python3"
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text(f'#!/bin/sh\nexec qemu-aarch64-static -L "{root}" -0 "$0" '
                        f'"{root}/usr/bin/python{PYTHON}" "$@"\n')
    launcher.chmod(0o755)
    return launcher


def run_tests(workdir, root, site, pytest_args):
    python = emulated_python(workdir, root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(workdir), str(site)]), PYTHONNOUSERSITE="1",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("VIRTUAL_ENV", None)
    cwd = workdir / "cwd"
    cwd.mkdir(exist_ok=True)
    run(python, "-c",
        "import platform, numpy, ml_dtypes, quill, quill._core.casts as c; "
        "print(platform.machine(), platform.python_version(), 'numpy', numpy.__version__, "
        "'ml_dtypes', ml_dtypes.__version__, 'cast paths', c._available_paths(), quill.__file__)",
        cwd=cwd, env=env)
    return subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                           *[str(REPO / a) if (REPO / a).exists() else a for a in pytest_args]],
                          cwd=cwd, env=env).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=pathlib.Path, help="where the arm64 root, wheels and build go (reused)")
    parser.add_argument("tests", nargs="*", help="test paths (default: the compiled modules' tests)")
    args, pytest_options = parser.parse_known_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    host_tools()
    root = arm64_root(workdir)
    site = arm64_site_packages(workdir)
    cross_compile(workdir, root, site)
    return run_tests(workdir, root, site, (args.tests or DEFAULT_TESTS) + pytest_options)


if __name__ == "__main__":
    sys.exit(main())
