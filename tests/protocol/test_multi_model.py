"""The resume path of streams on several topics, in the world of ``test_resume_model``.

The same modelled world, once per topic: each topic is its own Redis stream (published to,
trimmed, now and then made again with lower ids), with its own edge cache, and each of three
relays holds a ring and a feed per topic that read when the model says so (feeds lag per
relay and per topic). The relay-side code is the relay's own: ``composite`` (the set, the
ids), ``resume.plan``/``Reader``/``CatchUp`` per topic, ``multi.MultiReader`` (re-framing,
resets, the first frame), and the fan-out's ``_send_multi`` for parked cursors; only I/O is
modelled, and the connection's steps mirror ``relay.node.multistream``.

Clients are browsers: each holds one ``Last-Event-ID`` (the composite id its decoder last
parsed, ``wire.Decoder``), reconnects with it to any relay, now and then with another set of
topics (topics added start anew; topics removed are forgotten), takes history pages and ring
frames in random amounts through the task or the fan-out, and drops at random moments. In the
end every feed catches up and every client reads to the end. Then, for each topic of each
client's set, ``test_resume_model.check``: every event once, in the topic's order, or a reset
(naming the topic) for exactly what was lost. Every event's data is the number its id names
(``frame``), so each event reached the page unchanged and under its own topic.

``test_the_model_finds_the_holes_it_was_made_for`` breaks one per-topic rule at a time and
requires the model to fail.
"""

from __future__ import annotations

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

from relay.node import fanout
from relay.node.metrics import Metrics
from relay.protocol import composite, resume
from relay.protocol.composite import TopicSet
from relay.protocol.multi import MultiReader
from relay.protocol.resume import CatchUp, Reader, plan, reset_frame
from relay.protocol.wire import Decoder, Event
from tests.protocol.test_resume_model import (
    EPOCH,
    MAX_PUBLISH,
    Edge,
    Node,
    Stream,
    check,
    frame,
)

NAMES = ("scores", "match:12", "alerts")


class TopicWorld:
    """One topic's part of the world, as ``test_resume_model``'s Node, Edge and check read it."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.life = 0
        self.lives = [Stream(9 * EPOCH)]
        self.edge = Edge(self)  # type: ignore[arg-type]
        self.clients: list[Any] = []  # the relay ends streams itself (``Relay.verify``)

    @property
    def now(self) -> int:
        return self.world.now

    @property
    def stream(self) -> Stream:
        return self.lives[-1]


class Relay:
    """One relay process: a ring, a feed position and a page cache per topic."""

    def __init__(self, world: World, ring_events: int) -> None:
        self.world = world
        self.nodes = {t.name: Node(t, ring_events) for t in world.topics}  # type: ignore[arg-type]

    def verify(self, name: str) -> None:
        """``Relay._verify``: a topic whose stream went back is forgotten and every stream on
        it ends, several-topic streams too."""
        node = self.nodes[name]
        primed = node.primed
        node.verify()
        if primed and not node.primed:
            for c in self.world.clients:
                if c.relay is self and c.multi is not None and name in c.multi.set.topics:
                    c.disconnect()


class Cursor(Reader):
    """A cursor as the fan-out sees one (``resume`` is what it calls to hand it back)."""

    __slots__ = ("closed_because", "handed_back", "multi", "pending", "send")

    def __init__(self, cursor: int, last_id: int) -> None:
        super().__init__(cursor, last_id)
        self.handed_back = False
        self.closed_because: str | None = None
        self.multi: MultiReader | None = None
        self.pending: Any = None
        self.send: Any = None

    def resume(self, pending: Any = None) -> None:
        self.handed_back = True


class Taken:
    """What a server's send returns when it took the bytes at once."""


fanout._READY.add(Taken)


