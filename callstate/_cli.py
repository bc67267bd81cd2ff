"""The ``callstate`` command: inspect, diff, verify, rename and convert checkpoint files."""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import io
import json
import math
import os
import pickle
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, NoReturn

from . import __version__
from ._encoded import EncodedState, chained_crc
from ._errors import CallstateError, CheckpointError, CorruptCheckpointError, UnsafeCheckpointError
from ._format import MAGIC

EXIT_OK, EXIT_DIFFER, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
exit status:
  0  success; diff: the files hold the same states; verify: every checksum matches
  1  diff: the files differ; verify: a checksum does not match or the file is damaged
  2  usage error, or a file that cannot be read, is damaged, or needs --trusted
  130  interrupted

Files are callstate files or torch checkpoints (Lightning's .ckpt, callstate.loop's .pt); in a
torch checkpoint, the states are those of its "callbacks" entry. Nothing is unpickled beyond the
safe allowlist (callstate's, or torch.load(weights_only=True)) unless --trusted is given.
"""

# Progress is drawn only on a terminal, and only for files at least this large.
PROGRESS_MIN_BYTES = 16 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_KEY_FOR_PARSE = 10_000
# diff shows the old and new values of a field when their reprs are this short together.
_SHORT_VALUES = 60


class UsageError(Exception):
    """A command-line mistake: reported on one line, exit status 2."""


# -- terminal progress ----------------------------------------------------------------------------


class Progress:
    """A one-line progress indicator on stderr, drawn only on a terminal and for large files."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.total = label, total
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
        self.stream.write(f"\r{self.label}: {pct:3d}% ({_human(done)} of {_human(self.total)})")
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
            self.stream.write(f"\r{self.label} ({_human(self.total)}): {time.monotonic() - start:.1f} s")
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


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# -- keys -----------------------------------------------------------------------------------------


def parse_key(key: object) -> tuple[str, dict[str, Any] | str | None]:
    """Return the class name and identity fields of a key like ``Counter{'what': 'epochs'}``.

    The identity is a dict when the part in braces is a Python literal mapping, the raw text when
    it is not (an identity value without a literal repr), and None when the key has no braces.
    """
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}", None
    if not isinstance(key, str):
        return repr(key), None
    brace = key.find("{")
    if brace <= 0 or not key.endswith("}"):
        return key, None
    cls, rest = key[:brace], key[brace:]
    if len(rest) > _MAX_KEY_FOR_PARSE:
        return cls, rest
    try:
        fields = ast.literal_eval(rest)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return cls, rest
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        return cls, rest
    return cls, fields


def _identity_text(identity: dict[str, Any] | str | None) -> str:
    if identity is None:
        return "-"
    if isinstance(identity, str):
        return identity
    return ", ".join(f"{k}={v!r}" for k, v in identity.items()) or "-"


def _key_text(key: object) -> str:
    if isinstance(key, type):
        return f"<class {key.__module__}.{key.__qualname__}>"
    return key if isinstance(key, str) else repr(key)


# -- reading files --------------------------------------------------------------------------------


def _kind(path: str) -> str:
    """Return ``"callstate"`` or ``"torch"`` from a file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a checkpoint file.") from None
    if head == MAGIC:
        return "callstate"
    if head.startswith(_ZIP_MAGIC):
        return "torch"
    raise CorruptCheckpointError(
        f"{path}: neither a callstate file nor a torch checkpoint (torch.save's zip format); its first "
        f"bytes are {head!r}. Check the path.",
        path=path,
    )


class _StorageRef:
    """Stands for a tensor's storage record while a torch pickle is read without running it."""

    def __init__(self, key: str, nbytes: int) -> None:
        self.key, self.nbytes = key, nbytes


class _Stub:
    """Stands for any object named in a torch pickle; records what it was built from."""

    module = name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.state: Any = None
        self.items: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)


class _Dict(dict):  # type: ignore[type-arg]
    """An OrderedDict read from a torch pickle, whose BUILD step (its ``_metadata``) is ignored."""

    def __setstate__(self, state: Any) -> None:
        pass


