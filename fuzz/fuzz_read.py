"""Coverage-guided fuzz target (atheris / libFuzzer) for ``callstate.read`` on bytes.

The contract under test: every input either decodes or raises a ``callstate.CallstateError``
subclass, in bounded time and memory. This target fails (atheris reports a crash and writes the
input as an artifact) when reading an input

- raises any exception that is not a ``CallstateError`` (the original traceback is shown);
- raises a ``CallstateError`` whose chain (``__cause__``/``__context__``, kept even under
  ``raise ... from None``) holds a ``MemoryError``, ``RecursionError`` or ``SystemError``: a bound
  the codec promises was not kept, and the generic "does not decode" wrapper hid it;
- decodes into a value holding a numpy array or scalar, or a torch tensor, that cannot be turned
  into Python values (``.tolist()``, ``.item()``): the decoder let through bytes its library
  cannot represent, and the error would surface later, in the user's code;
- takes more than 1 second (``CALLSTATE_FUZZ_TIME_LIMIT``), measured around each input;
- raises the peak resident memory by more than 512 MiB (``CALLSTATE_FUZZ_RSS_MB``), or allocates
  past the address-space cap set with ``RLIMIT_AS`` (``CALLSTATE_FUZZ_AS_MB`` MiB above what the
  process maps once set up, default 1024): such an allocation fails with ``MemoryError``.

The per-input timer only sees inputs that finish; a real hang (stuck in C code, say) is caught by
libFuzzer's own watchdog: always pass ``-timeout=1`` (seconds per input; a timeout is reported as
"ALARM: working on the last Unit for N seconds" and saved as ``timeout-<sha1>``). Pass
``-rss_limit_mb=N`` too, so libFuzzer's memory watchdog reports a slow leak as an out-of-memory
(``oom-<sha1>``). ``fuzz/run.sh`` passes both.

How an input is read (its first byte, ``m``, chooses), so that mutations get past the CRCs:

- ``m == 0x89`` (the first byte of the callstate magic): the whole input is the file's bytes, given
  to ``callstate.read`` as is. Real callstate files are seeds of this kind.
- ``(m >> 4) & 3 in (0, 1, 2)``: the rest is a ``"data"`` codec payload. It is split on
  ``SEP`` (``b"\\xffOOB"``) at most ``m & 7`` times: the first piece is the payload stream, the
  others its out-of-band buffers. The target wraps the parts in a valid container with the right
  CRCs (``_format.write_container``), so every mutation reaches the decoder.
- ``(m >> 4) & 3 == 3``: the rest is ``version byte (mod 4) | entries region | SEP | index JSON``.
  The target writes the header and footer with correct CRCs around them, and if ``m & 1`` also
  sets each index record's CRC to that of the bytes it points at: this fuzzes the index parser.
- In the last two kinds, ``m & 8`` reads lazily (``read(lazy=True)``, then ``.decode()`` each
  state) and runs ``callstate.inspect`` too.

``CALLSTATE_FUZZ_ALLOW=SystemError,ValueError`` (exception class names) tolerates those in the
checks of the chain and of decoded values, to keep fuzzing while a known failure is being fixed.

Nothing is ever decoded with ``trusted=True``: a fuzzed pickle could run any code.

Usage (see ``fuzz/run.sh`` for the bounded run that CI uses)::

    .venv/bin/python fuzz/fuzz_read.py CORPUS_DIR -timeout=1 -rss_limit_mb=2048 \\
        -max_len=131072 -dict=fuzz/callstate.dict -max_total_time=60
    .venv/bin/python fuzz/fuzz_read.py crash-<sha1>          # re-run one input, with its traceback
    .venv/bin/python fuzz/fuzz_read.py --summary fuzz/corpus  # how each file is read (no fuzzing)
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import resource
import sys
import time
import zlib
from typing import Any

import atheris  # type: ignore[import-untyped]

# numpy, torch and jax are imported first, and not instrumented: callstate imports them only when a
# payload holds an array, tensor or jax array, and the first such input would otherwise pay their
# import time (in CI, a 657-byte input holding a jax array took 1.14 s, past the per-input limit).
with contextlib.suppress(ImportError):
    import numpy  # noqa: F401
with contextlib.suppress(ImportError):
    import jax  # noqa: F401
try:
    import torch

    torch.set_num_threads(1)
except ImportError:
    torch = None  # type: ignore[assignment]

with atheris.instrument_imports(include=["callstate"]):
    import callstate
    from callstate._encoding import _format

import fuzz_types  # fuzz/ is the script's directory, so on sys.path

TIME_LIMIT = float(os.environ.get("CALLSTATE_FUZZ_TIME_LIMIT", "1.0"))
RSS_GROWTH_MB = int(os.environ.get("CALLSTATE_FUZZ_RSS_MB", "512"))
AS_HEADROOM_MB = int(os.environ.get("CALLSTATE_FUZZ_AS_MB", "1024"))

RAW = _format.MAGIC[0]  # 0x89
SEP = b"\xffOOB"
KIND_INDEX = 3
HIDDEN = (MemoryError, RecursionError, SystemError)
ALLOW = frozenset(filter(None, os.environ.get("CALLSTATE_FUZZ_ALLOW", "").split(",")))


class TooSlow(Exception):
    """An input took longer than TIME_LIMIT seconds."""


class MemoryBlowUp(Exception):
    """An input raised the peak resident memory by more than RSS_GROWTH_MB."""


class HiddenFailure(Exception):
    """A CallstateError was raised, but a broken bound (MemoryError, RecursionError) is under it."""


class UnusableValue(Exception):
    """An input decoded, but an array or tensor in the value raises when it is used."""


# -- building the file from the fuzz input --------------------------------------------------------


def _crc(parts: list[bytes]) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def wrap_payload(rest: bytes, n_oob: int) -> bytes:
    """A valid one-entry file whose "data" entry is ``rest``, split into stream and buffers."""
    parts = rest.split(SEP, n_oob) if n_oob else [rest]
    crc = zlib.crc32(parts[0]) if len(parts) == 1 else _crc(parts)
    out = io.BytesIO()
    _format.write_container(out, [("k", "data", tuple(parts), crc, {})], {})
    return out.getvalue()


def _fix_crcs(region: bytes, index: bytes) -> bytes:
    """Set each index record's CRC to that of the region bytes it points at (when it can tell)."""
    try:
        parsed = json.loads(index)
    except (ValueError, RecursionError):
        return index
    entries = parsed.get("entries") if type(parsed) is dict else None
    if type(entries) is not list:
        return index
    changed = False
    for item in entries:
        if type(item) is not list or len(item) < 5 or type(item[2]) is not int or type(item[3]) is not list:
            continue
        sizes = item[3]
        if len(sizes) > 256 or not all(type(s) is int and 0 <= s <= len(region) for s in sizes):
            continue
        pos = item[2] - _format.HEADER.size
        if not 0 <= pos <= len(region):
            continue
        crc = 0
        for s in sizes:
            crc = zlib.crc32(region[pos : pos + s], crc)
            pos += s
        if item[4] != crc:
            item[4] = crc
            changed = True
    if not changed:
        return index
    try:
        return json.dumps(parsed, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        return index


def wrap_index(rest: bytes, fix_crcs: bool) -> bytes:
    """A file with a valid header and footer around a fuzzed entries region and index."""
    version = rest[0] % 4 if rest else 2
    region, sep, index = rest[1:].partition(SEP)
    if not sep:
        region, index = b"", region
    if fix_crcs:
        index = _fix_crcs(region, index)
    head = _format.HEADER.pack(_format.MAGIC, version, 0, 0)[:12]
    head += zlib.crc32(head).to_bytes(4, "little")
    body = _format.FOOTER.pack(_format.HEADER.size + len(region), len(index), zlib.crc32(index), 0, b"")[
        : _format.FOOTER_CRC_SPAN
    ]
    footer = body + zlib.crc32(body).to_bytes(4, "little") + _format.END_MAGIC
    return head + region + index + footer


def build(data: bytes) -> tuple[bytes, bool]:
    """Return ``(file bytes, lazy)`` for a fuzz input (see the module docstring)."""
    if not data or data[0] == RAW:
        return data, False
    m, rest = data[0], data[1:]
    lazy = bool(m & 8)
    if (m >> 4) & 3 == KIND_INDEX:
        return wrap_index(rest, bool(m & 1)), lazy
    return wrap_payload(rest, m & 7), lazy


# -- the checks -----------------------------------------------------------------------------------


def _check_chain(exc: BaseException) -> None:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, HIDDEN) and type(link).__name__ not in ALLOW:
            raise HiddenFailure(f"{type(exc).__name__} hides a {type(link).__name__}: {link!r:.300}") from exc
        link = link.__cause__ or link.__context__


