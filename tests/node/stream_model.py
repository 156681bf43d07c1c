"""A world that drives the relay's real stream code, and a checker of what browsers received.

One asyncio event loop holds everything:

- **Redis**: ``FakeRedis`` (tests/node/fakeredis_streams.py), one instance every relay and the
  replay service read, with Redis's semantics command by command; each reply comes back a few
  loop turns late (``delay``), so the world changes while a relay waits for it.
- **Relays**: real ``relay.node.relay.Relay`` objects built from ``Settings`` with small rings,
  their Redis clients swapped for the fake. Streams are the production coroutines
  (``relay.node.stream.serve``, ``relay.node.multistream.serve``); new frames reach parked
  connections through ``relay.node.fanout`` (sends that return ``Taken`` are done at once, a
  slow client's return a pending future); the feed is ``FeedBase.absorb`` of XREAD replies
  the world computes when it decides a relay's feed reads (with a delay: the read in
  flight), and ``Relay._verify`` runs as the relay runs it, woken by ``verify_now``.
- **The edge**: ``relay.web.client.request`` (what ``Replayer._fetch`` calls) answers replay
  URLs as the replay service does (``history.read_page``, its headers), or with any page it
  ever answered for the same URL (a cache holding it since before a trim, a recreation,
  a failover), or fails (the relay reads Redis itself).
- **Browsers**: EventSources that decode with the project's ``wire.Decoder``, keep their last
  event id across connections as WHATWG says, drop at any moment (with a prefix of what was
  in flight), and come back with that id (or none, when none was ever set).

The checker (``check``) reads each browser's receipts against the truth (every event ever
published, and when it existed) and names every violation's kind. Per browser (a reload
starts a new one) and topic, the browser *has* a position: the id of the last event it got,
or of a reset (everything up to it is told lost), or of a position frame (an ``id:`` with no
data: the relay says it has everything up to there), or, before any of these, the moment it
was first subscribed (its first bytes, when it came without an id). An event is *owed* when
its id is above the position (or, after the stream went back, it was published after the
browser had the position) and it existed at some moment since the browser's run of positions
began (a reset or a position names the stream as it was then). Then:

- ``duplicate``: an event got twice (after an ``unknown`` reset that took the position back,
  what the stream holds again may come again);
- ``out-of-order``: an id at or below the position with no reset that went back first;
- ``lost``: an owed event jumped over (a later one came) while it still existed;
- ``silent-gap``: an owed event jumped over after it was gone (trimmed, deleted), with no
  reset between;
- ``stall``: a connected browser lacks an owed event that exists, once the world is quiet
  (checked before, and again after, one last event on each topic);
- ``unknown-id``: an event whose id and data no stream life had;
- ``error``: a stream task or the feed's delivery raised.

What the world assumes: ids name events (a stream made again, or a failover, never gives an id
that an earlier life gave: in the same millisecond a reader could not tell them apart, and
no relay could keep the contract); events a failover lost are not owed (a relay whose feed
never read them reads a consistent stream without them and cannot know), but what a failover
does to readers (ids that go back, events that never come) is checked.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from relay.node import fanout, multistream, stream
from relay.node.relay import Relay
from relay.protocol import composite, ids
from relay.protocol import ring as ring_mod
from relay.protocol.resume import RESET
from relay.protocol.wire import Decoder, Event
from relay.settings import Settings
from relay.storage import clients, history
from relay.storage import streams as store
from relay.web import auth
from relay.web import client as web_client
from relay.web.http import Request
from tests.node.fakeredis_streams import FakeRedis

TOPICS = ("t0", "t1")
EDGE = "http://edge.test"
KINDS = ("lost", "duplicate", "out-of-order", "silent-gap", "stall", "unknown-id", "error")


class Taken:
    """What a send returns when the server took the bytes at once (``fanout.done_at_once``)."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


fanout._READY.add(Taken)


# What the world holds back while a hole is known (tests/node/test_stream_model.py,
# ``KNOWN_HOLES``): each gate keeps the random world out of one hole, so that everything else
# is still checked; the hole's own scenario shows it.
GATES = {
    "re-anchor": "a browser that reconnects with no id is owed only what comes after that "
                 "reconnect (the checker's side: without the position line it has no id)",
    "trim-behind-feeds": "trims never remove entries a watching feed has not read",
    "recreate-quiet": "a stream is deleted only when every browser has all of it, checked by "
                      "every relay at once, made again only with lower ids, and every "
                      "browser has reconnected before anything else happens",
    "forget-between-awaits": "topics are not forgotten (expired, or by verify) while a "
                             "stream of that relay is in its awaits before it subscribed: "
                             "the forget waits until it has",
    "no-trim-at-zero": "no trim while a browser holds position 0 of the topic",
    "one-batch-pages": "history pages are read in one batch (no trim between batches)",
    "zero-across-lives": "a stream is deleted and made again only quietly (every browser has "
                         "all of it first) while a browser holds 0-0 of it (0-0 is a "
                         "position in every life)",
    "lower-past-a-client": "a stream is made again with lower ids only while no browser holds "
                           "an id above them (a client whose id is past a stream's end goes "
                           "on live from its last id: the failover rule)",
}


