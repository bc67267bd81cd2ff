"""The Lightning adapter: callstate inside Lightning's Trainer, and Lightning checkpoints outside it.

``CallstateCallback`` goes into ``Trainer(callbacks=[...])``. It saves the states of plain,
non-Lightning objects into the checkpoint's ``"callbacks"`` next to Lightning's own, keeps the
saved states that no callback claims and writes them back, can refuse a resume that does not
match (``strict=True``), and restores every callback atomically. ``read_callback_states``,
``restore``, ``to_callstate`` and ``from_callstate`` work on Lightning ``.ckpt`` files with no
Trainer.

A plain object put in ``Trainer(callbacks=[...])`` itself gets a ``TargetTypeError`` saying to
pass it to ``CallstateCallback([...])`` (Lightning alone crashes on it with an ``AttributeError``):
importing this module puts that check before Lightning's own check of the list.

Works with ``lightning.pytorch`` and ``pytorch_lightning`` (Lightning >= 2.0), whichever is
installed; ``CallstateCallback`` is a Callback of both when both are. Install with
``pip install 'callstate[lightning]'``.

.. versionadded:: 0.1
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._core import (
    VERSIONS_KEY,
    CallbackRegistry,
    Member,
    RestoreReport,
    Saved,
    aliases_of,
    as_registry,
    is_stateful,
    relocation_of,
    share_objects,
    spec_of,
    version_of,
)
from ._encoding import EncodedState
from ._io import check_policy, gather_in_place, rank_view, read, save
from ._torch import callbacks_of, torch_load, torch_save
from .errors import DuplicateKeyError, MissingDependencyError, TargetTypeError, UnsupportedLightningError

__all__ = [
    "CallstateCallback",
    "UnsupportedLightningError",
    "from_callstate",
    "read_callback_states",
    "restore",
    "to_callstate",
]

_NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
_VERSION_KEY = "pytorch-lightning_version"
_CALLBACKS = "callbacks"
# Lightning's warning, before any callback runs, about saved states that no Trainer callback has.
_ON_LOAD = "_call_callbacks_on_load_checkpoint"
_NO_CALLBACK_WARNING = r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"


def _version(text: object) -> tuple[int, ...]:
    """Return the leading numbers of a version string: ``"1.9.0rc1"`` -> ``(1, 9, 0)``."""
    numbers = []
    for part in str(text).split(".")[:3]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def _callback_bases() -> tuple[type, ...]:
    found: list[type] = []
    for name in _NAMESPACES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if _version(getattr(module, "__version__", "0")) >= (2, 0):
            found.append(module.Callback)
    if not found:
        raise MissingDependencyError(
            "callstate.lightning needs Lightning >= 2.0 (lightning.pytorch or pytorch_lightning), and "
            "neither is installed: pip install 'callstate[lightning]'.",
            name="lightning",
            extra="lightning",
        )
    return tuple(found)


_CALLBACK_BASES = _callback_bases()


class _CheckedCallbacks:
    """Stands in for Lightning's ``_validate_callbacks_list``: a non-Callback gets a callstate error.

    Lightning's own crashes with an ``AttributeError`` (``'X' object has no attribute
    'state_key'``) on a plain object in ``Trainer(callbacks=[...])``, the place where a user new
    to callstate puts it; this check runs first and says where it goes.
    """

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, callbacks: list[Any]) -> Any:
        plain = [cb for cb in callbacks if not isinstance(cb, _CALLBACK_BASES)]
        if plain:
            names = ", ".join(type(cb).__qualname__ for cb in plain)
            raise TargetTypeError(
                f"Trainer(callbacks=[...]) holds {names}, which is not a Lightning Callback: give an "
                "object with a state_dict/load_state_dict to callstate's CallstateCallback instead, "
                "Trainer(callbacks=[CallstateCallback([obj])]), which saves and restores it in every "
                "checkpoint.",
                got=type(plain[0]),
            )
        return self.original(callbacks)


def _check_callbacks_lists() -> None:
    """Put ``_CheckedCallbacks`` in front of each installed Lightning's ``_validate_callbacks_list``."""
    for name in _NAMESPACES:
        module = sys.modules.get(f"{name}.trainer.connectors.callback_connector")
        current = getattr(module, "_validate_callbacks_list", None)
        if module is not None and callable(current) and not isinstance(current, _CheckedCallbacks):
            module._validate_callbacks_list = _CheckedCallbacks(current)  # type: ignore[attr-defined]


