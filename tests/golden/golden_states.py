"""The states stored in the golden files, shared by the writer and the test that reads them."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import pathlib
import uuid
from typing import Any


def files() -> dict[str, dict[str, Any]]:
    """Return file name -> the {key: state} mapping it holds (numpy and torch imported on demand)."""
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
