"""The wire module against the WHATWG examples, fed whole and one byte at a time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.wire import (
    Comment,
    Decoder,
    Event,
    Item,
    Oversize,
    WireError,
    encode_comment,
    encode_data,
    encode_event,
    encode_retry,
)


def decode_whole(raw: bytes, comments: bool = False) -> list[Event | Comment]:
    return Decoder(comments=comments).feed(raw)


def decode_bytewise(raw: bytes, comments: bool = False) -> list[Event | Comment]:
    dec = Decoder(comments=comments)
    out: list[Event | Comment] = []
    for i in range(len(raw)):
        out.extend(dec.feed(raw[i : i + 1]))
    return out


both = pytest.mark.parametrize("decode", [decode_whole, decode_bytewise], ids=["whole", "bytewise"])


@both
def test_whatwg_stocks_example(decode) -> None:  # type: ignore[no-untyped-def]
    raw = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert decode(raw) == [Event("YHOO\n+2\n10")]


@both
def test_whatwg_four_blocks_example(decode) -> None:  # type: ignore[no-untyped-def]
    raw = (b": test stream\n\ndata: first event\nid: 1\n\n"
           b"data:second event\nid\n\ndata:  third event\n")
    # the last block has no blank line after it: not dispatched
    assert decode(raw) == [Event("first event", id="1"), Event("second event", id="")]


@both
def test_whatwg_two_events_example(decode) -> None:  # type: ignore[no-untyped-def]
    raw = b"data\n\ndata\ndata\n\ndata:\n"
    assert decode(raw) == [Event(""), Event("\n")]


@both
def test_whatwg_identical_events_example(decode) -> None:  # type: ignore[no-untyped-def]
    raw = b"data:test\n\ndata: test\n\n"
    assert decode(raw) == [Event("test"), Event("test")]


@both
def test_line_endings_crlf_cr_lf_mixed(decode) -> None:  # type: ignore[no-untyped-def]
    raw = b"data: a\r\ndata: b\rdata: c\n\r\nevent: x\rdata: d\r\r\n"
    assert decode(raw) == [Event("a\nb\nc"), Event("d", event="x")]
    # a CR that ends the input may be half of a CRLF: nothing is dispatched until it is known
    assert decode(b"data: e\r\r") == []


@both
def test_bom_stripped_once(decode) -> None:  # type: ignore[no-untyped-def]
    raw = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"
    # only the stream's first BOM is stripped; a later one makes an unknown field name
    assert decode(raw) == [Event("a")]


@both
def test_empty_data_not_dispatched_but_id_kept(decode) -> None:  # type: ignore[no-untyped-def]
    dec = Decoder()
    assert dec.feed(b"id: 7\nevent: x\n\ndata: y\n\n") == [Event("y", id="7")]
    assert dec.last_event_id == "7"


@both
def test_id_with_nul_ignored_and_retry_digits_only(decode) -> None:  # type: ignore[no-untyped-def]
    dec = Decoder()
    out = dec.feed(b"id: a\x00b\nretry: 12x\ndata: 1\n\nretry: 250\n\n")
    assert out == [Event("1")]
    assert dec.retry == 250


@both
def test_comments_reported_when_asked(decode) -> None:  # type: ignore[no-untyped-def]
    assert decode(b": keepalive\n\n:\n", True) == [Comment("keepalive"), Comment("")]
    assert decode(b": keepalive\n\n") == []


def test_cr_at_chunk_end_waits_for_next_byte() -> None:
    dec = Decoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\n") == []
    assert dec.feed(b"\r\n") == [Event("a")]


def test_utf8_split_across_chunks() -> None:
    raw = "data: héllo ✓\n\n".encode()
    assert decode_bytewise(raw) == [Event("héllo ✓")]


def test_encode_event_splits_every_line_break() -> None:
    frame = encode_event("a\r\nb\rc\nd", id="1-0", event="t")
    assert frame == b"id: 1-0\nevent: t\ndata: a\ndata: b\ndata: c\ndata: d\n\n"


def test_injection_attempt_stays_one_event() -> None:
    data = "\n\nid: 9\n\ndata: x"
    frame = encode_event(data, id="1-0")
    assert decode_whole(frame) == [Event(data, id="1-0")]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_encode_refuses_breaking_id_and_event(bad: str) -> None:
    with pytest.raises(WireError):
        encode_event("x", id=bad)
    with pytest.raises(WireError):
        encode_event("x", event=bad)


def test_encode_retry_and_comment() -> None:
    assert encode_retry(3000) == b"retry: 3000\n\n"
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert encode_data(b"") == b"data: \n"
    with pytest.raises(WireError):
        encode_retry(-1)


text_no_surrogates = st.text(st.characters(exclude_categories=("Cs",)))
field_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"), min_size=1
)


@given(
    events=st.lists(
        st.tuples(text_no_surrogates, st.one_of(st.none(), field_text), field_text), max_size=8
    ),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_round_trip_any_chunking(
    events: list[tuple[str, str | None, str]], cuts: list[int]
) -> None:
    raw = encode_retry(10) + b"".join(
        encode_event(data, id=id_, event=event) + encode_comment("ka")
        for data, event, id_ in events
    )
    dec = Decoder()
    out: list[Event | Comment] = []
    prev = 0
    for cut in [*sorted(c for c in cuts if c <= len(raw)), len(raw)]:
        out.extend(dec.feed(raw[prev:cut]))
        prev = cut
    normalise = lambda s: s.replace("\r\n", "\n").replace("\r", "\n")  # noqa: E731
    expected = [
        Event(normalise(data), event if event else "message", id_)
        for data, event, id_ in events
    ]
    # a value's single leading space is eaten by the field syntax; the encoder adds one, so
    # values round-trip exactly
    assert out == expected
    assert dec.retry == 10


@given(data=st.binary(max_size=300), event=st.none() | field_text)
def test_any_bytes_as_data_stay_one_event(data: bytes, event: str | None) -> None:
    # producers may XADD any bytes: whatever they hold, they frame as exactly one event
    out = decode_bytewise(encode_event(data, id="1-0", event=event))
    text = data.decode("utf-8", "replace")
    assert out == [Event(text.replace("\r\n", "\n").replace("\r", "\n"), event or "message",
                         "1-0")]


@given(raw=st.binary(max_size=500), cuts=st.lists(st.integers(0, 500), max_size=6))
def test_decoder_takes_any_bytes(raw: bytes, cuts: list[int]) -> None:
    dec = Decoder(comments=True)
    prev = 0
    for cut in [*sorted(c for c in cuts if c <= len(raw)), len(raw)]:
        for item in dec.feed(raw[prev:cut]):
            if isinstance(item, Event):
                assert "\x00" not in item.id and "\r" not in item.id and "\n" not in item.id
        prev = cut


# -- extra fields and the data bound (what ingest relies on) --------------------------------


def feed_in(dec: Decoder, raw: bytes, step: int) -> list[Item]:
    out: list[Item] = []
    for i in range(0, len(raw), step):
        out.extend(dec.feed(raw[i : i + step]))
    return out


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_unknown_fields_kept_only_when_asked(step: int) -> None:
    raw = b"id: 1-0\nupstream: a\nupstream-id: 42\ndata: x\n\nupstream: b\n\ndata: y\n\n"
    assert feed_in(Decoder(), raw, step) == [Event("x", id="1-0"), Event("y", id="1-0")]
    # an event's extra fields are its own: a block without data drops them
    assert feed_in(Decoder(extra_fields=True), raw, step) == [
        Event("x", id="1-0", extra=(("upstream", "a"), ("upstream-id", "42"))),
        Event("y", id="1-0"),
    ]


@pytest.mark.parametrize("step", [1, 5, 64, 1 << 20])
def test_data_over_the_bound_is_dropped_but_the_event_accounted_for(step: int) -> None:
    big = b"x" * 100
    raw = (b"data: small\nid: a\n\n"
           b"event: t\ndata: " + big + b"\nid: b\n\n"  # one line over the bound
           b"data: " + b"y" * 30 + b"\ndata: " + b"y" * 30 + b"\nid: c\n\n"  # lines over it
           b"data: after\nid: d\n\n")
    out = feed_in(Decoder(max_data=50), raw, step)
    assert [type(i).__name__ for i in out] == ["Event", "Oversize", "Oversize", "Event"]
    assert out[0] == Event("small", id="a") and out[3] == Event("after", id="d")
    assert isinstance(out[1], Oversize) and (out[1].event, out[1].id) == ("t", "b")
    assert out[1].size >= 100 and isinstance(out[2], Oversize) and out[2].id == "c"


def test_a_line_that_never_ends_is_not_kept() -> None:
    dec = Decoder(max_data=1000)
    assert dec.feed(b"data: ") == []
    for _ in range(1000):  # 64 MB of one line
        assert dec.feed(b"z" * 65536) == []
        assert len(dec._pending) <= 1000
    assert dec.feed(b"\r") == []
    out = dec.feed(b"\nid: 9\n\ndata: next\n\n")
    assert out[0] == Oversize(out[0].size, "message", "9") and out[0].size > 64_000_000
    assert out[1] == Event("next", id="9")


@pytest.mark.parametrize("line", [b": " + b"c" * 500, b"id: " + b"i" * 500, b"x" * 500])
def test_an_over_long_non_data_line_is_ignored(line: bytes) -> None:
    raw = b"id: 1\n" + line + b"\ndata: kept\n\n"
    for step in (1, 3, 100):
        assert feed_in(Decoder(max_data=50), raw, step) == [Event("kept", id="1")]


def test_without_a_bound_nothing_is_oversize() -> None:
    assert Decoder().feed(b"data: " + b"x" * 100_000 + b"\n\n") == [Event("x" * 100_000)]


def test_a_reconnection_carries_the_last_event_id_on() -> None:
    """A decoder for a resumed connection starts from the id it resumed after: an event with
    no ``id:`` line keeps it (as an EventSource keeps ``lastEventId`` across connections);
    an ``id:`` line, even an empty one, replaces it."""
    dec = Decoder(last_event_id="41")
    assert dec.feed(b"data: no id\n\n") == [Event("no id", id="41")]
    assert dec.last_event_id == "41"
    first = dec.feed(b"data: x\n\n")[0]
    assert isinstance(first, Event) and not first.own_id
    own = dec.feed(b"id: 42\ndata: y\n\n")[0]
    assert isinstance(own, Event) and own.own_id and own.id == "42"
    assert dec.feed(b"id\ndata: z\n\n") == [Event("z", id="")]
