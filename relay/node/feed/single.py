"""The feed on one Redis: one connection, one blocking XREAD over every hot topic.

- Topics never written (cold) are not in that XREAD: ``cold.ColdWatch`` watches them on two
  connections of its own and promotes each at its first write.

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

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from relay.node.feed.base import FeedBase, reconnect_backoff
from relay.node.feed.cold import ColdWatch
from relay.node.metrics import Metrics
from relay.node.topics import Hub, Topic
from relay.storage import clients
from relay.storage import streams as store
from relay.storage.clients import still_wanted

log = logging.getLogger("ssedge.feed")

_UNBLOCK_TRIES = 1000  # about 1 ms apart: the XREAD may not have reached Redis yet


class RedisFeed(FeedBase):
    """One Redis: one connection, one blocking XREAD over every hot topic; a ``ColdWatch``
    over the cold ones."""

    def __init__(self, hub: Hub, redis: aioredis.Redis, metrics: Metrics, *, url: str,
                 block_ms: int, read_count: int, send_max: int, retention_maxlen: int = 0,
                 retention_max_age_s: int = 0, check_every: bool = True) -> None:
        super().__init__(hub, redis, metrics, block_ms=block_ms, read_count=read_count,
                         send_max=send_max, retention_maxlen=retention_maxlen,
                         retention_max_age_s=retention_max_age_s, check_every=check_every)
        self._pool = ConnectionPool.from_url(
            url, socket_timeout=block_ms / 1000 + 10, socket_connect_timeout=2.0,
            connection_class=clients.Connection,
        )
        self._conn: AbstractConnection | None = None
        self._client_id: int | None = None
        self._reading_generation = -1  # hub generation of the XREAD in flight
        self._unblocking: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set when there is something to read
        self._connected = False
        self._cold = ColdWatch(self, url)
        self._watching: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """The XREAD's connection up, and the cold watch's not lost: with only cold topics
        that connection idles (a PING a block), and the cold watch's listener is the one that
        hears Redis go at once."""
        return self._connected and not self._cold.lost

    async def prime(self, topic: Topic) -> None:
        primed = topic.primed
        await super().prime(topic)
        if not primed and topic.cold:
            self._cold.mark((topic.key,))

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
        self._watching = asyncio.ensure_future(self._cold.run())
        try:
            await self._run()
        finally:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)

    async def _run(self) -> None:
        backoff = reconnect_backoff()
        while True:
            try:
                await self._connect()
                backoff.reset()
                await self._read_forever()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:  # gone, timed out, or LOADING its AOF
                self._lost(exc)
            await backoff.wait()

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
                self._metrics.feed_keys = 0
                self._idle.clear()
                await conn.send_command("PING")  # keeps "connected" honest while idle
                await conn.read_response()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self._block_ms / 1000)
                continue
            self._reading_generation = generation
            self._metrics.feed_keys = len(watched)
            await conn.send_command(
                "XREAD", "COUNT", self._count, "BLOCK", self._block_ms,
                "STREAMS", *watched.keys(), *watched.values(),
            )
            still_wanted(task)
            reply = await conn.read_response()
            self._reading_generation = -1
            self._metrics.feed_reads += 1
            if reply:
                await self.absorb(store.entries_of(reply))
            else:
                self._metrics.feed_lag_s = 0.0  # a whole block with nothing new: caught up

    async def close(self) -> None:
        if self._unblocking is not None:
            self._unblocking.cancel()
        await self._cold.close()
        if self._conn is not None:
            await self._conn.disconnect()
        await self._pool.aclose()