_check_callbacks_lists()
_BASE_STATE_DICTS = frozenset(base.state_dict for base in _CALLBACK_BASES)  # type: ignore[attr-defined]

if TYPE_CHECKING:
    _Callback = object
else:
    # One class under both namespaces' Callback, so either Trainer accepts it.
    _Callback = (
        _CALLBACK_BASES[0]
        if len(_CALLBACK_BASES) == 1
        else type("_Callback", _CALLBACK_BASES, {"__module__": __name__, "__qualname__": "_Callback"})
    )


def _saves_state(callback: object) -> bool:
    """Whether a Trainer callback has a ``state_dict`` of its own (Lightning's test for "stateful")."""
    return getattr(type(callback), "state_dict", None) not in _BASE_STATE_DICTS and is_stateful(callback)


def _trainer_members(callbacks: Iterable[Any]) -> list[Member]:
    """Return the Trainer callbacks that save a state, under Lightning's keys and its legacy key."""
    found = []
    for cb in callbacks:
        if not _saves_state(cb):
            continue
        # Lightning reads `states.get(cb.state_key, states.get(cb._legacy_state_key))`; the legacy
        # key is the class, as Lightning < 1.5 wrote. state_key itself may be a class too.
        legacy: Any = getattr(cb, "_legacy_state_key", type(cb))
        # A key callstate.identify lengthened: the key before it is an alias (checkpoints saved before).
        aliases = (*aliases_of(cb), *(() if legacy == cb.state_key else (legacy,)))
        found.append(Member(cb.state_key, cb, aliases))
    return found


def _empty_saved_key(states: Mapping[Any, Any], member: Member) -> Any:
    """Return the key of ``member``'s saved state when that state is empty (Lightning skips it), or None."""
    for key in (member.key, *member.aliases):
        if key in states:
            try:
                empty = not states[key]
            except Exception:  # a state without a truth value is not empty
                empty = False
            return key if empty else None
    return None


def _unsupported(trainer: Any, internal: str) -> UnsupportedLightningError:
    top = type(trainer).__module__.partition(".")[0]
    version = str(getattr(sys.modules.get(top), "__version__", "unknown"))
    return UnsupportedLightningError(
        f"CallstateCallback cannot restore in Lightning's order with {top} {version}: it has no "
        f"{internal}. callstate.lightning is tested with Lightning 2.6; install a tested version, or "
        "report the version at callstate's issue tracker.",
        version=version,
        internal=internal,
    )


class _RestoreCallbacks:
    """Stands in for one Trainer's ``_CheckpointConnector.restore_callbacks``.

    Lightning's own runs every callback's ``on_load_checkpoint``, then every ``load_state_dict``.
    This runs the first phase as Lightning does, then restores every callback in one transaction
    of ``adapter`` instead of the second.
    """

    def __init__(self, adapter: CallstateCallback, connector: Any, on_load_checkpoint: Any) -> None:
        self.adapter = adapter
        self.connector = connector
        self.on_load_checkpoint = on_load_checkpoint

    def __call__(self) -> None:
        checkpoint = self.connector._loaded_checkpoint
        if not checkpoint:
            return
        trainer = self.connector.trainer
        if not any(cb is self.adapter for cb in trainer.callbacks):  # taken out of the Trainer since
            type(self.connector).restore_callbacks(self.connector)
            return
        with warnings.catch_warnings():
            # The adapter restores or keeps every saved state, and its own CallstateWarning says
            # what a partial restore left out: Lightning's warning would name states that are not lost.
            warnings.filterwarnings("ignore", message=_NO_CALLBACK_WARNING, category=UserWarning)
            self.on_load_checkpoint(trainer, checkpoint)
        self.adapter.restore_checkpoint(trainer, checkpoint)


