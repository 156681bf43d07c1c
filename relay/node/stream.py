"""One event stream: register, note the ring position, catch up, then follow the ring.

The order is the whole point (``relay.protocol.resume``). The subscription is registered and its
cursor fixed in one synchronous step, before the first byte goes out; everything after that
cursor reaches the client from the ring. Whatever the client asked for before it (an id older
than the ring, ``since=earliest``) is read as history pages first, up to exactly the ring's
floor noted at registration, so nothing is missed and nothing is sent twice.

A connection that has sent everything in the ring parks; new frames reach it from the feed
without waking its task (``relay.node.fanout``). When it is awake it sends everything pending in one
write (bounded by ``Relay.send_bytes``), so the number of syscalls per event falls as load
rises. A connection that falls behind the ring's tail catches up the same way from the last id
it sent. One that stays more than ``client_backlog_bytes`` behind (see ``Relay._sweep``) is
closed; it reconnects with Last-Event-ID and resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from relay.backoff import jitter
from relay.node import fanout, renewal, revocation, shared
from relay.node.relay import Relay
from relay.node.topics import Subscription, TooManyTopics, Topic
from relay.protocol import ids, resume
from relay.protocol.deflate import Coding
from relay.protocol.wire import encode_comment, encode_position, encode_retry
from relay.storage import replica
from relay.storage import streams as store
from relay.web.errors import BadRequest
from relay.web.http import Receive, Request, Send

KEEPALIVE = encode_comment("keepalive")
STREAM_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "private, no-store",  # one client's stream: no shared cache keeps it
    "x-accel-buffering": "no",
    "vary": "accept-encoding",  # compressed when asked (relay.node.shared)
}


@dataclass(frozen=True, slots=True)
class Start:
    """Where a stream starts: after an id, at the oldest retained event, the last N, or live."""

    after: int | None = None
    earliest: bool = False
    backfill: int = 0


def parse_start(request: Request, ring_events: int) -> Start:
    after = None
    text = last_event_id(request)
    if text:
        try:
            after = ids.parse(text)
        except ValueError as exc:
            raise BadRequest(f"Last-Event-ID: {exc}") from None
    earliest, backfill = parse_since(request, ring_events)
    return Start(after, earliest, backfill)


def last_event_id(request: Request) -> str:
    """The id a stream resumes after: the header, else the ``last_event_id`` parameter."""
    return request.headers.get("last-event-id", "") or request.query.get("last_event_id", "")


def parse_since(request: Request, ring_events: int) -> tuple[bool, int]:
    """``since=earliest`` and ``backfill=N``: where a stream without an id starts."""
    since = request.query.get("since", "now")
    if since not in ("now", "earliest"):
        raise BadRequest("since is 'now' or 'earliest'")
    raw_backfill = request.query.get("backfill", "0")
    if not raw_backfill.isascii() or not raw_backfill.isdigit() or int(raw_backfill) > ring_events:
        raise BadRequest(f"backfill is a whole number from 0 to {ring_events}")
    return since == "earliest", int(raw_backfill)


async def serve(relay: Relay, request: Request, topic_name: str, receive: Receive,
                send: Send, *, expires: float | None = None,
                token_exp: float | None = None,
                identity: tuple[str | None, str | None] = (None, None)) -> None:
    """Serve one stream; one read with a token is ended when the token ``expires`` (epoch s),
    and told ahead of its ``token_exp`` (``relay.node.renewal``).

    Bad input was refused (4xx) before this is called. A refusal that can pass (draining, at
    capacity, Redis out of reach) is answered by ``refuse``: an EventSource given anything but
    a 200 event stream gives up for good."""
    settings = relay.settings
    start = parse_start(request, settings.ring_events)
    away = turned_away(relay)
    if away is not None:
        return await refuse(relay, send, *away, request)
    hub = relay.hub
    for _ in range(_ATTACH_TRIES):
        try:
            topic = hub.get(topic_name)
        except TooManyTopics:
            return await refuse(relay, send, "topics", FULL["hot"], request)
        after = start.after
        first_frames = b""
        wait_for_replica = False
        try:
            await relay.feed.prime(topic)
            if after is not None and after > topic.ring.last_id:
                # newer than anything this node has read: the stream may just be ahead of
                # this feed (the client came from a faster node), or of this region's
                # replica, or the id never existed here
                after, first_frames, wait_for_replica = await check_future(relay, topic_name,
                                                                           after)
        except (RedisError, OSError):
            if not topic.subscribers:
                topic.idle_since = time.monotonic()
            return await refuse(relay, send, "redis", "Redis is not reachable", request)
        if topic.refused:
            return await refuse(relay, send, "topics", FULL[topic.refused], request)
        if attached(relay, topic):
            break
    else:
        return await refuse(relay, send, "topics", "the topic is being read again", request)

    # -- register and fix the cursor: one synchronous step --------------------------------
    plan = resume.plan(topic.ring, after, earliest=start.earliest, backfill=start.backfill)
    sub = Subscription(topic, plan.cursor, asyncio.current_task(), plan.last_id)
    sub.catch_up = plan.catch_up()
    sub.coding = shared.choose(settings, request)
    hub.subscribe(topic, sub)
    if sub.coding is not None:
        shared.attach(settings, topic)
        relay.metrics.compressed_streams += 1
    if wait_for_replica:
        relay.replica_waits.add(sub, plan.last_id, time.monotonic())
    # the client's position at once: one that drops before any event (a quiet topic)
    # resumes from here, not from "now" again, and misses nothing published while away
    first_frames += plan.reset + encode_position(ids.format(plan.last_id))
    try:
        with Lifetime(relay, receive, (sub,), expires=expires, token_exp=token_exp,
                      identity=identity):
            await begin(relay, request, send, first_frames, (sub,), sub.coding)
            if sub.catch_up is not None:
                relay.metrics.catchups += 1
            await _follow(relay, sub, send)
        await end(relay, send, sub.closed_because, sub.coding, sub.notice)
    finally:
        if sub.coding is not None:
            shared.detach(topic)


class Lifetime:
    """One stream's life around its sends, whatever its topics (``subs``, the first of which
    stands for the stream): counted open; closed when its client leaves (``DisconnectWatch``);
    ended when a token ``expires`` (epoch s: the client comes back with its Last-Event-ID and
    must bring a fresh token; one timer per stream, nothing per event) and told ahead of its
    ``token_exp`` (``relay.node.renewal``); found by its token's ``identity`` (jti, sub) when
    an operator revokes it or disconnects its subject (``relay.node.revocation``). A cancel
    of ours (the stream was closed) ends the body quietly; any other (the server shutting
    down) goes on. Every subscription is let go at the end.

    A class with slots rather than a ``contextlib.contextmanager``: every open stream holds
    one for its whole life, and a generator's frame and its wrapper cost about 580 bytes a
    stream where this costs about 100 (docs/PERFORMANCE.md, "A hundred thousand streams")."""

    __slots__ = ("_expiring", "_expiry", "_identity", "_relay", "_subs", "_watcher")

    def __init__(self, relay: Relay, receive: Receive, subs: Sequence[Subscription], *,
                 expires: float | None, token_exp: float | None,
                 identity: tuple[str | None, str | None] = (None, None)) -> None:
        self._relay = relay
        self._subs = subs
        self._identity = identity
        head = subs[0]
        metrics = relay.metrics
        metrics.streams_open += 1
        metrics.streams_total += 1
        self._watcher = DisconnectWatch(receive, head)
        self._expiry = None if expires is None else asyncio.get_running_loop().call_later(
            max(0.0, expires - time.time()), head.close, "token expired")
        self._expiring = renewal.schedule(head, token_exp, relay.settings.token_refresh_s)
        if identity != (None, None):
            relay.orders.register(head, *identity)

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        try:
            if kind is not None and issubclass(kind, asyncio.CancelledError):
                if self._subs[0].closed_because is None:
                    return False  # not ours: server shutdown
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                return True
            return False
        finally:
            self._release()

    def _release(self) -> None:
        relay = self._relay
        self._watcher.cancel()
        if self._identity != (None, None):
            relay.orders.identities.remove(self._subs[0], *self._identity)
        for timer in (self._expiry, self._expiring):
            if timer is not None:
                timer.cancel()
        now = time.monotonic()
        for sub in self._subs:
            relay.hub.unsubscribe(sub, now)
        relay.metrics.streams_open -= 1


async def begin(relay: Relay, request: Request, send: Send, first: bytes,
                subs: Iterable[Subscription], coding: Coding | None = None) -> None:
    """The 200 event stream's head and first bytes: ``retry:`` (from then on the client is
    subscribed), then ``first`` (resets, a first id). A server whose sends complete at once
    lets the feed send to ``subs`` while they are parked (``relay.node.fanout``). A stream
    sent compressed (``coding``) says so; its first bytes are its own."""
    headers = STREAM_HEADERS
    body = encode_retry(relay.settings.retry_ms) + first
    if coding is not None:
        headers = {**headers, "content-encoding": coding.encoding.value}
        body = coding.own(body)
    await relay.responder.start(send, 200, headers)
    sent = send({"type": "http.response.body", "body": body, "more_body": True})
    if fanout.done_at_once(sent):
        for sub in subs:
            sub.send = send
    await sent
    relay.metrics.first_byte_seconds.observe(time.monotonic() - request.started)


async def end(relay: Relay, send: Send, reason: str | None,
              coding: Coding | None = None, notice: bytes = b"") -> None:
    """End a stream closed for ``reason``: cleanly, so the client reconnects with its
    Last-Event-ID (a compressed stream ends its deflate stream). A drain asks it to come back
    soon (to another node) rather than after the usual retry, and a relay that lost Redis (or
    whose replica stayed behind) spreads its clients' returns like a refusal; a token's expiry
    asks for a quick return too: the page renewed it when told (relay.node.renewal). A stream
    whose token was revoked is told why (``notice``, an ``ssedge.revoked`` event) and asked to
    come back soon: its reconnect gets the 403 that closes an EventSource for good
    (relay.node.revocation)."""
    if reason == "disconnect":
        return
    settings = relay.settings
    last = b""
    if reason in ("drain", "token expired"):
        last = encode_retry(settings.drain_retry_ms)
    elif reason == revocation.CLOSE_REVOKED:
        last = notice + encode_retry(settings.drain_retry_ms)
    elif reason in ("redis lost", "replica behind"):
        last = encode_retry(_spread(settings.refused_retry_ms))
    elif reason == revocation.CLOSE_ORDERED:
        # a whole topic told to go at once must not come back at once
        last = encode_retry(_spread(settings.retry_ms))
    if coding is not None:
        last = coding.finish(last)
    with contextlib.suppress(Exception):  # the client may be gone too
        await send({"type": "http.response.body", "body": last, "more_body": False})


# why a relay that stepped out (``Relay.stepped_out``) refuses streams
_STEPPED_OUT = {"redis": "this relay has lost Redis",
                "replica": "this relay's Redis replica is cut from its primary"}


# why a stream is refused when its topic's table is full (``Hub.mark_primed``)
FULL = {"hot": "this relay watches as many topics as it may",
        "cold": "this relay watches as many topics never written as it may"}


# a topic forgotten while a stream was in its awaits (its stream went back, or it expired)
# is got again and primed afresh; a stream that keeps losing the race is refused (it retries)
_ATTACH_TRIES = 3


def attached(relay: Relay, topic: Topic) -> bool:
    """Whether ``topic`` is still the one this relay feeds: a stream registered on a Topic
    that was forgotten or expired during its awaits would never be fed again."""
    return relay.hub.topics.get(topic.name) is topic and topic.primed


def _spread(ms: int) -> int:
    """A wait of 0.5 to 1.5 times ``ms``: a crowd told to come back does not come together."""
    return max(1, round(jitter(ms)))


def turned_away(relay: Relay) -> tuple[str, str] | None:
    """Why this relay takes no stream now, whatever its topics (the reason and what it means),
    or None: draining, at ``max_streams``, stepped out (Redis lost, the replica cut)."""
    if relay.draining:
        return "draining", "this relay is shutting down"
    if relay.metrics.streams_open >= relay.settings.max_streams:
        return "capacity", f"this relay serves its maximum of {relay.settings.max_streams} streams"
    out = relay.stepped_out
    if out is not None:
        return out, _STEPPED_OUT[out]
    return None


async def refuse(relay: Relay, send: Send, reason: str, why: str,
                 request: Request | None = None) -> None:
    """A stream this relay cannot serve now, answered so that a browser comes back: a 200
    event stream holding only ``retry:`` and a comment, which then ends. By WHATWG, an
    EventSource whose request gets any other answer (a 503, say) closes for good; the clean
    end of a 200 stream makes it reconnect after ``retry`` ms with its Last-Event-ID.

    The wait is spread (0.5 to 1.5 times the setting) so that a thousand refused browsers do
    not come back in the same millisecond. No ``id:`` is sent: the browser's Last-Event-ID
    stays what it was. ``X-Ssedge-Refused`` names the reason: the edge retries another relay
    on it (varnish/default.vcl), operators see it in logs; ``Retry-After`` says the same to
    any other client.

    An edge that can retry only on a status (HAProxy) asks with ``X-Ssedge-Refuse-Status:
    503``: the same answer then says 503, and the edge turns the last one into a 200
    (relay/edge/haproxy/haproxy.cfg). Nothing else changes a refusal's status."""
    settings = relay.settings
    retry = _spread(settings.drain_retry_ms if reason == "draining" else settings.refused_retry_ms)
    relay.metrics.refused(reason)
    relay.refusals.note(reason, why)
    headers = {**STREAM_HEADERS, "x-ssedge-refused": reason,
               "retry-after": str(max(1, round(retry / 1000)))}
    asked = request is not None and request.headers.get("x-ssedge-refuse-status") == "503"
    await relay.responder.start(send, 503 if asked else 200, headers)
    await send({"type": "http.response.body", "more_body": False,
                "body": encode_retry(retry) + encode_comment(f"refused ({reason}): {why}")})


