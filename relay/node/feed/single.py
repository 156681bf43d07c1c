"""The feed: one task per relay process reading every watched topic with one blocking XREAD.

Each entry is decoded once and framed once, then appended to its topic's ring, and the new
frames go out to the topic's parked connections in one pass (``relay.fanout``).

- A new topic is *primed* before any client of it is answered: its newest entries are read
  (XREVRANGE) into the ring and its last id noted, and the feed reads on from exactly that id.
  So a stream whose ``retry:`` has been sent misses nothing published after it.
- Topics are added without waiting out the block: the feed's connection is unblocked with
  ``CLIENT UNBLOCK`` from another connection (no reconnect, no wake-up keys in Redis).
- The feed owns one connection with a read timeout above the block time (redis-py's 5 s
  default would cut every long XREAD), and reconnects with capped exponential backoff when
  Redis goes away, resuming each topic from the last id it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from relay.node import fanout
from relay.node.metrics import Metrics
from relay.node.topics import Hub, Topic
from relay.protocol import ids
from relay.storage import streams as store

log = logging.getLogger("ssedge.feed")

_BACKOFF_MIN = 0.05
# at most 1.5 s (with jitter) between tries: after an outage of any length the feed reads on
# within that of Redis answering again (tests/integration/test_redis_restart.py measures it);
# one refused connect a second per process costs Redis nothing
_BACKOFF_MAX = 1.0
_UNBLOCK_TRIES = 1000  # about 1 ms apart: the XREAD may not have reached Redis yet


class FeedBase:
    """What every feed shares: priming a topic and delivering what was read to its ring.

    ``Feed`` reads one Redis; ``relay.cluster_feed.ClusterFeed`` a Redis Cluster."""

    def __init__(self, hub: Hub, redis: Any, metrics: Metrics, *, block_ms: int,
                 read_count: int, send_max: int) -> None:
        self._hub = hub
        self._redis = redis  # shared client: priming (and CLIENT UNBLOCK on one Redis)
        self._metrics = metrics
        self._block_ms = block_ms
        self._count = read_count
        self._send_max = send_max
        self.last_error: str | None = None
        # set to have the streams checked now (``verify``): after a reconnect, or when a
        # catch-up found its stream holding less than the ring
        self.verify_now = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Whether the feed is reading (readiness)."""
        raise NotImplementedError

    def topics_changed(self) -> None:
        """Make the reads in flight include the topics primed since they started."""
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _deliver(self, reply: Any) -> None:
        by_key = self._hub.by_key
        metrics = self._metrics
        newest = 0
        for key, entries in store.entries_of(reply):
            topic = by_key.get(key)
            if topic is None or not entries or not topic.primed:
                continue  # forgotten while the read was in flight
            ring = topic.ring
            if ids.from_redis(entries[0][0]) <= ring.last_id:
                # a topic forgotten and primed again during the read already holds these
                entries = [e for e in entries if ids.from_redis(e[0]) > ring.last_id]
                if not entries:
                    continue
            keys, frames, bad = store.frames(entries)
            ring.extend(keys, frames)
            topic.read_from = entries[-1][0]
            metrics.events_in += len(entries)
            metrics.invalid_entries += bad
            newest = max(newest, ring.last_id)
            fanout.kick(topic, metrics, self._send_max)
        if newest:
            # an entry id's time is Redis's clock when it was added: how long it took to get here
            metrics.feed_lag_s = max(0.0, time.time() - (newest >> 64) / 1000)

    # -- streams that went back -----------------------------------------------------------

    async def verify(self) -> list[Topic]:
        """Watched topics whose stream went back since this process read it.

        XREAD after an id returns nothing for entries below it, so a stream deleted and made
        again, set back with XSETID, or failed over to a replica that missed its newest
        entries would leave this node reading after an id that no longer leads anywhere:
        heartbeats, no events, no reset. A stream went back when its last generated id is
        below what the feed had read before asking, or its ``entries-added`` (which only
        grows) is below what an earlier check saw. "What the feed had read" includes ids that
        clients came with from nodes whose feeds were ahead (``Topic.ahead``): they wait for
        this feed to pass them, which a stream that went back never does."""
        topics = [t for t in self._hub if t.primed]
        if not topics:
            return []
        # what this node knows the stream reached, before asking (no race with new reads)
        read = [max(ids.from_redis(t.read_from), t.ahead) for t in topics]
        heads = await store.heads(self._redis, [t.key for t in topics])
        gone = []
        for topic, had, (last, added) in zip(topics, read, heads, strict=True):
            if self._hub.topics.get(topic.name) is not topic:
                continue  # forgotten meanwhile
            if last < had or added < topic.entries_added:
                gone.append(topic)
            else:
                topic.entries_added = added
        return gone

    # -- priming ----------------------------------------------------------------------------

    async def prime(self, topic: Topic) -> None:
        """Fill a new topic's ring with its newest entries and start reading it; once only,
        shared by every connection that asks at the same time."""
        if topic.primed:
            return
        if topic.priming is None:
            topic.priming = asyncio.ensure_future(self._prime(topic))
        await asyncio.shield(topic.priming)

    async def _prime(self, topic: Topic) -> None:
        try:
            ring = topic.ring
            entries, floor = await store.newest(self._redis, topic.key, ring.max_events)
            keys, frames, bad = store.frames(entries)
            self._metrics.invalid_entries += bad
            ring.prime(keys, frames, floor)
            topic.read_from = ids.format(ring.last_id).encode()
            self._hub.mark_primed(topic)
            self.topics_changed()
        finally:
            topic.priming = None

