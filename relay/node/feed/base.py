"""What every feed is and does: the interface the node uses, priming, delivery, checks.

A feed is the one reader of every watched topic in a relay process. Each entry it reads is
framed once and appended to its topic's ring, and the new frames go out to the topic's
parked connections in one pass (``relay.node.fanout``).

- A new topic is *primed* before any client of it is answered: its newest entries, up to the
  ring's bounds in events and in bytes (``store.newest``), are read into the ring and its last
  id noted, and the feed reads on from exactly that id.
  So a stream whose ``retry:`` has been sent misses nothing published after it.
- A stream that went back (deleted and made again, XSETID, a lossy failover) is found by
  ``verify`` (``Relay`` calls it every ``feed_verify_s`` and after a reconnect).
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from typing import Any

from relay.node import fanout
from relay.node.metrics import Metrics
from relay.node.topics import Hub, Topic
from relay.protocol import ids
from relay.storage import streams as store

_BACKOFF_MIN = 0.05
# at most 1.5 s (with jitter) between tries: after an outage of any length the feed reads on
# within that of Redis answering again (tests/integration/test_redis_restart.py measures it);
# one refused connect a second per process costs Redis nothing
_BACKOFF_MAX = 1.0


class Backoff:
    """The wait between two tries to reach Redis: doubling from 50 ms to 1 s, with jitter (so
    the relays of a deployment do not come back in step), reset once a try worked."""

    def __init__(self) -> None:
        self._next = _BACKOFF_MIN

    def reset(self) -> None:
        self._next = _BACKOFF_MIN

    async def wait(self) -> None:
        await asyncio.sleep(self._next * (0.5 + random.random()))
        self._next = min(self._next * 2, _BACKOFF_MAX)


class FeedBase(ABC):
    """A feed: what the node asks of one (the abstract methods, with their contract) and what
    every feed does the same way (priming a topic, delivering what was read to its ring,
    checking that watched streams did not go back).

    ``single.RedisFeed`` reads one Redis; ``cluster.ClusterFeed`` a Redis Cluster."""

    def __init__(self, hub: Hub, redis: Any, metrics: Metrics, *, block_ms: int,
                 read_count: int, send_max: int) -> None:
        self._hub = hub
        # the client of the Redis this feed reads (a replica, or the primary): priming, verify
        # (and CLIENT UNBLOCK on one Redis)
        self._redis = redis
        self._metrics = metrics
        self._block_ms = block_ms
        self._count = read_count
        self._send_max = send_max
        self.last_error: str | None = None
        # set to have the streams checked now (``verify``): after a reconnect, or when a
        # catch-up found its stream holding less than the ring
        self.verify_now = asyncio.Event()

    # -- what the node asks of a feed --------------------------------------------------------

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether the feed is reading now (readiness, the Redis grace)."""

    @abstractmethod
    def topics_changed(self) -> None:
        """Make the reads in flight include the topics primed since they started, at once:
        a stream is answered only once its topic is primed, and its events must flow."""

    @abstractmethod
    async def run(self) -> None:
        """Read every primed topic for ever, from the last id each was read to; through any
        Redis outage (reconnecting with ``Backoff``), raising only when cancelled."""

    @abstractmethod
    async def close(self) -> None:
        """Let go of every connection (after ``run`` was cancelled)."""

    # -- what readers of a feed's nodes need (cluster.NodeReader) -----------------------------

    @property
    def hub(self) -> Hub:
        return self._hub

    @property
    def block_ms(self) -> int:
        return self._block_ms

    @property
    def read_count(self) -> int:
        return self._count

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    async def absorb(self, reply: Any) -> None:
        """What an XREAD returned, checked and delivered: every feed hands its replies here."""
        self.deliver(reply)

    def deliver(self, reply: Any) -> None:
        """Entries an XREAD returned, to their topics' rings and parked connections."""
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
        this feed to pass them, which a stream that went back never does.

        Every id compared here comes from the Redis this feed reads (a replica, when the relay
        reads one): ``Topic.ahead`` only takes ids that Redis was seen to hold, never one only
        the primary has (``relay.node.replica``), so a replica behind its primary is never
        taken for a stream that went back."""
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
            entries, floor, _ = await store.newest(self._redis, topic.key, ring.max_events,
                                                   ring.max_bytes)
            keys, frames, bad = store.frames(entries)
            self._metrics.invalid_entries += bad
            ring.prime(keys, frames, floor)
            topic.read_from = ids.format(ring.last_id).encode()
            self._hub.mark_primed(topic)
            self.topics_changed()
        finally:
            topic.priming = None
