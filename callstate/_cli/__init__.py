"""FACE of _cli."""

from ._commands import main as main

__all__ = [
    "main",
]
