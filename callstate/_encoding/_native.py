"""Which types the data codec writes itself, told without importing the modules that define them.

``register_type`` refuses these. Importing callstate does not import the data codec, nor datetime,
decimal, fractions or uuid: a class to test exists already, so its module is imported, and a module
that is not imported defines none of the classes tested.
"""

from __future__ import annotations

import collections
import pathlib
import sys

from ._jax import is_jax_type

# Those of modules that importing callstate imports anyway.
_LOADED: frozenset[type] = frozenset({
    type(None), bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset,
    range, slice,
    collections.OrderedDict, collections.Counter, collections.defaultdict, collections.deque,
    pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath,
})
# Those of the other modules, by module and name.
_ELSEWHERE: dict[str, tuple[str, ...]] = {
    "datetime": ("datetime", "date", "time", "timedelta", "timezone"),
    "decimal": ("Decimal",),
    "fractions": ("Fraction",),
    "uuid": ("UUID",),
}


def standard_types() -> frozenset[type]:
    """Return the Python and standard library types the data codec writes, of the modules imported."""
    found = set(_LOADED)
    for name, classes in _ELSEWHERE.items():
        module = sys.modules.get(name)
        if module is not None:
            found.update(cls for cls in (getattr(module, c, None) for c in classes) if isinstance(cls, type))
    return frozenset(found)


def is_native(cls: type) -> bool:
    """Return whether the data codec writes instances of ``cls`` itself."""
    if cls in standard_types():
        return True
    np = sys.modules.get("numpy")
    if np is not None and (cls is np.ndarray or issubclass(cls, np.generic | np.dtype)):
        return True
    if is_jax_type(cls):
        return True
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return cls in (torch.Tensor, torch.nn.Parameter, torch.Size, torch.device, torch.dtype)
