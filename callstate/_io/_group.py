"""The process group a collective runs in, and errors carried between its ranks.

Without an initialised ``torch.distributed`` process group, code acts as the single process of rank
0 in a world of size 1. torch is imported only when a group is asked for.
"""

from __future__ import annotations

import pickle
from typing import Any

import attrs

from ..errors import CallstateError


@attrs.frozen
class Group:
    """A process group, this process's rank in it, and its size."""

    group: Any  # a torch ProcessGroup, or None for the default one
    rank: int
    world_size: int
    dist: Any  # torch.distributed, or None in a single process

    @property
    def active(self) -> bool:
        """Whether collectives are needed: a process group of more than one rank."""
        return self.dist is not None and self.world_size > 1


def group_of(group: Any) -> Group:
    """Return the process group ``group`` (None: the default one), or a world of one without one."""
    dist: Any
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is installed wherever this module is tested
        dist = None
    if dist is None or not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError(
                "group= was given but torch.distributed has no initialised process group: call "
                "torch.distributed.init_process_group() first, or leave group=None."
            )
        return Group(None, 0, 1, None)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(
            "This process is not a member of group=: call callstate.distributed only on the ranks of "
            "the group."
        )
    return Group(group, rank, dist.get_world_size(group), dist)




Portable = tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]


def portable(exc: BaseException) -> Portable:
    """Return what rebuilds ``exc`` in another process: its class, args and attributes."""
    attributes: dict[str, Any] = {}
    for name, value in vars(exc).items():
        if name.startswith("__"):
            continue
        try:
            pickle.dumps(value)
            attributes[name] = value
        except Exception:
            attributes[name] = repr(value)
    cls: type[BaseException] = type(exc)
    args: tuple[Any, ...] = exc.args
    if isinstance(exc, OSError) and exc.filename is not None:
        args = (exc.errno, exc.strerror, exc.filename)  # not kept in args by OSError itself
    try:
        pickle.loads(pickle.dumps((cls, args)))
    except Exception:
        cls, args = CallstateError, (f"{type(exc).__qualname__}: {exc}",)
    return cls, args, attributes


def rebuild(portable: Portable, rank: int) -> BaseException:
    """Return the error another rank raised, as this rank raises it."""
    cls, args, attributes = portable
    exc: BaseException
    try:
        exc = cls(*args)
    except Exception:
        # callstate's errors take their data as keyword arguments: restore it directly.
        exc = cls.__new__(cls)
        exc.args = args
    exc.__dict__.update(attributes)
    if issubclass(cls, CallstateError) and args and isinstance(args[0], str):
        exc.args = (f"On rank {rank}: {args[0]}", *args[1:])
    else:
        notes = getattr(exc, "__notes__", None)
        exc.__notes__ = [*(notes if isinstance(notes, list) else []), f"(raised on rank {rank})"]  # type: ignore[attr-defined]
    return exc


def agree(g: Group, error: BaseException | None) -> None:
    """Raise on every rank if any rank failed: this rank's own error, else the first other one."""
    if not g.active:
        if error is not None:
            raise error
        return
    outcomes: list[Any] = [None] * g.world_size
    mine = None
    if error is not None:
        mine = portable(error)
    g.dist.all_gather_object(outcomes, mine, group=g.group)
    if error is not None:
        raise error
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            raise rebuild(outcome, rank)
