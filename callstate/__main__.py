"""``python -m callstate``: the ``callstate`` command (see ``callstate --help``)."""

from __future__ import annotations

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