async def check_future(relay: Relay, name: str, after: int) -> tuple[int, bytes, bool]:
    """An id past what this node has read: where to start, the frames to send first, and
    whether the stream waits for the replica (``relay.node.replica``).

    Within the stream as the feed's Redis has it (the client came from a node whose feed is
    ahead of this one), it stays the client's: the frames this feed appends up to it are
    skipped (``resume.Reader``), never sent again. Held by the primary but not yet by the
    replica this node reads (the client came from another region), the same, bounded by
    ``replica_wait_s``. Held by neither, it never existed here: a reset, and the stream goes
    on live from the last id the feed's Redis has. Inside the stream's range but none of its
    entries (another topic's id): a reset, and the stream starts over from 0-0."""
    where, last = await replica.locate(relay.redis, name, after)
    if where is replica.Where.HERE and after != last and not await store.holds(
            relay.redis.read, name, after):
        # inside the stream's range but none of its entries (another topic's id, an earlier
        # life's): told, the client starts the stream over (resume rule 9)
        relay.metrics.resets += 1
        return ids.ZERO, resume.reset_frame("unknown", after, None, ids.ZERO), False
    if where is replica.Where.HERE:
        topic = relay.hub.topics.get(name)
        if topic is not None:
            topic.ahead = max(topic.ahead, after)
        return after, b"", False
    if where is replica.Where.BEHIND:
        return after, b"", True
    relay.metrics.resets += 1
    return last, resume.reset_frame("unknown", after, None, last), False