class CallstateCallback(_Callback):
    """A Lightning Callback that makes the Trainer's checkpoints lose no callback state.

    Add it to ``Trainer(callbacks=[...])``. It:

    - saves the states of ``callbacks`` (plain objects with ``state_dict``/``load_state_dict``, not
      Lightning Callbacks) into the checkpoint's ``"callbacks"``, next to Lightning's own, and
      restores them when ``fit``/``validate``/``test`` is given ``ckpt_path``;
    - keeps the saved states that no callback claims (in ``registry.unclaimed``) and writes them
      back at every later save, where Lightning alone drops them;
    - restores all callbacks, the Trainer's and its own, atomically, after every callback's
      ``on_load_checkpoint`` ran (Lightning's order, wherever it sits in ``callbacks``): when a
      ``load_state_dict`` raises, every one of them gets its previous state back and ``fit`` raises
      ``RestoreError``;
    - with ``strict=True``, refuses a resume, changing nothing, when a saved state has no callback
      or a callback with a non-empty state has no saved state (``StateMismatchError``).

    Args:
        callbacks: a ``CallbackRegistry`` or a list of objects whose states to save, or None (only
            the keeping of unclaimed states, strictness and atomic restore).
        strict: refuse a resume that does not match exactly.
        on_world_size_change: for per-rank states (``callstate.distributed``) saved at another world
            size: ``"error"``, ``"broadcast"`` or ``"reshard"``.
        relocate: ``{old prefix: new prefix}``: on resume, paths inside every callback's saved state
            (a ``ModelCheckpoint``'s ``dirpath``, ``best_model_path``, ``best_k_models``) that lie
            under an old prefix are moved to the new one before the callback sees them (see
            ``callstate.load``), so a run moved to another place keeps its best checkpoints.

    Attributes:
        registry: the registry of the plain objects; its ``unclaimed`` holds the kept states.
        strict: as given.
        last_report: the ``RestoreReport`` of the last resume, covering every callback, or None.

    Raises (when the Trainer starts):
        DuplicateKeyError: an object's key is also a Trainer callback's key, or the Trainer has two
            ``CallstateCallback``.
        UnsupportedLightningError: this Lightning lacks an internal the restore relies on (tested
            with Lightning 2.6.6).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        callbacks: CallbackRegistry | Iterable[object] | None = None,
        *,
        strict: bool = False,
        on_world_size_change: str = "error",
        relocate: Mapping[Any, Any] | None = None,
    ):
        check_policy(on_world_size_change)
        self.relocate = relocation_of(relocate)
        self.on_world_size_change = on_world_size_change
        self.registry = as_registry((), what="CallstateCallback") if callbacks is None else as_registry(
            callbacks, what="CallstateCallback"
        )
        self.strict = strict
        self.last_report: RestoreReport | None = None

    def __repr__(self) -> str:
        return f"CallstateCallback({self.registry!r}, strict={self.strict})"

    # -- the Trainer's callbacks --------------------------------------------------------------------

    def _trainer_callbacks(self, trainer: Any) -> list[Any]:
        return [cb for cb in trainer.callbacks if cb is not self]

    def _check_keys(self, trainer: Any) -> None:
        others = self._trainer_callbacks(trainer)
        twins = [cb for cb in others if isinstance(cb, CallstateCallback)]
        if twins:
            raise DuplicateKeyError(
                f"The Trainer has {len(twins) + 1} CallstateCallback: each would save the same states. "
                "Pass a single CallstateCallback, with all the objects in its callbacks=.",
                key=type(self).__qualname__,
                callbacks=(self, *twins),
            )
        by_key = {cb.state_key: cb for cb in others}
        for key, obj in self.registry.items():  # raises DuplicateKeyError between its own objects
            if key in by_key:
                theirs = by_key[key]
                raise DuplicateKeyError(
                    f"State key {key!r} of {type(obj).__qualname__} in CallstateCallback(callbacks=...) "
                    f"is also the key of the Trainer callback {type(theirs).__qualname__}: one state would "
                    "overwrite the other in the checkpoint. Register the object under another key "
                    "(registry.register(obj, key=...)), or give it to the Trainer only.",
                    key=key,
                    callbacks=(obj, theirs),
                )

    def _per_rank_keys(self, trainer: Any, ours: list[str]) -> list[str]:
        """Return the per-rank keys of the Trainer's callbacks, then ``ours`` (the registry's)."""
        theirs = [
            cb.state_key
            for cb in self._trainer_callbacks(trainer)
            if _saves_state(cb) and getattr(spec_of(type(cb)), "per_rank", False)
        ]
        return theirs + ours

    # -- hooks -------------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Check that no key is shared with a Trainer callback; take over the restore of callbacks.

        Raises:
            DuplicateKeyError: as the class says.
            UnsupportedLightningError: this Lightning lacks an internal the restore relies on.
        """
        self._check_keys(trainer)
        self._install(trainer)

    def _install(self, trainer: Any) -> None:
        """Make this Trainer's checkpoint connector restore callbacks through ``_RestoreCallbacks``.

        Only this Trainer's connector changes (an instance attribute); installing again is a no-op.
        """
        connector = getattr(trainer, "_checkpoint_connector", None)
        if connector is None:
            raise _unsupported(trainer, "Trainer._checkpoint_connector")
        where = type(connector).__qualname__
        if not callable(getattr(type(connector), "restore_callbacks", None)):
            raise _unsupported(trainer, f"{where}.restore_callbacks")
        if not hasattr(connector, "_loaded_checkpoint"):
            raise _unsupported(trainer, f"{where}._loaded_checkpoint")
        namespace = type(connector).__module__.partition(".trainer.")[0]
        on_load = getattr(importlib.import_module(f"{namespace}.trainer.call"), _ON_LOAD, None)
        if not callable(on_load):
            raise _unsupported(trainer, f"{namespace}.trainer.call.{_ON_LOAD}")
        installed = vars(connector).get("restore_callbacks")
        if not (isinstance(installed, _RestoreCallbacks) and installed.adapter is self):
            connector.restore_callbacks = _RestoreCallbacks(self, connector, on_load)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Do nothing: every callback is restored after all the ``on_load_checkpoint`` hooks ran.

        ``setup`` made the Trainer restore its callbacks through the adapter: first every
        callback's ``on_load_checkpoint`` (this one included) as Lightning calls them, then all
        the states in one transaction, in place of Lightning's per-callback ``load_state_dict``.
        """

    def restore_checkpoint(self, trainer: Any, checkpoint: Mapping[str, Any]) -> None:
        """Restore every callback from ``checkpoint["callbacks"]``, atomically; keep the rest.

        The Trainer calls it, through the hook ``setup`` installs, once every ``on_load_checkpoint`` ran.
        """
        states = checkpoint.get(_CALLBACKS)
        if states is None:  # a weights-only checkpoint: Lightning restores no callback either
            return
        theirs = _trainer_members(self._trainer_callbacks(trainer))
        keyed = theirs + self.registry.members()
        # Under DDP: this rank's own per-rank states (see callstate.distributed).
        view = rank_view(keyed, states, self.on_world_size_change)
        # Lightning loads a saved state only `if state:`; a callback whose saved state is empty keeps its own.
        for member in theirs:
            skipped = _empty_saved_key(view, member)
            if skipped is not None:
                del view[skipped]
                keyed.remove(member)
        # Lightning never saves an empty state: a callback whose state is empty is not missing.
        # A checkpoint written without the adapter has no versions: every state is at version 1.
        versions = checkpoint.get(VERSIONS_KEY)
        where = _ckpt_path(trainer)
        saved = Saved(view, source=where, omits_empty=True, versions=versions, relocate=self.relocate)
        self.last_report = self.registry.begin_restore(saved, strict=self.strict, keyed=keyed).apply()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Add the plain objects' states and the kept unclaimed states to ``checkpoint["callbacks"]``.

        The versions of states that are not at version 1 go into ``checkpoint["callstate:versions"]``,
        a top-level entry that Lightning ignores.
        """
        saved = checkpoint.get(_CALLBACKS)
        if saved is None:  # a weights-only checkpoint
            return
        theirs = {cb.state_key for cb in self._trainer_callbacks(trainer)}
        unclaimed = self.registry.unclaimed
        states, ours = self.registry.states_to_split()  # every key computed once for this save
        # A Trainer callback's version is its class's, even where an unclaimed state had its key.
        versions = {k: v for k, v in states.get(VERSIONS_KEY, {}).items() if k not in theirs}
        versions.update(_trainer_versions(self._trainer_callbacks(trainer)))
        states = {k: v for k, v in states.items() if k != VERSIONS_KEY}
        for key, state in states.items():
            if key in theirs:
                # Only an unclaimed state can get here (setup checked our keys): the Trainer callback
                # that now has its key owns it, even when Lightning skipped its empty state.
                continue
            if key in saved:
                if key in unclaimed:
                    continue
                raise DuplicateKeyError(
                    f"State key {key!r}: another callback's on_save_checkpoint already wrote a state under "
                    "it; register the object under another key.",
                    key=str(key),
                    callbacks=(self.registry[str(key)],),
                )
            saved[key] = state.decode() if isinstance(state, EncodedState) else state
        # Under DDP: every rank's per-rank states, into the file rank 0 writes (see callstate.distributed).
        gather_in_place(saved, self._per_rank_keys(trainer, ours))
        if versions:
            checkpoint[VERSIONS_KEY] = versions


