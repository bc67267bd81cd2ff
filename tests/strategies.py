"""Shared hypothesis strategies and small test callbacks (import with ``from strategies import ...``)."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

import callstate

# --- values -------------------------------------------------------------------------------------

#: Scalars whose repr is reproducible across processes: what identity fields usually hold.
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)

#: Identity values: scalars, and tuples, lists and str-keyed dicts nested from them.
identity_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.tuples(inner, inner),
        st.lists(inner, max_size=3).map(tuple),
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
    ),
    max_leaves=8,
)

_RESERVED = {"state_key", "state_dict", "load_state_dict", "state"}

#: Attribute names usable as identity fields (not dunder, not the names callstate itself defines).
field_names = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=8).filter(
    lambda n: n.isidentifier() and not n.startswith("__") and n not in _RESERVED
)

#: Class names (``type()`` accepts any str, keywords included).
class_names = st.text(alphabet=string.ascii_letters, min_size=1, max_size=10)

#: Picklable, comparable states: what callbacks usually return from ``state_dict()``.
states = st.recursive(
    st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none(), st.floats(allow_nan=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
    ),
    max_leaves=10,
)

#: Saved keys: distinct strings, as found in a checkpoint's ``"callbacks"``.
keys = st.text(min_size=1, max_size=16)


# --- callbacks ----------------------------------------------------------------------------------


class Box:
    """A stateful callback holding one value; a state with ``"poison"`` is applied, then refused."""

    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.loads = 0

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loads += 1
        self.value = state["value"]
        if state.get("poison"):
            raise ValueError(f"poisoned state {state!r}")


class Stateless:
    """A callback with hooks but no state."""

    def on_train_epoch_end(self) -> None:
        pass


@callstate.stateful(identity=("what",))
class Counter:
    """The Counter of the issue and of Lightning's docs: told apart by ``what``, not ``verbose``."""

    def __init__(self, what: str = "epochs", verbose: bool = True) -> None:
        self.what, self.verbose = what, verbose
        self.state = {"epochs": 0, "batches": 0}

    def on_train_epoch_end(self) -> None:
        if self.what == "epochs":
            self.state["epochs"] += 1

    def on_train_batch_end(self) -> None:
        if self.what == "batches":
            self.state["batches"] += 1

    def state_dict(self) -> dict[str, int]:
        return self.state.copy()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state.update(state)


def run_epochs(registry: callstate.CallbackRegistry, epochs: int, batches: int) -> None:
    """Call every callback's hooks as a training loop would."""
    for _ in range(epochs):
        for _ in range(batches):
            for cb in registry:
                cb.on_train_batch_end()  # type: ignore[attr-defined]
        for cb in registry:
            cb.on_train_epoch_end()  # type: ignore[attr-defined]
