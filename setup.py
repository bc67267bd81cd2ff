"""The compiled parts of the data codec, as optional C extensions; everything else is in pyproject.toml.

Each extension is optional: where it does not build (no C compiler, PyPy, a missing header) the
build goes on, prints one line saying so, and the pure-Python codec runs (see
callstate/_encoding/_implementation.py, which picks the implementation at run time).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The full C API, not the limited one (abi3): encoding issue 25's five states (benchmarks/codec.py's
# issue_states, median of 7 alternating rounds, CPython 3.11, gcc -O3, a loaded 2-core VM), the abi3
# build took 1.00x to 1.40x the time of the full-API one (1.40x for a million floats, where every
# PyList_GET_ITEM and PyFloat_AS_DOUBLE becomes a call; 1.18x for 20,000 metric records). Wheels
# are per CPython version then. CALLSTATE_LIMITED_API=1 builds the abi3 variant (cp310 tag).
LIMITED = os.environ.get("CALLSTATE_LIMITED_API", "") not in ("", "0")


def _extension(name: str, source: str) -> Extension:
    """A C extension of the codec: optional, warnings as errors, the limited API if chosen."""
    macros = [("Py_LIMITED_API", "0x030A0000")] if LIMITED else []
    return Extension(
        name,
        [source],
        optional=True,
        extra_compile_args=["-Wall", "-Wextra", "-Werror"] if os.name != "nt" else ["/W4", "/WX"],
        define_macros=macros,
        py_limited_api=LIMITED,
    )


class _BuildExt(build_ext):
    """build_ext whose failure of an optional extension is one line in the build log."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # setuptools' own message spans several lines: say it in one
            if not getattr(ext, "optional", False):
                raise
            reason = " ".join(str(exc).split())[:200]
            print(
                f"callstate: the compiled codec ({ext.name}) was not built ({reason}); "
                "the pure-Python codec is used",
                file=sys.stderr,
            )


setup(
    ext_modules=[
        _extension("callstate._encoding._cencode", "callstate/_encoding/_cencode.c"),
        _extension("callstate._encoding._cdecode", "callstate/_encoding/_cdecode.c"),
    ],
    cmdclass={"build_ext": _BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if LIMITED else {},
)
