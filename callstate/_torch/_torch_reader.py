"""Reading a zip torch checkpoint without running it: its ``"callbacks"``, their sizes and records.

Nothing in the file is imported or called: every global its pickle names becomes a stub that records
what it was built from, and each tensor's storage a reference to its record in the zip. That is enough
to list the callbacks' states, size them and check their bytes against the zip's CRC-32.

Every step is bounded by what the file holds: the zip is checked against its own bytes (no compressed,
encrypted, duplicate or overlapping member, each within the file), the pickle's opcodes are checked
before anything is built from them (tuple nesting, memo indices), and the objects are walked once each
(a memo) with a depth cap. :func:`scan` is the same check, run before every ``torch.load`` callstate
makes, so that what ``callstate inspect`` shows is what every loading function loads.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from .._core import VERSIONS_KEY, checked_versions
from .._encoding import open_regular
from .._io import StorageOptions, fetch_whole, is_url, local_path
from .._support import escape, show
from ..errors import CorruptCheckpointError
from ._pickle_scan import MAX_DEPTH, Budget, TooDeep, TooLarge, check_opcodes
from ._torch_layout import callbacks_of
from ._torch_zip import TorchZip

# Each object is walked once for the depth check; the per-callback walks for records and sizes
# may see an object shared between callbacks again, up to this many times the number of objects.
_WALK_FACTOR = 8


# Bytes per element of each storage class torch.save names (torch.storage._dtype_to_storage_type_map,
# and UntypedStorage for the dtypes that have no typed storage class).
STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "BFloat16Storage": 2,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "QInt8Storage": 1,
    "QInt32Storage": 4,
    "QUInt8Storage": 1,
    "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
}
_REBUILDS = frozenset(
    ("torch._utils", name) for name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter")
)


# What a call of a global costs torch.load, charged by the stand-in before it records the call.
_Spend = Callable[[tuple[Any, ...], dict[str, Any]], None]


class _StorageRef:
    """Stands for a tensor's storage record while a torch pickle is read without running it."""

    def __init__(self, key: str, nbytes: int) -> None:
        self.key, self.nbytes = key, nbytes


class _Stub:
    """Stands for any object named in a torch pickle; records what it was built from."""

    module = name = ""
    # What torch.load(weights_only=True) spends calling the real global with these arguments, charged
    # here first (see _spending); None for a global whose call costs no more than its arguments.
    spend: _Spend | None = None

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        # NEWOBJ calls __new__ alone (no __init__), REDUCE calls the class: both record here.
        if cls.spend is not None:
            cls.spend(args, kwargs)
        self = super().__new__(cls)
        self.args, self.kwargs = args, kwargs
        self.state = None
        self.items = []
        return self

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)


# Of the globals torch.load(weights_only=True) calls, those whose call costs more than the objects
# given to it, which the opcode scan cannot see (a call is one stand-in to it): the ones that
# allocate from an int (a bytearray, a storage or a legacy tensor of n elements: 17 bytes of pickle
# for a GB), and the ones that hash every element of an iterable (a set, a Counter: a tuple shared
# 2**40 times over through the memo, a few hundred bytes, hashes for hours).
_TORCH_MODULES = frozenset({"torch", "torch.storage", "torch.cuda", "torch.sparse", "torch.cuda.sparse"})
_HASHES_ELEMENTS = frozenset({("builtins", "set"), ("builtins", "frozenset"), ("collections", "Counter")})
_WIDEST = 16  # the bytes of the widest element a storage or tensor class may have


