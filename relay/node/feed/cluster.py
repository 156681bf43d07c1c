"""The feed on a Redis Cluster: one reader per primary node, not one per topic or slot.

Redis Cluster refuses an XREAD whose keys are in different slots (CROSSSLOT), even when one
node holds them all (checked on Redis 7.0.15), and a topic is a slot of its own (hash tag
``{topic}``). So one XREAD BLOCK per node over its topics cannot be sent, and one per slot
would mean a blocked connection per topic. Instead each primary gets two connections:

- a *listener* (RESP2, ``SUBSCRIBE __redis__:invalidate``): the one blocking read per node;
- a *reader* with ``CLIENT TRACKING ON REDIRECT <listener>``: every key it reads is tracked,
  and the first write to it afterwards (XADD, by any producer) sends the key's name to the
  listener. The reader then sends one non-blocking ``XREAD COUNT n STREAMS ...`` per slot for
  the keys named, all pipelined in one write, and reading them tracks them again.

Redis runs commands one at a time, so a write lands either before the read (its entries are
in the reply) or after it (its invalidation follows): nothing is missed. A read that fills
``COUNT`` is read again at once. When the node is quiet for ``feed_block_ms`` every key of the
node is read anyway (a sweep): it costs one pipelined round trip and finds a slot that moved
(MOVED) or a node that was demoted.

Cold topics (never written, ``topics.Hub``) are watched the same way: the one read that tracks
a key works for a key that does not exist, and its first write names it. They are left out of
the sweep, but for one sweep in ``_COLD_SWEEP_EVERY`` (the sweep is there to find slots that
moved, not writes: tracking finds those), so a crowd of names never written costs a node one
read each when made and a pipelined read a minute, not one per block. What a read finds goes
to ``absorb_written``, which promotes a cold topic at its first entries.

Topology comes from redis-py's cluster client (``nodes_manager``): a reader that fails
(connection lost, MOVED, ASK, failover) ends, the slot map is refreshed, and readers are
started for the primaries that now own the watched topics; each topic resumes from the last
id it saw. Priming and delivery are shared with the single-Redis feed (``base.FeedBase``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import Connection
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from relay.node.feed import tracking
from relay.node.feed.base import FeedBase, reconnect_backoff
from relay.node.metrics import Metrics
from relay.node.topics import Hub, Topic
from relay.storage import clients
from relay.storage import streams as store
from relay.storage.clients import still_wanted

log = logging.getLogger("ssedge.feed")

_PRUNE_S = 30.0
_COLD_SWEEP_EVERY = 12  # sweeps (one a quiet ``feed_block_ms``): a minute at the default 5 s


class TopologyChanged(RedisError):
    """A key's slot is served elsewhere now (MOVED/ASK): refresh the slot map."""


