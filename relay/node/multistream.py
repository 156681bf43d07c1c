"""One event stream on several topics: ``GET /v1/streams/events?topic=a&topic=b…``.

A browser over HTTP/1.1 holds six connections per origin; a page that follows eight topics
takes one stream for all of them. The stream is a set of per-topic cursors (``Cursor``, a
``Subscription`` of its topic) into the same rings every one-topic stream reads, registered,
fanned out to and swept like any other; ``relay.protocol.multi`` builds the ids that resume
every topic exactly (``relay.protocol.composite``).

The same steps as ``relay.node.stream.serve``, per topic and all at once:

1. the set, each private topic's token, the start (``Last-Event-ID`` as a composite id, or
   ``since``/``backfill`` for topics it does not hold) are checked: anything that can never be
   served is a 400/401/403 naming why; a refusal that can pass is ``stream.refuse``'s 200;
2. every topic is primed; an id past what this node has read is checked (``check_future``);
3. every cursor is planned and registered in one synchronous step (``resume.plan``), before
   the first byte; the first bytes are ``retry:``, any ``unknown`` resets, and a frame that
   sets the browser's id to every topic's start (``MultiReader.start_frame``);
4. the task serves the topics in turn (a history page, or one send of ring frames each), and
   parks every cursor when none has anything: the feed then sends each topic's new frames
   with this client's ids (``relay.node.fanout``) without waking it.

Only one writer builds a connection's ids: while its task runs (``MultiReader.awake``), the
feed hands the cursors back to it instead of sending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl

from redis.exceptions import RedisError

from relay.node import fanout, stream
from relay.node.metrics import Metrics
from relay.node.relay import Relay
from relay.node.topics import Subscription, TooManyTopics, Topic
from relay.protocol import composite, resume
from relay.protocol.composite import BadSet, CompositeId, TopicSet
from relay.protocol.multi import MultiReader
from relay.web.auth import Access, Authority
from relay.web.errors import BadRequest, Unavailable
from relay.web.http import Receive, Request, Send

PATH = "/v1/streams/events"


def wanted(request: Request) -> bool:
    """Whether a request for ``/v1/streams/events`` is this stream (it names a topic) rather
    than the metadata of a topic named ``events``."""
    return "topic" in request.query


class Connection:
    """One stream on several topics: its cursors, its task, and what wakes the task."""

    __slots__ = ("cursors", "multi", "task", "waiter")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.cursors: list[Cursor] = []
        self.multi: MultiReader | None = None
        self.waiter: asyncio.Future[None] | None = None  # set while every cursor is parked

    @property
    def closed_because(self) -> str | None:
        return self.cursors[0].closed_because if self.cursors else None

    def wake(self) -> None:
        if self.multi is not None:
            self.multi.awake = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self, reason: str) -> None:
        """Stop from inside its own task."""
        for cursor in self.cursors:
            if cursor.closed_because is None:
                cursor.closed_because = reason
            cursor.waiter = None

    def close(self, reason: str) -> None:
        """Stop from the outside (disconnect, overflow, drain, a topic that went back, ...):
        whichever cursor is closed, the whole stream ends; the client resumes every topic."""
        if self.closed_because is None:
            self.end(reason)
            if self.task is not None:
                self.task.cancel()

    def park(self) -> asyncio.Future[None]:
        """The future the task awaits until a cursor is resumed. Each cursor not in its
        topic's parked list (it was resumed) is listed again, with a future of its own: a
        shared one, resolved through one topic, would leave the others listed as done."""
        loop = asyncio.get_running_loop()
        for cursor in self.cursors:
            if cursor.waiter is None:
                cursor.waiter = loop.create_future()
                cursor.topic.parked.append(cursor)
        assert self.multi is not None
        self.multi.awake = False
        self.waiter = loop.create_future()
        return self.waiter


class Cursor(Subscription):
    """A connection's place in one of its topics: resumed, it wakes the connection's task;
    closed, it closes the connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection, topic: Topic, cursor: int, last_id: int) -> None:
        super().__init__(topic, cursor, conn.task, last_id)
        self.conn = conn

    def resume(self, pending: Awaitable[None] | None = None) -> None:
        super().resume(pending)
        self.conn.wake()

    def close(self, reason: str) -> None:
        self.conn.close(reason)


# topics primed at once for streams on several topics, in this process: one stream names up to
# 64 topics, and a crowd of them connecting together would prime every topic at once; more
# commands in flight than the Redis pool holds (50) fail, and each failure refuses a stream
PRIMING = 16


class MultiStreams:
    """This process's streams on several topics: their metrics, and how many topics they
    prime at once."""

    def __init__(self, metrics: Metrics) -> None:
        self.open = 0
        self.cursors = 0
        self.priming = asyncio.Semaphore(PRIMING)
        metrics.gauge("multi_streams_open", "Streams on several topics open now.",
                      lambda: self.open)
        metrics.gauge("multi_stream_cursors", "Their topics (one cursor each), summed.",
                      lambda: self.cursors)


