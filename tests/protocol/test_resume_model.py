"""A model of the whole resume path: several relays, an edge cache, a stream that changes.

The world, driven by hypothesis in random orders:

- **Redis**: one stream, published to with gapped ids, trimmed from the front (retention,
  MAXLEN or MINID alike: the oldest entries go, never ones a feed has not read yet), and now
  and then deleted and made again with lower ids (a fixture reloaded, a failover that lost its
  newest entries): ids go back.
- **Relays**, each with its own ring (a few events) and its own feed, which reads when the
  model says so: feeds lag independently. Each relay primes its ring like ``store.newest``,
  keeps its own page cache like ``Replayer``, and checks now and then that its stream did
  not go back, like ``FeedBase.verify`` (then it forgets the topic and ends its streams).
- **The edge** caches replay pages like Varnish: full pages for good, short ones for a tick,
  and serves them stale for ``GRACE`` ticks more (Varnish's default grace; the shipped VCL has
  none for these pages, so this is the worst case). When the stream is made again the
  operator bans the topic's pages, as docs/OPERATIONS.md says.
- **Clients** (browsers) connect to a random relay with their Last-Event-ID, take what the
  relay sends in random amounts, and drop and move to another relay at random moments.

The per-connection logic is the relay's own: ``resume.plan``, ``resume.Reader`` (ring reads
and the rule "never an id at or below what the client has"), ``resume.CatchUp`` (pages and
their proof), ``history._page`` (the replay service's pages and resets), ``store.newest_floor``
(priming); only I/O is modelled. In the end every feed catches up and every client reads to
the end. Then each client must have every event once, in order, or a reset that names exactly
what was lost; ids only go back with an ``unknown`` reset after the stream went back.

``test_the_model_finds_the_holes_it_was_made_for`` runs it against the resume code as it was
before these holes were fixed (no skip of ids the client has; an empty page ends a catch-up)
and requires it to fail: a model that cannot fail proves nothing.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from relay.protocol import ids, resume
from relay.protocol.resume import CatchUp, HistoryPage, Reader, plan, reset_frame
from relay.protocol.ring import Ring
from relay.storage import history
from relay.storage import streams as store

PAGE = 4  # entries per history page
GRACE = 10  # ticks the edge serves an expired page stale
EPOCH = 10**6  # a stream made again starts this much lower: its ids are below every old one
MAX_PUBLISH = 200  # per stream life, so ids never reach the next life's range


def raw(i: int) -> bytes:
    return ids.format(i).encode()


def frame(i: int) -> bytes:
    return store.frame(raw(i), [b"d", b"%d" % i])[0]


class Stream:
    """Redis: one stream, its XINFO numbers, and what was ever in it."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.entries: list[int] = []
        self.last_generated = 0
        self.added = 0
        self.trimmed: set[int] = set()
        self.published = 0

    def publish(self, gap: int) -> None:
        self.last_generated = max(self.last_generated, self.base) + gap
        self.entries.append(self.last_generated)
        self.added += 1
        self.published += 1

    def info(self) -> dict[str, Any] | None:
        if not self.added:
            return None
        return {
            "last-generated-id": raw(self.last_generated),
            "entries-added": self.added,
            "length": len(self.entries),
            "first-entry": (raw(self.entries[0]), [b"d", b"x"]) if self.entries else None,
        }

    def page(self, after: int) -> HistoryPage:
        """The replay service's answer now (``history._page``, as ``read_page`` calls it)."""
        entries = [(raw(i), [b"d", b"%d" % i]) for i in self.entries if i > after][:PAGE]
        below = max((i for i in self.entries if i <= after), default=None)
        page, _ = history._page(self.info(), entries, after, PAGE, None, below=below)
        return HistoryPage(history.split(page.body), page.count, page.through)


