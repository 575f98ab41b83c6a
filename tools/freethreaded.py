"""A free-threaded CPython 3.13 for the tests, built once and cached outside the clone.

Debian 12 ships no free-threaded Python; Debian trixie's source package of CPython 3.13 is
fetched with apt (a ``deb-src`` entry for trixie is added when missing: needs root), built with
``--disable-gil`` (no PGO: minutes, not an hour), and given a virtual environment with what the
compiled modules' tests need. ``test`` builds quill in place with it (``cpython-313t`` modules
beside the others) and runs pytest with the GIL off.

    python tools/freethreaded.py build            # ~25 min on 2 cores, once
    python tools/freethreaded.py test tests/test_free_threading.py tests/test_threads.py
    python tools/freethreaded.py test --prefix /opt/py313t tests    # an interpreter built before

The cache is ``$QUILL_FT_CACHE`` or ``~/.cache/quill-freethreaded`` (source, install, venv).
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("QUILL_FT_CACHE", pathlib.Path.home() / ".cache" / "quill-freethreaded"))
SOURCES = pathlib.Path("/etc/apt/sources.list.d/quill-trixie-src.list")
BUILD_PACKAGES = ["build-essential", "dpkg-dev", "libssl-dev", "zlib1g-dev", "libffi-dev", "libbz2-dev",
                  "liblzma-dev", "libsqlite3-dev", "libreadline-dev", "libncurses-dev", "uuid-dev"]
# What the compiled modules' tests and the threaded stress tests need (docs/platforms.md lists
# which packages have free-threaded wheels; hypothesis's newest need a Rust build for 3.13t).
TEST_PACKAGES = ["numpy", "Cython>=3.1", "setuptools>=77", "pytest>=8", "hypothesis>=6.100", "ml_dtypes>=0.4",
                 "urllib3>=2.2,<3", "backports.zstd", "uvicorn>=0.30", "pyarrow"]


def run(*command, cwd=None, env=None):
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(c) for c in command], cwd=cwd, env=env, check=True)


def python_of(prefix):
    return prefix / "bin" / "python3.13t"


def build(prefix, jobs):
    """Fetch, configure, build and install CPython 3.13 with --disable-gil into ``prefix``."""
    if python_of(prefix).exists():
        print(f"{python_of(prefix)} exists: nothing to build")
        return
    if not SOURCES.exists():
        SOURCES.write_text("deb-src http://deb.debian.org/debian trixie main\n")
    run("apt-get", "update", "-qq")
    missing = [p for p in BUILD_PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if missing:
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing)
    source = CACHE / "src"
    source.mkdir(parents=True, exist_ok=True)
    run("apt-get", "source", "--download-only", "python3.13", cwd=source)
    tarball = next(source.glob("python3.13_*.orig.tar.xz"))
    run("tar", "xf", tarball.name, cwd=source)
    tree = next(p for p in source.iterdir() if p.is_dir() and p.name.startswith("Python-3.13"))
    run("./configure", "--disable-gil", f"--prefix={prefix}", "--without-ensurepip", cwd=tree)
    run("make", f"-j{jobs}", cwd=tree)
    run("make", "install", cwd=tree)
    shutil.rmtree(tree)


def venv(prefix):
    """The test environment of ``prefix``'s interpreter (made once)."""
    python = CACHE / f"venv-{prefix.name}" / "bin" / "python"
    if not python.exists():
        run(python_of(prefix), "-m", "venv", "--without-pip", python.parent.parent)
        run(python, "-m", "ensurepip")
        run(python, "-m", "pip", "install", "-q", "--only-binary=:all:", *TEST_PACKAGES)
        run(python, "-m", "pip", "install", "-q", "httptools>=0.6")   # no cp313t wheel: built from its sdist
    return python


def test(prefix, pytest_args):
    python = venv(prefix)
    gil = subprocess.run([python, "-c", "import sys; print(sys._is_gil_enabled())"],
                         capture_output=True, text=True, env={**os.environ, "PYTHON_GIL": "0"}).stdout.strip()
    if gil != "False":
        sys.exit(f"{python} is not a free-threaded interpreter")
    run(python, "setup.py", "build_ext", "--inplace", "-j", "2", cwd=REPO)
    env = {**os.environ, "PYTHON_GIL": "0", "PYTHONPATH": str(REPO)}
    run(python, "-m", "pytest", "-p", "no:cacheprovider", *(pytest_args or ["tests"]), cwd=REPO, env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "test"])
    parser.add_argument("--prefix", type=pathlib.Path, default=CACHE / "py313t",
                        help="where the interpreter is (or goes); default: in the cache")
    parser.add_argument("--jobs", type=int, default=2)
    args, rest = parser.parse_known_args()
    if args.command == "build":
        build(args.prefix.resolve(), args.jobs)
    else:
        test(args.prefix.resolve(), rest)


if __name__ == "__main__":
    main()
