"""A one-line progress indicator for the commands, drawn on a terminal only, for large files.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

from .._support import escape

# Progress is drawn only on a terminal, and only for files at least this large.
PROGRESS_MIN_BYTES = 16 * 1024 * 1024


class Progress:
    """A one-line progress indicator on stderr, drawn only on a terminal and for large files."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        # The label names files, and a file's name may hold control characters: shown escaped.
        self.label, self.total = escape(label, 300), total
        self.active = total >= PROGRESS_MIN_BYTES and _isatty(self.stream)
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, *, force: bool = False) -> None:
        """Show that ``done`` of ``total`` bytes are processed (at most ten times a second)."""
        if not self.active:
            return
        now = time.monotonic()
        if not force and self._drawn and now - self._last < 0.1:
            return
        self._last, self._drawn = now, True
        pct = 100 * done // self.total if self.total else 100
        self.stream.write(f"\r{self.label}: {pct:3d}% ({human(done)} of {human(self.total)})")
        self.stream.flush()

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        """Show elapsed time while a single long call runs."""
        if not self.active:
            yield
            return
        stop = threading.Event()
        start = time.monotonic()

        def draw() -> None:
            self.stream.write(f"\r{self.label} ({human(self.total)}): {time.monotonic() - start:.1f} s")
            self.stream.flush()
            self._drawn = True

        def tick() -> None:
            while not stop.wait(0.2):
                draw()

        draw()
        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.close()

    def close(self) -> None:
        """Erase the line."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
