"""``python -m callstate``: the ``callstate`` command (see ``callstate --help``)."""

from __future__ import annotations

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    import os
    import sys

    # python -m put the current directory first on sys.path; callstate was found, and from here on
    # the directory (perhaps the one holding the files to read) must not shadow what callstate
    # imports later, such as decimal or numpy. migrate --import searches it on its own terms.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    raise SystemExit(main())
