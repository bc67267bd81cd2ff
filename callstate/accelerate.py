"""The accelerate adapter: the callbacks' states in every ``accelerator.save_state`` directory.

``register(accelerator, callbacks)`` adds a save and a load hook to the Accelerator (its
``register_save_state_pre_hook`` / ``register_load_state_pre_hook``), so that
``accelerator.save_state(dir)`` also writes the callstate file ``dir/callbacks.callstate`` and
``accelerator.load_state(dir)`` restores every callback from it before the models are loaded:
keyed by identity (never by position), decoded by callstate's data codec (no pickle unless
``trusted=True``), in one transaction (all callbacks or none), with the ``RestoreReport`` kept.
A project directory that was moved resumes with ``register(..., relocate={old: new})``: the paths
in the callbacks' states follow it.

``accelerator.register_for_checkpointing(registry)`` works too, but accelerate keys its objects by
position, loads them with ``torch.load(weights_only=False)`` and saves from the main process only;
the hooks here avoid all three. Under a distributed launch (``accelerate launch``, ``torchrun``),
the save and the load run on every rank, as ``save_state``/``load_state`` do: per-rank states
(``@stateful(per_rank=True)``) are kept for every rank in the layout of ``callstate.distributed``,
rank 0 writes the file and reads it for every rank.

What a failing ``load_state`` leaves: a failed restore (``StateMismatchError``, ``RestoreError``,
``UnsafeCheckpointError``, ``CheckpointError`` for a ``callbacks.callstate`` that is a dangling or
looping symbolic link) changes no callback and raises before accelerate loads anything. But the
restore is the first thing ``load_state`` does (accelerate 1.15 has a load hook before it loads the
models, optimizers, schedulers, RNG states and custom objects, and none after, nor any sign of how
the load ended), so when accelerate itself then fails (a missing ``model.safetensors``, a damaged
``optimizer.bin``), its error propagates and the callbacks stay restored, ``last_report`` set, as
accelerate leaves whatever it loaded before the failure. To keep the callbacks as they were, take
``before = callbacks.state_dict()`` before ``load_state``; when it raises, call
``callbacks.discard_unclaimed()`` then ``callbacks.load_state_dict(before)``.

Install with ``pip install 'callstate[accelerate]'``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import MissingDependencyError

try:
    import accelerate as _accelerate
except ImportError as error:
    raise MissingDependencyError(
        "callstate.accelerate needs accelerate, which is not installed: pip install 'callstate[accelerate]'.",
        name="accelerate",
        extra="accelerate",
    ) from error

from ._adapters import CHECKPOINT_FILE, restore_from, save_into
from ._core import CallbackRegistry, Relocation, RestoreReport, relocation_of
from ._io import Policy, check_policy
from .errors import DuplicateKeyError, TargetTypeError

__all__ = ["CHECKPOINT_FILE", "AcceleratorCallbacks", "register"]

# The registry registered on each Accelerator: two would write the same file.
_registered: weakref.WeakKeyDictionary[Any, AcceleratorCallbacks] = weakref.WeakKeyDictionary()


class AcceleratorCallbacks(CallbackRegistry):
    """The registry ``register`` returns: its callbacks are saved and restored with the Accelerator's state.

    Register further callbacks on it at any time (``callbacks.register(obj, key=..., per_rank=True)``);
    the next ``save_state`` includes them.

    Attributes:
        strict, on_world_size_change, trusted: for ``load_state``, as given to ``register``.
        relocate: for ``load_state``, the ``relocate=`` given to ``register``, checked (a
            ``Relocation``), or None.
        last_report: the ``RestoreReport`` of the last ``load_state`` on this rank, or None.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        callbacks: Iterable[object] = (),
        *,
        strict: bool = False,
        on_world_size_change: Policy = "error",
        trusted: bool = False,
        relocate: Mapping[Any, Any] | None = None,
    ) -> None:
        check_policy(on_world_size_change)
        relocation = relocation_of(relocate)
        super().__init__(callbacks)
        self.strict = strict
        self.on_world_size_change: Policy = on_world_size_change
        self.trusted = trusted
        self.relocate: Relocation | None = relocation
        self.last_report: RestoreReport | None = None
        self._handles: list[Any] = []
        self._accelerator: weakref.ReferenceType[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # accelerate pickles Accelerators (multiprocessing launchers, dataloader tests): the hooks hold
        # this registry, so it goes with them, holding its Accelerator strongly (pickle keeps the cycle).
        state = dict(self.__dict__)
        state["_accelerator"] = self._accelerator() if self._accelerator is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        accelerator = state.pop("_accelerator")
        super().__setstate__(state)
        # The copy's hooks (in the copied Accelerator) call this copy: it is registered on that one.
        self._accelerator = None if accelerator is None else weakref.ref(accelerator)
        if accelerator is not None:
            _registered[accelerator] = self

    def _save(self, models: Any, weights: Any, output_dir: str | os.PathLike[str]) -> None:
        save_into(self, output_dir)

    def _load(self, models: Any, input_dir: str | os.PathLike[str]) -> None:
        # No undo is kept: accelerate calls nothing after it has loaded (see the module's docstring).
        self.last_report, _ = restore_from(
            self,
            input_dir,
            strict=self.strict,
            on_world_size_change=self.on_world_size_change,
            trusted=self.trusted,
            writer="callstate.accelerate.register",
            relocate=self.relocate,
        )

    def attach(self, accelerator: Any) -> None:
        """Hook these callbacks into ``accelerator``'s ``save_state``/``load_state`` (``register`` calls it).

        Raises:
            DuplicateKeyError: these callbacks are attached to an Accelerator already, or
                ``accelerator`` saves another registry already (both would write one file).
        """
        if self._accelerator is not None:
            raise DuplicateKeyError(
                f"{self!r} is registered on an Accelerator already: call its detach() first.",
                key=CHECKPOINT_FILE,
                callbacks=tuple(self),
            )
        present = _registered.get(accelerator)
        if present is not None:
            raise DuplicateKeyError(
                f"This Accelerator saves {present!r} already, into the same {CHECKPOINT_FILE!r}: register "
                "every callback in one call (or on the registry it returned), or call its detach() first.",
                key=CHECKPOINT_FILE,
                callbacks=tuple(present),
            )
        self._handles = [
            accelerator.register_save_state_pre_hook(self._save),
            accelerator.register_load_state_pre_hook(self._load),
        ]
        self._accelerator = weakref.ref(accelerator)
        _registered[accelerator] = self

    def detach(self) -> None:
        """Remove the hooks: the Accelerator's later saves and loads leave these callbacks alone."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        accelerator = self._accelerator() if self._accelerator is not None else None
        if accelerator is not None and _registered.get(accelerator) is self:
            del _registered[accelerator]
        self._accelerator = None


def register(
    accelerator: Any,
    callbacks: Iterable[object],
    *,
    strict: bool = False,
    on_world_size_change: Policy = "error",
    trusted: bool = False,
    relocate: Mapping[Any, Any] | None = None,
) -> AcceleratorCallbacks:
    """Save ``callbacks`` with every ``accelerator.save_state(dir)``; restore them with ``load_state(dir)``.

    ``save_state`` writes ``dir/callbacks.callstate`` (``CHECKPOINT_FILE``); ``load_state``
    restores every callback from it, in one transaction, before accelerate loads the models (a
    failed restore changes no callback, and ``load_state`` raises before loading anything; if
    accelerate's own loading fails afterwards, the callbacks stay restored: see the module). States
    that no callback claims are kept in ``registry.unclaimed`` and written again by the next save.
    Call ``save_state``/``load_state`` on every process, as accelerate requires.

    Args:
        accelerator: an ``accelerate.Accelerator``.
        callbacks: the callbacks (objects with ``state_dict``/``load_state_dict``, or
            ``@callstate.stateful``), a list or any iterable, or an ``AcceleratorCallbacks``
            not registered yet.
        strict: ``load_state`` refuses, changing nothing, when a saved state has no callback or a
            callback has no saved state (``StateMismatchError``).
        on_world_size_change: for per-rank states saved at another world size: ``"error"``,
            ``"broadcast"`` or ``"reshard"`` (see ``callstate.distributed.load_state_dict``).
        trusted: also decode states saved with pickle, which can run code from the file.
        relocate: ``{old prefix: new prefix}``: ``load_state`` moves the paths inside the saved
            states that lie under an old prefix (a project directory that was moved) to the new
            one before the callbacks see them (see ``callstate.load``); the report's
            ``relocated`` counts them.

    Returns:
        The ``AcceleratorCallbacks`` holding the callbacks; its ``last_report`` is set by each
        ``load_state``.

    Raises:
        DuplicateKeyError: two callbacks share a key, or ``accelerator`` has a registry already.
        TargetTypeError: ``callbacks`` is a plain ``CallbackRegistry`` (its keys and kept states
            cannot move into the one returned), a mapping, or not iterable.
        TypeError, ValueError: ``relocate`` is malformed (as for ``callstate.load``); nothing is
            registered.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``relocate``.
    """
    check_policy(on_world_size_change)
    relocation = relocation_of(relocate)
    if isinstance(callbacks, AcceleratorCallbacks):
        registry = callbacks
        registry.strict, registry.trusted = strict, trusted
        registry.on_world_size_change = on_world_size_change
        registry.relocate = relocation
    elif isinstance(callbacks, CallbackRegistry):
        raise TargetTypeError(
            "callstate.accelerate.register takes the callbacks, not a CallbackRegistry: pass the list, "
            "then register further ones on the registry it returns (callbacks.register(obj, key=..., "
            "per_rank=True)), or build a callstate.accelerate.AcceleratorCallbacks.",
            got=type(callbacks),
        )
    else:
        registry = AcceleratorCallbacks(
            callbacks,
            strict=strict,
            on_world_size_change=on_world_size_change,
            trusted=trusted,
            relocate=relocation,
        )
    registry.attach(accelerator)
    return registry

del _accelerate
