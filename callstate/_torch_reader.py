"""Reading a zip torch checkpoint without running it: its ``"callbacks"``, their sizes and records.

Nothing in the file is imported or called: every global its pickle names becomes a stub that records
what it was built from, and each tensor's storage a reference to its record in the zip. That is enough
to list the callbacks' states, size them and check their bytes against the zip's CRC-32.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import CorruptCheckpointError
from ._torch_io import callbacks_of


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
    """The ``"callbacks"`` of a zip torch checkpoint, read without unpickling anything real.

    Attributes:
        path: the file.
        zip: the open zip file (``close()`` closes it).
        records: ``{storage key: zip member}``, every tensor record of the checkpoint.
        entries: ``{callback key: [storage reference, ...]}``, the records each callback's state uses;
            a class key (Lightning < 1.5) as ``"<class module.name>"``.
        sizes: ``{callback key: bytes}``, the size of each state's pickle, tensors at their data size.

    Raises:
        CorruptCheckpointError: the file is not a zip torch checkpoint, its pickle is damaged, or it has
            no ``"callbacks"`` mapping.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorruptCheckpointError(
                f"{path}: a damaged torch checkpoint ({exc}); restore it from a copy.", path=path
            ) from None
        try:
            self._read(path)
        except BaseException:
            self.zip.close()
            raise

    def _read(self, path: str) -> None:
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
        callbacks = callbacks_of(root, path, required=True)
        self.entries: dict[Any, list[_StorageRef]] = {}
        self.sizes: dict[Any, int] = {}
        for k, v in callbacks.items():
            key = f"<class {k.module}.{k.name}>" if isinstance(k, type) and issubclass(k, _Stub) else k
            refs = _storage_refs(v)
            self.entries[key] = refs
            # The size of the state's pickle, its tensors counted at their data size.
            self.sizes[key] = len(pickle.dumps(_skeleton(v)))

    def bad_records(self, progress: Callable[[int], object] | None = None) -> set[str]:
        """Return the storage keys whose bytes do not match the zip's CRC-32.

        ``progress`` is called after each record with the number of bytes checked so far.
        """
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
                progress(done)
        return bad

    def close(self) -> None:
        """Close the zip file."""
        self.zip.close()


def _skeleton(obj: Any) -> Any:
    """Return ``obj`` as plain data to pickle for its size, each storage as that many bytes."""
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
