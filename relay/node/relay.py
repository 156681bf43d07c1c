"""What one relay process holds: settings, Redis clients, topics, the feed and the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from relay import settings as settings_mod
from relay.backoff import jitter
from relay.node import fanout
from relay.node.audience import Reporter
from relay.node.feed import backends as feeds
from relay.node.feed.base import FeedBase
from relay.node.metrics import Metrics
from relay.node.replayer import Replayer
from relay.node.replica import Waits
from relay.node.revocation import Orders
from relay.node.topics import Hub, Subscription, Topic
from relay.settings import Settings
from relay.storage import clients, replica
from relay.storage import streams as store
from relay.web import auth
from relay.web.http import Responder

log = logging.getLogger("ssedge.relay")

_SWEEP_S = 1.0
_REFUSAL_LOG_S = 5.0
_DRAIN_STEP_S = 0.1
_PRIMARY_WATCH_S = 5.0
_IDLE_SWEEP_MAX_S = 600.0


class Refusals:
    """The log of refused streams, at most one line per reason every ``_REFUSAL_LOG_S``: a
    storm of refusals must not become a storm of log lines."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, int]] = {}  # reason -> (last logged, not logged)

    def note(self, reason: str, why: str) -> None:
        now = time.monotonic()
        logged, pending = self._state.get(reason, (float("-inf"), 0))
        pending += 1
        if now - logged >= _REFUSAL_LOG_S:
            log.warning("refused %d stream%s (%s: %s); asked to come back", pending,
                        "" if pending == 1 else "s", reason, why)
            self._state[reason] = (now, 0)
        else:
            self._state[reason] = (logged, pending)


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.node)
        self.responder = Responder(settings.cors_origin, self.metrics.responses,
                                   settings.access_log,
                                   settings_mod.proxy_networks(settings.trusted_proxies))
        # writes go to the primary; the feed, priming, metadata and history read ``redis.read``
        # (a replica when SSEDGE_REDIS_READ_URL names one), and every comparison of ids that
        # decides a client's fate (rule 2, verify) takes them from there
        self.redis = clients.connect_pair(settings)
        redis = self.redis.read
        # the most bytes of one send to a stream: what bounds a client that does not read
        self.send_bytes = fanout.send_bytes(settings.client_queue_bytes, settings.send_max_bytes)
        self.hub = Hub(
            ring_events=settings.ring_events,
            ring_bytes=settings.ring_bytes,
            max_topics=settings.max_topics,
            max_cold_topics=settings.max_cold_topics,
            key_of=store.stream_key,
        )
        # chosen by the settings, through the feed's written interface (relay/node/feed/)
        self.feed: FeedBase = feeds.make(settings, self.hub, redis, self.metrics)
        self.feed.rewound = self._rewound
        self.replayer = Replayer(
            settings.replay_url, redis, self.metrics,
            page_size=settings.replay_page, timeout=settings.replay_timeout_s,
            cache_bytes=settings.replay_cache_bytes, open_ttl=settings.replay_open_max_age_s,
            page_bytes=settings.replay_page_bytes,
            private=auth.Patterns.parse(settings.private_topics).match,
        )
        # the operators' view and orders: this process's audience told to Redis, revoked
        # tokens and the streams found by token (relay/node/audience.py, revocation.py)
        self.audience = Reporter(self.hub, self.redis.primary, settings.node,
                                 settings.audience_period_s, self.metrics)
        self.orders = Orders(self.hub, self.redis.primary, settings.revocation_reload_s,
                             self.metrics)
        self._tasks: list[asyncio.Task[None]] = []
        self.draining = False
        self.refusals = Refusals()
        # when the feed was last seen without Redis (None: connected); readiness and new
        # streams hold out ``redis_grace_s`` past it
        self.redis_down_since: float | None = None
        self._redis_seen = False
        # the replica's link and lag, and streams waiting for it to reach their id
        self.replica: replica.Watch | None = None
        self.replica_waits = Waits(settings.replica_wait_s)
        # replicas the primary had connected at the last look (``_watch_primary``): a publish
        # waits for one of them when SSEDGE_PUBLISH_REPLICAS is left at -1
        self.primary_replicas = 0
        m = self.metrics
        m.gauge("topics_watched", "Topics this process reads.", lambda: len(self.hub.topics))
        m.gauge("topics_cold", "Of those, never written: watched apart from the feed's XREAD.",
                lambda: len(self.hub.cold))
        m.counter("topics_promoted_total", "Cold topics found written, since read as hot ones.",
                  lambda: self.hub.promotions)
        m.gauge("ring_events", "Events held in all rings.",
                lambda: sum(len(t.ring) for t in self.hub))
        m.gauge("ring_bytes", "Bytes held in all rings.",
                lambda: sum(t.ring.nbytes for t in self.hub))
        m.gauge("ring_fill_ratio", "Fullest ring's events over its bound.",
                lambda: max((len(t.ring) / settings.ring_events for t in self.hub), default=0))
        m.gauge("compressors", "Topics compressed once for their compressed streams.",
                lambda: sum(t.shared is not None for t in self.hub))
        m.gauge("compressed_bytes", "Bytes of compressed segments held for them.",
                lambda: sum(t.shared.nbytes for t in self.hub if t.shared is not None))
        m.gauge("compression_ratio", "Frames over compressed bytes, all compressors now.",
                lambda: sum(t.shared.plain_in for t in self.hub if t.shared is not None)
                / max(1, sum(t.shared.bytes_out for t in self.hub if t.shared is not None)))
        m.gauge("compression_epochs", "Epochs ended (full flushes) by the compressors now.",
                lambda: sum(t.shared.epochs_ended for t in self.hub if t.shared is not None))
        m.gauge("subscribers", "Connections registered on a topic.",
                lambda: self.hub.subscriber_count)
        m.gauge("tasks", "asyncio tasks alive in this process.",
                lambda: len(asyncio.all_tasks()))
        m.gauge("redis_connected", "1 while the feed is connected to Redis.",
                lambda: float(self.feed.connected))
        # what /readyz says, and the bounds, so that alerts can say how near they are
        m.gauge("ready", "1 while this process takes streams (what /readyz answers).",
                lambda: float(self.ready))
        m.gauge("streams_limit", "Streams this process serves at most (SSEDGE_MAX_STREAMS).",
                lambda: settings.max_streams)
        m.gauge("topics_limit", "Topics this process watches at most (SSEDGE_MAX_TOPICS).",
                lambda: settings.max_topics)
        m.gauge("cold_topics_limit", "Cold topics this process watches at most "
                "(SSEDGE_MAX_COLD_TOPICS).", lambda: settings.max_cold_topics)
        if self.redis.replica:
            self.replica = replica.Watch(self.redis)
            self.replica.register(m)
            waits = self.replica_waits
            m.counter("replica_waits_total", "Streams that came with an id the replica had not "
                      "reached yet, and waited for it.", lambda: waits.started)
            m.counter("replica_wait_timeouts_total", "Of those, ended when the replica had not "
                      "reached it within SSEDGE_REPLICA_WAIT_S.", lambda: waits.timed_out)

    async def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._guard("feed", self.feed.run())),
            asyncio.ensure_future(self._guard("heartbeat", self._heartbeat())),
            asyncio.ensure_future(self._guard("sweeper", self._sweep())),
            asyncio.ensure_future(self._guard("audience", self.audience.run())),
            asyncio.ensure_future(self._guard("orders", self.orders.run())),
        ]
        if self.settings.feed_verify_s:
            self._tasks.append(asyncio.ensure_future(self._guard("verify", self._verify())))
        if self.settings.idle_stream_s:
            self._tasks.append(asyncio.ensure_future(self._guard("idle streams",
                                                                 self._delete_idle())))
        if self.settings.publish_replicas < 0 and not self.settings.redis_cluster:
            self._tasks.append(asyncio.ensure_future(self._guard("primary",
                                                                 self._watch_primary())))
        if self.replica is not None:
            self._tasks.append(asyncio.ensure_future(self._guard("replica", self.replica.run())))

    @property
    def stepped_out(self) -> str | None:
        """Why this relay does not take streams now, or None while Redis is reachable or was
        until less than ``redis_grace_s`` ago.

        A short Redis blip hits every relay at once: readiness that turned red with it would
        leave the edge no relay at all, while streams of topics in the rings can still be
        served (they resume the moment the feed reads again). A relay that stays without
        Redis longer steps out (``redis``): not ready, its streams ended so that they
        reconnect to a relay that has Redis, new ones refused. Likewise ``replica`` when the
        replica it reads has been cut from a primary that answers for ``redis_grace_s`` (it
        serves stale events while the others go on). A replica cut from a primary that is
        out of reach too is served as it is: nothing newer can be had (docs/SCALING.md,
        "Regions").
        """
        grace = self.settings.redis_grace_s
        if self.replica is not None and self.replica.stale(grace):
            return "replica"
        if self.feed.connected:
            self._redis_seen = True
            return None
        down = self.redis_down_since  # None: lost since the last sweep, under a second ago
        if self._redis_seen and (down is None or time.monotonic() - down < grace):
            return None
        return "redis"

    @property
    def publish_replicas(self) -> int:
        """Replicas a publish waits for now (``Settings.replicas``)."""
        return self.settings.replicas(self.primary_replicas)

    async def _watch_primary(self) -> None:
        """How many replicas the primary has, every ``_PRIMARY_WATCH_S``: with one, a
        publish's 201 waits until it holds the events (a failover then loses none)."""
        from redis.exceptions import RedisError

        while True:
            try:
                info = await self.redis.primary.info("replication")
                self.primary_replicas = int(info.get("connected_slaves", 0))
            except (RedisError, OSError, ValueError):
                pass  # keep the last answer; the publishes meet the outage themselves
            finally:
                clients.still_wanted()
            await asyncio.sleep(_PRIMARY_WATCH_S)

    @property
    def ready(self) -> bool:
        # revocations are read before the first stream is taken (a revoked token must not
        # slip in while a restarted relay has not read them yet)
        return (not self.draining and self.stepped_out is None and self.orders.loaded
                and all(not t.done() for t in self._tasks))

    def _watch_redis(self) -> None:
        """Note when the feed lost Redis (the sweeper calls this every second)."""
        if self.feed.connected:
            self._redis_seen = True
            self.redis_down_since = None
        elif self.redis_down_since is None and self._redis_seen:
            self.redis_down_since = time.monotonic()

    async def drain(self) -> None:
        """Close every stream over ``drain_s``, each told to come back after ``drain_retry_ms``.

        Readiness is red from the first moment, so balancers stop sending new streams; the
        closes are spread out so that the other nodes take the reconnects as a ramp, not a
        wall. Each client resumes elsewhere with its Last-Event-ID.
        """
        self.draining = True
        subs = [sub for topic in self.hub for sub in topic.subscribers]
        period = self.settings.drain_s
        log.info("draining %d streams over %.1f s", len(subs), period)
        batches = max(1, min(len(subs), int(period / _DRAIN_STEP_S)))
        per_batch = max(1, -(-len(subs) // batches))  # no streams: range() needs a step
        for start in range(0, len(subs), per_batch):
            for sub in subs[start:start + per_batch]:
                self._close_for_drain(sub)
            await asyncio.sleep(period / batches)
        # streams that registered while the first ones closed (they passed the check just
        # before it turned red), then the last bytes of every stream
        deadline = time.monotonic() + 2.0
        while self.metrics.streams_open and time.monotonic() < deadline:
            for topic in self.hub:
                for sub in list(topic.subscribers):
                    self._close_for_drain(sub)
            await asyncio.sleep(0.02)
        log.info("drained; %d streams left", self.metrics.streams_open)

    def _close_for_drain(self, sub: Subscription) -> None:
        if sub.closed_because is None:
            self.metrics.drained += 1
            sub.close("drain")

    async def stop(self) -> None:
        for topic in self.hub:
            for sub in list(topic.subscribers):
                sub.close("shutdown")
        passes = [t.fanning for t in self.hub if t.fanning is not None]
        for task in self._tasks + passes:
            task.cancel()
        await asyncio.gather(*self._tasks, *passes, return_exceptions=True)
        await self.audience.leave()
        await self.feed.close()
        await self.redis.aclose()

    async def _guard(self, name: str, work: object) -> None:
        try:
            await work  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stopped on an unexpected error; the node is not ready", name)
            raise

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            self.hub.tick()

    def verify_soon(self) -> None:
        """Have the feed check now whether watched streams went back (``_verify``)."""
        self.feed.verify_now.set()

    async def _verify(self) -> None:
        """Every ``feed_verify_s``, and at once after the feed reconnects: a watched stream
        that went back (deleted and made again, XSETID, a failover that lost its newest
        entries) is forgotten, its streams ended; each client reconnects with its id and is
        answered from the stream as it is now (an id the stream no longer reaches gets an
        ``unknown`` reset and goes on live). Cached pages of it are dropped here; the edge's
        are the operator's to ban (docs/OPERATIONS.md)."""
        from redis.exceptions import RedisError

        wake = self.feed.verify_now
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.feed_verify_s)
            wake.clear()
            try:
                gone = await self.feed.verify()
            except (RedisError, OSError) as exc:
                log.debug("stream check skipped: %s", exc)
                continue
            finally:
                clients.still_wanted()  # a stop swallowed by a Redis call
            for topic in gone:
                log.warning("stream of topic %s went back (deleted, or a failover lost its "
                            "newest entries): ending its %d streams to start over",
                            topic.name, len(topic.subscribers))
                self._rewound(topic)

    def _rewound(self, topic: Topic) -> None:
        """A watched topic whose stream went back: forgotten with its cached pages, its
        streams ended (each client comes back with its id and is answered anew)."""
        self.metrics.rewinds += 1
        self.hub.forget(topic)
        self.replayer.forget(topic.name)

    async def _delete_idle(self) -> None:
        """Delete the topic streams with no publish for ``idle_stream_s``, every quarter of it
        (at most 10 minutes apart, spread). With the age bound (``retention_max_age_s``) at or
        below it, such a stream holds only events that bound would trim at the next publish:
        what goes is its key and its last id. Every relay runs this at once, safely (one
        script checks and deletes, ``store.delete_idle``). A relay watching a deleted stream
        ends its streams at once (``_verify``); a reader that comes back with an id of it is
        told ``unknown`` (a reset) and goes on live: never silently."""
        from redis.exceptions import RedisError

        idle = self.settings.idle_stream_s
        period = max(0.25, min(idle / 4, _IDLE_SWEEP_MAX_S))
        while True:
            await asyncio.sleep(jitter(period))
            try:
                gone = await store.delete_idle(self.redis.primary, idle * 1000)
            except (RedisError, OSError) as exc:
                log.debug("idle streams not swept: %s", exc)
                continue
            finally:
                clients.still_wanted()
            if gone:
                self.metrics.idle_deleted += len(gone)
                log.info("deleted %d topic streams with no publish for %d s", len(gone), idle)
                self.verify_soon()

    async def _sweep(self) -> None:
        """Close clients that stay too far behind, and forget topics nobody watches.

        A client is closed when it was over the backlog bound, or behind the ring's tail, at
        two sweeps in a row: a burst larger than the bound that a client drains within a
        second is not slowness, and a stream behind the tail that is awake resumes in place
        (``stream._follow``); a client stuck in a send is closed.
        """
        backlog = self.settings.client_backlog_bytes
        while True:
            await asyncio.sleep(_SWEEP_S)
            self._watch_redis()
            out = self.stepped_out
            if out is not None and self.metrics.streams_open:
                what = ("Redis out of reach" if out == "redis"
                        else "the replica cut from its primary")
                log.warning("%s for %.0f s: ending %d streams so they reconnect to a relay "
                            "that has it", what, self.settings.redis_grace_s,
                            self.metrics.streams_open)
                for topic in self.hub:
                    for sub in list(topic.subscribers):
                        sub.close("redis lost")
            for sub in self.replica_waits.expired(time.monotonic()):
                sub.close("replica behind")
            for topic in self.hub:
                ring = topic.ring
                for sub in list(topic.subscribers):
                    if sub.catch_up is not None:
                        # reading history, its cursor waits at the ring's tail: how far that
                        # is says nothing of the client. A send it has not taken since the
                        # last sweep does (each send is at most send_bytes).
                        over = sub.sending and sub.sends == 0
                        sub.sends = 0
                        if over and sub.behind and sub.closed_because is None:
                            self.metrics.catchup_stalls += 1
                            self.metrics.backlog_drops += 1
                            sub.close("overflow")
                        sub.behind = over
                        continue
                    # lag_bytes needs a cursor inside the ring; behind it is over anyway
                    over = sub.cursor < ring.tail or ring.lag_bytes(sub.cursor) > backlog
                    if over and sub.behind and sub.closed_because is None:
                        self.metrics.backlog_drops += 1
                        sub.close("overflow")
                    sub.behind = over
            for topic in self.hub.expire(time.monotonic(), self.settings.topic_linger_s):
                # its pages too: the stream may be deleted and made again before it is
                # watched again, and pages of the old life must not answer for the new one
                self.replayer.forget(topic.name)
