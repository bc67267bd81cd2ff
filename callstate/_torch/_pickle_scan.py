"""The opcodes of a torch checkpoint's pickle, walked before anything is built from them.

A simulation of the unpickler's stack and memo, one number per object, charges what reading the
pickle would build (memory, against the same allowance as the data codec's) and what hashing its
dict keys and set members would cost through shared references, and refuses the pickle before the
unpickler (or ``torch.load``) builds anything past either bound. Tuple nesting is checked here too.
"""

from __future__ import annotations

import pickletools
import sys
from array import array
from typing import Any

from .._encoding import ALLOC_FACTOR, ALLOC_SLACK, HASH_FACTOR, HASH_SLACK

# Nesting deeper than this is refused. States in practice nest under 20 levels; at 200 every walk
# made afterwards (this reader's sizes, torch.load, repr, diff) stays well inside Python's recursion
# limit of 1000, and a tuple nested this deep hashes in microseconds. CPython hashes a nested tuple
# recursively with no check (a 200,000-deep tuple key crashes the process with SIGSEGV), so tuple
# nesting is checked from the opcodes, before the unpickler builds and hashes anything.
MAX_DEPTH = 200


_PLAIN, _POPS_MARK, _TUPLE_MARK, _TUPLE_N, _PUT, _GET, _MARK, _DUP, _POP = range(9)


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


class Budget:
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
            where = f" by byte {at}" if at is not None else ""
            slack = ALLOC_SLACK >> 20
            raise TooLarge(f"objects of more than {ALLOC_FACTOR} times its size (+{slack} MiB){where}")

    def hashing(self, cost: int, at: int | None) -> None:
        """Count ``cost`` element hashes against the steps allowed."""
        self.hash_work -= cost
        if self.hash_work < 0:
            where = f" by byte {at}" if at is not None else ""
            raise TooLarge(
                f"dict keys or set elements whose hashing would take more than {HASH_FACTOR} steps per byte "
                f"of the pickle (+{HASH_SLACK}){where} (tuples shared many times over through its memo)"
            )


def _arg_size(arg: Any) -> int:
    """Bytes of the object the unpickler builds from an opcode's argument (0: a cached one or none)."""
    if arg is None or isinstance(arg, bool) or (type(arg) is int and -5 <= arg <= 256):
        return 0
    return int(sys.getsizeof(arg))


def check_opcodes(data: bytes, budget: Budget | None = None) -> Budget:
    """Refuse a pickle beyond a bound, from its opcodes, before anything is built from them.

    The bounds: tuple nesting (MAX_DEPTH), memo indices, the memory the unpickler and the reads after
    it would build (``budget.room``) and the hashing its dicts and sets would do (``budget.hash_work``).
    Only tuples and frozensets are tracked for nesting and hash cost: they are built bottom-up, so both
    are known from the opcodes, and they are what CPython hashes recursively (a dict key, a set member).
    A memo index is at most the opcode's position, as every pickler writes them (the C unpickler grows
    its memo to the largest index given, so a 4-byte index could take 32 GB). Returns the budget left.
    """
    sim = _Simulation(budget or Budget(len(data)))
    for op, arg, at in pickletools.genops(data):
        sim.step(op.name, arg, at or 0)
    return sim.budget


class _Simulation:
    """The unpickler's stack and memo, simulated opcode by opcode, each opcode charged before it runs."""

    def __init__(self, budget: Budget) -> None:
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
                raise TooDeep(f"tuples nested more than {MAX_DEPTH} levels deep (at byte {at})")
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


class TooLarge(ValueError):
    """Memory or hashing beyond the pickle's allowance (told apart from damage in the message)."""


class TooDeep(ValueError):
    """Nesting beyond MAX_DEPTH (told apart from damage in the message)."""
