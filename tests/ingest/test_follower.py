"""The follower's pure parts: backoff, what is stored, and the cursor each write carries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from relay.ingest import follower as up
from relay.ingest.config import Upstream
from relay.ingest.status import Status
from relay.protocol.wire import Decoder, Event
from relay.storage.journal import Entry


def test_backoff_honours_retry_then_doubles_with_jitter_up_to_the_cap() -> None:
    low = up.backoff(1000, 8.0, rng=lambda: 0.0)
    high = up.backoff(1000, 8.0, rng=lambda: 0.999999)
    assert low.delay() == 1.0 and high.delay() == pytest.approx(1.25)  # never below retry
    for b in (low, high):
        b.failures = 3
    assert low.delay() == 4.0 and high.delay() == pytest.approx(8.0)  # half to whole step
    low.failures = high.failures = 50
    assert low.delay() == 4.0 and high.delay() == pytest.approx(8.0)  # capped
    slow = up.backoff(60_000, 8.0, rng=lambda: 0.0)
    slow.failures = 2
    assert slow.delay() == 30.0  # an upstream asking for more than the cap gets it
    zero = up.backoff(0, 8.0, rng=lambda: 0.0)
    assert zero.delay() > 0  # "retry: 0" cannot make a hot loop


def test_entry_keeps_data_and_type_byte_for_byte_or_wraps_them() -> None:
    ev = Event("a\nb", "quote", "A7")
    assert up.entry(ev, "a", envelope=False) == Entry(b"quote", b"A7", b"a\nb")
    assert up.entry(Event("x"), "a", envelope=False) == Entry(b"", b"", b"x")
    wrapped = up.entry(ev, "a", envelope=True)
    assert json.loads(wrapped.data) == {"upstream": "a", "id": "A7", "event": "quote",
                                        "data": "a\nb"}
    assert json.loads(up.entry(Event("x"), "a", envelope=True).data)["id"] is None


def test_content_types() -> None:
    assert up.is_event_stream("text/event-stream") and up.is_event_stream(
        "Text/Event-Stream; charset=utf-8")
    assert not up.is_event_stream("text/html") and not up.is_event_stream("")


# -- the cursor each write carries, with a fake stream and a fake journal ------------------


class FakeStream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.decoder = Decoder(max_data=100)
        self._chunks = chunks

    @property
    def ended(self) -> bool:
        return not self._chunks

    async def read_chunk(self) -> list[Any]:
        return self.decoder.feed(self._chunks.pop(0))


class FakeJournal:
    def __init__(self) -> None:
        self.writes: list[tuple[int, list[bytes], str]] = []

    async def append(self, writes: int, entries: list[Entry], cursor: str) -> list[str]:
        self.writes.append((writes, [e.upstream_id + b":" + e.data for e in entries], cursor))
        return []


def follow(chunks: list[bytes], cursor: str = "", writes: int = 0) -> FakeJournal:
    journal = FakeJournal()
    policy = up.Policy(retry_ms=10, backoff_max_s=1, connect_timeout_s=1, idle_timeout_s=1,
                       max_event_bytes=100, handover_s=10)
    follower = up.Follower(Upstream("a", "http://h/e"), journal, policy,  # type: ignore[arg-type]
                           Status("t", "a"))
    asyncio.run(follower._follow(FakeStream(chunks), up.Position(cursor, writes)))  # type: ignore[arg-type]
    return journal


def test_each_chunk_is_one_write_carrying_the_cursor_after_it() -> None:
    journal = follow([b"retry: 5\n\n", b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n", b": ka\n\n",
                      b"data: no id\n\n"], cursor="0", writes=7)
    assert journal.writes == [
        (7, [b"1:a", b"2:b"], "2"),
        # an event without an id of its own carries the last one, as EventSource says
        (8, [b"2:no id"], "2"),
    ]


def test_an_inclusive_resend_of_the_resume_event_is_skipped_once() -> None:
    journal = follow([b"id: 5\ndata: again\n\nid: 6\ndata: new\n\n", b"id: 5\ndata: x\n\n"],
                     cursor="5")
    assert journal.writes == [(0, [b"6:new"], "6"), (1, [b"5:x"], "5")]


def test_an_id_without_an_event_still_moves_the_cursor() -> None:
    assert follow([b"id: 9\n\n"], cursor="3").writes == [(0, [], "9")]


def test_rejected_events_are_not_written_but_passed() -> None:
    journal = follow([b"data: " + b"x" * 200 + b"\nid: big\n\n"
                      b"event: " + b"t" * 70 + b"\ndata: y\nid: type\n\n"])
    assert journal.writes == [(0, [], "type")]


def test_large_chunks_are_written_in_bounded_batches() -> None:
    n = up.BATCH + 10
    journal = follow([b"".join(b"id: %d\ndata: %d\n\n" % (i, i) for i in range(n))])
    assert [(w, len(e), c) for w, e, c in journal.writes] == [
        (0, up.BATCH, str(up.BATCH - 1)), (1, 10, str(n - 1))]


def test_an_upstreams_retry_is_obeyed_up_to_a_cap() -> None:
    """An upstream's ``retry: 86400000`` (a day) would silence it for a day after its stream
    ends; it is capped (``ingest_retry_max_ms``, 60 s by default)."""
    policy = up.Policy(retry_ms=10, backoff_max_s=1, connect_timeout_s=1, idle_timeout_s=1,
                       max_event_bytes=100, handover_s=10)
    follower = up.Follower(Upstream("a", "http://h/e"), FakeJournal(), policy,  # type: ignore[arg-type]
                           Status("t", "a"))
    asyncio.run(follower._follow(FakeStream([b"retry: 86400000\n\n"]), up.Position("", 0)))  # type: ignore[arg-type]
    assert follower._backoff.first_s == 60.0
    asyncio.run(follower._follow(FakeStream([b"retry: 2500\n\n"]), up.Position("", 0)))  # type: ignore[arg-type]
    assert follower._backoff.first_s == 2.5  # under the cap: as asked
