"""What every feed is and does: the interface the node uses, priming, delivery, checks.

A feed is the one reader of every watched topic in a relay process. Each entry it reads is
framed once and appended to its topic's ring, and the new frames go out to the topic's
parked connections in one pass (``relay.node.fanout``).

- A new topic is *primed* before any client of it is answered: its newest entries, up to the
  ring's bounds in events and in bytes (``store.newest``), are read into the ring and its last
  id noted, and the feed reads on from exactly that id.
  So a stream whose ``retry:`` has been sent misses nothing published after it.
- A topic whose stream was never written primes *cold* (``topics.Hub``): each backend watches
  cold topics apart from its reads of the hot ones, at no cost to them, and hands what it
  finds to ``absorb_written``, which promotes the topic (``relay.node.feed.cold``).
- A stream that went back (deleted and made again, XSETID, a lossy failover) is found by
  ``verify`` (``Relay`` calls it every ``feed_verify_s`` and after a reconnect).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from relay import backoff
from relay.node import fanout
from relay.node.metrics import Metrics
from relay.node.topics import Hub, Topic
from relay.protocol import ids, resume
from relay.storage import streams as store

log = logging.getLogger("ssedge.feed")

#: what ``_gap`` says of a read of a stream that was deleted and made again
NEW_LIFE = -2

#: what one read of the watched streams brought: each topic's key and its new entries, oldest
#: first, as a feed backend hands them over (``store.entries_of`` turns an XREAD reply into one)
Read = Sequence[tuple[bytes, Sequence[store.Entry]]]

_BACKOFF_MIN = 0.05
# at most 1.5 s (with jitter) between tries: after an outage of any length the feed reads on
# within that of Redis answering again (tests/integration/node/test_redis_restart.py measures it);
# one refused connect a second per process costs Redis nothing
_BACKOFF_MAX = 1.0


def reconnect_backoff() -> backoff.Backoff:
    """The wait between two tries to reach Redis: doubling from 50 ms to 1 s, with jitter (so
    the relays of a deployment do not come back in step), reset once a try worked."""
    return backoff.Backoff(_BACKOFF_MIN, _BACKOFF_MAX)


class FeedBase(ABC):
    """A feed: what the node asks of one (the abstract methods, with their contract) and what
    every feed does the same way (priming a topic, delivering what was read to its ring,
    checking that watched streams did not go back).

    ``single.RedisFeed`` reads one Redis; ``cluster.ClusterFeed`` a Redis Cluster."""

    def __init__(self, hub: Hub, redis: Any, metrics: Metrics, *, block_ms: int,
                 read_count: int, send_max: int, retention_maxlen: int = 0,
                 retention_max_age_s: int = 0, check_every: bool = True) -> None:
        self._hub = hub
        # the client of the Redis this feed reads (a replica, or the primary): priming, verify
        # (and CLIENT UNBLOCK on one Redis)
        self._redis = redis
        self._metrics = metrics
        self._block_ms = block_ms
        self._count = read_count
        self._send_max = send_max
        # the retention publishes apply: a read can have jumped over trimmed entries only
        # when it is at least this long, or when its last id is this old (``_suspect``)
        self._maxlen = retention_maxlen
        self._max_age_ms = retention_max_age_s * 1000
        # every read checked (SSEDGE_FEED_CHECK=every): a trim by anything else (an operator's
        # XTRIM, a producer's own MAXLEN) is told too, for one XINFO per read that brought
        # entries, pipelined for all its topics
        self._check_every = check_every
        self.last_error: str | None = None
        # set to have the streams checked now (``verify``): after a reconnect, or when a
        # catch-up found its stream holding less than the ring
        self.verify_now = asyncio.Event()
        # what the node does with a watched topic whose stream went back (``Relay``: forget
        # it and its cached pages, end its streams)
        self.rewound: Callable[[Topic], None] = self._hub.forget

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
        Redis outage (reconnecting with ``reconnect_backoff``), raising only when cancelled."""

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

    async def absorb(self, read: Read) -> None:
        """What one read of the stream returned (each topic's key and its new entries, oldest
        first), checked and delivered: every feed hands its reads here.

        XREAD after an id that retention has trimmed silently starts at the first entry left:
        a feed that stalled (a frozen process, a slow node) while more than the retention
        arrived would jump over the trimmed entries, and its readers with it. A read that
        could have jumped (``_suspect``) is checked against XINFO before it is delivered
        (``_gap``); one that did gets an ``ssedge.reset`` in the ring before its first entry,
        so every reader hears of the loss before the next event."""
        suspects = [(key, entries) for key, entries in read
                    if entries and self._suspect(key, entries)]
        gaps: dict[bytes, int] = {}
        if suspects:
            infos = await store.infos(self._redis, [key for key, _ in suspects])
            for (key, entries), info in zip(suspects, infos, strict=True):
                topic = self._hub.by_key.get(key)
                if topic is None:
                    continue
                gaps[key] = gone = self._gap(topic, entries, info)
                if gone == NEW_LIFE:
                    # nothing of the old life may be mistaken for the new one: the topic is
                    # let go now (its streams end; each client comes back with its id, which
                    # the new life tells ``unknown``), and primed again by the next client
                    log.warning("the stream of topic %s was deleted and made again: ending "
                                "its %d streams to start over", topic.name,
                                len(topic.subscribers))
                    self.rewound(topic)
        self.deliver(read, gaps)

    async def absorb_written(self, read: Read) -> None:
        """``absorb``, then each cold topic the read found written is promoted: it joins the
        hot topics from the last id read (its first entries are in its ring), and the reads
        in flight are made to include it. What a cold watch hands its reads to."""
        await self.absorb(read)
        hub = self._hub
        promoted = False
        for key, _ in read:
            topic = hub.cold.get(key)
            if topic is not None and ids.from_redis(topic.read_from) != ids.ZERO:
                promoted = hub.promote(topic) or promoted
        if promoted:
            self.topics_changed()

    def _suspect(self, key: bytes, entries: Sequence[store.Entry]) -> bool:
        """Whether a read is checked for trimmed entries it jumped: every read
        (``check_every``), else one that may have been overtaken by the retention publishes
        apply: it is as long as a read gets (the feed is behind), or as the count retention
        keeps, or it follows an id older than the age retention keeps, or the count it
        follows from is not known."""
        topic = self._hub.by_key.get(key)
        if topic is None or not topic.primed:
            return False
        if self._check_every or topic.added is None or len(entries) >= self._count:
            return True
        if self._maxlen and len(entries) >= self._maxlen:
            return True
        read_ms = ids.from_redis(topic.read_from) >> 64
        return bool(self._max_age_ms) and read_ms < time.time() * 1000 - self._max_age_ms

    def _gap(self, topic: Topic, entries: Sequence[store.Entry], info: dict[str, Any] | None
             ) -> int:
        """How many entries after the topic's last read id and before ``entries`` are gone
        (trimmed or deleted), by counting: ``entries-added`` only grows, one per entry, and
        the feed knows the count at the id it read from (``Topic.added``). -1: some, how many
        is not known; ``NEW_LIFE``: the stream was deleted and made again (fewer entries added
        than the feed has read, or none at all now). 0 also when that cannot be told."""
        known = topic.added
        if info is None:
            return NEW_LIFE if known else 0
        after = ids.from_redis(topic.read_from)
        first = ids.from_redis(info["first-entry"][0]) if info.get("first-entry") else None
        added, length = int(info["entries-added"]), int(info["length"])
        last_generated = ids.from_redis(info["last-generated-id"])
        if known is not None and added < known + len(entries):
            return NEW_LIFE  # one life never counts fewer than the feed has read
        if first is not None and first <= after:
            gone = 0  # the entry it read last is still there: nothing after it was trimmed
        elif known is None or (first is not None and first > ids.from_redis(entries[-1][0])):
            gone = -1 if added > length else 0  # overtaken by more than this read
        else:
            gone = added - known - length - sum(1 for e in entries
                                                if first is None or ids.from_redis(e[0]) < first)
            if gone < 0:
                return NEW_LIFE
        # count on from here: exactly, when this read reaches the stream's last id
        if ids.from_redis(entries[-1][0]) == last_generated:
            topic.added = added - len(entries)
        elif gone < 0 or known is None:
            topic.added = None
        else:
            topic.added = known + gone
        return gone

    def deliver(self, read: Read, gaps: dict[bytes, int] | None = None) -> None:
        """The entries of a read, to their topics' rings and parked connections; a topic
        in ``gaps`` (entries gone before its first one, ``_gap``) gets an ``ssedge.reset``
        first."""
        by_key = self._hub.by_key
        metrics = self._metrics
        newest = 0
        for key, entries in read:
            topic = by_key.get(key)
            if topic is None or not entries or not topic.primed:
                continue  # forgotten while the read was in flight
            ring = topic.ring
            if ids.from_redis(entries[0][0]) <= ring.last_id:
                # a topic forgotten and primed again during the read already holds these
                entries = [e for e in entries if ids.from_redis(e[0]) > ring.last_id]
                if not entries:
                    continue
            if gaps and gaps.get(key) == NEW_LIFE:
                continue  # let go (``absorb``)
            keys, frames, bad = store.frames(entries)
            if gaps and gaps.get(key):
                keys, frames = self._reset(topic, keys, frames, gaps[key])
            ring.extend(keys, frames)
            topic.read_from = entries[-1][0]
            if topic.added is not None:
                topic.added += len(entries)
            metrics.events_in += len(entries)
            metrics.invalid_entries += bad
            newest = max(newest, ring.last_id)
            fanout.kick(topic, metrics, self._send_max)
        if newest:
            # an entry id's time is Redis's clock when it was added: how long it took to get here
            metrics.feed_lag_s = max(0.0, time.time() - (newest >> 64) / 1000)

    def _reset(self, topic: Topic, keys: list[int], frames: list[bytes], gone: int
               ) -> tuple[list[int], list[bytes]]:
        """The frames of a read that jumped over ``gone`` entries (-1: some), an
        ``ssedge.reset`` first: its id is just below the read's first entry, so it sorts
        after everything a reader has and before what follows; it names the feed's last id
        (a reader resuming inside the gap is told the same)."""
        after = ids.from_redis(topic.read_from)
        first = keys[0]
        log.warning("the feed of topic %s was overtaken by retention: %s entries after %s "
                    "are gone; its readers are told (ssedge.reset)", topic.name,
                    "some" if gone < 0 else gone, ids.format(after))
        self._metrics.feed_gaps += 1
        self._metrics.resets += 1
        frame = resume.reset_frame("expired", after, first, ids.predecessor(first), topic.name)
        return [ids.predecessor(first), *keys], [frame, *frames]

    # -- streams that went back -----------------------------------------------------------

    async def verify(self) -> list[Topic]:
        """Watched topics whose stream went back since this process read it.

        XREAD after an id returns nothing for entries below it, so a stream deleted and made
        again, set back with XSETID, or failed over to a replica that missed its newest
        entries would leave this node reading after an id that no longer leads anywhere:
        heartbeats, no events, no reset. A stream went back when its last generated id is
        below what the feed had read before asking, or its ``entries-added`` (which only
        grows) is below the count the feed had reached (``Topic.added``, taken before asking:
        the feed counts on meanwhile). "What the feed had read" includes ids that
        clients came with from nodes whose feeds were ahead (``Topic.ahead``): they wait for
        this feed to pass them, which a stream that went back never does.

        Every id compared here comes from the Redis this feed reads (a replica, when the relay
        reads one): ``Topic.ahead`` only takes ids that Redis was seen to hold, never one only
        the primary has (``relay.node.replica``), so a replica behind its primary is never
        taken for a stream that went back."""
        topics = list(self._hub.hot.values())  # a cold topic has read nothing to go back from
        if not topics:
            return []
        # what this node knows the stream reached, before asking (no race with new reads)
        read = [(max(ids.from_redis(t.read_from), t.ahead), t.added or 0) for t in topics]
        heads = await store.heads(self._redis, [t.key for t in topics])
        gone = []
        for topic, (had, counted), (last, added) in zip(topics, read, heads, strict=True):
            if self._hub.topics.get(topic.name) is not topic:
                continue  # forgotten meanwhile
            if last < had or added < counted:
                gone.append(topic)
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
            entries, floor, info = await store.newest(self._redis, topic.key, ring.max_events,
                                                      ring.max_bytes)
            keys, frames, bad = store.frames(entries)
            self._metrics.invalid_entries += bad
            ring.prime(keys, frames, floor)
            # read on from the id the count was taken at (``absorb`` counts from there)
            topic.read_from = info["last-generated-id"] if info is not None else b"0-0"
            topic.added = int(info["entries-added"]) if info is not None else 0
            self._hub.mark_primed(topic)
            self.topics_changed()
        finally:
            topic.priming = None
