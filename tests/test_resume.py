"""The reconnect protocol, without I/O: plan, history pages and ring in random interleavings.

A model Redis stream is published to and trimmed; a feed appends it to a small ring with lag;
a client reconnects at a random id, catches up from history pages (read from the model at
the moment of each fetch through the replay service's own page function, or an older answer
for the same page, as a cache serves it), follows the ring, and falls behind the ring's tail
now and then. Whatever the interleaving, the client
gets every event after its id exactly once, in order, except events trimmed before it could
read them, which are announced by an ``ssedge.reset`` first.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relay import history, ids, store
from relay.resume import CatchUp, last_before, plan
from relay.ring import Ring

PAGE = 4


class Model:
    def __init__(self, ring_events: int) -> None:
        self.stream: list[int] = []  # ids in Redis now
        self.added = 0
        self.last_generated = 0
        self.trimmed: set[int] = set()
        self.ring = Ring(ring_events, 1 << 20)
        self.read_from = 0  # the feed's last id
        self.cache: dict[int, tuple[list[tuple[int, bytes]], int]] = {}  # pages seen before

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

    def page(self, after: int, limit: int, stale: bool) -> tuple[list[tuple[int, bytes]], int]:
        """A page read now, or (``stale``) the answer an earlier read of it gave, as a cache
        (the relay's or Varnish's) may serve it."""
        if stale and after in self.cache:
            return self.cache[after]
        info: dict[str, Any] | None = None
        if self.added:
            info = {
                "last-generated-id": raw(self.last_generated),
                "entries-added": self.added,
                "length": len(self.stream),
                "first-entry": (raw(self.stream[0]), [b"d", b"x"]) if self.stream else None,
            }
        entries = [(raw(i), [b"d", b"%d" % i]) for i in self.stream if i > after][:limit]
        page, _ = history._page(info, entries, after, limit, None)
        if page.count:  # empty pages are never cached
            self.cache[after] = (history.split(page.body), page.count)
        return history.split(page.body), page.count


def raw(i: int) -> bytes:
    return ids.format(i).encode()


def frame(i: int) -> bytes:
    return store.frame(raw(i), [b"d", b"%d" % i])[0]


class Client:
    def __init__(self, model: Model, after: int) -> None:
        self.model = model
        self.after = after
        p = plan(model.ring, after)
        self.cursor = p.cursor
        self.last_id = p.last_id
        self.catchup = CatchUp(p.history_after, p.history_until, PAGE) \
            if p.history_after is not None else None
        self.got: list[bytes] = []

    def step(self, read_max: int) -> None:
        ring = self.model.ring
        if self.catchup is not None and not self.catchup.done:
            frames, count = self.model.page(self.catchup.after, PAGE, stale=read_max % 2 == 0)
            sent = self.catchup.take(frames, count)
            self.got += sent
            return
        if self.cursor < ring.tail:  # fell behind: resume the same way from the last id sent
            self.resume()
            return
        if self.cursor < ring.head:
            _, nxt = ring.read(self.cursor, read_max)
            self.got += [f for f in ring.frames(self.cursor, nxt)]
            self.cursor = nxt
            self.last_id = last_before(ring, nxt)

    def resume(self) -> None:
        ring = self.model.ring
        last = self.last_sent()
        self.cursor = ring.position_after(ring.floor)
        self.catchup = CatchUp(last, ring.floor, PAGE)

    def last_sent(self) -> int:
        for f in reversed(self.got):
            if b"event: ssedge.reset" not in f:
                return ids.parse(f[4:f.index(b"\n")])
        return self.after

    @property
    def idle(self) -> bool:
        ring = self.model.ring
        return (self.catchup is None or self.catchup.done) and self.cursor == ring.head


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
    # the client's id: anything from 0 to just past the stream's last id
    after = after_pick % (model.last_generated + 2) if model.last_generated else 0
    after = min(after, model.last_generated)
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
    for f in client.got:
        fid = ids.parse(f[4:f.index(b"\n")])
        if b"event: ssedge.reset" in f:
            resets.append((fid, len(received)))
        else:
            received.append(fid)
    # in order, no duplicate, nothing at or before the client's id
    assert received == sorted(set(received))
    assert all(i > after for i in received)
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
    # a reset only when events may really have been trimmed after the id: the stream was
    # trimmed, and the reset's id (just below the first retained entry) is above the id.
    # (With gapped ids nothing tells whether an id between the two ever existed.)
    if resets:
        assert model.trimmed
        assert all(rid > after for rid, _ in resets)
