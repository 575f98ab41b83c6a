"""Build the Linux wheel the way users get it, and test it where no compiler can rescue it.

1. ``python -m build``: the sdist, then the wheel built from the unpacked sdist (so the sdist is
   proven to carry what the build needs);
2. ``auditwheel repair --plat manylinux_2_28_<arch>``, then ``auditwheel show``, which must find the
   repaired wheel consistent with its tag, and carrying the HTTP/2 engine with its own copy of
   libnghttp2 (the build runs with ``QUILL_REQUIRE_NGHTTP2=1``; each test environment checks
   that the engine loads the copy in ``quill_rpc.libs``, not the system's). manylinux_2_28 (glibc 2.28, AlmaLinux 8) is the policy
   cibuildwheel builds for in .github/workflows/wheels.yml: its default, maintained image, and
   the glibc that numpy's own current Linux wheels need anyway (manylinux2014's CentOS 7 image
   is past its end of life);
3. with ``--numpy-floor``, a fresh virtual environment whose PATH holds no C compiler, assembler
   or linker, with the repaired wheel, its ``test`` extra and the oldest numpy that
   pyproject.toml admits (``numpy>=X`` becomes ``numpy==X.*``, with the ml_dtypes that pip
   finds for it): the tests that touch numpy, from the sdist's tree;
4. another such environment with the repaired wheel and its ``test`` extra: the whole test suite
   that the sdist carries, run against the wheel.

    python tools/wheel_check.py /tmp/quill-wheel                  # build, repair, show, test
    python tools/wheel_check.py /tmp/quill-wheel --numpy-floor    # and the NumPy floor

Needs ``build`` and ``auditwheel`` in the running interpreter's environment, and curl and openssl
(the suite drives them).
"""

import argparse
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
POLICY = "manylinux_2_28"
STARTED = time.monotonic()
# Programs that could compile or link C: none of them may be reachable in the test environments.
COMPILER = re.compile(r"(^|-)(cc|c\+\+|c89|c99|gcc|g\+\+|cpp|clang|clang\+\+|ld|ld\.\w+|as|tcc|zig)"
                      r"(-[0-9.]+)?$|gcc|clang|mingw")
# The suite's modules that exercise numpy (dtypes, casts, tensors, frames, tokens, DLPack, pickling):
# the part whose result can depend on the numpy version.
# The README's examples are not among them: they use pyarrow and DuckDB, whose current wheels
# need NumPy 2 (they run in the whole suite).
NUMPY_TESTS = ["test_casts.py", "test_dtypes.py", "test_tensor.py", "test_frames.py", "test_tokens.py",
               "test_memory.py", "test_seed_examples.py", "interop"]


def say(message):
    print(f"== [{time.monotonic() - STARTED:4.0f} s] {message}", flush=True)


def run(*command, **kwargs):
    print("+", " ".join(str(part) for part in command), flush=True)
    return subprocess.run([str(part) for part in command], check=True, **kwargs)


def build(workdir):
    """The sdist and the wheel built from it; returns (sdist, wheel)."""
    dist = workdir / "dist"
    say("build: the sdist, then the wheel from the unpacked sdist")
    # The HTTP/2 engine must be in the wheel: its absence fails the build instead of a warning.
    run(sys.executable, "-m", "build", "--outdir", dist, REPO, stdout=subprocess.DEVNULL,
        env={**os.environ, "QUILL_REQUIRE_NGHTTP2": "1"})
    (sdist,) = dist.glob("quill_rpc-*.tar.gz")
    (wheel,) = dist.glob("quill_rpc-*.whl")
    return sdist, wheel


def repair(wheel, workdir):
    """The wheel repaired to POLICY and checked by ``auditwheel show``; returns its path."""
    wheelhouse = workdir / "wheelhouse"
    plat = f"{POLICY}_{platform.machine()}"
    say(f"auditwheel repair to {plat}, then auditwheel show")
    run(sys.executable, "-m", "auditwheel", "repair", "--plat", plat, "-w", wheelhouse, wheel)
    (repaired,) = wheelhouse.glob("quill_rpc-*.whl")
    if plat not in repaired.name:
        raise SystemExit(f"auditwheel repair produced {repaired.name}, not a {plat} wheel")
    shown = run(sys.executable, "-m", "auditwheel", "show", repaired,
                capture_output=True, text=True).stdout
    print(shown)
    consistent = re.search(r'consistent with the following platform tag:\s*"?(manylinux_(\d+)_(\d+)_\w+)',
                           " ".join(shown.split()))
    if consistent is None or (int(consistent[2]), int(consistent[3])) > (2, 28):
        raise SystemExit(f"auditwheel show does not find {repaired.name} consistent with {POLICY}")
    say(f"{repaired.name}: auditwheel show: consistent with {consistent[1]}")
    with zipfile.ZipFile(repaired) as archive:
        names = archive.namelist()
    engine = [n for n in names if re.fullmatch(r"quill/_core/h2engine\..*\.so", n)]
    bundled = [n for n in names if re.fullmatch(r"quill_rpc\.libs/libnghttp2[-.].*\.so.*", n)]
    if not engine or not bundled:
        raise SystemExit(f"{repaired.name} lacks the HTTP/2 engine ({engine}) or its bundled libnghttp2 ({bundled})")
    say(f"{repaired.name}: carries {engine[0]} and its own {bundled[0]}")
    return repaired


