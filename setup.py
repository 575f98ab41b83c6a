"""Build the compiled core: every ``quill/_core/*.pyx`` is a Cython extension, ``quill._core.<name>``.

Project metadata lives in pyproject.toml; this file only lists the extensions and
their compiler flags. A module that fails to compile fails the build: there is no
pure-Python fallback.
"""

import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    COMPILE_ARGS = ["/O2"]
else:
    # -fno-strict-aliasing: the kernels reinterpret float bits through unions and casts.
    COMPILE_ARGS = ["-O3", "-fno-strict-aliasing", "-Wno-unreachable-code"]

CORE = os.path.join("quill", "_core")

extensions = [
    Extension(
        "quill._core." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=[numpy.get_include(), CORE],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )
    for path in sorted(glob.glob(os.path.join(CORE, "*.pyx")))
]

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
