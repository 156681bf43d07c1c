"""The reconnect protocol, without I/O: plan, history pages and ring in random interleavings.

A model Redis stream is published to and trimmed; a feed appends it to a small ring with lag;
a client reconnects at a random id, catches up from history pages (read from the model at
the moment of each fetch through the replay service's own page function, or an older answer
for the same page, as a cache serves it), follows the ring, and falls behind the ring's tail
now and then. Whatever the interleaving, the client gets every event after its id exactly
once, in order, except events trimmed before it could read them, which are announced by an
``ssedge.reset`` first. (tests/node/test_stream_model.py runs the real stream code: several
relays, an edge cache with grace, and clients moving between nodes.)
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import ids
from relay.protocol.resume import CatchUp, HistoryPage, Reader, plan
from relay.protocol.ring import Ring
from relay.storage import history
from relay.storage import streams as store

PAGE = 4


class Model:
    def __init__(self, ring_events: int) -> None:
        self.stream: list[int] = []  # ids in Redis now
        self.added = 0
        self.last_generated = 0
        self.trimmed: set[int] = set()
        self.ring = Ring(ring_events, 1 << 20)
        self.read_from = 0  # the feed's last id
        self.cache: dict[int, HistoryPage] = {}  # pages seen before

    def publish(self, gap: int) -> None:
        self.last_generated += gap
        self.stream.append(self.last_generated)
        self.added += 1

    def trim(self, n: int) -> None:
        # retention only trims what the feed has read (MAXLEN ~ is far behind the head)
        n = min(n, sum(1 for i in self.stream if i <= self.read_from))
        self.trimmed.update(self.stream[:n])
        del self.stream[:n]

    def feed(self, n: int) -> None:
        batch = [i for i in self.stream if i > self.read_from][:n]
        if batch:
            self.ring.extend(batch, [frame(i) for i in batch])
            self.read_from = batch[-1]

    def prime(self) -> None:
        # as store.newest decides the floor
        newest = self.stream[-self.ring.max_events:]
        if newest and len(newest) == self.ring.max_events:
            floor = newest[0]
        elif self.trimmed:
            floor = ids.predecessor(newest[0]) if newest else self.last_generated
        else:
            floor = 0
        self.ring.prime(newest, [frame(i) for i in newest], floor)
        self.read_from = self.ring.last_id

    def info(self) -> dict[str, Any] | None:
        if not self.added:
            return None
        return {
            "last-generated-id": raw(self.last_generated),
            "entries-added": self.added,
            "length": len(self.stream),
            "first-entry": (raw(self.stream[0]), [b"d", b"x"]) if self.stream else None,
        }

    def page(self, after: int, limit: int, stale: bool) -> HistoryPage:
        """A page read now, or (``stale``) the answer an earlier read of it gave, as a cache
        (the relay's or Varnish's) may serve it."""
        if stale and after in self.cache:
            return self.cache[after]
        entries = [(raw(i), [b"d", b"%d" % i]) for i in self.stream if i > after][:limit]
        below = max((i for i in self.stream if i <= after), default=None)
        page, _ = history._page(self.info(), entries, after, limit, None, below=below)
        answer = HistoryPage(history.split(page.body), page.count, page.through)
        self.cache[after] = answer  # empty pages too: the edge keeps them
        return answer


def raw(i: int) -> bytes:
    return ids.format(i).encode()


def frame(i: int) -> bytes:
    return store.frame(raw(i), [b"d", b"%d" % i])[0]


def frame_id(f: bytes) -> int:
    return ids.parse(f[4:f.index(b"\n")])


class Client:
    def __init__(self, model: Model, after: int) -> None:
        self.model = model
        p = plan(model.ring, after)
        self.reader = Reader(p.cursor, p.last_id)
        if p.history_after is not None:
            self.reader.catch_up = CatchUp(p.history_after, p.history_until, p.resume_from)
        self.got: list[bytes] = []

    def step(self, read_max: int) -> None:
        reader = self.reader
        if reader.catch_up is not None:
            fresh = reader.catch_up.fresh
            page = self.model.page(reader.catch_up.after, PAGE,
                                   stale=not fresh and read_max % 2 == 0)
            self.got += reader.take_page(page, fresh=fresh)
            assert not (reader.catch_up and reader.catch_up.rewound)
            return
        chunk, _ = reader.next_chunk(self.model.ring, read_max)
        if chunk:
            self.got += [p + b"\n\n" for p in chunk.split(b"\n\n") if p]

    @property
    def idle(self) -> bool:
        return self.reader.catch_up is None and self.reader.cursor == self.model.ring.head


actions = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 3)),
        st.tuples(st.just("trim"), st.integers(1, 6)),
        st.tuples(st.just("feed"), st.integers(1, 5)),
        st.tuples(st.just("client"), st.integers(1, 40)),
    ),
    max_size=120,
)


@settings(max_examples=1000)
@given(
    before=st.integers(0, 40),
    ring_events=st.integers(1, 8),
    trim_before=st.integers(0, 30),
    after_pick=st.integers(0, 10_000),
    warm=st.integers(0, 12),
    steps=actions,
)
def test_reconnect_gets_every_event_once_in_order_or_a_reset(
    before: int, ring_events: int, trim_before: int, after_pick: int, warm: int,
    steps: list[tuple[str, int]],
) -> None:
    model = Model(ring_events)
    for _ in range(before):
        model.publish(1 + before % 3)
    model.read_from = model.last_generated
    model.trim(trim_before)
    model.prime()
    # the client's id: a position this stream handed out (0-0, or an entry's id, trimmed or
    # not); an id that is none of these gets an ``unknown`` reset (test_history, test_replay)
    held = sorted({0} | set(model.stream) | model.trimmed)
    after = held[after_pick % len(held)]
    if warm:
        # an earlier client with the same id left its page in a cache; ``warm`` more events
        # are published and read before this client comes
        model.page(after, PAGE, stale=False)
        for _ in range(warm):
            model.publish(1)
        model.feed(warm)
    client = Client(model, after)
    for action, n in steps:
        if action == "publish":
            model.publish(n)
        elif action == "trim":
            model.trim(n)
        elif action == "feed":
            model.feed(n)
        else:
            client.step(read_max=n)
    # drain: the feed catches up, the client reads everything
    for n in range(10_000):
        model.feed(100)
        if client.idle and model.read_from == model.last_generated:
            break
        client.step(read_max=(1 << 20) + n % 2)

    received: list[int] = []
    resets: list[tuple[int, int]] = []  # (frame id, position in received)
    every: list[int] = []
    for f in client.got:
        fid = frame_id(f)
        every.append(fid)
        if b"event: ssedge.reset" in f:
            resets.append((fid, len(received)))
        else:
            received.append(fid)
    # every frame's id (events and resets) above the one before: nothing twice, nothing back
    assert every == sorted(set(every))
    assert all(i > after for i in every)
    # every event after the id arrived, unless it was trimmed and a reset said so first;
    # after 0-0 (since=earliest) starts at the oldest retained event, and needs no reset
    ever = sorted(set(model.stream) | model.trimmed)
    for e in ever:
        if e > after and e not in received:
            assert e in model.trimmed, f"{e} lost silently"
            if after == 0 and (not received or e < received[0]):
                continue
            later = [n for n, i in enumerate(received) if i > e]
            position = later[0] if later else len(received)
            assert any(rid >= e and pos <= position for rid, pos in resets), f"{e} lost silently"
    # a reset only when events may really have been trimmed after the id
    if resets:
        assert model.trimmed


# -- the holes a review found, one example each --------------------------------------------


def _ring(ids_in: list[int], floor: int = 0, events: int = 100) -> Ring:
    ring = Ring(events, 1 << 20)
    ring.prime(ids_in, [frame(i) for i in ids_in], floor)
    return ring


def test_a_client_ahead_of_this_nodes_feed_gets_no_event_twice() -> None:
    # the client has 1..8 from a node whose feed is ahead; this node's ring ends at 5
    ring = _ring([1, 2, 3, 4, 5])
    p = plan(ring, 8)
    reader = Reader(p.cursor, p.last_id)
    assert p.history_after is None and reader.next_chunk(ring, 1 << 20) == (b"", 0)
    ring.extend([6, 7, 8, 9, 10], [frame(i) for i in (6, 7, 8, 9, 10)])  # the feed catches up
    chunk, count = reader.next_chunk(ring, 1 << 20)
    assert [frame_id(p + b"\n") for p in chunk.split(b"\n\n") if p] == [9, 10]
    assert count == 2 and reader.last_id == 10


def test_an_empty_page_kept_by_a_cache_does_not_end_a_catch_up() -> None:
    # a page after 3 was cached when the stream ended at 3: empty, through 3. The ring's floor
    # is now 20 (events 4..20 exist, the ring holds 21 on)
    catch_up = CatchUp(3, 20)
    assert catch_up.take(HistoryPage([], 0, 3)) == []
    assert not catch_up.done and catch_up.fresh
    fresh = HistoryPage([(i, frame(i)) for i in range(4, 25)], 21, 24)
    sent = catch_up.take(fresh, fresh=True)
    assert [frame_id(f) for f in sent] == list(range(4, 21)) and catch_up.done


def test_a_short_page_proves_only_what_it_says() -> None:
    catch_up = CatchUp(3, 20)
    sent = catch_up.take(HistoryPage([(4, frame(4)), (5, frame(5))], 2, 5))
    assert [frame_id(f) for f in sent] == [4, 5] and not catch_up.done and not catch_up.fresh
    catch_up.take(HistoryPage([(i, frame(i)) for i in range(6, 30)], 24, 29))
    assert catch_up.done and catch_up.after == 20


def test_a_page_that_never_reaches_the_floor_read_fresh_means_the_stream_went_back() -> None:
    catch_up = CatchUp(3, 20)
    catch_up.take(HistoryPage([], 0, 3))
    catch_up.take(HistoryPage([], 0, 3), fresh=True)
    assert catch_up.rewound and catch_up.done


def test_a_reset_above_the_floor_is_sent_with_the_floor_as_its_id() -> None:
    # Redis trimmed everything up to 29 (first retained 30), but the ring holds 21 on
    # (floor 20): what is lost is after 3 up to 20, and the next event is 21
    page, _ = history._page(
        {"last-generated-id": raw(40), "entries-added": 40, "length": 11,
         "first-entry": (raw(30), [b"d", b"x"])},
        [(raw(i), [b"d", b"%d" % i]) for i in range(30, 41)], 3, PAGE, None)
    catch_up = CatchUp(3, 20, resume_from=21)
    sent = catch_up.take(HistoryPage(history.split(page.body), page.count, page.through))
    assert len(sent) == 1 and frame_id(sent[0]) == 20 and catch_up.done
    assert b'"requested":"0-3"' in sent[0] and b'"resume_from":"0-21"' in sent[0]


def test_the_largest_id_is_a_page_not_an_error() -> None:
    largest = ids.parse("18446744073709551615-18446744073709551615")
    page, _ = history._page({"last-generated-id": raw(5), "entries-added": 5, "length": 5,
                             "first-entry": (raw(1), [b"d", b"x"])}, [], largest, PAGE, None)
    assert page.reset and page.count == 0 and page.through == 5