class Edge:
    """Varnish in front of the replay service: TTL from the answer, then GRACE ticks stale."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.cache: dict[int, tuple[HistoryPage, float]] = {}  # after -> (page, expires)

    def get(self, after: int) -> HistoryPage:
        now = self.world.now
        hit = self.cache.get(after)
        if hit is not None and now < hit[1] + GRACE:
            return hit[0]
        page = self.world.stream.page(after)
        full = page.count >= PAGE
        self.cache[after] = (page, float("inf") if full else now + 1)
        return page


class Node:
    """One relay process: a ring, a feed position, a page cache, its streams."""

    def __init__(self, world: World, ring_events: int) -> None:
        self.world = world
        self.ring_events = ring_events
        self.ring = Ring(ring_events, 1 << 20)
        self.primed = False
        self.read_from = 0
        self.entries_added = 0  # at the last check
        self.ahead = 0  # ``Topic.ahead``: the highest id a client came with, past the feed
        self.pages: dict[int, tuple[HistoryPage, float]] = {}

    def prime(self) -> None:
        if self.primed:
            return
        stream = self.world.stream
        newest = stream.entries[-self.ring_events:]
        floor = store.newest_floor(newest[0] if newest else None,
                                   len(newest) == self.ring_events, stream.info())
        self.ring = Ring(self.ring_events, 1 << 20)
        self.ring.prime(newest, [frame(i) for i in newest], floor)
        self.read_from = self.ring.last_id
        self.primed = True

    def feed(self, n: int) -> None:
        if not self.primed:
            return
        batch = [i for i in self.world.stream.entries if i > self.read_from][:n]
        if batch:
            self.ring.extend(batch, [frame(i) for i in batch])
            self.read_from = batch[-1]

    def verify(self) -> None:
        """``FeedBase.verify``: the stream went back -> forget the topic, end its streams."""
        if not self.primed:
            return
        stream = self.world.stream
        if (stream.last_generated < max(self.read_from, self.ahead)
                or stream.added < self.entries_added):
            self.primed = False
            self.entries_added = self.ahead = 0
            self.pages.clear()
            for client in self.world.clients:
                if client.node is self:
                    client.disconnect()
        else:
            self.entries_added = stream.added

    def page(self, after: int, fresh: bool) -> HistoryPage:
        """``Replayer.page``: fresh from Redis, else its own cache, else the edge."""
        if fresh:
            return self.world.stream.page(after)
        hit = self.pages.get(after)
        if hit is not None and self.world.now < hit[1]:
            return hit[0]
        page = self.world.edge.get(after)
        if page.count:
            self.pages[after] = (page, float("inf") if page.count >= PAGE else self.world.now + 1)
        return page


class Client:
    """A browser's EventSource: its Last-Event-ID and every frame it was sent."""

    def __init__(self, world: World, earliest: bool) -> None:
        self.world = world
        self.earliest = earliest
        self.last_event_id: int | None = None
        self.frames: list[tuple[int, bool, dict[str, Any] | None]] = []  # id, reset, its data
        self.node: Node | None = None
        self.reader: Reader | None = None
        # where its exactly-once promise starts: (stream life, id)
        self.anchor: tuple[int, int] | None = None

    def connect(self, node: Node) -> None:
        """``stream.serve``: prime, check an id past the ring, plan, register."""
        world = self.world
        node.prime()
        ring = node.ring
        after = self.last_event_id
        if after is not None and after > ring.last_id:
            last = world.stream.last_generated
            if after > last:  # ``_check_future``: never existed here
                self.receive(reset_frame("unknown", after, None, last))
                after = last
            else:
                node.ahead = max(node.ahead, after)
        p = plan(ring, after, earliest=self.earliest and after is None)
        self.reader = Reader(p.cursor, p.last_id)
        if p.history_after is not None:
            self.reader.catch_up = CatchUp(p.history_after, p.history_until, p.resume_from)
        if self.anchor is None or self.last_event_id is None:
            self.anchor = (world.life, p.last_id)
        self.node = node

    def disconnect(self) -> None:
        self.node = None
        self.reader = None

    def step(self, budget: int) -> None:
        """One turn of the stream's task: a history page, or ring frames."""
        node, reader = self.node, self.reader
        assert node is not None and reader is not None
        if reader.catch_up is not None:
            fresh = reader.catch_up.fresh
            page = node.page(reader.catch_up.after, fresh)
            for f in reader.take_page(page, fresh=fresh):
                self.receive(f)
            if reader.catch_up is not None and reader.catch_up.rewound:
                self.disconnect()  # the stream ends; the relay's check comes soon
                node.verify()
            return
        chunk, _ = reader.next_chunk(node.ring, budget * len(frame(1)))
        for part in chunk.split(b"\n\n"):
            if part:
                self.receive(part + b"\n\n")

    def receive(self, f: bytes) -> None:
        fid = ids.parse(f[4:f.index(b"\n")])
        is_reset = b"event: ssedge.reset\n" in f
        data = json.loads(f.split(b"data: ", 1)[1].split(b"\n", 1)[0]) if is_reset else None
        self.frames.append((fid, is_reset, data))
        if (is_reset and data is not None and data["reason"] == "unknown"
                and self.last_event_id is not None and fid < self.last_event_id):
            self.anchor = (self.world.life, fid)  # the stream went back: a new promise
        self.last_event_id = fid

    @property
    def idle(self) -> bool:
        return (self.node is not None and self.reader is not None
                and self.reader.catch_up is None and self.reader.cursor >= self.node.ring.head)