class View:
    """What one client has of one topic since its promise for the topic started."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bool, dict[str, Any] | None]] = []
        self.anchor: tuple[int, int] | None = None


class Client:
    def __init__(self, world: World, earliest: bool) -> None:
        self.world = world
        self.earliest = earliest
        self.last_event_id = ""  # the browser's, as its EventSource keeps it
        self.want: tuple[str, ...] = tuple(t.name for t in world.topics)
        self.views: dict[str, View] = {}
        self.relay: Relay | None = None
        self.multi: MultiReader | None = None
        self.decoder = Decoder()
        self.turn = 0

    def position(self, name: str) -> int | None:
        """The position its id holds for ``name`` (None: none)."""
        if not self.last_event_id:
            return None
        return composite.parse(self.last_event_id).positions.get(composite.tag(name))

    def connect(self, relay: Relay, mask: int) -> None:
        """``multistream.serve``: the set, prime, check ids past a ring, plan, register, and
        the first bytes (resets, the frame that sets the id)."""
        names = [t.name for t in self.world.topics]
        before = set(self.want) if self.views else set()
        if mask:
            self.want = tuple(n for k, n in enumerate(names) if mask >> k & 1)
        topic_set = TopicSet.parse(list(self.want), 16)
        held = topic_set.positions(
            composite.parse(self.last_event_id) if self.last_event_id else None)
        afters = list(held)
        resets = []
        for i, name in enumerate(topic_set.topics):
            node = relay.nodes[name]
            node.prime()
            after = afters[i]
            if after is not None and after > node.ring.last_id:
                last = self.world.topic(name).stream.last_generated
                if after > last:  # ``stream.check_future``: never existed here
                    resets.append((i, reset_frame("unknown", after, None, last)))
                    afters[i] = last
                else:
                    node.ahead = max(node.ahead, after)
        cursors = []
        for i, name in enumerate(topic_set.topics):
            p = plan(relay.nodes[name].ring, afters[i], earliest=self.earliest)
            cursor = Cursor(p.cursor, p.last_id)
            if p.history_after is not None:
                cursor.catch_up = CatchUp(p.history_after, p.history_until, p.resume_from)
            cursors.append(cursor)
            if name not in before:  # new to its set (or added again): a promise from here
                view = self.views[name] = View()
                view.anchor = (self.world.topic(name).life, p.last_id)
        self.relay = relay
        self.multi = MultiReader(topic_set, cursors)
        for cursor in cursors:
            cursor.multi = self.multi
        for i, _ in resets:
            self.multi.hold(i, held[i] or 0)
        self.multi.awake = False
        self.decoder = Decoder(last_event_id=self.last_event_id)
        self.receive(b"".join(self.multi.retag_reset(i, f) for i, f in resets)
                     + self.multi.start_frame())

    def disconnect(self) -> None:
        self.relay = None
        self.multi = None

    def node(self, i: int) -> Node:
        assert self.relay is not None and self.multi is not None
        return self.relay.nodes[self.multi.set.topics[i]]

    def step(self, budget: int) -> None:
        """One turn of the connection's task (``multistream._follow``): the next topic in turn
        with something to do, one history page or one send of ring frames."""
        multi = self.multi
        assert multi is not None
        n = len(multi.readers)
        for k in range(n):
            i = (self.turn + k) % n
            reader, node = multi.readers[i], self.node(i)
            if reader.catch_up is not None:
                fresh = reader.catch_up.fresh
                page = node.page(reader.catch_up.after, fresh)
                self.receive(b"".join(multi.page_frames(i, page, fresh=fresh)))
                self.turn = i + 1
                if reader.catch_up is not None and reader.catch_up.rewound:
                    relay = self.relay
                    assert relay is not None
                    self.disconnect()  # the stream ends; the relay's check comes soon
                    relay.verify(multi.set.topics[i])
                return
            chunk, _ = multi.ring_chunk(i, node.ring, budget * len(frame(1)))
            if chunk or reader.catch_up is not None:
                self.receive(chunk)
                self.turn = i + 1
                return

    def fan(self, i: int) -> None:
        """The feed's fan-out to this client's parked cursor of topic ``i`` (the real one)."""
        multi = self.multi
        assert multi is not None
        i %= len(multi.readers)
        cursor = multi.readers[i]
        assert isinstance(cursor, Cursor)
        ring = self.node(i).ring
        if cursor.catch_up is not None or cursor.cursor >= ring.head:
            return  # not parked: its task has work
        sent: list[bytes] = []

        def send(message: dict[str, Any]) -> Taken:
            sent.append(message["body"])
            return Taken()

        cursor.send = send
        if fanout._send_multi(cursor, multi, ring, 4 * len(frame(1)),  # type: ignore[arg-type]
                              [], {}):
            fanout.flush([cursor], Metrics("model"),  # type: ignore[list-item]
                         4 * len(frame(1)))
        for body in sent:
            self.receive(body)

    def receive(self, data: bytes) -> None:
        """Bytes as the browser parses them: every event is filed under its topic."""
        for event in self.decoder.feed(data):
            assert isinstance(event, Event)
            had = self.position  # what it held of the topic before this event
            parsed = composite.parse(event.id)
            name = parsed.topic
            assert name, "an event without its topic"
            pos = parsed.positions[composite.tag(name)]
            reset = event.event == resume.RESET
            body = json.loads(event.data) if reset else None
            if reset:
                assert body is not None and body["topic"] == name
            else:
                assert int(event.data) == pos, "data changed, or filed under another id"
            view = self.views[name]
            before = had(name)
            if (reset and body is not None and body["reason"] == "unknown"
                    and before is not None and pos < before):
                view.anchor = (self.world.topic(name).life, pos)  # the stream went back
            view.frames.append((pos, reset, body))
            self.last_event_id = event.id
        self.last_event_id = self.decoder.last_event_id

    @property
    def idle(self) -> bool:
        if self.multi is None:
            return False
        return all(r.catch_up is None and r.cursor >= self.node(i).ring.head
                   for i, r in enumerate(self.multi.readers))


class World(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.topics: list[TopicWorld] = []
        self.relays: list[Relay] = []
        self.clients: list[Client] = []

    def topic(self, name: str) -> TopicWorld:
        return next(t for t in self.topics if t.name == name)

    @initialize(n=st.integers(2, 3), ring_events=st.integers(1, 6),
                earliest=st.lists(st.booleans(), min_size=1, max_size=3))
    def setup(self, n: int, ring_events: int, earliest: list[bool]) -> None:
        self.topics = [TopicWorld(self, name) for name in NAMES[:n]]
        self.relays = [Relay(self, ring_events), Relay(self, max(1, ring_events - 2)),
                       Relay(self, ring_events + 3)]
        self.clients = [Client(self, e) for e in earliest]

    @rule(topic=st.integers(0, 2), n=st.integers(1, 4), gap=st.integers(1, 3))
    @precondition(lambda self: self.topics)
    def publish(self, topic: int, n: int, gap: int) -> None:
        stream = self.topics[topic % len(self.topics)].stream
        for _ in range(n):
            if stream.published < MAX_PUBLISH:
                stream.publish(gap)

    @rule(topic=st.integers(0, 2), n=st.integers(1, 5))
    @precondition(lambda self: self.topics)
    def trim(self, topic: int, n: int) -> None:
        t = self.topics[topic % len(self.topics)]
        # retention only takes what every feed has read (it runs far behind the head)
        read = min((r.nodes[t.name].read_from for r in self.relays
                    if r.nodes[t.name].primed), default=None)
        gone = [i for i in t.stream.entries[:n] if read is None or i <= read]
        t.stream.trimmed.update(gone)
        del t.stream.entries[:len(gone)]

    @rule(relay=st.integers(0, 2), topic=st.integers(0, 2), n=st.integers(1, 6))
    @precondition(lambda self: self.relays)
    def feed(self, relay: int, topic: int, n: int) -> None:
        self.relays[relay].nodes[self.topics[topic % len(self.topics)].name].feed(n)

    @rule(relay=st.integers(0, 2), topic=st.integers(0, 2))
    @precondition(lambda self: self.relays)
    def verify(self, relay: int, topic: int) -> None:
        self.relays[relay].verify(self.topics[topic % len(self.topics)].name)

    @rule(client=st.integers(0, 2), relay=st.integers(0, 2),
          mask=st.one_of(st.just(0), st.integers(1, 7)))
    @precondition(lambda self: self.clients)
    def connect(self, client: int, relay: int, mask: int) -> None:
        c = self.clients[client % len(self.clients)]
        if c.relay is None:
            c.connect(self.relays[relay], mask % (1 << len(self.topics)))

    @rule(client=st.integers(0, 2), budget=st.integers(1, 8))
    @precondition(lambda self: self.clients)
    def read(self, client: int, budget: int) -> None:
        c = self.clients[client % len(self.clients)]
        if c.relay is not None:
            c.step(budget)

    @rule(client=st.integers(0, 2), topic=st.integers(0, 2))
    @precondition(lambda self: self.clients)
    def fan(self, client: int, topic: int) -> None:
        c = self.clients[client % len(self.clients)]
        if c.relay is not None:
            c.fan(topic)

    @rule(client=st.integers(0, 2))
    @precondition(lambda self: self.clients)
    def drop(self, client: int) -> None:
        self.clients[client % len(self.clients)].disconnect()

    @rule(client=st.integers(0, 2), relay=st.integers(0, 2),
          mask=st.one_of(st.just(0), st.integers(1, 7)))
    @precondition(lambda self: self.clients)
    def move(self, client: int, relay: int, mask: int) -> None:
        """The connection drops and the browser reconnects at once, to whichever relay the
        balancer picks (with another set: the page opened a new EventSource with its id)."""
        c = self.clients[client % len(self.clients)]
        c.disconnect()
        c.connect(self.relays[relay], mask % (1 << len(self.topics)))

    @rule(client=st.integers(0, 2), topic=st.integers(0, 2), n=st.integers(1, 12),
          relay=st.integers(0, 2))
    @precondition(lambda self: self.clients)
    def away(self, client: int, topic: int, n: int, relay: int) -> None:
        """A browser away while a topic moves on and its history expires: it drops, ``n``
        events are published, every feed reads them, retention trims ``n``, it comes back."""
        c = self.clients[client % len(self.clients)]
        c.disconnect()
        self.publish(topic, n, 1)
        for r in self.relays:
            r.nodes[self.topics[topic % len(self.topics)].name].feed(n)
        self.trim(topic, n)
        c.connect(self.relays[relay], 0)

    @rule()
    def tick(self) -> None:
        self.now += 1

    @rule(topic=st.integers(0, 2))
    @precondition(lambda self: self.topics and all(len(t.lives) < 3 for t in self.topics))
    def make_again(self, topic: int) -> None:
        """One topic's stream is deleted and made again, its ids lower than every old one."""
        t = self.topics[topic % len(self.topics)]
        t.lives.append(Stream(t.stream.base - EPOCH))
        t.life += 1
        for c in self.clients:
            view = c.views.get(t.name)
            if view is not None and view.anchor is not None and c.position(t.name) in (None, 0):
                # it has no id of the old stream: its promise goes on (see the one-topic model)
                view.anchor = (t.life, view.anchor[1])
        t.edge.cache.clear()  # the operator bans the topic's pages (docs/OPERATIONS.md)

    def teardown(self) -> None:
        if not self.relays:
            return
        # every feed catches up, one relay at a time, and checks its streams; every client
        # reads to the end, reconnecting to the relays in turn with the set it has
        for n in range(3000):
            relay = self.relays[n % len(self.relays)]
            for t in self.topics:
                relay.nodes[t.name].feed(100 if n >= len(self.relays) else 1)
                relay.verify(t.name)
            busy = n < 2 * len(self.relays)
            for i, c in enumerate(self.clients):
                if c.relay is None:
                    c.connect(self.relays[(i + n) % len(self.relays)], 0)
                if not c.idle:
                    busy = True
                    for i in range(len(c.want)):  # the feed's fan-out first, as it runs first
                        if c.relay is not None:
                            c.fan(i)
                    if c.relay is not None:
                        c.step(1 << 10)
            self.now += 1
            if not busy:
                break
        else:
            raise AssertionError("clients never caught up")
        for c in self.clients:
            for name in c.want:
                check(self.topic(name), c.views[name])  # type: ignore[arg-type]