def _topics(request: Request) -> list[str]:
    """Every ``topic=`` of the query, in order (``Request.query`` keeps one value a name)."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    return [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "topic"]


def _request_bytes(request: Request) -> int:
    scope = request.scope
    return len(scope.get("raw_path") or scope["path"].encode()) + 1 + len(
        scope.get("query_string", b""))


def parse_set(request: Request, limit: int) -> TopicSet:
    try:
        return TopicSet.parse(_topics(request), limit, _request_bytes(request))
    except BadSet as exc:
        raise BadRequest(str(exc)) from None


def parse_start(request: Request, ring_events: int) -> tuple[CompositeId | None, stream.Start]:
    """The composite id it resumes from (``Last-Event-ID``, else ``last_event_id``), and
    ``since``/``backfill`` for the topics that id does not hold."""
    text = stream.last_event_id(request)
    position = None
    if text:
        try:
            position = composite.parse(text)
        except BadSet as exc:
            raise BadRequest(f"Last-Event-ID: {exc}") from None
    earliest, backfill = stream.parse_since(request, ring_events)
    return position, stream.Start(None, earliest, backfill)


async def serve(relay: Relay, streams: MultiStreams, authority: Authority, request: Request,
                receive: Receive, send: Send) -> None:
    """Serve one stream on several topics (the checks before it come in the order of a
    one-topic stream's: the names, then the tokens, then the rest)."""
    settings = relay.settings
    topic_set = parse_set(request, settings.max_stream_topics)
    accesses: list[Access] = []
    for name in topic_set.topics:  # each private topic against the token, named when refused
        try:
            accesses.append(await authority.read_access(request, name))
        except Unavailable as exc:  # the keys could not be had now (JWKS away)
            return await stream.refuse(relay, send, "keys", exc.message, request)
    for access in accesses:  # a revoked token is refused for good (relay.node.revocation)
        relay.orders.check(access.jti, access.subject)
    position, start = parse_start(request, settings.ring_events)
    away = stream.turned_away(relay)
    if away is not None:
        return await stream.refuse(relay, send, *away, request)
    topics: list[Topic] = []
    try:
        for name in topic_set.topics:
            topics.append(relay.hub.get(name))
    except TooManyTopics:
        _release(topics)
        return await stream.refuse(relay, send, "topics",
                                   "this relay watches as many topics as it may", request)
    afters = topic_set.positions(position)
    held = list(afters)
    resets: list[tuple[int, bytes]] = []
    waiting: set[int] = set()  # topics whose replica is behind the client (relay.node.replica)
    try:
        for topic in topics:
            if not topic.primed:
                async with streams.priming:
                    await relay.feed.prime(topic)
        for i, (topic, after) in enumerate(zip(topics, afters, strict=True)):
            if after is not None and after > topic.ring.last_id:
                afters[i], frame, wait = await stream.check_future(relay, topic.name, after)
                if frame:
                    resets.append((i, frame))
                if wait:
                    waiting.add(i)
    except (RedisError, OSError):
        _release(topics)
        return await stream.refuse(relay, send, "redis", "Redis is not reachable", request)
    full = next((topic.refused for topic in topics if topic.refused), "")
    if full:
        _release(topics)
        return await stream.refuse(relay, send, "topics", stream.FULL[full], request)
    if not all(stream.attached(relay, topic) for topic in topics):
        # a topic was forgotten or expired during the awaits: it would never be fed. The
        # client is asked to come back at once (it resumes every topic from its id)
        _release(topics)
        return await stream.refuse(relay, send, "topics", "a topic is being read again",
                                   request)

    # -- register and fix every cursor: one synchronous step ------------------------------
    conn = Connection(asyncio.current_task())
    now = time.monotonic()
    for i, (topic, after) in enumerate(zip(topics, afters, strict=True)):
        plan = resume.plan(topic.ring, after, earliest=start.earliest, backfill=start.backfill)
        cursor = Cursor(conn, topic, plan.cursor, plan.last_id)
        cursor.catch_up = plan.catch_up()
        if plan.reset:
            resets.append((i, plan.reset))
        conn.cursors.append(cursor)
        relay.hub.subscribe(topic, cursor)
        if i in waiting:
            relay.replica_waits.add(cursor, plan.last_id, now)
    multi = conn.multi = MultiReader(topic_set, conn.cursors)
    multi.wake = conn.wake
    for cursor in conn.cursors:
        cursor.multi = multi
    for i, _ in resets:
        multi.hold(i, held[i] or 0)
    first = b"".join(multi.retag_reset(i, frame) for i, frame in resets) + multi.start_frame()
    await _run(relay, streams, conn, accesses, first, request, receive, send)


def _release(topics: list[Topic]) -> None:
    """Topics got for a stream that was then refused: let them expire like any unwatched."""
    now = time.monotonic()
    for topic in topics:
        if not topic.subscribers and topic.idle_since is None:
            topic.idle_since = now


async def _run(relay: Relay, streams: MultiStreams, conn: Connection, accesses: list[Access],
               first: bytes, request: Request, receive: Receive, send: Send) -> None:
    streams.open += 1
    streams.cursors += len(conn.cursors)
    # one token for every private topic of the set: its expiry ends the whole stream
    ends = [a.expires for a in accesses if a.expires is not None]
    exps = [a.token_exp for a in accesses if a.token_exp is not None]
    try:
        # one token for all: a stream of several private topics is found by it too
        identity = next(((a.jti, a.subject) for a in accesses if a.private), (None, None))
        with stream.Lifetime(relay, receive, conn.cursors, expires=min(ends, default=None),
                             token_exp=min(exps, default=None), identity=identity):
            await stream.begin(relay, request, send, first, conn.cursors)
            relay.metrics.catchups += sum(c.catch_up is not None for c in conn.cursors)
            await _follow(relay, conn, send)
    finally:
        streams.open -= 1
        streams.cursors -= len(conn.cursors)
    await stream.end(relay, send, conn.closed_because, notice=conn.cursors[0].notice)


async def _follow(relay: Relay, conn: Connection, send: Send) -> None:
    """Serve the topics in turn, one history page or one send of ring frames each, so that a
    topic catching up does not hold the others back; park when none has anything."""
    multi = conn.multi
    assert multi is not None
    cursors = conn.cursors
    hub = relay.hub
    metrics = relay.metrics
    send_max = relay.send_bytes
    ticks = hub.ticks
    turn = 0
    count = len(cursors)
    while conn.closed_because is None:
        pending = _pending(cursors)
        if pending is not None:  # the feed sent frames the client has not taken yet
            await pending
            continue
        if multi.outbox:  # frames the feed built for it, not flushed yet: they come first
            body = multi.take_outbox()
            await fanout.write(send, body, send_max)
            metrics.sends += 1
            continue
        for k in range(count):
            i = (turn + k) % count
            cursor = cursors[i]
            if cursor.catch_up is not None:
                await _catch_up(relay, conn, i, send)
                break
            chunk, n = multi.ring_chunk(i, cursor.topic.ring, send_max)
            if chunk:
                ticks = hub.ticks  # data is as good as a keep-alive
                await fanout.write(send, chunk, send_max)
                metrics.events_out += n
                metrics.sends += 1
                metrics.bytes_out += len(chunk)
                break
            if cursor.catch_up is not None:
                metrics.resumes += 1  # fell behind the ring's tail: catch up in place
                break
        else:
            notice = _notice(cursors)
            if notice:  # between two frames, never inside one
                await send({"type": "http.response.body", "body": notice, "more_body": True})
            elif ticks != hub.ticks:
                ticks = hub.ticks
                await send({"type": "http.response.body", "body": stream.KEEPALIVE,
                            "more_body": True})
                metrics.heartbeats += 1
            else:
                try:
                    await conn.park()
                finally:
                    multi.awake = True
            continue
        turn = i + 1


def _pending(cursors: list[Cursor]) -> Any:
    for cursor in cursors:
        pending = cursor.pending
        if pending is not None:
            cursor.pending = None
            return pending
    return None


def _notice(cursors: list[Cursor]) -> bytes:
    for cursor in cursors:
        if cursor.notice:
            notice, cursor.notice = cursor.notice, b""
            return notice
    return b""


async def _catch_up(relay: Relay, conn: Connection, i: int, send: Send) -> None:
    """One history page of topic ``i`` (``resume.CatchUp``, as ``stream._catch_up`` reads
    them), re-framed with the connection's ids."""
    multi = conn.multi
    assert multi is not None
    cursor = conn.cursors[i]
    catch_up = cursor.catch_up
    assert catch_up is not None
    metrics = relay.metrics
    fresh = catch_up.fresh
    try:
        page = await relay.replayer.page(cursor.topic.name, catch_up.after, fresh=fresh)
    except (RedisError, OSError):
        conn.end("history unavailable")  # the client retries by id later
        return
    resets = catch_up.resets
    frames = multi.page_frames(i, page, fresh=fresh)
    metrics.resets += catch_up.resets - resets
    for chunk, count in stream.pieces(frames, relay.send_bytes):
        cursor.sending = True
        await fanout.write(send, chunk, relay.send_bytes)
        cursor.sending = False
        cursor.sends += 1
        metrics.events_out += count
        metrics.sends += 1
        metrics.bytes_out += len(chunk)
    if catch_up.rewound:
        # the topic's stream holds less than this node's ring: it went back (rule 6). End the
        # stream (the client reconnects with its id, every topic resumes) and look now.
        conn.end("rewound")
        relay.verify_soon()