# -- the truth ---------------------------------------------------------------------------------


@dataclass
class Published:
    topic: str
    key: int
    token: str
    at: int  # world time it was published
    alive: list[list[int]] = field(default_factory=list)  # [from, to) spans; to -1: still
    # lost in a failover: a relay whose feed never read it cannot tell that it existed (the
    # stream it reads is a consistent one without it), so its loss is not required to be
    # told; what a failover breaks for readers (ids that go back, events that never come) is
    # still checked: out-of-order, duplicate, stall, unknown-id
    phantom: bool = False

    def existed_before(self, t: int) -> bool:
        return self.at < t

    def alive_at(self, t: int) -> bool:
        return any(a <= t and (b == -1 or t < b) for a, b in self.alive)

    def alive_since(self, t: int) -> bool:
        """Whether it existed at any moment from ``t`` on."""
        return any(b == -1 or b > t for _, b in self.alive)

    def alive_now(self) -> bool:
        return bool(self.alive) and self.alive[-1][1] == -1


@dataclass(frozen=True)
class Violation:
    kind: str
    browser: str
    topic: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.browser} {self.topic}: {self.detail}"


class ModelViolation(AssertionError):
    def __init__(self, violations: list[Violation], trace: list[str]) -> None:
        self.violations = violations
        self.kinds = sorted({v.kind for v in violations})
        lines = [str(v) for v in violations[:12]]
        super().__init__(f"{len(violations)} violation(s) {self.kinds}:\n  " + "\n  ".join(lines)
                         + "\nactions:\n  " + "\n  ".join(trace[-60:]))


# -- browsers ----------------------------------------------------------------------------------


@dataclass
class Record:
    gen: int  # the browser's life (a reload starts a new one: nothing before it is owed)
    kind: str  # event, reset, position, anchor
    topic: str
    key: int
    token: str
    at: int
    reason: str = ""


class Conn:
    """One connection of a browser: its ASGI receive and send, and what is in flight."""

    def __init__(self, world: World, browser: Browser, relay: int, slow: bool) -> None:
        self.world = world
        self.browser = browser
        self.relay = relay
        self.slow = slow
        loop = asyncio.get_running_loop()
        self.leave: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.gone = False
        self.refused = False
        self.started = False
        # the size of the first body sent, and how much of the connection the browser took:
        # it is subscribed once it has the whole of the first send (``retry:`` and, in the
        # same write, its position), never on a cut prefix of it
        self.first_send: int | None = None
        self.taken = 0
        self.buffer = b""
        self.pending: list[asyncio.Future[None]] = []
        self.decoder = Decoder(last_event_id=browser.last_event_id)
        self.had_id = bool(browser.last_event_id)
        self.task: asyncio.Task[None] | None = None

    def receive(self) -> asyncio.Future[dict[str, Any]]:
        return self.leave

    def send(self, message: MutableMapping[str, Any]) -> Any:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            self.refused = b"x-ssedge-refused" in headers or message["status"] != 200
            return Taken()
        body = message.get("body", b"")
        if self.first_send is None and body:
            self.first_send = len(body)
        if self.gone:
            return Taken()  # ASGI: a send after the client left does not raise
        if self.slow or self.buffer:
            self.buffer += body
            if self.slow:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self.pending.append(waiter)
                return waiter
            return Taken()
        self.browser.take(self, body)
        return Taken()

    def release(self) -> None:
        """The slow client reads what was queued for it."""
        self.slow = False
        body, self.buffer = self.buffer, b""
        if body and not self.gone:
            self.browser.take(self, body)
        for waiter in self.pending:
            if not waiter.done():
                waiter.set_result(None)
        self.pending.clear()

    def drop(self, rnd: random.Random) -> None:
        """The client leaves, having read a prefix of what was in flight."""
        if self.gone:
            return
        if self.buffer:
            self.browser.take(self, self.buffer[:rnd.randrange(len(self.buffer) + 1)])
        self.buffer = b""
        self.gone = True
        self.browser.last_event_id = self.decoder.last_event_id
        if not self.leave.done():
            self.leave.set_result({"type": "http.disconnect"})
        for waiter in self.pending:
            if not waiter.done():
                waiter.set_result(None)
        self.pending.clear()

    @property
    def over(self) -> bool:
        return self.gone or (self.task is not None and self.task.done())


