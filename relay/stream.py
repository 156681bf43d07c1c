"""One event stream: register, note the ring position, catch up, then follow the ring.

The order is the whole point. The subscription is registered and its cursor fixed in one
synchronous step (no await in between), before the first byte goes out; everything after
that cursor reaches the client from the ring. Whatever the client asked for before it
(an id older than the ring, ``since=earliest``) is read from Redis first, up to exactly the
ring's floor, so nothing is missed and nothing is sent twice.

Per wake-up a connection sends everything pending in one write (bounded by
``send_max_bytes``), so the number of syscalls per event falls as load rises. A client that
falls behind the ring's tail, or stays more than ``client_backlog_bytes`` behind (see
``Relay._sweep``), is closed; it reconnects with Last-Event-ID and resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from relay import ids, store
from relay.errors import BadRequest, Unavailable
from relay.http import Receive, Request, Send
from relay.state import Relay
from relay.topics import Subscription, TooManyTopics
from relay.wire import encode_comment, encode_retry

KEEPALIVE = encode_comment("keepalive")
_HISTORY_PAGE = 1000
_STREAM_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-store",
    "x-accel-buffering": "no",
}


@dataclass(frozen=True, slots=True)
class Start:
    """Where a stream starts: after an id, at the oldest retained event, the last N, or live."""

    after: int | None = None
    earliest: bool = False
    backfill: int = 0


def parse_start(request: Request, ring_events: int) -> Start:
    header = request.headers.get("last-event-id", "")
    text = header or request.query.get("last_event_id", "")
    since = request.query.get("since", "now")
    if since not in ("now", "earliest"):
        raise BadRequest("since is 'now' or 'earliest'")
    raw_backfill = request.query.get("backfill", "0")
    if not raw_backfill.isascii() or not raw_backfill.isdigit() or int(raw_backfill) > ring_events:
        raise BadRequest(f"backfill is a whole number from 0 to {ring_events}")
    after = None
    if text:
        try:
            after = ids.parse(text)
        except ValueError as exc:
            raise BadRequest(f"Last-Event-ID: {exc}") from None
    return Start(after, since == "earliest", int(raw_backfill))


async def serve(relay: Relay, request: Request, topic_name: str, receive: Receive,
                send: Send) -> None:
    settings = relay.settings
    start = parse_start(request, settings.ring_events)
    hub = relay.hub
    try:
        topic = hub.get(topic_name)
    except TooManyTopics:
        raise Unavailable("this relay watches as many topics as it may; try another", 5) from None
    try:
        await relay.feed.prime(topic)
    except (RedisError, OSError):
        raise Unavailable("Redis is not reachable", 1) from None

    # -- register and fix the cursor: one synchronous step --------------------------------
    ring = topic.ring
    history_after: int | None = None
    if start.after is not None:
        if ring.covers(start.after):
            cursor = ring.position_after(start.after)
        else:
            history_after, cursor = start.after, ring.position_after(ring.floor)
    elif start.earliest:
        if ring.floor == ids.ZERO:
            cursor = ring.tail
        else:
            history_after, cursor = ids.ZERO, ring.position_after(ring.floor)
    elif start.backfill:
        cursor = max(ring.tail, ring.head - start.backfill)
    else:
        cursor = ring.head
    history_until = ring.floor
    sub = Subscription(topic, cursor, asyncio.current_task())
    hub.subscribe(topic, sub)
    metrics = relay.metrics
    metrics.streams_open += 1
    metrics.streams_total += 1
    watcher = asyncio.ensure_future(_watch_disconnect(receive, sub))
    try:
        await relay.responder.start(send, 200, _STREAM_HEADERS)
        await send({"type": "http.response.body", "body": encode_retry(settings.retry_ms),
                    "more_body": True})
        if history_after is not None:
            await _send_history(relay, sub, history_after, history_until, send)
        await _follow(relay, sub, send)
    except asyncio.CancelledError:
        if sub.closed_because is None:
            raise  # not ours: server shutdown
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        watcher.cancel()
        hub.unsubscribe(sub, time.monotonic())
        metrics.streams_open -= 1
    if sub.closed_because != "disconnect":
        # end the response cleanly so the client reconnects with its Last-Event-ID
        with contextlib.suppress(Exception):  # the client may be gone too
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch_disconnect(receive: Receive, sub: Subscription) -> None:
    # ASGI send() after the client left does not raise: receive() is what tells
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.close("disconnect")


async def _send_history(relay: Relay, sub: Subscription, after: int, until: int,
                        send: Send) -> None:
    """Entries after ``after`` up to ``until`` (the ring's floor when the stream began)."""
    relay.metrics.history_reads += 1
    key = sub.topic.key
    while after < until:
        try:
            entries = await store.range_after(relay.redis, key, after, until, _HISTORY_PAGE)
        except (RedisError, OSError):
            sub.closed_because = "history unavailable"
            return
        if not entries:
            return
        keys, frames, bad = store.frames(entries)
        relay.metrics.invalid_entries += bad
        await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
        relay.metrics.events_out += len(frames)
        relay.metrics.sends += 1
        after = keys[-1]


async def _follow(relay: Relay, sub: Subscription, send: Send) -> None:
    if sub.closed_because is not None:
        return
    topic = sub.topic
    ring = topic.ring
    hub = relay.hub
    metrics = relay.metrics
    send_max = relay.settings.send_max_bytes
    ticks = hub.ticks
    while True:
        cursor = sub.cursor
        if cursor < ring.head:
            if cursor < ring.tail:  # the frames it needs are gone: it resumes by id
                metrics.backlog_drops += 1
                sub.closed_because = "overflow"
                return
            chunk, sub.cursor = ring.read(cursor, send_max)
            ticks = hub.ticks  # data is as good as a keep-alive
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            metrics.events_out += sub.cursor - cursor
            metrics.sends += 1
            metrics.bytes_out += len(chunk)
        elif ticks != hub.ticks:
            ticks = hub.ticks
            await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            metrics.heartbeats += 1
        else:
            await topic.wait()
