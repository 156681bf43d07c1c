"""Redis clients as ssedge uses them: one Redis or a Redis Cluster, stream replies raw.

Every command ssedge sends touches one topic's keys, so one slot: the same code runs against
one Redis and a cluster. Stream replies come back raw (hiredis lists, not dicts per entry),
and the cluster client's own exceptions are turned into ``ConnectionError`` so that callers
answer 503 (or retry) for every ``RedisError``.

A relay and the replay service hold a ``Redis``: the primary, where every write goes
(publishes, the idempotency script; ``ssedge ingest`` holds the primary alone), and the
connection streams are read from (feed, priming, metadata, history pages), which is a replica
when ``SSEDGE_REDIS_READ_URL`` names one. Replication keeps entry ids, so an id means the same
event on both; only how far each has got differs (``relay.storage.replica``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisClusterException, RedisError

# one Redis or a Redis Cluster: every command ssedge sends touches one topic's keys (one slot)
Client = aioredis.Redis | RedisCluster


def _raw(response: Any, **_: Any) -> Any:
    return response


class Connection(aioredis.Connection):
    """redis-py's TCP connection, with a write to a socket the peer closed raised as the
    ``ConnectionError`` it is. Under uvloop that write raises ``RuntimeError`` ("the handler
    is closed"), which nothing expects from Redis: a publish to a primary that had just died
    was answered 500, and a feed could have stopped for good."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            await self.disconnect(nowait=True)
            raise ConnectionError(f"Error writing to {self._host_error()}: {exc}") from exc


def still_wanted(task: asyncio.Task[Any] | None = None) -> None:
    """Raise a cancellation that ``asyncio.wait_for`` swallowed: on Python 3.11 it drops a
    cancel that arrives as the awaited call completes. redis-py sends through it (and the
    ingest waits on its upstream with it), so a loop that calls Redis again and again may never
    stop. Found twice: the feed blocked in its next XREAD, and every one after, and a relay's
    shutdown waited for it for ever (tests/integration/node/test_feed.py); an ingest told to stop
    (SIGTERM) while Redis was away went on retrying until its backoff ended. Every such loop
    calls this once a turn."""
    task = task or asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def client(url: str, *, socket_timeout: float | None = 5.0, max_connections: int = 50,
           retries: int = 1) -> aioredis.Redis:
    """A client whose stream replies come back raw (hiredis lists), not as dicts per entry."""
    r = aioredis.Redis.from_url(
        url,
        connection_class=Connection,  # unix:// and rediss:// URLs choose their own
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
    )
    for command in ("XREAD", "XRANGE", "XREVRANGE"):
        r.set_response_callback(command, _raw)
    return r


class Cluster(RedisCluster):
    """redis-py's cluster client (MOVED/ASK, failover, topology refresh), with its own
    exceptions that are not ``RedisError`` (a slot not covered while a primary fails over)
    turned into ``ConnectionError``: callers answer 503 for every ``RedisError``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # every node's connections are ours (``Connection``): redis-py's cluster client takes
        # no connection class, but each node it meets is made from this dict, which its node
        # manager shares
        self.connection_kwargs["connection_class"] = Connection
        for node in [*self.startup_nodes, *self.nodes_manager.startup_nodes.values()]:
            node.connection_class = Connection

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ConnectionError(str(exc)) from exc

    def pipeline(self, transaction: Any | None = None,
                 shard_hint: Any | None = None) -> ClusterPipeline:
        return _Pipeline(self, transaction)  # type: ignore[abstract]


class _Pipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True,
                      allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisClusterException as exc:
            raise ConnectionError(str(exc)) from exc


def seed_nodes(seeds: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as (host, port) pairs (``[v6]:port`` too)."""
    out = []
    for seed in seeds.split(","):
        host, _, port = seed.strip().rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


def cluster_client(seeds: str, *, socket_timeout: float | None = 5.0,
                   max_connections: int = 50, retries: int = 1) -> Cluster:
    """A Redis Cluster client from seed nodes, with raw stream replies like ``client``."""
    r = Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in seed_nodes(seeds)],
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
        # a failed-over primary's replacement is found on the next MOVED
        reinitialize_steps=1,
    )
    for command in ("XREAD", "XRANGE", "XREVRANGE"):
        r.set_response_callback(command, _raw)
    return r


def connect(settings: Any, *, socket_timeout: float | None = 5.0, max_connections: int = 50,
            retries: int = 1) -> aioredis.Redis | Cluster:
    """The client for ``settings``: the Redis Cluster when ``redis_cluster`` names seed
    nodes, else the one Redis at ``redis_url``."""
    if settings.redis_cluster:
        return cluster_client(settings.redis_cluster, socket_timeout=socket_timeout,
                              max_connections=max_connections, retries=retries)
    return client(settings.redis_url, socket_timeout=socket_timeout,
                  max_connections=max_connections, retries=retries)


class Redis:
    """Where a process writes (``primary``) and where it reads streams (``read``: a replica,
    or the primary itself). Whoever compares ids read from Redis takes them all from one of
    the two: a replica behind the primary must never look like a stream that went back."""

    def __init__(self, primary: aioredis.Redis | Cluster,
                 read: aioredis.Redis | Cluster | None = None) -> None:
        self.primary = primary
        self.read = primary if read is None else read

    @property
    def replica(self) -> bool:
        """Whether streams are read from a replica (``read`` is not the primary)."""
        return self.read is not self.primary

    async def aclose(self) -> None:
        await self.primary.aclose()
        if self.replica:
            await self.read.aclose()


def connect_pair(settings: Any, *, socket_timeout: float | None = 5.0,
                 max_connections: int = 50, retries: int = 1) -> Redis:
    """The primary of ``connect``, and a client of ``redis_read_url`` when it is set."""
    primary = connect(settings, socket_timeout=socket_timeout,
                      max_connections=max_connections, retries=retries)
    read = None
    if getattr(settings, "redis_read_url", ""):
        read = client(settings.redis_read_url, socket_timeout=socket_timeout,
                      max_connections=max_connections, retries=retries)
    return Redis(primary, read)


async def ping(r: Client) -> None:
    """Is Redis there? On a cluster: does any primary answer (one failing over leaves the
    other primaries' topics readable; a readiness check must not flap with it)."""
    if not isinstance(r, RedisCluster):
        await r.ping()
        return
    try:
        await r.initialize()  # once; a no-op after
        primaries = r.get_primaries()
    except RedisClusterException as exc:
        raise ConnectionError(str(exc)) from exc
    answers = await asyncio.gather(*(r.ping(target_nodes=node) for node in primaries),
                                   return_exceptions=True)
    if not any(answer is True for answer in answers):
        raise next((a for a in answers if isinstance(a, RedisError)),
                   ConnectionError("no cluster primary answers"))