class Browser:
    def __init__(self, name: str, topics: tuple[str, ...]) -> None:
        self.name = name
        self.topics = topics
        self.multi = len(topics) > 1
        self.tags = {composite.tag(t): t for t in topics}
        self.last_event_id = ""
        self.gen = 0
        self.records: list[Record] = []
        self.conn: Conn | None = None
        self.world: World | None = None

    def _now(self) -> int:
        assert self.world is not None
        return self.world.step()

    def take(self, conn: Conn, body: bytes) -> None:
        """Bytes of ``conn`` read by the browser, frame by frame as its parser sees them."""
        if conn.gone or not body:
            return
        assert self.world is not None
        self.world.received += 1
        conn.taken += len(body)
        if not conn.started and conn.taken >= (conn.first_send or 0):
            conn.started = True
            if not conn.refused and not conn.had_id:
                for topic in self.topics:
                    self.records.append(Record(self.gen, "anchor", topic, 0, "", self._now()))
        start = 0
        while start < len(body):
            end = body.find(b"\n\n", start)
            end = len(body) if end == -1 else end + 2
            before = conn.decoder.last_event_id
            items = conn.decoder.feed(body[start:end])
            start = end
            events = [i for i in items if isinstance(i, Event)]
            for event in events:
                self._event(event)
            if not events and conn.decoder.last_event_id != before:
                self._position(conn.decoder.last_event_id)
        if conn.decoder.last_event_id:
            self.last_event_id = conn.decoder.last_event_id

    def _key(self, text: str) -> tuple[str, int, dict[str, int]]:
        if not self.multi:
            return self.topics[0], ids.parse(text), {}
        cid = composite.parse(text)
        positions = {self.tags[g]: k for g, k in cid.positions.items() if g in self.tags}
        return cid.topic, positions.get(cid.topic, -1), positions

    def _event(self, event: Event) -> None:
        now = self._now()
        if event.event == RESET:
            data = json.loads(event.data)
            topic, key, positions = self._key(event.id)
            if self.multi:
                topic = data.get("topic", "")
                key = positions.get(topic, -1)
            self.records.append(Record(self.gen, "reset", topic, key, "", now,
                                       str(data.get("reason"))))
            return
        try:
            topic, key, _ = self._key(event.id)
        except ValueError:
            topic, key = "?", -1
        self.records.append(Record(self.gen, "event", topic, key, event.data, now))

    def _position(self, text: str) -> None:
        now = self._now()
        if not self.multi:
            self.records.append(Record(self.gen, "position", self.topics[0], ids.parse(text),
                                       "", now))
            return
        _, _, positions = self._key(text)
        for topic, key in positions.items():
            self.records.append(Record(self.gen, "position", topic, key, "", now))


# -- the world ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelayConfig:
    ring_events: int
    replay: bool  # through the edge (else history from Redis only)
    open_ttl: int  # how long the relay keeps a page that reached the head (0 or for ever)


class FakeAuthority:
    async def read_access(self, request: Request, topic: str) -> auth.Access:
        return auth.PUBLIC