class Feed(FeedBase):
    """One Redis: one connection, one blocking XREAD over every watched topic."""

    def __init__(self, hub: Hub, redis: aioredis.Redis, metrics: Metrics, *, url: str,
                 block_ms: int, read_count: int, send_max: int) -> None:
        super().__init__(hub, redis, metrics, block_ms=block_ms, read_count=read_count,
                         send_max=send_max)
        self._pool = ConnectionPool.from_url(
            url, socket_timeout=block_ms / 1000 + 10, socket_connect_timeout=2.0
        )
        self._conn: AbstractConnection | None = None
        self._client_id: int | None = None
        self._reading_generation = -1  # hub generation of the XREAD in flight
        self._unblocking: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set when there is something to read
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    # -- waking the blocked read -------------------------------------------------------------

    def topics_changed(self) -> None:
        """Make the XREAD in flight return so the next one includes the new topics."""
        self._idle.set()
        if self._unblocking is None or self._unblocking.done():
            self._unblocking = asyncio.ensure_future(self._unblock())

    async def _unblock(self) -> None:
        """Unblock the XREAD in flight until one that includes every primed topic is.

        Success alone is not the end: a topic primed while CLIENT UNBLOCK was on its way (this
        task still running, so ``topics_changed`` started no other) may be missing from the
        XREAD the feed sends next; it would wait out a whole block (``feed_block_ms``)."""
        for _ in range(_UNBLOCK_TRIES):
            if self._reading_generation >= self._hub.generation or self._client_id is None:
                return
            reading = self._reading_generation
            try:
                unblocked = await self._redis.client_unblock(self._client_id)
            except RedisError:
                return  # the feed's own error handling reconnects; its next read includes all
            if not unblocked or self._reading_generation == reading:
                await asyncio.sleep(0.001)  # not blocked yet, or its reply not read yet

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            try:
                await self._connect()
                backoff = _BACKOFF_MIN
                await self._read_forever()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:  # gone, timed out, or LOADING its AOF
                self._lost(exc)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _lost(self, exc: BaseException) -> None:
        if self._connected:
            log.warning("feed lost Redis: %s; reconnecting", exc)
        self._connected = False
        self.last_error = str(exc) or type(exc).__name__
        self._client_id = None
        self._metrics.redis_reconnects += 1

    async def _connect(self) -> None:
        if self._conn is not None:  # the one that failed
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
            self._conn = None
        conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()  # type: ignore[no-untyped-call]
        await conn.send_command("CLIENT", "ID")
        self._client_id = int(await conn.read_response())
        self._conn = conn
        if not self._connected:
            log.info("feed connected to Redis (client id %s)", self._client_id)
            # a Redis that restarted or failed over may hold less than was read from it
            self.verify_now.set()
        self._connected = True
        self.last_error = None

    async def _read_forever(self) -> None:
        conn = self._conn
        assert conn is not None
        hub = self._hub
        task = asyncio.current_task()
        assert task is not None
        while True:
            still_wanted(task)
            generation = hub.generation
            watched = hub.watched()
            if not watched:
                self._reading_generation = generation  # nothing to unblock: it waits on _idle
                self._idle.clear()
                await conn.send_command("PING")  # keeps "connected" honest while idle
                await conn.read_response()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self._block_ms / 1000)
                continue
            self._reading_generation = generation
            await conn.send_command(
                "XREAD", "COUNT", self._count, "BLOCK", self._block_ms,
                "STREAMS", *watched.keys(), *watched.values(),
            )
            still_wanted(task)
            reply = await conn.read_response()
            self._reading_generation = -1
            self._metrics.feed_reads += 1
            if reply:
                self._deliver(reply)
            else:
                self._metrics.feed_lag_s = 0.0  # a whole block with nothing new: caught up

    async def close(self) -> None:
        if self._unblocking is not None:
            self._unblocking.cancel()
        if self._conn is not None:
            await self._conn.disconnect()
        await self._pool.aclose()


def still_wanted(task: asyncio.Task[Any]) -> None:
    """Raise the cancellation a send swallowed. redis-py sends through ``asyncio.wait_for``,
    which on Python 3.11 drops a cancel that arrives as the send completes: the feed then
    blocked in its next XREAD, and in every one after, and a relay's shutdown waited for it
    for ever (found by tests/integration/test_feed.py)."""
    if task.cancelling():
        raise asyncio.CancelledError
