"""The audience's bookkeeping without Redis: what a period writes, how readers add it up."""

from __future__ import annotations

from relay.storage.presence import Audience, changes


def test_a_period_writes_only_what_changed_and_zero_for_topics_gone() -> None:
    assert changes({}, {"a": 2}) == {"a": 2}
    assert changes({"a": 2, "b": 1}, {"a": 2, "b": 3}) == {"b": 3}
    assert changes({"a": 2, "b": 1}, {"a": 2}) == {"b": 0}
    assert changes({"a": 2}, {"a": 2}) == {}


def test_busiest_first_then_by_name() -> None:
    seen = Audience({"b": 3, "a": 3, "c": 9, "d": 1}, processes=2)
    assert seen.busiest(3) == [("c", 9), ("a", 3), ("b", 3)]
    assert seen.streams == 16
