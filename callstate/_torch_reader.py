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

import io
import pickle
import pickletools
import sys
import zipfile
from array import array
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from ._allowance import ALLOC_FACTOR, ALLOC_SLACK, HASH_FACTOR, HASH_SLACK
from ._errors import CorruptCheckpointError
from ._format import open_regular
from ._show import escape, show
from ._torch_io import callbacks_of
from ._versions import VERSIONS_KEY, checked_versions

# Nesting deeper than this is refused. States in practice nest under 20 levels; at 200 every walk
# made afterwards (this reader's sizes, torch.load, repr, diff) stays well inside Python's recursion
# limit of 1000, and a tuple nested this deep hashes in microseconds. CPython hashes a nested tuple
# recursively with no check (a 200,000-deep tuple key crashes the process with SIGSEGV), so tuple
# nesting is checked from the opcodes, before the unpickler builds and hashes anything.
MAX_DEPTH = 200
# A data.pkl larger than this is refused: the pickle is read whole into memory (torch.load does too)
# and its opcodes walked; 256 MiB is tens of millions of Python objects, where a state would hold a tensor.
MAX_PICKLE = 256 * 2**20
# Small records that torch.load parses (version, byteorder, ...) are read only up to this size.
_MAX_SMALL_RECORD = 64
# Each object is walked once for the depth check; the per-callback walks for records and sizes
# may see an object shared between callbacks again, up to this many times the number of objects.
_WALK_FACTOR = 8

_STORED = zipfile.ZIP_STORED
# The general-purpose flags of a plain stored member: sizes after the data (bit 3), UTF-8 names (bit 11).
_PLAIN_FLAGS = 0x8 | 0x800
_ZIP_MAGIC = b"PK\x03\x04"

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


class _StorageRef:
    """Stands for a tensor's storage record while a torch pickle is read without running it."""

    def __init__(self, key: str, nbytes: int) -> None:
        self.key, self.nbytes = key, nbytes


class _Stub:
    """Stands for any object named in a torch pickle; records what it was built from."""

    module = name = ""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        # NEWOBJ calls __new__ alone (no __init__), REDUCE calls the class: both record here.
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

    def __init__(self, data: bytes, records: Mapping[str, int]) -> None:
        super().__init__(io.BytesIO(data))
        self._records = records
        self._classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str, /) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict
        if (module, name) in _REBUILDS:
            return _first
        cls = self._classes.get((module, name))
        if cls is None:
            cls = type(name, (_Stub,), {"module": module, "name": name})
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


def _effects() -> dict[str, tuple[int, int, int]]:
    """``{opcode name: (kind, objects popped below any mark, objects pushed)}`` for the stack simulation."""
    table = {}
    for op in pickletools.opcodes:
        before = op.stack_before
        marked = pickletools.markobject in before
        below = before.index(pickletools.markobject) if marked else len(before)
        table[op.name] = (_POPS_MARK if marked else _PLAIN, below, len(op.stack_after))
    for name in ("TUPLE", "FROZENSET"):
        table[name] = (_TUPLE_MARK, 0, 1)
    for n, name in enumerate(("TUPLE1", "TUPLE2", "TUPLE3"), 1):
        table[name] = (_TUPLE_N, n, 1)
    for name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
        table[name] = (_PUT, 0, 0)
    for name in ("GET", "BINGET", "LONG_BINGET"):
        table[name] = (_GET, 0, 1)
    table["MARK"], table["DUP"], table["POP"] = (_MARK, 0, 0), (_DUP, 0, 1), (_POP, 1, 0)
    return table


_PLAIN, _POPS_MARK, _TUPLE_MARK, _TUPLE_N, _PUT, _GET, _MARK, _DUP, _POP = range(9)
_EFFECTS = _effects()

