"""Differential fuzz target (atheris / libFuzzer): the compiled decoder against the Python one.

The contract under test: for every payload, ``callstate._encoding._cdecode.decode`` gives the same
value (types, float bits, sharing: compared by pickle) or raises an error of the same class with the
same message as the reference ``callstate._encoding._decoder.decode``, and leaves the same allowance
(tests/cdecode_diff.py says how outcomes are compared). Any disagreement fails the input.

Inputs are read as fuzz_read.py reads its seeds, so its corpus (fuzz/corpus/) seeds this target:
``m == 0x89``: a whole callstate file, each ``data`` entry of it decoded; otherwise the rest of the
input after the first byte ``m``, split on ``SEP`` at most ``m & 7`` times: the stream, then its
out-of-band buffers. ``m & 8`` decodes trusted (no memory allowance).

Run under AddressSanitizer and UndefinedBehaviorSanitizer by ``fuzz/sanitize.sh``, which builds the
decoder with them; ``fuzz/run.sh`` runs it with the ordinary build (FUZZ_TARGETS=fuzz_codec_diff).
"""

from __future__ import annotations

import contextlib
import pathlib
import sys

import atheris  # type: ignore[import-untyped]

# jax is imported first, and not instrumented: a payload holding a jax array imports it when decoded,
# and the first such input would otherwise pay jax's import time (over a second) against -timeout=1.
with contextlib.suppress(ImportError):
    import jax  # noqa: F401

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

with atheris.instrument_imports(include=["callstate"]):
    from cdecode_diff import disagreement  # the comparison (a test helper), imported after callstate

    from callstate._encoding import _format

SEP = b"\xffOOB"


def payloads(data: bytes) -> list[tuple[bytes, list[bytes], bool]]:
    """Return the (stream, buffers, trusted) payloads an input stands for."""
    if not data:
        return []
    m, rest = data[0], data[1:]
    if m == 0x89:
        try:
            entries, _ = _format.parse(memoryview(data), "fuzz")
        except Exception:
            return []
        found = []
        for entry in entries:
            parts = getattr(entry, "parts", None)
            if getattr(entry, "codec", None) == "data" and parts:
                found.append((bytes(parts[0]), [bytes(p) for p in parts[1:]], False))
        return found
    pieces = rest.split(SEP, m & 7)
    return [(pieces[0], pieces[1:], bool(m & 8))]


def TestOneInput(data: bytes) -> None:
    for stream, buffers, trusted in payloads(data):
        problem = disagreement(stream, buffers, bound_memory=not trusted)
        if problem is not None:
            raise AssertionError(f"the decoders disagree on {stream[:64]!r}...:\n{problem}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
