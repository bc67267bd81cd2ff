"""Writes the golden files of the current format version that do not exist yet; never rewrites one.

Usage: python tests/golden/make_golden.py   (writes tests/golden/v<VERSION>/, and v2/jax/ with jax)
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import golden_states

import callstate
from callstate._encoding import _format

if __name__ == "__main__":
    out = pathlib.Path(__file__).parent / f"v{_format.VERSION}"
    out.mkdir(exist_ok=True)
    golden_states.register_interval()
    for name, states in golden_states.files(_format.VERSION).items():
        target = out / f"{name}.callstate"
        if target.exists():  # golden files are kept forever, never rewritten: only new ones are written
            print("kept", target)
            continue
        callstate.save(states, target)
        print("wrote", target)
    if _format.VERSION == 2:  # the jax golden files of version 2, written where jax is installed
        (out / "jax").mkdir(exist_ok=True)
        for name, states in golden_states.jax_files().items():
            target = out / "jax" / f"{name}.callstate"
            if target.exists():
                print("kept", target)
                continue
            callstate.save(states, target)
            print("wrote", target)