def _ckpt_path(trainer: Any) -> str | None:
    """Return the checkpoint the Trainer is restoring, for messages, if it says."""
    path = getattr(trainer, "ckpt_path", None)
    return os.fspath(path) if isinstance(path, str | os.PathLike) else None


def _trainer_versions(callbacks: Iterable[Any]) -> dict[Any, int]:
    """Return the versions, where not 1, of the Trainer callbacks whose states Lightning saves."""
    found = {}
    for cb in callbacks:
        if _saves_state(cb):
            version = version_of(type(cb))
            if version != 1:
                found[cb.state_key] = version
    return found


# -- checkpoints outside the Trainer --------------------------------------------------------------------

def _migrate_keys(states: Mapping[Any, Any], version: tuple[int, ...] | None) -> dict[Any, Any]:
    """Return ``states`` under today's keys, as Lightning migrates them, when no two keys collide."""
    out: dict[Any, Any] = dict(states)
    if version is not None and version < (1, 9):
        # Lightning 1.9 dropped save_on_train_epoch_end from ModelCheckpoint's key.
        def new_key(key: Any) -> Any:
            if not isinstance(key, str) or not key.startswith("ModelCheckpoint"):
                return key
            return re.sub(", 'save_on_train_epoch_end': (None|True|False)", "", key)

        moved = {new_key(k): v for k, v in out.items()}
        if len(moved) == len(out):
            out = moved
    # Lightning < 1.5 keyed a state by the callback's class; name it as Lightning's default key does.
    named = {(k.__qualname__ if isinstance(k, type) else k): v for k, v in out.items()}
    if len(named) == len(out):
        out = named
    return out