def read_all(file: bytes, lazy: bool) -> list[Any]:
    """Read ``file`` the way the input asked; return the decoded states."""
    if not lazy:
        return list(callstate.read(file).values())
    callstate.inspect(file)
    return [state.decode() for state in callstate.read(file, lazy=True).values()]


_np = sys.modules.get("numpy")


def touch(value: Any) -> None:
    """Turn every array, numpy scalar and tensor in ``value`` into Python values.

    Each object is visited once (by id), so shared and cyclic values cost their size, never their
    number of paths; nothing is hashed, compared or printed (a shared tuple DAG would make those
    exponential).
    """
    seen: set[int] = set()
    stack = [value]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        kind = type(obj)
        if kind in (list, tuple, set, frozenset) or isinstance(obj, collections.deque):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif kind is fuzz_types.Point:
            stack += (obj.x, obj.y)
        elif kind is fuzz_types.Box:
            stack.append(obj.value)
        # Arrays are flattened, so that an empty one of shape (2**40, 0) costs nothing (its
        # tolist() alone would build 2**40 lists), and converted a chunk at a time.
        elif _np is not None and kind is _np.ndarray:
            _use_flat(obj, obj.size)
        elif _np is not None and isinstance(obj, _np.generic):
            _use(obj, obj.item)
        elif torch is not None and isinstance(obj, torch.Tensor) and _listable(obj.dtype):
            _use_flat(obj.detach(), obj.numel())


