"""``python -m quill``: the ``quill`` command (see :mod:`quill.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