def _spending(module: str, name: str, budget: Budget) -> _Spend | None:
    """Return what charges a call of the global ``module.name`` against ``budget``, if it costs more."""
    what = f"a call of {escape(f'{module}.{name}', 80)}"
    if (module, name) in _HASHES_ELEMENTS:

        def hashing(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            memo: dict[int, int] = {}
            for iterable in (*args, *kwargs.values()):
                for element in _elements_of(iterable):
                    budget.hashing(_hash_cost(element, memo), None)

        return _refusing(hashing, what)
    if (module, name) == ("builtins", "bytearray"):
        itemsize = 1
    elif module in _TORCH_MODULES and name.endswith(("Storage", "Tensor")):
        itemsize = STORAGE_ITEMSIZE.get(name, _WIDEST)
    else:
        return None

    def allocating(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        budget.charge(itemsize * _element_count((*args, *kwargs.values())), None)

    return _refusing(allocating, what)


def _refusing(charge: _Spend, what: str) -> _Spend:
    """Return ``charge`` with its refusal naming the call."""

    def checked(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            charge(args, kwargs)
        except TooLarge as exc:
            raise TooLarge(f"{what} that torch.load would make, and {exc}") from None

    return checked


def _element_count(args: tuple[Any, ...]) -> int:
    """The elements a storage or tensor built from ``args`` holds: the product of its int sizes."""
    count = 1
    for arg in args:
        if type(arg) is int:
            count *= max(arg, 0)
        elif type(arg) in (tuple, list) and 0 < len(arg) <= 64 and all(type(n) is int for n in arg):
            for n in arg:
                count *= max(n, 0)
    return count


def _elements_of(iterable: Any) -> Iterator[Any]:
    """The elements a set or Counter built from ``iterable`` hashes (a dict's keys)."""
    if isinstance(iterable, (tuple, list, set, frozenset, dict)):
        yield from iterable


def _hash_cost(value: Any, memo: dict[int, int]) -> int:
    """The steps hashing ``value`` takes: a tuple hashes every element (no cache), through sharing."""
    if type(value) is not tuple:
        return 1
    known = memo.get(id(value))
    if known is None:
        # Tuples nest at most MAX_DEPTH levels (the opcode scan refused deeper), so this recursion
        # is bounded, and the memo makes it linear in the tuples read.
        known = memo[id(value)] = 1 + sum(_hash_cost(item, memo) for item in value)
    return known


class _Dict(dict):  # type: ignore[type-arg]
    """An OrderedDict read from a torch pickle, whose BUILD step (its ``_metadata``) is ignored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # torch.save writes OrderedDict() then its items (SETITEMS, whose keys the opcode check
        # charges); built from an iterable, it would hash keys the check never saw.
        if args or kwargs:
            raise pickle.UnpicklingError("an OrderedDict built from arguments, which torch.save never writes")
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


class _Rebuild:
    """Stands for torch's tensor rebuild functions: the tensor is its storage."""

    def __call__(self, first: Any, *args: Any, **kwargs: Any) -> Any:
        # Only a storage: anything else (a tuple the opcode check charged as a plain object) would
        # come out of the call as what it is.
        if not isinstance(first, _StorageRef):
            raise pickle.UnpicklingError(f"a tensor rebuilt from a {type(first).__name__}, not a storage")
        return first

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a BUILD applied to a tensor rebuild function")


_first = _Rebuild()


class _InertUnpickler(pickle.Unpickler):
    """Reads a torch pickle into stubs: no global is ever imported or called.

    ``records`` maps each storage key to the size of its record in the zip; a storage whose key has no
    record, or whose declared size differs from its record's, is refused (torch.load refuses it too).
    """

    def __init__(self, data: bytes, records: Mapping[str, int], budget: Budget | None = None) -> None:
        super().__init__(io.BytesIO(data))
        self._records = records
        self._classes: dict[tuple[str, str], type] = {}
        self._budget = budget if budget is not None else Budget(len(data))

    def find_class(self, module: str, name: str, /) -> Any:
        # Names as the default find_class (and torch.load) maps them: a protocol 2 pickle, as
        # torch.save writes, names the builtins module "__builtin__", as Python 2 did.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict
        if (module, name) in _REBUILDS:
            return _first
        cls = self._classes.get((module, name))
        if cls is None:
            spend = _spending(module, name, self._budget)
            hook = staticmethod(spend) if spend is not None else None
            cls = type(name, (_Stub,), {"module": module, "name": name, "spend": hook})
            self._classes[module, name] = cls
        return cls

    def persistent_load(self, pid: Any, /) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {show(pid, 80)}")
        _tag, storage_type, key, _location, numel = pid
        itemsize = STORAGE_ITEMSIZE.get(getattr(storage_type, "name", ""))
        if itemsize is None or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"a storage of unknown type or size: {show(pid, 120)}")
        size = self._records.get(key)
        if size is None:
            raise pickle.UnpicklingError(
                f"the storage {show(key, 40)} has no record data/{escape(key, 40)} in the zip"
            )
        if numel * itemsize != size:
            raise pickle.UnpicklingError(
                f"the storage {show(key, 40)} declares {numel * itemsize} bytes but its record holds {size}"
            )
        return _StorageRef(key, size)


def _children(obj: Any) -> Iterator[Any]:
    """The objects ``obj`` holds, for the walks (leaves hold none)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield v
    elif isinstance(obj, list | tuple | set | frozenset):
        yield from obj
    elif isinstance(obj, _Stub):
        yield from obj.args
        yield from obj.kwargs.values()
        yield obj.state
        yield from obj.items


def _is_container(obj: Any) -> bool:
    return isinstance(obj, dict | list | tuple | set | frozenset | _Stub)


def _check_depth(root: Any) -> int:
    """Return how many containers ``root`` holds; raise TooDeep if they nest beyond MAX_DEPTH.

    Each container is visited once (a DAG that shares one list many times costs its size, not its
    expansion) and the walk keeps its own stack, so no nesting can exhaust Python's. Heights are
    computed after the children's, so a chain built by appending lists into lists in any order is
    measured at its true depth.
    """
    heights: dict[int, int] = {}  # id -> nesting; 0 while the container is being walked (a cycle)
    if not _is_container(root):
        return 0
    heights[id(root)] = 0
    frames: list[tuple[Any, Iterator[Any], list[int]]] = [(root, _children(root), [0])]
    while frames:
        obj, children, tallest = frames[-1]
        child = next(children, _DONE)
        if child is _DONE:
            frames.pop()
            heights[id(obj)] = height = tallest[0] + 1
            if height > MAX_DEPTH:
                raise TooDeep(f"containers nested more than {MAX_DEPTH} levels deep")
            if frames:
                frames[-1][2][0] = max(frames[-1][2][0], height)
        elif _is_container(child):
            known = heights.get(id(child))
            if known is not None:
                tallest[0] = max(tallest[0], known)
            else:
                heights[id(child)] = 0
                frames.append((child, _children(child), [0]))
    return len(heights)


_DONE = object()


class _Sizer:
    """Walks one callback's state once (a memo): the records it uses and the size of its pickle.

    The size is that of the state pickled with each storage as its data's size in bytes; the walk
    recurses, which the depth check before it keeps within MAX_DEPTH levels.
    """

    def __init__(self, budget: list[int]) -> None:
        self.memo: dict[int, Any] = {}
        self.refs: dict[str, _StorageRef] = {}
        self.budget = budget  # shared by the callbacks' walks: visits left

    def size(self, state: Any) -> int:
        skeleton = self.skeleton(state)
        return len(pickle.dumps(skeleton, protocol=4)) + sum(r.nbytes for r in self.refs.values())

    def skeleton(self, obj: Any) -> Any:
        self.budget[0] -= 1
        if self.budget[0] < 0:
            raise TooDeep("objects shared between callbacks so often that walking them would not end")
        if not _is_container(obj):
            return self._leaf(obj)
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        self.memo[id(obj)] = None  # a cycle through a tuple is cut here
        if isinstance(obj, dict):
            built: dict[Any, Any] = {}
            self.memo[id(obj)] = built
            for k, v in obj.items():
                built[self._key(k)] = self.skeleton(v)
            return built
        if isinstance(obj, list):
            items: list[Any] = []
            self.memo[id(obj)] = items
            items.extend(self.skeleton(v) for v in obj)
            return items
        if isinstance(obj, _Stub):
            made: Any = (obj.module, obj.name, [self.skeleton(v) for v in _children(obj)])
        else:  # tuple, set, frozenset
            made = tuple(self.skeleton(v) for v in obj)
        self.memo[id(obj)] = made
        return made

    def _key(self, key: Any) -> Any:
        made = self.skeleton(key)
        try:
            hash(made)
        except TypeError:
            return f"<key {len(self.memo)}>"
        return made

    def _leaf(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            self.refs[obj.key] = obj
            return b""
        if obj is None or isinstance(obj, int | float | complex | str | bytes):
            return obj
        if isinstance(obj, type) and issubclass(obj, _Stub):
            return f"{obj.module}.{obj.name}"
        return type(obj).__name__


class Scan:
    """A torch checkpoint's zip and pickle, checked and read into stubs within every bound.

    Attributes:
        zip: the checked zip (``zip.zip`` is the open ``ZipFile``).
        root: what the pickle holds, as stubs; storages as references to their records.
        objects: how many containers ``root`` holds.
    """

    def __init__(self, file: IO[bytes], name: str) -> None:
        self.zip = TorchZip(file, name)
        try:
            self.root, self.objects = _read_pickle(self.zip, name)
        except BaseException:
            self.zip.zip.close()
            raise


def _read_pickle(z: TorchZip, name: str) -> tuple[Any, int]:
    try:
        budget = check_opcodes(z.pickle)
        root = _InertUnpickler(z.pickle, z.record_sizes(), budget).load()
        return root, _check_depth(root)
    except TooDeep as exc:
        raise CorruptCheckpointError(
            f"{escape(name)}: its pickle holds {exc}, more than callstate reads (a torch.save of real states "
            "nests far less); it was altered, or holds a structure to flatten before saving.",
            path=name,
        ) from None
    except TooLarge as exc:
        raise CorruptCheckpointError(
            f"{escape(name)}: its pickle would build {exc}, more than callstate (or torch.load) should "
            f"spend on a pickle of {len(z.pickle)} bytes; it was crafted or altered: restore it from a copy.",
            path=name,
        ) from None
    except Exception as exc:
        raise CorruptCheckpointError(
            f"{escape(name)}: the checkpoint's pickle does not decode ({type(exc).__name__}: "
            f"{escape(str(exc), 200)}); restore it from a copy.",
            path=name,
        ) from None


def scan(file: IO[bytes], name: str) -> None:
    """Check a torch checkpoint within every bound, as a pre-scan before ``torch.load`` reads it.

    Reads the zip directory and the pickle only, never the tensors' data, and leaves ``file`` at its start.

    Raises:
        CorruptCheckpointError: the file is damaged, altered, or beyond a bound (named in the message).
    """
    Scan(file, name).zip.zip.close()
    file.seek(0)


class TorchFile:
    """The ``"callbacks"`` of a zip torch checkpoint, read without unpickling anything real.

    Attributes:
        path: the file.
        zip: the open zip file (``close()`` closes it).
        records: ``{storage key: zip member}``, every tensor record of the checkpoint.
        entries: ``{callback key: [storage reference, ...]}``, the records each callback's state uses;
            a class key (Lightning < 1.5) as ``"<class module.name>"``.
        sizes: ``{callback key: bytes}``, the size of each state's pickle, tensors at their data size.
        versions: ``{callback key: version}`` of the states not at version 1, from the checkpoint's
            ``"callstate:versions"`` (at its top level, as ``CallstateCallback`` writes it, or in
            ``"callbacks"``, as ``callstate.loop`` does).

    Raises:
        CorruptCheckpointError: the file is not a zip torch checkpoint, its zip or pickle is damaged or
            beyond a bound, or it has no ``"callbacks"`` mapping.
    """

    def __init__(self, path: str, storage_options: StorageOptions = None) -> None:
        self.path = path
        # Closed by close(): the zip reads from it. A URL's object is fetched whole, as torch_load does.
        self._file: IO[bytes] = (
            io.BytesIO(fetch_whole(path, storage_options)) if is_url(path) else open_regular(local_path(path))
        )
        try:
            found = Scan(self._file, path)
        except BaseException:
            self._file.close()
            raise
        self.zip = found.zip.zip
        try:
            self._read(found, path)
        except BaseException:
            self.close()
            raise

    def _read(self, found: Scan, path: str) -> None:
        self.prefix = found.zip.prefix
        self.records = found.zip.records
        callbacks = callbacks_of(found.root, path, required=True)
        self.versions: dict[Any, int] = {}
        for holder in (found.root, callbacks):
            if isinstance(holder, Mapping) and VERSIONS_KEY in holder:
                self.versions.update(checked_versions(holder[VERSIONS_KEY], path))
        self.entries: dict[Any, list[_StorageRef]] = {}
        self.sizes: dict[Any, int] = {}
        budget = [_WALK_FACTOR * found.objects + 100_000]
        for k, v in callbacks.items():
            if k == VERSIONS_KEY:  # the states' versions (read above), not a callback's state
                continue
            key = f"<class {k.module}.{k.name}>" if isinstance(k, type) and issubclass(k, _Stub) else k
            sizer = _Sizer(budget)
            try:
                self.sizes[key] = sizer.size(v)
            except TooDeep as exc:
                raise CorruptCheckpointError(f"{escape(path)}: {exc}; it was altered.", path=path) from None
            self.entries[key] = list(sizer.refs.values())

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
        self._file.close()