class _InertUnpickler(pickle.Unpickler):
    """Reads a torch pickle into stubs: no global is ever imported or called."""

    def __init__(self, data: bytes, sizes: Mapping[str, int]) -> None:
        super().__init__(io.BytesIO(data))
        self._sizes = sizes
        self._classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str, /) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")):
            return lambda first, *args, **kwargs: first
        cls = self._classes.get((module, name))
        if cls is None:
            cls = type(name, (_Stub,), {"module": module, "name": name})
            self._classes[module, name] = cls
        return cls

    def persistent_load(self, pid: Any, /) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
            key = str(pid[2])
            return _StorageRef(key, self._sizes.get(key, 0))
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")


def _storage_refs(obj: Any, seen: set[int] | None = None) -> list[_StorageRef]:
    """Return every storage a stub structure refers to."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, _StorageRef):
        return [obj]
    children: list[Any] = []
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif isinstance(obj, _Stub):
        children = [*obj.args, *obj.kwargs.values(), obj.state, *obj.items]
    refs = []
    for child in children:
        refs.extend(_storage_refs(child, seen))
    return refs


class TorchFile:
    """The ``"callbacks"`` of a zip torch checkpoint, read without unpickling anything real."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorruptCheckpointError(
                f"{path}: a damaged torch checkpoint ({exc}); restore it from a copy.", path=path
            ) from None
        names = self.zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CorruptCheckpointError(
                f"{path}: a zip file without data.pkl is not a torch checkpoint.", path=path
            )
        self.prefix = pkl[0][: -len("data.pkl")]
        self.records = {n[len(self.prefix) + 5 :]: n for n in names if n.startswith(self.prefix + "data/")}
        sizes = {k: self.zip.getinfo(n).file_size for k, n in self.records.items()}
        try:
            data = self.zip.read(pkl[0])
            root = _InertUnpickler(data, sizes).load()
        except zipfile.BadZipFile as exc:
            raise CorruptCheckpointError(
                f"{path}: the checkpoint's pickle is damaged ({exc}); restore it from a copy.", path=path
            ) from None
        except Exception as exc:
            raise CorruptCheckpointError(
                f"{path}: the checkpoint's pickle does not decode ({type(exc).__name__}: {exc}); "
                "restore it from a copy.",
                path=path,
            ) from None
        callbacks = _callbacks_entry(root, path)
        self.entries: dict[Any, list[_StorageRef]] = {}
        self.sizes: dict[Any, int] = {}
        for k, v in callbacks.items():
            key = f"<class {k.module}.{k.name}>" if isinstance(k, type) and issubclass(k, _Stub) else k
            refs = _storage_refs(v)
            self.entries[key] = refs
            # The size of the state's pickle, its tensors counted at their data size.
            self.sizes[key] = len(pickle.dumps(_skeleton(v)))

    def bad_records(self, progress: Progress | None = None) -> set[str]:
        """Return the storage keys whose bytes do not match the zip's CRC-32."""
        bad = set()
        done = 0
        for key, name in self.records.items():
            try:
                with self.zip.open(name) as f:
                    while f.read(1 << 20):
                        pass
            except (zipfile.BadZipFile, OSError):
                bad.add(key)
            done += self.zip.getinfo(name).file_size
            if progress is not None:
                progress.update(done)
        if progress is not None:
            progress.update(progress.total, force=True)
        return bad


