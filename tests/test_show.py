"""The one formatter of untrusted values: bounded in time and length, control characters escaped."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from callstate._support._show import escape, show

_RAW_CONTROL = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]} | {"\u202e", "\u2028", "\u200f"}


def _shared(levels: int, make):  # type: ignore[no-untyped-def]
    value = make(())
    for _ in range(levels):
        value = make((value, value))
    return value


def test_a_shared_dag_of_2_to_the_40_paths_is_shown_at_once() -> None:
    """A 40-level shared list, tuple or deque is shown in bounded time and length."""
    for make in (list, tuple, deque, lambda pair: dict(enumerate(pair))):
        start = time.perf_counter()
        text = show(_shared(40, make))
        assert time.perf_counter() - start < 0.5
        assert len(text) <= 260


def test_big_ints_are_shown_by_size() -> None:
    """An int past Python's str-digits limit is shown by its bit length, not a ValueError."""
    assert show(10**5000) == "<int of 16,610 bits>"
    assert show(Fraction(10**5000, 3)) == "Fraction(<int of 16,610 bits>, 3)"
    assert show(range(2**40000)).startswith("range(0, <int of 40,001 bits>")
    assert show(12345) == "12345"


def test_control_characters_are_escaped() -> None:
    """A key drawing a fake row (CR, ESC [2K, BEL, bidi override) is escaped, never raw."""
    key = "EarlyStopping\r\x1b[2K\x07\u202eok\n"
    for text in (escape(key), show(key), show({key: [key]}), show(OrderedDict({key: 1}))):
        assert not _RAW_CONTROL & set(text), text
    assert escape("Counter{'what': 'epochs'}") == "Counter{'what': 'epochs'}"
    assert escape("a\x1bb") == "a\\x1bb"


def test_long_text_is_cut_and_says_its_length() -> None:
    """A long str or bytes is cut to the limit and names its full size."""
    assert escape("x" * 10_000, 50) == "x" * 50 + "...(10,000 characters)"
    assert show(b"\0" * 10**6).endswith("...(1,000,000 bytes)")
    assert len(show("y" * 10**6)) < 300


def test_other_objects_show_their_type_not_their_repr() -> None:
    """An object's own __repr__ is not run: it is shown by its type's name."""

    class Loud:
        def __repr__(self) -> str:
            raise AssertionError("ran")

    assert show(Loud()).endswith(".Loud>")


@given(st.recursive(st.none() | st.integers() | st.text() | st.binary() | st.floats(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner) | st.tuples(inner, inner)))
def test_any_value_is_bounded_and_escaped(value: object) -> None:
    """Whatever the value, the text is at most about the limit and holds no raw control character."""
    text = show(value, 100)
    assert len(text) <= 140
    assert not _RAW_CONTROL & set(text)
    assert len(escape(str(value), 100)) <= 130
    assert not _RAW_CONTROL & set(escape(str(value), 100))


def test_line_breaks_read_as_python_escapes_and_lone_surrogates_are_escaped() -> None:
    """Tab, newline and CR show as \\t, \\n, \\r; a lone surrogate (unprintable anywhere) as \\udxxx."""
    assert escape("a\tb\nc\rd") == "a\\tb\\nc\\rd"
    assert escape("k\ud800") == "k\\ud800"
    assert escape("k\ud800").encode("utf-8")
