"""Coverage-guided fuzz target (atheris / libFuzzer) for what ``inspect`` shows of a file.

The contract under test: whatever the bytes, ``callstate.inspect`` and the ``callstate inspect``
command's rendering (``_cli.inspect_rows`` then ``_cli.render_inspect``, called in process, as a
table and as JSON) either show the file or raise a ``callstate.CallstateError``, and what they show
holds no raw control or bidirectional-format character (a key is data, never a terminal command)
and stays short. This target fails (atheris reports a crash and writes the input as an artifact)
when an input

- raises anything but a ``CallstateError`` (the CLI would print "internal error");
- gives a table whose text holds a raw control character other than the newlines between its
  lines, or a line longer than ``MAX_LINE`` characters, or more lines than entries plus two;
- gives a ``CallstateError`` whose message holds a raw control character;
- takes more than 1 second (``CALLSTATE_FUZZ_TIME_LIMIT``).

How an input is read: its first byte chooses, as in ``fuzz_read.py`` (whose builders it reuses), so
that mutations get past the CRCs and reach the index (keys, codecs, infos) that ``inspect`` shows:
``0x89`` the whole input is the file; otherwise the rest is a ``"data"`` payload or an index, wrapped
in a valid container. The seeds are ``fuzz/corpus`` (copy it first: libFuzzer writes into it).

Usage::

    .venv/bin/python fuzz/fuzz_inspect.py CORPUS_COPY -timeout=1 -rss_limit_mb=2048 \\
        -max_len=131072 -dict=fuzz/callstate.dict -max_total_time=60
    .venv/bin/python fuzz/fuzz_inspect.py crash-<sha1>          # re-run one input
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["callstate"]):
    import callstate
    from callstate._cli import _commands as _cli

import fuzz_read  # fuzz/ is the script's directory, so on sys.path

TIME_LIMIT = float(os.environ.get("CALLSTATE_FUZZ_TIME_LIMIT", "1.0"))
MAX_LINE = 2_000
# What a terminal would act on: C0 and C1 controls, DEL, bidirectional and zero-width marks, lone
# surrogates (unprintable in any encoding).
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ud800-\udfff\ufeff]")


class RawControl(Exception):
    """Output or a message holds a raw control character."""


class Unbounded(Exception):
    """Output has a line longer than MAX_LINE, or more lines than rows."""


def _check_text(text: str, what: str) -> None:
    for line in text.split("\n"):
        found = RAW.search(line)
        if found is not None:
            raise RawControl(f"{what} holds {found.group()!r}: {line[max(0, found.start() - 40) :][:120]!r}")
        if len(line) > MAX_LINE:
            raise Unbounded(f"{what} has a line of {len(line):,} characters: {line[:120]!r}")


def show_all(path: str, data: bytes) -> None:
    """Inspect ``data`` (written at ``path``) as the library and as the command do; check what is shown."""
    try:
        callstate.inspect(data)
    except callstate.CallstateError as exc:
        _check_text(str(exc), "callstate.inspect's error")
    try:
        kind, rows, outside = _cli.inspect_rows(path)
    except callstate.CallstateError as exc:
        _check_text(str(exc), "callstate inspect's error")
        return
    table = _cli.render_inspect(path, kind, rows, outside, as_json=False)
    _check_text(table, "callstate inspect's table")
    if table.count("\n") != len(rows) + 1:
        raise Unbounded(f"{len(rows)} entries drew {table.count(chr(10)) + 1} lines")
    # JSON carries the keys whole (escaped as JSON): no line bound, but no raw control character.
    listed = _cli.render_inspect(path, kind, rows, outside, as_json=True)
    found = RAW.search(listed.replace("\n", " "))
    if found is not None:
        raise RawControl(f"callstate inspect --json holds {found.group()!r}")


_DIR = tempfile.mkdtemp(prefix="callstate-fuzz-inspect-")
_PATH = os.path.join(_DIR, "input.callstate")


def TestOneInput(data: bytes) -> None:
    file, _lazy = fuzz_read.build(data)
    with open(_PATH, "wb") as f:
        f.write(file)
    start = time.perf_counter()
    show_all(_PATH, file)
    elapsed = time.perf_counter() - start
    if elapsed > TIME_LIMIT:
        raise fuzz_read.TooSlow(f"inspect took {elapsed:.2f} s (limit {TIME_LIMIT} s) for {len(file)} bytes")


def main() -> None:
    # Warm up, and check once what the fuzzing is about: keys that draw on a terminal, huge identities.
    key = "Evil\r\x1b[2KEarlyStopping  ok\x07\n\u202e"
    TestOneInput(callstate.dumps({key: 1, "Counter{'what': 0x" + "f" * 9000 + "}": 2}))
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
