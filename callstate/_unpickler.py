"""The safe unpickler: decodes plain data, runs nothing, and names what it refused."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import Any

from ._errors import CallstateError, UnsafeCheckpointError

_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric", "numpy.dtypes")

# (module, qualified name) pairs that a payload may name. Strings only: nothing is imported to build
# it, so numpy and torch stay unimported until a payload that needs them is decoded.
_DEFAULT_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [("builtins", n) for n in (
        "dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float",
        "complex", "bool", "slice", "range",
    )]
    + [("collections", n) for n in ("OrderedDict", "deque", "Counter", "defaultdict")]
    + [("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")]
    + [("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"), ("uuid", "SafeUUID")]
    + [("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath",
                               "PureWindowsPath")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [(m, n) for m in _NUMPY_MODULES for n in ("_reconstruct", "scalar", "_frombuffer")]
    + [("torch", "device"), ("torch", "Size"), ("callstate._tensors", "rebuild_tensor")]
    + [("torch", n) for n in (
        "float32", "float", "float64", "double", "float16", "half", "bfloat16", "complex64", "cfloat",
        "complex128", "cdouble", "uint8", "int8", "int16", "short", "int32", "int", "int64", "long",
        "bool", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "complex32", "chalf",
    )]
)

_allowed: set[tuple[str, str]] = set(_DEFAULT_ALLOWED)

# Modules whose contents run code, reach the file system or the interpreter, or build functions.
_FORBIDDEN_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "sys", "subprocess", "importlib", "pkgutil", "runpy",
    "code", "codeop", "shutil", "socket", "ctypes", "operator", "functools", "marshal", "types", "pickle",
    "_pickle", "copyreg", "cloudpickle", "io", "_io", "pty", "signal", "multiprocessing", "webbrowser",
    "inspect", "gc", "tempfile", "threading", "_thread", "asyncio", "builtins", "__builtin__", "pdb",
    "bdb", "platform", "sysconfig", "site", "zipimport", "shelve", "dbm", "sqlite3", "urllib", "http",
    "ftplib", "smtplib", "telnetlib", "xmlrpc", "glob", "fnmatch", "logging", "torch.hub", "torch.ops",
    "numpy.ctypeslib", "numpy.lib.npyio",
})


class AllowlistError(CallstateError, ValueError):
    """``callstate.allow`` was asked to admit something that can run code."""

    def __init__(self, message: str, *, obj: object) -> None:
        super().__init__(message)
        self.obj = obj


def _global_name(obj: Any) -> tuple[str, str]:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise AllowlistError(
            f"callstate.allow() admits classes and functions, which pickles name by module and "
            f"qualified name; {obj!r} has neither.",
            obj=obj,
        )
    return module, qualname


def allow(*objects: Any) -> None:
    """Let the safe unpickler load these classes (or reconstructor functions) from any checkpoint.

    Admit only what cannot run code when called with arbitrary arguments: plain data classes, enums,
    your own state containers.

    Raises:
        AllowlistError: an object belongs to a module that can run code or reach the system (``os``,
            ``sys``, ``subprocess``, ``importlib``, ``builtins`` functions such as ``eval``, ...),
            or is a local object (nothing is admitted then).

    .. versionadded:: 0.1
    """
    names = []
    for obj in objects:
        module, qualname = _global_name(obj)
        top = module.split(".")[0]
        forbidden = module in _FORBIDDEN_MODULES or top in _FORBIDDEN_MODULES - {"torch", "numpy"}
        harmless = module == "builtins" and isinstance(obj, type) and ("builtins", qualname) in _allowed
        if forbidden and not harmless:
            raise AllowlistError(
                f"callstate.allow({module}.{qualname}) refused: {module!r} can run code or reach the "
                "system, and a checkpoint must never be able to call it. Save plain data instead.",
                obj=obj,
            )
        if "<locals>" in qualname or "<lambda>" in qualname:
            raise AllowlistError(
                f"callstate.allow({qualname}) refused: a local object cannot be found by name when "
                "loading. Define it at module level.",
                obj=obj,
            )
        names.append((module, qualname))
    _allowed.update(names)


def allowed() -> frozenset[tuple[str, str]]:
    """Return the ``(module, qualname)`` pairs the safe unpickler currently admits."""
    return frozenset(_allowed)


def reset_allowlist() -> None:
    """Forget every ``callstate.allow`` call (for tests)."""
    _allowed.clear()
    _allowed.update(_DEFAULT_ALLOWED)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allowlisted globals and refuses persistent ids."""

    def find_class(self, module: str, name: str, /) -> Any:
        if (module, name) not in _allowed:
            raise UnsafeCheckpointError(f"{module}.{name}", global_name=f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any, /) -> Any:
        raise UnsafeCheckpointError("persistent id", global_name=f"persistent_load({pid!r:.60})")


def safe_loads(data: bytes | bytearray | memoryview, buffers: Iterable[Any] = ()) -> Any:
    """Decode a pickle with the allowlist; raise UnsafeCheckpointError (without context) if refused."""
    return SafeUnpickler(io.BytesIO(data), buffers=buffers).load()


for _obj in (allow, AllowlistError):
    _obj.__module__ = "callstate"
