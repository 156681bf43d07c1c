"""relay/protocol/names.py: the one topic rule and the one event-type rule."""

from __future__ import annotations

import re

import pytest

from relay.protocol import names
from relay.protocol.wire import WireError, encode_entry, encode_event


@pytest.mark.parametrize(("topic", "ok"), [
    ("news", True), ("a.b_c:d-e", True), ("x" * 128, True), ("", False), ("x" * 129, False),
    ("with space", False), ("slash/es", False), ("ünicode", False), ("star*", False),
])
def test_topics(topic: str, ok: bool) -> None:
    assert names.is_topic(topic) is ok


@pytest.mark.parametrize(("event", "ok"), [
    ("tick", True), ("t" * 64, True), ("t" * 65, False), ("", False), ("a\x00b", False),
    ("a\nb", False), ("a\rb", False), ("ünïcode", True), ("tick\n", False),
    ("tick\r\n", False), ("\ntick", False), ("tick\x00", False),
])
def test_event_types(event: str, ok: bool) -> None:
    assert names.event_type_ok(event) is ok
    # the pattern publishing checks with (msgspec, Python's re): the same answer
    assert (re.search(names.EVENT_TYPE_PATTERN, event) is not None
            and len(event) <= names.MAX_EVENT_TYPE) is ok


def test_the_wire_keeps_the_same_rule_for_every_field() -> None:
    with pytest.raises(WireError):
        encode_event(b"x", event="a\nb")
    # an entry from any producer: a field that would break its line is left out, and said so
    frame, ok = encode_entry(b"1-1", b"data", ((b"event", b"ok"), (b"upstream", b"bad\rone")))
    assert frame == b"id: 1-1\nevent: ok\ndata: data\n\n" and not ok
