"""Spans of time as a command line spells them (relay/duration.py)."""

from __future__ import annotations

import pytest

from relay.duration import seconds


@pytest.mark.parametrize(("span", "secs"), [("60", 60), ("60s", 60), ("2m", 120),
                                            ("1h30m", 5400), ("1.5s", 1.5)])
def test_durations(span: str, secs: float) -> None:
    assert seconds(span) == secs


@pytest.mark.parametrize("span", ["", "abc", "10x", "5m junk"])
def test_bad_durations(span: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        seconds(span)