def compiler_free_path(workdir):
    """A directory of links to every program on PATH except compilers, assemblers and linkers."""
    tools = workdir / "bin-without-compilers"
    tools.mkdir(exist_ok=True)
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in sorted(os.listdir(directory)):
            program = os.path.join(directory, entry)
            link = tools / entry
            if COMPILER.search(entry) or link.exists() or not os.access(program, os.X_OK) \
                    or os.path.isdir(program):
                continue
            link.symlink_to(program)
    return tools


def fresh_venv(path, tools):
    """A new virtual environment and the environment variables that confine it to ``tools``."""
    say(f"a fresh virtual environment, {path.name}, without a compiler on PATH")
    run(sys.executable, "-m", "venv", path)
    env = {key: value for key, value in os.environ.items()
           if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CC", "CXX", "LDSHARED")}
    env["PATH"] = os.pathsep.join([str(path / "bin"), str(tools)])
    for compiler in ("cc", "gcc", "c++", "clang", "ld"):
        if shutil.which(compiler, path=env["PATH"]):
            raise SystemExit(f"{compiler} is still reachable from the test environment's PATH")
    run(path / "bin" / "python", "-m", "pip", "install", "-q", "--upgrade", "pip", env=env)
    return env


def unpack(sdist, workdir):
    """The sdist's tree (its tests run against the installed wheel)."""
    with tarfile.open(sdist) as archive:
        archive.extractall(workdir / "sdist", filter="data")
    (tree,) = (workdir / "sdist").iterdir()
    return tree


def numpy_floor():
    """``numpy==X.*`` for the ``numpy>=X`` that pyproject.toml's dependencies declare."""
    with open(REPO / "pyproject.toml", "rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    (floor,) = [re.fullmatch(r"numpy>=([0-9.]+)", dep.replace(" ", ""))[1]
                for dep in dependencies if dep.startswith("numpy")]
    return f"numpy=={floor}.*"


def test_in_venv(venv, tools, wheel, tree, pytest_args, extra_requirements=()):
    env = fresh_venv(venv, tools)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", f"{wheel}[test]", *extra_requirements, env=env)
    # The HTTP/2 engine loads the libnghttp2 the wheel carries, whatever the system has.
    run(python, "-c", "import quill._core.h2engine; maps = open('/proc/self/maps').read(); "
        "assert 'quill_rpc.libs/libnghttp2' in maps, 'the engine did not load the bundled libnghttp2'",
        env=env, cwd=venv)
    versions = subprocess.run([python, "-c", "import numpy, quill; print(quill.__file__, numpy.__version__)"],
                              cwd=venv, env=env, check=True, capture_output=True, text=True).stdout.split()
    if not versions[0].startswith(str(venv)):
        raise SystemExit(f"quill imported from {versions[0]}, not from the wheel installed in {venv}")
    say(f"quill from {wheel.name}, numpy {versions[1]}, no compiler on PATH")
    # the pytest script, not python -m pytest, which would put the sdist tree (uncompiled) on sys.path
    run(venv / "bin" / "pytest", *pytest_args, cwd=tree, env=env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=pathlib.Path, help="an empty or missing directory for the builds")
    parser.add_argument("--numpy-floor", action="store_true", help="also test with the oldest numpy admitted")
    parser.add_argument("--skip-suite", action="store_true", help="only build, repair and show")
    parser.add_argument("--also-install", action="append", default=[], metavar="REQUIREMENT",
                        help="another requirement or wheel file for the suite's environment (repeatable)")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    sdist, wheel = build(workdir)
    repaired = repair(wheel, workdir)
    if args.skip_suite:
        return 0
    tree = unpack(sdist, workdir)
    tools = compiler_free_path(workdir)
    if args.numpy_floor:
        floor = numpy_floor()
        say(f"the numpy tests with the oldest numpy admitted ({floor})")
        test_in_venv(workdir / "venv-numpy-floor", tools, repaired, tree,
                     ["-q", *[f"tests/{name}" for name in NUMPY_TESTS]], [floor])
    say("the whole suite, from the sdist's tests, against the repaired wheel")
    test_in_venv(workdir / "venv", tools, repaired, tree, [], args.also_install)
    return 0


if __name__ == "__main__":
    sys.exit(main())
