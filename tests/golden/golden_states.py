"""The states stored in the golden files, shared by the writer and the test that reads them."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import pathlib
import uuid
from typing import Any


class Interval:
    """A user type the version 2 golden files hold through callstate.register_type."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and (other.low, other.high) == (self.low, self.high)

    def __hash__(self) -> int:
        return hash((self.low, self.high))


def register_interval() -> None:
    """Register Interval under the name the golden files use (idempotent)."""
    import callstate

    callstate.register_type(
        Interval,
        to_data=lambda i: (i.low, i.high),
        from_data=lambda d: Interval(*d),
        name="golden.Interval",
    )


def files(version: int = 1) -> dict[str, dict[str, Any]]:
    """Return file name -> the {key: state} mapping the golden files of ``version`` hold."""
    out = _v1_files()
    if version >= 2:
        out.update(_v2_files())
    return out


def _v2_files() -> dict[str, dict[str, Any]]:
    import numpy as np
    import torch

    shared = [1, 2]
    return {
        "exact": {
            "Keys": {1: "int", (1, "a"): "tuple", 2.5: "float", None: "none", frozenset({1}): "frozenset"},
            "Floats": {"neg_zero": -0.0, "inf": float("inf"), "big": 10**30, "small": -(10**30)},
            "Shared": {"a": shared, "b": shared, "t": (shared, shared)},
            "Ranges": {"r": range(1, 10, 3), "s": slice(None, 5, 2)},
            "Packed": {"f": [float(i) / 3 for i in range(20)], "i": list(range(-10, 10))},
            "Arrays": {
                "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
                "big_endian": np.arange(5, dtype=">f8"),
                "zero_d": np.array(3.5),
                "empty": np.zeros((0, 4), dtype=np.uint16),
                "strings": np.array(["a", "bc"]),
                "times": np.array(["2026-01-01"], dtype="datetime64[D]"),
                "dtype": np.dtype("<c8"),
            },
            "Tensors": {
                "grad": torch.ones(2, requires_grad=True),
                "bool": torch.tensor([True, False]),
                "complex": torch.tensor([1 + 2j], dtype=torch.complex64),
                "size": torch.Size([2, 3]),
                "dtype": torch.float16,
                "device": torch.device("cpu"),
            },
        },
        "registered": {"Bounds": {"interval": Interval(0.5, 2.0), "many": [Interval(1, 2), Interval(3, 4)]}},
        # State schema versions: saved by version 1 (no version recorded) and 2 of Thermometer.
        "thermometer_v1": {LAB: {"celsius": 21.5}, HALL: {"celsius": -3.0}},
        "thermometer_v2": {LAB: {"kelvin": 294.65}, "callstate:versions": {LAB: 2}},
    }


LAB, HALL = "Thermometer{'room': 'lab'}", "Thermometer{'room': 'hall'}"


def thermometer(version: int) -> type:
    """Return version ``version`` (1 to 3) of the Thermometer whose states the golden files hold.

    1: ``{"celsius": float}``; 2: ``{"kelvin": float}``; 3: ``{"kelvin": float, "readings": int}``.
    Version 3 registers the migrations 1 -> 2 and 2 -> 3.
    """
    import callstate

    fields = {1: ("celsius",), 2: ("kelvin",), 3: ("kelvin", "readings")}[version]

    @callstate.stateful(identity=("room",), state=fields, version=version)
    class Thermometer:
        def __init__(self, room: str) -> None:
            self.room = room
            for name in fields:
                setattr(self, name, 0)

    Thermometer.__qualname__ = "Thermometer"
    if version == 3:
        callstate.migration(Thermometer, from_version=1)(lambda s: {"kelvin": round(s["celsius"] + 273.15, 2)})
        callstate.migration(Thermometer, from_version=2)(lambda s: {**s, "readings": 0})
    return Thermometer


def _v1_files() -> dict[str, dict[str, Any]]:
    import numpy as np
    import torch

    return {
        "counters": {
            "Counter{'what': 'epochs'}": {"epochs": 2, "batches": 0},
            "Counter{'what': 'batches'}": {"epochs": 0, "batches": 32},
        },
        "allowlisted": {
            "Scalars": {"i": 7, "f": 0.25, "s": "text", "b": b"\x00\xff", "n": None, "t": True, "c": 1 + 2j},
            "Containers": {"l": [1, [2]], "t": (1, 2), "set": {3}, "fs": frozenset({4}), "ba": bytearray(b"x")},
            "Collections": {
                "od": collections.OrderedDict(a=1),
                "dq": collections.deque([1, 2], maxlen=3),
                "ctr": collections.Counter("aab"),
                "dd": collections.defaultdict(list, {"k": [1]}),
            },
            "Times": {
                "dt": datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.timezone.utc),
                "d": datetime.date(2026, 11, 28),
                "td": datetime.timedelta(hours=1),
            },
            "Numbers": {"dec": decimal.Decimal("3.14"), "frac": fractions.Fraction(2, 3)},
            "Ids": {"uuid": uuid.UUID(int=12345), "path": pathlib.PurePosixPath("runs/a")},
        },
        "arrays": {
            "EMA{'decay': 0.99}": {
                "small": np.arange(6, dtype=np.float32).reshape(2, 3),
                "large": np.arange(40_000, dtype=np.float64),
                "scalar": np.int64(5),
                "tensor": torch.arange(30_000, dtype=torch.float32).reshape(100, 300),
                "bf16": torch.ones(4, dtype=torch.bfloat16),
                "param": torch.nn.Parameter(torch.zeros(2, 2)),
            }
        },
        "empty": {},
    }


def jax_files() -> dict[str, dict[str, Any]]:
    """Return file name -> the {key: state} mapping of the version 2 golden files that hold jax arrays.

    Kept apart from ``files`` (in ``v2/jax/``) so that the golden files of the other states are read
    where jax is not installed.
    """
    import jax
    import jax.numpy as jnp

    weights = jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) / 4
    return {
        "arrays": {
            "EMA{'decay': 0.99}": {
                "weights": weights,
                "again": weights,
                "big": jnp.arange(20_000, dtype=jnp.float32),  # 80,000 bytes: out of band
                "f8": jnp.array([0.5, -2.0, 448.0], dtype=jnp.float8_e4m3fn),
                "i4": jnp.array([-8, -1, 0, 7], dtype=jnp.int4),
                "scalar": jnp.array(3.5, dtype=jnp.float16),
                "flags": jnp.array([True, False]),
                "complex": jnp.array([1 + 2j], dtype=jnp.complex64),
                "empty": jnp.zeros((0, 4), dtype=jnp.int32),
            },
            "Sampler{'seed': 0}": {
                "key": jax.random.key(42),
                "keys": jax.random.split(jax.random.key(7), 3),
                "rbg": jax.random.key(1, impl="rbg"),
                "raw": jax.random.PRNGKey(3),
            },
        },
    }
