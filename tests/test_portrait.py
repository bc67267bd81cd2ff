"""Telling callbacks apart in messages: portraits, differing fields, the duplicate-key error."""

from __future__ import annotations

from strategies import Counter

import callstate
from callstate._core._portrait import differing_fields, duplicate_error, portrait


def test_differing_fields_names_the_attributes_that_differ() -> None:
    """Public attributes whose values differ are named; private ones and equal ones are not."""
    a, b = Counter("epochs"), Counter("epochs", verbose=False)
    assert "verbose" in differing_fields(a, b)
    assert "what" not in differing_fields(a, b)


def test_portrait_shows_class_and_fields_briefly() -> None:
    """A portrait names the class and its public fields, each cut short."""
    text = portrait(Counter("x" * 200))
    assert text.startswith("Counter(") and len(text) < 200


def test_duplicate_error_says_which_field_to_add() -> None:
    """Two look-alikes: the error names both positions and the differing field to add to identity=."""
    a, b = Counter("epochs"), Counter("epochs", verbose=False)
    err = duplicate_error("k", (0, a), (3, b))
    assert isinstance(err, callstate.DuplicateKeyError)
    assert "callback #0" in str(err) and "callback #3" in str(err) and "'verbose'" in str(err)
    assert err.callbacks == (a, b)