def _skeleton(obj: Any) -> Any:
    if isinstance(obj, _StorageRef):
        return b"\0" * obj.nbytes
    if isinstance(obj, dict):
        return {_skeleton(k): _skeleton(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_skeleton(v) for v in obj]
    if isinstance(obj, _Stub):
        return (obj.module, obj.name, _skeleton(list(obj.args)), _skeleton(obj.state), _skeleton(obj.items))
    try:
        hash(obj)
    except TypeError:
        return repr(obj)
    return obj


def _callbacks_entry(root: Any, path: str) -> Mapping[Any, Any]:
    """Return a torch checkpoint's ``"callbacks"`` mapping, or raise naming what is wrong."""
    if not isinstance(root, Mapping) or "callbacks" not in root:
        raise CheckpointError(
            f"{path}: a torch checkpoint without a 'callbacks' entry; callstate reads the callback "
            "states of Lightning checkpoints and of callstate.loop.save_checkpoint files.",
            path=path,
            key="callbacks",
        )
    callbacks = root["callbacks"]
    if not isinstance(callbacks, Mapping):
        raise CheckpointError(f"{path}: its 'callbacks' entry is not a mapping.", path=path, key="callbacks")
    return callbacks


def _torch_checkpoint(path: str, trusted: bool) -> dict[Any, Any]:
    """Return the decoded ``"callbacks"`` of a torch checkpoint (torch.load, safe unless trusted)."""
    from ._torch_io import torch_load

    with Progress(f"reading {path}", _file_size(path)).ticking():
        checkpoint = torch_load(path, trusted=trusted)
    return dict(_callbacks_entry(checkpoint, path))


def _full_torch_checkpoint(path: str, trusted: bool) -> dict[Any, Any]:
    from ._torch_io import torch_load

    with Progress(f"reading {path}", _file_size(path)).ticking():
        checkpoint = torch_load(path, trusted=trusted)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("callbacks"), dict):
        raise CheckpointError(
            f"{path}: a torch checkpoint without a 'callbacks' mapping.", path=path, key="callbacks"
        )
    return checkpoint


def _states(path: str, trusted: bool) -> dict[Any, Any]:
    """Return ``{key: state}``: EncodedState values for callstate files, decoded ones for torch."""
    if _kind(path) == "callstate":
        from ._files import read

        return read(path, trusted=trusted, lazy=True)
    return _torch_checkpoint(path, trusted)


# -- inspect --------------------------------------------------------------------------------------


def _callstate_rows(path: str, progress: Progress) -> list[dict[str, Any]]:
    from . import _format

    view, name = _format.open_source(path)
    entries, _meta = _format.parse(view, name)
    rows = []
    done = 0
    for e in entries:
        size = sum(p.nbytes for p in e.parts)
        ok = chained_crc(e.parts) == e.crc
        done += size
        progress.update(done)
        rows.append(_row(e.key, e.codec, size, f"{e.crc:08x}", ok))
    progress.update(progress.total, force=True)
    return rows


def _torch_rows(path: str, progress: Progress) -> tuple[list[dict[str, Any]], list[str]]:
    """Return the rows of a torch checkpoint's callbacks, and its damaged records outside them."""
    tf = TorchFile(path)
    try:
        bad = tf.bad_records(progress)
    finally:
        tf.zip.close()
    rows = []
    for key, refs in tf.entries.items():
        ok = not any(r.key in bad for r in refs)
        rows.append(_row(key, "torch", tf.sizes[key], None, ok))
    claimed = {r.key for refs in tf.entries.values() for r in refs}
    return rows, sorted(tf.records[k] for k in bad - claimed)