# Memory: reading a pickle of N bytes may build objects of ALLOC_FACTOR * N + ALLOC_SLACK bytes (the
# codec's allowance), counting what the unpickler builds, its memo and stack, this module's stand-ins
# and its own bookkeeping (the simulated stack and memo, the depth walk's table). Each opcode is
# charged before the unpickler runs, so a pickle past the allowance is refused having built nothing.
# The charges below are CPython 3.11's sizes on 64-bit, rounded up, and were checked by measuring peak
# RSS per opcode of floods of each kind (tests/test_torch_reader_bounds.py).
# Each container the depth walk visits: its entry in the walk's table (an int key, a dict slot).
_WALKED = 160
# Each slot the unpickler's stack, the simulated stack or the memo grows by (two arrays of 8-byte
# items, grown by half again).
_SLOT = 32
# Each item added to a list, dict (a key and a value), set or stand-in (an item of its items list).
# A dict's pair is charged per pair (SETITEM) or per object from the mark (SETITEMS, DICT: two a pair).
_PER_ITEM = {"APPEND": 16, "APPENDS": 16, "LIST": 16, "TUPLE": 8, "SETITEM": 128, "SETITEMS": 64, "DICT": 64}
_PER_ITEM.update({"ADDITEMS": 128, "FROZENSET": 128})
# The opcodes whose argument becomes an object on the stack (an int, a str, bytes), charged at its size.
_DATA = frozenset(
    {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING"}
    | {"SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES"}
    | {"SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "PERSID"}
)
# What each opcode builds, besides its items and any value read from the pickle (charged at its size):
# a stand-in class per distinct global (a type, its dict, the unpickler's cache), a stand-in object
# per call (an instance, its dict, its args, kwargs and items), a storage reference.
_STUB_CLASS = 4096
_STUB = 768 + _WALKED
_BUILDS = {
    "EMPTY_DICT": 96 + _WALKED,
    "DICT": 96 + _WALKED,
    "EMPTY_LIST": 64 + _WALKED,
    "LIST": 64 + _WALKED,
    "EMPTY_SET": 224 + _WALKED,
    "FROZENSET": 224 + _WALKED,
    "TUPLE": 48 + _WALKED,
    "TUPLE1": 56 + _WALKED,
    "TUPLE2": 64 + _WALKED,
    "TUPLE3": 72 + _WALKED,
    "STACK_GLOBAL": _STUB_CLASS,
    "EXT1": _STUB_CLASS,
    "EXT2": _STUB_CLASS,
    "EXT4": _STUB_CLASS,
    "REDUCE": _STUB,
    "NEWOBJ": _STUB,
    "NEWOBJ_EX": _STUB,
    "OBJ": _STUB,
    "INST": _STUB + _STUB_CLASS,
    "BINPERSID": 512,
    "PERSID": 512,
    "BINFLOAT": 32,
    "FLOAT": 32,
}
# Hashing: building the pickle's dicts, sets and frozensets hashes their keys, and so does each later
# reader of the same objects (this module's sizes for inspect, then torch.load). CPython caches no
# tuple's hash: a tuple built of tuples shared through the memo hashes its whole expansion, 2**40
# steps for a 40-level DAG of ~300 bytes. Each key is charged its expansion (in element hashes: a
# frozenset's hash is cached, a tuple's is the sum of its items') this many times, against
# HASH_FACTOR * N + HASH_SLACK units, the codec's bound.
_HASHINGS = 3
_HASH_SITES = {"SETITEM": 2, "SETITEMS": 2, "DICT": 2, "ADDITEMS": 1, "FROZENSET": 1}  # key stride
# A key's cost is kept with its tuple nesting in one int of the simulated stack (nesting in the low
# 8 bits, MAX_DEPTH < 256); costs stop growing here, far past any budget, to stay within 64 bits.
_COST_CAP = 1 << 50


class _Budget:
    """What reading one pickle of ``size`` bytes may still spend: bytes of objects, and hashing steps."""

    def __init__(self, size: int) -> None:
        # The pickle itself is held while it is read, and a value read from it is copied before it is
        # built (the unpickler reads bytes, then decodes a str from them).
        self.room = ALLOC_FACTOR * size + ALLOC_SLACK - 2 * size
        self.hash_work = HASH_FACTOR * size + HASH_SLACK

    def charge(self, nbytes: int, at: int | None) -> None:
        """Count ``nbytes`` about to be built (for the opcode at byte ``at``) against the allowance."""
        self.room -= nbytes
        if self.room < 0:
            raise _TooLarge(
                f"objects of more than {ALLOC_FACTOR} times its size (+{ALLOC_SLACK >> 20} MiB) by byte {at}"
            )

    def hashing(self, cost: int, at: int | None) -> None:
        """Count ``cost`` element hashes against the steps allowed."""
        self.hash_work -= cost
        if self.hash_work < 0:
            raise _TooLarge(
                f"dict keys or set elements whose hashing would take more than {HASH_FACTOR} steps per byte "
                f"of the pickle (+{HASH_SLACK}) by byte {at} (tuples shared many times over through its memo)"
            )


def _arg_size(arg: Any) -> int:
    """Bytes of the object the unpickler builds from an opcode's argument (0: a cached one or none)."""
    if arg is None or isinstance(arg, bool) or (type(arg) is int and -5 <= arg <= 256):
        return 0
    return int(sys.getsizeof(arg))


def _check_opcodes(data: bytes, budget: _Budget | None = None) -> _Budget:
    """Refuse a pickle beyond a bound, from its opcodes, before anything is built from them.

    The bounds: tuple nesting (MAX_DEPTH), memo indices, the memory the unpickler and the reads after
    it would build (``budget.room``) and the hashing its dicts and sets would do (``budget.hash_work``).
    Only tuples and frozensets are tracked for nesting and hash cost: they are built bottom-up, so both
    are known from the opcodes, and they are what CPython hashes recursively (a dict key, a set member).
    A memo index is at most the opcode's position, as every pickler writes them (the C unpickler grows
    its memo to the largest index given, so a 4-byte index could take 32 GB). Returns the budget left.
    """
    sim = _Simulation(budget or _Budget(len(data)))
    for op, arg, at in pickletools.genops(data):
        sim.step(op.name, arg, at or 0)
    return sim.budget


class _Simulation:
    """The unpickler's stack and memo, simulated opcode by opcode, each opcode charged before it runs."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        # For each object on the unpickler's stack and in its memo: hash cost << 8 | tuple nesting (0:
        # not a tuple). Arrays of ints, so the bookkeeping costs 8 bytes a slot whatever the pickle holds.
        self.stack = array("q")
        self.marks = array("q")
        self.memo = array("q")
        self.memo_set = bytearray()  # which memo slots were put
        self.puts = 0  # how many (MEMOIZE puts at this index, as the C unpickler does)
        self.globals: set[Any] = set()
        self.high = 0  # the most slots the stacks have held

    def step(self, name: str, arg: Any, at: int) -> None:
        """Check and charge one opcode, then apply it to the simulated stack."""
        stack, marks = self.stack, self.marks
        kind, below, pushed = _EFFECTS[name]
        self._charge(name, arg, at)
        stride = _HASH_SITES.get(name)
        if stride is not None:
            start = len(stack) - 2 if name == "SETITEM" else (marks[-1] if marks else len(stack))
            self.budget.hashing(_HASHINGS * sum(v >> 8 for v in stack[max(start, 0) :: stride]), at)
        if kind in (_PLAIN, _POPS_MARK):
            self._plain(name, kind, below, pushed, at)
        elif kind == _PUT:
            self._put(self.puts if name == "MEMOIZE" else int(arg or 0), name, at)
        elif kind == _GET:
            index = int(arg or 0)
            if index >= len(self.memo) or not self.memo_set[index]:
                raise ValueError(f"memo index {index} at {at} was never put")
            stack.append(self.memo[index])
        else:
            _structural(kind, below, stack, marks)
            if stack and stack[-1] & 0xFF > MAX_DEPTH:
                raise _TooDeep(f"tuples nested more than {MAX_DEPTH} levels deep (at byte {at})")
            if name == "FROZENSET":  # its hash is cached once built: one step as a key
                stack[-1] = 1 << 8 | (stack[-1] & 0xFF)
        size = len(stack) + len(marks)
        if size > self.high:
            self.budget.charge(_SLOT * (size - self.high), at)
            self.high = size

    def _plain(self, name: str, kind: int, below: int, pushed: int, at: int) -> None:
        """Pop what the opcode takes (down to its mark, if any) and push what it makes: plain objects."""
        stack, marks = self.stack, self.marks
        if kind == _POPS_MARK:
            if not marks:
                raise ValueError(f"{name} at {at} without a mark")
            del stack[marks.pop() :]
        if below:
            if len(stack) < below:
                raise ValueError(f"{name} at {at} on a stack of {len(stack)}")
            del stack[-below:]
        for _ in range(pushed):
            stack.append(_PLAIN_VALUE)

    def _charge(self, name: str, arg: Any, at: int) -> None:
        """Charge what the opcode ``name`` makes the unpickler (and the walks after it) build."""
        charge = _BUILDS.get(name, 0)
        if name in _DATA:
            charge += _arg_size(arg)
        elif name in ("GLOBAL", "INST") and arg not in self.globals:
            self.globals.add(arg)
            charge += _STUB_CLASS + _arg_size(arg)
        per = _PER_ITEM.get(name)
        if per is not None:
            marks = self.marks
            items = 1 if name in ("APPEND", "SETITEM") else len(self.stack) - marks[-1] if marks else 0
            charge += per * items
        if charge:
            self.budget.charge(charge, at)

    def _put(self, index: int, name: str, at: int) -> None:
        memo = self.memo
        if index > at:
            raise ValueError(f"memo index {index} at {at}, beyond the pickle's own opcodes")
        if not self.stack:
            raise ValueError(f"{name} at {at} on an empty stack")
        if index >= len(memo):
            grown = index + 1 - len(memo)
            self.budget.charge(_SLOT * grown, at)
            memo.frombytes(bytes(8 * grown))
            self.memo_set.extend(bytes(grown))
        if not self.memo_set[index]:
            self.memo_set[index] = 1
            self.puts += 1
        memo[index] = self.stack[-1]


# A value on the simulated stack that is no tuple: one step to hash, no nesting.
_PLAIN_VALUE = 1 << 8


def _structural(kind: int, n: int, stack: array[int], marks: array[int]) -> None:
    """Apply MARK, DUP, POP or a tuple's opcode to the simulated stack."""
    if kind == _MARK:
        marks.append(len(stack))
    elif kind == _DUP:
        if not stack:
            raise ValueError("DUP on an empty stack")
        stack.append(stack[-1])
    elif kind == _POP:
        if marks and marks[-1] == len(stack):  # POP of a mark drops the mark
            marks.pop()
        elif stack:
            stack.pop()
        else:
            raise ValueError("POP on an empty stack")
    else:
        if kind == _TUPLE_MARK:
            if not marks:
                raise ValueError("a tuple without a mark")
            start = marks.pop()
        else:
            if len(stack) < n:
                raise ValueError(f"a tuple of {n} on a stack of {len(stack)}")
            start = len(stack) - n
        items = stack[start:]
        depth = 1 + max((v & 0xFF for v in items), default=0)
        cost = min(_COST_CAP, 1 + sum(v >> 8 for v in items))
        del stack[start:]
        stack.append(cost << 8 | min(depth, 0xFF))


class _TooLarge(ValueError):
    """Memory or hashing beyond the pickle's allowance (told apart from damage in the message)."""


class _TooDeep(ValueError):
    """Nesting beyond MAX_DEPTH (told apart from damage in the message)."""


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
    """Return how many containers ``root`` holds; raise _TooDeep if they nest beyond MAX_DEPTH.

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
                raise _TooDeep(f"containers nested more than {MAX_DEPTH} levels deep")
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
            raise _TooDeep("objects shared between callbacks so often that walking them would not end")
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


class _Zip:
    """A torch.save zip, checked against its own bytes, with the records torch.load would use.

    Attributes:
        zip: the open zip file.
        prefix: the archive's folder (``"archive/"``), taken from its first member as torch does.
        records: ``{storage key: zip member}``.
        pickle: the bytes of ``data.pkl``.
    """

    def __init__(self, file: IO[bytes], name: str) -> None:
        head = file.read(len(_ZIP_MAGIC))
        file.seek(0)
        if head != _ZIP_MAGIC:
            _corrupt(
                name,
                "is not a readable torch checkpoint: it does not start as a zip file, and callstate "
                "reads torch.save's zip format only (torch >= 1.6); check the path, or re-save it with "
                "torch.save",
            )
        try:
            self.zip = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise CorruptCheckpointError(
                f"{escape(name)}: a damaged torch checkpoint ({escape(str(exc), 300)}): it is truncated or "
                "altered; restore it from a copy.",
                path=name,
            ) from None
        try:
            self._check(file, name)
        except (OSError, EOFError, NotImplementedError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            # A seek to an offset the directory made up, a flag zipfile does not read: the file was altered.
            self.zip.close()
            raise CorruptCheckpointError(
                f"{escape(name)}: a damaged torch checkpoint ({type(exc).__name__}: "
                f"{escape(str(exc), 300)}): it is truncated or "
                "altered; restore it from a copy.",
                path=name,
            ) from None
        except BaseException:
            self.zip.close()
            raise

    def _check(self, file: IO[bytes], name: str) -> None:
        infos = self.zip.infolist()
        _check_members(infos, file, name, self.zip.start_dir)
        first = infos[0].filename
        if "/" not in first:
            _corrupt(name, f"its first member {show(first)} is in no folder, which torch.load refuses")
        self.prefix = first[: first.index("/") + 1]
        outside = [i.filename for i in infos if not i.filename.startswith(self.prefix)]
        if outside:
            _corrupt(
                name,
                f"members outside its folder {show(self.prefix)} ({show(outside[:3])}), which torch.load "
                "refuses",
            )
        names = {i.filename.lower(): i.filename for i in infos}  # duplicates by case were refused above
        for needed in ("data.pkl", "version|.data/version"):
            if not any((self.prefix + n).lower() in names for n in needed.split("|")):
                _corrupt(
                    name, f"a zip file without {escape(self.prefix + needed.split('|')[0])} is not a torch "
                          "checkpoint"
                )
        if (self.prefix + "constants.pkl").lower() in names:
            _corrupt(
                name,
                "a TorchScript archive, which torch.load(weights_only=True) refuses; "
                "load it with torch.jit.load",
            )
        self._check_small_records(names, name)
        data = self.prefix + "data/"
        self.records = {n[len(data) :]: n for low, n in names.items() if low.startswith(data.lower())}
        pkl = self.zip.getinfo(names[(self.prefix + "data.pkl").lower()])
        if pkl.file_size > MAX_PICKLE:
            _corrupt(
                name,
                f"its pickle is {pkl.file_size} bytes, more than the {MAX_PICKLE} callstate reads; "
                "keep large data in tensors",
            )
        try:
            self.pickle = self.zip.read(pkl)
        except (zipfile.BadZipFile, OSError) as exc:
            _corrupt(name, f"its pickle is damaged ({escape(str(exc), 300)}); restore it from a copy")

    def _check_small_records(self, names: dict[str, str], name: str) -> None:
        """Check the records torch.load parses before the pickle, as it parses them."""
        checks: dict[str, Callable[[bytes], bool]] = {
            "version": lambda b: b.strip().isdigit(),
            ".data/version": lambda b: b.strip().isdigit(),
            "byteorder": lambda b: b in (b"little", b"big"),
            ".storage_alignment": lambda b: b.strip().isdigit(),
        }
        for record, ok in checks.items():
            member = names.get((self.prefix + record).lower())
            if member is None:
                continue
            info = self.zip.getinfo(member)
            value = self.zip.read(info) if info.file_size <= _MAX_SMALL_RECORD else b""
            if not ok(value):
                _corrupt(
                    name, f"its record {escape(member)} holds {show(value[:_MAX_SMALL_RECORD])}, which "
                          "torch.load refuses"
                )

    def record_sizes(self) -> dict[str, int]:
        """``{storage key: bytes in its record}``."""
        return {k: self.zip.getinfo(n).file_size for k, n in self.records.items()}


def _check_members(infos: list[zipfile.ZipInfo], file: IO[bytes], name: str, start_dir: int) -> None:
    """Refuse an empty zip, duplicate names, and members that are compressed, encrypted or beyond the file."""
    if not infos:
        _corrupt(name, "an empty zip file is not a torch checkpoint")
    # torch.load finds members ignoring case (miniz), so names that differ only in case are duplicates too.
    seen: set[str] = set()
    duplicates: set[str] = set()
    for info in infos:
        low = info.filename.lower()
        if low in seen:
            duplicates.add(info.filename)
        seen.add(low)
    if duplicates:
        _corrupt(
            name,
            f"the zip holds several members named {show(sorted(duplicates)[:3])}; readers disagree on which "
            "one counts (torch.load takes another than Python's zipfile), so it was refused. Re-save it with "
            "torch.save",
        )
    total = 0
    for info in infos:
        if info.compress_type != _STORED or info.flag_bits & ~_PLAIN_FLAGS:
            _corrupt(
                name,
                f"its member {escape(info.filename)} is compressed or encrypted, which torch.save never "
                "writes; re-save it with torch.save",
            )
        end = info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size
        # miniz refuses a member on another disk; zipfile reads it from this one.
        if info.file_size != info.compress_size or end > start_dir or info.volume:
            _corrupt(
                name,
                f"its member {escape(info.filename)} declares {info.file_size} bytes, more than the file "
                "holds; it is truncated or altered",
            )
        total += info.compress_size
    if total > start_dir:
        _corrupt(name, "its members overlap (they declare more bytes than the file holds); it was altered")
    _check_end_record(file, name, len(infos))
    _check_local_headers(infos, file, name)


def _check_local_headers(infos: list[zipfile.ZipInfo], file: IO[bytes], name: str) -> None:
    """Refuse a member without its local header where the directory says (torch.load reads them all)."""
    for info in infos:
        file.seek(info.header_offset)
        header = file.read(30 + len(info.orig_filename.encode()))
        if header[:4] != _ZIP_MAGIC or header[30:] != info.orig_filename.encode():
            _corrupt(
                name,
                f"its member {escape(info.filename)} has no local header where the directory says; it was "
                "altered",
            )


def _check_end_record(file: IO[bytes], name: str, members: int) -> None:
    """Refuse an end record that miniz (torch.load) would read otherwise than Python's zipfile."""
    end_record = zipfile._EndRecData(file)  # type: ignore[attr-defined]
    if end_record is None:
        return
    disks = (zipfile._ECD_DISK_NUMBER, zipfile._ECD_DISK_START)  # type: ignore[attr-defined]
    counts = (zipfile._ECD_ENTRIES_THIS_DISK, zipfile._ECD_ENTRIES_TOTAL)  # type: ignore[attr-defined]
    if any(end_record[i] for i in disks) or len({end_record[i] for i in counts}) > 1:
        _corrupt(name, "its zip end record names several disks, which torch.load refuses; it was altered")
    # miniz takes the number of members from the end record, zipfile from the directory; and miniz
    # refuses an entry whose declared lengths run past the directory, which zipfile cuts short.
    if end_record[zipfile._ECD_ENTRIES_TOTAL] != members or not _entries_fit(file, end_record, members):  # type: ignore[attr-defined]
        _corrupt(
            name,
            "its zip directory holds another number of members than its end record says; "
            "readers would disagree on its contents",
        )


def _entries_fit(file: IO[bytes], end_record: list[Any], members: int) -> bool:
    """Whether the directory's entries, at their declared lengths, fill it exactly."""
    size, start = end_record[zipfile._ECD_SIZE], end_record[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
    file.seek(start)
    directory = file.read(size)
    at = 0
    for _ in range(members):
        if directory[at : at + 4] != b"PK\x01\x02" or at + 46 > len(directory):
            return False
        at += 46 + sum(int.from_bytes(directory[at + i : at + i + 2], "little") for i in (28, 30, 32))
    return bool(at == size)


def _corrupt(name: str, problem: str) -> Any:
    raise CorruptCheckpointError(f"{escape(name)}: {problem}.", path=name)


class Scan:
    """A torch checkpoint's zip and pickle, checked and read into stubs within every bound.

    Attributes:
        zip: the checked zip (``zip.zip`` is the open ``ZipFile``).
        root: what the pickle holds, as stubs; storages as references to their records.
        objects: how many containers ``root`` holds.
    """

    def __init__(self, file: IO[bytes], name: str) -> None:
        self.zip = _Zip(file, name)
        try:
            self.root, self.objects = _read_pickle(self.zip, name)
        except BaseException:
            self.zip.zip.close()
            raise


def _read_pickle(z: _Zip, name: str) -> tuple[Any, int]:
    try:
        _check_opcodes(z.pickle)
        root = _InertUnpickler(z.pickle, z.record_sizes()).load()
        return root, _check_depth(root)
    except _TooDeep as exc:
        raise CorruptCheckpointError(
            f"{escape(name)}: its pickle holds {exc}, more than callstate reads (a torch.save of real states "
            "nests far less); it was altered, or holds a structure to flatten before saving.",
            path=name,
        ) from None
    except _TooLarge as exc:
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

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open_regular(path)  # closed by close(): the zip reads from it
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
            except _TooDeep as exc:
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
