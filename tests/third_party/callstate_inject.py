"""pytest plugin: callstate's accelerate adapter injected into every Accelerator a test builds.

``tests/third_party/run.py`` loads it with ``-p callstate_inject`` into accelerate's own test files:
each ``accelerate.Accelerator`` built after its ``__init__`` returns gets
``callstate.accelerate.register(accelerator, [Tally()])``, so every ``save_state`` also writes
``callbacks.callstate`` and every ``load_state`` restores the tally from it first. When the
environment names a file in ``CALLSTATE_INJECT_REPORT``, the session's end writes there, as JSON,
how many Accelerators were registered and how many states were saved and restored, so the runner
can tell an injected run from one where the injection silently did nothing.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest

REPORT_ENV = "CALLSTATE_INJECT_REPORT"
counts = {"registered": 0, "saved": 0, "restored": 0}


class Tally:
    """One small stateful callback: a count, saved with each ``save_state`` and restored by ``load_state``."""

    def __init__(self) -> None:
        self.count = 3

    def state_dict(self) -> dict[str, Any]:
        counts["saved"] += 1
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts["restored"] += 1
        self.count = state["count"]


_original_init: Any = None


def pytest_configure(config: pytest.Config) -> None:
    global _original_init
    import accelerate

    import callstate.accelerate

    _original_init = accelerate.Accelerator.__init__

    @functools.wraps(_original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        _original_init(self, *args, **kwargs)
        callstate.accelerate.register(self, [Tally()])
        counts["registered"] += 1

    accelerate.Accelerator.__init__ = init


def pytest_unconfigure(config: pytest.Config) -> None:
    import accelerate

    if _original_init is not None:
        accelerate.Accelerator.__init__ = _original_init
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(counts, file)