class DisconnectWatch:
    """Closes the subscription when ``receive()`` says the client left.

    ASGI send() after the client left does not raise: receive() is what tells. A callback on
    the pending receive, not a task per connection: Granian's receive() is a future already
    (one less task and coroutine frame per idle stream); any other awaitable is wrapped in one.
    """

    __slots__ = ("_pending", "_receive", "_sub")

    def __init__(self, receive: Receive, sub: Subscription) -> None:
        self._receive = receive
        self._sub = sub
        self._pending: Any = None
        self._arm()

    def _arm(self) -> None:
        pending: Any = self._receive()
        if not hasattr(pending, "add_done_callback"):
            pending = asyncio.ensure_future(pending)
        self._pending = pending
        pending.add_done_callback(self._done)

    def _done(self, pending: Any) -> None:
        if self._pending is not pending or self._sub.closed_because is not None:
            return
        try:
            message = pending.result()
        except BaseException:  # noqa: BLE001  cancelled, or the receive failed: gone either way
            message = {"type": "http.disconnect"}
        if message["type"] == "http.disconnect":
            self._sub.close("disconnect")
        else:
            self._arm()

    def cancel(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.remove_done_callback(self._done)
            if isinstance(pending, asyncio.Task):
                pending.cancel()


async def _catch_up(relay: Relay, sub: Subscription, send: Send) -> None:
    """History after the last id the client has, up to the ring's floor noted when its cursor
    was fixed (``resume.CatchUp``); sent in pieces of at most ``Relay.send_bytes``, so a page
    of large events is not copied whole per client."""
    catch_up = sub.catch_up
    assert catch_up is not None
    metrics = relay.metrics
    send_max = relay.send_bytes
    began = time.monotonic()
    while sub.catch_up is not None:
        fresh = catch_up.fresh
        try:
            page = await relay.replayer.page(sub.topic.name, catch_up.after, fresh=fresh)
        except (RedisError, OSError):
            sub.closed_because = "history unavailable"  # the client retries by id later
            return
        resets = catch_up.resets
        frames = sub.take_page(page, fresh=fresh)
        metrics.resets += catch_up.resets - resets
        for chunk, count in pieces(frames, send_max):
            sub.sending = True
            chunk = shared.own(sub, chunk)
            await fanout.write(send, chunk, send_max)
            sub.sending = False
            sub.sends += 1
            metrics.events_out += count
            metrics.sends += 1
            metrics.bytes_out += len(chunk)
        if catch_up.rewound:
            # the stream holds less than this node's ring: it went back. End the stream (the
            # client reconnects with its id and starts over) and have the feed look now.
            sub.closed_because = "rewound"
            relay.verify_soon()
            return
    metrics.catchup_seconds.observe(time.monotonic() - began)


def pieces(frames: list[bytes], size: int) -> Iterator[tuple[bytes, int]]:
    """Frames joined into pieces of at most ``size`` bytes, but for a frame larger alone (a
    frame is never split here), and how many frames each; joined one at a time, as sent."""
    start = total = 0
    for i, frame in enumerate(frames):
        if total and total + len(frame) > size:
            yield (frames[start] if i - start == 1 else b"".join(frames[start:i])), i - start
            start, total = i, 0
        total += len(frame)
    if start < len(frames):
        rest = frames[start:]
        yield (rest[0] if len(rest) == 1 else b"".join(rest)), len(rest)


async def _follow(relay: Relay, sub: Subscription, send: Send) -> None:
    topic = sub.topic
    hub = relay.hub
    metrics = relay.metrics
    send_max = relay.send_bytes
    ticks = hub.ticks
    while sub.closed_because is None:
        pending = sub.pending
        if pending is not None:  # the feed sent it frames the client has not taken yet
            sub.pending = None
            await pending
            continue
        if sub.catch_up is not None:
            await _catch_up(relay, sub, send)
            continue
        chunk, count = shared.next_chunk(sub, send_max)
        if chunk:
            ticks = hub.ticks  # data is as good as a keep-alive
            await fanout.write(send, chunk, send_max)
            metrics.events_out += count
            metrics.sends += 1
            metrics.bytes_out += len(chunk)
        elif sub.catch_up is not None:
            metrics.resumes += 1  # fell behind the ring's tail: catch up in place
        elif sub.notice:  # between two frames of the ring, never inside one
            notice, sub.notice = sub.notice, b""
            await send({"type": "http.response.body", "body": shared.own(sub, notice),
                        "more_body": True})
        elif ticks != hub.ticks:
            ticks = hub.ticks
            if shared.beat(sub, ticks):
                continue  # the topic's keep-alive, in its shared bytes
            await send({"type": "http.response.body", "body": shared.own(sub, KEEPALIVE),
                        "more_body": True})
            metrics.heartbeats += 1
        else:
            await topic.park(sub)
