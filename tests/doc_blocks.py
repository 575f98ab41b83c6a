"""The fenced code blocks of a Markdown page, and running its examples as written (not
collected by pytest): the README's and docs/connecting.md's tests share them.

>>> fenced_blocks(README, "python")[0][:10]  # doctest: +SKIP
'import num'
"""

from __future__ import annotations

import doctest
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fenced_blocks(path: pathlib.Path, language: str) -> list[str]:
    """The text of each ```LANGUAGE block of ``path``, in page order."""
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def run_python_block(block: str, where: str, name: str = "__main__") -> None:
    """Run a python block in a fresh namespace; ``__main__``: what ``python example.py`` runs."""
    exec(compile(block, where, "exec"), {"__name__": name})


def console_commands(block: str) -> list[tuple[str, str]]:
    """(command, expected output) of each ``$ command`` of a console transcript."""
    pairs: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"output before any command: {line!r}"
            pairs[-1][1].append(line)
    return [(command, "\n".join(lines)) for command, lines in pairs]


def check_console_command(command: str, expected: str, **run) -> None:
    """Run ``command`` with bash (stdout and stderr together, as a terminal shows them) and
    compare with ``expected``, where ``...`` stands for any text. A command whose expected
    output shows an error (``quill: error:``, ``curl: (``) must fail; any other must succeed."""
    done = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120, **run)
    got = "\n".join(line.rstrip() for line in done.stdout.strip("\n").splitlines())
    assert doctest.OutputChecker().check_output(expected.strip("\n") + "\n", got + "\n", doctest.ELLIPSIS), \
        f"$ {command}\nexpected:\n{expected}\ngot (exit {done.returncode}):\n{got}"
    fails = any(line.startswith(("quill: error:", "curl: (")) for line in expected.splitlines())
    assert (done.returncode != 0) == fails, f"$ {command}: exit {done.returncode}\n{got}"