_LISTABLE: dict[Any, bool] = {}


def _listable(dtype: Any) -> bool:
    """Whether torch can turn any tensor of ``dtype`` into Python values (not bits16, uint4, ...)."""
    known = _LISTABLE.get(dtype)
    if known is None:
        try:
            torch.frombuffer(bytearray(max(dtype.itemsize, 1)), dtype=torch.uint8).view(dtype).tolist()
            known = True
        except Exception:
            known = False
        _LISTABLE[dtype] = known
    return known


def _use_flat(array: Any, size: int) -> None:
    flat = array.reshape(-1)
    for start in range(0, size, 1 << 14):
        _use(array, flat[start : start + (1 << 14)].tolist)


def _use(obj: Any, method: Any) -> None:
    try:
        method()
    except Exception as exc:
        if type(exc).__name__ not in ALLOW:
            raise UnusableValue(
                f"a decoded {type(obj).__name__} raises {type(exc).__name__} when used: {exc!s:.200}"
            ) from exc


def _maxrss_mb() -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


_baseline_rss = 0.0


def TestOneInput(data: bytes) -> None:
    try:
        check_one(data)
    except BaseException:
        # Lift the address-space cap, so that libFuzzer can still report the failure and write
        # the input out (a MemoryError may leave the heap near the cap).
        resource.setrlimit(resource.RLIMIT_AS, resource.getrlimit(resource.RLIMIT_AS)[1:] * 2)
        raise


def check_one(data: bytes) -> None:
    """Read one fuzz input; raise if it breaks the contract (see the module docstring)."""
    file, lazy = build(data)
    start = time.perf_counter()
    states = None
    try:
        states = read_all(file, lazy)
    except callstate.CallstateError as exc:
        _check_chain(exc)
    elapsed = time.perf_counter() - start
    if elapsed > TIME_LIMIT:
        raise TooSlow(f"reading took {elapsed:.2f} s (limit {TIME_LIMIT} s) for a {len(file)}-byte file")
    if states is not None:
        touch(states)
    rss = _maxrss_mb()
    if rss - _baseline_rss > RSS_GROWTH_MB:
        raise MemoryBlowUp(
            f"peak RSS rose to {rss:.0f} MiB, {rss - _baseline_rss:.0f} MiB above the "
            f"{_baseline_rss:.0f} MiB the target started with (limit {RSS_GROWTH_MB} MiB), "
            f"for a {len(file)}-byte file"
        )


