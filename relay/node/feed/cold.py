"""Cold topics on one Redis: topics never written, watched at no cost to the written ones.

A stream on a topic whose Redis stream does not exist would add its key to the feed's one
blocking XREAD, which Redis takes in whole at every call (0.1 ms for 10 keys, 19 ms for
10,000: docs/ARCHITECTURE.md), and every change to the set re-sends it. Such a topic is
*cold* (``topics.Hub``): it stays out of that XREAD and is watched by key tracking, the way
the cluster feed watches every key (``cluster``):

- a *listener* (RESP2, ``SUBSCRIBE __redis__:invalidate``) is sent a tracked key's name at its
  first write after a read;
- a *reader* with ``CLIENT TRACKING ON REDIRECT <listener>`` reads each new cold key once,
  without blocking, from 0-0; that read tracks the key (Redis tracks keys that do not exist).
  When the listener names it, the reader reads it again.

Redis runs commands one at a time: a write lands before the read (its entries are in the
reply: the read is from 0-0, so an XADD between priming and this read is not missed) or after
it (its key's name follows). A cold key costs one short XREAD when it is made and nothing
after; the cold set changing costs the hot XREAD nothing. What is read goes to
``FeedBase.absorb_written``, which delivers it and promotes the topic: the blocking XREAD reads
it on from the last id read. Tracking lives on a connection: after a reconnect every cold key
is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from relay.node.feed import tracking
from relay.node.feed.base import FeedBase, reconnect_backoff
from relay.storage import clients
from relay.storage import streams as store
from relay.storage.clients import still_wanted

log = logging.getLogger("ssedge.feed")

# keys per XREAD of the reader: a reconnect reads every cold key again, in commands of this
# many (pipelined), so that no one command makes Redis stop for long
_KEYS_PER_READ = 500


class ColdWatch:
    """The cold topics of one Redis (``url``): a listener and a tracking reader."""

    def __init__(self, feed: FeedBase, url: str) -> None:
        self._feed = feed
        # the listener waits without a timeout (nothing may come for hours); the reader's
        # PINGs, sent when nothing happens for a block, find a Redis that went away
        self._listen_pool = ConnectionPool.from_url(
            url, protocol=2, socket_timeout=None, socket_connect_timeout=2.0,
            connection_class=clients.Connection)
        self._read_pool = ConnectionPool.from_url(
            url, protocol=2, socket_timeout=feed.block_ms / 1000 + 10,
            socket_connect_timeout=2.0, connection_class=clients.Connection)
        self._dirty: set[bytes] = set()
        self._wake = asyncio.Event()
        self._conns: list[AbstractConnection] = []
        self.connected = False
        # connected once and cut since: Redis went away (what the feed's readiness hears at
        # once); not set before the first connection, which may come a moment after the feed's
        self.lost = False

    def mark(self, keys: Iterable[bytes]) -> None:
        """Have these cold keys read (and so tracked) soon."""
        self._dirty.update(keys)
        self._wake.set()

    async def run(self) -> None:
        """Watch for ever, reconnecting with the feed's backoff; raises only when cancelled."""
        backoff = reconnect_backoff()
        while True:
            try:
                await self._watch(backoff.reset)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.connected:
                    log.warning("cold-topic watch lost Redis: %s; reconnecting", exc)
            finally:
                self.lost = self.lost or self.connected
                self.connected = False
                await self._disconnect()
            await backoff.wait()

    async def close(self) -> None:
        await self._disconnect()
        await self._listen_pool.aclose()
        await self._read_pool.aclose()

    async def _disconnect(self) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    def _connection(self, pool: ConnectionPool) -> AbstractConnection:
        conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        self._conns.append(conn)
        return conn

    async def _watch(self, connected: Any) -> None:
        listener = self._connection(self._listen_pool)
        reader = self._connection(self._read_pool)
        await tracking.track(listener, reader)
        self.connected = True
        self.lost = False
        connected()
        self.mark(self._feed.hub.cold)  # tracking is per connection: every key again
        await tracking.together(self._listen(listener), self._read(reader))

    async def _listen(self, conn: AbstractConnection) -> None:
        """Names of tracked keys that were written, as they come."""
        cold = self._feed.hub.cold
        while True:
            message = await conn.read_response()
            if not isinstance(message, list) or len(message) < 3 or message[0] != b"message":
                continue
            keys = message[2]
            self.mark(cold if keys is None else (k for k in keys if k in cold))  # None: FLUSHALL

    async def _read(self, conn: AbstractConnection) -> None:
        feed = self._feed
        task = asyncio.current_task()
        assert task is not None
        while True:
            still_wanted(task)
            if not self._dirty:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), feed.block_ms / 1000)
                except TimeoutError:
                    await conn.send_command("PING")
                    await conn.read_response()
                    continue
            cold = feed.hub.cold
            keys = [k for k in self._dirty if k in cold]  # a promoted or forgotten one: not here
            self._dirty = set()
            for start in range(0, len(keys), _KEYS_PER_READ):
                await self._read_keys(conn, keys[start:start + _KEYS_PER_READ])

    async def _read_keys(self, conn: AbstractConnection, keys: list[bytes]) -> None:
        feed = self._feed
        cold = feed.hub.cold
        keys = [k for k in keys if k in cold]
        if not keys:
            return
        await conn.send_command("XREAD", "COUNT", feed.read_count, "STREAMS", *keys,
                                *(cold[k].read_from for k in keys))
        reply = await conn.read_response()
        feed.metrics.cold_reads += 1
        if reply:
            read = store.entries_of(reply)
            await feed.absorb_written(read)
            for key, entries in read:
                if len(entries) >= feed.read_count and key in cold:
                    self._dirty.add(key)  # not promoted (a trimmed read?): more to read