CASES = 400  # random worlds per run of make test, each up to 50 steps
World.TestCase.settings = settings(max_examples=CASES, stateful_step_count=50, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
test_every_topic_of_every_client_exact_or_reset = World.TestCase


# -- the model must fail when a per-topic rule is broken ----------------------------------


def _line_forgetting(self: MultiReader, i: int, key: int) -> bytes:
    """``MultiReader._line`` that names the event's position but does not keep it: the ids
    of the other topics' later events carry this topic's old position."""
    entries = list(self.entries)
    entries[i] = composite.entry(self.set.tags[i], key)
    return self._marks[i] + b".".join(entries) + b"\n"  # type: ignore[attr-defined]


_ring_span = MultiReader.ring_span


def _ring_span_forgetting(self: MultiReader, reader: Reader, span: Any) -> bytes:
    """``MultiReader.ring_span`` (the fan-out's path) that does not keep the new position."""
    i = self.index(reader)
    old = self.entries[i]
    body = _ring_span(self, reader, span)
    self.entries[i] = old
    return body


_page_frames = MultiReader.page_frames


def _page_frames_without_resets(self: MultiReader, i: int, page: Any,
                                *, fresh: bool = False) -> list[bytes]:
    """``page_frames`` that drops a page's resets (a loss the page no longer hears of)."""
    catch_up = self.readers[i].catch_up
    before = catch_up.resets if catch_up is not None else 0
    out = _page_frames(self, i, page, fresh=fresh)
    after = catch_up.resets if catch_up is not None else 0
    return out[after - before:]


_send_multi = fanout._send_multi


def _send_multi_without_the_skip(sub: Any, multi: MultiReader, ring: Any, send_max: int,
                                 keep: list[Any], spans: Any) -> int:
    """The fan-out sending a cursor frames at or below what the client has of the topic."""
    last = sub.last_id
    sub.last_id = -1  # as if it had nothing: the check passes
    try:
        return _send_multi(sub, multi, ring, send_max, keep, spans)
    finally:
        if sub.last_id == -1:
            sub.last_id = last


@pytest.mark.parametrize("hole", ["positions not kept", "no first id", "resets dropped",
                                  "back before its reset", "fan-out resends",
                                  "catch-up ends early"])
def test_the_model_finds_the_holes_it_was_made_for(hole: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if hole == "positions not kept":
        monkeypatch.setattr(MultiReader, "_line", _line_forgetting)
        monkeypatch.setattr(MultiReader, "ring_span", _ring_span_forgetting)
    elif hole == "no first id":  # a reconnect before any event starts from "now" again
        monkeypatch.setattr(MultiReader, "start_frame", lambda self: b"")
    elif hole == "back before its reset":  # earlier frames' ids already hold the lower id
        monkeypatch.setattr(MultiReader, "hold", lambda self, i, key: None)
    elif hole == "resets dropped":
        monkeypatch.setattr(MultiReader, "page_frames", _page_frames_without_resets)
    elif hole == "fan-out resends":
        monkeypatch.setattr(fanout, "_send_multi", _send_multi_without_the_skip)
    else:
        from tests.protocol.test_resume_model import _take_before_the_fix

        monkeypatch.setattr(resume.CatchUp, "take", _take_before_the_fix)
    # one failure is an AssertionError, several distinct ones come as a group
    with pytest.raises((AssertionError, ExceptionGroup)):
        run_state_machine_as_test(World, settings=settings(
            max_examples=2000, stateful_step_count=50, deadline=None, database=None,
            derandomize=True, suppress_health_check=list(HealthCheck), print_blob=False,
            phases=[Phase.generate]))  # found is enough: shrinking it is slow
