"""Coverage-guided fuzz target (atheris / libFuzzer) for the torch pre-scan (``callstate._torch``).

The contract under test: the pre-scan that runs before every ``torch.load`` callstate makes (and
``callstate inspect``/``verify`` on a torch checkpoint) either accepts a file or raises a
``callstate.CallstateError``, in bounded time and memory. This target fails when scanning an input

- raises any exception that is not a ``CallstateError``, or one whose chain holds a ``MemoryError``,
  ``RecursionError`` or ``SystemError`` (a bound that was not kept, hidden by a wrapper);
- takes more than 1 second (``CALLSTATE_FUZZ_TIME_LIMIT``);
- raises the peak RSS by more than 512 MiB (``CALLSTATE_FUZZ_RSS_MB``), or allocates past the
  address-space cap (``CALLSTATE_FUZZ_AS_MB`` MiB above the mappings once set up, default 1024).

How an input is read (its first byte, ``m``, chooses):

- ``m & 1 == 0``: the rest is the ``data.pkl`` of a torch.save zip that the target writes around it
  (``version``, ``byteorder`` and a 16-byte record ``data/0``), so every mutation reaches the pickle
  checks. Seeds of this kind are real torch.save pickles.
- ``m & 1 == 1``: the rest is the whole file (the zip checks).
- ``m & 2``: the file is also read as ``callstate inspect`` reads it (``TorchFile``: the callbacks,
  their sizes and records), from a temporary file.

Nothing is ever given to ``torch.load``: a fuzzed pickle with ``weights_only=False`` could run code.

Usage: ``fuzz/run.sh`` (with ``FUZZ_TARGETS=fuzz_torch``), or
``.venv/bin/python fuzz/fuzz_torch.py CORPUS_DIR -timeout=1 -rss_limit_mb=2048 -max_total_time=60``.
"""

from __future__ import annotations

import io
import os
import resource
import sys
import tempfile
import time
import zipfile

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["callstate"]):
    import callstate
    from callstate._torch import _torch_reader

# The harness's bounds and checks are fuzz_read's: one time limit, one memory growth limit, one
# address-space cap, and the same refusal of a broken bound hidden under a CallstateError.
from fuzz_read import (  # fuzz/ is the script's directory, so on sys.path
    RSS_GROWTH_MB,
    TIME_LIMIT,
    MemoryBlowUp,
    TooSlow,
    _check_chain,
    _maxrss_mb,
    cap_address_space,
)

_TMP = os.path.join(tempfile.mkdtemp(prefix="callstate-fuzz-torch-"), "c.pt")


def wrap_pickle(pkl: bytes) -> bytes:
    """A torch.save zip (stored members under ``archive/``) around ``pkl`` as its ``data.pkl``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", bytes(16))
        zf.writestr("archive/version", "3\n")
    return out.getvalue()


def build(data: bytes) -> tuple[bytes, bool]:
    """Return ``(file bytes, read it as inspect too)`` for a fuzz input (see the module docstring)."""
    if not data:
        return b"", False
    m, rest = data[0], data[1:]
    return (rest if m & 1 else wrap_pickle(rest)), bool(m & 2)


def scan_all(file: bytes, inspect: bool) -> None:
    """Run the pre-scan on ``file``, and the inspect reader if asked."""
    _torch_reader.scan(io.BytesIO(file), "fuzz.pt")
    if inspect:
        with open(_TMP, "wb") as f:
            f.write(file)
        _torch_reader.TorchFile(_TMP).close()


_baseline_rss = 0.0


def check_one(data: bytes) -> None:
    """Scan one fuzz input; raise if it breaks the contract (see the module docstring)."""
    file, inspect = build(data)
    start = time.perf_counter()
    try:
        scan_all(file, inspect)
    except callstate.CallstateError as exc:
        _check_chain(exc)
    elapsed = time.perf_counter() - start
    if elapsed > TIME_LIMIT:
        raise TooSlow(f"scanning took {elapsed:.2f} s (limit {TIME_LIMIT} s) for a {len(file)}-byte file")
    rss = _maxrss_mb()
    if rss - _baseline_rss > RSS_GROWTH_MB:
        raise MemoryBlowUp(f"peak RSS rose {rss - _baseline_rss:.0f} MiB for a {len(file)}-byte file")


def TestOneInput(data: bytes) -> None:
    try:
        check_one(data)
    except BaseException:
        # Lift the address-space cap, so that libFuzzer can still report the failure.
        resource.setrlimit(resource.RLIMIT_AS, resource.getrlimit(resource.RLIMIT_AS)[1:] * 2)
        raise


def main() -> None:
    for warm in (b"", b"\x00\x80\x02}.", b"\x01PK"):  # first-call costs off the fuzz inputs
        TestOneInput(warm)
    global _baseline_rss
    _baseline_rss = _maxrss_mb()
    cap_address_space()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