class ClusterFeed(FeedBase):
    """``Feed``'s interface (prime, topics_changed, run, close, connected, last_error)."""

    def __init__(self, hub: Hub, redis: clients.Cluster, metrics: Metrics, *, block_ms: int,
                 read_count: int, send_max: int, retention_maxlen: int = 0,
                 retention_max_age_s: int = 0, check_every: bool = True) -> None:
        super().__init__(hub, redis, metrics, block_ms=block_ms, read_count=read_count,
                         send_max=send_max, retention_maxlen=retention_maxlen,
                         retention_max_age_s=retention_max_age_s, check_every=check_every)
        self._cluster = redis
        self._readers: dict[str, NodeReader] = {}  # by node name, primaries only
        self._routed: dict[bytes, Topic] = {}  # key -> the topic object a reader was told of
        self._slots: dict[bytes, int] = {}
        self._stale = asyncio.Event()  # a reader failed or a topic has no reader yet

    @property
    def connected(self) -> bool:
        """Ready while one node reader is connected (or, before any, the slot map is known).

        Not "every node": while one primary fails over, every relay would go unready at once
        and Varnish would have no backend left for the topics of the other primaries. A
        failing node is logged and counted (``ssedge_redis_reconnects_total``)."""
        readers = list(self._readers.values())
        if readers:
            return any(r.connected for r in readers)
        return bool(self._cluster.nodes_manager.slots_cache)

    @property
    def nodes_connected(self) -> int:
        return sum(r.connected for r in self._readers.values())

    # -- routing ----------------------------------------------------------------------------

    def slot(self, key: bytes) -> int:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._cluster.keyslot(key)
        return slot

    def node_of(self, key: bytes) -> str | None:
        try:
            return str(self._cluster.nodes_manager.get_node_from_slot(self.slot(key)).name)
        except (RedisClusterException, KeyError):
            return None

    def keys_on(self, node: str, *, cold: bool = True) -> list[bytes]:
        """The primed topics' keys on ``node``, the cold ones too unless told not."""
        hub = self._hub
        keys = [*hub.hot, *hub.cold] if cold else list(hub.hot)
        return [key for key in keys if self.node_of(key) == node]

    async def prime(self, topic: Topic) -> None:
        await super().prime(topic)
        if self._routed.get(topic.key) is not topic:
            self._route(topic)

    def topics_changed(self) -> None:
        """Nothing to unblock: ``prime`` hands each new topic to its node's reader."""
        self._metrics.feed_keys = len(self._hub.hot)  # what the sweeps read

    def _route(self, topic: Topic) -> None:
        node = self.node_of(topic.key)
        reader = self._readers.get(node) if node else None
        if reader is None:
            self._stale.set()  # the supervisor starts one, and routes every topic
            return
        self._routed[topic.key] = topic
        reader.mark([topic.key])

    def _route_all(self) -> None:
        """Every primed topic to its reader (after the readers changed)."""
        self._prune()
        self._routed.clear()
        for topic in self._hub.by_key.values():
            if topic.primed:
                self._route(topic)

    def _prune(self) -> None:
        """Forget the routes and slots of topics the hub forgot."""
        by_key = self._hub.by_key
        for key in [k for k in self._slots if k not in by_key]:
            del self._slots[key]
        for key in [k for k, t in self._routed.items() if by_key.get(k) is not t]:
            del self._routed[key]

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh the slot map and (re)start node readers whenever one fails or a topic
        maps to a node without one."""
        backoff = reconnect_backoff()
        while True:
            try:
                self._stale.clear()
                # the client's own initialize() first (once): it also sets up the parser that
                # finds the keys of commands; then the slot map is refreshed every time
                await self._cluster.initialize()
                await self._cluster.nodes_manager.initialize()
                self._start_readers()
                while not self._stale.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stale.wait(), _PRUNE_S)
                    self._prune()
            except asyncio.CancelledError:
                raise
            except (RedisError, RedisClusterException, OSError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("cluster slot map not refreshed: %s", self.last_error)
            if self.last_error is None:
                backoff.reset()
            else:
                self._metrics.redis_reconnects += 1
            # a failed node is tried again at most 1.5 s apart until its replica takes over
            await backoff.wait()

    def _start_readers(self) -> None:
        primaries = {n.name: n for n in self._cluster.nodes_manager.nodes_cache.values()
                     if n.server_type == "primary"}
        for name in list(self._readers):
            reader = self._readers[name]
            if name not in primaries or reader.done or (reader.task and reader.task.done()):
                reader.stop()
                del self._readers[name]
        for name, node in primaries.items():
            if name not in self._readers:
                reader = NodeReader(self, str(node.host), int(node.port), name)
                self._readers[name] = reader
                reader.start()
        self._route_all()

    def reader_failed(self, reader: NodeReader, exc: BaseException) -> None:
        self.last_error = f"{reader.name}: {exc or type(exc).__name__}"
        log.warning("feed lost cluster node %s: %s; refreshing the slot map", reader.name, exc)
        self._stale.set()

    async def close(self) -> None:
        for reader in self._readers.values():
            reader.stop()
        await asyncio.gather(*(r.task for r in self._readers.values() if r.task),
                             return_exceptions=True)
        self._readers.clear()


class NodeReader:
    """The listener and reader connections of one primary, and the keys to read there."""

    def __init__(self, feed: ClusterFeed, host: str, port: int, name: str) -> None:
        self.feed = feed
        self.host = host
        self.port = port
        self.name = name
        self.connected = False
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self._dirty: set[bytes] = set()
        self._wake = asyncio.Event()
        self._conns: list[Connection] = []
        self._sweeps = 0

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def mark(self, keys: Iterable[bytes]) -> None:
        self._dirty.update(keys)
        self._wake.set()

    def _connection(self, socket_timeout: float | None) -> Connection:
        conn = clients.Connection(host=self.host, port=self.port, protocol=2,
                          socket_timeout=socket_timeout, socket_connect_timeout=2.0)
        self._conns.append(conn)
        return conn

    async def _run(self) -> None:
        try:
            # the listener waits without a timeout (a quiet node sends nothing); the reader's
            # PINGs, sent when the node is quiet, find a node that went away
            listener = self._connection(None)
            reader = self._connection(self.feed.block_ms / 1000 + 10)
            await tracking.track(listener, reader)
            self.connected = True
            self.feed.last_error = None
            log.info("feed reading cluster node %s", self.name)
            await tracking.together(self._listen(listener), self._read(reader))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis gone, MOVED, or a bug: this node is read again anew
            if not isinstance(exc, RedisError | OSError):
                log.exception("feed reader of %s failed", self.name)
            # done before the supervisor hears of it, so that it starts a new reader
            self.connected = False
            self.done = True
            self.feed.reader_failed(self, exc)
        finally:
            self.connected = False
            self.done = True
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    await conn.disconnect()

    async def _listen(self, conn: Connection) -> None:
        """The blocking read: invalidated key names, as they come."""
        by_key = self.feed.hub.by_key
        while True:
            message = await conn.read_response()
            if not isinstance(message, list) or len(message) < 3 or message[0] != b"message":
                continue  # pong
            keys = message[2]
            if keys is None:  # FLUSHALL: read everything
                self.mark(self.feed.keys_on(self.name))
            else:
                self.mark(k for k in keys if k in by_key)

    async def _read(self, conn: Connection) -> None:
        feed = self.feed
        self.mark(feed.keys_on(self.name))
        task = asyncio.current_task()
        assert task is not None
        while True:
            still_wanted(task)  # a cancel swallowed by a send (relay.storage.clients.still_wanted)
            if not self._dirty:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), feed.block_ms / 1000)
                except TimeoutError:
                    self._sweeps += 1
                    with_cold = self._sweeps % _COLD_SWEEP_EVERY == 0
                    self.mark(feed.keys_on(self.name, cold=with_cold))  # the sweep
                    if not self._dirty:
                        await conn.send_command("PING")
                        await conn.read_response()
                        continue
            keys, self._dirty = self._dirty, set()
            await self._read_keys(conn, keys)

    async def _read_keys(self, conn: Connection, keys: set[bytes]) -> None:
        feed = self.feed
        by_key = feed.hub.by_key
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:
            topic = by_key.get(key)
            if topic is not None and topic.primed:
                by_slot.setdefault(feed.slot(key), []).append(key)
        if not by_slot:
            return
        commands: list[tuple[Any, ...]] = []
        for slot_keys in by_slot.values():
            commands.append(("XREAD", "COUNT", feed.read_count, "STREAMS", *slot_keys,
                             *(by_key[k].read_from for k in slot_keys)))
        await conn.send_packed_command(conn.pack_commands(commands))
        moved: ResponseError | None = None
        replies = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # MOVED/ASK (or CLUSTERDOWN): read the rest first
                moved = moved or exc
        feed.metrics.feed_reads += len(commands)
        for reply in replies:
            if not reply:
                continue
            await feed.absorb_written(store.entries_of(reply))
            for key, entries in store.entries_of(reply):
                if len(entries) >= feed.read_count:
                    self._dirty.add(key)  # more are waiting
        if moved is not None:  # MOVED, ASK, CLUSTERDOWN: this node no longer serves a slot
            raise TopologyChanged(f"{type(moved).__name__}: {moved}")
        if self._dirty:
            self._wake.set()