# -- set-up ---------------------------------------------------------------------------------------


def warm_up() -> None:
    """Decode each kind of value once, so no lazy import or first-call cost lands on a fuzz input."""
    import datetime
    import decimal
    import fractions
    import pathlib
    import uuid

    state: dict[str, Any] = {
        "scalars": [None, True, 1, -(2**70), 1.5, 2j, "s" * 1100, b"y" * 1100, bytearray(b"a")],
        "containers": (
            (1,),
            {2},
            frozenset({3}),
            collections.OrderedDict(a=1),
            collections.Counter("ab"),
            collections.defaultdict(list),
            collections.deque([1], maxlen=3),
            [0.5] * 9,
            [7] * 9,
        ),
        "stdlib": [
            datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
            datetime.date(2024, 1, 2),
            datetime.time(1, tzinfo=datetime.timezone(datetime.timedelta(hours=1), "X")),
            decimal.Decimal("1.5"),
            fractions.Fraction(1, 3),
            uuid.UUID(int=5),
            pathlib.PurePosixPath("/a"),
            range(3),
            slice(1, None),
        ],
        "registered": [fuzz_types.Point(1, 2), fuzz_types.Box([1])],
    }
    if "numpy" in sys.modules:
        np = sys.modules["numpy"]
        state["numpy"] = [
            np.arange(3),
            np.zeros(70000, np.uint8),
            np.float32(1),
            np.dtype("<f8"),
            np.array(["a"]),
            np.array([1], "<M8[s]"),
            np.array([True]),
        ]
    if torch is not None:
        state["torch"] = [
            torch.ones(2),
            torch.zeros(70000, dtype=torch.uint8),
            torch.nn.Parameter(torch.ones(1)),
            torch.Size([1]),
            torch.device("cpu"),
            torch.float16,
            torch.ones(1, dtype=torch.bool),
        ]
    data = callstate.dumps(state)
    for _ in range(3):
        callstate.read(data)
        TestOneInput(data)
    for bad in (
        b"",
        data[:-1],
        b"\x00\x00",
        b"\x00W\x04none",
        b"\x00A\x03<f8\x01\x05" + bytes(40),
        b"\x30\x02{}",
    ):
        TestOneInput(bad)


def cap_address_space() -> None:
    """Make an allocation of more than AS_HEADROOM_MB above the current mappings fail."""
    try:
        with open("/proc/self/status") as f:
            vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return  # not Linux: RLIMIT_AS is not enforced there anyway; -rss_limit_mb still applies
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kb * 1024 + AS_HEADROOM_MB * (1 << 20)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def summary(paths: list[str]) -> int:
    """Print how each input file is read (outcome and, for errors, the hidden cause); no fuzzing."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, name) for name in os.listdir(path))
        else:
            files.append(path)
    tally: collections.Counter[str] = collections.Counter()
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        file, lazy = build(data)
        start = time.perf_counter()
        try:
            touch(read_all(file, lazy))
            outcome = "decodes"
        except callstate.CallstateError as exc:
            cause = exc.__cause__ or exc.__context__
            outcome = type(exc).__name__ + (f" <- {type(cause).__name__}" if cause is not None else "")
            detail = f"{exc!s:.160}"
        except Exception as exc:
            outcome = f"NOT A CallstateError: {type(exc).__name__}"
            detail = f"{exc!r:.160}"
        else:
            detail = ""
        elapsed = time.perf_counter() - start
        tally[outcome] += 1
        print(f"{elapsed * 1e3:8.2f} ms  {os.path.basename(path)}: {outcome}  {detail}")
    print()
    for outcome, count in tally.most_common():
        print(f"{count:6d}  {outcome}")
    return 0


def main() -> None:
    fuzz_types.register()
    if sys.argv[1:2] == ["--summary"]:
        sys.exit(summary(sys.argv[2:]))
    warm_up()
    global _baseline_rss
    _baseline_rss = _maxrss_mb()
    cap_address_space()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
