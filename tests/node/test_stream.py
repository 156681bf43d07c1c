"""One stream's pure helpers (relay/node/stream.py): where a stream starts, from the request,
and a page cut into sends of at most a size, never splitting a frame."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.node.stream import Start, last_event_id, parse_start, pieces
from relay.protocol import ids
from relay.web.errors import BadRequest
from relay.web.http import Request


def request(query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/v1/streams/a/events",
                    "query_string": query, "headers": headers or []})


def test_a_stream_starts_live_by_default() -> None:
    assert parse_start(request(), 100) == Start(None, False, 0)


def test_the_header_wins_over_the_parameter_and_an_empty_one_is_none() -> None:
    both = request(b"last_event_id=5-0", [(b"Last-Event-ID", b"7-1")])
    assert last_event_id(both) == "7-1"
    assert parse_start(both, 100).after == ids.parse("7-1")
    assert parse_start(request(b"last_event_id=5-0"), 100).after == ids.parse("5-0")
    assert parse_start(request(headers=[(b"last-event-id", b"")]), 100).after is None


def test_since_and_backfill() -> None:
    assert parse_start(request(b"since=earliest"), 100) == Start(None, True, 0)
    assert parse_start(request(b"backfill=100"), 100) == Start(None, False, 100)
    assert parse_start(request(b"since=now&backfill=0"), 100) == Start(None, False, 0)


@pytest.mark.parametrize(("query", "headers"), [
    (b"", [(b"last-event-id", b"nonsense")]),
    (b"last_event_id=1", []),
    (b"since=later", []),
    (b"backfill=101", []),
    (b"backfill=-1", []),
    (b"backfill=%D9%A1", []),  # an Arabic-Indic one: a digit to str.isdigit, not to us
    (b"backfill=", []),
])
def test_bad_starts_are_400(query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequest):
        parse_start(request(query, headers), 100)


def test_history_goes_in_pieces_of_at_most_the_size() -> None:
    frames = [b"a" * 10, b"b" * 10, b"c" * 25, b"d" * 5, b"e" * 5, b"f" * 12]
    out = list(pieces(frames, 20))
    assert [body for body, _ in out] == [b"a" * 10 + b"b" * 10, b"c" * 25,
                                         b"d" * 5 + b"e" * 5, b"f" * 12]
    assert [n for _, n in out] == [2, 1, 2, 1]
    assert inspect.isgenerator(pieces(frames, 20))  # one piece joined at a time
    assert list(pieces([], 20)) == []


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=40), st.integers(1, 200))
def test_pieces_keep_every_frame_whole_and_in_order(frames: list[bytes], size: int) -> None:
    out = list(pieces(frames, size))
    assert b"".join(p for p, _ in out) == b"".join(frames)
    assert sum(n for _, n in out) == len(frames)
    at = 0
    for piece, n in out:
        assert piece == b"".join(frames[at:at + n]) and n >= 1
        assert len(piece) <= size or n == 1  # over the size only a frame alone
        at += n