def _row(key: Any, codec: str, size: int, checksum: str | None, ok: bool) -> dict[str, Any]:
    cls, identity = parse_key(key)
    return {
        "key": _key_text(key),
        "class": cls,
        "identity": identity,
        "codec": codec,
        "size": size,
        "checksum": checksum,
        "ok": ok,
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    path = args.file
    kind = _kind(path)
    progress = Progress(f"checking {path}", _file_size(path))
    outside: list[str] = []
    try:
        if kind == "callstate":
            rows = _callstate_rows(path, progress)
        else:
            rows, outside = _torch_rows(path, progress)
    finally:
        progress.close()
    if args.json:
        out = {"file": path, "format": kind, "entries": rows}
        if kind == "torch":
            out["damaged_records_outside_callbacks"] = outside
        print(json.dumps(out, indent=2, default=repr))
        return EXIT_OK
    bad = sum(not r["ok"] for r in rows)
    print(
        f"{path}: {'callstate file' if kind == 'callstate' else 'torch checkpoint'}, {len(rows)} "
        f"entr{'y' if len(rows) == 1 else 'ies'}"
        + (f", {bad} damaged" if bad else "")
        + (f"; damaged records outside 'callbacks': {', '.join(outside)}" if outside else "")
    )
    table = [("CLASS", "IDENTITY", "CODEC", "SIZE", "CHECKSUM", "KEY")]
    for r in rows:
        status = "ok" if r["ok"] else "BAD"
        check = f"{r['checksum']} {status}" if r["checksum"] else status
        table.append(
            (r["class"], _identity_text(r["identity"]), r["codec"], _human(r["size"]), check, r["key"])
        )
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        cells = [row[i].ljust(widths[i]) if i != 3 else row[i].rjust(widths[i]) for i in range(5)]
        print("  ".join([*cells, row[5]]))
    return EXIT_OK


# -- verify ---------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    path = args.file
    try:
        kind = _kind(path)
        progress = Progress(f"verifying {path}", _file_size(path))
        try:
            if kind == "callstate":
                rows = _callstate_rows(path, progress)
            else:
                rows, outside = _torch_rows(path, progress)
                if outside:
                    raise CorruptCheckpointError(
                        f"{path}: record(s) {outside!r} outside 'callbacks' (model or optimizer data) do "
                        "not match their CRC-32; restore the file from a copy.",
                        path=path,
                    )
        finally:
            progress.close()
    except CorruptCheckpointError as exc:
        _fail(str(exc))
        return EXIT_DIFFER
    bad = [r["key"] for r in rows if not r["ok"]]
    if bad:
        _fail(
            f"{path}: {len(bad)} of {len(rows)} entries do not match their checksums: "
            + ", ".join(repr(k) for k in bad)
            + ". Restore the file from a copy, or drop those entries."
        )
        return EXIT_DIFFER
    print(f"{path}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, every checksum matches")
    return EXIT_OK


# -- diff -----------------------------------------------------------------------------------------


def _is_array(x: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return "numpy"
    return None


def _same(a: Any, b: Any) -> bool:
    kind_a, kind_b = _is_array(a), _is_array(b)
    if kind_a or kind_b:
        if kind_a != kind_b or a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            return False
        if kind_a == "torch":
            torch = sys.modules["torch"]
            if torch.equal(a, b):
                return True
            nan = a.isnan()
            # Equal NaN positions, then every other value exactly (infinities included: nan_to_num
            # would map them to the dtype's extremes).
            return bool(torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan]))
        np = sys.modules["numpy"]
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:
            return a is b


def _field(path: str, key: Any) -> str:
    if not path and isinstance(key, str) and key.isidentifier():
        return key
    return f"{path}[{key!r}]"


