"""The ``callstate`` command: a thin shell over the library (``_commands``), its progress line
(``_progress``) and the differ of ``callstate diff`` (``_differ``). Imports the layers below and the
flat namespace; nothing imports it but ``callstate.__main__``.
"""

from ._commands import main as main

__all__ = [
    "main",
]
