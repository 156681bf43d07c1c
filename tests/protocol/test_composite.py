"""Composite ids and topic sets (relay/protocol/composite.py), and the frames a client on
several topics is sent (relay/protocol/multi.py), without I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import composite, ids
from relay.protocol.composite import BadSet, TopicSet
from relay.protocol.multi import MultiReader
from relay.protocol.resume import CatchUp, HistoryPage, Reader, reset_frame
from relay.protocol.ring import Ring
from relay.protocol.wire import Decoder, Event, encode_event

U64 = (1 << 64) - 1
topic_names = st.text("abcxyz09._:-", min_size=1, max_size=12)
keys = st.one_of(st.just(0), st.tuples(st.integers(0, U64), st.integers(0, U64)).map(
    lambda p: p[0] << 64 | p[1]), st.integers(1_700_000_000_000, 1_800_000_000_000).map(
    lambda ms: ms << 64))


@given(st.lists(topic_names, min_size=1, max_size=8, unique=True), st.data())
def test_every_position_reads_back_from_the_id_of_every_event(names: list[str],
                                                                data: st.DataObject) -> None:
    topic_set = TopicSet.parse(names, 64)
    readers = [Reader(0, data.draw(keys)) for _ in names]
    multi = MultiReader(topic_set, readers)
    start = composite.parse(multi.last_event_id)
    assert start.topic == ""
    assert topic_set.positions(start) == [r.last_id for r in readers]
    i = data.draw(st.integers(0, len(names) - 1))
    key = data.draw(keys)
    line = multi.reframe(i, [key], [b"id: x\ndata: d\n\n"]).split(b"\n")[0]
    got = composite.parse(line[4:].decode())
    assert got.topic == topic_set.topics[i]
    want = [r.last_id for r in readers]
    want[i] = key
    assert topic_set.positions(got) == want
    assert len(line) - 4 <= composite.longest_id(topic_set.topics)


def test_an_id_is_unreserved_url_characters_and_says_its_topic_first() -> None:
    topic_set = TopicSet.parse(["scores", "match:12", "alerts"], 16)
    multi = MultiReader(topic_set, [Reader(0, ids.parse("1732147200000-0")), Reader(0, 0),
                                    Reader(0, ids.parse("1732147200001-5"))])
    frame = multi.reframe(2, [ids.parse("1732147200100-3")],
                          [b"id: 1732147200100-3\nevent: goal\ndata: a\ndata: b\n\n"])
    text = frame.split(b"\n")[0][4:].decode()
    assert text.split("~")[0] == "scores"  # what a page reads: e.lastEventId.split("~")[0]
    assert set(text) <= set(composite.ALPHABET + "._~:-" + "scorematch")
    # the publisher's type and data, byte for byte
    assert frame.split(b"\n", 1)[1] == b"event: goal\ndata: a\ndata: b\n\n"


def test_the_first_frame_sets_the_id_and_dispatches_nothing() -> None:
    topic_set = TopicSet.parse(["a", "b"], 16)
    multi = MultiReader(topic_set, [Reader(0, 5), Reader(0, 0)])
    decoder = Decoder()
    assert decoder.feed(multi.start_frame()) == []
    assert decoder.last_event_id == multi.last_event_id
    assert topic_set.positions(composite.parse(decoder.last_event_id)) == [5, 0]


def test_a_reset_names_its_topic_and_carries_its_position() -> None:
    topic_set = TopicSet.parse(["a", "b"], 16)
    multi = MultiReader(topic_set, [Reader(0, 5), Reader(0, 9)])
    frame = multi.retag_reset(1, reset_frame("expired", 9, 40, 39))
    event = Decoder().feed(frame)[0]
    assert isinstance(event, Event) and event.event == "ssedge.reset"
    assert json.loads(event.data) == {"topic": "b", "reason": "expired",
                                      "requested": "0-9", "resume_from": "0-40"}
    assert topic_set.positions(composite.parse(event.id)) == [5, 39]


def test_a_catch_up_page_resets_then_entries_each_with_its_position() -> None:
    topic_set = TopicSet.parse(["a", "b"], 16)
    ring = Ring(4, 1 << 20)
    ring.prime([20, 21], [encode_event(b"x", id="0-20"), encode_event(b"x", id="0-21")], 19)
    reader = Reader(ring.position_after(19), 3)
    reader.catch_up = CatchUp(3, 19, 20)
    multi = MultiReader(topic_set, [Reader(0, 1), reader])
    page = HistoryPage([(9, reset_frame("expired", 3, 10, 9)),
                        (10, encode_event(b"10", id="0-10", event="t")),
                        (12, encode_event(b"12", id="0-12"))], 2, 19)
    events = Decoder().feed(b"".join(multi.page_frames(1, page)))
    assert [(e.event, e.data[:12]) for e in events if isinstance(e, Event)] == [
        ("ssedge.reset", '{"topic":"b"'), ("t", "10"), ("message", "12")]
    assert [topic_set.positions(composite.parse(e.id))[1] for e in events
            if isinstance(e, Event)] == [9, 10, 12]
    assert reader.catch_up is None and reader.last_id == 12


@pytest.mark.parametrize(("raw", "why"), [
    ([], "at least one topic"),
    (["a", "b", "a"], "'a' is named twice"),
    (["a", "b c"], "'b c': a topic is"),
    ([f"t{i}" for i in range(5)], "at most 4 topics"),
    (["t45216", "t53325"], "composite-id tags are alike"),
])
def test_a_set_that_can_never_be_served_says_why(raw: list[str], why: str) -> None:
    with pytest.raises(BadSet, match=why):
        TopicSet.parse(raw, 4)


def test_a_set_whose_reconnect_would_not_fit_the_edge_is_refused() -> None:
    long = [f"{n:02d}" + "x" * 126 for n in range(40)]
    with pytest.raises(BadSet, match="would not fit"):
        TopicSet.parse(long, 64, request_bytes=40 * 135)
    assert TopicSet.parse(long[:16], 64, request_bytes=16 * 135)


def test_topics_added_start_anew_and_removed_ones_are_forgotten() -> None:
    old = TopicSet.parse(["a", "b"], 16)
    multi = MultiReader(old, [Reader(0, 7), Reader(0, 8)])
    new = TopicSet.parse(["b", "c"], 16)
    assert new.positions(composite.parse(multi.last_event_id)) == [8, None]
    assert new.positions(None) == [None, None]


@pytest.mark.parametrize(("text", "why"), [
    ("1732147200000-0", "no '~'"),
    ("b c~" + composite.tag("a"), "its topic"),
    ("~abc", "5-character tag"),
    ("~" + composite.tag("a") + "!", "base-62"),
    ("~" + composite.tag("a") + "." + composite.tag("a"), "appears twice"),
    ("~" + composite.tag("a") + "zzzzzzzzzzzz", "base-62 digits"),
    ("~" + composite.tag("a") + "zzzzzzzzzzz", "64 bits"),
    ("~" + composite.tag("a") + "1_", "base-62 digits"),
    ("~" + "x" * 5000, "longer than"),
    ("~" + ".".join(f"{n:05d}" for n in range(65)), "more than 64"),
])
def test_a_bad_composite_id_says_why(text: str, why: str) -> None:
    with pytest.raises(BadSet, match=why):
        composite.parse(text)


def test_tags_are_fixed() -> None:
    """Ids outlive processes and releases: a topic's tag must never change."""
    assert [composite.tag(t) for t in ("scores", "a", "alerts")] == ["Q27kq", "vAjTL", "bV79n"]
