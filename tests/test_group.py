"""The process group of a collective, and errors carried between ranks."""

from __future__ import annotations

import pickle

import pytest

import callstate
from callstate._io._group import agree, group_of, portable, rebuild


def test_without_a_process_group_it_is_rank_0_of_1() -> None:
    """With no process group there is one rank, and group= cannot be given."""
    pytest.importorskip("torch")
    g = group_of(None)
    assert (g.rank, g.world_size, g.active) == (0, 1, False)
    with pytest.raises(ValueError, match="no initialised process group"):
        group_of(object())


def test_a_callstate_error_travels_with_its_data_and_names_its_rank() -> None:
    """A CallstateError rebuilt on another rank keeps its class and attributes and says where it came from."""
    err = callstate.RestoreError("it broke", key="k", rolled_back=["a"])
    again = rebuild(pickle.loads(pickle.dumps(portable(err))), 3)
    assert type(again) is callstate.RestoreError
    assert str(again) == "On rank 3: it broke" and again.key == "k" and again.rolled_back == ("a",)


def test_another_error_gets_a_note() -> None:
    """A builtin error keeps its type and gets a note naming the rank."""
    again = rebuild(portable(FileNotFoundError(2, "No such file", "/x")), 0)
    assert isinstance(again, FileNotFoundError) and again.filename == "/x"
    assert again.__notes__ == ["(raised on rank 0)"]


def test_agree_alone_raises_this_ranks_error() -> None:
    """In a world of one, agree raises this rank's own error, or nothing."""
    from callstate._io._group import Group

    one = Group(None, 0, 1, None)
    agree(one, None)
    with pytest.raises(KeyError):
        agree(one, KeyError("x"))