class World(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.life = 0
        self.lives: list[Stream] = [Stream(9 * EPOCH)]
        self.edge = Edge(self)
        self.nodes: list[Node] = []
        self.clients: list[Client] = []

    @property
    def stream(self) -> Stream:
        return self.lives[-1]

    @initialize(ring_events=st.integers(1, 6),
                earliest=st.lists(st.booleans(), min_size=1, max_size=4))
    def setup(self, ring_events: int, earliest: list[bool]) -> None:
        self.nodes = [Node(self, ring_events), Node(self, max(1, ring_events - 2)),
                      Node(self, ring_events + 3)]
        self.clients = [Client(self, e) for e in earliest]

    @rule(n=st.integers(1, 4), gap=st.integers(1, 3))
    def publish(self, n: int, gap: int) -> None:
        for _ in range(n):
            if self.stream.published < MAX_PUBLISH:
                self.stream.publish(gap)

    @rule(n=st.integers(1, 5))
    def trim(self, n: int) -> None:
        # retention only takes what every feed has read (it runs far behind the head)
        read = min((node.read_from for node in self.nodes if node.primed), default=None)
        stream = self.stream
        gone = [i for i in stream.entries[:n] if read is None or i <= read]
        stream.trimmed.update(gone)
        del stream.entries[:len(gone)]

    @rule(node=st.integers(0, 2), n=st.integers(1, 6))
    @precondition(lambda self: self.nodes)
    def feed(self, node: int, n: int) -> None:
        self.nodes[node].feed(n)

    @rule(node=st.integers(0, 2))
    @precondition(lambda self: self.nodes)
    def verify(self, node: int) -> None:
        self.nodes[node].verify()

    @rule(client=st.integers(0, 3), node=st.integers(0, 2))
    @precondition(lambda self: self.clients)
    def connect(self, client: int, node: int) -> None:
        c = self.clients[client % len(self.clients)]
        if c.node is None:
            c.connect(self.nodes[node])

    @rule(client=st.integers(0, 3), budget=st.integers(1, 8))
    @precondition(lambda self: self.clients)
    def read(self, client: int, budget: int) -> None:
        c = self.clients[client % len(self.clients)]
        if c.node is not None:
            c.step(budget)

    @rule(client=st.integers(0, 3))
    @precondition(lambda self: self.clients)
    def drop(self, client: int) -> None:
        self.clients[client % len(self.clients)].disconnect()

    @rule(client=st.integers(0, 3), node=st.integers(0, 2))
    @precondition(lambda self: self.clients)
    def move(self, client: int, node: int) -> None:
        """The connection drops and the browser reconnects at once, through the edge, to
        whichever relay the balancer picks."""
        c = self.clients[client % len(self.clients)]
        c.disconnect()
        c.connect(self.nodes[node])

    @rule()
    def tick(self) -> None:
        self.now += 1

    @rule()
    @precondition(lambda self: len(self.lives) < 3)
    def make_again(self) -> None:
        """The stream is deleted and made again, its ids lower than every old one."""
        self.lives.append(Stream(self.stream.base - EPOCH))
        self.life += 1
        for c in self.clients:
            if c.last_event_id in (None, 0) and c.anchor is not None:
                # it has no id of the old stream: its promise (events after its start) goes
                # on, and if its start is an old id its relay's check ends its stream and it
                # starts anew
                c.anchor = (self.life, c.anchor[1])
        self.edge.cache.clear()  # the operator bans the topic's pages (docs/OPERATIONS.md)

    def teardown(self) -> None:
        if not self.nodes:
            return
        # every feed catches up, one relay at a time, and checks its stream; every client
        # reads to the end, reconnecting to the relays in turn
        for n in range(2000):
            node = self.nodes[n % len(self.nodes)]
            node.feed(100 if n >= len(self.nodes) else 1)
            node.verify()
            busy = n < 2 * len(self.nodes)
            for i, c in enumerate(self.clients):
                if c.node is None:
                    c.connect(self.nodes[(i + n) % len(self.nodes)])
                if not c.idle:
                    busy = True
                    c.step(1 << 10)
            self.now += 1
            if not busy:
                break
        else:
            raise AssertionError("clients never caught up")
        for c in self.clients:
            check(self, c)


def check(world: World, client: Client) -> None:
    """Every event once, in order, or a reset naming what was lost; ids go back only with an
    ``unknown`` reset after the stream went back."""
    frames = client.frames
    for (a, _, _), (b, reset, data) in itertools.pairwise(frames):
        if b <= a:
            assert reset and data is not None and data["reason"] == "unknown", (
                f"id {ids.format(b)} after {ids.format(a)}: sent again or out of order")
    assert client.anchor is not None
    life, start = client.anchor
    assert life == world.life, "a client was left on a stream that is gone"
    stream = world.stream
    # what it got since its promise started: the frames after the last going-back reset
    since = 0
    for n, (fid, reset, data) in enumerate(frames):
        if reset and data is not None and data["reason"] == "unknown" and n and fid < frames[
                n - 1][0]:
            since = n
    got = [fid for fid, reset, _ in frames[since:] if not reset]
    resets = [(fid, data) for fid, reset, data in frames[since:] if reset and data is not None
              and data["reason"] == "expired"]
    for fid, data in resets:
        requested = ids.parse(data["requested"])
        # exactly what was lost: every event it names was trimmed, none was sent
        for e in stream.entries:
            assert not requested < e <= fid, f"reset up to {ids.format(fid)} names a kept event"
    for e in sorted(set(stream.entries) | stream.trimmed):
        if e <= start or e in got:
            continue
        assert e in stream.trimmed, f"event {ids.format(e)} lost silently"
        if start == 0 and (not got or e < got[0]):
            continue  # since=earliest starts at the oldest retained event: nothing to announce
        assert any(ids.parse(d["requested"]) < e <= fid for fid, d in resets), (
            f"trimmed event {ids.format(e)} lost without a reset")


CASES = 1500  # random worlds per run of make test, each up to 60 steps
World.TestCase.settings = settings(max_examples=CASES, stateful_step_count=60, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
test_every_client_gets_every_event_once_in_order_or_a_reset = World.TestCase


# -- the model must fail on the code it was made to catch ------------------------------------


def _next_chunk_before_the_fix(self: Reader, ring: Ring, max_bytes: int) -> tuple[bytes, int]:
    """``Reader.next_chunk`` without the skip of ids the client has (the duplicates hole)."""
    cursor = self.cursor
    if cursor >= ring.head:
        return b"", 0
    if cursor < ring.tail:
        self.cursor = ring.position_after(ring.floor)
        self.catch_up = CatchUp(self.last_id, ring.floor)
        return b"", 0
    chunk, self.cursor = ring.read(cursor, max_bytes)
    self.last_id = ring.id_at(self.cursor - 1)
    return chunk, self.cursor - cursor


_take = CatchUp.take


def _take_before_the_fix(self: CatchUp, page: HistoryPage, *, fresh: bool = False) -> list[bytes]:
    """``CatchUp.take`` where an empty page ends the catch-up (the silent-loss hole)."""
    out = _take(self, page, fresh=fresh)
    if page.count == 0:
        self.done, self.fresh = True, False
    return out


@pytest.mark.parametrize("hole", ["duplicates", "silent loss"])
def test_the_model_finds_the_holes_it_was_made_for(hole: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if hole == "duplicates":
        monkeypatch.setattr(resume.Reader, "next_chunk", _next_chunk_before_the_fix)
    else:
        monkeypatch.setattr(resume.CatchUp, "take", _take_before_the_fix)
    # one failure is an AssertionError, several distinct ones come as a group
    with pytest.raises((AssertionError, ExceptionGroup)):
        run_state_machine_as_test(World, settings=settings(
            max_examples=2000, stateful_step_count=60, deadline=None, database=None,
            derandomize=True, suppress_health_check=list(HealthCheck), print_blob=False,
            phases=[Phase.generate]))  # found is enough: shrinking it is slow