# Past this depth two states are not walked further (decoded states are at most 100 deep), and no
# more than this many differing paths are listed.
_DIFF_DEPTH = 100
_DIFF_PATHS = 1000


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Return the paths (``best``, ``shadow['w']``, ``[2]``) at which two states differ.

    Each pair of objects is compared once, however many paths reach it (shared objects, cycles), so
    the walk is linear in the states' sizes.
    """
    out: list[str] = []
    _differences(a, b, path, out, set(), 0)
    if len(out) > _DIFF_PATHS:  # the walk stopped there
        out[_DIFF_PATHS:] = [f"... and more (the first {_DIFF_PATHS} are shown)"]
    return out


def _differences(a: Any, b: Any, path: str, out: list[str], seen: set[tuple[int, int]], depth: int) -> None:
    if len(out) > _DIFF_PATHS:
        return
    composite = isinstance(a, Mapping | list | tuple) or (
        not _is_array(a) and isinstance(getattr(a, "__dict__", None), dict)
    )
    if composite:
        if (id(a), id(b)) in seen:
            return  # compared already, under the first path that reached them
        seen.add((id(a), id(b)))
        if depth >= _DIFF_DEPTH:
            if a is not b:
                out.append(f"{path} (deeper than {_DIFF_DEPTH} levels: not compared)")
            return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                out.append(_field(path, key))
            else:
                _differences(a[key], b[key], _field(path, key), out, seen, depth + 1)
        return
    if isinstance(a, list | tuple) and type(a) is type(b) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _differences(x, y, f"{path}[{i}]", out, seen, depth + 1)
        return
    out.extend(_leaf_differences(a, b, path, seen, depth))


def _leaf_differences(a: Any, b: Any, path: str, seen: set[tuple[int, int]], depth: int) -> list[str]:
    if type(a) is type(b) and not _is_array(a) and isinstance(getattr(a, "__dict__", None), dict):
        if _same(a, b):
            return []
        attrs_a, attrs_b = vars(a), vars(b)
        out: list[str] = []
        for name in [*attrs_a, *(n for n in attrs_b if n not in attrs_a)]:
            where = f"{path}.{name}" if path else name
            if name not in attrs_a or name not in attrs_b:
                out.append(where)
            else:
                _differences(attrs_a[name], attrs_b[name], where, out, seen, depth + 1)
        return out or [path or "(the whole state)"]
    if _same(a, b):
        return []
    where = path or "(the whole state)"
    if not _is_array(a) and not _is_array(b):
        ra, rb = repr(a), repr(b)
        if len(ra) + len(rb) <= _SHORT_VALUES:
            return [f"{path} ({ra} -> {rb})" if path else f"{ra} -> {rb}"]
    return [where]


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, EncodedState) else value


def cmd_diff(args: argparse.Namespace) -> int:
    a_path, b_path = args.a, args.b
    a, b = _states(a_path, args.trusted), _states(b_path, args.trusted)
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    common = [k for k in a if k in b]
    total = sum(v.size if isinstance(v, EncodedState) else 0 for v in a.values())
    progress = Progress(f"comparing {a_path} and {b_path}", total)
    differing: list[tuple[Any, list[str]]] = []
    done = 0
    try:
        for key in common:
            x, y = a[key], b[key]
            if not (isinstance(x, EncodedState) and isinstance(y, EncodedState) and x == y):
                fields = differences(_decode(x), _decode(y))
                if fields:
                    differing.append((key, fields))
            done += x.size if isinstance(x, EncodedState) else 0
            progress.update(done)
    finally:
        progress.close()
    for key in only_a:
        print(f"only in {a_path}: {_key_text(key)!r}")
    for key in only_b:
        print(f"only in {b_path}: {_key_text(key)!r}")
    for key, fields in differing:
        print(f"differ: {_key_text(key)!r}: {', '.join(fields)}")
    if only_a or only_b or differing:
        print(
            f"{len(only_a)} only in {a_path}, {len(only_b)} only in {b_path}, {len(differing)} differ, "
            f"{len(common) - len(differing)} same"
        )
        return EXIT_DIFFER
    print(f"same: {len(common)} entr{'y' if len(common) == 1 else 'ies'}, equal states")
    return EXIT_OK


# -- rename ---------------------------------------------------------------------------------------


def _check_rename(path: str, keys: Sequence[Any], old: str, new: str) -> None:
    if old == new:
        raise UsageError(f"{path}: OLD and NEW are the same key {old!r}; nothing to rename.")
    if old not in keys:
        close = difflib.get_close_matches(old, [k for k in keys if isinstance(k, str)], n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(repr(c) for c in close)}." if close else ""
        raise UsageError(f"{path}: no entry {old!r}.{hint} List the keys with: callstate inspect {path}")
    if new in keys:
        raise UsageError(
            f"{path}: an entry {new!r} exists already; rename or drop it first, so no state is lost."
        )


def _renamed(mapping: Mapping[Any, Any], old: str, new: str) -> dict[Any, Any]:
    return {(new if k == old else k): v for k, v in mapping.items()}


def cmd_rename(args: argparse.Namespace) -> int:
    path, old, new = args.file, args.old, args.new
    if _kind(path) == "callstate":
        from ._files import read, read_meta, save

        entries = read(path, lazy=True)
        _check_rename(path, list(entries), old, new)
        meta = read_meta(path)
        with Progress(f"writing {path}", _file_size(path)).ticking():
            save(_renamed(entries, old, new), path, meta=meta)
    else:
        import torch

        from ._files import atomic_write

        checkpoint = _full_torch_checkpoint(path, args.trusted)
        _check_rename(path, list(checkpoint["callbacks"]), old, new)
        checkpoint["callbacks"] = _renamed(checkpoint["callbacks"], old, new)
        with Progress(f"writing {path}", _file_size(path)).ticking():
            atomic_write(path, lambda f: torch.save(checkpoint, f))
    print(f"{path}: renamed {old!r} to {new!r}")
    return EXIT_OK


# -- convert --------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    src, dst = args.input, args.output
    if os.path.abspath(src) == os.path.abspath(dst):
        raise UsageError(f"{src}: IN and OUT are the same file; convert writes a new one.")
    if os.path.exists(dst) and not args.force:
        raise UsageError(f"{dst}: exists already; pass --force to replace it.")
    if _kind(src) == "callstate":
        import torch

        from ._files import atomic_write, read

        states = read(src, trusted=args.trusted)
        with Progress(f"writing {dst}", _file_size(src)).ticking():
            atomic_write(dst, lambda f: torch.save({"callbacks": states}, f))
        print(f"{dst}: torch checkpoint with {len(states)} callback state(s) from {src}")
        return EXIT_OK
    from ._files import save

    states = _torch_checkpoint(src, args.trusted)
    bad = [k for k in states if not isinstance(k, str)]
    if bad:
        raise UsageError(
            f"{src}: keys {[_key_text(k) for k in bad]!r} are not strings (Lightning < 1.5 wrote class "
            "objects); load the checkpoint in Lightning and save it again first."
        )
    with Progress(f"writing {dst}", _file_size(src)).ticking():
        save(states, dst)
    print(f"{dst}: callstate file with {len(states)} callback state(s) from {src}")
    return EXIT_OK


# -- the parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="callstate",
        description="Look into, compare, check and fix checkpoints of callback states.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"callstate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    trusted = _Parser(add_help=False)
    trusted.add_argument(
        "--trusted",
        action="store_true",
        help="decode anything the file holds, which can run code from it; only for files you trust",
    )

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[trusted],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add("inspect", "list the entries of a file: class, identity, codec, size, checksum", cmd_inspect)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = add("diff", "compare the states of two files (exit 0 same, 1 different)", cmd_diff)
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p = add("verify", "check every checksum (exit 1 naming the damaged entries)", cmd_verify)
    p.add_argument("file", metavar="FILE")
    p = add("rename", "rename a key in place, atomically, keeping its state's bytes", cmd_rename)
    p.add_argument("file", metavar="FILE")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p = add(
        "convert",
        "turn a torch checkpoint's 'callbacks' into a callstate file, or a callstate file into a "
        "torch checkpoint {'callbacks': ...}",
        cmd_convert,
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return parser


def _fail(message: str) -> None:
    sys.stderr.write("callstate: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``callstate`` command and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_ERROR
        return int(args.func(args))
    except UsageError as exc:
        _fail(f"error: {exc}")
    except FileNotFoundError as exc:
        _fail(f"error: {exc.filename}: no such file")
    except BrokenPipeError:
        # The reader went away (callstate inspect ... | head): not an error worth a message.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UnsafeCheckpointError as exc:
        message = str(exc)
        cut = message.find("nothing was run")
        if cut >= 0:
            message = message[: cut + len("nothing was run")] + "."
        _fail(f"error: {message} Rerun with --trusted only if you trust the file.")
    except (CallstateError, OSError) as exc:
        _fail(f"error: {exc}")
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        _fail(f"internal error: {type(exc).__name__}: {exc}. Please report it.")
    return EXIT_ERROR