def _callback_states(checkpoint: Any, name: str) -> dict[Any, Any]:
    # A Lightning checkpoint has a version; saved with weights only, it has no "callbacks".
    lightning = isinstance(checkpoint, Mapping) and _VERSION_KEY in checkpoint
    states = callbacks_of(checkpoint, name, required=not lightning, expected="a Lightning checkpoint")
    version = _version(checkpoint[_VERSION_KEY]) if lightning else None
    out = _migrate_keys(states, version)
    if isinstance(checkpoint, Mapping) and VERSIONS_KEY in checkpoint:
        out[VERSIONS_KEY] = checkpoint[VERSIONS_KEY]  # checked by whoever reads it
    return out


def read_callback_states(
    ckpt_path: str | os.PathLike[str],
    *,
    trusted: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[Any, Any]:
    """Return the ``"callbacks"`` of a Lightning checkpoint file: ``{key: state}``.

    Legacy keys are brought up to date as Lightning does: a class (Lightning < 1.5) becomes its
    ``__qualname__``, and ``save_on_train_epoch_end`` leaves pre-1.9 ``ModelCheckpoint`` keys (a key
    stays as saved when renaming it would collide with another). A checkpoint saved with weights
    only gives ``{}``. The checkpoint's ``"callstate:versions"`` (written by ``CallstateCallback``
    when a state's version is not 1) is given as an entry of that name.

    Args:
        ckpt_path: the ``.ckpt`` file, or an fsspec URL (``s3://...``), fetched whole.
        trusted: load with ``torch.load(weights_only=False)``, which can run code from the file.
        storage_options: for a URL, the fsspec backend's options (see ``callstate.save``).

    Raises:
        UnsafeCheckpointError: not ``trusted`` and the file needs a global that
            ``torch.load(weights_only=True)`` refuses (``.global_name`` names it).
        CorruptCheckpointError: the file is not a readable Lightning checkpoint.
        FileNotFoundError: no such file.

    .. versionadded:: 0.1
    """
    name = os.fspath(ckpt_path)
    return _callback_states(torch_load(name, trusted=trusted, storage_options=storage_options), name)


def restore(
    target: CallbackRegistry | Iterable[object],
    ckpt_path: str | os.PathLike[str],
    *,
    strict: bool = False,
    trusted: bool = False,
    relocate: Mapping[Any, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RestoreReport:
    """Restore callbacks from a Lightning checkpoint file, with no Trainer (for example in a custom loop).

    Each callback finds its state by key, alias or legacy key (see ``read_callback_states``), all
    atomically. A callback whose current state is empty is not missing, as Lightning does not save
    empty states. States no callback claims are kept in the registry's ``unclaimed``.

    Args:
        target: a ``CallbackRegistry`` or a list of callbacks.
        ckpt_path: the ``.ckpt`` file.
        strict: refuse, changing nothing, if a callback has no state or a state has no callback.
        trusted: load with ``torch.load(weights_only=False)``, which can run code from the file.
        relocate: ``{old prefix: new prefix}`` for the paths inside the states (see ``callstate.load``).
        storage_options: for an fsspec URL ``ckpt_path``, the backend's options.

    Raises:
        StateMismatchError: ``strict`` and something is missing or unexpected.
        RestoreError: a ``load_state_dict`` raised; every callback has its previous state back.
        UnsafeCheckpointError, CorruptCheckpointError: as ``read_callback_states``.

    .. versionadded:: 0.1
    """
    registry = as_registry(target, what="callstate.lightning.restore")
    relocation = relocation_of(relocate)
    states = read_callback_states(ckpt_path, trusted=trusted, storage_options=storage_options)
    # torch.load gives one object to states that shared it when saved: each then gets a copy of its own.
    fresh = not share_objects(states.values())
    saved = Saved(states, source=os.fspath(ckpt_path), fresh=fresh, omits_empty=True, relocate=relocation)
    return registry.begin_restore(saved, strict=strict).apply()


# -- conversion ------------------------------------------------------------------------------------------


def to_callstate(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    trusted: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write the ``"callbacks"`` of a Lightning checkpoint to a callstate file; return its keys.

    Keys are written as ``read_callback_states`` returns them: unchanged, except legacy keys,
    brought up to date as Lightning does. The file is written atomically.

    Args:
        ckpt_path: the Lightning ``.ckpt`` file.
        out_path: the callstate file to write.
        trusted: load the checkpoint with ``torch.load(weights_only=False)``.
        storage_options: for fsspec URLs (either path), the backend's options (see ``callstate.save``).

    Raises:
        UnsafeCheckpointError, CorruptCheckpointError: as ``read_callback_states``.
        SerializationError: a key is not a str (a legacy class key that could not be renamed) or a
            state cannot be serialised; nothing is written.

    .. versionadded:: 0.1
    """
    states = read_callback_states(ckpt_path, trusted=trusted, storage_options=storage_options)
    meta = {"from": "lightning", "path": os.fspath(ckpt_path)}
    save(states, out_path, meta=meta, storage_options=storage_options)
    return [str(k) for k in states]


def from_callstate(
    callstate_path: str | os.PathLike[str] | bytes,
    checkpoint: str | os.PathLike[str] | dict[str, Any],
    *,
    out_path: str | os.PathLike[str] | None = None,
    trusted: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Put the states of a callstate file into a Lightning checkpoint's ``"callbacks"``, keys unchanged.

    A state already in the checkpoint under the same key is replaced; the others stay.

    Args:
        callstate_path: the callstate file (or its bytes).
        checkpoint: a Lightning checkpoint: a dict, updated in place, or a ``.ckpt`` path, loaded and
            written back atomically (to ``out_path`` when given).
        out_path: where to write the updated checkpoint (default: ``checkpoint`` itself if a path).
        trusted: decode the callstate file and load the checkpoint without their safety checks.
        storage_options: for fsspec URLs (any of the paths), the backend's options.

    Returns:
        The updated checkpoint dict.

    Raises:
        UnsafeCheckpointError, CorruptCheckpointError: a file cannot be read safely or is damaged;
            nothing is written.

    .. versionadded:: 0.1
    """
    states = read(callstate_path, trusted=trusted, storage_options=storage_options)
    versions = states.pop(VERSIONS_KEY, None)
    if isinstance(checkpoint, dict):
        target, name = checkpoint, None
    else:
        name = os.fspath(checkpoint)
        target = torch_load(name, trusted=trusted, storage_options=storage_options)
        _callback_states(target, name)  # checks it is a Lightning checkpoint
    callbacks = callbacks_of(target, name, required=False, expected="a Lightning checkpoint")
    if isinstance(callbacks, dict) and _CALLBACKS in target:
        callbacks.update(states)  # in place: whoever holds the checkpoint's mapping sees the states
    else:
        target[_CALLBACKS] = {**callbacks, **states}
    # The file's states replace the checkpoint's under the same keys, and so do their versions.
    before = target.get(VERSIONS_KEY)
    merged = {k: v for k, v in before.items() if k not in states} if isinstance(before, Mapping) else {}
    merged.update(versions or {})
    if merged:
        target[VERSIONS_KEY] = merged
    else:
        target.pop(VERSIONS_KEY, None)
    destination = os.fspath(out_path) if out_path is not None else name
    if destination is not None:
        torch_save(target, destination, storage_options)
    return target
