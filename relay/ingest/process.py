"""``ssedge ingest``: fan in events from upstream SSE servers, each followed once.

One process follows any number of (topic, upstream) pairs. For each pair it competes for a
lease in Redis; the holder follows the upstream (``relay.ingest.follower``) and renews the lease
every third of its lifetime, the others stand by and poll. So two or more ingest processes
of the same upstreams give availability while the upstream sees one connection, and a
crashed holder is replaced about one lease later, resuming from the cursor in Redis.

The lease decides who connects; it is not what makes writes exactly-once. Every write is a
script that checks the lease and the write counter in the same atomic step as the XADDs
(``relay.storage.journal``), so a holder that lost its lease without noticing writes nothing.

The process serves ``/metrics`` (per upstream: following or not, up, down since, events,
duplicates, rejected, reconnects, errors by kind), ``/healthz`` and ``/readyz`` (Redis
answers) on ``SSEDGE_INGEST_HOST:SSEDGE_INGEST_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from relay import logs, prometheus
from relay.backoff import jitter
from relay.ingest import admin
from relay.ingest.admin import Answer
from relay.ingest.config import IngestTopic
from relay.ingest.follower import Ending, Follower, Policy
from relay.ingest.status import Status, render
from relay.settings import Settings
from relay.storage import clients
from relay.storage.journal import Journal
from relay.web import outside

log = logging.getLogger("ssedge.ingest")


@dataclass
class Worker:
    follower: Follower
    journal: Journal
    status: Status


class Ingest:
    def __init__(self, settings: Settings, topics: list[IngestTopic]) -> None:
        s = settings
        self.settings = settings
        self.node = s.node_name or f"{s.ingest_host}:{s.ingest_port}"
        # who holds a lease, readable in Redis: node, pid, and a nonce for this run
        self.token = f"{self.node}/{os.getpid()}/{secrets.token_hex(4)}"
        # no retries: a write whose reply was lost must be re-read, never sent again
        self.redis = clients.connect(s, retries=0)
        self.lease_ms = s.ingest_lease_ms
        # one pool of kept-alive connections for every upstream; a read waits at most the
        # idle timeout (the follower's own, a little shorter, is the one that fires)
        self.http = outside.client(s.ingest_connect_timeout_s, s.ingest_idle_timeout_s + 5,
                                   outside.parse_hosts(s.ingest_redirect_hosts))
        self.workers: list[Worker] = []
        for t in topics:
            policy = Policy(
                retry_ms=s.ingest_retry_ms, backoff_max_s=s.ingest_backoff_max_s,
                retry_max_ms=s.ingest_retry_max_ms,
                connect_timeout_s=s.ingest_connect_timeout_s,
                idle_timeout_s=s.ingest_idle_timeout_s, max_event_bytes=s.max_body_bytes,
                handover_s=max(10.0, 6 * s.ingest_lease_ms / 1000), envelope=t.envelope,
            )
            for u in t.upstreams:
                journal = Journal(self.redis, t.topic, u.name, self.token,
                                  maxlen=s.retention_maxlen, max_age_s=s.retention_max_age_s)
                status = Status(t.topic, u.name)
                self.workers.append(Worker(Follower(u, journal, policy, status, self.http),
                                           journal, status))

    async def run(self, stop: asyncio.Event) -> None:
        server = await admin.serve(self.settings.ingest_host, self.settings.ingest_port, {
            "/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
        })
        tasks = [asyncio.ensure_future(self._work(w)) for w in self.workers]
        host, port = server.sockets[0].getsockname()[:2]
        log.info("ingest %s: %d upstream(s); /metrics on http://%s:%d", self.token,
                 len(tasks), host, port)
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # a clean stop hands every upstream over at once instead of after a lease
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(w.journal.release() for w in self.workers)), 2)
            server.close()
            await self.http.aclose()
            await self.redis.aclose()
            log.info("ingest %s stopped; its leases are released", self.token)

    # -- the lease -------------------------------------------------------------------------

    async def _work(self, w: Worker) -> None:
        st = w.status
        while True:
            clients.still_wanted()  # a stop swallowed by a Redis call
            held = await self._hold(w)
            clients.still_wanted()
            if not held:
                await asyncio.sleep(jitter(self.lease_ms / 3000, 0.5, 1.0))
                continue
            st.active, st.leases = True, st.leases + 1
            log.info("upstream %s of topic %s: following it (lease taken)", st.name, st.topic)
            try:
                ending = await self._follow_while_held(w)
            finally:
                st.active, st.up, st.down_since = False, False, None
            if ending is not Ending.LEASE_LOST:
                with contextlib.suppress(RedisError, OSError):
                    await w.journal.release()
            if ending is Ending.STOPPED:
                return
            if ending is Ending.HANDOVER:
                log.warning("upstream %s of topic %s: down too long here; lease released for "
                            "another ingest process to try", st.name, st.topic)
                await asyncio.sleep(self.lease_ms / 1000)
            else:
                log.warning("upstream %s of topic %s: lease lost; standing by", st.name,
                            st.topic)

    async def _hold(self, w: Worker) -> bool:
        try:
            return await w.journal.hold(self.lease_ms)
        except (RedisError, OSError):
            return False

    async def _follow_while_held(self, w: Worker) -> Ending:
        follower = asyncio.ensure_future(self._follow(w))
        renewer = asyncio.ensure_future(self._renew(w))
        try:
            await asyncio.wait({follower, renewer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            follower.cancel()
            renewer.cancel()
            await asyncio.gather(follower, renewer, return_exceptions=True)
        if follower.done() and not follower.cancelled() and follower.exception() is None:
            return follower.result()
        return Ending.LEASE_LOST

    async def _follow(self, w: Worker) -> Ending:
        try:
            return await w.follower.run()
        except Exception:
            # a bug must not end the process: release, wait, start over from Redis
            w.status.error("internal")
            log.exception("upstream %s of topic %s: follower failed", w.status.name,
                          w.status.topic)
            return Ending.HANDOVER

    async def _renew(self, w: Worker) -> None:
        """Returns when the lease is lost: taken by another, or not renewed in time."""
        ttl = self.lease_ms / 1000
        valid_until = time.monotonic() + ttl
        while True:
            await asyncio.sleep(ttl / 3)
            clients.still_wanted()
            asked = time.monotonic()
            try:
                if not await w.journal.hold(self.lease_ms):
                    return
                valid_until = asked + ttl
            except (RedisError, OSError):
                if time.monotonic() >= valid_until:
                    return

    # -- admin answers ---------------------------------------------------------------------

    async def _healthz(self) -> Answer:
        return 200, "application/json", b'{"status": "ok"}'

    async def _readyz(self) -> Answer:
        try:
            await asyncio.wait_for(clients.ping(self.redis), 2)
        except (RedisError, OSError, TimeoutError) as exc:
            body = f'{{"status": "unready", "redis": "{type(exc).__name__}"}}'.encode()
            return 503, "application/json", body
        return 200, "application/json", b'{"status": "ready"}'

    async def _metrics(self) -> Answer:
        return 200, prometheus.CONTENT_TYPE, render(self.node, [w.status for w in
                                                                     self.workers])


def run(settings: Settings, topics: list[IngestTopic]) -> int:
    """Run in the foreground until SIGINT or SIGTERM."""
    logs.setup(settings.log_level, settings.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Ingest(settings, topics).run(stop)

    try:
        asyncio.run(main())
    except OSError as exc:  # the admin port: in use, or not an address of this host
        log.error("cannot serve on %s:%d: %s", settings.ingest_host, settings.ingest_port, exc)
        return 1
    return 0