class Edge:
    """The protocol cache in front of the replay service: each answer is fresh from Redis, a
    page it answered before for the same URL, or a failure, as the world's dice say."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.kept: dict[str, list[web_client.Response]] = {}
        # a stale answer the edge keeps giving for a while (its TTL and grace): URL -> (the
        # answer, how many more requests)
        self.pinned: dict[str, tuple[web_client.Response, int]] = {}
        self.fetches = 0

    async def request(self, method: str, url: str, *, timeout: float = 30.0,
                      **options: Any) -> web_client.Response:
        world = self.world
        rnd = world.rnd
        for _ in range(world.delay()):
            await asyncio.sleep(0)
        self.fetches += 1
        kept = self.kept.get(url, [])
        roll = rnd.random()
        if roll < world.edge_fail:
            raise OSError("the edge is away")
        pinned = self.pinned.pop(url, None)
        if pinned is not None and pinned[1] > 0:
            self.pinned[url] = (pinned[0], pinned[1] - 1)
            return pinned[0]
        if kept and roll < world.edge_fail + world.edge_stale:
            stale = rnd.choice(kept)
            self.pinned[url] = (stale, rnd.randrange(300))
            return stale
        parts = urlsplit(url)
        topic = unquote(parts.path.rsplit("/", 1)[1])
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        redis: Any = world.redis
        page, _ = await history.read_page(redis, topic, ids.parse(query["after"]),
                                          int(query["limit"]))
        headers = page.headers()
        response = web_client.Response(200, headers, page.body)
        self.kept.setdefault(url, []).append(response)
        return response


class World:
    def __init__(self, rnd: random.Random, relays: list[RelayConfig],
                 browsers: list[tuple[str, ...]], *, max_delay: int = 2,
                 edge_fail: float = 0.1, edge_stale: float = 0.4,
                 gates: frozenset[str] = frozenset()) -> None:
        unknown = gates - set(GATES)
        if unknown:
            raise ValueError(f"no such gate: {sorted(unknown)}")
        self.rnd = rnd
        self.gates = gates
        self.max_delay = max_delay
        self.edge_fail = edge_fail
        self.edge_stale = edge_stale
        self.redis = FakeRedis(delay=self.delay)
        self.time = 0
        self.received = 0
        self.published: dict[str, list[Published]] = {t: [] for t in TOPICS}
        self.tokens: dict[str, Published] = {}
        self.counter = 0
        self.max_ms = 0
        self.low_ms = 1_000  # ids of streams made again with lower ids, going down
        self.trace: list[str] = []
        self.errors: list[Violation] = []
        self.edge = Edge(self)
        self.configs = relays
        self.relays: list[Relay] = []
        self.multis: list[multistream.MultiStreams] = []
        self.reading: list[asyncio.Task[None] | None] = []
        self.verifiers: list[asyncio.Task[None]] = []
        self.browsers = [Browser(f"b{i}", t) for i, t in enumerate(browsers)]
        for b in self.browsers:
            b.world = self
        self.authority = FakeAuthority()
        self._saved_request: Any = None
        self._saved_batch = history._FIRST_BATCH

    def delay(self) -> int:
        return self.rnd.randrange(self.max_delay + 1) if self.max_delay else 0

    def step(self) -> int:
        self.time += 1
        return self.time

    # -- set-up --------------------------------------------------------------------------

    async def start(self) -> None:
        fanout._at_once.sends = 0
        self._saved_batch = history._FIRST_BATCH
        if "one-batch-pages" not in self.gates:
            history._FIRST_BATCH = 2  # pages of several reads, a trim may come between
        self._saved_request = web_client.request
        web_client.request = self.edge.request
        for i, config in enumerate(self.configs):
            settings = Settings(
                node_name=f"r{i}", ring_events=config.ring_events, replay_page=3,
                replay_url=EDGE if config.replay else "", feed_verify_s=3600,
                replay_open_max_age_s=config.open_ttl, send_max_bytes=1024,
                client_backlog_bytes=1024, heartbeat_s=3600, topic_linger_s=0,
                max_streams=1000, retry_ms=1000)
            relay = Relay(settings)
            fake: Any = self.redis
            relay.redis = clients.Redis(fake)
            relay.feed._redis = fake
            relay.feed._connected = True  # type: ignore[attr-defined]
            relay.replayer._redis = fake
            relay._redis_seen = True
            self.relays.append(relay)
            self.multis.append(multistream.MultiStreams(relay.metrics))
            self.reading.append(None)
            self.verifiers.append(asyncio.ensure_future(relay._verify()))
            if "forget-between-awaits" in self.gates:
                self._gate_forget(i)

    async def stop(self) -> None:
        for b in self.browsers:
            if b.conn is not None:
                b.conn.drop(self.rnd)
        await self.settle(20)
        tasks = [t for t in self.verifiers + self.reading if t is not None]
        tasks += [b.conn.task for b in self.browsers if b.conn and b.conn.task]
        for relay in self.relays:
            tasks += [t.fanning for t in relay.hub if t.fanning is not None]
            tasks.append(relay.feed._unblocking)  # type: ignore[attr-defined]
        tasks = [t for t in tasks if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        web_client.request = self._saved_request
        history._FIRST_BATCH = self._saved_batch

    async def settle(self, turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)

    # -- the truth -------------------------------------------------------------------------

    def sync_truth(self) -> None:
        """Note which published events exist now (after any write of the world's)."""
        now = self.step()
        present: set[str] = set()
        for s in self.redis.streams.values():
            for _, fields, _ in s.entries:
                present.add(fields[1].decode())
        for p in self.tokens.values():
            alive = p.alive_now()
            if p.token in present and not alive:
                p.alive.append([now, -1])
            elif p.token not in present and alive:
                p.alive[-1][1] = now

    def _clock(self, advance: int) -> None:
        self.redis.now_ms += advance
        if self.redis.now_ms <= self.max_ms:
            self.redis.now_ms = self.max_ms

    # -- what the world does ----------------------------------------------------------------

    def publish(self, topic: str, n: int, maxlen: int | None = None,
                approximate: bool = True) -> None:
        for _ in range(n):
            self._clock(self.rnd.randrange(2))
            self._add(topic, "*", self.safe(topic, maxlen), approximate)
        self.trace.append(f"publish {topic} x{n} maxlen={maxlen}")
        self.sync_truth()

    def _add(self, topic: str, entry_id: str, maxlen: int | None = None,
             approximate: bool = True) -> None:
        self.counter += 1
        token = f"{topic}#{self.counter}"
        key = ids.from_redis(self.redis.do_xadd(store.stream_key(topic), {"d": token},
                                                id=entry_id, maxlen=maxlen,
                                                approximate=approximate))
        self.max_ms = max(self.max_ms, key >> 64)
        p = Published(topic, key, token, self.step())
        self.published[topic].append(p)
        self.tokens[token] = p

    def safe(self, topic: str, maxlen: int | None) -> int | None:
        """The MAXLEN a trim may use under the gates: never past what a watching feed has
        not read (``trim-behind-feeds``); nothing while a browser holds position 0 of the
        topic (``no-trim-at-zero``)."""
        s = self.redis.streams.get(store.stream_key(topic).encode())
        if maxlen is None or s is None:
            return maxlen
        if "no-trim-at-zero" in self.gates and self._zero_held(topic):
            return max(maxlen, len(s.entries))
        if "trim-behind-feeds" not in self.gates:
            return maxlen
        unread = 0
        for relay in self.relays:
            t = relay.hub.topics.get(topic)
            if t is None or not t.primed:
                continue
            read = ids.from_redis(t.read_from)
            unread = max(unread, sum(1 for e in s.entries if e[0] > read))
        return max(maxlen, unread + 1)

    def _held_above(self, topic: str, key: int) -> bool:
        """Whether a browser holds a position of ``topic`` at or above ``key``."""
        tag = composite.tag(topic)
        for b in self.browsers:
            held = [b.last_event_id] + ([b.conn.decoder.last_event_id] if b.conn else [])
            for text in held:
                if not text:
                    continue
                if b.multi:
                    position = composite.parse(text).positions.get(tag)
                elif topic in b.topics:
                    position = ids.parse(text)
                else:
                    position = None
                if position is not None and position >= key:
                    return True
        return False

    def _zero_held(self, topic: str) -> bool:
        tag = composite.tag(topic)
        for b in self.browsers:
            ids_held = [b.last_event_id] + ([b.conn.decoder.last_event_id] if b.conn else [])
            for held in ids_held:
                if b.multi and held and composite.parse(held).positions.get(tag) == 0:
                    return True
                if not b.multi and held in ("0-0", "0"):
                    return True
        return False

    def trim(self, topic: str, keep: int, approximate: bool) -> None:
        keep2 = self.safe(topic, keep)
        self.redis.do_xtrim(store.stream_key(topic), maxlen=keep2, approximate=approximate)
        self.trace.append(f"trim {topic} keep={keep2} approx={approximate}")
        self.sync_truth()

    async def recreate(self, topic: str, n: int, lower: bool) -> None:
        """DEL, then ``n`` entries: with ids ahead of every old one (``XADD *``), or ``lower``
        ones (a fixture loaded again with explicit ids, below what feeds have read)."""
        key = store.stream_key(topic)
        quiet = "recreate-quiet" in self.gates or (
            "zero-across-lives" in self.gates and self._zero_held(topic))
        if quiet:
            await self.quiesce()
        self.redis.do_delete(key)
        self.redis.now_ms = max(self.redis.now_ms, self.max_ms + 1)
        self.trace.append(f"delete {topic}, then {n} {'lower' if lower else 'newer'} entries")
        self.sync_truth()
        if quiet:
            await self.verify_all()
            n = n if lower else 0
        self.low_ms -= 10
        if lower and "lower-past-a-client" in self.gates and self._held_above(
                topic, self.low_ms << 64):
            lower = False
        for i in range(n):
            if lower:  # below what feeds read, and never an id an earlier life had
                self._add(topic, f"{self.low_ms + i}-0")
            else:
                self.publish(topic, 1)
        self.sync_truth()
        if quiet:
            await self.quiesce()

    async def verify_all(self) -> None:
        for relay in self.relays:
            relay.verify_soon()
        await self.settle(12)

    def failover(self, writes: int) -> None:
        """A replica that missed the last ``writes`` writes (any kind: XADD, XTRIM, DEL) takes
        over; new entries get ids above every id ever given."""
        was = {p.token for p in self.tokens.values() if p.alive_now()}
        self.redis.failover(writes)
        # ids name events: a new entry never takes the id of a lost one (when it does, in the
        # same millisecond, no reader can tell the two apart by ids; see the module's notes)
        self.redis.now_ms = max(self.redis.now_ms, self.max_ms + 1)
        self.trace.append(f"failover losing {writes} writes")
        self.sync_truth()
        for p in self.tokens.values():
            if p.token in was and not p.alive_now():
                p.phantom = True

    def read(self, r: int, count: int, delay: int) -> None:
        """Relay ``r``'s feed reads (XREAD from where each topic was read to); the reply is
        absorbed ``delay`` loop turns later."""
        reading = self.reading[r]
        if reading is not None and not reading.done():
            return
        relay = self.relays[r]
        watched = _watched(relay)
        if not watched:
            return
        reply = self.redis.do_xread(watched, count=count)
        self.trace.append(f"read r{r} count={count} delay={delay}")

        async def absorb() -> None:
            await self.settle(delay)
            if reply:
                await self.absorb(r, reply)

        self.reading[r] = asyncio.ensure_future(absorb())

    async def absorb(self, r: int, reply: Any) -> None:
        """The feed's delivery; an exception in it (the feed task would die) is an error."""
        try:
            await self.relays[r].feed.absorb_written(store.entries_of(reply))
        except Exception as exc:  # noqa: BLE001
            self.errors.append(Violation("error", f"r{r}", "*", f"the feed's delivery raised "
                                                               f"{type(exc).__name__}: {exc}"))

    def verify(self, r: int) -> None:
        self.trace.append(f"verify r{r}")
        self.relays[r].verify_soon()

    def expire(self, r: int) -> None:
        if "forget-between-awaits" in self.gates and self._awaiting(r):
            return
        self.trace.append(f"expire r{r}")
        self.relays[r].hub.expire(time.monotonic() + 1e6, 0)

    def _awaiting(self, r: int) -> bool:
        """Whether a stream of relay ``r`` is in its awaits before it subscribed (a stream
        subscribes and sends its first bytes in one step)."""
        return any(b.conn is not None and b.conn.relay == r and not b.conn.started
                   and not b.conn.over for b in self.browsers)

    def _gate_forget(self, r: int) -> None:
        hub = self.relays[r].hub
        forget = hub.forget

        def later(topic: Any) -> None:
            if self._awaiting(r):
                asyncio.get_running_loop().call_soon(later, topic)
            else:
                forget(topic)

        hub.forget = later  # type: ignore[method-assign]

    def overflow(self, r: int, pick: int) -> None:
        """The sweeper closes a connection it found too far behind."""
        subs = [s for t in self.relays[r].hub for s in t.subscribers]
        if subs:
            self.trace.append(f"overflow r{r}")
            subs[pick % len(subs)].close("overflow")

    def tick(self, r: int) -> None:
        self.relays[r].hub.tick()

    def connect(self, b: int, r: int, slow: bool) -> None:
        browser = self.browsers[b]
        if browser.conn is not None and not browser.conn.over:
            self.drop(b)  # it moves: drops, and comes back at once (to another relay)
        if browser.conn is not None:
            browser.last_event_id = browser.conn.decoder.last_event_id or browser.last_event_id
        conn = Conn(self, browser, r, slow)
        browser.conn = conn
        self.trace.append(f"connect {browser.name} r{r} slow={slow} id={browser.last_event_id!r}")
        relay = self.relays[r]
        headers = [(b"last-event-id", browser.last_event_id.encode())] \
            if browser.last_event_id else []
        if browser.multi:
            query = "&".join(f"topic={t}" for t in browser.topics).encode()
            scope = {"type": "http", "method": "GET", "path": multistream.PATH,
                     "query_string": query, "headers": headers}
            coro = multistream.serve(relay, self.multis[r], self.authority,  # type: ignore[arg-type]
                                     Request(scope), conn.receive, conn.send)
        else:
            topic = browser.topics[0]
            scope = {"type": "http", "method": "GET", "path": f"/v1/streams/{topic}/events",
                     "query_string": b"", "headers": headers}
            coro = stream.serve(relay, Request(scope), topic, conn.receive, conn.send)
        conn.task = asyncio.ensure_future(self._guarded(browser, coro))

    async def _guarded(self, browser: Browser, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  a stream task that raised: a violation
            self.errors.append(Violation("error", browser.name, ",".join(browser.topics),
                                         f"{type(exc).__name__}: {exc}"))

    def move(self, b: int) -> None:
        """The browser comes back (at once) to the relay whose feed is furthest behind on its
        topic: the worst a balancer can do."""
        topic = self.browsers[b].topics[0]

        def read_to(r: int) -> int:
            t = self.relays[r].hub.topics.get(topic)
            return ids.from_redis(t.read_from) if t is not None and t.primed else 1 << 128

        behind = min(range(len(self.relays)), key=lambda r: (read_to(r), self.rnd.random()))
        self.connect(b, behind, self.rnd.random() < 0.2)

    def drop(self, b: int) -> None:
        conn = self.browsers[b].conn
        if conn is not None and not conn.gone:
            self.trace.append(f"drop {self.browsers[b].name}")
            conn.drop(self.rnd)

    def release(self, b: int) -> None:
        conn = self.browsers[b].conn
        if conn is not None:
            conn.release()

    def reload(self, b: int) -> None:
        """The page is reloaded: a new EventSource, with no id; nothing before is owed."""
        browser = self.browsers[b]
        self.drop(b)
        browser.last_event_id = ""
        browser.gen += 1
        self.trace.append(f"reload {browser.name}")

    # -- the end ---------------------------------------------------------------------------

    async def quiesce(self, rounds: int = 40) -> None:
        """Feeds read to the end, checks run, slow clients read, browsers reconnect, until
        nothing moves."""
        for n in range(rounds):
            before = (self.received, self.time)
            moved = False
            for r, relay in enumerate(self.relays):
                reading = self.reading[r]
                if reading is not None and not reading.done():
                    moved = True
                    continue
                watched = _watched(relay)
                reply = self.redis.do_xread(watched, count=100) if watched else None
                if reply:
                    moved = True
                    await self.absorb(r, reply)
                relay.verify_soon()
                relay.hub.tick()
            for i, browser in enumerate(self.browsers):
                conn = browser.conn
                if conn is None or conn.over:
                    self.connect(i, (i + n) % len(self.relays), False)
                    moved = True
                elif conn.slow or conn.buffer:
                    conn.release()
            await self.settle(60)
            if not moved and before == (self.received, self.time):
                return

    async def finish(self) -> list[Violation]:
        for browser in self.browsers:
            if browser.conn is not None:
                browser.conn.release()
        await self.quiesce()
        # what a browser waits for in vain now is a stall (a last event would turn it into
        # a jump over it)
        stalls = [v for v in check(self) if v.kind == "stall"]
        for topic in TOPICS:  # a last event on each topic: every browser must get it
            self.publish(topic, 1)
        await self.quiesce()
        violations = check(self)
        violations += [v for v in stalls if v not in violations]
        await self.stop()
        return violations


def _watched(relay: Relay) -> dict[bytes, bytes]:
    """What a relay's feed reads: its hot topics (the blocking XREAD) and its cold ones (the
    cold watch reads each from 0-0 when it is written: ``relay.node.feed.cold``)."""
    watched = relay.hub.watched()
    for key, topic in relay.hub.cold.items():
        watched.setdefault(key, topic.read_from)
    return watched


# -- the checker -------------------------------------------------------------------------------


def check(world: World) -> list[Violation]:
    out = list(world.errors)
    for browser in world.browsers:
        for gen in range(browser.gen + 1):
            records = [r for r in browser.records if r.gen == gen]
            for topic in browser.topics:
                out += _check_topic(world, browser, topic,
                                    [r for r in records if r.topic == topic],
                                    connected=gen == browser.gen)
            for r in records:
                if r.topic not in browser.topics:
                    out.append(Violation("unknown-id", browser.name, r.topic,
                                         f"a {r.kind} of no topic of its own: {r}"))
    return out


def _check_topic(world: World, browser: Browser, topic: str, records: list[Record], *,
                 connected: bool) -> list[Violation]:
    out: list[Violation] = []
    truth = world.published[topic]
    got: set[str] = {r.token for r in records if r.kind == "event"}
    prev: int | None = None  # the id the browser has (an event's, a reset's, a position's)
    # when the browser's unbroken run of positions began (its anchor, or the last reset or
    # position the relay named): an entry gone before it is no gap of this run (the relay
    # named positions in the stream as it was then; an entry deleted before the browser was
    # subscribed was never owed to it)
    since: int | None = None
    had_at = 0  # when the browser came to have ``prev``
    anchor: int | None = None  # world time it was subscribed without an id
    seen: set[str] = set()

    def v(kind: str, detail: str) -> None:
        out.append(Violation(kind, browser.name, topic, detail))

    def gap(upto: int, inclusive: bool, at: int, what: str) -> None:
        """Events the browser was owed between where it was and ``upto``, not received."""
        if prev is None and anchor is None:
            return
        for p in truth:
            if p.token in got or p.phantom or not p.existed_before(at):
                continue
            if prev is not None and p.key <= prev and p.at <= had_at:
                continue  # (one published after it, below it: the stream went back)
            if since is not None and not p.alive_since(since):
                continue
            if prev is None and anchor is not None and p.at <= anchor:
                continue
            if p.key > upto or (p.key == upto and not inclusive):
                continue
            kind = "lost" if p.alive_at(at) else "silent-gap"
            v(kind, f"{ids.format(p.key)} ({p.token}) skipped: from "
                    f"{ids.format(prev) if prev is not None else 'its start'} to {what}")

    for r in records:
        if r.kind == "anchor":
            if prev is None and (anchor is None or "re-anchor" in world.gates):
                anchor = since = r.at
            continue
        if r.kind == "position":
            gap(r.key, True, r.at, f"a position {ids.format(r.key)}")
            if prev is not None and r.key < prev:
                v("out-of-order", f"position {ids.format(r.key)} below {ids.format(prev)}")
            if prev is None or r.key != prev:
                prev, since, had_at = r.key, r.at, r.at
            continue
        if r.kind == "reset":
            if prev is not None and r.key < prev:
                if r.reason != "unknown":
                    v("out-of-order", f"{r.reason} reset {ids.format(r.key)} below "
                                      f"{ids.format(prev)}")
                seen.clear()  # the stream went back: what it holds again may come again
            prev, since, had_at = r.key, r.at, r.at
            anchor = None
            continue
        p = world.tokens.get(r.token)
        if p is None or p.topic != topic or p.key != r.key:
            v("unknown-id", f"event {ids.format(r.key) if r.key >= 0 else '?'} {r.token!r}: "
                            "no stream life had it")
            continue
        if r.token in seen:
            v("duplicate", f"{ids.format(r.key)} ({r.token}) again")
            continue
        seen.add(r.token)
        if prev is not None and r.key <= prev:
            v("out-of-order", f"{ids.format(r.key)} ({r.token}) after {ids.format(prev)}")
            continue
        gap(r.key, False, r.at, f"{ids.format(r.key)} ({r.token})")
        prev, had_at = r.key, r.at
    if connected and (prev is not None or anchor is not None):
        for p in truth:
            if p.token in got or p.phantom or not p.alive_now():
                continue
            if (prev is not None and (p.key > prev or p.at > had_at)) or (
                    prev is None and anchor is not None and p.at > anchor):
                v("stall", f"{ids.format(p.key)} ({p.token}) exists and never came "
                           f"(it has {ids.format(prev) if prev is not None else 'nothing'})")
    return out


# -- running one case --------------------------------------------------------------------------

Action = tuple[Any, ...]


async def run_actions(world: World, actions: list[Action]) -> list[Violation]:
    await world.start()
    try:
        for action in actions:
            await do(world, action)
            extra = action[1] if action[0] == "settle" else 0
            await world.settle(world.rnd.randrange(6) + extra)
        return await world.finish()
    finally:
        if world._saved_request is not None:
            web_client.request = world._saved_request
            history._FIRST_BATCH = world._saved_batch


async def do(world: World, action: Action) -> None:
    """One action (they come before ``world.settle``, which lets the loop run)."""
    name, *args = action
    nr = len(world.relays)
    nb = len(world.browsers)
    if name == "publish":
        topic, n, maxlen = args
        world.publish(TOPICS[topic], n, maxlen)
    elif name == "trim":
        topic, keep, approximate = args
        world.trim(TOPICS[topic], keep, approximate)
    elif name == "recreate":
        topic, n, lower = args
        await world.recreate(TOPICS[topic], n, lower)
    elif name == "failover":
        world.failover(args[0])
    elif name == "read":
        r, count, delay = args
        world.read(r % nr, count, delay)
    elif name == "verify":
        world.verify(args[0] % nr)
    elif name == "expire":
        world.expire(args[0] % nr)
    elif name == "overflow":
        world.overflow(args[0] % nr, args[1])
    elif name == "tick":
        world.tick(args[0] % nr)
    elif name == "connect":
        b, r, slow = args
        world.connect(b % nb, r % nr, slow)
    elif name == "drop":
        world.drop(args[0] % nb)
    elif name == "move":
        world.move(args[0] % nb)
    elif name == "release":
        world.release(args[0] % nb)
    elif name == "reload":
        world.reload(args[0] % nb)
    elif name == "settle":
        pass  # the loop runs args[0] more turns (run_actions)
    else:
        raise ValueError(name)


DEFAULT_BROWSERS: list[tuple[str, ...]] = [("t0",), ("t0",), ("t1",), ("t0", "t1")]


class Starved(BaseException):
    """The event loop did not get control back: a task loops without awaiting anything."""


def _starved(signum: int, frame: Any) -> None:
    raise Starved


WATCHDOG_S = 10.0  # a case takes milliseconds; one this long has a task that never yields


def run(actions: list[Action], *, seed: int = 0, relays: list[RelayConfig] | None = None,
        browsers: list[tuple[str, ...]] | None = None, **world_args: Any) -> World:
    """Run a case; raises ``ModelViolation`` naming every violation found. A case whose loop
    is starved (a stream task that loops without awaiting) is a ``stall`` of everyone."""
    world = World(random.Random(seed), relays or [RelayConfig(4, True, 3600),
                                                  RelayConfig(5, False, 0)],
                  browsers or DEFAULT_BROWSERS, **world_args)
    saved = signal.signal(signal.SIGALRM, _starved)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    compact = ring_mod._COMPACT_MIN
    ring_mod._COMPACT_MIN = 1  # rings drop their dead frames at once: a read below the
    # tail gets nothing right
    try:
        violations = asyncio.run(run_actions(world, actions))
    except Starved:
        violations = [Violation("stall", "*", "*", f"the event loop was not given back for "
                                                   f"{WATCHDOG_S:.0f} s: a task loops "
                                                   "without awaiting")]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved)
        ring_mod._COMPACT_MIN = compact
        web_client.request = world._saved_request or web_client.request
        history._FIRST_BATCH = world._saved_batch
    if violations:
        raise ModelViolation(violations, world.trace)
    return world


Hook = Callable[[World], None]


# -- what hypothesis draws ---------------------------------------------------------------------


def strategies() -> Any:
    """Cases for ``run_case``: actions, relay configs, a seed, the edge. Swarm testing:
    each case draws which kinds of fault it has, so that a case with many trims, or many
    drops, is as likely as any."""
    from hypothesis import strategies as st

    topic = st.integers(0, 1)
    relay = st.integers(0, 2)
    browser = st.integers(0, 3)
    kinds = {
        "publish": st.tuples(st.just("publish"), topic, st.integers(1, 5),
                             st.one_of(st.none(), st.integers(1, 8))),
        "read": st.tuples(st.just("read"), relay, st.integers(1, 6), st.integers(0, 3)),
        "connect": st.tuples(st.just("connect"), browser, relay, st.booleans()),
        "settle": st.tuples(st.just("settle"), st.integers(0, 30)),
        "move": st.tuples(st.just("move"), browser),
        "trim": st.tuples(st.just("trim"), topic, st.integers(0, 4), st.booleans()),
        "recreate": st.tuples(st.just("recreate"), topic, st.integers(0, 3), st.booleans()),
        "failover": st.tuples(st.just("failover"), st.integers(1, 4)),
        "verify": st.tuples(st.just("verify"), relay),
        "expire": st.tuples(st.just("expire"), relay),
        "overflow": st.tuples(st.just("overflow"), relay, st.integers(0, 7)),
        "tick": st.tuples(st.just("tick"), relay),
        "drop": st.tuples(st.just("drop"), browser),
        "release": st.tuples(st.just("release"), browser),
        "reload": st.tuples(st.just("reload"), browser),
    }
    # every case publishes, reads, connects (and moves) and lets time pass, more often than
    # it has any fault
    core = ["publish", "publish", "read", "read", "read", "connect", "connect", "move",
            "settle"]
    faults = sorted(set(kinds) - set(core))
    actions = st.sets(st.sampled_from(faults), min_size=1, max_size=5).flatmap(
        lambda chosen: st.lists(st.sampled_from(core + sorted(chosen)).flatmap(lambda k: kinds[k]),
                                min_size=12, max_size=45))
    configs = st.lists(st.builds(RelayConfig, st.integers(3, 6), st.booleans(),
                                 st.sampled_from([0, 3600])), min_size=2, max_size=3)
    # the edge: (fails, answers stale) of its answers; one that never fails and always has
    # a stale answer is the worst for a catch-up
    edge = st.sampled_from([(0.1, 0.4), (0.0, 1.0), (0.3, 0.2)])
    return st.tuples(actions, configs, st.integers(0, 2**32 - 1), edge)


Case = tuple[list[Action], list[RelayConfig], int, tuple[float, float]]


def run_case(case: Case, gates: frozenset[str]) -> World:
    """``run`` of what ``strategies`` drew."""
    actions, relays, seed, (fail, stale) = case
    return run(actions, seed=seed, relays=relays, gates=gates, edge_fail=fail,
               edge_stale=stale)
