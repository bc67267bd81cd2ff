"""``python -m callstate``: the ``callstate`` command (see ``callstate --help``)."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and sys.path[0] in ("", os.getcwd()):
    # python -m put the current directory first on sys.path; callstate was found, and from here on
    # the directory (perhaps the one holding the files to read) must not shadow what callstate
    # imports, such as decimal (the CLI's readers import the codec) or numpy. So it goes before the
    # CLI is imported; `import callstate` itself imports neither. migrate --import searches the
    # directory on its own terms.
    del sys.path[0]

from ._cli import main  # after the directory is off sys.path

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
